"""The decoding and identification sections of the participant and group reports (``analyses.decoding``).

Participant: per model the pairwise identification accuracy by layer, one line per ROI, with the
chance level 0.5 dashed and stars where the candidate-label permutation p < alpha (uncorrected),
and the table with top-1 accuracy and the decoded units' held-out r. Group: per model the mean
accuracy across participants with CI (else SEM) error bars, stars where significant after the
group correction, triangles on the ROI's cross-validated best layer, and the summary table.
Everything is read from the output folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from bids_dnn.report.assemble import Col, Section, fmt_bool, fmt_fixed, fmt_int, fmt_p, fmt_score, table_block
from bids_dnn.report.common import parse_bool
from bids_dnn.report.figures import colors_for
from bids_dnn.report.inputs import read_table

if TYPE_CHECKING:
    from bids_dnn.report.group_report import GroupContext
    from bids_dnn.report.participant_report import ParticipantContext

__all__ = ["CHANCE_PAIRWISE", "BELOW_CHANCE_NOTE", "draw_identification_profile", "participant_decoding_tables",
           "participant_decoding_section", "group_decoding_summaries", "group_decoding_section"]

#: chance level of the pairwise identification accuracy
CHANCE_PAIRWISE = 0.5

#: how the identification is scored and tested (:mod:`bids_dnn.decoding.decoders`)
BELOW_CHANCE_NOTE = (
    "Each held-out stimulus is identified among the stimuli of its own test fold, none of which its decoder saw, so "
    "without stimulus information the accuracies scatter around chance (0.5 pairwise). A participant's p-value merges "
    "the folds' own permutation tests (2 x their mean p, valid whatever the dependence between folds, and "
    "conservative); the group test of the accuracies against chance is the more powerful test.")


def _flags(rows: pd.DataFrame, column: str | None) -> np.ndarray:
    if column is None or column not in rows:
        return np.zeros(len(rows), dtype=bool)
    return rows[column].map(parse_bool).to_numpy(dtype=bool)


def draw_identification_profile(fig: Any, table: pd.DataFrame, layers: Sequence[str], title: str, *,
                                value: str = "pairwise_accuracy", chance: float = CHANCE_PAIRWISE,
                                lower: str | None = None, upper: str | None = None, error: str | None = None,
                                marked: str | None = None, marked_label: str = "", best: str | None = None,
                                ylabel: str = "pairwise identification accuracy") -> None:
    """Identification accuracy per layer, one line per ROI, the chance level dashed.

    Parameters
    ----------
    fig : matplotlib Figure
    table : pandas.DataFrame
        One row per ROI x layer with ``roi``, ``layer`` and ``value``.
    layers : sequence of str
        The x axis (network order); layers missing for an ROI leave a gap.
    title : str
    value : str
        The plotted column.
    chance : float
        Drawn as a dashed horizontal line.
    lower, upper : str, optional
        Columns of an interval (error bars from ``lower`` to ``upper``); used for an ROI whose
        bounds are all finite, else ``error``.
    error : str, optional
        Column of a symmetric error (e.g. the SEM).
    marked : str, optional
        Boolean column: a star on the point (legend text ``marked_label``).
    best : str, optional
        Boolean column: a triangle above the point (the ROI's best layer).
    ylabel : str
    """
    from matplotlib.lines import Line2D

    ax = fig.add_subplot(1, 1, 1)
    rois = list(dict.fromkeys(table["roi"]))
    colors = colors_for(rois)
    x = np.arange(len(layers))
    finite_values = []
    any_marked = any_best = False
    for roi in rois:
        rows = table[table["roi"] == roi].drop_duplicates("layer").set_index("layer").reindex(list(layers))
        y = rows[value].to_numpy(dtype=float)
        yerr = None
        if lower and upper and lower in rows and upper in rows:
            low, high = rows[lower].to_numpy(dtype=float), rows[upper].to_numpy(dtype=float)
            present = np.isfinite(y)
            if present.any() and np.isfinite(low[present]).all() and np.isfinite(high[present]).all():
                yerr = np.clip(np.vstack([y - low, high - y]), 0.0, None)  # a mean at the interval's edge
        if yerr is None and error and error in rows:
            yerr = rows[error].to_numpy(dtype=float)
        ax.errorbar(x, y, yerr=yerr, fmt="-o", color=colors[roi], mfc="white", ms=5, lw=1.6, capsize=2, label=roi)
        top = y + (np.nan_to_num(yerr[1] if np.ndim(yerr) == 2 else yerr) if yerr is not None else 0.0)
        finite_values += [v for v in (y - (np.nan_to_num(yerr[0] if np.ndim(yerr) == 2 else yerr)
                                           if yerr is not None else 0.0)) if np.isfinite(v)]
        stars = _flags(rows.reset_index(), marked)
        ax.plot(x[stars], y[stars], "*", ms=13, color=colors[roi], mec="k", mew=0.5, zorder=4)
        any_marked = any_marked or bool(stars.any())
        chosen = _flags(rows.reset_index(), best)
        ax.scatter(x[chosen], top[chosen] + 0.03, marker="v", s=46, color=colors[roi], edgecolors="k", linewidths=0.4,
                   zorder=5, clip_on=False)
        any_best = any_best or bool(chosen.any())
    ax.axhline(chance, color="k", lw=1, ls="--")
    bottom = min([chance - 0.25, *(v - 0.05 for v in finite_values)])
    ax.set_ylim(max(0.0, bottom), 1.05)
    ax.set_xticks(x, list(layers), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="k", ls="--", lw=1, label=f"chance ({chance:g})"))
    if marked and any_marked:
        handles.append(Line2D([], [], marker="*", ls="", color="0.4", mec="k", ms=11, label=marked_label))
    if best and any_best:
        handles.append(Line2D([], [], marker="v", ls="", color="0.4", mec="k", label="best layer (cross-validated)"))
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))


def _layers(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(str(x) for x in table["layer"]))


def _figure_size(table: pd.DataFrame) -> tuple[float, float]:
    return max(6.5, 0.9 * table["layer"].nunique() + 3.5), 3.8


def _first(table: pd.DataFrame, column: str, default: Any) -> Any:
    if column not in table:
        return default
    values = table[column].dropna()
    return values.iloc[0] if len(values) else default


def participant_decoding_tables(ctx: ParticipantContext) -> dict[str, pd.DataFrame]:
    """Model -> the participant's decoding table (models without one are left out)."""
    out = {}
    for model in ctx.spec.models:
        table = read_table(ctx.layout.decoding_table(ctx.subject, model.output_label))
        if table is not None and len(table):
            out[model.output_label] = table
    return out


def participant_decoding_section(ctx: ParticipantContext, section: Section) -> None:
    """The participant report's decoding and identification section."""
    tables = participant_decoding_tables(ctx)
    if not tables:
        section.note("Decoding results are not available for this participant (no decoding table: analyses.decoding "
                     "is disabled, or there are no ROIs).")
        return
    alpha = ctx.spec.statistics.alpha
    section.paragraph("Each layer's activations were decoded from each ROI's response patterns by cross-validated "
                      "ridge regression, and each held-out stimulus was identified among the stimuli of its test fold from "
                      "its decoded features. Pairwise accuracy: the share of the fold's other stimuli its own features "
                      "beat (chance 0.5); top-1 accuracy: the share of stimuli identified exactly (chance 1 / stimuli "
                      "in the fold).")
    section.note(BELOW_CHANCE_NOTE)
    for model, table in tables.items():
        section.heading(f"Model {model}")
        p = table["p_pairwise"].astype(float) if "p_pairwise" in table else pd.Series(np.nan, index=table.index)
        marked = table.assign(star=(p < alpha).to_numpy())
        chance = float(_first(table, "chance_pairwise", CHANCE_PAIRWISE))
        n_perm = _first(table, "n_permutations", np.nan)
        cv, n_folds = _first(table, "cv", "n/a"), _first(table, "n_folds", np.nan)
        section.add(ctx.figures.figure(
            f"sub-{ctx.subject}_model-{model}_desc-decoding_profile",
            lambda fig, t=marked, c=chance, m=model: draw_identification_profile(
                fig, t, _layers(t), f"{m}: identification from each ROI", chance=c, marked="star",
                marked_label=f"permutation p < {alpha:g} (uncorrected)"),
            _figure_size(table), f"identification accuracy profile {model}",
            f"Pairwise identification accuracy per layer and ROI (cross-validation: {cv}, "
            f"{fmt_int(n_folds)} folds); dashed: chance ({chance:g}); stars: permutation p < {alpha:g} "
            f"(one-sided, uncorrected; {fmt_int(n_perm)} candidate-label permutations per fold, the folds' p merged, "
            "see the note)."))
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("layer", "layer"),
            Col("pairwise_accuracy", "pairwise accuracy", fmt_score),
            Col("p_pairwise", "p (pairwise)", fmt_p, css=lambda r: "sig" if r["p_pairwise"] < alpha else ""),
            Col("top1_accuracy", "top-1 accuracy", fmt_score), Col("chance_top1", "top-1 chance", fmt_score),
            Col("p_top1", "p (top-1)", fmt_p, css=lambda r: "sig" if r["p_top1"] < alpha else ""),
            Col("mean_unit_r", "mean unit r", fmt_score), Col("median_unit_r", "median unit r", fmt_score),
            Col("n_units_decoded", "units decoded", fmt_int), Col("n_units", "units", fmt_int),
            Col("n_voxels", "voxels", fmt_int), Col("n_stimuli", "stimuli", fmt_int)],
            id=f"decoding-{model}", caption=f"{ctx.layout.decoding_table(ctx.subject, model).name}; unit r: held-out "
                                            "Pearson r of each decoded unit with its actual activation (within test "
                                            "folds, averaged over folds), constant units left out."))


