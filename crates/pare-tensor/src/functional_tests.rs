//! Graph models: the merge ops' gradients, the builder's checks, and graph models through
//! training, checkpoints, BatchNorm folding and the summary.

use crate::error::{TensorError, WiringError};
use crate::functional::{Add, Concatenate, INPUT};
use crate::gradcheck::{max_gradient_error, toy_halves};
use crate::graph::{Graph, Var};
use crate::kernels::conv::Padding;
use crate::models::{resnet8, tiny_residual};
use crate::nn::{BatchNorm, Conv2d, Dense, Flatten, Layer, Model, Module, Param, ReLU};
use crate::optim::{Adam, AdamConfig};
use crate::train::{Fit, FitConfig, evaluate, predict};
use ndarray::{ArrayD, Axis, IxDyn, concatenate};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn rand_arr(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(lo..hi))
}

fn weighted_sum(g: &mut Graph, y: Var, seed: u64) -> Var {
    let mut rng = StdRng::seed_from_u64(seed);
    let w = rand_arr(&mut rng, g.shape(y), -1.0, 1.0);
    let w = g.constant(w);
    let p = g.mul(y, w);
    g.sum(p)
}

#[test]
fn concat_values_and_gradient() {
    let mut rng = StdRng::seed_from_u64(1);
    let inputs = [
        rand_arr(&mut rng, &[2, 3, 2, 1], -1.0, 1.0),
        rand_arr(&mut rng, &[2, 3, 2, 3], -1.0, 1.0),
        rand_arr(&mut rng, &[2, 3, 2, 2], -1.0, 1.0),
    ];
    let mut g = Graph::new();
    let vars: Vec<Var> = inputs.iter().map(|a| g.constant(a.clone())).collect();
    let y = g.concat(&vars);
    let views: Vec<_> = inputs.iter().map(|a| a.view()).collect();
    assert_eq!(g.value(y), &concatenate(Axis(3), &views).unwrap());
    let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
        let y = g.concat(v);
        // Squared so the gradient depends on the value, not only on the routing.
        let y2 = g.mul(y, y);
        weighted_sum(g, y2, 2)
    });
    assert!(err < 2e-2, "concat gradient error {err}");
}

#[test]
fn add_and_concatenate_layers_gradient_through_several_inputs() {
    let mut rng = StdRng::seed_from_u64(2);
    let inputs = [
        rand_arr(&mut rng, &[3, 4], -1.0, 1.0),
        rand_arr(&mut rng, &[3, 4], -1.0, 1.0),
        rand_arr(&mut rng, &[3, 4], -1.0, 1.0),
    ];
    let add = Add::new("add");
    let cat = Concatenate::new("cat");
    let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
        let s = add.forward_many(g, v);
        // The same input twice into one Add: its gradient counts twice.
        let twice = add.forward_many(g, &[v[0], v[0]]);
        let c = cat.forward_many(g, &[s, twice, v[2]]);
        let c2 = g.mul(c, c);
        weighted_sum(g, c2, 3)
    });
    assert!(err < 2e-2, "add/concat gradient error {err}");
    let shapes = [vec![4, 4, 2], vec![4, 4, 3]];
    assert_eq!(cat.output_shape_many(&shapes).unwrap(), [4, 4, 5]);
}

fn conv(name: &str, cin: usize, cout: usize, seed: u64) -> Conv2d {
    Conv2d::seeded(name, cin, cout, [3, 3], seed).padding(Padding::Same)
}

fn wiring_err(r: crate::Result<Model>) -> WiringError {
    match r {
        Err(TensorError::Wiring(w)) => w,
        other => panic!("expected a wiring error, got {other:?}"),
    }
}

