//! The `gemm` crate backend.

use super::PARALLEL_THRESHOLD;
use gemm::Parallelism;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, s};
use rayon::prelude::*;

/// Rows of `a` per task when a thin product is split by rows (see [`rows_in_parallel`]).
const ROW_BLOCK: usize = 1024;
/// Depth of each partial product when a long-`k` product is split (see [`depth_in_parallel`]):
/// a block of patch rows this deep stays in L2 while every output tile passes over it.
const DEPTH_BLOCK: usize = 1024;

/// Entry point of the fast backend: the `gemm` crate runs at about half speed when an operand
/// is column-major (measured on the teacher's kernel- and input-gradient products: ~150 vs
/// ~340 GFLOP/s, and computing into a column-major result instead was no faster), so large
/// products first copy such operands into row-major order with a cache-blocked transpose.
pub(super) fn matmul(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let threaded = m * n * k >= PARALLEL_THRESHOLD
        && rayon::current_num_threads() > 1
        && crate::kernels::parallel_allowed();
    // A convolution's kernel gradient `patchesᵀ · g` is a small output over a very long `k`
    // (144 x 16 over 100,352 rows for ResNet-8's first block at batch 128): the gemm crate
    // splits only the output between threads, so one thread did it all. Fixed-depth partial
    // products summed in order keep the result independent of the thread count.
    if threaded && k >= 4 * DEPTH_BLOCK && k >= 8 * m.max(n) {
        return depth_in_parallel(a, b, c, accumulate);
    }
    if super::skinny::applies(&a, &b, &c) {
        // Thin outputs: our register-tile kernel, by row blocks on every thread when large
        // (the gemm crate's 6-column tiles waste most of a 16-column output).
        return if threaded {
            rows_in_parallel(a, b, c, accumulate)
        } else {
            super::skinny::matmul(a, b, c, accumulate)
        };
    }
    let row = |v: &ArrayView2<'_, f32>| v.strides()[1] == 1 || v.ncols() <= 1;
    // Small or thin products (a first layer's kernel gradient is 9 x 12 over a long k) gain
    // nothing from re-ordering and would pay for the copy.
    if m * n * k < PARALLEL_THRESHOLD || m.min(n) < 64 || (row(&a) && row(&b)) {
        return raw_matmul(a, b, c, accumulate);
    }
    // transposed_copy(v.t()) is `v` itself, row-major.
    let a2 = (!row(&a)).then(|| transposed_copy(a.t()));
    let b2 = (!row(&b)).then(|| transposed_copy(b.t()));
    let a2v = a2.as_ref().map(|t| t.view()).unwrap_or(a);
    let b2v = b2.as_ref().map(|t| t.view()).unwrap_or(b);
    raw_matmul(a2v, b2v, c, accumulate);
    a2.into_iter()
        .chain(b2)
        .for_each(crate::kernels::buffers::give_array);
}

/// The skinny kernel over blocks of [`ROW_BLOCK`] rows on the rayon pool. Each output row is
/// computed exactly as the one-thread kernel computes it.
fn rows_in_parallel(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    mut c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    c.axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(i, cb)| {
            let r0 = i * ROW_BLOCK;
            let ab = a.slice(s![r0..r0 + cb.nrows(), ..]);
            super::skinny::matmul(ab, b, cb, accumulate);
        });
}

/// `a · b` as partial products over [`DEPTH_BLOCK`]-deep slices of `k`, computed on the rayon
/// pool one thread each and summed in slice order.
fn depth_in_parallel(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    mut c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let blocks = k.div_ceil(DEPTH_BLOCK);
    let partials: Vec<Array2<f32>> = (0..blocks)
        .into_par_iter()
        .map(|i| {
            let (k0, k1) = (i * DEPTH_BLOCK, ((i + 1) * DEPTH_BLOCK).min(k));
            let buf = crate::kernels::buffers::take_any(m * n);
            let mut p = Array2::from_shape_vec((m, n), buf).expect("shape matches length");
            crate::kernels::with_sequential_kernels(|| {
                matmul(
                    a.slice(s![.., k0..k1]),
                    b.slice(s![k0..k1, ..]),
                    p.view_mut(),
                    false,
                )
            });
            p
        })
        .collect();
    let mut parts = partials.into_iter();
    let first = parts.next().expect("k > 0");
    if accumulate {
        c += &first;
    } else {
        c.assign(&first);
    }
    crate::kernels::buffers::give_array(first);
    for p in parts {
        c += &p;
        crate::kernels::buffers::give_array(p);
    }
}

/// Returns `vᵀ` as a row-major array, copied through 32x32 tiles so both sides stay in cache.
fn transposed_copy(v: ArrayView2<'_, f32>) -> ndarray::Array2<f32> {
    let (r, c) = v.dim();
    let buf = crate::kernels::buffers::take_any(r * c);
    let mut out = ndarray::Array2::from_shape_vec((c, r), buf).expect("shape matches length");
    const T: usize = 32;
    for i0 in (0..r).step_by(T) {
        for j0 in (0..c).step_by(T) {
            for i in i0..(i0 + T).min(r) {
                for j in j0..(j0 + T).min(c) {
                    out[[j, i]] = v[[i, j]];
                }
            }
        }
    }
    out
}

fn raw_matmul(
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
