"""The "what drives a region" sections of the participant and group reports (``analyses.drivers``).

Participant, per ROI: a montage of the stimuli with the highest and the lowest measured and
predicted ROI response (thumbnails labelled with stim_id and value, by kind of stimulus:
:mod:`bids_dnn.report.thumbnails`; the texts of text stimuli also in full in a table), the
held-out predicted vs measured response with the held-out r of every layer (the chosen one
highlighted), and the saliency maps of the predicted response for the top stimuli (the image as
the network saw it with the map as a semi-transparent heat map, one row per method). Group, per
ROI: the same montage and scatter from the mean z-scored responses across participants.
Everything is read from the output folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.report import figures as figs
from bids_dnn.report.assemble import Block, Col, Section, fmt_int, fmt_sig, fmt_text, table_block
from bids_dnn.report.inputs import read_json, read_stimuli, read_table
from bids_dnn.report.thumbnails import ThumbnailCache, render_thumbnail
from bids_dnn.spec import AnalysisSpec

if TYPE_CHECKING:
    from bids_dnn.report.group_report import GroupContext
    from bids_dnn.report.participant_report import ParticipantContext

__all__ = ["SALIENCY_PERCENTILE", "drivers_model_label", "stimulus_thumbnail", "extreme_stimuli", "pearson_r",
           "read_saliency", "saliency_scale", "draw_driver_scatter", "draw_saliency_overlays",
           "participant_drivers_section", "group_drivers_section"]

#: each saliency map is shown relative to this percentile of its own values (clipped to 1 above)
SALIENCY_PERCENTILE = 99.0
#: thumbnail size (pixels), tiles per montage row, and most stimuli shown at each end of a ranking
THUMBNAIL = 96
MONTAGE_PER_ROW = 12
MONTAGE_MAX_PER_END = 24
#: saliency columns (stimuli) per figure
SALIENCY_COLUMNS = 6
#: the saliency methods' names in the text
METHOD_TEXT = {"vanilla": "vanilla gradient", "smoothgrad": "SmoothGrad"}


def drivers_model_label(spec: AnalysisSpec) -> str:
    """The model whose layers predict the ROI responses: ``analyses.drivers.model``, else the first model."""
    return spec.analyses.drivers.model or spec.models[0].output_label


def stimulus_thumbnail(path: Path | str | None, size: int = 144) -> Any:
    """The picture of a stimulus's thumbnail (PIL image, longer side at most ``size`` pixels): an
    image, a video's first frame, a sound's waveform and spectrogram or a text tile
    (:func:`bids_dnn.report.thumbnails.render_thumbnail`); None when the file is missing or cannot be read.

    Parameters
    ----------
    path : Path, str or None
    size : int
        Longest side in pixels (a large image is reduced while it is decoded).
    """
    thumbnail = render_thumbnail(path, size)
    return thumbnail.image if thumbnail is not None else None


def extreme_stimuli(table: pd.DataFrame, column: str, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` rows with the highest and the ``n`` rows with the lowest finite ``column``.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per stimulus.
    column : str
    n : int
        Rows at each end (fewer when the table has fewer finite values).

    Returns
    -------
    top : pandas.DataFrame
        Highest first; ties keep the table's order.
    bottom : pandas.DataFrame
        Lowest first; ties keep the table's order.
    """
    values = table[column].to_numpy(dtype=float)
    finite = np.flatnonzero(np.isfinite(values))
    n = max(0, min(int(n), finite.size))
    top = finite[np.argsort(-values[finite], kind="stable")[:n]]
    bottom = finite[np.argsort(values[finite], kind="stable")[:n]]
    return table.iloc[top], table.iloc[bottom]


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r of the pairs where both values are finite (NaN with fewer than 2 pairs or a constant side).

    Parameters
    ----------
    x, y : sequence of float, shape (n,)
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return float("nan")
    a, b = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(np.clip(float(a @ b) / denominator, -1.0, 1.0)) if denominator > 0 else float("nan")