#[test]
fn the_builder_rejects_bad_wiring_with_typed_errors() {
    let b = || Model::functional(&[6, 6, 2]);
    assert_eq!(wiring_err(b().build()), WiringError::NoNodes);
    let unknown = b()
        .node(conv("a", 2, 2, 0), &[INPUT])
        .node(ReLU::new("r"), &["nope"])
        .build();
    assert_eq!(
        wiring_err(unknown),
        WiringError::UnknownInput {
            node: "r".into(),
            input: "nope".into()
        }
    );
    let dup = b()
        .node(conv("a", 2, 2, 0), &[INPUT])
        .node(ReLU::new("a"), &["a"])
        .build();
    assert_eq!(wiring_err(dup), WiringError::DuplicateName("a".into()));
    let named_input = b().node(ReLU::new(INPUT), &[INPUT]).build();
    assert_eq!(
        wiring_err(named_input),
        WiringError::DuplicateName(INPUT.into())
    );
    let cycle = b()
        .node(conv("a", 2, 2, 0), &[INPUT])
        .node(Add::new("s"), &["a", "t"])
        .node(ReLU::new("t"), &["s"])
        .node(ReLU::new("out"), &["t"])
        .build();
    let WiringError::Cycle(path) = wiring_err(cycle) else {
        panic!("not a cycle error")
    };
    assert_eq!(path.first(), path.last());
    assert!(path.contains(&"s".to_string()) && path.contains(&"t".to_string()));
    let add_shapes = b()
        .node(conv("a", 2, 3, 0), &[INPUT])
        .node(Add::new("s"), &["a", INPUT])
        .build();
    let e = wiring_err(add_shapes);
    assert!(
        matches!(&e, WiringError::ShapeMismatch { node, shapes, .. }
            if node == "s" && shapes == &[vec![6, 6, 3], vec![6, 6, 2]]),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "node \"s\": inputs of shapes [batch, 6, 6, 3], [batch, 6, 6, 2] cannot be added: they \
         must be equal"
    );
    let cat_shapes = b()
        .node(conv("a", 2, 3, 0).strides(2), &[INPUT])
        .node(Concatenate::new("c"), &["a", INPUT])
        .build();
    assert!(matches!(
        wiring_err(cat_shapes),
        WiringError::ShapeMismatch { .. }
    ));
    let two_outputs = b()
        .node(conv("a", 2, 2, 0), &[INPUT])
        .node(ReLU::new("r1"), &["a"])
        .node(ReLU::new("r2"), &["a"])
        .build();
    assert_eq!(
        wiring_err(two_outputs),
        WiringError::Outputs(vec!["r1".into(), "r2".into()])
    );
    let lone_add = b().node(Add::new("s"), &[INPUT]).build();
    assert!(matches!(
        wiring_err(lone_add),
        WiringError::Arity { found: 1, .. }
    ));
    let relu_of_two = b()
        .node(conv("a", 2, 2, 0), &[INPUT])
        .node(ReLU::new("r"), &["a", INPUT])
        .build();
    assert!(matches!(
        wiring_err(relu_of_two),
        WiringError::Arity { found: 2, .. }
    ));
    // A layer's own shape check still speaks for itself.
    let bad_conv = b().node(conv("a", 3, 2, 0), &[INPUT]).build();
    assert!(matches!(bad_conv, Err(TensorError::InputShape { .. })));
}

/// Concatenate(relu(conv(x)), x) → conv → flatten → dense, with nodes added out of order.
fn branchy() -> Model {
    Model::functional(&[5, 5, 2])
        .node(Dense::seeded("head", 5 * 5 * 3, 3, 4), &["flat"])
        .node(Flatten::new("flat"), &["mix"])
        .node(conv("mix", 5, 3, 3), &["cat"])
        .node(Concatenate::new("cat"), &["relu", INPUT])
        .node(ReLU::new("relu"), &["a"])
        .node(conv("a", 2, 3, 1), &[INPUT])
        .build()
        .unwrap()
}

