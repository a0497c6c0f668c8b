//! Saving and loading a model's parameters as safetensors, by name.
//!
//! A checkpoint is a plain safetensors file of `F32` tensors named `layer.kernel`,
//! `layer.bias`, …, sorted by name, with the caller's metadata and the CRC-32C entries of
//! [`crate::io`] (`crc32c` for the header, `crc32c:<tensor>` per tensor). Other safetensors
//! readers ignore the checksums; files from other tools (or an older pare) have none and load
//! as [`Integrity::Unchecked`].
//!
//! A graph model's checkpoint also holds its wiring (JSON, node → inputs) under the metadata
//! key [`WIRING_KEY`]: loading it into a model wired otherwise is a
//! [`TensorError::CheckpointMismatch`], and [`wiring`] reads it back.

use crate::error::{Result, TensorError};
pub use crate::io::Integrity;
use crate::io::{read_f32_tensors, save_f32_tensors};
use crate::nn::Sequential;
use std::collections::HashMap;
use std::path::Path;

/// The metadata key of a graph model's wiring.
pub const WIRING_KEY: &str = "pare.wiring";

/// Writes every parameter of `model` to `path` (safetensors, f32, named `layer.kernel`, ...),
/// and its non-trainable state (`bn.moving_mean`, ...), with `metadata` in the header, and a
/// graph model's wiring. The write is atomic.
pub fn save(model: &Sequential, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
    let mut metadata = metadata;
    if !model.is_sequential() {
        let json = serde_json::to_string(&model.wiring).expect("a map of strings serializes");
        metadata.insert(WIRING_KEY.into(), json);
    }
    let params = model.weights();
    let tensors: Vec<_> = params.iter().map(|p| (p.name.clone(), &p.value)).collect();
    save_f32_tensors(path, &tensors, Some(metadata))
}

/// Loads parameters saved by [`save`] (or by PyTorch / Keras / candle under the same names)
/// into `model`. Any missing, unexpected or mis-shaped tensor is an error listing them all, and
/// the model is left untouched. Returns the file's metadata (without the checksum entries).
///
/// # Errors
/// As [`load_verified`].
pub fn load(model: &mut Sequential, path: &Path) -> Result<HashMap<String, String>> {
    Ok(load_verified(model, path)?.0)
}

/// [`load`], also saying whether the file's checksums were verified or it had none.
///
/// # Errors
/// [`TensorError::Io`]; [`TensorError::BadCheckpoint`] for a file that is not a safetensors
/// file of `F32` tensors; [`TensorError::ChecksumMismatch`] naming the damaged tensor and the
/// file; [`TensorError::NonFinite`] for a NaN or infinite weight (in a file without checksums,
/// where nothing else could catch it); [`TensorError::CheckpointMismatch`].
pub fn load_verified(
    model: &mut Sequential,
    path: &Path,
) -> Result<(HashMap<String, String>, Integrity)> {
    load_bytes(model, &crate::io::read_file(path)?, path)
}

