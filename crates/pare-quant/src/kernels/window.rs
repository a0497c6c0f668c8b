//! Sliding-window int8 ops on NHWC tensors: im2col (for conv as GEMM) and max-pool, with
//! TensorFlow's `valid` / `same` padding.

use ndarray::{Array2, Array4, ArrayView4, ArrayViewMut2, ArrayViewMut4};

use crate::error::{QuantError, Result};

/// TensorFlow's padding modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// No padding: `out = ⌊(in − k) / s⌋ + 1`.
    #[default]
    Valid,
    /// `out = ⌈in / s⌉`, padded with `pad_total = max((out − 1)·s + k − in, 0)`, of which
    /// `pad_total / 2` before and the rest after.
    Same,
}

impl Padding {
    fn name(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
        }
    }
}

/// A 2-D window (conv kernel or pooling window) over the `h, w` axes of an NHWC tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window2d {
    /// Window height and width `[kh, kw]`.
    pub size: [usize; 2],
    /// Strides `[sh, sw]`.
    pub strides: [usize; 2],
    /// Padding mode.
    pub padding: Padding,
}

impl Window2d {
    /// A window of `size` with `strides` and `padding`.
    pub fn new(size: [usize; 2], strides: [usize; 2], padding: Padding) -> Self {
        Window2d {
            size,
            strides,
            padding,
        }
    }

    /// Output height and width for an NHWC input of shape `input` (`[n, h, w, c]`), and the
    /// padding before each (`[pad_top, pad_left]`).
    ///
    /// # Errors
    /// [`QuantError::InvalidWindow`] if the input is not 4-D or empty, a size or stride is 0,
    /// or (valid padding) the window is larger than the input.
    pub fn geometry(&self, input: &[usize]) -> Result<([usize; 2], [usize; 2])> {
        self.geometry_for("window", input)
    }

    /// [`geometry`](Self::geometry), naming `op` in the error.
    pub(crate) fn geometry_for(
        &self,
        op: &'static str,
        input: &[usize],
    ) -> Result<([usize; 2], [usize; 2])> {
        let err = || QuantError::InvalidWindow {
            op,
            input: input.to_vec(),
            window: self.size,
            strides: self.strides,
            padding: self.padding.name(),
        };
        if input.len() != 4 {
            return Err(err());
        }
        let mut out = [0; 2];
        let mut pad = [0; 2];
        for d in 0..2 {
            let (size, k, s) = (input[1 + d], self.size[d], self.strides[d]);
            if k == 0 || s == 0 || size == 0 {
                return Err(err());
            }
            (out[d], pad[d]) = match self.padding {
                Padding::Valid if size < k => return Err(err()),
                Padding::Valid => ((size - k) / s + 1, 0),
                Padding::Same => {
                    let o = size.div_ceil(s);
                    (o, ((o - 1) * s + k).saturating_sub(size) / 2)
                }
            };
        }
        Ok((out, pad))
    }
}

fn check_zero_point(zero_point: i32) -> Result<i8> {
    i8::try_from(zero_point).map_err(|_| QuantError::InvalidZeroPoint {
        channel: 0,
        zero_point,
        qmin: -128,
        qmax: 127,
    })
}

/// Copies `src[s..s + len]` to `out[d..d + len]` (`len <= W`) as one fixed `W`-byte block
/// when both slices have room for it, else exactly. im2col spans are often a few bytes
/// (`kw · c` with one input channel) and max-pool pixels a few channels; a `memcpy` call per
/// span would cost more than the copy. The bytes written past `len` belong to later spans,
/// which the caller writes afterwards (it fills `out` in increasing order).
#[inline(always)]
fn copy_block<const W: usize>(out: &mut [i8], d: usize, src: &[i8], s: usize, len: usize) {
    if d + W <= out.len() && s + W <= src.len() {
        let block: [i8; W] = src[s..s + W].try_into().expect("copy_block: W-byte slice");
        out[d..d + W].copy_from_slice(&block);
    } else {
        copy_exact(out, d, src, s, len);
    }
}

/// The exact copy at the end of a buffer. Out of line on purpose: inlined, the compiler merges
/// it with the fixed-size copy into one variable-length `memcpy` call.
#[cold]
#[inline(never)]
fn copy_exact(out: &mut [i8], d: usize, src: &[i8], s: usize, len: usize) {
    out[d..d + len].copy_from_slice(&src[s..s + len]);
}

