#!/usr/bin/env bash
# Set up the environment, write the demo dataset and run the participant and group levels on it.
# Usage: bash scripts/demo.sh [DEMO_DIR] [OUT_DIR]   (defaults: ./demo_data ./demo_out)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
demo="${1:-demo_data}"
out="${2:-demo_out}"
bids_dnn demo "$demo" --force
bids_dnn "$demo" "$out" participant --spec "$demo/code/spec.yaml" --no-progress
bids_dnn "$demo" "$out" group --spec "$demo/code/spec.yaml" --no-progress
echo "done: derivatives in $out, reports $out/sub-01.html and $out/group.html"
