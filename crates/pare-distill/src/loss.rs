//! The distillation loss of Hinton et al. (2015) in Keras' convention.

use crate::error::{DistillError, Result};
use pare_tensor::{Graph, Var};

/// Hyper-parameters of [`kd_loss`]. `Default` is the Keras Distiller example's
/// `alpha = 0.1, temperature = 10`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdConfig {
    /// Weight of the hard-label cross-entropy, in `[0, 1]`; the soft term gets `1 - alpha`.
    pub alpha: f32,
    /// Softmax temperature `T > 0`; higher values soften both distributions.
    pub temperature: f32,
}

impl Default for KdConfig {
    fn default() -> Self {
        KdConfig {
            alpha: 0.1,
            temperature: 10.0,
        }
    }
}

impl KdConfig {
    /// Checks that `alpha` is in `[0, 1]` and `temperature` is finite and positive.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && (0.0..=1.0).contains(&self.alpha)) {
            return Err(DistillError::BadHyperParameter {
                name: "alpha",
                value: self.alpha.to_string(),
                reason: "must be in [0, 1]",
            });
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(DistillError::BadHyperParameter {
                name: "temperature",
                value: self.temperature.to_string(),
                reason: "must be > 0",
            });
        }
        Ok(())
    }
}

/// The parts of the distillation loss, as Keras' `Distiller` reports them.
#[derive(Debug, Clone, Copy)]
pub struct KdLoss {
    /// `α · student_loss + (1 − α) · distillation_loss`: what is minimised.
    pub total: Var,
    /// `CE(y, student)`: the hard-label cross-entropy, comparable with a validation loss.
    pub student_loss: Var,
    /// `T² · KL(softmax(teacher/T) ‖ softmax(student/T))`.
    pub distillation_loss: Var,
}

/// Knowledge-distillation loss of a batch, as the Keras Distiller example computes it:
///
/// `alpha · CE(labels, student) + (1 − alpha) · T² · KL(softmax(teacher / T) ‖ softmax(student / T))`
///
/// with CE the batch mean of the sparse softmax cross-entropy of the student's logits and KL
/// the batch mean of per-example sums (Keras' `KLDivergence`). The `T²` factor keeps the soft
/// term's gradients, which scale as `1/T²`, comparable across temperatures (Hinton et al.,
/// *Distilling the Knowledge in a Neural Network*, 2015, §2). Both distributions are taken
/// through log-softmax, so the loss stays finite for large logits; Keras instead clips the
/// probabilities to `[1e-7, 1]`, which differs only where a probability is below `1e-7`.
///
/// `student_logits` and `teacher_logits` are `[batch, classes]` vars of `g`; the teacher's is
/// normally a constant, so no gradient flows into it. Returns the scalar loss.
///
/// # Errors
/// [`DistillError::BadHyperParameter`] for an invalid `cfg`, [`DistillError::ShapeMismatch`]
/// when the logits are not 2-D with equal shapes, [`DistillError::BadLabels`] when the label
/// count differs from the batch or a label is not a class index.
pub fn kd_loss(
    g: &mut Graph,
    student_logits: Var,
    teacher_logits: Var,
    labels: &[usize],
    cfg: &KdConfig,
) -> Result<Var> {
    Ok(kd_loss_parts(g, student_logits, teacher_logits, labels, cfg)?.total)
}

/// [`kd_loss`] with its two terms apart ([`KdLoss`]); the total is the same node values.
///
/// # Errors
/// As [`kd_loss`].
pub fn kd_loss_parts(
    g: &mut Graph,
    student_logits: Var,
    teacher_logits: Var,
    labels: &[usize],
    cfg: &KdConfig,
) -> Result<KdLoss> {
    cfg.validate()?;
    let (s, t) = (
        g.shape(student_logits).to_vec(),
        g.shape(teacher_logits).to_vec(),
    );
    if s.len() != 2 || s != t {
        return Err(DistillError::ShapeMismatch {
            what: "kd_loss logits (expected equal [batch, classes])",
            student: s,
            teacher: t,
        });
    }
    check_labels(labels, s[0], s[1])?;
    let inv_t = 1.0 / cfg.temperature;
    let scaled_teacher = g.scale(teacher_logits, inv_t);
    let scaled_student = g.scale(student_logits, inv_t);
    let log_p = g.log_softmax(scaled_teacher);
    let log_q = g.log_softmax(scaled_student);
    let kl = g.kl_div(log_p, log_q);
    let ce = g.softmax_cross_entropy(student_logits, labels);
    let hard = g.scale(ce, cfg.alpha);
    let soft = g.scale(kl, (1.0 - cfg.alpha) * cfg.temperature * cfg.temperature);
    let total = g.add(hard, soft);
    let distillation_loss = g.scale(kl, cfg.temperature * cfg.temperature);
    Ok(KdLoss {
        total,
        student_loss: ce,
        distillation_loss,
    })
}

