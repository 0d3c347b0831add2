"""Inference for CKA: stimulus-label permutation p-values and stimulus-bootstrap confidence intervals.

Everything random takes an explicit ``numpy.random.Generator``; equal generators give equal
results, independent of the memory budget (permutations and resamples are drawn block by block
in one sequence, which is the sequence of a single draw).

Permutation test
    Under the null the stimulus labels of one set are exchangeable: the second set's Gram
    matrix is permuted, rows and columns together (``L'_ij = L_pi(i) pi(j)``). Preparing a Gram
    (centring, U-centring) commutes with the permutation, so each set is prepared once and a
    permutation is an index gather of its upper triangle; a block of permutations is one
    gather and one matrix product against every set of the other side. The side with fewer
    sets is the one permuted (the first side with the inverse permutation, which gives the
    same value). The observed value goes through the same code with the identity permutation.
    One-sided p-value ``p = (1 + #{null >= observed - atol}) / (1 + n_permutations)``; ``atol``
    (1e-12) keeps permutations that reproduce the observed value from being lost to rounding.
Bootstrap
    Stimuli are resampled with replacement; every set's (centred) Gram is resampled (rows and
    columns with the same indices) and centred again, through stimulus-count weights instead of
    explicit copies (:func:`bootstrap_cka`). The kernel and the RBF bandwidth are those of all
    stimuli. For the unbiased estimator, pairs of copies of one stimulus are left out like the
    diagonal (see :mod:`bids_dnn.cka.estimators`); percentile intervals as ``np.percentile``
    (linear interpolation), NaN resamples ignored.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bids_dnn.cka.batched import GramStack, gram_stack, triangle_indices, triangle_weights
from bids_dnn.cka.registry import HSIC_ESTIMATORS

__all__ = [
    "CkaTestResult",
    "DEFAULT_MEMORY_BYTES",
    "permutation_null",
    "bootstrap_cka",
    "cka_test_of_stacks",
    "cka_test",
]

#: working memory of one block of permutations or resamples when no budget is given
DEFAULT_MEMORY_BYTES = 256 * 2**20


@dataclass(frozen=True)
class CkaTestResult:
    """Outcome of :func:`cka_test`; arrays are (n_sets_a, n_sets_b).

    Attributes
    ----------
    observed : numpy.ndarray
        CKA of every pair of sets.
    p_values : numpy.ndarray
        One-sided permutation p-values (NaN without permutations).
    ci_low, ci_high : numpy.ndarray
        Stimulus-bootstrap percentile interval (NaN without bootstrap).
    n_permutations, n_bootstrap : int
    ci : float
        Coverage of the interval.
    kernel, estimator : str
    sigma : float
    null : numpy.ndarray, shape (n_permutations, n_sets_a, n_sets_b), optional
        Only when requested.
    bootstrap : numpy.ndarray, shape (n_bootstrap, n_sets_a, n_sets_b), optional
        Only when requested.
    """

    observed: np.ndarray
    p_values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_permutations: int
    n_bootstrap: int
    ci: float
    kernel: str
    estimator: str
    sigma: float
    null: np.ndarray | None = None
    bootstrap: np.ndarray | None = None


def _blocks(total: int, block: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, block):
        yield start, min(block, total - start)


def _drawn_permutations(n_stimuli: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random permutations of ``range(n_stimuli)``, one per row (as
    :func:`bids_dnn.rsa.inference.permutation_indices`)."""
    return rng.permuted(np.tile(np.arange(n_stimuli, dtype=np.int64), (count, 1)), axis=1)


def _row_gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]``: rows of a 2D tensor. On the CPU through NumPy's ``take`` (which copies
    whole rows; about twice as fast as torch's ``index_select`` there, measured for B14)."""
    if table.device.type == "cpu":
        return torch.from_numpy(np.take(table.numpy(), index.numpy(), axis=0))
    return table.index_select(0, index)


