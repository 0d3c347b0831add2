"""A linear readout fitted on all samples: the ridge weights of one response (e.g. an ROI's mean
response) on a feature matrix, with the penalty chosen by cross-validation. Used where the
fitted model itself is needed (saliency of the predicted response), not its held-out score
(:func:`bids_dnn.encoding.cross_validated_ridge` gives those)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bids_dnn.encoding.folds import inner_folds_for

__all__ = ["LinearReadout", "fit_readout"]


@dataclass(frozen=True)
class LinearReadout:
    """``prediction(x) = intercept + (x - feature_mean) @ weights``.

    Attributes
    ----------
    weights : numpy.ndarray, shape (n_features,)
    feature_mean : numpy.ndarray, shape (n_features,)
        Training mean of each feature (the centring).
    intercept : float
        Training mean of the response.
    alpha : float
        The chosen ridge penalty.
    cv_mse : numpy.ndarray, shape (n_alphas,)
        Mean validation squared error of each candidate penalty.
    """

    weights: np.ndarray
    feature_mean: np.ndarray
    intercept: float
    alpha: float
    cv_mse: np.ndarray

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted responses, shape (n_samples,), of ``features`` (n_samples, n_features)."""
        return self.intercept + (np.asarray(features, dtype=np.float64) - self.feature_mean) @ self.weights


def _dual_fit(x_train: np.ndarray, y_train: np.ndarray, alphas: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Centred dual ridge solutions for every alpha: (mean_x, dual (n_alphas, n_train), mean_y, eigen)."""
    mean_x = x_train.mean(axis=0)
    mean_y = float(y_train.mean())
    xc = x_train - mean_x
    eigenvalues, vectors = np.linalg.eigh(xc @ xc.T)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    projected = vectors.T @ (y_train - mean_y)
    dual = (projected[None, :] / (eigenvalues[None, :] + alphas[:, None])) @ vectors.T
    return mean_x, dual, mean_y, xc


def fit_readout(features: np.ndarray, response: np.ndarray, alphas: Sequence[float], *, inner_folds: int = 5,
                groups: np.ndarray | None = None, seed: int = 0) -> LinearReadout:
    """Ridge readout of one response on all samples, the penalty chosen by K-fold cross-validation.

    Each candidate alpha's score is the validation mean squared error averaged over the folds
    (:func:`bids_dnn.encoding.inner_folds_for` with ``outer_fold=0``: the folds the inner
    cross-validation of :func:`~bids_dnn.encoding.cross_validated_ridge` would draw for a
    training set of all samples); ties go to the larger alpha. The model is then refitted on all
    samples: ``weights = X_c' (X_c X_c' + alpha I)^-1 y_c`` (dual form, equal to
    ``sklearn.linear_model.Ridge(alpha, fit_intercept=True).coef_``).

    Parameters
    ----------
    features : numpy.ndarray, shape (n_samples, n_features)
    response : numpy.ndarray, shape (n_samples,)
    alphas : sequence of float
        Candidate penalties (positive).
    inner_folds : int
        Folds of the penalty choice.
    groups : numpy.ndarray, shape (n_samples,), optional
        Group of each sample (e.g. run): grouped folds.
    seed : int
        Seed of the fold shuffle.

    Returns
    -------
    LinearReadout
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(response, dtype=np.float64).reshape(-1)
    grid = np.asarray(alphas, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"features {x.shape} and response ({y.size},) must have the same number of samples")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("features and response must be finite")
    if grid.size == 0 or (grid <= 0).any():
        raise ValueError("alphas must be positive")
    samples = np.arange(y.size)
    mse = np.zeros(grid.size)
    folds = inner_folds_for(samples, inner_folds=inner_folds, inner_groups=groups, seed=seed, outer_fold=0)
    for train, validation in folds:
        mean_x, dual, mean_y, xc = _dual_fit(x[train], y[train], grid)
        kernel = (x[validation] - mean_x) @ xc.T
        predictions = mean_y + dual @ kernel.T  # (n_alphas, n_validation)
        mse += ((predictions - y[validation][None, :]) ** 2).mean(axis=1) / len(folds)
    score = -mse + 1e-10 * np.log(grid)  # ties to the larger alpha (himalaya's rule)
    best = int(np.argmax(score))
    mean_x, dual, mean_y, xc = _dual_fit(x, y, grid[best:best + 1])
    return LinearReadout(weights=xc.T @ dual[0], feature_mean=mean_x, intercept=mean_y, alpha=float(grid[best]),
                         cv_mse=mse)
