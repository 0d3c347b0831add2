"""Decoding and identification, probing, and "what drives a region" end to end on the demo
dataset (``analyses.decoding``, ``analyses.probing``, ``analyses.drivers``), through the CLI.

Planted truth (bids_dnn.workflows.demo): ``early`` carries ``features.2``, ``late`` carries
``classifier.4`` (whose activations for the 24 demo images are nearly those of ``features.12`` and
``classifier.1``: layer x layer CKA 1.00, so there the planted layer only has to be within two SEM
of the best), ``control`` carries no stimulus signal. The four categories (disc, grating, checker,
texture) differ strongly in low-level image statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from bids_dnn.cli.main import main
from bids_dnn.io.derivatives import PYBIDS_ENTITY_NAMES
from bids_dnn.workflows.demo import CATEGORIES, DEMO_LAYERS, N_PER_CATEGORY, PLANTED, planted_responses
from tests._specs import SMALL_SPEC

SPACE = "MNI152NLin2009cAsym"
PREFIX = f"task-shapes_space-{SPACE}"
ANALYSES = ("  decoding: {enabled: true, permutations: 100}\n"
            "  probing: {enabled: true, permutations: 100}\n"
            "  drivers: {enabled: true, n_top: 4, saliency: {n_stimuli: 2, n_samples: 4}}\n")
SPEC = (SMALL_SPEC.replace("layers: [features.2, features.12]", f"layers: [{', '.join(DEMO_LAYERS)}]")
        .replace("  rsa: {comparison: spearman, permutations: 20}\n", "  rsa: {enabled: false}\n")
        .replace("  encoding: {enabled: false}\n", "  encoding: {enabled: false}\n" + ANALYSES))


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"subject": str})


@pytest.fixture(scope="module")
def outputs(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("beyond")
    out = root / "out"
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    argv = [str(demo_dataset), str(out), "participant", "--spec", str(spec), "--no-progress"]
    assert main(argv) == 0
    written = sorted(out.glob("sub-*/func/*_decoding.tsv")) + sorted(out.glob("sub-*/func/*_saliency.npz"))
    first = {p.name: p.stat().st_mtime_ns for p in written}
    assert main(argv) == 0  # a rerun with the same spec resumes: nothing is recomputed
    second = {p.name: p.stat().st_mtime_ns for p in written}
    assert main([str(demo_dataset), str(out), "group", "--spec", str(spec), "--no-progress"]) == 0
    return {"out": out, "first": first, "second": second, "bids": demo_dataset}


def test_planted_layer_identifies_best_in_its_roi(outputs):
    summary = read(outputs["out"] / "group" / f"{PREFIX}_model-alexnet_desc-summary_decoding.tsv")
    early = summary[summary["roi"] == "early"].set_index("layer")
    assert early["mean"].idxmax() == PLANTED["early"], early["mean"]
    assert early.loc[PLANTED["early"], "significant"] and early.loc[PLANTED["early"], "best_layer_cv"]
    late = summary[summary["roi"] == "late"].set_index("layer")
    best = late["mean"].idxmax()
    # the late layers are nearly one representation on the demo (see the module docstring): the
    # planted one is within two standard errors of the best
    margin = 2 * late.loc[[best, PLANTED["late"]], "sem"].max()
    assert late.loc[PLANTED["late"], "mean"] >= late.loc[best, "mean"] - margin, late[["mean", "sem"]]
    assert late.loc[PLANTED["late"], "mean"] > late.loc["features.2", "mean"] + 0.05
    assert late.loc[PLANTED["late"], "significant"]
    control = summary[summary["roi"] == "control"]
    assert not control["significant"].any() and (control["mean"] < 0.55).all()
    assert (summary["chance"] == 0.5).all()


def test_participant_decoding_tables(outputs):
    paths = sorted(outputs["out"].glob(f"sub-*/func/sub-*_{PREFIX}_model-alexnet_decoding.tsv"))
    assert len(paths) == 4
    table = read(paths[0])
    assert len(table) == len(PLANTED) * len(DEMO_LAYERS)
    assert table["pairwise_accuracy"].between(0, 1).all() and table["top1_accuracy"].between(0, 1).all()
    assert table["p_pairwise"].between(2 / 101 - 1e-12, 1).all()      # folds' p merged: 2 x their mean
    # each stimulus among its own test fold's stimuli (every fold holds >= 2 of the 24)
    assert np.allclose(table["chance_top1"], table["n_folds"] / table["n_stimuli"])
    sidecar = json.loads(paths[0].with_suffix(".json").read_text())
    assert sidecar["Permutations"] == 100 and "pairwise_accuracy" in sidecar and "roi" not in sidecar


def test_probes_recover_the_categories(outputs):
    layers = read(outputs["out"] / "model-alexnet" / "task-shapes_model-alexnet_probing.tsv")
    assert list(layers["layer"]) == DEMO_LAYERS and set(layers["kind"]) == {"categorical"}
    assert (layers["chance"] == 0.25).all() and (layers["n_classes"] == 4).all()
    assert (layers["score"] > 0.5).all() and (layers["p_permutation"] < 0.05).all(), layers
    summary = read(outputs["out"] / "group" / f"{PREFIX}_desc-summary_probing.tsv").set_index("roi")
    assert summary.loc["early", "significant"] and summary.loc["late", "significant"], summary
    assert not summary.loc["control", "significant"] and summary.loc["control", "mean"] < 0.4


def test_drivers_rank_the_planted_responses(outputs):
    out = outputs["out"]
    planted = planted_responses(outputs["bids"], ["01"])["01"]
    stim_ids = [f"{category}{index + 1:02d}" for category in CATEGORIES for index in range(N_PER_CATEGORY)]
    table = read(out / "sub-01" / "func" / f"sub-01_{PREFIX}_model-alexnet_drivers.tsv")
    for roi in ("early", "late"):
        mask = np.asarray(nib.load(out / "sub-01" / "func" / f"sub-01_{PREFIX}_label-{roi}_mask.nii.gz").dataobj) > 0
        truth = planted[:, mask].mean(axis=1)  # in the demo's order (stim_ids)
        rows = table[table["roi"] == roi].set_index("stim_id").loc[stim_ids]
        # the ROI mean averages voxels of random-sign tuning: a small signal in noise (rho 0.76 in early)
        assert spearmanr(rows["measured"], truth)[0] > 0.6, roi
        assert sorted(rows["rank_measured"].astype(int)) == list(range(1, 25))
    every = read(out / "group" / f"{PREFIX}_model-alexnet_drivers.tsv").drop_duplicates(["subject", "roi"])
    chosen = every.groupby("roi")["layer"].agg(lambda layers: layers.value_counts().idxmax())
    assert chosen["early"] == PLANTED["early"], every[["subject", "roi", "layer", "layer_r"]]
    assert set(every.loc[every["roi"] == "late", "layer"]) <= {"features.12", "classifier.1", "classifier.4"}
    held_out_r = every.groupby("roi")["layer_r"].mean()  # the best of 5 layers: biased upwards without signal
    assert held_out_r["early"] > held_out_r["control"] + 0.15 and held_out_r["late"] > held_out_r["control"] + 0.3
    sidecar = json.loads((out / "sub-01" / "func" / f"sub-01_{PREFIX}_model-alexnet_drivers.json").read_text())
    assert set(sidecar["LayerScores"]["early"]) == set(DEMO_LAYERS)


def test_saliency_maps_are_written_for_the_top_predicted_stimuli(outputs):
    out = outputs["out"]
    table = read(out / "sub-01" / "func" / f"sub-01_{PREFIX}_model-alexnet_drivers.tsv")
    with np.load(out / "sub-01" / "func" / f"sub-01_{PREFIX}_model-alexnet_label-early_saliency.npz") as saliency:
        top = table[table["roi"] == "early"].sort_values("rank_predicted")["stim_id"].head(2)
        assert list(saliency["stim_ids"]) == list(top)
        assert saliency["display"].dtype == np.uint8 and saliency["display"].shape[-1] == 3
        for method in ("vanilla", "smoothgrad"):
            maps = saliency[f"maps_{method}"]
            assert maps.shape == saliency["display"].shape[:3] and (maps >= 0).all() and maps.max() > 0
        assert str(saliency["layer"]) == table[table["roi"] == "early"]["layer"].iloc[0]
        predicted = table[table["roi"] == "early"].set_index("stim_id").loc[list(top), "predicted"]
        assert np.all(np.isfinite(saliency["predicted"])) and len(predicted) == 2


def test_group_drivers_summary(outputs):
    summary = read(outputs["out"] / "group" / f"{PREFIX}_model-alexnet_desc-summary_drivers.tsv")
    early = summary[summary["roi"] == "early"]
    assert len(early) == 24 and (early["n_subjects"] == 4).all()
    assert early["rank_measured"].iloc[0] == 1  # sorted by the measured ranking
    assert abs(early["mean_z_measured"].mean()) < 1e-9  # z-scores over stimuli average 0


def test_rerun_resumes_and_records_the_stages(outputs):
    assert outputs["first"] == outputs["second"]
    status = json.loads(next(outputs["out"].glob("sub-01/log/*_status.json")).read_text())
    assert {"decoding:alexnet", "probing", "drivers"} <= set(status["stages"])
    assert any(rel.endswith("_saliency.npz") for rel in status["stages"]["drivers"]["outputs"])


def test_unknown_annotation_is_a_spec_error(demo_dataset: Path, tmp_path: Path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("probing: {enabled: true, permutations: 100}",
                                 "probing: {enabled: true, annotations: [animacy]}"))
    code = main([str(demo_dataset), str(tmp_path / "out"), "participant", "--spec", str(spec), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 65
    assert "no annotation 'animacy'" in err and "available: category, trial_type" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "sub-01").exists()


def test_new_outputs_pass_the_bids_validator_and_name_no_entity(outputs):
    from tests.integration.test_bids_outputs import _errors, _validate

    out = outputs["out"]
    assert _errors(_validate(out)) == []
    for sidecar in [*out.glob("sub-01/func/*_decoding.json"), *out.glob("sub-01/func/*_probing.json"),
                    *out.glob("sub-01/func/*_drivers.json"), *out.glob("model-*/*_probing.json")]:
        keys = set(json.loads(sidecar.read_text()))
        assert not keys & PYBIDS_ENTITY_NAMES, sidecar.name


def test_small_test_folds_are_flagged(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """12 folds of the 24 stimuli: each held-out stimulus has one other candidate (chance top-1 0.5),
    and the log says that the accuracies are coarse and how to get more candidates."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace(ANALYSES, "  decoding: {enabled: true, permutations: 20, cv: kfold, n_folds: 12}\n"))
    out = tmp_path / "out"
    assert main([str(demo_dataset), str(out), "participant", "--spec", str(spec), "--no-progress",
                 "--participant-label", "01"]) == 0
    text = " ".join(capsys.readouterr().err.split())
    assert "12 of 12 folds hold fewer than 3 (2, 2, 2" in text and "analyses.decoding.n_folds" in text
    table = read(out / "sub-01" / "func" / f"sub-01_{PREFIX}_model-alexnet_decoding.tsv")
    assert np.allclose(table["chance_top1"], 0.5) and (table["n_folds"] == 12).all()
    assert table["pairwise_accuracy"].between(0, 1).all()     # the mean of 24 stimuli's 0 / 0.5 / 1
    assert np.allclose(table["pairwise_accuracy"] * 48, np.round(table["pairwise_accuracy"] * 48))
