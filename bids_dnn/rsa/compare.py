"""Comparison of RDMs (second-level similarity), vectorised.

RDMs are vectors in the pair order of ``np.triu_indices(n_cond, k=1)`` (see
:mod:`bids_dnn.rsa.rdm`). ``compare_rdms(a, b, measure)`` returns the signed similarity of every
row of ``a`` with every row of ``b``.

Measures (``COMPARISON_MEASURES``, registered in :mod:`bids_dnn.rsa.measures`; rsatoolbox
``compare`` name in brackets)
    ``spearman``       [``spearman``] Pearson correlation of the ranks (average ranks for ties).
    ``pearson``        [``corr``] Pearson correlation.
    ``kendall_tau_a``  [``tau-a``] ``(concordant - discordant) / n_pairs_of_pairs``; ties count
                       as neither (no tie correction in the denominator).
    ``rho_a``          [``rho-a``] ``12 sum(rc_a * rc_b) / (n^3 - n)`` with centred ranks ``rc``
                       (expected Spearman under random tie breaking).
    ``cosine``         [``cosine``] cosine similarity.
    ``corr_cov``       [``corr_cov``] Pearson after whitening with the RDM covariance for i.i.d.
                       pattern noise (rsatoolbox ``_get_v`` with ``sigma_k=None``): centre the
                       vector, map it to the double-centred second-moment matrix
                       ``G = -H D H / 2`` and take the cosine of ``[sqrt(2) G_offdiag, G_diag]``.
    ``cosine_cov``     [``cosine_cov``] the same without the initial centring.

All measures except ``kendall_tau_a`` are a plain dot product after a per-row transform
(:func:`transform_for_measure`), so each row is transformed once and all comparisons are one
matrix product. Kendall's tau-a is computed exactly as the dot product of pair-of-pairs sign
vectors, built in chunks as int8 and multiplied with an integer GEMM (counts are exact integers),
or, for few pairs of rows, with scipy's O(n log n) algorithm per pair.

NaN policy: non-finite inputs raise ``ValueError`` (rsatoolbox instead drops pairs that are NaN
in every RDM). Rows with zero norm after the transform (constant RDMs for ``spearman``,
``pearson``, ``corr_cov``; all-zero RDMs for ``cosine``, ``cosine_cov``) give NaN similarities
(rsatoolbox returns 0). ``rho_a`` and ``kendall_tau_a`` are 0 for constant rows, by definition.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.stats
import torch

from bids_dnn.backend import no_tf32, torch_threads
from bids_dnn.rsa.measures import COMPARISON_MEASURE_NAMES
from bids_dnn.rsa.measures import LINEAR_MEASURES  # noqa: F401  (callers import it from here too)
from bids_dnn.rsa.rdm import as_rdm_rows, n_cond_from_pairs, pair_indices

__all__ = [
    "COMPARISON_MEASURES",
    "compare_rdms",
    "compare_paired",
    "transform_for_measure",
    "transform_ranks",
    "kendall_tau_a",
    "whiten_rdm_vectors",
]


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = x / norm
    out[(norm == 0)[:, 0]] = np.nan
    return out


def whiten_rdm_vectors(vectors: np.ndarray) -> np.ndarray:
    """Map RDM vectors to rsatoolbox's isotropic representation (``sigma_k=None``).

    Parameters
    ----------
    vectors : np.ndarray, (n_rdms, n_pairs)

    Returns
    -------
    np.ndarray, (n_rdms, n_pairs + n_cond)
        ``[sqrt(2) * Gc[pairs], diag(Gc)]`` with ``Gc = H (-D / 2) H`` (double centring), the
        representation in which rsatoolbox's ``cosine_cov`` is a plain cosine.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    n_cond = n_cond_from_pairs(vectors.shape[-1])
    rows, cols = pair_indices(n_cond)
    g = np.zeros((vectors.shape[0], n_cond, n_cond))
    g[:, rows, cols] = -0.5 * vectors
    g[:, cols, rows] = -0.5 * vectors
    mean_row = g.mean(axis=2, keepdims=True)
    g = g - mean_row - mean_row.transpose(0, 2, 1) + g.mean(axis=(1, 2), keepdims=True)
    return np.concatenate([np.sqrt(2.0) * g[:, rows, cols],
                           np.diagonal(g, axis1=1, axis2=2)], axis=1)


