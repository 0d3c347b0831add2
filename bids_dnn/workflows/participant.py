"""Participant level: the only place that knows the order of the pipeline for one subject.

stimuli -> features (cached per model) -> model RDMs -> per run GLM -> patterns + ROIs
-> brain RDMs -> ROI RSA with permutation p-values -> derivatives, provenance, report.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn import __version__
from bids_dnn.io import derivatives as drv
from bids_dnn.io.bids import (DatasetIndex, RunInputs, check_dataset, check_paths, load_filter_file,
                              read_confounds)
from bids_dnn.cli.main import RunOptions
from bids_dnn.console import FILE_ONLY, log_file, logger, progress, run_log_lines
from bids_dnn.errors import (AnalysisError, BidsDnnError, InputMissingError, NothingSelectedError, UsageError,
                             output_space_error)
from bids_dnn.workflows.resources import Resources, current_resources, map_participants
from bids_dnn.spec import AnalysisSpec, ModelSpec, check_code_permission, load_spec, spec_hash, spec_to_dict
from bids_dnn.io.stimuli import (StimulusSet, build_stimulus_set, condition_column, normalize_stimulus_path,
                              read_events, stimulus_input_identity)

#: set in the container image (Dockerfile): its tag, recorded in the provenance and dataset_description
CONTAINER_ENV = "BIDS_DNN_CONTAINER"

RSA_COLUMNS = {
    "subject": "Participant label.",
    "roi": "Region of interest.",
    "model": "Model label.",
    "layer": "Layer (node) name as in the model.",
    "comparison": "RDM comparison measure (signed).",
    "brain_rdm": "Dissimilarity measure of the brain RDM.",
    "model_rdm": "Dissimilarity measure of the model RDM.",
    "score": "Comparison of brain and model RDM (upper triangles); n/a for an ROI skipped for having fewer "
             "usable voxels than rois.min_voxels (n_voxels says how many).",
    "p_permutation": "One-sided stimulus-label permutation p-value: (1 + #(null >= score)) / (1 + n).",
    "n_permutations": "Number of permutations (rows and columns of the model RDM permuted together).",
    "n_voxels": "Voxels in the ROI (on the BOLD grid, inside the brain mask).",
    "n_stimuli": "Stimuli (RDM rows).",
}


@dataclass
class Context:
    """Everything shared by the participants of one invocation."""

    options: RunOptions
    spec: AnalysisSpec
    index: DatasetIndex
    task: str
    subjects: list[str]
    layout: drv.OutputLayout
    run_id: str
    started: float = field(default_factory=time.time)
    #: model label -> content key of its feature file (checked on every read)
    feature_keys: dict[str, str] = field(default_factory=dict)
    #: work folder, threads and memory budget of this process (see :mod:`bids_dnn.workflows.resources`)
    resources: Resources = field(default_factory=Resources)
    #: the run's log lines before the participants (top of each participant's log file)
    log_preamble: tuple[str, ...] = ()
    #: the input dataset as the output folder records it (``{"id", "stimuli"}``, see
    #: :func:`bids_dnn.io.input_dataset.record_output_dataset`); copied into every status file
    dataset: dict[str, str] = field(default_factory=dict)


def subject_seed(seed: int, subject: str) -> np.random.SeedSequence:
    """The seed of a participant's random steps: independent of which others are selected."""
    return np.random.SeedSequence([seed, zlib.crc32(subject.encode())])


def prepare(options: RunOptions) -> Context:
    """Validate paths, spec and dataset; select task and subjects. Writes nothing."""
    check_paths(options.bids_dir, options.output_dir, options.work_dir, database_dir=options.database_dir)
    spec = load_spec(options.spec_path).with_seed(options.random_seed)
    check_code_permission(spec, options.allow_custom_code)
    if not options.skip_bids_validation:
        check_dataset(options.bids_dir)
    elif not Path(options.bids_dir).is_dir():
        raise InputMissingError(f"BIDS folder not found: {options.bids_dir}")
    drv.check_output_folder(options.output_dir)
    resources = current_resources(options)
    _limit_threads(resources)
    index = DatasetIndex(Path(options.bids_dir), derivatives=options.derivatives,
                         filters=load_filter_file(options.bids_filter_file), database_dir=resources.database_dir)
    task = index.choose_task(options.task)
    betas = betas_derivatives_name(spec.brain) if spec.brain.input == "betas" else None
    subjects = index.select_subjects(options.participant_labels, task, options.session_labels, betas)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{spec_hash(spec)[:6]}"
    layout = drv.OutputLayout(Path(options.output_dir), task=task, space=spec.brain.space)
    return Context(options, spec, index, task, subjects, layout, run_id, resources=resources)


def _limit_threads(resources: Resources) -> None:
    """torch's threads: ``--omp-nthreads`` (else ``--nprocs``); the BLAS / OpenMP pools are
    limited (and restored after the run) by :func:`bids_dnn.workflows.resources.activate`."""
    if resources.omp_nthreads:
        import torch

        torch.set_num_threads(resources.omp_nthreads)


