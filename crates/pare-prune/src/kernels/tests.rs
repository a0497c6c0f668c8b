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
    KernelPath::ALL
        .into_iter()
        .filter(|p| p.is_supported())
        .collect()
}

/// Shapes chosen to hit every branch: one and several blocks of 128 inputs and transposed spans
/// of 128/256/512 with a partial last one, input counts off a multiple of 8 (transpose tail) and
/// of the 32-input window (partial last window, one half empty or not), batches that are all
/// row kernel (< 4), a padded partial tile, passes of 1, 2 and 4 tiles and each with a remainder
/// of either kind, group blocks of 8, 4 and 1 rows; widths 1..=16 (window groups, with one to
/// sixteen lanes per column) and wider (tiles), below and across 8 (output transpose tail) and
/// the 16-column panel, and a zero-width layer.
const CASES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 3, 3),
    (63, 17, 4),
    (65, 16, 7),
    (8, 33, 16),
    (127, 9, 17),
    (128, 8, 31),
    (129, 7, 32),
    (255, 10, 35),
    (257, 3, 48),
    (511, 10, 63),
    (512, 5, 64),
    (513, 7, 65),
    (1100, 12, 100),
    (1030, 65, 40),
    (17, 10, 13),
    (31, 2, 9),
    (48, 16, 12),
    (96, 4, 5),
    (9, 1, 0),
    (5, 0, 20),
    (0, 3, 2),
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
fn simd_paths_match_portable() {
    let mut rng = StdRng::seed_from_u64(3);
    let cases = [
        (2028, 10, 1),
        (2028, 10, 35),
        (2028, 10, 130),
        (700, 130, 19),
        (1, 64, 64),
        (63, 1, 1),
    ];
    for (inn, out, batch) in cases {
        let w = random(inn, out, 0.8, &mut rng);
        let b = Array1::from_shape_simple_fn(out, || rng.random_range(-1.0f32..1.0));
        let x = random(batch, inn, 0.0, &mut rng);
        let layer = SparseDense::from_dense(w.view(), Some(b.view())).unwrap();
        let dense = DenseKernel::from_dense(w.view(), Some(b.view())).unwrap();
        let sp = layer.forward_with(x.view(), KernelPath::Portable).unwrap();
        let dp = dense.forward_with(x.view(), KernelPath::Portable).unwrap();
        for path in paths().into_iter().skip(1) {
            let sa = layer.forward_with(x.view(), path).unwrap();
            let da = dense.forward_with(x.view(), path).unwrap();
            // A SIMD path and the portable one agree as closely as each agrees with the
            // reference: twice the reference tolerance.
            for (name, a, p) in [("sparse", &sa, &sp), ("dense", &da, &dp)] {
                for ((i, j), &v) in a.indexed_iter() {
                    let mag: f32 =
                        b[j].abs() + (0..inn).map(|t| (x[[i, t]] * w[[t, j]]).abs()).sum::<f32>();
                    assert!(
                        abs_diff_eq!(v, p[[i, j]], epsilon = 4e-5 * mag + 1e-6),
                        "{name} {path:?} [{inn}->{out}] batch {batch} ({i}, {j})"
                    );
                }
            }
            assert_close(&sa, x.view(), &w, &b, &format!("sparse {path:?}"));
        }
    }
}

#[test]
fn all_zero_rows_and_columns() {
    // Whole input rows and output columns pruned away, and the rest dense: empty runs in the
    // middle of a column and of a transposed span must be skipped without disturbing the rest.
    let (inn, out) = (700, 21);
    let mut rng = StdRng::seed_from_u64(5);
    let mut w = random(inn, out, 0.0, &mut rng);
    for i in (0..inn).filter(|i| i % 3 == 0 || (130..400).contains(i)) {
        w.row_mut(i).fill(0.0);
    }
    for j in [0, 7, 8, 20] {
        w.column_mut(j).fill(0.0);
    }
    let b = Array1::from_shape_simple_fn(out, || rng.random_range(-1.0f32..1.0));
    let layer = SparseDense::from_dense(w.view(), Some(b.view())).unwrap();
    for batch in [1, 3, 9, 16, 50, 64] {
        let x = random(batch, inn, 0.1, &mut rng);
        for path in paths() {
            let y = layer.forward_with(x.view(), path).unwrap();
            assert_close(&y, x.view(), &w, &b, &format!("{path:?} batch {batch}"));
            for j in [0, 7, 8, 20] {
                // An empty column gives exactly its bias.
                assert!(
                    y.column(j).iter().all(|&v| v == b[j]),
                    "{path:?} column {j}"
                );
            }
        }
    }
}

