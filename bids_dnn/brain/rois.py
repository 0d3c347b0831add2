"""Regions of interest on the BOLD grid: atlas label tables, ROI masks from atlases or mask files.

Nibabel images (or paths), tables and boolean arrays in; ``{roi name: boolean mask}`` out; no
BIDS layouts, no printing; errors are :mod:`bids_dnn.errors` exceptions with readable messages.
ROI masks are resampled onto the BOLD grid with nearest-neighbour interpolation (labels are
never blended) and intersected with the brain mask.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from bids_dnn.brain.images import ImageLike, load_nifti, reference_image, resample_to_grid
from bids_dnn.errors import AnalysisError, BidsValidationError, InputMissingError

__all__ = [
    "apply_mask", "load_roi_masks_from_atlas", "load_roi_masks_from_files", "read_atlas_labels",
    "voxel_counts_table",
]


def _check_brain_mask(brain_mask: np.ndarray, reference: nib.Nifti1Image) -> np.ndarray:
    """The brain mask as bool; an AnalysisError when its shape is not the reference grid's."""
    mask = np.asarray(brain_mask)
    if mask.shape != reference.shape[:3]:
        raise AnalysisError(f"brain mask shape {mask.shape} does not match the BOLD grid {reference.shape[:3]}")
    return mask.astype(bool)


