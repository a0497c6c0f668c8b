//! Entropy-coded int8 tensors: the "Huffman coding" stage of Han et al.'s Deep Compression
//! (2016), done with an adaptive binary arithmetic coder and context modelling instead.
//!
//! The bitmask ([`crate::sparse`]) and the Rice-coded gaps ([`crate::gaps`]) store a pruned
//! tensor's non-zero values as raw bytes and its positions as if they were independent. Neither
//! is true of a trained kernel: its surviving int8 codes cluster just above the pruning
//! threshold (about 6.5 bits of entropy each, not 8), and a kernel that reads an image is smooth
//! across neighbouring pixels, so a weight's sign, magnitude and whether it survived are
//! predictable from the weights already coded beside it. This format codes every element, in
//! row-major order, as a few binary decisions — non-zero or not, the sign, the magnitude —
//! each with an adaptive probability from the neighbouring elements (see the model in
//! `model.rs`), through a range coder. On the small CNN's 80 %-pruned int8 dense kernel
//! (MNIST, as the pruning example trains it) it takes 4 318 bytes where the gap code takes
//! 5 983, 17 % below the order-0 entropy of the kernel's mask and values (5 212 bytes); version 1
//! of the format, with a simpler model, took 4 464.
//!
//! Encoding and decoding run the same model in deterministic integer arithmetic, about 0.2 µs
//! per element on that kernel (0.4 µs on an unpruned one, where every element has a value to
//! code); the encoder first searches the strides (about 30 ms for that kernel).
//! [`crate::file::encode_i8`] stores a kernel this way when it is the smallest of the three
//! formats.
//!
//! # Byte format (version 2)
//!
//! | field      | size          | content                                                     |
//! |------------|---------------|-------------------------------------------------------------|
//! | magic      | 4             | `b"PSEC"`                                                   |
//! | version    | 1             | `2` (version 1 had another model: it is refused as unknown) |
//! | dtype      | 1             | `2` (i8; the only type this format holds)                   |
//! | rank `r`   | 1             | at most [`MAX_RANK`]                                        |
//! | dimensions | `r` varints   | unsigned LEB128, shortest form                              |
//! | `nnz`      | varint        | number of non-zeros                                         |
//! | strides    | 2 varints     | the model's neighbour row strides, each 0 (none) or below the row count |
//! | stream     | to the end    | the range coder's output, exactly the bytes the decoder reads |
//!
//! The model sees the tensor as a matrix: rows are the product of all dimensions but the last,
//! columns the last dimension (a kernel's output channels); a vector is one column, a scalar
//! one element. The stream holds the columns' smallest non-zero magnitudes, then the elements.
//!
//! [`EntropyCoded::from_bytes`] checks the header, then decodes the whole stream: it must end
//! exactly at the last byte, every value must fit in int8 and the non-zeros must number `nnz`.
//! A stream can describe many zeros in few bytes, so the element count is capped, at
//! [`MAX_ELEMENTS`] and at [`ELEMENTS_PER_BYTE`] per stream byte (the encoder declines tensors
//! beyond either): a hostile header cannot make the reader allocate or work much more than its
//! input warrants. Corrupt bytes inside the stream decode to other values or fail a check; they
//! never panic.

mod coder;
mod model;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{PruneError, Result};
use crate::sparse::{MAX_RANK, SparseElement, SparseShape, dtype_name, element_count};
use coder::{Decoder, Encoder};

/// Magic bytes of a serialized [`EntropyCoded`] tensor.
pub const ENTROPY_MAGIC: [u8; 4] = *b"PSEC";
/// Format version written by [`EntropyCoded::to_bytes`].
pub const ENTROPY_VERSION: u8 = 2;
/// Largest element count accepted, as pare-quant caps a weight tensor.
pub const MAX_ELEMENTS: usize = 1 << 28;
/// Largest element count accepted per byte of coded stream.
pub const ELEMENTS_PER_BYTE: usize = 1 << 14;

/// An int8 tensor stored as an arithmetic-coded stream; see the [module documentation](self).
///
/// Invariant (checked by every constructor): the stream decodes, to exactly its last byte, to a
/// tensor of `shape` with `nnz` non-zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntropyCoded {
    shape: Vec<usize>,
    nnz: usize,
    strides: [usize; 2],
    stream: Vec<u8>,
}

