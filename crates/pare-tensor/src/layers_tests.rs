//! Gradient checks and independently worked values for the layers of [`crate::layers`] and
//! their ops in [`crate::layer_ops`].

use crate::gradcheck::max_gradient_error;
use crate::graph::{Graph, Var};
use crate::kernels::conv::Padding;
use crate::layer_ops::Pointwise;
use crate::nn::{
    AvgPool2d, BatchNorm, BatchNormConfig, Conv2d, Dense, DepthwiseConv2d, Dropout, Flatten,
    GlobalAveragePool2d, HardSwish, Module, ReLU, ReLU6, Sequential, Sigmoid, Softmax, Tanh,
};
use crate::optim::{Adam, AdamConfig};
use crate::train::{Fit, FitConfig, predict};
use approx::assert_abs_diff_eq;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng, rngs::StdRng};

const TOL: f32 = 2e-2;

fn rand_arr(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(lo..hi))
}

/// A scalar from `y` with fixed random weights, so every output element counts differently
/// (a plain sum of a batch-normalised output has no gradient at all).
fn weighted_sum(g: &mut Graph, y: Var, seed: u64) -> Var {
    let mut rng = StdRng::seed_from_u64(seed);
    let w = rand_arr(&mut rng, g.shape(y), -1.0, 1.0);
    let w = g.constant(w);
    let p = g.mul(y, w);
    g.sum(p)
}

#[test]
fn batch_norm_gradient_with_batch_and_with_moving_statistics() {
    let mut rng = StdRng::seed_from_u64(1);
    let mm = rand_arr(&mut rng, &[3], -0.5, 0.5);
    let mv = rand_arr(&mut rng, &[3], 0.5, 2.0);
    for (shape, training) in [
        (vec![4, 3], true),
        (vec![2, 3, 2, 3], true),
        (vec![2, 3, 2, 3], false),
    ] {
        let inputs = [
            rand_arr(&mut rng, &shape, -2.0, 2.0),
            rand_arr(&mut rng, &[3], 0.5, 1.5),
            rand_arr(&mut rng, &[3], -1.0, 1.0),
        ];
        let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
            g.set_training_layers(training);
            let (y, stats) = g.batch_norm(v[0], (v[1], v[2]), (&mm, &mv), 1e-3);
            assert_eq!(stats.is_some(), training);
            weighted_sum(g, y, 3)
        });
        assert!(
            err < TOL,
            "batch_norm {shape:?} training {training}: error {err}"
        );
    }
}

