"""End to end on the demo dataset: the planted ROI-layer correspondence is recovered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_dnn.cli.main import main
from bids_dnn.workflows.demo import PLANTED

SPACE = "MNI152NLin2009cAsym"


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def test_root_files(demo_outputs: Path) -> None:
    description = json.loads((demo_outputs / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_dnn"
    assert (demo_outputs / ".bidsignore").read_text().count("_relmat.tsv") == 1
    stimuli = read(demo_outputs / "task-shapes_stimuli.tsv")
    assert len(stimuli) == 24 and stimuli["sha256"].str.len().eq(64).all()
    # rows ordered by category, then file
    assert list(stimuli["category"]) == sorted(stimuli["category"])


def test_participant_outputs_exist(demo_outputs: Path) -> None:
    func = demo_outputs / "sub-01" / "func"
    betas = func / f"sub-01_task-shapes_space-{SPACE}_desc-stimuli_stat-effect_statmap.nii.gz"
    import nibabel as nib

    image = nib.load(betas)
    sidecar = json.loads(betas.with_name(betas.name.replace(".nii.gz", ".json")).read_text())
    assert image.shape[-1] == 24 and len(sidecar["VolumeStimuli"]) == 24
    for roi in PLANTED:
        rdm = read(func / f"sub-01_task-shapes_space-{SPACE}_label-{roi}_stat-crossnobis_relmat.tsv").to_numpy()
        assert rdm.shape == (24, 24)
        np.testing.assert_allclose(rdm, rdm.T, atol=1e-12)
        np.testing.assert_allclose(np.diag(rdm), 0, atol=1e-12)
    assert (demo_outputs / "model-alexnet" / "task-shapes_model-alexnet_features.h5").is_file()
    assert (demo_outputs / "sub-01.html").is_file() and (demo_outputs / "group.html").is_file()
    logs = list((demo_outputs / "sub-01" / "log").glob("*/provenance.json"))
    assert logs and json.loads(logs[0].read_text())["seed"] == 42


def test_model_rdm_matches_features(demo_outputs: Path) -> None:
    """The stored model RDM equals scipy's correlation distance of the stored features."""
    from scipy.spatial.distance import pdist, squareform

    from bids_dnn.features.store import read_features

    features = read_features(demo_outputs / "model-alexnet" / "task-shapes_model-alexnet_features.h5")
    rdm = read(demo_outputs / "model-alexnet" / "task-shapes_model-alexnet_layer-features2_stat-correlation_relmat.tsv")
    assert list(rdm.columns) == list(features.stim_ids)
    expected = squareform(pdist(features.layers["features.2"].astype(np.float64), "correlation"))
    np.testing.assert_allclose(rdm.to_numpy(), expected, atol=1e-10)


def test_planted_layer_scores_highest_per_subject_mean(demo_outputs: Path) -> None:
    table = read(demo_outputs / "group" / f"task-shapes_space-{SPACE}_model-alexnet_rsa.tsv")
    means = table.groupby(["roi", "layer"])["score"].mean()
    for roi, layer in PLANTED.items():
        if layer is not None:
            assert means[roi].idxmax() == layer, means[roi]


def test_group_summary_recovers_planted_truth(demo_outputs: Path) -> None:
    summary = read(demo_outputs / "group" / f"task-shapes_space-{SPACE}_model-alexnet_desc-summary_rsa.tsv")
    for roi, layer in PLANTED.items():
        rows = summary[summary["roi"] == roi].set_index("layer")
        if layer is None:
            # family-wise control: BH-FDR may pass a null ROI when most of the family is truly
            # non-null (it controls the false discovery *proportion*); Bonferroni must not.
            assert (rows["p_bonferroni"] > 0.05).all(), rows
            assert abs(rows["mean"]).max() < 0.2
        else:
            assert rows.loc[layer, "significant"]
            assert rows["mean"].idxmax() == layer
            assert bool(rows.loc[layer, "best_layer_cv"])
    # the participant-level permutation test: the control ROI is rarely significant
    table = read(demo_outputs / "group" / f"task-shapes_space-{SPACE}_model-alexnet_rsa.tsv")
    control = table[table["roi"] == "control"]
    assert (control["p_permutation"] < 0.01).sum() == 0
    late = table[(table["roi"] == "late") & (table["layer"] == PLANTED["late"])]
    assert (late["p_permutation"] < 0.01).all()


def test_group_statistics_match_scipy(demo_outputs: Path) -> None:
    from scipy import stats

    table = read(demo_outputs / "group" / f"task-shapes_space-{SPACE}_model-alexnet_rsa.tsv")
    summary = read(demo_outputs / "group" / f"task-shapes_space-{SPACE}_model-alexnet_desc-summary_rsa.tsv")
    row = summary[(summary["roi"] == "late") & (summary["layer"] == "features.12")].iloc[0]
    scores = table[(table["roi"] == "late") & (table["layer"] == "features.12")]["score"].to_numpy()
    result = stats.ttest_1samp(scores, 0.0, alternative="greater")
    assert row["mean"] == pytest.approx(scores.mean(), abs=1e-9)
    assert row["t"] == pytest.approx(result.statistic, rel=1e-7)
    assert row["p_ttest"] == pytest.approx(result.pvalue, rel=1e-6)
    np.testing.assert_allclose(summary["p_fdr"], stats.false_discovery_control(summary["p_group"], method="bh"),
                               rtol=1e-6)


