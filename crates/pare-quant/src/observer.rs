//! Observers: statistics collected over calibration batches that choose a float range to
//! quantize, per tensor or per channel.
//!
//! | observer | range it returns | source |
//! | --- | --- | --- |
//! | [`MinMaxObserver`] | running min and max | TFLite's calibrator |
//! | [`MovingAverageMinMaxObserver`] | exponential moving average of batch min/max | PyTorch |
//! | [`PercentileObserver`] | the `(100 − p)`th and `p`th percentiles | common practice |
//! | [`MseObserver`] | the clipping range minimising expected squared error | PyTorch's `HistogramObserver` idea |
//! | [`KlObserver`] | the `|x|` threshold minimising KL divergence | TensorRT's entropy calibration |
//!
//! Every observer skips NaN and ±∞ and counts them ([`Observer::non_finite`]); asking for the
//! range of an observer (or channel) that saw no finite value is [`QuantError::NoData`]. A
//! constant tensor is fine: its range is a single point, which
//! [`QuantParams`] widens to include 0.
//!
//! The histogram observers keep a fixed number of bins (2048 by default) per channel, so memory
//! does not grow with the data. When a batch falls outside the current histogram, the bin width
//! is doubled (merging neighbouring bins pairwise) and the range shifted by whole bins until it
//! covers the batch: old counts are moved exactly, never re-spread, and at least half of the
//! bins stay in use.

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayViewD, Axis};

use crate::error::{QuantError, Result};
use crate::params::{Granularity, QMAX_I8, QuantParams, QuantScheme, Range};

/// Collects statistics over calibration batches and turns them into a quantization range.
pub trait Observer: Send + fmt::Debug {
    /// Short name, as parsed by [`ObserverKind`].
    fn name(&self) -> &'static str;

    /// Per tensor, or per channel along an axis.
    fn granularity(&self) -> Granularity;

    /// Adds a batch. Non-finite values are skipped and counted.
    ///
    /// # Errors
    /// For a per-channel observer: [`QuantError::AxisOutOfRange`] if the tensor lacks the axis,
    /// [`QuantError::ChannelMismatch`] if the channel count differs from earlier batches.
    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> Result<()>;

    /// The chosen range, one per channel (one for a per-tensor observer).
    ///
    /// # Errors
    /// [`QuantError::NoData`] if the observer, or one of its channels, saw no finite value.
    fn ranges(&self) -> Result<Vec<Range>>;

    /// How many non-finite values were skipped so far.
    fn non_finite(&self) -> u64;

    /// Forgets everything observed.
    fn reset(&mut self);

    /// Quantization parameters for the observed ranges under `scheme`.
    ///
    /// # Errors
    /// As [`ranges`](Self::ranges), or if the ranges give invalid parameters.
    fn params(&self, scheme: QuantScheme) -> Result<QuantParams> {
        QuantParams::from_ranges(&self.ranges()?, self.granularity().axis(), scheme)
    }
}

/// Hyper-parameters of the observers that [`ObserverKind::build`] makes, with the reference
/// tools' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverConfig {
    /// Moving-average constant `c` of [`MovingAverageMinMaxObserver`]; PyTorch's 0.01.
    pub averaging_constant: f32,
    /// Percentile `p` of [`PercentileObserver`], in (50, 100]; 99.99.
    pub percentile: f64,
    /// Histogram bins per channel for the percentile, MSE and KL observers; TensorRT's 2048.
    pub bins: usize,
    /// The quantization scheme whose error [`MseObserver`] minimises.
    pub mse_scheme: QuantScheme,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            averaging_constant: 0.01,
            percentile: 99.99,
            bins: 2048,
            mse_scheme: QuantScheme::Asymmetric,
        }
    }
}

impl ObserverConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        check_averaging_constant(self.averaging_constant)?;
        check_percentile(self.percentile)?;
        check_bins(self.bins)?;
        Ok(())
    }
}

fn check_averaging_constant(c: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&c) || c == 0.0 {
        return Err(QuantError::InvalidParameter {
            name: "averaging_constant",
            value: c.to_string(),
            reason: "must be in (0, 1]",
        });
    }
    Ok(())
}

fn check_percentile(p: f64) -> Result<()> {
    if !(50.0..=100.0).contains(&p) || p == 50.0 {
        return Err(QuantError::InvalidParameter {
            name: "percentile",
            value: p.to_string(),
            reason: "must be in (50, 100]",
        });
    }
    Ok(())
}

fn check_bins(bins: usize) -> Result<()> {
    if !(MIN_BINS..=MAX_BINS).contains(&bins) {
        return Err(QuantError::InvalidParameter {
            name: "bins",
            value: bins.to_string(),
            reason: "must be in [256, 65536]",
        });
    }
    Ok(())
}

const MIN_BINS: usize = 256;
const MAX_BINS: usize = 1 << 16;

/// The observers by name, for command lines and configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObserverKind {
    /// [`MinMaxObserver`], `"minmax"`.
    MinMax,
    /// [`MovingAverageMinMaxObserver`], `"moving-average"`.
    MovingAverage,
    /// [`PercentileObserver`], `"percentile"`.
    Percentile,
    /// [`MseObserver`], `"mse"`.
    Mse,
    /// [`KlObserver`], `"kl"`.
    Kl,
}

impl ObserverKind {
    /// Every kind, in the order of the table in the module docs.
    pub const ALL: [ObserverKind; 5] = [
        ObserverKind::MinMax,
        ObserverKind::MovingAverage,
        ObserverKind::Percentile,
        ObserverKind::Mse,
        ObserverKind::Kl,
    ];

    /// The name [`FromStr`] accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            ObserverKind::MinMax => "minmax",
            ObserverKind::MovingAverage => "moving-average",
            ObserverKind::Percentile => "percentile",
            ObserverKind::Mse => "mse",
            ObserverKind::Kl => "kl",
        }
    }

    /// A fresh observer of this kind.
    ///
    /// # Errors
    /// If `config` is invalid.
    pub fn build(
        self,
        granularity: Granularity,
        config: &ObserverConfig,
    ) -> Result<Box<dyn Observer>> {
        config.validate()?;
        Ok(match self {
            ObserverKind::MinMax => Box::new(MinMaxObserver::new(granularity)),
            ObserverKind::MovingAverage => Box::new(MovingAverageMinMaxObserver::new(
                granularity,
                config.averaging_constant,
            )?),
            ObserverKind::Percentile => Box::new(PercentileObserver::new(
                granularity,
                config.percentile,
                config.bins,
            )?),
            ObserverKind::Mse => Box::new(MseObserver::new(
                granularity,
                config.mse_scheme,
                config.bins,
            )?),
            ObserverKind::Kl => Box::new(KlObserver::new(granularity, config.bins)?),
        })
    }
}

