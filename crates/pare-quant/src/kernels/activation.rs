//! Element-wise int8 activations that need their own output parameters: TFLite's int8
//! `LEAKY_RELU`.

use crate::error::{QuantError, Result};
use crate::fixedpoint::{multiply_by_quantized_multiplier, quantize_multiplier};
use crate::params::{QMAX_I8, QMIN_I8};

/// TFLite's int8 `LEAKY_RELU`, with its two output multipliers.
///
/// With input parameters `(s_in, z_in)` and output `(s_out, z_out)`, the real output is `x` for
/// `x >= 0` and `alpha · x` below, so in integers (TFLite's `QuantizeLeakyRelu`,
/// `tensorflow/lite/kernels/internal/reference/leaky_relu.h`):
///
/// `v = q − z_in`; `out = z_out + M(v)` with `M` the identity multiplier `s_in / s_out` when
/// `v >= 0` and the alpha multiplier `alpha · s_in / s_out` otherwise, each applied by
/// [`multiply_by_quantized_multiplier`]; clamped to [−128, 127].
///
/// The input has only 256 possible values, so the engine evaluates this once per code into a
/// table ([`table`](Self::table)) and runs the layer as a lookup.
///
/// Like TFLite, this rounds twice: the fixed-point product to an integer in units of
/// `2^shift` output steps, then the rounding right shift by `−shift`. With `v` only a few bits
/// wide the first rounding is coarse, so a result can be `0.5 + 2^(shift − 1)` steps from exact
/// (0.625 for a shift of −2) instead of 0.5; since the shift rounds ties away from zero, below
/// the zero point such codes come out one step lower than `round(alpha · x / s_out)` (about
/// one negative code in eight for a shift of −2). That is TFLite's behaviour, kept bit for
/// bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakyReluParams {
    /// Input zero point.
    pub input_zero_point: i32,
    /// Output zero point.
    pub output_zero_point: i32,
    /// Fixed-point multiplier and shift for `s_in / s_out` (inputs at or above the zero point).
    pub identity: (i32, i32),
    /// Fixed-point multiplier and shift for `alpha · s_in / s_out` (inputs below it).
    pub alpha: (i32, i32),
}

impl LeakyReluParams {
    /// The parameters from the scales, as TFLite's `LeakyReluPrepare`: both real multipliers
    /// computed in f64 and split by [`quantize_multiplier`].
    ///
    /// # Errors
    /// If a scale is not finite and positive, a zero point is outside [−128, 127], `alpha` is
    /// negative or not finite, or a multiplier is too large to represent.
    pub fn from_scales(
        input_scale: f32,
        input_zero_point: i32,
        output_scale: f32,
        output_zero_point: i32,
        alpha: f32,
    ) -> Result<Self> {
        for (channel, scale) in [input_scale, output_scale].into_iter().enumerate() {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(QuantError::InvalidScale { channel, scale });
            }
        }
        for zero_point in [input_zero_point, output_zero_point] {
            if !(QMIN_I8..=QMAX_I8).contains(&zero_point) {
                return Err(QuantError::InvalidZeroPoint {
                    channel: 0,
                    zero_point,
                    qmin: QMIN_I8,
                    qmax: QMAX_I8,
                });
            }
        }
        if !(alpha.is_finite() && alpha >= 0.0) {
            return Err(QuantError::InvalidParameter {
                name: "alpha",
                value: alpha.to_string(),
                reason: "the leaky ReLU slope must be finite and >= 0",
            });
        }
        let identity = input_scale as f64 / output_scale as f64;
        Ok(LeakyReluParams {
            input_zero_point,
            output_zero_point,
            identity: quantize_multiplier(identity)?,
            alpha: quantize_multiplier(alpha as f64 * identity)?,
        })
    }

    /// The reference: one input code to one output code, exactly as TFLite computes it.
    pub fn apply(&self, q: i8) -> i8 {
        let v = q as i32 - self.input_zero_point;
        let (m, s) = if v >= 0 { self.identity } else { self.alpha };
        let out = self.output_zero_point + multiply_by_quantized_multiplier(v, m, s);
        out.clamp(QMIN_I8, QMAX_I8) as i8
    }

    /// [`apply`](Self::apply) for every input code, indexed by `q as u8`.
    pub fn table(&self) -> [i8; 256] {
        std::array::from_fn(|i| self.apply(i as u8 as i8))
    }
}

/// The code table of onnxruntime's `com.microsoft.QLinearLeakyRelu`, indexed by `q as u8`:
/// each code dequantized in f32 (`s_in · (q − z_in)`), the slope applied in f32, and
/// quantized back as `MlasQuantizeLinear` does (`x / s_out` rounded to nearest, ties to even,
/// plus `z_out`, clamped). One rounding, where TFLite's [`LeakyReluParams`] rounds twice.
///
/// # Errors
/// As [`LeakyReluParams::from_scales`].
pub fn onnxruntime_leaky_relu_table(
    input_scale: f32,
    input_zero_point: i32,
    output_scale: f32,
    output_zero_point: i32,
    alpha: f32,
) -> Result<[i8; 256]> {
    // The same checks as TFLite's form, so a model valid under one rule is valid under both.
    LeakyReluParams::from_scales(
        input_scale,
        input_zero_point,
        output_scale,
        output_zero_point,
        alpha,
    )?;
    Ok(std::array::from_fn(|i| {
        let x = input_scale * (i as u8 as i8 as i32 - input_zero_point) as f32;
        let y = if x >= 0.0 { x } else { alpha * x };
        let q = (y / output_scale).round_ties_even() + output_zero_point as f32;
        q.clamp(QMIN_I8 as f32, QMAX_I8 as f32) as i8
    }))
}

