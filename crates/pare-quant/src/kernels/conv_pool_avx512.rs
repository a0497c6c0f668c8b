//! AVX-512 VNNI path of [`ConvPool`]: 16 output channels per register, one `vpdpbusd` per
//! 4 patch bytes (the patch word broadcast, the weights as the signed operand), the int32
//! maximum over the pool window, and the GEMM's output stage.

use std::arch::x86_64::*;

use super::NR;
use super::avx512::{available, output_stage, requant16};
use super::conv_pool::{ConvPool, MAX_PATCH, load_row};

/// One example: `x` is `[h, w, cin]`, `y` the pooled `[ph, pw, cout]`.
///
/// # Panics
/// If the CPU lacks AVX-512 F/BW/VNNI or `y` is not one pooled example.
pub(super) fn example(cp: &ConvPool, x: &[i8], y: &mut [i8]) {
    assert!(available(), "conv_pool_avx512: CPU lacks AVX-512 F/BW/VNNI");
    assert_eq!(
        y.len(),
        cp.output_len(),
        "conv_pool_avx512: output of {:?} x {} channels",
        cp.out_dims(),
        cp.cout()
    );
    // SAFETY: the features were checked above.
    unsafe { example_impl(cp, x, y) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn example_impl(cp: &ConvPool, x: &[i8], y: &mut [i8]) {
    // The common shapes get constant masks and shifts in the patch gather.
    if cp.is_3x3_pool2() && cp.cout() <= NR {
        return example_3x3_pool2(cp, x, y);
    }
    match cp.patch_dims() {
        (3, 3) => example_shape::<3, 3>(cp, x, y),
        (2, 2) => example_shape::<2, 2>(cp, x, y),
        _ => example_shape::<0, 0>(cp, x, y),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn example_shape<const KH: usize, const ROW: usize>(cp: &ConvPool, x: &[i8], y: &mut [i8]) {
    let cout = cp.cout();
    let kg = cp.k_groups();
    let [ph, pw] = cp.pool_size();
    let [oh, ow] = cp.out_dims();
    for blk in 0..cout.div_ceil(NR) {
        let j0 = blk * NR;
        let corr: &[i32; NR] = cp.corr()[j0..j0 + NR]
            .try_into()
            .expect("conv_pool_avx512: corrections padded to 16 lanes");
        let (ctx, consts) = output_stage(cp.requant(), j0, cout, corr);
        let mut w = [_mm512_setzero_si512(); MAX_PATCH / 4];
        for (g, wg) in w.iter_mut().enumerate().take(kg) {
            let bytes = &cp.packed()[(blk * kg + g) * NR * 4..(blk * kg + g + 1) * NR * 4];
            // SAFETY: `bytes` is 64 readable bytes; loadu has no alignment requirement.
            *wg = unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) };
        }
        for p in 0..oh * ow {
            let (py, px) = (p / ow, p % ow);
            let mut best = _mm512_set1_epi32(i32::MIN);
            for dy in 0..ph {
                for dx in 0..pw {
                    let patch = cp.patch_const::<KH, ROW>(x, py * ph + dy, px * pw + dx);
                    let mut acc = ctx.corr;
                    for (g, &wg) in w.iter().enumerate().take(kg) {
                        let word = _mm512_set1_epi32((patch >> (32 * g)) as u32 as i32);
                        acc = _mm512_dpbusd_epi32(acc, word, wg);
                    }
                    let v = if cp.max_first() {
                        acc
                    } else {
                        requant16(acc, &ctx, &consts)
                    };
                    best = _mm512_max_epi32(best, v);
                }
            }
            let r = if cp.max_first() {
                requant16(best, &ctx, &consts)
            } else {
                best
            };
            let dst = &mut y[p * cout + j0..p * cout + j0 + NR.min(cout - j0)];
            // SAFETY: the store writes only the lanes in `ctx.lanes`, the first
            // `min(16, cout − j0)` = `dst.len()` bytes; the values are clamped to int8.
            unsafe { _mm512_mask_cvtepi32_storeu_epi8(dst.as_mut_ptr().cast(), ctx.lanes, r) };
        }
    }
}

/// The small CNN's layer: a 3×3 conv on one channel, stride 1, then a 2×2 pool, at most 16
/// channels. The 4 conv outputs of a pooled pixel read a 4×4 input window, so 4 row loads
/// (instead of 12) give all their patches: patch `(dy, dx)` takes rows `dy .. dy + 3`, shifted
/// right by `dx` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn example_3x3_pool2(cp: &ConvPool, x: &[i8], y: &mut [i8]) {
    let cout = cp.cout();
    let [oh, ow] = cp.out_dims();
    let stride = cp.row_stride();
    let corr: &[i32; NR] = cp.corr()[..NR]
        .try_into()
        .expect("conv_pool_avx512: corrections padded to 16 lanes");
    let (ctx, consts) = output_stage(cp.requant(), 0, cout, corr);
    let mut w = [_mm512_setzero_si512(); 3];
    for (g, wg) in w.iter_mut().enumerate() {
        let bytes = &cp.packed()[g * NR * 4..(g + 1) * NR * 4];
        // SAFETY: `bytes` is 64 readable bytes; loadu has no alignment requirement.
        *wg = unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) };
    }
    let max_first = cp.max_first();
    for py in 0..oh {
        for px in 0..ow {
            let base = 2 * py * stride + 2 * px;
            let rows = [0, 1, 2, 3].map(|r| load_row(x, base + r * stride, 4));
            let mut best = _mm512_set1_epi32(i32::MIN);
            for dy in 0..2 {
                for dx in 0..2 {
                    let [a, b, c] = [0, 1, 2].map(|r| (rows[dy + r] >> (8 * dx)) & 0xFF_FFFF);
                    let words = [a | b << 24, b >> 8 | c << 16, c >> 16];
                    let mut acc = ctx.corr;
                    for (&word, &wg) in words.iter().zip(&w) {
                        acc = _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(word as u32 as i32), wg);
                    }
                    let v = if max_first {
                        acc
                    } else {
                        requant16(acc, &ctx, &consts)
                    };
                    best = _mm512_max_epi32(best, v);
                }
            }
            let r = if max_first {
                requant16(best, &ctx, &consts)
            } else {
                best
            };
            let p = py * ow + px;
            let dst = &mut y[p * cout..(p + 1) * cout];
            // SAFETY: the store writes only the lanes in `ctx.lanes`, the first `cout` =
            // `dst.len()` bytes; the values are clamped to int8.
            unsafe { _mm512_mask_cvtepi32_storeu_epi8(dst.as_mut_ptr().cast(), ctx.lanes, r) };
        }
    }
}
