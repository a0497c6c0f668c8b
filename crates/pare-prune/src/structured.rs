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
//! * its consumer, the next `Conv2d` or `Dense` (through any `ReLU`, `LeakyReLU` and
//!   `MaxPool2d`, which act per channel): a next conv loses slice `c` of its kernel's input axis
//!   (axis 2 of `[kh, kw, in, out]`); a dense layer after a `Flatten` of an `[h, w, C]` map
//!   loses every row `(y · w + x) · C + c` (NHWC flattening order), and a dense layer after a
//!   dense layer loses row `c`.
//!
//! A `Reshape`, a custom layer, or no consumer at all (the model's output) between a layer and
//! its consumer is an error: the channel could not be traced.

use ndarray::{ArrayD, Axis};
use pare_tensor::nn::Layer;
use pare_tensor::{Activation, Sequential};

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
            Layer::ReLU(_) | Layer::LeakyReLU(_) | Layer::MaxPool2d(_)
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
        match &mut out.layers[i] {
            Layer::Dense(d) => {
                d.kernel.value = select(&d.kernel.value, 1, kept);
                d.bias.value = select(&d.bias.value, 0, kept);
            }
            Layer::Conv2d(c) => {
                c.kernel.value = select(&c.kernel.value, 3, kept);
                c.bias.value = select(&c.bias.value, 0, kept);
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

/// What a channel with a zero kernel slice outputs everywhere: `bias` through layer `i`'s own
/// activation and the per-channel layers up to its consumer `j`. Max-pooling leaves a constant
/// as it is, and an exact zero even at padded borders, which is the only value acted upon.
fn constant_output(model: &Sequential, i: usize, j: usize, bias: f32) -> f32 {
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
            _ => v,
        };
    }
    v
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
    let shapes = layer_input_shapes(model)?;
    let mut out = Vec::new();
    for (i, l) in model.layers.iter().enumerate() {
        let (kernel, bias) = match l {
            Layer::Dense(d) => (&d.kernel.value, &d.bias.value),
            Layer::Conv2d(c) => (&c.kernel.value, &c.bias.value),
            _ => continue,
        };
        let Ok((j, _)) = find_consumer(model, i, &shapes) else {
            continue;
        };
        let last = Axis(kernel.ndim() - 1);
        let dead = |k: ndarray::ArrayViewD<'_, f32>, b: f32| {
            b.is_finite() && constant_output(model, i, j, b) == 0.0 && k.iter().all(|&v| v == 0.0)
        };
        let mut kept: Vec<usize> = kernel
            .axis_iter(last)
            .zip(bias.iter())
            .enumerate()
            .filter(|(_, (k, b))| !dead(k.view(), **b))
            .map(|(c, _)| c)
            .collect();
        if kept.is_empty() {
            kept.push(0);
        }
        if kept.len() < kernel.len_of(last) {
            out.push((l.module().name().to_owned(), kept));
        }
    }
    Ok(out)
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
    use pare_tensor::nn::{Conv2d, Dense, Flatten, LeakyReLU, MaxPool2d, Module, ReLU, Reshape};
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
