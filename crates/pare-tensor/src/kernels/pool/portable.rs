//! Portable arg-max max-pool kernels, one image at a time: the reference for the AVX-512 ones.

use super::Clips;
use crate::kernels::conv::Window;

/// Pools one image `src` (`[h, w, c]`) into `out` (`[oh, ow, c]`) and records each output's
/// winning window position `dy · kw + dx` in `arg`.
pub(super) fn argmax_forward_image(
    win: &Window,
    clips: &Clips,
    src: &[f32],
    out: &mut [f32],
    arg: &mut [u8],
) {
    let c = win.c;
    for (oy, &(iy0, rows)) in clips.rows.iter().enumerate() {
        for (ox, &(ix0, cols)) in clips.cols.iter().enumerate() {
            let at = (oy * win.ow + ox) * c;
            let (o, a) = (&mut out[at..at + c], &mut arg[at..at + c]);
            let first = (iy0 * win.w + ix0) * c;
            o.copy_from_slice(&src[first..first + c]);
            a.fill(0);
            for dy in 0..rows {
                for dx in 0..cols {
                    let t = (dy * win.kw + dx) as u8;
                    let s = first + (dy * win.w + dx) * c;
                    // Strictly greater: the first maximum keeps the gradient.
                    for ((o, a), &v) in o.iter_mut().zip(a.iter_mut()).zip(&src[s..s + c]) {
                        let better = v > *o;
                        *o = if better { v } else { *o };
                        *a = if better { t } else { *a };
                    }
                }
            }
        }
    }
}

/// Routes one image's output gradient `g` (`[oh, ow, c]`) to the inputs `arg` names, into `gx`
/// (`[h, w, c]`): written when the windows `tiles` the input, added to (zeroed) `gx` otherwise.
pub(super) fn argmax_backward_image(
    win: &Window,
    clips: &Clips,
    arg: &[u8],
    g: &[f32],
    gx: &mut [f32],
    tiles: bool,
) {
    let c = win.c;
    for (oy, &(iy0, rows)) in clips.rows.iter().enumerate() {
        for (ox, &(ix0, cols)) in clips.cols.iter().enumerate() {
            let at = (oy * win.ow + ox) * c;
            let (a, gv) = (&arg[at..at + c], &g[at..at + c]);
            let first = (iy0 * win.w + ix0) * c;
            for dy in 0..rows {
                for dx in 0..cols {
                    let t = (dy * win.kw + dx) as u8;
                    let i = first + (dy * win.w + dx) * c;
                    let d = &mut gx[i..i + c];
                    if tiles {
                        for ((d, &ai), &gi) in d.iter_mut().zip(a).zip(gv) {
                            *d = if ai == t { gi } else { 0.0 };
                        }
                    } else {
                        for ((d, &ai), &gi) in d.iter_mut().zip(a).zip(gv) {
                            *d += if ai == t { gi } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}
