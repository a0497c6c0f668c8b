//! pare: model compression in Rust — int8 quantization, magnitude pruning and knowledge
//! distillation on a small tensor/autograd core. This umbrella crate re-exports the crates:
//!
//! - [`tensor`]: tensors, autograd, layers, optimizers, the training loop;
//! - [`mnist`]: IDX reader and MNIST / Fashion-MNIST data sets;
//! - [`quant`]: int8 quantization and the integer-only engine;
//! - [`prune`]: magnitude pruning, sparse storage and kernels;
//! - [`distill`]: knowledge distillation;
//! - [`inspect`]: what a checkpoint, model file or IDX file holds, checksums checked.
//!
//! and holds what composes them, so that a program of your own can do what the examples do:
//!
//! - [`codecs`]: pare-prune's sparse formats inside pare-quant's int8 model files;
//! - [`breakdown`]: where the bytes of such a file go, against the kernels' entropy bound;
//! - [`sweep`]: pruning recipes (TFMOT's schedule, strip, dead channels cut, int8 file) and the
//!   sparsity sweep;
//! - [`pipeline`]: one compression run (distil, prune, cut dead channels, quantization-aware
//!   int8/int4, one file) and the accuracy/size frontier over its settings;
//! - [`measure`]: accuracy, file sizes raw and gzipped, timing medians, summaries over seeds;
//! - [`results`]: results files that say how they were made;
//! - [`plot`] and [`report`]: the SVG figures and the results page, rebuilt from those files.
//!
//! ```
//! let model = pare::tensor::models::small_cnn(0);
//! assert_eq!(model.num_params(), 20_410);
//! ```

pub mod breakdown;
pub mod codecs;
pub mod error;
pub mod inspect;
pub mod measure;
pub mod pipeline;
pub mod plot;
pub mod report;
pub mod results;
pub mod sweep;
pub mod tflite;

pub use error::{Error, Result};

pub use pare_distill as distill;
pub use pare_mnist as mnist;
pub use pare_onnx as onnx;
pub use pare_prune as prune;
pub use pare_quant as quant;
pub use pare_tensor as tensor;
/// pare's `ndarray` (0.17), so a program of one's own never has to match its version.
pub use pare_tensor::ndarray;
/// pare's `rand` (0.9), so a program of one's own never has to match its version.
pub use pare_tensor::rand;

/// The README's code samples, compiled and run as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
