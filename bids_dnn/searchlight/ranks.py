"""Average ranks and the rank transforms of the searchlight comparisons (numpy / torch).

:func:`rankdata_average` is ``scipy.stats.rankdata(x, method="average", axis=-1)`` in torch.
The private helpers give each row's sorting permutation together with its transformed ranks
in sorted order (``"ranks"``, ``"spearman"``: centred and unit norm, ``"rho_a"``: centred and
scaled by ``sqrt(12 / (n^3 - n))``, as :mod:`bids_dnn.rsa.compare`), so that a scatter puts
them in place. On CPU the ranks come from one SIMD integer sort of (value, index) keys instead
of an argsort; on CUDA from ``torch.sort``. Ties get their average rank.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rankdata_average"]

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
