//! AVX-512 VNNI int8 GEMM: `vpdpbusd` multiplies 4 unsigned bytes (`b + 128`, packed) by 4
//! signed bytes (a broadcast of `A`) and adds the 4 products into each int32 lane, so one
//! instruction does 64 multiply-adds; the row/column-sum correction and the requantization run
//! in the epilogue of each register tile. See the module docs of [`super`] for the algebra.
//!
//! Blocking: rows in blocks of [`MB`] (their row sums live on the stack), then 48-column
//! panels of packed `B` (3 × 16 columns, ≤ 24 KiB for k = 512, so they stay in L1), then
//! register tiles of up to 8 rows × 48 columns (24 zmm accumulators). Small tiles split `k`
//! over several accumulator sets so the 4-cycle `vpdpbusd` latency is hidden even when there
//! are only one or two rows (batch-1 dense layers).

use std::arch::x86_64::*;

use super::{Gemm, NR, Out, Requant};

/// Whether the CPU has every feature this kernel uses.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Rows per block (their corrections are kept on the stack).
const MB: usize = 256;
/// 16-column blocks per panel.
const NB: usize = 3;

/// Rows `r0 .. r0 + out.len() / n` of the product.
///
/// # Panics
/// If the CPU lacks AVX-512 F/BW/VNNI (the dispatcher checks this first).
pub(super) fn gemm(g: &Gemm<'_>, r0: usize, out: Out<'_>) {
    assert!(available(), "avx512::gemm: CPU lacks AVX-512 F/BW/VNNI");
    let n = g.b.n();
    match out {
        Out::Acc(o) => {
            let rows = o.len() / n;
            assert!(
                g.a.len() >= (r0 + rows) * g.b.k(),
                "avx512::gemm: A has too few rows"
            );
            // SAFETY: the features were checked above; `o` holds `rows` rows of `n` int32 and
            // `g.a` holds rows `r0 .. r0 + rows` of `k` bytes, which is all `gemm_impl` touches.
            unsafe { gemm_impl::<false>(g, r0, rows, o.as_mut_ptr().cast(), None) }
        }
        Out::Requant(o, rq) => {
            let rows = o.len() / n;
            assert!(
                g.a.len() >= (r0 + rows) * g.b.k(),
                "avx512::gemm: A has too few rows"
            );
            // SAFETY: as above, with `rows` rows of `n` int8 outputs.
            unsafe { gemm_impl::<true>(g, r0, rows, o.as_mut_ptr().cast(), Some(rq)) }
        }
    }
}

/// Per-16-column vectors of the epilogue.
#[derive(Clone, Copy)]
pub(super) struct ColCtx {
    /// `bias − za · colsum`.
    pub(super) corr: __m512i,
    mult: __m512i,
    /// The odd lanes' multipliers moved to the low halves of the 64-bit lanes.
    mult_odd: __m512i,
    left: __m512i,
    right: __m512i,
    /// `(1 << right) − 1`, `RoundingDivideByPOT`'s mask.
    rmask: __m512i,
    /// `rmask >> 1`, its threshold before the +1 for negative values.
    thr: __m512i,
    /// Lanes that are real columns.
    pub(super) lanes: __mmask16,
}

/// Output-stage constants shared by all columns.
#[derive(Clone, Copy)]
pub(super) struct RqConsts {
    zero_point: __m512i,
    act_min: __m512i,
    act_max: __m512i,
    /// Whether any column shifts left (multiplier >= 1); usually none, saving an instruction.
    any_left: bool,
}

