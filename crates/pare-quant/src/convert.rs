//! Post-training quantization: a float model (a chain or a graph) plus calibration data to a
//! [`QuantizedModel`], as TFLite's converter does it.
//!
//! 0. **BatchNorm folding**: a BatchNorm after a conv or dense layer without activation is
//!    folded into it first ([`pare_tensor::fold_batch_norm`]), as TFLite's converter does; one
//!    that cannot fold is an [`QuantError::UnsupportedLayer`].
//! 1. **Plan**: each layer becomes one int8 operation, in the model's order, taking the int8
//!    layers that compute its float inputs ([`QuantizedLayer::inputs`]). A conv, dense or add
//!    followed by a ReLU that it alone feeds (or a conv/dense carrying a fused ReLU) becomes one
//!    operation whose ReLU is a clamp of the output range, as TFLite fuses ResNet's add → ReLU;
//!    an add of two inputs is TFLite's `ADD`, a concatenation `CONCATENATION`; a leaky ReLU becomes TFLite's `LEAKY_RELU` (two output multipliers); max-pool,
//!    average pool, flatten and reshape keep their input's parameters, as TFLite requires. A
//!    ReLU6 is a clamp; after a conv, depthwise conv or dense layer it is fused in effect, that
//!    layer being calibrated on the ReLU6's output. Sigmoid, tanh and softmax (over the last
//!    axis, TFLite's `SOFTMAX` with β = 1, usually after the final dense layer, which is
//!    calibrated on the logits) take TFLite's fixed output parameters; global average pool
//!    (`MEAN`) and hard-swish have their own. Dropout is dropped.
//! 2. **Weights**: int8 symmetric in [−127, 127], per output channel (the last axis) or per
//!    tensor ([`quantize_weights`]).
//! 3. **Calibration** (full integer): the float model runs on the calibration batches layer by
//!    layer; an observer per tensor watches the model input and the output of every layer with
//!    parameters of its own (conv, dense, leaky ReLU, add, concatenation, …), and gives
//!    asymmetric per-tensor int8 parameters. A concatenation's are then given to the layers
//!    producing its inputs (through pools, reshapes and ReLUs), as TFLite's converter
//!    propagates them: its int8 `CONCATENATION` copies codes and requires equal parameters.
//! 4. **Biases**: int32 at scale `s_in · s_w[c]` ([`quantize_bias`]).
//!
//! Dynamic-range mode stops after step 2: int8 weights, float biases and activations.

use std::collections::HashMap;

use ndarray::{ArrayD, ArrayViewD, Axis};
use pare_tensor::nn::Layer;
use pare_tensor::{Activation as FloatActivation, FakeQuantSpec, Graph, Param, Sequential};

use crate::error::{QuantError, Result};
use crate::int4::{WeightBits, quantize_weights_bits};
use crate::model::{
    ActQuant, Bias, InputType, LayerKind, Mode, ModelParts, OutputType, Provenance, QuantizedLayer,
    QuantizedModel, QuantizedWeights, Source, from_tensor_padding, resolve_sources,
    to_tensor_padding,
};
use crate::observer::{Observer, ObserverConfig, ObserverKind};
use crate::params::{
    Granularity, QMAX_I8, QMIN_I8, QMIN_WEIGHT, QuantScheme, check_finite, quantize_bias,
};

/// How to quantize a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertConfig {
    /// Full integer (default) or dynamic range.
    pub mode: Mode,
    /// The observer that picks activation ranges (TFLite's min-max by default).
    pub observer: ObserverKind,
    /// The observers' hyper-parameters.
    pub observer_config: ObserverConfig,
    /// One weight scale per output channel (default, TFLite's) or one per tensor.
    pub per_channel: bool,
    /// Declared input type (TFLite's `inference_input_type`); float by default.
    pub input_type: InputType,
    /// Declared output type (TFLite's `inference_output_type`); float by default.
    pub output_type: OutputType,
    /// Examples per calibration batch. Min-max and the histogram observers give the same
    /// result for any batching; the moving-average observer averages per batch.
    pub calibration_batch_size: usize,
    /// Weight width: int8 (default) or int4 ([`WeightBits`]); activations stay int8.
    pub weight_bits: WeightBits,
}

