"""Searchlight RSA: sphere neighbourhoods and a fused, chunked RDM + comparison engine.

Pure numerical functions (numpy / torch): no BIDS, no files, no printing, no progress bars.

Neighbourhoods (:func:`sphere_neighbourhoods`)
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
RDMs (:func:`searchlight_rdms`)
    One RDM per centre, vector form in ``np.triu_indices(n_cond, k=1)`` order, with the
    conventions of :func:`bids_dnn.rsa.rdm.calc_rdm` applied to the sphere's voxels
    (``correlation``, ``cosine``, ``euclidean`` (plain), ``sqeuclidean`` (rsatoolbox
    ``'euclidean'``: divided by the sphere's voxel count), ``mahalanobis`` and ``crossnobis``
    (average over ordered pairs of distinct runs, divided by the voxel count)). The noise
    precision is the identity, or diagonal ``1 / noise_variance`` per voxel: noise-normalise
    voxels beforehand for anything richer.
Scores (:func:`searchlight_rsa`)
    ``compare_rdms(sphere_rdm, model_rdms, comparison)`` (:mod:`bids_dnn.rsa.compare`) for every
    centre, for the dot-product measures ``LINEAR_MEASURES`` (not ``kendall_tau_a``). Spheres
    whose RDM is constant (zero norm after the transform) or not finite get NaN.

Engine
    Spheres are processed in chunks (bounded by ``memory_budget_bytes``, see
    :func:`chunk_size_for_budget`; all searchlight RDMs are never held at once). A chunk's
    patterns are gathered into a zero-padded batch ``(chunk, max_sphere_size, n_features)`` with
    per-sphere voxel counts; all its RDMs come from one batched matrix product (Gram matrices:
    the distances use one BLAS ``syrk`` per sphere on CPU, through numpy; crossnobis as
    ``sum_r X_r^T (sum_s X_s - X_r)``, which is ``Gram(sum over runs)`` minus the
    sum of the per-run Grams, in one product over the runs stacked as rows and without the
    cancellation of those two large terms); they are transformed for the comparison (average
    ranks, centring, normalisation, whitening) and scored against all model RDMs (transformed
    once) with a second matrix product. Chunks are aligned to absolute centre indices and always
    have the full chunk shape, so a run split into ``centre_range`` parts
    (:func:`partition_centres`) is bit-identical to a single run with the same memory budget,
    dtype, device and thread count. Float64 (default, exact to rounding) or float32; TF32 is
    disabled; the same code runs on ``"cpu"`` and ``"cuda"``. On CPU, torch runs
    single-threaded and ``num_threads`` Python threads share the chunks (no OpenMP barriers
    between the many small operations), and ranks come from one SIMD integer sort of
    (value, index) keys instead of an argsort.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from bids_dnn.rsa.compare import LINEAR_MEASURES
from bids_dnn.backend import no_tf32, torch_dtype, torch_threads
from bids_dnn.rsa.rdm import pair_indices

__all__ = [
    "Neighbourhoods",
    "SEARCHLIGHT_RDM_MEASURES",
    "sphere_offsets",
    "sphere_neighbourhoods",
    "searchlight_rdms",
    "searchlight_rsa",
    "partition_centres",
    "scores_to_volume",
    "chunk_size_for_budget",
    "rankdata_average",
]

#: RDM measures the searchlight engine computes
SEARCHLIGHT_RDM_MEASURES: tuple[str, ...] = ("correlation", "cosine", "euclidean", "sqeuclidean",
                                             "mahalanobis", "crossnobis")
#: on CPU a chunk's working set aims at this many bytes (a share of the L2/L3 caches; bigger
#: chunks leave the caches without being faster), within [_CPU_MIN_CHUNK, _CPU_MAX_CHUNK]
_CPU_WORKSET = 8 * 2 ** 20
_CPU_MIN_CHUNK = 8
_CPU_MAX_CHUNK = 128
_MAX_LABEL_BLOCK = 2 ** 23  # elements of the (voxels x offsets) label block


# --------------------------------------------------------------------------- neighbourhoods
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
    scores = np.asarray(scores)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n_maps, n_centres), got {scores.shape}")
    start, stop = _check_range(centre_range, neighbourhoods.n_centres)
    if scores.shape[1] != stop - start:
        raise ValueError(f"scores cover {scores.shape[1]} centres, expected {stop - start}")
    dtype = np.float32 if scores.dtype == np.float32 else np.float64
    vol = np.full((int(np.prod(neighbourhoods.mask_shape)), scores.shape[0]), np.nan, dtype)
    flat = neighbourhoods.mask_indices[neighbourhoods.centres[start:stop]]
    vol[flat] = scores.T
    return vol.reshape(*neighbourhoods.mask_shape, scores.shape[0])


# --------------------------------------------------------------------------- ranks
_LOW63 = np.int64(0x7FFFFFFFFFFFFFFF)
_LOW31 = np.int32(0x7FFFFFFF)
_RANK_BLOCK = 2 ** 19  # values per ranking block (the key array stays in cache)


def rankdata_average(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension, ties get their average rank (1-based).

    Equals ``scipy.stats.rankdata(x, method='average', axis=-1)`` for finite input.

    Parameters
    ----------
    x : torch.Tensor, (..., n) floating (CPU or CUDA)

    Returns
    -------
    torch.Tensor, (..., n), dtype of ``x`` (float64 if ``x`` is not floating)
    """
    if not x.is_floating_point():
        x = x.to(torch.float64)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    perm, svals, _ = _rank_transform(x2, "ranks")
    out = torch.empty_like(x2)
    out.scatter_(1, perm, svals)
    return out.reshape(shape)


