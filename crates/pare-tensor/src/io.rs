//! Atomic file writes, safetensors containers of named tensors, and their checksums.
//!
//! # Checksums
//!
//! Every safetensors file pare writes (checkpoints, int8 model files, sparse model files) is
//! assembled by [`safetensors_bytes`], which adds to the string metadata:
//!
//! - `crc32c:<tensor>` for each tensor: the CRC-32C (Castagnoli) of the tensor's data bytes,
//!   as 8 lowercase hex digits, so any `crc32c` tool can check one tensor;
//! - `crc32c`: the CRC-32C of the header, so a flipped byte in the metadata (an architecture
//!   entry, a zero point) is caught too. It covers, in this order: every other metadata entry
//!   sorted by key, each as `key 0x00 value 0x00`; then every tensor sorted by name, as
//!   `name 0x00 dtype 0x00` followed by its dimensions as little-endian `u64`s and a `0xFF`.
//!
//! [`verify`] checks both on load: a mismatch is [`TensorError::ChecksumMismatch`] naming the
//! tensor (or the header). A file without any `crc32c` entry (written by an older pare or
//! another tool) is [`Integrity::Unchecked`], not an error; a file with some entries but not
//! all is an error, since a damaged key would otherwise switch the check off.
//!
//! The header is written in a fixed order (metadata in the caller's order, then the checksums;
//! tensors in the caller's order, data in the same order), so the same tensors give the same
//! bytes on every run; the safetensors crate's own writer takes a `HashMap` and does not.

use crate::error::{Result, TensorError};
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

/// Metadata key of the header's CRC-32C.
pub const CHECKSUM_KEY: &str = "crc32c";
/// Prefix of the metadata keys holding each tensor's CRC-32C (`crc32c:conv2d.kernel`).
pub const TENSOR_CHECKSUM_PREFIX: &str = "crc32c:";

/// What checking a file's checksums found (a mismatch is an error instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integrity {
    /// Every tensor and the header match the CRC-32C recorded when the file was written.
    Verified,
    /// The file records no checksums (an older pare, or another tool, wrote it): nothing could
    /// be checked beyond the container's structure.
    Unchecked,
}

impl std::fmt::Display for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Integrity::Verified => "verified (CRC-32C of the header and of every tensor)",
            Integrity::Unchecked => "unchecked (the file records no checksums)",
        })
    }
}

/// One tensor to write into a safetensors container.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Little-endian element bytes (for 1-D `U8` tensors, any bytes).
    pub data: Vec<u8>,
}

impl Blob {
    /// A tensor to write.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Self {
        Blob {
            name: name.into(),
            dtype,
            shape,
            data,
        }
    }

    /// An `F32` tensor holding `a` in row-major order.
    pub fn f32(name: impl Into<String>, a: &ArrayD<f32>) -> Self {
        let data = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        Blob::new(name, Dtype::F32, a.shape().to_vec(), data)
    }
}

/// Whether `key` is one of the metadata keys that hold checksums.
pub fn is_checksum_key(key: &str) -> bool {
    key == CHECKSUM_KEY || key.starts_with(TENSOR_CHECKSUM_PREFIX)
}

/// CRC-32C of the header's canonical form (see the module docs). `metadata` may include the
/// checksum entries; they are skipped.
fn header_crc<'a>(
    metadata: impl Iterator<Item = (&'a str, &'a str)>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize])>,
) -> u32 {
    let mut meta: Vec<_> = metadata.filter(|(k, _)| !is_checksum_key(k)).collect();
    meta.sort_unstable();
    let mut crc = 0;
    for (k, v) in meta {
        for part in [k.as_bytes(), &[0], v.as_bytes(), &[0]] {
            crc = crc32c::crc32c_append(crc, part);
        }
    }
    let mut tensors: Vec<_> = tensors.collect();
    tensors.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape) in tensors {
        let dtype = format!("{dtype:?}");
        for part in [name.as_bytes(), &[0], dtype.as_bytes(), &[0]] {
            crc = crc32c::crc32c_append(crc, part);
        }
        for &d in shape {
            crc = crc32c::crc32c_append(crc, &(d as u64).to_le_bytes());
        }
        crc = crc32c::crc32c_append(crc, &[0xff]);
    }
    crc
}

