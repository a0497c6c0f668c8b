//! Layers with named parameters, Keras' initialisation, and `Sequential`.

use crate::error::{Result, TensorError};
pub use crate::functional::{Add, Concatenate};
pub use crate::graph::Activation;
use crate::graph::{Graph, Var};
use crate::kernels::conv::{Padding, Window};
pub use crate::layers::{
    AvgPool2d, BatchNorm, BatchNormConfig, DepthwiseConv2d, Dropout, GlobalAveragePool2d,
    HardSwish, ReLU6, Sigmoid, Softmax, Tanh,
};
use ndarray::{ArrayD, IxDyn};
use rand::Rng;
use rand_distr::{Distribution, Uniform};
use std::collections::BTreeMap;

/// A named trainable tensor. Names are `layer.kernel` / `layer.bias`, so pruning, quantization
/// and checkpoints find parameters by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Unique name, e.g. `conv2d.kernel`.
    pub name: String,
    /// Current value.
    pub value: ArrayD<f32>,
}

impl Param {
    /// A parameter called `name` holding `value`.
    pub fn new(name: impl Into<String>, value: ArrayD<f32>) -> Param {
        Param {
            name: name.into(),
            value,
        }
    }
}

/// Glorot (Xavier) uniform initialisation, Keras' default for kernels:
/// `U(-l, l)` with `l = sqrt(6 / (fan_in + fan_out))`, where for a conv kernel
/// `[kh, kw, in, out]` the fans are `kh·kw·in` and `kh·kw·out`.
pub fn glorot_uniform<R: Rng + ?Sized>(shape: &[usize], rng: &mut R) -> ArrayD<f32> {
    let receptive: usize = shape[..shape.len().saturating_sub(2)].iter().product();
    let (fan_in, fan_out) = match shape.len() {
        0 => (1, 1),
        1 => (shape[0], shape[0]),
        n => (shape[n - 2] * receptive, shape[n - 1] * receptive),
    };
    let limit = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt() as f32;
    let dist = Uniform::new_inclusive(-limit, limit).expect("finite limit");
    ArrayD::from_shape_simple_fn(IxDyn(shape), || dist.sample(rng))
}

/// A network building block.
pub trait Module: Send + Sync {
    /// Layer name (prefix of its parameter names).
    fn name(&self) -> &str;
    /// Records the forward pass of a batch in `g`.
    fn forward(&self, g: &mut Graph, x: Var) -> Var;
    /// Output shape for an input shape, both without the batch dimension; an error when the
    /// input does not fit.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>>;
    /// The layer's parameters (none by default).
    fn params(&self) -> Vec<&Param> {
        Vec::new()
    }
    /// The layer's parameters, mutably.
    fn params_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }
    /// State that is saved with the model but not trained (Keras' non-trainable weights, e.g.
    /// BatchNorm's moving statistics): checkpoints hold it, optimizers and pruning never see
    /// it. None by default.
    fn non_trainable_params(&self) -> Vec<&Param> {
        Vec::new()
    }
    /// The non-trainable state, mutably.
    fn non_trainable_params_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }
    /// Records the forward pass of a node of a graph model taking `xs` (one per input, in
    /// wiring order). By default the layer takes exactly one input; merge layers
    /// ([`crate::Add`], [`crate::Concatenate`]) take several.
    ///
    /// # Panics
    /// By default, unless `xs` holds exactly one input (the model's wiring checks it).
    fn forward_many(&self, g: &mut Graph, xs: &[Var]) -> Var {
        assert!(
            xs.len() == 1,
            "{}: one input expected, got {}",
            self.name(),
            xs.len()
        );
        self.forward(g, xs[0])
    }
    /// Output shape for the shapes of a node's inputs; by default exactly one input, as
    /// [`Module::output_shape`].
    fn output_shape_many(&self, inputs: &[Vec<usize>]) -> Result<Vec<usize>> {
        match inputs {
            [one] => self.output_shape(one),
            _ => Err(crate::WiringError::Arity {
                node: self.name().to_string(),
                expected: "one input",
                found: inputs.len(),
            }
            .into()),
        }
    }
}

