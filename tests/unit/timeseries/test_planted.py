"""Planted truth: 4 runs x 300 TRs, BOLD = delayed features @ weights + noise in some voxels,
noise only elsewhere; with two spaces, each drives its own voxel set."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.timeseries import delay_features, timeseries_encoding, zscore_by_run

N_RUNS, N_PER = 4, 300
DELAYS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(20261125)
    runs = np.repeat(np.arange(N_RUNS), N_PER)
    # smooth-ish features (AR(1) within runs), as stimulus features at TR resolution
    spaces = {}
    for name, p in (("vision", 6), ("audio", 5)):
        x = rng.standard_normal((runs.size, p))
        for t in range(1, runs.size):
            if runs[t] == runs[t - 1]:
                x[t] += 0.5 * x[t - 1]
        spaces[name] = x
    n_vox = 60                       # 0-19 vision-driven, 20-39 audio-driven, 40-59 noise
    y = rng.standard_normal((runs.size, n_vox))
    for name, cols in (("vision", slice(0, 20)), ("audio", slice(20, 40))):
        design = delay_features(zscore_by_run(spaces[name], runs), DELAYS, runs)
        signal = design @ rng.standard_normal((design.shape[1], 20))
        y[:, cols] += signal / signal.std(axis=0)            # SNR 1: r about 0.7 at best
    return runs, spaces, y.astype(np.float32)


def test_single_space_recovers_signal_voxels(planted):
    runs, spaces, y = planted
    res = timeseries_encoding({"vision": spaces["vision"]}, y, runs, alphas=np.logspace(-1, 5, 7), delays=DELAYS)
    assert res.r[:20].min() > 0.5
    assert abs(np.mean(res.r[40:])) < 0.03 and np.abs(res.r[40:]).max() < 0.15
    assert abs(np.mean(res.r[20:40])) < 0.03                # the other space's voxels are noise here


def test_banded_attributes_variance_to_the_driving_space(planted):
    runs, spaces, y = planted
    res = timeseries_encoding(spaces, y, runs, alphas=np.logspace(1, 3, 3), delays=DELAYS, n_iter=5)
    assert res.r[:40].min() > 0.5
    assert abs(np.mean(res.r[40:])) < 0.03 and np.abs(res.r[40:]).max() < 0.15
    vision, audio = res.r2_split
    assert np.all(vision[:20] > 0.3) and np.all(np.abs(audio[:20]) < 0.05)
    assert np.all(audio[20:40] > 0.3) and np.all(np.abs(vision[20:40]) < 0.05)
    assert np.mean(res.r2_split[:, 40:]) < 0.01
    weights = res.space_weights.mean(axis=0)                # (n_spaces, n_voxels)
    assert np.all(weights[0, :20] > 0.6) and np.all(weights[1, 20:40] > 0.6)
