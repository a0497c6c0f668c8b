//! The context model of a pruned int8 kernel, shared by the encoder and the decoder.
//!
//! The tensor is seen as a matrix (a vector as one column): rows are the product of all axes but
//! the last, columns the last axis (a kernel's output channels). A trained kernel that reads an
//! image is smooth in space: the weight of the same output at the neighbouring pixel, a fixed number of rows back
//! (`12` rows in the small CNN's dense kernel, whose rows are 13 × 13 pixels × 12 channels; `156`
//! for the pixel above), is very likely to share its sign (98 % there) and whether it survived
//! pruning. The encoder finds two such row strides ([`choose_strides`]) and the model conditions
//! every decision on the neighbours they point at: left `l` and up `u` (one stride each), the two
//! diagonals and the second neighbours along each stride.
//!
//! Per element, in row-major order:
//!
//! 1. non-zero or not: four models (the four nearest neighbours' non-zero pattern; the channel
//!    `row % stride` with `l`, `u`; the column with `l`, `u`; the neighbours' magnitude with the
//!    second neighbours), mixed with weights chosen by how many of `l`, `u` are non-zero;
//! 2. the sign: the signs of the four nearest neighbours; the signs of `l`, `u` with the column;
//! 3. the magnitude `|v|`, as `x = |v| − min + 1` where `min` is the column's smallest non-zero
//!    magnitude (magnitude pruning leaves nothing below a threshold, and per-channel scales put it
//!    at a different code in every column; the minima go first in the stream, a single one when
//!    the tensor has fewer than 16 rows): Elias-gamma binarised (the bit length of `x` in unary,
//!    then its bits below the leading one), each decision with three models (the neighbours'
//!    mean magnitude; the column; how many neighbours are non-zero), mixed per decision.
//!
//! Columns and channels past the 16th share the last context, so memory is a few tens of KiB
//! whatever the shape.

use super::coder::{BitIo, Counter, MixedBit};
use crate::error::{PruneError, Result};

/// Columns (and channels) with a context of their own; the rest share the last one.
const CTX_COLUMNS: usize = 16;
/// Counter limits: the mask drifts from channel to channel, the values much less.
const MASK_LIMIT: u16 = 60;
const VALUE_LIMIT: u16 = 255;
const MIN_LIMIT: u16 = 30;
/// Columns shorter than this share one minimum magnitude.
const MIN_ROWS_PER_COLUMN_MINIMUM: usize = 16;
/// Longest unary prefix: `x <= 128` has at most 7 bits below its leading one.
const MAX_EXTRA_BITS: usize = 7;

/// Row offsets of the neighbours (0: none).
#[derive(Debug, Clone, Copy)]
struct Offsets {
    l: usize,
    u: usize,
    ul: usize,
    ur: usize,
    ll: usize,
    uu: usize,
}

impl Offsets {
    fn new([s1, s2]: [usize; 2]) -> Offsets {
        let both = |o: usize| if s1 > 0 && s2 > 0 { o } else { 0 };
        Offsets {
            l: s1,
            u: s2,
            ul: both(s1 + s2),
            ur: both(s1.abs_diff(s2)),
            ll: 2 * s1,
            uu: 2 * s2,
        }
    }
}

/// Every adaptive model of one tensor.
struct Model {
    mask: MixedBit<4>,
    sign: MixedBit<2>,
    unary: MixedBit<3>,
    mantissa: MixedBit<3>,
    minimum: Vec<Counter>,
}

impl Model {
    fn new() -> Model {
        let c = CTX_COLUMNS;
        // Mantissa decisions: 8 lengths × 16 slots (a 3-level tree, then one per bit).
        let slots = (MAX_EXTRA_BITS + 1) * 16;
        Model {
            mask: MixedBit::new([16, c * 4, c * 4, 16], 3, MASK_LIMIT),
            sign: MixedBit::new([81, 9 * c], 1, VALUE_LIMIT),
            unary: MixedBit::new(
                [MAX_EXTRA_BITS * 7, MAX_EXTRA_BITS * c, MAX_EXTRA_BITS * 5],
                7,
                VALUE_LIMIT,
            ),
            mantissa: MixedBit::new(
                [slots * 7, slots, slots * c],
                (MAX_EXTRA_BITS + 1) * 4,
                VALUE_LIMIT,
            ),
            minimum: vec![Counter::NEW; 128],
        }
    }

