"""Probing (``analyses.probing``): cross-validated linear probes from every model layer (once per
run, model folders) and from every ROI's patterns (stage ``probing`` of each participant) to the
stimulus annotations the spec names, on one scale (balanced accuracy for categorical
annotations, chance 1/k; held-out r for continuous ones, chance 0) (:mod:`bids_dnn.probing`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.console import logger
from bids_dnn.errors import AnalysisError, SpecError
from bids_dnn.io import derivatives as drv
from bids_dnn.io.stimuli import StimulusSet
from bids_dnn.workflows.context import Context, stream_seed_entropy
from bids_dnn.workflows.cv import stimulus_folds
from bids_dnn.workflows.model_features import read_checked_features
from bids_dnn.workflows.subject_patterns import SubjectPatterns, roi_patterns
from bids_dnn.workflows.tables import column_sidecar

__all__ = ["PROBE_COLUMNS", "LAYER_PROBE_COLUMNS", "ROI_PROBE_COLUMNS", "PROBING_SEED_STREAM", "probe_annotations",
           "probing_stage_ingredients", "write_layer_probes", "write_roi_probes"]

#: the columns of every probe row after the row's names
PROBE_COLUMNS = {
    "annotation": "Stimulus annotation probed ('category', a stimuli.tsv column or an events column).",
    "kind": "categorical (ridge classifier, one-vs-rest) or continuous (ridge regression).",
    "score": "Categorical: balanced accuracy of the pooled held-out predictions; continuous: held-out Pearson r "
             "within each test fold, averaged over folds.",
    "chance": "Chance level of score: 1 / n_classes, or 0.",
    "p_permutation": "One-sided label-permutation p-value of score (labels permuted within test folds, the whole "
                     "cross-validation, penalty choice included, rerun on each permuted label vector): "
                     "(1 + #(null >= score)) / (1 + n); n/a without permutations.",
    "accuracy": "Categorical: fraction of held-out stimuli predicted correctly; n/a for continuous.",
    "r2": "Continuous: R2 of the pooled held-out predictions; n/a for categorical.",
    "n_classes": "Classes of a categorical annotation; n/a for continuous.",
    "n_stimuli": "Stimuli with a value of the annotation (those without are left out).",
    "n_permutations": "Label permutations.",
    "cv": "Outer cross-validation over stimuli: leave_one_run_out (runs with disjoint stimuli), or "
          "stratified_kfold (k folds dealing each class, or each range of values, evenly).",
    "n_folds": "Outer folds.",
    "n_predictors": "Predictors of the probe: units of the layer, or voxels of the ROI.",
}
LAYER_PROBE_COLUMNS = {"layer": "Layer (node) name as in the model.", **PROBE_COLUMNS}
ROI_PROBE_COLUMNS = {"subject": "Participant label.", "roi": "Region of interest.", **PROBE_COLUMNS}

#: the SeedSequence word that separates the probing generators from the other random steps
PROBING_SEED_STREAM = 0x9B0

DESCRIPTION = ("Cross-validated linear probes (ridge; one penalty per outer fold chosen by inner cross-validation, "
               "a stimulus never in the training and test fold) from {what} to stimulus annotations. Categorical "
               "annotations: one-vs-rest ridge classifier (as sklearn's RidgeClassifier), scored by balanced "
               "accuracy; continuous: ridge regression, scored by held-out r.")


def probe_annotations(ctx: Context, stimuli: StimulusSet) -> dict[str, Any]:
    """The annotations of ``analyses.probing`` coded as probe targets, by name.

    Raises
    ------
    SpecError
        An annotation the stimuli do not have, or one that cannot be probed (e.g. a class with a
        single stimulus).
    """
    from bids_dnn.probing import encode_annotation

    spec = ctx.spec.analyses.probing
    available = {"category": list(stimuli.categories), **stimuli.annotations}
    coded = {}
    for name in spec.annotations:
        if name not in available:
            raise SpecError([f"analyses.probing.annotations: the stimuli have no annotation '{name}'; name "
                             "'category', a column of stimuli.tsv or an events column with one value per stimulus "
                             f"(available: {', '.join(sorted(available))})"])
        try:
            coded[name] = encode_annotation(available[name], spec.kinds.get(name))
        except ValueError as exc:
            raise SpecError([f"analyses.probing.annotations: '{name}' cannot be probed: {exc}; choose another "
                             "annotation or set its kind in analyses.probing.kinds"]) from None
    return coded


def probing_stage_ingredients(ctx: Context, stimuli: StimulusSet) -> dict[str, Any]:
    """What the ROI probes read besides the patterns and ROIs: the spec section (without
    ``layers``), the annotations' values, and the seed."""
    spec = ctx.spec.analyses.probing
    available = {"category": list(stimuli.categories), **stimuli.annotations}
    return {"probing": spec.model_dump(mode="json", exclude={"layers"}),
            "values": {name: available.get(name) for name in spec.annotations}, "seed": ctx.spec.statistics.seed}


