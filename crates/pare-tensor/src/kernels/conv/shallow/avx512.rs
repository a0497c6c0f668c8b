//! AVX-512 direct convolution for the pixels whose window lies inside the input.
//!
//! Output channels are one 16-lane block per register (a mask covers a partial block). The
//! forward pass takes the patch in chunks of up to [`TAPS`] elements and holds that chunk of
//! kernel rows in registers across all pixels, so a tap costs one broadcast multiply-add; with
//! more than one chunk a pixel's partial sum goes through a scratch slot between chunks. The
//! kernel gradient holds a chunk's accumulators in registers across the pixels the same way.
//! Border pixels (windows clipped by `same` padding) use the portable per-pixel code. The fused
//! convolution + max-pool kernels work the same way, pool window by pool window.

use super::{Geometry, LANES, Lanes, portable};
use crate::graph::Activation;
use crate::kernels::conv::Window;
use std::arch::x86_64::*;

/// At most this many kernel rows (forward) or gradient accumulators (backward) are held in
/// registers per pass over the pixels: 16 of the 32 vector registers, so a 3x3 window over one
/// channel takes one pass and 3x3x3 two.
const TAPS: usize = 16;

/// Splits `plen` patch elements into passes of at most [`TAPS`], as even as possible (27 →
/// 14 + 13 rather than 16 + 11), and returns the chunk starts and lengths.
fn chunks(plen: usize) -> impl Iterator<Item = (usize, usize)> {
    let passes = plen.div_ceil(TAPS).max(1);
    let (q, r) = (plen / passes, plen % passes);
    (0..passes).scan(0, move |start, i| {
        let len = q + usize::from(i < r);
        let s = *start;
        *start += len;
        Some((s, len))
    })
}

fn available() -> bool {
    crate::kernels::Kernel::Avx512.available()
}

/// Mask of the real output channels of block `b`.
fn lane_mask(oc: usize, b: usize) -> __mmask16 {
    let n = (oc - b * LANES).min(LANES);
    ((1u32 << n) - 1) as __mmask16
}

/// Checks what the unchecked input loads rely on: the window of every inner pixel lies inside
/// `src` (offsets grow with the pixel, so the last inner pixel's last element bounds them all).
fn check_inner(geo: &Geometry, src_len: usize) {
    if geo.inner_rows.is_empty() || geo.inner_cols.is_empty() || geo.plen == 0 {
        return;
    }
    let last = geo.base(geo.inner_rows.end - 1, geo.inner_cols.end - 1) + geo.xoff[geo.plen - 1];
    assert!(
        last < src_len,
        "conv2d (shallow, avx512): window reaches {last} of a {src_len}-float input"
    );
}

/// Input offset of the first inner pixel of output row `oy` and the step between columns.
fn row_start(geo: &Geometry, oy: usize) -> (usize, usize) {
    let w = &geo.win;
    (geo.base(oy, geo.inner_cols.start), w.sw * w.c)
}

/// Runs `$f::<T>(args)` with `T` the chunk length `$t` in `1..=TAPS`, so the chunk's registers
/// are a fixed-size array the compiler keeps out of memory.
macro_rules! by_taps {
    ($t:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $t {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            13 => $f::<13>($($arg),*),
            14 => $f::<14>($($arg),*),
            15 => $f::<15>($($arg),*),
            _ => $f::<TAPS>($($arg),*),
        }
    };
}

#[target_feature(enable = "avx512f")]
fn activate(v: __m512, act: Activation) -> __m512 {
    let zero = _mm512_setzero_ps();
    match act {
        Activation::Linear => v,
        // vmaxps returns the second operand for NaN, as f32::max(NaN, 0) gives 0.
        Activation::Relu => _mm512_max_ps(v, zero),
        Activation::LeakyRelu(a) => {
            let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, zero);
            _mm512_mask_mul_ps(v, !pos, v, _mm512_set1_ps(a))
        }
    }
}

