//! Optimizers with Keras' update rules and defaults.

use crate::error::{Result, TensorError};
use crate::graph::Grads;
use crate::nn::Param;
use ndarray::{ArrayD, Zip};
use std::collections::HashMap;

/// Updates parameters from their gradients, one step at a time.
pub trait Optimizer {
    /// Applies one update to every parameter that has a gradient in `grads`.
    fn step(&mut self, params: Vec<&mut Param>, grads: &Grads);
    /// Number of steps taken so far.
    fn iterations(&self) -> u64;
    /// The base learning rate (before any schedule built into the optimizer), for callbacks
    /// such as [`crate::callbacks::ReduceLROnPlateau`]; `None` if the optimizer has none it
    /// lets others change.
    fn learning_rate(&self) -> Option<f32> {
        None
    }
    /// Replaces the base learning rate (see [`Optimizer::learning_rate`]); the caller checks
    /// that `lr` is finite and > 0. Does nothing by default.
    fn set_learning_rate(&mut self, lr: f32) {
        let _ = lr;
    }
}

fn hp(name: &'static str, value: f32, ok: bool, reason: &'static str) -> Result<()> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(TensorError::BadHyperParameter {
            name,
            value: value.to_string(),
            reason,
        })
    }
}

/// How the learning rate changes with the step, as Keras' `LearningRateSchedule`s do: the rate
/// of update `t` (counting from 0, Keras' `optimizer.iterations` before the update) is
/// `learning_rate * factor(t)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LrSchedule {
    /// The same rate every step (Keras' plain float learning rate).
    #[default]
    Constant,
    /// Keras' `CosineDecay(initial, decay_steps, alpha)` without warm-up:
    /// `factor = (1 − alpha) · ½ (1 + cos(π · min(t, decay_steps) / decay_steps)) + alpha`.
    CosineDecay {
        /// Steps over which the rate falls to `alpha` times the initial rate.
        decay_steps: u64,
        /// Floor, as a fraction of the initial rate, in [0, 1].
        alpha: f32,
    },
    /// Keras' `ExponentialDecay`: `factor = decay_rate^(t / decay_steps)`, with the exponent
    /// floored when `staircase`.
    ExponentialDecay {
        /// Steps per factor of `decay_rate`.
        decay_steps: u64,
        /// Multiplier per `decay_steps`, in (0, 1].
        decay_rate: f32,
        /// Whether the rate drops in steps rather than continuously.
        staircase: bool,
    },
}

impl LrSchedule {
    /// Checks the schedule's parameters.
    pub fn validate(&self) -> Result<()> {
        let check_steps = |n: u64| hp("decay_steps", n as f32, n > 0, "must be > 0");
        match *self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::CosineDecay { decay_steps, alpha } => {
                check_steps(decay_steps)?;
                hp(
                    "alpha",
                    alpha,
                    (0.0..=1.0).contains(&alpha),
                    "must be in [0, 1]",
                )
            }
            LrSchedule::ExponentialDecay {
                decay_steps,
                decay_rate,
                ..
            } => {
                check_steps(decay_steps)?;
                hp(
                    "decay_rate",
                    decay_rate,
                    decay_rate > 0.0 && decay_rate <= 1.0,
                    "must be in (0, 1]",
                )
            }
        }
    }

    /// The multiplier of the initial rate at update `step` (0-based).
    pub fn factor(&self, step: u64) -> f32 {
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::CosineDecay { decay_steps, alpha } => {
                let p = step.min(decay_steps) as f64 / decay_steps as f64;
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
                ((1.0 - alpha as f64) * cosine + alpha as f64) as f32
            }
            LrSchedule::ExponentialDecay {
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut e = step as f64 / decay_steps as f64;
                if staircase {
                    e = e.floor();
                }
                (decay_rate as f64).powf(e) as f32
            }
        }
    }
}

/// Adam's hyper-parameters; `Default` is Keras': lr 1e-3 (constant), β 0.9 / 0.999, ε 1e-7.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Initial learning rate.
    pub learning_rate: f32,
    /// How the learning rate changes over the steps.
    pub schedule: LrSchedule,
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to the denominator (Keras' ε, applied as in Keras: outside the bias correction).
    pub epsilon: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            learning_rate: 1e-3,
            schedule: LrSchedule::Constant,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        }
    }
}

