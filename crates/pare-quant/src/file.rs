//! The quantized model file: one safetensors container, with a pluggable weight encoding.
//!
//! # Layout
//!
//! - int8 weights as `I8` tensors named `<layer>.kernel` (shape as the float layer's kernel),
//!   unless a [`WeightCodec`] encoded them: then a `U8` tensor of the encoded bytes, shape
//!   `[len]`, with the codec's [`name`](WeightCodec::name) and the kernel's shape recorded for
//!   that layer in the metadata (`kernel_encoding`, `kernel_shape`);
//! - biases as `I32` tensors `<layer>.bias` (`F32` in dynamic-range models);
//! - per-channel weight scales as `F32` tensors `<layer>.weight_scale`;
//! - the architecture, the activation quantization parameters and the encodings as JSON in the
//!   string metadata under `pare_quant` (parameters only for the layers that compute new ones:
//!   max-pool, reshape and ReLU keep their input's).
//!
//! The fixed-point requantization multipliers are not stored: they are recomputed from the
//! scales at load, so the file holds nothing redundant.
//!
//! # Weight encodings
//!
//! pare-quant does not know about sparse formats (pare-prune may not be a dependency of it).
//! A caller that has one implements [`WeightCodec`] and passes it to
//! [`QuantizedModel::save_with`] / [`QuantizedModel::load_with`] (or
//! [`to_bytes_with`](QuantizedModel::to_bytes_with) /
//! [`from_bytes_with`](QuantizedModel::from_bytes_with)); tensors the codec declines (returns
//! `None`) are stored dense. Loading checks that the decoded tensor has the declared
//! shape, so a codec cannot smuggle in a wrong-sized weight.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::model::{
    ActQuant, Bias, InputType, LayerKind, MAX_ELEMENTS, Mode, ModelParts, OutputType, Provenance,
    QuantizedLayer, QuantizedModel, QuantizedWeights,
};

/// The error a [`WeightCodec`] returns when it cannot decode its bytes.
pub type CodecError = Box<dyn std::error::Error + Send + Sync>;

/// A pluggable encoding for the int8 weight tensors of a model file (e.g. a sparse bitmask +
/// non-zero values format).
///
/// ```
/// use ndarray::{ArrayD, ArrayViewD, IxDyn};
/// use pare_quant::file::{CodecError, WeightCodec};
///
/// /// Stores weights as raw bytes, reversed (a toy codec).
/// struct Reversed;
///
/// impl WeightCodec for Reversed {
///     fn name(&self) -> &str {
///         "reversed-v1"
///     }
///     fn encode(&self, _tensor: &str, weights: ArrayViewD<'_, i8>) -> Option<Vec<u8>> {
///         let mut bytes: Vec<u8> = weights.iter().map(|&w| w as u8).collect();
///         bytes.reverse();
///         Some(bytes)
///     }
///     fn decode(
///         &self,
///         _tensor: &str,
///         shape: &[usize],
///         bytes: &[u8],
///     ) -> Result<ArrayD<i8>, CodecError> {
///         let values = bytes.iter().rev().map(|&b| b as i8).collect();
///         Ok(ArrayD::from_shape_vec(IxDyn(shape), values)?)
///     }
/// }
/// ```
pub trait WeightCodec: Send + Sync {
    /// The encoding's tag, recorded in the file for every tensor this codec encoded and
    /// matched at load. Must not be `"dense"` (reserved for plain `I8` tensors).
    fn name(&self) -> &str;

