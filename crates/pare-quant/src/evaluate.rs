//! `evaluate` on a [`QuantizedModel`], as on the float model, and the SQNR report as a table.

use std::fmt;

use ndarray::{Array2, Axis};
use pare_tensor::Sequential;
use pare_tensor::data::{Inputs, Label, Labelled};
use pare_tensor::train::{Evaluation, evaluate_logits};

use crate::error::Result;
use crate::model::QuantizedModel;
use crate::report::LayerSqnr;

impl QuantizedModel {
    /// Mean cross-entropy and accuracy of the quantized model over labelled data, `batch_size`
    /// examples at a time, scored as [`pare_tensor::train::evaluate`] scores the float model
    /// (the int8 logits dequantized).
    ///
    /// ```
    /// # use pare_quant::{convert, ConvertConfig};
    /// # use pare_tensor::{models::small_cnn, ndarray::Array4};
    /// let model = small_cnn(0);
    /// let x = Array4::<f32>::from_shape_fn((8, 28, 28, 1), |(n, r, c, _)| ((n + r + c) % 5) as f32 / 4.0);
    /// let q = convert(&model, x.view().into_dyn(), &ConvertConfig::default())?;
    /// let y: Vec<u8> = (0..8).collect();
    /// let int8 = q.evaluate(&x, &y, 4)?;
    /// let float = pare_tensor::train::evaluate(&model, &x, &y, 4)?;
    /// assert!((int8.loss - float.loss).abs() < 0.1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// A zero batch size; as [`QuantizedModel::predict`] for bad input; as
    /// [`evaluate_logits`] for bad labels.
    pub fn evaluate<'x, L: Label>(
        &self,
        x: impl Inputs<'x>,
        y: &[L],
        batch_size: usize,
    ) -> Result<Evaluation> {
        let x = x.into_view();
        if batch_size == 0 {
            return Err(pare_tensor::TensorError::BadHyperParameter {
                name: "batch_size",
                value: "0".into(),
                reason: "must be >= 1",
            }
            .into());
        }
        self.check_batch(x.shape())?;
        let classes: usize = self.output_shape().iter().product();
        let n = x.shape().first().copied().unwrap_or(0);
        let mut logits = Array2::zeros((n, classes));
        for (i, batch) in x.axis_chunks_iter(Axis(0), batch_size).enumerate() {
            let out = self.predict(batch)?;
            let start = i * batch_size;
            logits
                .slice_mut(ndarray::s![start..start + out.nrows(), ..])
                .assign(&out);
        }
        Ok(evaluate_logits(logits.view(), y)?)
    }

    /// [`QuantizedModel::evaluate`] on a whole labelled data set (a `pare_mnist::Dataset`).
    ///
    /// # Errors
    /// As [`QuantizedModel::evaluate`].
    pub fn evaluate_dataset(&self, data: &impl Labelled, batch_size: usize) -> Result<Evaluation> {
        self.evaluate(data.inputs(), &data.class_labels(), batch_size)
    }

    /// [`QuantizedModel::layer_sqnr`] as a [`SqnrReport`], which prints as a table.
    ///
    /// # Errors
    /// As [`QuantizedModel::layer_sqnr`].
    pub fn sqnr_report<'x>(
        &self,
        float_model: &Sequential,
        x: impl Inputs<'x>,
    ) -> Result<SqnrReport> {
        Ok(SqnrReport(self.layer_sqnr(float_model, x.into_view())?))
    }
}

/// The SQNR of every layer ([`QuantizedModel::sqnr_report`]); `Display` prints one line per
/// layer, and it derefs to the rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SqnrReport(pub Vec<LayerSqnr>);

impl std::ops::Deref for SqnrReport {
    type Target = [LayerSqnr];
    fn deref(&self) -> &[LayerSqnr] {
        &self.0
    }
}

impl fmt::Display for SqnrReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .0
            .iter()
            .map(|r| r.layer.len())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(f, "{:<w$}  {:<10}  {:>9}", "layer", "op", "SQNR (dB)")?;
        writeln!(f, "{}", "-".repeat(w + 23))?;
        for r in &self.0 {
            let db = if r.sqnr_db.is_finite() {
                format!("{:.1}", r.sqnr_db)
            } else if r.sqnr_db > 0.0 {
                "exact".to_string()
            } else {
                "-inf".to_string()
            };
            writeln!(f, "{:<w$}  {:<10}  {db:>9}", r.layer, r.op)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConvertConfig, convert};
    use pare_tensor::models::small_cnn;

    #[test]
    fn evaluate_scores_the_engine_s_logits_and_the_report_prints() {
        let (x, y) = pare_tensor::gradcheck::toy_halves(24, 0, 0.8, 0.2);
        let model = small_cnn(3);
        let q = convert(&model, x.view(), &ConvertConfig::default()).unwrap();
        let e = q.evaluate(x.view(), &y, 5).unwrap();
        // By hand: the engine's logits scored by the shared scorer.
        let want = evaluate_logits(q.predict(x.view()).unwrap().view(), &y).unwrap();
        assert_eq!(e, want);
        let float = pare_tensor::train::evaluate(&model, x.view(), &y, 8).unwrap();
        assert!((e.loss - float.loss).abs() < 0.05, "{e:?} vs {float:?}");
        assert!(q.evaluate(x.view(), &y, 0).is_err());
        assert!(q.evaluate(x.view(), &y[..3], 4).is_err());
        // The int8 side says shapes as the float side does.
        let flat = ndarray::Array2::<f32>::zeros((10, 784));
        assert_eq!(
            q.evaluate(&flat, &[0u8; 10], 4).unwrap_err().to_string(),
            "model input: expected [batch, 28, 28, 1], got [10, 784]"
        );

        let report = q.sqnr_report(&model, x.view()).unwrap();
        assert_eq!(report.len(), model.layers.len() + 1);
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("layer") && lines[0].ends_with("SQNR (dB)"),
            "{text}"
        );
        assert!(lines[2].starts_with("input"), "{text}");
        let dense = lines.iter().find(|l| l.starts_with("dense")).unwrap();
        let db: f64 = dense.split_whitespace().last().unwrap().parse().unwrap();
        assert!(
            (db - report.last().unwrap().sqnr_db).abs() < 0.05,
            "{dense}"
        );
    }
}
