//! Pruning end to end on real MNIST: the small CNN trained one epoch on 6,000 images, pruned to
//! 80 % while fine-tuning one more epoch (TFMOT's polynomial schedule, compressed to the epoch),
//! stripped, stored sparse, reloaded, converted to int8 with pare-quant and stored with the
//! sparse int8 codec, whose entropy coder must find the kernel's spatial structure; dead conv
//! filters cut out must leave the logits as they were.
//!
//! Scored on the whole test set (10,000 images; inference is cheap next to training, and the
//! first 2,000 alone score about 3 points lower than the rest, too close to the bar). Measured
//! for seeds 0 / 1 / 2: 88.4 / 89.5 / 88.6 % after the first epoch; after the pruning epoch
//! 89.0 / 89.3 / 88.6 % (a second plain epoch instead: 90.4 / 91.7 / 91.0 %); int8 within 0.1
//! point of float. The bar, 85 %, is far above chance (10 %) and above any run whose masks or
//! gradients are broken, with margin for thread-count noise. About 2 s in release.
//!
//! Needs MNIST: `MNIST_DIR`, else `../shared/data/mnist` beside the workspace; ignored (saying
//! so) when the build found neither.

mod common;

use ndarray::Axis;
use pare::prune::file::{load_sparse_bytes, to_sparse_bytes};
use pare::prune::{
    EntropyCoded, GapCoded, PolynomialDecay, PruneCallback, PruningSchedule, SparseSequential,
    fold_constant_channels, kept_count, remove_dead_channels, sparsity_report,
};
use pare::quant::{ConvertConfig, QuantizedModel, convert};
use pare::tensor::models::small_cnn;
use pare::tensor::optim::{Adam, AdamConfig};
use pare::tensor::train::{Fit, FitConfig, argmax, evaluate, predict};

use pare::codecs::SparseCodec;

fn max_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()))
}

