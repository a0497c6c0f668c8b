//! `docs/results.md` and its plots, rebuilt from the JSON files the examples write, so the page
//! shows what a real run measured and nothing else.
//!
//! [`Inputs::find`] reads the result files (`quantization.json`, `pruning.json`, …) from a list
//! of directories, the first holding a file winning; [`build`] turns them into the page's
//! Markdown and SVG plots, each table beside the TensorFlow reference figures, with the command,
//! commit, machine and date of the run (from the file's `run` object; `unknown` where a file has
//! none), and quick runs marked as such. The explanations between the tables are static text
//! from `docs/notes/`, compiled in.
//!
//! ```
//! use pare::report::{Inputs, build};
//! // No result files at all: every section says what to run.
//! let inputs = Inputs::find(&[std::env::temp_dir().join("pare-report-doc-nowhere")])?;
//! let report = build(&inputs)?;
//! assert!(report.markdown.starts_with("# Results"));
//! assert!(report.missing.contains(&"quantization.json".to_string()));
//! # Ok::<(), pare::report::ReportError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::plot::{self, PlotError, SeedRun, SizePoint, SizeSeries, TrainingRun};

/// Why the report could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A result file is not valid JSON.
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: serde_json::Error,
    },
    /// A result file lacks a key the page needs, or holds another type there.
    #[error("{}: key `{key}` missing or not {expected}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// The key, dotted for nested objects.
        key: String,
        /// The JSON type needed.
        expected: &'static str,
    },
    /// A plot could not be drawn from the file's figures.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// A float model (or the page, written atomically) could not be read or written.
    #[error(transparent)]
    Tensor(#[from] pare_tensor::TensorError),
    /// An int8 model file could not be read.
    #[error(transparent)]
    Quant(#[from] pare_quant::QuantError),
}

/// `Result` with [`ReportError`].
pub type Result<T, E = ReportError> = std::result::Result<T, E>;

/// One example's JSON output.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its contents.
    pub json: Value,
}

impl ResultFile {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`ReportError::Io`], [`ReportError::Json`].
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
            path: path.to_owned(),
            source,
        })?;
        let json = serde_json::from_str(&text).map_err(|source| ReportError::Json {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            json,
        })
    }

    /// Whether this is a `--quick` run: its `quick` key is true, or it lies in a `quick`
    /// directory (where the examples put quick runs).
    pub fn is_quick(&self) -> bool {
        self.json.get("quick").and_then(Value::as_bool) == Some(true)
            || self.path.parent().and_then(Path::file_name) == Some("quick".as_ref())
    }

    fn value(&self, key: &str) -> Option<&Value> {
        key.split('.').try_fold(&self.json, |v, k| v.get(k))
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.value(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.key_error(key, "a number"))
    }

    fn opt_f64(&self, key: &str) -> Option<f64> {
        self.value(key).and_then(Value::as_f64)
    }

    fn f64s(&self, key: &str) -> Result<Vec<f64>> {
        let arr = self
            .value(key)
            .and_then(Value::as_array)
            .ok_or_else(|| self.key_error(key, "an array of numbers"))?;
        arr.iter()
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.key_error(key, "an array of numbers"))
            })
            .collect()
    }

    fn key_error(&self, key: &str, expected: &'static str) -> ReportError {
        ReportError::Key {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
        }
    }

    /// The `run` object's fields as text, `unknown` where absent.
    fn run_line(&self, display_path: &str) -> String {
        let s = |key: &str| match self.value(key) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => "unknown".to_owned(),
        };
        let command = match self.value("run.command") {
            Some(Value::String(c)) if !c.is_empty() => format!("`{c}`"),
            _ => "unknown".to_owned(),
        };
        let load = match self.value("load_average") {
            Some(Value::String(l)) => format!("; load average {l}"),
            _ => String::new(),
        };
        format!(
            "Run: {command}; commit {}; machine {} ({} threads); date {}{load}; from \
             `{display_path}`.",
            s("run.commit"),
            s("run.cpu"),
            s("run.threads"),
            s("run.date"),
        )
    }
}

/// The result files found, by file name, and the directories searched. The weight histogram
/// reads the quantization example's models from `models/` beside `quantization.json`.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `quantization.json` and the like, each from the first directory holding it.
    pub files: BTreeMap<String, ResultFile>,
    /// The directories searched, in order.
    pub searched: Vec<PathBuf>,
}

impl Inputs {
    /// Reads every `*.json` in each of `dirs` (absent directories are skipped); for each file
    /// name, the first directory that holds it wins.
    ///
    /// # Errors
    /// [`ReportError::Io`] for a directory that exists but cannot be listed, and anything
    /// [`ResultFile::read`] returns.
    pub fn find<P: AsRef<Path>>(dirs: &[P]) -> Result<Self> {
        let mut inputs = Inputs {
            searched: dirs.iter().map(|d| d.as_ref().to_owned()).collect(),
            ..Default::default()
        };
        for dir in dirs {
            let dir = dir.as_ref();
            if !dir.is_dir() {
                continue;
            }
            let io = |source| ReportError::Io {
                path: dir.to_owned(),
                source,
            };
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io)?
                .map(|e| e.map(|e| e.path()).map_err(io))
                .collect::<Result<_>>()?;
            paths.sort();
            for path in paths {
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name.ends_with(".json") && !inputs.files.contains_key(name) && path.is_file() {
                    inputs
                        .files
                        .insert(name.to_owned(), ResultFile::read(&path)?);
                }
            }
        }
        Ok(inputs)
    }

    fn get(&self, name: &str) -> Option<&ResultFile> {
        self.files.get(name)
    }
}

/// The page and its plots.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `docs/results.md`.
    pub markdown: String,
    /// `(file name, SVG)` for `docs/img/`, linked from the page as `img/<file name>`.
    pub plots: Vec<(String, String)>,
    /// Result files the page wanted and did not find.
    pub missing: Vec<String>,
}

impl Report {
    /// Writes the page to `page` and each plot into `img_dir` (created if needed), each file
    /// atomically.
    ///
    /// # Errors
    /// [`ReportError::Io`].
    pub fn write(&self, page: &Path, img_dir: &Path) -> Result<()> {
        pare_tensor::io::write_atomic(page, self.markdown.as_bytes())?;
        std::fs::create_dir_all(img_dir).map_err(|source| ReportError::Io {
            path: img_dir.to_owned(),
            source,
        })?;
        for (name, svg) in &self.plots {
            let path = img_dir.join(name);
            pare_tensor::io::write_atomic(&path, svg.as_bytes())?;
        }
        Ok(())
    }
}

/// Reference figures: `(what, the classic tutorial's, TensorFlow 2.21 on this machine)`.
/// The tutorials are TensorFlow's post-training integer quantization tutorial, TFMOT's pruning
/// tutorial and the Keras knowledge-distillation example.
const QUANT_REFS: [(&str, &str, &str); 5] = [
    ("float accuracy", "97.89 %", "97.85 %"),
    ("int8 accuracy", "97.92 %", "97.83 %"),
    ("int8 file", "–", "24,848 B"),
    ("float file", "–", "84,848 B"),
    ("batch-1 latency float / int8", "–", "11.4 / 60.9 µs"),
];

