//! Recipes and sweeps that compose the crates, each sweep a function returning rows:
//!
//! - pruning (pare-prune, pare-quant, pare-tensor): fine-tune a trained model under TFMOT's
//!   schedule and strip it ([`PruneRecipe::prune`]), prune whole filters
//!   ([`PruneRecipe::structured`]), store the result as a sparse int8 file and score it
//!   ([`save_int8`]), and sweep the final sparsity ([`sparsity_sweep`]), each point a row of
//!   accuracies and file sizes ([`SweepPoint`]);
//! - quantization: every calibration observer on one float model ([`observer_sweep`]);
//! - distillation: a student trained from scratch or distilled ([`StudentRecipe`]), and the
//!   temperature × alpha grid ([`kd_sweep`], one [`KdCell`] per pair).
//!
//! ```no_run
//! # fn main() -> pare::Result<()> {
//! # let (x, y, tx, ty): (ndarray::ArrayD<f32>, Vec<usize>, ndarray::ArrayD<f32>, Vec<usize>) = todo!();
//! use pare::sweep::{PruneRecipe, Splits, sparsity_sweep};
//! let baseline = pare::tensor::models::small_cnn(0); // trained beforehand
//! let splits = Splits { x: x.view(), y: &y, test_x: tx.view(), test_y: &ty, calibration: x.view() };
//! let dir = std::path::Path::new("target/sweep");
//! let files = |s: f32| {
//!     let tag = format!("{:.0}", s * 100.0);
//!     Ok((dir.join(format!("{tag}-f32.safetensors")), dir.join(format!("{tag}-int8.safetensors"))))
//! };
//! let rows = sparsity_sweep(&PruneRecipe::default(), &baseline, &[0.5, 0.8, 0.9], None, &splits, files, |_| {})?;
//! for r in &rows {
//!     println!("{:.0} %: int8 {} bytes gzipped", r.sparsity * 100.0, r.int8_model.gzip_bytes);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayViewD, Axis};
use pare_distill::{Distiller, KdConfig, TeacherCache};
use pare_prune::file::save_sparse;
use pare_prune::report::{DeadChannels, remove_dead_channels_checked};
use pare_prune::{
    ChannelPlan, ConstantSparsity, MaskKind, Norm, PolynomialDecay, PruneCallback,
    remove_dead_channels,
};
use pare_quant::{ActQuant, ConvertConfig, Mode, ObserverKind, QuantizedModel, convert};
use pare_tensor::Sequential;
use pare_tensor::optim::{Adam, AdamConfig, LrSchedule};
use pare_tensor::train::{Callback, Evaluation, Fit, FitConfig, History, Objective, evaluate};
use serde_json::{Value, json};

use crate::codecs::SparseCodec;
use crate::error::{Error, Result};
use crate::measure::{FileSize, Summary, accuracy, agreement, decimal};

/// Batch size for scoring: a throughput choice only, the figures do not depend on it.
pub const EVAL_BATCH: usize = 256;

/// Keras' Adam (β 0.9/0.999, ε 1e-7) starting at `learning_rate`, the rate constant or
/// decayed to 0 along a cosine over `steps` updates (Keras' `CosineDecay`).
///
/// ```
/// let adam = pare::sweep::adam(1e-3, true, 1000)?;
/// # Ok::<(), pare::Error>(())
/// ```
///
/// # Errors
/// An invalid rate, as [`Adam::new`] finds it.
pub fn adam(learning_rate: f32, cosine: bool, steps: usize) -> Result<Adam> {
    let schedule = if cosine {
        LrSchedule::CosineDecay {
            decay_steps: steps as u64,
            alpha: 0.0,
        }
    } else {
        LrSchedule::Constant
    };
    Ok(Adam::new(AdamConfig {
        learning_rate,
        schedule,
        ..Default::default()
    })?)
}

/// The data a pruning recipe trains, scores and calibrates on.
#[derive(Debug, Clone)]
pub struct Splits<'a> {
    /// Training images (NHWC); `validation_split` of them are held out by `Fit`.
    pub x: ArrayViewD<'a, f32>,
    /// Training labels.
    pub y: &'a [usize],
    /// Test images.
    pub test_x: ArrayViewD<'a, f32>,
    /// Test labels.
    pub test_y: &'a [usize],
    /// Calibration images for int8 conversion (TFLite's representative data set).
    pub calibration: ArrayViewD<'a, f32>,
}

/// How a trained model is fine-tuned while it is pruned: TFMOT's "pruning in Keras" tutorial
/// (`PolynomialDecay` from `min(0.5, final)` to the final sparsity over the fine-tune, power 3,
/// fresh Adam, batch 128, 10 % held out). `Default` is the tutorial's, Keras' rate 1e-3.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneRecipe {
    /// Fine-tuning epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Adam's initial rate.
    pub learning_rate: f32,
    /// Whether the rate decays to 0 along a cosine (else constant).
    pub cosine: bool,
    /// Steps between mask updates.
    pub frequency: i64,
    /// Fraction of the training images held out, as Keras' `validation_split`.
    pub validation_split: f32,
    /// Seed of the batch order.
    pub seed: u64,
    /// Fraction of the fine-tune's steps at which the schedule reaches its final sparsity:
    /// TFMOT's recipe ends it with the fine-tune (1.0); an earlier end leaves the last steps to
    /// train the final mask alone.
    pub schedule_end: f32,
    /// Which weights the masks zero: each kernel on its own (TFMOT's default) or the smallest
    /// of all kernels together (PyTorch's `global_unstructured`).
    pub mask: MaskKind,
}

