//! Kernels for pruned dense layers: `y = x · W + b` with a sparse `W`.
//!
//! [`SparseDense`] stores the non-zeros of a dense kernel `W [in, out]` column by column, with
//! the input axis cut into blocks of [`BLOCK_ROWS`] rows ("K-blocked CSC"): for each block of
//! inputs and each output column, the row indices (`u32`) and values of its non-zeros. It runs two
//! kernels:
//!
//! * **row kernel** (a few batch rows): for each output, a dot product of the column's non-zeros
//!   with the gathered inputs (`vgatherdps` on AVX2);
//! * **tile kernel** (16 batch rows at a time): a block of `x` is transposed so that the 16 batch
//!   values of one input are contiguous; each non-zero then costs one broadcast and two 8-wide
//!   FMAs, so the work is proportional to `nnz` with full vector lanes. The K-blocking keeps the
//!   transposed block (32 KiB) in L1.
//!
//! Batches are cut into 16-row tiles; a remainder of fewer than 6 rows goes through the row
//! kernel. Zeros in `x` are not skipped: the cost depends on the weights only.
//!
//! [`DenseKernel`] is the baseline the sparse kernel is measured against: the same `x · W + b`
//! with `W` packed in 16-column panels and a 4×16 register-tiled AVX2 micro-kernel (1×16 with
//! four split accumulators for leftover rows), single-threaded like the sparse kernels.
//! [`dense_reference`] is the plain triple loop (f64 accumulation) that both are tested against.
//!
//! Every kernel has a portable path ([`KernelPath::Portable`]); the AVX2 + FMA path
//! ([`KernelPath::Avx2Fma`]) is picked once at run time when the CPU has it. Results differ from
//! the reference only by summation order.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::error::{PruneError, Result};

/// Input rows per block of the K-blocked layout: a transposed block of 16 batch rows is
/// `512 × 16 × 4 B = 32 KiB`, which stays in L1 while every column's non-zeros stream past it.
pub const BLOCK_ROWS: usize = 512;

/// Batch rows per tile of the tile kernel (two AVX2 vectors).
const TILE: usize = 16;

/// Leftover batch rows below this go through the row kernel: a tile costs about as much as 3–8
/// rows of the row kernel, depending on the shape.
const MIN_TILE_ROWS: usize = 6;

/// Which implementation of a kernel to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelPath {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 + FMA intrinsics.
    Avx2Fma,
}

impl KernelPath {
    /// The fastest path this CPU supports, detected once.
    pub fn best() -> KernelPath {
        static BEST: OnceLock<KernelPath> = OnceLock::new();
        *BEST.get_or_init(|| {
            if KernelPath::Avx2Fma.is_supported() {
                KernelPath::Avx2Fma
            } else {
                KernelPath::Portable
            }
        })
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            KernelPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2Fma => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            KernelPath::Avx2Fma => false,
        }
    }

    /// Short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "portable",
            KernelPath::Avx2Fma => "avx2+fma",
        }
    }

    fn require(self) -> Result<()> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(PruneError::UnsupportedIsa { path: self.name() })
        }
    }
}

fn check_kernel(kernel: &ArrayView2<'_, f32>, bias: Option<&ArrayView1<'_, f32>>) -> Result<()> {
    if let Some(index) = kernel.iter().position(|v| !v.is_finite()) {
        let value = kernel.iter().nth(index).copied().unwrap_or(f32::NAN);
        return Err(PruneError::NonFinite { index, value });
    }
    if let Some(b) = bias {
        if b.len() != kernel.ncols() {
            return Err(PruneError::ShapeMismatch {
                op: "dense layer bias",
                expected: vec![kernel.ncols()],
                found: vec![b.len()],
            });
        }
        if let Some(index) = b.iter().position(|v| !v.is_finite()) {
            return Err(PruneError::NonFinite {
                index,
                value: b[index],
            });
        }
    }
    Ok(())
}

