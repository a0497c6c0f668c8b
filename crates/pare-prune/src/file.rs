//! Pruned models on disk: safetensors files whose tensors are stored sparse when that is
//! smaller, and the same sparse encoding for int8 weights.
//!
//! # f32 model files ([`save_sparse`] / [`load_sparse`])
//!
//! A safetensors container, readable by any safetensors reader, holding one tensor per
//! parameter under its name (`conv2d.kernel`, …):
//!
//! * dense: an `F32` tensor of the parameter's shape, as [`pare_tensor::checkpoint::save`]
//!   writes it;
//! * sparse, chosen per tensor by [`choose_encoding`] whenever it is smaller: a 1-D `U8` tensor
//!   holding the [`SparseTensor`] bytes (bitmask + non-zero values, see [`crate::sparse`]),
//!   which carry the shape.
//!
//! The metadata entry [`METADATA_KEY`] holds a short JSON object
//! `{"format":"pare-prune","version":1,"sparse":["dense.kernel",…]}` naming the sparse tensors;
//! the entries `crc32c` and `crc32c:<tensor>` hold the CRC-32C of the header and of each
//! tensor's stored bytes (see [`pare_tensor::io`]); other metadata entries are the caller's.
//! Dense tensors come first, then sparse ones, each group sorted by name, and the caller's
//! metadata is sorted by key, so the same model gives the same bytes.
//!
//! Loading first checks the checksums: a damaged tensor is
//! [`pare_tensor::TensorError::ChecksumMismatch`] naming it (inside [`PruneError::Tensor`]),
//! before its bytes are decoded. Files written before the checksums existed have none and load
//! as [`Integrity::Unchecked`] ([`read_sparse_verified`] / [`load_sparse_verified`] say which);
//! old readers ignore the entries, so the format version is unchanged. Loading then checks
//! every tensor's type, the sparse bytes (every length, count and popcount, before allocating)
//! and the shapes against the model, and leaves the model untouched on any error. The round
//! trip is exact, bit for bit.
//!
//! # int8 weights ([`encode_i8`] / [`decode_i8`])
//!
//! pare-quant's model file takes a pluggable weight codec, and pare-prune and pare-quant do not
//! depend on each other, so this crate exports the two halves of an int8 codec as functions
//! and the caller wires them into pare-quant's `WeightCodec` (a dozen lines; the pruning example
//! does it). The encoding's tag is [`SPARSE_ENCODING`]; each tensor's bytes are whichever of
//! [`SparseTensor`] (bitmask), [`GapCoded`] (Rice-coded gaps) and [`EntropyCoded`]
//! (context-modelled arithmetic coding, the smallest on trained kernels) is smallest, told
//! apart by their magic bytes. A reader that predates a format reports its magic as
//! [`PruneError::BadMagic`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use pare_tensor::Sequential;
pub use pare_tensor::io::Integrity;
use pare_tensor::io::{Blob, is_checksum_key, safetensors_bytes};
use safetensors::tensor::{Dtype, SafeTensors};

use crate::entropy::{ENTROPY_MAGIC, EntropyCoded};
use crate::error::{PruneError, Result};
use crate::gaps::{GAP_MAGIC, GapCoded};
use crate::sparse::{SparseShape, SparseTensor, Storage, choose_encoding};

/// Metadata key of the JSON that names the sparse tensors.
pub const METADATA_KEY: &str = "pare_prune";
/// Value of the JSON's `format` field.
pub const FORMAT: &str = "pare-prune";
/// Version of the layout written here.
pub const VERSION: u64 = 1;
/// Tag of the sparse int8 weight encoding ([`encode_i8`]), for pare-quant's model file.
pub const SPARSE_ENCODING: &str = "pare-sparse-v1";

fn bad(reason: impl Into<String>) -> PruneError {
    PruneError::BadFile {
        reason: reason.into(),
    }
}