def transform_ranks(ranks: np.ndarray, measure: str) -> np.ndarray:
    """:func:`transform_for_measure` for ``spearman`` / ``rho_a`` from rows already ranked.

    Ranking is the costly step; callers that hold the average ranks skip it here.
    """
    x = as_rdm_rows(ranks, "ranks")
    x = x - x.mean(axis=1, keepdims=True)
    if measure == "rho_a":
        n = x.shape[1]
        return x * np.sqrt(12.0 / (n ** 3 - n))
    if measure != "spearman":
        raise ValueError(f"transform_ranks is for spearman and rho_a, not {measure!r}")
    return _normalise(x)


def transform_for_measure(vectors: np.ndarray, measure: str) -> np.ndarray:
    """Transform RDM rows so that ``compare_rdms(a, b, m) == T(a, m) @ T(b, m).T``.

    The transforms commute with permuting conditions (a permutation of the pairs), so
    permutation tests can transform once and then only gather.

    Parameters
    ----------
    vectors : np.ndarray, (n_rdms, n_pairs) or (n_pairs,)
    measure : str
        One of ``LINEAR_MEASURES`` (not ``kendall_tau_a``, which is not a dot product in pair
        space).

    Returns
    -------
    np.ndarray, (n_rdms, n_pairs); (n_rdms, n_pairs + n_cond) for ``corr_cov`` / ``cosine_cov``
        (pair part first, then one entry per condition). Rows with zero norm are NaN.
    """
    x = as_rdm_rows(vectors, "vectors")
    if measure in ("spearman", "rho_a"):
        x = scipy.stats.rankdata(x, axis=1)
    if measure in ("spearman", "rho_a", "pearson", "corr_cov"):
        x = x - x.mean(axis=1, keepdims=True)
    if measure == "rho_a":
        n = x.shape[1]
        return x * np.sqrt(12.0 / (n ** 3 - n))
    if measure in ("corr_cov", "cosine_cov"):
        x = whiten_rdm_vectors(x)
    elif measure not in ("spearman", "pearson", "cosine"):
        if measure == "kendall_tau_a":
            raise ValueError("kendall_tau_a is not a dot product of transformed rows; use "
                             "compare_rdms or kendall_tau_a")
        raise ValueError(f"unknown comparison measure {measure!r}; choose from "
                         f"{sorted(COMPARISON_MEASURES)}")
    return _normalise(x)


def _tau_a_pair(x: np.ndarray, y: np.ndarray) -> float:
    """tau-a of two vectors via scipy's O(n log n) tau-b and the tie counts."""
    tot = x.size * (x.size - 1) / 2

    def tied(v: np.ndarray) -> float:
        counts = np.unique(v, return_counts=True)[1].astype(np.float64)
        return float(np.sum(counts * (counts - 1) / 2))

    xtie, ytie = tied(x), tied(y)
    if xtie == tot or ytie == tot:
        return 0.0
    tau_b = scipy.stats.kendalltau(x, y).statistic
    return float(np.clip(tau_b * np.sqrt((tot - xtie) * (tot - ytie)) / tot, -1.0, 1.0))


