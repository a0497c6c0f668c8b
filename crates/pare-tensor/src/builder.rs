//! Keras-style model building: each layer says only what it does (filters and kernel, units),
//! every size is inferred from the input shape, and names default to Keras' (`conv2d`,
//! `conv2d_1`, `dense`, ...). [`Sequential::summary`] prints the result as Keras'
//! `model.summary()` does.
//!
//! ```
//! use pare_tensor::builder::{conv2d, dense, flatten, max_pool2d};
//! use pare_tensor::{Activation, Sequential};
//!
//! let model = Sequential::builder(&[28, 28, 1])
//!     .add(conv2d(12, [3, 3]).activation(Activation::Relu))
//!     .add(max_pool2d(2))
//!     .add(flatten())
//!     .add(dense(10))
//!     .seed(0)
//!     .build()?;
//! assert_eq!(model.num_params(), 20_410);
//! assert!(model.param("conv2d.kernel").is_some());
//! let summary = model.summary();
//! assert_eq!(summary.total_params, 20_410);
//! println!("{summary}");
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```
//!
//! A new kind of layer joins the builder by implementing [`LayerSpec`]: its Keras name stem,
//! its user-given name, and how to build it for an input shape.

use crate::error::{Result, TensorError};
use crate::graph::Activation;
use crate::kernels::conv::Padding;
use crate::nn::{
    Conv2d, Dense, Flatten, Layer, LeakyReLU, MaxPool2d, Module, ReLU, Reshape, Sequential,
};
use rand::rngs::StdRng;
use std::collections::HashSet;
use std::fmt;

/// A layer described by what it does; its input sizes come from the layer before it.
pub trait LayerSpec {
    /// Keras' default name stem for this kind (`conv2d`, `dense`, `max_pooling2d`): the first
    /// unnamed layer of the kind gets it, later ones `_1`, `_2`, ...
    fn keras_name(&self) -> &'static str;
    /// The name the user gave, if any.
    fn given_name(&self) -> Option<&str>;
    /// Builds the layer called `name` for examples of shape `input` (batch dimension
    /// excluded), drawing any initial weights from `rng`.
    ///
    /// # Errors
    /// When the layer cannot take that input (wrong rank, a kernel larger than the input).
    fn build(self: Box<Self>, name: &str, input: &[usize], rng: &mut StdRng) -> Result<Layer>;
}

fn bad_layer(layer: &str, reason: String) -> TensorError {
    TensorError::BadLayer {
        layer: layer.to_string(),
        reason,
    }
}

/// A layer's input of the wrong rank, said in the one shape form of every message:
/// `expected [batch, height, width, channels], got [batch, 784]`.
fn rank_err(layer: &str, wanted: &str, input: &[usize]) -> TensorError {
    let dims: Vec<String> = input.iter().map(|d| d.to_string()).collect();
    bad_layer(
        layer,
        format!(
            "expected input [batch, {wanted}], got [batch, {}]",
            dims.join(", ")
        ),
    )
}

/// Keras' `Conv2D(filters, kernel_size)`: NHWC, `valid` padding and stride 1 unless set; the
/// input channel count is the input's last dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dSpec {
    name: Option<String>,
    filters: usize,
    kernel_size: [usize; 2],
    strides: usize,
    padding: Padding,
    activation: Activation,
}

/// A [`Conv2dSpec`] with `filters` output channels and a `kernel_size` window.
pub fn conv2d(filters: usize, kernel_size: [usize; 2]) -> Conv2dSpec {
    Conv2dSpec {
        name: None,
        filters,
        kernel_size,
        strides: 1,
        padding: Padding::Valid,
        activation: Activation::Linear,
    }
}

impl Conv2dSpec {
    /// Names the layer (default: Keras' `conv2d`, `conv2d_1`, ...).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    /// Both strides (default 1).
    pub fn strides(mut self, s: usize) -> Self {
        self.strides = s;
        self
    }
    /// Padding (default `valid`).
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// Fused activation (default linear).
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
}

impl LayerSpec for Conv2dSpec {
    fn keras_name(&self) -> &'static str {
        "conv2d"
    }
    fn given_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn build(self: Box<Self>, name: &str, input: &[usize], rng: &mut StdRng) -> Result<Layer> {
        let &[_, _, channels] = input else {
            return Err(rank_err(name, "height, width, channels", input));
        };
        if self.filters == 0 || self.kernel_size.contains(&0) || self.strides == 0 {
            return Err(bad_layer(
                name,
                format!(
                    "filters ({}), kernel size ({:?}) and strides ({}) must be >= 1",
                    self.filters, self.kernel_size, self.strides
                ),
            ));
        }
        let layer = Conv2d::new(name, channels, self.filters, self.kernel_size, rng)
            .strides(self.strides)
            .padding(self.padding)
            .activation(self.activation);
        layer.output_shape(input)?;
        Ok(layer.into())
    }
}

/// Keras' `Dense(units)`: the input feature count is the input's size, which must be flat
/// (put a [`flatten`] before it).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseSpec {
    name: Option<String>,
    units: usize,
    activation: Activation,
}

/// A [`DenseSpec`] with `units` outputs.
pub fn dense(units: usize) -> DenseSpec {
    DenseSpec {
        name: None,
        units,
        activation: Activation::Linear,
    }
}

impl DenseSpec {
    /// Names the layer (default: Keras' `dense`, `dense_1`, ...).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    /// Fused activation (default linear).
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
}

impl LayerSpec for DenseSpec {
    fn keras_name(&self) -> &'static str {
        "dense"
    }
    fn given_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn build(self: Box<Self>, name: &str, input: &[usize], rng: &mut StdRng) -> Result<Layer> {
        let &[features] = input else {
            return Err(rank_err(name, "features", input));
        };
        if self.units == 0 {
            return Err(bad_layer(name, "units = 0: must be >= 1".into()));
        }
        Ok(Dense::new(name, features, self.units, rng)
            .activation(self.activation)
            .into())
    }
}

/// Keras' `MaxPooling2D(pool_size)`: strides equal to the pool and `valid` padding unless set.
#[derive(Debug, Clone, PartialEq)]
pub struct MaxPool2dSpec {
    name: Option<String>,
    pool: usize,
    strides: Option<usize>,
    padding: Padding,
}

/// A [`MaxPool2dSpec`] over `pool` × `pool` windows.
pub fn max_pool2d(pool: usize) -> MaxPool2dSpec {
    MaxPool2dSpec {
        name: None,
        pool,
        strides: None,
        padding: Padding::Valid,
    }
}

impl MaxPool2dSpec {
    /// Names the layer (default: Keras' `max_pooling2d`, `max_pooling2d_1`, ...).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    /// Both strides (default: the pool size).
    pub fn strides(mut self, s: usize) -> Self {
        self.strides = Some(s);
        self
    }
    /// Padding (default `valid`).
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
}

impl LayerSpec for MaxPool2dSpec {
    fn keras_name(&self) -> &'static str {
        "max_pooling2d"
    }
    fn given_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn build(self: Box<Self>, name: &str, input: &[usize], _: &mut StdRng) -> Result<Layer> {
        if input.len() != 3 {
            return Err(rank_err(name, "height, width, channels", input));
        }
        let strides = self.strides.unwrap_or(self.pool);
        if self.pool == 0 || strides == 0 {
            return Err(bad_layer(
                name,
                format!("pool ({}) and strides ({strides}) must be >= 1", self.pool),
            ));
        }
        let layer = MaxPool2d::new(name, self.pool)
            .strides(strides)
            .padding(self.padding);
        layer.output_shape(input)?;
        Ok(layer.into())
    }
}

/// A layer without weights or sizes to infer: flatten, reshape, ReLU, leaky ReLU.
#[derive(Debug, Clone, PartialEq)]
pub struct PlainSpec {
    name: Option<String>,
    kind: Plain,
}

#[derive(Debug, Clone, PartialEq)]
enum Plain {
    Flatten,
    Reshape(Vec<usize>),
    ReLU,
    LeakyReLU(f32),
}

fn plain(kind: Plain) -> PlainSpec {
    PlainSpec { name: None, kind }
}

/// Keras' `Flatten()`.
pub fn flatten() -> PlainSpec {
    plain(Plain::Flatten)
}

/// Keras' `Reshape(target_shape)` (batch dimension excluded).
pub fn reshape(shape: &[usize]) -> PlainSpec {
    plain(Plain::Reshape(shape.to_vec()))
}

/// Keras' `ReLU()`.
pub fn relu() -> PlainSpec {
    plain(Plain::ReLU)
}

/// Keras' `LeakyReLU(negative_slope)`.
pub fn leaky_relu(alpha: f32) -> PlainSpec {
    plain(Plain::LeakyReLU(alpha))
}

impl PlainSpec {
    /// Names the layer (default: Keras' `flatten`, `reshape`, `re_lu`, `leaky_re_lu`, with
    /// `_1`, `_2`, ... for later ones).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

impl LayerSpec for PlainSpec {
    fn keras_name(&self) -> &'static str {
        match self.kind {
            Plain::Flatten => "flatten",
            Plain::Reshape(_) => "reshape",
            Plain::ReLU => "re_lu",
            Plain::LeakyReLU(_) => "leaky_re_lu",
        }
    }
    fn given_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn build(self: Box<Self>, name: &str, input: &[usize], _: &mut StdRng) -> Result<Layer> {
        let layer: Layer = match self.kind {
            Plain::Flatten => Flatten::new(name).into(),
            Plain::Reshape(shape) => Reshape::new(name, &shape).into(),
            Plain::ReLU => ReLU::new(name).into(),
            Plain::LeakyReLU(alpha) => {
                if !alpha.is_finite() {
                    return Err(bad_layer(name, format!("alpha = {alpha}: must be finite")));
                }
                LeakyReLU::new(name, alpha).into()
            }
        };
        layer.module().output_shape(input)?;
        Ok(layer)
    }
}

/// A layer built beforehand (any [`Layer`], including a user's own [`Module`]) joins the
/// stack as it is, under its own name; the builder checks that it takes the input shape.
impl LayerSpec for Layer {
    fn keras_name(&self) -> &'static str {
        keras_class(self)
    }
    fn given_name(&self) -> Option<&str> {
        Some(self.module().name())
    }
    fn build(self: Box<Self>, _: &str, input: &[usize], _: &mut StdRng) -> Result<Layer> {
        self.module().output_shape(input)?;
        Ok(*self)
    }
}

/// Keras' class name of a layer, as `model.summary()` prints it in brackets.
pub fn keras_class(layer: &Layer) -> &'static str {
    match layer {
        Layer::Dense(_) => "Dense",
        Layer::Conv2d(_) => "Conv2D",
        Layer::MaxPool2d(_) => "MaxPooling2D",
        Layer::Flatten(_) => "Flatten",
        Layer::Reshape(_) => "Reshape",
        Layer::ReLU(_) => "ReLU",
        Layer::LeakyReLU(_) => "LeakyReLU",
        Layer::BatchNorm(_) => "BatchNormalization",
        Layer::Dropout(_) => "Dropout",
        Layer::AvgPool2d(_) => "AveragePooling2D",
        Layer::GlobalAveragePool2d(_) => "GlobalAveragePooling2D",
        Layer::DepthwiseConv2d(_) => "DepthwiseConv2D",
        Layer::Sigmoid(_) | Layer::Tanh(_) | Layer::HardSwish(_) => "Activation",
        Layer::ReLU6(_) => "ReLU",
        Layer::Softmax(_) => "Softmax",
        Layer::Add(_) => "Add",
        Layer::Concatenate(_) => "Concatenate",
        Layer::Custom(_) => "Custom",
        // Kinds added to `Layer` later show as a generic layer until named here.
        #[allow(unreachable_patterns)]
        _ => "Layer",
    }
}

/// Builds a [`Sequential`] from [`LayerSpec`]s: `Sequential::builder(&[28, 28, 1])
/// .add(conv2d(16, [3, 3])) ... .seed(0).build()`.
pub struct ModelBuilder {
    input_shape: Vec<usize>,
    specs: Vec<Box<dyn LayerSpec>>,
    seed: u64,
}

