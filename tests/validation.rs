//! Every hyper-parameter and input a user hands to pare is checked up front: a typed error
//! that names the field and its allowed range, one test per rule.

use ndarray::{ArrayD, IxDyn};
use pare::distill::{DistillError, KdConfig};
use pare::prune::mask::{Pooling, block_mask, magnitude_mask, nm_mask};
use pare::prune::{ConstantSparsity, PolynomialDecay, PruneError};
use pare::quant::{ConvertConfig, ObserverKind, QuantError, convert};
use pare::tensor::TensorError;
use pare::tensor::models::small_cnn;
use pare::tensor::optim::{Adam, AdamConfig, Sgd};
use pare::tensor::train::{FitConfig, evaluate, predict};

fn images(n: usize, h: usize, w: usize) -> ArrayD<f32> {
    ArrayD::from_elem(IxDyn(&[n, h, w, 1]), 0.5)
}

/// The error's message, checked to contain every `part`.
fn says(err: impl std::fmt::Display, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(msg.contains(p), "{msg:?} lacks {p:?}");
    }
}

#[test]
fn batch_size_zero() {
    let cfg = FitConfig {
        batch_size: 0,
        ..Default::default()
    };
    says(
        cfg.validate().unwrap_err(),
        &["batch_size = 0: must be >= 1"],
    );
    let m = small_cnn(0);
    let x = images(2, 28, 28);
    says(predict(&m, x.view(), 0).unwrap_err(), &["batch_size = 0"]);
    says(
        evaluate(&m, x.view(), &[0, 1], 0).unwrap_err(),
        &["batch_size = 0"],
    );
}

#[test]
fn epochs_zero() {
    let cfg = FitConfig {
        epochs: 0,
        ..Default::default()
    };
    says(cfg.validate().unwrap_err(), &["epochs = 0: must be >= 1"]);
}

#[test]
fn learning_rate_not_positive_or_not_finite() {
    for (lr, text) in [
        (0.0, "learning_rate = 0: must be > 0"),
        (-1e-3, "learning_rate = -0.001: must be > 0"),
        (
            f32::INFINITY,
            "learning_rate is infinite: must be finite and > 0",
        ),
        (f32::NAN, "learning_rate is NaN: must be finite and > 0"),
    ] {
        let adam = Adam::new(AdamConfig {
            learning_rate: lr,
            ..Default::default()
        });
        assert!(matches!(
            adam,
            Err(TensorError::BadHyperParameter {
                name: "learning_rate",
                ..
            })
        ));
        says(adam.unwrap_err(), &[text]);
        says(Sgd::new(lr, 0.0, false).unwrap_err(), &[text]);
    }
}

#[test]
fn sparsity_outside_zero_to_one() {
    let w = ArrayD::from_elem(IxDyn(&[4, 4]), 1.0f32);
    for s in [-0.1, 1.0, 1.5, f32::NAN] {
        for err in [
            ConstantSparsity::new(s, 0, -1, 100).unwrap_err(),
            PolynomialDecay::new(0.0, s, 0, 1000, 3.0, 100).unwrap_err(),
            magnitude_mask(w.view(), s).unwrap_err(),
        ] {
            assert!(matches!(err, PruneError::InvalidSparsity { .. }), "{err}");
            says(err, &["sparsity must be in [0, 1)"]);
        }
    }
}

#[test]
fn end_step_not_after_begin_step() {
    for end in [100, 50, -1] {
        let err = PolynomialDecay::new(0.0, 0.5, 100, end, 3.0, 10).unwrap_err();
        assert!(matches!(err, PruneError::InvalidEndStep { .. }), "{err}");
        says(err, &["end_step", "begin_step 100"]);
    }
    // A constant schedule may end where it begins (TFMOT's rule), not before.
    assert!(ConstantSparsity::new(0.5, 100, 100, 10).is_ok());
    let err = ConstantSparsity::new(0.5, 100, 99, 10).unwrap_err();
    assert!(matches!(err, PruneError::InvalidEndStep { .. }), "{err}");
}

#[test]
fn frequency_zero() {
    for err in [
        ConstantSparsity::new(0.5, 0, -1, 0).unwrap_err(),
        PolynomialDecay::new(0.0, 0.5, 0, 100, 3.0, 0).unwrap_err(),
    ] {
        assert!(
            matches!(err, PruneError::InvalidFrequency { frequency: 0 }),
            "{err}"
        );
        says(err, &["frequency must be > 0"]);
    }
}

#[test]
fn block_shape_zero() {
    let w = ArrayD::from_elem(IxDyn(&[4, 4]), 1.0f32);
    for block in [[0, 2], [2, 0]] {
        let err = block_mask(w.view(), 0.5, block, Pooling::Avg).unwrap_err();
        assert!(matches!(err, PruneError::InvalidBlockShape { .. }), "{err}");
        says(err, &["block shape", ">= 1"]);
    }
}

