//! MNIST and Fashion-MNIST: finding the four files, checking them, turning them into
//! [`Dataset`]s.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use ndarray::Array4;

use crate::dataset::Dataset;
use crate::error::{MnistError, Result};
use crate::idx::{IdxData, IdxType, IdxValues, read_idx};

/// The environment variable [`Mnist::from_env`] reads.
pub const MNIST_DIR_VAR: &str = "MNIST_DIR";

/// Number of classes in MNIST and Fashion-MNIST; labels are below it.
pub const NUM_CLASSES: usize = 10;

/// `(stem, kind)` of the four files, in the order train images, train labels, test images, test
/// labels: `train-images-idx3-ubyte` is stem `train-images`, kind `idx3`.
pub(crate) const STANDARD_FILES: [(&str, &str); 4] = [
    ("train-images", "idx3"),
    ("train-labels", "idx1"),
    ("t10k-images", "idx3"),
    ("t10k-labels", "idx1"),
];

/// Where the four files of an MNIST-format data set are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MnistFiles {
    /// `train-images-idx3-ubyte` or a variant.
    pub train_images: PathBuf,
    /// `train-labels-idx1-ubyte` or a variant.
    pub train_labels: PathBuf,
    /// `t10k-images-idx3-ubyte` or a variant.
    pub test_images: PathBuf,
    /// `t10k-labels-idx1-ubyte` or a variant.
    pub test_labels: PathBuf,
}

impl MnistFiles {
    /// Looks for the four files in `dir` under their standard names: `train-images-idx3-ubyte`
    /// or `train-images.idx3-ubyte` (both spellings are in circulation), each with or without
    /// `.gz`, and likewise for `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
    /// `t10k-labels-idx1-ubyte`. The first name that exists wins, uncompressed first. Whether
    /// a file is gzipped is decided later from its contents, not from its name.
    ///
    /// # Errors
    /// [`MnistError::BadDir`] if `dir` is not a directory, [`MnistError::MissingFile`] listing
    /// the names tried for the first file not found.
    pub fn find(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(MnistError::BadDir {
                dir: dir.to_owned(),
            });
        }
        let [train_images, train_labels, test_images, test_labels] =
            STANDARD_FILES.map(|(stem, kind)| find_one(dir, stem, kind));
        Ok(Self {
            train_images: train_images?,
            train_labels: train_labels?,
            test_images: test_images?,
            test_labels: test_labels?,
        })
    }
}

fn candidate_names(stem: &str, kind: &str) -> Vec<String> {
    let (dash, dot) = (
        format!("{stem}-{kind}-ubyte"),
        format!("{stem}.{kind}-ubyte"),
    );
    // For each spelling, uncompressed first: it loads faster when both are there.
    vec![
        dash.clone(),
        format!("{dash}.gz"),
        dot.clone(),
        format!("{dot}.gz"),
    ]
}

pub(crate) fn find_one(dir: &Path, stem: &str, kind: &str) -> Result<PathBuf> {
    let names = candidate_names(stem, kind);
    names
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| MnistError::MissingFile {
            dir: dir.to_owned(),
            expected: names,
        })
}

/// An MNIST-format data set: training and test [`Dataset`]s of `[n, rows, cols, 1]` images in
/// [0, 1] and labels in `0..10`.
///
/// Works unchanged for Fashion-MNIST, which uses the same names and format.
#[derive(Debug, Clone, PartialEq)]
pub struct Mnist {
    train: Dataset,
    test: Dataset,
}

