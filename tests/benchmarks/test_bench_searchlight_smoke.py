"""The searchlight benchmark's smoke version runs and passes its exactness gates (B1-B5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_searchlight.py"


def test_bench_searchlight_smoke() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True,
                            text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "all exactness gates passed" in out
    for bench in ("B1", "B2", "B3", "B3b", "B4", "B5"):
        assert f"exactness {bench} " in out, f"{bench} gate missing"
    assert "DISAGREES" not in out
