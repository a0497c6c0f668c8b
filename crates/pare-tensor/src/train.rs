//! A Keras-like `fit` / `evaluate` / `predict` loop.
//!
//! Two extension points make pruning and distillation plug in without forking the loop: an
//! [`Objective`] builds each step's forward pass and loss (distillation swaps the loss, feature
//! distillation taps intermediate layers), and [`Callback`]s run at batch and epoch boundaries
//! (pruning updates its masks there and puts them into the step's graph).

pub use crate::augment::Augmentation;
use crate::data::{Inputs, Label, Labelled, class_indices};
use crate::error::{Result, TensorError};
use crate::graph::{Grads, Graph, Var};
use crate::nn::{Param, Sequential};
use crate::optim::Optimizer;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, Ix2, IxDyn};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;

/// A batch is split into per-thread shards only when each gets at least this many examples:
/// below it, the shards' fixed costs outweigh the second core.
const MIN_SHARD: usize = 8;
use std::time::Instant;

/// Settings of a training run; `Default` matches Keras' `fit` (batch 32, shuffled, one epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    /// Passes over the training data.
    pub epochs: usize,
    /// Examples per step; the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Reshuffle the training data every epoch.
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Fraction of the data held out for validation, taken from the end as Keras does (0 for
    /// none).
    pub validation_split: f32,
    /// Show a progress bar per epoch.
    pub verbose: bool,
    /// Data-parallel shards per step (`None`: one per rayon thread). Each shard runs forward
    /// and backward on its slice of the batch in its own graph; gradients are averaged. Same
    /// seed and same shard count give bit-identical weights. A model with BatchNorm runs one
    /// shard (its statistics are the whole batch's, as in Keras); the kernels still use every
    /// thread.
    pub threads: Option<usize>,
    /// Clip the gradients by their global norm before each update, as Keras'
    /// `global_clipnorm` and PyTorch's `clip_grad_norm_` do (see [`clip_by_global_norm`]);
    /// `None` (the default) for no clipping.
    pub clip_global_norm: Option<f32>,
    /// Random changes to each training batch (none by default); validation data is never
    /// augmented.
    pub augmentation: Augmentation,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 1,
            batch_size: 32,
            shuffle: true,
            seed: 0,
            validation_split: 0.0,
            verbose: true,
            threads: None,
            clip_global_norm: None,
            augmentation: Augmentation::default(),
        }
    }
}

impl FitConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: String, reason| {
            Err(TensorError::BadHyperParameter {
                name,
                value,
                reason,
            })
        };
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "must be >= 1");
        }
        if self.epochs == 0 {
            return bad("epochs", "0".into(), "must be >= 1");
        }
        if self.threads == Some(0) {
            return bad(
                "threads",
                "0".into(),
                "must be >= 1 (or None: one per rayon thread)",
            );
        }
        if let Some(c) = self.clip_global_norm
            && !(c.is_finite() && c > 0.0)
        {
            return bad("clip_global_norm", c.to_string(), "must be > 0");
        }
        self.augmentation.validate()?;
        if !(0.0..1.0).contains(&self.validation_split) || !self.validation_split.is_finite() {
            return bad(
                "validation_split",
                self.validation_split.to_string(),
                "must be in [0, 1)",
            );
        }
        Ok(())
    }
}

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochLog {
    /// The epoch, counted from 1 as the progress lines print it (`epoch 1/5`).
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub loss: f32,
    /// Training accuracy over the epoch.
    pub accuracy: f32,
    /// Validation loss, when there is validation data.
    pub val_loss: Option<f32>,
    /// Validation accuracy, when there is validation data.
    pub val_accuracy: Option<f32>,
    /// Wall-clock seconds of the training steps (validation excluded).
    pub seconds: f64,
    /// Training examples per second.
    pub examples_per_second: f64,
    /// The objective's other figures ([`Objective::step_with_metrics`]), each a mean over the
    /// epoch's examples: distillation reports `student_loss` and `distillation_loss` here, as
    /// Keras' `Distiller` does. Empty for plain cross-entropy.
    pub metrics: Vec<(&'static str, f32)>,
}

impl EpochLog {
    /// The objective's figure called `name`, if it reported one.
    pub fn metric(&self, name: &str) -> Option<f32> {
        self.metrics.iter().find(|m| m.0 == name).map(|m| m.1)
    }
}

/// What `fit` returns: one log per epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Per-epoch figures.
    pub epochs: Vec<EpochLog>,
    /// The epoch (1-based) after which a callback stopped training
    /// ([`Callback::stop_training`]), if one did.
    pub stopped_early: Option<usize>,
}

/// The data of one training step.
#[derive(Debug)]
pub struct Batch<'a> {
    /// Inputs `[b, ...]`.
    pub x: &'a ArrayD<f32>,
    /// Class labels.
    pub labels: &'a [usize],
    /// Positions of these examples in the training data given to `fit` (a cache of teacher
    /// outputs looks them up by these).
    pub indices: &'a [usize],
    /// Epoch index.
    pub epoch: usize,
    /// Global step (the optimizer's iteration count before this step).
    pub step: u64,
}

/// Vars of a step: the scalar loss and the logits (for the accuracy).
#[derive(Debug, Clone, Copy)]
pub struct StepVars {
    /// Scalar loss to minimise.
    pub loss: Var,
    /// Model outputs `[b, classes]`.
    pub logits: Var,
}