impl fmt::Debug for ModelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelBuilder")
            .field("input_shape", &self.input_shape)
            .field("layers", &self.specs.len())
            .field("seed", &self.seed)
            .finish()
    }
}

impl ModelBuilder {
    /// Appends a layer (Keras' `model.add`, hence the name).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, spec: impl LayerSpec + 'static) -> ModelBuilder {
        self.specs.push(Box::new(spec));
        self
    }
    /// Seed of the initial weights (default 0): layers draw from one
    /// [`crate::seeded_rng`]`(seed)` in order, as [`crate::models`] does.
    pub fn seed(mut self, seed: u64) -> ModelBuilder {
        self.seed = seed;
        self
    }
    /// Builds every layer for the shape the layer before it outputs.
    ///
    /// # Errors
    /// [`TensorError::BadLayer`] or [`TensorError::InputShape`] naming the first layer that
    /// cannot take its input, or a name used twice; [`TensorError::Empty`] for no layers or an
    /// input shape with a zero dimension.
    pub fn build(self) -> Result<Sequential> {
        if self.input_shape.is_empty() || self.input_shape.contains(&0) {
            return Err(TensorError::BadLayer {
                layer: "model input".into(),
                reason: format!(
                    "input shape {:?} must have at least one dimension, none of them 0",
                    self.input_shape
                ),
            });
        }
        if self.specs.is_empty() {
            return Err(TensorError::Empty("model (no layers)"));
        }
        let mut rng = crate::seeded_rng(self.seed);
        let mut used: HashSet<String> = HashSet::new();
        // Keras numbers only the layers it names, per kind, skipping names taken.
        let given: HashSet<String> = self
            .specs
            .iter()
            .filter_map(|s| s.given_name().map(str::to_string))
            .collect();
        let mut counters: std::collections::HashMap<&'static str, usize> = Default::default();
        let mut model = Sequential::new(&self.input_shape);
        let mut shape = self.input_shape.clone();
        for spec in self.specs {
            let name = match spec.given_name() {
                Some(n) => n.to_string(),
                None => {
                    let stem = spec.keras_name();
                    let k = counters.entry(stem).or_insert(0);
                    loop {
                        let candidate = match *k {
                            0 => stem.to_string(),
                            i => format!("{stem}_{i}"),
                        };
                        *k += 1;
                        if !given.contains(&candidate) && !used.contains(&candidate) {
                            break candidate;
                        }
                    }
                }
            };
            if !used.insert(name.clone()) {
                return Err(bad_layer(
                    &name,
                    "the name is used by an earlier layer; parameter names must be unique".into(),
                ));
            }
            let layer = spec.build(&name, &shape, &mut rng)?;
            shape = layer.module().output_shape(&shape)?;
            model.layers.push(layer);
        }
        Ok(model)
    }
}

