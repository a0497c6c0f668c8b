//! Trains one of the reference CNNs on MNIST and reports accuracy and speed.
//!
//! Run: `cargo run --release --example train -- --model small` (`--help` lists every flag).
//! `--test-each-epoch` scores the test set after every epoch to show the learning curve; it is
//! a diagnostic only and selects nothing.
//!
//! Writes `target/pare/train-<model>.json` (`target/pare/quick/` with `--quick`) and, with
//! `--save PATH`, the trained weights as a safetensors checkpoint.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use common::LrSchedule;
use pare::tensor::models::Reference;
use pare::tensor::train::{Callback, EpochLog, Fit, FitConfig, evaluate};
use serde_json::json;

/// The reference models.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Model {
    /// The TensorFlow quantization tutorial's small CNN (20,410 parameters).
    Small,
    /// The Keras distillation example's teacher (256/512 filters).
    Teacher,
    /// Its student (16/32 filters).
    Student,
}

/// Trains one of the reference CNNs on MNIST.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Which model.
    #[arg(long, value_enum, default_value_t = Model::Small)]
    model: Model,
    /// Epochs [default: 5 for small, 1 for teacher, 3 for student].
    #[arg(long, value_parser = common::positive)]
    epochs: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 32, value_parser = common::positive)]
    batch_size: usize,
    /// Seed of the initial weights and of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N training images only [default: all; 2000 with --quick].
    #[arg(long, value_parser = common::positive)]
    limit: Option<usize>,
    /// Directory of the MNIST IDX files [default: $MNIST_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Score the test set after every epoch (a diagnostic; it changes nothing).
    #[arg(long)]
    test_each_epoch: bool,
    /// Adam's rate schedule (rate 1e-3).
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    lr_schedule: LrSchedule,
    /// Save the trained weights to this safetensors file.
    #[arg(long)]
    save: Option<PathBuf>,
    /// CI-sized run: 2000 training images; results under target/pare/quick/.
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    let args: Args = common::parse();
    common::run(|| train(args))
}

fn train(a: Args) -> Result<()> {
    let kind = match a.model {
        Model::Small => Reference::Small,
        Model::Teacher => Reference::Teacher,
        Model::Student => Reference::Student,
    };
    let epochs = a.epochs.unwrap_or(match kind {
        Reference::Small => 5,
        Reference::Teacher => 1,
        Reference::Student => 3,
    });
    let limit = if a.quick {
        a.limit.or(Some(2000))
    } else {
        a.limit
    };
    let results = common::results(a.quick);
    let data = common::load_data(a.data_dir.as_deref())?;
    let train = match limit {
        Some(n) => data.train().take(n),
        None => data.train().clone(),
    };
    let (x, y) = common::xy(&train);
    let (tx, ty) = common::xy(data.test());

    let mut model = kind.build(a.seed);
    let steps = epochs * y.len().div_ceil(a.batch_size);
    let mut adam = pare::sweep::adam(1e-3, a.lr_schedule.cosine(), steps)?;
    let cfg = FitConfig {
        epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        ..Default::default()
    };
    let mut curve = TestCurve {
        x: tx.clone(),
        y: &ty,
        accuracy: vec![],
    };
    let mut fit = Fit::new(cfg);
    if a.test_each_epoch {
        fit = fit.callback(&mut curve);
    }
    let history = fit.run(&mut model, &mut adam, x, &y)?;
    let eval = evaluate(&model, tx, &ty, 256)?;
    if let Some(path) = &a.save {
        let meta = std::collections::HashMap::from([
            ("model".to_string(), kind.name().to_string()),
            ("epochs".to_string(), epochs.to_string()),
            ("seed".to_string(), a.seed.to_string()),
            ("lr_schedule".to_string(), a.lr_schedule.name().to_string()),
            ("train_images".to_string(), y.len().to_string()),
        ]);
        pare::tensor::checkpoint::save(&model, path, meta)?;
        println!("saved the weights to {}", path.display());
    }

    let secs: Vec<f64> = history.epochs.iter().map(|e| e.seconds).collect();
    let ips = y.len() as f64 * secs.len() as f64 / secs.iter().sum::<f64>();
    let rows: Vec<Vec<String>> = history
        .epochs
        .iter()
        .map(|e| {
            vec![
                format!("{}", e.epoch),
                format!("{:.4}", e.loss),
                common::pct(e.accuracy),
                format!("{:.2}", e.seconds),
            ]
        })
        .collect();
    println!(
        "\n{} ({} parameters), {} training images, batch {}, seed {}",
        kind.name(),
        model.num_params(),
        y.len(),
        a.batch_size,
        a.seed
    );
    common::print_table(&["epoch", "loss", "train acc", "seconds"], &rows);
    println!(
        "test accuracy: {} on {} images; {ips:.0} training images/s",
        common::pct(eval.accuracy),
        ty.len(),
    );
    let path = results.write_json(
        &format!("train-{}.json", kind.name()),
        json!({
            "model": kind.name(),
            "params": model.num_params(),
            "epochs": epochs,
            "batch_size": a.batch_size,
            "seed": a.seed,
            "lr_schedule": a.lr_schedule.name(),
            "train_images": y.len(),
            "threads": rayon::current_num_threads(),
            "test_accuracy": eval.accuracy,
            "test_loss": eval.loss,
            "epoch_seconds": secs,
            "train_loss": history.epochs.iter().map(|e| e.loss).collect::<Vec<_>>(),
            "train_accuracy": history.epochs.iter().map(|e| e.accuracy).collect::<Vec<_>>(),
            "train_images_per_second": ips,
            "test_accuracy_per_epoch": curve.accuracy,
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Scores the test set after each epoch; records only, never changes training.
struct TestCurve<'a> {
    x: ndarray::ArrayViewD<'a, f32>,
    y: &'a [usize],
    accuracy: Vec<f32>,
}

impl Callback for TestCurve<'_> {
    fn on_epoch_end(
        &mut self,
        log: &EpochLog,
        model: &mut pare::tensor::Sequential,
    ) -> pare::tensor::Result<()> {
        let e = evaluate(model, self.x.clone(), self.y, 256)?;
        println!(
            "epoch {}: test accuracy {}",
            log.epoch,
            common::pct(e.accuracy)
        );
        self.accuracy.push(e.accuracy);
        Ok(())
    }
}
