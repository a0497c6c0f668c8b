//! Kernel tests: the portable GEMM against an i64 reference, every SIMD kernel against the
//! portable one bit for bit, im2col + GEMM against a direct convolution, max-pool against a
//! direct loop.

use ndarray::{Array2, Array4, s};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn random_i8(rng: &mut StdRng, shape: (usize, usize)) -> Array2<i8> {
    Array2::from_shape_fn(shape, |_| rng.random())
}

/// `Σ (a − za)·b + bias` in i64, checked to fit i32.
fn reference_acc(a: &Array2<i8>, za: i32, b: &Array2<i8>, bias: Option<&[i32]>) -> Array2<i32> {
    let (m, k) = a.dim();
    let n = b.ncols();
    Array2::from_shape_fn((m, n), |(i, j)| {
        let mut s: i64 = bias.map_or(0, |b| b[j] as i64);
        for kk in 0..k {
            s += (a[[i, kk]] as i64 - za as i64) * b[[kk, j]] as i64;
        }
        i32::try_from(s).expect("reference accumulator fits i32")
    })
}

fn random_requant(rng: &mut StdRng, n: usize, per_channel: bool) -> Requant {
    let channels = if per_channel { n } else { 1 };
    let mut mult = Vec::new();
    let mut shift = Vec::new();
    for _ in 0..channels {
        // Powers of two and 0.75 · 2^e give multipliers 2^30 and 3 · 2^29, whose products
        // land exactly on SaturatingRoundingDoublingHighMul's ties.
        let e = rng.random_range(-18..2);
        let real = match rng.random_range(0..3) {
            0 => 2f64.powi(e),
            1 => 0.75 * 2f64.powi(e),
            _ => 2f64.powf(rng.random_range(-18.0..2.0)),
        };
        let (m, s) = crate::fixedpoint::quantize_multiplier(real).unwrap();
        mult.push(m);
        shift.push(s);
    }
    let zo = [-128, 127, 0, -7, 55][rng.random_range(0..5)];
    let (lo, hi) = if rng.random_bool(0.5) {
        (-128, 127)
    } else {
        (zo.clamp(-100, 100), 120)
    };
    Requant::per_channel(mult, shift, zo, lo, hi).unwrap()
}

const MS: [usize; 7] = [1, 2, 3, 7, 9, 17, 65];
const NS: [usize; 8] = [1, 3, 12, 16, 17, 33, 48, 65];
const KS: [usize; 11] = [1, 2, 3, 4, 5, 7, 9, 16, 17, 63, 65];
const ZPS: [i32; 5] = [-128, 127, 0, -5, 37];

#[test]
fn packing_round_trips_and_sums_columns() {
    let mut rng = StdRng::seed_from_u64(1);
    for (k, n) in [(1, 1), (3, 17), (9, 12), (65, 33)] {
        let b = random_i8(&mut rng, (k, n));
        let p = PackedWeights::new(b.view());
        assert_eq!((p.k(), p.n()), (k, n));
        assert_eq!(p.col_sums().len(), n.div_ceil(16) * 16);
        for kk in 0..k {
            for j in 0..n {
                assert_eq!(p.get(kk, j), b[[kk, j]]);
            }
        }
        for j in 0..n {
            assert_eq!(
                p.col_sums()[j],
                b.column(j).iter().map(|&v| v as i32).sum::<i32>()
            );
        }
        assert!(p.col_sums()[n..].iter().all(|&v| v == 0));
        // The row-sum lane: 128 over the real k, zero in the k padding; other padding zero.
        if n % 16 != 0 {
            let blk = p.block(n / 16);
            for g in 0..k.div_ceil(4) {
                for l in n % 16..16 {
                    for t in 0..4 {
                        let want = if l == n % 16 && 4 * g + t < k { 128 } else { 0 };
                        assert_eq!(blk[(g * 16 + l) * 4 + t], want, "k={k} n={n}");
                    }
                }
            }
        }
        // Transposed (non-standard) input packs the same.
        let bt = b.t().to_owned();
        assert_eq!(PackedWeights::new(bt.t()), p);
    }
}

#[test]
fn portable_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(2);
    for (t, (&m, (&n, &k))) in MS.iter().zip(NS.iter().zip(KS.iter())).enumerate() {
        for za in ZPS {
            let a = random_i8(&mut rng, (m, k));
            let b = random_i8(&mut rng, (k, n));
            let bias: Vec<i32> = (0..n)
                .map(|_| rng.random_range(-100_000..100_000))
                .collect();
            let bias = (t % 2 == 0).then_some(&bias[..]);
            let packed = PackedWeights::new(b.view());
            let mut out = Array2::zeros((m, n));
            gemm_i8_acc_with(
                Kernel::Portable,
                a.view(),
                za,
                &packed,
                bias,
                out.view_mut(),
            )
            .unwrap();
            assert_eq!(
                out,
                reference_acc(&a, za, &b, bias),
                "m={m} n={n} k={k} za={za}"
            );
            let rq = random_requant(&mut rng, n, t % 3 != 0);
            let mut q = Array2::zeros((m, n));
            gemm_i8_requant_with(
                Kernel::Portable,
                a.view(),
                za,
                &packed,
                bias,
                &rq,
                q.view_mut(),
            )
            .unwrap();
            let want = Array2::from_shape_fn(out.dim(), |(i, j)| rq.apply(out[[i, j]], j));
            assert_eq!(q, want);
        }
    }
}

