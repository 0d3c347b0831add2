"""Naturalistic designs (``design: naturalistic``): voxelwise encoding of the BOLD time series of
films and stories, participant level.

Per run, the stimulus timeline comes from the events: the film (or sound) each ``stim_file`` row
presents from its onset, its frames sampled at ``stimuli.video.fps``; or, with
``analyses.naturalistic.word_column``, one sample per word at its onset, read by a text model
after the run's preceding words. Features are computed once per film or story (feature files
in the model folders, content-keyed), resampled to the acquisition times (Lanczos), z-scored
per run and delayed within each run; the BOLD of the brain mask is cleaned of the
``brain.glm.confounds`` and drifts per run and z-scored per run. Ridge with leave-one-run-out
folds fits every voxel (runs presenting the same stimulus are one fold, never split between
training and test); the penalty is chosen per voxel by inner cross-validation over runs.
:mod:`bids_dnn.timeseries` does the arithmetic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.console import logger, progress
from bids_dnn.errors import AnalysisError, BidsValidationError, InputMissingError
from bids_dnn.io import derivatives as drv
from bids_dnn.io.bids import RunInputs
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.tables import column_sidecar

__all__ = ["NATURALISTIC_COLUMNS", "RunTimeline", "LoadedTimelineModel", "run_timelines", "timeline_features",
           "run_bold", "tr_features", "design_matrix", "load_timeline_models", "fit_naturalistic_subject",
           "naturalistic_stage_key", "process_naturalistic_subject", "run_naturalistic_participants"]

NATURALISTIC_COLUMNS = {
    "subject": "Participant label.",
    "roi": "Region of interest.",
    "model": "Model label.",
    "layer": "Layer (feature space).",
    "mean_r": "Mean over the ROI's voxels of the held-out r of the BOLD time series (leave-one-run-out).",
    "mean_r2": "Mean over the ROI's voxels of the held-out R2.",
    "best_layer_share": "Share of the ROI's voxels whose best layer (highest held-out r) is this one.",
    "mean_noise_ceiling": "Mean over the ROI's voxels of the noise ceiling from repeated runs; n/a without repeats.",
    "n_voxels": "Voxels of the ROI that were modelled.",
}


@dataclass
class RunTimeline:
    """The stimulus samples of one run.

    Attributes
    ----------
    run : RunInputs
    kind : {"film", "words"}
    sources : list of (str, Path or None, float)
        ``film``: (file as named, resolved path, onset s) per film row; ``words``: empty.
    words : list of str
        ``words``: the words in order.
    onsets : numpy.ndarray, shape (n_words,)
        ``words``: their onsets (s).
    identity : str
        What the run presents (films and onsets, or words and onsets): runs with the same identity
        repeat a stimulus.
    """

    run: RunInputs
    kind: str
    sources: list[tuple[str, Path | None, float]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    onsets: np.ndarray = field(default_factory=lambda: np.zeros(0))
    identity: str = ""


def run_timelines(ctx: Context, subject: str) -> list[RunTimeline]:
    """Every run of a participant with its stimulus timeline (events read and checked).

    Raises
    ------
    BidsValidationError
        A run without a film or word (exit 16).
    InputMissingError
        A film file that is missing or unreadable (exit 66).
    """
    from bids_dnn.hashing import canonical_json, text_sha256
    from bids_dnn.io.stimuli import normalize_stimulus_path, read_events, resolve_stimulus
    from bids_dnn.io.stimulus_loading import check_stimulus_file, stimulus_kind
    from bids_dnn.workflows.inputs import subject_runs

    spec = ctx.spec.analyses.naturalistic
    bids_dir = Path(ctx.options.bids_dir)
    search = ([Path(ctx.options.derivatives["stimuli"])] if "stimuli" in ctx.options.derivatives else []) + \
        [bids_dir / "stimuli"]
    timelines, problems = [], []
    for run in subject_runs(ctx, subject):
        events = read_events(run.events)
        if spec.word_column:
            if spec.word_column not in events.columns:
                raise BidsValidationError(f"{run.events.name}: no '{spec.word_column}' column "
                                          "(analyses.naturalistic.word_column)")
            rows = events[events[spec.word_column].notna()]
            words = [str(w).strip() for w in rows[spec.word_column]]
            keep = [i for i, w in enumerate(words) if w and w != "n/a"]
            if not keep:
                raise BidsValidationError(f"{run.events.name}: no word in column '{spec.word_column}'")
            onsets = rows["onset"].to_numpy(dtype=np.float64)[keep]
            words = [words[i] for i in keep]
            identity = text_sha256(canonical_json({"words": words, "onsets": np.round(onsets, 3).tolist()}))
            timelines.append(RunTimeline(run, "words", words=words, onsets=onsets, identity=identity))
            continue
        rows = events[events["stim_file"].notna()] if "stim_file" in events.columns else events.iloc[:0]
        sources = []
        for _, row in rows.iterrows():
            name = normalize_stimulus_path(str(row["stim_file"]))
            path, _, problem = resolve_stimulus(name, search, bids_dir)
            problem = problem or (check_stimulus_file(path) if path is not None else None)
            if problem:
                problems.append(problem)
            elif stimulus_kind(path) != "video":
                problems.append(f"{name}: a naturalistic run presents films (video files); this is a "
                                f"{stimulus_kind(path) or 'unknown'} file")
            sources.append((name, path, float(row["onset"])))
        if not sources:
            raise BidsValidationError(f"{run.events.name}: no stim_file names the film of this run",
                                      "name the film in stim_file, or set analyses.naturalistic.word_column "
                                      "for stories")
        identity = text_sha256(canonical_json([(name, round(onset, 3)) for name, _, onset in sources]))
        timelines.append(RunTimeline(run, "film", sources=sources, identity=identity))
    if problems:
        raise InputMissingError(f"{len(problems)} unusable film(s):\n  " + "\n  ".join(sorted(set(problems))),
                                "check the files under stimuli/")
    return timelines


def _timeline_store(ctx: Context, model_spec: Any, loaded: Any, layers: list[str], identity: dict[str, Any],
                    sample_ids: list[str], extract: Any) -> dict[str, np.ndarray]:
    """Features of one film or story, computed once and kept in the model folder (content-keyed)."""
    from bids_dnn.features import store as feat
    from bids_dnn.workflows.provenance import library_versions

    reduction = model_spec.reduction
    if reduction is not None and reduction.method != "srp":
        raise AnalysisError(f"models: {model_spec.output_label}: reduction '{reduction.method}' is fitted on every "
                            "sample, test runs included", "use reduction: {method: srp, ...} (data-independent) or "
                            "analyses.naturalistic.pca (fitted on the training runs only)")
    key = feat.feature_content_key([identity["content"]], {**loaded.identity(), **identity}, layers,
                                   model_spec.dtype, reduction)
    path = ctx.layout.timeline_features(model_spec.output_label, key)

    def compute(writer: Any) -> None:
        shapes = extract(writer.write_batch)
        writer.set_layer_shapes({layer: tuple(shape) for layer, shape in shapes.items()})

    attrs = feat.provenance_attrs(loaded.identity(), token_policy=model_spec.token_policy,
                                  library_versions=library_versions(), stimulus_sha256s=[identity["content"]])
    feat.ensure_features(path, key, compute, stim_ids=sample_ids, dtype=model_spec.dtype,
                         attrs={**attrs, "model_label": model_spec.output_label}, reduction=reduction,
                         force=ctx.options.force, scratch_dir=ctx.resources.scratch_dir)
    return feat.read_features(path, layers).layers


def timeline_features(ctx: Context, model_spec: Any, loaded: Any, layers: list[str], timeline: RunTimeline,
                      device: str, cache: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample times (s from the run's start) and features of one run's timeline.

    Returns
    -------
    times : numpy.ndarray, shape (n_samples,)
    features : dict of str to numpy.ndarray, each (n_samples, n_units)
    """
    from bids_dnn.hashing import file_sha256, text_sha256
    from bids_dnn.io.stimulus_loading import load_video, video_sample_times

    fps = ctx.spec.stimuli.video.fps
    if timeline.kind == "words":
        from bids_dnn.dnn.hf_extract import extract_hf_features
        from bids_dnn.dnn.timeline import word_contexts

        words = timeline.words
        content = text_sha256("\n".join(words))
        if content not in cache:
            contexts = word_contexts(words) if model_spec.context_tokens else None

            def extract(on_batch: Any) -> Any:
                return extract_hf_features(loaded, words, layers, pooling=model_spec.pooling,
                                           batch_size=model_spec.batch_size, device=device, on_batch=on_batch,
                                           contexts=contexts, context_tokens=model_spec.context_tokens,
                                           memory_budget_bytes=ctx.resources.memory_bytes)

            cache[content] = _timeline_store(
                ctx, model_spec, loaded, layers,
                {"content": content, "timeline": "words", "pooling": model_spec.pooling,
                 "context_tokens": model_spec.context_tokens},
                [f"word{i:06d}" for i in range(len(words))], extract)
        return timeline.onsets, cache[content]
    times, parts = [], []
    for name, path, onset in timeline.sources:
        content = file_sha256(path)
        if content not in cache:
            frames = load_video(path, fps)

            def extract(on_batch: Any, frames: list = frames) -> Any:
                if loaded.source == "huggingface":
                    from bids_dnn.dnn.hf_extract import extract_hf_features

                    return extract_hf_features(loaded, frames, layers, pooling=model_spec.pooling,
                                               batch_size=model_spec.batch_size, device=device, on_batch=on_batch,
                                               memory_budget_bytes=ctx.resources.memory_bytes)
                from bids_dnn.dnn.extract import extract_features

                return extract_features(loaded, frames, layers, batch_size=model_spec.batch_size, device=device,
                                        token_policy=model_spec.token_policy, on_batch=on_batch,
                                        memory_budget_bytes=ctx.resources.memory_bytes)

            features = _timeline_store(ctx, model_spec, loaded, layers,
                                       {"content": content, "timeline": "film", "fps": fps},
                                       [f"frame{i:06d}" for i in range(len(frames))], extract)
            cache[content] = features
            logger.info("%s: %d frames of %s at %g fps", model_spec.output_label, len(frames), name, fps)
        features = cache[content]
        n = next(iter(features.values())).shape[0]
        times.append(onset + video_sample_times(n / fps, fps)[:n])
        parts.append(features)
    return np.concatenate(times), {layer: np.concatenate([p[layer] for p in parts]) for layer in layers}


