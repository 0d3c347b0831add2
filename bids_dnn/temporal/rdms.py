"""Time-resolved brain RDMs of M/EEG epochs: one RDM per time point, streamed over time.

Epochs are ``data`` (n_trials, n_channels, n_times) with one condition code per trial (``labels``,
ints ``0 .. n_cond - 1``, every condition present); RDM stacks are (n_times, n_pairs) in
:func:`bids_dnn.rsa.pair_indices` order (row-major upper triangle, as scipy's ``squareform``).

Measures (``TEMPORAL_RDM_MEASURES``), at every time point, ``c`` channels
    ``correlation``   ``1 - r`` (Pearson, across channels) between the trial-averaged condition
                      patterns (:func:`bids_dnn.rsa.calc_rdms`); equals rsatoolbox
                      ``calc_rdm(ds_t, 'correlation', descriptor='conds')``. With a noise precision
                      ``P`` the patterns are first whitened by the symmetric ``P^(1/2)``
                      (``= Sigma^(-1/2)``, multivariate noise normalisation of Guggenmos et al. 2018).
    ``euclidean_cv``  cross-validated squared Euclidean distance over folds of trials, divided by
                      ``c``; identity noise (a precision is refused: with one it is ``crossnobis``).
                      rsatoolbox's ``'euclidean'`` is *not* cross-validated; its
                      ``'crossnobis'`` with ``noise=None`` is this measure.
    ``crossnobis``    cross-validated Mahalanobis distance ``d_r P d_s^T / c`` with the noise
                      precision ``P`` (identity when None); equals rsatoolbox
                      ``calc_rdm(ds_t, 'crossnobis', descriptor='conds', cv_descriptor='fold',
                      noise=P)``.

Cross-validation schemes (``CV_SCHEMES``) of the two cross-validated measures: folds ``k = 1..K``
(``folds``, e.g. :func:`bids_dnn.temporal.trial_folds`), ``mu_a^k`` the mean of condition ``a``'s
trials in fold ``k``, ``d^k = mu_a^k - mu_b^k``; every distance is ``sum_k A_k P_k B_k^T / (K c)``
with ``B_k = d^k`` the held-out fold's difference and ``A_k`` a training difference:
    ``fold_pairs`` (default)  ``A_k`` = the mean of the other folds' ``d^r``: the distance is the
                      mean over ordered pairs of distinct folds, ``sum_{r != s} d^r P d^s^T /
                      (K (K - 1) c)`` (= :func:`bids_dnn.rsa.calc_crossnobis_rdms` of the fold
                      means, with one Gram matrix per fold instead of ``K + 1``).
    ``leave_one_fold_out``    ``A_k`` = the difference of the means of the other folds' *trials*
                      (pooled): rsatoolbox's leave-one-fold-out crossnobis.
    When every condition has the same number of trials in every fold (e.g. 30 trials per
    condition in 5 folds by ``trial_folds``) the two are equal; with unequal counts they differ
    (both unbiased) and ``leave_one_fold_out`` is the one that equals rsatoolbox. Like rsatoolbox,
    both divide by the number of channels. ``P_k = P`` unless per-fold precisions are given.

Noise precision (:func:`residual_noise_precision`; Guggenmos et al. 2018, NeuroImage 173:434)
    Residuals are the trials minus their condition's mean; at every time point their channel
    covariance is estimated with an estimator of :data:`bids_dnn.rsa.COVARIANCE_ESTIMATORS`
    (degrees of freedom ``dof = n_trials - n_cond``), the covariances are averaged over time
    ("epoch" method) and the mean inverted. Residuals are pooled over conditions (Guggenmos'
    code averages per-condition covariances instead). Leakage: a precision from *all* trials
    depends on the within-condition scatter, which contains the fold means' deviations, so
    cross-validated distances with it are biased upwards by about
    ``2 (c + 1) / (n (dof_eff - c - 1))`` noise variances (``n`` trials per condition,
    ``dof <= dof_eff <= n_times * dof`` for the time-averaged covariance; less with shrinkage).
    Simulated with 8 channels, 4 conditions x 10 trials, 3 time points: +0.01 (shrinkage) to
    +0.02 (sample covariance); negligible for usual epoch counts, and the same for every pair
    when the conditions have equal trial counts.
    Per-fold precisions from the training trials (:func:`fold_noise_precisions`,
    ``noise_per_fold=True``) are independent of the held-out fold: the distances are then exactly
    unbiased.

Memory: time is processed in batches of ``time_batch`` points (by default as many as fit in
:data:`TIME_BATCH_BYTES`): besides the epochs and the (n_times, n_pairs) result, at most one
batch of fold x condition means, precisions and Gram matrices is held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bids_dnn.backend import float_dtype, no_tf32, torch_dtype
from bids_dnn.errors import AnalysisError
from bids_dnn.rsa import calc_rdms, pair_indices
from bids_dnn.rsa.noise import COVARIANCE_ESTIMATORS, noise_covariance

__all__ = [
    "EpochsError",
    "TemporalRdmMeasure",
    "TEMPORAL_RDM_MEASURES",
    "CV_SCHEMES",
    "NOISE_NORMALIZATION_METHODS",
    "TIME_BATCH_BYTES",
    "condition_means",
    "residual_noise_precision",
    "fold_noise_precisions",
    "time_resolved_rdms",
]

#: memory (bytes) one batch of time points may take when ``time_batch`` is None
TIME_BATCH_BYTES = 256 * 2**20


class EpochsError(AnalysisError, ValueError):
    """Epochs, labels, folds or noise precisions from which no time-resolved RDM can be computed."""


# --------------------------------------------------------------------------- validation
def _epochs(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 3:
        raise EpochsError(f"epochs must be (n_trials, n_channels, n_times), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float64)
    if min(data.shape) < 1:
        raise EpochsError(f"epochs are empty (shape {data.shape})")
    return data


def _codes(values: np.ndarray, n_trials: int, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n_trials,):
        raise EpochsError(f"{name} must have one entry per trial ({n_trials}), got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise EpochsError(f"{name} must be integers, got dtype {values.dtype}",
                          "code conditions as 0 .. n_cond - 1 (np.unique(..., return_inverse=True))")
    return values.astype(np.int64, copy=False)


def _labels(labels: np.ndarray, n_trials: int, n_conditions: int | None = None,
            require_all: bool = True) -> tuple[np.ndarray, int]:
    """Condition codes (n_trials,) int64 and the number of conditions."""
    codes = _codes(labels, n_trials, "labels")
    if codes.min() < 0:
        raise EpochsError(f"labels must be condition codes 0 .. n_cond - 1, found {codes.min()}")
    n_cond = int(codes.max()) + 1 if n_conditions is None else int(n_conditions)
    if codes.max() >= n_cond:
        raise EpochsError(f"label {codes.max()} is not below n_conditions={n_cond}")
    if require_all:
        missing = np.flatnonzero(np.bincount(codes, minlength=n_cond) == 0)
        if missing.size:
            raise EpochsError(f"{missing.size} condition(s) have no trial, e.g. condition {missing[0]}",
                              "code the conditions present as 0 .. n_cond - 1")
    return codes, n_cond


def _time_batch(n_times: int, bytes_per_time: int, time_batch: int | None) -> int:
    if time_batch is not None:
        if int(time_batch) < 1:
            raise EpochsError(f"time_batch must be at least 1, got {time_batch}")
        return min(int(time_batch), n_times)
    return int(min(n_times, max(1, TIME_BATCH_BYTES // max(bytes_per_time, 1))))


def _batches(n_times: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n_times, step):
        yield start, min(start + step, n_times)


# --------------------------------------------------------------------------- group sums
@dataclass(frozen=True)
class _Groups:
    """Trials grouped (e.g. by fold x condition) for group sums.

    Attributes
    ----------
    members : list of (n_k,) int arrays, the trials of each group (possibly empty).
    counts : (n_groups,) int, trials per group.
    """

    members: list[np.ndarray]
    counts: np.ndarray

    @classmethod
    def of(cls, groups: np.ndarray, n_groups: int, used: np.ndarray | None = None) -> "_Groups":
        trials = np.arange(groups.size) if used is None else np.flatnonzero(used)
        trials = trials[np.argsort(groups[trials], kind="stable")]
        counts = np.bincount(groups[trials], minlength=n_groups)
        return cls(np.split(trials, np.cumsum(counts)[:-1]), counts)

    def sums(self, data: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Sum of each group's trials at time points ``start:stop``, time first:
        (stop - start, n_groups, c) float64. One small gather per group: faster than one large
        gather, and far less memory."""
        block = data[:, :, start:stop]
        out = np.empty((stop - start, len(self.members), block.shape[1]))
        for group, trials in enumerate(self.members):
            out[:, group, :] = np.sum(block[trials], axis=0, dtype=np.float64).T
        if not np.isfinite(out).all():
            raise EpochsError("epochs contain NaN or infinite values",
                              "drop or interpolate the bad trials / channels first")
        return out


