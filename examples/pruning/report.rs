//! The pruning experiment's tables and its results file.

use anyhow::Result;
use pare::breakdown::{FileBreakdown, kernel_storage};
use pare::measure::FileSize;
use pare::prune::LayerSparsity;
use pare::results::{Results, history_json};
use pare::sweep::SweepPoint;
use pare::tensor::Sequential;
use pare::tensor::train::History;
use serde_json::{Value, json};

use crate::{DENSE_KERNEL, Outcome, common};

/// Size targets for a pruned int8 file: gzip bytes, raw bytes, gzip ratio to the f32 baseline.
const TARGETS: (usize, usize, f64) = (5_000, 8_000, 15.0);

/// " (dense.kernel only)" when `--prune-only` chose kernels, else nothing: "80 %" alone means
/// every kernel, as in TFMOT's tutorial.
fn scope(o: &Outcome) -> String {
    let only = o.args.prune_only.as_ref();
    only.map_or(String::new(), |n| format!(" ({} only)", n.join(", ")))
}

/// TFMOT's per-layer sparsity table.
pub fn print_layers(layers: &[LayerSparsity]) {
    let rows: Vec<Vec<String>> = layers
        .iter()
        .map(|l| {
            let (total, zeros) = (l.total.to_string(), l.zeros.to_string());
            vec![l.name.clone(), total, zeros, common::pct(l.sparsity)]
        })
        .collect();
    common::print_table(&["parameter", "elements", "zeros", "sparsity"], &rows);
}

/// Every table of the experiment.
pub fn print(o: &Outcome, results: &Results) -> Result<()> {
    let path = results.model_path("pruned-int8.safetensors")?;
    println!("\nbytes of {}:", path.display());
    let rows: Vec<Vec<String>> = o.breakdown.rows().iter().map(|r| r.to_vec()).collect();
    common::print_table(&FileBreakdown::HEADER, &rows);
    println!("{}", o.breakdown.summary());

    let storage = |f: &str| -> Result<String> {
        let bytes = std::fs::read(results.model_path(&format!("{f}.safetensors"))?)?;
        Ok(kernel_storage(&bytes)?)
    };
    let p80 = format!("pruned 80 %{}", scope(o));
    let (q, all, dr) = (&o.pruned_int8, &o.all_channels_int8, &o.dynamic_range);
    let mut rows = vec![
        row("baseline f32", o.base_acc, o.base_size, "dense f32".into()),
        row(
            "baseline int8",
            o.base_int8.accuracy,
            o.base_int8.size,
            storage("baseline-int8")?,
        ),
        row(
            &format!("{p80} f32"),
            o.main.accuracy,
            o.pruned_dense_size,
            "dense f32 (as TFMOT)".into(),
        ),
        row(
            &format!("{p80} f32"),
            o.main.accuracy,
            o.pruned_size,
            "sparse f32".into(),
        ),
        row(
            &format!("{p80} int8"),
            q.accuracy,
            o.pruned_int8_dense,
            "dense int8".into(),
        ),
        row(
            &format!("{p80} int8"),
            q.accuracy,
            q.size,
            storage("pruned-int8")?,
        ),
        row(
            &format!("{p80} int8"),
            all.accuracy,
            all.size,
            storage("pruned-int8-all-channels")? + ", all channels",
        ),
        row(
            &format!("{p80} dyn-range"),
            dr.accuracy,
            dr.size,
            storage("pruned-int8-dynamic-range")? + ", f32 act.",
        ),
    ];
    for p in &o.dense_only {
        let name = format!("{DENSE_KERNEL} {:.0} %", p.sparsity * 100.0);
        let file = format!("dense-only-{:.0}-int8", p.sparsity * 100.0);
        rows.push(row(
            &format!("{name} f32"),
            p.f32_accuracy,
            p.f32_model,
            "sparse f32".into(),
        ));
        rows.push(row(
            &format!("{name} int8"),
            p.int8_accuracy,
            p.int8_model,
            storage(&file)?,
        ));
    }
    let filters = |m: &Sequential| m.param("conv2d.bias").map_or(0, |p| p.value.len());
    // The stripped model keeps the baseline's architecture.
    let (kept, all) = (filters(&o.structured.model), filters(&o.main.stripped));
    let st = format!("structured {kept}/{all} filters");
    let (sa, sq) = (o.structured.accuracy, &o.structured_int8);
    rows.push(row(
        &format!("{st} f32"),
        sa,
        o.structured_size,
        "dense f32".into(),
    ));
    let st_storage = storage("structured-int8")?;
    rows.push(row(&format!("{st} int8"), sq.accuracy, sq.size, st_storage));
    let ratio = |s: usize| format!("{:.1}x", o.base_size.gzip_bytes as f64 / s.max(1) as f64);
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(name, acc, size, note)| {
            let (raw, gz) = (size.bytes.to_string(), size.gzip_bytes.to_string());
            vec![
                name,
                common::pct(acc),
                raw,
                gz,
                ratio(size.gzip_bytes),
                note,
            ]
        })
        .collect();
    println!();
    let header = [
        "model",
        "test acc",
        "bytes",
        "gzip",
        "vs f32",
        "weights stored as",
    ];
    common::print_table(&header, &cells);

    print_targets(&targets(o));
    print_timings(o);
    if let Some(points) = &o.sweep {
        print_sweep(points, o.base_size);
    }
    Ok(())
}