/// Every available kernel against the portable one, over all shape combinations.
#[test]
fn simd_kernels_match_portable_bit_for_bit() {
    let kernels: Vec<Kernel> = Kernel::available()
        .into_iter()
        .filter(|&k| k != Kernel::Portable)
        .collect();
    eprintln!(
        "kernels under test: {kernels:?} (best: {:?})",
        Kernel::best()
    );
    let mut rng = StdRng::seed_from_u64(3);
    let mut case = 0usize;
    for &m in &MS {
        for &n in &NS {
            for &k in &KS {
                case += 1;
                let za = ZPS[case % ZPS.len()];
                let a = random_i8(&mut rng, (m, k));
                let b = random_i8(&mut rng, (k, n));
                let bias: Vec<i32> = (0..n).map(|_| rng.random()).collect();
                let bias = (!case.is_multiple_of(3)).then_some(&bias[..]);
                let packed = PackedWeights::new(b.view());
                let rq = random_requant(&mut rng, n, case.is_multiple_of(2));
                let mut want = Array2::zeros((m, n));
                gemm_i8_acc_with(
                    Kernel::Portable,
                    a.view(),
                    za,
                    &packed,
                    bias,
                    want.view_mut(),
                )
                .unwrap();
                let mut want_q = Array2::zeros((m, n));
                gemm_i8_requant_with(
                    Kernel::Portable,
                    a.view(),
                    za,
                    &packed,
                    bias,
                    &rq,
                    want_q.view_mut(),
                )
                .unwrap();
                for &kernel in &kernels {
                    let mut got = Array2::from_elem((m, n), 0x5a5a5a5a);
                    gemm_i8_acc_with(kernel, a.view(), za, &packed, bias, got.view_mut()).unwrap();
                    assert_eq!(got, want, "{kernel:?} acc m={m} n={n} k={k} za={za}");
                    let mut got_q = Array2::from_elem((m, n), 0x5a);
                    gemm_i8_requant_with(
                        kernel,
                        a.view(),
                        za,
                        &packed,
                        bias,
                        &rq,
                        got_q.view_mut(),
                    )
                    .unwrap();
                    assert_eq!(
                        got_q, want_q,
                        "{kernel:?} requant m={m} n={n} k={k} za={za}"
                    );
                }
            }
        }
    }
}

/// Accumulators over the whole int32 range (through a random bias, which wraps), left and
/// right shifts, zero points at both ends: the SIMD output stages against `Requant::apply`.
#[test]
fn simd_requantization_matches_on_extreme_accumulators() {
    let mut rng = StdRng::seed_from_u64(4);
    let (m, n, k) = (33, 65, 3);
    for round in 0..20 {
        let a = random_i8(&mut rng, (m, k));
        let b = random_i8(&mut rng, (k, n));
        let packed = PackedWeights::new(b.view());
        let bias: Vec<i32> = (0..n)
            .map(|j| match j % 4 {
                0 => i32::MAX - rng.random_range(0..200_000),
                1 => i32::MIN + rng.random_range(0..200_000),
                _ => rng.random(),
            })
            .collect();
        let mut mult = Vec::new();
        let mut shift = Vec::new();
        for _ in 0..n {
            let (mm, ss) = match rng.random_range(0..6) {
                0 => (
                    rng.random_range(1 << 30..=i32::MAX),
                    rng.random_range(-31..=30),
                ),
                1 => (i32::MAX, -31),
                2 => (1 << 30, 30),
                // Exact SaturatingRoundingDoublingHighMul ties (odd accumulators × 0.5).
                3 => (1 << 30, rng.random_range(-31..=0)),
                4 => (3 << 29, rng.random_range(-31..=2)),
                _ => (0, 0),
            };
            mult.push(mm);
            shift.push(ss);
        }
        let zo = if round % 2 == 0 { -128 } else { 127 };
        let rq = Requant::per_channel(mult, shift, zo, -128, 127).unwrap();
        let za = ZPS[round % ZPS.len()];
        let mut want = Array2::zeros((m, n));
        gemm_i8_requant_with(
            Kernel::Portable,
            a.view(),
            za,
            &packed,
            Some(&bias),
            &rq,
            want.view_mut(),
        )
        .unwrap();
        for kernel in Kernel::available() {
            let mut got = Array2::zeros((m, n));
            gemm_i8_requant_with(
                kernel,
                a.view(),
                za,
                &packed,
                Some(&bias),
                &rq,
                got.view_mut(),
            )
            .unwrap();
            assert_eq!(got, want, "{kernel:?} round {round}");
        }
        // The single-rounding stage (dense layers): every kernel agrees with the scalar
        // formula on the accumulators.
        let single = rq.clone().with_single_rounding();
        let mut acc = Array2::zeros((m, n));
        gemm_i8_acc_with(
            Kernel::Portable,
            a.view(),
            za,
            &packed,
            Some(&bias),
            acc.view_mut(),
        )
        .unwrap();
        let want = Array2::from_shape_fn((m, n), |(i, j)| single.apply(acc[[i, j]], j));
        for kernel in Kernel::available() {
            let mut got = Array2::zeros((m, n));
            gemm_i8_requant_with(
                kernel,
                a.view(),
                za,
                &packed,
                Some(&bias),
                &single,
                got.view_mut(),
            )
            .unwrap();
            assert_eq!(got, want, "{kernel:?} single rounding, round {round}");
        }
    }
}

/// The largest magnitudes (a = −128 with za = 127, b = ±127/−128) over a long k stay exact.
#[test]
fn extreme_inputs_over_long_k_are_exact() {
    let (m, n, k) = (3, 17, 4099);
    let a = Array2::from_shape_fn((m, k), |(i, _)| if i == 1 { 127 } else { -128 });
    let b = Array2::from_shape_fn((k, n), |(kk, j)| match (kk + j) % 3 {
        0 => 127,
        1 => -128,
        _ => -127,
    });
    let packed = PackedWeights::new(b.view());
    for za in [-128, 127] {
        let want = reference_acc(&a, za, &b, None);
        for kernel in Kernel::available() {
            let mut got = Array2::zeros((m, n));
            gemm_i8_acc_with(kernel, a.view(), za, &packed, None, got.view_mut()).unwrap();
            assert_eq!(got, want, "{kernel:?} za={za}");
        }
    }
}

