//! The quantized model file: one safetensors container with a header of a few hundred bytes,
//! and a pluggable weight encoding.
//!
//! # Layout (format version 2)
//!
//! Tensors, in this order in the data section:
//!
//! - [`BIAS_TENSOR`] (`bias`): the biases of every conv, depthwise conv and dense layer, in
//!   layer order, one per
//!   output channel; `I32` in full-integer models, `F32` in dynamic-range ones;
//! - [`SCALE_TENSOR`] (`scale`): `F32`, the input's activation scale (full integer only), then
//!   for each layer in order its weight scales (one per output channel, or one) and, if it
//!   computes new activation parameters (conv, depthwise conv, dense, leaky ReLU, global
//!   average pool, sigmoid, tanh, hard-swish and softmax in a full-integer model), its output
//!   scale;
//! - `<layer>.kernel` for each weighted layer: the int8 codes as an `I8` tensor of the
//!   kernel's shape, or a 1-D `U8` tensor of the bytes a [`WeightCodec`] encoded them to;
//! - `<layer>.kernel.int4` instead for an int4 layer (flag `int4`) that no codec encoded: the
//!   codes in [−7, 7] packed two per byte, row-major, first code in the low nibble, two's
//!   complement ([`pack_int4`]), a 1-D `U8` tensor of `ceil(n / 2)` bytes.
//!   safetensors has no int4 dtype, hence the name; its CRC-32C is checked as every tensor's
//!   is, and files without int4 layers are unchanged.
//!
//! How `bias` and `scale` split into layers follows from the architecture, which the string
//! metadata describes in a few short entries of plain text (no JSON nested in a JSON string,
//! so nothing is escaped twice). For the tutorials' small CNN:
//!
//! ```text
//! pare_quant   2
//! mode         full-integer
//! input        28x28x1 zp=-128
//! layers       reshape 28x28x1;conv2d 3x3x1x12 relu zp=-128;max_pooling2d 2x2;flatten 2028;
//!              dense 2028x10 zp=55                                          (one line)
//! calibration  minmax per-channel n=100
//! ```
//!
//! - [`FORMAT_KEY`] (`pare_quant`): the format version, [`VERSION`];
//! - `mode`: `full-integer` or `dynamic-range`, followed by `input=int8` or `input=uint8` and
//!   `output=int8` where the declared input and output types are not float;
//! - `input`: one example's shape, then (full integer) the input zero point;
//! - `layers`: the architecture, below;
//! - `calibration`: the observer (absent for dynamic range), the weights' granularity and the
//!   number of calibration examples;
//! - `codec`: the [`WeightCodec`]'s name, present exactly when a kernel is stored encoded.
//!
//! - `crc32c` and `crc32c:<tensor>`: the CRC-32C of the header and of each tensor's data
//!   (see [`pare_tensor::io`]), written by every pare since the checksums were added and
//!   checked on load before anything else is parsed, so a flipped byte is
//!   [`pare_tensor::TensorError::ChecksumMismatch`] naming the tensor (or the header) rather
//!   than a silently different model. Files without them (older pare) still load;
//!   [`QuantizedModel::load_verified`] says which it was ([`Integrity`]). Old readers ignore
//!   the entries, so the format version did not change.
//!
//! Other entries are ignored, so tools may annotate a file.
//!
//! `layers` holds one entry per layer, separated by `;`. An entry is `name:op` (just `op` when
//! the layer is named like its op) and the op's arguments, separated by spaces; shapes are
//! written `AxBxC`. The ops are Keras' default layer names:
//!
//! ```text
//! conv2d         KHxKWxINxOUT  [strides=SHxSW] [same] [relu] [per-tensor] [int4] [zp=Z]
//! dense          INxOUT        [relu] [per-tensor] [int4] [zp=Z]
//! max_pooling2d  PHxPW         [strides=SHxSW] [same]       (strides default to the pool)
//! reshape        D0xD1x...                                   (to a per-example shape)
//! flatten        D                                           (a reshape to one dimension)
//! re_lu
//! leaky_re_lu    ALPHA         [zp=Z]
//! depthwise_conv2d  KHxKWxC·M  [strides=SHxSW] [same] [relu] [per-tensor] [int4] [zp=Z]
//! average_pooling2d  PHxPW     [strides=SHxSW] [same]       (strides default to the pool)
//! global_average_pooling2d     [zp=Z]
//! re_lu6
//! sigmoid                      [zp=Z]                        (scale 1/256, zp −128)
//! tanh                         [zp=Z]                        (scale 1/128, zp 0)
//! hard_swish                   [zp=Z]
//! softmax                      [zp=Z]                        (scale 1/256, zp −128)
//! add                          [relu] [zp=Z]                 (two inputs)
//! concatenate                  [zp=Z]                        (on the last axis)
//! ```
//!
//! Any entry may end in `in=A,B,...`: the (percent-encoded) names of the layers whose outputs
//! it takes, `input` for the model's input. Without it a layer takes the layer before it (the
//! input, for the first), so a chain's entries, and files written before graph models, have
//! none; a graph model writes it exactly where a layer takes something else. The wiring is in
//! the header, so the header's CRC-32C covers it like the rest of the architecture.
//!
//! `zp` is the layer's output zero point (full-integer models; its scale is in `scale`),
//! `per-tensor` marks one weight scale for all output channels, `int4` weight codes in [−7, 7]
//! (TFMOT's narrow-range 4-bit weights; int8 otherwise), conv strides default to 1 and
//! padding to valid. Layer and observer names are percent-encoded outside `[A-Za-z0-9_.-]`.
//! Layers that keep their input's parameters (pooling, reshape, ReLU, ReLU6) store none. A
//! depthwise kernel `[kh, kw, c, m]` is stored as `[kh, kw, c · m]`, its last axis the output
//! channel `ci · m + j` its scales follow.
//!
//! The fixed-point requantization multipliers are not stored either: they are recomputed from
//! the scales at load. The only redundancy is the kernel shapes, in both the `layers` entry and
//! the `I8` tensors, so that the metadata alone describes the network and an encoded kernel's
//! shape is known before it is decoded (loading checks that the two agree). The small CNN's
//! header is 640 bytes (504 of architecture, 136 of checksums; version 1's was 1,160), its
//! file 21,224 bytes, 20,576 of them tensor data.
//!
//! Files are written byte for byte the same for the same model (the header's order is fixed),
//! and every shape, length, dtype and parameter is checked at load. Version 1 files (one
//! JSON document in the metadata, tensors per layer) are not read: loading one is
//! [`QuantError::UnsupportedVersion`]; convert the float model again.
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

