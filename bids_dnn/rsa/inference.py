"""Statistical inference for RSA: permutation tests, noise ceilings and cross-validated layer
selection. (Bootstraps of RDM evaluations: :mod:`bids_dnn.rsa.bootstrap`; multiple comparisons
and subject-level tests: :mod:`bids_dnn.stats`.)

Everything random takes an explicit ``numpy.random.Generator``; equal generators give equal
results, independent of chunk sizes.

Permutation test
    Stimulus labels are permuted: the rows and columns of a square RDM are reordered together
    (``M'[i, j] = M[pi_i, pi_j]``), i.e. the pair vector is gathered with the pair index of the
    permuted conditions; cells are never shuffled individually. Rows are transformed once
    (:func:`bids_dnn.rsa.compare.transform_for_measure`; ranking, centring and whitening commute
    with the permutation), so every permutation is an index gather and permutations are batched
    into one matrix product. One-sided p-value
    ``p = (1 + #{null >= observed - atol}) / (1 + n_permutations)``; ``atol`` (1e-12) keeps
    permutations that reproduce the observed RDM from being lost to rounding.
Noise ceiling
    As ``rsatoolbox.inference.boot_noise_ceiling`` on the original (not bootstrapped) set, with
    the measure-aware pooling of ``rsatoolbox.util.inference_util.pool_rdm``: ``cosine`` /
    ``cosine_cov`` average RMS-normalised RDMs, ``pearson`` / ``corr_cov`` average z-scored RDMs
    (minus their minimum), rank-based measures average the ranks. (``boot_noise_ceiling`` uses
    ``inference_util.pool_rdm``; the older ``rsatoolbox.util.pooling.pool_rdm`` differs for
    ``corr`` (+0.01 shift, irrelevant) and ``cosine_cov`` / ``corr_cov`` (V-weighted norms).)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats

from bids_dnn.rsa.compare import (COMPARISON_MEASURES, compare_paired, compare_rdms, kendall_tau_a,
                                  transform_for_measure, transform_ranks)
from bids_dnn.rsa.measures import LINEAR_MEASURES
from bids_dnn.rsa.rdm import n_cond_from_pairs, pair_indices

__all__ = [
    "PermutationResult",
    "permutation_indices",
    "permuted_pair_indices",
    "permutation_test",
    "noise_ceiling",
    "crossvalidated_best_layer",
    "best_significant_layer",
]

_MAX_CHUNK_ELEMENTS = 2 ** 22  # ~32 MB of float64 per gathered block


# --------------------------------------------------------------------------- permutations
@dataclass(frozen=True)
class PermutationResult:
    """Outcome of :func:`permutation_test`: ``observed``, ``p_values`` (one-sided, greater)
    and ``p_values_fwe`` (max-statistic, family-wise over models), each (n_data, n_models);
    ``null_max`` (n_data, n_permutations): NaN-ignoring max over models of the null;
    ``null`` (n_data, n_models, n_permutations) only if requested."""

    observed: np.ndarray
    p_values: np.ndarray
    p_values_fwe: np.ndarray
    null_max: np.ndarray
    n_permutations: int
    measure: str
    null: np.ndarray | None = None


def permutation_indices(n_cond: int, n_permutations: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Random permutations of the conditions, one per row.

    Parameters
    ----------
    n_cond, n_permutations : int
    rng : np.random.Generator

    Returns
    -------
    np.ndarray of int64, (n_permutations, n_cond)
    """
    base = np.tile(np.arange(n_cond, dtype=np.int64), (int(n_permutations), 1))
    return rng.permuted(base, axis=1)


def permuted_pair_indices(perms: np.ndarray, n_cond: int) -> np.ndarray:
    """Pair-vector gather indices for condition permutations.

    ``vec[idx[p]]`` is the vector form of ``square[perm][:, perm]``.

    Parameters
    ----------
    perms : np.ndarray of int, (n_permutations, n_cond)
    n_cond : int

    Returns
    -------
    np.ndarray of int64, (n_permutations, n_pairs)
    """
    rows, cols = pair_indices(n_cond)
    lookup = np.zeros((n_cond, n_cond), dtype=np.int64)
    lookup[rows, cols] = np.arange(rows.size)
    lookup[cols, rows] = np.arange(rows.size)
    perms = np.atleast_2d(np.asarray(perms, dtype=np.int64))
    return lookup[perms[:, rows], perms[:, cols]]