fn shape_err(layer: &str, expected: Vec<usize>, found: &[usize]) -> TensorError {
    TensorError::InputShape {
        layer: layer.to_string(),
        expected,
        found: found.to_vec(),
    }
}

/// Fully connected layer: `y = act(x · kernel + bias)`, kernel `[in, out]`.
#[derive(Debug, Clone)]
pub struct Dense {
    /// Layer name.
    pub name: String,
    /// `[in, out]`.
    pub kernel: Param,
    /// `[out]`; zeros, not trained and not saved when `use_bias` is off.
    pub bias: Param,
    /// Fused activation.
    pub activation: Activation,
    /// Whether the layer adds its bias (Keras' `use_bias`, on by default).
    pub use_bias: bool,
}

impl Dense {
    /// Glorot-uniform kernel, zero bias, no activation.
    pub fn new<R: Rng + ?Sized>(name: &str, inputs: usize, units: usize, rng: &mut R) -> Dense {
        Dense {
            name: name.to_string(),
            kernel: Param::new(
                format!("{name}.kernel"),
                glorot_uniform(&[inputs, units], rng),
            ),
            bias: Param::new(format!("{name}.bias"), ArrayD::zeros(IxDyn(&[units]))),
            activation: Activation::Linear,
            use_bias: true,
        }
    }
    /// [`Dense::new`] with the kernel drawn from [`crate::seeded_rng`]`(seed)`: no `rand` in
    /// the caller's code.
    pub fn seeded(name: &str, inputs: usize, units: usize, seed: u64) -> Dense {
        Dense::new(name, inputs, units, &mut crate::seeded_rng(seed))
    }
    /// Sets the fused activation.
    pub fn activation(mut self, a: Activation) -> Dense {
        self.activation = a;
        self
    }
    /// Turns the bias on or off (Keras' `use_bias`); off, the bias is reset to zeros.
    pub fn use_bias(mut self, on: bool) -> Dense {
        self.use_bias = on;
        if !on {
            self.bias.value.fill(0.0);
        }
        self
    }
    /// Input features.
    pub fn inputs(&self) -> usize {
        self.kernel.value.shape()[0]
    }
    /// Output units.
    pub fn units(&self) -> usize {
        self.kernel.value.shape()[1]
    }
}

impl Dense {
    /// Forward pass with `act` in place of the layer's own activation (used to fuse a
    /// following activation layer).
    pub fn forward_fused(&self, g: &mut Graph, x: Var, act: Activation) -> Var {
        let k = g.param(&self.kernel);
        let b = self.use_bias.then(|| g.param(&self.bias));
        if act.fusable() {
            return g.dense(x, k, b, act);
        }
        let y = g.dense(x, k, b, Activation::Linear);
        apply_unfused(g, y, act)
    }
}

/// The kernel, and the bias when it is used.
fn weights<'a>(kernel: &'a Param, bias: &'a Param, use_bias: bool) -> Vec<&'a Param> {
    if use_bias {
        vec![kernel, bias]
    } else {
        vec![kernel]
    }
}

fn weights_mut<'a>(
    kernel: &'a mut Param,
    bias: &'a mut Param,
    use_bias: bool,
) -> Vec<&'a mut Param> {
    if use_bias {
        vec![kernel, bias]
    } else {
        vec![kernel]
    }
}

fn apply_unfused(g: &mut Graph, y: Var, act: Activation) -> Var {
    match act {
        Activation::Linear => y,
        Activation::Relu => g.relu(y),
        Activation::LeakyRelu(a) => g.leaky_relu(y, a),
    }
}

impl Module for Dense {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        self.forward_fused(g, x, self.activation)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input != [self.inputs()] {
            return Err(shape_err(&self.name, vec![self.inputs()], input));
        }
        Ok(vec![self.units()])
    }
    fn params(&self) -> Vec<&Param> {
        weights(&self.kernel, &self.bias, self.use_bias)
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        weights_mut(&mut self.kernel, &mut self.bias, self.use_bias)
    }
}

