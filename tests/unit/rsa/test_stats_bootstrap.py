"""Pattern and dual bootstraps against rsatoolbox on identical resampling indices, and the
weighted kernels against explicit resampled RDMs."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.stats

from bids_dnn.rsa import bootstrap as S
from bids_dnn.rsa.compare import COMPARISON_MEASURES
from bids_dnn.rsa.inference import noise_ceiling
from bids_dnn.rsa.measures import RSATOOLBOX_NAMES
from bids_dnn.rsa.resampling import (evaluate_resamples, pair_weights, resampled_vectors,
                                     stimulus_counts, weighted_ranks)
from bids_dnn.stats.bootstrap import bootstrap_indices

os.environ.setdefault("TQDM_DISABLE", "1")
rsatoolbox = pytest.importorskip("rsatoolbox")
import rsatoolbox.inference.evaluate as rsa_eval  # noqa: E402
from rsatoolbox.model import ModelFixed  # noqa: E402
from rsatoolbox.rdm import RDMs  # noqa: E402

TOL = dict(rtol=0, atol=1e-10)
MEASURES = list(COMPARISON_MEASURES)


def _problem(rng, n_cond=9, n_subj=4, n_models=3):
    n_pairs = n_cond * (n_cond - 1) // 2
    truth = rng.random(n_pairs)
    data = truth + rng.random((n_subj, n_pairs))
    models = np.vstack([truth + 2 * rng.random((n_models - 1, n_pairs)),
                        np.round(rng.random(n_pairs) * 3)])  # last model has ties
    return data, models


def _models(models):
    return [ModelFixed(f"m{j}", RDMs(models[j:j + 1])) for j in range(len(models))]


@pytest.fixture
def recorded(monkeypatch):
    """Record the draws rsatoolbox makes (its bootstrap_sample* functions, wrapped)."""
    rec: dict[str, list] = {"pattern": [], "rdm": [], "both_pattern": []}
    orig_p, orig_b = rsa_eval.bootstrap_sample_pattern, rsa_eval.bootstrap_sample

    def pattern(rdms, pattern_descriptor="index"):
        out = orig_p(rdms, pattern_descriptor)
        rec["pattern"].append(np.asarray(out[1]))
        return out

    def both(rdms, rdm_descriptor="index", pattern_descriptor="index"):
        out = orig_b(rdms, rdm_descriptor, pattern_descriptor)
        rec["rdm"].append(np.asarray(out[1]))
        rec["both_pattern"].append(np.asarray(out[2]))
        return out

    monkeypatch.setattr(rsa_eval, "bootstrap_sample_pattern", pattern)
    monkeypatch.setattr(rsa_eval, "bootstrap_sample", both)
    return rec


# ----------------------------------------------------------------------------- kernels
def test_weighted_ranks_equal_rankdata_of_expanded_vectors(rng):
    values = np.round(rng.random((3, 36)) * 6)  # many ties
    weights = pair_weights(stimulus_counts(rng.integers(0, 9, (5, 9)), 9))
    ranks = weighted_ranks(values, weights)
    per_row = weighted_ranks(np.broadcast_to(values, (5, 3, 36)).copy(), weights)
    np.testing.assert_array_equal(ranks, per_row)
    for b in range(5):
        keep = weights[b] > 0
        for r in range(3):
            expanded = np.repeat(values[r], weights[b].astype(int))
            ref = scipy.stats.rankdata(expanded)
            first = np.cumsum(weights[b].astype(int)) - weights[b].astype(int)
            np.testing.assert_array_equal(ranks[b, r, keep], ref[first[keep]])


def test_resampled_vectors_follow_rsatoolbox(rng):
    data, _ = _problem(rng, n_cond=7)
    idx = np.array([3, 1, 3, 0, 6, 6, 6])
    vals, valid = resampled_vectors(data, idx)
    ref = RDMs(data).subsample_pattern("index", idx).get_vectors()
    np.testing.assert_array_equal(valid, ~np.isnan(ref[0]))
    np.testing.assert_array_equal(vals, ref[:, valid])


@pytest.mark.parametrize("measure", ["spearman", "pearson", "cosine", "rho_a"])
def test_weighted_kernel_equals_explicit_loop(rng, measure):
    data, models = _problem(rng, n_cond=14, n_subj=5)
    data[:, :10] = data[:, :1]  # ties inside the data RDMs
    idx = rng.integers(0, 14, (12, 14))
    counts = stimulus_counts(rng.integers(0, 5, (12, 5)), 5)
    fast = evaluate_resamples(data, models, measure, stimulus_indices=idx,
                              subject_counts=counts, method="weighted")
    slow = evaluate_resamples(data, models, measure, stimulus_indices=idx,
                              subject_counts=counts, method="loop")
    np.testing.assert_allclose(fast[0], slow[0], **TOL)
    np.testing.assert_allclose(fast[1], slow[1], **TOL)


# ----------------------------------------------------------------------------- vs rsatoolbox
def _compare_pattern(ours, ref, noise_ceiling=True):
    assert np.array_equal(np.isnan(ours.evaluations), np.isnan(ref.evaluations))
    np.testing.assert_allclose(ours.evaluations, ref.evaluations, equal_nan=True, **TOL)
    if noise_ceiling:
        np.testing.assert_allclose(ours.noise_ceiling.T, ref.noise_ceiling, equal_nan=True,
                                   **TOL)
    np.testing.assert_allclose(ours.covariance, np.atleast_2d(ref.variances), **TOL)
    np.testing.assert_allclose(ours.model_variance, ref.model_var, **TOL)
    np.testing.assert_allclose(ours.diff_variance, ref.diff_var, **TOL)
    np.testing.assert_allclose(ours.noise_ceiling_variance, ref.noise_ceil_var, **TOL)


@pytest.mark.parametrize("measure", MEASURES)
def test_bootstrap_patterns_matches_rsatoolbox(rng, recorded, measure):
    data, models = _problem(rng)
    np.random.seed(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = rsa_eval.eval_bootstrap_pattern(_models(models), RDMs(data), N=30,
                                              method=RSATOOLBOX_NAMES[measure])
    idx = np.array(recorded["pattern"])
    assert idx.shape == (30, 9)
    ours = S.bootstrap_patterns(data, models, measure, indices=idx)
    _compare_pattern(ours, ref)
    assert ours.dof == 8 and ours.evaluations.shape == (30, 3)


def test_bootstrap_patterns_rsatoolbox_global_seed_reproduced(rng):
    """Seeding numpy's global state like rsatoolbox and drawing the same way gives its indices."""
    data, models = _problem(rng, n_cond=8)
    np.random.seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = rsa_eval.eval_bootstrap_pattern(_models(models), RDMs(data), N=20,
                                              method="spearman")
    np.random.seed(3)
    idx = np.array([np.random.randint(0, 8, size=8) for _ in range(20)])
    _compare_pattern(S.bootstrap_patterns(data, models, "spearman", indices=idx), ref)