@dataclass(frozen=True)
class _TriangleGather:
    """``<A_a, P B_b P^T>`` for blocks of permutations ``P`` from the upper triangles.

    ``table`` holds the permuted side's prepared Grams with one column per set, so a gathered
    entry brings the same entry of every set in one row; the fixed side enters as its doubled
    upper triangle (``weights``), and a block is one matrix product.
    """

    table: torch.Tensor  # (n * n, n_moving)
    positions: torch.Tensor  # (m,) linear positions i * n + j of the upper triangle, i <= j
    weights: torch.Tensor  # (n_fixed, m)
    n: int
    permute_second: bool

    @classmethod
    def of(cls, first: GramStack, second: GramStack) -> "_TriangleGather":
        permute_second = second.n_sets <= first.n_sets
        fixed, moving = (first, second) if permute_second else (second, first)
        n = first.n_stimuli
        rows, cols = triangle_indices(n, fixed.prepared.device)
        table = moving.prepared.reshape(moving.n_sets, n * n).T.contiguous()
        return cls(table, rows * n + cols, triangle_weights(fixed.prepared), n, permute_second)

    def bytes_per_permutation(self) -> int:
        """Working memory of one permutation: its index of the full square and the gathered rows."""
        return 8 * (self.n * self.n + self.positions.numel() * (self.table.shape[1] + 1))

    def inner(self, perms: torch.Tensor) -> torch.Tensor:
        """(c, n_a, n_b) for permutations (c, n_stimuli) of the second side's stimuli."""
        if not self.permute_second:
            perms = torch.argsort(perms, dim=1)  # the inverse permutation on the first side
        n, c, k = self.n, perms.shape[0], self.table.shape[1]
        columns = perms.T.contiguous()  # (n, c)
        square = (columns * n)[:, None, :] + columns[None, :, :]  # (n, n, c): pi(i) * n + pi(j)
        index = _row_gather(square.reshape(n * n, c), self.positions)  # (m, c)
        gathered = _row_gather(self.table, index.reshape(-1))  # (m * c, k)
        inner = (self.weights @ gathered.reshape(-1, c * k)).reshape(-1, c, k)  # (n_fixed, c, k)
        return inner.permute(1, 0, 2) if self.permute_second else inner.permute(1, 2, 0)


