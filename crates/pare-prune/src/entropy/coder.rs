//! The binary arithmetic coder and the adaptive models that feed it: counters, logistic mixing.
//!
//! The range coder is LZMA's (a 32-bit range, 12-bit probabilities, carries propagated through a
//! cached byte and a run of `0xff` bytes), minus its first output byte, which is always zero.
//! Everything is integer arithmetic, so encoder and decoder agree bit for bit on every platform.
//! The mixer is lpaq1's: each model's probability goes through `stretch` (the logit, in 1/256
//! nats), a weighted sum goes back through `squash`, and the weights follow the gradient of the
//! coding cost.

use crate::error::{PruneError, Result};

/// Probabilities handed to the coder are `P(bit = 1)` in units of 1/4096.
pub(super) const PROB_BITS: u32 = 12;
const PROB_ONE: i32 = 1 << PROB_BITS;
const TOP: u32 = 1 << 24;

/// Codes one binary decision with probability `p1 / 4096` of a one. The encoder codes `bit` and
/// returns it; the decoder ignores `bit` and returns the decoded one. Writing the model once over
/// this trait keeps the two sides in step by construction.
pub(super) trait BitIo {
    /// Codes `bit` (encoder) or decodes a bit (decoder).
    fn code(&mut self, bit: bool, p1: i32) -> Result<bool>;

    /// Marks which part of the model the next decisions belong to; only a cost-counting test
    /// coder cares.
    fn part(&mut self, _part: Part) {}
}

/// The kinds of decision the tensor model codes, for cost breakdowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// The columns' smallest magnitudes.
    Minimum,
    /// Non-zero or not.
    Mask,
    Sign,
    /// The magnitude's bit length.
    Length,
    /// The magnitude's bits below the leading one.
    Mantissa,
}

/// A coder that codes nothing and adds up the ideal cost, `-log2 p` per decision, of each
/// [`Part`] (indexed by its discriminant).
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct CostIo {
    part: usize,
    pub(super) bits: [f64; 5],
    pub(super) decisions: [usize; 5],
}

#[cfg(test)]
impl BitIo for CostIo {
    fn code(&mut self, bit: bool, p1: i32) -> Result<bool> {
        let p0 = f64::from(p0_of(p1)) / f64::from(PROB_ONE);
        let p = if bit { 1.0 - p0 } else { p0 };
        self.bits[self.part] -= p.log2();
        self.decisions[self.part] += 1;
        Ok(bit)
    }

    fn part(&mut self, part: Part) {
        self.part = part as usize;
    }
}

/// Probability of a zero in coder units, kept inside `[1, 4095]` so both symbols stay codable.
fn p0_of(p1: i32) -> u32 {
    (PROB_ONE - p1).clamp(1, PROB_ONE - 1) as u32
}

pub(super) struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    /// Bytes not yet written: the cached byte and the `0xff` bytes after it, which a carry may
    /// still change.
    pending: u64,
    /// Whether the cached byte is the always-zero first byte, which is never written.
    first: bool,
    out: Vec<u8>,
}

