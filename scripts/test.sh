#!/usr/bin/env bash
# Set up the environment and run the test suite (extra pytest arguments are passed on).
# Runs the import contracts (lint-imports), then every test (~20 min on 2 cores); BIDS_DNN_TEST_FAST=1 leaves out the ones marked slow.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
# the import contracts of pyproject.toml ([tool.importlinter]): layers point down, the library stays free
# of the spec, the console, pybids, rich and h5py, and torch is imported only where it computes
"$(dirname "$BIDS_DNN_PY")/lint-imports" --no-cache
markers=()
if [ "${BIDS_DNN_TEST_FAST:-0}" = "1" ]; then markers=(-m "not slow"); fi
set +e
"$BIDS_DNN_PY" -m pytest ${markers[@]+"${markers[@]}"} "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 1
fi
exit "$status"
