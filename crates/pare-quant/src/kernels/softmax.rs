//! TFLite's int8 `SOFTMAX`, as its reference kernel computes it (`reference_ops::Softmax` in
//! `tensorflow/lite/kernels/internal/reference/softmax.h`, with the parameters of
//! `SoftmaxPrepare` in `tensorflow/lite/kernels/activations.cc` for the reference kernel
//! type), bit for bit.
//!
//! Over each row of the last axis, with `max` the row's largest code:
//!
//! 1. every difference `d = q − max` (<= 0) at or above `diff_min` is scaled to Q5.26 by the
//!    fixed-point multiplier of `β · s_in · 2^26` (`PreprocessSoftmaxScaling`, applied as
//!    `MultiplyByQuantizedMultiplierGreaterThanOne`: a left shift, then
//!    [`saturating_rounding_doubling_high_mul`]);
//! 2. gemmlowp's [`exp_on_negative_values`] gives `e^d` in Q0.31; the row's sum accumulates in
//!    Q12.19 (each term rounded by 12 bits);
//! 3. [`get_reciprocal`] gives `1 / sum` as a Q0.31 fraction and a power of two;
//! 4. each output is `e^d · (1 / sum)` ([`saturating_rounding_doubling_high_mul`]) shifted
//!    right, rounding, to units of 1/256, minus 128, clamped to int8; differences below
//!    `diff_min` give −128.
//!
//! The output parameters are TFLite's fixed ones, scale 1/256 and zero point −128
//! ([`SOFTMAX_OUTPUT`]). The input zero point cancels in `q − max`, so only the input scale
//! matters.
//!
//! TFLite's optimized kernel (the default resolver) uses a float lookup table instead and can
//! differ by a code; pare matches the reference one.

use crate::error::{QuantError, Result};
use crate::fixedpoint::{
    exp_on_negative_values, get_reciprocal, quantize_multiplier, rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul, saturating_rounding_multiply_by_pot,
};
use crate::params::{QMAX_I8, QMIN_I8};

/// TFLite's fixed output parameters of int8 `SOFTMAX`: scale 1/256, zero point −128.
pub const SOFTMAX_OUTPUT: (f32, i32) = (1.0 / 256.0, -128);

/// Integer bits of the scaled differences (TFLite's `kScaledDiffIntegerBits`): Q5.26, so a
/// difference down to −32 (after scaling) is representable.
const SCALED_DIFF_INTEGER_BITS: u32 = 5;
/// Integer bits of the sum of exponentials (TFLite's `kAccumulationIntegerBits`): Q12.19.
const ACCUMULATION_INTEGER_BITS: i32 = 12;

/// The fixed-point parameters of one int8 softmax (TFLite's `SoftmaxParams` for the reference
/// kernel), computed from the input scale and β as TFLite's `SoftmaxPrepare` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxParams {
    /// Q0.31 multiplier of `β · s_in · 2^26` (TFLite's `input_multiplier`).
    pub input_multiplier: i32,
    /// Its left shift, in [0, 31] (TFLite's `input_left_shift`).
    pub input_left_shift: i32,
    /// The smallest difference from the row's maximum that is not taken as `e^−∞ = 0`
    /// (TFLite's `diff_min`, minus `CalculateInputRadius`).
    pub diff_min: i32,
    /// Length of a row: the size of the last axis.
    pub depth: usize,
}