const PRUNE_REFS: [(&str, &str, &str); 6] = [
    ("baseline accuracy", "97.87 %", "97.96 %"),
    ("pruned (80 %) accuracy", "97.09 %", "97.16 %"),
    ("pruned + int8 accuracy", "97.05 %", "97.16 %"),
    ("baseline file, gzip", "78,195 B", "78,191 B"),
    ("pruned + int8 file, gzip", "8,130 B", "8,120 B"),
    ("ratio to own baseline, gzip", "9.6×", "9.6×"),
];

const DISTILL_REFS: [(&str, &str, &str); 4] = [
    ("teacher", "97.81 %", "97.60 %"),
    ("distilled student", "97.98 %", "97.49 %"),
    ("student from scratch", "97.10 %", "97.80 %"),
    ("distilled − scratch", "+0.88 pp", "−0.31 pp"),
];

const NOTES_INTRO: &str = include_str!("../docs/notes/intro.md");
const NOTES_TRAINING: &str = include_str!("../docs/notes/training.md");
const NOTES_QUANT: &str = include_str!("../docs/notes/quantization.md");
const NOTES_PRUNE: &str = include_str!("../docs/notes/pruning.md");
const NOTES_DISTILL: &str = include_str!("../docs/notes/distillation.md");
const NOTES_COMPRESS: &str = include_str!("../docs/notes/compress.md");
const NOTES_RESNET: &str = include_str!("../docs/notes/resnet.md");

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// `82,000 B (80.1 KiB)`; the KiB only from 10 KiB up.
fn bytes(n: f64) -> String {
    let b = format!("{} B", plot::group_thousands(n.round() as u64));
    if n >= 10_240.0 {
        format!("{b} ({:.1} KiB)", n / 1024.0)
    } else {
        b
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// `98.32 % ± 0.01 [98.32, 98.33]` over seeds, or the one value.
fn spread(v: &[f64]) -> String {
    let Some(m) = mean(v) else {
        return "–".into();
    };
    if v.len() == 1 {
        return pct(m);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    format!(
        "{} ± {:.2} [{:.2}, {:.2}] ({} seeds)",
        pct(m),
        var.sqrt() * 100.0,
        lo * 100.0,
        hi * 100.0,
        v.len()
    )
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!("|{}|\n", vec!["---"; header.len()].join("|")));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out.push('\n');
}

/// The display form of a result file's path: relative to the working directory when inside it.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_owned())
        .display()
        .to_string()
}

fn header(out: &mut String, f: &ResultFile, reproduce: &str) {
    out.push_str(&f.run_line(&shown(&f.path)));
    out.push_str(&format!(" Reproduce: `{reproduce}`.\n\n"));
    if f.is_quick() {
        out.push_str(
            "> **Quick run** (`--quick`: a few thousand images, one epoch): a smoke test of the \
             pipeline, not comparable with the reference figures.\n\n",
        );
    }
}

/// The section's result file, its run line written; or `None`, with a note saying what to run.
fn section_file<'a>(
    inputs: &'a Inputs,
    name: &str,
    reproduce: &str,
    md: &mut String,
    missing: &mut Vec<String>,
) -> Option<&'a ResultFile> {
    let file = inputs.get(name);
    match file {
        Some(f) => header(md, f, reproduce),
        None => {
            missing.push(name.to_owned());
            missing_note(md, inputs, name, reproduce);
        }
    }
    file
}

/// Table rows: each reference figure's name and values, then ours.
fn reference_rows(
    refs: &[(&str, &str, &str)],
    ours: impl IntoIterator<Item = String>,
) -> Vec<Vec<String>> {
    refs.iter()
        .zip(ours)
        .map(|(&(what, tutorial, tf), o)| vec![what.into(), tutorial.into(), tf.into(), o])
        .collect()
}

fn missing_note(out: &mut String, inputs: &Inputs, name: &str, reproduce: &str) {
    let dirs: Vec<String> = inputs
        .searched
        .iter()
        .map(|d| format!("`{}`", shown(d)))
        .collect();
    out.push_str(&format!(
        "_Not measured: `{name}` is in none of {}. Run `{reproduce}`, then `cargo run --release \
         --example report`._\n\n",
        dirs.join(", ")
    ));
}

/// Builds the page and its plots from whatever result files `inputs` holds; a section whose
/// file is missing says which command makes it.
///
/// # Errors
/// [`ReportError::Key`] for a result file without a figure the page shows,
/// [`ReportError::Plot`] for figures that cannot be plotted (non-finite values).
pub fn build(inputs: &Inputs) -> Result<Report> {
    let mut md = String::new();
    let mut plots = Vec::new();
    let mut missing = Vec::new();
    md.push_str("# Results\n\n");
    md.push_str(
        "<!-- Generated by `cargo run --release --example report` from the examples' JSON: edit \
         src/report.rs or docs/notes/*.md, not this file. -->\n\n",
    );
    md.push_str(NOTES_INTRO.trim_end());
    md.push_str("\n\n");

    training_section(inputs, &mut md, &mut plots, &mut missing)?;
    quantization_section(inputs, &mut md, &mut plots, &mut missing)?;
    pruning_section(inputs, &mut md, &mut plots, &mut missing)?;
    distillation_section(inputs, &mut md, &mut plots, &mut missing)?;
    compress_section(inputs, &mut md, &mut plots, &mut missing)?;
    resnet_section(inputs, &mut md, &mut missing)?;
    onnx_section(inputs, &mut md, &mut missing)?;
    Ok(Report {
        markdown: md,
        plots,
        missing,
    })
}

type Plots = Vec<(String, String)>;

