//! Feature (hint) distillation after FitNets (Romero et al., *FitNets: Hints for Thin Deep
//! Nets*, 2015): the student's intermediate activation, mapped by a learned 1x1 convolution to
//! the teacher's channel count, is pulled towards the teacher's activation by a mean squared
//! error.

use crate::error::{DistillError, Result};
use ndarray::ArrayD;
use pare_tensor::nn::glorot_uniform;
use pare_tensor::{Graph, Padding, Param, Sequential, Var};
use rand::{SeedableRng, rngs::StdRng};

/// Name of the projection parameter, chosen so it cannot be a `<layer>.kernel` of a model
/// built from the usual layer names; [`Hint::new`] still checks for a clash.
pub const PROJECTION_NAME: &str = "hint_projection.kernel";

/// Which activations to match and how much the hint counts.
#[derive(Debug, Clone, PartialEq)]
pub struct HintConfig {
    /// Name of the student layer whose output is the hint's input.
    pub student_layer: String,
    /// Name of the teacher layer whose output is the target.
    pub teacher_layer: String,
    /// Weight of the hint loss: total = kd_loss + beta · hint_mse. Must be finite and >= 0.
    pub beta: f32,
}

impl HintConfig {
    /// The same layer name on both sides (the reference teacher and student share names).
    pub fn same_layer(layer: &str, beta: f32) -> HintConfig {
        HintConfig {
            student_layer: layer.into(),
            teacher_layer: layer.into(),
            beta,
        }
    }

    /// Checks that `beta` is finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(DistillError::BadHyperParameter {
                name: "beta",
                value: self.beta.to_string(),
                reason: "must be >= 0",
            });
        }
        Ok(())
    }
}

/// A configured hint: the layer pair and the learned projection `[1, 1, c_student, c_teacher]`.
#[derive(Debug, Clone)]
pub struct Hint {
    cfg: HintConfig,
    projection: Param,
}

/// Per-example output shape of the layer called `name`.
pub(crate) fn layer_output_shape(
    model: &Sequential,
    which: &'static str,
    name: &str,
) -> Result<Vec<usize>> {
    // Every node's shape, so a graph model's layers count as wired, not as a chain.
    for (layer, shape) in model.layers.iter().zip(model.node_shapes()?) {
        if layer.module().name() == name {
            return Ok(shape);
        }
    }
    Err(DistillError::UnknownLayer {
        model: which,
        layer: name.to_string(),
        available: model
            .layers
            .iter()
            .map(|l| l.module().name().to_string())
            .collect(),
    })
}

/// `[h, w, c]` of an NHWC activation or `[1, 1, c]` of a `[c]` feature vector.
fn as_hwc(shape: &[usize]) -> Option<[usize; 3]> {
    match *shape {
        [h, w, c] => Some([h, w, c]),
        [c] => Some([1, 1, c]),
        _ => None,
    }
}

