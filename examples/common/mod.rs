//! Helpers shared by the examples: data loading, result files, tables.
#![allow(dead_code)]

use anyhow::{Context, Result};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pare::mnist::{Dataset, Mnist};
use std::path::{Path, PathBuf};

/// Where examples write their JSON and models: `<workspace>/target/pare`.
pub fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("pare")
}

/// Loads MNIST (or Fashion-MNIST) from `--data-dir`, else `MNIST_DIR`, else the shared copy
/// beside the repository.
pub fn load_data(dir: Option<&Path>) -> Result<Mnist> {
    if let Some(d) = dir {
        return Mnist::load(d).with_context(|| format!("loading MNIST from {}", d.display()));
    }
    if std::env::var_os("MNIST_DIR").is_some() {
        return Ok(Mnist::from_env()?);
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    if shared.is_dir() {
        return Mnist::load(&shared).context("loading ../shared/data/mnist");
    }
    Ok(Mnist::from_env()?)
}

/// Images as a dynamic-rank view and labels as class indices.
pub fn xy(d: &Dataset) -> (ndarray::ArrayViewD<'_, f32>, Vec<usize>) {
    (d.images().view().into_dyn(), d.labels_usize())
}

/// Writes `value` as pretty JSON to `target/pare/<name>` atomically; returns the path.
pub fn write_json(name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    let path = out_dir().join(name);
    let text = serde_json::to_string_pretty(value)? + "\n";
    pare::tensor::io::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Size of `bytes` after gzip at level 9 (what `gzip -9` gives, bar the file-name header).
pub fn gzip_len(bytes: &[u8]) -> usize {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail").len()
}

/// Prints a two-column-or-more table with aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
            .collect();
        println!("| {} |", s.join(" | "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    println!(
        "|{}|",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.clone());
    }
}

/// Percent with two decimals.
pub fn pct(x: f32) -> String {
    format!("{:.2} %", x * 100.0)
}

/// Parses a `--lr-schedule`-style value: `constant` (Keras' plain rate) or `cosine`; returns
/// whether the rate decays along a cosine.
pub fn parse_cosine(flag: &str, value: &str) -> Result<bool> {
    match value {
        "constant" => Ok(false),
        "cosine" => Ok(true),
        other => anyhow::bail!("{flag}: expected constant or cosine, got {other}"),
    }
}

/// The name [`parse_cosine`] reads back.
pub fn schedule_name(cosine: bool) -> &'static str {
    if cosine { "cosine" } else { "constant" }
}

/// Keras' Adam (rate 1e-3), its rate constant or decayed to 0 along a cosine over `steps`
/// updates.
pub fn adam(cosine: bool, steps: usize) -> Result<pare::tensor::optim::Adam> {
    adam_with(1e-3, cosine, steps)
}

/// [`adam`] starting from `rate`.
pub fn adam_with(rate: f32, cosine: bool, steps: usize) -> Result<pare::tensor::optim::Adam> {
    use pare::tensor::optim::{Adam, AdamConfig, LrSchedule};
    let schedule = if cosine {
        LrSchedule::CosineDecay {
            decay_steps: steps as u64,
            alpha: 0.0,
        }
    } else {
        LrSchedule::Constant
    };
    Ok(Adam::new(AdamConfig {
        learning_rate: rate,
        schedule,
        ..Default::default()
    })?)
}
