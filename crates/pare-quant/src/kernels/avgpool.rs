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
