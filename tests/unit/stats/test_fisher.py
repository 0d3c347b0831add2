"""Tests of bids_dnn.stats.fisher against numpy's arctanh."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.stats.fisher import fisher_z


def test_fisher_z_clips_and_keeps_nan():
    r = np.array([-1.0, -0.5, 0.0, 0.3, 0.999, 1.0, 1.0 + 1e-12, np.nan])
    z = fisher_z(r)
    np.testing.assert_allclose(z[1:5], np.arctanh(r[1:5]), rtol=1e-14)
    assert np.all(np.isfinite(z[:7]))
    assert z[5] == z[6] == pytest.approx(np.arctanh(1 - 1e-7)) == -z[0]
    assert np.isnan(z[7])
    assert fisher_z(np.array([1.0]), eps=1e-3)[0] == pytest.approx(np.arctanh(0.999))
    with pytest.raises(ValueError):
        fisher_z(r, eps=0)


def test_fisher_z_with_eps_1e12_equals_the_former_searchlight_formula():
    """The participant searchlight maps wrote ``arctanh(clip(r, -1 + 1e-12, 1 - 1e-12))``."""
    r = np.concatenate([np.linspace(-1.0, 1.0, 2001), [-1.0 - 1e-15, 1.0 + 1e-15, 1 - 1e-13, np.nan]])
    former = np.arctanh(np.clip(r, -1 + 1e-12, 1 - 1e-12))
    np.testing.assert_array_equal(fisher_z(r, eps=1e-12), former)  # identical operations, bit for bit
