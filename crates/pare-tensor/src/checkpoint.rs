//! Saving and loading a model's parameters as safetensors, by name.

use crate::error::{Result, TensorError};
use crate::io::{load_f32_tensors, save_f32_tensors};
use crate::nn::Sequential;
use std::collections::HashMap;
use std::path::Path;

/// Writes every parameter of `model` to `path` (safetensors, f32, named `layer.kernel`, ...),
/// with `metadata` in the header. The write is atomic.
pub fn save(model: &Sequential, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
    let params = model.params();
    let tensors: Vec<_> = params.iter().map(|p| (p.name.clone(), &p.value)).collect();
    save_f32_tensors(path, &tensors, Some(metadata))
}

/// Loads parameters saved by [`save`] (or by PyTorch / Keras / candle under the same names)
/// into `model`. Any missing, unexpected or mis-shaped tensor is an error listing them all, and
/// the model is left untouched. Returns the file's metadata.
pub fn load(model: &mut Sequential, path: &Path) -> Result<HashMap<String, String>> {
    let (tensors, meta) = load_f32_tensors(path)?;
    let mut by_name: HashMap<_, _> = tensors.into_iter().collect();
    let mut mismatches = Vec::new();
    for (name, shape) in model.param_shapes() {
        match by_name.get(&name) {
            None => mismatches.push(format!("missing {name} {shape:?}")),
            Some(t) if t.shape() != shape.as_slice() => mismatches.push(format!(
                "{name}: file has {:?}, model has {shape:?}",
                t.shape()
            )),
            Some(_) => {}
        }
    }
    let expected: std::collections::HashSet<String> =
        model.param_shapes().into_iter().map(|(n, _)| n).collect();
    let mut extra: Vec<_> = by_name
        .keys()
        .filter(|k| !expected.contains(*k))
        .cloned()
        .collect();
    extra.sort();
    mismatches.extend(extra.into_iter().map(|n| format!("unexpected {n}")));
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
    Ok(meta)
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
        assert_eq!(got.get("model"), Some(&"small".to_string()));
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