use std::fmt::Write as _;
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use pare_tensor::io::{Blob, Integrity, safetensors_bytes};
use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{QuantError, Result};
use crate::int4::{WeightBits, pack_int4, unpack_int4};
use crate::kernels::Padding;
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
    /// The encoding's tag, recorded in the file's `codec` metadata entry when this codec encoded
    /// a kernel, and matched at load. Must not be empty.
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

/// Metadata key that marks a pare-quant model file; its value is the format version.
pub const FORMAT_KEY: &str = "pare_quant";
/// Version of the layout written and read by this crate.
pub const VERSION: u32 = 2;
/// Name of the tensor holding every layer's biases.
pub const BIAS_TENSOR: &str = "bias";
/// Name of the tensor holding every scale (input, weights, layer outputs).
pub const SCALE_TENSOR: &str = "scale";

const MODE_KEY: &str = "mode";
const INPUT_KEY: &str = "input";
const LAYERS_KEY: &str = "layers";
const CALIBRATION_KEY: &str = "calibration";
const CODEC_KEY: &str = "codec";

/// Words that stand alone in an argument list (all others are `key=value` or positional).
const LAYER_FLAGS: &[&str] = &["same", "relu", "per-tensor", "int4"];
const GRANULARITIES: &[&str] = &["per-channel", "per-tensor"];

fn bad(reason: impl Into<String>) -> QuantError {
    QuantError::BadModelFile {
        reason: reason.into(),
    }
}

fn kernel_name(layer: &str) -> String {
    format!("{layer}.kernel")
}

/// The tensor of a layer's packed int4 kernel.
fn int4_kernel_name(layer: &str) -> String {
    format!("{layer}.kernel.int4")
}

