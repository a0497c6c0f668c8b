//! Helpers shared by the workspace-level tests.
#![allow(dead_code)]

use pare::mnist::{Dataset, Mnist};
use pare::tensor::Sequential;
use pare::tensor::models::small_cnn;
use pare::tensor::optim::{Adam, AdamConfig};
use pare::tensor::train::{Fit, FitConfig, History};
use std::path::{Path, PathBuf};

/// MNIST from `MNIST_DIR`, else the shared copy beside the repository, else pare's download
/// cache: the places the build script looks before it sets `pare_mnist`. Tests that call this
/// carry `#[cfg_attr(not(pare_mnist), ignore = ...)]`, so they run only where the data is (or
/// under `PARE_REQUIRE_DATA=1`, where a missing data set must fail, naming `MNIST_DIR`).
///
/// # Panics
/// When no MNIST is found or it does not load.
pub fn mnist() -> Mnist {
    if let Some(dir) = std::env::var_os("MNIST_DIR").filter(|d| !d.is_empty()) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        return Mnist::load(&dir)
            .unwrap_or_else(|e| panic!("MNIST_DIR={} does not hold MNIST: {e}", dir.display()));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("pare/mnist"));
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    let Some(dir) = std::iter::once(shared).chain(cache).find(|d| d.is_dir()) else {
        panic!("no MNIST: set MNIST_DIR to the directory of the four MNIST IDX files");
    };
    Mnist::load(&dir).unwrap_or_else(|e| panic!("loading MNIST from {}: {e}", dir.display()))
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
    let (train, model, history) = one_epoch_with(data, small_cnn(0), batch_size, learning_rate);
    (train, model, history)
}

/// `model` trained as [`small_cnn_one_epoch`] trains the small CNN.
pub fn one_epoch(data: &Mnist, model: Sequential) -> Sequential {
    one_epoch_with(data, model, 32, 1e-3).1
}

fn one_epoch_with(
    data: &Mnist,
    mut model: Sequential,
    batch_size: usize,
    learning_rate: f32,
) -> (Dataset, Sequential, History) {
    let train = data.train().take(6000);
    let (x, y) = (train.images().view().into_dyn(), train.labels_usize());
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
