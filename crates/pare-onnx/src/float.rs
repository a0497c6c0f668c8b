//! A float [`Sequential`] as plain ONNX operators.

use std::collections::HashMap;

use pare_tensor::nn::Layer;
use pare_tensor::{Activation, INPUT, Sequential};

use crate::builder::{
    Cursor, GraphBuilder, Layout, conv_attributes, float, int, merge, model_inputs, oihw,
    window_attributes,
};
use crate::error::{OnnxError, Result};
use crate::proto::{DataType, ModelProto};

/// Exports a float model, a chain or a graph model: `input` float `[batch, input_shape...]`
/// (NHWC, as the model takes it) to `logits` float `[batch, outputs...]`.
///
/// Conv → `Conv` (kernel transposed to `[out, in, kh, kw]`), max-pool → `MaxPool`, dense →
/// `Gemm` (kernel `[in, out]` as is), reshape and flatten → `Reshape` on the NHWC value,
/// activations → `Relu` / `LeakyRelu`; `Transpose` nodes convert to NCHW before a conv or
/// pool and back to NHWC before a reshape or the output.
///
/// The other layers: depthwise conv → grouped `Conv`, BatchNorm → `BatchNormalization` with
/// its moving statistics (inference), average pools → `AveragePool` (padding not counted, as
/// in Keras) and `GlobalAveragePool` + `Flatten`, `Sigmoid`, `Tanh`, ReLU6 → `Clip` to
/// `[0, 6]`, hard-swish → `x · HardSigmoid(x)` (α = 1/6, β = 1/2: opset 13 has no
/// `HardSwish`), `Softmax` over the last axis; dropout exports as nothing (inference).
///
/// A graph model's nodes export in its layer order, each reading the values its wiring names:
/// `Add` → binary `Add`s summed left to right, `Concatenate` → `Concat` on the channel axis
/// (axis 1 of an NCHW value, the last of an NHWC or flat one). A merge takes its first input's
/// layout, transposing the others to it, and a value read in the other layout by several
/// branches is transposed once.
///
/// # Errors
/// [`OnnxError::Unsupported`] for a custom layer, or a model whose shapes or wiring do not
/// fit ([`OnnxError::Tensor`]).
pub fn export_float(model: &Sequential) -> Result<ModelProto> {
    let output_shape = model.output_shape()?;
    let shapes = model.node_shapes()?;
    let mut g = GraphBuilder::default();
    let mut values: HashMap<&str, Cursor> = HashMap::from([(
        INPUT,
        Cursor {
            name: "input".into(),
            layout: Layout::Nhwc,
            shape: model.input_shape.clone(),
        },
    )]);
    let mut cur = values[INPUT].clone();
    for (layer, out_shape) in model.layers.iter().zip(shapes) {
        let m = layer.module();
        let name = m.name();
        let inputs = model_inputs(model, name, &values)?;
        cur = inputs[0].clone();
        match layer {
            Layer::Add(_) | Layer::Concatenate(_) => {
                let add = matches!(layer, Layer::Add(_));
                cur = merge(&mut g, name, inputs, add, &out_shape);
            }
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
            Layer::DepthwiseConv2d(c) => {
                g.transpose_to(&mut cur, Layout::Nchw);
                let [kh, kw, channels, _] = c.kernel_shape();
                let mut attrs = conv_attributes(name, &cur.shape, [kh, kw], c.strides, c.padding)?;
                attrs.push(int("group", channels as i64));
                let (dims, w) = depthwise_oihw(&c.kernel.value);
                let w = g.f32s(format!("{name}/kernel"), &dims, &w);
                let b = bias(&mut g, name, &c.bias.value);
                cur.name = g.node("Conv", &[&cur.name, &w, &b], attrs, name);
                cur.shape = out_shape;
                activation(&mut g, &mut cur, c.activation, name);
            }
            Layer::BatchNorm(bn) => {
                // ONNX normalises axis 1: NCHW for images, the features of a flat value.
                match cur.shape.len() {
                    1 => {}
                    3 => g.transpose_to(&mut cur, Layout::Nchw),
                    _ => {
                        return Err(OnnxError::Unsupported {
                            layer: name.into(),
                            reason: format!(
                                "BatchNormalization takes [c] or [h, w, c] values, found {:?}",
                                cur.shape
                            ),
                        });
                    }
                }
                let c = [bn.channels()];
                let inputs = [
                    g.f32s(format!("{name}/gamma"), &c, &contiguous(&bn.gamma.value)),
                    g.f32s(format!("{name}/beta"), &c, &contiguous(&bn.beta.value)),
                    g.f32s(
                        format!("{name}/mean"),
                        &c,
                        &contiguous(&bn.moving_mean.value),
                    ),
                    g.f32s(
                        format!("{name}/variance"),
                        &c,
                        &contiguous(&bn.moving_variance.value),
                    ),
                ];
                let attrs = vec![float("epsilon", bn.config.epsilon)];
                cur.name = g.node(
                    "BatchNormalization",
                    &[&cur.name, &inputs[0], &inputs[1], &inputs[2], &inputs[3]],
                    attrs,
                    name,
                );
            }
            // Inference: dropout is the identity.
            Layer::Dropout(_) => {}
            Layer::AvgPool2d(p) => {
                g.transpose_to(&mut cur, Layout::Nchw);
                // Keras leaves the padding out of each window's count, as ONNX does by default.
                let mut attrs = window_attributes(name, &cur.shape, p.pool, p.strides, p.padding)?;
                attrs.push(int("count_include_pad", 0));
                cur.name = g.node("AveragePool", &[&cur.name], attrs, name);
                cur.shape = out_shape;
            }
            Layer::GlobalAveragePool2d(_) => {
                g.transpose_to(&mut cur, Layout::Nchw);
                let pooled = g.node("GlobalAveragePool", &[&cur.name], vec![], name);
                // [n, c, 1, 1] to pare's [n, c].
                cur.name = g.node("Flatten", &[&pooled], vec![int("axis", 1)], name);
                cur.layout = Layout::Nhwc;
                cur.shape = out_shape;
            }
            Layer::Sigmoid(_) => cur.name = g.node("Sigmoid", &[&cur.name], vec![], name),
            Layer::Tanh(_) => cur.name = g.node("Tanh", &[&cur.name], vec![], name),
            Layer::ReLU6(_) => cur.name = relu6(&mut g, &cur.name, name),
            Layer::HardSwish(_) => cur.name = hard_swish(&mut g, &cur.name, name),
            Layer::Softmax(_) => {
                // pare's softmax is over the last axis of the NHWC value.
                g.transpose_to(&mut cur, Layout::Nhwc);
                cur.name = g.node("Softmax", &[&cur.name], vec![int("axis", -1)], name);
            }
            Layer::ReLU(_) => activation(&mut g, &mut cur, Activation::Relu, name),
            Layer::LeakyReLU(l) => {
                activation(&mut g, &mut cur, Activation::LeakyRelu(l.alpha), name)
            }
            other => {
                let reason = if matches!(other, Layer::Custom(_)) {
                    "custom layers have no ONNX form"
                } else {
                    "this kind of layer has no ONNX export yet"
                };
                return Err(OnnxError::Unsupported {
                    layer: name.into(),
                    reason: reason.into(),
                });
            }
        }
        values.insert(name, cur.clone());
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

/// ReLU6 of the float value `x`: `Clip` to `[0, 6]` (opset 13's `Clip` takes its bounds as
/// inputs).
pub(crate) fn relu6(g: &mut GraphBuilder, x: &str, layer: &str) -> String {
    let lo = g.f32s(format!("{layer}/min"), &[], &[0.0]);
    let hi = g.f32s(format!("{layer}/max"), &[], &[6.0]);
    g.node("Clip", &[x, &lo, &hi], vec![], layer)
}

/// Hard-swish of the float value `x`. `HardSwish` is opset 14; `x · HardSigmoid(x)` with
/// α = 1/6, β = 1/2 is the same `x · relu6(x + 3) / 6` in opset 13.
pub(crate) fn hard_swish(g: &mut GraphBuilder, x: &str, layer: &str) -> String {
    let attrs = vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)];
    let gate = g.node("HardSigmoid", &[x], attrs, layer);
    g.node("Mul", &[x, &gate], vec![], layer)
}

/// A depthwise kernel `[kh, kw, c, m]` as the weight of ONNX's grouped `Conv` (`group = c`):
/// `[c · m, 1, kh, kw]`, output channel `c · m + j` reading input channel `c`, as Keras orders
/// them.
fn depthwise_oihw(kernel: &ndarray::ArrayD<f32>) -> (Vec<usize>, Vec<f32>) {
    let k = kernel
        .view()
        .into_dimensionality::<ndarray::Ix4>()
        .expect("depthwise_oihw: depthwise kernels are 4-D, checked by the model");
    let (kh, kw, c, m) = k.dim();
    let t = k.permuted_axes([2, 3, 0, 1]);
    (vec![c * m, 1, kh, kw], t.iter().copied().collect())
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
