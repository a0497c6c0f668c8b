//! int8 element-wise addition, as TFLite's int8 `ADD` computes it
//! (`tensorflow/lite/kernels/add.cc` prepares the parameters,
//! `kernels/internal/reference/integer_ops/add.h` is the kernel).
//!
//! Each input, offset by its zero point, is shifted left by 20 bits and rescaled by
//! `s_i / (2 · max(s1, s2))` (a multiplier below one half, so the shifted value keeps 19 bits
//! of headroom); the two are summed and the sum rescaled by `2 · max(s1, s2) / (2^20 · s_out)`,
//! offset by the output zero point and clamped to the fused activation's range. Every rescale
//! is gemmlowp's `MultiplyByQuantizedMultiplierSmallerThanOneExp`: a rounding doubling high
//! multiply, then a rounding right shift.

use crate::error::{QuantError, Result};
use crate::fixedpoint::{
    quantize_multiplier, rounding_divide_by_pot, saturating_rounding_doubling_high_mul,
};

/// TFLite's left shift for int8 inputs (15 for int16).
pub const ADD_LEFT_SHIFT: i32 = 20;

/// The fixed-point parameters of one int8 add (TFLite's `ArithmeticParams` for `ADD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddParams {
    /// Minus each input's zero point.
    pub input_offset: [i32; 2],
    /// Each input's multiplier and (non-positive) shift.
    pub input_multiplier: [(i32, i32); 2],
    /// The output's multiplier and (non-positive) shift.
    pub output_multiplier: (i32, i32),
    /// The output zero point.
    pub output_offset: i32,
    /// The clamp of the fused activation, in codes.
    pub act_min: i32,
    /// Upper end of the clamp.
    pub act_max: i32,
}

/// TFLite's `QuantizeMultiplierSmallerThanOneExp`: `real` in (0, 1) as a multiplier and a
/// shift `<= 0`.
fn smaller_than_one(real: f64) -> Result<(i32, i32)> {
    if !(real > 0.0 && real < 1.0) {
        return Err(QuantError::InvalidMultiplier { value: real });
    }
    quantize_multiplier(real)
}

/// gemmlowp's `MultiplyByQuantizedMultiplierSmallerThanOneExp`.
#[inline]
fn scale_down(x: i32, (multiplier, shift): (i32, i32)) -> i32 {
    rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), -shift)
}

impl AddParams {
    /// The parameters for inputs `(scale, zero_point)` `a` and `b`, output `out`, clamped to
    /// `[act_min, act_max]` (from [`activation_range`](super::activation_range)). The real
    /// multipliers are computed in double from the f32 scales, as in TFLite's `Prepare`.
    ///
    /// # Errors
    /// [`QuantError::InvalidMultiplier`] when the output scale is so small against the inputs'
    /// that the output multiplier is not below one (TFLite's converter would not produce it),
    /// [`QuantError::InvalidScale`] for a scale that is not finite and positive.
    pub fn from_scales(
        a: (f32, i32),
        b: (f32, i32),
        out: (f32, i32),
        act_min: i32,
        act_max: i32,
    ) -> Result<Self> {
        for (channel, s) in [a.0, b.0, out.0].into_iter().enumerate() {
            if !(s.is_finite() && s > 0.0) {
                return Err(QuantError::InvalidScale { channel, scale: s });
            }
        }
        // As TFLite: `2 * std::max(float, float)` in float, then the divisions in double.
        let twice_max = (2.0 * a.0.max(b.0)) as f64;
        let out_denominator = ((1i32 << ADD_LEFT_SHIFT) as f32 * out.0) as f64;
        Ok(AddParams {
            input_offset: [-a.1, -b.1],
            input_multiplier: [
                smaller_than_one(a.0 as f64 / twice_max)?,
                smaller_than_one(b.0 as f64 / twice_max)?,
            ],
            output_multiplier: smaller_than_one(twice_max / out_denominator)?,
            output_offset: out.1,
            act_min,
            act_max,
        })
    }

    /// One output code.
    #[inline]
    pub fn add(&self, x: i8, y: i8) -> i8 {
        let x = (self.input_offset[0] + x as i32) * (1 << ADD_LEFT_SHIFT);
        let y = (self.input_offset[1] + y as i32) * (1 << ADD_LEFT_SHIFT);
        let sum = scale_down(x, self.input_multiplier[0]) + scale_down(y, self.input_multiplier[1]);
        let out = scale_down(sum, self.output_multiplier) + self.output_offset;
        out.clamp(self.act_min, self.act_max) as i8
    }
}

