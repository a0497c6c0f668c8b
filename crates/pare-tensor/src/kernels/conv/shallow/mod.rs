//! Direct convolution for shallow patches (a first layer's 3x3 window over one or three
//! channels).
//!
//! With a patch row of 9 floats, im2col writes a matrix nine times the size of the input and the
//! GEMM spends its time packing a k = 9 operand: the small CNN's first convolution is memory and
//! overhead bound, not compute bound. Here every output pixel is accumulated straight from the
//! input, output channels in blocks of 16 lanes, and bias and activation are applied as the
//! pixel is written. The backward pass multiplies the output gradient by the activation's
//! derivative in one element-wise pass and takes the kernel and bias gradients in a second,
//! recomputing patch values from the input instead of keeping a patch matrix.
//!
//! A shallow `valid` convolution followed by a max-pool with non-overlapping windows (the small
//! CNN's `Conv2D` → `MaxPooling2D(2)`) can also run fused ([`forward_pooled`],
//! [`backward_filter_pooled`]): the pool windows are reduced as their convolution outputs are
//! computed, so that output (four times the pooled one) is never written or read back, and the
//! backward pass visits only the patch that won each window.
//!
//! Two kernels: a portable one (the reference the fast one is tested against; itself tested
//! against [`super::conv2d_direct`]) and an AVX-512 one that keeps a chunk of kernel taps (or of
//! kernel-gradient accumulators) in registers across the pixels whose window lies inside the
//! input; border pixels of `same` padding go through the portable per-pixel code.

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! Stand-in off x86-64: `Kernel::Avx512` is never available there, so never dispatched.
    pub(super) use super::portable::{
        activation_grad, filter_grad_image, filter_grad_pooled_image, forward_image,
        forward_pooled_image,
    };
}
mod portable;

use super::Window;
use crate::graph::Activation;
use crate::kernels::{Kernel, best_kernel};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};
use rayon::prelude::*;
use std::ops::Range;

/// Patch rows up to this long (`kh · kw · in_channels`) go through the direct kernels. Above it
/// im2col + GEMM wins: the GEMM's packing is amortised over a deep enough k.
pub const MAX_PATCH: usize = 32;

/// Output channels per accumulator block (one AVX-512 register).
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// The kernel gradient is summed per group of this many images, then the groups in order, so the
/// result does not depend on how many threads ran the groups.
const IMAGES_PER_PART: usize = 8;

/// True when the convolution's patch rows are short enough for the direct kernels.
pub fn applies(win: &Window) -> bool {
    win.patch_len() <= MAX_PATCH
}

/// Everything the per-image kernels need about the window, worked out once per call.
struct Geometry {
    win: Window,
    /// Output channels.
    oc: usize,
    /// Patch length `kh · kw · c`.
    plen: usize,
    /// Window clipping per output row: `(ky0, ky1, iy0)`.
    rows: Vec<(usize, usize, usize)>,
    /// Window clipping per output column: `(kx0, kx1, ix0)`.
    cols: Vec<(usize, usize, usize)>,
    /// Offset of each patch element from the window's top-left input element, in kernel-row
    /// order `(ky, kx, c)`.
    xoff: Vec<usize>,
    /// Output rows whose windows lie wholly inside the input (never clipped by padding).
    inner_rows: Range<usize>,
    /// Output columns whose windows lie wholly inside the input.
    inner_cols: Range<usize>,
}

/// The sub-range of `0..len` where `full` holds; `full` holds on one interval (clipping only
/// happens at the two ends).
fn interval(len: usize, full: impl Fn(usize) -> bool) -> Range<usize> {
    match (0..len).position(&full) {
        Some(start) => {
            let end = (start..len).find(|&i| !full(i)).unwrap_or(len);
            start..end
        }
        None => 0..0,
    }
}

impl Geometry {
    fn new(win: &Window, oc: usize) -> Geometry {
        let rows: Vec<_> = (0..win.oh).map(|oy| win.ky_range(oy)).collect();
        let cols: Vec<_> = (0..win.ow).map(|ox| win.kx_range(ox)).collect();
        let mut xoff = Vec::with_capacity(win.patch_len());
        for ky in 0..win.kh {
            for kx in 0..win.kw {
                for ci in 0..win.c {
                    xoff.push((ky * win.w + kx) * win.c + ci);
                }
            }
        }
        let inner_rows = interval(win.oh, |oy| rows[oy].0 == 0 && rows[oy].1 == win.kh);
        let inner_cols = interval(win.ow, |ox| cols[ox].0 == 0 && cols[ox].1 == win.kw);
        Geometry {
            win: *win,
            oc,
            plen: win.patch_len(),
            rows,
            cols,
            xoff,
            inner_rows,
            inner_cols,
        }
    }

