"""Voxelwise encoding models: cross-validated ridge regression from features to responses.

Pure functions on arrays (numpy in, numpy out); no BIDS, no files, no printing. Warnings are
raised through :mod:`warnings` only.

Conventions
-----------
Outer folds
    :func:`make_folds` builds them (grouped by run where runs exist); every sample is in at
    most one test fold.
Training-only fitting (no leakage)
    For each outer fold every statistic is fitted on that fold's *training* samples only and
    then applied unchanged to its test samples: the feature mean and standard deviation
    (z-scoring, ``standardize=True``; a constant feature gets SD 1, as
    ``sklearn.preprocessing.StandardScaler``), the PCA projection (``pca=k``: the top ``k``
    right singular vectors of the standardised training features), the response mean (the
    intercept) and the per-target ridge penalty (inner cross-validation on the training
    samples). Inner folds reuse the outer fold's scaling / PCA (fitted on the outer training
    set, which never contains test samples) but refit the centring, i.e. the intercept, within
    each inner training fold (as ``himalaya``'s ``fit_intercept=True`` and ``sklearn``'s
    ``Ridge(fit_intercept=True)``).
Ridge and alpha choice
    ``b = argmin ||y_c - X_c b||^2 + alpha ||b||^2`` on centred training data, prediction
    ``mean_train(y) + (x - mean_train(x)) b``. Each target's alpha maximises the inner-CV
    score of ``himalaya`` (``himalaya.scoring.l2_neg_loss``: minus the mean squared error of
    each inner validation fold, averaged over the inner folds); ties go to the larger alpha
    (``himalaya``'s rule: ``1e-10 * log(alpha)`` is added to the score). Solved through the
    eigendecomposition of the centred training Gram matrix (dual / kernel form, when
    ``n_train < n_features``) or the SVD of the centred training features (primal form,
    otherwise), exactly as ``himalaya.kernel_ridge.KernelRidgeCV`` and
    ``himalaya.ridge.RidgeCV`` do (same folds give the same alphas and predictions; see the
    tests). The batched solver here differs only in cost: per inner fold one matrix product
    gives every alpha's validation predictions, and the refit applies each target's chosen
    alpha only (himalaya refits every chosen alpha for every target), which makes it 4-7x
    faster than ``KernelRidgeCV`` at 20k targets (benchmark B8). ``solver="himalaya"``
    calls those estimators directly. ``inner_folds="loo"`` selects alphas by exact
    closed-form leave-one-out instead (``sklearn.linear_model.RidgeCV``'s scheme).
Scores
    ``r``: the Pearson correlation between predictions and responses *within each test fold*
    (``fold_r``), averaged over the folds (NaN-ignoring): the convention of
    ``sklearn.model_selection.cross_val_score`` with a correlation scorer, and of himalaya's
    ``correlation_score`` on a test set. The correlation of the predictions pooled over folds
    is not used: each fold is predicted from a training mean that is shifted *away* from its
    test samples (the training set lacks them), so with strong regularisation (predictions
    near the training mean) the pooled r is strongly negative for responses that carry no
    signal at all (about -0.3 with 6 folds of 4 stimuli). Within a fold the predictions do
    not depend on the test responses, so the per-fold r has mean 0 under the null.
    ``r2 = 1 - sum_s (y_s - yhat_s)^2 / sum_s (y_s - mean(y))^2`` over the pooled out-of-fold
    predictions, ``mean(y)`` being the mean of all tested responses (``sklearn.metrics.
    r2_score`` of ``cross_val_predict``'s output; the "predictive R2" or PRESS statistic). It
    is negative when the model predicts worse than that mean, and slightly negative on
    average for responses without signal (the training means miss the test means: about
    ``-n_test / n_train`` per fold). ``fold_r2``: the same within each test fold (SST around
    the test fold's mean), as ``cross_val_score(scoring="r2")``; it is kept as a diagnostic
    but not averaged into ``r2``, because with small test folds (a few stimuli) it is
    dominated by the offset between training and test means and by the tiny SST.
Noise ceiling
    :func:`noise_ceiling_from_split_half` (Spearman-Brown corrected split-half reliability per
    target), :func:`pooled_reliability` (ROI level: Spearman-Brown of the *mean* split-half r,
    since the correction is concave and its mean over noisy voxels is biased: about
    ``-2 var(r)``, -0.09 for pure noise and 24 stimuli) and :func:`ceiling_normalised`
    (``r2 / reliability``, reported only where the reliability is at least
    :data:`MIN_CEILING`).
Bad targets
    A target (response column) with any non-finite value, or constant over all samples, gets
    NaN ``r``, ``r2``, ``fold_r2`` and ``alphas``; its predictions are NaN (non-finite) or the
    training means (constant). A target constant within one test fold only gets NaN
    ``fold_r2`` there. Nothing raises for bad targets; non-finite *features* raise.
Precision and memory
    Decompositions (Gram, eigendecomposition / SVD, PCA) run in float64 on the CPU; the
    products with the responses (the bulk of the work) run in ``dtype`` (default: the
    responses' dtype, float32 or float64) on the chosen backend (``"numpy"``, ``"torch"``,
    ``"torch_cuda"``). Targets are processed in batches of ``target_batch`` (default: about
    256 MB of working memory), so memory is the inputs, the output predictions and a fixed
    working set, whatever the number of targets.
Determinism
    Inner folds are seeded with ``SeedSequence([seed, outer_fold])`` (see
    :func:`inner_folds_for`); equal inputs and seeds give equal results, independent of the
    target batch size.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.backend import float_dtype

__all__ = [
    "EncodingResult",
    "BandedResult",
    "make_folds",
    "check_folds",
    "inner_folds_for",
    "cross_validated_ridge",
    "banded_ridge",
    "variance_partitioning",
    "pearson_columns",
    "r2_columns",
    "spearman_brown",
    "noise_ceiling_from_split_half",
    "ceiling_normalised",
    "outside_unit_interval",
    "at_alpha_grid_edge",
    "pooled_reliability",
    "MIN_CEILING",
]

BACKENDS = ("numpy", "torch", "torch_cuda")
SOLVERS = ("auto", "kernel", "primal", "himalaya")
_WORK_BYTES = 256 * 2**20          # working set per target batch
_STACK_BYTES = 1024 * 2**20        # cap on precomputed per-alpha resolution matrices
_TIE_SLOPE = 1e-10                 # himalaya's tie-break: + 1e-10 * log(alpha)
#: smallest reliability (fraction of reproducible response variance) that a score is divided by
MIN_CEILING = 0.1

Folds = Sequence[tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- results
@dataclass
class EncodingResult:
    """Outcome of :func:`cross_validated_ridge` (n_targets = columns of the responses).

    Attributes
    ----------
    r : numpy.ndarray, shape (n_targets,)
        Mean over outer folds of the Pearson r within each test fold (``fold_r``; folds where
        r is undefined are skipped).
    r2 : numpy.ndarray, shape (n_targets,)
        ``1 - SSE / SST`` of the pooled out-of-fold predictions, SST around the mean of the
        pooled responses.
    fold_r2 : numpy.ndarray, shape (n_folds, n_targets)
        R2 within each test fold (SST around that fold's mean).
    alphas : numpy.ndarray, shape (n_folds, n_targets)
        Ridge penalty chosen by inner cross-validation in each outer fold.
    predictions : numpy.ndarray, shape (n_samples, n_targets)
        Out-of-fold predictions (NaN for samples in no test fold).
    fold_r : numpy.ndarray, shape (n_folds, n_targets)
        Pearson r within each test fold (NaN where the fold has fewer than 2 samples or the
        predictions / responses are constant in it).
    solver : str
        ``"kernel"``, ``"primal"``, ``"himalaya-kernel"`` or ``"himalaya-primal"`` (the last
        outer fold's; shapes are equal across folds unless the folds differ a lot in size).
    """

    r: np.ndarray
    r2: np.ndarray
    fold_r2: np.ndarray
    alphas: np.ndarray
    predictions: np.ndarray
    fold_r: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    solver: str = ""


@dataclass
class BandedResult:
    """Outcome of :func:`banded_ridge` (one kernel / feature space per band).

    Attributes
    ----------
    r : numpy.ndarray, shape (n_targets,)
        Mean over outer folds of the joint model's Pearson r within each test fold.
    r2 : numpy.ndarray, shape (n_targets,)
        Pooled out-of-fold ``1 - SSE / SST`` of the joint model (as :class:`EncodingResult`).
    r2_split : numpy.ndarray, shape (n_spaces, n_targets)
        Share of the explained variance attributed to each feature space (product measure,
        ``himalaya.scoring.r2_score_split``), relative to SST:
        ``r2_split[i] = sum_s (2 yt_s yhat_i,s - yhat_i,s sum_k yhat_k,s) / SST`` with
        ``yt = y - mean_train(y)`` (each sample's fold) and ``yhat_i`` the part of the
        prediction carried by space ``i``. ``r2 = r2_split.sum(0) + r2_intercept`` exactly.
    r2_intercept : numpy.ndarray, shape (n_targets,)
        ``(SST - sum_s yt_s^2) / SST``: the (usually small, <= 0) part of ``r2`` due to
        predicting with training means instead of the pooled test mean.
    fold_r2 : numpy.ndarray, shape (n_folds, n_targets)
        R2 of the joint model within each test fold.
    alphas : numpy.ndarray, shape (n_folds, n_targets)
        ``1 / sum_i exp(deltas_i)``: the overall ridge penalty in each outer fold.
    space_weights : numpy.ndarray, shape (n_folds, n_spaces, n_targets)
        Kernel weights ``exp(deltas_i) * alpha`` (they sum to 1 over spaces).
    predictions : numpy.ndarray, shape (n_samples, n_targets)
        Out-of-fold predictions of the joint model.
    """

    r: np.ndarray
    r2: np.ndarray
    r2_split: np.ndarray
    r2_intercept: np.ndarray
    fold_r2: np.ndarray
    alphas: np.ndarray
    space_weights: np.ndarray
    predictions: np.ndarray


# --------------------------------------------------------------------------- folds
def make_folds(n_samples: int, *, groups: np.ndarray | None = None, n_folds: int | None = None,
               seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds; every sample is in exactly one test fold.

    Parameters
    ----------
    n_samples : int
        Number of samples (stimuli).
    groups : numpy.ndarray, shape (n_samples,), optional
        Group label of each sample (e.g. its run). Given: leave-one-group-out (folds in
        sorted label order) when ``n_folds`` is None or at least the number of groups;
        otherwise the groups are dealt into ``n_folds`` folds (seeded shuffle of the groups,
        then each group goes to the fold with the fewest samples so far), so a group is
        never split between training and test.
    n_folds : int, optional
        Number of folds. Without groups: shuffled K-fold (default 5; fold sizes differ by at
        most one, the first ``n_samples % n_folds`` folds being larger).
    seed : int
        Seed of the shuffles.

    Returns
    -------
    list of (train, test)
        Sorted integer index arrays.

    Raises
    ------
    ValueError
        Fewer than 2 folds / groups, more folds than samples, or wrong ``groups`` length.
    """
    n_samples = int(n_samples)
    rng = np.random.default_rng(seed)
    if groups is None:
        k = 5 if n_folds is None else int(n_folds)
        if not 2 <= k <= n_samples:
            raise ValueError(f"n_folds must be in [2, n_samples={n_samples}], got {k}")
        tests = np.array_split(rng.permutation(n_samples), k)
    else:
        groups = np.asarray(groups)
        if groups.shape != (n_samples,):
            raise ValueError(f"groups must have shape ({n_samples},), got {groups.shape}")
        labels, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        if labels.size < 2:
            raise ValueError("grouped folds need at least 2 distinct groups")
        if n_folds is None or int(n_folds) >= labels.size:
            tests = [np.flatnonzero(inverse == g) for g in range(labels.size)]
        else:
            k = int(n_folds)
            if k < 2:
                raise ValueError(f"n_folds must be >= 2, got {k}")
            order = rng.permutation(labels.size)
            order = order[np.argsort(-counts[order], kind="stable")]  # large groups first
            load = np.zeros(k, dtype=np.int64)
            fold_of = np.empty(labels.size, dtype=np.int64)
            for g in order:
                f = int(np.argmin(load))
                fold_of[g] = f
                load[f] += counts[g]
            tests = [np.flatnonzero(fold_of[inverse] == f) for f in range(k)]
    everything = np.arange(n_samples)
    return [(np.setdiff1d(everything, t), np.sort(t)) for t in tests]


def check_folds(folds: Folds, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate outer folds: integer indices in range, train and test disjoint, test folds
    pairwise disjoint, non-empty training and test sets.

    Parameters
    ----------
    folds : sequence of (train, test)
        Index arrays (boolean masks are accepted too).
    n_samples : int
        Number of samples.

    Returns
    -------
    list of (train, test)
        Sorted int64 index arrays.
    """
    out = []
    tested = np.zeros(n_samples, dtype=bool)
    if len(folds) == 0:
        raise ValueError("no folds given")
    for k, (train, test) in enumerate(folds):
        pair = []
        for idx in (train, test):
            idx = np.asarray(idx)
            if idx.dtype == bool:
                if idx.shape != (n_samples,):
                    raise ValueError(f"fold {k}: boolean mask of wrong length")
                idx = np.flatnonzero(idx)
            idx = np.unique(idx.astype(np.int64))
            if idx.size and (idx[0] < 0 or idx[-1] >= n_samples):
                raise ValueError(f"fold {k}: index out of range [0, {n_samples})")
            pair.append(idx)
        train, test = pair
        if train.size < 2 or test.size < 1:
            raise ValueError(f"fold {k}: needs >= 2 training and >= 1 test samples")
        if np.intersect1d(train, test).size:
            raise ValueError(f"fold {k}: training and test samples overlap")
        if tested[test].any():
            raise ValueError(f"fold {k}: test samples already in an earlier test fold")
        tested[test] = True
        out.append((train, test))
    return out


def inner_folds_for(train: np.ndarray, *, inner_folds: int = 5, inner_groups: np.ndarray | None = None,
                    seed: int = 0, outer_fold: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inner folds that :func:`cross_validated_ridge` uses inside one outer fold.

    Parameters
    ----------
    train : numpy.ndarray, shape (n_train,)
        Outer training indices.
    inner_folds : int
        Number of inner folds.
    inner_groups : numpy.ndarray, shape (n_samples,), optional
        Group of every sample (indexed with ``train``); grouped as :func:`make_folds`.
        When the training samples hold a single group, plain shuffled K-fold is used (with a
        warning).
    seed, outer_fold : int
        The inner shuffle is seeded with ``SeedSequence([seed, outer_fold])``.

    Returns
    -------
    list of (train, validation)
        *Positions* into ``train`` (0 .. n_train - 1).
    """
    n_train = len(train)
    inner_seed = int(np.random.SeedSequence([int(seed), int(outer_fold)]).generate_state(1)[0])
    if inner_groups is not None:
        g = np.asarray(inner_groups)[np.asarray(train)]
        if np.unique(g).size >= 2:
            return make_folds(n_train, groups=g, n_folds=inner_folds, seed=inner_seed)
        warnings.warn(f"outer fold {outer_fold}: the training samples hold one group only; inner "
                      "cross-validation falls back to shuffled K-fold", UserWarning, stacklevel=3)
    return make_folds(n_train, n_folds=min(int(inner_folds), n_train), seed=inner_seed)


# --------------------------------------------------------------------------- helpers
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
    y = np.asarray(responses)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"responses must be (n_samples, n_targets), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float64)
    return y


def _check_features(features: Any, n_samples: int, what: str = "features") -> np.ndarray:
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


def _centre_kernels(k_train: np.ndarray, k_eval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre a training Gram matrix and an evaluation cross-kernel with training statistics
    (``himalaya.kernel_ridge.KernelCenterer``): equal to the linear kernels of features centred
    with the training mean."""
    col = k_train.mean(axis=0)
    allm = col.mean()
    ktr = k_train - col[None, :] - col[:, None] + allm
    kev = k_eval - col[None, :] - k_eval.mean(axis=1)[:, None] + allm
    return ktr, kev


@dataclass
class _Spectral:
    """Ridge predictions of evaluation samples from training responses, for any alpha:
    ``P_a = proj @ diag(f_a) @ basis.T @ y_c`` with ``f_a = 1 / (lam + a)`` (kernel form,
    ``lam`` eigenvalues of the centred Gram) or ``s / (s^2 + a)`` (primal form)."""

    kind: str
    basis: np.ndarray   # (n_train, r)
    proj: np.ndarray    # (n_eval, r)
    spec: np.ndarray    # (r,) eigenvalues (kernel) or singular values (primal)

    @property
    def rank(self) -> int:
        return int(self.spec.size)

    def invalid(self, alphas: np.ndarray) -> np.ndarray:
        """Alphas that do not compensate negative eigenvalues (himalaya's ``"nan"`` rule)."""
        if self.kind == "kernel" and self.spec.size and self.spec[0] < 0:
            return alphas < -2.0 * self.spec[0]
        return np.zeros(alphas.shape, dtype=bool)

    def filters(self, alphas: np.ndarray, clip: bool = False) -> np.ndarray:
        """(n_alphas, r) spectral filters."""
        a = np.asarray(alphas, dtype=np.float64)[:, None]
        if self.kind == "kernel":
            lam = np.maximum(self.spec, 0.0) if clip else self.spec
            with np.errstate(divide="ignore", invalid="ignore"):
                return 1.0 / (lam[None, :] + a)
        s = self.spec[None, :]
        return s / (s * s + a)


def _spectral_kernel(k_train: np.ndarray, k_eval: np.ndarray) -> _Spectral:
    ktr, kev = _centre_kernels(k_train, k_eval)
    lam, v = np.linalg.eigh(ktr)
    return _Spectral("kernel", v, kev @ v, lam)


def _spectral_primal(x_train: np.ndarray, x_eval: np.ndarray) -> _Spectral:
    mean = x_train.mean(axis=0)
    u, s, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    return _Spectral("primal", u, (x_eval - mean) @ vt.T, s)


class _CVOperator:
    """Predictions of one inner validation fold for every alpha, as one matrix product with
    the centred training responses: stacked ``(n_alphas * n_val, n_train)`` resolution matrix,
    or factorised ``(n_alphas * n_val, r) @ (r, n_train)`` when that is cheaper."""

    def __init__(self, spectral: _Spectral, alphas: np.ndarray, B: Any, dtype: np.dtype,
                 stacked: bool) -> None:
        f = spectral.filters(alphas)
        f[~np.isfinite(f)] = 0.0
        left = (spectral.proj[None, :, :] * f[:, None, :]).reshape(-1, spectral.rank)
        self.n_alphas = len(alphas)
        self.n_val = spectral.proj.shape[0]
        self.invalid = spectral.invalid(alphas)
        if stacked:
            self.left = B.asarray(left @ spectral.basis.T, dtype=dtype.name)
            self.right = None
        else:
            self.left = B.asarray(left, dtype=dtype.name)
            self.right = B.asarray(np.ascontiguousarray(spectral.basis.T), dtype=dtype.name)

    def squared_errors(self, B: Any, y_train_c: Any, y_val_c: Any) -> np.ndarray:
        """(n_alphas, n_targets) mean squared validation error (float64 numpy)."""
        rhs = y_train_c if self.right is None else B.matmul(self.right, y_train_c)
        pred = B.matmul(self.left, rhs)
        pred = pred.reshape(self.n_alphas, self.n_val, pred.shape[1])
        pred -= y_val_c[None]
        pred *= pred
        err = pred.sum(1)
        return np.asarray(B.to_numpy(err), dtype=np.float64) / self.n_val


def _stacked_is_cheaper(n_alphas: int, n_val: int, n_train: int, rank: int) -> bool:
    return n_alphas * n_val * n_train <= rank * (n_train + n_alphas * n_val)


def _select_alphas(mse: np.ndarray, alphas: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Per-target index of the best alpha: max of ``-mean MSE + 1e-10 log(alpha)``."""
    score = -mse + _TIE_SLOPE * np.log(alphas)[:, None]
    score[invalid] = -np.inf
    best = np.argmax(score, axis=0)
    if invalid.all():
        best[:] = int(np.argmax(alphas))
    return best


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


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns.

    Parameters
    ----------
    a, b : numpy.ndarray, shape (n_samples, n_columns)

    Returns
    -------
    numpy.ndarray, shape (n_columns,)
        NaN where a column is constant or has non-finite values.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    da = a - a.mean(axis=0)
    db = b - b.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        num = (da * db).sum(axis=0)
        den = np.sqrt((da * da).sum(axis=0) * (db * db).sum(axis=0))
        r = np.where(den > 0, num / den, np.nan)
    return np.clip(r, -1.0, 1.0)


def r2_columns(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """``1 - sum (y - yhat)^2 / sum (y - mean(y))^2`` per column (NaN where ``y`` is constant
    or non-finite).

    Parameters
    ----------
    y, yhat : numpy.ndarray, shape (n_samples, n_columns)

    Returns
    -------
    numpy.ndarray, shape (n_columns,)
    """
    y = np.asarray(y, dtype=np.float64)
    yhat = np.asarray(yhat, dtype=np.float64)
    if y.ndim == 1:
        y, yhat = y[:, None], yhat[:, None]
    sse = ((y - yhat) ** 2).sum(axis=0)
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1.0 - sse / sst, np.nan)


def _pooled_r2(responses: np.ndarray, predictions: np.ndarray, tested: np.ndarray,
               bad: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """R2 of the out-of-fold predictions pooled over the test folds (NaN for ``bad`` targets)."""
    n_targets = responses.shape[1]
    r2 = np.full(n_targets, np.nan)
    for start in range(0, n_targets, chunk):
        cols = slice(start, min(start + chunk, n_targets))
        y = np.asarray(responses[tested, cols], dtype=np.float64)
        p = np.asarray(predictions[tested, cols], dtype=np.float64)
        r2[cols] = r2_columns(y, p)
    r2[bad] = np.nan
    return r2


def _fold_mean(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """(n_folds, n_targets) -> (n_targets,) NaN-ignoring mean over folds (NaN when no fold has
    a value, and for ``bad`` targets)."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, np.where(finite, values, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    out[bad] = np.nan
    return out


# --------------------------------------------------------------------------- single space
def cross_validated_ridge(features: np.ndarray, responses: np.ndarray, folds: Folds, alphas: Sequence[float],
                          *, inner_folds: int | str = 5, inner_groups: np.ndarray | None = None,
                          standardize: bool = True, pca: int | None = None, backend: str = "numpy",
                          target_batch: int | None = None, seed: int = 0, solver: str = "auto",
                          dtype: str | None = None, memory_budget_bytes: int | None = None) -> EncodingResult:
    """Cross-validated ridge encoding with a per-target alpha chosen by inner CV.

    For each outer fold: features are centred / z-scored (and PCA-projected) with training
    statistics; each target's alpha is chosen by ``inner_folds``-fold CV on the training
    samples (``himalaya``'s score: minus the validation MSE averaged over inner folds; ties to
    the larger alpha); the model is refitted on all training samples with that alpha and
    predicts the test samples. See the module docstring for every convention.

    Parameters
    ----------
    features : numpy.ndarray, shape (n_samples, n_features)
        Stimulus features (finite).
    responses : numpy.ndarray, shape (n_samples, n_targets) or (n_samples,)
        Responses (voxels); bad targets (non-finite / constant) give NaN scores.
    folds : sequence of (train, test)
        Outer folds (e.g. :func:`make_folds`); test folds must be disjoint.
    alphas : sequence of float
        Candidate ridge penalties (positive).
    inner_folds : int or "loo"
        Number of inner folds (see :func:`inner_folds_for`), or ``"loo"``: exact
        leave-one-out over the training samples in closed form (the scheme of
        ``sklearn.linear_model.RidgeCV``): residuals of the fit on all training samples
        divided by ``1 - H_ss``, ``H = 11'/n + X_c (X_c' X_c + alpha I)^-1 X_c'`` (intercept
        refitted for each left-out sample); score minus the mean squared LOO error. Not with
        ``inner_groups`` (samples of a run are not independent) nor ``solver="himalaya"``.
    inner_groups : numpy.ndarray, shape (n_samples,), optional
        Groups (runs) for grouped inner folds; pass the run labels when the outer folds are
        grouped by run.
    standardize : bool
        z-score features with the training mean / SD (centring happens in any case, as the
        intercept).
    pca : int, optional
        Keep this many principal components of the standardised training features.
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya backend for the products with the responses (restored afterwards).
    target_batch : int, optional
        Targets per batch (default: about 256 MB of working memory).
    seed : int
        Seed of the inner folds.
    solver : {"auto", "kernel", "primal", "himalaya"}
        ``"auto"``: kernel (dual) form when ``n_train < n_features`` (after PCA), else primal.
        ``"himalaya"``: fit ``himalaya.kernel_ridge.KernelRidgeCV`` / ``himalaya.ridge.RidgeCV``
        (same choice of form) on the same folds instead of the batched solver here (same
        results, slower: it refits every alpha for every target).
    dtype : {"float32", "float64"}, optional
        Precision of the products with the responses (default: the responses' dtype).
    memory_budget_bytes : int, optional
        Working memory of one target batch when ``target_batch`` is not given (``--mem``;
        default 256 MiB). Does not change the results.

    Returns
    -------
    EncodingResult
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    y_all = _as_2d(responses)
    n_samples, n_targets = y_all.shape
    x_all = _check_features(features, n_samples)
    alphas = _check_alphas(alphas)
    folds = check_folds(folds, n_samples)
    cdtype = float_dtype(dtype, like=y_all)
    n_alphas = alphas.size
    loo = isinstance(inner_folds, str)
    if loo and inner_folds != "loo":
        raise ValueError(f"inner_folds must be an int or 'loo', got {inner_folds!r}")
    if loo and (inner_groups is not None or solver == "himalaya"):
        raise ValueError("inner_folds='loo' works neither with inner_groups nor with solver='himalaya'")

    predictions = np.full((n_samples, n_targets), np.nan, dtype=cdtype)
    fold_r2 = np.full((len(folds), n_targets), np.nan)
    fold_r = np.full((len(folds), n_targets), np.nan)
    chosen = np.full((len(folds), n_targets), np.nan)
    bad_all = np.zeros(n_targets, dtype=bool)
    const_all = np.ones(n_targets, dtype=bool)
    used = ""

    with _himalaya_backend(backend) as B:
        for k, (train, test) in enumerate(folds):
            xtr, xte = _prepare(x_all[train], x_all[test], standardize, pca)
            n_tr, n_feat = xtr.shape
            inner = None if loo else inner_folds_for(train, inner_folds=int(inner_folds),
                                                     inner_groups=inner_groups, seed=seed, outer_fold=k)
            kernel = solver == "kernel" or (solver in ("auto", "himalaya") and n_tr < n_feat)
            used = ("himalaya-" if solver == "himalaya" else "") + ("kernel" if kernel else "primal")
            max_val = n_tr // 3 if loo else max(len(v) for _, v in inner)
            rows = n_samples + n_tr + n_alphas * max_val + 2 * len(test)
            batch = _default_batch(n_targets, rows, cdtype.itemsize, target_batch, memory_budget_bytes)
            if solver == "himalaya":
                fitter = _HimalayaFit(xtr, xte, inner, alphas, kernel, cdtype, batch)
            else:
                fitter = _BatchedFit(xtr, xte, inner, alphas, kernel, cdtype, B)
            for start in range(0, n_targets, batch):
                cols = slice(start, min(start + batch, n_targets))
                yb, bad, const = _batch_responses(y_all, cols, cdtype)
                pred, best = fitter(B, yb[train], yb)
                pred[:, bad] = np.nan
                predictions[test, cols] = pred
                a = alphas[best]
                a[bad | const] = np.nan
                chosen[k, cols] = a
                y_te = yb[test]
                fold_r2[k, cols] = r2_columns(y_te, pred)
                fold_r[k, cols] = pearson_columns(y_te, pred)
                bad_all[cols] = bad
                const_all[cols] = const  # over all samples: equal in every fold
            del fitter

    constant = const_all & ~bad_all
    tested = np.zeros(n_samples, dtype=bool)
    for _, test in folds:
        tested[test] = True
    r2 = _pooled_r2(y_all, predictions, tested, bad_all | constant)
    r = _fold_mean(fold_r, bad_all | constant)
    chosen[:, constant | bad_all] = np.nan
    return EncodingResult(r=r, r2=r2, fold_r2=fold_r2, alphas=chosen, predictions=predictions,
                          fold_r=fold_r, solver=used)


class _BatchedFit:
    """Inner-CV alpha choice and refit for one outer fold, over batches of targets."""

    def __init__(self, xtr: np.ndarray, xte: np.ndarray, inner: Folds | None, alphas: np.ndarray, kernel: bool,
                 dtype: np.dtype, B: Any) -> None:
        self.alphas = alphas
        self.dtype = dtype
        self.loo = inner is None
        self.inner = [] if inner is None else [(np.asarray(t), np.asarray(v)) for t, v in inner]
        n_alphas = alphas.size
        gram = xtr @ xtr.T if kernel else None
        specs = []
        for t, v in self.inner:
            if kernel:
                specs.append(_spectral_kernel(gram[np.ix_(t, t)], gram[np.ix_(v, t)]))
            else:
                specs.append(_spectral_primal(xtr[t], xtr[v]))
        stacked_bytes = sum(n_alphas * len(v) * len(t) for t, v in self.inner) * dtype.itemsize
        self.ops = [_CVOperator(s, alphas, B, dtype,
                                stacked=_stacked_is_cheaper(n_alphas, len(v), len(t), s.rank)
                                and stacked_bytes <= _STACK_BYTES)
                    for s, (t, v) in zip(specs, self.inner)]
        self.idx = [(B.asarray(t), B.asarray(v)) for t, v in self.inner]
        # refit on the whole training set
        if kernel:
            self.full = _spectral_kernel(gram, xte @ xtr.T)
        else:
            self.full = _spectral_primal(xtr, xte)
        n_te, n_tr, rank = xte.shape[0], xtr.shape[0], self.full.rank
        if self.loo:
            self.invalid = self.full.invalid(alphas)
            self._init_loo(B)
        else:
            self.invalid = np.any([op.invalid for op in self.ops], axis=0)
        self.grouped = (n_te * n_tr <= rank * (n_tr + n_te)
                        and n_alphas * n_te * n_tr * dtype.itemsize <= _STACK_BYTES)
        self.filters = self.full.filters(alphas, clip=True)
        self.cache: dict[int, Any] = {}
        if not self.grouped:
            self.basis_t = B.asarray(np.ascontiguousarray(self.full.basis.T), dtype=dtype.name)
            self.proj = B.asarray(self.full.proj, dtype=dtype.name)

    def _init_loo(self, B: Any) -> None:
        """Leave-one-out residuals ``e_a = (I - H_a) y_c / (1 - diag H_a)`` from the training
        decomposition ``basis`` (orthonormal columns): ``(I - H_a) y_c = basis diag(c_a)
        basis' y_c + (I - basis basis') y_c`` with ``c_a = a / (lam + a)`` (``lam = s^2`` in
        primal form), computed in this form to avoid cancellation in float32; the second
        term is zero when the basis is square."""
        full = self.full
        lam = np.maximum(full.spec, 0.0) if full.kind == "kernel" else full.spec ** 2
        comp = self.alphas[:, None] / (lam[None, :] + self.alphas[:, None])   # (A, r): 1 - shrinkage
        n_tr, rank = full.basis.shape
        sq = full.basis ** 2
        one_minus_h = sq @ comp.T + (1.0 - sq.sum(axis=1))[:, None] - 1.0 / n_tr   # (n_train, A)
        ok = (one_minus_h > 1e-12).all(axis=0)
        self.invalid = self.invalid | ~ok
        inv = np.where(ok[None, :], 1.0 / np.where(one_minus_h > 1e-12, one_minus_h, 1.0), 0.0)
        # LOO residuals of alpha a: diag(inv_a) basis diag(comp_a) z (+ inv_a * perp)
        self.loo_resid = [B.asarray(inv[:, a, None] * full.basis * comp[a][None, :], dtype=self.dtype.name)
                          for a in range(self.alphas.size)]
        self.loo_inv = B.asarray(np.ascontiguousarray(inv.T), dtype=self.dtype.name)   # (A, n_train)
        self.loo_basis_t = B.asarray(np.ascontiguousarray(full.basis.T), dtype=self.dtype.name)
        self.loo_square = rank >= n_tr
        if not self.loo_square:
            self.loo_basis = B.asarray(full.basis, dtype=self.dtype.name)

    def _loo_mse(self, B: Any, yc: Any) -> np.ndarray:
        """(n_alphas, n_targets) mean squared leave-one-out error."""
        z = B.matmul(self.loo_basis_t, yc)
        perp = None if self.loo_square else yc - B.matmul(self.loo_basis, z)
        mse = np.zeros((self.alphas.size, yc.shape[1]))
        for a, resid in enumerate(self.loo_resid):
            res = B.matmul(resid, z)
            if perp is not None:
                res += self.loo_inv[a][:, None] * perp
            res *= res
            mse[a] = np.asarray(B.to_numpy(res.sum(0)), dtype=np.float64) / yc.shape[0]
        return mse

    def _resolution(self, B: Any, a: int) -> Any:
        if a not in self.cache:
            m = (self.full.proj * self.filters[a][None, :]) @ self.full.basis.T
            self.cache[a] = B.asarray(m, dtype=self.dtype.name)
        return self.cache[a]

    def __call__(self, B: Any, y_train: np.ndarray, y_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Test predictions (n_test, n_batch) and chosen alpha indices (n_batch,)."""
        ytr = B.asarray(y_train, dtype=self.dtype.name)
        mean = ytr.mean(0)
        yc = ytr - mean
        if self.loo:
            mse = self._loo_mse(B, yc)
        else:
            mse = np.zeros((self.alphas.size, ytr.shape[1]))
            for op, (t, v) in zip(self.ops, self.idx):
                y_fit = ytr[t]
                mean_fit = y_fit.mean(0)
                mse += op.squared_errors(B, y_fit - mean_fit, ytr[v] - mean_fit)
            mse /= len(self.ops)
        best = _select_alphas(mse, self.alphas, self.invalid)

        if self.grouped:
            out = B.zeros_like(ytr, shape=(self.full.proj.shape[0], ytr.shape[1]))
            for a in np.unique(best):
                cols = np.flatnonzero(best == a)
                cols_b = B.asarray(cols)
                out[:, cols_b] = B.matmul(self._resolution(B, int(a)), yc[:, cols_b])
        else:
            z = B.matmul(self.basis_t, yc)
            z *= B.asarray(np.ascontiguousarray(self.filters[best].T), dtype=self.dtype.name)
            out = B.matmul(self.proj, z)
        out += mean[None]
        return np.asarray(B.to_numpy(out)), best


class _HimalayaFit:
    """One outer fold fitted with himalaya's own estimators (``solver="himalaya"``)."""

    def __init__(self, xtr: np.ndarray, xte: np.ndarray, inner: Folds, alphas: np.ndarray, kernel: bool,
                 dtype: np.dtype, batch: int) -> None:
        self.xtr = xtr.astype(dtype)
        self.xte = xte.astype(dtype)
        self.inner = [(np.asarray(t), np.asarray(v)) for t, v in inner]
        self.alphas = alphas
        self.kernel = kernel
        self.batch = batch

    def __call__(self, B: Any, y_train: np.ndarray, y_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from himalaya.kernel_ridge import KernelRidgeCV
        from himalaya.ridge import RidgeCV

        params = {"n_targets_batch": self.batch, "n_targets_batch_refit": self.batch}
        if self.kernel:
            model = KernelRidgeCV(alphas=self.alphas, kernel="linear", fit_intercept=True, cv=self.inner,
                                  solver_params=params, warn=False)
        else:
            model = RidgeCV(alphas=self.alphas, fit_intercept=True, cv=self.inner,
                            solver_params={**params, "warn": False})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.fit(self.xtr, y_train)
            pred = np.asarray(B.to_numpy(model.predict(self.xte)))
        best_alpha = np.asarray(B.to_numpy(model.best_alphas_), dtype=np.float64)
        best = np.abs(np.log(best_alpha)[None, :] - np.log(self.alphas)[:, None]).argmin(axis=0)
        if pred.ndim == 1:
            pred = pred[:, None]
        return pred, best


# --------------------------------------------------------------------------- banded ridge
def banded_ridge(feature_spaces: Sequence[np.ndarray], responses: np.ndarray, folds: Folds,
                 alphas: Sequence[float], *, inner_folds: int = 5, inner_groups: np.ndarray | None = None,
                 standardize: bool = True, pca: int | None = None, backend: str = "numpy",
                 target_batch: int | None = None, seed: int = 0, solver: str = "random_search",
                 n_iter: int = 20, concentration: Sequence[float] = (0.1, 1.0),
                 solver_params: Mapping[str, Any] | None = None, dtype: str | None = None,
                 memory_budget_bytes: int | None = None) -> BandedResult:
    """Banded (multiple-kernel) ridge: one linear kernel per feature space, kernel weights and
    alpha per target chosen by inner CV (``himalaya.kernel_ridge.MultipleKernelRidgeCV``).

    Each space is centred / z-scored (and PCA-projected) separately with training statistics;
    kernels ``K_i = X_i X_i^T`` of the training samples and ``X_i,test X_i^T`` are handed to
    himalaya as precomputed kernels. ``solver="random_search"`` (default) samples ``n_iter``
    kernel-weight vectors from a Dirichlet distribution (seeded with ``seed``; the first one
    is uniform) and picks, per target, the weights and alpha with the best inner-CV score
    (``fit_intercept=True``: centring refitted in each inner fold). ``solver="hyper_gradient"``
    descends the inner-CV loss; himalaya does not fit an intercept there, so responses and
    kernels are centred with the outer training mean first (inner folds then reuse that
    centring). The split of R2 over spaces is computed out of fold with
    ``himalaya.scoring.r2_score_split`` (see :class:`BandedResult`).

    Parameters
    ----------
    feature_spaces : sequence of numpy.ndarray, each (n_samples, n_features_i)
        Feature spaces (bands).
    responses : numpy.ndarray, shape (n_samples, n_targets)
    folds : sequence of (train, test)
    alphas : sequence of float
        Candidate overall penalties (random search).
    inner_folds, inner_groups, standardize, pca, backend, target_batch, seed, dtype, memory_budget_bytes
        As :func:`cross_validated_ridge` (``pca`` applies to each space).
    solver : {"random_search", "hyper_gradient"}
    n_iter : int
        Kernel-weight candidates of the random search.
    concentration : sequence of float
        Dirichlet concentrations cycled through by the random search.
    solver_params : mapping, optional
        Extra himalaya solver parameters (override the defaults above).

    Returns
    -------
    BandedResult
    """
    from himalaya.kernel_ridge import MultipleKernelRidgeCV, predict_weighted_kernel_ridge
    from himalaya.scoring import r2_score_split

    if solver not in ("random_search", "hyper_gradient"):
        raise ValueError(f"solver must be 'random_search' or 'hyper_gradient', got {solver!r}")
    if len(feature_spaces) < 1:
        raise ValueError("banded_ridge needs at least one feature space")
    y_all = _as_2d(responses)
    n_samples, n_targets = y_all.shape
    spaces = [_check_features(x, n_samples, f"feature space {i}") for i, x in enumerate(feature_spaces)]
    n_spaces = len(spaces)
    alphas = _check_alphas(alphas)
    folds = check_folds(folds, n_samples)
    cdtype = float_dtype(dtype, like=y_all)

    predictions = np.full((n_samples, n_targets), np.nan, dtype=cdtype)
    fold_r2 = np.full((len(folds), n_targets), np.nan)
    fold_r = np.full((len(folds), n_targets), np.nan)
    chosen = np.full((len(folds), n_targets), np.nan)
    weights = np.full((len(folds), n_spaces, n_targets), np.nan)
    r2_split = np.full((n_spaces, n_targets), np.nan)
    r2_intercept = np.full(n_targets, np.nan)
    bad_all = np.zeros(n_targets, dtype=bool)
    tested = np.zeros(n_samples, dtype=bool)
    for _, test in folds:
        tested[test] = True
    tested_idx = np.flatnonzero(tested)

    # per-fold kernels (float64, then compute dtype)
    prepared = []
    for k, (train, test) in enumerate(folds):
        ks_tr, ks_te = [], []
        for x in spaces:
            xtr, xte = _prepare(x[train], x[test], standardize, pca)
            ks_tr.append(xtr @ xtr.T)
            ks_te.append(xte @ xtr.T)
        inner = inner_folds_for(train, inner_folds=inner_folds, inner_groups=inner_groups, seed=seed,
                                outer_fold=k)
        prepared.append((np.stack(ks_tr).astype(cdtype), np.stack(ks_te).astype(cdtype), inner))

    max_tr = max(len(t) for t, _ in folds)
    rows = n_samples * (n_spaces + 2) + max_tr * (n_spaces + 2) + alphas.size * max_tr
    batch = _default_batch(n_targets, rows, cdtype.itemsize, target_batch, memory_budget_bytes)
    params: dict[str, Any]
    if solver == "random_search":
        params = {"n_iter": int(n_iter), "alphas": alphas.astype(cdtype), "concentration": list(concentration),
                  "progress_bar": False, "n_targets_batch": batch}
    else:
        params = {"progress_bar": False, "n_targets_batch": batch}
    params.update(dict(solver_params or {}))

    with _himalaya_backend(backend) as B, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for start in range(0, n_targets, batch):
            cols = slice(start, min(start + batch, n_targets))
            yb, bad, _ = _batch_responses(y_all, cols, cdtype)
            nb = yb.shape[1]
            split = np.zeros((n_spaces, n_samples, nb))
            centred = np.zeros((n_samples, nb))          # y - mean_train(y), per test fold
            for k, (train, test) in enumerate(folds):
                ks_tr, ks_te, inner = prepared[k]
                y_tr = yb[train]
                offset = y_tr.mean(axis=0)
                # features are centred with the training mean, so the kernels are centred
                # already; hyper_gradient has no intercept: centre the responses instead
                fit_k, te_k = ks_tr, ks_te
                y_fit = y_tr - offset if solver == "hyper_gradient" else y_tr
                model = MultipleKernelRidgeCV(kernels="precomputed", solver=solver, solver_params=params,
                                              fit_intercept=solver == "random_search", cv=inner,
                                              random_state=int(seed))
                model.fit(fit_k, y_fit)
                deltas = np.asarray(B.to_numpy(model.deltas_), dtype=np.float64)
                if deltas.ndim == 1:
                    deltas = deltas[:, None]
                parts = np.asarray(B.to_numpy(predict_weighted_kernel_ridge(
                    B.asarray(te_k), B.asarray(model.dual_coef_), B.asarray(deltas.astype(cdtype)), split=True)),
                    dtype=np.float64)
                if parts.ndim == 2:
                    parts = parts[..., None]
                intercept = (np.asarray(B.to_numpy(model.intercept_), dtype=np.float64)
                             if solver == "random_search" else offset.astype(np.float64))
                intercept = np.broadcast_to(intercept, (nb,))
                pred = parts.sum(axis=0) + intercept[None, :]
                pred[:, bad] = np.nan
                predictions[test, cols] = pred
                fold_r2[k, cols] = r2_columns(yb[test], pred)
                fold_r[k, cols] = pearson_columns(yb[test], pred)
                w = np.exp(deltas)
                alpha = 1.0 / w.sum(axis=0)
                chosen[k, cols] = np.where(bad, np.nan, alpha)
                weights[k, :, cols] = np.where(bad[None, :], np.nan, w * alpha[None, :])
                split[:, test] = parts
                centred[test] = yb[test] - intercept[None, :]
            bad_all[cols] = bad
            y_t = yb[tested_idx].astype(np.float64)
            sst = ((y_t - y_t.mean(axis=0)) ** 2).sum(axis=0)
            ss_c = (centred[tested_idx] ** 2).sum(axis=0)
            share = np.asarray(B.to_numpy(r2_score_split(B.asarray(centred[tested_idx]),
                                                         B.asarray(split[:, tested_idx]))), dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                ok = (sst > 0) & ~bad
                r2_split[:, cols] = np.where(ok[None, :], share * ss_c[None, :] / sst[None, :], np.nan)
                r2_intercept[cols] = np.where(ok, (sst - ss_c) / sst, np.nan)

    r2 = _pooled_r2(y_all, predictions, tested, bad_all)
    r = _fold_mean(fold_r, bad_all)
    return BandedResult(r=r, r2=r2, r2_split=r2_split, r2_intercept=r2_intercept, fold_r2=fold_r2,
                        alphas=chosen, space_weights=weights, predictions=predictions)


# --------------------------------------------------------------------------- partitioning
def variance_partitioning(feature_spaces: Mapping[str, np.ndarray], responses: np.ndarray, folds: Folds,
                          alphas: Sequence[float], **ridge_options: Any) -> pd.DataFrame:
    """Unique and shared explained variance of 2 or 3 feature spaces (set-theoretic
    variance partitioning).

    Every non-empty subset of the spaces is fitted with :func:`cross_validated_ridge`
    (features concatenated; each column z-scored, so a space's weight grows with its number
    of columns: use :func:`banded_ridge` to give each space its own penalty) and scored with
    the pooled out-of-fold R2 ``R(S)``. With ``R(S)`` read as the size of the union of the
    spaces in ``S``, inclusion-exclusion gives

    two spaces A, B::

        unique[A]   = R(A+B) - R(B)
        unique[B]   = R(A+B) - R(A)
        shared[A&B] = R(A) + R(B) - R(A+B)

    three spaces A, B, C::

        unique[A]     = R(A+B+C) - R(B+C)                      (likewise B, C)
        shared[A&B]   = R(A+C) + R(B+C) - R(C) - R(A+B+C)      (A and B, not C; likewise)
        shared[A&B&C] = R(A) + R(B) + R(C) - R(A+B) - R(A+C) - R(B+C) + R(A+B+C)

    Estimates are noisy and can be negative (cross-validated R2 is not a set measure).

    Parameters
    ----------
    feature_spaces : mapping name -> numpy.ndarray (n_samples, n_features_i)
        Two or three named spaces.
    responses : numpy.ndarray, shape (n_samples, n_targets)
    folds : sequence of (train, test)
    alphas : sequence of float
    **ridge_options
        Passed to :func:`cross_validated_ridge` (``inner_folds``, ``seed``, ...).

    Returns
    -------
    pandas.DataFrame, (n_targets rows)
        Columns ``r2[<subset>]`` (subset names joined with ``+``, in mapping order),
        ``unique[<name>]`` and ``shared[<a>&<b>]`` (and ``shared[<a>&<b>&<c>]``).
    """
    names = list(feature_spaces)
    if len(names) not in (2, 3):
        raise ValueError(f"variance partitioning takes 2 or 3 feature spaces, got {len(names)}")
    if any(("+" in n) or ("&" in n) for n in names):
        raise ValueError("feature space names must not contain '+' or '&'")
    r2: dict[frozenset[str], np.ndarray] = {}
    columns: dict[str, np.ndarray] = {}
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            x = np.hstack([np.asarray(feature_spaces[n], dtype=np.float64).reshape(len(feature_spaces[n]), -1)
                           for n in subset])
            res = cross_validated_ridge(x, responses, folds, alphas, **ridge_options)
            r2[frozenset(subset)] = res.r2
            columns[f"r2[{'+'.join(subset)}]"] = res.r2

    def R(*subset: str) -> np.ndarray:
        return r2[frozenset(subset)]

    if len(names) == 2:
        a, b = names
        columns[f"unique[{a}]"] = R(a, b) - R(b)
        columns[f"unique[{b}]"] = R(a, b) - R(a)
        columns[f"shared[{a}&{b}]"] = R(a) + R(b) - R(a, b)
    else:
        a, b, c = names
        full = R(a, b, c)
        for n in names:
            others = [m for m in names if m != n]
            columns[f"unique[{n}]"] = full - R(*others)
        for p, q in itertools.combinations(names, 2):
            o = next(m for m in names if m not in (p, q))
            columns[f"shared[{p}&{q}]"] = R(p, o) + R(q, o) - R(o) - full
        columns[f"shared[{a}&{b}&{c}]"] = R(a) + R(b) + R(c) - R(a, b) - R(a, c) - R(b, c) + full
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- noise ceiling
def spearman_brown(r: np.ndarray | float, factor: float = 2.0) -> np.ndarray:
    """Spearman-Brown prophecy: reliability of data ``factor`` times as long.

    ``r_sb = factor * r / (1 + (factor - 1) * r)``; NaN where the denominator is <= 0
    (e.g. ``r = -1`` with ``factor = 2``) or ``r`` is NaN.

    Parameters
    ----------
    r : array_like
        Reliability (e.g. split-half correlation), any shape.
    factor : float
        Length ratio (2 for split-half -> full data).

    Returns
    -------
    numpy.ndarray
        Same shape as ``r``.
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    r = np.asarray(r, dtype=np.float64)
    den = 1.0 + (factor - 1.0) * r
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, factor * r / den, np.nan)


def noise_ceiling_from_split_half(split_half_r: np.ndarray) -> np.ndarray:
    """Reliability of the full data from split-half correlations (Spearman-Brown, factor 2).

    Parameters
    ----------
    split_half_r : numpy.ndarray, shape (n_targets,) or (n_splits, n_targets)
        Pearson r between the two halves' response profiles; with several splits the r's
        are averaged (NaN-ignoring) over axis 0 before the correction.

    Returns
    -------
    numpy.ndarray, shape (n_targets,)
        ``2 r / (1 + r)``: the expected correlation between two full-length repetitions,
        i.e. the fraction of response variance that is reproducible -- the ceiling for R2
        (for a correlation use its square root). NaN where r <= -1 or NaN.
    """
    r = np.asarray(split_half_r, dtype=np.float64)
    if r.ndim == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = np.nanmean(r, axis=0)
    return spearman_brown(r, 2.0)


def ceiling_normalised(score: np.ndarray, ceiling: np.ndarray, min_ceiling: float = MIN_CEILING) -> np.ndarray:
    """Score divided by the noise ceiling: ``score / ceiling``, NaN where ``ceiling <
    min_ceiling`` or either is NaN.

    Pass R2 with the reliability (:func:`noise_ceiling_from_split_half`, or
    :func:`pooled_reliability` for an ROI mean), or Pearson r with the square root of the
    reliability. A ceiling near 0 (a target or ROI without reproducible signal) makes the
    ratio meaningless: its sign and size are set by the estimation noise of the denominator,
    so such targets get NaN ("n/a") rather than a huge or sign-flipped value. Values above 1
    are kept (noisy ceilings).

    Parameters
    ----------
    score, ceiling : array_like
        Broadcastable arrays.
    min_ceiling : float
        Smallest ceiling divided by (default :data:`MIN_CEILING` = 0.1: at least 10 % of the
        response variance reproducible across split halves). Must be positive.

    Returns
    -------
    numpy.ndarray
    """
    if not min_ceiling > 0:
        raise ValueError(f"min_ceiling must be positive, got {min_ceiling}")
    score = np.asarray(score, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(ceiling) & (ceiling >= min_ceiling), score / ceiling, np.nan)


def outside_unit_interval(values: np.ndarray) -> np.ndarray:
    """True where a ceiling-normalised score is finite and outside ``[0, 1]``.

    A normalised score below 0 (worse than predicting the mean) or above 1 (better than the
    data's own reliability) is not a fraction of the explainable variance: the ceiling is too
    noisy for that target, or the model fails there. Reports and tables flag such values.
    """
    values = np.asarray(values, dtype=np.float64)
    return np.isfinite(values) & ((values < 0.0) | (values > 1.0))


def at_alpha_grid_edge(chosen: np.ndarray, grid: Sequence[float]) -> np.ndarray:
    """True where a chosen ridge penalty is the smallest or the largest of the grid.

    A penalty at the edge of the grid means the inner cross-validation wanted a value beyond
    it (extend the grid), or, at the top, that the best prediction is close to the mean
    response (no learnable signal). NaN penalties (targets without a fit) are False, and so is
    every penalty of a one-value grid (nothing was chosen).

    Parameters
    ----------
    chosen : numpy.ndarray
        Chosen penalties (any shape).
    grid : sequence of float
        The penalty grid they were chosen from.
    """
    grid = np.unique(np.asarray(grid, dtype=np.float64))
    chosen = np.asarray(chosen, dtype=np.float64)
    if grid.size < 2:
        return np.zeros(chosen.shape, dtype=bool)
    return np.isclose(chosen, grid.min(), rtol=1e-6, atol=0.0) | np.isclose(chosen, grid.max(), rtol=1e-6, atol=0.0)


def pooled_reliability(reliability: np.ndarray) -> float:
    """Reliability of a set of targets (an ROI) from their Spearman-Brown corrected
    split-half reliabilities: ``SB(mean_v r_v)`` with ``r_v = rel_v / (2 - rel_v)`` (the
    inverse of ``SB(r) = 2 r / (1 + r)``) and NaN targets ignored.

    The mean of per-target corrected reliabilities is biased downwards because the correction
    is concave: for pure noise (split-half r with mean 0 and variance ``~1 / (n_cond - 1)``) it
    is about ``-2 var(r)``, -0.09 with 24 conditions, whereas ``SB`` of the mean r is unbiased
    to first order.

    Parameters
    ----------
    reliability : numpy.ndarray, shape (n_targets,)
        Per-target reliabilities (output of :func:`noise_ceiling_from_split_half`).

    Returns
    -------
    float
        NaN when no target has a finite reliability.
    """
    rel = np.asarray(reliability, dtype=np.float64).ravel()
    rel = rel[np.isfinite(rel)]
    if rel.size == 0:
        return float("nan")
    split_half = rel / (2.0 - rel)
    return float(spearman_brown(float(np.mean(split_half)), 2.0))
