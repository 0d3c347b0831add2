"""CKA end to end on the demo dataset (``analyses.cka``): the planted layer has the highest CKA in
its ROI, the control ROI has none, outputs and reports are complete, a rerun resumes.

The demo's ``late`` ROI carries the principal components of ``classifier.4``, whose activations
for these 24 images are nearly the same as those of ``features.12`` and ``classifier.1`` (layer x
layer linear CKA 1.00 on the demo): there the planted layer is tied with them (within one SEM of
the best), and all three are far above the early layers. ``early`` (``features.2``) is unambiguous.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_dnn.cli.main import main
from bids_dnn.workflows.demo import DEMO_LAYERS, PLANTED
from tests._specs import SMALL_SPEC

SPACE = "MNI152NLin2009cAsym"
SPEC = (SMALL_SPEC.replace("layers: [features.2, features.12]", f"layers: [{', '.join(DEMO_LAYERS)}]")
        .replace("  encoding: {enabled: false}\n",
                 "  encoding: {enabled: false}\n  cka: {enabled: true, permutations: 200, bootstrap: 100}\n"))


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"subject": str})


@pytest.fixture(scope="module")
def cka_outputs(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cka")
    out = root / "out"
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    argv = [str(demo_dataset), str(out), "participant", "--spec", str(spec), "--no-progress"]
    assert main(argv) == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("sub-*/func/*_cka.tsv")}
    assert main(argv) == 0  # a rerun with the same spec resumes: nothing is recomputed
    second = {p.name: p.stat().st_mtime_ns for p in out.glob("sub-*/func/*_cka.tsv")}
    assert main([str(demo_dataset), str(out), "group", "--spec", str(spec), "--no-progress"]) == 0
    return {"out": out, "first": first, "second": second}


def test_planted_layer_has_the_highest_group_cka_in_its_roi(cka_outputs):
    summary = read(cka_outputs["out"] / "group" / f"task-shapes_space-{SPACE}_model-alexnet_desc-summary_cka.tsv")
    assert set(summary["estimator"]) == {"unbiased"} and set(summary["kernel"]) == {"linear"}
    early = summary[summary["roi"] == "early"].set_index("layer")
    assert early["mean"].idxmax() == PLANTED["early"], early["mean"]
    assert early.loc[PLANTED["early"], "significant"] and early.loc[PLANTED["early"], "best_layer_cv"]
    late = summary[summary["roi"] == "late"].set_index("layer")
    best = late["mean"].idxmax()
    planted = PLANTED["late"]
    assert late.loc[planted, "mean"] >= late.loc[best, "mean"] - late.loc[best, "sem"], late[["mean", "sem"]]
    assert late.loc[planted, "mean"] > late.loc["features.2", "mean"] + 0.1
    control = summary[summary["roi"] == "control"]
    assert not control["significant"].any() and (control["p_bonferroni"] > 0.05).all()
    assert (control["mean"].abs() < 0.1).all()  # unbiased: about 0 without signal


def test_participant_tables_and_sidecars(cka_outputs):
    out = cka_outputs["out"]
    paths = sorted(out.glob(f"sub-*/func/sub-*_task-shapes_space-{SPACE}_model-alexnet_cka.tsv"))
    assert len(paths) == 4
    table = read(paths[0])
    assert len(table) == len(PLANTED) * len(DEMO_LAYERS)
    assert table["cka"].between(-1, 1).all() and table["p_permutation"].between(1 / 201 - 1e-9, 1).all()
    assert (table["ci_low"] <= table["ci_high"]).all() and set(table["n_permutations"]) == {200}
    sidecar = json.loads(paths[0].with_suffix(".json").read_text())
    assert sidecar["Kernel"] == "linear" and sidecar["Estimator"] == "unbiased" and sidecar["Seed"] == 42
    assert "cka" in sidecar and "p_permutation" in sidecar and "roi" not in sidecar  # entity-named columns left out
    early = table[table["roi"] == "early"].set_index("layer")
    assert early.loc[PLANTED["early"], "p_permutation"] == pytest.approx(1 / 201)


def test_group_table_holds_every_participant(cka_outputs):
    table = read(cka_outputs["out"] / "group" / f"task-shapes_space-{SPACE}_model-alexnet_cka.tsv")
    assert sorted(set(table["subject"])) == ["01", "02", "03", "04"]
    sidecar = json.loads((cka_outputs["out"] / "group" /
                          f"task-shapes_space-{SPACE}_model-alexnet_desc-summary_cka.json").read_text())
    assert sidecar["Correction"] == "fdr_bh" and sidecar["Estimator"] == "unbiased"


def test_layer_by_layer_cka_in_the_model_folder(cka_outputs):
    table = read(cka_outputs["out"] / "model-alexnet" / "task-shapes_model-alexnet_cka.tsv")
    square = table.pivot(index="layer_a", columns="layer_b", values="cka").loc[DEMO_LAYERS, DEMO_LAYERS]
    np.testing.assert_allclose(np.diag(square), 1.0, atol=1e-10)
    np.testing.assert_allclose(square.to_numpy(), square.to_numpy().T, atol=1e-10)
    assert set(table["model_b"]) == {"alexnet"}


def test_rerun_resumes_and_records_the_stage(cka_outputs):
    assert cka_outputs["first"] == cka_outputs["second"]
    status = json.loads(next(cka_outputs["out"].glob("sub-01/log/*_status.json")).read_text())
    assert "cka:alexnet" in status["stages"]
    assert any(rel.endswith("_model-alexnet_cka.tsv") for rel in status["stages"]["cka:alexnet"]["outputs"])


def test_reports_have_a_cka_section(cka_outputs):
    out = cka_outputs["out"]
    participant = (out / "sub-01.html").read_text()
    group = (out / "group.html").read_text()
    assert 'id="cka"' in participant and 'id="cka-alexnet"' in participant
    assert 'id="cka"' in group and 'id="group-cka-alexnet"' in group
    assert "Kornblith S, Norouzi M, Lee H, Hinton G (2019)" in participant and "Kornblith" in group
    assert (out / "group" / "figures" / "task-shapes_model-alexnet_desc-layercka_heatmap.png").is_file()
