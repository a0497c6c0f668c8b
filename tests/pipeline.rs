//! The compression pipeline on real MNIST: quantization-aware training against post-training
//! int4, the int4 file through pare-prune's sparse codec against the engine and the
//! simulation, and the whole pipeline (distil, prune, cut, QAT int4, one file) at a small size.
//!
//! Needs MNIST: `MNIST_DIR`, else `../shared/data/mnist` beside the workspace; ignored (saying
//! so) when the build found neither.

mod common;

use ndarray::Axis;
use pare::codecs::SparseCodec;
use pare::measure::{accuracy, agreement};
use pare::pipeline::{Pipeline, PipelineConfig, PipelineData, QatFineTune, Teacher, train_teacher};
use pare::quant::{ConvertConfig, QuantizedModel, WeightBits, convert};
use pare::tensor::models::teacher_cnn;

/// A model with an outlier channel: the one-epoch small CNN with its first conv filter scaled
/// up 8× and the dense weights reading that channel scaled down 8× (the same function: ReLU
/// and max-pooling commute with a positive scale). Per-tensor int4 weights (one scale per
/// kernel, 15 levels) then lose the other filters and those dense rows post-training; one
/// epoch of QAT at the same width learns weights that survive the grid.
///
/// Measured (seed 0, 6,000 training images, first 2,000 test images, k = 32): float 85.35 %,
/// int4 per-tensor PTQ 8.75 % (chance), int4 QAT 57.20 %. About 3 s in release.
#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn qat_recovers_what_int4_post_training_quantization_loses() {
    let data = common::mnist();
    let (train, mut model, _) = common::small_cnn_one_epoch(&data);
    let before =
        pare::tensor::train::predict(&model, train.images().view().into_dyn(), 256).unwrap();
    outlier_channel(&mut model, 32.0);
    let (x, y) = (train.images().view().into_dyn(), train.labels_usize());
    let test = data.test().take(2000);
    let (tx, ty) = (test.images().view().into_dyn(), test.labels_usize());
    let after = pare::tensor::train::predict(&model, x.view(), 256).unwrap();
    let moved = (&before - &after).iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        moved < 1e-3,
        "the rescaled model computes the same logits (moved {moved})"
    );
    let float = pare::tensor::train::evaluate(&model, tx.view(), &ty, 256)
        .unwrap()
        .accuracy;

    let calibration = x.slice_axis(Axis(0), (0..100).into());
    let cfg = ConvertConfig {
        weight_bits: WeightBits::Int4,
        per_channel: false,
        ..Default::default()
    };
    let ptq = convert(&model, calibration.view(), &cfg).unwrap();
    let ptq_acc = accuracy(ptq.predict(tx.view()).unwrap().view(), &ty);

    let tune = QatFineTune {
        epochs: 1,
        batch_size: 32,
        learning_rate: 1e-4,
        bits: WeightBits::Int4,
        per_channel: false,
        seed: 0,
        verbose: false,
    };
    let out = tune.run(&model, None, (x.view(), &y)).unwrap();
    let q = out.quantized;
    let logits = q.predict(tx.view()).unwrap();
    let qat_acc = accuracy(logits.view(), &ty);
    eprintln!("float {float:.4}, int4 per-tensor PTQ {ptq_acc:.4}, QAT {qat_acc:.4}");
    assert!(ptq_acc < float - 0.05, "PTQ int4 should lose accuracy here");
    assert!(
        qat_acc - ptq_acc > (float - ptq_acc) / 2.0,
        "QAT should win back at least half: float {float}, PTQ {ptq_acc}, QAT {qat_acc}"
    );

    // The int4 file (kernels sparse-coded or packed two per byte) reloads to the same
    // integer model, and the engine computes what the fake-quant simulation does.
    let bytes = q.to_bytes_with(&SparseCodec).unwrap();
    let back = QuantizedModel::from_bytes_with(&bytes, &SparseCodec).unwrap();
    let codes = q.quantize_input(tx.view()).unwrap();
    assert_eq!(
        back.predict_i8(codes.view()).unwrap(),
        q.predict_i8(codes.view()).unwrap()
    );
    assert!(
        back.layers()
            .iter()
            .filter_map(|l| l.weights.as_ref())
            .all(|w| w.bits == WeightBits::Int4)
    );
    let simulated = q.simulate(&out.model, tx.view()).unwrap();
    assert!(agreement(logits.view(), simulated.view()) > 0.99);
}