impl Default for ConvertConfig {
    fn default() -> Self {
        ConvertConfig {
            mode: Mode::FullInteger,
            observer: ObserverKind::MinMax,
            observer_config: ObserverConfig::default(),
            per_channel: true,
            input_type: InputType::Float,
            output_type: OutputType::Float,
            calibration_batch_size: 32,
            weight_bits: WeightBits::Int8,
        }
    }
}

impl ConvertConfig {
    /// Checks the hyper-parameters.
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] for a zero batch size or bad observer settings.
    pub fn validate(&self) -> Result<()> {
        if self.calibration_batch_size == 0 {
            return Err(QuantError::InvalidParameter {
                name: "calibration_batch_size",
                value: "0".into(),
                reason: "must be >= 1",
            });
        }
        self.observer_config.validate()
    }
}

/// Quantizes a float model.
///
/// `calibration` is a batch `[n, input_shape...]` of representative inputs (TFLite's
/// representative dataset; ~100 training images are plenty for MNIST). A dynamic-range
/// conversion ignores it (pass an empty batch).
///
/// # Errors
/// - [`QuantError::UnsupportedLayer`] naming a layer with no int8 kernel (a custom layer, a
///   leaky ReLU with negative slope, a dense layer on unflattened input);
/// - [`QuantError::ShapeMismatch`] / [`QuantError::NonFinite`] for calibration data of the wrong
///   shape, empty (full integer), or holding NaN or infinity;
/// - errors from the model (`Tensor`), the observers (e.g. `NoData` when a tensor was never
///   finite), or quantization (`BiasOverflow`, `InvalidMultiplier` for ranges so disparate that
///   the requantization multiplier cannot be represented).
pub fn convert(
    model: &Sequential,
    calibration: ArrayViewD<'_, f32>,
    config: &ConvertConfig,
) -> Result<QuantizedModel> {
    config.validate()?;
    model.output_shape()?;
    let model = &*folded(model)?;
    let mut layers = plan(model, config.per_channel, config.weight_bits)?;
    let full = config.mode == Mode::FullInteger;
    let mut input = None;
    let mut n_calibration = 0;
    if full {
        model.check_input(calibration.shape())?;
        n_calibration = calibration.shape()[0];
        if n_calibration == 0 {
            return Err(QuantError::ShapeMismatch {
                op: "convert (calibration batch must hold at least one example)",
                expected: std::iter::once(1)
                    .chain(model.input_shape.clone())
                    .collect(),
                found: calibration.shape().to_vec(),
            });
        }
        check_finite(&calibration, "calibration data")?;
        let (inq, outputs) = calibrate(model, &layers, calibration, config)?;
        input = Some(inq);
        let sources = resolve_sources(&layers)?;
        for (i, layer) in layers.iter_mut().enumerate() {
            if let Some(w) = &mut layer.weights {
                let Bias::Float(b) = &w.bias else {
                    unreachable!("convert: the plan holds float biases")
                };
                let b = ndarray::ArrayView1::from(b.as_slice());
                let params = weight_params(&w.scale);
                let in_scale = match sources[i][0] {
                    Source::Input => inq.scale,
                    Source::Layer(j) => outputs[j].scale,
                };
                let (q, _) = quantize_bias(b, in_scale, &params)?;
                w.bias = Bias::Int32(q.to_vec());
            }
            layer.output = Some(outputs[i]);
        }
    }
    QuantizedModel::from_parts(ModelParts {
        mode: config.mode,
        input_type: config.input_type,
        output_type: config.output_type,
        input_shape: model.input_shape.clone(),
        input,
        layers,
        provenance: Provenance::new(
            full.then_some(config.observer),
            config.per_channel,
            n_calibration,
        ),
    })
}

/// `model` with its BatchNorms folded into the conv or dense layers before them
/// ([`pare_tensor::fold_batch_norm`]), as TFLite's converter folds before it quantizes; `model`
/// itself when it has none.
pub(crate) fn folded(model: &Sequential) -> Result<std::borrow::Cow<'_, Sequential>> {
    if model
        .layers
        .iter()
        .any(|l| matches!(l, Layer::BatchNorm(_)))
    {
        Ok(std::borrow::Cow::Owned(pare_tensor::fold_batch_norm(
            model,
        )?))
    } else {
        Ok(std::borrow::Cow::Borrowed(model))
    }
}

