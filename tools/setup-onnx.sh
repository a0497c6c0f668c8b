#!/usr/bin/env bash
# Makes the Python venv the ONNX tests and `examples/export.rs --compare` run onnxruntime in:
# target/onnx-venv with onnxruntime, onnx, numpy and h5py at pinned versions. Idempotent: when the
# venv already holds exactly these versions it returns at once without touching the network.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/target/onnx-venv"
python="${PYTHON:-python3}"
pins=(onnxruntime==1.23.2 onnx==1.19.1 numpy==2.3.4 h5py==3.15.1)

stamp="$venv/.pare-pins"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "${pins[*]}" ]]; then
    exit 0
fi

mkdir -p "$root/target"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
"$venv/bin/python" -c 'import onnxruntime, onnx, numpy, h5py'
printf '%s' "${pins[*]}" >"$stamp"
