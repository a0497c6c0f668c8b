//! im2col / col2im for NHWC convolutions with `[kh, kw, in, out]` kernels, and TensorFlow's
//! `valid` / `same` padding arithmetic.
//!
//! A patch row is laid out `(ky, kx, c)`, which is exactly the row-major flattening of the
//! kernel's first three axes, so the convolution is `patches [n·oh·ow, kh·kw·c] · kernel
//! [kh·kw·c, out]` with no transposition of the kernel. Convolutions with short patch rows skip
//! the patch matrix: see [`shallow`].

pub mod shallow;

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, ArrayViewMut2, ArrayViewMut4, Axis};
use rayon::prelude::*;

/// Padding mode, as in TensorFlow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding: windows must fit inside the input.
    #[default]
    Valid,
    /// Output size `ceil(in / stride)`, zero padding split with the extra row/column at the
    /// bottom/right (TensorFlow's rule).
    Same,
}

impl Padding {
    /// Output length and padding before, for one spatial axis (TensorFlow's formulas).
    /// Returns `None` when a `valid` window does not fit.
    pub fn output_and_pad(
        self,
        input: usize,
        window: usize,
        stride: usize,
    ) -> Option<(usize, usize)> {
        match self {
            Padding::Valid => {
                if input < window {
                    None
                } else {
                    Some(((input - window) / stride + 1, 0))
                }
            }
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out.saturating_sub(1)) * stride + window).saturating_sub(input);
                Some((out, total / 2))
            }
        }
    }
}

/// Everything about one convolution's (or pooling's) sliding window over an NHWC batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c: usize,
    /// Window height.
    pub kh: usize,
    /// Window width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Rows of padding above.
    pub pad_top: usize,
    /// Columns of padding on the left.
    pub pad_left: usize,
}

