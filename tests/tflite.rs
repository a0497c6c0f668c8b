//! pare's integer engine against TFLite itself: every int8 op, old and new, and the small CNN
//! trained on MNIST, run on TFLite 2.21's reference kernels (`OpResolverType.BUILTIN_REF`) with
//! the same int8 weights, int32 biases, scales and zero points, through `tools/tflite_run.py`
//! in the venv `tools/setup-tf.sh` makes. The tool writes the `.tflite` flatbuffer from pare's
//! numbers directly, so nothing is re-quantized on the way, and returns every layer's output.
//!
//! - Every layer's int8 output equals TFLite's, code for code (0 codes differ): conv, dense
//!   (one rounding, as TFLite's `FULLY_CONNECTED`), max-pool, reshape, ReLU, leaky ReLU,
//!   depthwise conv, average pool, global average pool (`MEAN` without `keep_dims`, Keras'
//!   form), ReLU6 fused and alone, logistic, tanh and hard-swish; BatchNorm folded and Dropout
//!   dropped by the converter before; softmax (`SOFTMAX`, fixed-point exp and reciprocal)
//!   after dense layers whose logits span from a fraction of a unit to hundreds, and over the
//!   channels of a conv in a graph.
//! - Graph models: a small residual network with BatchNorm, an add with its ReLU fused,
//!   a concatenation (its inputs given its parameters by the converter), global average pool
//!   and dense, and ResNet-8, written as TFLite graphs with `ADD` and `CONCATENATION` taking
//!   several inputs: every layer's codes equal TFLite's.
//! - XNNPACK (TFLite's default delegate) is measured beside, for information: its int8 kernels
//!   are not bound to the reference's rounding.
//!
//! Without TensorFlow the tests show as ignored; under `PARE_REQUIRE_DATA=1` they run and fail,
//! naming `tools/setup-tf.sh`.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use pare::quant::kernels::activation_range;
use pare::quant::kernels::avgpool::{MeanParams, global_avg_pool_i8};
use pare::quant::{
    Bias, ConvertConfig, Interpreter, LayerKind, PackedWeights, QuantizedModel, Requant, convert,
    gemm_i8_requant,
};
use pare::tensor::nn::Model;
use pare::tensor::nn::{
    AvgPool2d, BatchNorm, Conv2d, Dense, DepthwiseConv2d, Dropout, Flatten, GlobalAveragePool2d,
    HardSwish, LeakyReLU, MaxPool2d, ReLU, ReLU6, Sigmoid, Softmax, Tanh,
};
use pare::tensor::{Activation, Add, Concatenate, Padding as FloatPadding, Sequential};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// TensorFlow's Python (the places the build script checks before it sets `pare_tflite`).
fn tf_python() -> PathBuf {
    pare::tflite::tf_python(root()).unwrap_or_else(|| {
        panic!("no TensorFlow: run tools/setup-tf.sh (or set PARE_TF_PYTHON to its python)")
    })
}

/// TFLite's outputs of every layer (reference kernels), and the model's output under XNNPACK.
struct TfliteRun {
    layers: Vec<ArrayD<i8>>,
    xnnpack: Option<ArrayD<i8>>,
}

fn run_tflite(q: &QuantizedModel, codes: &ArrayD<i8>, name: &str, xnnpack: bool) -> TfliteRun {
    let dir = root().join("target/pare/tflite-test");
    let n = codes.shape()[0];
    let spec = pare::tflite::spec(q, n, name, &dir, xnnpack).unwrap();
    let codes: Vec<i8> = codes.iter().copied().collect();
    pare::tflite::run_tool(&tf_python(), root(), &spec, &codes, &dir, name)
        .unwrap_or_else(|e| panic!("{e}"));
    let read = |path: PathBuf| -> Vec<i8> {
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into_iter()
            .map(|b| b as i8)
            .collect()
    };
    let all = read(dir.join(format!("{name}.output.bin")));
    let mut layers = Vec::new();
    let mut at = 0;
    for l in q.layers() {
        let shape: Vec<usize> = std::iter::once(n).chain(l.output_shape.clone()).collect();
        let len: usize = shape.iter().product();
        layers.push(ArrayD::from_shape_vec(IxDyn(&shape), all[at..at + len].to_vec()).unwrap());
        at += len;
    }
    assert_eq!(at, all.len(), "{name}: TFLite wrote {} codes", all.len());
    let out_shape: Vec<usize> = std::iter::once(n)
        .chain(q.output_shape().iter().copied())
        .collect();
    let xnnpack = xnnpack.then(|| {
        let v = read(dir.join(format!("{name}.output.bin.xnnpack")));
        ArrayD::from_shape_vec(IxDyn(&out_shape), v).unwrap()
    });
    TfliteRun { layers, xnnpack }
}

