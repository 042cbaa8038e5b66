#!/usr/bin/env bash
# Installs dist_llm (editable) with the extras given as the first argument, e.g.
#   bash install.sh            # the trainer only
#   bash install.sh test       # plus everything the test suite needs
#   bash install.sh test,bench # several extras
#
# Why a script and not a bare `pip install -e .`: on a machine without an NVIDIA GPU, letting
# pip resolve `torch` from PyPI downloads a multi-GB CUDA build. So torch is installed first,
# chosen for the machine, and only if it is not importable already:
#   - NVIDIA GPU present (nvidia-smi works): the default PyPI build, which bundles CUDA;
#   - otherwise: a locally provided wheel if pip's find-links has one, else the
#     CPU-only build from PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
EXTRAS=${1:-}
TORCH_SPEC="torch>=2.4"

if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "install.sh: using the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "$TORCH_SPEC"
else
    echo "install.sh: no NVIDIA GPU found; installing a CPU-only torch"
    # A wheel that pip's configured find-links already provide (no download); its dependencies
    # come with the package install below. Otherwise PyTorch's CPU-only wheel index.
    if "$PY" -m pip install --no-index --no-deps "$TORCH_SPEC" >/dev/null 2>&1; then
        echo "install.sh: installed torch from a locally provided wheel"
    else
        "$PY" -m pip install "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu
    fi
fi

if [ -n "$EXTRAS" ]; then
    "$PY" -m pip install -e ".[$EXTRAS]"
else
    "$PY" -m pip install -e .
fi
