"""Features on the stimulus timeline brought to the BOLD acquisition times: Lanczos interpolation.

Pure functions on arrays; no BIDS, no files, no printing.

Filter
    :func:`lanczos_resample` is the filter of Huth et al. (2016)'s ``lanczosinterp2D``:
    ``output(t) = sum_j L(t - s_j) x_j`` over the samples ``x_j`` taken at times ``s_j``, with
    the Lanczos kernel ``L(d) = sinc(c d) sinc(c d / window)`` for ``|c d| < window`` and 0
    outside (``sinc(u) = sin(pi u) / (pi u)``), ``c = 2 * cutoff``. The default cutoff is the
    Nyquist frequency of the new times, ``1 / (2 TR)``, so ``c = 1 / TR`` (Huth's choice):
    a low-pass filter whose gain is within 2 % of 1 up to 0.6 x Nyquist, 0.5 at Nyquist and
    below 2 % in magnitude above 1.4 x Nyquist, so frequencies the TRs cannot represent are
    removed rather than aliased.
Normalisation
    ``normalize=False`` (Huth et al. 2016, for words): the plain kernel sum above. Each event
    adds a bump of height up to 1, so the output grows with the event rate (two words in a TR
    weigh twice one word): the right choice for **impulse-like events** (words, phonemes,
    onsets), whose rate is part of the signal. ``normalize=True``: each output is divided by
    the sum of the kernel weights that made it, ``sum_j L(t - s_j)``, i.e. a weighted *average*
    of the samples (a constant input stays constant; gain 1 at frequency 0, independent of
    the sampling rate and of gaps or the run's edges). The right choice for **regularly
    sampled signals** (video frames at a set fps, audio envelopes): without it the output is
    scaled by about ``fps * TR`` and drops towards the run's edges, where the kernel is cut
    off. An output time with no sample inside the kernel's support (``|t - s_j| < window /
    c``) is 0 either way. Do not normalise sparse, irregular events: the kernel sum of a few
    samples can be close to 0 (or negative) and would blow them up.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

__all__ = ["lanczos_kernel", "lanczos_weights", "lanczos_resample"]


def lanczos_kernel(x: np.ndarray, window: int = 3) -> np.ndarray:
    """The Lanczos kernel ``sinc(x) sinc(x / window)`` for ``|x| < window``, 0 outside.

    Parameters
    ----------
    x : numpy.ndarray
        Distances in units of the kernel's zero crossings (``c * (t - s)``).
    window : int
        Number of lobes on each side (Huth et al. 2016: 3).

    Returns
    -------
    numpy.ndarray
        Same shape as ``x``; 1 at ``x = 0``.
    """
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.abs(x) < window, np.sinc(x) * np.sinc(x / window), 0.0)


def _check_times(times: np.ndarray, what: str) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError(f"{what} contain non-finite values")
    return t


def _default_cutoff(new_times: np.ndarray) -> float:
    """Nyquist frequency of the new times: ``1 / (2 * median spacing)``."""
    if new_times.size < 2:
        raise ValueError("the default cutoff needs at least 2 new_times; pass cutoff")
    step = float(np.median(np.diff(np.sort(new_times))))
    if step <= 0:
        raise ValueError("new_times must be distinct to define the default cutoff")
    return 1.0 / (2.0 * step)


def lanczos_weights(times: np.ndarray, new_times: np.ndarray, *, window: int = 3, cutoff: float | None = None,
                    normalize: bool = False) -> scipy.sparse.csr_matrix:
    """The sparse Lanczos interpolation matrix of :func:`lanczos_resample`.

    Parameters
    ----------
    times : numpy.ndarray, shape (n_samples,)
        Times of the input samples (seconds; any order, may be irregular).
    new_times : numpy.ndarray, shape (n_new,)
        Times to interpolate at (seconds).
    window : int
        Lobes of the kernel on each side.
    cutoff : float, optional
        Cutoff frequency in Hz (default: the Nyquist frequency of ``new_times``,
        ``1 / (2 * median spacing)``).
    normalize : bool
        Divide each row by its sum (see the module docstring); rows without samples stay 0.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_new, n_samples)
        ``W[i, j] = L(c (new_times[i] - times[j]))`` (normalised by row when asked).
    """
    t = _check_times(times, "times")
    new = _check_times(new_times, "new_times")
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window}")
    window = int(window)
    f = _default_cutoff(new) if cutoff is None else float(cutoff)
    if not np.isfinite(f) or f <= 0:
        raise ValueError(f"cutoff must be a positive frequency, got {cutoff}")
    c = 2.0 * f
    order = np.argsort(t, kind="stable")
    ts = t[order]
    half = window / c
    lo = np.searchsorted(ts, new - half, side="right")
    hi = np.searchsorted(ts, new + half, side="left")
    counts = np.maximum(hi - lo, 0)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    rows = np.repeat(np.arange(new.size), counts)
    pos = np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts) + np.repeat(lo, counts)
    data = lanczos_kernel(c * (new[rows] - ts[pos]), window)
    if normalize:
        sums = np.bincount(rows, weights=data, minlength=new.size)
        empty = sums == 0          # no sample inside the support (or weights cancelling exactly)
        data = np.where(empty[rows], 0.0, data / np.where(empty, 1.0, sums)[rows])
    return scipy.sparse.csr_matrix((data, order[pos], indptr), shape=(new.size, t.size))


def lanczos_resample(values: np.ndarray, times: np.ndarray, new_times: np.ndarray, *, window: int = 3,
                     cutoff: float | None = None, normalize: bool = False) -> np.ndarray:
    """Lanczos interpolation of an irregularly sampled signal to new times (Huth et al. 2016).

    ``output(t) = sum_j L(t - s_j) x_j`` with the Lanczos kernel of :func:`lanczos_kernel`
    scaled to ``c = 2 * cutoff`` zero crossings per second (see the module docstring for the
    filter and for when to normalise: ``normalize=False`` for impulse-like events such as
    words, ``normalize=True`` for regularly sampled frames).

    Parameters
    ----------
    values : numpy.ndarray, shape (n_samples, n_features) or (n_samples,)
        Samples (finite); a 1-d array is one feature.
    times : numpy.ndarray, shape (n_samples,)
        Their times in seconds (any order).
    new_times : numpy.ndarray, shape (n_new,)
        Times to interpolate at (e.g. the acquisition times of one run's volumes).
    window : int
        Lobes of the kernel on each side (3).
    cutoff : float, optional
        Cutoff frequency in Hz (default: the Nyquist frequency of ``new_times``,
        ``1 / (2 TR)``).
    normalize : bool
        Divide by the kernel sum at each new time (a weighted average; constant input stays
        constant).

    Returns
    -------
    numpy.ndarray, shape (n_new, n_features)
        float64.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"values must be (n_samples, n_features), got shape {x.shape}")
    if np.ndim(times) != 1 or np.shape(times)[0] != x.shape[0]:
        raise ValueError(f"values have {x.shape[0]} samples but times has shape {np.shape(times)}")
    if not np.isfinite(x).all():
        raise ValueError("values contain non-finite values")
    w = lanczos_weights(times, new_times, window=window, cutoff=cutoff, normalize=normalize)
    return np.asarray(w @ x)
