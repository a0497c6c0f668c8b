//! The quantized model: layers with int8 weights and per-tensor activation parameters, checked
//! once when built, plus the state the engine derives from them (packed weights, fixed-point
//! multipliers, lookup tables).

use std::fmt;

use ndarray::{ArrayD, Axis, IxDyn};
use pare_tensor::nn::{
    AvgPool2d, Conv2d, Dense, DepthwiseConv2d, GlobalAveragePool2d, HardSwish, LeakyReLU,
    MaxPool2d, ReLU, ReLU6, Reshape, Sigmoid, Softmax, Tanh,
};
use pare_tensor::nn::{Layer, Model};
use pare_tensor::{Activation as FloatActivation, Param, Sequential};
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::int4::WeightBits;
use crate::kernels::add::AddParams;
use crate::kernels::avgpool::ReduceMeanParams;
use crate::kernels::lut::{HardSwishParams, LOGISTIC_OUTPUT, TANH_OUTPUT, lut_i8, relu6_range};
use crate::kernels::softmax::SoftmaxParams;
use crate::kernels::{
    Activation, ConvPool, Im2col, Kernel, LeakyReluParams, PackedWeights, Padding, Requant,
    Rounding, Window2d, activation_range, onnxruntime_leaky_relu_table,
};
use crate::observer::ObserverKind;
use crate::params::{QMAX_I8, QMIN_I8, QMIN_WEIGHT, QuantParams};

/// Largest number of elements of one example's activation (or im2col patch matrix) a model may
/// declare: 2^28 bytes. It bounds what the engine allocates for a model read from a file.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// What is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Weights, biases and activations are integers; the model runs on the integer-only engine
    /// (TFLite's full-integer post-training quantization).
    #[default]
    FullInteger,
    /// Weights are int8 with per-channel scales; activations and biases stay float (TFLite's
    /// dynamic-range quantization). Needs no calibration data; runs at float speed, but the
    /// file shrinks to about a quarter.
    DynamicRange,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::FullInteger => "full-integer",
            Mode::DynamicRange => "dynamic-range",
        })
    }
}

/// The input type a full-integer model declares (TFLite's `inference_input_type`).
///
/// Every entry point of the engine works whatever is declared — uint8 codes are the int8 codes
/// plus 128 with the zero point plus 128, so the two are the same data — but the declared type
/// is stored in the file so deployment code knows what to feed, and
/// [`QuantizedModel::input_params`] reports the parameters for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Float input, quantized by the engine.
    #[default]
    Float,
    /// int8 codes with the input parameters.
    Int8,
    /// uint8 codes: int8 + 128, zero point + 128 (same scale).
    Uint8,
}

/// The output type a full-integer model declares (TFLite's `inference_output_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    /// Dequantized float logits.
    #[default]
    Float,
    /// int8 logits with the output parameters.
    Int8,
}

/// Per-tensor int8 activation parameters: `real = scale · (q − zero_point)`, `q` in
/// [−128, 127].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActQuant {
    /// Scale, finite and positive.
    pub scale: f32,
    /// Zero point in [−128, 127].
    pub zero_point: i32,
}

impl ActQuant {
    /// Checked parameters.
    ///
    /// # Errors
    /// If the scale is not finite and positive or the zero point is outside [−128, 127].
    pub fn new(scale: f32, zero_point: i32) -> Result<Self> {
        let a = ActQuant { scale, zero_point };
        a.validate()?;
        Ok(a)
    }

    /// The per-tensor parameters of an observer's result.
    ///
    /// # Errors
    /// If `params` is per channel, not int8, or invalid.
    pub fn from_params(params: &QuantParams) -> Result<Self> {
        params.validate()?;
        if params.is_per_channel() || params.qmin != QMIN_I8 || params.qmax != QMAX_I8 {
            return Err(QuantError::InvalidParameter {
                name: "activation parameters",
                value: format!("{params:?}"),
                reason: "activations take per-tensor int8 parameters in [-128, 127]",
            });
        }
        Self::new(params.scale[0], params.zero_point[0])
    }

    /// As [`QuantParams`] (per tensor, [−128, 127]).
    pub fn params(&self) -> QuantParams {
        QuantParams {
            scale: vec![self.scale],
            zero_point: vec![self.zero_point],
            axis: None,
            qmin: QMIN_I8,
            qmax: QMAX_I8,
        }
    }

    /// Quantizes one value as [`quantize`](crate::quantize) does: `round(x / scale) + zp`,
    /// half away from zero, clamped. NaN maps to the zero point.
    #[inline]
    pub fn quantize(&self, x: f32) -> i8 {
        let r = (x / self.scale).round();
        // `as i32` saturates, so huge values cannot overflow the addition below.
        let r = if r.is_nan() { 0 } else { r as i32 };
        r.saturating_add(self.zero_point).clamp(QMIN_I8, QMAX_I8) as i8
    }

    /// `scale · (q − zero_point)`.
    #[inline]
    pub fn dequantize(&self, q: i8) -> f32 {
        self.scale * (q as i32 - self.zero_point) as f32
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(QuantError::InvalidScale {
                channel: 0,
                scale: self.scale,
            });
        }
        if !(QMIN_I8..=QMAX_I8).contains(&self.zero_point) {
            return Err(QuantError::InvalidZeroPoint {
                channel: 0,
                zero_point: self.zero_point,
                qmin: QMIN_I8,
                qmax: QMAX_I8,
            });
        }
        Ok(())
    }

    /// The same real values as uint8 codes: zero point + 128.
    pub fn to_uint8(self) -> (f32, i32) {
        (self.scale, self.zero_point + 128)
    }
}

