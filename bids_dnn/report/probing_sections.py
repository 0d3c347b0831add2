"""The probing sections of the participant and group reports (``analyses.probing``).

Layers and regions on one scale: per annotation, the probe score of every layer (one line per
model; the model folders' tables, written once per run) with the ROIs' scores drawn as
horizontal lines labelled by ROI, and the chance level dashed. The participant report shows the
participant's ROI probes (a star where the label-permutation p < alpha, uncorrected); the group
report the mean across participants with its bootstrap CI as a band (a star where significant
after the group correction). Everything is read from the output folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.report.assemble import Block, Col, Section, fmt_bool, fmt_fixed, fmt_int, fmt_p, fmt_score, table_block
from bids_dnn.report.common import parse_bool
from bids_dnn.report.figures import colors_for
from bids_dnn.report.inputs import read_table

if TYPE_CHECKING:
    from bids_dnn.report.group_report import GroupContext
    from bids_dnn.report.participant_report import ParticipantContext

__all__ = ["SCORE_LABELS", "layer_probe_tables", "layer_positions", "label_positions", "draw_probe_profiles",
           "participant_probing_section", "group_probing_section", "has_probing_outputs"]

#: axis label of the probe score of each annotation kind
SCORE_LABELS = {"categorical": "balanced accuracy", "continuous": "held-out r"}
#: line colours and markers of the models (the ROIs take the categorical palette)
MODEL_STYLES = (("#222222", "o"), ("#7a7a7a", "s"), ("#5b3a29", "^"), ("#1b4f72", "D"), ("#6b2c5f", "P"))


def layer_probe_tables(layout: drv.OutputLayout, models: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Model -> the probes of its layers (``layout.model_probing``); models without a table are left out.

    Parameters
    ----------
    layout : OutputLayout
    models : sequence of str
        Model labels (``output_label``).
    """
    out = {}
    for model in models:
        table = read_table(layout.model_probing(model))
        if table is not None and len(table):
            out[model] = table
    return out


def has_probing_outputs(layout: drv.OutputLayout, models: Sequence[str], roi_table: Path) -> bool:
    """True when the ROI probe table ``roi_table`` or a layer probe table of one of ``models`` exists."""
    return Path(roi_table).is_file() or any(layout.model_probing(m).is_file() for m in models)


def layer_positions(n_layers: int, single_model: bool) -> np.ndarray:
    """x positions of a model's layers: 0 .. n-1 for one model, relative depth in [0, 1] for several
    (one layer at 0.5)."""
    if single_model:
        return np.arange(n_layers, dtype=float)
    return np.linspace(0.0, 1.0, n_layers) if n_layers > 1 else np.array([0.5])


def label_positions(values: Sequence[float], gap: float) -> np.ndarray:
    """Label heights for ``values`` with at least ``gap`` between neighbours: each label starts at
    its value and is pushed up past the label below it (order of the values kept; NaN stays NaN).

    Parameters
    ----------
    values : sequence of float, shape (n,)
    gap : float
        Smallest distance between two labels (in data units), >= 0.

    Returns
    -------
    numpy.ndarray, shape (n,)
    """
    values = np.asarray(values, dtype=float)
    out = values.copy()
    finite = np.flatnonzero(np.isfinite(values))
    previous = -np.inf
    for i in finite[np.argsort(values[finite], kind="stable")]:
        out[i] = max(values[i], previous + gap)
        previous = out[i]
    return out


def _annotation_facts(annotation: str, tables: Sequence[pd.DataFrame | None]) -> tuple[str, float]:
    """(kind, chance) of an annotation, from the first table that has it."""
    for table in tables:
        if table is None or "annotation" not in table:
            continue
        rows = table[table["annotation"].astype(str) == annotation]
        if len(rows):
            kind = str(rows["kind"].iloc[0]) if "kind" in rows else "categorical"
            chance = rows["chance"].dropna() if "chance" in rows else pd.Series(dtype=float)
            return kind, float(chance.iloc[0]) if len(chance) else (0.0 if kind == "continuous" else np.nan)
    return "categorical", np.nan


