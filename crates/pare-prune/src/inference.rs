//! Inference with the zeros skipped: [`SparseSequential`] runs a pruned model's sparse enough
//! `Dense` and `Conv2d` layers through [`SparseDense`] and everything else through pare-tensor.
//!
//! A conv layer becomes im2col patches `[n·oh·ow, kh·kw·c]` times its kernel reshaped to
//! `[kh·kw·c, out]` (pare-tensor's layout, no transposition), which is a sparse dense product
//! with a large batch. Convs with short patches (`kh·kw·c` up to pare-tensor's
//! [`shallow::MAX_PATCH`]) stay dense whatever their sparsity: pare-tensor convolves those
//! directly, fused with a following max-pool, and the patch matrix alone (9 floats per output
//! pixel for the small CNN's first layer, 6 MB per batch of 256) costs more than the product
//! the zeros would save. A `ReLU` / `LeakyReLU` layer right after a sparse layer with no activation
//! of its own is fused into it. Other layers run in runs of consecutive layers on an inference
//! graph, exactly as `pare_tensor::train::predict` runs them.
//!
//! Whether sparse wins depends on the shape, the sparsity and the machine (see the
//! `sparse_dense` bench). A graph model (Add, Concatenate) runs node by node along its wiring
//! on one inference graph, as `predict` runs it, its sparse layers on [`SparseDense`] with
//! their own fused activations. [`SparseSequential::new`] decides per layer from the kernel's actual
//! fraction of zeros (`min_sparsity`); [`SparseSequential::measured`] then times each such
//! layer both ways on a probe batch and keeps dense where sparse does not win, so the model
//! never runs slower than dense; [`SparseSequential::with_sparse_layers`] takes the choice by
//! name.

use ndarray::{Array2, ArrayD, ArrayViewD, Axis, Ix2, Ix4, IxDyn};
use pare_tensor::kernels::conv::{Window, im2col, shallow};
use pare_tensor::nn::{Conv2d, Layer};
use pare_tensor::{Activation, Graph, INPUT, Model, Padding, Sequential, Var};
use rayon::prelude::*;

use crate::error::{PruneError, Result};
use crate::kernels::SparseDense;
use crate::mask::sparsity_of;
use crate::schedule::validate_sparsity;

/// How a sparse layer is applied.
#[derive(Debug, Clone)]
enum SparseOp {
    Dense,
    Conv {
        window: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    },
}

#[derive(Debug, Clone)]
enum Stage {
    /// Consecutive layers run by pare-tensor.
    Plain(Sequential),
    /// A layer run by the sparse kernel.
    Sparse {
        name: String,
        op: SparseOp,
        kernel: SparseDense,
        activation: Activation,
        /// How many of the model's layers it runs (2 with a fused activation layer).
        layers: usize,
    },
}

/// A model ready for inference with its sparse layers on [`SparseDense`]; see the
/// [module documentation](self).
///
/// ```
/// use ndarray::Array4;
/// use pare_prune::{SparseSequential, apply_mask, magnitude_mask};
/// use pare_tensor::{models, train::predict};
///
/// let mut model = models::small_cnn(0);
/// let w = model.param_mut("dense.kernel").unwrap();
/// let mask = magnitude_mask(w.value.view(), 0.9)?;
/// apply_mask(w.value.view_mut(), mask.view())?;
///
/// let sparse = SparseSequential::new(&model, 0.5)?;
/// assert_eq!(sparse.sparse_layers(), vec!["dense"]); // the conv kernel is dense
/// let x = Array4::<f32>::from_elem((3, 28, 28, 1), 0.5).into_dyn();
/// let (a, b) = (sparse.predict(x.view(), 32)?, predict(&model, x.view(), 32)?);
/// assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-4));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SparseSequential {
    input_shape: Vec<usize>,
    output_len: usize,
    stages: Vec<Stage>,
    /// A graph model's plan, run instead of `stages`.
    graph: Option<GraphRun>,
    report: RuntimeReport,
}

/// A graph model run node by node on one inference graph, as `predict` runs it, with the
/// planned layers on [`SparseDense`] (each with its own fused activation; an activation
/// layer after it stays a node of its own, since in a graph it may not be the layer's only
/// reader).
#[derive(Debug, Clone)]
struct GraphRun {
    model: Model,
    /// Per layer: the indices of the layers whose outputs it takes (`None`: the model's input).
    inputs: Vec<Vec<Option<usize>>>,
    /// Per layer: its sparse kernel, when it runs sparse.
    sparse: Vec<Option<(SparseOp, SparseDense, Activation)>>,
}