def run_bold(ctx: Context, run: RunInputs, mask: np.ndarray) -> np.ndarray:
    """A run's BOLD in ``mask`` (n_volumes, n_voxels), cleaned of the spec's confounds, linear
    trends and cosine drifts below ``brain.glm.high_pass_hz`` (nilearn ``signal.clean``; no
    standardisation: the fit z-scores per run). Cleaned in float64, returned as float32 (half
    the memory of a participant's runs; the time-series fit works in float32)."""
    from nilearn import signal

    from bids_dnn.brain.confounds import select_confounds
    from bids_dnn.brain.images import masked_timeseries
    from bids_dnn.io.run_files import read_confounds

    glm = ctx.spec.brain.glm
    data = masked_timeseries(run.bold, mask, run.bold.name).astype(np.float64)
    confounds = None
    if glm.confounds:
        if run.confounds is None:
            raise InputMissingError(f"{run.key}: no fMRIPrep confounds file (*_desc-confounds_timeseries.tsv)",
                                    "set brain.glm.confounds: [] to fit without confounds")
        selected, _ = select_confounds(read_confounds(run.confounds), glm.confounds, run.confounds.name)
        values = selected.to_numpy(dtype=np.float64)
        values = values[:, np.nanstd(values, axis=0) > 0]
        confounds = np.nan_to_num(values) if values.size else None
    high_pass = glm.high_pass_hz if glm.drift_model == "cosine" and glm.high_pass_hz > 0 else None
    cleaned = signal.clean(data, confounds=confounds, detrend=True, standardize=None, high_pass=high_pass,
                           t_r=run.t_r)
    return cleaned.astype(np.float32)


