//! Every technique in one run on MNIST: distil the student from a teacher, prune it under the
//! distillation loss (polynomial schedule, global magnitude masks), cut out the dead channels,
//! fine-tune it through int4 or int8 fake-quant with the masks fixed, convert it and write one
//! file. `--frontier` sweeps sparsity × weight width × distillation on/off × seeds instead.
//!
//! Run: `cargo run --release --example compress -- --teacher PATH` (a teacher from the
//! distillation example, `target/pare/models/teacher-f32.safetensors`; `--teacher train` trains
//! one first). `--help` lists every flag; `--quick` is the CI-sized run. The figures and why:
//! `docs/notes/compress.md`.
//!
//! Writes `target/pare/compress.json` and the model file under `target/pare/models/`;
//! `--frontier` writes `compress-frontier.json` and `compress-frontier.svg` (all under
//! `target/pare/quick/` with `--quick`).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use pare::pipeline::{
    FrontierGrid, FrontierRow, Pipeline, PipelineConfig, PipelineData, PipelineReport, Teacher,
    choice_json, choose, f32_student, frontier, frontier_plot, train_teacher,
};
use pare::quant::WeightBits;
use pare::tensor::models::teacher_cnn;
use serde_json::json;

/// Distil, prune and quantize (QAT) the MNIST student into one small file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The teacher: a safetensors checkpoint of teacher_cnn(256, 512), or `train` to train one.
    #[arg(long, default_value = "train")]
    teacher: String,
    /// Teacher epochs when training one [default: 10; 1 with --quick].
    #[arg(long, value_parser = common::positive)]
    teacher_epochs: Option<usize>,
    /// Train the student on the labels alone (no teacher).
    #[arg(long)]
    no_distill: bool,
    /// Final sparsity of the pruning schedule, in [0, 1).
    #[arg(long, default_value_t = 0.9, value_parser = common::fraction)]
    sparsity: f32,
    /// Weight bits of the converted model: 4 or 8.
    #[arg(long, default_value_t = 4, value_parser = bits)]
    bits: u32,
    /// Epochs of quantization-aware training (0: post-training quantization).
    #[arg(long, default_value_t = 1)]
    qat: usize,
    /// Student epochs [default: 3; 1 with --quick].
    #[arg(long, value_parser = common::positive)]
    student_epochs: Option<usize>,
    /// Seeds, comma-separated: one run each.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0")]
    seeds: Vec<u64>,
    /// Sweep the frontier instead: --sparsities × 8/4 bits × distilled/scratch × --seeds.
    #[arg(long)]
    frontier: bool,
    /// The frontier's sparsities [default: 0.5,0.8,0.9,0.95; 0.5,0.9 with --quick].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    sparsities: Option<Vec<f32>>,
    /// CI-sized run: 3000 training images (300 held out), 2000 test images, short stages;
    /// results under target/pare/quick/.
    #[arg(long)]
    quick: bool,
    /// Directory of the MNIST IDX files [default: $MNIST_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// `--bits`: 4 or 8.
fn bits(s: &str) -> std::result::Result<u32, String> {
    match s {
        "4" => Ok(4),
        "8" => Ok(8),
        _ => Err("must be 4 or 8".into()),
    }
}

/// The targets: the smallest setting whose mean validation accuracy clears each.
const BARS: [f64; 2] = [0.975, 0.98];

fn main() -> ExitCode {
    let args: Args = common::parse();
    common::run(|| compress(args))
}

