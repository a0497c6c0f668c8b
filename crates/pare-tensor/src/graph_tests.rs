//! Gradient checks and hand-worked values for every op.

use crate::gradcheck::max_gradient_error;
use crate::graph::{Activation, FakeQuantSpec, Graph, Var};
use crate::kernels::conv::Padding;
use crate::nn::Param;
use approx::assert_abs_diff_eq;
use ndarray::{ArrayD, IxDyn, arr1, arr2};
use rand::{Rng, SeedableRng, rngs::StdRng};

const TOL: f32 = 2e-2;

fn rand_arr(rng: &mut StdRng, shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(-1.0..1.0))
}

/// Values away from zero, so kinks (relu, max ties) are not straddled by the difference step.
fn rand_away_from_zero(rng: &mut StdRng, shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        let v: f32 = rng.random_range(0.1..1.0);
        if rng.random_bool(0.5) { v } else { -v }
    })
}

/// Reduces a non-scalar output to a scalar with fixed random weights, so every output element
/// contributes a different amount to the checked gradient.
fn weighted_sum(g: &mut Graph, y: Var, seed: u64) -> Var {
    let mut rng = StdRng::seed_from_u64(seed);
    let w = rand_arr(&mut rng, g.shape(y));
    let w = g.constant(w);
    let p = g.mul(y, w);
    g.sum(p)
}

#[test]
fn matmul_gradient() {
    let mut rng = StdRng::seed_from_u64(1);
    let inputs = [rand_arr(&mut rng, &[3, 4]), rand_arr(&mut rng, &[4, 5])];
    let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
        let y = g.matmul(v[0], v[1]);
        weighted_sum(g, y, 9)
    });
    assert!(err < TOL, "matmul gradient error {err}");
}

#[test]
fn conv2d_gradient_all_strides_and_paddings() {
    let mut rng = StdRng::seed_from_u64(2);
    for (stride, pad) in [
        (1, Padding::Valid),
        (2, Padding::Valid),
        (1, Padding::Same),
        (2, Padding::Same),
    ] {
        let inputs = [
            rand_arr(&mut rng, &[2, 5, 6, 3]),
            rand_arr(&mut rng, &[3, 3, 3, 4]),
        ];
        let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
            let y = g.conv2d(v[0], v[1], [stride, stride], pad);
            weighted_sum(g, y, 5)
        });
        assert!(
            err < TOL,
            "conv2d stride {stride} {pad:?}: gradient error {err}"
        );
    }
}

#[test]
fn conv2d_gradient_through_both_kernels() {
    // 3x3x3 = 27 patch values takes the direct (shallow) kernels, 3x3x4 = 36 im2col + GEMM:
    // check both, with bias and a fused activation, every input needing a gradient.
    use crate::kernels::conv::shallow;
    let mut rng = StdRng::seed_from_u64(14);
    for cin in [3, 4] {
        let shapes: [&[usize]; 3] = [&[2, 5, 6, cin], &[3, 3, cin, 5], &[5]];
        for (stride, pad) in [(1, Padding::Valid), (2, Padding::Same)] {
            let win =
                crate::kernels::conv::Window::new([2, 5, 6, cin], [3, 3], [stride, stride], pad)
                    .unwrap();
            assert_eq!(shallow::applies(&win), cin == 3);
            let conv = move |g: &mut Graph, v: &[Var], act| {
                g.conv2d_fused(v[0], v[1], Some(v[2]), [stride, stride], pad, act)
            };
            let inputs = inputs_off_kink(&mut rng, &shapes, &|g, v| conv(g, v, Activation::Linear));
            // Inputs sit >= 0.05 from the kink; a 1e-2 step keeps f32 rounding noise small.
            let err = max_gradient_error(&inputs, 1e-2, &|g, v| {
                let y = conv(g, v, Activation::LeakyRelu(0.2));
                weighted_sum(g, y, 15)
            });
            assert!(
                err < TOL,
                "conv2d {cin} channels {stride} {pad:?}: gradient error {err}"
            );
        }
    }
}

