//! A full-integer [`QuantizedModel`] as ONNX, in the two forms runtimes take: QDQ
//! (`QuantizeLinear` / `DequantizeLinear` around float operators, which a runtime fuses into
//! integer kernels) and QOperator (integer operators: `QLinearConv`, int8 `MaxPool`, …). Both
//! carry pare's scales and zero points exactly as the model holds them.

use pare_quant::kernels::lut::relu6_range;
use pare_quant::{
    ActQuant, Bias, InputType, LayerKind, Mode, QuantizedLayer, QuantizedModel, Source,
};

use crate::builder::{
    Cursor, GraphBuilder, Layout, MS_DOMAIN, channel_axis, conv_attributes, float, int, ints, oihw,
    one_layout, window_attributes,
};
use crate::error::{OnnxError, Result};
use crate::float::{hard_swish, relu6};
use crate::proto::{DataType, ModelProto};

fn tensor_padding(p: pare_quant::Padding) -> pare_tensor::Padding {
    match p {
        pare_quant::Padding::Valid => pare_tensor::Padding::Valid,
        pare_quant::Padding::Same => pare_tensor::Padding::Same,
    }
}

/// The values (and their parameters) layer `i` of `model` reads: the layer before's in a
/// chain, those its wiring names in a graph model.
fn sources(
    model: &QuantizedModel,
    i: usize,
    values: &[(Cursor, ActQuant)],
    input: &(Cursor, ActQuant),
) -> Vec<(Cursor, ActQuant)> {
    model
        .layer_inputs(i)
        .expect("sources: the layer index is in range")
        .iter()
        .map(|s| match *s {
            Source::Input => input.clone(),
            Source::Layer(j) => values[j].clone(),
        })
        .collect()
}

/// The input parameters of a full-integer model.
fn full_integer(model: &QuantizedModel) -> Result<ActQuant> {
    match (model.mode(), model.input_quant()) {
        (Mode::FullInteger, Some(q)) => Ok(q),
        (mode, _) => Err(OnnxError::Unsupported {
            layer: "model".into(),
            reason: format!(
                "a {mode} model has float activations: export its dequantized_model() as float"
            ),
        }),
    }
}

struct Parts<'a> {
    weights: &'a pare_quant::QuantizedWeights,
    bias: &'a [i32],
    output: ActQuant,
}

/// Weights, int32 bias and output parameters of a conv or dense layer.
fn parts(layer: &QuantizedLayer) -> Result<Parts<'_>> {
    let unsupported = |reason: &str| OnnxError::Unsupported {
        layer: layer.name.clone(),
        reason: reason.into(),
    };
    let weights = layer
        .weights
        .as_ref()
        .ok_or_else(|| unsupported("conv or dense layer without weights"))?;
    let Bias::Int32(bias) = &weights.bias else {
        return Err(unsupported("a full-integer layer has an int32 bias"));
    };
    let output = layer
        .output
        .ok_or_else(|| unsupported("a full-integer layer has output parameters"))?;
    Ok(Parts {
        weights,
        bias,
        output,
    })
}

fn output_of(layer: &QuantizedLayer) -> Result<ActQuant> {
    layer.output.ok_or_else(|| OnnxError::Unsupported {
        layer: layer.name.clone(),
        reason: "a full-integer layer has output parameters".into(),
    })
}

/// The integer type of a QOperator model's activations.
///
/// uint8 codes are the int8 codes plus 128 with the zero point plus 128: the same real values
/// and the same integer arithmetic (`QLinearConv` sums `(x − zero_point) · w`), so both give the
/// same codes bar the offset. onnxruntime's x86 kernels are tuned for uint8 activations with
/// int8 weights, the pair its own quantizer writes, and run the small CNN about 2.5× faster so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationType {
    /// int8 codes, as pare's engine holds them.
    #[default]
    Int8,
    /// uint8 codes: int8 + 128, zero point + 128.
    Uint8,
}

impl ActivationType {
    fn data_type(self) -> DataType {
        match self {
            ActivationType::Int8 => DataType::Int8,
            ActivationType::Uint8 => DataType::Uint8,
        }
    }
}

/// How [`export_qoperator_with`] writes a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QOperatorOptions {
    /// int8 (default) or uint8 activations, input and output.
    pub activations: ActivationType,
}

/// Scale and zero-point initializers of per-tensor activation parameters (int8).
fn act_params(g: &mut GraphBuilder, stem: &str, q: ActQuant) -> (String, String) {
    act_params_as(g, stem, q, ActivationType::Int8)
}

/// [`act_params`] with the zero point in `codes`' type.
fn act_params_as(
    g: &mut GraphBuilder,
    stem: &str,
    q: ActQuant,
    codes: ActivationType,
) -> (String, String) {
    (
        g.scale(format!("{stem}/scale"), q.scale),
        zero_point_as(g, format!("{stem}/zero_point"), q.zero_point, codes),
    )
}

