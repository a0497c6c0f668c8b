//! Inference without the autograd graph: a [`Sequential`] run straight on pare-tensor's kernels
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

use ndarray::{ArrayD, ArrayViewD, Ix2, Ix4, IxDyn};

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

/// The model's output for the batch `x` (NHWC, batch first), layer by layer on the kernels.
///
/// # Errors
/// [`TensorError::InputShape`] for input the model does not take; [`TensorError::BadLayer`]
/// for a layer with no graph-free path (a custom layer); [`crate::WiringError::NotSequential`]
/// for a graph model.
pub fn forward(model: &Sequential, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
    model.require_sequential("infer::forward")?;
    model.check_input(x.shape())?;
    let mut v = x.to_owned();
    let n = x.shape()[0];
    for layer in &model.layers {
        v = match layer {
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
            other => return Err(bad(&format!("{other:?}"), "no graph-free path".into())),
        };
    }
    Ok(v)
}
