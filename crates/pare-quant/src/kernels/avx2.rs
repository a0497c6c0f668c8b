//! AVX2 int8 GEMM without VNNI. `vpmaddubsw` would saturate (255 · 127 · 2 > 32767), so the
//! packed unsigned weight bytes are zero-extended and the activation bytes sign-extended to
//! int16, and `vpmaddwd` adds pairs of exact int16 products into int32 lanes. It reads the same
//! packed layout as the VNNI kernel: a 16-byte load is 4 columns × 4 `k`, so each accumulator
//! holds two partial sums per column, folded with `vphaddd` in the epilogue.
//!
//! Register tiles are 2 rows × 16 columns (8 accumulators, 4 widened weight registers); a
//! single remaining row uses two accumulator sets along `k` to hide latency.

use std::arch::x86_64::*;

use super::{Gemm, NR, Out, Requant};

/// Whether the CPU has AVX2.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Rows per block (their corrections are kept on the stack).
const MB: usize = 256;

/// Rows `r0 .. r0 + out.len() / n` of the product.
///
/// # Panics
/// If the CPU lacks AVX2 (the dispatcher checks this first).
pub(super) fn gemm(g: &Gemm<'_>, r0: usize, out: Out<'_>) {
    assert!(available(), "avx2::gemm: CPU lacks AVX2");
    let n = g.b.n();
    match out {
        Out::Acc(o) => {
            let rows = o.len() / n;
            assert!(
                g.a.len() >= (r0 + rows) * g.b.k(),
                "avx2::gemm: A has too few rows"
            );
            // SAFETY: AVX2 was checked above; `o` holds `rows` rows of `n` int32 and `g.a` rows
            // `r0 .. r0 + rows` of `k` bytes, which is all `gemm_impl` touches.
            unsafe { gemm_impl::<false>(g, r0, rows, o.as_mut_ptr().cast(), None) }
        }
        Out::Requant(o, rq) => {
            let rows = o.len() / n;
            assert!(
                g.a.len() >= (r0 + rows) * g.b.k(),
                "avx2::gemm: A has too few rows"
            );
            // SAFETY: as above, with `rows` rows of `n` int8 outputs.
            unsafe { gemm_impl::<true>(g, r0, rows, o.as_mut_ptr().cast(), Some(rq)) }
        }
    }
}

/// Per-8-column vectors of the epilogue (see the AVX-512 kernel for the requantization).
#[derive(Clone, Copy)]
struct ColCtx {
    corr: __m256i,
    mult: __m256i,
    mult_odd: __m256i,
    left: __m256i,
    right: __m256i,
    rmask: __m256i,
    thr: __m256i,
    /// Real columns among the 8 lanes.
    valid: usize,
}

#[derive(Clone, Copy)]
struct RqConsts {
    zero_point: __m256i,
    act_min: __m256i,
    act_max: __m256i,
}

#[target_feature(enable = "avx2")]
fn load8(v: &[i32]) -> __m256i {
    assert!(v.len() >= 8, "avx2::load8: {} < 8 lanes", v.len());
    // SAFETY: at least 8 readable int32s; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// Contexts of the two 8-column halves of 16-column block `blk`.
#[target_feature(enable = "avx2")]
fn col_ctx(g: &Gemm<'_>, rq: Option<&Requant>, blk: usize) -> [ColCtx; 2] {
    let j0 = blk * NR;
    let n = g.b.n();
    let corr = g.block_correction(j0);
    let params = rq.map(|rq| rq.block_params(j0, n)).unwrap_or([[0; NR]; 3]);
    let one = _mm256_set1_epi32(1);
    std::array::from_fn(|h| {
        let mult = load8(&params[0][h * 8..]);
        let right = load8(&params[2][h * 8..]);
        let rmask = _mm256_sub_epi32(_mm256_sllv_epi32(one, right), one);
        ColCtx {
            corr: load8(&corr[h * 8..]),
            mult,
            mult_odd: _mm256_srli_epi64::<32>(mult),
            left: load8(&params[1][h * 8..]),
            right,
            rmask,
            thr: _mm256_srli_epi32::<1>(rmask),
            valid: 8.min(n.saturating_sub(j0 + h * 8)),
        }
    })
}

/// The 8-lane twin of the AVX-512 `requant16`; bit-exact with [`Requant::apply`].
#[target_feature(enable = "avx2")]
fn requant8(v: __m256i, c: &ColCtx, k: &RqConsts) -> __m256i {
    let x = _mm256_sllv_epi32(v, c.left);
    let nudge = _mm256_set1_epi64x(1 << 30);
    let even = _mm256_add_epi64(_mm256_mul_epi32(x, c.mult), nudge);
    let odd = _mm256_add_epi64(
        _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), c.mult_odd),
        nudge,
    );
    let high = _mm256_blend_epi32::<0b1010_1010>(
        _mm256_srli_epi64::<31>(even),
        _mm256_slli_epi64::<1>(odd),
    );
    let remainder = _mm256_and_si256(high, c.rmask);
    let threshold = _mm256_sub_epi32(c.thr, _mm256_srai_epi32::<31>(high));
    let shifted = _mm256_srav_epi32(high, c.right);
    // cmpgt gives −1 where the remainder exceeds the threshold: subtracting adds one.
    let r = _mm256_sub_epi32(shifted, _mm256_cmpgt_epi32(remainder, threshold));
    let r = _mm256_add_epi32(r, k.zero_point);
    _mm256_min_epi32(_mm256_max_epi32(r, k.act_min), k.act_max)
}

