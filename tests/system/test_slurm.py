"""``bids_dnn slurm``: the generated scripts, and a real single-node SLURM cluster running them.

The unmarked tests check the scripts without SLURM. The ``slurm``-marked tests install Debian's
``slurm-wlm`` and ``munge`` (apt-get, when missing; ``BIDS_DNN_TEST_SLURM_INSTALL=0`` turns the
installation off), start munged, slurmctld and slurmd on localhost from a configuration written
into a temporary folder (own ports, socket, state and spool folders: nothing of the system's
SLURM or munge is used or changed), submit the demo dataset as a job array plus the dependent
group job, and stop every daemon and job again (fixture finaliser, also after a failure). They
skip, with the reason, when not root, when the packages cannot be installed or when the daemons
do not start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from bids_dnn.cli.main import main

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "munged")
JOB_TIMEOUT_S = 240
RUN_ID_DIR = re.compile(r"(^|/)log/\d{8}-\d{6}-[0-9a-f]+/")


# ---------------------------------------------------------------------------------------
# The scripts (no SLURM needed)
# ---------------------------------------------------------------------------------------


def _write(argv: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["slurm", *[str(a) for a in argv]])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_scripts_plain_environment(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(demo_dataset.parent)
    scripts = tmp_path / "scripts"
    code, text = _write([demo_dataset, tmp_path / "out", "--script-dir", scripts, "--cpus-per-task", "3",
                         "--max-parallel", "2", "--time", "01:00:00", "--mem", "4G", "--partition", "short",
                         "--setup", "module load foo", "--sbatch-option=--constraint=avx2",
                         "--", "--spec", "bids/code/spec.yaml", "--task", "shapes"], capsys)
    assert code == 0, text
    assert (scripts / "participants.txt").read_text() == "01\n02\n03\n04\n"
    participant = (scripts / "participant.sbatch").read_text()
    group = (scripts / "group.sbatch").read_text()
    submit = (scripts / "submit.sh").read_text()
    assert "#SBATCH --array=1-4%2" in participant
    for line in ("#SBATCH --cpus-per-task=3", "#SBATCH --time=01:00:00", "#SBATCH --mem=4G",
                 "#SBATCH --partition=short", "#SBATCH --constraint=avx2", "module load foo",
                 'export OMP_NUM_THREADS="$threads"'):
        assert line in participant and line in group, line
    assert f"#SBATCH --output={scripts}/logs/participant_%A_%a.log" in participant
    assert f"#SBATCH --output={scripts}/logs/group_%j.log" in group
    # this interpreter, absolute paths (the relative --spec resolved against the current folder)
    assert f"{sys.executable} -m bids_dnn {demo_dataset} {tmp_path / 'out'} participant" in participant
    assert f"--spec {demo_dataset / 'code' / 'spec.yaml'} --task shapes" in participant
    assert '--participant-label "$label"' in participant
    assert '--participant-label "@$script_dir/participants.txt"' in group
    assert "#SBATCH --kill-on-invalid-dep=yes" in group
    assert "apptainer" not in participant and "--gres" not in participant
    assert '--dependency="afterok:$array_job"' in submit and '--array="$array"' in submit
    assert 'array="${1:-1-4%2}"' in submit
    for name in ("participant.sbatch", "group.sbatch", "submit.sh"):
        assert os.access(scripts / name, os.X_OK)
        check = subprocess.run(["bash", "-n", str(scripts / name)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    assert "submit.sh i" in text and "sbatch --array=i" in text


def test_scripts_container_and_gpu(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "images" / "bids_dnn.sif"
    image.parent.mkdir()
    image.write_bytes(b"not really an image")
    spec = tmp_path / "specs" / "spec.yaml"
    spec.parent.mkdir()
    shutil.copy(demo_dataset / "code" / "spec.yaml", spec)
    out, work = tmp_path / "out", tmp_path / "work"
    code, text = _write([demo_dataset, out, "--container", image, "--gpus", "1", "--participant-label", "02",
                         "sub-01", "--bind", "/scratch", "--", "--spec", spec, "-w", work], capsys)
    assert code == 0, text
    scripts = out / "code" / "slurm"
    assert (scripts / "participants.txt").read_text() == "02\n01\n"
    participant = (scripts / "participant.sbatch").read_text()
    group = (scripts / "group.sbatch").read_text()
    call = (f'apptainer exec --cleanenv --nv --env "OMP_NUM_THREADS=$threads,MKL_NUM_THREADS=$threads,'
            f'OPENBLAS_NUM_THREADS=$threads" -B {demo_dataset}:{demo_dataset}:ro -B {out}:{out} '
            f"-B {spec}:{spec}:ro -B {work}:{work} -B /scratch {image} bids_dnn {demo_dataset} {out} participant")
    assert call in participant
    assert "#SBATCH --gres=gpu:1" in participant and "--device cuda" in participant
    assert "--nv" not in group and "--gres" not in group and "--device" not in group
    assert "apptainer exec --cleanenv --env" in group
    assert work.is_dir()  # a bind source must exist
    assert not any(p.name == "slurm" for p in demo_dataset.rglob("*"))  # nothing written into the input


def test_participants_tsv_order_and_missing_folders(demo_copy: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (demo_copy / "participants.tsv").write_text("participant_id\tage\nsub-03\t30\nsub-01\t22\nsub-09\t40\n")
    code, text = _write([demo_copy, tmp_path / "out", "--", "--spec", demo_copy / "code" / "spec.yaml"], capsys)
    assert code == 0, text
    assert (tmp_path / "out" / "code" / "slurm" / "participants.txt").read_text() == "03\n01\n"
    assert "sub-09" in text  # reported as skipped
    (demo_copy / "participants.tsv").unlink()
    code, text = _write([demo_copy, tmp_path / "out2"], capsys)
    assert code == 0, text
    assert (tmp_path / "out2" / "code" / "slurm" / "participants.txt").read_text() == "01\n02\n03\n04\n"


@pytest.mark.parametrize("argv, exit_code, message", [
    (["--participant-label", "sub-99"], 18, "no folder for sub-99"),
    (["--", "--participant-label", "01"], 64, "goes before '--'"),
    (["--", "--no-such-option"], 64, "unrecognized arguments"),
    (["--cpus-per-task", "0"], 64, "must be at least 1"),
    (["--container", "/nonexistent/bids_dnn.sif"], 66, "container image not found"),
])
def test_refusals(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                  exit_code: int, message: str) -> None:
    code, text = _write([demo_dataset, tmp_path / "out", *argv], capsys)
    assert code == exit_code, text
    assert message in text
    assert not (tmp_path / "out").exists()


def test_output_inside_input_refused(demo_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Inside BIDS_DIR only BIDS_DIR/derivatives/<new folder> is allowed (fMRIPrep's convention)."""
    code, text = _write([demo_dataset, demo_dataset / "sub-01" / "out"], capsys)
    assert code == 64 and "inside the input dataset" in text
    assert not (demo_dataset / "sub-01" / "out").exists()


