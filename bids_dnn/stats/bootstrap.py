"""Bootstrap over subjects: resampling indices and percentile intervals of the subject mean.

Everything random takes an explicit ``numpy.random.Generator``; equal generators give equal
results.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "bootstrap_indices",
    "bootstrap_subjects",
]


def bootstrap_indices(n: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Resampling indices with replacement (subjects, stimuli, ...).

    Parameters
    ----------
    n : int
        Number of items; each resample draws ``n`` of them from ``range(n)``.
    n_bootstrap : int
        Number of resamples.
    rng : np.random.Generator

    Returns
    -------
    np.ndarray of int64, (n_bootstrap, n)
    """
    return rng.integers(0, n, size=(int(n_bootstrap), int(n)))


def bootstrap_subjects(values: np.ndarray, n_bootstrap: int, rng: np.random.Generator,
                       ci: float = 0.95, *, indices: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap confidence interval of the subject mean, per column.

    Parameters
    ----------
    values : np.ndarray, (n_subj, k) or (n_subj,)
        NaNs are ignored in each resampled mean.
    n_bootstrap : int
    rng : np.random.Generator
        Draws ``bootstrap_indices(n_subj, n_bootstrap, rng)`` (unless ``indices`` is given).
    ci : float
        Coverage of the interval (percentiles ``(1 - ci) / 2`` and ``(1 + ci) / 2``, linear
        interpolation as ``np.percentile``).
    indices : np.ndarray of int, (n_bootstrap, n_subj), optional

    Returns
    -------
    low, high : np.ndarray, (k,)
    boot_means : np.ndarray, (n_bootstrap, k)
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    n_subj = x.shape[0]
    if not 0 < ci < 1:
        raise ValueError("ci must lie in (0, 1)")
    idx = bootstrap_indices(n_subj, n_bootstrap, rng) if indices is None else np.asarray(indices)
    b = idx.shape[0]
    counts = np.bincount((np.arange(b)[:, None] * n_subj + idx).ravel(),
                         minlength=b * n_subj).reshape(b, n_subj).astype(np.float64)
    valid = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ np.where(valid, x, 0)) / (counts @ valid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(boot, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return low, high, boot