/// The bytes of a sparse model file for `model`'s parameters, with the caller's `metadata`.
///
/// # Errors
/// [`PruneError::BadFile`] if `metadata` uses the reserved key [`METADATA_KEY`] or the
/// container cannot be written.
pub fn to_sparse_bytes(model: &Sequential, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    if metadata.contains_key(METADATA_KEY) {
        return Err(bad(format!("metadata key {METADATA_KEY:?} is reserved")));
    }
    // Non-trainable state (BatchNorm's moving statistics) is part of the model too.
    let mut params = model.weights();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    let (mut dense, mut sparse) = (Vec::new(), Vec::new());
    for p in params {
        match choose_encoding(p.value.view()) {
            Storage::Sparse(s) => {
                let bytes = s.to_bytes();
                sparse.push(Blob::new(
                    p.name.clone(),
                    Dtype::U8,
                    vec![bytes.len()],
                    bytes,
                ));
            }
            Storage::Dense(a) => dense.push(Blob::f32(p.name.clone(), &a)),
        }
    }
    let names: Vec<&str> = sparse.iter().map(|b| b.name.as_str()).collect();
    let json = serde_json::json!({ "format": FORMAT, "version": VERSION, "sparse": names });
    let mut metadata: Vec<(String, String)> = metadata.into_iter().collect();
    metadata.push((METADATA_KEY.to_owned(), json.to_string()));
    metadata.sort();
    // F32 data first, so it stays 4-byte aligned for readers that map the file.
    dense.extend(sparse);
    safetensors_bytes(&metadata, &dense).map_err(|e| bad(e.to_string()))
}

/// Writes `model`'s parameters to `path` as a sparse model file, atomically (temporary file and
/// rename). Returns the file's size in bytes.
///
/// # Errors
/// As [`to_sparse_bytes`]; [`PruneError::Tensor`] wrapping the I/O error.
pub fn save_sparse(
    model: &Sequential,
    path: &Path,
    metadata: HashMap<String, String>,
) -> Result<usize> {
    let bytes = to_sparse_bytes(model, metadata)?;
    pare_tensor::io::write_atomic(path, &bytes)?;
    Ok(bytes.len())
}

/// Named dense tensors and the caller's metadata, read from a sparse model file's bytes.
pub type SparseFile = (Vec<(String, ArrayD<f32>)>, HashMap<String, String>);

/// Reads every tensor of a sparse model file (sparse ones decoded), sorted by name, and the
/// caller's metadata (without [`METADATA_KEY`]).
///
/// # Errors
/// [`PruneError::BadFile`] for anything malformed: not safetensors, missing or invalid
/// [`METADATA_KEY`] JSON, a sparse tensor that is not 1-D `U8` or does not decode, a dense
/// tensor that is not `F32`, a listed tensor that is absent.
pub fn read_sparse_bytes(bytes: &[u8]) -> Result<SparseFile> {
    Ok(read_sparse_verified(bytes)?.0)
}

