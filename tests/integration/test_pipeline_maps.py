"""End to end on the demo dataset: searchlight, encoding and weighted-RSA outputs.

Planted truth (bids_dnn.workflows.demo): ROI ``early`` follows ``features.2``, ``late`` follows
``classifier.4``, ``control`` and everything outside the ROIs is noise.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bids_dnn.cli.main import main
from bids_dnn.io.derivatives import OutputLayout, read_tsv
from bids_dnn.searchlight import sphere_neighbourhoods

TASK, SPACE = "shapes", "MNI152NLin2009cAsym"
SUBJECTS = ("01", "02", "03", "04")


def layout(out: Path) -> OutputLayout:
    return OutputLayout(out, TASK, SPACE)


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def roi_mask(out: Path, subject: str, roi: str) -> np.ndarray:
    return load(layout(out).roi_mask(subject, roi)) > 0


@pytest.mark.parametrize("roi, layer", [("early", "features.2"), ("late", "classifier.4")])
def test_searchlight_finds_planted_signal(demo_outputs: Path, roi: str, layer: str) -> None:
    """Per subject the planted layer's searchlight scores are higher inside its ROI than outside any ROI,
    and the group t map peaks inside the ROI."""
    lay = layout(demo_outputs)
    for subject in SUBJECTS:
        scores = load(lay.searchlight_map(subject, "alexnet", layer, "spearman"))
        inside = roi_mask(demo_outputs, subject, roi)
        any_roi = np.any([roi_mask(demo_outputs, subject, r) for r in ("early", "late", "control")], axis=0)
        outside = np.isfinite(scores) & ~any_roi
        # spheres of 8 mm reach 2 voxels beyond an ROI: compare with voxels far from every ROI
        far = outside & ~scipy_dilate(any_roi, 2)
        assert np.nanmean(scores[inside]) > np.nanmean(scores[far]) + 0.1, subject
    # group mean score: its peak lies in (or next to) the planted ROI
    mean = np.mean([load(lay.searchlight_map(s, "alexnet", layer, "spearman")) for s in SUBJECTS], axis=0)
    peak = np.unravel_index(np.nanargmax(mean), mean.shape)
    assert scipy_dilate(roi_mask(demo_outputs, "01", roi), 1)[peak]


def scipy_dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=iterations)


def test_searchlight_sidecar_and_centres(demo_outputs: Path) -> None:
    """The map's centres are those of the stated radius / min_voxels on the map's own mask."""
    path = layout(demo_outputs).searchlight_map("01", "alexnet", "features.2", "spearman")
    sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["RadiusMM"] == 8 and sidecar["MinVoxels"] == 10 and sidecar["BrainRDM"] == "crossnobis"
    values = load(path)
    assert np.isfinite(values).sum() == sidecar["NumberOfCentres"]
    assert np.nanmax(np.abs(values)) <= 1.0


def test_group_searchlight_t_equals_scipy(demo_outputs: Path) -> None:
    """Group t = one-sample t of the Fisher-z participant maps (scipy), voxel by voxel."""
    lay = layout(demo_outputs)
    maps = np.stack([load(lay.searchlight_map(s, "alexnet", "classifier.4", "spearman")) for s in SUBJECTS])
    t = load(lay.group_map("searchlight", "alexnet", "classifier.4", "t"))
    finite = np.isfinite(maps).all(axis=0)
    expected = scipy.stats.ttest_1samp(np.arctanh(maps[:, finite]), 0.0, axis=0).statistic
    np.testing.assert_allclose(t[finite], expected, rtol=1e-4, atol=1e-4)  # float32 maps
    assert np.isnan(t[~finite]).all()
    pfwe = load(lay.group_map("searchlight", "alexnet", "classifier.4", "pfwe"))
    # 4 subjects: 16 sign flips, so no FWE p can be below 1/16
    assert np.nanmin(pfwe) >= 1 / 16 - 1e-7


def test_searchlight_parts_merge_to_single_run(demo_dataset: Path, demo_outputs: Path, tmp_path: Path) -> None:
    """Four --searchlight-part runs, then a plain run that merges them: maps identical to one run."""
    out = tmp_path / "out"
    shutil.copytree(demo_outputs, out, ignore=shutil.ignore_patterns("sub-02*"))
    spec = demo_dataset / "code" / "spec.yaml"
    base = [str(demo_dataset), str(out), "participant", "--participant-label", "02", "--spec", str(spec),
            "--no-progress"]
    for k in range(1, 5):
        assert main([*base, "--searchlight-part", f"{k}/4"]) == 0
    parts = sorted((out / "sub-02" / "parts").glob("*.npz"))
    assert len(parts) == 4
    assert not layout(out).status("02").is_file()  # a part is not a finished participant
    assert main(base) == 0
    for layer in ("features.2", "classifier.4"):
        merged = load(layout(out).searchlight_map("02", "alexnet", layer, "spearman"))
        single = load(layout(demo_outputs).searchlight_map("02", "alexnet", layer, "spearman"))
        np.testing.assert_array_equal(merged, single)


def test_searchlight_part_without_searchlight_is_usage_error(demo_dataset: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    text = (demo_dataset / "code" / "spec.yaml").read_text().replace("enabled: true, radius_mm",
                                                                      "enabled: false, radius_mm")
    spec.write_text(text)
    code = main([str(demo_dataset), str(tmp_path / "out"), "participant", "--spec", str(spec),
                 "--searchlight-part", "1/2", "--no-progress"])
    assert code == 64
    assert "--searchlight-part" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0/4", "5/4", "2", "a/b"])
def test_searchlight_part_syntax(bad: str, tmp_path: Path) -> None:
    assert main([str(tmp_path), str(tmp_path / "out"), "participant", "--searchlight-part", bad]) == 64


def test_encoding_outputs_are_consistent(demo_outputs: Path) -> None:
    """ROI table means equal the means of the written maps over the ROI's voxels; the ROI ceiling is
    Spearman-Brown of the mean split-half r (inverted from the voxel map), and the normalised score
    is mean_r2 / ceiling where the ceiling is at least 0.1, else n/a."""
    lay = layout(demo_outputs)
    table = read_tsv(lay.encoding_table("01", "alexnet"))
    assert set(table["roi"]) == {"early", "late", "control"} and table["subject"].eq("01").all()
    ceiling = load(lay.encoding_map("01", None, None, "noiseceiling"))
    for row in table.itertuples():
        mask = roi_mask(demo_outputs, "01", row.roi)
        r2 = load(lay.encoding_map("01", "alexnet", row.layer, "r2"))
        assert row.mean_r2 == pytest.approx(np.nanmean(r2[mask]), abs=1e-5)
        rel = ceiling[mask][np.isfinite(ceiling[mask])]
        split_half = np.mean(rel / (2 - rel))
        assert row.noise_ceiling == pytest.approx(2 * split_half / (1 + split_half), abs=1e-5)
        if row.noise_ceiling >= 0.1:
            assert row.normalized_r2 == pytest.approx(row.mean_r2 / row.noise_ceiling, rel=1e-6)
        else:
            assert np.isnan(row.normalized_r2)
        assert row.cv == "kfold" and row.n_folds == 6
    # the noise ceiling is higher where a signal was planted
    means = {roi: np.nanmean(ceiling[roi_mask(demo_outputs, "01", roi)]) for roi in ("early", "late", "control")}
    assert min(means["early"], means["late"]) > means["control"] + 0.1


def test_encoding_recovers_planted_layers(demo_outputs: Path) -> None:
    """Issue #6 acceptance on the demo (group summary of held-out R2 over 4 subjects).

    ``early``: the planted ``features.2`` has the highest mean R2 of the 5 layers, and it is
    positive (measured: 0.126 +- 0.026 SEM, next ``features.5`` 0.077).
    ``late``: the planted ``classifier.4`` is best or tied within one SEM of it (measured: best,
    0.272 +- 0.009, then ``features.12`` 0.263 and ``classifier.1`` 0.260). A tie is allowed
    because on these 24 images the three top layers of the random AlexNet are nearly the same
    representation (RDM Spearman of ``classifier.4`` with ``classifier.1`` 0.85, ``features.12``
    0.72; without any noise, ridge from 20 training images predicts the planted late response
    with R2 0.82 from ``classifier.4`` and 0.81 from either of the others).
    ``control`` (noise only): mean r about 0 (|r| < 0.1; the SEM over 4 subjects is ~0.04),
    R2 <= 0 (held-out R2 of pure noise is slightly negative), and the ceiling-normalised score is
    n/a: the ROI noise ceiling is below the 0.1 that :func:`bids_dnn.encoding.scores.ceiling_normalised`
    requires.
    """
    summary = read_tsv(layout(demo_outputs).group_table("alexnet", "summary", suffix="encoding"))
    for roi, planted, strict in (("early", "features.2", True), ("late", "classifier.4", False)):
        rows = summary[summary["roi"] == roi].set_index("layer")
        assert len(rows) == 5
        best = rows["mean_r2"].max()
        mine = rows.loc[planted]
        assert mine["mean_r2"] > 0 and mine["p"] < 0.05, (roi, mine.to_dict())
        if strict:
            assert rows["mean_r2"].idxmax() == planted, rows["mean_r2"].to_dict()
        else:
            assert best - mine["mean_r2"] <= mine["sem_r2"], rows[["mean_r2", "sem_r2"]].to_dict()
        assert np.isfinite(mine["mean_normalized_r2"]) and mine["mean_noise_ceiling"] >= 0.1
    control = summary[summary["roi"] == "control"]
    assert len(control) == 5
    assert (control["mean_r"].abs() < 0.1).all(), control["mean_r"].tolist()
    assert (control["mean_r2"] <= 0).all()
    assert (control["mean_noise_ceiling"] < 0.1).all() and control["mean_normalized_r2"].isna().all()


def test_group_encoding_summary_matches_subject_tables(demo_outputs: Path) -> None:
    lay = layout(demo_outputs)
    summary = read_tsv(lay.group_table("alexnet", "summary", suffix="encoding"))
    tables = pd.concat([read_tsv(lay.encoding_table(s, "alexnet")) for s in SUBJECTS])
    for row in summary.itertuples():
        values = tables[(tables["roi"] == row.roi) & (tables["layer"] == row.layer)]["mean_r2"].to_numpy()
        assert row.mean_r2 == pytest.approx(values.mean(), rel=1e-6)
        assert row.t == pytest.approx(scipy.stats.ttest_1samp(values, 0.0).statistic, rel=1e-6)
        subset = tables[(tables["roi"] == row.roi) & (tables["layer"] == row.layer)]
        assert row.mean_r == pytest.approx(subset["mean_r"].mean(), rel=1e-6)
        assert row.sem_r == pytest.approx(scipy.stats.sem(subset["mean_r"]), rel=1e-6)
        ceiling = subset["noise_ceiling"].mean()
        assert row.mean_noise_ceiling == pytest.approx(ceiling, rel=1e-6)
        if ceiling >= 0.1:
            assert row.mean_normalized_r2 == pytest.approx(row.mean_r2 / ceiling, rel=1e-6)
        else:
            assert np.isnan(row.mean_normalized_r2)


def test_weighted_rsa_recovers_planted_layers(demo_outputs: Path) -> None:
    """The fitted weights put most weight on the planted layer; held-out scores are high in signal ROIs."""
    lay = layout(demo_outputs)
    summary = read_tsv(lay.group_table("alexnet", "weighted")).set_index("roi")
    weights = read_tsv(lay.group_table("alexnet", "weights"))
    for roi, layer in (("early", "features.2"), ("late", "classifier.4")):
        assert summary.loc[roi, "mean"] > 0.3 and summary.loc[roi, "p"] < 0.05
        assert summary.loc[roi, "best_single_layer"] == layer
        mean_weights = weights[weights["roi"] == roi].groupby("layer")["weight"].mean()
        assert mean_weights.idxmax() == layer
    assert summary.loc["control", "mean"] < summary.loc["early", "mean"]
    scores = read_tsv(lay.group_table("alexnet", "weightedscores"))
    assert len(scores) == 3 * len(SUBJECTS)


def test_neighbourhood_radius_in_mm_uses_voxel_size() -> None:
    """Distances strictly below the radius (rsatoolbox): 8 mm at 4 mm voxels is 27 voxels, 9 mm is 57."""
    mask = np.ones((9, 9, 9), dtype=bool)
    assert sphere_neighbourhoods(mask, 8.0, (4.0, 4.0, 4.0)).sizes().max() == 27
    assert sphere_neighbourhoods(mask, 9.0, (4.0, 4.0, 4.0)).sizes().max() == 57
    # anisotropic voxels: brute force over offsets in mm
    offsets = np.array([(i, j, k) for i in range(-3, 4) for j in range(-3, 4) for k in range(-5, 6)])
    expected = int((np.sqrt(((offsets * [4.0, 4.0, 2.0]) ** 2).sum(axis=1)) < 9.0).sum())
    big = np.ones((15, 15, 15), dtype=bool)
    assert sphere_neighbourhoods(big, 9.0, (4.0, 4.0, 2.0)).sizes().max() == expected == 101


def test_noise_ceilings_bracket_planted_layer(demo_outputs: Path) -> None:
    """In the signal ROIs the planted layer's mean score lies between the lower and upper ceiling."""
    summary = read_tsv(layout(demo_outputs).group_table("alexnet", "summary")).set_index(["roi", "layer"])
    for roi, layer in (("early", "features.2"), ("late", "classifier.4")):
        row = summary.loc[(roi, layer)]
        assert row["noise_ceiling_lower"] < row["noise_ceiling_upper"]
        assert row["noise_ceiling_lower"] - 0.05 <= row["mean"] <= row["noise_ceiling_upper"]


