//! The context model of a pruned int8 kernel, shared by the encoder and the decoder.
//!
//! The tensor is seen as a matrix (a vector as one column): rows are the product of all axes but
//! the last, columns the last axis (a kernel's output channels). A trained kernel that reads an
//! image is smooth in space: the weight of the same output at the neighbouring pixel, a fixed
//! number of rows back (`12` rows in the small CNN's dense kernel, whose rows are 13 × 13 pixels
//! × 12 channels; `156` for the pixel above), is very likely to share its sign (98 % there) and
//! whether it survived pruning. The encoder finds two such row strides ([`choose_strides`]) and
//! the model conditions every decision on the neighbours they point at: left `l` and up `u` (one
//! stride each), the two diagonals and the second neighbours along each stride. The smaller
//! stride also splits the rows into groups (a pixel's channels): whether the same column
//! survived in the group's earlier rows says how much that pixel matters to that output.
//!
//! Per element, in row-major order, each decision mixing several adaptive models (see
//! [`MixedBit`]):
//!
//! 1. non-zero or not: seven context models (the four nearest neighbours' non-zero pattern,
//!    alone and with the group's density so far; `l`, `u` with the channel `row % stride`, with
//!    the column and with the neighbours' predicted magnitude; the second neighbours with `l`'s
//!    and `u`'s magnitude; the column with the row's last three decisions) and twelve direct
//!    inputs: how far above the column's pruning threshold each neighbour and the two rows before
//!    are, on a log scale, and the share of non-zeros among the group's and the row's earlier
//!    elements. Four weight sets mix them, chosen by how many of `l`, `u` are non-zero, by the
//!    channel, by the column and one for all, and a second mixer combines the four;
//! 2. the sign: the signs of the four nearest neighbours; of `l`, `u` with the column and with
//!    the channel; of the second neighbours and the row before with the column; the channel with
//!    the column; each of the row's last two non-zeros with its column and this one; and the
//!    neighbours' signed log magnitudes as direct inputs;
//! 3. the magnitude `|v|`, as `x = |v| − min + 1` where `min` is the column's smallest non-zero
//!    magnitude (magnitude pruning leaves nothing below a threshold, and per-channel scales put it
//!    at a different code in every column; the minima go first in the stream, a single one when
//!    the tensor has fewer than 16 rows), exponential-Golomb binarised with order 3: the bit
//!    length of `x + 7` (4 to 8) in unary, then its bits below the leading one. (A trained
//!    kernel's `x` is no more likely to be 1 than 8, so Elias gamma's short codes for the
//!    smallest values bought nothing.) The length decisions see the neighbours' mean magnitude,
//!    the column, the channel, how many neighbours are non-zero and their mean log magnitude
//!    above the threshold, mixed per length, per length and column and per length and channel;
//!    the bits below the leading one (a 3-level tree, then one context per bit) see the
//!    neighbours' mean magnitude and the column, mixed per length and depth, per depth and one
//!    for all.
//!
//! Columns and channels past the 16th share the last context, so memory is about 40 KiB plus a
//! few words per column, whatever the shape.

use super::coder::{BitIo, Counter, MixedBit, Part};
use crate::error::{PruneError, Result};

/// Columns (and channels) with a context of their own; the rest share the last one.
const CTX_COLUMNS: usize = 16;
/// Counter limits: the mask drifts from channel to channel, the values much less.
const MASK_LIMIT: u8 = 120;
const VALUE_LIMIT: u8 = 255;
const MIN_LIMIT: u8 = 30;
/// Columns shorter than this share one minimum magnitude.
const MIN_ROWS_PER_COLUMN_MINIMUM: usize = 16;
/// The exponential-Golomb order of the magnitudes: `x + 2^k - 1` is coded as its length and
/// its bits below the leading one. On the small CNN's int8 kernels order 3 measured 0.1 %
/// smaller than Elias gamma (order 0) in all, 7 bytes on the 80 %-pruned dense kernel.
const GOLOMB_ORDER: u32 = 3;
/// Longest length: `x + 7 <= 135` has at most 7 bits below its leading one.
const MAX_EXTRA_BITS: usize = 7;
/// Bits below the leading one with a context per tree node; the rest one per bit position.
const MANTISSA_TREE_DEPTH: usize = 3;
/// Direct mixer inputs of the mask decision.
const MASK_FEATURES: usize = 12;
/// Scale of the mask's direct inputs: twice [`log_ratio`]'s, which doubles their effective
/// learning rate against the context models' (measured: about 1 % of the mask's cost).
const MASK_FEATURE_GAIN: i32 = 2;
/// Direct mixer inputs of the sign decision.
const SIGN_FEATURES: usize = 6;

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
    mask: MixedBit<7, { 7 + MASK_FEATURES + 1 }, 4>,
    sign: MixedBit<7, { 7 + SIGN_FEATURES + 1 }, 1>,
    length: MixedBit<5, 6, 3>,
    mantissa: MixedBit<3, 4, 3>,
    minimum: Vec<Counter>,
}

