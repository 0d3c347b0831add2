"""Banded (multiple-kernel) ridge and variance partitioning over several feature spaces.

Pure functions on arrays (numpy in, numpy out); no BIDS, no files, no printing. The training-only
fitting, fold, score and bad-target conventions are those of :mod:`bids_dnn.encoding.ridge`;
:func:`banded_ridge` runs the random search of himalaya's ``MultipleKernelRidgeCV`` batched over
targets (:mod:`bids_dnn.encoding._random_search`; same choices) or himalaya's estimator itself
(himalaya is imported inside the functions, so importing this module does not import torch), and
:func:`variance_partitioning` refits :func:`bids_dnn.encoding.ridge.cross_validated_ridge` on
every subset of the spaces.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.backend import float_dtype
from bids_dnn.encoding._random_search import NO_ALPHA, kernel_weight_candidates, refit_fold, search_fold
from bids_dnn.encoding._solver import (_as_2d, _batch_responses, _check_alphas, _check_features, _default_batch,
                                       _himalaya_backend, _prepare)
from bids_dnn.encoding.folds import Folds, check_folds, inner_folds_for
from bids_dnn.encoding.ridge import _centre_kernels, cross_validated_ridge
from bids_dnn.encoding.scores import _fold_mean, _pooled_r2, pearson_columns, r2_columns

__all__ = ["BandedResult", "banded_ridge", "variance_partitioning"]


@dataclass
class BandedResult:
    """Outcome of :func:`banded_ridge` (one kernel / feature space per band).

    Attributes
    ----------
    r : numpy.ndarray, shape (n_targets,)
        Mean over outer folds of the joint model's Pearson r within each test fold.
    r2 : numpy.ndarray, shape (n_targets,)
        Pooled out-of-fold ``1 - SSE / SST`` of the joint model (as
        :class:`~bids_dnn.encoding.ridge.EncodingResult`).
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
    fold_r : numpy.ndarray, shape (n_folds, n_targets)
        Pearson r of the joint model within each test fold (``r`` is its NaN-ignoring mean).
    """

    r: np.ndarray
    r2: np.ndarray
    r2_split: np.ndarray
    r2_intercept: np.ndarray
    fold_r2: np.ndarray
    alphas: np.ndarray
    space_weights: np.ndarray
    predictions: np.ndarray
    fold_r: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))


# --------------------------------------------------------------------------- banded ridge
#: solver_params the batched random search understands (any other goes to himalaya's estimator)
_SEARCH_PARAMS = frozenset({"n_iter", "alphas", "concentration", "progress_bar", "n_targets_batch",
                            "n_targets_batch_refit"})
#: inner training / validation responses and prediction buffer of one chunk of the search (a few
#: hundred targets already run the per-alpha products at full BLAS speed; larger chunks only cost memory)
_SEARCH_CHUNK_BYTES = 8 * 2**20


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
    its kernels ``K_i = X_i X_i^T`` of the training samples and ``X_i,test X_i^T`` are formed
    in float64. ``solver="random_search"`` (default) samples ``n_iter`` kernel-weight vectors
    from a Dirichlet distribution (seeded with ``seed``; the first one is uniform) and picks,
    per target, the weights and alpha with the best inner-CV score (intercept refitted in each
    inner fold): the search of ``MultipleKernelRidgeCV(kernels="precomputed",
    solver="random_search", fit_intercept=True, random_state=seed)`` on the kernels cast to the
    compute dtype, with its arithmetic (same choices), run by
    :mod:`bids_dnn.encoding._random_search`: per outer fold each candidate's decompositions are
    computed once and all targets stream through them in batches, and the model is refitted
    once, with each target's final choice, in float64 (himalaya refits in the compute dtype
    at every improvement). ``solver="hyper_gradient"`` (and any ``solver_params`` beyond
    ``n_iter``, ``alphas``, ``concentration``, ``progress_bar``, ``n_targets_batch`` and
    ``n_targets_batch_refit``) fits himalaya's estimator itself, one fit per outer fold and
    target batch; hyper_gradient has no intercept, so responses and kernels are centred with
    the outer training mean first (inner folds then reuse that centring). The split of R2
    over spaces is computed out of fold (product measure, ``himalaya.scoring.r2_score_split``;
    see :class:`BandedResult`).

    Parameters
    ----------
    feature_spaces : sequence of numpy.ndarray, each (n_samples, n_features_i)
        Feature spaces (bands).
    responses : numpy.ndarray, shape (n_samples, n_targets)
    folds : sequence of (train, test)
    alphas : sequence of float
        Candidate overall penalties (random search).
    inner_folds, inner_groups, standardize, pca, backend, seed, dtype
        As :func:`cross_validated_ridge` (``pca`` applies to each space).
    target_batch : int, optional
        Targets per batch of the refit, and at most per chunk of the search (default: as many
        as fit ``memory_budget_bytes``, default 256 MiB; the search's chunks are at most about
        8 MiB unless ``solver_params["n_targets_batch"]`` sets them; the fixed
        working set of a fold, about ``(3 n_spaces + 2) n_train^2`` float64 and
        ``n_alphas n_val n_inner_train`` compute-dtype values, comes on top).
    memory_budget_bytes : int, optional
        Working memory of one target batch when ``target_batch`` is not given.
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
    if solver not in ("random_search", "hyper_gradient"):
        raise ValueError(f"solver must be 'random_search' or 'hyper_gradient', got {solver!r}")
    if len(feature_spaces) < 1:
        raise ValueError("banded_ridge needs at least one feature space")
    y_all = _as_2d(responses)
    n_samples = y_all.shape[0]
    spaces = [_check_features(x, n_samples, f"feature space {i}") for i, x in enumerate(feature_spaces)]
    alphas = _check_alphas(alphas)
    folds = check_folds(folds, n_samples)
    cdtype = float_dtype(dtype, like=y_all)
    extra = dict(solver_params or {})
    common = {"inner_folds": inner_folds, "inner_groups": inner_groups, "standardize": standardize, "pca": pca,
              "backend": backend, "target_batch": target_batch, "seed": int(seed),
              "memory_budget_bytes": memory_budget_bytes}
    search_n_iter = extra.get("n_iter", n_iter)
    if (solver == "hyper_gradient" or not set(extra) <= _SEARCH_PARAMS
            or not isinstance(search_n_iter, (int, np.integer))):   # an array of candidates: himalaya's own
        return _banded_himalaya(spaces, y_all, folds, alphas, cdtype, solver=solver, n_iter=n_iter,
                                concentration=concentration, solver_params=extra, **common)
    if "alphas" in extra:
        alphas = _check_alphas(extra["alphas"])
    return _banded_search(spaces, y_all, folds, alphas, cdtype, n_iter=int(search_n_iter),
                          concentration=tuple(extra.get("concentration", concentration)),
                          search_batch=extra.get("n_targets_batch"), refit_batch=extra.get("n_targets_batch_refit"),
                          **common)


def _bad_targets(y: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(n_targets,) mask of targets with a non-finite response."""
    bad = np.zeros(y.shape[1], dtype=bool)
    for start in range(0, y.shape[1], chunk):
        bad[start:start + chunk] = ~np.isfinite(y[:, start:start + chunk]).all(axis=0)
    return bad