/// Large enough to be split over threads; the split must not change a bit.
#[test]
fn parallel_split_matches_single_thread() {
    let mut rng = StdRng::seed_from_u64(5);
    let (m, n, k) = (611, 40, 180);
    assert!(m * n * k >= PARALLEL_MIN_MACS);
    let a = random_i8(&mut rng, (m, k));
    let b = random_i8(&mut rng, (k, n));
    let packed = PackedWeights::new(b.view());
    let bias: Vec<i32> = (0..n).map(|_| rng.random_range(-1000..1000)).collect();
    let want = reference_acc(&a, -3, &b, Some(&bias));
    let rq = random_requant(&mut rng, n, true);
    let want_q = Array2::from_shape_fn(want.dim(), |(i, j)| rq.apply(want[[i, j]], j));
    for kernel in Kernel::available() {
        let mut got = Array2::zeros((m, n));
        gemm_i8_acc_with(kernel, a.view(), -3, &packed, Some(&bias), got.view_mut()).unwrap();
        assert_eq!(got, want, "{kernel:?}");
        let mut got_q = Array2::zeros((m, n));
        gemm_i8_requant_with(
            kernel,
            a.view(),
            -3,
            &packed,
            Some(&bias),
            &rq,
            got_q.view_mut(),
        )
        .unwrap();
        assert_eq!(got_q, want_q, "{kernel:?}");
    }
}

#[test]
fn default_entry_points_use_the_best_kernel() {
    let mut rng = StdRng::seed_from_u64(6);
    let a = random_i8(&mut rng, (5, 9));
    let b = random_i8(&mut rng, (9, 12));
    let packed = PackedWeights::new(b.view());
    let mut got = Array2::zeros((5, 12));
    gemm_i8_acc(a.view(), 10, &packed, None, got.view_mut()).unwrap();
    assert_eq!(got, reference_acc(&a, 10, &b, None));
    // A non-standard-layout A is copied, not rejected.
    let at = a.t().to_owned();
    let mut got2 = Array2::zeros((5, 12));
    gemm_i8_acc(at.t(), 10, &packed, None, got2.view_mut()).unwrap();
    assert_eq!(got2, got);
    let rq = Requant::per_tensor(1 << 30, -4, 3, -128, 127).unwrap();
    let mut q = Array2::zeros((5, 12));
    gemm_i8_requant(a.view(), 10, &packed, None, &rq, q.view_mut()).unwrap();
    let mut q2 = Array2::zeros((5, 12));
    requantize(got.view(), &rq, q2.view_mut()).unwrap();
    assert_eq!(q, q2);
    assert!(Kernel::best().is_available());
    assert!(Kernel::available().contains(&Kernel::Portable));
}

