//! Quantization-aware training: fine-tune a float model through the quantization it will get,
//! then convert it with the activation ranges it learned.
//!
//! [`Qat::attach`] puts a fake-quant layer at every point where the integer engine requantizes
//! (the model input, and the output of every conv, dense — after its fused or following ReLU —
//! and leaky ReLU), and [`Qat`] as a training [`Callback`] fake-quantizes every kernel as it
//! enters a step's graph. So the forward pass computes what [`convert`](crate::convert) and the
//! engine will, in float, and any [`Objective`](pare_tensor::train::Objective) (cross-entropy,
//! distillation) trains through it unchanged:
//!
//! - **weights**: symmetric per output channel (or per tensor) at their current range, int8
//!   [−127, 127] or int4 [−7, 7] ([`WeightBits`]) — TFMOT's `LastValueQuantizer`;
//! - **activations**: asymmetric int8 per tensor at a moving average of the batches' ranges,
//!   `r ← decay · r + (1 − decay) · [min(x, 0), max(x, 0)]`, decay 0.999 — TFMOT's
//!   `MovingAverageQuantizer`. TFMOT starts the averages at [−6, 6]; at decay 0.999 that
//!   start takes thousands of steps to forget, longer than a one-epoch fine-tune, so the
//!   averages here start from the first batch's range (as TensorFlow's `tf.contrib.quantize`
//!   did);
//! - **gradients**: straight through inside the range and zero outside
//!   ([`Graph::fake_quant`](pare_tensor::Graph::fake_quant)); ranges are not trained.
//!
//! In a training step the batch's range updates the average before the fake-quant uses it (as
//! TFMOT's control dependencies order it); evaluation (an inference graph) uses the average as
//! it stands. When `Fit` splits a batch into shards, each shard fake-quantizes at the average
//! updated with its own part's range, and the average then takes the whole batch's range, so a
//! run is reproducible for a given shard count, as `Fit`'s training is.
//!
//! After training, [`Qat::detach`] removes the fake-quant layers and [`Qat::convert`] (or
//! [`convert_qat`] with [`Qat::ranges`]) quantizes the model at the learned ranges: no fresh
//! calibration. Pruning masks stay fixed when a pruning callback with a finished schedule runs
//! alongside: masks enter the graph before the fake-quant hook, so the weight ranges are those of
//! the kept weights.
//!
//! ```
//! use ndarray::Array4;
//! use pare_quant::{Qat, QatConfig};
//! use pare_tensor::models::small_cnn;
//! use pare_tensor::optim::{Adam, AdamConfig};
//! use pare_tensor::train::{Fit, FitConfig};
//!
//! let x = Array4::<f32>::from_shape_fn((32, 28, 28, 1), |(n, y, _, _)| {
//!     ((n % 2 == 0) == (y < 14)) as u8 as f32
//! })
//! .into_dyn();
//! let y: Vec<usize> = (0..32).map(|n| n % 2).collect();
//! let mut model = small_cnn(0);
//!
//! let mut qat = Qat::attach(&mut model, QatConfig::default())?;
//! let fit = FitConfig { epochs: 2, batch_size: 16, verbose: false, ..Default::default() };
//! let mut adam = Adam::new(AdamConfig::default())?;
//! Fit::new(fit).callback(&mut qat).run(&mut model, &mut adam, x.view(), &y)?;
//! qat.detach(&mut model);
//!
//! let q = qat.convert(&model)?; // the learned ranges, no calibration data
//! assert_eq!(q.predict(x.view())?.dim(), (32, 10));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use pare_tensor::nn::{Layer, Module};
use pare_tensor::train::Callback;
use pare_tensor::{Activation as FloatActivation, Graph, Sequential, Var};

use crate::convert::{ConvertConfig, act_spec, plan, weight_params};
use crate::error::{QuantError, Result};
use crate::int4::WeightBits;
use crate::model::{ActQuant, Bias, Mode, ModelParts, Provenance, QuantizedModel};
use crate::observer::ObserverKind;
use crate::params::{QuantParams, Range, quantize_bias};
use crate::simulate::qat_weight_hook_bits;

/// Settings of quantization-aware training; `Default` is TFMOT's default 8-bit scheme.
#[derive(Debug, Clone, PartialEq)]
pub struct QatConfig {
    /// Weight width: int8 (default) or int4.
    pub weight_bits: WeightBits,
    /// One weight scale per output channel (default, TFMOT's and TFLite's) or one per tensor.
    pub per_channel: bool,
    /// Decay of the activation ranges' moving average (TFMOT's 0.999).
    pub ema_decay: f32,
}

