"""Cross-validated linear probes: ridge read-outs of a stimulus annotation from a pattern matrix.

A pattern matrix is (n_stimuli, n_units): a DNN layer's activations or an ROI's response
patterns. The probe asks how well a linear read-out of the patterns predicts an annotation of
the stimuli (:mod:`bids_dnn.probing.annotations`) on held-out stimuli, on one scale for layers
and brain regions, with a stimulus-label permutation p-value. Pure functions on arrays; no
files, no printing.

Conventions
-----------
Models
    Categorical annotations: one-vs-rest ridge classifier as
    ``sklearn.linear_model.RidgeClassifier``: each class is a target column coded +1 (the
    class) / -1 (the others), fitted with an intercept; the decision is the argmax of the k
    class scores (first class on ties). With 2 classes a single column is fitted (+1 for the
    second class in sorted order) and the decision is its sign (the second class when > 0), as
    ``RidgeClassifier`` does. A class absent from a training set gets score ``-inf`` there (it
    never wins), as if it were unknown to that fit. Continuous annotations: ridge regression
    with an intercept (``sklearn.linear_model.Ridge``).
Penalty choice
    One alpha per outer fold (shared by all class columns), chosen by inner cross-validation on
    the outer training stimuli with the inner folds of :func:`bids_dnn.encoding.inner_folds_for`
    (``SeedSequence([seed, outer_fold])``, as :func:`bids_dnn.encoding.cross_validated_ridge`):
    categorical: the highest balanced accuracy (``sklearn.metrics.balanced_accuracy_score`` of
    each validation fold, over the classes present in it) averaged over the inner folds, scores
    within 1e-12 of the best counting as ties; continuous: the lowest validation mean squared
    error averaged over the inner folds. Ties go to the larger alpha. This is
    ``GridSearchCV(RidgeClassifier(), {"alpha": alphas}, cv=inner, scoring="balanced_accuracy")``
    (``Ridge()`` with ``"neg_mean_squared_error"``) with the alphas in descending order.
Training-only fitting
    Features are centred with the training means (z-scored with the training SD when
    ``standardize=True``; a constant column gets SD 1); the intercept is the training mean of
    each target column. Inner folds reuse the outer fold's scaling but re-centre within each
    inner training set (as ``cross_validated_ridge``). Test stimuli and their labels never
    enter a fit.
Scores
    Categorical: balanced accuracy (mean recall over the classes) of the out-of-fold predictions
    pooled over the test folds; chance ``1 / n_classes``; ``accuracy`` is the plain fraction
    correct. Continuous: the Pearson r between predictions and targets *within each test fold*,
    averaged over the folds where it is defined (a fold needs >= 2 stimuli with distinct
    targets), chance 0 -- not the r of the pooled predictions, which is biased negative under
    the null (see :mod:`bids_dnn.encoding.ridge`); ``r2`` is the R2 of the pooled predictions
    around the mean of the tested targets.
Permutation test
    The labels of the stimuli with a value are permuted and the whole procedure, inner-CV
    alpha choice included, is rerun on each permuted label vector. Each permutation draws
    ``sigma = rng.permutation(n_used)`` (in order; ``n_used``: stimuli with a value, in their
    order). Without ``permutation_groups`` stimulus ``i`` takes the label of stimulus
    ``sigma[i]``. With groups, labels move only within a group: the members ``m_1 < ... < m_s``
    of a group take, in turn, the labels of its members sorted by their ``sigma`` values (a
    uniform permutation within each group). ``permutation_groups="folds"`` groups the stimuli
    by outer test fold, which keeps every fold's class counts: required when the folds were
    built from the labels (:func:`stratified_folds`), since permuted labels are otherwise not
    balanced over the folds as the observed ones are, and their scores fall below chance,
    making p too small. ``p = (1 + #{null >= score - atol}) / (1 + n_permutations)`` (NaN
    without permutations).
Computation
    Kernel (dual) form through the eigendecomposition of the centred training Gram matrix of
    each (outer, inner) fold when there are more units than training stimuli, else the SVD of
    the centred training patterns (primal form): the same numbers. Decompositions do not depend
    on the labels, so every alpha and every permuted label vector costs products only;
    permutations are processed in chunks of about ``memory_bytes`` of working memory (the
    generator is replayed for each outer fold, so memory does not grow with the number of
    permutations and the results do not depend on the chunk size). Everything is float64.
Missing values
    Stimuli whose annotation is missing are dropped from every fold (training and test) and
    get no prediction (None / NaN). A test fold left without stimuli raises ``ValueError``.
Folds and chance
    With folds that ignore the classes (:func:`bids_dnn.encoding.make_folds`), a training set
    over-represents the classes its test fold lacks; the intercepts follow the training
    proportions, so patterns without information score *below* ``1 / n_classes`` (markedly so
    with few stimuli per class and strong penalties). The permuted label vectors share this
    bias, so the p-value stays valid, but the score is best read against chance with
    class-balanced folds: :func:`stratified_folds` deals every class evenly over the folds
    (and, for continuous annotations, every block of ``n_folds`` neighbouring values).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_dnn.encoding import check_folds, inner_folds_for, pearson_columns, r2_columns
from bids_dnn.probing.annotations import PROBE_KINDS, EncodedAnnotation

__all__ = ["ProbeResult", "ridge_probe", "stratified_folds", "DEFAULT_PROBE_MEMORY_BYTES"]

#: working memory of one chunk of permuted label vectors when no budget is given
DEFAULT_PROBE_MEMORY_BYTES = 256 * 2**20
_GRAM_CHUNK_BYTES = 64 * 2**20      # float64 column block of the patterns while forming Gram matrices
_BA_TIE = 1e-12                     # balanced accuracies within this of the best are ties


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :func:`ridge_probe` (n_stimuli = rows of the patterns).

    Attributes
    ----------
    kind : {"categorical", "continuous"}
        The annotation's kind.
    score : float
        Categorical: pooled balanced accuracy; continuous: mean over folds of the within-fold
        Pearson r.
    chance : float
        The score's chance level: ``1 / n_classes`` or 0.
    p_permutation : float
        One-sided label-permutation p-value (NaN without permutations or without a score).
    null : numpy.ndarray, shape (n_permutations,)
        Scores of the permuted label vectors.
    accuracy : float
        Categorical: fraction of tested stimuli predicted correctly; NaN for continuous.
    r2 : float
        Continuous: R2 of the pooled out-of-fold predictions; NaN for categorical.
    predictions : numpy.ndarray, shape (n_stimuli,)
        Out-of-fold predictions: class labels (object array of str, None where not predicted)
        or floats (NaN where not predicted: missing or never in a test fold).
    alphas : numpy.ndarray, shape (n_folds,)
        The alpha chosen in each outer fold (for the observed labels).
    fold_scores : numpy.ndarray, shape (n_folds,)
        Score within each test fold: balanced accuracy over the classes present there, or the
        Pearson r (NaN where undefined).
    n_classes : int or None
        Number of classes (categorical), None (continuous).
    n_samples : int
        Number of stimuli scored (with a value and in a test fold).
    classes : list of str
        The class labels (categorical; empty for continuous).
    """

    kind: str
    score: float
    chance: float
    p_permutation: float
    null: np.ndarray
    accuracy: float
    r2: float
    predictions: np.ndarray
    alphas: np.ndarray
    fold_scores: np.ndarray
    n_classes: int | None
    n_samples: int
    classes: list[str]


