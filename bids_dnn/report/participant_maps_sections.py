"""The whole-brain maps section of the participant report: searchlight and encoding.

Shown only when the participant's searchlight / encoding maps or encoding ROI tables exist:
per model, the signed maps of every layer on one colour scale with a summary table per map
(voxels with a value, range, peak, flags), the encoding noise-ceiling map, and the encoding ROI
profile and table. Everything is read from the output folder; see :mod:`bids_dnn.report.inputs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_dnn.report import figures as figs
from bids_dnn.report.assemble import Col, Section, fmt_fixed, fmt_int, fmt_score, fmt_sig, table_block
from bids_dnn.report.common import edge_flagged, encoding_table_warnings, fmt_share, parse_bool
from bids_dnn.report.inputs import MapFile, load_volume, read_table
from bids_dnn.spec import sanitize_label

if TYPE_CHECKING:
    from bids_dnn.report.participant_report import ParticipantContext

#: map rows per figure (more are split over several figures)
MAP_ROWS = 8


def _map_flag(item: MapFile, values: np.ndarray) -> str:
    """What is suspicious about a map's values: ceiling-normalised R2 outside [0, 1], penalties at
    the edge of the ridge grid ("" when nothing is)."""
    from bids_dnn.encoding import at_alpha_grid_edge, outside_unit_interval

    finite = np.isfinite(values)
    if item.stat == "normr2" and finite.any():
        outside = int(outside_unit_interval(values).sum())
        if outside:
            return f"{outside} of {int(finite.sum())} voxels outside [0, 1]"
    grid = item.sidecar.get("Alphas")
    if item.stat == "alpha" and finite.any() and isinstance(grid, list) and len(grid) >= 2:
        share = float(at_alpha_grid_edge(values[finite], grid).mean())
        if edge_flagged(share):
            return f"{share:.0%} of voxels at the edge of the alpha grid ({min(grid):g} .. {max(grid):g})"
    return ""


def _map_summary_rows(maps: list[MapFile]) -> pd.DataFrame:
    rows = []
    for item in maps:
        values, image = load_volume(item.path)
        finite = values[np.isfinite(values)]
        peak_xyz = ""
        if finite.size:
            flat = np.where(np.isfinite(values), np.abs(values), -np.inf)
            ijk = np.unravel_index(int(np.argmax(flat)), values.shape)
            xyz = image.affine @ np.array([*ijk, 1.0])
            peak_xyz = f"({xyz[0]:.0f}, {xyz[1]:.0f}, {xyz[2]:.0f})"
        rows.append({"model": item.model or "", "layer": item.layer or "", "stat": item.stat,
                     "n_voxels": int(finite.size), "mean": float(finite.mean()) if finite.size else np.nan,
                     "max": float(finite.max()) if finite.size else np.nan,
                     "min": float(finite.min()) if finite.size else np.nan, "peak": peak_xyz,
                     "flag": _map_flag(item, values), "file": item.path.name})
    return pd.DataFrame(rows)


MAP_COLUMNS = [Col("model", "model"), Col("layer", "layer"), Col("stat", "statistic"),
               Col("n_voxels", "voxels with a value", fmt_int), Col("mean", "mean", fmt_sig(3)),
               Col("min", "min", fmt_sig(3)), Col("max", "max", fmt_sig(3)),
               Col("peak", "peak |value| at (x, y, z) mm"),
               Col("flag", "flag", css=lambda r: "bad" if r["flag"] else "")]


def _layer_sorted(ctx: ParticipantContext, model: str, items: list[MapFile]) -> list[MapFile]:
    order = {sanitize_label(layer): i for i, layer in enumerate(ctx.layers(model))}
    return sorted(items, key=lambda m: (order.get(m.layer_label or "", 10**6), m.layer_label or "", m.stat))


def _signed_map_figures(ctx: ParticipantContext, section: Section, name: str, rows: list[tuple[str, Any]],
                        alt: str, caption: str) -> None:
    """Figures of signed maps on one robust symmetric colour scale, stated in the caption."""
    background, _ = ctx.background
    images = [image for _, image in rows]
    vmax = figs.robust_abs_limit(images)
    section.blocks += ctx.figures.figures(
        name, rows, MAP_ROWS, lambda fig, part, v=vmax: figs.draw_stat_map_rows(fig, part, background, vmax=v),
        lambda part: (11, 1.9 * len(part) + 0.3), alt, f"{caption} {figs.robust_limit_note(vmax, images)}")


def _flag_warnings(section: Section, summary: pd.DataFrame) -> None:
    """One warning per flagged statistic of a map summary table, naming its flagged layers."""
    advice = {"normr2": ("ceiling-normalised R²", "where a voxel's split-half ceiling is small or R² is negative "
                         "(noise voxels) the ratio is not a fraction of the explainable variance: read R² and the "
                         "noise-ceiling map instead"),
              "alpha": ("ridge penalty (alpha)", "extend analyses.encoding.alphas (at the top edge: no learnable "
                        "signal, the prediction is the mean response)")}
    flagged = summary[summary["flag"] != ""]
    for (model, stat), rows in flagged.groupby(["model", "stat"], sort=False):
        what, hint = advice.get(str(stat), (str(stat), ""))
        items = "; ".join(f"{r['layer']}: {r['flag']} (range {r['min']:.3g} to {r['max']:.3g})"
                          for _, r in rows.iterrows())
        section.warning(f"{model} {what}: {items}. {hint[:1].upper() + hint[1:]}.")


def _ceiling_image(path: Path) -> tuple[Any, int, int]:
    """The noise-ceiling map with values <= 0 (no reproducible profile) set to NaN; and the counts
    of voxels with a value and of those at or below 0."""
    import nibabel as nib

    values, image = load_volume(path)
    finite = np.isfinite(values)
    low = finite & (values <= 0)
    shown = np.where(finite & ~low, values, np.nan).astype(np.float32)
    return nib.Nifti1Image(shown, image.affine), int(finite.sum()), int(low.sum())


def _model_maps(ctx: ParticipantContext, section: Section, analysis: str, model: str, items: list[MapFile],
                stat: str, row_title: str, caption: str) -> pd.DataFrame:
    """The figures of one model's ``stat`` maps (one row per layer) and the summary table of all its maps.

    Parameters
    ----------
    analysis : str
        ``searchlight`` or ``encoding``: names the figures, their alt text and the table id.
    items : list of MapFile
        Every map of ``model`` in ``analysis`` (all statistics, all layers).
    stat : str
        The statistic whose maps are drawn.
    row_title : str
        Text between the layer and ``stat`` in each row's title (``"held-out "`` or ``""``).
    caption : str
        The figure caption (the colour-scale note is appended).

    Returns
    -------
    pandas.DataFrame
        The summary table, one row per map (see :func:`_map_summary_rows`).
    """
    import nibabel as nib

    shown = _layer_sorted(ctx, model, [m for m in items if m.stat == stat])
    _signed_map_figures(
        ctx, section, f"sub-{ctx.subject}_model-{model}_desc-{analysis}_map",
        [(f"{m.layer}: {row_title}{stat}", nib.load(str(m.path))) for m in shown], f"{analysis} maps {model}",
        caption)
    summary = _map_summary_rows(_layer_sorted(ctx, model, items))
    section.add(table_block(summary, MAP_COLUMNS, id=f"{analysis}-{model}"))
    return summary


def _searchlight_maps(ctx: ParticipantContext, section: Section, description: str) -> None:
    """Per model: the searchlight maps of the spec's comparison (else the first statistic other than z),
    over the underlay ``description`` names."""
    searchlight = ctx.maps["searchlight"]
    if not searchlight:
        return
    section.heading("Searchlight RSA", id="maps-searchlight")
    wanted = sanitize_label(ctx.spec.analyses.searchlight.comparison)
    for model in dict.fromkeys(m.model for m in searchlight if m.model):
        items = [m for m in searchlight if m.model == model]
        stat = wanted if any(m.stat == wanted for m in items) else next(
            (m.stat for m in items if m.stat != "z"), items[0].stat)
        _model_maps(
            ctx, section, "searchlight", model, items, stat, "",
            f"Searchlight {stat} between each sphere's RDM and the layer's model RDM, at the sphere centres "
            f"(radius {ctx.spec.analyses.searchlight.radius_mm:g} mm), over the {description}; unthresholded.")


def _noise_ceiling_map(ctx: ParticipantContext, section: Section, ceiling: MapFile, background: Any,
                       description: str) -> None:
    """The split-half reliability map on a fixed 0-1 scale over ``background``, voxels at or below 0
    not coloured."""
    image, n_values, n_low = _ceiling_image(ceiling.path)
    rows = [("noise ceiling (split-half reliability)", image)]
    section.add(ctx.figures.figure(
        f"sub-{ctx.subject}_desc-encoding_noiseceiling",
        lambda fig: figs.draw_stat_map_rows(fig, rows, background, cmap="inferno", symmetric=False, vmax=1.0),
        (11, 2.2), "encoding noise ceiling",
        f"Split-half reliability of each voxel's stimulus profile (odd vs even runs, Spearman-Brown), over the "
        f"{description}. Colour scale 0 to 1, the range of a reliability; the {n_low} of {n_values} voxels "
        "at or below 0 (no reproducible stimulus profile; Spearman-Brown of a negative split-half r) are not "
        "coloured."))


def _encoding_roi_table(ctx: ParticipantContext, section: Section, model: str, table: pd.DataFrame) -> None:
    """The encoding ROI profile (mean held-out R² per layer, noise ceiling per ROI) and its table."""
    present = list(dict.fromkeys(str(x) for x in table["layer"]))
    layers = [layer for layer in ctx.layers(model) if layer in present]
    layers += [layer for layer in present if layer not in layers]
    bands = {str(roi): (float(rows["noise_ceiling"].iloc[0]),) * 2
             for roi, rows in table.groupby("roi", sort=False)} if "noise_ceiling" in table else {}
    section.add(ctx.figures.figure(
        f"sub-{ctx.subject}_model-{model}_desc-encoding_profile",
        lambda fig, t=table, lay=layers, m=model, b=bands: figs.draw_line_profile(
            fig, t, lay, "mean_r2", "mean held-out R²", f"{m}: encoding per ROI and layer", ceiling=b),
        (8, 3.6), f"encoding ROI profile {model}",
        "Mean over the ROI's voxels of the held-out R²; dashed line in the ROI's colour: its noise ceiling "
        "(split-half reliability of the ROI, the R² a perfect model could reach)."))
    section.add(table_block(table, [
        Col("roi", "ROI"), Col("layer", "layer"), Col("n_voxels", "voxels", fmt_int),
        Col("mean_r", "mean r", fmt_score), Col("mean_r2", "mean R²", fmt_fixed(4)),
        Col("noise_ceiling", "noise ceiling", fmt_score),
        Col("normalized_r2", "R² / ceiling", fmt_score,
            css=lambda r: "bad" if parse_bool(r.get("normalized_r2_out_of_range")) else ""),
        Col("median_alpha", "median alpha", fmt_sig(3)),
        Col("alpha_at_grid_edge", "alpha at grid edge", fmt_share,
            css=lambda r: "bad" if edge_flagged(r.get("alpha_at_grid_edge")) else ""),
        Col("cv", "CV"), Col("n_folds", "folds", fmt_int)],
        id=f"encoding-table-{model}", caption=ctx.layout.encoding_table(ctx.subject, model).name))
    for warning in encoding_table_warnings(table, "normalized_r2", "normalized_r2_out_of_range",
                                           "alpha_at_grid_edge"):
        section.warning(warning)


def _encoding_maps(ctx: ParticipantContext, section: Section, background: Any, description: str) -> None:
    """Per model: the held-out r maps (else the first statistic) with their flags; the noise-ceiling
    map over ``background``; per model the ROI profile and table."""
    encoding = ctx.maps["encoding"]
    tables = {m.output_label: read_table(ctx.layout.encoding_table(ctx.subject, m.output_label))
              for m in ctx.spec.models}
    tables = {k: v for k, v in tables.items() if v is not None and len(v)}
    if not (encoding or tables):
        return
    section.heading("Encoding", id="maps-encoding")
    ceiling = [m for m in encoding if m.stat == "noiseceiling" and not m.model]
    for model in dict.fromkeys(m.model for m in encoding if m.model):
        items = [m for m in encoding if m.model == model]
        stat = "r" if any(m.stat == "r" for m in items) else items[0].stat
        summary = _model_maps(
            ctx, section, "encoding", model, items, stat, "held-out ",
            f"Cross-validated ridge encoding: held-out {stat} per voxel for each layer of {model}, over the "
            f"{description}; unthresholded.")
        _flag_warnings(section, summary)
    if ceiling:
        _noise_ceiling_map(ctx, section, ceiling[0], background, description)
    for model, table in tables.items():
        _encoding_roi_table(ctx, section, model, table)


def maps_section(ctx: ParticipantContext, section: Section) -> None:
    """The section "Searchlight and encoding maps": the searchlight block, then the encoding block
    (each only when its outputs exist)."""
    background, description = ctx.background
    _searchlight_maps(ctx, section, description)
    _encoding_maps(ctx, section, background, description)
