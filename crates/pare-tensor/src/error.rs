//! The error type of pare-tensor.

use std::path::PathBuf;

/// Everything that can go wrong with input a user hands to pare-tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// An input batch does not have the shape a layer expects.
    #[error(
        "{layer}: expected {}, got {}",
        batch_shape(expected),
        batch_shape(found)
    )]
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
    /// A label is negative, so no class index.
    #[error("label {label} at index {index} is not a class index (must be >= 0)")]
    BadLabel {
        /// Position of the label.
        index: usize,
        /// The label, printed.
        label: String,
    },
    /// A hyper-parameter is outside its valid range.
    #[error("{}", hyper_parameter_message(name, value, reason))]
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
    /// Training produced a non-finite loss or gradient (diverged); nothing was updated or
    /// saved at this step.
    #[error(
        "training diverged at epoch {epoch}, step {step}: {what} is {value} (try a lower learning rate)"
    )]
    Diverged {
        /// What became non-finite: `the loss`, or `the gradient of <parameter>`.
        what: String,
        /// The first non-finite value found.
        value: f32,
        /// The epoch, from 1 as the progress lines count.
        epoch: usize,
        /// Global step (the optimizer's iteration count).
        step: u64,
    },
    /// A tensor's data (or the header) does not match the CRC-32C the file recorded when it
    /// was written: the file is damaged.
    #[error(
        "{}{} is corrupt: its CRC-32C is {computed:08x}, the file recorded {stored:08x}",
        file_prefix(path.as_deref()),
        tensor.as_ref().map_or("the header".to_string(), |t| format!("tensor {t:?}"))
    )]
    ChecksumMismatch {
        /// File involved, when known.
        path: Option<PathBuf>,
        /// The tensor whose data differs; `None` for the header (metadata, names, dtypes,
        /// shapes).
        tensor: Option<String>,
        /// The checksum the file recorded.
        stored: u32,
        /// The checksum of the bytes now in the file.
        computed: u32,
    },
    /// A file records checksums, but one is missing, malformed or names no tensor.
    #[error("{}damaged checksums: {reason}", file_prefix(path.as_deref()))]
    BadChecksums {
        /// File involved, when known.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// Tensors and metadata that cannot be written as a safetensors container.
    #[error("cannot write the safetensors container: {reason}")]
    InvalidContainer {
        /// What is wrong.
        reason: String,
    },
    /// The data set is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A graph model's wiring is wrong (see [`crate::functional`]).
    #[error(transparent)]
    Wiring(#[from] WiringError),
}

/// What is wrong with the wiring of a graph model ([`crate::functional::FunctionalBuilder`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WiringError {
    /// A node names an input that is neither `"input"` nor another node.
    #[error("node {node:?} takes {input:?}, which is neither \"input\" nor a node of the model")]
    UnknownInput {
        /// The node.
        node: String,
        /// The name it gave.
        input: String,
    },
    /// Two nodes (or a node and the model input) share a name.
    #[error("two nodes are called {0:?}; node names must be unique and not \"input\"")]
    DuplicateName(String),
    /// The nodes' inputs form a cycle, so no order computes them.
    #[error("the wiring has a cycle through {}", .0.join(" → "))]
    Cycle(Vec<String>),
    /// A merge layer's inputs do not fit together.
    #[error("node {node:?}: inputs of shapes {} {reason}", shapes_list(shapes))]
    ShapeMismatch {
        /// The merge node.
        node: String,
        /// Its inputs' per-example shapes.
        shapes: Vec<Vec<usize>>,
        /// Why they do not fit.
        reason: String,
    },
    /// A node was given a number of inputs its layer does not take.
    #[error("node {node:?} takes {expected} but was given {found}")]
    Arity {
        /// The node.
        node: String,
        /// What the layer takes, e.g. "one input" or "two or more inputs".
        expected: &'static str,
        /// How many it was given.
        found: usize,
    },
    /// Not exactly one node is left unconsumed, so the model has no single output.
    #[error("a model has one output, but {} nodes feed nothing: {}", .0.len(), .0.join(", "))]
    Outputs(Vec<String>),
    /// The model has no nodes.
    #[error("a graph model needs at least one node")]
    NoNodes,
    /// An operation that handles only a straight chain of layers was given a graph model.
    #[error("{what} takes a sequential model (a chain of layers), not a graph model")]
    NotSequential {
        /// The operation.
        what: String,
    },
}

fn shapes_list(shapes: &[Vec<usize>]) -> String {
    let s: Vec<String> = shapes.iter().map(|s| batch_shape(s)).collect();
    s.join(", ")
}

/// A per-example shape in the one form every pare message uses: the batch dimension named,
/// a dimension that may be anything (0 in `dims`) as `_`: `[batch, 28, 28, 1]`,
/// `[batch, _, _, 4]`.
pub fn batch_shape(dims: &[usize]) -> String {
    let mut parts = vec!["batch".to_string()];
    parts.extend(dims.iter().map(|&d| {
        if d == 0 {
            "_".to_string()
        } else {
            d.to_string()
        }
    }));
    format!("[{}]", parts.join(", "))
}

/// The message of a rejected hyper-parameter, shared by the crates' errors:
/// `batch_size = 0: must be >= 1`, or for a NaN or infinite value
/// `learning_rate is infinite: must be finite and > 0`.
pub fn hyper_parameter_message(name: &str, value: &str, reason: &str) -> String {
    let what = match value {
        "NaN" => "NaN",
        "inf" | "-inf" => "infinite",
        _ => return format!("{name} = {value}: {reason}"),
    };
    let range = reason.strip_prefix("must be ").unwrap_or(reason);
    format!("{name} is {what}: must be finite and {range}")
}

fn file_prefix(path: Option<&std::path::Path>) -> String {
    path.map_or(String::new(), |p| format!("{}: ", p.display()))
}

impl TensorError {
    /// Names `path` in a checksum error that does not name a file yet (the readers of bytes
    /// cannot know it); other errors are returned unchanged.
    pub fn in_file(self, file: &std::path::Path) -> TensorError {
        match self {
            TensorError::ChecksumMismatch {
                path: None,
                tensor,
                stored,
                computed,
            } => TensorError::ChecksumMismatch {
                path: Some(file.to_path_buf()),
                tensor,
                stored,
                computed,
            },
            TensorError::BadChecksums { path: None, reason } => TensorError::BadChecksums {
                path: Some(file.to_path_buf()),
                reason,
            },
            other => other,
        }
    }
}

/// Result alias of pare-tensor.
pub type Result<T> = std::result::Result<T, TensorError>;
