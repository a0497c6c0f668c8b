//! Structured pruning made real: removing whole channels from a model.
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
//! bias comes out of the activations between it and its consumer as exactly zero.
//!
//! Removing output channel `c` of a layer touches two places:
//!
//! * the layer: slice `c` of its kernel's last axis and entry `c` of its bias;
//! * its consumer, the next `Conv2d` or `Dense` (through the layers that act per channel: the
//!   activations, dropout, the max, average and global average pools, BatchNorm and depthwise
//!   convs): a next conv loses slice `c` of its kernel's input axis (axis 2 of
//!   `[kh, kw, in, out]`); a dense layer after a `Flatten` of an `[h, w, C]` map loses every
//!   row `(y · w + x) · C + c` (NHWC flattening order), and a dense layer after a dense layer
//!   (or a global average pool) loses row `c`. A BatchNorm on the way loses entry `c` of its
//!   four vectors, a depthwise conv its input channel `c` (and the outputs made from it).
//!
//! A `Reshape`, a `Softmax` (which mixes channels), a custom layer, or no consumer at all (the
//! model's output) between a layer and its consumer is an error: the channel could not be
//! traced.
//!
//! A zero filter before a BatchNorm outputs the BatchNorm's offset, a constant that is rarely
//! zero, so [`live_channels`] keeps it; [`fold_constant_channels`] removes it anyway, adding the
//! constant's contribution to the consumer's bias.

use ndarray::{ArrayD, Axis};
use pare_tensor::nn::Layer;
use pare_tensor::{Activation, Padding, Pointwise, Sequential};

use crate::error::{PruneError, Result};
use crate::strip::check_copyable;

/// How a removed channel shows up in the consumer's input.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Directly as input channel / feature `c`.
    Channel,
    /// After a `Flatten` of `[.., C]` with `positions` spatial positions: features
    /// `p · C + c`.
    Flattened { positions: usize, channels: usize },
}

/// The output channels to keep per layer: `(layer name, ascending channel indices)`.
pub type ChannelPlan = Vec<(String, Vec<usize>)>;

/// Index of the consumer of layer `i`'s channels and how they reach it.
fn find_consumer(model: &Sequential, i: usize, shapes: &[Vec<usize>]) -> Result<(usize, Route)> {
    let name = model.layers[i].module().name();
    let mut route = Route::Channel;
    for (j, layer) in model.layers.iter().enumerate().skip(i + 1) {
        match layer {
            Layer::ReLU(_)
            | Layer::LeakyReLU(_)
            | Layer::ReLU6(_)
            | Layer::Sigmoid(_)
            | Layer::Tanh(_)
            | Layer::HardSwish(_)
            | Layer::Dropout(_)
            | Layer::MaxPool2d(_)
            | Layer::AvgPool2d(_)
            | Layer::GlobalAveragePool2d(_)
            | Layer::BatchNorm(_)
            | Layer::DepthwiseConv2d(_)
                if matches!(route, Route::Channel) => {}
            Layer::Flatten(_) if matches!(route, Route::Channel) => {
                let input = &shapes[j];
                let channels = *input.last().unwrap_or(&1);
                route = Route::Flattened {
                    positions: input.iter().product::<usize>() / channels.max(1),
                    channels,
                };
            }
            Layer::Conv2d(_) if matches!(route, Route::Channel) => return Ok((j, route)),
            Layer::Dense(_) => return Ok((j, route)),
            other => {
                return Err(PruneError::Unsupported {
                    layer: name.to_owned(),
                    reason: format!(
                        "its channels reach layer {:?}, through which they cannot be traced",
                        other.module().name()
                    ),
                });
            }
        }
    }
    Err(PruneError::Unsupported {
        layer: name.to_owned(),
        reason: "its channels are the model's outputs".into(),
    })
}

/// Input shape of every layer (and the model's output shape last).
fn layer_input_shapes(model: &Sequential) -> Result<Vec<Vec<usize>>> {
    let mut shapes = vec![model.input_shape.clone()];
    for l in &model.layers {
        let next = l.module().output_shape(shapes.last().expect("non-empty"))?;
        shapes.push(next);
    }
    Ok(shapes)
}