impl Hint {
    /// Checks the layer pair against both models and initialises the projection
    /// (Glorot-uniform from `seed`, as a Keras `Conv2D(c_teacher, 1)` would be).
    ///
    /// # Errors
    /// [`DistillError::UnknownLayer`] for a missing layer, [`DistillError::ShapeMismatch`]
    /// when the activations are not NHWC (or flat) or their spatial sizes differ,
    /// [`DistillError::BadHyperParameter`] for a bad `beta` or a student parameter already
    /// called [`PROJECTION_NAME`].
    pub fn new(
        student: &Sequential,
        teacher: &Sequential,
        cfg: HintConfig,
        seed: u64,
    ) -> Result<Hint> {
        cfg.validate()?;
        let s = layer_output_shape(student, "student", &cfg.student_layer)?;
        let t = layer_output_shape(teacher, "teacher", &cfg.teacher_layer)?;
        let mismatch = || DistillError::ShapeMismatch {
            what: "hint activations (spatial sizes must match)",
            student: s.clone(),
            teacher: t.clone(),
        };
        let (Some([sh, sw, cs]), Some([th, tw, ct])) = (as_hwc(&s), as_hwc(&t)) else {
            return Err(mismatch());
        };
        if (sh, sw) != (th, tw) || s.len() != t.len() {
            return Err(mismatch());
        }
        if student.param(PROJECTION_NAME).is_some() {
            return Err(DistillError::BadHyperParameter {
                name: "student_layer",
                value: PROJECTION_NAME.into(),
                reason: "the student already has a parameter with the hint projection's name",
            });
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let projection = Param::new(PROJECTION_NAME, glorot_uniform(&[1, 1, cs, ct], &mut rng));
        Ok(Hint { cfg, projection })
    }

    /// The configuration.
    pub fn config(&self) -> &HintConfig {
        &self.cfg
    }

    /// The projection kernel `[1, 1, c_student, c_teacher]`.
    pub fn projection(&self) -> &Param {
        &self.projection
    }

    /// The projection kernel, mutably (the optimizer updates it through
    /// [`pare_tensor::train::Objective::params_mut`]).
    pub fn projection_mut(&mut self) -> &mut Param {
        &mut self.projection
    }

    /// Records the hint loss of this step: the student feature is a var of `g`, the teacher
    /// feature a value computed elsewhere (entered as a constant).
    pub(crate) fn loss(&self, g: &mut Graph, student: Var, teacher: ArrayD<f32>) -> Result<Var> {
        let proj = g.param(&self.projection);
        let t = g.constant(teacher);
        hint_loss(g, student, t, proj)
    }
}

/// FitNets' hint loss: `mean((conv1x1(student, projection) − teacher)²)` over every element.
///
/// `student` is `[n, h, w, c_s]` (or `[n, c_s]`), `teacher` `[n, h, w, c_t]` (or `[n, c_t]`),
/// `projection` `[1, 1, c_s, c_t]`.
///
/// # Errors
/// [`DistillError::ShapeMismatch`] when the ranks, batch or spatial sizes differ or the
/// projection does not map `c_s` to `c_t` channels.
pub fn hint_loss(g: &mut Graph, student: Var, teacher: Var, projection: Var) -> Result<Var> {
    let (s, t) = (g.shape(student).to_vec(), g.shape(teacher).to_vec());
    let p = g.shape(projection).to_vec();
    let flat = s.len() == 2 && t.len() == 2;
    let nhwc = s.len() == 4 && t.len() == 4 && s[1..3] == t[1..3];
    if !(flat || nhwc) || s[0] != t[0] {
        return Err(DistillError::ShapeMismatch {
            what: "hint_loss activations (same batch and spatial size)",
            student: s,
            teacher: t,
        });
    }
    let (cs, ct) = (s[s.len() - 1], t[t.len() - 1]);
    if p != [1, 1, cs, ct] {
        return Err(DistillError::ShapeMismatch {
            what: "hint_loss projection (expected [1, 1, c_student, c_teacher])",
            student: p,
            teacher: vec![1, 1, cs, ct],
        });
    }
    let (x, target) = if flat {
        (
            g.reshape(student, &[s[0], 1, 1, cs]),
            g.reshape(teacher, &[t[0], 1, 1, ct]),
        )
    } else {
        (student, teacher)
    };
    let projected = g.conv2d(x, projection, [1, 1], Padding::Valid);
    let diff = g.sub(projected, target);
    let sq = g.mul(diff, diff);
    Ok(g.mean(sq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{IxDyn, array};
    use pare_tensor::gradcheck::max_gradient_error;
    use pare_tensor::models::teacher_cnn;
    use rand::Rng;

    fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(-1.0..1.0))
    }

    #[test]
    fn hand_worked_value() {
        // One example, 1x2 positions, 2 student channels -> 1 teacher channel, projection
        // [0.5, -1]:
        //   position 0: 0.5*1 + (-1)*2 = -1.5, target 0.5 -> diff -2.0
        //   position 1: 0.5*3 + (-1)*(-1) = 2.5, target 1.5 -> diff 1.0
        //   mean of squares = (4 + 1) / 2 = 2.5
        let mut g = Graph::new();
        let s = g.constant(array![[[[1.0f32, 2.0], [3.0, -1.0]]]].into_dyn());
        let t = g.constant(array![[[[0.5f32], [1.5]]]].into_dyn());
        let p = g.constant(ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 1]), vec![0.5, -1.0]).unwrap());
        let l = hint_loss(&mut g, s, t, p).unwrap();
        assert_abs_diff_eq!(g.value(l)[[]], 2.5, epsilon = 1e-6);
    }

    #[test]
    fn gradient_matches_central_differences() {
        let s = random(&[2, 3, 2, 3], 1);
        let t = random(&[2, 3, 2, 4], 2);
        let p = random(&[1, 1, 3, 4], 3);
        let err = max_gradient_error(&[s, t, p], 1e-2, &|g, v| {
            hint_loss(g, v[0], v[1], v[2]).unwrap()
        });
        assert!(err < 1e-2, "relative gradient error {err}");
        let (s, t, p) = (
            random(&[3, 5], 4),
            random(&[3, 2], 5),
            random(&[1, 1, 5, 2], 6),
        );
        let err = max_gradient_error(&[s, t, p], 1e-2, &|g, v| {
            hint_loss(g, v[0], v[1], v[2]).unwrap()
        });
        assert!(err < 1e-2, "relative gradient error (flat) {err}");
    }

    #[test]
    fn new_checks_layers_shapes_and_beta() {
        let student = teacher_cnn(2, 4, 0);
        let teacher = teacher_cnn(8, 16, 1);
        let h = Hint::new(
            &student,
            &teacher,
            HintConfig::same_layer("leaky_re_lu", 1.0),
            7,
        )
        .unwrap();
        assert_eq!(h.projection().value.shape(), &[1, 1, 2, 8]);
        let h = Hint::new(
            &student,
            &teacher,
            HintConfig::same_layer("conv2d_1", 1.0),
            7,
        )
        .unwrap();
        assert_eq!(h.projection().value.shape(), &[1, 1, 4, 16]);
        let flat = HintConfig::same_layer("dense", 0.5);
        assert_eq!(
            Hint::new(&student, &teacher, flat, 0)
                .unwrap()
                .projection()
                .value
                .shape(),
            &[1, 1, 10, 10]
        );

        let err =
            Hint::new(&student, &teacher, HintConfig::same_layer("conv9", 1.0), 0).unwrap_err();
        assert!(
            matches!(&err, DistillError::UnknownLayer { model: "student", layer, available }
                if layer == "conv9" && available.len() == 6),
            "{err}"
        );
        let cross = HintConfig {
            student_layer: "conv2d".into(),
            teacher_layer: "conv2d_1".into(),
            beta: 1.0,
        };
        let err = Hint::new(&student, &teacher, cross, 0).unwrap_err();
        assert!(
            matches!(&err, DistillError::ShapeMismatch { student, teacher, .. }
                if student == &[14, 14, 2] && teacher == &[7, 7, 16]),
            "{err}"
        );
        let flat_vs_map = HintConfig {
            student_layer: "flatten".into(),
            teacher_layer: "conv2d_1".into(),
            beta: 1.0,
        };
        assert!(matches!(
            Hint::new(&student, &teacher, flat_vs_map, 0),
            Err(DistillError::ShapeMismatch { .. })
        ));
        for beta in [-1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                Hint::new(
                    &student,
                    &teacher,
                    HintConfig::same_layer("conv2d", beta),
                    0
                ),
                Err(DistillError::BadHyperParameter { name: "beta", .. })
            ));
        }
    }

    #[test]
    fn mismatched_activations_are_errors() {
        let mut g = Graph::new();
        let s = g.constant(random(&[2, 4, 4, 3], 0));
        let t = g.constant(random(&[2, 2, 2, 5], 1));
        let p = g.constant(random(&[1, 1, 3, 5], 2));
        assert!(matches!(
            hint_loss(&mut g, s, t, p),
            Err(DistillError::ShapeMismatch { .. })
        ));
        let t = g.constant(random(&[2, 4, 4, 5], 1));
        let wrong_p = g.constant(random(&[1, 1, 5, 3], 2));
        let err = hint_loss(&mut g, s, t, wrong_p).unwrap_err();
        assert!(err.to_string().contains("projection"), "{err}");
        let other_batch = g.constant(random(&[3, 4, 4, 5], 1));
        assert!(matches!(
            hint_loss(&mut g, s, other_batch, p),
            Err(DistillError::ShapeMismatch { .. })
        ));
    }
}
