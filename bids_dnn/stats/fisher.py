"""Fisher z-transform of correlations, clipped so that perfect correlations stay finite."""

from __future__ import annotations

import numpy as np

__all__ = ["fisher_z"]


def fisher_z(r: np.ndarray, *, eps: float = 1e-7) -> np.ndarray:
    """Fisher z-transform ``arctanh(r)`` of correlation values.

    Parameters
    ----------
    r : np.ndarray, any shape
        Correlations in [-1, 1]; NaNs stay NaN.
    eps : float
        ``r`` is clipped to ``[-(1 - eps), 1 - eps]`` before the transform, so that a perfect
        correlation gives a finite z (``|z| <= arctanh(1 - 1e-7) ~= 8.4`` by default) instead
        of infinity. Values outside [-1, 1] (rounding) are clipped the same way.

    Returns
    -------
    np.ndarray of float64, same shape as ``r``
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    r = np.asarray(r, dtype=np.float64)
    bound = 1.0 - eps
    return np.arctanh(np.clip(r, -bound, bound))
