//! The error type of pare-tensor.

use std::path::PathBuf;

/// Everything that can go wrong with input a user hands to pare-tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// An input batch does not have the shape a layer expects.
    #[error("{layer}: expected input shape {expected:?} (batch dimension excluded), got {found:?}")]
    InputShape {
        /// Layer (or model) that rejected the input.
        layer: String,
        /// Shape the layer accepts, without the batch dimension.
        expected: Vec<usize>,
        /// Shape it was given, without the batch dimension.
        found: Vec<usize>,
    },
    /// Images and labels disagree on the number of examples.
    #[error("{what}: {images} inputs but {labels} labels")]
    LengthMismatch {
        /// What was being checked.
        what: &'static str,
        /// Number of inputs.
        images: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not a valid class index for the model's output.
    #[error("label {label} at index {index} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// Position of the label.
        index: usize,
        /// The label.
        label: usize,
        /// Number of classes the model outputs.
        classes: usize,
    },
    /// A hyper-parameter is outside its valid range.
    #[error("invalid hyper-parameter {name} = {value}: {reason}")]
    BadHyperParameter {
        /// Name of the parameter (`learning_rate`, `batch_size`, ...).
        name: &'static str,
        /// The rejected value, printed.
        value: String,
        /// What range is valid.
        reason: &'static str,
    },
    /// Input data holds NaN or infinity.
    #[error("{what} contains a non-finite value at flat index {index}")]
    NonFinite {
        /// What was being checked.
        what: String,
        /// Flat index of the first non-finite value.
        index: usize,
    },
    /// A layer was configured with shapes that cannot work.
    #[error("layer {layer}: {reason}")]
    BadLayer {
        /// Layer name.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A checkpoint file is not valid safetensors or holds unsupported data.
    #[error("{path}: invalid checkpoint: {reason}")]
    BadCheckpoint {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint's tensors do not match the model's parameters.
    #[error("{path}: checkpoint does not match the model: {}", mismatches.join("; "))]
    CheckpointMismatch {
        /// File involved.
        path: PathBuf,
        /// One line per missing, unexpected or mis-shaped tensor.
        mismatches: Vec<String>,
    },
    /// A training callback or objective failed.
    #[error("callback failed: {0}")]
    Callback(Box<dyn std::error::Error + Send + Sync>),
    /// Training produced a non-finite loss (diverged).
    #[error("training diverged: loss is {loss} at step {step}")]
    Diverged {
        /// The loss value.
        loss: f32,
        /// Global step.
        step: u64,
    },
    /// The data set is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
}

/// Result alias of pare-tensor.
pub type Result<T> = std::result::Result<T, TensorError>;
