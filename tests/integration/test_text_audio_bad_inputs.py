"""Bad text and sound inputs through the CLI (issue 20): each gets one clear message and its
documented exit code, and nothing is written for the participants."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bids_dnn.cli.main import main
from bids_dnn.workflows.demo import make_demo_dataset
from bids_dnn.workflows.demo_text_audio import AUDIO_DEMO, TEXT_DEMO


@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("text") / "bids", n_subjects=2, n_runs=1, kind=TEXT_DEMO)


@pytest.fixture(scope="module")
def audio_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("audio") / "bids", n_subjects=2, n_runs=1, kind=AUDIO_DEMO)


def _copy(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bids"
    shutil.copytree(dataset, copy)
    return copy


def _run(dataset: Path, out: Path, spec: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main([str(dataset), str(out), "participant", "--spec", str(spec), "--no-progress",
                 "--participant-label", "01"])
    return code, capsys.readouterr().err


def test_a_model_that_cannot_read_the_stimuli(text_dataset: Path, tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text((text_dataset / "code" / "spec.yaml").read_text().split("models:")[0]
                    + "models:\n  - {name: alexnet, weights: random, layers: [features.2]}\n"
                    + "rois:" + (text_dataset / "code" / "spec.yaml").read_text().split("rois:")[1])
    code, err = _run(text_dataset, tmp_path / "out", spec, capsys)
    assert code == 65, err
    assert "alexnet reads image and video stimuli, but the stimuli include text (animals01.txt)" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "sub-01").exists()


def test_an_uncached_hub_model_names_the_fetch_command(text_dataset: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    spec = tmp_path / "spec.yaml"
    spec.write_text((text_dataset / "code" / "spec.yaml").read_text()
                    .replace("name: models/textnet", "name: bert-base-uncased").replace("weights: random", "weights: DEFAULT"))
    code, err = _run(text_dataset, tmp_path / "out", spec, capsys)
    assert code == 66, err
    assert "bids_dnn models fetch --source huggingface" in err and "bert-base-uncased" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "sub-01").exists()


@pytest.mark.parametrize("problem", ["empty", "latin1"])
def test_unusable_text_files(text_dataset: Path, tmp_path: Path, capsys, problem: str) -> None:
    dataset = _copy(text_dataset, tmp_path)
    target = dataset / "stimuli" / "food02.txt"
    target.write_bytes(b"   \n" if problem == "empty" else "caf\xe9 au lait".encode("latin-1"))
    code, err = _run(dataset, tmp_path / "out", dataset / "code" / "spec.yaml", capsys)
    assert code == 66, err
    assert "food02.txt" in err and ("empty text" in err if problem == "empty" else "not UTF-8 text" in err)
    assert "Traceback" not in err and not (tmp_path / "out" / "sub-01").exists()


@pytest.mark.parametrize("problem", ["silent", "not_audio", "zero_length"])
def test_unusable_sound_files(audio_dataset: Path, tmp_path: Path, capsys, problem: str) -> None:
    from bids_dnn.workflows.demo_text_audio import write_wav

    import numpy as np

    dataset = _copy(audio_dataset, tmp_path)
    target = dataset / "stimuli" / "tone03.wav"
    if problem == "silent":
        write_wav(target, np.zeros(16000))
    elif problem == "zero_length":
        write_wav(target, np.zeros(0))
    else:
        target.write_text("this is not a sound\n")
    code, err = _run(dataset, tmp_path / "out", dataset / "code" / "spec.yaml", capsys)
    assert code == 66, err
    expected = {"silent": "silent sound", "not_audio": "not a readable sound", "zero_length": "empty sound"}[problem]
    assert "tone03.wav" in err and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "out" / "sub-01").exists()
