//! pare: model compression in Rust — int8 quantization, magnitude pruning and knowledge
//! distillation on a small tensor/autograd core. This umbrella crate re-exports the crates:
//!
//! - [`tensor`]: tensors, autograd, layers, optimizers, the training loop;
//! - [`mnist`]: IDX reader and MNIST / Fashion-MNIST data sets;
//! - [`quant`]: int8 quantization and the integer-only engine;
//! - [`prune`]: magnitude pruning, sparse storage and kernels;
//! - [`distill`]: knowledge distillation.
//!
//! ```
//! let model = pare::tensor::models::small_cnn(0);
//! assert_eq!(model.num_params(), 20_410);
//! ```

pub mod codecs;

pub use pare_distill as distill;
pub use pare_mnist as mnist;
pub use pare_onnx as onnx;
pub use pare_prune as prune;
pub use pare_quant as quant;
pub use pare_tensor as tensor;
