//! Pruning during training: TFMOT's `prune_low_magnitude` wrapper and `UpdatePruningStep`
//! callback in one [`Callback`] for pare-tensor's `Fit`.
//!
//! # Step semantics (TFMOT, `sparsity/keras/pruning_callbacks.py`, `pruning_wrapper.py`,
//! `pruning_impl.py`)
//!
//! TFMOT's callback sets every wrapper's `pruning_step` to the optimizer's iteration count at
//! `on_train_batch_begin`; the wrapper's training call then runs `conditional_mask_update`
//! (recompute the masks from the current weights when `schedule(step)` says so) and
//! `weight_mask_op` (`w ← w · mask`) before the layer's forward pass. pare's `Fit` hands
//! callbacks the same count (the optimizer's iterations before the step, from 0, continuing
//! across `fit` calls with the same optimizer), so [`PruneCallback`] does in
//! [`Callback::on_batch_begin`] exactly what the wrapper does at the start of its call.
//!
//! Two deliberate differences, neither of which changes a forward pass:
//!
//! * the mask also enters each step's graph ([`Graph::set_mask`]), so pruned weights get a zero
//!   gradient, and the weights are masked again after the optimizer's update
//!   ([`Callback::on_batch_end`]): Adam's moments from before a weight was pruned would
//!   otherwise still move it. TFMOT lets the update move pruned weights and zeroes them again at
//!   the next call (and at each epoch's end), so the weights it saves are masked only because of
//!   that epoch-end pass; here they are zero after every step.
//! * when masks are recomputed, weights pruned earlier are exactly zero here, while in TFMOT they
//!   carry one optimizer update (of the order of the learning rate) and could in principle win
//!   back a place. With increasing sparsity the chosen masks coincide unless such an update
//!   outgrows a kept weight.
//!
//! Which parameters: by default every `Conv2d` and `Dense` kernel, never a bias (TFMOT's
//! `prunable_layer` defaults). With [`MaskKind::Channel`] the default leaves out the last
//! `Conv2d`/`Dense` layer (its channels are the model's outputs), and a pruned channel's bias
//! entry is masked with it, so the channel's output is exactly zero and
//! [`crate::structured::remove_dead_channels`] can cut it out.

use ndarray::{ArrayD, Axis};
use pare_tensor::nn::Layer;
use pare_tensor::train::Callback;
use pare_tensor::{Graph, Sequential};

use crate::error::{PruneError, Result};
use crate::mask::{MaskKind, apply_mask, compute_masks};
use crate::schedule::PruningSchedule;

/// One mask recomputation: at which step and to which target sparsity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskUpdate {
    /// The training step (optimizer iterations before the step).
    pub step: i64,
    /// The schedule's sparsity at that step.
    pub sparsity: f32,
}

/// How sparse one parameter is.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSparsity {
    /// Parameter name, e.g. `dense.kernel`.
    pub name: String,
    /// Number of elements.
    pub total: usize,
    /// Elements equal to zero (either sign).
    pub zeros: usize,
    /// `zeros / total` (0 for an empty tensor).
    pub sparsity: f32,
}

/// The sparsity of every parameter of `model`, in layer order.
pub fn sparsity_report(model: &Sequential) -> Vec<LayerSparsity> {
    model
        .params()
        .into_iter()
        .map(|p| {
            let total = p.value.len();
            let zeros = p.value.iter().filter(|&&v| v == 0.0).count();
            let sparsity = if total == 0 {
                0.0
            } else {
                (zeros as f64 / total as f64) as f32
            };
            LayerSparsity {
                name: p.name.clone(),
                total,
                zeros,
                sparsity,
            }
        })
        .collect()
}

/// The kernels TFMOT prunes by default: those of every `Conv2d` and `Dense` layer, in layer
/// order.
pub fn prunable_params(model: &Sequential) -> Vec<String> {
    weighted_layers(model)
        .map(|(_, kernel, _)| kernel.to_owned())
        .collect()
}

/// The name of the BatchNorm layer that holds parameter `name`, if one does.
fn batch_norm_of<'m>(model: &'m Sequential, name: &str) -> Option<&'m str> {
    model.layers.iter().find_map(|l| match l {
        Layer::BatchNorm(b)
            if [&b.gamma, &b.beta, &b.moving_mean, &b.moving_variance]
                .iter()
                .any(|p| p.name == name) =>
        {
            Some(b.name.as_str())
        }
        _ => None,
    })
}

