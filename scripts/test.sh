#!/usr/bin/env bash
# Set up the environment and run the test suite (extra pytest arguments are passed on).
# BIDS_DNN_TEST_ALL=1 includes the slow tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
markers=(-m "not slow")
if [ "${BIDS_DNN_TEST_ALL:-0}" = "1" ]; then markers=(); fi
set +e
"$BIDS_DNN_PY" -m pytest "${markers[@]}" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 1
fi
exit "$status"
