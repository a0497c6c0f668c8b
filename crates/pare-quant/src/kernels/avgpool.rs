//! int8 average pooling and global average pooling (spatial mean), with TFLite's reference
//! rounding.
//!
//! - `AVERAGE_POOL_2D` (`reference_integer_ops::AveragePool`,
//!   `tensorflow/lite/kernels/internal/reference/integer_ops/pooling.h`): input and output share
//!   their quantization parameters, so the output is the integer mean of the window's codes
//!   inside the input, `(sum ± count/2) / count` with the sign of the sum (C++ division
//!   truncates towards zero, as Rust's does), clamped to the activation range.
//! - `MEAN` over height and width (`reference_integer_ops::Mean`,
//!   `.../reference/integer_ops/mean.h`): the sum of `q − z_in` is rescaled by the fixed-point
//!   multiplier of `s_in / s_out`, then divided by the element count with the same sign-aware
//!   rounding, and `z_out` added.

use crate::error::Result;
use crate::fixedpoint::{multiply_by_quantized_multiplier, quantize_multiplier};
use crate::params::{QMAX_I8, QMIN_I8};
use pare_tensor::kernels::conv::Window;

/// `(sum ± count/2) / count`, the half rounded away from zero with the sum's sign (TFLite).
#[inline]
pub fn rounded_mean(sum: i32, count: i32) -> i32 {
    if sum > 0 {
        (sum + count / 2) / count
    } else {
        (sum - count / 2) / count
    }
}

/// int8 average pool of an NHWC batch `x` (flat, `win.n · win.h · win.w · win.c` codes) into
/// `out` (`win.n · win.oh · win.ow · win.c`), clamped to `[act_min, act_max]`. Padding is left
/// out of each window's count.
///
/// # Panics
/// If the slice lengths disagree with `win`.
pub fn avg_pool_i8(x: &[i8], win: &Window, act_min: i32, act_max: i32, out: &mut [i8]) {
    let c = win.c;
    assert_eq!(
        x.len(),
        win.n * win.h * win.w * c,
        "avg_pool_i8: input length"
    );
    assert_eq!(
        out.len(),
        win.n * win.oh * win.ow * c,
        "avg_pool_i8: output length"
    );
    let mut acc = vec![0i32; c];
    for img in 0..win.n {
        let base = img * win.h * win.w * c;
        for oy in 0..win.oh {
            let (ky0, ky1, iy0) = win.ky_range(oy);
            for ox in 0..win.ow {
                let (kx0, kx1, ix0) = win.kx_range(ox);
                acc.fill(0);
                for iy in iy0..iy0 + (ky1 - ky0) {
                    for ix in ix0..ix0 + (kx1 - kx0) {
                        let src = base + (iy * win.w + ix) * c;
                        for (a, &v) in acc.iter_mut().zip(&x[src..src + c]) {
                            *a += v as i32;
                        }
                    }
                }
                let count = ((ky1 - ky0) * (kx1 - kx0)).max(1) as i32;
                let o = &mut out[((img * win.oh + oy) * win.ow + ox) * c..][..c];
                for (o, &a) in o.iter_mut().zip(&acc) {
                    *o = rounded_mean(a, count).clamp(act_min, act_max) as i8;
                }
            }
        }
    }
}

/// Parameters of an int8 spatial mean (global average pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeanParams {
    /// Input zero point.
    pub input_zero_point: i32,
    /// Output zero point.
    pub output_zero_point: i32,
    /// Fixed-point multiplier and shift of `s_in / s_out`.
    pub multiplier: (i32, i32),
}

impl MeanParams {
    /// From the input and output scales and zero points.
    ///
    /// # Errors
    /// [`crate::QuantError::InvalidMultiplier`] when `s_in / s_out` cannot be represented.
    pub fn from_scales(input: (f32, i32), output: (f32, i32)) -> Result<MeanParams> {
        Ok(MeanParams {
            input_zero_point: input.1,
            output_zero_point: output.1,
            multiplier: quantize_multiplier(input.0 as f64 / output.0 as f64)?,
        })
    }
}

