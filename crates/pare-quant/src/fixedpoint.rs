//! Fixed-point requantization primitives, bit-exact with gemmlowp and TFLite.
//!
//! An int8 layer accumulates in int32 and must scale the accumulator by a real number
//! `M = s_in · s_w / s_out` (usually in (0, 1)) without floating point. TFLite writes
//! `M = q · 2^shift` with `q` a Q0.31 fixed-point number in [0.5, 1) stored as an int32
//! multiplier, and applies it in two roundings:
//!
//! 1. [`saturating_rounding_doubling_high_mul`]`(x · 2^left, multiplier)`: the high 32 bits of
//!    the doubled 64-bit product, rounded to nearest;
//! 2. [`rounding_divide_by_pot`]`(·, right)`: a rounding arithmetic right shift.
//!
//! This is TFLite's default (double-rounding) `MultiplyByQuantizedMultiplier`, which its
//! reference and optimized kernels share; the functions here are transliterations of
//! `gemmlowp/fixedpoint/fixedpoint.h` and `tensorflow/lite/kernels/internal/common.h` /
//! `quantization_util.cc`, including their exact tie-breaking.

use crate::error::{QuantError, Result};

/// Largest shift [`quantize_multiplier`] returns; `1 << 31` would overflow an int32 left shift.
pub const MAX_SHIFT: i32 = 30;
/// Smallest shift [`quantize_multiplier`] returns; smaller multipliers are flushed to zero.
pub const MIN_SHIFT: i32 = -31;

/// Splits a finite, non-zero `x` into `(m, e)` with `x = m · 2^e` and `0.5 <= |m| < 1`, as C's
/// `frexp`.
fn frexp(x: f64) -> (f64, i32) {
    debug_assert!(x.is_finite() && x != 0.0);
    let bits = x.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    if exp_bits == 0 {
        // Subnormal: scale into the normal range first so the exponent field is meaningful.
        let (m, e) = frexp(x * 2f64.powi(54));
        return (m, e - 54);
    }
    // Replace the exponent field by that of 0.5 (biased 1022) to get the mantissa in [0.5, 1).
    let m = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (m, exp_bits - 1022)
}

/// TFLite's `QuantizeMultiplier`: writes a real multiplier as `(multiplier, shift)` with
/// `real ≈ multiplier · 2^(shift − 31)` and `multiplier` in `[2^30, 2^31)` (or 0).
///
/// As in TFLite: `frexp` gives `real = q · 2^shift` with `q` in [0.5, 1); the multiplier is
/// `round(q · 2^31)` (half away from zero); if that rounds up to `2^31` it is halved and the
/// shift incremented; a shift below −31 would shift every bit out, so such tiny multipliers are
/// flushed to `(0, 0)`. `0.0` gives `(0, 0)`.
///
/// # Errors
/// [`QuantError::InvalidMultiplier`] if `real` is negative or not finite, or if the shift would
/// exceed [`MAX_SHIFT`] (`real >= 2^30`, where TFLite's `x * (1 << shift)` overflows).
pub fn quantize_multiplier(real: f64) -> Result<(i32, i32)> {
    if !real.is_finite() || real < 0.0 {
        return Err(QuantError::InvalidMultiplier { value: real });
    }
    if real == 0.0 {
        return Ok((0, 0));
    }
    let (q, mut shift) = frexp(real);
    let mut q_fixed = (q * (1i64 << 31) as f64).round() as i64;
    debug_assert!(
        q_fixed <= 1i64 << 31,
        "quantize_multiplier: q_fixed {q_fixed} > 2^31"
    );
    if q_fixed == 1i64 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < MIN_SHIFT {
        return Ok((0, 0));
    }
    if shift > MAX_SHIFT {
        return Err(QuantError::InvalidMultiplier { value: real });
    }
    Ok((q_fixed as i32, shift))
}