pub(crate) fn weight_params(scale: &[f32]) -> crate::params::QuantParams {
    crate::params::QuantParams {
        scale: scale.to_vec(),
        zero_point: vec![0; scale.len()],
        axis: (scale.len() > 1).then_some(0),
        qmin: QMIN_WEIGHT,
        qmax: QMAX_I8,
    }
}

fn unsupported(layer: &str, reason: impl Into<String>) -> QuantError {
    QuantError::UnsupportedLayer {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

fn quantize_layer_weights(
    name: &str,
    kernel: &Param,
    bias: &Param,
    per_channel: bool,
    bits: WeightBits,
) -> Result<QuantizedWeights> {
    let axis = kernel
        .value
        .ndim()
        .checked_sub(1)
        .ok_or_else(|| unsupported(name, "kernel is a scalar"))?;
    let granularity = if per_channel {
        Granularity::PerChannel { axis }
    } else {
        Granularity::PerTensor
    };
    let (q, params) = quantize_weights_bits(kernel.value.view(), granularity, bits)?;
    check_finite(&bias.value.view(), "bias")?;
    Ok(QuantizedWeights {
        kernel: q.as_standard_layout().into_owned(),
        scale: params.scale,
        bias: Bias::Float(bias.value.iter().copied().collect()),
        bits,
    })
}

fn layer_name(l: &Layer) -> String {
    l.module().name().to_string()
}

/// One int8 operation per float layer, in the model's order, each taking the int8 layers
/// that compute its float inputs; a ReLU that is the only consumer of a conv, dense or add is
/// fused into it. Weights are quantized; biases are still float and output parameters unset.
pub(crate) fn plan(
    model: &Sequential,
    per_channel: bool,
    bits: WeightBits,
) -> Result<Vec<QuantizedLayer>> {
    let mut out: Vec<QuantizedLayer> = Vec::new();
    let layers = &model.layers;
    let names: Vec<&str> = layers.iter().map(|l| l.module().name()).collect();
    let shapes = model.node_shapes()?;
    let shape_of: HashMap<&str, &[usize]> = names
        .iter()
        .zip(&shapes)
        .map(|(n, s)| (*n, s.as_slice()))
        .chain([(pare_tensor::INPUT, model.input_shape.as_slice())])
        .collect();
    // The int8 layer (or the input) computing each float node's output.
    let mut producer: HashMap<String, String> = HashMap::from([(
        pare_tensor::INPUT.to_string(),
        pare_tensor::INPUT.to_string(),
    )]);
    let mut fused = vec![false; layers.len()];
    for i in 0..layers.len() {
        if fused[i] {
            continue;
        }
        let name = names[i];
        let float_inputs = model.inputs_of(name).unwrap_or_default();
        let inputs: Vec<String> = float_inputs.iter().map(|n| producer[*n].clone()).collect();
        // The ReLU this layer feeds alone, which its op can absorb as a clamp.
        let relu_after = || match model.consumers_of(name)[..] {
            [c] => names.iter().position(|n| *n == c).filter(|&j| {
                matches!(layers[j], Layer::ReLU(_))
                    && model.inputs_of(c).is_some_and(|i| i == [name])
            }),
            _ => None,
        };
        let mut push = |qname: String, kind: LayerKind, weights, inputs: Vec<String>| {
            out.push(QuantizedLayer {
                name: qname,
                kind,
                weights,
                output: None,
                input_shape: vec![],
                output_shape: vec![],
                inputs,
            })
        };
        let (activation, kind, weights) = match &layers[i] {
            Layer::Conv2d(c) => {
                let [kh, kw, _, _] = c.kernel_shape();
                let kind = LayerKind::Conv2d {
                    kernel_size: [kh, kw],
                    strides: c.strides,
                    padding: from_tensor_padding(c.padding),
                    relu: false,
                };
                let w = quantize_layer_weights(&c.name, &c.kernel, &c.bias, per_channel, bits)?;
                (c.activation, kind, w)
            }
            Layer::Dense(d) => {
                let w = quantize_layer_weights(&d.name, &d.kernel, &d.bias, per_channel, bits)?;
                (d.activation, LayerKind::Dense { relu: false }, w)
            }
            Layer::Add(a) => {
                if inputs.len() != 2 {
                    return Err(unsupported(
                        &a.name,
                        format!(
                            "int8 add takes two inputs (TFLite's ADD), found {}; chain adds of two",
                            inputs.len()
                        ),
                    ));
                }
                let relu = match relu_after() {
                    Some(j) => {
                        fused[j] = true;
                        producer.insert(names[j].to_string(), a.name.clone());
                        true
                    }
                    None => false,
                };
                push(a.name.clone(), LayerKind::Add { relu }, None, inputs);
                producer.insert(a.name.clone(), a.name.clone());
                continue;
            }
            Layer::Concatenate(c) => {
                push(c.name.clone(), LayerKind::Concatenate, None, inputs);
                producer.insert(c.name.clone(), c.name.clone());
                continue;
            }
            l @ (Layer::MaxPool2d(_)
            | Layer::Reshape(_)
            | Layer::ReLU(_)
            | Layer::LeakyReLU(_)
            | Layer::AvgPool2d(_)
            | Layer::GlobalAveragePool2d(_)
            | Layer::ReLU6(_)
            | Layer::Sigmoid(_)
            | Layer::Tanh(_)
            | Layer::HardSwish(_)
            | Layer::Softmax(_)) => {
                push(name.to_owned(), weightless_kind(l)?, None, inputs);
                producer.insert(name.to_string(), name.to_string());
                continue;
            }
            Layer::Flatten(f) => {
                let n = float_inputs
                    .first()
                    .and_then(|i| shape_of.get(i))
                    .map_or(0, |s| s.iter().product());
                push(
                    f.name.clone(),
                    LayerKind::Reshape { shape: vec![n] },
                    None,
                    inputs,
                );
                producer.insert(name.to_string(), name.to_string());
                continue;
            }
            Layer::DepthwiseConv2d(c) => {
                let [kh, kw, ch, m] = c.kernel_shape();
                let kind = LayerKind::DepthwiseConv2d {
                    kernel_size: [kh, kw],
                    strides: c.strides,
                    padding: from_tensor_padding(c.padding),
                    relu: false,
                };
                // Quantized per output channel `ci · m + j`, the last axis of [kh, kw, c · m]
                // (TFLite's [1, kh, kw, c · m] filter).
                let mut kernel = c.kernel.clone();
                kernel.value = kernel
                    .value
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(ndarray::IxDyn(&[kh, kw, ch * m]))
                    .map_err(|_| unsupported(&c.name, "depthwise kernel is not [kh, kw, c, m]"))?;
                let w = quantize_layer_weights(&c.name, &kernel, &c.bias, per_channel, bits)?;
                (c.activation, kind, w)
            }
            // The identity at inference, as TFLite's converter drops it.
            Layer::Dropout(_) => {
                let from = inputs.first().cloned().unwrap_or_default();
                producer.insert(name.to_string(), from);
                continue;
            }
            Layer::BatchNorm(b) => {
                return Err(unsupported(
                    &b.name,
                    "a BatchNorm folds only into a Conv2d or Dense without activation directly \
                     before it",
                ));
            }
            Layer::Custom(m) => {
                return Err(unsupported(
                    m.name(),
                    "custom layers have no int8 kernel; build the model from pare-tensor's \
                     Conv2d, Dense, MaxPool2d, Flatten, Reshape, ReLU and LeakyReLU",
                ));
            }
            other => {
                return Err(unsupported(
                    &layer_name(other),
                    "this kind of layer has no int8 kernel",
                ));
            }
        };
        // A conv/dense with a fused or following ReLU clamps; a fused leaky ReLU becomes its
        // own LEAKY_RELU operation (it needs output parameters of its own).
        let (relu, leaky) = match activation {
            FloatActivation::Relu => (true, None),
            FloatActivation::Linear => match relu_after() {
                Some(j) => {
                    fused[j] = true;
                    producer.insert(names[j].to_string(), name.to_string());
                    (true, None)
                }
                None => (false, None),
            },
            FloatActivation::LeakyRelu(a) => {
                check_alpha(name, a)?;
                (false, Some(a))
            }
        };
        let kind = match kind {
            LayerKind::Conv2d {
                kernel_size,
                strides,
                padding,
                ..
            } => LayerKind::Conv2d {
                kernel_size,
                strides,
                padding,
                relu,
            },
            LayerKind::DepthwiseConv2d {
                kernel_size,
                strides,
                padding,
                ..
            } => LayerKind::DepthwiseConv2d {
                kernel_size,
                strides,
                padding,
                relu,
            },
            _ => LayerKind::Dense { relu },
        };
        push(name.to_string(), kind, Some(weights), inputs);
        producer.insert(name.to_string(), name.to_string());
        if let Some(alpha) = leaky {
            let leaky_name = format!("{name}.leaky_relu");
            push(
                leaky_name.clone(),
                LayerKind::LeakyRelu { alpha },
                None,
                vec![name.to_string()],
            );
            producer.insert(name.to_string(), leaky_name);
        }
    }
    Ok(out)
}

fn check_alpha(layer: &str, alpha: f32) -> Result<()> {
    if alpha.is_finite() && alpha >= 0.0 {
        Ok(())
    } else {
        Err(unsupported(
            layer,
            format!("leaky ReLU slope {alpha}: the int8 kernel needs a finite slope >= 0"),
        ))
    }
}

/// Runs the float model on the calibration batches and returns the parameters of the input
/// and of every layer's output (pass-through layers inherit their input's), concatenations'
/// imposed on the layers that produce their inputs.
fn calibrate(
    model: &Sequential,
    layers: &[QuantizedLayer],
    calibration: ArrayViewD<'_, f32>,
    config: &ConvertConfig,
) -> Result<(ActQuant, Vec<ActQuant>)> {
    let sources = resolve_sources(layers)?;
    let build = || {
        config
            .observer
            .build(Granularity::PerTensor, &config.observer_config)
    };
    let mut input_obs = build()?;
    let mut obs: Vec<Option<Box<dyn Observer>>> = layers
        .iter()
        .map(|l| {
            (l.kind.requantizes() && l.kind.fixed_output().is_none())
                .then(build)
                .transpose()
        })
        .collect::<Result<_>>()?;
    // A conv, depthwise conv or dense layer followed by a ReLU6 (that it alone feeds) takes
    // its output parameters from the ReLU6's output, as TFLite's converter fuses the pair:
    // the ReLU6 is then the clamp of the fused op.
    let relu6_after: Vec<bool> = (0..layers.len())
        .map(|i| {
            layers[i].kind.has_weights()
                && layers
                    .get(i + 1)
                    .is_some_and(|l| l.kind == LayerKind::Relu6)
                && sources[i + 1] == [Source::Layer(i)]
                && sources
                    .iter()
                    .flatten()
                    .filter(|s| **s == Source::Layer(i))
                    .count()
                    == 1
        })
        .collect();
    for batch in calibration.axis_chunks_iter(Axis(0), config.calibration_batch_size) {
        float_forward(
            layers,
            model,
            batch.to_owned(),
            None,
            &mut |tap, value| match tap {
                None => input_obs.observe(value.view()),
                Some(i) if relu6_after[i] => Ok(()),
                Some(i) => {
                    let target = if i > 0 && relu6_after[i - 1] {
                        i - 1
                    } else {
                        i
                    };
                    match &mut obs[target] {
                        Some(o) => o.observe(value.view()),
                        None => Ok(()),
                    }
                }
            },
        )?;
    }
    let params = |o: &dyn Observer| ActQuant::from_params(&o.params(QuantScheme::Asymmetric)?);
    let mut input = params(input_obs.as_ref())?;
    let mut own: Vec<Option<ActQuant>> = obs
        .iter()
        .zip(layers)
        .map(|(o, l)| match o {
            Some(o) => params(o.as_ref()).map(Some),
            None => Ok(l.kind.fixed_output()),
        })
        .collect::<Result<_>>()?;
    share_concat_params(layers, &sources, &mut input, &mut own)?;
    let mut outputs: Vec<ActQuant> = Vec::with_capacity(layers.len());
    for (i, o) in own.iter().enumerate() {
        let p = o.unwrap_or_else(|| match sources[i][0] {
            Source::Input => input,
            Source::Layer(j) => outputs[j],
        });
        outputs.push(p);
    }
    Ok((input, outputs))
}

/// Gives every input of a concatenation the concatenation's output parameters (observed on
/// its output, so covering every input's range), as TFLite's converter propagates them
/// backwards to the ops producing the inputs: its int8 `CONCATENATION` copies codes and needs
/// them equal. The parameters pass back through the layers that keep their input's (pools,
/// reshapes, ReLUs, inner concatenations) to the layer that computes them, or the input.
/// Later concatenations go first, so one feeding another takes the outer one's parameters.
///
/// # Errors
/// [`QuantError::UnsupportedLayer`] when an input cannot take them: it comes from a sigmoid
/// or tanh (fixed output parameters) or feeds another concatenation with other parameters.
pub(crate) fn share_concat_params(
    layers: &[QuantizedLayer],
    sources: &[Vec<Source>],
    input: &mut ActQuant,
    own: &mut [Option<ActQuant>],
) -> Result<()> {
    let mut forced = vec![false; layers.len() + 1];
    for c in (0..layers.len()).rev() {
        if layers[c].kind != LayerKind::Concatenate {
            continue;
        }
        let p = own[c].expect("calibrate: a concatenation has observed parameters");
        let mut stack: Vec<Source> = sources[c].clone();
        while let Some(s) = stack.pop() {
            let j = match s {
                Source::Input => {
                    if forced[0] && *input != p {
                        return Err(unsupported(
                            &layers[c].name,
                            "the model input feeds concatenations of different parameters",
                        ));
                    }
                    *input = p;
                    forced[0] = true;
                    continue;
                }
                Source::Layer(j) => j,
            };
            let kind = &layers[j].kind;
            if !kind.requantizes() {
                stack.extend(sources[j].iter().copied());
                continue;
            }
            if kind.fixed_output().is_some_and(|f| f != p) || (forced[j + 1] && own[j] != Some(p)) {
                return Err(unsupported(
                    &layers[c].name,
                    format!(
                        "its input {:?} cannot take the concatenation's parameters (int8 \
                         concatenation needs its inputs' parameters equal to its output's): {}",
                        layers[j].name,
                        if kind.fixed_output().is_some() {
                            "a sigmoid or tanh has fixed output parameters"
                        } else {
                            "it feeds another concatenation with other parameters"
                        }
                    ),
                ));
            }
            own[j] = Some(p);
            forced[j + 1] = true;
            if *kind == LayerKind::Concatenate {
                stack.extend(sources[j].iter().copied());
            }
        }
    }
    Ok(())
}

/// Fake-quantization settings for [`float_forward`]: the input's parameters and the layers
/// whose weight scales and output parameters to simulate (activations only where present, so
/// a dynamic-range model simulates its weights alone).
pub(crate) struct FakeQuant<'a> {
    pub input: Option<ActQuant>,
    pub layers: &'a [QuantizedLayer],
}

pub(crate) fn act_spec(a: &ActQuant) -> FakeQuantSpec {
    FakeQuantSpec {
        scale: vec![a.scale],
        zero_point: vec![a.zero_point],
        qmin: QMIN_I8,
        qmax: QMAX_I8,
    }
}

/// The float parameters of a conv or dense layer called `name` in `float`, checked against the
/// quantized kernel's shape.
pub(crate) fn float_params<'m>(
    float: &'m Sequential,
    layer: &QuantizedLayer,
) -> Result<(&'m Param, &'m Param)> {
    let mismatch = |reason: String| QuantError::ModelMismatch {
        layer: layer.name.clone(),
        reason,
    };
    let (k, b) = match float.layer(&layer.name) {
        Some(Layer::Conv2d(c)) if matches!(layer.kind, LayerKind::Conv2d { .. }) => {
            (&c.kernel, &c.bias)
        }
        Some(Layer::Dense(d)) if matches!(layer.kind, LayerKind::Dense { .. }) => {
            (&d.kernel, &d.bias)
        }
        Some(Layer::DepthwiseConv2d(d))
            if matches!(layer.kind, LayerKind::DepthwiseConv2d { .. }) =>
        {
            (&d.kernel, &d.bias)
        }
        Some(other) => {
            return Err(mismatch(format!(
                "the float layer is {other:?}, expected a {}",
                layer.kind.op_name()
            )));
        }
        None => return Err(mismatch("no float layer of that name".into())),
    };
    let w = layer.weights.as_ref().expect("weighted layer has weights");
    // A depthwise kernel [kh, kw, c, m] is quantized as [kh, kw, c · m].
    let same_shape = match layer.kind {
        LayerKind::DepthwiseConv2d { .. } => {
            let (f, q) = (k.value.shape(), w.kernel.shape());
            f.len() == 4 && q.len() == 3 && f[..2] == q[..2] && f[2] * f[3] == q[2]
        }
        _ => k.value.shape() == w.kernel.shape(),
    };
    if !same_shape || b.value.len() != w.channels() {
        return Err(mismatch(format!(
            "float kernel {:?} and bias [{}] vs quantized kernel {:?}",
            k.value.shape(),
            b.value.len(),
            w.kernel.shape()
        )));
    }
    Ok((k, b))
}