/// ResNet-8 beside Keras (`resnet-<dataset>.json` from `examples/resnet.rs --keras`): the
/// example's rows as it printed them, and Keras's and TFLite's figures from the same run.
fn resnet_section(inputs: &Inputs, md: &mut String, missing: &mut Vec<String>) -> Result<()> {
    md.push_str("## A graph model: ResNet-8 on Fashion-MNIST beside Keras\n\n");
    let reproduce = "bash tools/setup-tf.sh && \"$PARE_TF_PYTHON\" tools/keras_resnet.py --dataset fashion --epochs 10 \
                     --tflite --out target/pare/keras-resnet-fashion.json && cargo run --release \
                     --example resnet -- --dataset fashion --seeds 0,1,2 --keras \
                     target/pare/keras-resnet-fashion.json";
    let Some(f) = section_file(inputs, "resnet-fashion.json", reproduce, md, missing) else {
        return Ok(());
    };
    let rows = resnet_rows(f, md)?;
    let pare_s = f.f64("median_epoch_seconds")?;
    let keras_s = f.f64s("keras.epoch_seconds")?;
    let mut sorted = keras_s.clone();
    sorted.sort_by(f64::total_cmp);
    let keras_median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    // The first int8 row is the unpruned model's conversion.
    let int8 = rows
        .iter()
        .find(|r| r.get("file_bytes").is_some_and(|b| !b.is_null()));
    let mut refs = vec![
        vec![
            match seeds_of(f).len() {
                n if n > 1 => format!("float test accuracy (pare: mean of {n} seeds)"),
                _ => "float test accuracy".to_string(),
            },
            pct(f.f64("float_accuracy")?),
            pct(f.f64("keras.test_accuracy")?),
        ],
        vec![
            "seconds per epoch (median; side by side)".to_string(),
            format!("{pare_s:.1}"),
            format!("{keras_median:.1}"),
        ],
        vec![
            "int8 test accuracy (BN folded, 100 calibration images)".to_string(),
            int8.and_then(|r| r.get("test_accuracy")?.as_f64())
                .map_or_else(|| "–".into(), pct),
            f.opt_f64("keras.tflite_int8_accuracy")
                .map_or_else(|| "–".into(), pct),
        ],
        vec![
            "int8 file".to_string(),
            int8.and_then(|r| r.get("file_bytes")?.as_f64())
                .map_or_else(|| "–".into(), bytes),
            f.opt_f64("keras.tflite_int8_bytes")
                .map_or_else(|| "–".into(), bytes),
        ],
    ];
    // Batch-1 latency comes from its own run (`examples/int8_latency.rs`), both runtimes timed
    // side by side on the same weights.
    if let Some(l) = inputs.get("int8-latency.json") {
        let us = |k: &str| {
            l.opt_f64(k)
                .map_or_else(|| "–".into(), |v| format!("{v:.1} µs"))
        };
        refs.push(vec![
            "int8 batch-1 latency, 1 thread (TFLite: XNNPACK)".to_string(),
            us("pare_us"),
            us("tflite_xnnpack_us_1_thread"),
        ]);
    }
    table(md, &["", "pare", "Keras 3 / TFLite"], &refs);
    md.push_str(NOTES_RESNET.trim_end());
    md.push_str("\n\n");
    // MNIST has no Keras run beside it: pare's table alone, when the run is there.
    if let Some(m) = inputs.get("resnet-mnist.json") {
        md.push_str("The same recipe on MNIST:\n\n");
        header(
            md,
            m,
            "cargo run --release --example resnet -- --dataset mnist",
        );
        resnet_rows(m, md)?;
    }
    Ok(())
}

/// The resnet example's rows as a table; returns them for the figures drawn from them.
fn resnet_rows<'a>(f: &'a ResultFile, md: &mut String) -> Result<&'a Vec<Value>> {
    let rows = f
        .value("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| f.key_error("rows", "an array of rows"))?;
    let seeds = seeds_of(f);
    if seeds.len() > 1 {
        md.push_str(&format!(
            "Means over seeds {}; sd is their sample standard deviation, in points.\n\n",
            seeds.join(", ")
        ));
    }
    let mut table_rows = Vec::new();
    for r in rows {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("–").to_string();
        let acc = r.get("test_accuracy").and_then(Value::as_f64);
        let nonzero = r.get("nonzero_weights").and_then(Value::as_f64);
        let sd = r.get("test_accuracy_std").and_then(Value::as_f64);
        let mut cells = vec![text("stage"), acc.map_or_else(|| "–".into(), pct)];
        if seeds.len() > 1 {
            cells.push(sd.map_or_else(|| "–".into(), |v| format!("{:.2}", v * 100.0)));
        }
        cells.push(nonzero.map_or_else(|| "–".into(), |n| plot::group_thousands(n as u64)));
        cells.push(text("note"));
        table_rows.push(cells);
    }
    let head: &[&str] = if seeds.len() > 1 {
        &["model", "test", "sd", "nonzero weights", "note"]
    } else {
        &["model", "test", "nonzero weights", "note"]
    };
    table(md, head, &table_rows);
    Ok(rows)
}

/// The seeds a resnet run averaged (`seeds`, or the one `seed`; none in older files).
fn seeds_of(f: &ResultFile) -> Vec<String> {
    match f.value("seeds").and_then(Value::as_array) {
        Some(s) => s.iter().map(Value::to_string).collect(),
        None => f.value("seed").map(Value::to_string).into_iter().collect(),
    }
}

