//! int8 activations by a 256-entry lookup table computed in float, as TFLite builds them
//! (`LUTPopulate` in `tensorflow/lite/kernels/internal/common.h`, used by its int8 `LOGISTIC`,
//! `TANH` and `HARD_SWISH` kernels in effect): for every input code `q`,
//! `out = clamp(round(f(s_in · (q − z_in)) / s_out) + z_out)`, rounding half away from zero
//! (`TfLiteRound`). Run the table with [`super::apply_table`]; ReLU6 needs no table, only a
//! clamp of the output range ([`relu6_range`]).

use crate::error::{QuantError, Result};
use crate::fixedpoint::quantize_multiplier;
use crate::params::{QMAX_I8, QMIN_I8};

/// TFLite's fixed output parameters of int8 `LOGISTIC`: scale 1/256, zero point −128.
pub const LOGISTIC_OUTPUT: (f32, i32) = (1.0 / 256.0, -128);
/// TFLite's fixed output parameters of int8 `TANH`: scale 1/128, zero point 0.
pub const TANH_OUTPUT: (f32, i32) = (1.0 / 128.0, 0);

/// The table of `f` from input `(scale, zero point)` to output `(scale, zero point)`, indexed
/// by the input code as a `u8` (`q as u8`), as TFLite lays it out.
pub fn lut_i8(f: impl Fn(f32) -> f32, input: (f32, i32), output: (f32, i32)) -> [i8; 256] {
    let inverse_scale = 1.0 / output.0;
    let mut table = [0i8; 256];
    for q in QMIN_I8..=QMAX_I8 {
        let dequantized = input.0 * (q - input.1) as f32;
        let transformed = f(dequantized);
        let rescaled = (transformed * inverse_scale).round();
        let quantized = rescaled as i32 + output.1;
        table[q as i8 as u8 as usize] = quantized.clamp(QMIN_I8, QMAX_I8) as i8;
    }
    table
}

/// The int8 range a fused ReLU6 clamps to at output `(scale, zero point)`: codes for 0 and 6,
/// clamped to [−128, 127] (TFLite's `CalculateActivationRangeQuantized` for `kTfLiteActRelu6`).
pub fn relu6_range(output: (f32, i32)) -> (i32, i32) {
    let q = |v: f32| (v / output.0).round() as i32 + output.1;
    (q(0.0).max(QMIN_I8), q(6.0).min(QMAX_I8))
}

/// The fixed-point parameters of TFLite's int8 `HARD_SWISH` (`HardSwishPrepare` in
/// `tensorflow/lite/kernels/activations.cc`): the input is first put on a "high-resolution"
/// scale `s_in / 128`; the output multiplier `(s_in / 128) / s_out` and the "relu-ish"
/// multiplier `(s_in / 128) / (3 / 32768)` (3.0 maps to 32768) are [`quantize_multiplier`]'s
/// 31-bit multipliers rounded down to 16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardSwishParams {
    /// Input zero point.
    pub input_zero_point: i32,
    /// Output zero point.
    pub output_zero_point: i32,
    /// 16-bit output multiplier and its exponent (always <= 0).
    pub output_multiplier: (i16, i32),
    /// 16-bit relu-ish multiplier and its exponent.
    pub reluish_multiplier: (i16, i32),
}

/// TFLite's `DownScaleInt32ToInt16Multiplier`: `(m + 2^15) >> 16`, saturating at `i16::MAX`.
fn downscale_multiplier(m: i32) -> i16 {
    if m >= i32::MAX - (1 << 15) {
        i16::MAX
    } else {
        ((m + (1 << 15)) >> 16) as i16
    }
}

