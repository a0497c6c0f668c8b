//! Per-layer quantization error: the signal-to-quantization-noise ratio of every layer's int8
//! output against the float model's.

use ndarray::{ArrayViewD, Axis};
use pare_tensor::Sequential;
use serde::Serialize;

use crate::convert::float_forward;
use crate::error::{QuantError, Result};
use crate::model::{Mode, QuantizedModel};

/// The SQNR of one layer's output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSqnr {
    /// Layer name (`"input"` for the quantized model input).
    pub layer: String,
    /// Its operation (`conv2d`, `dense`, …; `quantize` for the input).
    pub op: &'static str,
    /// `10 · log10(Σ f² / Σ (f − deq(q))²)` in dB; infinite when the error is zero.
    pub sqnr_db: f64,
}

/// `10 · log10(Σ f² / Σ (f − g)²)`: the signal-to-noise ratio of `approx` against `reference`
/// in dB (infinite for identical slices, −∞ for a zero reference with a non-zero error).
///
/// # Panics
/// If the slices differ in length.
pub fn sqnr_db(reference: &[f32], approx: &[f32]) -> f64 {
    assert_eq!(
        reference.len(),
        approx.len(),
        "sqnr_db: reference and approximation lengths differ"
    );
    let (signal, noise) =
        reference
            .iter()
            .zip(approx)
            .fold((0.0f64, 0.0f64), |(s, e), (&f, &g)| {
                let d = f as f64 - g as f64;
                (s + f as f64 * f as f64, e + d * d)
            });
    10.0 * (signal / noise).log10()
}

/// Running sums for one tapped tensor.
#[derive(Clone, Copy, Default)]
struct Sums {
    signal: f64,
    noise: f64,
}

impl Sums {
    fn add(&mut self, f: &[f32], g: impl Iterator<Item = f32>) {
        for (&a, b) in f.iter().zip(g) {
            let d = a as f64 - b as f64;
            self.signal += a as f64 * a as f64;
            self.noise += d * d;
        }
    }

    fn db(self) -> f64 {
        10.0 * (self.signal / self.noise).log10()
    }
}

impl QuantizedModel {
    /// The SQNR of the quantized input and of every layer's output, each accumulated over all
    /// of `x`: the integer engine's int8 outputs (dequantized) against the float model's
    /// activations, both run end to end, so errors from earlier layers count. Passing the
    /// calibration data shows where the range choices cost precision.
    ///
    /// # Errors
    /// [`QuantError::WrongMode`] for a dynamic-range model; as
    /// [`simulate`](Self::simulate) for a mismatched float model or bad input.
    pub fn layer_sqnr(
        &self,
        float_model: &Sequential,
        x: ArrayViewD<'_, f32>,
    ) -> Result<Vec<LayerSqnr>> {
        if self.mode != Mode::FullInteger {
            return Err(QuantError::WrongMode {
                op: "layer_sqnr",
                mode: self.mode,
            });
        }
        float_model.check_input(x.shape())?;
        let input_q = self.input.expect("full-integer model has input parameters");
        let mut sums = vec![Sums::default(); self.layers.len() + 1];
        for batch in x.axis_chunks_iter(Axis(0), 256) {
            let q = self.quantize_input(batch.view())?;
            let traces = self.trace_i8(q.view())?;
            float_forward(
                &self.layers,
                float_model,
                batch.to_owned(),
                None,
                &mut |tap, f| {
                    let f = f.as_slice().expect("graph values are contiguous");
                    match tap {
                        None => sums[0].add(f, q.iter().map(|&c| input_q.dequantize(c))),
                        Some(i) => {
                            let o = self.layers[i]
                                .output
                                .expect("full-integer layer parameters");
                            sums[i + 1].add(f, traces[i].iter().map(|&c| o.dequantize(c)));
                        }
                    }
                    Ok(())
                },
            )?;
        }
        let mut out = vec![LayerSqnr {
            layer: "input".into(),
            op: "quantize",
            sqnr_db: sums[0].db(),
        }];
        for (l, s) in self.layers.iter().zip(&sums[1..]) {
            out.push(LayerSqnr {
                layer: l.name.clone(),
                op: l.kind.op_name(),
                sqnr_db: s.db(),
            });
        }
        Ok(out)
    }
}