impl Encoder {
    pub(super) fn new() -> Encoder {
        Encoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            pending: 1,
            first: true,
            out: Vec::new(),
        }
    }

    fn shift_low(&mut self) {
        if self.low < 0xff00_0000 || self.low >= 1 << 32 {
            let carry = (self.low >> 32) as u8;
            let mut byte = self.cache;
            while self.pending > 0 {
                if !self.first {
                    self.out.push(byte.wrapping_add(carry));
                }
                self.first = false;
                byte = 0xff;
                self.pending -= 1;
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.pending += 1;
        self.low = (self.low & 0x00ff_ffff) << 8;
    }

    /// The stream: exactly the bytes the decoder reads, no more (so a cut one is missed and an
    /// extra one is left over).
    pub(super) fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

impl BitIo for Encoder {
    fn code(&mut self, bit: bool, p1: i32) -> Result<bool> {
        let bound = (self.range >> PROB_BITS) * p0_of(p1);
        if bit {
            self.low += u64::from(bound);
            self.range -= bound;
        } else {
            self.range = bound;
        }
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
        Ok(bit)
    }
}

pub(super) struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    range: u32,
    code: u32,
}

impl<'a> Decoder<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Result<Decoder<'a>> {
        let mut d = Decoder {
            bytes,
            pos: 0,
            range: u32::MAX,
            code: 0,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | u32::from(d.next_byte()?);
        }
        Ok(d)
    }

    fn next_byte(&mut self) -> Result<u8> {
        let b = *self.bytes.get(self.pos).ok_or(PruneError::Truncated {
            part: "entropy-coded stream",
            needed: self.pos as u64 + 1,
            available: self.bytes.len() as u64,
        })?;
        self.pos += 1;
        Ok(b)
    }

    /// Bytes left unread.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

impl BitIo for Decoder<'_> {
    fn code(&mut self, _bit: bool, p1: i32) -> Result<bool> {
        let bound = (self.range >> PROB_BITS) * p0_of(p1);
        // A corrupt stream can leave `code >= range`; the arithmetic below then stays in range
        // (it only ever subtracts `bound <= code`) and the damage shows as wrong data or a
        // failed check, never as a panic.
        let bit = self.code >= bound;
        if bit {
            self.code -= bound;
            self.range -= bound;
        } else {
            self.range = bound;
        }
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte()?);
        }
        Ok(bit)
    }
}

/// An adaptive estimate of `P(1)`: 16-bit probability plus the number of updates seen, capped.
/// Below the cap each update moves the estimate by `1 / (n + 2)`, which is exactly the
/// Krichevsky–Trofimov estimator `(ones + 1/2) / (n + 1)` (the best choice for short binary
/// sources); at the cap it becomes an exponential moving average, so it can follow drift.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counter {
    p: u16,
    n: u8,
}

impl Counter {
    pub(super) const NEW: Counter = Counter { p: 1 << 15, n: 0 };

    /// `P(1)` in coder units (1/4096).
    pub(super) fn p12(self) -> i32 {
        i32::from(self.p >> 4)
    }

    pub(super) fn update(&mut self, bit: bool, limit: u8) {
        let p = i32::from(self.p);
        let target = if bit { 0xffff } else { 0 };
        // Truncating division keeps the result between p and target, so inside u16.
        self.p = (p + (target - p) / (i32::from(self.n) + 2)) as u16;
        if self.n < limit {
            self.n += 1;
        }
    }
}

/// `squash(d) = 4096 / (1 + e^(-d / 256))`, by interpolation in a 33-entry table (lpaq1's).
const fn squash(d: i32) -> i32 {
    const T: [i32; 33] = [
        1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994,
        3348, 3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094,
    ];
    if d > 2047 {
        return 4095;
    }
    if d < -2047 {
        return 1;
    }
    let w = d & 127;
    let i = ((d >> 7) + 16) as usize;
    (T[i] * (128 - w) + T[i + 1] * w + 64) >> 7
}

/// The inverse of [`squash`]: `stretch(p) = ln(p / (1 - p))` in 1/256 nats, for `p` in 1/4096.
const STRETCH: [i16; 4096] = {
    let mut t = [0i16; 4096];
    let mut next = 0usize;
    let mut x = -2047;
    while x <= 2047 {
        let v = squash(x) as usize;
        while next <= v {
            t[next] = x as i16;
            next += 1;
        }
        x += 1;
    }
    while next < 4096 {
        t[next] = 2047;
        next += 1;
    }
    t
};

fn stretch(p12: i32) -> i32 {
    i32::from(STRETCH[p12.clamp(0, 4095) as usize])
}

/// Weights are 16.16 fixed point, kept within ±16 so no sum can overflow, whatever a corrupt
/// stream makes the decoder learn.
const WEIGHT_MAX: i32 = 16 << 16;
/// Initial weight of each context model: about 0.21, so the four or five that agree give about
/// their common logit; the weights adapt from there. Direct inputs start at 0.
const INITIAL_WEIGHT: i32 = 14_000;
/// The learning rate, `Δw = rate · err · x`: `LEARNING_RATE` (about 0.006 in floating-point
/// units) plus a boost, `RATE_BOOST / (1 + n / BOOST_HALF_LIFE)` after `n` updates of the
/// weight set. A tensor gives a few thousand updates per set, so fast early learning pays.
const LEARNING_RATE: i64 = 24;
const RATE_BOOST: i64 = 128;
const BOOST_HALF_LIFE: i64 = 256;
/// Mean squared input at which the rate is as above; it scales with `2 / (1 + mean / this)`,
/// as in normalised LMS, so a set whose inputs are all confident takes smaller steps.
const INPUT_NORM: u32 = 1 << 18;
/// Fraction bits of that scale.
const NORM_SHIFT: u32 = 12;