#[test]
fn batch_norm_values_worked_by_hand() {
    // One channel 1, 2, 3, 4: mean 2.5, biased variance 1.25 (Keras' moments), so
    // y = (x − 2.5) / sqrt(1.25 + 1e-3); γ = 2, β = 1 scale and shift that.
    let bn = BatchNorm::new("bn", 1);
    let x = ArrayD::from_shape_vec(IxDyn(&[4, 1]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let mut g = Graph::new();
    let gamma = g.constant(ArrayD::from_elem(IxDyn(&[1]), 2.0));
    let beta = g.constant(ArrayD::from_elem(IxDyn(&[1]), 1.0));
    let xv = g.constant(x.clone());
    let (y, stats) = g.batch_norm(
        xv,
        (gamma, beta),
        (&bn.moving_mean.value, &bn.moving_variance.value),
        1e-3,
    );
    let (mean, var) = stats.unwrap();
    assert_abs_diff_eq!(mean[0], 2.5, epsilon = 1e-6);
    assert_abs_diff_eq!(var[0], 1.25, epsilon = 1e-6);
    let s = 1.0 / (1.25f32 + 1e-3).sqrt();
    for (got, x) in g.value(y).iter().zip([1.0f32, 2.0, 3.0, 4.0]) {
        assert_abs_diff_eq!(*got, 2.0 * (x - 2.5) * s + 1.0, epsilon = 1e-5);
    }
    // The layer records Keras' moving averages: 0.99 · old + 0.01 · batch.
    let mut g = Graph::new();
    let xv = g.constant(x.clone());
    bn.forward(&mut g, xv);
    let updates = g.take_state_updates();
    assert_eq!(updates[0].0, "bn.moving_mean");
    assert_abs_diff_eq!(updates[0].1[0], 0.025, epsilon = 1e-7);
    assert_eq!(updates[1].0, "bn.moving_variance");
    assert_abs_diff_eq!(updates[1].1[0], 0.99 + 0.0125, epsilon = 1e-6);
    // Inference uses the moving statistics (0 and 1 here): y = x / sqrt(1 + 1e-3).
    let mut g = Graph::inference();
    let xv = g.constant(x);
    let y = bn.forward(&mut g, xv);
    assert!(g.state_updates().is_empty());
    assert_abs_diff_eq!(g.value(y)[[3, 0]], 4.0 / 1.001f32.sqrt(), epsilon = 1e-6);
}

#[test]
fn batch_norm_config_is_checked() {
    for cfg in [
        BatchNormConfig {
            momentum: 1.5,
            ..Default::default()
        },
        BatchNormConfig {
            epsilon: 0.0,
            ..Default::default()
        },
        BatchNormConfig {
            epsilon: f32::NAN,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            BatchNorm::with_config("bn", 2, cfg),
            Err(crate::TensorError::BadHyperParameter { .. })
        ));
    }
    let bn = BatchNorm::new("bn", 2);
    assert_eq!(bn.config.momentum, 0.99);
    assert_eq!(bn.config.epsilon, 1e-3);
    assert!(bn.output_shape(&[4, 4, 3]).is_err());
}

#[test]
fn pooling_gradients() {
    let mut rng = StdRng::seed_from_u64(2);
    for (pool, stride, pad) in [
        (2, 2, Padding::Valid),
        (3, 2, Padding::Same),
        (2, 1, Padding::Same),
    ] {
        let inputs = [rand_arr(&mut rng, &[2, 5, 4, 3], -1.0, 1.0)];
        let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
            let y = g.avg_pool(v[0], [pool, pool], [stride, stride], pad);
            weighted_sum(g, y, 4)
        });
        assert!(err < TOL, "avg_pool {pool} {stride} {pad:?}: error {err}");
    }
    let inputs = [rand_arr(&mut rng, &[2, 3, 4, 5], -1.0, 1.0)];
    let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
        let y = g.global_avg_pool(v[0]);
        assert_eq!(g.shape(y), &[2, 5]);
        weighted_sum(g, y, 5)
    });
    assert!(err < TOL, "global_avg_pool: error {err}");
}

#[test]
fn depthwise_gradient() {
    let mut rng = StdRng::seed_from_u64(3);
    for (m, stride, pad, bias) in [
        (1, 1, Padding::Same, true),
        (2, 2, Padding::Valid, true),
        (1, 2, Padding::Same, false),
    ] {
        let mut inputs = vec![
            rand_arr(&mut rng, &[2, 5, 6, 3], -1.0, 1.0),
            rand_arr(&mut rng, &[3, 3, 3, m], -1.0, 1.0),
        ];
        if bias {
            inputs.push(rand_arr(&mut rng, &[3 * m], -1.0, 1.0));
        }
        let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
            let y = g.depthwise_conv2d(v[0], v[1], v.get(2).copied(), [stride, stride], pad);
            weighted_sum(g, y, 6)
        });
        assert!(
            err < TOL,
            "depthwise m {m} stride {stride} {pad:?}: error {err}"
        );
    }
}

