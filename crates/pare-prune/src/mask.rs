//! Pruning masks: which weights to keep.
//!
//! A mask is an `ArrayD<f32>` of the weight's shape holding 1.0 (keep) or 0.0 (prune), ready for
//! an element-wise multiply. Every mask here keeps an exact number of weights and breaks ties the
//! same way, so the same weights always give the same mask:
//!
//! * the number kept is TFMOT's `k = max(round(n * (1 - sparsity)), 1)`, computed in `f32` with
//!   round-half-to-even as `tf.math.round` does ([`kept_count`]);
//! * scores are ranked largest first; equal scores go to the lower flat (row-major) index.
//!   TFMOT instead keeps every weight `>= ` the k-th largest, so ties at the threshold can keep more
//!   than `k`; here exactly `k` survive.
//!
//! Kinds ([`MaskKind`]): per-tensor magnitude ([`magnitude_mask`]), one threshold across several
//! tensors ([`global_magnitude_masks`]), blocks of a rank-2 kernel ranked by pooled magnitude
//! ([`block_mask`]), N:M along the reduction axis ([`nm_mask`]) and whole output channels ranked
//! by norm ([`channel_mask`]). [`compute_masks`] runs any of them over a list of named tensors.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, Zip};

use crate::error::{PruneError, Result};
use crate::schedule::validate_sparsity;

/// How block magnitudes are pooled (TFMOT's `block_pooling_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Mean of `|w|` over the block's elements (TFMOT's default `AVG`).
    #[default]
    Avg,
    /// Largest `|w|` in the block.
    Max,
}

/// Norm that ranks channels in structured pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Norm {
    /// Sum of absolute values (Li et al. 2017, "Pruning Filters for Efficient ConvNets").
    #[default]
    L1,
    /// Euclidean norm.
    L2,
}

/// Which mask to compute; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MaskKind {
    /// Each tensor on its own: keep its `k` largest `|w|` ([`magnitude_mask`]).
    #[default]
    Magnitude,
    /// All tensors together: keep the `k` largest `|w|` of their union
    /// ([`global_magnitude_masks`]).
    GlobalMagnitude,
    /// Rank-2 kernels in blocks of `shape` (rows of the input axis, columns of the output axis),
    /// ranked by pooled `|w|` ([`block_mask`]).
    Block {
        /// Block rows and columns, both `>= 1`.
        shape: [usize; 2],
        /// How `|w|` is pooled over a block.
        pooling: Pooling,
    },
    /// Keep `n` of every `m` consecutive weights along the reduction axis ([`nm_mask`]). The
    /// sparsity argument is not used: the pattern fixes it at `1 - n / m`, and a schedule only
    /// says when to recompute (as in TFMOT's `sparsity_m_by_n`).
    Nm {
        /// Kept per group.
        n: usize,
        /// Group length.
        m: usize,
    },
    /// Whole output channels (last axis), ranked by `norm` ([`channel_mask`]).
    Channel {
        /// Ranking norm.
        norm: Norm,
    },
}

/// A structured mask and the output channels it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMask {
    /// 1.0 over the kept channels, 0.0 elsewhere; the weight's shape.
    pub mask: ArrayD<f32>,
    /// Kept channel indices along the last axis, ascending.
    pub kept: Vec<usize>,
}

/// How many of `n` elements (or blocks, or channels) a mask at `sparsity` keeps:
/// `min(n, max(round(n * (1 - sparsity)), 1))`, in `f32` with round-half-to-even, as TFMOT
/// computes it. Never 0 unless `n` is.
///
/// # Errors
/// [`PruneError::InvalidSparsity`] unless `0 <= sparsity < 1`.
pub fn kept_count(n: usize, sparsity: f32) -> Result<usize> {
    validate_sparsity("sparsity", sparsity)?;
    let k = (n as f32 * (1.0 - sparsity)).round_ties_even().max(1.0);
    // `k <= n` up to f32 rounding of huge `n`; the cast saturates.
    Ok((k as usize).min(n))
}

/// The `k` largest scores, ties to the lower index; returned sorted by index. Average O(n).
fn top_k<K: Ord + Copy>(mut keyed: Vec<(K, usize)>, k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    if k < keyed.len() {
        keyed.select_nth_unstable_by(k - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        keyed.truncate(k);
    }
    let mut idx: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
    idx.sort_unstable();
    idx
}

/// Rank key of a finite, non-negative `f32`: its bit pattern orders like its value.
fn key32(v: f32) -> u32 {
    v.abs().to_bits()
}

/// Rank key of a finite, non-negative `f64`.
fn key64(v: f64) -> u64 {
    v.abs().to_bits()
}

fn check_finite(w: &ArrayViewD<'_, f32>) -> Result<()> {
    match w.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => {
            let value = w.iter().nth(index).copied().unwrap_or(f32::NAN);
            Err(PruneError::NonFinite { index, value })
        }
    }
}