/// 2-D convolution over NHWC input, kernel `[kh, kw, in, out]`, TensorFlow padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Layer name.
    pub name: String,
    /// `[kh, kw, in, out]`.
    pub kernel: Param,
    /// `[out]`; zeros, not trained and not saved when `use_bias` is off.
    pub bias: Param,
    /// `[sh, sw]`.
    pub strides: [usize; 2],
    /// Padding mode.
    pub padding: Padding,
    /// Fused activation.
    pub activation: Activation,
    /// Whether the layer adds its bias (Keras' `use_bias`, on by default; off before a
    /// BatchNorm, as ResNets are written).
    pub use_bias: bool,
}

impl Conv2d {
    /// Glorot-uniform kernel, zero bias, stride 1, `valid` padding, no activation.
    pub fn new<R: Rng + ?Sized>(
        name: &str,
        in_channels: usize,
        filters: usize,
        kernel_size: [usize; 2],
        rng: &mut R,
    ) -> Conv2d {
        let shape = [kernel_size[0], kernel_size[1], in_channels, filters];
        Conv2d {
            name: name.to_string(),
            kernel: Param::new(format!("{name}.kernel"), glorot_uniform(&shape, rng)),
            bias: Param::new(format!("{name}.bias"), ArrayD::zeros(IxDyn(&[filters]))),
            strides: [1, 1],
            padding: Padding::Valid,
            activation: Activation::Linear,
            use_bias: true,
        }
    }
    /// [`Conv2d::new`] with the kernel drawn from [`crate::seeded_rng`]`(seed)`: no `rand` in
    /// the caller's code.
    pub fn seeded(
        name: &str,
        in_channels: usize,
        filters: usize,
        kernel_size: [usize; 2],
        seed: u64,
    ) -> Conv2d {
        Conv2d::new(
            name,
            in_channels,
            filters,
            kernel_size,
            &mut crate::seeded_rng(seed),
        )
    }
    /// Turns the bias on or off (Keras' `use_bias`); off, the bias is reset to zeros.
    pub fn use_bias(mut self, on: bool) -> Conv2d {
        self.use_bias = on;
        if !on {
            self.bias.value.fill(0.0);
        }
        self
    }
    /// Sets both strides.
    pub fn strides(mut self, s: usize) -> Conv2d {
        self.strides = [s, s];
        self
    }
    /// Sets the padding.
    pub fn padding(mut self, p: Padding) -> Conv2d {
        self.padding = p;
        self
    }
    /// Sets the fused activation.
    pub fn activation(mut self, a: Activation) -> Conv2d {
        self.activation = a;
        self
    }
    /// `[kh, kw, in, out]`.
    pub fn kernel_shape(&self) -> [usize; 4] {
        let s = self.kernel.value.shape();
        [s[0], s[1], s[2], s[3]]
    }
}

impl Conv2d {
    /// Forward pass with `act` in place of the layer's own activation (used to fuse a
    /// following activation layer).
    pub fn forward_fused(&self, g: &mut Graph, x: Var, act: Activation) -> Var {
        let k = g.param(&self.kernel);
        let b = self.use_bias.then(|| g.param(&self.bias));
        if act.fusable() {
            return g.conv2d_fused(x, k, b, self.strides, self.padding, act);
        }
        let y = g.conv2d_fused(x, k, b, self.strides, self.padding, Activation::Linear);
        apply_unfused(g, y, act)
    }

    /// `pool(act(conv))` for a following max-pool layer, as one node when the pair fuses (see
    /// [`Graph::conv2d_max_pool`]), with `act` in place of the layer's own activation.
    pub fn forward_pooled(&self, g: &mut Graph, x: Var, act: Activation, pool: &MaxPool2d) -> Var {
        let k = g.param(&self.kernel);
        let b = self.use_bias.then(|| g.param(&self.bias));
        g.conv2d_max_pool(
            x,
            k,
            b,
            (self.strides, self.padding),
            act,
            (pool.pool, pool.strides, pool.padding),
        )
    }
}

impl Module for Conv2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        self.forward_fused(g, x, self.activation)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [kh, kw, cin, cout] = self.kernel_shape();
        let bad = || shape_err(&self.name, vec![0, 0, cin], input);
        let &[h, w, c] = input else { return Err(bad()) };
        if c != cin {
            return Err(bad());
        }
        let win =
            Window::new([1, h, w, c], [kh, kw], self.strides, self.padding).ok_or_else(bad)?;
        Ok(vec![win.oh, win.ow, cout])
    }
    fn params(&self) -> Vec<&Param> {
        weights(&self.kernel, &self.bias, self.use_bias)
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        weights_mut(&mut self.kernel, &mut self.bias, self.use_bias)
    }
}

