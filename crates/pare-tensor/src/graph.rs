//! The autograd tape: an arena of nodes rebuilt every step.
//!
//! Nodes are pushed in evaluation order, which is a topological order, so [`Graph::backward`]
//! walks them in reverse with one `match` over [`Op`]. Gradients come back in a fresh
//! [`Grads`] keyed by parameter name: there is nothing to zero between steps. A node whose
//! inputs need no gradient is a constant, and backward skips it.

use crate::kernels::conv::{
    Padding, Window, conv2d_forward, conv2d_input_grad, conv2d_kernel_grad, shallow,
};
use crate::kernels::gemm::matmul;
use crate::kernels::pool::{
    argmax_fits, max_pool, max_pool_backward, max_pool_backward_argmax, max_pool_with_argmax,
};
use crate::kernels::{buffers, elementwise};
use crate::nn::Param;
use ndarray::{Array2, ArrayD, ArrayView2, ArrayView4, Axis, Ix2, Ix4, IxDyn, Zip};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_GRAPH: AtomicU32 = AtomicU32::new(1);

/// A value in a [`Graph`]: a cheap copyable handle (node index plus the graph's tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Var {
    index: u32,
    graph: u32,
}

/// An activation fused into a conv or dense node, so the bias add and the activation cost no
/// extra pass over memory and no extra node.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    Linear,
    /// max(x, 0).
    Relu,
    /// Leaky ReLU with the given negative slope.
    LeakyRelu(f32),
}

impl Activation {
    /// The activation of one value.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Linear => v,
            Activation::Relu => v.max(0.0),
            Activation::LeakyRelu(a) => {
                if v > 0.0 {
                    v
                } else {
                    a * v
                }
            }
        }
    }

    /// `g` times the activation's derivative, read off the output `y` (valid because every
    /// supported activation keeps the sign of its input for slopes >= 0).
    #[inline]
    pub(crate) fn backprop(self, g: f32, y: f32) -> f32 {
        match self {
            Activation::Linear => g,
            Activation::Relu => {
                if y <= 0.0 {
                    0.0
                } else {
                    g
                }
            }
            Activation::LeakyRelu(a) => {
                if y <= 0.0 {
                    g * a
                } else {
                    g
                }
            }
        }
    }

    /// Applies the activation in place.
    fn apply_inplace(self, y: &mut ArrayD<f32>) {
        if self == Activation::Linear {
            return;
        }
        match y.as_slice_mut() {
            Some(ys) => elementwise::map_inplace(ys, |v| self.apply(v)),
            None => y.mapv_inplace(|v| self.apply(v)),
        }
    }

    /// Multiplies `g` by the activation's derivative, read off the output `y`.
    fn backprop_inplace(self, g: &mut ArrayD<f32>, y: &ArrayD<f32>) {
        if self == Activation::Linear {
            return;
        }
        match (g.as_slice_mut(), y.as_slice()) {
            (Some(gs), Some(ys)) if gs.len() == ys.len() => {
                elementwise::zip_inplace(gs, ys, |g, y| self.backprop(g, y))
            }
            _ => Zip::from(g)
                .and(y)
                .for_each(|g, &y| *g = self.backprop(*g, y)),
        }
    }

    /// True when the derivative can be read off the output (see `backprop_inplace`).
    pub fn fusable(self) -> bool {
        match self {
            Activation::LeakyRelu(a) => a > 0.0 && a.is_finite(),
            _ => true,
        }
    }
}

/// Fake-quantization settings of a [`Graph::fake_quant`] node: per tensor (one scale) or per
/// channel along the last axis.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuantSpec {
    /// Scales, one per tensor or one per channel of the last axis.
    pub scale: Vec<f32>,
    /// Zero points, as many as scales.
    pub zero_point: Vec<i32>,
    /// Smallest integer level (e.g. -128, or -127 for symmetric weights).
    pub qmin: i32,
    /// Largest integer level (e.g. 127).
    pub qmax: i32,
}