def condition_means(data: np.ndarray, labels: np.ndarray, n_conditions: int | None = None, *,
                    time_batch: int | None = None) -> np.ndarray:
    """Trial-averaged pattern of every condition.

    Parameters
    ----------
    data : np.ndarray, (n_trials, n_channels, n_times)
        Epochs, finite.
    labels : np.ndarray of int, (n_trials,)
        Condition code of each trial, ``0 .. n_conditions - 1``.
    n_conditions : int, optional
        Number of conditions (default ``labels.max() + 1``); every condition needs a trial.
    time_batch : int, optional
        Time points summed at once (default: as many as fit in :data:`TIME_BATCH_BYTES`).

    Returns
    -------
    np.ndarray, (n_conditions, n_channels, n_times), float64

    Raises
    ------
    EpochsError
        Bad shapes, non-integer or out-of-range labels, a condition without trials, non-finite data.
    """
    data = _epochs(data)
    n_trials, n_ch, n_times = data.shape
    codes, n_cond = _labels(labels, n_trials, n_conditions)
    groups = _Groups.of(codes, n_cond)
    out = np.empty((n_cond, n_ch, n_times))
    step = _time_batch(n_times, 2 * 8 * n_cond * n_ch, time_batch)
    for start, stop in _batches(n_times, step):
        out[:, :, start:stop] = (groups.sums(data, start, stop) / groups.counts[:, None]).transpose(1, 2, 0)
    return out


