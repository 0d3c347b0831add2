"""Files the participant level writes and the group level reads: RDM tables and the RSA table's columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv

__all__ = ["RSA_COLUMNS", "read_relmat", "write_relmat"]


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


def write_relmat(path: Path, square: np.ndarray, stim_ids: list[str], sidecar: dict[str, Any]) -> None:
    """A square RDM as TSV (header = stimulus ids, same row order) + JSON sidecar."""
    table = pd.DataFrame(square, columns=stim_ids)
    drv.write_tsv(path, table, {**sidecar, "StimulusIds": list(stim_ids),
                                "Description": "Representational dissimilarity matrix; rows and columns "
                                               "follow the column header (the task's stimuli.tsv order)."})


def read_relmat(path: Path) -> tuple[np.ndarray, list[str]]:
    """A square RDM written by :func:`write_relmat`: ``(n_stimuli, n_stimuli)`` values and the stimulus ids."""
    table = drv.read_tsv(path)
    return table.to_numpy(dtype=np.float64), list(table.columns)

#: the subject column of the group tables
SUBJECT_COLUMN = {"subject": "Participant label without the 'sub-' prefix; text (01 keeps its leading zero)."}


def column_sidecar(descriptions: dict[str, str], **extra: object) -> dict[str, object]:
    """A TSV sidecar: ``{column: {"Description": text}}`` for every column, plus ``extra`` fields."""
    return {**{name: {"Description": text} for name, text in descriptions.items()}, **extra}


#: a one-sample group test of per-subject scores (the columns after ``mean`` in the group summaries)
GROUP_TEST_COLUMNS = {
    "sem": "Standard error of the mean.",
    "t": "One-sample t statistic against 0.",
    "p_ttest": "p-value of the t-test (alternative in the JSON).",
    "wilcoxon_w": "Wilcoxon signed-rank statistic.",
    "p_wilcoxon": "p-value of the Wilcoxon test.",
}

#: the chosen group test and its corrections across ROI x layer of one model
GROUP_DECISION_COLUMNS = {
    "p_group": "p-value of the chosen group test (statistics.group_test).",
    "p_fdr": "Benjamini-Hochberg adjusted p_group across ROI x layer of this model.",
    "p_bonferroni": "Bonferroni adjusted p_group across ROI x layer of this model.",
    "significant": "p after the chosen correction below statistics.alpha.",
}

#: the ROI's best layer (:func:`bids_dnn.rsa.inference.best_significant_layer`)
BEST_LAYER_COLUMN = {
    "best_layer_cv": "True for the ROI's best layer: the layer chosen most often by leave-one-subject-out "
                     "selection among the layers significant after correction; False for every layer of an ROI "
                     "without a significant layer.",
}


def add_group_decisions(summary: pd.DataFrame, scores_by_roi: dict[str, np.ndarray], correction: str,
                        alpha: float) -> None:
    """Add the :data:`GROUP_DECISION_COLUMNS` (after ``p_group``) and :data:`BEST_LAYER_COLUMN` to a summary.

    Parameters
    ----------
    summary : pandas.DataFrame
        One row per ROI x layer of one model, with ``roi`` and ``p_group``; changed in place.
    scores_by_roi : dict of str to numpy.ndarray, each (n_subjects, n_layers)
        The per-subject scores of each ROI, columns in the summary's layer order for that ROI.
    correction : {"fdr_bh", "bonferroni", "none"}
        Which p-value decides ``significant`` (``statistics.correction``).
    alpha : float
        Significance level.
    """
    from bids_dnn.rsa.inference import best_significant_layer
    from bids_dnn.stats.correction import bonferroni, fdr_bh

    summary["p_fdr"] = fdr_bh(summary["p_group"].to_numpy())
    summary["p_bonferroni"] = bonferroni(summary["p_group"].to_numpy())
    corrected = {"fdr_bh": "p_fdr", "bonferroni": "p_bonferroni", "none": "p_group"}[correction]
    summary["significant"] = summary[corrected] < alpha
    summary["best_layer_cv"] = False
    for roi, values in scores_by_roi.items():
        rows_roi = np.flatnonzero((summary["roi"] == roi).to_numpy())
        best = best_significant_layer(values, summary["significant"].to_numpy()[rows_roi])
        if best is not None:
            summary.loc[summary.index[rows_roi[best]], "best_layer_cv"] = True