def _square_table(vectors: np.ndarray, n_cond: int) -> np.ndarray:
    """(k, n_pairs[+n_cond]) -> (k, n_cond * n_cond) lookup table: pairs off the diagonal,
    per-condition entries of whitened vectors on it."""
    rows, cols = pair_indices(n_cond)
    n_pairs = rows.size
    table = np.zeros((vectors.shape[0], n_cond, n_cond))
    table[:, rows, cols] = vectors[:, :n_pairs]
    table[:, cols, rows] = vectors[:, :n_pairs]
    if vectors.shape[1] > n_pairs:
        table[:, np.arange(n_cond), np.arange(n_cond)] = vectors[:, n_pairs:]
    return table.reshape(vectors.shape[0], n_cond * n_cond)


def _gather_permuted(table: np.ndarray, perms: np.ndarray, perms_scaled: np.ndarray,
                     entries: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Permuted vectors (k, c, width) from a square lookup table, for perms (c, n_cond)
    (``perms_scaled = perms * n_cond``)."""
    rows, cols = entries
    flat = np.take(perms_scaled, rows, axis=1)
    flat += np.take(perms, cols, axis=1)
    return np.take(table, flat, axis=1)


def permutation_test(data: np.ndarray, models: np.ndarray, measure: str = "spearman",
                     n_permutations: int = 10000, *, rng: np.random.Generator | None = None,
                     permutations: np.ndarray | None = None, return_null: bool = False,
                     atol: float = 1e-12) -> PermutationResult:
    """Condition-label permutation test of RDM similarity (one-sided, greater).

    Parameters
    ----------
    data : np.ndarray, (n_data, n_pairs) or (n_pairs,)
    models : np.ndarray, (n_models, n_pairs) or (n_pairs,)
    measure : str
        A key of ``COMPARISON_MEASURES``.
    n_permutations : int
        Number of random permutations (ignored when ``permutations`` is given).
    rng : np.random.Generator
        Source of the permutations (``permutation_indices(n_cond, n_permutations, rng)``).
    permutations : np.ndarray of int, (n_permutations, n_cond), optional
        Explicit permutations instead of ``rng``.
    return_null : bool
        Keep the full null distribution (n_data, n_models, n_permutations).
    atol : float
        Tolerance of the ``null >= observed`` comparison.

    Returns
    -------
    PermutationResult
    """
    if measure not in COMPARISON_MEASURES:
        raise ValueError(f"unknown comparison measure {measure!r}")
    observed = compare_rdms(data, models, measure)  # validates shapes and NaNs
    data = np.atleast_2d(np.asarray(data, dtype=np.float64))
    models = np.atleast_2d(np.asarray(models, dtype=np.float64))
    n_cond = n_cond_from_pairs(data.shape[1])
    if permutations is None:
        if rng is None:
            raise ValueError("pass rng (a numpy Generator) or explicit permutations")
        permutations = permutation_indices(n_cond, n_permutations, rng)
    else:
        permutations = np.atleast_2d(np.asarray(permutations, dtype=np.int64))
        if permutations.shape[1] != n_cond or not np.all(
                np.sort(permutations, axis=1) == np.arange(n_cond)):
            raise ValueError(f"permutations must be (n_permutations, {n_cond}) permutations")
    n_perm = permutations.shape[0]
    n_data, n_models = observed.shape
    count = np.zeros((n_data, n_models), dtype=np.int64)
    null_max = np.empty((n_data, n_perm))
    null_all = np.empty((n_data, n_models, n_perm)) if return_null else None
    linear = measure in LINEAR_MEASURES
    extended = measure in ("corr_cov", "cosine_cov")
    if linear:
        td = transform_for_measure(data, measure)
        tm = transform_for_measure(models, measure)
        # gather the smaller side: permuting the data by pi^-1 equals permuting models by pi
        gather_data = n_data < n_models
        table = _square_table(td if gather_data else tm, n_cond)
    else:
        gather_data = False
        table = _square_table(models, n_cond)
    width = data.shape[1] + (n_cond if extended else 0)
    n_side = table.shape[0]
    # small chunks keep the gather indices in cache (measured fastest on CPU)
    step = int(np.clip(_MAX_CHUNK_ELEMENTS // (n_side * width), 1, 128))
    thresh = observed[:, :, None] - atol
    diag = np.arange(n_cond) if extended else np.arange(0)  # whitened: one entry per condition
    entries = tuple(np.concatenate([idx, diag]) for idx in pair_indices(n_cond))
    if gather_data:  # the data move with the inverse permutations
        permutations = np.argsort(permutations, axis=1)
    scaled = permutations * n_cond
    for p0 in range(0, n_perm, step):
        perms = permutations[p0:p0 + step]
        c = perms.shape[0]
        g = _gather_permuted(table, perms, scaled[p0:p0 + step], entries)
        if gather_data:
            null = (g.reshape(n_data * c, width) @ tm.T).reshape(n_data, c, n_models)
            null = null.transpose(0, 2, 1)
        elif linear:
            null = (td @ g.reshape(n_models * c, width).T).reshape(n_data, n_models, c)
        else:
            null = kendall_tau_a(data, g.reshape(n_models * c, width))
            null = null.reshape(n_data, n_models, c)
        count += np.sum(null >= thresh, axis=2)
        null_max[:, p0:p0 + c] = np.fmax.reduce(null, axis=1)  # NaN-ignoring max
        if null_all is not None:
            null_all[:, :, p0:p0 + c] = null
    p_values = (1.0 + count) / (1.0 + n_perm)
    p_values[np.isnan(observed)] = np.nan
    sorted_max = np.sort(null_max, axis=1)
    n_ge = np.stack([n_perm - np.searchsorted(sorted_max[d], observed[d] - atol, side="left")
                     for d in range(n_data)])
    p_fwe = (1.0 + n_ge) / (1.0 + n_perm)
    p_fwe[np.isnan(observed)] = np.nan
    return PermutationResult(observed, p_values, p_fwe, null_max, n_perm, measure, null_all)


# --------------------------------------------------------------------------- noise ceiling
def _pool_rows(x: np.ndarray, measure: str) -> np.ndarray:
    """Per-row preprocessing of rsatoolbox ``pool_rdm`` before averaging."""
    if measure in ("cosine", "cosine_cov"):
        return x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
    if measure in ("pearson", "corr_cov"):
        x = x - x.mean(axis=1, keepdims=True)
        return x / x.std(axis=1, keepdims=True)
    return scipy.stats.rankdata(x, axis=1)


def noise_ceiling(data: np.ndarray, measure: str = "spearman", *, per_subject: bool = False
                  ) -> tuple[float, float] | tuple[float, float, np.ndarray, np.ndarray]:
    """Lower and upper noise ceiling (means over subjects).

    upper: each subject vs the pooled RDM of all subjects; lower: each subject vs the pooled
    RDM of the other subjects (leave one out). Pooling is measure-aware as in rsatoolbox
    (module docstring); equal to ``rsatoolbox.inference.boot_noise_ceiling(RDMs(data),
    method=RSATOOLBOX_NAMES[measure])``.

    Parameters
    ----------
    data : np.ndarray, (n_subj, n_pairs), n_subj >= 2
    measure : str
        A key of ``COMPARISON_MEASURES``.
    per_subject : bool
        Also return the per-subject values.

    Returns
    -------
    lower, upper : float
    lower_per_subject, upper_per_subject : np.ndarray, (n_subj,), only if ``per_subject``.
    """
    if measure not in COMPARISON_MEASURES:
        raise ValueError(f"unknown comparison measure {measure!r}")
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"data must be (n_subj >= 2, n_pairs), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("data contains NaN or infinite values")
    n = x.shape[0]
    rows = _pool_rows(x, measure)
    total = rows.sum(axis=0)
    pooled = np.vstack([total / n, (total[None, :] - rows) / (n - 1)])  # all, then LOO
    if measure in ("pearson", "corr_cov"):
        pooled = pooled - pooled.min(axis=1, keepdims=True)
    if measure in LINEAR_MEASURES:  # transform every row once, then dot products
        if measure in ("spearman", "rho_a"):
            tx = transform_ranks(rows, measure)  # rows are the subjects' ranks already
        else:
            tx = transform_for_measure(x, measure)
        tp = transform_for_measure(pooled, measure)
        upper = tx @ tp[0]
        lower = np.einsum("ij,ij->i", tx, tp[1:])
    else:
        upper = compare_paired(np.broadcast_to(pooled[0], x.shape), x, measure)
        lower = compare_paired(pooled[1:], x, measure)
    if per_subject:
        return float(lower.mean()), float(upper.mean()), lower, upper
    return float(lower.mean()), float(upper.mean())


# --------------------------------------------------------------------------- layer selection
def crossvalidated_best_layer(scores: np.ndarray) -> dict[str, np.ndarray | int | float]:
    """Leave-one-subject-out choice of the best layer (selection never sees the scored subject).

    Parameters
    ----------
    scores : np.ndarray, (n_subj, n_layers)
        e.g. RDM similarity per subject and layer; NaNs are ignored.

    Returns
    -------
    dict
        ``chosen`` (n_subj,) int: per fold, argmax over layers of the mean of the other
        subjects (first maximum on ties); ``cv_scores`` (n_subj,): held-out subject's score at
        its fold's choice; ``selection_counts`` (n_layers,); ``modal_choice`` int: most
        frequent choice (lowest index on ties); ``mean_cv_score`` float: mean of
        ``cv_scores`` (the unbiased estimate of the selected layer's score);
        ``loo_means`` (n_subj, n_layers).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 2:
        raise ValueError(f"scores must be (n_subj >= 2, n_layers), got {s.shape}")
    valid = np.isfinite(s)
    s0 = np.where(valid, s, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = (s0.sum(axis=0) - s0) / (valid.sum(axis=0) - valid)
    usable = np.isfinite(loo)
    if not np.all(usable.any(axis=1)):
        raise ValueError("a fold has no layer with scores from the other subjects")
    chosen = np.argmax(np.where(usable, loo, -np.inf), axis=1)
    cv = s[np.arange(s.shape[0]), chosen]
    counts = np.bincount(chosen, minlength=s.shape[1])
    return {"chosen": chosen, "cv_scores": cv, "selection_counts": counts,
            "modal_choice": int(np.argmax(counts)), "mean_cv_score": float(np.nanmean(cv)),
            "loo_means": loo}


def best_significant_layer(scores: np.ndarray, significant: np.ndarray) -> int | None:
    """The ROI's best layer: the leave-one-subject-out choice among the significant layers.

    The one definition of "best layer" that the group tables and reports use (summary
    ``best_layer_cv``, weighted RSA ``best_single_layer``): each fold picks, among the layers
    significant after the group correction, the one with the highest mean score of the other
    subjects (:func:`crossvalidated_best_layer`); the layer picked most often
    wins. An ROI without a significant layer has no best layer.

    Parameters
    ----------
    scores : numpy.ndarray, shape (n_subjects, n_layers)
        The ROI's scores per subject and layer.
    significant : numpy.ndarray of bool, shape (n_layers,)
        Layers significant after correction.

    Returns
    -------
    int or None
        Column of the best layer; None without a significant layer or with fewer than 2 subjects.
    """
    candidates = np.flatnonzero(np.asarray(significant, dtype=bool))
    if candidates.size == 0 or scores.shape[0] < 2:
        return None
    if candidates.size == 1:
        return int(candidates[0])
    return int(candidates[crossvalidated_best_layer(scores[:, candidates])["modal_choice"]])
