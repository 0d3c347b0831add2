"""Naturalistic designs end to end (issue 21), through the CLI: ``bids_dnn demo --kind movie|story``
writes a dataset whose BOLD follows the time series of one model layer per ROI (films: AlexNet
frame features at 2 fps; stories: a tiny text model's hidden states of every word read with its
context), resampled to the TRs and delayed; ``design: naturalistic`` fits every voxel's time
series with leave-one-run-out ridge; the planted layers come out in their ROIs and the control
ROI has a held-out r of about 0. The last run repeats the first run's stimulus: the noise ceiling
is computed from that pair, and the pair stays in one fold.

Adjacent layers carry much of the same timeline (e.g. ``features.2`` and ``features.5`` of the
random-init AlexNet on these films), so the planted layer has to be within one SEM of the best
and the early layers must beat the late ones in ``early`` (and the reverse in ``late``).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_dnn.cli.main import main
from bids_dnn.workflows.demo_naturalistic import MOVIE_PLANTED, STORY_PLANTED

SPACE = "MNI152NLin2009cAsym"
KINDS = {"movie": ("movie", "alexnet", MOVIE_PLANTED), "story": ("story", "textnet", STORY_PLANTED)}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"subject": str})


pytestmark = pytest.mark.slow  # films: about 4 min, stories about 2 min on 2 cores


@pytest.fixture(scope="module", params=list(KINDS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    dataset, out = root / "bids", root / "out"
    assert main(["demo", str(dataset), "--kind", kind, "--subjects", "3", "--runs", "4"]) == 0
    spec = dataset / "code" / "spec.yaml"
    argv = [str(dataset), str(out), "participant", "--spec", str(spec), "--no-progress"]
    assert main(argv) == 0
    tables = sorted(out.glob("sub-*/func/*_naturalistic.tsv"))
    before = {p.name: p.stat().st_mtime_ns for p in tables}
    assert main(argv) == 0  # a rerun resumes: nothing is recomputed
    after = {p.name: p.stat().st_mtime_ns for p in tables}
    assert main([str(dataset), str(out), "group", "--spec", str(spec), "--no-progress"]) == 0
    task, model, planted = KINDS[kind]
    return {"kind": kind, "out": out, "task": task, "model": model, "planted": planted, "before": before,
            "after": after}


def _summary(run: dict) -> pd.DataFrame:
    return read(run["out"] / "group" / f"task-{run['task']}_space-{SPACE}_model-{run['model']}_desc-summary_"
                "naturalistic.tsv")


def test_planted_layers_win_in_their_rois(run):
    summary = _summary(run)
    layers = list(dict.fromkeys(summary["layer"]))
    early_layers, late_layers = layers[:2], layers[-2:]
    for roi, own, other in (("early", early_layers, late_layers), ("late", late_layers, early_layers)):
        rows = summary[summary["roi"] == roi].set_index("layer")
        best, planted = rows["mean"].idxmax(), run["planted"][roi]
        assert rows.loc[planted, "mean"] >= rows.loc[best, "mean"] - rows.loc[best, "sem"], rows[["mean", "sem"]]
        assert rows.loc[own, "mean"].max() > rows.loc[other, "mean"].max(), rows["mean"]
        assert rows.loc[planted, "mean"] > 0.2 and rows.loc[planted, "significant"]
    control = summary[summary["roi"] == "control"]
    assert (control["mean"].abs() < 0.05).all(), control["mean"]


def test_maps_best_layer_and_noise_ceiling(run):
    func = run["out"] / "sub-01" / "func"
    prefix = f"sub-01_task-{run['task']}_space-{SPACE}"
    best = nib.load(func / f"{prefix}_model-{run['model']}_stat-bestlayer_desc-naturalistic_statmap.nii.gz")
    sidecar = json.loads((func / f"{prefix}_model-{run['model']}_stat-bestlayer_desc-naturalistic_statmap.json")
                         .read_text())
    values = np.asarray(best.dataobj)
    finite = values[np.isfinite(values)]
    assert finite.size and set(np.unique(finite)) <= set(range(1, len(sidecar["Layers"]) + 1))
    ceiling_path = func / f"{prefix}_stat-noiseceiling_desc-naturalistic_statmap.nii.gz"
    table = read(func / f"{prefix}_model-{run['model']}_naturalistic.tsv").drop_duplicates("roi").set_index("roi")
    # the last run repeats the first: a ceiling exists, high in the signal ROIs, about 0 in control
    assert ceiling_path.is_file()
    assert table.loc["early", "mean_noise_ceiling"] > 0.1 and abs(table.loc["control", "mean_noise_ceiling"]) < 0.1
    top = read(func / f"{prefix}_model-{run['model']}_desc-topvoxel_timeseries.tsv")
    assert set(top["run"]) == {1, 2, 3, 4} and np.corrcoef(top["measured"], top["predicted"])[0, 1] > 0.3


def test_rerun_resumes_and_reports_exist(run):
    assert run["before"] == run["after"]
    status = json.loads(next(run["out"].glob("sub-01/log/*_status.json")).read_text())
    assert status["complete"] and "naturalistic" in status["stages"]
    assert (run["out"] / "group.html").is_file()
