//! The distillation experiment's tables and its results file.

use pare::distill::KdConfig;
use pare::measure::{Summary, decimal};
use pare::results::history_json;
use pare::sweep::KdCell;
use pare::tensor::train::History;
use serde_json::json;

use crate::{Args, BATCH, TEACHER_FILTERS, common};

/// What the students of every seed gave.
#[derive(Default)]
pub struct Runs {
    pub distilled: Vec<f32>,
    pub scratch: Vec<f32>,
    pub int8: Vec<f32>,
    pub distilled_h: Vec<History>,
    pub scratch_h: Vec<History>,
    pub params: usize,
}

/// Test accuracy after each epoch (the students train with the test set as validation data,
/// for this curve only).
fn test_curve(h: &History) -> Vec<Option<f64>> {
    h.epochs
        .iter()
        .map(|e| e.val_accuracy.map(decimal))
        .collect()
}

fn mean_epoch_seconds(histories: &[History]) -> Option<f64> {
    let secs: Vec<f64> = histories
        .iter()
        .flat_map(|h| h.epochs.iter().map(|e| e.seconds))
        .collect();
    (!secs.is_empty()).then(|| secs.iter().sum::<f64>() / secs.len() as f64)
}

fn print_sweep(cells: &[KdCell], scratch_mean: f64) {
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|c| {
            let s = c.summary();
            vec![
                c.alpha.to_string(),
                c.temperature.to_string(),
                s.percent(),
                format!("{:+.2}", (s.mean - scratch_mean) * 100.0),
            ]
        })
        .collect();
    println!();
    common::print_table(
        &["alpha", "T", "distilled accuracy", "vs scratch (pp)"],
        &rows,
    );
}

/// Everything the experiment measured.
pub struct Outcome {
    pub a: Args,
    pub kd: KdConfig,
    pub teacher_epochs: usize,
    pub student_epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub teacher_params: usize,
    pub teacher_accuracy: f32,
    pub teacher_history: Option<History>,
    pub cache_secs: Option<f64>,
    pub runs: Runs,
    pub sweep: Option<Vec<KdCell>>,
}

/// Prints the tables; returns distillation.json.
pub fn report(o: &Outcome) -> serde_json::Value {
    let Outcome {
        a,
        kd,
        teacher_epochs,
        student_epochs,
        train_images,
        test_images,
        teacher_params,
        teacher_accuracy,
        teacher_history,
        cache_secs,
        runs,
        sweep,
    } = o;
    let scratch = Summary::of(&runs.scratch);
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.1}"));
    let teacher_secs = teacher_history
        .as_ref()
        .and_then(|h| mean_epoch_seconds(std::slice::from_ref(h)));
    let distill_secs = mean_epoch_seconds(&runs.distilled_h);
    let distilled = Summary::of(&runs.distilled);
    let params = common::thousands(runs.params);
    let rows = vec![
        vec![
            format!("teacher ({}/{})", TEACHER_FILTERS.0, TEACHER_FILTERS.1),
            common::thousands(*teacher_params),
            common::pct(*teacher_accuracy),
            secs(teacher_secs),
        ],
        vec![
            format!("distilled (alpha {}, T {})", kd.alpha, kd.temperature),
            params.clone(),
            distilled.percent(),
            secs(distill_secs),
        ],
        vec![
            "scratch".to_string(),
            params.clone(),
            scratch.percent(),
            secs(mean_epoch_seconds(&runs.scratch_h)),
        ],
        vec![
            "distilled, int8".to_string(),
            params,
            Summary::of(&runs.int8).percent(),
            "-".to_string(),
        ],
    ];
    let n = a.seeds.len();
    println!(
        "\n{} training images, {} test images; {} per student, {}{}",
        *train_images,
        *test_images,
        common::count(*student_epochs, "epoch"),
        common::count(n, "seed"),
        if n > 1 {
            " (mean ± sample std [min, max])"
        } else {
            ""
        }
    );
    common::print_table(&["model", "params", "test accuracy", "s / epoch"], &rows);
    println!(
        "distilled - scratch: {:+.2} percentage points",
        (distilled.mean - scratch.mean) * 100.0
    );
    if let Some(s) = cache_secs {
        println!("teacher logits cached once in {s:.1} s");
    }
    if let Some(cells) = &sweep {
        print_sweep(cells, scratch.mean);
    }

    let decimals = |v: &[f32]| v.iter().copied().map(decimal).collect::<Vec<_>>();
    let (cached_secs, live_secs) = if a.no_cache {
        (None, distill_secs)
    } else {
        (distill_secs, None)
    };
    let trained = teacher_history.is_some();
    json!({
            "teacher_accuracy": [decimal(*teacher_accuracy)],
            "distilled_accuracy": decimals(&runs.distilled),
            "scratch_accuracy": decimals(&runs.scratch),
            "distilled_int8_accuracy": decimals(&runs.int8),
            "distilled_accuracy_per_epoch": runs.distilled_h.iter().map(test_curve).collect::<Vec<_>>(),
            "scratch_accuracy_per_epoch": runs.scratch_h.iter().map(test_curve).collect::<Vec<_>>(),
            "distilled": distilled.to_json(),
            "scratch": scratch.to_json(),
            "teacher_params": *teacher_params,
            "student_params": runs.params,
            "teacher_epoch_seconds": teacher_secs,
            "distill_epoch_seconds": cached_secs,
            "distill_epoch_seconds_no_cache": live_secs,
            "teacher_cache_seconds": cache_secs,
            "scratch_epoch_seconds": mean_epoch_seconds(&runs.scratch_h),
            "alpha": decimal(kd.alpha),
            "temperature": decimal(kd.temperature),
            "seeds": a.seeds,
            "teacher_seed": a.teacher_seed,
            "teacher_lr_schedule": trained.then(|| a.teacher_lr_schedule.name()),
            "teacher_loaded_from": a.teacher.as_ref().map(|p| p.display().to_string()),
            "teacher_epochs": trained.then_some(teacher_epochs),
            "student_epochs": student_epochs,
            "batch_size": BATCH,
            "train_images": *train_images,
            "test_images": *test_images,
            "threads": rayon::current_num_threads(),
            "sweep": sweep.as_ref().map(|cells| cells.iter().map(|c| c.to_json(scratch.mean)).collect::<Vec<_>>()),
            "histories": {
                "teacher": teacher_history.as_ref().map(history_json),
                "distilled": runs.distilled_h.iter().map(history_json).collect::<Vec<_>>(),
                "scratch": runs.scratch_h.iter().map(history_json).collect::<Vec<_>>(),
            },
    })
}
