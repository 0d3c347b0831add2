"""Searchlight RSA: a fused, chunked RDM + comparison engine over sphere neighbourhoods.

Pure numerical functions (numpy / torch): no BIDS, no files, no printing, no progress bars.

Neighbourhoods
    From :func:`bids_dnn.searchlight.neighbourhoods.sphere_neighbourhoods` (mask-voxel
    numbering, sphere and centre conventions are described there).
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
    (:func:`~bids_dnn.searchlight.neighbourhoods.partition_centres`) is bit-identical to a
    single run with the same memory budget, dtype, device and thread count. Float64 (default, exact to rounding) or float32; TF32 is
    disabled; the same code runs on ``"cpu"`` and ``"cuda"``. On CPU, torch runs
    single-threaded and ``num_threads`` Python threads share the chunks (no OpenMP barriers
    between the many small operations), and ranks come from one SIMD integer sort of
    (value, index) keys instead of an argsort (:mod:`bids_dnn.searchlight.ranks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from bids_dnn.backend import float_dtype, no_tf32, torch_dtype, torch_threads
from bids_dnn.rsa.measures import LINEAR_MEASURES, RDM_MEASURE_NAMES
from bids_dnn.rsa.rdm import pair_indices
from bids_dnn.searchlight.neighbourhoods import Neighbourhoods, _check_range
from bids_dnn.searchlight.ranks import _RANK_BLOCK, _rank_transform

__all__ = [
    "SEARCHLIGHT_RDM_MEASURES",
    "searchlight_rdms",
    "searchlight_rsa",
    "chunk_size_for_budget",
]

#: RDM measures the searchlight engine computes
SEARCHLIGHT_RDM_MEASURES: tuple[str, ...] = RDM_MEASURE_NAMES  # every registered RDM measure
#: on CPU a chunk's working set aims at this many bytes (a share of the L2/L3 caches; bigger
#: chunks leave the caches without being faster), within [_CPU_MIN_CHUNK, _CPU_MAX_CHUNK]
_CPU_WORKSET = 8 * 2 ** 20
_CPU_MIN_CHUNK = 8
_CPU_MAX_CHUNK = 128


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
        Only these centres (default: all); parts from
        :func:`~bids_dnn.searchlight.neighbourhoods.partition_centres` concatenate
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
    out = np.empty((models.shape[0], stop - start), dtype=float_dtype(dtype))
    size = _chunk_size(eng, memory_budget_bytes, models.shape[0], comparison, n_workers)

    def work(a: int, lo: int, hi: int) -> None:
        rdm = eng.rdms(*eng.gather_index(a, lo, hi, size))
        live = slice(lo - a, hi - a)
        # NaN RDM rows (e.g. zero-variance patterns) give NaN transformed rows and scores
        scores = (transform(rdm, live) @ tm)[live]  # (hi - lo, n_models)
        out[:, lo - start:hi - start] = scores.T.cpu().numpy()

    _run_chunks(eng, start, stop, size, n_workers, work, on_chunk)
    return out