impl Sequential {
    /// A Keras-style builder for a model taking examples of `input_shape` (batch dimension
    /// excluded); see [`crate::builder`].
    pub fn builder(input_shape: &[usize]) -> ModelBuilder {
        ModelBuilder {
            input_shape: input_shape.to_vec(),
            specs: Vec::new(),
            seed: 0,
        }
    }

    /// The model's layers, output shapes and parameter counts, printed (`Display`) as Keras'
    /// `model.summary()`.
    ///
    /// A graph model's table has Keras' "Connected to" column and the input as its first row.
    pub fn summary(&self) -> Summary {
        let mut rows = Vec::new();
        let mut error = None;
        let graph = !self.is_sequential();
        let shapes = match self.node_shapes() {
            Ok(s) => s.into_iter().map(Some).collect(),
            Err(e) => {
                error = Some(e.to_string());
                // Shapes up to the first layer that cannot take its input.
                let mut shape = Some(self.input_shape.clone());
                let mut out = Vec::new();
                for l in &self.layers {
                    shape = match (graph, shape) {
                        (false, Some(s)) => l.module().output_shape(&s).ok(),
                        _ => None,
                    };
                    out.push(shape.clone());
                }
                out
            }
        };
        if graph {
            rows.push(SummaryRow {
                name: crate::INPUT.to_string(),
                class: "InputLayer",
                output_shape: Some(self.input_shape.clone()),
                params: 0,
                non_trainable_params: 0,
                connected_to: Some(Vec::new()),
            });
        }
        for (l, shape) in self.layers.iter().zip(shapes) {
            let m = l.module();
            rows.push(SummaryRow {
                name: m.name().to_string(),
                class: keras_class(l),
                output_shape: shape,
                params: m.params().iter().map(|p| p.value.len()).sum(),
                non_trainable_params: m.non_trainable_params().iter().map(|p| p.value.len()).sum(),
                connected_to: graph.then(|| {
                    self.inputs_of(m.name())
                        .unwrap_or_default()
                        .into_iter()
                        .map(String::from)
                        .collect()
                }),
            });
        }
        let trainable: usize = rows.iter().map(|r| r.params).sum();
        let non_trainable: usize = rows.iter().map(|r| r.non_trainable_params).sum();
        Summary {
            total_params: trainable + non_trainable,
            trainable_params: trainable,
            non_trainable_params: non_trainable,
            rows,
            error,
        }
    }
}

