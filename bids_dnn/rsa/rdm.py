"""Representational dissimilarity matrices (RDMs): pure numerical functions.

No file I/O, no printing, no BIDS. Inputs and outputs are numpy arrays; the batched
kernels run on torch (CPU or CUDA) with Gram matrices (batched matmuls).

Conventions
-----------
Condition-pair order
    Everywhere an RDM is a vector of length ``n_pairs = n_cond * (n_cond - 1) / 2`` in the
    order of ``np.triu_indices(n_cond, k=1)`` (row-major upper triangle), the same as
    ``scipy.spatial.distance.squareform`` and rsatoolbox's vector form.
Measures (``RDM_MEASURES``, registered in :mod:`bids_dnn.rsa.measures`), for patterns ``x_i``
(one row per condition, ``c`` channels)
    ``correlation``  ``1 - r(x_i, x_j)``, Pearson r across channels (= rsatoolbox
                     ``'correlation'`` = scipy ``pdist(..., 'correlation')``).
    ``cosine``       ``1 - cos(x_i, x_j)`` (= scipy ``pdist(..., 'cosine')``).
    ``euclidean``    ``||x_i - x_j||``: the plain Euclidean distance, square root of summed
                     squares, NOT divided by ``c`` (= scipy ``pdist(..., 'euclidean')``).
                     This is our default Euclidean convention; it differs from rsatoolbox.
    ``sqeuclidean``  ``||x_i - x_j||^2 / c``: rsatoolbox's ``'euclidean'`` (squared distance
                     divided by the number of channels), provided for parity.
    ``mahalanobis``  ``(x_i - x_j)^T P (x_i - x_j) / c`` with noise precision ``P``
                     (``(c, c)``, or ``(c,)`` for a diagonal); identity when ``P is None``
                     (then equal to ``sqeuclidean``). rsatoolbox ``'mahalanobis'`` convention.
    ``crossnobis``   cross-validated Mahalanobis over runs, patterns ``(n_runs, n_cond, c)``:
                     ``sum_{r != s} d_r^T P d_s / (n_runs (n_runs - 1) c)`` with
                     ``d_r = x_{r,i} - x_{r,j}``, i.e. the average over ordered pairs of distinct
                     runs. This equals rsatoolbox ``calc_rdm(ds, 'crossnobis', descriptor=conds,
                     cv_descriptor=runs, noise=P)`` (leave-one-run-out: mean of the other runs
                     against the left-out run, averaged over folds). Unbiased: can be negative.
Euclidean-type distances are computed from Gram matrices (``g_ii + g_jj - 2 g_ij``), like
rsatoolbox; tiny negative values from rounding are clipped to 0 before the square root of
``euclidean`` only.
Non-finite inputs raise ``ValueError``. Computation and output use ``dtype`` (float64 by
default, exact to rounding); TF32 is disabled during CUDA matmuls and the flags restored.

The noise precision of ``mahalanobis`` / ``crossnobis`` comes from GLM residuals
(:func:`bids_dnn.rsa.noise.noise_precision_from_residuals`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from bids_dnn.backend import no_tf32, torch_dtype
from bids_dnn.rsa.measures import RDM_MEASURE_NAMES

__all__ = [
    "RDM_MEASURES",
    "pair_indices",
    "as_rdm_rows",
    "square_to_vector",
    "vector_to_square",
    "n_cond_from_pairs",
    "calc_rdm",
    "calc_rdms",
    "calc_crossnobis_rdm",
    "calc_crossnobis_rdms",
]


# --------------------------------------------------------------------------- vector form
def pair_indices(n_cond: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the condition pairs, ``np.triu_indices(n_cond, k=1)``.

    Parameters
    ----------
    n_cond : int
        Number of conditions (>= 2).

    Returns
    -------
    rows, cols : np.ndarray, each (n_pairs,)
    """
    if int(n_cond) < 2:
        raise ValueError(f"need at least 2 conditions, got {n_cond}")
    return np.triu_indices(int(n_cond), k=1)


def n_cond_from_pairs(n_pairs: int) -> int:
    """Number of conditions ``n`` with ``n * (n - 1) / 2 == n_pairs``; ValueError if none."""
    n_pairs = int(n_pairs)
    n = int(round((1 + math.sqrt(1 + 8 * n_pairs)) / 2))
    if n < 2 or n * (n - 1) // 2 != n_pairs:
        raise ValueError(f"{n_pairs} is not a valid number of condition pairs")
    return n