/// Max pooling over NHWC input.
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    /// Layer name.
    pub name: String,
    /// Window `[ph, pw]`.
    pub pool: [usize; 2],
    /// Strides; Keras defaults them to the pool size.
    pub strides: [usize; 2],
    /// Padding mode.
    pub padding: Padding,
}

impl MaxPool2d {
    /// Square pool with strides equal to the pool size and `valid` padding (Keras' defaults).
    pub fn new(name: &str, pool: usize) -> MaxPool2d {
        MaxPool2d {
            name: name.into(),
            pool: [pool, pool],
            strides: [pool, pool],
            padding: Padding::Valid,
        }
    }
    /// Sets both strides.
    pub fn strides(mut self, s: usize) -> MaxPool2d {
        self.strides = [s, s];
        self
    }
    /// Sets the padding.
    pub fn padding(mut self, p: Padding) -> MaxPool2d {
        self.padding = p;
        self
    }
}

impl Module for MaxPool2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        g.max_pool(x, self.pool, self.strides, self.padding)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let bad = || shape_err(&self.name, vec![0, 0, 0], input);
        let &[h, w, c] = input else { return Err(bad()) };
        let win =
            Window::new([1, h, w, c], self.pool, self.strides, self.padding).ok_or_else(bad)?;
        Ok(vec![win.oh, win.ow, c])
    }
}

/// Flattens everything but the batch dimension.
#[derive(Debug, Clone)]
pub struct Flatten {
    /// Layer name.
    pub name: String,
}

impl Flatten {
    /// A flatten layer.
    pub fn new(name: &str) -> Flatten {
        Flatten { name: name.into() }
    }
}

impl Module for Flatten {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        let s = g.shape(x);
        let n = s[0];
        let rest = s[1..].iter().product();
        g.reshape(x, &[n, rest])
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![input.iter().product()])
    }
}

/// Reshapes every example to a fixed shape (batch dimension kept).
#[derive(Debug, Clone)]
pub struct Reshape {
    /// Layer name.
    pub name: String,
    /// Target shape without the batch dimension.
    pub shape: Vec<usize>,
}

impl Reshape {
    /// Reshape to `shape` (batch dimension excluded).
    pub fn new(name: &str, shape: &[usize]) -> Reshape {
        Reshape {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }
}

impl Module for Reshape {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        let n = g.shape(x)[0];
        let mut s = vec![n];
        s.extend_from_slice(&self.shape);
        g.reshape(x, &s)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.iter().product::<usize>() != self.shape.iter().product::<usize>() {
            return Err(shape_err(&self.name, self.shape.clone(), input));
        }
        Ok(self.shape.clone())
    }
}

/// Stand-alone ReLU layer.
#[derive(Debug, Clone)]
pub struct ReLU {
    /// Layer name.
    pub name: String,
}

impl ReLU {
    /// A ReLU layer.
    pub fn new(name: &str) -> ReLU {
        ReLU { name: name.into() }
    }
}

impl Module for ReLU {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        g.relu(x)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
}

/// Stand-alone leaky ReLU layer.
#[derive(Debug, Clone)]
pub struct LeakyReLU {
    /// Layer name.
    pub name: String,
    /// Slope below zero.
    pub alpha: f32,
}

impl LeakyReLU {
    /// A leaky ReLU with slope `alpha`.
    pub fn new(name: &str, alpha: f32) -> LeakyReLU {
        LeakyReLU {
            name: name.into(),
            alpha,
        }
    }
}