/// Rows and columns of the matrix view of `shape`: a vector is one column.
fn matrix(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, 1),
        [rest @ .., cols] => (rest.iter().product(), *cols),
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).div_ceil(7).max(1)
}

/// Reads an unsigned LEB128 varint at `*pos`, shortest form only.
fn read_varint(bytes: &[u8], pos: &mut usize, field: &'static str) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = bytes.get(*pos) else {
            return Err(PruneError::Truncated {
                part: field,
                needed: *pos as u64 + 1,
                available: bytes.len() as u64,
            });
        };
        *pos += 1;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            break;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            if b == 0 && shift > 0 {
                break;
            }
            return Ok(v);
        }
    }
    Err(PruneError::BadHeaderField { field, value: v })
}

impl EntropyCoded {
    /// Encodes a dense int8 tensor (any memory layout; positions are row-major).
    ///
    /// # Errors
    /// [`PruneError::BadHeaderField`] if the rank exceeds [`MAX_RANK`];
    /// [`PruneError::TooLarge`] beyond [`MAX_ELEMENTS`] elements, or if the stream would hold
    /// more than [`ELEMENTS_PER_BYTE`] elements per byte (a huge, nearly empty tensor: the other
    /// formats store it well).
    pub fn encode(dense: ArrayViewD<'_, i8>) -> Result<Self> {
        if dense.ndim() > MAX_RANK {
            return Err(PruneError::BadHeaderField {
                field: "rank",
                value: dense.ndim() as u64,
            });
        }
        if dense.len() > MAX_ELEMENTS {
            return Err(PruneError::TooLarge {
                what: "element count",
                value: dense.len(),
                max: MAX_ELEMENTS,
            });
        }
        let shape = dense.shape().to_vec();
        let (rows, cols) = matrix(&shape);
        let mut data: Vec<i8> = dense.iter().copied().collect();
        let strides = model::choose_strides(&data, rows, cols);
        let mut enc = Encoder::new();
        let nnz = model::code_tensor(&mut enc, rows, cols, strides, &mut data)?;
        let stream = enc.finish();
        check_density(data.len(), stream.len())?;
        Ok(EntropyCoded {
            shape,
            nnz,
            strides,
            stream,
        })
    }

    /// The dense tensor.
    pub fn decode(&self) -> ArrayD<i8> {
        let data = decode_stream(&self.shape, self.strides, self.nnz, &self.stream)
            .expect("EntropyCoded::decode: the stream was checked when built");
        ArrayD::from_shape_vec(IxDyn(&self.shape), data)
            .expect("EntropyCoded::decode: shape product == element count invariant")
    }

    /// The neighbour row strides the encoder chose (0: none).
    pub fn strides(&self) -> [usize; 2] {
        self.strides
    }

    /// Length of the coded stream alone, without the header.
    pub fn stream_len(&self) -> usize {
        self.stream.len()
    }

    /// Length of [`EntropyCoded::to_bytes`]'s output.
    pub fn encoded_len(&self) -> usize {
        7 + self
            .shape
            .iter()
            .map(|&d| varint_len(d as u64))
            .sum::<usize>()
            + varint_len(self.nnz as u64)
            + self
                .strides
                .iter()
                .map(|&s| varint_len(s as u64))
                .sum::<usize>()
            + self.stream.len()
    }

