"""Lanczos resampling of stimulus-timeline features to acquisition times (Huth et al. 2016)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.timeseries import lanczos_kernel, lanczos_resample, lanczos_weights


def huth_lanczos(values, times, new_times, window=3, cutoff=None, normalize=False):
    """Double-loop reference: Huth et al.'s ``lanczosfun`` written out per (new time, sample)
    pair, ``window sin(pi u) sin(pi u / window) / (pi u)^2`` with ``u = 2 cutoff d``."""
    values = np.asarray(values, dtype=float).reshape(len(times), -1)
    if cutoff is None:
        cutoff = 1.0 / (2.0 * np.median(np.diff(np.sort(new_times))))
    out = np.zeros((len(new_times), values.shape[1]))
    for i, t in enumerate(new_times):
        total = 0.0
        for j, s in enumerate(times):
            u = 2.0 * cutoff * (t - s)
            if u == 0:
                k = 1.0
            elif abs(u) >= window:
                k = 0.0
            else:
                k = window * np.sin(np.pi * u) * np.sin(np.pi * u / window) / (np.pi ** 2 * u ** 2)
            out[i] += k * values[j]
            total += k
        if normalize and total != 0:
            out[i] /= total
    return out


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("window, cutoff", [(3, None), (2, 0.3), (4, 0.1)])
def test_equals_double_loop_reference(rng, normalize, window, cutoff):
    times = np.sort(rng.uniform(0, 40, 150))          # irregular, like word onsets
    values = rng.standard_normal((150, 3))
    new_times = np.arange(0, 42, 2.0)
    shuffled = rng.permutation(150)                    # input order must not matter
    ours = lanczos_resample(values[shuffled], times[shuffled], new_times, window=window, cutoff=cutoff,
                            normalize=normalize)
    ref = huth_lanczos(values, times, new_times, window=window, cutoff=cutoff, normalize=normalize)
    assert ours.shape == (new_times.size, 3)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_kernel_values():
    x = np.array([-3.5, -3.0, -1.0, -0.5, 0.0, 0.5, 2.0, 3.0])
    expected = [0, 0, 0, np.sinc(0.5) * np.sinc(0.5 / 3), 1, np.sinc(0.5) * np.sinc(0.5 / 3), 0, 0]
    np.testing.assert_allclose(lanczos_kernel(x, 3), expected, atol=1e-15)


FPS, TR, DURATION = 30.0, 2.0, 600.0


def _tone(freq):
    times = np.arange(0, DURATION, 1 / FPS)
    new_times = np.arange(0, DURATION, TR)
    return times, np.sin(2 * np.pi * freq * times), new_times


def test_tone_below_nyquist_keeps_its_amplitude():
    # 0.05 Hz is 0.2 x the Nyquist frequency of TR = 2 s (0.25 Hz): gain 1.002 in theory
    times, x, new_times = _tone(0.05)
    out = lanczos_resample(x, times, new_times, normalize=True)[:, 0]
    inner = slice(5, -5)
    np.testing.assert_allclose(out[inner], np.sin(2 * np.pi * 0.05 * new_times[inner]), atol=0.01)
    # unnormalised: the same shape, scaled by the kernel sum (about fps * TR)
    raw = lanczos_resample(x, times, new_times)[:, 0]
    scale = np.asarray(lanczos_weights(times, new_times).sum(axis=1)).ravel()
    np.testing.assert_allclose(scale[inner], FPS * TR * 0.997, rtol=2e-3)
    np.testing.assert_allclose(raw[inner] / scale[inner], out[inner], atol=1e-12)


def test_tone_above_nyquist_is_removed_not_aliased():
    # 0.4 Hz (1.6 x Nyquist): plain decimation aliases it to 0.1 Hz at full amplitude
    times, x, new_times = _tone(0.4)
    decimated = x[:: int(FPS * TR)]
    assert np.abs(decimated).max() > 0.9
    out = lanczos_resample(x, times, new_times, normalize=True)[:, 0]
    assert np.abs(out[5:-5]).max() < 0.05


def test_constant_stays_constant_when_normalised(rng):
    times = np.sort(np.arange(0, 100, 1 / 24) + rng.uniform(-0.01, 0.01, 2400))  # jittered frames
    new_times = np.arange(0, 100, 1.5)
    out = lanczos_resample(np.full((times.size, 2), 3.5), times, new_times, normalize=True)
    np.testing.assert_allclose(out, 3.5, rtol=1e-10)   # edges included


def test_impulses_add_up_without_normalisation():
    new_times = np.arange(0, 20, 2.0)
    one = lanczos_resample(np.ones(1), np.array([7.0]), new_times)
    two = lanczos_resample(np.ones(2), np.array([7.0, 7.0]), new_times)
    np.testing.assert_allclose(two, 2 * one)
    assert one[np.argmin(np.abs(new_times - 7.0)), 0] == pytest.approx(lanczos_kernel(0.5))  # 1 s away, c = 0.5


def test_times_without_samples_are_zero():
    out = lanczos_resample(np.ones(3), np.array([0.0, 0.5, 1.0]), np.array([0.0, 50.0, 100.0]), cutoff=0.25,
                           normalize=True)
    assert out[0, 0] == pytest.approx(1.0) and out[1, 0] == 0.0 and out[2, 0] == 0.0


def test_errors():
    with pytest.raises(ValueError):
        lanczos_resample(np.ones(3), np.arange(4.0), np.arange(3.0))
    with pytest.raises(ValueError):
        lanczos_resample(np.array([1.0, np.nan]), np.arange(2.0), np.arange(3.0))
    with pytest.raises(ValueError):
        lanczos_resample(np.ones(2), np.arange(2.0), np.array([1.0]))           # default cutoff needs 2 times
    with pytest.raises(ValueError):
        lanczos_resample(np.ones(2), np.arange(2.0), np.arange(3.0), window=0)
