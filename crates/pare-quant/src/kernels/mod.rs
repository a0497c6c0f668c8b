//! Integer-only kernels: int8 GEMM with fused requantization, im2col and max-pool on int8 NHWC.
//!
//! # GEMM
//!
//! `A` holds activations, int8 row-major `[m, k]` with zero point `za` (asymmetric); `B` holds
//! weights, int8 `[k, n]`, symmetric (zero point 0), packed once into [`PackedWeights`]. The
//! accumulator is
//!
//! `acc[i][j] = Σ_k (a[i][k] − za) · b[k][j] + bias[j]`   (int32)
//!
//! ([`gemm_i8_acc`]), and the fused output stage ([`gemm_i8_requant`], [`Requant`]) is TFLite's:
//!
//! `out[i][j] = clamp(multiply_by_quantized_multiplier(acc, mult[j], shift[j]) + zo, act_min, act_max)`
//!
//! where `act_min`/`act_max` implement a fused ReLU / ReLU6 by clamping. This covers a conv
//! (`im2col_i8` then GEMM with the `[kh·kw·in, out]` kernel, per-channel multipliers) and a dense
//! layer (GEMM directly).
//!
//! Sums are exact as long as `k · 255 · 128` fits in an int32 (`k` up to 65 000); beyond that
//! they wrap modulo 2^32, identically on every path.
//!
//! # Kernels
//!
//! [`Kernel::best`] picks, once per process, the fastest kernel this CPU runs: AVX-512 VNNI
//! (`vpdpbusd`, 64 multiply-adds per instruction), AVX2 (widening to int16 and `vpmaddwd`,
//! which is exact where `vpmaddubsw` would saturate), or the portable one. Every path gives the
//! same bits; `*_with` functions force one, for tests and benches. Large products are split
//! over rows with rayon; small ones (batch-1 inference) stay on the calling thread and allocate
//! nothing.
//!
//! How the SIMD paths get exact results from `vpdpbusd`, which multiplies *unsigned* bytes by
//! signed bytes: the weights are stored as `b + 128` (unsigned) and the activations are used
//! as they are (signed), so each lane accumulates `Σ a·(b + 128)`; with the row sums of `A` and
//! the column sums of `B`,
//! `Σ (a − za)·b = Σ a·(b + 128) − 128·Σ_k a − za·Σ_k b`. Every product is at most
//! `128 · 255`, four of them fit an int32 lane with room to spare, and padding bytes are 0 so
//! they add nothing. When `n` is not a multiple of 16, a padding column of 128s makes the
//! AVX-512 kernel produce `128·Σ_k a` in the same instructions (see [`PackedWeights`]).
//!
//! # Windows
//!
//! [`im2col_i8`] builds patch rows in `(ky, kx, c)` order with TensorFlow's `valid`/`same`
//! padding filled with the input zero point; narrow inputs (`w · c <= 127` bytes, such as a
//! 28×28×1 image) use AVX-512 VBMI byte permutes, others span copies. [`max_pool_i8`] ignores
//! padding as TensorFlow does and uses AVX2 byte maxima. Both have portable paths they are
//! tested against byte for byte.
//!
//! A conv with a patch of at most 16 bytes followed by a non-overlapping max-pool also has a
//! fused direct kernel (`conv_pool`), tested byte for byte against im2col → GEMM → max-pool.
//! Any other conv has a direct kernel for batch-1 inference (`conv_direct`: the GEMM's packed
//! weights applied to a padded copy of the input, no patch matrix), tested byte for byte
//! against im2col → GEMM.

use std::sync::OnceLock;

use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::fixedpoint::{
    MAX_SHIFT, MIN_SHIFT, multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_single_rounding, quantize_multiplier,
};
use crate::params::{QMAX_I8, QMIN_I8};

mod activation;
pub mod add;
pub mod avgpool;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod conv_direct;
#[cfg(target_arch = "x86_64")]
mod conv_direct_avx512;
mod conv_pool;
#[cfg(target_arch = "x86_64")]
mod conv_pool_avx512;
pub mod depthwise;
pub mod lut;
mod portable;
pub mod softmax;
mod window;
#[cfg(target_arch = "x86_64")]
mod window_avx2;
#[cfg(target_arch = "x86_64")]
mod window_avx512;

