//! Helpers shared by the workspace-level tests.
#![allow(dead_code)]

use pare::mnist::Mnist;
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