/// The bytes of a safetensors file holding `tensors` (data in this order) and `metadata` (in
/// this order), with the checksums of the module docs appended to the metadata. The layout is
/// the safetensors crate's: u64 header length, JSON header padded with spaces to a multiple
/// of 8, data.
///
/// # Errors
/// [`TensorError::InvalidContainer`] if a metadata key is a checksum key or appears twice, a
/// tensor name is empty, `__metadata__` or appears twice, or a tensor's data length does not
/// match its dtype and shape.
pub fn safetensors_bytes(metadata: &[(String, String)], tensors: &[Blob]) -> Result<Vec<u8>> {
    let invalid = |reason: String| Err(TensorError::InvalidContainer { reason });
    let mut keys = HashSet::new();
    for (k, _) in metadata {
        if is_checksum_key(k) {
            return invalid(format!("metadata key {k:?} is reserved for checksums"));
        }
        if !keys.insert(k.as_str()) {
            return invalid(format!("metadata key {k:?} given twice"));
        }
    }
    let mut names = HashSet::new();
    for t in tensors {
        if t.name.is_empty() || t.name == "__metadata__" || !names.insert(t.name.as_str()) {
            return invalid(format!(
                "tensor name {:?} is empty, reserved or repeated",
                t.name
            ));
        }
        let elements = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bits = elements.and_then(|n| n.checked_mul(t.dtype.bitsize()));
        if bits != t.data.len().checked_mul(8) {
            return invalid(format!(
                "tensor {:?}: {} bytes do not hold {:?} {:?}",
                t.name,
                t.data.len(),
                t.dtype,
                t.shape
            ));
        }
    }
    let json = |s: &str| serde_json::Value::from(s).to_string();
    let crc = header_crc(
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())),
    );
    let mut header = String::from("{\"__metadata__\":{");
    let checksums = tensors.iter().map(|t| {
        (
            format!("{TENSOR_CHECKSUM_PREFIX}{}", t.name),
            format!("{:08x}", crc32c::crc32c(&t.data)),
        )
    });
    let entries = metadata
        .iter()
        .cloned()
        .chain([(CHECKSUM_KEY.to_string(), format!("{crc:08x}"))])
        .chain(checksums);
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            header.push(',');
        }
        let _ = write!(header, "{}:{}", json(&key), json(&value));
    }
    header.push('}');
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.data.len();
        let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        let _ = write!(
            header,
            ",{}:{{\"dtype\":\"{:?}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json(&t.name),
            t.dtype,
            shape.join(",")
        );
        offset = end;
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header.as_bytes());
    for t in tensors {
        out.extend(&t.data);
    }
    Ok(out)
}

/// Checks the checksums of a parsed safetensors file (see the module docs) against its
/// `metadata`.
///
/// # Errors
/// [`TensorError::ChecksumMismatch`] naming the first tensor (or the header) whose bytes do not
/// match; [`TensorError::BadChecksums`] if some checksums are recorded but one is missing,
/// malformed, or names no tensor. Neither names a file: add it with
/// [`TensorError::in_file`].
pub fn verify(
    st: &SafeTensors<'_>,
    metadata: Option<&HashMap<String, String>>,
) -> Result<Integrity> {
    let Some(metadata) = metadata.filter(|m| m.keys().any(|k| is_checksum_key(k))) else {
        return Ok(Integrity::Unchecked);
    };
    let bad = |reason: String| TensorError::BadChecksums { path: None, reason };
    let parse = |key: &str| -> Result<u32> {
        let v = metadata.get(key).ok_or_else(|| {
            bad(format!(
                "no {key:?} entry, though other checksums are recorded"
            ))
        })?;
        if v.len() != 8 {
            return Err(bad(format!("{key:?} is {v:?}, not 8 hex digits")));
        }
        u32::from_str_radix(v, 16).map_err(|_| bad(format!("{key:?} is {v:?}, not 8 hex digits")))
    };
    let tensors = st.tensors();
    let names: HashSet<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(k) = metadata.keys().find(|k| {
        k.strip_prefix(TENSOR_CHECKSUM_PREFIX)
            .is_some_and(|n| !names.contains(n))
    }) {
        return Err(bad(format!("{k:?} names no tensor of the file")));
    }
    let stored = parse(CHECKSUM_KEY)?;
    let computed = header_crc(
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        tensors
            .iter()
            .map(|(n, v)| (n.as_str(), v.dtype(), v.shape())),
    );
    if stored != computed {
        return Err(TensorError::ChecksumMismatch {
            path: None,
            tensor: None,
            stored,
            computed,
        });
    }
    let mut sorted: Vec<_> = tensors.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in sorted {
        let stored = parse(&format!("{TENSOR_CHECKSUM_PREFIX}{name}"))?;
        let computed = crc32c::crc32c(view.data());
        if stored != computed {
            return Err(TensorError::ChecksumMismatch {
                path: None,
                tensor: Some(name.clone()),
                stored,
                computed,
            });
        }
    }
    Ok(Integrity::Verified)
}