# --------------------------------------------------------------------------- noise precision
def _residual_blocks(data: np.ndarray, codes: np.ndarray, n_cond: int, used: np.ndarray,
                     time_batch: int | None) -> Iterator[np.ndarray]:
    """Residuals (trials minus their condition mean) of the used trials, (tb, n_used, c) float64
    per batch of time points."""
    groups = _Groups.of(codes, n_cond, used)
    trials = np.concatenate(groups.members)
    member = np.repeat(np.arange(n_cond), groups.counts)  # condition of each trial in ``trials``
    counts = np.maximum(groups.counts, 1)[:, None]
    n_ch, n_times = data.shape[1], data.shape[2]
    step = _time_batch(n_times, 3 * trials.size * n_ch * 8, time_batch)
    for start, stop in _batches(n_times, step):
        means = groups.sums(data, start, stop) / counts  # (tb, n_cond, c)
        residuals = np.ascontiguousarray(data[trials, :, start:stop].transpose(2, 0, 1), dtype=np.float64)
        residuals -= means[:, member, :]
        yield residuals


def _multivariate_covariances(residuals: np.ndarray, dof: float, estimator: str) -> np.ndarray:
    """(tb, c, c) shrinkage covariances of residuals (tb, n, c), one per time point."""
    return np.stack([noise_covariance(res, estimator, dof) for res in residuals])


def _univariate_variances(residuals: np.ndarray, dof: float, estimator: str) -> np.ndarray:
    """(tb, c) residual variances (the ``diag`` estimator, vectorised over time points)."""
    centred = residuals - residuals.mean(axis=1, keepdims=True)
    variances = np.einsum("tnc,tnc->tc", centred, centred) / dof
    if not np.all(variances > 0):
        raise EpochsError("some channels have no residual variance at some time points",
                          "drop flat channels before the noise normalisation")
    return variances