/// The exported models (`export-<model>-<format>.json` from `examples/export.rs --compare`):
/// sizes, onnxruntime's accuracy beside pare's, agreement and batch-1 latency, each file one
/// run of both runtimes.
fn onnx_section(inputs: &Inputs, md: &mut String, missing: &mut Vec<String>) -> Result<()> {
    md.push_str(
        "## ONNX export (`pare-onnx`), checked by onnxruntime

",
    );
    let runs: Vec<&ResultFile> = inputs
        .files
        .iter()
        .filter(|(n, _)| n.starts_with("export-"))
        .map(|(_, f)| f)
        .collect();
    let reproduce = "cargo run --release --example export -- --model \
                     target/pare/models/small-int8.safetensors --format qoperator --out \
                     target/pare/onnx/small-qoperator.onnx --compare";
    if runs.is_empty() {
        missing.push("export-*.json".into());
        missing_note(md, inputs, "export-*.json", reproduce);
        return Ok(());
    }
    let mut rows = Vec::new();
    for f in &runs {
        md.push_str("- ");
        md.push_str(&f.run_line(&shown(&f.path)));
        md.push('\n');
        let text = |k: &str| f.value(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        let model = text("model");
        let model = Path::new(&model)
            .file_stem()
            .map_or(model.clone(), |s| s.to_string_lossy().into_owned());
        let kernels = f.value("onnxruntime_int8_kernels").and_then(Value::as_bool);
        let format = match (text("format").as_str(), kernels) {
            ("qdq", Some(true)) => "qdq (int8 kernels)".to_owned(),
            (fmt, _) => fmt.to_owned(),
        };
        let agreement = match f.opt_f64("codes_equal_fraction") {
            Some(eq) => format!(
                "argmax {}; codes {} ({} with TFLite rounding)",
                pct(f.f64("argmax_agreement")?),
                pct(eq),
                f.opt_f64("codes_equal_fraction_tflite_rounding")
                    .map_or("–".into(), pct)
            ),
            None => format!(
                "argmax {}; max Δlogit {:.1e}",
                pct(f.f64("argmax_agreement")?),
                f.f64("max_abs_logit_difference")?
            ),
        };
        rows.push(vec![
            format!("{model}{}", if f.is_quick() { " (quick)" } else { "" }),
            format,
            format!(
                "{} / {}",
                bytes(f.f64("onnx_gzip_bytes")?),
                bytes(f.f64("pare_gzip_bytes")?)
            ),
            format!(
                "{} / {}",
                pct(f.f64("accuracy_onnxruntime")?),
                pct(f.f64("accuracy_pare")?)
            ),
            agreement,
            format!(
                "{:.1} / {:.1} µs",
                f.f64("latency_us_onnxruntime")?,
                f.f64("latency_us_pare")?
            ),
        ]);
    }
    md.push('\n');
    table(
        md,
        &[
            "model",
            "ONNX form",
            "gzip: ONNX / pare",
            "accuracy: onnxruntime / pare",
            "agreement",
            "batch-1: onnxruntime / pare",
        ],
        &rows,
    );
    md.push_str(
        "Codes are compared with pare's engine under onnxruntime's rounding rule \
         (`Rounding::OnnxRuntime`), which reproduces onnxruntime bit for bit; pare's default is \
         TFLite's fixed-point rule. Reproduce a row: `",
    );
    md.push_str(reproduce);
    md.push_str("` (see [onnx.md](onnx.md) for every form).\n\n");
    Ok(())
}

fn training_section(
    inputs: &Inputs,
    md: &mut String,
    plots: &mut Plots,
    missing: &mut Vec<String>,
) -> Result<()> {
    md.push_str("## Training core (`pare-tensor`)\n\n");
    let runs: Vec<(&String, &ResultFile)> = inputs
        .files
        .iter()
        .filter(|(n, _)| n.starts_with("train-"))
        .collect();
    let reproduce = "cargo run --release --example train -- --model small --epochs 5";
    if runs.is_empty() {
        missing.push("train-*.json".into());
        missing_note(md, inputs, "train-*.json", reproduce);
    }
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for (_, f) in &runs {
        header(md, f, reproduce);
        let model = f.value("model").and_then(Value::as_str).unwrap_or("?");
        let epochs = f.f64("epochs")?;
        let secs = f.f64s("epoch_seconds")?;
        let tf = match (model, epochs as u64) {
            ("small", 5) => "97.85 %, 5.2–6.4 s",
            ("teacher", 1) => "97.52 %, 153.5 s",
            _ => "–",
        };
        rows.push(vec![
            format!(
                "{model}, {epochs} epochs{}",
                if f.is_quick() { " (quick)" } else { "" }
            ),
            tf.to_owned(),
            pct(f.f64("test_accuracy")?),
            mean(&secs).map_or("–".into(), |s| format!("{s:.2} s")),
            format!("{:.0}", f.f64("train_images_per_second")?),
        ]);
        curves.push(TrainingRun {
            label: format!("{model} (training set)"),
            loss: f.f64s("train_loss")?,
            accuracy: f.f64s("train_accuracy")?,
        });
    }
    if !rows.is_empty() {
        table(
            md,
            &[
                "run",
                "TF 2.21 here: accuracy, s/epoch",
                "test accuracy",
                "s/epoch",
                "images/s",
            ],
            &rows,
        );
        plots.push((
            "training-curves.svg".into(),
            plot::training_curves(&curves)?,
        ));
        md.push_str("![Training loss and accuracy per epoch](img/training-curves.svg)\n\n");
    }
    md.push_str(NOTES_TRAINING.trim_end());
    md.push_str("\n\n");
    Ok(())
}

fn quantization_section(
    inputs: &Inputs,
    md: &mut String,
    plots: &mut Plots,
    missing: &mut Vec<String>,
) -> Result<()> {
    md.push_str("## Quantization (`pare-quant`)\n\n");
    let reproduce = "cargo run --release --example quantization";
    if let Some(f) = section_file(inputs, "quantization.json", reproduce, md, missing) {
        let ours = [
            pct(f.f64("float_accuracy")?),
            pct(f.f64("int8_accuracy")?),
            bytes(f.f64("int8_model_bytes")?),
            bytes(f.f64("float_model_bytes")?),
            format!(
                "{:.1} / {:.2} µs{}",
                f.f64("float_us_per_image_batch1")?,
                f.f64("int8_us_per_image_batch1")?,
                f.opt_f64("float_lean_us_per_image_batch1")
                    .map_or(String::new(), |l| format!(
                        " (float without the graph: {l:.1} µs)"
                    ))
            ),
        ];
        let mut rows = reference_rows(&QUANT_REFS, ours);
        if let Some(m) = f.opt_f64("int8_matches_simulation") {
            rows.push(vec![
                "int8 engine vs fake-quant simulation, same class".into(),
                "–".into(),
                "–".into(),
                pct(m),
            ]);
        }
        if let Some(r) = f.opt_f64("int8_to_float_size_ratio") {
            rows.push(vec![
                "int8 file / float file".into(),
                "–".into(),
                "29.3 %".into(),
                format!("{:.1} %", r * 100.0),
            ]);
        }
        table(
            md,
            &["figure", "TF tutorial", "TF 2.21 here", "pare"],
            &rows,
        );
        if let Some(Value::Object(sqnr)) = f.value("per_layer_sqnr_db") {
            let layers: Vec<String> = sqnr
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|d| format!("{k} {d:.1} dB")))
                .collect();
            md.push_str(&format!(
                "Per-layer SQNR on the calibration images: {}.\n\n",
                layers.join(", ")
            ));
        }
    }
    // The weights of the run whose figures the table shows: its models lie beside its JSON.
    let models = inputs
        .get("quantization.json")
        .and_then(|f| f.path.parent())
        .map(|d| {
            (
                d.join("models/small-f32.safetensors"),
                d.join("models/small-int8.safetensors"),
            )
        })
        .filter(|(a, b)| a.is_file() && b.is_file());
    if let Some((f32_model, int8_model)) = &models
        && let Some(svg) = weight_plot(f32_model, int8_model)?
    {
        plots.push(("weights-dense.svg".into(), svg));
        md.push_str(&format!(
            "![Float and int8 weights of the dense layer](img/weights-dense.svg)\n\n\
             Weights from `{}` and `{}`.\n\n",
            shown(f32_model),
            shown(int8_model)
        ));
    }
    md.push_str(NOTES_QUANT.trim_end());
    md.push_str("\n\n");
    Ok(())
}

/// The dense layer's float weights beside its int8 codes; `None` if either model lacks it.
fn weight_plot(f32_model: &Path, int8_model: &Path) -> Result<Option<String>> {
    let (tensors, _) = pare_tensor::io::load_f32_tensors(f32_model)?;
    let q = pare_quant::QuantizedModel::load(int8_model)?;
    let float = tensors.iter().find(|(n, _)| n == "dense.kernel");
    let codes = q
        .layers()
        .iter()
        .find(|l| l.name == "dense")
        .and_then(|l| l.weights.as_ref());
    let (Some((_, float)), Some(codes)) = (float, codes) else {
        return Ok(None);
    };
    let float: Vec<f32> = float.iter().copied().collect();
    let codes: Vec<i8> = codes.kernel.iter().copied().collect();
    Ok(Some(plot::weight_histograms(
        "dense.kernel",
        &float,
        &codes,
    )?))
}

