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
use pare::measure::{accuracy, median};
use pare::mnist::Mnist;
use pare::prune::{Norm, PruneCallback, prunable_params, recalibrate_batch_norm};
use pare::prune::{remove_channels, smallest_channels};
use pare::quant::{ConvertConfig, Mode, convert};
use pare::sweep::{PruneRecipe, Splits};
use pare::tensor::train::{Fit, FitConfig, evaluate};
use pare::tensor::{Model, fold_batch_norm, models::resnet8};
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
    /// Seed of the initial weights and of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Final sparsity of the magnitude pruning.
    #[arg(long, default_value_t = 0.8, value_parser = common::fraction)]
    sparsity: f32,
    /// Fraction of each conv layer's filters the channel pruning removes.
    #[arg(long, default_value_t = 0.5, value_parser = common::fraction)]
    channels: f32,
    /// Fine-tuning epochs of each pruning run (TFMOT's recipe: Adam 1e-3, 10 % held out).
    #[arg(long, default_value_t = 2, value_parser = common::positive)]
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
    /// JSON written by tools/keras_resnet.py, shown beside pare's figures.
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

/// One line of the table and of the JSON; a stage that could not run has its reason.
struct Row {
    stage: String,
    accuracy: Option<f32>,
    nonzero: Option<usize>,
    note: String,
    file_bytes: Option<usize>,
}

impl Row {
    fn new(stage: impl Into<String>, acc: Option<f32>, nz: Option<usize>, note: String) -> Row {
        Row {
            stage: stage.into(),
            accuracy: acc,
            nonzero: nz,
            note,
            file_bytes: None,
        }
    }
    fn to_json(&self) -> Value {
        let (acc, nz, b) = (self.accuracy, self.nonzero, self.file_bytes);
        json!({"stage": self.stage, "test_accuracy": acc, "nonzero_weights": nz, "file_bytes": b,
            "note": self.note})
    }
    fn skipped(stage: impl Into<String>, why: String) -> Row {
        let stage = stage.into();
        println!("{stage}: skipped: {why}");
        Row::new(stage, None, None, format!("not run: {why}"))
    }
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

    let mut model = resnet8(a.seed);
    println!("{}", model.summary());
    let steps = epochs * y.len().div_ceil(a.batch_size);
    let mut adam = pare::sweep::adam(a.learning_rate, true, steps)?;
    let cfg = FitConfig {
        epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        ..Default::default()
    };
    println!("== float: {epochs} epoch(s) on {name}, {} images", y.len());
    let history = Fit::new(cfg).run(&mut model, &mut adam, x.clone(), &y)?;
    let secs: Vec<f64> = history.epochs.iter().map(|e| e.seconds).collect();
    let per_epoch = median(&mut secs.clone());
    let float = evaluate(&model, tx.clone(), &ty, 256)?.accuracy;
    let kernels = prunable_params(&model);
    let nonzero = |m: &Model| -> usize {
        let ks = kernels.iter().filter_map(|k| m.param(k));
        ks.map(|p| p.value.iter().filter(|v| **v != 0.0).count())
            .sum()
    };
    let note = format!("{per_epoch:.1} s/epoch (median)");
    let mut rows = vec![Row::new("float", Some(float), Some(nonzero(&model)), note)];

    println!(
        "== int8: BatchNorm folded, {} calibration images",
        splits.y.len().min(a.calibration)
    );
    rows.push(int8_row("int8 (BN folded)", &model, &splits)?);

    let recipe = PruneRecipe {
        epochs: a.finetune_epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        ..Default::default()
    };
    println!("== magnitude pruning to {:.0} %", a.sparsity * 100.0);
    let mut prune = PruneCallback::new(recipe.schedule(a.sparsity, y.len())?);
    let mut pruned = recipe.train_stripped(&model, &mut prune, &splits)?;
    let stale = evaluate(&pruned, tx.clone(), &ty, 256)?.accuracy;
    recalibrate(&mut pruned, &recipe, &splits)?;
    let acc = evaluate(&pruned, tx.clone(), &ty, 256)?.accuracy;
    let epochs = common::count(a.finetune_epochs, "fine-tune epoch");
    let note = format!("{epochs}, BN recalibrated ({} before)", common::pct(stale));
    let stage = format!("pruned {:.0} %", a.sparsity * 100.0);
    rows.push(Row::new(stage, Some(acc), Some(nonzero(&pruned)), note));
    rows.push(int8_row("pruned + int8", &pruned, &splits)?);

