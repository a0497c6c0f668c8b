//! The error type of the umbrella crate: the crates' errors, plus what composing them can find.

use std::path::PathBuf;

/// Everything the umbrella crate's recipes (sweeps, results files, byte breakdowns) can fail on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From pare-tensor (data, training, checkpoints).
    #[error(transparent)]
    Tensor(#[from] pare_tensor::TensorError),
    /// From pare-prune (schedules, masks, sparse files).
    #[error(transparent)]
    Prune(#[from] pare_prune::PruneError),
    /// From pare-quant (conversion, the int8 engine, model files).
    #[error(transparent)]
    Quant(#[from] pare_quant::QuantError),
    /// From pare-distill.
    #[error(transparent)]
    Distill(#[from] pare_distill::DistillError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A model file is not the safetensors file it should be.
    #[error("model file: {reason}")]
    BadModelFile {
        /// What is wrong.
        reason: String,
    },
    /// A setting of a recipe is outside its valid range.
    #[error("invalid setting {name} = {value}: {reason}")]
    BadSetting {
        /// Name of the setting.
        name: &'static str,
        /// The rejected value, printed.
        value: String,
        /// What is valid.
        reason: &'static str,
    },
    /// A check a recipe makes on its own result failed: a saved file that does not load back to
    /// the same model, a model surgery that changed the outputs.
    #[error("{what}: {reason}")]
    Check {
        /// What was checked.
        what: String,
        /// How it failed.
        reason: String,
    },
    /// A results file could not be serialised.
    #[error("results JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias of the umbrella crate.
pub type Result<T> = std::result::Result<T, Error>;
