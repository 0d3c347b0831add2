"""Statistical inference for RSA: permutation tests, multiple comparisons, subject-level tests,
bootstrap intervals, noise ceilings and cross-validated layer selection.

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
Stimulus and dual bootstraps
    :func:`bootstrap_patterns` (= rsatoolbox ``eval_bootstrap_pattern``) resamples stimuli with
    replacement; :func:`bootstrap_dual` (= ``eval_dual_bootstrap`` with its defaults) resamples
    subjects and stimuli. Pairs of a stimulus with a copy of itself are dropped, as rsatoolbox
    does (it marks them NaN). A resample is a weighting of the original pairs (``c_i c_j``) and
    subjects (counts), so pair-local measures are computed as weighted statistics without
    building any resampled RDM (:mod:`bids_dnn.rsa.resampling`). Both accept explicit resampling
    indices; with rsatoolbox's draws they reproduce its evaluations, noise ceilings and
    (corrected) variances to rounding error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.stats

from bids_dnn.rsa.compare import (COMPARISON_MEASURES, LINEAR_MEASURES, compare_paired, compare_rdms,
                              kendall_tau_a, transform_for_measure, transform_ranks)
from bids_dnn.rsa.rdm import n_cond_from_pairs, pair_indices

__all__ = [
    "PermutationResult",
    "permutation_indices",
    "permuted_pair_indices",
    "permutation_test",
    "fdr_bh",
    "bonferroni",
    "one_sample_tests",
    "paired_tests",
    "bootstrap_indices",
    "bootstrap_subjects",
    "noise_ceiling",
    "crossvalidated_best_layer",
    "BootstrapResult",
    "bootstrap_patterns",
    "bootstrap_dual",
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


# --------------------------------------------------------------------------- multiple tests
def _along_last(p: np.ndarray, axis: int | None) -> tuple[np.ndarray, tuple, int | None]:
    """p-values as (n_families, family_size), with what :func:`_restore` needs."""
    p = np.asarray(p, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    if axis is None:
        return p.reshape(1, -1), p.shape, None
    moved = np.moveaxis(p, axis, -1)
    return moved.reshape(-1, moved.shape[-1]), moved.shape, axis


def _restore(flat: np.ndarray, shape: tuple, axis: int | None) -> np.ndarray:
    out = flat.reshape(shape)
    return out if axis is None else np.moveaxis(out, -1, axis)


def fdr_bh(p: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN-aware).

    Parameters
    ----------
    p : np.ndarray, any shape
    axis : int, optional
        Families along this axis; ``None`` (default) treats all values as one family.

    Returns
    -------
    np.ndarray, same shape
        Equal to ``scipy.stats.false_discovery_control(p, method='bh')`` on the finite values;
        NaNs stay NaN and do not count towards the number of tests.
    """
    flat, shape, axis = _along_last(p, axis)
    finite = np.isfinite(flat)
    m = finite.sum(axis=1, keepdims=True)
    order = np.argsort(np.where(finite, flat, np.inf), axis=1, kind="stable")
    ps = np.take_along_axis(flat, order, axis=1)
    rank = np.arange(1, flat.shape[1] + 1)
    with np.errstate(invalid="ignore"):
        adj = np.where(rank <= m, ps * m / rank, np.nan)
    adj = np.fmin.accumulate(adj[:, ::-1], axis=1)[:, ::-1]
    adj = np.where(rank <= m, np.clip(adj, 0, 1), np.nan)
    out = np.empty_like(flat)
    np.put_along_axis(out, order, adj, axis=1)
    return _restore(out, shape, axis)


