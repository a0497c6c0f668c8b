//! int8 quantization for pare, following TFLite's int8 spec: a post-training converter, an
//! integer-only inference engine and a compact model file.
//!
//! - [`convert()`]: a float model — a [`Sequential`](pare_tensor::Sequential) chain or a graph
//!   [`Model`](pare_tensor::Model) with `Add` and `Concatenate` — plus calibration data to a
//!   [`QuantizedModel`] — full integer (int8 activations, int32 biases, conv/dense/add + ReLU
//!   fused into a clamp, TFLite's two-multiplier `LEAKY_RELU`; depthwise conv, average and
//!   global average pooling, ReLU6, sigmoid, tanh, hard-swish, softmax, TFLite's `ADD` and
//!   `CONCATENATION`; BatchNorm folded, Dropout dropped) or dynamic range (int8 weights only).
//! - [`QuantizedModel`]: runs on the integer-only engine ([`predict_i8`](QuantizedModel::predict_i8),
//!   [`predict_u8`](QuantizedModel::predict_u8), float in/out [`predict`](QuantizedModel::predict);
//!   an [`Interpreter`] reuses its buffers across calls), simulates itself as a fake-quantized
//!   float graph ([`simulate`](QuantizedModel::simulate)), reports per-layer SQNR
//!   ([`layer_sqnr`](QuantizedModel::layer_sqnr)) and saves to one safetensors file
//!   ([`file`](mod@file), with a pluggable [`WeightCodec`] for sparse weights).
//! - [`Qat`]: quantization-aware training — fake-quant weights (per channel) and activations
//!   (per tensor, moving-average ranges) during a `Fit` fine-tune, then [`Qat::convert`] at the
//!   learned ranges ([`convert_qat`]); [`qat_weight_hook`] fake-quantizes kernels alone.
//! - [`WeightBits`]: int8 or int4 weights (TFMOT's narrow-range [−7, 7], packed two per byte in
//!   the file by [`pack_int4`]; the engine runs them on its int8 kernels).
//! - [`params`]: [`QuantParams`] (`real = scale · (q − zero_point)`, per tensor or per
//!   channel) and TFLite's rules — asymmetric int8 activations, symmetric [−127, 127] weights per
//!   output channel, int32 biases at `s_in · s_w` — with [`quantize`], [`dequantize`],
//!   [`quantize_weights`] and [`quantize_bias`].
//! - [`observer`]: calibration statistics that choose ranges — min-max, moving-average
//!   min-max, percentile, and histogram searches for minimum MSE or KL divergence — per tensor
//!   or per channel, by name through [`ObserverKind`].
//! - [`fixedpoint`]: gemmlowp/TFLite requantization arithmetic, bit-exact
//!   ([`quantize_multiplier`], [`multiply_by_quantized_multiplier`], …).
//! - [`kernels`]: the engine's kernels — int8 GEMM with int32 accumulation and a fused
//!   requantize-and-clamp output stage (AVX-512 VNNI, AVX2 and portable paths that agree bit for
//!   bit), im2col and max-pool on int8 NHWC tensors, the leaky-ReLU table, and TFLite's
//!   reference arithmetic for depthwise conv, average pool, `MEAN`, logistic, tanh,
//!   hard-swish and softmax. Every op matches TFLite 2.21's reference kernels code for code
//!   (`tests/tflite.rs`, `docs/tflite.md`); dense layers round once, as `FULLY_CONNECTED` does.
//!
//! Quantize a model and run it:
//!
//! ```
//! use ndarray::Array4;
//! use pare_quant::{ConvertConfig, QuantizedModel, convert};
//! use pare_tensor::models::small_cnn;
//!
//! let model = small_cnn(0); // train it first in real use
//! let calibration = Array4::<f32>::from_shape_fn((16, 28, 28, 1), |(n, y, x, _)| {
//!     ((n + y * x) % 11) as f32 / 10.0
//! });
//! let q = convert(&model, calibration.view().into_dyn(), &ConvertConfig::default())?;
//! let logits = q.predict(calibration.view().into_dyn())?; // float in, float out
//! assert_eq!(logits.dim(), (16, 10));
//!
//! // int8 in, int8 out, the integer-only path a deployment runs.
//! let codes = q.quantize_input(calibration.view().into_dyn())?;
//! let int8_logits = q.predict_i8(codes.view())?;
//! let out = q.output_quant().unwrap();
//! assert!((out.dequantize(int8_logits[[0, 3]]) - logits[[0, 3]]).abs() < 1e-6);
//!
//! // One safetensors file: int8 kernels, int32 biases and f32 scales as tensors, the
//! // architecture, zero points and per-tensor CRC-32C checksums in a header of about 650
//! // bytes.
//! let bytes = q.to_bytes()?;
//! let kernels = 3 * 3 * 12 + 2028 * 10;
//! assert!(bytes.len() < kernels + 1000);
//! let back = QuantizedModel::from_bytes(&bytes)?;
//! assert_eq!(back.predict_i8(codes.view())?, int8_logits);
//! # Ok::<(), pare_quant::QuantError>(())
//! ```
//!
//! Calibrate one activation by hand:
//!
//! ```
//! use ndarray::{ArrayD, IxDyn};
//! use pare_quant::{Granularity, ObserverKind, ObserverConfig, QuantScheme, dequantize, quantize};
//!
//! // Calibrate an activation on two batches with TFLite's min-max observer.
//! let mut observer = ObserverKind::MinMax
//!     .build(Granularity::PerTensor, &ObserverConfig::default())?;
//! let batch = |v: &[f32]| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap();
//! observer.observe(batch(&[0.0, 0.5, 1.9]).view())?;
//! observer.observe(batch(&[-0.1, 2.55, f32::NAN]).view())?;
//! assert_eq!(observer.non_finite(), 1);
//!
//! // Range [-0.1, 2.55]: scale 2.65 / 255, zero point round(-128 + 0.1 / scale) = -118.
//! let params = observer.params(QuantScheme::Asymmetric)?;
//! assert_eq!(params.zero_point, vec![-118]);
//!
//! let x = batch(&[0.0, 1.0, 2.0]);
//! let q = quantize(x.view(), &params)?;
//! assert_eq!(q[[0]] as i32, params.zero_point[0]); // real 0 is exact
//! let back = dequantize(q.view(), &params)?;
//! for (a, b) in x.iter().zip(back.iter()) {
//!     assert!((a - b).abs() <= params.scale[0] / 2.0 + 1e-6);
//! }
//! # Ok::<(), pare_quant::QuantError>(())
//! ```