impl QuantizedModel {
    /// The model file's bytes, int8 weights stored dense.
    ///
    /// # Errors
    /// None at present; the `Result` leaves room for limits of the container.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.encode(None)
    }

    /// The model file's bytes, weights encoded by `codec` where it accepts them.
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] if the codec's name is empty.
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
        Ok(Self::load_verified(path, None)?.0)
    }

    /// Reads a model file whose weights may be encoded by `codec`.
    ///
    /// # Errors
    /// As [`load`](Self::load) and [`from_bytes_with`](Self::from_bytes_with).
    pub fn load_with(path: &Path, codec: &dyn WeightCodec) -> Result<Self> {
        Ok(Self::load_verified(path, Some(codec))?.0)
    }

    /// Parses a model file's bytes. Every length, shape, dtype and parameter is checked before
    /// use; nothing in the file can make this panic or allocate more than the file's size plus
    /// the declared weights (each at most 2^28 elements).
    ///
    /// # Errors
    /// [`QuantError::BadModelFile`] for a corrupt container, missing or malformed metadata, a
    /// missing, extra or mis-typed tensor, tensors that do not fit the architecture, or invalid
    /// parameters; [`QuantError::UnsupportedVersion`] for another format version;
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
            && c.name().is_empty()
        {
            return Err(QuantError::InvalidParameter {
                name: "WeightCodec::name",
                value: String::new(),
                reason: "a codec needs a non-empty name to be recorded in the file",
            });
        }
        let full = self.mode == Mode::FullInteger;
        let mut bias = Vec::new();
        let mut scales: Vec<f32> = self.input.iter().map(|a| a.scale).collect();
        let mut kernels = Vec::new();
        let mut encoded = false;
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(layer_entry(l));
            if let Some(w) = &l.weights {
                scales.extend(&w.scale);
                match &w.bias {
                    Bias::Int32(b) => bias.extend(b.iter().flat_map(|v| v.to_le_bytes())),
                    Bias::Float(b) => bias.extend(b.iter().flat_map(|v| v.to_le_bytes())),
                }
                let name = kernel_name(&l.name);
                kernels.push(match codec.and_then(|c| c.encode(&name, w.kernel.view())) {
                    Some(bytes) => {
                        encoded = true;
                        Blob::new(name, Dtype::U8, vec![bytes.len()], bytes)
                    }
                    None if w.bits == WeightBits::Int4 => {
                        let bytes = pack_int4(w.kernel.iter().copied())?;
                        Blob::new(
                            int4_kernel_name(&l.name),
                            Dtype::U8,
                            vec![bytes.len()],
                            bytes,
                        )
                    }
                    None => {
                        let bytes = w.kernel.iter().map(|&q| q as u8).collect();
                        Blob::new(name, Dtype::I8, w.kernel.shape().to_vec(), bytes)
                    }
                });
            }
            if let Some(o) = l.output.filter(|_| l.kind.requantizes()) {
                scales.push(o.scale);
            }
        }
        let mut input = dims(&self.input_shape);
        if let Some(a) = self.input {
            let _ = write!(input, " zp={}", a.zero_point);
        }
        let mut metadata = vec![
            (FORMAT_KEY, VERSION.to_string()),
            (
                MODE_KEY,
                mode_entry(self.mode, self.input_type, self.output_type),
            ),
            (INPUT_KEY, input),
            (LAYERS_KEY, layers.join(";")),
            (CALIBRATION_KEY, calibration_entry(&self.provenance)),
        ];
        if let Some(c) = codec.filter(|_| encoded) {
            metadata.push((CODEC_KEY, c.name().to_string()));
        }
        // 4-byte types first, so every tensor's data is aligned to its element size.
        let bias_dtype = if full { Dtype::I32 } else { Dtype::F32 };
        let mut tensors = vec![
            Blob::new(BIAS_TENSOR, bias_dtype, vec![bias.len() / 4], bias),
            Blob::new(
                SCALE_TENSOR,
                Dtype::F32,
                vec![scales.len()],
                scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ),
        ];
        tensors.extend(kernels);
        let metadata: Vec<(String, String)> = metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Ok(safetensors_bytes(&metadata, &tensors)?)
    }

    fn decode(bytes: &[u8], codec: Option<&dyn WeightCodec>) -> Result<Self> {
        Ok(Self::decode_verified(bytes, codec)?.0)
    }

    /// [`load_with`](Self::load_with) (or [`load`](Self::load) when `codec` is `None`), also
    /// saying whether the file's checksums were verified or it has none (written by an older
    /// pare or another tool).
    ///
    /// # Errors
    /// As [`load_with`](Self::load_with); a checksum mismatch is
    /// [`QuantError::Tensor`] holding [`pare_tensor::TensorError::ChecksumMismatch`], which
    /// names the damaged tensor and the file.
    pub fn load_verified(
        path: &Path,
        codec: Option<&dyn WeightCodec>,
    ) -> Result<(Self, Integrity)> {
        Self::decode_verified(&read(path)?, codec).map_err(|e| match e {
            QuantError::Tensor(t) => QuantError::Tensor(t.in_file(path)),
            e => e,
        })
    }

    /// [`from_bytes_with`](Self::from_bytes_with) (or [`from_bytes`](Self::from_bytes)),
    /// also returning the checksum status.
    ///
    /// # Errors
    /// As [`from_bytes_with`](Self::from_bytes_with); damaged data is
    /// [`pare_tensor::TensorError::ChecksumMismatch`] (inside [`QuantError::Tensor`]).
    pub fn from_bytes_verified(
        bytes: &[u8],
        codec: Option<&dyn WeightCodec>,
    ) -> Result<(Self, Integrity)> {
        Self::decode_verified(bytes, codec)
    }

    fn decode_verified(bytes: &[u8], codec: Option<&dyn WeightCodec>) -> Result<(Self, Integrity)> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().as_ref();
        // Before anything is parsed or decoded: a damaged file is reported as damaged, naming
        // the tensor, rather than as whatever its garbage happens to look like.
        let integrity = pare_tensor::io::verify(&st, metadata)?;
        let entry = |key: &str| metadata.and_then(|m| m.get(key)).map(String::as_str);
        let get =
            |key: &str| entry(key).ok_or_else(|| bad(format!("no {key:?} entry in the metadata")));
        check_version(get(FORMAT_KEY)?)?;
        let (mode, input_type, output_type) = parse_mode(get(MODE_KEY)?)?;
        let (input_shape, input_zp) = parse_input(get(INPUT_KEY)?)?;
        let specs = parse_layers(get(LAYERS_KEY)?)?;
        let provenance = parse_calibration(get(CALIBRATION_KEY)?)?;
        let codec_name = entry(CODEC_KEY);

        // Zero points exist exactly where a full-integer model computes new parameters.
        let full = mode == Mode::FullInteger;
        let needs = if full { "needs" } else { "cannot have" };
        if full != input_zp.is_some() {
            return Err(bad(format!("a {mode} model {needs} an input zero point")));
        }
        let mut bias_len = 0usize;
        let mut scale_len = usize::from(full);
        for s in &specs {
            if s.kind.requantizes() && full != s.zp.is_some() {
                return Err(bad(format!(
                    "layer {:?}: a {} in a {mode} model {needs} an output zero point",
                    s.name,
                    s.kind.op_name(),
                )));
            }
            if let Some(cout) = s.channels() {
                bias_len = bias_len.saturating_add(cout);
                scale_len = scale_len.saturating_add(if s.per_tensor { 1 } else { cout });
            }
            scale_len = scale_len.saturating_add(usize::from(s.zp.is_some()));
        }

        let vector = |name: &str, dtype: Dtype, len: usize| -> Result<&[u8]> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor {name:?} is missing")))?;
            if t.dtype() != dtype {
                return Err(bad(format!(
                    "tensor {name:?} has dtype {:?}, a {mode} model stores {dtype:?}",
                    t.dtype()
                )));
            }
            if t.shape() != [len] {
                return Err(bad(format!(
                    "tensor {name:?} has shape {:?}, the layers need [{len}]",
                    t.shape()
                )));
            }
            Ok(t.data())
        };
        let bias = vector(
            BIAS_TENSOR,
            if full { Dtype::I32 } else { Dtype::F32 },
            bias_len,
        )?;
        let scales = f32s(vector(SCALE_TENSOR, Dtype::F32, scale_len)?);

        // The lengths match the architecture, so the cursors below stay in bounds.
        let (mut next_scale, mut next_bias) = (usize::from(full), 0usize);
        let input = input_zp.map(|zero_point| ActQuant {
            scale: scales[0],
            zero_point,
        });
        let mut layers: Vec<QuantizedLayer> = Vec::with_capacity(specs.len());
        let mut encoded = 0usize;
        for s in specs {
            // A layer that keeps its input's parameters takes them from the layer it reads
            // (a name that resolves to no earlier layer is reported by the model's checks).
            let source = match s.inputs.first() {
                None => layers.last(),
                Some(n) => layers.iter().find(|l| l.name == *n),
            };
            let mut current = match (s.inputs.first(), source) {
                (Some(n), _) if n == pare_tensor::INPUT => input,
                (_, Some(l)) => l.output,
                (None, None) => input,
                (Some(_), None) => None,
            };
            let weights = match (&s.kernel, s.channels()) {
                (Some(shape), Some(cout)) => {
                    let n = if s.per_tensor { 1 } else { cout };
                    let scale = scales[next_scale..next_scale + n].to_vec();
                    next_scale += n;
                    let b = &bias[4 * next_bias..4 * (next_bias + cout)];
                    next_bias += cout;
                    let bias = if full {
                        Bias::Int32(i32s(b))
                    } else {
                        Bias::Float(f32s(b))
                    };
                    let name = kernel_name(&s.name);
                    let bits = if s.int4 {
                        WeightBits::Int4
                    } else {
                        WeightBits::Int8
                    };
                    let packed = int4_kernel_name(&s.name);
                    let (kernel, was_encoded) = if s.int4 && st.tensor(&packed).is_ok() {
                        (read_int4_kernel(&st, &packed, shape)?, false)
                    } else {
                        read_kernel(&st, &name, shape, codec, codec_name)?
                    };
                    encoded += usize::from(was_encoded);
                    Some(QuantizedWeights {
                        kernel,
                        scale,
                        bias,
                        bits,
                    })
                }
                _ => None,
            };
            let output = match s.zp {
                Some(zero_point) => {
                    current = Some(ActQuant {
                        scale: scales[next_scale],
                        zero_point,
                    });
                    next_scale += 1;
                    current
                }
                // Pass-through layers keep their input's parameters.
                None => current,
            };
            layers.push(QuantizedLayer {
                name: s.name,
                kind: s.kind,
                weights,
                output,
                input_shape: vec![],
                output_shape: vec![],
                inputs: s.inputs,
            });
        }
        if codec_name.is_some() && encoded == 0 {
            return Err(bad(format!(
                "the metadata names a codec ({CODEC_KEY:?}) but no kernel is encoded"
            )));
        }
        let expected = 2 + layers.iter().filter(|l| l.weights.is_some()).count();
        if st.len() != expected {
            let names: std::collections::HashSet<String> = layers
                .iter()
                .filter(|l| l.weights.is_some())
                .flat_map(|l| [kernel_name(&l.name), int4_kernel_name(&l.name)])
                .chain([BIAS_TENSOR.into(), SCALE_TENSOR.into()])
                .collect();
            let extra = st.names().into_iter().find(|n| !names.contains(*n));
            return Err(bad(format!(
                "{} tensors in the file, {expected} belong to the model (e.g. {extra:?} does not)",
                st.len()
            )));
        }
        let model = QuantizedModel::from_parts(ModelParts {
            mode,
            input_type,
            output_type,
            input_shape,
            input,
            layers,
            provenance,
        })
        .map_err(|e| bad(e.to_string()))?;
        Ok((model, integrity))
    }
}