/// `out[i] = a[i] + b[i]` in int8 (see the [module documentation](self)): 16 lanes at a time
/// with AVX-512 where the CPU has it, bit for bit the portable [`add_i8_portable`].
///
/// # Panics
/// If the three slices differ in length.
pub fn add_i8(a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    check_lengths(a, b, out);
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        let whole = a.len() / 16 * 16;
        // SAFETY: the CPU has AVX-512 F/BW (checked above); the slices hold `whole` codes.
        unsafe { avx512::add(&a[..whole], &b[..whole], p, &mut out[..whole]) };
        add_i8_portable(&a[whole..], &b[whole..], p, &mut out[whole..]);
        return;
    }
    add_i8_portable(a, b, p, out);
}

/// The scalar reference of [`add_i8`].
///
/// # Panics
/// If the three slices differ in length.
pub fn add_i8_portable(a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    check_lengths(a, b, out);
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = p.add(x, y);
    }
}

fn check_lengths(a: &[i8], b: &[i8], out: &[i8]) {
    assert!(
        a.len() == b.len() && a.len() == out.len(),
        "add_i8: inputs of {} and {} codes, output of {}",
        a.len(),
        b.len(),
        out.len()
    );
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{ADD_LEFT_SHIFT, AddParams};

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }

    /// `MultiplyByQuantizedMultiplierSmallerThanOneExp` on 16 lanes, for a multiplier in
    /// [2^30, 2^31) (or 0) and a right shift `right` in [0, 31].
    ///
    /// SaturatingRoundingDoublingHighMul is `(x·m + 2^30) >> 31` on the 64-bit product:
    /// gemmlowp's nudge `1 − 2^30` for negative products followed by truncating division is
    /// the same floor division, and it cannot saturate with a non-negative multiplier (as in
    /// the GEMM's output stage, `super::super::avx512::requant16`). Then RoundingDivideByPOT:
    /// shift, plus one where the remainder exceeds the threshold (one higher for negative
    /// values, so their ties round away from zero too).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn scale(x: __m512i, (multiplier, shift): (i32, i32)) -> __m512i {
        let m = _mm512_set1_epi64(multiplier as i64);
        let nudge = _mm512_set1_epi64(1 << 30);
        let even = _mm512_add_epi64(_mm512_mul_epi32(x, m), nudge);
        let odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64::<32>(x), m), nudge);
        let high = _mm512_mask_blend_epi32(
            0xAAAA,
            _mm512_srli_epi64::<31>(even),
            _mm512_slli_epi64::<1>(odd),
        );
        let right = _mm512_set1_epi32(-shift);
        let one = _mm512_set1_epi32(1);
        let mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
        let remainder = _mm512_and_si512(high, mask);
        let threshold =
            _mm512_sub_epi32(_mm512_srli_epi32::<1>(mask), _mm512_srai_epi32::<31>(high));
        let shifted = _mm512_srav_epi32(high, right);
        let round_up = _mm512_cmpgt_epi32_mask(remainder, threshold);
        _mm512_mask_add_epi32(shifted, round_up, shifted, one)
    }

    /// [`super::add_i8_portable`] on whole groups of 16 codes.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW; the three slices have one length, a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn add(a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
        debug_assert!(a.len() == b.len() && a.len() == out.len() && a.len().is_multiple_of(16));
        let offset = [
            _mm512_set1_epi32(p.input_offset[0]),
            _mm512_set1_epi32(p.input_offset[1]),
        ];
        let out_offset = _mm512_set1_epi32(p.output_offset);
        let (lo, hi) = (_mm512_set1_epi32(p.act_min), _mm512_set1_epi32(p.act_max));
        for i in (0..a.len()).step_by(16) {
            // SAFETY: `i + 16 <= len` for each slice; unaligned loads and stores.
            let (x, y) = unsafe {
                (
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(a.as_ptr().add(i).cast())),
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(b.as_ptr().add(i).cast())),
                )
            };
            let x = _mm512_slli_epi32::<ADD_LEFT_SHIFT_U>(_mm512_add_epi32(x, offset[0]));
            let y = _mm512_slli_epi32::<ADD_LEFT_SHIFT_U>(_mm512_add_epi32(y, offset[1]));
            let sum = _mm512_add_epi32(
                scale(x, p.input_multiplier[0]),
                scale(y, p.input_multiplier[1]),
            );
            let r = _mm512_add_epi32(scale(sum, p.output_multiplier), out_offset);
            let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
            // SAFETY: as above; the 16 clamped lanes narrow to 16 bytes.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(r)) };
        }
    }

    const ADD_LEFT_SHIFT_U: u32 = ADD_LEFT_SHIFT as u32;
}

