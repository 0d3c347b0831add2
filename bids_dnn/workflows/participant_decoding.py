"""Decoding and identification at the participant level (``analyses.decoding``): stage
``decoding:<model>``.

For every ROI and every layer of a model: cross-validated ridge from the ROI's run-mean response
patterns (stimuli x voxels) to the layer's activations (stimuli x units), the held-out r of
each unit, and identification of each held-out stimulus among the stimuli of its own test fold
(those its decoder never saw) from its decoded feature vector (:mod:`bids_dnn.decoding`).
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
from bids_dnn.workflows.cv import stimulus_folds
from bids_dnn.workflows.model_features import read_checked_features
from bids_dnn.workflows.subject_patterns import SubjectPatterns, roi_patterns
from bids_dnn.workflows.tables import column_sidecar

__all__ = ["DECODING_COLUMNS", "DECODING_SEED_STREAM", "IDENTIFICATION_SCHEME", "decoding_tables", "write_decoding_tables"]

DECODING_COLUMNS = {
    "subject": "Participant label.",
    "roi": "Region of interest.",
    "model": "Model label.",
    "layer": "Layer (node) name as in the model.",
    "pairwise_accuracy": "Pairwise identification accuracy (Horikawa & Kamitani 2017): for each held-out stimulus, "
                         "the fraction of the other stimuli of its test fold (none of which its decoder saw) whose "
                         "actual features correlate less with its decoded features than its own (ties count half), "
                         "averaged over stimuli; chance 0.5. A stimulus alone in its fold has none.",
    "top1_accuracy": "Top-1 identification accuracy (Kay et al. 2008): the fraction of held-out stimuli whose own "
                     "features correlate best with their decoded features among the stimuli of their test fold; "
                     "chance in chance_top1.",
    "p_pairwise": "One-sided permutation p-value of pairwise_accuracy: each test fold's candidate labels are "
                  "permuted ((1 + #(null >= observed)) / (1 + n) per fold) and the folds' p-values are merged as "
                  "min(1, 2 x mean), valid whatever the dependence between folds (Vovk & Wang 2020; conservative); "
                  "n/a without permutations. The group test of the accuracies is the more powerful test.",
    "p_top1": "The same for top1_accuracy.",
    "chance_pairwise": "Chance level of pairwise_accuracy.",
    "chance_top1": "Chance level of top1_accuracy: the mean over held-out stimuli of 1 / (stimuli in the fold).",
    "mean_unit_r": "Mean over the layer's units of the held-out Pearson r between decoded and actual activation "
                   "(within test folds, averaged over folds); constant units left out.",
    "median_unit_r": "Median of the same.",
    "n_units_decoded": "Units with a defined r (not constant).",
    "n_permutations": "Stimulus-label permutations of each fold's identification.",
    "cv": "Outer cross-validation over stimuli (leave_one_run_out or kfold).",
    "n_folds": "Outer folds.",
    "n_voxels": "Voxels in the ROI (the decoder's predictors).",
    "n_units": "Units of the layer (the decoder's targets).",
    "n_stimuli": "Stimuli (each one a candidate in its test fold).",
}

#: the SeedSequence word that separates the decoding generators from the other random steps
DECODING_SEED_STREAM = 0xDEC

#: how held-out stimuli are identified (in the stage key: tables of an older scheme are recomputed)
IDENTIFICATION_SCHEME = "within test folds; folds' permutation p merged as 2 x mean"


def fold_chance_top1(folds: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Chance of top-1 identification among each fold's stimuli: the mean over the stimuli of
    folds with >= 2 stimuli of 1 / (stimuli in the fold); NaN when no fold has 2."""
    sizes = [len(test) for _, test in folds if len(test) >= 2]
    return float(len(sizes) / sum(sizes)) if sizes else float("nan")


DESCRIPTION = ("Decoding of every layer's activations from every ROI's run-mean response patterns (cross-validated "
               "ridge, per-unit penalty by inner cross-validation; a stimulus is never in the training and test "
               "fold) and identification of each held-out stimulus among the stimuli of its test fold (which its "
               "decoder never saw) from the decoded features (Pearson correlation after subtracting each unit's mean "
               "over the tested stimuli). The permutation null relabels each fold's candidates and keeps the decoders "
               "fixed; the folds' p-values are merged as min(1, 2 x mean).")


