//! Average pooling over NHWC batches, and the global average pool.
//!
//! Each output is the mean of the window's elements that lie inside the input: under `same`
//! padding the padded positions are left out of the count, as TensorFlow's `AvgPool` (and so
//! Keras' `AveragePooling2D`) does, not averaged in as zeros.

use super::conv::Window;
use ndarray::{Array2, Array4, ArrayView2, ArrayView4};

/// Average-pools `x` (padding excluded from each window's count).
pub fn avg_pool(x: ArrayView4<'_, f32>, win: &Window) -> Array4<f32> {
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let c = win.c;
    let mut out = vec![0f32; win.n * win.oh * win.ow * c];
    for img in 0..win.n {
        let base = img * win.h * win.w * c;
        for oy in 0..win.oh {
            let (ky0, ky1, iy0) = win.ky_range(oy);
            for ox in 0..win.ow {
                let (kx0, kx1, ix0) = win.kx_range(ox);
                let o = &mut out[((img * win.oh + oy) * win.ow + ox) * c..][..c];
                let count = (ky1 - ky0) * (kx1 - kx0);
                for iy in iy0..iy0 + (ky1 - ky0) {
                    for ix in ix0..ix0 + (kx1 - kx0) {
                        let src = base + (iy * win.w + ix) * c;
                        for (o, &v) in o.iter_mut().zip(&xs[src..src + c]) {
                            *o += v;
                        }
                    }
                }
                let inv = 1.0 / count.max(1) as f32;
                o.iter_mut().for_each(|v| *v *= inv);
            }
        }
    }
    Array4::from_shape_vec((win.n, win.oh, win.ow, c), out).expect("avg_pool: shape")
}

/// Gradient of [`avg_pool`] with respect to its input: each output's gradient, divided by its
/// window's count, goes to every element of the window inside the input.
pub fn avg_pool_backward(g: ArrayView4<'_, f32>, win: &Window) -> Array4<f32> {
    let g = g.as_standard_layout();
    let gs = g.as_slice().expect("standard layout");
    let c = win.c;
    let mut gx = vec![0f32; win.n * win.h * win.w * c];
    for img in 0..win.n {
        let base = img * win.h * win.w * c;
        for oy in 0..win.oh {
            let (ky0, ky1, iy0) = win.ky_range(oy);
            for ox in 0..win.ow {
                let (kx0, kx1, ix0) = win.kx_range(ox);
                let go = &gs[((img * win.oh + oy) * win.ow + ox) * c..][..c];
                let inv = 1.0 / ((ky1 - ky0) * (kx1 - kx0)).max(1) as f32;
                for iy in iy0..iy0 + (ky1 - ky0) {
                    for ix in ix0..ix0 + (kx1 - kx0) {
                        let dst = base + (iy * win.w + ix) * c;
                        for (d, &v) in gx[dst..dst + c].iter_mut().zip(go) {
                            *d += v * inv;
                        }
                    }
                }
            }
        }
    }
    Array4::from_shape_vec((win.n, win.h, win.w, c), gx).expect("avg_pool_backward: shape")
}

/// Mean over height and width: `[n, h, w, c]` to `[n, c]` (Keras' `GlobalAveragePooling2D`),
/// summed in f64 so a large map loses no precision.
pub fn global_avg_pool(x: ArrayView4<'_, f32>) -> Array2<f32> {
    let (n, h, w, c) = x.dim();
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let mut out = Array2::zeros((n, c));
    let inv = 1.0 / (h * w).max(1) as f64;
    let mut acc = vec![0f64; c];
    for (img, mut row) in out.rows_mut().into_iter().enumerate() {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for px in xs[img * h * w * c..(img + 1) * h * w * c].chunks_exact(c.max(1)) {
            for (a, &v) in acc.iter_mut().zip(px) {
                *a += v as f64;
            }
        }
        for (o, a) in row.iter_mut().zip(&acc) {
            *o = (a * inv) as f32;
        }
    }
    out
}

/// Gradient of [`global_avg_pool`]: `g [n, c]` spread evenly over the `input` shape
/// `[n, h, w, c]`.
///
/// # Panics
/// If `input` is not 4-D or disagrees with `g` on `n` or `c`.
pub fn global_avg_pool_backward(g: ArrayView2<'_, f32>, input: &[usize]) -> Array4<f32> {
    let &[n, h, w, c] = input else {
        panic!("global_avg_pool_backward: input {input:?} is not NHWC")
    };
    assert_eq!(
        g.dim(),
        (n, c),
        "global_avg_pool_backward: gradient {:?} for input {input:?}",
        g.shape()
    );
    let inv = 1.0 / (h * w).max(1) as f32;
    let mut gx = super::buffers::take_any(n * h * w * c);
    if c > 0 {
        for (img, dst) in gx.chunks_mut((h * w * c).max(1)).enumerate() {
            let row: Vec<f32> = g.row(img).iter().map(|&v| v * inv).collect();
            dst.chunks_exact_mut(c)
                .for_each(|px| px.copy_from_slice(&row));
        }
    }
    Array4::from_shape_vec((n, h, w, c), gx).expect("global_avg_pool_backward: shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Padding;
    use approx::assert_abs_diff_eq;

    #[test]
    fn same_padding_leaves_padded_positions_out_of_the_count() {
        // 3x3 input 1..9, pool 2, stride 2, same: output 2x2. TensorFlow's AvgPool gives
        // [[(1+2+4+5)/4, (3+6)/2], [(7+8)/2, 9/1]] = [[3, 4.5], [7.5, 9]].
        let x = Array4::from_shape_fn((1, 3, 3, 1), |(_, r, c, _)| (r * 3 + c + 1) as f32);
        let win = Window::new([1, 3, 3, 1], [2, 2], [2, 2], Padding::Same).unwrap();
        let y = avg_pool(x.view(), &win);
        let want = [3.0, 4.5, 7.5, 9.0];
        for (a, b) in y.iter().zip(want) {
            assert_abs_diff_eq!(*a, b, epsilon = 1e-6);
        }
        // Backward spreads each gradient over its window's real elements only.
        let g = Array4::from_elem((1, 2, 2, 1), 1.0f32);
        let gx = avg_pool_backward(g.view(), &win);
        let want_gx = [0.25, 0.25, 0.5, 0.25, 0.25, 0.5, 0.5, 0.5, 1.0];
        for (a, b) in gx.iter().zip(want_gx) {
            assert_abs_diff_eq!(*a, b, epsilon = 1e-6);
        }
    }

    #[test]
    fn global_average_is_the_mean_per_image_and_channel() {
        let x = Array4::from_shape_fn((2, 3, 2, 2), |(n, r, c, k)| {
            (n * 100 + r * 10 + c) as f32 * if k == 0 { 1.0 } else { -1.0 }
        });
        let y = global_avg_pool(x.view());
        // Image 0: mean of r*10 + c over r < 3, c < 2 = 10 + 0.5.
        assert_abs_diff_eq!(y[[0, 0]], 10.5, epsilon = 1e-5);
        assert_abs_diff_eq!(y[[0, 1]], -10.5, epsilon = 1e-5);
        assert_abs_diff_eq!(y[[1, 0]], 110.5, epsilon = 1e-4);
    }
}
