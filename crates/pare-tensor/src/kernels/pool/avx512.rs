//! AVX-512 arg-max max-pool kernels, one image at a time: channels in 16-lane blocks (a mask
//! covers a partial block), the arg-max kept as 32-bit lanes and narrowed to bytes on store.
//! The comparisons and selects are the portable code's, so the results are the same bits.

use super::Clips;
use crate::kernels::Kernel;
use crate::kernels::conv::Window;
use std::arch::x86_64::*;

const LANES: usize = 16;

/// Mask of the real channels of block `b` of `c`.
fn lane_mask(c: usize, b: usize) -> __mmask16 {
    let n = (c - b * LANES).min(LANES);
    ((1u32 << n) - 1) as __mmask16
}

/// Checks what the pointer arithmetic below relies on: every clipped window lies inside an
/// `[h, w, c]` image, and the slices hold one image.
fn check(win: &Window, clips: &Clips, input: usize, output: usize, arg: usize) {
    let per_out = win.oh * win.ow * win.c;
    assert!(
        input == win.h * win.w * win.c && output == per_out && arg == per_out,
        "max_pool (avx512): image sizes"
    );
    assert!(
        clips.rows.len() == win.oh
            && clips.cols.len() == win.ow
            && clips.rows.iter().all(|&(i0, n)| i0 + n <= win.h)
            && clips.cols.iter().all(|&(i0, n)| i0 + n <= win.w)
            && win.kh * win.kw <= 1 << 8,
        "max_pool (avx512): window clipping"
    );
}

/// Pools one image `src` (`[h, w, c]`) into `out` (`[oh, ow, c]`) and records each output's
/// winning window position `dy · kw + dx` in `arg`.
///
/// # Panics
/// If the CPU lacks AVX-512 F/BW/VL or the slices do not match the window.
pub(super) fn argmax_forward_image(
    win: &Window,
    clips: &Clips,
    src: &[f32],
    out: &mut [f32],
    arg: &mut [u8],
) {
    assert!(Kernel::Avx512.available(), "max_pool: CPU lacks AVX-512");
    check(win, clips, src.len(), out.len(), arg.len());
    // SAFETY: the features, the sizes and the window clipping were checked above.
    unsafe { forward_inner(win, clips, src, out, arg) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn forward_inner(win: &Window, clips: &Clips, src: &[f32], out: &mut [f32], arg: &mut [u8]) {
    let c = win.c;
    let (xs, os, as_) = (src.as_ptr(), out.as_mut_ptr(), arg.as_mut_ptr());
    for (oy, &(iy0, rows)) in clips.rows.iter().enumerate() {
        for (ox, &(ix0, cols)) in clips.cols.iter().enumerate() {
            let at = (oy * win.ow + ox) * c;
            let first = (iy0 * win.w + ix0) * c;
            for b in 0..c.div_ceil(LANES) {
                let m = lane_mask(c, b);
                let bo = b * LANES;
                // SAFETY: the masked lanes are channels of block b of the window's first input
                // pixel, inside `src` (the clipping was checked in `check`).
                let mut best = unsafe { _mm512_maskz_loadu_ps(m, xs.add(first + bo)) };
                let mut pos = _mm512_setzero_si512();
                for dy in 0..rows {
                    for dx in 0..cols {
                        let t = _mm512_set1_epi32((dy * win.kw + dx) as i32);
                        let s = first + (dy * win.w + dx) * c + bo;
                        // SAFETY: as above, for input pixel (iy0 + dy, ix0 + dx) of the window.
                        let v = unsafe { _mm512_maskz_loadu_ps(m, xs.add(s)) };
                        // Strictly greater (ordered): the first maximum keeps the gradient.
                        let better = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(m, v, best);
                        best = _mm512_mask_mov_ps(best, better, v);
                        pos = _mm512_mask_mov_epi32(pos, better, t);
                    }
                }
                // SAFETY: the masked lanes are output pixel (oy, ox)'s channels of block b,
                // inside `out` and `arg` (sizes checked in `check`).
                unsafe {
                    _mm512_mask_storeu_ps(os.add(at + bo), m, best);
                    _mm512_mask_cvtepi32_storeu_epi8(as_.add(at + bo).cast(), m, pos);
                }
            }
        }
    }
}

/// Routes one image's output gradient `g` (`[oh, ow, c]`) to the inputs `arg` names, into `gx`
/// (`[h, w, c]`): written when the windows `tiles` the input, added to (zeroed) `gx` otherwise.
///
/// # Panics
/// If the CPU lacks AVX-512 F/BW/VL or the slices do not match the window.
pub(super) fn argmax_backward_image(
    win: &Window,
    clips: &Clips,
    arg: &[u8],
    g: &[f32],
    gx: &mut [f32],
    tiles: bool,
) {
    assert!(Kernel::Avx512.available(), "max_pool: CPU lacks AVX-512");
    check(win, clips, gx.len(), g.len(), arg.len());
    // SAFETY: the features, the sizes and the window clipping were checked above.
    unsafe { backward_inner(win, clips, arg, g, gx, tiles) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn backward_inner(win: &Window, clips: &Clips, arg: &[u8], g: &[f32], gx: &mut [f32], tiles: bool) {
    let c = win.c;
    let (ap, gp, dp) = (arg.as_ptr(), g.as_ptr(), gx.as_mut_ptr());
    for (oy, &(iy0, rows)) in clips.rows.iter().enumerate() {
        for (ox, &(ix0, cols)) in clips.cols.iter().enumerate() {
            let at = (oy * win.ow + ox) * c;
            let first = (iy0 * win.w + ix0) * c;
            for b in 0..c.div_ceil(LANES) {
                let m = lane_mask(c, b);
                let bo = b * LANES;
                // SAFETY: the masked lanes are output pixel (oy, ox)'s channels of block b,
                // inside `arg` and `g` (sizes checked in `check`).
                let (pos, gv) = unsafe {
                    let bytes = _mm_maskz_loadu_epi8(m, ap.add(at + bo).cast());
                    (
                        _mm512_cvtepu8_epi32(bytes),
                        _mm512_maskz_loadu_ps(m, gp.add(at + bo)),
                    )
                };
                for dy in 0..rows {
                    for dx in 0..cols {
                        let t = _mm512_set1_epi32((dy * win.kw + dx) as i32);
                        let v = _mm512_maskz_mov_ps(_mm512_mask_cmpeq_epi32_mask(m, pos, t), gv);
                        let at_in = first + (dy * win.w + dx) * c + bo;
                        // SAFETY: the masked lanes are channels of block b of input pixel
                        // (iy0 + dy, ix0 + dx) of the window, inside `gx` (clipping checked in
                        // `check`).
                        unsafe {
                            let d = dp.add(at_in);
                            let v = if tiles {
                                v
                            } else {
                                _mm512_add_ps(_mm512_maskz_loadu_ps(m, d), v)
                            };
                            _mm512_mask_storeu_ps(d, m, v);
                        }
                    }
                }
            }
        }
    }
}
