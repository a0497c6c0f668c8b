//! What `fit`, `evaluate` and `predict` accept: inputs as any `ndarray` array or view of `f32`
//! of any dimension ([`Inputs`]), labels of any integer type ([`Label`]), or a whole labelled
//! data set ([`Labelled`], implemented by `pare_mnist::Dataset`).
//!
//! ```
//! use pare_tensor::{models::small_cnn, train::evaluate, ndarray::Array4};
//!
//! let model = small_cnn(0);
//! let x = Array4::<f32>::zeros((3, 28, 28, 1));
//! let y: Vec<u8> = vec![0, 1, 2];
//! // An owned 4-D array by reference and u8 labels: no `.view().into_dyn()`, no conversion.
//! let e = evaluate(&model, &x, &y, 32)?;
//! assert!(e.loss.is_finite());
//! # Ok::<(), pare_tensor::TensorError>(())
//! ```

use crate::error::{Result, TensorError};
use ndarray::{ArrayBase, ArrayView, ArrayViewD, Data, Dimension};
use std::borrow::Cow;

/// Inputs `[batch, ...]` as `fit` takes them: any `f32` array or view, of any dimension.
pub trait Inputs<'a> {
    /// The inputs as a dynamic-dimensional view.
    fn into_view(self) -> ArrayViewD<'a, f32>;
}

impl<'a, D: Dimension> Inputs<'a> for ArrayView<'a, f32, D> {
    fn into_view(self) -> ArrayViewD<'a, f32> {
        self.into_dyn()
    }
}

impl<'a, S: Data<Elem = f32>, D: Dimension> Inputs<'a> for &'a ArrayBase<S, D> {
    fn into_view(self) -> ArrayViewD<'a, f32> {
        self.view().into_dyn()
    }
}

/// A class label of any integer type (`u8` as MNIST stores them, `usize`, `i64`, ...).
pub trait Label: Copy + std::fmt::Display {
    /// The class index, `None` for a negative label.
    fn class_index(self) -> Option<usize>;
}

macro_rules! label {
    ($($t:ty),*) => {$(
        impl Label for $t {
            fn class_index(self) -> Option<usize> {
                usize::try_from(self).ok()
            }
        }
    )*};
}
label!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// Labels as class indices.
///
/// # Errors
/// [`TensorError::BadLabel`] naming the first negative label.
pub fn class_indices<L: Label>(y: &[L]) -> Result<Vec<usize>> {
    y.iter()
        .enumerate()
        .map(|(index, &l)| {
            l.class_index().ok_or_else(|| TensorError::BadLabel {
                index,
                label: l.to_string(),
            })
        })
        .collect()
}

/// A labelled data set `fit` and `evaluate` take whole: `Fit::run_dataset`,
/// [`crate::train::evaluate_dataset`]. `pare_mnist::Dataset` implements it.
pub trait Labelled {
    /// Inputs `[n, ...]`.
    fn inputs(&self) -> ArrayViewD<'_, f32>;
    /// Class labels, one per input.
    fn class_labels(&self) -> Cow<'_, [usize]>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::small_cnn;
    use crate::train::evaluate;
    use ndarray::Array4;

    #[test]
    fn any_integer_labels_and_any_array_form_give_the_same_evaluation() {
        let model = small_cnn(0);
        let x =
            Array4::<f32>::from_shape_fn((4, 28, 28, 1), |(n, r, _, _)| (n * 7 + r) as f32 / 300.0);
        let y = [0usize, 3, 9, 1];
        let want = evaluate(&model, x.view().into_dyn(), &y, 2).unwrap();
        let as_u8: Vec<u8> = y.iter().map(|&l| l as u8).collect();
        let as_i64: Vec<i64> = y.iter().map(|&l| l as i64).collect();
        assert_eq!(evaluate(&model, &x, &as_u8, 2).unwrap(), want);
        assert_eq!(evaluate(&model, x.view(), &as_i64, 3).unwrap(), want);
        let negative = [0i32, -1, 2, 3];
        let err = evaluate(&model, &x, &negative, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "label -1 at index 1 is not a class index (must be >= 0)"
        );
        assert_eq!(class_indices(&[5u16, 0]).unwrap(), [5, 0]);
    }
}

#[cfg(test)]
mod message_tests {
    use crate::models::small_cnn;
    use crate::nn::Conv2d;
    use crate::{Module, Sequential};

    #[test]
    fn shape_errors_use_one_form() {
        let model = small_cnn(0);
        let flat = ndarray::Array2::<f32>::zeros((10, 784));
        let err = crate::train::predict(&model, &flat, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "model input: expected [batch, 28, 28, 1], got [batch, 784]"
        );
        // A conv built for 1 input channel given 4: the channel is named, the rest is any.
        let conv = Conv2d::seeded("conv2d", 1, 2, [3, 3], 0);
        let err = conv.output_shape(&[8, 8, 4]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conv2d: expected [batch, _, _, 1], got [batch, 8, 8, 4]"
        );
        let _ = Sequential::new(&[1]);
    }
}
