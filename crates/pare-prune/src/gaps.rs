//! Rice-coded gaps: the positions of a pruned tensor's non-zeros as Golomb–Rice codes of the
//! runs of zeros between them, instead of a bitmask.
//!
//! With the non-zeros spread like a magnitude mask spreads them (nearly independent positions,
//! density `d`), the gaps are geometric and a Rice code with the best parameter `k` costs within
//! a few percent of the positions' entropy `n · H(d)` bits; a bitmask costs `n` bits whatever
//! the density. For the small CNN's dense kernel at 80 % (4 056 non-zeros among 20 280) that is
//! about 1 870 bytes against 2 535, and the gap stream shrinks further as sparsity grows. It is
//! never longer than the bitmask: with `k = 0` the codes are the bitmask's bits (inverted) up to
//! the last non-zero. Codes are bit-packed, so gzip finds little left to squeeze: the gain shows
//! in the raw size. The bitmask stays the simpler format to scan, so both exist; for int8
//! kernels [`crate::entropy`] goes further by modelling the values and the positions' context.
//!
//! # Byte format (version 1, all integers little-endian)
//!
//! | offset          | size          | field                                                  |
//! |-----------------|---------------|--------------------------------------------------------|
//! | 0               | 4             | magic `b"PSRG"`                                        |
//! | 4               | 1             | version, `1`                                           |
//! | 5               | 1             | dtype: `1` = f32, `2` = i8                             |
//! | 6               | 1             | rank `r` (at most [`MAX_RANK`])                        |
//! | 7               | 1             | Rice parameter `k` (at most [`MAX_K`])                 |
//! | 8               | `8 r`         | dimensions, `u64` each                                 |
//! | `8 + 8 r`       | 8             | `nnz`, number of non-zeros, `u64`                      |
//! | `16 + 8 r`      | `nnz * size`  | non-zero values in row-major order                     |
//! | …               | to the end    | one code per non-zero, bits packed LSB first; padding bits 0 |
//!
//! The code of a non-zero is its gap `g` (zeros since the previous non-zero, or since the start)
//! as `g >> k` one-bits, a zero bit, then the `k` low bits of `g`, least significant first.
//! [`GapCoded::from_bytes`] walks the whole code stream before accepting it: every position in
//! range, exactly `nnz` codes, no stray bits or bytes after them; it allocates nothing larger
//! than its input. A few bytes of gaps can describe any number of zeros, so, as for
//! [`crate::entropy`], the element count is capped at [`MAX_ELEMENTS`] and at
//! [`ELEMENTS_PER_BYTE`](crate::entropy::ELEMENTS_PER_BYTE) per byte of the whole encoding
//! (the encoder declines tensors beyond either; the bitmask stores them): [`GapCoded::decode`]
//! then allocates at most that many elements per input byte, never what a forged header asks
//! for.

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::entropy::{MAX_ELEMENTS, check_density};
use crate::error::{PruneError, Result};
use crate::sparse::{MAX_RANK, SparseElement, SparseShape, dtype_name, element_count, read_u64};

/// Magic bytes of a serialized [`GapCoded`] tensor.
pub const GAP_MAGIC: [u8; 4] = *b"PSRG";
/// Format version written by [`GapCoded::to_bytes`].
pub const GAP_VERSION: u8 = 1;
/// Largest Rice parameter accepted.
pub const MAX_K: u8 = 40;

/// A tensor stored as its non-zero values plus Rice-coded gaps; see the
/// [module documentation](self).
///
/// Invariants (checked by every constructor): the code stream holds exactly `values.len()`
/// codes, every decoded position is inside the tensor, padding bits are zero, and no value is
/// all-zero bits.
#[derive(Debug, Clone, PartialEq)]
pub struct GapCoded<T> {
    shape: Vec<usize>,
    k: u8,
    codes: Vec<u8>,
    values: Vec<T>,
}

/// Appends bits LSB first.
struct BitWriter {
    bytes: Vec<u8>,
    bit: usize,
}