/// What [`Sequential::summary`] returns; `Display` prints Keras' table.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// One row per layer, in order (a graph model's input first).
    pub rows: Vec<SummaryRow>,
    /// Scalars saved with the whole model, trainable and not (Keras' "Total params").
    pub total_params: usize,
    /// Trained parameters (scalars).
    pub trainable_params: usize,
    /// Non-trainable state (scalars), e.g. BatchNorm's moving statistics.
    pub non_trainable_params: usize,
    /// Why the layers do not chain from the input shape, if they do not.
    pub error: Option<String>,
}

/// One layer's line of a [`Summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Layer name.
    pub name: String,
    /// Keras' class name (`Conv2D`, `Dense`, ...).
    pub class: &'static str,
    /// Per-example output shape (batch dimension excluded); `None` from the first layer
    /// that cannot take its input.
    pub output_shape: Option<Vec<usize>>,
    /// Trainable parameters (scalars) of the layer.
    pub params: usize,
    /// Non-trainable state (scalars) of the layer; Keras counts it in "Param #".
    pub non_trainable_params: usize,
    /// For a graph model, the nodes (or the input) the layer takes; `None` for a chain.
    pub connected_to: Option<Vec<String>>,
}

/// `20410` → `20,410`, as Keras prints parameter counts.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn shape_text(shape: &Option<Vec<usize>>) -> String {
    match shape {
        Some(s) => {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("(None, {})", dims.join(", "))
        }
        None => "?".to_string(),
    }
}

