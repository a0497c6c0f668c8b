//! What pruning did, in figures: how small each sparse format makes an int8 kernel against its
//! order-0 entropy bound ([`KernelFormats`]), and which channels pruning killed and what cutting
//! them out saves ([`remove_dead_channels_checked`], [`DeadChannels`]).
//!
//! The bound is `n · H(nnz / n)` bits for the positions (each weight independently zero or not)
//! plus `nnz` times the empirical entropy of the non-zero int8 values: what a coder that sees
//! each weight on its own cannot beat. The context-modelled [`EntropyCoded`] form can, since
//! neighbouring weights are not independent.

use std::fmt;

use ndarray::{Array2, ArrayViewD};
use pare_tensor::Sequential;
use pare_tensor::train::predict;

use crate::error::Result;
use crate::structured::{ChannelPlan, remove_dead_channels};
use crate::{EntropyCoded, GapCoded, SparseTensor};

/// `Σ c · log2(total / c)` over the non-zero counts: their empirical entropy times their total,
/// in bits (0 for no counts).
///
/// ```
/// // A fair coin over 8 tosses: 8 bits.
/// assert_eq!(pare_prune::report::entropy_bits(&[4, 4]), 8.0);
/// ```
pub fn entropy_bits(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 * (total as f64 / c as f64).log2())
        .sum()
}

/// The order-0 entropy bound of an int8 kernel, in bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order0Bound {
    /// `n · H(nnz / n)`: the positions as independent bits.
    pub mask_bits: f64,
    /// `nnz` times the empirical entropy of the non-zero values.
    pub values_bits: f64,
}

impl Order0Bound {
    /// The bound of `kernel`.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// use pare_prune::report::Order0Bound;
    /// // Half the weights zero, the others all 5: one bit per position, nothing for the values.
    /// let k = ArrayD::from_shape_vec(IxDyn(&[2, 4]), vec![5i8, 0, 5, 0, 0, 5, 0, 5]).unwrap();
    /// let b = Order0Bound::of(k.view());
    /// assert_eq!((b.mask_bits, b.values_bits, b.bytes()), (8.0, 0.0, 1.0));
    /// ```
    pub fn of(kernel: ArrayViewD<'_, i8>) -> Order0Bound {
        let mut histogram = [0usize; 256];
        for &v in kernel.iter().filter(|&&v| v != 0) {
            histogram[v as u8 as usize] += 1;
        }
        let nnz: usize = histogram.iter().sum();
        Order0Bound {
            mask_bits: entropy_bits(&[nnz, kernel.len() - nnz]),
            values_bits: entropy_bits(&histogram),
        }
    }

    /// Mask and values together, in bytes.
    pub fn bytes(&self) -> f64 {
        (self.mask_bits + self.values_bits) / 8.0
    }
}

/// An int8 kernel's size in each of pare-prune's sparse formats, and its order-0 bound.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelFormats {
    /// Number of weights.
    pub elements: usize,
    /// Non-zero weights.
    pub nonzeros: usize,
    /// Bytes as a bitmask plus the non-zero values ([`SparseTensor`]).
    pub bitmask_bytes: usize,
    /// Bytes as Rice-coded gaps plus the values ([`GapCoded`]).
    pub gap_bytes: usize,
    /// Bytes entropy-coded ([`EntropyCoded`]); `None` where that format does not apply.
    pub entropy_coded_bytes: Option<usize>,
    /// The order-0 entropy bound.
    pub bound: Order0Bound,
}

impl KernelFormats {
    /// Encodes `kernel` in each format and measures it.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// use pare_prune::report::KernelFormats;
    /// let mut k = ArrayD::<i8>::zeros(IxDyn(&[3, 3, 1, 8]));
    /// k[[0, 0, 0, 3]] = 17;
    /// k[[2, 1, 0, 5]] = -4;
    /// let f = KernelFormats::of(k.view())?;
    /// assert_eq!((f.elements, f.nonzeros), (72, 2));
    /// assert!(f.bitmask_bytes < 72 && f.gap_bytes < 72);
    /// # Ok::<(), pare_prune::PruneError>(())
    /// ```
    ///
    /// # Errors
    /// As [`SparseTensor::encode`] and [`GapCoded::encode`].
    pub fn of(kernel: ArrayViewD<'_, i8>) -> Result<KernelFormats> {
        Ok(KernelFormats {
            elements: kernel.len(),
            nonzeros: kernel.iter().filter(|&&v| v != 0).count(),
            bitmask_bytes: SparseTensor::encode(kernel.view())?.encoded_len(),
            gap_bytes: GapCoded::encode(kernel.view())?.encoded_len(),
            entropy_coded_bytes: EntropyCoded::encode(kernel.view())
                .ok()
                .map(|e| e.encoded_len()),
            bound: Order0Bound::of(kernel),
        })
    }
}

/// One layer that lost channels to pruning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLayer {
    /// Layer name (`conv2d`).
    pub layer: String,
    /// Output channels it had.
    pub channels: usize,
    /// Output channels it keeps, in order.
    pub kept: Vec<usize>,
}

/// The dead channels cut out of a pruned model, and what that saved. `Display` prints one line
/// per layer and a summary line.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadChannels {
    /// Layers that lost channels.
    pub layers: Vec<DeadLayer>,
    /// Parameters before the cut.
    pub params_before: usize,
    /// Parameters after it.
    pub params_after: usize,
    /// Largest |difference| between the two models' logits on the check inputs: float rounding
    /// only, since a dead channel outputs exactly zero.
    pub max_abs_logit_diff: f32,
}

