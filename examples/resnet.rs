//! ResNet-8 — a graph model of residual blocks with BatchNorm — trained on Fashion-MNIST (or
//! MNIST) with Keras' recipe, then compressed: int8 post-training quantization with BatchNorm
//! folded, magnitude pruning with fine-tuning, and whole-filter (channel) pruning.
//!
//! Run: `cargo run --release --example resnet -- --dataset fashion` (`--help` lists every
//! flag). `--keras PATH` adds the JSON of `tools/keras_resnet.py` (the same model and recipe in
//! Keras, on the same machine) to the table, for the side-by-side accuracy and speed.
//!
//! Writes `target/pare/resnet-<dataset>.json` (`target/pare/quick/` with `--quick`).

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use pare::measure::{Summary, median};
use pare::mnist::Mnist;
use pare::prune::{MaskKind, Norm};
use pare::sweep::{CompressionRecipe, PruneRecipe, Splits, StageRow};
use pare::tensor::models::resnet8;
use pare::tensor::train::{Fit, FitConfig};
use serde_json::{Value, json};

/// Which data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DataChoice {
    /// Fashion-MNIST ($FASHION_MNIST_DIR, Debian's dataset-fashion-mnist, or downloaded).
    Fashion,
    /// MNIST.
    Mnist,
}

/// Trains ResNet-8 and compresses it: int8, pruning, channel pruning.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Data set.
    #[arg(long, value_enum, default_value_t = DataChoice::Fashion)]
    dataset: DataChoice,
    /// Training epochs [default: 10; 1 with --quick].
    #[arg(long, value_parser = common::positive)]
    epochs: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 128, value_parser = common::positive)]
    batch_size: usize,
    /// Adam's initial rate (cosine decay to 0 over the run).
    #[arg(long, default_value_t = 2e-3, value_parser = common::rate)]
    learning_rate: f32,
    /// Seeds of the initial weights and batch order, comma-separated: the whole table runs
    /// once per seed and shows the means.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0")]
    seeds: Vec<u64>,
    /// Final sparsity of the magnitude pruning.
    #[arg(long, default_value_t = 0.8, value_parser = common::fraction)]
    sparsity: f32,
    /// Fraction of each conv layer's filters the channel pruning removes.
    #[arg(long, default_value_t = 0.5, value_parser = common::fraction)]
    channels: f32,
    /// Which weights magnitude pruning zeroes: `per-layer` (each kernel the same fraction,
    /// TFMOT's way) or `global` (the smallest of all kernels, PyTorch's `global_unstructured`).
    #[arg(long, default_value = "global", value_parser = mask)]
    mask: MaskKind,
    /// Fraction of the fine-tune by which the sparsity schedule reaches its final value
    /// (1: TFMOT's `end_step`, the last step).
    #[arg(long, default_value_t = 1.0, value_parser = common::fraction)]
    prune_end: f32,
    /// Fine-tuning epochs of each pruning run (Adam 1e-3, 10 % held out, as TFMOT's recipe,
    /// which runs 2 epochs for its small CNN).
    #[arg(long, default_value_t = 4, value_parser = common::positive)]
    finetune_epochs: usize,
    /// Calibration images of the int8 conversion (the first training images).
    #[arg(long, default_value_t = 100, value_parser = common::positive)]
    calibration: usize,
    /// Train on the first N training images [default: all; 512 with --quick].
    #[arg(long, value_parser = common::positive)]
    limit: Option<usize>,
    /// Directory of the IDX files [default: $MNIST_DIR / $FASHION_MNIST_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// JSON written by tools/keras_resnet.py, shown beside pare's figures; its speed is
    /// compared with the first seed's epochs, the ones that ran beside it.
    #[arg(long)]
    keras: Option<PathBuf>,
    /// CI-sized run: 512 training and 256 test images, 1 epoch; results under quick/.
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    let args: Args = common::parse();
    common::run(|| run(args))
}

/// One seed's figures: its rows (float first) and its float training.
struct SeedRun {
    rows: Vec<StageRow>,
    secs: Vec<f64>,
    history: pare::tensor::train::History,
}