impl Mnist {
    /// Loads the four files from `dir` (see [`MnistFiles::find`] for the names accepted).
    ///
    /// Checks that each image file is a rank-3 `u8` array and each label file a rank-1 `u8`
    /// array, that their counts match, that every label is below 10, and that training and
    /// test images have the same size.
    ///
    /// # Errors
    /// Any [`MnistError`] from finding or reading the files, or
    /// [`WrongElementType`](MnistError::WrongElementType),
    /// [`WrongRank`](MnistError::WrongRank), [`CountMismatch`](MnistError::CountMismatch),
    /// [`LabelOutOfRange`](MnistError::LabelOutOfRange),
    /// [`ImageSizeMismatch`](MnistError::ImageSizeMismatch).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let files = MnistFiles::find(dir)?;
        let train = load_pair(&files.train_images, &files.train_labels)?;
        let test = load_pair(&files.test_images, &files.test_labels)?;
        let size = |d: &Dataset| (d.image_shape()[0], d.image_shape()[1]);
        if size(&train) != size(&test) {
            return Err(MnistError::ImageSizeMismatch {
                train: size(&train),
                test: size(&test),
            });
        }
        Ok(Self { train, test })
    }

    /// Loads from the directory named by the `MNIST_DIR` environment variable.
    ///
    /// # Errors
    /// [`MnistError::EnvUnset`] if it is unset or empty, [`MnistError::BadDir`] if it names no
    /// directory (both messages say what to set and which files are expected), and everything
    /// [`Mnist::load`] returns.
    pub fn from_env() -> Result<Self> {
        Self::load(dir_from_env_value(std::env::var_os(MNIST_DIR_VAR))?)
    }

    /// The training set (60,000 examples for MNIST).
    pub fn train(&self) -> &Dataset {
        &self.train
    }

    /// The test set (10,000 examples for MNIST).
    pub fn test(&self) -> &Dataset {
        &self.test
    }

    /// Image size as `(rows, cols)`: `(28, 28)` for MNIST.
    pub fn image_size(&self) -> (usize, usize) {
        let [rows, cols, _] = self.train.image_shape();
        (rows, cols)
    }

    /// `(train, test)` by value.
    pub fn into_parts(self) -> (Dataset, Dataset) {
        (self.train, self.test)
    }
}

fn dir_from_env_value(value: Option<OsString>) -> Result<PathBuf> {
    match value {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(MnistError::EnvUnset { var: MNIST_DIR_VAR }),
    }
}

/// Loads one images file and its labels file as a [`Dataset`] of `[n, rows, cols, 1]` images
/// scaled to [0, 1] (`pixel / 255`, as Keras examples do) and labels checked to be below
/// [`NUM_CLASSES`].
///
/// # Errors
/// Everything [`read_idx`] returns, and [`WrongElementType`](MnistError::WrongElementType),
/// [`WrongRank`](MnistError::WrongRank), [`CountMismatch`](MnistError::CountMismatch) or
/// [`LabelOutOfRange`](MnistError::LabelOutOfRange).
pub fn load_pair(images_path: impl AsRef<Path>, labels_path: impl AsRef<Path>) -> Result<Dataset> {
    let (images_path, labels_path) = (images_path.as_ref(), labels_path.as_ref());
    let (dims, pixels) = into_u8(read_idx(images_path)?, images_path, 3)?;
    let (label_dims, labels) = into_u8(read_idx(labels_path)?, labels_path, 1)?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if n != label_dims[0] {
        return Err(MnistError::CountMismatch {
            images_path: images_path.to_owned(),
            labels_path: labels_path.to_owned(),
            images: n,
            labels: label_dims[0],
        });
    }
    let bad = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= NUM_CLASSES);
    if let Some((index, &label)) = bad {
        return Err(MnistError::LabelOutOfRange {
            path: labels_path.to_owned(),
            index,
            label,
            num_classes: NUM_CLASSES,
        });
    }
    let images = Array4::from_shape_vec((n, rows, cols, 1), pixels_to_unit(&pixels))
        .expect("load_pair: IDX dims match the pixel count");
    Ok(Dataset::new(images, labels).expect("load_pair: counts checked above"))
}

