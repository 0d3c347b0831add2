"""GLM speed benchmark (B15, issue 23), smoke size: the fast engine's LSA and LSS estimates agree
with nilearn's (run_glm per chunk; one run_glm per trial model) to 1e-8, checked by the script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_glm_speed.py"


def test_bench_glm_speed_smoke() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=300,
                            env=env, check=False)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "all agreement checks passed" in result.stdout and "DISAGREES" not in result.stdout, output
    assert "LSA same 1500 voxels" in result.stdout and "LSS all trials" in result.stdout, output
