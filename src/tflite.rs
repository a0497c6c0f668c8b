//! pare's int8 models on TFLite: the spec from which `tools/tflite_run.py` writes a `.tflite`
//! flatbuffer holding exactly pare's int8 weights, int32 biases, scales and zero points (so
//! nothing is re-quantized on the way), and a runner for that tool. The bit-exactness tests
//! (`tests/tflite.rs`) and the latency example (`examples/int8_latency.rs`) use both.
//!
//! TensorFlow comes from a Python venv (`tools/setup-tf.sh`); [`tf_python`] finds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use pare_quant::{Bias, LayerKind, Padding, QuantizedModel, Source};
use serde_json::Value;

use crate::error::{Error, Result};

/// TensorFlow's Python: `PARE_TF_PYTHON`, else `/work/venvs/tf/bin/python`, else the venv of
/// `tools/setup-tf.sh` under `root/target/venv-tf`; `None` when none exists.
pub fn tf_python(root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PARE_TF_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    [
        PathBuf::from("/work/venvs/tf/bin/python"),
        root.join("target/venv-tf/bin/python"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// The spec `tools/tflite_run.py` builds its `.tflite` flatbuffer from: `q`'s layers with
/// their codes and parameters in pare's layouts, the wiring of a graph model, a batch of `n`,
/// and the files of run `name` under `dir` (`<name>.tflite`, `.input.bin`, `.output.bin`).
/// With `xnnpack` the tool also runs the default resolver (XNNPACK delegate).
///
/// # Errors
/// [`QuantError::WrongMode`](pare_quant::QuantError::WrongMode) for a dynamic-range model
/// (TFLite's int8 kernels need integer activations).
pub fn spec(q: &QuantizedModel, n: usize, name: &str, dir: &Path, xnnpack: bool) -> Result<Value> {
    let input = q.input_quant().ok_or(pare_quant::QuantError::WrongMode {
        op: "a TFLite spec",
        mode: q.mode(),
    })?;
    let act = |a: pare_quant::ActQuant| serde_json::json!({"scale": a.scale, "zero_point": a.zero_point});
    let padding = |p: &Padding| if *p == Padding::Same { "same" } else { "valid" };
    let relu = |r: bool| if r { "relu" } else { "none" };
    let layers: Vec<serde_json::Value> = q
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut v = serde_json::json!({
                "op": l.kind.op_name(),
                "name": l.name,
                "output": act(l.output.expect("a full-integer model has output parameters")),
                "output_shape": l.output_shape,
            });
            let m = v.as_object_mut().expect("a JSON object");
            if !q.is_sequential() {
                let inputs: Vec<i64> = q
                    .layer_inputs(i)
                    .expect("one entry per layer")
                    .iter()
                    .map(|s| match s {
                        Source::Input => -1,
                        Source::Layer(j) => *j as i64,
                    })
                    .collect();
                m.insert("inputs".into(), serde_json::json!(inputs));
            }
            if let Some(w) = &l.weights {
                let Bias::Int32(b) = &w.bias else {
                    unreachable!("spec: a full-integer model has int32 biases")
                };
                let mut shape = w.kernel.shape().to_vec();
                if let LayerKind::DepthwiseConv2d { .. } = l.kind {
                    // [kh, kw, c · m] as the tool's [kh, kw, c, m].
                    let c = l.input_shape[2];
                    shape = vec![shape[0], shape[1], c, shape[2] / c];
                }
                m.insert("kernel_shape".into(), serde_json::json!(shape));
                let codes: Vec<i8> = w.kernel.iter().copied().collect();
                m.insert("kernel".into(), serde_json::json!(codes));
                m.insert("weight_scale".into(), serde_json::json!(w.scale));
                m.insert("bias".into(), serde_json::json!(b));
            }
            match &l.kind {
                LayerKind::Conv2d {
                    strides,
                    padding: p,
                    relu: r,
                    ..
                }
                | LayerKind::DepthwiseConv2d {
                    strides,
                    padding: p,
                    relu: r,
                    ..
                } => {
                    m.insert("strides".into(), serde_json::json!(strides));
                    m.insert("padding".into(), padding(p).into());
                    m.insert("activation".into(), relu(*r).into());
                }
                LayerKind::Dense { relu: r } | LayerKind::Add { relu: r } => {
                    m.insert("activation".into(), relu(*r).into());
                }
                LayerKind::MaxPool2d {
                    pool,
                    strides,
                    padding: p,
                }
                | LayerKind::AvgPool2d {
                    pool,
                    strides,
                    padding: p,
                } => {
                    m.insert("pool".into(), serde_json::json!(pool));
                    m.insert("strides".into(), serde_json::json!(strides));
                    m.insert("padding".into(), padding(p).into());
                }
                LayerKind::LeakyRelu { alpha } => {
                    m.insert("alpha".into(), serde_json::json!(alpha));
                }
                _ => {}
            }
            v
        })
        .collect();
    Ok(serde_json::json!({
        "batch": n,
        "input": {"shape": q.input_shape(), "scale": input.scale, "zero_point": input.zero_point},
        "layers": layers,
        "model_path": dir.join(format!("{name}.tflite")),
        "input_path": dir.join(format!("{name}.input.bin")),
        "output_path": dir.join(format!("{name}.output.bin")),
        "xnnpack": xnnpack,
    }))
}


/// Runs `root/tools/tflite_run.py` on the spec `spec` (written to `<dir>/<name>.json`) with
/// the int8 input `codes` (written to the spec's `input_path`); returns the tool's JSON
/// report (TensorFlow's version, and the latencies when the spec asks for them).
///
/// # Errors
/// [`Error::Io`] if a file cannot be written or the tool cannot start, [`Error::Check`] if it
/// fails (its stderr is the reason), [`Error::Json`] for a report that is not JSON.
pub fn run_tool(
    python: &Path,
    root: &Path,
    spec: &Value,
    codes: &[i8],
    dir: &Path,
    name: &str,
) -> Result<Value> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let spec_path = dir.join(format!("{name}.json"));
    std::fs::write(&spec_path, serde_json::to_vec(spec)?).map_err(io(&spec_path))?;
    let input = dir.join(format!("{name}.input.bin"));
    let bytes: Vec<u8> = codes.iter().map(|&v| v as u8).collect();
    std::fs::write(&input, bytes).map_err(io(&input))?;
    let tool = root.join("tools/tflite_run.py");
    let out = Command::new(python)
        .arg(&tool)
        .arg(&spec_path)
        .output()
        .map_err(io(python))?;
    if !out.status.success() {
        return Err(Error::Check {
            what: "tools/tflite_run.py".into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("{}");
    Ok(serde_json::from_str(last)?)
}