impl Model {
    fn new() -> Model {
        let c = CTX_COLUMNS;
        let len = MAX_EXTRA_BITS;
        // Mantissa decisions: 8 lengths × 16 slots (the tree's nodes, then one per bit).
        let slots = (MAX_EXTRA_BITS + 1) * 16;
        Model {
            mask: MixedBit::new(
                [16, c * 4, c * 4, 16, c * 8, 5 * 16, 10 * 4],
                [3, c, c, 1],
                MASK_LIMIT,
            ),
            sign: MixedBit::new(
                [81, 9 * c, c * c, 9 * c, 27 * c, c * c * 3, c * c * 3],
                [1],
                VALUE_LIMIT,
            ),
            length: MixedBit::new(
                [len * 7, len * c, len * 5, len * 16, len * c],
                [len, len * c, len * c],
                VALUE_LIMIT,
            ),
            mantissa: MixedBit::new(
                [slots * 7, slots, slots * c],
                [(MAX_EXTRA_BITS + 1) * 4, 1, 5],
                VALUE_LIMIT,
            ),
            minimum: vec![Counter::NEW; 128],
        }
    }

    /// Codes `v` in `0..128` as 7 bits through a binary tree of counters.
    fn code_minimum(&mut self, io: &mut impl BitIo, v: usize) -> Result<usize> {
        io.part(Part::Minimum);
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

/// `2^24 / m` for a magnitude `m` in `1..=128`: dividing by it is multiplying by this.
fn reciprocal(m: i32) -> u32 {
    (1 << 24) / m.clamp(1, 128).unsigned_abs()
}

/// `256 · log2(1 + |a| / m)` for `|a| <= 128`, given `reciprocal(m)`, with a linear mantissa
/// (within 0.09 of the exact logarithm's 256ths): how far above the pruning threshold `m` a
/// neighbour is, on the log scale that magnitudes spread on; 0 for a zero, 256 at the
/// threshold.
fn log_ratio(a: i32, reciprocal: u32) -> i32 {
    // |a| · 2^24 / m < 2^32 since |a| <= 128, and t < 2^16.
    let t = ((a.unsigned_abs().min(128) * reciprocal) >> 16) + 256;
    let e = 31 - t.leading_zeros();
    let frac = (t >> (e - 8)) & 0xff;
    ((e as i32 - 8) << 8) + frac as i32
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
    let inverse: Vec<u32> = mins.iter().map(|&m| reciprocal(m)).collect();
    let off = Offsets::new(strides);
    // Rows per group (a pixel's channels): the smaller stride.
    let group = match strides {
        [a, 0] | [0, a] => a,
        [a, b] => a.min(b),
    };
    // Per column: the non-zeros among the current group's earlier rows.
    let mut group_nnz = vec![0usize; cols];
    let mut nnz = 0;
    for r in 0..rows {
        let channel = if strides[0] > 0 {
            (r % strides[0]).min(CTX_COLUMNS - 1)
        } else {
            0
        };
        let in_group = if group > 0 { r % group } else { 0 };
        if in_group == 0 {
            group_nnz.fill(0);
        }
        let mut row_nnz = 0usize;
        // The row's last three mask decisions (bit 0: the previous column).
        let mut row_mask = 0usize;
        // The row's last two non-zeros so far, as (column context, value).
        let mut row_last = [(0usize, 0i32); 2];
        for (c, (&min, &inv)) in mins.iter().zip(&inverse).enumerate() {
            let i = r * cols + c;
            let at = |o| above(data, i, r, cols, o);
            let (l, u, ul, ur) = (at(off.l), at(off.u), at(off.ul), at(off.ur));
            let (ll, uu) = (at(off.ll), at(off.uu));
            // The two rows just before: in an image kernel, the pixel's previous channels.
            let (r1, r2) = (at(1), at(2));
            let nz = |v: i32| usize::from(v != 0);
            let col = c.min(CTX_COLUMNS - 1);
            let lu = nz(l) + 2 * nz(u);
            let near = lu + 4 * nz(ul) + 8 * nz(ur);
            let strength = ((l.abs() + u.abs()) / 30).min(3) as usize;
            // 0 for a group's first row, then 1 + the quarters of its earlier rows non-zero.
            let density = (4 * group_nnz[c])
                .checked_div(in_group)
                .map_or(0, |q| 1 + q.min(3));
            // The neighbours' weighted sum in threshold units (16ths), log-bucketed.
            let predicted = {
                // At most 768 · 2^24 · 8, below 2^64.
                let sum = u64::from((2 * l + 2 * u + ul + ur).unsigned_abs());
                let p = (sum * u64::from(inv) * 8 / 3) >> 24;
                if p == 0 {
                    0
                } else {
                    (1 + p.ilog2() as usize).min(9)
                }
            };
            let ctx = [
                near,
                channel * 4 + lu,
                col * 4 + lu,
                strength * 4 + nz(ll) + 2 * nz(uu),
                col * 8 + row_mask,
                density * 16 + near,
                predicted * 4 + lu,
            ];
            let share = |k: usize, n: usize| (256 * k).checked_div(n).map_or(0, |q| q as i32);
            let on = |v: i32| if v != 0 { 256 } else { 0 };
            let features = [
                log_ratio(l, inv),
                log_ratio(u, inv),
                log_ratio(ul, inv),
                log_ratio(ur, inv),
                log_ratio(ll, inv),
                log_ratio(uu, inv),
                log_ratio(r1, inv),
                log_ratio(r2, inv),
                on(r1),
                on(r2),
                share(group_nnz[c], in_group),
                share(row_nnz, c),
            ]
            .map(|f| f * MASK_FEATURE_GAIN);
            io.part(Part::Mask);
            let sets = [nz(l) + nz(u), channel, col, 0];
            let survived = model.mask.code(io, ctx, &features, sets, data[i] != 0)?;
            row_mask = (row_mask << 1 | usize::from(survived)) & 7;
            if !survived {
                data[i] = 0;
                continue;
            }
            nnz += 1;
            row_nnz += 1;
            group_nnz[c] += 1;

            let sg = |v: i32| (v.signum() + 1) as usize;
            let ctx = [
                sg(l) * 27 + sg(u) * 9 + sg(ul) * 3 + sg(ur),
                (sg(l) * 3 + sg(u)) * CTX_COLUMNS + col,
                channel * CTX_COLUMNS + col,
                (sg(l) * 3 + sg(u)) * CTX_COLUMNS + channel,
                (sg(ll) * 9 + sg(uu) * 3 + sg(r1)) * CTX_COLUMNS + col,
                (col * CTX_COLUMNS + row_last[0].0) * 3 + sg(row_last[0].1),
                (col * CTX_COLUMNS + row_last[1].0) * 3 + sg(row_last[1].1),
            ];
            let signed = |v: i32| v.signum() * log_ratio(v, inv);
            let features = [l, u, ul, ur, ll, uu].map(signed);
            io.part(Part::Sign);
            let negative = model.sign.code(io, ctx, &features, [0], data[i] < 0)?;

            // Encoder: in 1..=128 since |v| >= min. Decoder: a placeholder, ignored.
            let x = (i32::from(data[i]).abs() - min + 1).clamp(1, 128) as u32;
            let xk = x + (1 << GOLOMB_ORDER) - 1;
            let extra = (31 - xk.leading_zeros()) as usize;
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
            // The neighbours' mean log2 x, in half-octaves (15: no non-zero neighbour).
            let log_mean = {
                let (mut s, mut w) = (0, 0);
                for (v, weight) in [(l, 2), (u, 2), (ul, 1), (ur, 1), (ll, 1), (uu, 1)] {
                    if v != 0 {
                        s += weight * log_ratio(v.abs() - min, 1 << 24);
                        w += weight;
                    }
                }
                if w > 0 {
                    (s / w / 128).min(14) as usize
                } else {
                    15
                }
            };
            io.part(Part::Length);
            let mut bits = GOLOMB_ORDER as usize;
            while bits < MAX_EXTRA_BITS {
                let ctx = [
                    bits * 7 + mean,
                    bits * CTX_COLUMNS + col,
                    bits * 5 + count,
                    bits * 16 + log_mean,
                    bits * CTX_COLUMNS + channel,
                ];
                let sets = [bits, bits * CTX_COLUMNS + col, bits * CTX_COLUMNS + channel];
                if !model.length.code(io, ctx, &[], sets, bits < extra)? {
                    break;
                }
                bits += 1;
            }
            let (mut value, mut node) = (1u32, 1usize);
            io.part(Part::Mantissa);
            for j in (0..bits).rev() {
                let depth = bits - 1 - j;
                let slot = if depth < MANTISSA_TREE_DEPTH {
                    node
                } else {
                    (1 << MANTISSA_TREE_DEPTH) + j
                };
                let base = bits * 16 + slot;
                let ctx = [base * 7 + mean, base, base * CTX_COLUMNS + col];
                let sets = [bits * 4 + depth.min(3), 0, depth.min(4)];
                let bit = model.mantissa.code(io, ctx, &[], sets, xk >> j & 1 == 1)?;
                value = 2 * value + u32::from(bit);
                node = 2 * node + usize::from(bit);
            }
            // value >= 2^GOLOMB_ORDER: the length starts at the order.
            let magnitude = (value + 1 - (1 << GOLOMB_ORDER)) as i32 + min - 1;
            let v = if negative { -magnitude } else { magnitude };
            row_last = [(col, v), row_last[0]];
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