/// Batches [`PruneRecipe::recalibrate`] re-estimates BatchNorm statistics from.
pub const RECALIBRATION_BATCHES: usize = 32;

impl Default for PruneRecipe {
    fn default() -> Self {
        PruneRecipe {
            epochs: 2,
            batch_size: 128,
            learning_rate: 1e-3,
            cosine: false,
            frequency: 100,
            validation_split: 0.1,
            seed: 0,
            schedule_end: 1.0,
            mask: MaskKind::Magnitude,
        }
    }
}

/// A model pruned by [`PruneRecipe::prune`]: stripped as TFMOT strips it, then with the
/// channels pruning killed cut out.
pub struct Pruned {
    /// `strip`'s output: the original architecture, pruned weights exactly zero.
    pub stripped: Sequential,
    /// `stripped` without its dead channels: the same function, smaller.
    pub model: Sequential,
    /// What was cut out.
    pub dead: DeadChannels,
    /// Test accuracy of `model`.
    pub accuracy: f32,
    /// Test accuracy of `stripped`.
    pub stripped_accuracy: f32,
    /// The pruning callback, with its mask updates.
    pub callback: PruneCallback,
    /// The fine-tune's history.
    pub history: History,
}

/// A model pruned to whole filters by [`PruneRecipe::structured`], the filters cut out.
pub struct Structured {
    /// The smaller dense model.
    pub model: Sequential,
    /// Channels kept per layer.
    pub kept: ChannelPlan,
    /// Its test accuracy.
    pub accuracy: f32,
    /// The fine-tune's history.
    pub history: History,
}

impl PruneRecipe {
    /// Images `Fit` trains on out of `n`: Keras keeps `int(n · (1 − validation_split))`.
    pub fn train_rows(&self, n: usize) -> usize {
        (n as f64 * (1.0 - decimal(self.validation_split))) as usize
    }

    /// TFMOT's `end_step = ceil(train_rows / batch) · epochs`.
    pub fn end_step(&self, n: usize) -> i64 {
        (self.train_rows(n).div_ceil(self.batch_size.max(1)) * self.epochs) as i64
    }

