#!/usr/bin/env python3
"""Runs an int8 model that pare describes on TFLite itself, with TFLite's reference kernels.

Usage: tflite_run.py SPEC.json

SPEC (written by tests/tflite.rs) gives the input shape and parameters, and for every layer its
operation, int8 weights and int32 biases (pare's layouts), weight scales, output parameters,
output shape and, in a graph model, its inputs (layer indices, -1 for the model input; ADD and
CONCATENATION take two or more). This tool writes the TFLite flatbuffer for exactly those tensors and parameters
(nothing is re-quantized or converted, so TFLite sees pare's numbers bit for bit), runs it on the
int8 input codes in SPEC["input_path"] with the reference op resolver
(`OpResolverType.BUILTIN_REF`), and writes every layer's int8 output, concatenated, to
SPEC["output_path"]; with SPEC["xnnpack"] also the outputs of the default resolver (XNNPACK
delegate) to SPEC["output_path"] + ".xnnpack". The .tflite file goes to SPEC["model_path"].
With SPEC["bench_runs"] it also times that many calls of the default resolver (median
microseconds, on one thread and on TFLite's default) and adds them to the JSON it prints.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flatbuffers  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.lite.python import schema_py_generated as S  # noqa: E402

# Operator versions of the int8 kernels (the resolvers accept them; the kernels do not branch
# on them for int8).
VERSIONS = {
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4,
    "MAX_POOL_2D": 2,
    "AVERAGE_POOL_2D": 2,
    "RESHAPE": 1,
    "RELU": 2,
    "RELU6": 2,
    "LEAKY_RELU": 2,
    "LOGISTIC": 2,
    "TANH": 2,
    "HARD_SWISH": 1,
    "MEAN": 2,
    "ADD": 2,
    "CONCATENATION": 2,
    "SOFTMAX": 2,
}

ACTIVATION = {
    "none": S.ActivationFunctionType.NONE,
    "relu": S.ActivationFunctionType.RELU,
    "relu6": S.ActivationFunctionType.RELU6,
}

PADDING = {"valid": S.Padding.VALID, "same": S.Padding.SAME}


class Builder:
    def __init__(self):
        self.tensors = []
        self.buffers = [S.BufferT()]  # buffer 0: the empty buffer of every activation
        self.codes = []
        self.ops = []

    def tensor(self, name, shape, ttype, scale=None, zero_point=None, axis=0, data=None):
        t = S.TensorT()
        t.name = name.encode()
        t.shape = list(shape)
        t.type = ttype
        t.buffer = 0
        if data is not None:
            b = S.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale = [float(s) for s in scale]
            q.zeroPoint = [int(z) for z in zero_point]
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def act(self, name, shape, q):
        return self.tensor(name, shape, S.TensorType.INT8, [q["scale"]], [q["zero_point"]])

    def op(self, code, inputs, outputs, options_type=None, options=None):
        if code not in self.codes:
            self.codes.append(code)
        o = S.OperatorT()
        o.opcodeIndex = self.codes.index(code)
        o.inputs = inputs
        o.outputs = outputs
        if options is not None:
            o.builtinOptionsType = options_type
            o.builtinOptions = options
        self.ops.append(o)

    def finish(self, inputs, outputs):
        sg = S.SubGraphT()
        sg.tensors = self.tensors
        sg.inputs = inputs
        sg.outputs = outputs
        sg.operators = self.ops
        sg.name = b"main"
        m = S.ModelT()
        m.version = 3
        m.description = b"pare int8 model"
        m.subgraphs = [sg]
        m.buffers = self.buffers
        m.operatorCodes = []
        for code in self.codes:
            c = S.OperatorCodeT()
            value = getattr(S.BuiltinOperator, code)
            c.builtinCode = value
            c.deprecatedBuiltinCode = min(value, 127)
            c.version = VERSIONS[code]
            m.operatorCodes.append(c)
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def weights(b, layer, in_scale, layout):
    """The filter and bias tensors of a conv, depthwise conv or dense layer."""
    shape = layer["kernel_shape"]
    k = np.array(layer["kernel"], dtype=np.int8).reshape(shape)
    if layout == "conv":  # [kh, kw, in, out] -> OHWI
        k, axis = k.transpose(3, 0, 1, 2), 0
    elif layout == "depthwise":  # [kh, kw, c, m] -> [1, kh, kw, c * m], channel c * m + j
        k, axis = k.reshape(1, shape[0], shape[1], shape[2] * shape[3]), 3
    else:  # dense [in, out] -> [out, in]
        k, axis = k.T, 0
    k = np.ascontiguousarray(k)
    ws = layer["weight_scale"]
    channels = k.shape[axis]
    name = layer["name"]
    kt = b.tensor(name + "/kernel", k.shape, S.TensorType.INT8, ws, [0] * len(ws), axis, k)
    bias = np.array(layer["bias"], dtype=np.int32)
    bs = [in_scale * s for s in (ws if len(ws) == channels else ws * channels)]
    # TFLite checks only that the bias scale is close to s_in · s_w; it recomputes the
    # multiplier from the input and filter scales.
    bt = b.tensor(name + "/bias", [channels], S.TensorType.INT32, bs, [0] * len(bs), 0, bias)
    return kt, bt


def build(spec):
    b = Builder()
    n = spec["batch"]
    first = b.act("input", [n] + spec["input"]["shape"], spec["input"])
    outputs = []
    params = []
    for i, layer in enumerate(spec["layers"]):
        # Each layer's inputs by index, -1 for the model input; a chain's layer takes the one
        # before it.
        sources = layer.get("inputs", [i - 1])
        ins = [first if j < 0 else outputs[j] for j in sources]
        x = ins[0]
        q = spec["input"] if sources[0] < 0 else params[sources[0]]
        op = layer["op"]
        name = layer["name"]
        out_q = layer["output"]
        shape = [n] + layer["output_shape"]
        y = b.act(name, shape, out_q)
        if op in ("conv2d", "depthwise_conv2d"):
            kt, bt = weights(b, layer, q["scale"], "conv" if op == "conv2d" else "depthwise")
            if op == "conv2d":
                o = S.Conv2DOptionsT()
                code, otype = "CONV_2D", S.BuiltinOptions.Conv2DOptions
            else:
                o = S.DepthwiseConv2DOptionsT()
                o.depthMultiplier = layer["kernel_shape"][3]
                code, otype = "DEPTHWISE_CONV_2D", S.BuiltinOptions.DepthwiseConv2DOptions
            o.padding = PADDING[layer["padding"]]
            o.strideH, o.strideW = layer["strides"]
            o.dilationHFactor = o.dilationWFactor = 1
            o.fusedActivationFunction = ACTIVATION[layer["activation"]]
            b.op(code, [x, kt, bt], [y], otype, o)
        elif op == "dense":
            kt, bt = weights(b, layer, q["scale"], "dense")
            o = S.FullyConnectedOptionsT()
            o.fusedActivationFunction = ACTIVATION[layer["activation"]]
            o.keepNumDims = False
            b.op("FULLY_CONNECTED", [x, kt, bt], [y], S.BuiltinOptions.FullyConnectedOptions, o)
        elif op in ("max_pool2d", "avg_pool2d"):
            o = S.Pool2DOptionsT()
            o.padding = PADDING[layer["padding"]]
            o.strideH, o.strideW = layer["strides"]
            o.filterHeight, o.filterWidth = layer["pool"]
            o.fusedActivationFunction = S.ActivationFunctionType.NONE
            code = "MAX_POOL_2D" if op == "max_pool2d" else "AVERAGE_POOL_2D"
            b.op(code, [x], [y], S.BuiltinOptions.Pool2DOptions, o)
        elif op == "reshape":
            s = np.array(shape, dtype=np.int32)
            st = b.tensor(name + "/shape", [len(shape)], S.TensorType.INT32, data=s)
            o = S.ReshapeOptionsT()
            o.newShape = [int(v) for v in shape]
            b.op("RESHAPE", [x, st], [y], S.BuiltinOptions.ReshapeOptions, o)
        elif op == "global_avg_pool2d":
            # Keras' GlobalAveragePooling2D converts to MEAN over [1, 2] without keep_dims.
            keep = bool(layer.get("keep_dims", False))
            axes = np.array([1, 2], dtype=np.int32)
            at = b.tensor(name + "/axes", [2], S.TensorType.INT32, data=axes)
            if keep:
                c = layer["output_shape"][-1]
                y4 = b.act(name + "/keep", [n, 1, 1, c], out_q)
            o = S.ReducerOptionsT()
            o.keepDims = keep
            b.op("MEAN", [x, at], [y4 if keep else y], S.BuiltinOptions.ReducerOptions, o)
            if keep:
                s = np.array(shape, dtype=np.int32)
                st = b.tensor(name + "/shape", [len(shape)], S.TensorType.INT32, data=s)
                ro = S.ReshapeOptionsT()
                ro.newShape = [int(v) for v in shape]
                b.op("RESHAPE", [y4, st], [y], S.BuiltinOptions.ReshapeOptions, ro)
        elif op == "leaky_relu":
            o = S.LeakyReluOptionsT()
            o.alpha = layer["alpha"]
            b.op("LEAKY_RELU", [x], [y], S.BuiltinOptions.LeakyReluOptions, o)
        elif op in ("relu", "relu6", "sigmoid", "tanh", "hard_swish"):
            code = {
                "relu": "RELU",
                "relu6": "RELU6",
                "sigmoid": "LOGISTIC",
                "tanh": "TANH",
                "hard_swish": "HARD_SWISH",
            }[op]
            b.op(code, [x], [y])
        elif op == "softmax":
            # Over the last axis, beta 1 (Keras' Softmax converts so).
            o = S.SoftmaxOptionsT()
            o.beta = 1.0
            b.op("SOFTMAX", [x], [y], S.BuiltinOptions.SoftmaxOptions, o)
        elif op == "add":
            o = S.AddOptionsT()
            o.fusedActivationFunction = ACTIVATION[layer["activation"]]
            b.op("ADD", ins, [y], S.BuiltinOptions.AddOptions, o)
        elif op == "concatenate":
            o = S.ConcatenationOptionsT()
            o.axis = len(shape) - 1
            o.fusedActivationFunction = S.ActivationFunctionType.NONE
            b.op("CONCATENATION", ins, [y], S.BuiltinOptions.ConcatenationOptions, o)
        else:
            raise SystemExit(f"tflite_run.py: unknown op {op!r}")
        outputs.append(y)
        params.append(out_q)
    return b.finish([first], [outputs[-1]]), outputs


def run(model, outputs, codes, resolver):
    """Every layer's output with `resolver`; only the model's output under a delegate, whose
    intermediate tensors are not kept."""
    reference = resolver == tf.lite.experimental.OpResolverType.BUILTIN_REF
    interp = tf.lite.Interpreter(
        model_content=model,
        experimental_op_resolver_type=resolver,
        experimental_preserve_all_tensors=reference,
    )
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], codes)
    interp.invoke()
    if not reference:
        outputs = outputs[-1:]
    return b"".join(interp.get_tensor(t).astype(np.int8).tobytes() for t in outputs)


def latency_us(model, codes, runs, threads):
    """Median microseconds of one `invoke` with the default resolver (XNNPACK delegate) on
    `threads` threads, after min(runs, 200) warm-up calls, as TFLite's benchmark tool
    reports it."""
    interp = tf.lite.Interpreter(model_content=model, num_threads=threads)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    for _ in range(min(runs, 200)):
        interp.set_tensor(index, codes)
        interp.invoke()
    times = []
    for _ in range(runs):
        interp.set_tensor(index, codes)
        start = time.perf_counter_ns()
        interp.invoke()
        times.append((time.perf_counter_ns() - start) / 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    model, outputs = build(spec)
    with open(spec["model_path"], "wb") as f:
        f.write(model)
    shape = [spec["batch"]] + spec["input"]["shape"]
    codes = np.fromfile(spec["input_path"], dtype=np.int8).reshape(shape)
    R = tf.lite.experimental.OpResolverType
    with open(spec["output_path"], "wb") as f:
        f.write(run(model, outputs, codes, R.BUILTIN_REF))
    if spec.get("xnnpack"):
        with open(spec["output_path"] + ".xnnpack", "wb") as f:
            f.write(run(model, outputs, codes, R.BUILTIN))
    report = {"tensorflow": tf.__version__}
    if spec.get("bench_runs"):
        # Batch-1 latency of the default resolver (XNNPACK) on one thread and on TFLite's
        # default thread count.
        runs = int(spec["bench_runs"])
        report["xnnpack_us_1_thread"] = latency_us(model, codes, runs, 1)
        report["xnnpack_us_default_threads"] = latency_us(model, codes, runs, None)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
