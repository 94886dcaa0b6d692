#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and links it at .venv.
#
# The environment lives outside the checkout, keyed by a hash of requirements.txt and the Python version,
# so a fresh clone (CI starts from one every time) reuses the 5 GB of torch when nothing changed.
# Override the cache folder with MSAPP_VENV_CACHE, the interpreter with PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
cache=${MSAPP_VENV_CACHE:-$HOME/.cache/msapp}
key=$( { cat requirements.txt; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
venv="$cache/venv-$key"

if [ ! -f "$venv/.complete" ]; then
    echo "bootstrap: creating $venv from requirements.txt (first time: about 5 minutes)" >&2
    mkdir -p "$cache"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r requirements.txt
    "$venv/bin/python" -c 'import monailabel, monai, torch, nilearn' 2>/dev/null
    touch "$venv/.complete"
fi

if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
    rm -rf .venv
    ln -s "$venv" .venv
fi
echo "bootstrap: .venv -> $venv" >&2