/// The last, partial group of 4 bytes of a row of `k` bytes, zero-filled (`k % 4 != 0`).
///
/// # Safety
/// `row` must point to `k` readable bytes.
#[inline]
unsafe fn tail_word(row: *const i8, k: usize) -> i32 {
    let rem = k % 4;
    if k >= 4 {
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
/// AVX2 must be available; `out` must point to `rows · n` writable elements (int32 if `!RQ`,
/// int8 if `RQ`); `g.a` must hold rows `r0 .. r0 + rows`.
#[target_feature(enable = "avx2")]
unsafe fn gemm_impl<const RQ: bool>(
    g: &Gemm<'_>,
    r0: usize,
    rows: usize,
    out: *mut u8,
    rq: Option<&Requant>,
) {
    let (k, n) = (g.b.k(), g.b.n());
    let elem = if RQ { 1 } else { 4 };
    let consts = match rq {
        Some(rq) => {
            let (lo, hi) = rq.activation_range();
            RqConsts {
                zero_point: _mm256_set1_epi32(rq.zero_point()),
                act_min: _mm256_set1_epi32(lo),
                act_max: _mm256_set1_epi32(hi),
            }
        }
        None => {
            let z = _mm256_setzero_si256();
            RqConsts {
                zero_point: z,
                act_min: z,
                act_max: z,
            }
        }
    };
    let mut rowc = [0i32; MB];
    for rb in (0..rows).step_by(MB) {
        let rb_rows = MB.min(rows - rb);
        g.row_corrections(r0 + rb, &mut rowc[..rb_rows]);
        for blk in 0..g.b.blocks() {
            let ctx = col_ctx(g, rq, blk);
            let b = g.b.block(blk).as_ptr();
            let mut r = 0;
            while r < rb_rows {
                let mr = if rb_rows - r >= 2 { 2 } else { 1 };
                let t = Tile {
                    // SAFETY: row r0 + rb + r < r0 + rows lies within `g.a` (caller contract).
                    a: unsafe { g.a.as_ptr().add((r0 + rb + r) * k) },
                    k,
                    b,
                    rowc: &rowc[r..r + mr],
                    ctx: &ctx,
                    // SAFETY: element (rb + r, blk · 16) lies within the `rows · n` outputs.
                    out: unsafe { out.add(((rb + r) * n + blk * NR) * elem) },
                    ldo: n,
                    consts: &consts,
                };
                // SAFETY: the tile's rows and block lie inside `g.a`, the packed B and `out`;
                // AVX2 is enabled in this function.
                unsafe {
                    if mr == 2 {
                        t.run::<2, 1, RQ>();
                    } else {
                        t.run::<1, 2, RQ>();
                    }
                }
                r += mr;
            }
        }
    }
}

/// One register tile: `MR` rows × 16 columns.
struct Tile<'a> {
    a: *const i8,
    k: usize,
    /// The packed 16-column block.
    b: *const u8,
    rowc: &'a [i32],
    ctx: &'a [ColCtx; 2],
    out: *mut u8,
    ldo: usize,
    consts: &'a RqConsts,
}

impl Tile<'_> {
    /// Computes and stores the tile, with `KS` accumulator sets along `k`.
    ///
    /// # Safety
    /// AVX2 available; `MR` rows of `k` bytes readable from `a`; the packed block readable from
    /// `b`; the output rows writable for the `valid` lanes of each half; `rowc.len() == MR`.
    #[target_feature(enable = "avx2")]
    unsafe fn run<const MR: usize, const KS: usize, const RQ: bool>(&self) {
        let k = self.k;
        let full = k / 4;
        let mut acc = [[[_mm256_setzero_si256(); 4]; MR]; KS];
        let mut gi = 0;
        while gi + KS <= full {
            for (s, acc_s) in acc.iter_mut().enumerate() {
                // SAFETY: group gi + s < k / 4 is in bounds in A and in the packed block.
                unsafe { self.group(acc_s, gi + s, None) };
            }
            gi += KS;
        }
        while gi < full {
            // SAFETY: as above.
            unsafe { self.group(&mut acc[0], gi, None) };
            gi += 1;
        }
        if !k.is_multiple_of(4) {
            let mut words = [0i32; MR];
            for (r, w) in words.iter_mut().enumerate() {
                // SAFETY: row r < MR has k readable bytes.
                *w = unsafe { tail_word(self.a.add(r * k), k) };
            }
            // SAFETY: group `full` exists in the packed block (k padded to a multiple of 4).
            unsafe { self.group(&mut acc[0], full, Some(&words)) };
        }
        let mut sum = acc[0];
        for acc_s in &acc[1..] {
            for (sr, ar) in sum.iter_mut().zip(acc_s) {
                for (s, &a) in sr.iter_mut().zip(ar) {
                    *s = _mm256_add_epi32(*s, a);
                }
            }
        }
        for (r, s) in sum.iter().enumerate() {
            // Each accumulator holds (k0+k1, k2+k3) per column of 4; fold and reorder to 8
            // consecutive columns.
            let halves = [
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(s[0], s[1])),
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(s[2], s[3])),
            ];
            let rc = _mm256_set1_epi32(self.rowc[r]);
            for (h, &v) in halves.iter().enumerate() {
                let cx = &self.ctx[h];
                if cx.valid == 0 {
                    continue;
                }
                let v = _mm256_sub_epi32(_mm256_add_epi32(v, cx.corr), rc);
                let idx = r * self.ldo + h * 8;
                if RQ {
                    let q = requant8(v, cx, self.consts);
                    let p = _mm256_packs_epi16(_mm256_packs_epi32(q, q), _mm256_setzero_si256());
                    let bytes = _mm_unpacklo_epi32(
                        _mm256_castsi256_si128(p),
                        _mm256_extracti128_si256::<1>(p),
                    );
                    let mut tmp = [0i8; 16];
                    // SAFETY: `tmp` has 16 writable bytes.
                    unsafe { _mm_storeu_si128(tmp.as_mut_ptr().cast(), bytes) };
                    // SAFETY: the `valid` columns from `idx` are within row r of the output.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            tmp.as_ptr(),
                            self.out.add(idx).cast(),
                            cx.valid,
                        )
                    };
                } else if cx.valid == 8 {
                    // SAFETY: 8 int32 columns from `idx` are within row r of the output.
                    unsafe { _mm256_storeu_si256(self.out.add(idx * 4).cast(), v) };
                } else {
                    let mut tmp = [0i32; 8];
                    // SAFETY: `tmp` has 8 writable int32s.
                    unsafe { _mm256_storeu_si256(tmp.as_mut_ptr().cast(), v) };
                    // SAFETY: the `valid` columns from `idx` are within row r of the output.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            tmp.as_ptr(),
                            self.out.add(idx * 4).cast(),
                            cx.valid,
                        )
                    };
                }
            }
        }
    }

    /// Accumulates k-group `gi` of every row into `acc`, reading the row bytes from `words`
    /// if given (the zero-filled tail group).
    ///
    /// # Safety
    /// As [`run`](Self::run), with `gi < ⌈k / 4⌉`, and `gi < k / 4` unless `words` is given.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn group<const MR: usize>(
        &self,
        acc: &mut [[__m256i; 4]; MR],
        gi: usize,
        words: Option<&[i32; MR]>,
    ) {
        let mut bv = [_mm256_setzero_si256(); 4];
        for (q, bq) in bv.iter_mut().enumerate() {
            // SAFETY: 16 bytes (columns 4q .. 4q + 4) of group gi of the block.
            let raw = unsafe { _mm_loadu_si128(self.b.add(gi * 64 + q * 16).cast()) };
            *bq = _mm256_cvtepu8_epi16(raw);
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let word = match words {
                Some(w) => w[r],
                // SAFETY: bytes 4·gi .. 4·gi + 4 <= k of row r.
                None => unsafe {
                    self.a
                        .add(r * self.k + gi * 4)
                        .cast::<i32>()
                        .read_unaligned()
                },
            };
            let av = _mm256_cvtepi8_epi16(_mm_set1_epi32(word));
            for (acc_rq, &bq) in acc_r.iter_mut().zip(&bv) {
                *acc_rq = _mm256_add_epi32(*acc_rq, _mm256_madd_epi16(bq, av));
            }
        }
    }
}