/// An int8 zero point (or code) as a scalar of `codes`' type.
fn zero_point_as(g: &mut GraphBuilder, name: String, zp: i32, codes: ActivationType) -> String {
    match codes {
        ActivationType::Int8 => g.zero_point(name, zp),
        ActivationType::Uint8 => g.u8s(name, &[], &[(zp + 128) as u8]),
    }
}

/// Weight scales and (zero) zero points: a vector along the output channels, or scalars for
/// per-tensor weights.
fn weight_params(g: &mut GraphBuilder, layer: &str, scale: &[f32]) -> (String, String) {
    let dims: &[usize] = if scale.len() == 1 {
        &[]
    } else {
        &[scale.len()]
    };
    (
        g.f32s(format!("{layer}/kernel_scale"), dims, scale),
        g.i8s(
            format!("{layer}/kernel_zero_point"),
            dims,
            &vec![0; scale.len()],
        ),
    )
}

/// The bias scales `s_in · s_w[c]`, computed as pare's dequantized model does (in f64).
fn bias_scales(input_scale: f32, weight_scale: &[f32]) -> Vec<f32> {
    weight_scale
        .iter()
        .map(|&s| (input_scale as f64 * s as f64) as f32)
        .collect()
}

/// The `axis` attribute of a per-channel `QuantizeLinear`/`DequantizeLinear`, none per tensor.
fn axis_attr(channels: usize, axis: i64) -> Vec<crate::proto::AttributeProto> {
    if channels == 1 {
        vec![]
    } else {
        vec![int("axis", axis)]
    }
}

