"""EEG and MEG (``modality: eeg`` or ``meg``), participant level.

stimuli -> features and model RDMs (as for fMRI) -> per participant: epochs of every stimulus
event (:mod:`~bids_dnn.workflows.meeg_epochs`) -> sliding windows -> noise normalisation ->
brain RDM of every time point (correlation distance, cross-validated Euclidean / crossnobis, or
pairwise LDA decoding accuracy) -> RSA time course of every layer with stimulus-label
permutations -> temporal generalisation -> time-resolved encoding -> derivatives, status, report.
:mod:`bids_dnn.temporal` does the arithmetic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.console import logger
from bids_dnn.errors import AnalysisError, InputMissingError
from bids_dnn.io import derivatives as drv
from bids_dnn.io.stimuli import StimulusSet
from bids_dnn.workflows.context import Context, subject_seed
from bids_dnn.workflows.meeg_epochs import (QUALITY_COLUMNS, SubjectEpochs, meeg_input_files, subject_epochs,
                                            unreadable_recordings)
from bids_dnn.workflows.tables import column_sidecar

__all__ = ["TIMECOURSE_RSA_COLUMNS", "TIMECOURSE_ENCODING_COLUMNS", "TIMECOURSE_PARTITION_COLUMNS", "MEEG_SEED_STREAMS", "brain_rdm_stack",
           "fit_meeg_subject", "meeg_stage_key", "process_meeg_subject", "run_meeg_participants"]

TIMECOURSE_RSA_COLUMNS = {
    "subject": "Participant label.",
    "model": "Model label.",
    "layer": "Layer.",
    "time": "Time from the stimulus onset (s): the centre of the window.",
    "score": "Similarity of the layer's RDM and the brain RDM at this time (analyses.rsa.comparison).",
    "p_uncorrected": "One-sided stimulus-label permutation p at this time point; n/a without permutations.",
    "p_maxtime": "Permutation p corrected over time points (maximum over time of each permutation's scores).",
    "comparison": "RDM comparison measure.",
    "brain_rdm": "Brain RDM measure (meeg.rdm).",
    "n_permutations": "Stimulus-label permutations (the same for every time point).",
}
TIMECOURSE_ENCODING_COLUMNS = {
    "subject": "Participant label.",
    "model": "Model label.",
    "layer": "Layer.",
    "time": "Time from the stimulus onset (s).",
    "mean_r": "Mean over channels of the held-out r of the stimulus-averaged response (cross-validated over "
              "stimuli).",
    "max_r": "Largest held-out r over channels at this time.",
}

TIMECOURSE_PARTITION_COLUMNS = {
    "subject": "Participant label.",
    "component": "unique:<group> (variance only that group of model RDMs explains) or shared:<groups>.",
    "time": "Time from the stimulus onset (s).",
    "r2": "Share of the variance of the brain RDM at this time (analyses.variance_partitioning).",
}

#: SeedSequence words of a participant's random steps (folds, permutations, encoding folds)
MEEG_SEED_STREAMS = {"folds": 0xE1, "permutations": 0xE2, "encoding": 0xE3}

#: meeg.rdm -> how the library computes it (measure of time_resolved_rdms, or decoding)
_CROSS_VALIDATED = ("euclidean_cv", "crossnobis", "decoding")


def _rng(ctx: Context, subject: str, stream: str) -> np.random.Generator:
    seed = subject_seed(ctx.spec.statistics.seed, subject)
    return np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(MEEG_SEED_STREAMS[stream],)))


def brain_rdm_stack(ctx: Context, subject: str, epochs: SubjectEpochs, n_stimuli: int
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The participant's brain RDM of every time window.

    Returns
    -------
    rdms : numpy.ndarray, shape (n_windows, n_pairs)
    times : numpy.ndarray, shape (n_windows,)
    info : dict
        What the sidecar records (folds, seed, noise normalisation, windows).
    """
    from bids_dnn.backend import resolve_device
    from bids_dnn.temporal import (fold_noise_precisions, pairwise_decoding_rdms, residual_noise_precision,
                                   time_resolved_rdms, trial_folds, window_average)

    meeg = ctx.spec.meeg
    counts = epochs.trials_per_stimulus(n_stimuli)
    needed = meeg.folds if meeg.rdm in _CROSS_VALIDATED else 1
    few = np.flatnonzero(counts < needed)
    if few.size:
        raise AnalysisError(f"sub-{subject}: {few.size} stimulus/stimuli have fewer than {needed} kept epochs "
                            f"(fewest: {int(counts.min())})",
                            "lower meeg.folds, relax meeg.reject, or use meeg.rdm: correlation" if needed > 1 else
                            "every stimulus needs at least one epoch; check the events and meeg.reject")
    data, times = window_average(epochs.data, epochs.times, meeg.window_ms / 1000.0,
                                 meeg.step_ms / 1000.0 if meeg.step_ms else None)
    device = resolve_device(ctx.options.device)
    info: dict[str, Any] = {"Measure": meeg.rdm, "WindowMs": meeg.window_ms, "StepMs": meeg.step_ms,
                            "NumberOfTrials": int(epochs.labels.size), "Channels": epochs.ch_names}
    folds = None
    if meeg.rdm in _CROSS_VALIDATED:
        seed = int(_rng(ctx, subject, "folds").integers(2**31))
        folds = trial_folds(epochs.labels, meeg.folds, seed)
        info.update({"Folds": meeg.folds, "FoldSeed": seed})
    if meeg.rdm == "decoding":  # LDA whitens by its own shrinkage covariance of the training trials
        info["NoiseNormalization"] = "none (the LDA's covariance)"
        rdms = pairwise_decoding_rdms(data, epochs.labels, folds, device=device)
    elif meeg.rdm == "crossnobis":  # each fold's precision from its training trials: unbiased distances
        info["NoiseNormalization"] = f"{meeg.noise_normalization} (per fold, from the training trials' residuals)"
        precisions = fold_noise_precisions(data, epochs.labels, folds, method=meeg.noise_normalization)
        rdms = time_resolved_rdms(data, epochs.labels, measure="crossnobis", folds=folds, noise_precision=precisions,
                                  noise_per_fold=precisions is not None, device=device)
    elif meeg.rdm == "correlation":
        info["NoiseNormalization"] = meeg.noise_normalization
        precision = residual_noise_precision(data, epochs.labels, method=meeg.noise_normalization)
        rdms = time_resolved_rdms(data, epochs.labels, measure="correlation", noise_precision=precision,
                                  device=device)
    else:  # euclidean_cv: crossnobis without noise normalisation
        info["NoiseNormalization"] = "none"
        rdms = time_resolved_rdms(data, epochs.labels, measure="euclidean_cv", folds=folds, device=device)
    return np.asarray(rdms, dtype=np.float64), np.asarray(times, dtype=np.float64), info


