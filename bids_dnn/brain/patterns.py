"""Response patterns: ROI masks on the BOLD grid, noise normalisation, reliability.

Nibabel images, boolean arrays and ``(n_cond, n_vox)`` patterns in; no BIDS layouts, no
files, no printing; errors are :mod:`bids_dnn.errors` exceptions with readable messages.
ROI masks are resampled onto the BOLD grid with nearest-neighbour interpolation (labels are
never blended) and intersected with the brain mask.

Noise normalisation (``BrainSpec.noise_normalization``): ``univariate`` divides each voxel
by its residual SD; ``multivariate`` multiplies patterns by ``Sigma^(-1/2)``, ``Sigma`` a
shrinkage estimate of the voxel residual covariance (Walther et al., 2016, NeuroImage
137:188), so Euclidean distances become Mahalanobis distances. The crossnobis RDM
(``bids_dnn.rsa.rdm``) does not whiten with this module: it uses the precision ``Sigma^(-1)``
directly in the cross-validated distance.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import nibabel as nib
import numpy as np
import pandas as pd

from bids_dnn.errors import AnalysisError, BidsValidationError, InputMissingError

__all__ = [
    "COVARIANCE_ESTIMATORS", "NOISE_NORMALIZATIONS", "apply_mask", "check_same_grid",
    "load_roi_masks_from_atlas", "load_roi_masks_from_files", "noise_covariance", "noise_normalize",
    "split_half_reliability", "voxel_counts_table",
]

ImageLike = Union[str, Path, nib.spatialimages.SpatialImage]

AFFINE_ATOL = 1e-3


# ---------------------------------------------------------------------------------------
# Grids and masks
# ---------------------------------------------------------------------------------------


def load_nifti(img: ImageLike, what: str) -> nib.spatialimages.SpatialImage:
    """Load an image from a path (or pass an image through); unreadable input is exit 66."""
    if isinstance(img, (str, Path)):
        path = Path(img)
        if not path.is_file():
            raise InputMissingError(f"{what}: file not found: {path}")
        if path.stat().st_size == 0:
            raise InputMissingError(f"{what}: {path.name} is empty (0 bytes)",
                                    "the file was not written completely; regenerate or re-copy it")
        try:
            return nib.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any reader error means unreadable input
            raise InputMissingError(f"{what}: cannot read {path.name} as an image ({exc.__class__.__name__})") from None
    return img


def image_data(img: nib.spatialimages.SpatialImage, what: str, dtype: Any = np.float64) -> np.ndarray:
    """The voxel array of ``img``; a truncated or corrupt file is exit 66, naming ``what``."""
    try:
        return np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any reader error means unreadable input
        raise InputMissingError(f"{what}: cannot read the image data ({exc.__class__.__name__}: {exc})",
                                "the file is truncated or corrupt; regenerate or re-download it") from None


def masked_timeseries(path: str | Path, mask: np.ndarray, what: str, chunk_volumes: int = 32,
                      dtype: Any = np.float32) -> np.ndarray:
    """The time series of the ``mask`` voxels of a 4D image, read a few volumes at a time.

    The file is kept open and read forward in chunks of ``chunk_volumes`` volumes (cheap for
    ``.nii.gz`` too), so memory is the masked array plus one chunk, not the whole 4D image.
    Values are read as float32 (fMRIPrep writes BOLD as float32 or scaled int16); the
    default float32 storage holds them exactly at half the memory of float64 (a 2 mm
    whole-brain run of 1000 volumes: 0.9 GB instead of 1.8 GB); the GLM converts each voxel
    chunk to float64 when it fits it.

    Parameters
    ----------
    path : path of a 4D NIfTI image, shape (X, Y, Z, n_time)
    mask : numpy.ndarray of bool, shape (X, Y, Z)
    what : str
        Named in error messages.
    chunk_volumes : int
        Volumes read at once.
    dtype : numpy dtype
        Storage type of the result (float32 by default; float64 gives the same values).

    Returns
    -------
    numpy.ndarray, shape (n_time, n_mask_voxels)
    """
    try:
        img = nib.load(str(path), keep_file_open=True)
    except Exception as exc:  # noqa: BLE001 - any reader error means unreadable input
        raise InputMissingError(f"{what}: cannot read {Path(path).name} as an image ({exc.__class__.__name__})") from None
    if img.ndim != 4 or tuple(img.shape[:3]) != tuple(mask.shape):
        raise InputMissingError(f"{what}: expected a 4D image on the brain mask's grid {mask.shape}, got shape {img.shape}",
                                "use images in the same space and resolution (space-/res- entities)")
    n_time = img.shape[3]
    out = np.empty((n_time, int(mask.sum())), dtype=dtype)
    try:
        for start in range(0, n_time, chunk_volumes):
            stop = min(start + chunk_volumes, n_time)
            block = np.asarray(img.dataobj[..., start:stop], dtype=np.float32)
            out[start:stop] = block[mask].T
    except Exception as exc:  # noqa: BLE001 - truncated / corrupt data
        raise InputMissingError(f"{what}: cannot read the image data ({exc.__class__.__name__}: {exc})",
                                "the file is truncated or corrupt; regenerate or re-download it") from None
    finally:
        opener = getattr(img.dataobj, "_opener", None)  # nibabel's kept-open file handle
        if opener is not None:
            opener.close()
    return out


def _grid(img: nib.spatialimages.SpatialImage) -> tuple[tuple[int, int, int], np.ndarray]:
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=float)


def check_same_grid(img_a: ImageLike, img_b: ImageLike, what: str) -> None:
    """Raise when two images are not on the same voxel grid (first three dimensions).

    Parameters
    ----------
    img_a, img_b : nibabel image or path
        Images to compare (3D or 4D).
    what : str
        What is being compared, e.g. ``"brain mask vs BOLD (sub-01 run-1)"``.

    Raises
    ------
    InputMissingError
        When shapes differ or affines differ by more than 1e-3 in any element (exit 66: the
        required input, e.g. a brain mask on the BOLD grid, is not there; the dataset itself
        may be valid BIDS); the message gives both shapes and voxel sizes and the largest
        affine difference.
    """
    a, b = load_nifti(img_a, what), load_nifti(img_b, what)
    (shape_a, aff_a), (shape_b, aff_b) = _grid(a), _grid(b)
    if shape_a == shape_b and np.allclose(aff_a, aff_b, atol=AFFINE_ATOL, rtol=0):
        return
    vox_a = np.round(np.sqrt((aff_a[:3, :3] ** 2).sum(0)), 3).tolist()
    vox_b = np.round(np.sqrt((aff_b[:3, :3] ** 2).sum(0)), 3).tolist()
    problems = []
    if shape_a != shape_b:
        problems.append(f"shapes {shape_a} vs {shape_b}")
    if not np.allclose(aff_a, aff_b, atol=AFFINE_ATOL, rtol=0):
        problems.append(f"affines differ by up to {np.abs(aff_a - aff_b).max():.4g}")
    raise InputMissingError(
        f"{what}: images are not on the same grid ({'; '.join(problems)}; voxel sizes {vox_a} vs {vox_b} mm)",
        "use images in the same space and resolution (space-/res- entities)",
    )


def _reference(target_img: ImageLike) -> nib.Nifti1Image:
    """A 3D reference image on the target grid."""
    target = load_nifti(target_img, "reference image")
    shape, affine = _grid(target)
    return nib.Nifti1Image(np.zeros(shape, dtype=np.int8), affine)


def _to_grid(img: nib.spatialimages.SpatialImage, reference: nib.Nifti1Image, what: str = "image") -> np.ndarray:
    """Image data on the reference grid (nearest neighbour), as float array (3D or 4D); a
    truncated file is exit 66 naming ``what``."""
    data = image_data(img, what, np.float32)
    src = nib.Nifti1Image(data, np.asarray(img.affine, dtype=float))
    shape, affine = _grid(reference)
    if src.shape[:3] == shape and np.allclose(src.affine, affine, atol=AFFINE_ATOL, rtol=0):
        return data
    from nilearn.image import resample_to_img

    out = resample_to_img(src, reference, interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(out.dataobj, dtype=np.float32)


def _check_brain_mask(brain_mask: np.ndarray, reference: nib.Nifti1Image) -> np.ndarray:
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
        volume count differs from the table's rows.
    AnalysisError
        An ROI has no voxel inside the brain mask after resampling.
    """
    atlas = load_nifti(atlas_img, "atlas")
    reference = _reference(target_img)
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

    data = _to_grid(atlas, reference, "atlas")
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
    _check_file_labels([table_names[i] for i in rows])

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


