"""Readable report figures: robust colour limits, template underlay, RDM units, noise-ceiling
bands, one definition of the best layer, and the encoding flags (unit level; the reports built
from the demo outputs are checked in test_report.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from bids_dnn.io import derivatives as drv  # noqa: E402
from bids_dnn.report import figures as figs  # noqa: E402


def _image(data: np.ndarray):  # noqa: ANN202 - a nibabel image
    import nibabel as nib

    return nib.Nifti1Image(data.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))


def _t_map_with_one_extreme_voxel(rng: np.random.Generator) -> np.ndarray:
    data = np.full((12, 12, 12), np.nan)
    data[2:10, 2:10, 2:10] = rng.normal(0.0, 2.5, (8, 8, 8))
    data[5, 5, 5] = 202.0
    return data


def test_robust_limit_is_the_percentile_not_the_extreme_voxel(rng: np.random.Generator) -> None:
    data = _t_map_with_one_extreme_voxel(rng)
    finite = np.abs(data[np.isfinite(data)])
    limit = figs.robust_abs_limit([_image(data)])
    assert limit == pytest.approx(np.percentile(finite, 99.0), rel=1e-5)
    assert limit < 15.0  # the voxel at 202 does not set the scale
    # zeros (the hidden voxels of a thresholded map) do not pull the limit down
    thresholded = np.where(np.abs(np.nan_to_num(data)) > 4.0, data, 0.0)
    shown = np.abs(thresholded[np.isfinite(thresholded) & (thresholded != 0)])
    assert figs.robust_abs_limit([_image(thresholded)]) == pytest.approx(np.percentile(shown, 99.0), rel=1e-5)
    assert figs.robust_abs_limit([_image(np.full((3, 3, 3), np.nan))]) == 1.0
    note = figs.robust_limit_note(limit, [_image(data)])
    assert "99th percentile of |value|" in note and f"±{limit:.3g}" in note
    n_beyond = int((finite > limit * (1 + 1e-6)).sum())
    assert f"{n_beyond} voxel(s) beyond it" in note


def test_stat_map_rows_default_to_the_robust_limit(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure
    from nilearn import plotting

    seen: dict[str, list[tuple[float, float | None]]] = {"slices": [], "glass": []}
    originals = {"slices": plotting.plot_stat_map, "glass": plotting.plot_glass_brain}

    def spy(kind: str):  # noqa: ANN202
        def wrapped(*args: object, **kwargs: object) -> object:
            seen[kind].append((float(kwargs["vmax"]), kwargs.get("vmin")))
            return originals[kind](*args, **kwargs)
        return wrapped

    monkeypatch.setattr(plotting, "plot_stat_map", spy("slices"))
    monkeypatch.setattr(plotting, "plot_glass_brain", spy("glass"))
    image = _image(_t_map_with_one_extreme_voxel(rng))
    background = _image(np.ones((12, 12, 12)))
    figs.draw_stat_map_rows(Figure(figsize=(11, 2.3)), [("t", image)], background, glass=[image], n_cuts=2)
    limit = figs.robust_abs_limit([image])
    assert seen["slices"] == [(pytest.approx(limit, rel=1e-6), None)]
    # the glass brain uses the same symmetric scale (not one starting at the data's minimum)
    assert seen["glass"] == [(pytest.approx(limit, rel=1e-6), pytest.approx(-limit, rel=1e-6))]


def test_template_underlay_in_mni_spaces_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MNI152* spaces get nilearn's bundled template (no network: sockets refuse); other spaces
    the participant's own mean image."""
    import nibabel as nib

    from bids_dnn.report.inputs import TEMPLATE_DESCRIPTION, is_template_space, map_background

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    mni = drv.OutputLayout(tmp_path / "mni", "shapes", "MNI152NLin2009cAsym")
    image, description = map_background(mni, ["01"])
    assert description == TEMPLATE_DESCRIPTION
    assert image.shape[:3] == (99, 117, 95) and np.asarray(image.dataobj).max() > 0  # ICBM152 at 2 mm
    assert np.allclose(np.diag(image.affine)[:3], 2.0)
    assert is_template_space("MNI152NLin6Asym") and not is_template_space("T1w")
    native = drv.OutputLayout(tmp_path / "native", "shapes", "T1w")
    betas = native.betas("01")
    betas.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.full((4, 4, 4, 3), -2.0, np.float32), np.eye(4)), betas)
    image, description = map_background(native, ["01"])
    assert "betas" in description and np.allclose(np.asarray(image.dataobj), 2.0)


