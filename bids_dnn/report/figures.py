"""Drawing functions of the reports (matplotlib and nilearn plotting).

Every ``draw_*`` function takes an empty matplotlib figure first and draws into it; it reads
no files and writes nothing (:class:`bids_dnn.report.assemble.FigureMaker` saves and embeds).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bids_dnn.report.thumbnails import TEXT_TILE_COLOUR, TEXT_TILE_USABLE, Thumbnail, text_in_tile

#: categorical colours (matplotlib tab10, then tab20 for more categories)
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
         "#bcbd22", "#17becf"]


def colors_for(names: Sequence[str]) -> dict[str, Any]:
    """A stable colour per name (in order of first appearance)."""
    unique = list(dict.fromkeys(names))
    if len(unique) <= len(TAB10):
        return {name: TAB10[i] for i, name in enumerate(unique)}
    import matplotlib

    if len(unique) <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return {name: cmap(i) for i, name in enumerate(unique)}
    cmap = matplotlib.colormaps["hsv"]
    return {name: cmap(i / len(unique)) for i, name in enumerate(unique)}


# ---------------------------------------------------------------------------------------
# Stimuli
# ---------------------------------------------------------------------------------------


def draw_montage(fig: Any, groups: Sequence[tuple[str, Sequence[tuple[str, Any]]]], thumb: int = 72,
                 per_row: int = 12) -> None:
    """Thumbnails grouped by category: one strip per category (wrapped every ``per_row``).

    ``groups``: (category, [(label, tile), ...]); a tile is a PIL image, a
    :class:`bids_dnn.report.thumbnails.Thumbnail` or None (a grey "missing" placeholder). Pictures
    are shrunk to fit ``thumb`` pixels; a text thumbnail's text is written into its tile, wrapped
    and ellipsised to fit (:func:`bids_dnn.report.thumbnails.text_in_tile`), in one font size for
    all; a thumbnail's caption (a sound's duration and sampling rate) is a second label line.
    """
    from PIL import Image

    pad = 6
    tiles = [tile for _, items in groups for _, tile in items]
    label = 24 if any(isinstance(tile, Thumbnail) and tile.caption for tile in tiles) else 14
    per_row = max(1, min(per_row, max((len(items) for _, items in groups), default=1)))
    rows = [max(1, math.ceil(len(items) / per_row)) for _, items in groups]
    grid = fig.add_gridspec(len(groups), 1, height_ratios=rows, hspace=0.25)
    colors = colors_for([c for c, _ in groups])
    text_tiles = []
    for g, ((category, items), n_rows) in enumerate(zip(groups, rows)):
        width = per_row * (thumb + pad) + pad
        height = n_rows * (thumb + pad + label) + pad
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        positions, texts = [], []
        for k, (stim_id, tile) in enumerate(items):
            r, c = divmod(k, per_row)
            x0, y0 = pad + c * (thumb + pad), pad + r * (thumb + pad + label)
            thumbnail = tile if isinstance(tile, Thumbnail) else None
            picture = thumbnail.image if thumbnail is not None else tile
            if picture is None:
                piece = Image.new("RGB", (thumb, thumb), (205, 205, 205))
            elif thumbnail is not None and thumbnail.text is not None:
                piece = Image.new("RGB", (thumb, thumb), TEXT_TILE_COLOUR)
                texts.append((x0, y0, thumbnail.text))
            else:
                piece = picture.copy()
                piece.thumbnail((thumb, thumb))
            canvas.paste(piece, (x0 + (thumb - piece.width) // 2, y0 + (thumb - piece.height) // 2))
            caption = thumbnail.caption if thumbnail is not None else ""
            positions.append((x0 + thumb / 2, y0 + thumb + label * 0.55, stim_id, picture is None, caption))
        ax = fig.add_subplot(grid[g])
        ax.imshow(np.asarray(canvas), interpolation="lanczos")
        for x, y, stim_id, missing, caption in positions:
            spacing = {"linespacing": 1.1} if caption else {}
            ax.text(x, y, stim_id + (" (missing)" if missing else "") + (f"\n{caption}" if caption else ""),
                    ha="center", va="center", fontsize=6, color="0.25", **spacing)
        if texts:
            text_tiles.append((ax, thumb * _points_per_pixel(fig, ax, canvas.width, canvas.height), texts))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(f"{category}\n(n={len(items)})", rotation=0, ha="right", va="center", fontsize=10,
                      color=colors[category], fontweight="bold")
    _write_text_tiles(text_tiles, thumb)


def _write_text_tiles(text_tiles: list[tuple[Any, float, list[tuple[int, int, str]]]], thumb: int) -> None:
    """Write each text into its tile, in one font size: the largest at which every text fits, else the
    smallest (the texts that do not fit end with an ellipsis)."""
    if not text_tiles:
        return
    size = min(text_in_tile(text, points)[1] for _, points, texts in text_tiles for _, _, text in texts)
    inset = (1 - TEXT_TILE_USABLE) / 2 * thumb
    for ax, points, texts in text_tiles:
        for x0, y0, text in texts:
            lines, _ = text_in_tile(text, points, size)
            ax.text(x0 + inset, y0 + inset, "\n".join(lines), ha="left", va="top", fontsize=size, color="0.1",
                    linespacing=1.15, clip_on=True)


def _points_per_pixel(fig: Any, ax: Any, width: int, height: int) -> float:
    """Points per canvas pixel of an ``imshow`` of a ``width`` x ``height`` canvas (equal aspect)."""
    ax.apply_aspect()
    box = ax.get_position()
    return min(box.width * fig.get_figwidth() * 72.0 / width, box.height * fig.get_figheight() * 72.0 / height)


# ---------------------------------------------------------------------------------------
# Brain images
# ---------------------------------------------------------------------------------------


def z_cuts(images: Sequence[Any], n: int = 6) -> list[float]:
    """Up to ``n`` axial world coordinates spread over the non-zero finite voxels of ``images``."""
    zs: list[float] = []
    for image in images:
        data = np.asarray(image.dataobj, dtype=np.float64)
        if data.ndim == 4:
            data = np.nanmax(np.abs(data), axis=-1)
        ijk = np.argwhere(np.isfinite(data) & (data != 0))
        if ijk.size:
            ks = np.unique(ijk[:, 2])
            world = image.affine @ np.c_[np.zeros((ks.size, 2)), ks, np.ones(ks.size)].T
            zs.extend(world[2])
    if not zs:
        return [0.0]
    unique = np.unique(np.round(zs, 3))
    if unique.size <= n:
        return [float(z) for z in unique]
    picks = np.linspace(0, unique.size - 1, n + 2)[1:-1]
    return [float(unique[int(round(p))]) for p in picks]


def draw_roi_overlay(fig: Any, background: Any, rois: dict[str, Any], counts: dict[str, int]) -> None:
    """ROI masks as filled contours on axial slices of ``background`` (nilearn ``plot_anat``)."""
    from matplotlib.patches import Patch
    from nilearn import plotting

    cuts = z_cuts(list(rois.values()), 7)
    colors = colors_for(list(rois))
    display = plotting.plot_anat(background, display_mode="z", cut_coords=cuts, figure=fig,
                                 axes=[0.0, 0.14, 1.0, 0.86], draw_cross=False, annotate=True, black_bg=True,
                                 dim=-0.3, colorbar=False)
    for name, image in rois.items():
        data = np.asarray(image.dataobj)
        if not np.any(data > 0):
            continue
        # vmin / vmax given: nilearn would otherwise take them from slices that may miss the ROI
        display.add_contours(image, filled=True, levels=[0.5], colors=[colors[name]], vmin=0.0, vmax=1.0,
                             **_transparency(0.55))
        display.add_contours(image, levels=[0.5], colors=[colors[name]], linewidths=1.0, vmin=0.0, vmax=1.0)
    handles = [Patch(facecolor=colors[n], edgecolor="k", label=f"{n} ({counts.get(n, '?')} voxels)") for n in rois]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=9)


#: percentile of |value| that sets the colour limits of signed maps (one extreme voxel must not
#: wash out the rest: e.g. a group t map with a maximum of 202 and a 99th percentile of 7.3)
ROBUST_PERCENTILE = 99.0


def robust_abs_limit(images: Sequence[Any], percentile: float = ROBUST_PERCENTILE) -> float:
    """Symmetric colour limit shared by ``images``: the ``percentile`` of |value| over their
    finite non-zero voxels (zeros are the not-shown voxels of a thresholded map).

    Values beyond the limit are drawn in the end colour of the scale. 1.0 when no voxel has a
    value.

    Parameters
    ----------
    images : sequence of nibabel images
        The maps shown on one colour scale.
    percentile : float
        Percentile of the absolute values (default :data:`ROBUST_PERCENTILE`).

    Returns
    -------
    float
        The limit ``vmax`` (colour scale ``-vmax .. vmax``).
    """
    values = []
    for image in images:
        data = np.abs(np.asarray(image.dataobj, dtype=np.float64))
        values.append(data[np.isfinite(data) & (data > 0)])
    pooled = np.concatenate(values) if values else np.array([])
    if not pooled.size:
        return 1.0
    limit = float(np.percentile(pooled, percentile))
    return limit if limit > 0 else 1.0


def robust_limit_note(vmax: float, images: Sequence[Any], percentile: float = ROBUST_PERCENTILE) -> str:
    """Caption text stating a colour scale set by :func:`robust_abs_limit` (and how many voxels lie beyond it)."""
    beyond = 0
    for image in images:
        data = np.abs(np.asarray(image.dataobj, dtype=np.float64))
        beyond += int((np.isfinite(data) & (data > vmax * (1 + 1e-6))).sum())
    text = f"Colour scale ±{vmax:.3g}: the {percentile:g}th percentile of |value| over the voxels shown"
    return text + (f"; {beyond} voxel(s) beyond it are drawn in the end colour." if beyond else ".")


def _transparency(value: float) -> dict[str, float]:
    """nilearn >= 0.12 names the overlay opacity ``transparency``; older versions ``alpha``."""
    from nilearn.plotting.displays import BaseSlicer

    params = inspect.signature(BaseSlicer.add_overlay).parameters
    return {"transparency": value} if "transparency" in params else {"alpha": value}


def _nan_to_zero(image: Any) -> Any:
    import nibabel as nib

    data = np.asarray(image.dataobj, dtype=np.float32)
    return nib.Nifti1Image(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), image.affine)


def draw_stat_map_rows(fig: Any, rows: Sequence[tuple[str, Any]], background: Any, *, cmap: str = "cold_hot",
                       symmetric: bool = True, threshold: float | None = None, vmax: float | None = None,
                       glass: Sequence[Any] | None = None, n_cuts: int = 6) -> None:
    """One row of axial slices per map (``rows``: (title, image)), optionally a glass brain beside each.

    NaN voxels are not shown. ``vmax`` (shared colour scale) defaults to the robust limit of all
    maps (:func:`robust_abs_limit`); with ``symmetric=False`` the scale runs from 0 to ``vmax``.
    """
    with warnings.catch_warnings():
        # nilearn warns about empty maps (nothing survives a threshold): the title says so already
        warnings.simplefilter("ignore", UserWarning)
        _stat_map_rows(fig, rows, background, cmap=cmap, symmetric=symmetric, threshold=threshold, vmax=vmax,
                       glass=glass, n_cuts=n_cuts)


def _stat_map_rows(fig: Any, rows: Sequence[tuple[str, Any]], background: Any, *, cmap: str, symmetric: bool,
                   threshold: float | None, vmax: float | None, glass: Sequence[Any] | None, n_cuts: int) -> None:
    from nilearn import plotting

    images = [_nan_to_zero(image) for _, image in rows]
    if vmax is None:
        vmax = robust_abs_limit(images)
    vmax = vmax if vmax and np.isfinite(vmax) and vmax > 0 else 1.0
    cuts = z_cuts(images, n_cuts)
    n = len(images)
    left_width = 0.72 if glass is not None else 1.0
    for i, ((title, _), image) in enumerate(zip(rows, images)):
        bottom = 1.0 - (i + 1) / n
        kwargs: dict[str, Any] = {"threshold": threshold if threshold is not None else 1e-12}
        if not symmetric:
            kwargs["vmin"] = 0.0
        plotting.plot_stat_map(image, bg_img=background, display_mode="z", cut_coords=cuts, figure=fig,
                               axes=[0.0, bottom + 0.02 / n, left_width, 0.96 / n], title=title, cmap=cmap,
                               vmax=vmax, symmetric_cbar=symmetric, colorbar=True, annotate=(i == n - 1),
                               draw_cross=False, black_bg=True, **kwargs)
        if glass is not None and glass[i] is not None:
            # the same scale as the slices: symmetric maps need vmin = -vmax (nilearn would start at the
            # data's minimum, 0 for a thresholded positive map, and draw small t values in the cold half)
            glass_kwargs = {**kwargs, "vmin": -vmax} if symmetric else kwargs
            plotting.plot_glass_brain(_nan_to_zero(glass[i]), display_mode="z", figure=fig,
                                      axes=[left_width + 0.01, bottom + 0.02 / n, 1.0 - left_width - 0.01, 0.96 / n],
                                      cmap=cmap, vmax=vmax, colorbar=False, plot_abs=False,
                                      annotate=False, black_bg=False, **glass_kwargs)


# ---------------------------------------------------------------------------------------
# RDMs
# ---------------------------------------------------------------------------------------


def mds_2d(square: np.ndarray, seed: int) -> np.ndarray:
    """2D metric MDS of a dissimilarity matrix (sklearn, precomputed, seeded).

    The matrix is symmetrised with a zero diagonal; negative dissimilarities (crossnobis noise)
    are handled by adding the smallest constant that makes all of them non-negative.
    """
    from sklearn.manifold import MDS

    d = np.asarray(square, dtype=np.float64)
    d = (d + d.T) / 2.0
    off = ~np.eye(len(d), dtype=bool)
    values = d[off]
    if not np.isfinite(values).any():
        raise ValueError("the RDM has no finite dissimilarity")
    d[~np.isfinite(d)] = np.nanmax(values[np.isfinite(values)])
    low = d[off].min()
    if low < 0:
        d[off] -= low
    np.fill_diagonal(d, 0.0)
    params = inspect.signature(MDS).parameters
    if "metric_mds" in params and "init" in params:  # scikit-learn >= 1.8
        mds = MDS(n_components=2, metric="precomputed", metric_mds=True, init="classical_mds", n_init=1,
                  random_state=seed, normalized_stress="auto")
    else:
        mds = MDS(n_components=2, dissimilarity="precomputed", random_state=seed, n_init=4, normalized_stress="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mds.fit_transform(d)


def _category_ticks(ax: Any, categories: Sequence[str], axis_labels: bool = True) -> None:
    n = len(categories)
    bounds = [i for i in range(1, n) if categories[i] != categories[i - 1]]
    for b in bounds:
        ax.axhline(b - 0.5, color="w", lw=0.8)
        ax.axvline(b - 0.5, color="w", lw=0.8)
    starts = [0, *bounds]
    ends = [*bounds, n]
    centres = [(s + e - 1) / 2 for s, e in zip(starts, ends)]
    names = [categories[s] for s in starts]
    if axis_labels and len(names) <= 24:
        ax.set_xticks(centres, names, rotation=90, fontsize=7)
        ax.set_yticks(centres, names, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.tick_params(length=0)


#: what the values of an RDM of each dissimilarity measure are (colour-bar labels)
RDM_UNITS = {
    "correlation": "1 - Pearson r",
    "cosine": "1 - cosine similarity",
    "euclidean": "Euclidean distance",
    "sqeuclidean": "squared Euclidean distance / n channels",
    "mahalanobis": "Mahalanobis distance / n channels",
    "crossnobis": "crossnobis distance",
}


def rdm_unit(measure: str | None) -> str:
    """The colour-bar label of an RDM of ``measure`` (the measure's name when it is not known)."""
    if not measure:
        return "dissimilarity"
    return RDM_UNITS.get(str(measure), f"{measure} dissimilarity")


def draw_rdm_grid(fig: Any, panels: Sequence[tuple[str, np.ndarray]], categories: Sequence[str], seed: int,
                  max_cols: int = 4, value_label: str = "dissimilarity") -> None:
    """Per panel an RDM heatmap (rows ordered by category) and its 2D MDS below it.

    ``panels``: (title, square RDM already in category order); ``categories``: the row categories;
    ``value_label``: the values' unit, written on every colour bar (see :func:`rdm_unit`).
    """
    from matplotlib.lines import Line2D

    n = len(panels)
    cols = min(n, max_cols)
    blocks = math.ceil(n / cols)
    grid = fig.add_gridspec(2 * blocks, cols, hspace=0.45, wspace=0.35)
    colors = colors_for(categories)
    point_colors = [colors[c] for c in categories]
    for k, (title, square) in enumerate(panels):
        b, c = divmod(k, cols)
        ax = fig.add_subplot(grid[2 * b, c])
        off = square[~np.eye(len(square), dtype=bool)]
        off = off[np.isfinite(off)]
        vmin, vmax = (np.percentile(off, [1, 99]) if off.size else (0.0, 1.0))
        image = ax.imshow(square, cmap="viridis", interpolation="nearest", vmin=vmin, vmax=vmax)
        _category_ticks(ax, categories, axis_labels=(c == 0))
        ax.set_title(title, fontsize=9)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=6)
        bar.set_label(value_label, fontsize=6)
        ax2 = fig.add_subplot(grid[2 * b + 1, c])
        coords = mds_2d(square, seed)
        ax2.scatter(coords[:, 0], coords[:, 1], c=point_colors, s=22, edgecolors="k", linewidths=0.3)
        ax2.set_title("MDS", fontsize=8)
        ax2.set_xticks([])
        ax2.set_yticks([])
        ax2.set_box_aspect(1)
        ax2.set_aspect("equal", adjustable="datalim")
    handles = [Line2D([], [], marker="o", ls="", color=colors[c], markeredgecolor="k", label=c) for c in colors]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, -0.02))