@dataclass(frozen=True)
class _NoiseMethod:
    """How one noise normalisation turns residuals into covariances (None: no normalisation)."""

    covariances: Callable[[np.ndarray, float, str], np.ndarray] | None
    diagonal: bool


#: noise normalisations (the spec's ``meeg.noise_normalization``): ``multivariate``: full
#: shrinkage covariance; ``univariate``: each channel's residual variance; ``none``
NOISE_NORMALIZATION_METHODS: dict[str, _NoiseMethod] = {
    "multivariate": _NoiseMethod(_multivariate_covariances, diagonal=False),
    "univariate": _NoiseMethod(_univariate_variances, diagonal=True),
    "none": _NoiseMethod(None, diagonal=True),
}


def residual_noise_precision(data: np.ndarray, labels: np.ndarray, *, method: str = "multivariate",
                             per_time: bool = False, estimator: str = "shrinkage_diag",
                             trials: np.ndarray | None = None,
                             time_batch: int | None = None) -> np.ndarray | None:
    """Noise precision over channels from the trials' residuals (Guggenmos et al. 2018).

    Parameters
    ----------
    data : np.ndarray, (n_trials, n_channels, n_times)
        Epochs, finite.
    labels : np.ndarray of int, (n_trials,)
        Condition codes ``0 .. n_cond - 1``.
    method : str
        A key of :data:`NOISE_NORMALIZATION_METHODS`: ``multivariate`` (full precision),
        ``univariate`` (inverse variances) or ``none``.
    per_time : bool
        One precision per time point instead of the inverse of the time-averaged covariance
        (Guggenmos' "epoch" method, the default).
    estimator : str
        Covariance estimator of ``multivariate``, a key of
        :data:`bids_dnn.rsa.COVARIANCE_ESTIMATORS` (= rsatoolbox ``cov_from_residuals``).
        Default ``shrinkage_diag`` (Schaefer & Strimmer 2005: correlations shrunk towards 0),
        scale-invariant like Guggenmos' Ledoit-Wolf shrinkage of standardised channels, so EEG,
        magnetometer and gradiometer channels of different units can be mixed;
        ``shrinkage_eye`` is Ledoit & Wolf (2004) towards a multiple of the identity.
    trials : np.ndarray of bool, (n_trials,), optional
        Use only these trials (e.g. the training folds of a cross-validation, see
        :func:`fold_noise_precisions`); default all.
    time_batch : int, optional
        Time points gathered at once (default: as many as fit in :data:`TIME_BATCH_BYTES`).

    Returns
    -------
    np.ndarray or None
        ``multivariate``: (n_channels, n_channels), or (n_times, n_channels, n_channels) if
        ``per_time``; ``univariate``: (n_channels,) or (n_times, n_channels); ``none``: None.
        Residual degrees of freedom: the trials used minus the conditions among them.

    Raises
    ------
    EpochsError
        Bad shapes or labels, unknown method or estimator, fewer trials than conditions + 1.
    NoiseEstimateError
        A channel without residual variance (``shrinkage_diag``).
    """
    if method not in NOISE_NORMALIZATION_METHODS:
        raise EpochsError(f"unknown noise normalisation {method!r}; choose one of "
                          f"{', '.join(NOISE_NORMALIZATION_METHODS)}")
    if estimator not in COVARIANCE_ESTIMATORS:
        raise EpochsError(f"unknown covariance estimator {estimator!r}; choose one of "
                          f"{', '.join(COVARIANCE_ESTIMATORS)}")
    noise = NOISE_NORMALIZATION_METHODS[method]
    data = _epochs(data)
    n_trials, _, n_times = data.shape
    codes, n_cond = _labels(labels, n_trials, require_all=False)
    used = np.ones(n_trials, dtype=bool) if trials is None else np.asarray(trials)
    if used.shape != (n_trials,) or used.dtype != bool:
        raise EpochsError(f"trials must be a boolean mask of the {n_trials} trials, got "
                          f"{used.dtype} {used.shape}")
    if noise.covariances is None:
        return None
    dof = int(used.sum()) - int(np.count_nonzero(np.bincount(codes[used], minlength=n_cond)))
    if dof < 2:
        raise EpochsError(f"{int(used.sum())} trials of {n_cond} conditions leave {dof} residual degrees "
                          "of freedom; the noise covariance needs at least 2", "use more trials or no noise "
                          "normalisation")
    per_point = []
    total = None
    for residuals in _residual_blocks(data, codes, n_cond, used, time_batch):
        covariances = noise.covariances(residuals, dof, estimator)
        if per_time:
            per_point.append(covariances)
        else:
            summed = covariances.sum(axis=0)
            total = summed if total is None else total + summed
    if per_time:
        covariances = np.concatenate(per_point)
        return 1.0 / covariances if noise.diagonal else np.linalg.inv(covariances)
    mean = total / n_times
    return 1.0 / mean if noise.diagonal else np.linalg.inv(mean)


