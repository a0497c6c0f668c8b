//! The error type of pare-distill.

use pare_tensor::TensorError;

/// Everything that can go wrong with what a user hands to pare-distill.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistillError {
    /// A hyper-parameter is outside its valid range.
    #[error("{}", pare_tensor::hyper_parameter_message(name, value, reason))]
    BadHyperParameter {
        /// Name of the parameter (`alpha`, `temperature`, `beta`, ...).
        name: &'static str,
        /// The rejected value, printed.
        value: String,
        /// What range is valid.
        reason: &'static str,
    },
    /// A layer named for a hint (feature) loss does not exist in the model.
    #[error("{model} has no layer called {layer:?} (layers: {})", available.join(", "))]
    UnknownLayer {
        /// Which model was searched (`teacher` or `student`).
        model: &'static str,
        /// The requested name.
        layer: String,
        /// The model's layer names, in order.
        available: Vec<String>,
    },
    /// Two tensors that must agree in shape do not.
    #[error("{what}: student {student:?} vs teacher {teacher:?}")]
    ShapeMismatch {
        /// What was being compared.
        what: &'static str,
        /// Shape on the student side.
        student: Vec<usize>,
        /// Shape on the teacher side.
        teacher: Vec<usize>,
    },
    /// Labels do not fit the logits (count or class range).
    #[error("labels: {reason}")]
    BadLabels {
        /// What is wrong.
        reason: String,
    },
    /// A batch refers to an example the teacher-logit cache does not hold, or holds for
    /// different data (the cache was computed on another data set or order).
    #[error("teacher cache: {reason}")]
    CacheMismatch {
        /// What is wrong.
        reason: String,
    },
    /// The teacher produced a non-finite logit.
    #[error("teacher logits contain a non-finite value for example {index}")]
    NonFinite {
        /// Example whose logits are not finite.
        index: usize,
    },
    /// An error from pare-tensor (shapes, data, training).
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Result alias of pare-distill.
pub type Result<T> = std::result::Result<T, DistillError>;

/// [`pare_tensor::train::Objective`] reports errors as [`TensorError`]: a wrapped tensor error
/// comes back out unchanged, anything else travels as [`TensorError::Callback`].
impl From<DistillError> for TensorError {
    fn from(e: DistillError) -> TensorError {
        match e {
            DistillError::Tensor(t) => t,
            other => TensorError::Callback(Box::new(other)),
        }
    }
}
