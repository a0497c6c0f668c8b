//! Tests of the converter, the engine, the simulation, the report and the model file.

use std::collections::HashMap;

use approx::assert_relative_eq;
use ndarray::{Array2, ArrayD, ArrayViewD, IxDyn, array};
use pare_tensor::models::{small_cnn, teacher_cnn};
use pare_tensor::nn::{Conv2d, Dense, Flatten, LeakyReLU, MaxPool2d, Module, ReLU};
use pare_tensor::{
    Activation as FloatActivation, Graph, Padding as TPadding, Param, Sequential, Var,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::file::{CodecError, FORMAT_KEY, WeightCodec};
use crate::*;

fn uniform(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(0.0..1.0))
}

fn argmax(row: ndarray::ArrayView1<'_, f32>) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

fn agreement(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    let same = a
        .rows()
        .into_iter()
        .zip(b.rows())
        .filter(|(x, y)| argmax(x.view()) == argmax(y.view()))
        .count();
    same as f64 / a.nrows() as f64
}

/// Dense 2 → 2 with hand-picked weights: every parameter can be worked out on paper.
fn tiny_dense() -> Sequential {
    let kernel = array![[1.0f32, -0.5], [0.25, 2.0]].into_dyn();
    let bias = array![0.1f32, -0.2].into_dyn();
    Sequential::new(&[2]).push(Dense {
        name: "d".into(),
        kernel: Param::new("d.kernel", kernel),
        bias: Param::new("d.bias", bias),
        activation: FloatActivation::Linear,
        use_bias: true,
    })
}

#[test]
fn tiny_model_parameters_by_hand() {
    let model = tiny_dense();
    // Input range [0, 2.55]: scale 0.01, zero point -128. Outputs: row 0 = [0.7375, 4.9],
    // row 1 = [1.225, 0.3]; range [0, 4.9] -> scale 4.9 / 255, zero point -128.
    let x = array![[0.0f32, 2.55], [1.0, 0.5]].into_dyn();
    let q = convert(&model, x.view(), &ConvertConfig::default()).unwrap();
    let input = q.input_quant().unwrap();
    assert_relative_eq!(input.scale, 0.01, max_relative = 1e-6);
    assert_eq!(input.zero_point, -128);
    let l = &q.layers()[0];
    let w = l.weights.as_ref().unwrap();
    // Channel scales max|w| / 127 = 1/127 and 2/127; codes round(w · 127 / max|w|).
    assert_relative_eq!(w.scale[0], 1.0 / 127.0, max_relative = 1e-6);
    assert_relative_eq!(w.scale[1], 2.0 / 127.0, max_relative = 1e-6);
    assert_eq!(w.kernel, array![[127i8, -32], [32, 127]].into_dyn());
    // Bias at s_in · s_w: 0.1 / (0.01 / 127) = 1270, -0.2 / (0.01 · 2 / 127) = -1270.
    assert_eq!(w.bias, Bias::Int32(vec![1270, -1270]));
    let out = l.output.unwrap();
    assert_relative_eq!(out.scale, 4.9 / 255.0, max_relative = 1e-5);
    assert_eq!(out.zero_point, -128);
    // The engine reproduces the float outputs to within about one output step.
    let y = q.predict(x.view()).unwrap();
    let expect = array![[0.7375f32, 4.9], [1.225, 0.3]];
    for (a, b) in y.iter().zip(expect.iter()) {
        assert!((a - b).abs() <= 1.5 * out.scale, "{a} vs {b}");
    }
    assert_eq!(q.provenance().observer.as_deref(), Some("minmax"));
    assert_eq!(q.provenance().calibration_examples, 2);
}

#[test]
fn per_tensor_weights_have_one_scale() {
    let model = tiny_dense();
    let x = array![[0.0f32, 2.55], [1.0, 0.5]].into_dyn();
    let cfg = ConvertConfig {
        per_channel: false,
        ..Default::default()
    };
    let q = convert(&model, x.view(), &cfg).unwrap();
    let w = q.layers()[0].weights.as_ref().unwrap();
    assert_eq!(w.scale.len(), 1);
    assert_relative_eq!(w.scale[0], 2.0 / 127.0, max_relative = 1e-6);
    // 1.0 at scale 2/127 is 63.5 -> 64 (half away from zero).
    assert_eq!(w.kernel, array![[64i8, -32], [16, 127]].into_dyn());
    let y = q.predict(x.view()).unwrap();
    assert_relative_eq!(y[[0, 1]], 4.9, epsilon = 0.05);
}

/// A CNN exercising every operation: same padding and strides, a fused and a stand-alone
/// leaky ReLU, a stand-alone ReLU after a pool, a 1×1 conv (direct GEMM), a conv + ReLU layer
/// pair, flatten and dense with a fused ReLU.
fn every_op_cnn(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new(&[12, 12, 2])
        .push(
            Conv2d::new("c1", 2, 8, [3, 3], &mut rng)
                .strides(2)
                .padding(TPadding::Same)
                .activation(FloatActivation::LeakyRelu(0.1)),
        )
        .push(MaxPool2d::new("p1", 2).strides(1).padding(TPadding::Same))
        .push(ReLU::new("r1"))
        .push(Conv2d::new("c2", 8, 6, [1, 1], &mut rng))
        .push(LeakyReLU::new("lk", 0.3))
        .push(Conv2d::new("c3", 6, 5, [2, 3], &mut rng))
        .push(ReLU::new("r2"))
        .push(Flatten::new("f"))
        .push(Dense::new("d1", 5 * 4 * 5, 16, &mut rng).activation(FloatActivation::Relu))
        .push(Dense::new("d2", 16, 10, &mut rng))
}

fn with_random_biases(mut model: Sequential, seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    for p in model.params_mut() {
        if p.name.ends_with(".bias") {
            p.value.mapv_inplace(|_| rng.random_range(-0.2..0.2));
        }
    }
    model
}

/// Converts `model` on 100 random examples and runs 300 others through the engine and the
/// fake-quant simulation: at least `min_agreement` same predicted classes, logits within
/// `max_steps` output steps.
fn check_engine_against_simulation(
    model: &Sequential,
    shape: &[usize],
    seed: u64,
    min_agreement: f64,
    max_steps: f32,
) {
    check_engine_against_simulation_bits(
        model,
        shape,
        seed,
        min_agreement,
        max_steps,
        WeightBits::Int8,
    );
}

/// [`check_engine_against_simulation`] at a weight width; at int4 the float model is not
/// expected to agree (4-bit rounding of untrained weights moves many predictions), but the
/// engine and the simulation must, and every weight code must lie on the int4 grid.
fn check_engine_against_simulation_bits(
    model: &Sequential,
    shape: &[usize],
    seed: u64,
    min_agreement: f64,
    max_steps: f32,
    bits: WeightBits,
) {
    let mut full = vec![100];
    full.extend_from_slice(shape);
    let calibration = uniform(&full, seed);
    let mut test_shape = vec![300];
    test_shape.extend_from_slice(shape);
    let x = uniform(&test_shape, seed + 1);
    let cfg = ConvertConfig {
        weight_bits: bits,
        ..Default::default()
    };
    let q = convert(model, calibration.view(), &cfg).unwrap();
    for w in q.layers().iter().filter_map(|l| l.weights.as_ref()) {
        assert_eq!(w.bits, bits);
        assert!(
            w.kernel
                .iter()
                .all(|&c| (bits.qmin()..=bits.qmax()).contains(&(c as i32)))
        );
        // Some code reaches the end of the grid in every channel (scale = max|w| / qmax).
        assert!(w.kernel.iter().any(|&c| (c as i32).abs() == bits.qmax()));
    }
    let engine = q.predict(x.view()).unwrap();
    let sim = q.simulate(model, x.view()).unwrap();
    let out = q.output_quant().unwrap();
    let max_diff = engine
        .iter()
        .zip(sim.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let agree = agreement(&engine, &sim);
    eprintln!("agreement {agree}, max diff {} steps", max_diff / out.scale);
    assert!(agree >= min_agreement, "argmax agreement {agree}");
    assert!(
        max_diff <= max_steps * out.scale,
        "max |engine - simulation| = {max_diff}, output scale {}",
        out.scale
    );
    // And the quantized model stays close to the float one.
    if bits == WeightBits::Int8 {
        let float = pare_tensor::train::predict(model, x.view(), 64).unwrap();
        assert!(agreement(&engine, &float) >= 0.9);
    }
    // The file keeps the width (int4 packed) and loads to the same engine.
    let back = QuantizedModel::from_bytes(&q.to_bytes().unwrap()).unwrap();
    assert_eq!(back.predict(x.view()).unwrap(), engine);
}

#[test]
fn engine_matches_fake_quant_simulation_small_cnn_int4() {
    check_engine_against_simulation_bits(
        &with_random_biases(small_cnn(3), 4),
        &[28, 28, 1],
        10,
        0.99,
        2.0,
        WeightBits::Int4,
    );
}

#[test]
fn engine_matches_fake_quant_simulation_teacher_shape_int4() {
    let model = with_random_biases(teacher_cnn(8, 12, 5), 6);
    check_engine_against_simulation_bits(&model, &[28, 28, 1], 20, 0.99, 3.0, WeightBits::Int4);
}

#[test]
fn engine_matches_fake_quant_simulation_every_op_int4() {
    let model = with_random_biases(every_op_cnn(7), 8);
    check_engine_against_simulation_bits(&model, &[12, 12, 2], 30, 0.97, 4.0, WeightBits::Int4);
}

#[test]
fn int4_file_packs_kernels_and_rejects_bad_codes() {
    let model = small_cnn(2);
    let calibration = uniform(&[16, 28, 28, 1], 3);
    let cfg = ConvertConfig {
        weight_bits: WeightBits::Int4,
        ..Default::default()
    };
    let q4 = convert(&model, calibration.view(), &cfg).unwrap();
    let q8 = convert(&model, calibration.view(), &ConvertConfig::default()).unwrap();
    let (b4, b8) = (q4.to_bytes().unwrap(), q8.to_bytes().unwrap());
    let kernels = 3 * 3 * 12 + 2028 * 10;
    // Half the kernel bytes (each kernel's count is even here), less the flags and names.
    assert!(
        b8.len() - b4.len() >= kernels / 2 - 40,
        "{} vs {}",
        b4.len(),
        b8.len()
    );
    let meta = metadata(&b4);
    assert!(
        meta["layers"].contains("conv2d 3x3x1x12 relu int4"),
        "{}",
        meta["layers"]
    );
    let st = SafeTensors::deserialize(&b4[..]).unwrap();
    let t = st.tensor("conv2d.kernel.int4").unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::U8, &[54usize][..]));
    assert!(st.tensor("conv2d.kernel").is_err());
    let back = QuantizedModel::from_bytes(&b4).unwrap();
    same_model(&back, &q4);
    // Every byte the engine reads is covered by a checksum.
    let at = b4.len() - 3;
    let mut flipped = b4.clone();
    flipped[at] ^= 0x10;
    assert!(QuantizedModel::from_bytes(&flipped).is_err());
    // A code of -8 (a valid nibble, outside the narrow range) is refused, checksums or not.
    let bad = rewrite(
        &b4,
        |name, d, shape, b| {
            let mut b = b.to_vec();
            if name == "conv2d.kernel.int4" {
                b[0] = (b[0] & 0xf0) | 0x08;
            }
            Some((d, shape.to_vec(), b))
        },
        same_meta,
    );
    assert_bad(&bad, "outside the symmetric range [-7, 7]");
    // An int8 kernel stored where the layer says int4 holds codes up to 127: refused too.
    let relabel = edit_meta(&b8, "layers", "relu zp", "relu int4 zp");
    assert!(QuantizedModel::from_bytes(&relabel).is_err());
}