fn run(a: Args) -> Result<()> {
    let epochs = a.epochs.unwrap_or(if a.quick { 1 } else { 10 });
    let limit = a.limit.or(a.quick.then_some(512));
    let (name, data) = match a.dataset {
        DataChoice::Fashion => (
            "fashion",
            Mnist::fashion_load_or_download(a.data_dir.as_deref())?,
        ),
        DataChoice::Mnist => ("mnist", common::load_data(a.data_dir.as_deref())?),
    };
    let train = limit.map_or_else(|| data.train().clone(), |n| data.train().take(n));
    let test = data
        .test()
        .take(if a.quick { 256 } else { data.test().len() });
    let (x, y) = common::xy(&train);
    let (tx, ty) = common::xy(&test);
    let calibration = train.take(a.calibration.min(y.len()));
    let splits = Splits {
        x: x.clone(),
        y: &y,
        test_x: tx.clone(),
        test_y: &ty,
        calibration: calibration.images().view().into_dyn(),
    };
    println!("{}", resnet8(0).summary());
    let mut runs = Vec::new();
    for &seed in &a.seeds {
        println!(
            "== seed {seed}: {epochs} epoch(s) on {name}, {} images",
            y.len()
        );
        runs.push(one_seed(&a, seed, epochs, &splits)?);
    }
    // Rows in the same order for every seed: the table gives their mean and spread.
    let accs = |i: usize| -> Vec<f32> { runs.iter().map(|r| r.rows[i].accuracy).collect() };
    let mut rows: Vec<(StageRow, Summary)> = (0..runs[0].rows.len())
        .map(|i| {
            let spread = Summary::of(&accs(i));
            let row = StageRow {
                accuracy: spread.mean as f32,
                ..runs[0].rows[i].clone()
            };
            (row, spread)
        })
        .collect();
    // Speed is the first seed's: the run a Keras run started with goes beside (the
    // others would compare an unshared machine with a shared one).
    let secs = runs[0].secs.clone();
    let per_epoch = median(&mut secs.clone());
    let float = rows[0].0.accuracy;

    let keras = a.keras.as_deref().map(read_json).transpose()?;
    if let Some(k) = &keras {
        let ks = k["epoch_seconds"].as_array().into_iter().flatten();
        let kmed = median(&mut ks.filter_map(Value::as_f64).collect::<Vec<_>>());
        let row = StageRow {
            stage: "Keras float".into(),
            accuracy: k["test_accuracy"].as_f64().map_or(f32::NAN, |v| v as f32),
            nonzero_weights: None,
            file_bytes: None,
            note: format!("{kmed:.1} s/epoch; pare: {:.2}x its time", per_epoch / kmed),
        };
        rows.push((row, Summary::of(&[])));
    }

    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(r, spread)| {
            let sd = spread
                .std
                .map_or("-".into(), |s| format!("{:.2}", s * 100.0));
            vec![
                r.stage.clone(),
                common::pct(r.accuracy),
                sd,
                format!("{:+.2}", (r.accuracy - float) * 100.0),
                r.nonzero_weights.map_or("-".into(), common::thousands),
                // The table stays within 100 columns; the JSON has the whole note.
                r.note.chars().take(36).collect(),
            ]
        })
        .collect();
    let seeds: Vec<String> = a.seeds.iter().map(u64::to_string).collect();
    let what = if runs.len() > 1 { "means" } else { "one run" };
    println!(
        "\nResNet-8 on {name}: {} test images, seed {} ({what})",
        ty.len(),
        seeds.join(", ")
    );
    let header = ["model", "test acc", "sd pp", "pp", "nonzero w", "note"];
    common::print_table(&header, &table);

    let json_rows: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, (r, spread))| {
            let mut v = r.to_json();
            v["test_accuracy_std"] = json!(spread.std);
            v["per_seed"] = json!((i < runs[0].rows.len()).then(|| accs(i)));
            v
        })
        .collect();
    let per_seed: Vec<Value> = runs
        .iter()
        .zip(&a.seeds)
        .map(|(r, seed)| {
            json!({"seed": seed, "epoch_seconds": r.secs,
                "history": pare::results::history_json(&r.history),
                "rows": r.rows.iter().map(StageRow::to_json).collect::<Vec<_>>()})
        })
        .collect();
    let path = common::results(a.quick).write_json(
        &format!("resnet-{name}.json"),
        json!({
            "model": "resnet8",
            "dataset": name,
            "params": resnet8(0).summary().total_params,
            "epochs": epochs,
            "batch_size": a.batch_size,
            "learning_rate": a.learning_rate,
            "seed": a.seeds[0],
            "seeds": a.seeds,
            "train_images": y.len(),
            "test_images": ty.len(),
            "threads": rayon::current_num_threads(),
            "float_accuracy": float,
            "epoch_seconds": secs,
            "median_epoch_seconds": per_epoch,
            "prune": {"finetune_epochs": a.finetune_epochs, "mask": format!("{:?}", a.mask),
                "schedule_end": a.prune_end},
            "rows": json_rows,
            "per_seed": per_seed,
            "keras": keras,
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Trains one seed's float model and compresses it: the table's rows for that seed.
fn one_seed(a: &Args, seed: u64, epochs: usize, s: &Splits<'_>) -> Result<SeedRun> {
    let mut model = resnet8(seed);
    let steps = epochs * s.y.len().div_ceil(a.batch_size);
    let mut adam = pare::sweep::adam(a.learning_rate, true, steps)?;
    let cfg = FitConfig {
        epochs,
        batch_size: a.batch_size,
        seed,
        ..Default::default()
    };
    let history = Fit::new(cfg).run(&mut model, &mut adam, s.x.clone(), s.y)?;
    let secs: Vec<f64> = history.epochs.iter().map(|e| e.seconds).collect();
    let recipe = CompressionRecipe {
        prune: PruneRecipe {
            epochs: a.finetune_epochs,
            batch_size: a.batch_size,
            seed,
            schedule_end: a.prune_end,
            mask: a.mask,
            // A quick run has a handful of steps: a mask update at each reaches the sparsity.
            frequency: if a.quick { 1 } else { 100 },
            ..Default::default()
        },
        sparsity: a.sparsity,
        channels: a.channels,
        norm: Norm::L1,
    };
    let mut rows = recipe.rows(&model, s, |stage| println!("== {stage}"))?;
    rows[0].note = format!("{:.1} s/epoch (median)", median(&mut secs.clone()));
    Ok(SeedRun {
        rows,
        secs,
        history,
    })
}

fn read_json(path: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

fn mask(s: &str) -> std::result::Result<MaskKind, String> {
    match s {
        "per-layer" => Ok(MaskKind::Magnitude),
        "global" => Ok(MaskKind::GlobalMagnitude),
        _ => Err("per-layer or global".into()),
    }
}