def _rsa_rows(ctx: Context, subject: str, model: str, layers: dict[str, np.ndarray], rdms: np.ndarray,
              times: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """The RSA time course of every layer of a model."""
    from bids_dnn.temporal import rsa_time_course

    rsa = ctx.spec.analyses.rsa
    names = list(layers)
    result = rsa_time_course(rdms, np.stack([layers[name] for name in names]), measure=rsa.comparison,
                             n_permutations=rsa.permutations, rng=rng)
    rows = []
    for i, layer in enumerate(names):
        p = result.p_values[i] if result.p_values is not None else np.full(times.size, np.nan)
        p_max = result.p_values_fwe[i] if result.p_values_fwe is not None else np.full(times.size, np.nan)
        rows.append(pd.DataFrame({"subject": subject, "model": model, "layer": layer, "time": np.round(times, 6),
                                  "score": result.scores[i], "p_uncorrected": p, "p_maxtime": p_max,
                                  "comparison": rsa.comparison, "brain_rdm": ctx.spec.meeg.rdm,
                                  "n_permutations": rsa.permutations}))
    return pd.concat(rows, ignore_index=True)[list(TIMECOURSE_RSA_COLUMNS)]


def _encoding(ctx: Context, subject: str, model: str, layers: list[str], epochs: SubjectEpochs,
              n_stimuli: int) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray]:
    """Time-resolved encoding of every layer: table rows, r per layer (n_channels, n_windows), times."""
    from bids_dnn.encoding import make_folds
    from bids_dnn.temporal import condition_means, time_resolved_encoding, window_average
    from bids_dnn.workflows.model_features import read_checked_features

    meeg, enc = ctx.spec.meeg, ctx.spec.analyses.encoding
    data, times = window_average(epochs.data, epochs.times, meeg.window_ms / 1000.0,
                                 meeg.step_ms / 1000.0 if meeg.step_ms else None)
    responses = condition_means(data, epochs.labels, n_stimuli)
    if enc.n_folds > n_stimuli:
        raise AnalysisError(f"analyses.encoding.n_folds ({enc.n_folds}) exceeds the number of stimuli ({n_stimuli})")
    seed = int(_rng(ctx, subject, "encoding").integers(2**31))
    folds = make_folds(n_stimuli, n_folds=enc.n_folds, seed=seed)
    stored = read_checked_features(ctx, model, layers)
    rows, maps = [], {}
    for layer in layers:
        result = time_resolved_encoding(np.asarray(stored.layers[layer], dtype=np.float64), responses, folds,
                                        alphas=list(enc.alphas), inner_folds=enc.inner_folds,
                                        standardize=enc.standardize, seed=seed)
        r = np.asarray(result.r, dtype=np.float64)
        maps[layer] = r
        rows.append(pd.DataFrame({"subject": subject, "model": model, "layer": layer, "time": np.round(times, 6),
                                  "mean_r": np.nanmean(r, axis=0), "max_r": np.nanmax(r, axis=0)}))
    return pd.concat(rows, ignore_index=True)[list(TIMECOURSE_ENCODING_COLUMNS)], maps, times