def draw_probe_profiles(fig: Any, layer_tables: dict[str, pd.DataFrame], rois: pd.DataFrame | None,
                        annotations: Sequence[str], alpha: float, *, roi_value: str = "score",
                        roi_low: str | None = None, roi_high: str | None = None, roi_marked: str | None = None,
                        roi_marked_label: str = "", max_cols: int = 3) -> None:
    """One panel per annotation: layer profiles of every model and the ROIs' scores on one scale.

    Parameters
    ----------
    fig : matplotlib Figure
    layer_tables : dict of str to pandas.DataFrame
        Model -> its layer probes (``layer``, ``annotation``, ``score``, ``p_permutation``, in
        network order). Points with ``p_permutation < alpha`` are filled, others open.
    rois : pandas.DataFrame or None
        ROI probes: ``roi``, ``annotation`` and ``roi_value``; each ROI is a horizontal line in
        its colour, labelled at the right edge (with ``*`` where ``roi_marked`` is true).
    annotations : sequence of str
        The panels, in order.
    alpha : float
        Threshold of the layers' permutation p-values (uncorrected).
    roi_low, roi_high : str, optional
        Columns of an interval of each ROI score, drawn as a band in the ROI's colour.
    roi_marked : str, optional
        Boolean column of ``rois`` (e.g. ``significant``); legend text ``roi_marked_label``.
    max_cols : int
        Panels per row.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    annotations = list(annotations)
    cols = max(1, min(len(annotations), max_cols))
    n_rows = max(1, math.ceil(len(annotations) / cols))
    single = len(layer_tables) <= 1
    styles = {model: MODEL_STYLES[k % len(MODEL_STYLES)] for k, model in enumerate(layer_tables)}
    roi_names = list(dict.fromkeys(str(r) for r in rois["roi"])) if rois is not None and len(rois) else []
    roi_colors = colors_for(roi_names)
    banded = False
    for k, annotation in enumerate(annotations):
        ax = fig.add_subplot(n_rows, cols, k + 1)
        kind, chance = _annotation_facts(annotation, [*layer_tables.values(), rois])
        values: list[float] = [chance] if np.isfinite(chance) else []
        ticks: tuple[np.ndarray, list[str]] | None = None
        for model, table in layer_tables.items():
            rows = table[table["annotation"].astype(str) == annotation]
            if rows.empty:
                continue
            x = layer_positions(len(rows), single)
            y = rows["score"].to_numpy(dtype=float)
            p = rows["p_permutation"].to_numpy(dtype=float) if "p_permutation" in rows else np.full(len(rows), np.nan)
            significant = np.isfinite(p) & (p < alpha)
            color, marker = styles[model]
            ax.plot(x, y, "-", color=color, lw=1.5, zorder=2)
            ax.scatter(x[~significant], y[~significant], marker=marker, s=30, facecolors="white", edgecolors=color,
                       zorder=3)
            ax.scatter(x[significant], y[significant], marker=marker, s=34, color=color, zorder=3)
            values += [v for v in y if np.isfinite(v)]
            if single:
                ticks = (x, [str(layer) for layer in rows["layer"]])
        if ticks is not None:
            ax.set_xticks(ticks[0], ticks[1], rotation=35, ha="right", fontsize=7)
        elif layer_tables:
            ax.set_xticks([0, 0.5, 1], ["first", "middle", "last"], fontsize=7)
            ax.set_xlabel("relative layer depth", fontsize=8)
        else:
            ax.set_xticks([])
        labels = []
        if rois is not None and len(rois):
            rows = rois[rois["annotation"].astype(str) == annotation].drop_duplicates("roi")
            for _, row in rows.iterrows():
                roi, y = str(row["roi"]), float(row[roi_value])
                if not np.isfinite(y):
                    continue
                color = roi_colors[roi]
                ax.axhline(y, color=color, lw=1.6, ls="-.", zorder=1)
                low = float(row[roi_low]) if roi_low and roi_low in row else np.nan
                high = float(row[roi_high]) if roi_high and roi_high in row else np.nan
                if np.isfinite(low) and np.isfinite(high) and high > low:
                    ax.axhspan(low, high, color=color, alpha=0.15, lw=0, zorder=0)
                    values += [low, high]
                    banded = True
                values.append(y)
                mark = "*" if roi_marked and roi_marked in row and parse_bool(row[roi_marked]) else ""
                labels.append((y, roi + mark, color))
        if np.isfinite(chance):
            ax.axhline(chance, color="k", lw=1, ls="--", zorder=1)
        if values:
            low, high = min(values), max(values)
            pad = 0.08 * (high - low) if high > low else 0.1
            ax.set_ylim(low - pad, high + pad)
        if labels:
            span = np.diff(ax.get_ylim())[0]
            heights = label_positions([y for y, _, _ in labels], 0.07 * span)
            transform = blended_transform_factory(ax.transAxes, ax.transData)
            for (_, text, color), height in zip(labels, heights):
                ax.text(1.01, height, text, transform=transform, color=color, fontsize=7, va="center", ha="left",
                        fontweight="bold", clip_on=False)
        ax.set_title(f"{annotation} ({kind})", fontsize=10)
        ax.set_ylabel(SCORE_LABELS.get(kind, "score"), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    handles: list[Any] = [Line2D([], [], color=styles[m][0], marker=styles[m][1], lw=1.5, label=f"layers of {m}")
                          for m in layer_tables]
    if layer_tables:
        handles.append(Line2D([], [], marker="o", ls="", color="0.3", label=f"layer: permutation p < {alpha:g}"))
        handles.append(Line2D([], [], marker="o", ls="", mfc="white", mec="0.3", label="layer: not significant"))
    handles += [Line2D([], [], color=roi_colors[r], ls="-.", lw=1.6, label=f"ROI {r}") for r in roi_names]
    if banded:
        handles.append(Patch(color="0.5", alpha=0.3, label="ROI interval (ROI colour)"))
    if roi_marked and roi_names:
        handles.append(Line2D([], [], ls="", label=f"ROI*: {roi_marked_label}"))
    handles.append(Line2D([], [], color="k", ls="--", lw=1, label="chance"))
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), frameon=False, fontsize=7,
               bbox_to_anchor=(0.5, -0.02))
    fig.subplots_adjust(bottom=min(0.45, 1.3 / fig.get_size_inches()[1]), wspace=0.55, hspace=0.7)


def _figure_size(n_annotations: int, max_cols: int = 3) -> tuple[float, float]:
    cols = max(1, min(n_annotations, max_cols))
    return 4.8 * cols + 1.2, 3.2 * math.ceil(max(1, n_annotations) / cols) + 1.3


def _annotations(*tables: pd.DataFrame | None) -> list[str]:
    return list(dict.fromkeys(str(a) for t in tables if t is not None and "annotation" in t for a in t["annotation"]))


def _layer_table_blocks(layer_tables: dict[str, pd.DataFrame], layout: drv.OutputLayout, alpha: float) -> list[Block]:
    blocks = []
    for model, table in layer_tables.items():
        blocks.append(Block("details", text=f"Layer probes of {model}: {layout.model_probing(model).name}", children=[
            table_block(table, [
                Col("layer", "layer"), Col("annotation", "annotation"), Col("kind", "kind"),
                Col("score", "score", fmt_score), Col("chance", "chance", fmt_score),
                Col("p_permutation", "p (permutation)", fmt_p,
                    css=lambda r: "sig" if r["p_permutation"] < alpha else ""),
                Col("accuracy", "accuracy", fmt_score), Col("r2", "R²", fmt_score),
                Col("n_classes", "classes", fmt_int), Col("n_stimuli", "stimuli", fmt_int),
                Col("n_predictors", "units", fmt_int), Col("n_folds", "folds", fmt_int)],
                id=f"probing-layers-{model}")]))
    return blocks


def _scale_text(layer_tables: dict[str, pd.DataFrame]) -> str:
    return ("Categorical annotations: balanced accuracy of a one-vs-rest ridge classifier (chance 1 / number of "
            "classes); continuous: held-out r of ridge regression (chance 0). "
            + ("Layers: k-fold over the stimuli (model folders, the same for every participant). " if layer_tables
               else ""))


def participant_probing_section(ctx: ParticipantContext, section: Section) -> None:
    """The participant report's probing section (the participant's ROI probes with every model's layer probes)."""
    alpha = ctx.spec.statistics.alpha
    path = ctx.layout.probing_table(ctx.subject)
    rois = read_table(path)
    rois = rois if rois is not None and len(rois) else None
    layer_tables = layer_probe_tables(ctx.layout, [m.output_label for m in ctx.spec.models])
    if rois is None and not layer_tables:
        section.note("Probing results are not available for this participant (no ROI or layer probe table: "
                     "analyses.probing is disabled, or it has not run).")
        return
    if rois is None:
        section.note(f"The ROI probes of this participant are not available ({path.name} not found: "
                     "analyses.probing.rois is false, or no ROIs); the layers' probes are shown alone.")
    if not layer_tables:
        section.note("The layers' probes are not available (analyses.probing.layers is false); the ROIs are shown "
                     "alone.")
    annotations = _annotations(*layer_tables.values(), rois)
    marked = rois.assign(star=(rois["p_permutation"].astype(float) < alpha).to_numpy()) \
        if rois is not None and "p_permutation" in rois else rois
    n_perm = _n_permutations(rois, *layer_tables.values())
    section.add(ctx.figures.figure(
        f"sub-{ctx.subject}_desc-probing_profile",
        lambda fig: draw_probe_profiles(fig, layer_tables, marked, annotations, alpha, roi_marked="star",
                                        roi_marked_label=f"permutation p < {alpha:g} (uncorrected)"),
        _figure_size(len(annotations)), "probe scores of layers and ROIs",
        _scale_text(layer_tables) + "Lines and markers: each layer's probe score (filled: label-permutation p < "
        f"{alpha:g}, uncorrected); dash-dotted lines: this participant's ROI probes (ROI* : p < {alpha:g}); dashed: "
        f"chance. Permutations: {n_perm}, each refitting the whole cross-validation."))
    if rois is not None:
        section.add(table_block(rois, [
            Col("roi", "ROI"), Col("annotation", "annotation"), Col("kind", "kind"),
            Col("score", "score", fmt_score), Col("chance", "chance", fmt_score),
            Col("p_permutation", "p (permutation)", fmt_p, css=lambda r: "sig" if r["p_permutation"] < alpha else ""),
            Col("accuracy", "accuracy", fmt_score), Col("r2", "R²", fmt_score), Col("n_classes", "classes", fmt_int),
            Col("n_stimuli", "stimuli", fmt_int), Col("n_predictors", "voxels", fmt_int),
            Col("cv", "cv"), Col("n_folds", "folds", fmt_int)], id="probing-rois", caption=path.name))
    section.blocks += _layer_table_blocks(layer_tables, ctx.layout, alpha)


