//! The layers of a modern CNN beyond conv / dense / max-pool: [`BatchNorm`], [`Dropout`],
//! [`AvgPool2d`], [`GlobalAveragePool2d`], [`DepthwiseConv2d`] and the activation layers
//! [`Sigmoid`], [`Tanh`], [`ReLU6`], [`HardSwish`], [`Softmax`], each with Keras' semantics
//! and defaults. They live in [`crate::nn`] beside the others.
//!
//! A BatchNorm's moving statistics are non-trainable state
//! ([`Module::non_trainable_params`]): checkpoints save them as `name.moving_mean` and
//! `name.moving_variance`, optimizers and pruning never see them, and a training step updates
//! them through the graph's state updates (see [`crate::layer_ops`]).
//!
//! ```
//! use pare_tensor::nn::{BatchNorm, Conv2d, Dense, GlobalAveragePool2d, ReLU, Sequential};
//! use pare_tensor::{Graph, Padding};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! let mut rng = StdRng::seed_from_u64(0);
//! let model = Sequential::new(&[8, 8, 1])
//!     .push(Conv2d::new("conv", 1, 4, [3, 3], &mut rng).padding(Padding::Same).use_bias(false))
//!     .push(BatchNorm::new("bn", 4))
//!     .push(ReLU::new("relu"))
//!     .push(GlobalAveragePool2d::new("gap"))
//!     .push(Dense::new("dense", 4, 3, &mut rng));
//! assert_eq!(model.output_shape()?, [3]);
//! // Trainable: conv kernel, gamma, beta, dense kernel and bias; the moving statistics are not.
//! assert_eq!(model.params().len(), 5);
//! assert_eq!(model.non_trainable_params()[0].name, "bn.moving_mean");
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```

use crate::error::{Result, TensorError};
use crate::graph::{Activation, Graph, Var};
use crate::kernels::conv::{Padding, Window};
use crate::nn::{Module, Param, glorot_uniform};
use ndarray::{ArrayD, IxDyn};
use rand::Rng;

fn shape_err(layer: &str, expected: Vec<usize>, found: &[usize]) -> TensorError {
    TensorError::InputShape {
        layer: layer.to_string(),
        expected,
        found: found.to_vec(),
    }
}

/// Hyper-parameters of a [`BatchNorm`], Keras' defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Weight of the old value in the moving averages: `moving = moving · momentum +
    /// batch · (1 − momentum)`. Keras: 0.99.
    pub momentum: f32,
    /// Added to the variance before the square root. Keras: 1e-3.
    pub epsilon: f32,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            momentum: 0.99,
            epsilon: 1e-3,
        }
    }
}

impl BatchNormConfig {
    /// Checks the hyper-parameters.
    ///
    /// # Errors
    /// [`TensorError::BadHyperParameter`] for a momentum outside `[0, 1]` or an epsilon that is
    /// not finite and positive.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(TensorError::BadHyperParameter {
                name: "momentum",
                value: self.momentum.to_string(),
                reason: "must be in [0, 1]",
            });
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(TensorError::BadHyperParameter {
                name: "epsilon",
                value: self.epsilon.to_string(),
                reason: "must be finite and > 0",
            });
        }
        Ok(())
    }
}

/// Batch normalisation over the last (channel) axis, as Keras' `BatchNormalization`: in
/// training `γ · (x − μ_B) / sqrt(σ²_B + ε) + β` with the batch's mean and biased variance, and
/// the moving statistics updated after the step; in inference the moving statistics in their
/// place. γ starts at ones, β at zeros, the moving mean at zeros and the moving variance at
/// ones.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    /// Layer name.
    pub name: String,
    /// Scale γ `[c]`, trainable.
    pub gamma: Param,
    /// Offset β `[c]`, trainable.
    pub beta: Param,
    /// Moving mean `[c]`, not trainable.
    pub moving_mean: Param,
    /// Moving (biased) variance `[c]`, not trainable.
    pub moving_variance: Param,
    /// Momentum and epsilon.
    pub config: BatchNormConfig,
}

