//! Keras weights into a pare [`Sequential`] of the same architecture.
//!
//! Keras and pare share their layouts — conv kernels `[kh, kw, in, out]`, dense kernels
//! `[in, out]`, and Flatten in NHWC order — so weights move over unchanged; only the names
//! differ: Keras' `conv2d/kernel` is pare's `conv2d.kernel`. The file is a safetensors file of
//! f32 tensors named the Keras way, as `tools/keras_to_safetensors.py` writes from a Keras
//! `.h5` (Keras 2 `model_weights/<layer>/<layer>/kernel:0` or Keras 3
//! `layers/<layer>/vars/0`).

use std::path::Path;

use ndarray::ArrayD;
use pare_tensor::Sequential;

use crate::error::{OnnxError, Result};

/// The Keras name of a pare parameter: `conv2d.kernel` → `conv2d/kernel`.
pub fn keras_name(param: &str) -> String {
    match param.rsplit_once('.') {
        Some((layer, var)) => format!("{layer}/{var}"),
        None => param.to_string(),
    }
}

/// Sets every parameter of `model` from Keras-named tensors. All are checked before any is
/// set, so on an error the model is unchanged.
///
/// # Errors
/// [`OnnxError::KerasShape`] naming the first layer (in model order) whose tensor has another
/// shape, [`OnnxError::KerasMissing`] for a parameter the tensors lack,
/// [`OnnxError::KerasUnused`] for a tensor no parameter takes (a different architecture).
pub fn assign_keras_weights(
    model: &mut Sequential,
    tensors: Vec<(String, ArrayD<f32>)>,
) -> Result<()> {
    let mut tensors: Vec<Option<(String, ArrayD<f32>)>> = tensors.into_iter().map(Some).collect();
    let mut plan = Vec::new();
    for p in model.params() {
        let keras = keras_name(&p.name);
        let layer = p.name.rsplit_once('.').map_or(&p.name[..], |(l, _)| l);
        let Some(i) = tensors
            .iter()
            .position(|t| t.as_ref().is_some_and(|(n, _)| *n == keras))
        else {
            let mut names: Vec<&str> = tensors.iter().flatten().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            return Err(OnnxError::KerasMissing {
                layer: layer.into(),
                tensor: keras,
                available: names.join(", "),
            });
        };
        let found = tensors[i]
            .as_ref()
            .map(|(_, a)| a.shape().to_vec())
            .unwrap_or_default();
        if found != p.value.shape() {
            return Err(OnnxError::KerasShape {
                layer: layer.into(),
                tensor: keras,
                expected: p.value.shape().to_vec(),
                found,
            });
        }
        plan.push((p.name.clone(), i));
    }
    let mut values = Vec::with_capacity(plan.len());
    for (param, i) in plan {
        let (_, value) = tensors[i]
            .take()
            .expect("assign_keras_weights: each tensor used once");
        values.push((param, value));
    }
    if let Some((tensor, _)) = tensors.into_iter().flatten().next() {
        return Err(OnnxError::KerasUnused { tensor });
    }
    for (param, value) in values {
        model
            .param_mut(&param)
            .expect("assign_keras_weights: the name came from the model")
            .value = value;
    }
    Ok(())
}

/// Reads a Keras-named safetensors file (see the [module docs](self)) into `model`.
///
/// # Errors
/// As [`assign_keras_weights`], or a file that does not read as f32 safetensors.
pub fn load_keras_weights(model: &mut Sequential, path: &Path) -> Result<()> {
    let (tensors, _) = pare_tensor::io::load_f32_tensors(path)?;
    assign_keras_weights(model, tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pare_tensor::models::small_cnn;

    fn keras_tensors(model: &Sequential) -> Vec<(String, ArrayD<f32>)> {
        model
            .params()
            .iter()
            .map(|p| (keras_name(&p.name), p.value.clone()))
            .collect()
    }

    #[test]
    fn a_file_of_keras_names_sets_every_parameter() {
        let source = small_cnn(7);
        let dir = std::env::temp_dir().join(format!("pare-onnx-keras-{}", std::process::id()));
        let path = dir.join("w.safetensors");
        let tensors = keras_tensors(&source);
        let refs: Vec<(String, &ArrayD<f32>)> =
            tensors.iter().map(|(n, a)| (n.clone(), a)).collect();
        pare_tensor::io::save_f32_tensors(&path, &refs, None).unwrap();
        let mut model = small_cnn(0);
        assert_ne!(model.params(), source.params());
        load_keras_weights(&mut model, &path).unwrap();
        assert_eq!(model.params(), source.params());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_first_layer_whose_shape_disagrees_is_named_and_nothing_changes() {
        let mut tensors = keras_tensors(&small_cnn(1));
        // A dense kernel for a 26×26 input (no pooling) and a wrong conv bias: the conv
        // comes first in the model.
        tensors[2].1 = ArrayD::zeros(ndarray::IxDyn(&[26 * 26 * 12, 10]));
        tensors[1].1 = ArrayD::zeros(ndarray::IxDyn(&[8]));
        let mut model = small_cnn(0);
        let before = model.params().into_iter().cloned().collect::<Vec<_>>();
        let err = assign_keras_weights(&mut model, tensors).unwrap_err();
        match &err {
            OnnxError::KerasShape {
                layer,
                tensor,
                expected,
                found,
            } => {
                assert_eq!((layer.as_str(), tensor.as_str()), ("conv2d", "conv2d/bias"));
                assert_eq!(
                    (expected.as_slice(), found.as_slice()),
                    (&[12][..], &[8][..])
                );
            }
            other => panic!("expected KerasShape, got {other:?}"),
        }
        assert!(err.to_string().contains("conv2d"), "{err}");
        assert_eq!(
            model.params().into_iter().cloned().collect::<Vec<_>>(),
            before
        );
    }

    #[test]
    fn missing_and_unused_tensors_are_errors() {
        let mut tensors = keras_tensors(&small_cnn(1));
        let (name, kernel) = tensors.remove(2);
        assert_eq!(name, "dense/kernel");
        let err = assign_keras_weights(&mut small_cnn(0), tensors.clone()).unwrap_err();
        assert!(
            matches!(&err, OnnxError::KerasMissing { layer, tensor, .. }
                if layer == "dense" && tensor == "dense/kernel"),
            "{err}"
        );
        tensors.push((name, kernel));
        tensors.push((
            "dense_1/kernel".into(),
            ArrayD::zeros(ndarray::IxDyn(&[10, 10])),
        ));
        let err = assign_keras_weights(&mut small_cnn(0), tensors).unwrap_err();
        assert!(
            matches!(&err, OnnxError::KerasUnused { tensor } if tensor == "dense_1/kernel"),
            "{err}"
        );
    }
}
