//! What a file holds: a pare checkpoint, int8 model file or pruned model file, or an IDX
//! array. [`inspect`] reads and checks the file as the loaders do (checksums included) and
//! returns an [`Inspection`] whose `Display` is a readable report; a file that is corrupt or
//! not one of these is an [`InspectError`] saying so in words.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("pare-inspect-doc-{}", std::process::id()));
//! let path = dir.join("model.safetensors");
//! pare::tensor::checkpoint::save(&pare::tensor::models::small_cnn(0), &path, Default::default())?;
//! let report = pare::inspect::inspect(&path)?;
//! assert_eq!(report.kind, pare::inspect::Kind::Checkpoint);
//! assert_eq!(report.integrity, Some(pare::tensor::io::Integrity::Verified));
//! println!("{report}");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use pare_mnist::{IdxValues, MnistError, read_idx_bytes};
use pare_prune::file::read_sparse_verified;
use pare_prune::sparse::{SparseShape, SparseTensor};
use pare_prune::{EntropyCoded, GapCoded, PruneError};
use pare_quant::{QuantError, QuantizedModel};
use pare_tensor::TensorError;
use pare_tensor::io::{Integrity, is_checksum_key};
use safetensors::SafeTensors;

use crate::codecs::SparseCodec;

/// What kind of file it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Named f32 tensors ([`pare_tensor::checkpoint`], or PyTorch / Keras safetensors).
    Checkpoint,
    /// An int8 model file ([`pare_quant::file`]).
    Int8Model,
    /// A pruned f32 model file ([`pare_prune::file`]).
    PrunedModel,
    /// An IDX array (MNIST's format), raw or gzipped.
    Idx,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Checkpoint => "checkpoint (f32 safetensors)",
            Kind::Int8Model => "int8 model",
            Kind::PrunedModel => "pruned model (f32, sparse tensors)",
            Kind::Idx => "IDX array",
        })
    }
}

/// One stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name in the file.
    pub name: String,
    /// Element type as stored (`F32`, `I8`, or `U8` for encoded bytes).
    pub dtype: String,
    /// Shape of the tensor it holds (decoded, for an encoded one).
    pub shape: Vec<usize>,
    /// Bytes it takes in the file.
    pub bytes: usize,
    /// How it is stored: `dense`, `bitmask`, `gaps` or `entropy`.
    pub encoding: &'static str,
    /// Fraction of its elements that are zero.
    pub sparsity: f64,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// What it is.
    pub kind: Kind,
    /// Checksum status; `None` for IDX, a format without checksums.
    pub integrity: Option<Integrity>,
    /// Lines describing the whole (architecture, element type, dimensions, …).
    pub summary: Vec<(String, String)>,
    /// The stored tensors, in file order (none for IDX). `Display` lists them all; truncate
    /// the list to show fewer (the totals below do not change).
    pub tensors: Vec<TensorInfo>,
    /// Bytes of tensor data in the file (all tensors); the rest is header and metadata.
    pub tensor_bytes: usize,
}

/// Why a file could not be inspected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The file is none of the formats pare reads.
    #[error("{}: not a pare file: {reason}", path.display())]
    NotPare {
        /// The file.
        path: PathBuf,
        /// What it looks like instead.
        reason: String,
    },
    /// A safetensors file cut short or damaged before its tensors can be parsed.
    #[error("{}: {reason}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A checkpoint that is corrupt (a checksum mismatch names the tensor).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// An int8 model file that is corrupt.
    #[error("{}: {source}", path.display())]
    Quant {
        /// The file.
        path: PathBuf,
        /// What the loader found.
        source: QuantError,
    },
    /// A pruned model file that is corrupt.
    #[error("{}: {source}", path.display())]
    Prune {
        /// The file.
        path: PathBuf,
        /// What the loader found.
        source: PruneError,
    },
    /// An IDX file that is corrupt.
    #[error(transparent)]
    Idx(#[from] MnistError),
}