    /// Encodes one weight tensor (`tensor` is its name, `<layer>.kernel`). `None` stores it as
    /// a plain `I8` tensor instead, e.g. when the encoding would not be smaller.
    fn encode(&self, tensor: &str, weights: ArrayViewD<'_, i8>) -> Option<Vec<u8>>;

    /// Decodes the bytes [`encode`](WeightCodec::encode) wrote for `tensor`, whose declared
    /// shape is `shape`. The bytes come from a file and may be corrupt: return an error, never
    /// panic.
    fn decode(
        &self,
        tensor: &str,
        shape: &[usize],
        bytes: &[u8],
    ) -> std::result::Result<ArrayD<i8>, CodecError>;
}

/// Value of the `format` field in the metadata.
pub const FORMAT: &str = "pare-quant";
/// Version of the layout written by this crate.
pub const VERSION: u32 = 1;
/// Metadata key holding the JSON description.
pub const METADATA_KEY: &str = "pare_quant";
/// The encoding tag of plain `I8` weight tensors.
pub const DENSE: &str = "dense";

#[derive(Serialize, Deserialize)]
struct FileMeta {
    format: String,
    version: u32,
    mode: Mode,
    #[serde(default, skip_serializing_if = "is_default")]
    input_type: InputType,
    #[serde(default, skip_serializing_if = "is_default")]
    output_type: OutputType,
    input_shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<ActQuant>,
    provenance: Provenance,
    layers: Vec<FileLayer>,
}

#[derive(Serialize, Deserialize)]
struct FileLayer {
    name: String,
    #[serde(flatten)]
    kind: LayerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<ActQuant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kernel_shape: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kernel_encoding: Option<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn bad(reason: impl Into<String>) -> QuantError {
    QuantError::BadModelFile {
        reason: reason.into(),
    }
}

fn kernel_name(layer: &str) -> String {
    format!("{layer}.kernel")
}

fn bias_name(layer: &str) -> String {
    format!("{layer}.bias")
}

fn scale_name(layer: &str) -> String {
    format!("{layer}.weight_scale")
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| f(v)).collect()
}

impl QuantizedModel {
    /// The model file's bytes, int8 weights stored dense.
    ///
    /// # Errors
    /// Only if the safetensors header cannot be written (a model far larger than any file).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.encode(None)
    }

