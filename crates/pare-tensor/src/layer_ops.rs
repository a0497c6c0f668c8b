//! Graph ops of the layers of a modern CNN: batch normalisation, dropout, average and global
//! average pooling, depthwise convolution and the element-wise activations that do not fuse
//! into a conv or dense node (sigmoid, tanh, ReLU6, hard-swish).
//!
//! Two pieces of per-graph state serve them, both as Keras has them:
//! - the **training flag of the layers** (Keras' `training` argument): batch statistics and
//!   dropout on a [`Graph::new`] graph, moving statistics and no dropout on a
//!   [`Graph::inference`] one; [`Graph::set_training_layers`] changes it (e.g. fine-tuning
//!   with frozen BatchNorm statistics);
//! - **state updates**: a training forward pass of a BatchNorm records the new moving mean and
//!   variance with [`Graph::record_state`]; they are applied to the model after the step
//!   ([`crate::Sequential::apply_state_updates`], which `fit` calls after the optimizer's
//!   update), so a diverged step changes nothing.

use crate::graph::{Activation, Graph, Op, Var, four};
use crate::kernels::avgpool::{avg_pool, global_avg_pool};
use crate::kernels::buffers;
use crate::kernels::conv::{Padding, Window};
use crate::kernels::depthwise::depthwise_conv2d;
use crate::kernels::elementwise;
use ndarray::{ArrayD, IxDyn, Zip};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// A batch's per-channel mean and biased variance, as [`Graph::batch_norm`] returns them.
pub type BatchMoments = (Vec<f32>, Vec<f32>);

/// An element-wise activation recorded as its own node (see [`Graph::pointwise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pointwise {
    /// `1 / (1 + e^−x)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `min(max(x, 0), 6)` (MobileNet's ReLU6).
    Relu6,
    /// `x · relu6(x + 3) / 6` (MobileNetV3's hard-swish, Keras' `hard_swish`).
    HardSwish,
}

impl Pointwise {
    /// The function at one value.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Pointwise::Sigmoid => {
                // Split by sign so neither branch overflows exp for large |v|.
                if v >= 0.0 {
                    1.0 / (1.0 + (-v).exp())
                } else {
                    let e = v.exp();
                    e / (1.0 + e)
                }
            }
            Pointwise::Tanh => v.tanh(),
            Pointwise::Relu6 => v.clamp(0.0, 6.0),
            Pointwise::HardSwish => v * (v + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }

    /// The derivative at input `x` with output `y`. At the kinks (0 and 6 for ReLU6, ±3 for
    /// hard-swish) it takes the value TensorFlow's gradient takes: the flat side for ReLU6
    /// (`x > 0 && x < 6`), and hard-swish's `relu6` gradient likewise.
    #[inline]
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            Pointwise::Sigmoid => y * (1.0 - y),
            Pointwise::Tanh => 1.0 - y * y,
            Pointwise::Relu6 => {
                if x > 0.0 && x < 6.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Pointwise::HardSwish => {
                // d/dx [x · r(x + 3) / 6] = r(x + 3) / 6 + x · r'(x + 3) / 6.
                let inside = x > -3.0 && x < 3.0;
                (x + 3.0).clamp(0.0, 6.0) / 6.0 + if inside { x / 6.0 } else { 0.0 }
            }
        }
    }

    pub(crate) fn backprop_inplace(self, g: &mut ArrayD<f32>, x: &ArrayD<f32>, y: &ArrayD<f32>) {
        Zip::from(g)
            .and(x)
            .and(y)
            .for_each(|g, &x, &y| *g *= self.derivative(x, y));
    }
}