/// im2col for an int8 NHWC input `[n, h, w, c]`: one row per output pixel (in `n, oy, ox`
/// order), each the patch in `(ky, kx, c)` order — matching a `[kh, kw, in, out]` kernel
/// reshaped to `[kh·kw·in, out]`. Positions in the padding hold `zero_point`, the int8 code of
/// real 0, so they contribute nothing after the zero-point correction.
///
/// # Errors
/// If the window does not fit the input or `zero_point` is outside [−128, 127].
pub fn im2col_i8(
    input: ArrayView4<'_, i8>,
    window: &Window2d,
    zero_point: i32,
) -> Result<Array2<i8>> {
    let ([oh, ow], _) = window.geometry_for("im2col_i8", input.shape())?;
    let (n, _, _, c) = input.dim();
    let mut out = Array2::zeros((n * oh * ow, window.size[0] * window.size[1] * c));
    im2col_i8_into(input, window, zero_point, out.view_mut())?;
    Ok(out)
}

/// [`im2col_i8`] into a preallocated, row-major `[n·oh·ow, kh·kw·c]` output.
///
/// # Errors
/// As [`im2col_i8`], or if `out` has another shape or is not contiguous.
pub fn im2col_i8_into(
    input: ArrayView4<'_, i8>,
    window: &Window2d,
    zero_point: i32,
    mut out: ArrayViewMut2<'_, i8>,
) -> Result<()> {
    let zp = check_zero_point(zero_point)?;
    let ([oh, ow], [pt, pl]) = window.geometry_for("im2col_i8", input.shape())?;
    let (n, h, w, c) = input.dim();
    let ([kh, kw], [sh, sw]) = (window.size, window.strides);
    let row_len = kh * kw * c;
    if out.dim() != (n * oh * ow, row_len) {
        return Err(QuantError::ShapeMismatch {
            op: "im2col_i8 (output)",
            expected: vec![n * oh * ow, row_len],
            found: out.shape().to_vec(),
        });
    }
    let out = out.as_slice_mut().ok_or(QuantError::NotContiguous {
        what: "im2col output",
    })?;
    let src = input.as_standard_layout();
    let src = src
        .as_slice()
        .expect("im2col_i8: standard-layout array is contiguous");
    let g = PatchGeometry {
        n,
        h,
        w,
        c,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        pt,
        pl,
        zp,
    };
    im2col_dispatch(&g, src, out, true);
    Ok(())
}

/// [`im2col_i8`] for one input geometry, prepared once: the AVX-512 VBMI path's index tables
/// are built here rather than on every call (an inference engine keeps one per conv layer).
#[derive(Debug, Clone)]
pub struct Im2col {
    window: Window2d,
    input: [usize; 3],
    #[cfg(target_arch = "x86_64")]
    tables: Option<super::window_avx512::Tables>,
}

impl Im2col {
    /// Prepares `window` over NHWC examples of shape `input = [h, w, c]`.
    ///
    /// # Errors
    /// If the window does not fit the input.
    pub fn new(window: Window2d, input: [usize; 3]) -> Result<Self> {
        let [h, w, c] = input;
        let ([oh, ow], [pt, pl]) = window.geometry_for("Im2col::new", &[1, h, w, c])?;
        let g = PatchGeometry {
            n: 1,
            h,
            w,
            c,
            oh,
            ow,
            kh: window.size[0],
            kw: window.size[1],
            sh: window.strides[0],
            sw: window.strides[1],
            pt,
            pl,
            zp: 0,
        };
        #[cfg(target_arch = "x86_64")]
        let tables = (super::window_avx512::available() && super::window_avx512::fits(&g))
            .then(|| super::window_avx512::Tables::new(&g));
        #[cfg(not(target_arch = "x86_64"))]
        let _ = g;
        Ok(Im2col {
            window,
            input,
            #[cfg(target_arch = "x86_64")]
            tables,
        })
    }

    /// The window it was prepared for.
    pub(crate) fn window(&self) -> &Window2d {
        &self.window
    }