/// What [`float_forward`] calls with each tapped value: `None` for the input, `Some(i)` for the
/// output of layer `i`.
pub(crate) type Visit<'a> = dyn FnMut(Option<usize>, &ArrayD<f32>) -> Result<()> + 'a;

/// Runs `layers` in float on one batch, with the float model's weights: plain float (`fq =
/// None`) or fake-quantized (weights at the layers' scales, the input and every output at
/// their parameters). `visit(None, input)` then `visit(Some(i), output of layer i)`.
pub(crate) fn float_forward(
    layers: &[QuantizedLayer],
    float: &Sequential,
    x: ArrayD<f32>,
    fq: Option<&FakeQuant<'_>>,
    visit: &mut Visit<'_>,
) -> Result<ArrayD<f32>> {
    let n = x.shape()[0];
    // The quantized layers are those of the folded model (see `convert`).
    let float = &*folded(float)?;
    let mut g = Graph::inference();
    if let Some(fq) = fq {
        let specs: HashMap<String, FakeQuantSpec> = fq
            .layers
            .iter()
            .filter_map(|l| {
                let w = l.weights.as_ref()?;
                Some((
                    format!("{}.kernel", l.name),
                    FakeQuantSpec {
                        scale: w.scale.clone(),
                        zero_point: vec![0; w.scale.len()],
                        qmin: w.bits.qmin(),
                        qmax: w.bits.qmax(),
                    },
                ))
            })
            .collect();
        g.add_param_hook(Box::new(move |g, name, v| match specs.get(name) {
            Some(spec) => g.fake_quant(v, spec.clone()),
            None => v,
        }));
    }
    let sources = resolve_sources(layers)?;
    let mut x = g.constant(x);
    if let Some(input) = fq.and_then(|fq| fq.input) {
        x = g.fake_quant(x, act_spec(&input));
    }
    visit(None, g.value(x))?;
    let mut vals: Vec<pare_tensor::Var> = Vec::with_capacity(layers.len());
    let mut v = x;
    let act = |relu: bool| {
        if relu {
            FloatActivation::Relu
        } else {
            FloatActivation::Linear
        }
    };
    for (i, layer) in layers.iter().enumerate() {
        let var = |s: &Source| match *s {
            Source::Input => x,
            Source::Layer(j) => vals[j],
        };
        let ins: Vec<pare_tensor::Var> = sources[i].iter().map(var).collect();
        v = ins[0];
        v = match &layer.kind {
            LayerKind::Conv2d {
                strides,
                padding,
                relu,
                ..
            } => {
                let (k, b) = float_params(float, layer)?;
                let (k, b) = (g.param(k), g.param(b));
                let padding = to_tensor_padding(*padding);
                g.conv2d_fused(v, k, Some(b), *strides, padding, act(*relu))
            }
            LayerKind::Dense { relu } => {
                let (k, b) = float_params(float, layer)?;
                let (k, b) = (g.param(k), g.param(b));
                g.dense(v, k, Some(b), act(*relu))
            }
            LayerKind::MaxPool2d {
                pool,
                strides,
                padding,
            } => {
                let padding = to_tensor_padding(*padding);
                g.max_pool(v, *pool, *strides, padding)
            }
            LayerKind::Reshape { shape } => {
                let s: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
                g.reshape(v, &s)
            }
            LayerKind::Relu => g.relu(v),
            LayerKind::LeakyRelu { alpha } => g.leaky_relu(v, *alpha),
            LayerKind::DepthwiseConv2d {
                strides,
                padding,
                relu,
                ..
            } => {
                let (k, b) = float_params(float, layer)?;
                // Fake-quantized, the kernel is its dequantized codes (`q · s` is what
                // fake quantization gives); the hook would see the [kh, kw, c, m] layout,
                // whose last axis is not the channel axis of the scales.
                let k = match fq {
                    Some(_) => {
                        let w = layer.weights.as_ref().expect("weighted layer has weights");
                        let kernel = w
                            .dequantized_kernel()
                            .into_shape_with_order(k.value.raw_dim())
                            .expect("float_forward: depthwise kernel sizes checked");
                        g.constant(kernel)
                    }
                    None => g.param(k),
                };
                let b = g.param(b);
                let padding = to_tensor_padding(*padding);
                let y = g.depthwise_conv2d(v, k, Some(b), *strides, padding);
                if *relu { g.relu(y) } else { y }
            }
            LayerKind::AvgPool2d {
                pool,
                strides,
                padding,
            } => {
                let padding = to_tensor_padding(*padding);
                g.avg_pool(v, *pool, *strides, padding)
            }
            LayerKind::GlobalAvgPool2d => g.global_avg_pool(v),
            LayerKind::Relu6 => g.relu6(v),
            LayerKind::Sigmoid => g.sigmoid(v),
            LayerKind::Tanh => g.tanh(v),
            LayerKind::HardSwish => g.hard_swish(v),
            LayerKind::Softmax => g.softmax(v),
            LayerKind::Add { relu } => {
                let y = g.add(ins[0], ins[1]);
                if *relu { g.relu(y) } else { y }
            }
            LayerKind::Concatenate => g.concat(&ins),
        };
        if let Some(out) = fq.and_then(|fq| fq.layers[i].output)
            && layer.kind.requantizes()
        {
            v = g.fake_quant(v, act_spec(&out));
        }
        visit(Some(i), g.value(v))?;
        vals.push(v);
    }
    Ok(g.value(v).clone())
}

