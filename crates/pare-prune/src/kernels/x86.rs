//! AVX2 + FMA kernels. Each computes what its namesake in `portable.rs` computes, in a different
//! summation order; the tests compare them on random inputs of awkward sizes. The transposes and
//! the row kernel here serve the AVX-512 path too.
//!
//! Callers must have checked `is_x86_feature_detected!("avx2")` and `("fma")`.

use std::arch::x86_64::*;

use super::{BLOCK_ROWS, DenseKernel, PANEL, ROW_CHUNK, SUPER_ROWS, SparseDense, TILE};

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let mut t = [0.0f32; 8];
    // SAFETY: `t` holds eight f32, exactly one unaligned 256-bit store.
    unsafe { _mm256_storeu_ps(t.as_mut_ptr(), v) };
    ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]))
}

/// One batch row: gathers the inputs of each column's non-zeros, 32 per iteration in four
/// independent chains, the last 1–7 with a masked gather; inputs in chunks of `ROW_CHUNK` so the
/// gathered part of `x` stays in L1.
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
    y.copy_from_slice(&m.bias);
    let chunk = ROW_CHUNK / BLOCK_ROWS;
    for kb in (0..m.blocks).step_by(chunk) {
        for (j, yj) in y.iter_mut().enumerate() {
            let es = m.column_blocks(j, kb, chunk);
            // SAFETY: every row index is < in_features == x.len() (SparseDense invariant from
            // `from_dense`, which also checked that it fits in an i32).
            *yj += unsafe { gather_dot(&m.rows[es.clone()], &m.values[es], x) };
        }
    }
}

/// `Σ vals[k] · x[rows[k]]`.
///
/// # Safety
/// Every `rows[k]` must be `< x.len()` and `<= i32::MAX`.
///
/// # Panics
/// If the slices differ in length.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gather_dot(rows: &[u32], vals: &[f32], x: &[f32]) -> f32 {
    assert_eq!(rows.len(), vals.len(), "gather_dot: rows and values differ");
    let n = rows.len();
    // SAFETY: the full-width loads read rows/vals[k..k + 8 · u] with the end <= n, inside the
    // slices; the tail's masked loads touch only lanes < n - k. Every row index is < x.len() and
    // fits in an i32 (the caller's contract), so each gathered address x + 4 * row is inside
    // `x`; masked-off gather lanes are not accessed.
    unsafe {
        let mut a = [_mm256_setzero_ps(); 4];
        let (rp, vp, xp) = (rows.as_ptr(), vals.as_ptr(), x.as_ptr());
        let mut k = 0;
        while k + 32 <= n {
            for (u, au) in a.iter_mut().enumerate() {
                let i = _mm256_loadu_si256(rp.add(k + 8 * u).cast::<__m256i>());
                let g = _mm256_i32gather_ps::<4>(xp, i);
                *au = _mm256_fmadd_ps(g, _mm256_loadu_ps(vp.add(k + 8 * u)), *au);
            }
            k += 32;
        }
        let mut u = 0;
        while k + 8 <= n {
            let i = _mm256_loadu_si256(rp.add(k).cast::<__m256i>());
            let g = _mm256_i32gather_ps::<4>(xp, i);
            a[u] = _mm256_fmadd_ps(g, _mm256_loadu_ps(vp.add(k)), a[u]);
            k += 8;
            u += 1;
        }
        if k < n {
            // A masked step instead of a scalar loop: tails are short and of every
            // length, so a loop would mispredict.
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - k) as i32), lanes);
            let i = _mm256_maskload_epi32(rp.add(k).cast::<i32>(), mask);
            let v = _mm256_maskload_ps(vp.add(k), mask);
            let g = _mm256_mask_i32gather_ps::<4>(
                _mm256_setzero_ps(),
                xp,
                i,
                _mm256_castsi256_ps(mask),
            );
            a[3] = _mm256_fmadd_ps(g, v, a[3]);
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(a[0], a[1]),
            _mm256_add_ps(a[2], a[3]),
        ))
    }
}