impl Module for LeakyReLU {
    fn name(&self) -> &str {
        &self.name
    }
    fn forward(&self, g: &mut Graph, x: Var) -> Var {
        g.leaky_relu(x, self.alpha)
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
}

/// One layer of a [`Sequential`]: the built-in kinds by value, so converters (int8, structured
/// pruning) can inspect them, plus any user module.
#[non_exhaustive]
// A model holds a handful of layers, built once: boxing the larger ones would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Layer {
    /// Fully connected.
    Dense(Dense),
    /// Convolution.
    Conv2d(Conv2d),
    /// Max pooling.
    MaxPool2d(MaxPool2d),
    /// Flatten.
    Flatten(Flatten),
    /// Reshape.
    Reshape(Reshape),
    /// ReLU.
    ReLU(ReLU),
    /// Leaky ReLU.
    LeakyReLU(LeakyReLU),
    /// Batch normalisation.
    BatchNorm(BatchNorm),
    /// Dropout (training only).
    Dropout(Dropout),
    /// Average pooling.
    AvgPool2d(AvgPool2d),
    /// Global average pooling.
    GlobalAveragePool2d(GlobalAveragePool2d),
    /// Depthwise convolution.
    DepthwiseConv2d(DepthwiseConv2d),
    /// Logistic sigmoid.
    Sigmoid(Sigmoid),
    /// Hyperbolic tangent.
    Tanh(Tanh),
    /// ReLU capped at 6.
    ReLU6(ReLU6),
    /// Hard-swish.
    HardSwish(HardSwish),
    /// Softmax over the last axis.
    Softmax(Softmax),
    /// Element-wise sum of several inputs (graph models).
    Add(Add),
    /// Inputs joined on the channel axis (graph models).
    Concatenate(Concatenate),
    /// Anything else implementing [`Module`].
    Custom(Box<dyn Module>),
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Layer({})", self.module().name())
    }
}

impl Clone for Layer {
    /// # Panics
    /// On a `Custom` layer, which has no general way to clone.
    fn clone(&self) -> Self {
        match self {
            Layer::Dense(l) => Layer::Dense(l.clone()),
            Layer::Conv2d(l) => Layer::Conv2d(l.clone()),
            Layer::MaxPool2d(l) => Layer::MaxPool2d(l.clone()),
            Layer::Flatten(l) => Layer::Flatten(l.clone()),
            Layer::Reshape(l) => Layer::Reshape(l.clone()),
            Layer::ReLU(l) => Layer::ReLU(l.clone()),
            Layer::LeakyReLU(l) => Layer::LeakyReLU(l.clone()),
            Layer::BatchNorm(l) => Layer::BatchNorm(l.clone()),
            Layer::Dropout(l) => Layer::Dropout(l.clone()),
            Layer::AvgPool2d(l) => Layer::AvgPool2d(l.clone()),
            Layer::GlobalAveragePool2d(l) => Layer::GlobalAveragePool2d(l.clone()),
            Layer::DepthwiseConv2d(l) => Layer::DepthwiseConv2d(l.clone()),
            Layer::Sigmoid(l) => Layer::Sigmoid(l.clone()),
            Layer::Tanh(l) => Layer::Tanh(l.clone()),
            Layer::ReLU6(l) => Layer::ReLU6(l.clone()),
            Layer::HardSwish(l) => Layer::HardSwish(l.clone()),
            Layer::Softmax(l) => Layer::Softmax(l.clone()),
            Layer::Add(l) => Layer::Add(l.clone()),
            Layer::Concatenate(l) => Layer::Concatenate(l.clone()),
            Layer::Custom(m) => panic!("Layer::clone: custom layer {} cannot be cloned", m.name()),
        }
    }
}

