"""Probing at the group level (``analyses.probing.rois``): every participant's ROI x annotation
probes in one table, and their summary across participants: each probe's score tested against
its chance level (1/k or 0), corrected across ROI x annotation. The layers' probes are one
table per model already (model folders): the summary copies them next to the ROIs' so that
layers and regions are read on one scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_dnn.console import logger
from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.group_scores import collect_subject_tables, rois_of_every_subject, summarise_scores
from bids_dnn.workflows.probing import PROBING_SEED_STREAM, ROI_PROBE_COLUMNS
from bids_dnn.workflows.tables import GROUP_DECISION_COLUMNS, GROUP_TEST_COLUMNS, SUBJECT_COLUMN, column_sidecar

__all__ = ["PROBING_SUMMARY_COLUMNS", "group_probing"]

PROBING_SUMMARY_COLUMNS = {
    "roi": "Region of interest.", "annotation": "Stimulus annotation probed.",
    "kind": "categorical (balanced accuracy) or continuous (held-out r).",
    "n_subjects": "Subjects with a value.", "mean": "Mean probe score across subjects.",
    "chance": "Chance level of the score (1 / n_classes, or 0); the tests are of mean - chance.",
    **{name: text.replace("against 0", "of score - chance against 0") for name, text in GROUP_TEST_COLUMNS.items()},
    "ci_low": "Lower participant-bootstrap percentile CI bound of the mean.",
    "ci_high": "Upper participant-bootstrap percentile CI bound of the mean.",
    **{name: text.replace("ROI x layer of this model", "ROI x annotation") for name, text in
       GROUP_DECISION_COLUMNS.items()},
}


def group_probing(ctx: Context, subjects: list[str]) -> list[Path]:
    """The group probing tables (all participants, summary); returns the paths written."""
    stats_spec = ctx.spec.statistics
    rng = np.random.default_rng(np.random.SeedSequence([stats_spec.seed, PROBING_SEED_STREAM]))
    full_table = collect_subject_tables(subjects, ctx.layout.probing_table)
    summary = summarise_scores(rois_of_every_subject(full_table, "score", "probing"), rows=("roi", "annotation"),
                               score="score", statistics=stats_spec, rng=rng, chance="chance", carry=("kind",),
                               best_layer=False)[list(PROBING_SUMMARY_COLUMNS)]
    common = {"Subjects": subjects, "Seed": stats_spec.seed, "Alternative": stats_spec.alternative,
              "GroupTest": stats_spec.group_test, "Correction": stats_spec.correction, "Alpha": stats_spec.alpha,
              "BootstrapResamples": stats_spec.bootstrap, "CI": stats_spec.ci,
              "LayerProbes": [str(ctx.layout.model_probing(m.output_label).relative_to(ctx.layout.root))
                              for m in ctx.spec.models] if ctx.spec.analyses.probing.layers else []}
    paths = [ctx.layout.group_roi_table(None, suffix="probing"), ctx.layout.group_roi_table("summary", suffix="probing")]
    drv.write_tsv(paths[0], full_table, column_sidecar({**ROI_PROBE_COLUMNS, **SUBJECT_COLUMN},
                                                       Description="ROI probes of all subjects.", **common))
    drv.write_tsv(paths[1], summary, column_sidecar(PROBING_SUMMARY_COLUMNS, Description=(
        "ROI probes across subjects, tested against chance."), **common))
    for _, row in summary.iterrows():
        logger.info("probe %s / %s: mean %.3f (chance %.3f)%s", row["roi"], row["annotation"], row["mean"],
                    row["chance"], ", significant" if row["significant"] else "")
    return paths