/// The operation of one quantized layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LayerKind {
    /// Convolution, kernel `[kh, kw, in, out]`, optionally with a fused ReLU (a clamp).
    Conv2d {
        /// `[kh, kw]`.
        kernel_size: [usize; 2],
        /// `[sh, sw]`.
        strides: [usize; 2],
        /// Padding mode.
        #[serde(default, skip_serializing_if = "is_valid")]
        padding: Padding,
        /// Fused ReLU.
        #[serde(default, skip_serializing_if = "is_false")]
        relu: bool,
    },
    /// Fully connected, kernel `[in, out]`, optionally with a fused ReLU.
    Dense {
        /// Fused ReLU.
        #[serde(default, skip_serializing_if = "is_false")]
        relu: bool,
    },
    /// Max pooling; keeps the input's parameters.
    MaxPool2d {
        /// Window `[ph, pw]`.
        pool: [usize; 2],
        /// `[sh, sw]`.
        strides: [usize; 2],
        /// Padding mode.
        #[serde(default, skip_serializing_if = "is_valid")]
        padding: Padding,
    },
    /// Reshape (and flatten) to a per-example shape; data and parameters unchanged.
    Reshape {
        /// Target shape without the batch dimension.
        shape: Vec<usize>,
    },
    /// A ReLU that could not be fused: clamps at the zero point, keeps the parameters.
    Relu,
    /// Leaky ReLU with its own output parameters (TFLite's int8 `LEAKY_RELU`).
    LeakyRelu {
        /// Slope below zero.
        alpha: f32,
    },
    /// Depthwise convolution (TFLite's `DEPTHWISE_CONV_2D`), kernel `[kh, kw, c, m]` with
    /// depth multiplier `m` and one weight scale per output channel `ci · m + j`, optionally
    /// with a fused ReLU.
    DepthwiseConv2d {
        /// `[kh, kw]`.
        kernel_size: [usize; 2],
        /// `[sh, sw]`.
        strides: [usize; 2],
        /// Padding mode.
        #[serde(default, skip_serializing_if = "is_valid")]
        padding: Padding,
        /// Fused ReLU.
        #[serde(default, skip_serializing_if = "is_false")]
        relu: bool,
    },
    /// Average pooling (TFLite's `AVERAGE_POOL_2D`); keeps the input's parameters.
    AvgPool2d {
        /// Window `[ph, pw]`.
        pool: [usize; 2],
        /// `[sh, sw]`.
        strides: [usize; 2],
        /// Padding mode.
        #[serde(default, skip_serializing_if = "is_valid")]
        padding: Padding,
    },
    /// Mean over height and width, `[h, w, c]` to `[c]`, with its own output parameters
    /// (TFLite's `MEAN` over axes 1 and 2, as Keras' `GlobalAveragePooling2D` converts).
    GlobalAvgPool2d,
    /// ReLU6 that could not be fused: clamps to the codes of 0 and 6, keeps the parameters
    /// (TFLite's `RELU6` with equal input and output parameters).
    Relu6,
    /// Logistic sigmoid (TFLite's int8 `LOGISTIC`), output parameters fixed at scale 1/256,
    /// zero point −128.
    Sigmoid,
    /// Hyperbolic tangent (TFLite's int8 `TANH`), output parameters fixed at scale 1/128, zero
    /// point 0.
    Tanh,
    /// Hard-swish `x · relu6(x + 3) / 6` with its own output parameters (TFLite's int8
    /// `HARD_SWISH`).
    HardSwish,
    /// Softmax over the last axis (TFLite's int8 `SOFTMAX` with β = 1, reference kernel),
    /// output parameters fixed at scale 1/256, zero point −128.
    Softmax,
    /// Element-wise sum of two inputs of one shape with its own output parameters, optionally
    /// with a fused ReLU (TFLite's int8 `ADD`: each input rescaled to twice the larger input
    /// scale at 20 extra bits, summed, rescaled to the output).
    Add {
        /// Fused ReLU (a ReLU after the add, clamped as TFLite's converter fuses it).
        #[serde(default, skip_serializing_if = "is_false")]
        relu: bool,
    },
    /// Two or more inputs joined on the last (channel) axis (TFLite's int8 `CONCATENATION`):
    /// every input has the output's parameters, which the converter imposes on the layers
    /// that produce them, so the codes are copied unchanged.
    Concatenate,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_valid(p: &Padding) -> bool {
    *p == Padding::Valid
}

impl LayerKind {
    /// Short operation name (`conv2d`, `dense`, `max_pool2d`, `reshape`, `relu`, `leaky_relu`).
    pub fn op_name(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "conv2d",
            LayerKind::Dense { .. } => "dense",
            LayerKind::MaxPool2d { .. } => "max_pool2d",
            LayerKind::Reshape { .. } => "reshape",
            LayerKind::Relu => "relu",
            LayerKind::LeakyRelu { .. } => "leaky_relu",
            LayerKind::DepthwiseConv2d { .. } => "depthwise_conv2d",
            LayerKind::AvgPool2d { .. } => "avg_pool2d",
            LayerKind::GlobalAvgPool2d => "global_avg_pool2d",
            LayerKind::Relu6 => "relu6",
            LayerKind::Sigmoid => "sigmoid",
            LayerKind::Tanh => "tanh",
            LayerKind::HardSwish => "hard_swish",
            LayerKind::Softmax => "softmax",
            LayerKind::Add { .. } => "add",
            LayerKind::Concatenate => "concatenate",
        }
    }

    /// How many inputs the operation takes: `(at least, at most)`.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            LayerKind::Add { .. } => (2, 2),
            LayerKind::Concatenate => (2, usize::MAX),
            _ => (1, 1),
        }
    }

    /// Whether the layer has weights.
    pub fn has_weights(&self) -> bool {
        matches!(
            self,
            LayerKind::Conv2d { .. } | LayerKind::Dense { .. } | LayerKind::DepthwiseConv2d { .. }
        )
    }

    /// Whether the layer has output parameters of its own (others pass the input's through).
    /// Sigmoid, tanh and softmax have new parameters too, but fixed ones ([`fixed_output`](Self::fixed_output));
    /// a concatenation's are its inputs' (checked when the model is built).
    pub fn requantizes(&self) -> bool {
        matches!(
            self,
            LayerKind::Conv2d { .. }
                | LayerKind::Dense { .. }
                | LayerKind::LeakyRelu { .. }
                | LayerKind::DepthwiseConv2d { .. }
                | LayerKind::GlobalAvgPool2d
                | LayerKind::HardSwish
                | LayerKind::Sigmoid
                | LayerKind::Tanh
                | LayerKind::Softmax
                | LayerKind::Add { .. }
                | LayerKind::Concatenate
        )
    }

    /// The output parameters TFLite prescribes for this op whatever the data: scale 1/256,
    /// zero point −128 for `LOGISTIC` and `SOFTMAX`, 1/128 and 0 for `TANH`; `None` for the
    /// others.
    pub fn fixed_output(&self) -> Option<ActQuant> {
        let (scale, zero_point) = match self {
            LayerKind::Sigmoid => crate::kernels::lut::LOGISTIC_OUTPUT,
            LayerKind::Tanh => crate::kernels::lut::TANH_OUTPUT,
            LayerKind::Softmax => crate::kernels::softmax::SOFTMAX_OUTPUT,
            _ => return None,
        };
        Some(ActQuant { scale, zero_point })
    }
}

/// A bias: int32 at scale `s_in · s_w[c]` (full integer) or float (dynamic range).
#[derive(Debug, Clone, PartialEq)]
pub enum Bias {
    /// int32, zero point 0, scale `s_in · s_w[c]`.
    Int32(Vec<i32>),
    /// float.
    Float(Vec<f32>),
}

impl Bias {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            Bias::Int32(b) => b.len(),
            Bias::Float(b) => b.len(),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The quantized weights of a conv or dense layer: symmetric in [−127, 127] (int8) or [−7, 7]
/// (int4, held as int8 codes), one scale per output channel (the last axis) or one for the
/// tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// Kernel codes, `[kh, kw, in, out]` or `[in, out]`.
    pub kernel: ArrayD<i8>,
    /// Scales: one per output channel, or one.
    pub scale: Vec<f32>,
    /// Bias, one per output channel.
    pub bias: Bias,
    /// The codes' width: every code lies in `[bits.qmin(), bits.qmax()]`.
    pub bits: WeightBits,
}

impl QuantizedWeights {
    /// The kernel as float: `q · scale[c]`.
    pub fn dequantized_kernel(&self) -> ArrayD<f32> {
        let mut w = self.kernel.mapv(|q| q as f32);
        let last = Axis(w.ndim() - 1);
        for (c, mut ch) in w.axis_iter_mut(last).enumerate() {
            let s = self.scale[if self.scale.len() == 1 { 0 } else { c }];
            ch.mapv_inplace(|v| v * s);
        }
        w
    }

