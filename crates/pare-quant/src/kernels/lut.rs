//! int8 activations by a 256-entry lookup table computed in float, as TFLite builds them
//! (`LUTPopulate` in `tensorflow/lite/kernels/internal/common.h`, used by its int8 `LOGISTIC`,
//! `TANH` and `HARD_SWISH` kernels in effect): for every input code `q`,
//! `out = clamp(round(f(s_in · (q − z_in)) / s_out) + z_out)`, rounding half away from zero
//! (`TfLiteRound`). Run the table with [`super::apply_table`]; ReLU6 needs no table, only a
//! clamp of the output range ([`relu6_range`]).

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
    fn relu6_clamps_to_the_codes_of_0_and_6() {
        assert_eq!(relu6_range((6.0 / 255.0, -128)), (-128, 127));
        assert_eq!(relu6_range((0.05, -10)), (-10, 110));
        assert_eq!(relu6_range((0.01, 0)), (0, 127));
    }
}