    /// Codes `v` in `0..128` as 7 bits through a binary tree of counters.
    fn code_minimum(&mut self, io: &mut impl BitIo, v: usize) -> Result<usize> {
        let mut node = 1;
        for j in (0..7).rev() {
            let c = &mut self.minimum[node];
            let bit = io.code(v >> j & 1 == 1, c.p12())?;
            c.update(bit, MIN_LIMIT);
            node = 2 * node + usize::from(bit);
        }
        Ok(node - 128)
    }
}

/// Value `off` rows above element `i` (row `r`), 0 when there is none.
fn above(data: &[i8], i: usize, r: usize, cols: usize, off: usize) -> i32 {
    if off != 0 && off <= r {
        i32::from(data[i - off * cols])
    } else {
        0
    }
}

/// Codes a `rows × cols` tensor: encodes `data` (encoder) or fills it (decoder, `data` all
/// zeros on entry). Returns the number of non-zeros.
///
/// # Errors
/// The coder's errors (a truncated stream); [`PruneError::InconsistentSparse`] if a decoded
/// magnitude falls outside int8.
pub(super) fn code_tensor(
    io: &mut impl BitIo,
    rows: usize,
    cols: usize,
    strides: [usize; 2],
    data: &mut [i8],
) -> Result<usize> {
    assert_eq!(
        data.len(),
        rows * cols,
        "entropy::code_tensor: {rows} x {cols} tensor with {} elements",
        data.len()
    );
    if data.is_empty() {
        return Ok(0);
    }
    let mut model = Model::new();
    // Encoder: the smallest non-zero magnitude of each column, or of the whole tensor when
    // columns are too short for their own to pay (1 where there is none). Decoder: `data` is
    // zero, so these are placeholders.
    let smallest = |elements: &mut dyn Iterator<Item = i8>| {
        elements
            .map(|v| i32::from(v).abs())
            .filter(|&a| a > 0)
            .min()
            .unwrap_or(1)
    };
    let mins = if rows >= MIN_ROWS_PER_COLUMN_MINIMUM {
        let mut mins = Vec::with_capacity(cols);
        for c in 0..cols {
            let m = smallest(&mut (0..rows).map(|r| data[r * cols + c]));
            mins.push(model.code_minimum(io, (m - 1) as usize)? as i32 + 1);
        }
        mins
    } else {
        let m = smallest(&mut data.iter().copied());
        vec![model.code_minimum(io, (m - 1) as usize)? as i32 + 1; cols]
    };
    let off = Offsets::new(strides);
    let mut nnz = 0;
    for r in 0..rows {
        let channel = if strides[0] > 0 {
            (r % strides[0]).min(CTX_COLUMNS - 1)
        } else {
            0
        };
        for (c, &min) in mins.iter().enumerate() {
            let i = r * cols + c;
            let at = |o| above(data, i, r, cols, o);
            let (l, u, ul, ur) = (at(off.l), at(off.u), at(off.ul), at(off.ur));
            let (ll, uu) = (at(off.ll), at(off.uu));
            let nz = |v: i32| usize::from(v != 0);
            let col = c.min(CTX_COLUMNS - 1);
            let lu = nz(l) + 2 * nz(u);
            let strength = ((l.abs() + u.abs()) / 30).min(3) as usize;
            let ctx = [
                lu + 4 * nz(ul) + 8 * nz(ur),
                channel * 4 + lu,
                col * 4 + lu,
                strength * 4 + nz(ll) + 2 * nz(uu),
            ];
            if !model.mask.code(io, ctx, nz(l) + nz(u), data[i] != 0)? {
                data[i] = 0;
                continue;
            }
            nnz += 1;

            let sg = |v: i32| (v.signum() + 1) as usize;
            let ctx = [
                sg(l) * 27 + sg(u) * 9 + sg(ul) * 3 + sg(ur),
                (sg(l) * 3 + sg(u)) * CTX_COLUMNS + col,
            ];
            let negative = model.sign.code(io, ctx, 0, data[i] < 0)?;

            // Encoder: in 1..=128 since |v| >= min. Decoder: a placeholder, ignored.
            let x = (i32::from(data[i]).abs() - min + 1).clamp(1, 128) as u32;
            let extra = (31 - x.leading_zeros()) as usize;
            let (mut sum, mut count) = (0, 0);
            for v in [l, u, ul, ur] {
                if v != 0 {
                    sum += v.abs();
                    count += 1;
                }
            }
            let mean = if count > 0 {
                ((sum / count) / 16).min(5) as usize
            } else {
                6
            };
            let count = count as usize;
            let mut bits = 0;
            while bits < MAX_EXTRA_BITS {
                let ctx = [bits * 7 + mean, bits * CTX_COLUMNS + col, bits * 5 + count];
                if !model.unary.code(io, ctx, bits, bits < extra)? {
                    break;
                }
                bits += 1;
            }
            let (mut value, mut node) = (1u32, 1usize);
            for j in (0..bits).rev() {
                let depth = bits - 1 - j;
                let slot = if depth < 3 { node } else { 8 + j };
                let base = bits * 16 + slot;
                let ctx = [base * 7 + mean, base, base * CTX_COLUMNS + col];
                let sel = bits * 4 + depth.min(3);
                let bit = model.mantissa.code(io, ctx, sel, x >> j & 1 == 1)?;
                value = 2 * value + u32::from(bit);
                node = 2 * node + usize::from(bit);
            }
            let magnitude = value as i32 + min - 1;
            let v = if negative { -magnitude } else { magnitude };
            data[i] = i8::try_from(v).map_err(|_| PruneError::InconsistentSparse {
                reason: "a decoded value is outside the int8 range",
                nnz: nnz as u64,
                popcount: nnz as u64,
                len: data.len() as u64,
            })?;
        }
    }
    Ok(nnz)
}