/// Exports a full-integer model in QDQ form: `input` float `[batch, input_shape...]` →
/// `QuantizeLinear` with the model's input parameters → for each layer `DequantizeLinear`, the
/// float operator, `QuantizeLinear` with the layer's output parameters → `DequantizeLinear` →
/// `logits` float.
///
/// Conv and dense weights are int8 initializers behind a `DequantizeLinear` with their
/// per-channel scales (`axis` 0 for the `[out, in, kh, kw]` conv kernel, 1 for the `[in, out]`
/// dense kernel of the `Gemm`) and zero points 0; biases are int32 behind a `DequantizeLinear`
/// at `s_in · s_w[c]`. A fused ReLU is a `Relu` before the output `QuantizeLinear` — the same
/// values as pare's clamp at the output zero point, since quantization is monotone and maps 0
/// to the zero point. Transposes and reshapes move the int8 codes, between a `QuantizeLinear`
/// and a `DequantizeLinear`.
///
/// The newer ops wrap their float operators the same way: depthwise conv → grouped `Conv`
/// (per-channel weights along `c · m`), average pool → `AveragePool` (padding not counted),
/// global average pool → `GlobalAveragePool` + `Flatten`, ReLU6 → `Clip` to `[0, 6]`,
/// sigmoid, tanh → `Sigmoid`, `Tanh` (at TFLite's fixed output parameters), hard-swish →
/// `x · HardSigmoid(x)`, softmax → `Softmax` over the last axis of the NHWC value (at
/// TFLite's fixed output parameters; onnxruntime's float softmax can land a code away from
/// pare's fixed-point one).
///
/// A graph model's merges: `Add` → `DequantizeLinear` of both inputs, `Add` (a fused ReLU as
/// `Relu`), `QuantizeLinear` at its output parameters; `Concatenate` → `Concat` on the channel
/// axis between the same pairs.
///
/// `QuantizeLinear` rounds half to even where pare rounds half away from zero; only inputs
/// exactly halfway between two codes can quantize differently.
///
/// # Errors
/// [`OnnxError::Unsupported`] for a dynamic-range model.
pub fn export_qdq(model: &QuantizedModel) -> Result<ModelProto> {
    let mut in_q = full_integer(model)?;
    let mut g = GraphBuilder::default();
    let (s, z) = act_params(&mut g, "input", in_q);
    let mut cur = Cursor {
        name: g.node("QuantizeLinear", &["input", &s, &z], vec![], "input_q"),
        layout: Layout::Nhwc,
        shape: model.input_shape().to_vec(),
    };
    // Dequantizes the current int8 codes for a float operator.
    let dq = |g: &mut GraphBuilder, cur: &Cursor, q: ActQuant, stem: &str| {
        let (s, z) = act_params(g, stem, q);
        g.node("DequantizeLinear", &[&cur.name, &s, &z], vec![], stem)
    };
    let quantize = |g: &mut GraphBuilder, y: &str, q: ActQuant, stem: &str| {
        let (s, z) = act_params(g, stem, q);
        g.node("QuantizeLinear", &[y, &s, &z], vec![], stem)
    };
    let input = (cur.clone(), in_q);
    let mut values: Vec<(Cursor, ActQuant)> = Vec::with_capacity(model.layers().len());
    for (i, layer) in model.layers().iter().enumerate() {
        let name = layer.name.as_str();
        let mut inputs = sources(model, i, &values, &input);
        (cur, in_q) = inputs[0].clone();
        match &layer.kind {
            LayerKind::Add { relu } => {
                let out = output_of(layer)?;
                let layout = layout_of(&mut g, &mut inputs);
                let xs: Vec<String> = inputs
                    .iter()
                    .enumerate()
                    .map(|(k, (c, q))| dq(&mut g, c, *q, &format!("{name}/input{k}")))
                    .collect();
                let mut y = g.node("Add", &[&xs[0], &xs[1]], vec![], name);
                if *relu {
                    y = g.node("Relu", &[&y], vec![], name);
                }
                cur.name = quantize(&mut g, &y, out, &format!("{name}/output"));
                cur.layout = layout;
                in_q = out;
            }
            LayerKind::Concatenate => {
                let out = output_of(layer)?;
                let layout = layout_of(&mut g, &mut inputs);
                let xs: Vec<String> = inputs
                    .iter()
                    .enumerate()
                    .map(|(k, (c, q))| dq(&mut g, c, *q, &format!("{name}/input{k}")))
                    .collect();
                let xs: Vec<&str> = xs.iter().map(String::as_str).collect();
                let axis = channel_axis(layout, layer.output_shape.len());
                let y = g.node("Concat", &xs, vec![int("axis", axis)], name);
                cur.name = quantize(&mut g, &y, out, &format!("{name}/output"));
                cur.layout = layout;
                in_q = out;
            }
            LayerKind::Conv2d {
                kernel_size,
                strides,
                padding,
                relu,
            } => {
                let p = parts(layer)?;
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs = conv_attributes(
                    name,
                    &cur.shape,
                    *kernel_size,
                    *strides,
                    tensor_padding(*padding),
                )?;
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let (dims, codes) = oihw(&p.weights.kernel);
                let w = qdq_weights(&mut g, name, &dims, &codes, &p.weights.scale, 0);
                let b = qdq_bias(&mut g, name, p.bias, in_q.scale, &p.weights.scale);
                let mut y = g.node("Conv", &[&x, &w, &b], attrs, name);
                if *relu {
                    y = g.node("Relu", &[&y], vec![], name);
                }
                cur.name = quantize(&mut g, &y, p.output, &format!("{name}/output"));
                in_q = p.output;
            }
            LayerKind::Dense { relu } => {
                let p = parts(layer)?;
                flat_input(layer, &cur)?;
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let k = &p.weights.kernel;
                let codes: Vec<i8> = k.iter().copied().collect();
                let w = qdq_weights(&mut g, name, k.shape(), &codes, &p.weights.scale, 1);
                let b = qdq_bias(&mut g, name, p.bias, in_q.scale, &p.weights.scale);
                let mut y = g.node("Gemm", &[&x, &w, &b], vec![], name);
                if *relu {
                    y = g.node("Relu", &[&y], vec![], name);
                }
                cur.name = quantize(&mut g, &y, p.output, &format!("{name}/output"));
                in_q = p.output;
            }
            LayerKind::MaxPool2d {
                pool,
                strides,
                padding,
            } => {
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs =
                    window_attributes(name, &cur.shape, *pool, *strides, tensor_padding(*padding))?;
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let y = g.node("MaxPool", &[&x], attrs, name);
                cur.name = quantize(&mut g, &y, in_q, &format!("{name}/output"));
            }
            LayerKind::Reshape { shape } => g.reshape(&mut cur, name, shape),
            LayerKind::Relu => {
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let y = g.node("Relu", &[&x], vec![], name);
                cur.name = quantize(&mut g, &y, in_q, &format!("{name}/output"));
            }
            LayerKind::LeakyRelu { alpha } => {
                let out = output_of(layer)?;
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let y = g.node("LeakyRelu", &[&x], vec![float("alpha", *alpha)], name);
                cur.name = quantize(&mut g, &y, out, &format!("{name}/output"));
                in_q = out;
            }
            LayerKind::DepthwiseConv2d {
                kernel_size,
                strides,
                padding,
                relu,
            } => {
                let p = parts(layer)?;
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs =
                    depthwise_attributes(layer, &cur.shape, *kernel_size, *strides, *padding)?;
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let (dims, codes) = depthwise_oihw(&p.weights.kernel);
                let w = qdq_weights(&mut g, name, &dims, &codes, &p.weights.scale, 0);
                let b = qdq_bias(&mut g, name, p.bias, in_q.scale, &p.weights.scale);
                let mut y = g.node("Conv", &[&x, &w, &b], attrs, name);
                if *relu {
                    y = g.node("Relu", &[&y], vec![], name);
                }
                cur.name = quantize(&mut g, &y, p.output, &format!("{name}/output"));
                in_q = p.output;
            }
            LayerKind::AvgPool2d {
                pool,
                strides,
                padding,
            } => {
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs = avg_pool_attributes(name, &cur.shape, *pool, *strides, *padding)?;
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let y = g.node("AveragePool", &[&x], attrs, name);
                cur.name = quantize(&mut g, &y, in_q, &format!("{name}/output"));
            }
            LayerKind::GlobalAvgPool2d => {
                let out = output_of(layer)?;
                g.transpose_to(&mut cur, Layout::Nchw);
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let pooled = g.node("GlobalAveragePool", &[&x], vec![], name);
                // [n, c, 1, 1] to pare's [n, c].
                let y = g.node("Flatten", &[&pooled], vec![int("axis", 1)], name);
                cur.name = quantize(&mut g, &y, out, &format!("{name}/output"));
                cur.layout = Layout::Nhwc;
                in_q = out;
            }
            LayerKind::Relu6 => {
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let y = relu6(&mut g, &x, name);
                cur.name = quantize(&mut g, &y, in_q, &format!("{name}/output"));
            }
            LayerKind::Sigmoid | LayerKind::Tanh | LayerKind::HardSwish => {
                let out = output_of(layer)?;
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let y = match layer.kind {
                    LayerKind::Sigmoid => g.node("Sigmoid", &[&x], vec![], name),
                    LayerKind::Tanh => g.node("Tanh", &[&x], vec![], name),
                    _ => hard_swish(&mut g, &x, name),
                };
                cur.name = quantize(&mut g, &y, out, &format!("{name}/output"));
                in_q = out;
            }
            LayerKind::Softmax => {
                // pare's softmax is over the last axis of the NHWC value.
                let out = output_of(layer)?;
                g.transpose_to(&mut cur, Layout::Nhwc);
                let x = dq(&mut g, &cur, in_q, &format!("{name}/input"));
                let y = g.node("Softmax", &[&x], vec![int("axis", -1)], name);
                cur.name = quantize(&mut g, &y, out, &format!("{name}/output"));
                in_q = out;
            }
        }
        cur.shape = layer.output_shape.clone();
        values.push((cur.clone(), in_q));
    }
    g.transpose_to(&mut cur, Layout::Nhwc);
    let logits = dq(&mut g, &cur, in_q, "logits");
    Ok(g.finish(
        "pare_qdq",
        &logits,
        ("input", DataType::Float, model.input_shape()),
        ("logits", DataType::Float, model.output_shape()),
        doc(model, "QDQ"),
        metadata(model, "qdq"),
    ))
}

