//! Graph models through int8: conversion against the float model, the DAG engine's paths
//! against each other, the file's wiring and its typed errors.

use ndarray::{ArrayD, IxDyn};
use pare_tensor::nn::{
    BatchNorm, Conv2d, Dense, GlobalAveragePool2d, MaxPool2d, Model, ReLU, Sigmoid,
};
use pare_tensor::{Activation, Add, Concatenate, Padding, train::predict};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{ConvertConfig, Interpreter, LayerKind, Mode, QuantError, QuantizedModel, convert};

fn bn(name: &str, c: usize, rng: &mut StdRng) -> BatchNorm {
    let mut b = BatchNorm::new(name, c);
    for v in b.moving_mean.value.iter_mut() {
        *v = rng.random_range(-0.3..0.3);
    }
    for v in b.moving_variance.value.iter_mut() {
        *v = rng.random_range(0.5..2.0);
    }
    b
}

/// conv-BN-ReLU stem; a residual block (conv-BN-ReLU-conv-BN, add, ReLU); a side branch
/// (1×1 conv, max-pool) joined on the channels; global average pool; dense.
fn residual(seed: u64) -> Model {
    let mut rng = StdRng::seed_from_u64(seed);
    let same = Padding::Same;
    Model::functional(&[10, 10, 2])
        .node(
            Conv2d::new("stem", 2, 6, [3, 3], &mut rng)
                .padding(same)
                .use_bias(false),
            &["input"],
        )
        .node(bn("stem_bn", 6, &mut rng), &["stem"])
        .node(ReLU::new("stem_relu"), &["stem_bn"])
        .node(
            Conv2d::new("c1", 6, 6, [3, 3], &mut rng)
                .padding(same)
                .activation(Activation::Relu),
            &["stem_relu"],
        )
        .node(
            Conv2d::new("c2", 6, 6, [3, 3], &mut rng)
                .padding(same)
                .use_bias(false),
            &["c1"],
        )
        .node(bn("c2_bn", 6, &mut rng), &["c2"])
        .node(Add::new("add"), &["c2_bn", "stem_relu"])
        .node(ReLU::new("add_relu"), &["add"])
        .node(Conv2d::new("side", 6, 3, [1, 1], &mut rng), &["stem_relu"])
        .node(MaxPool2d::new("side_pool", 2).strides(1), &["side"])
        .node(MaxPool2d::new("main_pool", 2).strides(1), &["add_relu"])
        .node(Concatenate::new("cat"), &["main_pool", "side_pool"])
        .node(GlobalAveragePool2d::new("gap"), &["cat"])
        .node(Dense::new("fc", 9, 4, &mut rng), &["gap"])
        .build()
        .unwrap()
}

fn inputs(n: usize, seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_fn(IxDyn(&[n, 10, 10, 2]), |_| rng.random_range(-1.0..1.0))
}

fn quantized(seed: u64) -> (Model, QuantizedModel) {
    let model = residual(seed);
    let q = convert(
        &model,
        inputs(64, seed + 100).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    (model, q)
}

#[test]
fn a_graph_converts_with_its_relus_fused_and_concat_inputs_sharing_parameters() {
    let (_, q) = quantized(0);
    let ops: Vec<&str> = q.layers().iter().map(|l| l.kind.op_name()).collect();
    assert_eq!(
        ops,
        [
            "conv2d",
            "conv2d",
            "conv2d",
            "add",
            "conv2d",
            "max_pool2d",
            "max_pool2d",
            "concatenate",
            "global_avg_pool2d",
            "dense"
        ]
    );
    assert!(!q.is_sequential());
    assert_eq!(q.layers()[3].kind, LayerKind::Add { relu: true });
    let cat = &q.layers()[7];
    assert_eq!(cat.inputs, ["main_pool", "side_pool"]);
    // Imposed on the producers through the pools: the add and the side conv.
    for producer in [3, 4, 5, 6] {
        assert_eq!(q.layers()[producer].output, cat.output, "layer {producer}");
    }
}

#[test]
fn the_int8_graph_is_close_to_the_float_model() {
    let (model, q) = quantized(1);
    let x = inputs(200, 7);
    let float = predict(&model, x.view(), 64).unwrap();
    let int8 = q.predict(x.view()).unwrap();
    let range = float.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = float
        .iter()
        .zip(&int8)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    // The float picture of the int8 graph (fake-quantized weights and activations) differs
    // from the engine only by its roundings: a few output steps.
    let sim = q.simulate(&model, x.view()).unwrap();
    let step = q.output_quant().unwrap().scale;
    let sim_worst = sim
        .iter()
        .zip(&int8)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        sim_worst <= 3.0 * step,
        "simulated vs int8: {sim_worst} (step {step})"
    );
    assert!(
        worst < 0.15 * range,
        "int8 logits within 15 % of the float range: worst {worst}, range {range}"
    );
    // And the float network of the dequantized weights computes the same graph.
    let dq = predict(&q.dequantized_model(), x.view(), 64).unwrap();
    let worst = float
        .iter()
        .zip(&dq)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 0.15 * range, "dequantized: worst {worst}");
    let agree = (0..200)
        .filter(|&i| {
            let argmax = |a: &ndarray::Array2<f32>| {
                (0..4)
                    .max_by(|&x, &y| a[[i, x]].total_cmp(&a[[i, y]]))
                    .unwrap()
            };
            argmax(&float) == argmax(&int8)
        })
        .count();
    assert!(agree >= 180, "{agree} of 200 predictions agree");
}