impl Window {
    /// The window geometry for an `[n, h, w, c]` input, or `None` if a `valid` window does not
    /// fit or a size is zero.
    pub fn new(
        input: [usize; 4],
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> Option<Window> {
        let [n, h, w, c] = input;
        let [kh, kw] = kernel;
        let [sh, sw] = strides;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || h == 0 || w == 0 {
            return None;
        }
        let (oh, pad_top) = padding.output_and_pad(h, kh, sh)?;
        let (ow, pad_left) = padding.output_and_pad(w, kw, sw)?;
        Some(Window {
            n,
            h,
            w,
            c,
            kh,
            kw,
            sh,
            sw,
            oh,
            ow,
            pad_top,
            pad_left,
        })
    }

    /// Length of one patch row.
    pub fn patch_len(&self) -> usize {
        self.kh * self.kw * self.c
    }

    /// Number of output positions over the batch.
    pub fn rows(&self) -> usize {
        self.n * self.oh * self.ow
    }

    /// Valid window rows `[ky0, ky1)` for output row `oy`, and the input row of `ky0`.
    #[inline]
    pub fn ky_range(&self, oy: usize) -> (usize, usize, usize) {
        let start = oy * self.sh;
        let ky0 = self.pad_top.saturating_sub(start);
        let ky1 = (self.h + self.pad_top)
            .saturating_sub(start)
            .min(self.kh)
            .max(ky0);
        (ky0, ky1, (start + ky0).saturating_sub(self.pad_top))
    }

    /// Valid window columns `[kx0, kx1)` for output column `ox`, and the input column of `kx0`.
    #[inline]
    pub fn kx_range(&self, ox: usize) -> (usize, usize, usize) {
        let start = ox * self.sw;
        let kx0 = self.pad_left.saturating_sub(start);
        let kx1 = (self.w + self.pad_left).saturating_sub(start).min(self.kw);
        let kx1 = kx1.max(kx0);
        (kx0, kx1, (start + kx0).saturating_sub(self.pad_left))
    }

    /// Input row/column for output position `o` and window offset `k` on an axis, if inside.
    #[inline]
    fn src(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
        (o * stride + k).checked_sub(pad).filter(|&i| i < len)
    }
}

/// Copies a short slice without a call into `memmove`, which dominates for the 1 to 27 floats
/// of a first-layer patch row.
#[inline]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    if dst.len() >= 32 {
        dst.copy_from_slice(src);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

/// Unfolds an NHWC batch into patch rows `[n·oh·ow, kh·kw·c]`, zero outside the input.
pub fn im2col(x: ArrayView4<'_, f32>, win: &Window) -> Array2<f32> {
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let (plen, c) = (win.patch_len(), win.c);
    let per_image = win.oh * win.ow * plen;
    let mut out = super::buffers::take_zeroed(win.rows() * plen);
    // Window clipping depends only on the output column / row: work it out once.
    let cols: Vec<(usize, usize, usize)> = (0..win.ow).map(|ox| win.kx_range(ox)).collect();
    let rows: Vec<(usize, usize, usize)> = (0..win.oh).map(|oy| win.ky_range(oy)).collect();
    let fill = |(img, dst): (usize, &mut [f32])| {
        let src = &xs[img * win.h * win.w * c..(img + 1) * win.h * win.w * c];
        for (oy, &(ky0, ky1, iy0)) in rows.iter().enumerate() {
            for (ox, &(kx0, kx1, ix0)) in cols.iter().enumerate() {
                let row = &mut dst[(oy * win.ow + ox) * plen..][..plen];
                // The window's row is contiguous in NHWC: one copy per kernel row.
                let len = (kx1 - kx0) * c;
                for (dy, ky) in (ky0..ky1).enumerate() {
                    let s = &src[((iy0 + dy) * win.w + ix0) * c..][..len];
                    copy_short(&mut row[(ky * win.kw + kx0) * c..][..len], s);
                }
            }
        }
    };
    if per_image > 0 {
        if out.len() >= 1 << 16 && super::parallel_allowed() {
            out.par_chunks_mut(per_image).enumerate().for_each(fill);
        } else {
            out.chunks_mut(per_image).enumerate().for_each(fill);
        }
    }
    Array2::from_shape_vec((win.rows(), plen), out).expect("im2col: shape matches length")
}

/// Folds patch-row gradients back onto the NHWC input (the adjoint of [`im2col`]).
pub fn col2im(cols: ArrayView2<'_, f32>, win: &Window) -> Array4<f32> {
    let cols = cols.as_standard_layout();
    let cs = cols.as_slice().expect("standard layout");
    let plen = win.patch_len();
    let mut out = Array4::from_shape_vec(
        (win.n, win.h, win.w, win.c),
        super::buffers::take_zeroed(win.n * win.h * win.w * win.c),
    )
    .expect("col2im: shape matches length");
    let per_image = win.oh * win.ow * plen;
    let fold = |(img, mut dst): (usize, ArrayViewMut4<'_, f32>)| {
        let dst = dst.as_slice_mut().expect("standard layout");
        fold_image(&cs[img * per_image..(img + 1) * per_image], dst, win);
    };
    let chunks = out
        .axis_chunks_iter_mut(Axis(0), 1)
        .into_par_iter()
        .enumerate();
    if win.rows() * plen >= 1 << 16 && super::parallel_allowed() {
        chunks.for_each(fold);
    } else {
        out.axis_chunks_iter_mut(Axis(0), 1)
            .enumerate()
            .for_each(fold);
    }
    out
}

/// Adds one image's patch-row gradients `[oh·ow, plen]` onto its NHWC input gradient.
fn fold_image(src: &[f32], dst: &mut [f32], win: &Window) {
    let (plen, c) = (win.patch_len(), win.c);
    for oy in 0..win.oh {
        for ox in 0..win.ow {
            let row = &src[(oy * win.ow + ox) * plen..][..plen];
            for ky in 0..win.kh {
                let Some(iy) = Window::src(oy, ky, win.sh, win.pad_top, win.h) else {
                    continue;
                };
                for kx in 0..win.kw {
                    let Some(ix) = Window::src(ox, kx, win.sw, win.pad_left, win.w) else {
                        continue;
                    };
                    let d = &mut dst[(iy * win.w + ix) * c..][..c];
                    for (d, s) in d.iter_mut().zip(&row[(ky * win.kw + kx) * c..][..c]) {
                        *d += s;
                    }
                }
            }
        }
    }
}

/// The input gradient of an im2col convolution, `col2im(g · kernelᵀ)`, one image at a time:
/// each image's patch-row gradients are made in a scratch buffer that stays in cache and folded
/// at once, instead of writing and re-reading a patch-sized matrix (58 MB for ResNet-8's first
/// block at batch 128). `g` is `[n·oh·ow, out]`, `kernel` `[kh·kw·c, out]`.
///
/// # Panics
/// If the shapes do not match the window.
pub fn conv2d_input_grad(
    g: ArrayView2<'_, f32>,
    kernel: ArrayView2<'_, f32>,
    win: &Window,
) -> Array4<f32> {
    let plen = win.patch_len();
    assert!(
        g.nrows() == win.rows() && kernel.nrows() == plen && kernel.ncols() == g.ncols(),
        "conv2d_input_grad: gradient {:?}, kernel {:?} for window {win:?}",
        g.shape(),
        kernel.shape()
    );
    let g = g.as_standard_layout();
    // kernelᵀ row-major, once: the per-image products then take both operands row-major.
    let kt = kernel.t().as_standard_layout().into_owned();
    // Each image's gradient is zeroed by the task that folds into it, while it is in cache
    // and on that task's thread, not in one pass over the whole batch beforehand.
    let mut out = Array4::from_shape_vec(
        (win.n, win.h, win.w, win.c),
        super::buffers::take_any(win.n * win.h * win.w * win.c),
    )
    .expect("conv2d_input_grad: shape matches length");
    let per_image = win.oh * win.ow;
    let fold = |(img, mut dst): (usize, ArrayViewMut4<'_, f32>)| {
        let dst = dst.as_slice_mut().expect("standard layout");
        dst.fill(0.0);
        let gi = g.slice(ndarray::s![img * per_image..(img + 1) * per_image, ..]);
        let buf = super::buffers::take_any(per_image * plen);
        let mut cols = Array2::from_shape_vec((per_image, plen), buf).expect("shape");
        super::with_sequential_kernels(|| {
            super::gemm::matmul_into(gi, kt.view(), cols.view_mut(), false)
        });
        fold_image(cols.as_slice().expect("standard layout"), dst, win);
        super::buffers::give_array(cols);
    };
    if win.rows() * plen >= 1 << 16 && super::parallel_allowed() {
        out.axis_chunks_iter_mut(Axis(0), 1)
            .into_par_iter()
            .enumerate()
            .for_each(fold);
    } else {
        out.axis_chunks_iter_mut(Axis(0), 1)
            .enumerate()
            .for_each(fold);
    }
    out
}

/// Output rows aimed at per block of [`conv2d_forward`] and [`conv2d_kernel_grad`]: a block's
/// patch rows (at most a few hundred KB) stay in L2 between im2col and the GEMM.
const BLOCK_ROWS: usize = 512;

/// Whole images per block: the blocks depend on the shapes only, never on the thread count,
/// so the kernel gradient's partial sums, added in block order, are reproducible.
fn images_per_block(win: &Window) -> usize {
    BLOCK_ROWS
        .div_ceil((win.oh * win.ow).max(1))
        .clamp(1, win.n.max(1))
}

/// Images `i0 .. i0 + count` of `x` and their window.
fn image_block<'a>(
    x: ArrayView4<'a, f32>,
    win: &Window,
    i0: usize,
    count: usize,
) -> (ArrayView4<'a, f32>, Window) {
    let xb = x.slice_move(ndarray::s![i0..i0 + count, .., .., ..]);
    (xb, Window { n: count, ..*win })
}

