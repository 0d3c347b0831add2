"""Noise ceilings of naturalistic time series from repeated presentations of one stimulus run.

Pure functions on arrays; no BIDS, no files, no printing.

Signal power
    With ``N`` repeats ``r_1 .. r_N`` of one voxel's time series (each ``n_samples`` long) and
    their mean ``m``, the signal power (Sahani & Linden 2003; Schoppe et al. 2016) is
    the unbiased estimate of the variance of the stimulus-locked response::

        SP = (Var(sum_n r_n) - sum_n Var(r_n)) / (N (N - 1))
           = (N Var(m) - mean_n Var(r_n)) / (N - 1)

    (variances over samples). From it (:data:`REPEAT_CEILINGS`):

    ``"explainable_variance"`` (default)
        ``SP / mean_n Var(r_n)``: the fraction of a *single* presentation's variance that a
        model of the stimulus can explain, the ceiling of the R2 of a model tested on single
        presentations. Equal to the Gallant lab's bias-corrected explainable variance
        (``voxelwise_tutorials.utils.explainable_variance``: ``ev - (1 - ev) / (N - 1)`` with
        ``ev = Var(m) / mean_n Var(r_n)``). Unbiased: about 0 (and negative half of the time)
        for voxels without a stimulus-locked signal; not clipped.
    ``"cc_max"``
        ``sqrt(SP / Var(m))`` (Hsu et al. 2004; Schoppe et al. 2016): the largest
        Pearson r any model can reach against the *mean* of the ``N`` repeats. NaN where
        ``SP <= 0``.

    ``zscore=True`` (default) z-scores each repeat first (as the encoding models see every run
    z-scored), so that slow drifts in scale between repeats do not count as noise power.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["REPEAT_CEILINGS", "signal_power", "repeat_noise_ceiling"]


def _variances(repeats: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``Var(m)`` and ``mean_n Var(r_n)`` (ddof=1 over samples), and N."""
    n = repeats.shape[0]
    var_mean = repeats.mean(axis=0).var(axis=0, ddof=1)
    mean_var = repeats.var(axis=1, ddof=1).mean(axis=0)
    return var_mean, mean_var, n


def signal_power(repeats: np.ndarray) -> np.ndarray:
    """Signal power of repeated time series (Sahani & Linden 2003; Schoppe et al. 2016).

    ``SP = (N Var(m) - mean_n Var(r_n)) / (N - 1)`` per voxel (``m`` the mean over repeats;
    variances over samples with ``ddof=1``).

    Parameters
    ----------
    repeats : numpy.ndarray, shape (n_repeats, n_samples, n_voxels)
        The same stimulus run presented ``n_repeats >= 2`` times (no z-scoring here).

    Returns
    -------
    numpy.ndarray, shape (n_voxels,)
    """
    r = _check_repeats(repeats)
    var_mean, mean_var, n = _variances(r)
    return (n * var_mean - mean_var) / (n - 1)


def _explainable_variance(var_mean: np.ndarray, mean_var: np.ndarray, n: int) -> np.ndarray:
    sp = (n * var_mean - mean_var) / (n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean_var > 0, sp / mean_var, np.nan)


def _cc_max(var_mean: np.ndarray, mean_var: np.ndarray, n: int) -> np.ndarray:
    sp = (n * var_mean - mean_var) / (n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((sp > 0) & (var_mean > 0), np.sqrt(np.maximum(sp, 0.0) / var_mean), np.nan)


#: name -> ceiling from (Var(mean over repeats), mean over repeats of Var, n_repeats); see the module docstring
REPEAT_CEILINGS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "explainable_variance": _explainable_variance,
    "cc_max": _cc_max,
}


def _check_repeats(repeats: np.ndarray) -> np.ndarray:
    r = np.asarray(repeats, dtype=np.float64)
    if r.ndim == 2:
        r = r[:, :, None]
    if r.ndim != 3:
        raise ValueError(f"repeats must be (n_repeats, n_samples, n_voxels), got shape {r.shape}")
    if r.shape[0] < 2 or r.shape[1] < 2:
        raise ValueError(f"need >= 2 repeats of >= 2 samples, got shape {r.shape}")
    return r


def repeat_noise_ceiling(repeats: np.ndarray, *, kind: str = "explainable_variance", zscore: bool = True,
                         chunk: int = 4096) -> np.ndarray:
    """Noise ceiling per voxel from repeated presentations of one stimulus run.

    See the module docstring: ``"explainable_variance"`` is ``SP / mean_n Var(r_n)`` (the R2
    ceiling for single presentations), ``"cc_max"`` is ``sqrt(SP / Var(mean))`` (Schoppe et
    al. 2016: the r ceiling against the repeat mean).

    Parameters
    ----------
    repeats : numpy.ndarray, shape (n_repeats, n_samples, n_voxels)
        The same run's time series, ``n_repeats >= 2`` presentations (a 2-d array is one voxel).
    kind : str
        A key of :data:`REPEAT_CEILINGS`.
    zscore : bool
        z-score each repeat over samples first (a repeat constant in a voxel gives NaN).
    chunk : int
        Voxels per float64 working block.

    Returns
    -------
    numpy.ndarray, shape (n_voxels,)
        NaN for voxels with non-finite values or without variance.
    """
    if kind not in REPEAT_CEILINGS:
        raise ValueError(f"kind must be one of {sorted(REPEAT_CEILINGS)}, got {kind!r}")
    arr = np.asarray(repeats)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"repeats must be (n_repeats >= 2, n_samples >= 2, n_voxels), got shape {arr.shape}")
    n_voxels = arr.shape[2]
    out = np.full(n_voxels, np.nan)
    for start in range(0, n_voxels, int(chunk)):
        cols = slice(start, min(start + int(chunk), n_voxels))
        r = np.asarray(arr[:, :, cols], dtype=np.float64)
        ok = np.isfinite(r).all(axis=(0, 1))
        if zscore:
            r = r - r.mean(axis=1, keepdims=True)
            sd = r.std(axis=1, keepdims=True)
            ok &= (sd > 0).all(axis=(0, 1))
            with np.errstate(invalid="ignore", divide="ignore"):
                r = r / np.where(sd > 0, sd, 1.0)
        var_mean, mean_var, n = _variances(r)
        with np.errstate(invalid="ignore"):
            value = REPEAT_CEILINGS[kind](var_mean, mean_var, n)
        out[cols] = np.where(ok, value, np.nan)
    return out
