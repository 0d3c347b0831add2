"""The sections of the reports of a naturalistic design (``design: naturalistic``: voxelwise
encoding of the BOLD time series of films and stories).

Participant: a summary; the noise-ceiling map from repeated runs (or a note that no run repeats a
stimulus); per model the best-layer map (one colour per layer, the legend naming the layers), the
held-out r map of every layer on one colour scale, the banded-ridge R² split maps when they exist,
the ROI profile (mean held-out r by layer, one line per ROI; mean R² against the ROI's noise
ceiling) and table, and the measured and predicted time series of the best-predicted voxel (one
panel per run, with its r). Group: a summary, per model the ROI profile across participants (mean r
by layer with CIs, stars where significant after correction, the ROI's cross-validated best layer
marked) and its table. The group maps are drawn by :mod:`bids_dnn.report.group_report` like the
encoding maps. Everything is read from the output folder (:class:`bids_dnn.io.derivatives.OutputLayout`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.report import figures as figs
from bids_dnn.report.assemble import (
    Col,
    Section,
    fmt_bool,
    fmt_fixed,
    fmt_int,
    fmt_p,
    fmt_score,
    table_block,
)
from bids_dnn.report.common import fmt_share, parse_bool, versions_text
from bids_dnn.report.inputs import MapFile, find_maps, load_volume, read_json, read_table
from bids_dnn.report.methods import naturalistic_methods_blocks
from bids_dnn.spec import sanitize_label, spec_hash

if TYPE_CHECKING:
    from bids_dnn.report.group_report import GroupContext
    from bids_dnn.report.participant_report import ParticipantContext

__all__ = ["NATURALISTIC_ANALYSIS", "MAP_ROWS", "participant_naturalistic_maps", "participant_naturalistic_tables",
           "model_layers", "maps_background", "ceiling_available", "best_layer_counts", "run_correlations",
           "draw_best_layer_map", "draw_timeseries_panels", "draw_group_r_profile",
           "participant_naturalistic_summary", "participant_ceiling_section", "participant_model_section",
           "participant_naturalistic_methods", "group_naturalistic_summaries", "group_layer_order",
           "group_naturalistic_summary", "group_naturalistic_section", "group_naturalistic_methods"]

#: the ``desc-`` label of the maps of a naturalistic design (participant and group)
NATURALISTIC_ANALYSIS = "naturalistic"
#: map rows per figure (more are split over several figures)
MAP_ROWS = 8


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def participant_naturalistic_maps(ctx: ParticipantContext) -> list[MapFile]:
    """Every ``*_desc-naturalistic_statmap.nii.gz`` of the participant (with its sidecar)."""
    return find_maps(ctx.layout.betas(ctx.subject).parent, NATURALISTIC_ANALYSIS, prefix=f"sub-{ctx.subject}_")


def participant_naturalistic_tables(ctx: ParticipantContext) -> dict[str, pd.DataFrame]:
    """Model label -> the participant's ROI x layer table (models without one are left out)."""
    out = {}
    for model in ctx.spec.models:
        table = read_table(ctx.layout.naturalistic_table(ctx.subject, model.output_label))
        if table is not None and len(table):
            out[model.output_label] = table
    return out


def model_layers(maps: list[MapFile], model: str, table: pd.DataFrame | None = None) -> list[str]:
    """A model's layers in network order: the ``Layers`` of its best-layer map's sidecar, else the
    order of the ROI table, else of the layer maps' sidecars (``Layer``).

    Parameters
    ----------
    maps : list of MapFile
        The participant's naturalistic maps (all models).
    model : str
        The model label (as in the file names: sanitised).
    table : pandas.DataFrame, optional
        The model's ROI table.
    """
    label = sanitize_label(model)
    for item in maps:
        if item.model == label and item.stat == "bestlayer" and isinstance(item.sidecar.get("Layers"), list):
            return [str(layer) for layer in item.sidecar["Layers"]]
    if table is not None and "layer" in table and len(table):
        return list(dict.fromkeys(str(x) for x in table["layer"]))
    return list(dict.fromkeys(str(m.layer) for m in maps if m.model == label and m.layer))


