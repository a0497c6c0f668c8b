//! [`Dataset`] as pare-tensor's [`Labelled`] data (the `tensor` feature), so `fit` and
//! `evaluate` take a data set whole: `Fit::new(cfg).run_dataset(&mut model, &mut opt, &train)`.

use crate::Dataset;
use pare_tensor::data::Labelled;
use pare_tensor::ndarray::ArrayViewD;
use std::borrow::Cow;

impl Labelled for Dataset {
    fn inputs(&self) -> ArrayViewD<'_, f32> {
        self.images().view().into_dyn()
    }
    fn class_labels(&self) -> Cow<'_, [usize]> {
        Cow::Owned(self.labels_usize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pare_tensor::models::small_cnn;
    use pare_tensor::optim::{Adam, AdamConfig};
    use pare_tensor::train::{Fit, FitConfig, evaluate, evaluate_dataset};

    #[test]
    fn fit_and_evaluate_take_a_dataset_whole() {
        let (x, y) = pare_tensor::gradcheck::toy_halves(32, 0, 0.8, 0.2);
        let images = x.into_dimensionality().unwrap();
        let labels: Vec<u8> = y.iter().map(|&l| l as u8).collect();
        let data = Dataset::new(images, labels).unwrap();
        let model = small_cnn(0);
        // The same figures as the arrays and u8 labels handed over by hand.
        assert_eq!(
            evaluate_dataset(&model, &data, 8).unwrap(),
            evaluate(&model, data.images(), data.labels(), 8).unwrap()
        );
        let run = |by_dataset: bool| {
            let mut m = small_cnn(1);
            let mut adam = Adam::new(AdamConfig::default()).unwrap();
            let cfg = FitConfig {
                epochs: 2,
                batch_size: 8,
                verbose: false,
                ..Default::default()
            };
            let fit = Fit::new(cfg).validation_dataset(&data);
            let h = if by_dataset {
                fit.run_dataset(&mut m, &mut adam, &data).unwrap()
            } else {
                fit.run(&mut m, &mut adam, data.images(), data.labels())
                    .unwrap()
            };
            (m, h)
        };
        let ((a, ha), (b, hb)) = (run(true), run(false));
        assert_eq!(a.params(), b.params());
        let figures = |h: &pare_tensor::train::History| -> Vec<_> {
            h.epochs.iter().map(|e| (e.loss, e.val_loss)).collect()
        };
        assert_eq!(figures(&ha), figures(&hb));
        assert!(ha.epochs[1].val_accuracy.is_some());
    }
}
