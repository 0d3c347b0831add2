"""Crash safety and concurrency of the participant / group levels (real subprocesses).

Fault injection: a participant run is killed with SIGKILL at several points (after feature
extraction, while RDMs / tables are written, while the report is drawn, in the middle of an
atomic write); a rerun must then give outputs identical to an uninterrupted run and leave no
temporary files. Concurrency: two participant processes and an early group process on one
output folder.

All runs use a small spec (no searchlight / encoding / weighted RSA, few permutations) on a
2-subject, 2-run demo dataset, so each process takes seconds (mostly imports).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from _specs import SMALL_SPEC

SPEC = SMALL_SPEC
FEATURES = Path("model-alexnet") / "task-shapes_model-alexnet_features.h5"
RUN_ID_DIR = re.compile(r"^\d{8}-\d{6}-")
#: differ between runs by design: the run id, timings, and the checksums of outputs that embed them (reports)
VOLATILE_KEYS = {"run_id", "seconds", "checksums"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "PYTHONHASHSEED": "0", "COLUMNS": "200"}


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    returncode: int
    stderr: str
    killed: bool = False
    seconds: float = 0.0


def _command(bids: Path, out: Path, level: str, spec: Path, labels: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "bids_dnn", str(bids), str(out), level, "--spec", str(spec), "--no-progress"]
    if labels:
        cmd += ["--participant-label", *labels]
    return cmd


def run_bids_dnn(cmd: list[str], log: Path, kill_when: Callable[[], bool] | None = None,
                 timeout: float = 240.0, sig: int = signal.SIGKILL) -> RunResult:
    """Run ``cmd``; send ``sig`` (default SIGKILL) as soon as ``kill_when()`` is true (polled every ~2 ms)."""
    start = time.monotonic()
    with open(log, "wb") as err:
        # the default SIGINT action in the child: a test suite started in the background ('&', as CI
        # scripts may) ignores SIGINT, the child would inherit that, and Python would then not turn
        # Ctrl-C into KeyboardInterrupt
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        killed = False
        try:
            while proc.poll() is None:
                if kill_when is not None and kill_when():
                    proc.send_signal(sig)
                    killed = True
                    break
                if time.monotonic() - start > timeout:
                    proc.kill()
                    raise AssertionError(f"{cmd} ran longer than {timeout} s")
                time.sleep(0.002)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stopped = killed and (sig != signal.SIGKILL or proc.returncode == -signal.SIGKILL)
    return RunResult(proc.returncode, log.read_text(errors="replace"), stopped, time.monotonic() - start)


def _normalise_json(value):
    if isinstance(value, dict):
        return {k: _normalise_json(v) for k, v in value.items()
                if k not in VOLATILE_KEYS and not re.search(r"time|date|started|finished", k, re.I)}
    if isinstance(value, list):
        return [_normalise_json(v) for v in value]
    return value


def comparable_outputs(out: Path) -> dict[str, object]:
    """Every TSV / NIfTI / JSON under ``out`` (no log/<run-id>/ folders, no HTML), normalised."""
    result: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(out)
        if _is_temp(path):  # checked separately
            continue
        if "log" in rel.parts[:-1] and RUN_ID_DIR.match(rel.parts[rel.parts.index("log") + 1]):
            continue
        name = path.name
        if name.endswith(".tsv"):
            result[str(rel)] = path.read_bytes()
        elif name.endswith(".json"):
            result[str(rel)] = _normalise_json(json.loads(path.read_text()))
        elif name.endswith(".nii.gz"):
            result[str(rel)] = gzip.decompress(path.read_bytes())
        elif name.endswith(".nii"):
            result[str(rel)] = path.read_bytes()
    return result


def temp_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if _is_temp(p))


def assert_no_torn_files(out: Path) -> None:
    """Every TSV / JSON parses and every NIfTI loads completely."""
    import nibabel as nib
    import pandas as pd

    for path in out.rglob("*"):
        if not path.is_file():
            continue
        if path.name.endswith(".json"):
            json.loads(path.read_text())
        elif path.name.endswith(".tsv"):
            pd.read_csv(path, sep="\t")
        elif path.name.endswith((".nii", ".nii.gz")):
            nib.load(path).get_fdata()


def assert_same_outputs(expected: dict[str, object], actual: dict[str, object]) -> None:
    assert sorted(actual) == sorted(expected), (set(actual) ^ set(expected))
    different = [key for key in expected if actual[key] != expected[key]]
    assert not different, f"outputs differ from an uninterrupted run: {different}"


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-subject, 2-run demo dataset and the fast spec."""
    from bids_dnn.workflows.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("reliability")
    bids = make_demo_dataset(root / "bids", n_subjects=2, n_runs=2, seed=0)
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    return bids, spec


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and ".tmp" in path.name


