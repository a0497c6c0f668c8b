//! AVX2 + FMA kernels. Each computes what its namesake in `portable.rs` computes, in a different
//! summation order; the tests compare them on random inputs of awkward sizes.
//!
//! Callers must have checked `is_x86_feature_detected!("avx2")` and `("fma")`.

use std::arch::x86_64::*;

use super::{BLOCK_ROWS, DenseKernel, PANEL, SparseDense, TILE, TileScratch};

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let mut t = [0.0f32; 8];
    // SAFETY: `t` holds eight f32, exactly one unaligned 256-bit store.
    unsafe { _mm256_storeu_ps(t.as_mut_ptr(), v) };
    ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]))
}

/// One batch row: gathers the inputs of each column's non-zeros, 16 per iteration, the last
/// 1–7 with a masked gather.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sparse_row(m: &SparseDense, x: &[f32], y: &mut [f32]) {
    assert!(
        x.len() == m.in_features && y.len() == m.out_features,
        "sparse_row: x has {} values for in {}, y {} for out {}",
        x.len(),
        m.in_features,
        y.len(),
        m.out_features
    );
    let out = m.out_features;
    y.copy_from_slice(&m.bias);
    for kb in 0..m.in_features.div_ceil(BLOCK_ROWS) {
        for (j, yj) in y.iter_mut().enumerate() {
            let p = kb * out + j;
            let (rows, vals) = (
                &m.rows[m.ptr[p]..m.ptr[p + 1]],
                &m.values[m.ptr[p]..m.ptr[p + 1]],
            );
            let n = rows.len();
            // SAFETY: the full-width loads read rows/vals[k..k + 16] (or [k..k + 8]) with the
            // end <= n, inside the slices; the tail's masked loads touch only lanes < n - k.
            // Every row index is < in_features == x.len() (SparseDense invariant from
            // `from_dense`) and fits in an i32 (checked there), so each gathered address
            // x + 4 * row is inside `x`; masked-off gather lanes are not accessed.
            let sum = unsafe {
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let (rp, vp, xp) = (rows.as_ptr(), vals.as_ptr(), x.as_ptr());
                let mut k = 0;
                while k + 16 <= n {
                    let i0 = _mm256_loadu_si256(rp.add(k).cast::<__m256i>());
                    let i1 = _mm256_loadu_si256(rp.add(k + 8).cast::<__m256i>());
                    let g0 = _mm256_i32gather_ps::<4>(xp, i0);
                    let g1 = _mm256_i32gather_ps::<4>(xp, i1);
                    a0 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(vp.add(k)), a0);
                    a1 = _mm256_fmadd_ps(g1, _mm256_loadu_ps(vp.add(k + 8)), a1);
                    k += 16;
                }
                if k + 8 <= n {
                    let i0 = _mm256_loadu_si256(rp.add(k).cast::<__m256i>());
                    let g0 = _mm256_i32gather_ps::<4>(xp, i0);
                    a0 = _mm256_fmadd_ps(g0, _mm256_loadu_ps(vp.add(k)), a0);
                    k += 8;
                }
                if k < n {
                    // A masked step instead of a scalar loop: tails are short and of every
                    // length, so a loop would mispredict.
                    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - k) as i32), lanes);
                    let i0 = _mm256_maskload_epi32(rp.add(k).cast::<i32>(), mask);
                    let v0 = _mm256_maskload_ps(vp.add(k), mask);
                    let g0 = _mm256_mask_i32gather_ps::<4>(
                        _mm256_setzero_ps(),
                        xp,
                        i0,
                        _mm256_castsi256_ps(mask),
                    );
                    a1 = _mm256_fmadd_ps(g0, v0, a1);
                }
                hsum(_mm256_add_ps(a0, a1))
            };
            *yj += sum;
        }
    }
}