#[test]
fn max_pool_gradient_all_strides_and_paddings() {
    let mut rng = StdRng::seed_from_u64(3);
    for (pool, stride, pad) in [
        (2, 2, Padding::Valid),
        (2, 1, Padding::Same),
        (3, 2, Padding::Same),
        (2, 1, Padding::Valid),
    ] {
        // Distinct values spaced well apart, so no two candidates of a window tie within h.
        let mut vals: Vec<f32> = (0..2 * 5 * 5 * 2).map(|i| i as f32 * 0.1).collect();
        for i in (1..vals.len()).rev() {
            vals.swap(i, rng.random_range(0..=i));
        }
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 5, 5, 2]), vals).unwrap();
        let err = max_gradient_error(&[x], 1e-2, &|g, v| {
            let y = g.max_pool(v[0], [pool, pool], [stride, stride], pad);
            weighted_sum(g, y, 6)
        });
        assert!(
            err < TOL,
            "max_pool {pool}/{stride} {pad:?}: gradient error {err}"
        );
    }
}

#[test]
fn elementwise_and_activation_gradients() {
    let mut rng = StdRng::seed_from_u64(4);
    let a = rand_away_from_zero(&mut rng, &[3, 4]);
    let b = rand_away_from_zero(&mut rng, &[3, 4]);
    let bias = rand_arr(&mut rng, &[4]);
    let mask = ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| ((i[0] + i[1]) % 2) as f32);
    type Case = (&'static str, Box<dyn Fn(&mut Graph, &[Var]) -> Var>);
    let cases: Vec<Case> = vec![
        (
            "add",
            Box::new(|g: &mut Graph, v: &[Var]| g.add(v[0], v[1])),
        ),
        (
            "sub",
            Box::new(|g: &mut Graph, v: &[Var]| g.sub(v[0], v[1])),
        ),
        (
            "mul",
            Box::new(|g: &mut Graph, v: &[Var]| g.mul(v[0], v[1])),
        ),
        (
            "scale",
            Box::new(|g: &mut Graph, v: &[Var]| g.scale(v[0], -2.5)),
        ),
        ("relu", Box::new(|g: &mut Graph, v: &[Var]| g.relu(v[0]))),
        (
            "leaky_relu",
            Box::new(|g: &mut Graph, v: &[Var]| g.leaky_relu(v[0], 0.2)),
        ),
        (
            "softmax",
            Box::new(|g: &mut Graph, v: &[Var]| g.softmax(v[0])),
        ),
        (
            "log_softmax",
            Box::new(|g: &mut Graph, v: &[Var]| g.log_softmax(v[0])),
        ),
        (
            "reshape",
            Box::new(|g: &mut Graph, v: &[Var]| g.reshape(v[0], &[2, 6])),
        ),
        ("mean", Box::new(|g: &mut Graph, v: &[Var]| g.mean(v[0]))),
        ("mask_mul", {
            let m = mask.clone();
            Box::new(move |g: &mut Graph, v: &[Var]| g.mask_mul(v[0], m.clone()))
        }),
    ];
    for (name, f) in &cases {
        let err = max_gradient_error(&[a.clone(), b.clone()], 1e-2, &|g, v| {
            let y = f(g, v);
            if g.shape(y).is_empty() {
                y
            } else {
                weighted_sum(g, y, 7)
            }
        });
        assert!(err < TOL, "{name}: gradient error {err}");
    }
    let err = max_gradient_error(&[a.clone(), bias], 1e-2, &|g, v| {
        let y = g.add_bias(v[0], v[1]);
        weighted_sum(g, y, 8)
    });
    assert!(err < TOL, "add_bias: gradient error {err}");
}

#[test]
fn loss_gradients() {
    let mut rng = StdRng::seed_from_u64(5);
    let logits = rand_arr(&mut rng, &[4, 6]).mapv(|v| 3.0 * v);
    let other = rand_arr(&mut rng, &[4, 6]);
    let labels = [0usize, 5, 2, 2];
    let err = max_gradient_error(std::slice::from_ref(&logits), 1e-2, &|g, v| {
        g.softmax_cross_entropy(v[0], &labels)
    });
    assert!(err < TOL, "softmax_cross_entropy: gradient error {err}");
    // KL between two log-softmax'd inputs: gradient flows into both.
    let err = max_gradient_error(&[logits, other], 1e-2, &|g, v| {
        let lp = g.log_softmax(v[0]);
        let lq = g.log_softmax(v[1]);
        g.kl_div(lp, lq)
    });
    assert!(err < TOL, "kl_div: gradient error {err}");
}

