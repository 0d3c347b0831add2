"""Encoding samples from per-run estimates: one sample per stimulus, and the voxels to model.

Pure functions on arrays; no BIDS, no files, no printing.

Conventions
-----------
Samples
    One sample per stimulus: its response is the mean of its finite run estimates
    (``nanmean`` over runs), so a stimulus shown in some runs only is averaged over those.
Voxels
    A voxel is modelled when every stimulus has a finite response there (and, with regions,
    when it lies in at least one of them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["stimulus_responses", "modelled_voxels"]


def stimulus_responses(run_betas: np.ndarray) -> np.ndarray:
    """Response of every stimulus: the mean of its run estimates, ignoring runs without one.

    Parameters
    ----------
    run_betas : numpy.ndarray, shape (n_runs, n_stimuli, n_voxels)
        Per-run estimates; NaN where a run does not show a stimulus.

    Returns
    -------
    numpy.ndarray, shape (n_stimuli, n_voxels)
        NaN where no run has a finite estimate.
    """
    run_betas = np.asarray(run_betas)
    if run_betas.ndim != 3:
        raise ValueError(f"run_betas must be (n_runs, n_stimuli, n_voxels), got shape {run_betas.shape}")
    return np.nanmean(run_betas, axis=0)


def modelled_voxels(run_betas: np.ndarray, regions: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Voxels (columns of ``run_betas``) with a finite response to every stimulus.

    Parameters
    ----------
    run_betas : numpy.ndarray, shape (n_runs, n_stimuli, n_voxels)
        Per-run estimates.
    regions : sequence of numpy.ndarray, each (n_voxels,) bool, optional
        Keep only voxels inside at least one region (default: every voxel).

    Returns
    -------
    numpy.ndarray, shape (n_modelled,) int64
        Sorted column indices.
    """
    finite = np.isfinite(stimulus_responses(run_betas)).all(axis=0)
    if regions is not None:
        if len(regions) == 0:
            raise ValueError("regions must hold at least one region mask")
        inside = np.any([np.asarray(region, dtype=bool) for region in regions], axis=0)
        if inside.shape != finite.shape:
            raise ValueError(f"region masks must have shape {finite.shape}, got {inside.shape}")
        finite &= inside
    return np.flatnonzero(finite)