    /// Accumulator blocks per pixel.
    fn blocks(&self) -> usize {
        self.oc.div_ceil(LANES)
    }

    /// Floats per input image.
    fn per_in(&self) -> usize {
        self.win.h * self.win.w * self.win.c
    }

    /// Floats per output image.
    fn per_out(&self) -> usize {
        self.win.oh * self.win.ow * self.oc
    }

    /// Input offset of the window's first element inside the input for output `(oy, ox)`.
    fn base(&self, oy: usize, ox: usize) -> usize {
        (self.rows[oy].2 * self.win.w + self.cols[ox].2) * self.win.c
    }

    /// True when output `(oy, ox)`'s window lies wholly inside the input.
    fn inner(&self, oy: usize, ox: usize) -> bool {
        self.inner_rows.contains(&oy) && self.inner_cols.contains(&ox)
    }
}

/// `[plen, oc]` row-major → `[oc / LANES][plen]` blocks of lanes, zero beyond `oc`.
fn pack_kernel(k: &[f32], plen: usize, oc: usize) -> Vec<Lanes> {
    let blocks = oc.div_ceil(LANES);
    let mut out = vec![[0.0; LANES]; blocks * plen];
    for p in 0..plen {
        for o in 0..oc {
            out[(o / LANES) * plen + p][o % LANES] = k[p * oc + o];
        }
    }
    out
}

fn check_kernel(op: &str, kernel: &ArrayView4<'_, f32>, win: &Window) -> usize {
    let ks = kernel.shape();
    assert!(
        ks[..3] == [win.kh, win.kw, win.c],
        "{op}: kernel {ks:?} vs window {}x{} over {} channels",
        win.kh,
        win.kw,
        win.c
    );
    ks[3]
}

/// `act(conv2d(x, kernel) + bias)` for NHWC `x` and a `[kh, kw, in, out]` kernel, by direct
/// accumulation with the [`best_kernel`]. Any window geometry works; it pays off when
/// [`applies`] holds.
///
/// # Panics
/// If the kernel's first three axes differ from the window's, `x` is not `[n, h, w, c]` of the
/// window, or the bias length differs from the kernel's output channels.
pub fn forward(
    x: ArrayView4<'_, f32>,
    kernel: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    act: Activation,
    win: &Window,
) -> Array4<f32> {
    forward_using(best_kernel(), x, kernel, bias, act, win)
}

/// [`forward`] with an explicit kernel.
///
/// # Panics
/// As [`forward`]; also if `kernel` is not [`Kernel::available`].
pub fn forward_using(
    which: Kernel,
    x: ArrayView4<'_, f32>,
    kernel: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    act: Activation,
    win: &Window,
) -> Array4<f32> {
    assert!(which.available(), "conv2d: {which:?} kernel not available");
    let oc = check_kernel("conv2d (shallow)", &kernel, win);
    assert_eq!(
        x.shape(),
        [win.n, win.h, win.w, win.c],
        "conv2d (shallow): input vs window"
    );
    let (x, kernel) = (x.as_standard_layout(), kernel.as_standard_layout());
    let xs = x.as_slice().expect("standard layout");
    let geo = Geometry::new(win, oc);
    let packed = pack_kernel(kernel.as_slice().expect("standard layout"), geo.plen, oc);
    let bias_lanes = pack_bias(bias, oc);
    let (per_in, per_out) = (geo.per_in(), geo.per_out());
    let mut out = crate::kernels::buffers::take_any(win.n * per_out);
    let image = |(img, dst): (usize, &mut [f32])| {
        let src = &xs[img * per_in..][..per_in];
        match which {
            Kernel::Portable => portable::forward_image(&geo, src, dst, &packed, &bias_lanes, act),
            Kernel::Avx512 => avx512::forward_image(&geo, src, dst, &packed, &bias_lanes, act),
        }
    };
    if per_out > 0 {
        if out.len() >= 1 << 16 && crate::kernels::parallel_allowed() {
            out.par_chunks_mut(per_out).enumerate().for_each(image);
        } else {
            out.chunks_mut(per_out).enumerate().for_each(image);
        }
    }
    Array4::from_shape_vec((win.n, win.oh, win.ow, oc), out).expect("conv2d (shallow): shape")
}