/// [`read_sparse_bytes`], also saying whether the file's checksums were verified or it has
/// none.
///
/// # Errors
/// As [`read_sparse_bytes`]; [`PruneError::Tensor`] holding
/// [`pare_tensor::TensorError::ChecksumMismatch`] (naming the tensor) for damaged data.
pub fn read_sparse_verified(bytes: &[u8]) -> Result<(SparseFile, Integrity)> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    // Before any sparse bytes are decoded: damage is reported as damage, naming the tensor.
    let integrity = pare_tensor::io::verify(&st, header.metadata().as_ref())?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    metadata.retain(|k, _| !is_checksum_key(k));
    let json = metadata
        .remove(METADATA_KEY)
        .ok_or_else(|| bad(format!("no {METADATA_KEY:?} entry in the metadata")))?;
    let meta: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| bad(format!("{METADATA_KEY:?}: {e}")))?;
    if meta["format"] != FORMAT || meta["version"] != VERSION {
        return Err(bad(format!(
            "{METADATA_KEY:?} is {json}, expected format {FORMAT:?} version {VERSION}"
        )));
    }
    let listed = meta["sparse"]
        .as_array()
        .ok_or_else(|| bad(format!("{METADATA_KEY:?}: \"sparse\" is not a list")))?;
    let mut sparse = BTreeSet::new();
    for name in listed {
        let name = name
            .as_str()
            .ok_or_else(|| bad(format!("{METADATA_KEY:?}: {name} is not a tensor name")))?;
        if !sparse.insert(name.to_owned()) {
            return Err(bad(format!("tensor {name:?} is listed twice")));
        }
        if st.tensor(name).is_err() {
            return Err(bad(format!("sparse tensor {name:?} is missing")));
        }
    }
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let value = if sparse.contains(&name) {
            if view.dtype() != Dtype::U8 || view.shape().len() != 1 {
                return Err(bad(format!(
                    "sparse tensor {name:?} is {:?} {:?}, expected 1-D U8",
                    view.dtype(),
                    view.shape()
                )));
            }
            SparseTensor::<f32>::from_bytes(view.data())
                .map_err(|e| bad(format!("sparse tensor {name:?}: {e}")))?
                .decode()
        } else {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name:?} has dtype {:?}, expected F32 (or U8 listed as sparse)",
                    view.dtype()
                )));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            ArrayD::from_shape_vec(IxDyn(view.shape()), data)
                .map_err(|e| bad(format!("tensor {name:?}: {e}")))?
        };
        out.push((name, value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(((out, metadata), integrity))
}

/// Loads a sparse model file's bytes into `model`, by parameter name. Every parameter must be
/// present with its shape and nothing else may be; on any error `model` is untouched. Returns
/// the caller's metadata.
///
/// # Errors
/// As [`read_sparse_bytes`]; [`PruneError::FileMismatch`] listing every missing, unexpected
/// or mis-shaped tensor.
pub fn load_sparse_bytes(model: &mut Sequential, bytes: &[u8]) -> Result<HashMap<String, String>> {
    Ok(load_sparse_bytes_verified(model, bytes)?.0)
}

fn load_sparse_bytes_verified(
    model: &mut Sequential,
    bytes: &[u8],
) -> Result<(HashMap<String, String>, Integrity)> {
    let ((tensors, metadata), integrity) = read_sparse_verified(bytes)?;
    let mut by_name: HashMap<String, ArrayD<f32>> = tensors.into_iter().collect();
    let mut mismatches = Vec::new();
    let mut shapes = model.param_shapes();
    shapes.extend(
        model
            .non_trainable_params()
            .iter()
            .map(|p| (p.name.clone(), p.value.shape().to_vec())),
    );
    for (name, shape) in &shapes {
        match by_name.get(name) {
            None => mismatches.push(format!("missing {name} {shape:?}")),
            Some(t) if t.shape() != shape.as_slice() => mismatches.push(format!(
                "{name}: file has {:?}, model has {shape:?}",
                t.shape()
            )),
            Some(_) => {}
        }
    }
    let mut extra: Vec<&String> = by_name
        .keys()
        .filter(|k| !shapes.iter().any(|(n, _)| n == *k))
        .collect();
    extra.sort();
    mismatches.extend(extra.into_iter().map(|n| format!("unexpected {n}")));
    if !mismatches.is_empty() {
        return Err(PruneError::FileMismatch { mismatches });
    }
    for p in model.params_mut() {
        if let Some(v) = by_name.remove(&p.name) {
            p.value = v;
        }
    }
    for p in model.non_trainable_params_mut() {
        if let Some(v) = by_name.remove(&p.name) {
            p.value = v;
        }
    }
    Ok((metadata, integrity))
}

/// Loads a file written by [`save_sparse`] into `model` (see [`load_sparse_bytes`]).
///
/// # Errors
/// [`PruneError::Io`] if the file cannot be read; otherwise as [`load_sparse_bytes`].
pub fn load_sparse(model: &mut Sequential, path: &Path) -> Result<HashMap<String, String>> {
    Ok(load_sparse_verified(model, path)?.0)
}

/// [`load_sparse`], also saying whether the file's checksums were verified or it has none.
///
/// # Errors
/// As [`load_sparse`]; a checksum mismatch names the tensor and `path`.
pub fn load_sparse_verified(
    model: &mut Sequential,
    path: &Path,
) -> Result<(HashMap<String, String>, Integrity)> {
    let bytes = std::fs::read(path).map_err(|source| PruneError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_sparse_bytes_verified(model, &bytes).map_err(|e| match e {
        PruneError::Tensor(t) => PruneError::Tensor(t.in_file(path)),
        e => e,
    })
}

/// Encodes an int8 weight tensor in the smallest of the three sparse formats —
/// [`SparseTensor`] (bitmask), [`GapCoded`] (Rice-coded gaps, smaller at high sparsity) or
/// [`EntropyCoded`] (arithmetic-coded with context models, smaller on trained kernels) — when
/// that is smaller than the raw `len` bytes, else `None` (store it dense). On a tie the simpler
/// format wins. This is the `encode` half of a pare-quant `WeightCodec` tagged
/// [`SPARSE_ENCODING`]; the bytes say which format they are.
pub fn encode_i8(weights: ArrayViewD<'_, i8>) -> Option<Vec<u8>> {
    let bitmask = SparseTensor::encode(weights.view()).ok()?;
    // These two decline only past their size caps, where the bitmask still serves.
    let gaps = GapCoded::encode(weights.view()).ok();
    let entropy = EntropyCoded::encode(weights.view()).ok();
    let mut best = (bitmask.encoded_len(), 0);
    if let Some(g) = gaps.as_ref().filter(|g| g.encoded_len() < best.0) {
        best = (g.encoded_len(), 1);
    }
    if let Some(e) = entropy.as_ref().filter(|e| e.encoded_len() < best.0) {
        best = (e.encoded_len(), 2);
    }
    if best.0 >= weights.len() {
        return None;
    }
    Some(match (best.1, entropy, gaps) {
        (2, Some(e), _) => e.to_bytes(),
        (1, _, Some(g)) => g.to_bytes(),
        _ => bitmask.to_bytes(),
    })
}

/// Decodes bytes from [`encode_i8`] (any of the three formats), checking that they hold an int8
/// tensor of exactly `shape` before allocating it. The `decode` half of a pare-quant
/// `WeightCodec`; corrupt bytes are an error.
///
/// # Errors
/// The [`SparseTensor::from_bytes`] / [`GapCoded::from_bytes`] / [`EntropyCoded::from_bytes`]
/// errors (truncation, bad magic, inconsistent positions, [`PruneError::DTypeMismatch`] for f32
/// data …);
/// [`PruneError::ShapeMismatch`] if the shape differs from `shape`.
pub fn decode_i8(shape: &[usize], bytes: &[u8]) -> Result<ArrayD<i8>> {
    let check = |found: &[usize]| {
        if found == shape {
            Ok(())
        } else {
            Err(PruneError::ShapeMismatch {
                op: "decode_i8",
                expected: shape.to_vec(),
                found: found.to_vec(),
            })
        }
    };
    if bytes.starts_with(&GAP_MAGIC) {
        let g = GapCoded::<i8>::from_bytes(bytes)?;
        check(g.shape())?;
        Ok(g.decode())
    } else if bytes.starts_with(&ENTROPY_MAGIC) {
        EntropyCoded::decode_shaped(bytes, shape, "decode_i8")
    } else {
        let s = SparseTensor::<i8>::from_bytes(bytes)?;
        check(s.shape())?;
        Ok(s.decode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::magnitude_mask;
    use pare_tensor::models::{small_cnn, teacher_cnn};

    fn pruned_small(seed: u64, s: f32) -> Sequential {
        let mut m = small_cnn(seed);
        for name in ["conv2d.kernel", "dense.kernel"] {
            let p = m.param_mut(name).unwrap();
            let mask = magnitude_mask(p.value.view(), s).unwrap();
            crate::mask::apply_mask(p.value.view_mut(), mask.view()).unwrap();
        }
        m
    }

    fn bits(m: &Sequential) -> Vec<(String, Vec<u32>)> {
        m.params()
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.value.iter().map(|v| v.to_bits()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn round_trip_is_exact_and_picks_sparse_when_smaller() {
        let mut model = pruned_small(1, 0.8);
        // A dense bias with a -0.0 (stored: it is not all-zero bits) and a subnormal comes back
        // bit for bit.
        let b = &mut model.param_mut("dense.bias").unwrap().value;
        b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 0.1 * i as f32 - 0.35);
        b[[0]] = -0.0;
        b[[1]] = f32::MIN_POSITIVE / 4.0;
        let meta = HashMap::from([("note".to_string(), "pruned".to_string())]);
        let bytes = to_sparse_bytes(&model, meta.clone()).unwrap();
        let (tensors, got_meta) = read_sparse_bytes(&bytes).unwrap();
        assert_eq!(got_meta, meta);
        assert_eq!(tensors.len(), 4);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        // Kernels at 80 % are sparse; the all-zero conv bias (sparse: 16 + 8 + 2 bytes < 48)
        // too; the dense bias with 10 non-zeros is not.
        assert_eq!(st.tensor("dense.kernel").unwrap().dtype(), Dtype::U8);
        assert_eq!(st.tensor("conv2d.kernel").unwrap().dtype(), Dtype::U8);
        assert_eq!(st.tensor("conv2d.bias").unwrap().dtype(), Dtype::U8);
        assert_eq!(st.tensor("dense.bias").unwrap().dtype(), Dtype::F32);
        let mut back = small_cnn(9);
        load_sparse_bytes(&mut back, &bytes).unwrap();
        assert_eq!(bits(&back), bits(&model));
        // 80 % sparse f32: about a quarter of the dense checkpoint.
        let dense_len = 20_410 * 4;
        assert!(bytes.len() < dense_len * 27 / 100, "{} bytes", bytes.len());
        // An unpruned model stays dense (and still round-trips).
        let plain = small_cnn(2);
        let b2 = to_sparse_bytes(&plain, HashMap::new()).unwrap();
        let st2 = SafeTensors::deserialize(&b2).unwrap();
        assert_eq!(st2.tensor("dense.kernel").unwrap().dtype(), Dtype::F32);
        let mut back2 = small_cnn(3);
        load_sparse_bytes(&mut back2, &b2).unwrap();
        assert_eq!(bits(&back2), bits(&plain));
    }

    #[test]
    fn file_round_trip_and_io_errors() {
        let dir = std::env::temp_dir().join(format!("pare-prune-file-{}", std::process::id()));
        let path = dir.join("m.safetensors");
        let model = pruned_small(4, 0.9);
        let n = save_sparse(&model, &path, HashMap::new()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, n);
        let mut back = small_cnn(0);
        load_sparse(&mut back, &path).unwrap();
        assert_eq!(bits(&back), bits(&model));
        assert!(matches!(
            load_sparse(&mut back, &dir.join("absent")),
            Err(PruneError::Io { .. })
        ));
        // pare-tensor's plain checkpoint loader reads nothing it does not understand: the
        // sparse tensors are U8, so it refuses rather than misreads.
        assert!(pare_tensor::checkpoint::load(&mut small_cnn(0), &path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mismatched_model_is_listed_and_untouched() {
        let bytes = to_sparse_bytes(&pruned_small(1, 0.5), HashMap::new()).unwrap();
        let mut other = teacher_cnn(4, 8, 0);
        let before = bits(&other);
        match load_sparse_bytes(&mut other, &bytes) {
            Err(PruneError::FileMismatch { mismatches }) => {
                assert!(
                    mismatches
                        .iter()
                        .any(|m| m.starts_with("missing conv2d_1.kernel"))
                );
                assert!(
                    mismatches
                        .iter()
                        .any(|m| m.starts_with("conv2d.kernel: file has [3, 3, 1, 12]"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(bits(&other), before);
    }

    /// Rebuilds a file with the given tensors and metadata.
    fn container(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], meta: Option<&str>) -> Vec<u8> {
        let views: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
                (n.to_string(), v)
            })
            .collect();
        let md = meta.map(|m| HashMap::from([(METADATA_KEY.to_string(), m.to_string())]));
        safetensors::tensor::serialize(views, md).unwrap()
    }

    #[test]
    fn corrupt_files_are_errors_never_panics() {
        let model = pruned_small(2, 0.8);
        let good = to_sparse_bytes(&model, HashMap::new()).unwrap();
        // Every truncation fails cleanly.
        for cut in (0..good.len()).step_by(97).chain([good.len() - 1]) {
            let mut m = small_cnn(0);
            assert!(
                load_sparse_bytes(&mut m, &good[..cut]).is_err(),
                "cut {cut}"
            );
        }
        // Flipping bytes anywhere: an error or (in the values) a different model, never a
        // panic.
        for at in (0..good.len()).step_by(13) {
            let mut b = good.clone();
            b[at] ^= 0x5a;
            let _ = load_sparse_bytes(&mut small_cnn(0), &b);
        }
        let sparse = SparseTensor::encode(model.param("dense.kernel").unwrap().value.view())
            .unwrap()
            .to_bytes();
        let list = r#"{"format":"pare-prune","version":1,"sparse":["w"]}"#;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                container(
                    &[("w", Dtype::U8, vec![sparse.len()], sparse.clone())],
                    None,
                ),
                "no",
            ),
            (
                container(
                    &[("w", Dtype::U8, vec![sparse.len()], sparse.clone())],
                    Some("{"),
                ),
                "pare_prune",
            ),
            (
                container(
                    &[("w", Dtype::U8, vec![sparse.len()], sparse.clone())],
                    Some(r#"{"format":"pare-prune","version":2,"sparse":["w"]}"#),
                ),
                "version",
            ),
            (
                container(
                    &[("w", Dtype::U8, vec![sparse.len()], sparse.clone())],
                    Some(r#"{"format":"pare-prune","version":1,"sparse":["w","w"]}"#),
                ),
                "twice",
            ),
            (
                container(
                    &[("w", Dtype::U8, vec![sparse.len()], sparse.clone())],
                    Some(r#"{"format":"pare-prune","version":1,"sparse":["v"]}"#),
                ),
                "missing",
            ),
            // Sparse bytes declared but stored unlisted: a U8 tensor that is not F32.
            (
                container(
                    &[("w", Dtype::U8, vec![sparse.len()], sparse.clone())],
                    Some(r#"{"format":"pare-prune","version":1,"sparse":[]}"#),
                ),
                "expected F32",
            ),
            (
                container(
                    &[("w", Dtype::I8, vec![sparse.len()], sparse.clone())],
                    Some(list),
                ),
                "1-D U8",
            ),
            (
                container(
                    &[("w", Dtype::U8, vec![sparse.len() - 1], sparse[1..].to_vec())],
                    Some(list),
                ),
                "magic",
            ),
            (
                container(
                    &[(
                        "w",
                        Dtype::U8,
                        vec![sparse.len() + 1],
                        [&sparse[..], &[0]].concat(),
                    )],
                    Some(list),
                ),
                "trailing",
            ),
        ];
        for (bytes, needle) in cases {
            match read_sparse_bytes(&bytes) {
                Err(e @ PruneError::BadFile { .. }) => {
                    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}")
                }
                other => panic!("{needle}: {other:?}"),
            }
        }
        assert!(matches!(
            to_sparse_bytes(&model, HashMap::from([(METADATA_KEY.into(), "x".into())])),
            Err(PruneError::BadFile { .. })
        ));
    }

    #[test]
    fn damaged_tensors_are_named_and_old_files_load_unchecked() {
        let model = pruned_small(3, 0.8);
        let bytes = to_sparse_bytes(&model, HashMap::new()).unwrap();
        assert_eq!(bytes, to_sparse_bytes(&model, HashMap::new()).unwrap());
        let (_, integrity) = read_sparse_verified(&bytes).unwrap();
        assert_eq!(integrity, Integrity::Verified);
        // The last stored tensor is the last sparse one by name: dense.kernel.
        let mut b = bytes.clone();
        *b.last_mut().unwrap() ^= 0x80;
        let dir = std::env::temp_dir().join(format!("pare-prune-crc-{}", std::process::id()));
        let path = dir.join("p.safetensors");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, &b).unwrap();
        let mut m = small_cnn(0);
        let before = bits(&m);
        match load_sparse_verified(&mut m, &path) {
            Err(PruneError::Tensor(pare_tensor::TensorError::ChecksumMismatch {
                path: Some(p),
                tensor: Some(t),
                ..
            })) => assert_eq!((p, t.as_str()), (path.clone(), "dense.kernel")),
            other => panic!("{other:?}"),
        }
        assert_eq!(bits(&m), before);
        // Written without checksums (as pare did before them): loads, unchecked.
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.retain(|k, _| !is_checksum_key(k));
        let old = safetensors::tensor::serialize(st.tensors(), Some(meta)).unwrap();
        std::fs::write(&path, &old).unwrap();
        let (_, integrity) = load_sparse_verified(&mut m, &path).unwrap();
        assert_eq!(integrity, Integrity::Unchecked);
        assert_eq!(bits(&m), bits(&model));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn i8_codec_round_trip_and_errors() {
        let mut w = ndarray::Array2::<i8>::zeros((50, 10));
        for i in 0..50 {
            w[[i, i % 10]] = (i as i8) - 25;
        }
        let w = w.into_dyn();
        // A diagonal, alternate columns, and i.i.d. noise at 60 % and 10 % density: the codec
        // picks the smallest format each time, and every format decodes.
        let mut state = 7u32;
        let mut noise = |density: u32| {
            ArrayD::from_shape_simple_fn(IxDyn(&[40, 10]), || {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if (state >> 8) % 100 < density {
                    match (state >> 16) as i8 {
                        0 => 1,
                        v => v,
                    }
                } else {
                    0
                }
            })
        };
        let half = ArrayD::from_shape_fn(IxDyn(&[40, 10]), |i| -((i[1] % 2) as i8));
        let (dense, sparse) = (noise(60), noise(10));
        let mut picked = Vec::new();
        for a in [&w, &half, &dense, &sparse] {
            let shape = a.shape();
            let formats = [
                SparseTensor::encode(a.view()).unwrap().to_bytes(),
                GapCoded::encode(a.view()).unwrap().to_bytes(),
                EntropyCoded::encode(a.view()).unwrap().to_bytes(),
            ];
            let bytes = encode_i8(a.view()).expect("smaller sparse");
            assert_eq!(bytes.len(), formats.iter().map(Vec::len).min().unwrap());
            assert!(bytes.len() < a.len());
            picked.push(bytes[..4].to_vec());
            for b in formats.iter().chain([&bytes]) {
                assert_eq!(&decode_i8(shape, b).unwrap(), a);
                let r = decode_i8(&[shape[1], shape[0]], b);
                assert!(matches!(r, Err(PruneError::ShapeMismatch { .. })), "{r:?}");
            }
        }
        // Structure (a diagonal, whole columns) goes to the entropy coder.
        assert_eq!(picked[0], ENTROPY_MAGIC);
        assert_eq!(picked[1], ENTROPY_MAGIC);
        let bytes = encode_i8(w.view()).unwrap();
        assert!(matches!(
            decode_i8(&[50, 10], &bytes[..bytes.len() - 1]),
            Err(PruneError::Truncated { .. })
        ));
        let f = SparseTensor::encode(ArrayD::<f32>::ones(IxDyn(&[4])).view()).unwrap();
        assert!(matches!(
            decode_i8(&[4], &f.to_bytes()),
            Err(PruneError::DTypeMismatch { .. })
        ));
        // Dense int8 with nothing to model stays dense.
        let full = noise(100);
        assert!(encode_i8(full.view()).is_none());
    }
}