def _probe_row(result: Any, name: str, annotation: Any, scheme: str, n_folds: int, n_predictors: int,
               n_permutations: int) -> dict[str, Any]:
    return {"annotation": name, "kind": result.kind, "score": result.score, "chance": result.chance,
            "p_permutation": result.p_permutation, "accuracy": result.accuracy, "r2": result.r2,
            "n_classes": result.n_classes if result.n_classes is not None else np.nan,
            "n_stimuli": int((~annotation.missing).sum()), "n_permutations": n_permutations, "cv": scheme,
            "n_folds": n_folds, "n_predictors": n_predictors}


def _probe(patterns: np.ndarray, annotation: Any, folds: list | None, spec: Any, seed: int,
           rng: np.random.Generator, groups: np.ndarray | None, memory_bytes: int | None, what: str) -> Any:
    """One probe. ``folds`` None: k-fold stratified by the annotation (``spec.n_folds``); the
    labels are always permuted within test folds, so the null keeps each fold's composition."""
    from bids_dnn.probing import ridge_probe, stratified_folds

    try:
        if folds is None:
            folds = stratified_folds(annotation, spec.n_folds, seed=seed)
        return ridge_probe(patterns, annotation, folds, spec.alphas, inner_folds=spec.inner_folds, inner_groups=groups,
                           seed=seed, n_permutations=spec.permutations, rng=rng, permutation_groups="folds",
                           standardize=spec.standardize, memory_bytes=memory_bytes)
    except ValueError as exc:
        raise AnalysisError(f"probing {what} failed: {exc}", "check the annotation and the folds") from None


def write_layer_probes(ctx: Context, stimuli: StimulusSet, layers: dict[str, list[str]]) -> list[Path]:
    """Probes of every layer of every model, one table per model in its folder (k-fold over the
    stimuli, ``n_folds``, seeded). A table whose sidecar holds the same content key is kept."""
    from bids_dnn.workflows.stages import content_key

    spec = ctx.spec.analyses.probing
    seed = ctx.spec.statistics.seed
    annotations = probe_annotations(ctx, stimuli)
    if spec.n_folds > stimuli.n_stimuli:
        raise AnalysisError(f"analyses.probing.n_folds ({spec.n_folds}) exceeds the number of stimuli "
                            f"({stimuli.n_stimuli})")
    labels = [m.output_label for m in ctx.spec.models]
    paths = []
    for model, model_layers in layers.items():
        key = content_key("layer_probes", ctx.feature_keys[model], model_layers,
                          probing_stage_ingredients(ctx, stimuli))
        path = ctx.layout.model_probing(model)
        paths.append(path)
        if not ctx.options.force and path.is_file() and \
                drv.read_json_object(drv.sidecar_path(path)).get("ContentKey") == key:
            continue
        features = read_checked_features(ctx, model, model_layers).layers
        entropy = stream_seed_entropy(seed, "", PROBING_SEED_STREAM, labels.index(model))
        rng = np.random.default_rng(entropy)
        rows = []
        for layer in model_layers:
            for name, annotation in annotations.items():
                result = _probe(features[layer], annotation, None, spec, seed, rng, None,
                                ctx.resources.memory_bytes, f"{model} {layer} -> {name}")
                rows.append({"layer": layer, **_probe_row(result, name, annotation, "stratified_kfold",
                                                          len(result.alphas), int(features[layer].shape[1]),
                                                          spec.permutations)})
        drv.write_tsv(path, pd.DataFrame(rows, columns=list(LAYER_PROBE_COLUMNS)), column_sidecar(
            LAYER_PROBE_COLUMNS, Description=DESCRIPTION.format(what="each layer's activations (stimuli x units)"),
            ModelLabel=model, Alphas=spec.alphas, InnerFolds=spec.inner_folds, Standardize=spec.standardize,
            Permutations=spec.permutations, Seed=seed, SeedSequenceEntropy=entropy, ContentKey=key))
        logger.info("%s: probes of %d layer(s) for %s written", model, len(model_layers), ", ".join(annotations))
    return paths


