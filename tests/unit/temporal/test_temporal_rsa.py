"""Time-resolved RSA (bids_dnn.temporal.rsa) against brute-force loops with scipy, rsatoolbox and
the per-time-point library functions (float64, 1e-10). Seeded; runs in a few seconds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from bids_dnn.rsa import (COMPARISON_MEASURE_NAMES, RSATOOLBOX_NAMES, noise_ceiling, permutation_indices,
                          rdm_variance_partitioning, square_to_vector, vector_to_square)
from bids_dnn.temporal import rsa as T

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.inference import boot_noise_ceiling  # noqa: E402
from rsatoolbox.rdm import RDMs  # noqa: E402
from rsatoolbox.rdm import compare as rsa_compare  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)
SCIPY_MEASURES = {"spearman": lambda a, b: scipy.stats.spearmanr(a, b)[0],
                  "pearson": lambda a, b: scipy.stats.pearsonr(a, b)[0]}


def _pairs(n_cond: int) -> int:
    return n_cond * (n_cond - 1) // 2


def _permuted_vector(vector: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Stimulus labels permuted the explicit way: rows and columns of the square RDM together."""
    square = vector_to_square(vector)
    return square_to_vector(square[np.ix_(perm, perm)])


def _brute_force(brain, models, perms, measure, atol=1e-12):
    """Scores, null (n_models, n_times, n_perm), uncorrected p, max-over-time null and FWE p with
    explicit loops and scipy."""
    corr = SCIPY_MEASURES[measure]
    n_times, n_models, n_perm = brain.shape[0], models.shape[0], perms.shape[0]
    scores = np.array([[corr(models[m], brain[t]) for t in range(n_times)] for m in range(n_models)])
    null = np.empty((n_models, n_times, n_perm))
    for m in range(n_models):
        for p in range(n_perm):
            permuted = _permuted_vector(models[m], perms[p])
            for t in range(n_times):
                null[m, t, p] = corr(permuted, brain[t])
    p_values = (1 + np.sum(null >= scores[:, :, None] - atol, axis=2)) / (1 + n_perm)
    null_max = null.max(axis=1)
    p_fwe = (1 + np.sum(null_max[:, None, :] >= scores[:, :, None] - atol, axis=2)) / (1 + n_perm)
    return scores, p_values, null_max, p_fwe


# ----------------------------------------------------------------------------- time course
@pytest.mark.parametrize("measure", sorted(COMPARISON_MEASURE_NAMES))
def test_scores_match_rsatoolbox_at_every_time_point(rng, measure):
    brain = rng.random((7, _pairs(9)))
    models = rng.random((3, _pairs(9)))
    result = T.rsa_time_course(brain, models, measure=measure)
    assert result.scores.shape == (3, 7)
    assert result.p_values is None and result.n_permutations == 0
    ref = rsa_compare(RDMs(models), RDMs(brain), method=RSATOOLBOX_NAMES[measure])
    np.testing.assert_allclose(result.scores, ref, **TOL)