def resolve_stimuli(ctx: Context) -> StimulusSet:
    """The stimulus set of the task, from the events of all its participants.

    With ``brain.input: betas`` and no events for the task, from the stimuli named in the
    sidecars of the ready-made betas of all participants that have maps (every selected one
    must), resolved under the stimulus folders as events are
    (:func:`bids_dnn.io.bids.betas_stimulus_tables`); every stimulus is then of category
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
        from bids_dnn.io.bids import betas_stimulus_tables

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
    sidecar = {"stim_id": {"Description": "Stimulus identifier; the row order of every RDM."},
               "stim_file": {"Description": "File under the stimulus folder, as named in the events (or in stimuli.tsv)."},
               "category": {"Description": "Category (events 'category' or 'trial_type' column)."},
               "sha256": {"Description": "SHA-256 of the file."},
               "source": {"Description": "Folder the file was read from."},
               "StimulusSetHash": stimuli.set_hash()}
    drv.write_tsv(ctx.layout.stimuli_table(), stimuli.to_table(), sidecar, if_changed=True)


# ---------------------------------------------------------------------------------------
# Features and model RDMs
# ---------------------------------------------------------------------------------------


def model_features(ctx: Context, model_spec: ModelSpec, stimuli: StimulusSet) -> dict[str, np.ndarray]:
    """Extract (or reuse) the features of one model; returns layer -> (n_stimuli, n_units)."""
    from bids_dnn.features import store as feat
    from bids_dnn.backend import resolve_device
    from bids_dnn.dnn.extract import extract_features
    from bids_dnn.dnn.models import load_model, resolve_layers

    index = ctx.spec.models.index(model_spec)
    loaded = load_model(model_spec, field_path=f"models[{index}]")
    layers = resolve_layers(loaded.module, model_spec.layers, field_path=f"models[{index}].layers",
                            model_name=model_spec.name)
    # video sampling settings (fps, n_frames, aggregate) are ingredients of video features only
    identity = {**loaded.identity(), "token_policy": model_spec.token_policy,
                **stimulus_input_identity(stimuli, ctx.spec.stimuli.video)}
    key = feat.feature_content_key(stimuli.sha256, identity, layers, model_spec.dtype, model_spec.reduction)
    path = ctx.layout.features(model_spec.output_label)
    device = resolve_device(ctx.options.device)

    def compute(writer: Any) -> None:
        from bids_dnn.io.stimuli import load_stimulus

        logger.info("extracting %d layers of %s for %d stimuli on %s", len(layers), model_spec.name,
                    stimuli.n_stimuli, device)
        video = ctx.spec.stimuli.video
        side, fit = decode_side(loaded.transform), getattr(loaded.transform, "resized", None)
        images = [(lambda p=p: load_stimulus(p, video, side, fit)) for p in stimuli.paths]
        with progress(f"features {model_spec.output_label}", stimuli.n_stimuli) as advance:
            shapes = extract_features(loaded, images, layers, batch_size=model_spec.batch_size, device=device,
                                      token_policy=model_spec.token_policy,
                                      on_batch=writer.write_batch, progress=advance,
                                      aggregate=video.aggregate if stimuli.has_video else None,
                                      memory_budget_bytes=ctx.resources.memory_bytes)
        writer.set_layer_shapes(shapes)

    attrs = feat.provenance_attrs(loaded.identity(), token_policy=model_spec.token_policy,
                                  library_versions=library_versions(), stimulus_sha256s=stimuli.sha256)
    feat.ensure_features(path, key, compute, stim_ids=stimuli.stim_ids, dtype=model_spec.dtype,
                         attrs={**attrs, "model_label": model_spec.output_label},
                         reduction=model_spec.reduction, force=ctx.options.force,
                         scratch_dir=ctx.resources.scratch_dir)
    ctx.feature_keys[model_spec.output_label] = key
    try:
        stored = read_checked_features(ctx, model_spec.output_label, layers)
    except feat.FeatureDigestError as exc:  # edited or reordered since it was written: extract again
        logger.warning("%s; extracting the features again", exc.message)
        feat.ensure_features(path, key, compute, stim_ids=stimuli.stim_ids, dtype=model_spec.dtype,
                             attrs={**attrs, "model_label": model_spec.output_label},
                             reduction=model_spec.reduction, force=True, scratch_dir=ctx.resources.scratch_dir)
        stored = read_checked_features(ctx, model_spec.output_label, layers)
    if list(stored.stim_ids) != list(stimuli.stim_ids):
        raise AnalysisError(f"feature file {path} does not match the stimulus order", "rerun with --force")
    return stored.layers


def decode_side(transform: Any) -> int | None:
    """The shorter side at which stimulus images are decoded for a model: ``DECODE_HEADROOM``
    times its transform's resize target (None, full size, for a transform without one)."""
    from bids_dnn.io.media import DECODE_HEADROOM

    resize = getattr(transform, "resize", None)
    return DECODE_HEADROOM * int(resize) if isinstance(resize, int) and resize > 0 else None


def read_checked_features(ctx: Context, model: str, layers: list[str]) -> Any:
    """Read a model's features, refusing a file rewritten by a run with other inputs meanwhile."""
    from bids_dnn.features import store as feat

    path = ctx.layout.features(model)
    stored = feat.read_features(path, layers)
    if stored.attrs.get("content_key") != ctx.feature_keys[model]:
        raise AnalysisError(f"{path.name} was replaced by a run with other stimuli, model or layers",
                            "do not share one output folder between runs with different specs")
    return stored


def model_rdms(ctx: Context, stimuli: StimulusSet) -> dict[str, dict[str, np.ndarray]]:
    """Model RDM vectors: model label -> layer -> (n_pairs,). Written once at the root; a file
    whose sidecar holds the same content key (features + measure) is left as it is."""
    from bids_dnn.rsa.rdm import calc_rdm, vector_to_square
    from bids_dnn.workflows.stages import content_key

    measure = ctx.spec.rdm.model
    out: dict[str, dict[str, np.ndarray]] = {}
    for model_spec in ctx.spec.models:
        features = model_features(ctx, model_spec, stimuli)
        label = model_spec.output_label
        out[label] = {}
        for layer, values in features.items():
            vector = calc_rdm(values.astype(np.float64), measure)
            out[label][layer] = vector
            path = ctx.layout.model_rdm(label, layer, measure)
            key = content_key("model_rdm", ctx.feature_keys[label], layer, measure)
            if not ctx.options.force and path.is_file() and _sidecar_value(path, "ContentKey") == key:
                continue
            write_relmat(path, vector_to_square(vector, stimuli.n_stimuli), stimuli.stim_ids, {
                "Measure": measure, "Model": model_spec.name, "ModelLabel": label,
                "Layer": layer, "NumberOfUnits": int(values.shape[1]), "ContentKey": key,
                "Sources": [str(ctx.layout.features(label).relative_to(ctx.layout.root))]})
    return out