def group_decoding_summaries(ctx: GroupContext) -> dict[str, pd.DataFrame]:
    """Model -> the group decoding summary (models without one are left out)."""
    out = {}
    for model in ctx.spec.models:
        table = read_table(ctx.layout.group_table(model.output_label, "summary", suffix="decoding"))
        if table is not None and len(table):
            out[model.output_label] = table
    return out


def group_decoding_section(ctx: GroupContext, section: Section) -> None:
    """The group report's decoding and identification section."""
    summaries = group_decoding_summaries(ctx)
    if not summaries:
        section.note("Group decoding results are not available (no group decoding summary: analyses.decoding is "
                     "disabled, or the group level has not run).")
        return
    stats = ctx.spec.statistics
    p_corr = ctx.p_corrected
    section.note(BELOW_CHANCE_NOTE)
    for model, summary in summaries.items():
        section.heading(f"Model {model}")
        chance = float(_first(summary, "chance", CHANCE_PAIRWISE))
        with_ci = {"ci_low", "ci_high"} <= set(summary.columns) and bool(
            np.isfinite(summary[["ci_low", "ci_high"]].to_numpy(dtype=float)).any())
        section.add(ctx.figures.figure(
            f"task-{ctx.layout.task}_model-{model}_desc-decoding_profile",
            lambda fig, t=summary, c=chance, m=model: draw_identification_profile(
                fig, t, _layers(t), f"{m}: identification across participants", value="mean", chance=c,
                lower="ci_low", upper="ci_high", error="sem", marked="significant",
                marked_label=f"significant ({stats.correction}, alpha {stats.alpha:g})", best="best_layer_cv",
                ylabel="mean pairwise identification accuracy"),
            _figure_size(summary), f"group identification accuracy profile {model}",
            f"Mean pairwise identification accuracy across {len(ctx.subjects)} participants with "
            + (f"{stats.ci:.0%} participant-bootstrap CIs (SEM where an ROI has no CI)" if with_ci else "SEM")
            + f"; dashed: chance ({chance:g}); stars: accuracy above chance after {stats.correction} "
            f"(alpha {stats.alpha:g}, {stats.group_test}); triangles: the ROI's best layer (leave-one-participant-out "
            "choice among the significant layers; none in an ROI without a significant layer)."))
        table = summary.copy()
        table["p_corrected"] = table[p_corr] if p_corr in table else np.nan
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("layer", "layer"), Col("n_subjects", "n", fmt_int),
            Col("mean", "mean pairwise accuracy", fmt_score), Col("sem", "SEM", fmt_score),
            Col("ci_low", "CI low", fmt_score), Col("ci_high", "CI high", fmt_score),
            Col("t", "t (vs chance)", fmt_fixed(2)), Col("p_group", f"p ({stats.group_test})", fmt_p),
            Col("p_corrected", f"p ({stats.correction})", fmt_p,
                css=lambda r: "sig" if parse_bool(r.get("significant")) else ""),
            Col("significant", "significant", fmt_bool), Col("best_layer_cv", "best (CV)", fmt_bool),
            Col("mean_top1_accuracy", "mean top-1 accuracy", fmt_score),
            Col("mean_unit_r", "mean unit r", fmt_score)],
            id=f"group-decoding-{model}", caption=ctx.layout.group_table(model, "summary", suffix="decoding").name))
