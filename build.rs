//! Tells the workspace-level tests what this machine has, so that a test whose data or runtime
//! is absent shows as *ignored* in cargo's summary instead of passing without having run:
//!
//! - `pare_mnist`: the MNIST files are where the tests look (`MNIST_DIR` when set, else
//!   `../shared/data/mnist` beside the checkout, else pare's download cache);
//! - `pare_onnxruntime`: a Python with onnxruntime is at `PARE_PYTHON`, else in the venv that
//!   `tools/setup-onnx.sh` makes under `target/onnx-venv`;
//! - `pare_tflite`: a Python with TensorFlow is at `PARE_TF_PYTHON`, else in the venv that
//!   `tools/setup-tf.sh` makes (`/work/venvs/tf` or `target/venv-tf`).
//!
//! With `PARE_REQUIRE_DATA=1` (as `.ci/run` sets) both are set whatever is found: the tests then
//! run and fail, naming what is missing, so CI can never go green on tests that did not run.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pare_mnist)");
    println!("cargo::rustc-check-cfg=cfg(pare_onnxruntime)");
    println!("cargo::rustc-check-cfg=cfg(pare_tflite)");
    for var in [
        "MNIST_DIR",
        "PARE_REQUIRE_DATA",
        "PARE_PYTHON",
        "PARE_TF_PYTHON",
        "HOME",
        "XDG_CACHE_HOME",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let require = env::var_os("PARE_REQUIRE_DATA").is_some_and(|v| v == "1");

    let mnist_dirs = mnist_candidates(&root);
    for d in &mnist_dirs {
        println!("cargo::rerun-if-changed={}", d.display());
    }
    if require || mnist_dirs.iter().any(|d| has_mnist(d)) {
        println!("cargo::rustc-cfg=pare_mnist");
    }

    let python = python_path(&root);
    println!("cargo::rerun-if-changed={}", python.display());
    if require || python.is_file() {
        println!("cargo::rustc-cfg=pare_onnxruntime");
    }

    let tf = tf_python_candidates(&root);
    for p in &tf {
        println!("cargo::rerun-if-changed={}", p.display());
    }
    if require || tf.iter().any(|p| p.is_file()) {
        println!("cargo::rustc-cfg=pare_tflite");
    }
}

/// Where tests/tflite.rs looks for TensorFlow's Python, in order (the same list it uses).
fn tf_python_candidates(root: &Path) -> Vec<PathBuf> {
    match env::var_os("PARE_TF_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            PathBuf::from("/work/venvs/tf/bin/python"),
            root.join("target/venv-tf/bin/python"),
        ],
    }
}

fn mnist_candidates(root: &Path) -> Vec<PathBuf> {
    if let Some(d) = env::var_os("MNIST_DIR").filter(|d| !d.is_empty()) {
        // Relative paths are taken from the workspace root, where `cargo test` is run. A set
        // MNIST_DIR is the only place looked at, as the tests' loader does: a wrong one must
        // not be papered over by another copy.
        return vec![root.join(d)];
    }
    let mut dirs = vec![root.join("../shared/data/mnist")];
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(c) = cache {
        dirs.push(c.join("pare/mnist"));
    }
    dirs
}

/// The four files under any of the names the loader accepts.
fn has_mnist(dir: &Path) -> bool {
    ["train-images", "train-labels", "t10k-images", "t10k-labels"]
        .iter()
        .all(|stem| {
            let kind = if stem.ends_with("images") {
                "idx3"
            } else {
                "idx1"
            };
            [
                format!("{stem}-{kind}-ubyte"),
                format!("{stem}.{kind}-ubyte"),
            ]
            .iter()
            .any(|n| dir.join(n).is_file() || dir.join(format!("{n}.gz")).is_file())
        })
}

fn python_path(root: &Path) -> PathBuf {
    match env::var_os("PARE_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => root.join("target/onnx-venv/bin/python"),
    }
}
