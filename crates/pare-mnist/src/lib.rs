//! IDX files and the MNIST / Fashion-MNIST data sets for pare.
//!
//! - [`read_idx`] / [`write_idx`]: LeCun's IDX format for every element type (`u8`, `i8`,
//!   `i16`, `i32`, `f32`, `f64`) and rank, gzipped or not (detected from the bytes). Every
//!   header field and the payload length are checked against the file before anything large is
//!   allocated, so a corrupt or hostile file is an error, never a panic or a huge allocation.
//! - [`Mnist::load`] / [`Mnist::from_env`] (`MNIST_DIR`): the four standard files, by their
//!   usual names, as training and test [`Dataset`]s.
//! - [`Mnist::load_or_download`] (feature `download`, on by default): the same, fetching the
//!   files that are missing from public mirrors first, each checked against its published
//!   SHA-256; [`DownloadConfig`] and [`Mirrors`] choose other mirrors (`PARE_MNIST_MIRROR`).
//! - [`Dataset`]: NHWC `f32` images in [0, 1] and `u8` labels, with a Keras-style
//!   [`split_validation`](Dataset::split_validation), [`subset`](Dataset::subset),
//!   [`gather`](Dataset::gather) and seeded shuffled [`batches`](Dataset::batches)
//!   ([`Batcher`] for index batches alone).
//!
//! # Example
//!
//! Write a tiny MNIST-format data set and read it back:
//!
//! ```
//! use pare_mnist::{IdxData, Mnist, Shuffle, write_idx};
//!
//! let dir = std::env::temp_dir().join(format!("pare-mnist-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! // Six 2x3 images and their labels; the test half is gzipped.
//! let images = IdxData::new(vec![6, 2, 3], (0..36).map(|p| p as u8 * 7).collect::<Vec<u8>>())?;
//! let labels = IdxData::new(vec![6], vec![5u8, 0, 4, 1, 9, 2])?;
//! write_idx(dir.join("train-images-idx3-ubyte"), &images, false)?;
//! write_idx(dir.join("train-labels-idx1-ubyte"), &labels, false)?;
//! write_idx(dir.join("t10k-images-idx3-ubyte.gz"), &images, true)?;
//! write_idx(dir.join("t10k-labels-idx1-ubyte.gz"), &labels, true)?;
//!
//! let mnist = Mnist::load(&dir)?;
//! assert_eq!(mnist.image_size(), (2, 3));
//! assert_eq!(mnist.test().labels(), &[5, 0, 4, 1, 9, 2]);
//! assert_eq!(mnist.train().images().shape(), &[6, 2, 3, 1]);
//! assert_eq!(mnist.train().images()[[0, 0, 1, 0]], 7.0 / 255.0);
//!
//! // Keras' validation_split: the last third validates.
//! let (train, val) = mnist.train().split_validation(1.0 / 3.0)?;
//! assert_eq!((train.len(), val.len()), (4, 2));
//! assert_eq!(val.labels(), &[9, 2]);
//!
//! // Shuffled batches of 3, a new order every epoch, reproducible from the seed.
//! for batch in train.batches(3, Shuffle::Seeded { seed: 42 }, 0)? {
//!     assert_eq!(batch.images.shape()[1..], [2, 3, 1]);
//!     assert_eq!(batch.labels.len(), batch.indices.len());
//! }
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod dataset;
#[cfg(feature = "download")]
mod download;
mod error;
mod idx;
mod mnist;
#[cfg(feature = "tensor")]
mod tensor;
#[cfg(test)]
mod test_util;

pub use dataset::{Batch, Batcher, Batches, Dataset, IndexBatches, Shuffle};
#[cfg(feature = "download")]
pub use download::{
    DEBIAN_FASHION_MNIST_DIR, DataSet, DownloadConfig, FASHION_MNIST_DIR_VAR, Mirrors, RemoteFile,
    download_missing,
};
pub use error::{DownloadAttempt, DownloadFailure, MnistError, Result};
pub use idx::{IdxData, IdxType, IdxValues, read_idx, read_idx_bytes, write_idx};
pub use mnist::{MNIST_DIR_VAR, Mnist, MnistFiles, NUM_CLASSES, load_pair};
