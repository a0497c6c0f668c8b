//! Post-training int8 quantization of the small MNIST CNN, as in TensorFlow's post-training
//! integer quantization tutorial: train the float model, calibrate on 100 training images,
//! convert to full integer (and to dynamic range), and compare accuracy, file size and latency.
//!
//! Run: `cargo run --release --example quantization` (`--help` lists every flag; `--quick` is
//! the CI-sized run). Why these settings, and the figures they give: `docs/quantization.md`.
//!
//! Writes `target/pare/quantization.json` and the models `small-f32.safetensors` and
//! `small-int8.safetensors` under `target/pare/models/` (all under `target/pare/quick/` with
//! `--quick`).

mod common;

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use ndarray::Axis;
use pare::measure::{FileSize, accuracy, agreement, load_average, median_micros};
use pare::quant::{ConvertConfig, Interpreter, Mode, ObserverKind, QuantizedModel, convert};
use pare::tensor::models::small_cnn;
use pare::tensor::optim::{Adam, AdamConfig};
use pare::tensor::train::{Fit, FitConfig, evaluate, predict};
use serde_json::{Value, json};

/// Calibration observers (pare-quant's `ObserverKind`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Observer {
    /// Min-max over the calibration images (TFLite's).
    #[value(name = "minmax")]
    MinMax,
    /// Moving-average min-max, per calibration batch.
    MovingAverage,
    /// A percentile of |x|.
    Percentile,
    /// The range with the least mean squared error (histogram search).
    Mse,
    /// The range with the least KL divergence (TensorRT's entropy calibration).
    Kl,
}

impl Observer {
    fn kind(self) -> ObserverKind {
        match self {
            Observer::MinMax => ObserverKind::MinMax,
            Observer::MovingAverage => ObserverKind::MovingAverage,
            Observer::Percentile => ObserverKind::Percentile,
            Observer::Mse => ObserverKind::Mse,
            Observer::Kl => ObserverKind::Kl,
        }
    }
}

/// Post-training int8 quantization of the small MNIST CNN.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Epochs of float training [default: 5; 1 with --quick].
    #[arg(long, value_parser = common::positive)]
    epochs: Option<usize>,
    /// Batch size (Adam, Keras' defaults).
    #[arg(long, default_value_t = 32, value_parser = common::positive)]
    batch_size: usize,
    /// Seed of the initial weights and of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images the activation ranges are calibrated on.
    #[arg(long, default_value_t = 100, value_parser = common::positive)]
    calibration_size: usize,
    /// Observer that picks the activation ranges.
    #[arg(long, value_enum, default_value_t = Observer::MinMax)]
    observer: Observer,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    per_tensor: bool,
    /// Epochs of quantization-aware training (Adam 1e-4) before a second conversion at the
    /// learned ranges, reported beside post-training int8 (0: off).
    #[arg(long, default_value_t = 0)]
    qat: usize,
    /// Also convert with every observer and compare them.
    #[arg(long)]
    all_observers: bool,
    /// Timed batch-1 runs per model (the median is reported).
    #[arg(long, default_value_t = 2000, value_parser = common::positive)]
    latency_runs: usize,
    /// CI-sized run: 3000 training and 1000 test images; results under target/pare/quick/.
    #[arg(long)]
    quick: bool,
    /// Also write the final models as ONNX (float, QDQ and QOperator) into this directory.
    #[arg(long, value_name = "DIR")]
    onnx: Option<PathBuf>,
    /// Directory of the MNIST IDX files [default: $MNIST_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = common::parse();
    common::run(|| quantize(args))
}

