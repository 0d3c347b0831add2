"""What a person sees and keeps from a run, and what the run leaves alone.

- ROI and participant labels are text end to end: atlas names ``NULL``, ``NA``, ``None``,
  ``N/A``, ``nan`` and the participant label ``007`` reach file names, tables and reports as
  written (also ``rois.labels: [NULL]`` in a YAML spec).
- Many unusable stimulus files get a short answer (count, kind, a few names, what to do; all
  of them with ``-v``).
- OUT_DIR may be ``BIDS_DIR/derivatives/bids_dnn``; nothing else in the input changes.
- Logs: plain, time-stamped, unwrapped lines when stderr is not a terminal; a log file next to
  each provenance; a fatal error printed once; a closed pipe ends the program quietly; the
  report is part of a participant's time; participant and group reports count the same
  warnings.

The end-to-end runs are real subprocesses with stderr to a pipe (not a terminal).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _specs import SMALL_SPEC

from bids_dnn.io import derivatives as drv

SPACE = "MNI152NLin2009cAsym"
ATLAS = f"derivatives/rois/space-{SPACE}_atlas-planted_dseg"
#: atlas names that pandas and YAML would otherwise read as missing values
TRICKY_NAMES = ("NULL", "NA", "None", "nan")
#: the same, plus one that is in the table but not selected (it would share label-NA with NA)
TABLE_NAMES = {1: "NULL", 2: "NA", 3: "None", 4: "nan", 5: "N/A"}
SPEC = SMALL_SPEC.replace(f"  atlas: {ATLAS}.nii.gz\n",
                          f"  atlas: {ATLAS}.nii.gz\n  labels: [NULL, NA, None, nan]\n")
STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
ENV.pop("COLUMNS", None)


def bids_dnn(*args: object, **kwargs: object) -> subprocess.CompletedProcess:
    """``python -m bids_dnn ARGS`` with stdout and stderr to pipes (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "bids_dnn", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=900, **kwargs)


