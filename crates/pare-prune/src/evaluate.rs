//! `evaluate` on a [`SparseSequential`], as on the dense model, and the sparsity report as a
//! table.

use std::fmt;

use pare_tensor::Sequential;
use pare_tensor::data::{Inputs, Label, Labelled};
use pare_tensor::train::{Evaluation, evaluate_logits};

use crate::callback::{LayerSparsity, sparsity_report};
use crate::error::Result;
use crate::inference::SparseSequential;

impl SparseSequential {
    /// Mean cross-entropy and accuracy of the sparse model over labelled data, scored as
    /// [`pare_tensor::train::evaluate`] scores the dense one.
    ///
    /// # Errors
    /// As [`SparseSequential::predict`] for bad input or batch size; as [`evaluate_logits`]
    /// for bad labels.
    pub fn evaluate<'x, L: Label>(
        &self,
        x: impl Inputs<'x>,
        y: &[L],
        batch_size: usize,
    ) -> Result<Evaluation> {
        let logits = self.predict(x.into_view(), batch_size)?;
        Ok(evaluate_logits(logits.view(), y)?)
    }

    /// [`SparseSequential::evaluate`] on a whole labelled data set (a `pare_mnist::Dataset`).
    ///
    /// # Errors
    /// As [`SparseSequential::evaluate`].
    pub fn evaluate_dataset(&self, data: &impl Labelled, batch_size: usize) -> Result<Evaluation> {
        self.evaluate(data.inputs(), &data.class_labels(), batch_size)
    }
}

/// The sparsity of every parameter of a model ([`SparsityReport::of`]); `Display` prints a
/// table with a total line, and it derefs to the rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SparsityReport(pub Vec<LayerSparsity>);

impl SparsityReport {
    /// [`sparsity_report`] of `model`.
    pub fn of(model: &Sequential) -> SparsityReport {
        SparsityReport(sparsity_report(model))
    }

    /// Zeros and elements over every parameter.
    pub fn totals(&self) -> (usize, usize) {
        self.0
            .iter()
            .fold((0, 0), |(z, t), l| (z + l.zeros, t + l.total))
    }
}

impl std::ops::Deref for SparsityReport {
    type Target = [LayerSparsity];
    fn deref(&self) -> &[LayerSparsity] {
        &self.0
    }
}

impl fmt::Display for SparsityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .0
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0)
            .max(9);
        writeln!(
            f,
            "{:<w$}  {:>10}  {:>10}  {:>8}",
            "parameter", "weights", "zeros", "sparsity"
        )?;
        writeln!(f, "{}", "-".repeat(w + 34))?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, zeros: usize, total: usize| {
            let s = if total == 0 {
                0.0
            } else {
                100.0 * zeros as f64 / total as f64
            };
            writeln!(f, "{name:<w$}  {total:>10}  {zeros:>10}  {s:>7.1}%")
        };
        for r in &self.0 {
            row(f, &r.name, r.zeros, r.total)?;
        }
        writeln!(f, "{}", "-".repeat(w + 34))?;
        let (zeros, total) = self.totals();
        row(f, "total", zeros, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{apply_mask, magnitude_mask};
    use pare_tensor::models::small_cnn;

    #[test]
    fn sparse_evaluate_matches_the_dense_model_and_the_report_prints() {
        let mut model = small_cnn(0);
        let w = model.param_mut("dense.kernel").unwrap();
        let mask = magnitude_mask(w.value.view(), 0.9).unwrap();
        apply_mask(w.value.view_mut(), mask.view()).unwrap();
        let (x, y) = pare_tensor::gradcheck::toy_halves(12, 1, 0.8, 0.2);
        let sparse = SparseSequential::new(&model, 0.5).unwrap();
        let a = sparse.evaluate(x.view(), &y, 5).unwrap();
        let b = pare_tensor::train::evaluate(&model, x.view(), &y, 5).unwrap();
        assert!(
            (a.loss - b.loss).abs() < 1e-4 && a.accuracy == b.accuracy,
            "{a:?} {b:?}"
        );
        assert!(sparse.evaluate(x.view(), &y, 0).is_err());

        let report = SparsityReport::of(&model);
        // dense.kernel: 2,028 · 10 = 20,280 weights, round(20,280 · 0.1) = 2,028 kept.
        assert_eq!(report.totals(), (20_280 - 2_028 + 10 + 12, 20_410));
        let text = report.to_string();
        let dense = text
            .lines()
            .find(|l| l.starts_with("dense.kernel"))
            .unwrap();
        assert_eq!(
            dense.split_whitespace().collect::<Vec<_>>(),
            ["dense.kernel", "20280", "18252", "90.0%"]
        );
        assert!(text.lines().last().unwrap().starts_with("total"), "{text}");
    }
}
