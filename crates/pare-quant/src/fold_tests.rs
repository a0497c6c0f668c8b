//! BatchNorm folding in the converter: a float model with BatchNorm converts to exactly the
//! int8 model of its folded form, as TFLite's converter folds before it quantizes.

use ndarray::{ArrayD, IxDyn};
use pare_tensor::nn::{BatchNorm, Conv2d, Dense, Flatten, MaxPool2d, Param, ReLU, Sequential};
use pare_tensor::{Padding, fold_batch_norm};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{ConvertConfig, QuantError, convert};

fn bn(name: &str, c: usize, rng: &mut StdRng) -> BatchNorm {
    let mut bn = BatchNorm::new(name, c);
    let mut fill = |p: &mut Param, lo: f32, hi: f32| {
        p.value.mapv_inplace(|_| rng.random_range(lo..hi));
    };
    fill(&mut bn.gamma, 0.5, 2.0);
    fill(&mut bn.beta, -0.5, 0.5);
    fill(&mut bn.moving_mean, -0.2, 0.2);
    fill(&mut bn.moving_variance, 0.2, 2.0);
    bn
}

/// conv (no bias) → BN → ReLU → max-pool → flatten → dense → BN, on 10×10×2 inputs.
fn conv_bn(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new(&[10, 10, 2])
        .push(
            Conv2d::new("conv", 2, 6, [3, 3], &mut rng)
                .padding(Padding::Same)
                .use_bias(false),
        )
        .push(bn("bn1", 6, &mut rng))
        .push(ReLU::new("relu"))
        .push(MaxPool2d::new("pool", 2))
        .push(Flatten::new("flat"))
        .push(Dense::new("dense", 150, 4, &mut rng))
        .push(bn("bn2", 4, &mut rng))
}

#[test]
fn converting_conv_bn_gives_the_int8_model_of_the_folded_float_model() {
    let model = conv_bn(1);
    let mut rng = StdRng::seed_from_u64(2);
    let calib =
        ArrayD::from_shape_simple_fn(IxDyn(&[20, 10, 10, 2]), || rng.random_range(0.0..1.0));
    let cfg = ConvertConfig::default();
    let q = convert(&model, calib.view(), &cfg).unwrap();
    let folded = fold_batch_norm(&model).unwrap();
    let want = convert(&folded, calib.view(), &cfg).unwrap();
    assert_eq!(q.layers(), want.layers());
    assert_eq!(q.input_quant(), want.input_quant());
    assert_eq!(q.to_bytes().unwrap(), want.to_bytes().unwrap());
    // The int8 model tracks the float one with BatchNorm in inference mode.
    let float = pare_tensor::train::predict(&model, calib.view(), 20).unwrap();
    let int8 = q.predict(calib.view()).unwrap();
    let range = float.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = float
        .iter()
        .zip(&int8)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst < 0.05 * range,
        "int8 differs by {worst} on outputs up to {range}"
    );
}

#[test]
fn a_batch_norm_that_cannot_fold_is_a_typed_error() {
    let mut rng = StdRng::seed_from_u64(3);
    let model = Sequential::new(&[4, 4, 1])
        .push(bn("bn0", 1, &mut rng))
        .push(Flatten::new("flat"))
        .push(Dense::new("dense", 16, 2, &mut rng));
    let calib = ArrayD::from_elem(IxDyn(&[2, 4, 4, 1]), 0.5f32);
    match convert(&model, calib.view(), &ConvertConfig::default()) {
        Err(QuantError::UnsupportedLayer { layer, .. }) => assert_eq!(layer, "bn0"),
        other => panic!("expected UnsupportedLayer, got {other:?}"),
    }
}