pub use activation::{LeakyReluParams, apply_table, onnxruntime_leaky_relu_table};
pub(crate) use conv_direct::{ConvScratch, ConvShape, DirectConv};
pub(crate) use conv_pool::ConvPool;
pub use window::{
    Im2col, Padding, Window2d, im2col_i8, im2col_i8_into, max_pool_i8, max_pool_i8_into,
};

/// Columns per packed block: one AVX-512 register of int32 lanes.
pub(crate) const NR: usize = 16;
/// Products of `m · n · k` from which a GEMM is split over threads. Below it (a few
/// microseconds of work) rayon's fork/join would cost more than it saves.
pub const PARALLEL_MIN_MACS: usize = 1 << 22;

/// An int8 GEMM implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Plain int32 loops; always available, the reference for the others.
    Portable,
    /// AVX2: int8 widened to int16, `vpmaddwd`, int32 accumulators.
    Avx2,
    /// AVX-512 with VNNI: `vpdpbusd` on 16 int32 lanes.
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512Vnni];

    /// Whether this CPU can run the kernel (detected once, then cached).
    pub fn is_available(self) -> bool {
        static AVAILABLE: OnceLock<[bool; 3]> = OnceLock::new();
        let available = AVAILABLE.get_or_init(|| {
            Kernel::ALL.map(|k| match k {
                Kernel::Portable => true,
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => avx2::available(),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => avx512::available(),
                #[cfg(not(target_arch = "x86_64"))]
                _ => false,
            })
        });
        available[self as usize]
    }

    /// The kernels this CPU can run.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// The fastest available kernel, detected on first use and cached.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            Kernel::ALL
                .into_iter()
                .rev()
                .find(|k| k.is_available())
                .unwrap_or(Kernel::Portable)
        })
    }
}

/// Int8 weights `[k, n]` packed once for every GEMM kernel.
///
/// Layout: blocks of 16 columns (`n` padded to a multiple of 16), each `[⌈k/4⌉][16][4]` —
/// for each group of 4 consecutive `k`, the 4 bytes of column 0, then column 1, … — which is
/// exactly one `vpdpbusd` operand. Bytes hold `b + 128` (as u8); padding bytes hold 0, except
/// that when `n` is not a multiple of 16 the first padding column (`j = n`) holds 128 for every
/// real `k`: its accumulator is then `128 · Σ_k a`, the row correction, computed for free by
/// the same instructions. The column sums `Σ_k b[k][j]` are kept alongside (0 in
/// padding columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    data: Vec<u8>,
    col_sums: Vec<i32>,
}

impl PackedWeights {
    /// Packs `b` (`[k, n]`, any memory layout).
    pub fn new(b: ArrayView2<'_, i8>) -> Self {
        let (k, n) = b.dim();
        let kg = k.div_ceil(4);
        let blocks = n.div_ceil(NR);
        let mut data = vec![0u8; blocks * kg * NR * 4];
        let mut col_sums = vec![0i32; blocks * NR];
        for ((kk, j), &v) in b.indexed_iter() {
            let (blk, lane) = (j / NR, j % NR);
            data[((blk * kg + kk / 4) * NR + lane) * 4 + kk % 4] = (v as i16 + 128) as u8;
            col_sums[j] += v as i32;
        }
        if !n.is_multiple_of(NR) {
            let (blk, lane) = (n / NR, n % NR);
            for kk in 0..k {
                data[((blk * kg + kk / 4) * NR + lane) * 4 + kk % 4] = 128;
            }
        }
        PackedWeights {
            k,
            n,
            data,
            col_sums,
        }
    }

    /// The padding column whose accumulator is `128 ·` the row sum of `A` (see the type docs), if
    /// `n` is not a multiple of 16: `(block, lane)`.
    pub(crate) fn row_sum_lane(&self) -> Option<(usize, usize)> {
        (!self.n.is_multiple_of(NR)).then_some((self.n / NR, self.n % NR))
    }

    /// Inner dimension `k`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output columns `n`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `Σ_k b[k][j]` for each column (padded with zeros to a multiple of 16).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Groups of 4 along `k`.
    pub(crate) fn k_groups(&self) -> usize {
        self.k.div_ceil(4)
    }

    /// The packed bytes of 16-column block `blk`: `k_groups() · 64` bytes.
    pub(crate) fn block(&self, blk: usize) -> &[u8] {
        let len = self.k_groups() * NR * 4;
        &self.data[blk * len..(blk + 1) * len]
    }

