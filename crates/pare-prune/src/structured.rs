//! Structured pruning made real: removing whole channels from a model, a chain or a graph.
//!
//! After channel pruning ([`MaskKind::Channel`](crate::MaskKind::Channel) in a
//! [`PruneCallback`](crate::PruneCallback)) the pruned filters of a conv layer, or units of a
//! dense layer, are all-zero kernel slices with a zero bias: their output is exactly zero after
//! any of pare's activations (ReLU, leaky ReLU, linear) and max-pooling. Cutting them out gives
//! a smaller dense model with the same outputs, which runs faster with no sparse kernel at all.
//!
//! Unstructured magnitude pruning kills channels too: at 80 % the small CNN's 108-weight conv
//! kernel keeps 22 weights, and typically five or six of its twelve filters lose every one. Such a
//! filter outputs its bias everywhere, and when that bias is negative a ReLU turns it into an
//! exact zero, so it is just as dead, and so are the ~19 % of the next layer's surviving weights
//! that read it. [`live_channels`] counts a channel dead whenever its kernel slice is zero and its
//! bias comes out of the layers between it and every layer that reads it as exactly zero.
//!
//! A channel is followed from the `Conv2d` or `Dense` layer that makes it (its *producer*)
//! along the model's wiring to the layers that read it (its *consumers*, the next `Conv2d`s and
//! `Dense`s):
//!
//! * through the layers that act per channel: the activations, dropout, the max, average and
//!   global average pools, BatchNorm (which loses entry `c` of its four vectors) and depthwise
//!   convs (which lose input channel `c` and the outputs made from it);
//! * through a `Flatten` of an `[h, w, C]` map, after which channel `c` is every feature
//!   `(y · w + x) · C + c` (NHWC flattening order);
//! * through a `Concatenate`, at its input's offset;
//! * through an `Add`: the inputs of an add share their channels, so channel `c` of every
//!   producer feeding it is one channel. It can be removed only in all of them at once (and
//!   [`live_channels`] removes it only when it is dead in all of them).
//!
//! A consumer conv loses slice `c` of its kernel's input axis (axis 2 of `[kh, kw, in, out]`), a
//! dense layer the kernel rows that read the channel. A channel that reaches a `Reshape`, a
//! `Softmax` (which mixes channels), a custom layer or the model's output, or that is added to
//! the model's input, cannot be traced, and removing it is an error.
//!
//! A zero filter before a BatchNorm outputs the BatchNorm's offset, a constant that is rarely
//! zero, so [`live_channels`] keeps it; [`fold_constant_channels`] removes it anyway, adding the
//! constant's contribution to its consumers' biases.

use std::collections::HashMap;

use ndarray::{ArrayD, Axis};
use pare_tensor::nn::Layer;
use pare_tensor::{Activation, INPUT, Padding, Pointwise, Sequential};

use crate::error::{PruneError, Result};
use crate::mask::{Norm, kept_count};
use crate::strip::check_copyable;

/// The output channels to keep per layer: `(layer name, ascending channel indices)`.
pub type ChannelPlan = Vec<(String, Vec<usize>)>;

/// The label of channels that cannot be removed: the model's input, and the outputs of the
/// layers that channels cannot be traced through.
const FIXED: usize = 0;

/// Channels as they flow through a model: every last-axis entry of every layer's input and
/// output carries the label of the producer channel it is made from, labels joined where an
/// `Add` sums them, and whether it is one constant for every input.
struct Trace {
    /// Per layer: the labels and constants of its (merged) input's last axis.
    input: Vec<Flow>,
    /// Per layer: the labels and constants of its output's last axis.
    output: Vec<Flow>,
    /// Per producer (`Conv2d` / `Dense`): its layer index and the label of its channel 0 (its
    /// channels have consecutive labels).
    producers: Vec<(usize, usize)>,
    /// Union-find parent of each label.
    parent: Vec<usize>,
    /// Per label: why its channels cannot be removed, if they cannot.
    blocked: Vec<Option<String>>,
}

/// The labels of a tensor's last axis and, per entry, its value when that is one constant.
#[derive(Clone, Default)]
struct Flow {
    labels: Vec<usize>,
    constants: Vec<Option<f32>>,
}

impl Flow {
    fn fixed(n: usize) -> Flow {
        Flow {
            labels: vec![FIXED; n],
            constants: vec![None; n],
        }
    }

    /// Each entry repeated `m` times in place (a depthwise multiplier) or the whole repeated
    /// `m` times (a flatten over `m` positions).
    fn spread(&self, m: usize, interleave: bool) -> Flow {
        let n = self.labels.len();
        let at = |i: usize| if interleave { i / m } else { i % n };
        Flow {
            labels: (0..n * m).map(|i| self.labels[at(i)]).collect(),
            constants: (0..n * m).map(|i| self.constants[at(i)]).collect(),
        }
    }

    fn map(&self, f: impl Fn(usize, f32) -> Option<f32>) -> Flow {
        Flow {
            labels: self.labels.clone(),
            constants: (self.constants.iter().enumerate())
                .map(|(c, v)| v.and_then(|v| f(c, v)))
                .collect(),
        }
    }
}

/// Output channels of a layer the tracer recorded as a producer: only conv and dense layers
/// are, so anything else is a tracer bug, not a user error.
fn producer_channels(l: &Layer) -> usize {
    out_channels(l).unwrap_or_else(|| {
        panic!(
            "channel tracer: producer {:?} is not a Conv2d or Dense layer",
            l.module().name()
        )
    })
}

fn out_channels(l: &Layer) -> Option<usize> {
    match l {
        Layer::Dense(d) => Some(d.units()),
        Layer::Conv2d(c) => Some(c.kernel_shape()[3]),
        _ => None,
    }
}

/// The value of channel `c` of a `Conv2d` / `Dense` layer when its kernel slice is zero: its
/// bias through its activation.
fn producer_constants(l: &Layer) -> Vec<Option<f32>> {
    let (kernel, bias, use_bias, act) = match l {
        Layer::Dense(d) => (&d.kernel.value, &d.bias.value, d.use_bias, d.activation),
        Layer::Conv2d(c) => (&c.kernel.value, &c.bias.value, c.use_bias, c.activation),
        _ => unreachable!("producer_constants: Conv2d and Dense only"),
    };
    let last = Axis(kernel.ndim() - 1);
    kernel
        .axis_iter(last)
        .zip(bias.iter())
        .map(|(k, &b)| {
            let b = if use_bias { b } else { 0.0 };
            k.iter().all(|&v| v == 0.0).then(|| act.apply(b))
        })
        .collect()
}