impl fmt::Display for ObserverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ObserverKind {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self> {
        ObserverKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| QuantError::UnknownObserver {
                name: s.to_string(),
            })
    }
}

/// Per-channel state shared by all observers: the channel split, lazily sized on the first
/// batch, and the non-finite count.
#[derive(Debug, Clone)]
struct Channels<S> {
    granularity: Granularity,
    states: Vec<S>,
    non_finite: u64,
}

impl<S: Clone> Channels<S> {
    fn new(granularity: Granularity) -> Self {
        Channels {
            granularity,
            states: Vec::new(),
            non_finite: 0,
        }
    }

    /// Calls `f(state, channel_view)` for every channel, creating the states with `init` on the
    /// first batch.
    fn observe(
        &mut self,
        x: &ArrayViewD<'_, f32>,
        init: impl Fn() -> S,
        mut f: impl FnMut(&mut S, ArrayViewD<'_, f32>) -> u64,
    ) -> Result<()> {
        match self.granularity {
            Granularity::PerTensor => {
                if self.states.is_empty() {
                    self.states.push(init());
                }
                self.non_finite += f(&mut self.states[0], x.view());
            }
            Granularity::PerChannel { axis } => {
                if axis >= x.ndim() {
                    return Err(QuantError::AxisOutOfRange {
                        axis,
                        ndim: x.ndim(),
                    });
                }
                let c = x.shape()[axis];
                if self.states.is_empty() {
                    self.states = vec![init(); c];
                } else if self.states.len() != c {
                    return Err(QuantError::ChannelMismatch {
                        what: "observed tensor's channel dimension",
                        expected: self.states.len(),
                        found: c,
                    });
                }
                for (state, view) in self.states.iter_mut().zip(x.axis_iter(Axis(axis))) {
                    self.non_finite += f(state, view);
                }
            }
        }
        Ok(())
    }

    fn ranges(
        &self,
        observer: &'static str,
        range: impl Fn(&S) -> Option<Range>,
    ) -> Result<Vec<Range>> {
        if self.states.is_empty() {
            return Err(QuantError::NoData {
                observer,
                channel: 0,
                non_finite: self.non_finite,
            });
        }
        self.states
            .iter()
            .enumerate()
            .map(|(channel, s)| {
                range(s).ok_or(QuantError::NoData {
                    observer,
                    channel,
                    non_finite: self.non_finite,
                })
            })
            .collect()
    }

    fn reset(&mut self) {
        self.states.clear();
        self.non_finite = 0;
    }
}

/// The [`Observer`] methods every observer answers from its `ch: Channels<_>` field.
macro_rules! channel_plumbing {
    () => {
        fn granularity(&self) -> Granularity {
            self.ch.granularity
        }
        fn non_finite(&self) -> u64 {
            self.ch.non_finite
        }
        fn reset(&mut self) {
            self.ch.reset();
        }
    };
}

/// Folds each channel's batch min/max into its running range with `merge(running, batch)`; the
/// first batch with finite values sets it. Returns what [`Channels::observe`] does.
fn observe_min_max(
    ch: &mut Channels<Option<Range>>,
    x: &ArrayViewD<'_, f32>,
    merge: impl Fn(Range, Range) -> Range,
) -> Result<()> {
    ch.observe(
        x,
        || None,
        |state, view| {
            let (batch, bad) = finite_min_max(&view);
            if let Some(b) = batch {
                *state = Some(state.map_or(b, |r| merge(r, b)));
            }
            bad
        },
    )
}

/// Min and max of the finite values of `x` (None if there are none), and the non-finite count.
fn finite_min_max(x: &ArrayViewD<'_, f32>) -> (Option<Range>, u64) {
    let mut bad = 0u64;
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in x.iter() {
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        } else {
            bad += 1;
        }
    }
    ((lo <= hi).then_some(Range { min: lo, max: hi }), bad)
}

/// TFLite's calibration statistic: the running minimum and maximum over all batches.
#[derive(Debug, Clone)]
pub struct MinMaxObserver {
    ch: Channels<Option<Range>>,
}

impl MinMaxObserver {
    /// A fresh observer.
    pub fn new(granularity: Granularity) -> Self {
        MinMaxObserver {
            ch: Channels::new(granularity),
        }
    }
}

impl Observer for MinMaxObserver {
    fn name(&self) -> &'static str {
        "minmax"
    }
    channel_plumbing!();
    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> Result<()> {
        observe_min_max(&mut self.ch, &x, |r, b| Range {
            min: r.min.min(b.min),
            max: r.max.max(b.max),
        })
    }
    fn ranges(&self) -> Result<Vec<Range>> {
        self.ch.ranges(self.name(), |s| *s)
    }
}

/// PyTorch's `MovingAverageMinMaxObserver`: the first batch sets min and max, each later batch
/// moves them by `min += c · (batch_min − min)`, `max += c · (batch_max − max)`, in f32.
///
/// A batch (or channel) with no finite value leaves the averages unchanged.
#[derive(Debug, Clone)]
pub struct MovingAverageMinMaxObserver {
    ch: Channels<Option<Range>>,
    averaging_constant: f32,
}

impl MovingAverageMinMaxObserver {
    /// A fresh observer with averaging constant `c` (PyTorch's default is 0.01).
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] unless `0 < c <= 1`.
    pub fn new(granularity: Granularity, averaging_constant: f32) -> Result<Self> {
        check_averaging_constant(averaging_constant)?;
        Ok(MovingAverageMinMaxObserver {
            ch: Channels::new(granularity),
            averaging_constant,
        })
    }
}

impl Observer for MovingAverageMinMaxObserver {
    fn name(&self) -> &'static str {
        "moving-average"
    }
    channel_plumbing!();
    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> Result<()> {
        let c = self.averaging_constant;
        observe_min_max(&mut self.ch, &x, |r, b| Range {
            min: r.min + c * (b.min - r.min),
            max: r.max + c * (b.max - r.max),
        })
    }
    fn ranges(&self) -> Result<Vec<Range>> {
        self.ch.ranges(self.name(), |s| *s)
    }
}