def kendall_tau_a(a: np.ndarray, b: np.ndarray, *, method: str = "auto",
                  device: str | torch.device = "cpu", chunk: int = 8, max_buffer: int = 2 ** 24,
                  num_threads: int | None = 1) -> np.ndarray:
    """Kendall's tau-a of every row of ``a`` with every row of ``b`` (exact, with ties).

    ``tau_a = sum_{k<l} sign(a_k - a_l) sign(b_k - b_l) / (n (n - 1) / 2)``.

    Parameters
    ----------
    a : np.ndarray, (n_a, n) ; b : np.ndarray, (n_b, n)
    method : {"auto", "matmul", "pairwise"}
        ``matmul``: chunked products of int8 sign matrices (O(n^2) per pair of rows, but in an
        exact int8 GEMM; cost dominated by building O(n^2) signs per row). ``pairwise``: scipy's O(n log n)
        tau-b per pair, rescaled to tau-a with the tie counts. ``auto`` takes ``pairwise``
        on CPU when its estimated cost is lower (few pairs of rows, long vectors).
    device : str or torch.device
        Where the ``matmul`` products run (``"cuda"`` works the same way).
    chunk : int
        Number of pivot elements per block (``matmul``).
    max_buffer : int
        Maximum number of elements per sign buffer (bounds memory, ~50 MB).
    num_threads : int or None
        torch CPU threads during ``matmul`` (default 1: the loop issues many small parallel
        ops, and OpenMP spin-waiting makes them collapse by 10-40x when cores are shared with
        other processes). ``None`` keeps torch's setting (faster on idle many-core machines).

    Returns
    -------
    np.ndarray, (n_a, n_b)
    """
    a = as_rdm_rows(a, "a")
    b = as_rdm_rows(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different lengths ({a.shape[1]} vs {b.shape[1]})")
    n = a.shape[1]
    on_cpu = torch.device(device).type == "cpu"
    if method == "auto":
        # measured CPU costs (ms): ~3e-7 n^2 per row for matmul, ~0.2 + 6e-5 n per pair
        cost_pairs = a.shape[0] * b.shape[0] * (0.2 + 6e-5 * n)
        cost_rows = (a.shape[0] + b.shape[0]) * 3e-7 * n ** 2
        method = "pairwise" if on_cpu and cost_pairs < cost_rows else "matmul"
    if method == "pairwise":
        return np.array([[_tau_a_pair(x, y) for y in b] for x in a]).reshape(len(a), len(b))
    if method != "matmul":
        raise ValueError(f"unknown method {method!r}")
    # dense integer ranks keep every order relation; small ints make the signs cheap
    rank_dtype = np.int16 if n < 2 ** 15 else np.int32
    ra = scipy.stats.rankdata(a, method="dense", axis=1).astype(rank_dtype)
    rb = scipy.stats.rankdata(b, method="dense", axis=1).astype(rank_dtype)
    with torch.no_grad(), no_tf32(), torch_threads(num_threads if on_cpu else None):
        ta = torch.as_tensor(ra, device=device)
        tb = torch.as_tensor(rb, device=device)
        out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.int64, device=ta.device)
        rows_a = max(1, min(a.shape[0], max_buffer // (chunk * n)))
        rows_b = max(1, min(b.shape[0], max_buffer // (chunk * n)))
        for a0 in range(0, a.shape[0], rows_a):
            for b0 in range(0, b.shape[0], rows_b):
                out[a0:a0 + rows_a, b0:b0 + rows_b] = _tau_block(
                    ta[a0:a0 + rows_a], tb[b0:b0 + rows_b], chunk)
        return (out.cpu().numpy() / (n * (n - 1))).clip(-1.0, 1.0)


def _int8_matmul(x: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """Exact ``x @ y_t`` for small int8 entries: int8 GEMM with int32 accumulation where
    torch offers it (``torch._int_mm``), else float32 (exact for sums below 2**24)."""
    try:
        return torch._int_mm(x, y_t).to(torch.int64)
    except (RuntimeError, AttributeError, NotImplementedError):
        return (x.to(torch.float32) @ y_t.to(torch.float32)).to(torch.int64)


def _tau_block(ta: torch.Tensor, tb: torch.Tensor, chunk: int) -> torch.Tensor:
    """``2 * sum_{k<l} sign(a_k - a_l) sign(b_k - b_l)`` for all row pairs (int64).

    Pivots ``k`` come in blocks of ``chunk``; each block is compared with every later
    element. Pairs inside the block's ``w x w`` corner appear twice (both orders), so the
    other entries of ``b``'s signs are doubled instead of halving the corner.
    """
    na, n = ta.shape
    nb = tb.shape[0]
    dev = ta.device
    out = torch.zeros(na, nb, dtype=torch.int64, device=dev)
    diff_a = torch.empty(na * chunk * n, dtype=ta.dtype, device=dev)
    diff_b = torch.empty(nb * chunk * n, dtype=tb.dtype, device=dev)
    sign_a = torch.empty(na * chunk * n, dtype=torch.int8, device=dev)
    sign_b = torch.empty(nb * chunk * n, dtype=torch.int8, device=dev)
    for i0 in range(0, n - 1, chunk):
        i1 = min(i0 + chunk, n)
        w, k = i1 - i0, (i1 - i0) * (n - i0)
        da = torch.sub(ta[:, i0:i1, None], ta[:, None, i0:], out=diff_a[:na * k].view(na, w, -1))
        sa = sign_a[:na * k].view(na, w, -1)
        sa.copy_(da.sign_())
        db = torch.sub(tb[:, i0:i1, None], tb[:, None, i0:], out=diff_b[:nb * k].view(nb, w, -1))
        sb = sign_b[:nb * k].view(nb, w, -1)
        sb.copy_(db.sign_()).mul_(2)
        sb[:, :, :w].copy_(db[:, :, :w])
        out += _int8_matmul(sa.view(na, k), sb.view(nb, k).T)
    return out


def compare_rdms(a: np.ndarray, b: np.ndarray, measure: str = "spearman") -> np.ndarray:
    """Similarity of every RDM in ``a`` with every RDM in ``b``.

    Parameters
    ----------
    a : np.ndarray, (n_a, n_pairs) or (n_pairs,)
    b : np.ndarray, (n_b, n_pairs) or (n_pairs,)
    measure : str
        A key of ``COMPARISON_MEASURES`` (see the module docstring).

    Returns
    -------
    np.ndarray, (n_a, n_b)
        Signed similarities (1-d inputs count as one row).

    Raises
    ------
    ValueError
        Unknown measure, NaN/inf input, or different numbers of pairs.
    """
    if measure not in COMPARISON_MEASURES:
        raise ValueError(f"unknown comparison measure {measure!r}; choose from "
                         f"{sorted(COMPARISON_MEASURES)}")
    a = as_rdm_rows(a, "a")
    b = as_rdm_rows(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b have different numbers of pairs ({a.shape[1]} vs "
                         f"{b.shape[1]})")
    if measure == "kendall_tau_a":
        return kendall_tau_a(a, b)
    return transform_for_measure(a, measure) @ transform_for_measure(b, measure).T


def compare_paired(a: np.ndarray, b: np.ndarray, measure: str = "spearman") -> np.ndarray:
    """Similarity of row ``i`` of ``a`` with row ``i`` of ``b`` only (the diagonal of
    ``compare_rdms(a, b)`` without computing the rest).

    Parameters
    ----------
    a, b : np.ndarray, (n, n_pairs)
    measure : str
        A key of ``COMPARISON_MEASURES``.

    Returns
    -------
    np.ndarray, (n,)
    """
    if measure not in COMPARISON_MEASURES:
        raise ValueError(f"unknown comparison measure {measure!r}; choose from "
                         f"{sorted(COMPARISON_MEASURES)}")
    a = as_rdm_rows(a, "a")
    b = as_rdm_rows(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b differ in shape ({a.shape} vs {b.shape})")
    if measure == "kendall_tau_a":
        return np.array([_tau_a_pair(x, y) for x, y in zip(a, b)])
    return np.einsum("ij,ij->i", transform_for_measure(a, measure),
                     transform_for_measure(b, measure))


def _make_measure(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def measure(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return compare_rdms(a, b, name)
    measure.__name__ = f"compare_{name}"
    measure.__doc__ = f"``compare_rdms(a, b, {name!r})``: (n_a, n_pairs), (n_b, n_pairs) -> (n_a, n_b)."
    return measure


#: name -> function(a (n_a, n_pairs), b (n_b, n_pairs)) -> (n_a, n_b), one per entry of
#: :data:`bids_dnn.rsa.measures.COMPARISON_MEASURE_REGISTRY`
COMPARISON_MEASURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    name: _make_measure(name) for name in COMPARISON_MEASURE_NAMES
}