def _check_file_labels(names: Sequence[str]) -> None:
    """Refuse ROI names that would share a file name label (``NA`` and ``N/A`` both give
    ``label-NA``)."""
    from bids_dnn.spec import sanitize_label

    by_label: dict[str, list[str]] = {}
    for name in names:
        by_label.setdefault(sanitize_label(name), []).append(name)
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
    reference = _reference(target_img)
    mask = _check_brain_mask(brain_mask, reference)
    masks: dict[str, np.ndarray] = {}
    for name, img in paths.items():
        loaded = load_nifti(img, f"ROI mask '{name}'")
        data = _to_grid(loaded, reference, f"ROI mask '{name}'")
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


# ---------------------------------------------------------------------------------------
# Noise covariance and normalisation
# ---------------------------------------------------------------------------------------


def _demeaned(residuals: np.ndarray, dof: int | None) -> tuple[np.ndarray, int]:
    res = np.asarray(residuals, dtype=np.float64)
    if res.ndim != 2:
        raise AnalysisError(f"residuals must be 2D (n_time, n_vox), got shape {res.shape}")
    if res.shape[0] < 2:
        raise AnalysisError("need at least 2 residual time points to estimate the noise")
    res = res - res.mean(axis=0, keepdims=True)
    return res, (res.shape[0] - 1 if dof is None else int(dof))


