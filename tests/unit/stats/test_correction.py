"""Tests of bids_dnn.stats.correction against scipy's false_discovery_control, explicit
formulas and a planted false discovery rate."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from bids_dnn.stats.correction import CORRECTIONS, bonferroni, fdr_bh, uncorrected

TOL = dict(rtol=1e-10, atol=1e-10)


def test_fdr_bh_vs_scipy(rng):
    p = rng.random(200) ** 3
    np.testing.assert_allclose(fdr_bh(p), scipy.stats.false_discovery_control(p), **TOL)
    p2 = p.reshape(20, 10)
    np.testing.assert_allclose(fdr_bh(p2).ravel(), scipy.stats.false_discovery_control(p),
                               **TOL)
    np.testing.assert_allclose(fdr_bh(p2, axis=0),
                               scipy.stats.false_discovery_control(p2, axis=0), **TOL)
    np.testing.assert_allclose(fdr_bh(p2, axis=1),
                               scipy.stats.false_discovery_control(p2, axis=1), **TOL)


def test_fdr_and_bonferroni_nan_aware(rng):
    p = rng.random(30) ** 2
    p[[3, 17]] = np.nan
    adj = fdr_bh(p)
    assert np.isnan(adj[[3, 17]]).all()
    finite = np.isfinite(p)
    np.testing.assert_allclose(adj[finite], scipy.stats.false_discovery_control(p[finite]),
                               **TOL)
    bon = bonferroni(p)
    assert np.isnan(bon[[3, 17]]).all()
    np.testing.assert_allclose(bon[finite], np.minimum(p[finite] * 28, 1), **TOL)
    with pytest.raises(ValueError):
        fdr_bh(np.array([0.5, 1.5]))


def test_bonferroni_families_along_an_axis(rng):
    p = rng.random((6, 9)) ** 2
    p[2, 4] = np.nan  # that family has 5 tests
    along_0 = bonferroni(p, axis=0)
    m = np.isfinite(p).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(along_0, np.minimum(p * m, 1.0), **TOL)
    np.testing.assert_allclose(bonferroni(p, axis=1).T, bonferroni(p.T, axis=0), **TOL)
    with pytest.raises(ValueError):
        bonferroni(np.array([-0.1, 0.5]))


def test_uncorrected_returns_a_checked_copy(rng):
    p = rng.random((3, 4))
    out = uncorrected(p, axis=1)
    np.testing.assert_array_equal(out, p)
    assert out is not p and out.dtype == np.float64
    with pytest.raises(ValueError):
        uncorrected(np.array([0.2, 1.5]))


def test_registry_is_the_spec_order_and_each_entry_adjusts(rng):
    assert tuple(CORRECTIONS) == ("fdr_bh", "bonferroni", "none")
    p = rng.random(40) ** 2
    np.testing.assert_allclose(CORRECTIONS["fdr_bh"].adjust(p), scipy.stats.false_discovery_control(p),
                               **TOL)
    np.testing.assert_allclose(CORRECTIONS["bonferroni"].adjust(p), np.minimum(p * 40, 1.0), **TOL)
    np.testing.assert_array_equal(CORRECTIONS["none"].adjust(p), p)
    assert all(c.label for c in CORRECTIONS.values())


def test_fdr_bh_controls_false_discovery_rate():
    """Independent tests, 20 % true effects: the mean false discovery proportion stays <= q."""
    rng = np.random.default_rng(7)
    q, n_tests, n_families = 0.05, 200, 400
    fdps = []
    for _ in range(n_families):
        effect = np.zeros(n_tests)
        effect[: n_tests // 5] = 3.0
        z = rng.standard_normal(n_tests) + effect
        p = scipy.stats.norm.sf(z)
        rejected = fdr_bh(p) <= q
        false = rejected & (effect == 0)
        fdps.append(false.sum() / max(rejected.sum(), 1))
    mean_fdp = float(np.mean(fdps))
    # BH controls FDR at q * m0 / m = 0.04 here; allow Monte-Carlo error
    assert mean_fdp <= q * 0.8 + 3 * np.std(fdps) / np.sqrt(n_families)
    assert mean_fdp > 0.01  # and is not trivially conservative
