"""Weighted RSA (non-negative combinations of predictor RDMs) and variance partitioning.

Pure functions on RDM vectors (pairs in ``np.triu_indices(n_cond, k=1)`` order, see
:mod:`bids_dnn.rsa.rdm`); no I/O.

Weighted RSA
    A weighted model predicts ``sum_k theta_k R_k`` from predictor RDMs ``R_k`` (e.g. all layers
    of a network) with ``theta >= 0``. :func:`fit_nonnegative_weights` reproduces rsatoolbox's
    ``fit_regress_nn`` for ``ModelWeighted`` (``rsatoolbox.model.fitter``):

    1. several data RDMs are first pooled into one with ``rsatoolbox.util.pooling.pool_rdm``
       for the fit measure: ``cosine``: each RDM divided by its RMS, then averaged;
       ``pearson``: each RDM z-scored (SD with ddof 0), averaged, then shifted by
       ``-min + 0.01``; ``cosine_cov`` / ``corr_cov``: divided by the whitened norm
       ``sqrt(d^T V^-1 d)`` (after centring for ``corr_cov``), averaged (``corr_cov`` then
       shifted like ``pearson``). A single data RDM goes through the same normalisation;
    2. predictors are centred for ``pearson`` and ``corr_cov`` (the target too for
       ``corr_cov``), so the fit ignores the RDMs' means;
    3. ``theta = argmin_{theta >= 0} ||y - A^T theta||^2`` in the metric of the measure
       (identity for ``cosine`` / ``pearson``; ``V^-1``, the inverse covariance of RDM entries
       under i.i.d. pattern noise, for the ``_cov`` measures), plus ``ridge_weight ||theta||^2``,
       by the active-set algorithm of Lawson & Hanson on the Gram matrix ``A V^-1 A^T``;
    4. ``theta`` is scaled to unit Euclidean norm (``normalize=True``; the scale does not change
       any correlation or cosine). The predicted RDM is ``theta @ predictors``.

    The ``_cov`` metric is applied exactly through :func:`bids_dnn.rsa.compare.whiten_rdm_vectors`
    (``x^T V^-1 y`` equals the dot product of the whitened vectors); rsatoolbox solves
    ``V z = x`` with conjugate gradients (``scipy.sparse.linalg.cg``, ``rtol=1e-5``), which
    converges to rounding error here because ``V`` has only a few distinct eigenvalues (the
    weights agree to ~1e-15 in the tests; only a non-converged cg could differ). The fit
    measures are those of ``fit_regress_nn``: ``cosine``, ``pearson`` (rsatoolbox ``corr``),
    ``cosine_cov``, ``corr_cov``; rank measures cannot be fitted by regression, so
    cross-validation scored with ``spearman`` (or ``rho_a``, ``kendall_tau_a``) fits with
    ``pearson`` by default.
Cross-validation (:func:`crossvalidated_weighted_rsa`)
    ``cv="subjects"``: leave one subject (or one fold of subjects) out; fit on the pooled RDM of
    the training subjects (rsatoolbox pooling above), score the held-out subjects' RDMs.
    ``cv="stimuli"``: stimuli are split into folds (seeded); each fit sees only pairs of two
    training stimuli, each score only pairs of two test stimuli; a pair with one training and
    one test stimulus is used by neither (it would leak the training stimuli into the test
    score). Training uses every subject's RDM (pooled). Equal to rsatoolbox ``crossval`` with
    ``ModelWeighted`` and ``fit_regress_nn`` on the same train / test sets (fit and score measure
    equal).
Variance partitioning (:func:`rdm_variance_partitioning`)
    R2 of the least-squares regression (with intercept) of a data RDM on every non-empty union of
    predictor groups; unique and shared parts by inclusion-exclusion (see the function).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from bids_dnn.rsa.compare import COMPARISON_MEASURES, compare_rdms, whiten_rdm_vectors
from bids_dnn.rsa.measures import FIT_MEASURES
from bids_dnn.rsa.rdm import as_rdm_rows, n_cond_from_pairs, pair_indices

__all__ = [
    "pool_for_fit",
    "nnls_gram",
    "fit_nonnegative_weights",
    "predict_rdm",
    "WeightedRSAResult",
    "crossvalidated_weighted_rsa",
    "stimulus_folds",
    "VariancePartition",
    "rdm_variance_partitioning",
]

def _check_fit_measure(measure: str) -> None:
    if measure not in FIT_MEASURES:
        raise ValueError(f"cannot fit weights for measure {measure!r}: choose from "
                         f"{sorted(FIT_MEASURES)} (rank measures are not a least-squares "
                         "criterion; fit with 'pearson' and score with the rank measure)")


def _whitened_sq_norms(x: np.ndarray) -> np.ndarray:
    w = whiten_rdm_vectors(x)
    return np.einsum("ij,ij->i", w, w)


def pool_for_fit(rdms: np.ndarray, measure: str = "pearson") -> np.ndarray:
    """Pool data RDMs into the fit target, as rsatoolbox ``util.pooling.pool_rdm``.

    Parameters
    ----------
    rdms : np.ndarray, (n_rdms, n_pairs) or (n_pairs,)
    measure : str
        A key of ``FIT_MEASURES``.

    Returns
    -------
    np.ndarray, (n_pairs,)
        See the module docstring (step 1).
    """
    _check_fit_measure(measure)
    x = as_rdm_rows(rdms, "rdms")
    if measure == "cosine":
        x = x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
    elif measure == "pearson":
        x = x - x.mean(axis=1, keepdims=True)
        x = x / x.std(axis=1, keepdims=True)
    else:
        if measure == "corr_cov":
            x = x - x.mean(axis=1, keepdims=True)
        x = x / np.sqrt(_whitened_sq_norms(x))[:, None]
    pooled = x.mean(axis=0)
    if measure in ("pearson", "corr_cov"):
        pooled = pooled - pooled.min() + 0.01
    return pooled


def nnls_gram(gram: np.ndarray, b: np.ndarray, *, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares from normal equations: ``argmin_{x >= 0} x^T G x - 2 b^T x``.

    Lawson-Hanson active-set algorithm (as rsatoolbox ``_nn_least_squares``, which works on
    the same Gram form). Coordinates enter the passive set while their gradient ``b - G x``
    exceeds ``100 eps max(1, |b|_inf, |G|_inf)``.

    Parameters
    ----------
    gram : np.ndarray, (k, k)
        Symmetric positive semi-definite (``A^T A`` plus any ridge term).
    b : np.ndarray, (k,)
        ``A^T y``.
    max_iter : int, optional
        Outer iterations (default ``3 k + 10``).

    Returns
    -------
    np.ndarray, (k,)
        Non-negative solution (with a singular ``gram`` the minimum-norm solution of each
        passive subproblem is used).
    """
    gram = np.asarray(gram, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    k = b.size
    x = np.zeros(k)
    passive = np.zeros(k, dtype=bool)
    tol = 100 * np.finfo(float).eps * max(1.0, float(np.max(np.abs(b), initial=0)),
                                          float(np.max(np.abs(gram), initial=0)))

    def solve(mask: np.ndarray) -> np.ndarray:
        sub = gram[np.ix_(mask, mask)]
        try:
            return np.linalg.solve(sub, b[mask])
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(sub, b[mask], rcond=None)[0]

    for _ in range(3 * k + 10 if max_iter is None else max_iter):
        grad = b - gram @ x
        cand = np.where(~passive, grad, -np.inf)
        j = int(np.argmax(cand))
        if cand[j] <= tol:
            break
        passive[j] = True
        while True:
            s = np.zeros(k)
            s[passive] = solve(passive)
            if np.all(s[passive] > 0):
                x = s
                break
            # step towards s until the first passive coordinate hits 0; drop it (and any at 0)
            neg = passive & (s <= 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(neg, x / (x - s), np.inf)
            i = int(np.argmin(ratios))
            alpha = float(np.nan_to_num(ratios[i], nan=0.0))
            x = x + alpha * (s - x)
            x[i] = 0.0
            passive &= x > 0
            x[~passive] = 0.0
        if not passive[j]:  # rounding: the new coordinate could not enter; stop here
            break
    return x


def _design(predictors: np.ndarray, y: np.ndarray, measure: str
            ) -> tuple[np.ndarray, np.ndarray]:
    """Gram matrix (k, k) and right-hand side (k,) of the fit (module docstring, step 2-3)."""
    a = predictors
    if measure in ("pearson", "corr_cov"):
        a = a - a.mean(axis=1, keepdims=True)
    if measure == "corr_cov":
        y = y - y.mean()
    if measure in ("cosine_cov", "corr_cov"):
        wa = whiten_rdm_vectors(a)
        wy = whiten_rdm_vectors(y[None, :])[0]
        return wa @ wa.T, wa @ wy
    return a @ a.T, a @ y


def fit_nonnegative_weights(predictors: np.ndarray, target: np.ndarray, *, fit: str = "nnls",
                            measure: str = "pearson", ridge_weight: float = 0.0,
                            normalize: bool = True) -> np.ndarray:
    """Weights of a weighted RDM model (rsatoolbox ``ModelWeighted`` + ``fit_regress_nn``).

    Parameters
    ----------
    predictors : np.ndarray, (n_predictors, n_pairs)
        Predictor RDMs (e.g. one per layer).
    target : np.ndarray, (n_pairs,) or (n_targets, n_pairs)
        Data RDM(s), pooled (normalised and averaged) by :func:`pool_for_fit` first.
    fit : {"nnls", "ols"}
        ``nnls``: non-negative weights (= ``fit_regress_nn``); ``ols``: unconstrained weights
        (= rsatoolbox ``fit_regress``; may be negative).
    measure : str
        Fit criterion, a key of ``FIT_MEASURES`` (``cosine``, ``pearson``, ``cosine_cov``,
        ``corr_cov``).
    ridge_weight : float
        Ridge penalty added to the diagonal of the Gram matrix (rsatoolbox ``ridge_weight``).
    normalize : bool
        Scale the weights to unit Euclidean norm (rsatoolbox default; all-zero weights stay 0).

    Returns
    -------
    np.ndarray, (n_predictors,)
        Predicted RDM: ``weights @ predictors`` (:func:`predict_rdm`).
    """
    _check_fit_measure(measure)
    a = as_rdm_rows(predictors, "predictors")
    t = as_rdm_rows(target, "target")
    if t.shape[1] != a.shape[1]:
        raise ValueError(f"predictors and target differ in n_pairs ({a.shape[1]} vs "
                         f"{t.shape[1]})")
    y = pool_for_fit(t, measure)  # also a single RDM, as rsatoolbox (matters if not normalize)
    gram, rhs = _design(a, y, measure)
    gram = gram + float(ridge_weight) * np.eye(gram.shape[0])
    if fit == "nnls":
        theta = nnls_gram(gram, rhs)
    elif fit == "ols":
        theta = np.linalg.solve(gram, rhs)
    else:
        raise ValueError(f"unknown fit {fit!r}; choose 'nnls' or 'ols'")
    if normalize:
        norm = np.sqrt(np.sum(theta ** 2))
        if norm > 0:
            theta = theta / norm
    return theta


def predict_rdm(weights: np.ndarray, predictors: np.ndarray) -> np.ndarray:
    """Weighted model RDM ``weights @ predictors``: (n_predictors,), (n_predictors, n_pairs)
    -> (n_pairs,) (rsatoolbox ``ModelWeighted.predict``)."""
    return np.asarray(weights, dtype=np.float64) @ as_rdm_rows(predictors, "predictors")


# --------------------------------------------------------------------------- cross-validation
@dataclass(frozen=True)
class WeightedRSAResult:
    """Outcome of :func:`crossvalidated_weighted_rsa`.

    Attributes
    ----------
    scores : np.ndarray, (n_subjects,)
        Held-out score of each subject: its fold's score (``cv="subjects"``) or the mean over
        folds of its scores on each fold's test pairs (``cv="stimuli"``).
    fold_scores : np.ndarray, (n_folds, n_subjects)
        Score of each subject's held-out RDM in each fold; NaN where the subject is not tested
        (``cv="subjects"``: only the held-out subjects of the fold are).
    weights : np.ndarray, (n_folds, n_predictors)
        Weights fitted in each fold.
    single_scores : np.ndarray, (n_subjects, n_predictors)
        The same held-out scores for each predictor alone (no fitting), for comparison.
    folds : np.ndarray of int, (n_subjects,) or (n_cond,)
        Fold of each subject (``cv="subjects"``) or stimulus (``cv="stimuli"``).
    cv, measure, fit_measure : str
    """

    scores: np.ndarray
    fold_scores: np.ndarray
    weights: np.ndarray
    single_scores: np.ndarray
    folds: np.ndarray
    cv: str
    measure: str
    fit_measure: str

    @property
    def mean_score(self) -> float:
        """Mean held-out score over subjects (NaNs ignored)."""
        return float(np.nanmean(self.scores))


def stimulus_folds(n_cond: int, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Random, balanced assignment of stimuli to folds (sizes differ by at most one).

    Parameters
    ----------
    n_cond, n_folds : int
    rng : np.random.Generator

    Returns
    -------
    np.ndarray of int, (n_cond,)
        Fold label in ``0 .. n_folds - 1`` per stimulus.
    """
    if not 2 <= n_folds <= n_cond:
        raise ValueError(f"n_folds must lie in [2, {n_cond}], got {n_folds}")
    folds = np.empty(n_cond, dtype=np.int64)
    for f, part in enumerate(np.array_split(rng.permutation(n_cond), n_folds)):
        folds[part] = f
    return folds


def _sub_pairs(stimuli: np.ndarray, n_cond: int) -> np.ndarray:
    """Pair indices (in the full vector) of the pairs among ``stimuli`` (sorted), in the pair
    order of the sub-RDM of those stimuli."""
    stimuli = np.sort(np.asarray(stimuli, dtype=np.int64))
    rows, cols = pair_indices(n_cond)
    lookup = np.zeros((n_cond, n_cond), dtype=np.int64)
    lookup[rows, cols] = np.arange(rows.size)
    r, c = pair_indices(stimuli.size)
    return lookup[stimuli[r], stimuli[c]]


def crossvalidated_weighted_rsa(predictors: np.ndarray, data: np.ndarray, *,
                                cv: str = "subjects", measure: str = "spearman",
                                fit_measure: str | None = None, fit: str = "nnls",
                                n_folds: int | None = None,
                                rng: np.random.Generator | None = None,
                                folds: np.ndarray | None = None,
                                ridge_weight: float = 0.0) -> WeightedRSAResult:
    """Cross-validated weighted RSA: fit non-negative predictor weights on training data,
    score the weighted model RDM on held-out data.

    Parameters
    ----------
    predictors : np.ndarray, (n_predictors, n_pairs)
    data : np.ndarray, (n_subjects, n_pairs)
    cv : {"subjects", "stimuli"}
        ``subjects``: fit on the pooled RDM of the training subjects (all pairs), score each
        held-out subject's RDM (default: leave one subject out). ``stimuli``: fit on the pairs
        of two training stimuli (all subjects pooled), score each subject on the pairs of two
        test stimuli only; pairs mixing a training and a test stimulus are never used.
    measure : str
        Scoring measure, a key of ``COMPARISON_MEASURES``.
    fit_measure : str, optional
        Fit criterion (key of ``FIT_MEASURES``); default ``measure`` if it can be fitted, else
        ``"pearson"``.
    fit : {"nnls", "ols"}
        See :func:`fit_nonnegative_weights`.
    n_folds : int, optional
        ``subjects``: number of subject folds (default: one per subject); ``stimuli``: number of
        stimulus folds (default 5, at most ``n_cond // 3`` so that every test fold has >= 3
        stimuli).
    rng : np.random.Generator
        Assigns stimuli (or subjects, when ``n_folds`` < ``n_subjects``) to folds
        (:func:`stimulus_folds`); needed unless ``folds`` is given or for leave-one-subject-out.
    folds : np.ndarray of int, (n_subjects,) or (n_cond,), optional
        Explicit fold labels (``0 .. n_folds - 1``).
    ridge_weight : float
        Passed to :func:`fit_nonnegative_weights`.

    Returns
    -------
    WeightedRSAResult
        Held-out ``scores`` (n_subjects,), ``fold_scores`` (n_folds, n_subjects), fitted
        ``weights`` (n_folds, n_predictors) and ``single_scores`` (n_subjects, n_predictors).
    """
    if measure not in COMPARISON_MEASURES:
        raise ValueError(f"unknown comparison measure {measure!r}")
    if fit_measure is None:
        fit_measure = measure if measure in FIT_MEASURES else "pearson"
    _check_fit_measure(fit_measure)
    a = as_rdm_rows(predictors, "predictors")
    x = as_rdm_rows(data, "data")
    if a.shape[1] != x.shape[1]:
        raise ValueError(f"predictors and data differ in n_pairs ({a.shape[1]} vs "
                         f"{x.shape[1]})")
    n_subj, n_pairs = x.shape
    n_cond = n_cond_from_pairs(n_pairs)
    n_items = n_subj if cv == "subjects" else n_cond
    if cv not in ("subjects", "stimuli"):
        raise ValueError(f"unknown cv {cv!r}; choose 'subjects' or 'stimuli'")
    if folds is None:
        if cv == "subjects" and (n_folds is None or n_folds == n_subj):
            folds = np.arange(n_subj)
        else:
            if rng is None:
                raise ValueError("pass rng (a numpy Generator) or explicit folds")
            if n_folds is None:
                n_folds = min(5, n_cond // 3)
            folds = stimulus_folds(n_items, n_folds, rng)
    folds = np.asarray(folds, dtype=np.int64)
    if folds.shape != (n_items,) or folds.min() < 0:
        raise ValueError(f"folds must be ({n_items},) non-negative labels")
    labels = np.unique(folds)
    if cv == "subjects" and labels.size < 2:
        raise ValueError("cv='subjects' needs at least 2 subject folds")
    fold_scores = np.full((labels.size, n_subj), np.nan)
    single_fold = np.full((labels.size, n_subj, a.shape[0]), np.nan)
    weights = np.empty((labels.size, a.shape[0]))
    for f, label in enumerate(labels):
        test = folds == label
        if cv == "subjects":
            theta = fit_nonnegative_weights(a, x[~test], fit=fit, measure=fit_measure,
                                            ridge_weight=ridge_weight)
            pred = predict_rdm(theta, a)
            fold_scores[f, test] = compare_rdms(x[test], pred, measure)[:, 0]
            single_fold[f, test] = compare_rdms(x[test], a, measure)
        else:
            train_stim = np.flatnonzero(~test)
            test_stim = np.flatnonzero(test)
            if train_stim.size < 3 or test_stim.size < 3:
                raise ValueError("every stimulus fold and its complement need >= 3 stimuli")
            tr = _sub_pairs(train_stim, n_cond)
            te = _sub_pairs(test_stim, n_cond)
            theta = fit_nonnegative_weights(a[:, tr], x[:, tr], fit=fit, measure=fit_measure,
                                            ridge_weight=ridge_weight)
            pred = predict_rdm(theta, a[:, te])
            fold_scores[f] = compare_rdms(x[:, te], pred, measure)[:, 0]
            single_fold[f] = compare_rdms(x[:, te], a[:, te], measure)
        weights[f] = theta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        scores = np.nanmean(fold_scores, axis=0)
        single = np.nanmean(single_fold, axis=0)
    return WeightedRSAResult(scores, fold_scores, weights, single, folds, cv, measure,
                             fit_measure)


# --------------------------------------------------------------------------- variance partitioning
@dataclass(frozen=True)
class VariancePartition:
    """Outcome of :func:`rdm_variance_partitioning`.

    Attributes
    ----------
    groups : tuple of str
        Group names in input order.
    r2 : dict of tuple of str -> np.ndarray
        R2 of the regression on each non-empty union of groups (key: the group names in input
        order); arrays of shape ``()`` for one data RDM, ``(n_subjects,)`` for several.
    components : dict of str -> np.ndarray
        ``"unique:A"`` for every group; for 2-3 groups every Venn region
        ``"shared:A+B"`` (explained by exactly these groups jointly, by none alone), for 4
        groups ``"shared:total"`` (full R2 minus the sum of unique parts); ``"total"`` (full R2).
    method : str
    """

    groups: tuple[str, ...]
    r2: dict[tuple[str, ...], np.ndarray]
    components: dict[str, np.ndarray]
    method: str

    def to_records(self) -> list[dict[str, object]]:
        """Rows ``{"component", "value"}`` (``"subject"`` index added for several RDMs), for
        ``pandas.DataFrame``."""
        out: list[dict[str, object]] = []
        for name, val in self.components.items():
            v = np.asarray(val)
            if v.ndim == 0:
                out.append({"component": name, "value": float(v)})
            else:
                out.extend({"component": name, "subject": i, "value": float(x)}
                           for i, x in enumerate(v))
        return out


def _r2(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """R2 of ``y`` (n_y, n_pairs) regressed on the rows of ``x`` (k, n_pairs) with an
    intercept -> (n_y,)."""
    xc = (x - x.mean(axis=1, keepdims=True)).T  # (n_pairs, k)
    yc = (y - y.mean(axis=1, keepdims=True)).T  # (n_pairs, n_y)
    ss_tot = np.einsum("pi,pi->i", yc, yc)
    if method == "ols":
        coef = np.linalg.lstsq(xc, yc, rcond=None)[0]
        res = yc - xc @ coef
    elif method == "nnls":
        res = np.empty_like(yc)
        for i in range(yc.shape[1]):
            coef = scipy.optimize.nnls(xc, yc[:, i])[0]
            res[:, i] = yc[:, i] - xc @ coef
    else:
        raise ValueError(f"unknown method {method!r}; choose 'ols' or 'nnls'")
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - np.einsum("pi,pi->i", res, res) / ss_tot


def rdm_variance_partitioning(predictor_groups: Mapping[str, np.ndarray], data: np.ndarray, *,
                              method: str = "ols") -> VariancePartition:
    """Unique and shared variance of a data RDM explained by 2-4 groups of predictor RDMs.

    For every non-empty union ``U`` of groups, ``R2(U)`` is the coefficient of determination of
    the least-squares regression (with intercept) of the data RDM on all predictors in ``U``
    (``method="nnls"``: coefficients of the predictors constrained >= 0, intercept free). Let
    ``F(T) = R2(all) - R2(all \\ T)`` (``R2(empty) = 0``): the variance that only groups in ``T``
    can explain. Each Venn region (variance explained by exactly the groups in ``S`` jointly)
    follows by Moebius inversion, ``region(S) = sum_{T subset S} (-1)^(|S| - |T|) F(T)``:

    - unique ``A``: ``R2(all) - R2(all \\ A)``;
    - 2 groups: ``shared:A+B = R2(A) + R2(B) - R2(A, B)``;
    - 3 groups: ``shared:A+B = R2(A, C) + R2(B, C) - R2(C) - R2(A, B, C)`` (same for the other
      pairs), ``shared:A+B+C = R2(A) + R2(B) + R2(C) - R2(A, B) - R2(A, C) - R2(B, C)
      + R2(A, B, C)``;
    - 4 groups: the unique parts and ``shared:total = R2(all) - sum(unique)``.

    The regions sum to ``R2(all)``. Shared parts can be negative (suppression); they are
    reported as computed. Use the RDMs as they are (dissimilarities) or transform them first
    (e.g. rank-transform every RDM for a rank-based analysis).

    Parameters
    ----------
    predictor_groups : Mapping of str -> np.ndarray, each (n_k, n_pairs) or (n_pairs,)
        2 to 4 named groups (e.g. ``{"early": layers[:3], "late": layers[3:]}``).
    data : np.ndarray, (n_pairs,) or (n_subjects, n_pairs)
        One data RDM, or several analysed separately.
    method : {"ols", "nnls"}

    Returns
    -------
    VariancePartition
        ``r2`` per union and ``components``; values of shape ``()`` for 1-d ``data``, else
        ``(n_subjects,)``.
    """
    names = tuple(predictor_groups)
    if not 2 <= len(names) <= 4:
        raise ValueError(f"need 2 to 4 predictor groups, got {len(names)}")
    groups = {k: as_rdm_rows(v, f"predictor_groups[{k!r}]") for k, v in predictor_groups.items()}
    y = as_rdm_rows(data, "data")
    for k, v in groups.items():
        if v.shape[1] != y.shape[1]:
            raise ValueError(f"group {k!r} has {v.shape[1]} pairs, data {y.shape[1]}")
    squeeze = np.ndim(data) == 1
    r2: dict[tuple[str, ...], np.ndarray] = {}
    for size in range(1, len(names) + 1):
        for combo in itertools.combinations(names, size):
            val = _r2(np.vstack([groups[g] for g in combo]), y, method)
            r2[combo] = val[0] if squeeze else val

    def r2_of(members: Sequence[str]) -> np.ndarray:
        key = tuple(g for g in names if g in members)
        return r2[key] if key else np.zeros_like(r2[names])

    def f_of(subset: Sequence[str]) -> np.ndarray:  # explained only by groups in ``subset``
        return r2[names] - r2_of([g for g in names if g not in subset])

    components: dict[str, np.ndarray] = {}
    for g in names:
        components[f"unique:{g}"] = f_of([g])
    if len(names) <= 3:
        for size in range(2, len(names) + 1):
            for combo in itertools.combinations(names, size):
                total = np.zeros_like(r2[names])
                for k in range(1, size + 1):
                    for sub in itertools.combinations(combo, k):
                        total = total + (-1) ** (size - k) * f_of(sub)
                components["shared:" + "+".join(combo)] = total
    else:
        components["shared:total"] = r2[names] - sum(components[f"unique:{g}"] for g in names)
    components["total"] = r2[names]
    return VariancePartition(names, r2, components, method)
