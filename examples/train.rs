//! Trains one of the reference CNNs on MNIST and reports accuracy and speed.
//!
//! `cargo run --release --example train -- --model small|teacher|student --epochs N
//! [--batch-size 32] [--seed S] [--limit N] [--data-dir DIR] [--test-each-epoch]
//! [--lr-schedule constant|cosine] [--save PATH]`
//! `--save PATH` writes the trained weights as a safetensors checkpoint.
//! `--lr-schedule cosine` decays Adam's rate to 0 over the run (Keras' `CosineDecay`).
//! `--test-each-epoch` scores the test set after every epoch to show the learning curve; it is
//! a diagnostic only and selects nothing. Writes `target/pare/train-<model>.json`.

mod common;

use anyhow::{Result, bail};
use pare::tensor::models::Reference;
use pare::tensor::train::{Callback, Fit, FitConfig, evaluate};
use serde_json::json;
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut model_kind = Reference::Small;
    let (mut epochs, mut batch_size, mut seed, mut limit) = (None, 32usize, 0u64, None::<usize>);
    let mut data_dir: Option<PathBuf> = None;
    let mut quick = false;
    let mut test_each_epoch = false;
    let mut cosine = false;
    let mut save: Option<PathBuf> = None;
    let mut args = lexopt::Parser::from_env();
    while let Some(arg) = args.next()? {
        use lexopt::prelude::*;
        match arg {
            Long("model") => {
                model_kind = args
                    .value()?
                    .string()?
                    .parse()
                    .map_err(anyhow::Error::msg)?
            }
            Long("epochs") => epochs = Some(args.value()?.parse()?),
            Long("batch-size") => batch_size = args.value()?.parse()?,
            Long("seed") => seed = args.value()?.parse()?,
            Long("limit") => limit = Some(args.value()?.parse()?),
            Long("data-dir") => data_dir = Some(args.value()?.into()),
            Long("quick") => quick = true,
            Long("test-each-epoch") => test_each_epoch = true,
            Long("save") => save = Some(args.value()?.into()),
            Long("lr-schedule") => {
                cosine = common::parse_cosine("--lr-schedule", &args.value()?.string()?)?
            }
            Long("help") => {
                println!(
                    "train --model small|teacher|student [--epochs N] [--batch-size 32] [--seed S] [--limit N] [--data-dir DIR] [--test-each-epoch] [--lr-schedule constant|cosine] [--save PATH] [--quick]"
                );
                return Ok(());
            }
            _ => bail!(arg.unexpected()),
        }
    }
    let epochs = epochs.unwrap_or(match model_kind {
        Reference::Small => 5,
        Reference::Teacher => 1,
        Reference::Student => 3,
    });
    if quick {
        limit = Some(limit.unwrap_or(2000));
    }
    let data = common::load_data(data_dir.as_deref())?;
    let train = match limit {
        Some(n) => data.train().take(n),
        None => data.train().clone(),
    };
    let (x, y) = common::xy(&train);
    let (tx, ty) = common::xy(data.test());
    let mut model = model_kind.build(seed);
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut adam = common::adam(cosine, epochs * y.len().div_ceil(batch_size))?;
    let cfg = FitConfig {
        epochs,
        batch_size,
        seed,
        ..Default::default()
    };
    let mut curve = TestCurve {
        x: tx.clone(),
        y: &ty,
        accuracy: vec![],
    };
    let mut fit = Fit::new(cfg);
    if test_each_epoch {
        fit = fit.callback(&mut curve);
    }
    let history = fit.run(&mut model, &mut adam, x, &y)?;
    let eval = evaluate(&model, tx, &ty, 256)?;
    if let Some(path) = &save {
        let meta = std::collections::HashMap::from([
            ("model".to_string(), model_kind.name().to_string()),
            ("epochs".to_string(), epochs.to_string()),
            ("seed".to_string(), seed.to_string()),
            (
                "lr_schedule".to_string(),
                common::schedule_name(cosine).to_string(),
            ),
            ("train_images".to_string(), y.len().to_string()),
        ]);
        pare::tensor::checkpoint::save(&model, path, meta)?;
        println!("saved the weights to {}", path.display());
    }
    let secs: Vec<f64> = history.epochs.iter().map(|e| e.seconds).collect();
    let ips = y.len() as f64 * secs.len() as f64 / secs.iter().sum::<f64>();
    let mut rows = vec![];
    for e in &history.epochs {
        rows.push(vec![
            format!("{}", e.epoch + 1),
            format!("{:.4}", e.loss),
            common::pct(e.accuracy),
            format!("{:.2}", e.seconds),
        ]);
    }
    println!(
        "\n{} ({} parameters), {} training images, batch {batch_size}, seed {seed}",
        model_kind.name(),
        model.num_params(),
        y.len()
    );
    common::print_table(&["epoch", "loss", "train acc", "seconds"], &rows);
    println!(
        "test accuracy: {} on {} images; {:.0} training images/s",
        common::pct(eval.accuracy),
        ty.len(),
        ips
    );
    let path = common::write_json(
        &format!("train-{}.json", model_kind.name()),
        &json!({
            "model": model_kind.name(),
            "params": model.num_params(),
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "lr_schedule": common::schedule_name(cosine),
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
        log: &pare::tensor::train::EpochLog,
        model: &mut pare::tensor::Sequential,
    ) -> pare::tensor::Result<()> {
        let e = evaluate(model, self.x.clone(), self.y, 256)?;
        println!(
            "epoch {}: test accuracy {}",
            log.epoch + 1,
            common::pct(e.accuracy)
        );
        self.accuracy.push(e.accuracy);
        Ok(())
    }
}
