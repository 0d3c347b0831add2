#!/usr/bin/env bash
# Create (or reuse) the Python environment of bids_dnn and install this checkout into it.
#
# The environment lives outside the checkout, keyed by a hash of pyproject.toml, so fresh clones
# (CI) reuse it while the requirements are unchanged. Override its location with BIDS_DNN_VENV.
# Source this file: it exports BIDS_DNN_PY (the interpreter) and puts the venv on PATH.
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_python="${PYTHON:-python3}"
_hash="$(cat "$_repo/pyproject.toml" | sha256sum | cut -c1-12)"
_venv="${BIDS_DNN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bids_dnn/venv-$_hash}"
mkdir -p "$(dirname "$_venv")"
# one creator at a time (parallel test runs, array jobs): the others wait for it
exec 9>"$_venv.lock"
flock 9
if [ ! -f "$_venv/.bids_dnn-ready" ]; then
    echo "bids_dnn: creating the environment in $_venv (first time only: a few minutes)" >&2
    rm -rf "$_venv"
    "$_python" -m venv "$_venv"
    "$_venv/bin/python" -m pip install --quiet --upgrade pip "setuptools>=77" wheel
    "$_venv/bin/python" -m pip install --quiet -e "$_repo[test]"
    touch "$_venv/.bids_dnn-ready"
fi
# point the (possibly shared) environment at this checkout; dependencies are already there
"$_venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$_repo" >/dev/null 2>&1
flock -u 9
exec 9>&-
export BIDS_DNN_PY="$_venv/bin/python"
export PATH="$_venv/bin:$PATH"