impl GraphRun {
    /// The model's output for `x`; `tap(i, input)` sees the input of every sparse layer `i`
    /// before it runs.
    fn run(&self, x: ArrayD<f32>, tap: &mut dyn FnMut(usize, &ArrayD<f32>)) -> ArrayD<f32> {
        let mut g = Graph::inference();
        let input = g.constant(x);
        let mut vals: Vec<Var> = Vec::with_capacity(self.model.layers.len());
        for (i, l) in self.model.layers.iter().enumerate() {
            let ins: Vec<Var> = self.inputs[i]
                .iter()
                .map(|s| s.map_or(input, |j| vals[j]))
                .collect();
            let y = match &self.sparse[i] {
                Some((op, kernel, act)) => {
                    let h = g.value(ins[0]).clone();
                    tap(i, &h);
                    let out = run_sparse(op, kernel, *act, h);
                    g.constant(out)
                }
                None => l.module().forward_many(&mut g, &ins),
            };
            vals.push(y);
        }
        let out = vals.last().copied().unwrap_or(input);
        g.value(out).clone()
    }
}

/// Which kernel runs a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// [`SparseDense`], the zeros skipped.
    Sparse,
    /// pare-tensor's dense kernels, as `pare_tensor::train::predict` runs the layer.
    Dense,
}

impl Kernel {
    /// `"sparse"` or `"dense"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Sparse => "sparse",
            Kernel::Dense => "dense",
        }
    }
}

/// One layer that could run sparse, with both kernels timed on the probe batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTiming {
    /// The layer's name.
    pub layer: String,
    /// Fraction of zeros in its kernel.
    pub sparsity: f32,
    /// Median seconds of the sparse kernel on the probe batch (a fused activation included).
    pub sparse_seconds: f64,
    /// Median seconds of the same layer(s) on pare-tensor's dense kernels.
    pub dense_seconds: f64,
    /// The faster of the two, which the model runs.
    pub chosen: Kernel,
}

/// What [`SparseSequential::measured`] found: per candidate layer, both kernels' times and the
/// choice. Empty for a model planned by threshold ([`SparseSequential::new`]) or by name
/// ([`SparseSequential::with_sparse_layers`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuntimeReport {
    /// Examples in the probe batch.
    pub batch: usize,
    /// Timed runs per kernel (the median is kept).
    pub runs: usize,
    /// The candidate layers, in model order.
    pub layers: Vec<LayerTiming>,
}

impl RuntimeReport {
    /// The report as JSON: `{"batch", "runs", "layers": [{"layer", "sparsity",
    /// "sparse_seconds", "dense_seconds", "chosen"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "layer": l.layer,
                    "sparsity": l.sparsity,
                    "sparse_seconds": l.sparse_seconds,
                    "dense_seconds": l.dense_seconds,
                    "chosen": l.chosen.as_str(),
                })
            })
            .collect();
        serde_json::json!({ "batch": self.batch, "runs": self.runs, "layers": layers })
    }
}

/// Median wall time of `runs` calls of `f`, in seconds, after one warm-up call (NaN for no
/// runs). The median, not the mean, so that another process taking the core for a moment
/// does not decide.
pub fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    if runs == 0 {
        return f64::NAN;
    }
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Timed runs per kernel in [`SparseSequential::measured`].
const MEASURED_RUNS: usize = 5;

/// Whether threshold planning makes layer `l` (input per-example `shape`) a sparse candidate.
fn eligible(l: &Layer, shape: &[usize], min_sparsity: f32) -> bool {
    match l {
        Layer::Dense(d) => sparsity_of(d.kernel.value.view()) >= min_sparsity,
        Layer::Conv2d(c) => {
            sparsity_of(c.kernel.value.view()) >= min_sparsity && !runs_direct(c, shape)
        }
        _ => false,
    }
}

fn kernel_sparsity(l: &Layer) -> f32 {
    match l {
        Layer::Dense(d) => sparsity_of(d.kernel.value.view()),
        Layer::Conv2d(c) => sparsity_of(c.kernel.value.view()),
        _ => 0.0,
    }
}

/// Runs `f` on a one-thread rayon pool: [`SparseSequential::predict`] runs its batches in
/// parallel, one per thread, so each kernel is timed as it runs there, on one core. Without a
/// pool (it could not be made) `f` runs where it is called.
fn on_one_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// `layers` on pare-tensor's inference graph, as `predict` runs them.
fn run_plain(m: &Sequential, h: ArrayD<f32>) -> ArrayD<f32> {
    let mut g = Graph::inference();
    let v = g.constant(h);
    let y = m.forward(&mut g, v);
    g.value(y).clone()
}

/// The input check of [`SparseSequential::forward`].
fn check_input(input_shape: &[usize], x: &ArrayViewD<'_, f32>) -> Result<()> {
    if x.ndim() != input_shape.len() + 1 || x.shape()[1..] != input_shape[..] {
        return Err(pare_tensor::TensorError::InputShape {
            layer: "model input".into(),
            expected: input_shape.to_vec(),
            found: x.shape().get(1..).unwrap_or(&[]).to_vec(),
        }
        .into());
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(pare_tensor::TensorError::NonFinite {
            what: "input data".into(),
            index,
        }
        .into());
    }
    Ok(())
}

