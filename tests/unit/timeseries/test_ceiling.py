"""Noise ceilings from repeated runs: signal power, explainable variance, CCmax."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.timeseries import REPEAT_CEILINGS, repeat_noise_ceiling, signal_power


def planted_repeats(rng, n_repeats, n_samples, signal_sd, noise_sd):
    """``repeats[n, :, v] = s_v + e_nv`` with ``Var(s_v) = signal_sd[v]^2``, ``Var(e) = noise_sd^2``."""
    signal = rng.standard_normal((n_samples, signal_sd.size)) * signal_sd
    noise = rng.standard_normal((n_repeats, n_samples, signal_sd.size)) * noise_sd
    return signal[None] + noise


def test_direct_formulas(rng):
    """Schoppe et al. (2016)'s variance-of-sums form and the Gallant lab's bias-corrected EV."""
    reps = planted_repeats(rng, 5, 200, np.linspace(0, 2, 7), 1.0)
    n = reps.shape[0]
    for v in range(reps.shape[2]):
        r = reps[:, :, v]
        sp = (np.var(r.sum(0), ddof=1) - sum(np.var(x, ddof=1) for x in r)) / (n * (n - 1))
        assert signal_power(reps)[v] == pytest.approx(sp, rel=1e-10, abs=1e-12)
        assert repeat_noise_ceiling(reps, kind="explainable_variance", zscore=False)[v] == pytest.approx(
            sp / np.mean([np.var(x, ddof=1) for x in r]), rel=1e-10, abs=1e-12)
        cc = np.sqrt(sp / np.var(r.mean(0), ddof=1)) if sp > 0 else np.nan
        np.testing.assert_allclose(repeat_noise_ceiling(reps, kind="cc_max", zscore=False)[v], cc, rtol=1e-10)
        z = (r - r.mean(1, keepdims=True)) / r.std(1, keepdims=True)
        ev = z.mean(0).var(ddof=1) / z.var(1, ddof=1).mean()          # voxelwise_tutorials' explainable_variance
        assert repeat_noise_ceiling(reps)[v] == pytest.approx(ev - (1 - ev) / (n - 1), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("zscore", [False, True])
def test_planted_ceilings(rng, zscore):
    signal_sd = np.array([0.0, 0.5, 1.0, 2.0])
    n_rep = 4
    reps = planted_repeats(rng, n_rep, 40000, signal_sd, 1.0)
    ev = repeat_noise_ceiling(reps, zscore=zscore)
    np.testing.assert_allclose(ev, signal_sd ** 2 / (signal_sd ** 2 + 1.0), atol=0.02)
    cc = repeat_noise_ceiling(reps, kind="cc_max", zscore=zscore)
    np.testing.assert_allclose(cc[1:], np.sqrt(signal_sd[1:] ** 2 / (signal_sd[1:] ** 2 + 1.0 / n_rep)), atol=0.02)


def test_pure_noise_is_unbiased(rng):
    reps = rng.standard_normal((3, 300, 4000))
    ev = repeat_noise_ceiling(reps)
    assert abs(ev.mean()) < 3 * ev.std() / np.sqrt(ev.size)
    assert 0.3 < np.mean(ev < 0) < 0.7
    cc = repeat_noise_ceiling(reps, kind="cc_max")
    assert np.all(np.isnan(cc[ev <= 0])) and np.all(np.isfinite(cc[ev > 0]))


def test_bad_voxels_chunks_and_errors(rng):
    reps = planted_repeats(rng, 3, 50, np.ones(6), 1.0)
    reps[1, 4, 2] = np.nan
    reps[:, :, 3] = 1.0
    out = repeat_noise_ceiling(reps, chunk=4)
    assert np.isnan(out[[2, 3]]).all() and np.isfinite(out[[0, 1, 4, 5]]).all()
    np.testing.assert_allclose(out, repeat_noise_ceiling(reps, chunk=1000))
    assert set(REPEAT_CEILINGS) == {"explainable_variance", "cc_max"}
    with pytest.raises(ValueError):
        repeat_noise_ceiling(reps[:1])
    with pytest.raises(ValueError):
        repeat_noise_ceiling(reps, kind="nope")
