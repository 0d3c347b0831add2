"""CKA between many feature sets at once: each set's prepared Gram matrix once, all pairs by
one matrix product.

Sets are ``(n_stimuli, n_features)`` arrays of the same stimuli (an ROI's voxel patterns, a
layer's activations); the number of features may differ between sets. A set's prepared Gram
(:func:`bids_dnn.cka.estimators.prepare_gram`) is computed once, and CKA of sets ``a`` and ``b`` is the
cosine ``<A, B>_F / (||A||_F ||B||_F)`` of the prepared Grams. Prepared Grams are symmetric, so
the inner product runs over the upper triangle with the off-diagonal entries counted twice
(:func:`triangle_weights`); the permutation test (:mod:`bids_dnn.cka.inference`) gathers the same
entries of permuted Grams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bids_dnn.cka.estimators import prepare_gram
from bids_dnn.cka.kernels import gram_matrix

__all__ = [
    "GramStack",
    "gram_stack",
    "triangle_indices",
    "triangle_weights",
    "cka_of_stacks",
    "cka_matrix",
]


@dataclass(frozen=True)
class GramStack:
    """The Gram matrices of several feature sets of the same stimuli, on one device.

    Attributes
    ----------
    grams : torch.Tensor, shape (n_sets, n_stimuli, n_stimuli)
        The kernel's Gram matrices (not centred: a bootstrap resamples these).
    prepared : torch.Tensor, shape (n_sets, n_stimuli, n_stimuli)
        Centred (``plain``) or U-centred (``unbiased``) Grams.
    norms : torch.Tensor, shape (n_sets,)
        Frobenius norms of ``prepared``.
    kernel, estimator : str
    sigma : float
    """

    grams: torch.Tensor
    prepared: torch.Tensor
    norms: torch.Tensor
    kernel: str
    estimator: str
    sigma: float

    @classmethod
    def concatenate(cls, stacks: Sequence["GramStack"]) -> "GramStack":
        """The sets of several stacks (same stimuli, kernel, estimator and sigma) in one stack.

        Raises
        ------
        ValueError
            No stacks, or stacks made with different settings or stimuli.
        """
        if not stacks:
            raise ValueError("no stacks given")
        settings = {(s.kernel, s.estimator, s.sigma, s.n_stimuli) for s in stacks}
        if len(settings) > 1:
            raise ValueError(f"the stacks differ in kernel, estimator, sigma or stimuli: {sorted(settings)}")
        first = stacks[0]
        return cls(torch.cat([s.grams for s in stacks]), torch.cat([s.prepared for s in stacks]),
                   torch.cat([s.norms for s in stacks]), first.kernel, first.estimator, first.sigma)

    @property
    def n_sets(self) -> int:
        return int(self.grams.shape[0])

    @property
    def n_stimuli(self) -> int:
        return int(self.grams.shape[1])


def gram_stack(feature_sets: Sequence[Any], kernel: str = "linear", estimator: str = "unbiased", sigma: float = 1.0,
               *, device: str | torch.device = "cpu", dtype: Any = np.float64) -> GramStack:
    """Gram matrices (raw and prepared) of feature sets of the same stimuli.

    Parameters
    ----------
    feature_sets : sequence of array-like, each (n_stimuli, n_features_k)
    kernel : str
        ``linear`` or ``rbf`` (:data:`bids_dnn.cka.kernels.GRAM_FUNCTIONS`).
    estimator : str
        ``unbiased`` or ``plain``.
    sigma : float
        RBF bandwidth factor (each set gets its own median-distance bandwidth).
    device : str or torch.device
    dtype : float32 or float64

    Returns
    -------
    GramStack

    Raises
    ------
    ValueError
        No sets, or sets with different numbers of stimuli.
    """
    if not len(feature_sets):
        raise ValueError("no feature sets given")
    grams = [gram_matrix(features, kernel, sigma, device=device, dtype=dtype) for features in feature_sets]
    sizes = sorted({int(g.shape[0]) for g in grams})
    if len(sizes) > 1:
        raise ValueError(f"the feature sets have different numbers of stimuli: {sizes}")
    stacked = torch.stack(grams)
    prepared = prepare_gram(stacked, estimator)
    norms = torch.linalg.norm(prepared.reshape(prepared.shape[0], -1), dim=1)
    return GramStack(stacked, prepared, norms, kernel, estimator, float(sigma))


def triangle_indices(n: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the upper triangle of an ``n x n`` matrix, the diagonal included.

    Returns
    -------
    rows, cols : torch.Tensor of int64, shape (n (n + 1) / 2,)
    """
    rows, cols = torch.triu_indices(n, n, device=device)
    return rows, cols


def triangle_weights(prepared: torch.Tensor) -> torch.Tensor:
    """Upper-triangle entries of symmetric matrices, off-diagonal ones doubled: ``<A, B>_F`` of
    symmetric ``A``, ``B`` is ``triangle_weights(A) . B[rows, cols]``.

    Parameters
    ----------
    prepared : torch.Tensor, shape (k, n, n)

    Returns
    -------
    torch.Tensor, shape (k, n (n + 1) / 2)
    """
    rows, cols = triangle_indices(prepared.shape[-1], prepared.device)
    weights = prepared[:, rows, cols] * 2
    weights[:, rows == cols] /= 2
    return weights


def cka_of_stacks(first: GramStack, second: GramStack | None = None) -> np.ndarray:
    """CKA of every set of ``first`` with every set of ``second``.

    Parameters
    ----------
    first : GramStack
    second : GramStack, optional
        Default ``first`` (a symmetric matrix, 1 on the diagonal).

    Returns
    -------
    numpy.ndarray, shape (first.n_sets, second.n_sets)
        NaN for a set whose prepared Gram is 0 (e.g. constant features).
    """
    second = first if second is None else second
    if first.n_stimuli != second.n_stimuli:
        raise ValueError(f"the stacks have different numbers of stimuli ({first.n_stimuli}, {second.n_stimuli})")
    inner = first.prepared.reshape(first.n_sets, -1) @ second.prepared.reshape(second.n_sets, -1).T
    denominator = first.norms[:, None] * second.norms[None, :]
    values = torch.where(denominator > 0, inner / denominator.clamp_min(torch.finfo(inner.dtype).tiny),
                         torch.full_like(inner, float("nan")))
    return values.cpu().numpy().astype(np.float64)


def cka_matrix(sets_a: Sequence[Any], sets_b: Sequence[Any] | None = None, *, kernel: str = "linear",
               estimator: str = "unbiased", sigma: float = 1.0, device: str | torch.device = "cpu",
               dtype: Any = np.float64) -> np.ndarray:
    """CKA of every feature set of ``sets_a`` with every one of ``sets_b``.

    Parameters
    ----------
    sets_a : sequence of array-like, each (n_stimuli, n_features_k)
    sets_b : sequence of array-like, optional
        Default ``sets_a`` (e.g. layer x layer).
    kernel, estimator : str
    sigma : float
    device : str or torch.device
    dtype : float32 or float64

    Returns
    -------
    numpy.ndarray, shape (len(sets_a), len(sets_b))
    """
    first = gram_stack(sets_a, kernel, estimator, sigma, device=device, dtype=dtype)
    second = None if sets_b is None else gram_stack(sets_b, kernel, estimator, sigma, device=device, dtype=dtype)
    return cka_of_stacks(first, second)