/// Codes that differ, and the largest difference.
fn differ(a: &ArrayD<i8>, b: &ArrayD<i8>) -> (usize, i32) {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).fold((0, 0), |(n, m), (&x, &y)| {
        let d = (x as i32 - y as i32).abs();
        (n + usize::from(d != 0), m.max(d))
    })
}

/// Runs `q` on `codes` in pare and in TFLite, prints every layer's comparison and asserts that
/// no code differs. Returns pare's layer outputs and TFLite's run.
fn compare(
    q: &QuantizedModel,
    codes: &ArrayD<i8>,
    name: &str,
    xnnpack: bool,
) -> (Vec<ArrayD<i8>>, TfliteRun) {
    let ours = Interpreter::new(q)
        .unwrap()
        .layer_outputs_i8(codes.view())
        .unwrap();
    let theirs = run_tflite(q, codes, name, xnnpack);
    let mut failures = Vec::new();
    for ((l, a), b) in q.layers().iter().zip(&ours).zip(&theirs.layers) {
        let (n, max) = differ(a, b);
        println!(
            "{name}: {:<18} {:<16} {n:>6} of {:>7} codes differ (max {max})",
            l.name,
            l.kind.op_name(),
            a.len()
        );
        if n > 0 {
            failures.push(format!(
                "{} ({}): {n} of {}",
                l.name,
                l.kind.op_name(),
                a.len()
            ));
        }
    }
    if let Some(x) = &theirs.xnnpack {
        let last = theirs.layers.last().unwrap();
        let (n, max) = differ(x, last);
        println!(
            "{name}: XNNPACK vs reference, model output: {n} of {} codes differ (max {max})",
            x.len()
        );
    }
    assert!(
        failures.is_empty(),
        "{name}: pare's int8 codes differ from TFLite's reference kernels: {failures:?}"
    );
    (ours, theirs)
}

/// `n` examples of shape `shape`, uniform in [−1, 1] plus a per-example offset, seeded.
fn inputs(n: usize, shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let per: usize = shape.iter().product();
    let dims: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
    let mut v = Vec::with_capacity(n * per);
    for _ in 0..n {
        let offset: f32 = rng.random_range(-0.3..0.3);
        v.extend((0..per).map(|_| rng.random_range(-1.0f32..1.0) + offset));
    }
    ArrayD::from_shape_vec(IxDyn(&dims), v).unwrap()
}

/// `model` converted with 64 calibration examples, and the int8 codes of 500 other ones.
fn converted(model: &Sequential, seed: u64) -> (QuantizedModel, ArrayD<i8>) {
    let calibration = inputs(64, &model.input_shape, seed);
    let q = convert(model, calibration.view(), &ConvertConfig::default()).unwrap();
    let test = inputs(500, &model.input_shape, seed + 1);
    let codes = q.quantize_input(test.view()).unwrap();
    (q, codes)
}

#[test]
#[cfg_attr(not(pare_tflite), ignore = "needs TensorFlow: run tools/setup-tf.sh")]
fn conv_dense_pool_relu_and_leaky_relu_match_tflite_reference_kernels() {
    let mut rng = StdRng::seed_from_u64(1);
    let model = Sequential::new(&[14, 14, 2])
        .push(Conv2d::new("conv1", 2, 8, [3, 3], &mut rng).padding(FloatPadding::Same))
        .push(LeakyReLU::new("leaky", 0.2))
        .push(MaxPool2d::new("pool1", 2))
        .push(ReLU::new("relu"))
        .push(
            Conv2d::new("conv2", 8, 16, [3, 3], &mut rng)
                .strides(2)
                .activation(Activation::Relu),
        )
        .push(Flatten::new("flatten"))
        .push(Dense::new("fc1", 144, 48, &mut rng).activation(Activation::Relu))
        .push(Dense::new("fc2", 48, 10, &mut rng));
    let (q, codes) = converted(&model, 10);
    compare(&q, &codes, "old_ops", true);
}

