//! Learning-rate schedules for every optimizer: Keras' `PiecewiseConstantDecay`, a linear
//! warm-up in front of any schedule (Keras 3's `warmup_steps` / `warmup_target`), and
//! [`Scheduled`], which drives any [`Optimizer`]'s rate from one.
//!
//! ```
//! use pare_tensor::optim::{AdamConfig, AdamW, LrSchedule};
//! use pare_tensor::schedule::{Schedule, Scheduled};
//!
//! // 100 warm-up steps from 0 to 1e-3, then cosine decay over 1,000 steps.
//! let schedule = Schedule::warmup(100, 0.0, Schedule::Decay {
//!     learning_rate: 1e-3,
//!     decay: LrSchedule::CosineDecay { decay_steps: 1_000, alpha: 0.0 },
//! })?;
//! assert_eq!(schedule.rate(50), 5e-4);
//! let opt = Scheduled::new(AdamW::new(AdamConfig::default(), 0.004)?, schedule)?;
//! # let _ = opt;
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```

use crate::error::{Result, TensorError};
use crate::graph::Grads;
use crate::nn::Param;
use crate::optim::{LrSchedule, Optimizer};

/// The learning rate as a function of the update index `t` (0-based, Keras'
/// `optimizer.iterations` before the update).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// The same rate every step.
    Constant(f32),
    /// Keras' `PiecewiseConstantDecay(boundaries, values)`: `values[0]` while `t <=
    /// boundaries[0]`, `values[i]` while `boundaries[i-1] < t <= boundaries[i]`, the last value
    /// after the last boundary. One more value than boundaries.
    PiecewiseConstant {
        /// Increasing step boundaries.
        boundaries: Vec<u64>,
        /// The rates between them.
        values: Vec<f32>,
    },
    /// `learning_rate · decay.factor(t)`: one of Keras' decays ([`LrSchedule`]).
    Decay {
        /// Initial rate.
        learning_rate: f32,
        /// The decay.
        decay: LrSchedule,
    },
    /// A linear warm-up from `start` to `after.rate(0)` over `steps` updates, then `after`
    /// counted from the end of the warm-up (as Keras 3's `CosineDecay(warmup_steps=...)`).
    Warmup {
        /// Warm-up updates.
        steps: u64,
        /// Rate of the first update.
        start: f32,
        /// What follows the warm-up.
        after: Box<Schedule>,
    },
}

fn bad(name: &'static str, value: String, reason: &'static str) -> TensorError {
    TensorError::BadHyperParameter {
        name,
        value,
        reason,
    }
}

fn check_rate(name: &'static str, v: f32, zero_ok: bool) -> Result<()> {
    if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) {
        Ok(())
    } else if zero_ok {
        Err(bad(name, v.to_string(), "must be >= 0"))
    } else {
        Err(bad(name, v.to_string(), "must be > 0"))
    }
}

impl Schedule {
    /// A warm-up of `steps` updates from `start` in front of `after`, checked.
    ///
    /// # Errors
    /// See [`Schedule::validate`].
    pub fn warmup(steps: u64, start: f32, after: Schedule) -> Result<Schedule> {
        let s = Schedule::Warmup {
            steps,
            start,
            after: Box::new(after),
        };
        s.validate()?;
        Ok(s)
    }

    /// Keras' `PiecewiseConstantDecay`, checked.
    ///
    /// # Errors
    /// See [`Schedule::validate`].
    pub fn piecewise_constant(boundaries: &[u64], values: &[f32]) -> Result<Schedule> {
        let s = Schedule::PiecewiseConstant {
            boundaries: boundaries.to_vec(),
            values: values.to_vec(),
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks every rate (finite, > 0; a warm-up may start at 0), the boundaries (strictly
    /// increasing, one fewer than the values) and any decay's parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Constant(lr) => check_rate("learning_rate", *lr, false),
            Schedule::PiecewiseConstant { boundaries, values } => {
                if values.len() != boundaries.len() + 1 {
                    return Err(bad(
                        "values",
                        format!(
                            "{} values for {} boundaries",
                            values.len(),
                            boundaries.len()
                        ),
                        "must be one more than the boundaries",
                    ));
                }
                if boundaries.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(bad(
                        "boundaries",
                        format!("{boundaries:?}"),
                        "must be strictly increasing",
                    ));
                }
                values
                    .iter()
                    .try_for_each(|v| check_rate("learning_rate", *v, false))
            }
            Schedule::Decay {
                learning_rate,
                decay,
            } => {
                check_rate("learning_rate", *learning_rate, false)?;
                decay.validate()
            }
            Schedule::Warmup {
                steps,
                start,
                after,
            } => {
                if *steps == 0 {
                    return Err(bad("warmup_steps", "0".into(), "must be >= 1"));
                }
                check_rate("warmup start", *start, true)?;
                after.validate()
            }
        }
    }

    /// The rate of update `t`.
    pub fn rate(&self, t: u64) -> f32 {
        match self {
            Schedule::Constant(lr) => *lr,
            Schedule::PiecewiseConstant { boundaries, values } => {
                let i = boundaries.iter().take_while(|&&b| t > b).count();
                values[i.min(values.len() - 1)]
            }
            Schedule::Decay {
                learning_rate,
                decay,
            } => learning_rate * decay.factor(t),
            Schedule::Warmup {
                steps,
                start,
                after,
            } => {
                if t < *steps {
                    let target = after.rate(0) as f64;
                    let p = t as f64 / *steps as f64;
                    (*start as f64 + (target - *start as f64) * p) as f32
                } else {
                    after.rate(t - steps)
                }
            }
        }
    }
}

