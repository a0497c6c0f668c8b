//! Tests on the real MNIST and Fashion-MNIST files. They show as ignored, saying why, when the
//! build script did not find the data (`build.rs`: cfgs `pare_mnist`, `pare_fashion_mnist`).
//!
//! MNIST: `MNIST_DIR`, else `shared/data/mnist` beside the checkout, else pare's download cache.
//! Fashion-MNIST: Debian's `dataset-fashion-mnist` package, `/usr/share/datasets/fashion-mnist`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use approx::assert_abs_diff_eq;
use pare_mnist::{Mnist, NUM_CLASSES, Shuffle};

const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn mnist_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MNIST_DIR").filter(|d| !d.is_empty()) {
        return Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("pare/mnist"));
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    std::iter::once(shared).chain(cache).find(|d| d.is_dir())
}

/// MNIST, loaded once for all the tests in this file.
///
/// # Panics
/// When it is not found (the tests run only where the build found it, or under
/// `PARE_REQUIRE_DATA=1`) or does not load.
fn mnist() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = mnist_dir()
            .unwrap_or_else(|| panic!("no MNIST: set MNIST_DIR to the directory of its files"));
        Mnist::load(&dir).unwrap_or_else(|e| panic!("loading MNIST from {}: {e}", dir.display()))
    })
}

fn class_counts(labels: &[u8]) -> [usize; NUM_CLASSES] {
    let mut counts = [0; NUM_CLASSES];
    for &l in labels {
        counts[usize::from(l)] += 1;
    }
    counts
}

#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn mnist_shapes_labels_and_pixels() {
    let m = mnist();
    assert_eq!(m.image_size(), (28, 28));
    assert_eq!(m.train().images().shape(), &[60_000, 28, 28, 1]);
    assert_eq!(m.test().images().shape(), &[10_000, 28, 28, 1]);
    assert_eq!(m.train().labels()[0], 5);
    assert_eq!(m.test().labels()[0], 7);
    // Class counts of the canonical files (also what NumPy reads from them).
    assert_eq!(
        class_counts(m.train().labels()),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        class_counts(m.test().labels()),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    for d in [m.train(), m.test()] {
        let (min, max) = d
            .images()
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        assert_eq!((min, max), (0.0, 1.0), "pixels span [0, 1] exactly");
    }
    // The first training image's raw bytes sum to 27525 (computed with Python's gzip module).
    let first: f32 = m.train().images().index_axis(ndarray::Axis(0), 0).sum();
    assert_abs_diff_eq!(first, 27525.0 / 255.0, epsilon = 1e-3);
}

#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn mnist_validation_split_and_batches() {
    let m = mnist();
    let (train, val) = m.train().split_validation(0.1).unwrap();
    assert_eq!((train.len(), val.len()), (54_000, 6_000));
    assert_eq!(val.labels()[0], m.train().labels()[54_000]);
    assert_eq!(
        val.images(),
        &m.train().images().slice(ndarray::s![54_000.., .., .., ..])
    );

    // One shuffled epoch of the held-in part: every example once, last batch 54000 mod 128.
    let mut seen = vec![0u8; train.len()];
    let mut batches = 0;
    for batch in train.batches(128, Shuffle::Seeded { seed: 1 }, 0).unwrap() {
        assert_eq!(batch.images.shape()[1..], [28, 28, 1]);
        for (row, &i) in batch.indices.iter().enumerate() {
            seen[i] += 1;
            assert_eq!(batch.labels[row], train.labels()[i]);
        }
        batches += 1;
        if batches == 422 {
            assert_eq!(batch.len(), 54_000 - 421 * 128);
        }
    }
    assert_eq!(batches, 422);
    assert!(seen.iter().all(|&c| c == 1));
}

#[test]
#[cfg_attr(
    not(pare_fashion_mnist),
    ignore = "needs Fashion-MNIST: apt-get install dataset-fashion-mnist"
)]
fn fashion_mnist_loads_unchanged() {
    let dir = Path::new(FASHION_DIR);
    let f = Mnist::load(dir).unwrap();
    assert_eq!(f.image_size(), (28, 28));
    assert_eq!(f.train().images().shape(), &[60_000, 28, 28, 1]);
    assert_eq!(f.test().images().shape(), &[10_000, 28, 28, 1]);
    // Ankle boot (9) opens both files; the classes are exactly balanced.
    assert_eq!(f.train().labels()[0], 9);
    assert_eq!(f.test().labels()[0], 9);
    assert_eq!(class_counts(f.train().labels()), [6000; NUM_CLASSES]);
    assert_eq!(class_counts(f.test().labels()), [1000; NUM_CLASSES]);
    let first: f32 = f.train().images().index_axis(ndarray::Axis(0), 0).sum();
    assert_abs_diff_eq!(first, 76247.0 / 255.0, epsilon = 1e-3);
}
