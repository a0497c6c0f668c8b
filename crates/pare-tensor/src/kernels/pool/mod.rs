//! Max pooling over NHWC batches.
//!
//! [`max_pool`] and [`max_pool_backward`] are the plain kernels (inference, and the reference).
//! Training records each output's winning window element in the forward pass
//! ([`max_pool_with_argmax`]) so the backward pass is a scatter; those two run a portable or an
//! AVX-512 kernel (channels in 16-lane blocks, masks for the rest), which give the same bits.

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! Stand-in off x86-64: `Kernel::Avx512` is never available there, so never dispatched.
    pub(super) use super::portable::{argmax_backward_image, argmax_forward_image};
}
mod portable;

use super::conv::Window;
use super::{Kernel, best_kernel};
use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

/// Max-pools `x`. Padding positions never win, as in TensorFlow (they count as -inf).
pub fn max_pool(x: ArrayView4<'_, f32>, win: &Window) -> Array4<f32> {
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let c = win.c;
    let per_out = (win.oh * win.ow * c).max(1);
    let mut out = super::buffers::take_any(win.n * win.oh * win.ow * c);
    let pool = |(img, o): (usize, &mut [f32])| {
        let base = img * win.h * win.w * c;
        for oy in 0..win.oh {
            let (ky0, ky1, iy0) = win.ky_range(oy);
            for ox in 0..win.ow {
                let (kx0, kx1, ix0) = win.kx_range(ox);
                let o = &mut o[(oy * win.ow + ox) * c..][..c];
                let first = base + (iy0 * win.w + ix0) * c;
                o.copy_from_slice(&xs[first..first + c]);
                for iy in iy0..iy0 + (ky1 - ky0) {
                    for ix in ix0..ix0 + (kx1 - kx0) {
                        let src = base + (iy * win.w + ix) * c;
                        // A plain max over equal-length slices vectorises (maxps).
                        for (o, &v) in o.iter_mut().zip(&xs[src..src + c]) {
                            *o = if v > *o { v } else { *o };
                        }
                    }
                }
            }
        }
    };
    if out.len() >= 1 << 16 && super::parallel_allowed() {
        out.par_chunks_mut(per_out).enumerate().for_each(pool);
    } else {
        out.chunks_mut(per_out).enumerate().for_each(pool);
    }
    Array4::from_shape_vec((win.n, win.oh, win.ow, c), out).expect("max_pool: shape")
}

/// Gradient of [`max_pool`]: each output's gradient goes to the first window element equal to
/// the maximum (TensorFlow's choice on ties). Finding the arg-max here, not in the forward pass,
/// keeps inference a plain vectorised max.
pub fn max_pool_backward(
    x: ArrayView4<'_, f32>,
    y: ArrayView4<'_, f32>,
    g: ArrayView4<'_, f32>,
    win: &Window,
) -> Array4<f32> {
    let (x, y, g) = (
        x.as_standard_layout(),
        y.as_standard_layout(),
        g.as_standard_layout(),
    );
    let (xs, ys, gs) = (
        x.as_slice().expect("standard layout"),
        y.as_slice().expect("standard layout"),
        g.as_slice().expect("standard layout"),
    );
    let c = win.c;
    let per_in = (win.h * win.w * c).max(1);
    let per_out = win.oh * win.ow * c;
    let mut gx = super::buffers::take_zeroed(win.n * win.h * win.w * c);
    let route = |(img, gxi): (usize, &mut [f32])| {
        let xi = &xs[img * per_in..][..per_in];
        // Per channel: has this output's gradient been routed yet? Scanning window positions
        // outside and contiguous channels inside keeps the loads sequential.
        let mut pending = vec![0f32; c];
        for oy in 0..win.oh {
            let (ky0, ky1, iy0) = win.ky_range(oy);
            for ox in 0..win.ow {
                let (kx0, kx1, ix0) = win.kx_range(ox);
                let at = img * per_out + (oy * win.ow + ox) * c;
                let (m, gv) = (&ys[at..at + c], &gs[at..at + c]);
                pending.fill(1.0);
                for iy in iy0..iy0 + (ky1 - ky0) {
                    for ix in ix0..ix0 + (kx1 - kx0) {
                        let i = (iy * win.w + ix) * c;
                        let (xw, gw) = (&xi[i..i + c], &mut gxi[i..i + c]);
                        for ch in 0..c {
                            let hit = if xw[ch] == m[ch] { pending[ch] } else { 0.0 };
                            gw[ch] += hit * gv[ch];
                            pending[ch] -= hit;
                        }
                    }
                }
            }
        }
    };
    if gx.len() >= 1 << 16 && super::parallel_allowed() {
        gx.par_chunks_mut(per_in).enumerate().for_each(route);
    } else {
        gx.chunks_mut(per_in).enumerate().for_each(route);
    }
    Array4::from_shape_vec((win.n, win.h, win.w, c), gx).expect("max_pool_backward: shape")
}