    /// The fine-tune's `Fit` settings.
    pub fn fit_config(&self) -> FitConfig {
        FitConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            seed: self.seed,
            validation_split: self.validation_split,
            ..Default::default()
        }
    }

    /// The schedule to `final_sparsity` for `n` training images: TFMOT's polynomial decay
    /// (power 3) from `min(final, 0.5)` at step 0 to `final_sparsity` at
    /// `schedule_end` of [`PruneRecipe::end_step`].
    ///
    /// # Errors
    /// [`Error::BadSetting`] for a `schedule_end` outside (0, 1]; an invalid sparsity or
    /// frequency, as [`PolynomialDecay::new`] finds it.
    pub fn schedule(&self, final_sparsity: f32, n: usize) -> Result<PolynomialDecay> {
        if !(self.schedule_end > 0.0 && self.schedule_end <= 1.0) {
            return Err(Error::BadSetting {
                name: "schedule_end",
                value: self.schedule_end.to_string(),
                reason: "a fraction of the fine-tune in (0, 1]",
            });
        }
        let end = (self.end_step(n) as f64 * decimal(self.schedule_end)).ceil() as i64;
        Ok(PolynomialDecay::new(
            final_sparsity.min(0.5),
            final_sparsity,
            0,
            end.max(1),
            3.0,
            self.frequency,
        )?)
    }

    /// A pruning callback on [`PruneRecipe::schedule`] with this recipe's mask kind.
    ///
    /// # Errors
    /// As [`PruneRecipe::schedule`].
    pub fn callback(&self, final_sparsity: f32, n: usize) -> Result<PruneCallback> {
        Ok(PruneCallback::new(self.schedule(final_sparsity, n)?).with_mask_kind(self.mask))
    }

    /// Re-estimates `model`'s BatchNorm moving statistics from [`RECALIBRATION_BATCHES`]
    /// training batches ([`pare_prune::recalibrate_batch_norm`]): after pruning the
    /// statistics lag the pruned weights, since momentum 0.99 needs hundreds of steps to
    /// forget the denser ones. Nothing changes in a model without BatchNorm.
    ///
    /// # Errors
    /// Invalid data, as [`pare_prune::recalibrate_batch_norm`] finds it.
    pub fn recalibrate(&self, model: &mut Sequential, s: &Splits<'_>) -> Result<usize> {
        let batches = RECALIBRATION_BATCHES;
        Ok(pare_prune::recalibrate_batch_norm(
            model,
            s.x.view(),
            self.batch_size,
            batches,
        )?)
    }

    /// Trains `model` in place with these settings (a fresh Adam whose cosine, if any, spans
    /// the run), `callback` (a [`PruneCallback`], say) called at every step.
    ///
    /// # Errors
    /// Invalid settings or data.
    pub fn train(
        &self,
        model: &mut Sequential,
        callback: Option<&mut dyn Callback>,
        s: &Splits<'_>,
    ) -> Result<History> {
        let steps = self.end_step(s.y.len()) as usize;
        let mut opt = adam(self.learning_rate, self.cosine, steps)?;
        let mut fit = Fit::new(self.fit_config());
        if let Some(c) = callback {
            fit = fit.callback(c);
        }
        Ok(fit.run(model, &mut opt, s.x.view(), s.y)?)
    }

    fn fine_tune(
        &self,
        base: &Sequential,
        callback: &mut PruneCallback,
        s: &Splits<'_>,
    ) -> Result<(Sequential, History)> {
        let mut model = base.clone();
        let history = self.train(&mut model, Some(callback), s)?;
        Ok((model, history))
    }

    /// Fine-tunes a copy of `base` with `callback`'s masks and strips it (pruned weights
    /// exactly zero, as TFMOT's `strip_pruning` after `fit`); graph models too.
    ///
    /// # Errors
    /// Invalid settings or data.
    pub fn train_stripped(
        &self,
        base: &Sequential,
        callback: &mut PruneCallback,
        s: &Splits<'_>,
    ) -> Result<Sequential> {
        let (trained, _) = self.fine_tune(base, callback, s)?;
        Ok(callback.strip(&trained)?)
    }

    /// Fine-tunes a copy of `base` while pruning the kernels `only` names (every conv and
    /// dense kernel if `None`) to `final_sparsity`, strips it and cuts out its dead channels,
    /// checking on the test images that the logits stay the same (within 1e-3) and scoring
    /// both models from them.
    ///
    /// # Errors
    /// Invalid settings or data; [`Error::Check`] if cutting the channels changed the logits.
    pub fn prune(
        &self,
        base: &Sequential,
        final_sparsity: f32,
        only: Option<&[String]>,
        s: &Splits<'_>,
    ) -> Result<Pruned> {
        let mut callback = self.callback(final_sparsity, s.y.len())?;
        if let Some(names) = only {
            callback = callback.with_params(names.iter().cloned());
        }
        let (trained, history) = self.fine_tune(base, &mut callback, s)?;
        let stripped = callback.strip(&trained)?;
        let cut = remove_dead_channels_checked(&stripped, s.test_x.view(), EVAL_BATCH)?;
        // Removing a channel that is exactly zero only reorders float sums.
        if cut.report.max_abs_logit_diff > 1e-3 {
            return Err(Error::Check {
                what: format!("removing the dead channels {:?}", cut.report.plan()),
                reason: format!("changed the logits by {}", cut.report.max_abs_logit_diff),
            });
        }
        Ok(Pruned {
            accuracy: accuracy(cut.logits_after.view(), s.test_y),
            stripped_accuracy: accuracy(cut.logits_before.view(), s.test_y),
            stripped,
            model: cut.model,
            dead: cut.report,
            callback,
            history,
        })
    }

    /// Fine-tunes a copy of `base` with `fraction` of each conv layer's filters pruned whole
    /// (by `norm`, bias included; a constant sparsity from step 0), then cuts them out: a plain
    /// model, smaller, with no sparse kernel needed.
    ///
    /// # Errors
    /// Invalid settings or data.
    pub fn structured(
        &self,
        base: &Sequential,
        fraction: f32,
        norm: Norm,
        s: &Splits<'_>,
    ) -> Result<Structured> {
        let mut callback = PruneCallback::new(ConstantSparsity::new(fraction, 0, -1, 100)?)
            .with_mask_kind(MaskKind::Channel { norm });
        let (trained, history) = self.fine_tune(base, &mut callback, s)?;
        let (model, kept) = remove_dead_channels(&callback.strip(&trained)?)?;
        let accuracy = evaluate(&model, s.test_x.view(), s.test_y, EVAL_BATCH)?.accuracy;
        Ok(Structured {
            model,
            kept,
            accuracy,
            history,
        })
    }
}

/// The compression table of a trained model, as the `resnet` example prints it: what
/// [`CompressionRecipe::rows`] does, a [`StageRow`] each.
#[derive(Debug, Clone)]
pub struct CompressionRecipe {
    /// The fine-tune of both pruning runs (its `mask` and `schedule_end` shape the
    /// magnitude pruning).
    pub prune: PruneRecipe,
    /// Final sparsity of the magnitude pruning.
    pub sparsity: f32,
    /// Fraction of each conv layer's filters the channel pruning cuts out.
    pub channels: f32,
    /// Norm that ranks the filters.
    pub norm: Norm,
}

impl Default for CompressionRecipe {
    fn default() -> Self {
        CompressionRecipe {
            prune: PruneRecipe::default(),
            sparsity: 0.8,
            channels: 0.5,
            norm: Norm::L1,
        }
    }
}

/// One line of [`CompressionRecipe::rows`].
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    /// What was done: `float`, `int8 (BN folded)`, `pruned 80 %`, ….
    pub stage: String,
    /// Test accuracy.
    pub accuracy: f32,
    /// Nonzero weights of the conv and dense kernels (float rows).
    pub nonzero_weights: Option<usize>,
    /// Size of the int8 file (int8 rows).
    pub file_bytes: Option<usize>,
    /// How it was made.
    pub note: String,
}