/// One input of a concatenation on the last axis: `part` holds rows of `width` codes, which
/// go to columns `at .. at + width` of `out`'s rows of `total` codes. The codes are copied as
/// they are (TFLite's int8 `CONCATENATION`, whose inputs share the output's parameters); one
/// call per input fills `out`, with no list of inputs to allocate.
///
/// # Panics
/// If the part does not fit: `at + width > total`, or `part` and `out` hold different numbers
/// of rows.
pub fn concat_part_i8(part: &[i8], width: usize, at: usize, total: usize, out: &mut [i8]) {
    let rows = out.len() / total.max(1);
    assert!(
        at + width <= total && part.len() == rows * width && out.len() == rows * total,
        "concat_part_i8: a part of {} codes in rows of {width} at {at} of {total}, output of {}",
        part.len(),
        out.len()
    );
    if width == 0 {
        return;
    }
    for (src, dst) in part.chunks_exact(width).zip(out.chunks_exact_mut(total)) {
        dst[at..at + width].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real-valued sum, for comparison: within one code of it (three roundings of at
    /// most half a code each at 2^-20 of a code, and the last of half a code).
    #[test]
    fn add_is_within_one_code_of_the_real_sum() {
        let (a, b, o) = ((0.05f32, -3), (0.013f32, 17), (0.061f32, -20));
        let p = AddParams::from_scales(a, b, o, -128, 127).unwrap();
        for x in -128i32..128 {
            for y in (-128i32..128).step_by(3) {
                let real = a.0 * (x - a.1) as f32 + b.0 * (y - b.1) as f32;
                let exact = (real / o.0 + o.1 as f32).clamp(-128.0, 127.0);
                let got = p.add(x as i8, y as i8) as f32;
                assert!(
                    (got - exact).abs() <= 0.5 + 1e-3,
                    "{x} + {y}: {got} vs {exact}"
                );
            }
        }
    }

    /// Worked by hand from TFLite's formulas: equal scales 0.5, zero points 0, output scale 1:
    /// twice_max = 1, input multipliers 0.5 (2^30, shift 0), output 1/2^20 (2^30, shift -19).
    /// 3 + 4 at scale 0.5 is 3.5, which rounds half away from zero to 4.
    #[test]
    fn add_matches_a_hand_computed_case() {
        let p = AddParams::from_scales((0.5, 0), (0.5, 0), (1.0, 0), -128, 127).unwrap();
        assert_eq!(p.input_multiplier, [(1 << 30, 0), (1 << 30, 0)]);
        assert_eq!(p.output_multiplier, (1 << 30, -19));
        assert_eq!(p.add(3, 4), 4);
        assert_eq!(p.add(-3, -4), -4);
        assert_eq!(p.add(127, 127), 127);
    }

    #[test]
    fn a_too_small_output_scale_is_an_error() {
        assert!(AddParams::from_scales((1.0, 0), (1.0, 0), (1e-7, 0), -128, 127).is_err());
        assert!(AddParams::from_scales((1.0, 0), (f32::NAN, 0), (1.0, 0), -128, 127).is_err());
    }

    /// Every pair of codes, at several scales (equal, disparate, an output scale far above
    /// the inputs') and with and without a fused ReLU: the dispatched kernel (AVX-512 where
    /// present) equals the scalar reference bit for bit, on lengths with and without a tail.
    #[test]
    fn the_fast_add_matches_the_portable_one_on_every_pair() {
        let a: Vec<i8> = (0..65536).map(|i| (i / 256) as u8 as i8).collect();
        let b: Vec<i8> = (0..65536).map(|i| (i % 256) as u8 as i8).collect();
        for (sa, sb, so, zp, lo) in [
            ((0.05f32, -3), (0.013f32, 17), (0.061f32, -20), -20, -128),
            ((0.5, 0), (0.5, 0), (1.0, 0), 0, 0),
            ((0.002, 127), (0.9, -128), (0.4, 5), 5, 5),
            ((1e-3, -128), (1e-3, -128), (0.5, -128), -128, -128),
        ] {
            let p = AddParams::from_scales(sa, sb, (so.0, zp), lo, 127).unwrap();
            for len in [65536, 65536 - 7, 1, 0] {
                let (mut fast, mut slow) = (vec![0i8; len], vec![0i8; len]);
                add_i8(&a[..len], &b[..len], &p, &mut fast);
                add_i8_portable(&a[..len], &b[..len], &p, &mut slow);
                assert_eq!(fast, slow, "{sa:?} + {sb:?} -> {so:?}, {len} codes");
            }
        }
    }

    #[test]
    fn concat_interleaves_rows() {
        let (a, b) = ([1i8, 2, 3, 4], [9i8, 8]);
        let mut out = [0i8; 6];
        concat_part_i8(&a, 2, 0, 3, &mut out);
        concat_part_i8(&b, 1, 2, 3, &mut out);
        assert_eq!(out, [1, 2, 9, 3, 4, 8]);
    }
}