@pytest.mark.parametrize("measure", sorted(SCIPY_MEASURES))
@pytest.mark.parametrize(("n_times", "n_models"), [(10, 3), (2, 5)], ids=["times>models", "models>times"])
def test_permutation_test_matches_brute_force_loop(rng, measure, n_times, n_models):
    n_cond, n_perm = 8, 120
    brain = rng.random((n_times, _pairs(n_cond)))
    models = rng.random((n_models, _pairs(n_cond)))
    models[0] = 0.6 * brain[0] + 0.4 * models[0]  # one model that fits the first time point
    perms = permutation_indices(n_cond, n_perm, np.random.default_rng(3))
    result = T.rsa_time_course(brain, models, measure=measure, permutations=perms)
    scores, p_values, null_max, p_fwe = _brute_force(brain, models, perms, measure)
    np.testing.assert_allclose(result.scores, scores, **TOL)
    np.testing.assert_allclose(result.null_max, null_max, **TOL)
    np.testing.assert_allclose(result.p_values, p_values, **TOL)
    np.testing.assert_allclose(result.p_values_fwe, p_fwe, **TOL)
    assert result.n_permutations == n_perm
    assert np.all(result.p_values_fwe >= result.p_values)
    assert result.p_values[0, 0] < 0.05
    # drawing from a generator gives the draws of permutation_indices with that generator
    drawn = T.rsa_time_course(brain, models, measure=measure, n_permutations=n_perm, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(drawn.p_values, result.p_values)
    np.testing.assert_array_equal(drawn.null_max, result.null_max)


def test_every_time_point_sees_the_same_permutations(rng):
    """With identical RDMs at every time point, the null time course of a permutation is flat: its
    maximum over time is the null of any single time point, so the corrected p equals the
    uncorrected p (independent draws per time point would inflate the maximum)."""
    n_cond = 9
    brain = np.tile(rng.random(_pairs(n_cond)), (6, 1))
    models = rng.random((2, _pairs(n_cond)))
    models[1] = brain[0] + 0.5 * models[1]
    result = T.rsa_time_course(brain, models, n_permutations=300, rng=np.random.default_rng(1))
    np.testing.assert_allclose(result.p_values_fwe, result.p_values, **TOL)
    np.testing.assert_allclose(result.p_values, result.p_values[:, :1].repeat(6, axis=1), **TOL)


@pytest.mark.parametrize("measure", ["spearman", "corr_cov", "kendall_tau_a"])
def test_model_blocks_do_not_change_the_result(rng, monkeypatch, measure):
    brain = rng.random((5, _pairs(7)))
    models = rng.random((4, _pairs(7)))
    whole = T.rsa_time_course(brain, models, measure=measure, n_permutations=40, rng=np.random.default_rng(0))
    monkeypatch.setattr(T, "_NULL_BYTES", 1)  # one model per block
    blocks = T.rsa_time_course(brain, models, measure=measure, n_permutations=40, rng=np.random.default_rng(0))
    for name in ("scores", "p_values", "p_values_fwe", "null_max"):
        np.testing.assert_allclose(getattr(blocks, name), getattr(whole, name), **TOL)


def test_planted_time_window_is_significant_after_correction(rng):
    n_cond, n_times = 12, 20
    truth = rng.random(_pairs(n_cond))
    brain = rng.random((n_times, truth.size))
    brain[8:12] = truth + 0.3 * rng.random((4, truth.size))
    result = T.rsa_time_course(brain, truth, n_permutations=400, rng=np.random.default_rng(2))
    assert np.all(result.scores[0, 8:12] > 0.5)
    assert np.all(result.p_values_fwe[0, 8:12] <= 2 / 401)
    outside = np.r_[0:8, 12:n_times]
    assert np.all(result.p_values_fwe[0, outside] > 0.05)


def test_constant_time_point_gives_nan(rng):
    brain = rng.random((4, _pairs(6)))
    brain[2] = 1.0
    result = T.rsa_time_course(brain, rng.random(_pairs(6)), measure="pearson", n_permutations=30,
                               rng=np.random.default_rng(0))
    assert np.isnan(result.scores[0, 2]) and np.isnan(result.p_values[0, 2]) and np.isnan(result.p_values_fwe[0, 2])
    assert np.all(np.isfinite(np.delete(result.p_values_fwe, 2, axis=1)))
    assert np.all(np.isfinite(result.null_max))


def test_time_course_errors(rng):
    brain = rng.random((4, _pairs(6)))
    with pytest.raises(ValueError, match="n_times, n_pairs"):
        T.rsa_time_course(brain[0], brain[1])
    with pytest.raises(ValueError, match="pairs"):
        T.rsa_time_course(brain, rng.random(_pairs(7)))
    with pytest.raises(ValueError, match="rng"):
        T.rsa_time_course(brain, brain[0], n_permutations=10)
    with pytest.raises(ValueError, match="unknown comparison measure"):
        T.rsa_time_course(brain, brain[0], measure="kendall")
    with pytest.raises(ValueError, match="permutations"):
        T.rsa_time_course(brain, brain[0], permutations=np.zeros((3, 6), dtype=int))


# ----------------------------------------------------------------------------- temporal generalisation
@pytest.mark.parametrize("measure", sorted(SCIPY_MEASURES))
def test_temporal_generalization_matches_double_loop(rng, measure):
    brain = rng.random((9, _pairs(8)))
    brain[4:] += 0.5 * brain[3]  # some temporal structure
    corr = SCIPY_MEASURES[measure]
    ref = np.array([[corr(a, b) for b in brain] for a in brain])
    ours = T.temporal_generalization(brain, measure=measure)
    np.testing.assert_allclose(ours, ref, **TOL)
    np.testing.assert_array_equal(ours, ours.T)
    other = rng.random((5, _pairs(8)))
    between = T.temporal_generalization_between(brain, other, measure=measure)
    np.testing.assert_allclose(between, [[corr(a, b) for b in other] for a in brain], **TOL)


@pytest.mark.parametrize("measure", ["kendall_tau_a", "corr_cov"])
def test_temporal_generalization_other_measures_vs_rsatoolbox(rng, measure):
    brain = rng.random((6, _pairs(7)))
    ref = rsa_compare(RDMs(brain), RDMs(brain), method=RSATOOLBOX_NAMES[measure])
    np.testing.assert_allclose(T.temporal_generalization(brain, measure=measure), ref, **TOL)


# ----------------------------------------------------------------------------- noise ceiling
@pytest.mark.parametrize("measure", sorted(COMPARISON_MEASURE_NAMES))
def test_noise_ceiling_over_time_equals_loop(rng, measure):
    truth = rng.random((6, _pairs(8)))
    brains = truth + rng.random((5, 6, truth.shape[1]))
    lower, upper, lower_each, upper_each = T.noise_ceiling_over_time(brains, measure=measure, per_subject=True)
    assert lower.shape == upper.shape == (6,) and lower_each.shape == upper_each.shape == (5, 6)
    for t in range(6):
        ref = noise_ceiling(brains[:, t], measure, per_subject=True)
        np.testing.assert_allclose([lower[t], upper[t]], ref[:2], **TOL)
        np.testing.assert_allclose(lower_each[:, t], ref[2], **TOL)
        np.testing.assert_allclose(upper_each[:, t], ref[3], **TOL)
    assert np.all(lower < upper)


@pytest.mark.parametrize("measure", ["spearman", "pearson"])
def test_noise_ceiling_over_time_vs_rsatoolbox(rng, measure):
    truth = rng.random((4, _pairs(10)))
    brains = truth + 2.0 * rng.random((6, 4, truth.shape[1]))
    lower, upper = T.noise_ceiling_over_time(brains, measure=measure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = boot_noise_ceiling(RDMs(brains[:, 2]), method=RSATOOLBOX_NAMES[measure])
    np.testing.assert_allclose([lower[2], upper[2]], ref, **TOL)


def test_noise_ceiling_over_time_errors(rng):
    with pytest.raises(ValueError, match="n_subjects"):
        T.noise_ceiling_over_time(rng.random((4, _pairs(5))))
    with pytest.raises(ValueError, match="n_subjects"):
        T.noise_ceiling_over_time(rng.random((1, 3, _pairs(5))))


# ----------------------------------------------------------------------------- variance partitioning
@pytest.mark.parametrize("method", ["ols", "nnls"])
def test_variance_partitioning_over_time_equals_loop(rng, method):
    n_pairs = _pairs(9)
    groups = {"early": rng.random((2, n_pairs)), "late": rng.random((3, n_pairs)), "category": rng.random(n_pairs)}
    brain = rng.random((5, n_pairs)) + 0.8 * groups["late"][0]
    ours = T.variance_partitioning_over_time(brain, groups, method=method)
    assert ours.groups == ("early", "late", "category")
    for name, values in ours.components.items():
        assert values.shape == (5,)
        ref = [rdm_variance_partitioning(groups, brain[t], method=method).components[name] for t in range(5)]
        np.testing.assert_allclose(values, ref, **TOL)
    np.testing.assert_allclose(sum(v for k, v in ours.components.items() if k != "total"),
                               ours.components["total"], **TOL)