/// True when a window has few enough elements for [`max_pool_with_argmax`] to record the winner
/// of each output in a `u8`.
pub fn argmax_fits(win: &Window) -> bool {
    win.kh * win.kw <= 1 << 8
}

/// [`max_pool`] that also records which window element won each output, as `dy · kw + dx`
/// from the window's first element inside the input (the first maximum in row-major window
/// order, TensorFlow's choice on ties). Training graphs use it so that the backward pass is a
/// scatter ([`max_pool_backward_argmax`]) instead of a second scan of every window. Runs the
/// [`best_kernel`].
///
/// # Panics
/// If the window does not pass [`argmax_fits`].
pub fn max_pool_with_argmax(x: ArrayView4<'_, f32>, win: &Window) -> (Array4<f32>, Vec<u8>) {
    max_pool_with_argmax_using(best_kernel(), x, win)
}

/// [`max_pool_with_argmax`] with an explicit kernel; every kernel gives the same bits.
///
/// # Panics
/// As [`max_pool_with_argmax`]; also if `kernel` is not [`Kernel::available`].
pub fn max_pool_with_argmax_using(
    kernel: Kernel,
    x: ArrayView4<'_, f32>,
    win: &Window,
) -> (Array4<f32>, Vec<u8>) {
    assert!(
        kernel.available(),
        "max_pool: {kernel:?} kernel not available"
    );
    assert!(
        argmax_fits(win),
        "max_pool: {}x{} window too large to record arg-max positions",
        win.kh,
        win.kw
    );
    assert_eq!(
        x.shape(),
        [win.n, win.h, win.w, win.c],
        "max_pool: input vs window"
    );
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let per_in = win.h * win.w * win.c;
    let per_out = (win.oh * win.ow * win.c).max(1);
    let len = win.n * win.oh * win.ow * win.c;
    let mut out = super::buffers::take_any(len);
    let mut argmax = vec![0u8; len];
    let clips = Clips::new(win);
    let pool = |(img, (o, a)): (usize, (&mut [f32], &mut [u8]))| {
        let src = &xs[img * per_in..][..per_in];
        match kernel {
            Kernel::Portable => portable::argmax_forward_image(win, &clips, src, o, a),
            Kernel::Avx512 => avx512::argmax_forward_image(win, &clips, src, o, a),
        }
    };
    let jobs = out.chunks_mut(per_out).zip(argmax.chunks_mut(per_out));
    if len >= 1 << 16 && super::parallel_allowed() {
        jobs.collect::<Vec<_>>()
            .into_par_iter()
            .enumerate()
            .for_each(pool);
    } else {
        jobs.enumerate().for_each(pool);
    }
    let y = Array4::from_shape_vec((win.n, win.oh, win.ow, win.c), out).expect("max_pool: shape");
    (y, argmax)
}

/// Gradient of [`max_pool`] from the positions [`max_pool_with_argmax`] recorded: each output's
/// gradient is added to its winning input. Equal to [`max_pool_backward`], bit for bit;
/// `argmax` must come from [`max_pool_with_argmax`] with the same window. Runs the
/// [`best_kernel`].
///
/// # Panics
/// If `argmax` and `g` do not both hold one entry per output of the window.
pub fn max_pool_backward_argmax(
    argmax: &[u8],
    g: ArrayView4<'_, f32>,
    win: &Window,
) -> Array4<f32> {
    max_pool_backward_argmax_using(best_kernel(), argmax, g, win)
}

