"""Voxelwise encoding of naturalistic BOLD time series: per-run z-scoring, FIR delays,
leave-one-run-out ridge or banded ridge (Huth et al. 2016; the Gallant lab's voxelwise
tutorials with himalaya).

Pure functions on arrays; no BIDS, no files, no printing.

Pipeline of :func:`timeseries_encoding`
    1. Every feature space and the BOLD are z-scored within each run
       (:func:`~bids_dnn.timeseries.scaling.zscore_by_run`: each run with its own mean and SD
       only).
    2. Each feature space gets its FIR delays within each run
       (:func:`~bids_dnn.timeseries.delays.delay_features`, delay-major columns).
    3. Outer folds leave one run out (:func:`bids_dnn.encoding.make_folds` with the runs as
       groups; folds in sorted run order). Inside each outer fold the inner folds are grouped
       by run too (:func:`bids_dnn.encoding.inner_folds_for`: leave-one-run-out over the
       training runs when there are fewer of them than ``inner_folds``), so the penalties are
       chosen on whole held-out runs; with a single training run (2 runs in all) they fall back
       to shuffled K-fold over its samples, with a warning.
    4. One feature space: :func:`bids_dnn.encoding.cross_validated_ridge`; several:
       :func:`bids_dnn.encoding.banded_ridge` (the random search of himalaya's
       ``MultipleKernelRidgeCV`` over the spaces' kernel weights, batched over voxels, with the
       same choices; per voxel weights, alpha and the split of R2 over spaces). Both
       re-centre (and, with ``standardize_features``, re-scale) the delayed features and
       apply the optional PCA with statistics of the outer *training* samples only, and fit
       the intercept within every inner training fold.

No leakage
    A held-out run enters its fold only as test data: its features are z-scored and delayed
    with its own samples (step 1-2 never mix runs), its BOLD is never seen by the fit, the
    training statistics, the PCA or the inner cross-validation of its fold. Changing the test
    run's BOLD therefore changes neither that fold's alphas nor its predictions, and changing
    the test run's features leaves that fold's fitted model unchanged (tested). The z-scoring
    of the test run's BOLD with its own mean and SD is the usual convention; it changes no
    Pearson r (``r`` and ``fold_r``) and makes R2 measure the prediction of the run's
    fluctuations around its own mean.

Scores
    As :mod:`bids_dnn.encoding.ridge`: ``r`` is the mean over held-out runs of the Pearson r
    within each run; ``r2`` the R2 of the out-of-fold predictions pooled over runs.

Memory
    The inputs, their z-scored and delayed copies (float64 features; BOLD in its own float
    dtype) and the out-of-fold predictions (``n_samples x n_voxels`` in the compute dtype,
    kept in the result only with ``keep_predictions=True``) are held in full. The working set
    of the solver is bounded by ``memory_budget_bytes``: target batches of
    :func:`cross_validated_ridge`, or of :func:`banded_ridge` (its random search and refit, see
    :func:`banded_batches`). Neither repeats work per batch: each outer fold's decompositions
    (ridge: of the training Gram matrix; banded: of every candidate's weighted kernel sum, per
    inner split) are computed once and every batch of voxels streams through them, so the
    budget changes neither the results nor, beyond a few hundred voxels per batch, the speed.
    On top of the batches, a banded fold holds its kernels (about ``(3 n_spaces + 2)
    n_train^2`` float64 values) and one inner split's per-alpha resolution matrices
    (``n_alphas x n_validation x n_inner_train`` in the compute dtype).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bids_dnn.backend import float_dtype
from bids_dnn.encoding import banded_ridge, cross_validated_ridge, inner_folds_for, make_folds
from bids_dnn.timeseries.delays import _check_delays, delay_features
from bids_dnn.timeseries.scaling import zscore_by_run

__all__ = ["DEFAULT_BANDED_MEMORY_BYTES", "TimeseriesEncodingResult", "timeseries_encoding", "banded_batches"]

#: default working-memory budget of one voxel batch of the banded solver (512 MiB)
DEFAULT_BANDED_MEMORY_BYTES = 512 * 2**20
#: working set of one chunk of voxels of the banded random search
_SEARCH_CHUNK_BYTES = 8 * 2**20


@dataclass
class TimeseriesEncodingResult:
    """Outcome of :func:`timeseries_encoding` (n_folds = number of runs; fold ``k`` holds out
    run ``fold_runs[k]``).

    Attributes
    ----------
    r : numpy.ndarray, shape (n_voxels,)
        Mean over held-out runs of the Pearson r within each run (NaN for voxels that are
        non-finite or constant).
    r2 : numpy.ndarray, shape (n_voxels,)
        R2 of the out-of-fold predictions pooled over runs (SST around the mean of all
        z-scored samples).
    fold_r : numpy.ndarray, shape (n_folds, n_voxels)
        Pearson r within each held-out run.
    fold_r2 : numpy.ndarray, shape (n_folds, n_voxels)
        R2 within each held-out run.
    alphas : numpy.ndarray, shape (n_folds, n_voxels)
        Ridge penalty chosen by the inner cross-validation of each fold (banded: the overall
        penalty ``1 / sum_i exp(deltas_i)``).
    r2_split : numpy.ndarray, shape (n_spaces, n_voxels), or None
        Banded ridge only: share of the pooled R2 carried by each space (product measure,
        :class:`bids_dnn.encoding.BandedResult`); ``r2 = r2_split.sum(0) + r2_intercept``.
    r2_intercept : numpy.ndarray, shape (n_voxels,), or None
        Banded ridge only: the part of ``r2`` due to the training means.
    space_weights : numpy.ndarray, shape (n_folds, n_spaces, n_voxels), or None
        Banded ridge only: kernel weight of each space in each fold (summing to 1).
    predictions : numpy.ndarray, shape (n_samples, n_voxels), or None
        Out-of-fold predictions of the z-scored BOLD (only with ``keep_predictions=True``).
    fold_ids : numpy.ndarray, shape (n_samples,), int64
        Outer fold in which each sample is held out.
    fold_runs : numpy.ndarray, shape (n_folds,)
        Run label held out by each fold (sorted).
    space_names : tuple of str
        Feature spaces in the order of ``r2_split`` and ``space_weights``.
    n_features : tuple of int
        Columns of each space after the delays (before any PCA).
    delays : tuple of int
        The FIR delays (samples).
    model : str
        ``"ridge"`` (one space) or ``"banded"`` (several).
    """

    r: np.ndarray
    r2: np.ndarray
    fold_r: np.ndarray
    fold_r2: np.ndarray
    alphas: np.ndarray
    r2_split: np.ndarray | None
    r2_intercept: np.ndarray | None
    space_weights: np.ndarray | None
    predictions: np.ndarray | None
    fold_ids: np.ndarray
    fold_runs: np.ndarray
    space_names: tuple[str, ...]
    n_features: tuple[int, ...]
    delays: tuple[int, ...]
    model: str


def banded_batches(n_voxels: int, folds: Sequence[tuple[np.ndarray, np.ndarray]], inner: Sequence[Sequence],
                   n_spaces: int, n_alphas: int, n_iter: int, itemsize: int,
                   memory_budget_bytes: int | None = None) -> tuple[int, int]:
    """Voxel batch sizes of the banded solver that keep its working set within a budget.

    :func:`bids_dnn.encoding.banded_ridge` streams the voxels through each outer fold's
    decompositions in batches; a batch of ``b`` voxels needs ``b * per_voxel`` bytes, with
    (``n_tr`` / ``n_te`` the largest outer training / test set, ``n_in`` / ``n_val`` the
    largest inner training / validation set, ``S`` spaces, ``i`` the compute itemsize)::

        per_voxel = max((n_in + 3 n_val) i, (2 n_tr + (S + 3) n_te) 8)

    (the search: inner training and validation responses and a prediction buffer, plus a
    temporary on a non-NumPy backend; the float64 refit: training responses and dual weights,
    per-space test predictions, their sum, the test responses and a temporary). The number of
    alphas and candidates only adds a per-voxel score table held for all voxels
    (``n_inner x n_alphas`` values), not per batch.

    Parameters
    ----------
    n_voxels : int
    folds : sequence of (train, test)
        Outer folds.
    inner : sequence of sequence of (train, validation)
        Inner folds of each outer fold.
    n_spaces, n_alphas, n_iter, itemsize : int
        ``n_alphas`` and ``n_iter`` are accepted for the callers' convenience; they do not
        change the batch.
    memory_budget_bytes : int, optional
        Default :data:`DEFAULT_BANDED_MEMORY_BYTES`.

    Returns
    -------
    batch : int
        Voxels per batch (at least 64, at most ``n_voxels``).
    inner_batch : int
        Voxels per chunk of the search (at most ``batch``): as many as fit 8 MiB with their
        inner training and validation responses and a prediction buffer (``(n_in + 2 n_val) i``
        bytes each; at least 64; a few hundred voxels already run its per-alpha products at full
        BLAS speed). Given to ``banded_ridge`` (and to himalaya, for the same batches) as
        ``n_targets_batch``.
    """
    budget = DEFAULT_BANDED_MEMORY_BYTES if memory_budget_bytes is None else int(memory_budget_bytes)
    n_tr = max(len(t) for t, _ in folds)
    n_te = max(len(v) for _, v in folds)
    n_in = max((len(t) for fold in inner for t, _ in fold if t is not None), default=n_tr)
    n_val = max((len(v) for fold in inner for _, v in fold), default=n_tr)
    per_voxel = max((n_in + 3 * n_val) * int(itemsize), (2 * n_tr + (int(n_spaces) + 3) * n_te) * 8)
    batch = int(min(max(int(n_voxels), 1), max(64, budget // per_voxel)))
    inner_batch = int(min(batch, max(64, _SEARCH_CHUNK_BYTES // ((n_in + 2 * n_val) * int(itemsize)))))
    return batch, inner_batch


def _check_runs(runs: np.ndarray, n_samples: int) -> np.ndarray:
    runs = np.asarray(runs)
    if runs.shape != (n_samples,):
        raise ValueError(f"runs must have shape ({n_samples},), got {runs.shape}")
    if np.unique(runs).size < 2:
        raise ValueError("leave-one-run-out encoding needs at least 2 runs")
    return runs


def timeseries_encoding(feature_spaces: Mapping[str, np.ndarray], bold: np.ndarray, runs: np.ndarray, *,
                        alphas: Sequence[float], delays: Sequence[int] = (1, 2, 3, 4), inner_folds: int = 5,
                        standardize_features: bool = True, standardize_bold: bool = True, pca: int | None = None,
                        backend: str = "numpy", memory_budget_bytes: int | None = None, seed: int = 0,
                        keep_predictions: bool = False, n_iter: int = 20,
                        concentration: Sequence[float] = (0.1, 1.0), dtype: str | None = None
                        ) -> TimeseriesEncodingResult:
    """Leave-one-run-out voxelwise encoding of BOLD time series from TR-resolution features.

    See the module docstring for the pipeline (per-run z-scoring, FIR delays within runs,
    leave-one-run-out outer folds, run-grouped inner folds, ridge or banded ridge) and the
    no-leakage guarantees.

    Parameters
    ----------
    feature_spaces : mapping name -> numpy.ndarray, each (n_samples, n_features_i)
        Features already at TR resolution (e.g. :func:`~bids_dnn.timeseries.lanczos_resample`
        per run), all runs concatenated in the order of ``bold``; finite. One space: ridge;
        several: banded ridge (one band per space).
    bold : numpy.ndarray, shape (n_samples, n_voxels)
        BOLD time series, all runs concatenated (float32 keeps the solver in float32).
        Voxels with a non-finite value or constant over all samples get NaN scores.
    runs : numpy.ndarray, shape (n_samples,)
        Run label of each sample (at least 2 runs).
    alphas : sequence of float
        Candidate ridge penalties (banded: overall penalties of the random search).
    delays : sequence of int
        FIR delays in samples (TRs). ``(0,)`` for features that already carry the
        hemodynamics (e.g. :func:`~bids_dnn.timeseries.hrf_convolve`).
    inner_folds : int
        Inner folds (grouped by run: leave-one-run-out over the training runs when they are
        fewer than this).
    standardize_features : bool
        z-score each feature within each run, and each delayed column with the outer
        training statistics (as ``cross_validated_ridge(standardize=True)``).
    standardize_bold : bool
        z-score each voxel within each run.
    pca : int, optional
        Keep this many principal components of each (delayed, standardised) space, fitted on
        the outer training runs only.
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya backend.
    memory_budget_bytes : int, optional
        Working memory of the solver (ridge: its target batches, default 256 MiB; banded:
        its voxel batches, default :data:`DEFAULT_BANDED_MEMORY_BYTES`, see
        :func:`banded_batches`). Does not change the results.
    seed : int
        Seed of the inner folds and of the random search of kernel weights.
    keep_predictions : bool
        Keep the out-of-fold predictions (``n_samples x n_voxels``) in the result.
    n_iter : int
        Banded: kernel-weight candidates of the random search (the first is uniform).
    concentration : sequence of float
        Banded: Dirichlet concentrations cycled through by the random search.
    dtype : {"float32", "float64"}, optional
        Precision of the products with the BOLD (default: the BOLD's dtype).

    Returns
    -------
    TimeseriesEncodingResult
    """
    if not isinstance(feature_spaces, Mapping) or len(feature_spaces) == 0:
        raise ValueError("feature_spaces must be a non-empty mapping name -> (n_samples, n_features) array")
    y = np.asarray(bold)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"bold must be (n_samples, n_voxels), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float64)
    n_samples, n_voxels = y.shape
    runs = _check_runs(runs, n_samples)
    delays = _check_delays(delays)
    if standardize_bold:
        y = zscore_by_run(y, runs)

    names = tuple(str(k) for k in feature_spaces)
    spaces = []
    for name, x in feature_spaces.items():
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] != n_samples:
            raise ValueError(f"feature space {name!r} must be (n_samples={n_samples}, n_features), "
                             f"got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"feature space {name!r} contains non-finite values")
        if standardize_features:
            x = zscore_by_run(x, runs)
        spaces.append(delay_features(x, delays, runs))

    folds = make_folds(n_samples, groups=runs)
    fold_runs = np.unique(runs)
    fold_ids = np.empty(n_samples, dtype=np.int64)
    for k, (_, test) in enumerate(folds):
        fold_ids[test] = k
    common = {"inner_folds": int(inner_folds), "inner_groups": runs, "standardize": bool(standardize_features),
              "pca": pca, "backend": backend, "seed": int(seed), "dtype": dtype}

    if len(spaces) == 1:
        res = cross_validated_ridge(spaces[0], y, folds, alphas, memory_budget_bytes=memory_budget_bytes,
                                    **common)
        split = intercept = weights = None
        model = "ridge"
    else:
        alphas_arr = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # banded_ridge warns itself, once per fold
            inner = [inner_folds_for(train, inner_folds=int(inner_folds), inner_groups=runs, seed=int(seed),
                                     outer_fold=k) for k, (train, _) in enumerate(folds)]
        itemsize = float_dtype(dtype, like=y).itemsize
        batch, inner_batch = banded_batches(n_voxels, folds, inner, len(spaces), alphas_arr.size, n_iter, itemsize,
                                            memory_budget_bytes)
        res = banded_ridge(spaces, y, folds, alphas, target_batch=batch, solver="random_search", n_iter=int(n_iter),
                           concentration=tuple(concentration), solver_params={"n_targets_batch": inner_batch},
                           **common)
        split, intercept, weights = res.r2_split, res.r2_intercept, res.space_weights
        model = "banded"
    return TimeseriesEncodingResult(
        r=res.r, r2=res.r2, fold_r=res.fold_r, fold_r2=res.fold_r2,
        alphas=res.alphas, r2_split=split, r2_intercept=intercept, space_weights=weights,
        predictions=res.predictions if keep_predictions else None, fold_ids=fold_ids, fold_runs=fold_runs,
        space_names=names, n_features=tuple(s.shape[1] for s in spaces), delays=delays, model=model)

