"""Each benchmark's smoke version runs and passes its exactness gate (figures are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# benchmarks with a dedicated smoke test (tests/test_<bench>_smoke.py) are not run twice
BENCHMARKS = sorted(p for p in (TESTS.parents[1] / "benchmarks").glob("bench_*.py")
                    if not (TESTS / f"test_{p.stem}_smoke.py").is_file())


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_smoke(script: Path) -> None:
    result = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