impl Summary {
    fn totals(&self, f: &mut fmt::Formatter<'_>, always_split: bool) -> fmt::Result {
        let size = |n: usize| {
            let bytes = n as f64 * 4.0;
            if bytes >= 1024.0 * 1024.0 {
                format!("{:.2} MB", bytes / (1024.0 * 1024.0))
            } else {
                format!("{:.2} KB", bytes / 1024.0)
            }
        };
        let line = |f: &mut fmt::Formatter<'_>, what: &str, n: usize| {
            writeln!(f, "{what}: {} ({})", thousands(n), size(n))
        };
        line(f, "Total params", self.total_params)?;
        if always_split || self.non_trainable_params > 0 {
            line(f, "Trainable params", self.trainable_params)?;
            line(f, "Non-trainable params", self.non_trainable_params)?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }

    /// Keras 2's functional layout: 98 columns, with "Connected to".
    fn fmt_graph(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line =
            |f: &mut fmt::Formatter<'_>, c: char| writeln!(f, "{}", c.to_string().repeat(98));
        writeln!(f, "Model: \"functional\"")?;
        line(f, '_')?;
        writeln!(
            f,
            " {:<31} {:<21} {:<11} Connected to",
            "Layer (type)", "Output Shape", "Param #"
        )?;
        line(f, '=')?;
        for (i, r) in self.rows.iter().enumerate() {
            let name = format!("{} ({})", r.name, r.class);
            let params = thousands(r.params + r.non_trainable_params);
            let inputs = r.connected_to.as_deref().unwrap_or(&[]);
            let first = inputs.first().map_or(String::new(), |s| s.clone());
            let shape = shape_text(&r.output_shape);
            writeln!(f, " {name:<31} {shape:<21} {params:<11} {first}")?;
            for more in inputs.iter().skip(1) {
                writeln!(f, " {:<31} {:<21} {:<11} {more}", "", "", "")?;
            }
            if i + 1 < self.rows.len() {
                writeln!(f)?;
            }
        }
        line(f, '=')?;
        self.totals(f, true)?;
        line(f, '_')
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rows.iter().any(|r| r.connected_to.is_some()) {
            return self.fmt_graph(f);
        }
        // Keras 2's layout: 65 columns, the batch dimension shown as None.
        let line =
            |f: &mut fmt::Formatter<'_>, c: char| writeln!(f, "{}", c.to_string().repeat(65));
        writeln!(f, "Model: \"sequential\"")?;
        line(f, '_')?;
        writeln!(
            f,
            " {:<27} {:<25} {:<10}",
            "Layer (type)", "Output Shape", "Param #"
        )?;
        line(f, '=')?;
        for (i, r) in self.rows.iter().enumerate() {
            let shape = shape_text(&r.output_shape);
            let name = format!("{} ({})", r.name, r.class);
            let params = thousands(r.params + r.non_trainable_params);
            writeln!(f, " {name:<27} {shape:<25} {params:<10}")?;
            if i + 1 < self.rows.len() {
                writeln!(f)?;
            }
        }
        line(f, '=')?;
        self.totals(f, false)?;
        line(f, '_')
    }
}

