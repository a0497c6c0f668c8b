//! Post-training int8 quantization of the small MNIST CNN, as in TensorFlow's post-training
//! integer quantization tutorial: train the float model, calibrate on 100 training images,
//! convert to full integer (and to dynamic range), and compare accuracy, file size and latency.
//!
//! `cargo run --release --example quantization -- [--epochs 5] [--batch-size 32] [--seed 0]
//! [--calibration-size 100] [--observer minmax|moving-average|percentile|mse|kl] [--per-tensor]
//! [--all-observers] [--latency-runs 2000] [--quick] [--data-dir DIR]`
//!
//! Writes `target/pare/models/small-f32.safetensors`, `target/pare/models/small-int8.safetensors`
//! and `target/pare/quantization.json`.

mod common;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, Ix2, Ix4, IxDyn};
use pare::quant::{ConvertConfig, Interpreter, Mode, ObserverKind, QuantizedModel, convert};
use pare::tensor::kernels::conv::{Window, im2col};
use pare::tensor::kernels::gemm::matmul;
use pare::tensor::kernels::pool::max_pool;
use pare::tensor::models::small_cnn;
use pare::tensor::nn::Layer;
use pare::tensor::optim::{Adam, AdamConfig};
use pare::tensor::train::{Fit, FitConfig, argmax, evaluate, predict};
use pare::tensor::{Activation, Sequential};
use serde_json::json;

struct Args {
    epochs: usize,
    batch_size: usize,
    seed: u64,
    calibration_size: usize,
    observer: ObserverKind,
    per_tensor: bool,
    all_observers: bool,
    latency_runs: usize,
    quick: bool,
    data_dir: Option<PathBuf>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        epochs: 5,
        batch_size: 32,
        seed: 0,
        calibration_size: 100,
        observer: ObserverKind::MinMax,
        per_tensor: false,
        all_observers: false,
        latency_runs: 2000,
        quick: false,
        data_dir: None,
    };
    let mut epochs = None;
    let mut args = lexopt::Parser::from_env();
    while let Some(arg) = args.next()? {
        use lexopt::prelude::*;
        match arg {
            Long("epochs") => epochs = Some(args.value()?.parse()?),
            Long("batch-size") => a.batch_size = args.value()?.parse()?,
            Long("seed") => a.seed = args.value()?.parse()?,
            Long("calibration-size") => a.calibration_size = args.value()?.parse()?,
            Long("observer") => a.observer = args.value()?.string()?.parse()?,
            Long("per-tensor") => a.per_tensor = true,
            Long("all-observers") => a.all_observers = true,
            Long("latency-runs") => a.latency_runs = args.value()?.parse()?,
            Long("quick") => a.quick = true,
            Long("data-dir") => a.data_dir = Some(args.value()?.into()),
            Long("help") => {
                println!(
                    "quantization [--epochs 5] [--batch-size 32] [--seed 0] [--calibration-size 100] \
                     [--observer minmax|moving-average|percentile|mse|kl] [--per-tensor] \
                     [--all-observers] [--latency-runs 2000] [--quick] [--data-dir DIR]"
                );
                std::process::exit(0);
            }
            _ => bail!(arg.unexpected()),
        }
    }
    a.epochs = epochs.unwrap_or(if a.quick { 1 } else { 5 });
    if a.calibration_size == 0 || a.latency_runs == 0 {
        bail!("--calibration-size and --latency-runs must be >= 1");
    }
    Ok(a)
}

fn accuracy(logits: &Array2<f32>, labels: &[usize]) -> f32 {
    let correct = logits
        .rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, y)| argmax(row.as_slice().expect("contiguous logits")) == **y)
        .count();
    correct as f32 / labels.len() as f32
}

fn classes(logits: &Array2<f32>) -> Vec<usize> {
    logits
        .rows()
        .into_iter()
        .map(|r| argmax(r.as_slice().expect("contiguous logits")))
        .collect()
}