/// gemmlowp's `SaturatingRoundingDoublingHighMul`: `round(a · b / 2^31)` computed in 64 bits.
///
/// The rounding nudge is `2^30` for a non-negative product and `1 − 2^30` for a negative one,
/// followed by C's truncating division; together that rounds to nearest with ties toward +∞
/// (`−1.5 → −1`, `1.5 → 2`). The only product that overflows, `i32::MIN · i32::MIN`, saturates
/// to `i32::MAX`.
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // Rust's `/` truncates toward zero like C's; the quotient always fits in i32 here.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away from zero
/// (`−3 / 2 → −2`, `3 / 2 → 2`, `5 / 4 → 1`, `−6 / 4 → −2`).
///
/// Uses gemmlowp's branch-free form: remainder `x & mask`, threshold `mask >> 1` plus one for
/// negative `x`, then an arithmetic shift plus one if the remainder exceeds the threshold.
///
/// # Panics
/// If `exponent` is outside `[0, 31]` (gemmlowp asserts the same).
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    assert!(
        (0..=31).contains(&exponent),
        "rounding_divide_by_pot: exponent {exponent} outside [0, 31]"
    );
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// TFLite's `MultiplyByQuantizedMultiplier` (the default, double-rounding variant): scales `x`
/// by `multiplier · 2^(shift − 31)`.
///
/// `left = max(shift, 0)`, `right = max(−shift, 0)`; the result is
/// `rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x · 2^left, multiplier), right)`.
/// `x · 2^left` wraps on overflow (undefined behaviour in TFLite's C++; the SIMD kernels of this
/// crate wrap too, so every path agrees).
///
/// # Panics
/// If `shift < −31` or `shift > 31` (never the case for a pair from [`quantize_multiplier`]).
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    assert!(
        (-31..=31).contains(&shift),
        "multiply_by_quantized_multiplier: shift {shift} outside [-31, 31]"
    );
    let left = shift.max(0);
    let right = (-shift).max(0);
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x.wrapping_shl(left as u32), multiplier),
        right,
    )
}