impl BitWriter {
    fn push(&mut self, one: bool) {
        if self.bit.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if one {
            *self.bytes.last_mut().expect("BitWriter: a byte was pushed") |= 1 << (self.bit % 8);
        }
        self.bit += 1;
    }
}

/// Reads bits LSB first; `None` past the end.
struct BitReader<'a> {
    bytes: &'a [u8],
    bit: usize,
}

impl BitReader<'_> {
    fn next(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.bit / 8)?;
        let b = byte >> (self.bit % 8) & 1 == 1;
        self.bit += 1;
        Some(b)
    }
}

/// Bits of the Rice codes of `gaps` with parameter `k`.
fn code_bits(gaps: &[u64], k: u8) -> u64 {
    gaps.iter().map(|&g| (g >> k) + 1 + u64::from(k)).sum()
}

/// Walks a code stream of `nnz` codes over `len` positions, calling `at` with each position.
fn walk(codes: &[u8], k: u8, nnz: u64, len: usize, mut at: impl FnMut(usize)) -> Result<()> {
    let bad = |reason: &'static str| PruneError::InconsistentSparse {
        reason,
        nnz,
        popcount: 0,
        len: len as u64,
    };
    let mut r = BitReader {
        bytes: codes,
        bit: 0,
    };
    // A gap is at most len - 1, so its quotient at most (len - 1) >> k.
    let max_q = (len.saturating_sub(1) as u64) >> k;
    let mut pos: u64 = 0;
    for _ in 0..nnz {
        let mut q = 0u64;
        loop {
            match r.next() {
                Some(true) => {
                    q += 1;
                    if q > max_q {
                        return Err(bad("a gap code runs past the tensor"));
                    }
                }
                Some(false) => break,
                None => return Err(bad("the gap codes end early")),
            }
        }
        let mut low = 0u64;
        for b in 0..k {
            match r.next() {
                Some(true) => low |= 1 << b,
                Some(false) => {}
                None => return Err(bad("the gap codes end early")),
            }
        }
        pos += (q << k) | low;
        if pos >= len as u64 {
            return Err(bad("a gap code points past the tensor"));
        }
        at(pos as usize);
        pos += 1;
    }
    if r.bit.div_ceil(8) != codes.len() {
        return Err(bad("bytes follow the last gap code"));
    }
    if !r.bit.is_multiple_of(8) && codes[codes.len() - 1] >> (r.bit % 8) != 0 {
        return Err(bad("gap code padding bits are set"));
    }
    Ok(())
}

/// The [`MAX_ELEMENTS`] cap.
fn check_elements(len: usize) -> Result<()> {
    if len > MAX_ELEMENTS {
        return Err(PruneError::TooLarge {
            what: "element count",
            value: len,
            max: MAX_ELEMENTS,
        });
    }
    Ok(())
}

fn header_len(rank: usize) -> usize {
    16 + 8 * rank
}

impl<T: SparseElement> GapCoded<T> {
    /// Encodes a dense tensor (any memory layout; positions are row-major) with the Rice
    /// parameter that gives the shortest code stream.
    ///
    /// # Errors
    /// [`PruneError::BadHeaderField`] if the rank exceeds [`MAX_RANK`];
    /// [`PruneError::TooLarge`] beyond [`MAX_ELEMENTS`] elements, or beyond
    /// [`ELEMENTS_PER_BYTE`](crate::entropy::ELEMENTS_PER_BYTE) elements per byte of the encoding (a huge, nearly empty tensor,
    /// which the bitmask format stores).
    pub fn encode(dense: ArrayViewD<'_, T>) -> Result<Self> {
        if dense.ndim() > MAX_RANK {
            return Err(PruneError::BadHeaderField {
                field: "rank",
                value: dense.ndim() as u64,
            });
        }
        check_elements(dense.len())?;
        let (mut gaps, mut values) = (Vec::new(), Vec::new());
        let mut run = 0u64;
        for &v in dense.iter() {
            if v.is_zero_bits() {
                run += 1;
            } else {
                gaps.push(run);
                values.push(v);
                run = 0;
            }
        }
        let k = (0..=MAX_K)
            .min_by_key(|&k| code_bits(&gaps, k))
            .expect("GapCoded::encode: the range of k is not empty");
        let mut w = BitWriter {
            bytes: Vec::with_capacity(code_bits(&gaps, k).div_ceil(8) as usize),
            bit: 0,
        };
        for &g in &gaps {
            for _ in 0..g >> k {
                w.push(true);
            }
            w.push(false);
            for b in 0..k {
                w.push(g >> b & 1 == 1);
            }
        }
        let coded = GapCoded {
            shape: dense.shape().to_vec(),
            k,
            codes: w.bytes,
            values,
        };
        check_density(coded.len(), coded.encoded_len())?;
        Ok(coded)
    }

