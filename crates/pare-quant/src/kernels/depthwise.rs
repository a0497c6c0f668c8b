//! int8 depthwise convolution with TFLite's reference arithmetic
//! (`reference_integer_ops::DepthwiseConvPerChannel`,
//! `tensorflow/lite/kernels/internal/reference/integer_ops/depthwise_conv.h`): per output
//! channel `oc = ci · m + j`, `acc = Σ w · (q − z_in) + bias` over the window's positions inside
//! the input (padding adds nothing, as TFLite skips it), then the channel's output stage
//! ([`Requant::apply`]: gemmlowp's double rounding, the zero point, the activation clamp).
//!
//! One multiply-add per weight and output, so the kernel is plain loops: a depthwise layer has
//! `kh · kw` times fewer of them than a conv of the same width.

use pare_tensor::kernels::conv::Window;

use super::Requant;

/// Depthwise convolution of the NHWC batch `x` (`win.n · win.h · win.w · win.c` codes) with
/// kernel `[kh, kw, c, multiplier]` (flat, row-major) into `out`
/// (`win.n · win.oh · win.ow · c · multiplier`).
///
/// # Panics
/// If a slice length disagrees with `win` and `multiplier`, or `requant` has a channel count
/// other than 1 or `c · multiplier`.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_conv_i8(
    x: &[i8],
    win: &Window,
    multiplier: usize,
    kernel: &[i8],
    bias: &[i32],
    input_zero_point: i32,
    requant: &Requant,
    out: &mut [i8],
) {
    let (c, m) = (win.c, multiplier);
    let cout = c * m;
    assert_eq!(
        x.len(),
        win.n * win.h * win.w * c,
        "depthwise_conv_i8: input length"
    );
    assert_eq!(
        kernel.len(),
        win.kh * win.kw * cout,
        "depthwise_conv_i8: kernel length"
    );
    assert_eq!(bias.len(), cout, "depthwise_conv_i8: bias length");
    assert!(
        requant.channels() == 1 || requant.channels() == cout,
        "depthwise_conv_i8: {} multipliers for {cout} channels",
        requant.channels()
    );
    assert_eq!(
        out.len(),
        win.n * win.oh * win.ow * cout,
        "depthwise_conv_i8: output length"
    );
    let mut acc = vec![0i32; cout];
    for img in 0..win.n {
        let base = img * win.h * win.w * c;
        for oy in 0..win.oh {
            let (ky0, ky1, iy0) = win.ky_range(oy);
            for ox in 0..win.ow {
                let (kx0, kx1, ix0) = win.kx_range(ox);
                acc.copy_from_slice(bias);
                for (dy, ky) in (ky0..ky1).enumerate() {
                    for (dx, kx) in (kx0..kx1).enumerate() {
                        let px = &x[base + ((iy0 + dy) * win.w + ix0 + dx) * c..][..c];
                        let w = &kernel[(ky * win.kw + kx) * cout..][..cout];
                        for (ci, &v) in px.iter().enumerate() {
                            let v = v as i32 - input_zero_point;
                            for j in 0..m {
                                let oc = ci * m + j;
                                acc[oc] += w[oc] as i32 * v;
                            }
                        }
                    }
                }
                let o = &mut out[((img * win.oh + oy) * win.ow + ox) * cout..][..cout];
                for (oc, (o, &a)) in o.iter_mut().zip(&acc).enumerate() {
                    *o = requant.apply(a, oc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixedpoint::quantize_multiplier;
    use pare_tensor::Padding;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The definition, position by position: output `(y, x, ci · m + j)` sums
    /// `w[ky][kx][ci][j] · (x[y·s + ky − pad][x·s + kx − pad][ci] − z)` over in-bounds taps.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[i8],
        [n, h, w, c]: [usize; 4],
        [kh, kw, m]: [usize; 3],
        kernel: &[i8],
        bias: &[i32],
        z: i32,
        win: &Window,
        rq: &Requant,
    ) -> Vec<i8> {
        let mut out = Vec::new();
        for img in 0..n {
            for oy in 0..win.oh {
                for ox in 0..win.ow {
                    for ci in 0..c {
                        for j in 0..m {
                            let oc = ci * m + j;
                            let mut acc = bias[oc];
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * win.sh + ky) as isize - win.pad_top as isize;
                                    let ix = (ox * win.sw + kx) as isize - win.pad_left as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let v = x[((img * h + iy as usize) * w + ix as usize) * c + ci];
                                    let k = kernel[((ky * kw + kx) * c + ci) * m + j];
                                    acc += k as i32 * (v as i32 - z);
                                }
                            }
                            out.push(rq.apply(acc, oc));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn depthwise_matches_the_definition_on_awkward_shapes() {
        let mut rng = StdRng::seed_from_u64(3);
        for (shape, k, m, s, padding) in [
            ([1, 5, 5, 1], [3, 3], 1, 1, Padding::Valid),
            ([2, 7, 6, 3], [3, 3], 2, 2, Padding::Same),
            ([1, 9, 9, 7], [5, 3], 1, 2, Padding::Same),
            ([3, 4, 4, 2], [1, 1], 3, 1, Padding::Valid),
        ] {
            let [n, h, w, c] = shape;
            let x: Vec<i8> = (0..n * h * w * c).map(|_| rng.random()).collect();
            let cout = c * m;
            let kernel: Vec<i8> = (0..k[0] * k[1] * cout)
                .map(|_| rng.random_range(-127..=127))
                .collect();
            let bias: Vec<i32> = (0..cout).map(|_| rng.random_range(-5000..5000)).collect();
            let (mult, shift): (Vec<i32>, Vec<i32>) = (0..cout)
                .map(|i| quantize_multiplier(0.002 + 0.0007 * i as f64).unwrap())
                .unzip();
            let rq = Requant::per_channel(mult, shift, -7, -128, 127).unwrap();
            let win = Window::new(shape, k, [s, s], padding).unwrap();
            let mut out = vec![0i8; n * win.oh * win.ow * cout];
            depthwise_conv_i8(&x, &win, m, &kernel, &bias, 5, &rq, &mut out);
            let want = reference(&x, shape, [k[0], k[1], m], &kernel, &bias, 5, &win, &rq);
            assert_eq!(out, want, "{shape:?} kernel {k:?} multiplier {m}");
        }
    }

    #[test]
    fn depthwise_worked_by_hand() {
        // One 2×2 image, one channel, kernel 2×2 of ones, valid: the sum of (q − 1) over the
        // four codes 1, 2, 3, 4 is 6, plus bias 4 is 10; multiplier 0.5 → 5, zero point 3 → 8.
        let win = Window::new([1, 2, 2, 1], [2, 2], [1, 1], Padding::Valid).unwrap();
        let (m, s) = quantize_multiplier(0.5).unwrap();
        let rq = Requant::per_tensor(m, s, 3, -128, 127).unwrap();
        let mut out = [0i8; 1];
        depthwise_conv_i8(&[1, 2, 3, 4], &win, 1, &[1; 4], &[4], 1, &rq, &mut out);
        assert_eq!(out, [8]);
    }
}
