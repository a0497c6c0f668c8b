//! One compression run: distil a student from a teacher (or train it from scratch), prune it
//! under the same loss, cut out the channels pruning killed, fine-tune it through int8 or int4
//! fake-quant with the masks fixed, convert it and write one file — and the frontier sweep over
//! sparsity × weight width × distillation × seeds, with its plot.
//!
//! - [`Pipeline::run`]: every stage, returning a [`PipelineReport`] (accuracy on the test and
//!   validation splits, file size raw and gzipped, seconds, per stage); the stages alone are
//!   [`Pipeline::student`], [`Pipeline::prune`] and [`Pipeline::quantize`];
//! - [`frontier`]: the sweep, one [`FrontierRow`] (means and spreads over seeds) per setting,
//!   [`choose`] the smallest setting that clears a validation bar, [`frontier_plot`] the SVG.
//!
//! Choices are made on the validation split only (the last tenth of the training images, as
//! Keras' `validation_split` holds it out); the test split is only reported.
//!
//! ```no_run
//! # fn main() -> pare::Result<()> {
//! # let (x, y, tx, ty): (ndarray::ArrayD<f32>, Vec<usize>, ndarray::ArrayD<f32>, Vec<usize>) = todo!();
//! use pare::pipeline::{Pipeline, PipelineConfig, PipelineData, Teacher};
//! let data = PipelineData::split(x.view(), &y, 0.1, (tx.view(), &ty))?;
//! let teacher_model = pare::tensor::models::teacher_cnn(256, 512, 0); // trained beforehand
//! let teacher = Teacher::new(&teacher_model, &data)?;
//! let pipeline = Pipeline::new(PipelineConfig::default())?;
//! let report = pipeline.run(Some(&teacher), &data, "target/student-int4.safetensors".as_ref())?;
//! println!("{:.1}x smaller", report.ratio());
//! # Ok(()) }
//! ```

use std::path::Path;
use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD, Axis};
use pare_distill::{Distiller, KdConfig, TeacherCache};
use pare_prune::file::to_sparse_bytes;
use pare_prune::report::{DeadChannels, remove_dead_channels_checked};
use pare_prune::{MaskKind, PolynomialDecay, PruneCallback};
use pare_quant::{ConvertConfig, Mode, Qat, QatConfig, QuantizedModel, WeightBits, convert};
use pare_tensor::io::{f32_tensors_bytes, write_atomic};
use pare_tensor::train::{Callback, Fit, FitConfig, History, Objective, evaluate};
use pare_tensor::{Graph, Sequential};
use serde_json::{Value, json};

use crate::codecs::SparseCodec;
use crate::error::{Error, Result};
use crate::measure::{FileSize, Summary, accuracy, decimal};
use crate::plot::{SizePoint, SizeSeries, accuracy_vs_size};
use crate::sweep::{EVAL_BATCH, Labelled, adam};

/// TFLite's int8 post-training quantization of the small CNN (docs/results.md): gzip bytes and
/// test accuracy, the reference point of [`frontier_plot`].
pub const TFLITE_POINT: (f64, f64) = (8_130.0, 0.9705);
/// Deep Compression's LeNet-5 result: 39× smaller with no loss of accuracy (Han et al. 2016).
pub const DEEP_COMPRESSION_RATIO: f64 = 39.0;

/// The settings of one compression run. `Default` is the `compress` example's defaults: the
/// distillation example's student (`teacher_cnn(16, 32)`) distilled for 3 epochs (alpha 0.1,
/// T 10), pruned to 90 % with global magnitude masks over 4 epochs, int4 weights after one epoch
/// of quantization-aware training.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Builds the student's initial weights from a seed.
    pub student: fn(u64) -> Sequential,
    /// Distil from the teacher (else cross-entropy on the labels, in every stage).
    pub distill: bool,
    /// The distillation loss (Keras' alpha 0.1, T 10).
    pub kd: KdConfig,
    /// Student training epochs (Adam 1e-3, batch 32).
    pub student_epochs: usize,
    /// Final sparsity of the pruning schedule, in [0, 1); 0 skips pruning.
    pub sparsity: f32,
    /// Which weights a mask update removes: global magnitude (one threshold over every kernel,
    /// default) or per-tensor magnitude.
    pub mask_kind: MaskKind,
    /// Pruning fine-tune epochs; the schedule reaches its final sparsity one epoch before the
    /// end (for runs of 2 epochs or more), so the last epoch trains with the masks fixed.
    pub prune_epochs: usize,
    /// Adam's initial rate in the pruning fine-tune.
    pub prune_lr: f32,
    /// Whether that rate decays to 0 along a cosine over the fine-tune.
    pub prune_cosine: bool,
    /// Batch size of the pruning fine-tune (TFMOT's tutorial: 128).
    pub prune_batch: usize,
    /// Steps between mask updates (TFMOT: 100).
    pub prune_frequency: i64,
    /// Weight width of the converted model (activations are int8 either way).
    pub bits: WeightBits,
    /// Epochs of quantization-aware training before conversion; 0 converts post-training,
    /// calibrated on `calibration` training images.
    pub qat_epochs: usize,
    /// Adam's rate during quantization-aware training.
    pub qat_lr: f32,
    /// Batch size of quantization-aware training.
    pub qat_batch: usize,
    /// Training images that calibrate a post-training conversion (TFLite's representative set).
    pub calibration: usize,
    /// Seed of the student's weights and of every stage's batch order.
    pub seed: u64,
    /// Whether `Fit` shows progress bars.
    pub verbose: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            student: |seed| pare_tensor::models::teacher_cnn(16, 32, seed),
            distill: true,
            kd: KdConfig::default(),
            student_epochs: 3,
            sparsity: 0.9,
            mask_kind: MaskKind::GlobalMagnitude,
            prune_epochs: 4,
            prune_lr: 2e-3,
            prune_cosine: true,
            prune_batch: 128,
            prune_frequency: 100,
            bits: WeightBits::Int4,
            qat_epochs: 1,
            qat_lr: 1e-4,
            qat_batch: 32,
            calibration: 100,
            seed: 0,
            verbose: false,
        }
    }
}

