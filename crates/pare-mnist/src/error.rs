//! The crate's error type.

use std::io;
use std::path::PathBuf;

use crate::idx::IdxType;

/// Everything that can go wrong reading IDX files, loading MNIST or slicing a [`Dataset`].
///
/// File errors name the file; every variant carries the numbers needed to see what was wrong.
///
/// [`Dataset`]: crate::Dataset
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MnistError {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The first two bytes of the (decompressed) file are not zero, so it is not an IDX file.
    #[error(
        "{}: not an IDX file: magic number {found:02x?} does not start with two zero bytes",
        path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The four magic bytes found.
        found: [u8; 4],
    },
    /// The third magic byte is not one of the IDX element type codes.
    #[error(
        "{}: unknown IDX element type code 0x{code:02x} (known: 0x08 u8, 0x09 i8, 0x0b i16, \
         0x0c i32, 0x0d f32, 0x0e f64)",
        path.display()
    )]
    UnknownType {
        /// The file.
        path: PathBuf,
        /// The type code found.
        code: u8,
    },
    /// The fourth magic byte (the number of dimensions) is zero.
    #[error("{}: IDX header has rank 0; an IDX array needs at least one dimension", path.display())]
    ZeroRank {
        /// The file.
        path: PathBuf,
    },
    /// The file ends inside the header (magic number and dimensions).
    #[error(
        "{}: IDX header truncated: needs {expected} bytes, the file has {found}",
        path.display()
    )]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// Header length implied by the rank (4 + 4 · rank bytes).
        expected: usize,
        /// Bytes available.
        found: usize,
    },
    /// The product of the dimensions times the element size does not fit in memory sizes.
    #[error(
        "{}: IDX dimensions {dims:?} overflow: their product does not fit in a usize",
        path.display()
    )]
    DimsOverflow {
        /// The file.
        path: PathBuf,
        /// The dimensions from the header.
        dims: Vec<u32>,
    },
    /// The payload is shorter than the header says.
    #[error(
        "{}: IDX payload truncated: the header implies {expected} bytes, the file has {found}",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Payload bytes implied by the header.
        expected: u64,
        /// Payload bytes present (after decompression for gzip).
        found: u64,
    },
    /// The payload is longer than the header says.
    #[error(
        "{}: IDX payload has trailing bytes: the header implies {expected} bytes, the file has \
         {found}",
        path.display()
    )]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Payload bytes implied by the header.
        expected: u64,
        /// Payload bytes present (after decompression for gzip).
        found: u64,
    },
    /// The file starts with the gzip magic bytes but does not decompress.
    #[error("{}: corrupt gzip stream: {source}", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// The file holds another element type than the one needed.
    #[error("{}: expected IDX elements of type {expected}, found {found}", path.display())]
    WrongElementType {
        /// The file.
        path: PathBuf,
        /// The type needed.
        expected: IdxType,
        /// The type in the file.
        found: IdxType,
    },
    /// The file holds an array of another rank than the one needed.
    #[error(
        "{}: expected an IDX array of rank {expected}, found dimensions {dims:?}",
        path.display()
    )]
    WrongRank {
        /// The file.
        path: PathBuf,
        /// The rank needed.
        expected: usize,
        /// The dimensions in the file.
        dims: Vec<usize>,
    },
    /// One of the four MNIST files is not in the directory under any of its usual names.
    #[error(
        "{}: missing MNIST file: none of {expected:?} exists there (set MNIST_DIR to a directory \
         holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and \
         t10k-labels-idx1-ubyte, each optionally gzipped)",
        dir.display()
    )]
    MissingFile {
        /// The directory searched.
        dir: PathBuf,
        /// The file names tried, in order.
        expected: Vec<String>,
    },
    /// An images file and its labels file hold different numbers of examples.
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// The labels file.
        labels_path: PathBuf,
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not a class index below the number of classes.
    #[error(
        "{}: label {label} at index {index} is out of range (classes are 0..{num_classes})",
        path.display()
    )]
    LabelOutOfRange {
        /// The labels file.
        path: PathBuf,
        /// Position of the bad label.
        index: usize,
        /// The bad label.
        label: u8,
        /// Number of classes.
        num_classes: usize,
    },
    /// The training and test images have different sizes.
    #[error("training images are {train:?} (rows, cols) but test images are {test:?}")]
    ImageSizeMismatch {
        /// (rows, cols) of the training images.
        train: (usize, usize),
        /// (rows, cols) of the test images.
        test: (usize, usize),
    },
    /// The environment variable naming the data directory is not set (or not Unicode).
    #[error(
        "{var} is not set: set it to the directory holding train-images-idx3-ubyte, \
         train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each \
         optionally .gz, `.idx3-ubyte` spellings accepted)"
    )]
    EnvUnset {
        /// The variable's name.
        var: &'static str,
    },
    /// The data directory does not exist or is not a directory.
    #[error(
        "{}: not a directory: point MNIST_DIR (or the path given) at the directory holding \
         train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and \
         t10k-labels-idx1-ubyte (each optionally .gz)",
        dir.display()
    )]
    BadDir {
        /// The path given.
        dir: PathBuf,
    },
    /// A validation fraction outside the open interval (0, 1).
    #[error("validation fraction must be in (0, 1), got {fraction}")]
    BadFraction {
        /// The fraction given.
        fraction: f64,
    },
    /// A validation split that would leave the training or the validation part empty.
    #[error(
        "{len} examples are too few to split with validation fraction {fraction}: one part \
         would be empty"
    )]
    EmptySplit {
        /// Number of examples.
        len: usize,
        /// The fraction given.
        fraction: f64,
    },
    /// A batch size of zero.
    #[error("batch size must be at least 1, got {batch_size}")]
    BadBatchSize {
        /// The batch size given.
        batch_size: usize,
    },
    /// An example index past the end of the data set.
    #[error("index {index} is out of range for a data set of {len} examples")]
    IndexOutOfRange {
        /// The bad index.
        index: usize,
        /// Number of examples.
        len: usize,
    },
    /// Dimensions that do not describe the given number of elements as an IDX array.
    #[error(
        "dimensions {dims:?} do not describe an IDX array of {len} elements (rank must be \
         1..=255, each dimension < 2^32, product equal to the element count)"
    )]
    BadShape {
        /// The dimensions given.
        dims: Vec<usize>,
        /// The number of elements given.
        len: usize,
    },
    /// A mirror URL that is not `http://` or `https://`.
    #[error("mirror {url:?} is not an http:// or https:// URL")]
    BadMirror {
        /// The URL given.
        url: String,
    },
    /// An empty list of mirrors.
    #[error("no mirror given: the list of mirror URLs is empty")]
    NoMirrors,
    /// No directory was given, its variable is unset and the platform has no cache directory.
    #[error("no data directory: set {var} (this platform has no cache directory to download into)")]
    NoCacheDir {
        /// The variable to set.
        var: &'static str,
    },
    /// Files are missing and no mirror could be reached (no network, or every host down).
    #[error(
        "{dataset} files missing in {}: {}; no mirror could be reached (tried {}): put the files          there, set {dir_var} to a directory holding them, or set {mirror_var} to a mirror that          can be reached",
        dir.display(),
        missing.join(", "),
        mirrors.join(", ")
    )]
    Unreachable {
        /// `MNIST` or `Fashion-MNIST`.
        dataset: &'static str,
        /// Where the files were looked for and would have been written.
        dir: PathBuf,
        /// The files still missing.
        missing: Vec<String>,
        /// The mirrors tried, in order.
        mirrors: Vec<String>,
        /// The variable naming the data directory.
        dir_var: &'static str,
        /// The variable naming the mirrors.
        mirror_var: &'static str,
    },
    /// Mirrors answered, but none gave a copy of the file that passes its SHA-256 check.
    #[error(
        "could not download {file}: {}",
        attempts.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    DownloadFailed {
        /// The file name.
        file: String,
        /// What each mirror did, in the order tried.
        attempts: Vec<DownloadAttempt>,
    },
    /// Images and labels of different lengths given to [`Dataset::new`](crate::Dataset::new).
    #[error("{images} images but {labels} labels")]
    LengthMismatch {
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },
}

