"""Assembling patterns from arrays: beta rows per stimulus, usable voxels, ROI RDMs, reliability, small ROIs."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from bids_dnn.brain.assembly import (average_volumes_by_stimulus, complete_runs, drop_unusable_voxels,
                                     finite_nonzero_mask, mean_betas_volume, resolve_brain_rdm_measure, roi_rdm,
                                     roi_reliability, split_small_rois, stimulus_betas_of_run)
from bids_dnn.errors import AnalysisError


def _crossnobis_reference(run_betas: np.ndarray, precision_diag: np.ndarray | None = None) -> np.ndarray:
    """Mean over ordered pairs of different runs of ``d_r^T P d_s / n_voxels`` per stimulus pair
    (upper triangle, row by row), written with explicit loops."""
    n_runs, n_stimuli, n_voxels = run_betas.shape
    weights = np.ones(n_voxels) if precision_diag is None else precision_diag
    out = []
    for k in range(n_stimuli):
        for m in range(k + 1, n_stimuli):
            differences = run_betas[:, k] - run_betas[:, m]
            values = [np.sum(differences[r] * weights * differences[s]) for r, s in permutations(range(n_runs), 2)]
            out.append(np.mean(values) / n_voxels)
    return np.array(out)


# ---------------------------------------------------------------------------------------
# beta rows per stimulus
# ---------------------------------------------------------------------------------------


def test_stimulus_betas_of_run_places_stimulus_conditions_only(rng: np.random.Generator) -> None:
    """Rows follow the task's stimulus order; nuisance conditions, stimuli without signal and
    stimuli absent from the run are NaN and not estimated."""
    conditions = ["b", "nuisance_button", "d", "a", "c"]
    betas = rng.normal(size=(5, 7))
    stim_ids = ["a", "b", "c", "d", "e"]
    rows, estimated = stimulus_betas_of_run(conditions, betas, stim_ids, without_signal=["c"])
    assert rows.shape == (5, 7) and rows.dtype == np.float64
    np.testing.assert_array_equal(estimated, [True, True, False, True, False])
    np.testing.assert_array_equal(rows[0], betas[3])
    np.testing.assert_array_equal(rows[1], betas[0])
    np.testing.assert_array_equal(rows[3], betas[2])
    assert np.isnan(rows[[2, 4]]).all()


def test_average_volumes_by_stimulus_matches_group_means(rng: np.random.Generator) -> None:
    """Each stimulus row is the mean of its volumes; volumes of no stimulus (-1) are left out."""
    values = rng.normal(size=(11, 8))
    volume_stimulus = [2, 0, -1, 2, 2, 1, -1, 0]
    means, counts = average_volumes_by_stimulus(values, volume_stimulus, n_stimuli=4)
    labels = np.array(volume_stimulus)
    np.testing.assert_array_equal(counts, [2, 1, 3, 0])
    for stimulus in range(3):
        np.testing.assert_allclose(means[stimulus], values[:, labels == stimulus].mean(axis=1), rtol=1e-12)
    assert np.isnan(means[3]).all()


def test_finite_nonzero_mask() -> None:
    """A voxel is in when finite in every volume and non-zero in at least one."""
    data = np.zeros((2, 2, 1, 3))
    data[0, 0, 0] = [0.0, 1.0, 0.0]      # in
    data[0, 1, 0] = [0.0, 0.0, 0.0]      # zero everywhere: out
    data[1, 0, 0] = [1.0, np.nan, 2.0]   # not finite: out
    data[1, 1, 0] = [-3.0, 1.0, np.inf]  # not finite: out
    np.testing.assert_array_equal(finite_nonzero_mask(data)[..., 0], [[True, False], [False, False]])


def test_mean_betas_volume_matches_nanmean(rng: np.random.Generator) -> None:
    """The run mean (NaN runs left out) of every stimulus, on the mask's voxels; zero elsewhere."""
    mask = rng.random((4, 3, 2)) > 0.4
    run_betas = rng.normal(size=(3, 5, int(mask.sum())))
    run_betas[1, 2] = np.nan  # stimulus 2 not estimated in run 1
    volume = mean_betas_volume(run_betas, mask)
    assert volume.shape == (4, 3, 2, 5) and volume.dtype == np.float32
    expected = np.zeros((4, 3, 2, 5))
    for stimulus in range(5):
        finite_runs = [r for r in range(3) if not np.isnan(run_betas[r, stimulus]).any()]
        expected[mask, stimulus] = run_betas[finite_runs, stimulus].mean(axis=0)
    np.testing.assert_allclose(volume, expected, rtol=1e-6, atol=1e-7)
    assert not volume[~mask].any()