#[test]
fn engine_matches_fake_quant_simulation_small_cnn() {
    check_engine_against_simulation(
        &with_random_biases(small_cnn(3), 4),
        &[28, 28, 1],
        10,
        0.99,
        2.0,
    );
}

#[test]
fn engine_matches_fake_quant_simulation_teacher_shape() {
    let model = with_random_biases(teacher_cnn(8, 12, 5), 6);
    check_engine_against_simulation(&model, &[28, 28, 1], 20, 0.99, 3.0);
}

#[test]
fn engine_matches_fake_quant_simulation_every_op() {
    let model = with_random_biases(every_op_cnn(7), 8);
    let q = convert(
        &model,
        uniform(&[4, 12, 12, 2], 1).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    let ops: Vec<&str> = q.layers().iter().map(|l| l.kind.op_name()).collect();
    assert_eq!(
        ops,
        [
            "conv2d",
            "leaky_relu",
            "max_pool2d",
            "relu",
            "conv2d",
            "leaky_relu",
            "conv2d",
            "reshape",
            "dense",
            "dense"
        ]
    );
    assert_eq!(q.layers()[1].name, "c1.leaky_relu");
    assert!(matches!(
        q.layers()[6].kind,
        LayerKind::Conv2d { relu: true, .. }
    ));
    assert!(matches!(
        q.layers()[8].kind,
        LayerKind::Dense { relu: true }
    ));
    // Looser than the others: TFLite's LEAKY_RELU rounds twice (the fixed-point product to an
    // integer, then the right shift), which moves about 1 code in 15 one step down against the
    // float simulation's single rounding; two such layers and two more convs carry that on.
    check_engine_against_simulation(&model, &[12, 12, 2], 30, 0.97, 4.0);
}

#[test]
fn leaky_relu_layer_matches_float_reference() {
    // A model that is only a leaky ReLU: the engine's table must agree with the float op on
    // dequantized codes to within one output step.
    let model = Sequential::new(&[64]).push(LeakyReLU::new("lk", 0.2));
    let x = uniform(&[1, 64], 3).mapv(|v| 8.0 * v - 4.0);
    let q = convert(&model, x.view(), &ConvertConfig::default()).unwrap();
    let (i, o) = (q.input_quant().unwrap(), q.output_quant().unwrap());
    let codes = q.quantize_input(x.view()).unwrap();
    let y = q.predict_i8(codes.view()).unwrap();
    for (&c, &out) in codes.iter().zip(y.iter()) {
        let r = i.dequantize(c);
        let f = if r >= 0.0 { r } else { 0.2 * r };
        let expect = o.quantize(f) as i32;
        assert!(
            (out as i32 - expect).abs() <= 1,
            "{c} -> {out}, float {expect}"
        );
    }
}

#[test]
fn uint8_input_is_int8_plus_128() {
    let model = small_cnn(1);
    let calib = uniform(&[16, 28, 28, 1], 2);
    let cfg = ConvertConfig {
        input_type: InputType::Uint8,
        ..Default::default()
    };
    let q = convert(&model, calib.view(), &cfg).unwrap();
    let i8_codes = q
        .quantize_input(uniform(&[3, 28, 28, 1], 3).view())
        .unwrap();
    let u8_codes = i8_codes.mapv(|v| (v as i16 + 128) as u8);
    assert_eq!(
        q.predict_i8(i8_codes.view()).unwrap(),
        q.predict_u8(u8_codes.view()).unwrap()
    );
    let (s, z) = q.input_params().unwrap();
    assert_eq!(s, q.input_quant().unwrap().scale);
    assert_eq!(z, q.input_quant().unwrap().zero_point + 128);
}

#[test]
fn batches_split_over_threads_match_single_examples() {
    let model = with_random_biases(teacher_cnn(4, 8, 2), 3);
    let q = convert(
        &model,
        uniform(&[20, 28, 28, 1], 4).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    // 70 examples: three tasks of 32, 32 and 6.
    let codes = q
        .quantize_input(uniform(&[70, 28, 28, 1], 5).view())
        .unwrap();
    let batch = q.predict_i8(codes.view()).unwrap();
    let mut it = Interpreter::new(&q).unwrap();
    for (i, row) in batch.rows().into_iter().enumerate() {
        let one = codes.slice_axis(ndarray::Axis(0), (i..i + 1).into());
        assert_eq!(it.invoke_i8(one).unwrap().row(0), row, "example {i}");
    }
    // A non-contiguous view gives the same answer as a contiguous copy.
    let mut big = ArrayD::<i8>::zeros(IxDyn(&[2, 28, 28, 2]));
    big.slice_mut(ndarray::s![.., .., .., 0..1])
        .assign(&codes.slice(ndarray::s![0..2, .., .., ..]));
    let strided = big.slice(ndarray::s![.., .., .., 0..1]).into_dyn();
    assert_eq!(
        it.invoke_i8(strided).unwrap().to_owned(),
        batch.slice(ndarray::s![0..2, ..])
    );
}

#[test]
fn input_shape_and_value_errors() {
    let q = convert(
        &small_cnn(0),
        uniform(&[4, 28, 28, 1], 0).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    let wrong = ArrayD::<i8>::zeros(IxDyn(&[1, 28, 27, 1]));
    assert!(matches!(
        q.predict_i8(wrong.view()),
        Err(QuantError::ShapeMismatch { .. })
    ));
    let flat = ArrayD::<f32>::zeros(IxDyn(&[784]));
    assert!(matches!(
        q.predict(flat.view()),
        Err(QuantError::ShapeMismatch { .. })
    ));
    let mut nan = ArrayD::<f32>::zeros(IxDyn(&[1, 28, 28, 1]));
    nan[[0, 3, 3, 0]] = f32::NAN;
    assert!(matches!(
        q.predict(nan.view()),
        Err(QuantError::NonFinite { .. })
    ));
    // An empty batch is fine.
    let empty = ArrayD::<i8>::zeros(IxDyn(&[0, 28, 28, 1]));
    assert_eq!(q.predict_i8(empty.view()).unwrap().dim(), (0, 10));
    // Calibration data of the wrong shape, empty or non-finite.
    let model = small_cnn(0);
    let cfg = ConvertConfig::default();
    assert!(convert(&model, ArrayD::zeros(IxDyn(&[2, 28, 28])).view(), &cfg).is_err());
    assert!(matches!(
        convert(&model, ArrayD::zeros(IxDyn(&[0, 28, 28, 1])).view(), &cfg),
        Err(QuantError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        convert(&model, nan.view(), &cfg),
        Err(QuantError::NonFinite { .. })
    ));
    let bad_cfg = ConvertConfig {
        calibration_batch_size: 0,
        ..Default::default()
    };
    assert!(matches!(
        convert(&model, uniform(&[2, 28, 28, 1], 0).view(), &bad_cfg),
        Err(QuantError::InvalidParameter { .. })
    ));
}

#[derive(Debug)]
struct Identity;

impl Module for Identity {
    fn name(&self) -> &str {
        "my_custom_layer"
    }
    fn forward(&self, _g: &mut Graph, x: Var) -> Var {
        x
    }
    fn output_shape(&self, input: &[usize]) -> pare_tensor::Result<Vec<usize>> {
        Ok(input.to_vec())
    }
}

#[test]
fn unsupported_layers_are_named() {
    let model = Sequential::new(&[4])
        .push(ReLU::new("r"))
        .push_module(Box::new(Identity));
    let err = convert(
        &model,
        uniform(&[2, 4], 0).view(),
        &ConvertConfig::default(),
    )
    .unwrap_err();
    match err {
        QuantError::UnsupportedLayer { layer, .. } => assert_eq!(layer, "my_custom_layer"),
        other => panic!("expected UnsupportedLayer, got {other:?}"),
    }
    let negative = Sequential::new(&[4]).push(LeakyReLU::new("neg", -0.5));
    assert!(matches!(
        convert(&negative, uniform(&[2, 4], 0).view(), &ConvertConfig::default()),
        Err(QuantError::UnsupportedLayer { layer, .. }) if layer == "neg"
    ));
}

#[test]
fn dynamic_range_model_tracks_float() {
    let model = with_random_biases(small_cnn(4), 5);
    let cfg = ConvertConfig {
        mode: Mode::DynamicRange,
        ..Default::default()
    };
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 28, 28, 1]));
    let q = convert(&model, empty.view(), &cfg).unwrap();
    assert_eq!(q.mode(), Mode::DynamicRange);
    assert!(q.input_quant().is_none());
    let x = uniform(&[50, 28, 28, 1], 6);
    let y = q.predict(x.view()).unwrap();
    let f = pare_tensor::train::predict(&model, x.view(), 64).unwrap();
    assert!(agreement(&y, &f) >= 0.95);
    // Weight-only simulation equals the dequantized float network up to f32 rounding.
    let sim = q.simulate(&model, x.view()).unwrap();
    for (a, b) in y.iter().zip(sim.iter()) {
        assert_relative_eq!(a, b, epsilon = 1e-4, max_relative = 1e-4);
    }
    assert!(matches!(
        q.predict_i8(ArrayD::zeros(IxDyn(&[1, 28, 28, 1])).view()),
        Err(QuantError::WrongMode { .. })
    ));
    assert!(matches!(
        Interpreter::new(&q),
        Err(QuantError::WrongMode { .. })
    ));
    let back = QuantizedModel::from_bytes(&q.to_bytes().unwrap()).unwrap();
    assert_eq!(back.predict(x.view()).unwrap(), y);
}

#[test]
fn simulate_rejects_a_different_float_model() {
    let q = convert(
        &small_cnn(0),
        uniform(&[4, 28, 28, 1], 0).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    let other = teacher_cnn(4, 8, 0);
    assert!(matches!(
        q.simulate(&other, uniform(&[2, 28, 28, 1], 1).view()),
        Err(QuantError::ModelMismatch { .. })
    ));
}

#[test]
fn every_observer_converts() {
    let model = with_random_biases(small_cnn(2), 3);
    let calib = uniform(&[40, 28, 28, 1], 7);
    let x = uniform(&[100, 28, 28, 1], 8);
    let float = pare_tensor::train::predict(&model, x.view(), 100).unwrap();
    for kind in ObserverKind::ALL {
        let cfg = ConvertConfig {
            observer: kind,
            ..Default::default()
        };
        let q = convert(&model, calib.view(), &cfg).unwrap();
        let y = q.predict(x.view()).unwrap();
        assert!(agreement(&y, &float) >= 0.8, "{kind}");
    }
}

#[test]
fn sqnr_by_hand_and_per_layer() {
    // Signal 1 + 4 = 5, noise 0.01 + 0.04 = 0.05: 10 log10(100) = 20 dB.
    assert_relative_eq!(sqnr_db(&[1.0, 2.0], &[1.1, 1.8]), 20.0, epsilon = 1e-4);
    assert_eq!(sqnr_db(&[1.0], &[1.0]), f64::INFINITY);
    let model = with_random_biases(small_cnn(1), 2);
    let calib = uniform(&[32, 28, 28, 1], 3);
    let q = convert(&model, calib.view(), &ConvertConfig::default()).unwrap();
    let report = q.layer_sqnr(&model, calib.view()).unwrap();
    let names: Vec<&str> = report.iter().map(|r| r.layer.as_str()).collect();
    assert_eq!(
        names,
        [
            "input",
            "reshape",
            "conv2d",
            "max_pooling2d",
            "flatten",
            "dense"
        ]
    );
    for r in &report {
        // 8-bit codes give ~40-50 dB on well-ranged tensors; a broken layer gives ~0.
        assert!(r.sqnr_db > 25.0, "{r:?}");
    }
}

#[test]
fn qat_hook_puts_weights_on_the_int8_grid_and_passes_gradients() {
    let model = small_cnn(0);
    let mut g = Graph::new();
    g.add_param_hook(qat_weight_hook(true));
    let x = g.constant(uniform(&[2, 28, 28, 1], 1));
    let logits = model.forward(&mut g, x);
    let loss = g.softmax_cross_entropy(logits, &[3, 7]);
    let grads = g.backward(loss);
    let k = grads.get("conv2d.kernel").unwrap();
    assert!(k.iter().any(|&v| v != 0.0));
    // The kernel that entered the graph sits on the grid of its channel scale.
    let w = &model.param("dense.kernel").unwrap().value;
    let spec = weight_fake_quant_spec(w, true).unwrap();
    let mut g = Graph::inference();
    g.add_param_hook(qat_weight_hook(true));
    let v = g.param(model.param("dense.kernel").unwrap());
    for (i, &q) in g.value(v).iter().enumerate() {
        let s = spec.scale[i % 10];
        let steps = q / s;
        assert!((steps - steps.round()).abs() < 1e-3, "{q} / {s}");
        assert!(steps.round().abs() <= 127.0);
    }
}

/// Stores weights as `[zero count: u32][non-zero positions: u32...][values]`: a toy sparse
/// codec standing in for pare-prune's.
struct ToySparse;

impl WeightCodec for ToySparse {
    fn name(&self) -> &str {
        "toy-sparse"
    }
    fn encode(&self, _tensor: &str, w: ArrayViewD<'_, i8>) -> Option<Vec<u8>> {
        let nz: Vec<(u32, i8)> = w
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, &v)| (i as u32, v))
            .collect();
        let mut out = (nz.len() as u32).to_le_bytes().to_vec();
        for (i, _) in &nz {
            out.extend(i.to_le_bytes());
        }
        out.extend(nz.iter().map(|(_, v)| *v as u8));
        Some(out)
    }
    fn decode(
        &self,
        _tensor: &str,
        shape: &[usize],
        bytes: &[u8],
    ) -> std::result::Result<ArrayD<i8>, CodecError> {
        let n = u32::from_le_bytes(bytes.get(..4).ok_or("short")?.try_into()?) as usize;
        let len: usize = shape.iter().product();
        if bytes.len() != 4 + 5 * n {
            return Err("length mismatch".into());
        }
        let mut out = vec![0i8; len];
        for j in 0..n {
            let i = u32::from_le_bytes(bytes[4 + 4 * j..8 + 4 * j].try_into()?) as usize;
            *out.get_mut(i).ok_or("position out of range")? = bytes[4 + 4 * n + j] as i8;
        }
        Ok(ArrayD::from_shape_vec(IxDyn(shape), out)?)
    }
}