    /// Number of 16-column blocks.
    pub(crate) fn blocks(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The original weight `b[kk][j]`.
    #[cfg(test)]
    pub(crate) fn get(&self, kk: usize, j: usize) -> i8 {
        let byte = self.block(j / NR)[((kk / 4) * NR + j % NR) * 4 + kk % 4];
        (byte as i16 - 128) as i8
    }
}

/// A fused activation, applied by clamping the int8 output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// No clamping beyond int8.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

/// TFLite's `CalculateActivationRangeQuantized` for int8 outputs: the `[act_min, act_max]` that
/// implements `activation` on an output with this scale and zero point (`q(f) = zp + round(f /
/// scale)`, intersected with [−128, 127]).
///
/// # Errors
/// If `scale` is not finite and positive or `zero_point` is outside [−128, 127].
pub fn activation_range(activation: Activation, scale: f32, zero_point: i32) -> Result<(i32, i32)> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(QuantError::InvalidScale { channel: 0, scale });
    }
    check_zero_point(zero_point)?;
    let q = |f: f32| {
        (zero_point as i64 + (f / scale).round() as i64).clamp(i32::MIN as i64, i32::MAX as i64)
            as i32
    };
    Ok(match activation {
        Activation::None => (QMIN_I8, QMAX_I8),
        Activation::Relu => (QMIN_I8.max(q(0.0)), QMAX_I8),
        Activation::Relu6 => (QMIN_I8.max(q(0.0)), QMAX_I8.min(q(6.0))),
    })
}

fn check_zero_point(zero_point: i32) -> Result<()> {
    if !(QMIN_I8..=QMAX_I8).contains(&zero_point) {
        return Err(QuantError::InvalidZeroPoint {
            channel: 0,
            zero_point,
            qmin: QMIN_I8,
            qmax: QMAX_I8,
        });
    }
    Ok(())
}

/// How an int8 output stage rescales an int32 accumulator: the rounding rule of the runtime
/// whose results pare reproduces bit for bit.
///
/// The two rules agree except where the exact value lies within about one part in 2^22 of a
/// half step, which on a small CNN is a few codes in a thousand per layer: enough that a model
/// checked against a runtime must use that runtime's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Rounding {
    /// TFLite's reference kernels: the real multiplier as a 31-bit fixed-point number and a
    /// shift ([`quantize_multiplier`]), applied by gemmlowp's two roundings
    /// ([`multiply_by_quantized_multiplier`]) in convolutions and with one rounding
    /// ([`Requant::with_single_rounding`]) in dense layers, as TFLite 2.21's reference
    /// `CONV_2D` and `FULLY_CONNECTED` do. Leaky ReLU as TFLite's `LEAKY_RELU`.
    #[default]
    Tflite,
    /// onnxruntime's CPU kernels (MLAS `MlasRequantizeOutput`, as `QLinearConv` and
    /// `QLinearMatMul` use it): the multiplier `(s_in · s_w) / s_out` computed in f32, the
    /// accumulator converted to f32 and multiplied by it, then one rounding to nearest with ties
    /// to even. Leaky ReLU as `com.microsoft.QLinearLeakyRelu`'s f32 lookup table.
    OnnxRuntime,
}

impl std::fmt::Display for Rounding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rounding::Tflite => "tflite",
            Rounding::OnnxRuntime => "onnxruntime",
        })
    }
}

/// The output stage of an int8 layer: per-tensor or per-output-channel multipliers (fixed point,
/// or f32 under [`Rounding::OnnxRuntime`]), the output zero point and the clamping range.
#[derive(Debug, Clone, PartialEq)]
pub struct Requant {
    multiplier: Vec<i32>,
    shift: Vec<i32>,
    /// f32 multipliers, present under [`Rounding::OnnxRuntime`]; they then replace the
    /// fixed-point ones.
    float_multiplier: Option<Vec<f32>>,
    /// The fixed-point multipliers are applied with one rounding (TFLite's
    /// `FULLY_CONNECTED`), not gemmlowp's two.
    single_rounding: bool,
    zero_point: i32,
    act_min: i32,
    act_max: i32,
}

impl Requant {
    /// One multiplier for every column.
    ///
    /// # Errors
    /// As [`per_channel`](Self::per_channel).
    pub fn per_tensor(
        multiplier: i32,
        shift: i32,
        zero_point: i32,
        act_min: i32,
        act_max: i32,
    ) -> Result<Self> {
        Self::per_channel(vec![multiplier], vec![shift], zero_point, act_min, act_max)
    }

