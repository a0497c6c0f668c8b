//! Fetching missing MNIST / Fashion-MNIST files from public mirrors (the `download` feature).
//!
//! [`Mnist::load_or_download`] loads the four files from a directory and, when some are missing,
//! fetches them first: from each mirror in turn, streamed to a temporary file beside the
//! destination, checked against the SHA-256 digest compiled in here, then renamed into place, so
//! the directory never holds a half-written or unverified file. A file that fails its check is
//! deleted and the next mirror is tried.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::{DownloadAttempt, DownloadFailure, MnistError, Result};
use crate::mnist::{MNIST_DIR_VAR, Mnist, STANDARD_FILES, find_one};

/// The environment variable naming the Fashion-MNIST directory for
/// [`Mnist::fashion_load_or_download`].
pub const FASHION_MNIST_DIR_VAR: &str = "FASHION_MNIST_DIR";

/// Where Debian's `dataset-fashion-mnist` package puts Fashion-MNIST; read when it holds the
/// files and no directory was given.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Which data set to fetch: it decides the digests, the default mirrors, the environment
/// variables and the cache directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataSet {
    /// LeCun, Cortes and Burges' handwritten digits.
    Mnist,
    /// Zalando's Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): same format, ten kinds of
    /// clothing.
    FashionMnist,
}

/// `(published SHA-256 of the .gz, SHA-256 of the decompressed IDX file, IDX length)` per file,
/// in the order of [`STANDARD_FILES`].
///
/// MNIST: the published digests of the original `.gz` files (as the PyTorch and TensorFlow
/// mirrors serve them, 9,912,422 / 28,881 / 1,648,877 / 4,542 bytes); the digests of the
/// decompressed files were computed here from a re-compressed copy whose contents match the
/// published decompressed digests. Fashion-MNIST: the published digests of Zalando's `.gz`
/// files (26,421,880 / 29,515 / 4,422,102 / 5,148 bytes); the decompressed digests were computed
/// here from Debian's `dataset-fashion-mnist` package, whose `.gz` files differ from Zalando's
/// only in the gzip header (the stored file name, 24 bytes).
const MNIST_DIGESTS: [(&str, &str, u64); 4] = [
    (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        47_040_016,
    ),
    (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        60_008,
    ),
    (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        7_840_016,
    ),
    (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        10_008,
    ),
];

/// See [`MNIST_DIGESTS`].
const FASHION_DIGESTS: [(&str, &str, u64); 4] = [
    (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47_040_016,
    ),
    (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60_008,
    ),
    (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7_840_016,
    ),
    (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10_008,
    ),
];

