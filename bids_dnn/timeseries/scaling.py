"""Per-run standardisation of time series (features or BOLD).

Pure functions on arrays; no BIDS, no files, no printing.
"""

from __future__ import annotations

import numpy as np

from bids_dnn.timeseries.delays import _run_indices

__all__ = ["zscore_by_run"]

_CHUNK = 4096       # columns per float64 working block


def zscore_by_run(values: np.ndarray, runs: np.ndarray | None) -> np.ndarray:
    """z-score every column within each run: mean 0 and SD 1 over that run's samples.

    Each run is scaled with the mean and SD (``ddof=0``, as ``scipy.stats.zscore``) of its
    *own* samples only, so z-scoring never mixes runs: a test run's data never shapes a
    training run's values, nor the reverse (the convention of Huth et al. 2016 and of the
    Gallant lab's voxelwise tutorials, which z-score each run of features and BOLD).

    Parameters
    ----------
    values : numpy.ndarray, shape (n_samples, n_columns) or (n_samples,)
        Time series, all runs concatenated.
    runs : numpy.ndarray, shape (n_samples,), optional
        Run label of each sample (None: one run).

    Returns
    -------
    numpy.ndarray, same shape as ``values``
        The floating dtype of ``values`` (float64 for integer input; statistics in float64).
        A column constant within a run (SD below ``10 eps max(|mean|, 1)``) is 0 there; a
        column with a non-finite value in a run is NaN in that run.
    """
    x = np.asarray(values)
    one_d = x.ndim == 1
    if one_d:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"values must be (n_samples, n_columns), got shape {x.shape}")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    out = np.empty(x.shape, dtype=dtype)
    eps = 10 * np.finfo(np.float64).eps
    for idx in _run_indices(runs, x.shape[0]):
        for start in range(0, x.shape[1], _CHUNK):
            cols = slice(start, min(start + _CHUNK, x.shape[1]))
            block = np.asarray(x[idx, cols], dtype=np.float64)
            finite = np.isfinite(block).all(axis=0)
            block[:, ~finite] = np.nan
            mean = block.mean(axis=0)
            block -= mean
            sd = np.sqrt((block * block).mean(axis=0))
            with np.errstate(invalid="ignore"):
                constant = finite & ~(sd > eps * np.maximum(np.abs(mean), 1.0))
            block /= np.where(constant | ~finite, 1.0, sd)
            block[:, constant] = 0.0
            out[idx, cols] = block
    return out[:, 0] if one_d else out