    /// One multiplier per output column (a single entry applies to every column).
    ///
    /// # Errors
    /// If the lists differ in length or are empty, a multiplier is negative or a shift outside
    /// [−31, 30] ([`QuantError::InvalidQuantizedMultiplier`]), the zero point is outside
    /// [−128, 127], or `act_min > act_max` or either is outside [−128, 127].
    pub fn per_channel(
        multiplier: Vec<i32>,
        shift: Vec<i32>,
        zero_point: i32,
        act_min: i32,
        act_max: i32,
    ) -> Result<Self> {
        if multiplier.is_empty() || multiplier.len() != shift.len() {
            return Err(QuantError::ChannelMismatch {
                what: "requantization shifts vs multipliers",
                expected: multiplier.len().max(1),
                found: shift.len(),
            });
        }
        for (channel, (&m, &s)) in multiplier.iter().zip(&shift).enumerate() {
            if m < 0 || !(MIN_SHIFT..=MAX_SHIFT).contains(&s) {
                return Err(QuantError::InvalidQuantizedMultiplier {
                    channel,
                    multiplier: m,
                    shift: s,
                });
            }
        }
        check_zero_point(zero_point)?;
        if act_min > act_max || act_min < QMIN_I8 || act_max > QMAX_I8 {
            return Err(QuantError::InvalidIntRange {
                qmin: act_min,
                qmax: act_max,
                target: "i8",
            });
        }
        Ok(Requant {
            multiplier,
            shift,
            float_multiplier: None,
            single_rounding: false,
            zero_point,
            act_min,
            act_max,
        })
    }

