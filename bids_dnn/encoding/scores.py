"""Scores of encoding models and noise ceilings: per-column Pearson r and R2, Spearman-Brown
reliabilities, ceiling-normalised scores and their flags, ROI summaries.

Pure functions on arrays; no BIDS, no files, no printing.

Noise ceiling
    :func:`noise_ceiling_from_split_half` (Spearman-Brown corrected split-half reliability per
    target), :func:`pooled_reliability` (ROI level: Spearman-Brown of the *mean* split-half r,
    since the correction is concave and its mean over noisy voxels is biased: about
    ``-2 var(r)``, -0.09 for pure noise and 24 stimuli) and :func:`ceiling_normalised`
    (``r2 / reliability``, reported only where the reliability is at least
    :data:`MIN_CEILING`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = [
    "pearson_columns",
    "r2_columns",
    "spearman_brown",
    "noise_ceiling_from_split_half",
    "ceiling_normalised",
    "outside_unit_interval",
    "at_alpha_grid_edge",
    "pooled_reliability",
    "roi_scores",
    "MIN_CEILING",
]

#: smallest reliability (fraction of reproducible response variance) that a score is divided by
MIN_CEILING = 0.1


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns.

    Parameters
    ----------
    a, b : numpy.ndarray, shape (n_samples, n_columns)

    Returns
    -------
    numpy.ndarray, shape (n_columns,)
        NaN where a column is constant or has non-finite values.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    da = a - a.mean(axis=0)
    db = b - b.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        num = (da * db).sum(axis=0)
        den = np.sqrt((da * da).sum(axis=0) * (db * db).sum(axis=0))
        r = np.where(den > 0, num / den, np.nan)
    return np.clip(r, -1.0, 1.0)


def r2_columns(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """``1 - sum (y - yhat)^2 / sum (y - mean(y))^2`` per column (NaN where ``y`` is constant
    or non-finite).

    Parameters
    ----------
    y, yhat : numpy.ndarray, shape (n_samples, n_columns)

    Returns
    -------
    numpy.ndarray, shape (n_columns,)
    """
    y = np.asarray(y, dtype=np.float64)
    yhat = np.asarray(yhat, dtype=np.float64)
    if y.ndim == 1:
        y, yhat = y[:, None], yhat[:, None]
    sse = ((y - yhat) ** 2).sum(axis=0)
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1.0 - sse / sst, np.nan)


def _pooled_r2(responses: np.ndarray, predictions: np.ndarray, tested: np.ndarray,
               bad: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """R2 of the out-of-fold predictions pooled over the test folds (NaN for ``bad`` targets)."""
    n_targets = responses.shape[1]
    r2 = np.full(n_targets, np.nan)
    for start in range(0, n_targets, chunk):
        cols = slice(start, min(start + chunk, n_targets))
        y = np.asarray(responses[tested, cols], dtype=np.float64)
        p = np.asarray(predictions[tested, cols], dtype=np.float64)
        r2[cols] = r2_columns(y, p)
    r2[bad] = np.nan
    return r2


def _fold_mean(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """(n_folds, n_targets) -> (n_targets,) NaN-ignoring mean over folds (NaN when no fold has
    a value, and for ``bad`` targets)."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, np.where(finite, values, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    out[bad] = np.nan
    return out



