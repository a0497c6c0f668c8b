//! Tests that need no runtime: the protobuf round trip, the graphs' structure, and the layout
//! transposes checked numerically by evaluating the float graph with a small reference
//! evaluator against pare's own forward pass.

use std::collections::HashMap;

use approx::assert_abs_diff_eq;
use ndarray::{Array4, ArrayD, Axis, IxDyn};
use pare_quant::{ConvertConfig, InputType, QuantizedModel, convert};
use pare_tensor::models::{small_cnn, teacher_cnn};
use pare_tensor::nn::{Conv2d, Dense, Flatten, MaxPool2d};
use pare_tensor::{Activation, Padding, Sequential};
use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::proto::{AttributeProto, DataType, ModelProto, NodeProto};
use crate::*;

fn images(n: usize, shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dims: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
    ArrayD::from_shape_simple_fn(IxDyn(&dims), || rng.random_range(0.0..1.0))
}

fn int8_small_cnn(input_type: InputType) -> QuantizedModel {
    let calibration = images(16, &[28, 28, 1], 1);
    let config = ConvertConfig {
        input_type,
        ..Default::default()
    };
    convert(&small_cnn(0), calibration.view(), &config).unwrap()
}

fn ops(m: &ModelProto) -> Vec<&str> {
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect()
}

#[test]
fn every_form_survives_a_protobuf_round_trip() {
    let q = int8_small_cnn(InputType::Float);
    for f in Format::ALL {
        let m = export(f, Some(&small_cnn(0)), Some(&q)).unwrap();
        let bytes = m.encode_to_vec();
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, m, "{f}");
        assert_eq!(
            (back.ir_version, back.opset_import[0].version),
            (IR_VERSION, OPSET)
        );
    }
}

#[test]
fn qdq_and_qoperator_graphs_have_the_expected_operators() {
    let q = int8_small_cnn(InputType::Float);
    let qdq = export_qdq(&q).unwrap();
    assert_eq!(
        ops(&qdq),
        [
            "QuantizeLinear",
            // reshape layer on the int8 codes, then the conv in NCHW
            "Reshape",
            "Transpose",
            "DequantizeLinear",
            "DequantizeLinear",
            "DequantizeLinear",
            "Conv",
            "Relu",
            "QuantizeLinear",
            "DequantizeLinear",
            "MaxPool",
            "QuantizeLinear",
            "Transpose",
            "Reshape",
            "DequantizeLinear",
            "DequantizeLinear",
            "DequantizeLinear",
            "Gemm",
            "QuantizeLinear",
            "DequantizeLinear",
        ]
    );
    let qop = export_qoperator(&q).unwrap();
    let mut expected = vec!["Reshape", "Transpose", "QLinearConv"];
    // The ReLU's clamp is void when the output zero point is already -128.
    if q.layers()[1].output.unwrap().zero_point > -128 {
        expected.push("Clip");
    }
    expected.extend([
        "MaxPool",
        "Transpose",
        "Reshape",
        "Reshape",
        "QLinearConv",
        "Reshape",
    ]);
    assert_eq!(ops(&qop), expected);
    let g = qop.graph.as_ref().unwrap();
    assert_eq!(g.input[0].elem_type(), Some(DataType::Int8 as i32));
    assert_eq!(g.output[0].elem_type(), Some(DataType::Int8 as i32));
}