    /// The output stage of a conv or dense layer from its scales, as TFLite's
    /// `PopulateConvolutionQuantizationParams`: per channel `c`, the real multiplier
    /// `s_in · s_w[c] / s_out` (in f64) goes through [`quantize_multiplier`]. One weight scale
    /// gives a per-tensor stage.
    ///
    /// # Errors
    /// If a scale is not finite and positive, `weight_scales` is empty, a multiplier is out of
    /// range, or the zero point or activation range is invalid.
    pub fn from_scales(
        input_scale: f32,
        weight_scales: &[f32],
        output_scale: f32,
        output_zero_point: i32,
        act_min: i32,
        act_max: i32,
    ) -> Result<Self> {
        for (channel, &scale) in [input_scale, output_scale]
            .iter()
            .chain(weight_scales)
            .enumerate()
        {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(QuantError::InvalidScale {
                    channel: channel.saturating_sub(2),
                    scale,
                });
            }
        }
        let mut multiplier = Vec::with_capacity(weight_scales.len());
        let mut shift = Vec::with_capacity(weight_scales.len());
        for &ws in weight_scales {
            let real = input_scale as f64 * ws as f64 / output_scale as f64;
            let (m, s) = quantize_multiplier(real)?;
            multiplier.push(m);
            shift.push(s);
        }
        Self::per_channel(multiplier, shift, output_zero_point, act_min, act_max)
    }

    /// [`from_scales`](Self::from_scales) with a chosen [`Rounding`]. Under
    /// [`Rounding::OnnxRuntime`] the multipliers are onnxruntime's
    /// `X_scale * W_scale[c] / Y_scale`, evaluated in f32 in that order; the fixed-point ones
    /// are still computed, so the same scales are rejected under both rules.
    ///
    /// # Errors
    /// As [`from_scales`](Self::from_scales).
    pub fn from_scales_with(
        rounding: Rounding,
        input_scale: f32,
        weight_scales: &[f32],
        output_scale: f32,
        output_zero_point: i32,
        act_min: i32,
        act_max: i32,
    ) -> Result<Self> {
        let mut rq = Self::from_scales(
            input_scale,
            weight_scales,
            output_scale,
            output_zero_point,
            act_min,
            act_max,
        )?;
        if rounding == Rounding::OnnxRuntime {
            rq.float_multiplier = Some(
                weight_scales
                    .iter()
                    .map(|&ws| input_scale * ws / output_scale)
                    .collect(),
            );
        }
        Ok(rq)
    }

    /// The same stage applying its fixed-point multipliers with one rounding
    /// ([`multiply_by_quantized_multiplier_single_rounding`]), as TFLite 2.21's reference
    /// `FULLY_CONNECTED` does; its `CONV_2D` and `DEPTHWISE_CONV_2D` keep gemmlowp's two. No
    /// effect under [`Rounding::OnnxRuntime`], whose f32 stage rounds once anyway.
    pub fn with_single_rounding(mut self) -> Self {
        self.single_rounding = true;
        self
    }

    /// Whether the fixed-point multipliers are applied with one rounding
    /// ([`with_single_rounding`](Self::with_single_rounding)).
    pub fn is_single_rounding(&self) -> bool {
        self.single_rounding
    }

    /// The rounding rule this stage applies.
    pub fn rounding(&self) -> Rounding {
        if self.float_multiplier.is_some() {
            Rounding::OnnxRuntime
        } else {
            Rounding::Tflite
        }
    }

    /// Number of channels: 1 per tensor, else one per output column.
    pub fn channels(&self) -> usize {
        self.multiplier.len()
    }

    /// Fixed-point multipliers.
    pub fn multipliers(&self) -> &[i32] {
        &self.multiplier
    }

    /// Shifts (positive = left).
    pub fn shifts(&self) -> &[i32] {
        &self.shift
    }

    /// Output zero point.
    pub fn zero_point(&self) -> i32 {
        self.zero_point
    }

    /// Clamping range `(act_min, act_max)`.
    pub fn activation_range(&self) -> (i32, i32) {
        (self.act_min, self.act_max)
    }

    /// Requantizes one accumulator of output column `column` (the scalar reference of every
    /// SIMD output stage).
    ///
    /// # Panics
    /// If the stage is per channel and `column >= channels()`.
    #[inline]
    pub fn apply(&self, acc: i32, column: usize) -> i8 {
        let c = if self.multiplier.len() == 1 {
            0
        } else {
            column
        };
        let v = match &self.float_multiplier {
            // MLAS clamps in f32 before it converts; the bounds are integers, so clamping the
            // rounded value is the same. `as i32` saturates, and the clamp is inside i8 anyway.
            Some(m) => {
                ((acc as f32 * m[c]).round_ties_even() as i32).saturating_add(self.zero_point)
            }
            None if self.single_rounding => multiply_by_quantized_multiplier_single_rounding(
                acc,
                self.multiplier[c],
                self.shift[c],
            )
            .wrapping_add(self.zero_point),
            None => multiply_by_quantized_multiplier(acc, self.multiplier[c], self.shift[c])
                .wrapping_add(self.zero_point),
        };
        v.clamp(self.act_min, self.act_max) as i8
    }

    /// Per-column parameters of the 16-column block starting at `j0`, for the SIMD paths:
    /// multiplier, left shift, right shift (padding lanes: multiplier 0, shifts 0).
    pub(crate) fn block_params(&self, j0: usize, n: usize) -> [[i32; NR]; 3] {
        debug_assert!(
            self.float_multiplier.is_none() && !self.single_rounding,
            "Requant::block_params: the SIMD output stages are fixed point only"
        );
        let [mut mult, mut left, mut right] = [[0i32; NR]; 3];
        for l in 0..NR.min(n.saturating_sub(j0)) {
            let c = if self.multiplier.len() == 1 {
                0
            } else {
                j0 + l
            };
            (mult[l], left[l], right[l]) = (
                self.multiplier[c],
                self.shift[c].max(0),
                (-self.shift[c]).max(0),
            );
        }
        [mult, left, right]
    }
}

/// Where a GEMM writes: int32 accumulators, or int8 through an output stage.
pub(crate) enum Out<'a> {
    Acc(&'a mut [i32]),
    Requant(&'a mut [i8], &'a Requant),
}

/// The operands of one GEMM call, checked.
pub(crate) struct Gemm<'a> {
    /// `A`, row-major `[m, k]`.
    pub a: &'a [i8],
    pub m: usize,
    pub za: i32,
    pub b: &'a PackedWeights,
    pub bias: Option<&'a [i32]>,
}

impl Gemm<'_> {
    /// `bias[j] − za · colsum[j]` for the 16 columns from `j0` (0 in padding lanes): the part of
    /// the SIMD correction that depends only on the column.
    pub(crate) fn block_correction(&self, j0: usize) -> [i32; NR] {
        let mut c = [0i32; NR];
        let n = self.b.n();
        for (l, cl) in c.iter_mut().enumerate().take(NR.min(n.saturating_sub(j0))) {
            let bias = self.bias.map_or(0, |b| b[j0 + l]);
            *cl = bias.wrapping_sub(self.za.wrapping_mul(self.b.col_sums()[j0 + l]));
        }
        c
    }

    /// `128 · Σ_k a[i][k]` for rows `r0..r0 + out.len()`.
    pub(crate) fn row_corrections(&self, r0: usize, out: &mut [i32]) {
        let k = self.b.k();
        for (i, o) in out.iter_mut().enumerate() {
            let row = &self.a[(r0 + i) * k..(r0 + i + 1) * k];
            *o = row.iter().map(|&v| v as i32).sum::<i32>().wrapping_mul(128);
        }
    }
}