#[test]
#[cfg_attr(not(pare_tflite), ignore = "needs TensorFlow: run tools/setup-tf.sh")]
fn new_layers_match_tflite_reference_kernels() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut bn = BatchNorm::new("bn", 8);
    // Moving statistics of a trained network, so the fold changes the kernel.
    for (i, v) in bn.moving_mean.value.iter_mut().enumerate() {
        *v = 0.1 * i as f32 - 0.3;
    }
    for (i, v) in bn.moving_variance.value.iter_mut().enumerate() {
        *v = 0.5 + 0.2 * i as f32;
    }
    let model = Sequential::new(&[16, 16, 3])
        .push(
            Conv2d::new("conv", 3, 8, [3, 3], &mut rng)
                .padding(FloatPadding::Same)
                .use_bias(false),
        )
        .push(bn)
        .push(ReLU6::new("relu6_fused"))
        .push(
            DepthwiseConv2d::with_multiplier("dw2", 8, [3, 3], 2, &mut rng)
                .strides(2)
                .padding(FloatPadding::Same)
                .activation(Activation::Relu),
        )
        .push(
            AvgPool2d::new("avg", 3)
                .strides(2)
                .padding(FloatPadding::Same),
        )
        .push(ReLU6::new("relu6"))
        .push(Conv2d::new("expand", 16, 12, [1, 1], &mut rng))
        .push(HardSwish::new("hswish"))
        .push(DepthwiseConv2d::new("dw1", 12, [3, 3], &mut rng).padding(FloatPadding::Same))
        .push(Sigmoid::new("sigmoid"))
        .push(Conv2d::new("project", 12, 12, [1, 1], &mut rng))
        .push(Tanh::new("tanh"))
        .push(AvgPool2d::new("avg2", 2))
        .push(GlobalAveragePool2d::new("gap"))
        .push(Dropout::new("dropout", 0.3).unwrap())
        .push(Dense::new("fc", 12, 10, &mut rng));
    let (q, codes) = converted(&model, 20);
    let ops: Vec<&str> = q.layers().iter().map(|l| l.kind.op_name()).collect();
    assert_eq!(
        ops,
        [
            "conv2d",
            "relu6",
            "depthwise_conv2d",
            "avg_pool2d",
            "relu6",
            "conv2d",
            "hard_swish",
            "depthwise_conv2d",
            "sigmoid",
            "conv2d",
            "tanh",
            "avg_pool2d",
            "global_avg_pool2d",
            "dense"
        ],
        "BatchNorm folds into the conv, Dropout is dropped"
    );
    let (ours, theirs) = compare(&q, &codes, "new_ops", true);

    // For the record: the spatial-mean kernel of TFLite's keep_dims MEAN (two roundings) on
    // the same input, against the MEAN Keras converts to.
    let gap = ops.iter().position(|&o| o == "global_avg_pool2d").unwrap();
    let (input, output) = (
        q.layers()[gap - 1].output.unwrap(),
        q.layers()[gap].output.unwrap(),
    );
    let x = &ours[gap - 1];
    let &[n, h, w, c] = x.shape() else { panic!() };
    let p = MeanParams::from_scales(
        (input.scale, input.zero_point),
        (output.scale, output.zero_point),
    )
    .unwrap();
    let mut keep = vec![0i8; n * c];
    global_avg_pool_i8(x.as_slice().unwrap(), n, h * w, c, &p, &mut keep);
    let keep = ArrayD::from_shape_vec(IxDyn(&[n, c]), keep).unwrap();
    let (d, max) = differ(&keep, &theirs.layers[gap]);
    println!(
        "new_ops: keep_dims MEAN kernel vs TFLite's MEAN without keep_dims: {d} of {} codes \
         differ (max {max})",
        keep.len()
    );
}

