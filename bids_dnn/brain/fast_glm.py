"""Batched first-level GLM with nilearn's statistics (OLS and AR(1)), for all voxels of a run.

nilearn's ``run_glm`` fits a chunk of voxels at a time: OLS, Yule-Walker AR(1) coefficients of
the OLS residuals, coefficients truncated to a grid of 1/100 ("bins"), then per bin one
whitened design, its pseudo-inverse and the fit of that bin's voxels. Called chunk by chunk it
whitens and inverts the design again for every bin in every chunk. Here the same estimate is
computed in two passes over the voxels: the OLS residuals of every voxel (one chunk at a time)
give its AR(1) coefficient and bin over the whole brain, then every bin's whitened design is
inverted once and applied to that bin's voxels, chunk by chunk (each chunk of consecutive voxels
loaded sorted by bin: one matrix product per bin present).
Same numbers as ``run_glm`` on all voxels at once (to rounding): the coefficients are centred by
the mean of all residuals, as ``run_glm`` does over the voxels it is given.

Arrays in, arrays out; BLAS-backed NumPy. Memory: a few float64 ``(n_time, chunk)`` arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Sequence

import numpy as np
import scipy.linalg

__all__ = ["AR1_BINS", "PERFECT_FIT", "ar1_bin_indices", "ar1_from_moments", "fit_glm", "load_block",
           "one_blas_thread", "residual_moments", "store_block", "whiten_ar1", "whiten_ar1_transposed"]

#: nilearn's grid of AR(1) coefficients: a voxel's coefficient is truncated to a multiple of 1 / AR1_BINS
AR1_BINS = 100
#: a voxel whose OLS residual sum of squares is at most this times its sum of squares is fitted
#: exactly: its AR(1) coefficient is undefined and it is fitted by OLS (bin 0)
PERFECT_FIT = 1e-20


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block on one BLAS thread (threadpoolctl; no-op without it).

    For the small factorisations (SVD / QR of ``(n_time, n_regressors)`` designs): they gain
    little from more threads and lose much when the cores are shared (measured on a loaded
    2-core box: ``scipy.linalg.pinv`` of a 999 x 141 design 0.39 s on 2 threads, 0.012 s on one).
    The large matrix products keep the process's threads.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def load_block(data: np.ndarray, rows: np.ndarray | None, columns: np.ndarray | slice) -> np.ndarray:
    """Rows ``rows`` and columns ``columns`` of ``data`` as a new float64 array.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_time, n_vox)
        Any real dtype (float32 values are converted exactly).
    rows : numpy.ndarray of int, shape (n_rows,), optional
        Time points to keep (None: all).
    columns : numpy.ndarray of int or slice
        Voxels to take.

    Returns
    -------
    numpy.ndarray of float64, shape (n_rows, n_columns)
    """
    rows = np.arange(data.shape[0]) if rows is None else rows
    columns = _columns(columns) if isinstance(columns, np.ndarray) else columns
    width = len(range(*columns.indices(data.shape[1]))) if isinstance(columns, slice) else len(columns)
    out = np.empty((len(rows), width))
    for k, row in enumerate(rows):  # row by row: one float64 block, no float32 copy of the block
        out[k] = data[row, columns]
    return out


def store_block(out: np.ndarray, columns: np.ndarray | slice, block: np.ndarray) -> None:
    """``out[:, columns] = block`` (cast to ``out``'s dtype), row by row.

    Parameters
    ----------
    out : numpy.ndarray, shape (n_time, n_vox_all)
    columns : numpy.ndarray of int or slice
    block : numpy.ndarray, shape (n_time, n_columns)
    """
    columns = _columns(columns) if isinstance(columns, np.ndarray) else columns
    for row in range(block.shape[0]):
        out[row, columns] = block[row]


def whiten_ar1(x: np.ndarray, rho: float) -> np.ndarray:
    """nilearn's AR(1) whitening (``ARModel.whiten``): ``w[0] = x[0]``, ``w[t] = x[t] - rho x[t-1]``.

    Parameters
    ----------
    x : numpy.ndarray, shape (n_time, ...)
    rho : float

    Returns
    -------
    numpy.ndarray of float64, shape (n_time, ...)
    """
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    out[0] = x[0]
    np.multiply(x[:-1], rho, out=out[1:])
    np.subtract(x[1:], out[1:], out=out[1:])  # x[t] - rho x[t-1], rounded as nilearn's
    return out


def whiten_ar1_transposed(a: np.ndarray, rho: float) -> np.ndarray:
    """The transpose of :func:`whiten_ar1` applied to ``a``: ``out[t] = a[t] - rho a[t+1]``,
    ``out[-1] = a[-1]`` (so that ``a @ whiten_ar1(y) == whiten_ar1_transposed(a) @ y``).

    Parameters
    ----------
    a : numpy.ndarray, shape (n_time, ...)
    rho : float

    Returns
    -------
    numpy.ndarray of float64, shape (n_time, ...)
    """
    a = np.asarray(a, np.float64)
    out = np.empty_like(a)
    out[-1] = a[-1]
    np.multiply(a[1:], rho, out=out[:-1])
    np.subtract(a[:-1], out[:-1], out=out[:-1])
    return out


def residual_moments(residuals: np.ndarray) -> np.ndarray:
    """Per voxel: sum, sum of squares, lag-1 sum of products, first and last value.

    Parameters
    ----------
    residuals : numpy.ndarray, shape (n_time, n_vox)

    Returns
    -------
    numpy.ndarray, shape (5, n_vox)
        Enough to centre the series by any constant afterwards (:func:`ar1_from_moments`).
    """
    return np.stack([residuals.sum(axis=0), np.einsum("tv,tv->v", residuals, residuals),
                     np.einsum("tv,tv->v", residuals[:-1], residuals[1:]), residuals[0], residuals[-1]])


def ar1_from_moments(moments: np.ndarray, mean: float, n_time: int, perfect: np.ndarray) -> np.ndarray:
    """nilearn's binned Yule-Walker AR(1) coefficients, as bin indices.

    nilearn (``_yule_walker``) centres the residuals of all voxels by their common mean ``m``,
    takes ``r0 = sum (e - m)^2 / n^2`` and ``r1 = sum (e_t - m)(e_{t+1} - m) / (n (n - 1))``,
    ``rho = r1 / r0``, then truncates ``rho * 100`` to an integer (the bin; the coefficient used
    to whiten is ``bin / 100``).

    Parameters
    ----------
    moments : numpy.ndarray, shape (5, n_vox)
        From :func:`residual_moments`.
    mean : float
        The mean of the residuals over all voxels and time points.
    n_time : int
    perfect : numpy.ndarray of bool, shape (n_vox,)
        Voxels fitted exactly (bin 0: OLS).

    Returns
    -------
    numpy.ndarray of int16, shape (n_vox,)
    """
    total, squares, lag, first, last = moments
    n = n_time
    r0 = (squares - 2.0 * mean * total + n * mean**2) / (n * n)
    r1 = (lag - mean * (2.0 * total - first - last) + (n - 1) * mean**2) / ((n - 1) * n)
    ok = ~perfect & (r0 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(ok, r1 / np.where(ok, r0, 1.0), 0.0)
    return (rho * AR1_BINS).astype(np.int64).astype(np.int16)


def ar1_bin_indices(data: np.ndarray, design: np.ndarray, *, rows: np.ndarray | None = None,
                    voxels: np.ndarray | None = None, chunk_size: int = 4096) -> np.ndarray:
    """AR(1) bin of every voxel, from its OLS residuals (nilearn's ``run_glm`` on all voxels).

    Parameters
    ----------
    data : numpy.ndarray, shape (n_time_all, n_vox_all)
    design : numpy.ndarray, shape (n_time, n_regressors)
        For the kept time points ``rows``.
    rows : numpy.ndarray of int, shape (n_time,), optional
    voxels : numpy.ndarray of int, shape (n_vox,), optional
    chunk_size : int
        Voxels loaded at once.

    Returns
    -------
    numpy.ndarray of int16, shape (n_vox,)
        ``floor-towards-zero(100 rho)``; the whitening coefficient is ``bin / 100``.
    """
    voxels = np.arange(data.shape[1]) if voxels is None else np.asarray(voxels)
    with one_blas_thread():
        pinv = scipy.linalg.pinv(design)
    n_time = design.shape[0]
    moments = np.empty((5, len(voxels)))
    perfect = np.empty(len(voxels), dtype=bool)
    for start in range(0, len(voxels), chunk_size):
        part = slice(start, start + chunk_size)
        Y = load_block(data, rows, voxels[part])
        residuals = design @ (pinv @ Y)
        np.subtract(Y, residuals, out=residuals)
        moments[:, part] = residual_moments(residuals)
        perfect[part] = moments[1, part] <= PERFECT_FIT * np.einsum("tv,tv->v", Y, Y)
    mean = moments[0].sum() / (n_time * max(len(voxels), 1))
    return ar1_from_moments(moments, mean, n_time, perfect)


class _WhitenedFit:
    """One AR(1) bin's whitened design, its pseudo-inverse and its fit (nilearn's ``ARModel``;
    OLS for coefficient 0)."""

    def __init__(self, design: np.ndarray, rho: float, columns: Sequence[int], t_values: bool):
        self.rho = rho
        self.design = whiten_ar1(design, rho) if rho != 0 else design
        self.pinv = scipy.linalg.pinv(self.design)
        self.columns = list(columns)
        self.t_values = t_values
        # nilearn's dispersion divides by n_time - n_columns (not the rank)
        self.df = self.design.shape[0] - self.design.shape[1]
        self.cov_diagonal = np.einsum("ct,ct->c", self.pinv[self.columns], self.pinv[self.columns])

    def fit(self, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Estimates of ``columns`` (or their t values), shape (n_col, n_vox), and whitened residuals."""
        wY = whiten_ar1(Y, self.rho) if self.rho != 0 else Y
        theta = self.pinv @ wY
        residuals = self.design @ theta
        np.subtract(wY, residuals, out=residuals)
        est = theta[self.columns]
        if self.t_values:
            dispersion = np.einsum("tv,tv->v", residuals, residuals) / self.df
            with np.errstate(divide="ignore", invalid="ignore"):
                est = est / np.sqrt(self.cov_diagonal[:, None] * dispersion[None, :])
        return est, residuals


def fit_glm(data: np.ndarray, design: np.ndarray, noise_model: str = "ar1", *, rows: np.ndarray | None = None,
            voxels: np.ndarray | None = None, columns: Sequence[int] | None = None, t_values: bool = False,
            chunk_size: int = 4096, residuals_out: np.ndarray | None = None) -> np.ndarray:
    """Fit one design to many voxels with nilearn's OLS or AR(1) model.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_time_all, n_vox_all)
        Voxel time series (float32 or float64; never copied whole: blocks of ``chunk_size``
        voxels are converted to float64).
    design : numpy.ndarray, shape (n_time, n_regressors)
        The design of the kept time points.
    noise_model : {"ar1", "ols"}
    rows : numpy.ndarray of int, shape (n_time,), optional
        Time points of ``data`` that enter the fit (None: all).
    voxels : numpy.ndarray of int, shape (n_vox,), optional
        Voxels to fit (None: all).
    columns : sequence of int, optional
        Regressors whose estimates are returned (None: all).
    t_values : bool
        Return t values (``theta / sqrt(cov_jj * dispersion)``, nilearn's ``Tcontrast`` of a
        unit contrast) instead of estimates.
    chunk_size : int
        Voxels held at once.
    residuals_out : numpy.ndarray, shape (n_time, n_vox_all), optional
        Receives the whitened residuals in the columns ``voxels`` (cast to its dtype).

    Returns
    -------
    numpy.ndarray of float64, shape (n_col, n_vox)
        Estimates (or t values) of ``columns``, voxels in the order of ``voxels``.

    Notes
    -----
    AR(1): one OLS pass gives every voxel's bin (:func:`ar1_bin_indices`); every bin's
    whitened design is then inverted once, and each chunk's voxels are fitted sorted by bin
    (one product per bin present). Voxels fitted exactly by
    the design are fitted by OLS (their AR(1) coefficient is undefined; nilearn fails on them).
    """
    if noise_model not in ("ar1", "ols"):
        raise ValueError(f"noise_model must be 'ar1' or 'ols', got {noise_model!r}")
    design = np.asarray(design, dtype=np.float64)
    voxels = np.arange(data.shape[1]) if voxels is None else np.asarray(voxels)
    columns = list(range(design.shape[1])) if columns is None else list(columns)
    chunk_size = max(int(chunk_size), 1)
    if noise_model == "ar1":
        bins = ar1_bin_indices(data, design, rows=rows, voxels=voxels, chunk_size=chunk_size)
    else:
        bins = np.zeros(len(voxels), dtype=np.int16)
    with one_blas_thread():
        fits = {int(b): _WhitenedFit(design, int(b) * 1.0 / AR1_BINS, columns, t_values) for b in np.unique(bins)}
    estimates = np.empty((len(columns), len(voxels)))
    for start in range(0, len(voxels), chunk_size):
        # a chunk of consecutive voxels, loaded sorted by bin (the gather stays within the
        # chunk's columns: cache-friendly), one product per bin present
        positions = start + np.argsort(bins[start : start + chunk_size], kind="stable")
        Y = load_block(data, rows, voxels[positions])
        chunk_bins = bins[positions]
        chunk_residuals = None if residuals_out is None else np.empty(Y.shape, dtype=residuals_out.dtype)
        edges = np.flatnonzero(np.diff(chunk_bins)) + 1
        for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(positions)]):
            estimates[:, positions[lo:hi]], residuals = fits[int(chunk_bins[lo])].fit(Y[:, lo:hi])
            if chunk_residuals is not None:
                chunk_residuals[:, lo:hi] = residuals
        del Y
        if chunk_residuals is not None:
            store_block(residuals_out, voxels[positions], chunk_residuals)
    return estimates


def _columns(indices: np.ndarray) -> np.ndarray | slice:
    """A slice when ``indices`` are consecutive (faster loads and stores), else the indices."""
    if len(indices) and indices[-1] - indices[0] + 1 == len(indices) and np.all(np.diff(indices) == 1):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices
