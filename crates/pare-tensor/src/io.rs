//! Atomic file writes and safetensors containers of named f32 tensors.

use crate::error::{Result, TensorError};
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

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

/// Serialises named f32 tensors (and string metadata) as a safetensors file, atomically.
pub fn save_f32_tensors(
    path: &Path,
    tensors: &[(String, &ArrayD<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, a)| {
            let data = a.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.clone(), data, a.shape().to_vec())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, d, s)| {
            Ok((
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).map_err(|e| bad(path, e))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let out = safetensors::tensor::serialize(views, metadata).map_err(|e| bad(path, e))?;
    write_atomic(path, &out)
}

fn bad(path: &Path, e: impl std::fmt::Display) -> TensorError {
    TensorError::BadCheckpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Named f32 tensors and the metadata of a safetensors file.
pub type TensorFile = (Vec<(String, ArrayD<f32>)>, HashMap<String, String>);

/// Reads a safetensors file of f32 tensors. Every length and offset is checked by the
/// safetensors parser before anything is allocated; other dtypes are an error.
pub fn load_f32_tensors(path: &Path) -> Result<TensorFile> {
    let buf = std::fs::read(path).map_err(|source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&buf).map_err(|e| bad(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&buf).map_err(|e| bad(path, e))?;
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
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
