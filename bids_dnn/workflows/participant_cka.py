"""CKA at the participant level (``analyses.cka``): stage ``cka:<model>`` and the layer x layer
CKA of all models (model folders).

An ROI's patterns are the run-mean response estimates of its voxels (stimuli x voxels, the
estimates the ``brain`` stage writes as betas); a layer's are its stored activations (stimuli x
units). Each ROI's Gram matrix is computed once per participant and compared with every layer
of every model (:mod:`bids_dnn.cka`).
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
from bids_dnn.workflows.context import Context, stream_seed_entropy
from bids_dnn.workflows.model_features import read_checked_features
from bids_dnn.workflows.subject_patterns import SubjectPatterns, roi_patterns

__all__ = ["CKA_COLUMNS", "LAYER_CKA_COLUMNS", "CKA_SEED_STREAM", "cka_stage_ingredients",
           "cka_seed_entropy", "cka_tables", "write_cka_tables", "write_layer_cka"]

CKA_COLUMNS = {
    "subject": "Participant label.",
    "roi": "Region of interest.",
    "model": "Model label.",
    "layer": "Layer (node) name as in the model.",
    "kernel": "Kernel of the stimulus x stimulus Gram matrices (linear, or rbf with bandwidth sigma x the median "
              "distance; Sigma in the JSON).",
    "estimator": "HSIC estimator: unbiased (debiased CKA, Song et al. 2012) or plain (biased, centred Grams).",
    "cka": "Centered kernel alignment of the ROI's run-mean response patterns and the layer's activations over "
           "the stimuli; n/a for an ROI skipped for having fewer usable voxels than rois.min_voxels.",
    "p_permutation": "One-sided stimulus-label permutation p-value: (1 + #(null >= cka)) / (1 + n); n/a without "
                     "permutations.",
    "ci_low": "Lower bound of the stimulus-bootstrap percentile interval of cka (coverage CI in the JSON).",
    "ci_high": "Upper bound of the stimulus-bootstrap percentile interval of cka.",
    "n_permutations": "Permutations of the stimulus labels of the layer's activations.",
    "n_bootstrap": "Stimulus-bootstrap resamples.",
    "n_voxels": "Voxels in the ROI (on the BOLD grid, inside the brain mask).",
    "n_units": "Units (features) of the layer.",
    "n_stimuli": "Stimuli (rows of both pattern sets).",
}

LAYER_CKA_COLUMNS = {
    "layer_a": "Layer of this folder's model.",
    "model_b": "Model label of the other layer (this model included).",
    "layer_b": "Layer of model_b.",
    "kernel": "Kernel of the Gram matrices.",
    "estimator": "HSIC estimator.",
    "cka": "Centered kernel alignment of the two layers' activations over the stimuli.",
}

#: the SeedSequence word that separates the CKA generators from the other random steps
CKA_SEED_STREAM = 0xC4A

#: what the description of a CKA table says about the estimates (sidecars and report)
PATTERNS_TEXT = ("ROI patterns: run-mean response estimates (stimuli x voxels); layer patterns: stored activations "
                 "(stimuli x units). The stimulus labels of the layer are permuted; bootstrap resamples stimuli "
                 "(rows and columns of both Gram matrices; for the unbiased estimator pairs of copies of one "
                 "stimulus are left out like the diagonal).")


def cka_stage_ingredients(ctx: Context) -> dict[str, Any]:
    """The spec fields the ``cka:<model>`` stages read (``across_models`` is not one of them)."""
    return {"cka": ctx.spec.analyses.cka.model_dump(mode="json", exclude={"across_models"}),
            "ci": ctx.spec.statistics.ci, "seed": ctx.spec.statistics.seed}


def cka_seed_entropy(seed: int, subject: str, model_index: int) -> list[int]:
    """The entropy of a participant's CKA generator for the ``model_index``-th model of the spec:
    independent of which other participants and models are computed in the same run."""
    return stream_seed_entropy(seed, subject, CKA_SEED_STREAM, model_index)


def _device(ctx: Context) -> str:
    from bids_dnn.backend import resolve_device

    return resolve_device(ctx.options.device)


def cka_tables(ctx: Context, subject: str, stimuli: StimulusSet, patterns: SubjectPatterns,
               masks: dict[str, np.ndarray], models: dict[str, list[str]],
               small_rois: dict[str, int] | None = None) -> dict[str, pd.DataFrame]:
    """ROI x layer CKA with permutation p-values and bootstrap intervals, one table per model.

    Parameters
    ----------
    models : dict of str to list of str
        Model label -> its layers, for the models to compute.
    small_rois : dict of str to int, optional
        ROIs skipped for too few voxels (roi -> usable voxels): n/a rows.
    """
    from bids_dnn.cka import cka_test_of_stacks, gram_stack

    spec = ctx.spec.analyses.cka
    device = _device(ctx)
    rois = roi_patterns(patterns, masks)
    labels = [m.output_label for m in ctx.spec.models]
    common = {"subject": subject, "kernel": spec.kernel, "estimator": spec.estimator}
    tables = {}
    try:
        roi_stack = gram_stack(list(rois.values()), spec.kernel, spec.estimator, spec.sigma, device=device) \
            if rois else None
        for model, layers in models.items():
            features = read_checked_features(ctx, model, layers).layers
            rows: list[dict[str, Any]] = []
            if roi_stack is not None:
                layer_stack = gram_stack([features[layer] for layer in layers], spec.kernel, spec.estimator,
                                         spec.sigma, device=device)
                rng = np.random.default_rng(cka_seed_entropy(ctx.spec.statistics.seed, subject, labels.index(model)))
                result = cka_test_of_stacks(roi_stack, layer_stack, n_permutations=spec.permutations,
                                            n_bootstrap=spec.bootstrap, ci=ctx.spec.statistics.ci, rng=rng,
                                            memory_bytes=ctx.resources.memory_bytes)
                for i, roi in enumerate(rois):
                    for j, layer in enumerate(layers):
                        rows.append({**common, "roi": roi, "model": model, "layer": layer,
                                     "cka": float(result.observed[i, j]),
                                     "p_permutation": float(result.p_values[i, j]),
                                     "ci_low": float(result.ci_low[i, j]), "ci_high": float(result.ci_high[i, j]),
                                     "n_permutations": spec.permutations, "n_bootstrap": spec.bootstrap,
                                     "n_voxels": int(rois[roi].shape[1]), "n_units": int(features[layer].shape[1]),
                                     "n_stimuli": stimuli.n_stimuli})
            for roi, n_voxels in (small_rois or {}).items():
                rows += [{**common, "roi": roi, "model": model, "layer": layer, "cka": np.nan, "p_permutation": np.nan,
                          "ci_low": np.nan, "ci_high": np.nan, "n_permutations": spec.permutations,
                          "n_bootstrap": spec.bootstrap, "n_voxels": n_voxels,
                          "n_units": int(features[layer].shape[1]), "n_stimuli": stimuli.n_stimuli}
                         for layer in layers]
            tables[model] = pd.DataFrame(rows, columns=list(CKA_COLUMNS))
    except ValueError as exc:
        raise AnalysisError(f"sub-{subject}: CKA failed: {exc}",
                            "check the stimuli (the unbiased estimator needs at least 4) and the patterns") from None
    return tables


def write_cka_tables(ctx: Context, subject: str, stimuli: StimulusSet, patterns: SubjectPatterns,
                     masks: dict[str, np.ndarray], models: dict[str, list[str]],
                     small_rois: dict[str, int] | None = None) -> dict[str, Path]:
    """Stage ``cka:<model>``: write each model's table (and its JSON data dictionary); model -> path."""
    spec = ctx.spec.analyses.cka
    labels = [m.output_label for m in ctx.spec.models]
    paths = {}
    for model, table in cka_tables(ctx, subject, stimuli, patterns, masks, models, small_rois).items():
        path = ctx.layout.cka_table(subject, model)
        drv.write_tsv(path, table, {
            **{name: {"Description": text} for name, text in CKA_COLUMNS.items()},
            "Description": "Centered kernel alignment (Kornblith et al. 2019) of every ROI with every layer. "
                           + PATTERNS_TEXT,
            "Kernel": spec.kernel, "Sigma": spec.sigma if spec.kernel == "rbf" else None,
            "Estimator": spec.estimator, "Permutations": spec.permutations, "BootstrapResamples": spec.bootstrap,
            "CI": ctx.spec.statistics.ci, "Seed": ctx.spec.statistics.seed,
            "SeedSequenceEntropy": cka_seed_entropy(ctx.spec.statistics.seed, subject, labels.index(model))})
        paths[model] = path
    return paths


