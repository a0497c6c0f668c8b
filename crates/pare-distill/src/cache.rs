//! Teacher logits computed once per training set and reused every epoch.
//!
//! Without data augmentation the teacher's output for an example never changes, so running a
//! large teacher on every batch of every epoch repeats the same work: one batched pass over
//! the training set replaces `epochs` passes (and the sweep of many student runs shares it).

use crate::error::{DistillError, Result};
use ndarray::{Array2, ArrayView2, ArrayViewD, Axis};
use pare_tensor::Sequential;
use pare_tensor::train::{Batch, predict};

/// Teacher logits `[n, classes]` for every example of a training set, with a fingerprint per
/// example so a batch from different data is caught rather than silently mismatched.
#[derive(Debug, Clone)]
pub struct TeacherCache {
    logits: Array2<f32>,
    fingerprints: Vec<u64>,
}

/// Order-dependent checksum of one example: identical data gives identical bits, another
/// image almost surely does not.
fn fingerprint<'a>(values: impl Iterator<Item = &'a f32>) -> u64 {
    let (mut sum, mut weighted) = (0f64, 0f64);
    for (i, &v) in values.enumerate() {
        sum += v as f64;
        weighted += v as f64 * ((i % 251) as f64 + 1.0);
    }
    sum.to_bits() ^ weighted.to_bits().rotate_left(32)
}

fn fingerprints(x: &ArrayViewD<'_, f32>) -> Vec<u64> {
    x.axis_iter(Axis(0))
        .map(|e| fingerprint(e.iter()))
        .collect()
}

impl TeacherCache {
    /// Runs `teacher` over `x` (the training inputs exactly as they will be given to
    /// [`pare_tensor::train::Fit::run`]) in batches of `batch_size` on an inference graph.
    ///
    /// # Errors
    /// Bad input shapes or data, a zero batch size, or non-finite teacher logits.
    pub fn compute(
        teacher: &Sequential,
        x: ArrayViewD<'_, f32>,
        batch_size: usize,
    ) -> Result<TeacherCache> {
        let logits = predict(teacher, x.view(), batch_size)?;
        TeacherCache::from_logits(logits, x)
    }