/// Labels must be one per row and valid class indices (the graph op would panic otherwise).
pub(crate) fn check_labels(labels: &[usize], rows: usize, classes: usize) -> Result<()> {
    if labels.len() != rows {
        return Err(DistillError::BadLabels {
            reason: format!("{} labels for a batch of {rows}", labels.len()),
        });
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l >= classes) {
        return Err(DistillError::BadLabels {
            reason: format!("label {l} at index {i} is out of range for {classes} classes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{ArrayD, IxDyn, array};
    use pare_tensor::gradcheck::max_gradient_error;

    fn logits(rows: &[&[f32]]) -> ArrayD<f32> {
        let cols = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        ArrayD::from_shape_vec(IxDyn(&[rows.len(), cols]), flat).unwrap()
    }

    fn loss_value(s: &ArrayD<f32>, t: &ArrayD<f32>, y: &[usize], cfg: KdConfig) -> f32 {
        let mut g = Graph::new();
        let (sv, tv) = (g.constant(s.clone()), g.constant(t.clone()));
        let l = kd_loss(&mut g, sv, tv, y, &cfg).unwrap();
        g.value(l)[[]]
    }

    /// f64 log-softmax of one row.
    fn log_softmax(row: &[f64]) -> Vec<f64> {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        row.iter().map(|v| v - lse).collect()
    }

    /// The Keras Distiller example's loss in f64, written out from its source: Keras'
    /// `SparseCategoricalCrossentropy(from_logits=True)` and `KLDivergence()` (probabilities
    /// clipped to [1e-7, 1], per-example sums, batch mean) on `softmax(. / T)`, times `T²`.
    fn keras_reference(s: &ArrayD<f32>, t: &ArrayD<f32>, y: &[usize], cfg: KdConfig) -> f64 {
        let (a, temp) = (cfg.alpha as f64, cfg.temperature as f64);
        let rows = s.shape()[0];
        let (mut ce, mut kl) = (0.0, 0.0);
        let rows64 = |a: &ArrayD<f32>| -> Vec<Vec<f64>> {
            a.outer_iter()
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect()
        };
        for ((sr, tr), &label) in rows64(s).iter().zip(&rows64(t)).zip(y) {
            ce -= log_softmax(sr)[label];
            let p = log_softmax(&tr.iter().map(|v| v / temp).collect::<Vec<_>>());
            let q = log_softmax(&sr.iter().map(|v| v / temp).collect::<Vec<_>>());
            for (lp, lq) in p.iter().zip(&q) {
                let (pp, qq) = (lp.exp().clamp(1e-7, 1.0), lq.exp().clamp(1e-7, 1.0));
                kl += pp * (pp / qq).ln();
            }
        }
        a * ce / rows as f64 + (1.0 - a) * temp * temp * kl / rows as f64
    }

    #[test]
    fn hand_worked_values() {
        // Worked out with plain Python (math.exp / math.log, f64), the NumPy recipe
        // `a*CE + (1-a)*T**2*mean(sum(p*(log p - log q)))`:
        //   student [[1, 2, 3], [0.5, -1, 2]], teacher [[3, 1, 0.2], [0, 0, 1]], labels [2, 0]
        //   CE = 1.0744586306,  KL(T=2) = 0.2845352432
        //   alpha 0.3, T 2 -> 0.3 * CE + 0.7 * 4 * KL = 1.1190362701
        let s = logits(&[&[1.0, 2.0, 3.0], &[0.5, -1.0, 2.0]]);
        let t = logits(&[&[3.0, 1.0, 0.2], &[0.0, 0.0, 1.0]]);
        let y = [2, 0];
        let cfg = KdConfig {
            alpha: 0.3,
            temperature: 2.0,
        };
        assert_abs_diff_eq!(loss_value(&s, &t, &y, cfg), 1.119_036_3, epsilon = 1e-5);
        let ce_only = KdConfig {
            alpha: 1.0,
            temperature: 2.0,
        };
        assert_abs_diff_eq!(loss_value(&s, &t, &y, ce_only), 1.074_458_6, epsilon = 1e-5);
        let kl_only = KdConfig {
            alpha: 0.0,
            temperature: 2.0,
        };
        assert_abs_diff_eq!(
            loss_value(&s, &t, &y, kl_only),
            4.0 * 0.284_535_2,
            epsilon = 1e-5
        );
        assert_abs_diff_eq!(
            loss_value(&s, &t, &y, cfg) as f64,
            keras_reference(&s, &t, &y, cfg),
            epsilon = 1e-5
        );
    }

    #[test]
    fn alpha_one_is_cross_entropy_and_alpha_zero_is_t_squared_kl() {
        let s = logits(&[
            &[0.2, -1.3, 2.5, 0.0],
            &[1.0, 1.0, -2.0, 0.7],
            &[3.0, -3.0, 0.1, 0.4],
        ]);
        let t = logits(&[
            &[1.5, -0.3, 4.0, 0.0],
            &[0.0, 2.0, -1.0, 0.2],
            &[5.0, -1.0, 0.0, 0.0],
        ]);
        let y = [2, 1, 0];
        for temp in [1.0f32, 2.5, 10.0] {
            let mut g = Graph::new();
            let (sv, tv) = (g.constant(s.clone()), g.constant(t.clone()));
            let ce = g.softmax_cross_entropy(sv, &y);
            let (ss, ts) = (g.scale(sv, 1.0 / temp), g.scale(tv, 1.0 / temp));
            let (lq, lp) = (g.log_softmax(ss), g.log_softmax(ts));
            let kl = g.kl_div(lp, lq);
            let (ce, kl) = (g.value(ce)[[]], g.value(kl)[[]]);
            let hard = KdConfig {
                alpha: 1.0,
                temperature: temp,
            };
            assert_abs_diff_eq!(loss_value(&s, &t, &y, hard), ce, epsilon = 1e-6);
            let soft = KdConfig {
                alpha: 0.0,
                temperature: temp,
            };
            assert_abs_diff_eq!(
                loss_value(&s, &t, &y, soft),
                temp * temp * kl,
                epsilon = 1e-5
            );
            let mixed = KdConfig {
                alpha: 0.25,
                temperature: temp,
            };
            let want = keras_reference(&s, &t, &y, mixed);
            assert_abs_diff_eq!(loss_value(&s, &t, &y, mixed) as f64, want, epsilon = 1e-5);
        }
    }

    #[test]
    fn identical_logits_leave_only_the_hard_term() {
        let s = logits(&[&[0.3, 0.1, -0.4], &[2.0, 0.0, 1.0]]);
        let cfg = KdConfig {
            alpha: 0.0,
            temperature: 4.0,
        };
        assert_abs_diff_eq!(loss_value(&s, &s, &[0, 1], cfg), 0.0, epsilon = 1e-6);
    }

    #[test]
    fn gradient_matches_central_differences() {
        let s = logits(&[&[0.2, -1.3, 2.5, 0.0], &[1.0, 1.0, -2.0, 0.7]]);
        let t = logits(&[&[1.5, -0.3, 4.0, 0.0], &[0.0, 2.0, -1.0, 0.2]]);
        for cfg in [
            KdConfig::default(),
            KdConfig {
                alpha: 0.5,
                temperature: 1.0,
            },
            KdConfig {
                alpha: 0.9,
                temperature: 3.0,
            },
            KdConfig {
                alpha: 0.0,
                temperature: 20.0,
            },
        ] {
            // Both inputs as parameters: the teacher side's gradient is checked too. The soft
            // term sees logits / T and its f32 rounding is amplified by T², so the step grows
            // with T to keep the differences above the rounding noise.
            let h = 1e-2 * cfg.temperature.max(1.0);
            let err = max_gradient_error(&[s.clone(), t.clone()], h, &|g, v| {
                kd_loss(g, v[0], v[1], &[2, 1], &cfg).unwrap()
            });
            assert!(err < 1e-2, "{cfg:?}: relative gradient error {err}");
        }
    }

    #[test]
    fn student_gradient_is_hintons_closed_form() {
        // d/ds = alpha (softmax(s) - onehot(y)) / B + (1 - alpha) T (softmax(s/T) - softmax(t/T)) / B
        // (Hinton et al. 2015, eq. 2, with the T² factor and the batch mean).
        let s = logits(&[&[0.2, -1.3, 2.5], &[1.0, 1.0, -2.0]]);
        let t = logits(&[&[1.5, -0.3, 4.0], &[0.0, 2.0, -1.0]]);
        let y = [2, 1];
        let cfg = KdConfig {
            alpha: 0.3,
            temperature: 4.0,
        };
        let p = pare_tensor::Param::new("s", s.clone());
        let mut g = Graph::new();
        let sv = g.param(&p);
        let tv = g.constant(t.clone());
        let l = kd_loss(&mut g, sv, tv, &y, &cfg).unwrap();
        let grad = g.backward(l).get("s").unwrap().clone();
        let (a, temp, b) = (cfg.alpha as f64, cfg.temperature as f64, 2.0);
        for r in 0..2 {
            let sr: Vec<f64> = (0..3).map(|c| s[[r, c]] as f64).collect();
            let tr: Vec<f64> = (0..3).map(|c| t[[r, c]] as f64).collect();
            let q1 = log_softmax(&sr);
            let qt = log_softmax(&sr.iter().map(|v| v / temp).collect::<Vec<_>>());
            let pt = log_softmax(&tr.iter().map(|v| v / temp).collect::<Vec<_>>());
            for c in 0..3 {
                let onehot = if c == y[r] { 1.0 } else { 0.0 };
                let want = a * (q1[c].exp() - onehot) / b
                    + (1.0 - a) * temp * (qt[c].exp() - pt[c].exp()) / b;
                assert_abs_diff_eq!(grad[[r, c]] as f64, want, epsilon = 1e-6);
            }
        }
    }

    #[test]
    fn large_logits_stay_finite() {
        let s = logits(&[&[1e4, -1e4, 0.0], &[-3e4, 2e4, 5e3]]);
        let t = logits(&[&[-1e4, 1e4, 0.0], &[3e4, -2e4, 0.0]]);
        let cfg = KdConfig {
            alpha: 0.5,
            temperature: 1.0,
        };
        let p = pare_tensor::Param::new("s", s);
        let mut g = Graph::new();
        let sv = g.param(&p);
        let tv = g.constant(t);
        let l = kd_loss(&mut g, sv, tv, &[0, 1], &cfg).unwrap();
        let v = g.value(l)[[]];
        assert!(v.is_finite() && v > 1e3, "{v}");
        assert!(
            g.backward(l)
                .get("s")
                .unwrap()
                .iter()
                .all(|x| x.is_finite())
        );
    }

    #[test]
    fn invalid_configuration_shapes_and_labels_are_errors() {
        for (alpha, temperature) in [
            (-0.1, 1.0),
            (1.01, 1.0),
            (f32::NAN, 1.0),
            (0.5, 0.0),
            (0.5, -2.0),
            (0.5, f32::INFINITY),
            (0.5, f32::NAN),
        ] {
            let cfg = KdConfig { alpha, temperature };
            assert!(
                matches!(cfg.validate(), Err(DistillError::BadHyperParameter { .. })),
                "{cfg:?}"
            );
        }
        assert!(KdConfig::default().validate().is_ok());
        assert!(
            KdConfig {
                alpha: 0.0,
                temperature: 1e-3
            }
            .validate()
            .is_ok()
        );
        assert!(
            KdConfig {
                alpha: 1.0,
                temperature: 1e3
            }
            .validate()
            .is_ok()
        );

        let mut g = Graph::new();
        let s = g.constant(array![[1.0f32, 2.0], [0.0, 1.0]].into_dyn());
        let t3 = g.constant(array![[1.0f32, 2.0, 3.0], [0.0, 1.0, 2.0]].into_dyn());
        let cfg = KdConfig::default();
        let err = kd_loss(&mut g, s, t3, &[0, 1], &cfg).unwrap_err();
        assert!(matches!(err, DistillError::ShapeMismatch { .. }), "{err}");
        let t = g.constant(array![[1.0f32, 2.0], [0.0, 1.0]].into_dyn());
        let err = kd_loss(&mut g, s, t, &[0], &cfg).unwrap_err();
        assert!(matches!(err, DistillError::BadLabels { .. }), "{err}");
        let err = kd_loss(&mut g, s, t, &[0, 2], &cfg).unwrap_err();
        assert!(err.to_string().contains("label 2 at index 1"), "{err}");
        let bad = KdConfig { alpha: 2.0, ..cfg };
        assert!(matches!(
            kd_loss(&mut g, s, t, &[0, 1], &bad),
            Err(DistillError::BadHyperParameter { name: "alpha", .. })
        ));
    }
}
