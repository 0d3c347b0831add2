"""Response patterns: noise normalisation and split-half reliability.

``(n_cond, n_vox)`` patterns and ``(n_time, n_vox)`` GLM residuals in, arrays out; no files,
no printing; errors are :mod:`bids_dnn.errors` exceptions with readable messages.

Noise normalisation (``BrainSpec.noise_normalization``): ``univariate`` divides each voxel
by its residual SD; ``multivariate`` multiplies patterns by ``Sigma^(-1/2)``, ``Sigma`` a
shrinkage estimate of the voxel residual covariance (Walther et al., 2016, NeuroImage
137:188), so Euclidean distances become Mahalanobis distances. The crossnobis RDM
(``bids_dnn.rsa.rdm``) does not whiten with this module: it uses the precision ``Sigma^(-1)``
directly in the cross-validated distance.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bids_dnn.errors import AnalysisError
from bids_dnn.rsa.noise import NOISE_NORMALIZATIONS, inverse_sqrt, noise_covariance

__all__ = [
    "divide_by_sd", "noise_normalize", "residual_sd", "split_half_reliability",
]


# ---------------------------------------------------------------------------------------
# Noise normalisation (the covariance estimators are in bids_dnn.rsa.noise)
# ---------------------------------------------------------------------------------------


_SD_BLOCK = 4096
"""Voxels whose residual SD is computed at once (bounds the float64 working copy)."""


def residual_sd(residuals: np.ndarray | Sequence[np.ndarray], dof: int | None = None,
                columns: np.ndarray | None = None, block: int = _SD_BLOCK) -> np.ndarray:
    """Residual SD per voxel, ``sqrt(sum((r - mean r)^2) / dof)`` over all time points, NaN for
    voxels with a non-finite residual; computed over blocks of voxels, so the residuals of a
    whole brain are never copied whole (neither to float64 nor, for several runs, concatenated).

    Parameters
    ----------
    residuals : numpy.ndarray, shape (n_time, n_vox), or a sequence of them (runs)
        Runs are pooled as if concatenated over time (one mean, one sum of squares).
    dof : int or None
        Degrees of freedom (default ``n_time - 1``, ``n_time`` summed over runs).
    columns : numpy.ndarray of int, optional
        Voxels (columns) to use, in this order; default all.
    block : int
        Voxels per block.

    Returns
    -------
    numpy.ndarray of float64, shape (n_vox,) or (len(columns),)
    """
    runs = [residuals] if isinstance(residuals, np.ndarray) else list(residuals)
    if not runs or any(np.ndim(r) != 2 for r in runs):
        raise AnalysisError("residuals must be 2D (n_time, n_vox) arrays, got shape(s) "
                            f"{[np.shape(r) for r in runs]}")
    n_time = sum(r.shape[0] for r in runs)
    if n_time < 2:
        raise AnalysisError("need at least 2 residual time points to estimate the noise")
    n_cols = runs[0].shape[1] if columns is None else len(columns)
    dof_used = n_time - 1 if dof is None else int(dof)
    sd = np.full(n_cols, np.nan)
    for start in range(0, n_cols, block):
        # a slice (a view) when all columns are used, else the block's columns
        index = slice(start, min(start + block, n_cols)) if columns is None else np.asarray(columns[start:start + block])
        width = len(range(n_cols)[index]) if columns is None else index.size
        chunk = np.empty((n_time, width))
        row = 0
        for run in runs:
            chunk[row:row + run.shape[0]] = run[:, index]
            row += run.shape[0]
        ok = np.flatnonzero(np.isfinite(chunk).all(axis=0))
        res = chunk if ok.size == width else chunk[:, ok]
        res -= res.mean(axis=0, keepdims=True)
        sd[start + ok] = np.sqrt(np.einsum("ij,ij->j", res, res) / dof_used)
    return sd


def divide_by_sd(betas: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``betas / sd`` per voxel (last axis); NaN where the SD is not finite or zero."""
    bad = ~(np.isfinite(sd) & (sd > 0))
    out = np.array(betas, dtype=np.float64)  # the only betas-sized array made
    out /= np.where(bad, 1.0, sd)
    out[..., bad] = np.nan
    return out