# ---------------------------------------------------------------------------------------
# usable voxels
# ---------------------------------------------------------------------------------------


def test_drop_unusable_voxels_removes_voxels_with_non_finite_residuals(rng: np.random.Generator) -> None:
    """A voxel with a non-finite residual or estimate (of an estimated stimulus) counts as
    non-finite and is removed from betas, residuals and mask; a NaN of a stimulus not estimated
    in a run removes nothing."""
    mask = np.zeros((2, 3, 2), bool)
    mask[0] = True
    mask[1, 0] = True  # 8 voxels
    run_betas = rng.normal(size=(2, 3, 8))
    residuals = [rng.normal(size=(10, 8)), rng.normal(size=(12, 8))]
    estimated = np.ones((2, 3), bool)
    estimated[0, 1] = False
    run_betas[0, 1] = np.nan           # not estimated: no voxel removed for it
    residuals[1][4, 6] = np.nan        # voxel 6: non-finite residual
    run_betas[1, 0, 2] = -np.inf       # voxel 2: non-finite estimate
    constant = np.zeros(8, bool)
    constant[0] = True                 # voxel 0: constant in a run
    kept_betas, kept_residuals, used_mask, counts = drop_unusable_voxels(
        run_betas, residuals, estimated, mask, constant, np.zeros(8, bool))
    usable = np.array([1, 3, 4, 5, 7])
    assert counts == {"brain_mask": 8, "used": 5, "left_out": 3, "left_out_constant": 1, "left_out_nonfinite": 2}
    np.testing.assert_array_equal(kept_betas, run_betas[:, :, usable])
    for kept, full in zip(kept_residuals, residuals):
        np.testing.assert_array_equal(kept, full[:, usable])
    assert used_mask.sum() == 5 and not (used_mask & ~mask).any()
    np.testing.assert_array_equal(np.flatnonzero(used_mask[mask]), usable)


def test_drop_unusable_voxels_keeps_everything_when_all_usable(rng: np.random.Generator) -> None:
    mask = np.ones((2, 2, 1), bool)
    run_betas = rng.normal(size=(2, 3, 4))
    residuals = [rng.normal(size=(6, 4))]
    kept_betas, kept_residuals, used_mask, counts = drop_unusable_voxels(
        run_betas, residuals, np.ones((2, 3), bool), mask, np.zeros(4, bool), np.zeros(4, bool))
    assert kept_betas is run_betas and kept_residuals is residuals and used_mask is mask
    assert counts["used"] == 4 and counts["left_out"] == 0


# ---------------------------------------------------------------------------------------
# ROI RDMs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("requested, n_runs, expected", [
    ("auto", 1, "correlation"), ("auto", 2, "crossnobis"), ("auto", 5, "crossnobis"),
    ("correlation", 1, "correlation"), ("euclidean", 3, "euclidean"), ("crossnobis", 2, "crossnobis"),
])
def test_resolve_brain_rdm_measure(requested: str, n_runs: int, expected: str) -> None:
    assert resolve_brain_rdm_measure(requested, n_runs) == expected


def test_resolve_brain_rdm_measure_refuses_crossnobis_with_one_run() -> None:
    with pytest.raises(AnalysisError, match="at least 2 runs"):
        resolve_brain_rdm_measure("crossnobis", 1)


def test_complete_runs() -> None:
    run_betas = np.ones((3, 2, 4))
    run_betas[1, 0, 3] = np.nan
    np.testing.assert_array_equal(complete_runs(run_betas), [True, False, True])


def test_roi_rdm_crossnobis_uses_the_complete_runs(rng: np.random.Generator) -> None:
    """Crossnobis without noise normalisation is the explicit cross-run distance over the runs
    that contain every stimulus (a run missing a stimulus is left out)."""
    run_betas = rng.normal(size=(4, 5, 6))
    run_betas[2, 3] = np.nan
    residuals = [rng.normal(size=(20, 6)) for _ in range(4)]
    vector = roi_rdm(run_betas, residuals, [18] * 4, "crossnobis", noise_normalization="none",
                     noise_estimator="shrinkage_diag")
    np.testing.assert_allclose(vector, _crossnobis_reference(run_betas[[0, 1, 3]]), rtol=1e-10, atol=1e-12)


