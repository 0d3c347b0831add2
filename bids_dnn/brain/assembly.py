"""Assembling a participant's patterns and ROI summaries from arrays.

The array steps between the per-run estimates and the participant's outputs: one beta row per
stimulus from a run's GLM conditions or from ready-made maps (volumes averaged per stimulus),
the voxels left out because they have no usable data in every run, ROI RDMs (crossnobis on
the runs that contain every stimulus, else a distance of the run-mean patterns), split-half
ROI reliability and the ROIs too small to use. Arrays and plain options in, arrays out: the
workflows (:mod:`bids_dnn.workflows.subject_patterns`) read the files and the spec.

Shapes: ``run_betas`` is ``(n_runs, n_stimuli, n_voxels)`` with NaN where a stimulus was not
estimated in a run; a brain mask is a boolean ``(X, Y, Z)`` image whose ``n_voxels`` True
voxels are the columns, in C order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bids_dnn.brain.patterns import noise_normalize, split_half_reliability
from bids_dnn.errors import AnalysisError

__all__ = [
    "average_volumes_by_stimulus",
    "complete_runs",
    "drop_unusable_voxels",
    "finite_nonzero_mask",
    "mean_betas_volume",
    "resolve_brain_rdm_measure",
    "roi_rdm",
    "roi_reliability",
    "split_small_rois",
    "stimulus_betas_of_run",
]


def stimulus_betas_of_run(conditions: Sequence[str], betas: np.ndarray, stim_ids: Sequence[str],
                          without_signal: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A run's GLM estimates as one row per stimulus of the task.

    Parameters
    ----------
    conditions : sequence of str, length n_conditions
        The conditions of the run's GLM (stimuli, and others such as nuisance conditions).
    betas : ndarray, shape (n_conditions, n_voxels)
        One estimate per condition.
    stim_ids : sequence of str, length n_stimuli
        The task's stimuli, in row order.
    without_signal : sequence of str, optional
        Conditions whose regressor has no signal in the volumes kept: not estimated.

    Returns
    -------
    stimulus_betas : ndarray, shape (n_stimuli, n_voxels)
        float64; NaN for a stimulus not estimated in the run.
    estimated : ndarray of bool, shape (n_stimuli,)
        Whether a stimulus was estimated in the run.
    """
    betas = np.asarray(betas)
    position = {sid: i for i, sid in enumerate(stim_ids)}
    stimulus_betas = np.full((len(position), betas.shape[1]), np.nan)
    estimated = np.zeros(len(position), dtype=bool)
    for c, condition in enumerate(conditions):
        if condition in position and condition not in without_signal:
            stimulus_betas[position[condition]] = betas[c]
            estimated[position[condition]] = True
    return stimulus_betas, estimated


def average_volumes_by_stimulus(values: np.ndarray, volume_stimulus: Sequence[int],
                                n_stimuli: int) -> tuple[np.ndarray, np.ndarray]:
    """Average the volumes of a run that show the same stimulus.

    Parameters
    ----------
    values : ndarray, shape (n_voxels, n_volumes)
        The run's maps (one column per volume).
    volume_stimulus : sequence of int, length n_volumes
        The stimulus row of each volume; a negative value for a volume that shows no stimulus
        of the task (left out).
    n_stimuli : int
        Rows of the result.

    Returns
    -------
    stimulus_betas : ndarray, shape (n_stimuli, n_voxels)
        float64 mean of each stimulus's volumes; NaN for a stimulus without a volume.
    counts : ndarray of int, shape (n_stimuli,)
        Volumes averaged per stimulus.
    """
    values = np.asarray(values)
    sums = np.zeros((n_stimuli, values.shape[0]))
    counts = np.zeros(n_stimuli, dtype=int)
    for volume, stimulus in enumerate(volume_stimulus):
        if stimulus < 0:
            continue
        sums[stimulus] += values[:, volume]
        counts[stimulus] += 1
    shown = counts > 0
    stimulus_betas = np.full((n_stimuli, values.shape[0]), np.nan)
    stimulus_betas[shown] = sums[shown] / counts[shown, None]
    return stimulus_betas, counts


def finite_nonzero_mask(data: np.ndarray) -> np.ndarray:
    """The voxels of a 4D image finite in every volume and non-zero in at least one.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, n_volumes)

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
    """
    data = np.asarray(data)
    return np.isfinite(data).all(axis=3) & (np.nan_to_num(data) != 0).any(axis=3)