/// The file's name for a layer's op: Keras' default layer name for it.
fn file_op(kind: &LayerKind) -> &'static str {
    match kind {
        LayerKind::Conv2d { .. } => "conv2d",
        LayerKind::Dense { .. } => "dense",
        LayerKind::MaxPool2d { .. } => "max_pooling2d",
        LayerKind::Reshape { shape } if shape.len() == 1 => "flatten",
        LayerKind::Reshape { .. } => "reshape",
        LayerKind::Relu => "re_lu",
        LayerKind::LeakyRelu { .. } => "leaky_re_lu",
        LayerKind::DepthwiseConv2d { .. } => "depthwise_conv2d",
        LayerKind::AvgPool2d { .. } => "average_pooling2d",
        LayerKind::GlobalAvgPool2d => "global_average_pooling2d",
        LayerKind::Relu6 => "re_lu6",
        LayerKind::Sigmoid => "sigmoid",
        LayerKind::Tanh => "tanh",
        LayerKind::HardSwish => "hard_swish",
        LayerKind::Softmax => "softmax",
        LayerKind::Add { .. } => "add",
        LayerKind::Concatenate => "concatenate",
    }
}

/// `AxBxC`.
fn dims(d: &[usize]) -> String {
    let d: Vec<String> = d.iter().map(usize::to_string).collect();
    d.join("x")
}