def test_roi_rdm_crossnobis_univariate_weights_voxels_by_noise_precision(rng: np.random.Generator) -> None:
    """Univariate noise normalisation: each voxel weighted by the inverse of its residual
    variance (sum of squares of demeaned residuals / dof, averaged over runs); a voxel with a
    non-finite residual is left out."""
    run_betas = rng.normal(size=(3, 4, 5))
    residuals = [rng.normal(scale=[0.5, 1.0, 2.0, 1.5, 3.0], size=(30, 5)) for _ in range(3)]
    residuals[0][7, 4] = np.inf
    dofs = [25, 26, 27]
    vector = roi_rdm(run_betas, residuals, dofs, "crossnobis", noise_normalization="univariate",
                     noise_estimator="shrinkage_diag")
    variances = np.mean([((r[:, :4] - r[:, :4].mean(axis=0)) ** 2).sum(axis=0) / d
                         for r, d in zip(residuals, dofs)], axis=0)
    np.testing.assert_allclose(vector, _crossnobis_reference(run_betas[:, :, :4], 1.0 / variances),
                               rtol=1e-10, atol=1e-12)


def test_roi_rdm_correlation_of_the_run_mean_patterns(rng: np.random.Generator) -> None:
    """Other measures: the distance of the run-mean patterns (NaN estimates left out of the
    mean), on the voxels with finite means and residuals."""
    run_betas = rng.normal(size=(3, 6, 8))
    run_betas[0, 2] = np.nan
    residuals = [rng.normal(size=(15, 8)) for _ in range(3)]
    residuals[2][0, 5] = np.nan
    vector = roi_rdm(run_betas, residuals, [12] * 3, "correlation", noise_normalization="none",
                     noise_estimator="shrinkage_diag")
    means = np.nanmean(run_betas, axis=0)
    np.testing.assert_allclose(vector, pdist(np.delete(means, 5, axis=1), "correlation"), rtol=1e-9, atol=1e-12)


def test_roi_rdm_without_residuals(rng: np.random.Generator) -> None:
    """Ready-made betas have no residuals: every finite voxel is used."""
    run_betas = rng.normal(size=(2, 4, 5))
    vector = roi_rdm(run_betas, [], [], "euclidean", noise_normalization="none", noise_estimator="shrinkage_diag")
    np.testing.assert_allclose(vector, pdist(run_betas.mean(axis=0), "euclidean"), rtol=1e-10)
    crossnobis = roi_rdm(run_betas, [], [], "crossnobis", noise_normalization="none",
                         noise_estimator="shrinkage_diag")
    np.testing.assert_allclose(crossnobis, _crossnobis_reference(run_betas), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_roi_rdm_refusals(rng: np.random.Generator) -> None:
    run_betas = rng.normal(size=(3, 4, 5))
    run_betas[1:, 0, 0] = np.nan
    with pytest.raises(AnalysisError, match="at least 2 runs that contain every stimulus"):
        roi_rdm(run_betas, [], [], "crossnobis", noise_normalization="none", noise_estimator="diag")
    empty = np.full((2, 4, 3), np.nan)
    with pytest.raises(AnalysisError, match="ROI V1 has no voxel with finite estimates"):
        roi_rdm(empty, [], [], "correlation", noise_normalization="none", noise_estimator="diag", name="ROI V1")


# ---------------------------------------------------------------------------------------
# reliability and small ROIs
# ---------------------------------------------------------------------------------------


def test_roi_reliability_is_the_median_spearman_brown_split_half(rng: np.random.Generator) -> None:
    """Odd- and even-run means correlated per voxel, stepped up with Spearman-Brown, median over
    the ROI's voxels; None with a single run."""
    signal = rng.normal(size=(8, 10))
    run_betas = signal[None] + rng.normal(scale=0.7, size=(4, 8, 10))
    rois = {"a": np.arange(10) < 6, "b": np.arange(10) >= 6}
    result = roi_reliability(run_betas, rois)
    odd, even = run_betas[0::2].mean(axis=0), run_betas[1::2].mean(axis=0)
    for roi, columns in rois.items():
        r = np.array([np.corrcoef(odd[:, v], even[:, v])[0, 1] for v in np.flatnonzero(columns)])
        assert result[roi] == pytest.approx(float(np.median(2 * r / (1 + r))), rel=1e-10)
    assert result["a"] > 0.5  # planted signal is reliable
    assert roi_reliability(run_betas[:1], rois) == {"a": None, "b": None}


def test_split_small_rois() -> None:
    masks = {"big": np.ones(12, bool), "tiny": np.eye(1, 12, dtype=bool)[0], "empty": np.zeros(12, bool)}
    usable, small = split_small_rois(masks, min_voxels=5)
    assert list(usable) == ["big"] and usable["big"] is masks["big"]
    assert small == {"tiny": 1, "empty": 0}
    assert split_small_rois({}, 5) == ({}, {})
    with pytest.raises(AnalysisError, match="every ROI has fewer than rois.min_voxels = 20"):
        split_small_rois(masks, min_voxels=20)