/// A 0/1 mask of `shape` (standard layout) with ones at the given flat indices.
fn mask_from_indices(shape: &[usize], kept: &[usize]) -> ArrayD<f32> {
    let mut mask = ArrayD::<f32>::zeros(shape);
    let flat = mask
        .as_slice_mut()
        .expect("mask: zeros() is in standard layout");
    for &i in kept {
        flat[i] = 1.0;
    }
    mask
}

/// Keeps the [`kept_count`]`(n, sparsity)` largest `|w|` of one tensor, ties to the lower
/// flat index.
///
/// # Errors
/// [`PruneError::InvalidSparsity`]; [`PruneError::NonFinite`] if a weight is NaN or infinite.
pub fn magnitude_mask(w: ArrayViewD<'_, f32>, sparsity: f32) -> Result<ArrayD<f32>> {
    let k = kept_count(w.len(), sparsity)?;
    check_finite(&w)?;
    let keyed: Vec<(u32, usize)> = w.iter().enumerate().map(|(i, &v)| (key32(v), i)).collect();
    Ok(mask_from_indices(w.shape(), &top_k(keyed, k)))
}

/// One magnitude threshold across several tensors: keeps the [`kept_count`]`(total, sparsity)`
/// largest `|w|` of all elements together, so layers end up with different sparsities. Ties go to
/// the earlier tensor in `params`, then the lower flat index.
///
/// Returns one mask per tensor, in the order given.
///
/// # Errors
/// [`PruneError::InvalidSparsity`]; [`PruneError::DuplicateName`]; [`PruneError::InTensor`]
/// wrapping [`PruneError::NonFinite`].
pub fn global_magnitude_masks<S: AsRef<str>>(
    params: &[(S, ArrayViewD<'_, f32>)],
    sparsity: f32,
) -> Result<Vec<(String, ArrayD<f32>)>> {
    check_names(params)?;
    for (name, w) in params {
        check_finite(w).map_err(|e| e.in_tensor(name.as_ref()))?;
    }
    let total: usize = params.iter().map(|(_, w)| w.len()).sum();
    let k = kept_count(total, sparsity)?;
    let mut keyed = Vec::with_capacity(total);
    for (_, w) in params {
        let base = keyed.len();
        keyed.extend(w.iter().enumerate().map(|(i, &v)| (key32(v), base + i)));
    }
    let kept = top_k(keyed, k);
    let mut out = Vec::with_capacity(params.len());
    let (mut base, mut cursor) = (0usize, 0usize);
    for (name, w) in params {
        let end = base + w.len();
        let start = cursor;
        while cursor < kept.len() && kept[cursor] < end {
            cursor += 1;
        }
        let local: Vec<usize> = kept[start..cursor].iter().map(|&g| g - base).collect();
        out.push((
            name.as_ref().to_owned(),
            mask_from_indices(w.shape(), &local),
        ));
        base = end;
    }
    Ok(out)
}

/// Block sparsity for a rank-2 kernel `[in, out]`: the kernel is tiled from its top-left corner
/// into blocks of `block = [rows, cols]` (edge blocks may be smaller), each block is scored by
/// pooling `|w|` over the elements it actually has, and the [`kept_count`]`(blocks, sparsity)`
/// best blocks are kept whole (ties to the lower block index, row-major over blocks).
///
/// As in TFMOT the sparsity counts blocks, not weights, so with partial edge blocks the weight
/// sparsity can differ slightly. (TFMOT pools with `SAME` padding, which centres the padding
/// and shifts the windows; blocks here always start at the origin.)
///
/// # Errors
/// [`PruneError::InvalidSparsity`]; [`PruneError::InvalidBlockShape`] if a block dimension is 0;
/// [`PruneError::BadRank`] unless `w` is rank 2; [`PruneError::NonFinite`].
pub fn block_mask(
    w: ArrayViewD<'_, f32>,
    sparsity: f32,
    block: [usize; 2],
    pooling: Pooling,
) -> Result<ArrayD<f32>> {
    validate_sparsity("sparsity", sparsity)?;
    if block[0] == 0 || block[1] == 0 {
        return Err(PruneError::InvalidBlockShape { block });
    }
    let w2 = w
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| PruneError::BadRank {
            op: "block_mask",
            expected: "a rank-2 kernel [in, out]",
            shape: w.shape().to_vec(),
        })?;
    check_finite(&w)?;
    let (rows, cols) = w2.dim();
    let (br, bc) = (rows.div_ceil(block[0]), cols.div_ceil(block[1]));
    let mut keyed = Vec::with_capacity(br * bc);
    for bi in 0..br {
        for bj in 0..bc {
            let r0 = bi * block[0];
            let c0 = bj * block[1];
            let tile = w2.slice(ndarray::s![
                r0..(r0 + block[0]).min(rows),
                c0..(c0 + block[1]).min(cols)
            ]);
            let score = match pooling {
                Pooling::Avg => {
                    tile.iter().map(|v| f64::from(v.abs())).sum::<f64>() / tile.len() as f64
                }
                Pooling::Max => tile.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs()))),
            };
            keyed.push((key64(score), bi * bc + bj));
        }
    }
    let k = kept_count(br * bc, sparsity)?;
    let kept_blocks = top_k(keyed, k);
    let mut mask = ArrayD::<f32>::zeros(w.shape());
    {
        let mut m2 = mask
            .view_mut()
            .into_dimensionality::<ndarray::Ix2>()
            .expect("block_mask: mask has the kernel's rank-2 shape");
        for b in kept_blocks {
            let (r0, c0) = ((b / bc) * block[0], (b % bc) * block[1]);
            m2.slice_mut(ndarray::s![
                r0..(r0 + block[0]).min(rows),
                c0..(c0 + block[1]).min(cols)
            ])
            .fill(1.0);
        }
    }
    Ok(mask)
}