def drop_unusable_voxels(run_betas: np.ndarray, residuals: list[np.ndarray], estimated: np.ndarray,
                         mask: np.ndarray, constant: np.ndarray, nonfinite: np.ndarray
                         ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, dict[str, int]]:
    """Leave out the brain-mask voxels without usable data in every run.

    A voxel is left out when its BOLD series is constant (signal dropout, a mask wider than the
    brain) or has NaN / infinite values in any run, or when any of its estimates (betas of the
    stimuli estimated in a run, residuals) is not finite. Real BOLD has such voxels; keeping
    them would put NaN into every RDM, searchlight sphere and encoding target they touch.

    Parameters
    ----------
    run_betas : ndarray, shape (n_runs, n_stimuli, n_voxels)
        NaN where a stimulus was not estimated in a run (``~estimated``).
    residuals : list of ndarray, shape (n_time, n_voxels)
    estimated : ndarray of bool, shape (n_runs, n_stimuli)
    mask : ndarray of bool, shape (X, Y, Z)
        The brain mask (``n_voxels`` True voxels, the columns above in C order).
    constant, nonfinite : ndarray of bool, shape (n_voxels,)
        Voxels constant (resp. with non-finite values) in at least one run.

    Returns
    -------
    run_betas, residuals : the usable columns only
    used_mask : ndarray of bool, shape (X, Y, Z)
        ``mask`` without the left-out voxels.
    counts : dict of str to int
        ``brain_mask``, ``used``, ``left_out``, ``left_out_constant``, ``left_out_nonfinite``
        (a voxel both constant in one run and non-finite in another counts as non-finite).
    """
    finite_estimates = np.all([np.isfinite(run_betas[r][estimated[r]]).all(axis=0)
                               for r in range(len(run_betas))], axis=0)
    finite_estimates &= np.all([np.isfinite(res).all(axis=0) for res in residuals], axis=0)
    nonfinite = nonfinite | (~finite_estimates & ~constant)
    usable = ~constant & ~nonfinite
    counts = {"brain_mask": int(usable.size), "used": int(usable.sum()), "left_out": int((~usable).sum()),
              "left_out_constant": int((constant & ~nonfinite).sum()), "left_out_nonfinite": int(nonfinite.sum())}
    if usable.all():
        return run_betas, residuals, mask, counts
    used_mask = mask.copy()
    used_mask[mask] = usable
    return run_betas[:, :, usable], [res[:, usable] for res in residuals], used_mask, counts


