#!/usr/bin/env bash
# Create (or reuse) the Python environment of bids_dnn and install this checkout into it.
#
# Where it lives: ${BIDS_DNN_VENV:-${XDG_CACHE_HOME:-~/.cache}/bids_dnn/venv-<hash>}, the hash taken over
# pyproject.toml and the lock files in requirements/, so fresh clones (CI) reuse it while the requirements
# are unchanged. With PyPI's torch it is ~6 GB (CUDA libraries included): on HPC point BIDS_DNN_VENV (or
# XDG_CACHE_HOME) at a project or scratch folder instead of a quota-limited home.
# CPU-only torch (~1 GB less than 6): set BIDS_DNN_TORCH_INDEX=https://download.pytorch.org/whl/cpu (or a
# local wheel folder, BIDS_DNN_TORCH_INDEX=/path/to/wheels) where it can be reached.
# Versions: every install is constrained by requirements/lock.txt (+ lock-test.txt), the set CI tested.
# Once a new environment is complete, older environments of this checkout (and of checkouts that no longer
# exist) in the same folder are removed.
# Source this file: it exports BIDS_DNN_PY (the interpreter) and puts the venv on PATH.
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_python="${PYTHON:-python3}"
_locks=()
for _f in "$_repo/requirements/lock.txt" "$_repo/requirements/lock-test.txt"; do
    if [ -f "$_f" ]; then _locks+=("$_f"); fi
done
_hash="$(cat "$_repo/pyproject.toml" ${_locks[@]+"${_locks[@]}"} | sha256sum | cut -c1-12)"
_venv="${BIDS_DNN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bids_dnn/venv-$_hash}"
mkdir -p "$(dirname "$_venv")"
# one creator at a time (parallel test runs, array jobs): the others wait for it
exec 9>"$_venv.lock"
flock 9
if [ ! -f "$_venv/.bids_dnn-ready" ]; then
    echo "bids_dnn: creating the environment in $_venv (first time only: a few minutes, ~6 GB)" >&2
    rm -rf "$_venv"
    "$_python" -m venv "$_venv"
    _constraints=()
    for _f in ${_locks[@]+"${_locks[@]}"}; do _constraints+=(-c "$_f"); done
    "$_venv/bin/python" -m pip install --quiet --upgrade pip "setuptools>=77" wheel
    if [ -n "${BIDS_DNN_TORCH_INDEX:-}" ]; then
        if [ -d "$BIDS_DNN_TORCH_INDEX" ]; then _from=(--no-index --find-links "$BIDS_DNN_TORCH_INDEX");
        else _from=(--index-url "$BIDS_DNN_TORCH_INDEX"); fi
        "$_venv/bin/python" -m pip install --quiet ${_constraints[@]+"${_constraints[@]}"} "${_from[@]}" torch torchvision
    fi
    "$_venv/bin/python" -m pip install --quiet ${_constraints[@]+"${_constraints[@]}"} -e "$_repo[test]"
    touch "$_venv/.bids_dnn-ready"
    # older environments of this checkout, or of checkouts that are gone, in the same folder
    if [ -z "${BIDS_DNN_VENV:-}" ]; then
        for _old in "$(dirname "$_venv")"/venv-*/; do
            _old="${_old%/}"
            [ "$_old" != "$_venv" ] && [ -f "$_old/.bids_dnn-checkouts" ] || continue
            _in_use=0
            while IFS= read -r _user; do
                if [ "$_user" != "$_repo" ] && [ -d "$_user" ]; then _in_use=1; fi
            done < "$_old/.bids_dnn-checkouts"
            # not used by another existing checkout, nor being created right now
            if [ "$_in_use" = 0 ] && flock -n "$_old.lock" true 2>/dev/null; then
                echo "bids_dnn: removing the older environment $_old" >&2
                rm -rf "$_old" "$_old.lock"
            fi
        done
    fi
fi
# point the (possibly shared) environment at this checkout; dependencies are already there
grep -qxF "$_repo" "$_venv/.bids_dnn-checkouts" 2>/dev/null || echo "$_repo" >> "$_venv/.bids_dnn-checkouts"
"$_venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$_repo" >/dev/null 2>&1
flock -u 9
exec 9>&-
export BIDS_DNN_PY="$_venv/bin/python"
export PATH="$_venv/bin:$PATH"
