//! Hostile input: a small valid file of every kind pare reads, corrupted in well over 10,000
//! seeded ways each, must load as a typed error or a valid value — never a panic, never an
//! allocation out of proportion to the file. Files that carry checksums must moreover never
//! load as anything but the original after a byte of them changes.
//!
//! Its own test binary, so a counting global allocator can measure the peak live bytes of
//! every load (parse and decode). The bounds checked, for a corrupted file of `n` bytes:
//!
//! - checkpoints, int8 model files (dense or sparse-coded), pruned f32 files, raw IDX and the
//!   bitmask format: `64 n + 1 MiB` (a bitmask byte decodes to 8 elements of up to 4 bytes;
//!   the MiB is parser bookkeeping);
//! - gzipped IDX: `2 · 1032 n + 1 MiB` (DEFLATE's largest expansion, and one doubling of the
//!   read buffer);
//! - bare gap and entropy streams: `4 · 2^14 n + 1 MiB` (both formats cap a stream at 2^14
//!   decoded elements per byte; a few bytes may rightly stand for many zeros).
//!
//! The largest peak of each kind, and the largest share of its bound any load used, are
//! printed.
//!
//! `cargo test --release --test corruption -- --nocapture` shows the counts and times;
//! `cargo test --release --test corruption -- --ignored write_fuzz_seeds` writes the fuzz
//! targets' seed corpora under `fuzz/corpus/` from the same files.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use pare::codecs::SparseCodec;
use pare::mnist::{IdxData, read_idx_bytes, write_idx};
use pare::prune::file::{decode_i8, load_sparse_bytes, to_sparse_bytes};
use pare::prune::sparse::SparseTensor;
use pare::prune::{EntropyCoded, GapCoded};
use pare::quant::{ConvertConfig, QuantizedModel, convert};
use pare::tensor::nn::{Conv2d, Dense, Flatten, GlobalAveragePool2d, MaxPool2d, ReLU};
use pare::tensor::{Activation, Sequential, checkpoint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are only
// bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc` and `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counters are global: one measurement at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;

/// What a load returned, in a form two loads can be compared by without allocating: a hash of
/// the value.
type Loaded = Result<u64, String>;

fn hash_of(f: impl FnOnce(&mut DefaultHasher)) -> u64 {
    let mut h = DefaultHasher::new();
    f(&mut h);
    h.finish()
}

/// One reader under test.
struct Case {
    kind: &'static str,
    /// The valid file.
    bytes: Vec<u8>,
    /// Whether the file carries checksums (a changed byte must then not load as a different
    /// value).
    checked: bool,
    load: fn(&[u8]) -> Loaded,
    /// The most a load of `n` bytes may allocate.
    bound: fn(usize) -> usize,
}

/// Containers, raw IDX and the bitmask format: a decoded bitmask byte stands for 8 elements
/// of up to 4 bytes (32 times its size); the MiB covers parser bookkeeping.
fn small_multiple(n: usize) -> usize {
    64 * n + MIB
}

/// Gzip: DEFLATE expands at most 1032:1, and the read buffer may double once past its guess.
fn gzip_bound(n: usize) -> usize {
    2 * 1032 * n + MIB
}

/// Gap and entropy streams describe runs of zeros in few bits; both formats cap the decoded
/// size at `ELEMENTS_PER_BYTE` (2^14) elements per input byte, of up to 4 bytes each.
fn stream_bound(n: usize) -> usize {
    4 * pare::prune::entropy::ELEMENTS_PER_BYTE * n + MIB
}

/// A 10x10x1 → conv 3x3x4 (relu) → pool 2 → flatten 64 → dense 10 network: 690 parameters.
fn tiny_model(seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new(&[10, 10, 1])
        .push(Conv2d::new("conv2d", 1, 4, [3, 3], &mut rng).activation(Activation::Relu))
        .push(MaxPool2d::new("max_pooling2d", 2))
        .push(Flatten::new("flatten"))
        .push(Dense::new("dense", 64, 10, &mut rng))
}

/// [`tiny_model`] with 80 % of each kernel's weights (the smallest) set to zero.
fn pruned_tiny() -> Sequential {
    let mut m = tiny_model(1);
    for name in ["conv2d.kernel", "dense.kernel"] {
        let p = m.param_mut(name).expect("kernel");
        let mask = pare::prune::mask::magnitude_mask(p.value.view(), 0.8).expect("mask");
        pare::prune::mask::apply_mask(p.value.view_mut(), mask.view()).expect("apply");
    }
    m
}

/// A 10x10x1 graph: conv 3x3x2 (relu) added to a 1x1 conv of the input (relu fused), joined
/// with a third conv, global average pool, dense 3 — every kind of wiring the file stores.
fn tiny_graph(seed: u64) -> pare::tensor::nn::Model {
    let mut rng = StdRng::seed_from_u64(seed);
    let same = pare::tensor::Padding::Same;
    pare::tensor::nn::Model::functional(&[10, 10, 1])
        .node(
            Conv2d::new("a", 1, 2, [3, 3], &mut rng)
                .padding(same)
                .activation(Activation::Relu),
            &["input"],
        )
        .node(Conv2d::new("skip", 1, 2, [1, 1], &mut rng), &["input"])
        .node(pare::tensor::Add::new("add"), &["a", "skip"])
        .node(ReLU::new("relu"), &["add"])
        .node(Conv2d::new("b", 2, 2, [1, 1], &mut rng), &["a"])
        .node(pare::tensor::Concatenate::new("cat"), &["relu", "b"])
        .node(GlobalAveragePool2d::new("gap"), &["cat"])
        .node(Dense::new("dense", 4, 3, &mut rng), &["gap"])
        .build()
        .expect("tiny_graph: valid wiring")
}

fn calibration() -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[8, 10, 10, 1]), |i| {
        ((i[0] * 7 + i[1] * 3 + i[2]) % 11) as f32 / 10.0
    })
}