#[test]
fn gemm_rejects_bad_operands() {
    let a = Array2::<i8>::zeros((4, 6));
    let packed = PackedWeights::new(Array2::<i8>::zeros((6, 5)).view());
    let mut out = Array2::<i32>::zeros((4, 5));
    let bad_a = Array2::<i8>::zeros((4, 7));
    assert!(matches!(
        gemm_i8_acc(bad_a.view(), 0, &packed, None, out.view_mut()),
        Err(QuantError::ShapeMismatch { .. })
    ));
    let mut bad_out = Array2::<i32>::zeros((4, 6));
    assert!(matches!(
        gemm_i8_acc(a.view(), 0, &packed, None, bad_out.view_mut()),
        Err(QuantError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gemm_i8_acc(a.view(), 0, &packed, Some(&[0; 4]), out.view_mut()),
        Err(QuantError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        gemm_i8_acc(a.view(), 128, &packed, None, out.view_mut()),
        Err(QuantError::InvalidZeroPoint { .. })
    ));
    let mut wide = Array2::<i32>::zeros((4, 10));
    assert!(matches!(
        gemm_i8_acc(a.view(), 0, &packed, None, wide.slice_mut(s![.., ..;2])),
        Err(QuantError::NotContiguous { .. })
    ));
    let rq = Requant::per_channel(vec![1 << 30; 3], vec![0; 3], 0, -128, 127).unwrap();
    let mut q = Array2::<i8>::zeros((4, 5));
    assert!(matches!(
        gemm_i8_requant(a.view(), 0, &packed, None, &rq, q.view_mut()),
        Err(QuantError::ChannelMismatch { .. })
    ));
    // Empty products are fine.
    let empty = Array2::<i8>::zeros((0, 6));
    gemm_i8_acc(
        empty.view(),
        0,
        &packed,
        None,
        Array2::zeros((0, 5)).view_mut(),
    )
    .unwrap();
    let k0 = PackedWeights::new(Array2::<i8>::zeros((0, 3)).view());
    let mut o = Array2::zeros((2, 3));
    for kernel in Kernel::available() {
        gemm_i8_acc_with(
            kernel,
            Array2::zeros((2, 0)).view(),
            5,
            &k0,
            Some(&[1, 2, 3]),
            o.view_mut(),
        )
        .unwrap();
        assert_eq!(o, ndarray::array![[1, 2, 3], [1, 2, 3]]);
    }
}

#[test]
fn requant_validation_and_scales() {
    assert!(matches!(
        Requant::per_tensor(-1, 0, 0, -128, 127),
        Err(QuantError::InvalidQuantizedMultiplier { .. })
    ));
    assert!(matches!(
        Requant::per_tensor(1 << 30, 31, 0, -128, 127),
        Err(QuantError::InvalidQuantizedMultiplier { .. })
    ));
    assert!(matches!(
        Requant::per_tensor(1 << 30, -32, 0, -128, 127),
        Err(QuantError::InvalidQuantizedMultiplier { .. })
    ));
    assert!(matches!(
        Requant::per_tensor(1 << 30, 0, 200, -128, 127),
        Err(QuantError::InvalidZeroPoint { .. })
    ));
    assert!(matches!(
        Requant::per_tensor(1 << 30, 0, 0, 5, 4),
        Err(QuantError::InvalidIntRange { .. })
    ));
    assert!(matches!(
        Requant::per_channel(vec![1, 2], vec![0], 0, -128, 127),
        Err(QuantError::ChannelMismatch { .. })
    ));
    // s_in · s_w / s_out = 0.5 · 0.25 / 0.5 = 0.25 -> (2^30, -1); 0.5 · 1 / 0.5 = 1 -> (2^30, 1).
    let rq = Requant::from_scales(0.5, &[0.25, 1.0], 0.5, -3, -3, 127).unwrap();
    assert_eq!(rq.multipliers(), &[1 << 30, 1 << 30]);
    assert_eq!(rq.shifts(), &[-1, 1]);
    assert_eq!(rq.zero_point(), -3);
    assert_eq!(rq.activation_range(), (-3, 127));
    // 10 · 0.25 = 2.5 -> 3 (away from zero), + zp; -10 · 0.25 -> -3 -> -6 -> ReLU clamp -3.
    assert_eq!(rq.apply(10, 0), 0);
    assert_eq!(rq.apply(-10, 0), -3);
    assert_eq!(rq.apply(100, 1), 97);
    assert_eq!(rq.apply(200, 1), 127);
    assert!(Requant::from_scales(0.0, &[1.0], 1.0, 0, -128, 127).is_err());
    assert!(Requant::from_scales(1.0, &[f32::NAN], 1.0, 0, -128, 127).is_err());
    assert!(Requant::from_scales(1e10, &[1.0], 1.0, 0, -128, 127).is_err());
}

#[test]
fn activation_ranges_follow_tflite() {
    assert_eq!(
        activation_range(Activation::None, 0.1, 5).unwrap(),
        (-128, 127)
    );
    assert_eq!(
        activation_range(Activation::Relu, 0.1, 5).unwrap(),
        (5, 127)
    );
    // 6 / 0.1 = 60 -> 5 + 60 = 65.
    assert_eq!(
        activation_range(Activation::Relu6, 0.1, 5).unwrap(),
        (5, 65)
    );
    assert_eq!(
        activation_range(Activation::Relu6, 0.01, -128).unwrap(),
        (-128, 127)
    );
    assert!(activation_range(Activation::Relu, 0.0, 0).is_err());
    assert!(activation_range(Activation::Relu, 1.0, -129).is_err());
}

#[test]
fn window_geometry_follows_tensorflow() {
    let g = |size, strides, padding, h, w| {
        Window2d::new(size, strides, padding).geometry(&[1, h, w, 1])
    };
    assert_eq!(
        g([3, 3], [2, 2], Padding::Valid, 5, 5).unwrap(),
        ([2, 2], [0, 0])
    );
    // same: out = 3, pad_total = (3 − 1)·2 + 3 − 5 = 2, one before.
    assert_eq!(
        g([3, 3], [2, 2], Padding::Same, 5, 5).unwrap(),
        ([3, 3], [1, 1])
    );
    assert_eq!(
        g([2, 2], [2, 2], Padding::Same, 4, 4).unwrap(),
        ([2, 2], [0, 0])
    );
    // pad_total = 1 goes after.
    assert_eq!(
        g([2, 2], [2, 2], Padding::Same, 3, 3).unwrap(),
        ([2, 2], [0, 0])
    );
    assert_eq!(
        g([3, 1], [1, 1], Padding::Same, 4, 4).unwrap(),
        ([4, 4], [1, 0])
    );
    assert_eq!(
        g([3, 3], [1, 1], Padding::Valid, 28, 28).unwrap(),
        ([26, 26], [0, 0])
    );
    assert!(matches!(
        g([6, 1], [1, 1], Padding::Valid, 5, 5),
        Err(QuantError::InvalidWindow { .. })
    ));
    assert!(g([2, 2], [0, 1], Padding::Valid, 5, 5).is_err());
    assert!(g([0, 2], [1, 1], Padding::Same, 5, 5).is_err());
    assert!(g([1, 1], [1, 1], Padding::Same, 0, 5).is_err());
}

#[test]
fn im2col_hand_worked() {
    let x = Array4::from_shape_fn((1, 3, 3, 1), |(_, y, x, _)| (y * 3 + x + 1) as i8);
    let w = Window2d::new([2, 2], [1, 1], Padding::Valid);
    let cols = im2col_i8(x.view(), &w, 0).unwrap();
    assert_eq!(
        cols,
        ndarray::array![[1, 2, 4, 5], [2, 3, 5, 6], [4, 5, 7, 8], [5, 6, 8, 9]]
    );
    // same, stride 2: out 2×2, pad_total 1 (after); the padding holds the zero point.
    let w = Window2d::new([2, 2], [2, 2], Padding::Same);
    let cols = im2col_i8(x.view(), &w, -7).unwrap();
    assert_eq!(
        cols,
        ndarray::array![
            [1, 2, 4, 5],
            [3, -7, 6, -7],
            [7, 8, -7, -7],
            [9, -7, -7, -7]
        ]
    );
    // Two channels: patch order is (ky, kx, c).
    let x = Array4::from_shape_fn((1, 2, 2, 2), |(_, y, x, c)| (10 * (y * 2 + x) + c) as i8);
    let w = Window2d::new([2, 2], [1, 1], Padding::Valid);
    assert_eq!(
        im2col_i8(x.view(), &w, 0).unwrap(),
        ndarray::array![[0, 1, 10, 11, 20, 21, 30, 31]]
    );
    assert!(matches!(
        im2col_i8(x.view(), &w, 200),
        Err(QuantError::InvalidZeroPoint { .. })
    ));
    let mut wrong = Array2::zeros((2, 8));
    assert!(matches!(
        im2col_i8_into(x.view(), &w, 0, wrong.view_mut()),
        Err(QuantError::ShapeMismatch { .. })
    ));
}

/// Direct int8 convolution: `Σ (x − zx)·w` with real-zero padding, per output channel.
fn reference_conv(x: &Array4<i8>, zx: i32, kernel: &Array4<i8>, window: &Window2d) -> Array4<i32> {
    let ([oh, ow], [pt, pl]) = window.geometry(x.shape()).unwrap();
    let (n, h, wd, c) = x.dim();
    let (kh, kw, _, co) = kernel.dim();
    Array4::from_shape_fn((n, oh, ow, co), |(b, oy, ox, o)| {
        let mut s = 0i32;
        for ky in 0..kh {
            for kx in 0..kw {
                let iy = (oy * window.strides[0] + ky) as isize - pt as isize;
                let ix = (ox * window.strides[1] + kx) as isize - pl as isize;
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                    continue;
                }
                for ci in 0..c {
                    let xv = x[[b, iy as usize, ix as usize, ci]] as i32 - zx;
                    s += xv * kernel[[ky, kx, ci, o]] as i32;
                }
            }
        }
        s
    })
}

#[test]
fn conv_as_im2col_plus_gemm_matches_direct_convolution() {
    let mut rng = StdRng::seed_from_u64(7);
    let cases = [
        ((1, 28, 28, 1), [3, 3], [1, 1], Padding::Valid, 12),
        ((2, 7, 9, 3), [3, 3], [2, 2], Padding::Same, 5),
        ((1, 6, 5, 4), [2, 3], [1, 2], Padding::Same, 17),
        ((3, 5, 5, 2), [5, 5], [1, 1], Padding::Valid, 3),
        ((1, 4, 4, 16), [1, 1], [1, 1], Padding::Same, 33),
        ((1, 9, 9, 2), [4, 4], [3, 3], Padding::Same, 8),
    ];
    for (shape, size, strides, padding, co) in cases {
        let x = Array4::from_shape_fn(shape, |_| rng.random::<i8>());
        let kernel = Array4::from_shape_fn((size[0], size[1], shape.3, co), |_| {
            rng.random_range(-127..=127i8)
        });
        let window = Window2d::new(size, strides, padding);
        let zx = rng.random_range(-128..=127);
        let cols = im2col_i8(x.view(), &window, zx).unwrap();
        let kmat = kernel
            .view()
            .into_shape_with_order((size[0] * size[1] * shape.3, co))
            .unwrap();
        let packed = PackedWeights::new(kmat);
        let want = reference_conv(&x, zx, &kernel, &window);
        let want = want
            .view()
            .into_shape_with_order((cols.nrows(), co))
            .unwrap();
        for kernel_kind in Kernel::available() {
            let mut got = Array2::zeros((cols.nrows(), co));
            gemm_i8_acc_with(kernel_kind, cols.view(), zx, &packed, None, got.view_mut()).unwrap();
            assert_eq!(
                got, want,
                "{kernel_kind:?} {shape:?} {size:?} {strides:?} {padding:?}"
            );
        }
    }
}

fn reference_pool(x: &Array4<i8>, window: &Window2d) -> Array4<i8> {
    let ([oh, ow], [pt, pl]) = window.geometry(x.shape()).unwrap();
    let (n, h, w, c) = x.dim();
    Array4::from_shape_fn((n, oh, ow, c), |(b, oy, ox, ch)| {
        let mut best: Option<i8> = None;
        for ky in 0..window.size[0] {
            for kx in 0..window.size[1] {
                let iy = (oy * window.strides[0] + ky) as isize - pt as isize;
                let ix = (ox * window.strides[1] + kx) as isize - pl as isize;
                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                    let v = x[[b, iy as usize, ix as usize, ch]];
                    best = Some(best.map_or(v, |m| m.max(v)));
                }
            }
        }
        best.expect("every TF window overlaps the input")
    })
}

