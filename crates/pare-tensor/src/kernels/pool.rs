//! Max pooling over NHWC batches.

use super::conv::Window;
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
