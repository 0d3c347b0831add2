"""Tests of bids_dnn.stats.bootstrap against explicit resampling loops and planted coverage."""

from __future__ import annotations

import numpy as np

from bids_dnn.stats.bootstrap import bootstrap_indices, bootstrap_subjects

TOL = dict(rtol=1e-10, atol=1e-10)


def test_bootstrap_deterministic_and_vs_loop(rng):
    x = rng.normal(size=(15, 4))
    x[2, 1] = np.nan
    low, high, boot = bootstrap_subjects(x, 500, np.random.default_rng(5))
    low2, high2, boot2 = bootstrap_subjects(x, 500, np.random.default_rng(5))
    np.testing.assert_array_equal(boot, boot2)
    idx = bootstrap_indices(15, 500, np.random.default_rng(5))
    ref = np.stack([np.nanmean(x[i], axis=0) for i in idx])
    np.testing.assert_allclose(boot, ref, **TOL)
    np.testing.assert_allclose(low, np.percentile(ref, 2.5, axis=0), **TOL)
    np.testing.assert_allclose(high, np.percentile(ref, 97.5, axis=0), **TOL)
    assert np.all(low < np.nanmean(x, 0)) and np.all(np.nanmean(x, 0) < high)


def test_bootstrap_coverage():
    g = np.random.default_rng(0)
    x = g.normal(1.0, 1.0, size=(30, 400))  # 400 independent columns, true mean 1
    low, high, _ = bootstrap_subjects(x, 1000, g, ci=0.9)
    coverage = np.mean((low < 1.0) & (high > 1.0))
    assert 0.82 < coverage < 0.96


def test_bootstrap_indices_draw_with_replacement():
    idx = bootstrap_indices(7, 2000, np.random.default_rng(3))
    assert idx.shape == (2000, 7) and idx.min() == 0 and idx.max() == 6
    counts = np.bincount(idx.ravel(), minlength=7) / idx.size
    np.testing.assert_allclose(counts, 1 / 7, atol=0.01)
    np.testing.assert_array_equal(idx, bootstrap_indices(7, 2000, np.random.default_rng(3)))
