"""Bad EEG / MEG inputs through the CLI (issue 19): one short message, the documented exit code,
no traceback, nothing written for the participants."""

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