def _rank_sources(n: int) -> dict[str, np.ndarray]:
    """Tie-free sorted-order values (float64) of each rank transform, computed as
    :func:`bids_dnn.rsa.compare.transform_for_measure` does (the mean ``(n + 1) / 2`` is exact)."""
    ranks = np.arange(1, n + 1, dtype=np.float64)
    centred = ranks - (n + 1) / 2
    return {"ranks": ranks, "spearman": centred / np.sqrt(np.einsum("i,i->", centred, centred)),
            "rho_a": centred * np.sqrt(12.0 / (float(n) ** 3 - n))}


def _finish_ties(ranks, mode: str, n: int):
    """Average ranks (k, n) float64 (numpy or torch) -> the transform ``mode``, in place."""
    if mode == "ranks":
        return ranks
    ranks -= (n + 1) / 2
    if mode == "rho_a":
        ranks *= np.sqrt(12.0 / (float(n) ** 3 - n))
    elif isinstance(ranks, np.ndarray):
        with np.errstate(invalid="ignore", divide="ignore"):  # all tied: 0 / 0 = NaN
            ranks /= np.sqrt(np.einsum("ij,ij->i", ranks, ranks))[:, None]
    else:
        ranks /= torch.linalg.vector_norm(ranks, dim=1, keepdim=True)
    return ranks


