"""Searchlight-ready patterns and score maps (bids_dnn.searchlight.patterns / neighbourhoods) against planted
truth and direct numpy loops."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.searchlight import (complete_runs, drop_nonfinite_voxels, scores_to_mask_voxels, sphere_neighbourhoods,
                                  usable_patterns, voxel_mask, voxel_size_from_affine)


def run_data(rng: np.random.Generator, n_runs: int = 3, n_cond: int = 5, n_vox: int = 12):
    """Per-run betas and residuals, no missing value."""
    betas = rng.standard_normal((n_runs, n_cond, n_vox))
    residuals = [rng.standard_normal((20 + r, n_vox)) for r in range(n_runs)]
    return betas, residuals


def test_complete_runs_flags_runs_with_any_missing_estimate(rng):
    betas, _ = run_data(rng, n_runs=4)
    betas[1, 2, 7] = np.nan      # run 1 lacks one estimate
    betas[3, 0, :] = np.nan      # run 3 lacks a whole condition
    np.testing.assert_array_equal(complete_runs(betas), [True, False, True, False])
    assert complete_runs(np.zeros((3, 4, 0))).tolist() == [False, False, False]   # no voxels: nothing complete
    with pytest.raises(ValueError, match="n_runs, n_cond, n_voxels"):
        complete_runs(np.zeros((3, 4)))


def test_usable_patterns_averages_runs_and_drops_planted_bad_voxels(rng):
    betas, residuals = run_data(rng)
    betas[0, 1, 2] = np.nan                     # one run misses it: the mean over the others stays finite
    betas[:, 3, 5] = np.nan                     # no run has condition 3 at voxel 5: dropped
    residuals[1][4, 9] = np.inf                 # bad residual in one run: dropped
    with pytest.warns(RuntimeWarning):                     # voxel 5: nanmean of an empty slice
        patterns, voxels = usable_patterns(betas, residuals, per_run=False)
    np.testing.assert_array_equal(voxels, [v for v in range(12) if v not in (5, 9)])
    expected = np.empty((5, voxels.size))
    for c in range(5):
        for j, v in enumerate(voxels):
            values = betas[:, c, v]
            expected[c, j] = values[np.isfinite(values)].mean()
    np.testing.assert_allclose(patterns, expected, rtol=1e-14)


def test_usable_patterns_per_run_needs_every_run_estimate(rng):
    betas, residuals = run_data(rng)
    betas[0, 1, 2] = np.nan                     # enough for crossnobis to drop voxel 2
    patterns, voxels = usable_patterns(betas, residuals, per_run=True)
    np.testing.assert_array_equal(voxels, [v for v in range(12) if v != 2])
    np.testing.assert_array_equal(patterns, betas[:, :, voxels])
    no_residuals, all_voxels = usable_patterns(betas[1:], [], per_run=True)   # ready-made betas
    np.testing.assert_array_equal(all_voxels, np.arange(12))
    np.testing.assert_array_equal(no_residuals, betas[1:])


def test_drop_nonfinite_voxels_keeps_finite_columns_contiguous(rng):
    patterns = rng.standard_normal((2, 4, 7))
    patterns[1, 3, 2] = np.nan
    patterns[0, 0, 6] = -np.inf
    voxels = np.array([3, 8, 10, 11, 20, 21, 30])
    kept, kept_voxels = drop_nonfinite_voxels(patterns, voxels)
    np.testing.assert_array_equal(kept_voxels, [3, 8, 11, 20, 21])
    np.testing.assert_array_equal(kept, patterns[:, :, [0, 1, 3, 4, 5]])
    assert kept.flags.c_contiguous
    with pytest.raises(ValueError, match="voxels"):
        drop_nonfinite_voxels(patterns, voxels[:3])


def test_voxel_mask_marks_the_given_brain_voxels(rng):
    brain = rng.random((5, 6, 4)) < 0.6
    coords = np.argwhere(brain)                  # C order, as np.flatnonzero(brain)
    voxels = np.sort(rng.choice(coords.shape[0], 17, replace=False))
    mask = voxel_mask(brain, voxels)
    expected = np.zeros(brain.shape, dtype=bool)
    for v in voxels:
        expected[tuple(coords[v])] = True
    np.testing.assert_array_equal(mask, expected)
    # the mask's voxels in C order are the given brain voxels, in order
    np.testing.assert_array_equal(np.flatnonzero(mask[brain]), voxels)


def test_voxel_size_from_affine_undoes_a_rotation():
    nib_affines = pytest.importorskip("nibabel.affines")
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 3.0, 1.5])
    affine[:3, 3] = [-90.0, 12.0, 7.0]
    np.testing.assert_allclose(voxel_size_from_affine(affine), [2.0, 3.0, 1.5], rtol=1e-14)
    np.testing.assert_allclose(voxel_size_from_affine(affine), nib_affines.voxel_sizes(affine), rtol=1e-14)


def test_scores_to_mask_voxels_places_scores_at_their_centres(rng):
    mask = np.zeros((7, 7, 7), dtype=bool)
    mask[1:6, 1:6, 1:6] = True
    mask[3, 3, 3] = False
    nb = sphere_neighbourhoods(mask, 2.0, (1.0, 1.0, 1.0), min_voxels=15)
    assert 0 < nb.n_centres < nb.n_mask_voxels
    scores = rng.standard_normal((3, nb.n_centres)).astype(np.float32)
    values = scores_to_mask_voxels(scores, nb)
    assert values.shape == (3, int(mask.sum())) and values.dtype == np.float64
    expected = np.full((3, int(mask.sum())), np.nan)
    for i, centre in enumerate(nb.centres):
        expected[:, centre] = scores[:, i]
    np.testing.assert_array_equal(values, expected)
    # a range of centres: only those are placed
    part = scores_to_mask_voxels(scores[1, 4:9], nb, centre_range=(4, 9))
    assert part.shape == (1, int(mask.sum()))
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(part[0])), np.sort(nb.centres[4:9]))
    np.testing.assert_array_equal(part[0, nb.centres[4:9]], scores[1, 4:9])
    with pytest.raises(ValueError, match="centres"):
        scores_to_mask_voxels(scores[:, :-1], nb)
