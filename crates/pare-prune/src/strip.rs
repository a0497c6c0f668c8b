//! `strip`: the plain model left after pruning (TFMOT's `strip_pruning`).
//!
//! pare keeps no wrapper layers or mask variables inside the model (the masks live in the
//! [`PruneCallback`](crate::PruneCallback)), so stripping is a pure function: a copy of the
//! model with the masks multiplied in, every pruned weight a real `+0.0`, ready for
//! [`crate::file::save_sparse`], int8 conversion or [`crate::SparseSequential`].

use ndarray::ArrayD;
use pare_tensor::Sequential;
use pare_tensor::nn::Layer;

use crate::error::{PruneError, Result};
use crate::mask::apply_mask;

/// Fails on a custom layer, which `Sequential` cannot copy.
pub(crate) fn check_copyable(model: &Sequential, op: &str) -> Result<()> {
    match model.layers.iter().find(|l| matches!(l, Layer::Custom(_))) {
        Some(l) => Err(PruneError::Unsupported {
            layer: l.module().name().to_owned(),
            reason: format!("{op} cannot copy a custom layer"),
        }),
        None => Ok(()),
    }
}

/// A copy of `model` with every `(parameter name, mask)` multiplied in: where a mask is 0 the
/// weight becomes `+0.0`. `model` is not changed.
///
/// # Errors
/// [`PruneError::Unsupported`] for a model with a custom layer (it cannot be copied);
/// [`PruneError::UnknownParam`] for a mask naming no parameter;
/// [`PruneError::ShapeMismatch`] (in [`PruneError::InTensor`]) for a mask of the wrong shape.
pub fn strip<S: AsRef<str>>(model: &Sequential, masks: &[(S, ArrayD<f32>)]) -> Result<Sequential> {
    check_copyable(model, "strip")?;
    let mut out = model.clone();
    for (name, mask) in masks {
        let name = name.as_ref();
        let p = out
            .param_mut(name)
            .ok_or_else(|| PruneError::UnknownParam {
                name: name.to_owned(),
            })?;
        apply_mask(p.value.view_mut(), mask.view()).map_err(|e| e.in_tensor(name))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::magnitude_mask;
    use ndarray::IxDyn;
    use pare_tensor::models::small_cnn;

    #[test]
    fn strip_multiplies_masks_into_a_copy() {
        let model = small_cnn(3);
        let w = model.param("dense.kernel").unwrap().value.clone();
        let mask = magnitude_mask(w.view(), 0.8).unwrap();
        let stripped = strip(&model, &[("dense.kernel", mask.clone())]).unwrap();
        // The original is untouched, the copy has exactly the mask's zeros, all +0.0.
        assert_eq!(model.param("dense.kernel").unwrap().value, w);
        let got = &stripped.param("dense.kernel").unwrap().value;
        for ((g, o), m) in got.iter().zip(&w).zip(&mask) {
            if *m == 0.0 {
                assert_eq!(g.to_bits(), 0);
            } else {
                assert_eq!(g, o);
            }
        }
        assert_eq!(
            stripped.param("conv2d.kernel"),
            model.param("conv2d.kernel")
        );
        // No masks: an identical copy.
        let none: [(&str, ArrayD<f32>); 0] = [];
        assert_eq!(strip(&model, &none).unwrap().params(), model.params());
    }

    #[test]
    fn strip_errors() {
        let model = small_cnn(0);
        let m = ArrayD::<f32>::ones(IxDyn(&[3]));
        assert!(matches!(
            strip(&model, &[("nope.kernel", m.clone())]),
            Err(PruneError::UnknownParam { .. })
        ));
        match strip(&model, &[("dense.bias", m)]) {
            Err(PruneError::InTensor { name, source }) => {
                assert_eq!(name, "dense.bias");
                assert!(matches!(*source, PruneError::ShapeMismatch { .. }));
            }
            other => panic!("{other:?}"),
        }
    }
}
