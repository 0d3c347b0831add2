"""Encoding samples, run grouping, ROI summaries and the backend choice (bids_dnn.encoding.samples / folds /
scores / _solver) against planted truth and direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.encoding import (MIN_CEILING, himalaya_backend_for_device, make_folds, modelled_voxels, roi_scores,
                               stimulus_responses, stimulus_runs)


def disjoint_runs(rng: np.random.Generator, run_of: np.ndarray, n_vox: int = 6) -> np.ndarray:
    """(n_runs, n_stimuli, n_vox) betas; stimulus s has estimates in run ``run_of[s]`` only."""
    n_runs, n_stim = int(run_of.max()) + 1, run_of.size
    betas = np.full((n_runs, n_stim, n_vox), np.nan)
    betas[run_of, np.arange(n_stim)] = rng.standard_normal((n_stim, n_vox))
    return betas


def test_stimulus_runs_recovers_planted_runs(rng):
    run_of = rng.permutation(np.repeat(np.arange(3), 4))
    np.testing.assert_array_equal(stimulus_runs(disjoint_runs(rng, run_of)), run_of)
    folds = make_folds(run_of.size, groups=stimulus_runs(disjoint_runs(rng, run_of)))
    assert [set(run_of[test]) for _, test in folds] == [{0}, {1}, {2}]       # leave one run out


def test_stimulus_runs_is_none_without_disjoint_runs(rng):
    run_of = np.array([0, 0, 1, 1, 2, 2])
    repeated = disjoint_runs(rng, run_of)
    repeated[1, 0] = 0.5                                    # stimulus 0 shown in runs 0 and 1
    assert stimulus_runs(repeated) is None
    unseen = disjoint_runs(rng, run_of)
    unseen[2, 5, 3] = np.nan                                # stimulus 5 incomplete in its only run
    assert stimulus_runs(unseen) is None
    assert stimulus_runs(rng.standard_normal((1, 4, 3))) is None      # one run
    assert stimulus_runs(np.zeros((3, 4, 0))) is None                 # no voxels
    assert stimulus_runs(rng.standard_normal((3, 4, 3))) is None      # every run shows every stimulus
    with pytest.raises(ValueError, match="n_runs, n_stimuli, n_voxels"):
        stimulus_runs(np.zeros((3, 4)))


def test_stimulus_responses_average_the_finite_run_estimates(rng):
    betas = rng.standard_normal((3, 5, 4))
    betas[0, 1, :] = np.nan
    betas[:, 2, 3] = np.nan
    with pytest.warns(RuntimeWarning):                     # stimulus 2, voxel 3: nanmean of an empty slice
        responses = stimulus_responses(betas)
    for s in range(5):
        for v in range(4):
            finite = betas[np.isfinite(betas[:, s, v]), s, v]
            if finite.size:
                assert responses[s, v] == pytest.approx(finite.mean(), rel=1e-14)
            else:
                assert np.isnan(responses[s, v])


def test_modelled_voxels_keep_finite_voxels_inside_the_regions(rng):
    betas = rng.standard_normal((2, 4, 8))
    betas[:, 1, 5] = np.nan                                # no estimate of stimulus 1: not modelled
    betas[0, 2, 6] = np.nan                                # one run left: modelled
    left = np.arange(8) < 3
    right = np.arange(8) >= 6
    with pytest.warns(RuntimeWarning):                     # voxel 5: nanmean of an empty slice
        np.testing.assert_array_equal(modelled_voxels(betas), [0, 1, 2, 3, 4, 6, 7])
    with pytest.warns(RuntimeWarning):
        np.testing.assert_array_equal(modelled_voxels(betas, [left, right]), [0, 1, 2, 6, 7])
    with pytest.raises(ValueError, match="at least one"):
        modelled_voxels(np.ones((2, 3, 4)), [])
    with pytest.raises(ValueError, match="shape"):
        modelled_voxels(np.ones((2, 3, 4)), [np.ones(5, bool)])


def test_roi_scores_match_a_direct_computation(rng):
    n_folds, n_targets = 4, 30
    r = rng.uniform(-0.2, 0.8, n_targets)
    r2 = rng.uniform(-0.1, 0.6, n_targets)
    grid = [0.1, 1.0, 10.0, 100.0]
    alphas = rng.choice(grid, (n_folds, n_targets))
    reliability = rng.uniform(0.3, 0.9, n_targets)
    r[3], r2[3], reliability[4] = np.nan, np.nan, np.nan
    alphas[:, 7] = np.nan                                   # a target without a fit
    columns = np.array([1, 3, 4, 9, 12, 20, 25])
    out = roi_scores(r, r2, alphas, reliability, columns, grid)

    finite_r = r[columns][np.isfinite(r[columns])]
    finite_r2 = r2[columns][np.isfinite(r2[columns])]
    rel = reliability[columns][np.isfinite(reliability[columns])]
    split_half = np.mean(rel / (2 - rel))                  # invert Spearman-Brown, average, re-apply
    ceiling = 2 * split_half / (1 + split_half)
    chosen = alphas[:, columns].ravel()
    assert out["n_voxels"] == 7
    assert out["mean_r"] == pytest.approx(finite_r.mean(), rel=1e-12)
    assert out["mean_r2"] == pytest.approx(finite_r2.mean(), rel=1e-12)
    assert out["noise_ceiling"] == pytest.approx(ceiling, rel=1e-12)
    assert out["normalized_r2"] == pytest.approx(finite_r2.mean() / ceiling, rel=1e-12)
    assert out["normalized_r2_out_of_range"] is bool(not 0 <= finite_r2.mean() / ceiling <= 1)
    assert out["median_alpha"] == pytest.approx(np.median(chosen))
    assert out["alpha_at_grid_edge"] == pytest.approx(np.isin(chosen, [0.1, 100.0]).mean(), rel=1e-12)

    # a target without a fit makes the median undefined; the edge share ignores it
    with_unfit = roi_scores(r, r2, alphas, reliability, np.array([7, 9]), grid)
    assert np.isnan(with_unfit["median_alpha"])
    assert with_unfit["alpha_at_grid_edge"] == pytest.approx(np.isin(alphas[:, 9], [0.1, 100.0]).mean())


def test_roi_scores_without_signal_or_voxels_are_nan(rng):
    r = rng.uniform(-0.1, 0.1, 10)
    r2 = rng.uniform(-0.1, 0.1, 10)
    alphas = np.full((3, 10), 1.0)
    low = np.full(10, MIN_CEILING / 2)                      # ceiling below the minimum: no ratio
    out = roi_scores(r, r2, alphas, low, np.arange(10), [1.0, 10.0])
    assert np.isnan(out["normalized_r2"]) and out["normalized_r2_out_of_range"] is False
    empty = roi_scores(r, r2, alphas, low, np.array([], dtype=np.int64), [1.0, 10.0])
    assert empty["n_voxels"] == 0
    assert all(np.isnan(empty[k]) for k in ("mean_r", "mean_r2", "median_alpha", "noise_ceiling",
                                            "alpha_at_grid_edge"))


def test_himalaya_backend_follows_the_device():
    torch = pytest.importorskip("torch")
    assert himalaya_backend_for_device("cpu") == "numpy"
    assert himalaya_backend_for_device("auto") == ("torch_cuda" if torch.cuda.is_available() else "numpy")
    if torch.cuda.is_available():
        assert himalaya_backend_for_device("cuda:0") == "torch_cuda"