def read_saliency(path: Path) -> dict[str, Any] | None:
    """The arrays of a saliency file (``layout.saliency``), or None when it does not exist.

    Returns
    -------
    dict or None
        ``stim_ids`` (k,) str, ``display`` (k, H, W, 3) uint8, ``maps`` {method: (k, H, W)
        float}, ``predicted`` (k,) float or None, ``layer`` str, ``alpha`` float (NaN when absent),
        ``methods`` list of str.
    """
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        names = set(data.files)
        methods = [str(m) for m in data["methods"]] if "methods" in names else \
            [n[len("maps_"):] for n in sorted(names) if n.startswith("maps_")]
        return {"stim_ids": [str(s) for s in data["stim_ids"]], "display": np.asarray(data["display"]),
                "maps": {m: np.asarray(data[f"maps_{m}"], dtype=np.float64) for m in methods if f"maps_{m}" in names},
                "predicted": np.asarray(data["predicted"], dtype=float) if "predicted" in names else None,
                "layer": str(data["layer"][()]) if "layer" in names else "",
                "alpha": float(data["alpha"][()]) if "alpha" in names else float("nan"),
                "methods": methods}


def saliency_scale(maps: np.ndarray, percentile: float = SALIENCY_PERCENTILE) -> np.ndarray:
    """Each map divided by its own ``percentile`` of finite values and clipped to [0, 1]
    (all zeros where that percentile is not positive; NaN becomes 0).

    Parameters
    ----------
    maps : numpy.ndarray, shape (k, H, W)
        Non-negative saliency maps.
    percentile : float

    Returns
    -------
    numpy.ndarray, shape (k, H, W), float64
    """
    maps = np.asarray(maps, dtype=np.float64)
    out = np.zeros_like(maps)
    for i, single in enumerate(maps):
        finite = single[np.isfinite(single)]
        limit = float(np.percentile(finite, percentile)) if finite.size else 0.0
        if limit > 0:
            out[i] = np.clip(np.nan_to_num(single) / limit, 0.0, 1.0)
    return out