fn check_input(op: &'static str, x: &ArrayView2<'_, f32>, in_features: usize) -> Result<()> {
    if x.ncols() != in_features {
        return Err(PruneError::ShapeMismatch {
            op,
            expected: vec![x.nrows(), in_features],
            found: x.shape().to_vec(),
        });
    }
    Ok(())
}

fn bias_vec(bias: Option<ArrayView1<'_, f32>>, out: usize) -> Vec<f32> {
    bias.map_or_else(|| vec![0.0; out], |b| b.to_vec())
}

/// A pruned dense layer `y = x · W + b` that stores and multiplies only the non-zeros of `W`.
///
/// ```
/// use ndarray::{array, Array1};
/// use pare_prune::kernels::{dense_reference, SparseDense};
///
/// let w = array![[0.0f32, 2.0], [1.0, 0.0], [0.0, 0.0]]; // [in = 3, out = 2]
/// let b = Array1::from(vec![0.5f32, -0.5]);
/// let layer = SparseDense::from_dense(w.view(), Some(b.view()))?;
/// assert_eq!(layer.nnz(), 2);
/// let x = array![[1.0f32, 2.0, 3.0]];
/// let y = layer.forward(x.view())?;
/// assert_eq!(y, array![[2.5f32, 1.5]]);
/// assert_eq!(y, dense_reference(x.view(), w.view(), Some(b.view()))?);
/// # Ok::<(), pare_prune::PruneError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SparseDense {
    in_features: usize,
    out_features: usize,
    /// Entries of input block `kb` and column `j` are `ptr[kb * out + j] .. ptr[kb * out + j + 1]`.
    ptr: Vec<usize>,
    /// Absolute input (row) index of each entry; ascending within a (block, column) run.
    rows: Vec<u32>,
    values: Vec<f32>,
    bias: Vec<f32>,
}

impl SparseDense {
    /// Compresses a dense kernel `[in, out]` (zeros of either sign are dropped) and an optional
    /// bias `[out]`.
    ///
    /// # Errors
    /// [`PruneError::NonFinite`] for a NaN or infinite weight or bias;
    /// [`PruneError::ShapeMismatch`] if the bias length is not `out`;
    /// [`PruneError::TooLarge`] if `in` exceeds `i32::MAX` (the gather index type).
    pub fn from_dense(
        kernel: ArrayView2<'_, f32>,
        bias: Option<ArrayView1<'_, f32>>,
    ) -> Result<Self> {
        check_kernel(&kernel, bias.as_ref())?;
        let (inn, out) = kernel.dim();
        if inn > i32::MAX as usize {
            return Err(PruneError::TooLarge {
                what: "in_features",
                value: inn,
                max: i32::MAX as usize,
            });
        }
        let nnz = kernel.iter().filter(|&&v| v != 0.0).count();
        let blocks = inn.div_ceil(BLOCK_ROWS);
        let mut ptr = Vec::with_capacity(blocks * out + 1);
        let mut rows = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        ptr.push(0);
        for kb in 0..blocks {
            let r0 = kb * BLOCK_ROWS;
            let r1 = (r0 + BLOCK_ROWS).min(inn);
            for j in 0..out {
                for i in r0..r1 {
                    let v = kernel[[i, j]];
                    if v != 0.0 {
                        rows.push(i as u32);
                        values.push(v);
                    }
                }
                ptr.push(rows.len());
            }
        }
        Ok(SparseDense {
            in_features: inn,
            out_features: out,
            ptr,
            rows,
            values,
            bias: bias_vec(bias, out),
        })
    }

    /// Input features (`in`).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output features (`out`).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Stored non-zero weights.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// `nnz / (in * out)`; 0 for an empty kernel.
    pub fn density(&self) -> f64 {
        let n = self.in_features * self.out_features;
        if n == 0 {
            0.0
        } else {
            self.nnz() as f64 / n as f64
        }
    }

