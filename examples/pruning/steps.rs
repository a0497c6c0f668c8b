//! The longer steps of the pruning experiment, each a few library calls.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use ndarray::Axis;
use pare::measure::{FileSize, accuracy, interleaved_medians};
use pare::prune::{Norm, SparseSequential};
use pare::quant::{Mode, QuantizedModel};
use pare::sweep::{
    EVAL_BATCH, Int8File, PruneRecipe, Splits, Structured, SweepPoint, save_int8, sweep_point,
};
use pare::tensor::Sequential;
use pare::tensor::train::predict;

use crate::{DENSE_KERNEL, DENSE_ONLY, common};

/// `--prune-only` must name kernels the model has.
pub fn check_prunable(model: &Sequential, only: Option<&[String]>) -> Result<()> {
    let prunable = pare::prune::prunable_params(model);
    if let Some(bad) = only.into_iter().flatten().find(|n| !prunable.contains(n)) {
        anyhow::bail!("--prune-only: {bad:?} is not a prunable kernel; the model has {prunable:?}");
    }
    Ok(())
}

/// The metadata saved with each float model: architecture, stage, seed.
pub fn metadata(seed: u64, stage: &str) -> HashMap<String, String> {
    let pairs = [
        ("model", "small_cnn"),
        ("stage", stage),
        ("seed", &seed.to_string()),
    ];
    HashMap::from(pairs.map(|(k, v)| (k.to_string(), v.to_string())))
}

/// A model file's path under the results' models directory, by stem.
pub type Files<'a> = &'a dyn Fn(&str) -> pare::Result<PathBuf>;

/// The dense kernel alone pruned to each of `DENSE_ONLY`, saved and converted to int8.
pub fn dense_only(
    recipe: &PruneRecipe,
    baseline: &Sequential,
    s: &Splits<'_>,
    file: Files<'_>,
    meta: &HashMap<String, String>,
) -> Result<Vec<SweepPoint>> {
    let mut dense_only = Vec::new();
    for &sp in &DENSE_ONLY {
        let tag = format!("{:.0}", sp * 100.0);
        println!(
            "\n== {DENSE_KERNEL} only to {tag} %: PolynomialDecay {:.2} -> {sp:.2}, {}",
            sp.min(0.5),
            common::count(recipe.epochs, "epoch")
        );
        let paths = (
            file(&format!("dense-only-{tag}-f32"))?,
            file(&format!("dense-only-{tag}-int8"))?,
        );
        let only = [DENSE_KERNEL.to_string()];
        let p = sweep_point(
            recipe,
            baseline,
            sp,
            Some(&only),
            s,
            (&paths.0, &paths.1),
            meta.clone(),
        )?;
        println!(
            "test accuracy {}, int8 {}; int8 file {} bytes, {} gzip",
            common::pct(p.f32_accuracy),
            common::pct(p.int8_accuracy),
            p.int8_model.bytes,
            p.int8_model.gzip_bytes
        );
        dense_only.push(p);
    }
    Ok(dense_only)
}

/// Seconds over the test set of the float models (baseline, pruned, structured), the pruned one
/// on `SparseSequential`, and the int8 ones (baseline, pruned); `SparseSequential`'s sparse
/// layers, its accuracy and its per-layer timings (sparse against dense, the faster chosen).
pub fn time_models(
    models: [&Sequential; 3],
    int8: [&QuantizedModel; 2],
    s: &Splits<'_>,
) -> Result<(Vec<f64>, Vec<String>, f32, serde_json::Value)> {
    println!(
        "\n== inference time over {} test images (median of 5 interleaved rounds)",
        s.test_y.len()
    );
    // Each candidate layer timed sparse and dense on one batch: the faster kernel runs it.
    let probe_n = EVAL_BATCH.min(s.test_y.len());
    let probe = s.test_x.slice_axis(Axis(0), (0..probe_n).into());
    let sparse = SparseSequential::measured(models[1], 0.5, probe)?;
    for l in &sparse.report().layers {
        println!(
            "{:<10} {:>5.1} % zeros: sparse {:>7.3} ms, dense {:>7.3} ms per batch of {} -> {}",
            l.layer,
            100.0 * l.sparsity,
            1e3 * l.sparse_seconds,
            1e3 * l.dense_seconds,
            sparse.report().batch,
            l.chosen.as_str()
        );
    }
    let seconds = interleaved_medians::<pare::Error>(
        5,
        &mut [
            &mut || Ok(predict(models[0], s.test_x.view(), EVAL_BATCH).map(drop)?),
            &mut || Ok(predict(models[1], s.test_x.view(), EVAL_BATCH).map(drop)?),
            &mut || Ok(sparse.predict(s.test_x.view(), EVAL_BATCH).map(drop)?),
            &mut || Ok(int8[0].predict(s.test_x.view()).map(drop)?),
            &mut || Ok(int8[1].predict(s.test_x.view()).map(drop)?),
            &mut || Ok(predict(models[2], s.test_x.view(), EVAL_BATCH).map(drop)?),
        ],
    )?;
    let sparse_acc = accuracy(
        sparse.predict(s.test_x.view(), EVAL_BATCH)?.view(),
        s.test_y,
    );
    let layers = sparse
        .sparse_layers()
        .iter()
        .map(|l| l.to_string())
        .collect();
    Ok((seconds, layers, sparse_acc, sparse.report().to_json()))
}

/// Half of the conv filters (`fraction` 0.5, L1) pruned whole while fine-tuning, cut out;
/// the model saved dense and converted to int8.
pub fn structured(
    recipe: &PruneRecipe,
    baseline: &Sequential,
    s: &Splits<'_>,
    file: Files<'_>,
    meta: &HashMap<String, String>,
) -> Result<(Structured, FileSize, Int8File)> {
    println!(
        "\n== structured: half of the conv filters (L1), {}, batch 128",
        common::count(recipe.epochs, "epoch")
    );
    let st = recipe.structured(baseline, 0.5, Norm::L1, s)?;
    let path = file("structured-f32")?;
    pare::tensor::checkpoint::save(&st.model, &path, meta.clone())?;
    let int8 = save_int8(&st.model, Mode::FullInteger, s, &file("structured-int8")?)?;
    println!(
        "kept filters {:?}\n{} parameters (baseline {}), test accuracy {}",
        st.kept,
        st.model.num_params(),
        baseline.num_params(),
        common::pct(st.accuracy)
    );
    Ok((st, FileSize::read(&path)?, int8))
}

/// `--qat EPOCHS`: `model` fine-tuned through int8 fake-quant (its zeros fixed, Adam 1e-4,
/// batch 32) on the images the pruning trained on, converted at the learned ranges, saved
/// sparse at `path`; its test accuracy and file size.
pub fn qat(
    model: &Sequential,
    epochs: usize,
    recipe: &PruneRecipe,
    s: &Splits<'_>,
    path: &std::path::Path,
) -> Result<(f32, FileSize)> {
    let tune = pare::pipeline::QatFineTune {
        epochs,
        batch_size: 32,
        learning_rate: 1e-4,
        bits: pare::quant::WeightBits::Int8,
        per_channel: true,
        seed: recipe.seed,
        verbose: true,
    };
    let rows = recipe.train_rows(s.y.len());
    let x = s.x.slice_axis(ndarray::Axis(0), (0..rows).into());
    let q = tune.run(model, None, (x, &s.y[..rows]))?.quantized;
    q.save_with(path, &pare::codecs::SparseCodec)?;
    let acc = accuracy(q.predict(s.test_x.view())?.view(), s.test_y);
    Ok((acc, FileSize::read(path)?))
}