fn flat_input(layer: &QuantizedLayer, cur: &Cursor) -> Result<()> {
    if cur.shape.len() == 1 {
        Ok(())
    } else {
        Err(OnnxError::Unsupported {
            layer: layer.name.clone(),
            reason: format!("dense input must be flat, found {:?}", cur.shape),
        })
    }
}

/// int8 weights behind a per-channel (or per-tensor) `DequantizeLinear` along `axis`.
fn qdq_weights(
    g: &mut GraphBuilder,
    layer: &str,
    dims: &[usize],
    codes: &[i8],
    scale: &[f32],
    axis: i64,
) -> String {
    let w = g.i8s(format!("{layer}/kernel"), dims, codes);
    let (s, z) = weight_params(g, layer, scale);
    g.node(
        "DequantizeLinear",
        &[&w, &s, &z],
        axis_attr(scale.len(), axis),
        &format!("{layer}/kernel_dq"),
    )
}

/// The int32 bias behind a `DequantizeLinear` at `s_in · s_w[c]`, zero point 0.
fn qdq_bias(
    g: &mut GraphBuilder,
    layer: &str,
    bias: &[i32],
    input_scale: f32,
    weight_scale: &[f32],
) -> String {
    let b = g.i32s(format!("{layer}/bias"), &[bias.len()], bias);
    let scales = bias_scales(input_scale, weight_scale);
    let dims: &[usize] = if scales.len() == 1 {
        &[]
    } else {
        &[scales.len()]
    };
    let s = g.f32s(format!("{layer}/bias_scale"), dims, &scales);
    let z = g.i32s(
        format!("{layer}/bias_zero_point"),
        dims,
        &vec![0; scales.len()],
    );
    g.node(
        "DequantizeLinear",
        &[&b, &s, &z],
        axis_attr(scales.len(), 0),
        &format!("{layer}/bias_dq"),
    )
}