/// Learning rate of the second layer, which only needs to find the groups' relative trust.
const FINAL_RATE: i64 = 8;
/// A constant input, so the mixer can learn a bias.
const BIAS_INPUT: i32 = 256;

/// `Σ w·x` in stretch units (1/256), clamped to what `squash` takes.
fn dot<const K: usize>(w: &[i32; K], x: &[i32; K]) -> i32 {
    // |w| <= 2^20 and |x| < 2^11: no overflow for any K that fits in memory.
    let sum: i64 = w
        .iter()
        .zip(x)
        .map(|(&w, &x)| i64::from(w) * i64::from(x))
        .sum();
    (sum >> 16).clamp(-2047, 2047) as i32
}

/// Moves `w` along `x` by `err · rate` (`err` in 1/4096, the coder's unit).
fn train<const K: usize>(w: &mut [i32; K], x: &[i32; K], err: i32, rate: i64) {
    let e = i64::from(err) * rate;
    for (wi, &xi) in w.iter_mut().zip(x) {
        // |x| < 2^11 and |e| < 2^21, so the step is below 2^16 and the sum fits in i32.
        let step = ((i64::from(xi) * e + (1 << 15)) >> 16) as i32;
        *wi = (*wi + step).clamp(-WEIGHT_MAX, WEIGHT_MAX);
    }
}

/// One binary decision of the tensor model: `N` adaptive models (tables of counters indexed by
/// a context each) and `I - N - 1` direct inputs (features already in stretch units), `I`
/// inputs with the bias, mixed lpaq-style by one weight set from each of `G` groups (each group
/// picks its set by a small context of its own), whose outputs a second, small mixer combines,
/// as paq8's two-layer mixer does. The counts are type parameters so the loops unroll.
pub(super) struct MixedBit<const N: usize, const I: usize, const G: usize> {
    tables: [Vec<Counter>; N],
    limit: u8,
    /// Index of each group's first weight set.
    group_start: [usize; G],
    /// The weight sets (the last weight for the bias input).
    weights: Vec<[i32; I]>,
    /// Updates per weight set, for the rate boost (saturating).
    updates: Vec<u32>,
    /// Second layer: one weight per group, in sets chosen by the first group's selector.
    final_weights: Vec<[i32; G]>,
}

impl<const N: usize, const I: usize, const G: usize> MixedBit<N, I, G> {
    /// `sizes[i]` contexts for model `i`, `groups[g]` weight sets in group `g`; counters capped
    /// at `limit` updates.
    ///
    /// # Panics
    /// If `I <= N` (no room for the bias) or `G == 0`.
    pub(super) fn new(sizes: [usize; N], groups: [usize; G], limit: u8) -> Self {
        assert!(
            I > N && G > 0,
            "MixedBit::new: {N} models, {I} inputs, {G} groups"
        );
        let sets: usize = groups.iter().sum();
        let mut initial = [0; I];
        initial[..N].fill(INITIAL_WEIGHT);
        let mut group_start = [0; G];
        for g in 1..G {
            group_start[g] = group_start[g - 1] + groups[g - 1];
        }
        MixedBit {
            tables: sizes.map(|n| vec![Counter::NEW; n]),
            limit,
            group_start,
            weights: vec![initial; sets],
            updates: vec![0; sets],
            final_weights: vec![[(1 << 16) / G as i32; G]; groups[0]],
        }
    }