/// [`load_verified`] for a checkpoint's bytes already in memory; `path` only names the file
/// in errors.
///
/// # Errors
/// As [`load_verified`], except [`TensorError::Io`].
pub fn load_bytes(
    model: &mut Sequential,
    bytes: &[u8],
    path: &Path,
) -> Result<(HashMap<String, String>, Integrity)> {
    let ((tensors, mut meta), integrity) = read_f32_tensors(bytes, path)?;
    let stored = take_wiring(&mut meta, path)?;
    for (name, t) in &tensors {
        if let Some(index) = t.iter().position(|v| !v.is_finite()) {
            return Err(TensorError::NonFinite {
                what: format!("{}: tensor {name:?}", path.display()),
                index,
            });
        }
    }
    let mut by_name: HashMap<_, _> = tensors.into_iter().collect();
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
    let expected: std::collections::HashSet<String> = shapes.into_iter().map(|(n, _)| n).collect();
    let mut extra: Vec<_> = by_name
        .keys()
        .filter(|k| !expected.contains(*k))
        .cloned()
        .collect();
    extra.sort();
    mismatches.extend(extra.into_iter().map(|n| format!("unexpected {n}")));
    if let Some(stored) = stored.filter(|w| *w != model.full_wiring()) {
        let edges = |w: &Wiring| {
            w.iter()
                .map(|(n, i)| format!("{n} <- {}", i.join(" + ")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        mismatches.push(format!(
            "wiring: file has {}; model has {}",
            edges(&stored),
            edges(&model.full_wiring())
        ));
    }
    if !mismatches.is_empty() {
        return Err(TensorError::CheckpointMismatch {
            path: path.to_path_buf(),
            mismatches,
        });
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
    Ok((meta, integrity))
}

/// A model's wiring: node → the names of its inputs.
pub type Wiring = std::collections::BTreeMap<String, Vec<String>>;

fn take_wiring(meta: &mut HashMap<String, String>, path: &Path) -> Result<Option<Wiring>> {
    let Some(json) = meta.remove(WIRING_KEY) else {
        return Ok(None);
    };
    serde_json::from_str(&json)
        .map(Some)
        .map_err(|e| TensorError::BadCheckpoint {
            path: path.to_path_buf(),
            reason: format!("metadata {WIRING_KEY:?} is not a wiring map: {e}"),
        })
}

/// The wiring a graph model's checkpoint holds (`None` for a chain's, or a file from another
/// tool).
///
/// # Errors
/// As [`load_verified`] for a file that cannot be read, or a wiring entry that is not JSON
/// of node → input names.
pub fn wiring(path: &Path) -> Result<Option<Wiring>> {
    let bytes = crate::io::read_file(path)?;
    let ((_, mut meta), _) = read_f32_tensors(&bytes, path)?;
    take_wiring(&mut meta, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{small_cnn, teacher_cnn};

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pare-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn round_trip_restores_every_parameter_and_metadata() {
        let a = small_cnn(1);
        let mut b = small_cnn(2);
        assert_ne!(a.params(), b.params());
        let path = tmp("rt.safetensors");
        let meta = HashMap::from([("model".to_string(), "small".to_string())]);
        save(&a, &path, meta.clone()).unwrap();
        let got = load(&mut b, &path).unwrap();
        assert_eq!(a.params(), b.params());
        assert_eq!(got, meta);
        let (_, integrity) = load_verified(&mut b, &path).unwrap();
        assert_eq!(integrity, Integrity::Verified);
        // Same parameters and metadata, same bytes.
        let again = tmp("rt2.safetensors");
        save(&a, &again, meta).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }

    #[test]
    fn a_flipped_weight_byte_is_an_error_naming_tensor_and_file() {
        let path = tmp("flip.safetensors");
        save(&small_cnn(1), &path, HashMap::new()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0x10; // inside the last tensor's data: dense.kernel (sorted by name)
        std::fs::write(&path, &bytes).unwrap();
        let mut m = small_cnn(0);
        let before = m.params().into_iter().cloned().collect::<Vec<_>>();
        let err = load(&mut m, &path).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, TensorError::ChecksumMismatch { tensor: Some(t), path: Some(p), .. }
                if t == "dense.kernel" && p == &path),
            "{msg}"
        );
        assert!(
            msg.contains("flip.safetensors") && msg.contains("dense.kernel"),
            "{msg}"
        );
        assert_eq!(before, m.params().into_iter().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn files_without_checksums_load_unchecked_but_non_finite_weights_do_not() {
        // What PyTorch's or candle's safetensors writer produces: no pare checksums.
        let a = small_cnn(1);
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = a
            .params()
            .iter()
            .map(|p| {
                let d = p.value.iter().flat_map(|v| v.to_le_bytes()).collect();
                (p.name.clone(), d, p.value.shape().to_vec())
            })
            .collect();
        let write = |data: &[(String, Vec<u8>, Vec<usize>)], path: &Path| {
            let views = data.iter().map(|(n, d, s)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d);
                (n.clone(), v.unwrap())
            });
            let bytes = safetensors::tensor::serialize(views, None).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        let path = tmp("foreign.safetensors");
        write(&data, &path);
        let mut b = small_cnn(2);
        let (_, integrity) = load_verified(&mut b, &path).unwrap();
        assert_eq!(integrity, Integrity::Unchecked);
        assert_eq!(a.params(), b.params());
        let mut nan = data.clone();
        nan[0].1[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        write(&nan, &path);
        assert!(matches!(
            load(&mut b, &path),
            Err(TensorError::NonFinite { index: 0, .. })
        ));
    }

    #[test]
    fn mismatched_model_lists_every_difference_and_is_untouched() {
        let path = tmp("mismatch.safetensors");
        save(&small_cnn(1), &path, HashMap::new()).unwrap();
        let mut other = teacher_cnn(4, 8, 0);
        let before = other.params().into_iter().cloned().collect::<Vec<_>>();
        let err = load(&mut other, &path).unwrap_err();
        let TensorError::CheckpointMismatch { mismatches, .. } = &err else {
            panic!("{err}")
        };
        assert!(
            mismatches
                .iter()
                .any(|m| m.starts_with("missing conv2d_1.kernel")),
            "{mismatches:?}"
        );
        assert!(
            mismatches
                .iter()
                .any(|m| m.starts_with("conv2d.kernel: file has [3, 3, 1, 12]"))
        );
        assert_eq!(
            before,
            other.params().into_iter().cloned().collect::<Vec<_>>()
        );
    }

    #[test]
    fn corrupt_or_missing_files_are_errors() {
        let path = tmp("corrupt.safetensors");
        save(&small_cnn(1), &path, HashMap::new()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&path, &bytes).unwrap();
        let mut m = small_cnn(0);
        assert!(matches!(
            load(&mut m, &path),
            Err(TensorError::BadCheckpoint { .. })
        ));
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
        assert!(matches!(
            load(&mut m, &path),
            Err(TensorError::BadCheckpoint { .. })
        ));
        assert!(matches!(
            load(&mut m, &tmp("absent.safetensors")),
            Err(TensorError::Io { .. })
        ));
    }
}