/// Whether pare-tensor convolves `conv` directly on an input of per-example `shape` (the test
/// its graph applies), in which case the sparse path cannot pay.
fn runs_direct(conv: &Conv2d, shape: &[usize]) -> bool {
    let [kh, kw, _, _] = conv.kernel_shape();
    match *shape {
        [h, w, c] => Window::new([1, h, w, c], [kh, kw], conv.strides, conv.padding)
            .is_some_and(|win| shallow::applies(&win)),
        _ => false,
    }
}

fn activation_of(l: Option<&Layer>) -> Option<Activation> {
    match l {
        Some(Layer::ReLU(_)) => Some(Activation::Relu),
        Some(Layer::LeakyReLU(r)) => Some(Activation::LeakyRelu(r.alpha)),
        _ => None,
    }
}

impl SparseSequential {
    /// Plans `model`: every `Dense` layer, and every `Conv2d` layer with patches longer than
    /// [`shallow::MAX_PATCH`], whose kernel has at least `min_sparsity` zeros runs sparse. The
    /// model is copied; later changes to it do not show.
    ///
    /// # Errors
    /// [`PruneError::InvalidSparsity`] unless `0 <= min_sparsity < 1`;
    /// [`PruneError::Unsupported`] for a custom layer; [`PruneError::Tensor`] if the model does
    /// not chain; [`PruneError::NonFinite`] (in [`PruneError::InTensor`]) for a non-finite
    /// weight of a sparse layer.
    pub fn new(model: &Sequential, min_sparsity: f32) -> Result<SparseSequential> {
        validate_sparsity("min_sparsity", min_sparsity)?;
        SparseSequential::plan(model, |l, shape| eligible(l, shape, min_sparsity))
    }

    /// Plans `model` as [`new`](Self::new) does, then times every candidate layer on `probe`
    /// (a batch `[n, input_shape...]` of the size [`predict`](Self::predict) will be called
    /// with, ideally real inputs) both ways, sparse kernel and dense, each the median of 5 runs
    /// on one thread, and keeps dense wherever sparse is not faster: the model never runs
    /// slower than dense by more than the timing noise. [`report`](Self::report) says what
    /// was measured and chosen.
    ///
    /// ```
    /// use ndarray::Array4;
    /// use pare_prune::{SparseSequential, apply_mask, inference::Kernel, magnitude_mask};
    /// use pare_tensor::models;
    ///
    /// let mut model = models::small_cnn(0);
    /// let w = model.param_mut("dense.kernel").unwrap();
    /// let mask = magnitude_mask(w.value.view(), 0.9)?;
    /// apply_mask(w.value.view_mut(), mask.view())?;
    ///
    /// let probe = Array4::<f32>::from_elem((64, 28, 28, 1), 0.5).into_dyn();
    /// let sparse = SparseSequential::measured(&model, 0.5, probe.view())?;
    /// let dense = &sparse.report().layers[0];
    /// assert_eq!(dense.layer, "dense");
    /// assert_eq!(dense.chosen == Kernel::Sparse, dense.sparse_seconds < dense.dense_seconds);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new); [`PruneError::Tensor`] for a probe of the wrong shape, empty, or
    /// holding NaN or infinity.
    pub fn measured(
        model: &Sequential,
        min_sparsity: f32,
        probe: ArrayViewD<'_, f32>,
    ) -> Result<SparseSequential> {
        let candidates = SparseSequential::new(model, min_sparsity)?;
        check_input(&model.input_shape, &probe)?;
        let batch = probe.shape()[0];
        if batch == 0 {
            return Err(pare_tensor::TensorError::BadHyperParameter {
                name: "probe",
                value: "0 examples".into(),
                reason: "the probe batch must hold at least one example",
            }
            .into());
        }
        let timings = match &candidates.graph {
            Some(run) => time_graph_layers(model, run, probe.to_owned()),
            None => candidates.time_chain_layers(model, probe.to_owned()),
        };
        let chosen: Vec<&str> = timings
            .iter()
            .filter(|t| t.chosen == Kernel::Sparse)
            .map(|t| t.layer.as_str())
            .collect();
        let mut planned =
            SparseSequential::plan(model, |l, _| chosen.contains(&l.module().name()))?;
        planned.report = RuntimeReport {
            batch,
            runs: MEASURED_RUNS,
            layers: timings,
        };
        Ok(planned)
    }

