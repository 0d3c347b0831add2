"""The "Summary" section of a group report: the run's facts, its notes and each ROI's best layer.

Shared by the event-related group report and the naturalistic one; each passes its own summary
tables, ROI list and wording.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from bids_dnn.report.assemble import Col, Section, fmt_p, fmt_score, table_block
from bids_dnn.report.common import parse_bool, versions_text
from bids_dnn.spec import spec_hash
from bids_dnn.stats.group_tests import GROUP_TESTS

if TYPE_CHECKING:
    from bids_dnn.report.group_report import GroupContext

__all__ = ["group_summary_section"]


def group_summary_section(ctx: GroupContext, section: Section, summaries: Mapping[str, pd.DataFrame],
                          rois: list[str], *, score_label: str, design: str | None = None,
                          tested: str = "") -> None:
    """Write the key-value table of the run, its notes and the "Key results" table.

    Parameters
    ----------
    ctx : GroupContext
        The group report's inputs.
    section : Section
        Where the blocks go.
    summaries : mapping of str to pandas.DataFrame
        Per model, its group summary (columns ``roi``, ``layer``, ``mean``, ``best_layer_cv``,
        ``significant`` and the corrected p column).
    rois : list of str
        ROIs named in the table.
    score_label : str
        Header of the best layer's mean score.
    design : str, optional
        A "design" row (left out when None).
    tested : str
        What the group test is applied to, inserted after the test's name.
    """
    stats = ctx.spec.statistics
    rows: list[tuple[str, Any]] = [("task / space", f"{ctx.layout.task} / {ctx.layout.space}")]
    if design is not None:
        rows.append(("design", design))
    rows += [
        ("participants", f"{len(ctx.subjects)} included: " + ", ".join(f"sub-{s}" for s in ctx.subjects)),
        ("excluded", ", ".join(f"sub-{s}" for s in ctx.excluded) or "none"),
        ("models", ", ".join(m.output_label for m in ctx.spec.models)),
        ("ROIs", ", ".join(rois) or "none"),
        ("group test", f"{GROUP_TESTS[stats.group_test].label}{tested}, alternative '{stats.alternative}'"),
        ("correction", f"{stats.correction} across ROI x layer per model, alpha {stats.alpha:g}"),
        ("confidence intervals", f"{stats.ci:.0%} participant bootstrap ({stats.bootstrap} resamples)"),
        ("spec hash", spec_hash(ctx.spec)),
        ("versions", versions_text(ctx.provenance)),
        ("run id", ctx.run_id),
    ]
    section.kv(rows, id="summary-table")
    for note in ctx.notes:
        section.note(note)
    best_rows = []
    for model, summary in summaries.items():
        for roi, rows_roi in summary.groupby("roi", sort=False):
            best = rows_roi[rows_roi["best_layer_cv"].map(parse_bool)] if "best_layer_cv" in rows_roi \
                else rows_roi.iloc[:0]
            significant = int(rows_roi["significant"].map(parse_bool).sum()) if "significant" in rows_roi else 0
            record = best.iloc[0] if len(best) else None
            best_rows.append({"model": model, "roi": roi,
                              "best_layer": record["layer"] if record is not None else "none (no significant layer)",
                              "mean": record["mean"] if record is not None else np.nan,
                              "p_corr": record.get(ctx.p_corrected, np.nan) if record is not None else np.nan,
                              "n_significant": f"{significant} of {len(rows_roi)}"})
    if best_rows:
        section.heading("Key results")
        section.add(table_block(pd.DataFrame(best_rows), [
            Col("model", "model"), Col("roi", "ROI"),
            Col("best_layer", "best layer (cross-validated, among significant layers)"),
            Col("mean", score_label, fmt_score), Col("p_corr", f"{ctx.p_corrected} of best layer", fmt_p),
            Col("n_significant", "significant layers")], id="summary-best"))