/// `g` times the activation's derivative read off `y`: kept where `!(y <= 0)`, as the portable
/// code's `if y <= 0.0` does (NaN keeps it).
#[target_feature(enable = "avx512f")]
fn backprop(g: __m512, y: __m512, act: Activation) -> __m512 {
    let keep = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(y, _mm512_setzero_ps());
    match act {
        Activation::Linear => g,
        Activation::Relu => _mm512_maskz_mov_ps(keep, g),
        Activation::LeakyRelu(a) => _mm512_mask_mul_ps(g, !keep, g, _mm512_set1_ps(a)),
    }
}

/// One image: `dst` is `[oh, ow, oc]`, `src` `[h, w, c]`.
///
/// # Panics
/// If the CPU lacks AVX-512F or the slices do not match the geometry.
pub(super) fn forward_image(
    geo: &Geometry,
    src: &[f32],
    dst: &mut [f32],
    packed: &[Lanes],
    bias: &[Lanes],
    act: Activation,
) {
    assert!(available(), "conv2d (shallow): CPU lacks AVX-512F");
    assert!(
        src.len() == geo.per_in() && dst.len() == geo.per_out(),
        "conv2d (shallow, avx512): image sizes"
    );
    assert!(packed.len() == geo.blocks() * geo.plen && bias.len() == geo.blocks());
    if geo.plen == 0 {
        return portable::forward_image(geo, src, dst, packed, bias, act);
    }
    let oc = geo.oc;
    for oy in 0..geo.win.oh {
        for ox in 0..geo.win.ow {
            if !geo.inner(oy, ox) {
                let pixel = &mut dst[(oy * geo.win.ow + ox) * oc..][..oc];
                portable::forward_pixel(geo, src, pixel, (oy, ox), packed, bias, act);
            }
        }
    }
    check_inner(geo, src.len());
    // Partial sums between passes live in whole, aligned 16-lane slots: reading a pixel's sum
    // back from `dst` right after the masked store of its neighbour (whose masked-out lanes
    // overlap it) defeats store forwarding and cost ~4x the pass.
    let inner = geo.inner_rows.len() * geo.inner_cols.len();
    let mut partial = if geo.plen > TAPS {
        vec![[0.0f32; LANES]; inner]
    } else {
        Vec::new()
    };
    for b in 0..geo.blocks() {
        for (p0, t) in chunks(geo.plen) {
            let taps = &packed[b * geo.plen + p0..][..t];
            let chunk = Chunk {
                geo,
                xoff: &geo.xoff[p0..p0 + t],
                block: b,
                first: p0 == 0,
                last: p0 + t == geo.plen,
            };
            let out = Out {
                dst: &mut *dst,
                partial: &mut partial,
            };
            // SAFETY: AVX-512F was checked above; `check_inner` bounds every input read, and
            // each store is masked to block `b`'s real channels of a pixel inside `dst`.
            unsafe { by_taps!(t, forward_chunk(&chunk, src, out, taps, &bias[b], act)) }
        }
    }
}

/// One chunk of consecutive patch elements of one channel block.
struct Chunk<'a> {
    geo: &'a Geometry,
    /// Input offsets of the chunk's patch elements.
    xoff: &'a [usize],
    /// Channel block.
    block: usize,
    /// The chunk starts the patch (forward: start from the bias).
    first: bool,
    /// The chunk ends the patch (forward: apply the activation and write the output).
    last: bool,
}

/// Where a forward pass writes: the output (last pass) or the partial sums (earlier passes,
/// one slot per inner pixel).
struct Out<'a> {
    dst: &'a mut [f32],
    partial: &'a mut [Lanes],
}