/// Builds one training step's forward pass and loss.
///
/// `Fit` may split a batch into shards that run on different threads, each in its own graph,
/// and average their gradients weighted by shard size; so the loss must be a mean over the
/// examples of the batch (every built-in loss is), and `step` takes `&self`.
pub trait Objective: Sync {
    /// Runs the model on `x` in `g` and returns the loss and logits.
    fn step(
        &self,
        g: &mut Graph,
        model: &Sequential,
        x: Var,
        batch: &Batch<'_>,
    ) -> Result<StepVars>;
    /// [`Objective::step`] plus named scalar figures of the step to report per epoch in
    /// [`EpochLog::metrics`] (each a mean over the batch, like the loss). None by default.
    fn step_with_metrics(
        &self,
        g: &mut Graph,
        model: &Sequential,
        x: Var,
        batch: &Batch<'_>,
    ) -> Result<(StepVars, Vec<(&'static str, Var)>)> {
        Ok((self.step(g, model, x, batch)?, Vec::new()))
    }
    /// Extra trainable parameters owned by the objective (e.g. a hint projection).
    fn params_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }
}

/// Sparse softmax cross-entropy from logits: Keras'
/// `SparseCategoricalCrossentropy(from_logits=True)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn step(
        &self,
        g: &mut Graph,
        model: &Sequential,
        x: Var,
        batch: &Batch<'_>,
    ) -> Result<StepVars> {
        let logits = model.forward(g, x);
        let loss = g.softmax_cross_entropy(logits, batch.labels);
        Ok(StepVars { loss, logits })
    }
}

/// Hooks at the boundaries of training. Every method defaults to doing nothing.
pub trait Callback {
    /// Before the first step.
    fn on_train_begin(&mut self, model: &mut Sequential) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// Before a step's forward pass (pruning updates its masks here).
    fn on_batch_begin(&mut self, step: u64, model: &mut Sequential) -> Result<()> {
        let _ = (step, model);
        Ok(())
    }
    /// Prepares each graph of the step before the forward pass: puts masks or parameter hooks
    /// into it. Called once per shard graph, after `on_batch_begin`.
    fn prepare_graph(&self, graph: &mut Graph) -> Result<()> {
        let _ = graph;
        Ok(())
    }
    /// After the optimizer's update of this step.
    fn on_batch_end(&mut self, step: u64, model: &mut Sequential) -> Result<()> {
        let _ = (step, model);
        Ok(())
    }
    /// After an epoch (and its validation).
    fn on_epoch_end(&mut self, log: &EpochLog, model: &mut Sequential) -> Result<()> {
        let _ = (log, model);
        Ok(())
    }
    /// After the last epoch.
    fn on_train_end(&mut self, model: &mut Sequential) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// After `on_epoch_end`, with the optimizer's learning rate
    /// ([`Optimizer::learning_rate`]); a returned rate replaces it from the next step on
    /// (Keras' `ReduceLROnPlateau`). Not called for optimizers whose rate cannot be set.
    fn adjust_learning_rate(&mut self, log: &EpochLog, learning_rate: f32) -> Result<Option<f32>> {
        let _ = (log, learning_rate);
        Ok(None)
    }
    /// Polled after every step and every epoch: `true` ends training cleanly (Keras'
    /// `model.stop_training = True`). A stop during an epoch still finishes that epoch's
    /// validation, log and `on_epoch_end`; `fit` then returns its history, with
    /// [`History::stopped_early`] set, and no error.
    fn stop_training(&self) -> bool {
        false
    }
}

/// Result of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f32,
    /// Fraction of correct arg-max predictions.
    pub accuracy: f32,
}

fn check_data(model: &Sequential, x: &ArrayViewD<'_, f32>, y: Option<&[usize]>) -> Result<()> {
    model.check_input(x.shape())?;
    let classes = *model.output_shape()?.last().unwrap_or(&0);
    if let Some(y) = y {
        if y.len() != x.shape()[0] {
            return Err(TensorError::LengthMismatch {
                what: "data",
                images: x.shape()[0],
                labels: y.len(),
            });
        }
        if let Some((index, &label)) = y.iter().enumerate().find(|(_, l)| **l >= classes) {
            return Err(TensorError::LabelOutOfRange {
                index,
                label,
                classes,
            });
        }
    }
    if let Some(index) = first_non_finite(x) {
        return Err(TensorError::NonFinite {
            what: "input data".into(),
            index,
        });
    }
    Ok(())
}

/// Index (in logical order) of the first NaN or infinity in `x`.
fn first_non_finite(x: &ArrayViewD<'_, f32>) -> Option<usize> {
    match x.as_slice() {
        // Whole chunks are checked with a branch-free fold (it vectorises; an early-exit scan
        // does not), then the offending chunk is searched: the check of a whole training set
        // runs at memory speed.
        Some(s) => s.chunks(1 << 12).enumerate().find_map(|(i, c)| {
            let finite = c.iter().fold(true, |ok, v| ok & v.is_finite());
            (!finite).then(|| i * (1 << 12) + c.iter().position(|v| !v.is_finite()).unwrap_or(0))
        }),
        None => x.iter().position(|v| !v.is_finite()),
    }
}

/// The first non-finite gradient value, by parameter name order (so the report is the same on
/// every run), with its parameter.
fn first_non_finite_grad(grads: &Grads) -> Option<(String, f32)> {
    let mut bad: Vec<(&String, f32)> = grads
        .iter()
        .filter_map(|(n, g)| {
            let i = first_non_finite(&g.view())?;
            g.iter().nth(i).map(|&v| (n, v))
        })
        .collect();
    bad.sort_by(|a, b| a.0.cmp(b.0));
    bad.first().map(|(n, v)| ((*n).clone(), *v))
}

