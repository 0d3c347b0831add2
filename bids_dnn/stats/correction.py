"""Multiple-comparison corrections of p-values, NaN-aware, with families along an axis.

``CORRECTIONS`` is the registry of the corrections the group analysis offers
(``statistics.correction`` of the spec takes its names): each maps p-values of any shape to
adjusted p-values of the same shape. NaNs stay NaN and do not count towards the number of tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Correction",
    "CORRECTIONS",
    "fdr_bh",
    "bonferroni",
    "uncorrected",
]


def _along_last(p: np.ndarray, axis: int | None) -> tuple[np.ndarray, tuple, int | None]:
    """p-values as (n_families, family_size), with what :func:`_restore` needs."""
    p = np.asarray(p, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    if axis is None:
        return p.reshape(1, -1), p.shape, None
    moved = np.moveaxis(p, axis, -1)
    return moved.reshape(-1, moved.shape[-1]), moved.shape, axis


def _restore(flat: np.ndarray, shape: tuple, axis: int | None) -> np.ndarray:
    out = flat.reshape(shape)
    return out if axis is None else np.moveaxis(out, -1, axis)


def fdr_bh(p: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN-aware).

    Parameters
    ----------
    p : np.ndarray, any shape
    axis : int, optional
        Families along this axis; ``None`` (default) treats all values as one family.

    Returns
    -------
    np.ndarray, same shape
        Equal to ``scipy.stats.false_discovery_control(p, method='bh')`` on the finite values;
        NaNs stay NaN and do not count towards the number of tests.
    """
    flat, shape, axis = _along_last(p, axis)
    finite = np.isfinite(flat)
    m = finite.sum(axis=1, keepdims=True)
    order = np.argsort(np.where(finite, flat, np.inf), axis=1, kind="stable")
    ps = np.take_along_axis(flat, order, axis=1)
    rank = np.arange(1, flat.shape[1] + 1)
    with np.errstate(invalid="ignore"):
        adj = np.where(rank <= m, ps * m / rank, np.nan)
    adj = np.fmin.accumulate(adj[:, ::-1], axis=1)[:, ::-1]
    adj = np.where(rank <= m, np.clip(adj, 0, 1), np.nan)
    out = np.empty_like(flat)
    np.put_along_axis(out, order, adj, axis=1)
    return _restore(out, shape, axis)


def bonferroni(p: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Bonferroni adjusted p-values ``min(1, p * m)``, m = number of finite p-values in the
    family (``axis`` as in :func:`fdr_bh`); same shape, NaNs stay NaN."""
    flat, shape, axis = _along_last(p, axis)
    m = np.isfinite(flat).sum(axis=1, keepdims=True)
    return _restore(np.minimum(flat * m, 1.0), shape, axis)


def uncorrected(p: np.ndarray, axis: int | None = None) -> np.ndarray:
    """The p-values unchanged (checked to lie in [0, 1]), as float64; ``axis`` is accepted for
    the common signature of ``CORRECTIONS`` and has no effect."""
    flat, shape, axis = _along_last(p, axis)
    return _restore(flat.copy(), shape, axis)


@dataclass(frozen=True)
class Correction:
    """A multiple-comparison correction of the registry.

    Attributes
    ----------
    adjust : callable
        ``adjust(p, axis=None)``: adjusted p-values, same shape as ``p``.
    label : str
        Its name in running text (methods sections): "<label> correction".
    """

    adjust: Callable[..., np.ndarray]
    label: str


#: name -> correction; the names are the spec's ``statistics.correction`` values, in its order
CORRECTIONS: dict[str, Correction] = {
    "fdr_bh": Correction(fdr_bh, "Benjamini-Hochberg false discovery rate"),
    "bonferroni": Correction(bonferroni, "Bonferroni"),
    "none": Correction(uncorrected, "no"),
}
