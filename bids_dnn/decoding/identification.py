"""Stimulus identification from decoded feature vectors (Kay et al. 2008; Horikawa & Kamitani 2017).

Pure functions on arrays (numpy in, numpy out); no files, no printing.

Conventions
-----------
Similarity
    :func:`similarity_matrix` correlates every predicted feature vector (a row of
    ``predicted``) with every candidate's actual feature vector (a row of ``candidates``):
    Pearson r across units, in float64. With ``centre=True`` (default) the candidates' mean of
    each unit is first subtracted from both matrices. DNN activations share a large common
    pattern (every stimulus drives the same units most), which makes the raw correlation of
    any two feature vectors high and every candidate look alike; removing the candidates'
    mean pattern leaves the stimulus-specific part. The work runs over blocks of units
    (bounded memory, one matrix product per block), never over pairs.
Undefined similarities
    A row that is constant *after* the centring (a constant row with ``centre=False``, a
    candidate equal to the candidates' mean pattern with ``centre=True``, fewer than 2 units)
    has no correlation: its entries are NaN. Identification leaves undefined entries out
    (rather than scoring them as chance): a candidate with a NaN similarity in a row is not
    compared with in that row, and a stimulus whose true candidate's similarity is NaN (or
    whose row has fewer than 2 defined candidates) gets NaN per-stimulus accuracies and is
    excluded from the mean accuracies (and from each permutation's mean in the null).
Accuracies
    Pairwise identification accuracy of a stimulus (Horikawa & Kamitani 2017): the fraction of
    the *other* defined candidates whose similarity is lower than the true candidate's, ties
    counting 0.5; chance 0.5. It equals ``(average rank of the truth - 1) / (f - 1)`` with
    ``f`` defined candidates in the row. Top-1 identification (Kay et al. 2008): 1 when the
    true candidate has the highest similarity, ``1 / k`` when ``k`` candidates tie for the
    highest, else 0; chance ``1 / m`` for ``m`` candidates (``1 / f`` per row when some
    similarities are undefined). There may be more candidates than predicted rows
    (distractors, ``m > n``); ``true_index[i]`` names row ``i``'s true candidate.
Permutation test
    :func:`identification_test` keeps the similarity matrix fixed and permutes the stimulus
    labels of the candidates: permutation ``pi`` of ``range(m)`` makes candidate
    ``pi[true_index[i]]`` the "truth" of row ``i``. Each row is ranked once; a permutation is
    then a gather from the tables of per-candidate accuracies, a block of permutations one
    fancy-index. One-sided ``p = (1 + #{null >= observed - 1e-12}) / (1 + n_permutations)``;
    the tolerance keeps permutations that reproduce the observed value (e.g. the identity)
    from being lost to rounding. The observed values go through the same code as the null.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["IdentificationResult", "similarity_matrix", "identification_ranks", "identification_test"]

_BLOCK_ELEMENTS = 2**23            # float64 elements per block of units / permutations (64 MiB)
_CONSTANT_RTOL = 1e-12             # a row is constant when its centred norm <= this x its scale
_P_ATOL = 1e-12                    # null >= observed - atol counts as "at least as large"


# --------------------------------------------------------------------------- similarity
def _float_matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (rows, units), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
            or a.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


def similarity_matrix(predicted: np.ndarray, candidates: np.ndarray, *, centre: bool = True) -> np.ndarray:
    """Pearson correlation of every predicted feature vector with every candidate's features.

    Parameters
    ----------
    predicted : numpy.ndarray, shape (n_predicted, n_units)
        Decoded (predicted) feature vectors, one per row; finite.
    candidates : numpy.ndarray, shape (n_candidates, n_units)
        The candidates' actual feature vectors (e.g. a DNN layer's activations of every
        stimulus, possibly with extra distractor stimuli); finite.
    centre : bool
        Subtract the candidates' mean of each unit (column), ``candidates.mean(axis=0)``, from
        both matrices before correlating, so that the mean feature pattern shared by all
        stimuli (which dominates raw correlations of DNN features) does not make every
        candidate look alike. ``False``: plain Pearson r of the rows.

    Returns
    -------
    numpy.ndarray, shape (n_predicted, n_candidates), float64
        ``r[i, j]`` = Pearson r across units between (centred) ``predicted[i]`` and
        ``candidates[j]``, in [-1, 1]. A row that is constant after the centring gives a NaN
        row / column: e.g. an all-constant row with ``centre=False``, a candidate equal to
        the candidates' mean with ``centre=True``. Constant means (to rounding): its fully
        centred norm is at most 1e-12 x ``sqrt(||row||^2 + ||mean pattern||^2)``.

    Raises
    ------
    ValueError
        Not 2-d, different numbers of units, no rows, or non-finite values.

    Notes
    -----
    Computed blockwise over units: per block the (column- and row-) centred float64 blocks of
    both matrices and one matrix product accumulate the cross products and squared norms, so
    the working memory is ``(n_predicted + n_candidates) x block`` (64 MiB) plus the result,
    whatever the number of units (inputs may be float32).
    """
    a = _float_matrix(predicted, "predicted")
    b = _float_matrix(candidates, "candidates")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"predicted and candidates must have the same number of units, got {a.shape[1]} "
                         f"and {b.shape[1]}")
    if a.shape[0] == 0 or b.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"empty input: predicted {a.shape}, candidates {b.shape}")
    n, p = a.shape
    m = b.shape[0]
    mu = b.mean(axis=0, dtype=np.float64) if centre else np.zeros(p)
    # row means of the column-centred matrices, without copying them
    row_a = a.mean(axis=1, dtype=np.float64) - mu.mean()
    row_b = b.mean(axis=1, dtype=np.float64) - mu.mean()
    cross = np.zeros((n, m))
    ss_a, ss_b = np.zeros(n), np.zeros(m)          # after row-centring
    mu_ss = float(mu @ mu)                         # scale of the rounding of the column-centring
    raw_a, raw_b = np.full(n, mu_ss), np.full(m, mu_ss)   # + squared norms of the uncentred rows
    block = max(1, _BLOCK_ELEMENTS // (n + m))
    for start in range(0, p, block):
        cols = slice(start, min(start + block, p))
        xa = np.asarray(a[:, cols], dtype=np.float64)
        xb = np.asarray(b[:, cols], dtype=np.float64)
        raw_a += np.einsum("ij,ij->i", xa, xa)
        raw_b += np.einsum("ij,ij->i", xb, xb)
        xa = xa - (mu[cols] + row_a[:, None])
        xb = xb - (mu[cols] + row_b[:, None])
        ss_a += np.einsum("ij,ij->i", xa, xa)
        ss_b += np.einsum("ij,ij->i", xb, xb)
        cross += xa @ xb.T
    ok_a = ss_a > (_CONSTANT_RTOL ** 2) * raw_a
    ok_b = ss_b > (_CONSTANT_RTOL ** 2) * raw_b
    inv_a = np.where(ok_a, 1.0 / np.sqrt(np.where(ok_a, ss_a, 1.0)), np.nan)
    inv_b = np.where(ok_b, 1.0 / np.sqrt(np.where(ok_b, ss_b, 1.0)), np.nan)
    r = cross * inv_a[:, None] * inv_b[None, :]
    return np.clip(r, -1.0, 1.0)


# --------------------------------------------------------------------------- ranks
def _check_similarity(similarity: np.ndarray, true_index: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"similarity must be (n_predicted, n_candidates), got shape {s.shape}")
    n, m = s.shape
    if n < 1 or m < 2:
        raise ValueError(f"similarity needs >= 1 row and >= 2 candidates, got shape {s.shape}")
    if true_index is None:
        if m < n:
            raise ValueError(f"true_index is required when there are fewer candidates ({m}) than rows ({n})")
        truth = np.arange(n)
    else:
        raw = np.asarray(true_index)
        if raw.shape != (n,):
            raise ValueError(f"true_index must have shape ({n},), got {raw.shape}")
        if raw.size and not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"true_index must hold integers, got dtype {raw.dtype}")
        truth = raw.astype(np.int64)
        if truth.size and (truth.min() < 0 or truth.max() >= m):
            raise ValueError(f"true_index out of range [0, {m})")
    return s, truth


def _accuracy_tables(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, m) pairwise accuracy and top-1 share each candidate would score as a row's truth
    (NaN where the similarity is non-finite or the row has < 2 finite entries).

    Average ranks within each row, vectorised: non-finite entries sort last (as +inf), so
    the finite entries' positions are their ranks among the finite ones."""
    n, m = s.shape
    finite = np.isfinite(s)
    f = finite.sum(axis=1)
    keyed = np.where(finite, s, np.inf)
    order = np.argsort(keyed, axis=1, kind="stable")
    ordered = np.take_along_axis(keyed, order, axis=1)
    position = np.broadcast_to(np.arange(m), (n, m))
    first = np.ones((n, m), dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones((n, m), dtype=bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, position, 0), axis=1)       # others below
    end = np.minimum.accumulate(np.where(last, position, m)[:, ::-1], axis=1)[:, ::-1]
    # others lower + 0.5 x others tied (end - start = tied entries other than itself)
    sorted_pairwise = (start + 0.5 * (end - start)) / np.maximum(f - 1, 1)[:, None]
    pairwise = np.empty((n, m))
    np.put_along_axis(pairwise, order, sorted_pairwise, axis=1)
    row_max = ordered[np.arange(n), np.maximum(f - 1, 0)]
    at_max = finite & (s == row_max[:, None])
    top1 = at_max / np.maximum(at_max.sum(axis=1), 1)[:, None]
    undefined = ~finite | (f < 2)[:, None]
    pairwise[undefined] = np.nan
    top1[undefined] = np.nan
    return pairwise, top1