type Row = (String, f32, FileSize, String);

fn row(name: &str, acc: f32, size: FileSize, note: String) -> Row {
    (name.to_string(), acc, size, note)
}

/// One pruned int8 file against the size targets.
struct Target {
    name: String,
    size: FileSize,
    ratio: f64,
}

impl Target {
    fn met(&self) -> [bool; 3] {
        [
            self.size.gzip_bytes <= TARGETS.0,
            self.size.bytes <= TARGETS.1,
            self.ratio >= TARGETS.2,
        ]
    }

    fn json(&self) -> Value {
        let [gzip, raw, ratio] = self.met();
        json!({ "file": self.name, "model": self.size.to_json(), "ratio_gzip": self.ratio,
                "gzip_met": gzip, "bytes_met": raw, "ratio_met": ratio })
    }
}

/// The 80 % model's int8 file and the dense-kernel-only ones.
fn targets(o: &Outcome) -> Vec<Target> {
    let dense_only = o.dense_only.iter().map(|p| {
        let name = format!("{DENSE_KERNEL} {:.0} % int8", p.sparsity * 100.0);
        (name, p.int8_model)
    });
    std::iter::once((format!("pruned 80 %{} int8", scope(o)), o.pruned_int8.size))
        .chain(dense_only)
        .map(|(name, size)| Target {
            name,
            size,
            ratio: o.base_size.gzip_bytes as f64 / size.gzip_bytes.max(1) as f64,
        })
        .collect()
}

fn print_targets(targets: &[Target]) {
    let (gzip, raw, ratio) = TARGETS;
    println!(
        "\nsize targets: <= {gzip} bytes gzip, <= {raw} raw, >= {ratio}x smaller than the f32 \
         baseline after gzip"
    );
    let mark = |ok: bool| if ok { "yes" } else { "no" };
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let [g, r, q] = t.met();
            vec![
                t.name.clone(),
                format!("{} ({})", t.size.gzip_bytes, mark(g)),
                format!("{} ({})", t.size.bytes, mark(r)),
                format!("{:.2}x ({})", t.ratio, mark(q)),
                mark(g && r && q).to_string(),
            ]
        })
        .collect();
    common::print_table(&["file", "gzip", "raw", "ratio", "all met"], &rows);
}

const TIMED: [&str; 6] = [
    "baseline f32, pare-tensor",
    "pruned f32, pare-tensor (dense)",
    "pruned f32, SparseSequential",
    "baseline int8 engine",
    "pruned int8 engine",
    "structured f32, pare-tensor",
];

fn print_timings(o: &Outcome) {
    let t = &o.seconds;
    let rows: Vec<Vec<String>> = TIMED
        .iter()
        .zip(t)
        .map(|(n, s)| {
            vec![
                n.to_string(),
                format!("{:.1}", s * 1000.0),
                format!("{:.2}x", t[0] / s),
            ]
        })
        .collect();
    println!();
    common::print_table(
        &["inference (whole test set)", "ms", "vs baseline f32"],
        &rows,
    );
    println!(
        "SparseSequential runs {:?} sparse; its test accuracy {} (dense path {})",
        o.sparse_layers,
        common::pct(o.sparse_acc),
        common::pct(o.main.accuracy)
    );
}

fn print_sweep(points: &[SweepPoint], base: FileSize) {
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                format!("{:.0} %", p.sparsity * 100.0),
                common::pct(p.f32_accuracy),
                p.f32_model.gzip_bytes.to_string(),
                common::pct(p.int8_accuracy),
                p.int8_model.bytes.to_string(),
                p.int8_model.gzip_bytes.to_string(),
                format!(
                    "{:.1}x",
                    base.gzip_bytes as f64 / p.int8_model.gzip_bytes as f64
                ),
            ]
        })
        .collect();
    println!();
    let header = [
        "sparsity",
        "f32 acc",
        "f32 gzip",
        "int8 acc",
        "int8 bytes",
        "int8 gzip",
    ];
    common::print_table(&[&header[..], &["int8 gzip vs f32"]].concat(), &rows);
}

/// pruning-sweep.json: the sweep's points and the unpruned model's figures beside them.
pub fn sweep_json(o: &Outcome) -> Option<Value> {
    let points = o.sweep.as_ref()?;
    Some(json!({
        "baseline_accuracy": o.base_acc,
        "baseline_model_gzip_bytes": o.base_size.gzip_bytes,
        "baseline_int8_accuracy": o.base_int8.accuracy,
        "baseline_int8_model_gzip_bytes": o.base_int8.size.gzip_bytes,
        "points": points.iter().map(SweepPoint::to_json).collect::<Vec<_>>(),
    }))
}

