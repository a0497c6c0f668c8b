//! The download path against a small HTTP/1.1 server on 127.0.0.1 that each test starts itself:
//! nothing here reaches beyond this machine.
#![cfg(feature = "download")]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pare_mnist::{
    DataSet, DownloadConfig, DownloadFailure, IdxData, Mirrors, Mnist, MnistError, RemoteFile,
    download_missing, write_idx,
};
use sha2::{Digest, Sha256};

const NAMES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// What the server answers for one path.
#[derive(Clone)]
enum Reply {
    /// 200 with these bytes.
    Body(Vec<u8>),
    /// 404.
    NotFound,
    /// 200 announcing these bytes' length, then only the first half of them and a close.
    Truncated(Vec<u8>),
}

/// A one-connection-at-a-time HTTP/1.1 server on 127.0.0.1, stopped on drop (and in any case
/// after a minute).
struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: HashMap<String, Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => handle(stream, &routes, &log2),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("test server accept: {e}"),
                }
            }
        });
        Self {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// The base URL of mirror `prefix` on this server.
    fn mirror(&self, prefix: &str) -> String {
        format!("http://{}/{prefix}/", self.addr)
    }

    /// The paths requested so far, in order.
    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(mut stream: TcpStream, routes: &HashMap<String, Reply>, log: &Mutex<Vec<String>>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    log.lock().unwrap().push(path.clone());
    let reply = routes.get(&path).cloned().unwrap_or(Reply::NotFound);
    let (status, announced, body) = match &reply {
        Reply::Body(b) => ("200 OK", b.len(), &b[..]),
        Reply::NotFound => ("404 Not Found", 9, &b"not found"[..]),
        Reply::Truncated(b) => ("200 OK", b.len(), &b[..b.len() / 2]),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {announced}\r\nContent-Type: application/gzip\r\n\
         Connection: close\r\n\r\n"
    );
    let _ = stream.write_all(header.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("pare-download-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything in `dir`, sorted (temporary `.part` files included).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A small MNIST-format set (8 training, 4 test images of 5 x 5): the four gzipped files and
/// their decompressed bytes, in the order of [`NAMES`].
fn synthetic_set() -> Vec<(Vec<u8>, Vec<u8>)> {
    let tmp = TempDir::new("synthetic");
    std::fs::create_dir_all(&tmp.0).unwrap();
    let mut out = Vec::new();
    for (k, name) in NAMES.iter().enumerate() {
        let n = if k < 2 { 8 } else { 4 };
        let data = if k % 2 == 0 {
            let pixels: Vec<u8> = (0..n * 25).map(|i| (i * 37 % 256) as u8).collect();
            IdxData::new(vec![n, 5, 5], pixels).unwrap()
        } else {
            IdxData::new(vec![n], (0..n).map(|i| (i % 10) as u8).collect::<Vec<u8>>()).unwrap()
        };
        let plain = tmp.0.join(name.trim_end_matches(".gz"));
        write_idx(&plain, &data, false).unwrap();
        write_idx(tmp.0.join(name), &data, true).unwrap();
        out.push((
            std::fs::read(tmp.0.join(name)).unwrap(),
            std::fs::read(&plain).unwrap(),
        ));
    }
    out
}

/// The digests a download of `set` must match, as [`DataSet::files`] gives them for MNIST.
fn remote_files(set: &[(Vec<u8>, Vec<u8>)]) -> Vec<RemoteFile> {
    NAMES
        .iter()
        .zip(set)
        .map(|(name, (gz, raw))| RemoteFile {
            name: (*name).to_owned(),
            sha256: sha256_hex(gz),
            content: Some((sha256_hex(raw), raw.len() as u64)),
        })
        .collect()
}

/// A configuration that fetches from `mirrors` only, with no proxy and no progress output.
fn config(mirrors: &[String], files: Vec<RemoteFile>) -> DownloadConfig {
    DownloadConfig {
        dataset: DataSet::Mnist,
        mirrors: Mirrors::new(mirrors.iter().cloned()).unwrap(),
        files,
        timeout: Duration::from_secs(10),
        progress: false,
        env_proxy: false,
    }
}

fn routes(
    prefix: &str,
    bodies: impl IntoIterator<Item = (usize, Reply)>,
) -> HashMap<String, Reply> {
    bodies
        .into_iter()
        .map(|(k, r)| (format!("/{prefix}/{}", NAMES[k]), r))
        .collect()
}

/// Where the build script found MNIST: `MNIST_DIR`, else the shared copy beside the checkout,
/// else pare's download cache (a fresh machine after its first download).
fn mnist_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MNIST_DIR").filter(|d| !d.is_empty()) {
        return Path::new(env!("CARGO_MANIFEST_DIR")).join(d);
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("pare/mnist"));
    std::iter::once(shared.clone())
        .chain(cache)
        .find(|d| d.is_dir())
        .unwrap_or(shared)
}

/// The real MNIST files, served by a mirror, pass the digests compiled into the crate (the
/// copies here are re-compressed, so this checks the decompressed-contents digests; the
/// published `.gz` digests are checked by the next test's logic on synthetic data), land under
/// their names with no temporary file left, and load as the 60,000 + 10,000 digits. A second
/// call finds them and asks the mirror for nothing.
#[test]
#[cfg_attr(not(pare_mnist), ignore = "needs MNIST: set MNIST_DIR")]
fn real_files_download_verify_and_load() {
    let src = mnist_dir();
    let replies = NAMES.iter().enumerate().map(|(k, name)| {
        let bytes = std::fs::read(src.join(name))
            .unwrap_or_else(|e| panic!("MNIST_DIR={}: {name}: {e}", src.display()));
        (k, Reply::Body(bytes))
    });
    let server = Server::start(routes("mnist", replies));
    let dest = TempDir::new("real");
    let mut cfg = DownloadConfig::new(DataSet::Mnist).unwrap();
    cfg.mirrors = Mirrors::new([server.mirror("mnist")]).unwrap();
    cfg.progress = false;
    cfg.env_proxy = false;
    assert_eq!(cfg.files, DataSet::Mnist.files());

    let m = Mnist::load_or_download_with(Some(&dest.0), &cfg).unwrap();
    assert_eq!(m.train().len(), 60_000);
    assert_eq!(m.test().len(), 10_000);
    assert_eq!(m.test().labels()[0], 7);
    assert_eq!(listing(&dest.0), {
        let mut n = NAMES.to_vec();
        n.sort();
        n
    });
    assert_eq!(server.requests().len(), 4);
    Mnist::load_or_download_with(Some(&dest.0), &cfg).unwrap();
    assert_eq!(
        server.requests().len(),
        4,
        "files present must not be fetched again"
    );
}

/// A mirror that answers 404 is skipped for the next one, file by file, in the order given.
#[test]
fn not_found_then_good_mirror() {
    let set = synthetic_set();
    let good = routes(
        "good",
        set.iter()
            .enumerate()
            .map(|(k, (gz, _))| (k, Reply::Body(gz.clone()))),
    );
    let server = Server::start(good);
    let dest = TempDir::new("404");
    let cfg = config(
        &[server.mirror("missing"), server.mirror("good")],
        remote_files(&set),
    );
    let m = Mnist::load_or_download_with(Some(&dest.0), &cfg).unwrap();
    assert_eq!((m.train().len(), m.test().len()), (8, 4));
    assert_eq!(m.image_size(), (5, 5));
    let expected: Vec<String> = NAMES
        .iter()
        .flat_map(|n| [format!("/missing/{n}"), format!("/good/{n}")])
        .collect();
    assert_eq!(server.requests(), expected);
    for (name, (gz, _)) in NAMES.iter().zip(&set) {
        assert_eq!(&std::fs::read(dest.0.join(name)).unwrap(), gz);
    }
}

/// Only the missing file is fetched; the ones present are left as they are.
#[test]
fn only_missing_files_are_fetched() {
    let set = synthetic_set();
    let dest = TempDir::new("partial");
    std::fs::create_dir_all(&dest.0).unwrap();
    for k in [0, 1, 3] {
        // Present under another accepted spelling: uncompressed.
        std::fs::write(dest.0.join(NAMES[k].trim_end_matches(".gz")), &set[k].1).unwrap();
    }
    let server = Server::start(routes("m", [(2, Reply::Body(set[2].0.clone()))]));
    let cfg = config(&[server.mirror("m")], remote_files(&set));
    let written = download_missing(&dest.0, &cfg).unwrap();
    assert_eq!(written, [dest.0.join(NAMES[2])]);
    assert_eq!(server.requests(), [format!("/m/{}", NAMES[2])]);
    Mnist::load(&dest.0).unwrap();
}

/// A body cut short of its announced length is an error naming both lengths, and nothing of
/// it stays on disk.
#[test]
fn truncated_download_is_deleted_and_reported() {
    let set = synthetic_set();
    let server = Server::start(routes("m", [(0, Reply::Truncated(set[0].0.clone()))]));
    let dest = TempDir::new("truncated");
    let cfg = config(&[server.mirror("m")], remote_files(&set));
    let err = download_missing(&dest.0, &cfg).unwrap_err();
    let full = set[0].0.len() as u64;
    match &err {
        MnistError::DownloadFailed { file, attempts } => {
            assert_eq!(file, NAMES[0]);
            assert_eq!(attempts.len(), 1);
            assert_eq!(
                attempts[0].failure,
                DownloadFailure::Truncated {
                    expected: full,
                    received: full / 2
                }
            );
        }
        other => panic!("expected DownloadFailed, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains(&format!("{} of the {full}", full / 2)),
        "{err}"
    );
    assert!(listing(&dest.0).is_empty(), "{:?}", listing(&dest.0));
}

/// A complete body with one flipped byte fails its digest: it is deleted, the error gives both
/// digests, and a good second mirror is then used.
#[test]
fn corrupt_download_is_deleted_and_next_mirror_used() {
    let set = synthetic_set();
    let mut corrupt = set[1].0.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x40;
    let bad = sha256_hex(&corrupt);
    let mut r = routes("bad", [(1, Reply::Body(corrupt))]);
    r.extend(routes("good", [(1, Reply::Body(set[1].0.clone()))]));
    let server = Server::start(r);
    let files = remote_files(&set);
    // Only the training labels are asked for (as if the other three were present).
    let only_labels = vec![files[1].clone()];

    let alone = TempDir::new("corrupt");
    let err = download_missing(
        &alone.0,
        &config(&[server.mirror("bad")], only_labels.clone()),
    )
    .unwrap_err();
    let MnistError::DownloadFailed { attempts, .. } = &err else {
        panic!("expected DownloadFailed, got {err:?}");
    };
    assert_eq!(
        attempts[0].failure,
        DownloadFailure::ChecksumMismatch {
            expected: files[1].sha256.clone(),
            found: bad
        }
    );
    assert!(listing(&alone.0).is_empty(), "{:?}", listing(&alone.0));

    let dest = TempDir::new("corrupt-then-good");
    let written = download_missing(
        &dest.0,
        &config(&[server.mirror("bad"), server.mirror("good")], only_labels),
    )
    .unwrap();
    assert_eq!(written, [dest.0.join(NAMES[1])]);
    assert_eq!(std::fs::read(&written[0]).unwrap(), set[1].0);
    assert_eq!(listing(&dest.0), [NAMES[1]]);
}

/// A mirror that re-compressed a file (other gzip bytes, same contents) or serves it
/// uncompressed passes on the digest of the contents; a file with neither digest fails.
#[test]
fn recompressed_and_uncompressed_copies_pass_on_their_contents() {
    use flate2::{Compression, write::GzEncoder};
    let set = synthetic_set();
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(&set[0].1).unwrap();
    let recompressed = enc.finish().unwrap();
    assert_ne!(recompressed, set[0].0);
    let server = Server::start(routes(
        "m",
        [
            (0, Reply::Body(recompressed.clone())),
            (1, Reply::Body(set[1].1.clone())),
            (2, Reply::Body(set[2].0.clone())),
            (3, Reply::Body(set[3].0.clone())),
        ],
    ));
    let dest = TempDir::new("contents");
    let cfg = config(&[server.mirror("m")], remote_files(&set));
    let written = download_missing(&dest.0, &cfg).unwrap();
    // The uncompressed labels are stored under the uncompressed name.
    assert_eq!(written[1], dest.0.join("train-labels-idx1-ubyte"));
    assert_eq!(std::fs::read(&written[0]).unwrap(), recompressed);
    let m = Mnist::load(&dest.0).unwrap();
    assert_eq!(m.train().labels(), &[0, 1, 2, 3, 4, 5, 6, 7]);

    // Without the contents digest only the published bytes pass.
    let mut strict = remote_files(&set);
    strict[0].content = None;
    let dest = TempDir::new("strict");
    let err = download_missing(&dest.0, &config(&[server.mirror("m")], strict)).unwrap_err();
    assert!(
        matches!(&err, MnistError::DownloadFailed { attempts, .. }
            if matches!(attempts[0].failure, DownloadFailure::ChecksumMismatch { .. })),
        "{err:?}"
    );
    assert!(listing(&dest.0).is_empty());
}

/// With no mirror reachable and no files, one line says which files are missing, where to put
/// them, the variables to set and the mirrors tried; nothing is left behind.
#[test]
fn nothing_reachable_is_one_line() {
    // Ports that were just free: nothing listens there, so connections are refused.
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/mnist/", l.local_addr().unwrap())
        })
        .collect();
    let dest = TempDir::new("offline");
    let mut cfg = DownloadConfig::new(DataSet::Mnist).unwrap();
    cfg.mirrors = Mirrors::new(closed.clone()).unwrap();
    cfg.progress = false;
    cfg.env_proxy = false;
    let err = Mnist::load_or_download_with(Some(&dest.0), &cfg).unwrap_err();
    assert!(
        matches!(&err, MnistError::Unreachable { missing, mirrors, .. }
            if missing.len() == 4 && mirrors == &closed),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    for needle in NAMES
        .iter()
        .copied()
        .chain(closed.iter().map(String::as_str))
        .chain(["MNIST_DIR", "PARE_MNIST_MIRROR"])
    {
        assert!(msg.contains(needle), "{needle} not in: {msg}");
    }
    assert!(msg.contains(&dest.0.display().to_string()), "{msg}");
    assert!(listing(&dest.0).is_empty(), "{:?}", listing(&dest.0));
}

/// Debian's Fashion-MNIST files, served by a mirror, pass the Fashion-MNIST digests compiled in.
#[test]
// Runs wherever the files are installed (build.rs's `pare_fashion_mnist`); it was ignored
// unconditionally before, and so never ran.
#[cfg_attr(
    not(pare_fashion_mnist),
    ignore = "needs /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)"
)]
fn fashion_files_pass_their_digests() {
    let src = Path::new(pare_mnist::DEBIAN_FASHION_MNIST_DIR);
    let replies = NAMES
        .iter()
        .enumerate()
        .map(|(k, name)| (k, Reply::Body(std::fs::read(src.join(name)).unwrap())));
    let server = Server::start(routes("fashion", replies));
    let dest = TempDir::new("fashion");
    let mut cfg = DownloadConfig::new(DataSet::FashionMnist).unwrap();
    cfg.mirrors = Mirrors::new([server.mirror("fashion")]).unwrap();
    cfg.progress = false;
    cfg.env_proxy = false;
    let m = Mnist::load_or_download_with(Some(&dest.0), &cfg).unwrap();
    assert_eq!((m.train().len(), m.test().len()), (60_000, 10_000));
    // Fashion-MNIST's first training image is an ankle boot (class 9).
    assert_eq!(m.train().labels()[0], 9);
}