fn out_channels(l: &Layer) -> Option<usize> {
    match l {
        Layer::Dense(d) => Some(d.units()),
        Layer::Conv2d(c) => Some(c.kernel_shape()[3]),
        _ => None,
    }
}

/// `a` restricted to `idx` along `axis`, in standard layout (pare-tensor's kernels need it).
fn select(a: &ArrayD<f32>, axis: usize, idx: &[usize]) -> ArrayD<f32> {
    a.select(Axis(axis), idx).as_standard_layout().into_owned()
}

/// A copy of `model` with only the listed output channels of each named `Conv2d` / `Dense`
/// layer, and the matching inputs of the layers that consume them (see the
/// [module documentation](self)). `keep` pairs a layer name with the channel indices to keep,
/// ascending.
///
/// The outputs are unchanged when every removed channel is dead (see [`live_channels`]);
/// otherwise the removed channels' contributions are lost, as requested.
///
/// # Errors
/// [`PruneError::Unsupported`] for a custom layer in the model, a named layer that is not a
/// `Conv2d`/`Dense`, or whose channels cannot be traced to a consumer;
/// [`PruneError::BadChannels`] for an empty, unsorted, repeated or out-of-range list or a layer
/// named twice; [`PruneError::Tensor`] if the model does not chain.
pub fn remove_channels<S: AsRef<str>>(
    model: &Sequential,
    keep: &[(S, Vec<usize>)],
) -> Result<Sequential> {
    // Channel tracing walks the layer list; a graph model's consumers are in its wiring.
    model.require_sequential("remove_channels")?;
    check_copyable(model, "remove_channels")?;
    let shapes = layer_input_shapes(model)?;
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
    let mut out = model.clone();
    for (i, kept) in plan.iter().enumerate() {
        let Some(kept) = kept else { continue };
        if kept.len() == out_channels(&model.layers[i]).unwrap_or(0) {
            continue; // nothing removed
        }
        let (j, route) = find_consumer(model, i, &shapes)?;
        // The channels as they reach the consumer: a depthwise conv with multiplier m turns
        // channel c into its outputs c·m … c·m + m − 1.
        let mut kept: Vec<usize> = kept.to_vec();
        for l in &mut out.layers[i + 1..j] {
            match l {
                Layer::BatchNorm(b) => {
                    for p in [
                        &mut b.gamma,
                        &mut b.beta,
                        &mut b.moving_mean,
                        &mut b.moving_variance,
                    ] {
                        p.value = select(&p.value, 0, &kept);
                    }
                }
                Layer::DepthwiseConv2d(d) => {
                    let m = d.kernel_shape()[3];
                    d.kernel.value = select(&d.kernel.value, 2, &kept);
                    kept = kept
                        .iter()
                        .flat_map(|&c| (0..m).map(move |k| c * m + k))
                        .collect();
                    d.bias.value = select(&d.bias.value, 0, &kept);
                }
                _ => {}
            }
        }
        let kept = &kept;
        let own = plan[i].expect("remove_channels: layer i is planned");
        match &mut out.layers[i] {
            Layer::Dense(d) => {
                d.kernel.value = select(&d.kernel.value, 1, own);
                d.bias.value = select(&d.bias.value, 0, own);
            }
            Layer::Conv2d(c) => {
                c.kernel.value = select(&c.kernel.value, 3, own);
                c.bias.value = select(&c.bias.value, 0, own);
            }
            _ => unreachable!("remove_channels: the plan holds Conv2d and Dense layers only"),
        }
        match (&mut out.layers[j], route) {
            (Layer::Conv2d(c), Route::Channel) => {
                c.kernel.value = select(&c.kernel.value, 2, kept);
            }
            (Layer::Dense(d), Route::Channel) => {
                d.kernel.value = select(&d.kernel.value, 0, kept);
            }
            (
                Layer::Dense(d),
                Route::Flattened {
                    positions,
                    channels,
                },
            ) => {
                let rows: Vec<usize> = (0..positions)
                    .flat_map(|p| kept.iter().map(move |&c| p * channels + c))
                    .collect();
                d.kernel.value = select(&d.kernel.value, 0, &rows);
            }
            _ => unreachable!("remove_channels: find_consumer returns a Conv2d or Dense"),
        }
    }
    out.output_shape()?;
    Ok(out)
}