    /// Wraps logits computed elsewhere (e.g. loaded from disk) for the examples of `x`.
    ///
    /// # Errors
    /// [`DistillError::CacheMismatch`] if the row counts differ, [`DistillError::NonFinite`]
    /// for a NaN or infinite logit.
    pub fn from_logits(logits: Array2<f32>, x: ArrayViewD<'_, f32>) -> Result<TeacherCache> {
        let n = x.shape().first().copied().unwrap_or(0);
        if logits.nrows() != n {
            return Err(DistillError::CacheMismatch {
                reason: format!("{} rows of logits for {n} examples", logits.nrows()),
            });
        }
        if let Some((index, _)) = logits
            .rows()
            .into_iter()
            .enumerate()
            .find(|(_, r)| r.iter().any(|v| !v.is_finite()))
        {
            return Err(DistillError::NonFinite { index });
        }
        Ok(TeacherCache {
            logits,
            fingerprints: fingerprints(&x),
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.logits.nrows()
    }

    /// True when the cache holds no example.
    pub fn is_empty(&self) -> bool {
        self.logits.nrows() == 0
    }

    /// Number of classes (columns of the logits).
    pub fn classes(&self) -> usize {
        self.logits.ncols()
    }

    /// All logits, `[n, classes]`.
    pub fn logits(&self) -> ArrayView2<'_, f32> {
        self.logits.view()
    }

    /// The logits of a training batch, looked up by `batch.indices`.
    ///
    /// # Errors
    /// [`DistillError::CacheMismatch`] if an index is out of range or the batch's example
    /// differs from the one the cache was computed on.
    pub fn gather(&self, batch: &Batch<'_>) -> Result<Array2<f32>> {
        let n = batch.x.shape().first().copied().unwrap_or(0);
        if batch.indices.len() != n {
            return Err(DistillError::CacheMismatch {
                reason: format!("batch of {n} examples with {} indices", batch.indices.len()),
            });
        }
        let mut out = Array2::zeros((n, self.classes()));
        for (row, (&i, example)) in batch
            .indices
            .iter()
            .zip(batch.x.axis_iter(Axis(0)))
            .enumerate()
        {
            let Some(&want) = self.fingerprints.get(i) else {
                return Err(DistillError::CacheMismatch {
                    reason: format!("example {i} requested, cache holds {}", self.len()),
                });
            };
            if fingerprint(example.iter()) != want {
                return Err(DistillError::CacheMismatch {
                    reason: format!(
                        "example {i} differs from the one the cache was computed on \
                         (compute the cache on the same x, in the same order, as given to fit)"
                    ),
                });
            }
            out.row_mut(row).assign(&self.logits.row(i));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{ArrayD, IxDyn};
    use pare_tensor::Graph;
    use pare_tensor::models::teacher_cnn;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn images(n: usize, seed: u64) -> ArrayD<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        ArrayD::from_shape_simple_fn(IxDyn(&[n, 28, 28, 1]), || rng.random_range(0.0..1.0))
    }

    #[test]
    fn cached_logits_equal_the_teacher_run_on_each_batch() {
        let teacher = teacher_cnn(4, 8, 3);
        let x = images(37, 1);
        let cache = TeacherCache::compute(&teacher, x.view(), 16).unwrap();
        assert_eq!((cache.len(), cache.classes()), (37, 10));
        let idx = [36usize, 0, 17, 5, 5, 20];
        let xb = pare_tensor::train::gather(&x.view(), &idx);
        let labels = [0usize; 6];
        let batch = Batch {
            x: &xb,
            labels: &labels,
            indices: &idx,
            epoch: 0,
            step: 0,
        };
        let cached = cache.gather(&batch).unwrap();
        let mut g = Graph::inference();
        let xv = g.constant(xb.clone());
        let live = teacher.forward(&mut g, xv);
        let live = g.value(live);
        assert_eq!(live.shape(), cached.shape());
        for (a, b) in live.iter().zip(cached.iter()) {
            assert_abs_diff_eq!(*a, *b, epsilon = 1e-5);
        }
    }

    #[test]
    fn batches_from_other_data_or_out_of_range_are_errors() {
        let teacher = teacher_cnn(2, 4, 0);
        let x = images(8, 2);
        let cache = TeacherCache::compute(&teacher, x.view(), 3).unwrap();
        let labels = [0usize; 2];
        let idx = [1usize, 2];
        let xb = pare_tensor::train::gather(&x.view(), &[2, 1]); // swapped order
        let batch = Batch {
            x: &xb,
            labels: &labels,
            indices: &idx,
            epoch: 0,
            step: 0,
        };
        assert!(matches!(
            cache.gather(&batch),
            Err(DistillError::CacheMismatch { .. })
        ));
        let idx = [1usize, 8];
        let xb = pare_tensor::train::gather(&x.view(), &[1, 1]);
        let batch = Batch {
            x: &xb,
            labels: &labels,
            indices: &idx,
            epoch: 0,
            step: 0,
        };
        let err = cache.gather(&batch).unwrap_err();
        assert!(err.to_string().contains("example 8 requested"), "{err}");

        let short = Array2::zeros((7, 10));
        assert!(matches!(
            TeacherCache::from_logits(short, x.view()),
            Err(DistillError::CacheMismatch { .. })
        ));
        let mut nan = Array2::zeros((8, 10));
        nan[[6, 3]] = f32::NAN;
        assert!(matches!(
            TeacherCache::from_logits(nan, x.view()),
            Err(DistillError::NonFinite { index: 6 })
        ));
        let wrong = ArrayD::<f32>::zeros(IxDyn(&[2, 28, 28, 3]));
        assert!(matches!(
            TeacherCache::compute(&teacher, wrong.view(), 4),
            Err(DistillError::Tensor(
                pare_tensor::TensorError::InputShape { .. }
            ))
        ));
    }
}