    /// Serializes to the documented byte format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&ENTROPY_MAGIC);
        // The rank fits: every constructor caps it at MAX_RANK.
        out.extend_from_slice(&[ENTROPY_VERSION, i8::DTYPE, self.shape.len() as u8]);
        for &d in &self.shape {
            push_varint(&mut out, d as u64);
        }
        push_varint(&mut out, self.nnz as u64);
        for &s in &self.strides {
            push_varint(&mut out, s as u64);
        }
        out.extend_from_slice(&self.stream);
        out
    }

    /// Parses the byte format, decoding the whole stream to check it.
    ///
    /// # Errors
    /// [`PruneError::Truncated`] (header or stream), [`PruneError::BadMagic`],
    /// [`PruneError::BadHeaderField`] (version, dtype, rank, a malformed varint, a stride not
    /// below the row count), [`PruneError::DTypeMismatch`] for an f32 tensor,
    /// [`PruneError::SizeOverflow`], [`PruneError::TooLarge`] (the caps above),
    /// [`PruneError::InconsistentSparse`] (nnz above the element count or differing from the
    /// stream's, a value outside int8), [`PruneError::TrailingBytes`] after the stream's end.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (coded, _) = Self::parse(bytes, None)?;
        Ok(coded)
    }

    /// [`EntropyCoded::from_bytes`] and [`EntropyCoded::decode`] with a single decoding pass.
    ///
    /// # Errors
    /// As [`EntropyCoded::from_bytes`].
    pub fn decode_bytes(bytes: &[u8]) -> Result<ArrayD<i8>> {
        let (coded, data) = Self::parse(bytes, None)?;
        Ok(coded.into_array(data))
    }

    /// [`EntropyCoded::decode_bytes`] for a tensor that must have `shape`, checked before
    /// anything is allocated ([`PruneError::ShapeMismatch`] for `op`).
    pub(crate) fn decode_shaped(
        bytes: &[u8],
        shape: &[usize],
        op: &'static str,
    ) -> Result<ArrayD<i8>> {
        let (coded, data) = Self::parse(bytes, Some((shape, op)))?;
        Ok(coded.into_array(data))
    }

    fn into_array(self, data: Vec<i8>) -> ArrayD<i8> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), data)
            .expect("EntropyCoded: shape product == element count invariant")
    }

    fn parse(bytes: &[u8], expect: Option<(&[usize], &'static str)>) -> Result<(Self, Vec<i8>)> {
        let available = bytes.len() as u64;
        if bytes.len() < 7 {
            return Err(PruneError::Truncated {
                part: "header",
                needed: 7,
                available,
            });
        }
        let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if found != ENTROPY_MAGIC {
            return Err(PruneError::BadMagic {
                found,
                expected: ENTROPY_MAGIC,
            });
        }
        let (version, dtype, rank) = (bytes[4], bytes[5], usize::from(bytes[6]));
        if version != ENTROPY_VERSION {
            return Err(PruneError::BadHeaderField {
                field: "version",
                value: version.into(),
            });
        }
        if dtype != i8::DTYPE {
            return Err(match dtype_name(dtype) {
                Some(found) => PruneError::DTypeMismatch {
                    expected: i8::NAME,
                    found,
                },
                None => PruneError::BadHeaderField {
                    field: "dtype",
                    value: dtype.into(),
                },
            });
        }
        if rank > MAX_RANK {
            return Err(PruneError::BadHeaderField {
                field: "rank",
                value: rank as u64,
            });
        }
        let mut pos = 7;
        let mut dims = Vec::with_capacity(rank);
        for _ in 0..rank {
            dims.push(read_varint(bytes, &mut pos, "dimension")?);
        }
        let nnz = read_varint(bytes, &mut pos, "nnz")?;
        let strides = [
            read_varint(bytes, &mut pos, "stride")?,
            read_varint(bytes, &mut pos, "stride")?,
        ];
        let len = element_count(dims.iter().copied(), 1)?;
        if len > MAX_ELEMENTS {
            return Err(PruneError::TooLarge {
                what: "element count",
                value: len,
                max: MAX_ELEMENTS,
            });
        }
        if nnz > len as u64 {
            return Err(PruneError::InconsistentSparse {
                reason: "nnz exceeds the element count",
                nnz,
                popcount: 0,
                len: len as u64,
            });
        }
        let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        if let Some((expected, op)) = expect
            && expected != shape.as_slice()
        {
            return Err(PruneError::ShapeMismatch {
                op,
                expected: expected.to_vec(),
                found: shape,
            });
        }
        let (rows, _) = matrix(&shape);
        for &s in &strides {
            if s != 0 && s >= rows as u64 {
                return Err(PruneError::BadHeaderField {
                    field: "stride",
                    value: s,
                });
            }
        }
        let strides = strides.map(|s| s as usize);
        let stream = &bytes[pos..];
        check_density(len, stream.len())?;
        let data = decode_stream(&shape, strides, nnz as usize, stream)?;
        Ok((
            EntropyCoded {
                shape,
                nnz: nnz as usize,
                strides,
                stream: stream.to_vec(),
            },
            data,
        ))
    }
}

/// The [`ELEMENTS_PER_BYTE`] cap (also the gap format's, over its whole encoding).
pub(crate) fn check_density(len: usize, stream_len: usize) -> Result<()> {
    let max = stream_len.saturating_mul(ELEMENTS_PER_BYTE);
    if len > max {
        return Err(PruneError::TooLarge {
            what: "element count for the stream's length",
            value: len,
            max,
        });
    }
    Ok(())
}

