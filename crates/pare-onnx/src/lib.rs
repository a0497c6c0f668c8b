//! ONNX export and Keras weight import for pare, checked by onnxruntime.
//!
//! - [`export_float`]: a float [`Sequential`] or graph model as plain ONNX (`Conv`,
//!   `MaxPool`, `Relu` / `LeakyRelu`, `Reshape`, `Gemm`; BatchNorm, depthwise convs, the
//!   average pools, the other activations and softmax as their ONNX operators; `Add` and
//!   `Concat` for a graph's merges), NHWC in and out as pare takes it, with the `Transpose`s
//!   ONNX's NCHW convolutions need.
//! - [`export_qdq`] / [`export_qoperator`]: a full-integer [`QuantizedModel`] in QDQ form
//!   (`QuantizeLinear` / `DequantizeLinear` around float operators, per-channel weight scales,
//!   int32 biases) or QOperator form (`QLinearConv`, int8 `MaxPool`, `Clip` for the fused
//!   ReLU and ReLU6, onnxruntime's `com.microsoft` contrib ops for leaky ReLU, the average
//!   pools and sigmoid), both with pare's exact scales and zero points. A pruned model exports with its
//!   zeros: ONNX has no sparse kernels, so the file is as large as the dense one and only the
//!   gzipped size ([`FileSize`]) shows the sparsity.
//! - [`write_all`]: the float, QDQ and QOperator files of a model in one call, with their sizes.
//! - [`keras`]: Keras weights (a safetensors file `tools/keras_to_safetensors.py` writes from a
//!   `.h5`) into a pare model of the same architecture.
//! - [`runtime`]: runs a file on onnxruntime through `tools/onnx_run.py`; [`compare`]: the
//!   agreement measures the tests and the export example report.
//! - [`proto`]: the ONNX protobuf messages, hand-written prost structs with `onnx.proto`'s field
//!   numbers (IR version [`IR_VERSION`], opset [`OPSET`]).
//!
//! Export a model to bytes and read it back:
//!
//! ```
//! use pare_onnx::{export_float, proto::ModelProto};
//! use prost::Message;
//!
//! let model = pare_tensor::models::small_cnn(0);
//! let bytes = export_float(&model)?.encode_to_vec();
//!
//! let back = ModelProto::decode(bytes.as_slice())?;
//! let graph = back.graph.expect("a graph");
//! let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
//! assert_eq!(
//!     ops,
//!     ["Reshape", "Transpose", "Conv", "Relu", "MaxPool", "Transpose", "Reshape", "Gemm"]
//! );
//! // The conv kernel is stored as ONNX's [out, in, kh, kw].
//! let kernel = graph.initializer.iter().find(|t| t.name == "conv2d/kernel").unwrap();
//! assert_eq!(kernel.dims, [12, 1, 3, 3]);
//! assert_eq!(graph.output[0].name, "logits");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
pub mod compare;
pub mod error;
mod float;
pub mod keras;
pub mod proto;
mod quant;
pub mod runtime;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use pare_quant::QuantizedModel;
use pare_tensor::Sequential;
use prost::Message;

pub use builder::{IR_VERSION, MS_DOMAIN, OPSET};
pub use error::{OnnxError, Result};
pub use float::export_float;
pub use quant::{
    ActivationType, QOperatorOptions, export_qdq, export_qoperator, export_qoperator_with,
};

/// The three forms a model exports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Float operators on float weights.
    Float,
    /// int8 weights and activations as `QuantizeLinear` / `DequantizeLinear` pairs around
    /// float operators.
    Qdq,
    /// Integer operators (`QLinearConv`, int8 `MaxPool`), int8 in and out.
    QOperator,
}

impl Format {
    /// Every format, in the order [`write_all`] writes them.
    pub const ALL: [Format; 3] = [Format::Float, Format::Qdq, Format::QOperator];

    /// Lower-case name (`float`, `qdq`, `qoperator`), as the file suffix.
    pub fn name(self) -> &'static str {
        match self {
            Format::Float => "float",
            Format::Qdq => "qdq",
            Format::QOperator => "qoperator",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown format {s:?}: expected float, qdq or qoperator"))
    }
}