/// The int8 kind of a layer without weights that converts one to one, as TFLite's converter
/// maps it to a single op.
///
/// # Panics
/// For any other layer: the caller matches exactly the layers handled here.
fn weightless_kind(layer: &Layer) -> Result<LayerKind> {
    Ok(match layer {
        Layer::MaxPool2d(p) => LayerKind::MaxPool2d {
            pool: p.pool,
            strides: p.strides,
            padding: from_tensor_padding(p.padding),
        },
        Layer::Reshape(r) => LayerKind::Reshape {
            shape: r.shape.clone(),
        },
        Layer::ReLU(_) => LayerKind::Relu,
        Layer::LeakyReLU(l) => {
            check_alpha(&l.name, l.alpha)?;
            LayerKind::LeakyRelu { alpha: l.alpha }
        }
        Layer::AvgPool2d(p) => LayerKind::AvgPool2d {
            pool: p.pool,
            strides: p.strides,
            padding: from_tensor_padding(p.padding),
        },
        Layer::GlobalAveragePool2d(_) => LayerKind::GlobalAvgPool2d,
        Layer::ReLU6(_) => LayerKind::Relu6,
        Layer::Sigmoid(_) => LayerKind::Sigmoid,
        Layer::Tanh(_) => LayerKind::Tanh,
        Layer::HardSwish(_) => LayerKind::HardSwish,
        Layer::Softmax(_) => LayerKind::Softmax,
        other => panic!(
            "weightless_kind: layer {:?} has weights or no one-to-one int8 op",
            other.module().name()
        ),
    })
}