/// Transposes an 8×8 block: row `r` of the source starts at `src + r * stride`; row `c` of the
/// result is written at `dst + c * TILE`.
///
/// The 128-bit lane exchange is done by the loads (rows `r` and `r + 4` share a register), so
/// only 16 in-lane shuffles remain for the shuffle port instead of 24.
///
/// # Safety
/// The eight source rows of eight floats and the eight destination rows must be in bounds.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8x8(src: *const f32, stride: usize, dst: *mut f32) {
    // SAFETY: the caller guarantees the 8 × 8 source and destination floats are in bounds.
    unsafe {
        // pair(r, c) = [row r, cols c..c+4 | row r + 4, cols c..c+4]
        let pair = |r: usize, c: usize| {
            let lo = _mm_loadu_ps(src.add(r * stride + c));
            let hi = _mm_loadu_ps(src.add((r + 4) * stride + c));
            _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi)
        };
        for c in [0, 4] {
            let (r0, r1, r2, r3) = (pair(0, c), pair(1, c), pair(2, c), pair(3, c));
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            _mm256_storeu_ps(dst.add(c * TILE), _mm256_shuffle_ps::<0x44>(t0, t2));
            _mm256_storeu_ps(dst.add((c + 1) * TILE), _mm256_shuffle_ps::<0xEE>(t0, t2));
            _mm256_storeu_ps(dst.add((c + 2) * TILE), _mm256_shuffle_ps::<0x44>(t1, t3));
            _mm256_storeu_ps(dst.add((c + 3) * TILE), _mm256_shuffle_ps::<0xEE>(t1, t3));
        }
    }
}

/// Up to [`TILE`] batch rows through a transposed input block.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sparse_tile(
    m: &SparseDense,
    x: &[f32],
    nb: usize,
    y: &mut [f32],
    s: &mut TileScratch,
) {
    let (inn, out) = (m.in_features, m.out_features);
    assert!(
        nb <= TILE && x.len() == nb * inn && y.len() == nb * out,
        "sparse_tile: {nb} rows, x has {} values for in {inn}, y {} for out {out}",
        x.len(),
        y.len()
    );
    s.prepare(out, nb);
    for (j, a) in s.acc.chunks_exact_mut(TILE).enumerate() {
        a.fill(m.bias[j]);
    }
    for kb in 0..inn.div_ceil(BLOCK_ROWS) {
        let k0 = kb * BLOCK_ROWS;
        let klen = BLOCK_ROWS.min(inn - k0);
        let mut i = 0;
        if nb == TILE {
            while i + 8 <= klen {
                // SAFETY: source rows r < 16 = nb, columns k0 + i .. k0 + i + 8 <= inn, so
                // every read is inside x (nb * inn values); destination rows i .. i + 8 <= klen
                // <= BLOCK_ROWS, lanes 0..16, inside xt (BLOCK_ROWS * TILE values).
                unsafe {
                    let src = x.as_ptr().add(k0 + i);
                    let dst = s.xt.as_mut_ptr().add(i * TILE);
                    transpose8x8(src, inn, dst);
                    transpose8x8(src.add(8 * inn), inn, dst.add(8));
                }
                i += 8;
            }
        }
        for i in i..klen {
            for r in 0..nb {
                s.xt[i * TILE + r] = x[r * inn + k0 + i];
            }
        }
        for j in 0..out {
            let p = kb * out + j;
            let (lo, hi) = (m.ptr[p], m.ptr[p + 1]);
            // SAFETY: lo..hi is inside rows/values (ptr invariant). Entries of block kb have
            // k0 <= row < k0 + klen (layout invariant), so xt row (row - k0) and its 16 lanes
            // are inside xt. acc row j (16 values) is inside acc (out * TILE values).
            unsafe {
                let ap = s.acc.as_mut_ptr().add(j * TILE);
                let xt = s.xt.as_ptr();
                let (rp, vp) = (m.rows.as_ptr(), m.values.as_ptr());
                let row = |e: usize| xt.add((*rp.add(e) as usize - k0) * TILE);
                // Four independent accumulator pairs hide the FMA latency.
                let mut a = [_mm256_setzero_ps(); 8];
                a[0] = _mm256_loadu_ps(ap);
                a[1] = _mm256_loadu_ps(ap.add(8));
                let mut e = lo;
                while e + 4 <= hi {
                    for u in 0..4 {
                        let r = row(e + u);
                        let w = _mm256_broadcast_ss(&*vp.add(e + u));
                        a[2 * u] = _mm256_fmadd_ps(w, _mm256_loadu_ps(r), a[2 * u]);
                        a[2 * u + 1] = _mm256_fmadd_ps(w, _mm256_loadu_ps(r.add(8)), a[2 * u + 1]);
                    }
                    e += 4;
                }
                while e < hi {
                    let r = row(e);
                    let w = _mm256_broadcast_ss(&*vp.add(e));
                    a[0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(r), a[0]);
                    a[1] = _mm256_fmadd_ps(w, _mm256_loadu_ps(r.add(8)), a[1]);
                    e += 1;
                }
                let lo8 = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[4], a[6]));
                let hi8 = _mm256_add_ps(_mm256_add_ps(a[1], a[3]), _mm256_add_ps(a[5], a[7]));
                _mm256_storeu_ps(ap, lo8);
                _mm256_storeu_ps(ap.add(8), hi8);
            }
        }
    }
    for r in 0..nb {
        for j in 0..out {
            y[r * out + j] = s.acc[j * TILE + r];
        }
    }
}