fn positive(name: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::BadSetting {
            name,
            value: v.to_string(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

fn rate(name: &'static str, v: f32) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::BadSetting {
            name,
            value: v.to_string(),
            reason: "must be finite and positive",
        });
    }
    Ok(())
}

impl PipelineConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`Error::BadSetting`] naming the first bad one; the distillation loss's own error for a
    /// bad `kd`.
    pub fn validate(&self) -> Result<()> {
        if !(self.sparsity.is_finite() && (0.0..1.0).contains(&self.sparsity)) {
            return Err(Error::BadSetting {
                name: "sparsity",
                value: self.sparsity.to_string(),
                reason: "must be in [0, 1)",
            });
        }
        if !matches!(
            self.mask_kind,
            MaskKind::Magnitude | MaskKind::GlobalMagnitude
        ) {
            return Err(Error::BadSetting {
                name: "mask_kind",
                value: format!("{:?}", self.mask_kind),
                reason: "the pipeline prunes by magnitude, per tensor or global",
            });
        }
        positive("student_epochs", self.student_epochs)?;
        positive("prune_epochs", self.prune_epochs)?;
        positive("prune_batch", self.prune_batch)?;
        positive("qat_batch", self.qat_batch)?;
        positive("calibration", self.calibration)?;
        rate("prune_lr", self.prune_lr)?;
        rate("qat_lr", self.qat_lr)?;
        if self.prune_frequency < 1 {
            return Err(Error::BadSetting {
                name: "prune_frequency",
                value: self.prune_frequency.to_string(),
                reason: "must be at least 1",
            });
        }
        self.kd.validate()?;
        Ok(())
    }

    /// The conversion's name: `int4 QAT`, `int8 PTQ`, ...
    pub fn quantized_name(&self) -> String {
        let how = if self.qat_epochs > 0 { "QAT" } else { "PTQ" };
        format!("int{} {how}", self.bits.bits())
    }

    /// `distilled, pruned to 90 %, int4 QAT`.
    pub fn describe(&self) -> String {
        let how = if self.distill {
            "distilled"
        } else {
            "from scratch"
        };
        let (s, q) = (self.sparsity * 100.0, self.quantized_name());
        format!("{how}, pruned to {s:.0} %, {q}")
    }

    /// The settings as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "distill": self.distill,
            "alpha": decimal(self.kd.alpha),
            "temperature": decimal(self.kd.temperature),
            "student_epochs": self.student_epochs,
            "sparsity": decimal(self.sparsity),
            "mask_kind": format!("{:?}", self.mask_kind),
            "prune_epochs": self.prune_epochs,
            "prune_lr": decimal(self.prune_lr),
            "prune_cosine": self.prune_cosine,
            "prune_batch": self.prune_batch,
            "prune_frequency": self.prune_frequency,
            "bits": self.bits.bits(),
            "qat_epochs": self.qat_epochs,
            "qat_lr": decimal(self.qat_lr),
            "qat_batch": self.qat_batch,
            "calibration": self.calibration,
            "seed": self.seed,
        })
    }
}

/// The training, validation and test splits of a run.
#[derive(Debug, Clone)]
pub struct PipelineData<'a> {
    /// What every stage trains on.
    pub train: Labelled<'a>,
    /// What choices are made on.
    pub validation: Labelled<'a>,
    /// Reported only.
    pub test: Labelled<'a>,
}

impl<'a> PipelineData<'a> {
    /// Holds out the last `validation` fraction of (`x`, `y`) as Keras' `validation_split`
    /// does (`int(n · (1 − validation))` images train).
    ///
    /// # Errors
    /// [`Error::BadSetting`] for a fraction outside (0, 1) or one that leaves a split empty,
    /// or for images and labels of different counts.
    pub fn split(
        x: ArrayViewD<'a, f32>,
        y: &'a [usize],
        validation: f32,
        test: Labelled<'a>,
    ) -> Result<PipelineData<'a>> {
        let n = y.len();
        let rows = (n as f64 * (1.0 - decimal(validation))) as usize;
        if !(validation > 0.0 && validation < 1.0) || rows == 0 || rows == n {
            return Err(Error::BadSetting {
                name: "validation",
                value: format!("{validation} of {n} images"),
                reason: "must leave both the training and the validation split non-empty",
            });
        }
        if x.shape().first() != Some(&n) || test.0.shape().first() != Some(&test.1.len()) {
            return Err(Error::BadSetting {
                name: "data",
                value: format!("{:?} images, {n} labels", x.shape()),
                reason: "images and labels must be as many",
            });
        }
        let (train_x, val_x) = x.split_at(Axis(0), rows);
        let (train_y, val_y) = y.split_at(rows);
        Ok(PipelineData {
            train: (train_x, train_y),
            validation: (val_x, val_y),
            test,
        })
    }
}

/// A teacher and its logits on the training split, computed once for every stage and run.
pub struct Teacher<'t> {
    /// The teacher.
    pub model: &'t Sequential,
    /// Its logits on `data.train`.
    pub cache: TeacherCache,
    /// The teacher's own scores and size, as a stage report (its seconds: computing the cache).
    pub report: StageReport,
}

impl<'t> Teacher<'t> {
    /// Scores `model` and caches its logits on the training split.
    ///
    /// # Errors
    /// A model that does not take the data.
    pub fn new(model: &'t Sequential, data: &PipelineData<'_>) -> Result<Teacher<'t>> {
        let start = Instant::now();
        let cache = TeacherCache::compute(model, data.train.0.view(), EVAL_BATCH)?;
        let seconds = start.elapsed().as_secs_f64();
        let mut report = float_report("teacher (f32)", model, data, seconds)?;
        report.size = FileSize::of(&f32_bytes(model)?);
        Ok(Teacher {
            model,
            cache,
            report,
        })
    }
}

