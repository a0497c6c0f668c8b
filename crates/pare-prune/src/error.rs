//! The crate's error type.

use std::path::PathBuf;

use pare_tensor::TensorError;

/// Everything that can go wrong building a schedule, computing a mask, reading a sparse tensor or
/// model file, running a sparse kernel, or rewriting a model.
///
/// Variants carry the offending numbers so the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// A sparsity (schedule parameter or mask argument) is outside `[0, 1)` or not finite.
    #[error("{param} must be in [0, 1), got {value}")]
    InvalidSparsity {
        /// Which parameter (`target_sparsity`, `initial_sparsity`, `sparsity`, …).
        param: &'static str,
        /// The value given.
        value: f32,
    },
    /// A schedule's `begin_step` is negative.
    #[error("begin_step must be >= 0, got {begin_step}")]
    InvalidBeginStep {
        /// The value given.
        begin_step: i64,
    },
    /// A schedule's `end_step` is not allowed for its `begin_step`.
    #[error("invalid end_step {end_step} for begin_step {begin_step}: {reason}")]
    InvalidEndStep {
        /// The schedule's begin step.
        begin_step: i64,
        /// The value given.
        end_step: i64,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A schedule's `frequency` is not positive.
    #[error("frequency must be > 0, got {frequency}")]
    InvalidFrequency {
        /// The value given.
        frequency: i64,
    },
    /// A polynomial-decay exponent is not a positive finite number.
    #[error("power must be finite and > 0, got {power}")]
    InvalidPower {
        /// The value given.
        power: f32,
    },
    /// A weight is NaN or infinite, so magnitudes cannot be ranked.
    #[error("non-finite weight {value} at flat index {index}")]
    NonFinite {
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The value found.
        value: f32,
    },
    /// A tensor has a rank the operation does not support.
    #[error("{op} needs {expected}, got shape {shape:?}")]
    BadRank {
        /// The operation.
        op: &'static str,
        /// What it needs, in words (`rank 2 [in, out]`, `rank >= 1`, …).
        expected: &'static str,
        /// The shape given.
        shape: Vec<usize>,
    },
    /// A block shape for block sparsity has a zero dimension.
    #[error("block shape {block:?} must have both dimensions >= 1")]
    InvalidBlockShape {
        /// The block shape given (rows, columns).
        block: [usize; 2],
    },
    /// An N:M pattern with `n == 0` or `n > m`.
    #[error("N:M sparsity needs 1 <= n <= m, got {n}:{m}")]
    InvalidNm {
        /// Weights kept per group.
        n: usize,
        /// Group length.
        m: usize,
    },
    /// The reduction length of a kernel is not a multiple of the N:M group length.
    #[error(
        "N:M sparsity with m = {m} needs the reduction length (all axes but the last) to be a \
         multiple of m, got {reduction_len} for shape {shape:?}"
    )]
    NmIndivisible {
        /// Group length.
        m: usize,
        /// Product of all axes but the last.
        reduction_len: usize,
        /// The kernel's shape.
        shape: Vec<usize>,
    },
    /// Two arrays that must have the same shape do not.
    #[error("{op}: shape mismatch, expected {expected:?}, got {found:?}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape given.
        found: Vec<usize>,
    },
    /// The same tensor name appears twice in a list of named tensors.
    #[error("tensor name {name:?} appears more than once")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// An error about one tensor of a named list, with the tensor's name.
    #[error("tensor {name:?}: {source}")]
    InTensor {
        /// The tensor's name.
        name: String,
        /// What went wrong with it.
        #[source]
        source: Box<PruneError>,
    },
    /// Serialized sparse tensor: the bytes end before a part that the header announces.
    #[error("sparse tensor truncated in {part}: needs {needed} bytes, {available} available")]
    Truncated {
        /// The part being read (`header`, `dims`, `payload`).
        part: &'static str,
        /// Bytes the part needs.
        needed: u64,
        /// Bytes left.
        available: u64,
    },
    /// Serialized sparse tensor: the magic bytes are wrong.
    #[error("not a pare sparse tensor: magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
        /// The four bytes expected.
        expected: [u8; 4],
    },
    /// Serialized sparse tensor: a header field has a value this version does not know.
    #[error("sparse tensor header field {field} has unsupported value {value}")]
    BadHeaderField {
        /// The field (`version`, `dtype`, `reserved`, `rank`).
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Serialized sparse tensor: the element type differs from the one asked for.
    #[error("sparse tensor holds {found} elements, {expected} was asked for")]
    DTypeMismatch {
        /// The type asked for.
        expected: &'static str,
        /// The type in the data.
        found: &'static str,
    },
    /// The element count (product of the dimensions) overflows, or its dense size would exceed
    /// `isize::MAX` bytes.
    #[error("dimensions {dims:?} are too large: element count or byte size overflows")]
    SizeOverflow {
        /// The dimensions.
        dims: Vec<u64>,
    },
    /// The number of non-zeros does not agree with the bitmask or the element count.
    #[error(
        "sparse tensor inconsistent: {reason} (nnz {nnz}, bitmask popcount {popcount}, {len} elements)"
    )]
    InconsistentSparse {
        /// What disagrees.
        reason: &'static str,
        /// Non-zero count announced (or values given).
        nnz: u64,
        /// Set bits in the bitmask.
        popcount: u64,
        /// Elements in the tensor.
        len: u64,
    },
    /// Serialized sparse tensor: bytes follow the last value.
    #[error("sparse tensor has {extra} trailing bytes after the payload")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// A dimension is too large for the kernel's index type.
    #[error("{what} = {value} exceeds the kernel's limit {max}")]
    TooLarge {
        /// Which size.
        what: &'static str,
        /// The size given.
        value: usize,
        /// The largest supported.
        max: usize,
    },
    /// A kernel path was requested that this CPU cannot run.
    #[error("kernel path {path} is not supported on this CPU")]
    UnsupportedIsa {
        /// The requested path.
        path: &'static str,
    },
    /// A parameter named for pruning (or in a mask list) is not in the model.
    #[error("the model has no parameter {name:?}")]
    UnknownParam {
        /// The name given.
        name: String,
    },
    /// A layer the operation cannot handle (a custom layer, a reshape between a pruned layer
    /// and its consumer, the model's output layer …).
    #[error("layer {layer:?}: {reason}")]
    Unsupported {
        /// The layer's name.
        layer: String,
        /// Why.
        reason: String,
    },
    /// A list of channels to keep is empty, unsorted, repeated or out of range.
    #[error("layer {layer:?}: bad channel list: {reason}")]
    BadChannels {
        /// The layer's name.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A sparse model file is malformed: not safetensors, bad metadata, a tensor of the wrong
    /// type, or a sparse tensor that does not decode.
    #[error("invalid sparse model file: {reason}")]
    BadFile {
        /// What is wrong.
        reason: String,
    },
    /// A model file's tensors do not match the model's parameters.
    #[error("model file does not match the model: {}", mismatches.join("; "))]
    FileMismatch {
        /// One line per missing, unexpected or mis-shaped tensor.
        mismatches: Vec<String>,
    },
    /// An error from pare-tensor (a model that does not chain, a training failure …).
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Training callbacks report errors as [`TensorError`]: a wrapped tensor error comes back out
/// unchanged, anything else travels as [`TensorError::Callback`].
impl From<PruneError> for TensorError {
    fn from(e: PruneError) -> TensorError {
        match e {
            PruneError::Tensor(t) => t,
            other => TensorError::Callback(Box::new(other)),
        }
    }
}

impl PruneError {
    /// Attaches a tensor name to an error about that tensor.
    pub(crate) fn in_tensor(self, name: &str) -> Self {
        PruneError::InTensor {
            name: name.to_owned(),
            source: Box::new(self),
        }
    }
}

/// `Result` with [`PruneError`].
pub type Result<T> = std::result::Result<T, PruneError>;