    /// Both kernels timed on each sparse stage of a chain's plan, on its input from `probe`.
    fn time_chain_layers(&self, model: &Sequential, probe: ArrayD<f32>) -> Vec<LayerTiming> {
        let candidates = self;
        let mut timings = Vec::new();
        let mut h = probe;
        // Index in the model of the stage's first layer.
        let mut i = 0;
        for stage in &candidates.stages {
            let (op, kernel, activation, layers, name) = match stage {
                Stage::Plain(m) => {
                    h = run_plain(m, h);
                    i += m.layers.len();
                    continue;
                }
                Stage::Sparse {
                    name,
                    op,
                    kernel,
                    activation,
                    layers,
                } => (op, kernel, *activation, *layers, name),
            };
            let mut dense = Sequential::new(&h.shape()[1..]);
            dense.layers = model.layers[i..i + layers].to_vec();
            let (sparse_seconds, dense_seconds) = on_one_thread(|| {
                let s = median_seconds(MEASURED_RUNS, || {
                    std::hint::black_box(run_sparse(op, kernel, activation, h.clone()));
                });
                let d = median_seconds(MEASURED_RUNS, || {
                    std::hint::black_box(run_plain(&dense, h.clone()));
                });
                (s, d)
            });
            timings.push(LayerTiming {
                layer: name.clone(),
                sparsity: kernel_sparsity(&model.layers[i]),
                sparse_seconds,
                dense_seconds,
                chosen: if sparse_seconds < dense_seconds {
                    Kernel::Sparse
                } else {
                    Kernel::Dense
                },
            });
            h = run_plain(&dense, h);
            i += layers;
        }
        timings
    }

    /// Plans `model` with exactly the named `Dense` / `Conv2d` layers sparse, whatever their
    /// sparsity or shape: a choice made elsewhere, or a test that both kernels agree.
    ///
    /// # Errors
    /// [`PruneError::Unsupported`] for a name that is no layer of the model, or a layer that is
    /// not `Dense` or `Conv2d`; otherwise as [`new`](Self::new).
    pub fn with_sparse_layers<S: AsRef<str>>(
        model: &Sequential,
        names: &[S],
    ) -> Result<SparseSequential> {
        for name in names {
            let name = name.as_ref();
            match model.layers.iter().find(|l| l.module().name() == name) {
                Some(Layer::Dense(_) | Layer::Conv2d(_)) => {}
                found => {
                    return Err(PruneError::Unsupported {
                        layer: name.to_owned(),
                        reason: if found.is_some() {
                            "only Dense and Conv2d layers run sparse".into()
                        } else {
                            "no layer of that name".into()
                        },
                    });
                }
            }
        }
        SparseSequential::plan(model, |l, _| {
            matches!(l, Layer::Dense(_) | Layer::Conv2d(_))
                && names.iter().any(|n| n.as_ref() == l.module().name())
        })
    }

    /// What [`measured`](Self::measured) timed and chose (empty for the other constructors).
    pub fn report(&self) -> &RuntimeReport {
        &self.report
    }

    /// The plan with the `Dense` / `Conv2d` layers `sparse(layer, input shape)` picks on
    /// [`SparseDense`].
    fn plan(
        model: &Sequential,
        sparse: impl Fn(&Layer, &[usize]) -> bool,
    ) -> Result<SparseSequential> {
        crate::strip::check_copyable(model, "SparseSequential")?;
        let output_len = model.output_shape()?.iter().product();
        if !model.is_sequential() {
            return plan_graph(model, output_len, sparse);
        }
        let mut stages = Vec::new();
        let mut shape = model.input_shape.clone();
        let mut plain = Sequential::new(&shape);
        let mut i = 0;
        while i < model.layers.len() {
            let layer = &model.layers[i];
            let next_shape = layer.module().output_shape(&shape)?;
            let planned = match layer {
                Layer::Dense(d) if sparse(layer, &shape) => Some((
                    &d.name,
                    SparseOp::Dense,
                    &d.kernel.value,
                    &d.bias.value,
                    d.activation,
                )),
                Layer::Conv2d(c) if sparse(layer, &shape) => {
                    let [kh, kw, _, _] = c.kernel_shape();
                    let op = SparseOp::Conv {
                        window: [kh, kw],
                        strides: c.strides,
                        padding: c.padding,
                    };
                    Some((&c.name, op, &c.kernel.value, &c.bias.value, c.activation))
                }
                _ => None,
            };
            let Some((name, op, kernel, bias, mut activation)) = planned else {
                plain.layers.push(layer.clone());
                shape = next_shape;
                i += 1;
                continue;
            };
            let mut consumed = 1;
            if activation == Activation::Linear
                && let Some(a) = activation_of(model.layers.get(i + 1))
            {
                activation = a;
                consumed = 2;
            }
            let sparse = sparse_kernel(name, kernel, bias)?;
            if !plain.layers.is_empty() {
                stages.push(Stage::Plain(plain));
            }
            stages.push(Stage::Sparse {
                name: name.clone(),
                op,
                kernel: sparse,
                activation,
                layers: consumed,
            });
            for l in &model.layers[i..i + consumed] {
                shape = l.module().output_shape(&shape)?;
            }
            plain = Sequential::new(&shape);
            i += consumed;
        }
        if !plain.layers.is_empty() {
            stages.push(Stage::Plain(plain));
        }
        Ok(SparseSequential {
            input_shape: model.input_shape.clone(),
            output_len,
            stages,
            graph: None,
            report: RuntimeReport::default(),
        })
    }

