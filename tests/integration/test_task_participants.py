"""Participants without the task (``sub-emptyroom``, anatomy-only subjects) are left out.

Without ``--participant-label``, both levels take the participants that have data for the task
and one log line names the others with the reason; naming such a participant explicitly is an
error (exit 18). A participant with events but no fMRIPrep outputs is not left out: its missing
inputs are an error worth reporting. Checked on a copy of the demo dataset with an anatomy-only
subject and an empty-room MEG subject laid out as in ds000117 (bids-examples), and on ds000117
itself.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bids_dnn.io.bids import DatasetIndex
from bids_dnn.cli.main import main
from bids_dnn.errors import EXIT_NOTHING_SELECTED, NothingSelectedError
from tests._specs import SMALL_SPEC


def _add_subjects_without_the_task(bids: Path) -> None:
    """An anatomy-only subject and an empty-room MEG recording (task-noise), as in ds000117."""
    anat = bids / "sub-anatonly" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(next((bids / "derivatives" / "rois").glob("*_dseg.nii.gz")), anat / "sub-anatonly_T1w.nii.gz")
    meg = bids / "sub-emptyroom" / "ses-20090409" / "meg"
    meg.mkdir(parents=True)
    (meg / "sub-emptyroom_ses-20090409_task-noise_meg.fif").write_bytes(b"")
    (bids / "sub-emptyroom" / "sub-emptyroom_task-noise_meg.json").write_text('{"PowerLineFrequency": 50}\n')
    with (bids / "participants.tsv").open("a") as table:
        table.write("sub-anatonly\nsub-emptyroom\n")


@pytest.fixture
def mixed_dataset(demo_dataset: Path, tmp_path: Path) -> Path:
    """The demo dataset with two of its subjects (01, 02) plus two subjects without the task."""
    bids = tmp_path / "bids"
    shutil.copytree(demo_dataset, bids)
    for subject in ("03", "04"):
        shutil.rmtree(bids / f"sub-{subject}")
        shutil.rmtree(bids / "derivatives" / "fmriprep" / f"sub-{subject}")
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    table[table["participant_id"].isin(["sub-01", "sub-02"])].to_csv(bids / "participants.tsv", sep="\t",
                                                                       index=False)
    _add_subjects_without_the_task(bids)
    return bids


@pytest.mark.slow  # ~45 s: participant + group on 2 subjects
def test_both_levels_leave_out_participants_without_the_task(mixed_dataset: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC)
    out = tmp_path / "out"
    assert main([str(mixed_dataset), str(out), "participant", "--spec", str(spec), "--no-progress"]) == 0
    log = re.sub(r"\s+", " ", capsys.readouterr().err)
    assert ("left out 2 participant(s) without data for task 'shapes': sub-anatonly (anat only); "
            "sub-emptyroom (only task-noise)") in log
    assert "2 participant(s): 01, 02" in log
    assert sorted(p.name for p in out.glob("sub-*") if p.is_dir()) == ["sub-01", "sub-02"]

    assert main([str(mixed_dataset), str(out), "group", "--spec", str(spec), "--no-progress"]) == 0
    assert "left out 2 participant(s)" in re.sub(r"\s+", " ", capsys.readouterr().err)
    table = pd.read_csv(next((out / "group").glob("*_model-alexnet_rsa.tsv")), sep="\t", dtype={"subject": str})
    assert sorted(table["subject"].unique()) == ["01", "02"]


def test_naming_a_participant_without_the_task_is_exit_18(mixed_dataset: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC)
    code = main([str(mixed_dataset), str(tmp_path / "out"), "participant", "--spec", str(spec),
                 "--participant-label", "01", "emptyroom", "--no-progress"])
    text = re.sub(r"\s+", " ", capsys.readouterr().err)
    assert code == EXIT_NOTHING_SELECTED == 18
    assert "participant(s) without data for task 'shapes': sub-emptyroom (only task-noise)" in text
    assert "leave it out of --participant-label; participants with the task: sub-01, sub-02" in text
    assert "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_events_without_fmriprep_outputs_stay_selected(mixed_dataset: Path) -> None:
    """A participant with the task's events but no fMRIPrep outputs is kept (its missing
    derivatives are reported when it is processed, exit 66); one with neither is left out."""
    source = mixed_dataset / "sub-01" / "func"
    target = mixed_dataset / "sub-05" / "func"
    target.mkdir(parents=True)
    for events in source.glob("*_events.tsv"):
        shutil.copy(events, target / events.name.replace("sub-01", "sub-05"))
    bold_only = mixed_dataset / "sub-06" / "func"
    bold_only.mkdir(parents=True)
    shutil.copy(next(source.glob("*_bold.nii.gz")), bold_only / "sub-06_task-shapes_run-1_bold.nii.gz")
    index = DatasetIndex(mixed_dataset)
    assert index.select_subjects(None, "shapes") == ["01", "02", "05", "06"]
    assert index.select_subjects(["05"], "shapes") == ["05"]
    assert index.select_subjects(None) == ["01", "02", "05", "06", "anatonly", "emptyroom"]  # no task: every folder
    with pytest.raises(NothingSelectedError, match="no functional task-shapes data in ses-9"):
        index.select_subjects(["01"], "shapes", sessions=["9"])


def test_betas_participants_are_those_with_maps_or_events(tmp_path: Path) -> None:
    """``brain.input: betas``: ready-made maps of the task count as its data (events are optional)."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}\n')
    betas = bids / "derivatives" / "betas"
    for subject in ("01", "02"):
        func = betas / f"sub-{subject}" / "func"
        func.mkdir(parents=True)
        (func / f"sub-{subject}_task-objects_run-1_space-T1w_desc-stimuli_stat-effect_statmap.nii.gz").write_bytes(b"")
    other = betas / "sub-03" / "func"
    other.mkdir(parents=True)
    (other / "sub-03_task-other_run-1_space-T1w_desc-stimuli_stat-effect_statmap.nii.gz").write_bytes(b"")
    for subject in ("01", "02", "03"):
        (bids / f"sub-{subject}" / "anat").mkdir(parents=True)
        (bids / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz").write_bytes(b"")
    index = DatasetIndex(bids)
    assert index.select_subjects(None, "objects", betas_derivatives="betas") == ["01", "02"]
    with pytest.raises(NothingSelectedError, match="sub-03"):
        index.select_subjects(["03"], "objects", betas_derivatives="betas")


@pytest.mark.slow  # pybids indexes 2448 files (~5-15 s)
def test_ds000117_leaves_out_the_empty_room(shared_data: Path) -> None:
    """bids-examples ds000117: 16 participants with fMRI of task facerecognition and
    sub-emptyroom (MEG noise recordings, task-noise)."""
    index = DatasetIndex(shared_data / "bids-examples" / "ds000117")
    assert index.choose_task("facerecognition") == "facerecognition"
    assert index.select_subjects(None, "facerecognition") == [f"{i:02d}" for i in range(1, 17)]
    with pytest.raises(NothingSelectedError, match=r"sub-emptyroom \(only task-noise\)") as error:
        index.select_subjects(["emptyroom"], "facerecognition")
    assert error.value.exit_code == 18
