//! Running an exported file on onnxruntime, through `tools/onnx_run.py` in the Python venv
//! `tools/setup-onnx.sh` makes: the batch goes over as a raw little-endian file, the outputs
//! and the batch-1 latency come back the same way. The tool also runs
//! `onnx.checker.check_model` (with shape inference) on the file first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{OnnxError, Result};

/// A batch for onnxruntime, NHWC as the exported model takes it.
#[derive(Debug, Clone)]
pub enum Input<'a> {
    /// Float images (float and QDQ models).
    F32(ArrayViewD<'a, f32>),
    /// int8 codes (QOperator models).
    I8(ArrayViewD<'a, i8>),
    /// uint8 codes (QOperator models of uint8-input models).
    U8(ArrayViewD<'a, u8>),
}

/// What onnxruntime returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Float logits.
    F32(ArrayD<f32>),
    /// int8 codes.
    I8(ArrayD<i8>),
    /// uint8 codes (QOperator models with uint8 activations).
    U8(ArrayD<u8>),
}

/// One run of a model on onnxruntime.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The model's output on the whole batch.
    pub output: Output,
    /// Median wall time of one single-example `run` call, µs (one intra-op thread).
    pub latency_us: f64,
    /// onnxruntime's version.
    pub version: String,
    /// The operators of the graph onnxruntime runs, after its optimizations (fusions show
    /// here: `QLinearConv` where a QDQ group was fused).
    pub optimized_ops: Vec<String>,
}

/// A Python interpreter with onnxruntime and the tool script.
#[derive(Debug, Clone)]
pub struct OnnxRuntime {
    python: PathBuf,
    script: PathBuf,
}

impl OnnxRuntime {
    /// The interpreter and `onnx_run.py` given explicitly.
    ///
    /// # Errors
    /// [`OnnxError::RuntimeMissing`] if the interpreter is absent, [`OnnxError::Io`] if the
    /// script is.
    pub fn new(python: PathBuf, script: PathBuf) -> Result<Self> {
        if !python.is_file() {
            return Err(OnnxError::RuntimeMissing { python });
        }
        if !script.is_file() {
            return Err(OnnxError::Io {
                path: script,
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Ok(OnnxRuntime { python, script })
    }

    /// The interpreter at `$PARE_PYTHON`, else `<root>/target/onnx-venv/bin/python`, and
    /// `<root>/tools/onnx_run.py`, for a pare checkout at `root`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn in_workspace(root: &Path) -> Result<Self> {
        let python = match std::env::var_os("PARE_PYTHON").filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => root.join("target/onnx-venv/bin/python"),
        };
        Self::new(python, root.join("tools/onnx_run.py"))
    }

    /// The Python interpreter.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Runs `model` on `input` (whole batch, in chunks) and times `latency_runs` batch-1 calls
    /// (0: no timing, `latency_us` is then NaN).
    ///
    /// # Errors
    /// [`OnnxError::Runtime`] when the tool fails (its stderr is in the message: a checker
    /// error, an operator onnxruntime lacks), [`OnnxError::Io`] on the temporary files.
    pub fn run(&self, model: &Path, input: Input<'_>, latency_runs: usize) -> Result<Run> {
        self.run_with(model, input, latency_runs, &[])
    }

    /// [`run`](Self::run) with onnxruntime session config entries, e.g.
    /// `("session.qdqisint8allowed", "1")`, which lets onnxruntime fuse a QDQ model with int8
    /// activations into its int8 kernels on x86 (by default it runs the float operators on the
    /// dequantized values there).
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn run_with(
        &self,
        model: &Path,
        input: Input<'_>,
        latency_runs: usize,
        config: &[(&str, &str)],
    ) -> Result<Run> {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pare-onnx-run-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OnnxError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let result = self.run_in(&dir, model, input, latency_runs, config);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn run_in(
        &self,
        dir: &Path,
        model: &Path,
        input: Input<'_>,
        runs: usize,
        config: &[(&str, &str)],
    ) -> Result<Run> {
        let (dtype, shape, bytes): (&str, Vec<usize>, Vec<u8>) = match input {
            Input::F32(x) => (
                "float32",
                x.shape().to_vec(),
                x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            Input::I8(x) => (
                "int8",
                x.shape().to_vec(),
                x.iter().map(|&v| v as u8).collect(),
            ),
            Input::U8(x) => ("uint8", x.shape().to_vec(), x.iter().copied().collect()),
        };
        let (x_path, y_path, report) = (dir.join("x.bin"), dir.join("y.bin"), dir.join("y.json"));
        std::fs::write(&x_path, bytes).map_err(|source| OnnxError::Io {
            path: x_path.clone(),
            source,
        })?;
        let shape_arg: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let out = Command::new(&self.python)
            .arg(&self.script)
            .arg(model)
            .args(["--input".as_ref(), x_path.as_os_str()])
            .args(["--dtype", dtype, "--shape", &shape_arg.join(",")])
            .args(["--output".as_ref(), y_path.as_os_str()])
            .args(["--report".as_ref(), report.as_os_str()])
            .args(["--latency-runs", &runs.to_string()])
            .args(
                config
                    .iter()
                    .flat_map(|(k, v)| ["--config".to_string(), format!("{k}={v}")]),
            )
            .output()
            .map_err(|source| OnnxError::Io {
                path: self.python.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(OnnxError::Runtime {
                reason: format!("{} failed ({}): {last}", self.script.display(), out.status),
            });
        }
        let bad = |reason: String| OnnxError::Runtime { reason };
        let text = std::fs::read_to_string(&report).map_err(|source| OnnxError::Io {
            path: report.clone(),
            source,
        })?;
        let r: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("report: {e}")))?;
        let dims: Vec<usize> = r["output_shape"]
            .as_array()
            .ok_or_else(|| bad("report without output_shape".into()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("output_shape is not a list of sizes".into()))?;
        let raw = std::fs::read(&y_path).map_err(|source| OnnxError::Io {
            path: y_path.clone(),
            source,
        })?;
        let n: usize = dims.iter().product();
        let output = match r["output_dtype"].as_str() {
            Some("float32") if raw.len() == 4 * n => {
                let v = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Output::F32(ArrayD::from_shape_vec(IxDyn(&dims), v).expect("length checked"))
            }
            Some("int8") if raw.len() == n => {
                let v = raw.iter().map(|&b| b as i8).collect();
                Output::I8(ArrayD::from_shape_vec(IxDyn(&dims), v).expect("length checked"))
            }
            Some("uint8") if raw.len() == n => {
                Output::U8(ArrayD::from_shape_vec(IxDyn(&dims), raw).expect("length checked"))
            }
            other => {
                return Err(bad(format!(
                    "output of type {other:?} and {} bytes for shape {dims:?}",
                    raw.len()
                )));
            }
        };
        Ok(Run {
            output,
            latency_us: r["latency_us_median"].as_f64().unwrap_or(f64::NAN),
            version: r["onnxruntime"].as_str().unwrap_or("?").to_string(),
            optimized_ops: r["optimized_ops"]
                .as_array()
                .map(|ops| {
                    ops.iter()
                        .filter_map(|o| o.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}