/// A fixed-size histogram whose range grows by doubling the bin width (see the module docs).
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<f64>,
    /// Lower edge of bin 0.
    lo: f64,
    /// Bin width; 0 while every value seen so far equals `lo` (all the mass is in bin 0).
    width: f64,
    /// Keep `lo` at 0 (for histograms of `|x|`).
    anchored: bool,
    total: f64,
    /// Exact extremes of the values added.
    min: f32,
    max: f32,
}

impl Histogram {
    fn new(bins: usize, anchored: bool) -> Self {
        Histogram {
            counts: vec![0.0; bins],
            lo: 0.0,
            width: 0.0,
            anchored,
            total: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    fn bins(&self) -> usize {
        self.counts.len()
    }

    fn index(&self, x: f64) -> usize {
        if self.width == 0.0 {
            return 0;
        }
        let i = ((x - self.lo) / self.width).floor();
        if i <= 0.0 {
            0
        } else {
            (i as usize).min(self.bins() - 1)
        }
    }

    /// Adds the finite values of `values` (which yields the same sequence each time it is
    /// cloned); returns how many were not finite.
    fn add<I: Iterator<Item = f32> + Clone>(&mut self, values: I) -> u64 {
        let mut bad = 0;
        let (mut bmin, mut bmax) = (f32::INFINITY, f32::NEG_INFINITY);
        for v in values.clone() {
            if v.is_finite() {
                bmin = bmin.min(v);
                bmax = bmax.max(v);
            } else {
                bad += 1;
            }
        }
        if bmin > bmax {
            return bad;
        }
        self.cover(bmin as f64, bmax as f64);
        for v in values.filter(|v| v.is_finite()) {
            let i = self.index(v as f64);
            self.counts[i] += 1.0;
            self.total += 1.0;
        }
        self.min = self.min.min(bmin);
        self.max = self.max.max(bmax);
        bad
    }

    /// Grows the histogram's range to cover `[bmin, bmax]`.
    fn cover(&mut self, bmin: f64, bmax: f64) {
        let n = self.bins() as f64;
        if self.total == 0.0 {
            self.lo = if self.anchored { 0.0 } else { bmin };
            self.width = (bmax - self.lo) / n;
            return;
        }
        if self.width == 0.0 {
            // Everything so far sat at one point `lo`.
            if bmin == self.lo && bmax == self.lo {
                return;
            }
            let point = self.lo;
            let mass = std::mem::take(&mut self.counts[0]);
            self.lo = if self.anchored { 0.0 } else { bmin.min(point) };
            self.width = (bmax.max(point) - self.lo) / n;
            let i = self.index(point);
            self.counts[i] += mass;
            return;
        }
        let hi = self.lo + n * self.width;
        if bmin >= self.lo && bmax <= hi {
            return;
        }
        // Smallest doubling factor f (and whole-bin shift a) such that the new bins hold the
        // old ones, (n - a) f >= n, and reach bmax.
        let mut f = 1.0f64;
        let (a, w) = loop {
            let w = self.width * f;
            let a = if bmin < self.lo {
                ((self.lo - bmin) / w).ceil()
            } else {
                0.0
            };
            if (n - a) * f >= n && self.lo - a * w + n * w >= bmax {
                break (a, w);
            }
            f *= 2.0;
        };
        let mut merged = vec![0.0; self.bins()];
        for (i, &c) in self.counts.iter().enumerate() {
            let j = a + (i as f64 / f).floor();
            merged[j as usize] += c;
        }
        self.counts = merged;
        self.lo -= a * w;
        self.width = w;
    }

    /// The `q`-quantile (`q` in [0, 1]), interpolating linearly inside a bin and clamped to the
    /// exact observed extremes.
    fn quantile(&self, q: f64) -> f32 {
        if self.width == 0.0 {
            return self.lo as f32;
        }
        let target = q * self.total;
        let mut cum = 0.0;
        let mut value = self.lo + self.bins() as f64 * self.width;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0.0 && cum + c >= target {
                let frac = ((target - cum) / c).clamp(0.0, 1.0);
                value = self.lo + (i as f64 + frac) * self.width;
                break;
            }
            cum += c;
        }
        (value as f32).clamp(self.min, self.max)
    }

    /// Bin centres clamped to the observed extremes (so the full range clips nothing).
    fn centers(&self) -> impl Iterator<Item = f64> + '_ {
        let (lo, hi) = (self.min as f64, self.max as f64);
        (0..self.bins()).map(move |i| (self.lo + (i as f64 + 0.5) * self.width).clamp(lo, hi))
    }
}

/// Percentile calibration: the range is `[P(100 − p), P(p)]`, the `(100 − p)`th and `p`th
/// percentiles of the observed values (both tails of `x` itself, not of `|x|`), estimated from
/// a histogram with linear interpolation inside the bin and clamped to the observed min/max.
/// `p = 100` gives exactly the min-max range. Default `p = 99.99`.
#[derive(Debug, Clone)]
pub struct PercentileObserver {
    ch: Channels<Histogram>,
    percentile: f64,
    bins: usize,
}

impl PercentileObserver {
    /// A fresh observer keeping `bins` histogram bins per channel.
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] unless `50 < percentile <= 100` and
    /// `256 <= bins <= 65536`.
    pub fn new(granularity: Granularity, percentile: f64, bins: usize) -> Result<Self> {
        check_percentile(percentile)?;
        check_bins(bins)?;
        Ok(PercentileObserver {
            ch: Channels::new(granularity),
            percentile,
            bins,
        })
    }
}

impl Observer for PercentileObserver {
    fn name(&self) -> &'static str {
        "percentile"
    }
    channel_plumbing!();
    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> Result<()> {
        let bins = self.bins;
        self.ch.observe(
            &x,
            || Histogram::new(bins, false),
            |h, view| h.add(view.iter().copied()),
        )
    }
    fn ranges(&self) -> Result<Vec<Range>> {
        let q = self.percentile / 100.0;
        self.ch.ranges(self.name(), |h| {
            (h.total > 0.0).then(|| Range {
                min: h.quantile(1.0 - q),
                max: h.quantile(q),
            })
        })
    }
}