    /// Codes one decision: `ctx[i]` indexes model `i`'s table, `features` are the direct
    /// inputs, `sets[g]` picks group `g`'s weight set.
    ///
    /// # Panics
    /// If a context or set is out of the range given to [`MixedBit::new`], or there are not
    /// `I - N - 1` features (a bug in the tensor model, never caused by input data).
    pub(super) fn code(
        &mut self,
        io: &mut impl BitIo,
        ctx: [usize; N],
        features: &[i32],
        sets: [usize; G],
        bit: bool,
    ) -> Result<bool> {
        assert_eq!(features.len(), I - N - 1, "MixedBit::code: feature count");
        let mut x = [0i32; I];
        for (xi, (table, &c)) in x.iter_mut().zip(self.tables.iter().zip(&ctx)) {
            *xi = stretch(table[c].p12());
        }
        for (xi, &f) in x[N..].iter_mut().zip(features) {
            *xi = f.clamp(-2047, 2047);
        }
        x[I - 1] = BIAS_INPUT;
        let mut set_index = [0usize; G];
        let mut st = [0i32; G];
        for g in 0..G {
            set_index[g] = self.group_start[g] + sets[g];
            st[g] = dot(&self.weights[set_index[g]], &x);
        }
        let p = if G == 1 {
            squash(st[0])
        } else {
            squash(dot(&self.final_weights[sets[0]], &st))
        };
        let bit = io.code(bit, p)?;

        let target = i32::from(bit) << PROB_BITS;
        // At most 2^22 per input: no overflow in u64.
        let square_sum: u64 = x.iter().map(|&v| u64::from((v * v).unsigned_abs())).sum();
        let norm = u64::from(INPUT_NORM) * I as u64;
        // `2 · norm / (norm + Σx²)` in 1/2^NORM_SHIFT, one division per decision.
        let scale = (((2 * norm) << NORM_SHIFT) / (norm + square_sum)) as i64;
        for (&set, &s) in set_index.iter().zip(&st) {
            let n = self.updates[set];
            self.updates[set] = n.saturating_add(1);
            let boost = RATE_BOOST * BOOST_HALF_LIFE / (BOOST_HALF_LIFE + i64::from(n));
            let rate = ((LEARNING_RATE + boost) * scale) >> NORM_SHIFT;
            train(&mut self.weights[set], &x, target - squash(s), rate);
        }
        if G > 1 {
            train(
                &mut self.final_weights[sets[0]],
                &st,
                target - p,
                FINAL_RATE,
            );
        }
        for (table, &c) in self.tables.iter_mut().zip(&ctx) {
            table[c].update(bit, self.limit);
        }
        Ok(bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn squash_and_stretch_are_inverse_and_monotone() {
        assert_eq!(squash(0), 2047);
        assert_eq!((squash(-2048), squash(2048)), (1, 4095));
        for d in -2047..2047 {
            assert!(squash(d) <= squash(d + 1), "squash not monotone at {d}");
        }
        for p in 1..4095 {
            assert!(STRETCH[p] <= STRETCH[p + 1], "stretch not monotone at {p}");
            // stretch picks the smallest d whose squash reaches p.
            let d = i32::from(STRETCH[p]);
            assert!(squash(d) >= p as i32 && (d == -2047 || squash(d - 1) < p as i32));
        }
        // Against the real logistic function: the 33 knots interpolated linearly stay within
        // 13.3 / 4096 of it (worst near d = 318, measured); a coarse logit only costs the
        // mixer a little sharpness.
        for d in -2047..=2047 {
            let exact = 4096.0 / (1.0 + (-f64::from(d) / 256.0).exp());
            assert!((f64::from(squash(d)) - exact).abs() < 13.5, "squash({d})");
        }
    }

    #[test]
    fn counter_is_the_kt_estimator_until_its_limit() {
        let mut c = Counter::NEW;
        let bits = [true, true, false, true, true, true, false, true];
        let mut ones = 0.0;
        for (n, &b) in bits.iter().enumerate() {
            c.update(b, 100);
            ones += f64::from(u8::from(b));
            let kt = (ones + 0.5) / (n as f64 + 2.0);
            approx::assert_abs_diff_eq!(f64::from(c.p) / 65536.0, kt, epsilon = 1e-3);
        }
        // At the limit it keeps adapting at a fixed rate.
        let mut c = Counter::NEW;
        for _ in 0..1000 {
            c.update(true, 30);
        }
        assert_eq!(c.n, 30);
        assert!(c.p12() >= 4090);
        for _ in 0..200 {
            c.update(false, 30);
        }
        assert!(c.p12() < 100);
    }

    /// Codes `bits` with fixed probabilities and decodes them back.
    fn round_trip(bits: &[bool], probs: &[i32]) -> Vec<u8> {
        let mut e = Encoder::new();
        for (&b, &p) in bits.iter().zip(probs) {
            e.code(b, p).unwrap();
        }
        let stream = e.finish();
        let mut d = Decoder::new(&stream).unwrap();
        for (i, (&b, &p)) in bits.iter().zip(probs).enumerate() {
            assert_eq!(d.code(false, p).unwrap(), b, "bit {i}");
        }
        assert_eq!(d.remaining(), 0, "the decoder reads the whole stream");
        stream
    }

    #[test]
    fn coder_round_trips_and_reaches_the_entropy() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in [0, 1, 7, 63, 65, 1000] {
            let probs: Vec<i32> = (0..n).map(|_| rng.random_range(-10..5000)).collect();
            let bits: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
            round_trip(&bits, &probs);
        }
        // Long runs of the likely symbol at extreme probabilities (carries, 0xff runs).
        let bits = vec![true; 100_000];
        let s = round_trip(&bits, &vec![4095; 100_000]);
        assert!(s.len() < 20, "{} bytes", s.len());
        let s = round_trip(&bits, &vec![1; 100_000]);
        assert!(s.len() > 100_000 * 11 / 8, "{} bytes", s.len());
        // 20 000 decisions with P(1) = 0.2 coded at that probability: within 0.1 % + the
        // 4-byte flush of n·H(0.2) bits.
        let bits: Vec<bool> = (0..20_000).map(|_| rng.random_bool(0.2)).collect();
        let ones = bits.iter().filter(|&&b| b).count() as f64;
        let ideal = -(ones * 0.2f64.log2() + (20_000.0 - ones) * 0.8f64.log2()) / 8.0;
        let s = round_trip(&bits, &vec![819; 20_000]);
        assert!(
            (s.len() as f64) < ideal * 1.001 + 5.0,
            "{} vs {ideal}",
            s.len()
        );
    }

    #[test]
    fn decoder_errors_past_the_end() {
        assert!(matches!(
            Decoder::new(&[0, 0, 0]),
            Err(PruneError::Truncated { .. })
        ));
        let mut e = Encoder::new();
        for i in 0..500 {
            e.code(i % 3 == 0, 1365).unwrap();
        }
        let s = e.finish();
        let mut d = Decoder::new(&s[..s.len() - 1]).unwrap();
        let r: Result<Vec<bool>> = (0..500).map(|_| d.code(false, 1365)).collect();
        assert!(matches!(r, Err(PruneError::Truncated { .. })), "{r:?}");
    }

    #[test]
    fn mixer_learns_a_predictable_source() {
        // A bit that equals the previous one 95 % of the time: with the previous bit as context
        // the mixed model must get near H(0.05) = 0.29 bits per decision.
        let mut rng = StdRng::seed_from_u64(2);
        let mut bits = vec![false];
        for _ in 0..20_000 {
            let last = bits[bits.len() - 1];
            bits.push(if rng.random_bool(0.95) { last } else { !last });
        }
        let mut m = MixedBit::<2, 3, 1>::new([2, 1], [1], 255);
        let mut e = Encoder::new();
        for w in bits.windows(2) {
            m.code(&mut e, [usize::from(w[0]), 0], &[], [0], w[1])
                .unwrap();
        }
        let s = e.finish();
        let bpd = s.len() as f64 * 8.0 / 20_000.0;
        assert!(bpd < 0.31, "{bpd} bits per decision");
        let mut m = MixedBit::<2, 3, 1>::new([2, 1], [1], 255);
        let mut d = Decoder::new(&s).unwrap();
        for w in bits.windows(2) {
            assert_eq!(
                m.code(&mut d, [usize::from(w[0]), 0], &[], [0], false)
                    .unwrap(),
                w[1]
            );
        }
    }
}