#[target_feature(enable = "avx512f")]
fn forward_chunk<const T: usize>(
    chunk: &Chunk<'_>,
    src: &[f32],
    out: Out<'_>,
    taps: &[Lanes],
    bias: &Lanes,
    act: Activation,
) {
    let Out { dst, partial } = out;
    assert!(
        chunk.first && chunk.last || partial.len() == geo_inner(chunk.geo),
        "conv2d (shallow, avx512): partial sums"
    );
    let geo = chunk.geo;
    let (oc, ow, b) = (geo.oc, geo.win.ow, chunk.block);
    let m = lane_mask(oc, b);
    let mut k = [_mm512_setzero_ps(); T];
    let mut off = [0usize; T];
    for t in 0..T {
        // SAFETY: a `Lanes` is 16 floats.
        k[t] = unsafe { _mm512_loadu_ps(taps[t].as_ptr()) };
        off[t] = chunk.xoff[t];
    }
    // SAFETY: a `Lanes` is 16 floats.
    let bias = unsafe { _mm512_loadu_ps(bias.as_ptr()) };
    let mut slot = 0;
    for oy in geo.inner_rows.clone() {
        let (mut base, step) = row_start(geo, oy);
        for ox in geo.inner_cols.clone() {
            let mut acc = if chunk.first {
                bias
            } else {
                // SAFETY: a `Lanes` is 16 floats.
                unsafe { _mm512_loadu_ps(partial[slot].as_ptr()) }
            };
            for t in 0..T {
                // SAFETY: `check_inner` showed base + off[t] < src.len() for inner pixels.
                let xv = unsafe { *src.get_unchecked(base + off[t]) };
                acc = _mm512_fmadd_ps(_mm512_set1_ps(xv), k[t], acc);
            }
            if chunk.last {
                let at = (oy * ow + ox) * oc + b * LANES;
                let acc = activate(acc, act);
                // SAFETY: the masked lanes are pixel (oy, ox)'s channels of block b, inside
                // `dst`.
                unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(at), m, acc) };
            } else {
                // SAFETY: a `Lanes` is 16 floats.
                unsafe { _mm512_storeu_ps(partial[slot].as_mut_ptr(), acc) };
            }
            slot += 1;
            base += step;
        }
    }
}

/// Number of inner pixels.
fn geo_inner(geo: &Geometry) -> usize {
    geo.inner_rows.len() * geo.inner_cols.len()
}

/// Multiplies an output gradient `g` by the activation's derivative (read off `y`) in place.
/// Element-wise, so it runs over whole vectors regardless of the channel count.
///
/// # Panics
/// If the CPU lacks AVX-512F or the lengths differ.
pub(super) fn activation_grad(g: &mut [f32], y: &[f32], act: Activation) {
    assert!(available(), "conv2d (shallow): CPU lacks AVX-512F");
    assert_eq!(
        g.len(),
        y.len(),
        "conv2d backward (shallow, avx512): g vs y"
    );
    if act != Activation::Linear {
        // SAFETY: AVX-512F was checked above; the lengths are equal.
        unsafe { activation_grad_inner(g, y, act) }
    }
}

#[target_feature(enable = "avx512f")]
fn activation_grad_inner(g: &mut [f32], y: &[f32], act: Activation) {
    let n = g.len();
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= LANES {
            !0
        } else {
            ((1u32 << (n - i)) - 1) as __mmask16
        };
        // SAFETY: the masked lanes are i .. min(i + 16, n), inside `g` and `y`.
        unsafe {
            let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
            let yv = _mm512_maskz_loadu_ps(m, y.as_ptr().add(i));
            _mm512_mask_storeu_ps(g.as_mut_ptr().add(i), m, backprop(gv, yv, act));
        }
        i += LANES;
    }
}