impl Trace {
    fn new(model: &Sequential) -> Result<Trace> {
        let shapes = model.node_shapes()?;
        let index: HashMap<&str, usize> = (model.layers.iter().enumerate())
            .map(|(i, l)| (l.module().name(), i))
            .collect();
        let mut t = Trace {
            input: Vec::with_capacity(model.layers.len()),
            output: Vec::with_capacity(model.layers.len()),
            producers: Vec::new(),
            parent: vec![FIXED],
            blocked: vec![Some(
                "its channels are added to channels that cannot be traced".into(),
            )],
        };
        let model_input = Flow::fixed(*model.input_shape.last().unwrap_or(&1));
        for (i, l) in model.layers.iter().enumerate() {
            let name = l.module().name();
            let sources: Vec<Option<usize>> = if model.is_sequential() {
                vec![i.checked_sub(1)]
            } else {
                let inputs = model.inputs_of(name).unwrap_or_default();
                inputs
                    .iter()
                    .map(|n| (*n != INPUT).then(|| index[n]))
                    .collect()
            };
            let ins: Vec<&Flow> = sources
                .iter()
                .map(|s| s.map_or(&model_input, |j| &t.output[j]))
                .collect();
            let input = match l {
                Layer::Concatenate(_) => Flow {
                    labels: ins.iter().flat_map(|f| f.labels.clone()).collect(),
                    constants: ins.iter().flat_map(|f| f.constants.clone()).collect(),
                },
                Layer::Add(_) => {
                    let mut sum = ins[0].clone();
                    for f in &ins[1..] {
                        for (c, (&a, &b)) in sum.labels.iter().zip(&f.labels).enumerate() {
                            self::union(&mut t.parent, a, b);
                            sum.constants[c] =
                                sum.constants[c].zip(f.constants[c]).map(|(x, y)| x + y);
                        }
                    }
                    sum
                }
                _ => ins.first().map(|f| (*f).clone()).unwrap_or_default(),
            };
            // Labels merged by the add above; the borrow of `t.output` ends here.
            let output = match l {
                Layer::Dense(_) | Layer::Conv2d(_) => {
                    let n = producer_channels(l);
                    let first = t.parent.len();
                    t.parent.extend(first..first + n);
                    t.blocked.resize(first + n, None);
                    t.producers.push((i, first));
                    Flow {
                        labels: (first..first + n).collect(),
                        constants: producer_constants(l),
                    }
                }
                Layer::ReLU(_) => input.map(|_, v| Some(Activation::Relu.apply(v))),
                Layer::LeakyReLU(r) => {
                    input.map(|_, v| Some(Activation::LeakyRelu(r.alpha).apply(v)))
                }
                Layer::ReLU6(_) => input.map(|_, v| Some(Pointwise::Relu6.apply(v))),
                Layer::Sigmoid(_) => input.map(|_, v| Some(Pointwise::Sigmoid.apply(v))),
                Layer::Tanh(_) => input.map(|_, v| Some(Pointwise::Tanh.apply(v))),
                Layer::HardSwish(_) => input.map(|_, v| Some(Pointwise::HardSwish.apply(v))),
                Layer::BatchNorm(b) => {
                    let (scale, offset) = b.scale_and_offset();
                    input.map(|c, v| Some(v * scale[c] + offset[c]))
                }
                // The padding of a `same` average pool is left out of each window's count, so
                // a constant stays that constant; a `same` max-pool sees its zero padding.
                Layer::Dropout(_) | Layer::AvgPool2d(_) | Layer::GlobalAveragePool2d(_) => {
                    input.clone()
                }
                Layer::MaxPool2d(p) => {
                    input.map(|_, v| (v == 0.0 || p.padding == Padding::Valid).then_some(v))
                }
                Layer::DepthwiseConv2d(d) => {
                    let m = d.kernel_shape()[3];
                    let mut out = input.spread(m, true);
                    for (o, v) in out.constants.iter_mut().enumerate() {
                        *v = v
                            .filter(|&v| v == 0.0 || d.padding == Padding::Valid)
                            .map(|v| {
                                let (c, k) = (o / m, o % m);
                                let w: f32 = (d.kernel.value.index_axis(Axis(2), c))
                                    .index_axis(Axis(2), k)
                                    .sum();
                                let b = if d.use_bias { d.bias.value[[o]] } else { 0.0 };
                                d.activation.apply(v * w + b)
                            });
                    }
                    out
                }
                Layer::Flatten(_) => {
                    let positions = shapes[i].iter().product::<usize>() / input.labels.len().max(1);
                    input.spread(positions, false)
                }
                Layer::Add(_) | Layer::Concatenate(_) => input.clone(),
                other => {
                    let reason = format!(
                        "its channels reach layer {:?}, through which they cannot be traced",
                        other.module().name()
                    );
                    for &lab in &input.labels {
                        t.block(lab, &reason);
                    }
                    Flow::fixed(*shapes[i].last().unwrap_or(&1))
                }
            };
            t.input.push(input);
            t.output.push(output);
        }
        if let Some(out) = t.output.last() {
            for lab in out.labels.clone() {
                t.block(lab, "its channels are the model's outputs");
            }
        }
        // Gather each class's reason at its root.
        for lab in 0..t.parent.len() {
            let root = t.find(lab);
            if t.blocked[root].is_none() {
                t.blocked[root] = t.blocked[lab].clone();
            }
        }
        for v in t.output.iter_mut().chain(t.input.iter_mut()) {
            for c in &mut v.constants {
                *c = c.filter(|v| v.is_finite());
            }
        }
        Ok(t)
    }

    fn block(&mut self, label: usize, reason: &str) {
        if self.blocked[label].is_none() {
            self.blocked[label] = Some(reason.to_owned());
        }
    }

    fn find(&self, mut label: usize) -> usize {
        while self.parent[label] != label {
            label = self.parent[label];
        }
        label
    }

    /// Why the class of `label` cannot be removed, if it cannot.
    fn blocked(&self, label: usize) -> Option<&str> {
        self.blocked[self.find(label)].as_deref()
    }
}

/// Joins the classes of labels `a` and `b` (the smaller root wins, so [`FIXED`] stays a root).
fn union(parent: &mut [usize], a: usize, b: usize) {
    let root = |mut l: usize| {
        while parent[l] != l {
            l = parent[l];
        }
        l
    };
    let (ra, rb) = (root(a), root(b));
    let (lo, hi) = (ra.min(rb), ra.max(rb));
    parent[hi] = lo;
}

/// `a` restricted to `idx` along `axis`, in standard layout (pare-tensor's kernels need it).
fn select(a: &ArrayD<f32>, axis: usize, idx: &[usize]) -> ArrayD<f32> {
    a.select(Axis(axis), idx).as_standard_layout().into_owned()
}

/// The positions of `flow` whose class is not `removed`.
fn kept_of(t: &Trace, flow: &Flow, removed: &[bool]) -> Vec<usize> {
    (flow.labels.iter().enumerate())
        .filter(|&(_, &l)| !removed[t.find(l)])
        .map(|(c, _)| c)
        .collect()
}

