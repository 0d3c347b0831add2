"""NIfTI images and voxel grids: reading, grid checks, nearest-neighbour resampling to a grid.

Paths or nibabel images in, arrays out; no BIDS layouts, no printing. Unreadable, empty or
truncated files and images on different grids are :class:`bids_dnn.errors.InputMissingError`
(exit 66: the required input is not there), with messages that name the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import nibabel as nib
import numpy as np

from bids_dnn.errors import InputMissingError

__all__ = [
    "AFFINE_ATOL", "ImageLike", "check_same_grid", "image_data", "load_nifti", "masked_timeseries",
    "reference_image", "resample_to_grid",
]

ImageLike = Union[str, Path, nib.spatialimages.SpatialImage]
"""A path of a NIfTI image or a loaded nibabel image."""

AFFINE_ATOL = 1e-3
"""Largest difference of any affine element (mm) between images on the same grid."""


def load_nifti(img: ImageLike, what: str) -> nib.spatialimages.SpatialImage:
    """Load an image from a path, or pass a loaded image through.

    Parameters
    ----------
    img : nibabel image or path
        The image or the path of a NIfTI file.
    what : str
        What the image is, named in error messages (e.g. ``"brain mask"``).

    Returns
    -------
    nibabel image
        The image (its data are not read yet).

    Raises
    ------
    InputMissingError
        The file is missing, empty or not readable as an image (exit 66).
    """
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
    """The voxel array of an image.

    Parameters
    ----------
    img : nibabel image, shape (X, Y, Z) or (X, Y, Z, n)
        A loaded image.
    what : str
        Named in error messages.
    dtype : numpy dtype
        Type of the returned array (float64 by default).

    Returns
    -------
    numpy.ndarray, shape img.shape

    Raises
    ------
    InputMissingError
        The data cannot be read: a truncated or corrupt file (exit 66).
    """
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
    path : str or pathlib.Path
        A 4D NIfTI image, shape (X, Y, Z, n_time).
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Voxels to read, on the image's grid.
    what : str
        Named in error messages.
    chunk_volumes : int
        Volumes read at once.
    dtype : numpy dtype
        Storage type of the result (float32 by default; float64 gives the same values).

    Returns
    -------
    numpy.ndarray, shape (n_time, n_mask_voxels)
        Time first; voxels in C order of the mask.

    Raises
    ------
    InputMissingError
        The file is unreadable, truncated or corrupt, or not a 4D image on the mask's grid.
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
    """``(shape[:3], affine as a float (4, 4) array)`` of an image."""
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


def reference_image(target_img: ImageLike) -> nib.Nifti1Image:
    """An empty 3D image on the grid of ``target_img``.

    Parameters
    ----------
    target_img : nibabel image or path
        Image whose grid is wanted (3D or 4D; only ``shape[:3]`` and the affine are used).

    Returns
    -------
    nibabel.Nifti1Image, shape target_img.shape[:3]
        int8 zeros with the target's affine (a resampling target that holds no data).
    """
    target = load_nifti(target_img, "reference image")
    shape, affine = _grid(target)
    return nib.Nifti1Image(np.zeros(shape, dtype=np.int8), affine)


def resample_to_grid(img: nib.spatialimages.SpatialImage, reference: nib.Nifti1Image,
                     what: str = "image") -> np.ndarray:
    """Image data on the grid of ``reference``, by nearest-neighbour interpolation.

    Labels and mask values are never blended. An image already on the grid (affines within
    :data:`AFFINE_ATOL`) is returned as read, without resampling.

    Parameters
    ----------
    img : nibabel image, shape (X, Y, Z) or (X, Y, Z, n)
        Image to resample.
    reference : nibabel.Nifti1Image
        Image on the target grid (e.g. from :func:`reference_image`).
    what : str
        Named in error messages.

    Returns
    -------
    numpy.ndarray of float32, shape reference.shape[:3] or reference.shape[:3] + (n,)

    Raises
    ------
    InputMissingError
        The image data cannot be read (a truncated or corrupt file).
    """
    data = image_data(img, what, np.float32)
    src = nib.Nifti1Image(data, np.asarray(img.affine, dtype=float))
    shape, affine = _grid(reference)
    if src.shape[:3] == shape and np.allclose(src.affine, affine, atol=AFFINE_ATOL, rtol=0):
        return data
    from nilearn.image import resample_to_img

    out = resample_to_img(src, reference, interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(out.dataobj, dtype=np.float32)