/// One image's kernel and bias gradients, added to `gk` (`[blocks][plen]` lanes) and `gb`
/// (`[blocks]`), from its activation-multiplied output gradient `gz`.
///
/// # Panics
/// If the CPU lacks AVX-512F or the slices do not match the geometry.
pub(super) fn filter_grad_image(
    geo: &Geometry,
    src: &[f32],
    gz: &[f32],
    gk: &mut [Lanes],
    gb: &mut [Lanes],
) {
    assert!(available(), "conv2d (shallow): CPU lacks AVX-512F");
    assert!(
        src.len() == geo.per_in()
            && gz.len() == geo.per_out()
            && gk.len() == geo.blocks() * geo.plen
            && gb.len() == geo.blocks(),
        "conv2d backward (shallow, avx512): image sizes"
    );
    let oc = geo.oc;
    for oy in 0..geo.win.oh {
        for ox in 0..geo.win.ow {
            if !geo.inner(oy, ox) {
                let at = (oy * geo.win.ow + ox) * oc;
                portable::filter_grad_pixel(geo, src, &gz[at..at + oc], (oy, ox), gk, gb);
            }
        }
    }
    check_inner(geo, src.len());
    for (b, bias_lanes) in gb.iter_mut().enumerate() {
        // The bias is a tap whose input is always 1: the first pass sums it too.
        let mut bias = Some(bias_lanes);
        for (p0, t) in chunks(geo.plen) {
            let chunk = Chunk {
                geo,
                xoff: &geo.xoff[p0..p0 + t],
                block: b,
                first: p0 == 0,
                last: p0 + t == geo.plen,
            };
            let acc = &mut gk[b * geo.plen + p0..][..t];
            let bias = bias.take();
            // SAFETY: AVX-512F was checked above; `check_inner` bounds every input read, and
            // each gradient load is masked to block `b`'s real channels of a pixel inside `gz`.
            unsafe { by_taps!(t, filter_grad_chunk(&chunk, src, gz, acc, bias)) }
        }
    }
}

#[target_feature(enable = "avx512f")]
fn filter_grad_chunk<const T: usize>(
    chunk: &Chunk<'_>,
    src: &[f32],
    gz: &[f32],
    gk: &mut [Lanes],
    gb: Option<&mut Lanes>,
) {
    let geo = chunk.geo;
    let (oc, ow, b) = (geo.oc, geo.win.ow, chunk.block);
    let m = lane_mask(oc, b);
    let mut bsum = _mm512_setzero_ps();
    let mut acc = [_mm512_setzero_ps(); T];
    let mut off = [0usize; T];
    off.copy_from_slice(&chunk.xoff[..T]);
    for oy in geo.inner_rows.clone() {
        let (mut base, step) = row_start(geo, oy);
        for ox in geo.inner_cols.clone() {
            let at = (oy * ow + ox) * oc + b * LANES;
            // SAFETY: the masked lanes are pixel (oy, ox)'s channels of block b, inside `gz`.
            let gv = unsafe { _mm512_maskz_loadu_ps(m, gz.as_ptr().add(at)) };
            bsum = _mm512_add_ps(bsum, gv);
            for t in 0..T {
                // SAFETY: `check_inner` showed base + off[t] < src.len() for inner pixels.
                let xv = unsafe { *src.get_unchecked(base + off[t]) };
                acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(xv), gv, acc[t]);
            }
            base += step;
        }
    }
    for t in 0..T {
        // SAFETY: a `Lanes` is 16 floats.
        unsafe {
            let p = gk[t].as_mut_ptr();
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), acc[t]));
        }
    }
    if let Some(gb) = gb {
        // SAFETY: a `Lanes` is 16 floats.
        unsafe {
            let p = gb.as_mut_ptr();
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), bsum));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_patch_evenly() {
        for plen in 1..=64 {
            let c: Vec<_> = chunks(plen).collect();
            assert_eq!(c.iter().map(|&(_, l)| l).sum::<usize>(), plen);
            assert!(c.iter().all(|&(_, l)| (1..=TAPS).contains(&l)));
            assert!(
                c.windows(2)
                    .all(|w| w[0].0 + w[0].1 == w[1].0 && w[0].1 >= w[1].1)
            );
            assert_eq!(c.len(), plen.div_ceil(TAPS));
        }
        assert_eq!(chunks(27).collect::<Vec<_>>(), vec![(0, 14), (14, 13)]);
    }
}