#[test]
fn pointwise_gradients_off_the_kinks() {
    let mut rng = StdRng::seed_from_u64(4);
    for f in [
        Pointwise::Sigmoid,
        Pointwise::Tanh,
        Pointwise::Relu6,
        Pointwise::HardSwish,
    ] {
        // -8..8 covers both flat sides of ReLU6 and hard-swish; values near a kink (0, 6 for
        // ReLU6; ±3 for hard-swish) are moved off it so the difference step does not straddle it.
        let x = rand_arr(&mut rng, &[40], -8.0, 8.0).mapv(|v| {
            let near = [-3.0f32, 0.0, 3.0, 6.0]
                .iter()
                .any(|k| (v - k).abs() < 0.05);
            if near { v + 0.1 } else { v }
        });
        let err = max_gradient_error(&[x], 1e-2, &|g, v| {
            let y = g.pointwise(v[0], f);
            weighted_sum(g, y, 7)
        });
        assert!(err < TOL, "{f:?}: error {err}");
    }
}

#[test]
fn pointwise_values_from_their_formulas() {
    // sigmoid(2) = 1 / (1 + e^-2) = 0.8807971; tanh(1) = 0.7615942; hard-swish(1) =
    // 1 · relu6(4) / 6 = 2/3, hard-swish(-1) = -1 · 2 / 6; ReLU6 caps at 6.
    let cases: [(Pointwise, f32, f32); 10] = [
        (Pointwise::Sigmoid, 0.0, 0.5),
        (Pointwise::Sigmoid, 2.0, 0.880_797_1),
        (Pointwise::Sigmoid, -100.0, 0.0),
        (Pointwise::Tanh, 1.0, 0.761_594_2),
        (Pointwise::Relu6, -1.0, 0.0),
        (Pointwise::Relu6, 7.0, 6.0),
        (Pointwise::HardSwish, 1.0, 2.0 / 3.0),
        (Pointwise::HardSwish, -1.0, -1.0 / 3.0),
        (Pointwise::HardSwish, -4.0, 0.0),
        (Pointwise::HardSwish, 4.0, 4.0),
    ];
    for (f, x, want) in cases {
        assert_abs_diff_eq!(f.apply(x), want, epsilon = 1e-6);
    }
    assert!(Pointwise::Sigmoid.apply(100.0).is_finite());
}

#[test]
fn dropout_is_inverted_seeded_and_off_in_inference() {
    let x = ArrayD::from_elem(IxDyn(&[100, 100]), 1.0f32);
    let run = |seed: u64, training: bool| {
        let mut g = if training {
            Graph::new()
        } else {
            Graph::inference()
        };
        g.set_seed(seed);
        let xv = g.constant(x.clone());
        let y = Dropout::new("d", 0.25).unwrap().forward(&mut g, xv);
        g.value(y).clone()
    };
    let a = run(1, true);
    let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
    // 10,000 draws at p = 0.75: the standard deviation is 0.0043.
    assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    assert_eq!(a, run(1, true));
    assert_ne!(a, run(2, true));
    assert_eq!(run(1, false), x);
    assert!(matches!(
        Dropout::new("d", 1.0),
        Err(crate::TensorError::BadHyperParameter { .. })
    ));
    // The gradient is the same mask.
    let inputs = [ArrayD::from_elem(IxDyn(&[5, 4]), 0.5f32)];
    let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
        g.set_seed(9);
        let y = g.dropout(v[0], 0.5, 3);
        weighted_sum(g, y, 8)
    });
    assert!(err < TOL, "dropout: error {err}");
}

