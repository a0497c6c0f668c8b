//! Measures of agreement between pare and another runtime on the same inputs.

use std::collections::BTreeMap;

use ndarray::ArrayView2;
use pare_tensor::train::argmax;

/// How two runs' int8 codes differ, element by element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeDiff {
    /// Elements compared.
    pub total: usize,
    /// Elements equal.
    pub equal: usize,
    /// Largest |difference|.
    pub max_abs: i32,
    /// Count of each difference `theirs − ours`.
    pub histogram: BTreeMap<i32, usize>,
}

impl CodeDiff {
    /// Compares `theirs` with `ours`.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn new(ours: &[i8], theirs: &[i8]) -> CodeDiff {
        assert_eq!(ours.len(), theirs.len(), "CodeDiff::new: lengths differ");
        let mut histogram = BTreeMap::new();
        for (&a, &b) in ours.iter().zip(theirs) {
            *histogram.entry(b as i32 - a as i32).or_insert(0) += 1;
        }
        CodeDiff {
            total: ours.len(),
            equal: histogram.get(&0).copied().unwrap_or(0),
            max_abs: histogram.keys().map(|d| d.abs()).max().unwrap_or(0),
            histogram,
        }
    }

    /// Fraction of equal elements (1 for none compared).
    pub fn equal_fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.equal as f64 / self.total as f64
        }
    }

    /// The histogram as `-1: 12, 0: 99976, +1: 12`.
    pub fn histogram_line(&self) -> String {
        self.histogram
            .iter()
            .map(|(d, n)| format!("{d:+}: {n}").replace("+0", "0"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Largest |a − b| over two equally long slices.
///
/// # Panics
/// If the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "max_abs_diff: lengths differ");
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Per-row argmax of a score matrix (logits or int8 codes as f32).
pub fn argmaxes<T: Copy + Into<f32>>(scores: ArrayView2<'_, T>) -> Vec<usize> {
    scores
        .rows()
        .into_iter()
        .map(|r| argmax(&r.iter().map(|&v| v.into()).collect::<Vec<f32>>()))
        .collect()
}

/// Fraction of positions where two label lists agree (1 for empty lists).
///
/// # Panics
/// If the lengths differ.
pub fn agreement(a: &[usize], b: &[usize]) -> f64 {
    assert_eq!(a.len(), b.len(), "agreement: lengths differ");
    if a.is_empty() {
        return 1.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_differences_are_counted_by_value() {
        let d = CodeDiff::new(&[0, 5, -128, 127, 3], &[0, 6, -128, 126, 3]);
        assert_eq!((d.total, d.equal, d.max_abs), (5, 3, 1));
        assert_eq!(d.histogram_line(), "-1: 1, 0: 3, +1: 1");
        assert!((d.equal_fraction() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn argmax_and_agreement() {
        let a = ndarray::arr2(&[[0i8, 3, 1], [5, -1, 2]]);
        assert_eq!(argmaxes(a.view()), vec![1, 0]);
        assert_eq!(agreement(&[1, 0, 2, 2], &[1, 0, 1, 2]), 0.75);
        assert_eq!(max_abs_diff(&[1.0, -2.0], &[1.5, -2.25]), 0.5);
    }
}