impl SoftmaxParams {
    /// The parameters for input scale `input_scale`, `beta` and rows of `depth` codes.
    ///
    /// As TFLite's `PreprocessSoftmaxScaling`: the real multiplier `β · s_in · 2^26` (in f64)
    /// is capped at `2^31 − 1` and split by `QuantizeMultiplierGreaterThanOne`; then
    /// `CalculateInputRadius`: `diff_min = −floor(31 · 2^26 / 2^left_shift)`, the largest
    /// difference whose shifted value still fits an int32.
    ///
    /// # Errors
    /// [`QuantError::InvalidScale`] for a scale that is not finite and positive,
    /// [`QuantError::InvalidParameter`] for a `beta` that is not or a zero depth, and
    /// [`QuantError::InvalidMultiplier`] when `β · s_in · 2^26 <= 1` (TFLite's
    /// `QuantizeMultiplierGreaterThanOne` rejects it too: an input step under 2^−26).
    pub fn from_scale(input_scale: f32, beta: f32, depth: usize) -> Result<Self> {
        if !(input_scale.is_finite() && input_scale > 0.0) {
            return Err(QuantError::InvalidScale {
                channel: 0,
                scale: input_scale,
            });
        }
        if !(beta.is_finite() && beta > 0.0) {
            return Err(QuantError::InvalidParameter {
                name: "beta",
                value: beta.to_string(),
                reason: "the softmax beta must be finite and > 0",
            });
        }
        if depth == 0 {
            return Err(QuantError::InvalidParameter {
                name: "softmax depth",
                value: "0".into(),
                reason: "the last axis must not be empty",
            });
        }
        let real =
            (beta as f64 * input_scale as f64 * (1u64 << (31 - SCALED_DIFF_INTEGER_BITS)) as f64)
                .min((1u64 << 31) as f64 - 1.0);
        if real <= 1.0 {
            return Err(QuantError::InvalidMultiplier { value: real });
        }
        // `quantize_multiplier` stops at a shift of 30; a multiplier of 2^30 or more (an input
        // scale of 16 or more) has TFLite's shift of 31, which is that of half of it plus one.
        let (input_multiplier, input_left_shift) = if real >= (1u64 << 30) as f64 {
            let (m, s) = quantize_multiplier(real / 2.0)?;
            (m, s + 1)
        } else {
            quantize_multiplier(real)?
        };
        let max_input_rescaled = ((1i64 << SCALED_DIFF_INTEGER_BITS) - 1) as f64
            * (1i64 << (31 - SCALED_DIFF_INTEGER_BITS)) as f64
            / (1i64 << input_left_shift) as f64;
        Ok(SoftmaxParams {
            input_multiplier,
            input_left_shift,
            diff_min: -(max_input_rescaled.floor() as i32),
            depth,
        })
    }

    /// `e^(β · s_in · diff)` in Q0.31 for a difference `diff` in `[diff_min, 0]`.
    fn exp(&self, diff: i32) -> i32 {
        // MultiplyByQuantizedMultiplierGreaterThanOne; `diff_min` keeps the shift in range.
        let rescaled = saturating_rounding_doubling_high_mul(
            diff.wrapping_mul(1i32.wrapping_shl(self.input_left_shift as u32)),
            self.input_multiplier,
        );
        exp_on_negative_values(rescaled, SCALED_DIFF_INTEGER_BITS)
    }

    /// The row statistics: its maximum, and `1 / Σ e^d` as a Q0.31 fraction with the right
    /// shift that brings a product with it to units of 1/256.
    fn row_scale(&self, row: &[i8]) -> (i32, i32, i32) {
        let max = row.iter().copied().max().map_or(QMIN_I8, i32::from);
        let mut sum = 0i32; // Q12.19
        for &q in row {
            let diff = q as i32 - max;
            if diff >= self.diff_min {
                let e = self.exp(diff);
                // Rescale<12> of a Q0.31 value, wrapping as TFLite's int32 sum does when a
                // row is too long for Q12.19 (over 4096 codes at the maximum).
                sum = sum.wrapping_add(saturating_rounding_multiply_by_pot(
                    e,
                    -ACCUMULATION_INTEGER_BITS,
                ));
            }
        }
        let (reciprocal, num_bits_over_unit) = get_reciprocal(sum, ACCUMULATION_INTEGER_BITS);
        (max, reciprocal, num_bits_over_unit + 31 - 8)
    }

    /// One output code from the input code `q` and its row's statistics.
    fn output(&self, q: i8, max: i32, reciprocal: i32, exponent: i32) -> i8 {
        let diff = q as i32 - max;
        if diff < self.diff_min {
            return QMIN_I8 as i8;
        }
        let product = saturating_rounding_doubling_high_mul(reciprocal, self.exp(diff));
        // Beyond 31 bits (rows of 512 or more codes near the maximum, where TFLite's check
        // `exponent <= 31` fails) the quotient of an int32 rounds to 0.
        let unsat = if exponent <= 31 {
            rounding_divide_by_pot(product, exponent)
        } else {
            0
        };
        (unsat + QMIN_I8).clamp(QMIN_I8, QMAX_I8) as i8
    }
}