def tree_digest(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Relative path -> SHA-256 of every file and folder under ``root`` (``skip`` left out)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return out


def rename_subject(bids: Path, old: str, new: str) -> None:
    """Rename participant ``old`` to ``new`` in a demo dataset (folders, files, participants.tsv)."""
    for path in sorted(bids.rglob(f"*sub-{old}*"), key=lambda p: len(p.parts), reverse=True):
        path.rename(path.with_name(path.name.replace(f"sub-{old}", f"sub-{new}")))
    table = bids / "participants.tsv"
    table.write_text(table.read_text().replace(f"sub-{old}", f"sub-{new}"))


def relabel_atlas(bids: Path) -> None:
    """ROIs named as in :data:`TABLE_NAMES`: ``control`` (3) is split in two halves (3, 4)."""
    import nibabel as nib

    path = bids / f"{ATLAS}.nii.gz"
    image = nib.load(str(path))
    data = np.asarray(image.dataobj).astype(np.int16)
    control = np.argwhere(data == 3)
    half = control[:, 0] > np.median(control[:, 0])
    data[tuple(control[half].T)] = 4
    assert (data == 3).sum() > 100 and (data == 4).sum() > 100
    nib.save(nib.Nifti1Image(data, image.affine, image.header), str(path))
    rows = "".join(f"{index}\t{name}\n" for index, name in TABLE_NAMES.items())
    (bids / f"{ATLAS}.tsv").write_text("index\tname\n" + rows)


def html_text(path: Path) -> str:
    """A report without its embedded images (smaller to search)."""
    return re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def labelled_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-participant demo dataset with participants 007 and 02 and the atlas of :data:`TABLE_NAMES`."""
    from bids_dnn.workflows.demo import make_demo_dataset

    bids = make_demo_dataset(tmp_path_factory.mktemp("hygiene") / "bids", n_subjects=2, n_runs=2, seed=0)
    rename_subject(bids, "01", "007")
    relabel_atlas(bids)
    return bids


@pytest.fixture(scope="module")
def inside_run(labelled_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Participant and group level with OUT_DIR = BIDS_DIR/derivatives/bids_dnn (a private copy)."""
    root = tmp_path_factory.mktemp("inside")
    bids = root / "bids"
    shutil.copytree(labelled_dataset, bids)
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    out = bids / "derivatives" / "bids_dnn"
    before = tree_digest(bids)
    participant = bids_dnn(bids, out, "participant", "--spec", spec)
    group = bids_dnn(bids, out, "group", "--spec", spec)
    rerun = bids_dnn(bids, out, "participant", "--spec", spec, "--participant-label", "007")
    return {"bids": bids, "out": out, "spec": spec, "before": before, "after": tree_digest(bids, skip=out),
            "participant": participant, "group": group, "rerun": rerun}


# ---------------------------------------------------------------------------------------
# item: output inside BIDS_DIR/derivatives
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_output_in_bids_derivatives_end_to_end(inside_run: dict) -> None:
    for step in ("participant", "group", "rerun"):
        assert inside_run[step].returncode == 0, inside_run[step].stderr
    out = inside_run["out"]
    assert (out / "group.html").is_file() and (out / "sub-007.html").is_file()
    assert list((out / "group").glob("*_desc-summary_rsa.tsv"))
    assert inside_run["after"] == inside_run["before"]  # nothing else in the input changed
    # the tool's own outputs are not taken for inputs: the rerun finds its stages current, and
    # its saved betas (desc-stimuli_stat-effect_statmap) are no ready-made betas of a task
    assert "all" in inside_run["rerun"].stderr and "up to date" in inside_run["rerun"].stderr
    assert list(out.glob("sub-007/func/*_desc-stimuli_stat-effect_statmap.nii.gz"))
    from bids_dnn.io.bids import DatasetIndex

    assert DatasetIndex(inside_run["bids"]).betas_tasks() == []


def test_output_elsewhere_in_bids_dir_still_refused(labelled_dataset: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    before = tree_digest(labelled_dataset)
    result = bids_dnn(labelled_dataset, labelled_dataset / "sub-007" / "x", "participant", "--spec", spec)
    assert result.returncode == 64, result.stderr
    assert "inside the input dataset" in result.stderr and "Traceback" not in result.stderr
    assert tree_digest(labelled_dataset) == before
    from bids_dnn.io.bids import check_paths
    from bids_dnn.errors import UsageError

    derivatives = labelled_dataset / "derivatives"
    check_paths(labelled_dataset, derivatives / "bids_dnn", derivatives / "work")  # allowed: no error
    for out, work in ((derivatives / "bids_dnn", labelled_dataset / "code" / "work"),
                      (derivatives / "fmriprep" / "out", None), (derivatives, None)):
        with pytest.raises(UsageError):
            check_paths(labelled_dataset, out, work)


# ---------------------------------------------------------------------------------------
# item: labels are text
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_roi_names_that_look_missing_reach_files_and_tables(inside_run: dict) -> None:
    out = inside_run["out"]
    func = out / "sub-007" / "func"
    for name in TRICKY_NAMES:
        assert list(func.glob(f"sub-007_*_label-{name}_mask.nii.gz")), name
        assert list(func.glob(f"sub-007_*_label-{name}_stat-*_relmat.tsv")), name
    masks = sorted(p.name.split("_label-")[1].split("_")[0] for p in func.glob("*_label-*_mask.nii.gz"))
    assert masks == sorted(TRICKY_NAMES)
    rsa = drv.read_tsv(next(func.glob("*_model-alexnet_rsa.tsv")))
    assert list(dict.fromkeys(rsa["roi"])) == list(TRICKY_NAMES)
    summary_path = next((out / "group").glob("*_desc-summary_rsa.tsv"))
    assert list(dict.fromkeys(drv.read_tsv(summary_path)["roi"])) == list(TRICKY_NAMES)
    raw_rows = [line.split("\t")[0] for line in summary_path.read_text().splitlines()[1:]]
    assert set(raw_rows) == set(TRICKY_NAMES)  # written as the names, not as n/a
    assert ">NULL<" in html_text(out / "group.html") and ">None<" in html_text(out / "sub-007.html")


@pytest.mark.slow
def test_subject_label_007_reads_back_as_text(inside_run: dict) -> None:
    out = inside_run["out"]
    table_path = next((out / "group").glob("*_model-alexnet_rsa.tsv"))
    table = drv.read_tsv(table_path)
    assert sorted(set(table["subject"])) == ["007", "02"]
    assert table_path.read_text().splitlines()[1].startswith("007\t")
    from bids_dnn.report.inputs import read_table

    assert "007" in set(read_table(table_path)["subject"])
    assert ">sub-007<" in html_text(out / "group.html")


def test_atlas_labels_table_keeps_names_as_text(tmp_path: Path) -> None:
    from bids_dnn.brain.rois import read_atlas_labels

    path = tmp_path / "atlas_dseg.tsv"
    path.write_text("index\tname\n0\tbackground\n1\tNULL\n2\tNA\n3\tNone\n4\tN/A\n5\tnan\n6\t007\n")
    table = read_atlas_labels(path)
    assert list(table["name"]) == ["background", "NULL", "NA", "None", "N/A", "nan", "007"]
    assert list(table["index"]) == list(range(7))


def test_atlas_names_sharing_a_file_label_are_refused(tmp_path: Path) -> None:
    import nibabel as nib

    from bids_dnn.brain.rois import load_roi_masks_from_atlas, read_atlas_labels
    from bids_dnn.errors import BidsValidationError
    from bids_dnn.spec import sanitize_label

    data = np.zeros((4, 4, 4), np.int16)
    data[:2], data[2:] = 1, 2
    atlas = nib.Nifti1Image(data, np.eye(4))
    path = tmp_path / "atlas_dseg.tsv"
    path.write_text("index\tname\n1\tNA\n2\tN/A\n")
    with pytest.raises(BidsValidationError, match=r"'NA', 'N/A' -> label-NA"):
        load_roi_masks_from_atlas(atlas, read_atlas_labels(path), atlas, np.ones((4, 4, 4), bool),
                                  file_label=sanitize_label)
    masks = load_roi_masks_from_atlas(atlas, read_atlas_labels(path), atlas, np.ones((4, 4, 4), bool), names=["N/A"],
                                      file_label=sanitize_label)
    assert list(masks) == ["N/A"] and masks["N/A"].sum() == 32
    path.write_text("index\tname\n1\tn/a\nx\tB\n")
    with pytest.raises(BidsValidationError, match=r"row 2: no name; row 3: index 'x' is not a whole number"):
        read_atlas_labels(path)


def test_yaml_roi_labels_are_read_as_written(tmp_path: Path) -> None:
    from bids_dnn.spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text("models: [{name: alexnet, layers: top_level}]\nrois:\n  atlas: atlas.nii.gz\n"
                    "  labels: [NULL, NA, None, N/A, nan, ~, 007, 1.50, yes, 'quoted']\n")
    assert load_spec(spec).rois.labels == ["NULL", "NA", "None", "N/A", "nan", "~", "007", "1.50", "yes", "quoted"]
    spec.write_text('{"models": [{"name": "alexnet", "layers": "top_level"}], '
                    '"rois": {"atlas": "atlas.nii.gz", "labels": [7, "NA"]}}')
    assert load_spec(spec.rename(tmp_path / "spec.json")).rois.labels == ["7", "NA"]


def test_output_tables_read_labels_as_text(tmp_path: Path) -> None:
    from bids_dnn.report.inputs import read_table

    path = tmp_path / "table.tsv"
    labels = ["NULL", "NA", "None", "nan", "007"]
    drv.write_tsv(path, pd.DataFrame({"subject": labels, "roi": labels, "layer_a": labels, "component": labels,
                                      "category": labels, "score": [0.5, np.nan, 1, 2, 3]}))
    for table in (drv.read_tsv(path), read_table(path)):
        for column in ("subject", "roi", "layer_a", "component", "category"):
            assert list(table[column]) == labels, column
        assert np.isnan(table["score"][1]) and table["score"].dtype == float


# ---------------------------------------------------------------------------------------
# item: many unusable stimulus files get a short answer
# ---------------------------------------------------------------------------------------


def _empty_stimuli_dataset(root: Path, n_files: int) -> Path:
    """A raw dataset whose events name ``n_files`` empty PNG files."""
    bids = root / "bids"
    (bids / "stimuli").mkdir(parents=True)
    (bids / "sub-01" / "func").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "empty stimuli", "BIDSVersion": "1.10.0"}')
    names = [f"img{i:03d}.png" for i in range(n_files)]
    for name in names:
        (bids / "stimuli" / name).touch()
    events = pd.DataFrame({"onset": np.arange(n_files) * 2.0, "duration": 1.0, "trial_type": "image",
                           "stim_file": names})
    events.to_csv(bids / "sub-01" / "func" / "sub-01_task-view_run-1_events.tsv", sep="\t", index=False)
    (bids / "sub-01" / "func" / "sub-01_task-view_run-1_bold.nii.gz").touch()
    return bids


def test_many_empty_stimulus_files_are_summarised(tmp_path: Path) -> None:
    bids = _empty_stimuli_dataset(tmp_path, 100)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC)
    result = bids_dnn(bids, tmp_path / "out", "participant", "--spec", spec)
    lines = result.stderr.splitlines()
    assert result.returncode == 66, result.stderr
    assert len(lines) < 25, result.stderr
    assert "100 stimulus file(s) missing or unreadable" in result.stderr
    assert "100 x empty file (0 bytes): img000.png, img001.png, img002.png, ... (97 more)" in result.stderr
    assert "placeholders" in result.stderr and "-v" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    verbose = bids_dnn(bids, tmp_path / "out", "participant", "--spec", spec, "-v")
    assert verbose.returncode == 66
    assert all(f"img{i:03d}.png: empty file (0 bytes)" in verbose.stderr for i in range(100))


