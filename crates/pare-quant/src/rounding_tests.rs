//! The engine under each [`Rounding`] rule: the same model, the same parameters, codes at most
//! one apart, every engine path agreeing with the others. That `Rounding::OnnxRuntime` is
//! onnxruntime's rule bit for bit is tested against onnxruntime itself (`tests/onnx.rs`).

use ndarray::{ArrayD, Axis};
use pare_tensor::Sequential;
use pare_tensor::nn::{Conv2d, Dense, Flatten, LeakyReLU, MaxPool2d};
use pare_tensor::{Activation, Padding};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{ConvertConfig, Interpreter, Rounding, convert};

/// Conv + fused leaky ReLU (or ReLU), pool, 1×1 conv, stand-alone leaky ReLU (or ReLU),
/// dense + ReLU, dense.
fn model(seed: u64, leaky: bool) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    let (act, slope) = if leaky {
        (Activation::LeakyRelu(0.2), 0.1)
    } else {
        (Activation::Relu, 0.0)
    };
    Sequential::new(&[10, 10, 2])
        .push(
            Conv2d::new("c1", 2, 6, [3, 3], &mut rng)
                .padding(Padding::Same)
                .activation(act),
        )
        .push(MaxPool2d::new("p1", 2))
        .push(Conv2d::new("c2", 6, 4, [1, 1], &mut rng))
        .push(LeakyReLU::new("lk", slope))
        .push(Flatten::new("f"))
        .push(Dense::new("d1", 5 * 5 * 4, 12, &mut rng).activation(Activation::Relu))
        .push(Dense::new("d2", 12, 10, &mut rng))
}

fn uniform(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_fn(shape, |_| rng.random_range(0.0..1.0))
}

#[test]
fn rules_differ_by_at_most_one_code_and_round_trip() {
    // TFLite's LEAKY_RELU rounds twice and is coarse (one negative code in several is one
    // lower than onnxruntime's single rounding), so leaky models differ much more than ReLU ones.
    for (leaky, min_equal) in [(false, 0.95), (true, 0.5)] {
        check_rules(leaky, min_equal);
    }
}

fn check_rules(leaky: bool, min_equal: f64) {
    let m = model(3, leaky);
    let q = convert(
        &m,
        uniform(&[64, 10, 10, 2], 1).view(),
        &ConvertConfig::default(),
    )
    .unwrap();
    assert_eq!(q.rounding(), Rounding::Tflite);
    let x = q
        .quantize_input(uniform(&[200, 10, 10, 2], 2).view())
        .unwrap();
    let tflite = q.predict_i8(x.view()).unwrap();
    let ort = q.clone().with_rounding(Rounding::OnnxRuntime).unwrap();
    assert_eq!(ort.rounding(), Rounding::OnnxRuntime);
    let o = ort.predict_i8(x.view()).unwrap();
    // Each layer's codes move by at most one where the rules differ, which is rare; a moved
    // code deep in the network can move a logit by a few.
    let diffs: Vec<i32> = tflite
        .iter()
        .zip(o.iter())
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .collect();
    let max = diffs.iter().copied().max().unwrap();
    let equal = diffs.iter().filter(|&&d| d == 0).count() as f64 / diffs.len() as f64;
    assert!(
        max <= 4 && equal >= min_equal,
        "leaky {leaky}: max code difference {max}, {equal} equal"
    );
    assert!(
        equal < 1.0,
        "the rules should differ somewhere on 2,000 logits"
    );
    // Parameters are untouched, and the way back gives TFLite's codes exactly.
    assert_eq!(ort.layers(), q.layers());
    let back = ort.clone().with_rounding(Rounding::Tflite).unwrap();
    assert_eq!(back.predict_i8(x.view()).unwrap(), tflite);

    // The interpreter (batch 1, preallocated) agrees with batched prediction under the rule.
    let mut it = Interpreter::new(&ort).unwrap();
    for i in [0usize, 17, 199] {
        let row = x.index_axis(Axis(0), i).insert_axis(Axis(0));
        let one = it.invoke_i8(row.into_dyn()).unwrap().to_owned();
        assert_eq!(
            one.as_slice().unwrap(),
            o.index_axis(Axis(0), i).as_slice().unwrap()
        );
    }
}
