//! The integer-only engine: runs a full-integer [`QuantizedModel`] on int8 codes.
//!
//! Every layer reads and writes int8 NHWC buffers: a conv is [`im2col_i8`](crate::im2col_i8)
//! (padding filled with the input zero point, so it adds nothing) then
//! [`gemm_i8_requant`](crate::gemm_i8_requant) — int32 accumulation, fixed-point
//! requantization, a fused ReLU as a clamp; a dense layer is the GEMM alone; max-pool compares
//! codes; a leaky ReLU is a 256-entry table built from TFLite's two-multiplier formula. A conv
//! with a short patch followed by a non-overlapping max-pool runs as one direct pass
//! (`ConvPool`, on CPUs with AVX-512 VNNI) that writes only the pooled output, with the same
//! bits. On such CPUs every other conv (but a 1×1 stride-1 one, already a plain GEMM) skips
//! im2col and runs as a direct convolution (`DirectConv`), also with the same bits. No float
//! arithmetic happens between the input quantization and the output dequantization.
//!
//! A graph model runs in its layers' (topological) order; an add is TFLite's int8 `ADD`
//! (AVX-512 where present), a concatenation copies codes. Every value lives in one of a few
//! scratch buffers, planned when the model is built: a buffer is reused once no later layer
//! reads its value, and an element-wise step on a value read last runs in place (a chain
//! alternates between two buffers).
//!
//! An [`Interpreter`] (TFLite's name) owns the scratch buffers, so repeated calls at the same
//! batch size allocate nothing; the `predict*` methods of [`QuantizedModel`] split large batches
//! over threads, one interpreter each.

use ndarray::{
    Array2, ArrayD, ArrayView2, ArrayView4, ArrayViewD, ArrayViewMut2, ArrayViewMut4, Axis, IxDyn,
};
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use pare_tensor::kernels::conv::Window;

use crate::kernels::add::{add_i8, concat_part_i8};
use crate::kernels::avgpool::{avg_pool_i8, reduce_mean_i8};
use crate::kernels::depthwise::depthwise_conv_i8;
use crate::kernels::softmax::softmax_i8_in_place;
use crate::kernels::{
    ConvScratch, ConvShape, DirectConv, Kernel, Window2d, apply_table, gemm_i8_requant,
    max_pool_i8_into,
};
use crate::model::{Mode, Prepared, QuantizedModel, Source, in_place, to_tensor_padding};
use crate::params::check_finite;

/// Examples per task when a batch is split over threads: large enough that a task is a few
/// hundred microseconds of work, small enough that its buffers stay in L2.
const CHUNK: usize = 32;

/// What [`Interpreter::run`] calls with every layer's int8 output.
pub(crate) type Tap<'a> = dyn FnMut(usize, &[i8]) + 'a;

/// Runs a full-integer model with reusable scratch buffers (TFLite's `Interpreter`).
///
/// ```
/// # use pare_quant::{ConvertConfig, Interpreter, convert};
/// # use pare_tensor::models::small_cnn;
/// # use ndarray::{Array4, ArrayD};
/// let model = small_cnn(0);
/// let calibration = Array4::<f32>::from_shape_fn((8, 28, 28, 1), |(n, y, x, _)| {
///     ((n * 31 + y * 7 + x) % 17) as f32 / 16.0
/// });
/// let q = convert(&model, calibration.view().into_dyn(), &ConvertConfig::default())?;
/// let mut interpreter = Interpreter::new(&q)?;
/// let image = Array4::<i8>::zeros((1, 28, 28, 1));
/// let logits = interpreter.invoke_i8(image.view().into_dyn())?;
/// assert_eq!(logits.dim(), (1, 10));
/// # Ok::<(), pare_quant::QuantError>(())
/// ```
#[derive(Debug)]
pub struct Interpreter<'m> {
    model: &'m QuantizedModel,
    /// One buffer per slot of the model's schedule.
    bufs: Vec<Vec<i8>>,
    patches: Vec<i8>,
    /// The direct conv path's padded input (and repacked weights).
    conv_scratch: ConvScratch,
    logits: Vec<f32>,
}