    /// Output channels.
    pub fn channels(&self) -> usize {
        self.kernel.shape().last().copied().unwrap_or(0)
    }
}

/// One layer of a [`QuantizedModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLayer {
    /// Name of the float layer it came from (for a conv/dense with a fused ReLU, the conv's).
    pub name: String,
    /// The operation.
    pub kind: LayerKind,
    /// Weights of a conv or dense layer.
    pub weights: Option<QuantizedWeights>,
    /// Output parameters (full-integer models; `None` in dynamic-range models).
    pub output: Option<ActQuant>,
    /// Input shape of one example (filled in when the model is built).
    pub input_shape: Vec<usize>,
    /// Output shape of one example (filled in when the model is built).
    pub output_shape: Vec<usize>,
    /// The names of the layers (or [`pare_tensor::INPUT`], the model's input) whose outputs
    /// this layer takes, in order; empty for the layer before it (the input for the first
    /// layer), so a chain has no wiring at all. Every input comes before the layer.
    pub inputs: Vec<String>,
}

/// Where a layer's input comes from, resolved from [`QuantizedLayer::inputs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The model's input.
    Input,
    /// The output of the layer at this index.
    Layer(usize),
}

/// Which scratch buffer holds each value while the engine runs a batch: the input and every
/// layer's output get a slot, reused once no later layer reads the value (register
/// allocation over the layers' order). A chain uses two slots, alternately.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schedule {
    /// Each layer's inputs, resolved.
    pub sources: Vec<Vec<Source>>,
    /// The input's slot (full-integer models; the slots are empty in dynamic-range ones).
    pub input: usize,
    /// Each layer's output slot.
    pub output: Vec<usize>,
    /// Each slot's size for one example, in elements.
    pub len: Vec<usize>,
}

/// How a float model was quantized, recorded for reports and the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The observer that chose the activation ranges (`None` for dynamic range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<String>,
    /// Whether weights have one scale per output channel.
    pub per_channel: bool,
    /// Calibration examples seen.
    pub calibration_examples: usize,
}

impl Provenance {
    pub(crate) fn new(observer: Option<ObserverKind>, per_channel: bool, n: usize) -> Self {
        Provenance {
            observer: observer.map(|o| o.as_str().to_string()),
            per_channel,
            calibration_examples: n,
        }
    }
}

/// What the engine precomputes for one layer.
#[derive(Debug, Clone)]
pub(crate) enum Prepared {
    Conv {
        im2col: Im2col,
        packed: PackedWeights,
        bias: Vec<i32>,
        requant: Requant,
        input_zero_point: i32,
        /// A 1×1, stride-1 convolution reads its input directly as the patch matrix.
        direct: bool,
        /// The direct conv fused with the max-pool that follows, when the pair qualifies.
        fused: Option<Box<ConvPool>>,
    },
    Dense {
        packed: PackedWeights,
        bias: Vec<i32>,
        requant: Requant,
        input_zero_point: i32,
    },
    Pool {
        window: Window2d,
    },
    Reshape,
    Relu {
        floor: i8,
    },
    Lut(Box<[i8; 256]>),
    Softmax(SoftmaxParams),
    Depthwise {
        /// `[kh · kw, c · m]`, row-major.
        kernel: Vec<i8>,
        bias: Vec<i32>,
        requant: Requant,
        input_zero_point: i32,
        multiplier: usize,
        window: Window2d,
    },
    AvgPool {
        window: Window2d,
    },
    Mean(ReduceMeanParams),
    Add(AddParams),
    Concat {
        /// Each input's size along the last axis.
        widths: Vec<usize>,
    },
    Clamp {
        lo: i8,
        hi: i8,
    },
}

/// A quantized network: what [`convert`](crate::convert()) produces and
/// [`load`](QuantizedModel::load) reads back.
///
/// Run it with [`predict`](Self::predict) (float in, float logits out),
/// [`predict_i8`](Self::predict_i8) / [`predict_u8`](Self::predict_u8) (integer in and out), or,
/// for repeated small batches without allocation, an [`Interpreter`](crate::Interpreter).
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    pub(crate) mode: Mode,
    pub(crate) input_type: InputType,
    pub(crate) output_type: OutputType,
    pub(crate) input_shape: Vec<usize>,
    pub(crate) input: Option<ActQuant>,
    pub(crate) layers: Vec<QuantizedLayer>,
    pub(crate) provenance: Provenance,
    pub(crate) prepared: Vec<Prepared>,
    /// Each layer's inputs and the engine's buffer plan (boxed: a model is moved around by
    /// value, and a chain's plan is rarely read).
    pub(crate) schedule: Box<Schedule>,
    /// The float network with dequantized weights (dynamic-range models).
    pub(crate) float: Option<Sequential>,
    /// Largest activation and patch matrix of one example, in elements.
    pub(crate) max_activation: usize,
    pub(crate) max_patches: usize,
    /// The engine's rounding rule (a run-time choice, not stored in the file).
    pub(crate) rounding: Rounding,
}

/// The parts of a model before it is checked.
pub(crate) struct ModelParts {
    pub mode: Mode,
    pub input_type: InputType,
    pub output_type: OutputType,
    pub input_shape: Vec<usize>,
    pub input: Option<ActQuant>,
    pub layers: Vec<QuantizedLayer>,
    pub provenance: Provenance,
}

fn bad_layer(layer: &QuantizedLayer, reason: impl Into<String>) -> QuantError {
    QuantError::UnsupportedLayer {
        layer: layer.name.clone(),
        reason: reason.into(),
    }
}

fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

impl QuantizedModel {
    /// Checks every part (shapes chain, weights fit, parameters in range, multipliers
    /// representable), fills in the layer shapes and prepares the engine.
    pub(crate) fn from_parts(parts: ModelParts) -> Result<Self> {
        Self::from_parts_with(parts, Rounding::Tflite)
    }