fn pruning_section(
    inputs: &Inputs,
    md: &mut String,
    plots: &mut Plots,
    missing: &mut Vec<String>,
) -> Result<()> {
    md.push_str("## Pruning (`pare-prune`)\n\n");
    let reproduce = "cargo run --release --example pruning -- --sweep";
    if let Some(f) = section_file(inputs, "pruning.json", reproduce, md, missing) {
        let ours = [
            pct(f.f64("baseline_accuracy")?),
            pct(f.f64("pruned_accuracy")?),
            pct(f.f64("pruned_int8_accuracy")?),
            bytes(f.f64("baseline_model_gzip_bytes")?),
            format!(
                "{} ({} raw)",
                bytes(f.f64("pruned_int8_model_gzip_bytes")?),
                bytes(f.f64("pruned_int8_model_bytes")?)
            ),
            format!("{:.1}×", f.f64("compression_ratio_gzip")?),
        ];
        let rows = reference_rows(&PRUNE_REFS, ours);
        table(
            md,
            &["figure", "TFMOT tutorial", "TF 2.21 here", "pare"],
            &rows,
        );
    }
    let sweep = inputs
        .get("pruning-sweep.json")
        .map(|f| (f, "points"))
        .or_else(|| inputs.get("pruning.json").map(|f| (f, "sweep.points")));
    match sweep {
        Some((f, key)) if f.value(key).is_some() => {
            if f.path.file_name() == Some("pruning-sweep.json".as_ref()) {
                header(md, f, reproduce);
            }
            let base = f
                .opt_f64("baseline_model_gzip_bytes")
                .or_else(|| f.opt_f64("sweep.baseline_model_gzip_bytes"));
            let points = f
                .value(key)
                .and_then(Value::as_array)
                .ok_or_else(|| f.key_error(key, "an array"))?;
            let mut rows = Vec::new();
            let mut series = Vec::new();
            for (i, _) in points.iter().enumerate() {
                let k = |s: &str| format!("{key}.{i}.{s}");
                let get = |s: &str| -> Result<f64> {
                    points[i]
                        .pointer(&format!("/{}", s.replace('.', "/")))
                        .and_then(Value::as_f64)
                        .ok_or_else(|| f.key_error(&k(s), "a number"))
                };
                let (sp, fa, ia) = (
                    get("sparsity")?,
                    get("f32_accuracy")?,
                    get("int8_accuracy")?,
                );
                let (raw, gz) = (get("int8_model.bytes")?, get("int8_model.gzip_bytes")?);
                rows.push(vec![
                    format!("{:.0} %", sp * 100.0),
                    pct(fa),
                    pct(ia),
                    bytes(raw),
                    bytes(gz),
                    base.map_or("–".into(), |b| format!("{:.1}×", b / gz)),
                ]);
                series.push(SizePoint {
                    label: format!("{:.0} %", sp * 100.0),
                    bytes: gz,
                    accuracy: ia,
                });
            }
            md.push_str("Sweep, every kernel pruned to the sparsity shown, then int8:\n\n");
            table(
                md,
                &[
                    "sparsity",
                    "f32 accuracy",
                    "int8 accuracy",
                    "int8 raw",
                    "int8 gzip",
                    "ratio",
                ],
                &rows,
            );
            let references = [
                SizePoint {
                    label: "TFMOT tutorial".into(),
                    bytes: 8_130.0,
                    accuracy: 0.9705,
                },
                SizePoint {
                    label: "TF 2.21 here".into(),
                    bytes: 8_120.0,
                    accuracy: 0.9716,
                },
            ];
            let svg = plot::accuracy_vs_size(
                &[SizeSeries {
                    label: "pare: pruned + int8, gzip".into(),
                    points: series,
                }],
                &references,
            )?;
            plots.push(("pruning-sweep.svg".into(), svg));
            md.push_str(
                "![Accuracy against gzipped size, pruning sweep](img/pruning-sweep.svg)\n\n",
            );
        }
        _ => {
            missing.push("pruning-sweep.json".into());
            missing_note(md, inputs, "pruning-sweep.json", reproduce);
        }
    }
    md.push_str(NOTES_PRUNE.trim_end());
    md.push_str("\n\n");
    Ok(())
}

fn distillation_section(
    inputs: &Inputs,
    md: &mut String,
    plots: &mut Plots,
    missing: &mut Vec<String>,
) -> Result<()> {
    md.push_str("## Distillation (`pare-distill`)\n\n");
    let reproduce = "cargo run --release --example distillation -- --seeds 0,1,2 --sweep";
    let Some(f) = section_file(inputs, "distillation.json", reproduce, md, missing) else {
        md.push_str(NOTES_DISTILL.trim_end());
        md.push_str("\n\n");
        return Ok(());
    };
    let teacher = f.f64s("teacher_accuracy")?;
    let distilled = f.f64s("distilled_accuracy")?;
    let scratch = f.f64s("scratch_accuracy")?;
    let diff = match (mean(&distilled), mean(&scratch)) {
        (Some(d), Some(s)) => format!("{:+.2} pp", (d - s) * 100.0),
        _ => "–".into(),
    };
    let ours = [spread(&teacher), spread(&distilled), spread(&scratch), diff];
    let mut rows = reference_rows(&DISTILL_REFS, ours);
    if let Ok(int8) = f.f64s("distilled_int8_accuracy") {
        rows.push(vec![
            "distilled student int8".into(),
            "–".into(),
            "–".into(),
            spread(&int8),
        ]);
    }
    if let (Some(d), Some(s)) = (
        f.opt_f64("distill_epoch_seconds"),
        f.opt_f64("scratch_epoch_seconds"),
    ) {
        rows.push(vec![
            "distillation epoch / scratch epoch".into(),
            "–".into(),
            "~7×".into(),
            format!("{:.2}× ({d:.2} s vs {s:.2} s)", d / s),
        ]);
    }
    table(
        md,
        &["figure", "Keras example", "TF 2.21 here", "pare"],
        &rows,
    );

    // Per-epoch accuracy per seed, when the example records it.
    let per_epoch = |key: &str| -> Option<Vec<SeedRun>> {
        let seeds = f.value("seeds")?.as_array()?;
        let runs = f.value(key)?.as_array()?;
        runs.iter()
            .zip(seeds)
            .map(|(r, s)| {
                Some(SeedRun {
                    seed: s.as_u64()?,
                    accuracy: r
                        .as_array()?
                        .iter()
                        .map(Value::as_f64)
                        .collect::<Option<_>>()?,
                })
            })
            .collect()
    };
    if let (Some(d), Some(s)) = (
        per_epoch("distilled_accuracy_per_epoch"),
        per_epoch("scratch_accuracy_per_epoch"),
    ) {
        plots.push((
            "distillation-epochs.svg".into(),
            plot::distilled_vs_scratch(&d, &s)?,
        ));
        md.push_str("![Student accuracy per epoch](img/distillation-epochs.svg)\n\n");
    }

    let sweep_file = inputs.get("distillation-sweep.json");
    let cells = sweep_file
        .and_then(|s| s.json.as_array().or_else(|| s.value("sweep")?.as_array()))
        .or_else(|| f.value("sweep").and_then(Value::as_array));
    if let Some(cells) = cells.filter(|c| !c.is_empty()) {
        if let Some(s) = sweep_file {
            header(md, s, reproduce);
        }
        heat_map(f, cells, md, plots)?;
    } else {
        missing.push("distillation sweep".into());
        md.push_str("_No α × T sweep in the results: run the command above with `--sweep`._\n\n");
    }
    md.push_str(NOTES_DISTILL.trim_end());
    md.push_str("\n\n");
    Ok(())
}