fn init<'a>(m: &'a ModelProto, name: &str) -> &'a proto::TensorProto {
    let g = m.graph.as_ref().unwrap();
    g.initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn the_exports_carry_pares_scales_zero_points_and_codes() {
    let q = int8_small_cnn(InputType::Float);
    let conv = &q.layers()[1];
    let w = conv.weights.as_ref().unwrap();
    let pare_quant::Bias::Int32(bias) = &w.bias else {
        panic!("int32 bias")
    };
    for m in [export_qdq(&q).unwrap(), export_qoperator(&q).unwrap()] {
        let k = init(&m, "conv2d/kernel");
        assert_eq!(k.dims, [12, 1, 3, 3]);
        let codes = k.i8_values().unwrap();
        // [out, in, kh, kw] from [kh, kw, in, out] (one input channel).
        for (o, i, y, x) in [(0, 0, 0, 0), (5, 0, 2, 1), (11, 0, 1, 2)] {
            assert_eq!(codes[((o + i) * 3 + y) * 3 + x], w.kernel[[y, x, i, o]]);
        }
        assert_eq!(
            init(&m, "conv2d/kernel_scale").f32_values().unwrap(),
            w.scale
        );
        assert_eq!(&init(&m, "conv2d/bias").i32_values().unwrap(), bias);
        let out = conv.output.unwrap();
        assert_eq!(
            init(&m, "conv2d/output/scale").f32_values().unwrap(),
            [out.scale]
        );
        assert_eq!(
            init(&m, "conv2d/output/zero_point").i8_values().unwrap(),
            [out.zero_point as i8]
        );
    }
    let qdq = export_qdq(&q).unwrap();
    let s_in = q.input_quant().unwrap().scale;
    let bias_scale = init(&qdq, "conv2d/bias_scale").f32_values().unwrap();
    for (c, s) in bias_scale.iter().enumerate() {
        assert_abs_diff_eq!(*s, s_in * w.scale[c], epsilon = s * 1e-6);
    }
    // Per-channel dequantization names its axis: 0 for OIHW conv kernels, 1 for [in, out].
    let g = qdq.graph.as_ref().unwrap();
    let axis_of = |input: &str| -> Option<i64> {
        let n: &NodeProto = g.node.iter().find(|n| n.input[0] == input).unwrap();
        n.attribute
            .iter()
            .find(|a: &&AttributeProto| a.name == "axis")
            .map(|a| a.i)
    };
    assert_eq!(axis_of("conv2d/kernel"), Some(0));
    assert_eq!(axis_of("dense/kernel"), Some(1));
    assert_eq!(axis_of("conv2d/bias"), Some(0));
}

#[test]
fn a_uint8_input_model_takes_uint8_codes() {
    let q = int8_small_cnn(InputType::Uint8);
    let m = export_qoperator(&q).unwrap();
    assert_eq!(&ops(&m)[..2], ["DequantizeLinear", "QuantizeLinear"]);
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.input[0].elem_type(), Some(DataType::Uint8 as i32));
    let zp = init(&m, "input_u8/zero_point");
    assert_eq!(
        zp.raw_data,
        [(q.input_quant().unwrap().zero_point + 128) as u8]
    );
}

#[test]
fn uint8_activations_shift_every_zero_point_by_128() {
    let q = int8_small_cnn(InputType::Float);
    let options = QOperatorOptions {
        activations: ActivationType::Uint8,
    };
    let (i8m, u8m) = (
        export_qoperator(&q).unwrap(),
        export_qoperator_with(&q, &options).unwrap(),
    );
    assert_eq!(ops(&i8m), ops(&u8m));
    let g = u8m.graph.as_ref().unwrap();
    assert_eq!(g.input[0].elem_type(), Some(DataType::Uint8 as i32));
    assert_eq!(g.output[0].elem_type(), Some(DataType::Uint8 as i32));
    let mut zero_points = 0;
    for (a, b) in i8m
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .zip(&g.initializer)
    {
        assert_eq!(a.name, b.name);
        if a.name.ends_with("/zero_point") {
            zero_points += 1;
            assert_eq!(b.data_type, DataType::Uint8 as i32, "{}", b.name);
            assert_eq!(b.raw_data[0], a.raw_data[0] ^ 0x80, "{}", b.name);
        } else {
            // Scales, kernels (int8 either way), biases and shapes are the same.
            assert_eq!(a, b);
        }
    }
    assert_eq!(zero_points, 4); // conv and dense, input and output each
}

#[test]
fn dynamic_range_and_custom_layers_are_errors() {
    let calibration = images(4, &[28, 28, 1], 2);
    let config = ConvertConfig {
        mode: pare_quant::Mode::DynamicRange,
        ..Default::default()
    };
    let dynamic = convert(&small_cnn(0), calibration.view(), &config).unwrap();
    for r in [export_qdq(&dynamic), export_qoperator(&dynamic)] {
        assert!(matches!(r, Err(OnnxError::Unsupported { .. })), "{r:?}");
    }
    let err = export(Format::Qdq, Some(&small_cnn(0)), None).unwrap_err();
    assert!(err.to_string().contains("int8"), "{err}");
}