def _gathered_means(table: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """(k,) NaN-ignoring mean over rows of ``table[i, chosen[:, i]]`` (NaN when all are NaN)."""
    n, m = table.shape
    values = table.ravel()[chosen + (np.arange(n, dtype=np.int64) * m)[None, :]]
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def identification_ranks(similarity: np.ndarray, true_index: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Per-stimulus pairwise identification accuracy and top-1 hits.

    Parameters
    ----------
    similarity : numpy.ndarray, shape (n_predicted, n_candidates)
        Similarity of each predicted feature vector with each candidate (e.g.
        :func:`similarity_matrix`); non-finite entries are undefined and left out.
    true_index : numpy.ndarray of int, shape (n_predicted,), optional
        The true candidate of each row; default ``arange(n_predicted)`` (candidate ``i`` is
        the truth of row ``i``; needs ``n_candidates >= n_predicted``, extra candidates being
        distractors).

    Returns
    -------
    pairwise : numpy.ndarray, shape (n_predicted,)
        Fraction of the other defined candidates of the row whose similarity is lower than the
        true candidate's (ties count 0.5); chance 0.5 (Horikawa & Kamitani 2017).
    top1 : numpy.ndarray, shape (n_predicted,)
        1 when the true candidate has the highest similarity, ``1 / k`` when ``k`` candidates
        tie for it, else 0; chance ``1 / n_candidates`` (Kay et al. 2008).
        Both are NaN for a row whose true similarity is undefined or that has fewer than 2
        defined candidates.
    """
    s, truth = _check_similarity(similarity, true_index)
    pairwise, top1 = _accuracy_tables(s)
    rows = np.arange(s.shape[0])
    return pairwise[rows, truth], top1[rows, truth]


# --------------------------------------------------------------------------- permutation test
@dataclass(frozen=True)
class IdentificationResult:
    """Outcome of :func:`identification_test`.

    Attributes
    ----------
    pairwise_accuracy : float
        Mean over the defined rows of the per-stimulus pairwise accuracy.
    top1_accuracy : float
        Mean over the defined rows of the top-1 hits (ties shared).
    chance_pairwise : float
        0.5.
    chance_top1 : float
        Mean over the defined rows of ``1 / f`` (``f`` defined candidates of the row):
        ``1 / n_candidates`` when every similarity is finite.
    p_pairwise, p_top1 : float
        One-sided permutation p-values ``(1 + #{null >= observed}) / (1 + n_permutations)``
        (NaN without permutations).
    null_pairwise, null_top1 : numpy.ndarray, shape (n_permutations,)
        The statistics under each permutation of the candidates' labels.
    per_stimulus_pairwise, per_stimulus_top1 : numpy.ndarray, shape (n_predicted,)
        Per-row accuracies (:func:`identification_ranks`; NaN for undefined rows).
    n_permutations : int
    n_candidates : int
    n_defined : int
        Rows with a defined accuracy (those averaged).
    """

    pairwise_accuracy: float
    top1_accuracy: float
    chance_pairwise: float
    chance_top1: float
    p_pairwise: float
    p_top1: float
    null_pairwise: np.ndarray
    null_top1: np.ndarray
    per_stimulus_pairwise: np.ndarray
    per_stimulus_top1: np.ndarray
    n_permutations: int
    n_candidates: int
    n_defined: int


def _permutations_within_groups(keys: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(k, m) permutations of ``range(m)`` that map every candidate to one of its own group:
    row ``r`` orders each group's candidates by ``keys[r]`` (uniform keys: uniform within-group
    permutations).

    Parameters
    ----------
    keys : numpy.ndarray, shape (k, m)
        Random sort keys.
    codes : numpy.ndarray of int, shape (m,)
        Group of each candidate.
    """
    k, m = keys.shape
    order = np.lexsort((keys, np.broadcast_to(codes, (k, m))), axis=-1)    # by group, then key
    slots = np.argsort(codes, kind="stable")                               # the same group order
    perms = np.empty((k, m), dtype=np.int64)
    perms[:, slots] = order
    return perms


def identification_test(similarity: np.ndarray, *, n_permutations: int, rng: np.random.Generator | None,
                        true_index: np.ndarray | None = None, groups: np.ndarray | None = None
                        ) -> IdentificationResult:
    """Pairwise and top-1 identification accuracy with candidate-label permutation p-values.

    Parameters
    ----------
    similarity : numpy.ndarray, shape (n_predicted, n_candidates)
        Similarity of each predicted feature vector with each candidate (e.g.
        :func:`similarity_matrix`); non-finite entries are undefined (see the module
        docstring).
    n_permutations : int
        Number of permutations (0: no test, NaN p-values).
    rng : numpy.random.Generator or None
        Source of the permutations (required when ``n_permutations > 0``). They are drawn in
        blocks as ``rng.permuted(np.tile(np.arange(n_candidates), (block, 1)), axis=1)``,
        which gives the same permutations, in the same order, as one
        ``rng.permutation(n_candidates)`` call per permutation: equal generators give equal
        results whatever the block size.
    true_index : numpy.ndarray of int, shape (n_predicted,), optional
        The true candidate of each row; default ``arange(n_predicted)``.
    groups : numpy.ndarray, shape (n_candidates,), optional
        A group label per candidate (e.g. the cross-validation fold whose decoder never saw
        it). A row is then compared only with the candidates of its true candidate's group
        (the others are undefined in that row), and the permutations exchange labels only
        within groups. They are then drawn, in blocks, from ``rng.random((block,
        n_candidates))``: each row of keys orders every group's candidates at random, so
        equal generators again give equal results whatever the block size.

    Returns
    -------
    IdentificationResult

    Notes
    -----
    Under the null the candidates' labels are exchangeable: permutation ``pi`` (a row of the
    drawn array) assigns row ``i`` the candidate ``pi[true_index[i]]`` as its truth, and the
    statistics are recomputed with the similarity matrix unchanged. Each row is ranked once
    (tables of the pairwise accuracy and top-1 share every candidate would get as the
    truth); a block of permutations is one gather from those tables, so 10,000 permutations
    of 1,000 stimuli take a fraction of a second and memory stays bounded (64 MiB blocks).
    """
    s, truth = _check_similarity(similarity, true_index)
    n_permutations = int(n_permutations)
    if n_permutations < 0:
        raise ValueError(f"n_permutations must be >= 0, got {n_permutations}")
    if n_permutations and rng is None:
        raise ValueError("rng is required to draw permutations")
    n, m = s.shape
    codes = None
    if groups is not None:
        raw_groups = np.asarray(groups)
        if raw_groups.shape != (m,):
            raise ValueError(f"groups must have shape ({m},) (one label per candidate), got {raw_groups.shape}")
        codes = np.unique(raw_groups, return_inverse=True)[1].reshape(m)
        s = np.where(codes[truth][:, None] == codes[None, :], s, np.nan)
    pairwise_table, top1_table = _accuracy_tables(s)
    rows = np.arange(n)
    per_pairwise = pairwise_table[rows, truth]
    per_top1 = top1_table[rows, truth]
    observed_pairwise = float(_gathered_means(pairwise_table, truth[None, :])[0])
    observed_top1 = float(_gathered_means(top1_table, truth[None, :])[0])
    defined = np.isfinite(per_pairwise)
    n_defined = int(defined.sum())
    n_finite = np.isfinite(s).sum(axis=1)
    chance_top1 = float(np.mean(1.0 / n_finite[defined])) if n_defined else float("nan")

    null_pairwise = np.empty(n_permutations)
    null_top1 = np.empty(n_permutations)
    block = max(1, _BLOCK_ELEMENTS // (8 * max(n, m)))
    for start in range(0, n_permutations, block):
        size = min(block, n_permutations - start)
        if codes is None:
            perms = rng.permuted(np.tile(np.arange(m, dtype=np.int64), (size, 1)), axis=1)
        else:
            perms = _permutations_within_groups(rng.random((size, m)), codes)
        chosen = perms[:, truth]                                   # (size, n)
        null_pairwise[start:start + size] = _gathered_means(pairwise_table, chosen)
        null_top1[start:start + size] = _gathered_means(top1_table, chosen)

    def p_value(null: np.ndarray, observed: float) -> float:
        if n_permutations == 0 or not np.isfinite(observed):
            return float("nan")
        return float((1 + np.count_nonzero(null >= observed - _P_ATOL)) / (1 + n_permutations))

    return IdentificationResult(
        pairwise_accuracy=observed_pairwise, top1_accuracy=observed_top1, chance_pairwise=0.5,
        chance_top1=chance_top1, p_pairwise=p_value(null_pairwise, observed_pairwise),
        p_top1=p_value(null_top1, observed_top1), null_pairwise=null_pairwise, null_top1=null_top1,
        per_stimulus_pairwise=per_pairwise, per_stimulus_top1=per_top1, n_permutations=n_permutations,
        n_candidates=m, n_defined=n_defined)