/// Kernel gradient `[kh, kw, in, out]` and bias gradient `[out]` of
/// `y = act(conv2d(x, kernel) + bias)` given the output gradient `g`, with the
/// [`best_kernel`]. `g` is multiplied by the activation's derivative in place (read off `y`,
/// as the GEMM path does), so an input gradient can be taken from it afterwards.
///
/// # Panics
/// If `y` and `g` are not both `[n, oh, ow, oc]` of the window, or `x` is not the window's
/// input.
pub fn backward_filter(
    x: ArrayView4<'_, f32>,
    y: &[f32],
    g: &mut [f32],
    act: Activation,
    win: &Window,
    oc: usize,
) -> (Array4<f32>, Array1<f32>) {
    backward_filter_using(best_kernel(), x, y, g, act, win, oc)
}

/// [`backward_filter`] with an explicit kernel.
///
/// # Panics
/// As [`backward_filter`]; also if `kernel` is not [`Kernel::available`].
pub fn backward_filter_using(
    which: Kernel,
    x: ArrayView4<'_, f32>,
    y: &[f32],
    g: &mut [f32],
    act: Activation,
    win: &Window,
    oc: usize,
) -> (Array4<f32>, Array1<f32>) {
    assert!(which.available(), "conv2d: {which:?} kernel not available");
    assert_eq!(
        x.shape(),
        [win.n, win.h, win.w, win.c],
        "conv2d backward (shallow): input vs window"
    );
    let geo = Geometry::new(win, oc);
    let (per_in, per_out) = (geo.per_in(), geo.per_out());
    assert!(
        y.len() == win.n * per_out && g.len() == y.len(),
        "conv2d backward (shallow): output {} and gradient {} for {} x {}x{}x{}",
        y.len(),
        g.len(),
        win.n,
        win.oh,
        win.ow,
        oc
    );
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let (plen, blocks) = (geo.plen, geo.blocks());
    // One part of up to IMAGES_PER_PART images: (kernel-gradient lanes [blocks][plen],
    // bias-gradient lanes [blocks]).
    let part = |(pi, (gp, yp)): (usize, (&mut [f32], &[f32]))| {
        let mut gk = vec![[0.0f32; LANES]; blocks * plen];
        let mut gb = vec![[0.0f32; LANES]; blocks];
        for (i, (gi, yi)) in gp
            .chunks_mut(per_out.max(1))
            .zip(yp.chunks(per_out.max(1)))
            .enumerate()
        {
            let src = &xs[(pi * IMAGES_PER_PART + i) * per_in..][..per_in];
            match which {
                Kernel::Portable => {
                    portable::activation_grad(gi, yi, act);
                    portable::filter_grad_image(&geo, src, gi, &mut gk, &mut gb);
                }
                Kernel::Avx512 => {
                    avx512::activation_grad(gi, yi, act);
                    avx512::filter_grad_image(&geo, src, gi, &mut gk, &mut gb);
                }
            }
        }
        (gk, gb)
    };
    let chunk = (IMAGES_PER_PART * per_out).max(1);
    let jobs = g.chunks_mut(chunk).zip(y.chunks(chunk)).enumerate();
    let parts: Vec<(Vec<Lanes>, Vec<Lanes>)> =
        if win.rows() * plen >= 1 << 16 && crate::kernels::parallel_allowed() {
            jobs.collect::<Vec<_>>().into_par_iter().map(part).collect()
        } else {
            jobs.map(part).collect()
        };
    sum_parts(&parts, win, oc)
}

/// Bias `[oc]` as lanes per channel block, zero beyond `oc` (all zero without a bias).
fn pack_bias(bias: Option<ArrayView1<'_, f32>>, oc: usize) -> Vec<Lanes> {
    let mut lanes = vec![[0.0; LANES]; oc.div_ceil(LANES)];
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            oc,
            "conv2d (shallow): bias vs {oc} output channels"
        );
        for (o, &v) in b.iter().enumerate() {
            lanes[o / LANES][o % LANES] = v;
        }
    }
    lanes
}

/// Adds the per-part gradient lanes, in part order, into the kernel `[kh, kw, c, oc]` and bias
/// `[oc]` gradients.
fn sum_parts(
    parts: &[(Vec<Lanes>, Vec<Lanes>)],
    win: &Window,
    oc: usize,
) -> (Array4<f32>, Array1<f32>) {
    let plen = win.patch_len();
    let mut gk = Array4::zeros((win.kh, win.kw, win.c, oc));
    let mut gb = Array1::zeros(oc);
    let gks = gk.as_slice_mut().expect("fresh array");
    let gbs = gb.as_slice_mut().expect("fresh array");
    for (pk, pb) in parts {
        for p in 0..plen {
            for o in 0..oc {
                gks[p * oc + o] += pk[(o / LANES) * plen + p][o % LANES];
            }
        }
        for o in 0..oc {
            gbs[o] += pb[o / LANES][o % LANES];
        }
    }
    (gk, gb)
}