fn params_hash(m: &Sequential) -> u64 {
    hash_of(|h| {
        for p in m.params() {
            p.name.hash(h);
            p.value.shape().hash(h);
            p.value.iter().for_each(|v| v.to_bits().hash(h));
        }
    })
}

fn load_idx(b: &[u8]) -> Loaded {
    use pare::mnist::IdxValues;
    let d = read_idx_bytes(b, Path::new("t")).map_err(|e| e.to_string())?;
    Ok(hash_of(|h| {
        d.dims().hash(h);
        match d.values() {
            IdxValues::U8(v) => v.hash(h),
            IdxValues::I8(v) => v.hash(h),
            IdxValues::I16(v) => v.hash(h),
            IdxValues::I32(v) => v.hash(h),
            IdxValues::F32(v) => v.iter().for_each(|x| x.to_bits().hash(h)),
            IdxValues::F64(v) => v.iter().for_each(|x| x.to_bits().hash(h)),
        }
    }))
}

fn load_checkpoint(b: &[u8]) -> Loaded {
    let mut m = tiny_model(9);
    checkpoint::load_bytes(&mut m, b, Path::new("t"))
        .map(|_| params_hash(&m))
        .map_err(|e| e.to_string())
}

fn load_int8(b: &[u8]) -> Loaded {
    let (q, _) =
        QuantizedModel::from_bytes_verified(b, Some(&SparseCodec)).map_err(|e| e.to_string())?;
    let bytes = q.to_bytes_with(&SparseCodec).map_err(|e| e.to_string())?;
    Ok(hash_of(|h| bytes.hash(h)))
}

fn load_sparse_file(b: &[u8]) -> Loaded {
    let mut m = tiny_model(9);
    load_sparse_bytes(&mut m, b)
        .map(|_| params_hash(&m))
        .map_err(|e| e.to_string())
}

/// Elements hashed by their bits (f32 has no `Hash`).
trait Bits: Copy {
    fn bits(self) -> u32;
}
impl Bits for i8 {
    fn bits(self) -> u32 {
        self as u8 as u32
    }
}
impl Bits for f32 {
    fn bits(self) -> u32 {
        self.to_bits()
    }
}

fn values<T: Bits>(a: ArrayD<T>) -> u64 {
    hash_of(|h| {
        a.shape().hash(h);
        a.iter().for_each(|v| v.bits().hash(h));
    })
}

fn load_bitmask(b: &[u8]) -> Loaded {
    let i = SparseTensor::<i8>::from_bytes(b).map(|t| values(t.decode()));
    let f = SparseTensor::<f32>::from_bytes(b).map(|t| values(t.decode()));
    i.or(f).map_err(|e| e.to_string())
}