/// Transposes an 8×8 block: row `r` of the source starts at `src + r * src_stride`; row `c` of
/// the result is written at `dst + c * dst_stride`.
///
/// The 128-bit lane exchange is done by the loads (rows `r` and `r + 4` share a register), so
/// only 16 in-lane shuffles remain for the shuffle ports instead of 24.
///
/// # Safety
/// The eight source rows of eight floats and the eight destination rows must be in bounds.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn transpose8x8(
    src: *const f32,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    // SAFETY: the caller guarantees the 8 × 8 source and destination floats are in bounds.
    unsafe {
        // pair(r, c) = [row r, cols c..c+4 | row r + 4, cols c..c+4]
        let pair = |r: usize, c: usize| {
            let lo = _mm_loadu_ps(src.add(r * src_stride + c));
            let hi = _mm_loadu_ps(src.add((r + 4) * src_stride + c));
            _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi)
        };
        for c in [0, 4] {
            let (r0, r1, r2, r3) = (pair(0, c), pair(1, c), pair(2, c), pair(3, c));
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            let d = |k: usize| dst.add((c + k) * dst_stride);
            _mm256_storeu_ps(d(0), _mm256_shuffle_ps::<0x44>(t0, t2));
            _mm256_storeu_ps(d(1), _mm256_shuffle_ps::<0xEE>(t0, t2));
            _mm256_storeu_ps(d(2), _mm256_shuffle_ps::<0x44>(t1, t3));
            _mm256_storeu_ps(d(3), _mm256_shuffle_ps::<0xEE>(t1, t3));
        }
    }
}

/// Transposes inputs `k0 .. k0 + klen` of the `lanes` batch rows of `x` (`in` values each) into
/// `xt[i * lanes + r] = x[r * in + k0 + i]`.
///
/// # Panics
/// If `x` does not hold `lanes` rows reaching input `k0 + klen`, `lanes` is not a multiple of 8
/// or `xt` is shorter than `klen * lanes`.
#[target_feature(enable = "avx2,fma")]
pub(super) fn transpose_block(
    x: &[f32],
    inn: usize,
    lanes: usize,
    k0: usize,
    klen: usize,
    xt: &mut [f32],
) {
    assert!(
        lanes.is_multiple_of(8)
            && k0 + klen <= inn
            && x.len() >= lanes * inn
            && xt.len() >= klen * lanes,
        "transpose_block: {lanes} rows of in {inn} ({} values), inputs {k0}..{}, xt {}",
        x.len(),
        k0 + klen,
        xt.len()
    );
    let full = klen - klen % 8;
    for r0 in (0..lanes).step_by(8) {
        for i in (0..full).step_by(8) {
            // SAFETY: source rows r0..r0 + 8 <= lanes, columns k0 + i..k0 + i + 8 <= k0 + klen
            // <= in, inside x (asserted); destination rows i..i + 8 <= klen, lanes r0..r0 + 8
            // <= lanes, inside xt (asserted).
            unsafe {
                transpose8x8(
                    x.as_ptr().add(r0 * inn + k0 + i),
                    inn,
                    xt.as_mut_ptr().add(i * lanes + r0),
                    lanes,
                );
            }
        }
    }
    for i in full..klen {
        for r in 0..lanes {
            xt[i * lanes + r] = x[r * inn + k0 + i];
        }
    }
}

/// Writes the accumulators `acc[j * lanes + r]` to `y[r * out + j]`.
///
/// # Panics
/// If the lengths are not `out * lanes` or `lanes` is not a multiple of 8.
#[target_feature(enable = "avx2,fma")]
pub(super) fn store_transposed(acc: &[f32], lanes: usize, y: &mut [f32], out: usize) {
    assert!(
        lanes.is_multiple_of(8) && acc.len() == out * lanes && y.len() == out * lanes,
        "store_transposed: acc {} and y {} for {lanes} rows of out {out}",
        acc.len(),
        y.len()
    );
    let full = out - out % 8;
    for j0 in (0..full).step_by(8) {
        for r0 in (0..lanes).step_by(8) {
            // SAFETY: acc rows j0..j0 + 8 <= out, lanes r0..r0 + 8 <= lanes; y rows
            // r0..r0 + 8 <= lanes, columns j0..j0 + 8 <= out: all inside (asserted lengths).
            unsafe {
                transpose8x8(
                    acc.as_ptr().add(j0 * lanes + r0),
                    lanes,
                    y.as_mut_ptr().add(r0 * out + j0),
                    out,
                );
            }
        }
    }
    for j in full..out {
        for r in 0..lanes {
            y[r * out + j] = acc[j * lanes + r];
        }
    }
}

