//! Magnitude pruning for pare, after TensorFlow Model Optimization (TFMOT).
//!
//! * [`schedule`]: *when* to prune and *how much* — TFMOT's [`ConstantSparsity`] and
//!   [`PolynomialDecay`], step for step.
//! * [`mask`]: *which* weights — per-tensor or global magnitude, block, N:M (2:4) and structured
//!   (whole output channels) masks, all keeping an exact count with a deterministic tie rule.
//!   [`compute_masks`] takes `(name, weights)` pairs and returns a mask per name.
//! * [`callback`]: [`PruneCallback`], pruning while pare-tensor's `Fit` trains (TFMOT's
//!   `prune_low_magnitude` + `UpdatePruningStep`), and [`sparsity_report`].
//! * [`strip`](mod@strip): the plain model with its zeros ([`strip()`]); [`structured`]: whole
//!   channels cut out of the model, a chain or a graph whose `Add`s tie channels together
//!   ([`remove_dead_channels`], [`smallest_channels`] + [`remove_channels`]), smaller and
//!   faster with no sparse kernel; [`recalibrate`]: BatchNorm statistics re-estimated for
//!   pruned weights ([`recalibrate_batch_norm`]); [`report`]: what pruning did in figures (each kernel in each sparse format
//!   against its order-0 entropy bound, the dead channels cut out).
//! * [`sparse`]: storing a pruned tensor as a bitmask plus its non-zeros (f32 or i8), with a
//!   checked byte format, and picking it only when it is smaller than dense; [`gaps`]: the
//!   positions as Rice-coded gaps instead, smaller at high sparsity; [`entropy`]: an int8
//!   tensor arithmetic-coded with context models ([`EntropyCoded`], Deep Compression's entropy
//!   stage), the smallest on trained kernels; [`file`](mod@file): model files with sparse
//!   tensors ([`save_sparse`] / [`load_sparse`]) and the int8 codec halves for pare-quant's
//!   model file, which pick the smallest format per kernel.
//! * [`kernels`]: running a pruned dense layer with the zeros skipped ([`SparseDense`]), next to a
//!   register-tiled dense baseline ([`kernels::DenseKernel`]); [`inference`]: a whole model on
//!   them ([`SparseSequential`], chains and graph models).
//!
//! ```
//! use ndarray::{ArrayD, IxDyn};
//! use pare_prune::{compute_masks, MaskKind, PolynomialDecay, PruningSchedule};
//!
//! // TFMOT's MNIST tutorial schedule: 50 % → 80 % over 844 steps, masks updated every 100.
//! let schedule = PolynomialDecay::new(0.5, 0.8, 0, 844, 3.0, 100)?;
//! assert_eq!(schedule.at(400), (true, schedule.sparsity(400)));
//! assert!(!schedule.should_prune(450));
//!
//! let kernel = ArrayD::from_shape_vec(IxDyn(&[2, 4]), vec![0.1f32, -0.9, 0.4, 0.0, 0.3, 0.8, -0.2, 0.05])?;
//! let sparsity = schedule.sparsity(0); // 0.5: keep round(8 · 0.5) = 4 weights
//! let masks = compute_masks(&[("dense.kernel", kernel.view())], sparsity, MaskKind::Magnitude)?;
//! let (name, mask) = &masks[0];
//! assert_eq!(name, "dense.kernel");
//! assert_eq!(mask.as_slice().unwrap(), &[0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Pruning a model while it trains (see [`PruneCallback`] for a complete run):
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (x, y): (ndarray::ArrayD<f32>, Vec<usize>) = todo!();
//! use pare_prune::{PolynomialDecay, PruneCallback, file::save_sparse};
//! use pare_tensor::{models, optim::{Adam, AdamConfig}, train::{Fit, FitConfig}};
//!
//! let mut model = models::small_cnn(0); // trained beforehand
//! let mut prune = PruneCallback::new(PolynomialDecay::new(0.5, 0.8, 0, 844, 3.0, 100)?);
//! let cfg = FitConfig { epochs: 2, batch_size: 128, validation_split: 0.1, ..Default::default() };
//! let mut adam = Adam::new(AdamConfig::default())?;
//! Fit::new(cfg).callback(&mut prune).run(&mut model, &mut adam, x.view(), &y)?;
//! let pruned = prune.strip(&model)?;
//! save_sparse(&pruned, "pruned.safetensors".as_ref(), Default::default())?;
//! # Ok(())
//! # }
//! ```

#[cfg(test)]
mod bn_tests;
pub mod callback;
pub mod entropy;
pub mod error;
mod evaluate;
pub mod file;
pub mod gaps;
pub mod inference;
pub mod kernels;
pub mod mask;
pub mod recalibrate;
pub mod report;
pub mod schedule;
pub mod sparse;
pub mod strip;
pub mod structured;

pub use callback::{LayerSparsity, MaskUpdate, PruneCallback, prunable_params, sparsity_report};
pub use entropy::EntropyCoded;
pub use error::{PruneError, Result};
pub use evaluate::SparsityReport;
pub use file::{load_sparse, save_sparse};
pub use gaps::GapCoded;
pub use inference::{Kernel, LayerTiming, RuntimeReport, SparseSequential, median_seconds};
pub use kernels::SparseDense;
pub use mask::{
    ChannelMask, MaskKind, Norm, Pooling, apply_mask, block_mask, channel_mask, compute_masks,
    global_magnitude_masks, kept_count, magnitude_mask, nm_mask, sparsity_of,
};
pub use recalibrate::recalibrate_batch_norm;
pub use report::{DeadChannels, KernelFormats, Order0Bound, remove_dead_channels_checked};
pub use schedule::{ConstantSparsity, PolynomialDecay, PruningSchedule};
pub use sparse::{SparseShape, SparseTensor, Storage, choose_encoding};
pub use strip::strip;
pub use structured::{
    ChannelPlan, fold_constant_channels, live_channels, remove_channels, remove_dead_channels,
    smallest_channels,
};