def mean_betas_volume(run_betas: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """The run-mean pattern of every stimulus as a 4D volume.

    Parameters
    ----------
    run_betas : ndarray, shape (n_runs, n_stimuli, n_voxels)
        NaN where a stimulus was not estimated in a run (left out of its mean).
    brain_mask : ndarray of bool, shape (X, Y, Z)
        The ``n_voxels`` voxels of the columns.

    Returns
    -------
    ndarray of float32, shape (X, Y, Z, n_stimuli)
        Zero outside the brain mask.
    """
    mean_betas = np.nanmean(run_betas, axis=0)
    volume = np.zeros(brain_mask.shape + (run_betas.shape[1],), dtype=np.float32)
    volume[brain_mask] = mean_betas.T
    return volume


def resolve_brain_rdm_measure(requested: str, n_runs: int) -> str:
    """The brain RDM measure for ``n_runs`` runs: ``auto`` is crossnobis with >= 2 runs, else correlation.

    Raises
    ------
    AnalysisError
        ``crossnobis`` requested with fewer than 2 runs.
    """
    if requested == "auto":
        return "crossnobis" if n_runs >= 2 else "correlation"
    if requested == "crossnobis" and n_runs < 2:
        raise AnalysisError("rdm.brain: 'crossnobis' needs at least 2 runs per subject", "use 'correlation'")
    return requested


def complete_runs(run_betas: np.ndarray) -> np.ndarray:
    """The runs that contain every stimulus (no NaN estimate): those crossnobis cross-validates over.

    Parameters
    ----------
    run_betas : ndarray, shape (n_runs, n_stimuli, n_voxels)

    Returns
    -------
    ndarray of bool, shape (n_runs,)
    """
    return ~np.isnan(run_betas).any(axis=(1, 2))


def roi_rdm(run_betas: np.ndarray, residuals: Sequence[np.ndarray], dofs: Sequence[int], measure: str, *,
            noise_normalization: str, noise_estimator: str, name: str = "ROI") -> np.ndarray:
    """The RDM of one ROI from its run-wise patterns.

    ``crossnobis``: cross-validated over the runs that contain every stimulus
    (:func:`complete_runs`), on the voxels finite in all of them and in every run's residuals;
    with noise normalisation, the precision of those residuals (``multivariate``: the
    ``noise_estimator``; ``univariate``: its diagonal). Any other measure: of the run-mean
    patterns (NaN estimates left out of the mean) on the voxels with finite means and
    residuals, noise-normalised (:func:`bids_dnn.brain.patterns.noise_normalize`) with the
    pooled residuals.

    Parameters
    ----------
    run_betas : ndarray, shape (n_runs, n_stimuli, n_voxels)
        The ROI's columns; NaN where a stimulus was not estimated in a run.
    residuals : sequence of ndarray, shape (n_time, n_voxels)
        GLM residuals per run, same voxels (empty for ready-made betas).
    dofs : sequence of int
        Residual degrees of freedom per run.
    measure : str
        ``crossnobis`` or a measure of :func:`bids_dnn.rsa.rdm.calc_rdm`.
    noise_normalization : {"none", "univariate", "multivariate"}
    noise_estimator : str
        Covariance estimator of ``multivariate`` noise normalisation.
    name : str, optional
        How messages name the ROI.

    Returns
    -------
    ndarray, shape (n_pairs,)
        Upper triangle of the RDM in :func:`bids_dnn.rsa.rdm.pair_indices` order.

    Raises
    ------
    AnalysisError
        Crossnobis with fewer than 2 complete runs; no voxel with finite estimates.
    """
    from bids_dnn.rsa.noise import noise_precision_from_residuals
    from bids_dnn.rsa.rdm import calc_crossnobis_rdm, calc_rdm

    if measure == "crossnobis":
        complete = complete_runs(run_betas)
        if complete.sum() < 2:
            raise AnalysisError("crossnobis needs at least 2 runs that contain every stimulus",
                                "set rdm.brain: correlation")
        valid = np.isfinite(run_betas[complete]).all(axis=(0, 1)) & np.all(
            [np.isfinite(r).all(axis=0) for r in residuals], axis=0)
        if not valid.any():
            raise AnalysisError(f"{name} has no voxel with finite estimates in every run")
        precision = None
        if noise_normalization != "none":
            method = noise_estimator if noise_normalization == "multivariate" else "diag"
            precision = noise_precision_from_residuals([r[:, valid] for r in residuals], method=method, dof=dofs)
        return calc_crossnobis_rdm(run_betas[complete][:, :, valid], precision)
    mean_betas = np.nanmean(run_betas, axis=0)
    valid = np.isfinite(mean_betas).all(axis=0) & np.all([np.isfinite(r).all(axis=0) for r in residuals], axis=0)
    if not valid.any():
        raise AnalysisError(f"{name} has no voxel with finite estimates in every run")
    noise = (np.concatenate([r[:, valid] for r in residuals]) if residuals
             else np.empty((0, int(valid.sum()))))  # ready-made betas: no residuals
    normalized = noise_normalize(mean_betas[:, valid], noise, noise_normalization, noise_estimator, dof=sum(dofs))
    return calc_rdm(normalized, measure)


def roi_reliability(run_betas: np.ndarray, rois: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """Median over each ROI's voxels of their split-half reliability.

    Parameters
    ----------
    run_betas : ndarray, shape (n_runs, n_stimuli, n_voxels)
    rois : mapping of str to ndarray of bool, shape (n_voxels,)
        The columns of each ROI.

    Returns
    -------
    dict of str to float or None
        Median of :func:`bids_dnn.brain.patterns.split_half_reliability` over the ROI's voxels
        (NaN ones left out); None with fewer than 2 runs or no finite voxel.
    """
    out: dict[str, float | None] = {}
    for roi, columns in rois.items():
        if run_betas.shape[0] < 2:
            out[roi] = None
            continue
        values = split_half_reliability(run_betas[:, :, columns])
        out[roi] = float(np.nanmedian(values)) if np.isfinite(values).any() else None
    return out


def split_small_rois(masks: dict[str, np.ndarray], min_voxels: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """ROIs with at least ``min_voxels`` usable voxels, and the others' voxel counts.

    ``masks`` are already intersected with the brain mask, from which voxels constant or
    non-finite in a run were removed, so a count is the voxels an RDM would use.

    Parameters
    ----------
    masks : dict of str to ndarray of bool, any shape
    min_voxels : int

    Returns
    -------
    usable : dict of str to ndarray of bool
        The ROIs kept, in the order of ``masks``.
    small : dict of str to int
        The voxel count of each ROI left out.

    Raises
    ------
    AnalysisError
        When every ROI is too small (usually atlas and BOLD in different spaces).
    """
    counts = {roi: int(mask.sum()) for roi, mask in masks.items()}
    usable = {roi: mask for roi, mask in masks.items() if counts[roi] >= min_voxels}
    small = {roi: n for roi, n in counts.items() if n < min_voxels}
    if masks and not usable:
        raise AnalysisError(f"every ROI has fewer than rois.min_voxels = {min_voxels} usable voxels on the BOLD grid "
                            f"({', '.join(f'{r}: {n}' for r, n in small.items())})",
                            "check that the ROIs and the BOLD data are in the same space")
    return usable, small
