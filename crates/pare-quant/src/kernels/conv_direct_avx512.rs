//! AVX-512 VNNI path of [`DirectConv`]: a register tile of up to 16 consecutive output pixels
//! of one row × up to 4 blocks of 16 channels. For each patch row and group of 4 bytes, the
//! tile loads one 64-byte weight vector per block and broadcasts one 4-byte input word per
//! pixel, then issues one `vpdpbusd` per (pixel, block) — the weights are reused across the
//! pixels and the input word across the blocks. The accumulators start at the per-channel
//! correction and end in the GEMM's output stage ([`requant16`]).
//!
//! Tile sizes keep ≤ 24 accumulators (plus the weights and a broadcast, within the 32 zmm
//! registers) and enough independent `vpdpbusd` chains to cover its latency; a row is split
//! into near-equal tiles (28 pixels: 2 × 14), each size a separate instantiation so every loop
//! over pixels and blocks is unrolled.

use std::arch::x86_64::*;

use super::NR;
use super::avx512::{ColCtx, RqConsts, available, output_stage, requant16};
use super::conv_direct::{DirectConv, WeightLayout};

/// Most 16-channel blocks per tile.
const MAX_NB: usize = 4;
/// Most pixels per tile for 1, 2, 3 and 4 blocks.
const MAX_MR: [usize; MAX_NB] = [16, 12, 8, 6];

/// One example: `u` is the padded copy ([`super::conv_direct::pad_input`]), `y` the output
/// `[oh, ow, cout]`.
///
/// # Panics
/// If the CPU lacks AVX-512 F/BW/VNNI or a buffer is shorter than the shape needs.
pub(super) fn example(dc: &DirectConv<'_>, w: &WeightLayout<'_>, u: &[u8], y: &mut [i8]) {
    assert!(
        available(),
        "conv_direct_avx512: CPU lacks AVX-512 F/BW/VNNI"
    );
    let s = &dc.shape;
    let n = dc.packed.n();
    assert!(
        u.len() >= s.padded_len() && y.len() >= s.pixels() * n,
        "conv_direct_avx512: {s:?} x {n} channels, buffers {} -> {}",
        u.len(),
        y.len()
    );
    let need = s.kh * s.row_groups() * NR * 4;
    for blk in 0..n.div_ceil(NR) {
        assert!(
            w.block(blk).len() >= need,
            "conv_direct_avx512: weight block {blk} of {} bytes, {need} needed for {s:?}",
            w.block(blk).len()
        );
    }
    // SAFETY: the features were checked above, and the buffers hold what the shape reads and
    // writes (checked above): `example_impl` reads the padded copy only at offsets below
    // `padded_len`, each weight block below `need`, and writes output pixels below
    // `pixels · n`.
    unsafe { example_impl(dc, w, u, y) }
}

/// What every tile of a block group shares.
struct Tile<'a> {
    /// The first weight byte of each block of the group.
    w: [*const u8; MAX_NB],
    /// XORed into every weight vector: `0x80` bytes to flip `w + 128` to `w`, else 0.
    flip: __m512i,
    /// Groups per patch row, patch rows.
    rb: usize,
    kh: usize,
    /// Bytes between padded input rows, and between the windows of neighbouring pixels.
    row_stride: usize,
    px_stride: usize,
    ctx: &'a [ColCtx; MAX_NB],
    consts: &'a RqConsts,
    /// Bytes between output pixels (the channel count).
    ldo: usize,
}