/// Exports a full-integer model in QOperator form, integer in and integer out as pare's
/// integer-only engine runs it: `input` int8 codes `[batch, input_shape...]` quantized with
/// [`input_quant`](QuantizedModel::input_quant) (uint8 codes, zero point + 128, when the
/// model declares [`InputType::Uint8`]) → `logits` int8 codes with
/// [`output_quant`](QuantizedModel::output_quant), what
/// [`predict_i8`](QuantizedModel::predict_i8) returns.
///
/// - conv → `QLinearConv` (int8 `[out, in, kh, kw]` kernel, per-channel scales, int32 bias at
///   `s_in · s_w[c]`, zero point 0);
/// - dense → `QLinearConv` with a 1×1 kernel on the `[batch, in, 1, 1]` reshaped input. Unlike
///   `QLinearMatMul`, which has no bias input, it adds the int32 bias to the int32 accumulator
///   before the one requantization, as pare does; a bias added after `QLinearMatMul` would be
///   rounded a second time, and the product saturated before the bias is added;
/// - a fused ReLU → `Clip` at the output zero point, pare's clamp (omitted when the zero point
///   is −128, where the clamp is void);
/// - max-pool → `MaxPool` on int8; reshape → `Reshape`; a separate ReLU → `Clip`;
/// - leaky ReLU → onnxruntime's `com.microsoft.QLinearLeakyRelu` (no standard int8 form);
/// - depthwise conv → `QLinearConv` with `group` = input channels, kernel `[c · m, 1, kh, kw]`;
/// - average pool → `com.microsoft.QLinearAveragePool` (padding not counted), global average
///   pool → `com.microsoft.QLinearGlobalAveragePool` and a `Reshape` to `[batch, c]`;
/// - a graph model's `Add` → `com.microsoft.QLinearAdd` (a fused ReLU as `Clip`),
///   `Concatenate` → `Concat` of the int8 codes on the channel axis (its inputs have its
///   parameters, as TFLite requires);
/// - ReLU6 → `Clip` to the codes of 0 and 6, as pare clamps; sigmoid →
///   `com.microsoft.QLinearSigmoid`; tanh and hard-swish, which have no integer operator in
///   ONNX or onnxruntime, and softmax (whose `com.microsoft.QLinearSoftmax` is a float table
///   too) → the float operator between `DequantizeLinear` and `QuantizeLinear`, softmax over
///   the last axis of the NHWC value.
///
/// onnxruntime requantizes in f32 and rounds once (ties to even), and builds its leaky-ReLU
/// table in f32; pare's default engine rounds as TFLite does, twice. The model's
/// [`with_rounding`](pare_quant::QuantizedModel::with_rounding)`(Rounding::OnnxRuntime)` runs
/// pare's engine under onnxruntime's rule, and then its codes equal onnxruntime's on this
/// export bit for bit (`tests/onnx.rs`, `docs/onnx.md`).
///
/// # Errors
/// [`OnnxError::Unsupported`] for a dynamic-range model.
pub fn export_qoperator(model: &QuantizedModel) -> Result<ModelProto> {
    export_qoperator_with(model, &QOperatorOptions::default())
}

