//! The crate's error type.

use std::path::PathBuf;

use crate::kernels::Kernel;

/// Everything that can go wrong computing quantization parameters, observing tensors, converting
/// a model, running the int8 engine or reading a model file.
///
/// Every variant carries the values needed to see what was wrong; indices are flat (row-major)
/// element indices unless the variant says otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// A float input (tensor element, range end, scale) is NaN or infinite.
    #[error("{what}: non-finite value {value} at index {index}")]
    NonFinite {
        /// What was being read.
        what: &'static str,
        /// Index of the offending element (0 for scalars).
        index: usize,
        /// The value found.
        value: f32,
    },
    /// A real multiplier that [`quantize_multiplier`](crate::fixedpoint::quantize_multiplier)
    /// cannot represent: negative, non-finite, or so large that the left shift would overflow.
    #[error(
        "real multiplier {value} cannot be quantized: it must be finite, >= 0 and < 2^30 \
         (a left shift above 30 overflows int32)"
    )]
    InvalidMultiplier {
        /// The multiplier.
        value: f64,
    },
    /// A fixed-point multiplier/shift pair outside what the requantization kernels accept.
    #[error(
        "quantized multiplier {multiplier} with shift {shift} (channel {channel}): the \
         multiplier must be >= 0 and the shift in [-31, 30]"
    )]
    InvalidQuantizedMultiplier {
        /// Output channel (0 for per-tensor).
        channel: usize,
        /// The fixed-point multiplier.
        multiplier: i32,
        /// The shift.
        shift: i32,
    },
    /// A quantization scale that is not a finite positive number.
    #[error("scale {scale} of channel {channel} is not finite and positive")]
    InvalidScale {
        /// Channel (0 for per-tensor).
        channel: usize,
        /// The scale.
        scale: f32,
    },
    /// A zero point outside the integer range of the quantized type.
    #[error("zero point {zero_point} of channel {channel} is outside [{qmin}, {qmax}]")]
    InvalidZeroPoint {
        /// Channel (0 for per-tensor).
        channel: usize,
        /// The zero point.
        zero_point: i32,
        /// Smallest allowed value.
        qmin: i32,
        /// Largest allowed value.
        qmax: i32,
    },
    /// An integer range `[qmin, qmax]` that is empty or does not fit the target type.
    #[error("integer range [{qmin}, {qmax}] is empty or does not fit {target}")]
    InvalidIntRange {
        /// Smallest quantized value.
        qmin: i32,
        /// Largest quantized value.
        qmax: i32,
        /// The storage type (`"i8"`, `"i32"`).
        target: &'static str,
    },
    /// A float range with `min > max`.
    #[error("range [{min}, {max}] has min > max")]
    InvalidRange {
        /// Lower end.
        min: f32,
        /// Upper end.
        max: f32,
    },
    /// Two lists that must have one entry per channel differ in length, or a tensor's channel
    /// dimension does not match the parameters.
    #[error("{what}: expected {expected} channels, found {found}")]
    ChannelMismatch {
        /// What was compared.
        what: &'static str,
        /// The expected number of channels.
        expected: usize,
        /// The number found.
        found: usize,
    },
    /// A channel axis that the tensor does not have.
    #[error("channel axis {axis} is out of range for a tensor of rank {ndim}")]
    AxisOutOfRange {
        /// The axis.
        axis: usize,
        /// The tensor's rank.
        ndim: usize,
    },
    /// Operands whose shapes do not fit together.
    #[error("{op}: expected {}, got {found:?}", expected_shape(expected))]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// The expected shape (or the part of it that is fixed).
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// An observer was asked for its range before it saw any finite value.
    #[error(
        "{observer}: no finite data observed for channel {channel} ({non_finite} non-finite \
         values were skipped)"
    )]
    NoData {
        /// The observer's name.
        observer: &'static str,
        /// Channel (0 for per-tensor).
        channel: usize,
        /// How many non-finite values it skipped.
        non_finite: u64,
    },
    /// A hyper-parameter outside its valid range.
    #[error("{}", pare_tensor::hyper_parameter_message(name, value, reason))]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Its value, formatted.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// An observer name that [`ObserverKind`](crate::ObserverKind) does not know.
    #[error(
        "unknown observer {name:?}; expected one of minmax, moving-average, percentile, mse, kl"
    )]
    UnknownObserver {
        /// The name given.
        name: String,
    },
    /// A bias that does not fit int32 at scale `input_scale * weight_scale`.
    #[error(
        "bias {value} of channel {channel} overflows int32 at scale {scale} (input scale x \
         weight scale); widen the weight scale"
    )]
    BiasOverflow {
        /// Output channel.
        channel: usize,
        /// The bias value.
        value: f32,
        /// The bias scale.
        scale: f32,
    },
    /// A kernel was forced that this CPU cannot run.
    #[error("kernel {kernel:?} is not supported by this CPU")]
    KernelUnavailable {
        /// The kernel.
        kernel: Kernel,
    },
    /// An output array that is not in standard (row-major, contiguous) layout.
    #[error("{what} must be a contiguous row-major array")]
    NotContiguous {
        /// Which argument.
        what: &'static str,
    },
    /// A convolution or pooling window that does not fit the input.
    #[error(
        "{op}: window {window:?} with strides {strides:?} and {padding} padding does not fit \
         input {input:?}"
    )]
    InvalidWindow {
        /// The operation.
        op: &'static str,
        /// Input `[n, h, w, c]`.
        input: Vec<usize>,
        /// Window `[kh, kw]`.
        window: [usize; 2],
        /// Strides `[sh, sw]`.
        strides: [usize; 2],
        /// `"valid"` or `"same"`.
        padding: &'static str,
    },
    /// A layer the converter has no int8 kernel for.
    #[error("layer {layer:?} cannot be quantized: {reason}")]
    UnsupportedLayer {
        /// The layer's name.
        layer: String,
        /// Why.
        reason: String,
    },
    /// An operation that the model's [`Mode`](crate::Mode) does not provide (e.g. int8 input
    /// to a dynamic-range model, whose activations are float).
    #[error("{op} is not available for a {mode} model")]
    WrongMode {
        /// The operation asked for.
        op: &'static str,
        /// The model's mode.
        mode: crate::Mode,
    },
    /// A float model that does not match the quantized one (a layer missing or shaped
    /// differently), where both must describe the same network.
    #[error("float model does not match the quantized model at layer {layer:?}: {reason}")]
    ModelMismatch {
        /// The layer.
        layer: String,
        /// What differs.
        reason: String,
    },
    /// A model file (or its bytes) that is not a valid quantized model: corrupt container,
    /// missing or malformed metadata, a tensor missing, of the wrong type or shape, or
    /// parameters out of range.
    #[error("invalid quantized model file: {reason}")]
    BadModelFile {
        /// What is wrong.
        reason: String,
    },
    /// A model file in a layout version this build does not read (version 1 files, with their
    /// JSON metadata, predate the compact layout: convert the float model again).
    #[error(
        "model file format version {found}; this build reads version {supported} only \
         (convert the float model again)"
    )]
    UnsupportedVersion {
        /// The version the file declares (`"1"` for the JSON layout).
        found: String,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A weight tensor stored with an encoding that no codec given to the loader handles.
    #[error(
        "tensor {tensor:?} is stored with encoding {encoding:?}; pass a WeightCodec for it to \
         load_with"
    )]
    UnknownEncoding {
        /// The tensor.
        tensor: String,
        /// The encoding recorded in the file.
        encoding: String,
    },
    /// A [`WeightCodec`](crate::file::WeightCodec) failed to decode a tensor.
    #[error("weight codec {encoding:?} failed on tensor {tensor:?}: {source}")]
    Codec {
        /// The tensor.
        tensor: String,
        /// The codec's name.
        encoding: String,
        /// The codec's error.
        source: crate::file::CodecError,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An error from pare-tensor (running the float model during calibration, writing a file).
    #[error(transparent)]
    Tensor(#[from] pare_tensor::TensorError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, QuantError>;

/// An expected shape in pare's one form: a leading 0 (any batch) as `batch`, another 0 (any
/// size) as `_`: `[batch, 28, 28, 1]`.
fn expected_shape(dims: &[usize]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(i, &d)| match (i, d) {
            (0, 0) => "batch".to_string(),
            (_, 0) => "_".to_string(),
            _ => d.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