impl DataSet {
    /// The name used in messages: `MNIST` or `Fashion-MNIST`.
    pub fn name(self) -> &'static str {
        match self {
            DataSet::Mnist => "MNIST",
            DataSet::FashionMnist => "Fashion-MNIST",
        }
    }

    /// The public mirrors tried in order when the mirror variable is unset: for MNIST the
    /// PyTorch and TensorFlow copies of LeCun's files, for Fashion-MNIST Zalando's bucket and
    /// its GitHub repository.
    pub fn default_mirrors(self) -> &'static [&'static str] {
        match self {
            DataSet::Mnist => &[
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
            ],
            // Plain HTTP is safe to use here: every file is checked against its digest.
            DataSet::FashionMnist => &[
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            ],
        }
    }

    /// The environment variable that replaces [`default_mirrors`](Self::default_mirrors):
    /// `PARE_MNIST_MIRROR` or `PARE_FASHION_MNIST_MIRROR`, one base URL or several separated
    /// by commas or spaces.
    pub fn mirror_var(self) -> &'static str {
        match self {
            DataSet::Mnist => "PARE_MNIST_MIRROR",
            DataSet::FashionMnist => "PARE_FASHION_MNIST_MIRROR",
        }
    }

    /// The environment variable naming the data directory: `MNIST_DIR` or `FASHION_MNIST_DIR`.
    pub fn dir_var(self) -> &'static str {
        match self {
            DataSet::Mnist => MNIST_DIR_VAR,
            DataSet::FashionMnist => FASHION_MNIST_DIR_VAR,
        }
    }

    /// The four files with their digests, in the order train images, train labels, test
    /// images, test labels.
    pub fn files(self) -> Vec<RemoteFile> {
        let digests = match self {
            DataSet::Mnist => &MNIST_DIGESTS,
            DataSet::FashionMnist => &FASHION_DIGESTS,
        };
        STANDARD_FILES
            .iter()
            .zip(digests)
            .map(|(&(stem, kind), &(sha, content_sha, len))| RemoteFile {
                name: format!("{stem}-{kind}-ubyte.gz"),
                sha256: sha.to_owned(),
                content: Some((content_sha.to_owned(), len)),
            })
            .collect()
    }

    /// The directory [`Mnist::load_or_download`] uses when given none: the directory variable
    /// ([`dir_var`](Self::dir_var)) if set; for Fashion-MNIST, Debian's
    /// [`DEBIAN_FASHION_MNIST_DIR`] if it holds the four files; else `pare/mnist` or
    /// `pare/fashion-mnist` in the platform cache directory (`~/.cache` on Linux).
    ///
    /// # Errors
    /// [`MnistError::NoCacheDir`] if no variable is set and the platform has no cache directory.
    pub fn default_dir(self) -> Result<PathBuf> {
        if let Some(dir) = std::env::var_os(self.dir_var()).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        if self == DataSet::FashionMnist
            && crate::MnistFiles::find(DEBIAN_FASHION_MNIST_DIR).is_ok()
        {
            return Ok(PathBuf::from(DEBIAN_FASHION_MNIST_DIR));
        }
        let sub = match self {
            DataSet::Mnist => "mnist",
            DataSet::FashionMnist => "fashion-mnist",
        };
        dirs::cache_dir()
            .map(|c| c.join("pare").join(sub))
            .ok_or(MnistError::NoCacheDir {
                var: self.dir_var(),
            })
    }
}

/// One file as the mirrors publish it, with what a good copy must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The file name on the mirrors and on disk, e.g. `train-images-idx3-ubyte.gz`.
    pub name: String,
    /// The published SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// SHA-256 (lowercase hex) and length of the decompressed contents. When set, a copy whose
    /// own digest differs is still accepted if it decompresses to exactly these bytes (a mirror
    /// that re-compressed the file, or serves it uncompressed): what is loaded is the same.
    pub content: Option<(String, u64)>,
}

/// The base URLs tried in order, each ending in `/`; a file's URL is the base plus its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors(Vec<String>);

impl Mirrors {
    /// Mirrors from base URLs (`http://` or `https://`; a missing trailing `/` is added).
    ///
    /// # Errors
    /// [`MnistError::BadMirror`] for a URL of another scheme, [`MnistError::NoMirrors`] for an
    /// empty list.
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Result<Self> {
        let urls = urls
            .into_iter()
            .map(|u| {
                let mut u: String = u.into();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(MnistError::BadMirror { url: u });
                }
                if !u.ends_with('/') {
                    u.push('/');
                }
                Ok(u)
            })
            .collect::<Result<Vec<_>>>()?;
        if urls.is_empty() {
            return Err(MnistError::NoMirrors);
        }
        Ok(Self(urls))
    }

    /// The data set's [`default_mirrors`](DataSet::default_mirrors).
    pub fn defaults(dataset: DataSet) -> Self {
        Self(
            dataset
                .default_mirrors()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        )
    }

    /// The list in the data set's [`mirror_var`](DataSet::mirror_var) if it is set and not
    /// empty, else the defaults.
    ///
    /// # Errors
    /// As [`Mirrors::parse`].
    pub fn from_env(dataset: DataSet) -> Result<Self> {
        match std::env::var(dataset.mirror_var()) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v),
            _ => Ok(Self::defaults(dataset)),
        }
    }

    /// Mirrors from a list of base URLs separated by commas or white space, as the mirror
    /// variables hold them.
    ///
    /// # Errors
    /// As [`Mirrors::new`].
    pub fn parse(list: &str) -> Result<Self> {
        Self::new(
            list.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty()),
        )
    }

    /// The base URLs, in the order they are tried.
    pub fn urls(&self) -> &[String] {
        &self.0
    }
}

