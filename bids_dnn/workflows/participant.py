"""Participant level: the only place that knows the order of the pipeline for one subject.

stimuli -> features (cached per model) -> model RDMs -> per run GLM -> patterns + ROIs
-> brain RDMs -> ROI RSA with permutation p-values -> derivatives, provenance, report.

The steps themselves are in :mod:`~bids_dnn.workflows.context` (options, spec, dataset),
:mod:`~bids_dnn.workflows.inputs` (stimuli, runs, ROIs), :mod:`~bids_dnn.workflows.model_features`
(features, model RDMs), :mod:`~bids_dnn.workflows.subject_patterns` (GLMs, brain RDMs),
:mod:`~bids_dnn.workflows.participant_maps` (searchlight, encoding) and
:mod:`~bids_dnn.workflows.provenance` (provenance and status files); this module runs them.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.brain.assembly import mean_betas_volume, split_small_rois
from bids_dnn.console import FILE_ONLY, logger, run_log_lines
from bids_dnn.errors import BidsDnnError, NothingSelectedError, UsageError, output_space_error
from bids_dnn.io import derivatives as drv
from bids_dnn.io.stimuli import StimulusSet
from bids_dnn.spec import spec_hash
from bids_dnn.workflows.context import Context, prepare, subject_seed
from bids_dnn.workflows.inputs import (check_subject_inputs, resolve_stimuli, roi_input_files, roi_masks,
                                       subject_input_files, write_stimulus_table)
from bids_dnn.workflows.model_features import model_rdms, read_checked_features
from bids_dnn.workflows.options import RunOptions
from bids_dnn.workflows.participant_cka import cka_stage_ingredients, write_cka_tables, write_layer_cka
from bids_dnn.workflows.participant_decoding import IDENTIFICATION_SCHEME
from bids_dnn.workflows.provenance import CONTAINER_ENV, read_status, record_failure, write_provenance, write_status
from bids_dnn.workflows.participant_runs import raise_participant_failures, run_logged
from bids_dnn.workflows.resources import map_participants
from bids_dnn.workflows.subject_patterns import (SubjectPatterns, brain_rdm_measure, brain_rdms, fit_subject_glms,
                                                 reliability_summary)
from bids_dnn.workflows.tables import RSA_COLUMNS, write_relmat


def subject_stage_keys(ctx: Context, subject: str, stimuli: StimulusSet,
                       models: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
    """Content key of every participant-level stage of ``subject`` (see :mod:`bids_dnn.workflows.stages`).

    ``brain`` (betas, ROI masks, brain RDMs, ROI summary) depends on the subject's input files,
    the stimulus set, ``brain``, ``stimuli``, ``rois`` and ``rdm.brain``; ``rsa:<model>`` on
    ``brain``, the model's features and ``analyses.rsa``; ``cka:<model>`` and ``decoding:<model>`` on
    the patterns, the ROIs, the features and their spec section; ``probing`` on the patterns, the
    ROIs, the annotations and ``analyses.probing``; ``drivers`` on the patterns, the ROIs, the
    features of its model and ``analyses.drivers``; ``searchlight:<model>`` and
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
        if analyses.cka.enabled and spec.rois is not None:
            keys[f"cka:{model}"] = content_key("cka", patterns, rois, features, cka_stage_ingredients(ctx))
        if analyses.decoding.enabled and spec.rois is not None:
            keys[f"decoding:{model}"] = content_key("decoding", patterns, rois, features, dump(analyses.decoding),
                                                    seed, IDENTIFICATION_SCHEME)
        if analyses.searchlight.enabled:
            keys[f"searchlight:{model}"] = content_key("searchlight", patterns, features, spec.rdm.model,
                                                       spec.rdm.brain, dump(analyses.searchlight), seed)
    if analyses.encoding.enabled and models:
        keys["encoding"] = content_key("encoding", patterns, rois, {m: ctx.feature_keys[m] for m in models},
                                       dump(analyses.encoding), seed)
    if analyses.probing.enabled and analyses.probing.rois and spec.rois is not None:
        from bids_dnn.workflows.probing import probing_stage_ingredients

        keys["probing"] = content_key("probing", patterns, rois, probing_stage_ingredients(ctx, stimuli))
    if analyses.drivers.enabled and spec.rois is not None and models:
        from bids_dnn.workflows.drivers import drivers_model

        keys["drivers"] = content_key("drivers", patterns, rois, ctx.feature_keys[drivers_model(ctx)],
                                      dump(analyses.drivers), seed)
    if spec.outputs.report:
        keys["report"] = content_key("report", keys)
    return keys


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
               "reliability": reliability_summary(patterns, masks), "glm_runs": patterns.run_info,
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
    cka_stale = {m: list(models[m]) for m in models if f"cka:{m}" in stale}
    if cka_stale:
        for model, path in write_cka_tables(ctx, subject, stimuli, patterns, masks, cka_stale, small_rois).items():
            done(f"cka:{model}", [path])
    decoding_stale = {m: list(models[m]) for m in models if f"decoding:{m}" in stale}
    if decoding_stale:
        from bids_dnn.workflows.participant_decoding import write_decoding_tables

        for model, path in write_decoding_tables(ctx, subject, stimuli, patterns, masks, decoding_stale,
                                                 small_rois).items():
            done(f"decoding:{model}", [path])
    if "probing" in stale:
        from bids_dnn.workflows.probing import write_roi_probes

        done("probing", [write_roi_probes(ctx, subject, stimuli, patterns, masks, small_rois)])
    if "drivers" in stale:
        from bids_dnn.workflows.drivers import drivers_model, write_drivers

        done("drivers", write_drivers(ctx, subject, stimuli, patterns, masks, list(models[drivers_model(ctx)])))
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
        path = layout.betas(subject)
        volume = mean_betas_volume(patterns.run_betas, patterns.brain_mask)
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