def read_atlas_labels(path: str | Path) -> pd.DataFrame:
    """Read an atlas labels table (``dseg.tsv``: columns ``index`` and ``name``).

    Names are text as written: ``NULL``, ``NA``, ``None``, ``nan`` or ``007`` are ROI names,
    not missing values or numbers (only ``n/a`` means missing, as in BIDS). ``index`` is
    converted to numbers.

    Raises
    ------
    BidsValidationError
        Not a readable TSV, no ``index`` / ``name`` column, a row without a name, or an index
        that is not a whole number.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=["n/a"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BidsValidationError(f"atlas labels table {path.name} is not a readable TSV ({exc.__class__.__name__})",
                                  "it needs tab-separated 'index' and 'name' columns") from None
    missing_cols = [c for c in ("index", "name") if c not in table.columns]
    if missing_cols:
        raise BidsValidationError(f"atlas labels table {path.name} lacks column(s) {', '.join(missing_cols)} "
                                  f"(has: {', '.join(map(str, table.columns))})")
    problems = [f"row {row + 2}: no name" for row in np.flatnonzero(table["name"].isna().to_numpy())]
    index = pd.to_numeric(table["index"].str.strip(), errors="coerce")
    bad = index.isna() | ~np.isclose(index.fillna(0), np.round(index.fillna(0)))
    problems += [f"row {row + 2}: index {table['index'].iloc[row]!r} is not a whole number"
                 for row in np.flatnonzero(bad.to_numpy())]
    if problems:
        raise BidsValidationError(f"atlas labels table {path.name}: " + "; ".join(problems[:5])
                                  + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
                                  "every row needs a whole-number index and a name")
    table["index"] = index.round().astype(int)
    return table


def load_roi_masks_from_atlas(
    atlas_img: ImageLike,
    labels_table: pd.DataFrame,
    target_img: ImageLike,
    brain_mask: np.ndarray,
    names: Sequence[str] | None = None,
    threshold: float | None = None,
    allow_empty: bool = False,
    file_label: Callable[[str], str] | None = None,
) -> dict[str, np.ndarray]:
    """ROI masks on the BOLD grid from a deterministic or probabilistic atlas.

    Parameters
    ----------
    atlas_img : nibabel image or path
        Deterministic atlas (3D, integer labels) or probabilistic atlas (4D, one volume per
        row of ``labels_table``, in table order; values in [0, 1] or percentages in [0, 100]).
    labels_table : pandas.DataFrame
        BIDS ``dseg.tsv``-style table with columns ``index`` (label value; for a
        probabilistic atlas only the row order matters) and ``name``.
    target_img : nibabel image or path
        Reference on the BOLD grid (3D or 4D; only shape[:3] and affine are used).
    brain_mask : numpy.ndarray of bool, shape target_img.shape[:3]
        Voxels with data; every ROI is intersected with it.
    names : sequence of str, optional
        ROIs to return (default: every row except index 0 of a deterministic atlas).
    threshold : float, optional
        Probability threshold of a probabilistic atlas (voxels with p >= threshold;
        default 0.5).
    allow_empty : bool
        Return an ROI with no voxel inside the brain mask as an empty mask instead of raising
        (the caller skips it).
    file_label : callable, optional
        The ``label-`` entity the caller's output files give an ROI name (e.g. only its
        letters and digits); when given, chosen ROIs whose names share a label are refused
        before any mask is made. None: no check.

    Returns
    -------
    dict of str to numpy.ndarray of bool
        ``{name: mask of shape target_img.shape[:3]}`` in the order of ``names`` (or of the
        table).

    Raises
    ------
    InputMissingError
        A requested name is not in the table (the message lists available names).
    BidsValidationError
        The table lacks ``index``/``name`` columns or has duplicate names; a 4D atlas whose
        volume count differs from the table's rows; chosen names sharing a ``file_label``.
    AnalysisError
        An ROI has no voxel inside the brain mask after resampling.
    """
    atlas = load_nifti(atlas_img, "atlas")
    reference = reference_image(target_img)
    mask = _check_brain_mask(brain_mask, reference)
    missing_cols = [c for c in ("index", "name") if c not in labels_table.columns]
    if missing_cols:
        raise BidsValidationError(
            f"atlas labels table lacks column(s) {', '.join(missing_cols)} "
            f"(has: {', '.join(map(str, labels_table.columns))})"
        )
    table = labels_table.reset_index(drop=True)
    table_names = [str(n) for n in table["name"]]
    duplicated = sorted({n for n in table_names if table_names.count(n) > 1})
    if duplicated:
        raise BidsValidationError(f"atlas labels table has duplicate names: {', '.join(duplicated)}")

    data = resample_to_grid(atlas, reference, "atlas")
    if data.ndim == 4 and data.shape[3] == 1 and len(table) > 1:
        data = data[..., 0]
    integer = bool(np.all(np.isclose(data, np.round(data))))
    probabilistic = data.ndim == 4 or (not integer and len(table) == 1)
    if data.ndim == 3 and not probabilistic and not integer:
        raise AnalysisError("atlas: a 3D atlas must hold integer labels (found non-integer values)")
    if probabilistic:
        if data.ndim == 3:
            data = data[..., None]
        if data.shape[3] != len(table):
            raise BidsValidationError(
                f"probabilistic atlas has {data.shape[3]} volumes but its labels table has {len(table)} rows"
            )
        if np.nanmax(data) > 1.0 + 1e-6:
            data = data / 100.0  # percentages (e.g. Harvard-Oxford)
        thr = 0.5 if threshold is None else float(threshold)

    if names is None:
        rows = [i for i in range(len(table)) if probabilistic or int(table["index"][i]) != 0]
    else:
        unknown = [n for n in names if n not in table_names]
        if unknown:
            hints = []
            for n in unknown:
                close = difflib.get_close_matches(n, table_names, n=1)
                hints.append(f"'{n}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise InputMissingError(
                f"atlas has no ROI named {', '.join(hints)}; available: {', '.join(table_names)}",
                "check rois.labels",
            )
        rows = [table_names.index(n) for n in names]
    if file_label is not None:
        _check_file_labels([table_names[i] for i in rows], file_label)

    masks: dict[str, np.ndarray] = {}
    for i in rows:
        name = table_names[i]
        if probabilistic:
            roi = np.nan_to_num(data[..., i]) >= thr
        else:
            roi = np.round(data) == int(table["index"][i])
        roi &= mask
        if not roi.any() and not allow_empty:
            raise AnalysisError(
                f"ROI '{name}' (index {table['index'][i]}) has no voxels inside the brain mask "
                "on the BOLD grid",
                "check that atlas and BOLD are in the same space, or leave this ROI out of rois.labels",
            )
        masks[name] = roi
    return masks


def _check_file_labels(names: Sequence[str], file_label: Callable[[str], str]) -> None:
    """Refuse ROI names that would share a file name label (with a label of letters and
    digits, ``NA`` and ``N/A`` both give ``label-NA``)."""
    by_label: dict[str, list[str]] = {}
    for name in names:
        by_label.setdefault(file_label(name), []).append(name)
    clashes = [f"{', '.join(repr(n) for n in group)} -> label-{label}" for label, group in by_label.items()
               if len(group) > 1]
    if clashes:
        raise BidsValidationError(f"atlas ROI names would share an output file name: {'; '.join(clashes)}",
                                  "file names keep only letters and digits of a name; rename one of them in the "
                                  "labels table, or choose the ROIs with rois.labels")


def load_roi_masks_from_files(
    paths: Mapping[str, ImageLike], target_img: ImageLike, brain_mask: np.ndarray, allow_empty: bool = False
) -> dict[str, np.ndarray]:
    """ROI masks on the BOLD grid from one mask image per ROI.

    Parameters
    ----------
    paths : mapping of str to path or nibabel image
        ``{roi name: mask image}``; values > 0.5 are inside (a 4D image must have one volume).
    target_img : nibabel image or path
        Reference on the BOLD grid.
    brain_mask : numpy.ndarray of bool, shape target_img.shape[:3]
        Every ROI is intersected with it.
    allow_empty : bool
        As in :func:`load_roi_masks_from_atlas`.

    Returns
    -------
    dict of str to numpy.ndarray of bool
        ``{name: mask of shape target_img.shape[:3]}`` in the order of ``paths``.

    Raises
    ------
    InputMissingError
        A mask file is missing or unreadable.
    AnalysisError
        A mask is 4D with several volumes, or empty inside the brain mask on the BOLD grid.
    """
    reference = reference_image(target_img)
    mask = _check_brain_mask(brain_mask, reference)
    masks: dict[str, np.ndarray] = {}
    for name, img in paths.items():
        loaded = load_nifti(img, f"ROI mask '{name}'")
        data = resample_to_grid(loaded, reference, f"ROI mask '{name}'")
        if data.ndim == 4:
            if data.shape[3] != 1:
                raise AnalysisError(f"ROI mask '{name}' is 4D with {data.shape[3]} volumes; expected one")
            data = data[..., 0]
        roi = (np.nan_to_num(data) > 0.5) & mask
        if not roi.any() and not allow_empty:
            raise AnalysisError(
                f"ROI '{name}' has no voxels inside the brain mask on the BOLD grid",
                "check that the mask is in the same space as the BOLD data",
            )
        masks[name] = roi
    return masks


def apply_mask(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Voxel values inside a mask.

    Parameters
    ----------
    data : numpy.ndarray, shape (X, Y, Z) or (X, Y, Z, n)
        Image data.
    mask : numpy.ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    numpy.ndarray, shape (n_vox,) or (n, n_vox)
        Values in C order of the mask's voxels (time/conditions first for 4D data).
    """
    data = np.asarray(data)
    mask = np.asarray(mask, dtype=bool)
    if data.shape[:3] != mask.shape:
        raise AnalysisError(f"data shape {data.shape[:3]} does not match mask shape {mask.shape}")
    return data[mask] if data.ndim == 3 else data[mask].T


def voxel_counts_table(masks: Mapping[str, np.ndarray], voxel_volume_mm3: float | None = None) -> pd.DataFrame:
    """Number of voxels per ROI.

    Parameters
    ----------
    masks : mapping of str to numpy.ndarray of bool
        ROI masks.
    voxel_volume_mm3 : float, optional
        Volume of one voxel; adds a ``volume_mm3`` column.

    Returns
    -------
    pandas.DataFrame
        Columns ``roi``, ``n_voxels`` (and ``volume_mm3``), one row per ROI in mapping order.
    """
    rows = [{"roi": name, "n_voxels": int(np.count_nonzero(m))} for name, m in masks.items()]
    table = pd.DataFrame(rows, columns=["roi", "n_voxels"])
    if voxel_volume_mm3 is not None:
        table["volume_mm3"] = table["n_voxels"] * float(voxel_volume_mm3)
    return table