/// Trains a teacher (Adam 1e-3 decayed along a cosine, batch 32, as the distillation example
/// trains its teacher) on the training split.
///
/// # Errors
/// Invalid settings or data.
pub fn train_teacher(
    mut model: Sequential,
    epochs: usize,
    seed: u64,
    data: &PipelineData<'_>,
    verbose: bool,
) -> Result<Sequential> {
    positive("teacher epochs", epochs)?;
    let steps = epochs * data.train.1.len().div_ceil(32);
    let mut opt = adam(1e-3, true, steps)?;
    let cfg = FitConfig {
        epochs,
        batch_size: 32,
        seed,
        verbose,
        ..Default::default()
    };
    Fit::new(cfg).run(&mut model, &mut opt, data.train.0.view(), data.train.1)?;
    Ok(model)
}

/// One stage's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
    /// `student (f32)`, `pruned (f32, sparse)`, `int4 QAT`, ...
    pub name: String,
    /// Accuracy on the test split.
    pub test_accuracy: f32,
    /// Accuracy on the validation split.
    pub validation_accuracy: f32,
    /// The stage's model as a file: dense f32 checkpoint, sparse f32 file, int8/int4 file.
    pub size: FileSize,
    /// Non-zero kernel weights (biases not counted).
    pub nonzero: usize,
    /// Wall-clock seconds of the stage.
    pub seconds: f64,
}

impl StageReport {
    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "stage": self.name,
            "test_accuracy": self.test_accuracy,
            "validation_accuracy": self.validation_accuracy,
            "size": self.size.to_json(),
            "nonzero": self.nonzero,
            "seconds": self.seconds,
        })
    }
}

fn f32_bytes(model: &Sequential) -> Result<Vec<u8>> {
    let w = model.weights();
    let tensors: Vec<(String, &ArrayD<f32>)> =
        w.iter().map(|p| (p.name.clone(), &p.value)).collect();
    Ok(f32_tensors_bytes(&tensors, None)?)
}

fn nonzero(model: &Sequential) -> usize {
    pare_prune::prunable_params(model)
        .iter()
        .filter_map(|n| model.param(n))
        .map(|p| p.value.iter().filter(|v| **v != 0.0).count())
        .sum()
}

fn float_report(
    name: &str,
    model: &Sequential,
    data: &PipelineData<'_>,
    seconds: f64,
) -> Result<StageReport> {
    let score = |(x, y): &Labelled<'_>| -> Result<f32> {
        Ok(evaluate(model, x.view(), y, EVAL_BATCH)?.accuracy)
    };
    Ok(StageReport {
        name: name.to_string(),
        test_accuracy: score(&data.test)?,
        validation_accuracy: score(&data.validation)?,
        size: FileSize::of(&to_sparse_bytes(model, Default::default())?),
        nonzero: nonzero(model),
        seconds,
    })
}

/// Keeps pruned weights at zero while a model trains on: the zero pattern of the kernels at
/// the start enters every graph as a mask (zero gradient) and is applied again after each
/// update. Pruning's own callback would recompute its masks; after the channels are cut the
/// schedule is over, and only the pattern must stay.
struct FixedMasks {
    masks: Vec<(String, ArrayD<f32>)>,
}

impl FixedMasks {
    fn of(model: &Sequential) -> FixedMasks {
        let masks = pare_prune::prunable_params(model)
            .into_iter()
            .filter_map(|name| {
                let p = model.param(&name)?;
                p.value
                    .iter()
                    .any(|v| *v == 0.0)
                    .then(|| (name, p.value.mapv(|v| f32::from(u8::from(v != 0.0)))))
            })
            .collect();
        FixedMasks { masks }
    }

    fn apply(&self, model: &mut Sequential) -> Result<()> {
        for (name, mask) in &self.masks {
            let p = model.param_mut(name).ok_or_else(|| Error::Check {
                what: format!("fixed mask of {name}"),
                reason: "the model lost the parameter".into(),
            })?;
            pare_prune::apply_mask(p.value.view_mut(), mask.view())?;
        }
        Ok(())
    }
}

impl Callback for FixedMasks {
    fn prepare_graph(&self, graph: &mut Graph) -> pare_tensor::Result<()> {
        for (name, mask) in &self.masks {
            graph.set_mask(name, mask.clone());
        }
        Ok(())
    }

    fn on_batch_end(&mut self, _step: u64, model: &mut Sequential) -> pare_tensor::Result<()> {
        for (name, mask) in &self.masks {
            if let Some(p) = model.param_mut(name) {
                p.value.zip_mut_with(mask, |w, m| *w *= m);
            }
        }
        Ok(())
    }
}

/// Quantization-aware fine-tuning of a trained (possibly pruned) float model: fake-quant
/// weights at `bits` (per channel or per tensor) and int8 activations at moving-average ranges
/// ([`Qat`]), Adam at a constant `learning_rate`, the model's exact zeros held fixed (pruned
/// weights stay pruned), then conversion at the learned ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct QatFineTune {
    /// Fine-tune epochs, at least 1.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Adam's rate (constant).
    pub learning_rate: f32,
    /// Weight width.
    pub bits: WeightBits,
    /// One weight scale per output channel (TFLite's) or one per tensor.
    pub per_channel: bool,
    /// Seed of the batch order.
    pub seed: u64,
    /// Whether `Fit` shows progress bars.
    pub verbose: bool,
}

/// What [`QatFineTune::run`] gives.
pub struct QatOutcome {
    /// The fine-tuned float model (fake-quant layers removed).
    pub model: Sequential,
    /// Its conversion at the learned ranges.
    pub quantized: QuantizedModel,
    /// The fine-tune's history.
    pub history: History,
}

