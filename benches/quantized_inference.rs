//! Inference of the small MNIST CNN: the integer-only int8 engine against the float model, at
//! batch 1 (latency) and batch 256 (throughput). Seeded random weights and inputs; the model is
//! calibrated on 100 random images. What matters is the ratio, not the accuracy.
//!
//! `cargo bench -p pare --bench quantized_inference -- --warm-up-time 1 --measurement-time 3`
//!
//! - `int8_small_cnn_batch1`: one int8 image through a reused `Interpreter` (no allocation);
//! - `int8_small_cnn_batch1_float_io`: the same with float input and dequantized logits;
//! - `f32_small_cnn_batch1`: `pare::tensor::train::predict` at batch 1;
//! - `int8_resnet8_batch1`: ResNet-8 (the `int8_latency` example's model) the same way, whose
//!   narrow 3×3 convs take the direct conv path on VNNI CPUs;
//! - `int8_small_cnn_batch256`: `QuantizedModel::predict_i8` (split over threads);
//! - `f32_small_cnn_batch256`: `predict` at batch 256.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{ArrayD, IxDyn};
use pare::quant::{ConvertConfig, Interpreter, QuantizedModel, convert};
use pare::tensor::Sequential;
use pare::tensor::models::{resnet8, small_cnn};
use pare::tensor::train::predict;
use rand::{Rng, SeedableRng, rngs::StdRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn images(n: usize, seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(IxDyn(&[n, 28, 28, 1]), || rng.random_range(0.0..1.0))
}

fn models() -> (Sequential, QuantizedModel) {
    let mut model = small_cnn(0);
    let mut rng = StdRng::seed_from_u64(1);
    for p in model.params_mut() {
        if p.name.ends_with(".bias") {
            p.value.mapv_inplace(|_| rng.random_range(-0.1..0.1));
        }
    }
    let q = convert(&model, images(100, 2).view(), &ConvertConfig::default())
        .expect("the small CNN converts");
    (model, q)
}

fn batch1(c: &mut Criterion) {
    let (model, q) = models();
    let x = images(1, 3);
    let codes = q.quantize_input(x.view()).expect("finite input");
    let mut interpreter = Interpreter::new(&q).expect("full-integer model");
    let mut group = c.benchmark_group("small_cnn_batch1");
    group.bench_function("int8_small_cnn_batch1", |b| {
        b.iter(|| black_box(interpreter.invoke_i8(codes.view()).expect("valid input")[[0, 0]]))
    });
    group.bench_function("int8_small_cnn_batch1_float_io", |b| {
        b.iter(|| black_box(interpreter.invoke(x.view()).expect("valid input")[[0, 0]]))
    });
    group.bench_function("f32_small_cnn_batch1", |b| {
        b.iter(|| black_box(predict(&model, x.view(), 1).expect("valid input")))
    });
    group.finish();
}

fn resnet8_batch1(c: &mut Criterion) {
    let q = convert(
        &resnet8(0),
        images(100, 5).view(),
        &ConvertConfig::default(),
    )
    .expect("ResNet-8 converts");
    let codes = q.quantize_input(images(1, 6).view()).expect("finite input");
    let mut interpreter = Interpreter::new(&q).expect("full-integer model");
    c.bench_function("int8_resnet8_batch1", |b| {
        b.iter(|| black_box(interpreter.invoke_i8(codes.view()).expect("valid input")[[0, 0]]))
    });
}

fn batch256(c: &mut Criterion) {
    let (model, q) = models();
    let x = images(256, 4);
    let codes = q.quantize_input(x.view()).expect("finite input");
    let mut group = c.benchmark_group("small_cnn_batch256");
    group.throughput(Throughput::Elements(256));
    group.sample_size(20);
    group.bench_function("int8_small_cnn_batch256", |b| {
        b.iter(|| black_box(q.predict_i8(codes.view()).expect("valid input")))
    });
    group.bench_function("f32_small_cnn_batch256", |b| {
        b.iter(|| black_box(predict(&model, x.view(), 256).expect("valid input")))
    });
    group.finish();
}

criterion_group!(benches, batch1, resnet8_batch1, batch256);
criterion_main!(benches);