def _model_maps(maps: list[MapFile], model: str, stat: str, layers: Sequence[str]) -> list[MapFile]:
    """The ``stat`` maps of one model, in the order of ``layers`` (unknown layers last)."""
    label = sanitize_label(model)
    order = {sanitize_label(layer): i for i, layer in enumerate(layers)}
    found = [m for m in maps if m.model == label and m.stat == stat and m.layer_label]
    return sorted(found, key=lambda m: (order.get(m.layer_label or "", len(order)), m.layer_label or ""))


def maps_background(background: Any, description: str, maps: list[MapFile]) -> tuple[Any, str]:
    """The underlay of the maps: ``background`` when there is one (the MNI152 template in a template
    space, the mean BOLD), else the modelled voxels (those with a value in any map) in grey.

    Returns
    -------
    (nibabel image or None, str)
        The image and its description for the captions.
    """
    import nibabel as nib

    if background is not None or not maps:
        return background, description
    values, image = load_volume(maps[0].path)
    modelled = np.zeros(values.shape[:3], dtype=bool)
    for item in maps:
        data, other = load_volume(item.path)
        if data.shape[:3] == modelled.shape:
            modelled |= np.isfinite(data if data.ndim == 3 else data[..., 0])
    return nib.Nifti1Image(modelled.astype(np.float32), image.affine), "modelled voxels (grey)"


def ceiling_available(values: np.ndarray) -> bool:
    """Whether a noise-ceiling map has any finite value (all NaN: no run repeats a stimulus)."""
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).any())


def best_layer_counts(values: np.ndarray, n_layers: int) -> np.ndarray:
    """Voxels whose best layer is each layer.

    Parameters
    ----------
    values : numpy.ndarray
        The best-layer map: 1-based layer index, NaN where no layer has an r.
    n_layers : int

    Returns
    -------
    numpy.ndarray, shape (n_layers,), int64
    """
    data = np.asarray(values, dtype=np.float64)
    index = data[np.isfinite(data)].astype(np.int64)
    index = index[(index >= 1) & (index <= n_layers)]
    return np.bincount(index - 1, minlength=n_layers).astype(np.int64)