def _rank_transform(x: torch.Tensor, mode: str, *, numpy_sort: bool | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranks of each row of ``x`` (m, n), transformed, in sorted order.

    ``mode``: ``"ranks"`` (average ranks), ``"spearman"`` (centred, unit norm) or ``"rho_a"``
    (centred, scaled by ``sqrt(12 / (n^3 - n))``), as in :mod:`bids_dnn.rsa.compare`.
    ``numpy_sort``: use the numpy key sort (default: on CPU) or ``torch.sort`` (CUDA; tests
    run it on CPU too).

    Returns
    -------
    perm : (m, n) int64, the sorting permutation of each row (scatter ``vals`` with it)
    vals : (m, n) dtype of ``x``, the transformed ranks in sorted order
    bad : (m,) bool, rows holding NaN or infinite values
    """
    n = x.shape[1]
    if numpy_sort is None:
        numpy_sort = x.device.type == "cpu"
    if numpy_sort:
        perm, vals, bad = _rank_transform_numpy(x.cpu().numpy(), mode)
        return tuple(torch.from_numpy(v).to(x.device) for v in (perm, vals, bad))  # type: ignore
    svals, perm = torch.sort(x, dim=1)
    eq = svals[:, 1:] == svals[:, :-1]
    tied = torch.nonzero(eq.any(dim=1)).reshape(-1)
    bad = ~(torch.isfinite(svals[:, 0]) & torch.isfinite(svals[:, -1]))
    vals = torch.as_tensor(_rank_sources(n)[mode], dtype=x.dtype, device=x.device)
    vals = vals.expand(x.shape[0], n).clone()
    if tied.numel():
        vals[tied] = _finish_ties(_sorted_average_ranks_torch(eq[tied]), mode, n).to(x.dtype)
    return perm, vals, bad


def _order_keys(a: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Integers with the order of the values of ``a`` (float32 or float64), shifted left to
    leave room for a column index: (keys int64 (m, n), shift, exact)."""
    n = a.shape[-1]
    if a.dtype == np.float32:
        bits = (a + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into 0.0
        bits ^= (bits >> 31) & _LOW31  # negative values: reverse their order
        key = bits.astype(np.int64)
        shift, exact = 32, True
    else:
        key = (a + 0.0).view(np.int64)
        key ^= (key >> 63) & _LOW63
        shift, exact = max(1, (n - 1).bit_length()), False
        key >>= shift  # drop the low mantissa bits (float64 has no room for the index)
    key <<= shift
    return key, shift, exact


def _rank_transform_numpy(a: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """CPU twin of :func:`_rank_transform`: one SIMD integer sort per row, no argsort.

    Each value becomes an integer with the same order (IEEE bits, negatives reversed), shifted
    left and or-ed with its column index; sorting these keys gives the permutation (low bits)
    and the sorted values (high bits) at once. float32 keys are exact; float64 keys lose the
    low ``log2(n)`` mantissa bits, and runs of equal truncated keys (rare) are re-sorted by
    their exact values. Rows are processed in cache-sized blocks.
    """
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    m, n = a.shape
    perm = np.empty((m, n), dtype=np.int64)
    vals = np.empty((m, n), dtype=a.dtype)
    bad = np.zeros(m, dtype=bool)
    src = _rank_sources(n)[mode].astype(a.dtype)
    inf_keys, _, _ = _order_keys(np.array([[np.inf, -np.inf]], dtype=a.dtype))
    step = max(1, _RANK_BLOCK // max(1, n))
    for r0 in range(0, m, step):
        blk = a[r0:r0 + step]
        key, shift, exact = _order_keys(blk)
        key |= np.arange(n, dtype=np.int64)
        key.sort(axis=1)
        p = perm[r0:r0 + step]
        np.bitwise_and(key, np.int64((1 << shift) - 1), out=p)
        # +inf and positive NaN sort last, -inf and negative NaN first
        bad[r0:r0 + step] = (key[:, -1] >= inf_keys[0, 0]) | (key[:, 0] <= inf_keys[0, 1])
        key >>= shift
        eq = key[:, 1:] == key[:, :-1]
        if not exact and eq.any():
            _exact_runs(blk, p, eq)
        v = vals[r0:r0 + step]
        v[:] = src
        tied = np.flatnonzero(eq.any(axis=1))
        if tied.size:
            v[tied] = _finish_ties(_sorted_average_ranks_numpy(eq[tied]), mode, n)
    return perm, vals, bad


def _exact_runs(a: np.ndarray, perm: np.ndarray, eq: np.ndarray) -> None:
    """Re-sort runs of equal truncated keys by exact value (in ``perm``) and set ``eq`` to
    exact equality. ``a``, ``perm`` (m, n); ``eq`` (m, n - 1), all C-contiguous."""
    m, n = a.shape
    starts, lens = _runs(eq)
    pos = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    run = np.repeat(np.arange(starts.size), lens)
    rows = pos // n
    flat = perm.reshape(-1)
    vals = a.reshape(-1)[rows * n + flat[pos]]
    order = np.lexsort((vals, run))
    flat[pos] = flat[pos][order]
    vals = vals[order]
    same = np.flatnonzero((run[1:] == run[:-1]) & (vals[1:] == vals[:-1]))
    eq[...] = False
    eq.reshape(-1)[rows[same] * (n - 1) + pos[same] % n] = True


def _runs(eq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of ties from ``eq`` (k, n - 1): flat start positions in the (k, n) grid and run
    lengths (>= 2)."""
    k, n = eq.shape[0], eq.shape[1] + 1
    pad = np.zeros((k, n + 1), dtype=np.int8)
    pad[:, 1:n] = eq
    step = np.diff(pad, axis=1)  # +1 at the first position of a run, -1 after its last
    starts = np.flatnonzero(step == 1)
    return starts, np.flatnonzero(step == -1) - starts + 1


def _sorted_average_ranks_numpy(eq: np.ndarray) -> np.ndarray:
    """Average ranks (k, n) in sorted order from ``eq[r, p] = sorted[r, p + 1] == sorted[r, p]``.

    Only the runs of ties are touched: a run over sorted positions ``s..e`` gets
    ``(s + e) / 2 + 1``, every other position ``p + 1``.
    """
    k, n = eq.shape[0], eq.shape[1] + 1
    out = np.empty((k, n))
    out[:] = np.arange(1, n + 1, dtype=np.float64)
    if k == 0:
        return out
    starts, lens = _runs(eq)
    pos = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    out.reshape(-1)[pos] = np.repeat((starts % n) + (lens - 1) * 0.5 + 1.0, lens)
    return out


def _sorted_average_ranks_torch(eq: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`_sorted_average_ranks_numpy` (for CUDA)."""
    k, n = eq.shape[0], eq.shape[1] + 1
    pos = torch.arange(n, device=eq.device).expand(k, n)
    new = torch.ones(k, n, dtype=torch.bool, device=eq.device)
    new[:, 1:] = ~eq
    last = torch.ones_like(new)
    last[:, :-1] = ~eq
    start = torch.where(new, pos, 0).cummax(dim=1).values
    end = torch.where(last, pos, n - 1).flip(1).cummin(dim=1).values.flip(1)
    return (start + end).to(torch.float64) / 2 + 1


# --------------------------------------------------------------------------- transforms
def _whiten(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n_cond: int) -> torch.Tensor:
    """Torch twin of :func:`bids_dnn.rsa.compare.whiten_rdm_vectors`: (b, p) -> (b, p + n_cond)."""
    g = torch.zeros(x.shape[0], n_cond, n_cond, dtype=x.dtype, device=x.device)
    g[:, rows, cols] = -0.5 * x
    g[:, cols, rows] = -0.5 * x
    mean_row = g.mean(dim=2, keepdim=True)
    g = g - mean_row - mean_row.transpose(1, 2) + g.mean(dim=(1, 2), keepdim=True)
    return torch.cat([math.sqrt(2.0) * g[:, rows, cols], torch.diagonal(g, dim1=1, dim2=2)], 1)


class _Transform:
    """Batched torch twin of :func:`bids_dnn.rsa.compare.transform_for_measure` for data rows."""

    def __init__(self, measure: str, n_pairs: int, n_cond: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        if measure not in LINEAR_MEASURES:
            if measure == "kendall_tau_a":
                raise ValueError("kendall_tau_a is not a dot product of transformed RDMs; use "
                                 "searchlight_rdms and bids_dnn.rsa.compare.compare_rdms")
            raise ValueError(f"unknown comparison {measure!r}; choose from {LINEAR_MEASURES}")
        self.measure, self.n, self.n_cond, self.dtype = measure, n_pairs, n_cond, dtype
        rows, cols = pair_indices(n_cond)
        self.rows = torch.as_tensor(rows, device=device)
        self.cols = torch.as_tensor(cols, device=device)

    def __call__(self, x: torch.Tensor, live: slice) -> torch.Tensor:
        """Transform rows ``x`` (b, n_pairs), overwriting ``x`` where possible. Rows outside
        ``live`` are not used (ranked measures leave them zero); rows with NaN / inf come out
        NaN."""
        m = self.measure
        if m in ("spearman", "rho_a"):
            out = torch.empty_like(x)
            out[:live.start].zero_()
            out[live.stop:].zero_()
            perm, vals, bad = _rank_transform(x[live], m)
            dst = out[live]
            dst.scatter_(1, perm, vals)
            if bool(bad.any()):
                dst[bad] = float("nan")
            return out
        # x is a fresh tensor owned by the caller's chunk: transform it in place
        if m in ("pearson", "corr_cov"):
            x.sub_(x.mean(dim=1, keepdim=True))
        if m in ("corr_cov", "cosine_cov"):
            x = _whiten(x, self.rows, self.cols, self.n_cond)
        return x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True))


# --------------------------------------------------------------------------- engine
def chunk_size_for_budget(n_cond: int, max_sphere_size: int, memory_budget_bytes: int, *,
                          n_runs: int = 1, n_models: int = 0, comparison: str | None = None,
                          itemsize: int = 8, n_centres: int | None = None,
                          per_sphere_bytes: bool = False) -> int:
    """Number of spheres per chunk so that a chunk's working memory fits the budget.

    Parameters
    ----------
    n_cond : int
        Conditions per RDM.
    max_sphere_size : int
        Voxels of the largest sphere (the padded width of a chunk).
    memory_budget_bytes : int
        Budget for a chunk's intermediate arrays (the patterns and the output are not included).
    n_runs : int
        Runs per condition (crossnobis), else 1.
    n_models : int
        Model RDMs scored per sphere (0 when only RDMs are computed).
    comparison : str, optional
        Comparison measure (ranking and whitening need more memory).
    itemsize : int
        Bytes per value (8 for float64, 4 for float32).
    n_centres : int, optional
        Upper bound on the result.
    per_sphere_bytes : bool
        Return the estimated working memory of one sphere (bytes) instead.

    Returns
    -------
    int
        Spheres per chunk, at least 1 (or bytes per sphere).
    """
    n_pairs = n_cond * (n_cond - 1) // 2
    feats = max(1, n_runs) * n_cond
    k = max(1, int(max_sphere_size))
    per = itemsize * (3 * k * feats + 2 * n_cond * n_cond + 4 * n_pairs + n_models) + 8 * k
    if comparison in ("spearman", "rho_a"):
        per += (2 * itemsize + 8 + 1) * n_pairs
    elif comparison in ("corr_cov", "cosine_cov"):
        per += itemsize * (3 * n_cond * n_cond + n_pairs + n_cond)
    if per_sphere_bytes:
        return per
    size = max(1, int(memory_budget_bytes) // per)
    if n_centres is not None:
        size = max(1, min(size, int(n_centres)))
    return size


def _all_finite(x: torch.Tensor, block: int = 2 ** 22) -> bool:
    """Whether ``x`` holds no NaN / inf, without a full-size boolean temporary: a finite sum
    proves it; otherwise (NaN, inf, or an overflowing sum) check block by block."""
    if bool(torch.isfinite(x.sum())):
        return True
    flat = x.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + block]).all())
               for i in range(0, flat.numel(), block))


def _check_range(centre_range: tuple[int, int] | None, n_centres: int) -> tuple[int, int]:
    if centre_range is None:
        return 0, n_centres
    start, stop = (int(v) for v in centre_range)
    if not 0 <= start <= stop <= n_centres:
        raise ValueError(f"centre_range {centre_range} outside [0, {n_centres}]")
    return start, stop


class _Engine:
    """Prepared patterns and per-chunk RDM computation shared by the public functions."""

    def __init__(self, patterns: np.ndarray, nb: Neighbourhoods, measure: str,
                 dtype: np.dtype | type, device: str | torch.device,
                 noise_variance: np.ndarray | None) -> None:
        if measure not in SEARCHLIGHT_RDM_MEASURES:
            raise ValueError(f"unknown RDM measure {measure!r}; choose from "
                             f"{SEARCHLIGHT_RDM_MEASURES}")
        patterns = np.asarray(patterns)
        if patterns.dtype not in (np.float32, np.float64):
            patterns = patterns.astype(np.float64)
        n_vox = nb.n_mask_voxels
        if measure == "crossnobis":
            if patterns.ndim != 3 or patterns.shape[0] < 2:
                raise ValueError("crossnobis needs patterns (n_runs >= 2, n_cond, n_voxels), got "
                                 f"{patterns.shape}")
            n_runs, n_cond = patterns.shape[:2]
        else:
            if patterns.ndim != 2:
                raise ValueError(f"patterns must be (n_cond, n_voxels), got {patterns.shape}")
            n_runs, n_cond = 1, patterns.shape[0]
        if patterns.shape[-1] != n_vox:
            raise ValueError(f"patterns have {patterns.shape[-1]} voxels, the mask {n_vox}")
        pair_indices(n_cond)
        if noise_variance is not None and measure not in ("mahalanobis", "crossnobis"):
            raise ValueError("noise_variance is only used by mahalanobis/crossnobis, not "
                             f"{measure}")
        self.measure, self.n_runs, self.n_cond = measure, n_runs, n_cond
        self.n_pairs = n_cond * (n_cond - 1) // 2
        self.tdtype = torch_dtype(dtype)
        self.device = torch.device(device)
        self.nb = nb
        self.pad = n_vox  # index of the zero row
        self.k = max(1, nb.max_size)
        self.full = bool(nb.n_centres) and bool(np.all(nb.sizes() == self.k))
        # voxel-major copy (n_vox + 1, n_runs * n_cond) in the compute dtype; last row zero
        feats = n_runs * n_cond
        pt = torch.zeros(n_vox + 1, feats, dtype=self.tdtype, device=self.device)
        if not (patterns.flags.c_contiguous or patterns.flags.f_contiguous) \
                or not patterns.dtype.isnative:
            patterns = np.ascontiguousarray(patterns, dtype=patterns.dtype.newbyteorder("="))
        pt[:n_vox].copy_(torch.from_numpy(patterns).reshape(feats, n_vox).T)
        if not _all_finite(pt):
            raise ValueError("patterns contain NaN or infinite values")
        if noise_variance is not None:
            var = np.asarray(noise_variance, dtype=np.float64)
            if var.shape != (n_vox,) or not np.all(np.isfinite(var)) or np.any(var <= 0):
                raise ValueError(f"noise_variance must be ({n_vox},) positive finite values")
            pt[:n_vox] /= torch.as_tensor(np.sqrt(var), dtype=self.tdtype,
                                          device=self.device)[:, None]
        if measure in ("euclidean", "sqeuclidean", "mahalanobis"):
            # distances between conditions do not change when a voxel's mean over the
            # conditions is removed; removing it keeps the Gram entries (g_ii + g_jj - 2 g_ij)
            # small, so a large common offset (raw BOLD) does not cancel digits away
            pt[:n_vox] -= pt[:n_vox].mean(dim=1, keepdim=True)
        self.pt = pt
        rows, cols = pair_indices(n_cond)
        self.flat_pairs = torch.as_tensor(rows * n_cond + cols, device=self.device)
        self.flat_pairs_t = torch.as_tensor(cols * n_cond + rows, device=self.device)
        self.diag_rows = torch.as_tensor(rows * (n_cond + 1), device=self.device)
        self.diag_cols = torch.as_tensor(cols * (n_cond + 1), device=self.device)
        self.ones = torch.ones(1, n_cond, n_cond, dtype=self.tdtype, device=self.device)
        self.rows = torch.as_tensor(rows, device=self.device)
        self.cols = torch.as_tensor(cols, device=self.device)

    def chunks(self, start: int, stop: int, size: int) -> Iterator[tuple[int, int, int]]:
        """``(chunk_start, lo, hi)``: absolute chunks of ``size`` centres cut to [start, stop)."""
        for a in range((start // size) * size, stop, size):
            yield a, max(a, start), min(a + size, stop)

    def gather_index(self, a: int, lo: int, hi: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Padded neighbour index (size, k) and voxel counts (size,) of chunk slots."""
        nb = self.nb
        ptr = nb.indptr
        if self.full and lo == a and hi == a + size:
            idx = nb.indices[ptr[lo]:ptr[hi]].reshape(size, self.k)
            return idx, np.full(size, self.k, dtype=np.int64)
        idx = np.full((size, self.k), self.pad, dtype=np.int64)
        counts = np.ones(size, dtype=np.int64)  # 1 for empty slots avoids 0 / 0
        sizes = ptr[lo + 1:hi + 1] - ptr[lo:hi]
        slot = np.repeat(np.arange(lo - a, hi - a), sizes)
        col = np.arange(ptr[hi] - ptr[lo]) - np.repeat(ptr[lo:hi] - ptr[lo], sizes)
        idx[slot, col] = nb.indices[ptr[lo]:ptr[hi]]
        counts[lo - a:hi - a] = sizes
        return idx, counts

    def rdms(self, idx: np.ndarray, counts: np.ndarray, rows: slice = slice(None),
             out: torch.Tensor | None = None) -> torch.Tensor:
        """RDMs of the chunk's spheres: (size, n_pairs), or only the slots ``rows``, written
        into ``out`` when given (same device). Every sphere is computed on its own (one GEMM
        per sphere, reductions per sphere), whatever else the batch holds."""
        idx, counts = idx[rows], counts[rows]
        n, k = idx.shape
        dev = self.device
        x = self.pt.index_select(0, torch.from_numpy(idx.reshape(-1)).to(dev))
        cnt = torch.from_numpy(counts).to(dev, self.tdtype)[:, None]  # (n, 1)
        m = self.measure
        if m == "crossnobis":
            r, c = self.n_runs, self.n_cond
            # sum_{r != s} X_r^T X_s = sum_r X_r^T (sum_s X_s - X_r): one product over the runs
            # stacked as rows; equal to Gram(sum over runs) - sum_r Gram(run r) without the
            # cancellation between those two large terms
            x = x.view(n, k, r, c)
            others = x.sum(dim=2, keepdim=True) - x
            gram = self._gram(x.view(n, k * r, c), others.view(n, k * r, c))
            return self._pairs(gram, out).div_(cnt * (r * (r - 1)))
        x = x.view(n, k, self.n_cond)  # a fresh tensor: safe to modify in place
        if m in ("correlation", "cosine"):
            if m == "correlation":
                x.sub_(x.sum(dim=1, keepdim=True) / cnt[:, :, None])
                if np.any(counts != k):  # zero the padding again
                    x.mul_(torch.from_numpy(idx != self.pad).to(dev, self.tdtype)[:, :, None])
            x.mul_((x * x).sum(dim=1, keepdim=True).sqrt_().reciprocal_())
            # 1 - r inside the GEMM (a syrk and a separate 1 - r measured no faster here)
            one_minus_r = torch.baddbmm(self.ones, x.transpose(1, 2), x, alpha=-1.0)
            return self._take(one_minus_r.view(n, -1), self.flat_pairs, out)
        d = self._pairs(self._gram_sym(x), out, symmetric=True)
        if m == "euclidean":
            return d.clamp_(min=0.0).sqrt_()
        return d.div_(cnt)

    @staticmethod
    def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Batched ``a^T b``: (size, k, c), (size, k, c) -> (size, c, c); one GEMM per
        matrix, so a sphere's result does not depend on the other spheres of its chunk."""
        return torch.bmm(a.transpose(1, 2), b)

    @staticmethod
    def _gram_sym(x: torch.Tensor) -> torch.Tensor:
        """Batched ``x^T x``: (size, k, c) -> (size, c, c). On CPU numpy's ``matmul`` of a
        matrix with its own transpose runs one BLAS ``syrk`` per matrix (half the products of
        a GEMM: 62 instead of 78 ms of CPU for B2's 15 376 spheres, c = 60, k = 27), and
        the result is exactly symmetric (CUDA: ``bmm``). The same for every caller, so that
        :func:`searchlight_rsa` ranks exactly the RDMs of :func:`searchlight_rdms`."""
        if x.device.type != "cpu":
            return torch.bmm(x.transpose(1, 2), x)
        xn = x.numpy()
        return torch.from_numpy(np.matmul(xn.transpose(0, 2, 1), xn))

    def _pairs(self, gram: torch.Tensor, out: torch.Tensor | None = None, *,
               symmetric: bool = False) -> torch.Tensor:
        """``g_ii + g_jj - g_ij - g_ji`` per pair: (b, n, n) -> (b, n_pairs) (``2 g_ij``
        when ``gram`` is ``symmetric``, i.e. ``x^T x``: one gather less)."""
        flat = gram.reshape(gram.shape[0], -1)
        d = self._take(flat, self.diag_rows, out)
        d += self._take(flat, self.diag_cols)
        if symmetric:
            return d.sub_(self._take(flat, self.flat_pairs), alpha=2.0)
        d -= self._take(flat, self.flat_pairs)
        d -= self._take(flat, self.flat_pairs_t)
        return d

    @staticmethod
    def _take(x: torch.Tensor, index: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """``x[:, index]`` for x (b, m) (into ``out`` if given); ``gather`` is much faster
        than ``index_select`` along dim 1 on CPU."""
        if out is None:
            return torch.gather(x, 1, index.expand(x.shape[0], -1))
        return torch.gather(x, 1, index.expand(x.shape[0], -1), out=out)


def _chunk_size(engine: _Engine, budget: int, n_models: int, comparison: str | None,
                n_workers: int) -> int:
    """Global chunk size (nothing range-specific enters, for bit-identical partitions)."""
    itemsize = torch.empty(0, dtype=engine.tdtype).element_size()
    size = chunk_size_for_budget(engine.n_cond, engine.k, budget // n_workers,
                                 n_runs=engine.n_runs, n_models=n_models, comparison=comparison,
                                 itemsize=itemsize, n_centres=max(1, engine.nb.n_centres))
    if engine.device.type == "cpu":  # keep a chunk's working set in the caches
        per_sphere = chunk_size_for_budget(engine.n_cond, engine.k, 1, n_runs=engine.n_runs,
                                           n_models=n_models, comparison=comparison,
                                           itemsize=itemsize, per_sphere_bytes=True)
        size = min(size, max(_CPU_MIN_CHUNK, min(_CPU_MAX_CHUNK, _CPU_WORKSET // per_sphere)))
    return size


def _n_workers(device: torch.device, num_threads: int | None) -> int:
    if device.type != "cpu":
        return 1
    n = torch.get_num_threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return n


def _run_chunks(eng: _Engine, start: int, stop: int, size: int, n_workers: int,
                work: Callable[[int, int, int], None], on_chunk: Callable[[int], None] | None = None) -> None:
    """Call ``work(chunk_start, lo, hi)`` for every chunk, then ``on_chunk(hi - lo)`` (progress).

    On CPU the chunks are shared among ``n_workers`` Python threads while torch runs with one
    intra-op thread (:func:`bids_dnn.backend.torch_threads`; the ops release the GIL). This keeps the
    cores busy without the OpenMP barriers that make many small parallel ops collapse when
    other processes share the cores, and every chunk is computed the same way whichever thread
    runs it.
    """
    chunks = list(eng.chunks(start, stop, size))
    with torch.no_grad(), no_tf32():
        if n_workers == 1 or len(chunks) < 2:
            for chunk in chunks:
                work(*chunk)
                if on_chunk is not None:
                    on_chunk(chunk[2] - chunk[1])
            return
        with ThreadPoolExecutor(min(n_workers, len(chunks))) as pool:
            for chunk, future in [(c, pool.submit(_no_grad_call, work, *c)) for c in chunks]:
                future.result()
                if on_chunk is not None:
                    on_chunk(chunk[2] - chunk[1])


def _no_grad_call(work: Callable[[int, int, int], None], a: int, lo: int, hi: int) -> None:
    with torch.no_grad():  # grad mode is thread-local
        work(a, lo, hi)


def searchlight_rdms(patterns: np.ndarray, neighbourhoods: Neighbourhoods,
                     measure: str = "correlation", *,
                     centre_range: tuple[int, int] | None = None,
                     device: str | torch.device = "cpu", dtype: np.dtype | type = np.float64,
                     noise_variance: np.ndarray | None = None,
                     memory_budget_bytes: int = 2 ** 30,
                     num_threads: int | None = None) -> np.ndarray:
    """RDM of every searchlight sphere (see the module docstring for the conventions).

    Parameters
    ----------
    patterns : np.ndarray, (n_cond, n_mask_voxels)
        Condition patterns over the mask's voxels (``np.flatnonzero(mask)`` order). For
        ``crossnobis``: (n_runs, n_cond, n_mask_voxels).
    neighbourhoods : Neighbourhoods
        From :func:`sphere_neighbourhoods` on the same mask.
    measure : str
        One of ``SEARCHLIGHT_RDM_MEASURES``.
    centre_range : (start, stop), optional
        Only these centres (default: all).
    device : ``"cpu"`` or ``"cuda"``
    dtype : float64 (default) or float32
    noise_variance : np.ndarray, (n_mask_voxels,), optional
        Per-voxel noise variance (diagonal noise precision ``1 / noise_variance``);
        ``mahalanobis`` and ``crossnobis`` only.
    memory_budget_bytes : int
        Working memory of the chunks in flight (the inputs and the result are not included).
    num_threads : int, optional
        CPU worker threads (default ``torch.get_num_threads()``).

    Returns
    -------
    np.ndarray, (stop - start, n_pairs) of ``dtype``
    """
    n_workers = _n_workers(torch.device(device), num_threads)  # before torch is single-threaded
    with torch_threads(1, device):
        return _searchlight_rdms(patterns, neighbourhoods, measure, centre_range, device, dtype,
                                 noise_variance, memory_budget_bytes, n_workers)


def _searchlight_rdms(patterns, nb, measure, centre_range, device, dtype, noise_variance,
                      memory_budget_bytes, n_workers) -> np.ndarray:
    start, stop = _check_range(centre_range, nb.n_centres)
    eng = _Engine(patterns, nb, measure, dtype, device, noise_variance)
    # torch's allocator, unlike numpy's, does not ask for transparent huge pages. 4 KiB pages
    # cost ~1.5 us each to fault in (~0.08 s of CPU for 208 MiB, spread over the workers,
    # which touch their own rows first); huge pages are ~3x cheaper when the kernel has them
    # resident, but free 2 MiB blocks are handed back to the hypervisor (virtio-balloon free
    # page reporting) within seconds, and faulting those in again took 0.3-0.7 s
    out = torch.empty((stop - start, eng.n_pairs), dtype=eng.tdtype).numpy()
    size = _chunk_size(eng, memory_budget_bytes, 0, None, n_workers)

    def work(a: int, lo: int, hi: int) -> None:
        live = slice(lo - a, hi - a)
        if eng.device.type == "cpu":  # write straight into the result
            eng.rdms(*eng.gather_index(a, lo, hi, size), live,
                     torch.from_numpy(out[lo - start:hi - start]))
        else:
            out[lo - start:hi - start] = eng.rdms(*eng.gather_index(a, lo, hi, size),
                                                  live).cpu().numpy()

    _run_chunks(eng, start, stop, size, n_workers, work)
    return out


def searchlight_rsa(patterns: np.ndarray, neighbourhoods: Neighbourhoods,
                    model_rdms: np.ndarray, *, rdm_measure: str = "correlation",
                    comparison: str = "spearman", centre_range: tuple[int, int] | None = None,
                    device: str | torch.device = "cpu", dtype: np.dtype | type = np.float64,
                    memory_budget_bytes: int = 2 ** 30,
                    noise_variance: np.ndarray | None = None,
                    num_threads: int | None = None,
                    on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """Compare every searchlight RDM with every model RDM, without storing the RDMs.

    Parameters
    ----------
    patterns : np.ndarray, (n_cond, n_mask_voxels) or (n_runs, n_cond, n_mask_voxels)
        As in :func:`searchlight_rdms`.
    neighbourhoods : Neighbourhoods
    model_rdms : np.ndarray, (n_models, n_pairs) or (n_pairs,)
        Model RDMs in vector form (``np.triu_indices(n_cond, k=1)`` order).
    rdm_measure : str
        One of ``SEARCHLIGHT_RDM_MEASURES``.
    comparison : str
        One of ``bids_dnn.rsa.compare.LINEAR_MEASURES`` (default ``"spearman"``).
    centre_range : (start, stop), optional
        Only these centres (default: all); parts from :func:`partition_centres` concatenate
        bit-identically to a single run (same budget, dtype, device and thread count).
    device : ``"cpu"`` or ``"cuda"``
    dtype : float64 (default, exact) or float32
    memory_budget_bytes : int
        Working memory of the chunks in flight (the inputs and the result are not included).
    noise_variance : np.ndarray, (n_mask_voxels,), optional
        As in :func:`searchlight_rdms`.
    num_threads : int, optional
        CPU worker threads (default ``torch.get_num_threads()``).
    on_chunk : callable, optional
        Called with the number of centres of each finished chunk (progress reporting).

    Returns
    -------
    np.ndarray, (n_models, stop - start) of ``dtype``
        ``compare_rdms(rdm_of_centre, model_rdms, comparison)``; NaN for spheres whose RDM
        is constant or not finite, and for constant models.
    """
    n_workers = _n_workers(torch.device(device), num_threads)  # before torch is single-threaded
    with torch_threads(1, device):
        return _searchlight_rsa(patterns, neighbourhoods, model_rdms, rdm_measure, comparison,
                                centre_range, device, dtype, memory_budget_bytes,
                                noise_variance, n_workers, on_chunk)


def _searchlight_rsa(patterns, nb, model_rdms, rdm_measure, comparison, centre_range, device,
                     dtype, memory_budget_bytes, noise_variance, n_workers, on_chunk=None) -> np.ndarray:
    start, stop = _check_range(centre_range, nb.n_centres)
    eng = _Engine(patterns, nb, rdm_measure, dtype, device, noise_variance)
    models = np.asarray(model_rdms, dtype=np.float64)
    if models.ndim == 1:
        models = models[None]
    if models.ndim != 2 or models.shape[1] != eng.n_pairs:
        raise ValueError(f"model_rdms must be (n_models, {eng.n_pairs}), got {models.shape}")
    if not np.all(np.isfinite(models)):
        raise ValueError("model_rdms contain NaN or infinite values")
    transform = _Transform(comparison, eng.n_pairs, eng.n_cond, eng.tdtype, eng.device)
    # models: the same transform once, in float64 and in blocks of rows (= the result of
    # compare.transform_for_measure; constant models give NaN rows), stored (n_features, n_models)
    n_feat = eng.n_pairs + (eng.n_cond if comparison in ("corr_cov", "cosine_cov") else 0)
    tm = torch.empty((n_feat, models.shape[0]), dtype=eng.tdtype, device=eng.device)
    model_transform = _Transform(comparison, eng.n_pairs, eng.n_cond, torch.float64,
                                 torch.device("cpu"))
    step = max(1, _RANK_BLOCK // eng.n_pairs)
    with torch.no_grad():
        for b0 in range(0, models.shape[0], step):
            block = model_transform(torch.tensor(models[b0:b0 + step]), slice(None))
            tm[:, b0:b0 + step] = block.T.to(eng.device, eng.tdtype)
    out = np.empty((models.shape[0], stop - start), dtype=np.dtype(dtype))
    size = _chunk_size(eng, memory_budget_bytes, models.shape[0], comparison, n_workers)

    def work(a: int, lo: int, hi: int) -> None:
        rdm = eng.rdms(*eng.gather_index(a, lo, hi, size))
        live = slice(lo - a, hi - a)
        # NaN RDM rows (e.g. zero-variance patterns) give NaN transformed rows and scores
        scores = (transform(rdm, live) @ tm)[live]  # (hi - lo, n_models)
        out[:, lo - start:hi - start] = scores.T.cpu().numpy()

    _run_chunks(eng, start, stop, size, n_workers, work, on_chunk)
    return out