    /// Names of the layers that run sparse, in order.
    pub fn sparse_layers(&self) -> Vec<&str> {
        if let Some(run) = &self.graph {
            return (run.model.layers.iter().zip(&run.sparse))
                .filter(|(_, s)| s.is_some())
                .map(|(l, _)| l.module().name())
                .collect();
        }
        self.stages
            .iter()
            .filter_map(|s| match s {
                Stage::Sparse { name, .. } => Some(name.as_str()),
                Stage::Plain(_) => None,
            })
            .collect()
    }

    /// The model's output for one batch `[n, input_shape...]`.
    ///
    /// # Errors
    /// [`PruneError::Tensor`] for a batch of the wrong shape or holding NaN or infinity.
    pub fn forward(&self, x: ArrayViewD<'_, f32>) -> Result<ArrayD<f32>> {
        check_input(&self.input_shape, &x)?;
        if let Some(run) = &self.graph {
            return Ok(run.run(x.to_owned(), &mut |_, _| {}));
        }
        let mut h = x.to_owned();
        for stage in &self.stages {
            h = match stage {
                Stage::Plain(m) => run_plain(m, h),
                Stage::Sparse {
                    op,
                    kernel,
                    activation,
                    ..
                } => run_sparse(op, kernel, *activation, h),
            };
        }
        Ok(h)
    }

    /// Logits `[n, classes]` of every example, `batch_size` at a time, batches in parallel on
    /// rayon's threads.
    ///
    /// # Errors
    /// [`PruneError::Tensor`] for a zero batch size or as [`SparseSequential::forward`].
    pub fn predict(&self, x: ArrayViewD<'_, f32>, batch_size: usize) -> Result<Array2<f32>> {
        if batch_size == 0 {
            return Err(pare_tensor::TensorError::BadHyperParameter {
                name: "batch_size",
                value: "0".into(),
                reason: "must be >= 1",
            }
            .into());
        }
        let n = x.shape().first().copied().unwrap_or(0);
        let mut out = Array2::zeros((n, self.output_len));
        // The sparse kernels are single-threaded: batches run in parallel instead.
        out.axis_chunks_iter_mut(Axis(0), batch_size)
            .into_par_iter()
            .enumerate()
            .try_for_each(|(i, mut rows)| {
                let start = i * batch_size;
                let end = start + rows.nrows();
                let y = self.forward(x.slice_axis(Axis(0), (start..end).into()))?;
                let y = y
                    .into_shape_with_order((end - start, self.output_len))
                    .expect("SparseSequential::predict: the output holds n · output_len values");
                rows.assign(&y);
                Ok::<(), PruneError>(())
            })?;
        Ok(out)
    }
}

/// A `Dense` / `Conv2d` kernel (output channel last) and bias as a [`SparseDense`].
fn sparse_kernel(name: &str, kernel: &ArrayD<f32>, bias: &ArrayD<f32>) -> Result<SparseDense> {
    let rows = kernel.len() / kernel.shape().last().copied().unwrap_or(1).max(1);
    let k2 = kernel
        .view()
        .into_shape_with_order((rows, *kernel.shape().last().unwrap_or(&0)))
        .map_err(|_| PruneError::BadRank {
            op: "SparseSequential",
            expected: "a contiguous kernel with the output channel last",
            shape: kernel.shape().to_vec(),
        })?;
    let b1 = bias
        .view()
        .into_dimensionality::<ndarray::Ix1>()
        .map_err(|_| PruneError::BadRank {
            op: "SparseSequential",
            expected: "a rank-1 bias",
            shape: bias.shape().to_vec(),
        })?;
    SparseDense::from_dense(k2, Some(b1)).map_err(|e| e.in_tensor(name))
}

