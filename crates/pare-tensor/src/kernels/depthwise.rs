//! Depthwise 2-D convolution over NHWC batches (Keras' `DepthwiseConv2D`, TensorFlow's
//! `DepthwiseConv2dNative`).
//!
//! The kernel is `[kh, kw, c, m]` with `m` the depth multiplier; input channel `ci` feeds output
//! channels `ci·m .. ci·m + m`, so output channel `ci·m + j` uses `kernel[.., .., ci, j]`: the
//! kernel's last two axes flattened are exactly the output channels, and each window position
//! is one pass over contiguous memory. Each image is independent; large batches run on the
//! rayon pool.

use super::conv::Window;
use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

fn slices<'a>(x: &'a ArrayView4<'_, f32>) -> std::borrow::Cow<'a, [f32]> {
    match x.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(x.iter().copied().collect()),
    }
}

/// Depthwise convolution of `x [n, h, w, c]` with `kernel [kh, kw, c, m]` and an optional bias
/// `[c·m]`, to `[n, oh, ow, c·m]`.
///
/// # Panics
/// If the kernel's window or channels disagree with `win`, or the bias length is not `c·m`.
pub fn depthwise_conv2d(
    x: ArrayView4<'_, f32>,
    kernel: ArrayView4<'_, f32>,
    bias: Option<&[f32]>,
    win: &Window,
) -> Array4<f32> {
    let (kh, kw, c, m) = kernel.dim();
    assert!(
        kh == win.kh && kw == win.kw && c == win.c && x.dim() == (win.n, win.h, win.w, win.c),
        "depthwise_conv2d: input {:?}, kernel {:?}, window {win:?}",
        x.shape(),
        kernel.shape()
    );
    let oc = c * m;
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            oc,
            "depthwise_conv2d: bias {} for {oc} outputs",
            b.len()
        );
    }
    let xs = slices(&x);
    let ks = slices(&kernel);
    let per_in = win.h * win.w * c;
    let per_out = win.oh * win.ow * oc;
    let mut out = vec![0f32; win.n * per_out];
    let image = |(img, o): (usize, &mut [f32])| {
        let xi = &xs[img * per_in..][..per_in];
        for oy in 0..win.oh {
            let (ky0, ky1, iy0) = win.ky_range(oy);
            for ox in 0..win.ow {
                let (kx0, kx1, ix0) = win.kx_range(ox);
                let o = &mut o[(oy * win.ow + ox) * oc..][..oc];
                match bias {
                    Some(b) => o.copy_from_slice(b),
                    None => o.fill(0.0),
                }
                for (dy, ky) in (ky0..ky1).enumerate() {
                    for (dx, kx) in (kx0..kx1).enumerate() {
                        let px = &xi[((iy0 + dy) * win.w + ix0 + dx) * c..][..c];
                        let k = &ks[(ky * kw + kx) * oc..][..oc];
                        if m == 1 {
                            for ((o, &v), &w) in o.iter_mut().zip(px).zip(k) {
                                *o += v * w;
                            }
                        } else {
                            for (ci, &v) in px.iter().enumerate() {
                                let range = ci * m..ci * m + m;
                                for (o, &w) in o[range.clone()].iter_mut().zip(&k[range]) {
                                    *o += v * w;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    if out.len() >= 1 << 16 && super::parallel_allowed() {
        out.par_chunks_mut(per_out.max(1))
            .enumerate()
            .for_each(image);
    } else {
        out.chunks_mut(per_out.max(1)).enumerate().for_each(image);
    }
    Array4::from_shape_vec((win.n, win.oh, win.ow, oc), out).expect("depthwise_conv2d: shape")
}

/// Gradients of [`depthwise_conv2d`] with respect to the input and the kernel (each only when
/// asked for), from the output gradient `g [n, oh, ow, c·m]`.
///
/// # Panics
/// As [`depthwise_conv2d`], or if `g` is not the output's shape.
pub fn depthwise_backward(
    x: ArrayView4<'_, f32>,
    kernel: ArrayView4<'_, f32>,
    g: ArrayView4<'_, f32>,
    win: &Window,
    need_x: bool,
    need_kernel: bool,
) -> (Option<Array4<f32>>, Option<Array4<f32>>) {
    let (kh, kw, c, m) = kernel.dim();
    let oc = c * m;
    assert!(
        g.dim() == (win.n, win.oh, win.ow, oc) && kh == win.kh && kw == win.kw && c == win.c,
        "depthwise_backward: gradient {:?}, kernel {:?}, window {win:?}",
        g.shape(),
        kernel.shape()
    );
    let (xs, ks, gs) = (slices(&x), slices(&kernel), slices(&g));
    let per_in = win.h * win.w * c;
    let per_out = win.oh * win.ow * oc;
    let mut gx = if need_x {
        vec![0f32; win.n * per_in]
    } else {
        Vec::new()
    };
    let mut gk = if need_kernel {
        vec![0f32; kh * kw * oc]
    } else {
        Vec::new()
    };
    for img in 0..win.n {
        let xi = &xs[img * per_in..][..per_in];
        let gi = &gs[img * per_out..][..per_out];
        for oy in 0..win.oh {
            let (ky0, ky1, iy0) = win.ky_range(oy);
            for ox in 0..win.ow {
                let (kx0, kx1, ix0) = win.kx_range(ox);
                let go = &gi[(oy * win.ow + ox) * oc..][..oc];
                for (dy, ky) in (ky0..ky1).enumerate() {
                    for (dx, kx) in (kx0..kx1).enumerate() {
                        let at = ((iy0 + dy) * win.w + ix0 + dx) * c;
                        let kat = (ky * kw + kx) * oc;
                        for ci in 0..c {
                            for j in 0..m {
                                let o = ci * m + j;
                                if need_kernel {
                                    gk[kat + o] += go[o] * xi[at + ci];
                                }
                                if need_x {
                                    gx[img * per_in + at + ci] += go[o] * ks[kat + o];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let gx = need_x.then(|| {
        Array4::from_shape_vec((win.n, win.h, win.w, c), gx).expect("depthwise_backward: shape")
    });
    let gk = need_kernel
        .then(|| Array4::from_shape_vec((kh, kw, c, m), gk).expect("depthwise_backward: shape"));
    (gx, gk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{Padding, im2col};
    use crate::kernels::gemm::matmul;
    use approx::assert_abs_diff_eq;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The reference: a full convolution whose kernel is zero off the diagonal blocks, so output
    /// channel `ci·m + j` sees only input channel `ci` (the definition of a depthwise conv).
    fn as_full_conv(x: &Array4<f32>, k: &Array4<f32>, win: &Window) -> Array4<f32> {
        let (kh, kw, c, m) = k.dim();
        let full = Array4::from_shape_fn((kh, kw, c, c * m), |(y, xx, ci, o)| {
            if o / m == ci {
                k[[y, xx, ci, o % m]]
            } else {
                0.0
            }
        });
        let cols = im2col(x.view(), win);
        let k2 = full.into_shape_with_order((kh * kw * c, c * m)).unwrap();
        matmul(cols.view(), k2.view())
            .into_shape_with_order((win.n, win.oh, win.ow, c * m))
            .unwrap()
    }

    #[test]
    fn matches_a_block_diagonal_full_convolution() {
        let mut rng = StdRng::seed_from_u64(7);
        for (h, w, c, m, k, s, pad) in [
            (5, 7, 3, 1, 3, 1, Padding::Same),
            (6, 6, 2, 2, 3, 2, Padding::Valid),
            (7, 5, 4, 3, 2, 2, Padding::Same),
            (1, 1, 1, 1, 1, 1, Padding::Valid),
            (9, 9, 5, 1, 3, 2, Padding::Same),
        ] {
            let x = Array4::from_shape_simple_fn((2, h, w, c), || rng.random_range(-1.0..1.0));
            let kern = Array4::from_shape_simple_fn((k, k, c, m), || rng.random_range(-1.0..1.0));
            let win = Window::new([2, h, w, c], [k, k], [s, s], pad).unwrap();
            let got = depthwise_conv2d(x.view(), kern.view(), None, &win);
            let want = as_full_conv(&x, &kern, &win);
            assert_eq!(got.shape(), want.shape());
            for (a, b) in got.iter().zip(want.iter()) {
                assert_abs_diff_eq!(*a, *b, epsilon = 1e-5);
            }
        }
    }

    #[test]
    fn bias_is_added_per_output_channel() {
        let x = Array4::from_elem((1, 2, 2, 2), 1.0f32);
        let k = Array4::from_elem((1, 1, 2, 2), 0.5f32);
        let win = Window::new([1, 2, 2, 2], [1, 1], [1, 1], Padding::Valid).unwrap();
        let y = depthwise_conv2d(x.view(), k.view(), Some(&[1.0, 2.0, 3.0, 4.0]), &win);
        assert_eq!(y.shape(), &[1, 2, 2, 4]);
        assert_eq!(
            y.slice(ndarray::s![0, 1, 1, ..]).to_vec(),
            [1.5, 2.5, 3.5, 4.5]
        );
    }
}