/// What channel `c` of layer `i`, with a zero kernel slice, reaches its consumer `j` as: `bias`
/// through layer `i`'s own activation and the per-channel layers between, or `None` when that
/// is not one constant everywhere. The activations, BatchNorm (its inference affine map),
/// dropout (the identity in inference) and the average pools map a constant to a constant (the
/// padding of a `same` average pool is left out of each window's count); a `same` max-pool or
/// depthwise conv sees its padding at the borders, so only an exact zero (which the padding
/// equals) passes them; a depthwise conv with a multiplier above 1 spreads the channel over
/// several, which this does not follow.
fn channel_constant(model: &Sequential, i: usize, j: usize, c: usize, bias: f32) -> Option<f32> {
    let own = match &model.layers[i] {
        Layer::Dense(d) => d.activation,
        Layer::Conv2d(c) => c.activation,
        _ => Activation::Linear,
    };
    let mut v = own.apply(bias);
    for l in &model.layers[i + 1..j] {
        v = match l {
            Layer::ReLU(_) => Activation::Relu.apply(v),
            Layer::LeakyReLU(r) => Activation::LeakyRelu(r.alpha).apply(v),
            Layer::ReLU6(_) => Pointwise::Relu6.apply(v),
            Layer::Sigmoid(_) => Pointwise::Sigmoid.apply(v),
            Layer::Tanh(_) => Pointwise::Tanh.apply(v),
            Layer::HardSwish(_) => Pointwise::HardSwish.apply(v),
            Layer::BatchNorm(b) => {
                let (scale, offset) = b.scale_and_offset();
                v * scale[c] + offset[c]
            }
            Layer::MaxPool2d(p) if v != 0.0 && p.padding != Padding::Valid => return None,
            Layer::DepthwiseConv2d(d) => {
                if d.kernel_shape()[3] != 1 || (v != 0.0 && d.padding != Padding::Valid) {
                    return None;
                }
                let k: f32 = d.kernel.value.index_axis(Axis(2), c).iter().sum();
                d.activation.apply(v * k + d.bias.value[[c]])
            }
            _ => v,
        };
    }
    v.is_finite().then_some(v)
}

/// A producer's constant channels: `(layer index, consumer index, route, channels with their
/// constants)`, every channel listed having a zero kernel slice and a finite bias.
type Constants = (usize, usize, Route, Vec<(usize, f32)>);

/// Every `Conv2d` / `Dense` layer with a consumer, and its zero-kernel channels whose output
/// reaches the consumer as one constant.
fn constant_channels(model: &Sequential) -> Result<Vec<Constants>> {
    model.require_sequential("live_channels")?;
    let shapes = layer_input_shapes(model)?;
    let mut out = Vec::new();
    for (i, l) in model.layers.iter().enumerate() {
        let (kernel, bias) = match l {
            Layer::Dense(d) => (&d.kernel.value, &d.bias.value),
            Layer::Conv2d(c) => (&c.kernel.value, &c.bias.value),
            _ => continue,
        };
        let Ok((j, route)) = find_consumer(model, i, &shapes) else {
            continue;
        };
        let last = Axis(kernel.ndim() - 1);
        let constants = kernel
            .axis_iter(last)
            .zip(bias.iter())
            .enumerate()
            .filter(|(_, (k, b))| b.is_finite() && k.iter().all(|&v| v == 0.0))
            .filter_map(|(c, (_, &b))| channel_constant(model, i, j, c, b).map(|v| (c, v)))
            .collect();
        out.push((i, j, route, constants));
    }
    Ok(out)
}