    /// [`from_parts`](Self::from_parts) with the engine prepared for `rounding`.
    fn from_parts_with(parts: ModelParts, rounding: Rounding) -> Result<Self> {
        let ModelParts {
            mode,
            input_type,
            output_type,
            input_shape,
            input,
            mut layers,
            provenance,
        } = parts;
        let full = mode == Mode::FullInteger;
        if input_shape.is_empty() || input_shape.contains(&0) || elements(&input_shape).is_none() {
            return Err(QuantError::ShapeMismatch {
                op: "model input (non-empty, at most 2^28 elements)",
                expected: vec![],
                found: input_shape,
            });
        }
        if full != input.is_some() {
            return Err(QuantError::InvalidParameter {
                name: "input parameters",
                value: format!("{input:?}"),
                reason: "a full-integer model has input parameters, a dynamic-range one none",
            });
        }
        if let Some(a) = &input {
            a.validate()?;
        }
        let sources = resolve_wiring(&mut layers)?;
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(layers.len());
        let mut outputs: Vec<Option<ActQuant>> = Vec::with_capacity(layers.len());
        let mut prepared = Vec::with_capacity(layers.len());
        let (mut max_activation, mut max_patches) = (elements(&input_shape).unwrap_or(0), 0usize);
        for (i, layer) in layers.iter_mut().enumerate() {
            let shape_of = |s: &Source| match *s {
                Source::Input => input_shape.clone(),
                Source::Layer(j) => shapes[j].clone(),
            };
            let params_of = |s: &Source| match *s {
                Source::Input => input,
                Source::Layer(j) => outputs[j],
            };
            let srcs = &sources[i];
            let shape = shape_of(&srcs[0]);
            let params = params_of(&srcs[0]);
            layer.input_shape = shape.clone();
            if layer.kind.has_weights() != layer.weights.is_some() {
                return Err(bad_layer(
                    layer,
                    "conv and dense layers need weights, other layers have none",
                ));
            }
            if full != layer.output.is_some() {
                return Err(bad_layer(
                    layer,
                    format!(
                        "output parameters must be present exactly in full-integer models ({mode})"
                    ),
                ));
            }
            if let Some(o) = &layer.output {
                o.validate()?;
                if !layer.kind.requantizes() && Some(*o) != params {
                    return Err(bad_layer(
                        layer,
                        "a pooling, reshape, relu or relu6 layer must keep its input's parameters",
                    ));
                }
                if let Some(f) = layer.kind.fixed_output()
                    && f != *o
                {
                    return Err(bad_layer(
                        layer,
                        format!(
                            "int8 {} has fixed output parameters (scale {}, zero point {}), \
                             found scale {}, zero point {}",
                            layer.kind.op_name(),
                            f.scale,
                            f.zero_point,
                            o.scale,
                            o.zero_point
                        ),
                    ));
                }
            }
            let (out_shape, prep, patches) = match layer.kind {
                LayerKind::Add { .. } | LayerKind::Concatenate => {
                    let ins: Vec<Vec<usize>> = srcs.iter().map(shape_of).collect();
                    let qs: Vec<Option<ActQuant>> = srcs.iter().map(params_of).collect();
                    prepare_merge(layer, &ins, &qs)?
                }
                _ => prepare_layer(layer, &shape, params.as_ref(), rounding)?,
            };
            let n = elements(&out_shape).ok_or_else(|| {
                bad_layer(
                    layer,
                    format!("output {out_shape:?} has more than 2^28 elements"),
                )
            })?;
            max_activation = max_activation.max(n);
            max_patches = max_patches.max(patches);
            if let Some(p) = prep {
                prepared.push(p);
            }
            layer.output_shape = out_shape.clone();
            shapes.push(out_shape);
            outputs.push(if layer.output.is_some() {
                layer.output
            } else {
                params
            });
        }
        // The fused conv + pool kernel has a fixed-point output stage only.
        if full && rounding == Rounding::Tflite {
            fuse_conv_pool(&layers, &sources, &mut prepared);
        }
        let mut schedule = if full {
            schedule(&input_shape, &layers, &sources, &prepared)
        } else {
            Schedule::default()
        };
        let float = (!full).then(|| dequantized_model(&input_shape, input, &layers, &sources));
        schedule.sources = sources;
        Ok(QuantizedModel {
            mode,
            input_type,
            output_type,
            input_shape,
            input,
            layers,
            provenance,
            prepared,
            schedule: Box::new(schedule),
            float,
            max_activation,
            max_patches,
            rounding,
        })
    }

    /// The same model with its integer engine rounding as `rounding` prescribes: TFLite's
    /// fixed-point rule (the default, what [`convert`](crate::convert()) and
    /// [`load`](Self::load) give) or onnxruntime's f32 rule, to reproduce that runtime's int8
    /// outputs bit for bit (as the ONNX export's tests do). Weights, scales and zero points are
    /// unchanged; only how accumulators are rescaled differs, by at most one code per layer.
    ///
    /// # Errors
    /// Only if the model's parameters are invalid under the new rule, which they are not for a
    /// model that loaded or converted: both rules accept the same scales.
    pub fn with_rounding(self, rounding: Rounding) -> Result<Self> {
        if rounding == self.rounding {
            return Ok(self);
        }
        Self::from_parts_with(
            ModelParts {
                mode: self.mode,
                input_type: self.input_type,
                output_type: self.output_type,
                input_shape: self.input_shape,
                input: self.input,
                layers: self.layers,
                provenance: self.provenance,
            },
            rounding,
        )
    }

    /// The integer engine's rounding rule (see [`with_rounding`](Self::with_rounding)).
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// Full integer or dynamic range.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The declared input type.
    pub fn input_type(&self) -> InputType {
        self.input_type
    }

    /// The declared output type.
    pub fn output_type(&self) -> OutputType {
        self.output_type
    }

    /// Shape of one input example.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Shape of one output example.
    pub fn output_shape(&self) -> &[usize] {
        self.layers
            .last()
            .map_or(&self.input_shape, |l| &l.output_shape)
    }

    /// The int8 input parameters (`None` for a dynamic-range model).
    pub fn input_quant(&self) -> Option<ActQuant> {
        self.input
    }

    /// `(scale, zero_point)` of the declared input type: the int8 parameters, the uint8 ones
    /// (zero point + 128), or `None` for float input and dynamic-range models.
    pub fn input_params(&self) -> Option<(f32, i32)> {
        let a = self.input?;
        match self.input_type {
            InputType::Float => None,
            InputType::Int8 => Some((a.scale, a.zero_point)),
            InputType::Uint8 => Some(a.to_uint8()),
        }
    }

    /// The int8 output parameters (the last layer's), `None` for a dynamic-range model.
    pub fn output_quant(&self) -> Option<ActQuant> {
        match self.layers.last() {
            Some(l) => l.output,
            None => self.input,
        }
    }

    /// The layers.
    pub fn layers(&self) -> &[QuantizedLayer] {
        &self.layers
    }

    /// The inputs of layer `i`, resolved from its [`QuantizedLayer::inputs`]; `None` for no
    /// such layer.
    pub fn layer_inputs(&self, i: usize) -> Option<&[Source]> {
        self.schedule.sources.get(i).map(Vec::as_slice)
    }

    /// True when every layer takes the layer before it (no wiring).
    pub fn is_sequential(&self) -> bool {
        self.layers.iter().all(|l| l.inputs.is_empty())
    }

    /// How the model was quantized.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// The float network this model computes with its weights dequantized (`q · scale`) and
    /// float activations: what a dynamic-range model runs, and a reference for a full-integer
    /// one (its biases dequantized too).
    pub fn dequantized_model(&self) -> Sequential {
        match &self.float {
            Some(m) => m.clone(),
            None => dequantized_model(
                &self.input_shape,
                self.input,
                &self.layers,
                &self.schedule.sources,
            ),
        }
    }
}

fn conv_kernel_shape(
    layer: &QuantizedLayer,
    w: &QuantizedWeights,
    input: &[usize],
) -> Result<(usize, usize)> {
    let &[kh, kw, cin, cout] = w.kernel.shape() else {
        return Err(bad_layer(
            layer,
            format!(
                "conv kernel must be [kh, kw, in, out], found {:?}",
                w.kernel.shape()
            ),
        ));
    };
    let &[_, _, c] = input else {
        return Err(bad_layer(
            layer,
            format!("conv input must be [h, w, c], found {input:?}"),
        ));
    };
    if let LayerKind::Conv2d { kernel_size, .. } = layer.kind
        && kernel_size != [kh, kw]
    {
        return Err(bad_layer(
            layer,
            format!(
                "kernel size {kernel_size:?} but kernel shape {:?}",
                w.kernel.shape()
            ),
        ));
    }
    if cin != c {
        return Err(bad_layer(
            layer,
            format!("kernel takes {cin} input channels, input has {c}"),
        ));
    }
    Ok((kh * kw * cin, cout))
}