/// [`export_qoperator`] with uint8 activations if asked ([`ActivationType`]): then the input
/// is uint8 codes (int8 + 128) whatever the model declares, and the output uint8 codes.
///
/// # Errors
/// [`OnnxError::Unsupported`] for a dynamic-range model.
pub fn export_qoperator_with(
    model: &QuantizedModel,
    options: &QOperatorOptions,
) -> Result<ModelProto> {
    let mut in_q = full_integer(model)?;
    let codes = options.activations;
    let act_params =
        |g: &mut GraphBuilder, stem: &str, q: ActQuant| act_params_as(g, stem, q, codes);
    let mut g = GraphBuilder::default();
    let mut cur = Cursor {
        name: "input".into(),
        layout: Layout::Nhwc,
        shape: model.input_shape().to_vec(),
    };
    let input_type = match codes {
        ActivationType::Int8 if model.input_type() == InputType::Uint8 => DataType::Uint8,
        other => other.data_type(),
    };
    if input_type != codes.data_type() {
        // uint8 code − (zp + 128) is the int8 code − zp: dequantizing and quantizing again is
        // exact, as |code − zp| ≤ 255 survives the float round trip.
        let (scale, zp) = in_q.to_uint8();
        let s = g.scale("input_u8/scale".into(), scale);
        let z = g.u8s("input_u8/zero_point".into(), &[], &[zp as u8]);
        let x = g.node("DequantizeLinear", &["input", &s, &z], vec![], "input_u8");
        let (s, z) = act_params(&mut g, "input", in_q);
        cur.name = g.node("QuantizeLinear", &[&x, &s, &z], vec![], "input_q");
    }
    let input = (cur.clone(), in_q);
    let mut values: Vec<(Cursor, ActQuant)> = Vec::with_capacity(model.layers().len());
    for (i, layer) in model.layers().iter().enumerate() {
        let name = layer.name.as_str();
        let mut inputs = sources(model, i, &values, &input);
        (cur, in_q) = inputs[0].clone();
        match &layer.kind {
            LayerKind::Add { relu } => {
                let out = output_of(layer)?;
                cur.layout = layout_of(&mut g, &mut inputs);
                let [(a, aq), (b, bq)] = [&inputs[0], &inputs[1]];
                let (a_s, a_z) = act_params(&mut g, &format!("{name}/input0"), *aq);
                let (b_s, b_z) = act_params(&mut g, &format!("{name}/input1"), *bq);
                let (ys, yz) = act_params(&mut g, &format!("{name}/output"), out);
                cur.name = g.node_in(
                    MS_DOMAIN,
                    "QLinearAdd",
                    &[&a.name, &a_s, &a_z, &b.name, &b_s, &b_z, &ys, &yz],
                    vec![],
                    name,
                );
                if *relu {
                    clip_at(&mut g, &mut cur, out.zero_point, name, codes);
                }
                in_q = out;
            }
            LayerKind::Concatenate => {
                // Every input has the output's parameters (TFLite's rule, checked by
                // pare-quant), so the codes join unchanged.
                cur.layout = layout_of(&mut g, &mut inputs);
                let xs: Vec<&str> = inputs.iter().map(|(c, _)| c.name.as_str()).collect();
                let axis = channel_axis(cur.layout, layer.output_shape.len());
                cur.name = g.node("Concat", &xs, vec![int("axis", axis)], name);
                in_q = output_of(layer)?;
            }
            LayerKind::Conv2d {
                kernel_size,
                strides,
                padding,
                relu,
            } => {
                let p = parts(layer)?;
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs = conv_attributes(
                    name,
                    &cur.shape,
                    *kernel_size,
                    *strides,
                    tensor_padding(*padding),
                )?;
                let (dims, kernel) = oihw(&p.weights.kernel);
                let w = (dims.as_slice(), kernel.as_slice());
                cur.name = qlinear_conv(&mut g, name, &cur.name, in_q, &p, w, attrs, codes);
                if *relu {
                    clip_at(&mut g, &mut cur, p.output.zero_point, name, codes);
                }
                in_q = p.output;
            }
            LayerKind::Dense { relu } => {
                let p = parts(layer)?;
                flat_input(layer, &cur)?;
                let k = &p.weights.kernel;
                let (cin, cout) = (k.shape()[0], k.shape()[1]);
                // As a 1×1 conv on `[batch, in, 1, 1]`: the kernel `[in, out]` becomes
                // `[out, in, 1, 1]`.
                let kernel: Vec<i8> = k.t().iter().copied().collect();
                let attrs = vec![
                    ints("kernel_shape", &[1, 1]),
                    ints("strides", &[1, 1]),
                    ints("pads", &[0, 0, 0, 0]),
                    ints("dilations", &[1, 1]),
                ];
                let image = shape_init(&mut g, &format!("{name}/as_image"), &[0, cin as i64, 1, 1]);
                let x4 = g.node(
                    "Reshape",
                    &[&cur.name, &image],
                    vec![],
                    &format!("{name}/as_image"),
                );
                let w = (&[cout, cin, 1, 1][..], kernel.as_slice());
                let y = qlinear_conv(&mut g, name, &x4, in_q, &p, w, attrs, codes);
                let flat = shape_init(&mut g, &format!("{name}/flat"), &[0, cout as i64]);
                cur.name = g.node("Reshape", &[&y, &flat], vec![], &format!("{name}/flat"));
                cur.shape = vec![cout];
                if *relu {
                    clip_at(&mut g, &mut cur, p.output.zero_point, name, codes);
                }
                in_q = p.output;
            }
            LayerKind::MaxPool2d {
                pool,
                strides,
                padding,
            } => {
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs =
                    window_attributes(name, &cur.shape, *pool, *strides, tensor_padding(*padding))?;
                cur.name = g.node("MaxPool", &[&cur.name], attrs, name);
            }
            LayerKind::Reshape { shape } => g.reshape(&mut cur, name, shape),
            LayerKind::Relu => clip_at(&mut g, &mut cur, in_q.zero_point, name, codes),
            LayerKind::LeakyRelu { alpha } => {
                let out = output_of(layer)?;
                let (xs, xz) = act_params(&mut g, &format!("{name}/input"), in_q);
                let (ys, yz) = act_params(&mut g, &format!("{name}/output"), out);
                cur.name = g.node_in(
                    MS_DOMAIN,
                    "QLinearLeakyRelu",
                    &[&cur.name, &xs, &xz, &ys, &yz],
                    vec![float("alpha", *alpha)],
                    name,
                );
                in_q = out;
            }
            LayerKind::DepthwiseConv2d {
                kernel_size,
                strides,
                padding,
                relu,
            } => {
                let p = parts(layer)?;
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs =
                    depthwise_attributes(layer, &cur.shape, *kernel_size, *strides, *padding)?;
                let (dims, kernel) = depthwise_oihw(&p.weights.kernel);
                let w = (dims.as_slice(), kernel.as_slice());
                cur.name = qlinear_conv(&mut g, name, &cur.name, in_q, &p, w, attrs, codes);
                if *relu {
                    clip_at(&mut g, &mut cur, p.output.zero_point, name, codes);
                }
                in_q = p.output;
            }
            LayerKind::AvgPool2d {
                pool,
                strides,
                padding,
            } => {
                g.transpose_to(&mut cur, Layout::Nchw);
                let attrs = avg_pool_attributes(name, &cur.shape, *pool, *strides, *padding)?;
                let (xs, xz) = act_params(&mut g, &format!("{name}/input"), in_q);
                let (ys, yz) = act_params(&mut g, &format!("{name}/output"), in_q);
                cur.name = g.node_in(
                    MS_DOMAIN,
                    "QLinearAveragePool",
                    &[&cur.name, &xs, &xz, &ys, &yz],
                    attrs,
                    name,
                );
            }
            LayerKind::GlobalAvgPool2d => {
                let out = output_of(layer)?;
                g.transpose_to(&mut cur, Layout::Nchw);
                let (xs, xz) = act_params(&mut g, &format!("{name}/input"), in_q);
                let (ys, yz) = act_params(&mut g, &format!("{name}/output"), out);
                let pooled = g.node_in(
                    MS_DOMAIN,
                    "QLinearGlobalAveragePool",
                    &[&cur.name, &xs, &xz, &ys, &yz],
                    vec![int("channels_last", 0)],
                    name,
                );
                let channels = layer.output_shape.iter().product::<usize>() as i64;
                let flat = shape_init(&mut g, &format!("{name}/flat"), &[0, channels]);
                cur.name = g.node("Reshape", &[&pooled, &flat], vec![], name);
                cur.layout = Layout::Nhwc;
                in_q = out;
            }
            LayerKind::Relu6 => {
                // The codes of 0 and 6, as pare's engine clamps.
                let (lo, hi) = relu6_range((in_q.scale, in_q.zero_point));
                let lo_code = zero_point_as(&mut g, format!("{name}/min"), lo, codes);
                let hi_code = zero_point_as(&mut g, format!("{name}/max"), hi.max(lo), codes);
                cur.name = g.node("Clip", &[&cur.name, &lo_code, &hi_code], vec![], name);
            }
            LayerKind::Sigmoid => {
                let out = output_of(layer)?;
                let (xs, xz) = act_params(&mut g, &format!("{name}/input"), in_q);
                let (ys, yz) = act_params(&mut g, &format!("{name}/output"), out);
                cur.name = g.node_in(
                    MS_DOMAIN,
                    "QLinearSigmoid",
                    &[&cur.name, &xs, &xz, &ys, &yz],
                    vec![],
                    name,
                );
                in_q = out;
            }
            LayerKind::Tanh | LayerKind::HardSwish | LayerKind::Softmax => {
                // Neither ONNX nor onnxruntime's contrib domain has an integer tanh or
                // hard-swish: the float operator between a DequantizeLinear and a
                // QuantizeLinear, as onnxruntime's own quantizer leaves operators it has no
                // QLinear form for. Softmax too: `com.microsoft.QLinearSoftmax` computes
                // through a float table, no closer to TFLite's fixed-point kernel than the
                // float `Softmax` (over the last axis of the NHWC value).
                let out = output_of(layer)?;
                if layer.kind == LayerKind::Softmax {
                    g.transpose_to(&mut cur, Layout::Nhwc);
                }
                let (xs, xz) = act_params(&mut g, &format!("{name}/input"), in_q);
                let x = g.node(
                    "DequantizeLinear",
                    &[&cur.name, &xs, &xz],
                    vec![],
                    &format!("{name}/input"),
                );
                let y = match layer.kind {
                    LayerKind::Tanh => g.node("Tanh", &[&x], vec![], name),
                    LayerKind::Softmax => g.node("Softmax", &[&x], vec![int("axis", -1)], name),
                    _ => hard_swish(&mut g, &x, name),
                };
                let (ys, yz) = act_params(&mut g, &format!("{name}/output"), out);
                cur.name = g.node(
                    "QuantizeLinear",
                    &[&y, &ys, &yz],
                    vec![],
                    &format!("{name}/output"),
                );
                in_q = out;
            }
        }
        cur.shape = layer.output_shape.clone();
        values.push((cur.clone(), in_q));
    }
    g.transpose_to(&mut cur, Layout::Nhwc);
    Ok(g.finish(
        "pare_qoperator",
        &cur.name,
        ("input", input_type, model.input_shape()),
        ("logits", codes.data_type(), model.output_shape()),
        doc(model, "QOperator"),
        metadata(model, "qoperator"),
    ))
}