/// Calls the `(mr, nb)` instantiation of [`Tile::run`].
macro_rules! dispatch {
    ($t:expr, $a:expr, $o:expr, $nb:expr, $mr:expr; $($NB:literal: $($MR:literal)+;)+) => {
        match ($nb, $mr) {
            $($(($NB, $MR) => $t.run::<$MR, $NB>($a, $o),)+)+
            (nb, mr) => unreachable!("conv_direct_avx512: no tile of {mr} pixels x {nb} blocks"),
        }
    };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn example_impl(dc: &DirectConv<'_>, w: &WeightLayout<'_>, u: &[u8], y: &mut [i8]) {
    let s = &dc.shape;
    let n = dc.packed.n();
    let blocks = n.div_ceil(NR);
    let flip = _mm512_set1_epi8(if w.flip() { i8::MIN } else { 0 });
    for bg in (0..blocks).step_by(MAX_NB) {
        let nb = MAX_NB.min(blocks - bg);
        let (first, consts) = output_stage(dc.requant, bg * NR, n, &dc.correction(bg * NR));
        let mut ctx = [first; MAX_NB];
        let mut wp = [w.block(bg).as_ptr(); MAX_NB];
        for b in 1..nb {
            ctx[b] = output_stage(dc.requant, (bg + b) * NR, n, &dc.correction((bg + b) * NR)).0;
            wp[b] = w.block(bg + b).as_ptr();
        }
        let t = Tile {
            w: wp,
            flip,
            rb: s.row_groups(),
            kh: s.kh,
            row_stride: s.wp * s.c,
            px_stride: s.sw * s.c,
            ctx: &ctx,
            consts: &consts,
            ldo: n,
        };
        let tiles = s.ow.div_ceil(MAX_MR[nb - 1]);
        for oy in 0..s.oh {
            let mut ox = 0;
            for ti in 0..tiles {
                let mr = s.ow / tiles + usize::from(ti < s.ow % tiles);
                // SAFETY: the tile's windows start in padded row oy · sh at column ox · sw,
                // inside the copy; its outputs are pixels (oy, ox .. ox + mr) of the output,
                // channels of blocks bg .. bg + nb.
                unsafe {
                    let a = u.as_ptr().add((oy * s.sh * s.wp + ox * s.sw) * s.c);
                    let o = y.as_mut_ptr().add((oy * s.ow + ox) * n + bg * NR);
                    dispatch!(t, a, o, nb, mr;
                        1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16;
                        2: 1 2 3 4 5 6 7 8 9 10 11 12;
                        3: 1 2 3 4 5 6 7 8;
                        4: 1 2 3 4 5 6;
                    );
                }
                ox += mr;
            }
        }
    }
}

impl Tile<'_> {
    /// `MR` pixels × `NB` blocks from window start `a` to output `o`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI available; from `a`, `kh` rows `row_stride` apart of
    /// `(MR − 1) · px_stride + 4 · rb` readable bytes; from each of the `NB` weight pointers,
    /// `kh · rb · 64` readable bytes; `MR` output pixels `ldo` bytes apart, each with the lanes
    /// of `ctx[b].lanes` writable at `b · 16`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const MR: usize, const NB: usize>(&self, a: *const u8, o: *mut i8) {
        let mut acc = [[_mm512_setzero_si512(); NB]; MR];
        for acc_m in acc.iter_mut() {
            for (acc_mb, cx) in acc_m.iter_mut().zip(self.ctx) {
                *acc_mb = cx.corr;
            }
        }
        for ky in 0..self.kh {
            // SAFETY: row ky of the windows (function contract).
            let row = unsafe { a.add(ky * self.row_stride) };
            let w_off = ky * self.rb * 64;
            for g in 0..self.rb {
                let mut wv = [_mm512_setzero_si512(); NB];
                for (b, wvb) in wv.iter_mut().enumerate() {
                    // SAFETY: group (ky, g) of block b: 64 bytes below kh · rb · 64.
                    let v = unsafe { _mm512_loadu_si512(self.w[b].add(w_off + g * 64).cast()) };
                    *wvb = _mm512_xor_si512(v, self.flip);
                }
                for (m, acc_m) in acc.iter_mut().enumerate() {
                    // SAFETY: bytes 4g .. 4g + 4 of pixel m's window row, below
                    // (MR − 1) · px_stride + 4 · rb.
                    let word = unsafe {
                        row.add(m * self.px_stride + 4 * g)
                            .cast::<i32>()
                            .read_unaligned()
                    };
                    let av = _mm512_set1_epi32(word);
                    for (acc_mb, &wvb) in acc_m.iter_mut().zip(&wv) {
                        *acc_mb = _mm512_dpbusd_epi32(*acc_mb, av, wvb);
                    }
                }
            }
        }
        for (m, acc_m) in acc.iter().enumerate() {
            for (b, &v) in acc_m.iter().enumerate() {
                let cx = &self.ctx[b];
                let q = requant16(v, cx, self.consts);
                // SAFETY: channels b · 16 .. of pixel m (function contract); the values are
                // clamped to int8, and a partial block writes only its real lanes.
                unsafe {
                    let dst = o.add(m * self.ldo + b * NR);
                    if cx.lanes == u16::MAX {
                        _mm_storeu_si128(dst.cast(), _mm512_cvtepi32_epi8(q));
                    } else {
                        _mm512_mask_cvtepi32_storeu_epi8(dst.cast(), cx.lanes, q);
                    }
                }
            }
        }
    }
}