impl<'m> Interpreter<'m> {
    /// An interpreter for `model`; buffers grow on first use.
    ///
    /// # Errors
    /// [`QuantError::WrongMode`] for a dynamic-range model (float activations): use
    /// [`QuantizedModel::predict`].
    pub fn new(model: &'m QuantizedModel) -> Result<Self> {
        if model.mode != Mode::FullInteger {
            return Err(QuantError::WrongMode {
                op: "the integer-only interpreter",
                mode: model.mode,
            });
        }
        Ok(Interpreter {
            model,
            bufs: vec![Vec::new(); model.schedule.len.len()],
            patches: Vec::new(),
            conv_scratch: ConvScratch::default(),
            logits: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &'m QuantizedModel {
        self.model
    }

    fn check_input(&self, shape: &[usize]) -> Result<usize> {
        let expected = &self.model.input_shape;
        if shape.len() != expected.len() + 1 || shape[1..] != expected[..] {
            return Err(QuantError::ShapeMismatch {
                op: "model input",
                expected: std::iter::once(0).chain(expected.iter().copied()).collect(),
                found: shape.to_vec(),
            });
        }
        let n = shape[0];
        self.reserve_check(n)?;
        Ok(n)
    }

    fn reserve_check(&self, n: usize) -> Result<()> {
        let too_big = n
            .checked_mul(self.model.max_activation.max(self.model.max_patches))
            .is_none_or(|v| v > isize::MAX as usize / 2);
        if too_big {
            return Err(QuantError::InvalidParameter {
                name: "batch size",
                value: n.to_string(),
                reason: "the batch's activations would not fit in memory",
            });
        }
        Ok(())
    }

    fn reserve(&mut self, n: usize) {
        for (b, &len) in self.bufs.iter_mut().zip(&self.model.schedule.len) {
            if b.len() < n * len {
                b.resize(n * len, 0);
            }
        }
        let p = n * self.model.max_patches;
        if self.patches.len() < p {
            self.patches.resize(p, 0);
        }
    }

    fn input_len(&self, n: usize) -> usize {
        n * self.model.input_shape.iter().product::<usize>()
    }

    /// Runs a batch of int8 codes `[n, input_shape...]` (quantized with the model's
    /// [`input_quant`](QuantizedModel::input_quant)); returns the int8 logits `[n, outputs]`
    /// (parameters: [`output_quant`](QuantizedModel::output_quant)).
    ///
    /// # Errors
    /// [`QuantError::ShapeMismatch`] if the input shape is not `[n, input_shape...]`.
    pub fn invoke_i8(&mut self, x: ArrayViewD<'_, i8>) -> Result<ArrayView2<'_, i8>> {
        let n = self.check_input(x.shape())?;
        self.reserve(n);
        let len = self.input_len(n);
        let dst = &mut self.bufs[self.model.schedule.input][..len];
        match x.as_slice() {
            Some(s) => dst.copy_from_slice(s),
            None => dst.iter_mut().zip(x.iter()).for_each(|(d, &v)| *d = v),
        }
        self.finish(n)
    }

    /// Runs a batch of int8 codes as [`invoke_i8`](Self::invoke_i8) and returns every layer's
    /// int8 output `[n, output_shape...]`, in layer order (what TFLite's interpreter keeps with
    /// `experimental_preserve_all_tensors`): for comparing a model with another runtime layer
    /// by layer.
    ///
    /// # Errors
    /// As [`invoke_i8`](Self::invoke_i8).
    pub fn layer_outputs_i8(&mut self, x: ArrayViewD<'_, i8>) -> Result<Vec<ArrayD<i8>>> {
        let n = self.check_input(x.shape())?;
        self.reserve(n);
        let len = self.input_len(n);
        let dst = &mut self.bufs[self.model.schedule.input][..len];
        match x.as_slice() {
            Some(s) => dst.copy_from_slice(s),
            None => dst.iter_mut().zip(x.iter()).for_each(|(d, &v)| *d = v),
        }
        let layers = &self.model.layers;
        let mut outputs = Vec::with_capacity(layers.len());
        let mut tap = |i: usize, codes: &[i8]| {
            let shape: Vec<usize> = std::iter::once(n)
                .chain(layers[i].output_shape.iter().copied())
                .collect();
            outputs.push(
                ArrayD::from_shape_vec(IxDyn(&shape), codes.to_vec())
                    .expect("layer_outputs_i8: a layer's output matches its shape"),
            );
        };
        self.run(n, Some(&mut tap))?;
        Ok(outputs)
    }

    /// [`invoke_i8`](Self::invoke_i8) for uint8 codes (TFLite's uint8 input: the int8 code plus
    /// 128, zero point plus 128, same scale).
    ///
    /// # Errors
    /// As [`invoke_i8`](Self::invoke_i8).
    pub fn invoke_u8(&mut self, x: ArrayViewD<'_, u8>) -> Result<ArrayView2<'_, i8>> {
        let n = self.check_input(x.shape())?;
        self.reserve(n);
        let len = self.input_len(n);
        let flip = |v: u8| (v ^ 0x80) as i8;
        let dst = &mut self.bufs[self.model.schedule.input][..len];
        match x.as_slice() {
            Some(s) => dst.iter_mut().zip(s).for_each(|(d, &v)| *d = flip(v)),
            None => dst
                .iter_mut()
                .zip(x.iter())
                .for_each(|(d, &v)| *d = flip(v)),
        }
        self.finish(n)
    }

    /// Quantizes a float batch with the input parameters, runs it, and returns the
    /// dequantized logits.
    ///
    /// # Errors
    /// On a wrong input shape, or [`QuantError::NonFinite`] if the input holds NaN or infinity.
    pub fn invoke(&mut self, x: ArrayViewD<'_, f32>) -> Result<ArrayView2<'_, f32>> {
        let n = self.check_input(x.shape())?;
        self.reserve(n);
        let len = self.input_len(n);
        let q = self
            .model
            .input
            .expect("full-integer model has input parameters");
        let dst = &mut self.bufs[self.model.schedule.input][..len];
        match x.as_slice() {
            Some(s) => {
                if !all_finite(s) {
                    check_finite(&x, "model input")?;
                }
                quantize_slice(s, q.scale, q.zero_point, dst);
            }
            None => {
                check_finite(&x, "model input")?;
                dst.iter_mut()
                    .zip(x.iter())
                    .for_each(|(d, &v)| *d = q.quantize(v));
            }
        }
        let cur = self.run(n, None)?;
        let out = self
            .model
            .output_quant()
            .expect("full-integer output parameters");
        let classes = self.outputs();
        self.logits.clear();
        self.logits.extend(
            self.bufs[cur][..n * classes]
                .iter()
                .map(|&v| out.dequantize(v)),
        );
        Ok(ArrayView2::from_shape((n, classes), &self.logits[..])
            .expect("invoke: logits buffer matches [n, outputs]"))
    }

    fn outputs(&self) -> usize {
        self.model.output_shape().iter().product()
    }

    fn finish(&mut self, n: usize) -> Result<ArrayView2<'_, i8>> {
        let cur = self.run(n, None)?;
        let classes = self.outputs();
        Ok(
            ArrayView2::from_shape((n, classes), &self.bufs[cur][..n * classes])
                .expect("invoke: output buffer matches [n, outputs]"),
        )
    }

    /// Runs the layers on the `n` examples in the input's slot; returns the slot holding the
    /// output. `tap(i, codes)` sees every layer's output.
    pub(crate) fn run(&mut self, n: usize, mut tap: Option<&mut Tap<'_>>) -> Result<usize> {
        let model = self.model;
        let schedule = &model.schedule;
        let slot = |s: &Source| match *s {
            Source::Input => schedule.input,
            Source::Layer(j) => schedule.output[j],
        };
        // Set when a conv ran fused with the max-pool after it, which then has nothing to do.
        let mut pooled = false;
        let mut out_slot = schedule.input;
        for (i, (layer, prep)) in model.layers.iter().zip(&model.prepared).enumerate() {
            let in_len = n * layer.input_shape.iter().product::<usize>();
            let out_len = n * layer.output_shape.iter().product::<usize>();
            let srcs = &schedule.sources[i];
            let (from, to) = (slot(&srcs[0]), schedule.output[i]);
            out_slot = to;
            if from == to {
                // In place: the schedule hands the input's slot over when this layer reads it
                // last (element-wise steps and reshapes only).
                step_in_place(prep, &mut self.bufs[to][..in_len]);
            } else {
                // The output's buffer leaves the list while the inputs are read (no copy, no
                // allocation: a `Vec` moves by its pointer).
                let mut dst_buf = std::mem::take(&mut self.bufs[to]);
                let dst = &mut dst_buf[..out_len];
                let src = &self.bufs[from][..in_len];
                let ran = match prep {
                    Prepared::Conv { fused: Some(f), .. } if tap.is_none() => {
                        // Written straight into the pool's slot, which the pool then keeps.
                        let pool_slot = schedule.output[i + 1];
                        self.bufs[to] = dst_buf;
                        let mut pool_buf = std::mem::take(&mut self.bufs[pool_slot]);
                        f.run(
                            n,
                            &self.bufs[from][..in_len],
                            &mut pool_buf[..n * f.output_len()],
                        );
                        self.bufs[pool_slot] = pool_buf;
                        pooled = true;
                        continue;
                    }
                    Prepared::Pool { .. } if pooled => {
                        pooled = false;
                        Ok(())
                    }
                    Prepared::Add(p) => {
                        let other = &self.bufs[slot(&srcs[1])][..in_len];
                        add_i8(src, other, p, dst);
                        Ok(())
                    }
                    Prepared::Concat { widths } => {
                        let total: usize = widths.iter().sum();
                        let rows = out_len / total.max(1);
                        let mut at = 0;
                        for (s, &w) in srcs.iter().zip(widths) {
                            concat_part_i8(&self.bufs[slot(s)][..rows * w], w, at, total, dst);
                            at += w;
                        }
                        Ok(())
                    }
                    p if in_place(p) => {
                        // The input is still needed by a later layer: work on a copy.
                        dst.copy_from_slice(src);
                        step_in_place(p, dst);
                        Ok(())
                    }
                    _ => step(
                        prep,
                        layer,
                        n,
                        src,
                        dst,
                        &mut self.patches,
                        &mut self.conv_scratch,
                    ),
                };
                self.bufs[to] = dst_buf;
                ran?;
            }
            if let Some(tap) = tap.as_mut() {
                tap(i, &self.bufs[to][..out_len]);
            }
        }
        Ok(out_slot)
    }
}

/// An element-wise step (or a reshape) on its buffer.
fn step_in_place(prep: &Prepared, buf: &mut [i8]) {
    match prep {
        Prepared::Reshape => {}
        Prepared::Relu { floor } => {
            for v in buf.iter_mut() {
                *v = (*v).max(*floor);
            }
        }
        Prepared::Lut(table) => apply_table(table, buf),
        Prepared::Softmax(p) => softmax_i8_in_place(buf, p),
        Prepared::Clamp { lo, hi } => {
            for v in buf.iter_mut() {
                *v = (*v).clamp(*lo, *hi);
            }
        }
        _ => unreachable!("step_in_place: {prep:?} does not run in place"),
    }
}

/// One single-input step from `src` to `dst`.
fn step(
    prep: &Prepared,
    layer: &crate::model::QuantizedLayer,
    n: usize,
    src: &[i8],
    dst: &mut [i8],
    patches: &mut [i8],
    conv_scratch: &mut ConvScratch,
) -> Result<()> {
    match prep {
        Prepared::Conv {
            im2col,
            packed,
            bias,
            requant,
            input_zero_point,
            direct,
            ..
        } => {
            let &[h, w, c] = &layer.input_shape[..] else {
                unreachable!("run: conv input checked 3-D")
            };
            let &[oh, ow, cout] = &layer.output_shape[..] else {
                unreachable!("run: conv output checked 3-D")
            };
            // With VNNI a direct pass beats im2col + GEMM (a 1×1, stride-1 conv needs no
            // im2col and stays a GEMM).
            if !*direct && Kernel::Avx512Vnni.is_available() {
                let dc = DirectConv {
                    shape: ConvShape::new(im2col.window(), [h, w, c])?,
                    packed,
                    bias,
                    za: *input_zero_point,
                    requant,
                };
                if dc.fits() {
                    dc.run_with(true, n, src, conv_scratch, dst);
                    return Ok(());
                }
            }
            let rows = n * oh * ow;
            let k = packed.k();
            let a = if *direct {
                view2(src, rows, c)
            } else {
                let input = ArrayView4::from_shape((n, h, w, c), src)
                    .expect("run: conv input buffer matches its shape");
                let patches = &mut patches[..rows * k];
                im2col.run(
                    input,
                    *input_zero_point,
                    ArrayViewMut2::from_shape((rows, k), &mut *patches)
                        .expect("run: patch buffer matches its shape"),
                )?;
                view2(patches, rows, k)
            };
            gemm_i8_requant(
                a,
                *input_zero_point,
                packed,
                Some(bias),
                requant,
                view2_mut(dst, rows, cout),
            )
        }
        Prepared::Dense {
            packed,
            bias,
            requant,
            input_zero_point,
        } => gemm_i8_requant(
            view2(src, n, packed.k()),
            *input_zero_point,
            packed,
            Some(bias),
            requant,
            view2_mut(dst, n, packed.n()),
        ),
        Prepared::Pool { window } => {
            let &[h, w, c] = &layer.input_shape[..] else {
                unreachable!("run: pool input checked 3-D")
            };
            let &[oh, ow, _] = &layer.output_shape[..] else {
                unreachable!("run: pool output checked 3-D")
            };
            let input = ArrayView4::from_shape((n, h, w, c), src)
                .expect("run: pool input buffer matches its shape");
            let out = ArrayViewMut4::from_shape((n, oh, ow, c), dst)
                .expect("run: pool output buffer matches its shape");
            max_pool_i8_into(input, window, out)
        }
        Prepared::Depthwise {
            kernel,
            bias,
            requant,
            input_zero_point,
            multiplier,
            window,
        } => {
            let win = batch_window(window, n, &layer.input_shape);
            depthwise_conv_i8(
                src,
                &win,
                *multiplier,
                kernel,
                bias,
                *input_zero_point,
                requant,
                dst,
            );
            Ok(())
        }
        Prepared::AvgPool { window } => {
            let win = batch_window(window, n, &layer.input_shape);
            avg_pool_i8(src, &win, -128, 127, dst);
            Ok(())
        }
        Prepared::Mean(p) => {
            let c = layer.output_shape[0];
            reduce_mean_i8(src, n, c, p, dst);
            Ok(())
        }
        Prepared::Reshape
        | Prepared::Relu { .. }
        | Prepared::Lut(_)
        | Prepared::Softmax(_)
        | Prepared::Clamp { .. }
        | Prepared::Add(_)
        | Prepared::Concat { .. } => {
            unreachable!("step: {prep:?} is run by Interpreter::run itself")
        }
    }
}

/// The window of a depthwise conv or average pool over a batch of `n` inputs `[h, w, c]`.
fn batch_window(window: &Window2d, n: usize, input: &[usize]) -> Window {
    let &[h, w, c] = input else {
        unreachable!("run: window input checked 3-D")
    };
    Window::new(
        [n, h, w, c],
        window.size,
        window.strides,
        to_tensor_padding(window.padding),
    )
    .expect("run: window geometry checked when the model was built")
}

/// [`ActQuant::quantize`](crate::ActQuant::quantize) over a slice of finite values, in a form
/// the compiler vectorises (8 or 16 lanes instead of a scalar conversion per value):
/// rounding half away from zero is `trunc(x + copysign(0.49999997, x))`, LLVM's own exact
/// expansion of `round`; the clamped integral float becomes an integer through the bits of
/// `t + 1.5 · 2^23` (exact for |t| <= 2^22), since float-to-int `as` casts saturate and stay
/// scalar.
fn quantize_slice(src: &[f32], scale: f32, zero_point: i32, dst: &mut [i8]) {
    const BELOW_HALF: f32 = 0.499_999_97;
    const MAGIC: f32 = 12_582_912.0;
    for (d, &v) in dst.iter_mut().zip(src) {
        let x = v / scale;
        let t = (x + BELOW_HALF.copysign(x)).trunc().clamp(-256.0, 256.0);
        let r = (t + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
        *d = (r + zero_point).clamp(-128, 127) as i8;
    }
}

/// Whether every value is finite, without the early exit that keeps `all` from vectorising.
fn all_finite(s: &[f32]) -> bool {
    s.chunks(64)
        .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
}

fn view2(s: &[i8], rows: usize, cols: usize) -> ArrayView2<'_, i8> {
    ArrayView2::from_shape((rows, cols), &s[..rows * cols])
        .expect("engine: buffer holds rows x cols")
}

fn view2_mut(s: &mut [i8], rows: usize, cols: usize) -> ArrayViewMut2<'_, i8> {
    ArrayViewMut2::from_shape((rows, cols), &mut s[..rows * cols])
        .expect("engine: buffer holds rows x cols")
}

impl QuantizedModel {
    /// Runs `f` on chunks of the batch in parallel (one interpreter per task), writing each
    /// chunk's `[rows, outputs]` result into `out`.
    fn par_chunks<T: Send + Copy + Default, X: Sync>(
        &self,
        x: &ArrayViewD<'_, X>,
        f: impl Fn(&mut Interpreter<'_>, ArrayViewD<'_, X>, &mut [T]) -> Result<()> + Sync,
    ) -> Result<Array2<T>> {
        let n = x.shape().first().copied().unwrap_or(0);
        let classes: usize = self.output_shape().iter().product();
        let mut out = vec![T::default(); n * classes];
        // Checks the mode once, so the per-task interpreters below cannot fail.
        let mut it = Interpreter::new(self)?;
        if n <= CHUNK || classes == 0 {
            f(&mut it, x.view(), &mut out)?;
        } else {
            // A few runs of chunks per thread, each with one interpreter: creating one zeroes
            // its buffers, which would cost as much as the chunk itself.
            let chunks = n.div_ceil(CHUNK);
            let per_run = chunks.div_ceil(2 * rayon::current_num_threads()).max(1);
            out.par_chunks_mut(per_run * CHUNK * classes)
                .enumerate()
                .try_for_each(|(r, run)| -> Result<()> {
                    let mut it = Interpreter::new(self)?;
                    for (c, o) in run.chunks_mut(CHUNK * classes).enumerate() {
                        let start = (r * per_run + c) * CHUNK;
                        let rows = x.slice_axis(Axis(0), (start..start + o.len() / classes).into());
                        f(&mut it, rows, o)?;
                    }
                    Ok(())
                })?;
        }
        Ok(Array2::from_shape_vec((n, classes), out).expect("predict: output is [n, outputs]"))
    }

    pub(crate) fn check_batch(&self, shape: &[usize]) -> Result<()> {
        if shape.len() != self.input_shape.len() + 1 || shape[1..] != self.input_shape[..] {
            return Err(QuantError::ShapeMismatch {
                op: "model input",
                expected: std::iter::once(0)
                    .chain(self.input_shape.iter().copied())
                    .collect(),
                found: shape.to_vec(),
            });
        }
        Ok(())
    }

    /// Runs int8 codes `[n, input_shape...]` through the integer-only engine; returns the int8
    /// logits `[n, outputs]` (parameters: [`output_quant`](Self::output_quant)). Large batches
    /// are split over threads.
    ///
    /// # Errors
    /// [`QuantError::WrongMode`] for a dynamic-range model, [`QuantError::ShapeMismatch`] for a
    /// wrong input shape.
    pub fn predict_i8(&self, x: ArrayViewD<'_, i8>) -> Result<Array2<i8>> {
        self.check_batch(x.shape())?;
        self.par_chunks(&x, |it, rows, o| {
            o.copy_from_slice(it.invoke_i8(rows)?.as_slice().expect("contiguous logits"));
            Ok(())
        })
    }

    /// [`predict_i8`](Self::predict_i8) for uint8 codes (int8 + 128, zero point + 128).
    ///
    /// # Errors
    /// As [`predict_i8`](Self::predict_i8).
    pub fn predict_u8(&self, x: ArrayViewD<'_, u8>) -> Result<Array2<i8>> {
        self.check_batch(x.shape())?;
        self.par_chunks(&x, |it, rows, o| {
            o.copy_from_slice(it.invoke_u8(rows)?.as_slice().expect("contiguous logits"));
            Ok(())
        })
    }

    /// Float in, float logits out. A full-integer model quantizes the input with its input
    /// parameters, runs the integer-only engine and dequantizes the logits; a dynamic-range
    /// model runs its float network with dequantized int8 weights.
    ///
    /// # Errors
    /// [`QuantError::ShapeMismatch`] for a wrong input shape, [`QuantError::NonFinite`] for NaN
    /// or infinite input.
    pub fn predict(&self, x: ArrayViewD<'_, f32>) -> Result<Array2<f32>> {
        self.check_batch(x.shape())?;
        if let Some(float) = &self.float {
            check_finite(&x, "model input")?;
            return Ok(pare_tensor::train::predict(float, x, 256)?);
        }
        self.par_chunks(&x, |it, rows, o| {
            o.copy_from_slice(it.invoke(rows)?.as_slice().expect("contiguous logits"));
            Ok(())
        })
    }

    /// Quantizes a float batch with the input parameters to int8 codes (what
    /// [`predict_i8`](Self::predict_i8) takes).
    ///
    /// # Errors
    /// [`QuantError::WrongMode`] for a dynamic-range model, [`QuantError::NonFinite`] for NaN
    /// or infinite input.
    pub fn quantize_input(&self, x: ArrayViewD<'_, f32>) -> Result<ndarray::ArrayD<i8>> {
        let q = self.input.ok_or(QuantError::WrongMode {
            op: "quantize_input",
            mode: self.mode,
        })?;
        check_finite(&x, "model input")?;
        Ok(x.mapv(|v| q.quantize(v)))
    }

    /// Every layer's int8 output on a batch (for per-layer error reports).
    pub(crate) fn trace_i8(&self, x: ArrayViewD<'_, i8>) -> Result<Vec<Vec<i8>>> {
        let mut it = Interpreter::new(self)?;
        let n = it.check_input(x.shape())?;
        it.reserve(n);
        let len = it.input_len(n);
        for (d, &v) in it.bufs[self.schedule.input][..len].iter_mut().zip(x.iter()) {
            *d = v;
        }
        let mut outs = vec![Vec::new(); self.layers.len()];
        it.run(n, Some(&mut |i, codes: &[i8]| outs[i] = codes.to_vec()))?;
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActQuant;

    #[test]
    fn vectorised_quantize_matches_the_scalar_rule() {
        // Ties (half steps), values beyond the range and tiny values, at several zero points.
        for (scale, zp) in [(0.1f32, 0), (1.0 / 255.0, -128), (0.37, 100), (3e-3, 127)] {
            let q = ActQuant::new(scale, zp).unwrap();
            // A multiplicative hash spreads the last values over [-400, 400) steps.
            let spread = (0u32..5000).map(|i| {
                let h = i.wrapping_mul(2_654_435_761);
                (h as f32 / u32::MAX as f32 * 800.0 - 400.0) * scale
            });
            let src: Vec<f32> = (-3000..3000)
                .map(|i| i as f32 * scale / 2.0)
                .chain([1e30, -1e30, 1e-30, -1e-30, 0.0, -0.0, 0.499_999_97 * scale])
                .chain(spread)
                .collect();
            let mut dst = vec![0i8; src.len()];
            quantize_slice(&src, scale, zp, &mut dst);
            for (&v, &d) in src.iter().zip(&dst) {
                assert_eq!(d, q.quantize(v), "{v} at scale {scale}, zero point {zp}");
            }
        }
    }
}