#[test]
#[cfg_attr(not(pare_tflite), ignore = "needs TensorFlow: run tools/setup-tf.sh")]
fn softmax_matches_tflite_reference_kernels() {
    // Dense + Softmax, the usual classifier head, with logits scaled so the input scale of the
    // softmax goes from a few thousandths to a few units: differences fall outside diff_min
    // at the large scales, and many codes sit near the maximum at the small ones.
    for (i, gain) in [0.2f32, 2.0, 20.0, 200.0].into_iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(50 + i as u64);
        let mut head = Dense::new("logits", 32, 10, &mut rng);
        head.kernel.value.mapv_inplace(|v| v * gain);
        let model = Sequential::new(&[6, 6, 2])
            .push(Conv2d::new("conv", 2, 4, [3, 3], &mut rng).activation(Activation::Relu))
            .push(Flatten::new("flatten"))
            .push(Dense::new("fc", 64, 32, &mut rng).activation(Activation::Relu))
            .push(head)
            .push(Softmax::new("softmax"));
        let (q, codes) = converted(&model, 60 + 2 * i as u64);
        assert_eq!(q.layers().last().unwrap().kind, LayerKind::Softmax);
        let scale = q.layers()[q.layers().len() - 2].output.unwrap().scale;
        println!("softmax_x{gain}: logit scale {scale}");
        compare(&q, &codes, &format!("softmax_x{gain}"), true);
    }
    // A graph: softmax over the channels of a conv's [h, w, c] output (rows of the last axis),
    // then a pooled classifier head with its own softmax.
    let mut rng = StdRng::seed_from_u64(70);
    let model = Model::functional(&[8, 8, 3])
        .node(
            Conv2d::new("conv", 3, 6, [3, 3], &mut rng).padding(FloatPadding::Same),
            &["input"],
        )
        .node(Softmax::new("channel_softmax"), &["conv"])
        .node(Conv2d::new("side", 3, 6, [1, 1], &mut rng), &["input"])
        .node(Add::new("add"), &["channel_softmax", "side"])
        .node(GlobalAveragePool2d::new("gap"), &["add"])
        .node(Dense::new("fc", 6, 5, &mut rng), &["gap"])
        .node(Softmax::new("softmax"), &["fc"])
        .build()
        .unwrap();
    let (q, codes) = converted(&model, 71);
    let ops: Vec<&str> = q.layers().iter().map(|l| l.kind.op_name()).collect();
    assert_eq!(
        ops,
        [
            "conv2d",
            "softmax",
            "conv2d",
            "add",
            "global_avg_pool2d",
            "dense",
            "softmax"
        ]
    );
    compare(&q, &codes, "softmax_graph", true);
}

#[test]
#[cfg_attr(
    not(all(pare_tflite, pare_mnist)),
    ignore = "needs TensorFlow: run tools/setup-tf.sh, and MNIST: set MNIST_DIR"
)]
fn small_cnn_matches_tflite_reference_kernels_on_mnist() {
    let data = common::mnist();
    let (train, model, _) = common::small_cnn_one_epoch(&data);
    let calibration = train.take(100);
    let q = convert(
        &model,
        calibration.images().view().into_dyn(),
        &ConvertConfig::default(),
    )
    .unwrap();
    let test = data.test();
    let codes = q.quantize_input(test.images().view().into_dyn()).unwrap();
    let (ours, theirs) = compare(&q, &codes, "small_cnn", true);

    // For the record: the dense layer rescaled with gemmlowp's two roundings (CONV_2D's rule,
    // pare's dense rule before it followed FULLY_CONNECTED) on the same input.
    for (i, l) in q.layers().iter().enumerate() {
        let (LayerKind::Dense { relu }, Some(w), Some(out)) = (&l.kind, &l.weights, l.output)
        else {
            continue;
        };
        let input = if i == 0 {
            q.input_quant()
        } else {
            q.layers()[i - 1].output
        }
        .unwrap();
        let x = if i == 0 { &codes } else { &ours[i - 1] };
        let n = x.shape()[0];
        let (k, m) = (w.kernel.shape()[0], w.kernel.shape()[1]);
        let packed = PackedWeights::new(w.kernel.view().into_shape_with_order((k, m)).unwrap());
        let act = if *relu {
            pare::quant::Activation::Relu
        } else {
            pare::quant::Activation::None
        };
        let (lo, hi) = activation_range(act, out.scale, out.zero_point).unwrap();
        let rq =
            Requant::from_scales(input.scale, &w.scale, out.scale, out.zero_point, lo, hi).unwrap();
        let Bias::Int32(bias) = &w.bias else { panic!() };
        let mut double = ndarray::Array2::zeros((n, m));
        let x2 = x.view().into_shape_with_order((n, k)).unwrap();
        gemm_i8_requant(
            x2,
            input.zero_point,
            &packed,
            Some(bias),
            &rq,
            double.view_mut(),
        )
        .unwrap();
        let (d, max) = differ(&double.into_dyn(), &theirs.layers[i]);
        println!(
            "small_cnn: {} with gemmlowp's double rounding vs TFLite's FULLY_CONNECTED: {d} of \
             {} codes differ (max {max})",
            l.name,
            n * m
        );
    }
}