/// The seed of a graph nobody seeded: distinct per graph, so dropout masks differ between the
/// steps of a hand-written loop. `fit` seeds its graphs from its own seed for reproducible runs.
pub(crate) fn default_seed(tag: u32) -> u64 {
    splitmix(0x5EED_0000_0000_0000 ^ tag as u64)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Floats per block of the BatchNorm passes (64 KiB, rounded down to whole pixels): the unit of
/// parallel work and of the partial sums, fixed by the shape alone so that the partials, added
/// in block order, do not depend on the thread count.
const BN_BLOCK: usize = 1 << 14;

fn bn_block(c: usize) -> usize {
    (BN_BLOCK / c.max(1)).max(1) * c.max(1)
}

/// Pixels whose per-channel sums are taken in f32 before they join the f64 totals: short
/// enough that f32 loses nothing that matters, long enough that the conversions cost little
/// and the f32 loop vectorises over the channels.
const F32_RUN: usize = 64;

/// Adds `acc32` into `acc64` and clears it.
fn flush(acc64: &mut [f64], acc32: &mut [f32]) {
    for (d, s) in acc64.iter_mut().zip(acc32.iter_mut()) {
        *d += *s as f64;
        *s = 0.0;
    }
}

/// Per-channel mean and biased variance over every axis but the last (what Keras' BatchNorm
/// normalises with and folds into its moving variance), in one pass over the data: sums of
/// `x − s` and `(x − s)²` with `s` the first pixel's value, a shift that keeps the variance
/// free of the cancellation a plain sum of squares suffers when the mean is large; runs of
/// `F32_RUN` pixels are summed in f32, the runs in f64.
pub fn channel_moments(x: &ArrayD<f32>) -> (Vec<f32>, Vec<f32>) {
    let c = *x.shape().last().expect("channel_moments: scalar input");
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let rows = (xs.len() / c.max(1)).max(1) as f64;
    if xs.is_empty() || c == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let shift = &xs[..c];
    let parts = elementwise::map_blocks(xs.len(), bn_block(c), |r| {
        let (mut s, mut q) = (vec![0f64; c], vec![0f64; c]);
        let (mut s32, mut q32) = (vec![0f32; c], vec![0f32; c]);
        for run in xs[r].chunks(F32_RUN * c) {
            for px in run.chunks_exact(c) {
                let (px, sh) = (&px[..c], &shift[..c]);
                let (s32, q32) = (&mut s32[..c], &mut q32[..c]);
                for k in 0..c {
                    let d = px[k] - sh[k];
                    s32[k] += d;
                    q32[k] += d * d;
                }
            }
            flush(&mut s, &mut s32);
            flush(&mut q, &mut q32);
        }
        (s, q)
    });
    let (mut s, mut q) = (vec![0f64; c], vec![0f64; c]);
    for (ps, pq) in parts {
        for k in 0..c {
            s[k] += ps[k];
            q[k] += pq[k];
        }
    }
    let mean = (0..c)
        .map(|k| (shift[k] as f64 + s[k] / rows) as f32)
        .collect();
    let var = (0..c)
        .map(|k| {
            let m = s[k] / rows;
            (q[k] / rows - m * m).max(0.0) as f32
        })
        .collect();
    (mean, var)
}

/// What the backward pass of a BatchNorm node needs besides its gradient: its input, output
/// and statistics. The normalised input is recomputed from `x` rather than kept, which saves
/// a full activation of memory and its write and read per step.
pub(crate) struct BatchNormSaved<'a> {
    /// The input `x`.
    pub x: &'a ArrayD<f32>,
    /// The node's output `act(γ·x̂ + β)`, read for the activation's derivative.
    pub y: &'a ArrayD<f32>,
    /// Mean per channel (batch or moving).
    pub mean: &'a [f32],
    /// `1 / sqrt(var + ε)` per channel.
    pub inv_std: &'a [f32],
    /// Scale `γ`.
    pub gamma: &'a ArrayD<f32>,
    /// The activation fused after the normalisation.
    pub act: Activation,
    /// Whether the statistics are the batch's own.
    pub batch_stats: bool,
}

