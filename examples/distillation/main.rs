//! The Keras knowledge-distillation experiment on MNIST: a large CNN teacher, a small student
//! distilled from it, and the same student trained from scratch (same initial weights, same
//! batch order), for every seed; the distilled student is also converted to int8. `--sweep`
//! distils for T in {1, 2, 4, 8, 10, 20} x alpha in {0.1, 0.5, 0.9} as well.
//!
//! Run: `cargo run --release --example distillation` (`--help` lists every flag; `--quick` is
//! the CI-sized run). Why these settings, and the figures they give: `docs/distillation.md`.
//!
//! Writes `target/pare/distillation.json` and the teacher, `target/pare/models/teacher-f32.
//! safetensors` (all under `target/pare/quick/` with `--quick`); `--teacher PATH` loads a
//! teacher instead of training one.

#[path = "../common/mod.rs"]
mod common;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use common::LrSchedule;
use ndarray::Axis;
use pare::distill::{Distiller, KdConfig, TeacherCache};
use pare::measure::{Summary, accuracy};
use pare::sweep::{EVAL_BATCH, KdCell, StudentRecipe, kd_sweep};
use pare::tensor::Sequential;
use pare::tensor::models::teacher_cnn;
use pare::tensor::train::{Fit, FitConfig, History, evaluate};

const BATCH: usize = 32;
const TEACHER_FILTERS: (usize, usize) = (256, 512);
const SWEEP_T: [f32; 6] = [1.0, 2.0, 4.0, 8.0, 10.0, 20.0];
const QUICK_SWEEP_T: [f32; 3] = [1.0, 4.0, 10.0];
const SWEEP_ALPHA: [f32; 3] = [0.1, 0.5, 0.9];

/// Knowledge distillation on MNIST, after the Keras example.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Teacher training epochs [default: 10; 1 with --quick].
    #[arg(long, value_parser = common::positive)]
    teacher_epochs: Option<usize>,
    /// Student training epochs, distilled and from scratch [default: 3; 1 with --quick].
    #[arg(long, value_parser = common::positive)]
    student_epochs: Option<usize>,
    /// Weight of the hard-label cross-entropy, in [0, 1] (the soft term gets 1 - alpha).
    #[arg(long, default_value_t = 0.1, value_parser = common::fraction)]
    alpha: f32,
    /// Softmax temperature of the soft term, > 0.
    #[arg(long, default_value_t = 10.0, value_parser = common::rate)]
    temperature: f32,
    /// Student seeds, comma-separated: one distilled and one scratch student each.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0")]
    seeds: Vec<u64>,
    /// Seed of the teacher's initial weights and batch order.
    #[arg(long, default_value_t = 0)]
    teacher_seed: u64,
    /// Load the teacher from this safetensors checkpoint instead of training it.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// The teacher's Adam schedule (rate 1e-3).
    #[arg(long, value_enum, default_value_t = LrSchedule::Cosine)]
    teacher_lr_schedule: LrSchedule,
    /// Run the teacher on every batch instead of caching its logits once.
    #[arg(long)]
    no_cache: bool,
    /// Also distil over the temperature x alpha grid (cached logits, every seed).
    #[arg(long)]
    sweep: bool,
    /// CI-sized run: 2000 training and test images, one epoch each; results under
    /// target/pare/quick/.
    #[arg(long)]
    quick: bool,
    /// Train on the first N training images only [default: all; 2000 with --quick].
    #[arg(long, value_parser = common::positive)]
    limit: Option<usize>,
    /// Test on the first N test images only [default: all; 2000 with --quick].
    #[arg(long, value_parser = common::positive)]
    test_limit: Option<usize>,
    /// Also write each distilled student as ONNX (float, QDQ and QOperator) into this directory.
    #[arg(long, value_name = "DIR")]
    onnx: Option<PathBuf>,
    /// Directory of the MNIST IDX files [default: $MNIST_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = common::parse();
    common::run(|| distil(args))
}

