"""HSIC estimators and CKA of Gram matrices (Kornblith et al. 2019).

Both estimators are inner products of *prepared* Gram matrices, so CKA is a cosine between
them and many sets compare through one matrix product (:mod:`bids_dnn.cka.batched`):

plain
    ``HSIC_b(K, L) = tr(K H L H) / (n - 1)^2`` with ``H = I - 11^T / n`` (Gretton et al. 2005);
    the prepared Gram is ``H K H`` (rows and columns centred) and
    ``CKA = <HKH, HLH>_F / (||HKH||_F ||HLH||_F)``.
unbiased
    Song et al. (2012)'s unbiased estimator
    ``HSIC_u = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))``
    (``K~``: ``K`` with a zero diagonal) equals ``<U(K), U(L)>_F / (n (n-3))`` with the
    U-centred Gram ``U(K)`` of Szekely & Rizzo (2014), the form of Kornblith et al.'s
    ``center_gram(gram, unbiased=True)``; debiased CKA is the cosine of the U-centred Grams.
    Needs at least 4 stimuli.

Centring commutes with a permutation of the stimuli (``P K P^T`` is prepared as ``P prep(K) P^T``),
so a permutation test prepares each Gram once and permutes the prepared matrix.

Bootstrap resamples repeat stimuli: for the unbiased estimator an ``exclude`` mask marks the
pairs of copies of one stimulus, which are zeroed like the diagonal before and after U-centring
(they are not pairs of distinct stimuli; their entry is the stimulus' self-similarity, the very
term the unbiased estimator removes from the diagonal). The plain estimator uses the resampled
Gram as it is (a duplicate counts twice, as in any V-statistic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bids_dnn.cka.kernels import gram_matrix
from bids_dnn.cka.registry import HSIC_ESTIMATOR_NAMES

__all__ = [
    "center_gram",
    "u_center_gram",
    "GRAM_PREPARATIONS",
    "prepare_gram",
    "hsic",
    "cka_of_grams",
    "cka",
]


def center_gram(gram: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``H K H``: a symmetric Gram matrix with its rows and columns centred.

    Parameters
    ----------
    gram : torch.Tensor, shape (..., n, n)
        Symmetric in its last two dimensions.
    exclude : torch.Tensor of bool, optional
        Ignored (the plain estimator keeps every pair); accepted so that both preparations
        share one signature.

    Returns
    -------
    torch.Tensor, shape (..., n, n)
    """
    means = gram.mean(dim=-1)
    means = means - means.mean(dim=-1, keepdim=True) / 2
    return gram - means[..., :, None] - means[..., None, :]


def u_center_gram(gram: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The U-centred Gram matrix (Szekely & Rizzo 2014) of the unbiased HSIC estimator.

    Parameters
    ----------
    gram : torch.Tensor, shape (..., n, n)
        Symmetric in its last two dimensions; ``n >= 4``.
    exclude : torch.Tensor of bool, shape (..., n, n), optional
        Pairs treated like the diagonal (zeroed before and after centring): the pairs of
        copies of one stimulus in a bootstrap resample. The diagonal always is.

    Returns
    -------
    torch.Tensor, shape (..., n, n)
        Zero on the diagonal (and on ``exclude``).

    Raises
    ------
    ValueError
        Fewer than 4 stimuli.
    """
    n = gram.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 stimuli, got {n}")
    mask = torch.eye(n, dtype=torch.bool, device=gram.device)
    if exclude is not None:
        mask = mask | exclude
    centred = gram.masked_fill(mask, 0)
    means = centred.sum(dim=-1) / (n - 2)
    means = means - means.sum(dim=-1, keepdim=True) / (2 * (n - 1))
    centred = centred - means[..., :, None] - means[..., None, :]
    return centred.masked_fill_(mask, 0)


#: estimator name -> ``prepare(gram, exclude)``; names as :data:`bids_dnn.cka.registry.HSIC_ESTIMATORS`
GRAM_PREPARATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "unbiased": u_center_gram,
    "plain": center_gram,
}
assert tuple(GRAM_PREPARATIONS) == HSIC_ESTIMATOR_NAMES


def prepare_gram(gram: torch.Tensor, estimator: str = "unbiased", exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The Gram matrix as the estimator's inner product needs it (centred or U-centred).

    Parameters
    ----------
    gram : torch.Tensor, shape (..., n, n)
    estimator : str
        ``unbiased`` or ``plain`` (:data:`GRAM_PREPARATIONS`).
    exclude : torch.Tensor of bool, shape (..., n, n), optional
        Pairs of copies of one stimulus (bootstrap); see the module docstring.

    Returns
    -------
    torch.Tensor, shape (..., n, n)
    """
    if estimator not in GRAM_PREPARATIONS:
        raise ValueError(f"unknown HSIC estimator {estimator!r}; use one of {', '.join(GRAM_PREPARATIONS)}")
    return GRAM_PREPARATIONS[estimator](gram, exclude)


def hsic(gram_x: Any, gram_y: Any, estimator: str = "unbiased") -> float:
    """HSIC of two Gram matrices.

    Parameters
    ----------
    gram_x, gram_y : array-like or torch.Tensor, shape (n, n)
        Symmetric.
    estimator : str
        ``plain``: ``tr(K H L H) / (n - 1)^2``; ``unbiased``: Song et al. (2012).

    Returns
    -------
    float
    """
    x, y = (torch.as_tensor(np.asarray(g) if not isinstance(g, torch.Tensor) else g, dtype=torch.float64)
            for g in (gram_x, gram_y))
    n = x.shape[-1]
    inner = float(torch.sum(prepare_gram(x, estimator) * prepare_gram(y, estimator)))
    return inner / (n * (n - 3)) if estimator == "unbiased" else inner / (n - 1) ** 2


def cka_of_grams(gram_x: torch.Tensor, gram_y: torch.Tensor, estimator: str = "unbiased") -> float:
    """CKA of two Gram matrices: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

    Parameters
    ----------
    gram_x, gram_y : torch.Tensor, shape (n, n)
    estimator : str

    Returns
    -------
    float
        NaN when a Gram matrix is 0 after preparation (e.g. constant features).
    """
    x, y = prepare_gram(gram_x, estimator), prepare_gram(gram_y, estimator)
    denominator = float(torch.linalg.norm(x) * torch.linalg.norm(y))
    return float(torch.sum(x * y)) / denominator if denominator > 0 else float("nan")


def cka(features_x: Any, features_y: Any, kernel: str = "linear", estimator: str = "unbiased", sigma: float = 1.0,
        *, device: str | torch.device = "cpu") -> float:
    """CKA between two feature sets of the same stimuli (Kornblith et al. 2019), in float64.

    Parameters
    ----------
    features_x : array-like, shape (n_stimuli, n_features_x)
    features_y : array-like, shape (n_stimuli, n_features_y)
        Rows are the same stimuli in the same order.
    kernel : str
        ``linear`` or ``rbf``.
    estimator : str
        ``unbiased`` (debiased CKA) or ``plain``.
    sigma : float
        RBF bandwidth factor.
    device : str or torch.device

    Returns
    -------
    float
        In [-1, 1] for the unbiased estimator (around 0 for unrelated sets), [0, 1] for the
        plain one.
    """
    gram_x = gram_matrix(features_x, kernel, sigma, device=device)
    gram_y = gram_matrix(features_y, kernel, sigma, device=device)
    if gram_x.shape != gram_y.shape:
        raise ValueError(f"the feature sets have different numbers of stimuli ({gram_x.shape[0]} and "
                         f"{gram_y.shape[0]})")
    return cka_of_grams(gram_x, gram_y, estimator)