/// A depthwise kernel's codes `[kh, kw, c · m]` as the weight of ONNX's grouped `Conv`
/// (`group = c`): `[c · m, 1, kh, kw]`, output channel `ci · m + j` reading input channel
/// `ci` in both.
fn depthwise_oihw(kernel: &ndarray::ArrayD<i8>) -> (Vec<usize>, Vec<i8>) {
    let k = kernel
        .view()
        .into_dimensionality::<ndarray::Ix3>()
        .expect("depthwise_oihw: int8 depthwise kernels are 3-D, checked by the model");
    let (kh, kw, cout) = k.dim();
    let t = k.permuted_axes([2, 0, 1]);
    (vec![cout, 1, kh, kw], t.iter().copied().collect())
}

/// The attributes of a depthwise conv on the `[h, w, c]` input: a conv's, `group = c`.
fn depthwise_attributes(
    layer: &QuantizedLayer,
    input: &[usize],
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: pare_quant::Padding,
) -> Result<Vec<crate::proto::AttributeProto>> {
    let &[_, _, channels] = input else {
        return Err(OnnxError::Unsupported {
            layer: layer.name.clone(),
            reason: format!("depthwise conv input must be [h, w, c], found {input:?}"),
        });
    };
    let mut attrs = conv_attributes(&layer.name, input, kernel, strides, tensor_padding(padding))?;
    attrs.push(int("group", channels as i64));
    Ok(attrs)
}