def spearman_brown(r: np.ndarray | float, factor: float = 2.0) -> np.ndarray:
    """Spearman-Brown prophecy: reliability of data ``factor`` times as long.

    ``r_sb = factor * r / (1 + (factor - 1) * r)``; NaN where the denominator is <= 0
    (e.g. ``r = -1`` with ``factor = 2``) or ``r`` is NaN.

    Parameters
    ----------
    r : array_like
        Reliability (e.g. split-half correlation), any shape.
    factor : float
        Length ratio (2 for split-half -> full data).

    Returns
    -------
    numpy.ndarray
        Same shape as ``r``.
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    r = np.asarray(r, dtype=np.float64)
    den = 1.0 + (factor - 1.0) * r
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, factor * r / den, np.nan)


def noise_ceiling_from_split_half(split_half_r: np.ndarray) -> np.ndarray:
    """Reliability of the full data from split-half correlations (Spearman-Brown, factor 2).

    Parameters
    ----------
    split_half_r : numpy.ndarray, shape (n_targets,) or (n_splits, n_targets)
        Pearson r between the two halves' response profiles; with several splits the r's
        are averaged (NaN-ignoring) over axis 0 before the correction.

    Returns
    -------
    numpy.ndarray, shape (n_targets,)
        ``2 r / (1 + r)``: the expected correlation between two full-length repetitions,
        i.e. the fraction of response variance that is reproducible -- the ceiling for R2
        (for a correlation use its square root). NaN where r <= -1 or NaN.
    """
    r = np.asarray(split_half_r, dtype=np.float64)
    if r.ndim == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = np.nanmean(r, axis=0)
    return spearman_brown(r, 2.0)


def ceiling_normalised(score: np.ndarray, ceiling: np.ndarray, min_ceiling: float = MIN_CEILING) -> np.ndarray:
    """Score divided by the noise ceiling: ``score / ceiling``, NaN where ``ceiling <
    min_ceiling`` or either is NaN.

    Pass R2 with the reliability (:func:`noise_ceiling_from_split_half`, or
    :func:`pooled_reliability` for an ROI mean), or Pearson r with the square root of the
    reliability. A ceiling near 0 (a target or ROI without reproducible signal) makes the
    ratio meaningless: its sign and size are set by the estimation noise of the denominator,
    so such targets get NaN ("n/a") rather than a huge or sign-flipped value. Values above 1
    are kept (noisy ceilings).

    Parameters
    ----------
    score, ceiling : array_like
        Broadcastable arrays.
    min_ceiling : float
        Smallest ceiling divided by (default :data:`MIN_CEILING` = 0.1: at least 10 % of the
        response variance reproducible across split halves). Must be positive.

    Returns
    -------
    numpy.ndarray
    """
    if not min_ceiling > 0:
        raise ValueError(f"min_ceiling must be positive, got {min_ceiling}")
    score = np.asarray(score, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(ceiling) & (ceiling >= min_ceiling), score / ceiling, np.nan)


def outside_unit_interval(values: np.ndarray) -> np.ndarray:
    """True where a ceiling-normalised score is finite and outside ``[0, 1]``.

    A normalised score below 0 (worse than predicting the mean) or above 1 (better than the
    data's own reliability) is not a fraction of the explainable variance: the ceiling is too
    noisy for that target, or the model fails there. Reports and tables flag such values.
    """
    values = np.asarray(values, dtype=np.float64)
    return np.isfinite(values) & ((values < 0.0) | (values > 1.0))


def at_alpha_grid_edge(chosen: np.ndarray, grid: Sequence[float]) -> np.ndarray:
    """True where a chosen ridge penalty is the smallest or the largest of the grid.

    A penalty at the edge of the grid means the inner cross-validation wanted a value beyond
    it (extend the grid), or, at the top, that the best prediction is close to the mean
    response (no learnable signal). NaN penalties (targets without a fit) are False, and so is
    every penalty of a one-value grid (nothing was chosen).

    Parameters
    ----------
    chosen : numpy.ndarray
        Chosen penalties (any shape).
    grid : sequence of float
        The penalty grid they were chosen from.
    """
    grid = np.unique(np.asarray(grid, dtype=np.float64))
    chosen = np.asarray(chosen, dtype=np.float64)
    if grid.size < 2:
        return np.zeros(chosen.shape, dtype=bool)
    return np.isclose(chosen, grid.min(), rtol=1e-6, atol=0.0) | np.isclose(chosen, grid.max(), rtol=1e-6, atol=0.0)


def pooled_reliability(reliability: np.ndarray) -> float:
    """Reliability of a set of targets (an ROI) from their Spearman-Brown corrected
    split-half reliabilities: ``SB(mean_v r_v)`` with ``r_v = rel_v / (2 - rel_v)`` (the
    inverse of ``SB(r) = 2 r / (1 + r)``) and NaN targets ignored.

    The mean of per-target corrected reliabilities is biased downwards because the correction
    is concave: for pure noise (split-half r with mean 0 and variance ``~1 / (n_cond - 1)``) it
    is about ``-2 var(r)``, -0.09 with 24 conditions, whereas ``SB`` of the mean r is unbiased
    to first order.

    Parameters
    ----------
    reliability : numpy.ndarray, shape (n_targets,)
        Per-target reliabilities (output of :func:`noise_ceiling_from_split_half`).

    Returns
    -------
    float
        NaN when no target has a finite reliability.
    """
    rel = np.asarray(reliability, dtype=np.float64).ravel()
    rel = rel[np.isfinite(rel)]
    if rel.size == 0:
        return float("nan")
    split_half = rel / (2.0 - rel)
    return float(spearman_brown(float(np.mean(split_half)), 2.0))


def roi_scores(r: np.ndarray, r2: np.ndarray, alphas: np.ndarray, reliability: np.ndarray, columns: np.ndarray,
               alpha_grid: Sequence[float]) -> dict[str, float | int | bool]:
    """Summary of the encoding scores of one ROI (a set of targets).

    Parameters
    ----------
    r, r2 : numpy.ndarray, shape (n_targets,)
        Per-target held-out Pearson r and R2 (:class:`bids_dnn.encoding.ridge.EncodingResult`).
    alphas : numpy.ndarray, shape (n_folds, n_targets)
        Ridge penalty chosen in each outer fold (NaN for targets without a fit).
    reliability : numpy.ndarray, shape (n_targets,)
        Per-target noise ceiling (:func:`noise_ceiling_from_split_half`; NaN where unknown).
    columns : numpy.ndarray, shape (n_roi_targets,) int
        The ROI's targets (column indices).
    alpha_grid : sequence of float
        The penalty grid the alphas were chosen from.

    Returns
    -------
    dict
        ``n_voxels`` (number of ROI targets); ``mean_r`` and ``mean_r2`` (NaN-ignoring means over
        the ROI, NaN when no target has a value); ``median_alpha`` (median over targets and folds,
        NaN when any is NaN or the ROI is empty); ``noise_ceiling`` (:func:`pooled_reliability`);
        ``normalized_r2`` (:func:`ceiling_normalised` of ``mean_r2`` by ``noise_ceiling``);
        ``normalized_r2_out_of_range`` (:func:`outside_unit_interval`); ``alpha_at_grid_edge``
        (share of the finite (target, fold) penalties at an end of the grid, NaN without any).
    """
    columns = np.asarray(columns, dtype=np.int64)

    def mean(values: np.ndarray) -> float:
        values = np.asarray(values, dtype=np.float64)[columns]
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    alphas = np.asarray(alphas, dtype=np.float64)
    noise_ceiling = pooled_reliability(np.asarray(reliability, dtype=np.float64)[columns])
    mean_r2 = mean(r2)
    normalized = float(ceiling_normalised(np.array([mean_r2]), np.array([noise_ceiling]))[0])
    chosen = alphas[:, columns]
    finite_chosen = chosen[np.isfinite(chosen)]
    return {"n_voxels": int(columns.size), "mean_r": mean(r), "mean_r2": mean_r2,
            "median_alpha": float(np.median(chosen)) if columns.size else float("nan"),
            "noise_ceiling": noise_ceiling, "normalized_r2": normalized,
            "normalized_r2_out_of_range": bool(outside_unit_interval(normalized)),
            "alpha_at_grid_edge": float(at_alpha_grid_edge(finite_chosen, alpha_grid).mean()) if finite_chosen.size
            else float("nan")}
