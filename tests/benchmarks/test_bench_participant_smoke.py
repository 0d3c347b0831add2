"""End-to-end participant benchmark (issue #23, B16), smoke size: one tiny synthetic participant
through the whole participant level; the per-stage table has every stage with a positive wall
time and a sampled peak memory, and the working folder is cleaned up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_participant.py"
STAGES = ["setup (imports, BIDS index, stimuli)", "DNN features + model RDMs", "GLMs + ROI masks", "ROI RDMs (brain)",
          "ROI RSA", "searchlight", "encoding", "report", "finish (status, provenance, exit)"]


def test_bench_participant_smoke(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=180, check=False)
    output = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, output
    info = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"returncode"')))
    assert [row["stage"] for row in info["stages"]] == STAGES
    assert all(row["seconds"] > 0 and row["peak_rss_gb"] > 0 for row in info["stages"]), info["stages"]
    assert abs(sum(row["seconds"] for row in info["stages"]) - info["seconds"]) < 1e-6
    assert info["sampled_peak_gb"] > 0 and info["ru_maxrss_gb"] > 0
    for stage in STAGES:
        assert f"| {stage} |" in result.stdout
    assert list(workdir.iterdir()) == []