def test_mixed_stimulus_problems_are_grouped_by_kind() -> None:
    from bids_dnn.io.stimuli import stimulus_problems_error

    problems = [(f"m{i:02d}.png", "not found in /data/stimuli") for i in range(12)]
    problems += [(f"t{i}.png", f"not a readable image (OSError: truncated at byte {i})") for i in range(3)]
    error = stimulus_problems_error(problems)
    assert error.exit_code == 66 and len(error.details) == 15
    assert error.message.splitlines() == [
        "15 stimulus file(s) missing or unreadable, by kind of problem:",
        "  12 x not found in /data/stimuli: m00.png, m01.png, m02.png, ... (9 more)",
        "  3 x not a readable image (e.g. OSError: truncated at byte 0): t0.png, t1.png, t2.png"]
    assert "put the files under BIDS_DIR/stimuli" in error.hint and "re-export or re-copy" in error.hint
    few = stimulus_problems_error(problems[:2])
    assert few.message.splitlines()[1:] == ["  m00.png: not found in /data/stimuli",
                                            "  m01.png: not found in /data/stimuli"] and not few.details


def test_ds000117_empty_stimuli_fit_on_a_screen(shared_data: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC)
    result = bids_dnn(shared_data / "bids-examples" / "ds000117", tmp_path / "out", "participant", "--spec", spec)
    assert result.returncode == 66, result.stderr
    assert len(result.stderr.splitlines()) <= 20, result.stderr
    assert re.search(r"4\d\d stimulus file\(s\) missing or unreadable", result.stderr)
    assert "empty file (0 bytes)" in result.stderr


