//! Pruning schedules: when to update the masks and to which sparsity.
//!
//! These follow TensorFlow Model Optimization (TFMOT)
//! `tensorflow_model_optimization/python/core/sparsity/keras/pruning_schedule.py` exactly:
//!
//! * masks are updated at `step` when `begin_step <= step` and (`step <= end_step` or
//!   `end_step < 0`) and `(step - begin_step) % frequency == 0`. There is **no** forced update at
//!   `end_step`: with the MNIST tutorial's `PolynomialDecay(0.5, 0.8, begin 0, end 844)` and the
//!   default frequency 100 the last update happens at step 800, at sparsity 0.79996;
//! * `PolynomialDecay` gives
//!   `s = final + (initial - final) * (1 - p)^power`, `p = clip((step - begin) / (end - begin), 0, 1)`,
//!   computed in `f32` in the same order as TFMOT's graph, so it also answers (without pruning)
//!   before `begin_step` (`initial`) and after `end_step` (`final`);
//! * parameters are validated as TFMOT's `_validate_step` / `_validate_sparsity` do, plus two
//!   checks TFMOT lacks: `power` must be finite and positive, and `PolynomialDecay` needs
//!   `end_step > begin_step` (TFMOT accepts `end == begin` and then divides zero by zero).

use crate::error::{PruneError, Result};

/// A schedule says, for a training step, whether to update the pruning masks and at which
/// sparsity (fraction of weights set to zero).
///
/// Steps count optimizer updates from 0, like Keras' `iterations`.
pub trait PruningSchedule {
    /// Whether masks are recomputed at `step`.
    fn should_prune(&self, step: i64) -> bool;

    /// The target sparsity at `step`, in `[0, 1)` for a valid schedule.
    fn sparsity(&self, step: i64) -> f32;

    /// Both answers at once, as TFMOT's `schedule(step)` returns `(should_prune, sparsity)`.
    fn at(&self, step: i64) -> (bool, f32) {
        (self.should_prune(step), self.sparsity(step))
    }
}

impl<S: PruningSchedule + ?Sized> PruningSchedule for &S {
    fn should_prune(&self, step: i64) -> bool {
        (**self).should_prune(step)
    }
    fn sparsity(&self, step: i64) -> f32 {
        (**self).sparsity(step)
    }
}

impl<S: PruningSchedule + ?Sized> PruningSchedule for Box<S> {
    fn should_prune(&self, step: i64) -> bool {
        (**self).should_prune(step)
    }
    fn sparsity(&self, step: i64) -> f32 {
        (**self).sparsity(step)
    }
}

/// TFMOT's `_should_prune_in_step`. Computed in `i128` so extreme steps cannot overflow, and a
/// non-positive frequency (an invalid schedule) never prunes instead of dividing by zero.
fn should_prune_in_step(step: i64, begin_step: i64, end_step: i64, frequency: i64) -> bool {
    let in_range = step >= begin_step && (end_step < 0 || step <= end_step);
    in_range
        && (i128::from(step) - i128::from(begin_step)).checked_rem_euclid(i128::from(frequency))
            == Some(0)
}

/// TFMOT's `_validate_step`.
fn validate_steps(begin_step: i64, end_step: i64, frequency: i64, allow_never: bool) -> Result<()> {
    if begin_step < 0 {
        return Err(PruneError::InvalidBeginStep { begin_step });
    }
    if end_step == -1 {
        if !allow_never {
            return Err(PruneError::InvalidEndStep {
                begin_step,
                end_step,
                reason: "this schedule needs a finite end_step (-1 is only allowed for ConstantSparsity)",
            });
        }
    } else if end_step < 0 {
        return Err(PruneError::InvalidEndStep {
            begin_step,
            end_step,
            reason: "end_step must be -1 (never ends) or >= 0",
        });
    } else if end_step < begin_step {
        return Err(PruneError::InvalidEndStep {
            begin_step,
            end_step,
            reason: "end_step must be >= begin_step",
        });
    }
    if frequency <= 0 {
        return Err(PruneError::InvalidFrequency { frequency });
    }
    Ok(())
}