fn small_quantized() -> (Sequential, QuantizedModel) {
    let model = with_random_biases(small_cnn(9), 1);
    let q = convert(
        &model,
        uniform(&[16, 28, 28, 1], 2).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    (model, q)
}

fn same_model(a: &QuantizedModel, b: &QuantizedModel) {
    assert_eq!(a.layers(), b.layers());
    assert_eq!(a.input_quant(), b.input_quant());
    assert_eq!(a.input_shape(), b.input_shape());
    assert_eq!(a.mode(), b.mode());
    assert_eq!(a.provenance(), b.provenance());
    let codes = a
        .quantize_input(uniform(&[5, 28, 28, 1], 3).view())
        .unwrap();
    assert_eq!(
        a.predict_i8(codes.view()).unwrap(),
        b.predict_i8(codes.view()).unwrap()
    );
}

/// The header length a model file declares (its first 8 bytes).
fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

fn metadata(bytes: &[u8]) -> HashMap<String, String> {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    header.metadata().clone().unwrap()
}

fn f32_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn file_layout_of_the_small_cnn() {
    let (_, q) = small_quantized();
    let bytes = q.to_bytes().unwrap();
    let zp = |i: usize| q.layers()[i].output.unwrap().zero_point;
    let input = q.input_quant().unwrap();
    let expected: HashMap<String, String> = [
        (FORMAT_KEY, "2".to_string()),
        ("mode", "full-integer".into()),
        ("input", format!("28x28x1 zp={}", input.zero_point)),
        (
            "layers",
            format!(
                "reshape 28x28x1;conv2d 3x3x1x12 relu zp={};max_pooling2d 2x2;flatten 2028;\
                 dense 2028x10 zp={}",
                zp(1),
                zp(4)
            ),
        ),
        ("calibration", "minmax per-channel n=16".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut meta = metadata(&bytes);
    let checksums: Vec<String> = meta
        .keys()
        .filter(|k| pare_tensor::io::is_checksum_key(k))
        .cloned()
        .collect();
    meta.retain(|k, _| !pare_tensor::io::is_checksum_key(k));
    assert_eq!(meta, expected);
    let mut checksums = checksums;
    checksums.sort();
    assert_eq!(
        checksums,
        [
            "crc32c",
            "crc32c:bias",
            "crc32c:conv2d.kernel",
            "crc32c:dense.kernel",
            "crc32c:scale"
        ]
    );

    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names, ["bias", "conv2d.kernel", "dense.kernel", "scale"]);
    let (conv, dense) = (
        q.layers()[1].weights.as_ref().unwrap(),
        q.layers()[4].weights.as_ref().unwrap(),
    );
    let kernel = st.tensor("dense.kernel").unwrap();
    assert_eq!(
        (kernel.dtype(), kernel.shape()),
        (Dtype::I8, &[2028, 10][..])
    );
    assert!(
        kernel
            .data()
            .iter()
            .zip(dense.kernel.iter())
            .all(|(&b, &q)| b as i8 == q)
    );
    // bias: conv's then dense's; scale: input, conv weights, conv output, dense weights,
    // dense output.
    let bias = st.tensor("bias").unwrap();
    assert_eq!((bias.dtype(), bias.shape()), (Dtype::I32, &[22][..]));
    let Bias::Int32(conv_bias) = &conv.bias else {
        panic!("int32 bias expected")
    };
    assert_eq!(
        bias.data()[..48],
        conv_bias
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect::<Vec<_>>()
    );
    let scale = st.tensor("scale").unwrap();
    assert_eq!((scale.dtype(), scale.shape()), (Dtype::F32, &[25][..]));
    let mut order = vec![input.scale];
    order.extend(&conv.scale);
    order.push(q.layers()[1].output.unwrap().scale);
    order.extend(&dense.scale);
    order.push(q.layers()[4].output.unwrap().scale);
    assert_eq!(f32_values(scale.data()), order);

    // The header is a few hundred bytes, the rest is payload: 504 bytes of architecture and
    // 136 of checksums (five entries of 8 hex digits).
    let payload = 108 + 20_280 + 22 * 4 + 25 * 4;
    assert_eq!(bytes.len(), 8 + header_len(&bytes) + payload);
    assert!(
        header_len(&bytes) <= 656,
        "header {} bytes",
        header_len(&bytes)
    );
    // Byte-identical on every save, and after a round trip.
    assert_eq!(q.to_bytes().unwrap(), bytes);
    assert_eq!(
        QuantizedModel::from_bytes(&bytes)
            .unwrap()
            .to_bytes()
            .unwrap(),
        bytes
    );
}

#[test]
fn file_round_trips() {
    let (_, q) = small_quantized();
    let bytes = q.to_bytes().unwrap();
    same_model(&q, &QuantizedModel::from_bytes(&bytes).unwrap());
    let dir = std::env::temp_dir().join(format!("pare-quant-test-{}", std::process::id()));
    let path = dir.join("small-int8.safetensors");
    q.save(&path).unwrap();
    same_model(&q, &QuantizedModel::load(&path).unwrap());
    // With a codec: encoded tensors round-trip through it, and need it to load.
    q.save_with(&path, &ToySparse).unwrap();
    same_model(&q, &QuantizedModel::load_with(&path, &ToySparse).unwrap());
    assert!(matches!(
        QuantizedModel::load(&path),
        Err(QuantError::UnknownEncoding { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(
        QuantizedModel::load(&path),
        Err(QuantError::Io { .. })
    ));
    // Every other configuration round-trips as well, byte for byte.
    let model = with_random_biases(every_op_cnn(1), 2);
    for (per_channel, input_type, output_type, mode) in [
        (false, InputType::Int8, OutputType::Int8, Mode::FullInteger),
        (true, InputType::Uint8, OutputType::Float, Mode::FullInteger),
        (
            true,
            InputType::Float,
            OutputType::Float,
            Mode::DynamicRange,
        ),
        (
            false,
            InputType::Float,
            OutputType::Float,
            Mode::DynamicRange,
        ),
    ] {
        let cfg = ConvertConfig {
            per_channel,
            input_type,
            output_type,
            mode,
            ..Default::default()
        };
        let x = uniform(&[8, 12, 12, 2], 3);
        let q = convert(&model, x.view(), &cfg).unwrap();
        let bytes = q.to_bytes().unwrap();
        let back = QuantizedModel::from_bytes(&bytes).unwrap();
        assert_eq!(back.layers(), q.layers());
        assert_eq!(back.mode(), mode);
        assert_eq!(back.provenance(), q.provenance());
        assert_eq!(
            (back.input_type(), back.output_type()),
            (input_type, output_type)
        );
        assert_eq!(back.to_bytes().unwrap(), bytes);
        assert_eq!(
            back.predict(x.view()).unwrap(),
            q.predict(x.view()).unwrap()
        );
        if mode == Mode::FullInteger {
            let codes = q.quantize_input(x.view()).unwrap();
            assert_eq!(
                back.predict_i8(codes.view()).unwrap(),
                q.predict_i8(codes.view()).unwrap()
            );
        }
    }
}

#[test]
fn every_op_is_described_in_the_layers_entry() {
    let model = with_random_biases(every_op_cnn(1), 2);
    let cfg = ConvertConfig {
        per_channel: false,
        input_type: InputType::Uint8,
        output_type: OutputType::Int8,
        ..Default::default()
    };
    let q = convert(&model, uniform(&[8, 12, 12, 2], 3).view(), &cfg).unwrap();
    let m = metadata(&q.to_bytes().unwrap());
    assert_eq!(m["mode"], "full-integer input=uint8 output=int8");
    assert_eq!(m["calibration"], "minmax per-tensor n=8");
    // Zero points depend on the data: compare with them masked.
    let masked: Vec<String> = m["layers"]
        .split(';')
        .map(|l| {
            let t: Vec<&str> = l
                .split(' ')
                .map(|t| if t.starts_with("zp=") { "zp" } else { t })
                .collect();
            t.join(" ")
        })
        .collect();
    assert_eq!(
        masked.join(";"),
        "c1:conv2d 3x3x2x8 strides=2x2 same per-tensor zp;c1.leaky_relu:leaky_re_lu 0.1 zp;\
         p1:max_pooling2d 2x2 strides=1x1 same;r1:re_lu;c2:conv2d 1x1x8x6 per-tensor zp;\
         lk:leaky_re_lu 0.3 zp;c3:conv2d 2x3x6x5 relu per-tensor zp;f:flatten 100;\
         d1:dense 100x16 relu per-tensor zp;d2:dense 16x10 per-tensor zp"
    );
}

#[test]
fn odd_layer_names_round_trip() {
    let mut rng = StdRng::seed_from_u64(4);
    let model = Sequential::new(&[6, 6, 1])
        .push(
            Conv2d::new("conv 1;a:b=c%", 1, 3, [3, 3], &mut rng).activation(FloatActivation::Relu),
        )
        .push(MaxPool2d::new("dense", 2))
        .push(Flatten::new("flatten/η\"\\"))
        .push(Dense::new("bias", 12, 4, &mut rng));
    let x = uniform(&[4, 6, 6, 1], 5);
    let q = convert(&model, x.view(), &ConvertConfig::default()).unwrap();
    let bytes = q.to_bytes().unwrap();
    let layers = &metadata(&bytes)["layers"];
    assert!(
        layers.starts_with("conv%201%3Ba%3Ab%3Dc%25:conv2d 3x3x1x3 relu zp="),
        "{layers}"
    );
    assert!(layers.contains(
        ";dense:max_pooling2d 2x2;flatten%2F%CE%B7%22%5C:flatten 12;bias:dense 12x4 zp="
    ));
    let back = QuantizedModel::from_bytes(&bytes).unwrap();
    assert_eq!(back.layers(), q.layers());
    assert_eq!(back.to_bytes().unwrap(), bytes);
}

/// Zeroes all but the largest tenth of every kernel, as magnitude pruning to 90 % would.
fn pruned(mut model: Sequential) -> Sequential {
    for p in model.params_mut() {
        if p.name.ends_with(".kernel") {
            let mut m: Vec<f32> = p.value.iter().map(|v| v.abs()).collect();
            m.sort_by(f32::total_cmp);
            let cut = m[m.len() * 9 / 10];
            p.value
                .mapv_inplace(|v| if v.abs() < cut { 0.0 } else { v });
        }
    }
    model
}

#[test]
fn pruned_model_round_trips_through_a_codec() {
    let model = pruned(with_random_biases(small_cnn(3), 4));
    let x = uniform(&[16, 28, 28, 1], 5);
    let q = convert(&model, x.view(), &ConvertConfig::default()).unwrap();
    let dense = q.to_bytes().unwrap();
    let bytes = q.to_bytes_with(&ToySparse).unwrap();
    // 4 + 5 bytes per non-zero, a tenth of them left: about half the dense size.
    assert!(
        bytes.len() < dense.len() * 6 / 10,
        "{} vs {}",
        bytes.len(),
        dense.len()
    );
    let m = metadata(&bytes);
    assert_eq!(m["codec"], "toy-sparse");
    assert_eq!(metadata(&dense).get("codec"), None);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("dense.kernel").unwrap().dtype(), Dtype::U8);
    let back = QuantizedModel::from_bytes_with(&bytes, &ToySparse).unwrap();
    same_model(&q, &back);
    assert_eq!(back.to_bytes_with(&ToySparse).unwrap(), bytes);
    assert_eq!(back.to_bytes().unwrap(), dense);
    // The codec may encode some kernels and decline others.
    struct DenseOnly;
    impl WeightCodec for DenseOnly {
        fn name(&self) -> &str {
            "toy-sparse"
        }
        fn encode(&self, tensor: &str, w: ArrayViewD<'_, i8>) -> Option<Vec<u8>> {
            (tensor == "dense.kernel")
                .then(|| ToySparse.encode(tensor, w))
                .flatten()
        }
        fn decode(
            &self,
            tensor: &str,
            shape: &[usize],
            bytes: &[u8],
        ) -> std::result::Result<ArrayD<i8>, CodecError> {
            ToySparse.decode(tensor, shape, bytes)
        }
    }
    let mixed = q.to_bytes_with(&DenseOnly).unwrap();
    let st = SafeTensors::deserialize(&mixed).unwrap();
    assert_eq!(st.tensor("conv2d.kernel").unwrap().dtype(), Dtype::I8);
    same_model(
        &q,
        &QuantizedModel::from_bytes_with(&mixed, &ToySparse).unwrap(),
    );
}

/// Rebuilds a file with each tensor passed through `edit` (`None` drops it) and the metadata
/// passed through `meta`. The checksums are dropped, as another tool's writer would: the file
/// is then unchecked, and what rejects an edit is the parser's own check, not a checksum.
fn rewrite(
    bytes: &[u8],
    edit: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
    meta: impl Fn(&mut HashMap<String, String>),
) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut metadata = metadata(bytes);
    metadata.retain(|k, _| !pare_tensor::io::is_checksum_key(k));
    meta(&mut metadata);
    let kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| edit(&n, t.dtype(), t.shape(), t.data()).map(|(d, s, b)| (n, d, s, b)))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = kept
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, Some(metadata)).unwrap()
}

fn keep(_: &str, d: Dtype, s: &[usize], b: &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
    Some((d, s.to_vec(), b.to_vec()))
}

fn same_meta(_: &mut HashMap<String, String>) {}

/// A rewrite that changes only the tensor `name`.
fn edit_tensor(
    bytes: &[u8],
    name: &str,
    f: impl Fn(Dtype, &[usize], &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    rewrite(
        bytes,
        |n, d, s, b| {
            if n == name {
                f(d, s, b)
            } else {
                keep(n, d, s, b)
            }
        },
        same_meta,
    )
}

/// A rewrite that replaces the first `from` in metadata entry `key` by `to`.
fn edit_meta(bytes: &[u8], key: &str, from: &str, to: &str) -> Vec<u8> {
    rewrite(bytes, keep, |m| {
        let v = m.get_mut(key).unwrap();
        assert!(v.contains(from), "{key}: {v:?} has no {from:?}");
        *v = v.replacen(from, to, 1);
    })
}

fn assert_bad(bytes: &[u8], what: &str) {
    match QuantizedModel::from_bytes(bytes) {
        Err(QuantError::BadModelFile { reason }) => {
            assert!(!reason.is_empty(), "{what}");
        }
        other => panic!("{what}: expected BadModelFile, got {other:?}"),
    }
}

#[test]
fn corrupt_containers_and_tensors_are_errors() {
    let (_, q) = small_quantized();
    let bytes = q.to_bytes().unwrap();
    // The unchanged rewrite loads (so the edits below are what breaks it).
    same_model(
        &q,
        &QuantizedModel::from_bytes(&rewrite(&bytes, keep, same_meta)).unwrap(),
    );
    for cut in [
        0,
        4,
        8,
        20,
        header_len(&bytes) + 8,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        assert_bad(&bytes[..cut], "truncated");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_bad(&longer, "trailing byte");
    let mut flipped = bytes.clone();
    for b in &mut flipped[8..40] {
        *b ^= 0x5a;
    }
    assert_bad(&flipped, "flipped header bytes");
    let mut long_header = bytes.clone();
    long_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_bad(&long_header, "header length beyond the file");

    let retype = |name: &str, dtype: Dtype| {
        edit_tensor(&bytes, name, move |_, s, b| {
            Some((dtype, s.to_vec(), b.to_vec()))
        })
    };
    assert_bad(&retype("scale", Dtype::I32), "I32 scales");
    assert_bad(
        &retype("bias", Dtype::F32),
        "F32 biases in a full-integer model",
    );
    assert_bad(&retype("bias", Dtype::U32), "U32 biases");
    assert_bad(
        &retype("conv2d.kernel", Dtype::U8),
        "U8 kernel without a codec entry",
    );
    assert_bad(
        &edit_tensor(&bytes, "dense.kernel", |_, s, b| {
            Some((Dtype::I16, vec![s[0], s[1] / 2], b.to_vec()))
        }),
        "I16 kernel",
    );
    for name in ["bias", "scale", "conv2d.kernel", "dense.kernel"] {
        assert_bad(&edit_tensor(&bytes, name, |_, _, _| None), "missing tensor");
    }
    let extra = {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut views: Vec<(String, TensorView<'_>)> = st.tensors();
        let one = [7u8];
        views.push((
            "notes".into(),
            TensorView::new(Dtype::U8, vec![1], &one).unwrap(),
        ));
        let mut meta = metadata(&bytes);
        let checked = safetensors::tensor::serialize(views.clone(), Some(meta.clone())).unwrap();
        // With the checksums kept, the header's (which covers the tensor names) catches it.
        assert!(matches!(
            QuantizedModel::from_bytes(&checked),
            Err(QuantError::Tensor(
                pare_tensor::TensorError::ChecksumMismatch { tensor: None, .. }
            ))
        ));
        meta.retain(|k, _| !pare_tensor::io::is_checksum_key(k));
        safetensors::tensor::serialize(views, Some(meta)).unwrap()
    };
    assert_bad(&extra, "extra tensor");
    // Lengths that do not fit the architecture.
    assert_bad(
        &edit_tensor(&bytes, "bias", |d, s, b| {
            Some((d, vec![s[0] - 1], b[4..].to_vec()))
        }),
        "one bias short",
    );
    assert_bad(
        &edit_tensor(&bytes, "scale", |d, s, b| {
            let mut b = b.to_vec();
            b.extend(1.0f32.to_le_bytes());
            Some((d, vec![s[0] + 1], b))
        }),
        "one scale too many",
    );
    assert_bad(
        &edit_tensor(&bytes, "bias", |d, s, b| {
            Some((d, vec![1, s[0]], b.to_vec()))
        }),
        "2-D biases",
    );
    assert_bad(
        &edit_tensor(&bytes, "conv2d.kernel", |d, s, b| {
            Some((d, vec![s[0] * s[1], s[2], s[3]], b.to_vec()))
        }),
        "kernel of another rank than declared",
    );
    assert_bad(
        &edit_tensor(&bytes, "conv2d.kernel", |d, _, b| {
            Some((d, vec![3, 3, 2, 6], b.to_vec()))
        }),
        "kernel of another shape than declared",
    );
    // Values out of range.
    assert_bad(
        &edit_tensor(&bytes, "scale", |d, s, b| {
            let mut b = b.to_vec();
            b[4 * 14..4 * 15].copy_from_slice(&(-1.0f32).to_le_bytes());
            Some((d, s.to_vec(), b))
        }),
        "negative weight scale",
    );
    for bad_scale in [0.0f32, f32::NAN, f32::INFINITY] {
        assert_bad(
            &edit_tensor(&bytes, "scale", move |d, s, b| {
                let mut b = b.to_vec();
                b[..4].copy_from_slice(&bad_scale.to_le_bytes());
                Some((d, s.to_vec(), b))
            }),
            "bad input scale",
        );
    }
    assert_bad(
        &edit_tensor(&bytes, "dense.kernel", |d, s, b| {
            let mut b = b.to_vec();
            b[0] = 0x80;
            Some((d, s.to_vec(), b))
        }),
        "weight code -128",
    );
}

#[test]
fn corrupt_metadata_is_an_error() {
    let (_, q) = small_quantized();
    let bytes = q.to_bytes().unwrap();
    let zp = q.layers()[1].output.unwrap().zero_point;
    let conv_zp = format!("relu zp={zp}");
    for key in [FORMAT_KEY, "mode", "input", "layers", "calibration"] {
        assert_bad(
            &rewrite(&bytes, keep, |m| drop(m.remove(key))),
            "missing entry",
        );
    }
    assert_bad(&rewrite(&bytes, keep, |m| m.clear()), "no metadata");
    let cases: &[(&str, &str, &str, &str)] = &[
        ("mode", "full-integer", "half-integer", "unknown mode"),
        (
            "mode",
            "full-integer",
            "dynamic-range",
            "dynamic range with zero points and I32 biases",
        ),
        (
            "mode",
            "full-integer",
            "full-integer input=int4",
            "unknown input type",
        ),
        (
            "mode",
            "full-integer",
            "full-integer output=uint8",
            "unknown output type",
        ),
        (
            "mode",
            "full-integer",
            "full-integer output=int8 output=int8",
            "argument given twice",
        ),
        (
            "input",
            "28x28x1",
            "28x29x1",
            "input size vs the first reshape",
        ),
        ("input", "28x28x1", "28x0x1", "zero dimension"),
        ("input", "28x28x1", "28xx1", "empty dimension"),
        (
            "input",
            "28x28x1",
            "100000x100000x100000",
            "huge input shape",
        ),
        (
            "input",
            "28x28x1",
            "18446744073709551616x1x1",
            "dimension beyond usize",
        ),
        ("input", " zp=", " zq=", "unknown input argument"),
        ("input", "zp=-128", "zp=9999999999", "zero point not an i32"),
        (
            "layers",
            "reshape 28x28x1;",
            "reshape 28x28x1 zp=3;",
            "zero point on a reshape",
        ),
        (
            "layers",
            "reshape 28x28x1",
            "unknown_op 28x28x1",
            "unknown layer kind",
        ),
        (
            "layers",
            "reshape 28x28x1",
            "reshape",
            "reshape without a shape",
        ),
        (
            "layers",
            "reshape 28x28x1",
            "reshape 28x28x1 28x28x1",
            "two shapes",
        ),
        (
            "layers",
            "reshape 28x28x1",
            "reshape 28x27x1",
            "reshape to another size",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d 3x3x12",
            "conv kernel of rank 3",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d 3x3x1x11",
            "conv channels vs tensors",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d 3x3x1x12 per-tensor",
            "per-tensor vs scale count",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d 3x3x1x12 relu",
            "relu given twice",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d 3x3x1x12 strides=0x1",
            "zero stride",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d 3x3x1x12 strides=2",
            "one stride",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d 3x3x1x12 padding=same",
            "unknown argument",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d 65536x65536x1x12",
            "kernel beyond 2^28",
        ),
        (
            "layers",
            "conv2d 3x3x1x12",
            "conv2d:dense 3x3x1x12",
            "dense with a 4-D kernel",
        ),
        ("layers", &conv_zp, "relu", "conv without its zero point"),
        ("layers", &conv_zp, "relu zp=200", "zero point out of range"),
        ("layers", &conv_zp, "relu zp=x", "zero point not a number"),
        (
            "layers",
            "max_pooling2d 2x2",
            "max_pooling2d 2x2 relu",
            "relu on a pool",
        ),
        (
            "layers",
            "max_pooling2d 2x2",
            "max_pooling2d 30x30",
            "pool larger than input",
        ),
        (
            "layers",
            "max_pooling2d 2x2",
            "max_pooling2d 2x2;re_lu 3",
            "relu with an argument",
        ),
        (
            "layers",
            "max_pooling2d 2x2",
            "max_pooling2d 2x2;",
            "empty layer entry",
        ),
        (
            "layers",
            "flatten 2028",
            "flatten 2028x1",
            "flatten to two dimensions",
        ),
        (
            "layers",
            "flatten 2028",
            "max_pooling2d:flatten 2028",
            "two layers named alike",
        ),
        (
            "layers",
            "flatten 2028",
            "fl%zzen:flatten 2028",
            "bad percent escape",
        ),
        (
            "layers",
            "flatten 2028",
            "fl%FFen:flatten 2028",
            "name not UTF-8",
        ),
        (
            "layers",
            "flatten 2028",
            "flatten%:flatten 2028",
            "truncated escape",
        ),
        (
            "layers",
            "dense 2028x10",
            "dense 2028x10x1",
            "dense kernel of rank 3",
        ),
        (
            "layers",
            "dense 2028x10",
            "dense 2027x10",
            "dense kernel vs tensor",
        ),
        (
            "layers",
            "dense 2028x10",
            "d:dense 2028x10",
            "kernel tensor named for another layer",
        ),
        (
            "calibration",
            "per-channel",
            "per-layer",
            "unknown granularity",
        ),
        (
            "calibration",
            "per-channel",
            "per-channel per-tensor",
            "two granularities",
        ),
        ("calibration", " n=16", "", "no calibration count"),
        ("calibration", "n=16", "n=-1", "negative calibration count"),
        ("calibration", "minmax", "a b", "two observers"),
    ];
    for (key, from, to, what) in cases {
        assert_bad(&edit_meta(&bytes, key, from, to), what);
    }
    // Architectures that agree with the tensors but not with themselves.
    let in_channels = rewrite(
        &bytes,
        |n, d, s, b| {
            if n == "conv2d.kernel" {
                Some((d, vec![3, 3, 2, 12], [b, b].concat()))
            } else {
                keep(n, d, s, b)
            }
        },
        |m| {
            let l = m.get_mut("layers").unwrap();
            *l = l.replacen("conv2d 3x3x1x12", "conv2d 3x3x2x12", 1);
        },
    );
    assert_bad(&in_channels, "conv input channels vs the input");
    // Another format version is its own error; a codec entry with nothing encoded is not
    // a valid file either.
    for (version, found) in [
        ("1", "1"),
        ("3", "3"),
        ("{\"format\":\"pare-quant\",\"version\":1}", "1"),
    ] {
        let other = rewrite(&bytes, keep, |m| {
            m.insert(FORMAT_KEY.into(), version.into());
        });
        match QuantizedModel::from_bytes(&other) {
            Err(QuantError::UnsupportedVersion {
                found: f,
                supported,
            }) => {
                assert_eq!((f.as_str(), supported), (found, 2));
            }
            r => panic!("version {version}: {r:?}"),
        }
    }
    let codec = rewrite(&bytes, keep, |m| {
        m.insert("codec".into(), "toy-sparse".into());
    });
    assert_bad(&codec, "codec entry without an encoded kernel");
    // Entries the format does not know are left alone (other tools may annotate a file).
    let annotated = rewrite(&bytes, keep, |m| {
        m.insert("author".into(), "someone".into());
    });
    same_model(&q, &QuantizedModel::from_bytes(&annotated).unwrap());
}

#[test]
fn dynamic_range_files_check_their_mode() {
    let (model, _) = small_quantized();
    let cfg = ConvertConfig {
        mode: Mode::DynamicRange,
        ..Default::default()
    };
    let q = convert(&model, uniform(&[4, 28, 28, 1], 2).view(), &cfg).unwrap();
    let bytes = q.to_bytes().unwrap();
    let m = metadata(&bytes);
    assert_eq!(m["input"], "28x28x1");
    assert_eq!(m["calibration"], "per-channel n=0");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("bias").unwrap().dtype(), Dtype::F32);
    assert_eq!(st.tensor("scale").unwrap().shape(), &[22]);
    assert_bad(
        &edit_meta(&bytes, "mode", "dynamic-range", "full-integer"),
        "full integer without zero points",
    );
    assert_bad(
        &edit_meta(&bytes, "input", "28x28x1", "28x28x1 zp=0"),
        "input zero point",
    );
    // A leaky ReLU adds no scale in a dynamic-range model, so only alpha can be wrong.
    let leaky = |alpha: &str| {
        let to = format!("max_pooling2d 2x2;leaky_re_lu {alpha}");
        edit_meta(&bytes, "layers", "max_pooling2d 2x2", &to)
    };
    let with_leaky = QuantizedModel::from_bytes(&leaky("0.25")).unwrap();
    assert_eq!(
        with_leaky.layers()[3].kind,
        LayerKind::LeakyRelu { alpha: 0.25 }
    );
    for alpha in ["nan", "inf", "-0.5", "x"] {
        assert_bad(&leaky(alpha), "bad alpha");
    }
    assert_bad(
        &edit_meta(&bytes, "layers", "dense 2028x10", "dense 2028x10 zp=0"),
        "zero point",
    );
    assert_bad(
        &edit_tensor(&bytes, "bias", |_, s, b| {
            Some((Dtype::I32, s.to_vec(), b.to_vec()))
        }),
        "I32 biases in a dynamic-range model",
    );
    let inf_bias = edit_tensor(&bytes, "bias", |d, s, b| {
        let mut b = b.to_vec();
        b[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        Some((d, s.to_vec(), b))
    });
    assert_bad(&inf_bias, "infinite float bias");
}

#[test]
fn any_flipped_byte_loads_or_fails_cleanly() {
    let calib = array![[0.0f32, 1.0]].into_dyn();
    let tiny = convert(&tiny_dense(), calib.view(), &ConvertConfig::default()).unwrap();
    let tiny_bytes = tiny.to_bytes().unwrap();
    for i in 0..tiny_bytes.len() {
        for mask in [0x01u8, 0x20, 0x80, 0xff] {
            let mut b = tiny_bytes.clone();
            b[i] ^= mask;
            let _ = QuantizedModel::from_bytes(&b);
            let _ = QuantizedModel::from_bytes_with(&b, &ToySparse);
        }
    }
    // The same over the small CNN's header, the part that is parsed.
    let (_, q) = small_quantized();
    let bytes = q.to_bytes_with(&ToySparse).unwrap();
    for i in 0..8 + header_len(&bytes) {
        for mask in [0x01u8, 0x20] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            let _ = QuantizedModel::from_bytes_with(&b, &ToySparse);
        }
    }
}

#[test]
fn codec_failures_and_empty_name() {
    let (_, q) = small_quantized();
    struct Broken;
    impl WeightCodec for Broken {
        fn name(&self) -> &str {
            "toy-sparse"
        }
        fn encode(&self, _: &str, _: ArrayViewD<'_, i8>) -> Option<Vec<u8>> {
            None
        }
        fn decode(
            &self,
            _: &str,
            _: &[usize],
            _: &[u8],
        ) -> std::result::Result<ArrayD<i8>, CodecError> {
            Err("always fails".into())
        }
    }
    let bytes = q.to_bytes_with(&ToySparse).unwrap();
    assert!(matches!(
        QuantizedModel::from_bytes_with(&bytes, &Broken),
        Err(QuantError::Codec { .. })
    ));
    // A codec that declines every tensor writes a plain file, with no codec entry.
    let plain = q.to_bytes_with(&Broken).unwrap();
    assert_eq!(plain, q.to_bytes().unwrap());
    same_model(&q, &QuantizedModel::from_bytes(&plain).unwrap());
    // Another codec's name is an unknown encoding, as is no codec at all.
    let renamed = edit_meta(&bytes, "codec", "toy-sparse", "other-v9");
    for r in [
        QuantizedModel::from_bytes_with(&renamed, &ToySparse),
        QuantizedModel::from_bytes(&bytes),
    ] {
        assert!(
            matches!(r, Err(QuantError::UnknownEncoding { .. })),
            "{r:?}"
        );
    }
    // An encoded kernel must be 1-D bytes.
    let two_d = edit_tensor(&bytes, "dense.kernel", |d, s, b| {
        Some((d, vec![1, s[0]], b.to_vec()))
    });
    assert!(matches!(
        QuantizedModel::from_bytes_with(&two_d, &ToySparse),
        Err(QuantError::BadModelFile { .. })
    ));
    struct Unnamed;
    impl WeightCodec for Unnamed {
        fn name(&self) -> &str {
            ""
        }
        fn encode(&self, _: &str, _: ArrayViewD<'_, i8>) -> Option<Vec<u8>> {
            None
        }
        fn decode(
            &self,
            _: &str,
            _: &[usize],
            _: &[u8],
        ) -> std::result::Result<ArrayD<i8>, CodecError> {
            Err("unused".into())
        }
    }
    assert!(matches!(
        q.to_bytes_with(&Unnamed),
        Err(QuantError::InvalidParameter { .. })
    ));
    // A codec that decodes to the wrong shape is caught.
    struct Short;
    impl WeightCodec for Short {
        fn name(&self) -> &str {
            "toy-sparse"
        }
        fn encode(&self, _: &str, _: ArrayViewD<'_, i8>) -> Option<Vec<u8>> {
            None
        }
        fn decode(
            &self,
            _: &str,
            _: &[usize],
            _: &[u8],
        ) -> std::result::Result<ArrayD<i8>, CodecError> {
            Ok(ArrayD::zeros(IxDyn(&[3])))
        }
    }
    assert!(matches!(
        QuantizedModel::from_bytes_with(&bytes, &Short),
        Err(QuantError::BadModelFile { .. })
    ));
}

#[test]
fn dequantized_model_matches_engine_closely() {
    let (model, q) = small_quantized();
    let deq = q.dequantized_model();
    assert_eq!(deq.num_params(), model.num_params());
    let x = uniform(&[40, 28, 28, 1], 11);
    let a = pare_tensor::train::predict(&deq, x.view(), 40).unwrap();
    let b = q.predict(x.view()).unwrap();
    assert!(agreement(&a, &b) >= 0.9);
}

/// A conv + max-pool pair of awkward sizes that the engine fuses: 2 input channels, a 2×3
/// kernel, 7 output channels, a 3×2 pool that drops the last conv row and column.
fn fusable_cnn(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new(&[11, 10, 2])
        .push(Conv2d::new("c1", 2, 7, [2, 3], &mut rng).activation(FloatActivation::Relu))
        .push(MaxPool2d::new("p1", 3).strides(3).padding(TPadding::Valid))
        .push(Flatten::new("f"))
        .push(Dense::new("d", 3 * 2 * 7, 10, &mut rng))
}

#[test]
fn fused_conv_pool_engine_matches_the_layer_by_layer_path() {
    for (model, shape) in [
        (with_random_biases(small_cnn(5), 6), [28, 28, 1]),
        (with_random_biases(fusable_cnn(7), 8), [11, 10, 2]),
    ] {
        let calib: Vec<usize> = [16].iter().chain(&shape).copied().collect();
        let q = convert(&model, uniform(&calib, 9).view(), &ConvertConfig::default()).unwrap();
        assert_eq!(
            q.prepared
                .iter()
                .any(|p| matches!(p, crate::model::Prepared::Conv { fused: Some(_), .. })),
            Kernel::Avx512Vnni.is_available(),
            "the conv + pool pair is fused exactly when the CPU has AVX-512 VNNI"
        );
        // 200 examples: runs of two chunks per interpreter.
        for n in [1, 7, 65, 200] {
            let dims: Vec<usize> = [n].iter().chain(&shape).copied().collect();
            let codes = q.quantize_input(uniform(&dims, n as u64).view()).unwrap();
            // A traced run needs every layer's output, so it takes the unfused path.
            let traced = q.trace_i8(codes.view()).unwrap();
            let fused = q.predict_i8(codes.view()).unwrap();
            assert_eq!(
                fused.as_slice().unwrap(),
                &traced.last().unwrap()[..],
                "batch {n}"
            );
        }
    }
}

#[test]
fn a_flipped_weight_byte_names_the_tensor_and_the_file() {
    use pare_tensor::{TensorError, io::Integrity};
    let (_, q) = small_quantized();
    let bytes = q.to_bytes().unwrap();
    let dir = std::env::temp_dir().join(format!("pare-quant-crc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.pare");
    std::fs::write(&path, &bytes).unwrap();
    let (back, integrity) = QuantizedModel::load_verified(&path, None).unwrap();
    assert_eq!(integrity, Integrity::Verified);
    same_model(&q, &back);
    // The last byte of the file is the last kernel code of dense.kernel.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0x04;
    std::fs::write(&path, &flipped).unwrap();
    let err = QuantizedModel::load(&path).unwrap_err();
    let QuantError::Tensor(TensorError::ChecksumMismatch {
        path: Some(p),
        tensor: Some(t),
        ..
    }) = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((p, t.as_str()), (&path, "dense.kernel"));
    assert!(
        err.to_string()
            .contains("m.pare: tensor \"dense.kernel\" is corrupt"),
        "{err}"
    );
    // The same file without checksums (an older pare) loads, unchecked.
    let old = rewrite(&bytes, keep, same_meta);
    let (back, integrity) = QuantizedModel::from_bytes_verified(&old, None).unwrap();
    assert_eq!(integrity, Integrity::Unchecked);
    same_model(&q, &back);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every new layer kind in one model: BatchNorm folded, Dropout dropped, a ReLU6 fused by
/// calibration, depthwise, average and global average pooling, the table activations.
fn mobile_cnn(seed: u64) -> Sequential {
    use pare_tensor::nn::{
        AvgPool2d, BatchNorm, DepthwiseConv2d, Dropout, GlobalAveragePool2d, HardSwish, ReLU6,
        Sigmoid, Tanh,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new(&[10, 10, 2])
        .push(Conv2d::new("c", 2, 6, [3, 3], &mut rng).use_bias(false))
        .push(BatchNorm::new("bn", 6))
        .push(ReLU6::new("r6"))
        .push(
            DepthwiseConv2d::with_multiplier("dw", 6, [3, 3], 2, &mut rng)
                .padding(TPadding::Same)
                .strides(2),
        )
        .push(HardSwish::new("hs"))
        .push(AvgPool2d::new("ap", 2).padding(TPadding::Same))
        .push(ReLU6::new("r6b"))
        .push(Conv2d::new("pw", 12, 8, [1, 1], &mut rng))
        .push(Sigmoid::new("sg"))
        .push(Conv2d::new("pw2", 8, 8, [1, 1], &mut rng))
        .push(Tanh::new("th"))
        .push(GlobalAveragePool2d::new("gap"))
        .push(Dropout::new("drop", 0.5).unwrap())
        .push(Dense::new("fc", 8, 10, &mut rng))
}

#[test]
fn new_layers_convert_run_and_round_trip_through_the_file() {
    let model = with_random_biases(mobile_cnn(5), 6);
    let calibration = uniform(&[64, 10, 10, 2], 7);
    let q = convert(&model, calibration.view(), &ConvertConfig::default()).unwrap();
    let ops: Vec<&str> = q.layers().iter().map(|l| l.kind.op_name()).collect();
    assert_eq!(
        ops,
        [
            "conv2d",
            "relu6",
            "depthwise_conv2d",
            "hard_swish",
            "avg_pool2d",
            "relu6",
            "conv2d",
            "sigmoid",
            "conv2d",
            "tanh",
            "global_avg_pool2d",
            "dense"
        ]
    );
    // The conv before the ReLU6 is calibrated on the ReLU6's output: range [0, <= 6], so its
    // zero point is −128 and the clamp keeps every code below the code of 6.
    let conv = q.layers()[0].output.unwrap();
    assert_eq!(conv.zero_point, -128);
    assert!(conv.scale * 255.0 <= 6.0 + 1e-5);
    assert_eq!(q.layers()[1].output, Some(conv));
    // Sigmoid and tanh take TFLite's fixed parameters.
    assert_eq!(
        (
            q.layers()[7].output.unwrap().scale,
            q.layers()[7].output.unwrap().zero_point
        ),
        (1.0 / 256.0, -128)
    );
    assert_eq!(
        (
            q.layers()[9].output.unwrap().scale,
            q.layers()[9].output.unwrap().zero_point
        ),
        (1.0 / 128.0, 0)
    );
    let dw = q.layers()[2].weights.as_ref().unwrap();
    assert_eq!(dw.kernel.shape(), [3, 3, 12]);
    assert_eq!(dw.scale.len(), 12);

    let x = uniform(&[200, 10, 10, 2], 8);
    let engine = q.predict(x.view()).unwrap();
    // Close to the fake-quant simulation and to the float model.
    let sim = q.simulate(&model, x.view()).unwrap();
    let out = q.output_quant().unwrap();
    let max_diff = engine
        .iter()
        .zip(sim.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff <= 4.0 * out.scale,
        "{max_diff} vs scale {}",
        out.scale
    );
    let float = pare_tensor::train::predict(&model, x.view(), 64).unwrap();
    assert!(
        agreement(&engine, &float) >= 0.8,
        "{}",
        agreement(&engine, &float)
    );
    // The dequantized model is the same network in float.
    let deq = pare_tensor::train::predict(&q.dequantized_model(), x.view(), 64).unwrap();
    assert!(agreement(&deq, &float) >= 0.8);
    // The file holds every new op and loads to the same engine.
    let bytes = q.to_bytes().unwrap();
    let back = QuantizedModel::from_bytes(&bytes).unwrap();
    assert_eq!(back.layers(), q.layers());
    assert_eq!(back.predict(x.view()).unwrap(), engine);
    // And the per-layer outputs end in the model's output.
    let codes = q.quantize_input(x.view()).unwrap();
    let layers = Interpreter::new(&q)
        .unwrap()
        .layer_outputs_i8(codes.view())
        .unwrap();
    assert_eq!(layers.len(), q.layers().len());
    let last = layers
        .last()
        .unwrap()
        .clone()
        .into_dimensionality()
        .unwrap();
    assert_eq!(last, q.predict_i8(codes.view()).unwrap());
}

#[test]
fn softmax_and_wrong_fixed_parameters_are_typed_errors() {
    use pare_tensor::nn::{Sigmoid, Softmax};
    let mut rng = StdRng::seed_from_u64(1);
    let model = Sequential::new(&[4])
        .push(Dense::new("d", 4, 3, &mut rng))
        .push(Softmax::new("softmax"));
    let x = uniform(&[8, 4], 2);
    // Softmax converts to TFLite's int8 SOFTMAX at its fixed output parameters, the dense
    // layer before it calibrated on the logits.
    let q = convert(&model, x.view(), &ConvertConfig::default()).unwrap();
    assert_eq!(q.layers()[1].kind, LayerKind::Softmax);
    assert_eq!(
        q.output_quant(),
        Some(ActQuant::new(1.0 / 256.0, -128).unwrap())
    );
    let probs = q.predict(x.view()).unwrap();
    let want = pare_tensor::train::predict(&model, x.view(), 8).unwrap();
    for (p, w) in probs.iter().zip(want.iter()) {
        // Within a few output steps of 1/256 (the dense layer's rounding comes on top).
        assert!((p - w).abs() < 4.0 / 256.0, "{p} vs {w}");
    }
    // Through the file: the fixed-point parameters are recomputed from the input scale.
    let back = QuantizedModel::from_bytes(&q.to_bytes().unwrap()).unwrap();
    let codes = q.quantize_input(x.view()).unwrap();
    assert_eq!(
        back.predict_i8(codes.view()).unwrap(),
        q.predict_i8(codes.view()).unwrap()
    );
    // A softmax that declares other output parameters than TFLite's is rejected.
    rejects_other_fixed_output(&q, 1, ActQuant::new(1.0 / 256.0, 0).unwrap());
    // A sigmoid whose file declares other output parameters than TFLite's is rejected.
    let model = Sequential::new(&[4])
        .push(Dense::new("d", 4, 3, &mut rng))
        .push(Sigmoid::new("sigmoid"));
    let q = convert(&model, x.view(), &ConvertConfig::default()).unwrap();
    rejects_other_fixed_output(&q, 1, ActQuant::new(0.01, -128).unwrap());
}

/// `q` with layer `i`'s output parameters replaced by `wrong` does not build: the op has
/// TFLite's fixed ones.
fn rejects_other_fixed_output(q: &QuantizedModel, i: usize, wrong: ActQuant) {
    let mut layers = q.layers().to_vec();
    layers[i].output = Some(wrong);
    let name = layers[i].name.clone();
    let parts = crate::model::ModelParts {
        mode: Mode::FullInteger,
        input_type: InputType::Float,
        output_type: OutputType::Float,
        input_shape: q.input_shape().to_vec(),
        input: q.input_quant(),
        layers,
        provenance: q.provenance().clone(),
    };
    match QuantizedModel::from_parts(parts) {
        Err(QuantError::UnsupportedLayer { layer, reason }) => {
            assert_eq!(layer, name);
            assert!(reason.contains("fixed output parameters"), "{reason}");
        }
        other => panic!("expected UnsupportedLayer, got {other:?}"),
    }
}