fn same_fraction(a: &[usize], b: &[usize]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Median of `runs` single-image calls of `f(i)` (after a warm-up), in microseconds.
fn median_us(runs: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..runs.min(200) {
        f(i);
    }
    let mut t: Vec<f64> = (0..runs)
        .map(|i| {
            let start = Instant::now();
            f(i);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The float model at batch 1 without the autograd graph: im2col + GEMM, bias, activation,
/// max-pool, straight on pare-tensor's kernels. A fairer float latency than `predict`, which
/// records a graph (and copies every weight into it) per call.
fn lean_float(model: &Sequential, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let act = |y: &mut ArrayD<f32>, a: Activation| match a {
        Activation::Linear => {}
        Activation::Relu => y.mapv_inplace(|v| v.max(0.0)),
        Activation::LeakyRelu(alpha) => y.mapv_inplace(|v| if v > 0.0 { v } else { alpha * v }),
    };
    let mut v = x.clone();
    let n = x.shape()[0];
    for layer in &model.layers {
        v = match layer {
            Layer::Conv2d(c) => {
                let x4 = v.view().into_dimensionality::<Ix4>()?;
                let [kh, kw, cin, cout] = c.kernel_shape();
                let (_, h, w, _) = x4.dim();
                let Some(win) = Window::new([n, h, w, cin], [kh, kw], c.strides, c.padding) else {
                    bail!("conv {} does not fit {:?}", c.name, x4.shape());
                };
                let cols = im2col(x4, &win);
                let k = c
                    .kernel
                    .value
                    .view()
                    .into_shape_with_order((kh * kw * cin, cout))?;
                let mut y = matmul(cols.view(), k).into_dyn();
                y += &c.bias.value;
                act(&mut y, c.activation);
                y.into_shape_with_order(IxDyn(&[n, win.oh, win.ow, cout]))?
            }
            Layer::Dense(d) => {
                let x2 = v.view().into_dimensionality::<Ix2>()?;
                let k = d.kernel.value.view().into_dimensionality::<Ix2>()?;
                let mut y = matmul(x2, k).into_dyn();
                y += &d.bias.value;
                act(&mut y, d.activation);
                y
            }
            Layer::MaxPool2d(p) => {
                let x4 = v.view().into_dimensionality::<Ix4>()?;
                let (_, h, w, c) = x4.dim();
                let Some(win) = Window::new([n, h, w, c], p.pool, p.strides, p.padding) else {
                    bail!("pool {} does not fit {:?}", p.name, x4.shape());
                };
                max_pool(x4, &win).into_dyn()
            }
            Layer::Flatten(_) => {
                let rest = v.len() / n;
                v.into_shape_with_order(IxDyn(&[n, rest]))?
            }
            Layer::Reshape(r) => {
                let s: Vec<usize> = std::iter::once(n).chain(r.shape.iter().copied()).collect();
                v.into_shape_with_order(IxDyn(&s))?
            }
            Layer::ReLU(_) => v.mapv(|x| x.max(0.0)),
            Layer::LeakyReLU(l) => v.mapv(|x| if x > 0.0 { x } else { l.alpha * x }),
            other => bail!("lean_float: no float path for {other:?}"),
        };
    }
    Ok(v)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> Result<()> {
    let a = parse()?;
    let data = common::load_data(a.data_dir.as_deref())?;
    let train = if a.quick {
        data.train().take(3000)
    } else {
        data.train().clone()
    };
    let test = if a.quick {
        data.test().take(1000)
    } else {
        data.test().clone()
    };
    let (x, y) = common::xy(&train);
    let (tx, ty) = common::xy(&test);

    // 1. Train the float model (Keras defaults: Adam 1e-3, batch 32).
    let mut model = small_cnn(a.seed);
    let mut adam = Adam::new(AdamConfig::default())?;
    let cfg = FitConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        ..Default::default()
    };
    let started = Instant::now();
    Fit::new(cfg).run(&mut model, &mut adam, x.view(), &y)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let models = common::out_dir().join("models");
    let f32_path = models.join("small-f32.safetensors");
    pare::tensor::checkpoint::save(&model, &f32_path, Default::default())?;

    // 2. Convert: full integer with the chosen observer, and dynamic range.
    let calibration = x.slice_axis(Axis(0), (0..a.calibration_size.min(y.len())).into());
    let config = ConvertConfig {
        observer: a.observer,
        per_channel: !a.per_tensor,
        ..Default::default()
    };
    let int8 = convert(&model, calibration.view(), &config)?;
    let dynamic = convert(
        &model,
        calibration.view(),
        &ConvertConfig {
            mode: Mode::DynamicRange,
            ..config.clone()
        },
    )?;

    // 3. Accuracy on the test set, and the engine against the fake-quant simulation.
    let float_eval = evaluate(&model, tx.view(), &ty, 256)?;
    let int8_logits = int8.predict(tx.view())?;
    let int8_accuracy = accuracy(&int8_logits, &ty);
    let dynamic_accuracy = accuracy(&dynamic.predict(tx.view())?, &ty);
    let simulated = int8.simulate(&model, tx.view())?;
    let matches_simulation = same_fraction(&classes(&int8_logits), &classes(&simulated));
    let simulated_accuracy = accuracy(&simulated, &ty);
    let sqnr = int8.layer_sqnr(&model, calibration.view())?;

    // 4. Files: f32 checkpoint vs int8 model, raw and gzipped.
    let int8_path = models.join("small-int8.safetensors");
    int8.save(&int8_path)?;
    let f32_bytes = std::fs::read(&f32_path)?;
    let int8_bytes = std::fs::read(&int8_path)?;
    let dynamic_bytes = dynamic.to_bytes()?;
    let reloaded = QuantizedModel::load(&int8_path)?;
    let reload_same = reloaded.predict(tx.view())? == int8_logits;

    // 5. Batch-1 latency: the integer engine on int8 input (what a TFLite int8 model with
    //    inference_input_type int8 runs), with float in/out, and the float model.
    let codes = int8.quantize_input(tx.view())?;
    let n = ty.len();
    let mut interpreter = Interpreter::new(&int8)?;
    let one =
        |arr: &ArrayViewD<'_, f32>, i: usize| arr.slice_axis(Axis(0), (i..i + 1).into()).to_owned();
    let int8_us = median_us(a.latency_runs, |i| {
        let row = codes.slice_axis(Axis(0), (i % n..i % n + 1).into());
        black_box(interpreter.invoke_i8(row).expect("valid input")[[0, 0]]);
    });
    let int8_float_io_us = median_us(a.latency_runs, |i| {
        let row = tx.slice_axis(Axis(0), (i % n..i % n + 1).into());
        black_box(interpreter.invoke(row).expect("valid input")[[0, 0]]);
    });
    let images: Vec<_> = (0..a.latency_runs.min(n)).map(|i| one(&tx, i)).collect();
    let float_us = median_us(a.latency_runs, |i| {
        let img = &images[i % images.len()];
        black_box(predict(&model, img.view(), 1).expect("valid input")[[0, 0]]);
    });
    let lean = lean_float(&model, &images[0])?;
    let reference = predict(&model, images[0].view(), 1)?;
    for (l, r) in lean.iter().zip(reference.iter()) {
        if (l - r).abs() > 1e-4 * (1.0 + r.abs()) {
            bail!("lean float path disagrees with predict: {l} vs {r}");
        }
    }
    let float_lean_us = median_us(a.latency_runs, |i| {
        let img = &images[i % images.len()];
        black_box(lean_float(&model, img).expect("valid input")[[0, 0]]);
    });

    // 6. Every observer, if asked.
    let mut observer_rows = vec![];
    if a.all_observers {
        for kind in ObserverKind::ALL {
            let q = convert(
                &model,
                calibration.view(),
                &ConvertConfig {
                    observer: kind,
                    ..config.clone()
                },
            )?;
            let logits = q.predict(tx.view())?;
            let acc = accuracy(&logits, &ty);
            let sim = same_fraction(&classes(&logits), &classes(&q.simulate(&model, tx.view())?));
            let input = q.input_quant().expect("full-integer model");
            let out = q.output_quant().expect("full-integer model");
            observer_rows.push(json!({
                "observer": kind.as_str(),
                "int8_accuracy": acc,
                "delta_pp": (acc - float_eval.accuracy) * 100.0,
                "matches_simulation": sim,
                "input_scale": input.scale,
                "output_scale": out.scale,
                "output_zero_point": out.zero_point,
            }));
        }
    }

    // Report.
    let pct = common::pct;
    println!(
        "\nsmall CNN, {} training images x {} epochs ({train_seconds:.1} s), seed {}, \
         calibration {} images, observer {}, {} weights; {} test images",
        y.len(),
        a.epochs,
        a.seed,
        calibration.shape()[0],
        a.observer,
        if a.per_tensor {
            "per-tensor"
        } else {
            "per-channel"
        },
        n
    );
    let kb = |b: usize| format!("{:.1} KiB", b as f64 / 1024.0);
    let rows = vec![
        vec![
            "float32".into(),
            pct(float_eval.accuracy),
            "-".into(),
            kb(f32_bytes.len()),
            kb(common::gzip_len(&f32_bytes)),
            format!("{float_lean_us:.1} µs ({float_us:.1} via predict)"),
        ],
        vec![
            "int8 (full integer)".into(),
            pct(int8_accuracy),
            format!("{:+.2} pp", (int8_accuracy - float_eval.accuracy) * 100.0),
            kb(int8_bytes.len()),
            kb(common::gzip_len(&int8_bytes)),
            format!("{int8_us:.1} µs"),
        ],
        vec![
            "int8 weights (dynamic range)".into(),
            pct(dynamic_accuracy),
            format!(
                "{:+.2} pp",
                (dynamic_accuracy - float_eval.accuracy) * 100.0
            ),
            kb(dynamic_bytes.len()),
            kb(common::gzip_len(&dynamic_bytes)),
            "-".into(),
        ],
    ];
    common::print_table(
        &[
            "model",
            "accuracy",
            "vs float",
            "file",
            "gzipped",
            "batch-1 latency",
        ],
        &rows,
    );
    println!(
        "int8 with float in/out: {int8_float_io_us:.1} µs/image; int8 file = {:.1} % of f32; \
         engine vs fake-quant simulation: {:.2} % same predictions (simulation accuracy {}); \
         reloaded file identical: {reload_same}; load average {}",
        100.0 * int8_bytes.len() as f64 / f32_bytes.len() as f64,
        matches_simulation * 100.0,
        pct(simulated_accuracy),
        load_average()
    );
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
    println!("\nper-layer SQNR on the calibration images:");
    common::print_table(&["layer", "op", "SQNR dB"], &sqnr_rows);
    if a.all_observers {
        println!("\nevery observer:");
        let rows: Vec<Vec<String>> = observer_rows
            .iter()
            .map(|r| {
                vec![
                    r["observer"].as_str().unwrap_or("").to_string(),
                    pct(r["int8_accuracy"].as_f64().unwrap_or(0.0) as f32),
                    format!("{:+.2} pp", r["delta_pp"].as_f64().unwrap_or(0.0)),
                    format!(
                        "{:.2} %",
                        r["matches_simulation"].as_f64().unwrap_or(0.0) * 100.0
                    ),
                ]
            })
            .collect();
        common::print_table(
            &["observer", "int8 accuracy", "vs float", "= simulation"],
            &rows,
        );
    }

    let sqnr_json: serde_json::Map<String, serde_json::Value> = sqnr
        .iter()
        .map(|s| {
            let v = if s.sqnr_db.is_finite() {
                json!(s.sqnr_db)
            } else {
                serde_json::Value::Null
            };
            (s.layer.clone(), v)
        })
        .collect();
    let path = common::write_json(
        "quantization.json",
        &json!({
            "seed": a.seed,
            "epochs": a.epochs,
            "train_images": y.len(),
            "test_images": n,
            "calibration_images": calibration.shape()[0],
            "observer": a.observer.as_str(),
            "per_channel": !a.per_tensor,
            "float_accuracy": float_eval.accuracy,
            "int8_accuracy": int8_accuracy,
            "dynamic_range_accuracy": dynamic_accuracy,
            "simulated_accuracy": simulated_accuracy,
            "int8_matches_simulation": matches_simulation,
            "float_model_bytes": f32_bytes.len(),
            "int8_model_bytes": int8_bytes.len(),
            "dynamic_range_model_bytes": dynamic_bytes.len(),
            "float_model_gzip_bytes": common::gzip_len(&f32_bytes),
            "int8_model_gzip_bytes": common::gzip_len(&int8_bytes),
            "dynamic_range_model_gzip_bytes": common::gzip_len(&dynamic_bytes),
            "int8_to_float_size_ratio": int8_bytes.len() as f64 / f32_bytes.len() as f64,
            "float_us_per_image_batch1": float_us,
            "float_lean_us_per_image_batch1": float_lean_us,
            "int8_us_per_image_batch1": int8_us,
            "int8_float_io_us_per_image_batch1": int8_float_io_us,
            "latency_runs": a.latency_runs,
            "load_average": load_average(),
            "per_layer_sqnr_db": sqnr_json,
            "observers": observer_rows,
            "train_seconds": train_seconds,
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}
