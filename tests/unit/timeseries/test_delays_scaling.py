"""FIR delays and HRF convolution within runs; per-run z-scoring."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from bids_dnn.timeseries import delay_features, hrf_convolve, hrf_kernel, zscore_by_run


def hand_delayed(x, delays, runs):
    """Shifted design built sample by sample: position p of run r takes position p - d of run r."""
    out = np.zeros((x.shape[0], x.shape[1] * len(delays)))
    for r in np.unique(runs):
        members = [i for i in range(len(runs)) if runs[i] == r]
        for p, row in enumerate(members):
            for i, d in enumerate(delays):
                if 0 <= p - d < len(members):
                    out[row, i * x.shape[1]:(i + 1) * x.shape[1]] = x[members[p - d]]
    return out


@pytest.mark.parametrize("delays", [(1, 2, 3, 4), (0,), (0, 2, -1), (5, 1)])
def test_delays_equal_a_hand_built_design(rng, delays):
    runs = np.repeat([3, 1, 7], [6, 9, 4])               # unequal runs, unsorted labels
    x = rng.standard_normal((runs.size, 3))
    np.testing.assert_array_equal(delay_features(x, delays, runs), hand_delayed(x, delays, runs))


def test_delays_of_interleaved_runs_and_no_runs(rng):
    runs = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    x = rng.standard_normal((8, 2))
    np.testing.assert_array_equal(delay_features(x, (1, 2), runs), hand_delayed(x, (1, 2), runs))
    np.testing.assert_array_equal(delay_features(x, (1, 2)), hand_delayed(x, (1, 2), np.zeros(8)))


def test_delays_never_cross_a_run_boundary(rng):
    runs = np.repeat([0, 1, 2], 10)
    x = rng.standard_normal((30, 4))
    changed = x.copy()
    changed[runs == 1] = rng.standard_normal((10, 4))
    a, b = delay_features(x, (1, 2, 3, 4), runs), delay_features(changed, (1, 2, 3, 4), runs)
    np.testing.assert_array_equal(a[runs != 1], b[runs != 1])
    # the first d samples of each run have zeros in the block of delay d
    for start in (0, 10, 20):
        np.testing.assert_array_equal(a[start:start + 4, 12:16], 0.0)
    assert delay_features(x.astype(np.float32), (1,), runs).dtype == np.float32


def test_delay_errors(rng):
    x = rng.standard_normal((10, 2))
    with pytest.raises(ValueError):
        delay_features(x, (1.5,))
    with pytest.raises(ValueError):
        delay_features(x, ())
    with pytest.raises(ValueError):
        delay_features(x, (1,), runs=np.zeros(9))


def test_hrf_kernel_shape():
    taps = hrf_kernel(2.0)
    assert taps.sum() == pytest.approx(1.0, abs=1e-10)
    assert taps[0] == 0.0 and np.argmax(taps) == 3          # the block 4-6 s holds the peak (5 s)


@pytest.mark.parametrize("tr, oversampling", [(2.0, 16), (1.5, 50)])
def test_hrf_convolution_equals_nilearn_regressors(rng, tr, oversampling):
    """Each sample as a block event (onset = its time, duration = TR, amplitude = its value) in
    nilearn's ``compute_regressor``, one run at a time."""
    from nilearn.glm.first_level import compute_regressor

    runs = np.repeat([0, 1], [40, 30])
    x = rng.standard_normal((70, 2))
    ours = hrf_convolve(x, tr, runs, oversampling=oversampling)
    for r in (0, 1):
        xr = x[runs == r]
        frame_times = np.arange(xr.shape[0]) * tr
        for f in range(2):
            events = np.vstack([frame_times, np.full(xr.shape[0], tr), xr[:, f]])
            ref, _ = compute_regressor(events, "spm", frame_times, oversampling=oversampling)
            np.testing.assert_allclose(ours[runs == r, f], ref[:, 0], atol=1e-10)


def test_hrf_convolution_stays_within_runs(rng):
    runs = np.repeat([0, 1], 30)
    x = rng.standard_normal((60, 1))
    changed = x.copy()
    changed[:30] = 0.0
    np.testing.assert_array_equal(hrf_convolve(x, 2.0, runs)[30:], hrf_convolve(changed, 2.0, runs)[30:])


def test_zscore_by_run_equals_scipy_per_run(rng):
    runs = np.repeat([2, 0, 1], [20, 15, 25])
    x = rng.standard_normal((60, 5)) * [1, 2, 3, 4, 5] + [0, 10, -3, 1e3, 2]
    out = zscore_by_run(x, runs)
    for r in (0, 1, 2):
        np.testing.assert_allclose(out[runs == r], scipy.stats.zscore(x[runs == r], axis=0), rtol=1e-10,
                                   atol=1e-12)


def test_zscore_by_run_uses_only_each_runs_samples(rng):
    runs = np.repeat([0, 1], 10)
    x = rng.standard_normal((20, 3))
    changed = x.copy()
    changed[runs == 1] = 100 * rng.standard_normal((10, 3)) + 7
    np.testing.assert_array_equal(zscore_by_run(x, runs)[:10], zscore_by_run(changed, runs)[:10])


def test_zscore_by_run_constant_nonfinite_and_dtype(rng):
    runs = np.repeat([0, 1], 10)
    x = rng.standard_normal((20, 3)).astype(np.float32)
    x[:10, 0] = 4.0                 # constant in run 0 only
    x[12, 1] = np.nan               # non-finite in run 1 only
    out = zscore_by_run(x, runs)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:10, 0], 0.0)
    np.testing.assert_allclose(out[10:, 0], scipy.stats.zscore(x[10:, 0].astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert np.isnan(out[10:, 1]).all() and np.isfinite(out[:10, 1]).all()
    np.testing.assert_allclose(zscore_by_run(np.arange(6), None), scipy.stats.zscore(np.arange(6.0)))