/// `(layer name, kernel name, bias name)` of every `Conv2d` and `Dense` layer; no bias name for
/// a layer built with `use_bias(false)` (its zero bias is not a parameter of the model).
fn weighted_layers(model: &Sequential) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
    model.layers.iter().filter_map(|l| match l {
        Layer::Dense(d) => Some((
            d.name.as_str(),
            d.kernel.name.as_str(),
            d.use_bias.then_some(d.bias.name.as_str()),
        )),
        Layer::Conv2d(c) => Some((
            c.name.as_str(),
            c.kernel.name.as_str(),
            c.use_bias.then_some(c.bias.name.as_str()),
        )),
        _ => None,
    })
}

/// A parameter being pruned, and (structured pruning only) the bias masked with its channels.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    kernel: String,
    bias: Option<String>,
}

/// Prunes a model while it trains: masks recomputed on the schedule's steps, applied to the
/// forward pass, the gradient and the weights. See the [module documentation](self) for the
/// exact semantics.
///
/// ```
/// use ndarray::Array4;
/// use pare_prune::{ConstantSparsity, PruneCallback, sparsity_report};
/// use pare_tensor::{models, optim::{Adam, AdamConfig}, train::{Fit, FitConfig}};
///
/// let mut model = models::small_cnn(0);
/// let x = Array4::<f32>::from_shape_fn((16, 28, 28, 1), |(i, r, c, _)| ((i + r * c) % 7) as f32 / 7.0);
/// let y: Vec<usize> = (0..16).map(|i| i % 10).collect();
///
/// // 80 % of every kernel pruned from step 0, masks refreshed every 2 steps.
/// let mut prune = PruneCallback::new(ConstantSparsity::new(0.8, 0, -1, 2)?);
/// let mut adam = Adam::new(AdamConfig::default())?;
/// let cfg = FitConfig { epochs: 2, batch_size: 8, verbose: false, ..Default::default() };
/// Fit::new(cfg).callback(&mut prune).run(&mut model, &mut adam, x.view().into_dyn(), &y)?;
///
/// assert_eq!(prune.updates().len(), 2); // steps 0 and 2 of 0..4
/// let dense = sparsity_report(&model).into_iter().find(|l| l.name == "dense.kernel").unwrap();
/// assert_eq!(dense.zeros, 20_280 - 4_056); // exactly round(20 280 · 0.2) weights left
/// let plain = prune.strip(&model)?; // a plain Sequential, zeros and all
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PruneCallback {
    schedule: Box<dyn PruningSchedule + Send + Sync>,
    kind: MaskKind,
    selection: Option<Vec<String>>,
    targets: Vec<Target>,
    masks: Vec<(String, ArrayD<f32>)>,
    updates: Vec<MaskUpdate>,
}

impl std::fmt::Debug for PruneCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneCallback")
            .field("kind", &self.kind)
            .field("selection", &self.selection)
            .field(
                "masks",
                &self.masks.iter().map(|m| &m.0).collect::<Vec<_>>(),
            )
            .field("updates", &self.updates)
            .finish()
    }
}

impl PruneCallback {
    /// Per-tensor magnitude pruning of the default parameters (every `Conv2d`/`Dense` kernel)
    /// on `schedule`.
    pub fn new(schedule: impl PruningSchedule + Send + Sync + 'static) -> PruneCallback {
        PruneCallback {
            schedule: Box::new(schedule),
            kind: MaskKind::Magnitude,
            selection: None,
            targets: Vec::new(),
            masks: Vec::new(),
            updates: Vec::new(),
        }
    }

