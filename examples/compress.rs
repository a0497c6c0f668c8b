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
use pare::measure::Summary;
use pare::pipeline::{
    FrontierGrid, FrontierRow, Pipeline, PipelineConfig, PipelineData, PipelineReport, Teacher,
    choose, frontier, frontier_plot, train_teacher,
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
    /// Pruning fine-tune epochs.
    #[arg(long, default_value_t = 4, value_parser = common::positive)]
    prune_epochs: usize,
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
        prune_epochs: if q { 2 } else { a.prune_epochs },
        // TFMOT's 100 steps between mask updates; a quick run has too few steps for that.
        prune_frequency: if q { 5 } else { 100 },
        student_epochs: a.student_epochs.unwrap_or(if q { 1 } else { 3 }),
        verbose: !a.frontier,
        ..Default::default()
    };
    Pipeline::new(base.clone())?;
    let distilling = a.frontier || base.distill;
    let teacher_model = if distilling {
        Some(load_teacher(&a, &data)?)
    } else {
        None
    };
    let teacher = match &teacher_model {
        Some(m) => {
            let t = Teacher::new(m, &data)?;
            println!(
                "teacher: test {}, validation {}; logits cached in {:.1} s",
                common::pct(t.report.test_accuracy),
                common::pct(t.report.validation_accuracy),
                t.report.seconds
            );
            Some(t)
        }
        None => None,
    };
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
        println!("\n== seed {seed}: {}", describe(&base));
        let r = p.run(teacher.as_ref(), &data, &path)?;
        print_stages(&r);
        println!(
            "wrote {} ({:.1}x smaller than the f32 student, gzip)",
            path.display(),
            r.ratio()
        );
        reports.push(r);
    }
    let last = |r: &PipelineReport| r.stages.last().map_or(0.0, |s| s.test_accuracy);
    let test = Summary::of(&reports.iter().map(last).collect::<Vec<_>>());
    let ratio = reports.iter().map(PipelineReport::ratio).sum::<f64>() / reports.len() as f64;
    println!(
        "\n{}: test {} at {ratio:.1}x (mean over seeds)",
        describe(&base),
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

fn describe(c: &PipelineConfig) -> String {
    let how = if c.distill {
        "distilled"
    } else {
        "from scratch"
    };
    format!(
        "{how}, pruned to {:.0} %, {}",
        c.sparsity * 100.0,
        c.quantized_name()
    )
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
    let f32_gzip = r
        .stages
        .iter()
        .find(|s| s.name.starts_with("student"))
        .map_or(f64::NAN, |s| s.size.gzip_bytes as f64);
    let rows: Vec<Vec<String>> = r
        .stages
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                common::pct(s.test_accuracy),
                common::pct(s.validation_accuracy),
                common::thousands(s.size.bytes),
                common::thousands(s.size.gzip_bytes),
                if s.name.starts_with("teacher") {
                    "-".into()
                } else {
                    format!("{:.1}x", f32_gzip / s.size.gzip_bytes as f64)
                },
                format!("{:.1}", s.seconds),
            ]
        })
        .collect();
    let header = [
        "stage",
        "test",
        "validation",
        "bytes",
        "gzip",
        "vs f32",
        "s",
    ];
    common::print_table(&header, &rows);
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
        println!(
            "{} seed {}: test {}, validation {}, {} B gzip ({:.1}x)  [{:.0} s]",
            if r.distill { "distilled" } else { "scratch  " },
            r.seed,
            common::pct(r.quantized.test_accuracy),
            common::pct(r.quantized.validation_accuracy),
            r.quantized.size.gzip_bytes,
            r.ratio(),
            start.elapsed().as_secs_f64()
        );
    })?;
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.label(),
                r.test().percent(),
                format!("{:.2} %", r.validation().mean * 100.0),
                format!("{:.0}", r.gzip_bytes()),
                format!("{:.1}x", r.ratio()),
            ]
        })
        .collect();
    println!();
    common::print_table(
        &[
            "setting",
            "test (mean ± std [min, max])",
            "validation",
            "gzip B",
            "vs f32",
        ],
        &table,
    );
    let students: Vec<&FrontierRow> = rows.iter().filter(|r| r.distill).collect();
    let students = if students.is_empty() {
        rows.iter().collect()
    } else {
        students
    };
    let (gz, acc): (Vec<f64>, Vec<f32>) = students
        .iter()
        .flat_map(|r| &r.runs)
        .map(|r| (r.student.size.gzip_bytes as f64, r.student.test_accuracy))
        .unzip();
    let student = (
        gz.iter().sum::<f64>() / gz.len() as f64,
        Summary::of(&acc).mean,
    );
    let mut choices = Vec::new();
    for bar in [0.975, 0.98] {
        let c = choose(&rows, bar);
        match c {
            Some(r) => println!(
                "smallest with validation >= {:.1} %: {} — test {}, {:.1}x",
                bar * 100.0,
                r.label(),
                r.test().percent(),
                r.ratio()
            ),
            None => println!("no setting reaches validation {:.1} %", bar * 100.0),
        }
        choices.push(json!({
            "min_validation_accuracy": bar,
            "chosen": c.map(|r| json!({"label": r.label(), "test_accuracy": r.test().to_json(),
                "validation_accuracy": r.validation().mean, "gzip_bytes": r.gzip_bytes(),
                "ratio": r.ratio()})),
        }));
    }
    let points: Vec<_> = rows.iter().map(FrontierRow::point).collect();
    let svg = frontier_plot(&points, student)?;
    let svg_path = results.dir().join("compress-frontier.svg");
    pare::tensor::io::write_atomic(&svg_path, svg.as_bytes())?;
    let json = json!({
        "config": base.to_json(),
        "teacher": teacher.map(|t| t.report.to_json()),
        "grid": {
            "sparsities": grid.sparsities.iter().map(|s| pare::measure::decimal(*s)).collect::<Vec<_>>(),
            "bits": [8, 4], "distill": [true, false], "seeds": grid.seeds,
        },
        "f32_student": {"gzip_bytes": student.0, "test_accuracy": student.1},
        "rows": rows.iter().map(FrontierRow::to_json).collect::<Vec<_>>(),
        "choices": choices,
        "seconds": start.elapsed().as_secs_f64(),
    });
    let path = results.write_json("compress-frontier.json", json)?;
    println!("wrote {} and {}", path.display(), svg_path.display());
    Ok(())
}