def _cov_diag_only(res: np.ndarray, dof: int) -> np.ndarray:
    return np.diag(np.einsum("ij,ij->j", res, res) / dof)


def _cov_shrinkage_eye(res: np.ndarray, dof: int) -> np.ndarray:
    """Ledoit & Wolf (2004) shrinkage towards a multiple of the identity (as rsatoolbox)."""
    n, p = res.shape
    s = res.T @ res / n
    s2 = (res**2).T @ (res**2) / n
    b2 = np.sum(s2 - s * s) / n
    m = np.trace(s) / p
    d2 = np.sum((s - m * np.eye(p)) ** 2)
    b2 = min(d2, b2)
    shrunk = (b2 / d2) * m * np.eye(p) + ((d2 - b2) / d2) * s if d2 > 0 else s
    return shrunk * n / dof


def _cov_shrinkage_diag(res: np.ndarray, dof: int) -> np.ndarray:
    """Schaefer & Strimmer (2005) shrinkage of correlations towards 0, as rsatoolbox's
    ``shrinkage_diag``; vectorised (``sum_t (x_ti x_tj)^2 = (X^2)^T X^2``) and with sums over
    off-diagonal elements taken as total minus trace to keep few (n_vox, n_vox) temporaries."""
    n, p = res.shape
    cov = res.T @ res  # s_sum
    var = np.diag(cov).copy() / dof
    if np.any(var <= 0):
        raise AnalysisError("noise covariance: some voxels have zero residual variance")
    inv_std = 1.0 / np.sqrt(var)
    corr = cov * inv_std[:, None] * inv_std[None, :] / (n - 1)  # s_mean
    sum_corr2 = np.einsum("ij,ij->", corr, corr) - np.sum(np.diag(corr) ** 2)
    del corr
    sq = res**2
    s2 = sq.T @ sq  # s2_sum
    s2 *= (1.0 / var)[:, None] * (1.0 / var)[None, :] / (n - 1)  # s2_mean
    sum_s2 = s2.sum() - np.trace(s2)
    del s2
    var_hat_off = n / dof**2 * (sum_s2 - sum_corr2)
    lamb = var_hat_off / sum_corr2 if sum_corr2 > 0 else 1.0
    lamb = float(np.clip(np.nan_to_num(lamb, nan=1.0), 0.0, 1.0))
    cov /= dof
    diag = np.diag(cov).copy()
    cov *= 1.0 - lamb
    cov[np.diag_indices(p)] = diag
    return cov


COVARIANCE_ESTIMATORS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "shrinkage_diag": _cov_shrinkage_diag,
    "shrinkage_eye": _cov_shrinkage_eye,
    "diag": _cov_diag_only,
}
"""Voxel covariance estimators (same definitions as rsatoolbox's ``cov_from_residuals``)."""