    /// The bias (zeros if none was given).
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// The dense kernel `[in, out]` back.
    pub fn to_dense(&self) -> Array2<f32> {
        let mut w = Array2::zeros((self.in_features, self.out_features));
        let blocks = self.in_features.div_ceil(BLOCK_ROWS);
        for kb in 0..blocks {
            for j in 0..self.out_features {
                let p = kb * self.out_features + j;
                for e in self.ptr[p]..self.ptr[p + 1] {
                    w[[self.rows[e] as usize, j]] = self.values[e];
                }
            }
        }
        w
    }

    /// `x [batch, in] · W + b` on the fastest path for this CPU.
    ///
    /// Inputs are not checked for NaN: a non-finite input meets only the stored weights, so
    /// unlike a dense product it does not poison outputs whose weight for it was pruned.
    ///
    /// # Errors
    /// [`PruneError::ShapeMismatch`] if `x` does not have `in` columns.
    pub fn forward(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        self.forward_with(x, KernelPath::best())
    }

    /// [`SparseDense::forward`] on a chosen path.
    ///
    /// # Errors
    /// [`PruneError::ShapeMismatch`]; [`PruneError::UnsupportedIsa`] if the CPU cannot run `path`.
    pub fn forward_with(&self, x: ArrayView2<'_, f32>, path: KernelPath) -> Result<Array2<f32>> {
        path.require()?;
        check_input("SparseDense::forward", &x, self.in_features)?;
        let batch = x.nrows();
        let x = x.as_standard_layout();
        let xs = x
            .as_slice()
            .expect("SparseDense::forward: standard layout is contiguous");
        let mut y = Array2::zeros((batch, self.out_features));
        let ys = y
            .as_slice_mut()
            .expect("SparseDense::forward: zeros() is contiguous");
        let (inn, out) = (self.in_features, self.out_features);
        let mut scratch = TileScratch::default();
        let mut b0 = 0;
        while b0 < batch {
            let nb = TILE.min(batch - b0);
            if nb < MIN_TILE_ROWS {
                for b in b0..batch {
                    let (xr, yr) = (&xs[b * inn..(b + 1) * inn], &mut ys[b * out..(b + 1) * out]);
                    match path {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: `path.require()` checked that the CPU has AVX2 and FMA.
                        KernelPath::Avx2Fma => unsafe { x86::sparse_row(self, xr, yr) },
                        _ => portable::sparse_row(self, xr, yr),
                    }
                }
                break;
            }
            let (xt, yt) = (
                &xs[b0 * inn..(b0 + nb) * inn],
                &mut ys[b0 * out..(b0 + nb) * out],
            );
            match path {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `path.require()` checked that the CPU has AVX2 and FMA.
                KernelPath::Avx2Fma => unsafe { x86::sparse_tile(self, xt, nb, yt, &mut scratch) },
                _ => portable::sparse_tile(self, xt, nb, yt, &mut scratch),
            }
            b0 += nb;
        }
        Ok(y)
    }
}

/// Buffers of the tile kernel, reused across tiles.
#[derive(Default)]
struct TileScratch {
    /// Transposed input block, `[BLOCK_ROWS][TILE]`.
    xt: Vec<f32>,
    /// Accumulators, `[out][TILE]`.
    acc: Vec<f32>,
}

impl TileScratch {
    /// Sizes the buffers for a tile of `nb` rows. The transposed block's rows `>= nb` must be
    /// zero (garbage could be NaN or subnormal and slow the FMAs down); full tiles overwrite
    /// every lane they read, so only partial tiles pay for clearing.
    fn prepare(&mut self, out: usize, nb: usize) {
        if self.xt.len() != BLOCK_ROWS * TILE {
            self.xt = vec![0.0; BLOCK_ROWS * TILE];
        } else if nb < TILE {
            self.xt.fill(0.0);
        }
        self.acc.resize(out * TILE, 0.0);
    }
}