/// `im2col(x) · kernel` (`kernel` `[kh·kw·c, out]`), `[n·oh·ow, out]`, by blocks of whole
/// images: each block's patch rows are made in cache and multiplied at once, so the patch
/// matrix (58 MB for ResNet-8's first block at batch 128) is never written out whole.
///
/// # Panics
/// If `x` or `kernel` do not match the window.
pub fn conv2d_forward(
    x: ArrayView4<'_, f32>,
    kernel: ArrayView2<'_, f32>,
    win: &Window,
) -> Array2<f32> {
    assert!(
        x.shape() == [win.n, win.h, win.w, win.c] && kernel.nrows() == win.patch_len(),
        "conv2d: input {:?}, kernel {:?} for window {win:?}",
        x.shape(),
        kernel.shape()
    );
    let oc = kernel.ncols();
    let per_image = win.oh * win.ow;
    let ipb = images_per_block(win);
    let mut y = Array2::from_shape_vec((win.rows(), oc), super::buffers::take_any(win.rows() * oc))
        .expect("conv2d: shape matches length");
    if win.rows() == 0 || oc == 0 {
        return y;
    }
    let block = |(bi, mut yb): (usize, ArrayViewMut2<'_, f32>)| {
        let (xb, wb) = image_block(x, win, bi * ipb, yb.nrows() / per_image);
        super::with_sequential_kernels(|| {
            let p = im2col(xb, &wb);
            super::gemm::matmul_into(p.view(), kernel, yb.view_mut(), false);
            super::buffers::give_array(p);
        });
    };
    let chunks = y.axis_chunks_iter_mut(Axis(0), ipb * per_image);
    if super::parallel_allowed() && win.n > ipb {
        chunks.into_par_iter().enumerate().for_each(block);
    } else {
        chunks.into_iter().enumerate().for_each(block);
    }
    y
}

