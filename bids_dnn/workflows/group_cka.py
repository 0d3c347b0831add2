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
from bids_dnn.errors import AnalysisError, InputMissingError
from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.tables import (BEST_LAYER_COLUMN, GROUP_DECISION_COLUMNS, GROUP_TEST_COLUMNS,
                                      SUBJECT_COLUMN, add_group_decisions, column_sidecar)
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
    tables = []
    for subject in subjects:
        path = ctx.layout.cka_table(subject, model)
        if not path.is_file():
            raise InputMissingError(f"CKA table missing: {path}", "rerun the participant level")
        tables.append(drv.read_tsv(path))
    return pd.concat(tables, ignore_index=True)


def cka_rois_of_every_subject(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ROIs that every subject has (an ROI skipped somewhere for too few usable
    voxels, n/a CKA, is left out of the group statistics with one warning)."""
    skipped = table.loc[table["cka"].isna(), ["roi", "subject"]].drop_duplicates()
    if skipped.empty:
        return table
    for roi, rows in skipped.groupby("roi", sort=False):
        logger.warning("ROI %s left out of the group CKA statistics: no CKA value in %s", roi,
                       ", ".join(f"sub-{s}" for s in rows["subject"]))
    kept = table.loc[~table["roi"].isin(skipped["roi"])]
    if kept.empty:
        raise AnalysisError("no ROI has a CKA value in every participant", "lower rois.min_voxels or check the ROIs")
    return kept


def summarise_cka(ctx: Context, table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Group summary of one model's CKA table (rows: ROI x layer, in the table's order).

    Parameters
    ----------
    table : pandas.DataFrame
        Columns of :data:`bids_dnn.workflows.participant_cka.CKA_COLUMNS`, every ROI in every subject.
    rng : numpy.random.Generator
        Draws the participant-bootstrap resamples.
    """
    from bids_dnn.stats.bootstrap import bootstrap_subjects
    from bids_dnn.stats.group_tests import GROUP_TESTS, one_sample_tests

    stats_spec = ctx.spec.statistics
    rows = []
    scores_by_roi: dict[str, np.ndarray] = {}
    for roi, roi_table in table.groupby("roi", sort=False):
        layers = list(dict.fromkeys(roi_table["layer"]))
        wide = roi_table.pivot(index="subject", columns="layer", values="cka")
        values = wide.loc[list(dict.fromkeys(roi_table["subject"])), layers].to_numpy(dtype=np.float64)
        tests = one_sample_tests(values, alternative=stats_spec.alternative)
        if stats_spec.bootstrap and values.shape[0] >= 2:
            low, high, _ = bootstrap_subjects(values, stats_spec.bootstrap, rng, ci=stats_spec.ci)
        else:
            low = high = np.full(values.shape[1], np.nan)
        scores_by_roi[roi] = values
        for j, layer in enumerate(layers):
            rows.append({"roi": roi, "model": roi_table["model"].iloc[0], "layer": layer,
                         "kernel": roi_table["kernel"].iloc[0], "estimator": roi_table["estimator"].iloc[0],
                         "n_subjects": int(tests["n"][j]), "mean": tests["mean"][j], "sem": tests["sem"][j],
                         "t": tests["t"][j], "p_ttest": tests["p_t"][j], "wilcoxon_w": tests["wilcoxon_w"][j],
                         "p_wilcoxon": tests["p_wilcoxon"][j], "ci_low": low[j], "ci_high": high[j],
                         "p_group": tests[GROUP_TESTS[stats_spec.group_test].p_value][j]})
    summary = pd.DataFrame(rows)
    add_group_decisions(summary, scores_by_roi, stats_spec.correction, stats_spec.alpha)
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