impl AdamConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        hp(
            "learning_rate",
            self.learning_rate,
            self.learning_rate > 0.0,
            "must be > 0",
        )?;
        hp(
            "beta_1",
            self.beta_1,
            (0.0..1.0).contains(&self.beta_1),
            "must be in [0, 1)",
        )?;
        hp(
            "beta_2",
            self.beta_2,
            (0.0..1.0).contains(&self.beta_2),
            "must be in [0, 1)",
        )?;
        hp("epsilon", self.epsilon, self.epsilon >= 0.0, "must be >= 0")?;
        self.schedule.validate()
    }
}

/// Adam as Keras implements it:
/// `m ← β1 m + (1 − β1) g`, `v ← β2 v + (1 − β2) g²`,
/// `w ← w − lr · sqrt(1 − β2^t) / (1 − β1^t) · m / (sqrt(v) + ε)`.
#[derive(Debug, Clone)]
pub struct Adam {
    cfg: AdamConfig,
    t: u64,
    state: HashMap<String, (ArrayD<f32>, ArrayD<f32>)>,
}

impl Adam {
    /// An Adam optimizer; an error if the configuration is out of range.
    pub fn new(cfg: AdamConfig) -> Result<Adam> {
        cfg.validate()?;
        Ok(Adam {
            cfg,
            t: 0,
            state: HashMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// The learning rate the next update will use.
    pub fn current_learning_rate(&self) -> f32 {
        self.cfg.learning_rate * self.cfg.schedule.factor(self.t)
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: Vec<&mut Param>, grads: &Grads) {
        let lr = self.current_learning_rate();
        self.t += 1;
        let c = self.cfg;
        let t = self.t as i32;
        let alpha = lr * (1.0 - c.beta_2.powi(t)).sqrt() / (1.0 - c.beta_1.powi(t));
        for p in params {
            let Some(g) = grads.get(&p.name) else {
                continue;
            };
            let (m, v) = self.state.entry(p.name.clone()).or_insert_with(|| {
                (
                    ArrayD::zeros(p.value.raw_dim()),
                    ArrayD::zeros(p.value.raw_dim()),
                )
            });
            Zip::from(&mut p.value)
                .and(m)
                .and(v)
                .and(g)
                .par_for_each(|w, m, v, &g| {
                    *m += (1.0 - c.beta_1) * (g - *m);
                    *v += (1.0 - c.beta_2) * (g * g - *v);
                    *w -= alpha * *m / (v.sqrt() + c.epsilon);
                });
        }
    }
    fn iterations(&self) -> u64 {
        self.t
    }
    fn learning_rate(&self) -> Option<f32> {
        Some(self.cfg.learning_rate)
    }
    fn set_learning_rate(&mut self, lr: f32) {
        self.cfg.learning_rate = lr;
    }
}

/// SGD with momentum as Keras does it: `u ← μ u − lr g`, `w ← w + u` (or `w ← w + μ u − lr g`
/// with Nesterov); with [`Sgd::weight_decay`], first `w ← w − lr · λ · w` (Keras' decoupled
/// `weight_decay`).
#[derive(Debug, Clone)]
pub struct Sgd {
    learning_rate: f32,
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
    t: u64,
    velocity: HashMap<String, ArrayD<f32>>,
}

impl Sgd {
    /// An SGD optimizer; learning rate > 0, momentum in [0, 1).
    pub fn new(learning_rate: f32, momentum: f32, nesterov: bool) -> Result<Sgd> {
        hp(
            "learning_rate",
            learning_rate,
            learning_rate > 0.0,
            "must be > 0",
        )?;
        hp(
            "momentum",
            momentum,
            (0.0..1.0).contains(&momentum),
            "must be in [0, 1)",
        )?;
        Ok(Sgd {
            learning_rate,
            momentum,
            nesterov,
            weight_decay: 0.0,
            t: 0,
            velocity: HashMap::new(),
        })
    }

    /// Decoupled weight decay `λ` (default 0), as Keras' `SGD(weight_decay=λ)`: each step
    /// first shrinks every weight by `lr · λ · w`, outside the momentum. (PyTorch's SGD
    /// `weight_decay` instead adds `λ w` to the gradient; without momentum the two agree.)
    ///
    /// # Errors
    /// `λ` negative or not finite.
    pub fn weight_decay(mut self, lambda: f32) -> Result<Sgd> {
        hp("weight_decay", lambda, lambda >= 0.0, "must be >= 0")?;
        self.weight_decay = lambda;
        Ok(self)
    }
}

/// `w ← w − lr · λ · w` on every parameter with a gradient: the decoupled weight decay of
/// Keras' optimizers (`_apply_weight_decay`) and of PyTorch's AdamW, applied before the
/// gradient update.
fn decay_weights(params: &mut [&mut Param], grads: &Grads, lr: f32, lambda: f32) {
    if lambda == 0.0 {
        return;
    }
    let keep = 1.0 - lr * lambda;
    for p in params.iter_mut() {
        if grads.get(&p.name).is_some() {
            p.value.mapv_inplace(|w| w * keep);
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, mut params: Vec<&mut Param>, grads: &Grads) {
        self.t += 1;
        let (lr, mu, nesterov) = (self.learning_rate, self.momentum, self.nesterov);
        decay_weights(&mut params, grads, lr, self.weight_decay);
        for p in params {
            let Some(g) = grads.get(&p.name) else {
                continue;
            };
            let u = self
                .velocity
                .entry(p.name.clone())
                .or_insert_with(|| ArrayD::zeros(p.value.raw_dim()));
            Zip::from(&mut p.value).and(u).and(g).for_each(|w, u, &g| {
                *u = mu * *u - lr * g;
                *w += if nesterov { mu * *u - lr * g } else { *u };
            });
        }
    }
    fn iterations(&self) -> u64 {
        self.t
    }
    fn learning_rate(&self) -> Option<f32> {
        Some(self.learning_rate)
    }
    fn set_learning_rate(&mut self, lr: f32) {
        self.learning_rate = lr;
    }
}

/// AdamW (Loshchilov & Hutter): Adam plus decoupled weight decay, as Keras' `AdamW` and
/// PyTorch's `torch.optim.AdamW` do it: each step first `w ← w − lr_t · λ · w` (with the step's
/// scheduled rate), then Keras' Adam update of [`Adam`].
///
/// Keras' defaults differ from PyTorch's (λ 0.004 / 0.01, ε 1e-7 / 1e-8); `AdamW::new` takes
/// Keras' [`AdamConfig`] and a λ, so either can be had.
#[derive(Debug, Clone)]
pub struct AdamW {
    adam: Adam,
    weight_decay: f32,
}

impl AdamW {
    /// Keras' default weight decay (`keras.optimizers.AdamW(weight_decay=0.004)`).
    pub const KERAS_WEIGHT_DECAY: f32 = 0.004;

    /// An AdamW optimizer with weight decay `weight_decay` (λ).
    ///
    /// # Errors
    /// An out-of-range `cfg`, or λ negative or not finite.
    pub fn new(cfg: AdamConfig, weight_decay: f32) -> Result<AdamW> {
        hp(
            "weight_decay",
            weight_decay,
            weight_decay >= 0.0,
            "must be >= 0",
        )?;
        Ok(AdamW {
            adam: Adam::new(cfg)?,
            weight_decay,
        })
    }

    /// The Adam part's configuration.
    pub fn config(&self) -> &AdamConfig {
        self.adam.config()
    }

    /// λ.
    pub fn weight_decay(&self) -> f32 {
        self.weight_decay
    }

    /// The learning rate the next update will use.
    pub fn current_learning_rate(&self) -> f32 {
        self.adam.current_learning_rate()
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, mut params: Vec<&mut Param>, grads: &Grads) {
        let lr = self.adam.current_learning_rate();
        decay_weights(&mut params, grads, lr, self.weight_decay);
        self.adam.step(params, grads);
    }
    fn iterations(&self) -> u64 {
        self.adam.iterations()
    }
    fn learning_rate(&self) -> Option<f32> {
        self.adam.learning_rate()
    }
    fn set_learning_rate(&mut self, lr: f32) {
        self.adam.set_learning_rate(lr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use approx::assert_abs_diff_eq;
    use ndarray::arr1;

    fn grads_for(p: &Param, g: &[f32]) -> Grads {
        // Build the gradient through the graph: loss = Σ g_i · w_i has gradient g.
        let mut graph = Graph::new();
        let w = graph.param(p);
        let c = graph.constant(arr1(g).into_dyn());
        let prod = graph.mul(w, c);
        let loss = graph.sum(prod);
        graph.backward(loss)
    }

    #[test]
    fn adam_matches_the_keras_formula_by_hand() {
        // Worked by hand from Keras' Adam.update_step with lr 0.1, β1 0.9, β2 0.999, ε 1e-7.
        // Step 1, g = 0.5: m = 0.05, v = 0.00025, alpha = 0.1·sqrt(0.001)/0.1 = 0.0316228;
        // w = 1 − 0.0316228 · 0.05 / (0.0158114 + 1e-7) = 1 − 0.0999994 = 0.9000006.
        // Step 2, g = 0.5: m = 0.095, v = 0.00049975, alpha = 0.1·sqrt(0.001999)/0.19 = 0.0235317;
        // w = 0.9000006 − 0.0235317 · 0.095 / (0.0223551 + 1e-7) = 0.8000010.
        let mut p = Param::new("w", arr1(&[1.0f32]).into_dyn());
        let mut adam = Adam::new(AdamConfig {
            learning_rate: 0.1,
            ..Default::default()
        })
        .unwrap();
        let g = grads_for(&p, &[0.5]);
        adam.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.900_000_6, epsilon = 2e-6);
        adam.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.800_001, epsilon = 2e-6);
        assert_eq!(adam.iterations(), 2);
    }

    #[test]
    fn schedules_follow_the_keras_formulas() {
        // CosineDecay(1, 100, alpha 0.1): step 0 → 1; step 50 → 0.9·0.5 + 0.1 = 0.55;
        // step 100 and beyond → alpha.
        let cos = LrSchedule::CosineDecay {
            decay_steps: 100,
            alpha: 0.1,
        };
        assert_abs_diff_eq!(cos.factor(0), 1.0, epsilon = 1e-7);
        assert_abs_diff_eq!(cos.factor(50), 0.55, epsilon = 1e-6);
        assert_abs_diff_eq!(
            cos.factor(25),
            0.9 * 0.5 * (1.0 + 0.5f32.sqrt()) + 0.1,
            epsilon = 1e-6
        );
        assert_abs_diff_eq!(cos.factor(100), 0.1, epsilon = 1e-7);
        assert_abs_diff_eq!(cos.factor(1000), 0.1, epsilon = 1e-7);
        // ExponentialDecay(rate 0.5 per 10 steps): step 15 → 0.5^1.5, or 0.5 with staircase.
        let exp = |staircase| LrSchedule::ExponentialDecay {
            decay_steps: 10,
            decay_rate: 0.5,
            staircase,
        };
        assert_abs_diff_eq!(exp(false).factor(15), 0.5f32.powf(1.5), epsilon = 1e-7);
        assert_abs_diff_eq!(exp(true).factor(15), 0.5, epsilon = 1e-7);
        assert_abs_diff_eq!(exp(true).factor(9), 1.0, epsilon = 1e-7);
        assert_eq!(LrSchedule::Constant.factor(123_456), 1.0);
    }

    #[test]
    fn adam_uses_the_scheduled_rate_of_each_step() {
        // With a gradient of constant sign Adam's step is lr · (bias-corrected m / sqrt(v)) and the
        // first step's ratio is exactly 1 (up to ε): the step size equals the scheduled rate.
        // Cosine over 2 steps with alpha 0: rates 0.1, 0.05, then 0 (no move at all).
        let mut p = Param::new("w", arr1(&[1.0f32]).into_dyn());
        let mut adam = Adam::new(AdamConfig {
            learning_rate: 0.1,
            schedule: LrSchedule::CosineDecay {
                decay_steps: 2,
                alpha: 0.0,
            },
            ..Default::default()
        })
        .unwrap();
        let g = grads_for(&p, &[0.5]);
        assert_abs_diff_eq!(adam.current_learning_rate(), 0.1, epsilon = 1e-7);
        adam.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.900_000_6, epsilon = 2e-6);
        assert_abs_diff_eq!(adam.current_learning_rate(), 0.05, epsilon = 1e-7);
        adam.step(vec![&mut p], &g);
        // Same update as the hand-worked constant-rate step 2, at half the rate:
        // 0.9000006 − 0.5 · 0.0999996.
        assert_abs_diff_eq!(p.value[[0]], 0.850_000_8, epsilon = 2e-6);
        adam.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.850_000_8, epsilon = 2e-6);
    }

    #[test]
    fn adam_rejects_bad_hyper_parameters() {
        for cfg in [
            AdamConfig {
                learning_rate: 0.0,
                ..Default::default()
            },
            AdamConfig {
                beta_1: 1.0,
                ..Default::default()
            },
            AdamConfig {
                beta_2: -0.1,
                ..Default::default()
            },
            AdamConfig {
                epsilon: f32::NAN,
                ..Default::default()
            },
            AdamConfig {
                schedule: LrSchedule::CosineDecay {
                    decay_steps: 0,
                    alpha: 0.0,
                },
                ..Default::default()
            },
            AdamConfig {
                schedule: LrSchedule::ExponentialDecay {
                    decay_steps: 10,
                    decay_rate: 1.5,
                    staircase: false,
                },
                ..Default::default()
            },
        ] {
            assert!(matches!(
                Adam::new(cfg),
                Err(TensorError::BadHyperParameter { .. })
            ));
        }
    }

    #[test]
    fn sgd_momentum_by_hand() {
        // lr 0.1, μ 0.9, g = 1 each step: u1 = −0.1, w1 = 0.9; u2 = −0.19, w2 = 0.71.
        let mut p = Param::new("w", arr1(&[1.0f32]).into_dyn());
        let mut sgd = Sgd::new(0.1, 0.9, false).unwrap();
        let g = grads_for(&p, &[1.0]);
        sgd.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.9, epsilon = 1e-6);
        sgd.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.71, epsilon = 1e-6);
        assert!(Sgd::new(0.1, 1.0, false).is_err());
    }

