#!/usr/bin/env python3
"""Keras .h5 weights -> safetensors named `<layer>/kernel`, `<layer>/bias` (f32), for pare's
Keras import (pare_onnx::keras). Reads Keras 2 files (`[model_weights/]<layer>/<layer>/kernel:0`)
and Keras 3 `.weights.h5` (`layers/<layer>/vars/0` kernel, `vars/1` bias).

  keras_to_safetensors.py MODEL.h5 OUT.safetensors
"""
import json, sys
import h5py, numpy as np

tensors = {}
def visit(path, obj):
    if isinstance(obj, h5py.Dataset):
        parts = path.split("/")
        if len(parts) >= 3 and parts[-2] == "vars":  # Keras 3
            tensors[f"{parts[-3]}/{['kernel', 'bias'][int(parts[-1])]}"] = obj[()]
        elif len(parts) >= 2:  # Keras 2
            tensors[f"{parts[-2]}/{parts[-1].split(':')[0]}"] = obj[()]
with h5py.File(sys.argv[1], "r") as f:
    (f["model_weights"] if "model_weights" in f else f).visititems(visit)
header, blobs, offset = {}, [], 0
for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name], dtype="<f4")
    header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    blobs.append(a.tobytes()); offset += a.nbytes
h = json.dumps(header).encode(); h += b" " * (-len(h) % 8)
with open(sys.argv[2], "wb") as out:
    out.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))