fn into_u8(data: IdxData, path: &Path, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    if data.dims().len() != rank {
        return Err(MnistError::WrongRank {
            path: path.to_owned(),
            expected: rank,
            dims: data.dims().to_vec(),
        });
    }
    match data.into_parts() {
        (dims, IdxValues::U8(v)) => Ok((dims, v)),
        (_, other) => Err(MnistError::WrongElementType {
            path: path.to_owned(),
            expected: IdxType::U8,
            found: other.element_type(),
        }),
    }
}

/// `p / 255` exactly (a true division, not a multiply by the rounded reciprocal), matching
/// `x.astype("float32") / 255` in NumPy. The loop vectorises; what it costs is mostly first-touch
/// page faults on the fresh output, and splitting it over threads measured no faster here.
fn pixels_to_unit(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| f32::from(p) / 255.0).collect()
}

#[cfg(test)]
mod tests {
    use approx::assert_abs_diff_eq;

    use super::*;
    use crate::idx::write_idx;
    use crate::test_util::TempDir;

    /// Writes an MNIST-format set of `n_train` / `n_test` images of `rows x cols` into `dir`.
    fn write_set(dir: &Path, names: [&str; 4], n: [usize; 2], size: (usize, usize), gz: bool) {
        let (rows, cols) = size;
        for (k, count) in n.into_iter().enumerate() {
            let pixels: Vec<u8> = (0..count * rows * cols)
                .map(|i| (i * 31 % 256) as u8)
                .collect();
            let labels: Vec<u8> = (0..count).map(|i| (i * 7 % 10) as u8).collect();
            let images = IdxData::new(vec![count, rows, cols], pixels).unwrap();
            let labels = IdxData::new(vec![count], labels).unwrap();
            write_idx(dir.join(names[2 * k]), &images, gz).unwrap();
            write_idx(dir.join(names[2 * k + 1]), &labels, gz).unwrap();
        }
    }