#[test]
fn write_all_writes_three_files_and_reports_their_sizes() {
    let dir = std::env::temp_dir().join(format!("pare-onnx-write-all-{}", std::process::id()));
    let q = int8_small_cnn(InputType::Float);
    let files = write_all(&dir, "small", Some(&small_cnn(0)), Some(&q)).unwrap();
    let formats: Vec<Format> = files.iter().map(|f| f.format).collect();
    assert_eq!(formats, Format::ALL);
    for f in &files {
        assert_eq!(f.size, FileSize::of_file(&f.path).unwrap());
        assert!(f.size.gzip < f.size.raw);
        let m = load(&f.path).unwrap();
        assert_eq!(m, export(f.format, Some(&small_cnn(0)), Some(&q)).unwrap());
    }
    // int8 kernels take a quarter of the float ones' bytes.
    assert!(files[2].size.raw * 3 < files[0].size.raw, "{files:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

// --- a reference evaluator for the float operators, to check the layout numerically ---

fn attr_ints(n: &NodeProto, name: &str) -> Vec<usize> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(vec![], |a| a.ints.iter().map(|&v| v as usize).collect())
}

/// Runs a float graph of Transpose / Reshape / Conv / MaxPool / Relu / LeakyRelu / Gemm / Add
/// / Concat with plain loops.
fn evaluate(m: &ModelProto, x: ArrayD<f32>) -> ArrayD<f32> {
    let g = m.graph.as_ref().unwrap();
    let mut values: HashMap<String, ArrayD<f32>> = HashMap::new();
    let mut shapes: HashMap<String, Vec<i64>> = HashMap::new();
    for t in &g.initializer {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        match t.f32_values() {
            Some(v) => {
                values.insert(
                    t.name.clone(),
                    ArrayD::from_shape_vec(IxDyn(&dims), v).unwrap(),
                );
            }
            None => {
                let v = t
                    .raw_data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()));
                shapes.insert(t.name.clone(), v.collect());
            }
        }
    }
    values.insert(g.input[0].name.clone(), x);
    for n in &g.node {
        let a = &values[&n.input[0]];
        let y = match n.op_type.as_str() {
            "Transpose" => a.view().permuted_axes(attr_ints(n, "perm")).to_owned(),
            "Reshape" => {
                let s: Vec<usize> = shapes[&n.input[1]]
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if d == 0 { a.shape()[i] } else { d as usize })
                    .collect();
                a.as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(IxDyn(&s))
                    .unwrap()
            }
            "Relu" => a.mapv(|v| v.max(0.0)),
            "LeakyRelu" => {
                let alpha = n.attribute[0].f;
                a.mapv(|v| if v < 0.0 { alpha * v } else { v })
            }
            "Gemm" => {
                let a2 = a.view().into_dimensionality::<ndarray::Ix2>().unwrap();
                let w = values[&n.input[1]]
                    .view()
                    .into_dimensionality::<ndarray::Ix2>()
                    .unwrap();
                (a2.dot(&w) + &values[&n.input[2]]).into_dyn()
            }
            "Add" => a + &values[&n.input[1]],
            "Concat" => {
                let axis = n.attribute[0].i;
                let axis = if axis < 0 {
                    a.ndim() as i64 + axis
                } else {
                    axis
                } as usize;
                let parts: Vec<_> = n.input.iter().map(|i| values[i].view()).collect();
                ndarray::concatenate(Axis(axis), &parts).unwrap()
            }
            "Conv" | "MaxPool" => window_op(
                n,
                a,
                n.input.get(1).map(|w| &values[w]),
                n.input.get(2).map(|b| &values[b]),
            ),
            other => panic!("evaluate: no reference for {other}"),
        };
        values.insert(n.output[0].clone(), y);
    }
    values.remove(&g.output[0].name).unwrap()
}