impl StageRow {
    /// The row as the results files store it.
    pub fn to_json(&self) -> Value {
        json!({"stage": self.stage, "test_accuracy": self.accuracy,
            "nonzero_weights": self.nonzero_weights, "file_bytes": self.file_bytes,
            "note": self.note})
    }
}

impl CompressionRecipe {
    /// Compresses a copy of `model` (trained) every way, scoring each on the test images:
    /// float; full-integer int8 (BatchNorm folded, calibrated on `s.calibration`); magnitude
    /// pruning to `sparsity` over a fine-tune, stripped, BatchNorm recalibrated
    /// ([`PruneRecipe::recalibrate`]); that model in int8; and `channels` of each conv's
    /// filters cut out (an `Add`'s producers lose the same ones), fine-tuned and recalibrated.
    /// `progress` hears each stage as it starts.
    ///
    /// # Errors
    /// Invalid settings or data; conversion errors for a layer with no int8 kernel.
    pub fn rows(
        &self,
        model: &Sequential,
        s: &Splits<'_>,
        mut progress: impl FnMut(&str),
    ) -> Result<Vec<StageRow>> {
        let kernels = pare_prune::prunable_params(model);
        let nonzero = |m: &Sequential| -> usize {
            let ks = kernels.iter().filter_map(|k| m.param(k));
            ks.map(|p| p.value.iter().filter(|v| **v != 0.0).count())
                .sum()
        };
        let score = |m: &Sequential| -> Result<f32> {
            Ok(evaluate(m, s.test_x.view(), s.test_y, EVAL_BATCH)?.accuracy)
        };
        let int8 = |stage: &str, m: &Sequential| -> Result<StageRow> {
            let q = int8_score(m, Mode::FullInteger, s)?;
            Ok(StageRow {
                stage: stage.into(),
                accuracy: q.accuracy,
                nonzero_weights: None,
                file_bytes: Some(q.bytes),
                note: format!("{} B int8 file", q.bytes),
            })
        };
        let float = |stage: String, m: &Sequential, note: String| -> Result<StageRow> {
            Ok(StageRow {
                stage,
                accuracy: score(m)?,
                nonzero_weights: Some(nonzero(m)),
                file_bytes: None,
                note,
            })
        };
        let mut rows = vec![float("float".into(), model, String::new())?];
        let calibration = s.calibration.shape().first().copied().unwrap_or(0);
        progress(&format!(
            "int8: BatchNorm folded, {calibration} calibration images"
        ));
        rows.push(int8("int8 (BN folded)", model)?);

        let percent = |f: f32| format!("{:.0} %", f * 100.0);
        progress(&format!("magnitude pruning to {}", percent(self.sparsity)));
        let mut callback = self.prune.callback(self.sparsity, s.y.len())?;
        let mut pruned = self.prune.train_stripped(model, &mut callback, s)?;
        let stale = score(&pruned)?;
        self.prune.recalibrate(&mut pruned, s)?;
        let note = format!("BN recalibrated ({:.2} % before)", stale * 100.0);
        rows.push(float(
            format!("pruned {}", percent(self.sparsity)),
            &pruned,
            note,
        )?);
        rows.push(int8("pruned + int8", &pruned)?);

        progress(&format!(
            "channel pruning: {} of each conv's filters cut out, then fine-tuned",
            percent(self.channels)
        ));
        // Cut first, then fine-tune: a zeroed filter before a BatchNorm still outputs its
        // offset, so masking to zero would not remove what the filter contributes.
        let plan = pare_prune::smallest_channels(model, self.channels, self.norm)?;
        let mut thin = pare_prune::remove_channels(model, &plan)?;
        self.prune.train(&mut thin, None, s)?;
        self.prune.recalibrate(&mut thin, s)?;
        let note = format!(
            "cut out: {} -> {} parameters",
            crate::plot::group_thousands(model.num_params() as u64),
            crate::plot::group_thousands(thin.num_params() as u64)
        );
        rows.push(float(
            format!("channels -{}", percent(self.channels)),
            &thin,
            note,
        )?);
        Ok(rows)
    }
}

/// An int8 model saved by [`save_int8`].
pub struct Int8File {
    /// The converted model.
    pub model: QuantizedModel,
    /// Its test accuracy on the integer engine.
    pub accuracy: f32,
    /// Its file's size.
    pub size: FileSize,
}

/// Converts `model` to int8 (`mode`, pare-quant's defaults otherwise, calibrated on
/// `s.calibration`), scores it on the test images, and saves it at `path` with its kernels in
/// pare-prune's sparse formats wherever smaller ([`SparseCodec`]), checking that the file
/// loads back to a model that predicts the same on 64 test images.
///
/// # Errors
/// Conversion or file errors; [`Error::Check`] if the file does not load back the same.
pub fn save_int8(model: &Sequential, mode: Mode, s: &Splits<'_>, path: &Path) -> Result<Int8File> {
    let (q, acc) = convert_scored(model, mode, s)?;
    q.save_with(path, &SparseCodec)?;
    let back = QuantizedModel::load_with(path, &SparseCodec)?;
    let probe = s
        .test_x
        .slice_axis(Axis(0), (0..64.min(s.test_y.len())).into());
    if back.predict(probe.view())? != q.predict(probe.view())? {
        return Err(Error::Check {
            what: path.display().to_string(),
            reason: "does not reload to the same model".into(),
        });
    }
    Ok(Int8File {
        model: q,
        accuracy: acc,
        size: FileSize::read(path)?,
    })
}