    /// The same as [`im2col_i8_into`]`(input, window, zero_point, out)`, bit for bit.
    ///
    /// # Errors
    /// If `input` is not `[n, h, w, c]` with the prepared `h, w, c`, `zero_point` is outside
    /// [−128, 127], or `out` has another shape than `[n·oh·ow, kh·kw·c]` or is not contiguous.
    pub fn run(
        &self,
        input: ArrayView4<'_, i8>,
        zero_point: i32,
        mut out: ArrayViewMut2<'_, i8>,
    ) -> Result<()> {
        let zp = check_zero_point(zero_point)?;
        let (n, h, w, c) = input.dim();
        if [h, w, c] != self.input {
            return Err(QuantError::ShapeMismatch {
                op: "Im2col::run (input)",
                expected: vec![n, self.input[0], self.input[1], self.input[2]],
                found: input.shape().to_vec(),
            });
        }
        let window = &self.window;
        let ([oh, ow], [pt, pl]) = window.geometry_for("Im2col::run", input.shape())?;
        let row_len = window.size[0] * window.size[1] * c;
        if out.dim() != (n * oh * ow, row_len) {
            return Err(QuantError::ShapeMismatch {
                op: "Im2col::run (output)",
                expected: vec![n * oh * ow, row_len],
                found: out.shape().to_vec(),
            });
        }
        let out = out.as_slice_mut().ok_or(QuantError::NotContiguous {
            what: "im2col output",
        })?;
        let src = input.as_standard_layout();
        let src = src
            .as_slice()
            .expect("Im2col::run: standard-layout array is contiguous");
        let g = PatchGeometry {
            n,
            h,
            w,
            c,
            oh,
            ow,
            kh: window.size[0],
            kw: window.size[1],
            sh: window.strides[0],
            sw: window.strides[1],
            pt,
            pl,
            zp,
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = &self.tables {
            super::window_avx512::im2col_with(&g, t, src, out);
            return Ok(());
        }
        im2col_dispatch(&g, src, out, true);
        Ok(())
    }
}

/// Runs the AVX-512 VBMI im2col when allowed, available and fitting, else the portable one.
pub(super) fn im2col_dispatch(g: &PatchGeometry, src: &[i8], out: &mut [i8], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd && super::window_avx512::available() && super::window_avx512::fits(g) {
        super::window_avx512::im2col(g, src, out);
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    match g.kw * g.c {
        0 => {}
        1..=8 => patches::<8>(g, src, out),
        9..=16 => patches::<16>(g, src, out),
        17..=32 => patches::<32>(g, src, out),
        _ => patches::<0>(g, src, out),
    }
}

/// Shapes of one im2col call: input `[n, h, w, c]`, output `oh × ow` patches of a `kh × kw`
/// window with strides `sh, sw`, padding `pt` (top) and `pl` (left), padding value `zp`.
pub(super) struct PatchGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pt: usize,
    pub pl: usize,
    pub zp: i8,
}

/// Writes every patch row; spans of `kw · c <= W` bytes move as `W`-byte blocks (`W = 0`:
/// plain copies).
fn patches<const W: usize>(g: &PatchGeometry, src: &[i8], out: &mut [i8]) {
    let (c, span) = (g.c, g.kw * g.c);
    let row = g.kh * span;
    let mut d = 0; // start of the current patch row in `out`
    for b in 0..g.n {
        for oy in 0..g.oh {
            let inside_y = oy * g.sh >= g.pt && oy * g.sh - g.pt + g.kh <= g.h;
            for ox in 0..g.ow {
                let ix0 = (ox * g.sw) as isize - g.pl as isize;
                let inside_x = ix0 >= 0 && ix0 as usize + g.kw <= g.w;
                if inside_x && inside_y && W != 0 {
                    // The whole window is inside the input: kh spans, one input row apart.
                    let base = ((b * g.h + oy * g.sh - g.pt) * g.w + ix0 as usize) * c;
                    for ky in 0..g.kh {
                        copy_block::<W>(out, d + ky * span, src, base + ky * g.w * c, span);
                    }
                    d += row;
                    continue;
                }
                for ky in 0..g.kh {
                    let dk = d + ky * span;
                    let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                    if iy < 0 || iy >= g.h as isize {
                        out[dk..dk + span].fill(g.zp);
                        continue;
                    }
                    let line = (b * g.h + iy as usize) * g.w * c;
                    if inside_x {
                        let s = line + ix0 as usize * c;
                        if W == 0 {
                            out[dk..dk + span].copy_from_slice(&src[s..s + span]);
                        } else {
                            copy_block::<W>(out, dk, src, s, span);
                        }
                        continue;
                    }
                    // A window row across the left or right border: channel by channel.
                    for kx in 0..g.kw {
                        let ix = ix0 + kx as isize;
                        let dx = dk + kx * c;
                        if ix < 0 || ix >= g.w as isize {
                            out[dx..dx + c].fill(g.zp);
                        } else {
                            let s = line + ix as usize * c;
                            out[dx..dx + c].copy_from_slice(&src[s..s + c]);
                        }
                    }
                }
                d += row;
            }
        }
    }
}

/// Max-pool over an int8 NHWC input, as TensorFlow's `MaxPool`: padding positions are ignored
/// (never the maximum), so `same` padding needs no zero point. Max commutes with the monotone
/// int8 → real map, so pooling codes pools the real values.
///
/// # Errors
/// If the window does not fit the input.
pub fn max_pool_i8(input: ArrayView4<'_, i8>, window: &Window2d) -> Result<Array4<i8>> {
    let ([oh, ow], _) = window.geometry_for("max_pool_i8", input.shape())?;
    let (n, _, _, c) = input.dim();
    let mut out = Array4::zeros((n, oh, ow, c));
    max_pool_i8_into(input, window, out.view_mut())?;
    Ok(out)
}

/// [`max_pool_i8`] into a preallocated, row-major `[n, oh, ow, c]` output.
///
/// # Errors
/// As [`max_pool_i8`], or if `out` has another shape or is not contiguous.
pub fn max_pool_i8_into(
    input: ArrayView4<'_, i8>,
    window: &Window2d,
    mut out: ArrayViewMut4<'_, i8>,
) -> Result<()> {
    let ([oh, ow], [pt, pl]) = window.geometry_for("max_pool_i8", input.shape())?;
    let (n, h, w, c) = input.dim();
    let ([kh, kw], [sh, sw]) = (window.size, window.strides);
    if out.dim() != (n, oh, ow, c) {
        return Err(QuantError::ShapeMismatch {
            op: "max_pool_i8 (output)",
            expected: vec![n, oh, ow, c],
            found: out.shape().to_vec(),
        });
    }
    let out = out.as_slice_mut().ok_or(QuantError::NotContiguous {
        what: "max-pool output",
    })?;
    let src = input.as_standard_layout();
    let src = src
        .as_slice()
        .expect("max_pool_i8: standard-layout array is contiguous");
    let g = PoolGeometry {
        n,
        h,
        w,
        c,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        pt,
        pl,
    };
    max_pool_dispatch(&g, src, out, true);
    Ok(())
}

/// Runs the AVX2 max-pool when allowed and available, else the portable one.
pub(super) fn max_pool_dispatch(g: &PoolGeometry, src: &[i8], out: &mut [i8], simd: bool) {
    if g.c == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd && super::Kernel::Avx2.is_available() {
        super::window_avx2::max_pool(g, src, out);
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    match g.c {
        1..=16 => pool::<16>(g, src, out),
        17..=32 => pool::<32>(g, src, out),
        33..=64 => pool::<64>(g, src, out),
        _ => pool::<0>(g, src, out),
    }
}

/// Shapes of one max-pool call: input `[n, h, w, c]`, output `oh × ow` of a `kh × kw` window
/// with strides `sh, sw` and padding `pt` (top), `pl` (left).
pub(super) struct PoolGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pt: usize,
    pub pl: usize,
}

/// Max-pool with the channels of a pixel handled as one `[i8; W]` block (`c <= W`), so the
/// maximum is a single vector instruction; `W = 0` takes the general per-channel loop. As in
/// [`copy_block`], loads and stores may run past a pixel's `c` channels into later pixels while
/// the slices have room (stores are overwritten later: `out` is filled in increasing order).
fn pool<const W: usize>(g: &PoolGeometry, src: &[i8], out: &mut [i8]) {
    let c = g.c;
    let mut d = 0;
    for b in 0..g.n {
        for oy in 0..g.oh {
            // The window clipped to the input; never empty for valid or TF-same geometry.
            let y0 = (oy * g.sh).saturating_sub(g.pt);
            let y1 = (oy * g.sh + g.kh - g.pt).min(g.h);
            for ox in 0..g.ow {
                let x0 = (ox * g.sw).saturating_sub(g.pl);
                let x1 = (ox * g.sw + g.kw - g.pl).min(g.w);
                if W == 0 {
                    let dst = &mut out[d..d + c];
                    dst.fill(i8::MIN);
                    for iy in y0..y1 {
                        let row = ((b * g.h + iy) * g.w + x0) * c;
                        for px in src[row..row + (x1 - x0) * c].chunks_exact(c) {
                            for (o, &v) in dst.iter_mut().zip(px) {
                                *o = (*o).max(v);
                            }
                        }
                    }
                } else {
                    let mut acc = [i8::MIN; W];
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let s = ((b * g.h + iy) * g.w + ix) * c;
                            let mut v = [i8::MIN; W];
                            copy_block::<W>(&mut v, 0, src, s, c);
                            for (a, &x) in acc.iter_mut().zip(&v) {
                                *a = (*a).max(x);
                            }
                        }
                    }
                    copy_block::<W>(out, d, &acc, 0, c);
                }
                d += c;
            }
        }
    }
}