def _partition_rows(ctx: Context, subject: str, models: dict[str, dict[str, np.ndarray]], rdms: np.ndarray,
                    times: np.ndarray) -> pd.DataFrame:
    """Unique and shared variance of the brain RDM of every time point from the spec's groups of model
    RDMs (``analyses.variance_partitioning``; ``model:layer`` or every layer of ``model``)."""
    from bids_dnn.temporal import variance_partitioning_over_time
    from bids_dnn.workflows.partition import partition_groups, partition_transform

    spec = ctx.spec.analyses.variance_partitioning

    def rdm_of(group: str, model: str, layer: str) -> np.ndarray:
        if layer not in models[model]:
            raise AnalysisError(f"analyses.variance_partitioning.groups.{group}: '{model}:{layer}' names no layer "
                                f"of {model}", f"layers: {', '.join(models[model])}")
        return models[model][layer]

    groups = partition_groups(spec, lambda model: list(models[model]), rdm_of)
    prepare = partition_transform(spec)
    result = variance_partitioning_over_time(prepare(rdms), groups, method=spec.method)
    frames = [pd.DataFrame({"subject": subject, "component": component, "time": np.round(times, 6),
                            "r2": np.asarray(values, dtype=np.float64)})
              for component, values in result.components.items()]
    return pd.concat(frames, ignore_index=True)[list(TIMECOURSE_PARTITION_COLUMNS)]