/// MSE calibration: picks the clipping range `[a, b]` (with `a <= 0 <= b`, as the range will
/// include 0 anyway) minimising the expected squared quantization error over the observed
/// histogram,
///
/// `E(a, b) = N_in · Δ²/12 + Σ_{x<a} (a − x)² + Σ_{x>b} (x − b)²`,
///
/// rounding noise of step `Δ = (b − a)/255` (asymmetric) for the values inside, plus the
/// clipping error of the values outside (each bin's mass at its centre, plus its own
/// width²/12). This is the objective PyTorch's `HistogramObserver` approximates with a greedy
/// walk; here it is searched on a grid (129 × 129 candidates from 0 to the observed min and
/// max, then a 65 × 65 grid around the best), which is cheap because every `E` is O(1) from
/// prefix sums. Under [`QuantScheme::Symmetric`] the range is `[−m, m]` with `Δ = 2m/254` and
/// `m` searched on a 1025-point grid then refined.
#[derive(Debug, Clone)]
pub struct MseObserver {
    ch: Channels<Histogram>,
    scheme: QuantScheme,
    bins: usize,
}

impl MseObserver {
    /// A fresh observer minimising the error of `scheme`, with `bins` histogram bins per
    /// channel.
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] unless `256 <= bins <= 65536`.
    pub fn new(granularity: Granularity, scheme: QuantScheme, bins: usize) -> Result<Self> {
        check_bins(bins)?;
        Ok(MseObserver {
            ch: Channels::new(granularity),
            scheme,
            bins,
        })
    }
}

impl Observer for MseObserver {
    fn name(&self) -> &'static str {
        "mse"
    }
    channel_plumbing!();
    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> Result<()> {
        let bins = self.bins;
        self.ch.observe(
            &x,
            || Histogram::new(bins, false),
            |h, view| h.add(view.iter().copied()),
        )
    }
    fn ranges(&self) -> Result<Vec<Range>> {
        let scheme = self.scheme;
        self.ch.ranges(self.name(), |h| {
            (h.total > 0.0).then(|| mse_range(h, scheme))
        })
    }
}

/// Expected squared error of clipping range candidates over a histogram, O(1) per candidate.
struct MseCost {
    centers: Vec<f64>,
    /// Prefix sums of n, n·c, n·c² (length bins + 1).
    s0: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
    bin_var: f64,
}

impl MseCost {
    fn new(h: &Histogram) -> Self {
        let centers: Vec<f64> = h.centers().collect();
        let n = centers.len();
        let (mut s0, mut s1, mut s2) = (vec![0.0; n + 1], vec![0.0; n + 1], vec![0.0; n + 1]);
        for i in 0..n {
            let (c, k) = (centers[i], h.counts[i]);
            s0[i + 1] = s0[i] + k;
            s1[i + 1] = s1[i] + k * c;
            s2[i + 1] = s2[i] + k * c * c;
        }
        MseCost {
            centers,
            s0,
            s1,
            s2,
            bin_var: h.width * h.width / 12.0,
        }
    }

    /// `E(a, b)` for `steps` quantization steps across `[a, b]`.
    fn cost(&self, a: f64, b: f64, steps: f64) -> f64 {
        let n = self.centers.len();
        let lo = self.centers.partition_point(|&c| c < a); // bins clipped below: [0, lo)
        let hi = self.centers.partition_point(|&c| c <= b); // bins clipped above: [hi, n)
        let below = self.s2[lo] - 2.0 * a * self.s1[lo] + a * a * self.s0[lo];
        let (t0, t1, t2) = (
            self.s0[n] - self.s0[hi],
            self.s1[n] - self.s1[hi],
            self.s2[n] - self.s2[hi],
        );
        let above = t2 - 2.0 * b * t1 + b * b * t0;
        let inside = self.s0[hi] - self.s0[lo];
        let delta = (b - a) / steps;
        inside * delta * delta / 12.0
            + below.max(0.0)
            + above.max(0.0)
            + (self.s0[lo] + t0) * self.bin_var
    }
}

/// The MSE-optimal range of a histogram (see [`MseObserver`]).
fn mse_range(h: &Histogram, scheme: QuantScheme) -> Range {
    if h.width == 0.0 || h.min == h.max {
        return Range {
            min: h.min,
            max: h.max,
        };
    }
    let cost = MseCost::new(h);
    let (lo, hi) = ((h.min as f64).min(0.0), (h.max as f64).max(0.0));
    let (a, b) = match scheme {
        QuantScheme::Asymmetric => {
            let steps = 255.0;
            // Coarse grid over [lo, 0] x [0, hi], then a finer one around the best point.
            let grid =
                |a0: f64, a1: f64, b0: f64, b1: f64, k: usize, best: &mut (f64, f64, f64)| {
                    for i in 0..=k {
                        let a = a0 + (a1 - a0) * i as f64 / k as f64;
                        for j in 0..=k {
                            let b = b0 + (b1 - b0) * j as f64 / k as f64;
                            if b - a <= 0.0 {
                                continue;
                            }
                            let e = cost.cost(a, b, steps);
                            if e < best.0 {
                                *best = (e, a, b);
                            }
                        }
                    }
                };
            let mut best = (cost.cost(lo, hi, steps), lo, hi);
            grid(lo, 0.0, 0.0, hi, 128, &mut best);
            let (da, db) = (-lo / 128.0, hi / 128.0);
            let (a, b) = (best.1, best.2);
            grid(
                (a - da).max(lo),
                (a + da).min(0.0),
                (b - db).max(0.0),
                (b + db).min(hi),
                64,
                &mut best,
            );
            (best.1, best.2)
        }
        QuantScheme::Symmetric => {
            let steps = 2.0 * QMAX_I8 as f64;
            let amax = (-lo).max(hi);
            let mut best = (cost.cost(-amax, amax, steps), amax);
            let search = |m0: f64, m1: f64, k: usize, best: &mut (f64, f64)| {
                for i in 0..=k {
                    let m = m0 + (m1 - m0) * i as f64 / k as f64;
                    if m <= 0.0 {
                        continue;
                    }
                    let e = cost.cost(-m, m, steps);
                    if e < best.0 {
                        *best = (e, m);
                    }
                }
            };
            search(0.0, amax, 1024, &mut best);
            let (m, dm) = (best.1, amax / 1024.0);
            search((m - dm).max(0.0), (m + dm).min(amax), 64, &mut best);
            (-best.1, best.1)
        }
    };
    Range {
        min: (a as f32).max(h.min.min(0.0)),
        max: (b as f32).min(h.max.max(0.0)),
    }
}