/// A copy of `model` with only the listed output channels of each named `Conv2d` / `Dense`
/// layer, and the matching inputs of the layers that consume them (see the
/// [module documentation](self)). `keep` pairs a layer name with the channel indices to keep,
/// ascending. Producers whose outputs an `Add` sums must keep the same channels.
///
/// The outputs are unchanged when every removed channel is dead (see [`live_channels`]);
/// otherwise the removed channels' contributions are lost, as requested.
///
/// # Errors
/// [`PruneError::Unsupported`] for a custom layer in the model, a named layer that is not a
/// `Conv2d`/`Dense`, or a removed channel that cannot be traced to its consumers;
/// [`PruneError::BadChannels`] for an empty, unsorted, repeated or out-of-range list, a layer
/// named twice, or a channel removed from one producer of an `Add` and kept in another;
/// [`PruneError::Tensor`] if the model's layers do not fit together.
pub fn remove_channels<S: AsRef<str>>(
    model: &Sequential,
    keep: &[(S, Vec<usize>)],
) -> Result<Sequential> {
    check_copyable(model, "remove_channels")?;
    let mut plan: Vec<Option<&[usize]>> = vec![None; model.layers.len()];
    for (name, kept) in keep {
        let name = name.as_ref();
        let bad = |reason: String| PruneError::BadChannels {
            layer: name.to_owned(),
            reason,
        };
        let i = model
            .layers
            .iter()
            .position(|l| l.module().name() == name)
            .ok_or_else(|| bad("no layer of that name".into()))?;
        let channels = out_channels(&model.layers[i]).ok_or_else(|| PruneError::Unsupported {
            layer: name.to_owned(),
            reason: "only Conv2d and Dense layers have channels to remove".into(),
        })?;
        if plan[i].is_some() {
            return Err(bad("layer named twice".into()));
        }
        if kept.is_empty() {
            return Err(bad("at least one channel must be kept".into()));
        }
        if kept.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(format!(
                "indices must be strictly ascending, got {kept:?}"
            )));
        }
        if let Some(&last) = kept.last().filter(|&&c| c >= channels) {
            return Err(bad(format!("channel {last} of {channels} is out of range")));
        }
        plan[i] = Some(kept.as_slice());
    }
    let t = Trace::new(model)?;
    // Every producer channel votes for its class: removed or kept; the votes must agree.
    let mut vote: Vec<Option<(bool, usize, usize)>> = vec![None; t.parent.len()];
    for &(i, first) in &t.producers {
        let name = model.layers[i].module().name();
        for c in 0..producer_channels(&model.layers[i]) {
            let removed = plan[i].is_some_and(|k| k.binary_search(&c).is_err());
            if let Some(reason) = t.blocked(first + c).filter(|_| removed) {
                return Err(PruneError::Unsupported {
                    layer: name.to_owned(),
                    reason: reason.to_owned(),
                });
            }
            let root = t.find(first + c);
            if root == FIXED {
                continue;
            }
            match vote[root] {
                None => vote[root] = Some((removed, i, c)),
                Some((r, j, d)) if r != removed => {
                    let (what, other) = if removed {
                        ("removed", "kept")
                    } else {
                        ("kept", "removed")
                    };
                    return Err(PruneError::BadChannels {
                        layer: name.to_owned(),
                        reason: format!(
                            "channel {c} is {what} but it is summed (by an Add) with channel \
                             {d} of {:?}, which is {other}: added channels go together",
                            model.layers[j].module().name()
                        ),
                    });
                }
                Some(_) => {}
            }
        }
    }
    let removed: Vec<bool> = vote.iter().map(|v| v.is_some_and(|v| v.0)).collect();
    let mut out = model.clone();
    if !removed.contains(&true) {
        return Ok(out);
    }
    for (i, l) in out.layers.iter_mut().enumerate() {
        let ins = kept_of(&t, &t.input[i], &removed);
        let outs = kept_of(&t, &t.output[i], &removed);
        let (ins, outs) = (
            (ins.len() < t.input[i].labels.len()).then_some(ins),
            (outs.len() < t.output[i].labels.len()).then_some(outs),
        );
        let (kernel, bias, in_axis) = match l {
            Layer::Dense(d) => (&mut d.kernel.value, &mut d.bias.value, 0),
            Layer::Conv2d(c) => (&mut c.kernel.value, &mut c.bias.value, 2),
            Layer::DepthwiseConv2d(d) => {
                if let Some(ins) = &ins {
                    d.kernel.value = select(&d.kernel.value, 2, ins);
                }
                if let Some(outs) = &outs {
                    d.bias.value = select(&d.bias.value, 0, outs);
                }
                continue;
            }
            Layer::BatchNorm(b) => {
                if let Some(ins) = &ins {
                    for p in [
                        &mut b.gamma,
                        &mut b.beta,
                        &mut b.moving_mean,
                        &mut b.moving_variance,
                    ] {
                        p.value = select(&p.value, 0, ins);
                    }
                }
                continue;
            }
            _ => continue,
        };
        if let Some(ins) = &ins {
            *kernel = select(kernel, in_axis, ins);
        }
        if let Some(outs) = &outs {
            *kernel = select(kernel, kernel.ndim() - 1, outs);
            *bias = select(bias, 0, outs);
        }
    }
    out.node_shapes()?;
    Ok(out)
}

/// Which classes of channels go: those not blocked whose every entry read by a consumer is a
/// constant `allowed` there (`allowed(consumer, value)`). Each producer keeps one channel at
/// least (its channel 0, with every channel it is added to), so the model stays well-formed.
fn removable(
    model: &Sequential,
    t: &Trace,
    allowed: impl Fn(&Layer, f32) -> bool,
) -> (Vec<bool>, ChannelPlan) {
    let mut ok: Vec<bool> = (0..t.parent.len())
        .map(|l| t.parent[l] == l && t.blocked[l].is_none())
        .collect();
    for (i, l) in model.layers.iter().enumerate() {
        if out_channels(l).is_none() {
            continue;
        }
        let flow = &t.input[i];
        for (&lab, &v) in flow.labels.iter().zip(&flow.constants) {
            if !v.is_some_and(|v| allowed(l, v)) {
                ok[t.find(lab)] = false;
            }
        }
    }
    let mut plan = Vec::new();
    let mut kept_of_each = Vec::new();
    for &(i, first) in &t.producers {
        let n = producer_channels(&model.layers[i]);
        if (0..n).all(|c| ok[t.find(first + c)]) {
            ok[t.find(first)] = false;
        }
        kept_of_each.push((i, first, n));
    }
    for (i, first, n) in kept_of_each {
        let kept: Vec<usize> = (0..n).filter(|&c| !ok[t.find(first + c)]).collect();
        if kept.len() < n {
            plan.push((model.layers[i].module().name().to_owned(), kept));
        }
    }
    (ok, plan)
}

/// The channels of each `Conv2d` / `Dense` layer that are alive, for every layer that has a
/// dead one that can be removed. A channel is dead when its kernel slice is zero and its
/// (finite) bias reaches every consumer as exactly zero: a zero bias, or a negative one through
/// a ReLU (see the [module documentation](self)); channels an `Add` sums are dead when they
/// are dead in every producer. Layers whose channels are all dead keep their first channel, so
/// the model stays well-formed.
///
/// # Errors
/// [`PruneError::Tensor`] if the model's layers do not fit together.
pub fn live_channels(model: &Sequential) -> Result<ChannelPlan> {
    let t = Trace::new(model)?;
    Ok(removable(model, &t, |_, v| v == 0.0).1)
}

/// Removes every channel whose output is one constant at its consumers' inputs, the dead ones
/// ([`live_channels`]) and those that are not zero, folding each constant `v` into the
/// consumers' biases first: `v · Σ` of the kernel rows that read it (over the spatial positions
/// for a dense layer after a `Flatten`, over the window for a conv, which must have `valid`
/// padding for a non-zero `v`, since a `same` conv sees zeros at the borders). The outputs are
/// those of `model` up to float rounding. This is what a pruned conv before a BatchNorm needs:
/// its dead filters output the BatchNorm's offset, not zero.
///
/// Returns the smaller model and the channels kept per layer.
///
/// # Errors
/// As [`remove_channels`] and [`live_channels`].
pub fn fold_constant_channels(model: &Sequential) -> Result<(Sequential, ChannelPlan)> {
    check_copyable(model, "fold_constant_channels")?;
    let t = Trace::new(model)?;
    let (gone, plan) = removable(model, &t, |consumer, v| {
        v == 0.0
            || match consumer {
                Layer::Conv2d(c) => c.padding == Padding::Valid,
                _ => true,
            }
    });
    let mut out = model.clone();
    for (i, l) in out.layers.iter_mut().enumerate() {
        if out_channels(l).is_none() {
            continue;
        }
        let flow = &t.input[i];
        for (row, (&lab, &v)) in flow.labels.iter().zip(&flow.constants).enumerate() {
            if let Some(v) = v.filter(|&v| v != 0.0 && gone[t.find(lab)]) {
                fold_into_bias(l, row, v);
            }
        }
    }
    let smaller = remove_channels(&out, &plan)?;
    Ok((smaller, plan))
}