impl Layer {
    /// The layer as a [`Module`].
    pub fn module(&self) -> &dyn Module {
        match self {
            Layer::Dense(l) => l,
            Layer::Conv2d(l) => l,
            Layer::MaxPool2d(l) => l,
            Layer::Flatten(l) => l,
            Layer::Reshape(l) => l,
            Layer::ReLU(l) => l,
            Layer::LeakyReLU(l) => l,
            Layer::BatchNorm(l) => l,
            Layer::Dropout(l) => l,
            Layer::AvgPool2d(l) => l,
            Layer::GlobalAveragePool2d(l) => l,
            Layer::DepthwiseConv2d(l) => l,
            Layer::Sigmoid(l) => l,
            Layer::Tanh(l) => l,
            Layer::ReLU6(l) => l,
            Layer::HardSwish(l) => l,
            Layer::Softmax(l) => l,
            Layer::Add(l) => l,
            Layer::Concatenate(l) => l,
            Layer::Custom(m) => m.as_ref(),
        }
    }
    /// The layer as a mutable [`Module`].
    pub fn module_mut(&mut self) -> &mut dyn Module {
        match self {
            Layer::Dense(l) => l,
            Layer::Conv2d(l) => l,
            Layer::MaxPool2d(l) => l,
            Layer::Flatten(l) => l,
            Layer::Reshape(l) => l,
            Layer::ReLU(l) => l,
            Layer::LeakyReLU(l) => l,
            Layer::BatchNorm(l) => l,
            Layer::Dropout(l) => l,
            Layer::AvgPool2d(l) => l,
            Layer::GlobalAveragePool2d(l) => l,
            Layer::DepthwiseConv2d(l) => l,
            Layer::Sigmoid(l) => l,
            Layer::Tanh(l) => l,
            Layer::ReLU6(l) => l,
            Layer::HardSwish(l) => l,
            Layer::Softmax(l) => l,
            Layer::Add(l) => l,
            Layer::Concatenate(l) => l,
            Layer::Custom(m) => m.as_mut(),
        }
    }
}

macro_rules! into_layer {
    ($($t:ident),*) => {$(
        impl From<$t> for Layer {
            fn from(l: $t) -> Layer {
                Layer::$t(l)
            }
        }
    )*};
}
into_layer!(Dense, Conv2d, MaxPool2d, Flatten, Reshape, ReLU, LeakyReLU);
into_layer!(
    BatchNorm,
    Dropout,
    AvgPool2d,
    GlobalAveragePool2d,
    DepthwiseConv2d,
    Sigmoid,
    Tanh,
    ReLU6,
    HardSwish,
    Softmax,
    Add,
    Concatenate
);

/// A model with a fixed per-example input shape: a chain of layers applied in order (a
/// [`Sequential`], empty [`Model::wiring`]), or a graph of named layers (Keras' functional
/// API, [`Model::functional`]; see [`crate::functional`]).
#[derive(Debug, Clone)]
pub struct Model {
    /// Input shape without the batch dimension, e.g. `[28, 28, 1]`.
    pub input_shape: Vec<usize>,
    /// The layers, each after the layers it takes input from; the last is the output.
    pub layers: Vec<Layer>,
    /// For a graph model, each layer's name → the names of its inputs (other layers or
    /// [`crate::INPUT`]); empty for a chain, where each layer takes the one before.
    pub wiring: BTreeMap<String, Vec<String>>,
}

/// The simple case of a [`Model`]: a stack of layers applied in order. The same type, so
/// everything that takes one takes the other.
pub type Sequential = Model;

impl Model {
    /// An empty model taking examples of `input_shape` (batch dimension excluded).
    pub fn new(input_shape: &[usize]) -> Model {
        Model {
            input_shape: input_shape.to_vec(),
            layers: Vec::new(),
            wiring: BTreeMap::new(),
        }
    }

    /// Appends a layer; in a graph model it takes the current output.
    pub fn push(mut self, layer: impl Into<Layer>) -> Model {
        self.push_layer(layer.into());
        self
    }

    /// Appends a user-defined module.
    pub fn push_module(mut self, m: Box<dyn Module>) -> Model {
        self.push_layer(Layer::Custom(m));
        self
    }

    fn push_layer(&mut self, layer: Layer) {
        if !self.is_sequential() {
            let last = self
                .layers
                .last()
                .map_or(crate::INPUT, |l| l.module().name());
            self.wiring
                .insert(layer.module().name().to_string(), vec![last.to_string()]);
        }
        self.layers.push(layer);
    }

    /// Checks that the layers fit the input shape and each other; returns the per-example
    /// output shape.
    pub fn output_shape(&self) -> Result<Vec<usize>> {
        Ok(self
            .node_shapes()?
            .pop()
            .unwrap_or_else(|| self.input_shape.clone()))
    }

    /// Checks a batch's shape (`[n, input_shape...]`) before it enters the graph.
    pub fn check_input(&self, shape: &[usize]) -> Result<()> {
        if shape.len() != self.input_shape.len() + 1 || shape[1..] != self.input_shape[..] {
            return Err(TensorError::InputShape {
                layer: "model input".into(),
                expected: self.input_shape.clone(),
                found: shape.get(1..).unwrap_or(&[]).to_vec(),
            });
        }
        Ok(())
    }