/// The `layers` entry of one layer.
fn layer_entry(l: &QuantizedLayer) -> String {
    let op = file_op(&l.kind);
    let mut s = if l.name == op {
        op.to_string()
    } else {
        format!("{}:{op}", escape(&l.name))
    };
    let mut args: Vec<String> = Vec::new();
    let weights = |args: &mut Vec<String>| {
        let w = l
            .weights
            .as_ref()
            .expect("layer_entry: conv/dense layer without weights (from_parts checks)");
        args.push(dims(w.kernel.shape()));
        w.scale.len() == 1 && w.channels() != 1
    };
    let per_tensor = match &l.kind {
        LayerKind::Conv2d {
            strides,
            padding,
            relu,
            ..
        }
        | LayerKind::DepthwiseConv2d {
            strides,
            padding,
            relu,
            ..
        } => {
            let per_tensor = weights(&mut args);
            if *strides != [1, 1] {
                args.push(format!("strides={}", dims(strides)));
            }
            if *padding == Padding::Same {
                args.push("same".into());
            }
            if *relu {
                args.push("relu".into());
            }
            per_tensor
        }
        LayerKind::Dense { relu } => {
            let per_tensor = weights(&mut args);
            if *relu {
                args.push("relu".into());
            }
            per_tensor
        }
        LayerKind::Add { relu } => {
            if *relu {
                args.push("relu".into());
            }
            false
        }
        LayerKind::MaxPool2d {
            pool,
            strides,
            padding,
        }
        | LayerKind::AvgPool2d {
            pool,
            strides,
            padding,
        } => {
            args.push(dims(pool));
            if strides != pool {
                args.push(format!("strides={}", dims(strides)));
            }
            if *padding == Padding::Same {
                args.push("same".into());
            }
            false
        }
        LayerKind::Reshape { shape } => {
            args.push(dims(shape));
            false
        }
        LayerKind::Relu
        | LayerKind::Relu6
        | LayerKind::GlobalAvgPool2d
        | LayerKind::Sigmoid
        | LayerKind::Tanh
        | LayerKind::HardSwish
        | LayerKind::Softmax
        | LayerKind::Concatenate => false,
        // Display prints the shortest decimal that parses back to the same f32.
        LayerKind::LeakyRelu { alpha } => {
            args.push(alpha.to_string());
            false
        }
    };
    if per_tensor {
        args.push("per-tensor".into());
    }
    if l.weights
        .as_ref()
        .is_some_and(|w| w.bits == WeightBits::Int4)
    {
        args.push("int4".into());
    }
    if let Some(o) = l.output.filter(|_| l.kind.requantizes()) {
        args.push(format!("zp={}", o.zero_point));
    }
    if !l.inputs.is_empty() {
        let inputs: Vec<String> = l.inputs.iter().map(|n| escape(n)).collect();
        args.push(format!("in={}", inputs.join(",")));
    }
    for a in args {
        s.push(' ');
        s.push_str(&a);
    }
    s
}

