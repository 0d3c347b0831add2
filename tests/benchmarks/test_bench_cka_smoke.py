"""B14 (CKA) benchmark, smoke size: it runs, and its agreement gates pass (figures are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cka.py"


def test_bench_cka_smoke() -> None:
    # one BLAS thread: tiny matrices, and no thread spinning when other jobs load the cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True,
                            timeout=120, env=env)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "all agreement checks passed" in result.stdout, output
    assert "DISAGREES" not in result.stdout, output
    assert "B14 CKA:" in result.stdout and "total (Grams + CKA + permutations)" in result.stdout, output
