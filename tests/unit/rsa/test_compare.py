"""Tests of bids_dnn.rsa.compare against rsatoolbox and scipy (float64, 1e-10)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.stats

from bids_dnn.rsa import compare as C
from bids_dnn.rsa.measures import LINEAR_MEASURES, RSATOOLBOX_NAMES
from bids_dnn.rsa.rdm import square_to_vector

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.rdm import RDMs  # noqa: E402
from rsatoolbox.rdm import compare as rsa_compare  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)
N_COND = 10
N_PAIRS = N_COND * (N_COND - 1) // 2


@pytest.fixture
def rdms(rng):
    """Continuous data RDMs and model RDMs with ties (categorical and rounded)."""
    data = rng.random((6, N_PAIRS))
    cats = rng.integers(0, 3, N_COND)
    categorical = square_to_vector((cats[:, None] != cats[None, :]).astype(float))
    models = np.vstack([rng.random((3, N_PAIRS)), np.round(rng.random((2, N_PAIRS)) * 4),
                        categorical])
    return data, models


@pytest.mark.parametrize("measure", sorted(C.COMPARISON_MEASURES))
def test_vs_rsatoolbox(rdms, measure):
    data, models = rdms
    ours = C.compare_rdms(data, models, measure)
    ref = rsa_compare(RDMs(data), RDMs(models), method=RSATOOLBOX_NAMES[measure])
    assert ours.shape == (6, 6)
    np.testing.assert_allclose(ours, ref, **TOL)
    np.testing.assert_allclose(C.COMPARISON_MEASURES[measure](data, models), ours, **TOL)


@pytest.mark.parametrize("measure", sorted(C.COMPARISON_MEASURES))
def test_tied_both_sides_vs_rsatoolbox(rdms, measure):
    _, models = rdms
    ours = C.compare_rdms(models, models, measure)
    ref = rsa_compare(RDMs(models), RDMs(models), method=RSATOOLBOX_NAMES[measure])
    np.testing.assert_allclose(ours, ref, **TOL)


def test_vs_scipy(rdms):
    data, models = rdms
    sp = C.compare_rdms(data, models, "spearman")
    pe = C.compare_rdms(data, models, "pearson")
    for i in range(data.shape[0]):
        for j in range(models.shape[0]):
            assert sp[i, j] == pytest.approx(scipy.stats.spearmanr(data[i], models[j])[0],
                                             abs=1e-10)
            assert pe[i, j] == pytest.approx(scipy.stats.pearsonr(data[i], models[j])[0],
                                             abs=1e-10)


def test_tau_a_equals_scipy_kendall_on_untied(rng):
    a = rng.random((4, 300))
    b = rng.random((3, 300))
    tau = C.compare_rdms(a, b, "kendall_tau_a")
    for i in range(4):
        for j in range(3):
            assert tau[i, j] == pytest.approx(scipy.stats.kendalltau(a[i], b[j])[0], abs=1e-12)


def test_tau_a_explicit_with_ties(rng):
    a = np.round(rng.random((3, 45)) * 5)
    b = np.round(rng.random((2, 45)) * 3)
    sa = np.sign(a[:, :, None] - a[:, None, :])
    sb = np.sign(b[:, :, None] - b[:, None, :])
    ref = np.einsum("aij,bij->ab", sa, sb) / 2 / (45 * 44 / 2)
    np.testing.assert_allclose(C.kendall_tau_a(a, b, method="matmul", chunk=4), ref, atol=1e-14)
    np.testing.assert_allclose(C.kendall_tau_a(a, b, method="matmul", chunk=7, max_buffer=50),
                               ref, atol=1e-14)
    np.testing.assert_allclose(C.kendall_tau_a(a, b, method="pairwise"), ref, atol=1e-14)
    const = np.ones((1, 45))
    for method in ("matmul", "pairwise"):
        assert np.all(C.kendall_tau_a(const, b, method=method) == 0)


@pytest.mark.parametrize("measure", sorted(C.COMPARISON_MEASURES))
def test_compare_paired_is_diagonal(rdms, measure):
    data, models = rdms
    np.testing.assert_allclose(C.compare_paired(data, models, measure),
                               np.diag(C.compare_rdms(data, models, measure)), **TOL)


def test_rho_a_equals_spearman_without_ties(rng):
    a = rng.random((3, N_PAIRS))
    b = rng.random((2, N_PAIRS))
    np.testing.assert_allclose(C.compare_rdms(a, b, "rho_a"), C.compare_rdms(a, b, "spearman"),
                               **TOL)


@pytest.mark.parametrize("measure", LINEAR_MEASURES)
def test_transform_dot_product(rdms, measure):
    data, models = rdms
    ta = C.transform_for_measure(data, measure)
    tb = C.transform_for_measure(models, measure)
    extra = N_COND if measure.endswith("_cov") else 0
    assert ta.shape == (6, N_PAIRS + extra)
    np.testing.assert_allclose(ta @ tb.T, C.compare_rdms(data, models, measure), **TOL)


def test_transform_rejects_tau():
    with pytest.raises(ValueError, match="kendall"):
        C.transform_for_measure(np.ones((1, 6)), "kendall_tau_a")


def test_one_dimensional_inputs(rdms):
    data, models = rdms
    out = C.compare_rdms(data[0], models[0], "spearman")
    assert out.shape == (1, 1)


def test_nan_and_shape_errors(rdms):
    data, models = rdms
    bad = data.copy()
    bad[0, 3] = np.nan
    for measure in C.COMPARISON_MEASURES:
        with pytest.raises(ValueError):
            C.compare_rdms(bad, models, measure)
    with pytest.raises(ValueError):
        C.compare_rdms(data, models[:, :-1], "spearman")
    with pytest.raises(ValueError):
        C.compare_rdms(data[:, :7], data[:, :7], "spearman")  # 7 is not a pair count
    with pytest.raises(ValueError):
        C.compare_rdms(data, models, "kendall")


def test_constant_rows(rdms):
    data, _ = rdms
    const = np.ones((1, N_PAIRS))
    assert np.all(np.isnan(C.compare_rdms(const, data, "spearman")))
    assert np.all(np.isnan(C.compare_rdms(const, data, "pearson")))
    assert np.all(C.compare_rdms(const, data, "kendall_tau_a") == 0)
    assert np.all(C.compare_rdms(const, data, "rho_a") == 0)
    assert np.all(np.isnan(C.compare_rdms(0 * const, data, "cosine")))


def test_tau_a_speed_vs_rsatoolbox(rng):
    """Regression guard (the 200 x 50 x 60-condition ratio is measured in benchmarks/)."""
    n_pairs = 40 * 39 // 2
    a = rng.random((40, n_pairs))
    b = np.round(rng.random((10, n_pairs)) * 5)
    C.kendall_tau_a(a[:2], b[:2])  # warm up
    t0 = time.perf_counter()
    ours = C.kendall_tau_a(a, b)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = rsa_compare(RDMs(a), RDMs(b), method="tau-a")
    t_ref = time.perf_counter() - t0
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert t_ref / t_ours > 2.0


# ----------------------------------------------------------------------------- real data
def test_kriegeskorte_hit_vs_mit(shared_data):
    folder = shared_data / "kriegeskorte92"
    h = square_to_vector(np.load(folder / "hIT_rdm_fig1.npy"))
    m = square_to_vector(np.load(folder / "mIT_rdm.npy"))
    assert round(float(C.compare_rdms(h, m, "pearson")[0, 0]), 4) == 0.4912
    assert round(float(C.compare_rdms(h, m, "spearman")[0, 0]), 4) == 0.4389
    for measure in C.COMPARISON_MEASURES:
        ref = rsa_compare(RDMs(h[None]), RDMs(m[None]), method=RSATOOLBOX_NAMES[measure])
        np.testing.assert_allclose(C.compare_rdms(h, m, measure), ref, **TOL)
