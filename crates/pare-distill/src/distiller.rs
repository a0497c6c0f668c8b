//! The teacher → student training step, as a [`pare_tensor::train::Objective`] for `Fit`.

use crate::cache::TeacherCache;
use crate::error::{DistillError, Result};
use crate::hint::{Hint, layer_output_shape};
use crate::loss::{KdConfig, kd_loss_parts};
use ndarray::{ArrayD, ArrayViewD};
use pare_tensor::train::{Batch, Evaluation, Objective, StepVars, evaluate};
use pare_tensor::{Graph, Param, Sequential, Var};

/// Trains a student against a frozen teacher: plug it into
/// `Fit::new(cfg).objective(&mut distiller).run(&mut student, ...)`.
///
/// The teacher only ever runs forward, on its own [`Graph::inference`] graph, and enters the
/// student's graph as constant logits (and a constant feature map for a [`Hint`]): no
/// backward work and no teacher parameter in the gradients. With a [`TeacherCache`] the
/// logits are looked up by `batch.indices` instead of recomputed.
#[derive(Debug, Clone)]
pub struct Distiller<'t> {
    teacher: &'t Sequential,
    cache: Option<&'t TeacherCache>,
    cfg: KdConfig,
    hint: Option<Hint>,
}

impl<'t> Distiller<'t> {
    /// A distiller that runs `teacher` on every batch.
    ///
    /// # Errors
    /// An invalid `cfg`, or a teacher whose layers do not chain.
    pub fn new(teacher: &'t Sequential, cfg: KdConfig) -> Result<Distiller<'t>> {
        cfg.validate()?;
        teacher.output_shape()?;
        Ok(Distiller {
            teacher,
            cache: None,
            cfg,
            hint: None,
        })
    }

    /// Uses precomputed teacher logits (computed on the same `x` as given to `fit`).
    ///
    /// # Errors
    /// [`DistillError::ShapeMismatch`] if the cache's class count is not the teacher's.
    pub fn with_cache(mut self, cache: &'t TeacherCache) -> Result<Distiller<'t>> {
        let out = self.teacher.output_shape()?;
        if out != [cache.classes()] {
            return Err(DistillError::ShapeMismatch {
                what: "teacher cache classes vs teacher output",
                student: vec![cache.classes()],
                teacher: out,
            });
        }
        self.cache = Some(cache);
        Ok(self)
    }

    /// Adds a feature (hint) loss: total = kd_loss + beta · hint_mse.
    ///
    /// # Errors
    /// [`DistillError::UnknownLayer`] if the hint's teacher layer is not in this teacher.
    pub fn with_hint(mut self, hint: Hint) -> Result<Distiller<'t>> {
        layer_output_shape(self.teacher, "teacher", &hint.config().teacher_layer)?;
        self.hint = Some(hint);
        Ok(self)
    }

    /// The loss settings.
    pub fn config(&self) -> &KdConfig {
        &self.cfg
    }

    /// The hint, if any (its projection is trained along with the student).
    pub fn hint(&self) -> Option<&Hint> {
        self.hint.as_ref()
    }

    /// Takes the hint (and its trained projection) out of the distiller.
    pub fn into_hint(self) -> Option<Hint> {
        self.hint
    }

    /// True when teacher logits come from a [`TeacherCache`].
    pub fn uses_cache(&self) -> bool {
        self.cache.is_some()
    }

    /// Scores the student alone (the teacher plays no part at evaluation time), as Keras'
    /// `Distiller.test_step` does: [`pare_tensor::train::evaluate`] on the student.
    pub fn evaluate(
        &self,
        student: &Sequential,
        x: ArrayViewD<'_, f32>,
        y: &[usize],
        batch_size: usize,
    ) -> Result<Evaluation> {
        Ok(evaluate(student, x, y, batch_size)?)
    }

    /// Teacher logits `[b, classes]` for the batch, plus the hint target when there is a hint.
    fn teacher_outputs(&self, batch: &Batch<'_>) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>)> {
        let hint_layer = self
            .hint
            .as_ref()
            .map(|h| h.config().teacher_layer.as_str());
        let cached = match self.cache {
            Some(c) => Some(c.gather(batch)?.into_dyn()),
            None => None,
        };
        match (cached, hint_layer) {
            (Some(logits), None) => Ok((logits, None)),
            // The logits are cached: run the teacher only as far as the hinted layer.
            (Some(logits), Some(layer)) => {
                let (mut g, x) = self.teacher_graph(batch)?;
                let feature = forward_until(self.teacher, &mut g, x, layer)?;
                Ok((logits, Some(g.value(feature).clone())))
            }
            (None, Some(layer)) => {
                let (mut g, x) = self.teacher_graph(batch)?;
                let (logits, taps) = self.teacher.forward_with_taps(&mut g, x, &[layer]);
                let feature = taps[0].ok_or_else(|| unknown(self.teacher, "teacher", layer))?;
                Ok((g.value(logits).clone(), Some(g.value(feature).clone())))
            }
            (None, None) => {
                let (mut g, x) = self.teacher_graph(batch)?;
                let logits = self.teacher.forward(&mut g, x);
                Ok((g.value(logits).clone(), None))
            }
        }
    }

    /// An inference graph holding the batch, for the teacher's forward pass.
    fn teacher_graph(&self, batch: &Batch<'_>) -> Result<(Graph, Var)> {
        self.teacher.check_input(batch.x.shape())?;
        let mut g = Graph::inference();
        let x = g.constant(batch.x.clone());
        Ok((g, x))
    }

    fn try_step(
        &self,
        g: &mut Graph,
        model: &Sequential,
        x: Var,
        batch: &Batch<'_>,
    ) -> Result<(StepVars, Vec<(&'static str, Var)>)> {
        let (teacher_logits, teacher_feature) = self.teacher_outputs(batch)?;
        let taps: Vec<&str> = self
            .hint
            .iter()
            .map(|h| h.config().student_layer.as_str())
            .collect();
        let (logits, features) = model.forward_with_taps(g, x, &taps);
        let t = g.constant(teacher_logits);
        let parts = kd_loss_parts(g, logits, t, batch.labels, &self.cfg)?;
        let mut metrics = vec![
            ("student_loss", parts.student_loss),
            ("distillation_loss", parts.distillation_loss),
        ];
        let mut loss = parts.total;
        if let (Some(hint), Some(target)) = (&self.hint, teacher_feature) {
            let layer = &hint.config().student_layer;
            let feature = features[0].ok_or_else(|| unknown(model, "student", layer))?;
            let h = hint.loss(g, feature, target)?;
            let weighted = g.scale(h, hint.config().beta);
            loss = g.add(loss, weighted);
            metrics.push(("hint_loss", h));
        }
        Ok((StepVars { loss, logits }, metrics))
    }
}

fn unknown(model: &Sequential, which: &'static str, layer: &str) -> DistillError {
    DistillError::UnknownLayer {
        model: which,
        layer: layer.to_string(),
        available: model
            .layers
            .iter()
            .map(|l| l.module().name().to_string())
            .collect(),
    }
}

/// Runs `model`'s layers up to and including `layer`; its output.
fn forward_until(model: &Sequential, g: &mut Graph, x: Var, layer: &str) -> Result<Var> {
    if !model.is_sequential() {
        // A graph model's layer order is not a chain: run it whole and tap the layer.
        let (_, taps) = model.forward_with_taps(g, x, &[layer]);
        return taps[0].ok_or_else(|| unknown(model, "teacher", layer));
    }
    let mut x = x;
    for l in &model.layers {
        x = l.module().forward(g, x);
        if l.module().name() == layer {
            return Ok(x);
        }
    }
    Err(unknown(model, "teacher", layer))
}

impl Objective for Distiller<'_> {
    fn step(
        &self,
        g: &mut Graph,
        model: &Sequential,
        x: Var,
        batch: &Batch<'_>,
    ) -> pare_tensor::Result<StepVars> {
        Ok(self.try_step(g, model, x, batch)?.0)
    }

    /// The step, with Keras' `Distiller` figures: `student_loss` (the hard-label
    /// cross-entropy, comparable with `val_loss`) and `distillation_loss` (T² · KL), plus
    /// `hint_loss` with a hint. `EpochLog::loss` stays the minimised total.
    fn step_with_metrics(
        &self,
        g: &mut Graph,
        model: &Sequential,
        x: Var,
        batch: &Batch<'_>,
    ) -> pare_tensor::Result<(StepVars, Vec<(&'static str, Var)>)> {
        Ok(self.try_step(g, model, x, batch)?)
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.hint.iter_mut().map(|h| h.projection_mut()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hint::{HintConfig, PROJECTION_NAME};
    use approx::assert_abs_diff_eq;
    use ndarray::IxDyn;
    use pare_tensor::models::teacher_cnn;
    use pare_tensor::optim::{Adam, AdamConfig};
    use pare_tensor::train::{Fit, FitConfig, gather};
    use pare_tensor::{Grads, TensorError};
    use rand::{SeedableRng, rngs::StdRng};

    /// Two classes: a bright top half or a bright bottom half, plus noise.
    fn toy_data(n: usize, seed: u64) -> (ArrayD<f32>, Vec<usize>) {
        pare_tensor::gradcheck::toy_halves(n, seed, 0.7, 0.3)
    }

    /// One step of `d` on the examples `idx`; the graph's node count, loss and gradients.
    fn one_step(
        d: &Distiller<'_>,
        student: &Sequential,
        x: &ArrayD<f32>,
        y: &[usize],
        idx: &[usize],
    ) -> (usize, f32, Grads) {
        let xb = gather(&x.view(), idx);
        let labels: Vec<usize> = idx.iter().map(|&i| y[i]).collect();
        let batch = Batch {
            x: &xb,
            labels: &labels,
            indices: idx,
            epoch: 0,
            step: 0,
        };
        let mut g = Graph::new();
        let xv = g.constant(xb.clone());
        let vars = d.step(&mut g, student, xv, &batch).unwrap();
        let loss = g.value(vars.loss)[[]];
        (g.len(), loss, g.backward(vars.loss))
    }

    #[test]
    fn teacher_gets_no_gradients_and_no_nodes_in_the_training_graph() {
        let (x, y) = toy_data(12, 0);
        // Same layer names, different sizes: a teacher parameter leaking into the student's
        // graph would show up under a student name with a teacher shape.
        let teacher = teacher_cnn(8, 16, 1);
        let student = teacher_cnn(2, 4, 2);
        let cache = TeacherCache::compute(&teacher, x.view(), 5).unwrap();
        let idx = [3usize, 7, 0, 11];
        let live = Distiller::new(&teacher, KdConfig::default()).unwrap();
        let cached = Distiller::new(&teacher, KdConfig::default())
            .unwrap()
            .with_cache(&cache)
            .unwrap();
        let (n_live, loss_live, grads_live) = one_step(&live, &student, &x, &y, &idx);
        let (n_cached, loss_cached, grads_cached) = one_step(&cached, &student, &x, &y, &idx);
        // The teacher adds no node to the student's graph whether it runs live or not.
        assert_eq!(n_live, n_cached);
        assert_abs_diff_eq!(loss_live, loss_cached, epsilon = 1e-5);
        for grads in [&grads_live, &grads_cached] {
            assert_eq!(grads.len(), student.params().len());
            for p in student.params() {
                assert_eq!(
                    grads.get(&p.name).unwrap().shape(),
                    p.value.shape(),
                    "{}",
                    p.name
                );
            }
        }
        for p in student.params() {
            let (a, b) = (
                grads_live.get(&p.name).unwrap(),
                grads_cached.get(&p.name).unwrap(),
            );
            for (u, v) in a.iter().zip(b.iter()) {
                assert_abs_diff_eq!(u, v, epsilon = 1e-4);
            }
        }
    }

    #[test]
    fn distillation_with_and_without_cache_trains_the_same() {
        let (x, y) = toy_data(40, 1);
        let teacher = teacher_cnn(4, 8, 3);
        let cache = TeacherCache::compute(&teacher, x.view(), 16).unwrap();
        let run = |use_cache: bool| {
            let mut student = teacher_cnn(2, 4, 4);
            let mut d = Distiller::new(
                &teacher,
                KdConfig {
                    alpha: 0.5,
                    temperature: 3.0,
                },
            )
            .unwrap();
            if use_cache {
                d = d.with_cache(&cache).unwrap();
            }
            let mut adam = Adam::new(AdamConfig::default()).unwrap();
            let cfg = FitConfig {
                epochs: 2,
                batch_size: 8,
                seed: 9,
                verbose: false,
                ..Default::default()
            };
            let h = Fit::new(cfg)
                .objective(&mut d)
                .run(&mut student, &mut adam, x.view(), &y)
                .unwrap();
            (student, h)
        };
        let (a, ha) = run(true);
        let (b, hb) = run(false);
        for (ea, eb) in ha.epochs.iter().zip(&hb.epochs) {
            assert_abs_diff_eq!(ea.loss, eb.loss, epsilon = 1e-4);
        }
        for (pa, pb) in a.params().iter().zip(b.params()) {
            for (u, v) in pa.value.iter().zip(pb.value.iter()) {
                assert_abs_diff_eq!(u, v, epsilon = 1e-3);
            }
        }
    }

    #[test]
    fn distilled_student_learns_and_evaluate_scores_the_student_alone() {
        let (x, y) = toy_data(96, 2);
        let (tx, ty) = toy_data(40, 3);
        let mut teacher = teacher_cnn(4, 8, 0);
        let adam_cfg = AdamConfig {
            learning_rate: 0.01,
            ..Default::default()
        };
        let mut adam = Adam::new(adam_cfg).unwrap();
        let cfg = FitConfig {
            epochs: 3,
            batch_size: 16,
            verbose: false,
            ..Default::default()
        };
        Fit::new(cfg.clone())
            .run(&mut teacher, &mut adam, x.view(), &y)
            .unwrap();
        let teacher_eval = evaluate(&teacher, tx.view(), &ty, 16).unwrap();
        assert!(teacher_eval.accuracy > 0.9, "{teacher_eval:?}");
        let cache = TeacherCache::compute(&teacher, x.view(), 32).unwrap();
        let mut student = teacher_cnn(2, 4, 1);
        let mut d = Distiller::new(&teacher, KdConfig::default())
            .unwrap()
            .with_cache(&cache)
            .unwrap();
        let before = d.evaluate(&student, tx.view(), &ty, 16).unwrap();
        let mut adam = Adam::new(adam_cfg).unwrap();
        let h = Fit::new(cfg)
            .objective(&mut d)
            .run(&mut student, &mut adam, x.view(), &y)
            .unwrap();
        assert!(h.epochs[2].loss < h.epochs[0].loss, "{h:?}");
        // Keras' Distiller figures: the total is α · student_loss + (1 − α) · distillation_loss
        // (α 0.1 by default), each a mean over the epoch.
        for e in &h.epochs {
            let (s, d) = (
                e.metric("student_loss").unwrap(),
                e.metric("distillation_loss").unwrap(),
            );
            let alpha = KdConfig::default().alpha;
            assert_abs_diff_eq!(e.loss, alpha * s + (1.0 - alpha) * d, epsilon = 1e-4);
        }
        let after = d.evaluate(&student, tx.view(), &ty, 16).unwrap();
        assert_eq!(after, evaluate(&student, tx.view(), &ty, 16).unwrap());
        assert!(
            after.accuracy > 0.9 && after.loss < before.loss,
            "{before:?} -> {after:?}"
        );
    }

    #[test]
    fn graph_models_distil_with_a_hint_at_a_merge_node() {
        use pare_tensor::models::tiny_residual;
        let (x, y) = toy_data(32, 7);
        let teacher = tiny_residual(2, 1);
        let mut student = tiny_residual(2, 2);
        // b_add sums the residual branch and the shortcut: only the wiring computes it.
        let cfg = HintConfig::same_layer("b_add", 1.0);
        let hint = Hint::new(&student, &teacher, cfg, 0).unwrap();
        let cache = TeacherCache::compute(&teacher, x.view(), 8).unwrap();
        let live = Distiller::new(&teacher, KdConfig::default())
            .unwrap()
            .with_hint(hint.clone())
            .unwrap();
        let cached = Distiller::new(&teacher, KdConfig::default())
            .unwrap()
            .with_cache(&cache)
            .unwrap()
            .with_hint(hint)
            .unwrap();
        let idx = [0usize, 5, 9, 30];
        let (_, loss_live, grads) = one_step(&live, &student, &x, &y, &idx);
        // The cached path runs the teacher only as far as the tap: the same feature.
        let (_, loss_cached, _) = one_step(&cached, &student, &x, &y, &idx);
        assert_abs_diff_eq!(loss_live, loss_cached, epsilon = 1e-5);
        for name in ["b_conv1.kernel", "conv.kernel", PROJECTION_NAME] {
            assert!(
                grads.get(name).unwrap().iter().any(|v| v.abs() > 0.0),
                "{name}"
            );
        }
        let mut d = live;
        let mut adam = Adam::new(AdamConfig {
            learning_rate: 0.01,
            ..Default::default()
        })
        .unwrap();
        let cfg = FitConfig {
            epochs: 3,
            batch_size: 8,
            verbose: false,
            ..Default::default()
        };
        let h = Fit::new(cfg)
            .objective(&mut d)
            .run(&mut student, &mut adam, x.view(), &y)
            .unwrap();
        assert!(h.epochs[2].loss < h.epochs[0].loss, "{h:?}");
    }

    #[test]
    fn hint_gradient_reaches_projection_and_student_and_the_loss_falls() {
        let (x, y) = toy_data(64, 4);
        let teacher = teacher_cnn(6, 8, 5);
        let mut student = teacher_cnn(2, 4, 6);
        let hint = Hint::new(
            &student,
            &teacher,
            HintConfig::same_layer("leaky_re_lu", 1.0),
            0,
        )
        .unwrap();
        let cache = TeacherCache::compute(&teacher, x.view(), 16).unwrap();
        let mut d = Distiller::new(&teacher, KdConfig::default())
            .unwrap()
            .with_hint(hint)
            .unwrap();

        // One step: gradient into the projection and every student parameter up to the tap.
        let (_, loss_hint, grads) = one_step(&d, &student, &x, &y, &[0, 1, 2, 3]);
        let gp = grads.get(PROJECTION_NAME).unwrap();
        assert_eq!(gp.shape(), &[1, 1, 2, 6]);
        assert!(gp.iter().any(|v| v.abs() > 0.0));
        assert!(
            grads
                .get("conv2d.kernel")
                .unwrap()
                .iter()
                .any(|v| v.abs() > 0.0)
        );
        let plain = Distiller::new(&teacher, KdConfig::default()).unwrap();
        let (_, loss_plain, _) = one_step(&plain, &student, &x, &y, &[0, 1, 2, 3]);
        assert!(
            loss_hint > loss_plain,
            "hint adds a positive term: {loss_hint} vs {loss_plain}"
        );

        // The cached path runs the teacher only up to the tap and gives the same loss.
        let hint2 = d.hint().unwrap().clone();
        let dc = Distiller::new(&teacher, KdConfig::default())
            .unwrap()
            .with_cache(&cache)
            .unwrap()
            .with_hint(hint2)
            .unwrap();
        let (_, loss_cached, _) = one_step(&dc, &student, &x, &y, &[0, 1, 2, 3]);
        assert_abs_diff_eq!(loss_hint, loss_cached, epsilon = 1e-5);

        // Training moves the projection and lowers the hint term.
        let proj_before = d.hint().unwrap().projection().value.clone();
        let hint_mse = |d: &Distiller<'_>, student: &Sequential| {
            let mut g = Graph::new();
            let xv = g.constant(x.clone());
            let (_, taps) = student.forward_with_taps(&mut g, xv, &["leaky_re_lu"]);
            let mut tg = Graph::inference();
            let txv = tg.constant(x.clone());
            let (_, t) = teacher.forward_with_taps(&mut tg, txv, &["leaky_re_lu"]);
            let target = tg.value(t[0].unwrap()).clone();
            let l = d
                .hint()
                .unwrap()
                .loss(&mut g, taps[0].unwrap(), target)
                .unwrap();
            g.value(l)[[]]
        };
        let mse_before = hint_mse(&d, &student);
        let mut adam = Adam::new(AdamConfig {
            learning_rate: 0.01,
            ..Default::default()
        })
        .unwrap();
        let cfg = FitConfig {
            epochs: 4,
            batch_size: 16,
            verbose: false,
            ..Default::default()
        };
        Fit::new(cfg)
            .objective(&mut d)
            .run(&mut student, &mut adam, x.view(), &y)
            .unwrap();
        let mse_after = hint_mse(&d, &student);
        assert!(
            mse_after < 0.5 * mse_before,
            "hint mse {mse_before} -> {mse_after}"
        );
        assert_ne!(d.hint().unwrap().projection().value, proj_before);
        assert_eq!(
            d.into_hint().unwrap().projection().value.shape(),
            &[1, 1, 2, 6]
        );
    }

    #[test]
    fn user_errors_come_back_as_errors() {
        let (x, y) = toy_data(8, 5);
        let teacher = teacher_cnn(2, 4, 0);
        let bad = KdConfig {
            alpha: 0.5,
            temperature: 0.0,
        };
        assert!(matches!(
            Distiller::new(&teacher, bad),
            Err(DistillError::BadHyperParameter {
                name: "temperature",
                ..
            })
        ));
        // A cache computed on other data fails inside fit as a callback error.
        let (other, _) = toy_data(8, 6);
        let cache = TeacherCache::compute(&teacher, other.view(), 4).unwrap();
        let mut d = Distiller::new(&teacher, KdConfig::default())
            .unwrap()
            .with_cache(&cache)
            .unwrap();
        let mut student = teacher_cnn(2, 2, 1);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let cfg = FitConfig {
            verbose: false,
            ..Default::default()
        };
        let err = Fit::new(cfg)
            .objective(&mut d)
            .run(&mut student, &mut adam, x.view(), &y)
            .unwrap_err();
        let TensorError::Callback(inner) = &err else {
            panic!("{err}")
        };
        assert!(matches!(
            inner.downcast_ref::<DistillError>(),
            Some(DistillError::CacheMismatch { .. })
        ));

        // A student without the hinted layer.
        let other_student = pare_tensor::models::small_cnn(0);
        let hint = Hint::new(
            &student,
            &teacher,
            HintConfig::same_layer("leaky_re_lu", 1.0),
            0,
        )
        .unwrap();
        let d = Distiller::new(&teacher, KdConfig::default())
            .unwrap()
            .with_hint(hint)
            .unwrap();
        let xb = gather(&x.view(), &[0, 1]);
        let batch = Batch {
            x: &xb,
            labels: &y[..2],
            indices: &[0, 1],
            epoch: 0,
            step: 0,
        };
        let mut g = Graph::new();
        let xv = g.constant(xb.clone());
        let err = d.step(&mut g, &other_student, xv, &batch).unwrap_err();
        assert!(
            err.to_string()
                .contains("student has no layer called \"leaky_re_lu\""),
            "{err}"
        );

        // Teacher and student disagreeing on the number of classes.
        let wide = pare_tensor::Sequential::new(&[28, 28, 1])
            .push(pare_tensor::nn::Flatten::new("flatten"))
            .push(pare_tensor::nn::Dense::new(
                "dense",
                784,
                3,
                &mut StdRng::seed_from_u64(0),
            ));
        let d = Distiller::new(&wide, KdConfig::default()).unwrap();
        let mut g = Graph::new();
        let xv = g.constant(xb.clone());
        let err = d.step(&mut g, &student, xv, &batch).unwrap_err();
        assert!(err.to_string().contains("kd_loss logits"), "{err}");
        // Inputs the teacher cannot take are the tensor error itself, not a wrapped one.
        let d = Distiller::new(&teacher, KdConfig::default()).unwrap();
        let odd = ArrayD::<f32>::zeros(IxDyn(&[2, 28, 28, 2]));
        let batch = Batch {
            x: &odd,
            labels: &y[..2],
            indices: &[0, 1],
            epoch: 0,
            step: 0,
        };
        let mut g = Graph::new();
        let xv = g.constant(xb);
        assert!(matches!(
            d.step(&mut g, &student, xv, &batch),
            Err(TensorError::InputShape { .. })
        ));
        let wrong_classes =
            TeacherCache::from_logits(ndarray::Array2::zeros((8, 3)), x.view()).unwrap();
        assert!(matches!(
            Distiller::new(&teacher, KdConfig::default())
                .unwrap()
                .with_cache(&wrong_classes),
            Err(DistillError::ShapeMismatch { .. })
        ));
    }
}
