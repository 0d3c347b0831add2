"""Pairwise shrinkage-LDA decoding of M/EEG epochs: time-resolved decoding-accuracy RDMs.

For every pair of conditions ``(a, b)`` (``a < b``, :func:`bids_dnn.rsa.pair_indices` order)
and every time point, a binary linear discriminant is trained on the trials of ``a`` and ``b``
outside one fold and tested on those inside it, for every fold (Cichy et al., 2014; the EEG
RDMs of Net2Brain). The features are the channels at that time point. Chance is 0.5.

Conventions
-----------
Classifier
    Exactly scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=...)``:

    * class means ``m_a``, ``m_b`` and priors ``p_a = n_a / (n_a + n_b)`` from the training
      trials (``n_a``, ``n_b`` of them);
    * covariance ``S = p_a S_a + p_b S_b``, where each class's ``S_k`` is shrunk on its own:
      ``"auto"`` standardises the class's trials (population standard deviation; near-constant
      channels keep scale 1, sklearn's rule), takes the Ledoit-Wolf shrinkage ``s`` of the
      standardised trials and rescales: ``S_k = (1 - s) C_k + s mu diag(sd^2)`` with ``C_k``
      the empirical (``1/n``) covariance and ``mu`` the mean diagonal of the standardised
      covariance; a float ``s`` gives ``S_k = (1 - s) C_k + s tr(C_k) / c I``;
    * ``w = S^-1 (m_b - m_a)`` (Cholesky; a singular or numerically singular ``S``, e.g. no
      shrinkage with fewer training trials than channels, falls back to the minimum-norm
      least-squares solution, ``scipy.linalg.lstsq``'s as in sklearn, singular values below
      ``eps * max`` cut);
    * decision ``f(x) = w . x - (m_a + m_b) . w / 2 + log(p_b / p_a)``; a trial is predicted
      ``b`` when ``f(x) > 0`` and ``a`` otherwise (sklearn's ``predict``).
Accuracy
    Pooled over folds: correctly predicted test trials of ``a`` and ``b`` over all folds divided
    by the number of trials of ``a`` and ``b`` (every trial is tested exactly once). This equals
    ``accuracy_score`` on sklearn's cross-validated predictions of the same folds; it is not the
    mean of the fold accuracies (they differ when folds have different sizes).
Exactness
    In float64 the decision values equal sklearn's to rounding (~1e-12 relative), so the
    predictions, and the accuracies, are identical except for test trials whose decision value
    lies within rounding of 0. float32 is faster on GPUs but can flip more such trials.
Cost
    One ``c x c`` Cholesky factorisation per pair, fold and time point; the class statistics
    (means, shrunk covariances) are computed once per condition, fold and time point and
    combined per pair. Work is cut into batches of ``time_batch`` time points x ``pair_batch``
    pairs, their defaults sized from a memory budget per device type. The result does not depend
    on the batch sizes (beyond rounding) and is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bids_dnn.backend import no_tf32, torch_dtype
from bids_dnn.rsa.rdm import pair_indices

__all__ = ["LDA_SHRINKAGE_RULES", "pairwise_decoding_rdms"]

#: memory (bytes) the default batch sizes aim at, per torch device type
BATCH_MEMORY_BUDGET: dict[str, int] = {"cpu": 48 << 20, "cuda": 2 << 30}

#: Cholesky pivots (as a fraction of the channel's variance) below which a covariance counts as
#: singular and is solved by least squares instead (for a singular covariance the Cholesky
#: factorisation can succeed on rounding noise; least squares is sklearn's own solver)
_RANK_TOLERANCE: dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 1e-4}

#: float64 machine epsilon: sklearn detects near-constant channels with float64 accumulators
_EPS64 = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- folds
@dataclass(frozen=True)
class _Splits:
    """Training and test trials of every condition in every fold, padded.

    Index arrays point into the trials; padding points at index ``n_trials`` (a zero trial
    appended to the data) and is masked by the counts.
    """

    train_index: np.ndarray  # (n_cond, n_folds, max_train)
    train_count: np.ndarray  # (n_cond, n_folds)
    test_index: np.ndarray  # (n_cond, n_folds, max_test)
    test_count: np.ndarray  # (n_cond, n_folds)
    trial_count: np.ndarray  # (n_cond,)


def _padded(groups: list[list[np.ndarray]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([[g.size for g in row] for row in groups], dtype=np.int64)
    index = np.full(counts.shape + (max(int(counts.max()), 1),), pad, dtype=np.int64)
    for c, row in enumerate(groups):
        for f, g in enumerate(row):
            index[c, f, :g.size] = g
    return index, counts


def _make_splits(labels: np.ndarray, folds: np.ndarray, n_trials: int) -> _Splits:
    """Validate labels and folds; the training / test trials of each condition and fold."""
    labels = np.asarray(labels)
    folds = np.asarray(folds)
    if labels.shape != (n_trials,) or folds.shape != (n_trials,):
        raise ValueError(f"labels and folds must be 1-D with one entry per trial ({n_trials}), got "
                         f"{labels.shape} and {folds.shape}")
    for name, values in (("labels", labels), ("folds", folds)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got dtype {values.dtype}")
    if labels.size == 0 or labels.min() < 0:
        raise ValueError("labels must be condition codes 0 .. n_cond - 1")
    n_cond = int(labels.max()) + 1
    pair_indices(n_cond)
    trial_count = np.bincount(labels, minlength=n_cond)
    if np.any(trial_count == 0):
        missing = np.flatnonzero(trial_count == 0)
        raise ValueError(f"{missing.size} condition code(s) have no trials (e.g. {missing[0]}); labels must "
                         "be condition codes 0 .. n_cond - 1")
    fold_ids, fold_codes = np.unique(folds, return_inverse=True)
    if fold_ids.size < 2:
        raise ValueError(f"need at least 2 folds, got {fold_ids.size}")
    train, test = [], []
    for c in range(n_cond):
        trials = np.flatnonzero(labels == c)
        train.append([trials[fold_codes[trials] != f] for f in range(fold_ids.size)])
        test.append([trials[fold_codes[trials] == f] for f in range(fold_ids.size)])
    train_index, train_count = _padded(train, n_trials)
    test_index, test_count = _padded(test, n_trials)
    for count, split, need in ((train_count, "training", 2), (test_count, "test", 1)):
        bad = np.argwhere(count < need)
        if bad.size:
            c, f = bad[0]
            raise ValueError(f"condition {c} has {count[c, f]} trial(s) in the {split} split of fold "
                             f"{fold_ids[f].tolist()!r} (needs {need}; {len(bad)} condition/fold split(s) like this); "
                             "make folds with bids_dnn.temporal.trial_folds or use fewer folds")
    return _Splits(train_index, train_count, test_index, test_count, trial_count)


# --------------------------------------------------------------------------- shrinkage
def _ledoit_wolf_covariance(cov: torch.Tensor, centred: torch.Tensor, means: torch.Tensor,
                            n: torch.Tensor) -> torch.Tensor:
    """sklearn's ``_cov(X, "auto")``: Ledoit-Wolf on the standardised trials, rescaled.

    Parameters
    ----------
    cov : (..., c, c)
        Empirical covariance (``1/n``) of each set of trials.
    centred : (..., max_n, c)
        The centred trials, padding rows zero.
    means : (..., c)
        The trials' means (for the near-constant test).
    n : (...)
        Number of trials.
    """
    n_channels = cov.shape[-1]
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    nn = n[..., None]
    constant = var <= nn * _EPS64 * var + (nn * means * _EPS64) ** 2
    scale = torch.where(constant, torch.ones_like(var), torch.sqrt(var))
    if n_channels == 1:  # sklearn: one feature, no shrinkage
        return cov
    corr = cov / (scale[..., :, None] * scale[..., None, :])
    trace = torch.diagonal(corr, dim1=-2, dim2=-1).sum(-1)
    mu = trace / n_channels
    delta_ = (corr * corr).sum((-2, -1))
    row_norms = ((centred / scale[..., None, :]) ** 2).sum(-1)  # (..., max_n)
    beta_ = (row_norms * row_norms).sum(-1)
    beta = (beta_ / n - delta_) / (n_channels * n)
    delta = (delta_ - 2.0 * mu * trace + n_channels * mu * mu) / n_channels
    beta = torch.minimum(beta, delta)
    shrink = torch.where(beta == 0, torch.zeros_like(beta), beta / delta)
    out = cov * (1.0 - shrink)[..., None, None]
    out.diagonal(dim1=-2, dim2=-1).add_((shrink * mu)[..., None] * scale * scale)
    return out


def _fixed_shrinkage(amount: float) -> Callable[..., torch.Tensor]:
    """sklearn's ``shrunk_covariance(empirical_covariance(X), amount)``."""

    def shrunk(cov: torch.Tensor, centred: torch.Tensor, means: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        mu = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) / cov.shape[-1]
        out = cov * (1.0 - amount)
        out.diagonal(dim1=-2, dim2=-1).add_((amount * mu)[..., None])
        return out

    return shrunk