mod convert;
mod engine;
pub mod error;
mod evaluate;
pub mod file;
pub mod fixedpoint;
#[cfg(test)]
mod fold_tests;
#[cfg(test)]
mod graph_tests;
mod int4;
pub mod kernels;
mod model;
pub mod observer;
pub mod params;
mod qat;
mod report;
#[cfg(test)]
mod rounding_tests;
mod simulate;
#[cfg(test)]
mod tests;

pub use convert::{ConvertConfig, convert};
pub use engine::Interpreter;
pub use error::{QuantError, Result};
pub use evaluate::SqnrReport;
pub use file::WeightCodec;
pub use fixedpoint::{multiply_by_quantized_multiplier, quantize_multiplier};
pub use int4::{WeightBits, pack_int4, quantize_weights_bits, unpack_int4};
pub use kernels::{
    Activation, Kernel, LeakyReluParams, PackedWeights, Padding, Requant, Rounding, Window2d,
    gemm_i8_acc, gemm_i8_requant, im2col_i8, max_pool_i8,
};
pub use model::{
    ActQuant, Bias, InputType, LayerKind, MAX_ELEMENTS, Mode, OutputType, Provenance,
    QuantizedLayer, QuantizedModel, QuantizedWeights, Source,
};
pub use observer::{
    KlObserver, MinMaxObserver, MovingAverageMinMaxObserver, MseObserver, Observer, ObserverConfig,
    ObserverKind, PercentileObserver,
};
pub use params::{
    Granularity, QuantParams, QuantScheme, Range, dequantize, quantize, quantize_bias,
    quantize_weights,
};
pub use qat::{Qat, QatConfig, QatRanges, convert_qat, moving_average_range};
pub use report::{LayerSqnr, sqnr_db};
pub use simulate::{
    qat_weight_hook, qat_weight_hook_bits, weight_fake_quant_spec, weight_fake_quant_spec_bits,
};