/// One mirror's try at one file, in [`MnistError::DownloadFailed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadAttempt {
    /// The file's URL on that mirror.
    pub url: String,
    /// What went wrong.
    pub failure: DownloadFailure,
}

impl std::fmt::Display for DownloadAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.url, self.failure)
    }
}

/// Why a mirror gave no good copy of a file. The partial download, if any, has been deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadFailure {
    /// The host could not be resolved or connected to, or did not answer in time.
    #[error("unreachable ({message})")]
    Unreachable {
        /// The HTTP client's message.
        message: String,
    },
    /// The server answered with another status than 200.
    #[error("HTTP status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// The connection failed part-way.
    #[error("transfer failed ({message})")]
    Transport {
        /// The HTTP client's message.
        message: String,
    },
    /// The body ended before the length the server announced.
    #[error("truncated: received {received} of the {expected} bytes announced")]
    Truncated {
        /// The `Content-Length`.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The server announced more bytes than a good copy can have.
    #[error("announced {bytes} bytes, more than the {limit} a good copy can have")]
    TooLarge {
        /// The `Content-Length`.
        bytes: u64,
        /// The most accepted.
        limit: u64,
    },
    /// The file's SHA-256 is not the published one (nor do its decompressed contents match).
    #[error("SHA-256 mismatch: expected {expected}, got {found}")]
    ChecksumMismatch {
        /// The published digest.
        expected: String,
        /// The digest of what was received.
        found: String,
    },
}

/// `Result` with [`MnistError`].
pub type Result<T, E = MnistError> = std::result::Result<T, E>;