def noise_covariance(
    residuals: np.ndarray, estimator: str = "shrinkage_diag", dof: int | None = None
) -> np.ndarray:
    """Voxel-by-voxel noise covariance from GLM residuals.

    Parameters
    ----------
    residuals : numpy.ndarray, shape (n_time, n_vox)
        (Whitened) GLM residuals; each column is demeaned first.
    estimator : {"shrinkage_diag", "shrinkage_eye", "diag"}
        ``shrinkage_diag``: sample covariance with correlations shrunk towards 0 by the
        Schaefer-Strimmer optimal factor (Ledoit-Wolf-type, target: the diagonal);
        ``shrinkage_eye``: Ledoit-Wolf towards a scaled identity; ``diag``: variances only.
    dof : int, optional
        Degrees of freedom of the residuals (default ``n_time - 1``; pass the GLM's dof).

    Returns
    -------
    numpy.ndarray, shape (n_vox, n_vox)
    """
    if estimator not in COVARIANCE_ESTIMATORS:
        raise AnalysisError(
            f"unknown noise estimator '{estimator}'; choose one of {', '.join(COVARIANCE_ESTIMATORS)}"
        )
    res, dof = _demeaned(residuals, dof)
    if dof < 1:
        raise AnalysisError(f"residual degrees of freedom must be >= 1 (got {dof})")
    return COVARIANCE_ESTIMATORS[estimator](res, dof)


def _inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric ``cov^(-1/2)``; eigenvalues floored at 1e-10 of the largest."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2.0)
    vals = np.maximum(vals, max(vals.max(), 0.0) * 1e-10 + np.finfo(float).tiny)
    return (vecs / np.sqrt(vals)) @ vecs.T


NOISE_NORMALIZATIONS = ("none", "univariate", "multivariate")

_SD_BLOCK = 4096
"""Voxels whose residual SD is computed at once (bounds the float64 working copy)."""


def residual_sd(residuals: np.ndarray | Sequence[np.ndarray], dof: int | None = None,
                columns: np.ndarray | None = None, block: int = _SD_BLOCK) -> np.ndarray:
    """Residual SD per voxel, ``sqrt(sum((r - mean r)^2) / dof)`` over all time points, NaN for
    voxels with a non-finite residual; computed over blocks of voxels, so the residuals of a
    whole brain are never copied whole (neither to float64 nor, for several runs, concatenated).

    Parameters
    ----------
    residuals : numpy.ndarray, shape (n_time, n_vox), or a sequence of them (runs)
        Runs are pooled as if concatenated over time (one mean, one sum of squares).
    dof : int or None
        Degrees of freedom (default ``n_time - 1``, ``n_time`` summed over runs).
    columns : numpy.ndarray of int, optional
        Voxels (columns) to use, in this order; default all.
    block : int
        Voxels per block.

    Returns
    -------
    numpy.ndarray of float64, shape (n_vox,) or (len(columns),)
    """
    runs = [residuals] if isinstance(residuals, np.ndarray) else list(residuals)
    if not runs or any(np.ndim(r) != 2 for r in runs):
        raise AnalysisError("residuals must be 2D (n_time, n_vox) arrays, got shape(s) "
                            f"{[np.shape(r) for r in runs]}")
    n_time = sum(r.shape[0] for r in runs)
    if n_time < 2:
        raise AnalysisError("need at least 2 residual time points to estimate the noise")
    n_cols = runs[0].shape[1] if columns is None else len(columns)
    dof_used = n_time - 1 if dof is None else int(dof)
    sd = np.full(n_cols, np.nan)
    for start in range(0, n_cols, block):
        # a slice (a view) when all columns are used, else the block's columns
        index = slice(start, min(start + block, n_cols)) if columns is None else np.asarray(columns[start:start + block])
        width = len(range(n_cols)[index]) if columns is None else index.size
        chunk = np.empty((n_time, width))
        row = 0
        for run in runs:
            chunk[row:row + run.shape[0]] = run[:, index]
            row += run.shape[0]
        ok = np.flatnonzero(np.isfinite(chunk).all(axis=0))
        res = chunk if ok.size == width else chunk[:, ok]
        res -= res.mean(axis=0, keepdims=True)
        sd[start + ok] = np.sqrt(np.einsum("ij,ij->j", res, res) / dof_used)
    return sd