/// Elements looked at per candidate stride: the search stays cheap on large tensors.
const SEARCH_ELEMENTS: usize = 1 << 17;
/// Largest stride tried (and, multiples of the first stride aside, for the second).
const MAX_STRIDE: usize = 256;
/// A stride must save this many bits (by the estimate below) to be used.
const MIN_GAIN_BITS: f64 = 32.0;

/// `Σ n · H(counts)` in bits: the cost of coding with a static model per context.
fn cost_bits(counts: &[[u32; 2]]) -> f64 {
    let xlogx = |v: u32| {
        let v = f64::from(v);
        if v > 0.0 { v * v.log2() } else { 0.0 }
    };
    counts
        .iter()
        .map(|&[a, b]| xlogx(a + b) - xlogx(a) - xlogx(b))
        .sum()
}

/// Estimated bits of the mask and the signs of the first `rows` rows, with the elements
/// `strides` rows back as context (stride 0: none).
fn context_cost(data: &[i8], rows: usize, cols: usize, strides: [usize; 2]) -> f64 {
    // Contexts: the two neighbours' states (zero, positive, negative) → 9.
    let mut mask = [[0u32; 2]; 9];
    let mut sign = [[0u32; 2]; 9];
    let state = |v: i32| (v.signum() + 1) as usize;
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            let a = state(above(data, i, r, cols, strides[0]));
            let b = state(above(data, i, r, cols, strides[1]));
            let (az, bz) = (usize::from(a != 1), usize::from(b != 1));
            let v = data[i];
            mask[az * 3 + bz][usize::from(v != 0)] += 1;
            if v != 0 {
                sign[a * 3 + b][usize::from(v < 0)] += 1;
            }
        }
    }
    cost_bits(&mask) + cost_bits(&sign)
}

/// The two row strides whose elements best predict the mask and the signs (0 for none), by a
/// static estimate on the first rows: the best single stride, then the best second one given
/// it, among `1..=256` and the multiples of the first (the pixel above, in an image's rows of
/// pixels × channels).
pub(super) fn choose_strides(data: &[i8], rows: usize, cols: usize) -> [usize; 2] {
    if rows < 2 || cols == 0 || data.iter().all(|&v| v == 0) {
        return [0, 0];
    }
    let rows = rows.min((SEARCH_ELEMENTS / cols).max(2));
    // The candidate that lowers the estimate most, if it beats `other` alone by the margin.
    let best = |candidates: &mut dyn Iterator<Item = usize>, other: usize| {
        let base = context_cost(data, rows, cols, [other, 0]);
        let mut best = (base, 0);
        for s in candidates {
            let cost = context_cost(data, rows, cols, [other, s]);
            if cost < best.0 {
                best = (cost, s);
            }
        }
        if best.0 < base - MIN_GAIN_BITS {
            best.1
        } else {
            0
        }
    };
    let first = best(&mut (1..rows.min(MAX_STRIDE + 1)), 0);
    if first == 0 {
        return [0, 0];
    }
    let multiples = (2..)
        .map(|k| k * first)
        .take_while(|&s| s < rows)
        .take(MAX_STRIDE);
    let mut candidates = (1..rows.min(MAX_STRIDE + 1))
        .filter(|&s| s != first)
        .chain(multiples.filter(|&s| s > MAX_STRIDE));
    [first, best(&mut candidates, first)]
}