def fold_noise_precisions(data: np.ndarray, labels: np.ndarray, folds: np.ndarray, *,
                          method: str = "multivariate", per_time: bool = False,
                          estimator: str = "shrinkage_diag",
                          time_batch: int | None = None) -> np.ndarray | None:
    """The noise precision of each fold's training trials (all trials of the other folds).

    For ``time_resolved_rdms(..., noise_per_fold=True)``: the distance of held-out fold ``k``
    then uses a precision independent of its trials, and is exactly unbiased.

    Parameters
    ----------
    data, labels, method, per_time, estimator, time_batch
        As :func:`residual_noise_precision`.
    folds : np.ndarray of int, (n_trials,)
        Fold of each trial; folds are taken in the order of ``np.unique(folds)``.

    Returns
    -------
    np.ndarray or None
        (n_folds, ...) stacking :func:`residual_noise_precision` of ``folds != fold`` for every
        fold; None for ``method="none"``.
    """
    data = _epochs(data)
    fold_codes = np.unique(_codes(folds, data.shape[0], "folds"), return_inverse=True)[1]
    precisions = [residual_noise_precision(data, labels, method=method, per_time=per_time,
                                           estimator=estimator, trials=fold_codes != k,
                                           time_batch=time_batch)
                  for k in range(int(fold_codes.max()) + 1)]
    return None if precisions[0] is None else np.stack(precisions)


# --------------------------------------------------------------------------- RDMs
@dataclass(frozen=True)
class _Precision:
    """A noise precision laid out as (n_times | 1, n_folds | 1, c) (diagonal) or
    (n_times | 1, n_folds | 1, c, c) (full); ``values`` None: identity."""

    values: np.ndarray | None
    diagonal: bool

    @classmethod
    def parse(cls, noise_precision: np.ndarray | None, n_ch: int, n_times: int, n_folds: int,
              per_time: bool, per_fold: bool) -> "_Precision":
        if noise_precision is None:
            return cls(None, True)
        prec = np.asarray(noise_precision, dtype=np.float64)
        lead = ((n_folds,) if per_fold else ()) + ((n_times,) if per_time else ())
        if prec.shape not in (lead + (n_ch,), lead + (n_ch, n_ch)):
            axes = ("n_folds, " if per_fold else "") + ("n_times, " if per_time else "")
            raise EpochsError(f"noise_precision has shape {prec.shape}; expected ({axes}{n_ch}) or "
                              f"({axes}{n_ch}, {n_ch}) for {n_ch} channels",
                              "set noise_per_time / noise_per_fold to match how it was computed")
        if not np.isfinite(prec).all():
            raise EpochsError("noise_precision contains NaN or infinite values")
        diagonal = prec.shape == lead + (n_ch,)
        if diagonal and np.any(prec <= 0):
            raise EpochsError("a diagonal noise_precision must be positive (inverse variances)")
        tail = prec.shape[len(lead):]
        values = prec.reshape((n_folds if per_fold else 1, n_times if per_time else 1) + tail)
        return cls(values.swapaxes(0, 1), diagonal)

    def batch(self, start: int, stop: int) -> np.ndarray | None:
        """The precision of time points ``start:stop``: (tb | 1, n_folds | 1, c[, c])."""
        if self.values is None or self.values.shape[0] == 1:
            return self.values
        return self.values[start:stop]


