//! A direct int8 convolution for small batches: no patch matrix, each output row computed from
//! the input rows its window covers.
//!
//! im2col + GEMM suits large batches, where the patch matrix is many rows tall; at batch 1 the
//! narrow convolutions of a small network (16 or 32 channels on a 28×28 or 14×14 map) spend as
//! long building and re-reading that matrix as multiplying it. The direct pass reads each
//! input row straight from a padded copy of the example and keeps a tile of output pixels
//! × 16-channel blocks in registers.
//!
//! Algebra (as [`ConvPool`](super::ConvPool)'s SIMD path): `vpdpbusd` multiplies unsigned by
//! signed bytes, so the activations are the unsigned operand, `u = a + 128` (the code with its
//! top bit flipped), and the weights the signed one; then
//! `Σ (a − za)·w + bias = Σ u·w + (bias − (128 + za)·Σ w)`, a correction per output channel
//! only. The padded copy holds `za + 128` outside the input, which adds
//! `(za + 128)·w − (128 + za)·w = 0`, as the zero point does in im2col. Every sum is the
//! GEMM's modulo 2^32 and goes through the same output stage, so the codes are identical.
//!
//! The weights are read from the GEMM's [`PackedWeights`] (bytes `w + 128` in groups of 4
//! along `k = (ky, kx, c)`) and flipped back to signed as they are loaded: one cheap `vpxord`
//! per 64 bytes of weights, no second copy of the model. That needs every patch row
//! (`kw · cin` bytes, contiguous in NHWC) to be whole groups of 4; otherwise (a first layer
//! with one input channel) the weights are repacked per call, row by row, which is cheap
//! exactly when the rows are short.

use super::{NR, PackedWeights, Requant, Rounding, Window2d};
use crate::error::Result;

/// Where one example's convolution reads and writes: the input, the window, the output and
/// the padded copy the kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvShape {
    /// Input `[h, w, c]`.
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Kernel `[kh, kw]`, strides `[sh, sw]`.
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    /// Output `[oh, ow]`.
    pub oh: usize,
    pub ow: usize,
    /// Padding before the input (TensorFlow's `same`: half the total, rounded down).
    pub pt: usize,
    pub pl: usize,
    /// Rows and columns of the padded copy: exactly those the windows read.
    pub hp: usize,
    pub wp: usize,
}

impl ConvShape {
    /// The geometry of `window` over one example `[h, w, c]`.
    ///
    /// # Errors
    /// If the window does not fit the input ([`Window2d::geometry`]).
    pub(crate) fn new(window: &Window2d, [h, w, c]: [usize; 3]) -> Result<Self> {
        let ([oh, ow], [pt, pl]) = window.geometry_for("conv_direct", &[1, h, w, c])?;
        let [kh, kw] = window.size;
        let [sh, sw] = window.strides;
        Ok(ConvShape {
            h,
            w,
            c,
            kh,
            kw,
            sh,
            sw,
            oh,
            ow,
            pt,
            pl,
            hp: (oh - 1) * sh + kh,
            wp: (ow - 1) * sw + kw,
        })
    }

    /// Bytes of one patch row, `kw · c` (contiguous in the input).
    pub(crate) fn row_bytes(&self) -> usize {
        self.kw * self.c
    }

    /// Groups of 4 bytes per patch row.
    pub(crate) fn row_groups(&self) -> usize {
        self.row_bytes().div_ceil(4)
    }

    /// Bytes of the padded copy, with room for the last group to read up to 3 bytes past
    /// the last row.
    pub(crate) fn padded_len(&self) -> usize {
        self.hp * self.wp * self.c + 4
    }

    /// Input bytes of one example.
    pub(crate) fn input_len(&self) -> usize {
        self.h * self.w * self.c
    }

    /// Output pixels of one example.
    pub(crate) fn pixels(&self) -> usize {
        self.oh * self.ow
    }
}

/// Scratch of the direct path, kept by the interpreter so repeated calls allocate nothing: the
/// padded input, and the weights when they have to be repacked.
#[derive(Debug, Default, Clone)]
pub(crate) struct ConvScratch {
    input: Vec<u8>,
    /// Signed weights, as their bits.
    weights: Vec<u8>,
}

/// One conv layer's operands for the direct path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirectConv<'a> {
    pub shape: ConvShape,
    pub packed: &'a PackedWeights,
    pub bias: &'a [i32],
    pub za: i32,
    pub requant: &'a Requant,
}

