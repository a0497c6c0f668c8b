//! Exports a pare model to ONNX and, with `--compare`, runs it on onnxruntime beside pare.
//!
//! `cargo run --release --example export -- --model PATH --format qdq|qoperator|float
//! --out model.onnx [--compare] [--quick]`
//!
//! PATH is a pare int8 model file or a float safetensors checkpoint of the `--arch` network
//! (as `examples/train.rs --save` writes). A float checkpoint exported as qdq or qoperator is
//! converted to int8 first, calibrated on `--calibration-size` training images; an int8 model
//! exported as float gives its dequantized network. `--compare` runs the file on onnxruntime
//! (`tools/setup-onnx.sh` installs it) on the MNIST test images and prints accuracy, agreement
//! and batch-1 latency beside pare's own, into `target/pare/export-<model>-<format>.json` too
//! (`target/pare/quick/` with `--quick`: 1,000 test images). QOperator codes are compared with
//! pare's engine under onnxruntime's rounding rule (bit for bit) and under pare's default,
//! TFLite's.

mod common;

use anyhow::{Context, Result, bail};
use ndarray::Axis;
use pare::codecs::SparseCodec;
use pare::measure::median_micros;
use pare::onnx::compare::{CodeDiff, agreement, argmaxes, max_abs_diff};
use pare::onnx::runtime::{Input, OnnxRuntime, Output};
use pare::onnx::{ActivationType, FileSize, Format, QOperatorOptions};
use pare::quant::{ConvertConfig, InputType, Interpreter, QuantizedModel, Rounding, convert};
use pare::tensor::Sequential;
use pare::tensor::models::Reference;
use pare::tensor::train::predict;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Export a pare model to ONNX; optionally compare onnxruntime with pare on MNIST.
#[derive(clap::Parser, Debug)]
#[command(version)]
struct Args {
    /// A pare int8 model file, or a float safetensors checkpoint of --arch.
    #[arg(long)]
    model: PathBuf,
    /// ONNX form: float, qdq or qoperator.
    #[arg(long, default_value = "qdq")]
    format: Format,
    /// Where to write the ONNX file.
    #[arg(long, default_value = "model.onnx")]
    out: PathBuf,
    /// Architecture of a float checkpoint: small, teacher or student.
    #[arg(long, default_value = "small")]
    arch: Reference,
    /// Training images that calibrate a float checkpoint exported as qdq or qoperator.
    #[arg(long, default_value_t = 100, value_parser = common::positive)]
    calibration_size: usize,
    /// Run the file on onnxruntime and pare on the MNIST test images and compare.
    #[arg(long)]
    compare: bool,
    /// Let onnxruntime fuse a QDQ model into its int8 kernels (session.qdqisint8allowed; by
    /// default on x86 it runs float operators on the dequantized values).
    #[arg(long)]
    int8_kernels: bool,
    /// QOperator with uint8 activations (int8 + 128), the type onnxruntime's x86 kernels
    /// are fastest on; the codes are the same bar the offset.
    #[arg(long)]
    uint8_activations: bool,
    /// Batch-1 runs timed for each latency median.
    #[arg(long, default_value_t = 1000, value_parser = common::positive)]
    latency_runs: usize,
    /// 1,000 test images instead of 10,000; JSON under target/pare/quick/.
    #[arg(long)]
    quick: bool,
    /// MNIST directory (default: MNIST_DIR, else ../shared/data/mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// An int8 model, or a float network (converted if asked).
enum Loaded {
    Int8(QuantizedModel),
    Float(Sequential),
}

fn load(args: &Args) -> Result<Loaded> {
    // The sparse codec reads dense kernels too, so it takes every pare int8 file.
    let int8_err = match QuantizedModel::load_with(&args.model, &SparseCodec) {
        Ok(q) => return Ok(Loaded::Int8(q)),
        Err(e) => e,
    };
    let mut model = args.arch.build(0);
    match pare::tensor::checkpoint::load(&mut model, &args.model) {
        Ok(_) => Ok(Loaded::Float(model)),
        Err(float_err) => bail!(
            "{} is neither a pare int8 model ({int8_err}) nor a {} checkpoint ({float_err})",
            args.model.display(),
            args.arch.name()
        ),
    }
}

fn main() -> ExitCode {
    common::run(|| run(common::parse()))
}

fn run(args: Args) -> Result<()> {
    let loaded = load(&args)?;
    let data = if args.compare || matches!(loaded, Loaded::Float(_)) && args.format != Format::Float
    {
        Some(common::load_data(args.data_dir.as_deref())?)
    } else {
        None
    };
    // 1. The two pare models the formats take: a float network, an int8 model.
    let (float, int8) = match loaded {
        Loaded::Int8(q) => (q.dequantized_model(), Some(q)),
        Loaded::Float(m) if args.format == Format::Float => (m, None),
        Loaded::Float(m) => {
            let d = data.as_ref().expect("loaded above for a conversion");
            let (x, _) = common::xy(d.train());
            let n = args.calibration_size.min(x.shape()[0]);
            let calibration = x.slice_axis(Axis(0), (0..n).into());
            let q = convert(&m, calibration.view(), &ConvertConfig::default())?;
            (m, Some(q))
        }
    };
    // 2. Export.
    let activations = match args.uint8_activations {
        true => ActivationType::Uint8,
        false => ActivationType::Int8,
    };
    let options = QOperatorOptions { activations };
    let onnx = pare::onnx::export_with(args.format, Some(&float), int8.as_ref(), &options)?;
    let size = pare::onnx::save(&onnx, &args.out)?;
    let pare_size = match &int8 {
        Some(q) if args.format != Format::Float => FileSize::of(&q.to_bytes_with(&SparseCodec)?),
        _ => FileSize::of(&std::fs::read(&args.model).context("reading --model")?),
    };
    println!(
        "{}: {} ONNX (opset {}), {} bytes ({} gzipped); pare's own file {} bytes ({} gzipped)",
        args.out.display(),
        args.format,
        pare::onnx::OPSET,
        size.raw,
        size.gzip,
        pare_size.raw,
        pare_size.gzip
    );
    let Some(data) = data.filter(|_| args.compare) else {
        return Ok(());
    };

    // 3. onnxruntime and pare on the same test images.
    let test = if args.quick {
        data.test().take(1000)
    } else {
        data.test().clone()
    };
    let (tx, ty) = common::xy(&test);
    let runtime = OnnxRuntime::in_workspace(Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let config: &[(&str, &str)] = if args.int8_kernels {
        &[("session.qdqisint8allowed", "1")]
    } else {
        &[]
    };
    let ort = |input| runtime.run_with(&args.out, input, args.latency_runs, config);
    let one = |i: usize| tx.slice_axis(Axis(0), (i % ty.len()..i % ty.len() + 1).into());
    let (ours, theirs, run, pare_us, codes) = match args.format {
        Format::Float => {
            let run = ort(Input::F32(tx.view()))?;
            let us = median_micros(args.latency_runs, |i| {
                predict(&float, one(i), 1).expect("a checked model runs");
            });
            let ours = predict(&float, tx.view(), 500)?;
            (ours, run.output.clone(), run, us, None)
        }
        Format::Qdq => {
            let q = int8.as_ref().expect("int8 model for qdq");
            let run = ort(Input::F32(tx.view()))?;
            let mut it = Interpreter::new(q)?;
            let us = median_micros(args.latency_runs, |i| {
                it.invoke(one(i)).expect("a checked model runs");
            });
            (q.predict(tx.view())?, run.output.clone(), run, us, None)
        }
        Format::QOperator => {
            let q = int8.as_ref().expect("int8 model for qoperator");
            let x = q.quantize_input(tx.view())?;
            // uint8 codes are the int8 ones + 128, for a uint8 model or uint8 activations.
            let x_u8 = x.mapv(|v| (v as u8) ^ 0x80);
            let uint8_input = args.uint8_activations || q.input_type() == InputType::Uint8;
            let run = ort(if uint8_input {
                Input::U8(x_u8.view())
            } else {
                Input::I8(x.view())
            })?;
            let mut it = Interpreter::new(q)?;
            let us = median_micros(args.latency_runs, |i| {
                let i = i % ty.len();
                it.invoke_i8(x.slice_axis(Axis(0), (i..i + 1).into()))
                    .expect("a checked model runs");
            });
            let ours = q.predict_i8(x.view())?;
            let ort_rule = q.clone().with_rounding(Rounding::OnnxRuntime)?;
            let ours_ort = ort_rule.predict_i8(x.view())?;
            let theirs: Vec<i8> = match &run.output {
                Output::I8(t) => t.iter().copied().collect(),
                Output::U8(t) => t.iter().map(|&v| (v ^ 0x80) as i8).collect(),
                Output::F32(_) => bail!("onnxruntime returned float logits for a QOperator model"),
            };
            let d = (
                CodeDiff::new(ours_ort.as_slice().expect("contiguous"), &theirs),
                CodeDiff::new(ours.as_slice().expect("contiguous"), &theirs),
            );
            let logits = ours.mapv(|v| v as f32);
            let theirs = Output::F32(ndarray::ArrayD::from_shape_vec(
                ours.shape(),
                theirs.iter().map(|&v| v as f32).collect(),
            )?);
            (logits, theirs, run, us, Some(d))
        }
    };
    let Output::F32(theirs) = theirs else {
        bail!("onnxruntime returned int8 codes for a float-output model");
    };
    let theirs = theirs.into_dimensionality::<ndarray::Ix2>()?;
    let (a, b) = (argmaxes(ours.view()), argmaxes(theirs.view()));
    let (acc_pare, acc_ort, agree) = (agreement(&a, &ty), agreement(&b, &ty), agreement(&a, &b));
    let diff = max_abs_diff(
        ours.as_slice().expect("contiguous"),
        theirs.as_standard_layout().as_slice().expect("contiguous"),
    );
    let (n, v, ops) = (ty.len(), &run.version, run.optimized_ops.join(" "));
    println!("\n{n} test images, onnxruntime {v} vs pare, one thread each; onnxruntime ran:");
    println!("{ops}\n");
    common::print_table(
        &["runtime", "accuracy", "argmax agreement", "batch-1 latency"],
        &[
            vec![
                "onnxruntime".into(),
                common::pct(acc_ort as f32),
                common::pct(agree as f32),
                format!("{:.1} us", run.latency_us),
            ],
            vec![
                "pare".into(),
                common::pct(acc_pare as f32),
                "-".into(),
                format!("{pare_us:.1} us"),
            ],
        ],
    );
    match &codes {
        Some((d, dt)) => println!(
            "\nint8 logits equal on {:.3} % of {} codes with onnxruntime's rounding (differences \
             {}), on {:.3} % with TFLite's ({})",
            100.0 * d.equal_fraction(),
            d.total,
            d.histogram_line(),
            100.0 * dt.equal_fraction(),
            dt.histogram_line()
        ),
        None => println!("\nmax |logit difference| {diff:.3e}"),
    }
    let variant = match (args.int8_kernels, args.uint8_activations) {
        (true, _) => "-int8-kernels",
        (_, true) => "-uint8",
        _ => "",
    };
    let stem = args
        .model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy());
    let path = common::results(args.quick).write_json(
        &format!("export-{stem}-{}{variant}.json", args.format),
        json!({
            "format": args.format.name(),
            "model": args.model.display().to_string(),
            "onnx_bytes": size.raw,
            "onnx_gzip_bytes": size.gzip,
            "pare_bytes": pare_size.raw,
            "pare_gzip_bytes": pare_size.gzip,
            "test_images": ty.len(),
            "onnxruntime": run.version,
            "accuracy_onnxruntime": acc_ort,
            "accuracy_pare": acc_pare,
            "argmax_agreement": agree,
            "max_abs_logit_difference": diff,
            "codes_equal_fraction": codes.as_ref().map(|d| d.0.equal_fraction()),
            "code_differences": codes.as_ref().map(|d| d.0.histogram_line()),
            "codes_equal_fraction_tflite_rounding": codes.as_ref().map(|d| d.1.equal_fraction()),
            "code_differences_tflite_rounding": codes.as_ref().map(|d| d.1.histogram_line()),
            "latency_us_onnxruntime": run.latency_us,
            "latency_us_pare": pare_us,
            "latency_runs": args.latency_runs,
            "onnxruntime_int8_kernels": args.int8_kernels,
            "uint8_activations": args.uint8_activations,
            "onnxruntime_ops": run.optimized_ops,
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}