    /// Forward pass through every layer.
    pub fn forward(&self, g: &mut Graph, x: Var) -> Var {
        self.forward_with_taps(g, x, &[]).0
    }

    /// Forward pass that also returns the output of each layer named in `taps` (for feature
    /// distillation), in the order of `taps`.
    ///
    /// A linear `Conv2d` or `Dense` directly followed by a `ReLU` or `LeakyReLU` layer runs as
    /// one fused node (same values, one pass over memory less), unless the first is tapped. A
    /// `Conv2d` (with its activation, or a linear one and such an activation layer) directly
    /// followed by a `MaxPool2d` runs through [`Graph::conv2d_max_pool`], unless a layer before
    /// the pool is tapped.
    pub fn forward_with_taps(
        &self,
        g: &mut Graph,
        x: Var,
        taps: &[&str],
    ) -> (Var, Vec<Option<Var>>) {
        if !self.is_sequential() {
            return self.forward_graph(g, x, taps);
        }
        let mut found = vec![None; taps.len()];
        let mut x = x;
        let mut i = 0;
        while i < self.layers.len() {
            let layer = &self.layers[i];
            let next_act = match self.layers.get(i + 1) {
                Some(Layer::ReLU(_)) => Some(Activation::Relu),
                Some(Layer::LeakyReLU(l)) => Some(Activation::LeakyRelu(l.alpha)),
                _ => None,
            };
            let tapped = taps.contains(&layer.module().name());
            let fused = match (layer, next_act) {
                (Layer::Conv2d(c), _) if !tapped && c.activation.fusable() => {
                    // Conv → [activation layer] → max-pool, none but the pool tapped.
                    let (act, skip) = match next_act {
                        Some(a) if c.activation == Activation::Linear && a.fusable() => (a, 1),
                        _ => (c.activation, 0),
                    };
                    let between_tapped = self.layers[i + 1..]
                        .iter()
                        .take(skip)
                        .any(|l| taps.contains(&l.module().name()));
                    match self.layers.get(i + 1 + skip) {
                        Some(Layer::MaxPool2d(p)) if !between_tapped => {
                            Some((c.forward_pooled(g, x, act, p), 2 + skip))
                        }
                        _ if next_act.is_some() && skip == 1 => {
                            Some((c.forward_fused(g, x, act), 2))
                        }
                        _ => None,
                    }
                }
                (Layer::Dense(d), Some(a))
                    if d.activation == Activation::Linear && a.fusable() && !tapped =>
                {
                    Some((d.forward_fused(g, x, a), 2))
                }
                _ => None,
            };
            let consumed = match fused {
                Some((y, n)) => {
                    x = y;
                    n
                }
                None => {
                    x = layer.module().forward(g, x);
                    1
                }
            };
            for l in &self.layers[i..i + consumed] {
                if let Some(t) = taps.iter().position(|t| *t == l.module().name()) {
                    found[t] = Some(x);
                }
            }
            i += consumed;
        }
        (x, found)
    }

    /// All parameters, in layer order.
    pub fn params(&self) -> Vec<&Param> {
        self.layers
            .iter()
            .flat_map(|l| l.module().params())
            .collect()
    }

