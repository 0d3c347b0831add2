"""Tests of bids_dnn.rsa.rdm against rsatoolbox and scipy (float64, 1e-10)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from bids_dnn.rsa import rdm as R

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.data import Dataset  # noqa: E402
from rsatoolbox.rdm import calc_rdm as rsa_calc_rdm  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)


def _rsa(patterns, method, noise=None):
    ds = Dataset(patterns, obs_descriptors={"conds": np.arange(patterns.shape[0])})
    return rsa_calc_rdm(ds, method=method, descriptor="conds", noise=noise).get_vectors()[0]


def _rsa_crossnobis(run_patterns, noise=None):
    n_runs, n_cond, n_ch = run_patterns.shape
    ds = Dataset(run_patterns.reshape(n_runs * n_cond, n_ch),
                 obs_descriptors={"conds": np.tile(np.arange(n_cond), n_runs),
                                  "runs": np.repeat(np.arange(n_runs), n_cond)})
    with warnings.catch_warnings():  # rsatoolbox casts NaN descriptors internally
        warnings.simplefilter("ignore", RuntimeWarning)
        return rsa_calc_rdm(ds, method="crossnobis", descriptor="conds", cv_descriptor="runs",
                            noise=noise).get_vectors()[0]


@pytest.fixture
def patterns(rng):
    return rng.normal(size=(9, 14)) + rng.normal(size=(1, 14))


@pytest.fixture
def precision(rng):
    a = rng.normal(size=(14, 30))
    return np.linalg.inv(a @ a.T / 30 + 0.5 * np.eye(14))


# ----------------------------------------------------------------------------- vector form
def test_pair_order_matches_triu_and_squareform(rng):
    m = squareform(rng.random(21))
    rows, cols = R.pair_indices(7)
    np.testing.assert_array_equal(rows, np.triu_indices(7, 1)[0])
    np.testing.assert_array_equal(R.square_to_vector(m), squareform(m))
    back = R.vector_to_square(R.square_to_vector(m))
    np.testing.assert_array_equal(back, m)
    assert np.all(np.diag(back) == 0) and np.array_equal(back, back.T)
    stack = np.stack([m, 2 * m])
    np.testing.assert_array_equal(R.vector_to_square(R.square_to_vector(stack)), stack)


@pytest.mark.parametrize("n", [2, 3, 10, 92])
def test_n_cond_from_pairs(n):
    assert R.n_cond_from_pairs(n * (n - 1) // 2) == n


@pytest.mark.parametrize("bad", [0, 2, 4, 7])
def test_n_cond_from_pairs_rejects(bad):
    with pytest.raises(ValueError):
        R.n_cond_from_pairs(bad)


def test_vector_to_square_rejects_wrong_n():
    with pytest.raises(ValueError):
        R.vector_to_square(np.zeros(6), n_cond=5)
    with pytest.raises(ValueError):
        R.square_to_vector(np.zeros((3, 4)))


# ----------------------------------------------------------------------------- measures
def test_correlation_vs_rsatoolbox_and_scipy(patterns):
    d = R.calc_rdm(patterns, "correlation")
    np.testing.assert_allclose(d, _rsa(patterns, "correlation"), **TOL)
    np.testing.assert_allclose(d, pdist(patterns, "correlation"), **TOL)


def test_cosine_vs_scipy(patterns):
    np.testing.assert_allclose(R.calc_rdm(patterns, "cosine"), pdist(patterns, "cosine"), **TOL)


def test_euclidean_is_plain_distance(patterns):
    np.testing.assert_allclose(R.calc_rdm(patterns, "euclidean"), pdist(patterns), **TOL)


def test_sqeuclidean_is_rsatoolbox_euclidean(patterns):
    d = R.calc_rdm(patterns, "sqeuclidean")
    np.testing.assert_allclose(d, _rsa(patterns, "euclidean"), **TOL)
    np.testing.assert_allclose(d, pdist(patterns, "sqeuclidean") / patterns.shape[1], **TOL)


def test_mahalanobis_vs_rsatoolbox(patterns, precision):
    d = R.calc_rdm(patterns, "mahalanobis", noise_precision=precision)
    np.testing.assert_allclose(d, _rsa(patterns, "mahalanobis", precision), **TOL)
    ref = pdist(patterns, "mahalanobis", VI=precision) ** 2 / patterns.shape[1]
    np.testing.assert_allclose(d, ref, **TOL)


def test_mahalanobis_diagonal_and_identity(patterns, rng):
    p = rng.random(patterns.shape[1]) + 0.5
    d = R.calc_rdm(patterns, "mahalanobis", noise_precision=p)
    np.testing.assert_allclose(d, _rsa(patterns, "mahalanobis", np.diag(p)), **TOL)
    np.testing.assert_allclose(R.calc_rdm(patterns, "mahalanobis"),
                               R.calc_rdm(patterns, "sqeuclidean"), **TOL)


@pytest.mark.parametrize("n_runs", [2, 3, 5])
def test_crossnobis_vs_rsatoolbox(rng, precision, n_runs):
    runs = rng.normal(size=(1, 8, 14)) + rng.normal(size=(n_runs, 8, 14))
    d = R.calc_crossnobis_rdm(runs, precision)
    np.testing.assert_allclose(d, _rsa_crossnobis(runs, precision), **TOL)
    np.testing.assert_allclose(R.calc_crossnobis_rdm(runs), _rsa_crossnobis(runs), **TOL)
    np.testing.assert_allclose(R.calc_rdm(runs, "crossnobis", noise_precision=precision), d,
                               **TOL)


def test_crossnobis_explicit_definition(rng):
    runs = rng.normal(size=(4, 6, 5))
    rows, cols = R.pair_indices(6)
    diffs = runs[:, rows] - runs[:, cols]  # (runs, pairs, channels)
    ref = np.mean([np.sum(diffs[r] * diffs[s], axis=1)
                   for r in range(4) for s in range(4) if r != s], axis=0) / 5
    np.testing.assert_allclose(R.calc_crossnobis_rdm(runs), ref, **TOL)


def test_crossnobis_unbiased_under_pure_noise(rng):
    runs = rng.normal(size=(400, 3, 6, 20))  # no condition effect at all
    d = R.calc_crossnobis_rdms(runs)
    assert abs(d.mean()) < 4 * d.std() / np.sqrt(d.size)
    assert (d < 0).any()


@pytest.mark.parametrize("measure", ["correlation", "cosine", "euclidean", "sqeuclidean",
                                     "mahalanobis"])
def test_batched_equals_single(rng, measure):
    pats = rng.normal(size=(5, 7, 11))
    batch = R.calc_rdms(pats, measure)
    assert batch.shape == (5, 21)
    for b in range(5):
        np.testing.assert_allclose(batch[b], R.RDM_MEASURES[measure](pats[b]), **TOL)


def test_batched_precision_per_item(rng):
    pats = rng.normal(size=(3, 6, 4))
    precs = np.stack([np.diag(rng.random(4) + 0.5) for _ in range(3)])
    batch = R.calc_rdms(pats, "mahalanobis", noise_precision=precs)
    for b in range(3):
        np.testing.assert_allclose(batch[b], _rsa(pats[b], "mahalanobis", precs[b]), **TOL)
    runs = rng.normal(size=(3, 2, 6, 4))
    batch = R.calc_crossnobis_rdms(runs, precs)
    for b in range(3):
        np.testing.assert_allclose(batch[b], _rsa_crossnobis(runs[b], precs[b]), **TOL)


@pytest.mark.parametrize("measure", ["correlation", "cosine", "euclidean", "sqeuclidean",
                                     "crossnobis"])
def test_channel_mask_equals_subset(rng, measure):
    shape = (2, 3, 6, 9) if measure == "crossnobis" else (2, 6, 9)
    pats = rng.normal(size=shape)
    mask = np.ones((2, 9), bool)
    mask[1, 5:] = False
    out = R.calc_rdms(pats, measure, channel_mask=mask)
    np.testing.assert_allclose(out[0], R.calc_rdms(pats[:1], measure)[0], **TOL)
    np.testing.assert_allclose(out[1], R.calc_rdms(pats[1:2, ..., :5], measure)[0], **TOL)


def test_float32_close_and_dtype(patterns):
    d32 = R.calc_rdm(patterns, "correlation", dtype=np.float32)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, pdist(patterns, "correlation"), rtol=1e-4, atol=1e-5)


def test_tf32_flag_restored(patterns):
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        R.calc_rdms(patterns[None], "euclidean")
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(rng):
    pats = rng.normal(size=(4, 10, 50))
    for measure in ("correlation", "euclidean", "sqeuclidean"):
        np.testing.assert_allclose(R.calc_rdms(pats, measure, device="cuda"),
                                   R.calc_rdms(pats, measure), **TOL)
    runs = rng.normal(size=(4, 3, 10, 50))
    np.testing.assert_allclose(R.calc_crossnobis_rdms(runs, device="cuda"),
                               R.calc_crossnobis_rdms(runs), **TOL)


def test_errors(patterns):
    with pytest.raises(ValueError):
        R.calc_rdm(patterns, "nope")
    bad = patterns.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        R.calc_rdm(bad, "correlation")
    with pytest.raises(ValueError):
        R.calc_rdm(patterns, "correlation", noise_precision=np.eye(patterns.shape[1]))
    with pytest.raises(ValueError):
        R.calc_rdm(patterns, "mahalanobis", noise_precision=np.eye(3))
    with pytest.raises(ValueError):
        R.calc_crossnobis_rdm(patterns[None])  # one run


# ----------------------------------------------------------------------------- real data
def test_sim_true_patterns_sqeuclidean(shared_data):
    pats = np.load(shared_data / "kriegeskorte92" / "simTruePatterns2.npy")
    sq = R.vector_to_square(R.calc_rdm(pats, "sqeuclidean"))
    assert sq[0, 1] == pytest.approx(1.79168033, abs=5e-9)
    assert sq[90, 91] == pytest.approx(1.78983719, abs=5e-9)
    np.testing.assert_allclose(R.square_to_vector(sq), _rsa(pats, "euclidean"), **TOL)