/// The kernel gradient of an im2col convolution, `im2col(x)ᵀ · g` (`g` `[n·oh·ow, out]`), as
/// `[kh·kw·c, out]`: partial products over the blocks of [`conv2d_forward`], patch rows made
/// again in cache (no stored patch matrix), summed in block order.
///
/// # Panics
/// If `x` or `g` do not match the window.
pub fn conv2d_kernel_grad(
    x: ArrayView4<'_, f32>,
    g: ArrayView2<'_, f32>,
    win: &Window,
) -> Array2<f32> {
    assert!(
        x.shape() == [win.n, win.h, win.w, win.c] && g.nrows() == win.rows(),
        "conv2d backward: input {:?}, gradient {:?} for window {win:?}",
        x.shape(),
        g.shape()
    );
    let (plen, oc) = (win.patch_len(), g.ncols());
    let per_image = win.oh * win.ow;
    let ipb = images_per_block(win);
    let blocks = win.n.div_ceil(ipb);
    let partial = |bi: usize| {
        let i0 = bi * ipb;
        let count = ipb.min(win.n - i0);
        let (xb, wb) = image_block(x, win, i0, count);
        let gb = g.slice(ndarray::s![i0 * per_image..(i0 + count) * per_image, ..]);
        // Pooled: a step makes tens of these partials, and fresh ones would cost page faults.
        let buf = super::buffers::take_any(plen * oc);
        let mut gk = Array2::from_shape_vec((plen, oc), buf).expect("shape matches length");
        super::with_sequential_kernels(|| {
            let p = im2col(xb, &wb);
            super::gemm::matmul_into(p.t(), gb, gk.view_mut(), false);
            super::buffers::give_array(p);
        });
        gk
    };
    let partials: Vec<Array2<f32>> = if super::parallel_allowed() && blocks > 1 {
        (0..blocks).into_par_iter().map(partial).collect()
    } else {
        (0..blocks).map(partial).collect()
    };
    let mut parts = partials.into_iter();
    let mut gk = parts.next().unwrap_or_else(|| Array2::zeros((plen, oc)));
    for p in parts {
        gk += &p;
        super::buffers::give_array(p);
    }
    gk
}