# --------------------------------------------------------------------------- folds
def stratified_folds(annotation: EncodedAnnotation, n_folds: int = 5, *,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer folds that spread the annotation evenly: every stimulus in exactly one test fold.

    Categorical: the stimuli of each class (classes in order, each shuffled) are dealt round-robin
    into the folds, continuing from class to class, so each class' count differs by at most one
    between folds (as do the fold sizes). Continuous: the stimuli sorted by value are cut into
    blocks of ``n_folds`` neighbours, and each block's stimuli go to distinct folds in a random
    order. Missing stimuli are dealt last (the probe drops them).

    Parameters
    ----------
    annotation : EncodedAnnotation
        From :func:`bids_dnn.probing.encode_annotation`.
    n_folds : int
        Number of folds, from 2 to the number of stimuli with a value.
    seed : int
        Seed of the shuffles (``numpy.random.default_rng(seed)``).

    Returns
    -------
    list of (train, test)
        Sorted int64 index arrays over all stimuli, as :func:`bids_dnn.encoding.make_folds`.

    Notes
    -----
    These folds depend on the labels: give :func:`ridge_probe` ``permutation_groups="folds"``
    so that the permuted labels keep each fold's composition too (see the module docstring).
    """
    if not isinstance(annotation, EncodedAnnotation) or annotation.kind not in PROBE_KINDS:
        raise ValueError("annotation must be an EncodedAnnotation (see encode_annotation)")
    missing = np.asarray(annotation.missing, dtype=bool)
    present = np.flatnonzero(~missing)
    k = int(n_folds)
    if not 2 <= k <= present.size:
        raise ValueError(f"n_folds must be in [2, {present.size}] (stimuli with a value), got {n_folds}")
    gen = np.random.default_rng(seed)
    fold_of = np.empty(annotation.n_stimuli, dtype=np.int64)
    if annotation.kind == "categorical":
        codes = np.asarray(annotation.targets)
        order = np.concatenate([gen.permutation(present[codes[present] == q]) for q in range(len(annotation.classes))]
                               + [gen.permutation(np.flatnonzero(missing))])
        fold_of[order] = np.arange(order.size) % k
    else:
        values = np.asarray(annotation.targets, dtype=np.float64)
        ranked = present[np.argsort(values[present], kind="stable")]
        for start in range(0, ranked.size, k):
            block = ranked[start:start + k]
            fold_of[block] = gen.permutation(k)[:block.size]
        extra = gen.permutation(np.flatnonzero(missing))
        fold_of[extra] = np.arange(extra.size) % k
    everything = np.arange(annotation.n_stimuli)
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


# --------------------------------------------------------------------------- input checks
def _check_patterns(patterns: Any, n_stimuli: int) -> np.ndarray:
    x = np.asarray(patterns)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] != n_stimuli:
        raise ValueError(f"patterns must be (n_stimuli={n_stimuli}, n_units), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError("patterns have no columns (units)")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"patterns must be numeric, got dtype {x.dtype}")
    return x


def _check_alphas(alphas: Any) -> np.ndarray:
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("alphas must be a non-empty list of positive finite numbers")
    return np.unique(a)[::-1].copy()      # descending: the first of equal scores is the larger alpha


def _reduced_folds(folds: Any, n_stimuli: int, used: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer folds over all stimuli -> folds over the used (non-missing) stimuli' positions."""
    position = np.full(n_stimuli, -1, dtype=np.int64)
    position[used] = np.arange(used.size)
    out = []
    for k, (train, test) in enumerate(check_folds(folds, n_stimuli)):
        tr, te = position[train], position[test]
        tr, te = tr[tr >= 0], te[te >= 0]
        if te.size == 0:
            raise ValueError(f"outer fold {k}: every test stimulus lacks the annotation; no stimulus left to test")
        if tr.size < 2:
            raise ValueError(f"outer fold {k}: fewer than 2 training stimuli have the annotation")
        out.append((tr, te))
    return out


def _permutation_groups(groups: str | np.ndarray | None, folds: list[tuple[np.ndarray, np.ndarray]],
                        used: np.ndarray, n_stimuli: int) -> np.ndarray | None:
    """Group code of each used stimulus for within-group permutations (None: no groups)."""
    if groups is None:
        return None
    if isinstance(groups, str):
        if groups != "folds":
            raise ValueError(f"permutation_groups must be 'folds', an array or None, got {groups!r}")
        out = np.full(used.size, -1, dtype=np.int64)               # stimuli never tested: one group
        for k, (_, test) in enumerate(folds):
            out[test] = k
        return out
    labels = np.asarray(groups)
    if labels.shape != (n_stimuli,):
        raise ValueError(f"permutation_groups must have shape ({n_stimuli},), got {labels.shape}")
    return np.unique(labels[used], return_inverse=True)[1].astype(np.int64)


def _source_of(sigma: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Whose label each stimulus takes under the drawn permutation ``sigma`` (module docstring)."""
    if groups is None:
        return sigma
    source = np.empty_like(sigma)
    source[np.argsort(groups, kind="stable")] = np.lexsort((sigma, groups))
    return source


# --------------------------------------------------------------------------- features -> spectra
def _column_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _GRAM_CHUNK_BYTES // (8 * max(n_rows, 1)))
    for start in range(0, n_cols, step):
        yield slice(start, min(start + step, n_cols))


def _sd_floor(sd: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Training SD with near-constant columns set to 1 (``StandardScaler``'s rule as in encoding)."""
    return np.where(sd > 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0), sd, 1.0)


def _prepared_block(x: np.ndarray, rows: np.ndarray, cols: slice, centre: np.ndarray,
                    scale: np.ndarray | None) -> np.ndarray:
    block = np.asarray(x[rows, cols], dtype=np.float64) - centre[cols]
    if not np.isfinite(block).all():
        raise ValueError("patterns contain non-finite values (for stimuli with an annotation)")
    if scale is not None:
        block /= scale[cols]
    return block


def _fold_statistics(x: np.ndarray, rows: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Column means (and SDs) of ``x[rows]``, block by block."""
    p = x.shape[1]
    mean = np.empty(p)
    sd = np.empty(p) if standardize else None
    for cols in _column_blocks(rows.size, p):
        block = np.asarray(x[rows, cols], dtype=np.float64)
        if not np.isfinite(block).all():
            raise ValueError("patterns contain non-finite values (for stimuli with an annotation)")
        mean[cols] = block.mean(axis=0)
        if sd is not None:
            sd[cols] = block.std(axis=0)
    return mean, None if sd is None else _sd_floor(sd, mean)


def _gram(x: np.ndarray, rows: np.ndarray, centre: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """``Xp Xp'`` of the prepared rows ``Xp = (x[rows] - centre) / scale``, block by block."""
    gram = np.zeros((rows.size, rows.size))
    for cols in _column_blocks(rows.size, x.shape[1]):
        block = _prepared_block(x, rows, cols, centre, scale)
        gram += block @ block.T
    return gram


@dataclass
class _Spectrum:
    """A centred ridge fit's decomposition: centred training Gram ``= basis diag(lam) basis'``,
    ``cross = centred (predicted x training) Gram @ basis``."""

    basis: np.ndarray     # (n_fit, r)
    lam: np.ndarray       # (r,)
    cross: np.ndarray     # (n_pred, r)

    def filters(self, alphas: np.ndarray) -> np.ndarray:
        """(n_alphas, r) ridge shrinkage ``1 / (lam + alpha)``."""
        return 1.0 / (self.lam[None, :] + alphas[:, None])


def _kernel_spectrum(gram: np.ndarray, fit: np.ndarray, pred: np.ndarray) -> _Spectrum:
    """From a Gram of prepared patterns: centre with the mean of the ``fit`` rows, eigendecompose."""
    kff = gram[np.ix_(fit, fit)]
    kpf = gram[np.ix_(pred, fit)]
    col = kff.mean(axis=0)
    total = col.mean()
    kff = kff - col[None, :] - col[:, None] + total
    kff = 0.5 * (kff + kff.T)
    kpf = kpf - kpf.mean(axis=1)[:, None] - col[None, :] + total
    lam, vec = np.linalg.eigh(kff)
    keep = lam > max(lam.max(initial=0.0), 0.0) * fit.size * np.finfo(np.float64).eps
    basis = vec[:, keep]
    return _Spectrum(basis=basis, lam=lam[keep], cross=kpf @ basis)


def _primal_spectrum(features: np.ndarray, fit: np.ndarray, pred: np.ndarray) -> _Spectrum:
    """From prepared patterns (fewer units than fit rows): SVD of the centred ``fit`` rows."""
    mean = features[fit].mean(axis=0)
    u, s, vt = np.linalg.svd(features[fit] - mean, full_matrices=False)
    lam = s * s
    keep = lam > max(lam.max(initial=0.0), 0.0) * max(fit.size, features.shape[1]) * np.finfo(np.float64).eps
    cross = (features[pred] - mean) @ (vt[keep].T * s[keep][None, :])
    return _Spectrum(basis=u[:, keep], lam=lam[keep], cross=cross)


class _OuterFold:
    """Decompositions of one outer fold: one per inner fold and one for the refit."""

    def __init__(self, x: np.ndarray, used: np.ndarray, tr: np.ndarray, te: np.ndarray,
                 inner: Sequence[tuple[np.ndarray, np.ndarray]], standardize: bool,
                 global_gram: dict[str, Any]) -> None:
        """``x``: all patterns; ``used``: rows of the stimuli with a value; ``tr``, ``te``, ``inner``:
        positions among ``used``; ``global_gram``: shared cache (``"mean"``, ``"gram"`` of ``used``)."""
        sub = np.concatenate([tr, te])
        rows = used[sub]
        n_tr = tr.size
        if x.shape[1] < n_tr:          # primal: the prepared patterns of this fold are small
            if standardize:
                centre, scale = _fold_statistics(x, used[tr], True)
            else:
                centre, scale = global_gram["mean"], None
            features = _prepared_block(x, rows, slice(None), centre, scale)

            def spectrum(fit: np.ndarray, pred: np.ndarray) -> _Spectrum:
                return _primal_spectrum(features, fit, pred)
        else:
            if standardize:
                centre, scale = _fold_statistics(x, used[tr], True)
                gram = _gram(x, rows, centre, scale)
            else:
                if "gram" not in global_gram:
                    global_gram["gram"] = _gram(x, used, global_gram["mean"], None)
                gram = global_gram["gram"][np.ix_(sub, sub)]

            def spectrum(fit: np.ndarray, pred: np.ndarray) -> _Spectrum:
                return _kernel_spectrum(gram, fit, pred)
        self.inner = [(np.asarray(t), np.asarray(v), spectrum(np.asarray(t), np.asarray(v))) for t, v in inner]
        self.full = spectrum(np.arange(n_tr), np.arange(n_tr, n_tr + te.size))


# --------------------------------------------------------------------------- targets and decisions
def _target_columns(labels: np.ndarray, kind: str, n_classes: int) -> np.ndarray:
    """(n, c) label vectors -> (n, c * width) float64 ridge targets (width 1, or n_classes for > 2
    classes; +1 / -1 coding)."""
    if kind == "continuous":
        return labels.astype(np.float64)
    if n_classes == 2:
        return np.where(labels == 1, 1.0, -1.0)
    onehot = labels[:, :, None] == np.arange(n_classes)[None, None, :]
    return np.where(onehot, 1.0, -1.0).reshape(labels.shape[0], -1)


def _present_classes(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(c, n_classes) whether each class occurs in each label vector (rows = stimuli)."""
    return (labels[:, :, None] == np.arange(n_classes)[None, None, :]).any(axis=0)


def _decide(scores: np.ndarray, n_classes: int, present: np.ndarray | None) -> np.ndarray:
    """(n, c * width) decision scores -> (n, c) predicted class codes."""
    if n_classes == 2:
        return (scores > 0).astype(np.int64)
    s = scores.reshape(scores.shape[0], -1, n_classes)
    if present is not None and not present.all():
        s = np.where(present[None, :, :], s, -np.inf)
    return s.argmax(axis=2)


def _balanced_accuracy(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, c) codes -> (c,) mean recall over the classes present in each column of ``true``
    (``sklearn.metrics.balanced_accuracy_score``)."""
    total = np.zeros(true.shape[1])
    present = np.zeros(true.shape[1])
    for q in range(n_classes):
        is_q = true == q
        count = is_q.sum(axis=0)
        hits = (is_q & (pred == q)).sum(axis=0)
        total += np.where(count > 0, hits / np.maximum(count, 1), 0.0)
        present += count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present > 0, total / np.maximum(present, 1), np.nan)


def _ridge_predict(spec: _Spectrum, y_fit: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Predictions for ``spec``'s predicted rows: ``cross diag(f) basis' (y - mean) + mean``;
    ``filters`` is (r,) (one alpha) or (r, n_columns) (one per column)."""
    mean = y_fit.mean(axis=0)
    z = spec.basis.T @ (y_fit - mean)
    z *= filters[:, None] if filters.ndim == 1 else filters
    return spec.cross @ z + mean


def _choose_alphas(fold: _OuterFold, labels_tr: np.ndarray, kind: str, n_classes: int,
                   alphas: np.ndarray) -> np.ndarray:
    """(n_tr, c) training label vectors -> (c,) index (into ``alphas``, descending) of each
    vector's inner-CV alpha."""
    n_vectors = labels_tr.shape[1]
    score = np.zeros((alphas.size, n_vectors))
    for t, v, spec in fold.inner:
        lt, lv = labels_tr[t], labels_tr[v]
        y_fit = _target_columns(lt, kind, n_classes)
        present = _present_classes(lt, n_classes) if kind == "categorical" else None
        mean = y_fit.mean(axis=0)
        z = spec.basis.T @ (y_fit - mean)                      # (r, columns): the same for every alpha
        filters = spec.filters(alphas)
        for a in range(alphas.size):
            pred = spec.cross @ (z * filters[a][:, None]) + mean
            if kind == "continuous":
                score[a] += ((lv - pred) ** 2).mean(axis=0)
            else:
                score[a] += _balanced_accuracy(lv, _decide(pred, n_classes, present), n_classes)
    score /= len(fold.inner)
    if kind == "continuous":
        return score.argmin(axis=0)              # first = largest alpha among exact ties
    return (score >= score.max(axis=0) - _BA_TIE).argmax(axis=0)


# --------------------------------------------------------------------------- the probe
def ridge_probe(patterns: np.ndarray, annotation: EncodedAnnotation, folds: Sequence[tuple[np.ndarray, np.ndarray]],
                alphas: Sequence[float], *, inner_folds: int = 5, inner_groups: np.ndarray | None = None,
                seed: int = 0, n_permutations: int = 0, rng: np.random.Generator | None = None,
                permutation_groups: str | np.ndarray | None = None, standardize: bool = False, atol: float = 1e-12,
                memory_bytes: int | None = None) -> ProbeResult:
    """Cross-validated ridge probe of an annotation from a pattern matrix, with a permutation p.

    For each outer fold, the alpha is chosen by inner cross-validation on the training stimuli,
    the probe is refitted on all training stimuli and predicts the test stimuli; the pooled
    out-of-fold predictions are scored. See the module docstring for every convention; with the
    same folds the predictions equal scikit-learn's ``GridSearchCV`` over ``RidgeClassifier`` /
    ``Ridge`` (tested).

    Parameters
    ----------
    patterns : numpy.ndarray, shape (n_stimuli, n_units)
        Activations of a DNN layer or response patterns of an ROI (finite for the stimuli with
        an annotation).
    annotation : EncodedAnnotation
        From :func:`bids_dnn.probing.encode_annotation`; stimuli with a missing value are left
        out.
    folds : sequence of (train, test)
        Outer folds over all n_stimuli (e.g. :func:`bids_dnn.encoding.make_folds`); test folds
        disjoint. Missing stimuli are dropped from each fold; a test fold left empty raises.
    alphas : sequence of float
        Candidate ridge penalties (positive).
    inner_folds : int
        Number of inner folds (:func:`bids_dnn.encoding.inner_folds_for`; at most the number
        of training stimuli).
    inner_groups : numpy.ndarray, shape (n_stimuli,), optional
        Group (run) of every stimulus, for grouped inner folds.
    seed : int
        Seed of the inner folds (``SeedSequence([seed, outer_fold])``), and of the permutations
        when ``rng`` is not given (``numpy.random.default_rng(seed)``).
    n_permutations : int
        Number of label permutations (0: no p-value).
    rng : numpy.random.Generator, optional
        Draws ``rng.permutation(n_used)`` once per permutation, in order (``n_used``: stimuli
        with a value); advanced by exactly those draws.
    permutation_groups : {"folds"} or numpy.ndarray, shape (n_stimuli,), optional
        Permute labels only within groups: ``"folds"`` (each outer test fold is a group; use it
        with :func:`stratified_folds`) or a group label per stimulus (e.g. runs). Default: all
        stimuli with a value are exchangeable.
    standardize : bool
        z-score the units with the training SD (they are centred in any case).
    atol : float
        Tolerance of ``null >= score``.
    memory_bytes : int, optional
        Working memory of one chunk of label vectors (default
        :data:`DEFAULT_PROBE_MEMORY_BYTES`); does not change the results.

    Returns
    -------
    ProbeResult

    Raises
    ------
    ValueError
        Wrong shapes, non-finite patterns, bad alphas or folds, an unknown annotation kind, or a
        test fold without annotated stimuli.
    """
    if not isinstance(annotation, EncodedAnnotation) or annotation.kind not in PROBE_KINDS:
        raise ValueError("annotation must be an EncodedAnnotation (see encode_annotation) of kind "
                         f"{PROBE_KINDS}")
    kind = annotation.kind
    n_stimuli = annotation.n_stimuli
    x = _check_patterns(patterns, n_stimuli)
    alpha_grid = _check_alphas(alphas)
    if int(inner_folds) < 2:
        raise ValueError(f"inner_folds must be >= 2, got {inner_folds}")
    n_permutations = int(n_permutations)
    if n_permutations < 0:
        raise ValueError(f"n_permutations must be >= 0, got {n_permutations}")
    missing = np.asarray(annotation.missing, dtype=bool)
    if missing.shape != (n_stimuli,):
        raise ValueError("annotation.missing must have one entry per stimulus")
    used = np.flatnonzero(~missing)
    n_used = used.size
    folds_r = _reduced_folds(folds, n_stimuli, used)
    groups = None if inner_groups is None else np.asarray(inner_groups)
    if groups is not None:
        if groups.shape != (n_stimuli,):
            raise ValueError(f"inner_groups must have shape ({n_stimuli},), got {groups.shape}")
        groups = groups[used]
    classes = list(annotation.classes) if kind == "categorical" else []
    n_classes = len(classes)
    if kind == "categorical":
        targets = np.asarray(annotation.targets, dtype=np.int64)[used]
        if n_classes < 2 or targets.min() < 0 or targets.max() >= n_classes:
            raise ValueError("categorical annotation codes must index its classes (>= 2 of them)")
    else:
        targets = np.asarray(annotation.targets, dtype=np.float64)[used]
        if not np.isfinite(targets).all():
            raise ValueError("continuous annotation values must be finite where not missing")

    perm_groups = _permutation_groups(permutation_groups, folds_r, used, n_stimuli)
    if rng is None:
        rng = np.random.default_rng(seed)
    start_state = copy.deepcopy(rng)
    width = n_classes if n_classes > 2 else 1
    n_vectors = 1 + n_permutations
    n_tr_max = max(tr.size for tr, _ in folds_r)
    per_vector = 8 * width * 4 * n_tr_max + 8 * n_used
    chunk = int(max(1, min(n_vectors, (memory_bytes or DEFAULT_PROBE_MEMORY_BYTES) // per_vector)))

    n_folds = len(folds_r)
    chosen = np.full(n_folds, np.nan)
    fold_scores = np.full(n_folds, np.nan)
    observed_pred = np.full(n_used, np.nan) if kind == "continuous" else np.full(n_used, -1, dtype=np.int64)
    tested = np.zeros(n_used, dtype=bool)
    fold_r = np.full((n_folds, n_vectors), np.nan)                        # continuous
    class_total = np.zeros((max(n_classes, 1), n_vectors))                # categorical, pooled
    class_hits = np.zeros((max(n_classes, 1), n_vectors))
    global_gram: dict[str, Any] = {}
    if not standardize:
        global_gram["mean"] = _fold_statistics(x, used, False)[0]
    draws = start_state

    for k, (tr, te) in enumerate(folds_r):
        inner = inner_folds_for(tr, inner_folds=int(inner_folds), inner_groups=groups, seed=seed, outer_fold=k)
        fold = _OuterFold(x, used, tr, te, inner, standardize, global_gram)
        full_filters = fold.full.filters(alpha_grid)                   # (A, r)
        tested[te] = True
        draws = copy.deepcopy(start_state)                             # the same permutations in every fold
        for j0 in range(0, n_vectors, chunk):
            j1 = min(j0 + chunk, n_vectors)
            columns = []
            if j0 == 0:
                columns.append(targets[:, None])
            n_draw = j1 - max(j0, 1)
            if n_draw > 0:
                perms = np.stack([_source_of(draws.permutation(n_used), perm_groups) for _ in range(n_draw)],
                                 axis=1)                                   # (n_used, n_draw)
                columns.append(targets[perms])
            labels = np.concatenate(columns, axis=1)                   # (n_used, j1 - j0)
            l_tr, l_te = labels[tr], labels[te]
            best = _choose_alphas(fold, l_tr, kind, n_classes, alpha_grid)
            filters = np.repeat(full_filters[best].T, width, axis=1)   # (r, columns)
            scores = _ridge_predict(fold.full, _target_columns(l_tr, kind, n_classes), filters)
            if kind == "continuous":
                fold_r[k, j0:j1] = pearson_columns(l_te, scores) if te.size >= 2 else np.nan
                if j0 == 0:
                    observed_pred[te] = scores[:, 0]
            else:
                present = _present_classes(l_tr, n_classes)
                pred = _decide(scores, n_classes, present)
                for q in range(n_classes):
                    is_q = l_te == q
                    class_total[q, j0:j1] += is_q.sum(axis=0)
                    class_hits[q, j0:j1] += (is_q & (pred == q)).sum(axis=0)
                if j0 == 0:
                    observed_pred[te] = pred[:, 0]
                    fold_scores[k] = _balanced_accuracy(l_te[:, :1], pred[:, :1], n_classes)[0]
            if j0 == 0:
                chosen[k] = alpha_grid[best[0]]
    if n_permutations:
        rng.bit_generator.state = draws.bit_generator.state          # as if drawn once, in order

    if kind == "continuous":
        finite = np.isfinite(fold_r)
        count = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            all_scores = np.where(count > 0, np.where(finite, fold_r, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
        fold_scores = fold_r[:, 0].copy()
        r2 = float(r2_columns(targets[tested][:, None], observed_pred[tested][:, None])[0])
        accuracy = float("nan")
        chance = 0.0
        predictions = np.full(n_stimuli, np.nan)
        predictions[used] = observed_pred
    else:
        recall_sum = np.zeros(n_vectors)
        n_present = np.zeros(n_vectors)
        for q in range(n_classes):
            has = class_total[q] > 0
            recall_sum += np.where(has, class_hits[q] / np.maximum(class_total[q], 1), 0.0)
            n_present += has
        with np.errstate(invalid="ignore", divide="ignore"):
            all_scores = np.where(n_present > 0, recall_sum / np.maximum(n_present, 1), np.nan)
        accuracy = float(class_hits[:, 0].sum() / max(class_total[:, 0].sum(), 1))
        r2 = float("nan")
        chance = 1.0 / n_classes
        predictions = np.full(n_stimuli, None, dtype=object)
        for i, code in zip(used, observed_pred):
            if code >= 0:
                predictions[i] = classes[code]

    score = float(all_scores[0])
    null = np.asarray(all_scores[1:], dtype=np.float64)
    if n_permutations and np.isfinite(score):
        p_value = float((1 + np.count_nonzero(null >= score - atol)) / (1 + n_permutations))
    else:
        p_value = float("nan")
    return ProbeResult(kind=kind, score=score, chance=chance, p_permutation=p_value, null=null,
                       accuracy=accuracy, r2=r2, predictions=predictions, alphas=chosen,
                       fold_scores=fold_scores, n_classes=n_classes if kind == "categorical" else None,
                       n_samples=int(tested.sum()), classes=classes)
