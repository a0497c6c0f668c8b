//! Max-pool with AVX2 byte maxima (`vpmaxsb`): the channels of a pixel are taken 16 (`c <= 16`)
//! or 32 at a time, so a 2×2 window over 12 channels is four loads, three maxima and a store.
//! Loads may read past a pixel's channels into the next pixel, and stores may write past them;
//! the extra bytes are ignored or overwritten later (`out` is filled in increasing order), and
//! at the very end of either buffer the kernel falls back to exact copies through a buffer.

use std::arch::x86_64::*;

use super::window::PoolGeometry;

/// Max-pool of the whole input into `out` (`[n, oh, ow, c]`, row-major).
///
/// # Panics
/// If the CPU lacks AVX2 or the slices are shorter than the geometry says.
pub(super) fn max_pool(g: &PoolGeometry, src: &[i8], out: &mut [i8]) {
    assert!(
        super::Kernel::Avx2.is_available(),
        "window_avx2::max_pool: CPU lacks AVX2"
    );
    assert!(
        src.len() >= g.n * g.h * g.w * g.c,
        "window_avx2::max_pool: input too short"
    );
    assert!(
        out.len() >= g.n * g.oh * g.ow * g.c,
        "window_avx2::max_pool: output too short"
    );
    if g.c <= 16 {
        // SAFETY: AVX2 checked above; every access is bounds-checked inside.
        unsafe { pool_impl::<16>(g, src, out) }
    } else {
        // SAFETY: as above.
        unsafe { pool_impl::<32>(g, src, out) }
    }
}

/// `W` bytes from `src[s..]` (exactly `len` of them at the end of `src`; the rest −128).
#[inline]
#[target_feature(enable = "avx2")]
fn load<const W: usize>(src: &[i8], s: usize, len: usize) -> __m256i {
    let mut tmp = [i8::MIN; 32];
    let from: &[i8] = if s + W <= src.len() {
        &src[s..s + W]
    } else {
        tmp[..len].copy_from_slice(&src[s..s + len]);
        &tmp[..W]
    };
    if W == 16 {
        // SAFETY: `from` has 16 readable bytes.
        _mm256_castsi128_si256(unsafe { _mm_loadu_si128(from.as_ptr().cast()) })
    } else {
        // SAFETY: `from` has 32 readable bytes.
        unsafe { _mm256_loadu_si256(from.as_ptr().cast()) }
    }
}

/// Stores `W` bytes of `v` at `out[d..]` (exactly `len` of them at the end of `out`).
#[inline]
#[target_feature(enable = "avx2")]
fn store<const W: usize>(out: &mut [i8], d: usize, len: usize, v: __m256i) {
    let mut tmp = [0i8; 32];
    let exact = d + W > out.len();
    let to: &mut [i8] = if exact {
        &mut tmp[..W]
    } else {
        &mut out[d..d + W]
    };
    if W == 16 {
        // SAFETY: `to` has 16 writable bytes.
        unsafe { _mm_storeu_si128(to.as_mut_ptr().cast(), _mm256_castsi256_si128(v)) };
    } else {
        // SAFETY: `to` has 32 writable bytes.
        unsafe { _mm256_storeu_si256(to.as_mut_ptr().cast(), v) };
    }
    if exact {
        out[d..d + len].copy_from_slice(&tmp[..len]);
    }
}

/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
unsafe fn pool_impl<const W: usize>(g: &PoolGeometry, src: &[i8], out: &mut [i8]) {
    let c = g.c;
    let mut d = 0;
    for b in 0..g.n {
        for oy in 0..g.oh {
            // The window clipped to the input; never empty for valid or TF-same geometry.
            let y0 = (oy * g.sh).saturating_sub(g.pt);
            let y1 = (oy * g.sh + g.kh - g.pt).min(g.h);
            for ox in 0..g.ow {
                let x0 = (ox * g.sw).saturating_sub(g.pl);
                let x1 = (ox * g.sw + g.kw - g.pl).min(g.w);
                let mut o = 0;
                while o < c {
                    let len = (c - o).min(W);
                    let mut acc = _mm256_set1_epi8(i8::MIN);
                    // The last pixel of the window is the furthest load: if it has W bytes,
                    // every load of the window can be a plain one.
                    let last = ((b * g.h + y1 - 1) * g.w + x1 - 1) * c + o;
                    let direct = last + W <= src.len();
                    for iy in y0..y1 {
                        let row = (b * g.h + iy) * g.w;
                        for ix in x0..x1 {
                            let s = (row + ix) * c + o;
                            let v = if direct {
                                // SAFETY: s <= last and last + W <= src.len().
                                let p = unsafe { src.as_ptr().add(s) };
                                if W == 16 {
                                    // SAFETY: 16 readable bytes at `p` (see above).
                                    _mm256_castsi128_si256(unsafe { _mm_loadu_si128(p.cast()) })
                                } else {
                                    // SAFETY: 32 readable bytes at `p` (see above).
                                    unsafe { _mm256_loadu_si256(p.cast()) }
                                }
                            } else {
                                load::<W>(src, s, len)
                            };
                            acc = _mm256_max_epi8(acc, v);
                        }
                    }
                    store::<W>(out, d + o, len, acc);
                    o += W;
                }
                d += c;
            }
        }
    }
}