/// TFLite's single-rounding `MultiplyByQuantizedMultiplier` (the `TFLITE_SINGLE_ROUNDING`
/// form in `tensorflow/lite/kernels/internal/common.cc`): `(x · multiplier + 2^(30 − shift)) >>
/// (31 − shift)` in 64 bits, one rounding to nearest with ties toward +∞, saturated to int32.
///
/// TFLite 2.21's reference `FULLY_CONNECTED` rescales its accumulators this way while its
/// `CONV_2D` keeps gemmlowp's two roundings ([`multiply_by_quantized_multiplier`]); the two
/// differ only where the exact product lies within one unit of the first rounding of a half
/// step.
///
/// # Panics
/// If `shift < −31` or `shift > 30` (never the case for a pair from [`quantize_multiplier`]).
pub fn multiply_by_quantized_multiplier_single_rounding(
    x: i32,
    multiplier: i32,
    shift: i32,
) -> i32 {
    assert!(
        (-31..=30).contains(&shift),
        "multiply_by_quantized_multiplier_single_rounding: shift {shift} outside [-31, 30]"
    );
    let total_shift = 31 - shift;
    let round = 1i64 << (total_shift - 1);
    let result = (x as i64 * multiplier as i64 + round) >> total_shift;
    result.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// gemmlowp's `SaturatingRoundingMultiplyByPOT<exponent>` on int32: `x · 2^exponent`, a left
/// shift that saturates to `i32::MIN` / `i32::MAX` for a positive exponent, a
/// [`rounding_divide_by_pot`] for a negative one.
///
/// # Panics
/// If `exponent` is outside `[−31, 31]`.
pub fn saturating_rounding_multiply_by_pot(x: i32, exponent: i32) -> i32 {
    assert!(
        (-31..=31).contains(&exponent),
        "saturating_rounding_multiply_by_pot: exponent {exponent} outside [-31, 31]"
    );
    match exponent {
        0 => x,
        e if e < 0 => rounding_divide_by_pot(x, -e),
        e => {
            // gemmlowp's bounds: anything whose shift would leave the int32 range saturates.
            let threshold = ((1i64 << (31 - e)) - 1) as i32;
            if x > threshold {
                i32::MAX
            } else if x < -threshold {
                i32::MIN
            } else {
                x << e
            }
        }
    }
}

/// gemmlowp's `RoundingHalfSum` on int32: `(a + b) / 2` rounded to nearest, ties away from zero
/// (ARM's `VRHADD`), computed in 64 bits.
pub fn rounding_half_sum(a: i32, b: i32) -> i32 {
    let sum = a as i64 + b as i64;
    let sign = if sum >= 0 { 1 } else { -1 };
    // Truncating division, as C's.
    ((sum + sign) / 2) as i32
}

/// gemmlowp's `exp_on_interval_between_negative_one_quarter_and_0_excl`: `e^a` for `a` in
/// [−1/4, 0), both Q0.31, by the Taylor expansion around −1/8 to the fourth power (the
/// constants are gemmlowp's: `e^(−1/8)` and 1/3 in Q0.31).
fn exp_on_interval_between_negative_one_quarter_and_0_excl(a: i32) -> i32 {
    const EXP_MINUS_ONE_EIGHTH: i32 = 1_895_147_668;
    const ONE_THIRD: i32 = 715_827_883;
    let mul = saturating_rounding_doubling_high_mul;
    // x = a + 1/8; 1/8 in Q0.31 is 2^28.
    let x = a.wrapping_add(1 << 28);
    let x2 = mul(x, x);
    let x3 = mul(x2, x);
    let x4 = mul(x2, x2);
    let x4_over_4 = saturating_rounding_multiply_by_pot(x4, -2);
    let x4_over_24_plus_x3_over_6_plus_x2_over_2 = saturating_rounding_multiply_by_pot(
        mul(x4_over_4.wrapping_add(x3), ONE_THIRD).wrapping_add(x2),
        -1,
    );
    EXP_MINUS_ONE_EIGHTH.wrapping_add(mul(
        EXP_MINUS_ONE_EIGHTH,
        x.wrapping_add(x4_over_24_plus_x3_over_6_plus_x2_over_2),
    ))
}

/// gemmlowp's `exp_on_negative_values`: `e^a` in Q0.31 for `a <= 0` held with `integer_bits`
/// integer bits (TFLite's int8 softmax uses Q5.26, `integer_bits = 5`).
///
/// As gemmlowp: `a` is split into its residue in [−1/4, 0), whose exponential comes from
/// the Taylor expansion, and a multiple of 1/4 whose bits each multiply the result by the
/// Q0.31 constant `e^(−2^k)` (a barrel shifter over k = −2 … 4); inputs below −32 give 0
/// (only reachable with more than 5 integer bits) and `a = 0` gives `i32::MAX` (1.0).
///
/// # Panics
/// If `integer_bits > 30` (the constant 1/4 must be representable).
pub fn exp_on_negative_values(a: i32, integer_bits: u32) -> i32 {
    assert!(
        integer_bits <= 30,
        "exp_on_negative_values: {integer_bits} integer bits, at most 30"
    );
    let fractional_bits = 31 - integer_bits as i32;
    let one_quarter = 1i32 << (fractional_bits - 2);
    let mask = one_quarter - 1;
    let a_mod_quarter_minus_one_quarter = (a & mask) - one_quarter;
    let mut result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(a_mod_quarter_minus_one_quarter, integer_bits as i32),
    );
    let remainder = a_mod_quarter_minus_one_quarter.wrapping_sub(a);
    // e^(−2^k) in Q0.31 for k = −2 … 4, gemmlowp's constants.
    const BARREL: [(i32, i32); 7] = [
        (-2, 1_672_461_947),
        (-1, 1_302_514_674),
        (0, 790_015_084),
        (1, 290_630_308),
        (2, 39_332_535),
        (3, 720_401),
        (4, 242),
    ];
    for (exponent, multiplier) in BARREL {
        if (integer_bits as i32) > exponent {
            let bit = fractional_bits + exponent;
            if remainder & (1i32 << bit) != 0 {
                result = saturating_rounding_doubling_high_mul(result, multiplier);
            }
        }
    }
    if integer_bits > 5 {
        // −32 with `integer_bits` integer bits.
        let clamp = -(1i32 << (36 - integer_bits));
        if a < clamp {
            result = 0;
        }
    }
    if a == 0 { i32::MAX } else { result }
}

/// gemmlowp's `one_over_one_plus_x_for_x_in_0_1`: `1 / (1 + a)` for `a` in [0, 1), argument
/// and result Q0.31, by three Newton–Raphson steps on the half denominator in Q2.29 from the
/// initial estimate `48/17 − 32/17 · d` (gemmlowp's constants).
pub fn one_over_one_plus_x_for_x_in_0_1(a: i32) -> i32 {
    const FORTY_EIGHT_OVER_SEVENTEEN: i32 = 1_515_870_810; // Q2.29
    const MINUS_THIRTY_TWO_OVER_SEVENTEEN: i32 = -1_010_580_540; // Q2.29
    const ONE_Q2_29: i32 = 1 << 29;
    let mul = saturating_rounding_doubling_high_mul;
    // Q0.31's "one" is its largest value.
    let half_denominator = rounding_half_sum(a, i32::MAX);
    let mut x = FORTY_EIGHT_OVER_SEVENTEEN
        .wrapping_add(mul(half_denominator, MINUS_THIRTY_TWO_OVER_SEVENTEEN));
    for _ in 0..3 {
        let half_denominator_times_x = mul(half_denominator, x);
        let one_minus_half_denominator_times_x = ONE_Q2_29.wrapping_sub(half_denominator_times_x);
        // Q2.29 · Q2.29 is Q4.27; back to Q2.29 by a saturating shift of 2.
        x = x.wrapping_add(saturating_rounding_multiply_by_pot(
            mul(x, one_minus_half_denominator_times_x),
            2,
        ));
    }
    // x / 2 (exactly, as Q1.30), then to Q0.31 by a saturating shift of 1.
    saturating_rounding_multiply_by_pot(x, 1)
}