fn mode_entry(mode: Mode, input: InputType, output: OutputType) -> String {
    let mut s = mode.to_string();
    match input {
        InputType::Float => {}
        InputType::Int8 => s.push_str(" input=int8"),
        InputType::Uint8 => s.push_str(" input=uint8"),
    }
    if output == OutputType::Int8 {
        s.push_str(" output=int8");
    }
    s
}

fn calibration_entry(p: &Provenance) -> String {
    let mut s = p
        .observer
        .as_deref()
        .map_or(String::new(), |o| escape(o) + " ");
    s.push_str(if p.per_channel {
        "per-channel"
    } else {
        "per-tensor"
    });
    let _ = write!(s, " n={}", p.calibration_examples);
    s
}

/// Percent-encodes every byte outside `[A-Za-z0-9_.-]`, so names cannot collide with the
/// separators (`;`, `:`, ` `, `=`) or need JSON escapes.
fn escape(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

fn unescape(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

fn check_version(v: &str) -> Result<()> {
    if v == VERSION.to_string() {
        return Ok(());
    }
    // Version 1 stored one JSON document under the same key.
    let found = if v.trim_start().starts_with('{') {
        "1".to_string()
    } else {
        v.to_string()
    };
    Err(QuantError::UnsupportedVersion {
        found,
        supported: VERSION,
    })
}

/// The arguments of one metadata entry: at most one positional token, flag words, and
/// `key=value` pairs, each at most once.
struct Args<'a> {
    positional: Option<&'a str>,
    flags: Vec<&'a str>,
    named: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    fn parse(
        text: &'a str,
        flag_words: &[&str],
        named_keys: &[&str],
    ) -> std::result::Result<Self, String> {
        let mut args = Args {
            positional: None,
            flags: vec![],
            named: vec![],
        };
        for t in text.split_ascii_whitespace() {
            if let Some((k, v)) = t.split_once('=') {
                if !named_keys.contains(&k) {
                    return Err(format!("unexpected argument {t:?}"));
                }
                if args.named.iter().any(|(n, _)| *n == k) {
                    return Err(format!("{k:?} given twice"));
                }
                args.named.push((k, v));
            } else if flag_words.contains(&t) {
                if args.flags.contains(&t) {
                    return Err(format!("{t:?} given twice"));
                }
                args.flags.push(t);
            } else if args.positional.is_none() {
                args.positional = Some(t);
            } else {
                return Err(format!("unexpected argument {t:?}"));
            }
        }
        Ok(args)
    }

    fn positional(&self, what: &str) -> std::result::Result<&'a str, String> {
        self.positional.ok_or_else(|| format!("missing {what}"))
    }

    fn flag(&self, word: &str) -> bool {
        self.flags.contains(&word)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.named.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn zero_point(&self) -> std::result::Result<Option<i32>, String> {
        self.get("zp")
            .map(|v| v.parse().map_err(|_| format!("zero point {v:?}")))
            .transpose()
    }
}

/// `AxBxC` with every dimension at least 1.
fn parse_dims(s: &str) -> std::result::Result<Vec<usize>, String> {
    s.split('x')
        .map(|d| match d.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("bad dimensions {s:?}")),
        })
        .collect()
}

fn parse_pair(s: &str) -> std::result::Result<[usize; 2], String> {
    match parse_dims(s)?[..] {
        [a, b] => Ok([a, b]),
        _ => Err(format!("expected two dimensions, found {s:?}")),
    }
}

fn parse_mode(text: &str) -> Result<(Mode, InputType, OutputType)> {
    let err = |r: String| bad(format!("{MODE_KEY:?} entry {text:?}: {r}"));
    let args = Args::parse(text, &[], &["input", "output"]).map_err(err)?;
    let mode = match args.positional("mode").map_err(err)? {
        "full-integer" => Mode::FullInteger,
        "dynamic-range" => Mode::DynamicRange,
        m => return Err(err(format!("unknown mode {m:?}"))),
    };
    let input = match args.get("input") {
        None | Some("float") => InputType::Float,
        Some("int8") => InputType::Int8,
        Some("uint8") => InputType::Uint8,
        Some(t) => return Err(err(format!("unknown input type {t:?}"))),
    };
    let output = match args.get("output") {
        None | Some("float") => OutputType::Float,
        Some("int8") => OutputType::Int8,
        Some(t) => return Err(err(format!("unknown output type {t:?}"))),
    };
    Ok((mode, input, output))
}

fn parse_input(text: &str) -> Result<(Vec<usize>, Option<i32>)> {
    let err = |r: String| bad(format!("{INPUT_KEY:?} entry {text:?}: {r}"));
    let args = Args::parse(text, &[], &["zp"]).map_err(err)?;
    let shape = parse_dims(args.positional("shape").map_err(err)?).map_err(err)?;
    Ok((shape, args.zero_point().map_err(err)?))
}

