//! What every example shares: flag parsing with one-line errors, `error: ...` on failure, the
//! data, where results go, and the table printer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use pare::mnist::{Dataset, Mnist};
use pare::results::Results;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs an example's body: an error is one line `error: ...` (its causes joined by `: `, never
/// a backtrace, whatever `RUST_BACKTRACE` says) and exit status 1.
pub fn run(body: impl FnOnce() -> Result<()>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the flags; `--help` and `--version` print and exit 0, a usage error prints clap's
/// first line (it names the flag and the value) and exits 2.
pub fn parse<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            e.exit();
        }
        let text = e.render().to_string();
        let mut line = text
            .lines()
            .next()
            .unwrap_or("error: bad arguments")
            .to_owned();
        if let Some(values) = text
            .lines()
            .find(|l| l.trim_start().starts_with("[possible"))
        {
            line = format!("{line} {}", values.trim());
        }
        eprintln!("{line}");
        std::process::exit(2);
    })
}

/// A count that must be at least 1 (`--epochs 0` is a usage error).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A learning rate: finite and positive.
pub fn rate(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        Ok(_) => Err("must be finite and positive".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A fraction in [0, 1].
pub fn fraction(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be in [0, 1]".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Adam's rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LrSchedule {
    /// The rate stays as it starts (Keras' default).
    Constant,
    /// The rate decays to 0 along a cosine over the run (Keras' `CosineDecay`).
    Cosine,
}

impl LrSchedule {
    /// Whether the rate decays.
    pub fn cosine(self) -> bool {
        self == LrSchedule::Cosine
    }
    /// The name the flag takes.
    pub fn name(self) -> &'static str {
        match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
        }
    }
}

/// `<workspace>/target/pare`: full runs write here, `--quick` runs under `quick/`.
pub fn results(quick: bool) -> Results {
    Results::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pare"),
        quick,
    )
}

/// MNIST (or Fashion-MNIST) from `--data-dir`, else `MNIST_DIR`, else the shared copy beside
/// the repository, else pare's cache directory, downloading (SHA-256 checked) what is missing.
pub fn load_data(dir: Option<&Path>) -> Result<Mnist> {
    if let Some(d) = std::env::var_os("MNIST_DIR").filter(|_| dir.is_none()) {
        anyhow::ensure!(
            !d.is_empty(),
            "MNIST_DIR is empty: set it to the MNIST directory"
        );
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    let dir: Option<PathBuf> = match dir {
        Some(d) => Some(d.to_owned()),
        None if std::env::var_os("MNIST_DIR").is_none() && shared.is_dir() => Some(shared),
        None => None,
    };
    Ok(Mnist::load_or_download(dir.as_deref())?)
}

/// Images as a dynamic-rank view and labels as class indices.
pub fn xy(d: &Dataset) -> (ndarray::ArrayViewD<'_, f32>, Vec<usize>) {
    (d.images().view().into_dyn(), d.labels_usize())
}

/// Prints a table with aligned columns.
pub fn print_table<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.as_ref().chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
            .collect();
        println!("| {} |", s.join(" | "));
    };
    line(header.to_vec());
    let rule: Vec<String> = w.iter().map(|n| "-".repeat(n + 2)).collect();
    println!("|{}|", rule.join("|"));
    for r in rows {
        line(r.iter().map(AsRef::as_ref).collect());
    }
}

/// Percent with two decimals.
pub fn pct(x: f32) -> String {
    format!("{:.2} %", x * 100.0)
}

/// Bytes, with KiB in parentheses from 10 KiB on: `20480 (20.0 KiB)`.
pub fn bytes(n: usize) -> String {
    if n >= 10 * 1024 {
        format!("{n} ({:.1} KiB)", n as f64 / 1024.0)
    } else {
        n.to_string()
    }
}

/// `1 epoch`, `2 epochs`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// 1433610 -> "1,433,610".
pub fn thousands(n: usize) -> String {
    pare::plot::group_thousands(n as u64)
}

/// `--onnx DIR`: writes `DIR/<stem>-float.onnx`, `-qdq.onnx` and `-qoperator.onnx` (whichever
/// models are given) and lists them with their sizes raw and gzipped.
pub fn write_onnx(
    dir: Option<&Path>,
    stem: &str,
    float: Option<&pare::tensor::Sequential>,
    int8: Option<&pare::quant::QuantizedModel>,
) -> Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    let files = pare::onnx::write_all(dir, stem, float, int8)?;
    println!("\nONNX files (onnxruntime runs them; tests/onnx.rs checks they agree with pare):");
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            let path = f.path.display().to_string();
            vec![path, bytes(f.size.raw), bytes(f.size.gzip)]
        })
        .collect();
    print_table(&["file", "bytes", "gzipped"], &rows);
    Ok(())
}
