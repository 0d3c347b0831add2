"""Noise covariance and precision over channels (voxels) from GLM residuals.

One registry of covariance estimators, ``COVARIANCE_ESTIMATORS``, serves both uses of the
residual noise: the precision ``Sigma^(-1)`` of the Mahalanobis-type RDMs
(:func:`noise_precision_from_residuals`, :func:`noise_precision_univariate`; see
:mod:`bids_dnn.rsa.rdm`) and the whitening ``Sigma^(-1/2)`` of multivariate noise normalisation
(:func:`inverse_sqrt` of :func:`noise_covariance`, used by
``bids_dnn.brain.patterns.noise_normalize``; Walther et al. 2016, NeuroImage 137:188).

Estimators, for residuals ``X`` (n_time, p) demeaned over time, ``n = n_time`` and ``dof``
(default ``n - 1``); each equals ``rsatoolbox.data.noise.cov_from_residuals`` with that method
(so the precisions equal ``prec_from_residuals``):

``shrinkage_diag``
    Schaefer & Strimmer (2005): the sample covariance ``X^T X / dof`` with its correlations shrunk
    towards 0 by the optimal factor ``lambda`` (clipped to [0, 1]), estimated from the variance of
    the standardised cross products. As rsatoolbox, ``n - 1`` (not ``dof``) standardises them.
    Computed from ``X^T X`` and ``(X^2)^T X^2`` with few (p, p) temporaries.
``shrinkage_eye``
    Ledoit & Wolf (2004): ``S = X^T X / n`` shrunk towards ``trace(S) / p * I`` (= scikit-learn's
    ``ledoit_wolf(X, assume_centered=True)``), then rescaled by ``n / dof``.
``diag``
    The variances only, ``sum_t x_ti^2 / dof``, on the diagonal.
``full``
    The sample covariance ``X^T X / dof``: singular when ``n_time <= p``, so it is not among
    the estimators the spec offers (``WELL_CONDITIONED_ESTIMATORS``).

Invalid input raises :class:`NoiseEstimateError`, both a ``ValueError`` and a
:class:`bids_dnn.errors.AnalysisError` (a readable message and exit code on the command line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bids_dnn.errors import AnalysisError

__all__ = [
    "NoiseEstimateError",
    "CovarianceEstimator",
    "COVARIANCE_ESTIMATORS",
    "NOISE_METHODS",
    "WELL_CONDITIONED_ESTIMATORS",
    "NOISE_NORMALIZATIONS",
    "noise_covariance",
    "noise_precision_from_residuals",
    "noise_precision_univariate",
    "inverse_sqrt",
]


class NoiseEstimateError(AnalysisError, ValueError):
    """Residuals or options from which no noise covariance can be estimated."""


# --------------------------------------------------------------------------- estimators
def _demeaned(residuals: np.ndarray, dof: float | None) -> tuple[np.ndarray, float]:
    """Residuals (n_time, p) as a float64 copy demeaned over time, and the degrees of freedom."""
    res = np.array(residuals, dtype=np.float64)
    if res.ndim != 2:
        raise NoiseEstimateError(f"residuals must be 2D (n_time, n_channels), got shape {res.shape}")
    if res.shape[0] < 2:
        raise NoiseEstimateError("need at least 2 residual time points to estimate the noise")
    if not np.isfinite(res).all():
        raise NoiseEstimateError("residuals contain NaN or infinite values")
    res -= res.mean(axis=0, keepdims=True)
    dof = res.shape[0] - 1 if dof is None else dof
    if not dof > 0:
        raise NoiseEstimateError(f"residual degrees of freedom must be positive (got {dof})")
    return res, dof


def _cov_full(res: np.ndarray, dof: float) -> np.ndarray:
    """Sample covariance ``X^T X / dof``, (p, p)."""
    return res.T @ res / dof


def _cov_diag(res: np.ndarray, dof: float) -> np.ndarray:
    """Diagonal covariance ``diag(sum_t x_ti^2 / dof)``, (p, p)."""
    return np.diag(np.einsum("ij,ij->j", res, res) / dof)


def _cov_shrinkage_eye(res: np.ndarray, dof: float) -> np.ndarray:
    """Ledoit & Wolf (2004) shrinkage towards a multiple of the identity (as rsatoolbox), (p, p)."""
    n, p = res.shape
    s = res.T @ res / n
    s2 = (res**2).T @ (res**2) / n
    b2 = np.sum(s2 - s * s) / n
    m = np.trace(s) / p
    d2 = np.sum((s - m * np.eye(p)) ** 2)
    b2 = min(d2, b2)
    shrunk = (b2 / d2) * m * np.eye(p) + ((d2 - b2) / d2) * s if d2 > 0 else s
    return shrunk * n / dof


def _cov_shrinkage_diag(res: np.ndarray, dof: float) -> np.ndarray:
    """Schaefer & Strimmer (2005) shrinkage of correlations towards 0, as rsatoolbox's
    ``shrinkage_diag``, (p, p); vectorised (``sum_t (x_ti x_tj)^2 = (X^2)^T X^2``) and with sums
    over off-diagonal elements taken as total minus trace to keep few (p, p) temporaries."""
    n, p = res.shape
    cov = res.T @ res  # s_sum
    var = np.diag(cov).copy() / dof
    if np.any(var <= 0):
        raise NoiseEstimateError("noise covariance: some voxels have zero residual variance")
    inv_std = 1.0 / np.sqrt(var)
    corr = cov * inv_std[:, None] * inv_std[None, :] / (n - 1)  # s_mean
    sum_corr2 = np.einsum("ij,ij->", corr, corr) - np.sum(np.diag(corr) ** 2)
    del corr
    sq = res**2
    s2 = sq.T @ sq  # s2_sum
    s2 *= (1.0 / var)[:, None] * (1.0 / var)[None, :] / (n - 1)  # s2_mean
    sum_s2 = s2.sum() - np.trace(s2)
    del s2
    var_hat_off = n / dof**2 * (sum_s2 - sum_corr2)
    lamb = var_hat_off / sum_corr2 if sum_corr2 > 0 else 1.0
    lamb = float(np.clip(np.nan_to_num(lamb, nan=1.0), 0.0, 1.0))
    cov /= dof
    diag = np.diag(cov).copy()
    cov *= 1.0 - lamb
    cov[np.diag_indices(p)] = diag
    return cov


@dataclass(frozen=True)
class CovarianceEstimator:
    """A channel covariance estimator of the registry.

    Attributes
    ----------
    estimate : callable
        ``estimate(residuals, dof)``: residuals (n_time, p) demeaned over time, dof > 0 ->
        covariance (p, p).
    always_invertible : bool
        Positive definite for any number of time points (given non-zero variances).
    """

    estimate: Callable[[np.ndarray, float], np.ndarray]
    always_invertible: bool


#: name -> estimator (the names of ``rsatoolbox.data.noise.cov_from_residuals``)
COVARIANCE_ESTIMATORS: dict[str, CovarianceEstimator] = {
    "shrinkage_diag": CovarianceEstimator(_cov_shrinkage_diag, always_invertible=True),
    "shrinkage_eye": CovarianceEstimator(_cov_shrinkage_eye, always_invertible=True),
    "diag": CovarianceEstimator(_cov_diag, always_invertible=True),
    "full": CovarianceEstimator(_cov_full, always_invertible=False),
}
#: every estimator name
NOISE_METHODS: tuple[str, ...] = tuple(COVARIANCE_ESTIMATORS)
#: estimators whose covariance is invertible for any ROI size (the spec's ``brain.noise_estimator``)
WELL_CONDITIONED_ESTIMATORS: tuple[str, ...] = tuple(
    name for name, estimator in COVARIANCE_ESTIMATORS.items() if estimator.always_invertible)
#: noise normalisations of response patterns (the spec's ``brain.noise_normalization``):
#: ``none``; ``univariate``: each voxel divided by its residual SD; ``multivariate``: patterns
#: multiplied by ``Sigma^(-1/2)`` (``bids_dnn.brain.patterns.noise_normalize``)
NOISE_NORMALIZATIONS: tuple[str, ...] = ("none", "univariate", "multivariate")


def noise_covariance(residuals: np.ndarray, estimator: str = "shrinkage_diag",
                     dof: float | None = None) -> np.ndarray:
    """Channel-by-channel (voxel-by-voxel) noise covariance from the residuals of one run.

    Parameters
    ----------
    residuals : np.ndarray, (n_time, n_channels)
        (Whitened) GLM residuals, finite; each column is demeaned first.
    estimator : str
        A key of ``COVARIANCE_ESTIMATORS`` (see the module docstring).
    dof : float, optional
        Degrees of freedom of the residuals (default ``n_time - 1``; pass the GLM's dof).

    Returns
    -------
    np.ndarray, (n_channels, n_channels)
    """
    if estimator not in COVARIANCE_ESTIMATORS:
        raise NoiseEstimateError(f"unknown noise estimator '{estimator}'; choose one of "
                                 f"{', '.join(COVARIANCE_ESTIMATORS)}")
    res, dof = _demeaned(residuals, dof)
    return COVARIANCE_ESTIMATORS[estimator].estimate(res, dof)


# --------------------------------------------------------------------------- precision
def noise_precision_from_residuals(
        residuals: np.ndarray | Sequence[np.ndarray], method: str = "shrinkage_diag",
        dof: float | Sequence[float] | None = None, *, per_run: bool = False) -> np.ndarray:
    """Noise precision (inverse covariance over channels) from GLM residuals.

    Parameters
    ----------
    residuals : np.ndarray (n_time, n_channels), or a list / (n_runs, n_time, n_channels)
        array of per-run residuals. Each run is demeaned over time separately.
    method : str
        A key of ``COVARIANCE_ESTIMATORS`` (``shrinkage_diag``, ``shrinkage_eye``, ``diag``,
        ``full``), exactly as ``rsatoolbox.data.noise.cov_from_residuals``.
    dof : float or list of float, optional
        Degrees of freedom per run (default ``n_time - 1``; pass ``n_time - n_regressors`` for
        GLM residuals). A list gives one value per run.
    per_run : bool
        For several runs: return the per-run precisions (n_runs, n_channels, n_channels)
        (= rsatoolbox's list output) instead of one pooled precision.

    Returns
    -------
    np.ndarray, (n_channels, n_channels), or (n_runs, n_channels, n_channels) if ``per_run``.
        For several runs and ``per_run=False``: the inverse of the mean of the per-run
        covariances (rsatoolbox returns a list here; averaging covariances before inverting
        is the convention of its crossnobis with per-run noise).

    Notes
    -----
    A per-run ``dof`` list is applied run by run; rsatoolbox 0.3.2 passes the whole list of
    runs in that branch (a bug), so only scalar/None ``dof`` can be compared with it. As in
    rsatoolbox, ``shrinkage_diag`` uses ``n_time - 1`` (not ``dof``) inside the shrinkage
    intensity, and ``shrinkage_eye`` rescales by ``n_time / dof`` after shrinking.
    """
    if method not in COVARIANCE_ESTIMATORS:
        raise NoiseEstimateError(f"unknown noise estimator '{method}'; choose one of "
                                 f"{', '.join(COVARIANCE_ESTIMATORS)}")
    if isinstance(residuals, np.ndarray) and residuals.ndim == 2:
        if dof is not None and np.ndim(dof) != 0:
            raise NoiseEstimateError("a single residual array needs a scalar dof")
        return np.linalg.inv(noise_covariance(residuals, method, dof))
    runs = list(residuals)
    if not runs:
        raise NoiseEstimateError("no residuals given")
    dofs = list(dof) if dof is not None and np.ndim(dof) != 0 else [dof] * len(runs)
    if len(dofs) != len(runs):
        raise NoiseEstimateError(f"{len(dofs)} dof values for {len(runs)} runs")
    covs = np.stack([noise_covariance(r, method, d) for r, d in zip(runs, dofs)])
    if per_run:
        return np.linalg.inv(covs)
    return np.linalg.inv(covs.mean(axis=0))


def noise_precision_univariate(residuals: np.ndarray | Sequence[np.ndarray],
                               dof: float | Sequence[float] | None = None) -> np.ndarray:
    """Diagonal noise precision ``1 / variance`` per channel (univariate noise normalisation).

    Parameters
    ----------
    residuals, dof
        As in :func:`noise_precision_from_residuals`.

    Returns
    -------
    np.ndarray, (n_channels,)
        The diagonal of ``noise_precision_from_residuals(residuals, "diag", dof)``; pass it
        as ``noise_precision`` to the RDM functions.
    """
    return np.diag(noise_precision_from_residuals(residuals, "diag", dof)).copy()


def inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric ``cov^(-1/2)`` (the whitening matrix); eigenvalues floored at 1e-10 of the
    largest.

    Parameters
    ----------
    cov : np.ndarray, (p, p)
        A covariance (symmetrised before the eigendecomposition).

    Returns
    -------
    np.ndarray, (p, p)
        ``W`` with ``W cov W = I`` (for well-conditioned ``cov``); ``X @ W`` whitens rows ``X``.
    """
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2.0)
    vals = np.maximum(vals, max(vals.max(), 0.0) * 1e-10 + np.finfo(float).tiny)
    return (vecs / np.sqrt(vals)) @ vecs.T