/// Checks what the fused kernels' unchecked loads rely on: every convolution window lies inside
/// the input (so every output pixel is inner), the pool windows inside the convolution's output,
/// and the slices hold one image.
fn check_pooled(geo: &Geometry, pool: &Window, src: usize, out: usize, arg: usize) {
    let per_out = pool.oh * pool.ow * geo.oc;
    assert!(
        src == geo.per_in() && out == per_out && arg == per_out,
        "conv2d + max_pool (avx512): image sizes"
    );
    assert!(
        geo.inner_rows == (0..geo.win.oh)
            && geo.inner_cols == (0..geo.win.ow)
            && pool.oh * pool.kh <= geo.win.oh
            && pool.ow * pool.kw <= geo.win.ow
            && pool.kh * pool.kw <= 1 << 8
            && (1..=TAPS).contains(&geo.plen),
        "conv2d + max_pool (avx512): geometry"
    );
    check_inner(geo, src);
}

/// One image of the fused convolution + max-pool: `dst` and `arg` are `[ph, pw, oc]`, the
/// pooled outputs and the winning window position `dy · kw + dx` of each (first maximum wins).
/// The same bits as [`forward_image`] followed by the AVX-512 arg-max pool.
///
/// # Panics
/// If the CPU lacks AVX-512 or the slices and windows do not fit (see `check_pooled`).
pub(super) fn forward_pooled_image(
    geo: &Geometry,
    pool: &Window,
    src: &[f32],
    dst: &mut [f32],
    arg: &mut [u8],
    (packed, bias): (&[Lanes], &[Lanes]),
    act: Activation,
) {
    assert!(available(), "conv2d (shallow): CPU lacks AVX-512");
    check_pooled(geo, pool, src.len(), dst.len(), arg.len());
    assert!(packed.len() == geo.blocks() * geo.plen && bias.len() == geo.blocks());
    for b in 0..geo.blocks() {
        let taps = &packed[b * geo.plen..][..geo.plen];
        let out = (&mut *dst, &mut *arg);
        // SAFETY: AVX-512 was checked above, and `check_pooled` bounds every input read;
        // stores are masked to block `b`'s real channels of a pooled pixel inside `dst`/`arg`.
        unsafe {
            by_taps!(
                geo.plen,
                forward_pooled_block(geo, pool, src, out, (taps, &bias[b]), b, act)
            )
        }
    }
}

#[target_feature(enable = "avx512f")]
fn forward_pooled_block<const T: usize>(
    geo: &Geometry,
    pool: &Window,
    src: &[f32],
    (dst, arg): (&mut [f32], &mut [u8]),
    (taps, bias): (&[Lanes], &Lanes),
    b: usize,
    act: Activation,
) {
    let oc = geo.oc;
    let m = lane_mask(oc, b);
    let mut k = [_mm512_setzero_ps(); T];
    let mut off = [0usize; T];
    for t in 0..T {
        // SAFETY: a `Lanes` is 16 floats.
        k[t] = unsafe { _mm512_loadu_ps(taps[t].as_ptr()) };
        off[t] = geo.xoff[t];
    }
    // SAFETY: a `Lanes` is 16 floats.
    let bias = unsafe { _mm512_loadu_ps(bias.as_ptr()) };
    for py in 0..pool.oh {
        for px in 0..pool.ow {
            let mut best = _mm512_setzero_ps();
            let mut pos = _mm512_setzero_si512();
            for dy in 0..pool.kh {
                for dx in 0..pool.kw {
                    let base = geo.base(py * pool.kh + dy, px * pool.kw + dx);
                    let mut acc = bias;
                    for t in 0..T {
                        // SAFETY: `check_pooled` showed base + off[t] < src.len().
                        let xv = unsafe { *src.get_unchecked(base + off[t]) };
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(xv), k[t], acc);
                    }
                    let v = activate(acc, act);
                    let t = dy * pool.kw + dx;
                    if t == 0 {
                        best = v;
                    } else {
                        // Strictly greater (ordered): the first maximum wins, as in the pool.
                        let better = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(m, v, best);
                        best = _mm512_mask_mov_ps(best, better, v);
                        pos = _mm512_mask_mov_epi32(pos, better, _mm512_set1_epi32(t as i32));
                    }
                }
            }
            let at = (py * pool.ow + px) * oc + b * LANES;
            // SAFETY: the masked lanes are pooled pixel (py, px)'s channels of block b, inside
            // `dst` and `arg` (sizes checked in `check_pooled`).
            unsafe {
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(at), m, best);
                _mm512_mask_cvtepi32_storeu_epi8(arg.as_mut_ptr().add(at).cast(), m, pos);
            }
        }
    }
}

