//! im2col with AVX-512 VBMI byte permutes, for inputs whose rows are narrow (`w · c <= 127`
//! bytes, e.g. a 28×28×1 image). Copying such patches span by span costs a few cycles per
//! 3-byte span; here one output row of patches (`ow · kh · kw · c` bytes) is built 64 bytes at a
//! time by `vpermi2b` from the `kh` input rows held in registers, with one precomputed index
//! vector per 64 output bytes. Byte 127 of each row table holds the zero point, which is where
//! the indices of left/right padding point; rows above or below the input are all zero point.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::window::PatchGeometry;

/// Longest output row of patches handled (in 64-byte chunks).
const MAX_CHUNKS: usize = 32;
/// Tallest window handled.
const MAX_KH: usize = 8;

/// Whether the CPU has every feature this kernel uses (detected once, then cached).
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
    })
}

/// Whether this kernel handles the geometry.
pub(super) fn fits(g: &PatchGeometry) -> bool {
    let row_len = g.kh * g.kw * g.c;
    g.w * g.c <= 127 && g.kh <= MAX_KH && (g.ow * row_len).div_ceil(64) <= MAX_CHUNKS
}

/// The per-geometry index tables: for every 64-byte chunk of an output row of patches, the
/// byte index into its input row's table, and which window row `ky` each byte takes. They
/// depend on the geometry only (not on the batch, the data or the zero point), so a caller that
/// runs one geometry repeatedly builds them once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tables {
    /// `[w, c, kh, kw, sw, pl, ow]`: everything the tables depend on.
    key: [usize; 7],
    idx: Vec<[u8; 64]>,
    ky_mask: Vec<[u64; MAX_KH]>,
}

fn key(g: &PatchGeometry) -> [usize; 7] {
    [g.w, g.c, g.kh, g.kw, g.sw, g.pl, g.ow]
}

impl Tables {
    /// The tables of a geometry that [fits].
    #[allow(clippy::needless_range_loop)] // `q` walks the bytes; `ky` picks the mask row
    pub(super) fn new(g: &PatchGeometry) -> Tables {
        assert!(fits(g), "window_avx512::Tables: geometry does not fit");
        let c = g.c;
        let line = g.ow * g.kh * g.kw * c;
        let chunks = line.div_ceil(64);
        let mut idx = vec![[127u8; 64]; chunks];
        let mut ky_mask = vec![[0u64; MAX_KH]; chunks];
        let mut q = 0;
        for ox in 0..g.ow {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let ix = (ox * g.sw + kx) as isize - g.pl as isize;
                    for ch in 0..c {
                        if ix >= 0 && (ix as usize) < g.w {
                            idx[q / 64][q % 64] = (ix as usize * c + ch) as u8;
                        }
                        ky_mask[q / 64][ky] |= 1u64 << (q % 64);
                        q += 1;
                    }
                }
            }
        }
        Tables {
            key: key(g),
            idx,
            ky_mask,
        }
    }

    /// Whether these tables were built for `g`'s row geometry.
    fn matches(&self, g: &PatchGeometry) -> bool {
        self.key == key(g)
    }
}

/// im2col of the whole input into `out` (`[n·oh·ow, kh·kw·c]`, row-major).
///
/// # Panics
/// If the CPU lacks the features, the geometry does not [`fit`](fits), or the slices are
/// shorter than the geometry says.
pub(super) fn im2col(g: &PatchGeometry, src: &[i8], out: &mut [i8]) {
    im2col_with(g, &Tables::new(g), src, out)
}

