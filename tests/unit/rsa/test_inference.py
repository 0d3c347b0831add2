"""Tests of bids_dnn.rsa.inference (permutation tests, noise ceilings, layer selection) against
scipy, rsatoolbox and explicit slow references."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import scipy.stats

from bids_dnn.rsa import inference as S
from bids_dnn.rsa.compare import COMPARISON_MEASURES, compare_rdms
from bids_dnn.rsa.measures import RSATOOLBOX_NAMES
from bids_dnn.rsa.rdm import square_to_vector, vector_to_square

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.inference import boot_noise_ceiling  # noqa: E402
from rsatoolbox.rdm import RDMs  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)


def _scipy_corr(measure):
    if measure == "spearman":
        return lambda x, y: scipy.stats.spearmanr(x, y)[0]
    return lambda x, y: scipy.stats.pearsonr(x, y)[0]


# ----------------------------------------------------------------------------- permutations
def test_permutation_indices_deterministic(rng):
    a = S.permutation_indices(12, 50, np.random.default_rng(7))
    b = S.permutation_indices(12, 50, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (50, 12)
    assert np.all(np.sort(a, axis=1) == np.arange(12))


def test_permuted_pair_indices_reorder_rows_and_columns(rng):
    n = 9
    vec = rng.random(n * (n - 1) // 2)
    perms = S.permutation_indices(n, 20, rng)
    idx = S.permuted_pair_indices(perms, n)
    sq = vector_to_square(vec)
    for p, perm in enumerate(perms):
        np.testing.assert_array_equal(vec[idx[p]], square_to_vector(sq[perm][:, perm]))


@pytest.mark.parametrize("measure", ["spearman", "pearson"])
def test_permutation_test_vs_scipy_loop(rng, measure):
    n = 12
    n_pairs = n * (n - 1) // 2
    data = rng.random((2, n_pairs))
    models = np.vstack([data[0] + rng.normal(0, 0.3, n_pairs), rng.random(n_pairs),
                        np.round(rng.random(n_pairs) * 3)])
    perms = S.permutation_indices(n, 300, np.random.default_rng(11))
    res = S.permutation_test(data, models, measure, rng=np.random.default_rng(11),
                             n_permutations=300, return_null=True)
    corr = _scipy_corr(measure)
    null = np.empty((2, 3, 300))
    for p, perm in enumerate(perms):
        for m in range(3):
            permuted = square_to_vector(vector_to_square(models[m])[perm][:, perm])
            for d in range(2):
                null[d, m, p] = corr(data[d], permuted)
    observed = np.array([[corr(d, m) for m in models] for d in data])
    np.testing.assert_allclose(res.observed, observed, **TOL)
    np.testing.assert_allclose(res.null, null, **TOL)
    ref_p = (1 + np.sum(null >= observed[:, :, None] - 1e-12, axis=2)) / 301
    np.testing.assert_array_equal(res.p_values, ref_p)
    null_max = null.max(axis=1)
    ref_fwe = (1 + np.sum(null_max[:, None, :] >= observed[:, :, None] - 1e-12, axis=2)) / 301
    np.testing.assert_array_equal(res.p_values_fwe, ref_fwe)
    assert res.p_values[0, 0] == pytest.approx(1 / 301)


@pytest.mark.parametrize("measure", sorted(COMPARISON_MEASURES))
def test_permutation_null_every_measure(rng, measure):
    """Null values equal compare_rdms on explicitly permuted models, for both gather sides."""
    n = 8
    data = rng.random((3, 28))
    models = np.vstack([rng.random(28), np.round(rng.random(28) * 2)])
    perms = S.permutation_indices(n, 15, rng)
    idx = S.permuted_pair_indices(perms, n)
    for d_rows, m_rows in (([0, 1, 2], [0, 1]), ([0], [0, 1])):
        res = S.permutation_test(data[d_rows], models[m_rows], measure, permutations=perms,
                                 return_null=True)
        for p in range(15):
            ref = compare_rdms(data[d_rows], models[m_rows][:, idx[p]], measure)
            np.testing.assert_allclose(res.null[:, :, p], ref, **TOL)


def test_permutation_chunking_invariant(rng):
    data = rng.random((1, 45))
    models = rng.random((3, 45))
    a = S.permutation_test(data, models, "spearman", 500, rng=np.random.default_rng(3))
    old = S._MAX_CHUNK_ELEMENTS
    S._MAX_CHUNK_ELEMENTS = 1000
    try:
        b = S.permutation_test(data, models, "spearman", 500, rng=np.random.default_rng(3))
    finally:
        S._MAX_CHUNK_ELEMENTS = old
    # another chunk size is another GEMM shape: BLAS may round the last bit differently (seen: 1 ulp),
    # so the null is equal to rounding; p-values count with a tolerance (atol) and are exact
    np.testing.assert_array_equal(a.p_values, b.p_values)
    np.testing.assert_allclose(a.null_max, b.null_max, rtol=1e-12, atol=1e-15)


def test_permutation_null_uniform():
    """Random, unrelated RDMs: p-values over 200 seeds are uniform (KS test)."""
    ps = []
    for seed in range(200):
        g = np.random.default_rng(seed)
        data, model = g.random((2, 28))
        ps.append(S.permutation_test(data, model, "spearman", 199, rng=g).p_values[0, 0])
    assert scipy.stats.kstest(ps, "uniform").pvalue > 0.01


def test_permutation_errors(rng):
    with pytest.raises(ValueError):
        S.permutation_test(rng.random(10), rng.random(10), "spearman", 10)  # no rng
    with pytest.raises(ValueError):
        S.permutation_test(rng.random(10), rng.random(10), permutations=np.zeros((3, 5), int))


def test_permutation_speed_vs_scipy(rng):
    """Regression guard; the 10k-permutation ratio is measured in benchmarks/."""
    n = 60
    data, model = rng.random((2, n * (n - 1) // 2))
    perms = S.permutation_indices(n, 2000, rng)
    S.permutation_test(data, model, permutations=perms[:10])
    t0 = time.perf_counter()
    res = S.permutation_test(data, model, permutations=perms, return_null=True)
    t_ours = time.perf_counter() - t0
    idx = S.permuted_pair_indices(perms[:200], n)
    t0 = time.perf_counter()
    ref = [scipy.stats.spearmanr(data, model[i])[0] for i in idx]
    t_ref = (time.perf_counter() - t0) * 10
    np.testing.assert_allclose(res.null[0, 0, :200], ref, **TOL)
    assert t_ref / t_ours > 10


# ----------------------------------------------------------------------------- noise ceiling
def _subjects(rng, n_subj=6, n_cond=12, noise=1.0):
    truth = rng.random(n_cond * (n_cond - 1) // 2)
    return truth + noise * rng.random((n_subj, truth.size))


@pytest.mark.parametrize("measure", sorted(COMPARISON_MEASURES))
def test_noise_ceiling_vs_rsatoolbox(rng, measure):
    data = _subjects(rng)
    lower, upper, per_low, per_up = S.noise_ceiling(data, measure, per_subject=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = boot_noise_ceiling(RDMs(data), method=RSATOOLBOX_NAMES[measure])
    assert lower == pytest.approx(ref[0], abs=1e-10)
    assert upper == pytest.approx(ref[1], abs=1e-10)
    assert per_low.shape == per_up.shape == (6,)
    assert lower < upper


def test_noise_ceiling_explicit_spearman(rng):
    data = _subjects(rng, n_subj=4)
    ranks = scipy.stats.rankdata(data, axis=1)
    lows = [scipy.stats.spearmanr(np.delete(ranks, s, 0).mean(0), data[s])[0] for s in range(4)]
    ups = [scipy.stats.spearmanr(ranks.mean(0), data[s])[0] for s in range(4)]
    lower, upper = S.noise_ceiling(data, "spearman")
    assert lower == pytest.approx(np.mean(lows), abs=1e-10)
    assert upper == pytest.approx(np.mean(ups), abs=1e-10)


def test_noise_ceiling_real_data(shared_data):
    rdms = np.load(shared_data / "kriegeskorte92" / "hIT_rdms_4subj_2sess.npy")
    data = square_to_vector(rdms.astype(np.float64).mean(axis=1))  # (4 subjects, 4186)
    for measure in ("spearman", "pearson"):
        ref = boot_noise_ceiling(RDMs(data), method=RSATOOLBOX_NAMES[measure])
        np.testing.assert_allclose(S.noise_ceiling(data, measure), ref, atol=1e-10)


def test_noise_ceiling_errors(rng):
    with pytest.raises(ValueError):
        S.noise_ceiling(rng.random((1, 10)))
    with pytest.raises(ValueError):
        S.noise_ceiling(rng.random((3, 10)), "kendall")


# ----------------------------------------------------------------------------- layer choice
def test_crossvalidated_best_layer_vs_loop(rng):
    scores = rng.normal(size=(9, 7)) + np.linspace(0, 1, 7)
    scores[2, 3] = np.nan
    out = S.crossvalidated_best_layer(scores)
    for s in range(9):
        others = np.delete(scores, s, axis=0)
        choice = int(np.nanargmax(np.nanmean(others, axis=0)))
        assert out["chosen"][s] == choice
        assert out["cv_scores"][s] == scores[s, choice] or np.isnan(scores[s, choice])
    counts = np.bincount(out["chosen"], minlength=7)
    np.testing.assert_array_equal(out["selection_counts"], counts)
    assert out["modal_choice"] == int(np.argmax(counts))
    assert out["mean_cv_score"] == pytest.approx(np.nanmean(out["cv_scores"]))


def test_crossvalidated_best_layer_never_sees_held_out(rng):
    scores = rng.normal(size=(6, 5))
    base = S.crossvalidated_best_layer(scores)["chosen"]
    changed = scores.copy()
    changed[0] = [0, 0, 0, 0, 100.0]  # a wild held-out subject
    assert S.crossvalidated_best_layer(changed)["chosen"][0] == base[0]
    with pytest.raises(ValueError):
        S.crossvalidated_best_layer(scores[:1])
