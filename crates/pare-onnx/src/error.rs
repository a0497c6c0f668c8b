//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong exporting, importing or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// A layer (or model) the exporter has no ONNX form for.
    #[error("layer {layer}: {reason}")]
    Unsupported {
        /// The layer's name (or `model`).
        layer: String,
        /// Why it cannot be exported.
        reason: String,
    },
    /// A Keras tensor whose shape differs from the pare layer's parameter.
    #[error(
        "Keras weights: layer {layer} expects {tensor} of shape {expected:?}, the file has {found:?}"
    )]
    KerasShape {
        /// The first layer whose shape disagrees.
        layer: String,
        /// Keras name of the tensor (`conv2d/kernel`).
        tensor: String,
        /// Shape of the pare parameter.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A parameter of the model that the Keras file does not hold.
    #[error(
        "Keras weights: layer {layer} needs {tensor}, which the file lacks (it has: {available})"
    )]
    KerasMissing {
        /// The layer.
        layer: String,
        /// Keras name of the missing tensor.
        tensor: String,
        /// The tensor names the file holds, comma-separated.
        available: String,
    },
    /// A tensor of the Keras file that no layer of the model takes.
    #[error("Keras weights: tensor {tensor} matches no layer of the model")]
    KerasUnused {
        /// Keras name of the tensor.
        tensor: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Bytes that do not decode as an ONNX `ModelProto`.
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The Python interpreter with onnxruntime is not where it was looked for.
    #[error("no Python with onnxruntime at {}: run tools/setup-onnx.sh", python.display())]
    RuntimeMissing {
        /// The interpreter looked for.
        python: PathBuf,
    },
    /// onnxruntime (through the Python tool) failed or answered something unexpected.
    #[error("onnxruntime: {reason}")]
    Runtime {
        /// What went wrong, with the tool's stderr where there is one.
        reason: String,
    },
    /// From pare-tensor (checkpoints, shapes).
    #[error(transparent)]
    Tensor(#[from] pare_tensor::TensorError),
    /// From pare-quant.
    #[error(transparent)]
    Quant(#[from] pare_quant::QuantError),
}

/// `Result` with [`OnnxError`].
pub type Result<T> = std::result::Result<T, OnnxError>;
