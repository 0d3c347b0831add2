"""EEG / MEG inputs through the CLI (issue 19): bad ones get one short message, the documented exit
code, no traceback and nothing written for the participants; MEG in FIF takes the EEG path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bids_dnn.cli.main import main

MEG_SPEC = """\
modality: meg
models:
  - {name: alexnet, weights: random, layers: [features.2]}
analyses: {rsa: {permutations: 10}}
"""


@pytest.mark.shared
def test_a_dataset_of_empty_recordings(shared_data: Path, tmp_path: Path, capsys) -> None:
    """bids-examples ds000117: every MEG recording (and stimulus) is a 0-byte placeholder."""
    dataset = shared_data / "bids-examples" / "ds000117"
    if not dataset.is_dir():
        pytest.skip("bids-examples/ds000117 is not in the shared data")
    spec = tmp_path / "spec.yaml"
    spec.write_text(MEG_SPEC)
    out = tmp_path / "out"
    code = main([str(dataset), str(out), "participant", "--spec", str(spec), "--no-progress",
                 "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 66, err
    assert "is empty (0 bytes)" in err and "_meg.fif" in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 4, err
    assert not list(out.glob("sub-*")) if out.exists() else True


def test_one_empty_recording_fails_its_participant_only(tmp_path: Path, capsys) -> None:
    from bids_dnn.workflows.demo_meeg import make_eeg_dataset

    dataset = make_eeg_dataset(tmp_path / "bids", n_subjects=2, seed=0)
    data_file = sorted((dataset / "sub-02" / "eeg").glob("*_eeg.eeg"))[0]
    data_file.write_bytes(b"")
    spec = dataset / "code" / "spec.yaml"
    out = tmp_path / "out"
    code = main([str(dataset), str(out), "participant", "--spec", str(spec), "--no-progress",
                 "--participant-label", "02"])
    err = capsys.readouterr().err
    assert code == 66, err
    assert f"{data_file.name} is empty (0 bytes)" in err and "Traceback" not in err
    shutil.rmtree(out, ignore_errors=True)


def test_a_meg_dataset_in_fif(tmp_path: Path) -> None:
    """MEG (FIF, magnetometers) through the same path: the EEG demo's signal re-recorded as MEG."""
    import mne
    import mne_bids
    import numpy as np
    import pandas as pd

    from bids_dnn.io.meeg import find_meeg_runs, read_meeg_raw
    from bids_dnn.workflows.demo_meeg import make_eeg_dataset

    eeg = make_eeg_dataset(tmp_path / "eeg", n_subjects=2, n_runs=1, seed=2)
    meg = tmp_path / "meg"
    for subject in ("01",):
        for recording in find_meeg_runs(eeg, subject, datatype="eeg"):
            raw = read_meeg_raw(recording)
            info = mne.create_info([f"MEG{i:04d}" for i in range(len(raw.ch_names))], raw.info["sfreq"], "mag")
            as_meg = mne.io.RawArray(raw.get_data() * 1e-7, info, verbose="error")  # V -> T-sized values
            as_meg.set_annotations(raw.annotations)
            path = mne_bids.BIDSPath(subject=subject, task=recording.task, run=recording.run, datatype="meg",
                                     root=meg)
            mne_bids.write_raw_bids(as_meg, path, format="FIF", allow_preload=True, overwrite=True, verbose="error")
            events = pd.read_csv(recording.events_path, sep="\t")
            events.to_csv(path.copy().update(suffix="events", extension=".tsv").fpath, sep="\t", index=False,
                          na_rep="n/a")
    shutil.copytree(eeg / "stimuli", meg / "stimuli")
    spec = meg / "spec.yaml"
    head, _, _ = (eeg / "code" / "spec.yaml").read_text().replace("modality: eeg", "modality: meg").partition("meeg:")
    spec.write_text(head + "meeg: {tmin: -0.1, tmax: 0.4, resample_hz: 100, rdm: crossnobis, folds: 4, "
                    "temporal_generalization: false}\n")
    out = tmp_path / "out"
    assert main([str(meg), str(out), "participant", "--spec", str(spec), "--no-progress", "--skip-bids-validation",
                 "--participant-label", "01"]) == 0
    task = "shapes"
    table = pd.read_csv(out / "sub-01" / "meg" / f"sub-01_task-{task}_model-alexnet_desc-rsa_timecourse.tsv",
                        sep="\t")
    course = table[table["layer"] == "features.2"].set_index("time")["score"]
    assert course.loc[0.08:0.12].mean() > course.loc[:-0.01].mean() + 0.15, course
    quality = pd.read_csv(out / "sub-01" / "meg" / f"sub-01_task-{task}_desc-epochs_qc.tsv", sep="\t")
    assert (quality["n_channels"] == 32).all() and np.isfinite(course.to_numpy()).all()
