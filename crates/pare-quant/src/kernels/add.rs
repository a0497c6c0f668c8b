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

/// `out[i] = a[i] + b[i]` in int8 (see the [module documentation](self)).
///
/// # Panics
/// If the three slices differ in length.
pub fn add_i8(a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    assert!(
        a.len() == b.len() && a.len() == out.len(),
        "add_i8: inputs of {} and {} codes, output of {}",
        a.len(),
        b.len(),
        out.len()
    );
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = p.add(x, y);
    }
}

/// `out` = the inputs joined on their last axis: `rows` rows, input `k` contributing
/// `widths[k]` codes per row. The codes are copied as they are (TFLite's int8
/// `CONCATENATION`, whose inputs share the output's parameters).
///
/// # Panics
/// If a slice's length is not `rows` times its width.
pub fn concat_i8(inputs: &[&[i8]], widths: &[usize], rows: usize, out: &mut [i8]) {
    let total: usize = widths.iter().sum();
    assert!(
        out.len() == rows * total
            && inputs.len() == widths.len()
            && inputs.iter().zip(widths).all(|(x, &w)| x.len() == rows * w),
        "concat_i8: inputs of widths {widths:?} over {rows} rows, output of {} codes",
        out.len()
    );
    let mut at = 0;
    for (x, &w) in inputs.iter().zip(widths) {
        for (r, src) in x.chunks_exact(w.max(1)).enumerate().take(rows) {
            out[r * total + at..r * total + at + w].copy_from_slice(&src[..w]);
        }
        at += w;
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

    #[test]
    fn concat_interleaves_rows() {
        let (a, b) = ([1i8, 2, 3, 4], [9i8, 8]);
        let mut out = [0i8; 6];
        concat_i8(&[&a, &b], &[2, 1], 2, &mut out);
        assert_eq!(out, [1, 2, 9, 3, 4, 8]);
    }
}