def draw_driver_scatter(fig: Any, measured: Sequence[float], predicted: Sequence[float], stim_ids: Sequence[str],
                        n_top: int, title: str, xlabel: str = "measured response",
                        ylabel: str = "predicted response (held out)",
                        layer_scores: dict[str, float] | None = None, chosen: str | None = None) -> None:
    """Predicted vs measured response of every stimulus (the ``n_top`` highest and lowest measured
    ones coloured and labelled), with the pooled Pearson r in the title; with ``layer_scores``, a
    second panel of the held-out r of every layer (``chosen`` highlighted).

    Parameters
    ----------
    fig : matplotlib Figure
    measured, predicted : sequence of float, shape (n_stimuli,)
    stim_ids : sequence of str, shape (n_stimuli,)
    n_top : int
    title : str
    xlabel, ylabel : str
    layer_scores : dict of str to float, optional
        Layer -> held-out r, in the order to draw.
    chosen : str, optional
    """
    x, y = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    frame = pd.DataFrame({"x": x, "y": y, "stim_id": list(stim_ids)})
    top, bottom = extreme_stimuli(frame, "x", n_top)
    ax = fig.add_subplot(1, 2 if layer_scores else 1, 1)
    ax.scatter(x, y, s=16, color="0.6", edgecolors="none", zorder=2)
    for rows, color, label in ((top, "#d62728", f"highest {len(top)} measured"),
                               (bottom, "#1f77b4", f"lowest {len(bottom)} measured")):
        ax.scatter(rows["x"], rows["y"], s=26, color=color, edgecolors="k", linewidths=0.4, zorder=3, label=label)
        for _, row in rows.iterrows():
            ax.annotate(str(row["stim_id"]), (row["x"], row["y"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points", color=color)
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() >= 2 and np.ptp(x[finite]) > 0:
        slope, intercept = np.polyfit(x[finite], y[finite], 1)
        grid = np.array([x[finite].min(), x[finite].max()])
        ax.plot(grid, intercept + slope * grid, color="k", lw=0.8, ls="--", zorder=1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f"{title} (pooled r = {pearson_r(x, y):.2f})", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="best")
    if layer_scores:
        ax2 = fig.add_subplot(1, 2, 2)
        names = list(layer_scores)
        values = [float(layer_scores[n]) for n in names]
        ax2.bar(range(len(names)), values, color=["#d62728" if n == chosen else "0.65" for n in names])
        ax2.axhline(0, color="k", lw=0.6)
        ax2.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        ax2.set_ylabel("held-out r (fold mean)", fontsize=8)
        ax2.set_title("prediction of the ROI's mean response per layer", fontsize=9)
        ax2.tick_params(axis="y", labelsize=7)
        ax2.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(wspace=0.35)


def draw_saliency_overlays(fig: Any, display: np.ndarray, maps: dict[str, np.ndarray], stim_ids: Sequence[str],
                           predicted: Sequence[float] | None = None, percentile: float = SALIENCY_PERCENTILE) -> None:
    """One column per stimulus: the image as the network saw it, then one row per saliency method
    (the greyscale image under the map, scaled by :func:`saliency_scale`, as a heat map whose
    opacity grows with the value).

    Parameters
    ----------
    fig : matplotlib Figure
    display : numpy.ndarray, shape (k, H, W, 3), uint8
    maps : dict of str to numpy.ndarray, each (k, H, W)
        Method -> non-negative maps.
    stim_ids : sequence of str, shape (k,)
    predicted : sequence of float, shape (k,), optional
        The predicted response of each image (in the column titles).
    percentile : float
    """
    import matplotlib

    cmap = matplotlib.colormaps["inferno"]
    k = len(stim_ids)
    rows = 1 + len(maps)
    scaled = {method: saliency_scale(values, percentile) for method, values in maps.items()}
    for j in range(k):
        image = np.asarray(display[j])
        ax = fig.add_subplot(rows, k, j + 1)
        ax.imshow(image)
        title = str(stim_ids[j])
        if predicted is not None and np.isfinite(predicted[j]):
            title += f"\npredicted {float(predicted[j]):.3g}"
        ax.set_title(title, fontsize=7)
        ax.set_axis_off()
        grey = image.astype(float).mean(axis=-1) / 255.0 if image.ndim == 3 else image.astype(float) / 255.0
        for i, (method, values) in enumerate(scaled.items()):
            ax = fig.add_subplot(rows, k, (i + 1) * k + j + 1)
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            overlay = cmap(values[j])
            overlay[..., 3] = 0.85 * values[j]
            ax.imshow(overlay)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j == 0:
                ax.set_ylabel(METHOD_TEXT.get(method, method), fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.25)


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def _montage(figures: Any, name: str, groups: list[tuple[str, list[tuple[str, Any]]]], alt: str,
             caption: str) -> Block:
    groups = [(label, items) for label, items in groups if items]
    per_row = min(MONTAGE_PER_ROW, max((len(items) for _, items in groups), default=1))
    rows = sum(max(1, -(-len(items) // per_row)) for _, items in groups)
    return figures.figure(name, lambda fig: figs.draw_montage(fig, groups, thumb=THUMBNAIL, per_row=per_row),
                          (max(4.5, 1.4 * per_row + 2.0), 1.45 * rows + 0.3), alt, caption)


def _extremes_montage(figures: Any, name: str, rows: pd.DataFrame, columns: tuple[str, str], shown: int,
                      thumbnails: ThumbnailCache, alt: str, caption: str) -> Block:
    """Four rows of thumbnails: the ``shown`` highest and lowest stimuli by the measured column,
    then by the predicted column (``columns``: measured, predicted)."""
    groups = []
    for column, what in zip(columns, ("measured", "predicted")):
        top, bottom = extreme_stimuli(rows, column, shown)
        groups += [(f"highest\n{what}", _tiles(top, column, thumbnails)),
                   (f"lowest\n{what}", _tiles(bottom, column, thumbnails))]
    return _montage(figures, name, groups, alt, caption)


def _tiles(rows: pd.DataFrame, column: str, thumbnails: ThumbnailCache) -> list[tuple[str, Any]]:
    return [(f"{row['stim_id']} ({fmt_sig(3)(row[column])})", thumbnails(str(row["stim_id"])))
            for _, row in rows.iterrows()]


def _extremes_table(table: pd.DataFrame, columns: list[Col], by: str, n: int, id: str, caption: str) -> Block:
    top, bottom = extreme_stimuli(table, by, n)
    shown = pd.concat([top.assign(end="highest"), bottom.assign(end="lowest")])
    return Block("details", text=f"Table: the {n} highest and lowest stimuli", children=[
        table_block(shown, [Col("end", "end"), *columns], id=id, caption=caption)])


def _missing_note(section: Section, thumbnails: ThumbnailCache, id: str) -> None:
    """The note on stimuli without a thumbnail, and every text shown in the montages in full."""
    if thumbnails.missing:
        section.note(f"{len(thumbnails.missing)} stimulus file(s) could not be found or read from this output folder "
                     "(grey tiles); the input dataset is located through dataset_description.json (DatasetLinks.raw).")
    shown = [(stim_id, tile.text) for stim_id, tile in thumbnails.cache.items() if tile is not None and tile.text]
    if shown:
        table = pd.DataFrame(sorted(shown), columns=["stim_id", "text"])
        section.add(Block("details", text=f"Table: the text of every stimulus in the montages ({len(table)})",
                          children=[table_block(table, [Col("stim_id", "stimulus"), Col("text", "text")], id=id)]))


def _ordered_scores(scores: dict[str, Any], order: Sequence[str]) -> dict[str, float]:
    names = [layer for layer in order if layer in scores] + [layer for layer in scores if layer not in order]
    return {layer: float(scores[layer]) if scores[layer] is not None else float("nan") for layer in names}


def participant_drivers_section(ctx: ParticipantContext, section: Section) -> None:
    """The participant report's "what drives a region" section."""
    spec = ctx.spec.analyses.drivers
    model = drivers_model_label(ctx.spec)
    path = ctx.layout.drivers_table(ctx.subject, model)
    table = read_table(path)
    if table is None or not len(table):
        section.note(f"What drives each region is not available for this participant ({path.name} not found: "
                     "analyses.drivers is disabled, or it has not run).")
        return
    sidecar = read_json(drv.sidecar_path(path))
    n_top = int(sidecar.get("TopStimuli") or spec.n_top)
    layer_scores = sidecar.get("LayerScores") or {}
    try:
        order = ctx.layers(model)
    except Exception:  # noqa: BLE001 - the order of the layer bars is cosmetic
        order = []
    try:
        stimuli = ctx.stimuli
    except FileNotFoundError:
        stimuli = None
        section.note("The stimulus table is not available; the stimuli are shown as grey tiles.")
    thumbnails = ThumbnailCache(stimuli, 2 * THUMBNAIL)
    cv = f"{sidecar.get('CrossValidation', 'n/a')}, {sidecar.get('NumberOfFolds', 'n/a')} folds"
    section.paragraph(
        f"Each ROI's mean response to every stimulus (run-mean estimates averaged over its voxels) was predicted from "
        f"each layer of {model} by cross-validated ridge regression ({cv}); the layer with the highest held-out r "
        "predicts the ROI's response below. The stimuli are ranked by the measured and by the held-out predicted "
        "response (rank 1: strongest).")
    roi_names = list(dict.fromkeys(table["roi"]))
    skipped = [roi for roi in ctx.rois if roi not in roi_names]
    if skipped:
        section.note(f"Not ranked (no finite mean response to every stimulus, or no layer predicts it): "
                     f"{', '.join(skipped)}.")
    for roi in roi_names:
        rows = table[table["roi"] == roi].reset_index(drop=True)
        layer = str(rows["layer"].iloc[0])
        r = float(rows["layer_r"].iloc[0]) if "layer_r" in rows else float("nan")
        section.heading(f"ROI {roi}", id=f"drivers-{roi}")
        section.kv([("layer", layer), ("held-out r of that layer (fold mean)", f"{r:.3f}"),
                    ("stimuli", len(rows))], id=f"drivers-{roi}-summary")
        shown = min(n_top, MONTAGE_MAX_PER_END)
        section.add(_extremes_montage(
            ctx.figures, f"sub-{ctx.subject}_model-{model}_label-{roi}_desc-drivers_montage", rows,
            ("measured", "predicted"), shown, thumbnails, f"stimuli driving ROI {roi}",
            f"The {shown} stimuli with the highest and the lowest measured mean response of ROI {roi}, and those with "
            f"the highest and the lowest held-out predicted response (layer {layer}); in brackets the response. "
            "Lowest first in the 'lowest' rows."))
        section.add(ctx.figures.figure(
            f"sub-{ctx.subject}_model-{model}_label-{roi}_desc-drivers_scatter",
            lambda fig, t=rows, s=_ordered_scores(layer_scores.get(roi, {}), order), lay=layer: draw_driver_scatter(
                fig, t["measured"], t["predicted"], t["stim_id"], shown, f"ROI {roi}, layer {lay}",
                layer_scores=s or None, chosen=lay),
            (10.0 if layer_scores.get(roi) else 5.5, 3.8), f"predicted vs measured response of ROI {roi}",
            "Held-out predicted vs measured mean response of every stimulus (dashed: least-squares line; the pooled r "
            "over all stimuli differs from the fold-mean r of the table)" + (
                "; right: the held-out r of every layer, the chosen one in red." if layer_scores.get(roi) else ".")))
        _saliency_blocks(ctx, section, model, roi)
        section.add(_extremes_table(rows, [
            Col("stim_id", "stimulus"), Col("measured", "measured", fmt_sig(4)),
            Col("rank_measured", "rank (measured)", fmt_int), Col("predicted", "predicted", fmt_sig(4)),
            Col("rank_predicted", "rank (predicted)", fmt_int)], "measured", n_top, f"drivers-{roi}-table",
            path.name))
    _missing_note(section, thumbnails, "drivers-texts")


def _saliency_blocks(ctx: ParticipantContext, section: Section, model: str, roi: str) -> None:
    saliency_spec = ctx.spec.analyses.drivers.saliency
    path = ctx.layout.saliency(ctx.subject, model, roi)
    data = read_saliency(path)
    if data is None:
        section.note(f"Saliency maps of ROI {roi} are not available ({path.name} not found: "
                     "analyses.drivers.saliency is disabled, or the stimuli are videos).")
        return
    if not data["maps"]:
        section.note(f"{path.name} holds no saliency maps.")
        return
    methods = [METHOD_TEXT.get(m, m) for m in data["maps"]]
    k = len(data["stim_ids"])
    smooth = (f"; SmoothGrad: {saliency_spec.n_samples} noisy copies, noise SD {saliency_spec.noise_level:g} of the "
              "image's range" if "smoothgrad" in data["maps"] else "")
    section.blocks += ctx.figures.figures(
        f"sub-{ctx.subject}_model-{model}_label-{roi}_desc-saliency", list(range(k)), SALIENCY_COLUMNS,
        lambda fig, part, d=data: draw_saliency_overlays(
            fig, d["display"][part], {m: v[part] for m, v in d["maps"].items()}, [d["stim_ids"][i] for i in part],
            d["predicted"][part] if d["predicted"] is not None else None),
        lambda part: (1.9 * len(part) + 0.9, 2.0 * (1 + len(data["maps"])) + 0.3), f"saliency maps of ROI {roi}",
        f"The {k} stimuli with the highest held-out predicted response of ROI {roi}. Top row: the image as the "
        f"network saw it (after resize and centre crop); rows below: {' and '.join(methods)} saliency of the "
        f"predicted response (ridge readout of layer {data['layer']}, alpha {data['alpha']:.3g}, fitted on all "
        f"stimuli) with respect to the input: the largest |gradient| over the colour channels{smooth}. Each map is "
        f"scaled to its own {SALIENCY_PERCENTILE:g}th percentile; more opaque where larger. The titles give the "
        "predicted response of the readout fitted on all stimuli (not the held-out prediction of the montage).")


def group_drivers_section(ctx: GroupContext, section: Section) -> None:
    """The group report's "what drives a region" section."""
    model = drivers_model_label(ctx.spec)
    path = ctx.layout.group_table(model, "summary", suffix="drivers")
    summary = read_table(path)
    if summary is None or not len(summary):
        section.note(f"What drives each region across participants is not available ({path.name} not found: "
                     "analyses.drivers is disabled, or the group level has not run).")
        return
    n_top = ctx.spec.analyses.drivers.n_top
    try:
        stimuli = read_stimuli(ctx.layout)
    except FileNotFoundError:
        stimuli = None
        section.note("The stimulus table is not available; the stimuli are shown as grey tiles.")
    thumbnails = ThumbnailCache(stimuli, 2 * THUMBNAIL)
    section.paragraph(
        f"Per ROI and stimulus the mean across participants of the measured and of the held-out predicted mean "
        f"response (model {model}), each z-scored over the stimuli within every participant so that participants "
        "with larger responses do not dominate.")
    for roi in dict.fromkeys(summary["roi"]):
        rows = summary[summary["roi"] == roi].reset_index(drop=True)
        section.heading(f"ROI {roi}", id=f"group-drivers-{roi}")
        section.kv([("layers chosen (participants)", rows["layers"].iloc[0] if "layers" in rows else "n/a"),
                    ("participants", fmt_int(rows["n_subjects"].max()) if "n_subjects" in rows else "n/a"),
                    ("stimuli", len(rows))], id=f"group-drivers-{roi}-summary")
        shown = min(n_top, MONTAGE_MAX_PER_END)
        section.add(_extremes_montage(
            ctx.figures, f"task-{ctx.layout.task}_model-{model}_label-{roi}_desc-drivers_montage", rows,
            ("mean_z_measured", "mean_z_predicted"), shown, thumbnails, f"stimuli driving ROI {roi} across participants",
            f"The {shown} stimuli with the highest and the lowest mean z-scored measured response of ROI {roi} across "
            f"{len(ctx.subjects)} participants, and those with the highest and lowest mean z-scored predicted "
            "response; in brackets the mean z. Lowest first in the 'lowest' rows."))
        section.add(ctx.figures.figure(
            f"task-{ctx.layout.task}_model-{model}_label-{roi}_desc-drivers_scatter",
            lambda fig, t=rows: draw_driver_scatter(
                fig, t["mean_z_measured"], t["mean_z_predicted"], t["stim_id"], shown, f"ROI {roi}",
                xlabel="mean z measured", ylabel="mean z predicted (held out)"),
            (5.5, 3.8), f"mean predicted vs measured response of ROI {roi}",
            "Mean z-scored held-out predicted vs measured response of every stimulus across participants (dashed: "
            "least-squares line)."))
        section.add(_extremes_table(rows, [
            Col("stim_id", "stimulus"), Col("n_subjects", "n", fmt_int),
            Col("mean_z_measured", "mean z measured", fmt_sig(3)), Col("rank_measured", "rank (measured)", fmt_int),
            Col("mean_z_predicted", "mean z predicted", fmt_sig(3)),
            Col("rank_predicted", "rank (predicted)", fmt_int), Col("layers", "layers", fmt_text)],
            "mean_z_measured", n_top, f"group-drivers-{roi}-table", path.name))
    _missing_note(section, thumbnails, "group-drivers-texts")