/// The operation that produced a node, with what its backward pass needs.
#[derive(Debug)]
pub enum Op {
    /// Data that needs no gradient.
    Constant,
    /// A trainable parameter, by name.
    Param(String),
    /// `a · b` on 2-D values.
    MatMul(Var, Var),
    /// `act(x · kernel + bias)` on 2-D `x`, in one node.
    Dense {
        /// Input `[b, in]`.
        x: Var,
        /// Kernel `[in, out]`.
        kernel: Var,
        /// Optional bias `[out]`.
        bias: Option<Var>,
        /// Fused activation.
        act: Activation,
    },
    /// NHWC convolution by im2col + GEMM, with optional bias and fused activation. The patch
    /// matrix is made block by block and not kept (see
    /// [`crate::kernels::conv::conv2d_forward`]); convolutions with short patch rows (see
    /// [`crate::kernels::conv::shallow`]) run direct kernels instead.
    Conv2d {
        /// Input `[n, h, w, c]`.
        x: Var,
        /// Kernel `[kh, kw, c, out]`.
        kernel: Var,
        /// Optional bias `[out]`.
        bias: Option<Var>,
        /// Fused activation.
        act: Activation,
        /// Window geometry.
        win: Window,
    },
    /// `max_pool(act(conv2d(x, kernel) + bias))` in one node, when the pair fuses (see
    /// [`crate::kernels::conv::shallow::pool_fusable`]): the convolution's output is never
    /// stored, and backward visits only the patches that won a pool window.
    Conv2dMaxPool {
        /// Input `[n, h, w, c]`.
        x: Var,
        /// Kernel `[kh, kw, c, out]`.
        kernel: Var,
        /// Optional bias `[out]`.
        bias: Option<Var>,
        /// Fused activation (before the pool).
        act: Activation,
        /// Convolution window geometry.
        conv: Window,
        /// Pool window geometry (over the convolution's output).
        pool: Window,
        /// Winning window element per pooled output, as in [`Op::MaxPool`].
        argmax: Vec<u8>,
    },
    /// NHWC max-pool.
    MaxPool {
        /// Input.
        x: Var,
        /// Window geometry.
        win: Window,
        /// Winning window element per output, recorded in the forward pass so backward is a
        /// scatter (see [`crate::kernels::pool::max_pool_with_argmax`]); empty when not
        /// recorded, and backward re-scans the windows.
        argmax: Vec<u8>,
    },
    /// Adds a bias vector along the last axis.
    AddBias(Var, Var),
    /// max(x, 0).
    Relu(Var),
    /// x if x > 0 else alpha·x.
    LeakyRelu(Var, f32),
    /// Same data, new shape.
    Reshape(Var),
    /// Softmax over the last axis.
    Softmax(Var),
    /// Log-softmax over the last axis.
    LogSoftmax(Var),
    /// Mean sparse softmax cross-entropy of logits `[b, classes]`; keeps the softmax.
    SoftmaxCrossEntropy {
        /// Logits.
        logits: Var,
        /// Class index per row.
        labels: Vec<usize>,
        /// softmax(logits).
        probs: Array2<f32>,
    },
    /// Batch mean of KL(p ‖ q) from log-probabilities `[b, classes]`.
    KlDiv {
        /// log p (the target distribution).
        log_p: Var,
        /// log q.
        log_q: Var,
    },
    /// Mean of all elements.
    Mean(Var),
    /// Sum of all elements.
    Sum(Var),
    /// Element-wise `act(a + b)` (the activation fused in by `Graph::fuse_activation`).
    Add(Var, Var, Activation),
    /// Element-wise a - b.
    Sub(Var, Var),
    /// Element-wise a · b.
    Mul(Var, Var),
    /// c · x.
    Scale(Var, f32),
    /// x · mask with a constant 0/1 mask (pruning): masked weights get no gradient.
    MaskMul(Var, ArrayD<f32>),
    /// Quantize-dequantize with a straight-through gradient inside the representable range.
    FakeQuant(Var, FakeQuantSpec),
    /// Batch normalisation over the last axis (see [`Graph::batch_norm`]).
    BatchNorm {
        /// Input, channels last.
        x: Var,
        /// Scale `[c]`.
        gamma: Var,
        /// Offset `[c]`.
        beta: Var,
        /// The mean per channel the input was normalised with; backward recomputes the
        /// normalised input from it rather than keeping a copy.
        mean: Vec<f32>,
        /// `1 / sqrt(var + ε)` per channel.
        inv_std: Vec<f32>,
        /// True when mean and variance are the batch's own (training), so they depend on `x`.
        batch_stats: bool,
        /// Activation applied to the output (fused in by `Graph::fuse_activation`).
        act: Activation,
    },
    /// NHWC average pool, padding excluded from the count (TensorFlow's rule).
    AvgPool {
        /// Input.
        x: Var,
        /// Window geometry.
        win: Window,
    },
    /// Mean over the spatial axes of NHWC input, to `[n, c]`.
    GlobalAvgPool(Var),
    /// NHWC depthwise convolution, kernel `[kh, kw, c, multiplier]`, optional bias.
    DepthwiseConv2d {
        /// Input `[n, h, w, c]`.
        x: Var,
        /// Kernel `[kh, kw, c, m]`.
        kernel: Var,
        /// Optional bias `[c · m]`.
        bias: Option<Var>,
        /// Window geometry.
        win: Window,
    },
    /// An element-wise activation that is not fused into a conv or dense node.
    Pointwise(Var, crate::layer_ops::Pointwise),
    /// Inputs joined along the last axis (see [`Graph::concat`]).
    Concat(Vec<Var>),
}

struct Node {
    op: Op,
    value: ArrayD<f32>,
    needs_grad: bool,
}

/// A hook that rewrites a parameter as it enters the graph (a pruning mask, a fake-quant).
pub type ParamHook = Box<dyn Fn(&mut Graph, &str, Var) -> Var + Send + Sync>;

/// The tape. Build one per step, run the forward pass through its methods, call
/// [`Graph::backward`] once on the loss.
pub struct Graph {
    tag: u32,
    nodes: Vec<Node>,
    params: HashMap<String, Var>,
    masks: HashMap<String, ArrayD<f32>>,
    hooks: Vec<ParamHook>,
    training: bool,
    /// Keras' `training` argument for the layers: batch statistics and dropout (see
    /// [`Graph::set_training_layers`]).
    pub(crate) layers_training: bool,
    /// Seed of the random ops (dropout) and how many have drawn from it.
    pub(crate) seed: u64,
    pub(crate) random_ops: u64,
    /// New values of non-trainable state (moving statistics), applied after the step.
    pub(crate) state_updates: Vec<(String, ArrayD<f32>)>,
}

impl Default for Graph {
    fn default() -> Self {
        Graph::new()
    }
}

impl Drop for Graph {
    /// Hands the step's large buffers back to the pool for the next step.
    fn drop(&mut self) {
        for node in self.nodes.drain(..) {
            crate::kernels::buffers::give_array(node.value);
        }
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// Gradients of a loss with respect to each parameter that took part, by name.
#[derive(Debug, Default, Clone)]
pub struct Grads(HashMap<String, ArrayD<f32>>);

impl Drop for Grads {
    /// Hands the gradient buffers back to the pool for the next step.
    fn drop(&mut self) {
        for (_, g) in self.0.drain() {
            buffers::give_array(g);
        }
    }
}

impl Grads {
    /// Gradient of the parameter called `name`, if it took part in the loss.
    pub fn get(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.0.get(name)
    }
    /// Iterates over (name, gradient).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &ArrayD<f32>)> {
        self.0.iter()
    }
    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when no parameter received a gradient.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Multiplies every gradient by `factor` (gradient clipping).
    pub fn scale(&mut self, factor: f32) {
        for g in self.0.values_mut() {
            g.mapv_inplace(|v| v * factor);
        }
    }

    /// `Σ wᵢ · gradsᵢ`, summed in the given order (so the result is reproducible).
    pub fn weighted_sum(parts: impl IntoIterator<Item = (Grads, f32)>) -> Grads {
        let mut out: HashMap<String, ArrayD<f32>> = HashMap::new();
        for (mut g, w) in parts {
            for (name, mut v) in g.0.drain() {
                match out.get_mut(&name) {
                    Some(acc) => {
                        acc.scaled_add(w, &v);
                        buffers::give_array(v);
                    }
                    None => {
                        if w != 1.0 {
                            v.mapv_inplace(|x| x * w);
                        }
                        out.insert(name, v);
                    }
                }
            }
        }
        Grads(out)
    }

    /// Inserts or replaces a gradient.
    pub fn insert(&mut self, name: impl Into<String>, grad: ArrayD<f32>) {
        self.0.insert(name.into(), grad);
    }
}

fn same_shape(op: &str, a: &ArrayD<f32>, b: &ArrayD<f32>) {
    assert!(
        a.shape() == b.shape(),
        "{op}: shapes differ: {:?} vs {:?}",
        a.shape(),
        b.shape()
    );
}

/// Panics unless `bias` is 1-D with the length of the output's last axis.
fn check_bias(op: &str, out_shape: &[usize], bias: &ArrayD<f32>) {
    assert!(
        bias.ndim() == 1 && out_shape.last() == Some(&bias.len()),
        "{op}: output {out_shape:?} + bias {:?}",
        bias.shape()
    );
}

/// A 4-D (NHWC) view of a value whose rank the op has checked.
pub(crate) fn four(a: &ArrayD<f32>) -> ArrayView4<'_, f32> {
    a.view()
        .into_dimensionality::<Ix4>()
        .expect("NHWC value must be 4-D")
}

