"""Decoding and identification at the group level (``analyses.decoding``): every participant's
ROI x layer table in one table per model, and its summary across participants: the pairwise
identification accuracy tested against its chance level 0.5, with the statistics of the RSA
summary (:func:`bids_dnn.workflows.group_scores.summarise_scores`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bids_dnn.console import logger
from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.group_scores import collect_subject_tables, rois_of_every_subject, summarise_scores
from bids_dnn.workflows.participant_decoding import DECODING_COLUMNS, DECODING_SEED_STREAM
from bids_dnn.workflows.tables import (BEST_LAYER_COLUMN, GROUP_DECISION_COLUMNS, GROUP_TEST_COLUMNS,
                                      SUBJECT_COLUMN, column_sidecar)

__all__ = ["DECODING_SUMMARY_COLUMNS", "summarise_decoding", "group_decoding"]

DECODING_SUMMARY_COLUMNS = {
    "roi": "Region of interest.", "model": "Model label.", "layer": "Layer name.",
    "n_subjects": "Subjects with a value.",
    "mean": "Mean pairwise identification accuracy across subjects.",
    "chance": "Chance level of the pairwise identification accuracy (0.5); the tests are of mean - chance.",
    **{name: text.replace("against 0", "of accuracy - chance against 0") for name, text in GROUP_TEST_COLUMNS.items()},
    "ci_low": "Lower participant-bootstrap percentile CI bound of the mean.",
    "ci_high": "Upper participant-bootstrap percentile CI bound of the mean.",
    **GROUP_DECISION_COLUMNS, **BEST_LAYER_COLUMN,
    "mean_top1_accuracy": "Mean top-1 identification accuracy across subjects (chance: chance_top1 of the subject tables, 1 / stimuli per test fold).",
    "mean_unit_r": "Mean across subjects of the mean held-out r of the layer's decoded units.",
}


def summarise_decoding(ctx: Context, table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Group summary of one model's decoding table (rows: ROI x layer, in the table's order)."""
    summary = summarise_scores(table, rows=("roi", "layer"), score="pairwise_accuracy",
                               statistics=ctx.spec.statistics, rng=rng, chance="chance_pairwise", carry=("model",))
    means = table.groupby(["roi", "layer"], sort=False)[["top1_accuracy", "mean_unit_r"]].mean()
    keys = list(zip(summary["roi"], summary["layer"]))
    summary["mean_top1_accuracy"] = means.loc[keys, "top1_accuracy"].to_numpy()
    summary["mean_unit_r"] = means.loc[keys, "mean_unit_r"].to_numpy()
    return summary[list(DECODING_SUMMARY_COLUMNS)]


def group_decoding(ctx: Context, subjects: list[str]) -> list[Path]:
    """The group decoding tables of every model (all participants, summary); returns the paths written."""
    stats_spec = ctx.spec.statistics
    rng = np.random.default_rng(np.random.SeedSequence([stats_spec.seed, DECODING_SEED_STREAM]))
    written: list[Path] = []
    for model_spec in ctx.spec.models:
        model = model_spec.output_label
        full_table = collect_subject_tables(subjects, lambda subject: ctx.layout.decoding_table(subject, model))
        summary = summarise_decoding(ctx, rois_of_every_subject(full_table, "pairwise_accuracy", "decoding"), rng)
        common = {"Subjects": subjects, "Seed": stats_spec.seed, "Alternative": stats_spec.alternative,
                  "GroupTest": stats_spec.group_test, "Correction": stats_spec.correction, "Alpha": stats_spec.alpha,
                  "BootstrapResamples": stats_spec.bootstrap, "CI": stats_spec.ci}
        paths = [ctx.layout.group_table(model, suffix="decoding"),
                 ctx.layout.group_table(model, "summary", suffix="decoding")]
        drv.write_tsv(paths[0], full_table, column_sidecar({**DECODING_COLUMNS, **SUBJECT_COLUMN},
                                                           Description="Decoding and identification of all subjects.",
                                                           **common))
        drv.write_tsv(paths[1], summary, column_sidecar(DECODING_SUMMARY_COLUMNS, Description=(
            "Pairwise identification accuracy across subjects, tested against chance (0.5)."), **common))
        written += paths
        for roi, roi_summary in summary.groupby("roi", sort=False):
            best = roi_summary.loc[roi_summary["best_layer_cv"], "layer"]
            logger.info("%s / %s (identification): best layer %s; layers above chance: %d of %d", model, roi,
                        best.iloc[0] if len(best) else "none", int(roi_summary["significant"].sum()),
                        len(roi_summary))
    return written