def run_correlations(table: pd.DataFrame) -> dict[int, float]:
    """Pearson r of the measured and predicted time series within each run.

    Parameters
    ----------
    table : pandas.DataFrame
        Columns ``run``, ``measured``, ``predicted`` (the top-voxel TSV).

    Returns
    -------
    dict of int to float
        Run -> r (NaN for a run where either series is constant or has fewer than 2 finite values).
    """
    out = {}
    for run, rows in table.groupby("run", sort=True):
        x = rows["measured"].to_numpy(dtype=np.float64)
        y = rows["predicted"].to_numpy(dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.sum() < 2:
            out[int(run)] = float("nan")
            continue
        x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
        denominator = float(np.sqrt((x @ x) * (y @ y)))
        out[int(run)] = float(x @ y) / denominator if denominator > 0 else float("nan")
    return out


# ---------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------


def draw_best_layer_map(fig: Any, image: Any, background: Any, layers: Sequence[str], counts: Sequence[int],
                        n_cuts: int = 6) -> None:
    """The best-layer map on axial slices: one colour per layer, a legend naming the layers.

    Parameters
    ----------
    fig : matplotlib Figure
    image : nibabel image
        1-based index into ``layers``; NaN (or 0) where no layer has an r.
    background : nibabel image or None
    layers : sequence of str
        The layer names, in the order of the indices.
    counts : sequence of int
        Voxels of each layer (written in the legend).
    n_cuts : int
        Axial slices.
    """
    import warnings

    import nibabel as nib
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from nilearn import plotting

    colors = figs.colors_for(list(layers))
    data = np.nan_to_num(np.asarray(image.dataobj, dtype=np.float32), nan=0.0)
    shown = nib.Nifti1Image(data, image.affine)
    n = len(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plotting.plot_roi(shown, bg_img=background, display_mode="z", cut_coords=figs.z_cuts([shown], n_cuts),
                          figure=fig, axes=[0.0, 0.2, 1.0, 0.8], cmap=ListedColormap([colors[k] for k in layers]),
                          vmin=0.5, vmax=n + 0.5, threshold=0.5, alpha=0.9, colorbar=False, draw_cross=False,
                          black_bg=True, annotate=True)
    total = max(1, int(np.sum(counts)))
    handles = [Patch(facecolor=colors[layer], edgecolor="k", label=f"{layer} ({int(c)} voxels, {c / total:.0%})")
               for layer, c in zip(layers, counts)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))


def draw_timeseries_panels(fig: Any, table: pd.DataFrame, t_r: float | None, correlations: dict[int, float],
                           title: str) -> None:
    """Measured and held-out predicted time series, one panel per run.

    Parameters
    ----------
    fig : matplotlib Figure
    table : pandas.DataFrame
        Columns ``run``, ``volume``, ``measured``, ``predicted``.
    t_r : float or None
        Repetition time (s): the x axis in seconds; None: in volumes.
    correlations : dict of int to float
        Run -> r, written in each panel's title (:func:`run_correlations`).
    title : str
        The figure's title.
    """
    runs = sorted(int(r) for r in dict.fromkeys(table["run"]))
    axes = fig.subplots(len(runs), 1, squeeze=False, sharey=True)[:, 0]
    for ax, run in zip(axes, runs):
        rows = table[table["run"].astype(int) == run].sort_values("volume")
        x = rows["volume"].to_numpy(dtype=float) * (t_r if t_r else 1.0)
        ax.plot(x, rows["measured"].to_numpy(dtype=float), color="0.2", lw=1.0, label="measured")
        ax.plot(x, rows["predicted"].to_numpy(dtype=float), color="#d62728", lw=1.2, label="predicted (held out)")
        r = correlations.get(run, float("nan"))
        ax.set_title(f"run {run}: r = {r:.3f}" if np.isfinite(r) else f"run {run}: r = n/a", fontsize=9, loc="left")
        ax.axhline(0, color="k", lw=0.4)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("z", fontsize=8)
    axes[-1].set_xlabel("time from the run's start (s)" if t_r else "volume", fontsize=8)
    axes[0].legend(fontsize=7, frameon=False, loc="upper right", ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(hspace=0.7)


def draw_group_r_profile(fig: Any, summary: pd.DataFrame, layers: Sequence[str], alpha: float, correction: str,
                         title: str) -> None:
    """Mean held-out r per layer across participants, one line per ROI: CI error bars (SEM where a
    row has no CI), a star on each layer significant after the correction, a triangle above the
    ROI's cross-validated best layer.

    Parameters
    ----------
    fig : matplotlib Figure
    summary : pandas.DataFrame
        The group summary (``roi``, ``layer``, ``mean``, ``ci_low``, ``ci_high``, ``sem``,
        ``significant``, ``best_layer_cv``).
    layers : sequence of str
        The x axis, in network order.
    alpha : float
    correction : str
        Named in the legend.
    title : str
    """
    from matplotlib.lines import Line2D

    ax = fig.add_subplot(1, 1, 1)
    rois = list(dict.fromkeys(str(r) for r in summary["roi"]))
    colors = figs.colors_for(rois)
    x = np.arange(len(layers))
    used_ci = used_sem = starred = marked = False
    for roi in rois:
        rows = summary[summary["roi"].astype(str) == roi].set_index("layer").reindex(list(layers))
        mean = rows["mean"].to_numpy(dtype=float)
        low = rows["ci_low"].to_numpy(dtype=float) if "ci_low" in rows else np.full(len(layers), np.nan)
        high = rows["ci_high"].to_numpy(dtype=float) if "ci_high" in rows else np.full(len(layers), np.nan)
        sem = rows["sem"].to_numpy(dtype=float) if "sem" in rows else np.full(len(layers), np.nan)
        has_ci = np.isfinite(low) & np.isfinite(high)
        below = np.where(has_ci, mean - low, sem)
        above = np.where(has_ci, high - mean, sem)
        used_ci |= bool(has_ci[np.isfinite(mean)].any())
        used_sem |= bool((~has_ci & np.isfinite(sem))[np.isfinite(mean)].any())
        ax.errorbar(x, mean, yerr=np.vstack([np.nan_to_num(below), np.nan_to_num(above)]), fmt="-o",
                    color=colors[roi], ms=4, capsize=2, lw=1.5, label=roi)
        top = mean + np.nan_to_num(above)
        if "significant" in rows:
            significant = rows["significant"].map(parse_bool).to_numpy(dtype=bool)
            ax.plot(x[significant], mean[significant], "*", ms=13, color=colors[roi], mec="k", mew=0.5, zorder=4)
            starred |= bool(significant.any())
        if "best_layer_cv" in rows:
            best = rows["best_layer_cv"].map(parse_bool).to_numpy(dtype=bool)
            ax.scatter(x[best], top[best], marker="v", s=50, color=colors[roi], edgecolors="k", linewidths=0.4,
                       zorder=5, clip_on=False)
            marked |= bool(best.any())
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, list(layers), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean held-out r")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    error = "CI" if used_ci and not used_sem else ("SEM" if used_sem and not used_ci else "CI / SEM")
    handles.append(Line2D([], [], color="0.4", marker="|", ls="", ms=10, label=f"error bars: {error}"))
    if starred:
        handles.append(Line2D([], [], marker="*", ls="", color="0.4", mec="k", ms=11,
                              label=f"significant ({correction}, alpha {alpha:g})"))
    if marked:
        handles.append(Line2D([], [], marker="v", ls="", color="0.4", mec="k", label="best layer (cross-validated)"))
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))