impl QatFineTune {
    /// Fine-tunes a copy of `model` on (`x`, `y`) with `objective` (cross-entropy if `None`)
    /// and converts it.
    ///
    /// # Errors
    /// [`Error::BadSetting`] for zero epochs or batch size or a bad rate; a model QAT or the
    /// converter cannot handle; invalid data.
    pub fn run(
        &self,
        model: &Sequential,
        objective: Option<&mut dyn Objective>,
        (x, y): Labelled<'_>,
    ) -> Result<QatOutcome> {
        positive("qat epochs", self.epochs)?;
        positive("qat batch_size", self.batch_size)?;
        rate("qat learning_rate", self.learning_rate)?;
        let mut model = model.clone();
        let mut masks = FixedMasks::of(&model);
        let config = QatConfig {
            weight_bits: self.bits,
            per_channel: self.per_channel,
            ..Default::default()
        };
        let mut qat = Qat::attach(&mut model, config)?;
        let mut opt = adam(self.learning_rate, false, 0)?;
        let mut fit = Fit::new(FitConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            seed: self.seed,
            verbose: self.verbose,
            ..Default::default()
        })
        .callback(&mut masks)
        .callback(&mut qat);
        if let Some(o) = objective {
            fit = fit.objective(o);
        }
        let trained = fit.run(&mut model, &mut opt, x, y);
        // The fake-quant layers come out whatever happened: a model holding them cannot be
        // cloned or converted.
        qat.detach(&mut model);
        let history = trained?;
        masks.apply(&mut model)?;
        Ok(QatOutcome {
            quantized: qat.convert(&model)?,
            model,
            history,
        })
    }
}

/// A pruned model from [`Pipeline::prune`].
pub struct PrunedStudent {
    /// The pruned model with its dead channels cut out.
    pub model: Sequential,
    /// Scores of the stripped model before the cut (its size: the sparse f32 file).
    pub report: StageReport,
    /// What the cut removed.
    pub dead: DeadChannels,
    /// The fine-tune's history.
    pub history: History,
}

/// A converted model from [`Pipeline::quantize`].
pub struct QuantizedStudent {
    /// The int8/int4 model.
    pub model: QuantizedModel,
    /// Its file's bytes (kernels in pare-prune's sparse encodings where smaller).
    pub bytes: Vec<u8>,
    /// Its scores on the integer engine.
    pub report: StageReport,
}

/// Everything [`Pipeline::run`] measured.
#[derive(Debug, Clone)]
pub struct PipelineReport {
    /// The settings.
    pub config: Value,
    /// Teacher (when distilling), student, pruned, quantized: in order.
    pub stages: Vec<StageReport>,
    /// What removing the dead channels cut, `Display`ed.
    pub dead_channels: String,
}

impl PipelineReport {
    /// The columns of [`table`](Self::table).
    pub const HEADER: [&str; 7] = [
        "stage",
        "test",
        "validation",
        "bytes",
        "gzip",
        "vs f32",
        "s",
    ];

    /// One row per stage: name, test and validation accuracy, file bytes raw and gzipped, the
    /// student's f32 gzip bytes over the stage's, seconds.
    pub fn table(&self) -> Vec<Vec<String>> {
        let student = self.stages.iter().find(|s| s.name.starts_with("student"));
        let f32_gzip = student.map_or(f64::NAN, |s| s.size.gzip_bytes as f64);
        let pct = |x: f32| format!("{:.2} %", x * 100.0);
        let n = |x: usize| crate::plot::group_thousands(x as u64);
        self.stages
            .iter()
            .map(|s| {
                let ratio = if s.name.starts_with("teacher") {
                    "-".into()
                } else {
                    format!("{:.1}x", f32_gzip / s.size.gzip_bytes as f64)
                };
                vec![
                    s.name.clone(),
                    pct(s.test_accuracy),
                    pct(s.validation_accuracy),
                    n(s.size.bytes),
                    n(s.size.gzip_bytes),
                    ratio,
                    format!("{:.1}", s.seconds),
                ]
            })
            .collect()
    }

    /// Test accuracy of the final (converted) model.
    pub fn test_accuracy(&self) -> f32 {
        self.stages.last().map_or(f32::NAN, |s| s.test_accuracy)
    }

    /// Over several runs (seeds): the final models' test accuracy and the mean
    /// [`ratio`](Self::ratio).
    pub fn summary(reports: &[PipelineReport]) -> (Summary, f64) {
        let acc: Vec<f32> = reports.iter().map(PipelineReport::test_accuracy).collect();
        (
            Summary::of(&acc),
            mean(reports.iter().map(PipelineReport::ratio)),
        )
    }

    /// The student's dense f32 file gzipped over the final file gzipped.
    pub fn ratio(&self) -> f64 {
        let student = self.stages.iter().find(|s| s.name.starts_with("student"));
        match (student, self.stages.last()) {
            (Some(s), Some(q)) => s.size.gzip_bytes as f64 / q.size.gzip_bytes as f64,
            _ => f64::NAN,
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "config": self.config,
            "stages": self.stages.iter().map(StageReport::to_json).collect::<Vec<_>>(),
            "dead_channels": self.dead_channels,
            "ratio_to_f32_gzip": self.ratio(),
        })
    }
}

/// A compression run with checked settings.
#[derive(Debug, Clone)]
pub struct Pipeline {
    config: PipelineConfig,
}

impl Pipeline {
    /// # Errors
    /// As [`PipelineConfig::validate`].
    pub fn new(config: PipelineConfig) -> Result<Pipeline> {
        config.validate()?;
        Ok(Pipeline { config })
    }