def _sqrt_precision(prec: np.ndarray) -> np.ndarray:
    """Symmetric square root ``P^(1/2)`` of precisions (..., c, c) (= ``Sigma^(-1/2)``)."""
    values, vectors = np.linalg.eigh((prec + np.swapaxes(prec, -1, -2)) / 2.0)
    if np.any(values < -1e-10 * np.abs(values).max(axis=-1, keepdims=True)):
        raise EpochsError("noise_precision is not positive semi-definite")
    return (vectors * np.sqrt(np.clip(values, 0.0, None))[..., None, :]) @ np.swapaxes(vectors, -1, -2)


def _mean_of_other_folds(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``fold_pairs``: held-out fold means and the sum of the other folds' means (times
    ``1 / (n_folds - 1)``: their mean)."""
    means = sums * (1.0 / counts)
    return means, means.sum(dim=1, keepdim=True) - means, 1.0 / (means.shape[1] - 1)


def _pooled_other_folds(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``leave_one_fold_out``: held-out fold means and the mean of the other folds' trials."""
    training = sums.sum(dim=1, keepdim=True) - sums
    return sums * (1.0 / counts), training.mul_(1.0 / (counts.sum(dim=0) - counts)), 1.0


#: cross-validation scheme -> ``split(sums, counts) -> (held_out, training, scale)``: from the
#: fold x condition sums (tb, n_folds, n_cond, c) and counts (n_folds, n_cond, 1), the held-out
#: folds' condition means and the training means they are compared with, the latter divided by
#: ``scale`` (module docstring)
CV_SCHEMES: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, float]]] = {
    "fold_pairs": _mean_of_other_folds,
    "leave_one_fold_out": _pooled_other_folds,
}


@dataclass(frozen=True)
class _Job:
    """What the batch kernels share: the epochs, the trial groups (fold x condition, or condition),
    the precision, the cross-validation split and the numeric options."""

    data: np.ndarray
    groups: _Groups
    n_cond: int
    n_folds: int
    precision: _Precision
    split: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, float]]
    dtype: np.dtype
    device: str | torch.device


def _pair_distances(gram: torch.Tensor) -> torch.Tensor:
    """``g_ii + g_jj - g_ij - g_ji`` of every pair: gram (tb, n, n) -> (tb, n_pairs)."""
    rows, cols = (torch.as_tensor(i, device=gram.device) for i in pair_indices(gram.shape[-1]))
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    full = diag[:, :, None] + diag[:, None, :] - gram - gram.transpose(1, 2)
    return full[:, rows, cols]


def _correlation_batch(job: _Job, start: int, stop: int) -> np.ndarray:
    """``1 - r`` of the condition means (whitened by ``P^(1/2)`` when a precision is given)."""
    x = job.groups.sums(job.data, start, stop) / job.groups.counts[:, None]  # (tb, n_cond, c)
    prec = job.precision.batch(start, stop)
    if prec is not None:
        prec = prec[:, 0]  # (tb | 1, c[, c])
        x = x * np.sqrt(prec)[:, None, :] if job.precision.diagonal else x @ _sqrt_precision(prec)
    return calc_rdms(x, "correlation", dtype=job.dtype, device=job.device)


def _cross_validated_batch(job: _Job, start: int, stop: int) -> np.ndarray:
    """``sum_k A_k P_k B_k^T / (n_folds c)``, ``B_k`` the held-out fold's condition means and
    ``A_k`` the training means of the scheme; one accumulated batched product per fold.

    For ``fold_pairs`` this equals :func:`bids_dnn.rsa.calc_crossnobis_rdms` of the fold means
    (``sum_{r != s} d_r P d_s^T = sum_k (sum_{r != k} d_r) P d_k^T``) with one Gram matrix per
    fold instead of ``n_folds + 1``; it also takes per-fold precisions.
    """
    n_folds, n_cond, tb = job.n_folds, job.n_cond, stop - start
    tdt = torch_dtype(job.dtype)
    with torch.no_grad(), no_tf32():
        sums = torch.from_numpy(job.groups.sums(job.data, start, stop)).to(job.device)
        counts = torch.as_tensor(job.groups.counts.reshape(n_folds, n_cond, 1), device=sums.device)
        held_out, training, scale = job.split(sums.view(tb, n_folds, n_cond, -1), counts.to(sums.dtype))
        held_out, training = held_out.to(tdt), training.to(tdt)
        prec = job.precision.batch(start, stop)  # (tb | 1, n_folds | 1, c[, c])
        if prec is not None:
            prec = torch.as_tensor(prec, device=sums.device).to(tdt)
            if job.precision.diagonal:
                training = training * prec[:, :, None, :]
            elif prec.shape[:2] == (1, 1):
                training = (training.reshape(-1, prec.shape[-1]) @ prec[0, 0]).view_as(training)
            else:
                training = training @ prec
        gram = training[:, 0] @ held_out[:, 0].transpose(1, 2)
        for fold in range(1, n_folds):
            gram.baddbmm_(training[:, fold], held_out[:, fold].transpose(1, 2))
        out = _pair_distances(gram) * (scale / (n_folds * job.data.shape[1]))
        return out.cpu().numpy().astype(job.dtype, copy=False)


