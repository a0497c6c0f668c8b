//! BatchNorm folding: a linear conv or dense layer followed by a BatchNorm becomes one layer
//! for inference, as every int8 converter (TFLite's, PyTorch's `fuse_conv_bn_eval`) does it.
//!
//! In inference a BatchNorm is `y = z · s + t` per output channel with
//! `s = γ / sqrt(moving_var + ε)` and `t = β − moving_mean · s`
//! ([`BatchNorm::scale_and_offset`]). For `z = x ∗ W + b` that is `x ∗ (W · s) + (b · s + t)`:
//! the kernel's output channel `o` scaled by `s[o]`, the bias replaced by `b · s + t`.
//!
//! ```
//! use pare_tensor::nn::{BatchNorm, Conv2d, Flatten, Sequential};
//! use pare_tensor::{fold_batch_norm, train::predict};
//! use ndarray::ArrayD;
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! let mut rng = StdRng::seed_from_u64(0);
//! let mut bn = BatchNorm::new("bn", 2);
//! bn.moving_mean.value.fill(0.3);
//! bn.moving_variance.value.fill(4.0);
//! let model = Sequential::new(&[4, 4, 1])
//!     .push(Conv2d::new("conv", 1, 2, [3, 3], &mut rng).use_bias(false))
//!     .push(bn)
//!     .push(Flatten::new("flat"));
//! let folded = fold_batch_norm(&model)?;
//! assert_eq!(folded.layers.len(), 2);
//! let x = ArrayD::from_elem(ndarray::IxDyn(&[1, 4, 4, 1]), 0.5f32);
//! let (a, b) = (predict(&model, x.view(), 1)?, predict(&folded, x.view(), 1)?);
//! assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-5));
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```

use crate::error::{Result, TensorError};
use crate::graph::Activation;
use crate::nn::{BatchNorm, Layer, Model, Param, Sequential};

/// A copy of `model` with every BatchNorm that directly follows a `Conv2d`, `DepthwiseConv2d`
/// or `Dense` without activation folded into that layer (which then uses its bias). The folded
/// model computes what `model` computes in inference (moving statistics), to float rounding.
///
/// A BatchNorm after anything else (the input, a pool, a layer with a fused activation) cannot
/// fold and is left in place. In a graph model the layer must feed only the BatchNorm; the
/// folded layer takes the BatchNorm's place and name in the wiring of the nodes after it.
///
/// # Errors
/// [`TensorError::BadLayer`] for a model with a custom layer, which cannot be copied.
pub fn fold_batch_norm(model: &Sequential) -> Result<Sequential> {
    if let Some(l) = model.layers.iter().find(|l| matches!(l, Layer::Custom(_))) {
        return Err(TensorError::BadLayer {
            layer: l.module().name().to_string(),
            reason: "fold_batch_norm cannot copy a custom layer".into(),
        });
    }
    if !model.is_sequential() {
        return Ok(fold_graph(model));
    }
    let mut out = Sequential::new(&model.input_shape);
    let mut layers = model.layers.iter().peekable();
    while let Some(layer) = layers.next() {
        let Some(Layer::BatchNorm(bn)) = layers.peek() else {
            out.layers.push(layer.clone());
            continue;
        };
        match fold_pair(layer, bn) {
            Some(l) => {
                out.layers.push(l);
                layers.next();
            }
            None => out.layers.push(layer.clone()),
        }
    }
    Ok(out)
}

/// The graph case of [`fold_batch_norm`]: each BatchNorm whose one input is a foldable layer
/// feeding nothing else is replaced by that layer, folded; the nodes that took the BatchNorm
/// take the layer.
fn fold_graph(model: &Model) -> Model {
    let mut layers: Vec<Option<Layer>> = model.layers.iter().cloned().map(Some).collect();
    let mut wiring = model.wiring.clone();
    for (j, layer) in model.layers.iter().enumerate() {
        let Layer::BatchNorm(bn) = layer else {
            continue;
        };
        let Some([source]) = model.wiring.get(&bn.name).map(Vec::as_slice) else {
            continue;
        };
        let Some(i) = model
            .layers
            .iter()
            .position(|l| l.module().name() == source)
        else {
            continue;
        };
        if model.consumers_of(source) != [bn.name.as_str()] {
            continue;
        }
        let Some(folded) = layers[i].as_ref().and_then(|l| fold_pair(l, bn)) else {
            continue;
        };
        // The folded layer moves to the BatchNorm's slot: its own inputs still come before
        // it, and everything that took the BatchNorm comes after.
        layers[i] = None;
        layers[j] = Some(folded);
        wiring.remove(&bn.name);
        for inputs in wiring.values_mut() {
            for name in inputs.iter_mut().filter(|n| **n == bn.name) {
                name.clone_from(source);
            }
        }
    }
    Model {
        input_shape: model.input_shape.clone(),
        layers: layers.into_iter().flatten().collect(),
        wiring,
    }
}

/// `layer` with `bn` folded into it, using its bias; `None` when it cannot take it.
fn fold_pair(layer: &Layer, bn: &BatchNorm) -> Option<Layer> {
    let folded = match layer {
        Layer::Conv2d(c) if c.activation == Activation::Linear => {
            let mut c = c.clone();
            fold_into(&mut c.kernel, &mut c.bias, bn).map(|_| Layer::Conv2d(c))
        }
        Layer::Dense(d) if d.activation == Activation::Linear => {
            let mut d = d.clone();
            fold_into(&mut d.kernel, &mut d.bias, bn).map(|_| Layer::Dense(d))
        }
        Layer::DepthwiseConv2d(c) if c.activation == Activation::Linear => {
            let mut c = c.clone();
            fold_into(&mut c.kernel, &mut c.bias, bn).map(|_| Layer::DepthwiseConv2d(c))
        }
        _ => None,
    };
    let mut l = folded?;
    match &mut l {
        Layer::Conv2d(c) => c.use_bias = true,
        Layer::Dense(d) => d.use_bias = true,
        Layer::DepthwiseConv2d(c) => c.use_bias = true,
        _ => unreachable!("fold_batch_norm: only weighted layers fold"),
    }
    Some(l)
}

/// Scales each output channel of `kernel` (the last axis, or for a depthwise kernel the last
/// two flattened, which is the same memory order) and rewrites the bias. `None`, changing
/// nothing, when the channel counts differ (the model would not chain; left to its checks).
fn fold_into(kernel: &mut Param, bias: &mut Param, bn: &BatchNorm) -> Option<()> {
    let (scale, offset) = bn.scale_and_offset();
    let oc = scale.len();
    if bias.value.len() != oc || !kernel.value.len().is_multiple_of(oc.max(1)) || oc == 0 {
        return None;
    }
    let mut k = kernel.value.as_standard_layout().into_owned();
    for row in k
        .as_slice_mut()
        .expect("standard layout")
        .chunks_exact_mut(oc)
    {
        for (w, s) in row.iter_mut().zip(&scale) {
            *w *= s;
        }
    }
    kernel.value = k;
    for ((b, s), t) in bias.value.iter_mut().zip(&scale).zip(&offset) {
        *b = *b * s + t;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Padding;
    use crate::nn::{Conv2d, Dense, DepthwiseConv2d, Flatten, GlobalAveragePool2d, ReLU};
    use crate::train::predict;
    use ndarray::{ArrayD, IxDyn};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn trained_like_bn(name: &str, c: usize, rng: &mut StdRng) -> BatchNorm {
        let mut bn = BatchNorm::new(name, c);
        let mut fill = |p: &mut Param, lo: f32, hi: f32| {
            p.value.mapv_inplace(|_| rng.random_range(lo..hi));
        };
        fill(&mut bn.gamma, 0.5, 2.0);
        fill(&mut bn.beta, -1.0, 1.0);
        fill(&mut bn.moving_mean, -0.5, 0.5);
        fill(&mut bn.moving_variance, 0.1, 3.0);
        bn
    }

    fn assert_close(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) {
        assert_eq!(a.shape(), b.shape());
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{x} vs {y} (differ by {})",
                (x - y).abs()
            );
        }
    }

    #[test]
    fn folded_conv_depthwise_and_dense_give_the_same_outputs() {
        let mut rng = StdRng::seed_from_u64(1);
        let model = Sequential::new(&[9, 9, 3])
            .push(
                Conv2d::new("conv", 3, 8, [3, 3], &mut rng)
                    .padding(Padding::Same)
                    .use_bias(false),
            )
            .push(trained_like_bn("bn1", 8, &mut rng))
            .push(ReLU::new("relu"))
            .push(DepthwiseConv2d::new("dw", 8, [3, 3], &mut rng).strides(2))
            .push(trained_like_bn("bn2", 8, &mut rng))
            .push(GlobalAveragePool2d::new("gap"))
            .push(Dense::new("dense", 8, 5, &mut rng))
            .push(trained_like_bn("bn3", 5, &mut rng));
        let folded = fold_batch_norm(&model).unwrap();
        let kinds: Vec<_> = folded
            .layers
            .iter()
            .map(|l| l.module().name().to_string())
            .collect();
        assert_eq!(kinds, ["conv", "relu", "dw", "gap", "dense"]);
        assert!(folded.non_trainable_params().is_empty());
        let x = ArrayD::from_shape_simple_fn(IxDyn(&[6, 9, 9, 3]), || rng.random_range(0.0..1.0));
        assert_close(
            &predict(&model, x.view(), 6).unwrap(),
            &predict(&folded, x.view(), 6).unwrap(),
        );
    }

    #[test]
    fn a_batch_norm_that_cannot_fold_stays() {
        let mut rng = StdRng::seed_from_u64(2);
        let model = Sequential::new(&[4, 4, 2])
            .push(trained_like_bn("bn0", 2, &mut rng))
            .push(Conv2d::new("conv", 2, 3, [3, 3], &mut rng).activation(Activation::Relu))
            .push(trained_like_bn("bn1", 3, &mut rng))
            .push(Flatten::new("flat"));
        let folded = fold_batch_norm(&model).unwrap();
        assert_eq!(folded.layers.len(), 4);
        let x = ArrayD::from_elem(IxDyn(&[1, 4, 4, 2]), 0.25f32);
        assert_eq!(
            predict(&model, x.view(), 1).unwrap(),
            predict(&folded, x.view(), 1).unwrap()
        );
    }
}