def divide_by_sd(betas: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``betas / sd`` per voxel (last axis); NaN where the SD is not finite or zero."""
    bad = ~(np.isfinite(sd) & (sd > 0))
    out = np.array(betas, dtype=np.float64)  # the only betas-sized array made
    out /= np.where(bad, 1.0, sd)
    out[..., bad] = np.nan
    return out


def noise_normalize(
    betas: np.ndarray,
    residuals: np.ndarray,
    method: str = "multivariate",
    estimator: str = "shrinkage_diag",
    dof: int | None = None,
) -> np.ndarray:
    """Noise-normalise patterns with the GLM residuals of the same run.

    Parameters
    ----------
    betas : numpy.ndarray, shape (n_cond, n_vox)
        Patterns of one run.
    residuals : numpy.ndarray, shape (n_time, n_vox)
        That run's (whitened) residuals, same voxels.
    method : {"none", "univariate", "multivariate"}
        ``univariate``: ``betas / sd`` with ``sd = sqrt(sum((r - mean r)^2) / dof)`` per voxel
        (``dof = n_time - 1`` gives ``residuals.std(axis=0, ddof=1)``); ``multivariate``:
        ``betas @ Sigma^(-1/2)`` with ``Sigma`` from :func:`noise_covariance`, so that
        Euclidean distances between rows are Mahalanobis distances. Crossnobis does not use
        this whitening but the precision matrix ``Sigma^(-1)`` directly (``bids_dnn.rsa.rdm``).
    estimator : {"shrinkage_diag", "shrinkage_eye", "diag"}
        Covariance estimator for ``multivariate``.
    dof : int, optional
        Residual degrees of freedom (default ``n_time - 1``).

    Returns
    -------
    numpy.ndarray, shape (n_cond, n_vox)
        Normalised patterns. Voxels with non-finite residuals or zero residual variance are
        NaN (they are left out of the covariance).
    """
    if method not in NOISE_NORMALIZATIONS:
        raise AnalysisError(f"unknown noise normalisation '{method}'; choose one of {', '.join(NOISE_NORMALIZATIONS)}")
    betas = np.asarray(betas, dtype=np.float64)
    if method == "none":
        return betas.copy()
    residuals = np.asarray(residuals)
    if betas.ndim != 2 or residuals.ndim != 2 or betas.shape[1] != residuals.shape[1]:
        raise AnalysisError(
            f"betas {betas.shape} and residuals {residuals.shape} must be (n_cond, n_vox) and (n_time, n_vox)"
        )
    sd = residual_sd(residuals, dof)
    if method == "univariate":
        return divide_by_sd(betas, sd)
    good = np.flatnonzero(np.isfinite(sd) & (sd > 0))
    out = np.full(betas.shape, np.nan)
    cov = noise_covariance(residuals[:, good], estimator, dof)
    out[:, good] = betas[:, good] @ _inverse_sqrt(cov)
    return out


# ---------------------------------------------------------------------------------------
# Reliability
# ---------------------------------------------------------------------------------------


def split_half_reliability(run_betas: np.ndarray) -> np.ndarray:
    """Split-half reliability of each voxel's condition profile.

    The mean pattern of odd runs (1st, 3rd, ...) and of even runs (2nd, 4th, ...) are
    correlated across conditions per voxel (Pearson), and the correlation is stepped up to
    the full data with Spearman-Brown, ``2 r / (1 + r)``.

    Parameters
    ----------
    run_betas : numpy.ndarray, shape (n_runs, n_cond, n_vox)
        Patterns per run; NaN entries are ignored (NaN-mean over runs, then conditions
        finite in both halves).

    Returns
    -------
    numpy.ndarray, shape (n_vox,)
        Reliability per voxel; NaN where fewer than 3 conditions are usable or a half is
        constant across conditions.

    Raises
    ------
    AnalysisError
        Fewer than 2 runs or a wrong shape.
    """
    data = np.asarray(run_betas, dtype=np.float64)
    if data.ndim != 3:
        raise AnalysisError(f"run_betas must be (n_runs, n_cond, n_vox), got shape {data.shape}")
    if data.shape[0] < 2:
        raise AnalysisError(f"split-half reliability needs at least 2 runs (got {data.shape[0]})")

    def half_mean(part: np.ndarray) -> np.ndarray:
        count = np.isfinite(part).sum(axis=0)
        total = np.nansum(part, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    a, b = half_mean(data[0::2]), half_mean(data[1::2])
    ok = np.isfinite(a) & np.isfinite(b)
    n = ok.sum(axis=0)
    a0, b0 = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = a0.sum(0) / n, b0.sum(0) / n
        da, db = np.where(ok, a0 - ma, 0.0), np.where(ok, b0 - mb, 0.0)
        r = (da * db).sum(0) / np.sqrt((da**2).sum(0) * (db**2).sum(0))
        r = np.where(n >= 3, np.clip(r, -1.0, 1.0), np.nan)
        rel = np.where(r > -1.0, 2.0 * r / (1.0 + r), np.nan)
    return rel