    /// All parameters mutably, in layer order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.module_mut().params_mut())
            .collect()
    }

    /// All non-trainable state (BatchNorm's moving statistics), in layer order.
    pub fn non_trainable_params(&self) -> Vec<&Param> {
        self.layers
            .iter()
            .flat_map(|l| l.module().non_trainable_params())
            .collect()
    }

    /// All non-trainable state, mutably.
    pub fn non_trainable_params_mut(&mut self) -> Vec<&mut Param> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.module_mut().non_trainable_params_mut())
            .collect()
    }

    /// Every tensor saved with the model (Keras' `weights`): each layer's parameters, then its
    /// non-trainable state.
    pub fn weights(&self) -> Vec<&Param> {
        self.layers
            .iter()
            .flat_map(|l| {
                let m = l.module();
                let mut v = m.params();
                v.extend(m.non_trainable_params());
                v
            })
            .collect()
    }

    /// True when a layer normalises with batch statistics in training (a BatchNorm): such a
    /// model's batch cannot be split into shards with statistics of their own.
    pub fn uses_batch_statistics(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, Layer::BatchNorm(_)))
    }

    /// Applies the state updates a training graph recorded ([`Graph::take_state_updates`]):
    /// the new moving statistics. Call it after the optimizer's step; `fit` does.
    ///
    /// # Errors
    /// [`TensorError::BadLayer`] for an update naming no non-trainable tensor of the model or
    /// of another shape (nothing is changed then).
    pub fn apply_state_updates(&mut self, updates: Vec<(String, ArrayD<f32>)>) -> Result<()> {
        {
            let state = self.non_trainable_params();
            for (name, v) in &updates {
                match state.iter().find(|p| &p.name == name) {
                    Some(p) if p.value.shape() == v.shape() => {}
                    found => {
                        return Err(TensorError::BadLayer {
                            layer: name.clone(),
                            reason: match found {
                                Some(p) => format!(
                                    "state update of shape {:?} for a tensor of shape {:?}",
                                    v.shape(),
                                    p.value.shape()
                                ),
                                None => "state update for no non-trainable tensor".into(),
                            },
                        });
                    }
                }
            }
        }
        let mut state = self.non_trainable_params_mut();
        for (name, v) in updates {
            if let Some(p) = state.iter_mut().find(|p| p.name == name) {
                p.value = v;
            }
        }
        Ok(())
    }

    /// A parameter by name.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params().into_iter().find(|p| p.name == name)
    }

    /// A parameter by name, mutably.
    pub fn param_mut(&mut self, name: &str) -> Option<&mut Param> {
        self.params_mut().into_iter().find(|p| p.name == name)
    }

    /// Total number of parameters (scalars).
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.value.len()).sum()
    }

    /// Names and shapes of all parameters.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.params()
            .iter()
            .map(|p| (p.name.clone(), p.value.shape().to_vec()))
            .collect()
    }

    /// A layer by name.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.module().name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The layers one by one, never fused.
    fn unfused(model: &Sequential, g: &mut Graph, x: Var) -> Var {
        model.layers.iter().fold(x, |x, l| l.module().forward(g, x))
    }

    #[test]
    fn fused_layers_give_the_values_of_the_layers_one_by_one() {
        let mut rng = StdRng::seed_from_u64(3);
        let x = ArrayD::from_shape_simple_fn(IxDyn(&[5, 28, 28, 1]), || rng.random_range(0.0..1.0));
        // The small CNN fuses conv + pool; a linear conv, an activation layer and a pool fuse
        // as three layers.
        let three = Sequential::new(&[28, 28, 1])
            .push(Conv2d::new("c", 1, 6, [3, 3], &mut rng))
            .push(LeakyReLU::new("a", 0.2))
            .push(MaxPool2d::new("p", 2))
            .push(Flatten::new("f"))
            .push(Dense::new("d", 13 * 13 * 6, 10, &mut rng));
        for model in [crate::models::small_cnn(1), three] {
            let mut g = Graph::new();
            let xv = g.constant(x.clone());
            let y = model.forward(&mut g, xv);
            let fused_nodes = g.len();
            let mut h = Graph::new();
            let xv = h.constant(x.clone());
            let want = unfused(&model, &mut h, xv);
            assert!(fused_nodes < h.len(), "{fused_nodes} vs {}", h.len());
            assert_eq!(g.value(y), h.value(want));
        }
    }

    #[test]
    fn tapping_a_fused_layer_keeps_its_own_output() {
        let model = crate::models::small_cnn(2);
        let x = ArrayD::from_elem(IxDyn(&[2, 28, 28, 1]), 0.5f32);
        let mut g = Graph::new();
        let xv = g.constant(x);
        let (y, taps) = model.forward_with_taps(&mut g, xv, &["conv2d", "max_pooling2d"]);
        assert_eq!(g.shape(taps[0].unwrap()), &[2, 26, 26, 12]);
        assert_eq!(g.shape(taps[1].unwrap()), &[2, 13, 13, 12]);
        assert_eq!(g.shape(y), &[2, 10]);
    }
}