/// Largest patch the fused convolution + max-pool takes: its kernel rows (or gradient
/// accumulators) stay in registers for a whole image.
pub const MAX_POOLED_PATCH: usize = 16;

/// True when `max_pool(act(conv2d(x) + b))` can run as one pass ([`forward_pooled`]): a shallow
/// convolution (patch of at most [`MAX_POOLED_PATCH`]) whose windows all lie inside the input,
/// followed by pool windows (`pool`, over the convolution's output) that neither overlap nor
/// reach outside it and have at most 256 elements. Keras' `Conv2D(valid)` → `MaxPooling2D(2)`
/// is such a pair.
pub fn pool_fusable(conv: &Window, pool: &Window) -> bool {
    let conv_inside = conv.pad_top == 0
        && conv.pad_left == 0
        && conv.oh > 0
        && conv.ow > 0
        && (conv.oh - 1) * conv.sh + conv.kh <= conv.h
        && (conv.ow - 1) * conv.sw + conv.kw <= conv.w;
    let pool_tiles = pool.n == conv.n
        && pool.h == conv.oh
        && pool.w == conv.ow
        && pool.sh == pool.kh
        && pool.sw == pool.kw
        && pool.pad_top == 0
        && pool.pad_left == 0
        && pool.oh * pool.kh <= pool.h
        && pool.ow * pool.kw <= pool.w
        && pool.kh * pool.kw <= 1 << 8;
    conv.patch_len() <= MAX_POOLED_PATCH && conv_inside && pool_tiles
}

/// `max_pool(act(conv2d(x, kernel) + bias))` in one pass, with the [`best_kernel`]: each pool
/// window's convolution outputs are computed and reduced at once, so the convolution's output
/// is never stored. Also returns the arg-max of each pooled output, as
/// [`crate::kernels::pool::max_pool_with_argmax`] records it; values and arg-max are the same
/// bits as [`forward`] followed by that pool with the same kernel.
///
/// # Panics
/// If [`pool_fusable`] does not hold, or as [`forward`].
pub fn forward_pooled(
    x: ArrayView4<'_, f32>,
    kernel: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    act: Activation,
    conv: &Window,
    pool: &Window,
) -> (Array4<f32>, Vec<u8>) {
    forward_pooled_using(best_kernel(), x, kernel, bias, act, conv, pool)
}

/// [`forward_pooled`] with an explicit kernel.
///
/// # Panics
/// As [`forward_pooled`]; also if `kernel` is not [`Kernel::available`].
pub fn forward_pooled_using(
    which: Kernel,
    x: ArrayView4<'_, f32>,
    kernel: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    act: Activation,
    conv: &Window,
    pool: &Window,
) -> (Array4<f32>, Vec<u8>) {
    assert!(which.available(), "conv2d: {which:?} kernel not available");
    assert!(
        pool_fusable(conv, pool),
        "conv2d + max_pool: {conv:?} and {pool:?} cannot be fused"
    );
    let oc = check_kernel("conv2d + max_pool", &kernel, conv);
    assert!(
        x.shape() == [conv.n, conv.h, conv.w, conv.c] && pool.c == oc,
        "conv2d + max_pool: input {:?} vs windows",
        x.shape()
    );
    let (x, kernel) = (x.as_standard_layout(), kernel.as_standard_layout());
    let xs = x.as_slice().expect("standard layout");
    let geo = Geometry::new(conv, oc);
    let packed = pack_kernel(kernel.as_slice().expect("standard layout"), geo.plen, oc);
    let bias_lanes = pack_bias(bias, oc);
    let per_in = geo.per_in();
    let per_out = pool.oh * pool.ow * oc;
    let len = conv.n * per_out;
    let mut out = crate::kernels::buffers::take_any(len);
    let mut argmax = vec![0u8; len];
    let image = |(img, (dst, arg)): (usize, (&mut [f32], &mut [u8]))| {
        let src = &xs[img * per_in..][..per_in];
        let k = (&packed[..], &bias_lanes[..]);
        match which {
            Kernel::Portable => portable::forward_pooled_image(&geo, pool, src, dst, arg, k, act),
            Kernel::Avx512 => avx512::forward_pooled_image(&geo, pool, src, dst, arg, k, act),
        }
    };
    if per_out > 0 {
        let jobs = out.chunks_mut(per_out).zip(argmax.chunks_mut(per_out));
        if conv.rows() * oc >= 1 << 16 && crate::kernels::parallel_allowed() {
            jobs.collect::<Vec<_>>()
                .into_par_iter()
                .enumerate()
                .for_each(image);
        } else {
            jobs.enumerate().for_each(image);
        }
    }
    let y = Array4::from_shape_vec((pool.n, pool.oh, pool.ow, oc), out)
        .expect("conv2d + max_pool: shape");
    (y, argmax)
}