def test_submit_without_sbatch_keeps_the_scripts(demo_dataset: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, text = _write([demo_dataset, tmp_path / "out", "--submit"], capsys)
    assert code == 1 and "sbatch not found" in text and "submit.sh" in text
    assert (tmp_path / "out" / "code" / "slurm" / "participant.sbatch").is_file()


def test_failed_task_reports_exit_code_and_rerun_hint(demo_dataset: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The task script outside SLURM, with a stand-in for bids_dnn that fails like a missing input."""
    fake = tmp_path / "fake_bids_dnn"
    fake.write_text('#!/bin/bash\necho "args: $*"\necho "error: no preprocessed BOLD" >&2\nexit 66\n')
    fake.chmod(0o755)
    scripts = tmp_path / "scripts"
    code, text = _write([demo_dataset, tmp_path / "out", "--script-dir", scripts, "--command", fake], capsys)
    assert code == 0, text
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_JOB_ID="77", SLURM_JOB_ID="80", SLURM_CPUS_PER_TASK="2")
    result = subprocess.run(["bash", str(scripts / "participant.sbatch")], env=env, capture_output=True, text=True)
    assert result.returncode == 66
    assert "--participant-label 03 --no-progress" in result.stdout
    assert "threads" not in result.stdout and "2 thread(s)" in result.stdout
    assert f"rerun it alone: bash {scripts}/submit.sh 3" in result.stderr
    status = (scripts / "logs" / "participant-3.status").read_text().rstrip("\n").split("\t")
    assert status == ["3", "sub-03", "66", "80", f"{scripts}/logs/participant_77_3.log"]


# ---------------------------------------------------------------------------------------
# A single-node SLURM cluster on localhost
# ---------------------------------------------------------------------------------------


def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def _ensure_slurm_packages() -> None:
    missing = [b for b in SLURM_BINARIES if _which(b) is None]
    if not missing:
        return
    if os.environ.get("BIDS_DNN_TEST_SLURM_INSTALL", "1") == "0":
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing) and BIDS_DNN_TEST_SLURM_INSTALL=0")
    if _which("apt-get") is None:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing) and no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    # keep the packages' init scripts from starting the system's munge / slurm services
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    try:
        if own_policy:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=300)
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"could not install slurm-wlm and munge with apt-get: {exc}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    missing = [b for b in SLURM_BINARIES if _which(b) is None]
    if result.returncode != 0 or missing:
        pytest.skip("could not install slurm-wlm and munge with apt-get (exit code "
                    f"{result.returncode}): {(result.stderr or result.stdout)[-800:]}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _terminate(pids: list[int], grace_s: float = 10.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class LocalSlurm:
    """munged + slurmctld + slurmd on localhost, everything under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.socket = root / "munge" / "munge.socket"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_"))}
        base["PATH"] = SEARCH_PATH
        self.env = {**base, "SLURM_CONF": str(self.conf)}

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.root / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.rglob("*.log")):
            parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def start(self) -> None:
        root = self.root
        root.chmod(0o755)
        for folder in ("munge", "state", "spool", "log"):
            (root / folder).mkdir(mode=0o755)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        subprocess.run([_which("munged"), "--force", f"--key-file={key}", f"--socket={self.socket}",
                        f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
                        f"--seed-file={root / 'munge' / 'munged.seed'}"],
                       env=self.env, check=True, capture_output=True, timeout=30)
        self._wait(lambda: self.socket.exists(), 15, "munged did not create its socket")
        node = subprocess.run([_which("slurmd"), "-C"], env=self.env, capture_output=True, text=True, timeout=30,
                              check=True).stdout.splitlines()[0]
        if not node.startswith("NodeName="):
            raise RuntimeError(f"unexpected 'slurmd -C' output: {node}")
        self.conf.write_text("\n".join([
            "ClusterName=bidsdnntest",
            f"SlurmctldHost={node.split()[0].split('=', 1)[1]}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=900",
            "KillWait=5",
            "InactiveLimit=0",
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_which(daemon)], env=self.env, check=True, capture_output=True, timeout=60)
        self._wait(lambda: self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip() == "idle", 60,
                   "the node did not become idle")

    def _wait(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.3)
        raise RuntimeError(what)

    def run(self, argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def wait_for_jobs(self, job_ids: list[str], timeout_s: float = JOB_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        queued = ""
        while time.monotonic() < deadline:
            result = self.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r"], check=False)
            queued = result.stdout.strip()
            if not queued:
                return
            time.sleep(1)
        raise AssertionError(f"jobs still queued after {timeout_s} s:\n{queued}\n{self.logs()}")

    def job_states(self, job_id: str) -> dict[str, tuple[str, str]]:
        """Task id (or job id) -> (JobState, ExitCode) of a job or of every task of an array."""
        text = self.run(["scontrol", "-o", "show", "job", job_id]).stdout
        states = {}
        for line in text.splitlines():
            fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
            states[fields.get("ArrayTaskId", fields["JobId"])] = (fields["JobState"], fields["ExitCode"])
        return states

    def stop(self) -> None:
        if self.conf.exists() and _which("squeue"):
            try:
                jobs = self.run(["squeue", "-h", "-o", "%A"], check=False, timeout=20).stdout.split()
                if jobs:
                    self.run(["scancel", *sorted(set(jobs))], check=False, timeout=20)
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and self.run(["squeue", "-h"], check=False,
                                                                   timeout=20).stdout.strip():
                        time.sleep(0.5)
            except (OSError, subprocess.SubprocessError):
                pass
        daemons = [p for p in (self._pid("slurmd.pid"), self._pid("slurmctld.pid")) if p]
        _terminate(daemons)
        # job steps and scripts of this cluster that outlived slurmd carry its SLURM_CONF
        marker = f"SLURM_CONF={self.conf}".encode()
        leftovers = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if marker in (proc / "environ").read_bytes().split(b"\0"):
                        leftovers.append(int(proc.name))
                except OSError:
                    continue
        _terminate(leftovers)
        munged = self._pid("munged.pid")
        if munged:
            _terminate([munged])


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[LocalSlurm]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the SLURM integration test needs Linux")
    if os.geteuid() != 0:
        pytest.skip("the SLURM integration test needs root (apt-get, munged and slurmd run as root)")
    _ensure_slurm_packages()
    root = Path(tempfile.mkdtemp(prefix="bdslurm-", dir="/tmp"))  # short: the munge socket path
    cluster = LocalSlurm(root)
    try:
        try:
            cluster.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
            pytest.skip(f"could not start munged/slurmctld/slurmd: {exc} {stderr[-400:]}\n{cluster.logs()[-1500:]}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _submit(cluster: LocalSlurm, argv: list) -> tuple[str, str, str]:
    """``bids_dnn slurm ... --submit`` in a subprocess; returns (array job, group job, output)."""
    result = cluster.run([sys.executable, "-m", "bids_dnn", "slurm", "--submit", *[str(a) for a in argv]],
                         check=False, timeout=120)
    return (*_job_ids(result.stdout + result.stderr, result.returncode), result.stdout)


def _job_ids(text: str, returncode: int = 0) -> tuple[str, str]:
    array = re.search(r"participant job array: (\d+)", text)
    group = re.search(r"group job: (\d+)", text)
    assert returncode == 0 and array and group, text
    return array[1], group[1]


def _extraction_lines(logs: list[Path]) -> list[str]:
    return [f"{log.name}: {line.strip()}" for log in logs for line in log.read_text().splitlines()
            if re.search(r"\bextracting\b.*\blayers?\b", line)]


def _normalised(relative: str) -> str:
    return RUN_ID_DIR.sub(r"\1log/<run>/", relative)


def _tree(root: Path) -> dict[str, Path]:
    return {_normalised(str(p.relative_to(root))): p for p in sorted(root.rglob("*")) if p.is_file()}


#: relative tolerance for numbers computed with BLAS under different thread counts (see compare_outputs):
#: the encoding models are fitted in float32 (torch), whose sums over another thread split differ at
#: ~1e-7 (seen: group mean R2 0.0471401268 vs 0.04714012561), and a group t of a voxel whose values
#: barely vary across subjects amplifies that (seen: max-T threshold 202.6306 vs 202.6298, 4e-6);
#: float64 results agree to ~1e-15
NUMERIC_RTOL = 1e-4
#: and the absolute one for values near 0 (float32 rounding of a t near 0: seen 3e-8)
NUMERIC_ATOL = 1e-6


def _compare_json(a: object, b: object, where: str) -> None:
    """Same structure and text; numbers equal to :data:`NUMERIC_RTOL`."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            _compare_json(a[key], b[key], f"{where}: {key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _compare_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        np.testing.assert_allclose(float(a), float(b), rtol=NUMERIC_RTOL, atol=NUMERIC_ATOL, err_msg=where)
    else:
        assert a == b, where


def _compare_tsv(a: Path, b: Path) -> None:
    """Same columns, same text, numbers equal to :data:`NUMERIC_RTOL`."""
    import pandas as pd

    ta, tb = (pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False) for p in (a, b))
    assert list(ta.columns) == list(tb.columns) and ta.shape == tb.shape, a.name
    for column in ta.columns:
        na, nb = (pd.to_numeric(t[column].replace("n/a", "nan"), errors="coerce") for t in (ta, tb))
        numeric = na.notna() | (ta[column] == "n/a")
        if numeric.all() and na.notna().any():
            np.testing.assert_allclose(na.to_numpy(float), nb.to_numpy(float), rtol=NUMERIC_RTOL, atol=NUMERIC_ATOL,
                                       err_msg=f"{a.name}: {column}")
        else:
            assert ta[column].tolist() == tb[column].tolist(), f"{a.name}: {column}"


def _compare_h5(a: Path, b: Path) -> None:
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert {k: str(v) for k, v in fa.attrs.items()} == {k: str(v) for k, v in fb.attrs.items()}
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert names_a == names_b
        for name in names_a:
            if isinstance(fa[name], h5py.Dataset):
                va, vb = fa[name][()], fb[name][()]
                if np.asarray(va).dtype.kind == "f":  # activations: another thread split of the convolutions
                    np.testing.assert_allclose(va, vb, rtol=NUMERIC_RTOL, atol=NUMERIC_ATOL, err_msg=name)
                else:
                    np.testing.assert_array_equal(va, vb, err_msg=name)
                assert dict(fa[name].attrs.items()).keys() == dict(fb[name].attrs.items()).keys()


def _compare_nifti(a: Path, b: Path) -> None:
    import nibabel as nib

    ia, ib = nib.load(str(a)), nib.load(str(b))
    np.testing.assert_allclose(np.asarray(ia.dataobj), np.asarray(ib.dataobj), rtol=NUMERIC_RTOL, atol=NUMERIC_ATOL,
                               err_msg=a.name)
    np.testing.assert_array_equal(ia.affine, ib.affine)
    assert ia.header.binaryblock == ib.header.binaryblock


def compare_outputs(serial: Path, parallel: Path) -> list[str]:
    """Assert that two output folders hold the same results; returns what was not compared byte-wise.

    Legitimate differences (found by diffing a serial and an array run): ``log/<run id>/`` folders
    are named by start time; ``command.txt`` / ``provenance.json`` hold the run id and the command
    line (other output folder), ``bids_dnn.log`` the time of every line; ``*_status.json`` the run
    id and the elapsed seconds (and the group's stage keys the modification times of the
    participant maps); the HTML
    reports embed all three; ``dataset_description.json`` links the raw dataset by a path relative
    to the output folder. Everything else is the same: seeds depend on the subject only, and the
    features come from one extraction. Figures are compared byte for byte; text in TSV, JSON and
    HDF5 exactly; numbers in TSV, JSON and HDF5 and NIfTI values to a relative 1e-4 (absolute 1e-6)
    (:data:`NUMERIC_RTOL`): array tasks run with ``--cpus-per-task`` BLAS threads and the serial run
    with the machine's, and a BLAS reduction split over another number of threads may round the
    last bit differently (seen: a group encoding summary differing in its 10th digit).
    """
    tree_a, tree_b = _tree(serial), _tree(parallel)
    assert sorted(tree_a) == sorted(tree_b)
    loose = []
    for relative, path_a in tree_a.items():
        path_b = tree_b[relative]
        name = path_a.name
        if name.endswith(".html") or name in ("command.txt", "provenance.json", "bids_dnn.log"):
            loose.append(relative)
        elif name.endswith("_status.json"):
            drop = ("run_id", "seconds")
            a, b = json.loads(path_a.read_text()), json.loads(path_b.read_text())
            if relative.startswith("group"):  # group-map keys hold the participant maps' mtimes
                a, b = ({k: v["outputs"] for k, v in x["stages"].items()} for x in (a, b))
            else:  # checksums of outputs whose numbers may differ in the last bit (see NUMERIC_RTOL)
                for status in (a, b):
                    for stage in status.get("stages", {}).values():
                        stage.pop("checksums", None)
            assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
            loose.append(relative)
        elif relative == "dataset_description.json":
            a, b = json.loads(path_a.read_text()), json.loads(path_b.read_text())
            raw_a, raw_b = a["DatasetLinks"].pop("raw"), b["DatasetLinks"].pop("raw")
            assert (serial / raw_a).resolve() == (parallel / raw_b).resolve()
            assert a == b
            loose.append(relative)
        elif name.endswith(".h5"):
            _compare_h5(path_a, path_b)
        elif name.endswith((".nii", ".nii.gz")):
            _compare_nifti(path_a, path_b)
        elif name.endswith(".tsv"):
            _compare_tsv(path_a, path_b)
        elif name.endswith(".json"):  # sidecars hold statistics of the maps (thresholds, maxima)
            _compare_json(json.loads(path_a.read_text()), json.loads(path_b.read_text()), relative)
        else:  # figures, root files, lock files
            assert path_a.read_bytes() == path_b.read_bytes(), relative
    return loose


@pytest.mark.slurm
def test_slurm_array_matches_serial_run(slurm_cluster: LocalSlurm, demo_dataset: Path, demo_outputs: Path,
                                        tmp_path: Path) -> None:
    out, scripts = tmp_path / "out", tmp_path / "slurm"
    array_job, group_job, text = _submit(slurm_cluster, [
        demo_dataset, out, "--script-dir", scripts, "--cpus-per-task", "1", "--mem", "1G", "--time", "00:10:00",
        "--", "--spec", demo_dataset / "code" / "spec.yaml"])
    slurm_cluster.wait_for_jobs([array_job, group_job])
    tasks = slurm_cluster.job_states(array_job)
    logs = sorted((scripts / "logs").glob(f"participant_{array_job}_*.log"))
    detail = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in logs)
    assert tasks == {str(i): ("COMPLETED", "0:0") for i in range(1, 5)}, f"{tasks}\n{detail}"
    assert slurm_cluster.job_states(group_job) == {group_job: ("COMPLETED", "0:0")}, \
        (scripts / "logs" / f"group_{group_job}.log").read_text()
    # one log and one status line per task
    assert [p.name for p in logs] == [f"participant_{array_job}_{i}.log" for i in range(1, 5)]
    for i, label in enumerate(["01", "02", "03", "04"], start=1):
        status = (scripts / "logs" / f"participant-{i}.status").read_text().split("\t")
        assert status[:3] == [str(i), f"sub-{label}", "0"]
        assert f"sub-{label}: exit code 0" in logs[i - 1].read_text()
    assert "exit code 0" in (scripts / "logs" / f"group_{group_job}.log").read_text()
    # the 4 tasks shared one feature file: exactly one task extracted, the others waited and reused it
    extracted = _extraction_lines(logs)
    assert len(extracted) == 1, extracted
    compare_outputs(demo_outputs, out)


@pytest.mark.slurm
def test_slurm_failed_task_is_reported_and_resubmitted_alone(slurm_cluster: LocalSlurm, demo_copy: Path,
                                                             tmp_path: Path) -> None:
    import yaml

    # failure handling does not depend on the analyses: ROI RSA only keeps the tasks short
    spec = yaml.safe_load((demo_copy / "code" / "spec.yaml").read_text())
    spec["analyses"] = {"rsa": {"comparison": "spearman", "permutations": 100}}
    spec["statistics"] = {"bootstrap": 100, "seed": 42}
    spec_path = tmp_path / "rsa_only.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    bold = next((demo_copy / "derivatives" / "fmriprep" / "sub-02").rglob("*_run-1_*_desc-preproc_bold.nii.gz"))
    held = tmp_path / bold.name
    shutil.move(bold, held)
    out, scripts = tmp_path / "out", tmp_path / "slurm"
    array_job, group_job, _ = _submit(slurm_cluster, [
        demo_copy, out, "--script-dir", scripts, "--participant-label", "01", "02", "--cpus-per-task", "1",
        "--", "--spec", spec_path])
    slurm_cluster.wait_for_jobs([array_job, group_job])
    tasks = slurm_cluster.job_states(array_job)
    assert tasks == {"1": ("COMPLETED", "0:0"), "2": ("FAILED", "66:0")}, tasks
    assert slurm_cluster.job_states(group_job)[group_job][0] == "CANCELLED"  # afterok never satisfied
    assert not (out / "group").exists()
    log = (scripts / "logs" / f"participant_{array_job}_2.log").read_text()
    assert "no preprocessed BOLD for sub-02" in log and "exit code 66" in log
    assert f"rerun it alone: bash {scripts}/submit.sh 2" in log
    status = (scripts / "logs" / "participant-2.status").read_text().rstrip("\n").split("\t")
    assert status == ["2", "sub-02", "66", status[3], f"{scripts}/logs/participant_{array_job}_2.log"]

    # fix the input, rerun task 2 alone, then the group level
    shutil.move(held, bold)
    result = slurm_cluster.run(["bash", str(scripts / "submit.sh"), "2"], check=False)
    rerun_job, group_job = _job_ids(result.stdout + result.stderr, result.returncode)
    slurm_cluster.wait_for_jobs([rerun_job, group_job])
    assert slurm_cluster.job_states(rerun_job) == {"2": ("COMPLETED", "0:0")}
    assert slurm_cluster.job_states(group_job) == {group_job: ("COMPLETED", "0:0")}, \
        (scripts / "logs" / f"group_{group_job}.log").read_text()
    assert (scripts / "logs" / "participant-2.status").read_text().split("\t")[2] == "0"
    assert len(list((scripts / "logs").glob(f"participant_{array_job}_*.log"))) == 2  # first attempt kept
    summary = next((out / "group").glob("*_desc-summary_rsa.tsv"))
    assert set(json.loads(summary.with_suffix(".json").read_text())["Subjects"]) == {"01", "02"}