# ---------------------------------------------------------------------------------------
# Participant sections
# ---------------------------------------------------------------------------------------


def _ceiling_map(maps: list[MapFile]) -> MapFile | None:
    return next((m for m in maps if m.stat == "noiseceiling" and not m.model), None)


def _map_of(maps: list[MapFile], model: str | None, layer: str | None, stat: str) -> MapFile | None:
    label = sanitize_label(model) if model else None
    layer_label = sanitize_label(layer) if layer else None
    return next((m for m in maps if m.model == label and m.layer_label == layer_label and m.stat == stat), None)


def _best_rows(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model and ROI the layer with the highest mean held-out r (descriptive)."""
    rows = []
    for model, table in tables.items():
        for roi, sub in table.groupby("roi", sort=False):
            r = sub["mean_r"].astype(float)
            if not np.isfinite(r).any():
                rows.append({"model": model, "roi": roi, "layer": "none (no voxel with an r)"})
                continue
            best = sub.loc[r.idxmax()]
            rows.append({"model": model, "roi": roi, "layer": best["layer"], "mean_r": best["mean_r"],
                         "mean_r2": best["mean_r2"], "best_layer_share": best["best_layer_share"],
                         "mean_noise_ceiling": best.get("mean_noise_ceiling", np.nan), "n_voxels": best["n_voxels"]})
    return pd.DataFrame(rows)


def participant_naturalistic_summary(ctx: ParticipantContext, section: Section) -> None:
    """The participant report's summary: run facts, models and layers, and per ROI the layer with
    the highest mean held-out r."""
    spec = ctx.spec
    nat = spec.analyses.naturalistic
    maps = participant_naturalistic_maps(ctx)
    tables = participant_naturalistic_tables(ctx)
    ceiling = _ceiling_map(maps)
    if ceiling is None:
        ceiling_text = "no noise-ceiling map"
    elif ceiling_available(load_volume(ceiling.path)[0]):
        ceiling_text = "from the runs that repeat a stimulus"
    else:
        ceiling_text = "unavailable: no run repeats a stimulus"
    timeline = (f"words of the events column '{nat.word_column}'" if nat.word_column
                else f"films, frames at {spec.stimuli.video.fps:g} per second")
    delays = "SPM HRF" if nat.hrf else "FIR delays " + ", ".join(str(d) for d in nat.delays) + " TR"
    models = []
    for model in spec.models:
        layers = model_layers(maps, model.output_label, tables.get(model.output_label))
        weights = "random init" if model.weights == "random" else f"{model.weights} weights"
        models.append(f"{model.output_label} ({model.name}, {weights}; {len(layers)} layers: {', '.join(layers)})")
    rois = list(dict.fromkeys(str(r) for t in tables.values() for r in t["roi"]))
    rows: list[tuple[str, Any]] = [
        ("participant", f"sub-{ctx.subject}"),
        ("task / space", f"{ctx.layout.task} / {ctx.layout.space}"),
        ("design", f"naturalistic: {timeline}; {delays}; leave-one-run-out ridge"),
        ("runs", f"{ctx.status.get('n_runs', len(ctx.runs) or 'n/a')}" + (f": {', '.join(ctx.runs)}" if ctx.runs
                                                                             else "")),
        ("voxels modelled", ctx.status.get("n_voxels", "n/a")),
        ("models", "; ".join(models)),
        ("ROIs", ", ".join(rois) or "none"),
        ("noise ceiling", ceiling_text),
        ("spec hash", spec_hash(spec)),
        ("versions", versions_text(ctx.provenance)),
        ("run id", ctx.run_id),
        ("run time", f"{ctx.status['seconds']} s" if "seconds" in ctx.status else "n/a"),
    ]
    section.kv(rows, id="summary-table")
    for note in ctx.notes:
        section.note(note)
    for warning in [str(w) for w in (ctx.status.get("warnings") or [])]:
        section.warning(warning)
    best = _best_rows(tables)
    if len(best):
        section.heading("Highest mean held-out r per ROI")
        section.add(table_block(best, [
            Col("model", "model"), Col("roi", "ROI"), Col("layer", "layer"), Col("mean_r", "mean r", fmt_score),
            Col("mean_r2", "mean R²", fmt_fixed(4)), Col("best_layer_share", "voxels best here", fmt_share),
            Col("mean_noise_ceiling", "noise ceiling (R²)", fmt_score), Col("n_voxels", "voxels", fmt_int)],
            id="summary-best"))
        section.note("Descriptive: the layer with the highest mean over the ROI's voxels of the held-out r of this "
                     "participant (no test; see the group report).")


def participant_ceiling_section(ctx: ParticipantContext, section: Section) -> None:
    """The noise-ceiling map on a 0-1 scale (voxels at or below 0 not coloured), or the note that it
    is unavailable."""
    import nibabel as nib

    maps = participant_naturalistic_maps(ctx)
    ceiling = _ceiling_map(maps)
    if ceiling is None:
        section.note("No noise-ceiling map was found for this participant.")
        return
    values, image = load_volume(ceiling.path)
    if not ceiling_available(values):
        reason = str(ceiling.sidecar.get("Description") or "no run repeats a stimulus")
        section.note(f"Noise ceiling unavailable: {reason}. A noise ceiling needs runs that present the same "
                     "stimulus (film or words at the same onsets) more than once.")
        return
    background, description = maps_background(*ctx.background, maps)
    finite = np.isfinite(values)
    low = finite & (values <= 0)
    shown = nib.Nifti1Image(np.where(finite & ~low, values, np.nan).astype(np.float32), image.affine)
    rows = [("noise ceiling", shown)]
    section.add(ctx.figures.figure(
        f"sub-{ctx.subject}_desc-naturalistic_noiseceiling",
        lambda fig: figs.draw_stat_map_rows(fig, rows, background, cmap="inferno", symmetric=False, vmax=1.0),
        (11, 2.2), "noise ceiling",
        f"Noise ceiling of each voxel from the runs that repeat a stimulus ({ceiling.path.name}; see Methods), over "
        f"the {description}. Colour scale 0 to 1; the {int(low.sum())} of {int(finite.sum())} voxels at or below 0 "
        "(no stimulus-locked signal) are not coloured. Compare with the R² of the layers."))


def participant_model_section(ctx: ParticipantContext, section: Section, model: str) -> None:
    """One model: best-layer map, r maps, banded R² maps, ROI profile and table, top voxel."""
    import nibabel as nib

    maps = participant_naturalistic_maps(ctx)
    table = participant_naturalistic_tables(ctx).get(model)
    layers = model_layers(maps, model, table)
    background, description = maps_background(*ctx.background, maps)
    label = sanitize_label(model)
    best_map = _map_of(maps, model, None, "bestlayer")
    if best_map is not None:
        section.heading("Best layer per voxel", id=f"naturalistic-{label}-bestlayer")
        values, image = load_volume(best_map.path)
        counts = best_layer_counts(values, len(layers))
        section.add(ctx.figures.figure(
            f"sub-{ctx.subject}_model-{label}_desc-naturalistic_bestlayer",
            lambda fig: draw_best_layer_map(fig, image, background, layers, counts), (11, 2.6),
            f"best layer map {model}",
            f"The layer of {model} with the highest held-out r in each voxel (one colour per layer; legend: voxels "
            f"and share of the {int(counts.sum())} voxels with an r), over the {description}; unthresholded."))
    r_maps = _model_maps(maps, model, "r", layers)
    if r_maps:
        section.heading("Held-out r per layer", id=f"naturalistic-{label}-r")
        rows = [(f"{m.layer}: held-out r", nib.load(str(m.path))) for m in r_maps]
        images = [image for _, image in rows]
        vmax = figs.robust_abs_limit(images)
        section.blocks += ctx.figures.figures(
            f"sub-{ctx.subject}_model-{label}_desc-naturalistic_r", rows, MAP_ROWS,
            lambda fig, part, v=vmax: figs.draw_stat_map_rows(fig, part, background, vmax=v),
            lambda part: (11, 1.9 * len(part) + 0.3), f"held-out r maps {model}",
            f"Held-out Pearson r of each voxel's BOLD time series (mean over the left-out runs of the r within each "
            f"run) per layer of {model}, over the {description}; unthresholded. "
            + figs.robust_limit_note(vmax, images))
    banded = _model_maps(maps, model, "bandedr2", layers)
    if banded:
        section.heading("Banded ridge: R² split among the layers", id=f"naturalistic-{label}-banded")
        rows = [(f"{m.layer}: share of held-out R²", nib.load(str(m.path))) for m in banded]
        images = [image for _, image in rows]
        vmax = figs.robust_abs_limit(images)
        section.blocks += ctx.figures.figures(
            f"sub-{ctx.subject}_model-{label}_desc-naturalistic_bandedr2", rows, MAP_ROWS,
            lambda fig, part, v=vmax: figs.draw_stat_map_rows(fig, part, background, vmax=v),
            lambda part: (11, 1.9 * len(part) + 0.3), f"banded ridge R² split {model}",
            f"The part of the held-out R² of one banded ridge model over all layers of {model} carried by each layer "
            f"(the parts and the intercept's sum to the voxel's R²), over the {description}; unthresholded. "
            + figs.robust_limit_note(vmax, images))
    if table is not None:
        _roi_profiles(ctx, section, model, table, layers)
    else:
        section.note(f"No ROI table was found for {model} ({ctx.layout.naturalistic_table(ctx.subject, model).name}).")
    _top_voxel(ctx, section, model, maps)


def _roi_profiles(ctx: ParticipantContext, section: Section, model: str, table: pd.DataFrame,
                  layers: list[str]) -> None:
    label = sanitize_label(model)
    present = list(dict.fromkeys(str(x) for x in table["layer"]))
    order = [layer for layer in layers if layer in present] + [layer for layer in present if layer not in layers]
    section.heading("ROIs", id=f"naturalistic-{label}-rois")
    section.add(ctx.figures.figure(
        f"sub-{ctx.subject}_model-{label}_desc-naturalistic_profile",
        lambda fig: figs.draw_line_profile(fig, table, order, "mean_r", "mean held-out r",
                                           f"{model}: held-out r per ROI and layer"),
        (8, 3.6), f"ROI profile {model}", "Mean over the ROI's voxels of the held-out r, per layer."))
    bands = {}
    if "mean_noise_ceiling" in table:
        for roi, rows in table.groupby("roi", sort=False):
            value = float(rows["mean_noise_ceiling"].astype(float).iloc[0])
            if np.isfinite(value):
                bands[str(roi)] = (value, value)
    if bands:
        section.add(ctx.figures.figure(
            f"sub-{ctx.subject}_model-{label}_desc-naturalistic_r2profile",
            lambda fig: figs.draw_line_profile(fig, table, order, "mean_r2", "mean held-out R²",
                                               f"{model}: held-out R² per ROI and layer", ceiling=bands),
            (8, 3.6), f"ROI R² profile {model}",
            "Mean over the ROI's voxels of the held-out R², per layer; dashed line in the ROI's colour: the mean of "
            "its voxels' noise ceiling (the R² a perfect model of the stimulus could reach)."))
    section.add(table_block(table, [
        Col("roi", "ROI"), Col("layer", "layer"), Col("n_voxels", "voxels", fmt_int),
        Col("mean_r", "mean r", fmt_score), Col("mean_r2", "mean R²", fmt_fixed(4)),
        Col("best_layer_share", "voxels best here", fmt_share),
        Col("mean_noise_ceiling", "noise ceiling (R²)", fmt_score)],
        id=f"naturalistic-table-{label}", caption=ctx.layout.naturalistic_table(ctx.subject, model).name))


def _top_voxel(ctx: ParticipantContext, section: Section, model: str, maps: list[MapFile]) -> None:
    path = ctx.layout.naturalistic_timeseries(ctx.subject, model)
    label = sanitize_label(model)
    section.heading("Best-predicted voxel", id=f"naturalistic-{label}-topvoxel")
    table = read_table(path)
    if table is None or not len(table):
        section.note(f"No time series of the best-predicted voxel was found ({path.name}).")
        return
    sidecar = read_json(drv.sidecar_path(path))
    correlations = run_correlations(table)
    t_r = next((float(m.sidecar["RepetitionTime"]) for m in maps if m.sidecar.get("RepetitionTime")), None)
    voxel = sidecar.get("Voxel")
    where = "n/a"
    if isinstance(voxel, list) and len(voxel) == 3 and maps:
        _, image = load_volume(maps[0].path)
        xyz = image.affine @ np.array([*voxel, 1.0])
        where = f"voxel ({', '.join(str(int(v)) for v in voxel)}) at ({xyz[0]:.0f}, {xyz[1]:.0f}, {xyz[2]:.0f}) mm"
    held_out = sidecar.get("HeldOutR")
    section.kv([("voxel", where), ("layer", sidecar.get("Layer", "n/a")),
                ("held-out r (fit)", f"{float(held_out):.3f}" if isinstance(held_out, (int, float)) else "n/a"),
                ("r per run (from the file)", ", ".join(f"run {k}: {v:.3f}" for k, v in correlations.items()))],
               id=f"naturalistic-topvoxel-{label}")
    runs = len(correlations)
    section.add(ctx.figures.figure(
        f"sub-{ctx.subject}_model-{label}_desc-naturalistic_topvoxel",
        lambda fig: draw_timeseries_panels(fig, table, t_r, correlations,
                                           f"{model}, layer {sidecar.get('Layer', '?')}: best-predicted voxel"),
        (11, 1.6 * runs + 0.8), f"best-predicted voxel {model}",
        f"The cleaned BOLD of the voxel with the highest held-out r (black, z-scored per run) and its prediction "
        f"(red) from the model fitted without that run, one panel per run; r: Pearson r within the run ({path.name})."))


def participant_naturalistic_methods(ctx: ParticipantContext, section: Section) -> None:
    """The methods paragraphs and references of the participant report."""
    maps = participant_naturalistic_maps(ctx)
    tables = participant_naturalistic_tables(ctx)
    ceiling = _ceiling_map(maps)
    t_r = next((float(m.sidecar["RepetitionTime"]) for m in maps if m.sidecar.get("RepetitionTime")), None)
    facts = {"task": ctx.layout.task, "n_runs": ctx.status.get("n_runs"), "t_r": t_r,
             "layers": {m.output_label: model_layers(maps, m.output_label, tables.get(m.output_label))
                        for m in ctx.spec.models},
             "rois": list(dict.fromkeys(str(r) for t in tables.values() for r in t["roi"])),
             "noise_ceiling": None if ceiling is None else ceiling_available(load_volume(ceiling.path)[0]),
             "has_banded": any(m.stat == "bandedr2" for m in maps)}
    for block in naturalistic_methods_blocks(ctx.spec, "participant", facts):
        section.add(block)


# ---------------------------------------------------------------------------------------
# Group sections
# ---------------------------------------------------------------------------------------


def group_naturalistic_summaries(ctx: GroupContext) -> dict[str, pd.DataFrame]:
    """Model label -> the group summary of the time-series encoding (models without one left out)."""
    out = {}
    for model in ctx.spec.models:
        table = read_table(ctx.layout.group_table(model.output_label, "summary", suffix=NATURALISTIC_ANALYSIS))
        if table is not None and len(table):
            out[model.output_label] = table
    return out


def group_layer_order(ctx: GroupContext, model: str, summary: pd.DataFrame | None) -> list[str]:
    """A model's layers in network order: the ``Layers`` of an included participant's best-layer map
    sidecar (those in ``summary`` when given, the others after them), else the summary's order.

    Parameters
    ----------
    ctx : GroupContext
    model : str
        The model label.
    summary : pandas.DataFrame or None
        The model's group summary.
    """
    present = list(dict.fromkeys(str(x) for x in summary["layer"])) if summary is not None else []
    for subject in ctx.subjects:
        path = ctx.layout.naturalistic_map(subject, model, None, "bestlayer")
        layers = read_json(drv.sidecar_path(path)).get("Layers")
        if isinstance(layers, list) and layers:
            order = [str(layer) for layer in layers if str(layer) in present or not present]
            return order + [layer for layer in present if layer not in order]
    return present


def group_naturalistic_summary(ctx: GroupContext, section: Section) -> None:
    """The group report's summary of a naturalistic design, with each ROI's best layer."""
    from bids_dnn.report.group_summary import group_summary_section

    summaries = group_naturalistic_summaries(ctx)
    rois = list(dict.fromkeys(str(r) for t in summaries.values() for r in t["roi"]))
    group_summary_section(ctx, section, summaries, rois, score_label="mean held-out r",
                          design="naturalistic (voxelwise encoding of the BOLD time series)",
                          tested=" of the ROI-mean held-out r against 0")


def group_naturalistic_section(ctx: GroupContext, section: Section) -> None:
    """Per model: the ROI profile across participants and the summary table."""
    summaries = group_naturalistic_summaries(ctx)
    if not summaries:
        section.note("No group summary of the time-series encoding was found (the group level has not run, or no "
                     "ROIs).")
        return
    stats = ctx.spec.statistics
    p_corr = ctx.p_corrected
    for model, summary in summaries.items():
        label = sanitize_label(model)
        layers = group_layer_order(ctx, model, summary)
        section.heading(f"Model {model}", id=f"group-naturalistic-{label}")
        section.add(ctx.figures.figure(
            f"task-{ctx.layout.task}_model-{label}_desc-naturalistic_profile",
            lambda fig, s=summary, lay=layers, m=model: draw_group_r_profile(
                fig, s, lay, stats.alpha, stats.correction, f"{m}: held-out r across participants"),
            (8.5, 3.8), f"group ROI profile {model}",
            f"Mean across {len(ctx.subjects)} participants of the ROI-mean held-out r per layer, with "
            f"{stats.ci:.0%} participant-bootstrap CIs (SEM where there is no CI); stars: significant after "
            f"{stats.correction} (alpha {stats.alpha:g}, {stats.group_test}); triangles: the ROI's best layer "
            "(leave-one-participant-out choice among the significant layers; none in an ROI without one)."))
        table = summary.copy()
        table["p_corrected"] = table[p_corr] if p_corr in table else np.nan
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("layer", "layer"), Col("n_subjects", "n", fmt_int),
            Col("mean", "mean r", fmt_score), Col("sem", "SEM", fmt_score),
            Col("ci_low", "CI low", fmt_score), Col("ci_high", "CI high", fmt_score),
            Col("t", "t", fmt_fixed(2)), Col("p_group", f"p ({stats.group_test})", fmt_p),
            Col("p_corrected", f"p ({stats.correction})", fmt_p,
                css=lambda r: "sig" if parse_bool(r.get("significant")) else ""),
            Col("significant", "significant", fmt_bool), Col("best_layer_cv", "best (CV)", fmt_bool)],
            id=f"group-naturalistic-table-{label}",
            caption=ctx.layout.group_table(model, "summary", suffix=NATURALISTIC_ANALYSIS).name))


def group_naturalistic_methods(ctx: GroupContext, section: Section) -> None:
    """The methods paragraphs and references of the group report."""
    summaries = group_naturalistic_summaries(ctx)
    facts: dict[str, Any] = {
        "task": ctx.layout.task, "n_subjects": len(ctx.subjects),
        "layers": {m: group_layer_order(ctx, m, s) for m, s in summaries.items()},
        "rois": list(dict.fromkeys(str(r) for t in summaries.values() for r in t["roi"])),
        "has_group_maps": bool(find_maps(ctx.layout.group_dir, NATURALISTIC_ANALYSIS))}
    for subject in ctx.subjects:
        path = ctx.layout.naturalistic_map(subject, None, None, "noiseceiling")
        if Path(path).is_file():
            facts["noise_ceiling"] = ceiling_available(load_volume(path)[0])
            facts["t_r"] = read_json(drv.sidecar_path(path)).get("RepetitionTime")
            facts["has_banded"] = any(Path(path).parent.glob(
                f"sub-{subject}_*_stat-bandedr2_desc-{NATURALISTIC_ANALYSIS}_statmap.nii.gz"))
            break
    for block in naturalistic_methods_blocks(ctx.spec, "group", facts):
        section.add(block)