/// Where the SIMD kernels find the weights of 16-channel block `blk`: `kh · row_groups`
/// groups of 64 bytes, row `ky`'s group `g` at `(ky · row_groups + g) · 64`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WeightLayout<'a> {
    /// The GEMM's packed weights, `w + 128`: flipped to signed as they are loaded.
    Packed(&'a PackedWeights),
    /// Signed weights repacked by [`DirectConv::repack`], `bytes_per_block` per block.
    Repacked {
        bytes: &'a [u8],
        bytes_per_block: usize,
    },
}

impl WeightLayout<'_> {
    /// The bytes of block `blk`.
    pub(crate) fn block(&self, blk: usize) -> &[u8] {
        match *self {
            WeightLayout::Packed(p) => p.block(blk),
            WeightLayout::Repacked {
                bytes,
                bytes_per_block,
            } => &bytes[blk * bytes_per_block..(blk + 1) * bytes_per_block],
        }
    }

    /// Whether the bytes are `w + 128` and must be flipped.
    pub(crate) fn flip(&self) -> bool {
        matches!(self, WeightLayout::Packed(_))
    }
}

impl<'a> DirectConv<'a> {
    /// Whether the direct path computes this layer: the packed weights are its `[kh·kw·c, n]`
    /// kernel, one bias and one multiplier (or one for all) per output channel, and its output
    /// stage is TFLite's double-rounding fixed point (the SIMD output stage; the others stay
    /// on the GEMM path, which handles them).
    pub(crate) fn fits(&self) -> bool {
        let s = &self.shape;
        let n = self.packed.n();
        self.packed.k() == s.kh * s.kw * s.c
            && n > 0
            && self.bias.len() == n
            && (self.requant.channels() == 1 || self.requant.channels() == n)
            && self.requant.rounding() == Rounding::Tflite
            && !self.requant.is_single_rounding()
            && (-128..=127).contains(&self.za)
    }

    /// Whether the packed weights can be read in place (whole groups per patch row).
    fn in_place(&self) -> bool {
        self.shape.row_bytes().is_multiple_of(4)
    }

    /// Runs `n` examples, `src` `[n, h, w, c]` to `dst` `[n, oh, ow, cout]`, with the
    /// AVX-512 VNNI kernel when `simd` and the CPU has it, else the portable one.
    ///
    /// # Panics
    /// If the layer does not [`fit`](Self::fits) or the buffers do not hold `n` examples.
    pub(crate) fn run_with(
        &self,
        simd: bool,
        n: usize,
        src: &[i8],
        scratch: &mut ConvScratch,
        dst: &mut [i8],
    ) {
        let s = &self.shape;
        let (il, ol) = (s.input_len(), s.pixels() * self.packed.n());
        assert!(
            self.fits(),
            "conv_direct: layer {s:?} with weights [{}, {}] does not fit",
            self.packed.k(),
            self.packed.n()
        );
        assert!(
            src.len() >= n * il && dst.len() >= n * ol,
            "conv_direct: {n} examples of {il} -> {ol} bytes, buffers {} -> {}",
            src.len(),
            dst.len()
        );
        #[cfg(target_arch = "x86_64")]
        if simd && super::Kernel::Avx512Vnni.is_available() {
            let ConvScratch { input, weights } = scratch;
            if input.len() < s.padded_len() {
                input.resize(s.padded_len(), 0);
            }
            if !self.in_place() {
                self.repack(weights);
            }
            let layout = if self.in_place() {
                WeightLayout::Packed(self.packed)
            } else {
                WeightLayout::Repacked {
                    bytes: weights,
                    bytes_per_block: s.kh * s.row_groups() * NR * 4,
                }
            };
            for (x, y) in src.chunks_exact(il).zip(dst.chunks_exact_mut(ol)).take(n) {
                pad_input(s, x, self.za, input);
                super::conv_direct_avx512::example(self, &layout, input, y);
            }
            return;
        }
        let _ = (simd, scratch);
        for (x, y) in src.chunks_exact(il).zip(dst.chunks_exact_mut(ol)).take(n) {
            self.example_portable(x, y);
        }
    }