/// TFMOT's `_validate_sparsity`: `0 <= s < 1` (which also rejects NaN).
pub(crate) fn validate_sparsity(param: &'static str, value: f32) -> Result<()> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(PruneError::InvalidSparsity { param, value })
    }
}

/// Constant sparsity, applied every `frequency` steps from `begin_step` to `end_step`
/// (TFMOT's `ConstantSparsity`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConstantSparsity {
    /// Fraction of weights pruned at each update, in `[0, 1)`.
    pub target_sparsity: f32,
    /// First step at which masks are updated (`>= 0`).
    pub begin_step: i64,
    /// Last step at which masks may be updated; `-1` means pruning never ends.
    pub end_step: i64,
    /// Masks are updated when `(step - begin_step) % frequency == 0`.
    pub frequency: i64,
}

impl Default for ConstantSparsity {
    /// `end_step = -1` and `frequency = 100` are TFMOT's defaults. TFMOT has none for the other
    /// two; these are its pruning guide's `ConstantSparsity(0.5, begin_step=0)`.
    fn default() -> Self {
        ConstantSparsity {
            target_sparsity: 0.5,
            begin_step: 0,
            end_step: -1,
            frequency: 100,
        }
    }
}

impl ConstantSparsity {
    /// A validated schedule.
    ///
    /// # Errors
    /// See [`ConstantSparsity::validate`].
    pub fn new(
        target_sparsity: f32,
        begin_step: i64,
        end_step: i64,
        frequency: i64,
    ) -> Result<Self> {
        let s = ConstantSparsity {
            target_sparsity,
            begin_step,
            end_step,
            frequency,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the parameters as TFMOT does.
    ///
    /// # Errors
    /// [`PruneError::InvalidSparsity`] unless `0 <= target_sparsity < 1`;
    /// [`PruneError::InvalidBeginStep`] if `begin_step < 0`; [`PruneError::InvalidEndStep`] unless
    /// `end_step == -1` or `end_step >= begin_step`; [`PruneError::InvalidFrequency`] if
    /// `frequency <= 0`.
    pub fn validate(&self) -> Result<()> {
        validate_steps(self.begin_step, self.end_step, self.frequency, true)?;
        validate_sparsity("target_sparsity", self.target_sparsity)
    }
}

impl PruningSchedule for ConstantSparsity {
    fn should_prune(&self, step: i64) -> bool {
        should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
    }

    fn sparsity(&self, _step: i64) -> f32 {
        self.target_sparsity
    }
}

/// Sparsity rising from `initial_sparsity` to `final_sparsity` along a polynomial
/// (TFMOT's `PolynomialDecay`, after Zhu & Gupta 2017, arXiv:1710.01878).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolynomialDecay {
    /// Sparsity at `begin_step`, in `[0, 1)`.
    pub initial_sparsity: f32,
    /// Sparsity from `end_step` on, in `[0, 1)`.
    pub final_sparsity: f32,
    /// First step at which masks are updated (`>= 0`).
    pub begin_step: i64,
    /// Step at which the sparsity reaches `final_sparsity` (`> begin_step`).
    pub end_step: i64,
    /// Exponent of the decay (TFMOT: 3).
    pub power: f32,
    /// Masks are updated when `(step - begin_step) % frequency == 0`.
    pub frequency: i64,
}

impl Default for PolynomialDecay {
    /// `power = 3` and `frequency = 100` are TFMOT's defaults. TFMOT has none for the others;
    /// these are its MNIST pruning tutorial's: 0.5 → 0.8 over two epochs of
    /// `ceil(54000 / 128) = 422` steps, so `end_step = 844`.
    fn default() -> Self {
        PolynomialDecay {
            initial_sparsity: 0.5,
            final_sparsity: 0.8,
            begin_step: 0,
            end_step: 844,
            power: 3.0,
            frequency: 100,
        }
    }
}

impl PolynomialDecay {
    /// A validated schedule.
    ///
    /// # Errors
    /// See [`PolynomialDecay::validate`].
    pub fn new(
        initial_sparsity: f32,
        final_sparsity: f32,
        begin_step: i64,
        end_step: i64,
        power: f32,
        frequency: i64,
    ) -> Result<Self> {
        let s = PolynomialDecay {
            initial_sparsity,
            final_sparsity,
            begin_step,
            end_step,
            power,
            frequency,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// [`PruneError::InvalidSparsity`] unless both sparsities are in `[0, 1)`;
    /// [`PruneError::InvalidBeginStep`] if `begin_step < 0`; [`PruneError::InvalidEndStep`] unless
    /// `end_step > begin_step` (so `-1` is rejected, as in TFMOT, and so is `end == begin`, which
    /// TFMOT accepts but which makes `p = 0 / 0`); [`PruneError::InvalidFrequency`] if
    /// `frequency <= 0`; [`PruneError::InvalidPower`] unless `power` is finite and `> 0`.
    pub fn validate(&self) -> Result<()> {
        validate_steps(self.begin_step, self.end_step, self.frequency, false)?;
        if self.end_step == self.begin_step {
            return Err(PruneError::InvalidEndStep {
                begin_step: self.begin_step,
                end_step: self.end_step,
                reason: "PolynomialDecay needs end_step > begin_step to interpolate",
            });
        }
        validate_sparsity("initial_sparsity", self.initial_sparsity)?;
        validate_sparsity("final_sparsity", self.final_sparsity)?;
        if !(self.power.is_finite() && self.power > 0.0) {
            return Err(PruneError::InvalidPower { power: self.power });
        }
        Ok(())
    }
}

impl PruningSchedule for PolynomialDecay {
    fn should_prune(&self, step: i64) -> bool {
        should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
    }

    fn sparsity(&self, step: i64) -> f32 {
        // Same f32 operations, in the same order, as TFMOT's graph: the step difference and the
        // span are cast to f32 and divided, clipped, then `(i - f) * pow(1 - p, power) + f`.
        // TFMOT's `initial - final` is a Python (f64) subtraction cast to f32 afterwards.
        let num = (i128::from(step) - i128::from(self.begin_step)) as f32;
        let span = (i128::from(self.end_step) - i128::from(self.begin_step)) as f32;
        let p = (num / span).clamp(0.0, 1.0);
        let diff = (f64::from(self.initial_sparsity) - f64::from(self.final_sparsity)) as f32;
        diff * (1.0 - p).powf(self.power) + self.final_sparsity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    /// The formula evaluated independently in f64.
    fn poly_f64(i: f64, f: f64, begin: i64, end: i64, power: f64, step: i64) -> f64 {
        let p = ((step - begin) as f64 / (end - begin) as f64).clamp(0.0, 1.0);
        f + (i - f) * (1.0 - p).powf(power)
    }

    #[test]
    fn polynomial_decay_matches_tfmot_test_values() {
        // TFMOT pruning_schedule_test.py, testPolynomialDecay_PrunesCorrectly: the expected
        // values there were generated with tf.polynomial_decay.
        let s = PolynomialDecay::new(0.2, 0.8, 100, 110, 3.0, 2).unwrap();
        for (step, want) in [(100, 0.2), (102, 0.4928), (105, 0.725), (110, 0.8)] {
            assert_abs_diff_eq!(s.sparsity(step), want, epsilon = 1e-6);
        }
    }

    #[test]
    fn polynomial_decay_tutorial_schedule() {
        let s = PolynomialDecay::default();
        assert_eq!(s, PolynomialDecay::new(0.5, 0.8, 0, 844, 3.0, 100).unwrap());
        for step in [0, 1, 99, 100, 150, 422, 500, 800, 843, 844, 845, 2000, -5] {
            let want = poly_f64(0.5, 0.8, 0, 844, 3.0, step);
            assert_abs_diff_eq!(f64::from(s.sparsity(step)), want, epsilon = 1e-6);
        }
        // Updates every 100 steps from 0; 844 is not a multiple of 100, so (as in TFMOT) there
        // is no update at end_step and the last one is at 800.
        let updates: Vec<i64> = (-10..2000).filter(|&t| s.should_prune(t)).collect();
        assert_eq!(updates, vec![0, 100, 200, 300, 400, 500, 600, 700, 800]);
        assert_abs_diff_eq!(s.sparsity(800), 0.799_957_6, epsilon = 1e-6);
        // Hand-worked: p = 422/844 = 0.5, 0.8 - 0.3 * 0.5^3 = 0.7625.
        assert_abs_diff_eq!(s.sparsity(422), 0.7625, epsilon = 1e-7);
        assert_eq!(s.at(100), (true, s.sparsity(100)));
        assert!(!s.at(150).0);
    }

    #[test]
    fn polynomial_decay_begin_mid_end_past_end_with_offset_begin() {
        let s = PolynomialDecay::new(0.1, 0.9, 1000, 3000, 2.0, 250).unwrap();
        assert_abs_diff_eq!(s.sparsity(0), 0.1, epsilon = 1e-7); // before begin: initial
        assert_abs_diff_eq!(s.sparsity(1000), 0.1, epsilon = 1e-7);
        assert_abs_diff_eq!(s.sparsity(2000), 0.9 - 0.8 * 0.25, epsilon = 1e-6);
        assert_abs_diff_eq!(s.sparsity(3000), 0.9, epsilon = 1e-7);
        assert_abs_diff_eq!(s.sparsity(10_000), 0.9, epsilon = 1e-7);
        for step in [999, 1000, 1250, 1251, 2999, 3000, 3250] {
            let want = (1000..=3000).contains(&step) && (step - 1000) % 250 == 0;
            assert_eq!(s.should_prune(step), want, "step {step}");
            let f = poly_f64(0.1, 0.9, 1000, 3000, 2.0, step);
            assert_abs_diff_eq!(f64::from(s.sparsity(step)), f, epsilon = 1e-6);
        }
        // Decreasing sparsity is allowed, as in TFMOT.
        let down = PolynomialDecay::new(0.9, 0.1, 0, 10, 1.0, 1).unwrap();
        assert_abs_diff_eq!(down.sparsity(5), 0.5, epsilon = 1e-6);
    }

    #[test]
    fn range_and_frequency_like_tfmot_tests() {
        // TFMOT testPrunesOnlyInBeginEndStepRange and testOnlyPrunesAtValidFrequencySteps.
        let c = ConstantSparsity::new(0.5, 100, 200, 1).unwrap();
        let p = PolynomialDecay::new(0.2, 0.8, 100, 200, 3.0, 1).unwrap();
        let sched: [&dyn PruningSchedule; 2] = [&c, &p];
        for s in sched {
            for (step, want) in [
                (90, false),
                (99, false),
                (100, true),
                (110, true),
                (200, true),
                (201, false),
            ] {
                assert_eq!(s.should_prune(step), want, "step {step}");
            }
        }
        let c = ConstantSparsity::new(0.5, 100, 200, 10).unwrap();
        let p = PolynomialDecay::new(0.2, 0.8, 100, 200, 3.0, 10).unwrap();
        let sched: [&dyn PruningSchedule; 2] = [&c, &p];
        for s in sched {
            for (step, want) in [(100, true), (109, false), (110, true), (111, false)] {
                assert_eq!(s.should_prune(step), want, "step {step}");
            }
        }
    }

    #[test]
    fn constant_sparsity_forever_and_defaults() {
        let s = ConstantSparsity::new(0.5, 0, -1, 10).unwrap();
        assert!(s.should_prune(10_000));
        assert!(s.should_prune(100_000_000));
        assert!(!s.should_prune(100_000_001));
        assert_eq!(s.sparsity(100_000_000), 0.5);
        assert!(s.should_prune(i64::MAX - 7)); // (2^63 - 8) % 10 == 0, no overflow
        let d = ConstantSparsity::default();
        assert_eq!((d.begin_step, d.end_step, d.frequency), (0, -1, 100));
        d.validate().unwrap();
        // end == begin is a one-step window for ConstantSparsity.
        let one = ConstantSparsity::new(0.3, 7, 7, 100).unwrap();
        assert_eq!((one.should_prune(7), one.should_prune(8)), (true, false));
        let boxed: Box<dyn PruningSchedule> = Box::new(one);
        assert_eq!(boxed.at(7), (true, 0.3));
    }

    #[test]
    fn validation_errors() {
        use PruneError::*;
        let err = |r: Result<ConstantSparsity>| r.unwrap_err();
        assert!(matches!(
            err(ConstantSparsity::new(0.5, -1, 1000, 10)),
            InvalidBeginStep { .. }
        ));
        assert!(matches!(
            err(ConstantSparsity::new(0.5, 10, -5, 10)),
            InvalidEndStep { .. }
        ));
        assert!(matches!(
            err(ConstantSparsity::new(0.5, 10, 5, 10)),
            InvalidEndStep { .. }
        ));
        for f in [0, -1, -5] {
            assert!(matches!(
                err(ConstantSparsity::new(0.5, 10, 1000, f)),
                InvalidFrequency { .. }
            ));
        }
        for s in [-0.001, -1.0, 1.0, 10.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                err(ConstantSparsity::new(s, 0, -1, 100)),
                InvalidSparsity { .. }
            ));
        }
        for s in [0.0, 0.001, 0.5, 0.99] {
            ConstantSparsity::new(s, 0, -1, 100).unwrap();
            PolynomialDecay::new(s, 0.8, 0, 10, 3.0, 100).unwrap();
            PolynomialDecay::new(0.2, s, 0, 10, 3.0, 100).unwrap();
        }
        let perr = |r: Result<PolynomialDecay>| r.unwrap_err();
        assert!(matches!(
            perr(PolynomialDecay::new(0.4, 0.8, 10, -1, 3.0, 100)),
            InvalidEndStep { .. }
        ));
        assert!(matches!(
            perr(PolynomialDecay::new(0.4, 0.8, 10, 10, 3.0, 100)),
            InvalidEndStep { .. }
        ));
        assert!(matches!(
            perr(PolynomialDecay::new(0.4, 0.8, 10, 9, 3.0, 100)),
            InvalidEndStep { .. }
        ));
        assert!(matches!(
            perr(PolynomialDecay::new(0.4, 0.8, -1, 9, 3.0, 100)),
            InvalidBeginStep { .. }
        ));
        assert!(matches!(
            perr(PolynomialDecay::new(0.4, 0.8, 0, 9, 3.0, 0)),
            InvalidFrequency { .. }
        ));
        assert!(matches!(
            perr(PolynomialDecay::new(1.0, 0.8, 0, 9, 3.0, 1)),
            InvalidSparsity { .. }
        ));
        assert!(matches!(
            perr(PolynomialDecay::new(0.4, -0.1, 0, 9, 3.0, 1)),
            InvalidSparsity { .. }
        ));
        for p in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                perr(PolynomialDecay::new(0.4, 0.8, 0, 9, p, 1)),
                InvalidPower { .. }
            ));
        }
    }

    #[test]
    fn invalid_struct_literals_do_not_panic() {
        // Public fields let a caller skip `new`; the hot path must still not divide by zero.
        let c = ConstantSparsity {
            frequency: 0,
            ..ConstantSparsity::default()
        };
        assert!(!c.should_prune(0));
        let p = PolynomialDecay {
            end_step: 0,
            ..PolynomialDecay::default()
        };
        let _ = p.sparsity(0);
        assert!(p.validate().is_err());
    }
}
