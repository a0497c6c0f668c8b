//! Distillation end to end on real MNIST: a small teacher, its logits cached once, a smaller
//! student distilled from them (Keras' alpha 0.1, T 10), scored alone on held-out images.
//!
//! Measured (seed 0, 2 threads): teacher_cnn(16, 32) after 8 epochs on 3,000 images 93.8 % on
//! the first 1,000 test images, the distilled teacher_cnn(8, 16) after 8 epochs 91.0 % with
//! alpha 0.1 and 91.0 % with alpha 0 (soft targets only); 2 epochs each gave 85.9 / 85.1 %. The bar, 85 %, is far above chance (10 %) and above any run
//! whose loss or gradient is broken, with a margin for thread-count noise. About 3 s in release.
//!
//! Needs MNIST: `MNIST_DIR`, else `../shared/data/mnist` beside the workspace; ignored (saying
//! so) when the build found neither.

mod common;

use pare::distill::{Distiller, KdConfig, TeacherCache};
use pare::quant::{ConvertConfig, Qat, QatConfig, convert};
use pare::tensor::models::{teacher_cnn, tiny_residual};
use pare::tensor::optim::{Adam, AdamConfig};
use pare::tensor::train::{Fit, FitConfig, evaluate};

const TEACHER_EPOCHS: usize = 8;
const STUDENT_EPOCHS: usize = 8;

#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn distilled_student_beats_chance_by_far_on_cached_teacher_logits() {
    let data = common::mnist();
    let train = data.train().take(3000);
    let test = data.test().take(1000);
    let (x, y) = (train.images().view().into_dyn(), train.labels_usize());
    let (tx, ty) = (test.images().view().into_dyn(), test.labels_usize());
    let cfg = |epochs| FitConfig {
        epochs,
        batch_size: 32,
        seed: 0,
        verbose: false,
        ..Default::default()
    };

    let mut teacher = teacher_cnn(16, 32, 0);
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    Fit::new(cfg(TEACHER_EPOCHS))
        .run(&mut teacher, &mut adam, x.view(), &y)
        .unwrap();
    let teacher_eval = evaluate(&teacher, tx.view(), &ty, 256).unwrap();

    let cache = TeacherCache::compute(&teacher, x.view(), 256).unwrap();
    // alpha 0.1 is Keras' setting; alpha 0 ignores the labels, so only the cached soft
    // targets (looked up by batch index) can teach the student.
    for alpha in [0.1, 0.0] {
        let kd = KdConfig {
            alpha,
            temperature: 10.0,
        };
        let mut distiller = Distiller::new(&teacher, kd)
            .unwrap()
            .with_cache(&cache)
            .unwrap();
        let mut student = teacher_cnn(8, 16, 1);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let h = Fit::new(cfg(STUDENT_EPOCHS))
            .objective(&mut distiller)
            .run(&mut student, &mut adam, x.view(), &y)
            .unwrap();
        let eval = distiller.evaluate(&student, tx.view(), &ty, 256).unwrap();
        eprintln!("alpha {alpha}: teacher {teacher_eval:?}, distilled student {eval:?}");
        assert!(h.epochs.last().unwrap().loss < h.epochs[0].loss, "{h:?}");
        assert!(
            eval.accuracy > 0.85,
            "alpha {alpha}: distilled student {eval:?} (teacher {teacher_eval:?})"
        );
    }
}

/// A graph student (tiny_residual: BatchNorm, a residual Add, global average pooling)
/// distilled from a chain teacher, then to int8 twice: post-training conversion (BatchNorm
/// folded) and a distilled QAT fine-tune through the graph's fake-quant nodes.
#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn a_graph_student_distils_and_converts_to_int8() {
    let data = common::mnist();
    let train = data.train().take(2000);
    let test = data.test().take(1000);
    let (x, y) = (train.images().view().into_dyn(), train.labels_usize());
    let (tx, ty) = (test.images().view().into_dyn(), test.labels_usize());
    let cfg = |epochs| FitConfig {
        epochs,
        batch_size: 32,
        seed: 0,
        verbose: false,
        ..Default::default()
    };
    let mut teacher = teacher_cnn(16, 32, 0);
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    Fit::new(cfg(3))
        .run(&mut teacher, &mut adam, x.view(), &y)
        .unwrap();
    let kd = KdConfig {
        alpha: 0.1,
        temperature: 10.0,
    };
    let mut distiller = Distiller::new(&teacher, kd).unwrap();
    let mut student = tiny_residual(10, 1);
    // Moving statistics a run of a few hundred steps can follow (Keras' 0.99 lags them).
    for l in &mut student.layers {
        if let pare::tensor::Layer::BatchNorm(bn) = l {
            bn.config.momentum = 0.9;
        }
    }
    let mut adam = Adam::new(AdamConfig {
        learning_rate: 3e-3,
        ..Default::default()
    })
    .unwrap();
    let h = Fit::new(cfg(3))
        .objective(&mut distiller)
        .run(&mut student, &mut adam, x.view(), &y)
        .unwrap();
    assert!(h.epochs.last().unwrap().loss < h.epochs[0].loss, "{h:?}");
    let float = evaluate(&student, tx.view(), &ty, 256).unwrap().accuracy;

    let calibration = x.slice(ndarray::s![..200, .., .., ..]).into_dyn();
    let q = convert(&student, calibration, &ConvertConfig::default()).unwrap();
    let ptq = q.evaluate(tx.view(), &ty, 256).unwrap().accuracy;

    let mut qat = Qat::attach(&mut student, QatConfig::default()).unwrap();
    Fit::new(cfg(1))
        .objective(&mut distiller)
        .callback(&mut qat)
        .run(&mut student, &mut adam, x.view(), &y)
        .unwrap();
    qat.detach(&mut student);
    let qat_acc = qat
        .convert(&student)
        .unwrap()
        .evaluate(tx.view(), &ty, 256)
        .unwrap()
        .accuracy;
    eprintln!(
        "graph student: float {float:.4}, int8 PTQ {ptq:.4}, int8 distilled QAT {qat_acc:.4}"
    );
    // Measured (seed 0): float 13.9 %, int8 PTQ 13.8 %, int8 after one distilled QAT epoch
    // 25.6 %. tiny_residual has 4 channels before its head, too few for MNIST in three short
    // epochs: the test is of the plumbing (loss falls, int8 follows the float model, QAT
    // through the graph's fake-quant keeps learning), not of the model.
    assert!((float - ptq).abs() < 0.02, "int8 {ptq} vs float {float}");
    assert!(
        qat_acc > 0.2,
        "distilled QAT int8 {qat_acc} (float {float})"
    );
}