fn distil(a: Args) -> Result<()> {
    let q = a.quick;
    let teacher_epochs = a.teacher_epochs.unwrap_or(if q { 1 } else { 10 });
    let student_epochs = a.student_epochs.unwrap_or(if q { 1 } else { 3 });
    let quick_limit = |n: Option<usize>| if q { n.or(Some(2000)) } else { n };
    let kd = KdConfig {
        alpha: a.alpha,
        temperature: a.temperature,
    };
    let results = common::results(q);
    let data = common::load_data(a.data_dir.as_deref())?;
    let take =
        |d: &pare::mnist::Dataset, n: Option<usize>| n.map_or_else(|| d.clone(), |n| d.take(n));
    let train = take(data.train(), quick_limit(a.limit));
    let test = take(data.test(), quick_limit(a.test_limit));
    let (x, y) = common::xy(&train);
    let (tx, ty) = common::xy(&test);
    println!(
        "{} training images, {} test images, batch {BATCH}, seeds {:?}, alpha {}, T {}",
        y.len(),
        ty.len(),
        a.seeds,
        kd.alpha,
        kd.temperature
    );

    // 1. The teacher: trained here (and saved) or loaded.
    let (teacher, teacher_history) = teacher(&a, teacher_epochs, (x.view(), &y), &results)?;
    let teacher_accuracy = evaluate(&teacher, tx.view(), &ty, EVAL_BATCH)?.accuracy;
    println!("teacher test accuracy {}", common::pct(teacher_accuracy));

    // 2. The teacher's logits once, unless every batch runs the teacher (the sweep uses them).
    let cache = if !a.no_cache || a.sweep {
        let start = Instant::now();
        let c = TeacherCache::compute(&teacher, x.view(), EVAL_BATCH)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "cached the teacher's logits for {} images in {secs:.1} s",
            c.len()
        );
        Some((c, secs))
    } else {
        None
    };

    // 3. For every seed: a distilled student (and its int8 conversion) and a scratch one.
    let student = StudentRecipe {
        build: |seed| teacher_cnn(16, 32, seed),
        epochs: student_epochs,
        batch_size: BATCH,
        verbose: true,
    };
    let (train_xy, test_xy) = ((x.view(), y.as_slice()), (tx.view(), ty.as_slice()));
    // 100 calibration images, as in the quantization experiment.
    let calibration = x.slice_axis(Axis(0), (0..y.len().min(100)).into());
    let mut runs = report::Runs::default();
    for &seed in &a.seeds {
        let mut d = Distiller::new(&teacher, kd)?;
        if let (false, Some((c, _))) = (a.no_cache, &cache) {
            d = d.with_cache(c)?;
        }
        let how = if d.uses_cache() {
            "cached teacher logits"
        } else {
            "teacher on every batch"
        };
        println!("\n== distilled student, seed {seed} ({how})");
        let s = student.train(Some(&mut d), seed, train_xy.clone(), test_xy.clone())?;
        println!(
            "distilled test accuracy {}",
            common::pct(s.evaluation.accuracy)
        );
        // Full-integer int8 with TFLite's defaults (min-max observer, per-channel weights).
        let q = pare::quant::convert(&s.model, calibration.view(), &Default::default())?;
        runs.int8.push(accuracy(q.predict(tx.view())?.view(), &ty));
        let stem = format!("student-seed{seed}");
        common::write_onnx(a.onnx.as_deref(), &stem, Some(&s.model), Some(&q))?;
        runs.params = s.model.num_params();
        runs.distilled.push(s.evaluation.accuracy);
        runs.distilled_h.push(s.history);

        println!("\n== student from scratch, seed {seed}");
        let s = student.train(None, seed, train_xy.clone(), test_xy.clone())?;
        println!(
            "scratch test accuracy {}",
            common::pct(s.evaluation.accuracy)
        );
        runs.scratch.push(s.evaluation.accuracy);
        runs.scratch_h.push(s.history);
    }
    let scratch = Summary::of(&runs.scratch);

    // 4. The temperature x alpha grid, if asked.
    let sweep = match (&cache, a.sweep) {
        (Some((c, _)), true) => {
            let temps: &[f32] = if q { &QUICK_SWEEP_T } else { &SWEEP_T };
            let n = temps.len() * SWEEP_ALPHA.len() * a.seeds.len();
            println!(
                "\n== sweep: {} ({} each)",
                common::count(n, "student run"),
                common::count(student_epochs, "epoch")
            );
            let start = Instant::now();
            let done = |c: &KdCell| {
                let s = c.summary();
                println!(
                    "alpha {:<4} T {:<4} {}  ({:+.2} pp vs scratch)  [{:.0} s]",
                    c.alpha,
                    c.temperature,
                    s.percent(),
                    (s.mean - scratch.mean) * 100.0,
                    start.elapsed().as_secs_f64()
                );
            };
            let grid = (train_xy.clone(), test_xy.clone());
            Some(kd_sweep(
                &student,
                &teacher,
                c,
                &SWEEP_ALPHA,
                temps,
                &a.seeds,
                grid,
                done,
            )?)
        }
        _ => None,
    };

    let o = report::Outcome {
        kd,
        teacher_epochs,
        student_epochs,
        train_images: y.len(),
        test_images: ty.len(),
        teacher_params: teacher.num_params(),
        teacher_accuracy,
        teacher_history,
        cache_secs: cache.as_ref().map(|(_, s)| *s),
        runs,
        sweep,
        a,
    };
    let path = results.write_json("distillation.json", report::report(&o))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The teacher: loaded from `--teacher`, or trained (Adam 1e-3, batch 32) and saved.
fn teacher(
    a: &Args,
    teacher_epochs: usize,
    (x, y): (ndarray::ArrayViewD<'_, f32>, &[usize]),
    results: &pare::results::Results,
) -> Result<(Sequential, Option<History>)> {
    let mut teacher = teacher_cnn(TEACHER_FILTERS.0, TEACHER_FILTERS.1, a.teacher_seed);
    let history = match &a.teacher {
        Some(path) => {
            let meta = pare::tensor::checkpoint::load(&mut teacher, path)
                .with_context(|| format!("loading the teacher from {}", path.display()))?;
            println!("loaded teacher from {} ({meta:?})", path.display());
            None
        }
        None => {
            println!("\n== teacher: {}", common::count(teacher_epochs, "epoch"));
            let cfg = FitConfig {
                epochs: teacher_epochs,
                batch_size: BATCH,
                seed: a.teacher_seed,
                ..Default::default()
            };
            let steps = teacher_epochs * y.len().div_ceil(BATCH);
            let mut opt = pare::sweep::adam(1e-3, a.teacher_lr_schedule.cosine(), steps)?;
            let h = Fit::new(cfg).run(&mut teacher, &mut opt, x, y)?;
            let path = results.model_path("teacher-f32.safetensors")?;
            let meta = HashMap::from([
                (
                    "model",
                    format!("teacher_cnn({}, {})", TEACHER_FILTERS.0, TEACHER_FILTERS.1),
                ),
                ("epochs", teacher_epochs.to_string()),
                ("lr_schedule", a.teacher_lr_schedule.name().to_string()),
                ("seed", a.teacher_seed.to_string()),
                ("train_images", y.len().to_string()),
            ])
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            pare::tensor::checkpoint::save(&teacher, &path, meta)?;
            println!("saved the teacher to {}", path.display());
            Some(h)
        }
    };
    Ok((teacher, history))
}
