//! A float [`Sequential`] as plain ONNX operators.

use pare_tensor::nn::Layer;
use pare_tensor::{Activation, Sequential};

use crate::builder::{
    Cursor, GraphBuilder, Layout, conv_attributes, float, oihw, window_attributes,
};
use crate::error::{OnnxError, Result};
use crate::proto::{DataType, ModelProto};

/// Exports a float model: `input` float `[batch, input_shape...]` (NHWC, as the model takes
/// it) to `logits` float `[batch, outputs...]`.
///
/// Conv → `Conv` (kernel transposed to `[out, in, kh, kw]`), max-pool → `MaxPool`, dense →
/// `Gemm` (kernel `[in, out]` as is), reshape and flatten → `Reshape` on the NHWC value,
/// activations → `Relu` / `LeakyRelu`; `Transpose` nodes convert to NCHW before a conv or
/// pool and back to NHWC before a reshape or the output.
///
/// # Errors
/// [`OnnxError::Unsupported`] for a custom layer, or a model whose layers do not chain.
pub fn export_float(model: &Sequential) -> Result<ModelProto> {
    let output_shape = model.output_shape()?;
    let mut g = GraphBuilder::default();
    let mut cur = Cursor {
        name: "input".into(),
        layout: Layout::Nhwc,
        shape: model.input_shape.clone(),
    };
    for layer in &model.layers {
        let m = layer.module();
        let name = m.name();
        let out_shape = m.output_shape(&cur.shape)?;
        match layer {
            Layer::Conv2d(c) => {
                g.transpose_to(&mut cur, Layout::Nchw);
                let [kh, kw, _, _] = c.kernel_shape();
                let attrs = conv_attributes(name, &cur.shape, [kh, kw], c.strides, c.padding)?;
                let (dims, w) = oihw(&c.kernel.value);
                let w = g.f32s(format!("{name}/kernel"), &dims, &w);
                let b = bias(&mut g, name, &c.bias.value);
                cur.name = g.node("Conv", &[&cur.name, &w, &b], attrs, name);
                cur.shape = out_shape;
                activation(&mut g, &mut cur, c.activation, name);
            }
            Layer::MaxPool2d(p) => {
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs = window_attributes(name, &cur.shape, p.pool, p.strides, p.padding)?;
                cur.name = g.node("MaxPool", &[&cur.name], attrs, name);
                cur.shape = out_shape;
            }
            Layer::Flatten(_) | Layer::Reshape(_) => g.reshape(&mut cur, name, &out_shape),
            Layer::Dense(d) => {
                if cur.shape.len() != 1 {
                    return Err(OnnxError::Unsupported {
                        layer: name.into(),
                        reason: format!("dense input must be flat, found {:?}", cur.shape),
                    });
                }
                let v = &d.kernel.value;
                let w = g.f32s(format!("{name}/kernel"), v.shape(), &contiguous(v));
                let b = bias(&mut g, name, &d.bias.value);
                cur.name = g.node("Gemm", &[&cur.name, &w, &b], vec![], name);
                cur.shape = out_shape;
                activation(&mut g, &mut cur, d.activation, name);
            }
            Layer::ReLU(_) => activation(&mut g, &mut cur, Activation::Relu, name),
            Layer::LeakyReLU(l) => {
                activation(&mut g, &mut cur, Activation::LeakyRelu(l.alpha), name)
            }
            other => {
                let reason = if matches!(other, Layer::Custom(_)) {
                    "custom layers have no ONNX form"
                } else {
                    "this kind of layer has no ONNX export yet (fold BatchNorm first)"
                };
                return Err(OnnxError::Unsupported {
                    layer: name.into(),
                    reason: reason.into(),
                });
            }
        }
    }
    g.transpose_to(&mut cur, Layout::Nhwc);
    Ok(g.finish(
        "pare_float",
        &cur.name,
        ("input", DataType::Float, &model.input_shape),
        ("logits", DataType::Float, &output_shape),
        format!("pare float model, {} parameters", model.num_params()),
        vec![("pare.format".into(), "float".into())],
    ))
}

fn contiguous(a: &ndarray::ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

fn bias(g: &mut GraphBuilder, layer: &str, b: &ndarray::ArrayD<f32>) -> String {
    g.f32s(format!("{layer}/bias"), &[b.len()], &contiguous(b))
}

/// Appends the activation node (none for linear).
pub(crate) fn activation(g: &mut GraphBuilder, cur: &mut Cursor, act: Activation, layer: &str) {
    cur.name = match act {
        Activation::Linear => return,
        Activation::Relu => g.node("Relu", &[&cur.name], vec![], layer),
        Activation::LeakyRelu(alpha) => g.node(
            "LeakyRelu",
            &[&cur.name],
            vec![float("alpha", alpha)],
            layer,
        ),
    };
}