def test_bootstrap_patterns_without_noise_ceiling(rng, recorded):
    data, models = _problem(rng)
    np.random.seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = rsa_eval.eval_bootstrap_pattern(_models(models), RDMs(data), N=25,
                                              method="corr", boot_noise_ceil=False)
    ours = S.bootstrap_patterns(data, models, "pearson", indices=np.array(recorded["pattern"]),
                                noise_ceiling=False)
    assert ours.noise_ceiling is None and ours.covariance.shape == (3, 3)
    _compare_pattern(ours, ref, noise_ceiling=False)


@pytest.mark.parametrize("measure", MEASURES)
def test_bootstrap_dual_matches_rsatoolbox(rng, recorded, measure):
    data, models = _problem(rng, n_cond=8, n_subj=5)
    np.random.seed(21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = rsa_eval.eval_dual_bootstrap(_models(models), RDMs(data), N=25,
                                           method=RSATOOLBOX_NAMES[measure])
    ours = S.bootstrap_dual(data, models, measure,
                            subject_indices=np.array(recorded["rdm"]),
                            stimulus_indices=np.array(recorded["both_pattern"]))
    evals = ref.evaluations[:, :, 0, 0, :]  # (N, models, [both, rdm, pattern])
    np.testing.assert_allclose(ours.evaluations_by_kind, evals, equal_nan=True, **TOL)
    np.testing.assert_allclose(ours.evaluations, evals[:, :, 0], equal_nan=True, **TOL)
    nc = ref.noise_ceiling[:, :, 0, :].transpose(1, 0, 2)  # (N, 2, 3)
    np.testing.assert_allclose(ours.noise_ceiling_by_kind, nc, equal_nan=True, **TOL)
    np.testing.assert_allclose(ours.covariance, ref.variances, **TOL)
    np.testing.assert_allclose(ours.model_variance, ref.model_var, **TOL)
    np.testing.assert_allclose(ours.diff_variance, ref.diff_var, **TOL)
    np.testing.assert_allclose(ours.noise_ceiling_variance, ref.noise_ceil_var, **TOL)
    assert ours.dof == 4


def test_dual_correction_formula(rng):
    data, models = _problem(rng, n_cond=10, n_subj=6)
    res = S.bootstrap_dual(data, models, "spearman", 200, rng=np.random.default_rng(1))
    v = np.einsum("kjj->kj", res.covariance)[:, :-2]
    fs, fc = 6 / 5, 10 / 9
    expect = fs * v[1] + fc * v[2] - fs * fc * (v[0] - v[1] - v[2])
    expect = np.minimum(np.maximum(np.maximum(expect, fs * v[1]), fc * v[2]), v[0])
    np.testing.assert_allclose(res.model_variance, expect, rtol=1e-12, atol=0)
    assert np.all(res.model_variance <= v[0] + 1e-15)  # never above the plain dual bootstrap


# ----------------------------------------------------------------------------- behaviour
def test_bootstrap_patterns_seeded_and_ci(rng):
    data, models = _problem(rng, n_cond=12)
    a = S.bootstrap_patterns(data, models, "spearman", 100, rng=np.random.default_rng(9))
    b = S.bootstrap_patterns(data, models, "spearman",
                             indices=bootstrap_indices(12, 100, np.random.default_rng(9)))
    np.testing.assert_array_equal(a.evaluations, b.evaluations)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert np.all(a.ci_low <= np.nanmedian(a.evaluations, axis=0))
    assert np.all(np.nanmedian(a.evaluations, axis=0) <= a.ci_high)
    np.testing.assert_allclose(a.model_variance,
                               np.nanvar(a.evaluations, axis=0, ddof=1) * 12 / 11, rtol=1e-12)


def test_bootstrap_patterns_skips_degenerate_resamples(rng):
    data, models = _problem(rng, n_cond=6)
    idx = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 2, 3, 4, 5], [5, 5, 5, 5, 5, 2]])
    res = S.bootstrap_patterns(data, models, "pearson", indices=idx)
    assert np.isnan(res.evaluations[[0, 2]]).all() and np.isfinite(res.evaluations[1]).all()
    # the identity resample is the plain evaluation
    from bids_dnn.rsa.compare import compare_rdms
    np.testing.assert_allclose(res.evaluations[1], compare_rdms(models, data, "pearson").mean(1),
                               **TOL)
    lo, up = noise_ceiling(data, "pearson")
    np.testing.assert_allclose(res.noise_ceiling[1], [lo, up], **TOL)


def test_bootstrap_input_validation(rng):
    data, models = _problem(rng, n_cond=6)
    with pytest.raises(ValueError, match="rng"):
        S.bootstrap_patterns(data, models, "spearman", 10)
    with pytest.raises(ValueError, match="indices"):
        S.bootstrap_patterns(data, models, "spearman", indices=np.zeros((3, 5), int))
    with pytest.raises(ValueError, match="lie in"):
        S.bootstrap_patterns(data, models, "spearman", indices=np.full((3, 6), 6))
    with pytest.raises(ValueError, match="unknown"):
        S.bootstrap_patterns(data, models, "euclid", rng=rng)
    with pytest.raises(ValueError, match="2 subjects"):
        S.bootstrap_dual(data[:1], models, "spearman", 5, rng=rng)
    res = S.bootstrap_patterns(data[0], models[0], "spearman", 5, rng=rng, noise_ceiling=False)
    assert res.evaluations.shape == (5, 1)
