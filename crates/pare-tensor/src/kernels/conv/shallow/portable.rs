//! Portable direct convolution: the reference for the AVX-512 kernel, and its code for border
//! pixels (windows clipped by `same` padding).
//!
//! Fixed 16-lane arrays keep the lane loops auto-vectorisable; products and sums are separate
//! operations (no fused multiply-add, which is a slow library call on targets without FMA).

use super::{Geometry, LANES, Lanes};
use crate::graph::Activation;
use crate::kernels::conv::Window;

/// One output pixel `(oy, ox)`, every channel block, into `pixel` (`oc` floats).
pub(super) fn forward_pixel(
    geo: &Geometry,
    src: &[f32],
    pixel: &mut [f32],
    (oy, ox): (usize, usize),
    packed: &[Lanes],
    bias: &[Lanes],
    act: Activation,
) {
    let (win, plen, c) = (&geo.win, geo.plen, geo.win.c);
    let (ky0, ky1, iy0) = geo.rows[oy];
    let (kx0, kx1, ix0) = geo.cols[ox];
    let span = (kx1 - kx0) * c;
    for (b, out_block) in pixel.chunks_mut(LANES).enumerate() {
        let kb = &packed[b * plen..][..plen];
        let mut acc = bias[b];
        for (dy, ky) in (ky0..ky1).enumerate() {
            let xrow = &src[((iy0 + dy) * win.w + ix0) * c..][..span];
            let krow = &kb[(ky * win.kw + kx0) * c..][..span];
            for (&xv, kv) in xrow.iter().zip(krow) {
                for l in 0..LANES {
                    acc[l] += xv * kv[l];
                }
            }
        }
        for a in acc.iter_mut() {
            *a = act.apply(*a);
        }
        out_block.copy_from_slice(&acc[..out_block.len()]);
    }
}

/// One image: `dst` is `[oh, ow, oc]`, `src` `[h, w, c]`.
pub(super) fn forward_image(
    geo: &Geometry,
    src: &[f32],
    dst: &mut [f32],
    packed: &[Lanes],
    bias: &[Lanes],
    act: Activation,
) {
    let oc = geo.oc;
    for oy in 0..geo.win.oh {
        for ox in 0..geo.win.ow {
            let pixel = &mut dst[(oy * geo.win.ow + ox) * oc..][..oc];
            forward_pixel(geo, src, pixel, (oy, ox), packed, bias, act);
        }
    }
}

/// Multiplies an output gradient `g` by the activation's derivative (read off `y`) in place.
pub(super) fn activation_grad(g: &mut [f32], y: &[f32], act: Activation) {
    for (gv, &yv) in g.iter_mut().zip(y) {
        *gv = act.backprop(*gv, yv);
    }
}

/// Adds output pixel `(oy, ox)`'s share of the kernel and bias gradients, `gk[p] += patch[p] ·
/// gz` and `gb += gz`, for its (already activation-multiplied) gradient `gz` (`oc` floats).
pub(super) fn filter_grad_pixel(
    geo: &Geometry,
    src: &[f32],
    gz: &[f32],
    (oy, ox): (usize, usize),
    gk: &mut [Lanes],
    gb: &mut [Lanes],
) {
    let (win, plen, c) = (&geo.win, geo.plen, geo.win.c);
    let (ky0, ky1, iy0) = geo.rows[oy];
    let (kx0, kx1, ix0) = geo.cols[ox];
    let span = (kx1 - kx0) * c;
    for (b, gblk) in gz.chunks(LANES).enumerate() {
        let mut z: Lanes = [0.0; LANES];
        z[..gblk.len()].copy_from_slice(gblk);
        for (s, v) in gb[b].iter_mut().zip(&z) {
            *s += v;
        }
        let kb = &mut gk[b * plen..][..plen];
        for (dy, ky) in (ky0..ky1).enumerate() {
            let xrow = &src[((iy0 + dy) * win.w + ix0) * c..][..span];
            let krow = &mut kb[(ky * win.kw + kx0) * c..][..span];
            for (&xv, kv) in xrow.iter().zip(krow.iter_mut()) {
                for l in 0..LANES {
                    kv[l] += xv * z[l];
                }
            }
        }
    }
}

/// One image's kernel and bias gradients, added to `gk` (`[blocks][plen]` lanes) and `gb`
/// (`[blocks]`), from its activation-multiplied output gradient `gz`.
pub(super) fn filter_grad_image(
    geo: &Geometry,
    src: &[f32],
    gz: &[f32],
    gk: &mut [Lanes],
    gb: &mut [Lanes],
) {
    let oc = geo.oc;
    for oy in 0..geo.win.oh {
        for ox in 0..geo.win.ow {
            let at = (oy * geo.win.ow + ox) * oc;
            filter_grad_pixel(geo, src, &gz[at..at + oc], (oy, ox), gk, gb);
        }
    }
}

/// One image of the fused convolution + max-pool: `dst` and `arg` are `[ph, pw, oc]`, the
/// pooled outputs and the winning window position `dy · kw + dx` of each (first maximum wins).
pub(super) fn forward_pooled_image(
    geo: &Geometry,
    pool: &Window,
    src: &[f32],
    dst: &mut [f32],
    arg: &mut [u8],
    (packed, bias): (&[Lanes], &[Lanes]),
    act: Activation,
) {
    let oc = geo.oc;
    let mut v = vec![0.0f32; oc];
    for py in 0..pool.oh {
        for px in 0..pool.ow {
            let at = (py * pool.ow + px) * oc;
            let (o, a) = (&mut dst[at..at + oc], &mut arg[at..at + oc]);
            for dy in 0..pool.kh {
                for dx in 0..pool.kw {
                    let pixel = (py * pool.kh + dy, px * pool.kw + dx);
                    forward_pixel(geo, src, &mut v, pixel, packed, bias, act);
                    let t = (dy * pool.kw + dx) as u8;
                    if t == 0 {
                        o.copy_from_slice(&v);
                        a.fill(0);
                    }
                    for ((o, a), &v) in o.iter_mut().zip(a.iter_mut()).zip(&v) {
                        let better = v > *o;
                        *o = if better { v } else { *o };
                        *a = if better { t } else { *a };
                    }
                }
            }
        }
    }
}

/// One image's kernel and bias gradients of the fused convolution + max-pool, added to `gk`
/// (`[blocks][plen]` lanes) and `gb` (`[blocks]`): each pooled output's gradient `gp`
/// (activation derivative applied) goes to the patch of the convolution output that won.
pub(super) fn filter_grad_pooled_image(
    geo: &Geometry,
    pool: &Window,
    src: &[f32],
    gp: &[f32],
    arg: &[u8],
    (gk, gb): (&mut [Lanes], &mut [Lanes]),
) {
    let (oc, plen) = (geo.oc, geo.plen);
    for py in 0..pool.oh {
        for px in 0..pool.ow {
            let at = (py * pool.ow + px) * oc;
            for o in 0..oc {
                let t = arg[at + o] as usize;
                let (dy, dx) = (t / pool.kw, t % pool.kw);
                let base = geo.base(py * pool.kh + dy, px * pool.kw + dx);
                let z = gp[at + o];
                let (b, l) = (o / LANES, o % LANES);
                gb[b][l] += z;
                for (p, &off) in geo.xoff.iter().enumerate() {
                    gk[b * plen + p][l] += src[base + off] * z;
                }
            }
        }
    }
}
