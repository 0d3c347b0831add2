"""One group summary for every per-participant score table (CKA, decoding, probing): per row
(e.g. ROI x layer), the mean across participants, one-sample tests of the score against its
chance level, a participant-bootstrap interval of the mean, corrected p-values and, where rows
are layers, each ROI's best layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from collections.abc import Callable
from pathlib import Path

from bids_dnn.console import logger
from bids_dnn.errors import AnalysisError, InputMissingError
from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.tables import add_group_decisions

__all__ = ["collect_subject_tables", "rois_of_every_subject", "summarise_scores"]


def collect_subject_tables(subjects: list[str], path_of: Callable[[str], Path]) -> pd.DataFrame:
    """Every participant's table (``path_of(subject)``), stacked in ``subjects`` order.

    Raises
    ------
    InputMissingError
        A participant's table is missing (its participant level did not write it).
    """
    tables = []
    for subject in subjects:
        path = path_of(subject)
        if not path.is_file():
            raise InputMissingError(f"participant table missing: {path}", "rerun the participant level")
        tables.append(drv.read_tsv(path))
    return pd.concat(tables, ignore_index=True)


def rois_of_every_subject(table: pd.DataFrame, score: str, analysis: str = "") -> pd.DataFrame:
    """The rows of ROIs that have a ``score`` in every subject. An ROI skipped somewhere (n/a,
    fewer usable voxels than ``rois.min_voxels``) is left out of the group statistics of
    ``analysis`` (e.g. ``"CKA"``; empty for RSA) with one warning."""
    skipped = table.loc[table[score].isna(), ["roi", "subject"]].drop_duplicates()
    if skipped.empty:
        return table
    what = f"group {analysis} statistics" if analysis else "group statistics"
    for roi, rows in skipped.groupby("roi", sort=False):
        logger.warning("ROI %s left out of the %s: skipped (too few usable voxels) in %s", roi, what,
                       ", ".join(f"sub-{s}" for s in rows["subject"]))
    kept = table.loc[~table["roi"].isin(skipped["roi"])]
    if kept.empty:
        raise AnalysisError("no ROI is usable in every participant (each was skipped somewhere for too few voxels)",
                            "lower rois.min_voxels or check the ROIs' space")
    return kept


def summarise_scores(table: pd.DataFrame, *, rows: tuple[str, str], score: str, statistics: Any,
                     rng: np.random.Generator, chance: float | str = 0.0, carry: Sequence[str] = (),
                     best_layer: bool = True) -> pd.DataFrame:
    """Group summary of a stacked per-participant table.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per subject x ``rows`` pair, with a ``subject`` column and the ``score`` column;
        every subject has every pair (leave out pairs missing somewhere before).
    rows : (str, str)
        The columns naming a summary row, the first the group (``roi``), the second the item
        within it (``layer``, ``annotation``), in the table's order.
    score : str
        The column summarised.
    statistics : StatisticsSpec
        ``alternative``, ``group_test``, ``bootstrap``, ``ci``, ``correction``, ``alpha``.
    rng : numpy.random.Generator
        Draws the participant-bootstrap resamples.
    chance : float or str
        The score's chance level (a number, or a column holding it, equal across subjects):
        the tests are of ``score - chance`` against 0; ``mean`` and the interval are of the score.
    carry : sequence of str
        Columns copied from the first row of each group (e.g. ``model``, ``kernel``).
    best_layer : bool
        Add ``best_layer_cv`` (the items are layers).

    Returns
    -------
    pandas.DataFrame
        ``rows``, ``carry``, ``n_subjects``, ``mean``, ``chance``, the group-test columns,
        ``ci_low``, ``ci_high``, ``p_group``, ``p_fdr``, ``p_bonferroni``, ``significant``
        (and ``best_layer_cv``).
    """
    from bids_dnn.stats.bootstrap import bootstrap_subjects
    from bids_dnn.stats.group_tests import GROUP_TESTS, one_sample_tests

    group_key, item_key = rows
    summary_rows = []
    scores_by_group: dict[str, np.ndarray] = {}
    for group, group_table in table.groupby(group_key, sort=False):
        items = list(dict.fromkeys(group_table[item_key]))
        wide = group_table.pivot(index="subject", columns=item_key, values=score)
        values = wide.loc[list(dict.fromkeys(group_table["subject"])), items].to_numpy(dtype=np.float64)
        if isinstance(chance, str):
            levels = group_table.groupby(item_key, sort=False)[chance].first().loc[items].to_numpy(dtype=np.float64)
        else:
            levels = np.full(len(items), float(chance))
        above = values - levels
        tests = one_sample_tests(above, alternative=statistics.alternative)
        if statistics.bootstrap and values.shape[0] >= 2:
            low, high, _ = bootstrap_subjects(values, statistics.bootstrap, rng, ci=statistics.ci)
        else:
            low = high = np.full(values.shape[1], np.nan)
        scores_by_group[group] = above
        first = group_table.groupby(item_key, sort=False).first()
        for j, item in enumerate(items):
            summary_rows.append({group_key: group, item_key: item, **{c: first.at[item, c] for c in carry},
                                 "n_subjects": int(tests["n"][j]), "mean": tests["mean"][j] + levels[j], "chance": levels[j], "sem": tests["sem"][j], "t": tests["t"][j],
                                 "p_ttest": tests["p_t"][j], "wilcoxon_w": tests["wilcoxon_w"][j],
                                 "p_wilcoxon": tests["p_wilcoxon"][j], "ci_low": low[j], "ci_high": high[j],
                                 "p_group": tests[GROUP_TESTS[statistics.group_test].p_value][j]})
    summary = pd.DataFrame(summary_rows)
    add_group_decisions(summary, scores_by_group if best_layer else {}, statistics.correction, statistics.alpha)
    if not best_layer:
        summary = summary.drop(columns="best_layer_cv")
    return summary