fn compress(a: Args) -> Result<()> {
    let q = a.quick;
    let results = common::results(q);
    let mnist = common::load_data(a.data_dir.as_deref())?;
    let (train, test) = if q {
        (mnist.train().take(3000), mnist.test().take(2000))
    } else {
        (mnist.train().clone(), mnist.test().clone())
    };
    let (x, y) = common::xy(&train);
    let (tx, ty) = common::xy(&test);
    let data = PipelineData::split(x.view(), &y, 0.1, (tx.view(), &ty))?;
    println!(
        "{} training, {} validation (choices), {} test images (reported only)",
        data.train.1.len(),
        data.validation.1.len(),
        ty.len()
    );
    let bits = WeightBits::from_bits(a.bits)?;
    let base = PipelineConfig {
        distill: !a.no_distill,
        sparsity: a.sparsity,
        bits,
        qat_epochs: a.qat,
        prune_epochs: if q { 2 } else { 4 },
        // TFMOT's 100 steps between mask updates; a quick run has too few steps for that.
        prune_frequency: if q { 5 } else { 100 },
        student_epochs: a.student_epochs.unwrap_or(if q { 1 } else { 3 }),
        verbose: !a.frontier,
        ..Default::default()
    };
    Pipeline::new(base.clone())?;
    let distilling = a.frontier || base.distill;
    let teacher_model = distilling.then(|| load_teacher(&a, &data)).transpose()?;
    let teacher = teacher_model
        .as_ref()
        .map(|m| Teacher::new(m, &data))
        .transpose()?;
    if let Some(t) = &teacher {
        let (test, val) = (t.report.test_accuracy, t.report.validation_accuracy);
        let (test, val, secs) = (common::pct(test), common::pct(val), t.report.seconds);
        println!("teacher: test {test}, validation {val}; logits cached in {secs:.1} s");
    }
    if a.frontier {
        return sweep(&a, &base, teacher.as_ref(), &data, &results);
    }

    let mut reports = Vec::new();
    for &seed in &a.seeds {
        let p = Pipeline::new(PipelineConfig {
            seed,
            ..base.clone()
        })?;
        let name = format!(
            "compressed-{}-seed{seed}.safetensors",
            base.quantized_name().replace(' ', "-")
        );
        let path = results.model_path(&name)?;
        println!("\n== seed {seed}: {}", base.describe());
        let r = p.run(teacher.as_ref(), &data, &path)?;
        print_stages(&r);
        println!(
            "wrote {} ({:.1}x smaller than the f32 student, gzip)",
            path.display(),
            r.ratio()
        );
        reports.push(r);
    }
    let (test, ratio) = PipelineReport::summary(&reports);
    println!(
        "\n{}: test {} at {ratio:.1}x (mean over seeds)",
        base.describe(),
        test.percent()
    );
    let json = json!({
        "config": base.to_json(),
        "teacher": teacher.as_ref().map(|t| t.report.to_json()),
        "seeds": a.seeds,
        "runs": reports.iter().map(PipelineReport::to_json).collect::<Vec<_>>(),
        "test_accuracy": test.to_json(),
        "ratio_to_f32_gzip": ratio,
    });
    let path = results.write_json("compress.json", json)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `--teacher PATH` loads teacher_cnn(256, 512); `--teacher train` trains it on the training
/// split.
fn load_teacher(a: &Args, data: &PipelineData<'_>) -> Result<pare::tensor::Sequential> {
    let mut model = teacher_cnn(256, 512, 0);
    if a.teacher == "train" {
        let epochs = a.teacher_epochs.unwrap_or(if a.quick { 1 } else { 10 });
        println!(
            "\n== teacher: training teacher_cnn(256, 512), {}",
            common::count(epochs, "epoch")
        );
        return Ok(train_teacher(model, epochs, 0, data, true)?);
    }
    let path = PathBuf::from(&a.teacher);
    pare::tensor::checkpoint::load(&mut model, &path)
        .with_context(|| format!("loading the teacher from {}", path.display()))?;
    Ok(model)
}

fn print_stages(r: &PipelineReport) {
    common::print_table(&PipelineReport::HEADER, &r.table());
    println!("{}", r.dead_channels.trim_end());
}

fn sweep(
    a: &Args,
    base: &PipelineConfig,
    teacher: Option<&Teacher<'_>>,
    data: &PipelineData<'_>,
    results: &pare::results::Results,
) -> Result<()> {
    let sparsities = a.sparsities.clone().unwrap_or(if a.quick {
        vec![0.5, 0.9]
    } else {
        vec![0.5, 0.8, 0.9, 0.95]
    });
    let grid = FrontierGrid {
        sparsities,
        bits: vec![WeightBits::Int8, WeightBits::Int4],
        distill: vec![true, false],
        seeds: a.seeds.clone(),
    };
    let start = std::time::Instant::now();
    let rows = frontier(base, &grid, teacher, data, |r| {
        let (q, secs) = (&r.quantized, start.elapsed().as_secs_f64());
        let (test, val) = (
            common::pct(q.test_accuracy),
            common::pct(q.validation_accuracy),
        );
        let what = format!(
            "{} {:.0} % int{}",
            r.distill,
            r.sparsity * 100.0,
            r.bits.bits()
        );
        let gz = q.size.gzip_bytes;
        println!(
            "distill {what} seed {}: test {test}, val {val}, {gz} B gzip [{secs:.0} s]",
            r.seed
        );
    })?;
    let table: Vec<Vec<String>> = rows.iter().map(FrontierRow::cells).collect();
    println!();
    common::print_table(&FrontierRow::HEADER, &table);
    let student = f32_student(&rows);
    for bar in BARS {
        match choose(&rows, bar) {
            Some(r) => println!(
                "smallest with validation >= {:.1} %: {}, test {}, {:.1}x",
                bar * 100.0,
                r.label(),
                r.test().percent(),
                r.ratio()
            ),
            None => println!("no setting reaches validation {:.1} %", bar * 100.0),
        }
    }
    let points: Vec<_> = rows.iter().map(FrontierRow::point).collect();
    let svg = frontier_plot(&points, student)?;
    let svg_path = results.dir().join("compress-frontier.svg");
    pare::tensor::io::write_atomic(&svg_path, svg.as_bytes())?;
    let json = json!({
        "config": base.to_json(),
        "teacher": teacher.map(|t| t.report.to_json()),
        "grid": grid.to_json(),
        "f32_student": {"gzip_bytes": student.0, "test_accuracy": student.1},
        "rows": rows.iter().map(FrontierRow::to_json).collect::<Vec<_>>(),
        "choices": BARS.map(|bar| choice_json(&rows, bar)),
        "seconds": start.elapsed().as_secs_f64(),
    });
    let path = results.write_json("compress-frontier.json", json)?;
    println!("wrote {} and {}", path.display(), svg_path.display());
    Ok(())
}