/// Applies a 256-entry code table (indexed by the byte `q as u8`) in place.
pub fn apply_table(table: &[i8; 256], data: &mut [i8]) {
    for v in data {
        *v = table[*v as u8 as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_float_leaky_relu_within_one_step() {
        // Input range [-4, 4], output range [-0.8, 4]: the quantized op must agree with
        // quantize(leaky(dequantize(q))) to within one output step (two roundings).
        let (s_in, z_in) = (8.0f32 / 255.0, 0);
        let (s_out, z_out) = (
            4.8f32 / 255.0,
            -128 + (0.8f32 / (4.8 / 255.0)).round() as i32,
        );
        for alpha in [0.0f32, 0.01, 0.2, 0.5, 1.0, 1.7] {
            let p = LeakyReluParams::from_scales(s_in, z_in, s_out, z_out, alpha).unwrap();
            let table = p.table();
            for q in i8::MIN..=i8::MAX {
                let x = s_in * (q as i32 - z_in) as f32;
                let y = if x >= 0.0 { x } else { alpha * x };
                let expect = ((y / s_out).round() as i32 + z_out).clamp(-128, 127);
                let got = p.apply(q) as i32;
                assert!(
                    (got - expect).abs() <= 1,
                    "alpha {alpha}, q {q}: {got} vs float {expect}"
                );
                assert_eq!(table[q as u8 as usize], p.apply(q));
            }
        }
    }

    #[test]
    fn hand_worked_codes() {
        // s_in = s_out = 0.5, zero points 0 and 10, alpha 0.25: identity multiplier 1.0 is
        // (2^30, 1); alpha multiplier 0.25 is (2^30, -1).
        let p = LeakyReluParams::from_scales(0.5, 0, 0.5, 10, 0.25).unwrap();
        assert_eq!(p.identity, (1 << 30, 1));
        assert_eq!(p.alpha, (1 << 30, -1));
        assert_eq!(p.apply(4), 14);
        assert_eq!(p.apply(120), 127); // 130, clamped
        // -6 · 0.25 = -1.5: gemmlowp rounds half away from zero, -2.
        assert_eq!(p.apply(-6), 8);
        assert_eq!(p.apply(-128), -22);
        let mut data = [4i8, -6, 120];
        apply_table(&p.table(), &mut data);
        assert_eq!(data, [14, 8, 127]);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(matches!(
            LeakyReluParams::from_scales(0.0, 0, 1.0, 0, 0.1),
            Err(QuantError::InvalidScale { .. })
        ));
        assert!(matches!(
            LeakyReluParams::from_scales(1.0, 200, 1.0, 0, 0.1),
            Err(QuantError::InvalidZeroPoint { .. })
        ));
        assert!(matches!(
            LeakyReluParams::from_scales(1.0, 0, 1.0, 0, -0.1),
            Err(QuantError::InvalidParameter { .. })
        ));
        assert!(matches!(
            LeakyReluParams::from_scales(1.0, 0, 1e-12, 0, 0.1),
            Err(QuantError::InvalidMultiplier { .. })
        ));
    }

    #[test]
    fn onnxruntime_table_rounds_once_ties_to_even() {
        // s_in = 0.5, z_in = 0, s_out = 1, z_out = 0, alpha = 0.5: input code q is 0.5·q,
        // its leaky value 0.25·q below zero; hand-worked: q = 3 → 1.5 → 2 (even), q = 5 →
        // 2.5 → 2, q = -2 → -0.5 → -0 (even), q = -6 → -1.5 → -2, q = -10 → -2.5 → -2.
        let t = onnxruntime_leaky_relu_table(0.5, 0, 1.0, 0, 0.5).unwrap();
        for (q, want) in [(3i8, 2i8), (5, 2), (-2, 0), (-6, -2), (-10, -2), (127, 64)] {
            assert_eq!(t[q as u8 as usize], want, "q {q}");
        }
        // Within half a step of the exact value everywhere, on a realistic parameter set.
        let (si, zi, so, zo, alpha) = (0.031_f32, -5, 0.027_f32, -100, 0.2_f32);
        let t = onnxruntime_leaky_relu_table(si, zi, so, zo, alpha).unwrap();
        for q in -128i32..=127 {
            let x = si as f64 * (q - zi) as f64;
            let y = if x >= 0.0 { x } else { alpha as f64 * x };
            let exact = (y / so as f64 + zo as f64).clamp(-128.0, 127.0);
            let got = t[q as u8 as usize] as f64;
            assert!((got - exact).abs() <= 0.5 + 1e-4, "q {q}: {got} vs {exact}");
        }
        // The same parameters are rejected as by TFLite's form.
        assert!(onnxruntime_leaky_relu_table(0.0, 0, 1.0, 0, 0.2).is_err());
        assert!(onnxruntime_leaky_relu_table(1.0, 0, 1.0, 0, f32::NAN).is_err());
    }
}
