//! Batch-1 int8 latency of ResNet-8 (issue 17's model) on pare's integer engine and on
//! TFLite's default resolver (XNNPACK), measured in one run on the same int8 weights, scales
//! and zero points: pare converts the model, `tools/tflite_run.py` writes the same numbers as
//! a `.tflite` file, and both run one image at a time. The target is pare ≤ 0.7×
//! TFLite.
//!
//! Run: `cargo run --release --example int8_latency` (needs TensorFlow: `tools/setup-tf.sh`).
//! Writes `target/pare/int8-latency.json`.

mod common;

use std::hint::black_box;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use ndarray::{ArrayD, IxDyn};
use pare::measure::{load_average, median_micros};
use pare::quant::{ConvertConfig, Interpreter, convert};
use pare::tensor::models::resnet8;
use serde_json::json;

/// Times ResNet-8 int8 at batch 1 on pare and on TFLite (XNNPACK).
#[derive(Parser, Debug)]
struct Args {
    /// Timed calls per runtime (after up to 200 warm-up calls).
    #[arg(long, default_value_t = 3000, value_parser = common::positive)]
    runs: usize,
    /// Seed of the weights and of the calibration images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    common::run(|| body(common::parse()))
}

fn body(a: Args) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = pare::tflite::tf_python(root)
        .context("no TensorFlow: run tools/setup-tf.sh (or set PARE_TF_PYTHON)")?;
    // Latency does not depend on the weights' values: random weights, pseudo-images.
    let model = resnet8(a.seed);
    let image = |n: usize, salt: usize| {
        ArrayD::from_shape_fn(IxDyn(&[n, 28, 28, 1]), |i| {
            ((i[0] * 131 + i[1] * 29 + i[2] * 7 + salt) % 97) as f32 / 96.0
        })
    };
    let q = convert(&model, image(100, 0).view(), &ConvertConfig::default())?;
    let codes = q.quantize_input(image(1, 5).view())?;

    let mut it = Interpreter::new(&q)?;
    let pare_us = median_micros(a.runs, |_| {
        black_box(it.invoke_i8(codes.view()).expect("a checked input").len());
    });

    let results = common::results(false);
    let dir = results.dir().join("int8-latency");
    let mut spec = pare::tflite::spec(&q, 1, "resnet8", &dir, false)?;
    spec["bench_runs"] = json!(a.runs);
    let codes: Vec<i8> = codes.iter().copied().collect();
    let report = pare::tflite::run_tool(&python, root, &spec, &codes, &dir, "resnet8")?;
    let tflite_1 = report["xnnpack_us_1_thread"].as_f64().context("no TFLite timing")?;
    let tflite_n = report["xnnpack_us_default_threads"]
        .as_f64()
        .context("no TFLite timing")?;

    println!("ResNet-8 int8, batch 1, median of {} calls", a.runs);
    println!("| runtime                         | median µs | pare / it |");
    println!("|---------------------------------|-----------|-----------|");
    println!("| pare Interpreter (1 thread)     | {pare_us:>9.1} |           |");
    for (name, t) in [
        ("TFLite XNNPACK, 1 thread", tflite_1),
        ("TFLite XNNPACK, default threads", tflite_n),
    ] {
        println!("| {name:<31} | {t:>9.1} | {:>8.2}x |", pare_us / t);
    }
    let out = json!({
        "load_average": load_average(),
        "tensorflow": report["tensorflow"],
        "runs": a.runs,
        "pare_us": pare_us,
        "tflite_xnnpack_us_1_thread": tflite_1,
        "tflite_xnnpack_us_default_threads": tflite_n,
    });
    let path = results.write_json("int8-latency.json", out)?;
    println!("wrote {}", path.display());
    Ok(())
}
