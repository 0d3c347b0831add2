"""What drives a region (``analyses.drivers``): stage ``drivers`` of a participant.

For every ROI: its mean response to each stimulus (run-mean estimates averaged over the ROI's
voxels), a cross-validated ridge prediction of that response from each layer of one model, the
layer with the best held-out r, the stimuli ranked by measured and by predicted response, and,
for the top stimuli by predicted response, saliency maps of the predicted response with respect
to the input image (gradients through the network and the ridge weights; vanilla and SmoothGrad).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.console import logger
from bids_dnn.errors import AnalysisError
from bids_dnn.io import derivatives as drv
from bids_dnn.io.stimuli import StimulusSet
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.cv import stimulus_folds
from bids_dnn.workflows.model_features import read_checked_features
from bids_dnn.workflows.subject_patterns import SubjectPatterns, roi_patterns
from bids_dnn.workflows.tables import column_sidecar

__all__ = ["DRIVERS_COLUMNS", "drivers_model", "roi_mean_responses", "write_drivers"]

DRIVERS_COLUMNS = {
    "subject": "Participant label.",
    "roi": "Region of interest.",
    "model": "Model label.",
    "layer": "The ROI's layer: the one whose cross-validated ridge prediction of the ROI's mean response has the "
             "highest held-out r (the r of every layer is in the JSON, LayerScores).",
    "stim_id": "Stimulus.",
    "measured": "The ROI's mean response to the stimulus: run-mean estimate averaged over the ROI's voxels.",
    "predicted": "Held-out prediction of measured from the layer's activations (the stimulus in a test fold).",
    "rank_measured": "Rank of measured among the stimuli (1: strongest response).",
    "rank_predicted": "Rank of predicted (1: strongest predicted response).",
    "layer_r": "Held-out Pearson r of the layer's prediction (within test folds, averaged over folds).",
}

DESCRIPTION = ("What drives each ROI: its mean response to every stimulus, measured and predicted by cross-validated "
               "ridge from one layer's activations (the layer with the best held-out r). Rank 1 is the strongest "
               "response.")


def drivers_model(ctx: Context) -> str:
    """The label of the model whose layers predict the ROI responses."""
    return ctx.spec.analyses.drivers.model or ctx.spec.models[0].output_label


def roi_mean_responses(patterns: SubjectPatterns, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean over each ROI's voxels (with finite estimates) of the run-mean estimates: roi -> (n_stimuli,)."""
    means = {}
    for roi, values in roi_patterns(patterns, masks).items():
        finite = np.isfinite(values).all(axis=0)
        means[roi] = values[:, finite].mean(axis=1) if finite.any() else np.full(values.shape[0], np.nan)
    return means


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 for the largest value (ties share the smallest rank), NaN stays NaN."""
    from scipy.stats import rankdata

    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    out[finite] = rankdata(-values[finite], method="min")
    return out


def write_drivers(ctx: Context, subject: str, stimuli: StimulusSet, patterns: SubjectPatterns,
                  masks: dict[str, np.ndarray], layers: list[str]) -> list[Path]:
    """Stage ``drivers``: the ranking table and the saliency maps of every ROI; returns the paths written.

    ``layers``: the layers of the model (:func:`drivers_model`) whose features are stored."""
    from bids_dnn.encoding import cross_validated_ridge, himalaya_backend_for_device

    spec = ctx.spec.analyses.drivers
    seed = ctx.spec.statistics.seed
    model = drivers_model(ctx)
    model_spec = next(m for m in ctx.spec.models if m.output_label == model)
    feature_set = read_checked_features(ctx, model, layers)
    scheme, folds, groups = stimulus_folds(spec, "analyses.drivers", patterns.run_betas, seed)
    responses = roi_mean_responses(patterns, masks)
    usable = [roi for roi, values in responses.items() if np.isfinite(values).all()]
    if not usable:
        raise AnalysisError(f"sub-{subject}: no ROI has a finite mean response to every stimulus",
                            "check the ROIs and the brain mask")
    targets = np.stack([responses[roi] for roi in usable], axis=1)
    layer_r: dict[str, dict[str, float]] = {roi: {} for roi in usable}
    predictions: dict[str, np.ndarray] = {}
    backend = himalaya_backend_for_device(ctx.options.device)
    for layer, values in feature_set.layers.items():
        result = cross_validated_ridge(values.astype(np.float64), targets, folds, spec.alphas,
                                       inner_folds=spec.inner_folds, inner_groups=groups, standardize=spec.standardize,
                                       seed=seed, backend=backend)
        predictions[layer] = result.predictions
        for i, roi in enumerate(usable):
            layer_r[roi][layer] = float(result.r[i])
    rows = []
    chosen: dict[str, str] = {}
    for i, roi in enumerate(usable):
        scores = {layer: r for layer, r in layer_r[roi].items() if np.isfinite(r)}
        if not scores:
            logger.warning("sub-%s: ROI %s: no layer predicts its mean response (constant); not ranked", subject, roi)
            continue
        layer = max(scores, key=scores.get)
        chosen[roi] = layer
        predicted = predictions[layer][:, i]
        rank_measured, rank_predicted = _ranks(targets[:, i]), _ranks(predicted)
        rows += [{"subject": subject, "roi": roi, "model": model, "layer": layer, "stim_id": stim_id,
                  "measured": targets[s, i], "predicted": predicted[s], "rank_measured": rank_measured[s],
                  "rank_predicted": rank_predicted[s], "layer_r": scores[layer]}
                 for s, stim_id in enumerate(stimuli.stim_ids)]
    path = ctx.layout.drivers_table(subject, model)
    drv.write_tsv(path, pd.DataFrame(rows, columns=list(DRIVERS_COLUMNS)), column_sidecar(
        DRIVERS_COLUMNS, Description=DESCRIPTION, ModelLabel=model, CrossValidation=scheme, NumberOfFolds=len(folds),
        Alphas=spec.alphas, InnerFolds=spec.inner_folds, Standardize=spec.standardize, Seed=seed,
        LayerScores=layer_r, TopStimuli=spec.n_top))
    written = [path]
    if spec.saliency.enabled and chosen:
        written += _write_saliency(ctx, subject, stimuli, model_spec, feature_set, targets, usable, chosen,
                                   predictions, groups)
    return written


def _write_saliency(ctx: Context, subject: str, stimuli: StimulusSet, model_spec: Any, feature_set: Any,
                    targets: np.ndarray, usable: list[str], chosen: dict[str, str],
                    predictions: dict[str, np.ndarray], groups: np.ndarray | None) -> list[Path]:
    """Saliency maps of each ROI's predicted response for its top stimuli (image stimuli only)."""
    from bids_dnn.backend import resolve_device
    from bids_dnn.dnn.models import load_model
    from bids_dnn.dnn.saliency import linear_readout_saliency, load_saliency_images, stored_projection
    from bids_dnn.encoding import fit_readout
    from bids_dnn.io.stimulus_loading import is_video

    spec = ctx.spec.analyses.drivers
    saliency = spec.saliency
    seed = ctx.spec.statistics.seed
    if any(kind != "image" for kind in stimuli.kinds) or model_spec.source == "huggingface":
        logger.info("sub-%s: saliency maps are made for image stimuli of image networks only; skipped here",
                    subject)
        return []
    index = [m.output_label for m in ctx.spec.models].index(model_spec.output_label)
    loaded = load_model(model_spec, field_path=f"models[{index}]")
    device = resolve_device(ctx.options.device)
    written = []
    for i, roi in enumerate(usable):
        if roi not in chosen:
            continue
        layer = chosen[roi]
        try:
            projection = stored_projection(feature_set.reductions.get(layer))
        except ValueError as exc:  # e.g. PCA-reduced features: the components are not stored
            logger.warning("sub-%s: ROI %s: no saliency maps for layer %s (%s)", subject, roi, layer, exc)
            continue
        features = feature_set.layers[layer].astype(np.float64)
        scale = features.std(axis=0) if spec.standardize else np.ones(features.shape[1])
        scale[scale == 0] = 1.0
        readout = fit_readout(features / scale, targets[:, i], spec.alphas, inner_folds=spec.inner_folds,
                              groups=groups, seed=seed)
        weights = readout.weights / scale
        top = [int(s) for s in np.argsort(-predictions[layer][:, i], kind="stable")[:saliency.n_stimuli]]
        paths = [stimuli.paths[s] for s in top if not is_video(stimuli.paths[s])]
        images = load_saliency_images(paths, loaded)
        arrays: dict[str, Any] = {"stim_ids": np.array([stimuli.stim_ids[s] for s in top]),
                                  "display": np.round(images.display * 255).astype(np.uint8)}
        expected = readout.intercept + (features[top] - readout.feature_mean * scale) @ weights
        for method in saliency.methods:
            result = linear_readout_saliency(
                loaded.module, layer, images.inputs, weights, intercept=readout.intercept,
                unit_offset=readout.feature_mean * scale, method=method, n_samples=saliency.n_samples,
                noise_level=saliency.noise_level, seed=seed, token_policy=model_spec.token_policy,
                projection=projection, device=device)
            arrays[f"maps_{method}"] = result.maps
            arrays["predicted"] = result.predictions
        gap = float(np.max(np.abs(arrays["predicted"] - expected)) / (np.ptp(targets[:, i]) or 1.0))
        if gap > 1e-3:
            logger.warning("sub-%s: ROI %s: the network's readout differs from the stored features' by %.2g of the "
                           "response range (non-deterministic layers?)", subject, roi, gap)
        arrays.update(layer=np.array(layer), alpha=np.array(readout.alpha), methods=np.array(saliency.methods))
        path = ctx.layout.saliency(subject, model_spec.output_label, roi)
        drv.write_npz(path, **arrays)
        written.append(path)
    return written