fn check_weights(layer: &QuantizedLayer, w: &QuantizedWeights, full: bool) -> Result<()> {
    let cout = w.channels();
    if cout == 0 || w.kernel.is_empty() {
        return Err(bad_layer(layer, "empty kernel"));
    }
    if w.scale.len() != 1 && w.scale.len() != cout {
        return Err(QuantError::ChannelMismatch {
            what: "weight scales vs output channels",
            expected: cout,
            found: w.scale.len(),
        });
    }
    for (channel, &scale) in w.scale.iter().enumerate() {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(QuantError::InvalidScale { channel, scale });
        }
    }
    let (lo, hi) = (w.bits.qmin().max(QMIN_WEIGHT), w.bits.qmax());
    if let Some(&q) = w.kernel.iter().find(|&&q| !(lo..=hi).contains(&(q as i32))) {
        return Err(bad_layer(
            layer,
            format!(
                "{} weight code {q} outside the symmetric range [{lo}, {hi}]",
                w.bits
            ),
        ));
    }
    if w.bias.len() != cout {
        return Err(QuantError::ChannelMismatch {
            what: "bias entries vs output channels",
            expected: cout,
            found: w.bias.len(),
        });
    }
    match (&w.bias, full) {
        (Bias::Int32(_), true) => Ok(()),
        (Bias::Float(b), false) => match b.iter().position(|v| !v.is_finite()) {
            Some(index) => Err(QuantError::NonFinite {
                what: "bias",
                index,
                value: b[index],
            }),
            None => Ok(()),
        },
        _ => Err(bad_layer(
            layer,
            "full-integer models have int32 biases, dynamic-range ones float biases",
        )),
    }
}

/// Output shape, engine state (full-integer models) and patch-matrix size of one layer.
fn prepare_layer(
    layer: &QuantizedLayer,
    input: &[usize],
    in_q: Option<&ActQuant>,
    rounding: Rounding,
) -> Result<(Vec<usize>, Option<Prepared>, usize)> {
    let full = in_q.is_some();
    let requant = |w: &QuantizedWeights, relu: bool| -> Result<Option<(Requant, Vec<i32>)>> {
        let (Some(i), Some(o)) = (in_q, layer.output.as_ref()) else {
            return Ok(None);
        };
        let act = if relu {
            Activation::Relu
        } else {
            Activation::None
        };
        let (lo, hi) = activation_range(act, o.scale, o.zero_point)?;
        let rq =
            Requant::from_scales_with(rounding, i.scale, &w.scale, o.scale, o.zero_point, lo, hi)?;
        let bias = match &w.bias {
            Bias::Int32(b) => b.clone(),
            Bias::Float(_) => unreachable!("prepare_layer: float bias in a full-integer model"),
        };
        Ok(Some((rq, bias)))
    };
    match &layer.kind {
        LayerKind::Conv2d {
            kernel_size,
            strides,
            padding,
            relu,
        } => {
            let w = layer.weights.as_ref().expect("checked by from_parts");
            check_weights(layer, w, full)?;
            let (k, cout) = conv_kernel_shape(layer, w, input)?;
            let window = Window2d::new(*kernel_size, *strides, *padding);
            let ([oh, ow], _) = window.geometry(&[1, input[0], input[1], input[2]])?;
            let patches = (oh * ow)
                .checked_mul(k)
                .filter(|&p| p <= MAX_ELEMENTS)
                .ok_or_else(|| bad_layer(layer, "patch matrix larger than 2^28 elements"))?;
            let direct = *kernel_size == [1, 1] && *strides == [1, 1];
            let im2col = Im2col::new(window, [input[0], input[1], input[2]])?;
            let prep = requant(w, *relu)?.map(|(requant, bias)| Prepared::Conv {
                im2col,
                packed: PackedWeights::new(kernel_2d(&w.kernel, k, cout)),
                bias,
                requant,
                input_zero_point: in_q.map_or(0, |q| q.zero_point),
                direct,
                fused: None,
            });
            Ok((vec![oh, ow, cout], prep, if direct { 0 } else { patches }))
        }
        LayerKind::Dense { relu } => {
            let w = layer.weights.as_ref().expect("checked by from_parts");
            check_weights(layer, w, full)?;
            let &[k, n] = w.kernel.shape() else {
                return Err(bad_layer(
                    layer,
                    format!(
                        "dense kernel must be [in, out], found {:?}",
                        w.kernel.shape()
                    ),
                ));
            };
            if input != [k] {
                return Err(bad_layer(
                    layer,
                    format!("dense kernel takes [{k}] inputs, found {input:?} (flatten first)"),
                ));
            }
            // TFLite 2.21's reference FULLY_CONNECTED rounds its rescaling once.
            let prep = requant(w, *relu)?.map(|(requant, bias)| Prepared::Dense {
                packed: PackedWeights::new(kernel_2d(&w.kernel, k, n)),
                bias,
                requant: match rounding {
                    Rounding::Tflite => requant.with_single_rounding(),
                    _ => requant,
                },
                input_zero_point: in_q.map_or(0, |q| q.zero_point),
            });
            Ok((vec![n], prep, 0))
        }
        LayerKind::MaxPool2d {
            pool,
            strides,
            padding,
        } => {
            let &[h, w, c] = input else {
                return Err(bad_layer(
                    layer,
                    format!("max-pool input must be [h, w, c], found {input:?}"),
                ));
            };
            let window = Window2d::new(*pool, *strides, *padding);
            let ([oh, ow], _) = window.geometry(&[1, h, w, c])?;
            Ok((
                vec![oh, ow, c],
                full.then_some(Prepared::Pool { window }),
                0,
            ))
        }
        LayerKind::Reshape { shape } => {
            if shape.is_empty() || elements(shape) != elements(input) {
                return Err(bad_layer(
                    layer,
                    format!("cannot reshape {input:?} to {shape:?}"),
                ));
            }
            Ok((shape.clone(), full.then_some(Prepared::Reshape), 0))
        }
        LayerKind::Relu => {
            let prep = in_q.map(|q| Prepared::Relu {
                floor: q.zero_point as i8,
            });
            Ok((input.to_vec(), prep, 0))
        }
        LayerKind::LeakyRelu { alpha } => {
            if !(alpha.is_finite() && *alpha >= 0.0) {
                return Err(QuantError::InvalidParameter {
                    name: "alpha",
                    value: alpha.to_string(),
                    reason: "the leaky ReLU slope must be finite and >= 0",
                });
            }
            let prep = match (in_q, layer.output.as_ref()) {
                (Some(i), Some(o)) => {
                    let (is, iz, os, oz) = (i.scale, i.zero_point, o.scale, o.zero_point);
                    let table = match rounding {
                        Rounding::Tflite => {
                            LeakyReluParams::from_scales(is, iz, os, oz, *alpha)?.table()
                        }
                        Rounding::OnnxRuntime => {
                            onnxruntime_leaky_relu_table(is, iz, os, oz, *alpha)?
                        }
                    };
                    Some(Prepared::Lut(Box::new(table)))
                }
                _ => None,
            };
            Ok((input.to_vec(), prep, 0))
        }
        LayerKind::DepthwiseConv2d {
            kernel_size,
            strides,
            padding,
            relu,
        } => {
            let w = layer.weights.as_ref().expect("checked by from_parts");
            check_weights(layer, w, full)?;
            let &[kh, kw, cout] = w.kernel.shape() else {
                return Err(bad_layer(
                    layer,
                    format!(
                        "depthwise kernel must be [kh, kw, c * multiplier], found {:?}",
                        w.kernel.shape()
                    ),
                ));
            };
            let &[h, wd, c] = input else {
                return Err(bad_layer(
                    layer,
                    format!("depthwise conv input must be [h, w, c], found {input:?}"),
                ));
            };
            if *kernel_size != [kh, kw] || c == 0 || cout % c != 0 {
                return Err(bad_layer(
                    layer,
                    format!(
                        "kernel size {kernel_size:?}, kernel {:?} and input {input:?} do not \
                         make a depthwise convolution",
                        w.kernel.shape()
                    ),
                ));
            }
            let window = Window2d::new(*kernel_size, *strides, *padding);
            let ([oh, ow], _) = window.geometry(&[1, h, wd, c])?;
            let prep = requant(w, *relu)?.map(|(requant, bias)| Prepared::Depthwise {
                kernel: w.kernel.iter().copied().collect(),
                bias,
                requant,
                input_zero_point: in_q.map_or(0, |q| q.zero_point),
                multiplier: cout / c,
                window,
            });
            Ok((vec![oh, ow, cout], prep, 0))
        }
        LayerKind::AvgPool2d {
            pool,
            strides,
            padding,
        } => {
            let &[h, w, c] = input else {
                return Err(bad_layer(
                    layer,
                    format!("average-pool input must be [h, w, c], found {input:?}"),
                ));
            };
            let window = Window2d::new(*pool, *strides, *padding);
            let ([oh, ow], _) = window.geometry(&[1, h, w, c])?;
            Ok((
                vec![oh, ow, c],
                full.then_some(Prepared::AvgPool { window }),
                0,
            ))
        }
        LayerKind::GlobalAvgPool2d => {
            let &[h, w, c] = input else {
                return Err(bad_layer(
                    layer,
                    format!("global average pool input must be [h, w, c], found {input:?}"),
                ));
            };
            let prep = match (in_q, layer.output.as_ref()) {
                (Some(i), Some(o)) => Some(Prepared::Mean(ReduceMeanParams::from_scales(
                    (i.scale, i.zero_point),
                    (o.scale, o.zero_point),
                    h * w,
                )?)),
                _ => None,
            };
            Ok((vec![c], prep, 0))
        }
        LayerKind::Relu6 => {
            let prep = in_q.map(|q| {
                let (lo, hi) = relu6_range((q.scale, q.zero_point));
                Prepared::Clamp {
                    lo: lo as i8,
                    hi: hi.max(lo) as i8,
                }
            });
            Ok((input.to_vec(), prep, 0))
        }
        LayerKind::Add { .. } | LayerKind::Concatenate => {
            unreachable!("prepare_layer: merges are prepared by prepare_merge")
        }
        LayerKind::Sigmoid | LayerKind::Tanh | LayerKind::HardSwish => {
            let prep = match (in_q, layer.output.as_ref()) {
                (Some(i), Some(o)) => {
                    let (input, output) = ((i.scale, i.zero_point), (o.scale, o.zero_point));
                    let table = match layer.kind {
                        LayerKind::Sigmoid => {
                            lut_i8(|x| 1.0 / (1.0 + (-x).exp()), input, LOGISTIC_OUTPUT)
                        }
                        LayerKind::Tanh => lut_i8(f32::tanh, input, TANH_OUTPUT),
                        _ => HardSwishParams::from_scales(input, output)?.table(),
                    };
                    Some(Prepared::Lut(Box::new(table)))
                }
                _ => None,
            };
            Ok((input.to_vec(), prep, 0))
        }
        LayerKind::Softmax => {
            let depth = input.last().copied().unwrap_or(0);
            // β is 1: pare's softmax has none, and TFLite's converter writes 1 for Keras'.
            let prep = in_q
                .map(|q| SoftmaxParams::from_scale(q.scale, 1.0, depth))
                .transpose()?
                .map(Prepared::Softmax);
            Ok((input.to_vec(), prep, 0))
        }
    }
}

