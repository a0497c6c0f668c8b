//! The quantized model: layers with int8 weights and per-tensor activation parameters, checked
//! once when built, plus the state the engine derives from them (packed weights, fixed-point
//! multipliers, lookup tables).

use std::fmt;

use ndarray::{ArrayD, Axis, IxDyn};
use pare_tensor::nn::{
    AvgPool2d, Conv2d, Dense, DepthwiseConv2d, GlobalAveragePool2d, HardSwish, LeakyReLU,
    MaxPool2d, ReLU, ReLU6, Reshape, Sigmoid, Tanh,
};
use pare_tensor::{Activation as FloatActivation, Param, Sequential};
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::int4::WeightBits;
use crate::kernels::avgpool::ReduceMeanParams;
use crate::kernels::lut::{HardSwishParams, LOGISTIC_OUTPUT, TANH_OUTPUT, lut_i8, relu6_range};
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
        }
    }

    /// Whether the layer has weights.
    pub fn has_weights(&self) -> bool {
        matches!(
            self,
            LayerKind::Conv2d { .. } | LayerKind::Dense { .. } | LayerKind::DepthwiseConv2d { .. }
        )
    }

    /// Whether the layer computes new output parameters (others pass the input's through).
    /// Sigmoid and tanh have new parameters too, but fixed ones ([`fixed_output`](Self::fixed_output)).
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
        )
    }

    /// The output parameters TFLite prescribes for this op whatever the data: scale 1/256,
    /// zero point −128 for `LOGISTIC`, 1/128 and 0 for `TANH`; `None` for the others.
    pub fn fixed_output(&self) -> Option<ActQuant> {
        let (scale, zero_point) = match self {
            LayerKind::Sigmoid => crate::kernels::lut::LOGISTIC_OUTPUT,
            LayerKind::Tanh => crate::kernels::lut::TANH_OUTPUT,
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
        let mut names = std::collections::HashSet::new();
        if let Some(l) = layers.iter().find(|l| !names.insert(l.name.as_str())) {
            return Err(bad_layer(l, "two layers share this name"));
        }
        let mut shape = input_shape.clone();
        let mut params = input;
        let mut prepared = Vec::with_capacity(layers.len());
        let (mut max_activation, mut max_patches) = (elements(&shape).unwrap_or(0), 0usize);
        for layer in &mut layers {
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
            let (out_shape, prep, patches) =
                prepare_layer(layer, &shape, params.as_ref(), rounding)?;
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
            shape = out_shape;
            if layer.output.is_some() {
                params = layer.output;
            }
        }
        // The fused conv + pool kernel has a fixed-point output stage only.
        if full && rounding == Rounding::Tflite {
            fuse_conv_pool(&layers, &mut prepared);
        }
        let float = (!full).then(|| dequantized_model(&input_shape, input, &layers));
        Ok(QuantizedModel {
            mode,
            input_type,
            output_type,
            input_shape,
            input,
            layers,
            provenance,
            prepared,
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
            None => dequantized_model(&self.input_shape, self.input, &self.layers),
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
    }
}

/// Gives every conv followed by a max-pool it can be fused with (see [`ConvPool`]) its fused
/// form; the engine then runs the pair in one pass.
fn fuse_conv_pool(layers: &[QuantizedLayer], prepared: &mut [Prepared]) {
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
) -> Sequential {
    let mut model = Sequential::new(input_shape);
    let mut in_scale = input.map(|a| a.scale);
    for l in layers {
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
        model = match &l.kind {
            LayerKind::Conv2d {
                strides,
                padding,
                relu,
                ..
            } => {
                let w = l.weights.as_ref().expect("checked by from_parts");
                let (kernel, bias) = weights(w);
                model.push(Conv2d {
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
                model.push(Dense {
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
            } => model.push(MaxPool2d {
                name: l.name.clone(),
                pool: *pool,
                strides: *strides,
                padding: to_tensor_padding(*padding),
            }),
            LayerKind::Reshape { shape } => model.push(Reshape::new(&l.name, shape)),
            LayerKind::Relu => model.push(ReLU::new(&l.name)),
            LayerKind::LeakyRelu { alpha } => model.push(LeakyReLU::new(&l.name, *alpha)),
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
                model.push(DepthwiseConv2d {
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
            } => model.push(AvgPool2d {
                name: l.name.clone(),
                pool: *pool,
                strides: *strides,
                padding: to_tensor_padding(*padding),
            }),
            LayerKind::GlobalAvgPool2d => model.push(GlobalAveragePool2d::new(&l.name)),
            LayerKind::Relu6 => model.push(ReLU6::new(&l.name)),
            LayerKind::Sigmoid => model.push(Sigmoid::new(&l.name)),
            LayerKind::Tanh => model.push(Tanh::new(&l.name)),
            LayerKind::HardSwish => model.push(HardSwish::new(&l.name)),
        };
        if let Some(o) = &l.output {
            in_scale = Some(o.scale);
        }
    }
    model
}