#[test]
fn max_pool_matches_direct_loop() {
    let x = Array4::from_shape_fn((1, 4, 4, 1), |(_, y, x, _)| (y as i8 * 4 + x as i8) - 8);
    let w = Window2d::new([2, 2], [2, 2], Padding::Valid);
    assert_eq!(
        max_pool_i8(x.view(), &w)
            .unwrap()
            .into_shape_with_order((2, 2))
            .unwrap(),
        ndarray::array![[-3, -1], [5, 7]]
    );
    // Padding never wins, even against -128.
    let neg = Array4::from_elem((1, 3, 3, 2), -128i8);
    let w = Window2d::new([2, 2], [2, 2], Padding::Same);
    assert!(
        max_pool_i8(neg.view(), &w)
            .unwrap()
            .iter()
            .all(|&v| v == -128)
    );
    let mut rng = StdRng::seed_from_u64(8);
    for (shape, size, strides, padding) in [
        ((2, 26, 26, 12), [2, 2], [2, 2], Padding::Valid),
        ((1, 7, 9, 3), [3, 3], [2, 2], Padding::Same),
        ((1, 5, 5, 17), [2, 3], [1, 2], Padding::Same),
        ((1, 8, 8, 1), [3, 3], [3, 3], Padding::Valid),
    ] {
        let x = Array4::from_shape_fn(shape, |_| rng.random::<i8>());
        let w = Window2d::new(size, strides, padding);
        assert_eq!(
            max_pool_i8(x.view(), &w).unwrap(),
            reference_pool(&x, &w),
            "{shape:?}"
        );
    }
    let mut wrong = Array4::zeros((1, 2, 2, 3));
    assert!(matches!(
        max_pool_i8_into(neg.view(), &w, wrong.view_mut()),
        Err(QuantError::ShapeMismatch { .. })
    ));
}

