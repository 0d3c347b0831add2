"""The CKA sections of the participant and group reports (``analyses.cka``).

Participant: per model an ROI x layer heatmap of CKA (stars: permutation p < alpha, uncorrected)
and the table with p-values and stimulus-bootstrap intervals. Group: per model a heatmap of the
mean CKA across participants (stars: significant after the group correction, box: the ROI's
cross-validated best layer), the summary table, and the layer x layer CKA of the models' layers
when the model folders hold it. Everything is read from the output folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.report.assemble import Col, Section, fmt_bool, fmt_fixed, fmt_int, fmt_p, fmt_score, table_block
from bids_dnn.report.common import parse_bool
from bids_dnn.report.inputs import read_table

if TYPE_CHECKING:
    from bids_dnn.report.group_report import GroupContext
    from bids_dnn.report.participant_report import ParticipantContext

__all__ = ["draw_cka_heatmaps", "participant_cka_tables", "participant_cka_section", "group_cka_summaries",
           "group_cka_section", "layer_cka_matrix"]


def draw_cka_heatmaps(fig: Any, panels: list[tuple[str, pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]],
                      value_label: str) -> None:
    """One heatmap per panel: rows x columns of values in [-1, 1] (colour range 0 to 1 when no value
    is negative), written in each cell.

    Parameters
    ----------
    fig : matplotlib Figure
    panels : list of (title, values, stars, boxes)
        ``values``: rows x columns DataFrame; ``stars`` / ``boxes``: same shape, bool (or None):
        cells marked with ``*`` / outlined.
    value_label : str
        Colour-bar label.
    """
    from matplotlib.patches import Rectangle

    for k, (title, values, stars, boxes) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        matrix = values.to_numpy(dtype=float)
        finite = matrix[np.isfinite(matrix)]
        low = -1.0 if finite.size and finite.min() < 0 else 0.0
        image = ax.imshow(matrix, cmap="RdBu_r" if low < 0 else "viridis", vmin=low, vmax=1.0, aspect="auto",
                          interpolation="nearest")
        for (i, j), value in np.ndenumerate(matrix):
            mark = "*" if stars is not None and bool(stars.iloc[i, j]) else ""
            text = "n/a" if not np.isfinite(value) else f"{value:.2f}{mark}"
            dark = np.isfinite(value) and (abs(value) > 0.6 if low < 0 else value < 0.5)
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
            if boxes is not None and bool(boxes.iloc[i, j]):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", lw=2))
        ax.set_xticks(range(values.shape[1]), [str(c) for c in values.columns], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(values.shape[0]), [str(r) for r in values.index], fontsize=7)
        ax.set_title(title, fontsize=10)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=6)
        bar.set_label(value_label, fontsize=7)
    fig.subplots_adjust(wspace=0.6)


def _wide(table: pd.DataFrame, column: str, rows: str = "roi", columns: str = "layer") -> pd.DataFrame:
    """``column`` as a rows x columns table in the order of first appearance."""
    wide = table.pivot(index=rows, columns=columns, values=column)
    return wide.loc[list(dict.fromkeys(table[rows])), list(dict.fromkeys(table[columns]))]


def _figure_size(table: pd.DataFrame, rows: str = "roi", columns: str = "layer") -> tuple[float, float]:
    return 1.2 + 0.75 * table[columns].nunique(), 1.6 + 0.45 * table[rows].nunique()


def participant_cka_tables(ctx: ParticipantContext) -> dict[str, pd.DataFrame]:
    """Model -> the participant's CKA table (models without one are left out)."""
    out = {}
    for model in ctx.spec.models:
        table = read_table(ctx.layout.cka_table(ctx.subject, model.output_label))
        if table is not None and len(table):
            out[model.output_label] = table
    return out


def participant_cka_section(ctx: ParticipantContext, section: Section) -> None:
    """The participant report's CKA section."""
    tables = participant_cka_tables(ctx)
    if not tables:
        section.note("No CKA table was found for this participant (analyses.cka is disabled, or no ROIs).")
        return
    alpha = ctx.spec.statistics.alpha
    for model, table in tables.items():
        kernel, estimator = str(table["kernel"].iloc[0]), str(table["estimator"].iloc[0])
        section.heading(f"Model {model}")
        p = table["p_permutation"].astype(float)
        marked = table.assign(star=(p < alpha).to_numpy())
        section.add(ctx.figures.figure(
            f"sub-{ctx.subject}_model-{model}_desc-cka_heatmap",
            lambda fig, t=marked: draw_cka_heatmaps(fig, [(f"{model}: CKA per ROI and layer", _wide(t, "cka"),
                                                           _wide(t, "star"), None)], "CKA"),
            _figure_size(table), f"CKA heatmap {model}",
            f"CKA ({kernel} kernel, {estimator} estimator) of each ROI's run-mean patterns with each layer's "
            f"activations; *: stimulus-label permutation p < {alpha:g} (one-sided, uncorrected, "
            f"{int(table['n_permutations'].iloc[0])} permutations)."))
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("layer", "layer"), Col("cka", "CKA", fmt_score),
            Col("p_permutation", "p (permutation)", fmt_p, css=lambda r: "sig" if r["p_permutation"] < alpha else ""),
            Col("ci_low", "CI low", fmt_score), Col("ci_high", "CI high", fmt_score),
            Col("n_voxels", "voxels", fmt_int), Col("n_units", "units", fmt_int)],
            id=f"cka-{model}", caption=f"{ctx.layout.cka_table(ctx.subject, model).name}; CI: stimulus-bootstrap "
                                       f"{ctx.spec.statistics.ci:.0%} percentile interval "
                                       f"({int(table['n_bootstrap'].iloc[0])} resamples)."))


