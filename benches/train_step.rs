//! Training-step benches: one Adam step of each reference CNN at batch 32 (one graph, and for the
//! small CNN also through `fit`'s data-parallel shards), the teacher's second convolution
//! forward + backward, and its three GEMMs (forward, kernel and input gradients).
//! Seeded inputs; throughput is reported by criterion (elements = FLOPs, so read GFLOP/s as
//! "Gelem/s").

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array2, ArrayD, IxDyn};
use pare::tensor::kernels::gemm::matmul;
use pare::tensor::models::Reference;
use pare::tensor::optim::{Adam, AdamConfig, Optimizer};
use pare::tensor::train::{Fit, FitConfig};
use pare::tensor::{Graph, Padding, Param};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(-1.0..1.0))
}

fn gemms(c: &mut Criterion) {
    let (m, k, n) = (1568usize, 2304usize, 512usize);
    let a = random(&[m, k], 1)
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let b = random(&[k, n], 2)
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let g = random(&[m, n], 3)
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let mut group = c.benchmark_group("gemm_teacher_layer2");
    group.throughput(Throughput::Elements((2 * m * k * n) as u64));
    group.sample_size(10);
    group.bench_function("forward_1568x2304x512", |bch| {
        bch.iter(|| black_box(matmul(a.view(), b.view())))
    });
    group.bench_function("kernel_grad_tn", |bch| {
        bch.iter(|| black_box(matmul(a.t(), g.view())))
    });
    group.bench_function("input_grad_nt", |bch| {
        bch.iter(|| black_box(matmul(g.view(), b.t())))
    });
    let naive: Array2<f32> = a.dot(&b);
    black_box(naive);
    group.bench_function("ndarray_dot_reference", |bch| {
        bch.iter(|| black_box(a.dot(&b)))
    });
    group.finish();
}

fn conv2d_teacher_layer2(c: &mut Criterion) {
    let x = random(&[32, 14, 14, 256], 4);
    let k = Param::new("k", random(&[3, 3, 256, 512], 5));
    let mut group = c.benchmark_group("conv2d_teacher_layer2");
    group.throughput(Throughput::Elements(3 * 2 * 1568 * 2304 * 512));
    group.sample_size(10);
    group.bench_function("forward_backward", |bch| {
        bch.iter(|| {
            let mut g = Graph::new();
            let xp = Param::new("x", x.clone());
            let xv = g.param(&xp);
            let kv = g.param(&k);
            let y = g.conv2d(xv, kv, [2, 2], Padding::Same);
            let s = g.sum(y);
            black_box(g.backward(s))
        })
    });
    group.finish();
}

fn train_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step_batch32");
    group.sample_size(10);
    let x = random(&[32, 28, 28, 1], 6).mapv(f32::abs);
    let labels: Vec<usize> = (0..32).map(|i| i % 10).collect();
    for kind in [Reference::Small, Reference::Student, Reference::Teacher] {
        let mut model = kind.build(0);
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        group.throughput(Throughput::Elements(32));
        group.bench_function(kind.name(), |bch| {
            bch.iter(|| {
                let mut g = Graph::new();
                let xv = g.constant(x.clone());
                let logits = model.forward(&mut g, xv);
                let loss = g.softmax_cross_entropy(logits, &labels);
                let grads = g.backward(loss);
                drop(g);
                adam.step(model.params_mut(), &grads);
            })
        });
    }
    group.finish();
}

/// The small CNN's step as `fit` runs it (batches split into one data-parallel shard per rayon
/// thread, gather, gradient averaging, Adam): the per-step median times 1,875 is about one MNIST
/// epoch. Each timed `fit` runs one epoch of at most `POOL` steps, so the per-step figure also
/// carries `fit`'s set-up and its check of the inputs (a few per cent).
fn fit_steps(c: &mut Criterion) {
    const POOL: usize = 200;
    let mut group = c.benchmark_group("train_step_batch32");
    group.sample_size(20);
    let x = random(&[32 * POOL, 28, 28, 1], 7).mapv(f32::abs);
    let y: Vec<usize> = (0..32 * POOL).map(|i| (i * 7) % 10).collect();
    let mut model = Reference::Small.build(0);
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    group.throughput(Throughput::Elements(32));
    group.bench_function("small_fit", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let steps = left.min(POOL);
                let xs = x.slice_axis(ndarray::Axis(0), (0..steps * 32).into());
                let cfg = FitConfig {
                    verbose: false,
                    ..Default::default()
                };
                let t = Instant::now();
                let h = Fit::new(cfg)
                    .run(&mut model, &mut adam, xs, &y[..steps * 32])
                    .unwrap();
                total += t.elapsed();
                black_box(h);
                left -= steps;
            }
            total
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    gemms,
    conv2d_teacher_layer2,
    train_steps,
    fit_steps
);
criterion_main!(benches);
