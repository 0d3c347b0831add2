"""A participant's patterns: per-run GLMs (or ready-made betas), brain RDMs per ROI, ROI reliability.

Reads the participant's files and the spec; the array steps are in :mod:`bids_dnn.brain.assembly`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_dnn.brain.assembly import (average_volumes_by_stimulus, drop_unusable_voxels, finite_nonzero_mask,
                                     resolve_brain_rdm_measure, roi_rdm, roi_reliability, stimulus_betas_of_run)
from bids_dnn.console import progress
from bids_dnn.errors import AnalysisError, InputMissingError
from bids_dnn.io.bids import RunInputs
from bids_dnn.io.run_files import read_confounds
from bids_dnn.io.stimuli import StimulusSet, condition_column, normalize_stimulus_path, read_events
from bids_dnn.spec import GLMSpec
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.inputs import subject_runs

if TYPE_CHECKING:
    from bids_dnn.brain.glm import GLMOptions

__all__ = ["SubjectPatterns", "brain_rdm_measure", "brain_rdms", "fit_subject_glms", "glm_options",
           "load_subject_betas", "reliability_summary", "roi_patterns"]


@dataclass
class SubjectPatterns:
    """GLM results of one participant.

    Attributes
    ----------
    run_betas : ndarray (n_runs, n_stimuli, n_voxels)
        NaN where a stimulus was not shown in a run.
    residuals : list of ndarray (n_time, n_voxels)
    brain_mask : ndarray of bool (X, Y, Z)
        The voxels of the columns above: the brain mask without the voxels left out because
        they were constant or non-finite in a run (see ``voxel_counts``).
    voxel_counts : dict of str to int
        ``brain_mask`` (voxels of the input brain mask), ``used``, ``left_out`` and its parts
        ``left_out_constant`` (constant in at least one run) and ``left_out_nonfinite`` (NaN /
        infinite values or estimates in at least one run); empty for ready-made betas.
    """

    run_betas: np.ndarray
    residuals: list[np.ndarray]
    brain_mask: np.ndarray
    reference: Any
    runs: list[RunInputs]
    warnings: list[str]
    dofs: list[int]
    #: per-run GLM diagnostics (shown in the participant report)
    run_info: list[dict[str, Any]] = field(default_factory=list)
    voxel_counts: dict[str, int] = field(default_factory=dict)


def glm_options(glm: GLMSpec) -> GLMOptions:
    """The library's GLM options from the spec's ``brain.glm`` section, field by field."""
    from bids_dnn.brain.glm import GLMOptions

    return GLMOptions(method=glm.method, hrf=glm.hrf, high_pass_hz=glm.high_pass_hz, drift_model=glm.drift_model,
                      noise_model=glm.noise_model, confounds=tuple(glm.confounds), scrub_fd=glm.scrub_fd,
                      drop_non_steady_state=glm.drop_non_steady_state, output=glm.output, engine=glm.engine)


def fit_subject_glms(ctx: Context, subject: str, stimuli: StimulusSet) -> SubjectPatterns:
    """Per-run GLMs of one participant on fMRIPrep outputs (or ready-made betas, ``brain.input: betas``)."""
    from bids_dnn.brain.glm import fit_run_glm
    from bids_dnn.brain.images import check_same_grid, load_nifti, masked_timeseries

    brain = ctx.spec.brain
    if brain.input == "betas":
        return load_subject_betas(ctx, subject, stimuli)
    runs = subject_runs(ctx, subject)
    reference = load_nifti(runs[0].mask, "brain mask")
    mask = np.asarray(reference.dataobj) > 0
    images = []
    for run in runs:
        bold = load_nifti(run.bold, "preprocessed BOLD")
        if bold.ndim != 4:
            raise InputMissingError(f"{run.bold.name} is not a 4D image", "expected preprocessed BOLD")
        run_mask = load_nifti(run.mask, "brain mask")
        check_same_grid(bold.slicer[..., 0], run_mask, f"{run.bold.name} and {run.mask.name}")
        check_same_grid(run_mask, reference, f"{run.mask.name} and {runs[0].mask.name}")
        mask &= np.asarray(run_mask.dataobj) > 0
        images.append(bold)
    stim_pos = {sid: i for i, sid in enumerate(stimuli.stim_ids)}
    run_betas = np.full((len(runs), stimuli.n_stimuli, int(mask.sum())), np.nan)
    # per stimulus: events in the run whose regressor has signal in the kept volumes
    estimated = np.zeros((len(runs), stimuli.n_stimuli), dtype=bool)
    constant_in_a_run = np.zeros(int(mask.sum()), dtype=bool)
    nonfinite_in_a_run = np.zeros(int(mask.sum()), dtype=bool)
    residuals, warnings, dofs, run_info = [], [], [], []
    stim_spec = ctx.spec.stimuli
    with progress(f"GLM sub-{subject}", len(runs)) as advance:
        for r, (run, bold) in enumerate(zip(runs, images)):
            # read a few volumes at a time: memory is the masked series, not the whole 4D image
            data = masked_timeseries(run.bold, mask, run.bold.name)
            events = read_events(run.events)
            events["condition"] = condition_column(events, stimuli, stim_spec.source, stim_spec.trial_type_map,
                                                   stim_spec.ignore_trial_types)
            confounds = None
            if run.confounds is not None:
                confounds = read_confounds(run.confounds)
            elif brain.glm.confounds or brain.glm.scrub_fd:
                raise InputMissingError(f"{run.key}: no fMRIPrep confounds file (*_desc-confounds_timeseries.tsv)",
                                        "set brain.glm.confounds: [] and scrub_fd: null to fit without confounds")
            result = fit_run_glm(data, events, run.t_r, glm_options(brain.glm), confounds=confounds,
                                 source=run.confounds.name if run.confounds else run.key,
                                 memory_budget_bytes=ctx.resources.memory_bytes)
            run_betas[r], estimated[r] = stimulus_betas_of_run(result.conditions, result.betas, stimuli.stim_ids,
                                                               result.conditions_without_signal)
            constant = np.asarray(result.constant_voxels, dtype=bool)
            nonfinite = ~np.asarray(result.fitted_voxels, dtype=bool) & ~constant
            constant_in_a_run |= constant
            nonfinite_in_a_run |= nonfinite
            residuals.append(result.residuals)
            dofs.append(int(result.dof))
            mean_fd = None
            if confounds is not None and "framewise_displacement" in confounds:
                mean_fd = round(float(np.nanmean(confounds["framewise_displacement"])), 4)
            run_info.append({"run": run.key, "n_volumes": int(data.shape[0]),
                             "n_volumes_used": int(np.asarray(result.sample_mask).sum()), "dof": int(result.dof),
                             "n_stimuli": int(sum(c in stim_pos for c in result.conditions)),
                             "n_voxels_fitted": int(np.asarray(result.fitted_voxels).sum()),
                             "n_voxels_constant": int(constant.sum()), "n_voxels_nonfinite": int(nonfinite.sum()),
                             "mean_fd": mean_fd, "n_warnings": len(result.warnings)})
            warnings.extend(f"{run.key}: {w}" for w in result.warnings)
            advance()
    missing = [stimuli.stim_ids[i] for i in np.flatnonzero(~estimated.any(axis=0))]
    if missing:
        raise AnalysisError(f"sub-{subject} never saw {len(missing)} stimuli ({', '.join(missing[:5])}"
                            f"{', ...' if len(missing) > 5 else ''}): no events of them in any run (or none left "
                            "after censoring)", "every participant must see every stimulus of the task")
    partial = int((~estimated).any(axis=0).sum())
    if partial:
        warnings.append(f"{partial} stimuli are missing from some runs")
    run_betas, residuals, used_mask, counts = drop_unusable_voxels(run_betas, residuals, estimated, mask,
                                                                   constant_in_a_run, nonfinite_in_a_run)
    if counts["left_out"]:
        warnings.append(f"{counts['left_out']} of {counts['brain_mask']} brain-mask voxels left out of every analysis "
                        f"(constant in a run: {counts['left_out_constant']}; NaN / infinite values or estimates in a "
                        f"run: {counts['left_out_nonfinite']})")
    if not counts["used"]:
        raise AnalysisError(f"sub-{subject}: none of the {counts['brain_mask']} brain-mask voxels has usable data in "
                            "every run (each is constant or non-finite in at least one run)",
                            "check the BOLD images and the brain masks (desc-brain_mask)")
    return SubjectPatterns(run_betas, residuals, used_mask, reference, runs, warnings, dofs, run_info, counts)


def load_subject_betas(ctx: Context, subject: str, stimuli: StimulusSet) -> SubjectPatterns:
    """Patterns of one participant from ready-made per-run betas (``brain.input: betas``).

    Every run is a 4D ``..._desc-stimuli_stat-effect_statmap.nii.gz`` (one volume per stimulus
    or per presentation) whose sidecar names the stimulus of each volume (stim_file or stim_id,
    as in the events); volumes of the same stimulus in a run are averaged, volumes naming no
    stimulus of the task are ignored (with a warning). The brain mask is the intersection over
    runs of each run's ``desc-brain`` mask, or, for a run without one, of its voxels that are
    finite in every volume and non-zero in at least one. There are no GLM residuals:
    ``residuals`` and ``dofs`` are empty lists and ``brain.noise_normalization`` must be
    ``none``.
    """
    import nibabel as nib

    from bids_dnn.io.betas import read_volume_stimuli
    from bids_dnn.brain.images import check_same_grid, image_data, load_nifti

    brain = ctx.spec.brain
    if brain.noise_normalization != "none":
        raise AnalysisError(f"brain.input: betas has no GLM residuals, so brain.noise_normalization "
                            f"'{brain.noise_normalization}' is not possible",
                            "set brain.noise_normalization: none (crossnobis then uses no noise precision)")
    runs = subject_runs(ctx, subject)
    by_file, by_id = stimuli.file_to_id(), set(stimuli.stim_ids)
    stim_pos = {sid: i for i, sid in enumerate(stimuli.stim_ids)}
    reference = None
    mask = None
    loaded = []
    warnings: list[str] = []
    for run in runs:
        image = load_nifti(run.bold, "betas map")
        if image.ndim == 3:
            image = nib.Nifti1Image(np.asarray(image.dataobj)[..., None], image.affine, image.header)
        if image.ndim != 4:
            raise InputMissingError(f"{run.bold.name} is not a 3D or 4D image", "one volume per stimulus")
        labels = read_volume_stimuli(run.bold, run.volume_stimuli)
        if len(labels) != image.shape[3]:
            raise AnalysisError(f"{run.bold.name} has {image.shape[3]} volumes but its sidecar names "
                                f"{len(labels)} stimuli", "one VolumeStimuli entry (or TSV row) per volume")
        first = image.slicer[..., 0]
        reference = first if reference is None else reference
        check_same_grid(first, reference, f"{run.bold.name} and {runs[0].bold.name}")
        data = image_data(image, run.bold.name)
        if run.mask is not None:
            run_mask_img = load_nifti(run.mask, "brain mask")
            check_same_grid(first, run_mask_img, f"{run.bold.name} and {run.mask.name}")
            run_mask = np.asarray(run_mask_img.dataobj) > 0
        else:
            run_mask = finite_nonzero_mask(data)
        mask = run_mask if mask is None else mask & run_mask
        loaded.append((data, labels))
    assert mask is not None and reference is not None
    run_betas = np.full((len(runs), stimuli.n_stimuli, int(mask.sum())), np.nan)
    run_info = []
    for r, (run, (data, labels)) in enumerate(zip(runs, loaded)):
        volume_ids = [by_file.get(normalize_stimulus_path(label), label if label in by_id else None)
                      for label in labels]
        unknown = [label for label, sid in zip(labels, volume_ids) if sid is None and label]
        run_betas[r], counts = average_volumes_by_stimulus(
            data[mask], [-1 if sid is None else stim_pos[sid] for sid in volume_ids], stimuli.n_stimuli)
        shown = counts > 0
        if unknown:
            warnings.append(f"{run.key}: {len(unknown)} volume(s) name no stimulus of the task "
                            f"({', '.join(sorted(set(unknown))[:5])}); ignored")
        run_info.append({"run": run.key, "input": "betas", "n_volumes": int(len(labels)),
                         "n_stimuli": int(shown.sum()), "n_voxels": int(mask.sum()),
                         "n_warnings": int(bool(unknown))})
    missing = [stimuli.stim_ids[i] for i in np.flatnonzero(np.isnan(run_betas).all(axis=(0, 2)))] \
        if run_betas.shape[2] else []
    if missing:
        raise AnalysisError(f"sub-{subject} has no betas for {len(missing)} stimuli ({', '.join(missing[:5])}...)",
                            "every participant must have a map of every stimulus of the task")
    partial = int(np.isnan(run_betas).all(axis=2).any(axis=0).sum()) if run_betas.shape[2] else 0
    if partial:
        warnings.append(f"{partial} stimuli are missing from some runs")
    reference = nib.Nifti1Image(np.zeros(mask.shape, dtype=np.uint8), reference.affine, reference.header)
    return SubjectPatterns(run_betas, [], mask, reference, runs, warnings, [], run_info)


def brain_rdm_measure(ctx: Context, n_runs: int) -> str:
    """Resolve ``rdm.brain: auto`` (crossnobis with >= 2 runs, else correlation)."""
    return resolve_brain_rdm_measure(ctx.spec.rdm.brain, n_runs)


def brain_rdms(ctx: Context, patterns: SubjectPatterns, masks: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """The brain RDM measure and the RDM vector ``(n_pairs,)`` of every ROI."""
    measure = brain_rdm_measure(ctx, patterns.run_betas.shape[0])
    brain = ctx.spec.brain
    out = {}
    for roi, mask in masks.items():
        columns = np.flatnonzero(mask[patterns.brain_mask])
        out[roi] = roi_rdm(patterns.run_betas[:, :, columns], [res[:, columns] for res in patterns.residuals],
                           patterns.dofs, measure, noise_normalization=brain.noise_normalization,
                           noise_estimator=brain.noise_estimator, name=f"ROI {roi}")
    return measure, out


def reliability_summary(patterns: SubjectPatterns, masks: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Median over an ROI's voxels of the split-half reliability, to 4 decimals (None with fewer than 2 runs)."""
    medians = roi_reliability(patterns.run_betas, {roi: mask[patterns.brain_mask] for roi, mask in masks.items()})
    return {roi: None if median is None else round(median, 4) for roi, median in medians.items()}


def roi_patterns(patterns: SubjectPatterns, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run-mean patterns of every ROI.

    Parameters
    ----------
    patterns : SubjectPatterns
        ``run_betas`` (n_runs, n_stimuli, n_voxels), NaN where a stimulus was not in a run.
    masks : dict of str to ndarray of bool
        ROI masks on the BOLD grid.

    Returns
    -------
    dict of str to ndarray, each (n_stimuli, n_roi_voxels)
    """
    mean = np.nanmean(patterns.run_betas, axis=0)
    return {roi: mean[:, np.flatnonzero(mask[patterns.brain_mask])] for roi, mask in masks.items()}
