//! Portable kernels: the semantics every fast path must reproduce (up to summation order).

use super::{
    BLOCK_ROWS, DenseKernel, LANES, PANEL, SUPER_ROWS, SparseDense, TILE, WINDOW, WindowGroups,
};

/// One batch row: `y = bias + x · W`, one dot product per column.
pub(super) fn sparse_row(m: &SparseDense, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!((x.len(), y.len()), (m.in_features, m.out_features));
    for (j, yj) in y.iter_mut().enumerate() {
        let col = m.column(j);
        let (rows, vals) = (&m.rows[col.clone()], &m.values[col]);
        // Four partial sums break the add dependency chain.
        let mut acc = [0.0f32; 4];
        let mut rc = rows.chunks_exact(4);
        let mut vc = vals.chunks_exact(4);
        for (r, v) in (&mut rc).zip(&mut vc) {
            for t in 0..4 {
                acc[t] += v[t] * x[r[t] as usize];
            }
        }
        for (&r, &v) in rc.remainder().iter().zip(vc.remainder()) {
            acc[0] += v * x[r as usize];
        }
        *yj = m.bias[j] + ((acc[0] + acc[1]) + (acc[2] + acc[3]));
    }
}

/// Every row of `x` (rows of `in`) into `y` (rows of `out`) through the window groups `g`:
/// occupied lane `l` of a group adds `w[l] · x[32 · window + idx[l]]` to its map's accumulator,
/// empty lanes nothing; the lanes of each column are summed at the end.
pub(super) fn group_rows(m: &SparseDense, g: &WindowGroups, x: &[f32], y: &mut [f32]) {
    let (inn, out) = (m.in_features, m.out_features);
    for (xr, yr) in x.chunks_exact(inn).zip(y.chunks_exact_mut(out)) {
        let mut acc = [[0.0f32; LANES]; 2];
        for (w, xw) in xr.chunks(WINDOW).enumerate() {
            for k in g.ptr[w]..g.ptr[w + 1] {
                let a = &mut acc[(k - g.ptr[w]) % 2];
                for (l, al) in a.iter_mut().enumerate() {
                    if g.mask[k] >> l & 1 == 1 {
                        *al += g.w[k].0[l] * xw[usize::from(g.idx[k].0[l])];
                    }
                }
            }
        }
        g.fold(&acc, &m.bias, yr);
    }
}

/// One pass of `T` full tiles: `x` holds `16 · T` rows of `in`, `y` as many rows of `out`;
/// `xt` holds `SUPER_ROWS · TILE` values, `acc` holds `out · 16 · T`.
pub(super) fn sparse_tiles<const T: usize>(
    m: &SparseDense,
    x: &[f32],
    y: &mut [f32],
    xt: &mut [f32],
    acc: &mut [f32],
) {
    let (inn, out) = (m.in_features, m.out_features);
    let lanes = T * TILE;
    let span = SUPER_ROWS / T;
    debug_assert!(x.len() == lanes * inn && y.len() == lanes * out && acc.len() == out * lanes);
    for (a, &b) in acc.chunks_exact_mut(lanes).zip(&m.bias) {
        a.fill(b);
    }
    for (s, k0) in (0..inn).step_by(span).enumerate() {
        let klen = span.min(inn - k0);
        // Transpose the block: xt[i][r] = x[r][k0 + i].
        for r in 0..lanes {
            for (i, &v) in x[r * inn + k0..r * inn + k0 + klen].iter().enumerate() {
                xt[i * lanes + r] = v;
            }
        }
        for (j, a) in acc.chunks_exact_mut(lanes).enumerate() {
            for e in m.column_blocks(j, s * span / BLOCK_ROWS, span / BLOCK_ROWS) {
                let i = m.rows[e] as usize - k0;
                let w = m.values[e];
                for (av, &xv) in a.iter_mut().zip(&xt[i * lanes..(i + 1) * lanes]) {
                    *av += w * xv;
                }
            }
        }
    }
    for r in 0..lanes {
        for j in 0..out {
            y[r * out + j] = acc[j * lanes + r];
        }
    }
}

/// Dense baseline: 4 rows × one 16-column panel at a time, leftover rows one by one.
pub(super) fn dense(k: &DenseKernel, x: &[f32], batch: usize, y: &mut [f32]) {
    let (inn, out) = (k.in_features, k.out_features);
    for p in 0..out.div_ceil(PANEL) {
        let panel = &k.panels[p * inn * PANEL..(p + 1) * inn * PANEL];
        let (c0, nc) = (p * PANEL, PANEL.min(out - p * PANEL));
        let mut b = 0;
        while b + 4 <= batch {
            let mut acc = [[0.0f32; PANEL]; 4];
            for (i, wr) in panel.chunks_exact(PANEL).enumerate() {
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = x[(b + r) * inn + i];
                    for c in 0..PANEL {
                        a[c] += xv * wr[c];
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for c in 0..nc {
                    y[(b + r) * out + c0 + c] = a[c] + k.bias[c0 + c];
                }
            }
            b += 4;
        }
        for b in b..batch {
            let mut acc = [0.0f32; PANEL];
            for (i, wr) in panel.chunks_exact(PANEL).enumerate() {
                let xv = x[b * inn + i];
                for c in 0..PANEL {
                    acc[c] += xv * wr[c];
                }
            }
            for c in 0..nc {
                y[b * out + c0 + c] = acc[c] + k.bias[c0 + c];
            }
        }
    }
}
