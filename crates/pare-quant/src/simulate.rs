//! Fake-quantized float simulation of a quantized model, and a quantization-aware-training hook.
//!
//! The simulation runs the float model's own weights through `Graph::fake_quant` at the
//! quantized model's weight scales (symmetric, [−127, 127]) and fake-quantizes the input and
//! every conv/dense/leaky-ReLU output at its int8 parameters — the float picture of what the
//! integer engine computes, built from float operations only. The two differ by the integer
//! engine's roundings (bias, fixed-point multiplier), so they agree on almost every prediction
//! but not bit for bit; the tests hold the engine to that.

use ndarray::{Array2, ArrayViewD, Axis};
use pare_tensor::{FakeQuantSpec, ParamHook, Sequential};

use crate::convert::{FakeQuant, float_forward};
use crate::error::{QuantError, Result};
use crate::int4::{WeightBits, symmetric_scale_bits};
use crate::model::QuantizedModel;
use crate::params::Range;

/// Examples per simulated batch (bounds the graph's memory).
const BATCH: usize = 256;

impl QuantizedModel {
    /// Runs `float_model` (the model this one was converted from) as a float graph with
    /// fake-quant nodes at this model's parameters; returns the simulated logits `[n, outputs]`.
    /// For a dynamic-range model only the weights are fake-quantized.
    ///
    /// # Errors
    /// [`QuantError::ModelMismatch`] if `float_model` lacks a layer of this model or has other
    /// kernel shapes; [`QuantError::ShapeMismatch`] / [`QuantError::NonFinite`] for bad input.
    pub fn simulate(
        &self,
        float_model: &Sequential,
        x: ArrayViewD<'_, f32>,
    ) -> Result<Array2<f32>> {
        float_model.check_input(x.shape())?;
        if float_model.input_shape != self.input_shape {
            return Err(QuantError::ModelMismatch {
                layer: "input".into(),
                reason: format!(
                    "float input shape {:?}, quantized {:?}",
                    float_model.input_shape, self.input_shape
                ),
            });
        }
        crate::params::check_finite(&x, "model input")?;
        let n = x.shape()[0];
        let classes: usize = self.output_shape().iter().product();
        let mut out = Array2::<f32>::zeros((n, classes));
        let fq = FakeQuant {
            input: self.input,
            layers: &self.layers,
        };
        for (i, batch) in x.axis_chunks_iter(Axis(0), BATCH).enumerate() {
            let rows = batch.shape()[0];
            let y = float_forward(
                &self.layers,
                float_model,
                batch.to_owned(),
                Some(&fq),
                &mut |_, _| Ok(()),
            )?;
            let y = y
                .into_shape_with_order((rows, classes))
                .expect("simulate: logits are [rows, outputs]");
            out.slice_mut(ndarray::s![i * BATCH..i * BATCH + rows, ..])
                .assign(&y);
        }
        Ok(out)
    }
}

/// The symmetric int8 fake-quant of a weight tensor at its current range: per output channel
/// (the last axis) or per tensor, as the converter quantizes weights. `None` if a weight is not
/// finite.
pub fn weight_fake_quant_spec(
    w: &ndarray::ArrayD<f32>,
    per_channel: bool,
) -> Option<FakeQuantSpec> {
    weight_fake_quant_spec_bits(w, per_channel, WeightBits::Int8)
}

/// [`weight_fake_quant_spec`] at any weight width: the grid the converter quantizes to with
/// [`ConvertConfig::weight_bits`](crate::ConvertConfig::weight_bits) set to `bits`.
pub fn weight_fake_quant_spec_bits(
    w: &ndarray::ArrayD<f32>,
    per_channel: bool,
    bits: WeightBits,
) -> Option<FakeQuantSpec> {
    if w.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let range = |v: ndarray::ArrayViewD<'_, f32>| {
        let (lo, hi) = v
            .iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        Range::new(lo, hi).ok()
    };
    let ranges: Vec<Range> = if per_channel && w.ndim() > 0 {
        w.axis_iter(Axis(w.ndim() - 1))
            .map(range)
            .collect::<Option<_>>()?
    } else {
        vec![range(w.view())?]
    };
    Some(FakeQuantSpec {
        zero_point: vec![0; ranges.len()],
        scale: ranges
            .iter()
            .map(|r| symmetric_scale_bits(*r, bits).0)
            .collect(),
        qmin: bits.qmin(),
        qmax: bits.qmax(),
    })
}

/// A parameter hook for quantization-aware training: every `*.kernel` parameter entering a
/// graph is fake-quantized to symmetric int8 at its current range (per output channel if
/// `per_channel`), with the straight-through gradient of `Graph::fake_quant`. Install it with
/// `Graph::add_param_hook` (e.g. from a training callback's `prepare_graph`). A kernel holding
/// NaN or infinity passes through unchanged (the loss shows the divergence).
pub fn qat_weight_hook(per_channel: bool) -> ParamHook {
    qat_weight_hook_bits(per_channel, WeightBits::Int8)
}

/// [`qat_weight_hook`] at any weight width.
pub fn qat_weight_hook_bits(per_channel: bool, bits: WeightBits) -> ParamHook {
    Box::new(move |g, name, v| {
        if !name.ends_with(".kernel") {
            return v;
        }
        match weight_fake_quant_spec_bits(g.value(v), per_channel, bits) {
            Some(spec) => g.fake_quant(v, spec),
            None => v,
        }
    })
}