/// Gives every conv followed by a max-pool it can be fused with (see [`ConvPool`]) its fused
/// form; the engine then runs the pair in one pass.
fn fuse_conv_pool(layers: &[QuantizedLayer], sources: &[Vec<Source>], prepared: &mut [Prepared]) {
    // Without VNNI the fused pass is scalar and slower than im2col + the AVX2 GEMM.
    if !Kernel::Avx512Vnni.is_available() {
        return;
    }
    // `prepared[i]` is read as `layers[i]`'s: in full-integer mode every layer, reshapes
    // included, has a prepared step.
    debug_assert_eq!(
        prepared.len(),
        layers.len(),
        "fuse_conv_pool: one prepared step per layer"
    );
    for i in 1..prepared.len() {
        // In a graph the pool must take the conv alone, and the conv feed nothing else.
        if sources[i] != [Source::Layer(i - 1)] || consumers(sources, i - 1) != 1 {
            continue;
        }
        let (head, tail) = prepared.split_at_mut(i);
        let (
            Prepared::Conv {
                bias,
                requant,
                input_zero_point,
                fused,
                ..
            },
            Prepared::Pool { window: pool },
        ) = (&mut head[i - 1], &tail[0])
        else {
            continue;
        };
        let layer = &layers[i - 1];
        let (
            LayerKind::Conv2d {
                kernel_size,
                strides,
                padding,
                ..
            },
            Some(w),
            &[h, wd, c],
        ) = (&layer.kind, &layer.weights, &layer.input_shape[..])
        else {
            continue;
        };
        let cout = bias.len();
        let k = w.kernel.len() / cout.max(1);
        if k * cout != w.kernel.len() || k != kernel_size[0] * kernel_size[1] * c {
            continue;
        }
        let conv = Window2d::new(*kernel_size, *strides, *padding);
        *fused = ConvPool::new(
            [h, wd, c],
            &conv,
            kernel_2d(&w.kernel, k, cout),
            bias,
            *input_zero_point,
            requant,
            pool,
        )
        .filter(|f| {
            let [ph, pw] = f.out_dims();
            layers[i].output_shape == [ph, pw, cout]
        })
        .map(Box::new);
    }
}

/// How many inputs of later layers read layer `i`'s output.
fn consumers(sources: &[Vec<Source>], i: usize) -> usize {
    sources
        .iter()
        .flatten()
        .filter(|s| **s == Source::Layer(i))
        .count()
}