/// KL-divergence (entropy) calibration as TensorRT and NVIDIA's pytorch-quantization do it,
/// symmetric on `|x|`:
///
/// 1. a histogram of `|x|` over `[0, max|x|]` (2048 bins by default);
/// 2. for every candidate `i` from `L` bins up to the last non-empty bin: the reference
///    distribution `P` is bins `[0, i)` with all the mass beyond added to bin `i − 1`; `Q`
///    merges bins `[0, i)` into `L` near-equal groups (bin `idx` in group `⌊idx·L/i⌋`) and spreads
///    each group's mass evenly over its non-empty bins;
/// 3. the threshold is `T = i · width` for the `i` minimising `KL(P ‖ Q)` (the largest such
///    `i` on ties).
///
/// As in pytorch-quantization, bin 0's count is replaced by bin 1's first, so a spike of exact
/// zeros (half of every ReLU output) does not dominate the divergence.
///
/// `L` is the number of int8 levels on one side of zero: 128 when the observed data has both
/// signs (the symmetric case TensorRT targets), 256 when it is one-signed — e.g. after a ReLU,
/// where the asymmetric int8 range spends all 256 levels on `[0, T]` (pytorch-quantization's
/// `unsigned` rule). The range returned is the observed `[min, max]` clipped to `[−T, T]`.
#[derive(Debug, Clone)]
pub struct KlObserver {
    ch: Channels<AbsHistogram>,
    bins: usize,
}

impl KlObserver {
    /// A fresh observer with `bins` histogram bins of `|x|` per channel.
    ///
    /// # Errors
    /// [`QuantError::InvalidParameter`] unless `256 <= bins <= 65536`.
    pub fn new(granularity: Granularity, bins: usize) -> Result<Self> {
        check_bins(bins)?;
        Ok(KlObserver {
            ch: Channels::new(granularity),
            bins,
        })
    }
}

/// A histogram of `|x|` and the signed extremes of `x`.
#[derive(Debug, Clone)]
struct AbsHistogram {
    hist: Histogram,
    min: f32,
    max: f32,
}

impl Observer for KlObserver {
    fn name(&self) -> &'static str {
        "kl"
    }
    channel_plumbing!();
    fn observe(&mut self, x: ArrayViewD<'_, f32>) -> Result<()> {
        let bins = self.bins;
        self.ch.observe(
            &x,
            || AbsHistogram {
                hist: Histogram::new(bins, true),
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
            },
            |s, view| {
                if let (Some(r), _) = finite_min_max(&view) {
                    s.min = s.min.min(r.min);
                    s.max = s.max.max(r.max);
                }
                s.hist.add(view.iter().map(|v| v.abs()))
            },
        )
    }
    fn ranges(&self) -> Result<Vec<Range>> {
        self.ch.ranges(self.name(), |s| {
            (s.hist.total > 0.0).then(|| {
                let levels = if s.min >= 0.0 || s.max <= 0.0 {
                    256
                } else {
                    128
                };
                let t = kl_threshold(&s.hist, levels);
                Range {
                    min: s.min.max(-t),
                    max: s.max.min(t),
                }
            })
        })
    }
}