def test_variance_partitioning_recovers_planted_layers(demo_outputs: Path) -> None:
    """Each signal ROI's RDMs are explained uniquely by its planted layer's group; components add up."""
    lay = layout(demo_outputs)
    summary = read_tsv(lay.group_roi_table("variancepartitionsummary")).set_index(["roi", "component"])
    assert summary.loc[("early", "unique:early"), "mean_r2"] > 5 * summary.loc[("early", "unique:late"), "mean_r2"]
    assert summary.loc[("late", "unique:late"), "mean_r2"] > 5 * summary.loc[("late", "unique:early"), "mean_r2"]
    table = read_tsv(lay.group_roi_table("variancepartition"))
    for (subject, roi), part in table.groupby(["subject", "roi"]):
        parts = part.set_index("component")["r2"]
        assert parts["unique:early"] + parts["unique:late"] + parts["shared:early+late"] == \
            pytest.approx(parts["total"], abs=1e-9)


def test_variance_partitioning_needs_two_groups_and_known_models(tmp_path: Path) -> None:
    from bids_dnn.errors import SpecError
    from bids_dnn.spec import parse_spec

    base = {"models": [{"name": "alexnet", "layers": ["features.2"]}], "rois": {"atlas": "a.nii.gz"}}
    with pytest.raises(SpecError, match="2 to 4"):
        parse_spec({**base, "analyses": {"variance_partitioning": {"enabled": True, "groups": {"a": ["alexnet"]}}}})
    with pytest.raises(SpecError, match="names no model"):
        parse_spec({**base, "analyses": {"variance_partitioning": {
            "enabled": True, "groups": {"a": ["alexnet"], "b": ["vgg16:features.3"]}}}})


