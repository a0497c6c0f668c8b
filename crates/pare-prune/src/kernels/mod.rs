//! Kernels for pruned dense layers: `y = x · W + b` with a sparse `W`.
//!
//! [`SparseDense`] stores the non-zeros of a dense kernel `W [in, out]` column by column (CSC),
//! and within a column in blocks of [`BLOCK_ROWS`] inputs, so that one column's entries are one
//! contiguous run and those of one column *and* one block of inputs a sub-run. A layer with at
//! most 16 outputs also gets a second layout, *window groups* (below). Which kernel runs is
//! decided by the layer's width (at construction) and the batch size (per call):
//!
//! * **window-group kernel** (AVX-512 and portable paths, `out <= 16`, every batch size): the
//!   inputs are cut into windows of 32; a group holds up to 16 non-zeros of one window, one per
//!   vector lane, each lane accumulating a fixed output column (a layer with fewer than 16
//!   outputs gives its densest columns two lanes). Per group, one in-register permute
//!   (`vpermt2ps`) moves the window's inputs into lane order and one FMA applies the weights, so
//!   `x` is read in its own layout and never transposed, which for a narrow layer would cost
//!   more than the products. Blocks of 8 and 4 batch rows keep their windows of `x` in registers
//!   and share each group's loads;
//! * **tile kernel** (wider layers, or narrow ones on AVX2; 16 batch rows per tile, up to four
//!   tiles per pass): a block of `x` is transposed so that the batch values of one input are
//!   contiguous; each non-zero then costs one broadcast and one 16-wide FMA per tile, so the
//!   work is proportional to `nnz` with full vector lanes. Taking several tiles per pass over the
//!   weights reuses each loaded index and value and streams the weights once per 64 rows instead
//!   of once per 16. The transposed block (`512 / tiles` inputs × `16 · tiles` rows, 32 KiB)
//!   stays in L1. A remainder of 4 to 15 rows goes through one zero-padded tile;
//! * **row kernel** (fewer than 4 rows on the tile kernel's layers): per output, a dot product
//!   of the column's non-zeros with gathered inputs (`vgatherdps`, 8 lanes: 16-lane gathers load
//!   no faster, about two elements per cycle either way), 4096 inputs at a time so the gathered
//!   part of `x` stays in L1.
//!
//! Zeros in `x` are not skipped: the cost depends on the weights only. The window groups cost
//! memory: 82 bytes per group against 8 per non-zero in the CSC layout; a `[2028 -> 10]` layer
//! at 80 % random sparsity packs about 7.6 non-zeros per group, 11 bytes per non-zero.
//!
//! [`DenseKernel`] is the baseline the sparse kernels are measured against: the same
//! `x · W + b` with `W` packed in 16-column panels and a 4×16 register-tiled AVX2 micro-kernel
//! (1×16 with four split accumulators for leftover rows), single-threaded like the sparse
//! kernels. [`dense_reference`] is the plain triple loop (f64 accumulation) that both are
//! tested against.
//!
//! Every kernel has a portable path ([`KernelPath::Portable`]); the AVX2 + FMA path
//! ([`KernelPath::Avx2Fma`]) and the AVX-512 path ([`KernelPath::Avx512`]: window groups and
//! 16-lane tiles; its row kernel and [`DenseKernel`] are the AVX2 ones) are picked once at run
//! time when the CPU has them. Results differ from the reference only by summation order.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::error::{PruneError, Result};

/// Input rows per block of the layout: the unit of the tile kernel's K-blocking. A pass of `t`
/// tiles transposes `512 / t` inputs at a time (4, 2 or 1 blocks), `512 × 16 × 4 B = 32 KiB`.
pub const BLOCK_ROWS: usize = 128;

/// Inputs per transposed block of a one-tile pass; `t` tiles take `SUPER_ROWS / t`.
const SUPER_ROWS: usize = 512;

/// Batch rows per tile of the tile kernel (one AVX-512 vector, two AVX2 vectors).
const TILE: usize = 16;

/// Leftover batch rows below this go through the row kernel: a zero-padded tile costs about as
/// much as 3–5 rows of the row kernel on the bench's layers (measured on AVX-512 and AVX2).
const MIN_TILE_ROWS: usize = 4;

/// Widest layer that also gets the window-group layout: all its outputs fit one 16-lane vector.
const GROUP_MAX_OUT: usize = 16;