    /// The settings.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    fn teacher<'a, 't>(&self, teacher: Option<&'a Teacher<'t>>) -> Result<Option<&'a Teacher<'t>>> {
        match (self.config.distill, teacher) {
            (false, _) => Ok(None),
            (true, Some(t)) => Ok(Some(t)),
            (true, None) => Err(Error::BadSetting {
                name: "distill",
                value: "true".into(),
                reason: "distillation needs a teacher",
            }),
        }
    }

    /// Trains `model` on the training split: the distillation loss on the cached teacher
    /// logits, or cross-entropy; `callbacks` at every step.
    #[allow(clippy::too_many_arguments)]
    fn fit(
        &self,
        model: &mut Sequential,
        teacher: Option<&Teacher<'_>>,
        (epochs, batch_size): (usize, usize),
        (lr, cosine): (f32, bool),
        callbacks: Vec<&mut dyn Callback>,
        data: &PipelineData<'_>,
    ) -> Result<History> {
        let (x, y) = &data.train;
        let steps = epochs * y.len().div_ceil(batch_size);
        let mut opt = adam(lr, cosine, steps)?;
        let mut distiller = match self.teacher(teacher)? {
            Some(t) => Some(Distiller::new(t.model, self.config.kd)?.with_cache(&t.cache)?),
            None => None,
        };
        let mut fit = Fit::new(FitConfig {
            epochs,
            batch_size,
            seed: self.config.seed,
            verbose: self.config.verbose,
            ..Default::default()
        });
        if let Some(d) = distiller.as_mut() {
            fit = fit.objective(d);
        }
        for c in callbacks {
            fit = fit.callback(c);
        }
        Ok(fit.run(model, &mut opt, x.view(), y)?)
    }

    /// Stage 1: a fresh student (`config.student(seed)`), distilled from `teacher` or trained
    /// on the labels, `student_epochs` epochs of Adam 1e-3, batch 32. Its size is the dense f32
    /// checkpoint's.
    ///
    /// # Errors
    /// No teacher while distilling; invalid data.
    pub fn student(
        &self,
        teacher: Option<&Teacher<'_>>,
        data: &PipelineData<'_>,
    ) -> Result<(Sequential, StageReport)> {
        let start = Instant::now();
        let mut model = (self.config.student)(self.config.seed);
        let epochs = (self.config.student_epochs, 32);
        self.fit(&mut model, teacher, epochs, (1e-3, false), vec![], data)?;
        let mut report =
            float_report("student (f32)", &model, data, start.elapsed().as_secs_f64())?;
        report.size = FileSize::of(&f32_bytes(&model)?);
        Ok((model, report))
    }

    /// Stage 2: a copy of `student` fine-tuned under the same loss while pruned by magnitude
    /// along TFMOT's polynomial schedule (from `min(0.5, sparsity)`, power 3) to `sparsity`,
    /// stripped, and its dead channels cut out (checked on the validation images to change no
    /// logit by more than 1e-3). With sparsity 0 the student passes through unchanged.
    ///
    /// # Errors
    /// As [`Pipeline::student`]; [`Error::Check`] if cutting the channels changed the logits.
    pub fn prune(
        &self,
        student: &Sequential,
        teacher: Option<&Teacher<'_>>,
        data: &PipelineData<'_>,
    ) -> Result<PrunedStudent> {
        let c = &self.config;
        let start = Instant::now();
        let mut model = student.clone();
        if c.sparsity == 0.0 {
            let report = float_report("unpruned (f32)", &model, data, 0.0)?;
            return Ok(PrunedStudent {
                dead: remove_dead_channels_checked(&model, data.validation.0.view(), EVAL_BATCH)?
                    .report,
                model,
                report,
                history: History::default(),
            });
        }
        let per_epoch = data.train.1.len().div_ceil(c.prune_batch) as i64;
        let schedule_epochs = c.prune_epochs.saturating_sub(1).max(1) as i64;
        let schedule = PolynomialDecay::new(
            c.sparsity.min(0.5),
            c.sparsity,
            0,
            (per_epoch * schedule_epochs).max(1),
            3.0,
            c.prune_frequency,
        )?;
        let mut callback = PruneCallback::new(schedule).with_mask_kind(c.mask_kind);
        let history = self.fit(
            &mut model,
            teacher,
            (c.prune_epochs, c.prune_batch),
            (c.prune_lr, c.prune_cosine),
            vec![&mut callback],
            data,
        )?;
        let stripped = callback.strip(&model)?;
        let cut = remove_dead_channels_checked(&stripped, data.validation.0.view(), EVAL_BATCH)?;
        if cut.report.max_abs_logit_diff > 1e-3 {
            return Err(Error::Check {
                what: format!("removing the dead channels {:?}", cut.report.plan()),
                reason: format!("changed the logits by {}", cut.report.max_abs_logit_diff),
            });
        }
        let name = format!("pruned {:.0} % (f32, sparse)", c.sparsity * 100.0);
        let report = float_report(&name, &cut.model, data, start.elapsed().as_secs_f64())?;
        Ok(PrunedStudent {
            model: cut.model,
            report,
            dead: cut.report,
            history,
        })
    }

    /// Stage 3: `pruned` fine-tuned `qat_epochs` epochs through fake-quant at `bits` (weights
    /// per channel, activations at moving-average ranges) under the same loss, its zeros held
    /// fixed, then converted at the learned ranges; with `qat_epochs` 0, converted
    /// post-training (calibrated on the first `calibration` training images). Scored on the
    /// integer engine; its bytes are the file's, kernels stored sparse where smaller.
    ///
    /// # Errors
    /// As [`Pipeline::student`]; conversion errors.
    pub fn quantize(
        &self,
        pruned: &Sequential,
        teacher: Option<&Teacher<'_>>,
        data: &PipelineData<'_>,
    ) -> Result<QuantizedStudent> {
        let c = &self.config;
        let start = Instant::now();
        let model = if c.qat_epochs > 0 {
            let tune = QatFineTune {
                epochs: c.qat_epochs,
                batch_size: c.qat_batch,
                learning_rate: c.qat_lr,
                bits: c.bits,
                per_channel: true,
                seed: c.seed,
                verbose: c.verbose,
            };
            let mut distiller = match self.teacher(teacher)? {
                Some(t) => Some(Distiller::new(t.model, c.kd)?.with_cache(&t.cache)?),
                None => None,
            };
            let objective = distiller.as_mut().map(|d| d as &mut dyn Objective);
            tune.run(pruned, objective, (data.train.0.view(), data.train.1))?
                .quantized
        } else {
            let (x, y) = &data.train;
            let calibration = x.slice_axis(Axis(0), (0..c.calibration.min(y.len())).into());
            let cfg = ConvertConfig {
                mode: Mode::FullInteger,
                weight_bits: c.bits,
                ..Default::default()
            };
            convert(pruned, calibration, &cfg)?
        };
        let bytes = model.to_bytes_with(&SparseCodec)?;
        let score = |(x, y): &Labelled<'_>| -> Result<f32> {
            Ok(accuracy(model.predict(x.view())?.view(), y))
        };
        let nonzero = model
            .layers()
            .iter()
            .filter_map(|l| l.weights.as_ref())
            .map(|w| w.kernel.iter().filter(|q| **q != 0).count())
            .sum();
        let report = StageReport {
            name: c.quantized_name(),
            test_accuracy: score(&data.test)?,
            validation_accuracy: score(&data.validation)?,
            size: FileSize::of(&bytes),
            nonzero,
            seconds: start.elapsed().as_secs_f64(),
        };
        Ok(QuantizedStudent {
            model,
            bytes,
            report,
        })
    }

    /// Every stage, then the converted model written to `output` (atomically) and checked to
    /// load back to a model that predicts the same on the validation images.
    ///
    /// # Errors
    /// As the stages; file errors; [`Error::Check`] if the file does not load back the same.
    pub fn run(
        &self,
        teacher: Option<&Teacher<'_>>,
        data: &PipelineData<'_>,
        output: &Path,
    ) -> Result<PipelineReport> {
        let teacher = self.teacher(teacher)?;
        let (student, s) = self.student(teacher, data)?;
        let pruned = self.prune(&student, teacher, data)?;
        let q = self.quantize(&pruned.model, teacher, data)?;
        write_checked(&q, output, data.validation.0.view())?;
        let mut stages: Vec<StageReport> = teacher.map(|t| t.report.clone()).into_iter().collect();
        stages.extend([s, pruned.report, q.report]);
        Ok(PipelineReport {
            config: self.config.to_json(),
            stages,
            dead_channels: pruned.dead.to_string(),
        })
    }
}

