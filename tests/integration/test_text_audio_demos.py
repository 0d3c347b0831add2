"""Language and sound stimuli end to end (issue 20): ``bids_dnn demo --kind text|audio`` writes a
dataset whose responses follow layers of a tiny random-init Hugging Face model (a folder of
configuration and preprocessor files in ``code/models/``), and the participant and group levels
recover the planted layers by ROI RSA and encoding, through the CLI.

Planted (bids_dnn.workflows.demo_text_audio): text: ``early`` <- ``hidden_states.1``, ``late`` <-
``hidden_states.4`` (``hidden_states.3`` is close: RDM Spearman 0.87); audio: ``early`` <-
``hidden_states.0`` (the convolutional features), ``late`` <- ``hidden_states.4`` (the
transformer blocks of the random-init audio model are alike: 0.88 to 0.98); ``control``: noise.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bids_dnn.cli.main import main
from bids_dnn.workflows.demo_text_audio import AUDIO_PLANTED, TEXT_PLANTED

SPACE = "MNI152NLin2009cAsym"
PLANTED = {"text": ("sentences", "textnet", TEXT_PLANTED), "audio": ("sounds", "audionet", AUDIO_PLANTED)}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"subject": str})


def fast_spec(dataset: Path) -> Path:
    """The demo's own spec with fewer permutations and resamples."""
    text = (dataset / "code" / "spec.yaml").read_text()
    text = (text.replace("permutations: 1000}", "permutations: 100}").replace("bootstrap: 1000", "bootstrap: 100")
            .replace("map_permutations: 1000", "map_permutations: 0"))
    path = dataset / "code" / "spec_fast.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module", params=["text", "audio"])
def demo_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    dataset, out = root / "bids", root / "out"
    assert main(["demo", str(dataset), "--kind", kind, "--subjects", "4", "--runs", "3"]) == 0
    spec = fast_spec(dataset)
    assert main([str(dataset), str(out), "participant", "--spec", str(spec), "--no-progress"]) == 0
    assert main([str(dataset), str(out), "group", "--spec", str(spec), "--no-progress"]) == 0
    task, label, planted = PLANTED[kind]
    return {"kind": kind, "out": out, "dataset": dataset, "task": task, "label": label, "planted": planted}


def _summary(run: dict, suffix: str) -> pd.DataFrame:
    return read(run["out"] / "group" / f"task-{run['task']}_space-{SPACE}_model-{run['label']}_desc-summary_"
                f"{suffix}.tsv")


def test_rsa_recovers_the_planted_layers(demo_run):
    summary = _summary(demo_run, "rsa")
    for roi in ("early", "late"):
        rows = summary[summary["roi"] == roi].set_index("layer")
        best, planted = rows["mean"].idxmax(), demo_run["planted"][roi]
        assert rows.loc[planted, "mean"] >= rows.loc[best, "mean"] - rows.loc[best, "sem"], (roi, rows["mean"])
        assert rows.loc[planted, "significant"]
    early = summary[summary["roi"] == "early"].set_index("layer")
    assert early["mean"].idxmax() == demo_run["planted"]["early"]
    control = summary[summary["roi"] == "control"]
    assert (control["p_bonferroni"] > 0.05).all()


def test_encoding_recovers_the_planted_layers(demo_run):
    summary = _summary(demo_run, "encoding")
    value = "mean_r2"
    early = summary[summary["roi"] == "early"].set_index("layer")
    assert early[value].idxmax() == demo_run["planted"]["early"], early[value]
    late = summary[summary["roi"] == "late"].set_index("layer")
    assert late.loc[demo_run["planted"]["late"], value] > late.loc[demo_run["planted"]["early"], value]
    control = summary[summary["roi"] == "control"]
    assert (control[value] < 0.05).all()


def test_features_record_the_model_and_its_pooling(demo_run):
    import h5py

    path = demo_run["out"] / f"model-{demo_run['label']}" / f"task-{demo_run['task']}_model-{demo_run['label']}_features.h5"
    with h5py.File(path, "r") as handle:
        assert handle.attrs["model_label"] == demo_run["label"]
        layers = sorted(handle["layers"]) if "layers" in handle else sorted(handle)
    assert len(layers) >= 5
    stimuli = read(demo_run["out"] / f"task-{demo_run['task']}_stimuli.tsv")
    suffix = ".txt" if demo_run["kind"] == "text" else ".wav"
    assert len(stimuli) == 24 and stimuli["stim_file"].str.endswith(suffix).all()


def test_reports_are_written(demo_run):
    assert (demo_run["out"] / "sub-01.html").is_file() and (demo_run["out"] / "group.html").is_file()