/// N:M sparsity (e.g. 2:4) along the reduction axis: for a kernel whose last axis is the output
/// channel (`[in, out]` or `[kh, kw, in, out]`), the reduction index is the row-major flat index
/// over all other axes (`(kh, kw, in)`, the order im2col + GEMM consumes them). For every output
/// channel, each run of `m` consecutive reduction indices keeps its `n` largest `|w|` (ties to the
/// lower index).
///
/// When `m` divides the input-channel count this is exactly TFMOT's `sparsity_m_by_n` layout
/// (groups of input channels at each `(kh, kw, out)`); TFMOT writes it `(m - n, m)`, zeros first.
///
/// # Errors
/// [`PruneError::InvalidNm`] unless `1 <= n <= m`; [`PruneError::BadRank`] unless rank `>= 2`;
/// [`PruneError::NmIndivisible`] unless `m` divides the reduction length;
/// [`PruneError::NonFinite`].
pub fn nm_mask(w: ArrayViewD<'_, f32>, n: usize, m: usize) -> Result<ArrayD<f32>> {
    if n == 0 || n > m {
        return Err(PruneError::InvalidNm { n, m });
    }
    if w.ndim() < 2 {
        return Err(PruneError::BadRank {
            op: "nm_mask",
            expected: "rank >= 2 with the output channel last",
            shape: w.shape().to_vec(),
        });
    }
    let out = w.shape()[w.ndim() - 1];
    let reduction_len = w.shape()[..w.ndim() - 1].iter().product::<usize>();
    if reduction_len % m != 0 {
        return Err(PruneError::NmIndivisible {
            m,
            reduction_len,
            shape: w.shape().to_vec(),
        });
    }
    check_finite(&w)?;
    let flat = w.as_standard_layout();
    let flat = flat
        .as_slice()
        .expect("nm_mask: standard layout is contiguous");
    let mut mask = ArrayD::<f32>::zeros(w.shape());
    let mslice = mask
        .as_slice_mut()
        .expect("nm_mask: zeros() is in standard layout");
    let mut group: Vec<(u32, usize)> = Vec::with_capacity(m);
    for o in 0..out {
        for g in 0..reduction_len / m {
            group.clear();
            group.extend((g * m..(g + 1) * m).map(|r| (key32(flat[r * out + o]), r)));
            group.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, r) in &group[..n] {
                mslice[r * out + o] = 1.0;
            }
        }
    }
    Ok(mask)
}

