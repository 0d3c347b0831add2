"""Hemodynamic delays of TR-resolution features: finite impulse response (FIR) delays and the
SPM canonical HRF, both within runs.

Pure functions on arrays; no BIDS, no files, no printing.

Runs
    ``runs`` gives the run label of every sample (all runs concatenated). A sample's delayed
    or convolved value uses only earlier samples *of its own run*, taken in their order in the
    array (runs need not be contiguous); what would come from before the run's first sample
    is 0. Nothing crosses a run boundary, so a test run's features never enter a training
    run's design and vice versa. ``runs=None``: one run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["delay_features", "hrf_kernel", "hrf_convolve"]


def _features_2d(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be (n_samples, n_features), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def _run_indices(runs: np.ndarray | None, n_samples: int) -> list[np.ndarray]:
    """Sample indices of each run (in array order)."""
    if runs is None:
        return [np.arange(n_samples)]
    runs = np.asarray(runs)
    if runs.shape != (n_samples,):
        raise ValueError(f"runs must have shape ({n_samples},), got {runs.shape}")
    _, inverse = np.unique(runs, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def _check_delays(delays: Sequence[int]) -> tuple[int, ...]:
    """Delays as a non-empty tuple of ints (ValueError for fractions, non-finite or none)."""
    d = np.atleast_1d(np.asarray(delays, dtype=np.float64))
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all() or not np.all(d % 1 == 0):
        raise ValueError(f"delays must be a non-empty sequence of integers (samples), got {delays!r}")
    return tuple(int(v) for v in d)


def delay_features(features: np.ndarray, delays: Sequence[int], runs: np.ndarray | None = None) -> np.ndarray:
    """FIR delays: copies of the features shifted by whole samples (TRs) within each run.

    ``out[t, i * n_features + f] = features[t - delays[i], f]`` when sample ``t - delays[i]``
    (counted within ``t``'s run) exists, else 0.

    Parameters
    ----------
    features : numpy.ndarray, shape (n_samples, n_features) or (n_samples,)
        Features at TR resolution, all runs concatenated.
    delays : sequence of int
        Delays in samples (TRs), e.g. ``(1, 2, 3, 4)`` (Huth et al. 2016; 2-8 s at TR 2 s).
        0 is the undelayed copy; a negative delay shifts the other way (the future).
    runs : numpy.ndarray, shape (n_samples,), optional
        Run label of each sample; delays never cross a run boundary (see the module docstring).

    Returns
    -------
    numpy.ndarray, shape (n_samples, n_features * n_delays)
        Delay-major columns: the block ``[:, i * n_features:(i + 1) * n_features]`` holds the
        features delayed by ``delays[i]`` (the order of ``himalaya``'s ``Delayer``). The
        features' float dtype (float64 for integer input).
    """
    x = _features_2d(features)
    d = np.asarray(_check_delays(delays), dtype=np.int64)
    n_samples, n_features = x.shape
    out = np.zeros((n_samples, n_features * d.size), dtype=x.dtype)
    for idx in _run_indices(runs, n_samples):
        n = idx.size
        for i, delay in enumerate(d):
            cols = slice(i * n_features, (i + 1) * n_features)
            if abs(delay) >= n:
                continue
            if delay >= 0:
                out[idx[delay:], cols] = x[idx[:n - delay]]
            else:
                out[idx[:n + delay], cols] = x[idx[-delay:]]
    return out


def hrf_kernel(tr: float, *, oversampling: int = 16, time_length: float = 32.0) -> np.ndarray:
    """The SPM canonical HRF as a causal filter at TR resolution, for TR-long blocks.

    A sample's value is taken to hold for one TR from its time on (an event of duration TR at
    the sample's onset, in nilearn's terms); the response is read at each sample's time. On a
    grid of ``tr / oversampling`` this gives ``g[0] = h[0]`` and
    ``g[m] = sum_{k=(m-1) o + 1}^{m o} h[k]`` for ``m >= 1``, with ``h`` nilearn's
    ``spm_hrf(tr, oversampling, time_length)`` (sampled at ``k tr / o``, summing to 1), so
    ``g`` sums to 1 too.

    Parameters
    ----------
    tr : float
        Repetition time (seconds).
    oversampling : int
        Fine-grid points per TR.
    time_length : float
        Length of the HRF (seconds).

    Returns
    -------
    numpy.ndarray, shape (n_taps,)
        Filter taps for lags 0, 1, 2, ... TRs.
    """
    from nilearn.glm.first_level import spm_hrf

    tr = float(tr)
    if not np.isfinite(tr) or tr <= 0:
        raise ValueError(f"tr must be a positive number of seconds, got {tr}")
    o = int(oversampling)
    if o < 1:
        raise ValueError(f"oversampling must be >= 1, got {oversampling}")
    h = np.asarray(spm_hrf(tr, oversampling=o, time_length=float(time_length)), dtype=np.float64)
    n_taps = int(np.ceil((h.size - 1) / o)) + 1
    padded = np.zeros((n_taps - 1) * o + 1)
    padded[:h.size] = h
    taps = np.empty(n_taps)
    taps[0] = padded[0]
    taps[1:] = padded[1:].reshape(n_taps - 1, o).sum(axis=1)
    return taps


def hrf_convolve(features: np.ndarray, tr: float, runs: np.ndarray | None = None, *, oversampling: int = 16,
                 time_length: float = 32.0) -> np.ndarray:
    """Features convolved with the SPM canonical HRF within each run (an alternative to
    :func:`delay_features`: one regressor per feature instead of one per delay).

    ``out[t] = sum_m g[m] features[t - m]`` over the earlier samples of ``t``'s run, ``g``
    from :func:`hrf_kernel` (each sample a block of one TR starting at its time; the HRF's
    SPM shape from ``nilearn.glm.first_level.spm_hrf``).

    Parameters
    ----------
    features : numpy.ndarray, shape (n_samples, n_features) or (n_samples,)
        Features at TR resolution, all runs concatenated.
    tr : float
        Repetition time (seconds).
    runs : numpy.ndarray, shape (n_samples,), optional
        Run label of each sample; the convolution restarts at 0 in each run.
    oversampling : int
        Fine-grid points per TR for the block integral of the HRF.
    time_length : float
        Length of the HRF (seconds).

    Returns
    -------
    numpy.ndarray, shape (n_samples, n_features)
        The features' float dtype (float64 for integer input).
    """
    from scipy.signal import lfilter

    x = _features_2d(features)
    taps = hrf_kernel(tr, oversampling=oversampling, time_length=time_length)
    out = np.zeros(x.shape, dtype=x.dtype)
    for idx in _run_indices(runs, x.shape[0]):
        out[idx] = lfilter(taps, [1.0], x[idx].astype(np.float64), axis=0)
    return out