/// How to fetch missing files: from where, what they must hash to, how long to wait.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// The data set, named in messages.
    pub dataset: DataSet,
    /// The mirrors, tried in order for each file.
    pub mirrors: Mirrors,
    /// The four files, in the order of [`DataSet::files`].
    pub files: Vec<RemoteFile>,
    /// Longest wait for a connection, and for each read once connected.
    pub timeout: Duration,
    /// A progress bar per file on stderr (drawn only when stderr is a terminal) and a line
    /// per file fetched.
    pub progress: bool,
    /// Go through the proxy named by `HTTPS_PROXY` / `ALL_PROXY` / `HTTP_PROXY` (honouring
    /// `NO_PROXY`), as curl does.
    pub env_proxy: bool,
}

impl DownloadConfig {
    /// The data set's files and digests, the mirrors from its mirror variable (else the
    /// defaults), a 30 s timeout, progress on, proxy from the environment.
    ///
    /// # Errors
    /// As [`Mirrors::from_env`].
    pub fn new(dataset: DataSet) -> Result<Self> {
        Ok(Self {
            dataset,
            mirrors: Mirrors::from_env(dataset)?,
            files: dataset.files(),
            timeout: Duration::from_secs(30),
            progress: true,
            env_proxy: true,
        })
    }

    /// The same with other mirrors (a local copy, a company proxy).
    pub fn with_mirrors(self, mirrors: Mirrors) -> Self {
        Self { mirrors, ..self }
    }
}

/// Fetches into `dir` (created if needed) those of the four files that are not already there
/// under any of their usual names, and returns the paths written (none when nothing was
/// missing).
///
/// # Errors
/// [`MnistError::Unreachable`] if no mirror could be connected to for a missing file (the
/// message lists the files missing, the directory and the mirrors tried),
/// [`MnistError::DownloadFailed`] if every mirror answered but none gave a copy that passes its
/// digest (each attempt is listed), [`MnistError::Io`] if `dir` or a file in it cannot be
/// written.
pub fn download_missing(dir: &Path, config: &DownloadConfig) -> Result<Vec<PathBuf>> {
    let missing: Vec<&RemoteFile> = config
        .files
        .iter()
        .filter(|f| !is_present(dir, &f.name))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(dir).map_err(|source| MnistError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let agent = agent(config);
    let mut written = Vec::new();
    for (k, file) in missing.iter().enumerate() {
        let mut attempts = Vec::new();
        let mut done = None;
        for base in config.mirrors.urls() {
            let url = format!("{base}{}", file.name);
            match fetch_one(&agent, &url, dir, file, config.progress)? {
                Ok(path) => {
                    done = Some(path);
                    break;
                }
                Err(failure) => attempts.push(DownloadAttempt { url, failure }),
            }
        }
        match done {
            Some(path) => written.push(path),
            None if attempts
                .iter()
                .all(|a| matches!(a.failure, DownloadFailure::Unreachable { .. })) =>
            {
                return Err(MnistError::Unreachable {
                    dataset: config.dataset.name(),
                    dir: dir.to_owned(),
                    missing: missing[k..].iter().map(|f| f.name.clone()).collect(),
                    mirrors: config.mirrors.urls().to_vec(),
                    dir_var: config.dataset.dir_var(),
                    mirror_var: config.dataset.mirror_var(),
                });
            }
            None => {
                return Err(MnistError::DownloadFailed {
                    file: file.name.clone(),
                    attempts,
                });
            }
        }
    }
    Ok(written)
}

/// Whether a file is in `dir` under its name or one of the variants [`Mnist::load`] accepts.
fn is_present(dir: &Path, name: &str) -> bool {
    STANDARD_FILES
        .iter()
        .find(|(stem, kind)| name.starts_with(&format!("{stem}-{kind}-ubyte")))
        .map_or_else(
            || dir.join(name).is_file(),
            |&(stem, kind)| find_one(dir, stem, kind).is_ok(),
        )
}

fn agent(config: &DownloadConfig) -> ureq::Agent {
    let proxy = if config.env_proxy {
        ureq::Proxy::try_from_env()
    } else {
        None
    };
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(config.timeout))
        .timeout_per_read(Some(config.timeout))
        .proxy(proxy)
        .build()
        .into()
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// One file from one mirror. The outer error is local (the disk); the inner one is the
/// mirror's, and the caller tries the next mirror.
fn fetch_one(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    file: &RemoteFile,
    progress: bool,
) -> Result<Result<PathBuf, DownloadFailure>> {
    let mut response = match agent.get(url).call() {
        Ok(r) => r,
        Err(e) => return Ok(Err(transport_failure(&e))),
    };
    let status = response.status().as_u16();
    if status != 200 {
        return Ok(Err(DownloadFailure::Status { status }));
    }
    let expected_len = response.body().content_length();
    // A good copy is at most as long as the decompressed file; a little slack covers the gzip
    // header of a file stored uncompressed. Without a content length there is no bound to check.
    let limit = file
        .content
        .as_ref()
        .map_or(u64::MAX, |(_, n)| n + (1 << 20));
    if let Some(n) = expected_len.filter(|&n| n > limit) {
        return Ok(Err(DownloadFailure::TooLarge { bytes: n, limit }));
    }

    let tmp_path = dir.join(format!(".{}.part-{}", file.name, std::process::id()));
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| MnistError::Io { path, source }
    };
    let mut out = File::create(&tmp_path).map_err(io_err(&tmp_path))?;
    let mut tmp = TempFile(Some(tmp_path.clone()));

    let bar = if progress {
        let bar = ProgressBar::with_draw_target(expected_len, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(file.name.clone());
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut reader = response.body_mut().with_config().limit(limit).reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Ok(Err(match expected_len {
                    Some(expected) if received < expected => {
                        DownloadFailure::Truncated { expected, received }
                    }
                    _ => DownloadFailure::Transport {
                        message: e.to_string(),
                    },
                }));
            }
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(&tmp_path))?;
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    if let Some(expected) = expected_len.filter(|&e| e != received) {
        return Ok(Err(DownloadFailure::Truncated { expected, received }));
    }
    out.sync_all().map_err(io_err(&tmp_path))?;
    drop(out);

    let digest = hex(&hasher.finalize());
    let name = if digest == file.sha256 {
        Some(file.name.clone())
    } else {
        accept_by_content(&tmp_path, &digest, file)
    };
    let Some(name) = name else {
        return Ok(Err(DownloadFailure::ChecksumMismatch {
            expected: file.sha256.clone(),
            found: digest,
        }));
    };
    let dest = dir.join(&name);
    fs::rename(&tmp_path, &dest).map_err(io_err(&dest))?;
    tmp.0 = None;
    if progress {
        eprintln!(
            "downloaded {url} ({received} bytes, SHA-256 verified) to {}",
            dest.display()
        );
    }
    Ok(Ok(dest))
}