/// Structured pruning: ranks whole output channels (conv filters `[.., out]`, dense units
/// `[in, out]`: the last axis) by the `norm` of their weights and keeps the
/// [`kept_count`]`(channels, sparsity)` best (ties to the lower channel). Returns the mask and
/// the kept channel indices, which is what removing the channels from a model needs.
///
/// # Errors
/// [`PruneError::InvalidSparsity`]; [`PruneError::BadRank`] for a rank-0 tensor;
/// [`PruneError::NonFinite`].
pub fn channel_mask(w: ArrayViewD<'_, f32>, sparsity: f32, norm: Norm) -> Result<ChannelMask> {
    validate_sparsity("sparsity", sparsity)?;
    if w.ndim() == 0 {
        return Err(PruneError::BadRank {
            op: "channel_mask",
            expected: "rank >= 1 with the output channel last",
            shape: Vec::new(),
        });
    }
    check_finite(&w)?;
    let last = Axis(w.ndim() - 1);
    let channels = w.len_of(last);
    let keyed: Vec<(u64, usize)> = (0..channels)
        .map(|c| {
            let ch = w.index_axis(last, c);
            // L2 ranks by the sum of squares: same order as its square root, one less rounding.
            let score = match norm {
                Norm::L1 => ch.iter().map(|v| f64::from(v.abs())).sum::<f64>(),
                Norm::L2 => ch.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>(),
            };
            (key64(score), c)
        })
        .collect();
    let kept = top_k(keyed, kept_count(channels, sparsity)?);
    let mut mask = ArrayD::<f32>::zeros(w.shape());
    for &c in &kept {
        mask.index_axis_mut(last, c).fill(1.0);
    }
    Ok(ChannelMask { mask, kept })
}