/// Gradients of [`Graph::batch_norm`]: `(dx if asked, dγ, dβ)`, `dx` computed in `g`'s own
/// buffer. With batch statistics the mean and variance depend on `x`, which gives the usual
/// `dx = γ·inv_std / N · (N·g − Σg − x̂·Σ(g·x̂))` (Ioffe & Szegedy 2015, §3); with moving
/// statistics `dx = γ·inv_std·g`. `g` is first multiplied by the fused activation's
/// derivative, read off the output. Two passes: the per-channel sums, then `dx`.
pub(crate) fn batch_norm_backward(
    g: ArrayD<f32>,
    saved: &BatchNormSaved<'_>,
    need_x: bool,
) -> (Option<ArrayD<f32>>, ArrayD<f32>, ArrayD<f32>) {
    let (x, y, c) = (saved.x, saved.y, saved.inv_std.len());
    let g = if g.is_standard_layout() {
        g
    } else {
        let s = buffers::clone_array(&g);
        buffers::give_array(g);
        s
    };
    let xs = x.as_slice().expect("batch_norm backward: standard layout");
    let ys = y.as_slice().expect("batch_norm backward: standard layout");
    let gam = saved.gamma.as_slice().expect("1-D");
    // One monomorphised loop per activation, so the derivative is a vector select.
    let (dx, sum_g, sum_gx) = match saved.act {
        Activation::Linear => bn_backward_passes(g, xs, xs, saved, gam, need_x, |g, _| g),
        Activation::Relu => bn_backward_passes(g, xs, ys, saved, gam, need_x, |g, y| {
            if y <= 0.0 { 0.0 } else { g }
        }),
        Activation::LeakyRelu(a) => {
            bn_backward_passes(g, xs, ys, saved, gam, need_x, move |g, y| {
                if y <= 0.0 { g * a } else { g }
            })
        }
    };
    let dgamma = ArrayD::from_shape_vec(IxDyn(&[c]), sum_gx.iter().map(|&v| v as f32).collect())
        .expect("[c]");
    let dbeta = ArrayD::from_shape_vec(IxDyn(&[c]), sum_g.iter().map(|&v| v as f32).collect())
        .expect("[c]");
    (dx, dgamma, dbeta)
}