/// The name to store a copy under if its decompressed contents match `file.content`: the
/// published name for a gzip stream, the name without `.gz` for a file served uncompressed.
fn accept_by_content(path: &Path, digest: &str, file: &RemoteFile) -> Option<String> {
    let (content_sha, content_len) = file.content.as_ref()?;
    let mut f = File::open(path).ok()?;
    let mut magic = [0u8; 2];
    let gzipped = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    if !gzipped {
        let plain = file.name.strip_suffix(".gz")?;
        return (digest == content_sha).then(|| plain.to_owned());
    }
    let f = File::open(path).ok()?;
    let mut decoder = MultiGzDecoder::new(BufReader::new(f)).take(content_len + 1);
    let mut hasher = Sha256::new();
    let n = io::copy(&mut decoder, &mut HashWriter(&mut hasher)).ok()?;
    (n == *content_len && hex(&hasher.finalize()) == *content_sha).then(|| file.name.clone())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn transport_failure(e: &ureq::Error) -> DownloadFailure {
    use ureq::Error as E;
    match e {
        E::HostNotFound | E::ConnectionFailed | E::Timeout(_) | E::ConnectProxyFailed(_) => {
            DownloadFailure::Unreachable {
                message: e.to_string(),
            }
        }
        E::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            DownloadFailure::Unreachable {
                message: e.to_string(),
            }
        }
        _ => DownloadFailure::Transport {
            message: e.to_string(),
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Mnist {
    /// Loads MNIST from `dir`, fetching the files that are missing there first.
    ///
    /// With `dir` `None`: `MNIST_DIR` if set, else `pare/mnist` in the platform cache directory
    /// (`~/.cache/pare/mnist` on Linux). The mirrors are those in `PARE_MNIST_MIRROR` if set,
    /// else [`DataSet::default_mirrors`]; every file fetched is checked against its published
    /// SHA-256 before it is written into place. Files already there are loaded as they are.
    ///
    /// ```no_run
    /// // MNIST_DIR, else ~/.cache/pare/mnist; downloads there what is missing.
    /// let mnist = pare_mnist::Mnist::load_or_download(None)?;
    /// assert_eq!(mnist.train().len(), 60_000);
    /// # Ok::<(), pare_mnist::MnistError>(())
    /// ```
    ///
    /// # Errors
    /// Everything [`download_missing`] and [`Mnist::load`] return.
    pub fn load_or_download(dir: Option<&Path>) -> Result<Self> {
        Self::load_or_download_with(dir, &DownloadConfig::new(DataSet::Mnist)?)
    }

    /// [`load_or_download`](Self::load_or_download) for Fashion-MNIST: `FASHION_MNIST_DIR`,
    /// else Debian's [`DEBIAN_FASHION_MNIST_DIR`] when it holds the files, else
    /// `pare/fashion-mnist` in the cache directory; mirrors from `PARE_FASHION_MNIST_MIRROR`.
    ///
    /// # Errors
    /// As [`load_or_download`](Self::load_or_download).
    pub fn fashion_load_or_download(dir: Option<&Path>) -> Result<Self> {
        Self::load_or_download_with(dir, &DownloadConfig::new(DataSet::FashionMnist)?)
    }

    /// [`load_or_download`](Self::load_or_download) with explicit mirrors, digests and
    /// timeouts; `dir` `None` is [`config.dataset.default_dir()`](DataSet::default_dir).
    ///
    /// # Errors
    /// As [`load_or_download`](Self::load_or_download).
    pub fn load_or_download_with(dir: Option<&Path>, config: &DownloadConfig) -> Result<Self> {
        let dir = match dir {
            Some(d) => d.to_owned(),
            None => config.dataset.default_dir()?,
        };
        download_missing(&dir, config)?;
        Self::load(&dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_lists_parse_and_check_their_scheme() {
        let m =
            Mirrors::parse(" http://127.0.0.1:8000/mnist, https://example.org/a/\tb").unwrap_err();
        assert!(
            matches!(&m, MnistError::BadMirror { url } if url == "b"),
            "{m:?}"
        );
        let m = Mirrors::parse("http://127.0.0.1:8000/mnist, https://h.invalid/a/").unwrap();
        assert_eq!(
            m.urls(),
            ["http://127.0.0.1:8000/mnist/", "https://h.invalid/a/"]
        );
        let m = Mirrors::parse("https://a.invalid https://b.invalid").unwrap();
        assert_eq!(m.urls().len(), 2);
        assert!(matches!(Mirrors::parse(" , "), Err(MnistError::NoMirrors)));
        let err = Mirrors::new(["ftp://x"]).unwrap_err();
        assert!(err.to_string().contains("ftp://x"), "{err}");
    }

    #[test]
    fn compiled_in_digests_are_sha256_hex_and_names_standard() {
        for ds in [DataSet::Mnist, DataSet::FashionMnist] {
            let files = ds.files();
            let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "train-images-idx3-ubyte.gz",
                    "train-labels-idx1-ubyte.gz",
                    "t10k-images-idx3-ubyte.gz",
                    "t10k-labels-idx1-ubyte.gz"
                ]
            );
            for f in &files {
                let (content, len) = f.content.clone().unwrap();
                for d in [&f.sha256, &content] {
                    assert_eq!(d.len(), 64);
                    assert!(
                        d.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    );
                }
                // IDX header (magic + dims) plus one byte per label or 28 x 28 per image.
                assert!([60_008, 10_008, 47_040_016, 7_840_016].contains(&len));
            }
            for m in ds.default_mirrors() {
                assert!(Mirrors::new([*m]).is_ok());
            }
        }
    }

    #[test]
    fn sha256_hex_matches_a_published_test_vector() {
        // FIPS 180-2, appendix B.1: SHA-256("abc").
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