def permutation_null(first: GramStack, second: GramStack, n_permutations: int = 1000, *,
                     rng: np.random.Generator | None = None, permutations: np.ndarray | None = None,
                     memory_bytes: int | None = None, atol: float = 1e-12,
                     return_null: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Observed CKA, permutation p-values and (optionally) the null distribution.

    Parameters
    ----------
    first, second : GramStack
        Same stimuli, same estimator.
    n_permutations : int
        Ignored when ``permutations`` is given.
    rng : numpy.random.Generator, optional
        Draws the permutations block by block (required without ``permutations``).
    permutations : numpy.ndarray of int, shape (n_permutations, n_stimuli), optional
        Explicit permutations (row ``p`` maps position ``i`` to stimulus ``perm[p, i]``).
    memory_bytes : int, optional
        Working memory of one block (default :data:`DEFAULT_MEMORY_BYTES`).
    atol : float
        Tolerance of ``null >= observed``.
    return_null : bool

    Returns
    -------
    observed : numpy.ndarray, shape (n_a, n_b)
    p_values : numpy.ndarray, shape (n_a, n_b)
        NaN without permutations, or where the observed value is NaN.
    null : numpy.ndarray, shape (n_permutations, n_a, n_b), or None
    """
    if first.n_stimuli != second.n_stimuli:
        raise ValueError(f"the stacks have different numbers of stimuli ({first.n_stimuli}, {second.n_stimuli})")
    n = first.n_stimuli
    device = first.prepared.device
    if permutations is not None:
        permutations = np.atleast_2d(np.asarray(permutations, dtype=np.int64))
        n_permutations = permutations.shape[0]
        if permutations.shape[1] != n:
            raise ValueError(f"permutations have {permutations.shape[1]} columns for {n} stimuli")
    elif n_permutations and rng is None:
        raise ValueError("rng is required to draw permutations")
    pairs = _TriangleGather.of(first, second)
    denominator = first.norms[:, None] * second.norms[None, :]
    valid = denominator > 0
    safe = denominator.clamp_min(torch.finfo(denominator.dtype).tiny)

    def statistic(perms: np.ndarray) -> torch.Tensor:
        return pairs.inner(torch.as_tensor(np.asarray(perms, dtype=np.int64), device=device)) / safe

    identity = np.arange(n, dtype=np.int64)[None, :]
    observed = statistic(identity)[0]
    counts = torch.zeros_like(observed)
    block = max(1, int((memory_bytes or DEFAULT_MEMORY_BYTES) // pairs.bytes_per_permutation()))
    null = np.empty((n_permutations, first.n_sets, second.n_sets)) if return_null else None
    threshold = observed - atol
    for start, size in _blocks(int(n_permutations), block):
        perms = permutations[start:start + size] if permutations is not None else _drawn_permutations(n, size, rng)
        values = statistic(perms)
        counts += (values >= threshold).sum(dim=0)
        if null is not None:
            null[start:start + size] = values.cpu().numpy()
    observed_np = torch.where(valid, observed, torch.full_like(observed, float("nan"))).cpu().numpy()
    p_values = np.full(observed_np.shape, np.nan)
    if n_permutations:
        p_values = (1.0 + counts.cpu().numpy()) / (1.0 + n_permutations)
        p_values[~np.isfinite(observed_np)] = np.nan
    if null is not None:
        null[:, ~valid.cpu().numpy()] = np.nan
    return observed_np, p_values, null


@dataclass(frozen=True)
class _ResampleTerms:
    """What the centring of one side's resampled Grams needs, for a block of c resamples.

    With stimulus counts ``w`` (how often each stimulus is drawn), a resampled Gram's row means
    are ``(K w)_a`` over the original stimuli: ``Kw`` (k, n, c), the centring means ``mu``
    (k, n, c), ``w mu`` and its sum over stimuli (k, c).
    """

    kw: torch.Tensor
    mu: torch.Tensor
    w_mu: torch.Tensor
    sum_w_mu: torch.Tensor

    @classmethod
    def of(cls, prepared: torch.Tensor, counts: torch.Tensor, unbiased: bool) -> "_ResampleTerms":
        k, n, _ = prepared.shape
        kw = (prepared.reshape(k * n, n) @ counts).reshape(k, n, -1)
        total = (counts[None] * kw).sum(dim=1, keepdim=True)  # w^T K w: (k, 1, c)
        if unbiased:
            mu = kw / (n - 2) - total / (2 * (n - 1) * (n - 2))
        else:
            mu = kw / n - total / (2 * n * n)
        w_mu = counts[None] * mu
        return cls(kw, mu, w_mu, w_mu.sum(dim=1))


def _centred_products(first: _ResampleTerms, second: _ResampleTerms, t1: torch.Tensor, counts: torch.Tensor,
                      n: int, unbiased: bool, pairs: str) -> torch.Tensor:
    """``<C(K_s), C(L_s)>`` from the weighted products ``t1 = sum_ab w_a w_b K_ab L_ab`` and the
    centring terms (``pairs``: ``"cross"`` for every set pair, (c, k1, k2); ``"self"`` for each
    set with itself, (c, k))."""
    spec = "inc,jnc->cij" if pairs == "cross" else "inc,inc->ci"
    value = t1 - 2 * torch.einsum(spec, first.kw, second.w_mu) - 2 * torch.einsum(spec, first.w_mu, second.kw)
    value = value + 2 * n * torch.einsum(spec, first.w_mu, second.mu)
    if pairs == "cross":
        value = value + 2 * first.sum_w_mu.T[:, :, None] * second.sum_w_mu.T[:, None, :]
    else:
        value = value + 2 * first.sum_w_mu.T * second.sum_w_mu.T
    if unbiased:  # pairs of copies of one stimulus (a == b) are left out
        value = value - 4 * torch.einsum(spec, counts[None] * first.w_mu, second.mu)
    return value


def bootstrap_cka(first: GramStack, second: GramStack, n_bootstrap: int = 1000, *,
                  rng: np.random.Generator | None = None, indices: np.ndarray | None = None,
                  memory_bytes: int | None = None) -> np.ndarray:
    """CKA of every pair of sets on stimulus-bootstrap resamples.

    A resample's Gram ``K[s][:, s]`` (of the full-sample centred or U-centred Gram; centring
    again removes what the first one did, exactly for the plain estimator) is centred again
    and compared; nothing is resampled explicitly. With the counts ``w`` of the drawn stimuli,
    every sum over the resampled pairs is a ``w_a w_b``-weighted sum over the original pairs,
    and the centring means are ``(K w)_a``-based, so a resample costs one weighted product of
    the prepared Grams. For the unbiased estimator the pairs of copies of one stimulus (``a ==
    b``) are left out like the diagonal.

    Parameters
    ----------
    first, second : GramStack
    n_bootstrap : int
        Ignored when ``indices`` is given.
    rng : numpy.random.Generator, optional
        Draws ``rng.integers(0, n_stimuli, (block, n_stimuli))`` block by block.
    indices : numpy.ndarray of int, shape (n_bootstrap, n_stimuli), optional
        Explicit resamples.
    memory_bytes : int, optional
        Working memory of the pair weights of one block of resamples (``8 n^2`` bytes per
        resample); the squared and weighted Grams, as large as the stacks, come on top.

    Returns
    -------
    numpy.ndarray, shape (n_bootstrap, n_a, n_b)
        NaN for a resample in which a set's centred Gram is 0.
    """
    n = first.n_stimuli
    device, dtype = first.prepared.device, first.prepared.dtype
    if indices is not None:
        indices = np.atleast_2d(np.asarray(indices, dtype=np.int64))
        n_bootstrap = indices.shape[0]
    elif n_bootstrap and rng is None:
        raise ValueError("rng is required to draw bootstrap resamples")
    unbiased = HSIC_ESTIMATORS[first.estimator].unbiased
    flat_a = first.prepared.reshape(first.n_sets, n * n)
    flat_b = second.prepared.reshape(second.n_sets, n * n)
    squares_a, squares_b = flat_a.square(), flat_b.square()
    weigh_first = first.n_sets <= second.n_sets  # weigh the side with fewer sets
    weighted = torch.empty_like(flat_a if weigh_first else flat_b)
    block = int(min(256, max(1, (memory_bytes or DEFAULT_MEMORY_BYTES) // (8 * n * n))))
    out = np.empty((int(n_bootstrap), first.n_sets, second.n_sets))
    for start, size in _blocks(int(n_bootstrap), block):
        drawn = indices[start:start + size] if indices is not None else rng.integers(0, n, size=(size, n))
        counts_np = np.stack([np.bincount(row, minlength=n) for row in drawn], axis=1)  # (n, c)
        counts = torch.as_tensor(counts_np, dtype=dtype, device=device)
        pair_weights = (counts.T[:, :, None] * counts.T[:, None, :]).reshape(size, n * n)  # w_a w_b: (c, n^2)
        self_a = (squares_a @ pair_weights.T).T  # (c, n_a)
        self_b = (squares_b @ pair_weights.T).T  # (c, n_b)
        cross = torch.empty((size, first.n_sets, second.n_sets), dtype=dtype, device=device)
        for r in range(size):
            if weigh_first:
                cross[r] = torch.mul(flat_a, pair_weights[r], out=weighted) @ flat_b.T
            else:
                cross[r] = flat_a @ torch.mul(flat_b, pair_weights[r], out=weighted).T
        terms_a = _ResampleTerms.of(first.prepared, counts, unbiased)
        terms_b = _ResampleTerms.of(second.prepared, counts, unbiased)
        inner = _centred_products(terms_a, terms_b, cross, counts, n, unbiased, "cross")
        norm_a = _centred_products(terms_a, terms_a, self_a, counts, n, unbiased, "self")
        norm_b = _centred_products(terms_b, terms_b, self_b, counts, n, unbiased, "self")
        denominator = norm_a[:, :, None] * norm_b[:, None, :]
        values = torch.where(denominator > 0, inner / denominator.clamp_min(torch.finfo(dtype).tiny).sqrt(),
                             torch.full_like(inner, float("nan")))
        out[start:start + size] = values.cpu().numpy()
    return out


def cka_test_of_stacks(first: GramStack, second: GramStack, *, n_permutations: int = 1000, n_bootstrap: int = 0,
                       ci: float = 0.95, rng: np.random.Generator | None = None,
                       permutations: np.ndarray | None = None, bootstrap_indices: np.ndarray | None = None,
                       memory_bytes: int | None = None, atol: float = 1e-12, return_null: bool = False,
                       return_bootstrap: bool = False) -> CkaTestResult:
    """:func:`cka_test` of Gram stacks made once (e.g. an ROI stack reused for several models).

    Parameters
    ----------
    first, second : GramStack
        Same stimuli, kernel and estimator (:func:`bids_dnn.cka.batched.gram_stack`).
    n_permutations, n_bootstrap, ci, rng, permutations, bootstrap_indices, memory_bytes, atol,
    return_null, return_bootstrap
        As :func:`cka_test`.

    Returns
    -------
    CkaTestResult
    """
    if not 0 < ci < 1:
        raise ValueError("ci must lie in (0, 1)")
    if (first.kernel, first.estimator, first.sigma) != (second.kernel, second.estimator, second.sigma):
        raise ValueError("the stacks were made with different kernels or estimators")
    observed, p_values, null = permutation_null(first, second, n_permutations, rng=rng, permutations=permutations,
                                                memory_bytes=memory_bytes, atol=atol, return_null=return_null)
    n_permutations = int(permutations.shape[0]) if permutations is not None else int(n_permutations)
    low = high = np.full(observed.shape, np.nan)
    boot = None
    if bootstrap_indices is not None or n_bootstrap:
        boot = bootstrap_cka(first, second, n_bootstrap, rng=rng, indices=bootstrap_indices,
                             memory_bytes=memory_bytes)
        n_bootstrap = boot.shape[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanpercentile(boot, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return CkaTestResult(observed, p_values, low, high, n_permutations, int(n_bootstrap), float(ci), first.kernel,
                         first.estimator, first.sigma, null, boot if return_bootstrap else None)


def cka_test(sets_a: Sequence[Any], sets_b: Sequence[Any], *, kernel: str = "linear", estimator: str = "unbiased",
             sigma: float = 1.0, n_permutations: int = 1000, n_bootstrap: int = 0, ci: float = 0.95,
             rng: np.random.Generator | None = None, permutations: np.ndarray | None = None,
             bootstrap_indices: np.ndarray | None = None, device: str | torch.device = "cpu",
             dtype: Any = np.float64, memory_bytes: int | None = None, atol: float = 1e-12,
             return_null: bool = False, return_bootstrap: bool = False) -> CkaTestResult:
    """CKA of every set of ``sets_a`` with every set of ``sets_b``, with permutation p-values and
    bootstrap confidence intervals.

    Parameters
    ----------
    sets_a, sets_b : sequence of array-like, each (n_stimuli, n_features_k)
        E.g. ROI patterns and layer activations of the same stimuli, same row order. The
        stimulus labels of ``sets_b`` are the ones permuted.
    kernel : str
        ``linear`` or ``rbf``.
    estimator : str
        ``unbiased`` (debiased CKA) or ``plain``.
    sigma : float
        RBF bandwidth factor.
    n_permutations : int
        Stimulus-label permutations (0: none).
    n_bootstrap : int
        Stimulus-bootstrap resamples (0: none).
    ci : float
        Coverage of the percentile interval.
    rng : numpy.random.Generator, optional
        Draws the permutations, then the resamples. Required unless both are given or 0.
    permutations, bootstrap_indices : numpy.ndarray of int, optional
        Explicit permutations (n_permutations, n_stimuli) / resamples (n_bootstrap, n_stimuli).
    device : str or torch.device
    dtype : float32 or float64
    memory_bytes : int, optional
        Working memory of one block of permutations or resamples.
    atol : float
        Tolerance of the permutation comparison.
    return_null, return_bootstrap : bool
        Keep the null / bootstrap distributions in the result.

    Returns
    -------
    CkaTestResult
    """
    first = gram_stack(sets_a, kernel, estimator, sigma, device=device, dtype=dtype)
    second = gram_stack(sets_b, kernel, estimator, sigma, device=device, dtype=dtype)
    return cka_test_of_stacks(first, second, n_permutations=n_permutations, n_bootstrap=n_bootstrap, ci=ci, rng=rng,
                              permutations=permutations, bootstrap_indices=bootstrap_indices,
                              memory_bytes=memory_bytes, atol=atol, return_null=return_null,
                              return_bootstrap=return_bootstrap)