def _tested_sst(y: np.ndarray, tested: np.ndarray, dtype: np.dtype, chunk: int = 4096) -> np.ndarray:
    """(n_targets,) sum of squares of the tested responses (rounded to ``dtype``) around their mean."""
    sst = np.empty(y.shape[1])
    rows = np.flatnonzero(tested)
    for start in range(0, y.shape[1], chunk):
        block = np.asarray(y[rows, start:start + chunk], dtype=dtype).astype(np.float64)
        block -= block.mean(axis=0)
        sst[start:start + chunk] = (block * block).sum(axis=0)
    return sst


def _search_bytes_per_target(n_train: int, n_test: int, max_inner_train: int, max_val: int, n_spaces: int,
                            itemsize: int) -> int:
    """Working memory per target of a batch of the batched random search (bytes): the larger of
    the search (inner training and validation responses and one prediction buffer, in the
    compute dtype, plus a validation-sized temporary of a non-NumPy backend) and the float64
    refit (training responses and dual weights; per-space test predictions, their sum, the
    test responses and a temporary)."""
    search = (max_inner_train + 3 * max_val) * int(itemsize)
    refit = (2 * n_train + (n_spaces + 3) * n_test) * 8
    return int(max(search, refit))


def _banded_search(spaces: list[np.ndarray], y_all: np.ndarray, folds: Folds, alphas: np.ndarray, cdtype: np.dtype, *,
                   inner_folds: int, inner_groups: np.ndarray | None, standardize: bool, pca: int | None,
                   backend: str, target_batch: int | None, seed: int, memory_budget_bytes: int | None, n_iter: int,
                   concentration: Sequence[float], search_batch: int | None,
                   refit_batch: int | None) -> BandedResult:
    """The random search of :func:`banded_ridge`, batched over targets (module
    :mod:`bids_dnn.encoding._random_search`)."""
    n_samples, n_targets = y_all.shape
    n_spaces = len(spaces)
    inner_all = [inner_folds_for(train, inner_folds=inner_folds, inner_groups=inner_groups, seed=seed, outer_fold=k)
                 for k, (train, _) in enumerate(folds)]
    per_target = _search_bytes_per_target(
        max(len(t) for t, _ in folds), max(len(v) for _, v in folds),
        max(len(t) for fold in inner_all for t, _ in fold), max(len(v) for fold in inner_all for _, v in fold),
        n_spaces, cdtype.itemsize)
    batch = _default_batch(n_targets, per_target, 1, target_batch, memory_budget_bytes)
    if search_batch is None:
        chunk_bytes = (max(len(t) for fold in inner_all for t, _ in fold)
                       + 2 * max(len(v) for fold in inner_all for _, v in fold)) * cdtype.itemsize
        search_batch = min(batch, max(64, _SEARCH_CHUNK_BYTES // chunk_bytes))
    search_batch = max(1, int(search_batch))
    refit_batch = batch if refit_batch is None else max(1, int(refit_batch))

    predictions = np.full((n_samples, n_targets), np.nan, dtype=cdtype)
    fold_r2 = np.full((len(folds), n_targets), np.nan)
    fold_r = np.full((len(folds), n_targets), np.nan)
    chosen = np.full((len(folds), n_targets), np.nan)
    weights = np.full((len(folds), n_spaces, n_targets), np.nan)
    split_sums = np.zeros((n_spaces, n_targets))     # sum_s (2 yt_s yhat_i,s - yhat_i,s sum_k yhat_k,s)
    centred_ss = np.zeros(n_targets)                 # sum_s yt_s^2, yt = y - mean_train(y)
    tested = np.zeros(n_samples, dtype=bool)
    for _, test in folds:
        tested[test] = True
    bad = _bad_targets(y_all)
    good = np.flatnonzero(~bad)

    with _himalaya_backend(backend) as B, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gammas = kernel_weight_candidates(n_iter, n_spaces, concentration, seed)
        for k, ((train, test), inner) in enumerate(zip(folds, inner_all)):
            k_train = np.empty((n_spaces, len(train), len(train)))
            k_test = np.empty((n_spaces, len(test), len(train)))
            for i, x in enumerate(spaces):
                xtr, xte = _prepare(x[train], x[test], standardize, pca)
                k_train[i] = xtr @ xtr.T
                k_test[i] = xte @ xtr.T
                del xtr, xte
            gamma_index, alpha_index = search_fold(B, k_train, y_all, train, inner, gammas, alphas, cdtype,
                                                   search_batch, bad)
            for i in range(n_spaces):
                k_train[i], k_test[i] = _centre_kernels(k_train[i], k_test[i])
            alpha_values = np.where(alpha_index >= 0, alphas[np.maximum(alpha_index, 0)], NO_ALPHA)
            chosen[k, good] = alpha_values[good]
            weights[k][:, good] = (gammas / gammas.sum(axis=1, keepdims=True))[gamma_index[good]].T
            for idx, offset, parts in refit_fold(k_train, k_test, gammas, gamma_index, alpha_values, y_all, train,
                                                 good, cdtype, refit_batch):
                total = parts.sum(axis=0)
                pred = total + offset[None, :]
                predictions[np.ix_(test, idx)] = pred
                y_te = np.asarray(y_all[np.ix_(test, idx)], dtype=cdtype).astype(np.float64)
                fold_r2[k, idx] = r2_columns(y_te, pred)
                fold_r[k, idx] = pearson_columns(y_te, pred)
                yt = y_te - offset[None, :]
                centred_ss[idx] += (yt * yt).sum(axis=0)
                yt *= 2
                yt -= total
                split_sums[:, idx] += (parts * yt[None]).sum(axis=1)
            del k_train, k_test

    sst = _tested_sst(y_all, tested, cdtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (sst > 0) & ~bad
        r2_split = np.where(ok[None, :], split_sums / sst[None, :], np.nan)
        r2_intercept = np.where(ok, (sst - centred_ss) / sst, np.nan)
    r2 = _pooled_r2(y_all, predictions, tested, bad)
    r = _fold_mean(fold_r, bad)
    return BandedResult(r=r, r2=r2, r2_split=r2_split, r2_intercept=r2_intercept, fold_r2=fold_r2,
                        alphas=chosen, space_weights=weights, predictions=predictions, fold_r=fold_r)


def _banded_himalaya(spaces: list[np.ndarray], y_all: np.ndarray, folds: Folds, alphas: np.ndarray,
                     cdtype: np.dtype, *, inner_folds: int, inner_groups: np.ndarray | None, standardize: bool,
                     pca: int | None, backend: str, target_batch: int | None, seed: int,
                     memory_budget_bytes: int | None, solver: str, n_iter: int, concentration: Sequence[float],
                     solver_params: Mapping[str, Any]) -> BandedResult:
    """:func:`banded_ridge` fitted with himalaya's ``MultipleKernelRidgeCV`` itself, one fit per
    outer fold and target batch (hyper_gradient, or solver parameters the batched search does
    not take)."""
    from himalaya.kernel_ridge import MultipleKernelRidgeCV, predict_weighted_kernel_ridge
    from himalaya.scoring import r2_score_split

    n_samples, n_targets = y_all.shape
    n_spaces = len(spaces)
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
    params.update(dict(solver_params))
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
                        alphas=chosen, space_weights=weights, predictions=predictions, fold_r=fold_r)


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