/// A BatchNorm with the moving statistics of a trained network, so folding changes the
/// kernel: means spread around zero, variances around one.
fn trained_bn(name: &str, channels: usize, seed: u64) -> BatchNorm {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bn = BatchNorm::new(name, channels);
    for v in bn.moving_mean.value.iter_mut() {
        *v = rng.random_range(-0.3..0.3);
    }
    for v in bn.moving_variance.value.iter_mut() {
        *v = rng.random_range(0.3..2.0);
    }
    for v in bn.gamma.value.iter_mut() {
        *v = rng.random_range(0.5..1.5);
    }
    for v in bn.beta.value.iter_mut() {
        *v = rng.random_range(-0.2..0.2);
    }
    bn
}

/// Every BatchNorm of `model` given trained-looking statistics.
fn with_trained_bns(mut model: Model, seed: u64) -> Model {
    for (i, l) in model.layers.iter_mut().enumerate() {
        if let pare::tensor::nn::Layer::BatchNorm(bn) = l {
            let c = bn.gamma.value.len();
            *bn = trained_bn(&bn.name.clone(), c, seed + i as u64);
        }
    }
    model
}

#[test]
#[cfg_attr(not(pare_tflite), ignore = "needs TensorFlow: run tools/setup-tf.sh")]
fn residual_graph_with_add_and_concat_matches_tflite_reference_kernels() {
    let mut rng = StdRng::seed_from_u64(3);
    let same = FloatPadding::Same;
    let model = Model::functional(&[12, 12, 3])
        .node(
            Conv2d::new("stem", 3, 8, [3, 3], &mut rng)
                .padding(same)
                .use_bias(false),
            &["input"],
        )
        .node(trained_bn("stem_bn", 8, 1), &["stem"])
        .node(ReLU::new("stem_relu"), &["stem_bn"])
        .node(
            Conv2d::new("a1", 8, 8, [3, 3], &mut rng)
                .padding(same)
                .activation(Activation::Relu),
            &["stem_relu"],
        )
        .node(
            Conv2d::new("a2", 8, 8, [3, 3], &mut rng)
                .padding(same)
                .use_bias(false),
            &["a1"],
        )
        .node(trained_bn("a2_bn", 8, 2), &["a2"])
        .node(Add::new("add"), &["a2_bn", "stem_relu"])
        .node(ReLU::new("add_relu"), &["add"])
        .node(Conv2d::new("side", 8, 4, [1, 1], &mut rng), &["stem_relu"])
        .node(MaxPool2d::new("side_pool", 1), &["side"])
        .node(Concatenate::new("cat"), &["add_relu", "side_pool"])
        .node(
            Conv2d::new("mix", 12, 6, [3, 3], &mut rng).strides(2),
            &["cat"],
        )
        .node(Add::new("add2"), &["mix", "mix"])
        .node(GlobalAveragePool2d::new("gap"), &["add2"])
        .node(Dense::new("fc", 6, 10, &mut rng), &["gap"])
        .build()
        .unwrap();
    let (q, codes) = converted(&model, 30);
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
            "concatenate",
            "conv2d",
            "add",
            "global_avg_pool2d",
            "dense"
        ],
        "BatchNorms folded, ReLUs fused into the convs and the add"
    );
    assert_eq!(q.layers()[3].kind, LayerKind::Add { relu: true });
    compare(&q, &codes, "residual_graph", true);
}

#[test]
#[cfg_attr(not(pare_tflite), ignore = "needs TensorFlow: run tools/setup-tf.sh")]
fn resnet8_matches_tflite_reference_kernels() {
    let model = with_trained_bns(pare::tensor::models::resnet8(0), 40);
    let calibration = inputs(64, &model.input_shape, 41).mapv(|v| (v + 1.0) / 2.0);
    let q = convert(&model, calibration.view(), &ConvertConfig::default()).unwrap();
    assert!(!q.is_sequential());
    let test = inputs(100, &model.input_shape, 42).mapv(|v| (v + 1.0) / 2.0);
    let codes = q.quantize_input(test.view()).unwrap();
    compare(&q, &codes, "resnet8", true);
}