fn load_gaps(b: &[u8]) -> Loaded {
    let i = GapCoded::<i8>::from_bytes(b).map(|t| values(t.decode()));
    let f = GapCoded::<f32>::from_bytes(b).map(|t| values(t.decode()));
    i.or(f).map_err(|e| e.to_string())
}

fn load_entropy(b: &[u8]) -> Loaded {
    let _ = decode_i8(&[64, 10], b);
    EntropyCoded::decode_bytes(b)
        .map(values)
        .map_err(|e| e.to_string())
}

/// Drops the checksum entries of a safetensors file, as a file from an older pare or another
/// tool would be: corruptions then reach the parsers instead of stopping at a checksum.
fn without_checksums(bytes: &[u8]) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).expect("valid");
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).expect("valid");
    let mut meta = header.metadata().clone().unwrap_or_default();
    meta.retain(|k, _| !pare::tensor::io::is_checksum_key(k));
    safetensors::serialize(st.tensors(), Some(meta)).expect("serialize")
}

fn idx_bytes(gzip: bool) -> Vec<u8> {
    let dims = vec![6, 5, 4];
    let values: Vec<u8> = (0..120u32).map(|i| (i * 37 % 251) as u8).collect();
    let data = IdxData::new(dims, values).expect("idx");
    let dir = std::env::temp_dir().join(format!("pare-corruption-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(if gzip { "a.idx3.gz" } else { "a.idx3" });
    write_idx(&path, &data, gzip).expect("write idx");
    let bytes = std::fs::read(&path).expect("read back");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// An int8 kernel shaped like the tiny model's dense layer, 80 % zeros.
fn sparse_kernel() -> ArrayD<i8> {
    ArrayD::from_shape_fn(IxDyn(&[64, 10]), |i| {
        let h = (i[0] * 31 + i[1] * 17) % 23;
        if h < 5 { h as i8 * 9 - 20 } else { 0 }
    })
}

/// Every case, in a fixed order.
fn cases() -> Vec<Case> {
    let model = tiny_model(0);
    let pruned = pruned_tiny();
    let ckpt = {
        let params = model.params();
        let named: Vec<(String, &ArrayD<f32>)> =
            params.iter().map(|p| (p.name.clone(), &p.value)).collect();
        let meta = HashMap::from([("model".to_string(), "tiny".to_string())]);
        pare::tensor::io::f32_tensors_bytes(&named, Some(meta)).expect("checkpoint")
    };
    let q = convert(&model, calibration().view(), &ConvertConfig::default()).expect("int8");
    let int8 = q.to_bytes().expect("int8 bytes");
    let qg = convert(
        &tiny_graph(2),
        calibration().view(),
        &ConvertConfig::default(),
    )
    .expect("int8 graph");
    let graph = qg.to_bytes().expect("int8 graph bytes");
    // int4 weights: kernels packed two per byte in `<layer>.kernel.int4` tensors.
    let int4_cfg = ConvertConfig {
        weight_bits: pare::quant::WeightBits::Int4,
        ..ConvertConfig::default()
    };
    let q4 = convert(&model, calibration().view(), &int4_cfg).expect("int4");
    let int4 = q4.to_bytes().expect("int4 bytes");
    let qp = convert(&pruned, calibration().view(), &ConvertConfig::default()).expect("int8");
    let int8_sparse = qp.to_bytes_with(&SparseCodec).expect("sparse int8 bytes");
    assert!(
        int8_sparse.len() < int8.len(),
        "the codec encoded the pruned kernels"
    );
    let sparse_file = to_sparse_bytes(&pruned, HashMap::new()).expect("sparse file");
    let k = sparse_kernel();
    let f = k.mapv(|v| f32::from(v) / 8.0);
    let case = |kind, bytes, checked, load| Case {
        kind,
        bytes,
        checked,
        load,
        bound: small_multiple,
    };
    let with_bound = |c: Case, bound| Case { bound, ..c };
    vec![
        case("IDX raw", idx_bytes(false), false, load_idx),
        with_bound(case("IDX gz", idx_bytes(true), false, load_idx), gzip_bound),
        case("checkpoint", ckpt.clone(), true, load_checkpoint),
        case(
            "checkpoint, no checksums",
            without_checksums(&ckpt),
            false,
            load_checkpoint,
        ),
        case("int8 model", int8.clone(), true, load_int8),
        case("int4 model", int4.clone(), true, load_int8),
        case("int8 graph model", graph.clone(), true, load_int8),
        case(
            "int8 graph model, no checksums",
            without_checksums(&graph),
            false,
            load_int8,
        ),
        case(
            "int4 model, no checksums",
            without_checksums(&int4),
            false,
            load_int8,
        ),
        case(
            "int8 model, no checksums",
            without_checksums(&int8),
            false,
            load_int8,
        ),
        case(
            "int8 model, sparse-coded",
            int8_sparse.clone(),
            true,
            load_int8,
        ),
        case(
            "int8 model, sparse-coded, no checksums",
            without_checksums(&int8_sparse),
            false,
            load_int8,
        ),
        case(
            "pruned f32 file",
            sparse_file.clone(),
            true,
            load_sparse_file,
        ),
        case(
            "pruned f32 file, no checksums",
            without_checksums(&sparse_file),
            false,
            load_sparse_file,
        ),
        case(
            "bitmask i8",
            SparseTensor::encode(k.view()).expect("enc").to_bytes(),
            false,
            load_bitmask,
        ),
        case(
            "bitmask f32",
            SparseTensor::encode(f.view()).expect("enc").to_bytes(),
            false,
            load_bitmask,
        ),
        with_bound(
            case(
                "gaps i8",
                GapCoded::encode(k.view()).expect("enc").to_bytes(),
                false,
                load_gaps,
            ),
            stream_bound,
        ),
        with_bound(
            case(
                "gaps f32",
                GapCoded::encode(f.view()).expect("enc").to_bytes(),
                false,
                load_gaps,
            ),
            stream_bound,
        ),
        with_bound(
            case(
                "entropy i8",
                EntropyCoded::encode(k.view()).expect("enc").to_bytes(),
                false,
                load_entropy,
            ),
            stream_bound,
        ),
    ]
}

/// Values that break length, shape and count fields: zero, one past small, the top of each
/// width, and values whose products overflow.
const FIELD_VALUES: [u64; 9] = [
    0,
    1,
    0xFF,
    0xFFFF,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 62,
    u64::MAX,
];

/// `bytes` with the safetensors header's JSON edited by `edit` and the length prefix redone.
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut String)) -> Option<Vec<u8>> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let mut json = String::from_utf8(bytes.get(8..8 + n)?.to_vec()).ok()?;
    edit(&mut json);
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json.as_bytes());
    out.extend(&bytes[8 + n..]);
    Some(out)
}