/// Any optimizer with its rate set from a [`Schedule`] before each update. A callback that
/// changes the rate (`ReduceLROnPlateau`) scales the schedule from then on.
///
/// The wrapped optimizer's own schedule, if it has one ([`crate::optim::AdamConfig::schedule`]),
/// would multiply this one: leave it constant.
#[derive(Debug, Clone)]
pub struct Scheduled<O> {
    inner: O,
    schedule: Schedule,
    scale: f32,
}

impl<O: Optimizer> Scheduled<O> {
    /// Drives `inner`'s learning rate from `schedule`.
    ///
    /// # Errors
    /// An invalid schedule, or an optimizer whose rate cannot be set
    /// ([`Optimizer::learning_rate`] is `None`).
    pub fn new(inner: O, schedule: Schedule) -> Result<Scheduled<O>> {
        schedule.validate()?;
        if inner.learning_rate().is_none() {
            return Err(bad(
                "schedule",
                format!("{schedule:?}"),
                "needs an optimizer whose learning rate can be set",
            ));
        }
        Ok(Scheduled {
            inner,
            schedule,
            scale: 1.0,
        })
    }

    /// The wrapped optimizer.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// The rate the next update will use.
    pub fn current_learning_rate(&self) -> f32 {
        self.schedule.rate(self.inner.iterations()) * self.scale
    }
}

impl<O: Optimizer> Optimizer for Scheduled<O> {
    fn step(&mut self, params: Vec<&mut Param>, grads: &Grads) {
        let lr = self.current_learning_rate();
        self.inner.set_learning_rate(lr);
        self.inner.step(params, grads);
    }
    fn iterations(&self) -> u64 {
        self.inner.iterations()
    }
    fn learning_rate(&self) -> Option<f32> {
        Some(self.current_learning_rate())
    }
    fn set_learning_rate(&mut self, lr: f32) {
        let now = self.schedule.rate(self.inner.iterations());
        if now > 0.0 {
            self.scale = lr / now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Adam, AdamConfig, Sgd};
    use approx::assert_abs_diff_eq;
    use ndarray::arr1;

    #[test]
    fn piecewise_constant_follows_keras_boundaries() {
        // Keras: boundaries [100, 110], values [1.0, 0.5, 0.1]: step <= 100 → 1.0,
        // 100 < step <= 110 → 0.5, after → 0.1.
        let s = Schedule::piecewise_constant(&[100, 110], &[1.0, 0.5, 0.1]).unwrap();
        for (t, want) in [(0, 1.0), (100, 1.0), (101, 0.5), (110, 0.5), (111, 0.1)] {
            assert_eq!(s.rate(t), want, "step {t}");
        }
        assert!(Schedule::piecewise_constant(&[10, 10], &[1.0, 0.5, 0.1]).is_err());
        assert!(Schedule::piecewise_constant(&[10], &[1.0]).is_err());
        assert!(Schedule::piecewise_constant(&[10], &[1.0, f32::INFINITY]).is_err());
    }

    #[test]
    fn warmup_is_linear_then_hands_over() {
        // Keras 3 CosineDecay(initial 0, decay_steps 10, warmup_target 1, warmup_steps 4):
        // steps 0..4 → 0, 0.25, 0.5, 0.75; step 4 → 1 (the decay's start); step 9 → the
        // decay's factor at 5 of 10 = 0.5.
        let s = Schedule::warmup(
            4,
            0.0,
            Schedule::Decay {
                learning_rate: 1.0,
                decay: LrSchedule::CosineDecay {
                    decay_steps: 10,
                    alpha: 0.0,
                },
            },
        )
        .unwrap();
        for (t, want) in [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (9, 0.5)] {
            assert_abs_diff_eq!(s.rate(t), want, epsilon = 1e-6);
        }
        assert!(Schedule::warmup(0, 0.0, Schedule::Constant(1.0)).is_err());
        assert!(Schedule::warmup(3, -1.0, Schedule::Constant(1.0)).is_err());
    }

    #[test]
    fn scheduled_sets_each_update_s_rate_on_any_optimizer() {
        // Plain SGD (μ 0) with g = 1 moves w by exactly the step's rate.
        let s = Schedule::piecewise_constant(&[0, 1], &[0.1, 0.01, 0.001]).unwrap();
        let mut opt = Scheduled::new(Sgd::new(1.0, 0.0, false).unwrap(), s).unwrap();
        let mut p = Param::new("w", arr1(&[1.0f32]).into_dyn());
        let mut g = crate::graph::Graph::new();
        let w = g.param(&p);
        let loss = g.sum(w);
        let grads = g.backward(loss);
        let mut moves = Vec::new();
        for _ in 0..3 {
            let before = p.value[[0]];
            opt.step(vec![&mut p], &grads);
            moves.push(before - p.value[[0]]);
        }
        for (m, want) in moves.iter().zip([0.1, 0.01, 0.001]) {
            assert_abs_diff_eq!(*m, want, epsilon = 1e-6);
        }
        // A callback halving the rate scales the schedule from then on.
        assert_abs_diff_eq!(opt.learning_rate().unwrap(), 0.001, epsilon = 1e-9);
        opt.set_learning_rate(0.0005);
        assert_abs_diff_eq!(opt.current_learning_rate(), 0.0005, epsilon = 1e-9);
        // With Adam too.
        let adam = Adam::new(AdamConfig::default()).unwrap();
        let opt = Scheduled::new(adam, Schedule::Constant(0.5)).unwrap();
        assert_eq!(opt.learning_rate(), Some(0.5));
    }
}