impl fmt::Display for Sequential {
    /// The Keras-style [`Summary`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.summary().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{small_cnn, teacher_cnn};

    #[test]
    fn the_builder_makes_the_reference_models_weight_for_weight() {
        // Same layers, same seed, same draw order: the builder's model is models::small_cnn.
        let built = Sequential::builder(&[28, 28, 1])
            .add(reshape(&[28, 28, 1]))
            .add(conv2d(12, [3, 3]).activation(Activation::Relu))
            .add(max_pool2d(2))
            .add(flatten())
            .add(dense(10))
            .seed(4)
            .build()
            .unwrap();
        let reference = small_cnn(4);
        assert_eq!(built.params(), reference.params());
        assert_eq!(built.summary().rows.len(), 5);
        let names: Vec<&str> = built.layers.iter().map(|l| l.module().name()).collect();
        assert_eq!(
            names,
            ["reshape", "conv2d", "max_pooling2d", "flatten", "dense"]
        );

        let student = Sequential::builder(&[28, 28, 1])
            .add(conv2d(16, [3, 3]).strides(2).padding(Padding::Same))
            .add(leaky_relu(0.2))
            .add(max_pool2d(2).strides(1).padding(Padding::Same))
            .add(conv2d(32, [3, 3]).strides(2).padding(Padding::Same))
            .add(flatten())
            .add(dense(10))
            .seed(9)
            .build()
            .unwrap();
        assert_eq!(student.params(), teacher_cnn(16, 32, 9).params());
        assert!(student.param("conv2d_1.kernel").is_some());
    }