fn softmax_rows(x: ArrayView2<'_, f32>) -> Array2<f32> {
    let mut out = x.to_owned();
    for mut row in out.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
    }
    out
}

fn as_rows(x: &ArrayD<f32>) -> ArrayView2<'_, f32> {
    let last = *x.shape().last().expect("softmax: scalar input");
    x.view()
        .into_shape_with_order((x.len() / last.max(1), last))
        .expect("contiguous rows")
}

impl Graph {
    /// An empty training graph.
    pub fn new() -> Graph {
        let tag = NEXT_GRAPH.fetch_add(1, Ordering::Relaxed);
        Graph {
            tag,
            nodes: Vec::new(),
            params: HashMap::new(),
            masks: HashMap::new(),
            hooks: Vec::new(),
            training: true,
            layers_training: true,
            seed: crate::layer_ops::default_seed(tag),
            random_ops: 0,
            state_updates: Vec::new(),
        }
    }

    /// An inference graph: parameters enter as constants, so nothing is kept for backward;
    /// layers run in inference mode (moving statistics, no dropout).
    pub fn inference() -> Graph {
        let mut g = Graph::new();
        g.training = false;
        g.layers_training = false;
        g
    }

    /// True for a training graph.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True before anything is recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Multiplies the parameter `name` by `mask` wherever it enters this graph (pruning).
    pub fn set_mask(&mut self, name: &str, mask: ArrayD<f32>) {
        self.masks.insert(name.to_string(), mask);
    }

    /// Adds a hook run on every parameter as it enters the graph, after any mask.
    pub fn add_param_hook(&mut self, hook: ParamHook) {
        self.hooks.push(hook);
    }

    fn check(&self, v: Var) -> usize {
        assert_eq!(v.graph, self.tag, "Var from another graph used in this one");
        v.index as usize
    }

    pub(crate) fn needs(&self, v: Var) -> bool {
        self.nodes[self.check(v)].needs_grad
    }

    pub(crate) fn push(&mut self, op: Op, value: ArrayD<f32>, inputs: &[Var]) -> Var {
        // Every kernel reshapes its inputs as contiguous row-major data; a transposed or
        // sliced array from the user is copied into that layout once, here.
        let value = if value.is_standard_layout() {
            value
        } else {
            value.as_standard_layout().into_owned()
        };
        let needs_grad = match op {
            Op::Param(_) => true,
            Op::Constant => false,
            _ => inputs.iter().any(|&v| self.needs(v)),
        };
        // A node whose inputs are constant is itself a constant: drop what backward would need.
        let op = if needs_grad || matches!(op, Op::Param(_)) {
            op
        } else {
            Op::Constant
        };
        self.nodes.push(Node {
            op,
            value,
            needs_grad,
        });
        Var {
            index: (self.nodes.len() - 1) as u32,
            graph: self.tag,
        }
    }

    /// The value of a node.
    pub fn value(&self, v: Var) -> &ArrayD<f32> {
        &self.nodes[self.check(v)].value
    }

    /// Shape of a node's value.
    pub fn shape(&self, v: Var) -> &[usize] {
        self.value(v).shape()
    }

    /// Records data that needs no gradient (inputs, labels, a frozen teacher's outputs).
    pub fn constant(&mut self, value: ArrayD<f32>) -> Var {
        self.push(Op::Constant, value, &[])
    }

    /// Records a parameter. Recording the same name twice returns the same node. On an
    /// inference graph the parameter is a constant. Masks and hooks are applied here.
    pub fn param(&mut self, p: &Param) -> Var {
        if let Some(&v) = self.params.get(&p.name) {
            return v;
        }
        let mut v = if self.training {
            self.push(
                Op::Param(p.name.clone()),
                buffers::clone_array(&p.value),
                &[],
            )
        } else {
            self.constant(buffers::clone_array(&p.value))
        };
        if let Some(mask) = self.masks.get(&p.name).cloned() {
            v = self.mask_mul(v, mask);
        }
        if !self.hooks.is_empty() {
            let hooks = std::mem::take(&mut self.hooks);
            for hook in &hooks {
                v = hook(self, &p.name, v);
            }
            self.hooks = hooks;
        }
        self.params.insert(p.name.clone(), v);
        v
    }

    /// Matrix product of 2-D values.
    ///
    /// # Panics
    /// If either is not 2-D or the inner dimensions differ.
    pub fn matmul(&mut self, a: Var, b: Var) -> Var {
        let (av, bv) = (self.value(a), self.value(b));
        let (a2, b2) = (
            av.view()
                .into_dimensionality::<Ix2>()
                .expect("matmul: lhs must be 2-D"),
            bv.view()
                .into_dimensionality::<Ix2>()
                .expect("matmul: rhs must be 2-D"),
        );
        assert_eq!(
            a2.ncols(),
            b2.nrows(),
            "matmul: {:?} · {:?}",
            a2.shape(),
            b2.shape()
        );
        let out = matmul(a2, b2).into_dyn();
        self.push(Op::MatMul(a, b), out, &[a, b])
    }

    /// NHWC convolution of `x [n, h, w, c]` with `kernel [kh, kw, c, out]`.
    ///
    /// # Panics
    /// If the ranks or channel counts disagree, or a `valid` window does not fit.
    pub fn conv2d(&mut self, x: Var, kernel: Var, strides: [usize; 2], padding: Padding) -> Var {
        self.conv2d_fused(x, kernel, None, strides, padding, Activation::Linear)
    }