# ---------------------------------------------------------------------------------------
# item: logs a person can use
# ---------------------------------------------------------------------------------------


def _check_plain(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert lines, "no output"
    for line in lines:
        assert STAMPED.match(line), f"no time stamp: {line!r}"
        assert line == line.rstrip(), f"trailing whitespace: {line!r}"
    return lines


@pytest.mark.slow
def test_piped_stderr_is_plain_stamped_and_unwrapped(inside_run: dict) -> None:
    participant = _check_plain(inside_run["participant"].stderr)
    group = _check_plain(inside_run["group"].stderr)
    assert any("sub-007 done in" in line for line in participant)
    best = [line for line in group if re.search(r"best layer \(cross-validated[^)]*\) \S+; significant layers: \d+ of 2$",
                                                line)]
    assert len(best) == len(TRICKY_NAMES) and all(len(line) > 80 for line in best)  # long lines stay whole


@pytest.mark.slow
def test_log_file_next_to_each_provenance(inside_run: dict) -> None:
    out = inside_run["out"]
    for subject in ("007", "02"):
        logs = list((out / f"sub-{subject}" / "log").glob("*/bids_dnn.log"))
        assert len(logs) == 1 and (logs[0].parent / "provenance.json").is_file()
        text = logs[0].read_text()
        _check_plain(text)
        assert "task shapes: 24 stimuli" in text and f"sub-{subject} done in" in text
        other = "02" if subject == "007" else "007"
        assert f"sub-{other}:" not in text
    group_logs = list((out / "group" / "log").glob("*/bids_dnn.log"))
    assert len(group_logs) == 1 and (group_logs[0].parent / "provenance.json").is_file()
    assert "alexnet / NULL: best layer (cross-validated" in group_logs[0].read_text()


@pytest.mark.slow
def test_warning_counts_agree_between_reports(inside_run: dict) -> None:
    out = inside_run["out"]
    group = html_text(out / "group.html")
    for subject in ("007", "02"):
        own = re.search(r'<th scope="row">warnings</th><td>(\d+|none)', html_text(out / f"sub-{subject}.html"))[1]
        row = re.search(rf'>sub-{subject}</td>.*?<td data-col="warnings">(\d+)</td>', group, flags=re.S)[1]
        assert int(row) == (0 if own == "none" else int(own)), subject
        assert int(row) > 0  # the split control ROIs have low reliability: a real warning to count


def _break_mask(bids: Path, subject: str) -> None:
    for path in (bids / "derivatives" / "fmriprep" / f"sub-{subject}").rglob("*desc-brain_mask.nii.gz"):
        path.write_bytes(b"garbage")


def test_fatal_error_printed_once(labelled_dataset: Path, tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    shutil.copytree(labelled_dataset, bids)
    _break_mask(bids, "007")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    result = bids_dnn(bids, tmp_path / "out", "participant", "--participant-label", "007", "--spec", spec)
    assert result.returncode == 66, result.stderr
    _check_plain(result.stderr)
    assert result.stderr.count("brain mask: cannot read") == 1, result.stderr
    assert "error: brain mask: cannot read" in result.stderr


def _closed_pipe() -> tuple[int, int]:
    """A pipe whose read end is already closed (a reader that went away), and its write end."""
    read, write = os.pipe()
    os.close(read)
    return read, write


def test_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    _, write = _closed_pipe()
    try:
        result = subprocess.run([sys.executable, "-m", "bids_dnn", "spec", "schema"], stdout=write,
                                stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == ""
    for command in ("spec schema", "--help"):
        piped = subprocess.run(f"{sys.executable} -m bids_dnn {command} | head -1", shell=True, capture_output=True,
                               text=True, env=ENV, timeout=120)
        assert piped.stdout.count("\n") == 1 and piped.stderr == "", piped.stderr


def test_closed_stderr_stops_the_run_quietly(labelled_dataset: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    _, write = _closed_pipe()
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "bids_dnn", labelled_dataset, out, "participant", "--spec",
                                 spec], stdout=subprocess.PIPE, stderr=write, text=True, env=ENV, timeout=600)
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stdout == ""
    assert not list(out.glob("sub-*")) and not list(out.glob("model-*")), time.monotonic() - started


@pytest.mark.slow
def test_report_time_is_part_of_the_participant_time(labelled_dataset: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import bids_dnn.report as report
    from bids_dnn.cli.main import main

    real_build = report.build_participant_report

    def slow_build(*args: object, **kwargs: object) -> Path:
        time.sleep(3.0)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(report, "build_participant_report", slow_build)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    started = time.monotonic()
    assert main([str(labelled_dataset), str(out), "participant", "--participant-label", "02", "--spec", str(spec),
                 "--no-progress"]) == 0
    elapsed = time.monotonic() - started
    seconds = float(re.search(r"sub-02 done in ([\d.]+) s", capsys.readouterr().err)[1])
    status = json.loads((out / "sub-02" / "log" / "task-shapes_status.json").read_text())
    assert 3.0 <= seconds <= elapsed and 3.0 <= status["seconds"] <= elapsed
    log = next((out / "sub-02" / "log").glob("*/bids_dnn.log")).read_text()
    assert f"sub-02 done in {seconds:.1f} s" in log