#[test]
fn fake_quant_straight_through_gradient() {
    // Inside [−1.28, 1.27] (scale 0.01, zp 0) the gradient is 1; outside it is 0.
    let spec = FakeQuantSpec {
        scale: vec![0.01],
        zero_point: vec![0],
        qmin: -128,
        qmax: 127,
    };
    let x = Param::new("x", arr1(&[0.5f32, -2.0, 1.3, -1.0]).into_dyn());
    let mut g = Graph::new();
    let v = g.param(&x);
    let y = g.fake_quant(v, spec);
    assert_eq!(g.value(y).as_slice().unwrap(), &[0.5, -1.28, 1.27, -1.0]);
    let s = g.sum(y);
    let grads = g.backward(s);
    assert_eq!(
        grads.get("x").unwrap().as_slice().unwrap(),
        &[1.0, 0.0, 0.0, 1.0]
    );
}

#[test]
fn fake_quant_rounds_half_away_from_zero_per_channel() {
    let spec = FakeQuantSpec {
        scale: vec![0.5, 1.0],
        zero_point: vec![0, 3],
        qmin: -128,
        qmax: 127,
    };
    let mut g = Graph::new();
    let x = g.constant(arr2(&[[0.25f32, 1.5], [-0.25, -1.5]]).into_dyn());
    let y = g.fake_quant(x, spec);
    // 0.25/0.5 = 0.5 → 1 → 0.5; 1.5 → round(1.5)+3 = 5 → 2; −0.5 → −1 → −0.5; −1.5 → −2 → −2.
    assert_eq!(g.value(y).as_slice().unwrap(), &[0.5, 2.0, -0.5, -2.0]);
}

#[test]
fn softmax_cross_entropy_hand_worked() {
    // logits [1, 2, 3], label 2: −log(e³ / (e + e² + e³)) = log(1 + e⁻¹ + e⁻²) = 0.40760596
    // (same as tf.nn.sparse_softmax_cross_entropy_with_logits on these values).
    let mut g = Graph::new();
    let l = g.constant(arr2(&[[1.0f32, 2.0, 3.0], [1000.0, 0.0, -1000.0]]).into_dyn());
    let loss = g.softmax_cross_entropy(l, &[2, 0]);
    // Second row: logit 1000 dominates, loss ≈ 0 and stays finite (stable log-sum-exp).
    assert_abs_diff_eq!(g.value(loss)[[]], 0.40760596 / 2.0, epsilon = 1e-6);
}

#[test]
fn conv_and_pool_hand_worked() {
    // 3x3 input 1..9, 2x2 kernel of ones, valid, stride 1: window sums 12, 16, 24, 28.
    let mut g = Graph::new();
    let x = g.constant(
        ArrayD::from_shape_vec(IxDyn(&[1, 3, 3, 1]), (1..=9).map(|v| v as f32).collect()).unwrap(),
    );
    let k = g.constant(ArrayD::ones(IxDyn(&[2, 2, 1, 1])));
    let y = g.conv2d(x, k, [1, 1], Padding::Valid);
    assert_eq!(
        g.value(y).iter().copied().collect::<Vec<_>>(),
        vec![12.0, 16.0, 24.0, 28.0]
    );
    // Same padding, stride 2 on 3x3: out 2x2, pad total 1 → bottom/right only:
    // windows {1,2,4,5}=12, {3,6}=9, {7,8}=15, {9}=9.
    let y = g.conv2d(x, k, [2, 2], Padding::Same);
    assert_eq!(
        g.value(y).iter().copied().collect::<Vec<_>>(),
        vec![12.0, 9.0, 15.0, 9.0]
    );
    let p = g.max_pool(x, [2, 2], [1, 1], Padding::Same);
    assert_eq!(
        g.value(p).iter().copied().collect::<Vec<_>>(),
        vec![5., 6., 6., 8., 9., 9., 8., 9., 9.]
    );
}