#[target_feature(enable = "avx512f")]
fn load16(v: &[i32; NR]) -> __m512i {
    // SAFETY: `v` is 16 readable int32s; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
fn col_ctx(g: &Gemm<'_>, rq: Option<&Requant>, blk: usize) -> ColCtx {
    let j0 = blk * NR;
    let n = g.b.n();
    let valid = NR.min(n - j0);
    let corr = load16(&g.block_correction(j0));
    let [mult, left, right] = match rq {
        Some(rq) => rq.block_params(j0, n).map(|p| load16(&p)),
        None => [_mm512_setzero_si512(); 3],
    };
    let one = _mm512_set1_epi32(1);
    let rmask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
    ColCtx {
        corr,
        mult,
        mult_odd: _mm512_srli_epi64::<32>(mult),
        left,
        right,
        rmask,
        thr: _mm512_srli_epi32::<1>(rmask),
        lanes: ((1u32 << valid) - 1) as __mmask16,
    }
}

/// The output stage of the 16 channels from `j0` (of `n`), whose correction `corr` is added
/// before requantizing: for kernels other than the GEMM.
#[target_feature(enable = "avx512f")]
pub(super) fn output_stage(
    rq: &Requant,
    j0: usize,
    n: usize,
    corr: &[i32; NR],
) -> (ColCtx, RqConsts) {
    let [mult, left, right] = rq.block_params(j0, n).map(|p| load16(&p));
    let one = _mm512_set1_epi32(1);
    let rmask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
    let (lo, hi) = rq.activation_range();
    let ctx = ColCtx {
        corr: load16(corr),
        mult,
        mult_odd: _mm512_srli_epi64::<32>(mult),
        left,
        right,
        rmask,
        thr: _mm512_srli_epi32::<1>(rmask),
        lanes: ((1u32 << NR.min(n - j0)) - 1) as __mmask16,
    };
    let consts = RqConsts {
        zero_point: _mm512_set1_epi32(rq.zero_point()),
        act_min: _mm512_set1_epi32(lo),
        act_max: _mm512_set1_epi32(hi),
        any_left: rq.shifts().iter().any(|&s| s > 0),
    };
    (ctx, consts)
}

/// `clamp(MultiplyByQuantizedMultiplier(v) + zo, act_min, act_max)` on 16 lanes, bit-exact with
/// [`Requant::apply`].
///
/// SaturatingRoundingDoublingHighMul is `(x·m + 2^30) >> 31` on the 64-bit product: gemmlowp's
/// nudge `1 − 2^30` for negative products followed by truncating division is the same floor
/// division, and saturation cannot occur because multipliers are never negative. Only bits
/// 31..62 of the sum are needed, so even lanes shift right by 31 and odd lanes left by 1 (their
/// result lands in the high half) and a blend merges them.
#[target_feature(enable = "avx512f")]
pub(super) fn requant16(v: __m512i, c: &ColCtx, k: &RqConsts) -> __m512i {
    let x = if k.any_left {
        _mm512_sllv_epi32(v, c.left)
    } else {
        v
    };
    let nudge = _mm512_set1_epi64(1 << 30);
    let even = _mm512_add_epi64(_mm512_mul_epi32(x, c.mult), nudge);
    let odd = _mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), c.mult_odd),
        nudge,
    );
    let high = _mm512_mask_blend_epi32(
        0xAAAA,
        _mm512_srli_epi64::<31>(even),
        _mm512_slli_epi64::<1>(odd),
    );
    // RoundingDivideByPOT: shift, plus one where the remainder exceeds the threshold (which is
    // one higher for negative values, so their ties round away from zero too).
    let remainder = _mm512_and_si512(high, c.rmask);
    let threshold = _mm512_sub_epi32(c.thr, _mm512_srai_epi32::<31>(high));
    let shifted = _mm512_srav_epi32(high, c.right);
    let round_up = _mm512_cmpgt_epi32_mask(remainder, threshold);
    let r = _mm512_mask_add_epi32(shifted, round_up, shifted, _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(r, k.zero_point);
    _mm512_min_epi32(_mm512_max_epi32(r, k.act_min), k.act_max)
}

/// The last, partial group of 4 bytes of a row of `k` bytes, zero-filled (`k % 4 != 0`).
///
/// # Safety
/// `row` must point to `k` readable bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tail_word(row: *const i8, k: usize) -> i32 {
    let rem = k % 4;
    if k >= 4 {
        // The 4 bytes ending at the row's end, shifted so the last `rem` come first.
        // SAFETY: k >= 4 bytes are readable from `row`.
        let w = unsafe { row.add(k - 4).cast::<u32>().read_unaligned() };
        (w >> (8 * (4 - rem))) as i32
    } else {
        let mut w = 0u32;
        for t in 0..rem {
            // SAFETY: t < rem = k bytes are readable.
            w |= (unsafe { *row.add(t) } as u8 as u32) << (8 * t);
        }
        w as i32
    }
}