/// Reads `path` and reports what it holds (see [`inspect_bytes`]).
///
/// # Errors
/// [`InspectError::Io`]; otherwise as [`inspect_bytes`].
pub fn inspect(path: &Path) -> Result<Inspection, InspectError> {
    let bytes = std::fs::read(path).map_err(|source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    inspect_bytes(&bytes, path)
}

/// Reports what a file's bytes hold, checking them as the loaders do; `path` names the file.
///
/// # Errors
/// [`InspectError::NotPare`] for bytes that are neither safetensors nor IDX; the loaders'
/// errors (checksum mismatches naming the tensor, inconsistent headers, …) for corrupt ones.
pub fn inspect_bytes(bytes: &[u8], path: &Path) -> Result<Inspection, InspectError> {
    let not_pare = |reason: String| InspectError::NotPare {
        path: path.to_path_buf(),
        reason,
    };
    let idx_like = bytes.starts_with(&[0x1f, 0x8b])
        || (bytes.len() >= 4
            && bytes[..2] == [0, 0]
            && pare_mnist::IdxType::from_code(bytes[2]).is_some());
    if idx_like {
        return idx(bytes, path);
    }
    let header_len = bytes
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    // A safetensors file: a header length no larger than the crate accepts (100 MB), then
    // the JSON header's opening brace.
    if bytes.get(8) != Some(&b'{') || !(2..=100_000_000).contains(&header_len) {
        return Err(not_pare(format!(
            "its {} are neither a safetensors container (pare's checkpoints and model files) \
             nor an IDX array",
            size(bytes.len())
        )));
    }
    let damaged = |reason: String| InspectError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    if header_len > bytes.len() as u64 - 8 {
        return Err(damaged(format!(
            "cut short: its safetensors header should take {} but the file has {}",
            size(header_len as usize),
            size(bytes.len())
        )));
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| damaged(format!("damaged or cut short safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| damaged(format!("damaged safetensors header ({e})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut tensors: Vec<TensorInfo> = Vec::new();
    let mut summary = Vec::new();
    let (kind, integrity) = if metadata.contains_key(pare_quant::file::FORMAT_KEY) {
        let (q, integrity) = QuantizedModel::from_bytes_verified(bytes, Some(&SparseCodec))
            .map_err(|source| InspectError::Quant {
                path: path.to_path_buf(),
                source,
            })?;
        let mode = q.mode().to_string();
        summary.push(("mode".into(), mode));
        let layers: Vec<String> = metadata
            .get("layers")
            .map(|l| l.split(';').map(str::to_string).collect())
            .unwrap_or_default();
        summary.push(("layers".into(), layers.len().to_string()));
        summary.extend(layers.into_iter().map(|l| (String::new(), l)));
        (Kind::Int8Model, integrity)
    } else if metadata.contains_key(pare_prune::file::METADATA_KEY) {
        let (_, integrity) = read_sparse_verified(bytes).map_err(|source| InspectError::Prune {
            path: path.to_path_buf(),
            source,
        })?;
        (Kind::PrunedModel, integrity)
    } else {
        let (_, integrity) = pare_tensor::io::read_f32_tensors(bytes, path)?;
        (Kind::Checkpoint, integrity)
    };
    // The loader accepted the file: every tensor below is consistent.
    let mut names: Vec<_> = st.tensors();
    names.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    for (name, view) in names {
        tensors.push(describe(&name, &view));
    }
    if kind != Kind::Int8Model {
        let mut layers: Vec<&str> = tensors
            .iter()
            .map(|t| t.name.rsplit_once('.').map_or(t.name.as_str(), |(l, _)| l))
            .collect();
        layers.dedup();
        summary.push(("layers".into(), layers.join(", ")));
    }
    let params: usize = tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    summary.push(("elements".into(), thousands(params)));
    let mut extra: Vec<_> = metadata
        .iter()
        .filter(|(k, _)| !is_checksum_key(k) && !is_format_key(k))
        .collect();
    extra.sort();
    summary.extend(
        extra
            .into_iter()
            .map(|(k, v)| (format!("meta {k}"), v.clone())),
    );
    Ok(Inspection {
        path: path.to_path_buf(),
        bytes: bytes.len(),
        kind,
        integrity: Some(integrity),
        summary,
        tensor_bytes: tensors.iter().map(|t| t.bytes).sum(),
        tensors,
    })
}

fn is_format_key(k: &str) -> bool {
    matches!(
        k,
        pare_quant::file::FORMAT_KEY | "mode" | "input" | "layers" | "calibration" | "codec"
    ) || k == pare_prune::file::METADATA_KEY
}

fn idx(bytes: &[u8], path: &Path) -> Result<Inspection, InspectError> {
    let data = read_idx_bytes(bytes, path)?;
    let zeros = match data.values() {
        IdxValues::U8(v) => v.iter().filter(|&&x| x == 0).count(),
        IdxValues::I8(v) => v.iter().filter(|&&x| x == 0).count(),
        IdxValues::I16(v) => v.iter().filter(|&&x| x == 0).count(),
        IdxValues::I32(v) => v.iter().filter(|&&x| x == 0).count(),
        IdxValues::F32(v) => v.iter().filter(|&&x| x == 0.0).count(),
        IdxValues::F64(v) => v.iter().filter(|&&x| x == 0.0).count(),
    };
    let gzip = if bytes.starts_with(&[0x1f, 0x8b]) {
        "yes"
    } else {
        "no"
    };
    Ok(Inspection {
        path: path.to_path_buf(),
        bytes: bytes.len(),
        kind: Kind::Idx,
        integrity: None,
        summary: vec![
            ("gzip".into(), gzip.into()),
            (
                "elements".into(),
                format!("{} {:?}", data.element_type(), data.dims()),
            ),
            (
                "zeros".into(),
                percent(zeros as f64 / data.len().max(1) as f64),
            ),
        ],
        tensors: vec![],
        tensor_bytes: 0,
    })
}

/// Stored form and sparsity of one tensor that the loader has already checked.
fn describe(name: &str, view: &safetensors::tensor::TensorView<'_>) -> TensorInfo {
    let data = view.data();
    let dtype = format!("{:?}", view.dtype());
    let coded = |nnz: usize, shape: &[usize], encoding| (encoding, shape.to_vec(), nnz);
    let stored = match view.dtype() {
        safetensors::Dtype::U8 => SparseTensor::<i8>::from_bytes(data)
            .map(|t| coded(t.nnz(), t.shape(), "bitmask"))
            .or_else(|_| {
                SparseTensor::<f32>::from_bytes(data).map(|t| coded(t.nnz(), t.shape(), "bitmask"))
            })
            .or_else(|_| {
                GapCoded::<i8>::from_bytes(data).map(|t| coded(t.nnz(), t.shape(), "gaps"))
            })
            .or_else(|_| {
                GapCoded::<f32>::from_bytes(data).map(|t| coded(t.nnz(), t.shape(), "gaps"))
            })
            .or_else(|_| {
                EntropyCoded::from_bytes(data).map(|t| coded(t.nnz(), t.shape(), "entropy"))
            })
            .ok(),
        _ => None,
    };
    let (encoding, shape, nonzero) = stored.unwrap_or_else(|| {
        let size = (view.dtype().bitsize() / 8).max(1);
        let nnz = data
            .chunks(size)
            .filter(|c| c.iter().any(|&b| b != 0))
            .count();
        ("dense", view.shape().to_vec(), nnz)
    });
    let len: usize = shape.iter().product();
    TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        bytes: data.len(),
        encoding,
        sparsity: 1.0 - nonzero as f64 / len.max(1) as f64,
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes, with KiB in parentheses from 10 KiB up.
fn size(n: usize) -> String {
    if n >= 10 << 10 {
        format!("{} bytes ({:.1} KiB)", thousands(n), n as f64 / 1024.0)
    } else {
        format!("{} bytes", thousands(n))
    }
}

fn percent(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checksum = match self.integrity {
            Some(i) => i.to_string(),
            None => "none (the IDX format has no checksum)".to_string(),
        };
        let head = [
            ("file".to_string(), self.path.display().to_string()),
            ("size".to_string(), size(self.bytes)),
            ("kind".to_string(), self.kind.to_string()),
            ("checksum".to_string(), checksum),
        ];
        let lines: Vec<String> = head
            .iter()
            .chain(&self.summary)
            .map(|(k, v)| format!("{k:<10} {v}"))
            .collect();
        write!(f, "{}", lines.join("\n"))?;
        if self.tensors.is_empty() {
            return Ok(());
        }
        writeln!(f, "\n")?;
        writeln!(
            f,
            "{:<28} {:<5} {:<18} {:>10} {:<8} {:>8}",
            "tensor", "dtype", "shape", "bytes", "stored", "sparsity"
        )?;
        for t in &self.tensors {
            let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
            writeln!(
                f,
                "{:<28} {:<5} {:<18} {:>10} {:<8} {:>8}",
                t.name,
                t.dtype,
                shape.join("x"),
                thousands(t.bytes),
                t.encoding,
                percent(t.sparsity)
            )?;
        }
        write!(
            f,
            "{:<28} {:<5} {:<18} {:>10}  (header and metadata: {})",
            "all tensors",
            "",
            "",
            thousands(self.tensor_bytes),
            size(self.bytes.saturating_sub(self.tensor_bytes))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pare_tensor::models::small_cnn;
    use std::collections::HashMap;

    fn pruned() -> pare_tensor::Sequential {
        let mut m = small_cnn(1);
        for name in ["conv2d.kernel", "dense.kernel"] {
            let p = m.param_mut(name).unwrap();
            let mask = pare_prune::mask::magnitude_mask(p.value.view(), 0.8).unwrap();
            pare_prune::mask::apply_mask(p.value.view_mut(), mask.view()).unwrap();
        }
        m
    }

    fn checkpoint_bytes(m: &pare_tensor::Sequential) -> Vec<u8> {
        let params = m.params();
        let named: Vec<_> = params.iter().map(|p| (p.name.clone(), &p.value)).collect();
        let meta = HashMap::from([("note".to_string(), "test".to_string())]);
        pare_tensor::io::f32_tensors_bytes(&named, Some(meta)).unwrap()
    }

    #[test]
    fn a_checkpoint_lists_its_tensors_and_is_verified() {
        let bytes = checkpoint_bytes(&pruned());
        let r = inspect_bytes(&bytes, Path::new("ck.safetensors")).unwrap();
        assert_eq!(
            (r.kind, r.integrity),
            (Kind::Checkpoint, Some(Integrity::Verified))
        );
        let names: Vec<&str> = r.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["conv2d.bias", "conv2d.kernel", "dense.bias", "dense.kernel"]
        );
        let dense = &r.tensors[3];
        assert_eq!(
            (dense.shape.as_slice(), dense.bytes),
            (&[2028, 10][..], 2028 * 10 * 4)
        );
        // magnitude_mask keeps round(20280 · 0.2) = 4056 weights.
        approx::assert_abs_diff_eq!(dense.sparsity, 1.0 - 4056.0 / 20280.0, epsilon = 1e-9);
        let text = r.to_string();
        assert!(text.contains("checksum   verified"), "{text}");
        assert!(text.contains("meta note  test"), "{text}");
        assert!(text.contains("layers     conv2d, dense"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    }

    #[test]
    fn int8_and_pruned_files_show_their_encodings() {
        let m = pruned();
        let x = ndarray::Array4::<f32>::from_elem((4, 28, 28, 1), 0.5).into_dyn();
        let q = pare_quant::convert(&m, x.view(), &Default::default()).unwrap();
        let bytes = q.to_bytes_with(&SparseCodec).unwrap();
        let r = inspect_bytes(&bytes, Path::new("m.pare")).unwrap();
        assert_eq!(r.kind, Kind::Int8Model);
        let k = r.tensors.iter().find(|t| t.name == "dense.kernel").unwrap();
        assert_eq!(k.dtype, "U8");
        assert_eq!(k.shape, [2028, 10]);
        assert_ne!(k.encoding, "dense");
        assert!((k.sparsity - 0.8).abs() < 0.01, "{k:?}");
        assert!(r.to_string().contains("conv2d 3x3x1x12 relu"), "{r}");

        let sparse = pare_prune::file::to_sparse_bytes(&m, HashMap::new()).unwrap();
        let r = inspect_bytes(&sparse, Path::new("p.safetensors")).unwrap();
        assert_eq!(r.kind, Kind::PrunedModel);
        let k = r.tensors.iter().find(|t| t.name == "dense.kernel").unwrap();
        assert_eq!(
            (k.encoding, k.shape.as_slice()),
            ("bitmask", &[2028, 10][..])
        );
        assert!(k.bytes < 2028 * 10 * 4 / 3);
    }

    #[test]
    fn idx_files_raw_and_gzipped() {
        let data =
            pare_mnist::IdxData::new(vec![3, 2, 2], vec![0u8, 1, 2, 0, 4, 5, 6, 7, 0, 9, 10, 11])
                .unwrap();
        let dir = std::env::temp_dir().join(format!("pare-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for gz in [false, true] {
            let p = dir.join(format!("a{gz}"));
            pare_mnist::write_idx(&p, &data, gz).unwrap();
            let r = inspect(&p).unwrap();
            assert_eq!((r.kind, r.integrity), (Kind::Idx, None));
            let text = r.to_string();
            assert!(text.contains("elements   u8 [3, 2, 2]"), "{text}");
            assert!(text.contains("zeros      25.0 %"), "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_and_foreign_files_are_one_readable_error() {
        let mut bytes = checkpoint_bytes(&small_cnn(0));
        *bytes.last_mut().unwrap() ^= 1;
        let err = inspect_bytes(&bytes, Path::new("ck.safetensors")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("ck.safetensors: tensor \"dense.kernel\" is corrupt"),
            "{msg}"
        );
        for junk in [&b"hello, world"[..], &[0xff; 64], &[]] {
            let msg = inspect_bytes(junk, Path::new("x")).unwrap_err().to_string();
            assert!(msg.starts_with("x: not a pare file: its "), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        // A safetensors file cut short in its header, and in its data.
        let msg = inspect_bytes(&bytes[..200], Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("x: cut short: its safetensors header should take"),
            "{msg}"
        );
        let err = inspect_bytes(&bytes[..bytes.len() - 8], Path::new("x")).unwrap_err();
        assert!(matches!(err, InspectError::Damaged { .. }), "{err}");
    }
}
