"""Feature decoding: cross-validated ridge from brain patterns to every unit of a DNN layer,
then stimulus identification from the decoded feature vectors (Horikawa & Kamitani 2017).

Pure functions on arrays (numpy in, numpy out); no files, no printing.

Conventions
-----------
Decoder
    :func:`decode_features` is :func:`bids_dnn.encoding.cross_validated_ridge` run in the
    decoding direction: the brain patterns are the ridge's features and the DNN units its
    targets. Every convention of that function holds (see :mod:`bids_dnn.encoding.ridge`):
    all statistics are fitted on the outer training stimuli only; each unit gets its own
    alpha by inner cross-validation (``himalaya``'s score: minus the mean validation MSE;
    ties to the larger alpha); the held-out ``r`` of a unit is the Pearson r *within each
    test fold*, averaged over the folds; a unit constant over all stimuli (or within a test
    fold / the training folds) has NaN ``r``.
Identification
    A stimulus's out-of-fold prediction comes from the decoder of its test fold, which never saw
    the fold's stimuli but was fitted on all the others. By default (``candidates="fold"``) each
    prediction is therefore identified among the stimuli of its own test fold only, as Kay et
    al. (2008) and Horikawa & Kamitani (2017) identify among images their decoder was not
    trained on: the tested stimuli's features are correlated with the predictions
    (:func:`bids_dnn.decoding.similarity_matrix`, the tested stimuli's mean pattern removed with
    ``centre=True``), entries across folds are left out, and
    :func:`bids_dnn.decoding.identification_test` (``groups`` = the folds) scores pairwise and
    top-1 identification. Each fold is tested with its own candidate-label permutations (exact
    within a fold) and the folds' p-values are merged as ``min(1, 2 x mean)``, valid under any
    dependence between folds (Vovk & Wang 2020); pooling the folds under one permutation null
    is anti-conservative, because all decoders share training data. The permutation holds the
    fitted decoders (and so the predictions) fixed: it tests whether the predictions carry
    stimulus-specific information, not whether a decoder refitted on permuted data would do as
    well. Chance is 0.5 (pairwise) and 1 / (stimuli in the fold) (top-1); a test fold needs at
    least 2 stimuli (a stimulus alone in its fold has no accuracy).
Why not all stimuli as candidates
    Every prediction is the fold's intercept (the training mean of the features, which lacks
    the test stimuli) plus a decoded deviation built from the training stimuli. Compared with
    all stimuli, the intercept is shifted *away* from the test stimuli (``mean_train -
    mean_all = -(n_test / n_train) (mean_test - mean_all)``) and the deviation leans towards
    the training stimuli, so on pure noise the pairwise accuracy among all stimuli is about 0.3
    (not 0.5), and the permutations, which put training stimuli in the truth's place, are not
    exchangeable with the truth. ``candidates="all"`` keeps that scheme (the test is then
    conservative; measured in ``tests/unit/decoding``); among the fold's own stimuli the null
    is exact: noise gives 0.5 and uniform p-values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from bids_dnn.decoding.identification import IdentificationResult, identification_test, similarity_matrix
from bids_dnn.encoding import cross_validated_ridge
from bids_dnn.encoding.folds import Folds, check_folds

__all__ = ["DecodingResult", "decode_features"]


@dataclass(frozen=True)
class DecodingResult:
    """Outcome of :func:`decode_features` (n_units = columns of the features).

    Attributes
    ----------
    unit_r : numpy.ndarray, shape (n_units,)
        Held-out Pearson r of each unit (mean over outer folds of the r within each test
        fold); NaN for units that are constant (over all stimuli, or in every test fold).
    mean_r, median_r : float
        NaN-ignoring mean / median of ``unit_r`` (NaN when no unit is valid).
    n_units_valid : int
        Units with a finite ``unit_r``.
    predictions : numpy.ndarray, shape (n_stimuli, n_units)
        Out-of-fold decoded features (NaN rows for stimuli in no test fold); the features'
        dtype.
    alphas : numpy.ndarray, shape (n_folds, n_units)
        Ridge penalty chosen per outer fold and unit (NaN for constant units).
    fold_r : numpy.ndarray, shape (n_folds, n_units)
        Pearson r within each test fold.
    pairwise_accuracy, top1_accuracy : float
        Identification of the tested stimuli among their fold's stimuli (or all stimuli;
        ``identification``).
    p_pairwise, p_top1 : float
        One-sided permutation p-values (NaN without permutations).
    per_stimulus_pairwise : numpy.ndarray, shape (n_stimuli,)
        Pairwise identification accuracy of each stimulus (NaN for untested stimuli).
    identification : IdentificationResult
        The full test (chance levels, null distributions, per-stimulus top-1 hits); its
        per-stimulus arrays have one entry per *tested* stimulus, in index order.
    tested : numpy.ndarray of int, shape (n_tested,)
        The stimuli in a test fold (the rows of ``identification``).
    """

    unit_r: np.ndarray
    mean_r: float
    median_r: float
    n_units_valid: int
    predictions: np.ndarray
    alphas: np.ndarray
    fold_r: np.ndarray
    pairwise_accuracy: float
    top1_accuracy: float
    p_pairwise: float
    p_top1: float
    per_stimulus_pairwise: np.ndarray
    identification: IdentificationResult
    tested: np.ndarray


def _checked(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be (n_stimuli, n_columns), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
        a = a.astype(np.float64)
    if a.shape[1] == 0:
        raise ValueError(f"{name} has no columns")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contain non-finite values")
    return a


def _identification_within_folds(similarity: np.ndarray, folds: np.ndarray, n_permutations: int,
                                 rng: np.random.Generator | None) -> IdentificationResult:
    """Identification among each fold's own stimuli: the accuracies pooled over the folds, the
    p-values of the folds' own permutation tests merged.

    Within one fold the candidate-label permutations are exact (the fold's decoder never saw its
    stimuli), but the folds' accuracies are not independent: every decoder was trained on the
    other folds' stimuli, so a chance association between patterns and features in the data
    raises (or lowers) them together, and a null that permutes each fold on its own would be
    too narrow (measured: 12 % of pure-noise data sets at p < 0.05 with 60 stimuli in 5 folds).
    Each fold is therefore tested on its own and the p-values are merged as ``min(1, 2 x their
    mean)``, valid under any dependence (Vovk & Wang 2020, Biometrika 107:791).

    Parameters
    ----------
    similarity : numpy.ndarray, shape (n_tested, n_tested)
        Predictions (rows) x candidates, both the tested stimuli in index order.
    folds : numpy.ndarray of int, shape (n_tested,)
        Test fold of each tested stimulus.
    n_permutations : int
        Permutations of each fold's test (0: none).
    rng : numpy.random.Generator or None
        Source of the permutations, used fold after fold.

    Returns
    -------
    IdentificationResult
        Accuracies, chance levels and per-stimulus values of the within-fold identification;
        ``p_pairwise`` / ``p_top1`` merged over the folds with a defined p (NaN without
        permutations); ``null_pairwise`` / ``null_top1`` are the folds' null means weighted
        by their defined rows (for display; the p-values do not come from them).
    """
    pooled = identification_test(similarity, n_permutations=0, rng=None, groups=folds)
    if n_permutations == 0:
        return pooled
    p_pairwise, p_top1, weights = [], [], []
    null_pairwise, null_top1 = np.zeros(n_permutations), np.zeros(n_permutations)
    for fold in np.unique(folds):
        members = np.flatnonzero(folds == fold)
        if members.size < 2:
            continue
        result = identification_test(similarity[np.ix_(members, members)], n_permutations=n_permutations, rng=rng)
        if result.n_defined == 0:
            continue
        p_pairwise.append(result.p_pairwise)
        p_top1.append(result.p_top1)
        weights.append(result.n_defined)
        null_pairwise += result.n_defined * result.null_pairwise
        null_top1 += result.n_defined * result.null_top1
    if not weights:
        return pooled
    total = float(sum(weights))
    return replace(pooled, p_pairwise=min(1.0, 2.0 * float(np.mean(p_pairwise))),
                   p_top1=min(1.0, 2.0 * float(np.mean(p_top1))), null_pairwise=null_pairwise / total,
                   null_top1=null_top1 / total, n_permutations=n_permutations)


def decode_features(patterns: np.ndarray, features: np.ndarray, folds: Folds, alphas: Sequence[float], *,
                    inner_folds: int = 5, standardize: bool = False, seed: int = 0, n_permutations: int = 0,
                    rng: np.random.Generator | None = None, centre: bool = True, candidates: str = "fold",
                    backend: str = "numpy", memory_budget_bytes: int | None = None) -> DecodingResult:
    """Decode a DNN layer's features from brain patterns and identify the stimuli.

    Cross-validated ridge from the patterns to every feature unit (per-unit alpha by inner
    CV, :func:`bids_dnn.encoding.cross_validated_ridge` with the patterns as its features and
    the units as its targets), then pairwise and top-1 identification of the tested stimuli
    from their out-of-fold decoded feature vectors among the actual features of the stimuli of
    their own test fold (``identification_test(similarity_matrix(predictions[tested],
    features[tested], centre=centre), groups=fold of each tested stimulus, ...)``). See the
    module docstring for the conventions, and why the candidates are the fold's stimuli.

    Parameters
    ----------
    patterns : numpy.ndarray, shape (n_stimuli, n_voxels)
        Brain response patterns (e.g. an ROI's betas), finite.
    features : numpy.ndarray, shape (n_stimuli, n_units)
        A DNN layer's activations for the same stimuli, same order; finite. Float32 features
        keep the ridge products and the predictions in float32 (similarities are float64).
    folds : sequence of (train, test)
        Outer folds over the stimuli (:func:`bids_dnn.encoding.make_folds`; test folds
        disjoint).
    alphas : sequence of float
        Candidate ridge penalties (positive).
    inner_folds : int
        Inner folds for the alpha choice (:func:`bids_dnn.encoding.inner_folds_for`).
    standardize : bool
        z-score the voxels with the training mean / SD (centring happens in any case).
    seed : int
        Seed of the inner folds.
    n_permutations : int
        Candidate-label permutations of the identification test (0: none, NaN p-values).
    rng : numpy.random.Generator, optional
        Source of the permutations (required when ``n_permutations > 0``); see
        :func:`bids_dnn.decoding.identification_test` for how it is used.
    centre : bool
        Remove the candidates' mean feature pattern before correlating
        (:func:`bids_dnn.decoding.similarity_matrix`).
    candidates : {"fold", "all"}
        "fold": each prediction among the stimuli of its test fold, permutations within folds
        (exact null). "all": among all stimuli, tested or not, permutations across all
        (conservative; see the module docstring).
    backend : {"numpy", "torch", "torch_cuda"}
        himalaya backend of the ridge products.
    memory_budget_bytes : int, optional
        Working memory of one batch of units in the ridge (does not change the results).

    Returns
    -------
    DecodingResult

    Raises
    ------
    ValueError
        Patterns or features not 2-d, non-numeric or non-finite; different numbers of
        stimuli; invalid folds, alphas or ``n_permutations``; permutations without ``rng``.
    """
    x = _checked(patterns, "patterns")
    y = _checked(features, "features")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"patterns and features must have the same number of stimuli (rows), got "
                         f"{x.shape[0]} and {y.shape[0]}")
    n_stimuli = x.shape[0]
    if n_stimuli < 3:
        raise ValueError(f"decoding needs at least 3 stimuli, got {n_stimuli}")
    if int(n_permutations) < 0:
        raise ValueError(f"n_permutations must be >= 0, got {n_permutations}")
    if int(n_permutations) and rng is None:
        raise ValueError("rng is required when n_permutations > 0")
    if candidates not in ("fold", "all"):
        raise ValueError(f"candidates must be 'fold' or 'all', got {candidates!r}")
    folds = check_folds(folds, n_stimuli)

    fit = cross_validated_ridge(features=x, responses=y, folds=folds, alphas=alphas, inner_folds=inner_folds,
                                standardize=standardize, seed=seed, backend=backend,
                                memory_budget_bytes=memory_budget_bytes)
    unit_r = np.asarray(fit.r, dtype=np.float64)
    valid = np.isfinite(unit_r)
    n_valid = int(valid.sum())
    mean_r = float(unit_r[valid].mean()) if n_valid else float("nan")
    median_r = float(np.median(unit_r[valid])) if n_valid else float("nan")

    tested = np.unique(np.concatenate([np.asarray(test, dtype=np.int64) for _, test in folds]))
    if candidates == "fold":
        fold_of = np.empty(n_stimuli, dtype=np.int64)
        for k, (_, test) in enumerate(folds):
            fold_of[np.asarray(test, dtype=np.int64)] = k
        similarity = similarity_matrix(fit.predictions[tested], y[tested], centre=centre)
        ident = _identification_within_folds(similarity, fold_of[tested], int(n_permutations), rng)
    else:
        similarity = similarity_matrix(fit.predictions[tested], y, centre=centre)
        ident = identification_test(similarity, n_permutations=int(n_permutations), rng=rng, true_index=tested)
    per_stimulus = np.full(n_stimuli, np.nan)
    per_stimulus[tested] = ident.per_stimulus_pairwise
    return DecodingResult(unit_r=unit_r, mean_r=mean_r, median_r=median_r, n_units_valid=n_valid,
                          predictions=fit.predictions, alphas=fit.alphas, fold_r=fit.fold_r,
                          pairwise_accuracy=ident.pairwise_accuracy, top1_accuracy=ident.top1_accuracy,
                          p_pairwise=ident.p_pairwise, p_top1=ident.p_top1, per_stimulus_pairwise=per_stimulus,
                          identification=ident, tested=tested)