/// All rows of a call, for one output stage.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; `out` must point to `rows · n` writable elements
/// (int32 if `!RQ`, int8 if `RQ`); `g.a` must hold rows `r0 .. r0 + rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm_impl<const RQ: bool>(
    g: &Gemm<'_>,
    r0: usize,
    rows: usize,
    out: *mut u8,
    rq: Option<&Requant>,
) {
    let (k, n) = (g.b.k(), g.b.n());
    let blocks = g.b.blocks();
    let block_bytes = g.b.k_groups() * NR * 4;
    let elem = if RQ { 1 } else { 4 };
    let consts = match rq {
        Some(rq) => {
            let (lo, hi) = rq.activation_range();
            RqConsts {
                zero_point: _mm512_set1_epi32(rq.zero_point()),
                act_min: _mm512_set1_epi32(lo),
                act_max: _mm512_set1_epi32(hi),
                any_left: rq.shifts().iter().any(|&s| s > 0),
            }
        }
        None => {
            let z = _mm512_setzero_si512();
            RqConsts {
                zero_point: z,
                act_min: z,
                act_max: z,
                any_left: false,
            }
        }
    };
    // With a row-sum lane, the panel holding it goes first and its tiles record the row
    // corrections for the others; otherwise they are summed up front.
    let lane = g.b.row_sum_lane();
    let panels = blocks.div_ceil(NB);
    let mut rowc = [0i32; MB];
    for rb in (0..rows).step_by(MB) {
        let rb_rows = MB.min(rows - rb);
        if lane.is_none() {
            g.row_corrections(r0 + rb, &mut rowc[..rb_rows]);
        }
        for pi in 0..panels {
            let panel = if lane.is_some() {
                (pi + panels - 1) % panels
            } else {
                pi
            };
            let blk = panel * NB;
            let nb = NB.min(blocks - blk);
            let from_lane = lane.filter(|_| pi == 0).map(|(lb, l)| (lb - blk, l));
            let mut ctx = [col_ctx(g, rq, blk); NB];
            // Index loops: iterator adapters over SIMD values are not inlined here.
            #[allow(clippy::needless_range_loop)]
            for c in 1..nb {
                ctx[c] = col_ctx(g, rq, blk + c);
            }
            let b = g.b.block(blk).as_ptr();
            let mut r = 0;
            while r < rb_rows {
                let mr = match rb_rows - r {
                    8.. => 8,
                    4..=7 => 4,
                    2 | 3 => 2,
                    _ => 1,
                };
                let mut t = Tile {
                    // SAFETY: row r0 + rb + r < r0 + rows lies within `g.a` (caller contract).
                    a: unsafe { g.a.as_ptr().add((r0 + rb + r) * k) },
                    k,
                    b,
                    block_bytes,
                    rowc: &mut rowc[r..r + mr],
                    from_lane,
                    ctx: &ctx,
                    // SAFETY: element (rb + r, blk · 16) lies within the `rows · n` outputs.
                    out: unsafe { out.add(((rb + r) * n + blk * NR) * elem) },
                    ldo: n,
                    consts: &consts,
                };
                // SAFETY: the tile covers rows rb + r .. rb + r + mr < rows and columns of
                // blocks blk .. blk + nb, all inside `g.a`, the packed B and `out`; the
                // features are enabled in this function.
                unsafe {
                    match (mr, nb) {
                        (8, 3) => t.run::<8, 3, 1, RQ>(),
                        (8, 2) => t.run::<8, 2, 1, RQ>(),
                        (8, _) => t.run::<8, 1, 1, RQ>(),
                        (4, 3) => t.run::<4, 3, 1, RQ>(),
                        (4, 2) => t.run::<4, 2, 1, RQ>(),
                        (4, _) => t.run::<4, 1, 2, RQ>(),
                        (2, 3) => t.run::<2, 3, 2, RQ>(),
                        (2, 2) => t.run::<2, 2, 2, RQ>(),
                        (2, _) => t.run::<2, 1, 4, RQ>(),
                        (_, 3) => t.run::<1, 3, 3, RQ>(),
                        (_, 2) => t.run::<1, 2, 4, RQ>(),
                        (_, _) => t.run::<1, 1, 8, RQ>(),
                    }
                }
                r += mr;
            }
        }
    }
}

/// One register tile: `MR` rows × `NB` 16-column blocks.
struct Tile<'a> {
    /// First row of `A` (rows are `k` bytes apart).
    a: *const i8,
    k: usize,
    /// First packed block of the panel (blocks are `block_bytes` apart).
    b: *const u8,
    block_bytes: usize,
    /// `128 · Σ_k a` per row: read, or written when `from_lane` is set.
    rowc: &'a mut [i32],
    /// `(block, lane)` of the row-sum column within this tile, if the tile derives the row
    /// corrections from it.
    from_lane: Option<(usize, usize)>,
    ctx: &'a [ColCtx; NB],
    /// Output element (row 0, column 0) of the tile; rows are `ldo` elements apart.
    out: *mut u8,
    ldo: usize,
    consts: &'a RqConsts,
}

