"""Searchlight spheres: neighbourhoods of mask voxels, centre partitions and score volumes.

Pure numpy: no BIDS, no files, no printing.

Conventions (:func:`sphere_neighbourhoods`)
    Mask voxels are numbered in the order of ``np.flatnonzero(mask)`` (C order); every index
    below (centres, neighbours, pattern columns) refers to that numbering. The sphere around a
    voxel holds the voxels at a distance ``< radius_mm`` (strictly less, measured in mm with
    the voxel size; anisotropic voxels allowed). It is truncated at the mask: a voxel outside
    the mask never enters a sphere. A mask voxel becomes a centre when its sphere holds
    ``>= min_voxels`` mask voxels and ``n_in_mask / n_in_volume >= min_fraction``, where
    ``n_in_volume`` counts the voxels of the sphere that lie inside the volume array (voxels
    beyond the array edge are not counted). For isotropic 1 mm voxels with ``radius_mm`` equal
    to rsatoolbox's radius in voxels this reproduces
    ``rsatoolbox.util.searchlight.get_volume_searchlight(mask, radius, threshold=min_fraction)``
    exactly (same centres; neighbours = its neighbours restricted to the mask, i.e. its
    ``truncate_at_boundary=True`` neighbours). Radius 2 gives 27-voxel spheres, 3 gives 93,
    3.1 gives 123.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Neighbourhoods",
    "sphere_offsets",
    "sphere_neighbourhoods",
    "partition_centres",
    "scores_to_volume",
    "scores_to_mask_voxels",
    "voxel_size_from_affine",
]

_MAX_LABEL_BLOCK = 2 ** 23  # elements of the (voxels x offsets) label block


@dataclass(frozen=True, eq=False)
class Neighbourhoods:
    """Searchlight spheres in CSR form (see the module docstring for the conventions).

    Attributes
    ----------
    centres : np.ndarray, (n_centres,) int64
        Centre voxels, as indices into the mask's voxels (``np.flatnonzero(mask)`` order).
    indptr : np.ndarray, (n_centres + 1,) int64
        Row pointers: sphere ``i`` is ``indices[indptr[i]:indptr[i + 1]]``.
    indices : np.ndarray, (n_entries,) int64
        Neighbour voxels (mask-voxel indices), each row sorted ascending.
    mask_shape : tuple of 3 int
    mask_indices : np.ndarray, (n_mask_voxels,) int64
        Flat (C order) volume index of every mask voxel (``np.flatnonzero(mask)``).
    radius_mm : float
    voxel_size_mm : tuple of 3 float
    radius_voxels : tuple of 3 int
        Largest offset along each axis that can lie inside a sphere.
    n_sphere_voxels : int
        Voxels of a full (untruncated) sphere.
    """

    centres: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    mask_shape: tuple[int, int, int]
    mask_indices: np.ndarray = field(repr=False)
    radius_mm: float = 0.0
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    radius_voxels: tuple[int, int, int] = (0, 0, 0)
    n_sphere_voxels: int = 1

    @property
    def n_centres(self) -> int:
        """Number of searchlight centres."""
        return int(self.centres.shape[0])

    @property
    def n_mask_voxels(self) -> int:
        """Number of mask voxels (columns of the pattern matrix)."""
        return int(self.mask_indices.shape[0])

    def sizes(self) -> np.ndarray:
        """Voxels per sphere, (n_centres,) int64."""
        return np.diff(self.indptr)

    @property
    def max_size(self) -> int:
        """Largest sphere (0 without centres)."""
        return int(self.sizes().max()) if self.n_centres else 0

    def sphere(self, i: int) -> np.ndarray:
        """Mask-voxel indices of sphere ``i``, (size_i,) int64."""
        return self.indices[self.indptr[i]:self.indptr[i + 1]]


def sphere_offsets(radius_mm: float, voxel_size_mm: Sequence[float] | np.ndarray) -> np.ndarray:
    """Integer voxel offsets ``o`` with ``||o * voxel_size|| < radius_mm``.

    Parameters
    ----------
    radius_mm : float
        Sphere radius in mm (> 0).
    voxel_size_mm : sequence of 3 float
        Voxel size along each axis in mm (> 0).

    Returns
    -------
    np.ndarray, (n_offsets, 3) int64
        Sorted lexicographically (C order), so that neighbours come out in ascending order.
    """
    r = float(radius_mm)
    vox = np.asarray(voxel_size_mm, dtype=np.float64).reshape(-1)
    if vox.shape != (3,) or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        raise ValueError(f"voxel_size_mm must be 3 positive numbers, got {voxel_size_mm!r}")
    if not (np.isfinite(r) and r > 0):
        raise ValueError(f"radius_mm must be positive, got {radius_mm!r}")
    ext = np.ceil(r / vox).astype(np.int64)
    grid = np.stack(np.meshgrid(*[np.arange(-e, e + 1) for e in ext], indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    d2 = np.sum((grid * vox) ** 2, axis=1)
    return grid[d2 < r * r]


def sphere_neighbourhoods(mask: np.ndarray, radius_mm: float,
                          voxel_size_mm: Sequence[float] | np.ndarray, *, min_voxels: int = 1,
                          min_fraction: float = 0.0) -> Neighbourhoods:
    """Spheres of radius ``radius_mm`` around every mask voxel, truncated at the mask.

    Vectorised: one gather of a padded label volume per block of voxels (no loop over voxels).

    Parameters
    ----------
    mask : np.ndarray, (nx, ny, nz)
        Brain mask; non-zero voxels are in.
    radius_mm : float
        Sphere radius in mm; a voxel is in the sphere when its distance is ``< radius_mm``.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm along each axis (anisotropic allowed).
    min_voxels : int
        A centre needs at least this many mask voxels in its sphere.
    min_fraction : float
        ...and at least this fraction of the sphere's in-volume voxels inside the mask
        (rsatoolbox's ``threshold``; 1.0 keeps only spheres entirely inside the mask).

    Returns
    -------
    Neighbourhoods
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-d, got shape {mask.shape}")
    mask = mask != 0
    min_voxels = int(min_voxels)
    min_fraction = float(min_fraction)
    if min_voxels < 1:
        raise ValueError(f"min_voxels must be >= 1, got {min_voxels}")
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    offsets = sphere_offsets(radius_mm, voxel_size_mm)
    ext = np.abs(offsets).max(axis=0)
    shape = mask.shape
    mask_indices = np.flatnonzero(mask).astype(np.int64)
    n_mask = mask_indices.size
    # padded label volume: -2 outside the array, -1 outside the mask, else the mask-voxel index
    labels = np.full(tuple(s + 2 * e for s, e in zip(shape, ext)), -2, dtype=np.int64)
    inner = tuple(slice(e, e + s) for s, e in zip(shape, ext))
    labels[inner] = np.where(mask, 0, -1)
    flat_labels = labels.reshape(-1)
    base = np.flatnonzero(flat_labels == 0)  # padded flat index of each mask voxel (C order)
    flat_labels[base] = np.arange(n_mask, dtype=np.int64)
    strides = np.array([labels.shape[1] * labels.shape[2], labels.shape[2], 1], dtype=np.int64)
    deltas = offsets @ strides
    n_off = deltas.size

    centre_parts, size_parts, index_parts = [], [], []
    block = max(1, _MAX_LABEL_BLOCK // max(1, n_off))
    for b0 in range(0, n_mask, block):
        # (n_offsets, block) layout: the per-voxel counts are fast column sums
        lab = flat_labels[deltas[:, None] + base[None, b0:b0 + block]]
        in_mask = lab >= 0
        n_in = in_mask.sum(axis=0, dtype=np.int64)
        good = n_in >= min_voxels
        if min_fraction > 0.0:
            n_vol = (lab >= -1).sum(axis=0, dtype=np.int64)
            good &= (n_in / n_vol) >= min_fraction
        rows = np.flatnonzero(good)
        centre_parts.append(rows + b0)
        size_parts.append(n_in[rows])
        sub = lab[:, rows].T  # (n_centres_in_block, n_offsets), offsets in ascending order
        if rows.size and n_in[rows].min() == n_off:
            index_parts.append(sub.reshape(-1))  # all these spheres are full
        else:
            index_parts.append(sub[in_mask[:, rows].T])
    centres = np.concatenate(centre_parts).astype(np.int64) if centre_parts else \
        np.zeros(0, np.int64)
    sizes = np.concatenate(size_parts) if size_parts else np.zeros(0, np.int64)
    indptr = np.zeros(centres.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=indptr[1:])
    indices = np.concatenate(index_parts) if index_parts else np.zeros(0, np.int64)
    return Neighbourhoods(
        centres=centres, indptr=indptr, indices=indices,
        mask_shape=tuple(int(s) for s in shape), mask_indices=mask_indices,
        radius_mm=float(radius_mm),
        voxel_size_mm=tuple(float(v) for v in np.asarray(voxel_size_mm, float).reshape(-1)),
        radius_voxels=tuple(int(e) for e in ext), n_sphere_voxels=int(offsets.shape[0]))


def partition_centres(n_centres: int, n_parts: int) -> list[tuple[int, int]]:
    """Split ``range(n_centres)`` into ``n_parts`` contiguous ``[start, stop)`` ranges.

    Sizes differ by at most one (as ``np.array_split``); with more parts than centres the last
    ranges are empty. Use one range per job (e.g. a SLURM array task) as ``centre_range``.

    Returns
    -------
    list of (start, stop)
    """
    n_centres, n_parts = int(n_centres), int(n_parts)
    if n_centres < 0 or n_parts < 1:
        raise ValueError(f"need n_centres >= 0 and n_parts >= 1, got {n_centres}, {n_parts}")
    q, r = divmod(n_centres, n_parts)
    bounds = np.cumsum([0] + [q + (i < r) for i in range(n_parts)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _scored_centres(scores: np.ndarray, neighbourhoods: Neighbourhoods,
                    centre_range: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as (n_maps, n_covered) and the mask-voxel indices of the centres they cover."""
    scores = np.asarray(scores)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n_maps, n_centres), got {scores.shape}")
    start, stop = _check_range(centre_range, neighbourhoods.n_centres)
    if scores.shape[1] != stop - start:
        raise ValueError(f"scores cover {scores.shape[1]} centres, expected {stop - start}")
    return scores, neighbourhoods.centres[start:stop]


def scores_to_volume(scores: np.ndarray, neighbourhoods: Neighbourhoods, *,
                     centre_range: tuple[int, int] | None = None) -> np.ndarray:
    """Place per-centre scores into the volume.

    Parameters
    ----------
    scores : np.ndarray, (n_maps, n_centres) or (n_centres,)
        One row per map (e.g. per model); with ``centre_range``, only those centres' columns.
    neighbourhoods : Neighbourhoods
    centre_range : (start, stop), optional
        The centres that ``scores`` covers (default: all).

    Returns
    -------
    np.ndarray, (*mask_shape, n_maps) float (float64 unless ``scores`` is float32)
        NaN at voxels that are not (covered) centres.
    """
    scores, centres = _scored_centres(scores, neighbourhoods, centre_range)
    dtype = np.float32 if scores.dtype == np.float32 else np.float64
    vol = np.full((int(np.prod(neighbourhoods.mask_shape)), scores.shape[0]), np.nan, dtype)
    flat = neighbourhoods.mask_indices[centres]
    vol[flat] = scores.T
    return vol.reshape(*neighbourhoods.mask_shape, scores.shape[0])


def scores_to_mask_voxels(scores: np.ndarray, neighbourhoods: Neighbourhoods, *,
                          centre_range: tuple[int, int] | None = None) -> np.ndarray:
    """Place per-centre scores at their centres among the mask's voxels.

    Parameters
    ----------
    scores : np.ndarray, (n_maps, n_centres) or (n_centres,)
        One row per map (e.g. per model); with ``centre_range``, only those centres' columns.
    neighbourhoods : Neighbourhoods
    centre_range : (start, stop), optional
        The centres that ``scores`` covers (default: all).

    Returns
    -------
    np.ndarray, (n_maps, n_mask_voxels) float64
        Columns in mask-voxel order (``np.flatnonzero(mask)``); NaN at voxels that are not
        (covered) centres.
    """
    scores, centres = _scored_centres(scores, neighbourhoods, centre_range)
    values = np.full((scores.shape[0], neighbourhoods.n_mask_voxels), np.nan)
    values[:, centres] = scores
    return values


def voxel_size_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis from a voxel-to-world affine.

    Parameters
    ----------
    affine : np.ndarray, (4, 4) or (3, 3)
        Affine (only its upper-left 3 x 3 block is used).

    Returns
    -------
    np.ndarray, (3,) float64
        Length in mm of each column of the 3 x 3 block (rotations and shears allowed).
    """
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _check_range(centre_range: tuple[int, int] | None, n_centres: int) -> tuple[int, int]:
    """``(start, stop)`` of a centre range (all ``n_centres`` when None), checked."""
    if centre_range is None:
        return 0, n_centres
    start, stop = (int(v) for v in centre_range)
    if not 0 <= start <= stop <= n_centres:
        raise ValueError(f"centre_range {centre_range} outside [0, {n_centres}]")
    return start, stop