def write_roi_probes(ctx: Context, subject: str, stimuli: StimulusSet, patterns: SubjectPatterns,
                     masks: dict[str, np.ndarray], small_rois: dict[str, int] | None = None) -> Path:
    """Stage ``probing``: probes of every ROI's run-mean patterns (ROIs skipped for too few
    voxels get n/a rows); returns the table's path."""
    spec = ctx.spec.analyses.probing
    seed = ctx.spec.statistics.seed
    annotations = probe_annotations(ctx, stimuli)
    scheme, run_folds, groups = stimulus_folds(spec, "analyses.probing", patterns.run_betas, seed)
    folds = run_folds if scheme == "leave_one_run_out" else None  # None: stratified by each annotation
    scheme = scheme if folds is not None else "stratified_kfold"
    entropy = stream_seed_entropy(seed, subject, PROBING_SEED_STREAM, 0)
    rng = np.random.default_rng(entropy)
    rows = []
    for roi, values in roi_patterns(patterns, masks).items():
        finite = np.isfinite(values).all(axis=0)
        for name, annotation in annotations.items():
            result = _probe(values[:, finite], annotation, folds, spec, seed, rng, groups, ctx.resources.memory_bytes,
                            f"sub-{subject} ROI {roi} -> {name}")
            rows.append({"subject": subject, "roi": roi, **_probe_row(result, name, annotation, scheme,
                                                                      len(result.alphas), int(finite.sum()),
                                                                      spec.permutations)})
    for roi, n_voxels in (small_rois or {}).items():
        for name, annotation in annotations.items():
            rows.append({"subject": subject, "roi": roi, "annotation": name, "kind": annotation.kind,
                         "score": np.nan, "chance": 1.0 / annotation.n_classes if annotation.n_classes else 0.0,
                         "p_permutation": np.nan, "accuracy": np.nan, "r2": np.nan,
                         "n_classes": annotation.n_classes if annotation.n_classes else np.nan,
                         "n_stimuli": int((~annotation.missing).sum()), "n_permutations": spec.permutations,
                         "cv": scheme, "n_folds": len(folds) if folds is not None else spec.n_folds,
                         "n_predictors": n_voxels})
    path = ctx.layout.probing_table(subject)
    drv.write_tsv(path, pd.DataFrame(rows, columns=list(ROI_PROBE_COLUMNS)), column_sidecar(
        ROI_PROBE_COLUMNS, Description=DESCRIPTION.format(what="each ROI's run-mean response patterns (stimuli x "
                                                               "voxels)"),
        Alphas=spec.alphas, InnerFolds=spec.inner_folds, Standardize=spec.standardize,
        Permutations=spec.permutations, Seed=seed, SeedSequenceEntropy=entropy))
    return path
