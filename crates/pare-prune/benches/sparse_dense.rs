//! Pruned dense layers: the sparse kernel against dense baselines, single-threaded.
//!
//! Layers: the small MNIST CNN's classifier (`[2028 -> 10]`), a square hidden layer
//! (`[1024 -> 1024]`) and a VGG-style head (`[25088 -> 10]`), at batch 1 and 32 (and 256 for the
//! classifier, as test-set inference runs it, and for the square layer). Weights are seeded Glorot-uniform, pruned by magnitude to 50/80/90/95 % with
//! `magnitude_mask`; inputs are seeded uniform [0, 1) with no zeros, since the kernels do not
//! skip zero activations.
//!
//! * `dense`: `DenseKernel`, the packed 4×16 AVX2 baseline;
//! * `gemm_crate`: the `gemm` crate (AVX-512 with `x86-v4`, no bias), what pare-tensor uses;
//! * `sparse/NN%`: `SparseDense` at NN % sparsity on `KernelPath::best()` (on AVX-512: window
//!   groups for the two 10-output layers, 16-lane tiles and AVX2 gathers for the square one).
//!
//! The bar is the sparse kernel at 80 % against the faster of `dense` and `gemm_crate`.
//!
//! Run: `cargo bench -p pare-prune --bench sparse_dense -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ndarray::{Array1, Array2};
use pare_prune::kernels::{DenseKernel, SparseDense, dense_reference};
use pare_prune::magnitude_mask;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LAYERS: &[(&str, usize, usize, &[usize])] = &[
    ("mnist_cnn_dense_2028x10", 2028, 10, &[1, 32, 256]),
    ("fc_1024x1024", 1024, 1024, &[1, 32, 256]),
    ("vgg_head_25088x10", 25088, 10, &[1, 32]),
];

const SPARSITIES: &[f32] = &[0.5, 0.8, 0.9, 0.95];

fn gemm_product(x: &Array2<f32>, w: &Array2<f32>, y: &mut Array2<f32>) {
    let (m, k) = x.dim();
    let n = w.ncols();
    assert!(x.is_standard_layout() && w.is_standard_layout() && y.is_standard_layout());
    assert_eq!((w.nrows(), y.dim()), (k, (m, n)));
    // SAFETY: all three arrays are row-major and contiguous with the dimensions asserted above,
    // so every element the strides address is in bounds; `y` is not aliased.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2028);
    for &(name, inn, out, batches) in LAYERS {
        let limit = (6.0 / (inn + out) as f32).sqrt();
        let w = Array2::from_shape_simple_fn((inn, out), || rng.random_range(-limit..limit));
        let b = Array1::from_shape_simple_fn(out, || rng.random_range(-0.1f32..0.1));
        let dense = DenseKernel::from_dense(w.view(), Some(b.view())).expect("finite weights");
        let pruned: Vec<(f32, Array2<f32>, SparseDense)> = SPARSITIES
            .iter()
            .map(|&s| {
                let mask = magnitude_mask(w.view().into_dyn(), s).expect("valid sparsity");
                let wp = &w * &mask.into_dimensionality::<ndarray::Ix2>().expect("rank 2");
                let layer = SparseDense::from_dense(wp.view(), Some(b.view())).expect("finite");
                (s, wp, layer)
            })
            .collect();
        for &batch in batches {
            let x = Array2::from_shape_simple_fn((batch, inn), || rng.random_range(0.0f32..1.0));
            // Sanity: the kernels being timed compute the right thing.
            let (_, wp, layer) = &pruned[1];
            let want = dense_reference(x.view(), wp.view(), Some(b.view())).expect("shapes");
            let got = layer.forward(x.view()).expect("shapes");
            let err = (&got - &want).iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                err < 1e-3,
                "{name} batch {batch}: sparse kernel off by {err}"
            );

            let mut group = c.benchmark_group(format!("sparse_dense/{name}/b{batch}"));
            group.bench_function("dense", |bch| {
                bch.iter(|| dense.forward(black_box(x.view())).expect("shapes"))
            });
            let mut y = Array2::<f32>::zeros((batch, out));
            group.bench_function("gemm_crate", |bch| {
                bch.iter(|| gemm_product(black_box(&x), black_box(&w), &mut y))
            });
            for (s, _, layer) in &pruned {
                let id = BenchmarkId::new("sparse", format!("{:.0}%", s * 100.0));
                group.bench_function(id, |bch| {
                    bch.iter(|| layer.forward(black_box(x.view())).expect("shapes"))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