/// Columns per packed panel of [`DenseKernel`].
const PANEL: usize = 16;

/// The dense baseline: `x · W + b` with `W` packed once into 16-column panels
/// (`[panel][in][16]`, the last panel zero-padded), so the micro-kernel streams one contiguous
/// panel while 4 batch rows × 16 columns of accumulators stay in registers.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseKernel {
    in_features: usize,
    out_features: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
}

impl DenseKernel {
    /// Packs a dense kernel `[in, out]` and an optional bias `[out]`.
    ///
    /// # Errors
    /// [`PruneError::NonFinite`]; [`PruneError::ShapeMismatch`] for a bias of the wrong length.
    pub fn from_dense(
        kernel: ArrayView2<'_, f32>,
        bias: Option<ArrayView1<'_, f32>>,
    ) -> Result<Self> {
        check_kernel(&kernel, bias.as_ref())?;
        let (inn, out) = kernel.dim();
        let np = out.div_ceil(PANEL);
        let mut panels = vec![0.0f32; np * inn * PANEL];
        for p in 0..np {
            for i in 0..inn {
                for c in 0..PANEL.min(out - p * PANEL) {
                    panels[(p * inn + i) * PANEL + c] = kernel[[i, p * PANEL + c]];
                }
            }
        }
        Ok(DenseKernel {
            in_features: inn,
            out_features: out,
            panels,
            bias: bias_vec(bias, out),
        })
    }

    /// Input features (`in`).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output features (`out`).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `x [batch, in] · W + b` on the fastest path for this CPU.
    ///
    /// # Errors
    /// [`PruneError::ShapeMismatch`] if `x` does not have `in` columns.
    pub fn forward(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        self.forward_with(x, KernelPath::best())
    }

    /// [`DenseKernel::forward`] on a chosen path.
    ///
    /// # Errors
    /// [`PruneError::ShapeMismatch`]; [`PruneError::UnsupportedIsa`] if the CPU cannot run `path`.
    pub fn forward_with(&self, x: ArrayView2<'_, f32>, path: KernelPath) -> Result<Array2<f32>> {
        path.require()?;
        check_input("DenseKernel::forward", &x, self.in_features)?;
        let batch = x.nrows();
        let x = x.as_standard_layout();
        let xs = x
            .as_slice()
            .expect("DenseKernel::forward: standard layout is contiguous");
        let mut y = Array2::zeros((batch, self.out_features));
        let ys = y
            .as_slice_mut()
            .expect("DenseKernel::forward: zeros() is contiguous");
        match path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `path.require()` checked that the CPU has AVX2 and FMA.
            KernelPath::Avx2Fma => unsafe { x86::dense(self, xs, batch, ys) },
            _ => portable::dense(self, xs, batch, ys),
        }
        Ok(y)
    }
}

/// The plain triple loop `y[b, j] = bias[j] + Σ_i x[b, i] · W[i, j]`, accumulated in f64 and
/// rounded once: the reference the kernels are tested against.
///
/// # Errors
/// [`PruneError::ShapeMismatch`] if `x` is not `[batch, in]` or the bias not `[out]`.
pub fn dense_reference(
    x: ArrayView2<'_, f32>,
    kernel: ArrayView2<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
) -> Result<Array2<f32>> {
    let (inn, out) = kernel.dim();
    check_input("dense_reference", &x, inn)?;
    if let Some(b) = &bias
        && b.len() != out
    {
        return Err(PruneError::ShapeMismatch {
            op: "dense_reference bias",
            expected: vec![out],
            found: vec![b.len()],
        });
    }
    let mut y = Array2::zeros((x.nrows(), out));
    for b in 0..x.nrows() {
        for j in 0..out {
            let mut s = bias.as_ref().map_or(0.0, |v| f64::from(v[j]));
            for i in 0..inn {
                s += f64::from(x[[b, i]]) * f64::from(kernel[[i, j]]);
            }
            y[[b, j]] = s as f32;
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests;