/// pruning.json.
pub fn json(o: &Outcome) -> Result<Value> {
    let (a, main, q, st) = (&o.args, &o.main, &o.pruned_int8, &o.structured);
    let val_accuracy = |h: &History| h.epochs.last().and_then(|e| e.val_accuracy);
    let updates: Vec<Value> = main
        .callback
        .updates()
        .iter()
        .map(|u| json!({ "step": u.step, "sparsity": u.sparsity }))
        .collect();
    let layers: Vec<Value> = o
        .layers
        .iter()
        .map(|l| json!({ "name": l.name, "total": l.total, "zeros": l.zeros, "sparsity": l.sparsity }))
        .collect();
    let kept = |plan: &[(String, Vec<usize>)]| -> Vec<Value> {
        plan.iter()
            .map(|(l, k)| json!({ "layer": l, "kept": k }))
            .collect()
    };
    let t = &o.seconds;
    let all = &o.all_channels_int8;
    Ok(json!({
        "seed": a.seed,
        "train_images": o.train_images,
        "test_images": o.test_images,
        "epochs": o.base_history.epochs.len(),
        "prune_epochs": o.recipe.epochs,
        "baseline_lr": a.lr,
        "baseline_lr_schedule": a.lr_schedule.name(),
        "prune_lr": a.prune_lr,
        "prune_lr_schedule": a.prune_lr_schedule.name(),
        "schedule": { "kind": "PolynomialDecay", "initial_sparsity": 0.5, "final_sparsity": 0.8,
                      "begin_step": 0, "end_step": o.recipe.end_step(o.train_images), "power": 3.0,
                      "frequency": o.recipe.frequency },
        "mask_updates": updates,
        "baseline_accuracy": o.base_acc,
        "baseline_val_accuracy": val_accuracy(&o.base_history),
        "baseline_int8_accuracy": o.base_int8.accuracy,
        "pruned_accuracy": main.accuracy,
        "pruned_val_accuracy": val_accuracy(&main.history),
        "stripped_accuracy": main.stripped_accuracy,
        "dead_channels": {
            "kept": kept(&main.dead.plan()),
            "params_before": main.dead.params_before,
            "params_after": main.dead.params_after,
            "max_abs_logit_diff": main.dead.max_abs_logit_diff,
        },
        "pruned_int8_accuracy": q.accuracy,
        "pruned_dynamic_range_accuracy": o.dynamic_range.accuracy,
        "sparse_sequential_accuracy": o.sparse_acc,
        "sparse_sequential_runtime": o.sparse_runtime,
        "layer_sparsity": layers,
        "baseline_model_bytes": o.base_size.bytes,
        "baseline_model_gzip_bytes": o.base_size.gzip_bytes,
        "baseline_int8_model": o.base_int8.size.to_json(),
        "pruned_dense_model": o.pruned_dense_size.to_json(),
        "pruned_model_bytes": o.pruned_size.bytes,
        "pruned_model_gzip_bytes": o.pruned_size.gzip_bytes,
        "pruned_int8_dense_weights_model": o.pruned_int8_dense.to_json(),
        "pruned_int8_model_bytes": q.size.bytes,
        "pruned_int8_model_gzip_bytes": q.size.gzip_bytes,
        "pruned_dynamic_range_model": o.dynamic_range.size.to_json(),
        "pruned_int8_all_channels": { "accuracy": all.accuracy, "bytes": all.size.bytes,
                                      "gzip_bytes": all.size.gzip_bytes },
        "compression_ratio_gzip": o.base_size.gzip_bytes as f64 / q.size.gzip_bytes as f64,
        "structured": {
            "kept_channels": kept(&st.kept),
            "params": st.model.num_params(),
            "accuracy": st.accuracy,
            "val_accuracy": val_accuracy(&st.history),
            "int8_accuracy": o.structured_int8.accuracy,
            "model": o.structured_size.to_json(),
            "int8_model": o.structured_int8.size.to_json(),
        },
        "inference_seconds": {
            "images": o.test_images, "threads": rayon::current_num_threads(),
            "baseline_f32": t[0], "pruned_f32_dense": t[1], "pruned_f32_sparse_sequential": t[2],
            "baseline_int8": t[3], "pruned_int8": t[4], "structured_f32": t[5],
        },
        "prune_only": a.prune_only,
        "pruned_int8_breakdown": o.breakdown.to_json(),
        "dense_only": { "kernel": DENSE_KERNEL,
                        "points": o.dense_only.iter().map(SweepPoint::to_json).collect::<Vec<_>>() },
        "targets": {
            "gzip_bytes": TARGETS.0, "bytes": TARGETS.1, "ratio_gzip": TARGETS.2,
            "files": targets(o).iter().map(Target::json).collect::<Vec<_>>(),
        },
        "sweep": sweep_json(o),
        "histories": { "baseline": history_json(&o.base_history),
                       "pruned": history_json(&main.history),
                       "structured": history_json(&st.history) },
    }))
}