/// [`max_pool_backward_argmax`] with an explicit kernel; every kernel gives the same bits.
///
/// # Panics
/// As [`max_pool_backward_argmax`]; also if `kernel` is not [`Kernel::available`].
pub fn max_pool_backward_argmax_using(
    kernel: Kernel,
    argmax: &[u8],
    g: ArrayView4<'_, f32>,
    win: &Window,
) -> Array4<f32> {
    assert!(
        kernel.available(),
        "max_pool: {kernel:?} kernel not available"
    );
    let c = win.c;
    let per_out = win.oh * win.ow * c;
    assert!(
        g.shape() == [win.n, win.oh, win.ow, c] && argmax.len() == g.len(),
        "max_pool backward: gradient {:?} and {} positions for a {}x{}x{}x{} output",
        g.shape(),
        argmax.len(),
        win.n,
        win.oh,
        win.ow,
        c
    );
    let g = g.as_standard_layout();
    let gs = g.as_slice().expect("standard layout");
    let per_in = (win.h * win.w * c).max(1);
    let tiles = tiles(win);
    let len = win.n * win.h * win.w * c;
    let mut gx = if tiles {
        super::buffers::take_any(len)
    } else {
        super::buffers::take_zeroed(len)
    };
    let clips = Clips::new(win);
    let route = |(img, gxi): (usize, &mut [f32])| {
        let (a, gv) = (
            &argmax[img * per_out..][..per_out],
            &gs[img * per_out..][..per_out],
        );
        match kernel {
            Kernel::Portable => portable::argmax_backward_image(win, &clips, a, gv, gxi, tiles),
            Kernel::Avx512 => avx512::argmax_backward_image(win, &clips, a, gv, gxi, tiles),
        }
    };
    if len >= 1 << 16 && super::parallel_allowed() {
        gx.par_chunks_mut(per_in).enumerate().for_each(route);
    } else {
        gx.chunks_mut(per_in).enumerate().for_each(route);
    }
    Array4::from_shape_vec((win.n, win.h, win.w, c), gx).expect("max_pool backward: shape")
}

/// Window clipping per output row and column, worked out once per call: the first input
/// row (column) inside the window and how many window rows (columns) lie inside the input.
struct Clips {
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
}

impl Clips {
    fn new(win: &Window) -> Clips {
        Clips {
            rows: (0..win.oh)
                .map(|oy| {
                    let (k0, k1, i0) = win.ky_range(oy);
                    (i0, k1 - k0)
                })
                .collect(),
            cols: (0..win.ow)
                .map(|ox| {
                    let (k0, k1, i0) = win.kx_range(ox);
                    (i0, k1 - k0)
                })
                .collect(),
        }
    }
}

/// True when the windows tile the input exactly (Keras' default pool 2 / stride 2 on an even
/// size): every input element belongs to exactly one window, so the backward pass writes each
/// once and needs no zeroing pass.
fn tiles(win: &Window) -> bool {
    win.sh == win.kh
        && win.sw == win.kw
        && win.pad_top == 0
        && win.pad_left == 0
        && win.oh * win.kh == win.h
        && win.ow * win.kw == win.w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Padding;

    #[test]
    fn hand_worked_2x2_pool() {
        // 4x4 single channel, 2x2 window, stride 2: maxima of each quadrant.
        let x = Array4::from_shape_vec(
            (1, 4, 4, 1),
            vec![
                1., 2., 5., 0., 3., 4., 1., 1., 0., 0., 9., 8., -1., 7., 6., 2.,
            ],
        )
        .unwrap();
        let win = Window::new([1, 4, 4, 1], [2, 2], [2, 2], Padding::Valid).unwrap();
        let y = max_pool(x.view(), &win);
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![4., 5., 7., 9.]);
        // Gradients land on the arg-max of each window (flat indices 5, 2, 13, 10).
        let g = Array4::from_shape_vec((1, 2, 2, 1), vec![1., 2., 3., 4.]).unwrap();
        let gx = max_pool_backward(x.view(), y.view(), g.view(), &win);
        let mut want = vec![0f32; 16];
        (want[5], want[2], want[13], want[10]) = (1., 2., 3., 4.);
        assert_eq!(gx.iter().copied().collect::<Vec<_>>(), want);
    }

    #[test]
    fn same_padding_stride_one_ignores_padding() {
        // All-negative input: a zero pad must not win.
        let x = Array4::from_elem((1, 3, 3, 2), -1.0f32);
        let win = Window::new([1, 3, 3, 2], [2, 2], [1, 1], Padding::Same).unwrap();
        let y = max_pool(x.view(), &win);
        assert_eq!(y.shape(), &[1, 3, 3, 2]);
        assert!(y.iter().all(|&v| v == -1.0));
    }
}

