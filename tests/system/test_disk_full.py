"""A full output file system (real ENOSPC on a small tmpfs): one clear message, exit 1, no
partial file, and the same command completes once there is space, with the outputs of an
uninterrupted run.

The tmpfs is mounted in a private user + mount namespace (``unshare``); the test skips where
the kernel or the container does not allow that.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bids_dnn.cli.main import main
from tests._specs import SMALL_SPEC

#: tmpfs sizes: too small for the feature file; features fit but not the subject's outputs
SIZES = {"features": "2m", "subject": "6m"}

CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import h5py, nibabel, pandas
    out = Path(sys.argv[1])
    files, broken = [], []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = str(path.relative_to(out))
        files.append(rel)
        try:
            if path.name.endswith(".h5"):
                h5py.File(path, "r").close()
            elif path.name.endswith(".nii.gz"):
                nibabel.load(path).get_fdata()
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".tsv":
                pandas.read_csv(path, sep="\\t")
        except Exception as exc:
            broken.append(f"{rel}: {exc}")
    print(json.dumps({"files": files, "broken": broken}))
""")


def _can_mount_tmpfs(folder: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    folder.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {folder}"], capture_output=True)
    return probe.returncode == 0


def _run_on_small_disk(bids: Path, out: Path, spec: Path, size: str, logs: Path) -> dict:
    """In a private namespace: mount a ``size`` tmpfs on ``out``, run the participant level, check
    every file, enlarge the tmpfs, rerun, check again and copy the outputs to ``logs/final``."""
    command = [sys.executable, "-m", "bids_dnn", str(bids), str(out), "participant", "--spec", str(spec),
               "--participant-label", "01", "--no-progress"]
    check = logs / "check.py"
    check.write_text(CHECK)
    script = f"""
        set -u
        mount -t tmpfs -o size={size} tmpfs {out}
        {' '.join(command)} > {logs}/first.out 2> {logs}/first.err; echo $? > {logs}/first.rc
        {sys.executable} {check} {out} > {logs}/first.json
        mount -o remount,size=256m {out}
        {' '.join(command)} > {logs}/second.out 2> {logs}/second.err; echo $? > {logs}/second.rc
        {sys.executable} {check} {out} > {logs}/second.json
        cp -a {out} {logs}/final
    """
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script], check=True,
                   timeout=600, cwd=Path(__file__).resolve().parents[2])
    return {step: {"rc": int((logs / f"{step}.rc").read_text()), "err": (logs / f"{step}.err").read_text(),
                   **json.loads((logs / f"{step}.json").read_text())} for step in ("first", "second")}


def _result_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): _comparable_bytes(p) for p in out.rglob("*")
            if p.is_file() and "log" not in p.relative_to(out).parts and "figures" not in p.relative_to(out).parts
            and p.suffix != ".html"}


def _comparable_bytes(path: Path) -> bytes:
    """A file's bytes; for ``dataset_description.json`` without the link to the input: inside a
    container (as on CI machines) an output on its own file system (the tmpfs) has no known host
    path to the input, so ``DatasetLinks`` / ``SourceDatasets`` are left out there on purpose."""
    if path.name != "dataset_description.json":
        return path.read_bytes()
    import json

    description = json.loads(path.read_text())
    description.pop("DatasetLinks", None)
    description.pop("SourceDatasets", None)
    return json.dumps(description, sort_keys=True).encode()


@pytest.fixture(scope="module")
def reference(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("diskfull")
    spec = root / "spec.yaml"
    spec.write_text(SMALL_SPEC)
    out = root / "reference"
    assert main([str(demo_dataset), str(out), "participant", "--spec", str(spec), "--participant-label", "01",
                 "--no-progress"]) == 0
    return demo_dataset, spec, out


@pytest.mark.parametrize("where", sorted(SIZES))
def test_full_disk_stops_cleanly_and_rerun_completes(where: str, reference: tuple[Path, Path, Path],
                                                     tmp_path: Path) -> None:
    bids, spec, reference_out = reference
    out = tmp_path / "out"
    if not _can_mount_tmpfs(out):
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    logs = tmp_path / "logs"
    logs.mkdir()
    result = _run_on_small_disk(bids, out, spec, SIZES[where], logs)
    first, second = result["first"], result["second"]
    assert first["rc"] == 1, first["err"]
    assert "no space left on device" in first["err"]
    assert "rerun the same command" in first["err"]
    assert "Traceback" not in first["err"]
    assert first["broken"] == []
    assert not [f for f in first["files"] if ".tmp" in f], first["files"]
    if where == "features":
        assert not [f for f in first["files"] if f.endswith(".h5")]
    else:
        assert [f for f in first["files"] if f.endswith(".h5")], "the features fit; the subject outputs do not"
    assert second["rc"] == 0, second["err"]
    assert second["broken"] == []
    assert not [f for f in second["files"] if ".tmp" in f]
    final = _result_files(logs / "final")
    expected = _result_files(reference_out)
    status = [k for k in expected if k.endswith("_status.json")]
    for key in status:
        final.pop(key, None)
        expected.pop(key)
    assert sorted(final) == sorted(expected)
    assert [k for k in expected if final[k] != expected[k]] == []
