"""A participant's inputs: the task's stimulus set, the runs and their files, the ROIs.

Finding the files (fMRIPrep outputs or ready-made betas, atlas or ROI masks), checking them
cheaply before any costly work, listing them for the resume keys, and reading the ROIs onto a
participant's BOLD grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bids_dnn.errors import InputMissingError, NothingSelectedError
from bids_dnn.io import derivatives as drv
from bids_dnn.io.bids import RunInputs
from bids_dnn.io.run_files import read_confounds
from bids_dnn.io.stimuli import StimulusSet, build_stimulus_set, read_events
from bids_dnn.spec import sanitize_label
from bids_dnn.workflows.context import Context, betas_derivatives_name

__all__ = [
    "check_roi_inputs",
    "check_subject_inputs",
    "resolve_stimuli",
    "roi_input_files",
    "roi_masks",
    "subject_input_files",
    "subject_runs",
    "write_stimulus_table",
]


def resolve_stimuli(ctx: Context) -> StimulusSet:
    """The stimulus set of the task, from the events of all its participants.

    With ``brain.input: betas`` and no events for the task, from the stimuli named in the
    sidecars of the ready-made betas of all participants that have maps (every selected one
    must), resolved under the stimulus folders as events are
    (:func:`bids_dnn.io.betas.betas_stimulus_tables`); every stimulus is then of category
    ``stimulus`` unless a ``stimuli.tsv`` gives one.
    """
    stim_spec = ctx.spec.stimuli
    bids_dir = Path(ctx.options.bids_dir)
    extra = [ctx.options.derivatives["stimuli"]] if "stimuli" in ctx.options.derivatives else []
    default_stim_deriv = bids_dir / "derivatives" / "stimuli"
    if not extra and default_stim_deriv.is_dir():
        extra = [default_stim_deriv]
    runs = ctx.index.events(ctx.task)
    if runs:
        tables = [read_events(r.events) for r in runs]
        source, category_column = stim_spec.source, stim_spec.category_column
    elif ctx.spec.brain.input == "betas":
        from bids_dnn.io.betas import betas_stimulus_tables

        brain = ctx.spec.brain
        betas = []
        for subject in ctx.index.subjects():
            try:
                betas += ctx.index.betas_runs(ctx.task, subject, brain.space, brain.resolution,
                                              derivatives=betas_derivatives_name(brain))
            except InputMissingError:
                if subject in ctx.subjects:
                    raise
        tables, source = betas_stimulus_tables(betas, [Path(d) for d in extra] + [bids_dir / "stimuli"], bids_dir)
        category_column = stim_spec.category_column if source == "stimuli_tsv" else None
    else:
        raise NothingSelectedError(f"no events for task '{ctx.task}'")
    return build_stimulus_set(tables, bids_dir, source=source,
                              trial_type_map=stim_spec.trial_type_map, category_column=category_column,
                              ignore_trial_types=stim_spec.ignore_trial_types, extra_dirs=extra,
                              require_durations=ctx.spec.brain.input == "fmriprep")


def write_stimulus_table(ctx: Context, stimuli: StimulusSet) -> None:
    """The task's ``stimuli.tsv`` at the root of the output folder (rewritten only when it changed)."""
    sidecar = {"stim_id": {"Description": "Stimulus identifier; the row order of every RDM."},
               "stim_file": {"Description": "File under the stimulus folder, as named in the events (or in stimuli.tsv)."},
               "category": {"Description": "Category (events 'category' or 'trial_type' column)."},
               "sha256": {"Description": "SHA-256 of the file."},
               "source": {"Description": "Folder the file was read from."},
               "StimulusSetHash": stimuli.set_hash()}
    drv.write_tsv(ctx.layout.stimuli_table(), stimuli.to_table(), sidecar, if_changed=True)


def subject_runs(ctx: Context, subject: str) -> list[RunInputs]:
    """A subject's runs with their input files (fMRIPrep outputs, or ready-made betas)."""
    brain = ctx.spec.brain
    if brain.input == "betas":
        return ctx.index.betas_runs(ctx.task, subject, brain.space, brain.resolution, ctx.options.session_labels,
                                    derivatives=betas_derivatives_name(brain))
    runs = ctx.index.events(ctx.task, [subject], ctx.options.session_labels)
    if not runs:
        raise NothingSelectedError(f"sub-{subject} has no events for task '{ctx.task}' with the given filters")
    return [ctx.index.fmriprep_run(r, brain.space, brain.resolution, brain.derivatives, brain.repetition_time)
            for r in runs]


def check_subject_inputs(ctx: Context, subject: str) -> None:
    """Find a subject's runs and read their image headers (no voxel data) and confounds tables:
    missing, empty or unreadable inputs are reported before any feature extraction."""
    from bids_dnn.brain.images import load_nifti

    what = "betas map" if ctx.spec.brain.input == "betas" else "preprocessed BOLD"
    runs = subject_runs(ctx, subject)
    for run in runs:
        for path, kind in ((run.bold, what), (run.mask, "brain mask")):
            if path is not None:
                load_nifti(path, kind)
        if run.confounds is not None:
            read_confounds(run.confounds)
    check_roi_inputs(ctx, subject, runs[0])


