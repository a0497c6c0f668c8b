#!/usr/bin/env python3
"""The ResNet-8 of examples/resnet.rs in Keras, with the same recipe, for a side-by-side run.

Conv 3x3 16 (no bias) + BatchNorm + ReLU; three residual blocks of 16, 32, 64 filters (the last
two stride 2 with a 1x1 projection + BatchNorm on the shortcut), each conv-BN-ReLU-conv-BN, add,
ReLU; global average pool; Dense 10 (78,426 parameters). Adam 2e-3 with cosine decay to 0 over
the run, batch 128, 10 epochs, images scaled to [0, 1]. Optionally converts to full-int8 TFLite
(BatchNorm folded by the converter, 100 calibration images) and scores it.

Reads the IDX files directly (no download): --data-dir, else $FASHION_MNIST_DIR / $MNIST_DIR,
else /usr/share/datasets/fashion-mnist or ../shared/data/mnist. Writes JSON for
`cargo run --release --example resnet -- --keras PATH`:

    python tools/keras_resnet.py --dataset fashion --out target/pare/keras-resnet-fashion.json

Needs tensorflow-cpu (e.g. the venv of tools/setup-tf.sh). Run it with the machine otherwise
idle, or side by side with pare's run, and say which.
"""

import argparse
import gzip
import json
import os
import platform
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def read_idx(path):
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    _, _, _, ndim = struct.unpack(">BBBB", data[:4])
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(dir_, stem):
    for name in (stem + ".gz", stem):
        if (dir_ / name).exists():
            return dir_ / name
    sys.exit(f"error: {dir_}: no {stem}[.gz]")


def load(dataset, data_dir):
    if data_dir is None:
        if dataset == "fashion":
            data_dir = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
        else:
            data_dir = os.environ.get("MNIST_DIR", str(ROOT.parent / "shared/data/mnist"))
    d = Path(data_dir)
    out = []
    for split in ("train", "t10k"):
        x = read_idx(find(d, f"{split}-images-idx3-ubyte")).astype(np.float32) / 255.0
        y = read_idx(find(d, f"{split}-labels-idx1-ubyte")).astype(np.int64)
        out.append((x[..., None], y))
    return out


def resnet8(keras):
    layers = keras.layers
    inputs = keras.Input((28, 28, 1))

    def conv(x, filters, k, stride):
        return layers.Conv2D(filters, k, strides=stride, padding="same", use_bias=False)(x)

    x = layers.ReLU()(layers.BatchNormalization()(conv(inputs, 16, 3, 1)))
    cin = 16
    for i, filters in enumerate((16, 32, 64)):
        stride = 1 if i == 0 else 2
        y = layers.ReLU()(layers.BatchNormalization()(conv(x, filters, 3, stride)))
        y = layers.BatchNormalization()(conv(y, filters, 3, 1))
        if stride != 1 or cin != filters:
            x = layers.BatchNormalization()(conv(x, filters, 1, stride))
        x = layers.ReLU()(layers.Add()([y, x]))
        cin = filters
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("fashion", "mnist"), default="fashion")
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--tflite", action="store_true", help="also convert to full-int8 TFLite")
    p.add_argument("--out", required=True, help="JSON file to write")
    a = p.parse_args()

    import tensorflow as tf
    import keras

    keras.utils.set_random_seed(a.seed)
    (x, y), (tx, ty) = load(a.dataset, a.data_dir)
    if a.limit:
        x, y = x[: a.limit], y[: a.limit]
    model = resnet8(keras)
    steps = a.epochs * -(-len(y) // a.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(a.learning_rate, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    timer = Timer()
    hist = model.fit(x, y, batch_size=a.batch_size, epochs=a.epochs, callbacks=[timer], verbose=2)
    _, acc = model.evaluate(tx, ty, batch_size=256, verbose=0)
    out = {
        "model": "resnet8",
        "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}",
        "dataset": a.dataset,
        "params": model.count_params(),
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "learning_rate": a.learning_rate,
        "seed": a.seed,
        "train_images": int(len(y)),
        "test_accuracy": float(acc),
        "epoch_seconds": timer.seconds,
        "train_loss": [float(v) for v in hist.history["loss"]],
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
    }
    if a.tflite:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]

        def calibration():
            for i in range(100):
                yield [x[i : i + 1]]

        conv.representative_dataset = calibration
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        blob = conv.convert()
        interp = tf.lite.Interpreter(model_content=blob)
        interp.allocate_tensors()
        inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
        s, z = inp["quantization"]
        right = 0
        for i in range(len(ty)):
            q = np.clip(np.round(tx[i : i + 1] / s + z), -128, 127).astype(np.int8)
            interp.set_tensor(inp["index"], q)
            interp.invoke()
            right += int(np.argmax(interp.get_tensor(outp["index"])[0]) == ty[i])
        out["tflite_int8_accuracy"] = right / len(ty)
        out["tflite_int8_bytes"] = len(blob)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(a.out)
    print(f"test accuracy {acc:.4f}; seconds/epoch {timer.seconds}; wrote {a.out}")


if __name__ == "__main__":
    main()