impl DeadChannels {
    /// The channels kept per layer, as [`remove_channels`](crate::remove_channels) takes them.
    pub fn plan(&self) -> ChannelPlan {
        self.layers
            .iter()
            .map(|l| (l.layer.clone(), l.kept.clone()))
            .collect()
    }
}

impl fmt::Display for DeadChannels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.layers.is_empty() {
            return write!(f, "no dead channels");
        }
        for l in &self.layers {
            let dead = l.channels - l.kept.len();
            writeln!(
                f,
                "{}: {dead} of {} {} dead (every weight pruned, output exactly zero)\n  kept {:?}",
                l.layer,
                l.channels,
                if l.channels == 1 {
                    "channel"
                } else {
                    "channels"
                },
                l.kept
            )?;
        }
        write!(
            f,
            "cut out with the inputs that read them: {} -> {} parameters, logits within {:.1e}",
            self.params_before, self.params_after, self.max_abs_logit_diff
        )
    }
}

/// A pruned model with its dead channels cut out, checked on inputs.
#[derive(Debug, Clone)]
pub struct ChannelRemoval {
    /// The smaller model (a copy of the input when no channel was dead).
    pub model: Sequential,
    /// What was cut.
    pub report: DeadChannels,
    /// The input model's logits on the check inputs.
    pub logits_before: Array2<f32>,
    /// The smaller model's logits on them (the same array when nothing was cut).
    pub logits_after: Array2<f32>,
}

/// [`remove_dead_channels`], then both models run on `x` (in batches of `batch_size`) to
/// measure how far their logits differ; the logits are returned too, so a caller can score both
/// models without running them again.
///
/// ```
/// let model = pare_tensor::models::small_cnn(0); // unpruned: nothing is dead
/// let x = ndarray::Array4::<f32>::zeros((2, 28, 28, 1)).into_dyn();
/// let r = pare_prune::report::remove_dead_channels_checked(&model, x.view(), 2)?;
/// assert!(r.report.layers.is_empty());
/// assert_eq!(r.report.to_string(), "no dead channels");
/// # Ok::<(), pare_prune::PruneError>(())
/// ```
///
/// # Errors
/// As [`remove_dead_channels`] and [`predict`].
pub fn remove_dead_channels_checked(
    model: &Sequential,
    x: ArrayViewD<'_, f32>,
    batch_size: usize,
) -> Result<ChannelRemoval> {
    let (smaller, kept) = remove_dead_channels(model)?;
    let logits_before = predict(model, x.view(), batch_size)?;
    let (logits_after, max_abs_logit_diff) = if kept.is_empty() {
        (logits_before.clone(), 0.0)
    } else {
        let after = predict(&smaller, x.view(), batch_size)?;
        let diff = logits_before
            .iter()
            .zip(&after)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        (after, diff)
    };
    let layers = kept
        .into_iter()
        .map(|(layer, kept)| DeadLayer {
            channels: model
                .param(&format!("{layer}.bias"))
                .map_or(0, |b| b.value.len()),
            layer,
            kept,
        })
        .collect();
    Ok(ChannelRemoval {
        report: DeadChannels {
            layers,
            params_before: model.num_params(),
            params_after: smaller.num_params(),
            max_abs_logit_diff,
        },
        model: smaller,
        logits_before,
        logits_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn bound_matches_a_hand_computation() {
        // 8 weights, 2 non-zero: 8 · H(1/4) = 2 · 2 + 6 · log2(4/3) bits for the mask; values
        // 3 and −3 once each: 2 bits.
        let k = ArrayD::from_shape_vec(IxDyn(&[8]), vec![0i8, 3, 0, 0, 0, -3, 0, 0]).unwrap();
        let b = Order0Bound::of(k.view());
        assert_abs_diff_eq!(
            b.mask_bits,
            4.0 + 6.0 * (4.0f64 / 3.0).log2(),
            epsilon = 1e-12
        );
        assert_abs_diff_eq!(b.values_bits, 2.0, epsilon = 1e-12);
        assert_eq!(entropy_bits(&[]), 0.0);
        assert_eq!(entropy_bits(&[0, 5]), 0.0);
    }

    #[test]
    fn dead_conv_filters_are_reported_and_cut() {
        let mut model = pare_tensor::models::small_cnn(0);
        // Filters 0 and 3 of the conv: every weight zero, bias negative, so the ReLU zeroes them.
        let k = model.param_mut("conv2d.kernel").unwrap();
        let cout = k.value.shape()[3];
        for c in [0, 3] {
            k.value.index_axis_mut(ndarray::Axis(3), c).fill(0.0);
        }
        let b = model.param_mut("conv2d.bias").unwrap();
        b.value[[0]] = -0.5;
        b.value[[3]] = -0.5;
        let x = ndarray::Array4::from_shape_fn((3, 28, 28, 1), |(n, y, x, _)| {
            ((n + y * x) % 7) as f32 / 7.0
        })
        .into_dyn();
        let r = remove_dead_channels_checked(&model, x.view(), 2).unwrap();
        assert_eq!(r.report.layers.len(), 1);
        let l = &r.report.layers[0];
        assert_eq!((l.layer.as_str(), l.channels), ("conv2d", cout));
        assert!(!l.kept.contains(&0) && !l.kept.contains(&3));
        assert_eq!(l.kept.len(), cout - 2);
        assert!(r.report.params_after < r.report.params_before);
        assert!(r.report.max_abs_logit_diff < 1e-4);
        assert_eq!(
            r.report.plan(),
            vec![("conv2d".to_string(), l.kept.clone())]
        );
        let text = r.report.to_string();
        assert!(
            text.starts_with(&format!("conv2d: 2 of {cout} channels dead")),
            "{text}"
        );
    }
}
