//! Measuring a compressed model: accuracy from logits, file sizes raw and after gzip, timing
//! medians robust to a shared machine, and summaries over seeds.
//!
//! ```
//! use pare::measure::{FileSize, Summary, accuracy, interleaved_medians};
//!
//! let logits = ndarray::arr2(&[[0.1f32, 0.9], [0.8, 0.2], [0.3, 0.7]]);
//! assert_eq!(accuracy(logits.view(), &[1, 0, 0]), 2.0 / 3.0);
//!
//! let size = FileSize::of(&[0u8; 4096]);
//! assert_eq!(size.bytes, 4096);
//! assert!(size.gzip_bytes < 100);
//!
//! let (mut a, mut b) = (0, 0);
//! let t = interleaved_medians::<()>(3, &mut [&mut || Ok(a += 1), &mut || Ok(b += 1)])?;
//! assert_eq!((t.len(), a, b), (2, 3, 3));
//!
//! let s = Summary::of(&[0.97, 0.98, 0.99]);
//! assert!((s.mean - 0.98).abs() < 1e-12 && s.std.is_some());
//! # Ok::<(), ()>(())
//! ```

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use ndarray::ArrayView2;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Fraction of rows whose arg-max (the first on ties, as NumPy's) is the label; 0 for no rows.
///
/// # Panics
/// If `logits` and `labels` disagree on the number of rows.
pub fn accuracy(logits: ArrayView2<'_, f32>, labels: &[usize]) -> f32 {
    assert_eq!(
        logits.nrows(),
        labels.len(),
        "accuracy: {} rows of logits, {} labels",
        logits.nrows(),
        labels.len()
    );
    let correct = pare_tensor::train::count_correct(&logits.to_owned().into_dyn(), labels);
    correct as f32 / labels.len().max(1) as f32
}

/// Fraction of rows on which two sets of logits pick the same class.
///
/// # Panics
/// If the two have different numbers of rows.
pub fn agreement(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> f64 {
    assert_eq!(
        a.nrows(),
        b.nrows(),
        "agreement: {} vs {} rows",
        a.nrows(),
        b.nrows()
    );
    let class = |r: ndarray::ArrayView1<'_, f32>| pare_tensor::train::argmax(&r.to_vec());
    let same = a
        .rows()
        .into_iter()
        .zip(b.rows())
        .filter(|(x, y)| class(*x) == class(*y))
        .count();
    same as f64 / a.nrows().max(1) as f64
}

/// Length of `bytes` after gzip at level 9 (what `gzip -9` gives, bar the file-name header).
pub fn gzip_len(bytes: &[u8]) -> usize {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail").len()
}

/// A file's size raw and after gzip -9, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSize {
    /// Bytes on disk.
    pub bytes: usize,
    /// Bytes after gzip -9.
    pub gzip_bytes: usize,
}

impl FileSize {
    /// The size of `bytes`.
    pub fn of(bytes: &[u8]) -> FileSize {
        FileSize {
            bytes: bytes.len(),
            gzip_bytes: gzip_len(bytes),
        }
    }

    /// The size of the file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read.
    pub fn read(path: &Path) -> Result<FileSize> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(FileSize::of(&bytes))
    }

    /// `{"bytes": .., "gzip_bytes": ..}`.
    pub fn to_json(self) -> Value {
        json!({ "bytes": self.bytes, "gzip_bytes": self.gzip_bytes })
    }
}

/// Median of `samples` (the upper one of the middle two for an even count); NaN if empty.
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Median time of `runs` calls `f(0)`, `f(1)`, … in microseconds, after `min(runs, 200)`
/// warm-up calls: a batch-1 latency, as TFLite's benchmark tool reports it.
pub fn median_micros(runs: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..runs.min(200) {
        f(i);
    }
    let mut t: Vec<f64> = (0..runs)
        .map(|i| {
            let start = Instant::now();
            f(i);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    median(&mut t)
}

/// One job of [`interleaved_medians`].
pub type Job<'a, E> = &'a mut dyn FnMut() -> std::result::Result<(), E>;

/// Median seconds of each job over `rounds` rounds, every round running every job once in turn,
/// so that load from other processes on a shared machine falls on all of them alike.
///
/// # Errors
/// The first error a job returns.
pub fn interleaved_medians<E>(
    rounds: usize,
    jobs: &mut [Job<'_, E>],
) -> std::result::Result<Vec<f64>, E> {
    let mut times = vec![Vec::with_capacity(rounds); jobs.len()];
    for _ in 0..rounds {
        for (job, t) in jobs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            job()?;
            t.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times.into_iter().map(|mut t| median(&mut t)).collect())
}

/// An f32 as the f64 of its shortest decimal form, so a results file says 0.1 rather than
/// 0.10000000149011612.
pub fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::NAN)
}

/// Mean, sample standard deviation (n − 1; none for one value), min and max of values such as
/// the test accuracies of several seeds, each taken at its shortest decimal form ([`decimal`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation; `None` for fewer than two values.
    pub std: Option<f64>,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (NaN mean for none).
    pub fn of(values: &[f32]) -> Summary {
        let v: Vec<f64> = values.iter().copied().map(decimal).collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.len() > 1)
            .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
        Summary {
            mean,
            std,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// `{"mean", "std", "min", "max"}`.
    pub fn to_json(&self) -> Value {
        json!({ "mean": self.mean, "std": self.std, "min": self.min, "max": self.max })
    }

    /// Fractions as percent: `98.12 % ± 0.10 [97.98, 98.25]`, or just the mean for one value.
    pub fn percent(&self) -> String {
        match self.std {
            Some(s) => format!(
                "{:.2} % ± {:.2} [{:.2}, {:.2}]",
                self.mean * 100.0,
                s * 100.0,
                self.min * 100.0,
                self.max * 100.0
            ),
            None => format!("{:.2} %", self.mean * 100.0),
        }
    }
}

/// The system's 1, 5 and 15-minute load averages (Linux), to read a timing against.
pub fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn summary_matches_a_hand_computation() {
        // mean 0.5, deviations ±0.25 → sample variance 2 · 0.0625 / 1 = 0.125.
        let s = Summary::of(&[0.25, 0.75]);
        assert_abs_diff_eq!(s.mean, 0.5, epsilon = 1e-12);
        assert_abs_diff_eq!(s.std.unwrap(), 0.125f64.sqrt(), epsilon = 1e-12);
        assert_eq!((s.min, s.max), (0.25, 0.75));
        assert_eq!(Summary::of(&[0.1]).std, None);
        assert_eq!(decimal(0.1), 0.1);
    }

    #[test]
    fn gzip_shrinks_repetition_and_agreement_counts_rows() {
        assert!(gzip_len(&[7u8; 10_000]) < 100);
        let a = ndarray::arr2(&[[1.0f32, 0.0], [0.0, 1.0]]);
        let b = ndarray::arr2(&[[1.0f32, 0.0], [1.0, 0.0]]);
        assert_eq!(agreement(a.view(), b.view()), 0.5);
    }

    #[test]
    fn interleaved_medians_stop_at_the_first_error() {
        let mut calls = 0;
        let r = interleaved_medians(
            5,
            &mut [&mut || {
                calls += 1;
                if calls == 2 {
                    Err("second call")
                } else {
                    Ok(())
                }
            }],
        );
        assert_eq!(r, Err("second call"));
    }
}