def run_participant_level(options: RunOptions) -> None:
    """Entry point of ``bids_dnn BIDS_DIR OUT_DIR participant``."""
    ctx = prepare(options)
    if ctx.spec.modality != "fmri":
        from bids_dnn.workflows.meeg import run_meeg_participants

        run_meeg_participants(ctx)
        return
    if ctx.spec.design == "naturalistic":
        from bids_dnn.workflows.naturalistic import run_naturalistic_participants

        run_naturalistic_participants(ctx)
        return
    if ctx.options.searchlight_part is not None and not ctx.spec.analyses.searchlight.enabled:
        raise UsageError("--searchlight-part was given but the spec does not enable analyses.searchlight",
                         "set analyses.searchlight.enabled: true or drop --searchlight-part")
    stimuli = resolve_stimuli(ctx)
    if ctx.spec.analyses.probing.enabled:  # an annotation the stimuli lack stops the run before any work
        from bids_dnn.workflows.probing import probe_annotations

        probe_annotations(ctx, stimuli)
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
    if models and ctx.spec.analyses.cka.enabled and ctx.spec.analyses.cka.across_models:
        write_layer_cka(ctx, {model: list(layers) for model, layers in models.items()})
    if models and ctx.spec.analyses.probing.enabled and ctx.spec.analyses.probing.layers:
        from bids_dnn.workflows.probing import write_layer_probes

        write_layer_probes(ctx, stimuli, {model: list(layers) for model, layers in models.items()})
    resources = ctx.resources.for_participants(len(ready))  # --nprocs: participants at once
    if resources.n_workers > 1:
        logger.info("%d participants at a time, %s thread(s) each", resources.n_workers, resources.omp_nthreads)
    worker_ctx = replace(ctx, resources=resources, log_preamble=tuple(run_log_lines()))
    for subject, outcome in map_participants(run_logged, ready, (worker_ctx, process_subject, stimuli, models),
                                             resources, verbosity=options.verbosity):
        if isinstance(outcome, BidsDnnError):
            if len(ctx.subjects) > 1:  # a single participant's error is the run's error, shown once by cli.main
                logger.error("sub-%s failed: %s", subject, outcome)
            failures.append((subject, outcome))
    raise_participant_failures(ctx, failures)
