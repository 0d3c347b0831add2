"""Naturalistic designs at the group level: every participant's ROI x layer time-series encoding
table in one table per model, its summary across participants (mean held-out r tested against 0
with the statistics of the RSA summary, each ROI's best layer), and the group maps of r
(:func:`bids_dnn.workflows.group_maps.run_group_maps`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.group_scores import collect_subject_tables, rois_of_every_subject, summarise_scores
from bids_dnn.workflows.naturalistic import NATURALISTIC_COLUMNS
from bids_dnn.workflows.tables import (BEST_LAYER_COLUMN, GROUP_DECISION_COLUMNS, GROUP_TEST_COLUMNS,
                                      SUBJECT_COLUMN, column_sidecar)

__all__ = ["NATURALISTIC_SUMMARY_COLUMNS", "NATURALISTIC_SEED_STREAM", "group_naturalistic"]

#: the SeedSequence word of the group bootstrap of the naturalistic summary
NATURALISTIC_SEED_STREAM = 0x7E5

NATURALISTIC_SUMMARY_COLUMNS = {
    "roi": "Region of interest.", "model": "Model label.", "layer": "Layer (feature space).",
    "n_subjects": "Subjects with a value.", "mean": "Mean across subjects of the ROI's mean held-out r.",
    "chance": "0: the tests are of mean r against 0.", **GROUP_TEST_COLUMNS,
    "ci_low": "Lower participant-bootstrap percentile CI bound of the mean.",
    "ci_high": "Upper participant-bootstrap percentile CI bound of the mean.",
    **GROUP_DECISION_COLUMNS, **BEST_LAYER_COLUMN,
}


def group_naturalistic(ctx: Context, subjects: list[str]) -> list[Path]:
    """Group tables of every model and the group maps; returns the paths written."""
    from bids_dnn.workflows.group_maps import run_group_maps

    stats_spec = ctx.spec.statistics
    rng = np.random.default_rng(np.random.SeedSequence([stats_spec.seed, NATURALISTIC_SEED_STREAM]))
    written: list[Path] = []
    common = {"Subjects": subjects, "Seed": stats_spec.seed, "Alternative": stats_spec.alternative,
              "GroupTest": stats_spec.group_test, "Correction": stats_spec.correction, "Alpha": stats_spec.alpha,
              "BootstrapResamples": stats_spec.bootstrap, "CI": stats_spec.ci}
    for model_spec in ctx.spec.models:
        model = model_spec.output_label
        table = collect_subject_tables(subjects, lambda subject: ctx.layout.naturalistic_table(subject, model))
        paths = [ctx.layout.group_table(model, suffix="naturalistic"),
                 ctx.layout.group_table(model, "summary", suffix="naturalistic")]
        drv.write_tsv(paths[0], table, column_sidecar({**NATURALISTIC_COLUMNS, **SUBJECT_COLUMN},
                                                      Description="Time-series encoding of all subjects.", **common))
        if not table.empty:
            summary = summarise_scores(rois_of_every_subject(table, "mean_r", "time-series encoding"),
                                       rows=("roi", "layer"), score="mean_r", statistics=stats_spec, rng=rng,
                                       carry=("model",))[list(NATURALISTIC_SUMMARY_COLUMNS)]
            drv.write_tsv(paths[1], summary, column_sidecar(NATURALISTIC_SUMMARY_COLUMNS, Description=(
                "Held-out r of the BOLD time series per ROI and layer across subjects."), **common))
            written += paths
        else:
            written.append(paths[0])
    return written + run_group_maps(ctx, subjects)