/// Kernel gradient `[kh, kw, in, out]` and bias gradient `[out]` of
/// `max_pool(act(conv2d(x, kernel) + bias))`, from `gp`, the gradient of the pooled output
/// already multiplied by the activation's derivative at the pooled values, and the arg-max
/// [`forward_pooled`] recorded; with the [`best_kernel`]. Only the winning convolution output
/// of each pool window has a gradient, so only its patch is visited.
///
/// # Panics
/// If [`pool_fusable`] does not hold, `x` is not the convolution's input, or `gp` and `argmax`
/// do not hold one entry per pooled output.
pub fn backward_filter_pooled(
    x: ArrayView4<'_, f32>,
    gp: &[f32],
    argmax: &[u8],
    conv: &Window,
    pool: &Window,
) -> (Array4<f32>, Array1<f32>) {
    backward_filter_pooled_using(best_kernel(), x, gp, argmax, conv, pool)
}

/// [`backward_filter_pooled`] with an explicit kernel.
///
/// # Panics
/// As [`backward_filter_pooled`]; also if `kernel` is not [`Kernel::available`].
pub fn backward_filter_pooled_using(
    which: Kernel,
    x: ArrayView4<'_, f32>,
    gp: &[f32],
    argmax: &[u8],
    conv: &Window,
    pool: &Window,
) -> (Array4<f32>, Array1<f32>) {
    assert!(which.available(), "conv2d: {which:?} kernel not available");
    assert!(
        pool_fusable(conv, pool),
        "conv2d + max_pool backward: {conv:?} and {pool:?} cannot be fused"
    );
    let oc = pool.c;
    let per_out = pool.oh * pool.ow * oc;
    assert!(
        x.shape() == [conv.n, conv.h, conv.w, conv.c]
            && gp.len() == conv.n * per_out
            && argmax.len() == gp.len(),
        "conv2d + max_pool backward: input {:?}, gradient {} and arg-max {} for {} x {}x{}x{}",
        x.shape(),
        gp.len(),
        argmax.len(),
        pool.n,
        pool.oh,
        pool.ow,
        oc
    );
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let geo = Geometry::new(conv, oc);
    let (per_in, plen, blocks) = (geo.per_in(), geo.plen, geo.blocks());
    let part = |(pi, (gpp, ap)): (usize, (&[f32], &[u8]))| {
        let mut gk = vec![[0.0f32; LANES]; blocks * plen];
        let mut gb = vec![[0.0f32; LANES]; blocks];
        let step = per_out.max(1);
        for (i, (gi, ai)) in gpp.chunks(step).zip(ap.chunks(step)).enumerate() {
            let src = &xs[(pi * IMAGES_PER_PART + i) * per_in..][..per_in];
            let grads = (&mut gk[..], &mut gb[..]);
            match which {
                Kernel::Portable => {
                    portable::filter_grad_pooled_image(&geo, pool, src, gi, ai, grads)
                }
                Kernel::Avx512 => avx512::filter_grad_pooled_image(&geo, pool, src, gi, ai, grads),
            }
        }
        (gk, gb)
    };
    let chunk = (IMAGES_PER_PART * per_out).max(1);
    let jobs = gp.chunks(chunk).zip(argmax.chunks(chunk)).enumerate();
    let parts: Vec<(Vec<Lanes>, Vec<Lanes>)> =
        if conv.rows() * plen >= 1 << 16 && crate::kernels::parallel_allowed() {
            jobs.collect::<Vec<_>>().into_par_iter().map(part).collect()
        } else {
            jobs.map(part).collect()
        };
    sum_parts(&parts, conv, oc)
}

#[cfg(test)]
mod tests {
    use super::super::{Padding, conv2d_direct};
    use super::*;
    use approx::assert_abs_diff_eq;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random4(rng: &mut StdRng, s: [usize; 4]) -> Array4<f32> {
        Array4::from_shape_fn(s, |_| rng.random_range(-1.0f32..1.0))
    }