    /// The dense tensor, bit for bit.
    pub fn decode(&self) -> ArrayD<T> {
        let mut dense = vec![T::default(); self.len()];
        let mut vals = self.values.iter();
        walk(
            &self.codes,
            self.k,
            self.values.len() as u64,
            self.len(),
            |p| {
                dense[p] = *vals
                    .next()
                    .expect("GapCoded::decode: one value per code invariant");
            },
        )
        .expect("GapCoded::decode: the code stream was checked when built");
        ArrayD::from_shape_vec(IxDyn(&self.shape), dense)
            .expect("GapCoded::decode: shape product == element count invariant")
    }

    /// The Rice parameter chosen.
    pub fn k(&self) -> u8 {
        self.k
    }

    /// Length of [`GapCoded::to_bytes`]'s output.
    pub fn encoded_len(&self) -> usize {
        header_len(self.shape.len()) + self.values.len() * T::SIZE + self.codes.len()
    }

    /// Serializes to the documented byte format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&GAP_MAGIC);
        // The rank fits: encode caps it at MAX_RANK, from_bytes reads it from a byte.
        out.extend_from_slice(&[GAP_VERSION, T::DTYPE, self.shape.len() as u8, self.k]);
        for &d in &self.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&(self.values.len() as u64).to_le_bytes());
        for &v in &self.values {
            v.write_le(&mut out);
        }
        out.extend_from_slice(&self.codes);
        out
    }

    /// Parses the byte format, checking the whole code stream.
    ///
    /// # Errors
    /// [`PruneError::Truncated`], [`PruneError::BadMagic`], [`PruneError::BadHeaderField`]
    /// (version, unknown dtype, rank, `k`), [`PruneError::DTypeMismatch`],
    /// [`PruneError::SizeOverflow`], [`PruneError::InconsistentSparse`] (nnz above the element
    /// count, codes ending early, pointing outside the tensor, followed by stray bits or bytes,
    /// a stored zero).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let available = bytes.len() as u64;
        if bytes.len() < 8 {
            return Err(PruneError::Truncated {
                part: "header",
                needed: 8,
                available,
            });
        }
        let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if found != GAP_MAGIC {
            return Err(PruneError::BadMagic {
                found,
                expected: GAP_MAGIC,
            });
        }
        let (version, dtype, rank, k) = (bytes[4], bytes[5], usize::from(bytes[6]), bytes[7]);
        if version != GAP_VERSION {
            return Err(PruneError::BadHeaderField {
                field: "version",
                value: version.into(),
            });
        }
        let Some(found_name) = dtype_name(dtype) else {
            return Err(PruneError::BadHeaderField {
                field: "dtype",
                value: dtype.into(),
            });
        };
        if dtype != T::DTYPE {
            return Err(PruneError::DTypeMismatch {
                expected: T::NAME,
                found: found_name,
            });
        }
        if rank > MAX_RANK {
            return Err(PruneError::BadHeaderField {
                field: "rank",
                value: rank as u64,
            });
        }
        if k > MAX_K {
            return Err(PruneError::BadHeaderField {
                field: "k",
                value: k.into(),
            });
        }
        let hlen = header_len(rank);
        if bytes.len() < hlen {
            return Err(PruneError::Truncated {
                part: "dims",
                needed: hlen as u64,
                available,
            });
        }
        let dims: Vec<u64> = (0..rank).map(|i| read_u64(bytes, 8 + 8 * i)).collect();
        let nnz = read_u64(bytes, 8 + 8 * rank);
        let len = element_count(dims.iter().copied(), T::SIZE)?;
        check_elements(len)?;
        check_density(len, bytes.len())?;
        if nnz > len as u64 {
            return Err(PruneError::InconsistentSparse {
                reason: "nnz exceeds the element count",
                nnz,
                popcount: 0,
                len: len as u64,
            });
        }
        // nnz <= len and len * SIZE <= isize::MAX: no overflow.
        let values_end = hlen + nnz as usize * T::SIZE;
        if bytes.len() < values_end {
            return Err(PruneError::Truncated {
                part: "values",
                needed: values_end as u64,
                available,
            });
        }
        let codes = &bytes[values_end..];
        walk(codes, k, nnz, len, |_| {})?;
        let values: Vec<T> = bytes[hlen..values_end]
            .chunks_exact(T::SIZE)
            .map(T::read_le)
            .collect();
        if values.iter().any(|v| v.is_zero_bits()) {
            return Err(PruneError::InconsistentSparse {
                reason: "a stored value is zero",
                nnz,
                popcount: nnz,
                len: len as u64,
            });
        }
        Ok(GapCoded {
            shape: dims.iter().map(|&d| d as usize).collect(),
            k,
            codes: codes.to_vec(),
            values,
        })
    }
}

