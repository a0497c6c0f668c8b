//! Training-step benches: one Adam step of each reference CNN at batch 32 (one graph, and for the
//! small CNN also through `fit`'s data-parallel shards), one `fit` step of the ResNet-8 at batch
//! 128 (issue 17's recipe; its line printed first gives images/s and the projected seconds per
//! 60,000-image epoch), the teacher's second convolution
//! forward + backward, and its three GEMMs (forward, kernel and input gradients).
//! Seeded inputs; throughput is reported by criterion (elements = FLOPs, so read GFLOP/s as
//! "Gelem/s").

use criterion::{Criterion, Throughput, criterion_group};
use ndarray::{Array2, ArrayD, IxDyn};
use pare::tensor::kernels::gemm::matmul;
use pare::tensor::models::{Reference, resnet8};
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

/// Steps per timed `fit` of the ResNet-8 bench: one epoch over `RESNET_POOL` batches of 128.
const RESNET_POOL: usize = 8;

/// Times `steps` ResNet-8 training steps at batch 128 through `fit` (gather, forward, backward,
/// Adam, BatchNorm moving statistics), as one epoch of `steps` batches.
fn resnet_fit(
    model: &mut pare::tensor::Model,
    adam: &mut Adam,
    x: &ArrayD<f32>,
    y: &[usize],
    steps: usize,
) -> Duration {
    let xs = x.slice_axis(ndarray::Axis(0), (0..steps * 128).into());
    let cfg = FitConfig {
        verbose: false,
        batch_size: 128,
        ..Default::default()
    };
    let t = Instant::now();
    let h = Fit::new(cfg)
        .run(model, adam, xs, &y[..steps * 128])
        .unwrap();
    let took = t.elapsed();
    black_box(h);
    took
}

fn resnet_inputs() -> (ArrayD<f32>, Vec<usize>) {
    let x = random(&[128 * RESNET_POOL, 28, 28, 1], 8).mapv(f32::abs);
    let y = (0..128 * RESNET_POOL).map(|i| (i * 7) % 10).collect();
    (x, y)
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat` (Linux; USER_HZ is
/// 100 in the kernel's ABI), or `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Median step time of a few `fit` epochs, printed as images/s and projected s/epoch: the
/// figure issue 17's target (seconds per training epoch) is stated in. CPU seconds per step are
/// printed too: on a shared machine they move less with the load than wall time does.
fn resnet_projection() {
    // Skipped when a criterion filter that names another bench is given.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| f.contains("resnet")) {
        return;
    }
    let (x, y) = resnet_inputs();
    let mut model = resnet8(0);
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    resnet_fit(&mut model, &mut adam, &x, &y, 2);
    let cpu0 = cpu_seconds();
    let mut per_step: Vec<f64> = (0..7)
        .map(|_| {
            resnet_fit(&mut model, &mut adam, &x, &y, RESNET_POOL).as_secs_f64()
                / RESNET_POOL as f64
        })
        .collect();
    let cpu = cpu_seconds()
        .zip(cpu0)
        .map(|(b, a)| {
            format!(
                ", {:.1} CPU ms/step",
                (b - a) * 1e3 / (7 * RESNET_POOL) as f64
            )
        })
        .unwrap_or_default();
    per_step.sort_by(f64::total_cmp);
    let step = per_step[per_step.len() / 2];
    println!(
        "resnet8_fit batch 128: {:.1} ms/step (min {:.1}{cpu}), {:.0} images/s, \
         projected {:.1} s per 60,000-image epoch",
        step * 1e3,
        per_step[0] * 1e3,
        128.0 / step,
        60_000.0 / 128.0 * step
    );
}

/// One ResNet-8 training step at batch 128 through `fit`; criterion's throughput is images/s.
fn resnet_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step_batch128");
    group.sample_size(10);
    let (x, y) = resnet_inputs();
    let mut model = resnet8(0);
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    group.throughput(Throughput::Elements(128));
    group.bench_function("resnet8_fit", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let steps = left.min(RESNET_POOL);
                total += resnet_fit(&mut model, &mut adam, &x, &y, steps);
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
    fit_steps,
    resnet_steps
);

fn main() {
    resnet_projection();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