/// Scales output channel 0 of the small CNN's conv layer by `k` and the dense weights that read
/// it by `1 / k`.
fn outlier_channel(model: &mut pare::tensor::Sequential, k: f32) {
    let filters = 12;
    let conv = model.param_mut("conv2d.kernel").unwrap();
    conv.value
        .slice_axis_mut(Axis(3), (0..1).into())
        .mapv_inplace(|w| w * k);
    model.param_mut("conv2d.bias").unwrap().value[[0]] *= k;
    let dense = model.param_mut("dense.kernel").unwrap();
    for (row, mut w) in dense.value.axis_iter_mut(Axis(0)).enumerate() {
        if row % filters == 0 {
            w.mapv_inplace(|w| w / k);
        }
    }
}

/// The whole pipeline at a small size: a small teacher, the student distilled from it, pruned
/// to 80 %, int4 after one QAT epoch, one file that reloads.
///
/// Measured (seed 0, 2,700 training / 300 validation images, first 2,000 test images): teacher
/// teacher_cnn(32, 64) 83.50 %, student 82.85 %, pruned 78.70 %, int4 QAT 80.55 %, 18.1× smaller
/// than the student's f32 file after gzip. About 4 s in release.
#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn pipeline_distils_prunes_and_quantizes_into_one_small_file() {
    let mnist = common::mnist();
    let train = mnist.train().take(3000);
    let test = mnist.test().take(2000);
    let (x, y) = (train.images().view().into_dyn(), train.labels_usize());
    let (tx, ty) = (test.images().view().into_dyn(), test.labels_usize());
    let data = PipelineData::split(x.view(), &y, 0.1, (tx.view(), &ty)).unwrap();
    let teacher_model = train_teacher(teacher_cnn(32, 64, 0), 2, 0, &data, false).unwrap();
    let teacher = Teacher::new(&teacher_model, &data).unwrap();
    let config = PipelineConfig {
        student_epochs: 2,
        sparsity: 0.8,
        prune_epochs: 2,
        prune_frequency: 5,
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("pare-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("student-int4.safetensors");
    let report = Pipeline::new(config)
        .unwrap()
        .run(Some(&teacher), &data, &path)
        .unwrap();
    let back = QuantizedModel::load_with(&path, &SparseCodec).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let names: Vec<&str> = report.stages.iter().map(|s| s.name.as_str()).collect();
    eprintln!("{:#}", report.to_json());
    assert_eq!(
        names,
        [
            "teacher (f32)",
            "student (f32)",
            "pruned 80 % (f32, sparse)",
            "int4 QAT"
        ]
    );
    let [_, student, pruned, q] = &report.stages[..] else {
        unreachable!()
    };
    assert!(student.test_accuracy > 0.75, "{student:?}");
    assert!(q.test_accuracy > student.test_accuracy - 0.05, "{q:?}");
    // 80 % of the weights gone and 4 bits for the rest: well past 10x after gzip.
    assert!(report.ratio() > 10.0, "{}", report.ratio());
    assert!(pruned.nonzero * 4 < student.nonzero, "{pruned:?}");
    assert_eq!(
        back.to_bytes_with(&SparseCodec).unwrap().len(),
        q.size.bytes
    );
    let logits = back.predict(tx.view()).unwrap();
    assert_eq!(accuracy(logits.view(), &ty), q.test_accuracy);
}