/// The AVX-512 VBMI im2col against the portable one, over geometries that fit it (and some
/// that do not, which must fall back).
#[test]
fn im2col_simd_matches_portable() {
    let mut rng = StdRng::seed_from_u64(9);
    let cases = [
        ((1, 28, 28, 1), [3, 3], [1, 1], Padding::Valid),
        ((2, 28, 28, 1), [5, 5], [1, 1], Padding::Same),
        ((1, 9, 7, 3), [3, 2], [2, 1], Padding::Same),
        ((3, 5, 5, 2), [2, 2], [2, 2], Padding::Same),
        ((1, 6, 127, 1), [3, 3], [1, 2], Padding::Same),
        ((1, 6, 64, 2), [2, 3], [1, 1], Padding::Valid),
        ((1, 6, 32, 4), [1, 1], [1, 1], Padding::Valid),
        ((1, 4, 128, 1), [2, 2], [1, 1], Padding::Valid),
        ((1, 9, 9, 1), [9, 1], [1, 1], Padding::Same),
        ((1, 30, 30, 1), [7, 7], [3, 3], Padding::Same),
    ];
    for (shape, size, strides, padding) in cases {
        let x = Array4::from_shape_fn(shape, |_| rng.random::<i8>());
        let window = Window2d::new(size, strides, padding);
        let ([oh, ow], [pt, pl]) = window.geometry(x.shape()).unwrap();
        let (n, h, w, c) = shape;
        let zp = rng.random::<i8>();
        let g = window::PatchGeometry {
            n,
            h,
            w,
            c,
            oh,
            ow,
            kh: size[0],
            kw: size[1],
            sh: strides[0],
            sw: strides[1],
            pt,
            pl,
            zp,
        };
        let rows = n * oh * ow;
        let len = size[0] * size[1] * c;
        let src = x.as_slice().unwrap();
        let mut want = vec![0i8; rows * len];
        window::im2col_dispatch(&g, src, &mut want, false);
        let mut got = vec![0x55i8; rows * len];
        window::im2col_dispatch(&g, src, &mut got, true);
        assert_eq!(got, want, "{shape:?} {size:?} {strides:?} {padding:?}");
        // And the public entry points agree with both.
        let api = im2col_i8(x.view(), &window, zp as i32).unwrap();
        assert_eq!(api.as_slice().unwrap(), &want[..]);
        let prepared = Im2col::new(window, [h, w, c]).unwrap();
        let mut planned = Array2::from_elem((rows, len), 0x33i8);
        prepared
            .run(x.view(), zp as i32, planned.view_mut())
            .unwrap();
        assert_eq!(planned.as_slice().unwrap(), &want[..]);
        // A prepared geometry runs any batch size; other shapes are errors.
        let one = x.slice(s![0..1, .., .., ..]);
        let mut first = Array2::zeros((oh * ow, len));
        prepared.run(one, zp as i32, first.view_mut()).unwrap();
        assert_eq!(first.as_slice().unwrap(), &want[..oh * ow * len]);
        let wider = Array4::<i8>::zeros((1, h, w + 1, c));
        assert!(matches!(
            prepared.run(wider.view(), 0, first.view_mut()),
            Err(QuantError::ShapeMismatch { .. })
        ));
    }
}

/// The AVX2 max-pool against the portable one, over channel counts on both sides of its 16-
/// and 32-byte blocks and windows that hit the buffer ends.
#[test]
fn max_pool_simd_matches_portable() {
    let mut rng = StdRng::seed_from_u64(10);
    for (shape, size, strides, padding) in [
        ((1, 26, 26, 12), [2, 2], [2, 2], Padding::Valid),
        ((2, 7, 9, 1), [3, 3], [2, 2], Padding::Same),
        ((1, 5, 5, 16), [2, 3], [1, 2], Padding::Same),
        ((1, 6, 6, 17), [2, 2], [2, 2], Padding::Valid),
        ((1, 5, 4, 33), [3, 3], [1, 1], Padding::Same),
        ((2, 4, 4, 70), [2, 2], [1, 1], Padding::Valid),
        ((1, 3, 3, 5), [3, 3], [3, 3], Padding::Same),
    ] {
        let x = Array4::from_shape_fn(shape, |_| rng.random::<i8>());
        let window = Window2d::new(size, strides, padding);
        let ([oh, ow], [pt, pl]) = window.geometry(x.shape()).unwrap();
        let (n, h, w, c) = shape;
        let g = window::PoolGeometry {
            n,
            h,
            w,
            c,
            oh,
            ow,
            kh: size[0],
            kw: size[1],
            sh: strides[0],
            sw: strides[1],
            pt,
            pl,
        };
        let src = x.as_slice().unwrap();
        let mut want = vec![0i8; n * oh * ow * c];
        window::max_pool_dispatch(&g, src, &mut want, false);
        let mut got = vec![0x55i8; n * oh * ow * c];
        window::max_pool_dispatch(&g, src, &mut got, true);
        assert_eq!(got, want, "{shape:?} {size:?} {strides:?} {padding:?}");
        let api = max_pool_i8(x.view(), &window).unwrap();
        assert_eq!(api, reference_pool(&x, &window));
    }
}

/// The unfused path the engine takes without [`ConvPool`]: im2col, portable GEMM, max-pool.
fn conv_then_pool(
    x: &Array4<i8>,
    conv: &Window2d,
    w: &Array2<i8>,
    bias: &[i32],
    za: i32,
    rq: &Requant,
    pool: &Window2d,
) -> Array4<i8> {
    let (n, h, wd, _) = x.dim();
    let ([oh, ow], _) = conv.geometry(&[n, h, wd, x.dim().3]).unwrap();
    let patches = im2col_i8(x.view(), conv, za).unwrap();
    let mut y = Array2::zeros((patches.nrows(), w.ncols()));
    let packed = PackedWeights::new(w.view());
    gemm_i8_requant_with(
        Kernel::Portable,
        patches.view(),
        za,
        &packed,
        Some(bias),
        rq,
        y.view_mut(),
    )
    .unwrap();
    let y = y.into_shape_with_order((n, oh, ow, w.ncols())).unwrap();
    max_pool_i8(y.view(), pool).unwrap()
}

/// `(h, w, cin, kernel, conv strides, pool, cout)`.
type ConvPoolCase = (
    usize,
    usize,
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 2],
    usize,
);