def test_rdm_colour_bars_state_the_measure() -> None:
    from matplotlib.figure import Figure

    assert figs.rdm_unit("correlation") == "1 - Pearson r"
    assert figs.rdm_unit("crossnobis") == "crossnobis distance"
    assert figs.rdm_unit("newmeasure") == "newmeasure dissimilarity"
    rng = np.random.default_rng(0)
    panels = []
    for name in ("early", "late", "control"):
        x = rng.normal(size=(6, 5))
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        panels.append((name, d))
    fig = Figure(figsize=(9, 6))
    figs.draw_rdm_grid(fig, panels, ["a", "a", "a", "b", "b", "b"], seed=0, max_cols=2,
                       value_label=figs.rdm_unit("crossnobis"))
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 3
    assert all(ax.get_ylabel() == "crossnobis distance" for ax in bars)


def _span(patch: object) -> tuple[float, float]:
    ys = np.asarray(patch.get_path().transformed(patch.get_patch_transform()).vertices)[:, 1] \
        if hasattr(patch, "get_patch_transform") else np.asarray(patch.get_xy())[:, 1]
    return float(ys.min()), float(ys.max())


def test_encoding_profile_draws_each_rois_noise_ceiling() -> None:
    from matplotlib.figure import Figure

    table = pd.DataFrame({"roi": ["early"] * 2 + ["late"] * 2, "layer": ["a", "b"] * 2,
                          "mean_r2": [0.1, 0.05, 0.2, 0.25], "sem_r2": [0.01] * 4})
    fig = Figure()
    figs.draw_line_profile(fig, table, ["a", "b"], "mean_r2", "R2", "t", error="sem_r2",
                           ceiling={"early": (0.55, 0.65), "late": (0.4, 0.4)})
    ax = fig.axes[0]
    spans = [_span(p) for p in ax.patches]
    assert any(low == pytest.approx(0.55) and high == pytest.approx(0.65) for low, high in spans)
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert any(np.allclose(line.get_ydata(), 0.4) for line in dashed)
    assert ax.get_ylim()[1] >= 0.65  # the ceiling is in view
    assert "noise ceiling (ROI colour)" in [t.get_text() for t in ax.get_legend().get_texts()]


# ---------------------------------------------------------------------------------------
# One definition of the best layer
# ---------------------------------------------------------------------------------------


def test_best_layer_only_among_significant_layers() -> None:
    from bids_dnn.rsa import best_significant_layer

    scores = np.array([[0.30, 0.20, 0.10], [0.32, 0.21, 0.12], [0.29, 0.22, 0.09], [0.31, 0.19, 0.11]])
    assert best_significant_layer(scores, np.array([False, False, False])) is None
    assert best_significant_layer(scores, np.array([True, True, True])) == 0
    # the highest-scoring layer is not significant: the choice is among the significant ones
    assert best_significant_layer(scores, np.array([False, True, True])) == 1
    assert best_significant_layer(scores, np.array([False, False, True])) == 2
    assert best_significant_layer(scores[:1], np.array([True, True, True])) is None


def test_participant_summary_has_no_best_layer_without_a_significant_one() -> None:
    from bids_dnn.report.participant_report import best_scoring_layer

    table = pd.DataFrame({"layer": ["a", "b", "c"], "score": [0.05, 0.2, 0.1], "p_permutation": [0.3, 0.06, 0.01]})
    assert best_scoring_layer("m", "roi", table, 0.05)["layer"] == "c"  # b scores higher but p >= alpha
    none = best_scoring_layer("m", "roi", table.assign(p_permutation=0.5), 0.05)
    assert none["layer"].startswith("none") and np.isnan(none["score"])


# ---------------------------------------------------------------------------------------
# Encoding flags
# ---------------------------------------------------------------------------------------


def test_encoding_flags() -> None:
    from bids_dnn.encoding import at_alpha_grid_edge, outside_unit_interval
    from bids_dnn.report.common import encoding_table_warnings

    assert outside_unit_interval(np.array([-8.8, -0.01, 0.0, 0.5, 1.0, 2.98, np.nan])).tolist() == \
        [True, True, False, False, False, True, False]
    grid = list(np.logspace(-4, 8, 25))
    chosen = np.array([1e-4, 1e8, 1.0, 10.0, np.nan, grid[0] * (1 + 1e-9)])
    assert at_alpha_grid_edge(chosen, grid).tolist() == [True, True, False, False, False, True]
    assert not at_alpha_grid_edge(np.array([5.0]), [5.0]).any()  # a one-value grid chooses nothing
    table = pd.DataFrame({"roi": ["early", "control"], "layer": ["features.2", "features.2"],
                          "normalized_r2": [2.98, np.nan], "normalized_r2_out_of_range": [True, False],
                          "alpha_at_grid_edge": [0.05, 0.6]})
    warnings = encoding_table_warnings(table, "normalized_r2", "normalized_r2_out_of_range", "alpha_at_grid_edge")
    assert len(warnings) == 2
    assert "outside [0, 1] for early features.2 (2.98)" in warnings[0] and "control" not in warnings[0]
    assert "control features.2 (60%)" in warnings[1] and "early" not in warnings[1]
    assert encoding_table_warnings(table.iloc[:0], "normalized_r2", "normalized_r2_out_of_range",
                                   "alpha_at_grid_edge") == []