/// One image's kernel and bias gradients of the fused convolution + max-pool, added to `gk`
/// (`[blocks][plen]` lanes) and `gb` (`[blocks]`): each pooled output's gradient `gp`
/// (activation derivative applied) goes to the patch of the convolution output that won.
///
/// # Panics
/// If the CPU lacks AVX-512 or the slices and windows do not fit (see `check_pooled`).
pub(super) fn filter_grad_pooled_image(
    geo: &Geometry,
    pool: &Window,
    src: &[f32],
    gp: &[f32],
    arg: &[u8],
    (gk, gb): (&mut [Lanes], &mut [Lanes]),
) {
    assert!(available(), "conv2d (shallow): CPU lacks AVX-512");
    check_pooled(geo, pool, src.len(), gp.len(), arg.len());
    assert!(gk.len() == geo.blocks() * geo.plen && gb.len() == geo.blocks());
    for (b, bias_lanes) in gb.iter_mut().enumerate() {
        let acc = &mut gk[b * geo.plen..][..geo.plen];
        // SAFETY: AVX-512 was checked above, and `check_pooled` bounds every input read; the
        // gradient and arg-max loads are masked to block `b`'s real channels of a pooled pixel.
        unsafe {
            by_taps!(
                geo.plen,
                filter_pooled_block(geo, pool, src, (gp, arg), acc, bias_lanes, b)
            )
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn filter_pooled_block<const T: usize>(
    geo: &Geometry,
    pool: &Window,
    src: &[f32],
    (gp, arg): (&[f32], &[u8]),
    gk: &mut [Lanes],
    gb: &mut Lanes,
    b: usize,
) {
    let oc = geo.oc;
    let m = lane_mask(oc, b);
    let mut acc = [_mm512_setzero_ps(); T];
    let mut bsum = _mm512_setzero_ps();
    let mut off = [0usize; T];
    off.copy_from_slice(&geo.xoff[..T]);
    for py in 0..pool.oh {
        for px in 0..pool.ow {
            let at = (py * pool.ow + px) * oc + b * LANES;
            // SAFETY: the masked lanes are pooled pixel (py, px)'s channels of block b, inside
            // `gp` and `arg` (sizes checked in `check_pooled`).
            let (gv, pos) = unsafe {
                let bytes = _mm_maskz_loadu_epi8(m, arg.as_ptr().add(at).cast());
                (
                    _mm512_maskz_loadu_ps(m, gp.as_ptr().add(at)),
                    _mm512_cvtepu8_epi32(bytes),
                )
            };
            bsum = _mm512_add_ps(bsum, gv);
            for dy in 0..pool.kh {
                for dx in 0..pool.kw {
                    let t = _mm512_set1_epi32((dy * pool.kw + dx) as i32);
                    let z = _mm512_maskz_mov_ps(_mm512_mask_cmpeq_epi32_mask(m, pos, t), gv);
                    let base = geo.base(py * pool.kh + dy, px * pool.kw + dx);
                    for i in 0..T {
                        // SAFETY: `check_pooled` showed base + off[i] < src.len().
                        let xv = unsafe { *src.get_unchecked(base + off[i]) };
                        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(xv), z, acc[i]);
                    }
                }
            }
        }
    }
    for i in 0..T {
        // SAFETY: a `Lanes` is 16 floats.
        unsafe {
            let p = gk[i].as_mut_ptr();
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), acc[i]));
        }
    }
    // SAFETY: a `Lanes` is 16 floats.
    unsafe {
        let p = gb.as_mut_ptr();
        _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), bsum));
    }
}
