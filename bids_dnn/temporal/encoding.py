"""Time-resolved encoding: cross-validated ridge from one layer's features to every channel x time
point of condition-averaged M/EEG epochs.

Pure functions on arrays. Every (channel, time point) is one target of
:func:`bids_dnn.encoding.cross_validated_ridge` (targets flattened channel-major, time fastest,
and reshaped back), so all conventions are that function's: folds over conditions
(:func:`bids_dnn.encoding.make_folds`), features z-scored with training statistics, a per-target
ridge penalty chosen by inner cross-validation on the training conditions only, ``r`` the mean
over outer folds of the Pearson r within each test fold, ``r2`` over the pooled out-of-fold
predictions. All targets share one decomposition per fold; the time points only add columns to
the products.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bids_dnn.encoding import cross_validated_ridge, himalaya_backend_for_device
from bids_dnn.encoding.folds import Folds

__all__ = ["EncodingOverTime", "time_resolved_encoding"]


@dataclass(frozen=True)
class EncodingOverTime:
    """Outcome of :func:`time_resolved_encoding`.

    Attributes
    ----------
    r : numpy.ndarray, shape (n_channels, n_times)
        Held-out Pearson r (mean over outer folds of the within-fold r).
    r2 : numpy.ndarray, shape (n_channels, n_times)
        Held-out R2 of the pooled out-of-fold predictions.
    mean_r, mean_r2 : numpy.ndarray, shape (n_times,)
        Means over channels (NaN-ignoring: channels constant at a time point are skipped).
    alphas : numpy.ndarray, shape (n_folds, n_channels, n_times)
        Ridge penalty chosen by inner cross-validation in each outer fold.
    fold_r : numpy.ndarray, shape (n_folds, n_channels, n_times)
        Pearson r within each test fold.
    predictions : numpy.ndarray, shape (n_conditions, n_channels, n_times)
        Out-of-fold predictions (NaN for conditions in no test fold).
    solver : str
        The ridge form used (``"kernel"`` or ``"primal"``, see
        :func:`bids_dnn.encoding.cross_validated_ridge`).
    """

    r: np.ndarray
    r2: np.ndarray
    mean_r: np.ndarray
    mean_r2: np.ndarray
    alphas: np.ndarray
    fold_r: np.ndarray
    predictions: np.ndarray
    solver: str


def _channel_mean(values: np.ndarray) -> np.ndarray:
    """NaN-ignoring mean over axis 0 (NaN, without a warning, where every channel is NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0)


def time_resolved_encoding(features: np.ndarray, responses: np.ndarray, folds: Folds, *, alphas: Sequence[float],
                           inner_folds: int | str = 5, inner_groups: np.ndarray | None = None,
                           standardize: bool = True, pca: int | None = None, seed: int = 0, device: str = "cpu",
                           dtype: str | None = None, memory_budget_bytes: int | None = None) -> EncodingOverTime:
    """Cross-validated ridge encoding of every channel at every time point.

    Parameters
    ----------
    features : numpy.ndarray, shape (n_conditions, n_units)
        One layer's features (finite).
    responses : numpy.ndarray, shape (n_conditions, n_channels, n_times)
        Condition-averaged epochs, conditions in the order of ``features``.
    folds : sequence of (train, test)
        Outer folds over conditions (:func:`bids_dnn.encoding.make_folds`).
    alphas : sequence of float
        Candidate ridge penalties (positive).
    inner_folds : int or "loo"
        Inner folds for the per-target penalty (see
        :func:`bids_dnn.encoding.cross_validated_ridge`).
    inner_groups : numpy.ndarray, shape (n_conditions,), optional
        Groups of the inner folds (when the outer folds are grouped).
    standardize : bool
        z-score the features with training statistics.
    pca : int, optional
        Keep this many principal components of the standardised training features.
    seed : int
        Seed of the inner folds.
    device : str
        ``cpu`` / ``cuda`` / ``auto``: where the products with the responses run
        (:func:`bids_dnn.encoding.himalaya_backend_for_device`).
    dtype : {"float32", "float64"}, optional
        Precision of those products (default: the responses' dtype).
    memory_budget_bytes : int, optional
        Working memory of one target batch (does not change the results).

    Returns
    -------
    EncodingOverTime

    Raises
    ------
    ValueError
        ``responses`` not 3-D or not matching ``features``; invalid folds or alphas.
    """
    responses = np.asarray(responses)
    if responses.ndim != 3:
        raise ValueError(f"responses must be (n_conditions, n_channels, n_times), got shape {responses.shape}")
    n_conditions, n_channels, n_times = responses.shape
    if np.shape(features)[0] != n_conditions:
        raise ValueError(f"features have {np.shape(features)[0]} conditions, the responses {n_conditions}")
    targets = responses.reshape(n_conditions, n_channels * n_times)  # channel-major, time fastest
    result = cross_validated_ridge(np.asarray(features, dtype=np.float64), targets, folds, alphas,
                                   inner_folds=inner_folds, inner_groups=inner_groups, standardize=standardize,
                                   pca=pca, backend=himalaya_backend_for_device(device), seed=seed, dtype=dtype,
                                   memory_budget_bytes=memory_budget_bytes)
    shape = (n_channels, n_times)
    r = result.r.reshape(shape)
    r2 = result.r2.reshape(shape)
    n_folds = result.alphas.shape[0]
    return EncodingOverTime(r=r, r2=r2, mean_r=_channel_mean(r), mean_r2=_channel_mean(r2),
                            alphas=result.alphas.reshape((n_folds,) + shape),
                            fold_r=result.fold_r.reshape((n_folds,) + shape),
                            predictions=result.predictions.reshape((n_conditions,) + shape), solver=result.solver)