#[test]
fn non_finite_inputs_meet_only_stored_weights() {
    // Inputs 0 and 3 have weights only in output 1: infinite x[.., 0] and x[.., 3] must leave
    // output 0 finite on every path and batch split, so no kernel multiplies a pruned (zero)
    // weight. Input 0 is where the window groups' empty lanes point.
    let mut w = Array2::<f32>::zeros((40, 2));
    for i in 0..40 {
        w[[i, 0]] = if i == 0 || i == 3 { 0.0 } else { 0.5 };
        w[[i, 1]] = 1.0;
    }
    let layer = SparseDense::from_dense(w.view(), None).unwrap();
    for batch in [1, 3, 5, 16, 32, 64] {
        let mut x = Array2::<f32>::ones((batch, 40));
        x.column_mut(0).fill(f32::INFINITY);
        x.column_mut(3).fill(f32::INFINITY);
        for path in paths() {
            let y = layer.forward_with(x.view(), path).unwrap();
            for r in 0..batch {
                assert_eq!(y[[r, 0]], 19.0, "{path:?} batch {batch} row {r}");
                assert_eq!(y[[r, 1]], f32::INFINITY, "{path:?} batch {batch} row {r}");
            }
        }
    }
}

#[test]
fn window_groups_hold_every_nonzero_once() {
    let mut rng = StdRng::seed_from_u64(9);
    // A column far denser than the rest gets the spare lanes; out = 1 gives one column all of
    // them.
    for (inn, out) in [(100, 1), (77, 3), (2028, 10), (64, 16), (33, 7), (9, 12)] {
        let mut w = random(inn, out, 0.8, &mut rng);
        w.column_mut(out - 1)
            .mapv_inplace(|v| if v == 0.0 { 0.25 } else { v });
        let layer = SparseDense::from_dense(w.view(), None).unwrap();
        let g = layer
            .groups
            .as_ref()
            .expect("narrow layers get window groups");
        // lanes[s][j]: lanes of column j in map s; 32 lanes round-robin, densest column first.
        let mut lanes = [vec![0usize; out], vec![0usize; out]];
        for (s, cols) in g.lane_col.iter().enumerate() {
            for &c in cols {
                lanes[s][usize::from(c)] += 1;
            }
        }
        let one_map = g.lane_col[0] == g.lane_col[1];
        let spread = if one_map { LANES } else { 2 * LANES };
        let total = |j: usize| (lanes[0][j] + lanes[1][j]) * spread / (2 * LANES);
        assert!(
            (0..out).all(|j| total(j) >= spread / out && total(j) <= spread.div_ceil(out)),
            "[{inn}->{out}] lanes {lanes:?}"
        );
        assert_eq!(
            total(out - 1),
            spread.div_ceil(out),
            "[{inn}->{out}] densest column"
        );
        let mut back = Array2::<f32>::zeros((inn, out));
        for win in 0..inn.div_ceil(WINDOW) {
            let (lo, hi) = (g.ptr[win], g.ptr[win + 1]);
            // The fewest groups whose lanes (⌈n/2⌉ in map A, ⌊n/2⌋ in map B) hold every column.
            let counts: Vec<usize> = (0..out)
                .map(|j| {
                    (win * WINDOW..((win + 1) * WINDOW).min(inn))
                        .filter(|&i| w[[i, j]] != 0.0)
                        .count()
                })
                .collect();
            let fits = |n: usize| {
                (0..out).all(|j| n.div_ceil(2) * lanes[0][j] + n / 2 * lanes[1][j] >= counts[j])
            };
            assert!(fits(hi - lo), "[{inn}->{out}] window {win}: too few groups");
            assert!(
                hi == lo || !fits(hi - lo - 1),
                "[{inn}->{out}] window {win}: more groups than needed"
            );
            for k in lo..hi {
                let cols = &g.lane_col[(k - lo) % 2];
                let lanes = cols.iter().zip(&g.idx[k].0).zip(&g.w[k].0);
                for (l, ((&col, &i), &v)) in lanes.enumerate() {
                    if g.mask[k] >> l & 1 == 1 {
                        let (i, j) = (win * WINDOW + usize::from(i), usize::from(col));
                        assert_eq!(back[[i, j]], 0.0, "[{inn}->{out}] ({i}, {j}) twice");
                        back[[i, j]] = v;
                    } else {
                        assert_eq!(v, 0.0);
                    }
                }
            }
        }
        assert_eq!(back, w, "[{inn}->{out}]");
    }
    // At 80 % random sparsity, [2028 -> 10] saves many groups with two lane maps, a 3×3
    // convolution's [9 -> 12] not enough to pay for folding a second map.
    for (inn, out, two) in [(2028, 10, true), (9, 12, false)] {
        let w = random(inn, out, 0.8, &mut rng);
        let layer = SparseDense::from_dense(w.view(), None).unwrap();
        let g = layer
            .groups
            .as_ref()
            .expect("narrow layers get window groups");
        assert_eq!(g.lane_col[0] != g.lane_col[1], two, "[{inn}->{out}]");
    }
    // Wide layers run on tiles and do not pay for the second layout.
    let wide = SparseDense::from_dense(Array2::<f32>::ones((4, 17)).view(), None).unwrap();
    assert!(wide.groups.is_none());
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
    for path in KernelPath::ALL.into_iter().filter(|p| !p.is_supported()) {
        assert!(matches!(
            layer.forward_with(w.view(), path),
            Err(PruneError::UnsupportedIsa { .. })
        ));
    }
}