impl<T: SparseElement> SparseShape for GapCoded<T> {
    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn nnz(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::ELEMENTS_PER_BYTE;
    use crate::sparse::SparseTensor;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random_i8(shape: &[usize], density: f64, seed: u64) -> ArrayD<i8> {
        let mut rng = StdRng::seed_from_u64(seed);
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            if rng.random_bool(density) {
                let v: i8 = rng.random_range(1..=127);
                if rng.random_bool(0.5) { -v } else { v }
            } else {
                0
            }
        })
    }

    /// Found by tests/corruption.rs: 32 bytes declaring an all-zero f32 tensor of 2^33
    /// elements (no codes needed) parsed, and `decode` asked for 32 GiB.
    /// Found by the `sparse_gaps` fuzz target: dims `[2^63 + …, 0]` (no element, no codes)
    /// parsed, and ndarray refused the shape in `decode`, which panicked.
    #[test]
    fn a_zero_dimension_beside_a_huge_one_is_a_size_error() {
        let crash: [u8; 32] = [
            80, 83, 82, 71, 1, 2, 2, 2, 64, 0, 64, 0, 0, 0, 0, 247, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0,
        ];
        let r = GapCoded::<i8>::from_bytes(&crash);
        assert!(matches!(r, Err(PruneError::SizeOverflow { .. })), "{r:?}");
    }

    #[test]
    fn a_forged_huge_empty_tensor_is_refused_before_decoding() {
        let mut b = GAP_MAGIC.to_vec();
        b.extend([GAP_VERSION, 1, 2, 0]); // f32, rank 2, k = 0
        for d in [1u64 << 32, 2] {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u64.to_le_bytes()); // nnz
        let r = GapCoded::<f32>::from_bytes(&b);
        assert!(matches!(r, Err(PruneError::TooLarge { .. })), "{r:?}");
        // The largest empty tensor these 32 bytes may hold: 2^14 elements per byte.
        let mut ok = b.clone();
        ok[8..16].copy_from_slice(&((32 * ELEMENTS_PER_BYTE as u64) / 2).to_le_bytes());
        assert_eq!(
            GapCoded::<f32>::from_bytes(&ok).unwrap().decode().len(),
            32 << 14
        );
        ok[8..16].copy_from_slice(&((32 * ELEMENTS_PER_BYTE as u64) / 2 + 1).to_le_bytes());
        assert!(GapCoded::<f32>::from_bytes(&ok).is_err());
        // The encoder declines what the reader would refuse; the int8 codec then stores the
        // bitmask.
        let zeros = ArrayD::<i8>::zeros(IxDyn(&[1 << 10, 1 << 10]));
        assert!(matches!(
            GapCoded::encode(zeros.view()),
            Err(PruneError::TooLarge { .. })
        ));
        let bytes = crate::file::encode_i8(zeros.view()).expect("smaller than dense");
        assert_eq!(bytes[..4], crate::sparse::MAGIC);
    }

    #[test]
    fn round_trips_awkward_sizes_and_densities() {
        for (i, shape) in [
            vec![1],
            vec![7],
            vec![63],
            vec![65],
            vec![3, 5, 7],
            vec![2, 0],
            vec![],
        ]
        .iter()
        .enumerate()
        {
            for density in [0.0, 0.01, 0.2, 0.5, 1.0] {
                let a = random_i8(shape, density, i as u64);
                let g = GapCoded::encode(a.view()).unwrap();
                assert_eq!(g.decode(), a, "{shape:?} {density}");
                let bytes = g.to_bytes();
                assert_eq!(bytes.len(), g.encoded_len());
                let back = GapCoded::<i8>::from_bytes(&bytes).unwrap();
                assert_eq!(back, g);
                assert_eq!(back.decode(), a);
            }
        }
        // f32 keeps -0.0 and NaN payloads (non-zero bits) like the bitmask format.
        let f = ArrayD::from_shape_vec(
            IxDyn(&[5]),
            vec![0.0, -0.0, f32::from_bits(0x7fc0_0001), 0.0, 2.5],
        )
        .unwrap();
        let g = GapCoded::encode(f.view()).unwrap();
        assert_eq!(g.nnz(), 3);
        let back = GapCoded::<f32>::from_bytes(&g.to_bytes()).unwrap().decode();
        let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&f));
    }

    #[test]
    fn hand_worked_codes() {
        // [0, 5, 0, 0, 0, -3]: gaps 1 and 3. Bits per k: k = 0: 2 + 4, k = 1: 2 + 3, k = 2:
        // 3 + 3, so k = 1. Gap 1 = q 0, low 1 -> "0 1"; gap 3 = q 1, low 1 -> "1 0 1";
        // packed LSB first: 0b1_0110.
        let a = ArrayD::from_shape_vec(IxDyn(&[6]), vec![0i8, 5, 0, 0, 0, -3]).unwrap();
        let g = GapCoded::encode(a.view()).unwrap();
        assert_eq!(g.k(), 1);
        let b = g.to_bytes();
        let mut want = b"PSRG".to_vec();
        want.extend_from_slice(&[1, 2, 1, 1]);
        want.extend_from_slice(&6u64.to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&[5, (-3i8) as u8, 0b0001_0110]);
        assert_eq!(b, want);
    }

    #[test]
    fn smaller_than_a_bitmask_at_pruning_sparsities() {
        // The small CNN's dense kernel at 80 %: near the positions' entropy (1 830 bytes).
        let a = random_i8(&[2028, 10], 0.2, 7);
        let g = GapCoded::encode(a.view()).unwrap();
        let s = SparseTensor::encode(a.view()).unwrap();
        let codes = g.encoded_len() - 32 - g.nnz();
        assert!(codes < 1900, "{codes} bytes of codes");
        assert!(g.encoded_len() + 600 < s.encoded_len());
        // Never larger than the bitmask: with k = 0 the codes are the bitmask's bits up to the
        // last non-zero, inverted.
        for density in [0.5, 0.9, 1.0] {
            let d = random_i8(&[2028, 10], density, 8);
            let (g, s) = (
                GapCoded::encode(d.view()).unwrap(),
                SparseTensor::encode(d.view()).unwrap(),
            );
            assert!(g.encoded_len() <= s.encoded_len(), "density {density}");
        }
    }

    #[test]
    fn corrupt_inputs_are_errors() {
        use PruneError::*;
        let good = GapCoded::encode(random_i8(&[9, 7], 0.3, 3).view())
            .unwrap()
            .to_bytes();
        for cut in 0..good.len() {
            assert!(
                GapCoded::<i8>::from_bytes(&good[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(
            GapCoded::<i8>::from_bytes(&extra),
            Err(InconsistentSparse { .. })
        ));
        let field = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            GapCoded::<i8>::from_bytes(&b)
        };
        assert!(matches!(field(0, b'X'), Err(BadMagic { .. })));
        assert!(matches!(
            field(4, 9),
            Err(BadHeaderField {
                field: "version",
                ..
            })
        ));
        assert!(matches!(
            field(5, 9),
            Err(BadHeaderField { field: "dtype", .. })
        ));
        assert!(matches!(field(5, 1), Err(DTypeMismatch { .. })));
        assert!(matches!(
            field(6, 99),
            Err(BadHeaderField { field: "rank", .. })
        ));
        assert!(matches!(
            field(7, MAX_K + 1),
            Err(BadHeaderField { field: "k", .. })
        ));
        // Every single-bit flip anywhere is an error or another valid tensor, never a panic.
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[at] ^= 1 << bit;
                // A flipped dimension can declare a huge (valid, empty) tensor: decode only
                // small ones.
                if let Some(t) = GapCoded::<i8>::from_bytes(&b)
                    .ok()
                    .filter(|t| t.len() < 10_000)
                {
                    assert_eq!(t.decode().len(), t.len());
                }
            }
        }
        // A zero value.
        let mut b = good.clone();
        b[32] = 0;
        assert!(matches!(
            GapCoded::<i8>::from_bytes(&b),
            Err(InconsistentSparse { .. })
        ));
        // A gap of 4 in a tensor of 4: points past the end; a unary run past the tensor.
        let header = |len: u64, nnz: u64, k: u8, vals: &[u8], codes: &[u8]| {
            let mut b = b"PSRG".to_vec();
            b.extend_from_slice(&[1, 2, 1, k]);
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&nnz.to_le_bytes());
            b.extend_from_slice(vals);
            b.extend_from_slice(codes);
            b
        };
        assert!(GapCoded::<i8>::from_bytes(&header(4, 1, 2, &[1], &[0b0000_0000])).is_ok());
        let r = GapCoded::<i8>::from_bytes(&header(4, 1, 2, &[1], &[0b0000_0001]));
        assert!(matches!(r, Err(InconsistentSparse { .. })), "{r:?}");
        let r = GapCoded::<i8>::from_bytes(&header(4, 1, 0, &[1], &[0b0001_1111]));
        assert!(matches!(r, Err(InconsistentSparse { .. })), "{r:?}");
        // Set padding bits, missing codes, nnz above len.
        let r = GapCoded::<i8>::from_bytes(&header(4, 1, 2, &[1], &[0b1000_0000]));
        assert!(matches!(r, Err(InconsistentSparse { .. })), "{r:?}");
        let r = GapCoded::<i8>::from_bytes(&header(4, 3, 2, &[1, 1, 1], &[0b0000_0000]));
        assert!(matches!(r, Err(InconsistentSparse { .. })), "{r:?}");
        let r = GapCoded::<i8>::from_bytes(&header(1, 2, 0, &[1, 1], &[0]));
        assert!(matches!(r, Err(InconsistentSparse { .. })), "{r:?}");
        // Huge declared size with nothing stored: refused, since decoding would allocate it.
        let r = GapCoded::<i8>::from_bytes(&header(1 << 40, 0, 0, &[], &[]));
        assert!(matches!(r, Err(TooLarge { .. })), "{r:?}");
        let r = GapCoded::<i8>::from_bytes(&header(u64::MAX, 0, 0, &[], &[]));
        assert!(matches!(r, Err(SizeOverflow { .. })), "{r:?}");
    }
}