    const STANDARD: [&str; 4] = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];

    #[test]
    fn loads_every_naming_variant() {
        let variants: [([&str; 4], bool); 3] = [
            (STANDARD, false),
            (
                [
                    "train-images-idx3-ubyte.gz",
                    "train-labels-idx1-ubyte.gz",
                    "t10k-images-idx3-ubyte.gz",
                    "t10k-labels-idx1-ubyte.gz",
                ],
                true,
            ),
            (
                [
                    "train-images.idx3-ubyte",
                    "train-labels.idx1-ubyte.gz",
                    "t10k-images.idx3-ubyte.gz",
                    "t10k-labels.idx1-ubyte",
                ],
                true,
            ),
        ];
        for (names, gz) in variants {
            let dir = TempDir::new("mnist-names");
            write_set(dir.path(), names, [12, 5], (4, 3), gz);
            let m = Mnist::load(dir.path()).unwrap();
            assert_eq!(m.image_size(), (4, 3));
            assert_eq!(m.train().len(), 12);
            assert_eq!(m.test().len(), 5);
            assert_eq!(m.train().images().shape(), &[12, 4, 3, 1]);
            assert_eq!(m.test().labels(), &[0, 7, 4, 1, 8]);
            // Pixel i of the training set is (31 i mod 256) / 255.
            assert_abs_diff_eq!(
                m.train().images()[[0, 0, 1, 0]],
                31.0 / 255.0,
                epsilon = 0.0
            );
            // Image 1, row 1, col 0 is pixel 12 + 3 = 15: 15 · 31 mod 256 = 209.
            assert_abs_diff_eq!(
                m.train().images()[[1, 1, 0, 0]],
                209.0 / 255.0,
                epsilon = 0.0
            );
            let (train, test) = m.into_parts();
            assert_eq!((train.len(), test.len()), (12, 5));
        }
    }

    #[test]
    fn pixels_scale_exactly_to_unit_range() {
        let all: Vec<u8> = (0..=255).collect();
        let f = pixels_to_unit(&all);
        assert_eq!(f[0], 0.0);
        assert_eq!(f[255], 1.0);
        for (p, x) in all.iter().zip(&f) {
            // Correctly rounded division, checked in f64.
            assert_eq!(*x, (f64::from(*p) / 255.0) as f32);
        }
    }

    #[test]
    fn missing_file() {
        let dir = TempDir::new("mnist-missing");
        write_set(dir.path(), STANDARD, [3, 2], (2, 2), false);
        std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, MnistError::MissingFile { expected, .. }
                if expected.contains(&"t10k-labels-idx1-ubyte.gz".to_string())
                    && expected.contains(&"t10k-labels.idx1-ubyte".to_string())),
            "{err:?}"
        );
        assert!(err.to_string().contains("MNIST_DIR"));
    }

    #[test]
    fn bad_dir_and_unset_env() {
        let dir = TempDir::new("mnist-baddir");
        let err = Mnist::load(dir.join("nowhere")).unwrap_err();
        assert!(matches!(err, MnistError::BadDir { .. }), "{err:?}");
        assert!(err.to_string().contains("train-images-idx3-ubyte"));

        for value in [None, Some(OsString::new())] {
            let err = dir_from_env_value(value).unwrap_err();
            assert!(
                matches!(err, MnistError::EnvUnset { var: "MNIST_DIR" }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("MNIST_DIR") && msg.contains("t10k-labels-idx1-ubyte"),
                "{msg}"
            );
        }
        assert_eq!(
            dir_from_env_value(Some("/x".into())).unwrap(),
            PathBuf::from("/x")
        );
    }

    #[test]
    fn image_label_count_mismatch() {
        let dir = TempDir::new("mnist-count");
        write_set(dir.path(), STANDARD, [4, 2], (2, 2), false);
        let labels = IdxData::new(vec![3], vec![1u8, 2, 3]).unwrap();
        write_idx(dir.join("train-labels-idx1-ubyte"), &labels, false).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                MnistError::CountMismatch {
                    images: 4,
                    labels: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn label_out_of_range() {
        let dir = TempDir::new("mnist-label");
        write_set(dir.path(), STANDARD, [4, 2], (2, 2), true);
        let labels = IdxData::new(vec![2], vec![9u8, 10]).unwrap();
        write_idx(dir.join("t10k-labels-idx1-ubyte"), &labels, true).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, MnistError::LabelOutOfRange { index: 1, label: 10, num_classes: 10, path }
                if path.ends_with("t10k-labels-idx1-ubyte")),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_element_type_and_rank() {
        let dir = TempDir::new("mnist-kind");
        write_set(dir.path(), STANDARD, [4, 2], (2, 2), false);
        let floats = IdxData::new(vec![4, 2, 2], vec![0.5f32; 16]).unwrap();
        write_idx(dir.join("train-images-idx3-ubyte"), &floats, false).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                MnistError::WrongElementType {
                    expected: IdxType::U8,
                    found: IdxType::F32,
                    ..
                }
            ),
            "{err:?}"
        );
        let flat = IdxData::new(vec![4, 4], vec![0u8; 16]).unwrap();
        write_idx(dir.join("train-images-idx3-ubyte"), &flat, false).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, MnistError::WrongRank { expected: 3, dims, .. } if dims == &[4, 4]),
            "{err:?}"
        );
    }

    #[test]
    fn train_and_test_image_sizes_must_agree() {
        let dir = TempDir::new("mnist-size");
        write_set(dir.path(), STANDARD, [4, 2], (2, 2), false);
        let other = IdxData::new(vec![2, 3, 3], vec![0u8; 18]).unwrap();
        write_idx(dir.join("t10k-images-idx3-ubyte"), &other, false).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                MnistError::ImageSizeMismatch {
                    train: (2, 2),
                    test: (3, 3)
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn file_errors_pass_through_load() {
        let dir = TempDir::new("mnist-corrupt");
        write_set(dir.path(), STANDARD, [4, 2], (2, 2), false);
        std::fs::write(dir.join("train-images-idx3-ubyte"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        assert!(matches!(err, MnistError::Gzip { .. }), "{err:?}");
    }
}