#[test]
fn graph_forward_computes_each_node_after_its_inputs() {
    let model = branchy();
    let names: Vec<&str> = model.layers.iter().map(|l| l.module().name()).collect();
    assert_eq!(names, ["a", "relu", "cat", "mix", "flat", "head"]);
    assert_eq!(model.output_shape().unwrap(), [3]);
    assert_eq!(model.consumers_of(INPUT), ["a", "cat"]);
    let mut rng = StdRng::seed_from_u64(5);
    let x = rand_arr(&mut rng, &[4, 5, 5, 2], -1.0, 1.0);
    // The same computation spelled out with graph ops.
    let mut g = Graph::inference();
    let xv = g.constant(x.clone());
    let by_hand = {
        let a = model.layer("a").unwrap().module().forward(&mut g, xv);
        let r = g.relu(a);
        let c = g.concat(&[r, xv]);
        let m = model.layer("mix").unwrap().module().forward(&mut g, c);
        let f = g.reshape(m, &[4, 75]);
        model.layer("head").unwrap().module().forward(&mut g, f)
    };
    let want = g.value(by_hand).clone();
    assert_eq!(predict(&model, x.view(), 3).unwrap().into_dyn(), want);
    // Taps on a graph model.
    let mut g = Graph::inference();
    let xv = g.constant(x);
    let (_, taps) = model.forward_with_taps(&mut g, xv, &["cat", "relu"]);
    assert_eq!(g.shape(taps[0].unwrap()), [4, 5, 5, 5]);
    assert_eq!(g.shape(taps[1].unwrap()), [4, 5, 5, 3]);
    // Pushing onto a graph model wires the new layer to the output.
    let pushed = branchy().push(ReLU::new("tail"));
    assert_eq!(pushed.inputs_of("tail"), Some(vec!["head"]));
    assert!(pushed.require_sequential("x").is_err());
    assert!(crate::models::small_cnn(0).require_sequential("x").is_ok());
    // The graph-free path follows the wiring too (the concatenation of a branch and the
    // input, then the pushed tail).
    let x = rand_arr(&mut rng, &[3, 5, 5, 2], -1.0, 1.0);
    let lean = crate::infer::forward(&pushed, x.view()).unwrap();
    let graph = predict(&pushed, x.view(), 3).unwrap().into_dyn();
    assert_eq!(lean.shape(), graph.shape());
    for (a, b) in lean.iter().zip(graph.iter()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn a_graph_model_trains_evaluates_and_updates_its_moving_statistics() {
    // A few dozen steps: moving statistics this short a run can follow need a faster momentum
    // than Keras' 0.99.
    let fast = |mut m: Model| {
        for l in &mut m.layers {
            if let Layer::BatchNorm(bn) = l {
                bn.config.momentum = 0.8;
            }
        }
        m
    };
    let mut model = fast(tiny_residual(2, 0));
    let (x, y) = toy_halves(48, 1, 0.8, 0.2);
    let mut adam = Adam::new(AdamConfig {
        learning_rate: 0.02,
        ..Default::default()
    })
    .unwrap();
    let cfg = FitConfig {
        epochs: 6,
        batch_size: 16,
        verbose: false,
        ..Default::default()
    };
    let hist = Fit::new(cfg.clone())
        .run(&mut model, &mut adam, x.view(), &y)
        .unwrap();
    assert!(
        hist.epochs.last().unwrap().loss < hist.epochs[0].loss,
        "{hist:?}"
    );
    let eval = evaluate(&model, x.view(), &y, 16).unwrap();
    assert!(eval.accuracy > 0.9, "{eval:?}");
    let Some(Layer::BatchNorm(bn)) = model.layer("b_bn2") else {
        panic!("b_bn2 is a BatchNorm")
    };
    assert!(bn.moving_mean.value.iter().any(|&m| m.abs() > 1e-4));
    // Every trainable parameter, the residual branch's included, moved.
    let fresh = tiny_residual(2, 0);
    for (a, b) in model.params().iter().zip(fresh.params()) {
        assert_ne!(a.value, b.value, "{} did not train", a.name);
    }
    // Seeded: the same run again, bit for bit.
    let mut again = fast(tiny_residual(2, 0));
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

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pare-functional-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn checkpoints_save_and_check_the_wiring() {
    use crate::checkpoint::{WIRING_KEY, load, save, wiring};
    let a = resnet8(1);
    let path = tmp("resnet8.safetensors");
    let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
    save(&a, &path, meta.clone()).unwrap();
    assert_eq!(wiring(&path).unwrap(), Some(a.wiring.clone()));
    let mut b = resnet8(2);
    assert_eq!(
        load(&mut b, &path).unwrap(),
        meta,
        "the wiring key is not user metadata"
    );
    assert_eq!(a.weights(), b.weights());
    // Same tensors, other wiring: the shortcut of block 1 taken from its first ReLU.
    let mut rewired = resnet8(2);
    rewired
        .wiring
        .insert("b1_add".into(), vec!["b1_bn2".into(), "b1_relu1".into()]);
    let before = rewired
        .weights()
        .into_iter()
        .cloned()
        .collect::<Vec<Param>>();
    let err = load(&mut rewired, &path).unwrap_err();
    assert!(
        matches!(&err, TensorError::CheckpointMismatch { mismatches, .. }
            if mismatches.len() == 1 && mismatches[0].starts_with("wiring:")),
        "{err}"
    );
    assert_eq!(
        rewired.weights().into_iter().cloned().collect::<Vec<_>>(),
        before
    );
    // A chain's checkpoint has no wiring entry, as before.
    let chain = tmp("chain.safetensors");
    save(&crate::models::small_cnn(0), &chain, Default::default()).unwrap();
    assert_eq!(wiring(&chain).unwrap(), None);
    assert!(!WIRING_KEY.is_empty());
}

fn trained_like(model: &mut Model, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for l in &mut model.layers {
        if let Layer::BatchNorm(bn) = l {
            bn.gamma.value.mapv_inplace(|_| rng.random_range(0.5..2.0));
            bn.beta.value.mapv_inplace(|_| rng.random_range(-1.0..1.0));
            bn.moving_mean
                .value
                .mapv_inplace(|_| rng.random_range(-0.5..0.5));
            bn.moving_variance
                .value
                .mapv_inplace(|_| rng.random_range(0.1..3.0));
        }
    }
}

#[test]
fn batch_norm_folds_in_a_graph_model_with_equal_outputs() {
    let mut model = resnet8(3);
    trained_like(&mut model, 4);
    let folded = crate::fold_batch_norm(&model).unwrap();
    assert!(
        !folded
            .layers
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm(_)))
    );
    assert_eq!(folded.layers.len(), model.layers.len() - 9);
    assert_eq!(
        folded.inputs_of("b2_add"),
        Some(vec!["b2_conv2", "b2_proj"])
    );
    assert_eq!(folded.inputs_of("stem_relu"), Some(vec!["stem_conv"]));
    folded.output_shape().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let x = rand_arr(&mut rng, &[3, 28, 28, 1], 0.0, 1.0);
    let (a, b) = (
        predict(&model, x.view(), 3).unwrap(),
        predict(&folded, x.view(), 3).unwrap(),
    );
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{p} vs {q}");
    }
    // A conv that feeds its BatchNorm and another node keeps its BatchNorm.
    let shared = Model::functional(&[4, 4, 1])
        .node(conv("c", 1, 2, 0), &[INPUT])
        .node(BatchNorm::new("bn", 2), &["c"])
        .node(Add::new("s"), &["bn", "c"])
        .build()
        .unwrap();
    assert_eq!(crate::fold_batch_norm(&shared).unwrap().layers.len(), 3);
}