/// Dense baseline: 4×16 register tile (8 accumulators), leftover rows 1×16 with the input axis
/// split four ways so the FMA chains overlap.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dense(k: &DenseKernel, x: &[f32], batch: usize, y: &mut [f32]) {
    let (inn, out) = (k.in_features, k.out_features);
    assert!(
        x.len() == batch * inn
            && y.len() == batch * out
            && k.panels.len() == out.div_ceil(PANEL) * inn * PANEL,
        "dense: batch {batch}, x has {} values for in {inn}, y {} for out {out}",
        x.len(),
        y.len()
    );
    let mut t = [0.0f32; 4 * PANEL];
    for p in 0..out.div_ceil(PANEL) {
        let (c0, nc) = (p * PANEL, PANEL.min(out - p * PANEL));
        let mut b = 0;
        while b + 4 <= batch {
            // SAFETY: the panel holds inn * 16 floats starting at p * inn * 16 (asserted length),
            // rows b..b + 4 <= batch of x hold inn floats each, and `t` holds 4 × 16 floats.
            unsafe {
                let w = k.panels.as_ptr().add(p * inn * PANEL);
                let x0 = x.as_ptr().add(b * inn);
                let (x1, x2, x3) = (x0.add(inn), x0.add(2 * inn), x0.add(3 * inn));
                let mut c = [_mm256_setzero_ps(); 8];
                for i in 0..inn {
                    let w0 = _mm256_loadu_ps(w.add(i * PANEL));
                    let w1 = _mm256_loadu_ps(w.add(i * PANEL + 8));
                    for (r, xr) in [x0, x1, x2, x3].into_iter().enumerate() {
                        let a = _mm256_broadcast_ss(&*xr.add(i));
                        c[2 * r] = _mm256_fmadd_ps(a, w0, c[2 * r]);
                        c[2 * r + 1] = _mm256_fmadd_ps(a, w1, c[2 * r + 1]);
                    }
                }
                for (q, v) in c.iter().enumerate() {
                    _mm256_storeu_ps(t.as_mut_ptr().add(8 * q), *v);
                }
            }
            for r in 0..4 {
                for cc in 0..nc {
                    y[(b + r) * out + c0 + cc] = t[r * PANEL + cc] + k.bias[c0 + cc];
                }
            }
            b += 4;
        }
        for b in b..batch {
            // SAFETY: as above, for the single row b < batch; i + u < inn in the unrolled loop.
            unsafe {
                let w = k.panels.as_ptr().add(p * inn * PANEL);
                let x0 = x.as_ptr().add(b * inn);
                let mut c = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i + 4 <= inn {
                    for u in 0..4 {
                        let a = _mm256_broadcast_ss(&*x0.add(i + u));
                        let wr = w.add((i + u) * PANEL);
                        c[2 * u] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wr), c[2 * u]);
                        c[2 * u + 1] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wr.add(8)), c[2 * u + 1]);
                    }
                    i += 4;
                }
                while i < inn {
                    let a = _mm256_broadcast_ss(&*x0.add(i));
                    let wr = w.add(i * PANEL);
                    c[0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wr), c[0]);
                    c[1] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wr.add(8)), c[1]);
                    i += 1;
                }
                let lo = _mm256_add_ps(_mm256_add_ps(c[0], c[2]), _mm256_add_ps(c[4], c[6]));
                let hi = _mm256_add_ps(_mm256_add_ps(c[1], c[3]), _mm256_add_ps(c[5], c[7]));
                _mm256_storeu_ps(t.as_mut_ptr(), lo);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), hi);
            }
            for cc in 0..nc {
                y[b * out + c0 + cc] = t[cc] + k.bias[c0 + cc];
            }
        }
    }
}