/// Int8 softmax over rows of `p.depth` codes, from `input` to `output` (TFLite's reference
/// int8 `SOFTMAX`, see the [module docs](self)).
///
/// # Panics
/// If the slices differ in length or are not a whole number of rows.
pub fn softmax_i8(input: &[i8], p: &SoftmaxParams, output: &mut [i8]) {
    check_rows("softmax_i8", input.len(), output.len(), p.depth);
    for (row, out) in input
        .chunks_exact(p.depth)
        .zip(output.chunks_exact_mut(p.depth))
    {
        let (max, reciprocal, exponent) = p.row_scale(row);
        for (o, &q) in out.iter_mut().zip(row) {
            *o = p.output(q, max, reciprocal, exponent);
        }
    }
}

/// [`softmax_i8`] in place: each output needs only its own input code once the row's
/// maximum and sum are known.
///
/// # Panics
/// If `buf` is not a whole number of rows.
pub fn softmax_i8_in_place(buf: &mut [i8], p: &SoftmaxParams) {
    check_rows("softmax_i8_in_place", buf.len(), buf.len(), p.depth);
    for row in buf.chunks_exact_mut(p.depth) {
        let (max, reciprocal, exponent) = p.row_scale(row);
        for q in row.iter_mut() {
            *q = p.output(*q, max, reciprocal, exponent);
        }
    }
}