# ---------------------------------------------------------------------------------------
# Layer profiles
# ---------------------------------------------------------------------------------------


def draw_rsa_profile(fig: Any, table: pd.DataFrame, layers: Sequence[str], alpha: float, ylabel: str,
                     title: str) -> None:
    """Participant RSA score per layer, one line per ROI; filled stars where p_permutation < alpha."""
    from matplotlib.lines import Line2D

    ax = fig.add_subplot(1, 1, 1)
    rois = list(dict.fromkeys(table["roi"]))
    colors = colors_for(rois)
    x = np.arange(len(layers))
    for roi in rois:
        rows = table[table["roi"] == roi].set_index("layer").reindex(layers)
        scores = rows["score"].to_numpy(dtype=float)
        ax.plot(x, scores, "-o", color=colors[roi], mfc="white", ms=5, lw=1.6, label=roi)
        if "p_permutation" in rows:
            significant = rows["p_permutation"].to_numpy(dtype=float) < alpha
            ax.plot(x[significant], scores[significant], "*", ms=13, color=colors[roi], mec="k", mew=0.5)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", ls="", color="0.4", mec="k", ms=11,
                          label=f"permutation p < {alpha:g} (uncorrected)"))
    ax.legend(handles=handles, fontsize=8, loc="best", frameon=False)