/// Copies the examples at `idx` into one contiguous batch.
pub fn gather(x: &ArrayViewD<'_, f32>, idx: &[usize]) -> ArrayD<f32> {
    let per: usize = x.shape()[1..].iter().product();
    let mut shape = x.shape().to_vec();
    shape[0] = idx.len();
    // A pooled buffer: the batch goes into a graph, which hands it back to the pool.
    let mut out = crate::kernels::buffers::take_any(idx.len() * per);
    match x.as_slice() {
        Some(s) => {
            for (dst, &i) in out.chunks_exact_mut(per.max(1)).zip(idx) {
                dst.copy_from_slice(&s[i * per..(i + 1) * per]);
            }
        }
        None => {
            for (dst, &i) in out.chunks_exact_mut(per.max(1)).zip(idx) {
                for (d, v) in dst.iter_mut().zip(x.index_axis(Axis(0), i).iter()) {
                    *d = *v;
                }
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).expect("gather: shape matches")
}

/// Number of rows whose arg-max equals the label.
pub fn count_correct(logits: &ArrayD<f32>, labels: &[usize]) -> usize {
    let l2 = logits
        .view()
        .into_dimensionality::<Ix2>()
        .expect("logits are [b, classes]");
    l2.rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, y)| argmax(row.as_slice().unwrap_or(&row.to_vec())) == **y)
        .count()
}

/// Index of the largest value (the first one on ties, as NumPy's argmax).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Scales every gradient by `max_norm / max(norm, max_norm)`, where `norm` is the global L2
/// norm over all of them (TensorFlow's `clip_by_global_norm`, Keras' `global_clipnorm`,
/// PyTorch's `clip_grad_norm_`): the direction is kept, the length capped. Returns `norm`
/// before clipping. Summed in f64 in name order, so the result does not depend on hash order.
pub fn clip_by_global_norm(grads: &mut Grads, max_norm: f32) -> f32 {
    let mut named: Vec<(&String, &ArrayD<f32>)> = grads.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let sq: f64 = named
        .iter()
        .map(|(_, g)| g.iter().map(|&v| v as f64 * v as f64).sum::<f64>())
        .sum();
    let norm = sq.sqrt() as f32;
    if norm > max_norm {
        let scale = max_norm / norm;
        grads.scale(scale);
    }
    norm
}

/// Trains a model: `Fit::new(cfg).callback(&mut c).run(&mut model, &mut opt, x, y)`.
pub struct Fit<'a> {
    cfg: FitConfig,
    validation: Option<(ArrayViewD<'a, f32>, Vec<usize>)>,
    bad_validation: Option<TensorError>,
    objective: Option<&'a mut dyn Objective>,
    callbacks: Vec<&'a mut dyn Callback>,
}