def write_layer_cka(ctx: Context, layers: dict[str, list[str]]) -> list[Path]:
    """Layer x layer CKA of every model's layers with every model's layers, one table per model
    in its folder. A table whose sidecar holds the same content key is left as it is.

    Parameters
    ----------
    layers : dict of str to list of str
        Model label -> its layers (every model of the spec, features already extracted).

    Returns
    -------
    list of Path
        The tables written or found current.
    """
    from bids_dnn.cka import cka_matrix
    from bids_dnn.workflows.stages import content_key

    spec = ctx.spec.analyses.cka
    key = content_key("layer_cka", {m: ctx.feature_keys[m] for m in layers}, layers, spec.kernel, spec.sigma,
                      spec.estimator)
    paths = [ctx.layout.model_cka(model) for model in layers]
    if not ctx.options.force and all(drv.read_json_object(drv.sidecar_path(p)).get("ContentKey") == key
                                     and p.is_file() for p in paths):
        return paths
    names = [(model, layer) for model, model_layers in layers.items() for layer in model_layers]
    sets = []
    for model, model_layers in layers.items():
        features = read_checked_features(ctx, model, model_layers).layers
        sets += [features[layer] for layer in model_layers]
    try:
        values = cka_matrix(sets, kernel=spec.kernel, estimator=spec.estimator, sigma=spec.sigma,
                            device=_device(ctx))
    except ValueError as exc:
        raise AnalysisError(f"layer x layer CKA failed: {exc}", "check the stimuli and the models' layers") from None
    for model, path in zip(layers, paths):
        rows = [{"layer_a": layer_a, "model_b": model_b, "layer_b": layer_b, "kernel": spec.kernel,
                 "estimator": spec.estimator, "cka": float(values[i, j])}
                for i, (model_a, layer_a) in enumerate(names) if model_a == model
                for j, (model_b, layer_b) in enumerate(names)]
        drv.write_tsv(path, pd.DataFrame(rows, columns=list(LAYER_CKA_COLUMNS)), {
            **{name: {"Description": text} for name, text in LAYER_CKA_COLUMNS.items()},
            "Description": "Centered kernel alignment (Kornblith et al. 2019) between the activations of this "
                           "model's layers and every model's layers over the task's stimuli.",
            "ModelLabel": model, "Kernel": spec.kernel, "Sigma": spec.sigma if spec.kernel == "rbf" else None,
            "Estimator": spec.estimator, "ContentKey": key,
            "Sources": [str(ctx.layout.features(m).relative_to(ctx.layout.root)) for m in layers]})
    logger.info("layer x layer CKA of %d layers of %d model(s) written", len(names), len(layers))
    return paths