    #[test]
    fn default_names_count_per_kind_and_skip_given_names() {
        let m = Sequential::builder(&[10])
            .add(dense(8).name("dense_1"))
            .add(dense(8))
            .add(relu())
            .add(dense(8))
            .add(relu())
            .add(dense(2).name("head"))
            .build()
            .unwrap();
        let names: Vec<&str> = m.layers.iter().map(|l| l.module().name()).collect();
        assert_eq!(
            names,
            ["dense_1", "dense", "re_lu", "dense_2", "re_lu_1", "head"]
        );
        // Dense inferred its inputs from the layer before.
        assert_eq!(m.param_shapes()[0].1, [10, 8]);
        assert_eq!(m.param("head.kernel").unwrap().value.shape(), [8, 2]);
        let dup = Sequential::builder(&[10])
            .add(dense(8).name("x"))
            .add(dense(2).name("x"))
            .build()
            .unwrap_err();
        assert!(
            dup.to_string().contains("used by an earlier layer"),
            "{dup}"
        );
    }

    #[test]
    fn a_layer_that_cannot_take_its_input_is_named_in_the_error() {
        let dense_on_image = Sequential::builder(&[28, 28, 1])
            .add(dense(10))
            .build()
            .unwrap_err();
        assert_eq!(
            dense_on_image.to_string(),
            "layer dense: expected input [batch, features], got [batch, 28, 28, 1]"
        );
        let too_big = Sequential::builder(&[4, 4, 1])
            .add(conv2d(2, [3, 3]))
            .add(conv2d(2, [3, 3]))
            .build()
            .unwrap_err();
        assert!(too_big.to_string().starts_with("conv2d_1"), "{too_big}");
        assert!(matches!(
            Sequential::builder(&[4]).build(),
            Err(TensorError::Empty(_))
        ));
        assert!(
            Sequential::builder(&[4])
                .add(dense(0))
                .build()
                .unwrap_err()
                .to_string()
                .contains("units = 0")
        );
    }

    #[test]
    fn built_layers_and_user_modules_join_as_they_are() {
        let mut rng = crate::seeded_rng(0);
        let m = Sequential::builder(&[6])
            .add(Layer::from(Dense::new("pre", 6, 4, &mut rng)))
            .add(dense(3))
            .build()
            .unwrap();
        assert_eq!(m.output_shape().unwrap(), [3]);
        let wrong = Sequential::builder(&[5])
            .add(Layer::from(Dense::new("pre", 6, 4, &mut rng)))
            .build();
        assert!(matches!(wrong, Err(TensorError::InputShape { .. })));
    }

    #[test]
    fn summary_prints_keras_table() {
        let text = small_cnn(0).summary().to_string();
        let want = "\
Model: \"sequential\"
_________________________________________________________________
 Layer (type)                Output Shape              Param #   
=================================================================
 reshape (Reshape)           (None, 28, 28, 1)         0         

 conv2d (Conv2D)             (None, 26, 26, 12)        120       

 max_pooling2d (MaxPooling2D) (None, 13, 13, 12)        0         

 flatten (Flatten)           (None, 2028)              0         

 dense (Dense)               (None, 10)                20,290    
=================================================================
Total params: 20,410 (79.73 KB)
_________________________________________________________________
";
        assert_eq!(text, want);
        assert_eq!(format!("{}", small_cnn(0)), want);
        // A model whose layers do not chain says where.
        let mut rng = crate::seeded_rng(0);
        let broken = Sequential::new(&[5]).push(Dense::new("d", 6, 2, &mut rng));
        let s = broken.summary();
        assert_eq!(s.rows[0].output_shape, None);
        assert!(s.to_string().contains("error: d:"), "{s}");
    }

    #[test]
    fn seeded_constructors_match_an_explicit_rng() {
        let mut rng = crate::seeded_rng(5);
        assert_eq!(
            Dense::seeded("d", 4, 3, 5).kernel,
            Dense::new("d", 4, 3, &mut rng).kernel
        );
        let mut rng = crate::seeded_rng(5);
        assert_eq!(
            Conv2d::seeded("c", 2, 3, [3, 3], 5).kernel,
            Conv2d::new("c", 2, 3, [3, 3], &mut rng).kernel
        );
    }
}