    #[test]
    fn adamw_is_adam_after_decoupled_decay() {
        // PyTorch's AdamW step: w ← w (1 − lr λ), then the Adam update. lr 0.1, λ 0.5, g 0.5,
        // w0 = 1: w = 0.95, then Adam's first step moves it by 0.0999994 (see the Adam test):
        // 0.8500006. Step 2: 0.8500006 · 0.95 = 0.8075006, minus Adam's second step
        // (0.0999996): 0.707501.
        let mut p = Param::new("w", arr1(&[1.0f32]).into_dyn());
        let cfg = AdamConfig {
            learning_rate: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(cfg, 0.5).unwrap();
        let g = grads_for(&p, &[0.5]);
        opt.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.850_000_6, epsilon = 2e-6);
        opt.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.707_501, epsilon = 3e-6);
        // λ = 0 is Adam exactly.
        let (mut a, mut b) = (p.clone(), p.clone());
        let mut adam = Adam::new(cfg).unwrap();
        let mut plain = AdamW::new(cfg, 0.0).unwrap();
        adam.step(vec![&mut a], &g);
        plain.step(vec![&mut b], &g);
        assert_eq!(a, b);
        // A parameter without a gradient is not decayed (it took no part in the step).
        let mut frozen = Param::new("other", arr1(&[2.0f32]).into_dyn());
        opt.step(vec![&mut frozen], &g);
        assert_eq!(frozen.value[[0]], 2.0);
        assert!(AdamW::new(cfg, -1.0).is_err());
        assert!(AdamW::new(cfg, f32::NAN).is_err());
    }

    #[test]
    fn sgd_weight_decay_is_keras_decoupled_decay() {
        // lr 0.1, λ 0.2, μ 0, g 1, w 1: w ← 1 · (1 − 0.02) − 0.1 = 0.88.
        let mut p = Param::new("w", arr1(&[1.0f32]).into_dyn());
        let mut sgd = Sgd::new(0.1, 0.0, false)
            .unwrap()
            .weight_decay(0.2)
            .unwrap();
        let g = grads_for(&p, &[1.0]);
        sgd.step(vec![&mut p], &g);
        assert_abs_diff_eq!(p.value[[0]], 0.88, epsilon = 1e-6);
        assert!(
            Sgd::new(0.1, 0.0, false)
                .unwrap()
                .weight_decay(-0.1)
                .is_err()
        );
        assert_eq!(sgd.learning_rate(), Some(0.1));
        sgd.set_learning_rate(0.05);
        assert_eq!(sgd.learning_rate(), Some(0.05));
    }
}