#[test]
fn activation_layers_match_their_ops() {
    let mut rng = StdRng::seed_from_u64(5);
    let x = rand_arr(&mut rng, &[3, 4], -5.0, 5.0);
    type Case = (Box<dyn Module>, fn(f32) -> f32);
    let layers: Vec<Case> = vec![
        (Box::new(Sigmoid::new("s")), |v| Pointwise::Sigmoid.apply(v)),
        (Box::new(Tanh::new("t")), f32::tanh),
        (Box::new(ReLU6::new("r")), |v| v.clamp(0.0, 6.0)),
        (Box::new(HardSwish::new("h")), |v| {
            Pointwise::HardSwish.apply(v)
        }),
    ];
    for (layer, f) in layers {
        let mut g = Graph::inference();
        let xv = g.constant(x.clone());
        let y = layer.forward(&mut g, xv);
        for (a, b) in g.value(y).iter().zip(x.iter()) {
            assert_abs_diff_eq!(*a, f(*b), epsilon = 1e-6);
        }
    }
    let mut g = Graph::inference();
    let xv = g.constant(x.clone());
    let y = Softmax::new("sm").forward(&mut g, xv);
    for row in g.value(y).rows() {
        assert_abs_diff_eq!(row.sum(), 1.0, epsilon = 1e-6);
    }
}

/// conv (no bias) → BN → ReLU → global average pool → dense, on 8×8 inputs.
fn bn_model(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new(&[8, 8, 1])
        .push(
            Conv2d::new("conv", 1, 4, [3, 3], &mut rng)
                .padding(Padding::Same)
                .use_bias(false),
        )
        .push(BatchNorm::new("bn", 4))
        .push(ReLU::new("relu"))
        .push(GlobalAveragePool2d::new("gap"))
        .push(Dense::new("dense", 4, 2, &mut rng))
}

fn toy(n: usize, seed: u64) -> (ArrayD<f32>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = rand_arr(&mut rng, &[n, 8, 8, 1], 0.0, 0.3);
    let y: Vec<usize> = (0..n).map(|i| i % 2).collect();
    for (i, &label) in y.iter().enumerate() {
        for r in 0..4 {
            for c in 0..8 {
                x[[i, r + 4 * label, c, 0]] += 1.0;
            }
        }
    }
    (x, y)
}

#[test]
fn fit_updates_moving_statistics_and_never_trains_them() {
    let mut model = bn_model(1);
    assert!(model.uses_batch_statistics());
    let names: Vec<_> = model.params().iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        names,
        [
            "conv.kernel",
            "bn.gamma",
            "bn.beta",
            "dense.kernel",
            "dense.bias"
        ]
    );
    let (x, y) = toy(64, 2);
    let mut adam = Adam::new(AdamConfig {
        learning_rate: 0.02,
        ..Default::default()
    })
    .unwrap();
    let cfg = FitConfig {
        epochs: 8,
        batch_size: 16,
        verbose: false,
        ..Default::default()
    };
    let before = predict(&model, x.view(), 64).unwrap();
    let hist = Fit::new(cfg.clone())
        .run(&mut model, &mut adam, x.view(), &y)
        .unwrap();
    assert!(hist.epochs.last().unwrap().accuracy > 0.9, "{hist:?}");
    let bn = match model.layer("bn") {
        Some(crate::nn::Layer::BatchNorm(b)) => b.clone(),
        _ => unreachable!(),
    };
    // 32 steps of 0.99 · old + 0.01 · batch: the moving mean moved off 0 towards the batch
    // means, by about 1 − 0.99^32 = 27 % of the way.
    assert!(bn.moving_mean.value.iter().any(|&m| m.abs() > 1e-3));
    assert!(
        bn.moving_variance
            .value
            .iter()
            .all(|&v| v > 0.0 && v != 1.0)
    );
    assert_ne!(before, predict(&model, x.view(), 64).unwrap());
    // Same seed, same run, bit for bit (dropout-free, one graph per step).
    let mut again = bn_model(1);
    let mut adam = Adam::new(AdamConfig {
        learning_rate: 0.02,
        ..Default::default()
    })
    .unwrap();
    Fit::new(cfg)
        .run(&mut again, &mut adam, x.view(), &y)
        .unwrap();
    assert_eq!(again.weights(), model.weights());
}

