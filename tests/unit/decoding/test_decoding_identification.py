"""bids_dnn.decoding.identification against brute-force references: the similarity matrix
(np.corrcoef on explicitly centred vectors), pairwise / top-1 identification (double loops,
exact ties, undefined entries), permutation p-values (a loop over the same permutations) and
their calibration under the null (KS test)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats

import bids_dnn.decoding.identification as ident_module
from bids_dnn.decoding import identification_ranks, identification_test, similarity_matrix


# --------------------------------------------------------------------------- references
def brute_similarity(predicted, candidates, centre):
    mu = candidates.mean(axis=0) if centre else np.zeros(candidates.shape[1])
    out = np.empty((len(predicted), len(candidates)))
    for i, a in enumerate(predicted):
        for j, b in enumerate(candidates):
            out[i, j] = np.corrcoef(a - mu, b - mu)[0, 1]
    return out


def brute_row(row, truth):
    """Pairwise accuracy and top-1 share of candidate ``truth`` in one similarity row, leaving
    non-finite entries out; (nan, nan) when undefined."""
    defined = [j for j in range(len(row)) if np.isfinite(row[j])]
    if truth not in defined or len(defined) < 2:
        return np.nan, np.nan
    score = 0.0
    for j in defined:
        if j == truth:
            continue
        if row[j] < row[truth]:
            score += 1.0
        elif row[j] == row[truth]:
            score += 0.5
    pairwise = score / (len(defined) - 1)
    best = max(row[j] for j in defined)
    tied = [j for j in defined if row[j] == best]
    top1 = 1.0 / len(tied) if truth in tied else 0.0
    return pairwise, top1


def brute_accuracies(similarity, truth):
    pairs = [brute_row(similarity[i], int(truth[i])) for i in range(len(similarity))]
    return np.array([p for p, _ in pairs]), np.array([t for _, t in pairs])


def tied_similarity(rng, n, m, nan_fraction=0.0):
    """Integer-valued similarities (many exact ties), optionally with NaN entries."""
    s = rng.integers(0, 4, size=(n, m)).astype(np.float64)
    if nan_fraction:
        s[rng.random((n, m)) < nan_fraction] = np.nan
    return s


# --------------------------------------------------------------------------- similarity
@pytest.mark.parametrize("centre", [True, False])
def test_similarity_equals_corrcoef_loop_with_distractors(rng, centre):
    predicted = rng.normal(size=(7, 40)) + 3.0
    candidates = rng.normal(size=(11, 40)) + rng.normal(size=40) * 5.0   # m > n, a common pattern
    got = similarity_matrix(predicted, candidates, centre=centre)
    assert got.shape == (7, 11) and got.dtype == np.float64
    np.testing.assert_allclose(got, brute_similarity(predicted, candidates, centre), rtol=1e-10, atol=1e-12)


def test_similarity_blocks_and_float32_do_not_change_the_result(rng, monkeypatch):
    predicted = rng.normal(size=(5, 53)).astype(np.float32)
    candidates = rng.normal(size=(9, 53)).astype(np.float32)
    whole = similarity_matrix(predicted, candidates)
    monkeypatch.setattr(ident_module, "_BLOCK_ELEMENTS", 14 * 4)       # blocks of 4 units
    blocked = similarity_matrix(predicted, candidates)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-14)
    reference = brute_similarity(predicted.astype(np.float64), candidates.astype(np.float64), True)
    np.testing.assert_allclose(whole, reference, rtol=1e-10, atol=1e-12)


def test_centring_removes_the_common_pattern(rng):
    common = 10.0 * rng.normal(size=200)
    specific = rng.normal(size=(6, 200))
    candidates = common + specific
    raw = similarity_matrix(candidates, candidates, centre=False)
    centred = similarity_matrix(candidates, candidates, centre=True)
    off = ~np.eye(6, dtype=bool)
    assert raw[off].min() > 0.9                      # every candidate looks alike
    assert np.abs(centred[off]).max() < 0.5          # only the specific parts remain
    np.testing.assert_allclose(np.diag(centred), 1.0, rtol=1e-12)


def test_constant_rows_give_nan(rng):
    predicted = rng.normal(size=(4, 30))
    predicted[1] = 2.5                                # constant row
    candidates = rng.normal(size=(5, 30))
    s = similarity_matrix(predicted, candidates, centre=False)
    assert np.isnan(s[1]).all() and np.isfinite(np.delete(s, 1, axis=0)).all()
    # with centring, a candidate equal to the candidates' mean is constant (zero) after centring
    candidates[-1] = candidates[:-1].mean(axis=0)
    s = similarity_matrix(predicted, candidates, centre=True)
    assert np.isnan(s[:, -1]).all() and np.isfinite(s[:, :-1]).all()


def test_similarity_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="same number of units"):
        similarity_matrix(rng.normal(size=(3, 5)), rng.normal(size=(3, 6)))
    with pytest.raises(ValueError, match="non-finite"):
        similarity_matrix(np.full((3, 5), np.nan), rng.normal(size=(3, 5)))
    with pytest.raises(ValueError, match="2-d"):
        similarity_matrix(rng.normal(size=5), rng.normal(size=(3, 5)))


# --------------------------------------------------------------------------- ranks
def test_ranks_equal_double_loop_with_ties_and_distractors(rng):
    s = tied_similarity(rng, 15, 20)
    truth = rng.permutation(20)[:15]
    pairwise, top1 = identification_ranks(s, truth)
    ref_pairwise, ref_top1 = brute_accuracies(s, truth)
    np.testing.assert_allclose(pairwise, ref_pairwise, rtol=0, atol=1e-12)
    np.testing.assert_allclose(top1, ref_top1, rtol=0, atol=1e-12)
    assert np.any((top1 > 0) & (top1 < 1)), "the test should include shared top-1 hits"


def test_ranks_leave_undefined_entries_out(rng):
    s = tied_similarity(rng, 12, 12, nan_fraction=0.2)
    s[3] = np.nan                                      # a whole undefined row
    s[5, :] = np.nan
    s[5, [0, 5]] = [1.0, 2.0]                           # two defined entries only
    pairwise, top1 = identification_ranks(s)
    ref_pairwise, ref_top1 = brute_accuracies(s, np.arange(12))
    np.testing.assert_allclose(pairwise, ref_pairwise, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(top1, ref_top1, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(pairwise[3]) and pairwise[5] == 1.0 and top1[5] == 1.0


def test_ranks_default_truth_and_checks(rng):
    s = rng.normal(size=(4, 6))
    np.testing.assert_array_equal(identification_ranks(s)[0], identification_ranks(s, np.arange(4))[0])
    with pytest.raises(ValueError, match="true_index is required"):
        identification_ranks(rng.normal(size=(6, 4)))
    with pytest.raises(ValueError, match="out of range"):
        identification_ranks(s, np.array([0, 1, 2, 6]))


def test_perfect_identification():
    s = np.eye(10) + 0.01 * np.arange(10)[None, :]
    result = identification_test(s, n_permutations=99, rng=np.random.default_rng(0))
    assert result.pairwise_accuracy == 1.0 and result.top1_accuracy == 1.0
    assert result.p_pairwise == result.p_top1 == 1 / 100
    assert result.chance_pairwise == 0.5 and result.chance_top1 == pytest.approx(0.1)


# --------------------------------------------------------------------------- permutation test
@pytest.mark.parametrize("nan_fraction", [0.0, 0.1])
def test_permutation_p_equals_loop_over_the_same_permutations(rng, monkeypatch, nan_fraction):
    n, m, n_perm = 9, 13, 300
    s = tied_similarity(rng, n, m, nan_fraction)
    s[np.arange(n), np.arange(n)] += 1.5 * (s[np.arange(n), np.arange(n)] >= 0)   # some signal
    truth = np.arange(n)
    monkeypatch.setattr(ident_module, "_BLOCK_ELEMENTS", 8 * m * 7)   # blocks of 7 permutations
    result = identification_test(s, n_permutations=n_perm, rng=np.random.default_rng(42), true_index=truth)

    draw = np.random.default_rng(42)
    null_p, null_t = np.empty(n_perm), np.empty(n_perm)
    for k in range(n_perm):
        perm = draw.permutation(m)
        pairwise, top1 = brute_accuracies(s, perm[truth])
        null_p[k], null_t[k] = np.nanmean(pairwise), np.nanmean(top1)
    obs_p, obs_t = (np.nanmean(a) for a in brute_accuracies(s, truth))
    np.testing.assert_allclose(result.null_pairwise, null_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.null_top1, null_t, rtol=0, atol=1e-12)
    assert result.pairwise_accuracy == pytest.approx(obs_p, abs=1e-12)
    assert result.top1_accuracy == pytest.approx(obs_t, abs=1e-12)
    assert result.p_pairwise == (1 + np.sum(null_p >= obs_p - 1e-12)) / (1 + n_perm)
    assert result.p_top1 == (1 + np.sum(null_t >= obs_t - 1e-12)) / (1 + n_perm)
    per_p, per_t = brute_accuracies(s, truth)
    np.testing.assert_allclose(result.per_stimulus_pairwise, per_p, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(result.per_stimulus_top1, per_t, atol=1e-12, equal_nan=True)
    defined = np.isfinite(per_p)
    assert result.n_defined == defined.sum()
    assert result.chance_top1 == pytest.approx(np.mean(1 / np.isfinite(s).sum(axis=1)[defined]))


def test_permutations_with_distractors_equal_loop(rng):
    n, m, n_perm = 6, 15, 200
    s = rng.normal(size=(n, m))
    truth = rng.permutation(m)[:n]
    result = identification_test(s, n_permutations=n_perm, rng=np.random.default_rng(3), true_index=truth)
    draw = np.random.default_rng(3)
    for k in range(n_perm):
        pairwise, top1 = brute_accuracies(s, draw.permutation(m)[truth])
        assert result.null_pairwise[k] == pytest.approx(pairwise.mean(), abs=1e-12)
        assert result.null_top1[k] == pytest.approx(top1.mean(), abs=1e-12)
    assert result.chance_top1 == pytest.approx(1 / m) and result.n_candidates == m


def test_groups_compare_and_permute_within_groups_like_a_loop(rng, monkeypatch):
    """groups: each row only against its own group's candidates, permutations within groups
    drawn from rng.random keys; equal to a loop that orders each group by the same keys,
    whatever the block size."""
    m, n_perm = 14, 120
    groups = rng.permutation(np.repeat([3, 7, 9], [5, 4, 5]))              # interleaved labels
    s = tied_similarity(rng, m, m, 0.0)
    monkeypatch.setattr(ident_module, "_BLOCK_ELEMENTS", 8 * m * 11)    # blocks of 11 permutations
    result = identification_test(s, n_permutations=n_perm, rng=np.random.default_rng(5), groups=groups)
    masked = np.where(groups[:, None] == groups[None, :], s, np.nan)
    per_p, per_t = brute_accuracies(masked, np.arange(m))
    np.testing.assert_allclose(result.per_stimulus_pairwise, per_p, atol=1e-12)
    keys = np.random.default_rng(5).random((n_perm, m))
    for k in range(n_perm):
        perm = np.arange(m)
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            perm[members] = members[np.argsort(keys[k, members], kind="stable")]
        assert (groups[perm] == groups).all()
        pairwise, top1 = brute_accuracies(masked, perm)
        assert result.null_pairwise[k] == pytest.approx(np.nanmean(pairwise), abs=1e-12)
        assert result.null_top1[k] == pytest.approx(np.nanmean(top1), abs=1e-12)
    assert result.chance_top1 == pytest.approx(np.mean([1 / np.sum(groups == g) for g in groups]))
    with pytest.raises(ValueError, match="groups must have shape"):
        identification_test(s, n_permutations=0, rng=None, groups=groups[:-1])


def test_permutations_within_groups_are_uniform():
    codes = np.array([0, 1, 0, 2, 1, 0, 2])
    perms = ident_module._permutations_within_groups(np.random.default_rng(0).random((6000, 7)), codes)
    assert (np.sort(perms, axis=1) == np.arange(7)).all() and (codes[perms] == codes).all()
    np.testing.assert_allclose(np.bincount(perms[:, 0], minlength=7)[[0, 2, 5]] / 6000, 1 / 3, atol=0.025)


def test_no_permutations_and_rng_checks(rng):
    s = rng.normal(size=(5, 5))
    result = identification_test(s, n_permutations=0, rng=None)
    assert np.isnan(result.p_pairwise) and np.isnan(result.p_top1)
    assert result.null_pairwise.shape == (0,) and result.null_top1.shape == (0,)
    with pytest.raises(ValueError, match="rng is required"):
        identification_test(s, n_permutations=10, rng=None)
    with pytest.raises(ValueError, match=">= 0"):
        identification_test(s, n_permutations=-1, rng=np.random.default_rng(0))


def test_permutation_p_is_calibrated_under_the_null():
    p_pairwise, p_top1 = [], []
    for seed in range(200):
        s = np.random.default_rng(seed).normal(size=(30, 30))
        result = identification_test(s, n_permutations=199, rng=np.random.default_rng(10_000 + seed))
        p_pairwise.append(result.p_pairwise)
        p_top1.append(result.p_top1)
    assert stats.kstest(p_pairwise, "uniform").pvalue > 0.01
    # top-1 is very discrete (ties in the null make it conservative): check its size only
    assert np.mean(np.array(p_top1) <= 0.05) <= 0.1


def test_ten_thousand_permutations_of_a_thousand_stimuli_are_fast():
    s = np.random.default_rng(0).normal(size=(1000, 1000))
    start = time.perf_counter()
    result = identification_test(s, n_permutations=10_000, rng=np.random.default_rng(1))
    elapsed = time.perf_counter() - start
    assert result.null_pairwise.shape == (10_000,)
    assert abs(result.null_pairwise.mean() - 0.5) < 0.01
    assert elapsed < 10.0, f"{elapsed:.1f} s (about 0.5 s expected)"