/// Direct convolution, the reference the im2col path is tested against.
pub fn conv2d_direct(
    x: ArrayView4<'_, f32>,
    kernel: ndarray::ArrayView4<'_, f32>,
    win: &Window,
) -> Array4<f32> {
    let oc = kernel.shape()[3];
    let mut out = Array4::zeros((win.n, win.oh, win.ow, oc));
    for b in 0..win.n {
        for oy in 0..win.oh {
            for ox in 0..win.ow {
                for o in 0..oc {
                    let mut acc = 0f64;
                    for ky in 0..win.kh {
                        for kx in 0..win.kw {
                            let (Some(iy), Some(ix)) = (
                                Window::src(oy, ky, win.sh, win.pad_top, win.h),
                                Window::src(ox, kx, win.sw, win.pad_left, win.w),
                            ) else {
                                continue;
                            };
                            for ci in 0..win.c {
                                acc += x[[b, iy, ix, ci]] as f64 * kernel[[ky, kx, ci, o]] as f64;
                            }
                        }
                    }
                    out[[b, oy, ox, o]] = acc as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::matmul;
    use approx::assert_abs_diff_eq;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn tensorflow_same_padding_arithmetic() {
        // TF: out = ceil(in / s); pad_total = max((out - 1) * s + k - in, 0); before = total / 2.
        assert_eq!(Padding::Same.output_and_pad(28, 3, 2), Some((14, 0)));
        assert_eq!(Padding::Same.output_and_pad(14, 3, 2), Some((7, 0)));
        assert_eq!(Padding::Same.output_and_pad(14, 2, 1), Some((14, 0)));
        assert_eq!(Padding::Same.output_and_pad(5, 3, 1), Some((5, 1)));
        assert_eq!(Padding::Valid.output_and_pad(28, 3, 1), Some((26, 0)));
        assert_eq!(Padding::Valid.output_and_pad(26, 2, 2), Some((13, 0)));
        assert_eq!(Padding::Valid.output_and_pad(2, 3, 1), None);
    }

    #[test]
    fn im2col_gemm_matches_direct_convolution() {
        let mut rng = StdRng::seed_from_u64(1);
        for &(h, w, c, k, s, pad, oc) in &[
            (7, 5, 3, 3, 1, Padding::Valid, 4),
            (7, 6, 2, 3, 2, Padding::Same, 5),
            (9, 9, 1, 2, 3, Padding::Same, 3),
            (4, 4, 5, 1, 1, Padding::Valid, 2),
        ] {
            let x = Array4::from_shape_fn((2, h, w, c), |_| rng.random_range(-1.0f32..1.0));
            let kern = Array4::from_shape_fn((k, k, c, oc), |_| rng.random_range(-1.0f32..1.0));
            let win = Window::new([2, h, w, c], [k, k], [s, s], pad).unwrap();
            let cols = im2col(x.view(), &win);
            let k2 = kern.view().into_shape_with_order((k * k * c, oc)).unwrap();
            let y = matmul(cols.view(), k2);
            let want = conv2d_direct(x.view(), kern.view(), &win);
            for (a, b) in y.iter().zip(want.iter()) {
                assert_abs_diff_eq!(a, b, epsilon = 1e-5);
            }
        }
    }

    #[test]
    fn per_image_input_grad_matches_col2im_of_the_product() {
        let mut rng = StdRng::seed_from_u64(3);
        for &(n, h, w, c, k, s, pad, oc) in &[
            (3, 7, 5, 3, 3, 1, Padding::Same, 4),
            (2, 9, 8, 16, 3, 2, Padding::Same, 32),
            (1, 6, 6, 5, 2, 1, Padding::Valid, 1),
            (4, 28, 28, 16, 3, 1, Padding::Same, 16),
        ] {
            let win = Window::new([n, h, w, c], [k, k], [s, s], pad).unwrap();
            let g = Array2::from_shape_fn((win.rows(), oc), |_| rng.random_range(-1.0f32..1.0));
            let kern =
                Array2::from_shape_fn((win.patch_len(), oc), |_| rng.random_range(-1.0f32..1.0));
            let want = col2im(matmul(g.view(), kern.t()).view(), &win);
            let got = conv2d_input_grad(g.view(), kern.view(), &win);
            assert_eq!(got.shape(), want.shape());
            for (a, b) in got.iter().zip(want.iter()) {
                assert_abs_diff_eq!(a, b, epsilon = 1e-4);
            }
        }
    }

    #[test]
    fn blocked_forward_and_kernel_grad_match_the_whole_patch_matrix() {
        // Batches that are not a multiple of the block, in pools of 1 and 3 threads: equal to
        // the whole-matrix products, and bit-identical between thread counts.
        let mut rng = StdRng::seed_from_u64(4);
        for &(n, h, w, c, k, s, pad, oc) in &[
            (5, 7, 5, 3, 3, 1, Padding::Same, 4),
            (13, 9, 8, 16, 3, 2, Padding::Same, 32),
            (3, 28, 28, 16, 3, 1, Padding::Same, 16),
            (1, 6, 6, 5, 2, 1, Padding::Valid, 1),
        ] {
            let win = Window::new([n, h, w, c], [k, k], [s, s], pad).unwrap();
            let x = Array4::from_shape_fn((n, h, w, c), |_| rng.random_range(-1.0f32..1.0));
            let kern =
                Array2::from_shape_fn((win.patch_len(), oc), |_| rng.random_range(-1.0f32..1.0));
            let g = Array2::from_shape_fn((win.rows(), oc), |_| rng.random_range(-1.0f32..1.0));
            let p = im2col(x.view(), &win);
            let (want_y, want_gk) = (matmul(p.view(), kern.view()), matmul(p.t(), g.view()));
            let mut runs = Vec::new();
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let y = pool.install(|| conv2d_forward(x.view(), kern.view(), &win));
                let gk = pool.install(|| conv2d_kernel_grad(x.view(), g.view(), &win));
                for (a, b) in y.iter().zip(want_y.iter()) {
                    assert_abs_diff_eq!(a, b, epsilon = 1e-4);
                }
                for (a, b) in gk.iter().zip(want_gk.iter()) {
                    assert_abs_diff_eq!(a, b, epsilon = 1e-3);
                }
                runs.push((y, gk));
            }
            assert_eq!(runs[0], runs[1], "1 vs 3 threads");
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), g> == <x, col2im(g)> for any x, g.
        let mut rng = StdRng::seed_from_u64(2);
        let win = Window::new([2, 6, 5, 3], [3, 2], [2, 1], Padding::Same).unwrap();
        let x = Array4::from_shape_fn((2, 6, 5, 3), |_| rng.random_range(-1.0f32..1.0));
        let g = Array2::from_shape_fn((win.rows(), win.patch_len()), |_| {
            rng.random_range(-1.0f32..1.0)
        });
        let lhs: f64 = im2col(x.view(), &win)
            .iter()
            .zip(g.iter())
            .map(|(a, b)| (*a * *b) as f64)
            .sum();
        let rhs: f64 = x
            .iter()
            .zip(col2im(g.view(), &win).iter())
            .map(|(a, b)| (*a * *b) as f64)
            .sum();
        assert_abs_diff_eq!(lhs, rhs, epsilon = 1e-4);
    }
}
