//! Where the bytes of an int8 model file go: the safetensors header, every tensor in file order
//! with the format it is stored in, and each int8 kernel measured in every sparse format next to
//! its order-0 entropy bound ([`pare_prune::report::KernelFormats`]). The files are the ones
//! [`SparseCodec`](crate::codecs::SparseCodec) writes, and plain pare-quant files alike.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pare::breakdown::FileBreakdown;
//! use pare::codecs::SparseCodec;
//! let model = pare::tensor::models::small_cnn(0);
//! let calibration = ndarray::Array4::<f32>::zeros((1, 28, 28, 1)).into_dyn();
//! let q = pare::quant::convert(&model, calibration.view(), &Default::default())?;
//! let file = q.to_bytes_with(&SparseCodec)?;
//! let b = FileBreakdown::of(&q, &file)?;
//! assert_eq!(b.total_bytes(), file.len());
//! assert_eq!(b.kernels.len(), 2); // conv2d.kernel and dense.kernel
//! assert!(b.kernel_bytes() > 0 && b.bound_bytes() > 0.0);
//! # Ok(()) }
//! ```

use pare_prune::report::KernelFormats;
use pare_quant::QuantizedModel;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// One tensor's data in a model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorBytes {
    /// Tensor name (`dense.kernel`).
    pub name: String,
    /// Its safetensors dtype (`I8`, `U8` for an encoded tensor, …).
    pub dtype: String,
    /// Bytes of data.
    pub bytes: usize,
    /// How it is stored: `bitmask`, `Rice-coded gaps`, `entropy-coded`, `dense int8`, `int32`,
    /// `f32`, or `?`.
    pub stored_as: &'static str,
}

/// One int8 kernel: its bytes as stored, and in each sparse format.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelBytes {
    /// Tensor name.
    pub name: String,
    /// Bytes in the file.
    pub stored: usize,
    /// Every format's size and the order-0 bound.
    pub formats: KernelFormats,
}

/// The breakdown of one model file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileBreakdown {
    /// The safetensors header: 8-byte length, JSON (tensor table and metadata), padding.
    pub header: usize,
    /// Every tensor's data, in file order.
    pub tensors: Vec<TensorBytes>,
    /// The int8 kernels, in layer order.
    pub kernels: Vec<KernelBytes>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadModelFile {
        reason: reason.into(),
    }
}

/// The header's length and every tensor's data, in file order, read from the safetensors
/// layout: an 8-byte little-endian header length, then the JSON tensor table.
///
/// # Errors
/// [`Error::BadModelFile`] if `file` is not safetensors or a tensor lies outside it.
pub fn tensors(file: &[u8]) -> Result<(usize, Vec<TensorBytes>)> {
    let n = file
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| bad("shorter than a safetensors header"))?;
    let n = usize::try_from(n).map_err(|_| bad("header length overflows"))?;
    let table: Map<String, Value> = serde_json::from_slice(
        file.get(8..8usize.saturating_add(n))
            .ok_or_else(|| bad("truncated safetensors header"))?,
    )?;
    let mut parts = Vec::new();
    for (name, t) in &table {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t["dtype"].as_str().unwrap_or("?").to_string();
        let offset = |i: usize| {
            t["data_offsets"][i]
                .as_u64()
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| o.checked_add(8 + n))
                .ok_or_else(|| bad(format!("{name}: bad data_offsets")))
        };
        let (start, end) = (offset(0)?, offset(1)?);
        let data = file
            .get(start..end)
            .ok_or_else(|| bad(format!("{name}: data outside the file")))?;
        let stored_as = match (dtype.as_str(), data.get(..4)) {
            ("U8", Some(b"PSEC")) => "entropy-coded",
            ("U8", Some(b"PSRG")) => "Rice-coded gaps",
            ("U8", Some(b"PSPT")) => "bitmask",
            ("I8", _) => "dense int8",
            ("I32", _) => "int32",
            ("F32", _) => "f32",
            _ => "?",
        };
        let bytes = end - start;
        parts.push((
            start,
            TensorBytes {
                name: name.clone(),
                dtype,
                bytes,
                stored_as,
            },
        ));
    }
    parts.sort_by_key(|p| p.0);
    Ok((8 + n, parts.into_iter().map(|p| p.1).collect()))
}

/// How a model file stores its kernels, in file order, repeats merged: e.g. `dense int8 +
/// entropy-coded`.
///
/// # Errors
/// As [`tensors`].
pub fn kernel_storage(file: &[u8]) -> Result<String> {
    let (_, parts) = tensors(file)?;
    let mut formats: Vec<&str> = parts
        .iter()
        .filter(|p| p.name.ends_with(".kernel"))
        .map(|p| p.stored_as)
        .collect();
    formats.dedup();
    Ok(formats.join(" + "))
}