/// The int8 figures of a model kept in memory: see [`int8_score`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int8Score {
    /// Test accuracy on the integer engine.
    pub accuracy: f32,
    /// Size of its pare-quant file (dense kernels), in bytes.
    pub bytes: usize,
}

/// Converts `model` to int8 as [`save_int8`] does (BatchNorm folded first, calibrated on
/// `s.calibration`) and scores it on the test images, without writing a file.
///
/// ```no_run
/// # fn main() -> pare::Result<()> {
/// # let (x, y, tx, ty): (ndarray::ArrayD<f32>, Vec<usize>, ndarray::ArrayD<f32>, Vec<usize>) = todo!();
/// use pare::quant::Mode;
/// use pare::sweep::{Splits, int8_score};
/// let model = pare::tensor::models::resnet8(0); // trained beforehand
/// let splits = Splits { x: x.view(), y: &y, test_x: tx.view(), test_y: &ty, calibration: x.view() };
/// let int8 = int8_score(&model, Mode::FullInteger, &splits)?;
/// println!("int8: {:.2} %, {} B", int8.accuracy * 100.0, int8.bytes);
/// # Ok(()) }
/// ```
///
/// # Errors
/// Conversion errors (a layer with no int8 kernel, say) and invalid data.
pub fn int8_score(model: &Sequential, mode: Mode, s: &Splits<'_>) -> Result<Int8Score> {
    let (q, accuracy) = convert_scored(model, mode, s)?;
    Ok(Int8Score {
        accuracy,
        bytes: q.to_bytes()?.len(),
    })
}

fn convert_scored(model: &Sequential, mode: Mode, s: &Splits<'_>) -> Result<(QuantizedModel, f32)> {
    let cfg = ConvertConfig {
        mode,
        ..Default::default()
    };
    let q = convert(model, s.calibration.view(), &cfg)?;
    let acc = accuracy(q.predict(s.test_x.view())?.view(), s.test_y);
    Ok((q, acc))
}

/// Saves `model` with pare-prune's sparse tensors at `path` ([`save_sparse`]) and checks that
/// the file loads back to the same weights; returns its size.
///
/// # Errors
/// File errors; [`Error::Check`] if the weights do not come back the same.
pub fn save_sparse_checked(
    model: &Sequential,
    path: &Path,
    metadata: HashMap<String, String>,
) -> Result<FileSize> {
    save_sparse(model, path, metadata)?;
    let mut back = model.clone();
    back.params_mut()
        .into_iter()
        .for_each(|p| p.value.fill(f32::NAN));
    pare_prune::load_sparse(&mut back, path)?;
    if back.params() != model.params() {
        return Err(Error::Check {
            what: path.display().to_string(),
            reason: "does not reload to the same weights".into(),
        });
    }
    FileSize::read(path)
}

/// One pruned model: its float and int8 accuracy and file sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    /// Final sparsity of the schedule.
    pub sparsity: f32,
    /// Test accuracy of the float model (dead channels cut).
    pub f32_accuracy: f32,
    /// Test accuracy of its full-integer int8 conversion.
    pub int8_accuracy: f32,
    /// The float model's sparse file.
    pub f32_model: FileSize,
    /// The int8 model's file.
    pub int8_model: FileSize,
    /// The pruning fine-tune's history.
    pub history: History,
}

impl SweepPoint {
    /// `{"sparsity", "f32_accuracy", "int8_accuracy", "f32_model", "int8_model", "history"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "sparsity": self.sparsity,
            "f32_accuracy": self.f32_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "f32_model": self.f32_model.to_json(),
            "int8_model": self.int8_model.to_json(),
            "history": crate::results::history_json(&self.history),
        })
    }
}

/// [`PruneRecipe::prune`] to `sparsity`, the float model saved sparse at `f32_path` (with
/// `metadata`) and its int8 conversion at `int8_path` ([`save_int8`]).
///
/// # Errors
/// As [`PruneRecipe::prune`] and [`save_int8`].
#[allow(clippy::too_many_arguments)]
pub fn sweep_point(
    recipe: &PruneRecipe,
    base: &Sequential,
    sparsity: f32,
    only: Option<&[String]>,
    s: &Splits<'_>,
    (f32_path, int8_path): (&Path, &Path),
    metadata: HashMap<String, String>,
) -> Result<SweepPoint> {
    let pruned = recipe.prune(base, sparsity, only, s)?;
    save_sparse(&pruned.model, f32_path, metadata)?;
    let int8 = save_int8(&pruned.model, Mode::FullInteger, s, int8_path)?;
    Ok(SweepPoint {
        sparsity,
        f32_accuracy: pruned.accuracy,
        int8_accuracy: int8.accuracy,
        f32_model: FileSize::read(f32_path)?,
        int8_model: int8.size,
        history: pruned.history,
    })
}