/// TFLite's `GetReciprocal` (`tensorflow/lite/kernels/internal/common.h`): for a positive `x`
/// with `x_integer_digits` integer bits, returns `(r, num_bits_over_unit)` with `r` in Q0.31
/// and `1 / x ≈ r · 2^−num_bits_over_unit`.
///
/// `x` is normalised to `1 + f` with `f` in [0, 1) by shifting out its leading zeros, and
/// `r = 1 / (1 + f)` ([`one_over_one_plus_x_for_x_in_0_1`]). A non-positive `x` has no
/// reciprocal; it gives whatever the shifts give (TFLite never passes one).
pub fn get_reciprocal(x: i32, x_integer_digits: i32) -> (i32, i32) {
    let headroom_plus_one = (x as u32).leading_zeros();
    let num_bits_over_unit = x_integer_digits - headroom_plus_one as i32;
    let shifted = (x as u32).checked_shl(headroom_plus_one).unwrap_or(0);
    let shifted_minus_one = shifted.wrapping_sub(1 << 31) as i32;
    (
        one_over_one_plus_x_for_x_in_0_1(shifted_minus_one),
        num_bits_over_unit,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn single_rounding_is_the_exact_product_rounded_half_up() {
        // Reference: floor(x · m / 2^(31 − shift) + 1/2) in exact integers.
        let exact = |x: i32, m: i32, shift: i32| -> i32 {
            let den = 1i128 << (31 - shift);
            let num = 2 * x as i128 * m as i128 + den;
            num.div_euclid(2 * den)
                .clamp(i32::MIN as i128, i32::MAX as i128) as i32
        };
        let mut rng = StdRng::seed_from_u64(17);
        let mut differ = 0;
        for _ in 0..20_000 {
            let x = rng.random_range(-(1 << 24)..(1 << 24));
            let m = rng.random_range((1 << 30)..i32::MAX);
            let shift = rng.random_range(-20..=0);
            let single = multiply_by_quantized_multiplier_single_rounding(x, m, shift);
            assert_eq!(single, exact(x, m, shift), "x {x} m {m} shift {shift}");
            differ += (single != multiply_by_quantized_multiplier(x, m, shift)) as usize;
        }
        // The double rounding differs only near half steps: rarely, but it does.
        assert!(differ > 0 && differ < 2_000, "{differ} of 20000 differ");
        // A tie by hand: 3 · 2^30 / 2^32 = 0.75 → 1; 2 · 2^30 / 2^32 = 0.5 → 1 (up), −0.5 → 0.
        assert_eq!(
            multiply_by_quantized_multiplier_single_rounding(3, 1 << 30, -1),
            1
        );
        assert_eq!(
            multiply_by_quantized_multiplier_single_rounding(2, 1 << 30, -1),
            1
        );
        assert_eq!(
            multiply_by_quantized_multiplier_single_rounding(-2, 1 << 30, -1),
            0
        );
        // gemmlowp's second rounding takes −0.5 away from zero: −1.
        assert_eq!(multiply_by_quantized_multiplier(-2, 1 << 30, -1), -1);
    }

    #[test]
    fn frexp_matches_c() {
        assert_eq!(frexp(1.0), (0.5, 1));
        assert_eq!(frexp(0.75), (0.75, 0));
        assert_eq!(frexp(3.0), (0.75, 2));
        assert_eq!(frexp(-3.0), (-0.75, 2));
        assert_eq!(frexp(f64::from_bits(1)), (0.5, -1073)); // 2^-1074, the smallest subnormal
        let (m, e) = frexp(1e-310);
        assert!((0.5..1.0).contains(&m));
        assert_eq!(m * 2f64.powi(e + 64), 1e-310 * 2f64.powi(64));
    }

    #[test]
    fn quantize_multiplier_hand_worked() {
        assert_eq!(quantize_multiplier(0.0).unwrap(), (0, 0));
        assert_eq!(quantize_multiplier(0.5).unwrap(), (1 << 30, 0));
        assert_eq!(quantize_multiplier(1.0).unwrap(), (1 << 30, 1));
        assert_eq!(quantize_multiplier(0.25).unwrap(), (1 << 30, -1));
        // 0.75 · 2^31 = 1610612736 exactly.
        assert_eq!(quantize_multiplier(0.75).unwrap(), (1_610_612_736, 0));
        // 0.1 = 0.8 · 2^-3; round(0.8 · 2^31) = round(1717986918.4) = 1717986918.
        assert_eq!(quantize_multiplier(0.1).unwrap(), (1_717_986_918, -3));
        // q rounds up to 2^31: halve it and bump the shift.
        assert_eq!(
            quantize_multiplier(1.0 - 2f64.powi(-40)).unwrap(),
            (1 << 30, 1)
        );
        // Smallest shift kept, then flushed to zero.
        assert_eq!(quantize_multiplier(2f64.powi(-32)).unwrap(), (1 << 30, -31));
        assert_eq!(quantize_multiplier(2f64.powi(-33)).unwrap(), (0, 0));
        assert_eq!(quantize_multiplier(1e-300).unwrap(), (0, 0));
        // Largest shift kept, then an error.
        assert_eq!(quantize_multiplier(2f64.powi(29)).unwrap(), (1 << 30, 30));
        assert!(matches!(
            quantize_multiplier(2f64.powi(30)),
            Err(QuantError::InvalidMultiplier { .. })
        ));
        for bad in [-0.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                quantize_multiplier(bad),
                Err(QuantError::InvalidMultiplier { .. })
            ));
        }
    }

    #[test]
    fn quantize_multiplier_reconstructs_the_real_value() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10_000 {
            let real = 2f64.powf(rng.random_range(-30.0..29.0));
            let (m, s) = quantize_multiplier(real).unwrap();
            assert!((1 << 30..=i32::MAX).contains(&m), "{real}: {m}");
            let back = m as f64 * 2f64.powi(s - 31);
            // Relative error of a 31-bit rounding: at most 2^-31 of q >= 0.5, i.e. 2^-31 rel.
            approx::assert_relative_eq!(back, real, max_relative = 2f64.powi(-30));
        }
    }

    #[test]
    fn srdhm_hand_worked() {
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MAX),
            -i32::MAX
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MAX, i32::MAX),
            i32::MAX - 1
        );
        // b = 2^30 halves a: ties round toward +inf (gemmlowp's nudge 1 - 2^30 for negatives).
        assert_eq!(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);
        assert_eq!(saturating_rounding_doubling_high_mul(1, 1 << 30), 1);
        assert_eq!(saturating_rounding_doubling_high_mul(-1, 1 << 30), 0);
        assert_eq!(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);
        assert_eq!(saturating_rounding_doubling_high_mul(-5, 1 << 30), -2);
        // Non-ties round to nearest: -7 · 0.75 = -5.25 -> -5; 7 · 0.75 = 5.25 -> 5.
        assert_eq!(saturating_rounding_doubling_high_mul(-7, 3 << 29), -5);
        assert_eq!(saturating_rounding_doubling_high_mul(7, 3 << 29), 5);
        assert_eq!(saturating_rounding_doubling_high_mul(0, i32::MIN), 0);
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, 1 << 30),
            -(1 << 30)
        );
    }

    #[test]
    fn rdbpot_hand_worked() {
        assert_eq!(rounding_divide_by_pot(-3, 1), -2);
        assert_eq!(rounding_divide_by_pot(3, 1), 2);
        assert_eq!(rounding_divide_by_pot(5, 2), 1);
        assert_eq!(rounding_divide_by_pot(-6, 2), -2);
        assert_eq!(rounding_divide_by_pot(-5, 2), -1);
        assert_eq!(rounding_divide_by_pot(6, 2), 2);
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
        assert_eq!(rounding_divide_by_pot(-1, 1), -1);
        assert_eq!(rounding_divide_by_pot(1, 1), 1);
        assert_eq!(rounding_divide_by_pot(12345, 0), 12345);
        assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
        assert_eq!(rounding_divide_by_pot(i32::MAX, 31), 1);
        assert_eq!(rounding_divide_by_pot(i32::MIN, 0), i32::MIN);
        assert_eq!(rounding_divide_by_pot(-(1 << 30), 31), -1);
        assert_eq!(rounding_divide_by_pot((1 << 30) - 1, 31), 0);
    }

    #[test]
    #[should_panic(expected = "exponent 32")]
    fn rdbpot_rejects_large_exponent() {
        rounding_divide_by_pot(1, 32);
    }

    #[test]
    fn mbqm_hand_worked() {
        // 0.5 · 2^0: 7 * 0.5 = 3.5 -> 4; -7 * 0.5 = -3.5 -> -3 (the SRDHM tie goes up).
        assert_eq!(multiply_by_quantized_multiplier(7, 1 << 30, 0), 4);
        assert_eq!(multiply_by_quantized_multiplier(-7, 1 << 30, 0), -3);
        // 0.5 · 2^-1 = 0.25: SRDHM(-6, 0.5) = -3, RDBPOT(-3, 1) = -2 (away from zero).
        assert_eq!(multiply_by_quantized_multiplier(-6, 1 << 30, -1), -2);
        // 0.5 · 2^2 = 2: left shift first.
        assert_eq!(multiply_by_quantized_multiplier(-9, 1 << 30, 2), -18);
        // -2^31 · 0.5 · 2^-31 = -0.5: away from zero in the final shift.
        assert_eq!(multiply_by_quantized_multiplier(i32::MIN, 1 << 30, -31), -1);
        assert_eq!(multiply_by_quantized_multiplier(1000, 0, 0), 0);
    }

    /// Exact reference of the two roundings in i128/i64 arithmetic.
    fn reference_mbqm(x: i32, m: i32, shift: i32) -> i32 {
        let left = shift.max(0);
        let right = (-shift).max(0);
        let xs = x.wrapping_shl(left as u32) as i128;
        let ab = xs * m as i128;
        let high = if ab == 1i128 << 62 {
            i32::MAX as i128
        } else {
            // Nearest, ties toward +inf.
            (ab + (1 << 30)).div_euclid(1 << 31)
        };
        let d = 1i128 << right;
        let r = if high >= 0 {
            (high + d / 2) / d
        } else {
            -((-high + d / 2) / d)
        };
        r as i32
    }

    #[test]
    fn mbqm_matches_reference_on_random_inputs() {
        let mut rng = StdRng::seed_from_u64(7);
        for i in 0..200_000 {
            let x: i32 = match i % 4 {
                0 => rng.random(),
                1 => rng.random_range(-100_000..100_000),
                2 => [i32::MIN, i32::MAX, 0, -1, 1][rng.random_range(0..5)],
                _ => rng.random_range(-1000..1000),
            };
            let real = 2f64.powf(rng.random_range(-32.0..8.0));
            let (m, s) = quantize_multiplier(real).unwrap();
            let got = multiply_by_quantized_multiplier(x, m, s);
            assert_eq!(got, reference_mbqm(x, m, s), "x={x} m={m} s={s}");
            // Against the real product: double rounding is off by at most one unit, as long as
            // the left shift did not overflow.
            if s <= 0 || (x as i64) << s == ((x as i64) << s) as i32 as i64 {
                let exact = x as f64 * m as f64 * 2f64.powi(s - 31);
                assert!(
                    (got as f64 - exact).abs() <= 1.0,
                    "x={x} m={m} s={s}: {got} vs {exact}"
                );
            }
        }
        // SRDHM alone against the reference over the full range, including i32::MIN.
        for _ in 0..200_000 {
            let a: i32 = rng.random();
            let b: i32 = if rng.random_bool(0.01) {
                i32::MIN
            } else {
                rng.random()
            };
            let ab = a as i128 * b as i128;
            let want = if a == i32::MIN && b == i32::MIN {
                i32::MAX
            } else {
                (ab + (1 << 30)).div_euclid(1 << 31) as i32
            };
            assert_eq!(
                saturating_rounding_doubling_high_mul(a, b),
                want,
                "a={a} b={b}"
            );
        }
        for _ in 0..100_000 {
            let x: i32 = rng.random();
            let e = rng.random_range(0..=31);
            let d = 1i64 << e;
            let xi = x as i64;
            let want = if xi >= 0 {
                (xi + d / 2) / d
            } else {
                -((-xi + d / 2) / d)
            };
            assert_eq!(rounding_divide_by_pot(x, e) as i64, want, "x={x} e={e}");
        }
    }
}
