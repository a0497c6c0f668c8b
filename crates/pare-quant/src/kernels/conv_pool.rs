//! A direct int8 convolution for short patches, fused with the non-overlapping max-pool that
//! follows it (the small CNN's `Conv2D(3×3, 1 channel) → MaxPool(2)`).
//!
//! With `k = kh·kw·cin <= 16` an im2col matrix is mostly overhead: each patch is gathered in
//! registers (one 64-bit load per patch row), its `k` products done in place, and only the
//! pooled output written. Results are bit-identical to `im2col_i8` → `gemm_i8_requant` →
//! `max_pool_i8`: each conv output is the same int32 sum and the same requantization, and the
//! pool takes the maximum of requantized codes. When every shift is a right shift and the
//! correction term is small, the SIMD path takes the maximum of the int32 sums first and
//! requantizes once per pooled pixel: `requant` is then non-decreasing in its argument (the
//! doubling high multiply with a non-negative multiplier, the rounding shift, the zero point and
//! the clamp all are), so `max(requant(x_i)) == requant(max(x_i))`.
//!
//! The SIMD path uses `vpdpbusd` the other way round from the GEMM: the activations are the
//! unsigned operand (`a + 128`, i.e. the code with its top bit flipped) and the weights the
//! signed one, so `Σ (a − za)·w = Σ (a + 128)·w − (128 + za)·Σ w` needs only a per-channel
//! correction, no per-pixel row sum.

use ndarray::ArrayView2;

use super::{NR, Padding, Requant, Window2d};

/// Longest patch (`kh·kw·cin`) the direct path takes: one 128-bit register of bytes.
pub(crate) const MAX_PATCH: usize = 16;
/// Longest patch row (`kw·cin`) in bytes: one 64-bit load.
const MAX_ROW: usize = 8;

/// A prepared conv (valid padding) + max-pool (valid, stride = size) pair.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConvPool {
    /// Conv input `[h, w, cin]`.
    input: [usize; 3],
    kernel: [usize; 2],
    strides: [usize; 2],
    pool: [usize; 2],
    /// Pooled output `[ph, pw]`.
    out: [usize; 2],
    cout: usize,
    /// Weights `[k, cout]` row-major, for the portable path.
    weights: Vec<i8>,
    bias: Vec<i32>,
    za: i32,
    requant: Requant,
    /// Weights for `vpdpbusd`: per 16-channel block, `[k/4][16][4]` signed bytes (0 padded).
    packed: Vec<i8>,
    /// `bias − (128 + za)·Σ_k w` per channel, padded to 16 lanes per block.
    corr: Vec<i32>,
    /// Whether the SIMD path may take the maximum before requantizing (see module docs).
    max_first: bool,
}

impl ConvPool {
    /// The fused layer, or `None` if the pair does not qualify (padding, overlap, patch too
    /// long).
    ///
    /// # Panics
    /// If `weights` is not `[kh·kw·cin, cout]` or `bias` has not `cout` entries (the model
    /// checked both).
    pub(crate) fn new(
        input: [usize; 3],
        conv: &Window2d,
        weights: ArrayView2<'_, i8>,
        bias: &[i32],
        za: i32,
        requant: &Requant,
        pool: &Window2d,
    ) -> Option<Self> {
        let [h, w, c] = input;
        let [kh, kw] = conv.size;
        let (k, cout) = weights.dim();
        assert_eq!(
            k,
            kh * kw * c,
            "ConvPool::new: weights {k} rows for patch {kh}x{kw}x{c}"
        );
        assert_eq!(bias.len(), cout, "ConvPool::new: bias for {cout} channels");
        let fits = conv.padding == Padding::Valid
            && pool.padding == Padding::Valid
            && pool.size == pool.strides
            && k <= MAX_PATCH
            && kw * c <= MAX_ROW
            && cout > 0
            && kh <= h
            && kw <= w
            && conv.strides.iter().all(|&s| s > 0)
            && pool.size.iter().all(|&s| s > 0)
            && (requant.channels() == 1 || requant.channels() == cout);
        if !fits {
            return None;
        }
        let oh = (h - kh) / conv.strides[0] + 1;
        let ow = (w - kw) / conv.strides[1] + 1;
        let out = [oh / pool.size[0], ow / pool.size[1]];
        if out.contains(&0) {
            return None;
        }
        let blocks = cout.div_ceil(NR);
        let kg = k.div_ceil(4);
        let mut packed = vec![0i8; blocks * kg * NR * 4];
        let mut corr = vec![0i32; blocks * NR];
        for ((kk, j), &v) in weights.indexed_iter() {
            packed[((j / NR * kg + kk / 4) * NR + j % NR) * 4 + kk % 4] = v;
        }
        for (j, cj) in corr.iter_mut().enumerate().take(cout) {
            let col_sum: i32 = weights.column(j).iter().map(|&v| v as i32).sum();
            *cj = bias[j].wrapping_sub((128 + za).wrapping_mul(col_sum));
        }
        // |Σ (a + 128)·w| <= 16·255·128 < 2^20, so with |corr| <= 2^30 nothing wraps.
        let max_first = requant.shifts().iter().all(|&s| s <= 0)
            && corr.iter().all(|&c| c.unsigned_abs() <= 1 << 30);
        Some(ConvPool {
            input,
            kernel: conv.size,
            strides: conv.strides,
            pool: pool.size,
            out,
            cout,
            weights: weights.iter().copied().collect(),
            bias: bias.to_vec(),
            za,
            requant: requant.clone(),
            packed,
            corr,
            max_first,
        })
    }