def _kill_points(out: Path) -> dict[str, Callable[[int, set[str]], bool]]:
    """Predicates ``(start_ns, temp_files_before) -> bool``: kill now? Only events of the current run count."""
    func, figures = out / "sub-01" / "func", out / "sub-01" / "figures"

    def new_file(folder: Path, pattern: str, start_ns: int) -> bool:
        if not folder.is_dir():
            return False
        for path in folder.glob(pattern):
            try:
                if path.stat().st_mtime_ns >= start_ns and not _is_temp(path):
                    return True
            except FileNotFoundError:  # renamed meanwhile
                continue
        return False

    def new_temp(start_ns: int, before: set[str]) -> bool:
        return any(_is_temp(p) and str(p) not in before
                   for folder in (func, figures) if folder.is_dir() for p in folder.iterdir())

    return {
        "after_features": lambda start_ns, before: (out / FEATURES).is_file(),
        "during_rdm_tables": lambda start_ns, before: new_file(func, "*_relmat.tsv", start_ns),
        "mid_atomic_write": new_temp,
        "during_report": lambda start_ns, before: new_file(figures, "*", start_ns),
    }


KILL_POINTS = tuple(_kill_points(Path(".")))


@dataclass
class FaultRuns:
    baseline: RunResult
    baseline_outputs: dict[str, object]
    killed: dict[str, RunResult] = field(default_factory=dict)
    final: RunResult | None = None
    outputs: dict[str, object] = field(default_factory=dict)
    temp_after_kills: list[str] = field(default_factory=list)
    temp_after_rerun: list[str] = field(default_factory=list)
    concurrent: dict | None = None