    /// Prunes exactly these parameters (checked against the model when training starts).
    pub fn with_params<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.selection = Some(names.into_iter().map(Into::into).collect());
        self.targets.clear();
        self
    }

    /// Chooses the mask: per-tensor magnitude (default), global magnitude, block, N:M or whole
    /// channels.
    pub fn with_mask_kind(mut self, kind: MaskKind) -> Self {
        self.kind = kind;
        self.targets.clear();
        self
    }

    /// The mask kind.
    pub fn mask_kind(&self) -> MaskKind {
        self.kind
    }

    /// The current masks by parameter name (empty before the first update). With
    /// [`MaskKind::Channel`] the masked biases are listed too.
    pub fn masks(&self) -> &[(String, ArrayD<f32>)] {
        &self.masks
    }

    /// The current mask of one parameter.
    pub fn mask(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.masks.iter().find(|(n, _)| n == name).map(|(_, m)| m)
    }

    /// Every mask recomputation so far, in order.
    pub fn updates(&self) -> &[MaskUpdate] {
        &self.updates
    }

    /// The parameters being pruned, once resolved against a model (after
    /// [`PruneCallback::prepare`] or the start of training).
    pub fn pruned_params(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.kernel.as_str()).collect()
    }

    /// Resolves and checks which parameters to prune in `model`. Training calls it; call it
    /// yourself to drive the callback by hand.
    ///
    /// # Errors
    /// [`PruneError::UnknownParam`] for a selected name the model does not have;
    /// [`PruneError::DuplicateName`] for a name selected twice; [`PruneError::Unsupported`] for
    /// a BatchNorm parameter (never pruned);
    /// [`PruneError::ShapeMismatch`] if existing masks no longer fit the model.
    pub fn prepare(&mut self, model: &Sequential) -> Result<()> {
        let channel = matches!(self.kind, MaskKind::Channel { .. });
        let names = match &self.selection {
            Some(names) => names.clone(),
            None if channel => {
                let mut all = prunable_params(model);
                all.pop(); // the output layer's channels are the model's outputs
                all
            }
            None => prunable_params(model),
        };
        let mut targets = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(PruneError::DuplicateName { name: name.clone() });
            }
            if let Some(bn) = batch_norm_of(model, name) {
                return Err(PruneError::Unsupported {
                    layer: bn.to_owned(),
                    reason: format!(
                        "{name:?}: BatchNorm parameters are never pruned (a zero scale or \
                         variance changes what the layer computes; fold it into the layer \
                         before instead)"
                    ),
                });
            }
            if model.param(name).is_none() {
                return Err(PruneError::UnknownParam { name: name.clone() });
            }
            let bias = if channel {
                weighted_layers(model)
                    .find(|(_, k, _)| k == name)
                    .and_then(|(_, _, b)| b.map(str::to_owned))
            } else {
                None
            };
            targets.push(Target {
                kernel: name.clone(),
                bias,
            });
        }
        for (name, mask) in &self.masks {
            let p = model
                .param(name)
                .ok_or_else(|| PruneError::UnknownParam { name: name.clone() })?;
            if p.value.shape() != mask.shape() {
                return Err(PruneError::ShapeMismatch {
                    op: "PruneCallback: mask from an earlier fit",
                    expected: p.value.shape().to_vec(),
                    found: mask.shape().to_vec(),
                }
                .in_tensor(name));
            }
        }
        self.targets = targets;
        Ok(())
    }

    /// What happens at the start of each training step: if the schedule prunes at `step`, the
    /// masks are recomputed from the current weights at the schedule's sparsity; then the
    /// weights are multiplied by the masks. Returns whether the masks were recomputed.
    ///
    /// # Errors
    /// As [`PruneCallback::prepare`] (run first if needed), and the mask's errors (e.g.
    /// [`PruneError::NonFinite`] for a diverged weight, [`PruneError::BadRank`] for a block mask
    /// on a conv kernel), wrapped in [`PruneError::InTensor`].
    pub fn update(&mut self, step: i64, model: &mut Sequential) -> Result<bool> {
        if self.targets.is_empty() {
            self.prepare(model)?;
        }
        let (prune, sparsity) = self.schedule.at(step);
        if prune {
            self.masks = self.compute(model, sparsity)?;
            self.updates.push(MaskUpdate { step, sparsity });
        }
        self.apply(model)?;
        Ok(prune)
    }

    fn compute(&self, model: &Sequential, sparsity: f32) -> Result<Vec<(String, ArrayD<f32>)>> {
        let mut views = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            let p = model
                .param(&t.kernel)
                .ok_or_else(|| PruneError::UnknownParam {
                    name: t.kernel.clone(),
                })?;
            views.push((t.kernel.as_str(), p.value.view()));
        }
        let mut masks = compute_masks(&views, sparsity, self.kind)?;
        let mut bias_masks = Vec::new();
        for (t, (_, kernel_mask)) in self.targets.iter().zip(&masks) {
            let Some(bias) = &t.bias else { continue };
            let last = Axis(kernel_mask.ndim().saturating_sub(1));
            let channels: Vec<f32> = kernel_mask
                .axis_iter(last)
                .map(|c| {
                    if c.iter().any(|&m| m != 0.0) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let len = channels.len();
            let mask = ArrayD::from_shape_vec(ndarray::IxDyn(&[len]), channels)
                .expect("PruneCallback: a channel mask has one value per channel");
            bias_masks.push((bias.clone(), mask));
        }
        masks.extend(bias_masks);
        Ok(masks)
    }

    /// Multiplies the weights by the current masks (writing `+0.0`).
    ///
    /// # Errors
    /// [`PruneError::UnknownParam`] / [`PruneError::ShapeMismatch`] (in
    /// [`PruneError::InTensor`]) if the model no longer has the masked parameters.
    pub fn apply(&self, model: &mut Sequential) -> Result<()> {
        for (name, mask) in &self.masks {
            let p = model
                .param_mut(name)
                .ok_or_else(|| PruneError::UnknownParam { name: name.clone() })?;
            apply_mask(p.value.view_mut(), mask.view()).map_err(|e| e.in_tensor(name))?;
        }
        Ok(())
    }

    /// [`strip`](crate::strip::strip) with this callback's masks: a plain copy of `model`.
    ///
    /// # Errors
    /// As [`crate::strip::strip`].
    pub fn strip(&self, model: &Sequential) -> Result<Sequential> {
        crate::strip::strip(model, &self.masks)
    }
}

