"""What drives a region at the group level (``analyses.drivers``): every participant's ranking
in one table, and per ROI and stimulus the mean across participants of the z-scored measured and
predicted responses (z-scored over the stimuli within each participant, so that participants
with larger responses do not dominate), ranked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.drivers import DRIVERS_COLUMNS, drivers_model
from bids_dnn.workflows.group_scores import collect_subject_tables
from bids_dnn.workflows.tables import SUBJECT_COLUMN, column_sidecar

__all__ = ["DRIVERS_SUMMARY_COLUMNS", "summarise_drivers", "group_drivers"]

DRIVERS_SUMMARY_COLUMNS = {
    "roi": "Region of interest.", "stim_id": "Stimulus.",
    "n_subjects": "Subjects with a value.",
    "mean_z_measured": "Mean across subjects of the ROI's measured response, z-scored over the stimuli within each "
                       "subject.",
    "mean_z_predicted": "The same for the held-out predicted response.",
    "rank_measured": "Rank of mean_z_measured among the stimuli (1: strongest).",
    "rank_predicted": "Rank of mean_z_predicted (1: strongest).",
    "layers": "The layers chosen for the ROI across subjects, with their counts.",
}


def _zscore(values: pd.Series) -> pd.Series:
    sd = values.std(ddof=0)
    return (values - values.mean()) / sd if sd > 0 else values * np.nan


def summarise_drivers(table: pd.DataFrame) -> pd.DataFrame:
    """Per ROI and stimulus: mean z-scored measured and predicted responses across subjects, ranked."""
    from scipy.stats import rankdata

    table = table.copy()
    for column in ("measured", "predicted"):
        table[f"z_{column}"] = table.groupby(["subject", "roi"], sort=False)[column].transform(_zscore)
    rows = []
    for roi, roi_table in table.groupby("roi", sort=False):
        chosen = roi_table.drop_duplicates("subject")["layer"].value_counts()
        layers = ", ".join(f"{layer} ({count})" for layer, count in chosen.items())
        means = roi_table.groupby("stim_id", sort=False).agg(n_subjects=("subject", "nunique"),
                                                              mean_z_measured=("z_measured", "mean"),
                                                              mean_z_predicted=("z_predicted", "mean"))
        for column in ("measured", "predicted"):
            values = means[f"mean_z_{column}"].to_numpy()
            ranks = np.full(values.shape, np.nan)
            finite = np.isfinite(values)
            ranks[finite] = rankdata(-values[finite], method="min")
            means[f"rank_{column}"] = ranks
        means = means.sort_values("rank_measured", kind="stable")
        rows += [{"roi": roi, "stim_id": stim_id, **row, "layers": layers} for stim_id, row in means.iterrows()]
    return pd.DataFrame(rows, columns=list(DRIVERS_SUMMARY_COLUMNS))


def group_drivers(ctx: Context, subjects: list[str]) -> list[Path]:
    """The group drivers tables (all participants, summary); returns the paths written."""
    model = drivers_model(ctx)
    full_table = collect_subject_tables(subjects, lambda subject: ctx.layout.drivers_table(subject, model))
    paths = [ctx.layout.group_table(model, suffix="drivers"), ctx.layout.group_table(model, "summary", suffix="drivers")]
    drv.write_tsv(paths[0], full_table, column_sidecar({**DRIVERS_COLUMNS, **SUBJECT_COLUMN},
                                                       Description="ROI responses of every stimulus, all subjects.",
                                                       Subjects=subjects))
    drv.write_tsv(paths[1], summarise_drivers(full_table), column_sidecar(
        DRIVERS_SUMMARY_COLUMNS, Description="What drives each ROI across subjects: stimuli ranked by the mean "
                                             "z-scored measured (and predicted) response.", Subjects=subjects))
    return paths