/// Byte ranges of the decimal numbers in a safetensors header (shapes, offsets, and numbers
/// inside metadata values such as `3x3x1x4` or `n=8`).
fn header_numbers(bytes: &[u8]) -> Vec<(usize, usize)> {
    let Some(json) = with_header(bytes, |_| {}).and_then(|b| {
        let n = u64::from_le_bytes(b[..8].try_into().ok()?) as usize;
        String::from_utf8(b[8..8 + n].to_vec()).ok()
    }) else {
        return vec![];
    };
    let mut out = vec![];
    let b = json.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Every corruption of case `i` (its file, with `others` for splices), each with a label.
fn corruptions(c: &Case, others: &[&[u8]], seed: u64) -> Vec<(String, Vec<u8>)> {
    let b = &c.bytes;
    let n = b.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..4000 {
        let (at, bit) = (rng.random_range(0..n), rng.random_range(0..8));
        let mut m = b.clone();
        m[at] ^= 1 << bit;
        out.push((format!("flip bit {bit} of byte {at}"), m));
    }
    for _ in 0..3000 {
        let at = rng.random_range(0..n);
        let v = if rng.random_bool(0.5) { 0x00 } else { 0xFF };
        let mut m = b.clone();
        m[at] = v;
        out.push((format!("byte {at} = {v:#04x}"), m));
    }
    // Truncation at every length (the files are a few KiB).
    for len in 0..n {
        out.push((format!("truncated to {len}"), b[..len].to_vec()));
    }
    // Binary fields: every position of the first 96 bytes overwritten as a 1-, 2-, 4- or 8-byte
    // field, little- and big-endian, with each field value.
    for at in 0..n.min(96) {
        for width in [1usize, 2, 4, 8] {
            if at + width > n {
                continue;
            }
            for v in FIELD_VALUES {
                for be in [false, true] {
                    let mut m = b.clone();
                    let le = v.to_le_bytes();
                    let field: Vec<u8> = if be {
                        v.to_be_bytes()[8 - width..].to_vec()
                    } else {
                        le[..width].to_vec()
                    };
                    m[at..at + width].copy_from_slice(&field);
                    out.push((format!("{width}-byte field at {at} = {v} (be {be})"), m));
                }
            }
        }
    }
    // Two little-endian u64 fields at once, one 0 and one huge: an empty dimension beside
    // huge ones holds no element, yet is no shape an array can have (the fuzzers found this).
    for i in (0..n.min(64)).step_by(4) {
        for j in (0..n.min(64)).step_by(4) {
            if i == j || i + 8 > n || j + 8 > n || i.abs_diff(j) < 8 {
                continue;
            }
            for huge in [1u64 << 40, 1 << 63, u64::MAX] {
                let mut m = b.clone();
                m[i..i + 8].copy_from_slice(&0u64.to_le_bytes());
                m[j..j + 8].copy_from_slice(&huge.to_le_bytes());
                // And cut after the later field plus a zero u64: a header with nothing stored
                // (nnz = 0), as a forged file would be.
                let mut short = m[..i.max(j) + 8].to_vec();
                short.extend(0u64.to_le_bytes());
                out.push((
                    format!("u64 at {i} = 0 and at {j} = {huge}, header only"),
                    short,
                ));
                out.push((format!("u64 at {i} = 0 and at {j} = {huge}"), m));
            }
        }
    }
    // Safetensors headers: every number set to each field value, and pairs of numbers set to
    // 2^32 (products overflow u64 at three of them, usize products at two).
    let numbers = header_numbers(b);
    let edit_numbers = |picks: &[(usize, usize)], v: u64| {
        with_header(b, |json| {
            let mut s = json.clone();
            for &(start, end) in picks.iter().rev() {
                s.replace_range(start..end, &v.to_string());
            }
            *json = s;
        })
    };
    for (k, &span) in numbers.iter().enumerate() {
        for v in FIELD_VALUES {
            if let Some(m) = edit_numbers(&[span], v) {
                out.push((format!("header number {k} = {v}"), m));
            }
        }
    }
    for k in 0..numbers.len().saturating_sub(2) {
        let picks = [numbers[k], numbers[k + 1], numbers[k + 2]];
        for v in [1u64 << 32, 1 << 22, u32::MAX as u64] {
            if let Some(m) = edit_numbers(&picks, v) {
                out.push((format!("header numbers {k}..{} = {v}", k + 3), m));
            }
        }
    }
    // Graph wiring: each `in=` list of the layers entry replaced by unknown, later, own,
    // too many, too few, empty and badly escaped names (the checksum-free cases reach the
    // wiring checks; the others must fail on the header's checksum).
    let lists =
        with_header(b, |_| {}).map_or(0, |_| String::from_utf8_lossy(b).matches("in=").count());
    let names = [
        "nope",
        "",
        "dense",
        "gap",
        "cat",
        "input,input,input",
        "a",
        "a,a",
        "%ZZ",
        "a,",
        ",",
        "input;x",
    ];
    for k in 0..lists {
        for v in names {
            let edited = with_header(b, |json| {
                let Some((at, _)) = json.match_indices("in=").nth(k) else {
                    return;
                };
                let start = at + 3;
                let end = json[start..]
                    .find([' ', ';', '"'])
                    .map_or(json.len(), |e| start + e);
                json.replace_range(start..end, v);
            });
            if let Some(m) = edited {
                out.push((format!("in= list {k} = {v:?}"), m));
            }
        }
    }
    // Splices: a prefix of this file and a suffix of another (or of itself, shifted).
    for _ in 0..1500 {
        let other = others[rng.random_range(0..others.len())];
        let cut = rng.random_range(0..=n);
        let from = rng.random_range(0..=other.len());
        let mut m = b[..cut].to_vec();
        m.extend(&other[from..]);
        out.push((format!("splice {cut} + other[{from}..]"), m));
    }
    out
}

struct Outcome {
    loads: usize,
    errors: usize,
    peak: usize,
    /// Largest peak as a fraction of the bound.
    worst: f64,
    failures: Vec<String>,
}

fn run_case(c: &Case, others: &[&[u8]], seed: u64) -> Outcome {
    let original = (c.load)(&c.bytes).unwrap_or_else(|e| panic!("{}: the valid file: {e}", c.kind));
    let mut o = Outcome {
        loads: 0,
        errors: 0,
        peak: 0,
        worst: 0.0,
        failures: vec![],
    };
    for (label, m) in corruptions(c, others, seed) {
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let r = catch_unwind(AssertUnwindSafe(|| (c.load)(&m)));
        let peak = PEAK.load(Relaxed).saturating_sub(base);
        o.loads += 1;
        o.peak = o.peak.max(peak);
        o.worst = o.worst.max(peak as f64 / (c.bound)(m.len()) as f64);
        if peak > (c.bound)(m.len()) {
            o.failures
                .push(format!("{}: {label}: {peak} bytes allocated", c.kind));
        }
        match r {
            Err(_) => o.failures.push(format!("{}: {label}: panicked", c.kind)),
            Ok(Err(_)) => o.errors += 1,
            Ok(Ok(v)) => {
                // One changed byte in a checksummed file: damage is an error, and what loads
                // is exactly the original (a changed padding space, say).
                let one_byte = m.len() == c.bytes.len()
                    && m.iter().zip(&c.bytes).filter(|(a, b)| a != b).count() <= 1;
                if c.checked && one_byte && v != original {
                    o.failures
                        .push(format!("{}: {label}: loaded a different value", c.kind));
                }
            }
        }
    }
    o
}

#[test]
fn every_reader_survives_ten_thousand_corruptions_per_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let cases = cases();
    let all: Vec<&[u8]> = cases.iter().map(|c| c.bytes.as_slice()).collect();
    let mut failures = Vec::new();
    eprintln!(
        "{:<40} {:>6} {:>7} {:>7} {:>10} {:>8}",
        "file", "bytes", "loads", "errors", "peak", "of bound"
    );
    for (i, c) in cases.iter().enumerate() {
        let o = run_case(c, &all, 1000 + i as u64);
        eprintln!(
            "{:<40} {:>6} {:>7} {:>7} {:>10} {:>7.1}%",
            c.kind,
            c.bytes.len(),
            o.loads,
            o.errors,
            o.peak,
            100.0 * o.worst
        );
        assert!(
            o.loads >= 10_000,
            "{}: only {} corruptions",
            c.kind,
            o.loads
        );
        failures.extend(o.failures);
    }
    eprintln!("{:.1} s in all", start.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} failures, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// Writes the fuzz targets' seed corpora (`fuzz/corpus/<target>/`) from the files above.
#[test]
#[ignore = "writes fuzz/corpus: run with --ignored write_fuzz_seeds"]
fn write_fuzz_seeds() {
    let targets: HashMap<&str, &[&str]> = HashMap::from([
        ("IDX raw", &["idx_raw"][..]),
        ("IDX gz", &["idx_gz"][..]),
        ("checkpoint", &["checkpoint"][..]),
        ("checkpoint, no checksums", &["checkpoint"][..]),
        ("int8 model", &["int8_model"][..]),
        ("int8 model, no checksums", &["int8_model"][..]),
        ("int4 model", &["int8_model"][..]),
        ("int4 model, no checksums", &["int8_model"][..]),
        ("int8 graph model", &["int8_model"][..]),
        ("int8 graph model, no checksums", &["int8_model"][..]),
        ("int8 model, sparse-coded", &["int8_model"][..]),
        (
            "int8 model, sparse-coded, no checksums",
            &["int8_model"][..],
        ),
        ("pruned f32 file", &["sparse_file"][..]),
        ("pruned f32 file, no checksums", &["sparse_file"][..]),
        ("bitmask i8", &["sparse_bitmask"][..]),
        ("bitmask f32", &["sparse_bitmask"][..]),
        ("gaps i8", &["sparse_gaps"][..]),
        ("gaps f32", &["sparse_gaps"][..]),
        ("entropy i8", &["sparse_entropy"][..]),
    ]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (i, c) in cases().iter().enumerate() {
        for t in targets[c.kind] {
            let dir = root.join(t);
            std::fs::create_dir_all(&dir).expect("corpus dir");
            std::fs::write(dir.join(format!("seed-{i}")), &c.bytes).expect("seed");
        }
    }
}