impl HardSwishParams {
    /// From the input and output `(scale, zero point)`, in f32 as TFLite computes them.
    ///
    /// # Errors
    /// [`QuantError::InvalidMultiplier`] when a multiplier cannot be represented, or when the
    /// output multiplier exceeds 1 (`s_in / 128 > s_out`, which TFLite rejects too) or either
    /// needs a right shift of more than 15 bits (the kernel's int16 shifts).
    pub fn from_scales(input: (f32, i32), output: (f32, i32)) -> Result<Self> {
        let hires_input_scale = (1.0f32 / 128.0) * input.0;
        let reluish_scale = 3.0f32 / 32768.0;
        let output_multiplier = hires_input_scale / output.0;
        let (om, oe) = quantize_multiplier(output_multiplier as f64)?;
        // The int16 shifts of the kernel hold at most 15 bits.
        if !(-15..=0).contains(&oe) {
            return Err(QuantError::InvalidMultiplier {
                value: output_multiplier as f64,
            });
        }
        let reluish_multiplier = hires_input_scale / reluish_scale;
        let (rm, re) = quantize_multiplier(reluish_multiplier as f64)?;
        if re < -15 {
            return Err(QuantError::InvalidMultiplier {
                value: reluish_multiplier as f64,
            });
        }
        Ok(HardSwishParams {
            input_zero_point: input.1,
            output_zero_point: output.1,
            output_multiplier: (downscale_multiplier(om), oe),
            reluish_multiplier: (downscale_multiplier(rm), re),
        })
    }

    /// The 256-entry table of [`hard_swish_i8`] over every input code.
    pub fn table(&self) -> [i8; 256] {
        let mut table = [0i8; 256];
        for q in QMIN_I8..=QMAX_I8 {
            table[q as i8 as u8 as usize] = hard_swish_i8(q as i8, self);
        }
        table
    }
}

/// gemmlowp's `SaturatingRoundingDoublingHighMul` on int16.
fn srdhm16(a: i16, b: i16) -> i16 {
    if a == i16::MIN && b == i16::MIN {
        return i16::MAX;
    }
    let ab = a as i32 * b as i32;
    let nudge = if ab >= 0 { 1 << 14 } else { 1 - (1 << 14) };
    ((ab + nudge) / (1 << 15)) as i16
}

/// TFLite's `SaturatingDoublingHighMul` on int16: as [`srdhm16`] but truncating towards zero.
fn sdhm16(a: i16, b: i16) -> i16 {
    if a == i16::MIN && b == i16::MIN {
        return i16::MAX;
    }
    ((a as i32 * b as i32) / (1 << 15)) as i16
}

/// gemmlowp's `RoundingDivideByPOT` on int16.
fn rdpot16(x: i16, exponent: i32) -> i16 {
    let mask = ((1i32 << exponent) - 1) as i16;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i16::from(x < 0);
    (x >> exponent) + i16::from(remainder > threshold)
}

/// TFLite's `SaturatingLeftShift` on int16.
fn saturating_left_shift16(v: i16, amount: i32) -> i16 {
    (v as i64 * (1i64 << amount)).clamp(i16::MIN as i64, i16::MAX as i64) as i16
}