/// The plan of a graph model: its layers in order, the `Dense` / `Conv2d` ones that
/// `sparse(layer, input shape)` picks on [`SparseDense`].
fn plan_graph(
    model: &Model,
    output_len: usize,
    sparse: impl Fn(&Layer, &[usize]) -> bool,
) -> Result<SparseSequential> {
    let shapes = model.node_shapes()?;
    let index: std::collections::HashMap<&str, usize> = (model.layers.iter().enumerate())
        .map(|(i, l)| (l.module().name(), i))
        .collect();
    let mut inputs = Vec::with_capacity(model.layers.len());
    let mut kernels = Vec::with_capacity(model.layers.len());
    for l in &model.layers {
        let name = l.module().name();
        let ins: Vec<Option<usize>> = (model.inputs_of(name).unwrap_or_default().iter())
            .map(|n| (*n != INPUT).then(|| index[n]))
            .collect();
        let shape = match ins.first() {
            Some(Some(j)) => &shapes[*j],
            _ => &model.input_shape,
        };
        let planned = match l {
            Layer::Dense(d) if sparse(l, shape) => Some((
                SparseOp::Dense,
                sparse_kernel(name, &d.kernel.value, &d.bias.value)?,
                d.activation,
            )),
            Layer::Conv2d(c) if sparse(l, shape) => {
                let [kh, kw, _, _] = c.kernel_shape();
                let op = SparseOp::Conv {
                    window: [kh, kw],
                    strides: c.strides,
                    padding: c.padding,
                };
                let k = sparse_kernel(name, &c.kernel.value, &c.bias.value)?;
                Some((op, k, c.activation))
            }
            _ => None,
        };
        inputs.push(ins);
        kernels.push(planned);
    }
    Ok(SparseSequential {
        input_shape: model.input_shape.clone(),
        output_len,
        stages: Vec::new(),
        graph: Some(GraphRun {
            model: model.clone(),
            inputs,
            sparse: kernels,
        }),
        report: RuntimeReport::default(),
    })
}

/// Both kernels timed on each sparse layer of a graph model's plan, on its input from
/// `probe` (the dense one as a one-layer model, as `predict` runs the layer).
fn time_graph_layers(model: &Model, run: &GraphRun, probe: ArrayD<f32>) -> Vec<LayerTiming> {
    let mut seen: Vec<(usize, ArrayD<f32>)> = Vec::new();
    run.run(probe, &mut |i, h| seen.push((i, h.clone())));
    seen.into_iter()
        .map(|(i, h)| {
            let (op, kernel, act) = run.sparse[i].as_ref().expect("tapped layers run sparse");
            let mut dense = Sequential::new(&h.shape()[1..]);
            dense.layers = vec![model.layers[i].clone()];
            let (sparse_seconds, dense_seconds) = on_one_thread(|| {
                let s = median_seconds(MEASURED_RUNS, || {
                    std::hint::black_box(run_sparse(op, kernel, *act, h.clone()));
                });
                let d = median_seconds(MEASURED_RUNS, || {
                    std::hint::black_box(run_plain(&dense, h.clone()));
                });
                (s, d)
            });
            LayerTiming {
                layer: model.layers[i].module().name().to_owned(),
                sparsity: kernel_sparsity(&model.layers[i]),
                sparse_seconds,
                dense_seconds,
                chosen: if sparse_seconds < dense_seconds {
                    Kernel::Sparse
                } else {
                    Kernel::Dense
                },
            }
        })
        .collect()
}

fn activate(y: &mut Array2<f32>, a: Activation) {
    match a {
        Activation::Linear => {}
        Activation::Relu => y.mapv_inplace(|v| v.max(0.0)),
        Activation::LeakyRelu(alpha) => y.mapv_inplace(|v| if v > 0.0 { v } else { alpha * v }),
    }
}