#: named shrinkage rules (a float in [0, 1] is a fixed amount)
LDA_SHRINKAGE_RULES: dict[str, Callable[..., torch.Tensor]] = {"auto": _ledoit_wolf_covariance}


def _shrinkage_rule(shrinkage: str | float) -> Callable[..., torch.Tensor]:
    if isinstance(shrinkage, str):
        if shrinkage not in LDA_SHRINKAGE_RULES:
            raise ValueError(f"unknown shrinkage {shrinkage!r}; use one of {sorted(LDA_SHRINKAGE_RULES)} or a "
                             "float in [0, 1]")
        return LDA_SHRINKAGE_RULES[shrinkage]
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be 'auto' or a float in [0, 1], got {shrinkage!r}")
    return _fixed_shrinkage(float(shrinkage))


# --------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class _ClassStatistics:
    """Per time point, condition and fold: training means and shrunk covariances, test trials."""

    means: torch.Tensor  # (tb, n_cond, n_folds, c)
    covariances: torch.Tensor  # (tb, n_cond, n_folds, c, c)
    test_trials: torch.Tensor  # (tb, n_cond, n_folds, max_test, c)


def _class_statistics(x: torch.Tensor, splits: _Splits, rule: Callable[..., torch.Tensor]) -> _ClassStatistics:
    """Class statistics of one time batch; ``x`` is (tb, n_trials + 1, c), the last trial zero."""
    device = x.device
    train_index = torch.as_tensor(splits.train_index, device=device)
    n = torch.as_tensor(splits.train_count, device=device).to(x.dtype)  # (n_cond, n_folds)
    valid = (torch.arange(splits.train_index.shape[-1], device=device)
             < torch.as_tensor(splits.train_count, device=device)[..., None])  # (n_cond, n_folds, max_train)
    trials = x[:, train_index]  # (tb, n_cond, n_folds, max_train, c); padding rows are zero
    means = trials.sum(-2) / n[..., None]
    centred = (trials - means[..., None, :]) * valid[..., None].to(x.dtype)
    cov = centred.transpose(-2, -1) @ centred / n[..., None, None]
    covariances = rule(cov, centred, means, n)
    test_trials = x[:, torch.as_tensor(splits.test_index, device=device)]
    return _ClassStatistics(means, covariances, test_trials)


