//! AVX-512 product for skinny outputs: at most 16 columns (a dense layer's 10 logits, its kernel
//! gradient `xᵀ · g`). One output row is one register; [`ROWS`] rows are computed together so
//! their independent multiply-add chains hide the latency, each step broadcasting one element
//! of `a` per row against one row of `b`. No packing and no allocation: for these shapes the
//! `gemm` crate spends most of its time packing a long, thin operand.
//!
//! The reference is the portable backend ([`super::blocked`]); the sums run in the same order
//! (over `k`, one fused multiply-add each), so results agree to rounding.

use crate::kernels::Kernel;
use ndarray::{ArrayView2, ArrayViewMut2};
use std::arch::x86_64::*;

/// Widest output this kernel takes (one register).
const MAX_N: usize = 16;
/// Output rows per register tile.
const ROWS: usize = 8;

/// True when the skinny kernel computes `a · b` into `c`: AVX-512 chosen, 1 to 16 columns,
/// rows of `b` and `c` contiguous.
pub(super) fn applies(
    a: &ArrayView2<'_, f32>,
    b: &ArrayView2<'_, f32>,
    c: &ArrayViewMut2<'_, f32>,
) -> bool {
    let n = b.ncols();
    crate::kernels::best_kernel() == Kernel::Avx512
        && (1..=MAX_N).contains(&n)
        && a.nrows() > 0
        && a.ncols() > 0
        && (b.strides()[1] == 1 || n == 1)
        && (c.strides()[1] == 1 || n == 1)
}

/// `c = a · b`, or `c += a · b` when `accumulate`.
///
/// # Panics
/// If [`applies`] does not hold or the shapes do not chain.
pub(super) fn matmul(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    mut c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    assert!(applies(&a, &b, &c), "matmul (skinny): unsupported operands");
    let (m, k) = a.dim();
    assert!(
        b.nrows() == k && c.dim() == (m, b.ncols()),
        "matmul (skinny): shapes do not chain"
    );
    let t = Tile {
        a: a.as_ptr(),
        a_rs: a.strides()[0],
        a_cs: a.strides()[1],
        b: b.as_ptr(),
        b_rs: b.strides()[0],
        c: c.as_mut_ptr(),
        c_rs: c.strides()[0],
        k,
        mask: ((1u32 << b.ncols()) - 1) as __mmask16,
        accumulate,
    };
    let mut i = 0;
    while i < m {
        let r = (m - i).min(ROWS);
        // SAFETY: AVX-512 was checked by `applies`; `t` points into live views whose shapes
        // chain, rows i .. i + r are rows of `a` and `c`, every `b` and `c` row access is
        // masked to its n <= 16 contiguous columns, and `c` is borrowed mutably, so it cannot
        // alias `a` or `b`.
        unsafe {
            match r {
                1 => rows::<1>(&t, i),
                2 => rows::<2>(&t, i),
                3 => rows::<3>(&t, i),
                4 => rows::<4>(&t, i),
                5 => rows::<5>(&t, i),
                6 => rows::<6>(&t, i),
                7 => rows::<7>(&t, i),
                _ => rows::<ROWS>(&t, i),
            }
        }
        i += r;
    }
}

/// Raw operands: element `(i, j)` of `a` is at `a + i·a_rs + j·a_cs` (ndarray's strides).
struct Tile {
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    c: *mut f32,
    c_rs: isize,
    k: usize,
    mask: __mmask16,
    accumulate: bool,
}

/// Output rows `i .. i + R`.
///
/// # Safety
/// As [`matmul`]'s call: rows `i .. i + R` exist in `a` and `c`, `b` has `k` rows, the CPU has
/// AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn rows<const R: usize>(t: &Tile, i: usize) {
    let mut acc = [_mm512_setzero_ps(); R];
    let mut arow = [t.a; R];
    for (r, p) in arow.iter_mut().enumerate() {
        // SAFETY: row i + r exists in `a` (caller).
        *p = unsafe { t.a.offset((i + r) as isize * t.a_rs) };
    }
    for p in 0..t.k as isize {
        // SAFETY: row p < k of `b`, masked to its n contiguous columns.
        let bv = unsafe { _mm512_maskz_loadu_ps(t.mask, t.b.offset(p * t.b_rs)) };
        for r in 0..R {
            // SAFETY: element (i + r, p) of `a`.
            let av = unsafe { *arow[r].offset(p * t.a_cs) };
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(av), bv, acc[r]);
        }
    }
    for (r, &v) in acc.iter().enumerate() {
        // SAFETY: row i + r of `c`, masked to its n contiguous columns.
        unsafe {
            let cp = t.c.offset((i + r) as isize * t.c_rs);
            let v = if t.accumulate {
                _mm512_add_ps(_mm512_maskz_loadu_ps(t.mask, cp), v)
            } else {
                v
            };
            _mm512_mask_storeu_ps(cp, t.mask, v);
        }
    }
}
