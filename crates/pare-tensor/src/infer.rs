//! Inference without the autograd graph: a [`Sequential`] or graph model run straight on pare-tensor's kernels
//! (im2col + GEMM, bias, activation, max-pool), for batch-1 latency where
//! [`predict`](crate::train::predict), which records a graph and copies every weight into it per
//! call, would measure the graph rather than the model.
//!
//! ```
//! use pare_tensor::{infer, models::small_cnn, train::predict};
//! let model = small_cnn(0);
//! let x = ndarray::Array4::from_shape_fn((2, 28, 28, 1), |(n, r, c, _)| ((n + r * c) % 9) as f32 / 8.0)
//!     .into_dyn();
//! let lean = infer::forward(&model, x.view())?;
//! let graph = predict(&model, x.view(), 2)?;
//! for (a, b) in lean.iter().zip(graph.iter()) {
//!     assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()));
//! }
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```

use std::collections::HashMap;

use ndarray::{ArrayD, ArrayViewD, Axis, Ix2, Ix4, IxDyn};

use crate::INPUT;
use crate::error::{Result, TensorError};
use crate::kernels::conv::{Window, im2col};
use crate::kernels::gemm::matmul;
use crate::kernels::pool::max_pool;
use crate::nn::Layer;
use crate::{Activation, Sequential};

fn activate(y: &mut ArrayD<f32>, a: Activation) {
    match a {
        Activation::Linear => {}
        Activation::Relu => y.mapv_inplace(|v| v.max(0.0)),
        Activation::LeakyRelu(alpha) => y.mapv_inplace(|v| if v > 0.0 { v } else { alpha * v }),
    }
}

fn shape_err(layer: &str) -> impl Fn(ndarray::ShapeError) -> TensorError + '_ {
    move |e| bad(layer, e.to_string())
}

fn bad(layer: &str, reason: String) -> TensorError {
    TensorError::BadLayer {
        layer: layer.to_owned(),
        reason,
    }
}

/// The model's output for the batch `x` (NHWC, batch first), layer by layer on the kernels;
/// a graph model node by node along its wiring, `Add` and `Concatenate` merging branches.
/// BatchNorm runs on its moving statistics and Dropout is the identity, as in inference.
///
/// # Errors
/// [`TensorError::InputShape`] for input the model does not take; [`TensorError::BadLayer`]
/// for a layer with no graph-free path (a custom layer, average pooling, the newer
/// activations).
pub fn forward(model: &Sequential, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
    model.check_input(x.shape())?;
    let n = x.shape()[0];
    if model.is_sequential() {
        let mut v = x.to_owned();
        for layer in &model.layers {
            v = apply(layer, v, n)?;
        }
        return Ok(v);
    }
    let wiring = model.full_wiring();
    // Each node's output, dropped once its last consumer has read it.
    let mut left: HashMap<&str, usize> = HashMap::new();
    for inputs in wiring.values() {
        for i in inputs {
            *left.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut values: HashMap<&str, ArrayD<f32>> = HashMap::from([(INPUT, x.to_owned())]);
    let mut last = None;
    for layer in &model.layers {
        let name = layer.module().name();
        let inputs = wiring.get(name).map(Vec::as_slice).unwrap_or_default();
        let mut take = |i: &str| -> Result<ArrayD<f32>> {
            let count = left
                .get_mut(i)
                .ok_or_else(|| bad(name, format!("no input {i:?}")))?;
            *count -= 1;
            let v = if *count == 0 {
                values.remove(i)
            } else {
                values.get(i).cloned()
            };
            v.ok_or_else(|| bad(name, format!("input {i:?} is not computed before it")))
        };
        let args: Vec<ArrayD<f32>> = inputs.iter().map(|i| take(i)).collect::<Result<_>>()?;
        let out = match layer {
            Layer::Add(_) => {
                let mut it = args.into_iter();
                let first = it.next().ok_or_else(|| bad(name, "no inputs".into()))?;
                it.try_fold(first, |acc, v| {
                    if acc.shape() == v.shape() {
                        Ok(acc + v)
                    } else {
                        Err(bad(
                            name,
                            format!("adds {:?} and {:?}", acc.shape(), v.shape()),
                        ))
                    }
                })?
            }
            Layer::Concatenate(_) => {
                let views: Vec<_> = args.iter().map(|a| a.view()).collect();
                let axis = views.first().map_or(0, |v| v.ndim().saturating_sub(1));
                ndarray::concatenate(Axis(axis), &views).map_err(shape_err(name))?
            }
            _ => {
                let [v] = <[ArrayD<f32>; 1]>::try_from(args)
                    .map_err(|a| bad(name, format!("takes one input, wired to {}", a.len())))?;
                apply(layer, v, n)?
            }
        };
        values.insert(name, out);
        last = Some(name);
    }
    last.and_then(|l| values.remove(l))
        .ok_or_else(|| bad("model", "has no layers".into()))
}

/// One single-input layer on the kernels.
fn apply(layer: &Layer, v: ArrayD<f32>, n: usize) -> Result<ArrayD<f32>> {
    Ok(match layer {
        Layer::Conv2d(c) => {
            let x4 = v
                .view()
                .into_dimensionality::<Ix4>()
                .map_err(shape_err(&c.name))?;
            let [kh, kw, cin, cout] = c.kernel_shape();
            let (_, h, w, _) = x4.dim();
            let win = Window::new([n, h, w, cin], [kh, kw], c.strides, c.padding)
                .ok_or_else(|| bad(&c.name, format!("does not fit {:?}", x4.shape())))?;
            let cols = im2col(x4, &win);
            let k = c
                .kernel
                .value
                .view()
                .into_shape_with_order((kh * kw * cin, cout))
                .map_err(shape_err(&c.name))?;
            let mut y = matmul(cols.view(), k).into_dyn();
            y += &c.bias.value;
            activate(&mut y, c.activation);
            y.into_shape_with_order(IxDyn(&[n, win.oh, win.ow, cout]))
                .map_err(shape_err(&c.name))?
        }
        Layer::Dense(d) => {
            let x2 = v
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(shape_err(&d.name))?;
            let k = d
                .kernel
                .value
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(shape_err(&d.name))?;
            let mut y = matmul(x2, k).into_dyn();
            y += &d.bias.value;
            activate(&mut y, d.activation);
            y
        }
        Layer::MaxPool2d(p) => {
            let x4 = v
                .view()
                .into_dimensionality::<Ix4>()
                .map_err(shape_err(&p.name))?;
            let (_, h, w, c) = x4.dim();
            let win = Window::new([n, h, w, c], p.pool, p.strides, p.padding)
                .ok_or_else(|| bad(&p.name, format!("does not fit {:?}", x4.shape())))?;
            max_pool(x4, &win).into_dyn()
        }
        Layer::Flatten(f) => {
            let rest = v.len() / n.max(1);
            v.into_shape_with_order(IxDyn(&[n, rest]))
                .map_err(shape_err(&f.name))?
        }
        Layer::Reshape(r) => {
            let s: Vec<usize> = std::iter::once(n).chain(r.shape.iter().copied()).collect();
            v.into_shape_with_order(IxDyn(&s))
                .map_err(shape_err(&r.name))?
        }
        Layer::ReLU(_) => v.mapv(|x| x.max(0.0)),
        Layer::LeakyReLU(l) => v.mapv(|x| if x > 0.0 { x } else { l.alpha * x }),
        Layer::BatchNorm(b) => {
            // Keras' inference form: γ (x − mean) / √(var + ε) + β on the channel axis.
            let scale = (&b.moving_variance.value + b.config.epsilon).mapv(f32::sqrt);
            let scale = &b.gamma.value / &scale;
            let shift = &b.beta.value - &(&b.moving_mean.value * &scale);
            let mut v = v;
            if v.shape().last() != Some(&scale.len()) {
                return Err(bad(&b.name, format!("{:?} channels", v.shape())));
            }
            v *= &scale;
            v += &shift;
            v
        }
        Layer::GlobalAveragePool2d(p) => {
            let x4 = v
                .view()
                .into_dimensionality::<Ix4>()
                .map_err(shape_err(&p.name))?;
            let (_, h, w, c) = x4.dim();
            let hw = (h * w).max(1) as f32;
            x4.sum_axis(Axis(1))
                .sum_axis(Axis(1))
                .mapv(|s| s / hw)
                .into_shape_with_order(IxDyn(&[n, c]))
                .map_err(shape_err(&p.name))?
        }
        Layer::Dropout(_) => v,
        other => {
            return Err(bad(other.module().name(), "no graph-free path".into()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{resnet8, tiny_residual};
    use crate::train::predict;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn close(lean: &ArrayD<f32>, graph: &ndarray::Array2<f32>) {
        assert_eq!(lean.shape(), graph.shape());
        for (a, b) in lean.iter().zip(graph.iter()) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// Residual graphs with BatchNorm at non-trivial moving statistics (so the inference
    /// form is exercised) equal the autograd forward.
    #[test]
    fn graph_models_equal_the_autograd_forward() {
        let mut rng = StdRng::seed_from_u64(3);
        for mut model in [tiny_residual(5, 1), resnet8(2)] {
            for l in &mut model.layers {
                if let Layer::BatchNorm(b) = l {
                    b.moving_mean
                        .value
                        .mapv_inplace(|_| rng.random_range(-0.5..0.5));
                    b.moving_variance
                        .value
                        .mapv_inplace(|_| rng.random_range(0.5..2.0));
                    b.gamma.value.mapv_inplace(|_| rng.random_range(0.5..1.5));
                    b.beta.value.mapv_inplace(|_| rng.random_range(-0.2..0.2));
                }
            }
            let x = ArrayD::from_shape_simple_fn(IxDyn(&[3, 28, 28, 1]), || rng.random());
            close(
                &forward(&model, x.view()).unwrap(),
                &predict(&model, x.view(), 3).unwrap(),
            );
        }
    }

    #[test]
    fn layers_without_a_kernel_path_are_errors_naming_them() {
        let model = Sequential::new(&[4]).push(crate::nn::Sigmoid::new("sig"));
        match forward(&model, ArrayD::zeros(IxDyn(&[1, 4])).view()) {
            Err(TensorError::BadLayer { layer, .. }) => assert_eq!(layer, "sig"),
            other => panic!("{other:?}"),
        }
    }
}