/// NCHW conv (weights OIHW, bias) or max-pool with explicit pads.
fn window_op(
    n: &NodeProto,
    x: &ArrayD<f32>,
    w: Option<&ArrayD<f32>>,
    b: Option<&ArrayD<f32>>,
) -> ArrayD<f32> {
    let x = x.view().into_dimensionality::<ndarray::Ix4>().unwrap();
    let (k, s, p) = (
        attr_ints(n, "kernel_shape"),
        attr_ints(n, "strides"),
        attr_ints(n, "pads"),
    );
    let (batch, cin, h, wd) = x.dim();
    let oh = (h + p[0] + p[2] - k[0]) / s[0] + 1;
    let ow = (wd + p[1] + p[3] - k[1]) / s[1] + 1;
    let cout = w.map_or(cin, |w| w.shape()[0]);
    let mut y = Array4::<f32>::zeros((batch, cout, oh, ow));
    for ((bi, o, yy, xx), out) in y.indexed_iter_mut() {
        let mut acc = match w {
            Some(_) => b.map_or(0.0, |b| b[[o]]),
            None => f32::NEG_INFINITY,
        };
        for dy in 0..k[0] {
            for dx in 0..k[1] {
                let (iy, ix) = (
                    (yy * s[0] + dy) as isize - p[0] as isize,
                    (xx * s[1] + dx) as isize - p[1] as isize,
                );
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                    continue;
                }
                let (iy, ix) = (iy as usize, ix as usize);
                match w {
                    Some(w) => {
                        for i in 0..cin {
                            acc += x[[bi, i, iy, ix]] * w[[o, i, dy, dx]];
                        }
                    }
                    None => acc = acc.max(x[[bi, o, iy, ix]]),
                }
            }
        }
        *out = acc;
    }
    y.into_dyn()
}

#[test]
fn the_float_graph_computes_pares_forward_pass() {
    let mut rng = StdRng::seed_from_u64(5);
    // Awkward sizes: non-square input, `same` padding with strides, channels on both sides of
    // the flatten, so a wrong transpose or flatten order changes the logits.
    let tiny = Sequential::new(&[7, 5, 2])
        .push(
            Conv2d::new("c1", 2, 3, [3, 2], &mut rng)
                .strides(2)
                .padding(Padding::Same)
                .activation(Activation::LeakyRelu(0.2)),
        )
        .push(MaxPool2d::new("p", 2).strides(1).padding(Padding::Same))
        .push(Conv2d::new("c2", 3, 4, [2, 2], &mut rng).activation(Activation::Relu))
        .push(Flatten::new("f"))
        .push(Dense::new("d", 3 * 2 * 4, 6, &mut rng));
    for model in [tiny, teacher_cnn(4, 6, 3), small_cnn(2)] {
        // Biases are zero at initialisation; give them values so their layout counts too.
        let mut model = model;
        for p in model.params_mut() {
            if p.name.ends_with(".bias") {
                p.value.mapv_inplace(|_| rng.random_range(-0.5..0.5));
            }
        }
        let x = images(3, &model.input_shape, 9);
        let want = pare_tensor::train::predict(&model, x.view(), 8).unwrap();
        let got = evaluate(&export_float(&model).unwrap(), x);
        assert_eq!(got.shape(), want.shape());
        for (g, w) in got.iter().zip(want.iter()) {
            assert_abs_diff_eq!(g, w, epsilon = 1e-4);
        }
        let _ = Axis(0);
    }
}

/// A graph model whose merges meet both layouts: a concat of the NHWC input with a conv's
/// NCHW output, an add of three branches (one the concat itself), a concat of flat values.
fn branchy() -> pare_tensor::Model {
    use pare_tensor::nn::Model;
    use pare_tensor::{Add, Concatenate, INPUT};
    let conv = |name: &str, cin: usize, cout: usize, k: usize, seed: u64| {
        Conv2d::seeded(name, cin, cout, [k, k], seed)
            .padding(Padding::Same)
            .activation(Activation::Relu)
    };
    Model::functional(&[6, 5, 2])
        .node(conv("a", 2, 3, 3, 1), &[INPUT])
        .node(Concatenate::new("cat"), &["a", INPUT])
        .node(conv("b1", 5, 5, 1, 2), &["cat"])
        .node(conv("b2", 5, 5, 3, 3), &["cat"])
        .node(Add::new("sum"), &["b1", "cat", "b2"])
        .node(MaxPool2d::new("pool", 2), &["sum"])
        .node(Flatten::new("flat_pool"), &["pool"])
        .node(Flatten::new("flat_a"), &["a"])
        .node(Concatenate::new("cat_flat"), &["flat_pool", "flat_a"])
        .node(
            Dense::seeded("head", 3 * 2 * 5 + 6 * 5 * 3, 4, 4),
            &["cat_flat"],
        )
        .build()
        .unwrap()
}