@pytest.fixture(scope="module")
def fault_runs(small_demo: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> FaultRuns:
    """An uninterrupted run, and in parallel one folder that is killed at every point in turn, then rerun.

    The chain (kill after features; rerun killed while RDM tables are written; rerun killed in
    the middle of an atomic write; rerun killed while the report is drawn; final rerun) keeps
    the number of processes (each pays ~5 s of imports) small.
    """
    bids, spec = small_demo
    root = tmp_path_factory.mktemp("fault")

    def baseline() -> tuple[RunResult, dict[str, object]]:
        out = root / "uninterrupted"
        result = run_bids_dnn(_command(bids, out, "participant", spec, ("01",)), root / "uninterrupted.log")
        return result, comparable_outputs(out)

    def chain() -> tuple[dict[str, RunResult], list[str], RunResult, dict[str, object], list[str]]:
        out = root / "killed"
        cmd = _command(bids, out, "participant", spec, ("01",))
        points = _kill_points(out)
        killed = {}
        for name in KILL_POINTS:
            before = {str(p) for p in out.rglob("*") if _is_temp(p)} if out.exists() else set()
            start_ns = time.time_ns()
            killed[name] = run_bids_dnn(cmd, root / f"killed-{name}.log",
                                        lambda: points[name](start_ns, before))
        left = temp_files(out)
        final = run_bids_dnn(cmd, root / "rerun.log")
        return killed, left, final, comparable_outputs(out), temp_files(out)

    # the concurrency scenario runs meanwhile (its own folder), to use both cores while the chain runs
    with ThreadPoolExecutor(max_workers=2) as pool:
        chain_future = pool.submit(chain)
        base, base_outputs = baseline()
        concurrent = run_concurrency_scenario(bids, spec, root / "concurrent")
        killed, left, final, outputs, temp_after = chain_future.result()
    runs = FaultRuns(base, base_outputs, killed, final, outputs, left, temp_after)
    runs.concurrent = concurrent
    return runs


# ---------------------------------------------------------------------------------------
# fault injection
# ---------------------------------------------------------------------------------------


def test_uninterrupted_run_succeeds(fault_runs: FaultRuns) -> None:
    assert fault_runs.baseline.returncode == 0, fault_runs.baseline.stderr
    assert any(key.endswith("_relmat.tsv") for key in fault_runs.baseline_outputs)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_point(fault_runs: FaultRuns, point: str, record_property) -> None:
    """Each kill point was hit (recorded as a property); a run that ended first must have succeeded."""
    run = fault_runs.killed[point]
    record_property("kill_point_hit", run.killed)
    sys.stderr.write(f"kill point {point}: {'hit' if run.killed else 'not reached (run ended first)'}\n")
    if not run.killed:
        assert run.returncode == 0, run.stderr
    if point in ("after_features", "during_rdm_tables", "during_report"):
        assert run.killed, f"kill point {point!r} was never reached before the run ended"


def test_rerun_after_sigkills_gives_identical_outputs(fault_runs: FaultRuns) -> None:
    assert fault_runs.final.returncode == 0, fault_runs.final.stderr
    assert_same_outputs(fault_runs.baseline_outputs, fault_runs.outputs)


def test_no_temporary_files_after_rerun(fault_runs: FaultRuns) -> None:
    """Temp files of killed writers must not survive a successful rerun."""
    assert not fault_runs.temp_after_rerun, (f"temporary files left after the rerun: {fault_runs.temp_after_rerun} "
                                             f"(after the kills: {fault_runs.temp_after_kills})")


# ---------------------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------------------


def run_concurrency_scenario(bids: Path, spec: Path, folder: Path) -> dict:
    """sub-01 and sub-02 participant processes plus an early group process on one output folder."""
    folder.mkdir(parents=True)
    out = folder / "out"
    procs, logs = {}, {}
    for name, cmd in (("sub-01", _command(bids, out, "participant", spec, ("01",))),
                      ("sub-02", _command(bids, out, "participant", spec, ("02",))),
                      ("group", _command(bids, out, "group", spec))):
        logs[name] = folder / f"{name}.log"
        with open(logs[name], "wb") as err:
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
    features_mtime = None
    group_ended_before_participants = None
    deadline = time.monotonic() + 240
    while any(procs[n].poll() is None for n in ("sub-01", "sub-02")) and time.monotonic() < deadline:
        if group_ended_before_participants is None and procs["group"].poll() is not None:
            group_ended_before_participants = True
        if features_mtime is None and any(procs[n].poll() is not None for n in ("sub-01", "sub-02")):
            if (out / FEATURES).is_file():
                features_mtime = (out / FEATURES).stat().st_mtime_ns
        time.sleep(0.01)
    for proc in procs.values():
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    result = {
        "codes": {name: proc.returncode for name, proc in procs.items()},
        "text": {name: path.read_text(errors="replace") for name, path in logs.items()},
        "features_mtime_after_first": features_mtime,
        "features_mtime_end": (out / FEATURES).stat().st_mtime_ns if (out / FEATURES).is_file() else None,
        "group_ended_first": bool(group_ended_before_participants),
        "group_rerun": None,
    }
    if result["codes"]["group"] != 0:
        result["group_rerun"] = run_bids_dnn(_command(bids, out, "group", spec), folder / "group2.log")
    result["temp_files"] = temp_files(out)
    try:
        assert_no_torn_files(out)
        result["torn"] = None
    except Exception as exc:  # noqa: BLE001 - reported by the test
        result["torn"] = repr(exc)
    result["status_complete"] = [
        json.loads((out / sub / "log" / "task-shapes_status.json").read_text()).get("complete")
        if (out / sub / "log" / "task-shapes_status.json").is_file() else None for sub in ("sub-01", "sub-02")]
    result["group_tables"] = sorted(p.name for p in (out / "group").glob("*_rsa.tsv")) if (out / "group").is_dir() else []
    return result


def test_two_participants_and_an_early_group_on_one_folder(fault_runs: FaultRuns) -> None:
    """Participants succeed; the early group refuses (66, naming the missing participants) or, if it
    only started after both finished, succeeds; features are extracted once; no torn or temp files."""
    run = fault_runs.concurrent
    codes, text = run["codes"], run["text"]
    assert codes["sub-01"] == 0, text["sub-01"]
    assert codes["sub-02"] == 0, text["sub-02"]
    if codes["group"] == 66:
        assert "missing or incomplete for" in text["group"], text["group"]
        assert re.search(r"sub-0[12]", text["group"]), text["group"]
        assert run["group_rerun"].returncode == 0, run["group_rerun"].stderr
    else:  # acceptable only when the group saw both participants finished
        assert codes["group"] == 0, text["group"]
        assert not run["group_ended_first"], "the group succeeded before the participants had finished"
    assert sum(t.count("extracting") for t in text.values()) == 1, text
    if run["features_mtime_after_first"] is not None:
        assert run["features_mtime_end"] == run["features_mtime_after_first"]
    assert not run["temp_files"], run["temp_files"]
    assert run["torn"] is None, run["torn"]
    assert run["status_complete"] == [True, True]
    assert run["group_tables"]


@pytest.mark.parametrize("sig, code, message", [
    (signal.SIGTERM, 143, "terminated (SIGTERM, e.g. a job's time limit or 'docker stop'); finished outputs are kept"),
    (signal.SIGINT, 130, "interrupted (Ctrl-C / SIGINT); finished outputs are kept"),
], ids=["sigterm", "sigint"])
def test_signal_ends_with_its_code_and_a_rerun_resumes(fault_runs: FaultRuns, small_demo: tuple[Path, Path],
                                                       tmp_path: Path, sig: int, code: int, message: str) -> None:
    """SIGTERM / Ctrl-C while the RDM tables are written: exit 143 / 130 with one message, no
    temporary or torn file; the same command then completes with the uninterrupted run's outputs."""
    bids, spec = small_demo
    out = tmp_path / "out"
    cmd = _command(bids, out, "participant", spec, ("01",))
    start_ns = time.time_ns()
    stopped = run_bids_dnn(cmd, tmp_path / "stopped.log", sig=sig,
                           kill_when=lambda: _kill_points(out)["during_rdm_tables"](start_ns, set()))
    assert stopped.killed and stopped.returncode == code, stopped.stderr
    text = " ".join(stopped.stderr.split())
    assert text.count(message) == 1 and "rerun the same command" in text and "Traceback" not in text, text
    assert temp_files(out) == []
    assert_no_torn_files(out)
    rerun = run_bids_dnn(cmd, tmp_path / "rerun.log")
    assert rerun.returncode == 0, rerun.stderr
    assert_same_outputs(fault_runs.baseline_outputs, comparable_outputs(out))