/// The two passes of [`batch_norm_backward`] with the activation's derivative `bp(g, y)`
/// (`y` is `xs` itself for no activation, which the derivative ignores): the per-channel
/// sums of `g'` and `g'·x̂`, then `dx` in `g`'s buffer. Returns `(dx, Σg', Σg'·x̂)`.
#[allow(clippy::too_many_arguments)]
fn bn_backward_passes(
    mut g: ArrayD<f32>,
    xs: &[f32],
    ys: &[f32],
    saved: &BatchNormSaved<'_>,
    gam: &[f32],
    need_x: bool,
    bp: impl Fn(f32, f32) -> f32 + Sync + Copy,
) -> (Option<ArrayD<f32>>, Vec<f64>, Vec<f64>) {
    let (mean, inv_std, batch_stats) = (saved.mean, saved.inv_std, saved.batch_stats);
    let c = inv_std.len();
    let len = xs.len();
    let block = bn_block(c);
    let parts = {
        let gs = g.as_slice().expect("standard layout");
        elementwise::map_blocks(len, block, |r| {
            let (mut sg, mut sgx) = (vec![0f64; c], vec![0f64; c]);
            let (mut sg32, mut sgx32) = (vec![0f32; c], vec![0f32; c]);
            let run = F32_RUN * c;
            for ((gr, xr), yr) in gs[r.clone()]
                .chunks(run)
                .zip(xs[r.clone()].chunks(run))
                .zip(ys[r].chunks(run))
            {
                for ((gp, xp), yp) in gr
                    .chunks_exact(c)
                    .zip(xr.chunks_exact(c))
                    .zip(yr.chunks_exact(c))
                {
                    let (gp, xp, yp) = (&gp[..c], &xp[..c], &yp[..c]);
                    let (m, is) = (&mean[..c], &inv_std[..c]);
                    let (a, b) = (&mut sg32[..c], &mut sgx32[..c]);
                    for k in 0..c {
                        let gv = bp(gp[k], yp[k]);
                        a[k] += gv;
                        b[k] += gv * ((xp[k] - m[k]) * is[k]);
                    }
                }
                flush(&mut sg, &mut sg32);
                flush(&mut sgx, &mut sgx32);
            }
            (sg, sgx)
        })
    };
    let (mut sum_g, mut sum_gx) = (vec![0f64; c], vec![0f64; c]);
    for (pg, pgx) in parts {
        for k in 0..c {
            sum_g[k] += pg[k];
            sum_gx[k] += pgx[k];
        }
    }
    if !need_x {
        buffers::give_array(g);
        return (None, sum_g, sum_gx);
    }
    let n = (len / c.max(1)).max(1) as f64;
    let scale: Vec<f32> = (0..c).map(|k| gam[k] * inv_std[k]).collect();
    // With moving statistics the mean and variance do not depend on x: the sums' terms drop.
    let (mean_g, mean_gx): (Vec<f32>, Vec<f32>) = if batch_stats {
        (
            sum_g.iter().map(|&s| (s / n) as f32).collect(),
            sum_gx.iter().map(|&s| (s / n) as f32).collect(),
        )
    } else {
        (vec![0.0; c], vec![0.0; c])
    };
    let gs = g.as_slice_mut().expect("standard layout");
    elementwise::for_blocks_mut(gs, block, |bi, gb| {
        let r = bi * block..bi * block + gb.len();
        for ((gp, xp), yp) in gb
            .chunks_exact_mut(c)
            .zip(xs[r.clone()].chunks_exact(c))
            .zip(ys[r].chunks_exact(c))
        {
            let (gp, xp, yp) = (&mut gp[..c], &xp[..c], &yp[..c]);
            let (m, is, sc) = (&mean[..c], &inv_std[..c], &scale[..c]);
            let (mg, mgx) = (&mean_g[..c], &mean_gx[..c]);
            for k in 0..c {
                let gv = bp(gp[k], yp[k]);
                let xh = (xp[k] - m[k]) * is[k];
                gp[k] = sc[k] * (gv - mg[k] - xh * mgx[k]);
            }
        }
    });
    (Some(g), sum_g, sum_gx)
}

impl Graph {
    /// True when layers run as in training (Keras' `training=True`): BatchNorm normalises with
    /// the batch's statistics and records new moving statistics, Dropout drops. On by default
    /// for [`Graph::new`], off for [`Graph::inference`].
    pub fn training_layers(&self) -> bool {
        self.layers_training
    }

    /// Sets the layers' training flag (see [`Graph::training_layers`]): off on a training graph
    /// fine-tunes with frozen BatchNorm statistics and no dropout, as Keras does for a layer
    /// called with `training=False`.
    pub fn set_training_layers(&mut self, on: bool) {
        self.layers_training = on;
    }