def noise_normalize(
    betas: np.ndarray,
    residuals: np.ndarray,
    method: str = "multivariate",
    estimator: str = "shrinkage_diag",
    dof: int | None = None,
) -> np.ndarray:
    """Noise-normalise patterns with the GLM residuals of the same run.

    Parameters
    ----------
    betas : numpy.ndarray, shape (n_cond, n_vox)
        Patterns of one run.
    residuals : numpy.ndarray, shape (n_time, n_vox)
        That run's (whitened) residuals, same voxels.
    method : {"none", "univariate", "multivariate"}
        ``univariate``: ``betas / sd`` with ``sd = sqrt(sum((r - mean r)^2) / dof)`` per voxel
        (``dof = n_time - 1`` gives ``residuals.std(axis=0, ddof=1)``); ``multivariate``:
        ``betas @ Sigma^(-1/2)`` with ``Sigma`` from :func:`bids_dnn.rsa.noise.noise_covariance`,
        so that Euclidean distances between rows are Mahalanobis distances. Crossnobis does not
        use this whitening but the precision matrix ``Sigma^(-1)`` directly (``bids_dnn.rsa.rdm``).
    estimator : str
        Covariance estimator for ``multivariate``, a key of
        ``bids_dnn.rsa.noise.COVARIANCE_ESTIMATORS`` (``shrinkage_diag``, ``shrinkage_eye``,
        ``diag``, ``full``).
    dof : int, optional
        Residual degrees of freedom (default ``n_time - 1``).

    Returns
    -------
    numpy.ndarray, shape (n_cond, n_vox)
        Normalised patterns. Voxels with non-finite residuals or zero residual variance are
        NaN (they are left out of the covariance).
    """
    if method not in NOISE_NORMALIZATIONS:
        raise AnalysisError(f"unknown noise normalisation '{method}'; choose one of {', '.join(NOISE_NORMALIZATIONS)}")
    betas = np.asarray(betas, dtype=np.float64)
    if method == "none":
        return betas.copy()
    residuals = np.asarray(residuals)
    if betas.ndim != 2 or residuals.ndim != 2 or betas.shape[1] != residuals.shape[1]:
        raise AnalysisError(
            f"betas {betas.shape} and residuals {residuals.shape} must be (n_cond, n_vox) and (n_time, n_vox)"
        )
    sd = residual_sd(residuals, dof)
    if method == "univariate":
        return divide_by_sd(betas, sd)
    good = np.flatnonzero(np.isfinite(sd) & (sd > 0))
    out = np.full(betas.shape, np.nan)
    cov = noise_covariance(residuals[:, good], estimator, dof)
    out[:, good] = betas[:, good] @ inverse_sqrt(cov)
    return out


# ---------------------------------------------------------------------------------------
# Reliability
# ---------------------------------------------------------------------------------------


def split_half_reliability(run_betas: np.ndarray) -> np.ndarray:
    """Split-half reliability of each voxel's condition profile.

    The mean pattern of odd runs (1st, 3rd, ...) and of even runs (2nd, 4th, ...) are
    correlated across conditions per voxel (Pearson), and the correlation is stepped up to
    the full data with Spearman-Brown, ``2 r / (1 + r)``.

    Parameters
    ----------
    run_betas : numpy.ndarray, shape (n_runs, n_cond, n_vox)
        Patterns per run; NaN entries are ignored (NaN-mean over runs, then conditions
        finite in both halves).

    Returns
    -------
    numpy.ndarray, shape (n_vox,)
        Reliability per voxel; NaN where fewer than 3 conditions are usable or a half is
        constant across conditions.

    Raises
    ------
    AnalysisError
        Fewer than 2 runs or a wrong shape.
    """
    data = np.asarray(run_betas, dtype=np.float64)
    if data.ndim != 3:
        raise AnalysisError(f"run_betas must be (n_runs, n_cond, n_vox), got shape {data.shape}")
    if data.shape[0] < 2:
        raise AnalysisError(f"split-half reliability needs at least 2 runs (got {data.shape[0]})")

    def half_mean(part: np.ndarray) -> np.ndarray:
        count = np.isfinite(part).sum(axis=0)
        total = np.nansum(part, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    a, b = half_mean(data[0::2]), half_mean(data[1::2])
    ok = np.isfinite(a) & np.isfinite(b)
    n = ok.sum(axis=0)
    a0, b0 = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = a0.sum(0) / n, b0.sum(0) / n
        da, db = np.where(ok, a0 - ma, 0.0), np.where(ok, b0 - mb, 0.0)
        r = (da * db).sum(0) / np.sqrt((da**2).sum(0) * (db**2).sum(0))
        r = np.where(n >= 3, np.clip(r, -1.0, 1.0), np.nan)
        rel = np.where(r > -1.0, 2.0 * r / (1.0 + r), np.nan)
    return rel