/// [`im2col`] with tables built beforehand by [`Tables::new`] for this geometry.
///
/// # Panics
/// As [`im2col`], or if the tables are for another geometry.
pub(super) fn im2col_with(g: &PatchGeometry, tables: &Tables, src: &[i8], out: &mut [i8]) {
    assert!(
        available() && fits(g) && tables.matches(g),
        "window_avx512::im2col: unsupported CPU or geometry"
    );
    let row_len = g.kh * g.kw * g.c;
    assert!(
        src.len() >= g.n * g.h * g.w * g.c,
        "window_avx512::im2col: input too short"
    );
    assert!(
        out.len() >= g.n * g.oh * g.ow * row_len,
        "window_avx512::im2col: output too short"
    );
    // SAFETY: features and geometry checked above; every load reads at most one input row
    // (inside `src`, masked to `w · c` bytes) and every store stays inside `out` (masked on the
    // last chunk of each output row).
    unsafe { im2col_impl(g, tables, src, out) }
}

/// # Safety
/// As checked by [`im2col_with`].
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn im2col_impl(g: &PatchGeometry, tables: &Tables, src: &[i8], out: &mut [i8]) {
    let (c, row_bytes) = (g.c, g.w * g.c);
    let row_len = g.kh * g.kw * c;
    let line = g.ow * row_len; // output bytes per output row oy
    let chunks = line.div_ceil(64);
    let idx_v: [__m512i; MAX_CHUNKS] = std::array::from_fn(|j| match tables.idx.get(j) {
        // SAFETY: `tables.idx[j]` is 64 readable bytes.
        Some(t) => unsafe { _mm512_loadu_si512(t.as_ptr().cast()) },
        None => _mm512_setzero_si512(),
    });
    let ky_mask = &tables.ky_mask;
    let zp = _mm512_set1_epi8(g.zp);
    let lo_mask: __mmask64 = if row_bytes >= 64 {
        !0
    } else {
        (1u64 << row_bytes) - 1
    };
    let hi_mask: __mmask64 = if row_bytes > 64 {
        (1u64 << (row_bytes - 64)) - 1
    } else {
        0
    };
    let tail = line - (chunks - 1) * 64;
    let tail_mask: __mmask64 = if tail == 64 { !0 } else { (1u64 << tail) - 1 };
    let mut d = 0;
    for b in 0..g.n {
        for oy in 0..g.oh {
            // The kh row tables: (low 64 bytes, high 64 bytes with the zero point at 127).
            let mut rows = [(zp, zp); MAX_KH];
            // Index loops throughout: iterator adapters over SIMD values (`take`, `skip`) are
            // not inlined into this function and cost a call per step.
            for ky in 0..g.kh {
                let y = (oy * g.sh + ky) as isize - g.pt as isize;
                if y < 0 || y >= g.h as isize {
                    continue;
                }
                let p = src
                    .as_ptr()
                    .wrapping_add((b * g.h + y as usize) * row_bytes);
                // SAFETY: the row's `row_bytes` bytes are inside `src`; masked lanes beyond
                // them are not read.
                let lo = unsafe { _mm512_maskz_loadu_epi8(lo_mask, p) };
                // SAFETY: as above, for row bytes 64 .. row_bytes (none if the mask is empty).
                let hi = unsafe { _mm512_maskz_loadu_epi8(hi_mask, p.wrapping_add(64)) };
                rows[ky] = (lo, _mm512_mask_set1_epi8(hi, 1 << 63, g.zp));
            }
            for j in 0..chunks {
                let ix = idx_v[j];
                let mut v = _mm512_permutex2var_epi8(rows[0].0, ix, rows[0].1);
                for ky in 1..g.kh {
                    let t = rows[ky];
                    let from_ky = _mm512_permutex2var_epi8(t.0, ix, t.1);
                    v = _mm512_mask_blend_epi8(ky_mask[j][ky], v, from_ky);
                }
                let mask = if j + 1 == chunks { tail_mask } else { !0 };
                // SAFETY: bytes d + 64j .. d + 64j + 64 (masked to the line's end) lie in this
                // output row of patches, inside `out`.
                unsafe { _mm512_mask_storeu_epi8(out.as_mut_ptr().add(d + 64 * j), mask, v) };
            }
            d += line;
        }
    }
}