/// int8 mean over height and width of NHWC `x` (`n · hw · c` codes) into `out` (`n · c`).
///
/// # Panics
/// If the slice lengths disagree, or `hw` is 0.
pub fn global_avg_pool_i8(x: &[i8], n: usize, hw: usize, c: usize, p: &MeanParams, out: &mut [i8]) {
    assert!(hw > 0, "global_avg_pool_i8: empty image");
    assert_eq!(x.len(), n * hw * c, "global_avg_pool_i8: input length");
    assert_eq!(out.len(), n * c, "global_avg_pool_i8: output length");
    let (m, shift) = p.multiplier;
    let mut acc = vec![0i32; c];
    for img in 0..n {
        acc.fill(0);
        for px in x[img * hw * c..(img + 1) * hw * c].chunks_exact(c) {
            for (a, &v) in acc.iter_mut().zip(px) {
                *a += v as i32 - p.input_zero_point;
            }
        }
        for (o, &a) in out[img * c..(img + 1) * c].iter_mut().zip(&acc) {
            let scaled = multiply_by_quantized_multiplier(a, m, shift);
            let v = rounded_mean(scaled, hw as i32) + p.output_zero_point;
            *o = v.clamp(QMIN_I8, QMAX_I8) as i8;
        }
    }
}

/// The output stage of TFLite's general int8 `MEAN` (`reference_ops::QuantizedMeanOrSum`,
/// `tensorflow/lite/kernels/internal/reference/reduce.h`), which runs a `MEAN` without
/// `keep_dims` — the form Keras' `GlobalAveragePooling2D` converts to: the multiplier of
/// `s_in / s_out` absorbs `1 / count` as `(m · 2^b) / count` (integer division) with the shift
/// lowered by `b = min(floor(log2 count), 32, 31 + shift)`, then one
/// [`multiply_by_quantized_multiplier`] of `Σ q − z_in · count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReduceMeanParams {
    /// Input zero point.
    pub input_zero_point: i32,
    /// Output zero point.
    pub output_zero_point: i32,
    /// The multiplier and shift with `1 / count` folded in.
    pub multiplier: (i32, i32),
    /// Elements averaged.
    pub count: i32,
}

impl ReduceMeanParams {
    /// For a mean over `count` elements, from the input and output scales and zero points.
    ///
    /// # Errors
    /// [`crate::QuantError::InvalidMultiplier`] when `s_in / s_out` cannot be represented or
    /// `count` is 0.
    pub fn from_scales(input: (f32, i32), output: (f32, i32), count: usize) -> Result<Self> {
        let (m, shift) = quantize_multiplier(input.0 as f64 / output.0 as f64)?;
        let count = i32::try_from(count)
            .ok()
            .filter(|&c| c > 0)
            .ok_or(crate::QuantError::InvalidMultiplier { value: 0.0 })?;
        let b = (31 - count.leading_zeros() as i32).min(32).min(31 + shift);
        let m = ((i64::from(m) << b) / i64::from(count)) as i32;
        Ok(ReduceMeanParams {
            input_zero_point: input.1,
            output_zero_point: output.1,
            multiplier: (m, shift - b),
            count,
        })
    }
}