/// One [`sweep_point`] per final sparsity, each from `base`; `files(sparsity)` names the float
/// and int8 files, and `starting(sparsity)` is called before each point (to print progress).
///
/// # Errors
/// As [`sweep_point`], or the first error of `files`.
pub fn sparsity_sweep(
    recipe: &PruneRecipe,
    base: &Sequential,
    sparsities: &[f32],
    only: Option<&[String]>,
    s: &Splits<'_>,
    mut files: impl FnMut(f32) -> Result<(PathBuf, PathBuf)>,
    mut starting: impl FnMut(f32),
) -> Result<Vec<SweepPoint>> {
    let mut points = Vec::with_capacity(sparsities.len());
    for &sparsity in sparsities {
        starting(sparsity);
        let (f, q) = files(sparsity)?;
        points.push(sweep_point(
            recipe,
            base,
            sparsity,
            only,
            s,
            (&f, &q),
            HashMap::new(),
        )?);
    }
    Ok(points)
}

/// One calibration observer's int8 model, from [`observer_sweep`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObserverRow {
    /// The observer.
    pub observer: ObserverKind,
    /// Test accuracy on the integer engine.
    pub int8_accuracy: f32,
    /// Fraction of test images on which the engine and the fake-quant simulation agree.
    pub matches_simulation: f64,
    /// The input's quantization parameters.
    pub input: ActQuant,
    /// The output's.
    pub output: ActQuant,
}

impl ObserverRow {
    /// The row as JSON, with its accuracy against the float model's (`delta_pp`, percentage
    /// points).
    pub fn to_json(&self, float_accuracy: f32) -> Value {
        json!({
            "observer": self.observer.as_str(),
            "int8_accuracy": self.int8_accuracy,
            "delta_pp": (self.int8_accuracy - float_accuracy) * 100.0,
            "matches_simulation": self.matches_simulation,
            "input_scale": self.input.scale,
            "output_scale": self.output.scale,
            "output_zero_point": self.output.zero_point,
        })
    }
}

/// Converts `model` once per observer in `kinds` (the rest of `config` kept; it must be full
/// integer) and scores each on (`x`, `labels`), on the engine and against the simulation.
///
/// ```
/// # fn main() -> pare::Result<()> {
/// use pare::quant::{ConvertConfig, ObserverKind};
/// let model = pare::tensor::models::small_cnn(0);
/// let x = ndarray::Array4::from_shape_fn((8, 28, 28, 1), |(n, r, c, _)| ((n + r * c) % 5) as f32 / 4.0)
///     .into_dyn();
/// let labels = [0, 1, 2, 3, 4, 5, 6, 7];
/// let rows = pare::sweep::observer_sweep(&model, x.view(), x.view(), &labels,
///     &ConvertConfig::default(), &ObserverKind::ALL)?;
/// assert_eq!(rows.len(), 5);
/// assert!(rows.iter().all(|r| r.matches_simulation > 0.5));
/// # Ok(()) }
/// ```
///
/// # Errors
/// Conversion errors; [`Error::BadSetting`] for a dynamic-range `config`.
pub fn observer_sweep(
    model: &Sequential,
    calibration: ArrayViewD<'_, f32>,
    x: ArrayViewD<'_, f32>,
    labels: &[usize],
    config: &ConvertConfig,
    kinds: &[ObserverKind],
) -> Result<Vec<ObserverRow>> {
    let mut rows = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        let cfg = ConvertConfig {
            observer: kind,
            ..config.clone()
        };
        let q = convert(model, calibration.view(), &cfg)?;
        let logits = q.predict(x.view())?;
        let (Some(input), Some(output)) = (q.input_quant(), q.output_quant()) else {
            return Err(Error::BadSetting {
                name: "mode",
                value: format!("{:?}", config.mode),
                reason: "an observer sweep needs a full-integer model",
            });
        };
        rows.push(ObserverRow {
            observer: kind,
            int8_accuracy: accuracy(logits.view(), labels),
            matches_simulation: agreement(logits.view(), q.simulate(model, x.view())?.view()),
            input,
            output,
        });
    }
    Ok(rows)
}

/// Images with their labels.
pub type Labelled<'a> = (ArrayViewD<'a, f32>, &'a [usize]);

/// How a student is trained, distilled or from scratch: a fresh model from `build(seed)`,
/// Keras' Adam (rate 1e-3), `epochs` epochs of `batch_size`, batch order from the same seed, so
/// a distilled and a scratch student of one seed start from the same weights and see the same
/// batches.
#[derive(Debug, Clone, Copy)]
pub struct StudentRecipe {
    /// Builds the student's initial weights from a seed.
    pub build: fn(u64) -> Sequential,
    /// Training epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Whether `Fit` shows progress bars.
    pub verbose: bool,
}

/// A student trained by [`StudentRecipe::train`].
pub struct TrainedStudent {
    /// The trained model.
    pub model: Sequential,
    /// Its score on the test images.
    pub evaluation: Evaluation,
    /// Its training history.
    pub history: History,
}