/// The compression pipeline (`compress.json`: each stage of each seed's run) and its frontier
/// (`compress-frontier.json`: one row per setting, means over seeds, and the plot).
fn compress_section(
    inputs: &Inputs,
    md: &mut String,
    plots: &mut Plots,
    missing: &mut Vec<String>,
) -> Result<()> {
    md.push_str(
        "## All together: distil → prune → quantization-aware int4/int8 (`pare::pipeline`)\n\n",
    );
    let teacher = "--teacher target/pare/models/teacher-f32.safetensors";
    let reproduce = format!("cargo run --release --example compress -- {teacher} --seeds 0,1,2");
    if let Some(f) = section_file(inputs, "compress.json", &reproduce, md, missing) {
        let runs = f
            .value("runs")
            .and_then(Value::as_array)
            .ok_or_else(|| f.key_error("runs", "an array of runs"))?;
        // Stage name -> (test, validation, bytes, gzip bytes, seconds) per seed.
        let mut stages: Vec<(String, [Vec<f64>; 5])> = Vec::new();
        for r in runs {
            let list = r
                .get("stages")
                .and_then(Value::as_array)
                .ok_or_else(|| f.key_error("runs.stages", "an array of stages"))?;
            for st in list {
                let name = st["stage"].as_str().unwrap_or("?").to_string();
                let num = |k: &str| {
                    k.split('.')
                        .try_fold(st, |v, k| v.get(k))
                        .and_then(Value::as_f64)
                        .ok_or_else(|| f.key_error("runs.stages", "stages with figures"))
                };
                let values = [
                    num("test_accuracy")?,
                    num("validation_accuracy")?,
                    num("size.bytes")?,
                    num("size.gzip_bytes")?,
                    num("seconds")?,
                ];
                let at = match stages.iter().position(|(n, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        stages.push((name, Default::default()));
                        stages.len() - 1
                    }
                };
                // The teacher is one model for every seed: shown once.
                if stages[at].0.starts_with("teacher") && !stages[at].1[0].is_empty() {
                    continue;
                }
                for (v, x) in stages[at].1.iter_mut().zip(values) {
                    v.push(x);
                }
            }
        }
        let f32_gzip = stages
            .iter()
            .find(|(n, _)| n.starts_with("student"))
            .and_then(|(_, v)| mean(&v[3]));
        let rows: Vec<Vec<String>> = stages
            .iter()
            .map(|(name, v)| {
                let m = |i: usize| mean(&v[i]).unwrap_or(f64::NAN);
                vec![
                    name.clone(),
                    spread(&v[0]),
                    pct(m(1)),
                    bytes(m(2)),
                    bytes(m(3)),
                    match f32_gzip {
                        Some(g) if !name.starts_with("teacher") => format!("{:.1}×", g / m(3)),
                        _ => "–".into(),
                    },
                    format!("{:.0} s", m(4)),
                ]
            })
            .collect();
        let header = [
            "stage",
            "test",
            "validation",
            "file",
            "gzip",
            "vs f32 gzip",
            "time",
        ];
        table(md, &header, &rows);
    }
    let reproduce =
        format!("cargo run --release --example compress -- {teacher} --frontier --seeds 0,1,2");
    if let Some(f) = section_file(inputs, "compress-frontier.json", &reproduce, md, missing) {
        let rows = f
            .value("rows")
            .and_then(Value::as_array)
            .ok_or_else(|| f.key_error("rows", "an array of rows"))?;
        let mut table_rows = Vec::new();
        let mut points = Vec::new();
        for r in rows {
            let num = |k: &str| {
                k.split('.')
                    .try_fold(r, |v, k| v.get(k))
                    .and_then(Value::as_f64)
                    .ok_or_else(|| f.key_error("rows", "rows with figures"))
            };
            let distill = r["distill"].as_bool().unwrap_or(false);
            let bits = num("bits")?;
            let sparsity = num("sparsity")?;
            let tests: Vec<f64> = r["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|run| run["quantized"]["test_accuracy"].as_f64())
                .collect();
            table_rows.push(vec![
                if distill { "distilled" } else { "from scratch" }.into(),
                format!("{:.0} %", sparsity * 100.0),
                format!("int{bits}"),
                spread(&tests),
                pct(num("validation_accuracy.mean")?),
                bytes(num("gzip_bytes")?),
                format!("{:.1}×", num("ratio")?),
            ]);
            points.push(crate::pipeline::FrontierPoint {
                distill,
                bits: bits as u32,
                sparsity,
                gzip_bytes: num("gzip_bytes")?,
                test_accuracy: num("test_accuracy.mean")?,
            });
        }
        let header = [
            "student",
            "sparsity",
            "weights",
            "test",
            "validation",
            "gzip",
            "vs f32 gzip",
        ];
        table(md, &header, &table_rows);
        for c in f
            .value("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let bar = c["min_validation_accuracy"].as_f64().unwrap_or(f64::NAN);
            match c.get("chosen").filter(|v| !v.is_null()) {
                Some(ch) => md.push_str(&format!(
                    "- Smallest setting with mean validation accuracy ≥ {}: **{}**, test {}, \
                     {} gzip, **{:.1}×** smaller than the f32 student.\n",
                    pct(bar),
                    ch["label"].as_str().unwrap_or("?"),
                    pct(ch["test_accuracy"]["mean"].as_f64().unwrap_or(f64::NAN)),
                    bytes(ch["gzip_bytes"].as_f64().unwrap_or(f64::NAN)),
                    ch["ratio"].as_f64().unwrap_or(f64::NAN),
                )),
                None => md.push_str(&format!(
                    "- No setting reaches a mean validation accuracy of {}.\n",
                    pct(bar)
                )),
            }
        }
        md.push('\n');
        let student = (
            f.f64("f32_student.gzip_bytes")?,
            f.f64("f32_student.test_accuracy")?,
        );
        if !points.is_empty() {
            plots.push((
                "compress-frontier.svg".into(),
                crate::pipeline::frontier_plot(&points, student)?,
            ));
            md.push_str(
                "![Accuracy against gzip size, the frontier](img/compress-frontier.svg)\n\n",
            );
        }
    }
    md.push_str(NOTES_COMPRESS.trim_end());
    md.push_str("\n\n");
    Ok(())
}

fn heat_map(f: &ResultFile, cells: &[Value], md: &mut String, plots: &mut Plots) -> Result<()> {
    let mut ts: Vec<f64> = Vec::new();
    let mut alphas: Vec<f64> = Vec::new();
    let mut grid: BTreeMap<(u64, u64), (f64, Option<f64>)> = BTreeMap::new();
    for (i, c) in cells.iter().enumerate() {
        let num = |k: &str| {
            c.get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| f.key_error(&format!("sweep.{i}.{k}"), "a number"))
        };
        let (t, a, m) = (num("temperature")?, num("alpha")?, num("mean")?);
        if !ts.contains(&t) {
            ts.push(t);
        }
        if !alphas.contains(&a) {
            alphas.push(a);
        }
        let diff = c.get("diff_to_scratch_mean").and_then(Value::as_f64);
        grid.insert((a.to_bits(), t.to_bits()), (m, diff));
    }
    ts.sort_by(f64::total_cmp);
    alphas.sort_by(f64::total_cmp);
    let mut values = Vec::new();
    let mut rows = Vec::new();
    for &a in &alphas {
        let mut row = Vec::new();
        let mut cells_md = vec![format!("{a}")];
        for &t in &ts {
            match grid.get(&(a.to_bits(), t.to_bits())) {
                Some(&(m, d)) => {
                    row.push(m * 100.0);
                    cells_md.push(match d {
                        Some(d) => format!("{:.2} ({:+.2})", m * 100.0, d * 100.0),
                        None => format!("{:.2}", m * 100.0),
                    });
                }
                None => {
                    row.push(f64::NAN);
                    cells_md.push("–".into());
                }
            }
        }
        values.push(row);
        rows.push(cells_md);
    }
    md.push_str(
        "Distilled student accuracy (%) over α (hard-label weight) and T (mean over seeds; in \
         brackets the difference to the scratch mean, pp):\n\n",
    );
    let header: Vec<String> = std::iter::once("α \\ T".to_owned())
        .chain(ts.iter().map(|t| format!("{t}")))
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(md, &header, &rows);
    if values.iter().flatten().all(|v| v.is_finite()) {
        let svg = plot::temperature_alpha_heat_map(
            "Distilled student accuracy (%), mean over seeds",
            "%",
            &ts,
            &alphas,
            &values,
        )?;
        plots.push(("distillation-sweep.svg".into(), svg));
        md.push_str("![α × T heat map of the distilled accuracy](img/distillation-sweep.svg)\n\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("pare-report-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn put(d: &Path, name: &str, v: &Value) {
        std::fs::write(d.join(name), serde_json::to_string(v).unwrap()).unwrap();
    }

    fn quantization() -> Value {
        json!({
            "float_accuracy": 0.9802, "int8_accuracy": 0.9803,
            "int8_model_bytes": 21088, "float_model_bytes": 81952,
            "float_us_per_image_batch1": 9.9, "int8_us_per_image_batch1": 2.31,
            "int8_matches_simulation": 1.0, "int8_to_float_size_ratio": 0.2573,
            "per_layer_sqnr_db": {"conv2d": 43.3, "dense": 42.5},
            "run": {"command": "cargo run --release --example quantization", "commit": "abc1234",
                    "cpu": "Test CPU", "threads": 2, "date": "2026-12-03"},
            "quick": false
        })
    }

    #[test]
    fn tables_put_ours_beside_the_references_with_the_run() {
        let d = dir("full");
        put(&d.0, "quantization.json", &quantization());
        let r = build(&Inputs::find(&[&d.0]).unwrap()).unwrap();
        let md = &r.markdown;
        assert!(
            md.contains("| float accuracy | 97.89 % | 97.85 % | 98.02 % |"),
            "{md}"
        );
        assert!(md.contains("| int8 file | – | 24,848 B | 21,088 B (20.6 KiB) |"));
        assert!(
            md.contains("| batch-1 latency float / int8 | – | 11.4 / 60.9 µs | 9.9 / 2.31 µs |")
        );
        assert!(md.contains("commit abc1234; machine Test CPU (2 threads); date 2026-12-03"));
        assert!(md.contains("conv2d 43.3 dB, dense 42.5 dB"));
        assert!(!md.contains("Quick run"));
        for name in ["pruning.json", "distillation.json", "train-*.json"] {
            assert!(r.missing.contains(&name.to_string()), "{name}");
            assert!(md.contains(&format!("`{name}` is in none of")), "{name}");
        }
        // Every row of every table has as many cells as its header.
        for block in md.split("\n\n").filter(|b| b.starts_with("| ")) {
            let cols: Vec<usize> = block.lines().map(|l| l.matches('|').count()).collect();
            assert!(cols.windows(2).all(|w| w[0] == w[1]), "{block}");
        }
    }

    #[test]
    fn quick_runs_and_missing_run_info_are_marked() {
        let d = dir("quick");
        let q = d.0.join("quick");
        std::fs::create_dir_all(&q).unwrap();
        let mut v = quantization();
        v.as_object_mut().unwrap().remove("run");
        v.as_object_mut().unwrap().remove("quick");
        put(&q, "quantization.json", &v);
        let r = build(&Inputs::find(&[q]).unwrap()).unwrap();
        assert!(r.markdown.contains("**Quick run**"), "{}", r.markdown);
        assert!(r.markdown.contains(
            "Run: unknown; commit unknown; machine unknown (unknown threads); date unknown"
        ));
    }

    #[test]
    fn first_directory_wins_and_bad_files_name_themselves() {
        let (a, b) = (dir("first"), dir("second"));
        let mut qa = quantization();
        qa["float_accuracy"] = json!(0.5);
        put(&a.0, "quantization.json", &qa);
        put(&b.0, "quantization.json", &quantization());
        let inputs = Inputs::find(&[a.0.join("absent"), a.0.clone(), b.0.clone()]).unwrap();
        assert_eq!(
            inputs.files["quantization.json"].path,
            a.0.join("quantization.json")
        );
        assert!(build(&inputs).unwrap().markdown.contains("| 50.00 % |"));

        let mut broken = quantization();
        broken.as_object_mut().unwrap().remove("int8_accuracy");
        put(&a.0, "quantization.json", &broken);
        let err = build(&Inputs::find(&[&a.0]).unwrap()).unwrap_err();
        assert!(
            matches!(&err, ReportError::Key { key, .. } if key == "int8_accuracy"),
            "{err:?}"
        );
        std::fs::write(a.0.join("quantization.json"), "{not json").unwrap();
        assert!(matches!(
            Inputs::find(&[&a.0]),
            Err(ReportError::Json { .. })
        ));
    }

    #[test]
    fn pruning_sweep_and_distillation_heat_map_become_tables_and_plots() {
        let d = dir("all");
        let point = |s: f64, a: f64, gz: u64| {
            json!({"sparsity": s, "f32_accuracy": a, "int8_accuracy": a,
                   "int8_model": {"bytes": gz + 100, "gzip_bytes": gz}})
        };
        put(
            &d.0,
            "pruning.json",
            &json!({
                "baseline_accuracy": 0.9838, "pruned_accuracy": 0.9752,
                "pruned_int8_accuracy": 0.9754, "baseline_model_gzip_bytes": 76382,
                "pruned_int8_model_gzip_bytes": 4229, "pruned_int8_model_bytes": 4333,
                "compression_ratio_gzip": 18.06
            }),
        );
        put(
            &d.0,
            "pruning-sweep.json",
            &json!({"baseline_model_gzip_bytes": 76382,
                    "points": [point(0.5, 0.9827, 10809), point(0.8, 0.9754, 4229)]}),
        );
        let cell = |a: f64, t: f64, m: f64| json!({"alpha": a, "temperature": t, "mean": m, "diff_to_scratch_mean": m - 0.9786});
        put(
            &d.0,
            "distillation.json",
            &json!({
                "teacher_accuracy": [0.9857], "distilled_accuracy": [0.9832, 0.9833, 0.9832],
                "scratch_accuracy": [0.9748, 0.9812, 0.9798], "seeds": [0, 1, 2],
                "sweep": [cell(0.1, 1.0, 0.9791), cell(0.1, 10.0, 0.9832),
                          cell(0.5, 1.0, 0.9790), cell(0.5, 10.0, 0.9830)]
            }),
        );
        let r = build(&Inputs::find(&[&d.0]).unwrap()).unwrap();
        let md = &r.markdown;
        assert!(
            md.contains("| pruned + int8 file, gzip | 8,130 B | 8,120 B | 4,229 B (4,333 B raw) |")
        );
        assert!(
            md.contains("| 80 % | 97.54 % | 97.54 % | 4,329 B | 4,229 B | 18.1× |"),
            "{md}"
        );
        assert!(
            md.contains("| distilled − scratch | +0.88 pp | −0.31 pp | +0.46 pp |"),
            "{md}"
        );
        assert!(md.contains("98.32 % ± 0.01 [98.32, 98.33] (3 seeds)"));
        assert!(
            md.contains("| 0.1 | 97.91 (+0.05) | 98.32 (+0.46) |"),
            "{md}"
        );
        let names: Vec<&str> = r.plots.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["pruning-sweep.svg", "distillation-sweep.svg"]);
        for (n, svg) in &r.plots {
            assert!(svg.starts_with("<svg"), "{n}");
            assert!(md.contains(&format!("(img/{n})")), "{n}");
        }
        assert!(r.plots[0].1.contains("TFMOT tutorial"));
        // Writing puts the page and the plots in place.
        let page = d.0.join("out/results.md");
        std::fs::create_dir_all(page.parent().unwrap()).unwrap();
        r.write(&page, &d.0.join("out/img")).unwrap();
        assert_eq!(std::fs::read_to_string(&page).unwrap(), *md);
        assert!(d.0.join("out/img/distillation-sweep.svg").is_file());
    }

    #[test]
    fn resnet_rows_and_the_keras_figures_become_two_tables() {
        let d = dir("resnet");
        put(
            &d.0,
            "resnet-fashion.json",
            &json!({
                "rows": [
                    {"stage": "float", "test_accuracy": 0.9241, "nonzero_weights": 77072,
                     "test_accuracy_std": 0.00123, "note": "115.1 s/epoch (median)"},
                    {"stage": "int8 (BN folded)", "test_accuracy": 0.9236, "nonzero_weights": null,
                     "file_bytes": 82020, "note": "82020 B int8 file"},
                    {"stage": "pruned + int8", "test_accuracy": null, "nonzero_weights": null,
                     "note": "not run: no int8 Add"}
                ],
                "float_accuracy": 0.9241, "median_epoch_seconds": 115.1, "seeds": [0, 1, 2],
                "keras": {"test_accuracy": 0.9207, "epoch_seconds": [75.1, 58.2, 67.4],
                          "tflite_int8_accuracy": 0.9213, "tflite_int8_bytes": 95536}
            }),
        );
        put(
            &d.0,
            "resnet-mnist.json",
            &json!({"rows": [{"stage": "float", "test_accuracy": 0.9931, "nonzero_weights": 77072,
                              "note": "60.0 s/epoch (median)"}]}),
        );
        put(
            &d.0,
            "int8-latency.json",
            &json!({"pare_us": 139.54, "tflite_xnnpack_us_1_thread": 68.6}),
        );
        let md = build(&Inputs::find(&[&d.0]).unwrap()).unwrap().markdown;
        assert!(
            md.contains("| float | 92.41 % | 0.12 | 77,072 | 115.1 s/epoch (median) |"),
            "{md}"
        );
        assert!(
            md.contains("| pruned + int8 | – | – | – | not run: no int8 Add |"),
            "{md}"
        );
        assert!(
            md.contains("| float test accuracy (pare: mean of 3 seeds) | 92.41 % | 92.07 % |"),
            "{md}"
        );
        // The median of Keras's epochs, not their mean (66.9).
        assert!(
            md.contains("| seconds per epoch (median; side by side) | 115.1 | 67.4 |"),
            "{md}"
        );
        assert!(md.contains("| 92.36 % | 92.13 % |"), "{md}");
        assert!(
            md.contains("| 82,020 B (80.1 KiB) | 95,536 B (93.3 KiB) |"),
            "{md}"
        );
        assert!(md.contains("| 139.5 µs | 68.6 µs |"), "{md}");
        let mnist = md
            .find("The same recipe on MNIST")
            .expect("the MNIST table");
        // One seed: no sd column.
        assert!(md[mnist..].contains("| float | 99.31 % | 77,072 | 60.0 s/epoch (median) |"));
        assert!(md.contains("Means over seeds 0, 1, 2;"), "{md}");
    }

    #[test]
    fn compress_stages_and_frontier_become_tables_choices_and_a_plot() {
        let d = dir("compress");
        let stage = |name: &str, acc: f64, gz: u64| {
            json!({"stage": name, "test_accuracy": acc, "validation_accuracy": acc + 0.004,
                   "size": {"bytes": gz + 400, "gzip_bytes": gz}, "seconds": 8.0})
        };
        let run = |acc: f64| {
            json!({"stages": [stage("teacher (f32)", 0.9869, 5_339_922),
                              stage("student (f32)", 0.983, 76_672),
                              stage("int4 QAT", acc, 2_723)]})
        };
        put(
            &d.0,
            "compress.json",
            &json!({"runs": [run(0.9795), run(0.9805)]}),
        );
        let row = |distill: bool, s: f64, gz: f64, acc: f64| {
            json!({"distill": distill, "sparsity": s, "bits": 4, "gzip_bytes": gz, "ratio": 76_672.0 / gz,
                   "test_accuracy": {"mean": acc}, "validation_accuracy": {"mean": acc + 0.004},
                   "runs": [{"quantized": {"test_accuracy": acc}}]})
        };
        put(
            &d.0,
            "compress-frontier.json",
            &json!({
                "f32_student": {"gzip_bytes": 76_672.0, "test_accuracy": 0.983},
                "rows": [row(true, 0.9, 2_723.0, 0.98), row(false, 0.95, 2_000.0, 0.975)],
                "choices": [
                    {"min_validation_accuracy": 0.975, "chosen": {"label": "scratch, 95 %, int4",
                     "test_accuracy": {"mean": 0.975}, "gzip_bytes": 2_000.0, "ratio": 38.3}},
                    {"min_validation_accuracy": 0.99, "chosen": null}
                ]
            }),
        );
        let r = build(&Inputs::find(&[&d.0]).unwrap()).unwrap();
        let md = &r.markdown;
        // The teacher once, not per seed, and no ratio for it.
        assert!(md.contains("| teacher (f32) | 98.69 % | 99.09 % |"), "{md}");
        assert!(md.contains("5,339,922 B (5214.8 KiB) | – |"), "{md}");
        assert!(
            md.contains("| int4 QAT | 98.00 % ± 0.07 [97.95, 98.05] (2 seeds) |"),
            "{md}"
        );
        assert!(md.contains("| 2,723 B | 28.2× |"), "{md}");
        assert!(md.contains("| distilled | 90 % | int4 | 98.00 % |"), "{md}");
        assert!(md.contains("**scratch, 95 %, int4**, test 97.50 %, 2,000 B gzip, **38.3×**"));
        assert!(md.contains("No setting reaches a mean validation accuracy of 99.00 %."));
        let names: Vec<&str> = r.plots.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["compress-frontier.svg"]);
        assert!(r.plots[0].1.contains("Deep Compression"));
    }

    #[test]
    fn spread_and_bytes_format() {
        assert_eq!(spread(&[0.98]), "98.00 %");
        assert_eq!(spread(&[]), "–");
        // Sample standard deviation of 98.0 and 98.2: 0.1414.
        assert_eq!(
            spread(&[0.980, 0.982]),
            "98.10 % ± 0.14 [98.00, 98.20] (2 seeds)"
        );
        assert_eq!(bytes(8120.0), "8,120 B");
        assert_eq!(bytes(84_848.0), "84,848 B (82.9 KiB)");
    }
}