impl Tile<'_> {
    /// Computes and stores the tile, with `KS` independent accumulator sets along `k`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI available; `MR` rows of `k` bytes readable from `a`; `NB` packed
    /// blocks readable from `b`; the output rows writable for `NB · 16` lanes masked by
    /// `ctx[c].lanes`; `rowc.len() == MR`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const MR: usize, const NB_: usize, const KS: usize, const RQ: bool>(&mut self) {
        let k = self.k;
        let full = k / 4;
        let mut acc = [[[_mm512_setzero_si512(); NB_]; MR]; KS];
        let mut gi = 0;
        while gi + KS <= full {
            for (s, acc_s) in acc.iter_mut().enumerate() {
                // SAFETY: group gi + s < k / 4, so its 64 packed bytes per block and its 4
                // bytes per row of A are in bounds (function contract).
                unsafe { self.group(acc_s, gi + s) };
            }
            gi += KS;
        }
        while gi < full {
            // SAFETY: as above, gi < k / 4.
            unsafe { self.group(&mut acc[0], gi) };
            gi += 1;
        }
        if !k.is_multiple_of(4) {
            let mut bv = [_mm512_setzero_si512(); NB_];
            for (c, bvc) in bv.iter_mut().enumerate() {
                // SAFETY: group `full` exists in the packed block (k padded to a multiple of 4).
                *bvc = unsafe {
                    _mm512_loadu_si512(self.b.add(c * self.block_bytes + full * 64).cast())
                };
            }
            for (r, acc_r) in acc[0].iter_mut().enumerate() {
                // SAFETY: row r < MR has k readable bytes.
                let av = _mm512_set1_epi32(unsafe { tail_word(self.a.add(r * k), k) });
                for (acc_rc, &bvc) in acc_r.iter_mut().zip(&bv) {
                    *acc_rc = _mm512_dpbusd_epi32(*acc_rc, bvc, av);
                }
            }
        }
        let mut sum = acc[0];
        for acc_s in &acc[1..] {
            for (sr, ar) in sum.iter_mut().zip(acc_s) {
                for (s, &a) in sr.iter_mut().zip(ar) {
                    *s = _mm512_add_epi32(*s, a);
                }
            }
        }
        for (r, sum_r) in sum.iter().enumerate() {
            let rc = match self.from_lane {
                Some((c, l)) => {
                    let rc = _mm512_permutexvar_epi32(_mm512_set1_epi32(l as i32), sum_r[c]);
                    self.rowc[r] = _mm512_cvtsi512_si32(rc);
                    rc
                }
                None => _mm512_set1_epi32(self.rowc[r]),
            };
            for (c, &s) in sum_r.iter().enumerate() {
                let cx = &self.ctx[c];
                let v = _mm512_sub_epi32(_mm512_add_epi32(s, cx.corr), rc);
                let idx = r * self.ldo + c * NR;
                if RQ {
                    let q = requant16(v, cx, self.consts);
                    // SAFETY: int8 output; the masked lanes are columns < n of row r.
                    unsafe {
                        _mm512_mask_cvtepi32_storeu_epi8(self.out.add(idx).cast(), cx.lanes, q)
                    };
                } else {
                    // SAFETY: int32 output; the masked lanes are columns < n of row r.
                    unsafe { _mm512_mask_storeu_epi32(self.out.add(idx * 4).cast(), cx.lanes, v) };
                }
            }
        }
    }

    /// Accumulates k-group `gi` of every row and block into `acc`.
    ///
    /// # Safety
    /// As [`run`](Self::run), with `gi < k / 4`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn group<const MR: usize, const NB_: usize>(
        &self,
        acc: &mut [[__m512i; NB_]; MR],
        gi: usize,
    ) {
        let mut bv = [_mm512_setzero_si512(); NB_];
        for (c, bvc) in bv.iter_mut().enumerate() {
            // SAFETY: 64 bytes of group gi of block c (function contract).
            *bvc = unsafe { _mm512_loadu_si512(self.b.add(c * self.block_bytes + gi * 64).cast()) };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: bytes 4·gi .. 4·gi + 4 <= k of row r.
            let word = unsafe {
                self.a
                    .add(r * self.k + gi * 4)
                    .cast::<i32>()
                    .read_unaligned()
            };
            let av = _mm512_set1_epi32(word);
            for (acc_rc, &bvc) in acc_r.iter_mut().zip(&bv) {
                *acc_rc = _mm512_dpbusd_epi32(*acc_rc, bvc, av);
            }
        }
    }
}