#[test]
fn fused_conv_pool_matches_im2col_gemm_and_max_pool() {
    let mut rng = StdRng::seed_from_u64(11);
    let cases: [ConvPoolCase; 12] = [
        (28, 28, 1, [3, 3], [1, 1], [2, 2], 12),
        (7, 9, 1, [3, 3], [1, 1], [2, 2], 1),
        (6, 6, 2, [2, 2], [1, 1], [2, 3], 17),
        (9, 7, 1, [1, 1], [1, 1], [1, 1], 16),
        (13, 11, 3, [2, 1], [2, 1], [3, 2], 7),
        (5, 5, 4, [2, 2], [1, 1], [1, 1], 33),
        (10, 10, 1, [4, 4], [2, 2], [2, 2], 12),
        (8, 5, 2, [2, 4], [1, 1], [2, 1], 3),
        (3, 3, 1, [3, 3], [1, 1], [1, 1], 65),
        (12, 12, 8, [1, 1], [1, 1], [2, 2], 5),
        (9, 8, 1, [2, 2], [1, 1], [2, 2], 12),
        (7, 8, 2, [1, 2], [1, 2], [2, 2], 4),
    ];
    for (case, &(h, wd, c, ks, cs, ps, cout)) in cases.iter().enumerate() {
        for trial in 0..6 {
            let n = [1, 2, 3][trial % 3];
            let x = Array4::from_shape_fn((n, h, wd, c), |_| rng.random::<i8>());
            let k = ks[0] * ks[1] * c;
            let w = random_i8(&mut rng, (k, cout));
            let za = ZPS[trial % ZPS.len()];
            // Small biases (the SIMD path's max-first order) and full-range ones (wrapping).
            let bias: Vec<i32> = (0..cout)
                .map(|_| {
                    if trial < 4 {
                        rng.random_range(-(1 << 20)..1 << 20)
                    } else {
                        rng.random()
                    }
                })
                .collect();
            let rq = random_requant(&mut rng, cout, trial % 2 == 0);
            let conv = Window2d::new(ks, cs, Padding::Valid);
            let pool = Window2d::new(ps, ps, Padding::Valid);
            let expected = conv_then_pool(&x, &conv, &w, &bias, za, &rq, &pool);
            let fused = ConvPool::new([h, wd, c], &conv, w.view(), &bias, za, &rq, &pool)
                .unwrap_or_else(|| panic!("case {case} qualifies for the fused path"));
            assert_eq!(fused.out_dims(), [expected.dim().1, expected.dim().2]);
            let src = x.as_slice().unwrap();
            for simd in [false, true] {
                let mut got = vec![0i8; n * fused.output_len()];
                fused.run_with(simd, n, src, &mut got);
                assert_eq!(
                    got,
                    expected.as_slice().unwrap(),
                    "case {case} trial {trial} simd {simd}"
                );
            }
        }
    }
}

#[test]
fn fused_conv_pool_declines_what_it_cannot_run() {
    let w = Array2::<i8>::zeros((9, 4));
    let rq = Requant::per_tensor(1 << 30, -3, 0, -128, 127).unwrap();
    let conv = Window2d::new([3, 3], [1, 1], Padding::Valid);
    let pool = Window2d::new([2, 2], [2, 2], Padding::Valid);
    let bias = [0; 4];
    assert!(ConvPool::new([8, 8, 1], &conv, w.view(), &bias, 0, &rq, &pool).is_some());
    let same = Window2d::new([3, 3], [1, 1], Padding::Same);
    assert!(ConvPool::new([8, 8, 1], &same, w.view(), &bias, 0, &rq, &pool).is_none());
    let overlapping = Window2d::new([3, 3], [2, 2], Padding::Valid);
    assert!(ConvPool::new([8, 8, 1], &conv, w.view(), &bias, 0, &rq, &overlapping).is_none());
    // A 5×5 patch (25 bytes) is longer than the direct path takes.
    let conv5 = Window2d::new([5, 5], [1, 1], Padding::Valid);
    let w25 = Array2::<i8>::zeros((25, 4));
    assert!(ConvPool::new([8, 8, 1], &conv5, w25.view(), &bias, 0, &rq, &pool).is_none());
}

#[test]
fn onnxruntime_rounding_is_one_f32_rounding_ties_to_even() {
    // s_in · s_w / s_out = 0.5 exactly: every odd accumulator lands on a tie.
    let ort =
        Requant::from_scales_with(Rounding::OnnxRuntime, 1.0, &[0.5], 1.0, 0, -128, 127).unwrap();
    let tfl = Requant::from_scales(1.0, &[0.5], 1.0, 0, -128, 127).unwrap();
    assert_eq!(ort.rounding(), Rounding::OnnxRuntime);
    assert_eq!(tfl.rounding(), Rounding::Tflite);
    // Ties to even (MLAS' cvtps2dq); gemmlowp's SaturatingRoundingDoublingHighMul rounds
    // ties toward +inf (with no shift after it, as here).
    for (acc, even, tflite) in [(3, 2, 2), (5, 2, 3), (-3, -2, -1), (-5, -2, -2), (7, 4, 4)] {
        assert_eq!(ort.apply(acc, 0) as i32, even, "acc {acc}");
        assert_eq!(tfl.apply(acc, 0) as i32, tflite, "acc {acc}");
    }
    // Saturation and the zero point are the same under both rules.
    let ort =
        Requant::from_scales_with(Rounding::OnnxRuntime, 1.0, &[1.0], 1.0, 10, -128, 127).unwrap();
    assert_eq!(ort.apply(i32::MAX, 0), 127);
    assert_eq!(ort.apply(i32::MIN, 0), -128);
    assert_eq!(ort.apply(-3, 0), 7);
    // The multiplier is onnxruntime's f32 expression, evaluated in its order.
    let (si, sw, so) = (0.003_921_569_f32, 0.012_3_f32, 0.171_f32);
    let ort =
        Requant::from_scales_with(Rounding::OnnxRuntime, si, &[sw], so, 0, -128, 127).unwrap();
    let m = si * sw / so;
    for acc in [-100_000, -1234, 0, 1, 999, 54_321] {
        let want = ((acc as f32 * m).round_ties_even() as i32).clamp(-128, 127);
        assert_eq!(ort.apply(acc, 0) as i32, want);
    }
}

