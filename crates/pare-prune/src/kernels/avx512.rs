//! AVX-512 F kernels: the tile kernel (what `portable::sparse_tiles` computes, one 16-lane vector
//! per tile) and the window-group kernel (what `portable::group_rows` computes), in different
//! summation orders. The transposes are the AVX2 ones (`x86.rs`): 256-bit shuffles run on two
//! ports, 512-bit ones on one, so the 8×8 transpose is the cheaper way here too.
//!
//! Callers must have checked `is_x86_feature_detected!("avx512f")`, `("avx2")` and `("fma")`.

use std::arch::x86_64::*;

use super::x86::{store_transposed, transpose_block};
use super::{BLOCK_ROWS, LANES, SUPER_ROWS, SparseDense, TILE, WINDOW, WindowGroups};

/// Runs the window-group kernel on the batch rows of `x` (rows of `in`, into rows of `out` of
/// `y`; `in >= 1`) in blocks of 6, 4, 2 and 1 rows (6 rows with two accumulators and two
/// vectors of `x` each take 24 of the 32 vector registers).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn group_rows(m: &SparseDense, g: &WindowGroups, x: &[f32], y: &mut [f32]) {
    let (inn, out) = (m.in_features, m.out_features);
    let batch = x.len() / inn;
    let mut b = 0;
    while batch - b >= 6 {
        // SAFETY: rows b..b + 6 <= batch exist in x and y; the CPU features are the caller's.
        unsafe { group_block::<6>(m, g, &x[b * inn..], &mut y[b * out..]) };
        b += 6;
    }
    if batch - b >= 4 {
        // SAFETY: as above, 4 rows.
        unsafe { group_block::<4>(m, g, &x[b * inn..], &mut y[b * out..]) };
        b += 4;
    }
    if batch - b >= 2 {
        // SAFETY: as above, 2 rows.
        unsafe { group_block::<2>(m, g, &x[b * inn..], &mut y[b * out..]) };
        b += 2;
    }
    if batch > b {
        // SAFETY: as above, 1 row.
        unsafe { group_block::<1>(m, g, &x[b * inn..], &mut y[b * out..]) };
    }
}

/// `R` batch rows through the window groups: per window, the `R` rows' 32 inputs are loaded once
/// into registers; per group, its indices, mask and weights are loaded once and applied to all
/// `R` rows (one permute and one FMA each). Each row has one accumulator per lane map, and the
/// groups of a window alternate between them (which also keeps two FMA chains in flight). `x`
/// and `y` start at the block's first row and hold at least `R` rows.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn group_block<const R: usize>(m: &SparseDense, g: &WindowGroups, x: &[f32], y: &mut [f32]) {
    let (inn, out) = (m.in_features, m.out_features);
    let groups = g.ptr[g.ptr.len() - 1];
    assert!(
        (1..=LANES).contains(&out)
            && x.len() >= R * inn
            && y.len() >= R * out
            && g.ptr.len() == inn.div_ceil(WINDOW) + 1
            && g.idx.len() == groups
            && g.mask.len() == groups
            && g.w.len() == groups,
        "group_block: {R} rows of in {inn} / out {out} in x {} / y {}, {groups} groups",
        x.len(),
        y.len(),
    );
    let zero = _mm512_setzero_ps();
    let mut acc = [[zero; R]; 2];
    // SAFETY: window w's x loads touch inputs 32w .. min(32w + 32, in) of rows r < R, inside x
    // (asserted length). Group k < groups has its index bytes, mask and weights in idx[k],
    // mask[k] and w[k] (asserted lengths).
    unsafe {
        let (ip, mp, wp) = (g.idx.as_ptr(), g.mask.as_ptr(), g.w.as_ptr());
        // One group's contribution to every row of a set: masked-off (empty) lanes are zeroed by
        // the permute, so a non-finite input never meets a pruned weight.
        let step = |a: &mut [__m512; R], xv: &[[__m512; 2]; R], k: usize| {
            let idx = _mm512_cvtepu8_epi32(_mm_load_si128(ip.add(k).cast()));
            let wk = _mm512_load_ps(wp.add(k).cast());
            let km: __mmask16 = *mp.add(k);
            for (ar, xr) in a.iter_mut().zip(xv) {
                let xs = _mm512_maskz_permutex2var_ps(km, xr[0], idx, xr[1]);
                *ar = _mm512_fmadd_ps(xs, wk, *ar);
            }
        };
        for w in 0..g.ptr.len() - 1 {
            let i0 = w * WINDOW;
            let mut xv = [[zero; 2]; R];
            for (r, v) in xv.iter_mut().enumerate() {
                for (h, vh) in v.iter_mut().enumerate() {
                    let start = i0 + h * LANES;
                    let n = inn.saturating_sub(start).min(LANES);
                    let xm = ((1u32 << n) - 1) as __mmask16;
                    *vh = _mm512_maskz_loadu_ps(xm, x.as_ptr().add(r * inn + start.min(inn)));
                }
            }
            // Even positions in the window use map A, odd ones map B.
            let (mut k, end) = (g.ptr[w], g.ptr[w + 1]);
            while k + 2 <= end {
                let [a0, a1] = &mut acc;
                step(a0, &xv, k);
                step(a1, &xv, k + 1);
                k += 2;
            }
            if k < end {
                step(&mut acc[0], &xv, k);
            }
        }
    }
    // Fold each row's two accumulators into its outputs with the precomputed permutes (summing
    // them first when map B is a copy of A).
    let om: __mmask16 = ((1u32 << out) - 1) as __mmask16;
    // SAFETY: the masked bias load and y stores touch lanes < out (<= 16) of the bias (out
    // values) and of y rows r < R (asserted length); each fold step is one aligned FoldStep.
    unsafe {
        let bias = _mm512_maskz_loadu_ps(om, m.bias.as_ptr());
        let one_map = g.lane_col[0] == g.lane_col[1];
        for r in 0..R {
            let mut v = bias;
            if one_map {
                let lanes = _mm512_add_ps(acc[0][r], acc[1][r]);
                for step in &g.fold_steps[0] {
                    let idx = _mm512_load_si512(step.idx.as_ptr().cast());
                    v = _mm512_add_ps(v, _mm512_maskz_permutexvar_ps(step.mask, idx, lanes));
                }
            } else {
                for (a, steps) in acc.iter().zip(&g.fold_steps) {
                    for step in steps {
                        let idx = _mm512_load_si512(step.idx.as_ptr().cast());
                        v = _mm512_add_ps(v, _mm512_maskz_permutexvar_ps(step.mask, idx, a[r]));
                    }
                }
            }
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(r * out), om, v);
        }
    }
}