#[test]
fn checkpoints_hold_moving_statistics_and_no_unused_bias() {
    let mut model = bn_model(3);
    if let Some(crate::nn::Layer::BatchNorm(b)) = model.layers.get_mut(1) {
        b.moving_mean.value.fill(0.5);
        b.moving_variance.value.fill(2.0);
    }
    let dir = std::env::temp_dir().join(format!("pare-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bn.safetensors");
    crate::checkpoint::save(&model, &path, Default::default()).unwrap();
    let mut other = bn_model(4);
    crate::checkpoint::load(&mut other, &path).unwrap();
    assert_eq!(other.weights(), model.weights());
    // A model expecting a conv bias (or without the BN) does not match the file.
    let mut rng = StdRng::seed_from_u64(0);
    let mut with_bias = Sequential::new(&[8, 8, 1])
        .push(Conv2d::new("conv", 1, 4, [3, 3], &mut rng).padding(Padding::Same))
        .push(BatchNorm::new("bn", 4))
        .push(ReLU::new("relu"))
        .push(GlobalAveragePool2d::new("gap"))
        .push(Dense::new("dense", 4, 2, &mut rng));
    let err = crate::checkpoint::load(&mut with_bias, &path).unwrap_err();
    assert!(err.to_string().contains("missing conv.bias"), "{err}");
    let mut no_bn = Sequential::new(&[8, 8, 1])
        .push(
            Conv2d::new("conv", 1, 4, [3, 3], &mut rng)
                .padding(Padding::Same)
                .use_bias(false),
        )
        .push(Flatten::new("f"))
        .push(Dense::new("dense", 256, 2, &mut rng));
    let err = crate::checkpoint::load(&mut no_bn, &path).unwrap_err();
    assert!(
        err.to_string().contains("unexpected bn.moving_mean"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_frozen_batch_norm_uses_moving_statistics_on_a_training_graph() {
    let model = bn_model(5);
    let (x, _) = toy(4, 6);
    let mut g = Graph::new();
    g.set_training_layers(false);
    let xv = g.constant(x.clone());
    let y = model.forward(&mut g, xv);
    assert!(g.state_updates().is_empty());
    let frozen = g.value(y).clone();
    let mut h = Graph::inference();
    let xv = h.constant(x);
    let want = model.forward(&mut h, xv);
    assert_eq!(&frozen, h.value(want));
}

#[test]
fn new_layers_report_shapes_and_chain() {
    let mut rng = StdRng::seed_from_u64(7);
    let model = Sequential::new(&[9, 9, 3])
        .push(
            DepthwiseConv2d::new("dw", 3, [3, 3], &mut rng)
                .strides(2)
                .padding(Padding::Same),
        )
        .push(ReLU6::new("r6"))
        .push(DepthwiseConv2d::with_multiplier("dw2", 3, [1, 1], 2, &mut rng).use_bias(false))
        .push(AvgPool2d::new("ap", 2).padding(Padding::Same))
        .push(Dropout::new("drop", 0.5).unwrap())
        .push(GlobalAveragePool2d::new("gap"))
        .push(Dense::new("d", 6, 4, &mut rng).use_bias(false))
        .push(Softmax::new("sm"));
    assert_eq!(model.output_shape().unwrap(), [4]);
    let names: Vec<_> = model.params().iter().map(|p| p.name.clone()).collect();
    assert_eq!(names, ["dw.kernel", "dw.bias", "dw2.kernel", "d.kernel"]);
    let x = rand_arr(&mut rng, &[2, 9, 9, 3], 0.0, 1.0);
    let p = predict(&model, x.view(), 2).unwrap();
    for row in p.rows() {
        assert_abs_diff_eq!(row.sum(), 1.0, epsilon = 1e-5);
    }
    assert!(
        GlobalAveragePool2d::new("g").output_shape(&[4]).is_err()
            && DepthwiseConv2d::new("dw", 2, [3, 3], &mut rng)
                .output_shape(&[9, 9, 3])
                .is_err()
    );
}