/// Decodes a stream, checking that it ends exactly and holds `nnz` non-zeros.
fn decode_stream(
    shape: &[usize],
    strides: [usize; 2],
    nnz: usize,
    stream: &[u8],
) -> Result<Vec<i8>> {
    let (rows, cols) = matrix(shape);
    let mut data = vec![0i8; rows * cols];
    let mut dec = Decoder::new(stream)?;
    let found = model::code_tensor(&mut dec, rows, cols, strides, &mut data)?;
    if dec.remaining() > 0 {
        return Err(PruneError::TrailingBytes {
            extra: dec.remaining() as u64,
        });
    }
    if found != nnz {
        return Err(PruneError::InconsistentSparse {
            reason: "the stream's non-zeros differ from nnz",
            nnz: nnz as u64,
            popcount: found as u64,
            len: data.len() as u64,
        });
    }
    Ok(data)
}

impl SparseShape for EntropyCoded {
    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn nnz(&self) -> usize {
        self.nnz
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaps::GapCoded;
    use crate::sparse::SparseTensor;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random_i8(shape: &[usize], density: f64, seed: u64) -> ArrayD<i8> {
        let mut rng = StdRng::seed_from_u64(seed);
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            if rng.random_bool(density) {
                // The whole int8 range, -128 included.
                rng.random_range(-128i32..=127).max(-128) as i8
            } else {
                0
            }
        })
        .mapv(|v| if v == 0 && density == 1.0 { 1 } else { v })
    }

    /// A kernel like the small CNN's dense one: rows are 13 × 13 pixels × 12 channels, columns
    /// 10 outputs; each (channel, output) plane is a smooth image (a few Gaussian bumps of
    /// either sign, a little noise), magnitude-pruned to `sparsity` over the whole tensor and
    /// quantized per output column to [-127, 127], as pare-quant does.
    fn smooth_kernel(sparsity: f64, seed: u64) -> ArrayD<i8> {
        let (h, w, ch, out) = (13usize, 13usize, 12usize, 10usize);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut f = vec![0f64; h * w * ch * out];
        for c in 0..ch {
            for o in 0..out {
                for _ in 0..4 {
                    let (cy, cx) = (rng.random_range(0.0..13.0), rng.random_range(0.0..13.0));
                    let sigma: f64 = rng.random_range(1.5..4.0);
                    let amp =
                        rng.random_range(0.5..1.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                    for y in 0..h {
                        for x in 0..w {
                            let d2 = (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
                            f[((y * w + x) * ch + c) * out + o] +=
                                amp * (-d2 / (2.0 * sigma * sigma)).exp();
                        }
                    }
                }
            }
        }
        for v in &mut f {
            *v += rng.random_range(-0.05..0.05);
        }
        let mut mags: Vec<f64> = f.iter().map(|v| v.abs()).collect();
        mags.sort_by(f64::total_cmp);
        let keep = ((f.len() as f64) * (1.0 - sparsity)).round() as usize;
        let threshold = mags[f.len() - keep];
        let mut q = vec![0i8; f.len()];
        for o in 0..out {
            let col = (0..h * w * ch).map(|r| r * out + o);
            let scale = col.clone().map(|i| f[i].abs()).fold(0.0, f64::max) / 127.0;
            for i in col {
                if f[i].abs() >= threshold {
                    let v = (f[i] / scale).round().clamp(-127.0, 127.0) as i8;
                    q[i] = if v == 0 { f[i].signum() as i8 } else { v };
                }
            }
        }
        ArrayD::from_shape_vec(IxDyn(&[h * w * ch, out]), q).unwrap()
    }

    fn round_trip(a: &ArrayD<i8>) -> EntropyCoded {
        let e = EntropyCoded::encode(a.view()).unwrap();
        assert_eq!(e.shape(), a.shape());
        assert_eq!(e.nnz(), a.iter().filter(|&&v| v != 0).count());
        assert_eq!(&e.decode(), a);
        let bytes = e.to_bytes();
        assert_eq!(bytes.len(), e.encoded_len());
        assert_eq!(EntropyCoded::from_bytes(&bytes).unwrap(), e);
        assert_eq!(&EntropyCoded::decode_bytes(&bytes).unwrap(), a);
        // Deterministic: the same tensor always gives the same bytes.
        assert_eq!(EntropyCoded::encode(a.view()).unwrap().to_bytes(), bytes);
        e
    }

    /// Found by the `sparse_entropy` fuzz target: a zero dimension beside a huge one passed the
    /// element-count checks (0 elements), and ndarray refused the shape in `decode`, which
    /// panicked.
    #[test]
    fn a_zero_dimension_beside_a_huge_one_is_a_size_error() {
        let crash: [u8; 32] = [
            80, 83, 69, 67, 2, 2, 18, 64, 18, 64, 80, 8, 3, 116, 104, 114, 102, 45, 0, 2, 81, 0, 0,
            0, 0, 0, 0, 0, 0, 67, 117, 47,
        ];
        assert!(EntropyCoded::from_bytes(&crash).is_err());
        assert!(EntropyCoded::decode_bytes(&crash).is_err());
    }

    #[test]
    fn round_trips_awkward_shapes_and_densities() {
        let shapes = [
            vec![],
            vec![1],
            vec![7],
            vec![63],
            vec![65],
            vec![1, 1],
            vec![3, 5, 7],
            vec![65, 3],
            vec![2, 0],
            vec![0, 5],
            vec![9, 1, 13],
            vec![26, 2, 3, 4],
        ];
        for (i, shape) in shapes.iter().enumerate() {
            for density in [0.0, 0.01, 0.2, 0.5, 1.0] {
                let a = random_i8(shape, density, i as u64);
                round_trip(&a);
            }
        }
        // The extremes of int8, alone and mixed, in every column.
        for fill in [[-128i8, -128], [127, 127], [-128, 127], [1, -1]] {
            let a = ArrayD::from_shape_fn(IxDyn(&[20, 3]), |i| fill[(i[0] + i[1]) % 2]);
            round_trip(&a);
        }
        // A transposed view encodes its logical row-major order.
        let a = random_i8(&[12, 30], 0.3, 99);
        let t = a.t();
        assert_eq!(
            round_trip(&t.to_owned()),
            EntropyCoded::encode(t.view()).unwrap()
        );
    }

    #[test]
    fn header_layout_is_as_documented() {
        // 300 rows: the dimension takes a two-byte varint (300 = 0b10_0101100).
        let mut a = ArrayD::<i8>::zeros(IxDyn(&[300, 2]));
        a[[5, 1]] = -7;
        a[[299, 0]] = 100;
        let b = EntropyCoded::encode(a.view()).unwrap().to_bytes();
        let mut want = b"PSEC".to_vec();
        want.extend_from_slice(&[ENTROPY_VERSION, 2, 2, 0xac, 0x02, 2, 2, 0, 0]);
        assert_eq!(&b[..want.len()], &want[..]);
        assert!(b.len() <= want.len() + 12, "{} bytes", b.len());
        for (v, enc) in [
            (0u64, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (u64::MAX, vec![0xff; 9].into_iter().chain([1]).collect()),
        ] {
            let mut out = Vec::new();
            push_varint(&mut out, v);
            assert_eq!(out, enc);
            assert_eq!(varint_len(v), enc.len());
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos, "x").unwrap(), v);
            assert_eq!(pos, enc.len());
        }
        // Overlong forms and overflow are rejected.
        for bad in [&[0x80u8, 0x00][..], &[0xff; 10], &[0xff; 11]] {
            let mut b = bad.to_vec();
            if b.len() == 10 {
                b[9] = 0x02; // 2 << 63 overflows
            }
            assert!(read_varint(&b, &mut 0, "x").is_err(), "{b:02x?}");
        }
    }

    #[test]
    fn beats_the_gap_code_on_a_realistic_pruned_kernel() {
        let a = smooth_kernel(0.8, 3);
        let e = round_trip(&a);
        // The strides that point at the pixel to the left and the one above, same channel (in
        // either order: the model uses them alike).
        let mut strides = e.strides();
        strides.sort();
        assert_eq!(strides, [12, 156]);
        let gaps = GapCoded::encode(a.view()).unwrap().encoded_len();
        let bitmask = SparseTensor::encode(a.view()).unwrap().encoded_len();
        assert!(
            e.encoded_len() * 100 < gaps * 80,
            "entropy {} vs gaps {gaps} bytes",
            e.encoded_len()
        );
        assert!(gaps < bitmask);
        let picked = crate::file::encode_i8(a.view()).unwrap();
        assert!(picked.starts_with(&ENTROPY_MAGIC));
        assert_eq!(picked.len(), e.encoded_len());
        // No structure to find: i.i.d. positions and uniform int8 values cost about what the
        // gap code does (within 1 %), never much more.
        let noise = random_i8(&[2028, 10], 0.2, 5);
        let e = round_trip(&noise);
        let gaps = GapCoded::encode(noise.view()).unwrap().encoded_len();
        assert!(
            e.encoded_len() * 100 < gaps * 101,
            "{} vs {gaps}",
            e.encoded_len()
        );
    }

    fn valid_bytes() -> Vec<u8> {
        EntropyCoded::encode(
            smooth_kernel(0.8, 1)
                .slice(ndarray::s![..40, ..])
                .into_dyn(),
        )
        .unwrap()
        .to_bytes()
    }

    #[test]
    fn corrupt_inputs_are_errors_never_panics() {
        use PruneError::*;
        let good = valid_bytes();
        assert!(EntropyCoded::from_bytes(&good).is_ok());
        for cut in 0..good.len() {
            assert!(EntropyCoded::from_bytes(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut extra = good.clone();
        extra.push(0);
        let r = EntropyCoded::from_bytes(&extra);
        assert!(matches!(r, Err(TrailingBytes { extra: 1 })), "{r:?}");
        let field = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            EntropyCoded::from_bytes(&b)
        };
        assert!(matches!(field(0, b'X'), Err(BadMagic { .. })));
        // Version 1 (a different model, so its streams decode to garbage here) and unknown
        // versions are refused up front.
        for version in [0, 1, 3] {
            assert!(matches!(
                field(4, version),
                Err(BadHeaderField {
                    field: "version",
                    value,
                }) if value == u64::from(version)
            ));
        }
        assert!(matches!(
            field(5, 9),
            Err(BadHeaderField { field: "dtype", .. })
        ));
        assert!(matches!(
            field(5, 1),
            Err(DTypeMismatch {
                expected: "i8",
                found: "f32"
            })
        ));
        assert!(matches!(
            field(6, 99),
            Err(BadHeaderField { field: "rank", .. })
        ));
        // Every single-bit flip anywhere: an error or another valid tensor, never a panic.
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[at] ^= 1 << bit;
                if let Ok(t) = EntropyCoded::from_bytes(&b) {
                    assert_eq!(t.decode().len(), t.len());
                }
            }
        }
        // Hand-made headers: dimensions, nnz, strides, stream.
        let header = |dims: &[u64], nnz: u64, strides: [u64; 2], stream: &[u8]| {
            let mut b = b"PSEC".to_vec();
            b.extend_from_slice(&[ENTROPY_VERSION, 2, dims.len() as u8]);
            for &d in dims {
                push_varint(&mut b, d);
            }
            push_varint(&mut b, nnz);
            push_varint(&mut b, strides[0]);
            push_varint(&mut b, strides[1]);
            b.extend_from_slice(stream);
            b
        };
        let r = EntropyCoded::from_bytes(&header(&[40, 10], 401, [0, 0], &[0; 8]));
        assert!(matches!(r, Err(InconsistentSparse { .. })), "{r:?}");
        let r = EntropyCoded::from_bytes(&header(&[40, 10], 0, [40, 0], &[0; 8]));
        assert!(
            matches!(
                r,
                Err(BadHeaderField {
                    field: "stride",
                    ..
                })
            ),
            "{r:?}"
        );
        let r = EntropyCoded::from_bytes(&header(&[u64::MAX, 2], 0, [0, 0], &[0; 8]));
        assert!(matches!(r, Err(SizeOverflow { .. })), "{r:?}");
        let r = EntropyCoded::from_bytes(&header(&[1 << 29], 0, [0, 0], &[0; 8]));
        assert!(matches!(r, Err(TooLarge { .. })), "{r:?}");
        // Many elements from a few bytes: refused before anything is allocated.
        let r = EntropyCoded::from_bytes(&header(&[1 << 20, 4], 0, [0, 0], &[0; 8]));
        assert!(matches!(r, Err(TooLarge { .. })), "{r:?}");
        // A stream that decodes to more or fewer non-zeros than announced.
        let zeros = EntropyCoded::encode(ArrayD::<i8>::zeros(IxDyn(&[40, 10])).view()).unwrap();
        let mut b = zeros.to_bytes();
        b[9] = 1; // nnz 0 -> 1
        let r = EntropyCoded::from_bytes(&b);
        assert!(matches!(r, Err(InconsistentSparse { .. })), "{r:?}");
        // Wrong shape for the codec: refused before decoding.
        let r = EntropyCoded::decode_shaped(&good, &[10, 40], "decode_i8");
        assert!(matches!(r, Err(ShapeMismatch { .. })), "{r:?}");
    }

    #[test]
    fn huge_nearly_empty_tensors_are_declined() {
        // A million zeros code to a few dozen bytes: past the elements-per-byte cap, so the
        // encoder declines (the gap code stores them in 24 bytes).
        let zeros = ArrayD::<i8>::zeros(IxDyn(&[1 << 20]));
        let r = EntropyCoded::encode(zeros.view());
        assert!(matches!(r, Err(PruneError::TooLarge { .. })), "{r:?}");
        let too_deep = ArrayD::<i8>::zeros(IxDyn(&[1; 33]));
        assert!(matches!(
            EntropyCoded::encode(too_deep.view()),
            Err(PruneError::BadHeaderField { field: "rank", .. })
        ));
    }

    /// Sizes, timings and cost breakdown (ideal bits per kind of decision) of real kernels:
    /// every `NAME.D1xD2x….i8` file in `$PARE_KERNEL_DUMPS`, the raw int8 values in row-major
    /// order (for instance [`crate::file::decode_i8`] of a pare-quant model file's kernel), each
    /// round-tripped exactly.
    #[test]
    #[ignore = "needs $PARE_KERNEL_DUMPS"]
    fn measure_kernels() {
        use coder::CostIo;
        use std::time::Instant;
        let dir = std::env::var("PARE_KERNEL_DUMPS").expect("PARE_KERNEL_DUMPS");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        let mut total = 0;
        for p in paths {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let dims = name.rsplit('.').nth(1).unwrap();
            let shape: Vec<usize> = dims.split('x').map(|d| d.parse().unwrap()).collect();
            let data: Vec<i8> = std::fs::read(&p)
                .unwrap()
                .iter()
                .map(|&b| b as i8)
                .collect();
            let a = ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap();
            // Best of five runs of each: the machine is shared.
            let best = |f: &mut dyn FnMut()| {
                (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let e = EntropyCoded::encode(a.view()).unwrap();
            let t_enc = best(&mut || {
                EntropyCoded::encode(a.view()).unwrap();
            });
            let bytes = e.to_bytes();
            assert_eq!(EntropyCoded::decode_bytes(&bytes).unwrap(), a, "{name}");
            let t_dec = best(&mut || {
                EntropyCoded::decode_bytes(&bytes).unwrap();
            });
            // The coding pass alone, without the stride search.
            let (rows, cols) = matrix(&shape);
            let mut flat: Vec<i8> = a.iter().copied().collect();
            let t_code = best(&mut || {
                let mut enc = Encoder::new();
                model::code_tensor(&mut enc, rows, cols, e.strides(), &mut flat).unwrap();
                assert_eq!(enc.finish(), e.stream);
            });
            let mut cost = CostIo::default();
            model::code_tensor(&mut cost, rows, cols, e.strides(), &mut flat).unwrap();
            let n = a.len() as f64;
            let parts = ["minimum", "mask", "sign", "length", "mantissa"];
            let parts: Vec<String> = parts
                .iter()
                .zip(cost.bits.iter().zip(&cost.decisions))
                .map(|(p, (b, d))| format!("{p} {b:.0}/{d}"))
                .collect();
            total += bytes.len();
            let gaps = GapCoded::encode(a.view()).unwrap().encoded_len();
            println!(
                "{name:48} {:6} B (gap code {gaps} B)  strides {:?}  nnz {:5}  µs/element: \
                 encode {:.2} (coding {:.2}) decode {:.2}  bits/decisions: {}",
                bytes.len(),
                e.strides(),
                e.nnz(),
                t_enc * 1e6 / n,
                t_code * 1e6 / n,
                t_dec * 1e6 / n,
                parts.join("  ")
            );
        }
        println!("total {total} B");
    }
}