/// The attributes of an average pool: the window's, the padding left out of each window's
/// count, as TFLite's `AVERAGE_POOL_2D` (and Keras) count.
fn avg_pool_attributes(
    layer: &str,
    input: &[usize],
    pool: [usize; 2],
    strides: [usize; 2],
    padding: pare_quant::Padding,
) -> Result<Vec<crate::proto::AttributeProto>> {
    let mut attrs = window_attributes(layer, input, pool, strides, tensor_padding(padding))?;
    attrs.push(int("count_include_pad", 0));
    Ok(attrs)
}

/// The inputs of a merge brought to one layout (the first's); returns it.
fn layout_of(g: &mut GraphBuilder, inputs: &mut [(Cursor, ActQuant)]) -> Layout {
    let mut cursors: Vec<Cursor> = inputs.iter().map(|(c, _)| c.clone()).collect();
    let layout = one_layout(g, &mut cursors);
    for ((c, _), moved) in inputs.iter_mut().zip(cursors) {
        *c = moved;
    }
    layout
}

fn shape_init(g: &mut GraphBuilder, layer: &str, shape: &[i64]) -> String {
    g.i64s(format!("{layer}/shape"), &[shape.len()], shape)
}

#[allow(clippy::too_many_arguments)]
fn qlinear_conv(
    g: &mut GraphBuilder,
    layer: &str,
    x: &str,
    in_q: ActQuant,
    p: &Parts<'_>,
    (dims, kernel): (&[usize], &[i8]),
    attrs: Vec<crate::proto::AttributeProto>,
    codes: ActivationType,
) -> String {
    let (xs, xz) = act_params_as(g, &format!("{layer}/input"), in_q, codes);
    let w = g.i8s(format!("{layer}/kernel"), dims, kernel);
    let (ws, wz) = weight_params(g, layer, &p.weights.scale);
    let (ys, yz) = act_params_as(g, &format!("{layer}/output"), p.output, codes);
    let b = g.i32s(format!("{layer}/bias"), &[p.bias.len()], p.bias);
    g.node(
        "QLinearConv",
        &[x, &xs, &xz, &w, &ws, &wz, &ys, &yz, &b],
        attrs,
        layer,
    )
}

/// pare's ReLU on int8 codes: a clamp below at the zero point (the code of real 0).
fn clip_at(
    g: &mut GraphBuilder,
    cur: &mut Cursor,
    zero_point: i32,
    layer: &str,
    codes: ActivationType,
) {
    if zero_point <= i8::MIN as i32 {
        return;
    }
    let lo = zero_point_as(g, format!("{layer}/relu_floor"), zero_point, codes);
    cur.name = g.node("Clip", &[&cur.name, &lo], vec![], &format!("{layer}/relu"));
}

fn doc(model: &QuantizedModel, form: &str) -> String {
    let p = model.provenance();
    format!(
        "pare int8 model ({form}): {} weights, observer {}, {} calibration examples",
        if p.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        p.observer.as_deref().unwrap_or("none"),
        p.calibration_examples
    )
}

fn metadata(model: &QuantizedModel, form: &str) -> Vec<(String, String)> {
    let mut m = vec![("pare.format".to_string(), form.to_string())];
    if let Some(q) = model.input_quant() {
        m.push(("pare.input_scale".into(), q.scale.to_string()));
        m.push(("pare.input_zero_point".into(), q.zero_point.to_string()));
    }
    if let Some(q) = model.output_quant() {
        m.push(("pare.output_scale".into(), q.scale.to_string()));
        m.push(("pare.output_zero_point".into(), q.zero_point.to_string()));
    }
    m
}
