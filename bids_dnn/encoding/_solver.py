"""Machinery shared by the ridge solvers (:mod:`bids_dnn.encoding.ridge`,
:mod:`bids_dnn.encoding.banded`): input checks, training-only feature preparation, target
batches and the himalaya backend.

Pure functions on arrays; himalaya (and through it torch) is imported only inside the functions
that use it, so importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from bids_dnn.backend import resolve_device

__all__ = ["BACKENDS", "himalaya_backend_for_device"]

#: himalaya backends the products with the responses can run on
BACKENDS = ("numpy", "torch", "torch_cuda")
_WORK_BYTES = 256 * 2**20          # working set per target batch


def himalaya_backend_for_device(device: str = "auto") -> str:
    """The himalaya backend for a compute device.

    Parameters
    ----------
    device : str
        ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps``, resolved with
        :func:`bids_dnn.backend.resolve_device`.

    Returns
    -------
    str
        ``"torch_cuda"`` on a CUDA device, else ``"numpy"`` (one of :data:`BACKENDS`).
    """
    return "torch_cuda" if resolve_device(device).startswith("cuda") else "numpy"


@contextlib.contextmanager
def _himalaya_backend(name: str) -> Iterator[Any]:
    """Set the himalaya backend for the duration of a block; restore the previous one."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    from himalaya.backend import get_backend, set_backend

    previous = get_backend().name
    try:
        module = set_backend(name, on_error="raise")
        yield module
    finally:
        set_backend(previous)


def _as_2d(responses: Any) -> np.ndarray:
    """Responses as a floating (n_samples, n_targets) array (a 1-d array is one target)."""
    y = np.asarray(responses)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"responses must be (n_samples, n_targets), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float64)
    return y


def _check_features(features: Any, n_samples: int, what: str = "features") -> np.ndarray:
    """Features as a finite float64 (n_samples, n_features) array with at least one column."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] != n_samples:
        raise ValueError(f"{what} must be (n_samples={n_samples}, n_features), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{what} has no columns")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain non-finite values")
    return x


def _check_alphas(alphas: Any) -> np.ndarray:
    """Penalty grid as a non-empty float64 (n_alphas,) array of positive finite values."""
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("alphas must be a non-empty list of positive finite numbers")
    return a


def _prepare(x_train: np.ndarray, x_test: np.ndarray, standardize: bool,
             pca: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Centre (and z-score) with training statistics, then optionally project on the top
    ``pca`` principal axes of the training features. float64 in, float64 out."""
    mean = x_train.mean(axis=0)
    xtr = x_train - mean
    xte = x_test - mean
    if standardize:
        sd = x_train.std(axis=0)
        sd = np.where(sd > 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0), sd, 1.0)
        xtr /= sd
        xte /= sd
    if pca is not None:
        k = int(pca)
        if k < 1:
            raise ValueError(f"pca must be a positive number of components, got {pca}")
        k = min(k, xtr.shape[0], xtr.shape[1])
        _, _, vt = np.linalg.svd(xtr, full_matrices=False)
        axes = vt[:k].T
        xtr, xte = xtr @ axes, xte @ axes
    return xtr, xte


def _default_batch(n_targets: int, rows: int, itemsize: int, target_batch: int | None,
                   memory_budget_bytes: int | None = None) -> int:
    """Targets per batch: ``target_batch``, else as many as fit the working-memory budget
    (``memory_budget_bytes``, default :data:`_WORK_BYTES`; at least 64)."""
    if target_batch is not None:
        if int(target_batch) < 1:
            raise ValueError("target_batch must be >= 1")
        return min(int(target_batch), max(n_targets, 1))
    budget = _WORK_BYTES if memory_budget_bytes is None else int(memory_budget_bytes)
    return int(min(max(n_targets, 1), max(64, budget // max(1, itemsize * rows))))


def _batch_responses(responses: np.ndarray, cols: slice, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """Copy of a batch of responses in ``dtype`` with bad columns zeroed; masks of non-finite
    and of constant columns."""
    y = np.array(responses[:, cols], dtype=dtype, order="C", copy=True)
    bad = ~np.isfinite(y).all(axis=0)
    if bad.any():
        y[:, bad] = 0
    const = (y.max(axis=0) == y.min(axis=0)) & ~bad
    return y, bad, const

