"""Gram matrices over stimuli: linear and Gaussian (RBF) kernels, on torch (CPU or CUDA).

A feature set is ``(n_stimuli, n_features)`` (a layer's activations, an ROI's voxel patterns);
its Gram matrix is ``(n_stimuli, n_stimuli)``. CKA only ever sees Gram matrices, so sets with
different numbers of features compare directly.

Linear
    ``K = X X^T``.
RBF
    ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2 m))`` with ``m`` the median of the squared
    Euclidean distances over all ``n^2`` entries of the distance matrix (its zero diagonal
    included), exactly as ``gram_rbf(x, threshold=sigma)`` of Kornblith et al. (2019): the
    bandwidth is ``sigma`` times the median distance. Squared distances are computed from dot
    products, clipped at 0, with an exact 0 diagonal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bids_dnn.backend import torch_dtype
from bids_dnn.cka.registry import CKA_KERNEL_NAMES

__all__ = [
    "as_feature_tensor",
    "linear_gram",
    "squared_distances",
    "median_squared_distance",
    "rbf_bandwidth",
    "rbf_gram",
    "GRAM_FUNCTIONS",
    "gram_matrix",
]


#: the error of a feature set whose Gram matrix is not finite
NON_FINITE = "a feature set holds NaN or infinite values (or values whose products overflow)"


def as_feature_tensor(features: Any, device: str | torch.device = "cpu", dtype: Any = np.float64) -> torch.Tensor:
    """A feature set as a 2D floating-point tensor.

    Parameters
    ----------
    features : array-like or torch.Tensor, shape (n_stimuli, n_features)
        A 1D input is one feature per stimulus.
    device : str or torch.device
    dtype : float32 or float64 (NumPy dtype-like)

    Returns
    -------
    torch.Tensor, shape (n_stimuli, n_features)

    Raises
    ------
    ValueError
        Not 1D / 2D. (Non-finite values are caught in the Gram matrix, :func:`gram_matrix`: a
        check of n^2 entries instead of n x n_features.)
    """
    target = torch_dtype(dtype)
    if isinstance(features, torch.Tensor):
        tensor = features.to(device=device, dtype=target)
    else:
        tensor = torch.as_tensor(np.asarray(features), device=device).to(target)
    if tensor.ndim == 1:
        tensor = tensor[:, None]
    if tensor.ndim != 2:
        raise ValueError(f"a feature set must be (n_stimuli, n_features); got shape {tuple(tensor.shape)}")
    return tensor


def _self_products(features: torch.Tensor) -> torch.Tensor:
    """``X X^T``. On the CPU through NumPy, whose ``a @ a.T`` is one symmetric rank-k update
    (BLAS ``syrk``: half the work of torch's general product, and an exactly symmetric result)."""
    if features.device.type == "cpu":
        array = features.numpy()
        return torch.from_numpy(array @ array.T)
    return features @ features.T


def linear_gram(features: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix ``X X^T``.

    Parameters
    ----------
    features : torch.Tensor, shape (n_stimuli, n_features)

    Returns
    -------
    torch.Tensor, shape (n_stimuli, n_stimuli)
    """
    return _self_products(features)


def squared_distances(features: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the stimuli's patterns.

    Parameters
    ----------
    features : torch.Tensor, shape (n_stimuli, n_features)

    Returns
    -------
    torch.Tensor, shape (n_stimuli, n_stimuli)
        ``||x_i||^2 + ||x_j||^2 - 2 x_i.x_j`` clipped at 0; the diagonal is exactly 0.
    """
    dots = _self_products(features)
    norms = torch.diagonal(dots)
    distances = (norms[:, None] + norms[None, :] - 2 * dots).clamp_min_(0)
    distances.fill_diagonal_(0)
    return distances


def median_squared_distance(distances: torch.Tensor) -> torch.Tensor:
    """``np.median`` of all entries of a squared-distance matrix (the mean of the two middle
    values for an even count; torch's own median takes the lower one).

    Parameters
    ----------
    distances : torch.Tensor, shape (n_stimuli, n_stimuli)

    Returns
    -------
    torch.Tensor, 0-dimensional
    """
    flat = distances.reshape(-1)
    size = flat.numel()
    upper = torch.kthvalue(flat, size // 2 + 1).values
    if size % 2:
        return upper
    return (torch.kthvalue(flat, size // 2).values + upper) / 2


def rbf_bandwidth(features: Any, sigma: float = 1.0) -> float:
    """The RBF kernel's bandwidth ``sigma * sqrt(median squared distance)`` of a feature set.

    Parameters
    ----------
    features : array-like or torch.Tensor, shape (n_stimuli, n_features)
    sigma : float
        Multiple of the median distance.

    Returns
    -------
    float
        The ``s`` of ``exp(-d^2 / (2 s^2))``.
    """
    tensor = as_feature_tensor(features, features.device if isinstance(features, torch.Tensor) else "cpu")
    return float(sigma) * float(torch.sqrt(median_squared_distance(squared_distances(tensor))))


def rbf_gram(features: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian-kernel Gram matrix with the median-distance bandwidth of Kornblith et al. (2019).

    Parameters
    ----------
    features : torch.Tensor, shape (n_stimuli, n_features)
    sigma : float
        Bandwidth as a multiple of the median Euclidean distance (``threshold`` in Kornblith
        et al.'s code); must be positive.

    Returns
    -------
    torch.Tensor, shape (n_stimuli, n_stimuli)
        ``exp(-d_ij^2 / (2 sigma^2 median(d^2)))``.

    Raises
    ------
    ValueError
        ``sigma`` is not positive, or the median squared distance is 0 (more than half of the
        entries are pairs of identical patterns).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    distances = squared_distances(features)
    if not bool(torch.isfinite(distances).all()):
        raise ValueError(NON_FINITE)
    median = median_squared_distance(distances)
    if not float(median) > 0:
        raise ValueError("the median squared distance between stimuli is 0: most patterns are identical, the RBF "
                         "bandwidth is undefined")
    return torch.exp(distances / (-2.0 * float(sigma) ** 2 * median))


#: kernel name -> ``gram(features, sigma)``; the names are those of :data:`bids_dnn.cka.registry.CKA_KERNELS`
GRAM_FUNCTIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "linear": lambda features, sigma: linear_gram(features),
    "rbf": rbf_gram,
}
assert tuple(GRAM_FUNCTIONS) == CKA_KERNEL_NAMES


def gram_matrix(features: Any, kernel: str = "linear", sigma: float = 1.0, *, device: str | torch.device = "cpu",
                dtype: Any = np.float64) -> torch.Tensor:
    """The Gram matrix of one feature set.

    Parameters
    ----------
    features : array-like or torch.Tensor, shape (n_stimuli, n_features)
    kernel : str
        A name of :data:`GRAM_FUNCTIONS` (``linear``, ``rbf``).
    sigma : float
        RBF bandwidth factor (ignored by the linear kernel).
    device : str or torch.device
    dtype : float32 or float64

    Returns
    -------
    torch.Tensor, shape (n_stimuli, n_stimuli)

    Raises
    ------
    ValueError
        Unknown kernel, a feature set :func:`as_feature_tensor` refuses, or a Gram matrix with
        non-finite entries (NaN or infinite features, or products that overflow).
    """
    if kernel not in GRAM_FUNCTIONS:
        raise ValueError(f"unknown CKA kernel {kernel!r}; use one of {', '.join(GRAM_FUNCTIONS)}")
    gram = GRAM_FUNCTIONS[kernel](as_feature_tensor(features, device, dtype), sigma)
    if not bool(torch.isfinite(gram).all()):
        raise ValueError(NON_FINITE)
    return gram