impl BatchNorm {
    /// A BatchNorm over `channels` with Keras' defaults.
    pub fn new(name: &str, channels: usize) -> BatchNorm {
        let p = |what: &str, v: f32| {
            Param::new(
                format!("{name}.{what}"),
                ArrayD::from_elem(IxDyn(&[channels]), v),
            )
        };
        BatchNorm {
            name: name.to_string(),
            gamma: p("gamma", 1.0),
            beta: p("beta", 0.0),
            moving_mean: p("moving_mean", 0.0),
            moving_variance: p("moving_variance", 1.0),
            config: BatchNormConfig::default(),
        }
    }

    /// A BatchNorm with the given momentum and epsilon.
    ///
    /// # Errors
    /// As [`BatchNormConfig::validate`].
    pub fn with_config(name: &str, channels: usize, config: BatchNormConfig) -> Result<BatchNorm> {
        config.validate()?;
        Ok(BatchNorm {
            config,
            ..BatchNorm::new(name, channels)
        })
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.gamma.value.len()
    }

    /// The inference-mode layer as `y = x · scale + offset` per channel:
    /// `scale = γ / sqrt(moving_var + ε)`, `offset = β − moving_mean · scale` (what folding
    /// multiplies into the layer before, and what TFLite's converter computes).
    pub fn scale_and_offset(&self) -> (Vec<f32>, Vec<f32>) {
        let eps = self.config.epsilon;
        let scale: Vec<f32> = self
            .gamma
            .value
            .iter()
            .zip(&self.moving_variance.value)
            .map(|(&g, &v)| g / (v + eps).sqrt())
            .collect();
        let offset = self
            .beta
            .value
            .iter()
            .zip(&self.moving_mean.value)
            .zip(&scale)
            .map(|((&b, &m), &s)| b - m * s)
            .collect();
        (scale, offset)
    }
}

impl Module for BatchNorm {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        let gamma = g.param(&self.gamma);
        let beta = g.param(&self.beta);
        let (y, stats) = g.batch_norm(
            x,
            (gamma, beta),
            (&self.moving_mean.value, &self.moving_variance.value),
            self.config.epsilon,
        );
        if let Some((mean, var)) = stats {
            let m = self.config.momentum;
            for (p, batch) in [(&self.moving_mean, mean), (&self.moving_variance, var)] {
                let new: Vec<f32> = p
                    .value
                    .iter()
                    .zip(&batch)
                    .map(|(&old, &b)| old * m + b * (1.0 - m))
                    .collect();
                let new = ArrayD::from_shape_vec(p.value.raw_dim(), new).expect("[c]");
                g.record_state(p.name.clone(), new);
            }
        }
        y
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.last() != Some(&self.channels()) {
            let mut expected = input.to_vec();
            match expected.last_mut() {
                Some(c) => *c = self.channels(),
                None => expected.push(self.channels()),
            }
            return Err(shape_err(&self.name, expected, input));
        }
        Ok(input.to_vec())
    }
    fn params(&self) -> Vec<&Param> {
        vec![&self.gamma, &self.beta]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.gamma, &mut self.beta]
    }
    fn non_trainable_params(&self) -> Vec<&Param> {
        vec![&self.moving_mean, &self.moving_variance]
    }
    fn non_trainable_params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.moving_mean, &mut self.moving_variance]
    }
}

/// Inverted dropout, as Keras' `Dropout`: in training each element is zeroed with probability
/// `rate` and the rest scaled by `1 / (1 − rate)`; in inference the identity. Masks come from
/// the graph's seed (which `fit` derives from its own), this layer's seed and the op's place
/// in the graph, so seeded runs repeat.
#[derive(Debug, Clone)]
pub struct Dropout {
    /// Layer name.
    pub name: String,
    /// Fraction dropped, in `[0, 1)`.
    pub rate: f32,
    /// Seed of this layer's masks (mixed with the graph's).
    pub seed: u64,
}