/// Writes a converted model's bytes to `path` and checks the file loads back to a model that
/// predicts the same on `probe`.
///
/// # Errors
/// File errors; [`Error::Check`] if the file does not load back the same.
pub fn write_checked(q: &QuantizedStudent, path: &Path, probe: ArrayViewD<'_, f32>) -> Result<()> {
    write_atomic(path, &q.bytes)?;
    let back = QuantizedModel::load_with(path, &SparseCodec)?;
    if back.predict(probe.view())? != q.model.predict(probe.view())? {
        return Err(Error::Check {
            what: path.display().to_string(),
            reason: "does not reload to the same model".into(),
        });
    }
    Ok(())
}

/// The grid of [`frontier`].
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierGrid {
    /// Final sparsities.
    pub sparsities: Vec<f32>,
    /// Weight widths.
    pub bits: Vec<WeightBits>,
    /// With and/or without distillation.
    pub distill: Vec<bool>,
    /// Seeds: each setting runs once per seed.
    pub seeds: Vec<u64>,
}

/// One run of the frontier: a setting and a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierRun {
    /// Distilled or trained on the labels.
    pub distill: bool,
    /// Final sparsity.
    pub sparsity: f32,
    /// Weight width.
    pub bits: WeightBits,
    /// Seed.
    pub seed: u64,
    /// The student before pruning (its size: the dense f32 file).
    pub student: StageReport,
    /// The pruned float model.
    pub pruned: StageReport,
    /// The converted model (its size: the file's).
    pub quantized: StageReport,
}

impl FrontierRun {
    /// The student's f32 file gzipped over this run's file gzipped.
    pub fn ratio(&self) -> f64 {
        self.student.size.gzip_bytes as f64 / self.quantized.size.gzip_bytes as f64
    }
}

/// One setting of the frontier over its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierRow {
    /// Distilled or trained on the labels.
    pub distill: bool,
    /// Final sparsity.
    pub sparsity: f32,
    /// Weight width.
    pub bits: WeightBits,
    /// One run per seed, in the grid's order.
    pub runs: Vec<FrontierRun>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

impl FrontierRow {
    /// The columns of [`cells`](Self::cells).
    pub const HEADER: [&str; 5] = [
        "setting",
        "test (mean ± std [min, max])",
        "validation",
        "gzip B",
        "vs f32",
    ];

    /// The row as table cells: label, test summary, mean validation accuracy, mean gzip
    /// bytes, mean ratio.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.label(),
            self.test().percent(),
            format!("{:.2} %", self.validation().mean * 100.0),
            format!("{:.0}", self.gzip_bytes()),
            format!("{:.1}x", self.ratio()),
        ]
    }

    /// Test accuracy of the converted models over the seeds.
    pub fn test(&self) -> Summary {
        Summary::of(
            &self
                .runs
                .iter()
                .map(|r| r.quantized.test_accuracy)
                .collect::<Vec<_>>(),
        )
    }

    /// Validation accuracy of the converted models over the seeds.
    pub fn validation(&self) -> Summary {
        let v: Vec<f32> = self
            .runs
            .iter()
            .map(|r| r.quantized.validation_accuracy)
            .collect();
        Summary::of(&v)
    }

    /// Mean gzip bytes of the files.
    pub fn gzip_bytes(&self) -> f64 {
        mean(self.runs.iter().map(|r| r.quantized.size.gzip_bytes as f64))
    }

    /// Mean of the seeds' [`FrontierRun::ratio`].
    pub fn ratio(&self) -> f64 {
        mean(self.runs.iter().map(FrontierRun::ratio))
    }

    /// `distilled, 90 %, int4`.
    pub fn label(&self) -> String {
        let how = if self.distill { "distilled" } else { "scratch" };
        format!(
            "{how}, {:.0} %, int{}",
            self.sparsity * 100.0,
            self.bits.bits()
        )
    }

    /// The row as JSON, with every run's stages.
    pub fn to_json(&self) -> Value {
        let run = |r: &FrontierRun| {
            json!({
                "seed": r.seed,
                "student": r.student.to_json(),
                "pruned": r.pruned.to_json(),
                "quantized": r.quantized.to_json(),
                "ratio": r.ratio(),
            })
        };
        let stat = |f: &dyn Fn(&FrontierRun) -> f32| {
            Summary::of(&self.runs.iter().map(f).collect::<Vec<_>>()).to_json()
        };
        json!({
            "distill": self.distill,
            "sparsity": decimal(self.sparsity),
            "bits": self.bits.bits(),
            "test_accuracy": self.test().to_json(),
            "validation_accuracy": self.validation().to_json(),
            "pruned_test_accuracy": stat(&|r| r.pruned.test_accuracy),
            "student_test_accuracy": stat(&|r| r.student.test_accuracy),
            "gzip_bytes": self.gzip_bytes(),
            "bytes": mean(self.runs.iter().map(|r| r.quantized.size.bytes as f64)),
            "f32_gzip_bytes": mean(self.runs.iter().map(|r| r.student.size.gzip_bytes as f64)),
            "ratio": self.ratio(),
            "runs": self.runs.iter().map(run).collect::<Vec<_>>(),
        })
    }
}