#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn small_cnn_pruned_to_80_percent_keeps_its_accuracy_through_int8() {
    let data = common::mnist();
    let train = data.train().take(6000);
    let test = data.test();
    let (x, y) = (train.images().view().into_dyn(), train.labels_usize());
    let (tx, ty) = (test.images().view().into_dyn(), test.labels_usize());
    let cfg = FitConfig {
        epochs: 1,
        batch_size: 32,
        seed: 0,
        verbose: false,
        ..Default::default()
    };
    let mut model = small_cnn(0);
    Fit::new(cfg.clone())
        .run(
            &mut model,
            &mut Adam::new(AdamConfig::default()).unwrap(),
            x.view(),
            &y,
        )
        .unwrap();
    let before = evaluate(&model, tx.view(), &ty, 256).unwrap().accuracy;

    // 188 steps; 50 % -> 80 % over steps 0..150, masks every 50 (the last update at end_step).
    let schedule = PolynomialDecay::new(0.5, 0.8, 0, 150, 3.0, 50).unwrap();
    let mut prune = PruneCallback::new(schedule);
    Fit::new(cfg)
        .callback(&mut prune)
        .run(
            &mut model,
            &mut Adam::new(AdamConfig::default()).unwrap(),
            x.view(),
            &y,
        )
        .unwrap();
    let steps: Vec<i64> = prune.updates().iter().map(|u| u.step).collect();
    assert_eq!(steps, vec![0, 50, 100, 150]);
    assert_eq!(prune.updates()[3].sparsity, schedule.sparsity(150));

    let pruned = prune.strip(&model).unwrap();
    for l in sparsity_report(&pruned) {
        if l.name.ends_with(".kernel") {
            // Exactly TFMOT's count; within one weight of 80 %.
            assert_eq!(
                l.total - l.zeros,
                kept_count(l.total, 0.8).unwrap(),
                "{l:?}"
            );
            assert!((l.sparsity - 0.8).abs() <= 1.0 / l.total as f32, "{l:?}");
        }
    }
    let after = evaluate(&pruned, tx.view(), &ty, 256).unwrap().accuracy;
    assert!(
        after > 0.85,
        "pruned accuracy {after} (before pruning {before})"
    );

    // Filters that lost every weight and whose bias the ReLU zeroes are dead: cut out with the
    // dense rows that read them, the logits stay the same.
    let (smaller, kept) = remove_dead_channels(&pruned).unwrap();
    let (a, b) = (
        predict(&pruned, tx.view(), 256).unwrap(),
        predict(&smaller, tx.view(), 256).unwrap(),
    );
    let diff = max_diff(&a, &b);
    assert!(
        diff < 1e-4,
        "dead channels {kept:?}: logits differ by {diff}"
    );

    // Folding the constant channels as well (a zero filter with a positive bias feeds the
    // dense layer a constant) keeps the logits too.
    let (folded, _) = fold_constant_channels(&pruned).unwrap();
    assert!(folded.num_params() <= smaller.num_params());
    assert!(max_diff(&predict(&folded, tx.view(), 256).unwrap(), &a) < 1e-4);

    // The sparse runtime, each layer on the kernel measured faster on a batch of 256 test
    // images: the same logits whichever it chose.
    let probe = tx.slice_axis(Axis(0), (0..256).into());
    let runtime = SparseSequential::measured(&pruned, 0.5, probe).unwrap();
    let report = runtime.report();
    eprintln!("sparse runtime: {}", report.to_json());
    let timed: Vec<&str> = report.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(timed, ["dense"]); // the conv's 9-weight patches always run dense
    assert!(max_diff(&runtime.predict(tx.view(), 256).unwrap(), &a) < 1e-4);

    // Sparse f32 file: exact round trip, about a quarter of the dense size.
    let bytes = to_sparse_bytes(&pruned, Default::default()).unwrap();
    assert!(bytes.len() < 20_410 * 4 / 3, "{} bytes", bytes.len());
    let mut back = small_cnn(1);
    load_sparse_bytes(&mut back, &bytes).unwrap();
    assert_eq!(back.params(), pruned.params());

    // int8 with the sparse codec.
    let calibration = x.slice_axis(Axis(0), (0..100).into());
    let q = convert(&pruned, calibration, &ConvertConfig::default()).unwrap();
    let file = q.to_bytes_with(&SparseCodec).unwrap();
    assert!(file.len() < q.to_bytes().unwrap().len() / 2);
    let q = QuantizedModel::from_bytes_with(&file, &SparseCodec).unwrap();
    let logits = q.predict(tx.view()).unwrap();
    let correct = logits
        .rows()
        .into_iter()
        .zip(&ty)
        .filter(|(r, l)| argmax(&r.to_vec()) == **l)
        .count();
    let int8 = correct as f32 / ty.len() as f32;
    assert!(int8 > 0.85, "int8 accuracy {int8} (float {after})");

    // The trained dense kernel is smooth across neighbouring pixels: the entropy coder finds
    // the stride of the neighbouring pixel (12 rows: its rows are 13 x 13 pixels x 12
    // channels) and beats the gap code. Measured for seeds 0 / 1 / 2: 4 948 / 4 893 / 4 858
    // bytes against 5 973 / 5 966 / 5 968 (83 / 82 / 81 %); the second stride found varies
    // (2, 156, 1) this early in training.
    let layer = q.layers().iter().find(|l| l.name == "dense").unwrap();
    let kernel = &layer.weights.as_ref().unwrap().kernel;
    let entropy = EntropyCoded::encode(kernel.view()).unwrap();
    let gaps = GapCoded::encode(kernel.view()).unwrap().encoded_len();
    assert!(entropy.strides().contains(&12), "{:?}", entropy.strides());
    assert!(
        entropy.encoded_len() * 100 < gaps * 90,
        "entropy-coded {} bytes, gaps {gaps}",
        entropy.encoded_len()
    );
    assert_eq!(
        EntropyCoded::decode_bytes(&entropy.to_bytes()).unwrap(),
        kernel
    );
    eprintln!(
        "accuracy before {before}, pruned {after}, int8 {int8}; int8 file {} bytes",
        file.len()
    );
}