    fn kernels() -> Vec<Kernel> {
        [Kernel::Portable, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }

    const ACTS: [Activation; 3] = [
        Activation::Linear,
        Activation::Relu,
        Activation::LeakyRelu(0.2),
    ];

    /// Geometries with awkward sizes: one channel, 1/7/12/17/33 outputs (partial lane blocks),
    /// 1 to 25 taps (tap chunks of 8 and remainders), strides, `same` padding with border
    /// pixels, a batch that is not a multiple of the image grouping.
    /// Input shape, window, stride, padding, output channels.
    type Case = ([usize; 4], [usize; 2], usize, Padding, usize);

    const CASES: &[Case] = &[
        ([1, 1, 1, 1], [1, 1], 1, Padding::Valid, 1),
        ([2, 7, 7, 1], [3, 3], 1, Padding::Valid, 7),
        ([9, 9, 8, 1], [3, 3], 1, Padding::Valid, 12),
        ([3, 7, 6, 3], [3, 3], 2, Padding::Same, 17),
        ([2, 5, 9, 2], [2, 3], 3, Padding::Same, 33),
        ([17, 6, 6, 4], [2, 2], 1, Padding::Valid, 16),
        ([1, 65, 63, 1], [5, 5], 1, Padding::Same, 5),
        ([2, 3, 4, 1], [5, 5], 1, Padding::Same, 3),
        ([1, 8, 8, 2], [4, 4], 1, Padding::Valid, 1),
    ];

    #[test]
    fn forward_matches_the_reference_convolution() {
        let mut rng = StdRng::seed_from_u64(21);
        for &(xs, [kh, kw], s, pad, oc) in CASES {
            let x = random4(&mut rng, xs);
            let k = random4(&mut rng, [kh, kw, xs[3], oc]);
            let b = Array1::from_shape_fn(oc, |_| rng.random_range(-1.0f32..1.0));
            let win = Window::new(xs, [kh, kw], [s, s], pad).unwrap();
            let want = conv2d_direct(x.view(), k.view(), &win);
            for which in kernels() {
                for act in ACTS {
                    let y = forward_using(which, x.view(), k.view(), Some(b.view()), act, &win);
                    assert_eq!(y.shape(), want.shape());
                    for (got, (idx, w)) in y.iter().zip(want.indexed_iter()) {
                        let w = act.apply(w + b[idx.3]);
                        // f32 sums of at most 32 products of values in [-1, 1].
                        assert_abs_diff_eq!(*got, w, epsilon = 1e-5);
                    }
                }
                let y = forward_using(which, x.view(), k.view(), None, Activation::Linear, &win);
                for (got, w) in y.iter().zip(want.iter()) {
                    assert_abs_diff_eq!(*got, *w, epsilon = 1e-5);
                }
            }
        }
    }

    #[test]
    fn backward_filter_matches_patch_matrix_products() {
        let mut rng = StdRng::seed_from_u64(22);
        for &(xs, [kh, kw], s, pad, oc) in CASES {
            let x = random4(&mut rng, xs);
            let k = random4(&mut rng, [kh, kw, xs[3], oc]);
            let win = Window::new(xs, [kh, kw], [s, s], pad).unwrap();
            for act in ACTS {
                let y = forward(x.view(), k.view(), None, act, &win);
                let g0 = random4(&mut rng, [win.n, win.oh, win.ow, oc]);
                // Reference: gz = act'(y) ⊙ g, gk = im2col(x)ᵀ · gz and gb = Σ gz, in f64.
                let gz = g0.mapv(|v| v as f64) * y.mapv(|y| act.backprop(1.0, y) as f64);
                let gz2 = gz.to_shape((win.rows(), oc)).unwrap();
                let cols = super::super::im2col(x.view(), &win).mapv(|v| v as f64);
                let want_k = cols.t().dot(&gz2);
                let want_b = gz2.sum_axis(ndarray::Axis(0));
                for which in kernels() {
                    let mut g = g0.as_slice().unwrap().to_vec();
                    let ys = y.as_slice().unwrap();
                    let (gk, gb) =
                        backward_filter_using(which, x.view(), ys, &mut g, act, &win, oc);
                    for (got, want) in g.iter().zip(gz.iter()) {
                        assert_abs_diff_eq!(*got as f64, *want, epsilon = 1e-6);
                    }
                    let gk2 = gk.to_shape((win.patch_len(), oc)).unwrap();
                    // f32 sums of up to ~4,000 products in [-1, 1].
                    let tol = 1e-5 * win.rows() as f64;
                    for (got, want) in gk2.iter().zip(want_k.iter()) {
                        assert_abs_diff_eq!(*got as f64, *want, epsilon = tol);
                    }
                    for (got, want) in gb.iter().zip(want_b.iter()) {
                        assert_abs_diff_eq!(*got as f64, *want, epsilon = tol);
                    }
                }
            }
        }
    }

    #[test]
    fn avx512_matches_portable() {
        // The AVX-512 path against the portable one at tight tolerance, on the small CNN's
        // first layer.
        if !Kernel::Avx512.available() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(24);
        let xs = [5, 28, 28, 1];
        let x = random4(&mut rng, xs);
        let k = random4(&mut rng, [3, 3, 1, 12]);
        let b = Array1::from_shape_fn(12, |_| rng.random_range(-0.5f32..0.5));
        let win = Window::new(xs, [3, 3], [1, 1], Padding::Valid).unwrap();
        for act in ACTS {
            let run = |which| {
                let y = forward_using(which, x.view(), k.view(), Some(b.view()), act, &win);
                let mut g = y.mapv(|v| v.sin());
                let gs = g.as_slice_mut().unwrap();
                let grads = backward_filter_using(
                    which,
                    x.view(),
                    y.as_slice().unwrap(),
                    gs,
                    act,
                    &win,
                    12,
                );
                (y, g, grads)
            };
            let (y0, g0, (k0, b0)) = run(Kernel::Portable);
            let (y1, g1, (k1, b1)) = run(Kernel::Avx512);
            for (p, q) in y0.iter().zip(y1.iter()) {
                assert_abs_diff_eq!(p, q, epsilon = 1e-6);
            }
            for (p, q) in g0.iter().zip(g1.iter()) {
                assert_abs_diff_eq!(p, q, epsilon = 1e-6);
            }
            // Sums of ~3,400 terms, in a different order (per-image register accumulators):
            // agree to f32 rounding of the sum, relative.
            for (p, q) in k0.iter().zip(k1.iter()).chain(b0.iter().zip(b1.iter())) {
                approx::assert_relative_eq!(p, q, epsilon = 1e-3, max_relative = 1e-4);
            }
        }
    }

    #[test]
    fn parallel_and_sequential_results_are_bit_identical() {
        // A batch big enough for the parallel path: the fixed image grouping makes the sum
        // order independent of threads.
        let mut rng = StdRng::seed_from_u64(23);
        let xs = [40, 28, 28, 1];
        let x = random4(&mut rng, xs);
        let k = random4(&mut rng, [3, 3, 1, 12]);
        let win = Window::new(xs, [3, 3], [1, 1], Padding::Valid).unwrap();
        let y = forward(x.view(), k.view(), None, Activation::Relu, &win);
        let g0 = random4(&mut rng, [win.n, win.oh, win.ow, 12]);
        let run = || {
            let mut g = g0.as_slice().unwrap().to_vec();
            let ys = y.as_slice().unwrap();
            let out = backward_filter(x.view(), ys, &mut g, Activation::Relu, &win, 12);
            (out, g)
        };
        let par = run();
        let seq = crate::kernels::with_sequential_kernels(run);
        assert_eq!(par, seq);
        let y_seq = crate::kernels::with_sequential_kernels(|| {
            forward(x.view(), k.view(), None, Activation::Relu, &win)
        });
        assert_eq!(y, y_seq);
    }

    /// Convolution input, window, stride, output channels, pool window: fusable pairs with
    /// awkward sizes (leftover rows and columns the pool skips, partial lane blocks, 1 to 16
    /// patch elements, strides, a batch that is not a multiple of the image grouping).
    type PooledCase = ([usize; 4], [usize; 2], usize, usize, [usize; 2]);

    const POOLED: &[PooledCase] = &[
        ([1, 1, 1, 1], [1, 1], 1, 1, [1, 1]),
        ([9, 28, 28, 1], [3, 3], 1, 12, [2, 2]),
        ([3, 9, 8, 1], [3, 3], 1, 7, [2, 2]),
        ([2, 11, 10, 1], [4, 4], 1, 17, [3, 2]),
        ([2, 13, 13, 3], [2, 2], 2, 33, [2, 2]),
        ([1, 7, 7, 2], [2, 3], 1, 1, [3, 3]),
    ];

    fn pooled_case(
        rng: &mut StdRng,
        &(xs, k, s, oc, p): &PooledCase,
    ) -> (Array4<f32>, Array4<f32>, Array1<f32>, Window, Window) {
        let x = random4(rng, xs);
        let kern = random4(rng, [k[0], k[1], xs[3], oc]);
        let b = Array1::from_shape_fn(oc, |_| rng.random_range(-0.5f32..0.5));
        let conv = Window::new(xs, k, [s, s], Padding::Valid).unwrap();
        let pool = Window::new([xs[0], conv.oh, conv.ow, oc], p, p, Padding::Valid).unwrap();
        assert!(pool_fusable(&conv, &pool), "{xs:?} {k:?} {p:?}");
        (x, kern, b, conv, pool)
    }

    #[test]
    fn fused_pool_is_the_same_bits_as_conv_then_pool() {
        use crate::kernels::pool::max_pool_with_argmax_using;
        let mut rng = StdRng::seed_from_u64(25);
        for case in POOLED {
            let (x, k, b, conv, pool) = pooled_case(&mut rng, case);
            for which in kernels() {
                for act in ACTS {
                    let y = forward_using(which, x.view(), k.view(), Some(b.view()), act, &conv);
                    let (want, want_arg) = max_pool_with_argmax_using(which, y.view(), &pool);
                    let (got, arg) = forward_pooled_using(
                        which,
                        x.view(),
                        k.view(),
                        Some(b.view()),
                        act,
                        &conv,
                        &pool,
                    );
                    assert_eq!(got, want, "{which:?} {act:?} {case:?}");
                    assert_eq!(arg, want_arg, "{which:?} {act:?} {case:?}");
                }
            }
        }
    }

    #[test]
    fn fused_pool_gradients_match_the_scattered_reference() {
        use crate::kernels::pool::max_pool_backward_argmax_using;
        let mut rng = StdRng::seed_from_u64(26);
        for case in POOLED {
            let (x, k, b, conv, pool) = pooled_case(&mut rng, case);
            let oc = pool.c;
            let (_, arg) = forward_pooled(
                x.view(),
                k.view(),
                Some(b.view()),
                Activation::Relu,
                &conv,
                &pool,
            );
            let gp = random4(&mut rng, [pool.n, pool.oh, pool.ow, oc]);
            // Reference: scatter to the convolution output, then im2col(x)ᵀ · gz in f64.
            let gz = max_pool_backward_argmax_using(Kernel::Portable, &arg, gp.view(), &pool);
            let gz2 = gz
                .mapv(|v| v as f64)
                .into_shape_with_order((conv.rows(), oc))
                .unwrap();
            let cols = super::super::im2col(x.view(), &conv).mapv(|v| v as f64);
            let want_k = cols.t().dot(&gz2);
            let want_b = gz2.sum_axis(ndarray::Axis(0));
            let gs = gp.as_slice().unwrap();
            for which in kernels() {
                let (gk, gb) =
                    backward_filter_pooled_using(which, x.view(), gs, &arg, &conv, &pool);
                let gk2 = gk.to_shape((conv.patch_len(), oc)).unwrap();
                // f32 sums of up to ~2,000 products in [-1, 1].
                let tol = 1e-5 * pool.rows() as f64 + 1e-6;
                for (got, want) in gk2.iter().zip(want_k.iter()) {
                    assert_abs_diff_eq!(*got as f64, *want, epsilon = tol);
                }
                for (got, want) in gb.iter().zip(want_b.iter()) {
                    assert_abs_diff_eq!(*got as f64, *want, epsilon = tol);
                }
            }
        }
    }

    #[test]
    fn only_valid_convolutions_with_tiling_pools_fuse() {
        let w = |s: [usize; 4], k, st, p| Window::new(s, k, st, p).unwrap();
        let conv = w([2, 28, 28, 1], [3, 3], [1, 1], Padding::Valid);
        let pool = |k, st, p| w([2, 26, 26, 12], k, st, p);
        assert!(pool_fusable(&conv, &pool([2, 2], [2, 2], Padding::Valid)));
        assert!(pool_fusable(&conv, &pool([3, 3], [3, 3], Padding::Valid)));
        // Overlapping or padded pool windows, a padded convolution, a deep patch: no.
        assert!(!pool_fusable(&conv, &pool([2, 2], [1, 1], Padding::Valid)));
        assert!(!pool_fusable(&conv, &pool([3, 3], [3, 3], Padding::Same)));
        let same = w([2, 28, 28, 1], [3, 3], [1, 1], Padding::Same);
        assert!(!pool_fusable(
            &same,
            &w([2, 28, 28, 12], [2, 2], [2, 2], Padding::Valid)
        ));
        let deep = w([2, 28, 28, 2], [3, 3], [1, 1], Padding::Valid);
        assert!(!pool_fusable(&deep, &pool([2, 2], [2, 2], Padding::Valid)));
        // The pool must be over this convolution's output.
        assert!(!pool_fusable(
            &conv,
            &w([2, 27, 26, 12], [2, 2], [2, 2], Padding::Valid)
        ));
    }

    #[test]
    fn inner_pixels_are_the_unclipped_windows() {
        let win = Window::new([1, 7, 6, 2], [3, 3], [2, 2], Padding::Same).unwrap();
        let geo = Geometry::new(&win, 4);
        for oy in 0..win.oh {
            for ox in 0..win.ow {
                let (ky0, ky1, _) = win.ky_range(oy);
                let (kx0, kx1, _) = win.kx_range(ox);
                let full = ky0 == 0 && ky1 == 3 && kx0 == 0 && kx1 == 3;
                assert_eq!(geo.inner(oy, ox), full, "({oy}, {ox})");
            }
        }
    }
}