/// Each layer's inputs resolved to [`Source`]s, checked: known names, each before the layer
/// that takes it, the number the op takes, every layer but the last read by a later one.
/// Inputs equal to the implicit "layer before" are cleared, so a chain has no wiring and
/// equal models compare equal however their wiring was spelled.
fn resolve_wiring(layers: &mut [QuantizedLayer]) -> Result<Vec<Vec<Source>>> {
    let sources = resolve_sources(layers)?;
    for (i, l) in layers.iter_mut().enumerate() {
        let before = if i == 0 {
            Source::Input
        } else {
            Source::Layer(i - 1)
        };
        if sources[i] == [before] {
            l.inputs.clear();
        }
    }
    Ok(sources)
}

/// [`resolve_wiring`] without clearing anything.
pub(crate) fn resolve_sources(layers: &[QuantizedLayer]) -> Result<Vec<Vec<Source>>> {
    let mut index = std::collections::HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        if index.insert(l.name.as_str(), i).is_some() {
            return Err(bad_layer(l, "two layers share this name"));
        }
    }
    let graph = layers.iter().any(|l| !l.inputs.is_empty());
    if graph && let Some(&i) = index.get(pare_tensor::INPUT) {
        return Err(bad_layer(
            &layers[i],
            "in a model with wiring, the name \"input\" stands for the model's input",
        ));
    }
    let mut sources = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let before = if i == 0 {
            Source::Input
        } else {
            Source::Layer(i - 1)
        };
        let srcs: Vec<Source> = if l.inputs.is_empty() {
            vec![before]
        } else {
            l.inputs
                .iter()
                .map(|name| match index.get(name.as_str()) {
                    _ if name == pare_tensor::INPUT => Ok(Source::Input),
                    Some(&j) if j < i => Ok(Source::Layer(j)),
                    _ => Err(bad_layer(
                        l,
                        format!("takes {name:?}, which is not the input or a layer before it"),
                    )),
                })
                .collect::<Result<_>>()?
        };
        let (lo, hi) = l.kind.arity();
        if !(lo..=hi).contains(&srcs.len()) {
            return Err(bad_layer(
                l,
                format!(
                    "int8 {} takes {}, found {} input(s)",
                    l.kind.op_name(),
                    match (lo, hi) {
                        (1, 1) => "one input".to_string(),
                        (a, b) if a == b => format!("{a} inputs"),
                        (a, _) => format!("{a} or more inputs"),
                    },
                    srcs.len()
                ),
            ));
        }
        sources.push(srcs);
    }
    let n = layers.len();
    for (i, l) in layers.iter().enumerate().take(n.saturating_sub(1)) {
        if consumers(&sources, i) == 0 {
            return Err(bad_layer(
                l,
                "no later layer takes its output (only the last layer is the model's output)",
            ));
        }
    }
    Ok(sources)
}

/// Output shape and engine state of an add or concatenation, from its inputs' shapes and
/// parameters.
fn prepare_merge(
    layer: &QuantizedLayer,
    shapes: &[Vec<usize>],
    params: &[Option<ActQuant>],
) -> Result<(Vec<usize>, Option<Prepared>, usize)> {
    let first = &shapes[0];
    match layer.kind {
        LayerKind::Add { relu } => {
            if shapes.iter().any(|s| s != first) {
                return Err(bad_layer(
                    layer,
                    format!("inputs of shapes {shapes:?} cannot be added: they must be equal"),
                ));
            }
            let prep = match (params[0], params[1], layer.output) {
                (Some(a), Some(b), Some(o)) => {
                    let act = if relu {
                        Activation::Relu
                    } else {
                        Activation::None
                    };
                    let (lo, hi) = activation_range(act, o.scale, o.zero_point)?;
                    Some(Prepared::Add(AddParams::from_scales(
                        (a.scale, a.zero_point),
                        (b.scale, b.zero_point),
                        (o.scale, o.zero_point),
                        lo,
                        hi,
                    )?))
                }
                _ => None,
            };
            Ok((first.clone(), prep, 0))
        }
        _ => {
            let fits = !first.is_empty()
                && shapes.iter().all(|s| {
                    s.len() == first.len() && s[..s.len() - 1] == first[..first.len() - 1]
                });
            if !fits {
                return Err(bad_layer(
                    layer,
                    format!(
                        "inputs of shapes {shapes:?} cannot be joined on the last axis: all \
                         other axes must be equal"
                    ),
                ));
            }
            // TFLite's int8 CONCATENATION copies codes: it requires every input to have the
            // output's scale and zero point (its Prepare checks both).
            if let Some(o) = layer.output
                && let Some(k) = params.iter().position(|p| *p != Some(o))
            {
                return Err(bad_layer(
                    layer,
                    format!(
                        "input {k} has parameters {:?}, the output {o:?}: int8 concatenation \
                         needs them equal",
                        params[k]
                    ),
                ));
            }
            let widths: Vec<usize> = shapes.iter().map(|s| s[s.len() - 1]).collect();
            let mut out = first.clone();
            *out.last_mut().expect("non-empty") = widths.iter().sum();
            let prep = layer.output.map(|_| Prepared::Concat { widths });
            Ok((out, prep, 0))
        }
    }
}

/// Whether the engine runs this step in place on its input's buffer (an element-wise step
/// that keeps the layout, or a reshape).
pub(crate) fn in_place(p: &Prepared) -> bool {
    matches!(
        p,
        Prepared::Reshape
            | Prepared::Relu { .. }
            | Prepared::Lut(_)
            | Prepared::Clamp { .. }
            | Prepared::Softmax(_)
    )
}

/// The engine's buffer plan (see [`Schedule`]): a layer's output takes its input's slot when
/// it runs in place on an input it reads last, else the lowest free slot; slots are freed
/// after the last layer reading them ran, so an output never shares a slot with an input of
/// its own layer. A conv fused with the pool after it writes the pool's output directly, so
/// its inputs stay live through the pool.
fn schedule(
    input_shape: &[usize],
    layers: &[QuantizedLayer],
    sources: &[Vec<Source>],
    prepared: &[Prepared],
) -> Schedule {
    let value = |s: &Source| match *s {
        Source::Input => 0,
        Source::Layer(j) => j + 1,
    };
    let mut last_use = vec![0usize; layers.len() + 1];
    for (i, srcs) in sources.iter().enumerate() {
        let fused = matches!(&prepared[i], Prepared::Conv { fused: Some(_), .. });
        for s in srcs {
            last_use[value(s)] = last_use[value(s)].max(i + usize::from(fused));
        }
    }
    if let Some(l) = last_use.last_mut() {
        *l = usize::MAX;
    }
    let mut len: Vec<usize> = vec![input_shape.iter().product()];
    let mut slot_of = vec![0usize; layers.len() + 1];
    let mut free: Vec<bool> = vec![false];
    for (i, layer) in layers.iter().enumerate() {
        let size: usize = layer.output_shape.iter().product();
        let src = value(&sources[i][0]);
        let slot = if in_place(&prepared[i]) && sources[i].len() == 1 && last_use[src] == i {
            last_use[src] = usize::MAX; // handed over, not freed below
            slot_of[src]
        } else {
            match free.iter().position(|&f| f) {
                Some(s) => {
                    free[s] = false;
                    s
                }
                None => {
                    free.push(false);
                    len.push(0);
                    free.len() - 1
                }
            }
        };
        len[slot] = len[slot].max(size);
        slot_of[i + 1] = slot;
        for v in 0..=i {
            if last_use[v] == i {
                free[slot_of[v]] = true;
            }
        }
    }
    Schedule {
        sources: Vec::new(),
        input: slot_of[0],
        output: slot_of[1..].to_vec(),
        len,
    }
}