fn check_rows(op: &str, input: usize, output: usize, depth: usize) {
    assert!(
        input == output && depth > 0 && input.is_multiple_of(depth),
        "{op}: input of {input} and output of {output} codes are not rows of {depth}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// TFLite's reference int8 softmax written out from its formulas in exact integer
    /// arithmetic (i64/i128, no shared helpers): gemmlowp's rounding rules spelled as
    /// divisions, the fixed-point exp and reciprocal step by step.
    mod reference {
        /// round(a · b / 2^31), ties toward +∞; `i32::MIN²` saturates.
        pub fn srdhm(a: i32, b: i32) -> i32 {
            if a == i32::MIN && b == i32::MIN {
                return i32::MAX;
            }
            (a as i128 * b as i128 + (1 << 30)).div_euclid(1 << 31) as i32
        }

        /// x / 2^e rounded to nearest, ties away from zero.
        pub fn rdpot(x: i32, e: u32) -> i32 {
            let d = 1i64 << e;
            let x = x as i64;
            (if x >= 0 {
                (x + d / 2) / d
            } else {
                -((-x + d / 2) / d)
            }) as i32
        }

        /// x · 2^e saturated to int32.
        pub fn shl_sat(x: i32, e: u32) -> i32 {
            ((x as i64) << e).clamp(i32::MIN as i64, i32::MAX as i64) as i32
        }

        /// e^a for a in Q5.26, a <= 0, result Q0.31 (gemmlowp's algorithm).
        pub fn exp_q5_26(a: i32) -> i32 {
            if a == 0 {
                return i32::MAX;
            }
            let quarter = 1i32 << 24;
            let r = (a & (quarter - 1)) - quarter; // in [−1/4, 0)
            let x = shl_sat(r, 5) + (1 << 28); // Q0.31, + 1/8
            let x2 = srdhm(x, x);
            let x3 = srdhm(x2, x);
            let x4 = srdhm(x2, x2);
            let poly = rdpot(srdhm(rdpot(x4, 2) + x3, 715_827_883) + x2, 1);
            let c = 1_895_147_668; // e^(−1/8)
            let mut result = c + srdhm(c, x + poly);
            let k = r - a; // a multiple of 1/4: −a rounded up to one
            let consts = [
                1_672_461_947,
                1_302_514_674,
                790_015_084,
                290_630_308,
                39_332_535,
                720_401,
                242,
            ];
            for (i, c) in consts.into_iter().enumerate() {
                if k & (1 << (24 + i)) != 0 {
                    result = srdhm(result, c);
                }
            }
            result
        }

        /// 1 / (1 + a) for a in Q0.31 in [0, 1), Newton–Raphson in Q2.29.
        pub fn one_over_one_plus(a: i32) -> i32 {
            let s = a as i64 + i32::MAX as i64;
            let half = ((s + 1) / 2) as i32;
            let mut x = 1_515_870_810 + srdhm(half, -1_010_580_540);
            for _ in 0..3 {
                let one_minus = (1 << 29) - srdhm(half, x);
                x += shl_sat(srdhm(x, one_minus), 2);
            }
            shl_sat(x, 1)
        }

        pub fn softmax(row: &[i8], scale: f32) -> Vec<i8> {
            let real = (scale as f64 * 2f64.powi(26)).min(2f64.powi(31) - 1.0);
            // frexp by hand: real = q · 2^shift, q in [0.5, 1).
            let mut shift = 0;
            let mut q = real;
            while q >= 1.0 {
                q /= 2.0;
                shift += 1;
            }
            while q < 0.5 {
                q *= 2.0;
                shift -= 1;
            }
            let mut m = (q * 2f64.powi(31)).round() as i64;
            if m == 1 << 31 {
                m /= 2;
                shift += 1;
            }
            let m = m as i32;
            let diff_min = -((31.0 * 2f64.powi(26) / 2f64.powi(shift)).floor() as i32);
            let max = *row.iter().max().unwrap() as i32;
            let e = |q: i8| {
                let d = q as i32 - max;
                (d >= diff_min).then(|| exp_q5_26(srdhm(d.wrapping_mul(1 << shift), m)))
            };
            let sum: i32 = row.iter().filter_map(|&q| e(q)).map(|v| rdpot(v, 12)).sum();
            let lz = (sum as u32).leading_zeros();
            let r = one_over_one_plus(((sum as u32) << lz).wrapping_sub(1 << 31) as i32);
            let exponent = 12 - lz as i32 + 23;
            row.iter()
                .map(|&q| match e(q) {
                    Some(v) => (rdpot(srdhm(r, v), exponent as u32) - 128).clamp(-128, 127) as i8,
                    None => -128,
                })
                .collect()
        }
    }

    #[test]
    fn parameters_by_hand() {
        // s_in = 0.1f32 = 13421773 · 2^−27: times 2^26 is 13421773 · 2^−1 = q · 2^23 with
        // q · 2^31 = 13421773 · 2^7 = 1717986944 exactly; diff_min = −floor(31 · 2^26 / 2^23)
        // = −248.
        let p = SoftmaxParams::from_scale(0.1, 1.0, 10).unwrap();
        assert_eq!(
            (p.input_multiplier, p.input_left_shift, p.diff_min),
            (1_717_986_944, 23, -248)
        );
        // s_in = 1/16: 2^22 exactly → (2^30, 23), diff_min −248.
        let p = SoftmaxParams::from_scale(1.0 / 16.0, 1.0, 3).unwrap();
        assert_eq!(
            (p.input_multiplier, p.input_left_shift, p.diff_min),
            (1 << 30, 23, -248)
        );
        // s_in = 32: capped at 2^31 − 1 → (2^31 − 1, 31), diff_min −floor(0.97) = 0.
        let p = SoftmaxParams::from_scale(32.0, 1.0, 3).unwrap();
        assert_eq!(
            (p.input_multiplier, p.input_left_shift, p.diff_min),
            (i32::MAX, 31, 0)
        );
        assert!(matches!(
            SoftmaxParams::from_scale(1e-9, 1.0, 3),
            Err(QuantError::InvalidMultiplier { .. })
        ));
        assert!(SoftmaxParams::from_scale(0.0, 1.0, 3).is_err());
        assert!(SoftmaxParams::from_scale(0.1, f32::NAN, 3).is_err());
        assert!(SoftmaxParams::from_scale(0.1, 1.0, 0).is_err());
    }

    #[test]
    fn worked_values() {
        // Equal codes: each output is 1/n, in 1/256 steps minus 128. Two → 128 − 128 = 0;
        // four → 64 − 128 = −64; one code → 256 − 128, clamped to 127.
        let p = SoftmaxParams::from_scale(0.1, 1.0, 2).unwrap();
        let mut out = [0i8; 2];
        softmax_i8(&[5, 5], &p, &mut out);
        assert_eq!(out, [0, 0]);
        let p4 = SoftmaxParams::from_scale(0.1, 1.0, 4).unwrap();
        let mut out = [0i8; 4];
        softmax_i8(&[-7, -7, -7, -7], &p4, &mut out);
        assert_eq!(out, [-64; 4]);
        let p1 = SoftmaxParams::from_scale(0.1, 1.0, 1).unwrap();
        let mut out = [0i8; 1];
        softmax_i8(&[-100], &p1, &mut out);
        assert_eq!(out, [127]);
        // Codes (0, −10) at scale 0.1: e^−1 / (1 + e^−1) = 0.2689 → 68.8 → −59; the other
        // 0.7311 → 187.2 → 59. Below diff_min (−248) a code is 0 → −128.
        let mut out = [0i8; 2];
        softmax_i8(&[0, -10], &p, &mut out);
        assert_eq!(out, [59, -59]);
        softmax_i8(&[127, -128], &p, &mut out);
        assert_eq!(out, [127, -128]);
    }

    #[test]
    fn matches_the_reference_formulas() {
        let mut rng = StdRng::seed_from_u64(5);
        for &depth in &[1usize, 2, 3, 7, 10, 63, 65, 256] {
            for _ in 0..40 {
                let scale = 2f32.powf(rng.random_range(-12.0..5.0));
                let p = SoftmaxParams::from_scale(scale, 1.0, depth).unwrap();
                let rows = rng.random_range(1..4);
                let spread = rng.random_range(1..=255);
                let top: i32 = rng.random_range(-128..=127);
                let input: Vec<i8> = (0..rows * depth)
                    .map(|_| (top - rng.random_range(0..spread)).clamp(-128, 127) as i8)
                    .collect();
                let mut out = vec![0i8; input.len()];
                softmax_i8(&input, &p, &mut out);
                let want: Vec<i8> = input
                    .chunks(depth)
                    .flat_map(|r| reference::softmax(r, scale))
                    .collect();
                assert_eq!(out, want, "depth {depth} scale {scale} input {input:?}");
                let mut buf = input.clone();
                softmax_i8_in_place(&mut buf, &p);
                assert_eq!(buf, want, "in place, depth {depth} scale {scale}");
            }
        }
    }

    #[test]
    fn close_to_the_real_softmax() {
        // TFLite's fixed-point exp is accurate to a few ulps of Q0.31, so an output is within
        // one code of round(256 · softmax) − 128.
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..500 {
            let scale = 2f32.powf(rng.random_range(-8.0..0.0));
            let p = SoftmaxParams::from_scale(scale, 1.0, 10).unwrap();
            let input: Vec<i8> = (0..10).map(|_| rng.random()).collect();
            let mut out = [0i8; 10];
            softmax_i8(&input, &p, &mut out);
            let max = *input.iter().max().unwrap() as f64;
            let e: Vec<f64> = input
                .iter()
                .map(|&q| ((q as f64 - max) * scale as f64).exp())
                .collect();
            let sum: f64 = e.iter().sum();
            for (o, e) in out.iter().zip(&e) {
                let want = (256.0 * e / sum - 128.0).clamp(-128.0, 127.0);
                assert!((*o as f64 - want).abs() <= 1.0, "{o} vs {want}");
            }
        }
    }

    #[test]
    fn long_rows_do_not_panic() {
        // 600 equal codes: TFLite's check on the final shift fails; pare rounds to 0 → −128.
        let p = SoftmaxParams::from_scale(0.1, 1.0, 600).unwrap();
        let mut buf = vec![3i8; 600];
        softmax_i8_in_place(&mut buf, &p);
        assert!(buf.iter().all(|&v| v == -128));
        // 5000 codes overflow the Q12.19 sum, which wraps as TFLite's does.
        let p = SoftmaxParams::from_scale(0.1, 1.0, 5000).unwrap();
        let mut buf = vec![3i8; 5000];
        softmax_i8_in_place(&mut buf, &p);
    }

    #[test]
    #[should_panic(expected = "not rows of 3")]
    fn partial_rows_panic() {
        let p = SoftmaxParams::from_scale(0.1, 1.0, 3).unwrap();
        softmax_i8_in_place(&mut [0i8; 4], &p);
    }
}
