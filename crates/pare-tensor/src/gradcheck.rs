//! Central-difference gradient checking, shared by every crate's op tests.

use crate::graph::{Graph, Var};
use crate::nn::Param;
use ndarray::ArrayD;

/// Largest relative error between the analytic gradient of `f` and central differences, over
/// every element of every input. `f` builds a scalar from the inputs (recorded as parameters
/// named `p0`, `p1`, ...). Differences are taken in f32 with step `h`, compared relative to
/// `max(|analytic|, |numeric|, 1e-2)`: a wrong gradient gives errors near 1, a right one below
/// about 1e-2.
pub fn max_gradient_error(
    inputs: &[ArrayD<f32>],
    h: f32,
    f: &dyn Fn(&mut Graph, &[Var]) -> Var,
) -> f32 {
    let params: Vec<Param> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| Param::new(format!("p{i}"), v.clone()))
        .collect();
    let eval = |params: &[Param]| -> f64 {
        let mut g = Graph::new();
        let vars: Vec<Var> = params.iter().map(|p| g.param(p)).collect();
        let out = f(&mut g, &vars);
        g.value(out).iter().map(|&v| v as f64).sum()
    };
    let mut g = Graph::new();
    let vars: Vec<Var> = params.iter().map(|p| g.param(p)).collect();
    let out = f(&mut g, &vars);
    let grads = g.backward(out);
    let mut worst = 0f32;
    for i in 0..params.len() {
        let zero = ArrayD::zeros(params[i].value.raw_dim());
        let analytic = grads.get(&params[i].name).unwrap_or(&zero).clone();
        for j in 0..params[i].value.len() {
            let mut p = params.clone();
            let orig = p[i].value.as_slice().expect("contiguous")[j];
            p[i].value.as_slice_mut().expect("contiguous")[j] = orig + h;
            let up = eval(&p);
            p[i].value.as_slice_mut().expect("contiguous")[j] = orig - h;
            let down = eval(&p);
            let numeric = ((up - down) / (2.0 * h as f64)) as f32;
            let a = analytic.as_slice().expect("contiguous")[j];
            let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1e-2);
            worst = worst.max(err);
        }
    }
    worst
}

/// A two-class toy image set a tiny CNN separates in a few steps: class 0 lights the top half of
/// a 28x28 image, class 1 the bottom half, at `level` plus uniform noise in `[0, noise)`.
/// Labels alternate 0, 1, 0, ...; the noise comes from `seed`. Shared by the tests of every
/// crate that trains something.
pub fn toy_halves(n: usize, seed: u64, level: f32, noise: f32) -> (ArrayD<f32>, Vec<usize>) {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = ndarray::Array4::<f32>::zeros((n, 28, 28, 1));
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let label = i % 2;
        for r in 0..28 {
            for c in 0..28 {
                let on = (r < 14) == (label == 0);
                x[[i, r, c, 0]] = if on { level } else { 0.0 } + rng.random_range(0.0..noise);
            }
        }
        y.push(label);
    }
    (x.into_dyn(), y)
}