/// Inputs per window of the window-group layout (two 16-lane vectors of `x`, the two sources of
/// one `vpermt2ps`): wider windows need fewer groups, as per-column counts even out.
const WINDOW: usize = 32;

/// Lanes of a group: one 16-lane vector.
const LANES: usize = 16;

/// Inputs per chunk of the row kernel: 4096 inputs (16 KiB of `x`) stay in L1 while every
/// column's gathers hit them; a 100 KiB row gathered at random would miss L1 on most loads.
const ROW_CHUNK: usize = 4096;

/// Which implementation of a kernel to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelPath {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 + FMA intrinsics.
    Avx2Fma,
    /// x86-64 AVX-512 F (window groups, 16-lane tiles) on top of AVX2 + FMA.
    Avx512,
}

impl KernelPath {
    /// Every path, slowest first.
    pub const ALL: [KernelPath; 3] = [
        KernelPath::Portable,
        KernelPath::Avx2Fma,
        KernelPath::Avx512,
    ];

    /// The fastest path this CPU supports, detected once.
    pub fn best() -> KernelPath {
        static BEST: OnceLock<KernelPath> = OnceLock::new();
        *BEST.get_or_init(|| {
            KernelPath::ALL
                .into_iter()
                .rev()
                .find(|p| p.is_supported())
                .unwrap_or(KernelPath::Portable)
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
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => {
                KernelPath::Avx2Fma.is_supported() && is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            KernelPath::Avx2Fma | KernelPath::Avx512 => false,
        }
    }

    /// Short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "portable",
            KernelPath::Avx2Fma => "avx2+fma",
            KernelPath::Avx512 => "avx512",
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
    /// `in.div_ceil(BLOCK_ROWS)`.
    blocks: usize,
    /// Entries of column `j` and input block `kb` are `ptr[j * blocks + kb] .. ptr[j * blocks +
    /// kb + 1]`, so column `j` as a whole is `ptr[j * blocks] .. ptr[(j + 1) * blocks]`.
    ptr: Vec<usize>,
    /// Absolute input (row) index of each entry; ascending within a column.
    rows: Vec<u32>,
    values: Vec<f32>,
    bias: Vec<f32>,
    /// The same non-zeros as window groups, for layers with 1 to `GROUP_MAX_OUT` outputs (boxed:
    /// most of a `SparseDense` is on the heap anyway, and wide layers do not need it).
    groups: Option<Box<WindowGroups>>,
}

/// The non-zeros of a narrow kernel (`out <= 16`) in windows of 32 inputs, for the window-group
/// kernel. Each vector lane accumulates a fixed output column. There are two lane maps, A and B:
/// the groups of a window alternate between them (even positions A, odd B), and the kernel keeps
/// one accumulator per map. A layer with fewer than 16 outputs spreads the 32 lanes of the two
/// maps round-robin over its columns, densest first (`out = 10`: three or four lanes per column
/// instead of one or two with a single map, so no column needs many more groups than the
/// others). Folding a second map costs a few permutes per batch row, so a layer whose two maps
/// would save fewer groups per row than that (a 3×3 convolution's few inputs) makes B a copy of
/// A. A *group* holds at most one non-zero per lane, all from one window: lane `l` adds
/// `w[l] · x[32 · window + idx[l]]` if bit `l` of `mask` is set. A window gets the fewest groups
/// whose lanes hold the non-zeros of each of its columns; the lanes of a column are summed at
/// the end.
///
/// The kernel loads a window of `x` once per batch row, then per group moves the 32 inputs into
/// lane order with one in-register permute (`vpermt2ps`, empty lanes zeroed by the mask) and
/// one FMA: no transposition of `x`, and the group's indices and weights are loaded once for
/// several batch rows.
#[derive(Debug, Clone, PartialEq)]
struct WindowGroups {
    /// Groups of window `w` are `ptr[w] .. ptr[w + 1]`; group `k` uses map `(k - ptr[w]) % 2`.
    ptr: Vec<usize>,
    /// Lane indices per group.
    idx: Vec<LaneIdx>,
    /// Occupied lanes per group.
    mask: Vec<u16>,
    /// Weights per group, 0 in empty lanes.
    w: Vec<Lanes>,
    /// Output column of each lane, per map.
    lane_col: [[u8; LANES]; 2],
    /// Per map, the lanes of each column as permutes: step `t` moves the `t`-th lane of column
    /// `j` (in lane order) to lane `j`, for the columns set in its mask; summing the steps in
    /// order folds a map's 16 lanes into the `out` outputs.
    fold_steps: [Vec<FoldStep>; 2],
}

/// One step of [`WindowGroups::fold_steps`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
struct FoldStep {
    idx: [u32; LANES],
    mask: u16,
}

/// One group's 16 weights, 64-byte aligned: a 16-lane load that straddles two cache lines costs
/// two loads.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
struct Lanes([f32; LANES]);

/// One group's 16 lane indices, 16-byte aligned for the same reason.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(16))]
struct LaneIdx([u8; LANES]);

impl WindowGroups {
    /// Groups the CSC entries of `m`, which must have 1 to `GROUP_MAX_OUT` outputs, with one or
    /// two distinct lane maps, whichever costs fewer vector operations per batch row: a group
    /// costs a permute and an FMA, a fold step a permute and an add.
    fn new(m: &SparseDense) -> WindowGroups {
        let two = WindowGroups::with_maps(m, true);
        let one = WindowGroups::with_maps(m, false);
        let steps = one.fold_steps[0].len();
        let (g2, g1) = (two.ptr[two.ptr.len() - 1], one.ptr[one.ptr.len() - 1]);
        // Two maps fold 2·steps times, one map adds its accumulators and folds `steps` times.
        if g2 + 2 * steps < g1 + steps + 1 {
            two
        } else {
            one
        }
    }

    /// The layout with a distinct map B (`two_maps`) or with B a copy of A.
    fn with_maps(m: &SparseDense, two_maps: bool) -> WindowGroups {
        let (inn, out) = (m.in_features, m.out_features);
        assert!(
            (1..=GROUP_MAX_OUT).contains(&out),
            "WindowGroups::new: out {out} not in 1..={GROUP_MAX_OUT}"
        );
        // Columns by non-zero count, densest first (ties by index); lane l of map s serves the
        // ((16 s + l) mod out)-th of them (the (l mod out)-th for a copied map).
        let mut order: Vec<usize> = (0..out).collect();
        order.sort_by_key(|&j| std::cmp::Reverse(m.column(j).len()));
        let lane_col: [[u8; LANES]; 2] = std::array::from_fn(|s| {
            let s = if two_maps { s } else { 0 };
            std::array::from_fn(|l| order[(LANES * s + l) % out] as u8)
        });
        // lanes[s][j]: the lanes of column j in map s, ascending.
        let lanes: [Vec<Vec<usize>>; 2] = std::array::from_fn(|s| {
            (0..out)
                .map(|j| {
                    (0..LANES)
                        .filter(|&l| usize::from(lane_col[s][l]) == j)
                        .collect()
                })
                .collect()
        });
        // With n groups a window has ⌈n/2⌉ A-groups and ⌊n/2⌋ B-groups.
        let capacity =
            |n: usize, j: usize| n.div_ceil(2) * lanes[0][j].len() + n / 2 * lanes[1][j].len();
        let windows = inn.div_ceil(WINDOW);
        let mut count = vec![0usize; windows * out];
        for j in 0..out {
            for e in m.column(j) {
                count[m.rows[e] as usize / WINDOW * out + j] += 1;
            }
        }
        let mut ptr = Vec::with_capacity(windows + 1);
        ptr.push(0);
        for c in count.chunks_exact(out) {
            // Every column has a lane in map A, so n = max count always suffices.
            let most = c.iter().copied().max().unwrap_or(0);
            let need = (0..=most)
                .find(|&n| c.iter().enumerate().all(|(j, &cj)| capacity(n, j) >= cj))
                .unwrap_or(most);
            ptr.push(ptr[ptr.len() - 1] + need);
        }
        let groups = ptr[windows];
        let mut idx = vec![LaneIdx([0; LANES]); groups];
        let mut mask = vec![0u16; groups];
        let mut w = vec![Lanes([0.0; LANES]); groups];
        count.fill(0);
        for j in 0..out {
            for e in m.column(j) {
                let (i, win) = (m.rows[e] as usize, m.rows[e] as usize / WINDOW);
                let c = &mut count[win * out + j];
                let n = ptr[win + 1] - ptr[win];
                // The column's slots: its lanes in the A-groups (positions 0, 2, ...), then in
                // the B-groups (1, 3, ...).
                let in_a = n.div_ceil(2) * lanes[0][j].len();
                let (pos, l) = if *c < in_a {
                    let la = &lanes[0][j];
                    (2 * (*c / la.len()), la[*c % la.len()])
                } else {
                    let lb = &lanes[1][j];
                    let cb = *c - in_a;
                    (2 * (cb / lb.len()) + 1, lb[cb % lb.len()])
                };
                *c += 1;
                let g = ptr[win] + pos;
                idx[g].0[l] = (i % WINDOW) as u8;
                mask[g] |= 1 << l;
                w[g].0[l] = m.values[e];
            }
        }
        let fold_steps = std::array::from_fn(|s| {
            (0..LANES.div_ceil(out))
                .map(|t| {
                    let mut step = FoldStep {
                        idx: [0; LANES],
                        mask: 0,
                    };
                    for (j, lj) in lanes[s].iter().enumerate() {
                        if let Some(&l) = lj.get(t) {
                            step.idx[j] = l as u32;
                            step.mask |= 1 << j;
                        }
                    }
                    step
                })
                .collect()
        });
        WindowGroups {
            ptr,
            idx,
            mask,
            w,
            lane_col,
            fold_steps,
        }
    }

    /// `y[j] = bias[j] + Σ acc[s][l]` over the lanes `l` of column `j` in map `s`, map A first,
    /// each in lane order.
    fn fold(&self, acc: &[[f32; LANES]; 2], bias: &[f32], y: &mut [f32]) {
        y.copy_from_slice(bias);
        for (a, cols) in acc.iter().zip(&self.lane_col) {
            for (&v, &j) in a.iter().zip(cols) {
                y[usize::from(j)] += v;
            }
        }
    }
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
        let mut ptr = Vec::with_capacity(out * blocks + 1);
        let mut rows = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        ptr.push(0);
        for j in 0..out {
            for kb in 0..blocks {
                for i in kb * BLOCK_ROWS..((kb + 1) * BLOCK_ROWS).min(inn) {
                    let v = kernel[[i, j]];
                    if v != 0.0 {
                        rows.push(i as u32);
                        values.push(v);
                    }
                }
                ptr.push(rows.len());
            }
        }
        let mut layer = SparseDense {
            in_features: inn,
            out_features: out,
            blocks,
            ptr,
            rows,
            values,
            bias: bias_vec(bias, out),
            groups: None,
        };
        if (1..=GROUP_MAX_OUT).contains(&out) {
            layer.groups = Some(Box::new(WindowGroups::new(&layer)));
        }
        Ok(layer)
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
        for j in 0..self.out_features {
            for e in self.column(j) {
                w[[self.rows[e] as usize, j]] = self.values[e];
            }
        }
        w
    }

    /// Entries of column `j`.
    fn column(&self, j: usize) -> std::ops::Range<usize> {
        self.ptr[j * self.blocks]..self.ptr[(j + 1) * self.blocks]
    }

    /// Entries of column `j` whose input lies in blocks `kb0 .. kb0 + n` (clipped at the end).
    fn column_blocks(&self, j: usize, kb0: usize, n: usize) -> std::ops::Range<usize> {
        let base = j * self.blocks;
        self.ptr[base + kb0]..self.ptr[base + (kb0 + n).min(self.blocks)]
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
        let (inn, out) = (self.in_features, self.out_features);
        if inn == 0 || out == 0 {
            // Nothing to multiply: every output is its bias.
            y.rows_mut()
                .into_iter()
                .for_each(|mut r| r.assign(&ArrayView1::from(&self.bias)));
            return Ok(y);
        }
        let ys = y
            .as_slice_mut()
            .expect("SparseDense::forward: zeros() is contiguous");
        match (path, &self.groups) {
            (KernelPath::Portable, Some(g)) => portable::group_rows(self, g, xs, ys),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `path.require()` checked that the CPU has AVX-512 F, AVX2 and FMA.
            (KernelPath::Avx512, Some(g)) => unsafe { avx512::group_rows(self, g, xs, ys) },
            _ => self.tiled(path, xs, ys),
        }
        Ok(y)
    }

    /// The row kernel on every row of `x` (rows of `in`) into `y` (rows of `out`); `in` and
    /// `out` are not 0.
    fn rows(&self, path: KernelPath, x: &[f32], y: &mut [f32]) {
        let (inn, out) = (self.in_features, self.out_features);
        for (xr, yr) in x.chunks_exact(inn).zip(y.chunks_exact_mut(out)) {
            match path {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `forward_with` checked with `path.require()` that the CPU has AVX2 and
                // FMA (the AVX-512 path requires them too).
                KernelPath::Avx2Fma | KernelPath::Avx512 => unsafe {
                    x86::sparse_row(self, xr, yr)
                },
                _ => portable::sparse_row(self, xr, yr),
            }
        }
    }

    /// Passes of 4, 2 and 1 tiles, then a zero-padded tile or the row kernel for the rest; `in`
    /// and `out` are not 0.
    fn tiled(&self, path: KernelPath, xs: &[f32], ys: &mut [f32]) {
        let (inn, out) = (self.in_features, self.out_features);
        let batch = xs.len() / inn;
        let mut scratch = TileScratch::default();
        let mut b0 = 0;
        while b0 < batch {
            let left = batch - b0;
            if let Some(t) = [4, 2, 1].into_iter().find(|&t| left >= t * TILE) {
                let n = t * TILE;
                let (xt, yt) = (
                    &xs[b0 * inn..(b0 + n) * inn],
                    &mut ys[b0 * out..(b0 + n) * out],
                );
                self.tiles(t, path, xt, yt, &mut scratch);
                b0 += n;
            } else if left >= MIN_TILE_ROWS {
                // One tile through zero-padded copies, so the kernels only see full tiles.
                let mut xp = vec![0.0f32; TILE * inn];
                xp[..left * inn].copy_from_slice(&xs[b0 * inn..]);
                let mut yp = vec![0.0f32; TILE * out];
                self.tiles(1, path, &xp, &mut yp, &mut scratch);
                ys[b0 * out..].copy_from_slice(&yp[..left * out]);
                b0 = batch;
            } else {
                self.rows(path, &xs[b0 * inn..], &mut ys[b0 * out..]);
                b0 = batch;
            }
        }
    }

    /// One pass of `tiles` full tiles: `x` holds `16 · tiles` rows of `in`, `y` as many of `out`.
    fn tiles(&self, tiles: usize, path: KernelPath, x: &[f32], y: &mut [f32], s: &mut TileScratch) {
        let (xt, acc) = s.buffers(self.out_features * tiles * TILE);
        macro_rules! run {
            ($t:literal) => {
                match path {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `forward_with` checked with `path.require()` that the CPU has
                    // AVX-512 F, AVX2 and FMA.
                    KernelPath::Avx512 => unsafe {
                        avx512::sparse_tiles::<$t>(self, x, y, xt, acc)
                    },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above, AVX2 and FMA.
                    KernelPath::Avx2Fma => unsafe { x86::sparse_tiles::<$t>(self, x, y, xt, acc) },
                    _ => portable::sparse_tiles::<$t>(self, x, y, xt, acc),
                }
            };
        }
        match tiles {
            4 => run!(4),
            2 => run!(2),
            1 => run!(1),
            _ => unreachable!("SparseDense::tiles: passes have 1, 2 or 4 tiles, not {tiles}"),
        }
    }
}

/// Buffers of the tile kernel, reused across passes. Both are handed out 64-byte aligned: a
/// 16-lane load that straddles two cache lines costs two loads.
#[derive(Default)]
struct TileScratch {
    /// Transposed input block, `[SUPER_ROWS / t][16 · t]`.
    xt: Vec<f32>,
    /// Accumulators, `[out][16 · t]`.
    acc: Vec<f32>,
}

impl TileScratch {
    const ALIGN_PAD: usize = 64 / size_of::<f32>();

    /// The transposed block (`SUPER_ROWS · TILE` values) and `acc_len` accumulators. Every value
    /// a kernel reads is written by it first, so the buffers are not cleared between passes.
    fn buffers(&mut self, acc_len: usize) -> (&mut [f32], &mut [f32]) {
        fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
            if v.len() < len + TileScratch::ALIGN_PAD {
                v.resize(len + TileScratch::ALIGN_PAD, 0.0);
            }
            let off = v.as_ptr().align_offset(64).min(TileScratch::ALIGN_PAD);
            &mut v[off..off + len]
        }
        (
            aligned(&mut self.xt, SUPER_ROWS * TILE),
            aligned(&mut self.acc, acc_len),
        )
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
            // SAFETY: `path.require()` checked that the CPU has AVX2 and FMA (the AVX-512 path
            // requires them too; the baseline has no AVX-512 kernel of its own).
            KernelPath::Avx2Fma | KernelPath::Avx512 => unsafe { x86::dense(self, xs, batch, ys) },
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
