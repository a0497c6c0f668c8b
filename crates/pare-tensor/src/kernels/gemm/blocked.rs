//! Portable reference: a cache-blocked loop with the i-k-j order, so the innermost loop runs
//! along contiguous rows of `b` and `c` and auto-vectorises when they are contiguous.

use ndarray::{ArrayView2, ArrayViewMut2, Axis};

const KC: usize = 256;

pub(super) fn matmul(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    mut c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    if !accumulate {
        c.fill(0.0);
    }
    let k = a.ncols();
    for k0 in (0..k).step_by(KC) {
        let k1 = (k0 + KC).min(k);
        for (i, mut crow) in c.axis_iter_mut(Axis(0)).enumerate() {
            for p in k0..k1 {
                let aip = a[[i, p]];
                if aip == 0.0 {
                    continue;
                }
                crow.scaled_add(aip, &b.row(p));
            }
        }
    }
}