def tr_features(times: np.ndarray, features: dict[str, np.ndarray], n_volumes: int, t_r: float, kind: str,
                window: int) -> dict[str, np.ndarray]:
    """Features at the acquisition times ``t_r * k`` (k = 0 .. n_volumes - 1), Lanczos-resampled;
    word timelines as impulses (not normalised by the kernel sum), frames as a sampled signal."""
    from bids_dnn.timeseries import lanczos_resample

    volume_times = np.arange(n_volumes) * t_r
    return {layer: lanczos_resample(values.astype(np.float64), times, volume_times, window=window,
                                    normalize=kind != "words")
            for layer, values in features.items()}


def design_matrix(spec: Any, per_run: list[np.ndarray], runs: np.ndarray, t_r: float) -> np.ndarray:
    """Runs' TR features z-scored per run, then FIR-delayed (``spec.delays``) or convolved with
    the SPM HRF (``spec.hrf``) within each run (nothing crosses a run boundary).

    Parameters
    ----------
    spec : NaturalisticSpec
    per_run : list of numpy.ndarray, each (n_volumes_run, n_features)
    runs : numpy.ndarray, shape (n_samples,)
        Run index of every sample (the runs concatenated in order).
    t_r : float

    Returns
    -------
    numpy.ndarray, shape (n_samples, n_features * n_delays) (FIR) or (n_samples, n_features) (HRF)
    """
    from bids_dnn.timeseries import delay_features, hrf_convolve, zscore_by_run

    features = zscore_by_run(np.concatenate(per_run), runs)
    if spec.hrf:
        return hrf_convolve(features, t_r, runs)
    return delay_features(features, spec.delays, runs)


