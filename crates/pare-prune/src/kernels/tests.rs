use approx::abs_diff_eq;
use ndarray::{Array1, Array2, ArrayView2, array};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn random(rows: usize, cols: usize, zero_frac: f64, rng: &mut StdRng) -> Array2<f32> {
    Array2::from_shape_simple_fn((rows, cols), || {
        if rng.random_bool(zero_frac) {
            0.0
        } else {
            rng.random_range(-1.0f32..1.0)
        }
    })
}

/// Checks `y` against the f64 reference with a tolerance proportional to the magnitude of the
/// terms summed: `2e-5 · (|b_j| + Σ_i |x_bi · w_ij|) + 1e-6`. Only summation order differs
/// between kernels, and for the sizes here (in ≤ 1100) the f32 rounding error of any order stays
/// well below that (worst case in · 2⁻²⁴ ≈ 6.6e-5 relative, typically ~√in · 2⁻²⁴).
fn assert_close(
    y: &Array2<f32>,
    x: ArrayView2<'_, f32>,
    w: &Array2<f32>,
    b: &Array1<f32>,
    what: &str,
) {
    let want = dense_reference(x, w.view(), Some(b.view())).unwrap();
    assert_eq!(y.dim(), want.dim(), "{what}");
    for ((bi, j), &got) in y.indexed_iter() {
        let mag: f64 = f64::from(b[j].abs())
            + (0..w.nrows())
                .map(|i| f64::from((x[[bi, i]] * w[[i, j]]).abs()))
                .sum::<f64>();
        let tol = (2e-5 * mag + 1e-6) as f32;
        assert!(
            abs_diff_eq!(got, want[[bi, j]], epsilon = tol),
            "{what}: y[{bi}, {j}] = {got}, reference {}, tolerance {tol}",
            want[[bi, j]]
        );
    }
}

fn paths() -> Vec<KernelPath> {
    [KernelPath::Portable, KernelPath::Avx2Fma]
        .into_iter()
        .filter(|p| p.is_supported())
        .collect()
}

/// Shapes chosen to hit every branch: one and several K-blocks with a partial last block, input
/// counts off a multiple of 8 (transpose tail), batches that are all row-kernel (< 6), a partial
/// tile (6..16), full tiles, and full tiles plus a remainder of each kind; widths below and
/// across the 16-column panel.
const CASES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 3, 5),
    (63, 17, 6),
    (65, 16, 7),
    (8, 33, 16),
    (511, 10, 17),
    (512, 5, 21),
    (513, 7, 22),
    (1100, 12, 33),
    (1030, 65, 40),
    (9, 1, 0),
];

#[test]
fn sparse_dense_matches_reference_on_every_path() {
    let mut rng = StdRng::seed_from_u64(42);
    for &(inn, out, batch) in CASES {
        for zero_frac in [0.0, 0.5, 0.9, 1.0] {
            let w = random(inn, out, zero_frac, &mut rng);
            let b = Array1::from_shape_simple_fn(out, || rng.random_range(-1.0f32..1.0));
            let x = random(batch, inn, 0.2, &mut rng);
            let layer = SparseDense::from_dense(w.view(), Some(b.view())).unwrap();
            assert_eq!(layer.nnz(), w.iter().filter(|&&v| v != 0.0).count());
            for path in paths() {
                let y = layer.forward_with(x.view(), path).unwrap();
                assert_close(
                    &y,
                    x.view(),
                    &w,
                    &b,
                    &format!("sparse {path:?} [{inn}->{out}] batch {batch} zeros {zero_frac}"),
                );
            }
        }
    }
}

#[test]
fn dense_kernel_matches_reference_on_every_path() {
    let mut rng = StdRng::seed_from_u64(7);
    for &(inn, out, batch) in CASES.iter().chain(&[(0, 3, 2), (4, 0, 3)]) {
        let w = random(inn, out, 0.3, &mut rng);
        let b = Array1::from_shape_simple_fn(out, || rng.random_range(-1.0f32..1.0));
        let x = random(batch, inn, 0.0, &mut rng);
        let k = DenseKernel::from_dense(w.view(), Some(b.view())).unwrap();
        for path in paths() {
            let y = k.forward_with(x.view(), path).unwrap();
            assert_close(
                &y,
                x.view(),
                &w,
                &b,
                &format!("dense {path:?} [{inn}->{out}] batch {batch}"),
            );
        }
    }
}