fn step_i64(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

impl Callback for PruneCallback {
    fn on_train_begin(&mut self, model: &mut Sequential) -> pare_tensor::Result<()> {
        self.prepare(model)?;
        Ok(())
    }

    fn on_batch_begin(&mut self, step: u64, model: &mut Sequential) -> pare_tensor::Result<()> {
        self.update(step_i64(step), model)?;
        Ok(())
    }

    fn prepare_graph(&self, graph: &mut Graph) -> pare_tensor::Result<()> {
        for (name, mask) in &self.masks {
            graph.set_mask(name, mask.clone());
        }
        Ok(())
    }

    fn on_batch_end(&mut self, _step: u64, model: &mut Sequential) -> pare_tensor::Result<()> {
        self.apply(model)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{Norm, kept_count};
    use crate::schedule::{ConstantSparsity, PolynomialDecay};
    use crate::structured::remove_dead_channels;
    use approx::assert_abs_diff_eq;
    use ndarray::Array4;
    use pare_tensor::models::{small_cnn, teacher_cnn};
    use pare_tensor::optim::{Adam, AdamConfig};
    use pare_tensor::train::{Fit, FitConfig, predict};
    use pare_tensor::{Param, TensorError};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn data(n: usize, seed: u64) -> (ArrayD<f32>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let y: Vec<usize> = (0..n).map(|i| i % 10).collect();
        let x = Array4::from_shape_fn((n, 28, 28, 1), |(i, r, c, _)| {
            // A class-dependent bright band plus noise: learnable, so weights keep moving.
            let band = (r / 3) % 10 == y[i] && c > 4;
            if band { 0.8 } else { 0.0 }
        })
        .mapv(|v: f32| v + rng.random_range(0.0..0.2))
        .into_dyn();
        (x, y)
    }

    fn cfg(epochs: usize) -> FitConfig {
        FitConfig {
            epochs,
            batch_size: 16,
            verbose: false,
            threads: Some(2), // two shard graphs per step, both masked
            ..Default::default()
        }
    }

    /// Runs the prune callback and checks, after every optimizer step, that every masked weight
    /// is exactly +0.0 and that unmasked weights still train.
    struct Checked {
        prune: PruneCallback,
        previous: Option<Vec<Param>>,
        steps: usize,
        moved: usize,
    }

    impl Callback for Checked {
        fn on_train_begin(&mut self, m: &mut Sequential) -> pare_tensor::Result<()> {
            self.prune.on_train_begin(m)
        }
        fn on_batch_begin(&mut self, step: u64, m: &mut Sequential) -> pare_tensor::Result<()> {
            self.prune.on_batch_begin(step, m)
        }
        fn prepare_graph(&self, g: &mut Graph) -> pare_tensor::Result<()> {
            self.prune.prepare_graph(g)
        }
        fn on_batch_end(&mut self, step: u64, m: &mut Sequential) -> pare_tensor::Result<()> {
            self.prune.on_batch_end(step, m)?;
            if self.prune.masks().is_empty() {
                return Ok(()); // before the first update (step 6)
            }
            for (name, mask) in self.prune.masks() {
                let w = &m.param(name).unwrap().value;
                for (v, k) in w.iter().zip(mask) {
                    if *k == 0.0 {
                        assert_eq!(v.to_bits(), 0, "{name} at step {step}");
                    }
                }
                if let Some(prev) = &self.previous {
                    let before = &prev.iter().find(|p| &p.name == name).unwrap().value;
                    self.moved += w
                        .iter()
                        .zip(before)
                        .zip(mask)
                        .filter(|((a, b), k)| **k != 0.0 && a != b)
                        .count();
                }
            }
            self.previous = Some(m.params().into_iter().cloned().collect());
            self.steps += 1;
            Ok(())
        }
    }

    #[test]
    fn masked_weights_stay_exactly_zero_through_adam_steps() {
        let (x, y) = data(64, 1);
        let mut model = small_cnn(0);
        // Train unpruned first so Adam's moments are non-zero everywhere when pruning starts.
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        Fit::new(cfg(1))
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        let sched = ConstantSparsity::new(0.7, 0, -1, 3).unwrap();
        let mut checked = Checked {
            prune: PruneCallback::new(sched),
            previous: None,
            steps: 0,
            moved: 0,
        };
        Fit::new(cfg(2))
            .callback(&mut checked)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        assert_eq!(checked.steps, 6); // steps 6..12 of Adam's count
        assert!(checked.moved > 1000, "unmasked weights barely trained");
        // Steps continue from Adam's count, 4..12: updates at 6 and 9 only.
        let steps: Vec<i64> = checked.prune.updates().iter().map(|u| u.step).collect();
        assert_eq!(steps, vec![6, 9]);
        assert_eq!(
            checked.prune.pruned_params(),
            vec!["conv2d.kernel", "dense.kernel"]
        );
        for l in sparsity_report(&model) {
            match l.name.as_str() {
                "conv2d.kernel" | "dense.kernel" => {
                    assert_eq!(
                        l.total - l.zeros,
                        kept_count(l.total, 0.7).unwrap(),
                        "{}",
                        l.name
                    )
                }
                _ => assert!(l.sparsity < 0.5, "{l:?}"),
            }
        }
    }

    #[test]
    fn graph_masks_zero_the_gradient() {
        let mut model = small_cnn(2);
        let mut prune = PruneCallback::new(ConstantSparsity::new(0.5, 0, -1, 1).unwrap());
        assert!(prune.update(0, &mut model).unwrap());
        let (x, y) = data(4, 0);
        let mut g = Graph::new();
        prune.prepare_graph(&mut g).unwrap();
        let xv = g.constant(x);
        let logits = model.forward(&mut g, xv);
        let loss = g.softmax_cross_entropy(logits, &y);
        let grads = g.backward(loss);
        for name in ["conv2d.kernel", "dense.kernel"] {
            let (grad, mask) = (grads.get(name).unwrap(), prune.mask(name).unwrap());
            let kept_nonzero = grad
                .iter()
                .zip(mask)
                .filter(|(g, m)| **m != 0.0 && **g != 0.0);
            assert!(kept_nonzero.count() > 0);
            assert!(
                grad.iter().zip(mask).all(|(g, m)| *m != 0.0 || *g == 0.0),
                "{name}"
            );
        }
        // No mask on the bias: its gradient is dense.
        assert!(prune.mask("dense.bias").is_none());
    }

    #[test]
    fn polynomial_schedule_steps_hit_and_final_sparsity_exact() {
        let (x, y) = data(80, 2); // 5 steps per epoch
        let mut model = small_cnn(1);
        let sched = PolynomialDecay::new(0.5, 0.8, 2, 12, 3.0, 5).unwrap();
        let mut prune = PruneCallback::new(sched);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        Fit::new(cfg(3))
            .callback(&mut prune)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        let got: Vec<(i64, f32)> = prune
            .updates()
            .iter()
            .map(|u| (u.step, u.sparsity))
            .collect();
        assert_eq!(got.len(), 3);
        for ((step, s), want) in got.iter().zip([2, 7, 12]) {
            assert_eq!(*step, want);
            assert_eq!(*s, sched.sparsity(want));
        }
        // p = 0.5 at step 7: 0.8 - 0.3 · 0.125.
        assert_abs_diff_eq!(got[1].1, 0.7625, epsilon = 1e-6);
        assert_abs_diff_eq!(got[2].1, 0.8, epsilon = 1e-7);
        let dense = &model.param("dense.kernel").unwrap().value;
        let nonzero = dense.iter().filter(|v| **v != 0.0).count();
        assert_eq!(nonzero, kept_count(dense.len(), 0.8).unwrap());
        // A second fit with the same optimizer continues at step 15: past end_step, no update.
        Fit::new(cfg(1))
            .callback(&mut prune)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        assert_eq!(prune.updates().len(), 3);
        let still = model
            .param("dense.kernel")
            .unwrap()
            .value
            .iter()
            .filter(|v| **v != 0.0)
            .count();
        assert_eq!(still, nonzero);
        // A fresh optimizer restarts at step 0, as TFMOT (which reads optimizer.iterations).
        let mut fresh = Adam::new(AdamConfig::default()).unwrap();
        Fit::new(cfg(1))
            .callback(&mut prune)
            .run(&mut model, &mut fresh, x.view(), &y)
            .unwrap();
        assert_eq!(prune.updates().last().unwrap().step, 2);
    }

    #[test]
    fn begin_step_later_means_no_masks_before_it() {
        let mut model = small_cnn(0);
        let before = model.params().into_iter().cloned().collect::<Vec<_>>();
        let mut prune = PruneCallback::new(ConstantSparsity::new(0.9, 5, -1, 5).unwrap());
        for step in 0..5 {
            assert!(!prune.update(step, &mut model).unwrap());
        }
        assert!(prune.masks().is_empty());
        assert_eq!(
            model.params().into_iter().cloned().collect::<Vec<_>>(),
            before
        );
        let mut g = Graph::new();
        prune.prepare_graph(&mut g).unwrap();
        assert!(prune.update(5, &mut model).unwrap());
        assert!(sparsity_report(&model)[2].sparsity > 0.89);
    }

    #[test]
    fn global_and_nm_kinds() {
        let mut model = small_cnn(4);
        let sched = ConstantSparsity::new(0.8, 0, -1, 1).unwrap();
        let mut global = PruneCallback::new(sched).with_mask_kind(MaskKind::GlobalMagnitude);
        global.update(0, &mut model).unwrap();
        let total: usize = 108 + 20_280;
        let kept: usize = sparsity_report(&model)
            .iter()
            .filter(|l| l.name.ends_with(".kernel"))
            .map(|l| l.total - l.zeros)
            .sum();
        assert_eq!(kept, kept_count(total, 0.8).unwrap());
        let mut nm = PruneCallback::new(sched)
            .with_mask_kind(MaskKind::Nm { n: 2, m: 4 })
            .with_params(["dense.kernel"]);
        let mut model = small_cnn(4);
        nm.update(0, &mut model).unwrap();
        let r = sparsity_report(&model);
        assert_abs_diff_eq!(r[2].sparsity, 0.5, epsilon = 1e-6);
        assert_eq!(r[0].zeros, 0); // conv kernel not selected
    }

    #[test]
    fn channel_pruning_masks_biases_and_removes_cleanly() {
        let (x, y) = data(48, 3);
        let mut model = teacher_cnn(8, 16, 0);
        let sched = ConstantSparsity::new(0.5, 0, -1, 2).unwrap();
        let mut prune =
            PruneCallback::new(sched).with_mask_kind(MaskKind::Channel { norm: Norm::L2 });
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        Fit::new(cfg(1))
            .callback(&mut prune)
            .run(&mut model, &mut adam, x.view(), &y)
            .unwrap();
        // The output layer is left alone by default; biases are masked with their channels.
        assert_eq!(
            prune.pruned_params(),
            vec!["conv2d.kernel", "conv2d_1.kernel"]
        );
        let names: Vec<&str> = prune.masks().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv2d.kernel",
                "conv2d_1.kernel",
                "conv2d.bias",
                "conv2d_1.bias"
            ]
        );
        let (smaller, kept) = remove_dead_channels(&model).unwrap();
        assert_eq!(
            kept.iter().map(|(_, k)| k.len()).collect::<Vec<_>>(),
            vec![4, 8]
        );
        assert!(smaller.num_params() < model.num_params() / 2);
        let (want, got) = (
            predict(&model, x.view(), 64).unwrap(),
            predict(&smaller, x.view(), 64).unwrap(),
        );
        let d = want
            .iter()
            .zip(&got)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert_abs_diff_eq!(d, 0.0, epsilon = 1e-4);
    }

    #[test]
    fn channel_pruning_of_bias_free_convs_masks_kernels_only() {
        // ResNets write their convs without bias (BatchNorm's beta takes its place): there is no
        // bias to mask with the channel, and asking for one was an UnknownParam error.
        let mut model = pare_tensor::models::tiny_residual(10, 0);
        let sched = ConstantSparsity::new(0.5, 0, -1, 1).unwrap();
        let mut prune =
            PruneCallback::new(sched).with_mask_kind(MaskKind::Channel { norm: Norm::L2 });
        assert!(prune.update(0, &mut model).unwrap());
        let names: Vec<&str> = prune.masks().iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.is_empty());
        assert!(names.iter().all(|n| n.ends_with(".kernel")), "{names:?}");
        for (name, _) in prune.masks() {
            let w = &model.param(name).unwrap().value;
            let last = Axis(w.ndim() - 1);
            let dead = w
                .axis_iter(last)
                .filter(|c| c.iter().all(|&v| v == 0.0))
                .count();
            assert_eq!(dead, w.shape()[w.ndim() - 1] / 2, "{name}");
        }
    }

    #[test]
    fn errors_reach_fit_as_callback_errors() {
        let (x, y) = data(16, 0);
        let sched = ConstantSparsity::new(0.5, 0, -1, 1).unwrap();
        let run = |prune: &mut PruneCallback| {
            let mut model = small_cnn(0);
            let mut adam = Adam::new(AdamConfig::default()).unwrap();
            Fit::new(cfg(1))
                .callback(prune)
                .run(&mut model, &mut adam, x.view(), &y)
                .unwrap_err()
        };
        let err = run(&mut PruneCallback::new(sched).with_params(["dense.kernal"]));
        match &err {
            TensorError::Callback(e) => {
                let e = e.downcast_ref::<PruneError>().unwrap();
                assert!(matches!(e, PruneError::UnknownParam { name } if name == "dense.kernal"));
            }
            other => panic!("{other:?}"),
        }
        let err = run(&mut PruneCallback::new(sched).with_params(["dense.kernel", "dense.kernel"]));
        assert!(err.to_string().contains("more than once"), "{err}");
        // A block mask cannot take the rank-4 conv kernel: the error names it.
        let block = MaskKind::Block {
            shape: [1, 4],
            pooling: crate::mask::Pooling::Avg,
        };
        let err = run(&mut PruneCallback::new(sched).with_mask_kind(block));
        assert!(err.to_string().contains("conv2d.kernel"), "{err}");
        // Only the dense kernel: fine.
        let mut ok = PruneCallback::new(sched)
            .with_mask_kind(block)
            .with_params(["dense.kernel"]);
        let mut model = small_cnn(0);
        ok.update(0, &mut model).unwrap();
        // Masks from one model do not fit another.
        let mut other = teacher_cnn(4, 8, 0);
        assert!(ok.prepare(&other).is_err());
        assert!(ok.apply(&mut other).is_err());
        // A diverged weight is an error, not a panic.
        let mut nan = small_cnn(0);
        nan.param_mut("dense.kernel").unwrap().value[[3, 3]] = f32::NAN;
        let mut p = PruneCallback::new(sched);
        assert!(matches!(
            p.update(0, &mut nan),
            Err(PruneError::InTensor { .. })
        ));
    }

    #[test]
    fn strip_through_the_callback() {
        let mut model = small_cnn(5);
        let mut prune = PruneCallback::new(ConstantSparsity::new(0.6, 0, -1, 1).unwrap());
        prune.update(0, &mut model).unwrap();
        // Simulate an optimizer touching pruned weights: strip zeroes them again in the copy.
        model
            .param_mut("dense.kernel")
            .unwrap()
            .value
            .mapv_inplace(|v| v + 1e-3);
        let stripped = prune.strip(&model).unwrap();
        let s = sparsity_report(&stripped);
        assert_eq!(s[2].total - s[2].zeros, kept_count(20_280, 0.6).unwrap());
        assert_eq!(sparsity_report(&model)[2].zeros, 0);
    }
}