def _roi_rows(subject: str, model: str, layer: str, r: np.ndarray, r2: np.ndarray, best_share: np.ndarray,
              ceiling: np.ndarray, roi_columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for roi, cols in roi_columns.items():
        rows.append({"subject": subject, "roi": roi, "model": model, "layer": layer,
                     "mean_r": float(np.nanmean(r[cols])) if cols.size else np.nan,
                     "mean_r2": float(np.nanmean(r2[cols])) if cols.size else np.nan,
                     "best_layer_share": float(np.mean(best_share[cols])) if cols.size else np.nan,
                     "mean_noise_ceiling": float(np.nanmean(ceiling[cols])) if cols.size and np.isfinite(
                         ceiling[cols]).any() else np.nan,
                     "n_voxels": int(cols.size)})
    return rows


@dataclass
class LoadedTimelineModel:
    """A model of the spec, loaded once per run of the tool, with its layers."""

    spec: Any
    loaded: Any
    layers: list[str]
    cache: dict[str, Any] = field(default_factory=dict)


def load_timeline_models(ctx: Context, word_timelines: bool) -> dict[str, LoadedTimelineModel]:
    """Every model of the spec, loaded, with its layers resolved (text models for stories)."""
    from bids_dnn.dnn.models import load_model

    out = {}
    for index, model_spec in enumerate(ctx.spec.models):
        field_path = f"models[{index}]"
        loaded = load_model(model_spec, field_path=field_path)
        if model_spec.source == "huggingface":
            from bids_dnn.dnn.huggingface import resolve_hf_layers

            layers = resolve_hf_layers(loaded, model_spec.layers, f"{field_path}.layers",
                                       modality="text" if word_timelines else "image")
        else:
            from bids_dnn.dnn.layers import resolve_layers

            if word_timelines:
                from bids_dnn.errors import SpecError

                raise SpecError([f"{field_path}: stories (analyses.naturalistic.word_column) need a text model "
                                 "(source: huggingface)"])
            layers = resolve_layers(loaded.module, model_spec.layers, field_path=f"{field_path}.layers",
                                    model_name=model_spec.name)
        out[model_spec.output_label] = LoadedTimelineModel(model_spec, loaded, layers)
    return out


def _brain_mask(runs: list[RunInputs]) -> tuple[Any, np.ndarray]:
    from bids_dnn.brain.images import check_same_grid, load_nifti

    reference = load_nifti(runs[0].mask, "brain mask")
    mask = np.asarray(reference.dataobj) > 0
    for run in runs[1:]:
        run_mask = load_nifti(run.mask, "brain mask")
        check_same_grid(run_mask, reference, f"{run.mask.name} and {runs[0].mask.name}")
        mask &= np.asarray(run_mask.dataobj) > 0
    return reference, mask


def fit_naturalistic_subject(ctx: Context, subject: str, models: dict[str, LoadedTimelineModel]) -> dict[str, Any]:
    """Fit and write one participant's time-series encoding: maps per model layer (r, R2), the
    best-layer map, banded R2 split (``banded``), the noise ceiling (repeats), ROI tables.

    Returns
    -------
    dict
        ``outputs`` (paths written) and a summary.
    """
    import nibabel as nib

    from bids_dnn.backend import resolve_device
    from bids_dnn.timeseries import repeat_noise_ceiling, timeseries_encoding, zscore_by_run
    from bids_dnn.workflows.inputs import roi_masks

    spec = ctx.spec.analyses.naturalistic
    device = resolve_device(ctx.options.device)
    timelines = run_timelines(ctx, subject)
    runs = [t.run for t in timelines]
    t_rs = {round(float(r.t_r), 6) for r in runs}
    if len(t_rs) != 1:
        raise AnalysisError(f"sub-{subject}: runs with different TRs ({', '.join(map(str, sorted(t_rs)))})")
    t_r = float(runs[0].t_r)
    reference, mask = _brain_mask(runs)
    rois = roi_masks(ctx, reference, mask, subject) if ctx.spec.rois is not None else {}
    in_mask = {roi: m[mask] for roi, m in rois.items()}
    if spec.region == "rois":
        columns = np.flatnonzero(np.logical_or.reduce(list(in_mask.values())))
    else:
        columns = np.arange(int(mask.sum()))
    # one run cleaned at a time; the participant's series kept once, float32, z-scored per run
    bold_runs = [run_bold(ctx, run, mask)[:, columns] for run in runs]
    lengths = [b.shape[0] for b in bold_runs]
    run_index = np.repeat(np.arange(len(runs)), lengths)
    bold = zscore_by_run(np.concatenate(bold_runs), run_index)
    del bold_runs
    groups_of = {identity: g for g, identity in enumerate(dict.fromkeys(t.identity for t in timelines))}
    groups = np.repeat([groups_of[t.identity] for t in timelines], lengths)
    if len(groups_of) < 2:
        raise AnalysisError(f"sub-{subject}: leave-one-run-out needs at least 2 runs with different stimuli "
                            f"(found {len(groups_of)})")
    ceiling = np.full(columns.size, np.nan)
    repeated = [[i for i, t in enumerate(timelines) if t.identity == identity] for identity in groups_of]
    repeated = [idx for idx in repeated if len(idx) >= 2 and len({lengths[i] for i in idx}) == 1]
    if repeated:
        ceilings = [repeat_noise_ceiling(np.stack([bold[run_index == i] for i in idx])) for idx in repeated]
        ceiling = np.nanmean(np.stack(ceilings), axis=0)
    affine = reference.affine
    roi_columns = {roi: np.flatnonzero(m[columns]) for roi, m in in_mask.items()}
    base = {"CrossValidation": "leave_one_run_out (runs presenting the same stimulus in one fold)",
            "NumberOfRuns": len(runs), "Delays": spec.delays if not spec.hrf else None,
            "HRF": "spm" if spec.hrf else None, "Alphas": spec.alphas, "InnerFolds": spec.inner_folds,
            "PCA": spec.pca, "LanczosWindow": spec.lanczos_window, "RepetitionTime": t_r,
            "Seed": ctx.spec.statistics.seed, "Sources": [str(r.bold) for r in runs]}

    def write_map(path: Path, values: np.ndarray, sidecar: dict[str, Any]) -> Path:
        volume = np.full(mask.shape, np.nan, dtype=np.float32)
        flat = volume[mask]
        flat[columns] = values
        volume[mask] = flat
        return drv.write_nifti(path, nib.Nifti1Image(volume, affine), {**base, **sidecar})

    outputs = [write_map(ctx.layout.naturalistic_map(subject, None, None, "noiseceiling"), ceiling, {
        "Statistic": "noiseceiling",
        "Description": ("Explainable variance (the R2 ceiling of single presentations, Sahani & Linden 2003) from "
                        "the repeated presentations of a run's stimulus (bids_dnn.timeseries.repeat_noise_ceiling)"
                        if repeated else
                        "No run repeats a stimulus: the noise ceiling is unavailable (all n/a)")})]
    # features are delayed within each run above; the folds group runs presenting the same stimulus
    fit_options = {"alphas": spec.alphas, "delays": (0,), "inner_folds": spec.inner_folds, "pca": spec.pca,
                   "seed": ctx.spec.statistics.seed, "memory_budget_bytes": ctx.resources.memory_bytes}
    summary: dict[str, Any] = {"n_runs": len(runs), "n_voxels": int(columns.size), "noise_ceiling": bool(repeated),
                               "models": {}}
    for model, entry in models.items():
        spaces: dict[str, np.ndarray] = {}
        per_run: dict[str, list[np.ndarray]] = {layer: [] for layer in entry.layers}
        for timeline, n_volumes in zip(timelines, lengths):
            times, features = timeline_features(ctx, entry.spec, entry.loaded, entry.layers, timeline, device,
                                                entry.cache)
            resampled = tr_features(times, features, n_volumes, t_r, timeline.kind, spec.lanczos_window)
            for layer in entry.layers:
                per_run[layer].append(resampled[layer])
        for layer in entry.layers:
            spaces[layer] = design_matrix(spec, per_run[layer], run_index, t_r)
        scores: dict[str, Any] = {}
        with progress(f"time-series encoding sub-{subject} {model}", len(entry.layers)) as advance:
            for layer in entry.layers:
                scores[layer] = timeseries_encoding({layer: spaces[layer]}, bold, groups, **fit_options)
                advance()
        r_stack = np.stack([scores[layer].r for layer in entry.layers])
        best = np.full(columns.size, np.nan)
        defined = np.isfinite(r_stack).any(axis=0)
        best[defined] = np.nanargmax(np.where(np.isfinite(r_stack[:, defined]), r_stack[:, defined], -np.inf),
                                     axis=0) + 1
        rows: list[dict[str, Any]] = []
        for j, layer in enumerate(entry.layers):
            result = scores[layer]
            for stat, values, text in (("r", result.r, "held-out Pearson r of the BOLD time series"),
                                       ("r2", result.r2, "held-out R2 of the BOLD time series")):
                outputs.append(write_map(ctx.layout.naturalistic_map(subject, model, layer, stat), values, {
                    "Model": model, "Layer": layer, "Statistic": stat, "Description": text}))
            rows += _roi_rows(subject, model, layer, result.r, result.r2, best == j + 1, ceiling, roi_columns)
        outputs.append(write_map(ctx.layout.naturalistic_map(subject, model, None, "bestlayer"), best, {
            "Model": model, "Statistic": "bestlayer", "Layers": entry.layers,
            "Description": "1-based index into Layers of the layer with the highest held-out r; n/a where no "
                           "layer has an r"}))
        outputs.append(_write_top_voxel(ctx, subject, model, entry.layers, spaces, bold, groups, run_index,
                                        r_stack, mask, columns, fit_options))
        if spec.banded and len(entry.layers) > 1:
            banded = timeseries_encoding(spaces, bold, groups, **fit_options)
            for j, layer in enumerate(entry.layers):
                outputs.append(write_map(ctx.layout.naturalistic_map(subject, model, layer, "bandedr2"),
                                         np.asarray(banded.r2_split)[j], {
                                             "Model": model, "Layer": layer, "Statistic": "bandedr2",
                                             "Description": "share of the held-out R2 of a banded ridge over all "
                                                            "layers of the model attributed to this layer"}))
        table_path = ctx.layout.naturalistic_table(subject, model)
        drv.write_tsv(table_path, pd.DataFrame(rows, columns=list(NATURALISTIC_COLUMNS)),
                      column_sidecar(NATURALISTIC_COLUMNS, **base, ModelLabel=model))
        outputs.append(table_path)
        summary["models"][model] = {layer: round(float(np.nanmean(scores[layer].r)), 4) for layer in entry.layers}
    return {"outputs": outputs, **summary}


def _write_top_voxel(ctx: Context, subject: str, model: str, layers: list[str], spaces: dict[str, np.ndarray],
                     bold: np.ndarray, groups: np.ndarray, run_index: np.ndarray, r_stack: np.ndarray,
                     mask: np.ndarray, columns: np.ndarray, fit_options: dict[str, Any]) -> Path:
    """The measured and held-out predicted time series of the voxel with the highest r (its best
    layer), refitted alone with the same folds and options."""
    from bids_dnn.timeseries import timeseries_encoding

    finite = np.where(np.isfinite(r_stack), r_stack, -np.inf)
    layer_index, voxel = np.unravel_index(int(np.argmax(finite)), finite.shape)
    layer = layers[int(layer_index)]
    result = timeseries_encoding({layer: spaces[layer]}, bold[:, [voxel]], groups, keep_predictions=True,
                                 **fit_options)
    ijk = np.argwhere(mask)[columns[voxel]]
    table = pd.DataFrame({"run": run_index + 1, "volume": np.concatenate([np.arange((run_index == r).sum())
                                                                           for r in np.unique(run_index)]),
                          "measured": bold[:, voxel], "predicted": result.predictions[:, 0]})
    path = ctx.layout.naturalistic_timeseries(subject, model)
    drv.write_tsv(path, table, {
        "run": {"Description": "Run (1-based, in the order of the runs)."},
        "volume": {"Description": "Volume within the run (0-based)."},
        "measured": {"Description": "The voxel's cleaned BOLD, z-scored per run."},
        "predicted": {"Description": "Its held-out prediction (the run left out of the fit)."},
        "Description": "The best-predicted voxel of the model.", "Voxel": [int(v) for v in ijk], "Layer": layer,
        "ModelLabel": model, "HeldOutR": float(r_stack[layer_index, voxel])})
    return path


def naturalistic_stage_key(ctx: Context, subject: str, models: dict[str, LoadedTimelineModel]) -> str:
    """Content key of a participant's naturalistic stage: its input files (BOLD, masks,
    confounds, events), the stimulus files, the models, and every spec section it reads."""
    from bids_dnn.workflows.inputs import roi_input_files, subject_input_files
    from bids_dnn.workflows.stages import content_key, files_fingerprint

    root = Path(ctx.options.bids_dir)
    spec = ctx.spec
    return content_key("naturalistic", subject, ctx.task, files_fingerprint(subject_input_files(ctx, subject), root),
                       files_fingerprint(roi_input_files(ctx, subject), root) if spec.rois else None,
                       {m: e.loaded.identity() for m, e in models.items()},
                       {m: e.layers for m, e in models.items()},
                       [m.model_dump(mode="json") for m in spec.models], spec.analyses.naturalistic.model_dump(mode="json"),
                       spec.stimuli.model_dump(mode="json"), spec.brain.model_dump(mode="json"),
                       spec.rois.model_dump(mode="json") if spec.rois else None, spec.statistics.seed)


def process_naturalistic_subject(ctx: Context, subject: str, models: dict[str, LoadedTimelineModel]) -> dict[str, Any]:
    """Run one participant's naturalistic stage unless its outputs are current (``--force`` redoes it)."""
    from bids_dnn.report import build_naturalistic_participant_report
    from bids_dnn.workflows.single_stage import SingleStage, process_single_stage

    stage = SingleStage("naturalistic", "time-series encoding", ("n_runs", "n_voxels", "noise_ceiling", "models"),
                        fit=lambda s: fit_naturalistic_subject(ctx, s, models),
                        report=lambda s: build_naturalistic_participant_report(ctx.layout, s, ctx.spec, ctx.run_id))
    logger.info("sub-%s: time-series encoding of %d model(s)", subject, len(models))
    return process_single_stage(ctx, subject, stage, naturalistic_stage_key(ctx, subject, models))


def run_naturalistic_participants(ctx: Context) -> None:
    """Participant level of ``design: naturalistic``: models loaded once, then every participant."""
    from bids_dnn.io.input_dataset import check_output_dataset, dataset_identity, record_output_dataset
    from bids_dnn.workflows.provenance import CONTAINER_ENV
    from bids_dnn.workflows.single_stage import run_participants

    if ctx.options.reports_only:
        from bids_dnn.report import rebuild_participant_reports

        rebuild_participant_reports(ctx.layout, ctx.subjects, None, ctx.spec, ctx.run_id)
        return
    out_dir = Path(ctx.options.output_dir)
    identity = dataset_identity(Path(ctx.options.bids_dir), ctx.index.subjects(), ctx.task, [], [])
    record = check_output_dataset(out_dir, identity, ctx.options.force)
    models = load_timeline_models(ctx, ctx.spec.analyses.naturalistic.word_column is not None)
    drv.initialise_root(out_dir, Path(ctx.options.bids_dir), os.environ.get(CONTAINER_ENV))
    ctx.dataset = record_output_dataset(out_dir, identity, record, ctx.options.force)
    drv.remove_stale_temporaries(out_dir)
    logger.info("task %s (naturalistic): %d participant(s): %s", ctx.task, len(ctx.subjects), ", ".join(ctx.subjects))
    # the loaded networks stay in this process: one participant at a time
    run_participants(ctx, ctx.subjects, process_naturalistic_subject, (models,), parallel=False)