#[test]
fn every_engine_path_gives_the_same_codes() {
    let (_, q) = quantized(2);
    let x = q.quantize_input(inputs(100, 8).view()).unwrap();
    let layers = Interpreter::new(&q)
        .unwrap()
        .layer_outputs_i8(x.view())
        .unwrap();
    let mut it = Interpreter::new(&q).unwrap();
    let direct = it.invoke_i8(x.view()).unwrap().to_owned();
    // Twice, so reused buffers are checked too.
    let again = it.invoke_i8(x.view()).unwrap().to_owned();
    let parallel = q.predict_i8(x.view()).unwrap();
    let last = layers.last().unwrap();
    assert_eq!(direct.as_slice().unwrap(), last.as_slice().unwrap());
    assert_eq!(again, direct);
    assert_eq!(parallel, direct);
    // One at a time through one interpreter.
    for i in 0..5 {
        let one = x.slice_axis(ndarray::Axis(0), (i..i + 1).into());
        assert_eq!(it.invoke_i8(one).unwrap().row(0), direct.row(i));
    }
}

#[test]
fn the_engine_reuses_buffers_of_values_no_longer_needed() {
    let (_, q) = quantized(3);
    // The stem's output lives until the side conv; at most four values are live at once.
    assert!(q.schedule.len.len() <= 4, "{} slots", q.schedule.len.len());
    // A chain alternates between two, plus one where a conv runs fused with the pool after
    // it (its input stays live while it writes the pool's output).
    let chain = convert(
        &pare_tensor::models::small_cnn(0),
        ArrayD::from_elem(IxDyn(&[2, 28, 28, 1]), 0.5).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    let fused = chain
        .prepared
        .iter()
        .any(|p| matches!(p, crate::model::Prepared::Conv { fused: Some(_), .. }));
    assert_eq!(chain.schedule.len.len(), 2 + usize::from(fused));
}

#[test]
fn a_graph_file_round_trips_bit_for_bit() {
    let (_, q) = quantized(4);
    let bytes = q.to_bytes().unwrap();
    let back = QuantizedModel::from_bytes(&bytes).unwrap();
    assert_eq!(back.layers(), q.layers());
    assert_eq!(back.to_bytes().unwrap(), bytes);
    let x = q.quantize_input(inputs(20, 9).view()).unwrap();
    assert_eq!(
        back.predict_i8(x.view()).unwrap(),
        q.predict_i8(x.view()).unwrap()
    );
    let header = String::from_utf8_lossy(&bytes);
    assert!(header.contains("add relu zp="), "{header}");
    assert!(header.contains("in=c2,stem"), "{header}");
    // A chain's file has no wiring.
    let chain = convert(
        &pare_tensor::models::small_cnn(0),
        ArrayD::from_elem(IxDyn(&[2, 28, 28, 1]), 0.5).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    assert!(!String::from_utf8_lossy(&chain.to_bytes().unwrap()).contains("in="));
}

/// `q`'s file with its `layers` entry edited, without checksums (so the edit reaches the
/// wiring checks).
fn edited(q: &QuantizedModel, edit: impl Fn(&str) -> String) -> Vec<u8> {
    let bytes = q.to_bytes().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    meta.retain(|k, _| !pare_tensor::io::is_checksum_key(k));
    let layers = edit(&meta["layers"]);
    meta.insert("layers".into(), layers);
    safetensors::serialize(st.tensors(), Some(meta)).unwrap()
}

#[test]
fn malformed_wiring_in_a_file_is_a_typed_error() {
    let (_, q) = quantized(5);
    let cases: [(&str, &str, &str); 7] = [
        (
            "in=c2,stem",
            "in=c2,nope",
            "not the input or a layer before it",
        ),
        (
            "in=c2,stem",
            "in=c2,fc",
            "not the input or a layer before it",
        ),
        (
            "in=c2,stem",
            "in=c2,add",
            "not the input or a layer before it",
        ),
        ("in=c2,stem", "in=c2", "takes 2 inputs"),
        ("in=c2,stem", "in=c2,stem,stem", "takes 2 inputs"),
        ("in=main_pool,side_pool", "in=main_pool", "2 or more inputs"),
        (
            "in=main_pool,side_pool",
            "in=main_pool,main_pool",
            "no later layer takes its output",
        ),
    ];
    for (from, to, why) in cases {
        let bytes = edited(&q, |v| {
            assert!(v.contains(from), "{v}");
            v.replacen(from, to, 1)
        });
        match QuantizedModel::from_bytes(&bytes) {
            Err(QuantError::BadModelFile { reason }) => {
                assert!(reason.contains(why), "{from} -> {to}: {reason}")
            }
            other => panic!("{from} -> {to}: {other:?}"),
        }
    }
    // The unedited file loads through the same path.
    assert!(QuantizedModel::from_bytes(&edited(&q, str::to_string)).is_ok());
}

#[test]
fn a_concatenation_of_a_sigmoid_and_another_range_is_a_typed_error() {
    let mut rng = StdRng::seed_from_u64(6);
    let model = Model::functional(&[4, 4, 1])
        .node(Conv2d::new("a", 1, 2, [1, 1], &mut rng), &["input"])
        .node(Sigmoid::new("s"), &["a"])
        .node(Conv2d::new("b", 1, 2, [1, 1], &mut rng), &["input"])
        .node(Concatenate::new("cat"), &["s", "b"])
        .build()
        .unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[8, 4, 4, 1]), |i| i[1] as f32 - 2.0);
    match convert(&model, x.view(), &ConvertConfig::default()) {
        Err(QuantError::UnsupportedLayer { layer, reason }) => {
            assert_eq!(layer, "cat");
            assert!(reason.contains("fixed output parameters"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_add_of_three_is_a_typed_error_and_dynamic_range_graphs_run() {
    let mut rng = StdRng::seed_from_u64(7);
    let model = Model::functional(&[4, 4, 1])
        .node(Conv2d::new("a", 1, 2, [1, 1], &mut rng), &["input"])
        .node(Conv2d::new("b", 1, 2, [1, 1], &mut rng), &["input"])
        .node(Add::new("add"), &["a", "b", "a"])
        .build()
        .unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[8, 4, 4, 1]), |i| i[1] as f32 - 2.0);
    assert!(matches!(
        convert(&model, x.view(), &ConvertConfig::default()),
        Err(QuantError::UnsupportedLayer { .. })
    ));
    let (float, _) = quantized(8);
    let dynamic = ConvertConfig {
        mode: Mode::DynamicRange,
        ..ConvertConfig::default()
    };
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 10, 10, 2]));
    let q = convert(&float, empty.view(), &dynamic).unwrap();
    let x = inputs(10, 9);
    let (a, b) = (
        predict(&float, x.view(), 10).unwrap(),
        q.predict(x.view()).unwrap(),
    );
    let range = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 0.05 * range));
    let back = QuantizedModel::from_bytes(&q.to_bytes().unwrap()).unwrap();
    assert_eq!(back.layers(), q.layers());
}