    /// Input bytes of one example.
    pub(crate) fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    /// Output bytes of one example (`[ph, pw, cout]`).
    pub(crate) fn output_len(&self) -> usize {
        self.out[0] * self.out[1] * self.cout
    }

    /// Runs `n` examples with the best path.
    ///
    /// # Panics
    /// If `src` or `dst` does not hold `n` examples.
    pub(crate) fn run(&self, n: usize, src: &[i8], dst: &mut [i8]) {
        #[cfg(target_arch = "x86_64")]
        if super::Kernel::Avx512Vnni.is_available() {
            return self.run_with(true, n, src, dst);
        }
        self.run_with(false, n, src, dst)
    }

    /// Runs `n` examples on the SIMD path (`simd`, if the CPU has it) or the portable one.
    ///
    /// # Panics
    /// If `src` or `dst` does not hold `n` examples.
    pub(crate) fn run_with(&self, simd: bool, n: usize, src: &[i8], dst: &mut [i8]) {
        let (il, ol) = (self.input_len(), self.output_len());
        assert!(
            src.len() >= n * il && dst.len() >= n * ol,
            "ConvPool::run: {n} examples of {il} -> {ol} bytes, buffers {} -> {}",
            src.len(),
            dst.len()
        );
        for (x, y) in src.chunks_exact(il).zip(dst.chunks_exact_mut(ol)).take(n) {
            #[cfg(target_arch = "x86_64")]
            if simd && super::Kernel::Avx512Vnni.is_available() {
                super::conv_pool_avx512::example(self, x, y);
                continue;
            }
            let _ = simd;
            self.example_portable(x, y);
        }
    }

    /// Offset of conv output pixel `(oy, ox)`'s patch in an example.
    #[inline]
    fn patch_offset(&self, oy: usize, ox: usize) -> usize {
        ((oy * self.strides[0]) * self.input[1] + ox * self.strides[1]) * self.input[2]
    }

    /// The patch of conv pixel `(oy, ox)` as `k` bytes of `a + 128` (top bit flipped) in the
    /// low bytes of a `u128`, zeros above.
    #[inline]
    pub(crate) fn patch(&self, x: &[i8], oy: usize, ox: usize) -> u128 {
        gather(
            x,
            self.patch_offset(oy, ox),
            self.input[1] * self.input[2],
            self.kernel[0],
            self.kernel[1] * self.input[2],
        )
    }

    /// [`patch`](Self::patch) with the kernel height and row length known at compile time, so
    /// the masks and shifts are constants (`KH = 0`: read them from `self`).
    #[inline(always)]
    pub(crate) fn patch_const<const KH: usize, const ROW: usize>(
        &self,
        x: &[i8],
        oy: usize,
        ox: usize,
    ) -> u128 {
        if KH == 0 {
            return self.patch(x, oy, ox);
        }
        gather(
            x,
            self.patch_offset(oy, ox),
            self.input[1] * self.input[2],
            KH,
            ROW,
        )
    }

    /// Kernel height and patch row length in bytes.
    pub(crate) fn patch_dims(&self) -> (usize, usize) {
        (self.kernel[0], self.kernel[1] * self.input[2])
    }

