"""CKA at the group level (``analyses.cka``): every participant's ROI x layer CKA in one table per
model, and its summary across participants with the statistics of the RSA summary.

Per ROI x layer: mean, SEM, one-sample t-test and Wilcoxon signed-rank test against 0
(``statistics.alternative``), participant-bootstrap percentile interval of the mean, the chosen
group test's p adjusted across ROI x layer of the model (FDR and Bonferroni), significance at
``statistics.alpha`` after ``statistics.correction``, and the ROI's best layer (leave-one-
participant-out choice among the significant layers, as for RSA). A test against 0 is
meaningful for the unbiased estimator; the plain one is biased upwards (the sidecar says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bids_dnn.console import logger
from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.group_scores import collect_subject_tables, rois_of_every_subject, summarise_scores
from bids_dnn.workflows.tables import (BEST_LAYER_COLUMN, GROUP_DECISION_COLUMNS, GROUP_TEST_COLUMNS,
                                      SUBJECT_COLUMN, column_sidecar)
from bids_dnn.workflows.participant_cka import CKA_COLUMNS, CKA_SEED_STREAM

__all__ = ["CKA_SUMMARY_COLUMNS", "collect_cka", "cka_rois_of_every_subject", "summarise_cka", "group_cka"]

CKA_SUMMARY_COLUMNS = {
    "roi": "Region of interest.", "model": "Model label.", "layer": "Layer name.",
    "kernel": "Kernel of the Gram matrices.", "estimator": "HSIC estimator (unbiased or plain).",
    "n_subjects": "Subjects with a CKA value.", "mean": "Mean CKA across subjects.", **GROUP_TEST_COLUMNS,
    "ci_low": "Lower participant-bootstrap percentile CI bound of the mean.",
    "ci_high": "Upper participant-bootstrap percentile CI bound of the mean.",
    **GROUP_DECISION_COLUMNS, **BEST_LAYER_COLUMN,
}


def collect_cka(ctx: Context, subjects: list[str], model: str) -> pd.DataFrame:
    """Every participant's CKA table of ``model``, stacked in ``subjects`` order."""
    return collect_subject_tables(subjects, lambda subject: ctx.layout.cka_table(subject, model))


def cka_rois_of_every_subject(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ROIs that every subject has (an ROI skipped somewhere for too few usable
    voxels, n/a CKA, is left out of the group statistics with one warning)."""
    return rois_of_every_subject(table, "cka", "CKA")


def summarise_cka(ctx: Context, table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Group summary of one model's CKA table (rows: ROI x layer, in the table's order).

    Parameters
    ----------
    table : pandas.DataFrame
        Columns of :data:`bids_dnn.workflows.participant_cka.CKA_COLUMNS`, every ROI in every subject.
    rng : numpy.random.Generator
        Draws the participant-bootstrap resamples.
    """
    summary = summarise_scores(table, rows=("roi", "layer"), score="cka", statistics=ctx.spec.statistics, rng=rng,
                               carry=("model", "kernel", "estimator"))
    return summary[list(CKA_SUMMARY_COLUMNS)]


def group_cka(ctx: Context, subjects: list[str]) -> list[Path]:
    """The group CKA tables of every model (all participants, summary); returns the paths written."""
    stats_spec = ctx.spec.statistics
    spec = ctx.spec.analyses.cka
    rng = np.random.default_rng(np.random.SeedSequence([stats_spec.seed, CKA_SEED_STREAM]))
    written: list[Path] = []
    for model_spec in ctx.spec.models:
        model = model_spec.output_label
        full_table = collect_cka(ctx, subjects, model)
        summary = summarise_cka(ctx, cka_rois_of_every_subject(full_table), rng)
        common = {"Subjects": subjects, "Seed": stats_spec.seed, "Alternative": stats_spec.alternative,
                  "GroupTest": stats_spec.group_test, "Correction": stats_spec.correction, "Alpha": stats_spec.alpha,
                  "BootstrapResamples": stats_spec.bootstrap, "CI": stats_spec.ci, "Kernel": spec.kernel,
                  "Estimator": spec.estimator, "Sigma": spec.sigma if spec.kernel == "rbf" else None}
        if spec.estimator == "plain":
            common["Note"] = ("The plain HSIC estimator is biased upwards (CKA > 0 for unrelated patterns with few "
                              "stimuli and many features): tests against 0 are not meaningful; compare layers or use "
                              "analyses.cka.estimator: unbiased.")
        paths = [ctx.layout.group_table(model, suffix="cka"), ctx.layout.group_table(model, "summary", suffix="cka")]
        drv.write_tsv(paths[0], full_table, column_sidecar({**CKA_COLUMNS, **SUBJECT_COLUMN},
                                                           Description="CKA of all subjects.", **common))
        drv.write_tsv(paths[1], summary, column_sidecar(CKA_SUMMARY_COLUMNS, Description="CKA across subjects.",
                                                        **common))
        written += paths
        for roi, roi_summary in summary.groupby("roi", sort=False):
            best = roi_summary.loc[roi_summary["best_layer_cv"], "layer"]
            logger.info("%s / %s (CKA): best layer %s; significant layers: %d of %d", model, roi,
                        best.iloc[0] if len(best) else "none", int(roi_summary["significant"].sum()),
                        len(roi_summary))
    return written