impl StudentRecipe {
    /// Trains a student from `seed` with `objective` (a [`Distiller`], say), or with plain
    /// cross-entropy when `None`, and scores it on (`test_x`, `test_y`), after every epoch too
    /// (the history's `val_accuracy`: the curve only, nothing is chosen by it).
    ///
    /// # Errors
    /// Invalid settings or data.
    pub fn train(
        &self,
        objective: Option<&mut dyn Objective>,
        seed: u64,
        (x, y): Labelled<'_>,
        (test_x, test_y): Labelled<'_>,
    ) -> Result<TrainedStudent> {
        let mut model = (self.build)(seed);
        let mut opt = Adam::new(AdamConfig::default())?;
        let mut fit = Fit::new(FitConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            seed,
            verbose: self.verbose,
            ..Default::default()
        });
        if let Some(o) = objective {
            fit = fit.objective(o);
        }
        fit = fit.validation_data(test_x.clone(), test_y);
        let history = fit.run(&mut model, &mut opt, x, y)?;
        let evaluation = evaluate(&model, test_x, test_y, EVAL_BATCH)?;
        Ok(TrainedStudent {
            model,
            evaluation,
            history,
        })
    }
}

/// One (temperature, alpha) pair of [`kd_sweep`]: the test accuracy of each seed's student.
#[derive(Debug, Clone, PartialEq)]
pub struct KdCell {
    /// Softmax temperature.
    pub temperature: f32,
    /// Weight of the hard-label term.
    pub alpha: f32,
    /// Test accuracy per seed, in the order of the seeds.
    pub accuracies: Vec<f32>,
}

impl KdCell {
    /// Mean, standard deviation, min and max over the seeds.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.accuracies)
    }

    /// The cell as JSON, with its mean against the scratch students' (`diff_to_scratch_mean`).
    pub fn to_json(&self, scratch_mean: f64) -> Value {
        let s = self.summary();
        json!({
            "temperature": decimal(self.temperature),
            "alpha": decimal(self.alpha),
            "accuracy": self.accuracies.iter().copied().map(decimal).collect::<Vec<_>>(),
            "mean": s.mean,
            "std": s.std,
            "min": s.min,
            "max": s.max,
            "diff_to_scratch_mean": s.mean - scratch_mean,
        })
    }
}