/// Checks the operands and returns `A` in row-major layout (copied only if it is not).
fn check_gemm<'a>(
    a: &'a ArrayView2<'_, i8>,
    za: i32,
    b: &PackedWeights,
    bias: Option<&[i32]>,
    out_dim: (usize, usize),
) -> Result<ndarray::CowArray<'a, i8, ndarray::Ix2>> {
    let (m, k) = a.dim();
    if k != b.k() {
        return Err(QuantError::ShapeMismatch {
            op: "gemm_i8 (A columns vs packed B rows)",
            expected: vec![m, b.k()],
            found: vec![m, k],
        });
    }
    if out_dim != (m, b.n()) {
        return Err(QuantError::ShapeMismatch {
            op: "gemm_i8 (output)",
            expected: vec![m, b.n()],
            found: vec![out_dim.0, out_dim.1],
        });
    }
    if let Some(bias) = bias
        && bias.len() != b.n()
    {
        return Err(QuantError::ShapeMismatch {
            op: "gemm_i8 (bias)",
            expected: vec![b.n()],
            found: vec![bias.len()],
        });
    }
    check_zero_point(za)?;
    Ok(a.as_standard_layout())
}

/// `acc = (A − za)·B + bias` with the best kernel; see the [module docs](self).
///
/// `a` is `[m, k]` (copied if not row-major), `out` is `[m, n]` and must be row-major.
///
/// # Errors
/// On mismatched shapes, a bias length other than `n`, `za` outside [−128, 127], or a
/// non-contiguous `out`.
pub fn gemm_i8_acc(
    a: ArrayView2<'_, i8>,
    a_zero_point: i32,
    b: &PackedWeights,
    bias: Option<&[i32]>,
    out: ArrayViewMut2<'_, i32>,
) -> Result<()> {
    gemm_i8_acc_with(Kernel::best(), a, a_zero_point, b, bias, out)
}

/// [`gemm_i8_acc`] with a chosen kernel.
///
/// # Errors
/// As [`gemm_i8_acc`], or [`QuantError::KernelUnavailable`].
pub fn gemm_i8_acc_with(
    kernel: Kernel,
    a: ArrayView2<'_, i8>,
    a_zero_point: i32,
    b: &PackedWeights,
    bias: Option<&[i32]>,
    mut out: ArrayViewMut2<'_, i32>,
) -> Result<()> {
    let a = check_gemm(&a, a_zero_point, b, bias, out.dim())?;
    let out = out.as_slice_mut().ok_or(QuantError::NotContiguous {
        what: "gemm output",
    })?;
    let a_slice = a
        .as_slice()
        .expect("gemm_i8: standard-layout array is contiguous");
    let g = Gemm {
        a: a_slice,
        m: a.nrows(),
        za: a_zero_point,
        b,
        bias,
    };
    run(kernel, &g, Out::Acc(out))
}

/// `out = requant((A − za)·B + bias)` with the best kernel; see the [module docs](self).
///
/// # Errors
/// As [`gemm_i8_acc`], or if `requant` is per channel with a channel count other than `n`.
pub fn gemm_i8_requant(
    a: ArrayView2<'_, i8>,
    a_zero_point: i32,
    b: &PackedWeights,
    bias: Option<&[i32]>,
    requant: &Requant,
    out: ArrayViewMut2<'_, i8>,
) -> Result<()> {
    gemm_i8_requant_with(Kernel::best(), a, a_zero_point, b, bias, requant, out)
}

