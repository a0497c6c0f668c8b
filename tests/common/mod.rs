//! Helpers shared by the workspace-level tests.
#![allow(dead_code)]

use pare::mnist::{Dataset, Mnist};
use pare::tensor::Sequential;
use pare::tensor::models::small_cnn;
use pare::tensor::optim::{Adam, AdamConfig};
use pare::tensor::train::{Fit, FitConfig, History};
use std::path::Path;

/// MNIST from `MNIST_DIR`, else the shared copy beside the repository; `None` (with a message)
/// when neither exists, so the test can skip instead of failing on a machine without data.
pub fn mnist() -> Option<Mnist> {
    if std::env::var_os("MNIST_DIR").is_some() {
        return Some(Mnist::from_env().expect("MNIST_DIR is set but does not hold MNIST"));
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    if shared.is_dir() {
        return Some(Mnist::load(&shared).expect("../shared/data/mnist holds MNIST"));
    }
    eprintln!("skipping: set MNIST_DIR to the MNIST directory to run this test");
    None
}

/// The first 6,000 training images and the small CNN (seed 0) trained on them for one epoch
/// with Keras' defaults (Adam 1e-3, batch 32): the starting point of the real-data tests.
pub fn small_cnn_one_epoch(data: &Mnist) -> (Dataset, Sequential, History) {
    small_cnn_one_epoch_with(data, 32, 1e-3)
}

/// [`small_cnn_one_epoch`] with another batch size and Adam learning rate.
pub fn small_cnn_one_epoch_with(
    data: &Mnist,
    batch_size: usize,
    learning_rate: f32,
) -> (Dataset, Sequential, History) {
    let train = data.train().take(6000);
    let (x, y) = (train.images().view().into_dyn(), train.labels_usize());
    let mut model = small_cnn(0);
    let mut adam = Adam::new(AdamConfig {
        learning_rate,
        ..Default::default()
    })
    .unwrap();
    let cfg = FitConfig {
        epochs: 1,
        batch_size,
        seed: 0,
        verbose: false,
        ..Default::default()
    };
    let history = Fit::new(cfg).run(&mut model, &mut adam, x, &y).unwrap();
    (train, model, history)
}