fn kernel_2d(kernel: &ArrayD<i8>, k: usize, n: usize) -> ndarray::ArrayView2<'_, i8> {
    kernel
        .view()
        .into_shape_with_order((k, n))
        .expect("kernel_2d: a standard-layout kernel reshapes to [k, n]")
}

pub(crate) fn to_tensor_padding(p: Padding) -> pare_tensor::Padding {
    match p {
        Padding::Valid => pare_tensor::Padding::Valid,
        Padding::Same => pare_tensor::Padding::Same,
    }
}

pub(crate) fn from_tensor_padding(p: pare_tensor::Padding) -> Padding {
    match p {
        pare_tensor::Padding::Valid => Padding::Valid,
        pare_tensor::Padding::Same => Padding::Same,
    }
}

/// The float network of `layers` with dequantized weights (and biases: int32 ones at
/// `s_in · s_w[c]`).
fn dequantized_model(
    input_shape: &[usize],
    input: Option<ActQuant>,
    layers: &[QuantizedLayer],
    sources: &[Vec<Source>],
) -> Sequential {
    let mut nodes: Vec<(Layer, Vec<String>)> = Vec::with_capacity(layers.len());
    // The float node holding each quantized layer's output (a fused ReLU's, for an add).
    let mut node_of: Vec<String> = Vec::with_capacity(layers.len());
    let mut outputs: Vec<Option<ActQuant>> = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let src = |s: &Source| match *s {
            Source::Input => (pare_tensor::INPUT.to_string(), input),
            Source::Layer(j) => (node_of[j].clone(), outputs[j]),
        };
        let inputs: Vec<String> = sources[i].iter().map(|s| src(s).0).collect();
        let in_params = src(&sources[i][0]).1;
        let in_scale = in_params.map(|a| a.scale);
        let act = |relu: bool| {
            if relu {
                FloatActivation::Relu
            } else {
                FloatActivation::Linear
            }
        };
        let weights = |w: &QuantizedWeights| {
            let bias: Vec<f32> = match &w.bias {
                Bias::Float(b) => b.clone(),
                Bias::Int32(b) => b
                    .iter()
                    .enumerate()
                    .map(|(c, &q)| {
                        let s = w.scale[if w.scale.len() == 1 { 0 } else { c }];
                        (q as f64 * s as f64 * in_scale.unwrap_or(1.0) as f64) as f32
                    })
                    .collect(),
            };
            (
                Param::new(format!("{}.kernel", l.name), w.dequantized_kernel()),
                Param::new(
                    format!("{}.bias", l.name),
                    ArrayD::from_shape_vec(IxDyn(&[bias.len()]), bias)
                        .expect("dequantized_model: bias is 1-D"),
                ),
            )
        };
        let layer: Layer = match &l.kind {
            LayerKind::Conv2d {
                strides,
                padding,
                relu,
                ..
            } => {
                let w = l.weights.as_ref().expect("checked by from_parts");
                let (kernel, bias) = weights(w);
                Layer::from(Conv2d {
                    name: l.name.clone(),
                    kernel,
                    bias,
                    strides: *strides,
                    padding: to_tensor_padding(*padding),
                    activation: act(*relu),
                    use_bias: true,
                })
            }
            LayerKind::Dense { relu } => {
                let w = l.weights.as_ref().expect("checked by from_parts");
                let (kernel, bias) = weights(w);
                Layer::from(Dense {
                    name: l.name.clone(),
                    kernel,
                    bias,
                    activation: act(*relu),
                    use_bias: true,
                })
            }
            LayerKind::MaxPool2d {
                pool,
                strides,
                padding,
            } => Layer::from(MaxPool2d {
                name: l.name.clone(),
                pool: *pool,
                strides: *strides,
                padding: to_tensor_padding(*padding),
            }),
            LayerKind::Reshape { shape } => Layer::from(Reshape::new(&l.name, shape)),
            LayerKind::Relu => Layer::from(ReLU::new(&l.name)),
            LayerKind::LeakyRelu { alpha } => Layer::from(LeakyReLU::new(&l.name, *alpha)),
            LayerKind::DepthwiseConv2d {
                strides,
                padding,
                relu,
                ..
            } => {
                let w = l.weights.as_ref().expect("checked by from_parts");
                let (mut kernel, bias) = weights(w);
                let &[kh, kw, cout] = w.kernel.shape() else {
                    unreachable!("dequantized_model: depthwise kernel checked 3-D")
                };
                let c = l.input_shape[2];
                kernel.value = kernel
                    .value
                    .into_shape_with_order(IxDyn(&[kh, kw, c, cout / c]))
                    .expect("dequantized_model: depthwise kernel checked [kh, kw, c * m]");
                Layer::from(DepthwiseConv2d {
                    name: l.name.clone(),
                    kernel,
                    bias,
                    strides: *strides,
                    padding: to_tensor_padding(*padding),
                    activation: act(*relu),
                    use_bias: true,
                })
            }
            LayerKind::AvgPool2d {
                pool,
                strides,
                padding,
            } => Layer::from(AvgPool2d {
                name: l.name.clone(),
                pool: *pool,
                strides: *strides,
                padding: to_tensor_padding(*padding),
            }),
            LayerKind::GlobalAvgPool2d => Layer::from(GlobalAveragePool2d::new(&l.name)),
            LayerKind::Relu6 => Layer::from(ReLU6::new(&l.name)),
            LayerKind::Sigmoid => Layer::from(Sigmoid::new(&l.name)),
            LayerKind::Tanh => Layer::from(Tanh::new(&l.name)),
            LayerKind::HardSwish => Layer::from(HardSwish::new(&l.name)),
            LayerKind::Softmax => Layer::from(Softmax::new(&l.name)),
            LayerKind::Add { .. } => Layer::from(pare_tensor::Add::new(&l.name)),
            LayerKind::Concatenate => Layer::from(pare_tensor::Concatenate::new(&l.name)),
        };
        nodes.push((layer, inputs));
        node_of.push(l.name.clone());
        if let LayerKind::Add { relu: true } = l.kind {
            let relu = format!("{}.relu", l.name);
            nodes.push((Layer::from(ReLU::new(&relu)), vec![l.name.clone()]));
            node_of[i] = relu;
        }
        outputs.push(l.output.or(in_params));
    }
    let graph = sources.iter().any(|s| s.len() != 1)
        || layers.iter().any(|l| !l.inputs.is_empty())
        || nodes.len() != layers.len();
    if !graph {
        let mut model = Sequential::new(input_shape);
        model.layers = nodes.into_iter().map(|(l, _)| l).collect();
        return model;
    }
    let mut b = Model::functional(input_shape);
    for (layer, inputs) in nodes {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        b = b.node(layer, &inputs);
    }
    b.build()
        .expect("dequantized_model: the wiring and shapes were checked when the model was built")
}