/// [`gemm_i8_requant`] with a chosen kernel.
///
/// # Errors
/// As [`gemm_i8_requant`], or [`QuantError::KernelUnavailable`].
pub fn gemm_i8_requant_with(
    kernel: Kernel,
    a: ArrayView2<'_, i8>,
    a_zero_point: i32,
    b: &PackedWeights,
    bias: Option<&[i32]>,
    requant: &Requant,
    mut out: ArrayViewMut2<'_, i8>,
) -> Result<()> {
    let a = check_gemm(&a, a_zero_point, b, bias, out.dim())?;
    check_requant_channels(requant, b.n())?;
    let out = out.as_slice_mut().ok_or(QuantError::NotContiguous {
        what: "gemm output",
    })?;
    let a_slice = a
        .as_slice()
        .expect("gemm_i8: standard-layout array is contiguous");
    let g = Gemm {
        a: a_slice,
        m: a.nrows(),
        za: a_zero_point,
        b,
        bias,
    };
    run(kernel, &g, Out::Requant(out, requant))
}

fn check_requant_channels(requant: &Requant, n: usize) -> Result<()> {
    if requant.channels() != 1 && requant.channels() != n {
        return Err(QuantError::ChannelMismatch {
            what: "requantization multipliers vs output columns",
            expected: n,
            found: requant.channels(),
        });
    }
    Ok(())
}

/// Requantizes int32 accumulators `[m, n]` to int8 (portable; the GEMMs fuse this stage).
///
/// # Errors
/// On mismatched shapes or channel counts, or a non-contiguous `out`.
pub fn requantize(
    acc: ArrayView2<'_, i32>,
    requant: &Requant,
    mut out: ArrayViewMut2<'_, i8>,
) -> Result<()> {
    if acc.dim() != out.dim() {
        return Err(QuantError::ShapeMismatch {
            op: "requantize",
            expected: acc.shape().to_vec(),
            found: out.shape().to_vec(),
        });
    }
    check_requant_channels(requant, acc.ncols())?;
    ndarray::Zip::indexed(&mut out)
        .and(&acc)
        .for_each(|(_, j), o, &v| *o = requant.apply(v, j));
    Ok(())
}

/// Runs one kernel over row ranges, in parallel when the product is large.
fn run(kernel: Kernel, g: &Gemm<'_>, out: Out<'_>) -> Result<()> {
    if !kernel.is_available() {
        return Err(QuantError::KernelUnavailable { kernel });
    }
    let n = g.b.n();
    if g.m == 0 || n == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let macs = g.m.saturating_mul(n).saturating_mul(g.b.k().max(1));
    if threads < 2 || macs < PARALLEL_MIN_MACS || g.m < 64 {
        run_rows(kernel, g, 0, out);
        return Ok(());
    }
    // A few chunks per thread for balance, each a multiple of the 8-row micro-tile.
    let rows = g.m.div_ceil(threads * 4).max(32).next_multiple_of(8);
    match out {
        Out::Acc(o) => o.par_chunks_mut(rows * n).enumerate().for_each(|(c, oc)| {
            run_rows(kernel, g, c * rows, Out::Acc(oc));
        }),
        Out::Requant(o, rq) => o.par_chunks_mut(rows * n).enumerate().for_each(|(c, oc)| {
            run_rows(kernel, g, c * rows, Out::Requant(oc, rq));
        }),
    }
    Ok(())
}

/// Rows `r0 .. r0 + out.len() / n` on the calling thread.
fn run_rows(kernel: Kernel, g: &Gemm<'_>, r0: usize, out: Out<'_>) {
    let out = match out {
        Out::Requant(o, rq)
            if (rq.rounding() == Rounding::OnnxRuntime || rq.single_rounding)
                && kernel != Kernel::Portable =>
        {
            // The SIMD output stages are gemmlowp's double-rounding fixed point: take their
            // accumulators and apply the f32 or single-rounding stage here, a few rows at a
            // time so the scratch stays small.
            const ROWS: usize = 32;
            let n = g.b.n();
            let mut acc = vec![0i32; ROWS.min(o.len() / n) * n];
            for (b, ob) in o.chunks_mut(ROWS * n).enumerate() {
                let acc = &mut acc[..ob.len()];
                run_rows(kernel, g, r0 + b * ROWS, Out::Acc(acc));
                for (i, (o, &a)) in ob.iter_mut().zip(acc.iter()).enumerate() {
                    *o = rq.apply(a, i % n);
                }
            }
            return;
        }
        other => other,
    };
    match kernel {
        Kernel::Portable => portable::gemm(g, r0, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::gemm(g, r0, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => avx512::gemm(g, r0, out),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("run_rows: kernel {kernel:?} checked available on a non-x86 target"),
    }
}

#[cfg(test)]
mod tests;