    /// The signed weights in [`WeightLayout`] order, for patch rows that are not whole groups:
    /// byte `t` of group `g` of row `ky` is patch-row byte `r = 4g + t`, i.e. `(kx, c) =
    /// (r / cin, r % cin)`, and 0 past the row.
    fn repack(&self, out: &mut Vec<u8>) {
        let s = &self.shape;
        let (rb, row) = (s.row_groups(), s.row_bytes());
        let blocks = self.packed.blocks();
        out.clear();
        out.resize(blocks * s.kh * rb * NR * 4, 0);
        for blk in 0..blocks {
            for ky in 0..s.kh {
                for r in 0..row {
                    let kk = ky * row + r;
                    let at = ((blk * s.kh + ky) * rb + r / 4) * NR * 4 + r % 4;
                    for lane in 0..NR.min(self.packed.n() - blk * NR) {
                        out[at + lane * 4] = weight(self.packed, kk, blk * NR + lane) as u8;
                    }
                }
            }
        }
    }

    /// `bias − (128 + za)·Σ_k w` for the 16 channels from `j0` (0 in padding lanes).
    pub(crate) fn correction(&self, j0: usize) -> [i32; NR] {
        let mut c = [0i32; NR];
        let n = self.packed.n();
        for (l, cl) in c.iter_mut().enumerate().take(NR.min(n - j0)) {
            let sum = self.packed.col_sums()[j0 + l];
            *cl = self.bias[j0 + l].wrapping_sub((128 + self.za).wrapping_mul(sum));
        }
        c
    }

    /// The reference: each output as `bias + Σ (a − za)·w` over the window's taps inside the
    /// input (outside it the zero point adds nothing), then [`Requant::apply`].
    fn example_portable(&self, x: &[i8], y: &mut [i8]) {
        let s = &self.shape;
        let n = self.packed.n();
        let mut acc = vec![0i32; n];
        for (p, out) in y.chunks_exact_mut(n).enumerate().take(s.pixels()) {
            let (oy, ox) = (p / s.ow, p % s.ow);
            acc.copy_from_slice(self.bias);
            for ky in 0..s.kh {
                let Some(iy) = (oy * s.sh + ky).checked_sub(s.pt).filter(|&v| v < s.h) else {
                    continue;
                };
                for kx in 0..s.kw {
                    let Some(ix) = (ox * s.sw + kx).checked_sub(s.pl).filter(|&v| v < s.w) else {
                        continue;
                    };
                    for ci in 0..s.c {
                        let a = x[(iy * s.w + ix) * s.c + ci] as i32 - self.za;
                        let kk = (ky * s.kw + kx) * s.c + ci;
                        for (j, v) in acc.iter_mut().enumerate() {
                            *v = v.wrapping_add(a.wrapping_mul(weight(self.packed, kk, j) as i32));
                        }
                    }
                }
            }
            for (j, (o, &v)) in out.iter_mut().zip(&acc).enumerate() {
                *o = self.requant.apply(v, j);
            }
        }
    }
}

/// Weight `(kk, j)` of packed weights (stored as `w + 128` in `[k/4][16][4]` blocks).
fn weight(p: &PackedWeights, kk: usize, j: usize) -> i8 {
    (p.block(j / NR)[((kk / 4) * NR + j % NR) * 4 + kk % 4] ^ 0x80) as i8
}

/// Fills the padded copy `buf` (`hp × wp × c`, then slack) of example `x`: the codes with
/// their top bits flipped (`a + 128` as unsigned), `za + 128` outside the input.
pub(crate) fn pad_input(s: &ConvShape, x: &[i8], za: i32, buf: &mut [u8]) {
    let pad = (za as i8 as u8) ^ 0x80;
    let c = s.c;
    let row = s.wp * c;
    // Columns of the padded row that hold input: `pl .. pl + cols`.
    let cols = s.w.min(s.wp - s.pl);
    for (yp, out) in buf[..s.hp * row].chunks_exact_mut(row).enumerate() {
        match (yp.checked_sub(s.pt)).filter(|&y| y < s.h) {
            Some(y) => {
                let (left, rest) = out.split_at_mut(s.pl * c);
                let (mid, right) = rest.split_at_mut(cols * c);
                left.fill(pad);
                right.fill(pad);
                let src = &x[y * s.w * c..(y * s.w + cols) * c];
                for (d, &v) in mid.iter_mut().zip(src) {
                    *d = v as u8 ^ 0x80;
                }
            }
            None => out.fill(pad),
        }
    }
    buf[s.hp * row..s.padded_len()].fill(0);
}