/// Runs `base` over the grid: per distillation choice and seed one student, per sparsity one
/// pruned model from it, per width one conversion from that (so the settings of one seed share
/// their earlier stages). Needs `teacher` if the grid distils. `done` sees every run as it
/// completes.
///
/// # Errors
/// As [`Pipeline`]'s stages; [`Error::BadSetting`] for an empty grid or a bad setting in it.
pub fn frontier(
    base: &PipelineConfig,
    grid: &FrontierGrid,
    teacher: Option<&Teacher<'_>>,
    data: &PipelineData<'_>,
    mut done: impl FnMut(&FrontierRun),
) -> Result<Vec<FrontierRow>> {
    if grid.sparsities.is_empty()
        || grid.bits.is_empty()
        || grid.distill.is_empty()
        || grid.seeds.is_empty()
    {
        return Err(Error::BadSetting {
            name: "grid",
            value: format!("{grid:?}"),
            reason: "every axis needs at least one value",
        });
    }
    let mut rows: Vec<FrontierRow> = Vec::new();
    for &distill in &grid.distill {
        for &seed in &grid.seeds {
            let at = |sparsity: f32, bits: WeightBits| {
                Pipeline::new(PipelineConfig {
                    distill,
                    seed,
                    sparsity,
                    bits,
                    ..base.clone()
                })
            };
            let first = at(grid.sparsities[0], grid.bits[0])?;
            let (student, student_report) = first.student(teacher, data)?;
            for &sparsity in &grid.sparsities {
                let pruned = at(sparsity, grid.bits[0])?.prune(&student, teacher, data)?;
                for &bits in &grid.bits {
                    let q = at(sparsity, bits)?.quantize(&pruned.model, teacher, data)?;
                    let run = FrontierRun {
                        distill,
                        sparsity,
                        bits,
                        seed,
                        student: student_report.clone(),
                        pruned: pruned.report.clone(),
                        quantized: q.report,
                    };
                    done(&run);
                    let same = |r: &&mut FrontierRow| {
                        r.distill == distill && r.sparsity == sparsity && r.bits == bits
                    };
                    match rows.iter_mut().find(|r| same(r)) {
                        Some(r) => r.runs.push(run),
                        None => rows.push(FrontierRow {
                            distill,
                            sparsity,
                            bits,
                            runs: vec![run],
                        }),
                    }
                }
            }
        }
    }
    Ok(rows)
}

/// The row with the smallest mean gzip size whose mean validation accuracy is at least
/// `min_validation` (the test split plays no part).
pub fn choose(rows: &[FrontierRow], min_validation: f64) -> Option<&FrontierRow> {
    rows.iter()
        .filter(|r| r.validation().mean >= min_validation)
        .min_by(|a, b| a.gzip_bytes().total_cmp(&b.gzip_bytes()))
}

impl FrontierGrid {
    /// The grid as JSON: `{"sparsities", "bits", "distill", "seeds"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "sparsities": self.sparsities.iter().copied().map(decimal).collect::<Vec<_>>(),
            "bits": self.bits.iter().map(|b| b.bits()).collect::<Vec<_>>(),
            "distill": self.distill,
            "seeds": self.seeds,
        })
    }
}

/// The f32 students of a frontier: mean gzip bytes of their dense files and mean test
/// accuracy, over the distilled runs (over all runs if none distilled).
pub fn f32_student(rows: &[FrontierRow]) -> (f64, f64) {
    let distilled = rows.iter().any(|r| r.distill);
    let runs: Vec<&FrontierRun> = rows
        .iter()
        .filter(|r| r.distill == distilled)
        .flat_map(|r| &r.runs)
        .collect();
    (
        mean(runs.iter().map(|r| r.student.size.gzip_bytes as f64)),
        mean(runs.iter().map(|r| decimal(r.student.test_accuracy))),
    )
}

/// [`choose`] at `min_validation` as JSON: `{"min_validation_accuracy", "chosen"}`, `chosen`
/// null when no setting clears the bar, else its label, test accuracy summary, mean
/// validation accuracy, mean gzip bytes and ratio.
pub fn choice_json(rows: &[FrontierRow], min_validation: f64) -> Value {
    let chosen = choose(rows, min_validation).map(|r| {
        json!({
            "label": r.label(),
            "test_accuracy": r.test().to_json(),
            "validation_accuracy": r.validation().mean,
            "gzip_bytes": r.gzip_bytes(),
            "ratio": r.ratio(),
        })
    });
    json!({ "min_validation_accuracy": min_validation, "chosen": chosen })
}

/// One setting's mean on the frontier plot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrontierPoint {
    /// Distilled or trained on the labels.
    pub distill: bool,
    /// Weight bits, 4 or 8.
    pub bits: u32,
    /// Final sparsity.
    pub sparsity: f64,
    /// Mean gzip bytes of the files.
    pub gzip_bytes: f64,
    /// Mean test accuracy in [0, 1].
    pub test_accuracy: f64,
}

impl FrontierRow {
    /// The row's point on [`frontier_plot`].
    pub fn point(&self) -> FrontierPoint {
        FrontierPoint {
            distill: self.distill,
            bits: self.bits.bits(),
            sparsity: decimal(self.sparsity),
            gzip_bytes: self.gzip_bytes(),
            test_accuracy: self.test().mean,
        }
    }
}