def check_roi_inputs(ctx: Context, subject: str, run: RunInputs) -> None:
    """Read every ROI file (atlas + labels table, or masks) and map the ROIs onto ``run``'s grid
    now, before any costly work: an unreadable or empty file, a missing label or a table problem
    is reported here (exit 66 / 16) instead of after feature extraction."""
    from bids_dnn.brain.images import image_data, load_nifti

    if ctx.spec.rois is None:
        return
    if run.mask is not None:
        reference = load_nifti(run.mask, "brain mask")
        brain_mask = image_data(reference, "brain mask") > 0
    else:
        reference = load_nifti(run.bold, "betas map")
        brain_mask = np.ones(reference.shape[:3], dtype=bool)
    roi_masks(ctx, reference, brain_mask, subject)


def subject_input_files(ctx: Context, subject: str) -> list[Path]:
    """Every file a subject's patterns are computed from (images, JSON sidecars, events,
    confounds, betas sidecars): their fingerprints are part of the resume keys."""
    from bids_dnn.io.derivatives import sidecar_path

    files: list[Path] = []
    for run in subject_runs(ctx, subject):
        for path in (run.bold, run.mask, run.events, run.confounds, run.volume_stimuli):
            if path is not None:
                files.append(Path(path))
        if run.bold is not None and sidecar_path(run.bold).is_file():
            files.append(sidecar_path(run.bold))
    return sorted(set(files))


def roi_input_files(ctx: Context, subject: str) -> list[Path]:
    """The atlas (+ labels table) or mask files the subject's ROIs come from (for the resume
    keys; missing ones are fingerprinted as missing, :func:`roi_masks` reports them)."""
    rois = ctx.spec.rois
    if rois is None:
        return []
    root = Path(ctx.options.bids_dir)
    if rois.atlas:
        atlas = _spec_path(root, rois.atlas)
        return [atlas, _atlas_labels_path(atlas)]
    folder = _spec_path(root, rois.masks)
    return _roi_mask_files(folder, subject) if folder.is_dir() else [folder]


def roi_masks(ctx: Context, reference: Any, brain_mask: np.ndarray, subject: str) -> dict[str, np.ndarray]:
    """ROI masks on the subject's BOLD grid (``reference``), intersected with ``brain_mask``;
    ROIs with no voxel inside are returned empty (:func:`bids_dnn.brain.assembly.split_small_rois`
    skips them)."""
    from bids_dnn.brain.rois import load_roi_masks_from_atlas, load_roi_masks_from_files, read_atlas_labels

    rois = ctx.spec.rois
    if rois is None:
        return {}
    root = Path(ctx.options.bids_dir)
    if rois.atlas:
        atlas_path = _dataset_path(root, rois.atlas)
        labels_path = _atlas_labels_path(atlas_path)
        if not labels_path.is_file():
            raise InputMissingError(f"atlas labels table not found: {labels_path}",
                                    "an atlas needs a TSV with 'index' and 'name' columns next to it")
        labels = read_atlas_labels(labels_path)  # names as text: NULL, NA, None stay ROI names
        return load_roi_masks_from_atlas(atlas_path, labels, reference, brain_mask, names=rois.labels,
                                         threshold=rois.threshold, allow_empty=True, file_label=sanitize_label)
    folder = _dataset_path(root, rois.masks)
    files = _roi_mask_files(folder, subject)
    paths = {}
    for path in files:
        entities = dict(part.split("-", 1) for part in path.name.split("_") if "-" in part)
        if "label" in entities and (not rois.labels or entities["label"] in rois.labels):
            paths[entities["label"]] = path
    if not paths:
        raise InputMissingError(f"no *_label-<roi>_mask.nii.gz files in {folder} for sub-{subject}")
    return load_roi_masks_from_files(paths, reference, brain_mask, allow_empty=True)


def _atlas_labels_path(atlas: Path) -> Path:
    """The labels table next to an atlas image (``x.nii.gz`` -> ``x.tsv``)."""
    return Path(str(atlas).replace(".nii.gz", ".tsv").replace(".nii", ".tsv"))


def _roi_mask_files(folder: Path, subject: str) -> list[Path]:
    """The subject's ``sub-<label>_*_mask.nii*`` files, else the template-space ones."""
    return sorted(folder.rglob(f"sub-{subject}_*_mask.nii*")) or sorted(
        p for p in folder.rglob("*_mask.nii*") if not p.name.startswith("sub-"))


def _spec_path(root: Path, relative: str) -> Path:
    """A path of the spec, relative to BIDS_DIR unless absolute."""
    path = Path(relative)
    return path if path.is_absolute() else root / path


def _dataset_path(root: Path, relative: str) -> Path:
    """:func:`_spec_path`, refusing a path that does not exist."""
    path = _spec_path(root, relative)
    if not path.exists():
        raise InputMissingError(f"ROI input not found: {path}", "check rois in the spec (paths are relative to BIDS_DIR)")
    return path