def _n_permutations(*tables: pd.DataFrame | None) -> str:
    values = sorted({int(v) for t in tables if t is not None and "n_permutations" in t
                     for v in t["n_permutations"].dropna()})
    return ", ".join(str(v) for v in values) or "n/a"


def group_probing_section(ctx: GroupContext, section: Section) -> None:
    """The group report's probing section (the ROI probes across participants with every model's layer probes)."""
    stats = ctx.spec.statistics
    path = ctx.layout.group_roi_table("summary", suffix="probing")
    summary = read_table(path)
    summary = summary if summary is not None and len(summary) else None
    layer_tables = layer_probe_tables(ctx.layout, [m.output_label for m in ctx.spec.models])
    if summary is None and not layer_tables:
        section.note("Group probing results are not available (no group probing summary and no layer probes: "
                     "analyses.probing is disabled, or the group level has not run).")
        return
    if summary is None:
        section.note(f"The group ROI probes are not available ({path.name} not found); the layers' probes are shown "
                     "alone.")
    annotations = _annotations(*layer_tables.values(), summary)
    section.add(ctx.figures.figure(
        f"task-{ctx.layout.task}_desc-probing_profile",
        lambda fig: draw_probe_profiles(fig, layer_tables, summary, annotations, stats.alpha, roi_value="mean",
                                        roi_low="ci_low", roi_high="ci_high", roi_marked="significant",
                                        roi_marked_label=f"above chance after {stats.correction} (alpha "
                                                         f"{stats.alpha:g})"),
        _figure_size(len(annotations)), "group probe scores of layers and ROIs",
        _scale_text(layer_tables) + f"Lines and markers: each layer's probe score (filled: label-permutation p < "
        f"{stats.alpha:g}); dash-dotted lines: the ROIs' mean probe score across {len(ctx.subjects)} participants, "
        f"band: {stats.ci:.0%} participant-bootstrap CI (ROI*: above chance after {stats.correction}, alpha "
        f"{stats.alpha:g}, {stats.group_test} of score - chance); dashed: chance."))
    if summary is not None:
        p_corr = ctx.p_corrected
        table = summary.copy()
        table["p_corrected"] = table[p_corr] if p_corr in table else np.nan
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("annotation", "annotation"), Col("kind", "kind"), Col("n_subjects", "n", fmt_int),
            Col("mean", "mean score", fmt_score), Col("chance", "chance", fmt_score), Col("sem", "SEM", fmt_score),
            Col("ci_low", "CI low", fmt_score), Col("ci_high", "CI high", fmt_score),
            Col("t", "t (vs chance)", fmt_fixed(2)), Col("p_group", f"p ({stats.group_test})", fmt_p),
            Col("p_corrected", f"p ({stats.correction})", fmt_p,
                css=lambda r: "sig" if parse_bool(r.get("significant")) else ""),
            Col("significant", "significant", fmt_bool)], id="group-probing", caption=path.name))
    section.blocks += _layer_table_blocks(layer_tables, ctx.layout, stats.alpha)