#[test]
fn every_kernel_gives_the_same_bits_under_onnxruntime_rounding() {
    let mut rng = StdRng::seed_from_u64(41);
    for &(m, k, n) in &[
        (1, 7, 1),
        (7, 63, 17),
        (65, 33, 16),
        (129, 100, 40),
        (300, 75, 12),
    ] {
        for per_channel in [false, true] {
            let a = random_i8(&mut rng, (m, k));
            let b = random_i8(&mut rng, (k, n));
            let za = rng.random_range(-128..=127);
            let bias: Vec<i32> = (0..n).map(|_| rng.random_range(-5000..5000)).collect();
            let channels = if per_channel { n } else { 1 };
            let ws: Vec<f32> = (0..channels)
                .map(|_| rng.random_range(0.001f32..0.05))
                .collect();
            let rq = Requant::from_scales_with(
                Rounding::OnnxRuntime,
                0.02,
                &ws,
                rng.random_range(0.05f32..0.5),
                rng.random_range(-20..20),
                -128,
                127,
            )
            .unwrap();
            let acc = reference_acc(&a, za, &b, Some(&bias));
            let want = Array2::from_shape_fn((m, n), |(i, j)| rq.apply(acc[[i, j]], j));
            let packed = PackedWeights::new(b.view());
            for kernel in [Kernel::Portable, Kernel::Avx2, Kernel::Avx512Vnni] {
                if !kernel.is_available() {
                    continue;
                }
                let mut out = Array2::<i8>::zeros((m, n));
                gemm_i8_requant_with(
                    kernel,
                    a.view(),
                    za,
                    &packed,
                    Some(&bias),
                    &rq,
                    out.view_mut(),
                )
                .unwrap();
                assert_eq!(
                    out, want,
                    "{kernel:?} m {m} k {k} n {n} per_channel {per_channel}"
                );
            }
        }
    }
}

/// `(h, w, cin, kernel, strides, padding, cout)`.
type DirectCase = (usize, usize, usize, [usize; 2], [usize; 2], Padding, usize);

#[test]
fn direct_conv_matches_im2col_and_gemm() {
    let mut rng = StdRng::seed_from_u64(23);
    // ResNet-8's layers, then awkward ones: odd sizes, stride 2 on odd and even inputs,
    // channel counts off the 16-lane blocks, patch rows that are not whole groups of 4
    // (repacked weights), kernels wider than the input under `same`, more than 4 blocks.
    let cases: [DirectCase; 18] = [
        (28, 28, 1, [3, 3], [1, 1], Padding::Same, 16),
        (28, 28, 16, [3, 3], [1, 1], Padding::Same, 16),
        (28, 28, 16, [3, 3], [2, 2], Padding::Same, 32),
        (28, 28, 16, [1, 1], [2, 2], Padding::Same, 32),
        (14, 14, 32, [3, 3], [1, 1], Padding::Same, 32),
        (14, 14, 32, [3, 3], [2, 2], Padding::Same, 64),
        (7, 7, 64, [3, 3], [1, 1], Padding::Same, 64),
        (9, 7, 4, [3, 3], [2, 2], Padding::Same, 17),
        (9, 7, 4, [3, 3], [2, 2], Padding::Valid, 17),
        (5, 11, 12, [3, 2], [1, 2], Padding::Same, 33),
        (1, 1, 8, [3, 3], [1, 1], Padding::Same, 3),
        (6, 5, 3, [3, 3], [1, 1], Padding::Same, 20),
        (7, 6, 1, [5, 5], [2, 1], Padding::Same, 1),
        (13, 3, 7, [2, 2], [3, 1], Padding::Valid, 65),
        (4, 4, 20, [3, 3], [1, 1], Padding::Same, 100),
        (3, 40, 4, [1, 3], [1, 1], Padding::Same, 48),
        (8, 8, 16, [1, 1], [1, 1], Padding::Valid, 16),
        (10, 10, 2, [4, 4], [3, 3], Padding::Same, 8),
    ];
    for (case, &(h, wd, c, ks, st, padding, cout)) in cases.iter().enumerate() {
        for trial in 0..4 {
            let n = [1, 2][trial % 2];
            let x = Array4::from_shape_fn((n, h, wd, c), |_| rng.random::<i8>());
            let k = ks[0] * ks[1] * c;
            let w = random_i8(&mut rng, (k, cout));
            let za = ZPS[(case + trial) % ZPS.len()];
            let bias: Vec<i32> = (0..cout)
                .map(|_| {
                    if trial < 2 {
                        rng.random_range(-(1 << 20)..1 << 20)
                    } else {
                        rng.random()
                    }
                })
                .collect();
            let rq = random_requant(&mut rng, cout, trial % 2 == 0);
            let window = Window2d::new(ks, st, padding);
            let patches = im2col_i8(x.view(), &window, za).unwrap();
            let packed = PackedWeights::new(w.view());
            let mut want = Array2::zeros((patches.nrows(), cout));
            gemm_i8_requant_with(
                Kernel::Portable,
                patches.view(),
                za,
                &packed,
                Some(&bias),
                &rq,
                want.view_mut(),
            )
            .unwrap();
            let dc = DirectConv {
                shape: ConvShape::new(&window, [h, wd, c]).unwrap(),
                packed: &packed,
                bias: &bias,
                za,
                requant: &rq,
            };
            assert!(dc.fits(), "case {case}");
            let mut scratch = ConvScratch::default();
            for simd in [false, true] {
                let mut got = vec![0i8; want.len()];
                dc.run_with(simd, n, x.as_slice().unwrap(), &mut scratch, &mut got);
                assert_eq!(
                    got,
                    want.as_slice().unwrap(),
                    "case {case} trial {trial} simd {simd}"
                );
            }
        }
    }
}

#[test]
fn direct_conv_declines_other_output_stages() {
    let w = Array2::<i8>::zeros((9 * 4, 8));
    let packed = PackedWeights::new(w.view());
    let bias = [0; 8];
    let rq = Requant::per_tensor(1 << 30, -3, 0, -128, 127).unwrap();
    let window = Window2d::new([3, 3], [1, 1], Padding::Same);
    let shape = ConvShape::new(&window, [5, 5, 4]).unwrap();
    let dc = |requant| DirectConv {
        shape,
        packed: &packed,
        bias: &bias,
        za: 0,
        requant,
    };
    assert!(dc(&rq).fits());
    let single = rq.clone().with_single_rounding();
    assert!(!dc(&single).fits());
    let onnx =
        Requant::from_scales_with(Rounding::OnnxRuntime, 0.1, &[0.01], 0.2, 0, -128, 127).unwrap();
    assert!(!dc(&onnx).fits());
    let other = ConvShape::new(&window, [5, 5, 3]).unwrap();
    assert!(
        !DirectConv {
            shape: other,
            ..dc(&rq)
        }
        .fits()
    );
}