impl Dropout {
    /// Dropout of `rate`, seed 0.
    ///
    /// # Errors
    /// [`TensorError::BadHyperParameter`] for a rate outside `[0, 1)`.
    pub fn new(name: &str, rate: f32) -> Result<Dropout> {
        if !(0.0..1.0).contains(&rate) {
            return Err(TensorError::BadHyperParameter {
                name: "rate",
                value: rate.to_string(),
                reason: "must be in [0, 1)",
            });
        }
        Ok(Dropout {
            name: name.to_string(),
            rate,
            seed: 0,
        })
    }

    /// Sets the layer's seed.
    pub fn seed(mut self, seed: u64) -> Dropout {
        self.seed = seed;
        self
    }
}

impl Module for Dropout {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        g.dropout(x, self.rate, self.seed)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
}

/// Average pooling over NHWC input (Keras' `AveragePooling2D`): padded positions are left out
/// of each window's count.
#[derive(Debug, Clone)]
pub struct AvgPool2d {
    /// Layer name.
    pub name: String,
    /// Window `[ph, pw]`.
    pub pool: [usize; 2],
    /// Strides; Keras defaults them to the pool size.
    pub strides: [usize; 2],
    /// Padding mode.
    pub padding: Padding,
}

impl AvgPool2d {
    /// Square pool with strides equal to the pool size and `valid` padding (Keras' defaults).
    pub fn new(name: &str, pool: usize) -> AvgPool2d {
        AvgPool2d {
            name: name.into(),
            pool: [pool, pool],
            strides: [pool, pool],
            padding: Padding::Valid,
        }
    }
    /// Sets both strides.
    pub fn strides(mut self, s: usize) -> AvgPool2d {
        self.strides = [s, s];
        self
    }
    /// Sets the padding.
    pub fn padding(mut self, p: Padding) -> AvgPool2d {
        self.padding = p;
        self
    }
}

impl Module for AvgPool2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        g.avg_pool(x, self.pool, self.strides, self.padding)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let bad = || shape_err(&self.name, vec![0, 0, 0], input);
        let &[h, w, c] = input else { return Err(bad()) };
        let win =
            Window::new([1, h, w, c], self.pool, self.strides, self.padding).ok_or_else(bad)?;
        Ok(vec![win.oh, win.ow, c])
    }
}

/// Mean over height and width, `[h, w, c]` to `[c]` (Keras' `GlobalAveragePooling2D`).
#[derive(Debug, Clone)]
pub struct GlobalAveragePool2d {
    /// Layer name.
    pub name: String,
}

impl GlobalAveragePool2d {
    /// A global average pool.
    pub fn new(name: &str) -> GlobalAveragePool2d {
        GlobalAveragePool2d { name: name.into() }
    }
}

impl Module for GlobalAveragePool2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        g.global_avg_pool(x)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match input {
            &[h, w, c] if h > 0 && w > 0 => Ok(vec![c]),
            _ => Err(shape_err(&self.name, vec![0, 0, 0], input)),
        }
    }
}

/// Depthwise convolution over NHWC input (Keras' `DepthwiseConv2D`): kernel `[kh, kw, c, m]`
/// with depth multiplier `m`, output channel `ci · m + j` from input channel `ci`.
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    /// Layer name.
    pub name: String,
    /// `[kh, kw, c, m]`.
    pub kernel: Param,
    /// `[c · m]`; zeros, not trained and not saved when `use_bias` is off.
    pub bias: Param,
    /// `[sh, sw]`.
    pub strides: [usize; 2],
    /// Padding mode.
    pub padding: Padding,
    /// Activation after the bias.
    pub activation: Activation,
    /// Whether the layer adds its bias (on by default, as in Keras).
    pub use_bias: bool,
}

impl DepthwiseConv2d {
    /// Depth multiplier 1, Glorot-uniform kernel, zero bias, stride 1, `valid` padding.
    pub fn new<R: Rng + ?Sized>(
        name: &str,
        channels: usize,
        kernel_size: [usize; 2],
        rng: &mut R,
    ) -> DepthwiseConv2d {
        DepthwiseConv2d::with_multiplier(name, channels, kernel_size, 1, rng)
    }