impl Default for QatConfig {
    fn default() -> Self {
        QatConfig {
            weight_bits: WeightBits::Int8,
            per_channel: true,
            ema_decay: 0.999,
        }
    }
}

impl QatConfig {
    /// Checks the hyper-parameters.
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] for a decay outside [0, 1).
    pub fn validate(&self) -> Result<()> {
        if !(self.ema_decay.is_finite() && (0.0..1.0).contains(&self.ema_decay)) {
            return Err(QuantError::InvalidParameter {
                name: "ema_decay",
                value: self.ema_decay.to_string(),
                reason: "must be in [0, 1)",
            });
        }
        Ok(())
    }

    /// The conversion that matches this training: its weight width and granularity.
    pub fn convert_config(&self) -> ConvertConfig {
        ConvertConfig {
            mode: Mode::FullInteger,
            observer: ObserverKind::MovingAverage,
            per_channel: self.per_channel,
            weight_bits: self.weight_bits,
            ..ConvertConfig::default()
        }
    }
}

/// One step of the moving average of a range: the batch's range (widened to hold 0, as
/// TFMOT's `MovingAvgQuantize` widens it) replaces `previous` if there is none, else
/// `decay · previous + (1 − decay) · batch` at each end.
pub fn moving_average_range(previous: Option<Range>, batch: Range, decay: f32) -> Range {
    let batch = batch.with_zero();
    match previous {
        None => batch,
        Some(p) => Range {
            min: decay * p.min + (1.0 - decay) * batch.min,
            max: decay * p.max + (1.0 - decay) * batch.max,
        },
    }
}

/// The learned range of one tensor, and the current step's batch range until it is committed.
#[derive(Debug, Default)]
struct Slot {
    range: Option<Range>,
    pending: Option<Range>,
    examples: usize,
}

type Shared = Arc<Mutex<Slot>>;

fn lock(s: &Shared) -> MutexGuard<'_, Slot> {
    // A poisoned lock means a shard panicked mid-step; the range it left is still a range.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fake-quant layer [`Qat::attach`] inserts.
struct ActFakeQuant {
    name: String,
    slot: Shared,
    decay: f32,
}