/// Adds input entry `row`'s constant `v` to a consumer's bias.
fn fold_into_bias(consumer: &mut Layer, row: usize, v: f32) {
    match consumer {
        Layer::Dense(d) => {
            let k = d.kernel.value.index_axis(Axis(0), row).to_owned();
            d.bias.value.scaled_add(v, &k);
            d.use_bias = true;
        }
        Layer::Conv2d(conv) => {
            // [kh, kw, in, out] → the [out] sums over the window of input channel `row`.
            let k = conv.kernel.value.index_axis(Axis(2), row);
            let sums = k.sum_axis(Axis(0)).sum_axis(Axis(0));
            conv.bias.value.scaled_add(v, &sums);
            conv.use_bias = true;
        }
        _ => unreachable!("fold_into_bias: only Conv2d and Dense consume channels"),
    }
}

/// The channels to keep when `fraction` of each `Conv2d` layer's filters go, the smallest
/// first by `norm` of their kernel slices (Li et al. 2017): the plan to give
/// [`remove_channels`], which prunes by filter before a fine-tune, the way structured pruning
/// is done on models with BatchNorm (where a zeroed filter still outputs the BatchNorm's
/// offset, so zeroing filters in training would not make them removable). Channels an `Add`
/// sums go together, ranked by the sum of their norms in every producer, and are counted once,
/// in the first producer; channels that cannot be traced (see the
/// [module documentation](self)) stay.
///
/// ```
/// use pare_prune::{Norm, remove_channels, smallest_channels};
/// use pare_tensor::models::resnet8;
///
/// let model = resnet8(0);
/// let plan = smallest_channels(&model, 0.5, Norm::L1)?;
/// // stem_conv and b1_conv2 feed the same add: they keep the same 8 channels.
/// let kept = |name: &str| plan.iter().find(|(n, _)| n == name).map(|(_, k)| k.clone());
/// assert_eq!(kept("stem_conv"), kept("b1_conv2"));
/// assert_eq!(kept("stem_conv").unwrap().len(), 8);
/// let thin = remove_channels(&model, &plan)?;
/// assert!(thin.num_params() < model.num_params() / 3);
/// # Ok::<(), pare_prune::PruneError>(())
/// ```
///
/// # Errors
/// [`PruneError::InvalidSparsity`] unless `0 <= fraction < 1`; [`PruneError::Tensor`] if the
/// model's layers do not fit together.
pub fn smallest_channels(model: &Sequential, fraction: f32, norm: Norm) -> Result<ChannelPlan> {
    kept_count(1, fraction)?;
    let t = Trace::new(model)?;
    let kernel_of = |i: usize| match &model.layers[i] {
        Layer::Dense(d) => &d.kernel.value,
        Layer::Conv2d(c) => &c.kernel.value,
        _ => unreachable!("smallest_channels: producers are Conv2d and Dense"),
    };
    let mut score = vec![0.0f64; t.parent.len()];
    for &(i, first) in &t.producers {
        let k = kernel_of(i);
        for (c, ch) in k.axis_iter(Axis(k.ndim() - 1)).enumerate() {
            score[t.find(first + c)] += match norm {
                Norm::L1 => ch.iter().map(|v| f64::from(v.abs())).sum::<f64>(),
                Norm::L2 => ch
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
                    .sqrt(),
            };
        }
    }
    // Per class: removed or kept, once its first producer has decided.
    let mut decided: Vec<Option<bool>> = vec![None; t.parent.len()];
    for &(i, first) in &t.producers {
        if !matches!(model.layers[i], Layer::Conv2d(_)) {
            continue;
        }
        let n = producer_channels(&model.layers[i]);
        let mut roots: Vec<usize> = (0..n).map(|c| t.find(first + c)).collect();
        let done = roots.iter().filter(|&&r| decided[r] == Some(true)).count();
        let mut open: Vec<usize> = roots
            .iter()
            .copied()
            .filter(|&r| decided[r].is_none() && r != FIXED && t.blocked[r].is_none())
            .collect();
        open.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
        open.dedup();
        let go = (n - kept_count(n, fraction)?).saturating_sub(done);
        for &r in open.iter().take(go) {
            decided[r] = Some(true);
        }
        roots.retain(|&r| decided[r].is_none());
        for r in roots {
            decided[r] = Some(false);
        }
    }
    let mut plan = Vec::new();
    for &(i, first) in &t.producers {
        let n = producer_channels(&model.layers[i]);
        let kept: Vec<usize> = (0..n)
            .filter(|&c| decided[t.find(first + c)] != Some(true))
            .collect();
        if kept.len() < n {
            plan.push((model.layers[i].module().name().to_owned(), kept));
        }
    }
    Ok(plan)
}

