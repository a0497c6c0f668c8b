#!/usr/bin/env bash
# Makes the Python venv the TFLite tests (tests/tflite.rs, via tools/tflite_run.py) run TFLite's
# reference kernels in: tensorflow-cpu and numpy at pinned versions. The venv lives at
# $PARE_TF_VENV (default /work/venvs/tf when /work/venvs exists, else target/venv-tf); the tests
# find its interpreter through PARE_TF_PYTHON or those same defaults. Idempotent: when the venv
# already holds exactly these versions it returns at once without touching the network.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PARE_TF_VENV:-}" ]]; then
    venv="$PARE_TF_VENV"
elif [[ -d /work/venvs ]]; then
    venv=/work/venvs/tf
else
    venv="$root/target/venv-tf"
fi
python="${PYTHON:-python3}"
pins=(tensorflow-cpu==2.21.0 numpy==2.3.4)

stamp="$venv/.pare-pins"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "${pins[*]}" ]]; then
    exit 0
fi

mkdir -p "$(dirname "$venv")"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
"$venv/bin/python" -c 'import tensorflow as tf; assert tf.__version__.startswith("2.21")'
printf '%s' "${pins[*]}" >"$stamp"