def _solve_pairs(covariance: torch.Tensor, difference: torch.Tensor) -> torch.Tensor:
    """``S^-1 d`` for batches of symmetric ``S`` (..., c, c) and ``d`` (..., c).

    Cholesky; where it fails or a pivot shows a (near-)singular ``S`` (a channel's variance
    left after the previous channels below ``_RANK_TOLERANCE`` of its own), the minimum-norm
    least-squares solution with ``rcond = eps`` (LAPACK ``gelsd``, as ``scipy.linalg.lstsq``).
    """
    upper, info = torch.linalg.cholesky_ex(covariance, upper=True)
    half = torch.linalg.solve_triangular(upper.mT, difference[..., None], upper=False)
    weights = torch.linalg.solve_triangular(upper, half, upper=True)[..., 0]
    pivots = torch.diagonal(upper, dim1=-2, dim2=-1) ** 2 / torch.diagonal(covariance, dim1=-2, dim2=-1)
    failed = (info != 0) | ~(pivots.amin(-1) >= _RANK_TOLERANCE[covariance.dtype])
    if bool(failed.any()):
        eps = float(torch.finfo(covariance.dtype).eps)
        solution = torch.linalg.lstsq(covariance[failed].cpu(), difference[failed].cpu()[..., None],
                                      rcond=eps, driver="gelsd").solution[..., 0]
        weights[failed] = solution.to(weights.device)
    return weights