impl<'a> Fit<'a> {
    /// A training run with these settings, cross-entropy loss and no callbacks.
    pub fn new(cfg: FitConfig) -> Fit<'a> {
        Fit {
            cfg,
            validation: None,
            bad_validation: None,
            objective: None,
            callbacks: Vec::new(),
        }
    }
    /// Explicit validation data (takes precedence over `validation_split`).
    ///
    /// Inputs of any dimension, labels of any integer type; a negative label is reported by
    /// `run`.
    pub fn validation_data<L: Label>(mut self, x: impl Inputs<'a>, y: &[L]) -> Fit<'a> {
        match class_indices(y) {
            Ok(y) => self.validation = Some((x.into_view(), y)),
            Err(e) => self.bad_validation = Some(e),
        }
        self
    }
    /// A whole labelled data set (a `pare_mnist::Dataset`) as validation data.
    pub fn validation_dataset(self, data: &'a impl Labelled) -> Fit<'a> {
        let y = data.class_labels();
        self.validation_data(data.inputs(), &y)
    }

    /// [`Fit::run`] on a whole labelled data set (a `pare_mnist::Dataset`).
    pub fn run_dataset(
        self,
        model: &mut Sequential,
        opt: &mut dyn Optimizer,
        data: &impl Labelled,
    ) -> Result<History> {
        let y = data.class_labels();
        self.run(model, opt, data.inputs(), &y)
    }
    /// Replaces the loss (and the forward pass) of every step.
    pub fn objective(mut self, o: &'a mut dyn Objective) -> Fit<'a> {
        self.objective = Some(o);
        self
    }
    /// Adds a callback.
    pub fn callback(mut self, c: &'a mut dyn Callback) -> Fit<'a> {
        self.callbacks.push(c);
        self
    }

    /// Runs the training and returns the history: inputs `x` `[n, ...]` as any `f32` array or
    /// view (of the model's input shape), labels `y` of any integer type.
    pub fn run<'x, L: Label>(
        mut self,
        model: &mut Sequential,
        opt: &mut dyn Optimizer,
        x: impl Inputs<'x>,
        y: &[L],
    ) -> Result<History> {
        let x = x.into_view();
        let y = &class_indices(y)?[..];
        if let Some(e) = self.bad_validation.take() {
            return Err(e);
        }
        let cfg = self.cfg.clone();
        cfg.validate()?;
        check_data(model, &x, Some(y))?;
        let x = x.as_standard_layout();
        let n = x.shape()[0];
        let (n_train, split_val) = if self.validation.is_none() && cfg.validation_split > 0.0 {
            // Keras computes int(n * (1 - split)) in f64 from the literal the user wrote; an
            // f32 0.1 widened to f64 is 0.10000000149 and would keep 53,999 of 60,000.
            let split: f64 = cfg.validation_split.to_string().parse().unwrap_or(0.0);
            let at = (n as f64 * (1.0 - split)) as usize;
            (at, Some(at))
        } else {
            (n, None)
        };
        if n_train == 0 {
            return Err(TensorError::Empty("training data"));
        }
        if let Some((vx, vy)) = &self.validation {
            check_data(model, vx, Some(vy))?;
        }
        let shards = cfg
            .threads
            .unwrap_or_else(rayon::current_num_threads)
            .max(1);
        // BatchNorm normalises with the whole batch's statistics (Keras): one graph per step.
        let shards = if model.uses_batch_statistics() {
            1
        } else {
            shards
        };
        let mut default_obj = CrossEntropy;
        let objective: &mut dyn Objective = match self.objective.take() {
            Some(o) => o,
            None => &mut default_obj,
        };
        for c in self.callbacks.iter_mut() {
            c.on_train_begin(model)?;
        }
        let mut history = History::default();
        let mut order: Vec<usize> = (0..n_train).collect();
        let steps = n_train.div_ceil(cfg.batch_size);
        for epoch in 0..cfg.epochs {
            if cfg.shuffle {
                let mut rng = StdRng::seed_from_u64(
                    cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                order = (0..n_train).collect();
                order.shuffle(&mut rng);
            }
            let bar = if cfg.verbose {
                ProgressBar::new(steps as u64)
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
            let start = Instant::now();
            let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
            let mut metric_sums: Vec<(&'static str, f64)> = Vec::new();
            for (bi, idx) in order.chunks(cfg.batch_size).enumerate() {
                let step = opt.iterations();
                for c in self.callbacks.iter_mut() {
                    c.on_batch_begin(step, model)?;
                }
                let shard_len = idx.len().div_ceil(shards.min(idx.len() / MIN_SHARD).max(1));
                let mut jobs = Vec::new();
                for (si, part) in idx.chunks(shard_len).enumerate() {
                    let mut g = Graph::new();
                    g.set_seed(cfg.seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407) ^ si as u64);
                    for c in self.callbacks.iter() {
                        c.prepare_graph(&mut g)?;
                    }
                    jobs.push((g, part));
                }
                let model_ref: &Sequential = model;
                let obj_ref: &dyn Objective = objective;
                let xs = x.view();
                let augmentation = cfg.augmentation;
                type Shard = (
                    f32,
                    usize,
                    Grads,
                    Vec<(&'static str, f32)>,
                    Vec<(String, ArrayD<f32>)>,
                );
                let run = |(mut g, part): (Graph, &[usize])| -> Result<Shard> {
                    let mut xb = gather(&xs, part);
                    augmentation.apply(&mut xb, part, cfg.seed, epoch)?;
                    let labels: Vec<usize> = part.iter().map(|&i| y[i]).collect();
                    let xv = g.constant(crate::kernels::buffers::clone_array(&xb));
                    let batch = Batch {
                        x: &xb,
                        labels: &labels,
                        indices: part,
                        epoch,
                        step,
                    };
                    let (vars, metric_vars) =
                        obj_ref.step_with_metrics(&mut g, model_ref, xv, &batch)?;
                    let scalar =
                        |g: &Graph, v: Var| g.value(v).iter().next().copied().unwrap_or(f32::NAN);
                    let loss = scalar(&g, vars.loss);
                    let metrics: Vec<(&'static str, f32)> = metric_vars
                        .into_iter()
                        .map(|(name, v)| (name, scalar(&g, v)))
                        .collect();
                    let correct = count_correct(g.value(vars.logits), &labels);
                    let grads = g.backward(vars.loss);
                    crate::kernels::buffers::give_array(xb);
                    Ok((loss, correct, grads, metrics, g.take_state_updates()))
                };
                let results: Vec<Result<Shard>> = if jobs.len() > 1 {
                    jobs.into_par_iter()
                        .map(|job| crate::kernels::with_sequential_kernels(|| run(job)))
                        .collect()
                } else {
                    jobs.into_iter().map(run).collect()
                };
                let mut parts = Vec::with_capacity(results.len());
                for r in results {
                    parts.push(r?);
                }
                // Shard losses are means: weight them, and their gradients, by shard size.
                let weights: Vec<f32> = idx
                    .chunks(shard_len)
                    .map(|p| p.len() as f32 / idx.len() as f32)
                    .collect();
                let loss: f32 = parts.iter().zip(&weights).map(|(p, w)| p.0 * w).sum();
                // Checked before the update and before any callback, so a diverged run
                // changes no weight and saves nothing.
                let diverged = |what: String, value: f32| TensorError::Diverged {
                    what,
                    value,
                    epoch: epoch + 1,
                    step,
                };
                if !loss.is_finite() {
                    bar.abandon();
                    return Err(diverged("the loss".into(), loss));
                }
                correct += parts.iter().map(|p| p.1).sum::<usize>();
                for (p, w) in parts.iter().zip(&weights) {
                    for (k, &(name, v)) in p.3.iter().enumerate() {
                        if metric_sums.len() <= k {
                            metric_sums.push((name, 0.0));
                        }
                        metric_sums[k].1 += (v * w) as f64 * idx.len() as f64;
                    }
                }
                let state: Vec<_> = parts.iter_mut().flat_map(|p| p.4.drain(..)).collect();
                let mut grads =
                    Grads::weighted_sum(parts.into_iter().map(|p| p.2).zip(weights.clone()));
                if let Some((name, value)) = first_non_finite_grad(&grads) {
                    bar.abandon();
                    return Err(diverged(format!("the gradient of {name}"), value));
                }
                if let Some(max_norm) = cfg.clip_global_norm {
                    clip_by_global_norm(&mut grads, max_norm);
                }
                let mut params = model.params_mut();
                params.extend(objective.params_mut());
                opt.step(params, &grads);
                model.apply_state_updates(state)?;
                for c in self.callbacks.iter_mut() {
                    c.on_batch_end(step, model)?;
                }
                loss_sum += loss as f64 * idx.len() as f64;
                seen += idx.len();
                bar.inc(1);
                let stop = self.callbacks.iter().any(|c| c.stop_training());
                if bi % 25 == 0 || bi + 1 == steps || stop {
                    bar.set_message(format!(
                        "loss {:.4} acc {:.4}",
                        loss_sum / seen as f64,
                        correct as f64 / seen as f64
                    ));
                }
                if stop {
                    break;
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            bar.finish();
            let (val_loss, val_accuracy) = match (&self.validation, split_val) {
                (Some((vx, vy)), _) => {
                    let e = evaluate(model, vx.view(), &vy[..], 256)?;
                    (Some(e.loss), Some(e.accuracy))
                }
                (None, Some(at)) => {
                    let vx = x.slice_axis(Axis(0), (at..).into());
                    let e = evaluate(model, vx, &y[at..], 256)?;
                    (Some(e.loss), Some(e.accuracy))
                }
                _ => (None, None),
            };
            let log = EpochLog {
                epoch: epoch + 1,
                loss: (loss_sum / seen.max(1) as f64) as f32,
                accuracy: correct as f32 / seen.max(1) as f32,
                val_loss,
                val_accuracy,
                seconds,
                examples_per_second: seen as f64 / seconds.max(1e-9),
                metrics: metric_sums
                    .iter()
                    .map(|&(name, sum)| (name, (sum / seen.max(1) as f64) as f32))
                    .collect(),
            };
            if cfg.verbose {
                let val = match (val_loss, val_accuracy) {
                    (Some(l), Some(a)) => format!(" val_loss {l:.4} val_acc {a:.4}"),
                    _ => String::new(),
                };
                let extra: String = log
                    .metrics
                    .iter()
                    .map(|(name, v)| format!(" {name} {v:.4}"))
                    .collect();
                eprintln!(
                    "epoch {}/{}: loss {:.4}{extra} acc {:.4}{val} ({:.1} s, {:.0} ex/s)",
                    epoch + 1,
                    cfg.epochs,
                    log.loss,
                    log.accuracy,
                    seconds,
                    log.examples_per_second
                );
            }
            for c in self.callbacks.iter_mut() {
                c.on_epoch_end(&log, model)?;
            }
            if let Some(mut lr) = opt.learning_rate() {
                for c in self.callbacks.iter_mut() {
                    if let Some(new) = c.adjust_learning_rate(&log, lr)? {
                        if !(new.is_finite() && new > 0.0) {
                            return Err(TensorError::BadHyperParameter {
                                name: "learning_rate",
                                value: new.to_string(),
                                reason: "must be > 0 (set by a callback)",
                            });
                        }
                        opt.set_learning_rate(new);
                        lr = new;
                    }
                }
            }
            let stop = self.callbacks.iter().any(|c| c.stop_training());
            history.epochs.push(log);
            if stop {
                history.stopped_early = Some(epoch + 1);
                break;
            }
        }
        for c in self.callbacks.iter_mut() {
            c.on_train_end(model)?;
        }
        Ok(history)
    }
}

/// Logits of every example, computed in batches on an inference graph.
pub fn predict<'x>(
    model: &Sequential,
    x: impl Inputs<'x>,
    batch_size: usize,
) -> Result<Array2<f32>> {
    let x = x.into_view();
    if batch_size == 0 {
        return Err(TensorError::BadHyperParameter {
            name: "batch_size",
            value: "0".into(),
            reason: "must be >= 1",
        });
    }
    check_data(model, &x, None)?;
    let x = x.as_standard_layout();
    let n = x.shape()[0];
    let classes: usize = model.output_shape()?.iter().product();
    let mut out = Array2::zeros((n, classes));
    for start in (0..n).step_by(batch_size) {
        let end = (start + batch_size).min(n);
        let mut g = Graph::inference();
        let xv = g.constant(x.slice_axis(Axis(0), (start..end).into()).to_owned());
        let y = model.forward(&mut g, xv);
        let y = g
            .value(y)
            .view()
            .into_shape_with_order((end - start, classes))
            .expect("logits shape");
        out.slice_mut(ndarray::s![start..end, ..]).assign(&y);
    }
    Ok(out)
}

/// [`evaluate`] on a whole labelled data set (a `pare_mnist::Dataset`).
pub fn evaluate_dataset(
    model: &Sequential,
    data: &impl Labelled,
    batch_size: usize,
) -> Result<Evaluation> {
    evaluate(model, data.inputs(), &data.class_labels(), batch_size)
}

/// Mean cross-entropy and accuracy over a labelled data set: inputs as any `f32` array or
/// view, labels of any integer type.
pub fn evaluate<'x, L: Label>(
    model: &Sequential,
    x: impl Inputs<'x>,
    y: &[L],
    batch_size: usize,
) -> Result<Evaluation> {
    let x = x.into_view();
    let y = &class_indices(y)?[..];
    check_data(model, &x, Some(y))?;
    if y.is_empty() {
        return Err(TensorError::Empty("evaluation data"));
    }
    let logits = predict(model, x, batch_size)?;
    evaluate_logits(logits.view(), y)
}

/// Mean sparse cross-entropy (from logits, with a stable log-sum-exp) and arg-max accuracy of
/// `logits` `[n, classes]` against labels of any integer type: the scoring of [`evaluate`],
/// for models that produce logits some other way (an int8 engine, a sparse runtime).
///
/// # Errors
/// No examples, a label count that is not `n`, or a label that is not a class.
pub fn evaluate_logits<L: Label>(
    logits: ndarray::ArrayView2<'_, f32>,
    y: &[L],
) -> Result<Evaluation> {
    let y = &class_indices(y)?[..];
    let (n, classes) = logits.dim();
    if y.is_empty() {
        return Err(TensorError::Empty("evaluation data"));
    }
    if y.len() != n {
        return Err(TensorError::LengthMismatch {
            what: "logits",
            images: n,
            labels: y.len(),
        });
    }
    if let Some((index, &label)) = y.iter().enumerate().find(|(_, l)| **l >= classes) {
        return Err(TensorError::LabelOutOfRange {
            index,
            label,
            classes,
        });
    }
    let mut loss = 0f64;
    let mut correct = 0;
    for (row, &label) in logits.rows().into_iter().zip(y) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let lse = max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
        loss += (lse - row[label]) as f64;
        let r = row.to_vec();
        if argmax(&r) == label {
            correct += 1;
        }
    }
    Ok(Evaluation {
        loss: (loss / y.len() as f64) as f32,
        accuracy: correct as f32 / y.len() as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::small_cnn;
    use crate::optim::{Adam, AdamConfig};

    /// Two classes a tiny CNN can separate: a bright top half vs a bright bottom half, plus noise.
    fn toy_data(n: usize, seed: u64) -> (ArrayD<f32>, Vec<usize>) {
        crate::gradcheck::toy_halves(n, seed, 0.8, 0.2)
    }

    fn train_once(seed: u64) -> (Sequential, History) {
        let (x, y) = toy_data(96, 1);
        let mut model = small_cnn(seed);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let cfg = FitConfig {
            epochs: 2,
            batch_size: 16,
            seed,
            verbose: false,
            ..Default::default()
        };
        let h = Fit::new(cfg)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        (model, h)
    }

    #[test]
    fn first_non_finite_finds_the_first_bad_value() {
        let n = 3 * 4096 + 5;
        let mut v = ndarray::Array1::<f32>::zeros(n).into_dyn();
        assert_eq!(first_non_finite(&v.view()), None);
        for (at, bad) in [
            (n - 1, f32::NAN),
            (4096 + 7, f32::INFINITY),
            (0, f32::NEG_INFINITY),
        ] {
            v[at] = bad;
            assert_eq!(first_non_finite(&v.view()), Some(at));
        }
        // A strided view takes the plain scan and counts in logical order.
        let every_other = v.slice_axis(Axis(0), ndarray::Slice::new(1, None, 2));
        assert_eq!(first_non_finite(&every_other), Some((4096 + 7 - 1) / 2));
    }

    #[test]
    fn same_seed_same_thread_count_gives_bit_identical_weights() {
        let (a, ha) = train_once(5);
        let (b, hb) = train_once(5);
        assert_eq!(a.params(), b.params());
        assert_eq!(ha.epochs[1].loss, hb.epochs[1].loss);
        let (c, _) = train_once(6);
        assert_ne!(a.params(), c.params());
    }

    #[test]
    fn sharded_steps_match_whole_batch_steps() {
        let (x, y) = toy_data(64, 7);
        let run = |threads| {
            let mut model = small_cnn(1);
            let mut adam = Adam::new(AdamConfig::default()).unwrap();
            let cfg = FitConfig {
                epochs: 1,
                batch_size: 32,
                threads: Some(threads),
                verbose: false,
                ..Default::default()
            };
            Fit::new(cfg)
                .run(&mut model, &mut adam, x.view(), &y)
                .unwrap();
            model
        };
        let (one, two, four) = (run(1), run(2), run(4));
        for ((a, b), c) in one.params().iter().zip(two.params()).zip(four.params()) {
            for ((p, q), r) in a.value.iter().zip(b.value.iter()).zip(c.value.iter()) {
                approx::assert_abs_diff_eq!(p, q, epsilon = 1e-5);
                approx::assert_abs_diff_eq!(p, r, epsilon = 1e-5);
            }
        }
    }

    #[test]
    fn learns_a_separable_toy_problem_and_reports_validation() {
        let (x, y) = toy_data(200, 2);
        let mut model = small_cnn(0);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let cfg = FitConfig {
            epochs: 3,
            batch_size: 20,
            validation_split: 0.2,
            verbose: false,
            ..Default::default()
        };
        let h = Fit::new(cfg)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        let last = h.epochs.last().unwrap();
        assert!(last.val_accuracy.unwrap() > 0.95, "{last:?}");
        assert_eq!(adam.iterations(), 3 * 8); // 160 training examples / 20
    }

    #[test]
    fn validation_split_keeps_what_keras_keeps() {
        // Keras: int(60000 * (1 - 0.1)) = 54000 training examples; here with 100 examples
        // and 0.1 → 90, 0.3 → 70 (f64 arithmetic on the decimal literal).
        let (x, y) = toy_data(100, 9);
        for (split, train) in [(0.1f32, 90u64), (0.3, 70)] {
            let mut model = small_cnn(0);
            let mut adam = Adam::new(AdamConfig::default()).unwrap();
            let cfg = FitConfig {
                epochs: 1,
                batch_size: 10,
                validation_split: split,
                verbose: false,
                ..Default::default()
            };
            Fit::new(cfg)
                .run(&mut model, &mut adam, x.view(), &y)
                .unwrap();
            assert_eq!(adam.iterations(), train / 10, "split {split}");
        }
    }

    #[test]
    fn transposed_parameters_are_accepted() {
        let mut g = Graph::new();
        let k = ArrayD::from_shape_fn(IxDyn(&[12, 1, 3, 3]), |i| i[0] as f32)
            .permuted_axes(IxDyn(&[2, 3, 1, 0]));
        assert!(!k.is_standard_layout());
        let p = Param::new("k", k);
        let kv = g.param(&p);
        let x = g.constant(ArrayD::ones(IxDyn(&[1, 5, 5, 1])));
        let y = g.conv2d(x, kv, [1, 1], crate::Padding::Valid);
        assert_eq!(g.shape(y), &[1, 3, 3, 12]);
        assert_eq!(g.value(y)[[0, 0, 0, 5]], 45.0);
    }

    #[test]
    fn bad_user_input_is_an_error() {
        let (x, y) = toy_data(8, 3);
        let mut model = small_cnn(0);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let quiet = FitConfig {
            verbose: false,
            ..Default::default()
        };
        let fit = |m: &mut Sequential,
                   a: &mut Adam,
                   x: ArrayViewD<'_, f32>,
                   y: &[usize],
                   c: FitConfig| { Fit::new(c).run(m, a, x, y) };
        let wrong = ArrayD::<f32>::zeros(IxDyn(&[8, 28, 27, 1]));
        assert!(matches!(
            fit(&mut model, &mut adam, wrong.view(), &y, quiet.clone()),
            Err(TensorError::InputShape { .. })
        ));
        assert!(matches!(
            fit(&mut model, &mut adam, x.view(), &y[..7], quiet.clone()),
            Err(TensorError::LengthMismatch { .. })
        ));
        let mut bad = y.clone();
        bad[3] = 10;
        assert!(matches!(
            fit(&mut model, &mut adam, x.view(), &bad, quiet.clone()),
            Err(TensorError::LabelOutOfRange { index: 3, .. })
        ));
        let mut nan = x.clone();
        nan[[2, 3, 4, 0]] = f32::NAN;
        assert!(matches!(
            fit(&mut model, &mut adam, nan.view(), &y, quiet.clone()),
            Err(TensorError::NonFinite { .. })
        ));
        let zero_batch = FitConfig {
            batch_size: 0,
            ..quiet.clone()
        };
        assert!(matches!(
            fit(&mut model, &mut adam, x.view(), &y, zero_batch),
            Err(TensorError::BadHyperParameter { .. })
        ));
        let split = FitConfig {
            validation_split: 1.0,
            ..quiet
        };
        assert!(matches!(
            fit(&mut model, &mut adam, x.view(), &y, split),
            Err(TensorError::BadHyperParameter { .. })
        ));
        assert!(matches!(
            predict(&model, x.view(), 0),
            Err(TensorError::BadHyperParameter { .. })
        ));
    }

    #[test]
    fn divergence_stops_with_epoch_and_step_before_any_update_or_callback() {
        /// Saves the model at the end of every step and epoch, as a checkpointing callback
        /// would; records what it saw.
        struct Saver {
            dir: std::path::PathBuf,
            steps: Vec<u64>,
            epochs: usize,
        }
        impl Callback for Saver {
            fn on_batch_end(&mut self, step: u64, model: &mut Sequential) -> Result<()> {
                self.steps.push(step);
                crate::checkpoint::save(
                    model,
                    &self.dir.join(format!("s{step}")),
                    Default::default(),
                )
            }
            fn on_epoch_end(&mut self, _: &EpochLog, _: &mut Sequential) -> Result<()> {
                self.epochs += 1;
                Ok(())
            }
        }
        let (x, y) = toy_data(64, 5);
        // Two stacked linear layers (no ReLU to die): at a learning rate of 1e3 each update
        // multiplies the weights, and within a few steps a loss or gradient overflows.
        let mut rng = <StdRng as SeedableRng>::seed_from_u64(0);
        let mut model = Sequential::new(&[28, 28, 1])
            .push(crate::nn::Flatten::new("flatten"))
            .push(crate::nn::Dense::new("dense", 784, 16, &mut rng))
            .push(crate::nn::Dense::new("dense_1", 16, 2, &mut rng));
        let mut sgd = crate::optim::Sgd::new(1e3, 0.0, false).unwrap();
        let dir = std::env::temp_dir().join(format!("pare-diverge-{}", std::process::id()));
        let mut saver = Saver {
            dir: dir.clone(),
            steps: vec![],
            epochs: 0,
        };
        let cfg = FitConfig {
            epochs: 50,
            batch_size: 8,
            verbose: false,
            ..Default::default()
        };
        let err = Fit::new(cfg)
            .callback(&mut saver)
            .run(&mut model, &mut sgd, x.view(), &y)
            .unwrap_err();
        let TensorError::Diverged {
            what,
            value,
            epoch,
            step,
        } = &err
        else {
            panic!("{err}")
        };
        assert!(!value.is_finite(), "{err}");
        assert!(
            what == "the loss" || what.starts_with("the gradient of "),
            "{err}"
        );
        // The diverged step reached neither the optimizer nor the callbacks.
        assert_eq!(sgd.iterations(), *step);
        assert_eq!(saver.steps.last().map_or(0, |s| s + 1), *step);
        assert!(!dir.join(format!("s{step}")).exists());
        // Epochs count from 1, as the progress lines print them.
        assert_eq!(saver.epochs + 1, *epoch);
        assert_eq!(*epoch as u64, step / 8 + 1, "8 steps per epoch");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("epoch {epoch}, step {step}")),
            "{msg}"
        );
        assert!(
            model
                .params()
                .iter()
                .all(|p| p.value.iter().all(|v| v.is_finite()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_fit_setting_is_checked_and_named() {
        let ok = FitConfig::default();
        assert!(ok.validate().is_ok());
        for (cfg, text) in [
            (
                FitConfig {
                    batch_size: 0,
                    ..ok.clone()
                },
                "batch_size = 0: must be >= 1",
            ),
            (
                FitConfig {
                    epochs: 0,
                    ..ok.clone()
                },
                "epochs = 0: must be >= 1",
            ),
            (
                FitConfig {
                    threads: Some(0),
                    ..ok.clone()
                },
                "threads = 0",
            ),
            (
                FitConfig {
                    validation_split: 1.0,
                    ..ok.clone()
                },
                "validation_split = 1: must be in [0, 1)",
            ),
            (
                FitConfig {
                    validation_split: f32::NAN,
                    ..ok.clone()
                },
                "validation_split is NaN: must be finite and in [0, 1)",
            ),
        ] {
            let err = cfg.validate().unwrap_err();
            assert!(matches!(err, TensorError::BadHyperParameter { .. }));
            assert!(err.to_string().starts_with(text), "{err} vs {text}");
        }
        let inf = crate::optim::Sgd::new(f32::INFINITY, 0.0, false).unwrap_err();
        assert_eq!(
            inf.to_string(),
            "learning_rate is infinite: must be finite and > 0"
        );
    }

    #[test]
    fn clipping_caps_the_global_norm_and_keeps_the_direction() {
        // Gradients [3, 4] and [12]: global norm sqrt(9 + 16 + 144) = 13. Clipped to 6.5 they
        // halve; clipped to 20 they stay.
        let a = Param::new("a", ndarray::arr1(&[1.0f32, 1.0]).into_dyn());
        let b = Param::new("b", ndarray::arr1(&[1.0f32]).into_dyn());
        let grads = || {
            let mut g = Graph::new();
            let (av, bv) = (g.param(&a), g.param(&b));
            let ca = g.constant(ndarray::arr1(&[3.0f32, 4.0]).into_dyn());
            let cb = g.constant(ndarray::arr1(&[12.0f32]).into_dyn());
            let (pa, pb) = (g.mul(av, ca), g.mul(bv, cb));
            let (sa, sb) = (g.sum(pa), g.sum(pb));
            let loss = g.add(sa, sb);
            g.backward(loss)
        };
        let mut g = grads();
        assert_eq!(clip_by_global_norm(&mut g, 6.5), 13.0);
        assert_eq!(g.get("a").unwrap().as_slice().unwrap(), &[1.5, 2.0]);
        assert_eq!(g.get("b").unwrap().as_slice().unwrap(), &[6.0]);
        let mut g = grads();
        assert_eq!(clip_by_global_norm(&mut g, 20.0), 13.0);
        assert_eq!(g.get("b").unwrap().as_slice().unwrap(), &[12.0]);
        // In fit: a tiny cap keeps every SGD step to lr · cap in global norm.
        let (x, y) = toy_data(16, 2);
        let mut model = small_cnn(0);
        let before: Vec<Param> = model.params().into_iter().cloned().collect();
        let mut sgd = crate::optim::Sgd::new(1.0, 0.0, false).unwrap();
        let cfg = FitConfig {
            epochs: 1,
            batch_size: 16,
            verbose: false,
            clip_global_norm: Some(1e-3),
            ..Default::default()
        };
        Fit::new(cfg)
            .run(&mut model, &mut sgd, x.view(), &y)
            .unwrap();
        let moved: f64 = model
            .params()
            .iter()
            .zip(&before)
            .flat_map(|(p, q)| p.value.iter().zip(q.value.iter()))
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        approx::assert_abs_diff_eq!(moved, 1e-3, epsilon = 1e-5);
        let bad = FitConfig {
            clip_global_norm: Some(f32::INFINITY),
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "clip_global_norm is infinite: must be finite and > 0"
        );
    }

    #[test]
    fn augmented_training_is_reproducible_and_changes_the_batches() {
        let (x, y) = toy_data(32, 3);
        let run = |aug: Augmentation| {
            let mut model = small_cnn(0);
            let mut adam = Adam::new(AdamConfig::default()).unwrap();
            let cfg = FitConfig {
                epochs: 1,
                batch_size: 16,
                verbose: false,
                augmentation: aug,
                ..Default::default()
            };
            Fit::new(cfg)
                .run(&mut model, &mut adam, x.view(), &y)
                .unwrap();
            model
        };
        let aug = Augmentation {
            pad_crop: 2,
            horizontal_flip: true,
        };
        assert_eq!(run(aug).params(), run(aug).params());
        assert_ne!(run(aug).params(), run(Augmentation::default()).params());
    }

    #[test]
    fn callbacks_see_every_step_in_order() {
        #[derive(Default)]
        struct Log(Vec<String>);
        impl Callback for Log {
            fn on_train_begin(&mut self, _: &mut Sequential) -> Result<()> {
                self.0.push("begin".into());
                Ok(())
            }
            fn on_batch_begin(&mut self, step: u64, _: &mut Sequential) -> Result<()> {
                self.0.push(format!("b{step}"));
                Ok(())
            }
            fn on_batch_end(&mut self, step: u64, _: &mut Sequential) -> Result<()> {
                self.0.push(format!("e{step}"));
                Ok(())
            }
            fn on_epoch_end(&mut self, log: &EpochLog, _: &mut Sequential) -> Result<()> {
                self.0.push(format!("epoch{}", log.epoch));
                Ok(())
            }
        }
        let (x, y) = toy_data(6, 4);
        let mut model = small_cnn(0);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let mut log = Log::default();
        let cfg = FitConfig {
            epochs: 2,
            batch_size: 4,
            verbose: false,
            ..Default::default()
        };
        Fit::new(cfg)
            .callback(&mut log)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        assert_eq!(
            log.0,
            [
                "begin", "b0", "e0", "b1", "e1", "epoch1", "b2", "e2", "b3", "e3", "epoch2"
            ]
        );
    }
}