def draw_line_profile(fig: Any, table: pd.DataFrame, layers: Sequence[str], value: str, ylabel: str, title: str,
                      error: str | None = None, ceiling: dict[str, tuple[float, float]] | None = None,
                      best: str | None = None) -> None:
    """A value per layer, one line per ROI (encoding summaries).

    ``ceiling``: per ROI the noise-ceiling band (low, high), drawn in the ROI's colour behind its
    line (a dashed line when low == high); non-finite bands are skipped. ``best``: a boolean
    column marking each ROI's best layer (a triangle above the point).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax = fig.add_subplot(1, 1, 1)
    rois = list(dict.fromkeys(table["roi"]))
    colors = colors_for(rois)
    x = np.arange(len(layers))
    bands = marked = False
    for roi in rois:
        rows = table[table["roi"] == roi].set_index("layer").reindex(layers)
        y = rows[value].to_numpy(dtype=float)
        yerr = rows[error].to_numpy(dtype=float) if error and error in rows else None
        ax.errorbar(x, y, yerr=yerr, fmt="-o", color=colors[roi], ms=5, capsize=2, label=roi)
        low, high = (ceiling or {}).get(roi, (np.nan, np.nan))
        if np.isfinite(low) and np.isfinite(high):
            if high > low:
                ax.axhspan(low, high, color=colors[roi], alpha=0.18, lw=0)
            else:
                ax.axhline(low, color=colors[roi], lw=1.2, ls="--", alpha=0.8)
            bands = True
        if best and best in rows:
            chosen = rows[best].map(lambda v: str(v).lower() in ("true", "1")).to_numpy()
            top = y + (np.nan_to_num(yerr) if yerr is not None else 0.0)
            ax.scatter(x[chosen], top[chosen], marker="v", s=46, color=colors[roi], edgecolors="k",
                       linewidths=0.4, zorder=4, clip_on=False)
            marked = marked or bool(chosen.any())
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if bands:
        handles.append(Patch(color="0.5", alpha=0.3, label="noise ceiling (ROI colour)"))
    if marked:
        handles.append(Line2D([], [], marker="v", ls="", color="0.3", mec="k", label="best layer"))
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))


def draw_group_profiles(fig: Any, summaries: dict[str, pd.DataFrame], rois: Sequence[str], alpha: float,
                        correction: str, max_cols: int = 3) -> None:
    """Per ROI: mean score per layer of every model with CI (else SEM) error bars, noise-ceiling band,
    filled markers where significant after correction, a star on the cross-validated best layer."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cols = min(len(rois), max_cols)
    n_rows = math.ceil(len(rois) / cols)
    colors = colors_for(list(summaries))
    single = len(summaries) == 1
    used_ci = used_sem = False
    axes = []
    for k, roi in enumerate(rois):
        ax = fig.add_subplot(n_rows, cols, k + 1)
        axes.append(ax)
        band_drawn = False
        for model, summary in summaries.items():
            rows = summary[summary["roi"] == roi]
            if rows.empty:
                continue
            n = len(rows)
            x = np.arange(n) if single else (np.linspace(0, 1, n) if n > 1 else np.array([0.5]))
            mean = rows["mean"].to_numpy(dtype=float)
            low = rows["ci_low"].to_numpy(dtype=float) if "ci_low" in rows else np.full(n, np.nan)
            high = rows["ci_high"].to_numpy(dtype=float) if "ci_high" in rows else np.full(n, np.nan)
            if np.isfinite(low).all() and np.isfinite(high).all():
                yerr = np.vstack([mean - low, high - mean])
                used_ci = True
            else:
                yerr = rows["sem"].to_numpy(dtype=float) if "sem" in rows else None
                used_sem = yerr is not None
            if not band_drawn and {"noise_ceiling_lower", "noise_ceiling_upper"} <= set(rows.columns):
                lower, upper = float(rows["noise_ceiling_lower"].iloc[0]), float(rows["noise_ceiling_upper"].iloc[0])
                if np.isfinite(lower) and np.isfinite(upper):
                    ax.axhspan(lower, upper, color="0.6", alpha=0.3, lw=0)
                    band_drawn = True
            color = colors[model]
            ax.errorbar(x, mean, yerr=yerr, fmt="-", color=color, lw=1.5, capsize=2, zorder=2)
            significant = rows["significant"].map(lambda v: str(v).lower() in ("true", "1")).to_numpy() \
                if "significant" in rows else np.zeros(n, bool)
            ax.scatter(x[~significant], mean[~significant], s=30, facecolors="white", edgecolors=color, zorder=3)
            ax.scatter(x[significant], mean[significant], s=34, color=color, edgecolors="k", linewidths=0.4, zorder=3)
            if "best_layer_cv" in rows:
                best = rows["best_layer_cv"].map(lambda v: str(v).lower() in ("true", "1")).to_numpy()
                up = np.zeros(n) if yerr is None else (yerr[1] if np.ndim(yerr) == 2 else yerr)
                top = mean + np.nan_to_num(np.asarray(up, dtype=float))
                ax.scatter(x[best], top[best], marker="v", s=46, color=color, edgecolors="k", linewidths=0.4,
                           zorder=4, clip_on=False)
            if single:
                ax.set_xticks(x, list(rows["layer"]), rotation=40, ha="right", fontsize=7)
        if not single:
            ax.set_xticks([0, 0.5, 1], ["first", "middle", "last"], fontsize=7)
            ax.set_xlabel("relative layer depth", fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(roi, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("mean RSA score", fontsize=9)
    error_label = "bootstrap CI" if used_ci and not used_sem else ("SEM" if used_sem and not used_ci else "CI / SEM")
    handles: list[Any] = [Line2D([], [], color=colors[m], lw=1.5, label=f"{m} (mean ± {error_label})") for m in summaries]
    handles += [Patch(color="0.6", alpha=0.3, label="noise ceiling (lower-upper)"),
                Line2D([], [], marker="o", ls="", color="0.3", mec="k", label=f"significant ({correction}, alpha {alpha:g})"),
                Line2D([], [], marker="o", ls="", mfc="white", mec="0.3", label="not significant"),
                Line2D([], [], marker="v", ls="", color="0.3", mec="k",
                       label="best layer (cross-validated among significant)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=8, bbox_to_anchor=(0.5, -0.01))
    fig.subplots_adjust(bottom=0.26 if n_rows == 1 else 0.16, wspace=0.3, hspace=0.6)


def draw_comparison_matrices(fig: Any, comparisons: pd.DataFrame, layers_by_roi: dict[str, list[str]], p_column: str,
                             alpha: float, max_cols: int = 3) -> None:
    """Per ROI a layer x layer matrix of the mean score difference (row minus column), * where p < alpha."""
    rois = list(layers_by_roi)
    cols = min(len(rois), max_cols)
    n_rows = math.ceil(len(rois) / cols)
    peak = float(np.nanmax(np.abs(comparisons["mean_difference"].to_numpy(dtype=float)))) if len(comparisons) else 1.0
    peak = peak if np.isfinite(peak) and peak > 0 else 1.0
    for k, roi in enumerate(rois):
        layers = layers_by_roi[roi]
        index = {layer: i for i, layer in enumerate(layers)}
        matrix = np.full((len(layers), len(layers)), np.nan)
        stars = np.zeros_like(matrix, dtype=bool)
        for _, row in comparisons[comparisons["roi"] == roi].iterrows():
            a, b = index.get(str(row["layer_a"])), index.get(str(row["layer_b"]))
            if a is None or b is None:
                continue
            matrix[a, b] = row["mean_difference"]
            matrix[b, a] = -row["mean_difference"]
            p = row.get(p_column, np.nan)
            stars[a, b] = stars[b, a] = bool(np.isfinite(p) and p < alpha)
        ax = fig.add_subplot(n_rows, cols, k + 1)
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-peak, vmax=peak, interpolation="nearest")
        for a, b in zip(*np.nonzero(stars)):
            ax.text(b, a, "*", ha="center", va="center", fontsize=12, color="k")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set_title(roi, fontsize=10)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=6)
        if k % cols == cols - 1 or k == len(rois) - 1:
            bar.set_label("mean difference (row - column)", fontsize=7)
    fig.subplots_adjust(wspace=0.5, hspace=0.6)


def draw_bars(fig: Any, labels: Sequence[str], values: Sequence[float], ylabel: str, title: str,
              threshold: float | None = None) -> None:
    """A simple bar chart (e.g. split-half reliability per ROI) with an optional threshold line."""
    ax = fig.add_subplot(1, 1, 1)
    colors = colors_for(labels)
    ax.bar(range(len(labels)), values, color=[colors[label] for label in labels])
    if threshold is not None:
        ax.axhline(threshold, color="#d64545", lw=1, ls="--", label=f"warning below {threshold:g}")
        ax.legend(fontsize=8, frameon=False)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