/// Mean test accuracy against mean gzip bytes, one line per (distillation, width) over the
/// sparsities, with TFLite's int8 pruned small CNN ([`TFLITE_POINT`]) and Deep Compression's
/// 39× with no loss applied to the f32 student (`student`: its mean gzip bytes and test
/// accuracy) marked, and the f32 student itself.
///
/// # Errors
/// As [`accuracy_vs_size`].
pub fn frontier_plot(points: &[FrontierPoint], student: (f64, f64)) -> crate::plot::Result<String> {
    let mut series: Vec<SizeSeries> = Vec::new();
    for p in points {
        let how = if p.distill {
            "distilled"
        } else {
            "from scratch"
        };
        let label = format!("{how}, int{}", p.bits);
        let point = SizePoint {
            label: format!("{:.0} %", p.sparsity * 100.0),
            bytes: p.gzip_bytes,
            accuracy: p.test_accuracy,
        };
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => series.push(SizeSeries {
                label,
                points: vec![point],
            }),
        }
    }
    let references = [
        SizePoint {
            label: "TFLite int8 (pruned 80 %)".into(),
            bytes: TFLITE_POINT.0,
            accuracy: TFLITE_POINT.1,
        },
        SizePoint {
            label: "Deep Compression's 39x".into(),
            bytes: student.0 / DEEP_COMPRESSION_RATIO,
            accuracy: student.1,
        },
        SizePoint {
            label: "f32 student".into(),
            bytes: student.0,
            accuracy: student.1,
        },
    ];
    accuracy_vs_size(&series, &references)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let bad = |c: PipelineConfig| match Pipeline::new(c) {
            Err(Error::BadSetting { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        let d = PipelineConfig::default;
        assert_eq!(
            bad(PipelineConfig {
                sparsity: 1.0,
                ..d()
            }),
            "sparsity"
        );
        assert_eq!(
            bad(PipelineConfig {
                sparsity: f32::NAN,
                ..d()
            }),
            "sparsity"
        );
        assert_eq!(
            bad(PipelineConfig {
                prune_epochs: 0,
                ..d()
            }),
            "prune_epochs"
        );
        assert_eq!(
            bad(PipelineConfig {
                qat_lr: -1.0,
                ..d()
            }),
            "qat_lr"
        );
        assert_eq!(
            bad(PipelineConfig {
                prune_frequency: 0,
                ..d()
            }),
            "prune_frequency"
        );
        assert_eq!(
            bad(PipelineConfig {
                mask_kind: MaskKind::Nm { n: 2, m: 4 },
                ..d()
            }),
            "mask_kind"
        );
        assert!(matches!(
            Pipeline::new(PipelineConfig {
                kd: KdConfig {
                    alpha: 2.0,
                    temperature: 1.0
                },
                ..d()
            }),
            Err(Error::Distill(_))
        ));
        assert!(Pipeline::new(d()).is_ok());
    }

    fn tiny() -> (ArrayD<f32>, Vec<usize>) {
        let n = 80;
        let y: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let x = ndarray::Array4::from_shape_fn((n, 28, 28, 1), |(i, r, c, _)| {
            f32::from(u8::from((r / 7) == y[i] && c > 3)) + ((i * 7 + r * c) % 5) as f32 / 20.0
        })
        .into_dyn();
        (x, y)
    }

    #[test]
    fn splits_hold_out_the_last_tenth_and_reject_empty_ones() {
        let (x, y) = tiny();
        let d = PipelineData::split(x.view(), &y, 0.1, (x.view(), &y)).unwrap();
        assert_eq!((d.train.1.len(), d.validation.1.len()), (72, 8));
        assert_eq!(d.validation.1, &y[72..]);
        assert!(PipelineData::split(x.view(), &y, 0.0, (x.view(), &y)).is_err());
        assert!(PipelineData::split(x.view(), &y[..3], 0.5, (x.view(), &y)).is_err());
    }

    #[test]
    fn frontier_shares_stages_and_keeps_masks_through_qat() {
        let (x, y) = tiny();
        let data = PipelineData::split(x.view(), &y, 0.1, (x.view(), &y)).unwrap();
        let base = PipelineConfig {
            student: |s| pare_tensor::models::teacher_cnn(4, 8, s),
            distill: false,
            student_epochs: 1,
            prune_epochs: 2,
            prune_batch: 16,
            prune_frequency: 1,
            qat_batch: 16,
            ..Default::default()
        };
        let grid = FrontierGrid {
            sparsities: vec![0.5, 0.9],
            bits: vec![WeightBits::Int8, WeightBits::Int4],
            distill: vec![false],
            seeds: vec![0, 1],
        };
        let mut seen = 0;
        let rows = frontier(&base, &grid, None, &data, |_| seen += 1).unwrap();
        assert_eq!(seen, 8);
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert_eq!(r.runs.len(), 2);
            // One student per seed, shared by every setting of that seed.
            assert_eq!(r.runs[0].student, rows[0].runs[0].student);
            // The cut model holds no more non-zero weights than the sparsity leaves.
            let kernels = 9 * 4 + 9 * 4 * 8 + 7 * 7 * 8 * 10;
            let kept = ((1.0 - r.sparsity) * kernels as f32).ceil() as usize;
            assert!(
                r.runs[0].pruned.nonzero <= kept,
                "{} > {kept}",
                r.runs[0].pruned.nonzero
            );
            assert!(r.runs[0].quantized.nonzero <= r.runs[0].pruned.nonzero);
        }
        // Sparser is smaller, both widths.
        let size = |s: f32, b| {
            rows.iter()
                .find(|r| r.sparsity == s && r.bits == b)
                .unwrap()
                .gzip_bytes()
        };
        assert!(size(0.9, WeightBits::Int4) < size(0.5, WeightBits::Int4));
        assert!(size(0.9, WeightBits::Int8) < size(0.5, WeightBits::Int8));
        let best = choose(&rows, 0.0).unwrap();
        assert_eq!(
            best.gzip_bytes(),
            rows.iter()
                .map(|r| r.gzip_bytes())
                .fold(f64::INFINITY, f64::min)
        );
        assert!(choose(&rows, 1.1).is_none());
        let points: Vec<FrontierPoint> = rows.iter().map(FrontierRow::point).collect();
        let svg = frontier_plot(&points, (70_000.0, 0.98)).unwrap();
        assert!(svg.contains("TFLite int8") && svg.contains("Deep Compression"));
        // Distilling without a teacher is a setting error, not a panic.
        let distilled = Pipeline::new(PipelineConfig {
            distill: true,
            ..base
        })
        .unwrap();
        assert!(matches!(
            distilled.student(None, &data),
            Err(Error::BadSetting {
                name: "distill",
                ..
            })
        ));
    }
}