#[test]
fn the_graph_summary_has_keras_columns_and_totals() {
    let text = resnet8(0).summary().to_string();
    assert!(text.starts_with("Model: \"functional\""), "{text}");
    assert!(text.contains("Connected to"));
    assert!(text.contains(" input (InputLayer)"));
    assert!(text.contains("Total params: 78,426 (306.35 KB)"), "{text}");
    assert!(
        text.contains("Trainable params: 77,754 (303.73 KB)"),
        "{text}"
    );
    assert!(
        text.contains("Non-trainable params: 672 (2.62 KB)"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    let add = text
        .lines()
        .position(|l| l.contains("b2_add (Add)"))
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[add].trim_end().ends_with("b2_bn2"), "{}", lines[add]);
    assert!(
        lines[add + 1].trim_end().ends_with("b2_proj_bn"),
        "{}",
        lines[add + 1]
    );
    assert!(text.contains(" b2_proj_bn (BatchNormalization)"));
    // A chain keeps its table.
    assert!(
        !crate::models::small_cnn(0)
            .summary()
            .to_string()
            .contains("Connected")
    );
}

#[test]
fn fused_activations_give_the_unfused_values_and_gradients() {
    // A ReLU whose input feeds nothing else is applied in place on a BatchNorm or Add node;
    // tapping those nodes keeps them unfused. Same arithmetic either way: bit-identical.
    let model = tiny_residual(3, 5);
    let mut rng = StdRng::seed_from_u64(6);
    let x = rand_arr(&mut rng, &[4, 28, 28, 1], 0.0, 1.0);
    let labels = [0, 2, 1, 2];
    let run = |taps: &[&str]| {
        let mut g = Graph::new();
        let xv = g.constant(x.clone());
        let (logits, _) = model.forward_with_taps(&mut g, xv, taps);
        let loss = g.softmax_cross_entropy(logits, &labels);
        let grads = g.backward(loss);
        let mut named: Vec<(String, ArrayD<f32>)> =
            grads.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (g.len(), g.value(logits).clone(), named)
    };
    let (fused_nodes, fused_logits, fused_grads) = run(&[]);
    let (plain_nodes, plain_logits, plain_grads) = run(&["bn", "b_bn1", "b_add"]);
    assert_eq!(plain_nodes - fused_nodes, 3, "three ReLUs fused");
    assert_eq!(fused_logits, plain_logits);
    assert_eq!(fused_grads, plain_grads);
}