    /// `act(conv2d(x, kernel) + bias)` as one node.
    ///
    /// # Panics
    /// As [`Graph::conv2d`]; also if the bias length differs from the kernel's output
    /// channels or the activation is not [`Activation::fusable`].
    pub fn conv2d_fused(
        &mut self,
        x: Var,
        kernel: Var,
        bias: Option<Var>,
        strides: [usize; 2],
        padding: Padding,
        act: Activation,
    ) -> Var {
        assert!(act.fusable(), "conv2d: activation {act:?} cannot be fused");
        let (xv, kv) = (self.value(x), self.value(kernel));
        let xs: [usize; 4] = xv.shape().try_into().expect("conv2d: input must be NHWC");
        let ks: [usize; 4] = kv
            .shape()
            .try_into()
            .expect("conv2d: kernel must be [kh, kw, in, out]");
        assert_eq!(
            xs[3], ks[2],
            "conv2d: input {xs:?} vs kernel {ks:?}: channels differ"
        );
        let win = Window::new(xs, [ks[0], ks[1]], strides, padding)
            .unwrap_or_else(|| panic!("conv2d: window {ks:?} does not fit input {xs:?}"));
        let x4 = four(xv);
        let y = if shallow::applies(&win) {
            let b = bias.map(|b| self.value(b));
            if let Some(bv) = b {
                check_bias("conv2d", &[ks[3]], bv);
            }
            let b = b.map(|b| b.view().into_dimensionality().expect("1-D checked"));
            shallow::forward(x4, four(kv), b, act, &win).into_dyn()
        } else {
            let k2 = kv
                .view()
                .into_shape_with_order((win.patch_len(), ks[3]))
                .expect("contiguous");
            // Patch rows are made block by block in cache and not kept: backward makes them
            // again, which costs less than writing and re-reading the whole matrix.
            let mut y = conv2d_forward(x4, k2, &win).into_dyn();
            self.bias_act_inplace("conv2d", &mut y, bias, act);
            y.into_shape_with_order(IxDyn(&[win.n, win.oh, win.ow, ks[3]]))
                .expect("shape")
        };
        let op = Op::Conv2d {
            x,
            kernel,
            bias,
            act,
            win,
        };
        let mut inputs = vec![x, kernel];
        inputs.extend(bias);
        self.push(op, y, &inputs)
    }

    /// `max_pool(act(conv2d(x, kernel) + bias))`: one [`Op::Conv2dMaxPool`] node when the
    /// pair fuses (a shallow `valid` convolution followed by non-overlapping pool windows, as
    /// Keras' `Conv2D` → `MaxPooling2D(2)`), else [`Graph::conv2d_fused`] then
    /// [`Graph::max_pool`]. Same values either way.
    ///
    /// # Panics
    /// As [`Graph::conv2d_fused`] and [`Graph::max_pool`].
    pub fn conv2d_max_pool(
        &mut self,
        x: Var,
        kernel: Var,
        bias: Option<Var>,
        (strides, padding): ([usize; 2], Padding),
        act: Activation,
        (pool, pool_strides, pool_padding): ([usize; 2], [usize; 2], Padding),
    ) -> Var {
        let (xv, kv) = (self.value(x), self.value(kernel));
        let fused = match (
            <[usize; 4]>::try_from(xv.shape()),
            <[usize; 4]>::try_from(kv.shape()),
        ) {
            (Ok(xs), Ok(ks)) if xs[3] == ks[2] && act.fusable() => {
                Window::new(xs, [ks[0], ks[1]], strides, padding).and_then(|conv| {
                    let out = [conv.n, conv.oh, conv.ow, ks[3]];
                    Window::new(out, pool, pool_strides, pool_padding)
                        .filter(|p| shallow::pool_fusable(&conv, p))
                        .map(|p| (conv, p))
                })
            }
            _ => None,
        };
        let Some((conv, pool_win)) = fused else {
            let y = self.conv2d_fused(x, kernel, bias, strides, padding, act);
            return self.max_pool(y, pool, pool_strides, pool_padding);
        };
        let b = bias.map(|b| self.value(b));
        if let Some(bv) = b {
            check_bias("conv2d", &[pool_win.c], bv);
        }
        let b = b.map(|b| b.view().into_dimensionality().expect("1-D checked"));
        let (y, argmax) = shallow::forward_pooled(four(xv), four(kv), b, act, &conv, &pool_win);
        let op = Op::Conv2dMaxPool {
            x,
            kernel,
            bias,
            act,
            conv,
            pool: pool_win,
            argmax,
        };
        let mut inputs = vec![x, kernel];
        inputs.extend(bias);
        self.push(op, y.into_dyn(), &inputs)
    }

    /// `act(x · kernel + bias)` for `x [b, in]`, `kernel [in, out]`, as one node.
    ///
    /// # Panics
    /// If the shapes do not chain or the activation is not [`Activation::fusable`].
    pub fn dense(&mut self, x: Var, kernel: Var, bias: Option<Var>, act: Activation) -> Var {
        assert!(act.fusable(), "dense: activation {act:?} cannot be fused");
        let (xv, kv) = (self.value(x), self.value(kernel));
        let (x2, k2) = (
            xv.view()
                .into_dimensionality::<Ix2>()
                .expect("dense: input must be [b, in]"),
            kv.view()
                .into_dimensionality::<Ix2>()
                .expect("dense: kernel must be [in, out]"),
        );
        assert_eq!(
            x2.ncols(),
            k2.nrows(),
            "dense: x {:?} · kernel {:?}",
            x2.shape(),
            k2.shape()
        );
        let mut y = matmul(x2, k2).into_dyn();
        self.bias_act_inplace("dense", &mut y, bias, act);
        let mut inputs = vec![x, kernel];
        inputs.extend(bias);
        self.push(
            Op::Dense {
                x,
                kernel,
                bias,
                act,
            },
            y,
            &inputs,
        )
    }

    fn bias_act_inplace(&self, op: &str, y: &mut ArrayD<f32>, bias: Option<Var>, act: Activation) {
        if let Some(b) = bias {
            let bv = self.value(b);
            check_bias(op, y.shape(), bv);
            *y += bv;
        }
        act.apply_inplace(y);
    }