/// The KL-optimal threshold on a histogram of `|x|` for `levels` quantization levels (see
/// [`KlObserver`]).
fn kl_threshold(h: &Histogram, levels: usize) -> f32 {
    let amax = h.max;
    if h.width == 0.0 {
        return amax;
    }
    let mut counts = h.counts.clone();
    counts[0] = counts[1];
    let Some(last) = counts.iter().rposition(|&c| c > 0.0) else {
        return amax;
    };
    let used = last + 1;
    if used <= levels {
        return amax;
    }
    let total: f64 = counts[..used].iter().sum();
    // suffix[i] = mass in bins [i, used): what candidate i clips.
    let mut suffix = vec![0.0f64; used + 1];
    for i in (0..used).rev() {
        suffix[i] = suffix[i + 1] + counts[i];
    }
    let mut q = vec![0.0f64; used];
    let mut best = (f64::INFINITY, used);
    for i in levels..=used {
        let bins = &counts[..i];
        // Group j holds the bins with floor(idx · levels / i) = j (numpy's digitize over
        // linspace(0, i, levels + 1)), i.e. idx in [ceil(j·i/levels), ceil((j+1)·i/levels)).
        let mut start = 0;
        for j in 0..levels {
            let stop = ((j + 1) * i).div_ceil(levels);
            let group = &bins[start..stop];
            let nonzero = group.iter().filter(|&&c| c > 0.0).count();
            let mass: f64 = group.iter().sum();
            for (qk, &c) in q[start..stop].iter_mut().zip(group) {
                *qk = if c > 0.0 { mass / nonzero as f64 } else { 0.0 };
            }
            start = stop;
        }
        let q_sum: f64 = q[..i].iter().sum();
        let mut kl = 0.0;
        for (k, (&c, &qk)) in bins.iter().zip(&q[..i]).enumerate() {
            // P: bins [0, i) with the clipped mass added to the last one.
            let pk = if k + 1 == i { c + suffix[i] } else { c } / total;
            if pk > 0.0 {
                let qk = qk / q_sum;
                kl += if qk > 0.0 {
                    pk * (pk / qk).ln()
                } else {
                    f64::INFINITY
                };
            }
        }
        if kl <= best.0 {
            best = (kl, i);
        }
    }
    if !best.0.is_finite() {
        return amax;
    }
    ((best.1 as f64 * h.width) as f32).min(amax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{dequantize, quantize};
    use approx::assert_abs_diff_eq;
    use ndarray::{ArrayD, IxDyn, array};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn dyn1(v: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap()
    }

    /// Laplace(0, 1) samples: heavy enough tails that clipping pays.
    fn laplace(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let u: f64 = rng.random_range(1e-12..1.0);
                let s = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                (-u.ln() * s) as f32
            })
            .collect()
    }

    /// Mean squared error of quantizing `x` with asymmetric parameters for `range`.
    fn empirical_mse(x: &[f32], range: Range) -> f64 {
        let p = QuantParams::asymmetric(range).unwrap();
        let a = dyn1(x);
        let back = dequantize(quantize(a.view(), &p).unwrap().view(), &p).unwrap();
        a.iter()
            .zip(back.iter())
            .map(|(u, v)| ((u - v) as f64).powi(2))
            .sum::<f64>()
            / x.len() as f64
    }

    #[test]
    fn minmax_tracks_running_extremes_and_skips_non_finite() {
        let mut o = MinMaxObserver::new(Granularity::PerTensor);
        assert!(matches!(o.ranges(), Err(QuantError::NoData { .. })));
        o.observe(dyn1(&[1.0, -2.0, f32::NAN]).view()).unwrap();
        o.observe(dyn1(&[0.5, 3.0, f32::INFINITY, f32::NEG_INFINITY]).view())
            .unwrap();
        assert_eq!(
            o.ranges().unwrap(),
            vec![Range {
                min: -2.0,
                max: 3.0
            }]
        );
        assert_eq!(o.non_finite(), 3);
        let p = o.params(QuantScheme::Asymmetric).unwrap();
        assert_eq!(p.scale, vec![5.0 / 255.0]);
        o.reset();
        assert_eq!(o.non_finite(), 0);
        assert!(o.ranges().is_err());
    }

    #[test]
    fn only_non_finite_data_is_an_error_but_a_constant_is_not() {
        for kind in ObserverKind::ALL {
            let mut o = kind
                .build(Granularity::PerTensor, &ObserverConfig::default())
                .unwrap();
            o.observe(dyn1(&[f32::NAN, f32::INFINITY]).view()).unwrap();
            match o.ranges() {
                Err(QuantError::NoData { non_finite: 2, .. }) => {}
                other => panic!("{kind}: {other:?}"),
            }
            let mut o = kind
                .build(Granularity::PerTensor, &ObserverConfig::default())
                .unwrap();
            o.observe(dyn1(&[2.5; 10]).view()).unwrap();
            o.observe(dyn1(&[2.5; 3]).view()).unwrap();
            assert_eq!(
                o.ranges().unwrap(),
                vec![Range { min: 2.5, max: 2.5 }],
                "{kind}"
            );
            let p = o.params(QuantScheme::Asymmetric).unwrap();
            assert_eq!((p.scale[0], p.zero_point[0]), (2.5 / 255.0, -128), "{kind}");
            let mut o = kind
                .build(Granularity::PerTensor, &ObserverConfig::default())
                .unwrap();
            o.observe(dyn1(&[0.0; 4]).view()).unwrap();
            let p = o.params(QuantScheme::Symmetric).unwrap();
            assert_eq!(p.scale[0], crate::params::DEGENERATE_SCALE, "{kind}");
        }
    }

    #[test]
    fn per_channel_observers_split_along_the_axis() {
        for kind in ObserverKind::ALL {
            let cfg = ObserverConfig::default();
            let mut o = kind
                .build(Granularity::PerChannel { axis: 1 }, &cfg)
                .unwrap();
            // Dense kernel [in = 3, out = 2].
            o.observe(
                array![[1.0f32, -4.0], [-2.0, 8.0], [0.5, 2.0]]
                    .into_dyn()
                    .view(),
            )
            .unwrap();
            let r = o.ranges().unwrap();
            assert_eq!(r.len(), 2, "{kind}");
            if matches!(kind, ObserverKind::MinMax | ObserverKind::MovingAverage) {
                assert_eq!(
                    r,
                    vec![
                        Range {
                            min: -2.0,
                            max: 1.0
                        },
                        Range {
                            min: -4.0,
                            max: 8.0
                        }
                    ]
                );
            }
            for (c, rc) in r.iter().enumerate() {
                let (lo, hi) = [(-2.0, 1.0), (-4.0, 8.0)][c];
                assert!(
                    rc.min >= lo && rc.max <= hi && rc.min <= rc.max,
                    "{kind} {c} {rc:?}"
                );
            }
            let p = o.params(QuantScheme::Symmetric).unwrap();
            assert_eq!(p.axis, Some(1));
            assert_eq!(p.channels(), 2);
            // A batch with another channel count, or without the axis, is an error.
            let bad = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
            assert!(matches!(
                o.observe(bad.view()),
                Err(QuantError::ChannelMismatch { .. })
            ));
            let bad = ArrayD::<f32>::zeros(IxDyn(&[4]));
            assert!(matches!(
                o.observe(bad.view()),
                Err(QuantError::AxisOutOfRange { .. })
            ));
        }
    }

    #[test]
    fn per_channel_no_data_names_the_channel() {
        let mut o = MinMaxObserver::new(Granularity::PerChannel { axis: 0 });
        o.observe(
            array![[1.0f32, 2.0], [f32::NAN, f32::NAN]]
                .into_dyn()
                .view(),
        )
        .unwrap();
        assert!(matches!(
            o.ranges(),
            Err(QuantError::NoData {
                channel: 1,
                non_finite: 2,
                ..
            })
        ));
    }

    #[test]
    fn moving_average_follows_pytorch() {
        let mut o = MovingAverageMinMaxObserver::new(Granularity::PerTensor, 0.01).unwrap();
        o.observe(dyn1(&[-1.0, 1.0]).view()).unwrap();
        assert_eq!(
            o.ranges().unwrap(),
            vec![Range {
                min: -1.0,
                max: 1.0
            }]
        );
        o.observe(dyn1(&[-3.0, 0.0, 5.0]).view()).unwrap();
        let r = o.ranges().unwrap()[0];
        assert_abs_diff_eq!(r.min, -1.02, epsilon = 1e-6);
        assert_abs_diff_eq!(r.max, 1.04, epsilon = 1e-6);
        // An all-NaN batch changes nothing.
        o.observe(dyn1(&[f32::NAN]).view()).unwrap();
        assert_eq!(o.ranges().unwrap()[0], r);
        for c in [0.0, -0.1, 1.5, f32::NAN] {
            assert!(matches!(
                MovingAverageMinMaxObserver::new(Granularity::PerTensor, c),
                Err(QuantError::InvalidParameter {
                    name: "averaging_constant",
                    ..
                })
            ));
        }
    }

    #[test]
    fn histogram_growth_keeps_every_count() {
        let mut h = Histogram::new(256, false);
        let mut all = Vec::new();
        let mut rng = StdRng::seed_from_u64(3);
        for (lo, hi) in [
            (0.0, 1.0),
            (-5.0, 3.0),
            (0.5, 0.6),
            (10.0, 20.0),
            (-100.0, -99.0),
        ] {
            let batch: Vec<f32> = (0..1000).map(|_| rng.random_range(lo..hi)).collect();
            h.add(batch.iter().copied());
            all.extend(batch);
            assert_abs_diff_eq!(h.counts.iter().sum::<f64>(), all.len() as f64);
            // Every value lies in the bin the histogram now assigns it (up to edge rounding).
            assert!(h.lo <= h.min as f64 && h.lo + 256.0 * h.width >= h.max as f64);
        }
        // Quantiles within two bin widths of the exact ones.
        all.sort_by(f32::total_cmp);
        for q in [0.01, 0.25, 0.5, 0.9, 0.999] {
            let exact = all[((q * all.len() as f64) as usize).min(all.len() - 1)];
            assert_abs_diff_eq!(h.quantile(q), exact, epsilon = 2.0 * h.width as f32);
        }
        assert_eq!(h.quantile(0.0), all[0]);
        assert_eq!(h.quantile(1.0), *all.last().unwrap());
    }

    #[test]
    fn histogram_point_mass_then_spread() {
        let mut h = Histogram::new(256, false);
        h.add([3.0f32; 5].into_iter());
        assert_eq!(h.width, 0.0);
        assert_eq!(h.quantile(0.5), 3.0);
        h.add([1.0f32, 5.0].into_iter());
        assert_abs_diff_eq!(h.counts.iter().sum::<f64>(), 7.0);
        assert_eq!(h.counts[h.index(3.0)], 5.0);
        assert_abs_diff_eq!(h.quantile(0.5), 3.0, epsilon = h.width as f32);
    }

    #[test]
    fn percentile_clips_outliers_and_is_minmax_at_100() {
        let mut x: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        x.push(1000.0);
        let mut o = PercentileObserver::new(Granularity::PerTensor, 99.0, 2048).unwrap();
        o.observe(dyn1(&x).view()).unwrap();
        let r = o.ranges().unwrap()[0];
        // The 1st and 99th percentiles of ~uniform [0, 1), to within a bin (1000/2048).
        assert_abs_diff_eq!(r.min, 0.01, epsilon = 0.5);
        assert_abs_diff_eq!(r.max, 0.99, epsilon = 0.5);
        let mut o = PercentileObserver::new(Granularity::PerTensor, 100.0, 2048).unwrap();
        o.observe(dyn1(&x[..5000]).view()).unwrap();
        o.observe(dyn1(&x[5000..]).view()).unwrap();
        assert_eq!(
            o.ranges().unwrap()[0],
            Range {
                min: 0.0,
                max: 1000.0
            }
        );
        // Finer data: 99.9th percentile of 0..100000.
        let y: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let mut o = PercentileObserver::new(Granularity::PerTensor, 99.9, 2048).unwrap();
        o.observe(dyn1(&y).view()).unwrap();
        let r = o.ranges().unwrap()[0];
        assert_abs_diff_eq!(r.max, 99_900.0, epsilon = 100.0);
        assert_abs_diff_eq!(r.min, 100.0, epsilon = 100.0);
        for p in [50.0, 100.5, f64::NAN] {
            assert!(PercentileObserver::new(Granularity::PerTensor, p, 2048).is_err());
        }
        assert!(PercentileObserver::new(Granularity::PerTensor, 99.0, 10).is_err());
    }

    /// N(0, 1) samples (Box-Muller).
    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let u1: f64 = rng.random_range(1e-12..1.0);
                let u2: f64 = rng.random();
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect()
    }

    /// The MSE-optimal clipping of 8-bit uniform quantization is known in closed form for
    /// these densities (Banner et al., "Post training 4-bit quantization", 2019, ACIQ table):
    /// 3.92 σ for a Gaussian, 9.89 b for a Laplace(0, b).
    #[test]
    fn mse_finds_the_aciq_optimal_clipping() {
        for (name, x, want, tol) in [
            ("gaussian", gaussian(200_000, 21), 3.92f32, 0.15f32),
            ("laplace", laplace(200_000, 22), 9.89, 0.5),
        ] {
            for scheme in [QuantScheme::Symmetric, QuantScheme::Asymmetric] {
                let mut o = MseObserver::new(Granularity::PerTensor, scheme, 2048).unwrap();
                // Several batches, so the histogram grows a few times.
                for chunk in x.chunks(50_000) {
                    o.observe(dyn1(chunk).view()).unwrap();
                }
                let r = o.ranges().unwrap()[0];
                // The asymmetric search moves each end on its own, so the sparse tails of a
                // finite sample can pull one end more than the other; its half-width is stable.
                assert_abs_diff_eq!((r.max - r.min) / 2.0, want, epsilon = tol);
                assert_abs_diff_eq!(r.max, want, epsilon = 2.0 * tol);
                assert_abs_diff_eq!(-r.min, want, epsilon = 2.0 * tol);
                if scheme == QuantScheme::Symmetric {
                    assert_eq!(r.min, -r.max, "{name}");
                }
            }
        }
    }

    #[test]
    fn mse_beats_minmax_on_heavy_tails_and_keeps_uniform_ranges() {
        let x = laplace(100_000, 11);
        let mut o =
            MseObserver::new(Granularity::PerTensor, QuantScheme::Asymmetric, 2048).unwrap();
        o.observe(dyn1(&x[..1000]).view()).unwrap();
        o.observe(dyn1(&x[1000..]).view()).unwrap();
        let chosen = o.ranges().unwrap()[0];
        let mut mm = MinMaxObserver::new(Granularity::PerTensor);
        mm.observe(dyn1(&x).view()).unwrap();
        let full = mm.ranges().unwrap()[0];
        assert!(
            chosen.max < full.max && chosen.min > full.min,
            "{chosen:?} vs {full:?}"
        );
        // The true quantization error, measured by quantizing: lower than min-max, and not
        // improved by shrinking or widening the chosen range.
        let e_mse = empirical_mse(&x, chosen);
        let e_mm = empirical_mse(&x, full);
        assert!(e_mse < 0.95 * e_mm, "mse {e_mse} vs minmax {e_mm}");
        for f in [0.8f32, 1.25] {
            let other = Range {
                min: chosen.min * f,
                max: chosen.max * f,
            };
            assert!(e_mse <= 1.02 * empirical_mse(&x, other), "factor {f}");
        }
        // Uniform data: clipping never pays, the range stays (nearly) full.
        let mut rng = StdRng::seed_from_u64(5);
        let u: Vec<f32> = (0..50_000).map(|_| rng.random_range(-1.0..3.0)).collect();
        let mut o =
            MseObserver::new(Granularity::PerTensor, QuantScheme::Asymmetric, 2048).unwrap();
        o.observe(dyn1(&u).view()).unwrap();
        let r = o.ranges().unwrap()[0];
        assert!(r.min < -0.97 && r.max > 2.9, "{r:?}");
    }

    /// pytorch-quantization's `_compute_amax_entropy`, transliterated step by step (digitize
    /// over linspace, Counter, scipy's entropy); returns the divergence of every candidate
    /// `i = levels ..= bins.len()`.
    fn nvidia_divergences(hist: &[f64], levels: usize) -> Vec<f64> {
        let mut bins = hist.to_vec();
        bins[0] = bins[1];
        let mut divergences = Vec::new();
        for i in levels..=bins.len() {
            let digitized: Vec<Option<usize>> = (0..i)
                .map(|idx| (bins[idx] != 0.0).then_some(idx * levels / i))
                .collect();
            let mut density = vec![0.0; levels];
            let mut counter = vec![0usize; levels];
            for (idx, d) in digitized.iter().enumerate() {
                if let Some(g) = *d {
                    density[g] += bins[idx];
                    counter[g] += 1;
                }
            }
            let q: Vec<f64> = digitized
                .iter()
                .map(|d| d.map_or(0.0, |g| density[g] / counter[g] as f64))
                .collect();
            let mut p = bins[..i].to_vec();
            p[i - 1] += bins[i..].iter().sum::<f64>();
            let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
            let mut ent = 0.0;
            for (pk, qk) in p.iter().zip(&q) {
                let (pk, qk) = (pk / ps, qk / qs);
                if pk > 0.0 {
                    ent += if qk > 0.0 {
                        pk * (pk / qk).ln()
                    } else {
                        f64::INFINITY
                    };
                }
            }
            divergences.push(ent);
        }
        divergences
    }

    #[test]
    fn kl_threshold_matches_the_reference_algorithm() {
        let mut rng = StdRng::seed_from_u64(31);
        for case in 0..6 {
            let bins = 1024;
            let decay = [60.0, 150.0, 400.0][case % 3];
            let mut counts: Vec<f64> = (0..bins)
                .map(|i| {
                    let c =
                        (2000.0 * (-(i as f64) / decay).exp() * rng.random_range(0.5..1.5)).round();
                    if rng.random_bool(0.1) { 0.0 } else { c }
                })
                .collect();
            // Like a histogram over [0, max|x|]: the last bin holds the maximum.
            counts[bins - 1] = 1.0 + (case % 2) as f64;
            // And like one of ReLU outputs: a spike of exact zeros in bin 0.
            if case % 2 == 0 {
                counts[0] = 50.0 * counts[1] + 1000.0;
            }
            let total = counts.iter().sum();
            let h = Histogram {
                counts: counts.clone(),
                lo: 0.0,
                width: 0.5,
                anchored: true,
                total,
                min: 0.0,
                max: bins as f32 * 0.5,
            };
            for levels in [128, 256] {
                let t = kl_threshold(&h, levels);
                let i = (t / 0.5).round() as usize;
                let divs = nvidia_divergences(&counts, levels);
                let min = divs.iter().copied().fold(f64::INFINITY, f64::min);
                let mine = divs[i - levels];
                assert!(
                    mine <= min + 1e-12 * min.abs() + 1e-15,
                    "case {case}: {mine} vs {min}"
                );
                // Ties go to the largest threshold, as numpy's last argmin.
                assert!(
                    divs[i - levels + 1..].iter().all(|&d| d > mine),
                    "case {case}"
                );
            }
        }
    }

    #[test]
    fn kl_clips_long_tails() {
        let x = laplace(300_000, 13);
        let mut o = KlObserver::new(Granularity::PerTensor, 2048).unwrap();
        o.observe(dyn1(&x).view()).unwrap();
        let r = o.ranges().unwrap()[0];
        let (lo, hi) = x
            .iter()
            .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        let amax = hi.max(-lo);
        let t = r.max.max(-r.min);
        assert!(t < 0.95 * amax && t > 0.6 * amax, "{r:?} vs [{lo}, {hi}]");
        // One threshold on |x| clips both sides, unless a side ends earlier.
        assert!(r.max == hi || r.min == lo || r.max == -r.min, "{r:?}");
        // One-signed data (ReLU-like, half exact zeros): the range is [0, T] with T <= max.
        let y: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
        let mut o = KlObserver::new(Granularity::PerTensor, 2048).unwrap();
        o.observe(dyn1(&y).view()).unwrap();
        let r = o.ranges().unwrap()[0];
        assert_eq!(r.min, 0.0);
        assert!(r.max > 0.6 * hi && r.max <= hi, "{r:?} vs {hi}");
    }

    #[test]
    fn kl_threshold_on_a_crafted_histogram() {
        // 1000 counts over the first 256 bins plus a single outlier in the last bin: clipping
        // the outlier wins (Q, built without it, then matches P on every other bin).
        let mut h = Histogram::new(2048, true);
        let mut v: Vec<f32> = (0..1000).map(|i| (i % 256) as f32 + 0.5).collect();
        v.push(2047.5);
        h.add(v.iter().copied());
        assert_eq!(h.width, 2047.5 / 2048.0);
        assert_eq!(kl_threshold(&h, 128), 256.0 * h.width as f32);
        // Fewer used bins than levels: nothing to clip.
        let mut h = Histogram::new(2048, true);
        h.add([1.0f32, 2.0].into_iter());
        assert_eq!(kl_threshold(&h, 128), 2.0);
    }

    #[test]
    fn observer_kind_parses_and_builds() {
        for kind in ObserverKind::ALL {
            let parsed: ObserverKind = kind.as_str().parse().unwrap();
            assert_eq!(parsed, kind);
            assert_eq!(kind.to_string(), kind.as_str());
            let o = kind
                .build(Granularity::PerTensor, &ObserverConfig::default())
                .unwrap();
            assert_eq!(o.name(), kind.as_str());
        }
        assert!(matches!(
            "entropy".parse::<ObserverKind>(),
            Err(QuantError::UnknownObserver { name }) if name == "entropy"
        ));
        let bad = ObserverConfig {
            bins: 0,
            ..ObserverConfig::default()
        };
        assert!(
            ObserverKind::Kl
                .build(Granularity::PerTensor, &bad)
                .is_err()
        );
    }
}