/// Runs one sparse layer. Shapes were checked when the model was planned, so a mismatch here
/// is a broken invariant.
fn run_sparse(op: &SparseOp, k: &SparseDense, act: Activation, h: ArrayD<f32>) -> ArrayD<f32> {
    match op {
        SparseOp::Dense => {
            let x = h
                .into_dimensionality::<Ix2>()
                .expect("SparseSequential: dense input is [n, in]");
            let mut y = k
                .forward(x.view())
                .expect("SparseSequential: dense input width checked at planning");
            activate(&mut y, act);
            y.into_dyn()
        }
        SparseOp::Conv {
            window,
            strides,
            padding,
        } => {
            let x = h
                .into_dimensionality::<Ix4>()
                .expect("SparseSequential: conv input is [n, h, w, c]");
            let (n, hh, ww, c) = x.dim();
            let win = Window::new([n, hh, ww, c], *window, *strides, *padding)
                .expect("SparseSequential: conv window checked at planning");
            let patches = im2col(x.view(), &win);
            let mut y = k
                .forward(patches.view())
                .expect("SparseSequential: patch length checked at planning");
            activate(&mut y, act);
            y.into_shape_with_order(IxDyn(&[n, win.oh, win.ow, k.out_features()]))
                .expect("SparseSequential: conv output holds n · oh · ow · out values")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{apply_mask, magnitude_mask};
    use approx::assert_abs_diff_eq;
    use ndarray::Array4;
    use pare_tensor::models::teacher_cnn;
    use pare_tensor::nn::{Dense, Flatten, ReLU};
    use pare_tensor::train::predict;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn prune_all(model: &mut Sequential, s: f32) {
        for p in model.params_mut() {
            if p.name.ends_with(".kernel") {
                let m = magnitude_mask(p.value.view(), s).unwrap();
                apply_mask(p.value.view_mut(), m.view()).unwrap();
            } else {
                // Non-zero biases, so a dropped bias would show.
                let len = p.value.len();
                p.value.iter_mut().enumerate().for_each(|(i, v)| {
                    *v = 0.05 * (i as f32 - len as f32 / 2.0);
                });
            }
        }
    }

    fn images(n: usize, seed: u64) -> ArrayD<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        Array4::from_shape_simple_fn((n, 28, 28, 1), || rng.random_range(0.0f32..1.0)).into_dyn()
    }

    fn max_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn matches_dense_predict_with_strided_same_convs_and_fused_activations() {
        let mut model = teacher_cnn(8, 16, 2);
        prune_all(&mut model, 0.8);
        let sparse = SparseSequential::new(&model, 0.5).unwrap();
        // The first conv's 3 × 3 × 1 patches are short: pare-tensor convolves it directly.
        assert_eq!(sparse.sparse_layers(), vec!["conv2d_1", "dense"]);
        for n in [1, 7, 17] {
            let x = images(n, n as u64);
            let want = predict(&model, x.view(), 64).unwrap();
            let got = sparse.predict(x.view(), 5).unwrap();
            assert_eq!(got.shape(), want.shape());
            assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-4);
        }
        // Threshold above every layer's sparsity: all plain, same numbers.
        let plain = SparseSequential::new(&model, 0.9).unwrap();
        assert!(plain.sparse_layers().is_empty());
        let x = images(3, 1);
        let d = max_diff(
            &plain.predict(x.view(), 2).unwrap(),
            &predict(&model, x.view(), 2).unwrap(),
        );
        assert_abs_diff_eq!(d, 0.0, epsilon = 1e-6);
    }

    #[test]
    fn relu_layers_fuse_into_sparse_dense_and_conv() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut model = Sequential::new(&[28, 28, 1])
            // 6 × 6 × 1 = 36-element patches: long enough to run sparse.
            .push(Conv2d::new("c", 1, 6, [6, 6], &mut rng).strides(3))
            .push(ReLU::new("r1"))
            .push(Flatten::new("f"))
            .push(Dense::new("h", 8 * 8 * 6, 40, &mut rng))
            .push(pare_tensor::nn::LeakyReLU::new("r2", 0.3))
            .push(Dense::new("o", 40, 10, &mut rng));
        prune_all(&mut model, 0.7);
        let sparse = SparseSequential::new(&model, 0.6).unwrap();
        assert_eq!(sparse.sparse_layers(), vec!["c", "h", "o"]);
        let x = images(9, 4);
        let want = predict(&model, x.view(), 4).unwrap();
        let got = sparse.predict(x.view(), 4).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-4);
    }

    #[test]
    fn measured_keeps_the_faster_kernel_and_the_outputs() {
        let mut model = teacher_cnn(8, 16, 2);
        prune_all(&mut model, 0.8);
        let m = SparseSequential::measured(&model, 0.5, images(32, 1).view()).unwrap();
        let r = m.report();
        assert_eq!((r.batch, r.runs), (32, MEASURED_RUNS));
        let names: Vec<&str> = r.layers.iter().map(|l| l.layer.as_str()).collect();
        assert_eq!(names, ["conv2d_1", "dense"]);
        for l in &r.layers {
            assert!(l.sparse_seconds > 0.0 && l.dense_seconds > 0.0, "{l:?}");
            assert_eq!(
                l.chosen == Kernel::Sparse,
                l.sparse_seconds < l.dense_seconds
            );
            assert!((0.79..0.81).contains(&l.sparsity), "{l:?}");
        }
        let chosen: Vec<&str> = r
            .layers
            .iter()
            .filter(|l| l.chosen == Kernel::Sparse)
            .map(|l| l.layer.as_str())
            .collect();
        assert_eq!(m.sparse_layers(), chosen);
        let x = images(7, 2);
        let d = max_diff(
            &m.predict(x.view(), 4).unwrap(),
            &predict(&model, x.view(), 4).unwrap(),
        );
        assert_abs_diff_eq!(d, 0.0, epsilon = 1e-4);
        let j = r.to_json();
        assert_eq!(j["batch"], 32);
        assert_eq!(j["layers"][1]["layer"], "dense");
        assert_eq!(j["layers"][1]["chosen"], r.layers[1].chosen.as_str());
        // Nothing sparse enough: nothing timed.
        let none = SparseSequential::measured(&model, 0.9, images(4, 1).view()).unwrap();
        assert!(none.report().layers.is_empty() && none.sparse_layers().is_empty());
    }

    #[test]
    fn either_kernel_forced_gives_the_same_outputs() {
        let mut model = teacher_cnn(8, 16, 2);
        prune_all(&mut model, 0.8);
        let x = images(9, 3);
        let want = predict(&model, x.view(), 4).unwrap();
        let choices: [&[&str]; 5] = [
            &[],
            &["conv2d"],
            &["conv2d_1"],
            &["dense"],
            &["conv2d", "conv2d_1", "dense"],
        ];
        for names in choices {
            let s = SparseSequential::with_sparse_layers(&model, names).unwrap();
            assert_eq!(s.sparse_layers(), names);
            assert!(s.report().layers.is_empty());
            let d = max_diff(&s.predict(x.view(), 4).unwrap(), &want);
            assert_abs_diff_eq!(d, 0.0, epsilon = 1e-4);
        }
        for bad in ["nope", "flatten"] {
            assert!(matches!(
                SparseSequential::with_sparse_layers(&model, &[bad]),
                Err(PruneError::Unsupported { .. })
            ));
        }
        let wrong = ArrayD::<f32>::zeros(IxDyn(&[2, 28, 27, 1]));
        let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 28, 28, 1]));
        for probe in [wrong, empty] {
            assert!(matches!(
                SparseSequential::measured(&model, 0.5, probe.view()),
                Err(PruneError::Tensor(_))
            ));
        }
        assert!(matches!(
            SparseSequential::measured(&model, 1.5, images(1, 0).view()),
            Err(PruneError::InvalidSparsity { .. })
        ));
    }

    #[test]
    fn graph_models_run_sparse_with_the_dense_outputs() {
        use pare_tensor::models::{resnet8, tiny_residual};
        for mut model in [resnet8(3), tiny_residual(3, 1)] {
            prune_all(&mut model, 0.8);
            let x = images(5, 7);
            let want = predict(&model, x.view(), 8).unwrap();
            let s = SparseSequential::new(&model, 0.5).unwrap();
            assert!(
                s.sparse_layers().contains(&"dense"),
                "{:?}",
                s.sparse_layers()
            );
            let d = max_diff(&s.predict(x.view(), 2).unwrap(), &want);
            assert_abs_diff_eq!(d, 0.0, epsilon = 1e-4);
            // Every conv and the head forced sparse: the same outputs.
            let all: Vec<&str> = (model.layers.iter())
                .filter(|l| matches!(l, Layer::Dense(_) | Layer::Conv2d(_)))
                .map(|l| l.module().name())
                .collect();
            let forced = SparseSequential::with_sparse_layers(&model, &all).unwrap();
            assert_eq!(forced.sparse_layers(), all);
            let d = max_diff(&forced.predict(x.view(), 3).unwrap(), &want);
            assert_abs_diff_eq!(d, 0.0, epsilon = 1e-4);
            // Measured: each candidate timed on its own input, the faster kept.
            let m = SparseSequential::measured(&model, 0.5, images(16, 1).view()).unwrap();
            let timed: Vec<&str> = m.report().layers.iter().map(|l| l.layer.as_str()).collect();
            assert_eq!(timed, s.sparse_layers());
            let chosen: Vec<&str> = (m.report().layers.iter())
                .filter(|l| {
                    assert!(l.sparse_seconds > 0.0 && l.dense_seconds > 0.0, "{l:?}");
                    l.chosen == Kernel::Sparse
                })
                .map(|l| l.layer.as_str())
                .collect();
            assert_eq!(m.sparse_layers(), chosen);
            let d = max_diff(&m.predict(x.view(), 4).unwrap(), &want);
            assert_abs_diff_eq!(d, 0.0, epsilon = 1e-4);
        }
    }

    #[test]
    fn errors() {
        let model = pare_tensor::models::small_cnn(0);
        assert!(matches!(
            SparseSequential::new(&model, 1.0),
            Err(PruneError::InvalidSparsity { .. })
        ));
        let s = SparseSequential::new(&model, 0.0).unwrap();
        let bad = ArrayD::<f32>::zeros(IxDyn(&[2, 28, 27, 1]));
        assert!(matches!(
            s.predict(bad.view(), 8),
            Err(PruneError::Tensor(_))
        ));
        let mut x = images(2, 0);
        x[[1, 3, 3, 0]] = f32::NAN;
        assert!(matches!(s.predict(x.view(), 8), Err(PruneError::Tensor(_))));
        assert!(matches!(
            s.predict(images(1, 0).view(), 0),
            Err(PruneError::Tensor(_))
        ));
        let mut nan = pare_tensor::models::small_cnn(0);
        nan.param_mut("dense.kernel").unwrap().value[[0, 0]] = f32::INFINITY;
        assert!(matches!(
            SparseSequential::new(&nan, 0.0),
            Err(PruneError::InTensor { .. })
        ));
    }
}