/// Size of a file's bytes raw and after gzip at level 9 (flate2's best, what `gzip -9` gives
/// bar the file-name header), to print beside pare's own format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSize {
    /// Bytes.
    pub raw: usize,
    /// Bytes gzipped.
    pub gzip: usize,
}

impl FileSize {
    /// The sizes of `bytes`.
    pub fn of(bytes: &[u8]) -> FileSize {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).expect("writing to a Vec cannot fail");
        let gzip = e.finish().expect("writing to a Vec cannot fail").len();
        FileSize {
            raw: bytes.len(),
            gzip,
        }
    }

    /// The sizes of the file at `path`.
    ///
    /// # Errors
    /// [`OnnxError::Io`] if it cannot be read.
    pub fn of_file(path: &Path) -> Result<FileSize> {
        let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(FileSize::of(&bytes))
    }
}

/// One file [`write_all`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFile {
    /// Which form.
    pub format: Format,
    /// Where.
    pub path: PathBuf,
    /// Its size.
    pub size: FileSize,
}

/// Writes `model` to `path` atomically; returns its size.
///
/// # Errors
/// [`OnnxError::Tensor`] wrapping the I/O error.
pub fn save(model: &proto::ModelProto, path: &Path) -> Result<FileSize> {
    let bytes = model.encode_to_vec();
    pare_tensor::io::write_atomic(path, &bytes)?;
    Ok(FileSize::of(&bytes))
}

/// Reads an ONNX file.
///
/// # Errors
/// [`OnnxError::Io`] or [`OnnxError::Decode`].
pub fn load(path: &Path) -> Result<proto::ModelProto> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(proto::ModelProto::decode(bytes.as_slice())?)
}

/// Exports a model in one form: `float` for [`Format::Float`], `int8` for the others.
///
/// # Errors
/// [`OnnxError::Unsupported`] when the form needs the model not given, or as the exporter.
pub fn export(
    format: Format,
    float: Option<&Sequential>,
    int8: Option<&QuantizedModel>,
) -> Result<proto::ModelProto> {
    export_with(format, float, int8, &QOperatorOptions::default())
}

/// [`export`] with the [`QOperatorOptions`] a QOperator export takes.
///
/// # Errors
/// As [`export`].
pub fn export_with(
    format: Format,
    float: Option<&Sequential>,
    int8: Option<&QuantizedModel>,
    options: &QOperatorOptions,
) -> Result<proto::ModelProto> {
    let missing = |what: &str| OnnxError::Unsupported {
        layer: "model".into(),
        reason: format!("the {format} form needs {what}"),
    };
    match format {
        Format::Float => export_float(float.ok_or_else(|| missing("a float model"))?),
        Format::Qdq => export_qdq(int8.ok_or_else(|| missing("an int8 model"))?),
        Format::QOperator => {
            export_qoperator_with(int8.ok_or_else(|| missing("an int8 model"))?, options)
        }
    }
}

/// Writes `dir/<stem>-float.onnx` (from `float`) and `dir/<stem>-qdq.onnx`,
/// `dir/<stem>-qoperator.onnx` (from `int8`), whichever models are given; returns the files
/// with their sizes. Every model is exported before any file is written.
///
/// # Errors
/// As the exporters, or [`OnnxError::Tensor`] wrapping an I/O error.
pub fn write_all(
    dir: &Path,
    stem: &str,
    float: Option<&Sequential>,
    int8: Option<&QuantizedModel>,
) -> Result<Vec<ExportedFile>> {
    let formats: Vec<Format> = Format::ALL
        .into_iter()
        .filter(|f| match f {
            Format::Float => float.is_some(),
            _ => int8.is_some(),
        })
        .collect();
    let models = formats
        .iter()
        .map(|&f| export(f, float, int8))
        .collect::<Result<Vec<_>>>()?;
    formats
        .into_iter()
        .zip(models)
        .map(|(format, m)| {
            let path = dir.join(format!("{stem}-{format}.onnx"));
            let size = save(&m, &path)?;
            Ok(ExportedFile { format, path, size })
        })
        .collect()
}