    /// Seeds the graph's random ops (dropout). Each random op draws from its own stream, made
    /// from this seed, the op's own seed and its position among the graph's random ops, so a
    /// graph seeded the same way draws the same masks. Unseeded graphs get a seed of their own.
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
        self.random_ops = 0;
    }

    /// Records a new value for the non-trainable tensor `name` (a moving statistic), to be
    /// applied after the step.
    pub fn record_state(&mut self, name: impl Into<String>, value: ArrayD<f32>) {
        self.state_updates.push((name.into(), value));
    }

    /// The state updates recorded so far, in order.
    pub fn state_updates(&self) -> &[(String, ArrayD<f32>)] {
        &self.state_updates
    }

    /// Takes the state updates recorded so far, leaving none.
    pub fn take_state_updates(&mut self) -> Vec<(String, ArrayD<f32>)> {
        std::mem::take(&mut self.state_updates)
    }

    /// Batch normalisation over the last axis:
    /// `γ · (x − μ) / sqrt(σ² + ε) + β`, with μ, σ² the batch's per-channel mean and biased
    /// variance when [`Graph::training_layers`] is on, else `moving_mean`, `moving_var`.
    /// Returns the output and, with batch statistics, `(μ, σ²)` for the moving averages.
    ///
    /// # Panics
    /// If `gamma`, `beta` or the moving statistics are not 1-D of the last axis' length.
    pub fn batch_norm(
        &mut self,
        x: Var,
        (gamma, beta): (Var, Var),
        (moving_mean, moving_var): (&ArrayD<f32>, &ArrayD<f32>),
        epsilon: f32,
    ) -> (Var, Option<BatchMoments>) {
        let xv = self.value(x);
        let c = *xv.shape().last().expect("batch_norm: scalar input");
        for (what, v) in [
            ("gamma", self.value(gamma)),
            ("beta", self.value(beta)),
            ("moving mean", moving_mean),
            ("moving variance", moving_var),
        ] {
            assert!(
                v.ndim() == 1 && v.len() == c,
                "batch_norm: {what} {:?} for input {:?}",
                v.shape(),
                xv.shape()
            );
        }
        let batch_stats = self.layers_training;
        let (mean, var) = if batch_stats {
            channel_moments(xv)
        } else {
            (
                moving_mean.iter().copied().collect(),
                moving_var.iter().copied().collect(),
            )
        };
        let inv_std: Vec<f32> = var.iter().map(|&v| 1.0 / (v + epsilon).sqrt()).collect();
        // Graph values are standard layout (see `Graph::push`).
        let xs = xv.as_slice().expect("batch_norm: standard layout");
        let mut y = buffers::take_any(xs.len());
        let (gv, bv) = (self.value(gamma), self.value(beta));
        let (gs, bs) = (gv.as_slice().expect("1-D"), bv.as_slice().expect("1-D"));
        let scale: Vec<f32> = (0..c).map(|k| gs[k] * inv_std[k]).collect();
        let block = bn_block(c);
        elementwise::for_blocks_mut(&mut y, block, |bi, yb| {
            let xb = &xs[bi * block..bi * block + yb.len()];
            let (m, sc, b) = (&mean[..c], &scale[..c], &bs[..c]);
            for (o, xp) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                let (o, xp) = (&mut o[..c], &xp[..c]);
                for k in 0..c {
                    o[k] = (xp[k] - m[k]) * sc[k] + b[k];
                }
            }
        });
        let y = ArrayD::from_shape_vec(xv.raw_dim(), y).expect("shape");
        let op = Op::BatchNorm {
            x,
            gamma,
            beta,
            mean: mean.clone(),
            inv_std,
            batch_stats,
            act: Activation::Linear,
        };
        let out = self.push(op, y, &[x, gamma, beta]);
        (out, batch_stats.then_some((mean, var)))
    }

    /// Inverted dropout (Keras' `Dropout`): while [`Graph::training_layers`] is on, each element
    /// is kept with probability `1 − rate` and scaled by `1 / (1 − rate)`, so inference needs no
    /// rescaling; otherwise (or for `rate == 0`) `x` itself. `seed` tells apart the dropout ops
    /// of one graph (see [`Graph::set_seed`]).
    ///
    /// # Panics
    /// If `rate` is not in `[0, 1)` (layers check it when built).
    pub fn dropout(&mut self, x: Var, rate: f32, seed: u64) -> Var {
        assert!(
            (0.0..1.0).contains(&rate),
            "dropout: rate {rate} outside [0, 1)"
        );
        if !self.layers_training || rate == 0.0 {
            return x;
        }
        let stream = splitmix(self.seed ^ splitmix(seed ^ splitmix(self.random_ops)));
        self.random_ops += 1;
        let mut rng = StdRng::seed_from_u64(stream);
        let keep = 1.0 / (1.0 - rate);
        let mask = ArrayD::from_shape_simple_fn(self.value(x).raw_dim(), || {
            if rng.random::<f32>() < rate {
                0.0
            } else {
                keep
            }
        });
        self.mask_mul(x, mask)
    }

    /// NHWC average pool; padded positions are left out of each window's count (TensorFlow).
    ///
    /// # Panics
    /// If `x` is not 4-D or a `valid` window does not fit.
    pub fn avg_pool(
        &mut self,
        x: Var,
        pool: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> Var {
        let xv = self.value(x);
        let xs: [usize; 4] = xv.shape().try_into().expect("avg_pool: input must be NHWC");
        let win = Window::new(xs, pool, strides, padding)
            .unwrap_or_else(|| panic!("avg_pool: window {pool:?} does not fit input {xs:?}"));
        let y = avg_pool(four(xv), &win);
        self.push(Op::AvgPool { x, win }, y.into_dyn(), &[x])
    }

    /// Mean over height and width: NHWC `[n, h, w, c]` to `[n, c]`.
    ///
    /// # Panics
    /// If `x` is not 4-D.
    pub fn global_avg_pool(&mut self, x: Var) -> Var {
        let xv = self.value(x);
        assert_eq!(
            xv.ndim(),
            4,
            "global_avg_pool: input {:?} is not NHWC",
            xv.shape()
        );
        let y = global_avg_pool(four(xv));
        self.push(Op::GlobalAvgPool(x), y.into_dyn(), &[x])
    }

    /// Depthwise convolution of `x [n, h, w, c]` with `kernel [kh, kw, c, m]` and an optional
    /// bias `[c·m]`.
    ///
    /// # Panics
    /// If the ranks or channel counts disagree, a `valid` window does not fit, or the bias
    /// length is not `c·m`.
    pub fn depthwise_conv2d(
        &mut self,
        x: Var,
        kernel: Var,
        bias: Option<Var>,
        strides: [usize; 2],
        padding: Padding,
    ) -> Var {
        let (xv, kv) = (self.value(x), self.value(kernel));
        let xs: [usize; 4] = xv
            .shape()
            .try_into()
            .expect("depthwise_conv2d: input must be NHWC");
        let ks: [usize; 4] = kv
            .shape()
            .try_into()
            .expect("depthwise_conv2d: kernel must be [kh, kw, c, m]");
        assert_eq!(
            xs[3], ks[2],
            "depthwise_conv2d: input {xs:?} vs kernel {ks:?}: channels differ"
        );
        let win = Window::new(xs, [ks[0], ks[1]], strides, padding)
            .unwrap_or_else(|| panic!("depthwise_conv2d: window {ks:?} does not fit input {xs:?}"));
        let b = bias.map(|b| self.value(b));
        let bs = b.map(|b| b.as_slice().expect("depthwise_conv2d: bias must be 1-D"));
        let y = depthwise_conv2d(four(xv), four(kv), bs, &win);
        let op = Op::DepthwiseConv2d {
            x,
            kernel,
            bias,
            win,
        };
        let mut inputs = vec![x, kernel];
        inputs.extend(bias);
        self.push(op, y.into_dyn(), &inputs)
    }

    /// An element-wise activation as its own node.
    pub fn pointwise(&mut self, x: Var, f: Pointwise) -> Var {
        let y = self.value(x).mapv(|v| f.apply(v));
        self.push(Op::Pointwise(x, f), y, &[x])
    }

    /// `1 / (1 + e^−x)`.
    pub fn sigmoid(&mut self, x: Var) -> Var {
        self.pointwise(x, Pointwise::Sigmoid)
    }

    /// `tanh x`.
    pub fn tanh(&mut self, x: Var) -> Var {
        self.pointwise(x, Pointwise::Tanh)
    }

    /// `min(max(x, 0), 6)`.
    pub fn relu6(&mut self, x: Var) -> Var {
        self.pointwise(x, Pointwise::Relu6)
    }

    /// `x · relu6(x + 3) / 6`.
    pub fn hard_swish(&mut self, x: Var) -> Var {
        self.pointwise(x, Pointwise::HardSwish)
    }
}