/// The graph model's side of the same path: ResNet-8 (Adds over BatchNorm'd residual blocks)
/// trained one epoch on 2,000 MNIST images and pruned to 80 % in a second, stripped, its
/// BatchNorm statistics re-estimated, then cut (constant channels folded; half the filters
/// by L1 norm, Add groups together), run on the measured sparse runtime and stored sparse:
/// every step that should keep the logits keeps them.
#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn resnet8_pruned_cut_and_run_sparse_keeps_its_logits() {
    use pare::prune::{Norm, recalibrate_batch_norm, remove_channels, smallest_channels};
    use pare::tensor::models::resnet8;
    let data = common::mnist();
    let train = data.train().take(2000);
    let test = data.test().take(2000);
    let (x, y) = (train.images().view().into_dyn(), train.labels_usize());
    let (tx, ty) = (test.images().view().into_dyn(), test.labels_usize());
    let cfg = FitConfig {
        epochs: 1,
        batch_size: 32,
        seed: 0,
        verbose: false,
        ..Default::default()
    };
    let mut model = resnet8(0);
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    Fit::new(cfg.clone())
        .run(&mut model, &mut adam, x.view(), &y)
        .unwrap();
    let steps = 2000 / 32;
    let mut prune = PruneCallback::new(PolynomialDecay::new(0.5, 0.8, 0, steps, 3.0, 10).unwrap());
    Fit::new(cfg)
        .callback(&mut prune)
        .run(
            &mut model,
            &mut Adam::new(AdamConfig::default()).unwrap(),
            x.view(),
            &y,
        )
        .unwrap();
    let mut pruned = prune.strip(&model).unwrap();
    let stale = evaluate(&pruned, tx.view(), &ty, 256).unwrap().accuracy;
    assert_eq!(
        recalibrate_batch_norm(&mut pruned, x.view(), 64, 16).unwrap(),
        16
    );
    let acc = evaluate(&pruned, tx.view(), &ty, 256).unwrap().accuracy;
    eprintln!("resnet8 80 %: {stale:.4} before BN recalibration, {acc:.4} after");
    // Measured (seed 0): 11.7 % before, 70.3 % after; chance is 10 %.
    assert!(
        acc > 0.5 && acc > stale,
        "accuracy {stale} before, {acc} after"
    );
    let want = predict(&pruned, tx.view(), 256).unwrap();

    let (folded, _) = fold_constant_channels(&pruned).unwrap();
    assert!(max_diff(&predict(&folded, tx.view(), 256).unwrap(), &want) < 1e-4);
    let (dead, _) = remove_dead_channels(&pruned).unwrap();
    assert!(max_diff(&predict(&dead, tx.view(), 256).unwrap(), &want) < 1e-4);

    let runtime =
        SparseSequential::measured(&pruned, 0.5, tx.slice_axis(Axis(0), (0..64).into())).unwrap();
    assert!(!runtime.report().layers.is_empty());
    assert!(max_diff(&runtime.predict(tx.view(), 64).unwrap(), &want) < 1e-4);

    let bytes = to_sparse_bytes(&pruned, Default::default()).unwrap();
    let mut back = resnet8(1);
    load_sparse_bytes(&mut back, &bytes).unwrap();
    assert_eq!(predict(&back, tx.view(), 256).unwrap(), want);

    let plan = smallest_channels(&pruned, 0.5, Norm::L1).unwrap();
    let kept = |n: &str| plan.iter().find(|(l, _)| l == n).map(|(_, k)| k.clone());
    assert_eq!(
        kept("stem_conv"),
        kept("b1_conv2"),
        "an add's producers keep the same channels"
    );
    assert_eq!(kept("b3_conv2"), kept("b3_proj"));
    let thin = remove_channels(&pruned, &plan).unwrap();
    assert!(thin.num_params() < pruned.num_params());
    assert_eq!(
        predict(&thin, tx.view(), 256).unwrap().shape(),
        want.shape()
    );
}