/// One code of TFLite's reference int8 hard-swish (`reference_ops::HardSwish`,
/// `tensorflow/lite/kernels/internal/reference/hard_swish.h`), step for step: the input on the
/// high-resolution scale, its value on the output scale before the final shift, the relu-ish
/// factor `relu6(x + 3) / 6` as a 16-bit fraction, their product truncated, the shift, the zero
/// point and the int8 clamp.
pub fn hard_swish_i8(q: i8, p: &HardSwishParams) -> i8 {
    let input_value = (q as i32 - p.input_zero_point) as i16;
    let hires = input_value.wrapping_mul(1 << 7);
    let preshift_output = srdhm16(hires, p.output_multiplier.0);
    let (rm, re) = p.reluish_multiplier;
    let mut reluish = hires;
    if re > 0 {
        reluish = saturating_left_shift16(reluish, re - 1);
    }
    reluish = srdhm16(reluish, rm);
    if re > 0 {
        reluish = saturating_left_shift16(reluish, 1);
    }
    if re < 0 {
        reluish = rdpot16(reluish, -re);
    }
    let reluish = ((reluish as i32 + (1 << 15)) >> 1) as i16;
    let preshift = sdhm16(reluish, preshift_output);
    let out = rdpot16(preshift, -p.output_multiplier.1) as i32 + p.output_zero_point;
    out.clamp(QMIN_I8, QMAX_I8) as i8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::apply_table;

    #[test]
    fn logistic_table_by_its_formula() {
        // Input scale 1/16, zero point 0: code 0 is 0.0 → σ = 0.5 → 0.5 · 256 − 128 = 0; code 16
        // is 1.0 → σ = 0.7310586 → round(187.15) − 128 = 59; code −128 is −8 →
        // σ = 0.000335 → round(0.086) − 128 = −128.
        let t = lut_i8(
            |x| 1.0 / (1.0 + (-x).exp()),
            (1.0 / 16.0, 0),
            LOGISTIC_OUTPUT,
        );
        let mut data = [0i8, 16, -128, 127];
        apply_table(&t, &mut data);
        // Code 127 is 7.9375 → σ = 0.999643 → round(255.91) − 128 = 128, clamped to 127.
        assert_eq!(data, [0, 59, -128, 127]);
    }

    #[test]
    fn tanh_and_hard_swish_tables_round_half_away_from_zero() {
        // tanh with input scale 0.5: code 1 is 0.5 → 0.462117 · 128 = 59.15 → 59; code −1 → −59.
        let t = lut_i8(f32::tanh, (0.5, 0), TANH_OUTPUT);
        assert_eq!((t[1], t[255]), (59, -59));
        // Hard-swish x · relu6(x + 3) / 6 with input (0.25, 0) and output (0.125, −20): code 4 is
        // 1.0 → 2/3 → 5.33 → 5 − 20 = −15; code −16 is −4.0 → 0 → −20; code 2 is 0.5 →
        // 0.2916 → 2.33 → −18.
        let hs = |x: f32| x * (x + 3.0).clamp(0.0, 6.0) / 6.0;
        let t = lut_i8(hs, (0.25, 0), (0.125, -20));
        assert_eq!((t[4], t[(-16i8) as u8 as usize], t[2]), (-15, -20, -18));
        // A tie: input (1, 0), identity, output (2, 0): code 3 is 1.5 steps → 2, −3 → −2.
        let t = lut_i8(|x| x, (1.0, 0), (2.0, 0));
        assert_eq!((t[3], t[(-3i8) as u8 as usize]), (2, -2));
    }

    #[test]
    fn hard_swish_is_within_a_step_of_the_real_function() {
        // The fixed-point form rounds several times; TFLite's tests allow about one output
        // step of error, and so does this one, over every code of three scale pairs.
        let hs = |x: f32| x * (x + 3.0).clamp(0.0, 6.0) / 6.0;
        for (input, output) in [
            ((0.05, -10), (0.04, -90)),
            ((0.1, 0), (0.05, -60)),
            ((0.02, 30), (0.01, -100)),
        ] {
            let p = HardSwishParams::from_scales(input, output).unwrap();
            let t = p.table();
            for q in -128i32..=127 {
                let x = input.0 * (q - input.1) as f32;
                let want = (hs(x) / output.0 + output.1 as f32).clamp(-128.0, 127.0);
                let got = t[q as i8 as u8 as usize] as f32;
                assert!((got - want).abs() <= 1.5, "code {q}: {got} vs {want}");
            }
        }
        // Below −3 the output is the real zero: the output zero point.
        let p = HardSwishParams::from_scales((0.1, 0), (0.05, -60)).unwrap();
        assert_eq!(hard_swish_i8(-100, &p), -60);
    }

    #[test]
    fn int16_helpers_round_as_gemmlowp() {
        // 3 · 2^14 / 2^15 = 1.5 → 2; −1.5 → −1 (nudge toward +∞ then truncation); the
        // truncating form gives 1 and −1.
        assert_eq!((srdhm16(3, 1 << 14), srdhm16(-3, 1 << 14)), (2, -1));
        assert_eq!((sdhm16(3, 1 << 14), sdhm16(-3, 1 << 14)), (1, -1));
        assert_eq!(srdhm16(i16::MIN, i16::MIN), i16::MAX);
        // −3 / 2 → −2, 3 / 2 → 2, 5 / 4 → 1.
        assert_eq!((rdpot16(-3, 1), rdpot16(3, 1), rdpot16(5, 2)), (-2, 2, 1));
        assert_eq!(saturating_left_shift16(20_000, 1), i16::MAX);
        assert_eq!(downscale_multiplier(i32::MAX), i16::MAX);
        assert_eq!(downscale_multiplier(1 << 30), 1 << 14);
    }

    #[test]
    fn relu6_clamps_to_the_codes_of_0_and_6() {
        assert_eq!(relu6_range((6.0 / 255.0, -128)), (-128, 127));
        assert_eq!(relu6_range((0.05, -10)), (-10, 110));
        assert_eq!(relu6_range((0.01, 0)), (0, 127));
    }
}