    /// The model file's bytes, weights encoded by `codec` where it accepts them.
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] if the codec calls itself `"dense"`; as
    /// [`to_bytes`](Self::to_bytes).
    pub fn to_bytes_with(&self, codec: &dyn WeightCodec) -> Result<Vec<u8>> {
        self.encode(Some(codec))
    }

    /// Writes the model file atomically (temporary file + rename).
    ///
    /// # Errors
    /// On I/O failure, or as [`to_bytes`](Self::to_bytes).
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(pare_tensor::io::write_atomic(path, &self.to_bytes()?)?)
    }

    /// [`save`](Self::save) with weights encoded by `codec`.
    ///
    /// # Errors
    /// As [`save`](Self::save) and [`to_bytes_with`](Self::to_bytes_with).
    pub fn save_with(&self, path: &Path, codec: &dyn WeightCodec) -> Result<()> {
        Ok(pare_tensor::io::write_atomic(
            path,
            &self.to_bytes_with(codec)?,
        )?)
    }

    /// Reads a model file whose weights are all dense.
    ///
    /// # Errors
    /// [`QuantError::Io`] if the file cannot be read; otherwise as
    /// [`from_bytes`](Self::from_bytes).
    pub fn load(path: &Path) -> Result<Self> {
        Self::decode(&read(path)?, None)
    }

    /// Reads a model file whose weights may be encoded by `codec`.
    ///
    /// # Errors
    /// As [`load`](Self::load) and [`from_bytes_with`](Self::from_bytes_with).
    pub fn load_with(path: &Path, codec: &dyn WeightCodec) -> Result<Self> {
        Self::decode(&read(path)?, Some(codec))
    }

    /// Parses a model file's bytes. Every length, shape, dtype and parameter is checked before
    /// use; nothing in the file can make this panic or allocate more than the file's size plus
    /// the declared weights (each at most 2^28 elements).
    ///
    /// # Errors
    /// [`QuantError::BadModelFile`] for a corrupt container, missing or malformed metadata, a
    /// missing, extra or mis-typed tensor, or invalid parameters;
    /// [`QuantError::UnknownEncoding`] for encoded weights (use
    /// [`from_bytes_with`](Self::from_bytes_with)).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::decode(bytes, None)
    }

    /// [`from_bytes`](Self::from_bytes) for files whose weights `codec` may have encoded.
    ///
    /// # Errors
    /// As [`from_bytes`](Self::from_bytes), [`QuantError::UnknownEncoding`] for an encoding
    /// other than the codec's, [`QuantError::Codec`] if the codec fails.
    pub fn from_bytes_with(bytes: &[u8], codec: &dyn WeightCodec) -> Result<Self> {
        Self::decode(bytes, Some(codec))
    }

    fn encode(&self, codec: Option<&dyn WeightCodec>) -> Result<Vec<u8>> {
        if let Some(c) = codec
            && c.name() == DENSE
        {
            return Err(QuantError::InvalidParameter {
                name: "WeightCodec::name",
                value: DENSE.into(),
                reason: "\"dense\" is reserved for plain I8 weight tensors",
            });
        }
        let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            // Pass-through layers keep their input's parameters: not stored.
            let mut fl = FileLayer {
                name: l.name.clone(),
                kind: l.kind.clone(),
                output: l.output.filter(|_| l.kind.requantizes()),
                kernel_shape: None,
                kernel_encoding: None,
            };
            if let Some(w) = &l.weights {
                let name = kernel_name(&l.name);
                let encoded =
                    codec.and_then(|c| Some((c.name(), c.encode(&name, w.kernel.view())?)));
                match encoded {
                    Some((tag, bytes)) => {
                        // The U8 blob does not carry the kernel's shape: the metadata does.
                        fl.kernel_encoding = Some(tag.to_string());
                        fl.kernel_shape = Some(w.kernel.shape().to_vec());
                        blobs.push((name, Dtype::U8, vec![bytes.len()], bytes));
                    }
                    None => {
                        let bytes = w.kernel.iter().map(|&q| q as u8).collect();
                        blobs.push((name, Dtype::I8, w.kernel.shape().to_vec(), bytes));
                    }
                }
                let (dtype, bytes) = match &w.bias {
                    Bias::Int32(b) => (Dtype::I32, le_bytes(b, i32::to_le_bytes)),
                    Bias::Float(b) => (Dtype::F32, le_bytes(b, f32::to_le_bytes)),
                };
                blobs.push((bias_name(&l.name), dtype, vec![w.bias.len()], bytes));
                let scale = le_bytes(&w.scale, f32::to_le_bytes);
                blobs.push((scale_name(&l.name), Dtype::F32, vec![w.scale.len()], scale));
            }
            layers.push(fl);
        }
        let meta = FileMeta {
            format: FORMAT.into(),
            version: VERSION,
            mode: self.mode,
            input_type: self.input_type,
            output_type: self.output_type,
            input_shape: self.input_shape.clone(),
            input: self.input,
            provenance: self.provenance.clone(),
            layers,
        };
        let json = serde_json::to_string(&meta).map_err(|e| bad(e.to_string()))?;
        let views = blobs
            .iter()
            .map(|(n, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| bad(format!("tensor {n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([(METADATA_KEY.to_string(), json)]);
        safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| bad(e.to_string()))
    }

    fn decode(bytes: &[u8], codec: Option<&dyn WeightCodec>) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| bad(format!("no {METADATA_KEY:?} entry in the metadata")))?;
        let meta: FileMeta = serde_json::from_str(json)
            .map_err(|e| bad(format!("metadata {METADATA_KEY:?}: {e}")))?;
        if meta.format != FORMAT || meta.version != VERSION {
            return Err(bad(format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                meta.format, meta.version
            )));
        }
        let full = meta.mode == Mode::FullInteger;
        let mut used = 0usize;
        let mut tensor = |name: &str, dtype: Dtype| -> Result<TensorView<'_>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor {name:?} is missing")))?;
            if t.dtype() != dtype {
                return Err(bad(format!(
                    "tensor {name:?} has dtype {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            used += 1;
            Ok(t)
        };
        let vector = |t: &TensorView<'_>, name: &str| -> Result<usize> {
            match t.shape() {
                &[n] => Ok(n),
                s => Err(bad(format!(
                    "tensor {name:?} has shape {s:?}, expected 1-D"
                ))),
            }
        };
        let mut layers = Vec::with_capacity(meta.layers.len());
        let mut current = meta.input;
        for fl in meta.layers {
            let output = if fl.kind.requantizes() {
                current = fl.output;
                fl.output
            } else if fl.output.is_some() {
                return Err(bad(format!(
                    "layer {:?} ({}) keeps its input's parameters; it cannot declare its own",
                    fl.name,
                    fl.kind.op_name()
                )));
            } else {
                current
            };
            let weights = if fl.kind.has_weights() {
                let kname = kernel_name(&fl.name);
                let encoding = fl.kernel_encoding.as_deref().unwrap_or(DENSE);
                let kernel = if encoding == DENSE {
                    if fl.kernel_shape.is_some() {
                        return Err(bad(format!(
                            "layer {:?}: kernel_shape is only for encoded kernels",
                            fl.name
                        )));
                    }
                    // safetensors checked that the data holds exactly the shape's elements.
                    let t = tensor(&kname, Dtype::I8)?;
                    if t.shape().is_empty() || t.data().len() > MAX_ELEMENTS {
                        return Err(bad(format!("tensor {kname:?} has shape {:?}", t.shape())));
                    }
                    let data = t.data().iter().map(|&b| b as i8).collect();
                    ArrayD::from_shape_vec(IxDyn(t.shape()), data)
                        .map_err(|e| bad(format!("tensor {kname:?}: {e}")))?
                } else {
                    let shape = fl.kernel_shape.ok_or_else(|| {
                        bad(format!(
                            "layer {:?}: encoded kernel without kernel_shape",
                            fl.name
                        ))
                    })?;
                    let elements = shape
                        .iter()
                        .try_fold(1usize, |a, &d| a.checked_mul(d))
                        .filter(|&n| n <= MAX_ELEMENTS && !shape.is_empty())
                        .ok_or_else(|| bad(format!("kernel shape {shape:?} is too large")))?;
                    let c = codec.filter(|c| c.name() == encoding).ok_or_else(|| {
                        QuantError::UnknownEncoding {
                            tensor: kname.clone(),
                            encoding: encoding.to_string(),
                        }
                    })?;
                    let t = tensor(&kname, Dtype::U8)?;
                    vector(&t, &kname)?;
                    let k =
                        c.decode(&kname, &shape, t.data())
                            .map_err(|source| QuantError::Codec {
                                tensor: kname.clone(),
                                encoding: encoding.to_string(),
                                source,
                            })?;
                    if k.shape() != &shape[..] || k.len() != elements {
                        return Err(bad(format!(
                            "codec {encoding:?} decoded {kname:?} to shape {:?}, declared {shape:?}",
                            k.shape()
                        )));
                    }
                    k.as_standard_layout().into_owned()
                };
                let bname = bias_name(&fl.name);
                let bias = if full {
                    let t = tensor(&bname, Dtype::I32)?;
                    vector(&t, &bname)?;
                    Bias::Int32(
                        t.data()
                            .chunks_exact(4)
                            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    )
                } else {
                    let t = tensor(&bname, Dtype::F32)?;
                    vector(&t, &bname)?;
                    Bias::Float(f32s(t.data()))
                };
                let sname = scale_name(&fl.name);
                let t = tensor(&sname, Dtype::F32)?;
                vector(&t, &sname)?;
                Some(QuantizedWeights {
                    kernel,
                    scale: f32s(t.data()),
                    bias,
                })
            } else {
                if fl.kernel_shape.is_some() || fl.kernel_encoding.is_some() {
                    return Err(bad(format!(
                        "layer {:?} ({}) declares a kernel",
                        fl.name,
                        fl.kind.op_name()
                    )));
                }
                None
            };
            layers.push(QuantizedLayer {
                name: fl.name,
                kind: fl.kind,
                weights,
                output,
                input_shape: vec![],
                output_shape: vec![],
            });
        }
        if used != st.len() {
            return Err(bad(format!(
                "{} tensors in the file, {used} belong to the model",
                st.len()
            )));
        }
        QuantizedModel::from_parts(ModelParts {
            mode: meta.mode,
            input_type: meta.input_type,
            output_type: meta.output_type,
            input_shape: meta.input_shape,
            input: meta.input,
            layers,
            provenance: meta.provenance,
        })
        .map_err(|e| bad(e.to_string()))
    }
}

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    })
}