fn parse_calibration(text: &str) -> Result<Provenance> {
    let err = |r: String| bad(format!("{CALIBRATION_KEY:?} entry {text:?}: {r}"));
    let args = Args::parse(text, GRANULARITIES, &["n"]).map_err(err)?;
    let per_channel = match args.flags[..] {
        ["per-channel"] => true,
        ["per-tensor"] => false,
        _ => return Err(err("expected one of per-channel, per-tensor".into())),
    };
    let n = args.get("n").ok_or_else(|| err("missing n=".into()))?;
    Ok(Provenance {
        observer: args.positional.map(unescape).transpose().map_err(err)?,
        per_channel,
        calibration_examples: n
            .parse()
            .map_err(|_| err(format!("calibration examples {n:?}")))?,
    })
}

/// One parsed `layers` entry.
struct LayerSpec {
    name: String,
    kind: LayerKind,
    /// The declared kernel shape (conv and dense).
    kernel: Option<Vec<usize>>,
    per_tensor: bool,
    int4: bool,
    zp: Option<i32>,
    /// The names in `in=` (empty: the layer before).
    inputs: Vec<String>,
}

impl LayerSpec {
    /// Output channels of the declared kernel.
    fn channels(&self) -> Option<usize> {
        self.kernel.as_ref()?.last().copied()
    }
}

fn parse_layers(text: &str) -> Result<Vec<LayerSpec>> {
    if text.is_empty() {
        return Ok(vec![]);
    }
    text.split(';')
        .enumerate()
        .map(|(i, entry)| {
            parse_layer(entry)
                .map_err(|r| bad(format!("{LAYERS_KEY:?} entry {i} ({entry:?}): {r}")))
        })
        .collect()
}

fn parse_layer(entry: &str) -> std::result::Result<LayerSpec, String> {
    let (head, rest) = entry.split_once(' ').unwrap_or((entry, ""));
    let (name, op) = match head.split_once(':') {
        Some((name, op)) => (unescape(name)?, op),
        None => (unescape(head)?, head),
    };
    let allow: (&[&str], &[&str]) = match op {
        "conv2d" => (LAYER_FLAGS, &["strides", "zp", "in"]),
        "dense" => (&["relu", "per-tensor", "int4"], &["zp", "in"]),
        "depthwise_conv2d" => (LAYER_FLAGS, &["strides", "zp", "in"]),
        "max_pooling2d" | "average_pooling2d" => (&["same"], &["strides", "in"]),
        "reshape" | "flatten" | "re_lu" | "re_lu6" => (&[], &["in"]),
        "leaky_re_lu"
        | "global_average_pooling2d"
        | "sigmoid"
        | "tanh"
        | "hard_swish"
        | "softmax"
        | "concatenate" => (&[], &["zp", "in"]),
        "add" => (&["relu"], &["zp", "in"]),
        _ => return Err(format!("unknown op {op:?}")),
    };
    let args = Args::parse(rest, allow.0, allow.1)?;
    let padding = if args.flag("same") {
        Padding::Same
    } else {
        Padding::Valid
    };
    let relu = args.flag("relu");
    let strides = args.get("strides").map(parse_pair).transpose()?;
    let mut kernel = None;
    let kind = match op {
        "conv2d" => {
            let k = parse_kernel(args.positional("kernel shape")?, 4)?;
            let kind = LayerKind::Conv2d {
                kernel_size: [k[0], k[1]],
                strides: strides.unwrap_or([1, 1]),
                padding,
                relu,
            };
            kernel = Some(k);
            kind
        }
        "dense" => {
            kernel = Some(parse_kernel(args.positional("kernel shape")?, 2)?);
            LayerKind::Dense { relu }
        }
        "depthwise_conv2d" => {
            let k = parse_kernel(args.positional("kernel shape")?, 3)?;
            let kind = LayerKind::DepthwiseConv2d {
                kernel_size: [k[0], k[1]],
                strides: strides.unwrap_or([1, 1]),
                padding,
                relu,
            };
            kernel = Some(k);
            kind
        }
        "max_pooling2d" => {
            let pool = parse_pair(args.positional("pool size")?)?;
            LayerKind::MaxPool2d {
                pool,
                strides: strides.unwrap_or(pool),
                padding,
            }
        }
        "average_pooling2d" => {
            let pool = parse_pair(args.positional("pool size")?)?;
            LayerKind::AvgPool2d {
                pool,
                strides: strides.unwrap_or(pool),
                padding,
            }
        }
        "global_average_pooling2d" => LayerKind::GlobalAvgPool2d,
        "re_lu6" => LayerKind::Relu6,
        "sigmoid" => LayerKind::Sigmoid,
        "tanh" => LayerKind::Tanh,
        "hard_swish" => LayerKind::HardSwish,
        "softmax" => LayerKind::Softmax,
        "add" => LayerKind::Add { relu },
        "concatenate" => LayerKind::Concatenate,
        "reshape" | "flatten" => {
            let shape = parse_dims(args.positional("shape")?)?;
            if op == "flatten" && shape.len() != 1 {
                return Err(format!("flatten to {shape:?}: one dimension expected"));
            }
            LayerKind::Reshape { shape }
        }
        "leaky_re_lu" => {
            let a = args.positional("alpha")?;
            LayerKind::LeakyRelu {
                alpha: a.parse().map_err(|_| format!("alpha {a:?}"))?,
            }
        }
        _ => LayerKind::Relu,
    };
    let bare = [
        "re_lu",
        "re_lu6",
        "global_average_pooling2d",
        "sigmoid",
        "tanh",
        "hard_swish",
        "softmax",
        "add",
        "concatenate",
    ];
    if let Some(a) = args.positional.filter(|_| bare.contains(&op)) {
        return Err(format!("unexpected argument {a:?}"));
    }
    let inputs = match args.get("in") {
        None => vec![],
        Some(list) => list
            .split(',')
            .map(|n| match unescape(n)? {
                n if n.is_empty() => Err(format!("empty input name in {list:?}")),
                n => Ok(n),
            })
            .collect::<std::result::Result<_, _>>()?,
    };
    Ok(LayerSpec {
        name,
        kind,
        kernel,
        per_tensor: args.flag("per-tensor"),
        int4: args.flag("int4"),
        zp: args.zero_point()?,
        inputs,
    })
}