def bonferroni(p: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Bonferroni adjusted p-values ``min(1, p * m)``, m = number of finite p-values in the
    family (``axis`` as in :func:`fdr_bh`); same shape, NaNs stay NaN."""
    flat, shape, axis = _along_last(p, axis)
    m = np.isfinite(flat).sum(axis=1, keepdims=True)
    return _restore(np.minimum(flat * m, 1.0), shape, axis)


# --------------------------------------------------------------------------- subject tests
def _wilcoxon_columns(x: np.ndarray, alternative: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``scipy.stats.wilcoxon`` (NaNs omitted), vectorised over columns that
    scipy treats alike (same n; with or without zeros / ties)."""
    k = x.shape[1]
    w = np.full(k, np.nan)
    p = np.full(k, np.nan)
    valid = np.isfinite(x)
    n = valid.sum(axis=0)
    # move the finite values to the top of each column (the test ignores order)
    order = np.argsort(~valid, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    absx = np.sort(np.where(valid, np.abs(x), np.inf), axis=0)
    tied = np.any((absx[1:] == absx[:-1]) & np.isfinite(absx[1:]), axis=0)
    zero = np.any(valid & (x == 0), axis=0)
    usable = (n >= 2) & np.any(valid & (x != 0), axis=0)
    for n_i in np.unique(n[usable]):
        for flag in (False, True):
            cols = np.flatnonzero(usable & (n == n_i) & ((tied | zero) == flag))
            if cols.size:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = scipy.stats.wilcoxon(xs[:n_i, cols], axis=0, alternative=alternative)
                w[cols] = res.statistic
                p[cols] = res.pvalue
    return w, p


def one_sample_tests(values: np.ndarray, alternative: str = "greater",
                     popmean: float = 0.0) -> dict[str, np.ndarray]:
    """One-sample t and Wilcoxon signed-rank tests per column (subjects in rows).

    Parameters
    ----------
    values : np.ndarray, (n_subj, k) or (n_subj,)
        NaNs are omitted per column.
    alternative : {"greater", "less", "two-sided"}
    popmean : float
        Null value (subtracted before both tests).

    Returns
    -------
    dict of np.ndarray, each (k,)
        ``n``, ``mean``, ``sem``, ``t``, ``p_t`` (= ``scipy.stats.ttest_1samp``),
        ``wilcoxon_w``, ``p_wilcoxon`` (= ``scipy.stats.wilcoxon`` per column; NaN when
        n < 2 or all differences are zero). t statistics are NaN when n < 2.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"unknown alternative {alternative!r}")
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ValueError(f"values must be (n_subj, k), got {x.shape}")
    x = x - popmean
    valid = np.isfinite(x)
    n = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, x, 0).sum(axis=0) / n
        ss = np.where(valid, (x - mean) ** 2, 0).sum(axis=0)
        sem = np.sqrt(ss / (n - 1) / n)
        t = mean / sem
        df = np.where(n >= 2, n - 1, np.nan)
        p_t = {"greater": lambda: scipy.stats.t.sf(t, df),
               "less": lambda: scipy.stats.t.cdf(t, df),
               "two-sided": lambda: 2 * scipy.stats.t.sf(np.abs(t), df)}[alternative]()
    small = n < 2
    sem[small], t[small], p_t[small] = np.nan, np.nan, np.nan
    w, p_w = _wilcoxon_columns(x, alternative)
    return {"n": n, "mean": mean + popmean, "sem": sem, "t": t, "p_t": p_t,
            "wilcoxon_w": w, "p_wilcoxon": p_w}


def paired_tests(a: np.ndarray, b: np.ndarray,
                 alternative: str = "two-sided") -> dict[str, np.ndarray]:
    """Paired t and Wilcoxon tests of ``a - b`` per column (e.g. two layers or models).

    ``a, b``: (n_subj, k) or (n_subj,). Returns the dict of :func:`one_sample_tests` on the
    differences (``mean`` = mean difference): ``p_t`` = ``scipy.stats.ttest_rel(a, b)``,
    ``p_wilcoxon`` = ``scipy.stats.wilcoxon(a, b)``, per column.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b differ in shape: {a.shape} vs {b.shape}")
    return one_sample_tests(a - b, alternative=alternative)


# --------------------------------------------------------------------------- bootstrap
def bootstrap_indices(n: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Subject resampling indices (with replacement), (n_bootstrap, n) int64."""
    return rng.integers(0, n, size=(int(n_bootstrap), int(n)))


def bootstrap_subjects(values: np.ndarray, n_bootstrap: int, rng: np.random.Generator,
                       ci: float = 0.95, *, indices: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap confidence interval of the subject mean, per column.

    Parameters
    ----------
    values : np.ndarray, (n_subj, k) or (n_subj,)
        NaNs are ignored in each resampled mean.
    n_bootstrap : int
    rng : np.random.Generator
        Draws ``bootstrap_indices(n_subj, n_bootstrap, rng)`` (unless ``indices`` is given).
    ci : float
        Coverage of the interval (percentiles ``(1 - ci) / 2`` and ``(1 + ci) / 2``, linear
        interpolation as ``np.percentile``).
    indices : np.ndarray of int, (n_bootstrap, n_subj), optional

    Returns
    -------
    low, high : np.ndarray, (k,)
    boot_means : np.ndarray, (n_bootstrap, k)
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    n_subj = x.shape[0]
    if not 0 < ci < 1:
        raise ValueError("ci must lie in (0, 1)")
    idx = bootstrap_indices(n_subj, n_bootstrap, rng) if indices is None else np.asarray(indices)
    b = idx.shape[0]
    counts = np.bincount((np.arange(b)[:, None] * n_subj + idx).ravel(),
                         minlength=b * n_subj).reshape(b, n_subj).astype(np.float64)
    valid = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ np.where(valid, x, 0)) / (counts @ valid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(boot, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return low, high, boot


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


# --------------------------------------------------------------------------- stimulus bootstrap
def _pairwise_contrast_diag(cov: np.ndarray) -> np.ndarray:
    """``diag(C cov C^T)`` for rsatoolbox's ``pairwise_contrast`` C (pairs i < j, +1 at i,
    -1 at j, ``np.triu_indices`` order): variances of all pairwise differences. (..., k, k) ->
    (..., k (k - 1) / 2)."""
    rows, cols = np.triu_indices(cov.shape[-1], k=1)
    d = np.diagonal(cov, axis1=-2, axis2=-1)
    return d[..., rows] + d[..., cols] - 2 * cov[..., rows, cols]


def _split_covariance(cov: np.ndarray, nc_included: bool
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model, difference, noise-ceiling) variances from a (..., k, k) covariance as in
    rsatoolbox ``extract_variances`` (before its small-sample corrections)."""
    if nc_included:
        mc = cov[..., :-2, :-2]
        model = np.diagonal(mc, axis1=-2, axis2=-1)
        nc = (model[..., :, None] - 2 * cov[..., :-2, -2:]
              + np.diagonal(cov[..., -2:, -2:], axis1=-2, axis2=-1)[..., None, :])
    else:
        mc = cov
        model = np.diagonal(mc, axis1=-2, axis2=-1)
        nc = np.stack([model, model], axis=-1)
    return model, _pairwise_contrast_diag(mc), nc


def _dual_variance(v: np.ndarray, n_subj: int, n_cond: int) -> np.ndarray:
    """rsatoolbox ``_dual_bootstrap`` small-sample combination of the variances from the
    subject x stimulus (``v[0]``), subject (``v[1]``) and stimulus (``v[2]``) bootstraps."""
    fr = n_subj / (n_subj - 1)
    fp = n_cond / (n_cond - 1)
    var = fr * v[1] + fp * v[2] - fr * fp * (v[0] - v[1] - v[2])
    var = np.maximum(np.maximum(var, fr * v[1]), fp * v[2])
    return np.minimum(var, v[0])


@dataclass(frozen=True)
class BootstrapResult:
    """Outcome of :func:`bootstrap_patterns` and :func:`bootstrap_dual`.

    Attributes
    ----------
    evaluations : np.ndarray, (n_bootstrap, n_models)
        Mean over (resampled) subjects of the model-vs-data similarity on each resample; NaN
        rows for resamples with fewer than 3 distinct stimuli (as rsatoolbox). For
        :func:`bootstrap_dual`: the subject x stimulus resamples.
    noise_ceiling : np.ndarray, (n_bootstrap, 2) or None
        ``[lower, upper]`` noise ceiling on each resample.
    covariance : np.ndarray
        rsatoolbox ``Result.variances``: ``np.cov`` over the valid resamples of the models'
        evaluations followed by the lower and upper noise ceiling ((n_models + 2) square; without
        the noise ceiling, (n_models, n_models)); for :func:`bootstrap_dual` one such matrix per
        bootstrap kind, (3, n_models + 2, n_models + 2), in the order subject x stimulus,
        subject only, stimulus only.
    model_variance : np.ndarray, (n_models,)
        Variance estimate of each model's evaluation (= rsatoolbox ``Result.model_var``):
        pattern bootstrap: bootstrap variance times ``n_cond / (n_cond - 1)``; dual bootstrap:
        rsatoolbox's small-sample combination of the three bootstrap variances.
    diff_variance : np.ndarray, (n_models * (n_models - 1) / 2,)
        Variance of each pairwise difference of models (pairs in ``np.triu_indices`` order),
        corrected like ``model_variance`` (= ``Result.diff_var``).
    noise_ceiling_variance : np.ndarray, (n_models, 2)
        Variance of each model's difference from the lower / upper noise ceiling
        (= ``Result.noise_ceil_var``).
    ci_low, ci_high : np.ndarray, (n_models,)
        Percentile interval of the (subject x stimulus) bootstrap evaluations.
    indices : np.ndarray of int, (n_bootstrap, n_cond)
        The stimulus resampling indices used.
    subject_indices : np.ndarray of int, (n_bootstrap, n_subj) or None
        The subject resampling indices (dual bootstrap only).
    evaluations_by_kind : np.ndarray, (n_bootstrap, n_models, 3) or None
        Dual bootstrap only: evaluations on the subject x stimulus, subject-only and
        stimulus-only resamples (the same draws).
    noise_ceiling_by_kind : np.ndarray, (n_bootstrap, 2, 3) or None
        Dual bootstrap only: noise ceilings of the three kinds.
    dof : int
        Degrees of freedom rsatoolbox uses for t-tests (``n_cond - 1``; dual:
        ``min(n_subj, n_cond) - 1``).
    measure : str
    """

    evaluations: np.ndarray
    noise_ceiling: np.ndarray | None
    covariance: np.ndarray
    model_variance: np.ndarray
    diff_variance: np.ndarray
    noise_ceiling_variance: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    indices: np.ndarray
    dof: int
    measure: str
    subject_indices: np.ndarray | None = None
    evaluations_by_kind: np.ndarray | None = None
    noise_ceiling_by_kind: np.ndarray | None = None


def _check_boot_inputs(data: np.ndarray, models: np.ndarray, measure: str
                       ) -> tuple[np.ndarray, np.ndarray, int]:
    if measure not in COMPARISON_MEASURES:
        raise ValueError(f"unknown comparison measure {measure!r}")
    data = np.atleast_2d(np.asarray(data, dtype=np.float64))
    models = np.atleast_2d(np.asarray(models, dtype=np.float64))
    if data.ndim != 2 or models.ndim != 2 or data.shape[1] != models.shape[1]:
        raise ValueError(f"data {data.shape} and models {models.shape} must be (n, n_pairs) "
                         "with equal n_pairs")
    if not (np.all(np.isfinite(data)) and np.all(np.isfinite(models))):
        raise ValueError("data and models must be finite")
    return data, models, n_cond_from_pairs(data.shape[1])


def _check_indices(indices: np.ndarray, n: int, name: str) -> np.ndarray:
    idx = np.atleast_2d(np.asarray(indices))
    if not np.issubdtype(idx.dtype, np.integer) or idx.shape[1] != n:
        raise ValueError(f"{name} must be integers of shape (n_bootstrap, {n})")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{name} must lie in [0, {n})")
    return idx.astype(np.int64)


def _percentile_ci(evals: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < ci < 1:
        raise ValueError("ci must lie in (0, 1)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(evals, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return low, high


def bootstrap_patterns(data: np.ndarray, models: np.ndarray, measure: str = "spearman",
                       n_bootstrap: int = 1000, *, rng: np.random.Generator | None = None,
                       indices: np.ndarray | None = None, ci: float = 0.95,
                       noise_ceiling: bool = True, method: str = "auto") -> BootstrapResult:
    """Bootstrap over stimuli of fixed-model evaluations (rsatoolbox ``eval_bootstrap_pattern``).

    Each resample draws ``n_cond`` stimuli with replacement; data and model RDMs become the
    RDMs of the drawn stimuli, with every pair of a stimulus with a copy of itself dropped
    (rsatoolbox marks them NaN; they are trivially 0 and would flatter every model). Models are
    scored against every subject's resampled RDM and averaged over subjects; resamples with
    fewer than 3 distinct stimuli are NaN (skipped). The noise ceiling (leave-one-subject-out
    lower, all-subject upper, measure-aware pooling as :func:`noise_ceiling`) is computed on
    each resample, as rsatoolbox does with ``boot_noise_ceil=True``. Pair-local measures run as
    weighted statistics over the original pairs (see :mod:`bids_dnn.rsa.resampling`): each RDM is
    ranked / centred per resample in one vectorised pass, with no resampled RDM built.
    ``kendall_tau_a``, ``corr_cov`` and ``cosine_cov`` loop over resamples.

    Equal to ``rsatoolbox.inference.eval_bootstrap_pattern(models, RDMs(data), method=...,
    N=n_bootstrap)`` given the same draws (rsatoolbox draws
    ``np.random.randint(0, n_cond, n_cond)`` per resample from numpy's global state).

    Parameters
    ----------
    data : np.ndarray, (n_subj, n_pairs) or (n_pairs,)
    models : np.ndarray, (n_models, n_pairs) or (n_pairs,)
    measure : str
        A key of ``COMPARISON_MEASURES``.
    n_bootstrap : int
        Number of resamples (ignored when ``indices`` is given).
    rng : np.random.Generator
        Draws ``bootstrap_indices(n_cond, n_bootstrap, rng)`` unless ``indices`` is given.
    indices : np.ndarray of int, (n_bootstrap, n_cond), optional
        Explicit stimulus draws.
    ci : float
        Coverage of the percentile interval.
    noise_ceiling : bool
        Compute the per-resample noise ceiling (needs >= 2 subjects).
    method : {"auto", "weighted", "loop"}
        See :func:`bids_dnn.rsa.resampling.evaluate_resamples` (``loop`` is the slow reference).

    Returns
    -------
    BootstrapResult
        ``evaluations`` (n_bootstrap, n_models), ``noise_ceiling`` (n_bootstrap, 2),
        ``covariance`` ((n_models + 2) square), ``model_variance`` (n_models,) =
        ``n_cond / (n_cond - 1)`` times the bootstrap variance (rsatoolbox's correction), CI.
    """
    from bids_dnn.rsa.resampling import evaluate_resamples

    data, models, n_cond = _check_boot_inputs(data, models, measure)
    if noise_ceiling and data.shape[0] < 2:
        raise ValueError("the noise ceiling needs at least 2 subjects; pass noise_ceiling=False")
    if indices is None:
        if rng is None:
            raise ValueError("pass rng (a numpy Generator) or explicit indices")
        indices = bootstrap_indices(n_cond, n_bootstrap, rng)
    idx = _check_indices(indices, n_cond, "indices")
    n_unique = (np.diff(np.sort(idx, axis=1), axis=1) != 0).sum(axis=1) + 1
    ok = n_unique >= 3
    evals = np.full((idx.shape[0], models.shape[0]), np.nan)
    nc = np.full((idx.shape[0], 2), np.nan)
    if ok.any():
        evals[ok], nc[ok] = evaluate_resamples(data, models, measure, stimulus_indices=idx[ok],
                                               noise_ceiling=noise_ceiling, method=method)
    valid = np.isfinite(evals[:, 0])
    rows = np.concatenate([evals[valid].T, nc[valid].T]) if noise_ceiling else evals[valid].T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # < 2 valid resamples: NaN
        cov = np.atleast_2d(np.cov(rows))
    model_var, diff_var, nc_var = _split_covariance(cov, noise_ceiling)
    factor = n_cond / (n_cond - 1)
    low, high = _percentile_ci(evals, ci)
    return BootstrapResult(evals, nc if noise_ceiling else None, cov, factor * model_var,
                           factor * diff_var, factor * nc_var, low, high, idx, n_cond - 1,
                           measure)


def bootstrap_dual(data: np.ndarray, models: np.ndarray, measure: str = "spearman",
                   n_bootstrap: int = 1000, *, rng: np.random.Generator | None = None,
                   subject_indices: np.ndarray | None = None,
                   stimulus_indices: np.ndarray | None = None, ci: float = 0.95,
                   method: str = "auto") -> BootstrapResult:
    """Subject x stimulus ("dual") bootstrap of fixed-model evaluations, as rsatoolbox
    ``eval_dual_bootstrap`` with its defaults (``k_pattern = k_rdm = 1``: no cross-validation
    inside the bootstrap, hence no cross-validation variance correction).

    Each resample draws subjects (``n_subj`` with replacement) and stimuli (``n_cond`` with
    replacement) once and evaluates the models on three versions built from these draws:
    both resampled, subjects only, stimuli only. Repeated subjects enter as copies (the model
    evaluation is the mean over all drawn copies); the leave-one-out lower noise ceiling leaves
    all copies of a subject out together and both ceilings average over the distinct subjects
    drawn (rsatoolbox groups by the original subject index). Repeated stimuli are handled as in
    :func:`bootstrap_patterns`. Resamples with fewer than 3 distinct stimuli are NaN in all
    three kinds.

    The variance of a model's evaluation combines the three bootstrap covariances with
    rsatoolbox's small-sample dual-bootstrap formula (``_dual_bootstrap`` with
    ``n_rdm = n_subj``, ``n_pattern = n_cond``; ``f_s = n_subj / (n_subj - 1)``,
    ``f_c = n_cond / (n_cond - 1)``)::

        v = f_s v_subj + f_c v_stim - f_s f_c (v_both - v_subj - v_stim)
        v = min(max(v, f_s v_subj, f_c v_stim), v_both)

    which removes the double counting of subject and stimulus variance in the plain
    subject x stimulus bootstrap (which overestimates the variance).

    To reproduce an rsatoolbox run, record its draws (wrap
    ``rsatoolbox.inference.evaluate.bootstrap_sample``): its internal cross-validation set-up
    also calls ``np.random.shuffle`` between draws, so re-seeding numpy's global state and
    drawing again does not give the same indices (it does for :func:`bootstrap_patterns`).

    Parameters
    ----------
    data : np.ndarray, (n_subj, n_pairs), n_subj >= 2
    models : np.ndarray, (n_models, n_pairs) or (n_pairs,)
    measure : str
        A key of ``COMPARISON_MEASURES``.
    n_bootstrap : int
        Number of resamples (ignored when explicit indices are given).
    rng : np.random.Generator
        Draws the subject indices, then the stimulus indices (``bootstrap_indices``) when they
        are not given.
    subject_indices : np.ndarray of int, (n_bootstrap, n_subj), optional
    stimulus_indices : np.ndarray of int, (n_bootstrap, n_cond), optional
    ci : float
        Coverage of the percentile interval of the subject x stimulus evaluations.
    method : {"auto", "weighted", "loop"}
        See :func:`bids_dnn.rsa.resampling.evaluate_resamples`.

    Returns
    -------
    BootstrapResult
        ``evaluations`` (n_bootstrap, n_models) of the subject x stimulus resamples,
        ``evaluations_by_kind`` (n_bootstrap, n_models, 3), ``noise_ceiling_by_kind``
        (n_bootstrap, 2, 3), ``covariance`` (3, n_models + 2, n_models + 2), corrected
        ``model_variance`` (n_models,), ``diff_variance``, ``noise_ceiling_variance``.
    """
    from bids_dnn.rsa.resampling import evaluate_resamples, stimulus_counts

    data, models, n_cond = _check_boot_inputs(data, models, measure)
    n_subj = data.shape[0]
    if n_subj < 2:
        raise ValueError("the dual bootstrap needs at least 2 subjects")
    if subject_indices is None or stimulus_indices is None:
        if rng is None:
            raise ValueError("pass rng (a numpy Generator) or explicit indices")
        if subject_indices is None:
            subject_indices = bootstrap_indices(n_subj, n_bootstrap, rng)
        if stimulus_indices is None:
            stimulus_indices = bootstrap_indices(n_cond, len(subject_indices), rng)
    sidx = _check_indices(subject_indices, n_subj, "subject_indices")
    cidx = _check_indices(stimulus_indices, n_cond, "stimulus_indices")
    if sidx.shape[0] != cidx.shape[0]:
        raise ValueError("subject_indices and stimulus_indices differ in n_bootstrap")
    n_boot = sidx.shape[0]
    n_unique = (np.diff(np.sort(cidx, axis=1), axis=1) != 0).sum(axis=1) + 1
    ok = n_unique >= 3
    u = stimulus_counts(sidx, n_subj)
    evals = np.full((n_boot, models.shape[0], 3), np.nan)
    nc = np.full((n_boot, 2, 3), np.nan)
    if ok.any():
        kinds = [dict(stimulus_indices=cidx[ok], subject_counts=u[ok]),
                 dict(subject_counts=u[ok]),
                 dict(stimulus_indices=cidx[ok])]
        for k, kw in enumerate(kinds):
            evals[ok, :, k], nc[ok, :, k] = evaluate_resamples(data, models, measure,
                                                               method=method, **kw)
    valid = np.isfinite(evals[:, 0, 0])
    matrix = np.concatenate([evals[valid], nc[valid]], axis=1)  # (n_ok, n_models + 2, 3)
    matrix = matrix - matrix.mean(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # < 2 valid resamples: NaN
        cov = np.einsum("ijk,ilk->kjl", matrix, matrix) / (matrix.shape[0] - 1)
    model_var, diff_var, nc_var = _split_covariance(cov, True)
    low, high = _percentile_ci(evals[:, :, 0], ci)
    return BootstrapResult(evals[:, :, 0], nc[:, :, 0], cov,
                           _dual_variance(model_var, n_subj, n_cond),
                           _dual_variance(diff_var, n_subj, n_cond),
                           _dual_variance(nc_var, n_subj, n_cond), low, high, cidx,
                           min(n_subj, n_cond) - 1, measure, sidx, evals, nc)
