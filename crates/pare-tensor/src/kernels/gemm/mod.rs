//! f32 matrix multiplication, `C = A · B` or `C += A · B`, on strided 2-D views.
//!
//! Two backends: the `gemm` crate (AVX-512/AVX2/FMA micro-kernels, dispatched by that crate at
//! run time; outputs of at most 16 columns go to our own AVX-512 kernel instead, see `skinny`)
//! and a portable reference loop that tests compare against. Transposed operands are
//! passed as transposed views (`a.t()`); no copy is made, since both backends take strides.

mod blocked;
mod fast;
#[cfg(target_arch = "x86_64")]
mod skinny;
#[cfg(not(target_arch = "x86_64"))]
mod skinny {
    //! Stand-in off x86-64: the AVX-512 kernel never applies.
    pub(super) fn applies(
        _: &ndarray::ArrayView2<'_, f32>,
        _: &ndarray::ArrayView2<'_, f32>,
        _: &ndarray::ArrayViewMut2<'_, f32>,
    ) -> bool {
        false
    }
    pub(super) use super::blocked::matmul;
}

use ndarray::{ArrayView2, ArrayViewMut2};
use std::sync::OnceLock;

/// Which implementation computes a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmBackend {
    /// Portable cache-blocked loops; always available, the reference for tests.
    Portable,
    /// The `gemm` crate's SIMD micro-kernels, parallel with rayon on large products.
    Fast,
}

/// The backend chosen once for this process. `PARE_GEMM=portable` forces the portable path
/// (useful to compare results or to profile without SIMD).
pub fn best_backend() -> GemmBackend {
    static BEST: OnceLock<GemmBackend> = OnceLock::new();
    *BEST.get_or_init(|| match std::env::var("PARE_GEMM").as_deref() {
        Ok("portable") => GemmBackend::Portable,
        _ => GemmBackend::Fast,
    })
}

/// Products smaller than this many multiply-adds stay on one thread: below it, waking the pool
/// costs more than it saves (measured on the small CNN's layers).
pub const PARALLEL_THRESHOLD: usize = 1 << 20;

/// `c = a · b` (or `c += a · b` when `accumulate`), with the best backend.
///
/// # Panics
/// If the shapes do not chain (`a` is `[m, k]`, `b` is `[k, n]`, `c` is `[m, n]`).
pub fn matmul_into(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    matmul_into_with(best_backend(), a, b, c, accumulate)
}

/// [`matmul_into`] with an explicit backend.
///
/// # Panics
/// If the shapes do not chain.
pub fn matmul_into_with(
    backend: GemmBackend,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    c: ArrayViewMut2<'_, f32>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert!(
        k == k2 && c.dim() == (m, n),
        "matmul: shapes do not chain: a {:?} · b {:?} -> c {:?}",
        a.shape(),
        b.shape(),
        c.shape()
    );
    match backend {
        GemmBackend::Portable => blocked::matmul(a, b, c, accumulate),
        GemmBackend::Fast => fast::matmul(a, b, c, accumulate),
    }
}