fn check_names<S: AsRef<str>>(params: &[(S, ArrayViewD<'_, f32>)]) -> Result<()> {
    let mut names: Vec<&str> = params.iter().map(|(n, _)| n.as_ref()).collect();
    names.sort_unstable();
    match names.windows(2).find(|p| p[0] == p[1]) {
        Some(p) => Err(PruneError::DuplicateName {
            name: p[0].to_owned(),
        }),
        None => Ok(()),
    }
}

/// Computes a mask for every named tensor at `sparsity`, with the method `kind`. This is the
/// entry point a training callback uses after each scheduled step: pass the prunable parameters
/// (`("dense1.kernel", view)`, …) and the schedule's sparsity.
///
/// Returns `(name, mask)` pairs in the order given.
///
/// # Errors
/// [`PruneError::InvalidSparsity`]; [`PruneError::DuplicateName`]; otherwise the error of the
/// kind's function wrapped in [`PruneError::InTensor`] with the tensor's name.
pub fn compute_masks<S: AsRef<str>>(
    params: &[(S, ArrayViewD<'_, f32>)],
    sparsity: f32,
    kind: MaskKind,
) -> Result<Vec<(String, ArrayD<f32>)>> {
    validate_sparsity("sparsity", sparsity)?;
    if kind == MaskKind::GlobalMagnitude {
        return global_magnitude_masks(params, sparsity);
    }
    check_names(params)?;
    params
        .iter()
        .map(|(name, w)| {
            let name = name.as_ref();
            let w = w.view();
            let mask = match kind {
                MaskKind::Magnitude | MaskKind::GlobalMagnitude => magnitude_mask(w, sparsity),
                MaskKind::Block { shape, pooling } => block_mask(w, sparsity, shape, pooling),
                MaskKind::Nm { n, m } => nm_mask(w, n, m),
                MaskKind::Channel { norm } => channel_mask(w, sparsity, norm).map(|c| c.mask),
            };
            mask.map(|m| (name.to_owned(), m))
                .map_err(|e| e.in_tensor(name))
        })
        .collect()
}

/// Zeroes the weights where `mask` is 0. Pruned weights become `+0.0` (not `w * 0`, which would
/// leave `-0.0` for negative weights and NaN for non-finite ones), so they encode as zeros in
/// [`crate::sparse`].
///
/// # Errors
/// [`PruneError::ShapeMismatch`] if the shapes differ.
pub fn apply_mask(mut weights: ArrayViewMutD<'_, f32>, mask: ArrayViewD<'_, f32>) -> Result<()> {
    if weights.shape() != mask.shape() {
        return Err(PruneError::ShapeMismatch {
            op: "apply_mask",
            expected: weights.shape().to_vec(),
            found: mask.shape().to_vec(),
        });
    }
    Zip::from(&mut weights).and(&mask).for_each(|w, &m| {
        if m == 0.0 {
            *w = 0.0;
        }
    });
    Ok(())
}

/// Fraction of elements equal to zero (either sign); 0 for an empty tensor.
pub fn sparsity_of(w: ArrayViewD<'_, f32>) -> f32 {
    if w.is_empty() {
        return 0.0;
    }
    (w.iter().filter(|&&v| v == 0.0).count() as f64 / w.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{ArrayD, IxDyn};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn arr(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    /// Random weights with many exact ties (small integers, both signs, some zeros).
    fn tied(shape: &[usize], seed: u64) -> ArrayD<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        arr(
            shape,
            (0..n)
                .map(|_| rng.random_range(-6i32..=6) as f32 * 0.25)
                .collect(),
        )
    }

    fn kept_flat(mask: &ArrayD<f32>) -> Vec<usize> {
        mask.iter()
            .enumerate()
            .filter(|(_, v)| **v == 1.0)
            .map(|(i, _)| i)
            .collect()
    }

    /// Reference selection: a full stable sort by (|w| descending, index ascending).
    fn reference_top_k(values: &[f32], k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..values.len()).collect();
        idx.sort_by(|&a, &b| {
            values[b]
                .abs()
                .partial_cmp(&values[a].abs())
                .unwrap()
                .then(a.cmp(&b))
        });
        let mut top = idx[..k].to_vec();
        top.sort_unstable();
        top
    }

    #[test]
    fn kept_count_follows_tfmot_rounding() {
        assert_eq!(kept_count(10, 0.5).unwrap(), 5);
        assert_eq!(kept_count(5, 0.5).unwrap(), 2); // 2.5 rounds to even
        assert_eq!(kept_count(7, 0.5).unwrap(), 4); // 3.5 rounds to even
        assert_eq!(kept_count(3, 0.9).unwrap(), 1); // round(0.3) = 0, floor at 1
        assert_eq!(kept_count(1000, 0.8).unwrap(), 200);
        assert_eq!(kept_count(1000, 0.0).unwrap(), 1000);
        assert_eq!(kept_count(0, 0.5).unwrap(), 0);
        assert!(matches!(
            kept_count(10, 1.0),
            Err(PruneError::InvalidSparsity { .. })
        ));
        assert!(matches!(
            kept_count(10, -0.1),
            Err(PruneError::InvalidSparsity { .. })
        ));
        assert!(matches!(
            kept_count(10, f32::NAN),
            Err(PruneError::InvalidSparsity { .. })
        ));
    }

    #[test]
    fn magnitude_matches_sort_reference_with_ties() {
        for (shape, seed) in [
            (vec![1], 1),
            (vec![7], 2),
            (vec![63], 3),
            (vec![5, 13], 4),
            (vec![3, 3, 4, 5], 5),
        ] {
            let w = tied(&shape, seed);
            let vals: Vec<f32> = w.iter().copied().collect();
            for s in [0.0, 0.1, 0.5, 0.8, 0.95, 0.999] {
                let mask = magnitude_mask(w.view(), s).unwrap();
                assert_eq!(mask.shape(), w.shape());
                let k = kept_count(w.len(), s).unwrap();
                assert_eq!(
                    kept_flat(&mask),
                    reference_top_k(&vals, k),
                    "shape {shape:?} s {s}"
                );
                assert!(mask.iter().all(|&v| v == 0.0 || v == 1.0));
                // Deterministic: same input, same mask.
                assert_eq!(mask, magnitude_mask(w.view(), s).unwrap());
            }
        }
    }

    #[test]
    fn magnitude_ties_keep_lower_index_and_works_on_views() {
        let w = arr(&[4], vec![1.0, 1.0, 1.0, 1.0]);
        assert_eq!(
            kept_flat(&magnitude_mask(w.view(), 0.5).unwrap()),
            vec![0, 1]
        );
        let w = arr(&[4], vec![-2.0, 2.0, 1.0, -2.0]);
        assert_eq!(
            kept_flat(&magnitude_mask(w.view(), 0.5).unwrap()),
            vec![0, 1]
        );
        // A transposed view: flat indices are logical row-major ones.
        let w = arr(&[2, 3], vec![0.1, 0.5, 0.3, 0.4, 0.2, 0.6]);
        let t = w.t();
        let mask = magnitude_mask(t.into_dyn(), 0.5).unwrap();
        assert_eq!(mask, arr(&[3, 2], vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0]));
        let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 3]));
        assert_eq!(magnitude_mask(empty.view(), 0.5).unwrap().shape(), &[0, 3]);
    }

    #[test]
    fn non_finite_weights_are_errors() {
        let w = arr(&[5], vec![1.0, 2.0, f32::NAN, 3.0, f32::INFINITY]);
        match magnitude_mask(w.view(), 0.5) {
            Err(PruneError::NonFinite { index: 2, value }) => assert!(value.is_nan()),
            other => panic!("{other:?}"),
        }
        let w2 = arr(&[1, 2], vec![1.0, f32::NEG_INFINITY]);
        assert!(matches!(
            block_mask(w2.view(), 0.5, [1, 1], Pooling::Avg),
            Err(PruneError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            nm_mask(w2.view(), 1, 1),
            Err(PruneError::NonFinite { .. })
        ));
        assert!(matches!(
            channel_mask(w2.view(), 0.5, Norm::L1),
            Err(PruneError::NonFinite { .. })
        ));
    }

    #[test]
    fn global_uses_one_threshold() {
        let a = tied(&[4, 6], 10).mapv(|v| v * 4.0); // larger weights
        let b = tied(&[3, 3, 2], 11);
        let params = [("a", a.view()), ("b", b.view())];
        let masks = global_magnitude_masks(&params, 0.6).unwrap();
        assert_eq!(masks[0].0, "a");
        assert_eq!(masks[1].0, "b");
        let all: Vec<f32> = a.iter().chain(b.iter()).copied().collect();
        let k = kept_count(all.len(), 0.6).unwrap();
        let flat_mask: Vec<f32> = masks[0]
            .1
            .iter()
            .chain(masks[1].1.iter())
            .copied()
            .collect();
        let kept: Vec<usize> = (0..all.len()).filter(|&i| flat_mask[i] == 1.0).collect();
        assert_eq!(kept, reference_top_k(&all, k));
        // Layers end with different sparsities.
        assert!(sparsity_of(masks[0].1.view()) < sparsity_of(masks[1].1.view()));
        // Ties across tensors go to the earlier one.
        let x = arr(&[2], vec![1.0, 1.0]);
        let y = arr(&[2], vec![1.0, 1.0]);
        let m = global_magnitude_masks(&[("y", y.view()), ("x", x.view())], 0.5).unwrap();
        assert_eq!(
            (kept_flat(&m[0].1), kept_flat(&m[1].1)),
            (vec![0, 1], vec![])
        );
        assert!(matches!(
            global_magnitude_masks(&[("x", x.view()), ("x", y.view())], 0.5),
            Err(PruneError::DuplicateName { .. })
        ));
        let bad = arr(&[1], vec![f32::NAN]);
        match global_magnitude_masks(&[("x", x.view()), ("bad", bad.view())], 0.5) {
            Err(PruneError::InTensor { name, source }) => {
                assert_eq!(name, "bad");
                assert!(matches!(*source, PruneError::NonFinite { index: 0, .. }));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn block_mask_keeps_whole_blocks() {
        let w = tied(&[8, 12], 20);
        for (block, pooling) in [
            ([1, 4], Pooling::Avg),
            ([4, 4], Pooling::Max),
            ([2, 3], Pooling::Avg),
        ] {
            let mask = block_mask(w.view(), 0.5, block, pooling).unwrap();
            let nblocks = (8 / block[0]) * (12 / block[1]);
            let kept_blocks = kept_count(nblocks, 0.5).unwrap();
            assert_abs_diff_eq!(mask.sum(), (kept_blocks * block[0] * block[1]) as f32);
            // Uniform inside every block.
            for bi in 0..8 / block[0] {
                for bj in 0..12 / block[1] {
                    let first = mask[[bi * block[0], bj * block[1]]];
                    for r in 0..block[0] {
                        for c in 0..block[1] {
                            assert_eq!(mask[[bi * block[0] + r, bj * block[1] + c]], first);
                        }
                    }
                }
            }
        }
        // [1, 1] blocks are plain magnitude pruning.
        assert_eq!(
            block_mask(w.view(), 0.7, [1, 1], Pooling::Avg).unwrap(),
            magnitude_mask(w.view(), 0.7).unwrap()
        );
    }

    #[test]
    fn block_mask_pooling_and_partial_edges() {
        // 1x2 blocks. Block 0 = [3, 0] (avg 1.5, max 3); block 1 = [2, 2] (avg 2, max 2).
        let w = arr(&[1, 4], vec![3.0, 0.0, 2.0, 2.0]);
        let avg = block_mask(w.view(), 0.5, [1, 2], Pooling::Avg).unwrap();
        let max = block_mask(w.view(), 0.5, [1, 2], Pooling::Max).unwrap();
        assert_eq!(avg, arr(&[1, 4], vec![0.0, 0.0, 1.0, 1.0]));
        assert_eq!(max, arr(&[1, 4], vec![1.0, 1.0, 0.0, 0.0]));
        // Partial edge block [3, 5] with 2x2 blocks: the last column block is 1 wide and the
        // last row block 1 tall. The corner block holds only w[2][4] = 1.5; averaged over its one
        // element it beats every full block of ones (avg 1.0), padded with zeros it would not.
        let mut w = ArrayD::<f32>::ones(IxDyn(&[3, 5]));
        w[[2, 4]] = 1.5;
        let m = block_mask(w.view(), 0.9, [2, 2], Pooling::Avg).unwrap();
        let mut want = ArrayD::<f32>::zeros(IxDyn(&[3, 5]));
        want[[2, 4]] = 1.0;
        assert_eq!(m, want);
        // A block larger than the kernel is one block.
        let one = block_mask(w.view(), 0.5, [8, 8], Pooling::Max).unwrap();
        assert_eq!(one, ArrayD::<f32>::ones(IxDyn(&[3, 5])));
    }

    #[test]
    fn block_mask_errors() {
        let w = tied(&[4, 4], 1);
        assert!(matches!(
            block_mask(w.view(), 0.5, [0, 4], Pooling::Avg),
            Err(PruneError::InvalidBlockShape { .. })
        ));
        assert!(matches!(
            block_mask(w.view(), 1.5, [1, 4], Pooling::Avg),
            Err(PruneError::InvalidSparsity { .. })
        ));
        let w3 = tied(&[2, 2, 4], 1);
        assert!(matches!(
            block_mask(w3.view(), 0.5, [1, 4], Pooling::Avg),
            Err(PruneError::BadRank { .. })
        ));
    }

    /// Reference N:M: for each output and group, sort the group fully.
    fn reference_nm(w: &ArrayD<f32>, n: usize, m: usize) -> ArrayD<f32> {
        let out = *w.shape().last().unwrap();
        let flat: Vec<f32> = w.iter().copied().collect();
        let k_len = flat.len() / out;
        let mut mask = vec![0.0f32; flat.len()];
        for o in 0..out {
            for g in 0..k_len / m {
                let vals: Vec<f32> = (0..m).map(|t| flat[(g * m + t) * out + o]).collect();
                for t in reference_top_k(&vals, n) {
                    mask[(g * m + t) * out + o] = 1.0;
                }
            }
        }
        arr(w.shape(), mask)
    }

    #[test]
    fn nm_mask_patterns() {
        for (shape, n, m, seed) in [
            (vec![8, 3], 2, 4, 1),
            (vec![3, 3, 4, 2], 2, 4, 2),
            (vec![2, 2, 1, 5], 2, 4, 3), // groups straddle spatial positions
            (vec![16, 7], 1, 8, 4),
            (vec![12, 1], 3, 3, 5),
        ] {
            let w = tied(&shape, seed);
            let mask = nm_mask(w.view(), n, m).unwrap();
            assert_eq!(mask, reference_nm(&w, n, m), "{shape:?}");
            let len = w.len();
            assert_abs_diff_eq!(mask.sum(), (len / m * n) as f32);
        }
        // Dense [in=4, out=2] by hand: column 0 = [1, -4, 3, 2] keeps -4, 3.
        let w = arr(&[4, 2], vec![1.0, 9.0, -4.0, 9.0, 3.0, 9.0, 2.0, 9.0]);
        let mask = nm_mask(w.view(), 2, 4).unwrap();
        assert_eq!(
            mask,
            arr(&[4, 2], vec![0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
        );
    }

    #[test]
    fn nm_mask_errors() {
        let w = tied(&[6, 2], 1);
        assert!(matches!(
            nm_mask(w.view(), 2, 4),
            Err(PruneError::NmIndivisible {
                m: 4,
                reduction_len: 6,
                ..
            })
        ));
        assert!(matches!(
            nm_mask(w.view(), 3, 2),
            Err(PruneError::InvalidNm { .. })
        ));
        assert!(matches!(
            nm_mask(w.view(), 0, 2),
            Err(PruneError::InvalidNm { .. })
        ));
        let v = tied(&[8], 1);
        assert!(matches!(
            nm_mask(v.view(), 2, 4),
            Err(PruneError::BadRank { .. })
        ));
    }

    #[test]
    fn channel_mask_l1_l2_and_ties() {
        // [in=2, out=3]: channel 0 = [3, 0] (L1 3, L2² 9), 1 = [2, 2] (L1 4, L2² 8), 2 = [1, 1].
        let w = arr(&[2, 3], vec![3.0, 2.0, 1.0, 0.0, 2.0, 1.0]);
        let l1 = channel_mask(w.view(), 0.5, Norm::L1).unwrap();
        let l2 = channel_mask(w.view(), 0.5, Norm::L2).unwrap();
        // kept_count(3, 0.5) = round(1.5) = 2.
        assert_eq!(l1.kept, vec![0, 1]);
        assert_eq!(l2.kept, vec![0, 1]);
        let l1 = channel_mask(w.view(), 0.7, Norm::L1).unwrap();
        let l2 = channel_mask(w.view(), 0.7, Norm::L2).unwrap();
        assert_eq!((l1.kept, l2.kept), (vec![1], vec![0]));
        assert_eq!(l1.mask, arr(&[2, 3], vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0]));
        // Ties: equal channels keep the lower index.
        let t = ArrayD::<f32>::ones(IxDyn(&[3, 3, 2, 4]));
        let c = channel_mask(t.view(), 0.5, Norm::L2).unwrap();
        assert_eq!(c.kept, vec![0, 1]);
        for o in 0..4 {
            let want = if o < 2 { 1.0 } else { 0.0 };
            assert!(c.mask.index_axis(Axis(3), o).iter().all(|&v| v == want));
        }
        // Conv kernel: exact channel count and whole-filter zeros.
        let w = tied(&[3, 3, 2, 10], 7);
        let c = channel_mask(w.view(), 0.8, Norm::L1).unwrap();
        assert_eq!(c.kept.len(), 2);
        assert_abs_diff_eq!(c.mask.sum(), 2.0 * 18.0);
        let s = ArrayD::<f32>::zeros(IxDyn(&[]));
        assert!(matches!(
            channel_mask(s.view(), 0.5, Norm::L1),
            Err(PruneError::BadRank { .. })
        ));
    }

    #[test]
    fn compute_masks_dispatches_and_names_errors() {
        let a = tied(&[8, 4], 1);
        let b = tied(&[3, 3, 4, 4], 2);
        let params = vec![
            ("dense.kernel".to_string(), a.view()),
            ("conv.kernel".to_string(), b.view()),
        ];
        let m = compute_masks(&params, 0.5, MaskKind::Magnitude).unwrap();
        assert_eq!(
            m[0],
            (
                "dense.kernel".to_string(),
                magnitude_mask(a.view(), 0.5).unwrap()
            )
        );
        assert_eq!(m[1].1, magnitude_mask(b.view(), 0.5).unwrap());
        let g = compute_masks(&params, 0.5, MaskKind::GlobalMagnitude).unwrap();
        assert_eq!(g, global_magnitude_masks(&params, 0.5).unwrap());
        let nm = compute_masks(&params, 0.0, MaskKind::Nm { n: 2, m: 4 }).unwrap();
        assert_eq!(nm[1].1, nm_mask(b.view(), 2, 4).unwrap());
        let ch = compute_masks(&params, 0.5, MaskKind::Channel { norm: Norm::L2 }).unwrap();
        assert_eq!(ch[0].1, channel_mask(a.view(), 0.5, Norm::L2).unwrap().mask);
        let blk = compute_masks(
            &params[..1],
            0.5,
            MaskKind::Block {
                shape: [2, 2],
                pooling: Pooling::Max,
            },
        );
        assert_eq!(
            blk.unwrap()[0].1,
            block_mask(a.view(), 0.5, [2, 2], Pooling::Max).unwrap()
        );
        // Block sparsity on the rank-4 conv kernel: the error names it.
        match compute_masks(
            &params,
            0.5,
            MaskKind::Block {
                shape: [2, 2],
                pooling: Pooling::Avg,
            },
        ) {
            Err(PruneError::InTensor { name, source }) => {
                assert_eq!(name, "conv.kernel");
                assert!(matches!(*source, PruneError::BadRank { .. }));
                let msg = PruneError::InTensor { name, source }.to_string();
                assert!(
                    msg.contains("conv.kernel") && msg.contains("block_mask"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            compute_masks(&params, 1.0, MaskKind::Magnitude),
            Err(PruneError::InvalidSparsity { .. })
        ));
    }

    #[test]
    fn apply_mask_writes_positive_zero() {
        let mut w = arr(&[4], vec![-1.0, 2.0, -3.0, 4.0]);
        let mask = arr(&[4], vec![0.0, 1.0, 0.0, 1.0]);
        apply_mask(w.view_mut(), mask.view()).unwrap();
        assert_eq!(
            w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            [0.0f32, 2.0, 0.0, 4.0].map(f32::to_bits)
        );
        assert_abs_diff_eq!(sparsity_of(w.view()), 0.5);
        let bad = arr(&[2, 2], vec![1.0; 4]);
        assert!(matches!(
            apply_mask(w.view_mut(), bad.view()),
            Err(PruneError::ShapeMismatch { .. })
        ));
    }
}
