//! Results files that say how they were made: each experiment writes its figures as one JSON
//! object, and [`Results::write_json`] adds `"quick"` and a `"run"` object (command line, git
//! commit, CPU, threads, UTC date) so a number can always be traced to the run that produced it.
//!
//! Full runs and `--quick` runs write to different directories (`<root>` and `<root>/quick`),
//! so a CI-sized run never overwrites a full run's files.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pare::results::Results;
//!
//! let root = std::env::temp_dir().join(format!("pare-results-doc-{}", std::process::id()));
//! let results = Results::new(&root, true);
//! assert_eq!(results.dir(), root.join("quick"));
//! let path = results.write_json("demo.json", serde_json::json!({ "accuracy": 0.98 }))?;
//! let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
//! assert_eq!(back["accuracy"], 0.98);
//! assert_eq!(back["quick"], true);
//! assert!(back["run"]["date"].as_str().unwrap().ends_with('Z'));
//! # std::fs::remove_dir_all(&root)?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// How a run was made: recorded in every results file under `"run"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// The command line, program first.
    pub command: Vec<String>,
    /// `git rev-parse HEAD` in the results' root, when git can tell.
    pub commit: Option<String>,
    /// The CPU model (`model name` in /proc/cpuinfo), when known.
    pub cpu: Option<String>,
    /// Threads rayon runs the kernels on.
    pub threads: usize,
    /// When the run started, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: String,
}

impl RunInfo {
    /// This process's run, the commit asked of git in `dir`.
    pub fn current(dir: &Path) -> RunInfo {
        RunInfo {
            command: std::env::args().collect(),
            commit: git_commit(dir),
            cpu: cpu_model(),
            threads: rayon_threads(),
            date: utc_date(SystemTime::now()),
        }
    }

    /// The `"run"` object: `command` as one string, `commit` and `cpu` absent when unknown.
    pub fn to_json(&self) -> Value {
        let mut run = json!({
            "command": self.command.join(" "),
            "threads": self.threads,
            "date": self.date,
        });
        if let Some(c) = &self.commit {
            run["commit"] = json!(c);
        }
        if let Some(c) = &self.cpu {
            run["cpu"] = json!(c);
        }
        run
    }
}

fn rayon_threads() -> usize {
    // pare's kernels run on rayon's global pool; its size is what a timing depends on.
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or(usize::MAX),
        )
}

fn git_commit(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (out.status.success() && !s.is_empty()).then(|| s.to_owned())
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn utc_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-from-civil inverse, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Where an experiment writes its results and models, and the run they come from.
#[derive(Debug, Clone)]
pub struct Results {
    dir: PathBuf,
    quick: bool,
    run: RunInfo,
}

impl Results {
    /// Results under `root` (examples use `target/pare`), or under `root/quick` for a quick
    /// run. The git commit is asked in `root`.
    pub fn new(root: impl AsRef<Path>, quick: bool) -> Results {
        let root = root.as_ref();
        let dir = if quick {
            root.join("quick")
        } else {
            root.to_owned()
        };
        let probe = if root.exists() {
            root
        } else {
            root.ancestors().find(|a| a.exists()).unwrap_or(root)
        };
        Results {
            run: RunInfo::current(probe),
            dir,
            quick,
        }
    }

    /// The directory the JSON files go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this is a quick run.
    pub fn quick(&self) -> bool {
        self.quick
    }

    /// The run these results come from.
    pub fn run(&self) -> &RunInfo {
        &self.run
    }

    /// Where the models of this run go, `<dir>/models/<file>`; the directory is created.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be created.
    pub fn model_path(&self, file: &str) -> Result<PathBuf> {
        let dir = self.dir.join("models");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir.join(file))
    }

    /// Writes `value` (a JSON object) as `<dir>/<name>`, pretty-printed, atomically, with
    /// `"quick"` and `"run"` added; returns the path.
    ///
    /// # Errors
    /// [`Error::BadSetting`] if `value` is not an object; [`Error::Io`] or the underlying
    /// write's error if the file cannot be written.
    pub fn write_json(&self, name: &str, mut value: Value) -> Result<PathBuf> {
        let Some(object) = value.as_object_mut() else {
            return Err(Error::BadSetting {
                name: "results",
                value: name.to_owned(),
                reason: "must be a JSON object",
            });
        };
        object.insert("quick".into(), json!(self.quick));
        object.insert("run".into(), self.run.to_json());
        let path = self.dir.join(name);
        let text = serde_json::to_string_pretty(&value)? + "\n";
        pare_tensor::io::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }
}

/// A training run's per-epoch figures as JSON arrays (`loss`, `accuracy`, `val_loss`,
/// `val_accuracy`, `seconds`), the learning curves a plot is drawn from.
///
/// ```
/// let h = pare::tensor::train::History::default();
/// assert_eq!(pare::results::history_json(&h)["loss"], serde_json::json!([]));
/// ```
pub fn history_json(h: &pare_tensor::train::History) -> Value {
    let e = &h.epochs;
    json!({
        "loss": e.iter().map(|e| e.loss).collect::<Vec<_>>(),
        "accuracy": e.iter().map(|e| e.accuracy).collect::<Vec<_>>(),
        "val_loss": e.iter().map(|e| e.val_loss).collect::<Vec<_>>(),
        "val_accuracy": e.iter().map(|e| e.val_accuracy).collect::<Vec<_>>(),
        "seconds": e.iter().map(|e| e.seconds).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates_match_known_instants() {
        let at = |s: u64| utc_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400`: the leap day of 2000.
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        // `date -u -d @1796289933`.
        assert_eq!(at(1_796_289_933), "2026-12-03T09:25:33Z");
    }

    #[test]
    fn quick_and_full_runs_use_different_directories() {
        let root = std::env::temp_dir().join("pare-results-unit");
        assert_eq!(Results::new(&root, false).dir(), root);
        assert_eq!(Results::new(&root, true).dir(), root.join("quick"));
        let r = Results::new(&root, false);
        assert!(matches!(
            r.write_json("x.json", json!([1, 2])),
            Err(Error::BadSetting { .. })
        ));
    }
}
