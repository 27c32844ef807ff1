#!/usr/bin/env bash
# Builds, on this (CPU) machine, what bench/bench_gpu.py needs on a lent GPU machine, which
# has neither the raw data, nor dvc/polars to prepare it, nor keras:
#
#   bench/gpu_prepare.sh [DIR]        # DIR defaults to bench/.cache/gpu (git-ignored)
#
#   DIR/data/jena, DIR/data/jena_windows   the windows_jena stage's inputs/outputs
#       (data/prepared/ as `dvc repro windows_jena` leaves it). Copied from data/prepared/
#       when a clone has them; otherwise a full-size generated file (rnnlab-synthetic jena)
#       run through the same stage scripts: the same shapes, so the same step times, but
#       its val MAE is not the real data's (bench_gpu records which one it had).
#   DIR/keras   keras 3.15.1, namex and optree for Python 3.12 manylinux x86_64, unpacked
#       (`pip install --no-index --no-deps --target`); the GPU image has JAX.
#
# Then hand DIR to the device tool as one `carry` path (about 41 MB: 26 MB of arrays,
# 15 MB of packages; the limit is 64 MiB).
# The command to run there is in bench/bench_gpu.py's docstring.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-bench/.cache/gpu}
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null; then
    echo "gpu_prepare: no $PY: run ./dev.sh install first, or set PYTHON to a Python with rnnlab" >&2
    exit 1
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
rm -rf "$DIR"
mkdir -p "$DIR/data"

if [ -f data/prepared/jena/stats.json ] && [ -f data/prepared/jena_windows/windows.json ]; then
    cp -r data/prepared/jena data/prepared/jena_windows "$DIR/data/"
    echo "gpu_prepare: Jena arrays copied from data/prepared/"
else
    PYTHONPATH=src "$PY" -m rnnlab.data.synthetic jena "$TMP/jena.csv"
    PYTHONPATH=src "$PY" stages/normalize.py "$TMP/jena.csv" "$DIR/data/jena"
    PYTHONPATH=src "$PY" stages/windows.py "$DIR/data/jena" "$DIR/data/jena_windows"
    echo "gpu_prepare: Jena arrays from a generated full-size file (no data/prepared/ here)"
fi

TARGET=(--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64)
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$TMP/wheels" keras==3.15.1 namex optree
"$PY" -m pip install -q --no-index --no-deps "${TARGET[@]}" --target "$DIR/keras" "$TMP"/wheels/*.whl
find "$DIR" -name __pycache__ -type d -prune -exec rm -rf {} +
ls "$TMP/wheels"
du -sh "$DIR/data" "$DIR/keras"
du -sh "$DIR"