def _sidecar_value(path: Path, name: str) -> Any:
    """A field of ``path``'s JSON sidecar (None when missing or unreadable)."""
    return drv.read_json_object(drv.sidecar_path(path)).get(name)


def write_relmat(path: Path, square: np.ndarray, stim_ids: list[str], sidecar: dict[str, Any]) -> None:
    """A square RDM as TSV (header = stimulus ids, same row order) + JSON sidecar."""
    table = pd.DataFrame(square, columns=stim_ids)
    drv.write_tsv(path, table, {**sidecar, "StimulusIds": list(stim_ids),
                                "Description": "Representational dissimilarity matrix; rows and columns "
                                               "follow the column header (the task's stimuli.tsv order)."})


def read_relmat(path: Path) -> tuple[np.ndarray, list[str]]:
    table = drv.read_tsv(path)
    return table.to_numpy(dtype=np.float64), list(table.columns)


# ---------------------------------------------------------------------------------------
# One participant
# ---------------------------------------------------------------------------------------


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


def fit_subject_glms(ctx: Context, subject: str, stimuli: StimulusSet) -> SubjectPatterns:
    """Per-run GLMs of one participant on fMRIPrep outputs (or ready-made betas, ``brain.input: betas``)."""
    import nibabel as nib

    from bids_dnn.brain.glm import fit_run_glm
    from bids_dnn.brain.patterns import check_same_grid, load_nifti, masked_timeseries

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
            result = fit_run_glm(data, events, run.t_r, brain.glm, confounds=confounds,
                                 source=run.confounds.name if run.confounds else run.key,
                                 memory_budget_bytes=ctx.resources.memory_bytes)
            for c, cond in enumerate(result.conditions):
                if cond in stim_pos and cond not in result.conditions_without_signal:
                    run_betas[r, stim_pos[cond]] = result.betas[c]
                    estimated[r, stim_pos[cond]] = True
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
    run_betas, residuals, used_mask, counts = _drop_unusable_voxels(run_betas, residuals, estimated, mask,
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


def _drop_unusable_voxels(run_betas: np.ndarray, residuals: list[np.ndarray], estimated: np.ndarray,
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


def betas_derivatives_name(brain: Any) -> str:
    """The derivatives name of ready-made betas: ``brain.derivatives``, where its default
    ``fmriprep`` means ``betas`` (``-d betas=PATH``, else ``BIDS_DIR/derivatives/betas``)."""
    return "betas" if brain.derivatives == "fmriprep" else brain.derivatives


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
    from bids_dnn.brain.patterns import load_nifti

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
    from bids_dnn.brain.patterns import image_data, load_nifti

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


def _atlas_labels_path(atlas: Path) -> Path:
    """The labels table next to an atlas image (``x.nii.gz`` -> ``x.tsv``)."""
    return Path(str(atlas).replace(".nii.gz", ".tsv").replace(".nii", ".tsv"))


def _roi_mask_files(folder: Path, subject: str) -> list[Path]:
    """The subject's ``sub-<label>_*_mask.nii*`` files, else the template-space ones."""
    return sorted(folder.rglob(f"sub-{subject}_*_mask.nii*")) or sorted(
        p for p in folder.rglob("*_mask.nii*") if not p.name.startswith("sub-"))


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

    from bids_dnn.io.bids import read_volume_stimuli
    from bids_dnn.brain.patterns import check_same_grid, image_data, load_nifti

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
            run_mask = np.isfinite(data).all(axis=3) & (np.nan_to_num(data) != 0).any(axis=3)
        mask = run_mask if mask is None else mask & run_mask
        loaded.append((data, labels))
    assert mask is not None and reference is not None
    run_betas = np.full((len(runs), stimuli.n_stimuli, int(mask.sum())), np.nan)
    run_info = []
    for r, (run, (data, labels)) in enumerate(zip(runs, loaded)):
        values = data[mask]  # (n_voxels, n_volumes)
        sums = np.zeros((stimuli.n_stimuli, values.shape[0]))
        counts = np.zeros(stimuli.n_stimuli, dtype=int)
        unknown = []
        for v, label in enumerate(labels):
            sid = by_file.get(normalize_stimulus_path(label), label if label in by_id else None)
            if sid is None:
                if label:
                    unknown.append(label)
                continue
            sums[stim_pos[sid]] += values[:, v]
            counts[stim_pos[sid]] += 1
        shown = counts > 0
        run_betas[r, shown] = sums[shown] / counts[shown, None]
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


def roi_masks(ctx: Context, reference: Any, brain_mask: np.ndarray, subject: str) -> dict[str, np.ndarray]:
    """ROI masks on the subject's BOLD grid (``reference``), intersected with ``brain_mask``;
    ROIs with no voxel inside are returned empty (:func:`split_small_rois` skips them)."""
    from bids_dnn.brain.patterns import load_roi_masks_from_atlas, load_roi_masks_from_files, read_atlas_labels

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
                                         threshold=rois.threshold, allow_empty=True)
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


def split_small_rois(masks: dict[str, np.ndarray], min_voxels: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """ROIs with at least ``min_voxels`` usable voxels, and the others' voxel counts.

    ``masks`` are already intersected with the brain mask, from which voxels constant or
    non-finite in a run were removed, so a count is the voxels an RDM would use.

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


def _spec_path(root: Path, relative: str) -> Path:
    """A path of the spec, relative to BIDS_DIR unless absolute."""
    path = Path(relative)
    return path if path.is_absolute() else root / path


def _dataset_path(root: Path, relative: str) -> Path:
    path = _spec_path(root, relative)
    if not path.exists():
        raise InputMissingError(f"ROI input not found: {path}", "check rois in the spec (paths are relative to BIDS_DIR)")
    return path


def brain_rdm_measure(ctx: Context, n_runs: int) -> str:
    """Resolve ``rdm.brain: auto`` (crossnobis with >= 2 runs, else correlation)."""
    measure = ctx.spec.rdm.brain
    if measure == "auto":
        return "crossnobis" if n_runs >= 2 else "correlation"
    if measure == "crossnobis" and n_runs < 2:
        raise AnalysisError("rdm.brain: 'crossnobis' needs at least 2 runs per subject", "use 'correlation'")
    return measure


def brain_rdms(ctx: Context, patterns: SubjectPatterns, masks: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """Brain RDM vectors per ROI."""
    from bids_dnn.brain.patterns import noise_normalize
    from bids_dnn.rsa.rdm import calc_crossnobis_rdm, calc_rdm, noise_precision_from_residuals

    measure = brain_rdm_measure(ctx, patterns.run_betas.shape[0])
    brain = ctx.spec.brain
    flat_mask = patterns.brain_mask
    out = {}
    for roi, mask in masks.items():
        columns = np.flatnonzero(mask[flat_mask])
        run_betas = patterns.run_betas[:, :, columns]
        residuals = [res[:, columns] for res in patterns.residuals]
        if measure == "crossnobis":
            complete = ~np.isnan(run_betas).any(axis=(1, 2))
            if complete.sum() < 2:
                raise AnalysisError("crossnobis needs at least 2 runs that contain every stimulus",
                                    "set rdm.brain: correlation")
            valid = np.isfinite(run_betas[complete]).all(axis=(0, 1)) & np.all(
                [np.isfinite(r).all(axis=0) for r in residuals], axis=0)
            if not valid.any():
                raise AnalysisError(f"ROI {roi} has no voxel with finite estimates in every run")
            precision = None
            if brain.noise_normalization != "none":
                method = brain.noise_estimator if brain.noise_normalization == "multivariate" else "diag"
                precision = noise_precision_from_residuals([r[:, valid] for r in residuals], method=method,
                                                           dof=patterns.dofs)
            out[roi] = calc_crossnobis_rdm(run_betas[complete][:, :, valid], precision)
        else:
            mean_betas = np.nanmean(run_betas, axis=0)
            valid = np.isfinite(mean_betas).all(axis=0) & np.all([np.isfinite(r).all(axis=0) for r in residuals], axis=0)
            if not valid.any():
                raise AnalysisError(f"ROI {roi} has no voxel with finite estimates in every run")
            noise = (np.concatenate([r[:, valid] for r in residuals]) if residuals
                     else np.empty((0, int(valid.sum()))))  # ready-made betas: no residuals
            normalized = noise_normalize(mean_betas[:, valid], noise,
                                         brain.noise_normalization, brain.noise_estimator, dof=sum(patterns.dofs))
            out[roi] = calc_rdm(normalized, measure)
    return measure, out


def rsa_table(ctx: Context, subject: str, stimuli: StimulusSet, brain_measure: str, brain: dict[str, np.ndarray],
              models: dict[str, dict[str, np.ndarray]], masks: dict[str, np.ndarray],
              small_rois: dict[str, int] | None = None) -> dict[str, pd.DataFrame]:
    """ROI x layer RSA scores with permutation p-values, one table per model; ROIs skipped for
    too few voxels (``small_rois``: roi -> usable voxels) get n/a scores."""
    from bids_dnn.rsa.inference import permutation_test

    rsa = ctx.spec.analyses.rsa
    rois = list(brain)
    data = np.stack([brain[r] for r in rois])
    tables = {}
    for model_index, (model, layers) in enumerate(models.items()):
        names = list(layers)
        model_vectors = np.stack([layers[n] for n in names])
        rng = np.random.default_rng(subject_seed(ctx.spec.statistics.seed, subject).spawn(model_index + 1)[-1])
        result = permutation_test(data, model_vectors, measure=rsa.comparison, n_permutations=rsa.permutations,
                                  rng=rng)
        rows = []
        for i, roi in enumerate(rois):
            for j, layer in enumerate(names):
                rows.append({"subject": subject, "roi": roi, "model": model, "layer": layer,
                             "comparison": rsa.comparison, "brain_rdm": brain_measure, "model_rdm": ctx.spec.rdm.model,
                             "score": float(result.observed[i, j]),
                             "p_permutation": float(result.p_values[i, j]) if rsa.permutations else np.nan,
                             "n_permutations": rsa.permutations, "n_voxels": int(masks[roi].sum()),
                             "n_stimuli": stimuli.n_stimuli})
        for roi, n_voxels in (small_rois or {}).items():
            rows += [{"subject": subject, "roi": roi, "model": model, "layer": layer, "comparison": rsa.comparison,
                      "brain_rdm": brain_measure, "model_rdm": ctx.spec.rdm.model, "score": np.nan,
                      "p_permutation": np.nan, "n_permutations": rsa.permutations, "n_voxels": n_voxels,
                      "n_stimuli": stimuli.n_stimuli} for layer in names]
        tables[model] = pd.DataFrame(rows)
    return tables


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "pandas", "nibabel", "nilearn", "pybids", "torch", "torchvision", "h5py",
                 "pydantic"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_provenance(ctx: Context, subject_dir_log: Path, extra: dict[str, Any]) -> None:
    drv.write_json(subject_dir_log / "spec.json", spec_to_dict(ctx.spec))
    drv.write_text(subject_dir_log / "command.txt", " ".join(["bids_dnn", *ctx.options.argv]) + "\n")
    drv.write_json(subject_dir_log / "provenance.json", {
        "bids_dnn_version": __version__, "run_id": ctx.run_id, "spec_hash": spec_hash(ctx.spec),
        "seed": ctx.spec.statistics.seed, "command": [sys.argv[0], *ctx.options.argv],
        "library_versions": library_versions(), "platform": platform.platform(),
        "container": os.environ.get(CONTAINER_ENV),
        "device": ctx.options.device, "resources": ctx.resources.provenance(), "process_id": os.getpid(),
        **extra})


def run_subject(subject: str, ctx: Context, stimuli: StimulusSet,
                models: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """:func:`process_subject`, then the process and the time span it ran in are added to the
    participant's ``provenance.json`` of this run (``execution``; when stages were computed).

    Module-level, with the participant first, for :func:`bids_dnn.workflows.resources.map_participants`
    (``--nprocs``: participants in worker processes).
    """
    started = datetime.now(timezone.utc)
    log_dir = ctx.layout.log_dir(subject, ctx.run_id)
    with log_file(log_dir, ctx.log_preamble):  # bids_dnn.log next to the provenance (also records an error)
        try:
            summary = process_subject(ctx, subject, stimuli, models)
        except BidsDnnError as exc:
            record_failure(ctx, subject, exc)
            raise
        except Exception as exc:
            record_failure(ctx, subject, exc)
            raise
        path = log_dir / "provenance.json"
        provenance = drv.read_json_object(path)
        if provenance:
            provenance["execution"] = {"process_id": os.getpid(), "worker": ctx.resources.n_workers > 1,
                                       "started": started.isoformat(),
                                       "finished": datetime.now(timezone.utc).isoformat()}
            drv.write_json(path, provenance)
        if not summary.get("skipped"):
            logger.info("sub-%s done in %.1f s", subject, summary["seconds"])
    return summary


def subject_stage_keys(ctx: Context, subject: str, stimuli: StimulusSet,
                       models: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
    """Content key of every participant-level stage of ``subject`` (see :mod:`bids_dnn.workflows.stages`).

    ``brain`` (betas, ROI masks, brain RDMs, ROI summary) depends on the subject's input files,
    the stimulus set, ``brain``, ``stimuli``, ``rois`` and ``rdm.brain``; ``rsa:<model>`` on
    ``brain``, the model's features and ``analyses.rsa``; ``searchlight:<model>`` and
    ``encoding`` on the patterns, the features and their own spec section; ``report`` on all.
    """
    from bids_dnn.workflows.stages import content_key, files_fingerprint

    spec = ctx.spec
    root = Path(ctx.options.bids_dir)

    def dump(section: Any) -> Any:
        return section.model_dump(mode="json") if section is not None else None

    patterns = content_key("patterns", subject, ctx.task, stimuli.set_hash(), list(stimuli.stim_ids),
                           dump(spec.brain), dump(spec.stimuli), ctx.options.session_labels,
                           files_fingerprint(subject_input_files(ctx, subject), root))
    rois = content_key("rois", dump(spec.rois), files_fingerprint(roi_input_files(ctx, subject), root))
    seed = spec.statistics.seed
    keys = {"brain": content_key("brain", patterns, rois, spec.rdm.brain, spec.outputs.save_betas)}
    analyses = spec.analyses
    for model in models:
        features = ctx.feature_keys[model]
        if analyses.rsa.enabled and spec.rois is not None:
            keys[f"rsa:{model}"] = content_key("rsa", keys["brain"], features, spec.rdm.model,
                                               dump(analyses.rsa), seed)
        if analyses.searchlight.enabled:
            keys[f"searchlight:{model}"] = content_key("searchlight", patterns, features, spec.rdm.model,
                                                       spec.rdm.brain, dump(analyses.searchlight), seed)
    if analyses.encoding.enabled and models:
        keys["encoding"] = content_key("encoding", patterns, rois, {m: ctx.feature_keys[m] for m in models},
                                       dump(analyses.encoding), seed)
    if spec.outputs.report:
        keys["report"] = content_key("report", keys)
    return keys


def read_status(layout: drv.OutputLayout, subject: str) -> dict[str, Any]:
    """A participant's status file (empty when missing or unreadable)."""
    return drv.read_json_object(layout.status(subject))


def write_status(ctx: Context, subject: str, summary: dict[str, Any], ledger: Any, *, complete: bool,
                 run_id: str | None = None) -> None:
    """The participant's status file: summary, spec hash and the completed stages (written after
    every stage, so an interrupted run resumes where it stopped), plus the ``pending`` stages of
    an earlier run not yet redone (their files are removed if the new outputs differ)."""
    status = {**summary, "complete": complete, "spec_hash": spec_hash(ctx.spec), "run_id": run_id or ctx.run_id,
              "bids_dnn_version": __version__, "outputs": ledger.outputs(), "stages": dict(sorted(ledger.done.items()))}
    if ctx.dataset:
        status["dataset"] = ctx.dataset
    pending = ledger.pending()
    if pending:
        status["pending"] = pending
    drv.write_json(ctx.layout.status(subject), status)


def record_failure(ctx: Context, subject: str, exc: BaseException) -> None:
    """Mark the participant's status file as failed, with the reason (read by the group level).

    The stages an earlier run completed stay recorded (a rerun resumes with the others), but
    ``complete`` is false and ``failure`` holds the exit code, the error class, its message and
    hint, and the run id. A successful rerun writes a status file without ``failure``. Writing
    the record never hides the error itself (a full disk, say): it is then left out.
    """
    if isinstance(exc, BidsDnnError):
        message, hint, code = exc.message, exc.hint, exc.exit_code
    else:
        from bids_dnn.errors import EXIT_OTHER

        message, hint, code = f"unexpected {exc.__class__.__name__}: {exc}", None, EXIT_OTHER
    status = {**read_status(ctx.layout, subject), "complete": False, "run_id": ctx.run_id,
              "bids_dnn_version": __version__,
              "failure": {"exit_code": code, "error": exc.__class__.__name__, "message": message, "hint": hint,
                          "run_id": ctx.run_id, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    if ctx.dataset:
        status["dataset"] = ctx.dataset
    try:
        drv.write_json(ctx.layout.status(subject), status)
    except OSError as write_error:
        logger.debug("sub-%s: the failure could not be recorded (%s)", subject, write_error)


def log_removed(subject: str, removed: list[Path], why: str) -> None:
    """One log line naming the outputs of earlier runs that were removed."""
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        logger.info("sub-%s: removed %d output(s) %s: %s", subject, len(removed), why, names)


def process_subject(ctx: Context, subject: str, stimuli: StimulusSet,
                    models: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Run and write the participant-level outputs of one subject that are not current.

    Stages whose content key and outputs are recorded in the status file are kept as they are
    (``--force`` recomputes them all); the GLM runs only when a stale stage needs the patterns.
    Files that an earlier run recorded for a stage the spec no longer has (e.g. searchlight
    switched off, a model removed), or for a recomputed stage that no longer writes them (e.g.
    ``stat-crossnobis`` brain RDMs after ``rdm.brain: correlation``), are removed; files the
    tool did not record are never touched.
    """
    from bids_dnn.workflows.stages import StageLedger, recorded_stages, removable_stages

    layout = ctx.layout
    started = time.time()
    if ctx.options.searchlight_part is not None:
        from bids_dnn.workflows.participant_maps import run_searchlight

        run_searchlight(ctx, subject, stimuli, fit_subject_glms(ctx, subject, stimuli), models)
        k, n_parts = ctx.options.searchlight_part
        return {"subject": subject, "searchlight_part": f"{k}/{n_parts}", "seconds": round(time.time() - started, 1)}
    keys = subject_stage_keys(ctx, subject, stimuli, models)
    previous = read_status(layout, subject)
    recorded = removable_stages(previous)
    ledger = StageLedger(layout.root, {} if ctx.options.force else recorded_stages(previous), recorded=recorded)
    stale = [name for name, key in keys.items() if not ledger.is_current(name, key)]
    for name in keys:
        if name not in stale:
            ledger.keep(name)
    dropped = [name for name in recorded if name not in keys]
    log_removed(subject, ledger.remove_obsolete(dropped), f"of stage(s) the spec no longer has ({', '.join(dropped)})")
    if not stale:
        if (previous.get("spec_hash") != spec_hash(ctx.spec) or not previous.get("complete") or dropped
                or previous.get("pending") or (ctx.dataset and previous.get("dataset") != ctx.dataset)):
            write_status(ctx, subject, _previous_summary(previous), ledger, complete=True,
                         run_id=previous.get("run_id"))
        logger.info("sub-%s: all %d stages up to date; nothing to do (--force recomputes)", subject, len(keys))
        return {**_previous_summary(previous), "skipped": True, "seconds": round(time.time() - started, 1)}
    analysis_stale = [name for name in stale if name != "report"]
    if analysis_stale:
        logger.info("sub-%s: computing %s", subject, ", ".join(analysis_stale))
        summary = compute_subject_stages(ctx, subject, stimuli, models, keys, ledger, set(analysis_stale))
        summary["seconds"] = round(time.time() - started, 1)
        run_id = ctx.run_id
    else:
        summary, run_id = _previous_summary(previous), previous.get("run_id")
    write_status(ctx, subject, summary, ledger, complete=True, run_id=run_id)
    if "report" in stale:
        from bids_dnn.report import build_participant_report

        try:
            report = build_participant_report(layout, subject, stimuli, summary, ctx.spec, run_id)
            ledger.record("report", keys["report"], [report])
            log_removed(subject, ledger.remove_obsolete(["report"]), "that the report no longer writes")
            if analysis_stale:  # the participant's time includes its report
                summary["seconds"] = round(time.time() - started, 1)
            write_status(ctx, subject, summary, ledger, complete=True, run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - a figure must not lose the results
            if output_space_error(exc):
                raise  # a full disk stops the run (cli.main says so); a rerun resumes with the report
            logger.warning("sub-%s: report failed (%s); results are kept", subject, exc)
    return {**summary, "seconds": round(time.time() - started, 1)}  # this run's time, the report included


#: status fields that are bookkeeping, not part of a participant's summary
_STATUS_FIELDS = ("complete", "spec_hash", "run_id", "bids_dnn_version", "outputs", "stages", "pending", "dataset",
                  "failure")


def _previous_summary(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k not in _STATUS_FIELDS}


def compute_subject_stages(ctx: Context, subject: str, stimuli: StimulusSet, models: dict[str, dict[str, np.ndarray]],
                           keys: dict[str, str], ledger: Any, stale: set[str]) -> dict[str, Any]:
    """Fit the subject's patterns and write the outputs of the ``stale`` stages, recording each
    stage in the status file as soon as its outputs are written. Returns the summary."""
    layout = ctx.layout
    patterns = fit_subject_glms(ctx, subject, stimuli)
    for warning in patterns.warnings:
        logger.warning("sub-%s: %s", subject, warning)
    masks, small_rois = split_small_rois(roi_masks(ctx, patterns.reference, patterns.brain_mask, subject),
                                         ctx.spec.rois.min_voxels if ctx.spec.rois else 1)
    for roi, n in small_rois.items():
        patterns.warnings.append(f"ROI {roi} skipped: {n} usable voxel(s), fewer than rois.min_voxels = "
                                 f"{ctx.spec.rois.min_voxels}")
        logger.warning("sub-%s: %s", subject, patterns.warnings[-1])
    brain_measure = brain_rdm_measure(ctx, patterns.run_betas.shape[0]) if masks else None
    summary = {"subject": subject, "n_runs": len(patterns.runs), "n_stimuli": stimuli.n_stimuli,
               "rois": {r: int(m.sum()) for r, m in masks.items()}, "rois_skipped": small_rois,
               "brain_rdm": brain_measure,
               "reliability": roi_reliability(patterns, masks), "glm_runs": patterns.run_info,
               "voxels": patterns.voxel_counts, "warnings": patterns.warnings}

    def done(stage: str, outputs: list[Path]) -> None:
        sidecars = [drv.sidecar_path(p) for p in outputs if drv.sidecar_path(p).is_file()]
        ledger.record(stage, keys[stage], [*outputs, *sidecars])
        log_removed(subject, ledger.remove_obsolete([stage]), f"that stage '{stage}' no longer writes")
        write_status(ctx, subject, summary, ledger, complete=False)

    log_dir = layout.log_dir(subject, ctx.run_id)
    write_provenance(ctx, log_dir, {"subject": subject,
                                    "subject_seed_entropy": [ctx.spec.statistics.seed, zlib.crc32(subject.encode())],
                                    "stages_computed": sorted(stale), "warnings": patterns.warnings,
                                    "runs": [str(r.bold) for r in patterns.runs]})
    rsa_stale = [m for m in models if f"rsa:{m}" in stale]
    brain: dict[str, np.ndarray] = {}
    if masks and ("brain" in stale or rsa_stale):
        brain_measure, brain = brain_rdms(ctx, patterns, masks)
    if "brain" in stale:
        done("brain", write_brain_outputs(ctx, subject, stimuli, patterns, masks, brain_measure, brain))
    if rsa_stale:
        tables = rsa_table(ctx, subject, stimuli, brain_measure, brain, {m: models[m] for m in rsa_stale}, masks,
                           small_rois)
        for model, table in tables.items():
            path = layout.rsa_table(subject, model)
            drv.write_tsv(path, table, {**{k: {"Description": v} for k, v in RSA_COLUMNS.items()},
                                        "Seed": ctx.spec.statistics.seed})
            done(f"rsa:{model}", [path])
    searchlight_stale = {m: models[m] for m in models if f"searchlight:{m}" in stale}
    if searchlight_stale:
        from bids_dnn.workflows.participant_maps import run_searchlight

        paths = run_searchlight(ctx, subject, stimuli, patterns, searchlight_stale) or []
        for model in searchlight_stale:
            done(f"searchlight:{model}", [p for p in paths if f"_model-{model}_" in p.name])
    if "encoding" in stale:
        done("encoding", encoding_outputs(ctx, subject, stimuli, patterns, masks, models))
    return summary


def write_brain_outputs(ctx: Context, subject: str, stimuli: StimulusSet, patterns: SubjectPatterns,
                        masks: dict[str, np.ndarray], brain_measure: str | None,
                        brain: dict[str, np.ndarray]) -> list[Path]:
    """Stage ``brain``: mean betas (``outputs.save_betas``), ROI masks, brain RDMs, ROI summary."""
    import nibabel as nib

    from bids_dnn.rsa.rdm import vector_to_square

    layout = ctx.layout
    outputs: list[Path] = []
    if ctx.spec.outputs.save_betas:
        mean_betas = np.nanmean(patterns.run_betas, axis=0)
        volume = np.zeros(patterns.brain_mask.shape + (stimuli.n_stimuli,), dtype=np.float32)
        volume[patterns.brain_mask] = mean_betas.T
        path = layout.betas(subject)
        drv.write_nifti(path, nib.Nifti1Image(volume, patterns.reference.affine), {
            "VolumeStimuli": stimuli.stim_ids, "Statistic": ctx.spec.brain.glm.output,
            **({"Description": "Ready-made estimate per stimulus (brain.input: betas), averaged over runs."}
               if ctx.spec.brain.input == "betas" else
               {"Description": "GLM estimate per stimulus, averaged over runs.",
                "GLM": ctx.spec.brain.glm.model_dump(mode="json")}),
            "Sources": [str(r.bold) for r in patterns.runs]})
        outputs.append(path)
    for roi, mask in masks.items():
        path = layout.roi_mask(subject, roi)
        drv.write_nifti(path, nib.Nifti1Image(mask.astype(np.uint8), patterns.reference.affine),
                        {"Label": roi, "NumberOfVoxels": int(mask.sum()), "Type": "ROI"})
        outputs.append(path)
    for roi, vector in brain.items():
        path = layout.brain_rdm(subject, roi, brain_measure)
        write_relmat(path, vector_to_square(vector, stimuli.n_stimuli), stimuli.stim_ids, {
            "Measure": brain_measure, "ROI": roi, "NumberOfVoxels": int(masks[roi].sum()),
            "NoiseNormalization": ctx.spec.brain.noise_normalization,
            "NumberOfRuns": int(patterns.run_betas.shape[0]),
            "Sources": [str(r.bold) for r in patterns.runs]})
        outputs.append(path)
    counts = pd.DataFrame({"roi": list(masks), "n_voxels": [int(m.sum()) for m in masks.values()]})
    drv.write_tsv(layout.roi_summary(subject), counts, {"roi": {"Description": "ROI name"},
                                                        "n_voxels": {"Description": "voxels on the BOLD grid"}})
    return outputs + [layout.roi_summary(subject)]


def encoding_outputs(ctx: Context, subject: str, stimuli: StimulusSet, patterns: SubjectPatterns,
                     masks: dict[str, np.ndarray], models: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """Stage ``encoding``: encoding maps and the per-model ROI tables."""
    from bids_dnn.workflows.participant_maps import ENCODING_COLUMNS, run_encoding

    def layer_features(model: str) -> dict[str, np.ndarray]:
        return read_checked_features(ctx, model, list(models[model])).layers

    paths, tables = run_encoding(ctx, subject, stimuli, patterns, masks, layer_features)
    outputs = list(paths)
    for model, table in tables.items():
        if len(table):
            path = ctx.layout.encoding_table(subject, model)
            drv.write_tsv(path, table, {**{k: {"Description": v} for k, v in ENCODING_COLUMNS.items()},
                                        "Seed": ctx.spec.statistics.seed})
            outputs.append(path)
    return outputs


def roi_reliability(patterns: SubjectPatterns, masks: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Median over an ROI's voxels of the split-half reliability (None with fewer than 2 runs)."""
    from bids_dnn.brain.patterns import split_half_reliability

    out: dict[str, float | None] = {}
    for roi, mask in masks.items():
        if patterns.run_betas.shape[0] < 2:
            out[roi] = None
            continue
        values = split_half_reliability(patterns.run_betas[:, :, mask[patterns.brain_mask]])
        out[roi] = round(float(np.nanmedian(values)), 4) if np.isfinite(values).any() else None
    return out


def run_participant_level(options: RunOptions) -> None:
    """Entry point of ``bids_dnn BIDS_DIR OUT_DIR participant``."""
    ctx = prepare(options)
    if ctx.options.searchlight_part is not None and not ctx.spec.analyses.searchlight.enabled:
        raise UsageError("--searchlight-part was given but the spec does not enable analyses.searchlight",
                         "set analyses.searchlight.enabled: true or drop --searchlight-part")
    stimuli = resolve_stimuli(ctx)
    if ctx.options.reports_only:
        from bids_dnn.report import rebuild_participant_reports

        rebuild_participant_reports(ctx.layout, ctx.subjects, stimuli, ctx.spec, ctx.run_id)
        return
    if options.device != "auto":  # e.g. --device cuda on a node without a GPU: stop before writing anything
        from bids_dnn.backend import resolve_device

        resolve_device(options.device)
    from bids_dnn.io.input_dataset import check_output_dataset, dataset_identity, record_output_dataset

    out_dir = Path(options.output_dir)
    identity = dataset_identity(Path(options.bids_dir), ctx.index.subjects(), ctx.task, stimuli.stim_ids,
                                stimuli.sha256)
    record = check_output_dataset(out_dir, identity, options.force)  # another dataset's folder: exit 64
    logger.info("task %s: %d stimuli, %d participant(s): %s", ctx.task, stimuli.n_stimuli, len(ctx.subjects),
                ", ".join(ctx.subjects))
    failures: list[tuple[str, BidsDnnError | Exception]] = []
    ready = []
    for subject in ctx.subjects:  # fail fast, before anything is written: cheap input checks
        try:
            check_subject_inputs(ctx, subject)
            ready.append(subject)
        except BidsDnnError as exc:
            logger.error("sub-%s failed: %s", subject, exc, extra={} if len(ctx.subjects) > 1 else FILE_ONLY)
            failures.append((subject, exc))
    # a participant the filters leave without runs (exit 18) was not run: nothing records it
    recorded_failures = [(s, exc) for s, exc in failures if not isinstance(exc, NothingSelectedError)]
    if ready or recorded_failures:  # else the selection failed: nothing is written
        drv.initialise_root(out_dir, Path(options.bids_dir), os.environ.get(CONTAINER_ENV))
        ctx.dataset = record_output_dataset(out_dir, identity, record, options.force)
        drv.remove_stale_temporaries(out_dir)  # temp files of killed runs on this host
        write_stimulus_table(ctx, stimuli)
        for subject, exc in recorded_failures:
            record_failure(ctx, subject, exc)
    models = model_rdms(ctx, stimuli) if ready else {}
    resources = ctx.resources.for_participants(len(ready))  # --nprocs: participants at once
    if resources.n_workers > 1:
        logger.info("%d participants at a time, %s thread(s) each", resources.n_workers, resources.omp_nthreads)
    worker_ctx = replace(ctx, resources=resources, log_preamble=tuple(run_log_lines()))
    for subject, outcome in map_participants(run_subject, ready, (worker_ctx, stimuli, models), resources,
                                             verbosity=options.verbosity):
        if isinstance(outcome, BidsDnnError):
            if len(ctx.subjects) > 1:  # a single participant's error is the run's error, shown once by cli.main
                logger.error("sub-%s failed: %s", subject, outcome)
            failures.append((subject, outcome))
    failures.sort(key=lambda failure: ctx.subjects.index(failure[0]))
    if failures:
        if len(failures) == 1 and len(ctx.subjects) == 1:
            raise failures[0][1]
        codes = {exc.exit_code for _, exc in failures if isinstance(exc, BidsDnnError)}
        error = AnalysisError(f"{len(failures)} of {len(ctx.subjects)} participants failed: "
                              + ", ".join(f"sub-{s}" for s, _ in failures) + " (each one's error is shown above)")
        if len(codes) == 1:
            error.exit_code = codes.pop()
        raise error
