//! Models with BatchNorm: pruning leaves its parameters alone, sparse files keep its moving
//! statistics, and the sparse runtime runs it.

use ndarray::{ArrayD, IxDyn};
use pare_tensor::Padding;
use pare_tensor::nn::{BatchNorm, Conv2d, Dense, GlobalAveragePool2d, Layer, ReLU, Sequential};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::file::{load_sparse_bytes, to_sparse_bytes};
use crate::{SparseSequential, prunable_params};

fn bn_model(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bn = BatchNorm::new("bn", 8);
    bn.moving_mean
        .value
        .mapv_inplace(|_| rng.random_range(-0.5..0.5));
    bn.moving_variance
        .value
        .mapv_inplace(|_| rng.random_range(0.5..2.0));
    Sequential::new(&[6, 6, 1])
        .push(
            Conv2d::new("conv", 1, 8, [3, 3], &mut rng)
                .padding(Padding::Same)
                .use_bias(false),
        )
        .push(bn)
        .push(ReLU::new("relu"))
        .push(GlobalAveragePool2d::new("gap"))
        .push(Dense::new("dense", 8, 3, &mut rng))
}

#[test]
fn batch_norm_parameters_are_never_pruned() {
    assert_eq!(
        prunable_params(&bn_model(1)),
        ["conv.kernel", "dense.kernel"]
    );
}

#[test]
fn a_callback_refuses_batch_norm_parameters_and_leaves_them_alone() {
    let model = bn_model(5);
    for name in [
        "bn.gamma",
        "bn.beta",
        "bn.moving_mean",
        "bn.moving_variance",
    ] {
        let mut cb =
            crate::PruneCallback::new(crate::ConstantSparsity::new(0.5, 0, 10, 1).unwrap())
                .with_params([name]);
        assert!(
            matches!(cb.prepare(&model), Err(crate::PruneError::Unsupported { ref layer, .. }) if layer == "bn"),
            "{name}"
        );
    }
    // By default only the kernels are masked: after a mask update at 90 % the BatchNorm's
    // four vectors are as they were.
    let mut pruned = bn_model(5);
    let mut cb = crate::PruneCallback::new(crate::ConstantSparsity::new(0.9, 0, 10, 1).unwrap());
    cb.prepare(&pruned).unwrap();
    assert!(cb.update(0, &mut pruned).unwrap());
    assert_eq!(cb.pruned_params(), ["conv.kernel", "dense.kernel"]);
    assert!(crate::sparsity_of(pruned.param("conv.kernel").unwrap().value.view()) > 0.85);
    let Some(Layer::BatchNorm(before)) = model.layer("bn") else {
        panic!("bn layer")
    };
    let Some(Layer::BatchNorm(after)) = pruned.layer("bn") else {
        panic!("bn layer")
    };
    assert_eq!(after.gamma, before.gamma);
    assert_eq!(after.beta, before.beta);
    assert_eq!(after.moving_mean, before.moving_mean);
    assert_eq!(after.moving_variance, before.moving_variance);
}

#[test]
fn sparse_files_keep_the_moving_statistics() {
    let model = bn_model(2);
    let bytes = to_sparse_bytes(&model, Default::default()).unwrap();
    let mut other = bn_model(3);
    load_sparse_bytes(&mut other, &bytes).unwrap();
    assert_eq!(other.weights(), model.weights());
    let Some(Layer::BatchNorm(b)) = other.layer("bn") else {
        panic!("bn layer")
    };
    assert_ne!(b.moving_variance.value, ArrayD::<f32>::ones(IxDyn(&[8])));
}

#[test]
fn the_sparse_runtime_runs_a_model_with_batch_norm() {
    let mut model = bn_model(4);
    // Half the dense kernel zero, so that layer runs sparse.
    let k = &mut model.param_mut("dense.kernel").unwrap().value;
    k.iter_mut().step_by(2).for_each(|v| *v = 0.0);
    let x = ArrayD::from_elem(IxDyn(&[3, 6, 6, 1]), 0.5f32);
    let sparse = SparseSequential::new(&model, 0.4).unwrap();
    assert_eq!(sparse.sparse_layers(), ["dense"]);
    let want = pare_tensor::train::predict(&model, x.view(), 3).unwrap();
    let got = sparse.predict(x.view(), 3).unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}