    /// NHWC max-pool.
    ///
    /// # Panics
    /// If `x` is not 4-D or a `valid` window does not fit.
    pub fn max_pool(
        &mut self,
        x: Var,
        pool: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> Var {
        let xv = self.value(x);
        let xs: [usize; 4] = xv.shape().try_into().expect("max_pool: input must be NHWC");
        let win = Window::new(xs, pool, strides, padding)
            .unwrap_or_else(|| panic!("max_pool: window {pool:?} does not fit input {xs:?}"));
        // Recording the arg-max costs the forward pass little and turns backward into a
        // scatter; an inference graph, or a constant input, needs no backward.
        let (y, argmax) = if self.training && self.needs(x) && argmax_fits(&win) {
            max_pool_with_argmax(four(xv), &win)
        } else {
            (max_pool(four(xv), &win), Vec::new())
        };
        self.push(Op::MaxPool { x, win, argmax }, y.into_dyn(), &[x])
    }

    /// `x + bias`, the bias broadcast along the last axis.
    ///
    /// # Panics
    /// If the bias is not 1-D with the length of `x`'s last axis.
    pub fn add_bias(&mut self, x: Var, bias: Var) -> Var {
        let (xv, bv) = (self.value(x), self.value(bias));
        assert!(
            bv.ndim() == 1 && xv.shape().last() == Some(&bv.len()),
            "add_bias: x {:?} + bias {:?}",
            xv.shape(),
            bv.shape()
        );
        let mut y = xv.clone();
        y += bv;
        self.push(Op::AddBias(x, bias), y, &[x, bias])
    }

    /// max(x, 0).
    pub fn relu(&mut self, x: Var) -> Var {
        let y = buffers::map_array(self.value(x), |v| v.max(0.0));
        self.push(Op::Relu(x), y, &[x])
    }

    /// `act` applied to `x`'s own value in place when `x` is the last node recorded and an op
    /// that can carry a fused activation (a training BatchNorm or Add with none yet): then `x`
    /// itself is the activated value, and no node or activation-sized buffer is added. `None`
    /// when it does not apply.
    ///
    /// Values are otherwise never changed once recorded; this is sound only because every
    /// node recorded before `x` has already read `x`'s value if it needed it (there is none
    /// after it), and the caller must not use `x`'s pre-activation value afterwards. The ops
    /// chosen read only their output, never their pre-activation value, in backward.
    pub(crate) fn fuse_activation(&mut self, x: Var, act: Activation) -> Option<Var> {
        let i = self.check(x);
        if i + 1 != self.nodes.len() || !act.fusable() || act == Activation::Linear {
            return None;
        }
        let node = &mut self.nodes[i];
        match &mut node.op {
            Op::BatchNorm { act: a, .. } | Op::Add(_, _, a) if *a == Activation::Linear => {
                *a = act;
            }
            _ => return None,
        }
        act.apply_inplace(&mut node.value);
        Some(x)
    }

    /// Leaky ReLU with slope `alpha` below zero (Keras' default alpha is 0.3; the teacher
    /// uses 0.2).
    pub fn leaky_relu(&mut self, x: Var, alpha: f32) -> Var {
        let y = self.value(x).mapv(|v| if v > 0.0 { v } else { alpha * v });
        self.push(Op::LeakyRelu(x, alpha), y, &[x])
    }

    /// Same data in a new shape.
    ///
    /// # Panics
    /// If the element counts differ.
    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Var {
        let xv = self.value(x);
        if xv.shape() == shape {
            // Values are immutable: the same node serves (Keras' Reshape to the input's own
            // shape, as the small CNN's first layer does, costs no copy).
            return x;
        }
        // Values are standard layout (see `push`), so a pooled copy reshapes in place.
        let y = buffers::clone_array(xv)
            .into_shape_with_order(IxDyn(shape))
            .unwrap_or_else(|_| panic!("reshape: {:?} to {shape:?}", xv.shape()));
        self.push(Op::Reshape(x), y, &[x])
    }

    /// Softmax over the last axis.
    pub fn softmax(&mut self, x: Var) -> Var {
        let xv = self.value(x);
        let y = softmax_rows(as_rows(xv))
            .into_shape_with_order(xv.raw_dim())
            .expect("shape");
        self.push(Op::Softmax(x), y, &[x])
    }

    /// Log-softmax over the last axis, computed as `x - max - log Σ exp(x - max)` so it stays
    /// finite for large logits.
    pub fn log_softmax(&mut self, x: Var) -> Var {
        let xv = self.value(x);
        let mut y = as_rows(xv).to_owned();
        for mut row in y.rows_mut() {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let lse = max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
            row.mapv_inplace(|v| v - lse);
        }
        let y = y.into_shape_with_order(xv.raw_dim()).expect("shape");
        self.push(Op::LogSoftmax(x), y, &[x])
    }

    /// Mean over the batch of `-log softmax(logits)[label]` (Keras'
    /// `SparseCategoricalCrossentropy(from_logits=True)`), via a stable log-sum-exp.
    ///
    /// # Panics
    /// If `logits` is not `[b, classes]`, the label count is not `b`, or a label is out of
    /// range (check user labels before: [`crate::train`] does).
    pub fn softmax_cross_entropy(&mut self, logits: Var, labels: &[usize]) -> Var {
        let lv = self.value(logits);
        let l2 = lv
            .view()
            .into_dimensionality::<Ix2>()
            .expect("softmax_cross_entropy: [b, classes]");
        assert_eq!(
            l2.nrows(),
            labels.len(),
            "softmax_cross_entropy: {:?} vs {} labels",
            l2.shape(),
            labels.len()
        );
        let mut loss = 0f64;
        for (row, &y) in l2.rows().into_iter().zip(labels) {
            assert!(
                y < row.len(),
                "softmax_cross_entropy: label {y} for {} classes",
                row.len()
            );
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let lse = max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
            loss += (lse - row[y]) as f64;
        }
        let probs = softmax_rows(l2);
        let value = ArrayD::from_elem(IxDyn(&[]), (loss / labels.len().max(1) as f64) as f32);
        let op = Op::SoftmaxCrossEntropy {
            logits,
            labels: labels.to_vec(),
            probs,
        };
        self.push(op, value, &[logits])
    }

    /// Batch mean of KL(p ‖ q) = Σ p (log p − log q), from log-probabilities (Keras'
    /// `KLDivergence` with its default sum-over-batch-size reduction).
    pub fn kl_div(&mut self, log_p: Var, log_q: Var) -> Var {
        let (lp, lq) = (self.value(log_p), self.value(log_q));
        same_shape("kl_div", lp, lq);
        let rows = as_rows(lp).nrows().max(1);
        let total: f64 = Zip::from(lp)
            .and(lq)
            .fold(0f64, |acc, &a, &b| acc + (a.exp() * (a - b)) as f64);
        let value = ArrayD::from_elem(IxDyn(&[]), (total / rows as f64) as f32);
        self.push(Op::KlDiv { log_p, log_q }, value, &[log_p, log_q])
    }

    /// Mean of all elements (a scalar).
    pub fn mean(&mut self, x: Var) -> Var {
        let xv = self.value(x);
        let m = xv.iter().map(|&v| v as f64).sum::<f64>() / xv.len().max(1) as f64;
        self.push(Op::Mean(x), ArrayD::from_elem(IxDyn(&[]), m as f32), &[x])
    }

    /// Sum of all elements (a scalar).
    pub fn sum(&mut self, x: Var) -> Var {
        let s = self.value(x).iter().map(|&v| v as f64).sum::<f64>();
        self.push(Op::Sum(x), ArrayD::from_elem(IxDyn(&[]), s as f32), &[x])
    }

    /// Element-wise a + b (same shapes).
    pub fn add(&mut self, a: Var, b: Var) -> Var {
        let (av, bv) = (self.value(a), self.value(b));
        same_shape("add", av, bv);
        let y = buffers::zip_map(av, bv, |a, b| a + b);
        self.push(Op::Add(a, b, Activation::Linear), y, &[a, b])
    }

    /// Element-wise a − b (same shapes).
    pub fn sub(&mut self, a: Var, b: Var) -> Var {
        let (av, bv) = (self.value(a), self.value(b));
        same_shape("sub", av, bv);
        let y = av - bv;
        self.push(Op::Sub(a, b), y, &[a, b])
    }

    /// Element-wise a · b (same shapes).
    pub fn mul(&mut self, a: Var, b: Var) -> Var {
        let (av, bv) = (self.value(a), self.value(b));
        same_shape("mul", av, bv);
        let y = av * bv;
        self.push(Op::Mul(a, b), y, &[a, b])
    }

    /// c · x.
    pub fn scale(&mut self, x: Var, c: f32) -> Var {
        let y = self.value(x) * c;
        self.push(Op::Scale(x, c), y, &[x])
    }

    /// x · mask, the mask a constant (pruning).
    pub fn mask_mul(&mut self, x: Var, mask: ArrayD<f32>) -> Var {
        let xv = self.value(x);
        same_shape("mask_mul", xv, &mask);
        let y = xv * &mask;
        self.push(Op::MaskMul(x, mask), y, &[x])
    }

    /// Simulated quantization: `(clamp(round(x / s) + z, qmin, qmax) − z) · s`, rounding half
    /// away from zero as TFLite does. The gradient passes straight through where `x` maps
    /// inside `[qmin, qmax]` and is zero outside (TensorFlow's `FakeQuantWithMinMaxVars`).
    ///
    /// # Panics
    /// If the spec is per channel and its length differs from the last axis.
    pub fn fake_quant(&mut self, x: Var, spec: FakeQuantSpec) -> Var {
        let xv = self.value(x);
        let channels = spec.scale.len();
        let last = xv.shape().last().copied().unwrap_or(1);
        assert!(
            channels == 1 || channels == last,
            "fake_quant: {channels} scales for shape {:?}",
            xv.shape()
        );
        assert_eq!(
            channels,
            spec.zero_point.len(),
            "fake_quant: scales vs zero points"
        );
        let mut y = xv.clone();
        let per = channels > 1;
        for (i, v) in y.iter_mut().enumerate() {
            let c = if per { i % last } else { 0 };
            let (s, z) = (spec.scale[c], spec.zero_point[c]);
            let q = ((*v / s).round() as i64 + z as i64).clamp(spec.qmin as i64, spec.qmax as i64);
            *v = (q - z as i64) as f32 * s;
        }
        self.push(Op::FakeQuant(x, spec), y, &[x])
    }

    /// Gradients of the scalar `loss` with respect to every parameter that took part.
    ///
    /// # Panics
    /// If `loss` is not a scalar.
    pub fn backward(&self, loss: Var) -> Grads {
        let li = self.check(loss);
        assert!(
            self.nodes[li].value.len() == 1,
            "backward: loss must be a scalar, got {:?}",
            self.nodes[li].value.shape()
        );
        let mut grads: Vec<Option<ArrayD<f32>>> = (0..self.nodes.len()).map(|_| None).collect();
        grads[li] = Some(ArrayD::ones(self.nodes[li].value.raw_dim()));
        let mut out = Grads::default();
        for i in (0..=li).rev() {
            let Some(g) = grads[i].take() else { continue };
            let node = &self.nodes[i];
            if !node.needs_grad {
                continue;
            }
            self.backward_node(node, g, &mut grads, &mut out);
        }
        out
    }

    fn acc(&self, grads: &mut [Option<ArrayD<f32>>], v: Var, g: ArrayD<f32>) {
        let i = v.index as usize;
        if !self.nodes[i].needs_grad {
            return;
        }
        match &mut grads[i] {
            Some(existing) => {
                match (existing.as_slice_mut(), g.as_slice()) {
                    (Some(e), Some(s)) if e.len() == s.len() => {
                        elementwise::zip_inplace(e, s, |a, b| a + b)
                    }
                    _ => *existing += &g,
                }
                buffers::give_array(g);
            }
            slot => *slot = Some(g),
        }
    }

    fn backward_node(
        &self,
        node: &Node,
        g: ArrayD<f32>,
        grads: &mut [Option<ArrayD<f32>>],
        out: &mut Grads,
    ) {
        let val = |v: Var| &self.nodes[v.index as usize].value;
        let needs = |v: Var| self.nodes[v.index as usize].needs_grad;
        match &node.op {
            Op::Constant => {}
            Op::Param(name) => match out.0.get_mut(name) {
                Some(e) => *e += &g,
                None => {
                    out.0.insert(name.clone(), g);
                }
            },
            Op::MatMul(a, b) => {
                let g2 = g.view().into_dimensionality::<Ix2>().expect("matmul grad");
                if needs(*a) {
                    let bv = val(*b).view().into_dimensionality::<Ix2>().expect("2-D");
                    self.acc(grads, *a, matmul(g2, bv.t()).into_dyn());
                }
                if needs(*b) {
                    let av = val(*a).view().into_dimensionality::<Ix2>().expect("2-D");
                    self.acc(grads, *b, matmul(av.t(), g2).into_dyn());
                }
                buffers::give_array(g);
            }
            Op::Dense {
                x,
                kernel,
                bias,
                act,
            } => {
                let mut g = g;
                act.backprop_inplace(&mut g, &node.value);
                let g2 = g.view().into_dimensionality::<Ix2>().expect("dense grad");
                if let Some(b) = bias.filter(|b| needs(*b)) {
                    self.acc(grads, b, g2.sum_axis(Axis(0)).into_dyn());
                }
                if needs(*x) {
                    let kv = val(*kernel)
                        .view()
                        .into_dimensionality::<Ix2>()
                        .expect("2-D");
                    self.acc(grads, *x, matmul(g2, kv.t()).into_dyn());
                }
                if needs(*kernel) {
                    let xv = val(*x).view().into_dimensionality::<Ix2>().expect("2-D");
                    self.acc(grads, *kernel, matmul(xv.t(), g2).into_dyn());
                }
                buffers::give_array(g);
            }
            Op::Conv2d {
                x,
                kernel,
                bias,
                act,
                win,
            } => {
                let mut g = if g.is_standard_layout() {
                    g
                } else {
                    g.as_standard_layout().into_owned()
                };
                let kv = val(*kernel);
                let oc = kv.shape()[3];
                let bias = bias.filter(|b| needs(*b));
                if shallow::applies(win) && (needs(*kernel) || bias.is_some()) {
                    // Direct kernels: patch values come from the input, no patch matrix.
                    let gs = g.as_slice_mut().expect("standard layout");
                    let ys = node.value.as_slice().expect("standard layout");
                    let (gk, gb) = shallow::backward_filter(four(val(*x)), ys, gs, *act, win, oc);
                    if let Some(b) = bias {
                        self.acc(grads, b, gb.into_dyn());
                    }
                    if needs(*kernel) {
                        self.acc(grads, *kernel, gk.into_dyn());
                    }
                } else {
                    act.backprop_inplace(&mut g, &node.value);
                    let g2 = g
                        .view()
                        .into_shape_with_order((win.rows(), oc))
                        .expect("conv2d grad");
                    if let Some(b) = bias {
                        self.acc(grads, b, g2.sum_axis(Axis(0)).into_dyn());
                    }
                    if needs(*kernel) {
                        let gk = conv2d_kernel_grad(four(val(*x)), g2, win)
                            .into_shape_with_order(kv.raw_dim())
                            .expect("kernel shape");
                        self.acc(grads, *kernel, gk);
                    }
                }
                if needs(*x) {
                    let g2 = g
                        .view()
                        .into_shape_with_order((win.rows(), oc))
                        .expect("conv2d grad");
                    let k2 = kv
                        .view()
                        .into_shape_with_order((win.patch_len(), oc))
                        .expect("2-D");
                    self.acc(grads, *x, conv2d_input_grad(g2, k2, win).into_dyn());
                }
                buffers::give_array(g);
            }
            Op::Conv2dMaxPool {
                x,
                kernel,
                bias,
                act,
                conv,
                pool,
                argmax,
            } => {
                let mut g = if g.is_standard_layout() {
                    g
                } else {
                    g.as_standard_layout().into_owned()
                };
                // The pooled value is the convolution output that won: the activation's
                // derivative there is read off it.
                act.backprop_inplace(&mut g, &node.value);
                let bias = bias.filter(|b| needs(*b));
                if needs(*kernel) || bias.is_some() {
                    let gs = g.as_slice().expect("standard layout");
                    let (gk, gb) =
                        shallow::backward_filter_pooled(four(val(*x)), gs, argmax, conv, pool);
                    if let Some(b) = bias {
                        self.acc(grads, b, gb.into_dyn());
                    }
                    if needs(*kernel) {
                        self.acc(grads, *kernel, gk.into_dyn());
                    }
                }
                if needs(*x) {
                    // The convolution output's gradient (zero off the arg-max), then the
                    // GEMM path's input gradient.
                    let gz = max_pool_backward_argmax(argmax, four(&g), pool);
                    let oc = pool.c;
                    let g2 = gz
                        .view()
                        .into_shape_with_order((conv.rows(), oc))
                        .expect("conv2d grad");
                    let k2 = val(*kernel)
                        .view()
                        .into_shape_with_order((conv.patch_len(), oc))
                        .expect("2-D");
                    self.acc(grads, *x, conv2d_input_grad(g2, k2, conv).into_dyn());
                    buffers::give_array(gz);
                }
                buffers::give_array(g);
            }
            Op::MaxPool { x, win, argmax } => {
                let gx = if argmax.is_empty() {
                    max_pool_backward(four(val(*x)), four(&node.value), four(&g), win)
                } else {
                    max_pool_backward_argmax(argmax, four(&g), win)
                };
                buffers::give_array(g);
                self.acc(grads, *x, gx.into_dyn());
            }
            Op::AddBias(x, b) => {
                if needs(*b) {
                    let rows = as_rows(&g);
                    self.acc(grads, *b, rows.sum_axis(Axis(0)).into_dyn());
                }
                self.acc(grads, *x, g);
            }
            Op::Relu(x) => {
                let mut g = g;
                Activation::Relu.backprop_inplace(&mut g, &node.value);
                self.acc(grads, *x, g);
            }
            Op::LeakyRelu(x, alpha) => {
                let mut g = g;
                Zip::from(&mut g).and(val(*x)).for_each(|g, &v| {
                    if v <= 0.0 {
                        *g *= alpha
                    }
                });
                self.acc(grads, *x, g);
            }
            Op::Reshape(x) => {
                let g = g
                    .into_shape_with_order(val(*x).raw_dim())
                    .expect("reshape grad");
                self.acc(grads, *x, g);
            }
            Op::Softmax(x) => {
                // dx = y ⊙ (g − Σ g·y)
                let y = as_rows(&node.value);
                let mut gx = as_rows(&g).to_owned();
                for (mut gr, yr) in gx.rows_mut().into_iter().zip(y.rows()) {
                    let dot = gr.dot(&yr);
                    Zip::from(&mut gr)
                        .and(&yr)
                        .for_each(|g, &y| *g = y * (*g - dot));
                }
                self.acc(
                    grads,
                    *x,
                    gx.into_shape_with_order(node.value.raw_dim())
                        .expect("shape"),
                );
            }
            Op::LogSoftmax(x) => {
                // dx = g − softmax · Σ g
                let y = as_rows(&node.value);
                let mut gx = as_rows(&g).to_owned();
                for (mut gr, yr) in gx.rows_mut().into_iter().zip(y.rows()) {
                    let s = gr.sum();
                    Zip::from(&mut gr)
                        .and(&yr)
                        .for_each(|g, &y| *g -= y.exp() * s);
                }
                self.acc(
                    grads,
                    *x,
                    gx.into_shape_with_order(node.value.raw_dim())
                        .expect("shape"),
                );
            }
            Op::SoftmaxCrossEntropy {
                logits,
                labels,
                probs,
            } => {
                let scale = g.iter().next().copied().unwrap_or(0.0) / labels.len().max(1) as f32;
                let mut gx = probs.clone();
                for (mut row, &y) in gx.rows_mut().into_iter().zip(labels) {
                    row[y] -= 1.0;
                    row *= scale;
                }
                self.acc(grads, *logits, gx.into_dyn());
            }
            Op::KlDiv { log_p, log_q } => {
                let s = g.iter().next().copied().unwrap_or(0.0)
                    / as_rows(val(*log_p)).nrows().max(1) as f32;
                let (lp, lq) = (val(*log_p), val(*log_q));
                if needs(*log_q) {
                    self.acc(grads, *log_q, lp.mapv(|a| -s * a.exp()));
                }
                if needs(*log_p) {
                    let mut gp = lp.clone();
                    Zip::from(&mut gp)
                        .and(lq)
                        .for_each(|a, &b| *a = s * a.exp() * (*a - b + 1.0));
                    self.acc(grads, *log_p, gp);
                }
            }
            Op::Mean(x) => {
                let xv = val(*x);
                let s = g.iter().next().copied().unwrap_or(0.0) / xv.len().max(1) as f32;
                self.acc(grads, *x, ArrayD::from_elem(xv.raw_dim(), s));
            }
            Op::Sum(x) => {
                let s = g.iter().next().copied().unwrap_or(0.0);
                self.acc(grads, *x, ArrayD::from_elem(val(*x).raw_dim(), s));
            }
            Op::Add(a, b, act) => {
                let mut g = g;
                act.backprop_inplace(&mut g, &node.value);
                if needs(*b) {
                    self.acc(grads, *b, buffers::clone_array(&g));
                }
                self.acc(grads, *a, g);
            }
            Op::Sub(a, b) => {
                if needs(*b) {
                    self.acc(grads, *b, -&g);
                }
                self.acc(grads, *a, g);
            }
            Op::Mul(a, b) => {
                if needs(*a) {
                    self.acc(grads, *a, &g * val(*b));
                }
                if needs(*b) {
                    self.acc(grads, *b, &g * val(*a));
                }
            }
            Op::Scale(x, c) => self.acc(grads, *x, g * *c),
            Op::MaskMul(x, mask) => self.acc(grads, *x, g * mask),
            Op::FakeQuant(x, spec) => {
                let xv = val(*x);
                let last = xv.shape().last().copied().unwrap_or(1);
                let per = spec.scale.len() > 1;
                let mut g = g;
                for (i, (gv, &v)) in g.iter_mut().zip(xv.iter()).enumerate() {
                    let c = if per { i % last } else { 0 };
                    let (s, z) = (spec.scale[c], spec.zero_point[c] as f32);
                    let (lo, hi) = ((spec.qmin as f32 - z) * s, (spec.qmax as f32 - z) * s);
                    if v < lo || v > hi {
                        *gv = 0.0;
                    }
                }
                self.acc(grads, *x, g);
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                mean,
                inv_std,
                batch_stats,
                act,
            } => {
                let saved = crate::layer_ops::BatchNormSaved {
                    x: val(*x),
                    y: &node.value,
                    mean,
                    inv_std,
                    gamma: val(*gamma),
                    act: *act,
                    batch_stats: *batch_stats,
                };
                let (gx, gg, gb) = crate::layer_ops::batch_norm_backward(g, &saved, needs(*x));
                if needs(*gamma) {
                    self.acc(grads, *gamma, gg);
                }
                if needs(*beta) {
                    self.acc(grads, *beta, gb);
                }
                if let Some(gx) = gx {
                    self.acc(grads, *x, gx);
                }
            }
            Op::AvgPool { x, win } => {
                let gx = crate::kernels::avgpool::avg_pool_backward(four(&g), win);
                self.acc(grads, *x, gx.into_dyn());
            }
            Op::GlobalAvgPool(x) => {
                let gx = crate::kernels::avgpool::global_avg_pool_backward(
                    g.view().into_dimensionality::<Ix2>().expect("[n, c]"),
                    val(*x).shape(),
                );
                self.acc(grads, *x, gx.into_dyn());
            }
            Op::DepthwiseConv2d {
                x,
                kernel,
                bias,
                win,
            } => {
                let gv = four(&g);
                if let Some(b) = bias.filter(|b| needs(*b)) {
                    let c = gv.shape()[3];
                    let gb = g
                        .view()
                        .into_shape_with_order((g.len() / c.max(1), c))
                        .expect("contiguous")
                        .sum_axis(Axis(0));
                    self.acc(grads, b, gb.into_dyn());
                }
                let (gx, gk) = crate::kernels::depthwise::depthwise_backward(
                    four(val(*x)),
                    four(val(*kernel)),
                    gv,
                    win,
                    needs(*x),
                    needs(*kernel),
                );
                if let Some(gk) = gk {
                    self.acc(grads, *kernel, gk.into_dyn());
                }
                if let Some(gx) = gx {
                    self.acc(grads, *x, gx.into_dyn());
                }
            }
            Op::Pointwise(x, f) => {
                let mut g = g;
                f.backprop_inplace(&mut g, val(*x), &node.value);
                self.acc(grads, *x, g);
            }
            Op::Concat(parts) => {
                let widths: Vec<usize> = parts
                    .iter()
                    .map(|p| *val(*p).shape().last().expect("concat: rank >= 1"))
                    .collect();
                let split = crate::functional::split_last_axis(&g, &widths);
                for (p, gp) in parts.iter().zip(split) {
                    if needs(*p) {
                        self.acc(grads, *p, gp);
                    }
                }
            }
        }
    }
}