/// The kept channels of a producer with `total` channels whose `removed` ones go; `None` when
/// none go. All removed keeps channel 0, so the model stays well-formed.
fn kept_after(total: usize, removed: &[usize]) -> Option<Vec<usize>> {
    if removed.is_empty() {
        return None;
    }
    let mut kept: Vec<usize> = (0..total).filter(|c| !removed.contains(c)).collect();
    if kept.is_empty() {
        kept.push(0);
    }
    Some(kept)
}

/// The channels of each `Conv2d` / `Dense` layer that are alive, for every layer that has a
/// dead one and a consumer to trace it to. A channel is dead when its kernel slice is zero and
/// its (finite) bias reaches the consumer as exactly zero: a zero bias, or a negative one through
/// a ReLU (see the [module documentation](self)). Layers whose channels are all dead keep their
/// first channel, so the model stays well-formed.
///
/// # Errors
/// [`PruneError::Tensor`] if the model does not chain.
pub fn live_channels(model: &Sequential) -> Result<ChannelPlan> {
    let mut out = Vec::new();
    for (i, _, _, constants) in constant_channels(model)? {
        let dead: Vec<usize> = constants
            .iter()
            .filter(|(_, v)| *v == 0.0)
            .map(|&(c, _)| c)
            .collect();
        let total = out_channels(&model.layers[i]).unwrap_or(0);
        if let Some(kept) = kept_after(total, &dead) {
            out.push((model.layers[i].module().name().to_owned(), kept));
        }
    }
    Ok(out)
}

/// Removes every channel whose output is one constant at its consumer's input, the dead ones
/// ([`live_channels`]) and those that are not zero, folding each constant `v` into the
/// consumer's bias first: `v · Σ` of the kernel rows that read it (over the spatial positions
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
    model.require_sequential("fold_constant_channels")?;
    check_copyable(model, "fold_constant_channels")?;
    let mut out = model.clone();
    let mut plan = Vec::new();
    for (i, j, route, constants) in constant_channels(model)? {
        let foldable: Vec<(usize, f32)> = constants
            .into_iter()
            .filter(|&(_, v)| {
                v == 0.0
                    || match &model.layers[j] {
                        Layer::Conv2d(c) => c.padding == Padding::Valid,
                        _ => true,
                    }
            })
            .collect();
        let removed: Vec<usize> = foldable.iter().map(|&(c, _)| c).collect();
        let total = out_channels(&model.layers[i]).unwrap_or(0);
        let Some(kept) = kept_after(total, &removed) else {
            continue;
        };
        for &(c, v) in foldable
            .iter()
            .filter(|(c, v)| *v != 0.0 && !kept.contains(c))
        {
            fold_into_bias(&mut out.layers[j], route, c, v);
        }
        plan.push((model.layers[i].module().name().to_owned(), kept));
    }
    let smaller = remove_channels(&out, &plan)?;
    Ok((smaller, plan))
}

/// Adds input channel `c`'s constant `v` to the consumer's bias.
fn fold_into_bias(consumer: &mut Layer, route: Route, c: usize, v: f32) {
    match (consumer, route) {
        (Layer::Dense(d), Route::Channel) => {
            let row = d.kernel.value.index_axis(Axis(0), c).to_owned();
            d.bias.value.scaled_add(v, &row);
        }
        (
            Layer::Dense(d),
            Route::Flattened {
                positions,
                channels,
            },
        ) => {
            for p in 0..positions {
                let row = d
                    .kernel
                    .value
                    .index_axis(Axis(0), p * channels + c)
                    .to_owned();
                d.bias.value.scaled_add(v, &row);
            }
        }
        (Layer::Conv2d(conv), Route::Channel) => {
            // [kh, kw, in, out] → the [out] sums over the window of input channel c.
            let k = conv.kernel.value.index_axis(Axis(2), c);
            let sums = k.sum_axis(Axis(0)).sum_axis(Axis(0));
            conv.bias.value.scaled_add(v, &sums);
            conv.use_bias = true;
        }
        _ => unreachable!("fold_into_bias: find_consumer returns a Conv2d or Dense"),
    }
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
    use crate::mask::{Norm, channel_mask};
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
}