/// Removes every dead channel ([`live_channels`]) with [`remove_channels`]; the outputs are
/// those of `model`. Returns the smaller model and the channels kept per layer.
///
/// # Errors
/// As [`remove_channels`] and [`live_channels`].
pub fn remove_dead_channels(model: &Sequential) -> Result<(Sequential, ChannelPlan)> {
    let keep = live_channels(model)?;
    let smaller = remove_channels(model, &keep)?;
    Ok((smaller, keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::channel_mask;
    use approx::assert_abs_diff_eq;
    use ndarray::{Array4, ArrayD};
    use pare_tensor::models::{small_cnn, teacher_cnn};
    use pare_tensor::nn::{
        AvgPool2d, BatchNorm, Conv2d, Dense, DepthwiseConv2d, Dropout, Flatten,
        GlobalAveragePool2d, HardSwish, LeakyReLU, MaxPool2d, Module, ReLU, ReLU6, Reshape,
        Sigmoid, Softmax, Tanh,
    };
    use pare_tensor::train::predict;
    use pare_tensor::{Activation, Graph, Var};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn images(n: usize, seed: u64) -> ArrayD<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        Array4::from_shape_simple_fn((n, 28, 28, 1), || rng.random_range(0.0f32..1.0)).into_dyn()
    }

    /// Zeroes the pruned channels of `layer` (kernel slice and bias) by an L1 channel mask;
    /// gives the bias non-zero values first so a forgotten bias would show.
    fn kill_channels(model: &mut Sequential, layer: &str, sparsity: f32) -> Vec<usize> {
        let kname = format!("{layer}.kernel");
        let bname = format!("{layer}.bias");
        let b = model.param_mut(&bname).unwrap();
        b.value
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 0.01 * (i as f32 + 1.0));
        let k = &model.param(&kname).unwrap().value;
        let cm = channel_mask(k.view(), sparsity, Norm::L1).unwrap();
        let k = model.param_mut(&kname).unwrap();
        k.value = &k.value * &cm.mask;
        let b = model.param_mut(&bname).unwrap();
        for (i, v) in b.value.iter_mut().enumerate() {
            if !cm.kept.contains(&i) {
                *v = 0.0;
            }
        }
        cm.kept
    }

    fn max_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
        assert_eq!(a.shape(), b.shape());
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn small_cnn_conv_filters_removed_through_pool_and_flatten() {
        let mut model = small_cnn(1);
        let kept = kill_channels(&mut model, "conv2d", 0.5);
        assert_eq!(kept.len(), 6);
        let x = images(5, 2);
        let want = predict(&model, x.view(), 8).unwrap();
        let (smaller, plan) = remove_dead_channels(&model).unwrap();
        assert_eq!(plan, vec![("conv2d".to_string(), kept.clone())]);
        let conv = smaller.param("conv2d.kernel").unwrap();
        assert_eq!(conv.value.shape(), &[3, 3, 1, 6]);
        assert_eq!(smaller.param("conv2d.bias").unwrap().value.len(), 6);
        assert_eq!(
            smaller.param("dense.kernel").unwrap().value.shape(),
            &[13 * 13 * 6, 10]
        );
        // Row (y·13 + x)·6 + k of the new dense kernel is row (y·13 + x)·12 + kept[k] of the old.
        let old = &model.param("dense.kernel").unwrap().value;
        let new = &smaller.param("dense.kernel").unwrap().value;
        for (p, k) in [(0usize, 0usize), (5, 3), (168, 5)] {
            assert_eq!(
                new.index_axis(Axis(0), p * 6 + k),
                old.index_axis(Axis(0), p * 12 + kept[k])
            );
        }
        assert_eq!(smaller.num_params(), 9 * 6 + 6 + 13 * 13 * 6 * 10 + 10);
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-4);
    }

    #[test]
    fn teacher_convs_removed_through_leaky_relu_same_pool_and_next_conv() {
        let mut model = teacher_cnn(8, 16, 3);
        let k1 = kill_channels(&mut model, "conv2d", 0.6);
        let k2 = kill_channels(&mut model, "conv2d_1", 0.75);
        let x = images(4, 5);
        let want = predict(&model, x.view(), 8).unwrap();
        let (smaller, plan) = remove_dead_channels(&model).unwrap();
        assert_eq!(
            plan,
            vec![
                ("conv2d".into(), k1.clone()),
                ("conv2d_1".into(), k2.clone())
            ]
        );
        assert_eq!(
            smaller.param("conv2d_1.kernel").unwrap().value.shape(),
            &[3, 3, k1.len(), k2.len()]
        );
        assert_eq!(
            smaller.param("dense.kernel").unwrap().value.shape(),
            &[7 * 7 * k2.len(), 10]
        );
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-4);
    }

    #[test]
    fn dense_units_removed_before_relu_and_dense() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut model = Sequential::new(&[28, 28, 1])
            .push(Flatten::new("flatten"))
            .push(Dense::new("hidden", 784, 32, &mut rng))
            .push(ReLU::new("relu"))
            .push(Dense::new("hidden2", 32, 16, &mut rng).activation(Activation::LeakyRelu(0.1)))
            .push(LeakyReLU::new("leaky", 0.2))
            .push(Dense::new("out", 16, 10, &mut rng));
        kill_channels(&mut model, "hidden", 0.7);
        kill_channels(&mut model, "hidden2", 0.5);
        let x = images(3, 9);
        let want = predict(&model, x.view(), 8).unwrap();
        let (smaller, plan) = remove_dead_channels(&model).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(
            smaller.param("hidden2.kernel").unwrap().value.shape(),
            &[10, 8]
        );
        assert_eq!(smaller.param("out.kernel").unwrap().value.shape(), &[8, 10]);
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-4);
    }

    #[test]
    fn live_channels_ignores_healthy_and_output_layers_and_keeps_one() {
        let model = small_cnn(0);
        assert!(live_channels(&model).unwrap().is_empty());
        let (same, plan) = remove_dead_channels(&model).unwrap();
        assert!(plan.is_empty());
        assert_eq!(same.params(), model.params());
        // A zero dense output layer is left alone (its channels are the outputs); an all-dead
        // conv keeps channel 0.
        let mut dead = small_cnn(0);
        dead.param_mut("dense.kernel").unwrap().value.fill(0.0);
        dead.param_mut("conv2d.kernel").unwrap().value.fill(0.0);
        assert_eq!(
            live_channels(&dead).unwrap(),
            vec![("conv2d".into(), vec![0])]
        );
        // A zero kernel slice with a positive bias is alive: it feeds the dense layer a
        // constant.
        let mut biased = small_cnn(0);
        biased.param_mut("conv2d.kernel").unwrap().value.fill(0.0);
        biased.param_mut("conv2d.bias").unwrap().value[[4]] = 0.5;
        assert_eq!(
            live_channels(&biased).unwrap(),
            vec![("conv2d".into(), vec![4])]
        );
    }

    /// The small CNN with conv filters 1, 4, 7 zeroed and given biases -0.3, 0.2, -0.0; the
    /// rest keep their weights and get bias -0.1 (alive: their kernels are not zero).
    fn zero_filters_with_biases(model: &mut Sequential) {
        let k = model.param_mut("conv2d.kernel").unwrap();
        for c in [1, 4, 7] {
            k.value.index_axis_mut(Axis(3), c).fill(0.0);
        }
        let b = model.param_mut("conv2d.bias").unwrap();
        b.value.fill(-0.1);
        for (c, v) in [(1, -0.3), (4, 0.2), (7, -0.0)] {
            b.value[[c]] = v;
        }
    }

    #[test]
    fn zero_filters_with_negative_bias_die_through_relu() {
        // small_cnn's conv has a fused ReLU: filter 1 (bias -0.3) and 7 (-0.0) output exactly
        // zero, filter 4 (bias 0.2) a constant 0.2.
        let mut model = small_cnn(3);
        zero_filters_with_biases(&mut model);
        let keep: Vec<usize> = (0..12).filter(|&c| c != 1 && c != 7).collect();
        assert_eq!(
            live_channels(&model).unwrap(),
            vec![("conv2d".into(), keep.clone())]
        );
        let x = images(6, 7);
        let want = predict(&model, x.view(), 8).unwrap();
        let (smaller, plan) = remove_dead_channels(&model).unwrap();
        assert_eq!(plan, vec![("conv2d".into(), keep)]);
        assert_eq!(
            smaller.param("dense.kernel").unwrap().value.shape(),
            &[13 * 13 * 10, 10]
        );
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);

        // Without an activation (or a leaky one) a negative bias is a non-zero constant: only
        // the exact zero (filter 7) dies. A ReLU layer after the conv kills filter 1 again.
        let plain = |act: Option<Layer>| {
            let mut rng = StdRng::seed_from_u64(3);
            let mut m =
                Sequential::new(&[28, 28, 1]).push(Conv2d::new("conv2d", 1, 12, [3, 3], &mut rng));
            if let Some(a) = act {
                m = m.push(a);
            }
            let mut m = m
                .push(MaxPool2d::new("pool", 2))
                .push(Flatten::new("flatten"))
                .push(Dense::new("dense", 13 * 13 * 12, 10, &mut rng));
            zero_filters_with_biases(&mut m);
            live_channels(&m).unwrap()
        };
        let all_but = |dead: &[usize]| -> ChannelPlan {
            let keep = (0..12).filter(|c| !dead.contains(c)).collect();
            vec![("conv2d".into(), keep)]
        };
        assert_eq!(plain(None), all_but(&[7]));
        assert_eq!(
            plain(Some(Layer::LeakyReLU(LeakyReLU::new("lrelu", 0.2)))),
            all_but(&[7])
        );
        assert_eq!(
            plain(Some(Layer::ReLU(ReLU::new("relu")))),
            all_but(&[1, 7])
        );
    }

    fn random_bn(name: &str, c: usize, rng: &mut StdRng) -> BatchNorm {
        let mut bn = BatchNorm::new(name, c);
        for (p, lo, hi) in [
            (&mut bn.gamma, 0.5, 1.5),
            (&mut bn.beta, -0.5, 0.5),
            (&mut bn.moving_mean, -0.3, 0.3),
            (&mut bn.moving_variance, 0.5, 2.0),
        ] {
            p.value.mapv_inplace(|_| rng.random_range(lo..hi));
        }
        bn
    }

    fn zero_filters(model: &mut Sequential, layer: &str, filters: &[usize]) {
        let k = model.param_mut(&format!("{layer}.kernel")).unwrap();
        for &c in filters {
            k.value.index_axis_mut(Axis(3), c).fill(0.0);
        }
    }

    /// conv (no bias) → BN → ReLU → conv (valid) → BN → ReLU6 → global average pool → dense,
    /// as ResNets are written.
    fn bn_cnn(seed: u64) -> Sequential {
        let mut rng = StdRng::seed_from_u64(seed);
        Sequential::new(&[12, 12, 2])
            .push(
                Conv2d::new("c1", 2, 8, [3, 3], &mut rng)
                    .padding(Padding::Same)
                    .use_bias(false),
            )
            .push(random_bn("bn1", 8, &mut rng))
            .push(ReLU::new("r1"))
            .push(Conv2d::new("c2", 8, 6, [3, 3], &mut rng).use_bias(false))
            .push(random_bn("bn2", 6, &mut rng))
            .push(ReLU6::new("r2"))
            .push(GlobalAveragePool2d::new("gap"))
            .push(Dense::new("d", 6, 4, &mut rng))
    }

    fn inputs(n: usize, shape: [usize; 3], seed: u64) -> ArrayD<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let [h, w, c] = shape;
        Array4::from_shape_simple_fn((n, h, w, c), || rng.random_range(-1.0f32..1.0)).into_dyn()
    }

    #[test]
    fn zero_filters_before_batch_norm_fold_into_the_next_layers_bias() {
        let mut model = bn_cnn(1);
        zero_filters(&mut model, "c1", &[0, 3, 5]);
        zero_filters(&mut model, "c2", &[2]);
        let x = inputs(5, [12, 12, 2], 3);
        let want = predict(&model, x.view(), 8).unwrap();
        // Through a BatchNorm a zero filter outputs relu(offset): dead only where the offset
        // is not positive.
        let bn1 = match model.layer("bn1") {
            Some(Layer::BatchNorm(b)) => b.scale_and_offset().1,
            _ => unreachable!(),
        };
        let dead1: Vec<usize> = [0, 3, 5].into_iter().filter(|&c| bn1[c] <= 0.0).collect();
        let live = live_channels(&model).unwrap();
        let dead_in = |name: &str| {
            live.iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, k)| 8 - k.len())
        };
        assert_eq!(dead_in("c1"), dead1.len());

        let (smaller, plan) = fold_constant_channels(&model).unwrap();
        assert_eq!(
            plan,
            vec![
                ("c1".to_string(), vec![1, 2, 4, 6, 7]),
                ("c2".to_string(), vec![0, 1, 3, 4, 5])
            ]
        );
        let Some(Layer::BatchNorm(b)) = smaller.layer("bn1") else {
            panic!("bn1")
        };
        assert_eq!(b.channels(), 5);
        assert_eq!(b.moving_variance.value.len(), 5);
        assert_eq!(
            smaller.param("c2.kernel").unwrap().value.shape(),
            &[3, 3, 5, 5]
        );
        assert_eq!(smaller.param("d.kernel").unwrap().value.shape(), &[5, 4]);
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);
        // Plain removal of the same channels loses the constants.
        let lossy = remove_channels(&model, &plan).unwrap();
        assert!(max_diff(&predict(&lossy, x.view(), 8).unwrap(), &want) > 1e-3);
    }

    #[test]
    fn channels_pass_depthwise_pools_dropout_and_activations() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut model = Sequential::new(&[10, 10, 1])
            .push(Conv2d::new("c", 1, 6, [3, 3], &mut rng))
            .push(DepthwiseConv2d::new("dw", 6, [3, 3], &mut rng))
            .push(random_bn("bn", 6, &mut rng))
            .push(HardSwish::new("hs"))
            .push(AvgPool2d::new("avg", 2).padding(Padding::Same).strides(1))
            .push(Dropout::new("drop", 0.5).unwrap())
            .push(Sigmoid::new("sig"))
            .push(Tanh::new("tanh"))
            .push(Flatten::new("f"))
            .push(Dense::new("d", 6 * 6 * 6, 3, &mut rng));
        // Non-zero depthwise biases: the dead filters' constants pass a valid depthwise conv.
        model
            .param_mut("dw.bias")
            .unwrap()
            .value
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 0.1 * i as f32 - 0.2);
        model.param_mut("c.bias").unwrap().value[[4]] = 0.7;
        zero_filters(&mut model, "c", &[1, 4]);
        let x = inputs(3, [10, 10, 1], 5);
        let want = predict(&model, x.view(), 8).unwrap();
        // A sigmoid is never zero: no channel is dead, both are constant.
        assert!(live_channels(&model).unwrap().is_empty());
        let (smaller, plan) = fold_constant_channels(&model).unwrap();
        assert_eq!(plan, vec![("c".to_string(), vec![0, 2, 3, 5])]);
        assert_eq!(
            smaller.param("dw.kernel").unwrap().value.shape(),
            &[3, 3, 4, 1]
        );
        assert_eq!(smaller.param("dw.bias").unwrap().value.len(), 4);
        assert_eq!(
            smaller.param("d.kernel").unwrap().value.shape(),
            &[6 * 6 * 4, 3]
        );
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);

        // A `same` depthwise conv sees zeros at the borders: only an exact zero passes it.
        let mut same = model.clone();
        if let Layer::DepthwiseConv2d(d) = &mut same.layers[1] {
            d.padding = Padding::Same;
        }
        same.layers.truncate(8);
        let same = same
            .push(Flatten::new("f"))
            .push(Dense::new("d", 8 * 8 * 6, 3, &mut rng));
        // Filter 1 (bias 0) passes it as the depthwise bias, filter 4 (bias 0.7) does not.
        let (smaller, plan) = fold_constant_channels(&same).unwrap();
        assert_eq!(plan, vec![("c".to_string(), vec![0, 2, 3, 4, 5])]);
        let want = predict(&same, x.view(), 8).unwrap();
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);
        // A softmax mixes the channels.
        let soft = Sequential::new(&[10, 10, 1])
            .push(Conv2d::new("c", 1, 4, [3, 3], &mut rng))
            .push(Softmax::new("s"))
            .push(Conv2d::new("c2", 4, 2, [3, 3], &mut rng));
        assert!(matches!(
            remove_channels(&soft, &[("c", vec![0, 1])]),
            Err(PruneError::Unsupported { .. })
        ));
    }

    #[test]
    fn a_constant_folds_into_a_valid_conv_but_not_a_same_one() {
        for (padding, folds) in [(Padding::Valid, true), (Padding::Same, false)] {
            let mut rng = StdRng::seed_from_u64(6);
            let mut model = Sequential::new(&[9, 9, 2])
                .push(Conv2d::new("c", 2, 5, [3, 3], &mut rng))
                .push(Conv2d::new("c2", 5, 3, [3, 3], &mut rng).padding(padding))
                .push(Flatten::new("f"))
                .push(Dense::new("d", 3, 2, &mut rng));
            // Fix up the dense layer's input width for each padding.
            let flat = if folds { 5 * 5 * 3 } else { 7 * 7 * 3 };
            model.layers[3] = Layer::Dense(Dense::new("d", flat, 2, &mut rng));
            model.param_mut("c.bias").unwrap().value[[2]] = -0.4;
            zero_filters(&mut model, "c", &[2]);
            let x = inputs(2, [9, 9, 2], 7);
            let want = predict(&model, x.view(), 8).unwrap();
            let (smaller, plan) = fold_constant_channels(&model).unwrap();
            assert_eq!(!plan.is_empty(), folds, "{padding:?}");
            let got = predict(&smaller, x.view(), 8).unwrap();
            assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);
        }
    }

    #[derive(Debug)]
    struct Identity;
    impl Module for Identity {
        fn name(&self) -> &str {
            "identity"
        }
        fn forward(&self, _: &mut Graph, x: Var) -> Var {
            x
        }
        fn output_shape(&self, input: &[usize]) -> pare_tensor::Result<Vec<usize>> {
            Ok(input.to_vec())
        }
    }

    #[test]
    fn remove_channels_errors() {
        let model = small_cnn(0);
        let bc = |r: Result<Sequential>| match r {
            Err(PruneError::BadChannels { .. }) => {}
            other => panic!("{other:?}"),
        };
        bc(remove_channels(&model, &[("conv2d", vec![])]));
        bc(remove_channels(&model, &[("conv2d", vec![3, 1])]));
        bc(remove_channels(&model, &[("conv2d", vec![1, 1])]));
        bc(remove_channels(&model, &[("conv2d", vec![12])]));
        bc(remove_channels(&model, &[("nope", vec![0])]));
        bc(remove_channels(
            &model,
            &[("conv2d", vec![0]), ("conv2d", vec![1])],
        ));
        assert!(matches!(
            remove_channels(&model, &[("dense", vec![0, 1])]),
            Err(PruneError::Unsupported { .. })
        ));
        assert!(matches!(
            remove_channels(&model, &[("flatten", vec![0])]),
            Err(PruneError::Unsupported { .. })
        ));
        // Keeping every channel changes nothing, even for the output layer.
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(
            remove_channels(&model, &[("dense", all)]).unwrap().params(),
            model.params()
        );
        // A reshape between a conv and its consumer cannot be traced.
        let mut rng = StdRng::seed_from_u64(1);
        let odd = Sequential::new(&[28, 28, 1])
            .push(pare_tensor::nn::Conv2d::new("c", 1, 4, [3, 3], &mut rng))
            .push(Reshape::new("r", &[26 * 26 * 4]))
            .push(Dense::new("d", 26 * 26 * 4, 10, &mut rng));
        assert!(matches!(
            remove_channels(&odd, &[("c", vec![0, 1])]),
            Err(PruneError::Unsupported { .. })
        ));
        let custom = small_cnn(0).push_module(Box::new(Identity));
        assert!(matches!(
            remove_channels(&custom, &[("conv2d", vec![0])]),
            Err(PruneError::Unsupported { .. })
        ));
        assert!(matches!(
            crate::strip::strip::<&str>(&custom, &[]),
            Err(PruneError::Unsupported { .. })
        ));
    }

    /// Every BatchNorm of `model` given random statistics and parameters.
    fn randomise_bns(model: &mut Sequential, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        for l in &mut model.layers {
            if let Layer::BatchNorm(b) = l {
                *b = random_bn(&b.name.clone(), b.channels(), &mut rng);
            }
        }
    }

    /// The producers of each `Add` group of resnet8: their channels are one.
    const RESNET_GROUPS: [&[&str]; 3] = [
        &["stem_conv", "b1_conv2"],
        &["b2_conv2", "b2_proj"],
        &["b3_conv2", "b3_proj"],
    ];

    #[test]
    fn resnet8_channels_dead_in_every_producer_of_an_add_are_cut() {
        let mut model = pare_tensor::models::resnet8(2);
        randomise_bns(&mut model, 3);
        let mut rng = StdRng::seed_from_u64(4);
        let mut expected: ChannelPlan = Vec::new();
        // Per add group a random set of channels dead in all its producers, plus a channel
        // dead in only one producer (which must stay); per first conv of each block a random
        // set of its own. A zero filter dies through BN + ReLU when the BN's offset is
        // negative: β = -0.5 with zero mean.
        let kill = |m: &mut Sequential, layer: &str, bn: &str, cs: &[usize]| {
            zero_filters(m, layer, cs);
            let Some(Layer::BatchNorm(b)) = m.layers.iter_mut().find(|l| l.module().name() == bn)
            else {
                panic!("{bn}")
            };
            for &c in cs {
                b.beta.value[[c]] = -0.5;
                b.moving_mean.value[[c]] = 0.0;
            }
        };
        let bn_of = |conv: &str| match conv {
            "stem_conv" => "stem_bn".to_string(),
            c if c.ends_with("proj") => format!("{c}_bn"),
            c => c.replace("conv", "bn"),
        };
        for (g, group) in RESNET_GROUPS.iter().enumerate() {
            let n = [16, 32, 64][g];
            let mut dead: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.4)).collect();
            dead.retain(|&c| c != 0);
            for p in group.iter() {
                kill(&mut model, p, &bn_of(p), &dead);
            }
            // Dead in the first producer only: the sum is alive.
            kill(&mut model, group[0], &bn_of(group[0]), &[0]);
            let kept: Vec<usize> = (0..n).filter(|c| !dead.contains(c)).collect();
            for p in group.iter() {
                expected.push((p.to_string(), kept.clone()));
            }
        }
        for (b, n) in [("b1", 16), ("b2", 32), ("b3", 64)] {
            let conv = format!("{b}_conv1");
            let dead: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.5)).collect();
            kill(&mut model, &conv, &bn_of(&conv), &dead);
            let kept: Vec<usize> = (0..n).filter(|c| !dead.contains(c)).collect();
            expected.push((conv, kept));
        }
        let x = images(6, 8);
        let want = predict(&model, x.view(), 8).unwrap();
        let (smaller, plan) = remove_dead_channels(&model).unwrap();
        let sorted = |mut p: ChannelPlan| {
            p.retain(|(name, k)| {
                k.len()
                    < model
                        .param(&format!("{name}.kernel"))
                        .unwrap()
                        .value
                        .shape()[3]
            });
            p.sort();
            p
        };
        assert_eq!(sorted(plan.clone()), sorted(expected));
        assert!(smaller.num_params() < model.num_params());
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);
        // Shapes follow the channels through the adds: b2_conv1 and b2_proj read b1's group.
        let k1 = &plan.iter().find(|(n, _)| n == "b1_conv2").unwrap().1;
        for reader in ["b2_conv1", "b2_proj"] {
            let shape = smaller
                .param(&format!("{reader}.kernel"))
                .unwrap()
                .value
                .shape()
                .to_vec();
            assert_eq!(shape[2], k1.len(), "{reader}");
        }
        let Some(Layer::BatchNorm(b)) = smaller.layer("stem_bn") else {
            panic!("stem_bn")
        };
        assert_eq!(b.channels(), k1.len());
    }

    #[test]
    fn random_zero_filters_fold_on_graph_models() {
        for (seed, mut model) in [
            (1, pare_tensor::models::resnet8(1)),
            (2, pare_tensor::models::tiny_residual(3, 5)),
        ] {
            randomise_bns(&mut model, seed);
            let mut rng = StdRng::seed_from_u64(seed + 10);
            let convs: Vec<String> = (model.layers.iter())
                .filter(|l| matches!(l, Layer::Conv2d(_)))
                .map(|l| l.module().name().to_owned())
                .collect();
            for c in &convs {
                let n = model.param(&format!("{c}.kernel")).unwrap().value.shape()[3];
                let cs: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.5)).collect();
                zero_filters(&mut model, c, &cs);
            }
            let x = images(5, seed);
            let want = predict(&model, x.view(), 8).unwrap();
            for (smaller, _) in [
                remove_dead_channels(&model).unwrap(),
                fold_constant_channels(&model).unwrap(),
            ] {
                let got = predict(&smaller, x.view(), 8).unwrap();
                assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);
            }
        }
        // tiny_residual's last add feeds the dense head through the pool: zero filters in both
        // of its producers fold into the dense bias whatever the BatchNorm offsets.
        let mut model = pare_tensor::models::tiny_residual(3, 5);
        randomise_bns(&mut model, 9);
        zero_filters(&mut model, "conv", &[1, 2]);
        zero_filters(&mut model, "b_conv2", &[2, 3]);
        // Channel 2 of `conv` reaches the `same` conv b_conv1 too: dead there through a ReLU.
        if let Some(Layer::BatchNorm(b)) =
            model.layers.iter_mut().find(|l| l.module().name() == "bn")
        {
            b.beta.value[[2]] = -1.0;
            b.moving_mean.value[[2]] = 0.0;
        }
        let x = images(4, 1);
        let want = predict(&model, x.view(), 8).unwrap();
        let (smaller, plan) = fold_constant_channels(&model).unwrap();
        assert_eq!(
            plan,
            vec![
                ("conv".to_string(), vec![0, 1, 3]),
                ("b_conv2".to_string(), vec![0, 1, 3])
            ]
        );
        assert_eq!(
            smaller.param("dense.kernel").unwrap().value.shape(),
            &[3, 3]
        );
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);
    }

    #[test]
    fn added_channels_go_together_or_not_at_all() {
        let model = pare_tensor::models::resnet8(0);
        let half: Vec<usize> = (0..16).step_by(2).collect();
        for one in ["stem_conv", "b1_conv2"] {
            match remove_channels(&model, &[(one, half.clone())]) {
                Err(PruneError::BadChannels { reason, .. }) => {
                    assert!(reason.contains("Add"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        let both =
            remove_channels(&model, &[("stem_conv", half.clone()), ("b1_conv2", half)]).unwrap();
        for (name, shape) in [
            ("stem_conv.kernel", vec![3, 3, 1, 8]),
            ("b1_conv1.kernel", vec![3, 3, 8, 16]),
            ("b1_conv2.kernel", vec![3, 3, 16, 8]),
            ("b1_bn2.moving_mean", vec![8]),
            ("b2_conv1.kernel", vec![3, 3, 8, 32]),
            ("b2_proj.kernel", vec![1, 1, 8, 32]),
        ] {
            let p = both.weights();
            let p = p.iter().find(|p| p.name == name).unwrap();
            assert_eq!(p.value.shape(), &shape[..], "{name}");
        }
        // The head's outputs are the model's.
        assert!(matches!(
            remove_channels(&model, &[("dense", vec![0])]),
            Err(PruneError::Unsupported { .. })
        ));
        // A channel added to the model's input cannot go.
        let mut rng = StdRng::seed_from_u64(1);
        let skip = Sequential::functional(&[6, 6, 2])
            .node(
                Conv2d::new("c", 2, 2, [3, 3], &mut rng).padding(Padding::Same),
                &["input"],
            )
            .node(pare_tensor::Add::new("add"), &["c", "input"])
            .node(Flatten::new("f"), &["add"])
            .node(Dense::new("d", 72, 2, &mut rng), &["f"])
            .build()
            .unwrap();
        assert!(matches!(
            remove_channels(&skip, &[("c", vec![0])]),
            Err(PruneError::Unsupported { .. })
        ));
    }

    #[test]
    fn channels_keep_their_offsets_through_concatenate_and_a_depthwise_multiplier() {
        let mut rng = StdRng::seed_from_u64(5);
        let relu = |c: Conv2d| c.activation(Activation::Relu);
        let mut model = Sequential::functional(&[9, 9, 2])
            .node(relu(Conv2d::new("a", 2, 4, [3, 3], &mut rng)), &["input"])
            .node(relu(Conv2d::new("b", 2, 3, [3, 3], &mut rng)), &["input"])
            .node(pare_tensor::Concatenate::new("cat"), &["a", "b"])
            .node(
                DepthwiseConv2d::with_multiplier("dw", 7, [3, 3], 2, &mut rng),
                &["cat"],
            )
            .node(Conv2d::new("c", 14, 3, [3, 3], &mut rng), &["dw"])
            .node(Flatten::new("f"), &["c"])
            .node(Dense::new("d", 27, 2, &mut rng), &["f"])
            .build()
            .unwrap();
        model.param_mut("a.bias").unwrap().value[[1]] = -0.2;
        zero_filters(&mut model, "a", &[1]);
        zero_filters(&mut model, "b", &[2]);
        let x = inputs(3, [9, 9, 2], 6);
        let want = predict(&model, x.view(), 8).unwrap();
        let (smaller, plan) = remove_dead_channels(&model).unwrap();
        assert_eq!(
            plan,
            vec![
                ("a".to_string(), vec![0, 2, 3]),
                ("b".to_string(), vec![0, 1])
            ]
        );
        // Concatenated channels 1 and 4 + 2 go, and with them depthwise outputs 2, 3, 12, 13.
        let dw = &smaller.param("dw.kernel").unwrap().value;
        assert_eq!(dw.shape(), &[3, 3, 5, 2]);
        let old = &model.param("dw.kernel").unwrap().value;
        assert_eq!(dw.index_axis(Axis(2), 4), old.index_axis(Axis(2), 5));
        let c = &smaller.param("c.kernel").unwrap().value;
        assert_eq!(c.shape(), &[3, 3, 10, 3]);
        let old = &model.param("c.kernel").unwrap().value;
        assert_eq!(c.index_axis(Axis(2), 2), old.index_axis(Axis(2), 4));
        assert_eq!(smaller.param("dw.bias").unwrap().value.len(), 10);
        let got = predict(&smaller, x.view(), 8).unwrap();
        assert_abs_diff_eq!(max_diff(&got, &want), 0.0, epsilon = 1e-5);
    }

    #[test]
    fn smallest_channels_ranks_add_groups_by_their_summed_norms() {
        let mut model = pare_tensor::models::tiny_residual(3, 2);
        // Channel 1 is small in `conv` only, channel 3 small in both producers of the add:
        // the sum ranks channel 3 lowest, then the smaller of the others.
        let scale = |m: &mut Sequential, layer: &str, c: usize, f: f32| {
            let k = m.param_mut(&format!("{layer}.kernel")).unwrap();
            k.value.index_axis_mut(Axis(3), c).mapv_inplace(|v| v * f);
        };
        scale(&mut model, "conv", 1, 1e-3);
        scale(&mut model, "conv", 3, 1e-3);
        scale(&mut model, "b_conv2", 3, 1e-3);
        let plan = smallest_channels(&model, 0.25, Norm::L1).unwrap();
        let kept = |n: &str| plan.iter().find(|(l, _)| l == n).map(|(_, k)| k.clone());
        assert_eq!(kept("conv"), Some(vec![0, 1, 2]));
        assert_eq!(kept("b_conv2"), Some(vec![0, 1, 2]));
        assert_eq!(kept("b_conv1").map(|k| k.len()), Some(3));
        assert_eq!(kept("dense"), None, "dense layers are not filter-pruned");
        let thin = remove_channels(&model, &plan).unwrap();
        assert_eq!(thin.output_shape().unwrap(), [3]);
        assert!(smallest_channels(&model, 0.0, Norm::L2).unwrap().is_empty());
        assert!(matches!(
            smallest_channels(&model, 1.0, Norm::L1),
            Err(PruneError::InvalidSparsity { .. })
        ));
    }
}
