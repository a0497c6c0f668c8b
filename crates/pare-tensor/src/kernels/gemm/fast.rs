//! The `gemm` crate backend.

use super::PARALLEL_THRESHOLD;
use gemm::Parallelism;
use ndarray::{ArrayView2, ArrayViewMut2};

pub(super) fn matmul(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    mut c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let parallelism = if m * n * k >= PARALLEL_THRESHOLD
        && rayon::current_num_threads() > 1
        && crate::kernels::parallel_allowed()
    {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were checked
    // to chain by the caller; `c` is borrowed mutably, so it cannot alias `a` or `b`. gemm
    // computes c := alpha·c + beta·a·b and reads c only when `read_dst` is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `a · b` into a pooled buffer, which gemm overwrites without reading.
pub(super) fn matmul_new(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> ndarray::Array2<f32> {
    let (m, n) = (a.nrows(), b.ncols());
    let buf = crate::kernels::buffers::take_any(m * n);
    let mut c = ndarray::Array2::from_shape_vec((m, n), buf).expect("matmul: shape matches length");
    matmul(a, b, c.view_mut(), false);
    c
}
