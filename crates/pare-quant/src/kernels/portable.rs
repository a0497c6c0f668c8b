//! The portable int8 GEMM: plain int32 loops over the packed weights, computing
//! `Σ (a − za)·b + bias` directly. It is the reference the SIMD kernels must match bit for bit.

use super::{Gemm, NR, Out};

/// Rows `r0 .. r0 + out.len() / n` of the product.
pub(super) fn gemm(g: &Gemm<'_>, r0: usize, out: Out<'_>) {
    let n = g.b.n();
    match out {
        Out::Acc(o) => {
            for (i, orow) in o.chunks_exact_mut(n).enumerate() {
                row(g, r0 + i, |j, acc| orow[j] = acc);
            }
        }
        Out::Requant(o, rq) => {
            for (i, orow) in o.chunks_exact_mut(n).enumerate() {
                row(g, r0 + i, |j, acc| orow[j] = rq.apply(acc, j));
            }
        }
    }
}

/// Calls `emit(j, acc[i][j])` for every column of row `i`.
fn row(g: &Gemm<'_>, i: usize, mut emit: impl FnMut(usize, i32)) {
    let (k, n) = (g.b.k(), g.b.n());
    let arow = &g.a[i * k..(i + 1) * k];
    for blk in 0..g.b.blocks() {
        let data = g.b.block(blk);
        let mut acc = [0i32; NR];
        for (kk, &av) in arow.iter().enumerate() {
            let av = av as i32 - g.za;
            let base = (kk / 4) * NR * 4 + kk % 4;
            for (l, acc_l) in acc.iter_mut().enumerate() {
                let bv = data[base + l * 4] as i32 - 128;
                *acc_l = acc_l.wrapping_add(av * bv);
            }
        }
        let j0 = blk * NR;
        for (l, &acc_l) in acc.iter().enumerate().take(NR.min(n - j0)) {
            let bias = g.bias.map_or(0, |b| b[j0 + l]);
            emit(j0 + l, acc_l.wrapping_add(bias));
        }
    }
}