/// One pass of `T` full tiles through a transposed input block: `x` holds `16 · T` rows of `in`,
/// `y` as many rows of `out`; `xt` holds `SUPER_ROWS · TILE` values, `acc` `out · 16 · T`.
#[target_feature(enable = "avx512f,avx2,fma")]
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
        "sparse_tiles (avx512): {lanes} rows, x has {} values for in {inn}, y {} for out {out}",
        x.len(),
        y.len()
    );
    for (a, &b) in acc.chunks_exact_mut(lanes).zip(&m.bias) {
        a.fill(b);
    }
    // A non-zero costs T FMAs and 2 + T loads; `sets` independent accumulator sets keep 4–8
    // chains in flight, enough to hide the 4-cycle FMA latency at that rate.
    let sets = if T == 4 { 2 } else { 4 };
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
                let mut a = [[_mm512_setzero_ps(); 4]; 4];
                for (t, at) in a[0].iter_mut().take(T).enumerate() {
                    *at = _mm512_loadu_ps(ap.add(TILE * t));
                }
                let mut e = es.start;
                while e + sets <= es.end {
                    for (u, au) in a.iter_mut().take(sets).enumerate() {
                        let (r, w) = (row(e + u), _mm512_set1_ps(*vp.add(e + u)));
                        for (t, at) in au.iter_mut().take(T).enumerate() {
                            *at = _mm512_fmadd_ps(w, _mm512_loadu_ps(r.add(TILE * t)), *at);
                        }
                    }
                    e += sets;
                }
                while e < es.end {
                    let (r, w) = (row(e), _mm512_set1_ps(*vp.add(e)));
                    for (t, at) in a[0].iter_mut().take(T).enumerate() {
                        *at = _mm512_fmadd_ps(w, _mm512_loadu_ps(r.add(TILE * t)), *at);
                    }
                    e += 1;
                }
                for t in 0..T {
                    let mut v = a[0][t];
                    for au in a.iter().take(sets).skip(1) {
                        v = _mm512_add_ps(v, au[t]);
                    }
                    _mm512_storeu_ps(ap.add(TILE * t), v);
                }
            }
        }
    }
    store_transposed(acc, lanes, y, out);
}