#[test]
fn n_greater_than_m() {
    let w = ArrayD::from_elem(IxDyn(&[8, 4]), 1.0f32);
    for (n, m) in [(3, 2), (0, 4)] {
        let err = nm_mask(w.view(), n, m).unwrap_err();
        assert!(matches!(err, PruneError::InvalidNm { .. }), "{err}");
        says(err, &["1 <= n <= m", &format!("{n}:{m}")]);
    }
}

#[test]
fn temperature_not_positive_or_not_finite() {
    for t in [0.0, -1.0, f32::INFINITY, f32::NAN] {
        let err = KdConfig {
            temperature: t,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(
            err,
            DistillError::BadHyperParameter {
                name: "temperature",
                ..
            }
        ));
        let range = if t.is_finite() {
            ": must be > 0"
        } else {
            ": must be finite and > 0"
        };
        says(err, &["temperature", range]);
    }
}

#[test]
fn alpha_outside_zero_to_one() {
    for a in [-0.1, 1.1, f32::NAN] {
        let err = KdConfig {
            alpha: a,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(
            err,
            DistillError::BadHyperParameter { name: "alpha", .. }
        ));
        says(err, &["alpha", "[0, 1]"]);
    }
    assert!(
        KdConfig {
            alpha: 1.0,
            ..Default::default()
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn calibration_set_empty_or_of_the_wrong_shape() {
    let m = small_cnn(0);
    let cfg = ConvertConfig::default();
    let err = convert(&m, images(0, 28, 28).view(), &cfg).unwrap_err();
    assert!(matches!(err, QuantError::ShapeMismatch { .. }), "{err}");
    says(err, &["at least one example"]);
    let err = convert(&m, images(4, 28, 27).view(), &cfg).unwrap_err();
    assert!(
        matches!(err, QuantError::Tensor(TensorError::InputShape { .. })),
        "{err}"
    );
    says(err, &["[batch, 28, 28, 1]", "[batch, 28, 27, 1]"]);
    let batch = ConvertConfig {
        calibration_batch_size: 0,
        ..Default::default()
    };
    says(
        convert(&m, images(4, 28, 28).view(), &batch).unwrap_err(),
        &["calibration_batch_size = 0: must be >= 1"],
    );
}

#[test]
fn unknown_observer() {
    let err = "minmaxx".parse::<ObserverKind>().unwrap_err();
    assert!(matches!(err, QuantError::UnknownObserver { .. }), "{err}");
    says(err, &["minmaxx"]);
}

#[test]
fn input_batch_of_the_wrong_shape() {
    let m = small_cnn(0);
    let wrong = images(2, 28, 27);
    let err = predict(&m, wrong.view(), 32).unwrap_err();
    assert!(matches!(err, TensorError::InputShape { .. }), "{err}");
    let err = evaluate(&m, wrong.view(), &[0, 1], 32).unwrap_err();
    assert!(matches!(err, TensorError::InputShape { .. }), "{err}");
    let q = convert(&m, images(4, 28, 28).view(), &ConvertConfig::default()).unwrap();
    let err = q.predict(wrong.view()).unwrap_err();
    assert!(matches!(err, QuantError::ShapeMismatch { .. }), "{err}");
    says(&err, &["[2, 28, 27, 1]"]);
    let codes = ArrayD::<i8>::zeros(IxDyn(&[2, 784]));
    assert!(matches!(
        q.predict_i8(codes.view()),
        Err(QuantError::ShapeMismatch { .. })
    ));
}

/// Every consumer of a model follows a graph model's wiring, not its layer list (a residual
/// block's projection shortcut comes after the block's second BatchNorm in the list, but does
/// not consume it), so none of them refuses one.
#[test]
fn graph_models_go_wherever_chains_go() {
    use pare::quant::{Qat, QatConfig};
    use pare::tensor::models::tiny_residual;
    let graph = tiny_residual(10, 0);
    let x = images(4, 28, 28);
    // int8 conversion takes graph models, and their int8 form exports to ONNX.
    let q = convert(&graph, x.view(), &ConvertConfig::default()).unwrap();
    assert!(!q.is_sequential());
    pare::onnx::export_qdq(&q).unwrap();
    // So does quantization-aware training, its fake-quant nodes wired into the graph.
    let mut m = graph.clone();
    Qat::attach(&mut m, QatConfig::default()).unwrap();
    // Channel removal and the sparse runtime follow the wiring (tests/pruning.rs).
    pare::prune::structured::remove_dead_channels(&graph).unwrap();
    pare::prune::structured::fold_constant_channels(&graph).unwrap();
    pare::prune::SparseSequential::new(&graph, 0.5).unwrap();
    // The float model itself runs (graph-free too) and exports to ONNX.
    predict(&graph, x.view(), 2).unwrap();
    pare::tensor::infer::forward(&graph, x.view()).unwrap();
    pare::onnx::export_float(&graph).unwrap();
}