@dataclass(frozen=True)
class TemporalRdmMeasure:
    """A time-resolved RDM measure of the registry.

    Attributes
    ----------
    cross_validated : bool
        Needs folds of trials; computed by the chosen scheme of :data:`CV_SCHEMES`.
    accepts_noise : bool
        Takes a noise precision (the distance's metric, or the patterns' whitening).
    batch : callable
        ``batch(job, start, stop) -> (tb, n_pairs)``: the RDMs of time points ``start:stop``.
    """

    cross_validated: bool
    accepts_noise: bool
    batch: Callable[[_Job, int, int], np.ndarray]


#: name -> measure (the spec's ``meeg.rdm`` apart from ``decoding``); see the module docstring
TEMPORAL_RDM_MEASURES: dict[str, TemporalRdmMeasure] = {
    "correlation": TemporalRdmMeasure(cross_validated=False, accepts_noise=True, batch=_correlation_batch),
    "euclidean_cv": TemporalRdmMeasure(cross_validated=True, accepts_noise=False, batch=_cross_validated_batch),
    "crossnobis": TemporalRdmMeasure(cross_validated=True, accepts_noise=True, batch=_cross_validated_batch),
}


def _fold_groups(codes: np.ndarray, n_cond: int, folds: np.ndarray | None,
                 n_trials: int) -> tuple[_Groups, int]:
    """Trials grouped by fold x condition; every condition must occur in every fold."""
    if folds is None:
        raise EpochsError("cross-validated distances need folds of trials",
                          "pass folds=bids_dnn.temporal.trial_folds(labels, n_folds, seed)")
    fold_ids, fold_codes = np.unique(_codes(folds, n_trials, "folds"), return_inverse=True)
    n_folds = fold_ids.size
    if n_folds < 2:
        raise EpochsError(f"cross-validated distances need at least 2 folds, got {n_folds}")
    groups = _Groups.of(fold_codes * n_cond + codes, n_folds * n_cond)
    empty = np.flatnonzero(groups.counts == 0)
    if empty.size:
        fold, cond = divmod(int(empty[0]), n_cond)
        raise EpochsError(f"every condition must occur in every fold, but condition {cond} has no trial "
                          f"in fold {fold_ids[fold].item()!r}; {empty.size} fold x condition cell(s) are empty",
                          "use fewer folds, or folds stratified by condition: bids_dnn.temporal.trial_folds")
    return groups, n_folds


