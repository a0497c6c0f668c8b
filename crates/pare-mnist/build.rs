//! Tells the real-data tests what this machine has, so that a test whose data is absent shows
//! as *ignored* instead of passing without having run (the workspace root's build.rs does the
//! same for the cross-crate tests):
//!
//! - `pare_mnist`: MNIST is where `tests/real_data.rs` looks (`MNIST_DIR` when set,
//!   else `shared/data/mnist` beside the checkout, else pare's download cache); always set with
//!   `PARE_REQUIRE_DATA=1`, so CI runs those tests and they fail naming what is missing;
//! - `pare_fashion_mnist`: Debian's `dataset-fashion-mnist` is installed
//!   (`/usr/share/datasets/fashion-mnist`). CI installs it best effort, so it is not required.

use std::env;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` puts the files.
const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pare_mnist)");
    println!("cargo::rustc-check-cfg=cfg(pare_fashion_mnist)");
    for var in ["MNIST_DIR", "PARE_REQUIRE_DATA", "HOME", "XDG_CACHE_HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let crate_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let require = env::var_os("PARE_REQUIRE_DATA").is_some_and(|v| v == "1");
    let dirs = match env::var_os("MNIST_DIR").filter(|d| !d.is_empty()) {
        // Tests run in the crate's directory, so a relative MNIST_DIR is taken from there; a
        // set MNIST_DIR is the only place looked at, as the tests' loader does.
        Some(d) => vec![crate_dir.join(d)],
        None => {
            let cache = env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
            let shared = crate_dir.join("../../../shared/data/mnist");
            std::iter::once(shared)
                .chain(cache.map(|c| c.join("pare/mnist")))
                .collect()
        }
    };
    for d in dirs.iter().chain([&PathBuf::from(FASHION_DIR)]) {
        println!("cargo::rerun-if-changed={}", d.display());
    }
    if require || dirs.iter().any(|d| has_idx_files(d)) {
        println!("cargo::rustc-cfg=pare_mnist");
    }
    if has_idx_files(Path::new(FASHION_DIR)) {
        println!("cargo::rustc-cfg=pare_fashion_mnist");
    }
}

/// The four files, under either of the names the loader accepts, optionally gzipped.
fn has_idx_files(dir: &Path) -> bool {
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