#[cfg(test)]
mod tie_tests {
    use super::*;
    use crate::kernels::conv::Padding;

    #[test]
    fn ties_route_the_gradient_to_the_first_maximum_only() {
        let x = Array4::from_elem((1, 2, 2, 1), 3.0f32);
        let win = Window::new([1, 2, 2, 1], [2, 2], [2, 2], Padding::Valid).unwrap();
        let y = max_pool(x.view(), &win);
        let g = Array4::from_elem((1, 1, 1, 1), 1.0f32);
        let gx = max_pool_backward(x.view(), y.view(), g.view(), &win);
        assert_eq!(gx.iter().copied().collect::<Vec<_>>(), vec![1., 0., 0., 0.]);
    }
}

#[cfg(test)]
mod argmax_tests {
    use super::*;
    use crate::kernels::conv::Padding;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn argmax_path_equals_the_rescanning_path_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(31);
        // Awkward sizes, overlapping and exactly tiling windows, `same` padding.
        for &(shape, pool, stride, pad) in &[
            ([1, 1, 1, 1], 1, 1, Padding::Valid),
            ([2, 26, 26, 12], 2, 2, Padding::Valid),
            ([3, 7, 7, 7], 2, 2, Padding::Valid),
            ([2, 7, 9, 3], 3, 2, Padding::Same),
            ([1, 9, 8, 17], 2, 1, Padding::Same),
            ([2, 5, 5, 2], 3, 1, Padding::Valid),
            ([20, 26, 26, 12], 2, 2, Padding::Valid),
            ([1, 65, 63, 1], 16, 16, Padding::Same),
        ] {
            let win = Window::new(shape, [pool, pool], [stride, stride], pad).unwrap();
            // Few distinct values, so windows hold ties.
            let x = Array4::from_shape_fn(shape, |_| rng.random_range(-3i32..3) as f32);
            let g = Array4::from_shape_fn((win.n, win.oh, win.ow, win.c), |_| {
                rng.random_range(-1.0f32..1.0)
            });
            let y = max_pool(x.view(), &win);
            let want = max_pool_backward(x.view(), y.view(), g.view(), &win);
            for kernel in [Kernel::Portable, Kernel::Avx512] {
                if !kernel.available() {
                    continue;
                }
                let (y2, argmax) = max_pool_with_argmax_using(kernel, x.view(), &win);
                assert_eq!(y, y2, "{kernel:?} {shape:?} pool {pool}/{stride}");
                let got = max_pool_backward_argmax_using(kernel, &argmax, g.view(), &win);
                assert_eq!(want, got, "{kernel:?} {shape:?} pool {pool}/{stride}");
                let seq = crate::kernels::with_sequential_kernels(|| {
                    let (y3, a3) = max_pool_with_argmax_using(kernel, x.view(), &win);
                    let g3 = max_pool_backward_argmax_using(kernel, &a3, g.view(), &win);
                    (y3, a3, g3)
                });
                assert_eq!((y2, argmax, got), seq);
            }
        }
    }

    #[test]
    fn ties_record_the_first_maximum() {
        let x = Array4::from_shape_vec((1, 2, 2, 2), vec![1., 5., 3., 5., 3., 2., 0., 5.]).unwrap();
        let win = Window::new([1, 2, 2, 2], [2, 2], [2, 2], Padding::Valid).unwrap();
        for kernel in [Kernel::Portable, Kernel::Avx512] {
            if kernel.available() {
                let (y, a) = max_pool_with_argmax_using(kernel, x.view(), &win);
                assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![3., 5.]);
                // Channel 0: 3 first at (0, 1) -> 1; channel 1: 5 first at (0, 0) -> 0.
                assert_eq!(a, vec![1, 0], "{kernel:?}");
            }
        }
    }
}