#[test]
fn avx2_matches_portable() {
    if !KernelPath::Avx2Fma.is_supported() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(3);
    for &(inn, out, batch) in &[(2028, 10, 35), (700, 130, 19), (1, 64, 64), (63, 1, 1)] {
        let w = random(inn, out, 0.8, &mut rng);
        let b = Array1::from_shape_simple_fn(out, || rng.random_range(-1.0f32..1.0));
        let x = random(batch, inn, 0.0, &mut rng);
        let layer = SparseDense::from_dense(w.view(), Some(b.view())).unwrap();
        let dense = DenseKernel::from_dense(w.view(), Some(b.view())).unwrap();
        let sp = layer.forward_with(x.view(), KernelPath::Portable).unwrap();
        let sa = layer.forward_with(x.view(), KernelPath::Avx2Fma).unwrap();
        let dp = dense.forward_with(x.view(), KernelPath::Portable).unwrap();
        let da = dense.forward_with(x.view(), KernelPath::Avx2Fma).unwrap();
        // Portable and AVX2 agree with each other as closely as each agrees with the reference.
        for (name, a, p) in [("sparse", &sa, &sp), ("dense", &da, &dp)] {
            for ((i, j), &v) in a.indexed_iter() {
                let mag: f32 =
                    b[j].abs() + (0..inn).map(|t| (x[[i, t]] * w[[t, j]]).abs()).sum::<f32>();
                assert!(
                    abs_diff_eq!(v, p[[i, j]], epsilon = 4e-5 * mag + 1e-6),
                    "{name} [{inn}->{out}] ({i}, {j})"
                );
            }
        }
        assert_close(&sa, x.view(), &w, &b, "sparse avx2");
    }
}

#[test]
fn hand_worked_product_and_views() {
    // y = x · W + b worked by hand: [1, 2, 3] · [[0, 2], [1, 0], [0, 0]] = [2, 2], plus [0.5, -0.5].
    let w = array![[0.0f32, 2.0], [1.0, 0.0], [0.0, -0.0]];
    let b = array![0.5f32, -0.5];
    let layer = SparseDense::from_dense(w.view(), Some(b.view())).unwrap();
    assert_eq!(layer.nnz(), 2); // -0.0 is dropped too
    assert_eq!((layer.in_features(), layer.out_features()), (3, 2));
    approx::assert_abs_diff_eq!(layer.density(), 2.0 / 6.0);
    assert_eq!(layer.bias(), &[0.5, -0.5]);
    assert_eq!(
        layer.to_dense(),
        array![[0.0f32, 2.0], [1.0, 0.0], [0.0, 0.0]]
    );
    let x = array![[1.0f32, 2.0, 3.0], [0.0, 0.0, 1.0]];
    for path in paths() {
        assert_eq!(
            layer.forward_with(x.view(), path).unwrap(),
            array![[2.5f32, 1.5], [0.5, -0.5]]
        );
    }
    // A non-contiguous input (a transposed view) gives the same result.
    let xt = x.t().to_owned();
    assert_eq!(
        layer.forward(xt.t()).unwrap(),
        layer.forward(x.view()).unwrap()
    );
    // No bias means zero bias.
    let nb = SparseDense::from_dense(w.view(), None).unwrap();
    assert_eq!(
        nb.forward(x.view()).unwrap(),
        array![[2.0f32, 2.0], [0.0, 0.0]]
    );
    let d = DenseKernel::from_dense(w.view(), None).unwrap();
    assert_eq!(
        d.forward(x.view()).unwrap(),
        array![[2.0f32, 2.0], [0.0, 0.0]]
    );
    assert_eq!((d.in_features(), d.out_features()), (3, 2));
}

#[test]
fn to_dense_round_trips_across_blocks() {
    let mut rng = StdRng::seed_from_u64(11);
    let w = random(BLOCK_ROWS * 2 + 3, 9, 0.7, &mut rng);
    assert_eq!(
        SparseDense::from_dense(w.view(), None).unwrap().to_dense(),
        w
    );
}

#[test]
fn errors() {
    let w = Array2::<f32>::ones((4, 3));
    let layer = SparseDense::from_dense(w.view(), None).unwrap();
    let bad_x = Array2::<f32>::ones((2, 5));
    assert!(matches!(
        layer.forward(bad_x.view()),
        Err(PruneError::ShapeMismatch { .. })
    ));
    let dense = DenseKernel::from_dense(w.view(), None).unwrap();
    assert!(matches!(
        dense.forward(bad_x.view()),
        Err(PruneError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        dense_reference(bad_x.view(), w.view(), None),
        Err(PruneError::ShapeMismatch { .. })
    ));
    let bad_b = Array1::<f32>::ones(4);
    assert!(matches!(
        SparseDense::from_dense(w.view(), Some(bad_b.view())),
        Err(PruneError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        DenseKernel::from_dense(w.view(), Some(bad_b.view())),
        Err(PruneError::ShapeMismatch { .. })
    ));
    let mut nan = w.clone();
    nan[[2, 1]] = f32::NAN;
    assert!(matches!(
        SparseDense::from_dense(nan.view(), None),
        Err(PruneError::NonFinite { index: 7, .. })
    ));
    let inf_b = Array1::from(vec![0.0f32, f32::INFINITY, 0.0]);
    assert!(matches!(
        DenseKernel::from_dense(w.view(), Some(inf_b.view())),
        Err(PruneError::NonFinite { index: 1, .. })
    ));
    assert!(KernelPath::Portable.is_supported());
    assert!(KernelPath::best().is_supported());
}