/// A kernel shape of rank `rank` with at most 2^28 elements (what a codec may allocate).
fn parse_kernel(s: &str, rank: usize) -> std::result::Result<Vec<usize>, String> {
    let k = parse_dims(s)?;
    if k.len() != rank {
        return Err(format!("kernel shape {s:?} must have {rank} dimensions"));
    }
    k.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("kernel shape {s:?} has more than 2^28 elements"))?;
    Ok(k)
}

/// A layer's packed int4 kernel: a 1-D `U8` tensor of `ceil(n / 2)` bytes for the declared
/// shape's `n` codes. The codes' range is checked with the model's (from_parts).
fn read_int4_kernel(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<ArrayD<i8>> {
    let t = st
        .tensor(name)
        .map_err(|_| bad(format!("tensor {name:?} is missing")))?;
    if t.dtype() != Dtype::U8 || t.shape().len() != 1 {
        return Err(bad(format!(
            "tensor {name:?} has dtype {:?} and shape {:?}; packed int4 kernels are 1-D U8",
            t.dtype(),
            t.shape()
        )));
    }
    // The declared shape has at most 2^28 elements (parse_kernel).
    let n: usize = shape.iter().product();
    let codes = unpack_int4(t.data(), n).map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
    ArrayD::from_shape_vec(IxDyn(shape), codes).map_err(|e| bad(format!("tensor {name:?}: {e}")))
}

/// A layer's kernel: an `I8` tensor of the declared shape, or a `U8` tensor the file's codec
/// decodes to it. Also says whether it was encoded.
fn read_kernel(
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
    codec: Option<&dyn WeightCodec>,
    codec_name: Option<&str>,
) -> Result<(ArrayD<i8>, bool)> {
    let t = st
        .tensor(name)
        .map_err(|_| bad(format!("tensor {name:?} is missing")))?;
    match t.dtype() {
        Dtype::I8 => {
            if t.shape() != shape {
                return Err(bad(format!(
                    "tensor {name:?} has shape {:?}, the layers entry declares {shape:?}",
                    t.shape()
                )));
            }
            // safetensors checked that the data holds exactly the shape's elements.
            let data = t.data().iter().map(|&b| b as i8).collect();
            let k = ArrayD::from_shape_vec(IxDyn(shape), data)
                .map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
            Ok((k, false))
        }
        Dtype::U8 => {
            let encoding = codec_name.ok_or_else(|| {
                bad(format!(
                    "tensor {name:?} is encoded (U8) but the metadata has no {CODEC_KEY:?} entry"
                ))
            })?;
            if t.shape().len() != 1 {
                return Err(bad(format!(
                    "encoded tensor {name:?} has shape {:?}, expected 1-D",
                    t.shape()
                )));
            }
            let c = codec.filter(|c| c.name() == encoding).ok_or_else(|| {
                QuantError::UnknownEncoding {
                    tensor: name.to_string(),
                    encoding: encoding.to_string(),
                }
            })?;
            let k = c
                .decode(name, shape, t.data())
                .map_err(|source| QuantError::Codec {
                    tensor: name.to_string(),
                    encoding: encoding.to_string(),
                    source,
                })?;
            if k.shape() != shape {
                return Err(bad(format!(
                    "codec {encoding:?} decoded {name:?} to shape {:?}, declared {shape:?}",
                    k.shape()
                )));
            }
            Ok((k.as_standard_layout().into_owned(), true))
        }
        d => Err(bad(format!(
            "tensor {name:?} has dtype {d:?}; kernels are I8, or U8 when encoded"
        ))),
    }
}

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn i32s(data: &[u8]) -> Vec<i32> {
    data.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    })
}