def fit_meeg_subject(ctx: Context, subject: str, stimuli: StimulusSet,
                     models: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Every time-resolved analysis of one participant; returns the outputs and a summary."""
    from bids_dnn.temporal import temporal_generalization

    layout, spec = ctx.layout, ctx.spec
    epochs = subject_epochs(ctx, subject, stimuli)
    counts = epochs.trials_per_stimulus(stimuli.n_stimuli)
    logger.info("sub-%s: %d epochs (%d-%d per stimulus), %d channels, %d samples from %.3f to %.3f s", subject,
                epochs.labels.size, counts.min(), counts.max(), len(epochs.ch_names), epochs.times.size,
                epochs.times[0], epochs.times[-1])
    outputs: list[Path] = []
    quality_path = layout.epochs_quality(subject)
    drv.write_tsv(quality_path, epochs.quality, column_sidecar(
        QUALITY_COLUMNS, Description="Epochs per run.", TrialsPerStimulus=dict(zip(stimuli.stim_ids,
                                                                                  counts.tolist())),
        ChannelTypes=sorted(set(epochs.ch_types))))
    outputs.append(quality_path)
    rdms, times, info = brain_rdm_stack(ctx, subject, epochs, stimuli.n_stimuli)
    rdm_path = layout.timeresolved_rdms(subject, spec.meeg.rdm)
    drv.write_npz(rdm_path, rdms=rdms, times=times, stim_ids=np.array(stimuli.stim_ids))
    drv.write_json(drv.sidecar_path(rdm_path), {
        **info, "Description": "Brain RDM of every time point: rdms[k] (upper triangle, row by row, stimuli in "
        "the order of stim_ids) is the RDM at times[k] s from the stimulus onset (the centre of the window).",
        "TimeAxis": {"Units": "s", "Start": float(times[0]), "Stop": float(times[-1]), "Count": int(times.size)},
        "Stimuli": list(stimuli.stim_ids)})
    outputs.append(rdm_path)
    summary: dict[str, Any] = {"subject": subject, "n_epochs": int(epochs.labels.size),
                               "n_channels": len(epochs.ch_names), "n_times": int(times.size), "models": {}}
    if spec.meeg.temporal_generalization:
        matrix = temporal_generalization(rdms, measure=spec.analyses.rsa.comparison)
        path = layout.temporal_generalization(subject)
        drv.write_npz(path, matrix=np.asarray(matrix, dtype=np.float64), times=times)
        drv.write_json(drv.sidecar_path(path), {
            "Description": "Temporal generalisation of the brain RDMs: matrix[i, j] compares the RDM at times[i] "
            "with the RDM at times[j].", "Measure": spec.analyses.rsa.comparison, "BrainRdm": spec.meeg.rdm})
        outputs.append(path)
    rng = _rng(ctx, subject, "permutations")
    base = {"Subject": subject, "Seed": spec.statistics.seed}
    for model, layers in models.items():
        if spec.analyses.rsa.enabled:
            table = _rsa_rows(ctx, subject, model, layers, rdms, times, rng)
            path = layout.timecourse_table(subject, model, "rsa")
            drv.write_tsv(path, table, column_sidecar(TIMECOURSE_RSA_COLUMNS, **base, ModelLabel=model))
            outputs.append(path)
            peak = table.loc[table.groupby("layer", sort=False)["score"].idxmax()]
            summary["models"][model] = {row.layer: {"peak_time": float(row.time), "peak_score": round(float(row.score), 4)}
                                        for row in peak.itertuples()}
        if spec.analyses.encoding.enabled:
            table, maps, enc_times = _encoding(ctx, subject, model, list(layers), epochs, stimuli.n_stimuli)
            path = layout.timecourse_table(subject, model, "encoding")
            drv.write_tsv(path, table, column_sidecar(TIMECOURSE_ENCODING_COLUMNS, **base, ModelLabel=model))
            arrays = layout.encoding_channels(subject, model)
            drv.write_npz(arrays, r=np.stack([maps[layer] for layer in maps]), layers=np.array(list(maps)),
                          channels=np.array(epochs.ch_names), times=enc_times)
            drv.write_json(drv.sidecar_path(arrays), {
                "Description": "Held-out r of every layer (axis 0, as layers), channel (axis 1, as channels) and "
                "time point (axis 2, as times, s).", "ModelLabel": model})
            outputs += [path, arrays]
    if spec.analyses.variance_partitioning.enabled:
        path = layout.timecourse_table(subject, None, "variancepartition")
        drv.write_tsv(path, _partition_rows(ctx, subject, models, rdms, times), column_sidecar(
            TIMECOURSE_PARTITION_COLUMNS, **base, Method=spec.analyses.variance_partitioning.method,
            Groups=spec.analyses.variance_partitioning.groups))
        outputs.append(path)
    return {"outputs": outputs, **summary}


def meeg_stage_key(ctx: Context, subject: str, stimuli: StimulusSet) -> str:
    """Content key of a participant's M/EEG stage: its input files, the stimuli, the models'
    features and every spec section it reads."""
    from bids_dnn.workflows.stages import content_key, files_fingerprint

    spec = ctx.spec
    return content_key("meeg", subject, ctx.task, stimuli.set_hash(), list(stimuli.stim_ids),
                       files_fingerprint(meeg_input_files(ctx, subject), Path(ctx.options.bids_dir)),
                       dict(sorted(ctx.feature_keys.items())), spec.rdm.model,
                       spec.meeg.model_dump(mode="json"), spec.stimuli.model_dump(mode="json"),
                       spec.analyses.rsa.model_dump(mode="json"), spec.analyses.encoding.model_dump(mode="json"),
                       spec.analyses.variance_partitioning.model_dump(mode="json"), spec.statistics.seed)


def process_meeg_subject(ctx: Context, subject: str, stimuli: StimulusSet,
                         models: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Run one participant's M/EEG stage unless its outputs are current (``--force`` redoes it)."""
    from bids_dnn.report.meeg_report import build_meeg_participant_report
    from bids_dnn.workflows.single_stage import SingleStage, process_single_stage

    stage = SingleStage("meeg", "time-resolved analyses", ("n_epochs", "n_channels", "n_times", "models"),
                        fit=lambda s: fit_meeg_subject(ctx, s, stimuli, models),
                        report=lambda s: build_meeg_participant_report(ctx.layout, s, ctx.spec, ctx.run_id))
    return process_single_stage(ctx, subject, stage, meeg_stage_key(ctx, subject, stimuli))


def run_meeg_participants(ctx: Context) -> None:
    """Participant level of ``modality: eeg|meg``: stimuli, features and model RDMs once, then every
    participant (one failing participant does not stop the others)."""
    from bids_dnn.io.input_dataset import check_output_dataset, dataset_identity, record_output_dataset
    from bids_dnn.workflows.inputs import resolve_stimuli, write_stimulus_table
    from bids_dnn.workflows.model_features import model_rdms
    from bids_dnn.workflows.provenance import CONTAINER_ENV
    from bids_dnn.workflows.single_stage import run_participants

    if not ctx.options.reports_only:  # empty or broken recordings stop their participants before any work
        unreadable = unreadable_recordings(ctx)
        if unreadable and len(unreadable) == len(ctx.subjects):
            first = next(iter(unreadable.values()))
            if len(unreadable) == 1:
                raise first
            raise InputMissingError(f"no participant has readable recordings ({len(unreadable)} checked); e.g. "
                                    f"{first.message}", first.hint)
    else:
        unreadable = {}
    stimuli = resolve_stimuli(ctx)
    if ctx.options.reports_only:
        from bids_dnn.report.meeg_report import build_meeg_participant_report

        for subject in ctx.subjects:
            build_meeg_participant_report(ctx.layout, subject, ctx.spec, ctx.run_id)
        return
    out_dir = Path(ctx.options.output_dir)
    identity = dataset_identity(Path(ctx.options.bids_dir), ctx.index.subjects(), ctx.task, stimuli.stim_ids,
                                stimuli.sha256)
    record = check_output_dataset(out_dir, identity, ctx.options.force)
    drv.initialise_root(out_dir, Path(ctx.options.bids_dir), os.environ.get(CONTAINER_ENV))
    ctx.dataset = record_output_dataset(out_dir, identity, record, ctx.options.force)
    drv.remove_stale_temporaries(out_dir)
    write_stimulus_table(ctx, stimuli)
    logger.info("task %s (%s): %d stimuli, %d participant(s): %s", ctx.task, ctx.spec.modality.upper(),
                stimuli.n_stimuli, len(ctx.subjects), ", ".join(ctx.subjects))
    models = model_rdms(ctx, stimuli)
    run_participants(ctx, [s for s in ctx.subjects if s not in unreadable], process_meeg_subject, (stimuli, models),
                     unreadable)