#[test]
fn a_graph_models_float_graph_computes_its_forward_pass() {
    let model = branchy();
    let m = export_float(&model).unwrap();
    let ops = ops(&m);
    assert_eq!(ops.iter().filter(|o| **o == "Add").count(), 2, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| **o == "Concat").count(), 2, "{ops:?}");
    // The input goes to NCHW once though the conv `a` and the concat both read it there; the
    // conv outputs of `a` and of the pool go back to NHWC once each, for the flattens.
    assert_eq!(
        ops.iter().filter(|o| **o == "Transpose").count(),
        3,
        "{ops:?}"
    );
    let x = images(3, &model.input_shape, 4);
    let want = pare_tensor::train::predict(&model, x.view(), 8).unwrap();
    let got = evaluate(&m, x);
    assert_eq!(got.shape(), want.shape());
    for (g, w) in got.iter().zip(want.iter()) {
        assert_abs_diff_eq!(g, w, epsilon = 1e-4);
    }
}

#[test]
fn the_newer_int8_ops_export_as_grouped_convs_and_contrib_ops() {
    use pare_tensor::nn::{
        AvgPool2d, DepthwiseConv2d, GlobalAveragePool2d, HardSwish, ReLU6, Sigmoid, Tanh,
    };
    let model = Sequential::new(&[8, 8, 3])
        .push(DepthwiseConv2d::new("dw", 3, [3, 3], &mut StdRng::seed_from_u64(1)).use_bias(false))
        .push(ReLU6::new("relu6"))
        .push(AvgPool2d::new("avg", 2))
        .push(Sigmoid::new("sigmoid"))
        .push(Tanh::new("tanh"))
        .push(HardSwish::new("hswish"))
        .push(GlobalAveragePool2d::new("gap"));
    let q = convert(&model, images(8, &[8, 8, 3], 2).view(), &Default::default()).unwrap();
    let qop = export_qoperator(&q).unwrap();
    let g = qop.graph.as_ref().unwrap();
    let dw = g.node.iter().find(|n| n.op_type == "QLinearConv").unwrap();
    let group = dw.attribute.iter().find(|a| a.name == "group").unwrap();
    assert_eq!(group.i, 3);
    let kernel = g
        .initializer
        .iter()
        .find(|t| t.name == "dw/kernel")
        .unwrap();
    assert_eq!(kernel.dims, [3, 1, 3, 3]);
    let contrib: Vec<&str> = g
        .node
        .iter()
        .filter(|n| n.domain == MS_DOMAIN)
        .map(|n| n.op_type.as_str())
        .collect();
    assert_eq!(
        contrib,
        [
            "QLinearAveragePool",
            "QLinearSigmoid",
            "QLinearGlobalAveragePool"
        ]
    );
    assert!(qop.opset_import.iter().any(|o| o.domain == MS_DOMAIN));
    // ReLU6 clamps the codes; tanh and hard-swish run in float between Q/DQ.
    for op in ["Clip", "Tanh", "HardSigmoid"] {
        assert!(ops(&qop).contains(&op), "{op}: {:?}", ops(&qop));
    }
    let qdq = export_qdq(&q).unwrap();
    for op in [
        "Conv",
        "Clip",
        "AveragePool",
        "Sigmoid",
        "Tanh",
        "HardSigmoid",
        "GlobalAveragePool",
    ] {
        assert!(ops(&qdq).contains(&op), "{op}: {:?}", ops(&qdq));
    }
}

#[test]
fn an_int8_graph_model_exports_its_merges() {
    let model = pare_tensor::models::tiny_residual(3, 0);
    let q = convert(
        &model,
        images(8, &[28, 28, 1], 3).view(),
        &Default::default(),
    )
    .unwrap();
    assert!(!q.is_sequential());
    let qop = export_qoperator(&q).unwrap();
    let g = qop.graph.as_ref().unwrap();
    let add = g.node.iter().find(|n| n.op_type == "QLinearAdd").unwrap();
    assert_eq!(add.domain, MS_DOMAIN);
    // The add reads the block's last conv and the shortcut, the stem's output (a conv with
    // its ReLU fused: a `Clip` after it unless the zero point is -128).
    let producer = |value: &str| {
        g.node
            .iter()
            .find(|n| n.output[0] == value)
            .map_or("", |n| n.op_type.as_str())
    };
    for input in [&add.input[0], &add.input[3]] {
        assert!(
            ["QLinearConv", "Clip"].contains(&producer(input)),
            "{input}"
        );
    }
    assert_ne!(add.input[0], add.input[3]);
    let qdq = export_qdq(&q).unwrap();
    assert_eq!(ops(&qdq).iter().filter(|o| **o == "Add").count(), 1);
}