fn quantize(a: Args) -> Result<()> {
    let epochs = a.epochs.unwrap_or(if a.quick { 1 } else { 5 });
    let results = common::results(a.quick);
    let data = common::load_data(a.data_dir.as_deref())?;
    let (train, test) = if a.quick {
        (data.train().take(3000), data.test().take(1000))
    } else {
        (data.train().clone(), data.test().clone())
    };
    let (x, y) = common::xy(&train);
    let (tx, ty) = common::xy(&test);

    // 1. Train the float model (Keras defaults: Adam 1e-3, batch 32).
    let mut model = small_cnn(a.seed);
    let cfg = FitConfig {
        epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        ..Default::default()
    };
    let started = Instant::now();
    Fit::new(cfg).run(
        &mut model,
        &mut Adam::new(AdamConfig::default())?,
        x.view(),
        &y,
    )?;
    let train_seconds = started.elapsed().as_secs_f64();
    let f32_path = results.model_path("small-f32.safetensors")?;
    pare::tensor::checkpoint::save(&model, &f32_path, Default::default())?;

    // 2. Convert: full integer with the chosen observer, and dynamic range.
    let calibration = x.slice_axis(Axis(0), (0..a.calibration_size.min(y.len())).into());
    let config = ConvertConfig {
        observer: a.observer.kind(),
        per_channel: !a.per_tensor,
        ..Default::default()
    };
    let int8 = convert(&model, calibration.view(), &config)?;
    let dynamic_config = ConvertConfig {
        mode: Mode::DynamicRange,
        ..config.clone()
    };
    let dynamic = convert(&model, calibration.view(), &dynamic_config)?;

    // 2b. Quantization-aware fine-tune of a copy, converted at its learned ranges, if asked.
    let qat = if a.qat > 0 {
        let tune = pare::pipeline::QatFineTune {
            epochs: a.qat,
            batch_size: a.batch_size,
            learning_rate: 1e-4,
            bits: pare::quant::WeightBits::Int8,
            per_channel: !a.per_tensor,
            seed: a.seed,
            verbose: true,
        };
        Some(tune.run(&model, None, (x.view(), &y))?.quantized)
    } else {
        None
    };

    // 3. Accuracy on the test set, and the engine against the fake-quant simulation.
    let float_accuracy = evaluate(&model, tx.view(), &ty, 256)?.accuracy;
    let int8_logits = int8.predict(tx.view())?;
    let int8_accuracy = accuracy(int8_logits.view(), &ty);
    let dynamic_accuracy = accuracy(dynamic.predict(tx.view())?.view(), &ty);
    let qat_accuracy = match &qat {
        Some(q) => Some(accuracy(q.predict(tx.view())?.view(), &ty)),
        None => None,
    };
    let simulated = int8.simulate(&model, tx.view())?;
    let matches_simulation = agreement(int8_logits.view(), simulated.view());
    let simulated_accuracy = accuracy(simulated.view(), &ty);
    let sqnr = int8.layer_sqnr(&model, calibration.view())?;

    // 4. Files: f32 checkpoint vs int8 model, raw and gzipped; the file reloads the same.
    let int8_path = results.model_path("small-int8.safetensors")?;
    int8.save(&int8_path)?;
    common::write_onnx(a.onnx.as_deref(), "small", Some(&model), Some(&int8))?;
    let f32_size = FileSize::read(&f32_path)?;
    let int8_size = FileSize::read(&int8_path)?;
    let dynamic_size = FileSize::of(&dynamic.to_bytes()?);
    let reload_same = QuantizedModel::load(&int8_path)?.predict(tx.view())? == int8_logits;

    // 5. Batch-1 latency: the integer engine on int8 input (what a TFLite int8 model with
    //    inference_input_type int8 runs), with float in/out, and the float model, through
    //    `predict` (which records a graph) and on the kernels alone.
    let codes = int8.quantize_input(tx.view())?;
    let n = ty.len();
    let row = |i: usize| (i % n..i % n + 1).into();
    let mut interpreter = Interpreter::new(&int8)?;
    let int8_us = median_micros(a.latency_runs, |i| {
        let input = codes.slice_axis(Axis(0), row(i));
        black_box(interpreter.invoke_i8(input).expect("valid input")[[0, 0]]);
    });
    let int8_float_io_us = median_micros(a.latency_runs, |i| {
        let input = tx.slice_axis(Axis(0), row(i));
        black_box(interpreter.invoke(input).expect("valid input")[[0, 0]]);
    });
    let images: Vec<_> = (0..a.latency_runs.min(n))
        .map(|i| tx.slice_axis(Axis(0), row(i)).to_owned())
        .collect();
    let image = |i: usize| images[i % images.len()].view();
    let float_us = median_micros(a.latency_runs, |i| {
        black_box(predict(&model, image(i), 1).expect("valid input")[[0, 0]]);
    });
    let (lean, graph) = (
        pare::tensor::infer::forward(&model, image(0))?,
        predict(&model, image(0), 1)?,
    );
    if lean
        .iter()
        .zip(&graph)
        .any(|(l, r)| (l - r).abs() > 1e-4 * (1.0 + r.abs()))
    {
        bail!("the graph-free float path disagrees with predict");
    }
    let float_lean_us = median_micros(a.latency_runs, |i| {
        black_box(pare::tensor::infer::forward(&model, image(i)).expect("valid input")[[0, 0]]);
    });

    // 6. Every observer, if asked.
    let observers = if a.all_observers {
        let rows = pare::sweep::observer_sweep(
            &model,
            calibration.view(),
            tx.view(),
            &ty,
            &config,
            &ObserverKind::ALL,
        )?;
        rows.iter().map(|r| r.to_json(float_accuracy)).collect()
    } else {
        vec![]
    };

    // Report.
    println!(
        "\nsmall CNN, {} training images x {} ({train_seconds:.1} s), seed {}\ncalibration {} \
         images, observer {}, {} weights; {n} test images",
        y.len(),
        common::count(epochs, "epoch"),
        a.seed,
        calibration.shape()[0],
        config.observer,
        if a.per_tensor {
            "per-tensor"
        } else {
            "per-channel"
        },
    );
    let vs_float = |acc: f32| format!("{:+.2} pp", (acc - float_accuracy) * 100.0);
    let size_cells = |s: FileSize| [common::bytes(s.bytes), common::bytes(s.gzip_bytes)];
    let rows = [
        (
            "float32",
            float_accuracy,
            "-".into(),
            f32_size,
            format!("{float_lean_us:.1} µs"),
        ),
        (
            "int8 (full integer)",
            int8_accuracy,
            vs_float(int8_accuracy),
            int8_size,
            format!("{int8_us:.1} µs"),
        ),
        (
            "int8 (dynamic range)",
            dynamic_accuracy,
            vs_float(dynamic_accuracy),
            dynamic_size,
            "-".into(),
        ),
    ]
    .map(|(name, acc, delta, size, latency)| {
        let [raw, gz] = size_cells(size);
        vec![name.to_string(), common::pct(acc), delta, raw, gz, latency]
    });
    let mut rows = rows.to_vec();
    if let (Some(q), Some(acc)) = (&qat, qat_accuracy) {
        let [raw, gz] = size_cells(FileSize::of(&q.to_bytes()?));
        let name = format!("int8 (QAT, {})", common::count(a.qat, "epoch"));
        rows.insert(
            2,
            vec![name, common::pct(acc), vs_float(acc), raw, gz, "-".into()],
        );
    }
    let header = [
        "model",
        "accuracy",
        "vs float",
        "bytes",
        "gzip bytes",
        "batch-1",
    ];
    common::print_table(&header, &rows);
    println!(
        "float32 batch-1 through predict (records a graph): {float_us:.1} µs; int8 with float \
         in/out: {int8_float_io_us:.1} µs\nint8 file = {:.1} % of f32; reloaded file identical: \
         {reload_same}; load average {}\nengine vs fake-quant simulation: {:.2} % same \
         predictions (simulation accuracy {})",
        100.0 * int8_size.bytes as f64 / f32_size.bytes as f64,
        load_average().as_deref().unwrap_or("unknown"),
        matches_simulation * 100.0,
        common::pct(simulated_accuracy),
    );
    println!("\nper-layer SQNR on the calibration images:");
    let sqnr_rows: Vec<Vec<String>> = sqnr
        .iter()
        .map(|s| {
            vec![
                s.layer.clone(),
                s.op.to_string(),
                format!("{:.1}", s.sqnr_db),
            ]
        })
        .collect();
    common::print_table(&["layer", "op", "SQNR dB"], &sqnr_rows);
    if a.all_observers {
        print_observers(&observers);
    }

    let sqnr_json: serde_json::Map<String, Value> = sqnr
        .iter()
        .map(|s| {
            (
                s.layer.clone(),
                json!(s.sqnr_db.is_finite().then_some(s.sqnr_db)),
            )
        })
        .collect();
    let path = results.write_json(
        "quantization.json",
        json!({
            "seed": a.seed,
            "epochs": epochs,
            "train_images": y.len(),
            "test_images": n,
            "calibration_images": calibration.shape()[0],
            "observer": config.observer.as_str(),
            "per_channel": !a.per_tensor,
            "float_accuracy": float_accuracy,
            "int8_accuracy": int8_accuracy,
            "dynamic_range_accuracy": dynamic_accuracy,
            "qat_epochs": a.qat,
            "qat_accuracy": qat_accuracy,
            "simulated_accuracy": simulated_accuracy,
            "int8_matches_simulation": matches_simulation,
            "float_model_bytes": f32_size.bytes,
            "int8_model_bytes": int8_size.bytes,
            "dynamic_range_model_bytes": dynamic_size.bytes,
            "float_model_gzip_bytes": f32_size.gzip_bytes,
            "int8_model_gzip_bytes": int8_size.gzip_bytes,
            "dynamic_range_model_gzip_bytes": dynamic_size.gzip_bytes,
            "int8_to_float_size_ratio": int8_size.bytes as f64 / f32_size.bytes as f64,
            "float_us_per_image_batch1": float_us,
            "float_lean_us_per_image_batch1": float_lean_us,
            "int8_us_per_image_batch1": int8_us,
            "int8_float_io_us_per_image_batch1": int8_float_io_us,
            "latency_runs": a.latency_runs,
            "load_average": load_average().unwrap_or_else(|| "unknown".into()),
            "per_layer_sqnr_db": sqnr_json,
            "observers": observers,
            "train_seconds": train_seconds,
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The observer comparison, from the rows `observer_sweep` gave as JSON.
fn print_observers(rows: &[Value]) {
    println!("\nevery observer:");
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            vec![
                r["observer"].as_str().unwrap_or("").to_string(),
                format!("{:.2} %", f("int8_accuracy") * 100.0),
                format!("{:+.2} pp", f("delta_pp")),
                format!("{:.2} %", f("matches_simulation") * 100.0),
            ]
        })
        .collect();
    common::print_table(
        &["observer", "int8 accuracy", "vs float", "= simulation"],
        &rows,
    );
}