impl FileBreakdown {
    /// The breakdown of `file`, the bytes of `q`'s model file.
    ///
    /// # Errors
    /// As [`tensors`]; [`Error::BadModelFile`] if a kernel of `q` is not in the file.
    pub fn of(q: &QuantizedModel, file: &[u8]) -> Result<FileBreakdown> {
        let (header, tensors) = tensors(file)?;
        let mut kernels = Vec::new();
        for layer in q.layers() {
            if let Some(w) = &layer.weights {
                let name = format!("{}.kernel", layer.name);
                let stored = tensors
                    .iter()
                    .find(|p| p.name == name)
                    .map(|p| p.bytes)
                    .ok_or_else(|| bad(format!("{name} is not in the file")))?;
                kernels.push(KernelBytes {
                    name,
                    stored,
                    formats: KernelFormats::of(w.kernel.view())?,
                });
            }
        }
        Ok(FileBreakdown {
            header,
            tensors,
            kernels,
        })
    }

    /// Header and every tensor: the file's length.
    pub fn total_bytes(&self) -> usize {
        self.header + self.tensors.iter().map(|t| t.bytes).sum::<usize>()
    }

    /// Bytes of the kernels as stored.
    pub fn kernel_bytes(&self) -> usize {
        self.kernels.iter().map(|k| k.stored).sum()
    }

    /// The kernels' order-0 bound, bytes.
    pub fn bound_bytes(&self) -> f64 {
        self.kernels.iter().map(|k| k.formats.bound.bytes()).sum()
    }

    /// Column names of [`rows`](Self::rows).
    pub const HEADER: [&'static str; 8] = [
        "part",
        "bytes",
        "stored as",
        "non-zero",
        "bitmask",
        "gaps",
        "entropy",
        "bound",
    ];

    /// A table of the breakdown, one row per part (columns [`HEADER`](Self::HEADER)), header
    /// first, total last. For each int8 kernel: its non-zeros, its bytes in each sparse format
    /// and its order-0 bound; `-` elsewhere.
    pub fn rows(&self) -> Vec<[String; 8]> {
        let dash = || "-".to_string();
        let mut rows = vec![[
            "header".to_string(),
            self.header.to_string(),
            "JSON".to_string(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ]];
        for t in &self.tensors {
            let row = match self.kernels.iter().find(|k| k.name == t.name) {
                Some(k) => {
                    let f = &k.formats;
                    [
                        t.name.clone(),
                        t.bytes.to_string(),
                        t.stored_as.to_string(),
                        format!("{}/{}", f.nonzeros, f.elements),
                        f.bitmask_bytes.to_string(),
                        f.gap_bytes.to_string(),
                        f.entropy_coded_bytes.map_or_else(dash, |e| e.to_string()),
                        format!("{:.0}", f.bound.bytes()),
                    ]
                }
                None => [
                    t.name.clone(),
                    t.bytes.to_string(),
                    format!("{} ({})", t.stored_as, t.dtype),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                ],
            };
            rows.push(row);
        }
        rows.push([
            "total".to_string(),
            self.total_bytes().to_string(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            format!("{:.0}", self.bound_bytes()),
        ]);
        rows
    }

    /// Two lines: the kernels' bytes against their order-0 bound, and what the bound is.
    pub fn summary(&self) -> String {
        format!(
            "kernels {} bytes, {:.1} % of their order-0 bound {:.0}\n(the bound: positions as \
             independent bits, plus the non-zero values' empirical entropy)",
            self.kernel_bytes(),
            100.0 * self.kernel_bytes() as f64 / self.bound_bytes(),
            self.bound_bytes()
        )
    }

    /// The breakdown as JSON (`header_bytes`, `tensors`, `kernels`, `kernels_bytes`,
    /// `kernels_order0_bound_bytes`).
    pub fn to_json(&self) -> Value {
        json!({
            "header_bytes": self.header,
            "tensors": self.tensors.iter().map(|t| json!({
                "name": t.name, "dtype": t.dtype, "bytes": t.bytes, "stored_as": t.stored_as,
            })).collect::<Vec<_>>(),
            "kernels": self.kernels.iter().map(|k| {
                let f = &k.formats;
                json!({
                    "name": k.name,
                    "elements": f.elements,
                    "nonzeros": f.nonzeros,
                    "stored_bytes": k.stored,
                    "bitmask_bytes": f.bitmask_bytes,
                    "gap_bytes": f.gap_bytes,
                    "entropy_coded_bytes": f.entropy_coded_bytes,
                    "order0_mask_bytes": f.bound.mask_bits / 8.0,
                    "order0_values_bytes": f.bound.values_bits / 8.0,
                    "order0_bound_bytes": f.bound.bytes(),
                })
            }).collect::<Vec<_>>(),
            "kernels_bytes": self.kernel_bytes(),
            "kernels_order0_bound_bytes": self.bound_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_files_are_errors() {
        assert!(matches!(tensors(b"abc"), Err(Error::BadModelFile { .. })));
        let mut f = 1000u64.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(tensors(&f), Err(Error::BadModelFile { .. })));
        let table = br#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut f = (table.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(table);
        f.extend_from_slice(&[0; 8]); // 8 of the 16 bytes the table promises
        assert!(matches!(tensors(&f), Err(Error::BadModelFile { .. })));
        f.extend_from_slice(&[0; 8]);
        let (header, parts) = tensors(&f).unwrap();
        assert_eq!(
            (header, parts[0].bytes, parts[0].stored_as),
            (8 + table.len(), 16, "f32")
        );
    }
}
