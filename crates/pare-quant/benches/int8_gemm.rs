//! int8 GEMM benches: a large product per kernel (throughput in GOP/s = 2·m·n·k / time) and the
//! layers of the small MNIST CNN at batch 1 (conv 3×3×1→12 as im2col + GEMM m=676 k=9 n=12,
//! max-pool 2×2, dense 2028→10), alone and chained.
//!
//! `cargo bench -p pare-quant --bench int8_gemm -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array2, Array4};
use pare_quant::kernels::{
    Kernel, PackedWeights, Padding, Requant, Window2d, gemm_i8_acc_with, gemm_i8_requant_with,
    im2col_i8_into, max_pool_i8_into,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, shape: (usize, usize)) -> Array2<i8> {
    Array2::from_shape_fn(shape, |_| rng.random())
}

fn requant(rng: &mut StdRng, n: usize, zo: i32, relu: bool) -> Requant {
    let (mult, shift): (Vec<i32>, Vec<i32>) = (0..n)
        .map(|_| pare_quant::quantize_multiplier(rng.random_range(1e-4..1e-2)).unwrap())
        .unzip();
    Requant::per_channel(mult, shift, zo, if relu { zo } else { -128 }, 127).unwrap()
}

fn int8_gemm_large(c: &mut Criterion) {
    let (m, n, k) = (1568, 2304, 512);
    let mut rng = StdRng::seed_from_u64(1);
    let a = random(&mut rng, (m, k));
    let b = PackedWeights::new(random(&mut rng, (k, n)).view());
    let bias: Vec<i32> = (0..n).map(|_| rng.random_range(-1000..1000)).collect();
    let rq = requant(&mut rng, n, -5, true);
    let mut acc = Array2::<i32>::zeros((m, n));
    let mut q = Array2::<i8>::zeros((m, n));
    let mut group = c.benchmark_group("int8_gemm_1568x2304x512");
    group.throughput(Throughput::Elements((2 * m * n * k) as u64));
    group.sample_size(10);
    for kernel in Kernel::available() {
        if kernel == Kernel::Portable {
            continue; // ~minutes per sample; the portable path is the reference, not a contender
        }
        group.bench_function(BenchmarkId::new("acc", format!("{kernel:?}")), |bch| {
            bch.iter(|| {
                gemm_i8_acc_with(kernel, a.view(), 3, &b, Some(&bias), acc.view_mut()).unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("requant", format!("{kernel:?}")), |bch| {
            bch.iter(|| {
                gemm_i8_requant_with(kernel, a.view(), 3, &b, Some(&bias), &rq, q.view_mut())
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn int8_small_cnn(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let image = Array4::from_shape_fn((1, 28, 28, 1), |_| rng.random::<i8>());
    let conv_w = PackedWeights::new(random(&mut rng, (9, 12)).view());
    let conv_bias: Vec<i32> = (0..12).map(|_| rng.random_range(-500..500)).collect();
    let conv_rq = requant(&mut rng, 12, -128, true);
    let dense_w = PackedWeights::new(random(&mut rng, (2028, 10)).view());
    let dense_bias: Vec<i32> = (0..10).map(|_| rng.random_range(-500..500)).collect();
    let dense_rq = requant(&mut rng, 10, 7, false);
    let conv = Window2d::new([3, 3], [1, 1], Padding::Valid);
    let pool = Window2d::new([2, 2], [2, 2], Padding::Valid);
    let mut cols = Array2::<i8>::zeros((676, 9));
    let mut conv_out = Array2::<i8>::zeros((676, 12));
    let mut pooled = Array4::<i8>::zeros((1, 13, 13, 12));
    let mut logits = Array2::<i8>::zeros((1, 10));
    let mut group = c.benchmark_group("int8_small_cnn");
    for kernel in Kernel::available() {
        let name = format!("{kernel:?}");
        group.bench_function(BenchmarkId::new("conv_gemm_676x12x9", &name), |bch| {
            bch.iter(|| {
                gemm_i8_requant_with(
                    kernel,
                    black_box(cols.view()),
                    -3,
                    &conv_w,
                    Some(&conv_bias),
                    &conv_rq,
                    conv_out.view_mut(),
                )
                .unwrap()
            })
        });
        let flat = Array2::from_shape_fn((1, 2028), |_| rng.random::<i8>());
        group.bench_function(BenchmarkId::new("dense_gemm_1x10x2028", &name), |bch| {
            bch.iter(|| {
                gemm_i8_requant_with(
                    kernel,
                    black_box(flat.view()),
                    -128,
                    &dense_w,
                    Some(&dense_bias),
                    &dense_rq,
                    logits.view_mut(),
                )
                .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("model_batch1", &name), |bch| {
            bch.iter(|| {
                im2col_i8_into(black_box(image.view()), &conv, -3, cols.view_mut()).unwrap();
                gemm_i8_requant_with(
                    kernel,
                    cols.view(),
                    -3,
                    &conv_w,
                    Some(&conv_bias),
                    &conv_rq,
                    conv_out.view_mut(),
                )
                .unwrap();
                let conv4 = conv_out
                    .view()
                    .into_shape_with_order((1, 26, 26, 12))
                    .unwrap();
                max_pool_i8_into(conv4, &pool, pooled.view_mut()).unwrap();
                let flat = pooled.view().into_shape_with_order((1, 2028)).unwrap();
                gemm_i8_requant_with(
                    kernel,
                    flat,
                    -128,
                    &dense_w,
                    Some(&dense_bias),
                    &dense_rq,
                    logits.view_mut(),
                )
                .unwrap();
                black_box(&logits);
            })
        });
    }
    group.bench_function("im2col_28x28x1_3x3", |bch| {
        bch.iter(|| im2col_i8_into(black_box(image.view()), &conv, -3, cols.view_mut()).unwrap())
    });
    let conv4 = Array4::from_shape_fn((1, 26, 26, 12), |_| rng.random::<i8>());
    group.bench_function("max_pool_26x26x12_2x2", |bch| {
        bch.iter(|| max_pool_i8_into(black_box(conv4.view()), &pool, pooled.view_mut()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, int8_gemm_large, int8_small_cnn);
criterion_main!(benches);