def test_rerun_reuses_features(demo_dataset: Path, demo_outputs: Path, tmp_path: Path) -> None:
    """A second participant run on a copy of the outputs does not re-extract features."""
    out = tmp_path / "out"
    shutil.copytree(demo_outputs, out)
    feature_file = out / "model-alexnet" / "task-shapes_model-alexnet_features.h5"
    before = feature_file.stat().st_mtime_ns
    spec = demo_dataset / "code" / "spec.yaml"
    assert main([str(demo_dataset), str(out), "participant", "--participant-label", "02", "--spec", str(spec),
                 "--no-progress"]) == 0
    assert feature_file.stat().st_mtime_ns == before
    old = read(demo_outputs / "sub-02" / "func" / f"sub-02_task-shapes_space-{SPACE}_model-alexnet_rsa.tsv")
    new = read(out / "sub-02" / "func" / f"sub-02_task-shapes_space-{SPACE}_model-alexnet_rsa.tsv")
    pd.testing.assert_frame_equal(old, new)  # same seed, same numbers


def test_missing_stimulus_files_listed_exit_66(demo_copy: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (demo_copy / "stimuli" / "disc01.png").unlink()
    (demo_copy / "stimuli" / "grating02.png").write_bytes(b"")
    code = main([str(demo_copy), str(tmp_path / "out"), "participant", "--spec",
                 str(demo_copy / "code" / "spec.yaml")])
    text = capsys.readouterr().err
    assert code == 66
    assert "2 stimulus file(s)" in text and "disc01.png: not found" in text and "grating02.png: empty file" in text


def test_stimulus_path_escaping_dataset_exit_16(demo_copy: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    events = demo_copy / "sub-01" / "func" / "sub-01_task-shapes_run-1_events.tsv"
    table = read(events)
    table.loc[0, "stim_file"] = "../../etc/passwd"
    table.to_csv(events, sep="\t", index=False, na_rep="n/a")
    code = main([str(demo_copy), str(tmp_path / "out"), "participant", "--spec",
                 str(demo_copy / "code" / "spec.yaml")])
    assert code == 16
    assert "unsafe stimulus path" in capsys.readouterr().err


def test_partial_failure_is_never_exit_zero(demo_copy: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for path in (demo_copy / "derivatives" / "fmriprep" / "sub-02").rglob("*desc-preproc_bold.nii.gz"):
        path.unlink()
    code = main([str(demo_copy), str(tmp_path / "out"), "participant", "--participant-label", "01", "02",
                 "--spec", str(demo_copy / "code" / "spec.yaml"), "--no-progress"])
    text = capsys.readouterr().err
    assert code == 66
    assert "1 of 2 participants failed" in text and "sub-02" in text
    assert json.loads((tmp_path / "out" / "sub-01" / "log" / "task-shapes_status.json").read_text())["complete"]
    failed = json.loads((tmp_path / "out" / "sub-02" / "log" / "task-shapes_status.json").read_text())
    assert not failed.get("complete") and failed["failure"]["exit_code"] == 66  # recorded for the group level


def _spec_with_model(demo: Path, tmp_path: Path, model_yaml: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"models:\n  - {model_yaml}\nrois:\n  atlas: derivatives/rois/"
                    f"space-{SPACE}_atlas-planted_dseg.nii.gz\nanalyses: {{rsa: {{permutations: 10}}}}\n")
    return spec


def test_unknown_layer_exit_65_with_closest_names(demo_dataset: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec_with_model(demo_dataset, tmp_path, "{name: alexnet, weights: random, layers: [features.99]}")
    code = main([str(demo_dataset), str(tmp_path / "out"), "participant", "--spec", str(spec), "--no-progress"])
    text = capsys.readouterr().err
    assert code == 65
    assert "models[0].layers: 'features.99' is not a layer of alexnet; closest:" in text


def test_weights_missing_offline_exit_66(demo_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    spec = _spec_with_model(demo_dataset, tmp_path, "{name: alexnet, layers: top_level}")
    code = main([str(demo_dataset), str(tmp_path / "out"), "participant", "--spec", str(spec), "--no-progress"])
    text = capsys.readouterr().err
    assert code == 66
    assert "bids_dnn models fetch alexnet" in text
    assert not list((tmp_path / "out").rglob("*_features.h5"))


def test_analysis_error_exit_1(demo_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """crossnobis asked for a participant with a single run: exit 1 with the fix in the hint."""
    for run in (2, 3):
        (demo_copy / "sub-01" / "func" / f"sub-01_task-shapes_run-{run}_events.tsv").unlink()
    spec = tmp_path / "spec.yaml"
    spec.write_text((demo_copy / "code" / "spec.yaml").read_text() + "rdm: {brain: crossnobis}\n")
    code = main([str(demo_copy), str(tmp_path / "out"), "participant", "--participant-label", "01",
                 "--spec", str(spec), "--no-progress"])
    text = capsys.readouterr().err
    assert code == 1
    assert "'crossnobis' needs at least 2 runs" in text and "use 'correlation'" in text