    /// As [`DepthwiseConv2d::new`] with `multiplier` outputs per input channel.
    pub fn with_multiplier<R: Rng + ?Sized>(
        name: &str,
        channels: usize,
        kernel_size: [usize; 2],
        multiplier: usize,
        rng: &mut R,
    ) -> DepthwiseConv2d {
        // Keras initialises the `[kh, kw, c, m]` kernel with Glorot over that very shape.
        let shape = [kernel_size[0], kernel_size[1], channels, multiplier];
        DepthwiseConv2d {
            name: name.to_string(),
            kernel: Param::new(format!("{name}.kernel"), glorot_uniform(&shape, rng)),
            bias: Param::new(
                format!("{name}.bias"),
                ArrayD::zeros(IxDyn(&[channels * multiplier])),
            ),
            strides: [1, 1],
            padding: Padding::Valid,
            activation: Activation::Linear,
            use_bias: true,
        }
    }
    /// Sets both strides.
    pub fn strides(mut self, s: usize) -> DepthwiseConv2d {
        self.strides = [s, s];
        self
    }
    /// Sets the padding.
    pub fn padding(mut self, p: Padding) -> DepthwiseConv2d {
        self.padding = p;
        self
    }
    /// Sets the activation.
    pub fn activation(mut self, a: Activation) -> DepthwiseConv2d {
        self.activation = a;
        self
    }
    /// Turns the bias on or off; off, the bias is reset to zeros.
    pub fn use_bias(mut self, on: bool) -> DepthwiseConv2d {
        self.use_bias = on;
        if !on {
            self.bias.value.fill(0.0);
        }
        self
    }
    /// `[kh, kw, c, m]`.
    pub fn kernel_shape(&self) -> [usize; 4] {
        let s = self.kernel.value.shape();
        [s[0], s[1], s[2], s[3]]
    }
}

impl Module for DepthwiseConv2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        let k = g.param(&self.kernel);
        let b = self.use_bias.then(|| g.param(&self.bias));
        let y = g.depthwise_conv2d(x, k, b, self.strides, self.padding);
        match self.activation {
            Activation::Linear => y,
            Activation::Relu => g.relu(y),
            Activation::LeakyRelu(a) => g.leaky_relu(y, a),
        }
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [kh, kw, cin, m] = self.kernel_shape();
        let bad = || shape_err(&self.name, vec![0, 0, cin], input);
        let &[h, w, c] = input else { return Err(bad()) };
        if c != cin {
            return Err(bad());
        }
        let win =
            Window::new([1, h, w, c], [kh, kw], self.strides, self.padding).ok_or_else(bad)?;
        Ok(vec![win.oh, win.ow, cin * m])
    }
    fn params(&self) -> Vec<&Param> {
        if self.use_bias {
            vec![&self.kernel, &self.bias]
        } else {
            vec![&self.kernel]
        }
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        if self.use_bias {
            vec![&mut self.kernel, &mut self.bias]
        } else {
            vec![&mut self.kernel]
        }
    }
}

macro_rules! activation_layer {
    ($(#[$doc:meta])* $t:ident, $g:ident, $method:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $t {
            /// Layer name.
            pub name: String,
        }

        impl $t {
            /// The layer.
            pub fn new(name: &str) -> $t {
                $t { name: name.into() }
            }
        }

        impl Module for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn forward(&self, $g: &mut Graph, x: Var) -> Var {
                $g.$method(x)
            }
            fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
                Ok(input.to_vec())
            }
        }
    };
}

activation_layer!(
    /// Logistic sigmoid `1 / (1 + e^−x)` (Keras' `Activation("sigmoid")`).
    Sigmoid, g, sigmoid
);
activation_layer!(
    /// Hyperbolic tangent (Keras' `Activation("tanh")`).
    Tanh, g, tanh
);
activation_layer!(
    /// `min(max(x, 0), 6)` (Keras' `ReLU(max_value=6)`, MobileNet's ReLU6).
    ReLU6, g, relu6
);
activation_layer!(
    /// Hard-swish `x · relu6(x + 3) / 6` (Keras' `Activation("hard_swish")`, MobileNetV3).
    HardSwish, g, hard_swish
);
activation_layer!(
    /// Softmax over the last axis (Keras' `Softmax`).
    Softmax, g, softmax
);