    /// The reference: every conv output as the GEMM computes it, requantized, then pooled.
    fn example_portable(&self, x: &[i8], y: &mut [i8]) {
        let [ph, pw] = self.pool;
        let k = self.weights.len() / self.cout;
        let mut acc = vec![0i32; self.cout];
        for (p, out) in y.chunks_exact_mut(self.cout).enumerate() {
            let (py, px) = (p / self.out[1], p % self.out[1]);
            out.fill(i8::MIN);
            for dy in 0..ph {
                for dx in 0..pw {
                    let patch = self.patch(x, py * ph + dy, px * pw + dx);
                    acc.copy_from_slice(&self.bias);
                    for kk in 0..k {
                        let a = ((patch >> (8 * kk)) as u8 ^ 0x80) as i8 as i32 - self.za;
                        let w = &self.weights[kk * self.cout..(kk + 1) * self.cout];
                        for (s, &wv) in acc.iter_mut().zip(w) {
                            *s = s.wrapping_add(a * wv as i32);
                        }
                    }
                    for (j, (o, &s)) in out.iter_mut().zip(&acc).enumerate() {
                        *o = (*o).max(self.requant.apply(s, j));
                    }
                }
            }
        }
    }

    /// Pooled output `[ph, pw]`.
    pub(crate) fn out_dims(&self) -> [usize; 2] {
        self.out
    }
    /// Whether this is a 3×3 single-channel conv with stride 1 and a 2×2 pool (the small CNN),
    /// which the SIMD path gathers four patches at a time for.
    pub(crate) fn is_3x3_pool2(&self) -> bool {
        self.kernel == [3, 3] && self.input[2] == 1 && self.strides == [1, 1] && self.pool == [2, 2]
    }

    /// Input row length in bytes (`w · cin`).
    pub(crate) fn row_stride(&self) -> usize {
        self.input[1] * self.input[2]
    }

    /// Pool window `[py, px]`.
    pub(crate) fn pool_size(&self) -> [usize; 2] {
        self.pool
    }
    /// Output channels.
    pub(crate) fn cout(&self) -> usize {
        self.cout
    }
    /// Weights laid out for `vpdpbusd` (see the fields).
    pub(crate) fn packed(&self) -> &[i8] {
        &self.packed
    }
    /// Per-channel correction, padded to 16 lanes per block.
    pub(crate) fn corr(&self) -> &[i32] {
        &self.corr
    }
    /// Whether the maximum may be taken before requantizing.
    pub(crate) fn max_first(&self) -> bool {
        self.max_first
    }
    /// The output stage.
    pub(crate) fn requant(&self) -> &Requant {
        &self.requant
    }
    /// Groups of 4 patch bytes.
    pub(crate) fn k_groups(&self) -> usize {
        (self.weights.len() / self.cout).div_ceil(4)
    }
}

/// `kh` rows of `row_len <= 8` bytes, `row_stride` apart from `off`, packed into the low bytes
/// of a `u128` with their top bits flipped (`a + 128` as unsigned), zeros above.
/// The 8 bytes from `off` as a little-endian `u64` with their top bits flipped; when fewer than
/// 8 remain in `x`, only the first `len` bytes are read and the bytes above them are
/// meaningless (callers mask them off).
#[inline(always)]
pub(crate) fn load_row(x: &[i8], off: usize, len: usize) -> u64 {
    let eight: Option<&[i8; 8]> = x.get(off..off + 8).and_then(|b| b.try_into().ok());
    let row = match eight {
        Some(b) => u64::from_le_bytes(b.map(|v| v as u8)),
        // The last rows of an example may end less than 8 bytes before the buffer does.
        None => x[off..off + len]
            .iter()
            .rev()
            .fold(0u64, |acc, &v| (acc << 8) | v as u8 as u64),
    };
    row ^ 0x8080_8080_8080_8080
}

#[inline(always)]
fn gather(x: &[i8], mut off: usize, row_stride: usize, kh: usize, row_len: usize) -> u128 {
    let mask = if row_len == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * row_len)) - 1
    };
    let mut p = 0u128;
    for ky in 0..kh {
        // `load_row` flipped the top bits of all 8 bytes; the mask keeps the row's own.
        p |= ((load_row(x, off, row_len) & mask) as u128) << (8 * ky * row_len);
        off += row_stride;
    }
    p
}