def as_rdm_rows(x: np.ndarray, name: str) -> np.ndarray:
    """RDM vectors as a finite float64 (n_rdms, n_pairs) array.

    Parameters
    ----------
    x : np.ndarray, (n_rdms, n_pairs) or (n_pairs,)
        Condensed RDMs; one vector becomes one row.
    name : str
        The argument's name, for the error message.

    Raises
    ------
    ValueError
        Not 1-D or 2-D, not finite, or ``n_pairs`` is not ``n * (n - 1) / 2``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be (n_rdms, n_pairs) or (n_pairs,), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    n_cond_from_pairs(x.shape[1])
    return x


def square_to_vector(rdm: np.ndarray) -> np.ndarray:
    """Upper triangle of a square RDM (or a stack of them) in pair order.

    Parameters
    ----------
    rdm : np.ndarray, (n_cond, n_cond) or (..., n_cond, n_cond)

    Returns
    -------
    np.ndarray, (n_pairs,) or (..., n_pairs)
    """
    rdm = np.asarray(rdm)
    if rdm.ndim < 2 or rdm.shape[-1] != rdm.shape[-2]:
        raise ValueError(f"expected square matrices, got shape {rdm.shape}")
    rows, cols = pair_indices(rdm.shape[-1])
    return rdm[..., rows, cols]


def vector_to_square(vec: np.ndarray, n_cond: int | None = None) -> np.ndarray:
    """Symmetric square RDM(s) with zero diagonal from vector form.

    Parameters
    ----------
    vec : np.ndarray, (n_pairs,) or (..., n_pairs)
    n_cond : int, optional
        Derived from ``n_pairs`` when omitted.

    Returns
    -------
    np.ndarray, (n_cond, n_cond) or (..., n_cond, n_cond)
    """
    vec = np.asarray(vec)
    n = n_cond_from_pairs(vec.shape[-1]) if n_cond is None else int(n_cond)
    if n * (n - 1) // 2 != vec.shape[-1]:
        raise ValueError(f"vector length {vec.shape[-1]} does not match n_cond={n}")
    rows, cols = pair_indices(n)
    out = np.zeros(vec.shape[:-1] + (n, n), dtype=vec.dtype)
    out[..., rows, cols] = vec
    out[..., cols, rows] = vec
    return out


# --------------------------------------------------------------------------- helpers
def _check_finite(name: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")


def _as_tensor(arr: np.ndarray, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(arr), device=device).to(dtype)


def _gram_to_pairs(gram: torch.Tensor, n_cond: int) -> torch.Tensor:
    """``g_ii + g_jj - g_ij - g_ji`` for all pairs; gram (b, n, n) -> (b, n_pairs)."""
    rows, cols = (torch.as_tensor(i, device=gram.device) for i in pair_indices(n_cond))
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    return diag[:, rows] + diag[:, cols] - gram[:, rows, cols] - gram[:, cols, rows]


def _prec_times(x: torch.Tensor, prec: torch.Tensor | None) -> torch.Tensor:
    """``x @ P`` for x (b, n, c) with P None, (c,), (c, c), (b, c) or (b, c, c)."""
    if prec is None:
        return x
    if prec.ndim == 1 or (prec.ndim == 2 and prec.shape[0] == x.shape[0]
                          and prec.shape != (x.shape[-1], x.shape[-1])):
        return x * (prec if prec.ndim == 1 else prec[:, None, :])
    return x @ prec


def _prepare_precision(noise_precision: np.ndarray | None, n_batch: int, n_channels: int,
                       dtype: torch.dtype, device: str | torch.device) -> torch.Tensor | None:
    if noise_precision is None:
        return None
    prec = np.asarray(noise_precision)
    _check_finite("noise_precision", prec)
    ok = {(n_channels,), (n_channels, n_channels), (n_batch, n_channels),
          (n_batch, n_channels, n_channels)}
    if prec.shape not in ok:
        raise ValueError(f"noise_precision shape {prec.shape} does not fit {n_channels} channels")
    return _as_tensor(prec, dtype, device)


def _channel_counts(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.full((x.shape[0], 1), float(x.shape[-1]), dtype=x.dtype, device=x.device)
    return mask.sum(-1, keepdim=True).to(x.dtype)


# --------------------------------------------------------------------------- RDMs
def calc_rdms(patterns: np.ndarray, measure: str = "correlation", *,
              noise_precision: np.ndarray | None = None, dtype: np.dtype | type = np.float64,
              device: str | torch.device = "cpu",
              channel_mask: np.ndarray | None = None) -> np.ndarray:
    """RDMs for a batch of pattern sets (e.g. ROIs, searchlight spheres, layers).

    Parameters
    ----------
    patterns : np.ndarray, (n_batch, n_cond, n_channels)
        One pattern per condition. For ``measure="crossnobis"``:
        (n_batch, n_runs, n_cond, n_channels).
    measure : str
        A key of ``RDM_MEASURES`` (see the module docstring for the conventions).
    noise_precision : np.ndarray, optional
        Only for ``mahalanobis`` / ``crossnobis``: (n_channels, n_channels) or its diagonal
        (n_channels,), shared by the batch, or per item (n_batch, n_channels[, n_channels]).
        Identity when None.
    dtype : float64 (default, exact) or float32.
    device : str or torch.device
        ``"cpu"`` or ``"cuda"``; results are returned as numpy either way.
    channel_mask : np.ndarray of bool, (n_batch, n_channels), optional
        Channels to use per item (padding for sets of different sizes); masked channels are
        ignored, including in the mean removal and in the division by the channel count.

    Returns
    -------
    np.ndarray, (n_batch, n_pairs)
    """
    if measure not in RDM_MEASURES:
        raise ValueError(f"unknown RDM measure {measure!r}; choose from {sorted(RDM_MEASURES)}")
    patterns = np.asarray(patterns)
    _check_finite("patterns", patterns)
    if measure == "crossnobis":
        return calc_crossnobis_rdms(patterns, noise_precision, dtype=dtype, device=device,
                                    channel_mask=channel_mask)
    if patterns.ndim != 3:
        raise ValueError(f"patterns must be (n_batch, n_cond, n_channels), got {patterns.shape}")
    if noise_precision is not None and measure != "mahalanobis":
        raise ValueError(f"noise_precision is only used by mahalanobis/crossnobis, not {measure}")
    n_batch, n_cond, n_ch = patterns.shape
    pair_indices(n_cond)
    tdt = torch_dtype(dtype)
    with torch.no_grad(), no_tf32():
        x = _as_tensor(patterns, tdt, device)
        mask = None
        if channel_mask is not None:
            cm = np.asarray(channel_mask, dtype=bool)
            if cm.shape != (n_batch, n_ch):
                raise ValueError(f"channel_mask must be {(n_batch, n_ch)}, got {cm.shape}")
            mask = torch.as_tensor(cm, device=x.device)
            x = x * mask[:, None, :]
        counts = _channel_counts(mask, x)  # (b, 1)
        if measure in ("correlation", "cosine"):
            if measure == "correlation":
                x = x - x.sum(-1, keepdim=True) / counts[:, :, None]
                if mask is not None:
                    x = x * mask[:, None, :]
            x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            rows, cols = (torch.as_tensor(i, device=x.device) for i in pair_indices(n_cond))
            out = 1.0 - (x @ x.transpose(1, 2))[:, rows, cols]
        else:
            prec = _prepare_precision(noise_precision, n_batch, n_ch, tdt, x.device)
            out = _gram_to_pairs(_prec_times(x, prec) @ x.transpose(1, 2), n_cond)
            if measure == "euclidean":
                out = torch.sqrt(torch.clamp(out, min=0.0))
            else:
                out = out / counts
        return out.cpu().numpy().astype(dtype, copy=False)


def calc_rdm(patterns: np.ndarray, measure: str = "correlation", *,
             noise_precision: np.ndarray | None = None,
             dtype: np.dtype | type = np.float64) -> np.ndarray:
    """RDM of one pattern set.

    Parameters
    ----------
    patterns : np.ndarray, (n_cond, n_channels)
        For ``measure="crossnobis"``: (n_runs, n_cond, n_channels).
    measure : str
        A key of ``RDM_MEASURES``.
    noise_precision : np.ndarray, optional
        (n_channels, n_channels) or (n_channels,); mahalanobis / crossnobis only.
    dtype : float64 (default) or float32.

    Returns
    -------
    np.ndarray, (n_pairs,)
    """
    patterns = np.asarray(patterns)
    want = 3 if measure == "crossnobis" else 2
    if patterns.ndim != want:
        raise ValueError(f"{measure} expects a {want}-d pattern array, got {patterns.shape}")
    return calc_rdms(patterns[None], measure, noise_precision=noise_precision, dtype=dtype)[0]


def calc_crossnobis_rdms(run_patterns: np.ndarray, noise_precision: np.ndarray | None = None, *,
                         dtype: np.dtype | type = np.float64, device: str | torch.device = "cpu",
                         channel_mask: np.ndarray | None = None) -> np.ndarray:
    """Crossnobis RDMs for a batch of run-wise pattern sets (vectorised over the batch).

    Uses ``sum_{r != s} d_r^T P d_s = (sum_r d_r)^T P (sum_r d_r) - sum_r d_r^T P d_r``.

    Parameters
    ----------
    run_patterns : np.ndarray, (n_batch, n_runs, n_cond, n_channels)
        Condition patterns estimated separately in each run (n_runs >= 2).
    noise_precision : np.ndarray, optional
        (n_channels, n_channels), (n_channels,), or per item (n_batch, n_channels[, n_channels]).
    dtype, device, channel_mask
        As in :func:`calc_rdms`.

    Returns
    -------
    np.ndarray, (n_batch, n_pairs)
    """
    run_patterns = np.asarray(run_patterns)
    if run_patterns.ndim != 4:
        raise ValueError("run_patterns must be (n_batch, n_runs, n_cond, n_channels), got "
                         f"{run_patterns.shape}")
    _check_finite("run_patterns", run_patterns)
    n_batch, n_runs, n_cond, n_ch = run_patterns.shape
    if n_runs < 2:
        raise ValueError("crossnobis needs at least 2 runs")
    pair_indices(n_cond)
    tdt = torch_dtype(dtype)
    with torch.no_grad(), no_tf32():
        x = _as_tensor(run_patterns, tdt, device)
        mask = None
        if channel_mask is not None:
            cm = np.asarray(channel_mask, dtype=bool)
            if cm.shape != (n_batch, n_ch):
                raise ValueError(f"channel_mask must be {(n_batch, n_ch)}, got {cm.shape}")
            mask = torch.as_tensor(cm, device=x.device)
            x = x * mask[:, None, None, :]
        prec = _prepare_precision(noise_precision, n_batch, n_ch, tdt, x.device)
        total = x.sum(1)  # (b, n_cond, c)
        gram = _prec_times(total, prec) @ total.transpose(1, 2)
        xr = x.reshape(n_batch, n_runs * n_cond, n_ch)
        xp = _prec_times(xr, prec).reshape(n_batch, n_runs, n_cond, n_ch)
        gram = gram - torch.einsum("brik,brjk->bij", xp, x)
        out = _gram_to_pairs(gram, n_cond) / (n_runs * (n_runs - 1)) / _channel_counts(mask, xr)
        return out.cpu().numpy().astype(dtype, copy=False)


def calc_crossnobis_rdm(run_patterns: np.ndarray,
                        noise_precision: np.ndarray | None = None) -> np.ndarray:
    """Crossnobis RDM from run-wise patterns (float64).

    Parameters
    ----------
    run_patterns : np.ndarray, (n_runs, n_cond, n_channels)
    noise_precision : np.ndarray, optional
        (n_channels, n_channels) or diagonal (n_channels,); identity when None.

    Returns
    -------
    np.ndarray, (n_pairs,)
        Equal to rsatoolbox ``calc_rdm(Dataset, method='crossnobis', descriptor='conds',
        cv_descriptor='runs', noise=P)``.
    """
    run_patterns = np.asarray(run_patterns)
    if run_patterns.ndim != 3:
        raise ValueError(f"run_patterns must be (n_runs, n_cond, n_channels), got "
                         f"{run_patterns.shape}")
    return calc_crossnobis_rdms(run_patterns[None], noise_precision)[0]


def _make_measure(name: str) -> Callable[..., np.ndarray]:
    def measure(patterns: np.ndarray, **kwargs) -> np.ndarray:
        return calc_rdm(patterns, name, **kwargs)
    measure.__name__ = f"rdm_{name}"
    measure.__doc__ = f"``calc_rdm(patterns, {name!r}, **kwargs)``; (n_pairs,)."
    return measure


#: name -> function(patterns, **kwargs) -> (n_pairs,), one per entry of
#: :data:`bids_dnn.rsa.measures.RDM_MEASURE_REGISTRY`
RDM_MEASURES: dict[str, Callable[..., np.ndarray]] = {
    name: _make_measure(name) for name in RDM_MEASURE_NAMES
}