    println!(
        "== channel pruning: {:.0} % of each conv's filters (L1) cut out, then fine-tuned",
        a.channels * 100.0
    );
    // Cut first, then fine-tune: a zeroed filter before a BatchNorm still outputs its offset.
    let mut thin = remove_channels(&model, &smallest_channels(&model, a.channels, Norm::L1)?)?;
    recipe.train(&mut thin, None, &splits)?;
    recalibrate(&mut thin, &recipe, &splits)?;
    let acc = evaluate(&thin, tx.clone(), &ty, 256)?.accuracy;
    let (before, after) = (model.num_params(), thin.num_params());
    let note = format!(
        "cut out: {} -> {} parameters",
        common::thousands(before),
        common::thousands(after)
    );
    let stage = format!("channels -{:.0} %", a.channels * 100.0);
    rows.push(Row::new(stage, Some(acc), Some(nonzero(&thin)), note));

    let keras = a.keras.as_deref().map(read_json).transpose()?;
    if let Some(k) = &keras {
        let ks = k["epoch_seconds"].as_array().into_iter().flatten();
        let kmed = median(&mut ks.filter_map(Value::as_f64).collect::<Vec<_>>());
        let note = format!("{kmed:.1} s/epoch; pare: {:.2}x its time", per_epoch / kmed);
        let acc = k["test_accuracy"].as_f64().map(|v| v as f32);
        rows.push(Row::new("Keras float", acc, None, note));
    }

    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.stage.clone(),
                r.accuracy.map_or("-".into(), common::pct),
                r.accuracy
                    .map_or("-".into(), |v| format!("{:+.2}", (v - float) * 100.0)),
                r.nonzero.map_or("-".into(), common::thousands),
                // The table stays within 100 columns; the JSON has the whole note.
                r.note.chars().take(44).collect(),
            ]
        })
        .collect();
    println!(
        "\nResNet-8 on {name}: {} test images, seed {}",
        ty.len(),
        a.seed
    );
    common::print_table(&["model", "test acc", "pp", "nonzero w", "note"], &table);

    let results = common::results(a.quick);
    let json_rows: Vec<Value> = rows.iter().map(Row::to_json).collect();
    let path = results.write_json(
        &format!("resnet-{name}.json"),
        json!({
            "model": "resnet8",
            "dataset": name,
            "params": model.summary().total_params,
            "epochs": epochs,
            "batch_size": a.batch_size,
            "learning_rate": a.learning_rate,
            "seed": a.seed,
            "train_images": y.len(),
            "test_images": ty.len(),
            "threads": rayon::current_num_threads(),
            "float_accuracy": float,
            "epoch_seconds": secs,
            "median_epoch_seconds": per_epoch,
            "history": pare::results::history_json(&history),
            "rows": json_rows,
            "keras": keras,
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

fn read_json(path: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

/// BatchNorm moving statistics from 32 training batches: the last mask update came a few
/// dozen steps before the end, too few for momentum 0.99 to forget the denser weights.
fn recalibrate(m: &mut Model, recipe: &PruneRecipe, s: &Splits<'_>) -> Result<()> {
    recalibrate_batch_norm(m, s.x.view(), recipe.batch_size, 32)?;
    Ok(())
}

/// Full-integer int8 of `model` with its BatchNorms folded, scored on the integer engine; a
/// converter that does not take the model leaves the row with its reason.
fn int8_row(stage: &str, model: &Model, s: &Splits<'_>) -> Result<Row> {
    let folded = fold_batch_norm(model)?;
    let cfg = ConvertConfig {
        mode: Mode::FullInteger,
        ..Default::default()
    };
    Ok(match convert(&folded, s.calibration.view(), &cfg) {
        Ok(q) => {
            let acc = accuracy(q.predict(s.test_x.view())?.view(), s.test_y);
            let bytes = q.to_bytes()?.len();
            let mut row = Row::new(stage, Some(acc), None, format!("{bytes} B int8 file"));
            row.file_bytes = Some(bytes);
            row
        }
        Err(e) => Row::skipped(stage, e.to_string()),
    })
}
