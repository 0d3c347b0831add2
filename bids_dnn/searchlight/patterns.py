"""Searchlight-ready patterns: the runs and voxels of a subject's estimates that the engine takes.

Pure numpy: no BIDS, no files, no printing. Noise normalisation is not done here (the caller
divides the patterns by a per-voxel residual SD between :func:`usable_patterns` and
:func:`drop_nonfinite_voxels`).

Conventions
-----------
Voxels are numbered as the True voxels of the subject's brain mask in C order
(``np.flatnonzero(brain_mask)``): the columns of ``run_betas`` and of the residuals. The
searchlight mask (:func:`voxel_mask`) holds the kept voxels, whose C order is the column order
of the returned patterns, as :func:`bids_dnn.searchlight.neighbourhoods.sphere_neighbourhoods`
expects.
Complete runs
    A run is complete when it has an estimate (no NaN) for every condition and voxel.
Usable voxels
    A voxel is used when the mean of its run estimates is finite for every condition, its
    residuals are finite in every run, and (per-run patterns, e.g. crossnobis) every run
    estimate is finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["complete_runs", "usable_patterns", "drop_nonfinite_voxels", "voxel_mask"]


def _check_run_betas(run_betas: np.ndarray) -> np.ndarray:
    run_betas = np.asarray(run_betas)
    if run_betas.ndim != 3:
        raise ValueError(f"run_betas must be (n_runs, n_cond, n_voxels), got shape {run_betas.shape}")
    return run_betas


def complete_runs(run_betas: np.ndarray) -> np.ndarray:
    """Runs with an estimate for every condition and voxel.

    Parameters
    ----------
    run_betas : np.ndarray, (n_runs, n_cond, n_voxels)
        Per-run estimates; NaN where a run lacks a condition.

    Returns
    -------
    np.ndarray, (n_runs,) bool
        False for every run when there are no voxels.
    """
    run_betas = _check_run_betas(run_betas)
    if not run_betas.shape[2]:
        return np.zeros(run_betas.shape[0], dtype=bool)
    return ~np.isnan(run_betas).any(axis=(1, 2))


def usable_patterns(run_betas: np.ndarray, residuals: Sequence[np.ndarray], *,
                    per_run: bool) -> tuple[np.ndarray, np.ndarray]:
    """Patterns of the usable voxels (see the module docstring).

    Parameters
    ----------
    run_betas : np.ndarray, (n_runs, n_cond, n_voxels)
        Estimates of the runs to use (for ``per_run``: complete runs only).
    residuals : sequence of np.ndarray, each (n_time_r, n_voxels)
        GLM residuals of every run (empty for ready-made estimates).
    per_run : bool
        Keep the runs apart (crossnobis) instead of averaging them (``nanmean``).

    Returns
    -------
    patterns : np.ndarray, (n_cond, n_used) or (n_runs, n_cond, n_used) for ``per_run``
    voxels : np.ndarray, (n_used,) int64
        The used voxels (columns of ``run_betas``), ascending.
    """
    run_betas = _check_run_betas(run_betas)
    finite = np.isfinite(np.nanmean(run_betas, axis=0)).all(axis=0)
    if per_run:
        finite &= np.isfinite(run_betas).all(axis=(0, 1))
    finite &= np.all([np.isfinite(r).all(axis=0) for r in residuals], axis=0)
    patterns = run_betas[:, :, finite] if per_run else np.nanmean(run_betas[:, :, finite], axis=0)
    return patterns, np.flatnonzero(finite)


def drop_nonfinite_voxels(patterns: np.ndarray, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the voxels (last axis) with any non-finite value, e.g. a zero residual SD.

    Parameters
    ----------
    patterns : np.ndarray, (..., n_voxels)
        E.g. (n_cond, n_voxels) or (n_runs, n_cond, n_voxels).
    voxels : np.ndarray, (n_voxels,) int
        Voxel number of each column.

    Returns
    -------
    patterns : np.ndarray, (..., n_kept), C-contiguous
    voxels : np.ndarray, (n_kept,)
    """
    voxels = np.asarray(voxels)
    if patterns.shape[-1] != voxels.shape[0]:
        raise ValueError(f"patterns have {patterns.shape[-1]} voxels, voxels {voxels.shape[0]}")
    keep = np.isfinite(patterns).all(axis=tuple(range(patterns.ndim - 1)))
    return np.ascontiguousarray(patterns[..., keep]), voxels[keep]


def voxel_mask(brain_mask: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Volume mask of some brain-mask voxels.

    Parameters
    ----------
    brain_mask : np.ndarray, (X, Y, Z)
        Non-zero voxels are in the brain; they are numbered in C order.
    voxels : np.ndarray, (n,) int
        Numbers of the brain-mask voxels to mark.

    Returns
    -------
    np.ndarray, (X, Y, Z) bool
        True at the given voxels only; its True voxels in C order are ``voxels`` sorted.
    """
    brain_mask = np.asarray(brain_mask)
    mask = np.zeros(brain_mask.shape, dtype=bool)
    mask.reshape(-1)[np.flatnonzero(brain_mask.reshape(-1))[np.asarray(voxels, dtype=np.int64)]] = True
    return mask