#[test]
fn kl_div_hand_worked() {
    // p = [0.5, 0.5], q = [0.25, 0.75]: KL = 0.5 ln 2 + 0.5 ln(2/3) = 0.14384104.
    let mut g = Graph::new();
    let lp = g.constant(arr2(&[[0.5f32.ln(), 0.5f32.ln()]]).into_dyn());
    let lq = g.constant(arr2(&[[0.25f32.ln(), 0.75f32.ln()]]).into_dyn());
    let kl = g.kl_div(lp, lq);
    assert_abs_diff_eq!(g.value(kl)[[]], 0.14384104, epsilon = 1e-6);
}

#[test]
fn constants_get_no_gradient_and_params_dedupe() {
    let p = Param::new("w", arr1(&[1.0f32, 2.0]).into_dyn());
    let mut g = Graph::new();
    let a = g.param(&p);
    let b = g.param(&p);
    assert_eq!(a, b);
    let c = g.constant(arr1(&[3.0f32, 4.0]).into_dyn());
    let y = g.mul(a, c);
    let s = g.sum(y);
    let grads = g.backward(s);
    assert_eq!(grads.len(), 1);
    assert_eq!(grads.get("w").unwrap().as_slice().unwrap(), &[3.0, 4.0]);
}

#[test]
fn masks_zero_forward_weights_and_gradients() {
    let p = Param::new("w", arr1(&[1.0f32, 2.0, 3.0]).into_dyn());
    let mut g = Graph::new();
    g.set_mask("w", arr1(&[1.0f32, 0.0, 1.0]).into_dyn());
    let w = g.param(&p);
    assert_eq!(g.value(w).as_slice().unwrap(), &[1.0, 0.0, 3.0]);
    let s = g.sum(w);
    let grads = g.backward(s);
    assert_eq!(
        grads.get("w").unwrap().as_slice().unwrap(),
        &[1.0, 0.0, 1.0]
    );
}

#[test]
#[should_panic(expected = "matmul")]
fn shape_mismatch_panics_naming_the_op() {
    let mut g = Graph::new();
    let a = g.constant(ArrayD::zeros(IxDyn(&[2, 3])));
    let b = g.constant(ArrayD::zeros(IxDyn(&[4, 2])));
    g.matmul(a, b);
}

/// Draws inputs until every pre-activation of `pre` is at least 0.05 from the kink, so the
/// difference step never straddles it.
fn inputs_off_kink(
    rng: &mut StdRng,
    shapes: &[&[usize]],
    pre: &dyn Fn(&mut Graph, &[Var]) -> Var,
) -> Vec<ArrayD<f32>> {
    loop {
        let inputs: Vec<_> = shapes.iter().map(|s| rand_arr(rng, s)).collect();
        let mut g = Graph::new();
        let vars: Vec<Var> = inputs.iter().map(|v| g.constant(v.clone())).collect();
        let y = pre(&mut g, &vars);
        if g.value(y).iter().all(|v| v.abs() > 0.05) {
            return inputs;
        }
    }
}

#[test]
fn fused_dense_and_conv_gradients() {
    let mut rng = StdRng::seed_from_u64(11);
    for act in [
        Activation::Linear,
        Activation::Relu,
        Activation::LeakyRelu(0.2),
    ] {
        let inputs = inputs_off_kink(&mut rng, &[&[3, 4], &[4, 5], &[5]], &|g, v| {
            g.dense(v[0], v[1], Some(v[2]), Activation::Linear)
        });
        let err = max_gradient_error(&inputs, 1e-3, &|g, v| {
            let y = g.dense(v[0], v[1], Some(v[2]), act);
            weighted_sum(g, y, 12)
        });
        assert!(err < TOL, "dense {act:?}: gradient error {err}");
        for (stride, pad) in [(1, Padding::Valid), (2, Padding::Same)] {
            let conv = move |g: &mut Graph, v: &[Var], act| {
                g.conv2d_fused(v[0], v[1], Some(v[2]), [stride, stride], pad, act)
            };
            let inputs =
                inputs_off_kink(&mut rng, &[&[1, 4, 4, 2], &[2, 2, 2, 2], &[2]], &|g, v| {
                    conv(g, v, Activation::Linear)
                });
            let err = max_gradient_error(&inputs, 1e-3, &|g, v| {
                let y = conv(g, v, act);
                weighted_sum(g, y, 13)
            });
            assert!(
                err < TOL,
                "conv2d fused {act:?} {stride} {pad:?}: gradient error {err}"
            );
        }
    }
}