/// Distils a student (`recipe`, without progress bars) for every alpha in `alphas` × every
/// temperature in `temperatures` (alpha the outer loop) × every seed, on the teacher's cached
/// logits; `done` is called with each cell as it completes.
///
/// # Errors
/// Invalid hyper-parameters or data.
#[allow(clippy::too_many_arguments)]
pub fn kd_sweep(
    recipe: &StudentRecipe,
    teacher: &Sequential,
    cache: &TeacherCache,
    alphas: &[f32],
    temperatures: &[f32],
    seeds: &[u64],
    (train, test): (Labelled<'_>, Labelled<'_>),
    mut done: impl FnMut(&KdCell),
) -> Result<Vec<KdCell>> {
    let quiet = StudentRecipe {
        verbose: false,
        ..*recipe
    };
    let mut cells = Vec::with_capacity(alphas.len() * temperatures.len());
    for &alpha in alphas {
        for &temperature in temperatures {
            let kd = KdConfig { alpha, temperature };
            let mut accuracies = Vec::with_capacity(seeds.len());
            for &seed in seeds {
                let mut d = Distiller::new(teacher, kd)?.with_cache(cache)?;
                let t = quiet.train(
                    Some(&mut d),
                    seed,
                    (train.0.view(), train.1),
                    (test.0.view(), test.1),
                )?;
                accuracies.push(t.evaluation.accuracy);
            }
            let cell = KdCell {
                temperature,
                alpha,
                accuracies,
            };
            done(&cell);
            cells.push(cell);
        }
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` patterned 28×28×1 images, labels cycling through `classes`.
    fn images(n: usize, classes: usize) -> (ndarray::ArrayD<f32>, Vec<usize>) {
        let x = ndarray::Array4::from_shape_fn((n, 28, 28, 1), |(i, r, c, _)| {
            ((i * 31 + r * c) % 17) as f32 / 16.0
        });
        (x.into_dyn(), (0..n).map(|i| i % classes).collect())
    }

    /// The same images to train, test and calibrate on.
    fn splits<'a>(x: &'a ndarray::ArrayD<f32>, y: &'a [usize]) -> Splits<'a> {
        Splits {
            x: x.view(),
            y,
            test_x: x.view(),
            test_y: y,
            calibration: x.view(),
        }
    }

    #[test]
    fn end_step_is_tfmot_s() {
        // The tutorial: 60,000 images, 10 % held out, batch 128, 2 epochs: ceil(54,000 / 128) · 2.
        let r = PruneRecipe::default();
        assert_eq!(r.train_rows(60_000), 54_000);
        assert_eq!(r.end_step(60_000), 844);
        // An f32 0.1 widened to f64 would keep 2,699 of 3,000.
        assert_eq!(r.train_rows(3_000), 2_700);
    }

    #[test]
    fn pruning_a_tiny_model_gives_a_sparse_int8_file_that_reloads() {
        let (x, y) = images(64, 10);
        let s = splits(&x, &y);
        let recipe = PruneRecipe {
            epochs: 1,
            batch_size: 16,
            frequency: 1,
            ..Default::default()
        };
        let base = pare_tensor::models::small_cnn(0);
        let dir = std::env::temp_dir().join(format!("pare-sweep-unit-{}", std::process::id()));
        let files = |sp: f32| {
            let t = format!("{:.0}", sp * 100.0);
            Ok((dir.join(format!("{t}-f32")), dir.join(format!("{t}-int8"))))
        };
        std::fs::create_dir_all(&dir).unwrap();
        let mut started = vec![];
        let rows = sparsity_sweep(&recipe, &base, &[0.5, 0.9], None, &s, files, |sp| {
            started.push(sp)
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(started, [0.5, 0.9]);
        assert_eq!(rows.len(), 2);
        // Sparser is smaller, after gzip as well as raw.
        assert!(rows[1].int8_model.bytes < rows[0].int8_model.bytes);
        assert!(rows[1].f32_model.gzip_bytes < rows[0].f32_model.gzip_bytes);
        for r in &rows {
            assert!((0.0..=1.0).contains(&r.int8_accuracy));
            assert_eq!(r.to_json()["int8_model"]["bytes"], r.int8_model.bytes);
        }
    }
    #[test]
    fn kd_sweep_returns_one_cell_per_pair_in_order() {
        let n = 32;
        let x = ndarray::Array4::from_shape_fn((n, 28, 28, 1), |(i, r, c, _)| {
            ((i * 13 + r + c) % 11) as f32 / 10.0
        })
        .into_dyn();
        let y: Vec<usize> = (0..n).map(|i| i % 10).collect();
        let teacher = pare_tensor::models::small_cnn(1);
        let cache = TeacherCache::compute(&teacher, x.view(), 16).unwrap();
        let recipe = StudentRecipe {
            build: pare_tensor::models::small_cnn,
            epochs: 1,
            batch_size: 16,
            verbose: true,
        };
        let mut seen = 0;
        let cells = kd_sweep(
            &recipe,
            &teacher,
            &cache,
            &[0.1, 0.9],
            &[1.0, 4.0, 10.0],
            &[0, 1],
            ((x.view(), &y), (x.view(), &y)),
            |_| seen += 1,
        )
        .unwrap();
        assert_eq!(seen, 6);
        let pairs: Vec<(f32, f32)> = cells.iter().map(|c| (c.alpha, c.temperature)).collect();
        assert_eq!(pairs[0], (0.1, 1.0));
        assert_eq!(pairs[5], (0.9, 10.0));
        assert!(cells.iter().all(|c| c.accuracies.len() == 2));
        // The same seed and settings train the same student.
        let again = recipe
            .train(
                Some(
                    &mut Distiller::new(
                        &teacher,
                        KdConfig {
                            alpha: 0.1,
                            temperature: 1.0,
                        },
                    )
                    .unwrap()
                    .with_cache(&cache)
                    .unwrap(),
                ),
                0,
                (x.view(), &y),
                (x.view(), &y),
            )
            .unwrap();
        assert_eq!(again.evaluation.accuracy, cells[0].accuracies[0]);
        assert_eq!(cells[0].to_json(0.0)["alpha"], 0.1);
    }

    #[test]
    fn schedule_end_moves_the_final_sparsity_earlier_and_is_checked() {
        use pare_prune::PruningSchedule;
        let half = PruneRecipe {
            schedule_end: 0.5,
            frequency: 1,
            ..Default::default()
        };
        let s = half.schedule(0.8, 60_000).unwrap();
        assert_eq!(s.at(422), (true, 0.8));
        assert!(s.at(200).1 < 0.76);
        // The default is TFMOT's: the final sparsity at the last step.
        let full = PruneRecipe {
            frequency: 1,
            ..Default::default()
        };
        let full = full.schedule(0.8, 60_000).unwrap();
        assert!(full.at(422).1 < 0.77);
        assert_eq!(full.at(844), (true, 0.8));
        for bad in [0.0, -0.5, 1.5, f32::NAN] {
            let r = PruneRecipe {
                schedule_end: bad,
                ..Default::default()
            };
            assert!(
                matches!(
                    r.schedule(0.8, 100),
                    Err(Error::BadSetting {
                        name: "schedule_end",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_compression_table_of_a_residual_model_prunes_and_cuts_channels() {
        let (x, y) = images(64, 3);
        let s = splits(&x, &y);
        let recipe = CompressionRecipe {
            // 57 training images: 4 steps an epoch, the final sparsity reached at step 4.
            prune: PruneRecipe {
                epochs: 2,
                batch_size: 16,
                frequency: 1,
                schedule_end: 0.5,
                mask: MaskKind::GlobalMagnitude,
                ..Default::default()
            },
            ..Default::default()
        };
        let model = pare_tensor::models::tiny_residual(3, 0);
        let mut stages = Vec::new();
        let rows = recipe
            .rows(&model, &s, |st| stages.push(st.to_owned()))
            .unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "float",
                "int8 (BN folded)",
                "pruned 80 %",
                "pruned + int8",
                "channels -50 %"
            ]
        );
        assert_eq!(stages.len(), 3);
        let total = rows[0].nonzero_weights.unwrap();
        let pruned = rows[2].nonzero_weights.unwrap();
        // Global: 20 % of all kernels' weights survive, however they fall per layer.
        assert_eq!(pruned, (total as f64 * 0.2).round() as usize, "{total}");
        assert!(rows[4].nonzero_weights.unwrap() < total);
        assert!(rows[1].file_bytes.is_some() && rows[3].file_bytes.is_some());
        assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r.accuracy)));
        assert_eq!(rows[2].to_json()["stage"], "pruned 80 %");
    }
}