def time_resolved_rdms(data: np.ndarray, labels: np.ndarray, *, measure: str = "crossnobis",
                       folds: np.ndarray | None = None, noise_precision: np.ndarray | None = None,
                       device: str | torch.device = "cpu", dtype: np.dtype | type = np.float64,
                       time_batch: int | None = None, cv_scheme: str = "fold_pairs",
                       noise_per_time: bool = False, noise_per_fold: bool = False) -> np.ndarray:
    """One RDM per time point of M/EEG epochs.

    Parameters
    ----------
    data : np.ndarray, (n_trials, n_channels, n_times)
        Epochs, finite (float32 or float64; group means are summed in float64).
    labels : np.ndarray of int, (n_trials,)
        Condition codes ``0 .. n_cond - 1``; every condition needs a trial (n_cond >= 2).
    measure : str
        A key of :data:`TEMPORAL_RDM_MEASURES`: ``correlation``, ``euclidean_cv``, ``crossnobis``.
    folds : np.ndarray of int, (n_trials,), optional
        Fold of each trial (:func:`bids_dnn.temporal.trial_folds`); required by the
        cross-validated measures, in which every condition must occur in every fold; not used by
        ``correlation``.
    noise_precision : np.ndarray, optional
        From :func:`residual_noise_precision` (or :func:`fold_noise_precisions`): full
        (..., c, c) or diagonal (..., c), with a leading (n_times,) axis if ``noise_per_time``
        and before it an (n_folds,) axis if ``noise_per_fold``. ``crossnobis``: the metric
        (identity when None); ``correlation``: the patterns are whitened by ``P^(1/2)``;
        ``euclidean_cv``: refused.
    device : str or torch.device
        Where the Gram matrices are computed (``cpu``, ``cuda``); results are numpy arrays.
    dtype : float64 (default, exact to rounding) or float32
        Type of the distance computations and of the result.
    time_batch : int, optional
        Time points per batch (default: as many as fit in :data:`TIME_BATCH_BYTES`). Results do
        not depend on it beyond rounding.
    cv_scheme : str
        A key of :data:`CV_SCHEMES`: ``fold_pairs`` (default) or ``leave_one_fold_out``
        (rsatoolbox's); equal when every condition has the same trial count in every fold.
    noise_per_time, noise_per_fold : bool
        Whether ``noise_precision`` has a time axis / a leading fold axis (folds in
        ``np.unique(folds)`` order; cross-validated measures only).

    Returns
    -------
    np.ndarray, (n_times, n_pairs), ``dtype``
        Pairs in :func:`bids_dnn.rsa.pair_indices` order. Cross-validated distances are
        unbiased estimates and can be negative.

    Raises
    ------
    EpochsError
        Unknown measure or scheme, bad shapes or labels, missing folds, a condition absent from
        a fold, a precision of the wrong shape or for ``euclidean_cv``, non-finite values.
    """
    if measure not in TEMPORAL_RDM_MEASURES:
        raise EpochsError(f"unknown time-resolved RDM measure {measure!r}; choose one of "
                          f"{', '.join(TEMPORAL_RDM_MEASURES)}")
    if cv_scheme not in CV_SCHEMES:
        raise EpochsError(f"unknown cross-validation scheme {cv_scheme!r}; choose one of {', '.join(CV_SCHEMES)}")
    spec = TEMPORAL_RDM_MEASURES[measure]
    if noise_precision is not None and not spec.accepts_noise:
        raise EpochsError(f"{measure} takes no noise precision",
                          "use crossnobis for noise-normalised cross-validated distances")
    if noise_per_fold and not spec.cross_validated:
        raise EpochsError(f"{measure} is not cross-validated: it takes no per-fold noise precisions")
    data = _epochs(data)
    n_trials, n_ch, n_times = data.shape
    codes, n_cond = _labels(labels, n_trials)
    pair_indices(n_cond)
    if spec.cross_validated:
        groups, n_folds = _fold_groups(codes, n_cond, folds, n_trials)
    else:
        groups, n_folds = _Groups.of(codes, n_cond), 1
    precision = _Precision.parse(noise_precision, n_ch, n_times, n_folds, noise_per_time, noise_per_fold)
    job = _Job(data, groups, n_cond, n_folds, precision, CV_SCHEMES[cv_scheme], float_dtype(dtype), device)
    # per time point: ~6 copies of the fold x condition means (sums, held-out, training, scaled,
    # device copies), ~4 Gram-sized arrays, the precision's batch (twice: numpy and torch)
    bytes_per_time = 8 * (6 * n_folds * n_cond * n_ch + 4 * n_cond * n_cond)
    if precision.values is not None and precision.values.shape[0] > 1:
        bytes_per_time += 8 * 2 * precision.values[0].size
    out = np.empty((n_times, n_cond * (n_cond - 1) // 2), dtype=job.dtype)
    for start, stop in _batches(n_times, _time_batch(n_times, bytes_per_time, time_batch)):
        out[start:stop] = spec.batch(job, start, stop)
    return out