/// One pass of `T` full tiles through a transposed input block (see `portable::sparse_tiles`);
/// each tile is two 8-lane vectors.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sparse_tiles<const T: usize>(
    m: &SparseDense,
    x: &[f32],
    y: &mut [f32],
    xt: &mut [f32],
    acc: &mut [f32],
) {
    let (inn, out) = (m.in_features, m.out_features);
    let lanes = T * TILE;
    let span = SUPER_ROWS / T;
    assert!(
        x.len() == lanes * inn
            && y.len() == lanes * out
            && acc.len() == out * lanes
            && xt.len() >= span * lanes,
        "sparse_tiles: {lanes} rows, x has {} values for in {inn}, y {} for out {out}",
        x.len(),
        y.len()
    );
    for (a, &b) in acc.chunks_exact_mut(lanes).zip(&m.bias) {
        a.fill(b);
    }
    for (s, k0) in (0..inn).step_by(span).enumerate() {
        let klen = span.min(inn - k0);
        transpose_block(x, inn, lanes, k0, klen, xt);
        for j in 0..out {
            let es = m.column_blocks(j, s * span / BLOCK_ROWS, span / BLOCK_ROWS);
            if es.is_empty() {
                continue;
            }
            // SAFETY: es is inside rows/values (ptr invariant). Entries of these blocks have
            // k0 <= row < k0 + klen (layout invariant), so xt row (row - k0) and its `lanes`
            // values are inside xt (span * lanes values). acc row j (`lanes` values) is inside
            // acc (out * lanes values).
            unsafe {
                let ap = acc.as_mut_ptr().add(j * lanes);
                let xtp = xt.as_ptr();
                let (rp, vp) = (m.rows.as_ptr(), m.values.as_ptr());
                let row = |e: usize| xtp.add((*rp.add(e) as usize - k0) * lanes);
                // A non-zero costs 2T FMAs; `sets` independent accumulator sets give eight
                // chains in flight, enough to hide the FMA latency at two FMAs per cycle.
                let (v, sets) = (2 * T, 4 / T);
                let mut a = [[_mm256_setzero_ps(); 8]; 4];
                for (h, ah) in a[0].iter_mut().take(v).enumerate() {
                    *ah = _mm256_loadu_ps(ap.add(8 * h));
                }
                let mut e = es.start;
                while e + sets <= es.end {
                    for (u, au) in a.iter_mut().take(sets).enumerate() {
                        let (r, w) = (row(e + u), _mm256_broadcast_ss(&*vp.add(e + u)));
                        for (h, ah) in au.iter_mut().take(v).enumerate() {
                            *ah = _mm256_fmadd_ps(w, _mm256_loadu_ps(r.add(8 * h)), *ah);
                        }
                    }
                    e += sets;
                }
                while e < es.end {
                    let (r, w) = (row(e), _mm256_broadcast_ss(&*vp.add(e)));
                    for (h, ah) in a[0].iter_mut().take(v).enumerate() {
                        *ah = _mm256_fmadd_ps(w, _mm256_loadu_ps(r.add(8 * h)), *ah);
                    }
                    e += 1;
                }
                for h in 0..v {
                    let mut t = a[0][h];
                    for au in a.iter().take(sets).skip(1) {
                        t = _mm256_add_ps(t, au[h]);
                    }
                    _mm256_storeu_ps(ap.add(8 * h), t);
                }
            }
        }
    }
    store_transposed(acc, lanes, y, out);
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