#[test]
fn fused_ops_equal_the_unfused_chain() {
    let mut rng = StdRng::seed_from_u64(12);
    let x = rand_arr(&mut rng, &[2, 6, 6, 3]);
    let k = rand_arr(&mut rng, &[3, 3, 3, 4]);
    let b = rand_arr(&mut rng, &[4]);
    let mut g = Graph::new();
    let (x, k, b) = (g.constant(x), g.constant(k), g.constant(b));
    let fused = g.conv2d_fused(
        x,
        k,
        Some(b),
        [2, 2],
        Padding::Same,
        Activation::LeakyRelu(0.2),
    );
    let c = g.conv2d(x, k, [2, 2], Padding::Same);
    let c = g.add_bias(c, b);
    let chain = g.leaky_relu(c, 0.2);
    for (a, b) in g.value(fused).iter().zip(g.value(chain).iter()) {
        assert_abs_diff_eq!(a, b, epsilon = 1e-6);
    }
}

#[test]
fn reshape_to_the_same_shape_is_the_same_node() {
    let mut g = Graph::new();
    let p = Param::new("p", arr2(&[[1.0f32, -2.0], [3.0, 4.0]]).into_dyn());
    let x = g.param(&p);
    let nodes = g.len();
    let y = g.reshape(x, &[2, 2]);
    assert_eq!(y, x);
    assert_eq!(g.len(), nodes);
    let s = g.sum(y);
    let grads = g.backward(s);
    assert_eq!(
        grads.get("p").unwrap(),
        &ArrayD::from_elem(IxDyn(&[2, 2]), 1.0)
    );
}

#[test]
fn fused_conv_pool_equals_the_chain_with_gradients() {
    // One Conv2dMaxPool node against conv2d_fused → max_pool: the same values, and gradients
    // equal to rounding (the chain's are gradient-checked above), with and without an input
    // gradient; a padded convolution falls back to the chain.
    let mut rng = StdRng::seed_from_u64(16);
    let cases = [
        ([3, 9, 9, 1], 3, 1, 2, Padding::Valid, Activation::Relu),
        (
            [2, 11, 10, 2],
            2,
            2,
            2,
            Padding::Valid,
            Activation::LeakyRelu(0.2),
        ),
        ([2, 8, 7, 1], 3, 1, 3, Padding::Valid, Activation::Linear),
        ([2, 6, 6, 1], 3, 1, 2, Padding::Same, Activation::Relu),
    ];
    for (xs, k, s, p, pad, act) in cases {
        let x = rand_arr(&mut rng, &xs);
        let kern = rand_arr(&mut rng, &[k, k, xs[3], 5]);
        let bias = rand_arr(&mut rng, &[5]);
        for x_grad in [false, true] {
            let run = |fused: bool| {
                let mut g = Graph::new();
                let xv = if x_grad {
                    g.param(&Param::new("x", x.clone()))
                } else {
                    g.constant(x.clone())
                };
                let kv = g.param(&Param::new("k", kern.clone()));
                let bv = g.param(&Param::new("b", bias.clone()));
                let nodes = g.len();
                let y = if fused {
                    g.conv2d_max_pool(
                        xv,
                        kv,
                        Some(bv),
                        ([s, s], pad),
                        act,
                        ([p, p], [p, p], Padding::Valid),
                    )
                } else {
                    let c = g.conv2d_fused(xv, kv, Some(bv), [s, s], pad, act);
                    g.max_pool(c, [p, p], [p, p], Padding::Valid)
                };
                let added = g.len() - nodes;
                let loss = weighted_sum(&mut g, y, 17);
                (g.value(y).clone(), added, g.backward(loss))
            };
            let (y0, n0, g0) = run(false);
            let (y1, n1, g1) = run(true);
            assert_eq!(y0, y1, "{xs:?} {act:?}");
            assert_eq!((n0, n1), (2, if pad == Padding::Valid { 1 } else { 2 }));
            for name in ["k", "b", "x"] {
                let (a, b) = (g0.get(name), g1.get(name));
                assert_eq!(a.is_some(), b.is_some(), "{name}");
                if let (Some(a), Some(b)) = (a, b) {
                    for (p, q) in a.iter().zip(b.iter()) {
                        assert_abs_diff_eq!(p, q, epsilon = 1e-4);
                    }
                }
            }
        }
    }
}