@pytest.mark.slow
def test_default_demo_group_maps_reach_fwe_significance(tmp_path: Path) -> None:
    """``bids_dnn demo`` writes 6 participants by default: 2^6 = 64 sign flips, so the group
    searchlight map of each planted layer has FWE-significant voxels, in and next to its ROI
    (4 participants: smallest p_FWE 1/16, never significant), and the report shows it
    thresholded. Encoding maps (per-voxel accuracies vary between participants) reach FDR
    significance in the signal ROIs. Two layers and fewer ROI permutations keep the run short;
    the group maps use the demo spec's statistics."""
    bids, out = tmp_path / "bids", tmp_path / "out"
    assert main(["demo", str(bids)]) == 0
    assert len(pd.read_csv(bids / "participants.tsv", sep="\t")) == 6
    text = (bids / "code" / "spec.yaml").read_text()
    text = text.replace("layers: [features.2, features.5, features.12, classifier.1, classifier.4]",
                        "layers: [features.2, classifier.4]").replace("permutations: 1000}", "permutations: 100}")
    assert "layers: [features.2, classifier.4]" in text
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    for level in ("participant", "group"):
        assert main([str(bids), str(out), level, "--spec", str(spec), "--no-progress"]) == 0
    lay = layout(out)
    signal = scipy_dilate(roi_mask(out, "01", "early") | roi_mask(out, "01", "late"), 1)
    for layer, roi in (("features.2", "early"), ("classifier.4", "late")):
        pfwe = load(lay.group_map("searchlight", "alexnet", layer, "pfwe"))
        significant = np.isfinite(pfwe) & (pfwe <= 0.05)
        assert significant.sum() >= 10, layer
        # a searchlight sphere (8 mm, 4 mm voxels) reaches 2 voxels beyond its ROI
        assert not (significant & ~scipy_dilate(roi_mask(out, "01", roi), 2)).any(), layer
        assert np.nanmin(pfwe) == pytest.approx(1 / 64)
    pfdr = load(lay.group_map("encoding", "alexnet", "features.2", "pfdr"))
    significant = np.isfinite(pfdr) & (pfdr <= 0.05)
    assert significant.sum() >= 10 and (significant & signal).sum() >= 0.8 * significant.sum()
    # the report shows the searchlight maps thresholded (figure threshold p_FWE), not the fallback
    page = (out / "group.html").read_text(encoding="utf-8")
    assert len(re.findall(r'data-col="threshold"[^>]*>p_FWE \(max-T\)<', page)) >= 2
