#!/usr/bin/env python3
"""Runs an ONNX model on onnxruntime's CPU provider for pare's tests and examples.

Checks the file with onnx.checker (full check, with shape inference), runs the whole batch,
writes the output as a raw little-endian file and a JSON report with its dtype and shape, the
onnxruntime version, the operators of the graph onnxruntime runs after its optimizations, and
the median wall time of single-example runs (one intra-op thread).

  onnx_run.py MODEL --input X.bin --dtype float32|int8|uint8 --shape N,H,W,C
              --output Y.bin --report Y.json [--latency-runs 1000] [--batch 1000]
              [--config KEY=VALUE ...]

--config sets session options, e.g. session.qdqisint8allowed=1, which lets onnxruntime fuse
a QDQ model with int8 activations into its int8 kernels on x86 (by default it runs the float
operators on the dequantized values there).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--input", required=True, help="raw little-endian input batch")
    p.add_argument("--dtype", required=True, choices=["float32", "int8", "uint8"])
    p.add_argument("--shape", required=True, help="comma-separated input shape")
    p.add_argument("--output", required=True, help="raw output written here")
    p.add_argument("--report", required=True, help="JSON report written here")
    p.add_argument("--latency-runs", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1000, help="examples per run call")
    p.add_argument("--config", action="append", default=[], help="session config KEY=VALUE")
    a = p.parse_args()

    onnx.checker.check_model(onnx.load(a.model), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    for entry in a.config:
        key, _, value = entry.partition("=")
        opts.add_session_config_entry(key, value)
    opts.log_severity_level = 3  # no warning about saving the optimized graph
    optimized = a.report + ".optimized.onnx"
    opts.optimized_model_filepath = optimized
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    optimized_ops = [n.op_type for n in onnx.load(optimized).graph.node]
    os.remove(optimized)
    shape = [int(d) for d in a.shape.split(",")]
    x = np.fromfile(a.input, dtype=np.dtype(a.dtype).newbyteorder("<")).reshape(shape)
    name = sess.get_inputs()[0].name
    y = np.concatenate(
        [sess.run(None, {name: x[i : i + a.batch]})[0] for i in range(0, len(x), a.batch)]
    )
    times = []
    for i in range(a.latency_runs):
        one = x[i % len(x) : i % len(x) + 1]
        t = time.perf_counter_ns()
        sess.run(None, {name: one})
        times.append((time.perf_counter_ns() - t) / 1000.0)
    y.astype(y.dtype.newbyteorder("<")).tofile(a.output)
    report = {
        "onnxruntime": ort.__version__,
        "output_dtype": str(y.dtype),
        "output_shape": list(y.shape),
        "latency_us_median": float(np.median(times)) if times else None,
        "latency_runs": a.latency_runs,
        "optimized_ops": optimized_ops,
    }
    with open(a.report, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    sys.exit(main())