impl Module for ActFakeQuant {
    fn name(&self) -> &str {
        &self.name
    }

    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        let v = g.value(x);
        let (lo, hi) = v
            .iter()
            .filter(|x| x.is_finite())
            .fold((0.0f32, 0.0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        if v.iter().any(|x| !x.is_finite()) {
            // A diverged step: pass the values on and let the loss show it.
            return x;
        }
        let batch = Range { min: lo, max: hi };
        let rows = v.shape().first().copied().unwrap_or(0);
        let range = {
            let mut s = lock(&self.slot);
            if g.is_training() {
                s.pending = Some(match s.pending {
                    None => batch,
                    Some(p) => Range {
                        min: p.min.min(batch.min),
                        max: p.max.max(batch.max),
                    },
                });
                s.examples += rows;
                moving_average_range(s.range, batch, self.decay)
            } else {
                s.range.unwrap_or(batch)
            }
        };
        match QuantParams::asymmetric(range).and_then(|p| ActQuant::from_params(&p)) {
            Ok(a) => g.fake_quant(x, act_spec(&a)),
            // Unreachable for finite ranges; leaving the value unquantized is the safe reading.
            Err(_) => x,
        }
    }

    fn output_shape(&self, input: &[usize]) -> pare_tensor::Result<Vec<usize>> {
        Ok(input.to_vec())
    }
}

/// The activation ranges a QAT run learned: the input's and each requantizing layer's output,
/// by the quantized layer's name (a conv or dense layer's own name, also when a ReLU layer after
/// it is fused in).
#[derive(Debug, Clone, PartialEq)]
pub struct QatRanges {
    /// The model input's range.
    pub input: Range,
    /// `(layer, range)` of each conv, dense and leaky-ReLU output, in layer order.
    pub outputs: Vec<(String, Range)>,
    /// Training examples the ranges saw (counted at the input, each epoch again).
    pub examples: usize,
}

/// Quantization-aware training of one model: the fake-quant layers in it and the [`Callback`]
/// that fake-quantizes its weights and advances the ranges. See the [module docs](self).
///
/// While attached, the model holds custom layers: it cannot be cloned (`Layer::clone` panics on
/// them) or converted; [`detach`](Self::detach) first.
pub struct Qat {
    config: QatConfig,
    input: (String, Shared),
    outputs: Vec<(String, String, Shared)>,
}

impl std::fmt::Debug for Qat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qat")
            .field("config", &self.config)
            .field(
                "layers",
                &self.outputs.iter().map(|o| &o.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Name of the fake-quant layer after `layer`.
fn fq_name(layer: &str) -> String {
    format!("{layer}.act_quant")
}

impl Qat {
    /// Inserts the activation fake-quant layers into `model` and returns the training state.
    /// Weights are untouched; pass the result to `Fit::callback` so kernels are fake-quantized
    /// too.
    ///
    /// # Errors
    /// - [`QuantError::InvalidParameter`] for bad settings;
    /// - [`QuantError::UnsupportedLayer`] for a layer [`convert`](crate::convert) cannot
    ///   quantize, for a conv or dense layer with a fused leaky ReLU (the engine requantizes
    ///   between the two; use a separate `LeakyReLU` layer), or if the model already holds
    ///   fake-quant layers;
    /// - errors of the model (`Tensor`) or of its weights (`NonFinite`).
    pub fn attach(model: &mut Sequential, config: QatConfig) -> Result<Qat> {
        config.validate()?;
        model.output_shape()?;
        let planned = plan(model, config.per_channel, config.weight_bits)?;
        let names: std::collections::HashSet<String> = model
            .layers
            .iter()
            .map(|l| l.module().name().to_string())
            .collect();
        let input_name = "input.act_quant".to_string();
        let mut inserts: Vec<(usize, String)> = Vec::new();
        for l in planned.iter().filter(|l| l.kind.requantizes()) {
            let (i, float) = model
                .layers
                .iter()
                .enumerate()
                .find(|(_, f)| f.module().name() == l.name)
                .ok_or_else(|| QuantError::UnsupportedLayer {
                    layer: l.name.clone(),
                    reason: "a conv or dense layer with a fused leaky ReLU: quantization-aware \
                             training needs the leaky ReLU as its own LeakyReLU layer"
                        .into(),
                })?;
            let activation = match float {
                Layer::Conv2d(c) => Some(c.activation),
                Layer::Dense(d) => Some(d.activation),
                _ => None,
            };
            if let Some(FloatActivation::LeakyRelu(_)) = activation {
                return Err(QuantError::UnsupportedLayer {
                    layer: l.name.clone(),
                    reason: "a fused leaky ReLU: quantization-aware training needs it as its \
                             own LeakyReLU layer (the engine requantizes between the two)"
                        .into(),
                });
            }
            let relu_follows = activation == Some(FloatActivation::Linear)
                && matches!(model.layers.get(i + 1), Some(Layer::ReLU(_)));
            inserts.push((i + 1 + usize::from(relu_follows), l.name.clone()));
        }
        if let Some(clash) = std::iter::once(&input_name)
            .chain(inserts.iter().map(|(_, n)| n))
            .map(|n| if n == &input_name { n.clone() } else { fq_name(n) })
            .find(|n| names.contains(n))
        {
            return Err(QuantError::UnsupportedLayer {
                layer: clash,
                reason: "the model already has a layer of this name (is QAT attached already?)"
                    .into(),
            });
        }
        let slot = |name: &str| -> (Shared, Layer) {
            let s: Shared = Arc::default();
            let layer = Layer::Custom(Box::new(ActFakeQuant {
                name: name.to_string(),
                slot: s.clone(),
                decay: config.ema_decay,
            }));
            (s, layer)
        };
        let mut outputs = Vec::with_capacity(inserts.len());
        for (at, layer) in inserts.iter().rev() {
            let name = fq_name(layer);
            let (s, l) = slot(&name);
            model.layers.insert(*at, l);
            outputs.push((layer.clone(), name, s));
        }
        outputs.reverse();
        let (s, l) = slot(&input_name);
        model.layers.insert(0, l);
        Ok(Qat {
            config,
            input: (input_name, s),
            outputs,
        })
    }

    /// The settings.
    pub fn config(&self) -> &QatConfig {
        &self.config
    }

    /// Removes this run's fake-quant layers from `model` (the learned ranges stay here);
    /// returns how many it removed. Calling it twice is harmless.
    pub fn detach(&self, model: &mut Sequential) -> usize {
        let ours: std::collections::HashSet<&str> = std::iter::once(self.input.0.as_str())
            .chain(self.outputs.iter().map(|o| o.1.as_str()))
            .collect();
        let before = model.layers.len();
        model.layers.retain(|l| {
            !(matches!(l, Layer::Custom(_)) && ours.contains(l.module().name()))
        });
        before - model.layers.len()
    }

    /// The ranges learned so far.
    ///
    /// # Errors
    /// [`QuantError::NoData`] naming the first tensor no training step has seen yet.
    pub fn ranges(&self) -> Result<QatRanges> {
        let get = |s: &Shared, channel: usize| {
            lock(s).range.ok_or(QuantError::NoData {
                observer: "quantization-aware training (no training step ran)",
                channel,
                non_finite: 0,
            })
        };
        Ok(QatRanges {
            input: get(&self.input.1, 0)?,
            outputs: self
                .outputs
                .iter()
                .enumerate()
                .map(|(i, (layer, _, s))| Ok((layer.clone(), get(s, i + 1)?)))
                .collect::<Result<_>>()?,
            examples: lock(&self.input.1).examples,
        })
    }

    /// Quantizes the (detached) trained model at the learned ranges, with this run's weight
    /// width and granularity: [`convert_qat`] with [`QatConfig::convert_config`].
    ///
    /// # Errors
    /// As [`ranges`](Self::ranges) and [`convert_qat`]; `UnsupportedLayer` if `model` still
    /// holds the fake-quant layers.
    pub fn convert(&self, model: &Sequential) -> Result<QuantizedModel> {
        convert_qat(model, &self.ranges()?, &self.config.convert_config())
    }
}

impl Callback for Qat {
    fn on_batch_begin(&mut self, _step: u64, _model: &mut Sequential) -> pare_tensor::Result<()> {
        for s in std::iter::once(&self.input.1).chain(self.outputs.iter().map(|o| &o.2)) {
            lock(s).pending = None;
        }
        Ok(())
    }

    fn prepare_graph(&self, graph: &mut Graph) -> pare_tensor::Result<()> {
        graph.add_param_hook(qat_weight_hook_bits(
            self.config.per_channel,
            self.config.weight_bits,
        ));
        Ok(())
    }

    fn on_batch_end(&mut self, _step: u64, _model: &mut Sequential) -> pare_tensor::Result<()> {
        let decay = self.config.ema_decay;
        for s in std::iter::once(&self.input.1).chain(self.outputs.iter().map(|o| &o.2)) {
            let mut s = lock(s);
            if let Some(batch) = s.pending.take() {
                s.range = Some(moving_average_range(s.range, batch, decay));
            }
        }
        Ok(())
    }
}

/// Quantizes a float model at given activation ranges (from [`Qat::ranges`]) instead of
/// calibrating: full integer, weights at `config.weight_bits` and `config.per_channel` (use the
/// training's, [`QatConfig::convert_config`]), biases at `s_in · s_w`. The observer settings and
/// calibration batch size of `config` are not used.
///
/// # Errors
/// - [`QuantError::WrongMode`] for a dynamic-range `config` (it has no activation ranges);
/// - [`QuantError::ModelMismatch`] if `ranges` lacks a layer of the model;
/// - as [`convert`](crate::convert) for the model and its weights, and for ranges so disparate
///   that a multiplier cannot be represented.
pub fn convert_qat(
    model: &Sequential,
    ranges: &QatRanges,
    config: &ConvertConfig,
) -> Result<QuantizedModel> {
    config.validate()?;
    if config.mode != Mode::FullInteger {
        return Err(QuantError::WrongMode {
            op: "convert_qat (learned activation ranges)",
            mode: config.mode,
        });
    }
    model.output_shape()?;
    let mut layers = plan(model, config.per_channel, config.weight_bits)?;
    let act = |r: Range| ActQuant::from_params(&QuantParams::asymmetric(r)?);
    let input = act(ranges.input)?;
    let mut current = input;
    for layer in &mut layers {
        let out = if layer.kind.requantizes() {
            let (_, r) = ranges
                .outputs
                .iter()
                .find(|(n, _)| *n == layer.name)
                .ok_or_else(|| QuantError::ModelMismatch {
                    layer: layer.name.clone(),
                    reason: "no learned range for this layer's output".into(),
                })?;
            act(*r)?
        } else {
            current
        };
        if let Some(w) = &mut layer.weights {
            let Bias::Float(b) = &w.bias else {
                unreachable!("convert_qat: the plan holds float biases")
            };
            let b = ndarray::ArrayView1::from(b.as_slice());
            let (q, _) = quantize_bias(b, current.scale, &weight_params(&w.scale))?;
            w.bias = Bias::Int32(q.to_vec());
        }
        layer.output = Some(out);
        current = out;
    }
    QuantizedModel::from_parts(ModelParts {
        mode: Mode::FullInteger,
        input_type: config.input_type,
        output_type: config.output_type,
        input_shape: model.input_shape.clone(),
        input: Some(input),
        layers,
        provenance: Provenance::new(
            Some(ObserverKind::MovingAverage),
            config.per_channel,
            ranges.examples,
        ),
    })
}