/// int8 mean over height and width of NHWC `x` (`n · count · c` codes, `count = h · w`) into
/// `out` (`n · c`), as TFLite's `MEAN` without `keep_dims` ([`ReduceMeanParams`]).
///
/// # Panics
/// If the slice lengths disagree with `p.count` and `c`.
pub fn reduce_mean_i8(x: &[i8], n: usize, c: usize, p: &ReduceMeanParams, out: &mut [i8]) {
    let hw = p.count as usize;
    assert_eq!(x.len(), n * hw * c, "reduce_mean_i8: input length");
    assert_eq!(out.len(), n * c, "reduce_mean_i8: output length");
    let (m, shift) = p.multiplier;
    let mut acc = vec![0i32; c];
    for img in 0..n {
        acc.fill(0);
        for px in x[img * hw * c..(img + 1) * hw * c].chunks_exact(c) {
            for (a, &v) in acc.iter_mut().zip(px) {
                *a += v as i32;
            }
        }
        for (o, &a) in out[img * c..(img + 1) * c].iter_mut().zip(&acc) {
            let shifted = a.wrapping_sub(p.input_zero_point.wrapping_mul(p.count));
            let v = multiply_by_quantized_multiplier(shifted, m, shift) + p.output_zero_point;
            *o = v.clamp(QMIN_I8, QMAX_I8) as i8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pare_tensor::Padding;

    #[test]
    fn rounding_is_half_away_from_zero_by_the_sign_of_the_sum() {
        // 5/2 = 2.5 → 3, −5/2 → −3, 4/3 = 1.33 → 1, −4/3 → −1, 7/4 = 1.75 → 2.
        for (sum, count, want) in [
            (5, 2, 3),
            (-5, 2, -3),
            (4, 3, 1),
            (-4, 3, -1),
            (7, 4, 2),
            (0, 9, 0),
        ] {
            assert_eq!(rounded_mean(sum, count), want, "{sum}/{count}");
        }
    }

    #[test]
    fn avg_pool_worked_by_hand_with_same_padding() {
        // 3×3 codes 1..9 (one channel), pool 2, stride 2, same: windows {1,2,4,5}, {3,6},
        // {7,8}, {9}: 12/4 = 3, 9/2 = 4.5 → 5, 15/2 = 7.5 → 8, 9. Negated codes round to
        // −3, −5, −8, −9.
        let win = Window::new([1, 3, 3, 1], [2, 2], [2, 2], Padding::Same).unwrap();
        let x: Vec<i8> = (1..=9).collect();
        let mut out = [0i8; 4];
        avg_pool_i8(&x, &win, -128, 127, &mut out);
        assert_eq!(out, [3, 5, 8, 9]);
        let neg: Vec<i8> = x.iter().map(|v| -v).collect();
        avg_pool_i8(&neg, &win, -128, 127, &mut out);
        assert_eq!(out, [-3, -5, -8, -9]);
        // A fused ReLU6-style range clamps.
        avg_pool_i8(&x, &win, 0, 6, &mut out);
        assert_eq!(out, [3, 5, 6, 6]);
    }

    #[test]
    fn reduce_mean_folds_the_count_into_the_multiplier() {
        // s_in / s_out = 2 → (2^30, 2); count 10 → b = 3, m = 2^33 / 10 = 858993459,
        // shift −1: mean of codes 3..=12 with z_in 3 is 4.5 input steps = 9 output steps.
        let p = ReduceMeanParams::from_scales((0.1, 3), (0.05, -10), 10).unwrap();
        assert_eq!(p.multiplier, (858_993_459, -1));
        let x: Vec<i8> = (3..13).collect();
        let mut out = [0i8; 1];
        reduce_mean_i8(&x, 1, 1, &p, &mut out);
        assert_eq!(out, [-1]);
        // Random codes: within 0.75 steps of the exact mean (the high-mul rounds to half an
        // output step here, shift −1, before the final rounding shift), and differing from the
        // keep_dims kernel on some outputs.
        let mut state = 99u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as i8
        };
        let (n, hw, c) = (40, 49, 8);
        let x: Vec<i8> = (0..n * hw * c).map(|_| next()).collect();
        let p = ReduceMeanParams::from_scales((0.02, -5), (0.0013, 7), hw).unwrap();
        let keep = MeanParams::from_scales((0.02, -5), (0.0013, 7)).unwrap();
        let (mut a, mut b) = (vec![0i8; n * c], vec![0i8; n * c]);
        reduce_mean_i8(&x, n, c, &p, &mut a);
        global_avg_pool_i8(&x, n, hw, c, &keep, &mut b);
        for img in 0..n {
            for ch in 0..c {
                let mean: f64 = (0..hw)
                    .map(|i| 0.02 * (x[(img * hw + i) * c + ch] as f64 + 5.0))
                    .sum::<f64>()
                    / hw as f64;
                let exact = (mean / 0.0013 + 7.0).clamp(-128.0, 127.0);
                let got = a[img * c + ch] as f64;
                assert!((got - exact).abs() <= 0.75 + 1e-3, "{got} vs {exact}");
            }
        }
        assert!(a != b, "the two MEAN kernels round alike on every output");
    }

    #[test]
    fn global_mean_matches_the_real_mean_to_half_a_step() {
        // Input scale 0.1, zero point 3; output scale 0.05, zero point −10. Codes 3..=12 on one
        // channel: real values 0.0..=0.9, mean 0.45, which is 9 output steps: code −1.
        let p = MeanParams::from_scales((0.1, 3), (0.05, -10)).unwrap();
        let x: Vec<i8> = (3..13).collect();
        let mut out = [0i8; 1];
        global_avg_pool_i8(&x, 1, 10, 1, &p, &mut out);
        assert_eq!(out, [-1]);
        // Two images, two channels, random codes: within half a step (plus the multiplier's
        // rounding) of the exact mean.
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as i8
        };
        let x: Vec<i8> = (0..2 * 49 * 2).map(|_| next()).collect();
        let p = MeanParams::from_scales((0.02, -5), (0.013, 7)).unwrap();
        let mut out = [0i8; 4];
        global_avg_pool_i8(&x, 2, 49, 2, &p, &mut out);
        for img in 0..2 {
            for ch in 0..2 {
                let mean: f64 = (0..49)
                    .map(|i| 0.02 * (x[(img * 49 + i) * 2 + ch] as f64 + 5.0))
                    .sum::<f64>()
                    / 49.0;
                let exact = mean / 0.013 + 7.0;
                let got = out[img * 2 + ch] as f64;
                assert!(
                    (got - exact.clamp(-128.0, 127.0)).abs() <= 0.5 + 0.02,
                    "{got} vs {exact}"
                );
            }
        }
    }
}