@dataclass(frozen=True)
class _PairDecisions:
    """Decision values of one batch: test trials of the first / second condition of each pair."""

    times: slice
    pairs: slice
    first: torch.Tensor  # (tb, pb, n_folds, max_test), padding arbitrary; pairs (a, b) for one a
    second: torch.Tensor  # (tb, pb, n_folds, max_test)
    first_valid: torch.Tensor  # (1, n_folds, max_test) bool
    second_valid: torch.Tensor  # (pb, n_folds, max_test) bool


def _batch_sizes(n_cond: int, n_folds: int, n_channels: int, max_train: int, max_test: int, n_times: int,
                 itemsize: int, device: torch.device, pair_batch: int | None,
                 time_batch: int | None) -> tuple[int, int]:
    """Default ``(pair_batch, time_batch)`` from :data:`BATCH_MEMORY_BUDGET`: half for the class
    statistics of a time batch, half for the per-pair covariances and factors."""
    budget = BATCH_MEMORY_BUDGET.get(device.type, BATCH_MEMORY_BUDGET["cpu"])
    per_time = itemsize * n_cond * n_folds * (2 * n_channels * n_channels + (2 * max_train + max_test + 1) * n_channels)
    if time_batch is None:
        time_batch = int(np.clip(budget // 2 // per_time, 1, n_times))
    per_pair = itemsize * time_batch * n_folds * (3 * n_channels * n_channels + 2 * (max_test + 2) * n_channels)
    if pair_batch is None:
        pair_batch = int(np.clip(budget // 2 // per_pair, 1, n_cond - 1))
    for name, value in (("pair_batch", pair_batch), ("time_batch", time_batch)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(pair_batch), int(time_batch)


def _iter_decisions(data: np.ndarray, labels: np.ndarray, folds: np.ndarray, shrinkage: str | float,
                    device: str | torch.device, dtype: np.dtype | type, pair_batch: int | None,
                    time_batch: int | None) -> Iterator[tuple[_Splits, _PairDecisions]]:
    """Decision values of the test trials, batch by batch (validates the inputs)."""
    data = np.asarray(data)
    if data.ndim != 3 or 0 in data.shape[1:]:
        raise ValueError(f"data must be (n_trials, n_channels, n_times) with channels and time points, got "
                         f"shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("data contains NaN or infinite values")
    rule = _shrinkage_rule(shrinkage)
    n_trials, n_channels, n_times = data.shape
    splits = _make_splits(labels, folds, n_trials)
    n_cond, n_folds = splits.train_count.shape
    tdt = torch_dtype(dtype)
    device = torch.device(device)
    pair_batch, time_batch = _batch_sizes(
        n_cond, n_folds, n_channels, splits.train_index.shape[-1], splits.test_index.shape[-1], n_times,
        torch.finfo(tdt).bits // 8, device, pair_batch, time_batch)
    n_train = torch.as_tensor(splits.train_count, device=device).to(tdt)  # (n_cond, n_folds)
    test_valid = (torch.arange(splits.test_index.shape[-1], device=device)
                  < torch.as_tensor(splits.test_count, device=device)[..., None])  # (n_cond, n_folds, max_test)
    with torch.no_grad(), no_tf32():
        for t0 in range(0, n_times, time_batch):
            times = slice(t0, min(t0 + time_batch, n_times))
            x = torch.as_tensor(np.ascontiguousarray(data[:, :, times]), device=device).to(tdt).permute(2, 0, 1)
            x = torch.cat([x, x.new_zeros((x.shape[0], 1, n_channels))], dim=1)
            stats = _class_statistics(x, splits, rule)
            del x
            # pairs (a, b) for one a and a run of b: the a-side is a broadcast view, the b-side a slice
            pair_start = 0
            for a in range(n_cond - 1):
                for b0 in range(a + 1, n_cond, pair_batch):
                    b = slice(b0, min(b0 + pair_batch, n_cond))
                    pairs = slice(pair_start + b0 - a - 1, pair_start + b.stop - a - 1)
                    yield splits, _pair_decisions(stats, n_train, test_valid, a, b, times, pairs)
                pair_start += n_cond - a - 1


def _pair_decisions(stats: _ClassStatistics, n_train: torch.Tensor, test_valid: torch.Tensor, a: int, b: slice,
                    times: slice, pairs: slice) -> _PairDecisions:
    """Train on the pairs ``(a, b)`` for ``b`` in a slice, every fold and time point of a batch; decide."""
    n_a, n_b = n_train[a:a + 1], n_train[b]  # (1, n_folds), (pb, n_folds)
    covariance = torch.lerp(stats.covariances[:, a:a + 1], stats.covariances[:, b],
                            (n_b / (n_a + n_b))[None, :, :, None, None])
    mean_a, mean_b = stats.means[:, a:a + 1], stats.means[:, b]
    weights = _solve_pairs(covariance, mean_b - mean_a)  # (tb, pb, n_folds, c)
    del covariance
    offset = -0.5 * ((mean_a + mean_b) * weights).sum(-1) + torch.log(n_b / n_a)[None]
    decide = weights[..., :, None]
    first = (stats.test_trials[:, a:a + 1] @ decide)[..., 0] + offset[..., None]
    second = (stats.test_trials[:, b] @ decide)[..., 0] + offset[..., None]
    return _PairDecisions(times, pairs, first, second, test_valid[a:a + 1], test_valid[b])


# --------------------------------------------------------------------------- public
def pairwise_decoding_rdms(data: np.ndarray, labels: np.ndarray, folds: np.ndarray, *,
                           shrinkage: str | float = "auto", device: str | torch.device = "cpu",
                           dtype: np.dtype | type = np.float64, pair_batch: int | None = None,
                           time_batch: int | None = None) -> np.ndarray:
    """Time-resolved RDMs of pairwise cross-validated shrinkage-LDA decoding accuracy.

    Parameters
    ----------
    data : np.ndarray, (n_trials, n_channels, n_times)
        Epochs.
    labels : np.ndarray of int, (n_trials,)
        Condition code of each trial, 0 .. n_cond - 1 (every code present).
    folds : np.ndarray of int, (n_trials,)
        Fold of each trial (any integers; e.g. :func:`bids_dnn.temporal.trial_folds`). Every
        condition needs at least 1 trial in every fold and 2 outside it.
    shrinkage : "auto" or float in [0, 1]
        ``"auto"``: Ledoit-Wolf on standardised trials, per class (sklearn's
        ``shrinkage="auto"``); a float: that fixed amount (module docstring).
    device : str or torch.device
        ``"cpu"`` or ``"cuda"``; the result is numpy either way.
    dtype : float64 (default; equals scikit-learn to rounding) or float32.
    pair_batch, time_batch : int, optional
        Pairs and time points per batch (a batch holds pairs ``(a, b)`` of one ``a``, so at most
        ``n_cond - 1`` pairs); by default sized from :data:`BATCH_MEMORY_BUDGET`. They change
        memory and speed, not the result.

    Returns
    -------
    np.ndarray, (n_times, n_pairs)
        Accuracy (correct test trials over all trials of the two conditions, pooled over folds;
        chance 0.5) for the pairs of :func:`bids_dnn.rsa.pair_indices`, in ``dtype``.

    Raises
    ------
    ValueError
        Wrong shapes, non-finite data, labels that are not codes 0 .. n_cond - 1, fewer than 2
        folds, a condition missing from a fold's test split or with fewer than 2 training trials
        in a fold, a bad shrinkage or batch size.
    """
    out: np.ndarray | None = None
    for splits, batch in _iter_decisions(data, labels, folds, shrinkage, device, dtype, pair_batch, time_batch):
        if out is None:
            n_times = np.asarray(data).shape[2]
            out = np.empty((n_times, math.comb(splits.trial_count.size, 2)), dtype=np.dtype(dtype))
            rows, cols = pair_indices(splits.trial_count.size)
            totals = torch.as_tensor(splits.trial_count[rows] + splits.trial_count[cols])
        correct = (((batch.first <= 0) & batch.first_valid).sum((-2, -1))
                   + ((batch.second > 0) & batch.second_valid).sum((-2, -1)))
        out[batch.times, batch.pairs] = (correct.cpu().double() / totals[batch.pairs].double()).numpy()
    assert out is not None
    return out