def decoding_tables(ctx: Context, subject: str, stimuli: StimulusSet, patterns: SubjectPatterns,
                    masks: dict[str, np.ndarray], models: dict[str, list[str]],
                    small_rois: dict[str, int] | None = None) -> dict[str, pd.DataFrame]:
    """ROI x layer decoding and identification, one table per model.

    Parameters
    ----------
    models : dict of str to list of str
        Model label -> its layers, for the models to compute.
    small_rois : dict of str to int, optional
        ROIs skipped for too few voxels (roi -> usable voxels): n/a rows.
    """
    from bids_dnn.decoding import decode_features
    from bids_dnn.encoding import himalaya_backend_for_device

    spec = ctx.spec.analyses.decoding
    seed = ctx.spec.statistics.seed
    scheme, folds, _groups = stimulus_folds(spec, "analyses.decoding", patterns.run_betas, seed)
    sizes = [len(test) for _, test in folds]
    if min(sizes) < 3:
        logger.warning("sub-%s: decoding: a held-out stimulus is identified among its own test fold's stimuli, and "
                       "%d of %d folds hold fewer than 3 (%s); accuracies from so few candidates are coarse: fewer "
                       "folds (analyses.decoding.n_folds, cv: kfold) give more", subject,
                       sum(size < 3 for size in sizes), len(sizes), ", ".join(map(str, sizes)))
    rois = roi_patterns(patterns, masks)
    labels = [m.output_label for m in ctx.spec.models]
    backend = himalaya_backend_for_device(ctx.options.device)
    tables = {}
    for model, layers in models.items():
        features = read_checked_features(ctx, model, layers).layers
        rng = np.random.default_rng(stream_seed_entropy(seed, subject, DECODING_SEED_STREAM, labels.index(model)))
        rows: list[dict[str, Any]] = []
        for roi, roi_values in rois.items():
            finite = np.isfinite(roi_values).all(axis=0)
            for layer in layers:
                try:
                    result = decode_features(roi_values[:, finite], features[layer], folds, spec.alphas,
                                             inner_folds=spec.inner_folds, standardize=spec.standardize, seed=seed,
                                             n_permutations=spec.permutations, rng=rng, backend=backend,
                                             memory_budget_bytes=ctx.resources.memory_bytes)
                except ValueError as exc:
                    raise AnalysisError(f"sub-{subject}: decoding {model} {layer} from ROI {roi} failed: {exc}",
                                        "check the ROI's patterns and the stimuli") from None
                rows.append({"subject": subject, "roi": roi, "model": model, "layer": layer,
                             "pairwise_accuracy": result.pairwise_accuracy, "top1_accuracy": result.top1_accuracy,
                             "p_pairwise": result.p_pairwise, "p_top1": result.p_top1,
                             "chance_pairwise": result.identification.chance_pairwise,
                             "chance_top1": result.identification.chance_top1,
                             "mean_unit_r": result.mean_r, "median_unit_r": result.median_r,
                             "n_units_decoded": result.n_units_valid, "n_permutations": spec.permutations,
                             "cv": scheme, "n_folds": len(folds), "n_voxels": int(finite.sum()),
                             "n_units": int(features[layer].shape[1]), "n_stimuli": stimuli.n_stimuli})
        for roi, n_voxels in (small_rois or {}).items():
            rows += [{"subject": subject, "roi": roi, "model": model, "layer": layer,
                      **{c: np.nan for c in ("pairwise_accuracy", "top1_accuracy", "p_pairwise", "p_top1",
                                             "mean_unit_r", "median_unit_r")},
                      "chance_pairwise": 0.5, "chance_top1": fold_chance_top1(folds), "n_units_decoded": 0,
                      "n_permutations": spec.permutations, "cv": scheme, "n_folds": len(folds),
                      "n_voxels": n_voxels, "n_units": int(features[layer].shape[1]),
                      "n_stimuli": stimuli.n_stimuli} for layer in layers]
        tables[model] = pd.DataFrame(rows, columns=list(DECODING_COLUMNS))
    return tables


def write_decoding_tables(ctx: Context, subject: str, stimuli: StimulusSet, patterns: SubjectPatterns,
                          masks: dict[str, np.ndarray], models: dict[str, list[str]],
                          small_rois: dict[str, int] | None = None) -> dict[str, Path]:
    """Stage ``decoding:<model>``: write each model's table and its data dictionary; model -> path."""
    spec = ctx.spec.analyses.decoding
    seed = ctx.spec.statistics.seed
    labels = [m.output_label for m in ctx.spec.models]
    paths = {}
    for model, table in decoding_tables(ctx, subject, stimuli, patterns, masks, models, small_rois).items():
        path = ctx.layout.decoding_table(subject, model)
        drv.write_tsv(path, table, column_sidecar(
            DECODING_COLUMNS, Description=DESCRIPTION, Alphas=spec.alphas, InnerFolds=spec.inner_folds,
            Standardize=spec.standardize, Permutations=spec.permutations, Seed=seed,
            SeedSequenceEntropy=stream_seed_entropy(seed, subject, DECODING_SEED_STREAM, labels.index(model))))
        paths[model] = path
    return paths
