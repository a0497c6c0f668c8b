//! pare-tensor: a small, fast CPU tensor/autograd core for training and compressing CNNs.
//!
//! - [`Graph`] / [`Var`]: an arena tape rebuilt every step; [`Graph::backward`] returns fresh
//!   [`Grads`] keyed by parameter name. Ops: matmul, conv2d (im2col + GEMM, or direct kernels
//!   for short patch rows; `valid`/`same`, strides), max-pool, add-bias, relu, leaky-relu,
//!   reshape, softmax, log-softmax, sparse softmax cross-entropy, KL divergence, mean/sum,
//!   element-wise arithmetic, mask-multiply (pruning) and fake-quant (quantization-aware
//!   training).
//! - [`nn`]: `Dense`, `Conv2d`, `MaxPool2d`, `Flatten`, `Reshape`, `ReLU`, `LeakyReLU` and
//!   [`Sequential`], with Keras' layouts (NHWC, kernels `[kh, kw, in, out]` and `[in, out]`) and
//!   initialisation (Glorot-uniform kernels, zero biases).
//! - [`functional`]: graph models ([`Model`], Keras' functional API): named layers wired as a
//!   DAG with [`Add`] and [`Concatenate`]; a [`Sequential`] is the chain case of the same type,
//!   so training, checkpoints, BatchNorm folding and distillation take either.
//! - [`optim`]: `Adam` and `Sgd` with Keras' rules and defaults.
//! - [`train`]: `fit` / `evaluate` / `predict` with callbacks and replaceable objectives.
//! - [`checkpoint`]: parameters to and from safetensors files.
//! - [`infer`]: a model run on the kernels without the graph, for batch-1 latency.
//!
//! ```
//! use pare_tensor::{models, optim::{Adam, AdamConfig}, train::{evaluate, Fit, FitConfig}};
//! use ndarray::Array4;
//!
//! // Two blank "images" labelled 0 and 1, fitted for a few steps.
//! let mut model = models::small_cnn(0);
//! let mut x = Array4::<f32>::zeros((2, 28, 28, 1));
//! x[[1, 14, 14, 0]] = 1.0;
//! let y = [0usize, 1];
//! let mut adam = Adam::new(AdamConfig { learning_rate: 0.01, ..Default::default() })?;
//! let cfg = FitConfig { epochs: 20, batch_size: 2, verbose: false, ..Default::default() };
//! let history = Fit::new(cfg).run(&mut model, &mut adam, x.view().into_dyn(), &y)?;
//! assert!(history.epochs.last().unwrap().loss < history.epochs[0].loss);
//! let eval = evaluate(&model, x.view().into_dyn(), &y, 32)?;
//! assert_eq!(eval.accuracy, 1.0);
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```
//!
//! A model of one's own: [`builder`] infers every size from the input shape and names layers
//! as Keras does; [`Sequential::summary`] prints Keras' table; [`callbacks`] holds
//! `EarlyStopping`, `ModelCheckpoint` and `ReduceLROnPlateau`; [`optim::AdamW`], gradient
//! clipping ([`train::FitConfig::clip_global_norm`]) and [`schedule`]'s warm-up fit any run;
//! [`data`] lets `fit` take any array, any integer labels or a whole data set. [`ndarray`] and
//! [`rand`] are re-exported, and [`seeded_rng`] / `Dense::seeded` take a plain `u64`.
//!
//! ```
//! use pare_tensor::builder::{conv2d, dense, flatten, max_pool2d};
//! use pare_tensor::callbacks::{EarlyStopping, Monitor};
//! use pare_tensor::optim::{AdamConfig, AdamW};
//! use pare_tensor::schedule::{Schedule, Scheduled};
//! use pare_tensor::train::{Fit, FitConfig};
//! use pare_tensor::{Activation, Sequential, gradcheck::toy_halves};
//!
//! let mut model = Sequential::builder(&[28, 28, 1])
//!     .add(conv2d(4, [3, 3]).strides(2).activation(Activation::Relu))
//!     .add(max_pool2d(2))
//!     .add(flatten())
//!     .add(dense(2))
//!     .build()?;
//! println!("{}", model.summary());
//! let (x, y) = toy_halves(48, 0, 0.8, 0.2);
//! let mut opt = Scheduled::new(
//!     AdamW::new(AdamConfig::default(), 0.004)?,
//!     Schedule::warmup(3, 0.0, Schedule::Constant(0.01))?,
//! )?;
//! let mut stop = EarlyStopping::new(Monitor::ValLoss).patience(2).restore_best_weights(true);
//! let cfg = FitConfig { epochs: 15, batch_size: 12, validation_split: 0.25,
//!     clip_global_norm: Some(1.0), verbose: false, ..Default::default() };
//! let history = Fit::new(cfg).callback(&mut stop).run(&mut model, &mut opt, x.view(), &y)?;
//! assert_eq!(history.epochs[0].epoch, 1);
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```

pub mod augment;
pub mod builder;
pub mod callbacks;
pub mod checkpoint;
pub mod data;
mod error;
pub mod fold;
pub mod functional;
pub mod gradcheck;
mod graph;
pub mod infer;
pub mod io;
pub mod kernels;
pub mod layer_ops;
mod layers;
pub mod models;
pub mod nn;
pub mod optim;
pub mod schedule;
pub mod train;

#[cfg(test)]
mod functional_tests;
#[cfg(test)]
mod graph_tests;
#[cfg(test)]
mod layers_tests;

pub use error::{Result, TensorError, WiringError, batch_shape, hyper_parameter_message};
pub use fold::fold_batch_norm;

/// The `ndarray` pare-tensor is built on (0.17): arrays a user builds with it are the arrays
/// pare's functions take, whatever `ndarray` the user's own `Cargo.toml` names.
pub use ndarray;
/// The `rand` pare-tensor is built on (0.9): its `Rng`s fit the layer constructors, whatever
/// `rand` the user's own `Cargo.toml` names. [`seeded_rng`] and the `*::seeded` constructors
/// spare a user the import altogether.
pub use rand;

/// The generator every seeded constructor of pare uses (`StdRng`), from a seed: the same seed
/// gives the same weights on every run and machine.
pub fn seeded_rng(seed: u64) -> rand::rngs::StdRng {
    <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed)
}
pub use functional::{Add, Concatenate, INPUT};
pub use graph::{Activation, FakeQuantSpec, Grads, Graph, Op, ParamHook, Var};
pub use kernels::conv::Padding;
pub use layer_ops::Pointwise;
pub use nn::{Layer, Model, Module, Param, Sequential};