/// `a · b` into a new array.
pub fn matmul(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> ndarray::Array2<f32> {
    if best_backend() == GemmBackend::Fast && a.ncols() == b.nrows() {
        return fast::matmul_new(a, b);
    }
    let mut c = ndarray::Array2::zeros((a.nrows(), b.ncols()));
    matmul_into(a, b, c.view_mut(), false);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(rng: &mut StdRng, r: usize, c: usize) -> Array2<f32> {
        Array2::from_shape_fn((r, c), |_| rng.random_range(-1.0..1.0))
    }

    fn naive(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f64> {
        let mut c = Array2::zeros((a.nrows(), b.ncols()));
        for i in 0..a.nrows() {
            for j in 0..b.ncols() {
                c[[i, j]] = (0..a.ncols())
                    .map(|p| a[[i, p]] as f64 * b[[p, j]] as f64)
                    .sum();
            }
        }
        c
    }

    #[test]
    fn backends_agree_with_f64_reference_on_awkward_sizes() {
        let mut rng = StdRng::seed_from_u64(7);
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 9, 12),
            (63, 65, 1),
            (65, 63, 17),
            (130, 300, 70),
        ] {
            let a = random(&mut rng, m, k);
            let b = random(&mut rng, k, n);
            let want = naive(&a, &b);
            for backend in [GemmBackend::Portable, GemmBackend::Fast] {
                let mut c = Array2::zeros((m, n));
                matmul_into_with(backend, a.view(), b.view(), c.view_mut(), false);
                for (x, y) in c.iter().zip(want.iter()) {
                    assert_abs_diff_eq!(*x as f64, *y, epsilon = 1e-4 * (k as f64).sqrt());
                }
            }
        }
    }

    #[test]
    fn transposed_views_and_accumulation() {
        let mut rng = StdRng::seed_from_u64(8);
        let a = random(&mut rng, 33, 20); // used as aᵀ: [20, 33]
        let b = random(&mut rng, 17, 33); // used as bᵀ: [33, 17]
        let at = a.t().to_owned();
        let bt = b.t().to_owned();
        let want = naive(&at, &bt);
        for backend in [GemmBackend::Portable, GemmBackend::Fast] {
            let mut c = Array2::from_elem((20, 17), 1.0f32);
            matmul_into_with(backend, a.t(), b.t(), c.view_mut(), true);
            for (x, y) in c.iter().zip(want.iter()) {
                assert_abs_diff_eq!(*x as f64, y + 1.0, epsilon = 1e-4);
            }
        }
    }

    #[test]
    fn large_transposed_products_match_portable() {
        // Above the size where the fast path re-orders operands: every layout combination.
        let mut rng = StdRng::seed_from_u64(10);
        let a = random(&mut rng, 150, 140);
        let b = random(&mut rng, 140, 130);
        let (at, bt) = (a.t().to_owned(), b.t().to_owned());
        let cases: [(ArrayView2<'_, f32>, ArrayView2<'_, f32>); 4] = [
            (a.view(), b.view()),
            (at.t(), b.view()),
            (a.view(), bt.t()),
            (at.t(), bt.t()),
        ];
        let mut want = Array2::zeros((150, 130));
        matmul_into_with(
            GemmBackend::Portable,
            a.view(),
            b.view(),
            want.view_mut(),
            false,
        );
        for (x, y) in cases {
            for acc in [false, true] {
                let mut c = Array2::from_elem((150, 130), 0.5f32);
                matmul_into_with(GemmBackend::Fast, x, y, c.view_mut(), acc);
                let base = if acc { 0.5 } else { 0.0 };
                for (p, q) in c.iter().zip(want.iter()) {
                    assert_abs_diff_eq!(*p, q + base, epsilon = 1e-3);
                }
            }
        }
        let big = matmul(at.t(), b.view());
        for (p, q) in big.iter().zip(want.iter()) {
            assert_abs_diff_eq!(p, q, epsilon = 1e-3);
        }
    }

    #[test]
    fn skinny_outputs_match_portable() {
        // Up to 16 output columns take the AVX-512 register-tile kernel when available: row
        // counts around the 8-row tile, long and short k, transposed and reversed operands.
        let mut rng = StdRng::seed_from_u64(11);
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 65, 10),
            (9, 1, 16),
            (16, 2028, 10),
            (2028, 16, 10),
            (63, 33, 7),
        ] {
            let a = random(&mut rng, m, k);
            let at = a.t().to_owned();
            let b = random(&mut rng, k, n);
            let want = naive(&a, &b);
            let rev = a.slice(ndarray::s![..;-1, ..]).to_owned();
            for acc in [false, true] {
                let base = if acc { 0.25 } else { 0.0 };
                let mut c = Array2::from_elem((m, n), 0.25f32);
                matmul_into(a.view(), b.view(), c.view_mut(), acc);
                let mut ct = Array2::from_elem((m, n), 0.25f32);
                matmul_into(at.t(), b.view(), ct.view_mut(), acc);
                let mut cr = Array2::from_elem((m, n), 0.25f32);
                matmul_into(
                    rev.slice(ndarray::s![..;-1, ..]),
                    b.view(),
                    cr.view_mut(),
                    acc,
                );
                for ((x, y), (z, w)) in c.iter().zip(ct.iter()).zip(cr.iter().zip(want.iter())) {
                    let tol = 1e-4 * (k as f64).sqrt();
                    assert_abs_diff_eq!(*x as f64, w + base, epsilon = tol);
                    assert_abs_diff_eq!(*y as f64, w + base, epsilon = tol);
                    assert_abs_diff_eq!(*z as f64, w + base, epsilon = tol);
                }
            }
        }
    }

    #[test]
    fn thin_and_long_products_split_across_threads_match_portable() {
        // Above PARALLEL_THRESHOLD: 16 columns split by rows, long k split by depth (both
        // layouts of `a`, as a kernel gradient passes patchesᵀ), in pools of 2 and 3 threads,
        // which must agree bit for bit (the split does not depend on the thread count).
        let mut rng = StdRng::seed_from_u64(12);
        for &(m, k, n) in &[(3001, 40, 16), (20, 5000, 16), (30, 4500, 70), (9, 9000, 5)] {
            let a = random(&mut rng, m, k);
            let at = a.t().to_owned();
            let b = random(&mut rng, k, n);
            let mut want = Array2::zeros((m, n));
            matmul_into_with(
                GemmBackend::Portable,
                a.view(),
                b.view(),
                want.view_mut(),
                false,
            );
            let mut runs = Vec::new();
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for (x, acc) in [(a.view(), false), (at.t(), true)] {
                    let mut c = Array2::from_elem((m, n), 0.5f32);
                    pool.install(|| matmul_into(x, b.view(), c.view_mut(), acc));
                    let base = if acc { 0.5 } else { 0.0 };
                    for (p, q) in c.iter().zip(want.iter()) {
                        assert_abs_diff_eq!(*p, q + base, epsilon = 1e-4 * (k as f32).sqrt());
                    }
                    runs.push(c);
                }
            }
            assert_eq!(runs[0], runs[2], "{m}x{k}x{n}: 2 vs 3 threads");
            assert_eq!(runs[1], runs[3], "{m}x{k}x{n}: 2 vs 3 threads (transposed)");
        }
    }

    #[test]
    fn large_parallel_product_matches_portable() {
        let mut rng = StdRng::seed_from_u64(9);
        let a = random(&mut rng, 200, 257);
        let b = random(&mut rng, 257, 130);
        let mut c1 = Array2::zeros((200, 130));
        let mut c2 = Array2::zeros((200, 130));
        matmul_into_with(
            GemmBackend::Portable,
            a.view(),
            b.view(),
            c1.view_mut(),
            false,
        );
        matmul_into_with(GemmBackend::Fast, a.view(), b.view(), c2.view_mut(), false);
        for (x, y) in c1.iter().zip(c2.iter()) {
            assert_abs_diff_eq!(x, y, epsilon = 1e-3);
        }
    }
}