/// Parses a safetensors file's bytes and checks its checksums: [`verify`] for callers that
/// only want the status.
///
/// # Errors
/// [`TensorError::BadCheckpoint`] if the bytes are not safetensors (named `path`, which is
/// only used in messages); otherwise as [`verify`], with `path`.
pub fn verify_bytes(bytes: &[u8], path: &Path) -> Result<Integrity> {
    sniff(bytes, path)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(path, e))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(path, e))?;
    verify(&st, header.metadata().as_ref()).map_err(|e| e.in_file(path))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Serialises named f32 tensors (and string metadata) as a safetensors file with checksums,
/// atomically. Tensors are stored sorted by name and metadata sorted by key, so the same
/// tensors and metadata give the same bytes.
///
/// # Errors
/// As [`safetensors_bytes`] (e.g. a metadata key starting with `crc32c`); I/O errors.
pub fn save_f32_tensors(
    path: &Path,
    tensors: &[(String, &ArrayD<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomic(path, &f32_tensors_bytes(tensors, metadata)?)
}

/// The bytes [`save_f32_tensors`] writes.
///
/// # Errors
/// As [`safetensors_bytes`].
pub fn f32_tensors_bytes(
    tensors: &[(String, &ArrayD<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut blobs: Vec<Blob> = tensors
        .iter()
        .map(|(n, a)| Blob::f32(n.clone(), a))
        .collect();
    blobs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut metadata: Vec<(String, String)> = metadata.unwrap_or_default().into_iter().collect();
    metadata.sort();
    safetensors_bytes(&metadata, &blobs)
}

/// Says in words that a file is not a pare file at all (a text file, an image, an empty
/// file), before the safetensors parser reports "header too large" or the like: a
/// safetensors file opens with the 8-byte length of a JSON header that starts with `{`.
fn sniff(bytes: &[u8], path: &Path) -> Result<()> {
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let fits = header_len.is_some_and(|n| n >= 2 && n <= (bytes.len() - 8) as u64);
    if fits && bytes.get(8) == Some(&b'{') {
        return Ok(());
    }
    let start: String = String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    Err(bad(
        path,
        format!(
            "not a pare model or checkpoint file (those are safetensors files; this one is {} \
             bytes and starts {start:?})",
            bytes.len()
        ),
    ))
}

fn bad(path: &Path, e: impl std::fmt::Display) -> TensorError {
    TensorError::BadCheckpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Named f32 tensors and the metadata of a safetensors file.
pub type TensorFile = (Vec<(String, ArrayD<f32>)>, HashMap<String, String>);

/// Reads a safetensors file of f32 tensors (see [`read_f32_tensors`]).
///
/// # Errors
/// [`TensorError::Io`] if the file cannot be read; otherwise as [`read_f32_tensors`].
pub fn load_f32_tensors(path: &Path) -> Result<TensorFile> {
    Ok(read_f32_tensors(&read_file(path)?, path)?.0)
}

/// Reads a whole file, naming it in the error.
///
/// # Errors
/// [`TensorError::Io`].
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses the bytes of a safetensors file of f32 tensors, sorted by name, its metadata
/// (without the checksum entries) and what checking its checksums found. Every length and
/// offset is checked by the safetensors parser before anything is allocated, then the
/// checksums (see the module docs); `path` names the file in errors.
///
/// # Errors
/// [`TensorError::BadCheckpoint`] for bytes that are not safetensors or tensors that are not
/// `F32`; [`TensorError::ChecksumMismatch`] / [`TensorError::BadChecksums`] for damaged data.
pub fn read_f32_tensors(bytes: &[u8], path: &Path) -> Result<(TensorFile, Integrity)> {
    sniff(bytes, path)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(path, e))?;
    let integrity = verify(&st, meta.metadata().as_ref()).map_err(|e| e.in_file(path))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(
                path,
                format!("tensor {name} has dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let arr = ArrayD::from_shape_vec(IxDyn(view.shape()), data).map_err(|e| bad(path, e))?;
        out.push((name, arr));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metadata = meta.metadata().clone().unwrap_or_default();
    metadata.retain(|k, _| !is_checksum_key(k));
    Ok(((out, metadata), integrity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Vec<u8> {
        let a = ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32 - 2.5);
        let b = ArrayD::from_elem(IxDyn(&[4]), 0.25f32);
        let meta = HashMap::from([("z".into(), "last".into()), ("a".into(), "first".into())]);
        f32_tensors_bytes(&[("w".into(), &a), ("b".into(), &b)], Some(meta)).unwrap()
    }

    #[test]
    fn written_files_verify_and_are_deterministic() {
        let bytes = file();
        assert_eq!(bytes, file());
        let ((tensors, meta), integrity) = read_f32_tensors(&bytes, Path::new("t")).unwrap();
        assert_eq!(integrity, Integrity::Verified);
        assert_eq!(tensors.len(), 2);
        assert_eq!(
            meta.len(),
            2,
            "checksum entries are not the caller's: {meta:?}"
        );
        // Matches an independent CRC-32C: the standard check value of "123456789" is e3069283
        // (RFC 3720, appendix B.4), and the tensor entry is the CRC of the data bytes.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        for junk in [
            &b"epoch,loss\n1,0.5\n"[..],
            b"",
            b"\x08\0\0\0\0\0\0\0[1,2]xyz",
        ] {
            let err = read_f32_tensors(junk, Path::new("x.csv"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a pare model or checkpoint file"), "{err}");
        }
        let recorded = &header.metadata().as_ref().unwrap()["crc32c:b"];
        let data: Vec<u8> = [0.25f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(recorded, &format!("{:08x}", crc32c::crc32c(&data)));
        assert_eq!(st.tensor("b").unwrap().data(), &data[..]);
    }

    #[test]
    fn a_flipped_data_byte_names_the_tensor_and_the_file() {
        let mut bytes = file();
        let n = bytes.len();
        bytes[n - 1] ^= 0x01; // last byte of the last tensor's data, "w" (sorted: b, w)
        let err = read_f32_tensors(&bytes, Path::new("model.safetensors")).unwrap_err();
        match &err {
            TensorError::ChecksumMismatch { path, tensor, .. } => {
                assert_eq!(path.as_deref(), Some(Path::new("model.safetensors")));
                assert_eq!(tensor.as_deref(), Some("w"));
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with("model.safetensors: tensor \"w\" is corrupt"),
            "{msg}"
        );
    }

    #[test]
    fn a_changed_metadata_value_fails_the_header_checksum() {
        let bytes = file();
        let at = bytes.windows(5).position(|w| w == b"first").unwrap();
        let mut b = bytes.clone();
        b[at] = b'F';
        assert!(matches!(
            read_f32_tensors(&b, Path::new("t")),
            Err(TensorError::ChecksumMismatch { tensor: None, .. })
        ));
        // A damaged checksum key switches nothing off: the tensor's entry is then missing.
        let at = bytes.windows(8).position(|w| w == b"crc32c:w").unwrap();
        let mut b = bytes.clone();
        b[at + 7] = b'v';
        let err = read_f32_tensors(&b, Path::new("t")).unwrap_err();
        assert!(matches!(err, TensorError::BadChecksums { .. }), "{err}");
    }

    #[test]
    fn files_without_checksums_load_unchecked() {
        // Written by the safetensors crate itself, as another tool would.
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &data).unwrap();
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        let bytes = safetensors::tensor::serialize([("x", view)], Some(meta.clone())).unwrap();
        let ((t, m), integrity) = read_f32_tensors(&bytes, Path::new("t")).unwrap();
        assert_eq!(integrity, Integrity::Unchecked);
        assert_eq!(m, meta);
        assert_eq!(t[0].1.as_slice().unwrap(), &[1.0, 2.0]);
        assert_eq!(
            verify_bytes(&bytes, Path::new("t")).unwrap(),
            Integrity::Unchecked
        );
        assert_eq!(
            verify_bytes(&file(), Path::new("t")).unwrap(),
            Integrity::Verified
        );
    }

    #[test]
    fn reserved_or_inconsistent_input_is_refused_by_the_writer() {
        let a = ArrayD::<f32>::zeros(IxDyn(&[1]));
        let meta = HashMap::from([("crc32c:x".to_string(), "0".to_string())]);
        assert!(matches!(
            f32_tensors_bytes(&[("x".into(), &a)], Some(meta)),
            Err(TensorError::InvalidContainer { .. })
        ));
        let short = Blob::new("x", Dtype::F32, vec![2], vec![0; 4]);
        assert!(matches!(
            safetensors_bytes(&[], &[short]),
            Err(TensorError::InvalidContainer { .. })
        ));
    }
}
