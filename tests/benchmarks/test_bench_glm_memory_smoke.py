"""GLM memory benchmark (issue #3), smoke size: it writes a tiny run volume by volume, fits it in
a child process, recovers the planted betas (r >= 0.9, checked by the script) and cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_glm_memory.py"


def test_bench_glm_memory_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workdir = tmp_path / "work"
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "all agreement checks passed" in result.stdout and "DISAGREES" not in result.stdout, output
    info = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("  {")))
    assert info["n_time"] == 120 and info["n_conditions"] == 8 and info["recovery_r"] >= 0.9
    assert info["series_dtype"] == "float32" and info["residuals_dtype"] == "float32"
    assert info["residuals_gb"] * 2**30 == (info["n_time"] - 1) * info["n_voxels"] * 4  # one censored volume
    assert list(workdir.iterdir()) == []  # the synthetic run is deleted afterwards