def group_cka_summaries(ctx: GroupContext) -> dict[str, pd.DataFrame]:
    """Model -> the group CKA summary (models without one are left out)."""
    out = {}
    for model in ctx.spec.models:
        table = read_table(ctx.layout.group_table(model.output_label, "summary", suffix="cka"))
        if table is not None and len(table):
            out[model.output_label] = table
    return out


def layer_cka_matrix(layout: drv.OutputLayout, model: str) -> pd.DataFrame | None:
    """The layer x layer CKA of a model's layers with every model's layers (rows: this model's
    layers; columns: ``model:layer``), or None when the model folder has none."""
    table = read_table(layout.model_cka(model))
    if table is None or not len(table):
        return None
    table = table.assign(other=table["model_b"].astype(str) + ":" + table["layer_b"].astype(str))
    return _wide(table, "cka", rows="layer_a", columns="other")


def group_cka_section(ctx: GroupContext, section: Section) -> None:
    """The group report's CKA section."""
    summaries = group_cka_summaries(ctx)
    if not summaries:
        section.note("No group CKA summary was found (analyses.cka disabled, or the group level has not run).")
        return
    stats = ctx.spec.statistics
    p_corr = ctx.p_corrected
    for model, summary in summaries.items():
        kernel, estimator = str(summary["kernel"].iloc[0]), str(summary["estimator"].iloc[0])
        section.heading(f"Model {model}")
        marked = summary.assign(sig=summary["significant"].map(parse_bool).to_numpy(),
                                best=summary["best_layer_cv"].map(parse_bool).to_numpy())
        section.add(ctx.figures.figure(
            f"task-{ctx.layout.task}_model-{model}_desc-cka_heatmap",
            lambda fig, t=marked: draw_cka_heatmaps(fig, [(f"{model}: mean CKA across participants",
                                                           _wide(t, "mean"), _wide(t, "sig"), _wide(t, "best"))],
                                                    "mean CKA"),
            _figure_size(summary), f"group CKA heatmap {model}",
            f"Mean CKA ({kernel} kernel, {estimator} estimator) across {len(ctx.subjects)} participants; *: "
            f"significant after {stats.correction} (alpha {stats.alpha:g}, {stats.group_test}); box: the ROI's best "
            "layer (leave-one-participant-out choice among the significant layers)."))
        if estimator == "plain":
            section.warning("The plain HSIC estimator is biased upwards: CKA of unrelated patterns is above 0, so the "
                            "tests against 0 are not meaningful (use analyses.cka.estimator: unbiased).")
        table = summary.copy()
        table["p_corrected"] = table[p_corr] if p_corr in table else np.nan
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("layer", "layer"), Col("n_subjects", "n", fmt_int),
            Col("mean", "mean", fmt_score), Col("sem", "SEM", fmt_score),
            Col("ci_low", "CI low", fmt_score), Col("ci_high", "CI high", fmt_score),
            Col("t", "t", fmt_fixed(2)), Col("p_group", f"p ({stats.group_test})", fmt_p),
            Col("p_corrected", f"p ({stats.correction})", fmt_p,
                css=lambda r: "sig" if parse_bool(r.get("significant")) else ""),
            Col("significant", "significant", fmt_bool), Col("best_layer_cv", "best (CV)", fmt_bool)],
            id=f"group-cka-{model}", caption=ctx.layout.group_table(model, "summary", suffix="cka").name))
    matrices = {m.output_label: layer_cka_matrix(ctx.layout, m.output_label) for m in ctx.spec.models}
    matrices = {model: matrix for model, matrix in matrices.items() if matrix is not None}
    if matrices:
        section.heading("Layer x layer CKA")
        for model, matrix in matrices.items():
            section.add(ctx.figures.figure(
                f"task-{ctx.layout.task}_model-{model}_desc-layercka_heatmap",
                lambda fig, m=matrix: draw_cka_heatmaps(fig, [(f"{model} vs all layers", m, None, None)], "CKA"),
                (1.2 + 0.75 * matrix.shape[1], 1.6 + 0.45 * matrix.shape[0]), f"layer x layer CKA {model}",
                f"CKA between the activations of {model}'s layers (rows) and every model's layers (columns) over the "
                f"task's stimuli ({ctx.layout.model_cka(model).relative_to(ctx.layout.root)})."))
