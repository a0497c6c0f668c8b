//! Portable kernels: the semantics every fast path must reproduce (up to summation order).

use super::{BLOCK_ROWS, DenseKernel, PANEL, SparseDense, TILE, TileScratch};

/// One batch row: `y = bias + x · W` from the K-blocked columns.
pub(super) fn sparse_row(m: &SparseDense, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!((x.len(), y.len()), (m.in_features, m.out_features));
    let out = m.out_features;
    y.copy_from_slice(&m.bias);
    for kb in 0..m.in_features.div_ceil(BLOCK_ROWS) {
        for (j, yj) in y.iter_mut().enumerate() {
            let p = kb * out + j;
            let (rows, vals) = (
                &m.rows[m.ptr[p]..m.ptr[p + 1]],
                &m.values[m.ptr[p]..m.ptr[p + 1]],
            );
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
            *yj += (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }
}

/// Up to [`TILE`] batch rows (`x` holds `nb` rows of `in`, `y` holds `nb` rows of `out`).
pub(super) fn sparse_tile(
    m: &SparseDense,
    x: &[f32],
    nb: usize,
    y: &mut [f32],
    s: &mut TileScratch,
) {
    let (inn, out) = (m.in_features, m.out_features);
    debug_assert!(nb <= TILE && x.len() == nb * inn && y.len() == nb * out);
    s.prepare(out, nb);
    for (j, a) in s.acc.chunks_exact_mut(TILE).enumerate() {
        a.fill(m.bias[j]);
    }
    for kb in 0..inn.div_ceil(BLOCK_ROWS) {
        let k0 = kb * BLOCK_ROWS;
        let klen = BLOCK_ROWS.min(inn - k0);
        // Transpose the block: xt[i][r] = x[r][k0 + i]. Lanes >= nb stay zero from `prepare`.
        for r in 0..nb {
            for (i, &v) in x[r * inn + k0..r * inn + k0 + klen].iter().enumerate() {
                s.xt[i * TILE + r] = v;
            }
        }
        for j in 0..out {
            let p = kb * out + j;
            let acc: &mut [f32; TILE] = (&mut s.acc[j * TILE..(j + 1) * TILE])
                .try_into()
                .expect("sparse_tile: accumulator row is TILE wide");
            for e in m.ptr[p]..m.ptr[p + 1] {
                let i = m.rows[e] as usize - k0;
                let w = m.values[e];
                let xr: &[f32; TILE] = s.xt[i * TILE..(i + 1) * TILE]
                    .try_into()
                    .expect("sparse_tile: transposed row is TILE wide");
                for t in 0..TILE {
                    acc[t] += w * xr[t];
                }
            }
        }
    }
    for r in 0..nb {
        for j in 0..out {
            y[r * out + j] = s.acc[j * TILE + r];
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
