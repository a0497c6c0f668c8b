//! BatchNorm recalibration: new moving statistics for weights that changed under them.
//!
//! A BatchNorm's moving mean and variance are averages over the batches of training, taken with
//! the weights of those steps (Keras' momentum 0.99 remembers the last ~100 steps). Pruning
//! changes the weights upstream of every BatchNorm at once, at each mask update: until ~100
//! more steps have passed, inference normalises with statistics of weights that are gone, which
//! is why a pruned ResNet's validation accuracy drops in the first fine-tune epoch.
//! [`recalibrate_batch_norm`] re-estimates them from the current weights, as PyTorch's
//! `torch.optim.swa_utils.update_bn` does after weight averaging: forward passes with batch
//! statistics, the moving statistics replaced by the equal-weight average over the batches
//! (its `momentum=None`), no weight touched.

use ndarray::{ArrayD, ArrayViewD, Axis};
use pare_tensor::nn::Layer;
use pare_tensor::{Graph, Model, TensorError};

use crate::error::Result;
use crate::strip::check_copyable;

/// Re-estimates the moving mean and variance of every BatchNorm of `model` from the first
/// `batches` batches of `batch_size` examples of `x` (`[n, input_shape...]`; fewer when `x` is
/// shorter): each batch runs forward with batch statistics at every BatchNorm (so each one sees
/// its inputs as the layers before it normalise them in training) and no dropout, and each
/// moving statistic becomes the mean of the batches' statistics. Weights are not changed, nor
/// anything of a model without BatchNorm. Returns the number of batches used.
///
/// Call it after [`PruneCallback::strip`](crate::PruneCallback::strip) or after any change of
/// weights made outside training (see the [module documentation](self)).
///
/// ```
/// use ndarray::{Array4, IxDyn};
/// use pare_prune::recalibrate_batch_norm;
/// use pare_tensor::{models, nn::Layer};
///
/// let mut model = models::tiny_residual(3, 0);
/// let x = Array4::<f32>::from_shape_fn((64, 28, 28, 1), |(n, y, x, _)| ((n + y * x) % 7) as f32 / 7.0);
/// assert_eq!(recalibrate_batch_norm(&mut model, x.view().into_dyn(), 32, 4)?, 2);
/// let Some(Layer::BatchNorm(bn)) = model.layer("bn") else { unreachable!() };
/// assert!(bn.moving_mean.value.iter().any(|&m| m != 0.0)); // it was all zero
/// # Ok::<(), pare_prune::PruneError>(())
/// ```
///
/// # Errors
/// [`PruneError::Tensor`](crate::PruneError::Tensor) for a zero `batch_size` or `batches`, a
/// batch of the wrong shape, no examples, or a non-finite input;
/// [`PruneError::Unsupported`](crate::PruneError::Unsupported) for a model with a custom layer.
/// Nothing is changed on an error.
pub fn recalibrate_batch_norm(
    model: &mut Model,
    x: ArrayViewD<'_, f32>,
    batch_size: usize,
    batches: usize,
) -> Result<usize> {
    for (name, v) in [("batch_size", batch_size), ("batches", batches)] {
        if v == 0 {
            return Err(TensorError::BadHyperParameter {
                name,
                value: "0".into(),
                reason: "must be >= 1",
            }
            .into());
        }
    }
    model.check_input(x.shape())?;
    let n = x.shape()[0];
    if n == 0 {
        return Err(TensorError::Empty("recalibration data").into());
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(TensorError::NonFinite {
            what: "recalibration data".into(),
            index,
        }
        .into());
    }
    if !model.uses_batch_statistics() {
        return Ok(0);
    }
    check_copyable(model, "recalibrate_batch_norm")?;
    // With momentum 0 the state a training forward records is the batch's own statistics.
    let mut probe = model.clone();
    for l in &mut probe.layers {
        match l {
            Layer::BatchNorm(b) => b.config.momentum = 0.0,
            Layer::Dropout(d) => d.rate = 0.0,
            _ => {}
        }
    }
    let used = batches.min(n.div_ceil(batch_size));
    let mut sums: Vec<(String, ArrayD<f64>)> = Vec::new();
    for b in 0..used {
        let rows = b * batch_size..((b + 1) * batch_size).min(n);
        let mut g = Graph::inference();
        g.set_training_layers(true);
        let v = g.constant(x.slice_axis(Axis(0), rows.into()).to_owned());
        probe.forward(&mut g, v);
        for (name, stat) in g.take_state_updates() {
            let stat = stat.mapv(f64::from);
            match sums.iter_mut().find(|(n, _)| *n == name) {
                Some((_, s)) => *s += &stat,
                None => sums.push((name, stat)),
            }
        }
    }
    let means = sums
        .into_iter()
        .map(|(name, s)| (name, s.mapv(|v| (v / used as f64) as f32)))
        .collect();
    model.apply_state_updates(means)?;
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{Array4, IxDyn};
    use pare_tensor::models::tiny_residual;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn images(n: usize, seed: u64) -> ArrayD<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        Array4::from_shape_simple_fn((n, 28, 28, 1), || rng.random_range(0.0f32..1.0)).into_dyn()
    }

    fn bn<'a>(m: &'a Model, name: &str) -> &'a pare_tensor::nn::BatchNorm {
        match m.layer(name) {
            Some(Layer::BatchNorm(b)) => b,
            _ => panic!("{name} is no BatchNorm"),
        }
    }

    #[test]
    fn moving_statistics_are_the_mean_of_the_batch_statistics() {
        let mut model = tiny_residual(3, 1);
        let x = images(40, 2);
        let before: Vec<_> = model.params().into_iter().cloned().collect();
        // 40 examples in batches of 16: 16, 16 and 8.
        assert_eq!(
            recalibrate_batch_norm(&mut model, x.view(), 16, 10).unwrap(),
            3
        );
        let after: Vec<_> = model.params().into_iter().cloned().collect();
        assert_eq!(after, before, "weights unchanged");
        // The first BatchNorm reads the stem conv directly: its statistics are the average
        // of each batch's per-channel mean and biased variance of the conv's outputs, computed
        // here independently from the conv's inference output.
        let conv_only = Model::functional(&[28, 28, 1])
            .node(model.layer("conv").unwrap().clone(), &["input"])
            .build()
            .unwrap();
        let mut want_mean = [0.0f64; 4];
        let mut want_var = [0.0f64; 4];
        for rows in [0..16, 16..32, 32..40] {
            let xb = x.slice_axis(Axis(0), rows.into()).to_owned();
            let mut g = Graph::inference();
            let v = g.constant(xb);
            let y = conv_only.forward(&mut g, v);
            let y = g.value(y);
            for c in 0..4 {
                let vals: Vec<f64> = y.index_axis(Axis(3), c).iter().map(|&v| v as f64).collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64;
                want_mean[c] += m / 3.0;
                want_var[c] += var / 3.0;
            }
        }
        let b = bn(&model, "bn");
        for c in 0..4 {
            assert_abs_diff_eq!(
                b.moving_mean.value[[c]] as f64,
                want_mean[c],
                epsilon = 1e-5
            );
            assert_abs_diff_eq!(
                b.moving_variance.value[[c]] as f64,
                want_var[c],
                epsilon = 1e-5
            );
        }
        // Every BatchNorm moved off its initial statistics (zero mean, unit variance).
        for name in ["bn", "b_bn1", "b_bn2"] {
            assert!(bn(&model, name).moving_mean.value.iter().all(|&m| m != 0.0));
        }
        // Recalibrating twice gives the same statistics: they depend on the weights only.
        let once = model
            .non_trainable_params()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        recalibrate_batch_norm(&mut model, x.view(), 16, 10).unwrap();
        let twice = model
            .non_trainable_params()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        for (a, b) in once.iter().zip(&twice) {
            for (p, q) in a.value.iter().zip(&b.value) {
                assert_abs_diff_eq!(p, q, epsilon = 1e-6);
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_and_change_nothing() {
        let mut model = tiny_residual(3, 1);
        let before = model
            .non_trainable_params()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        let x = images(4, 0);
        assert!(recalibrate_batch_norm(&mut model, x.view(), 0, 1).is_err());
        assert!(recalibrate_batch_norm(&mut model, x.view(), 2, 0).is_err());
        let wrong = ArrayD::<f32>::zeros(IxDyn(&[2, 27, 28, 1]));
        assert!(recalibrate_batch_norm(&mut model, wrong.view(), 2, 1).is_err());
        let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 28, 28, 1]));
        assert!(recalibrate_batch_norm(&mut model, empty.view(), 2, 1).is_err());
        let mut nan = images(2, 0);
        nan[[1, 2, 3, 0]] = f32::NAN;
        assert!(recalibrate_batch_norm(&mut model, nan.view(), 2, 1).is_err());
        let after = model
            .non_trainable_params()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(before, after);
        // No BatchNorm: nothing to do.
        let mut chain = pare_tensor::models::small_cnn(0);
        assert_eq!(
            recalibrate_batch_norm(&mut chain, x.view(), 2, 1).unwrap(),
            0
        );
    }
}
