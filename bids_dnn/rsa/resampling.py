"""Kernels for stimulus x subject bootstraps of RDM evaluations (used by :mod:`bids_dnn.rsa.bootstrap`).

Resampling stimuli as weights
    Resampling stimuli with replacement (``idx``, ``n_cond`` draws) turns an RDM into the RDM of
    the resampled conditions. rsatoolbox (``RDMs.subsample_pattern``) sorts the drawn indices,
    builds the ``n_cond x n_cond`` matrix of the resampled conditions and marks every pair of a
    stimulus with a copy of itself as NaN, which is then dropped before comparing. The remaining
    pair entries are exactly the original pairs ``(i, j)``, ``i < j``, each repeated
    ``c_i * c_j`` times (``c`` = how often each stimulus was drawn). Every pair-local measure
    (``spearman``, ``pearson``, ``cosine``, ``rho_a``, ``kendall_tau_a``) is therefore a
    *weighted* statistic over the original pairs with weights ``w_p = c_i c_j``
    (:func:`pair_weights`): weighted means and sums of products replace plain ones, and the rank
    of a pair in the resampled vector (average ranks for ties, as ``scipy.stats.rankdata``) is
    ``#weight below + (weight tied + 1) / 2`` (:func:`weighted_ranks`). Nothing depends on the
    order of the resampled conditions, so no resampled vector is ever built; ranks are exact
    half-integers, so rank averages (noise-ceiling pooling) tie exactly where rsatoolbox's do.
    ``spearman`` / ``rho_a`` rank per resample along sort orders computed once; ``pearson`` /
    ``cosine`` need only the weighted Gram matrix of all rows. ``kendall_tau_a`` is not
    vectorised: it loops over resamples (explicit vectors, like the whitened measures).
Subjects as weights
    Subjects drawn with replacement enter as counts ``u_s``: model evaluations are the
    ``u``-weighted mean over subjects and pooled RDMs the ``u``-weighted mean of the pooled rows
    (as averaging the repeated copies). rsatoolbox's leave-one-out noise ceiling groups RDMs by
    their original index, so all copies of a subject leave together and the ceiling is the
    plain mean over the distinct subjects drawn; we do the same.
Whitened measures
    ``corr_cov`` / ``cosine_cov`` are not pair-local (the whitening couples all pairs of the
    resampled condition set), so they run a per-resample loop that builds the resampled vectors
    exactly as rsatoolbox does and whitens them with its missing-value double centring
    (``rsatoolbox.rdm.compare._cov_weighting``).
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from bids_dnn.rsa.compare import _tau_a_pair
from bids_dnn.rsa.measures import WEIGHTED_RESAMPLING_MEASURES
from bids_dnn.rsa.rdm import pair_indices

__all__ = [
    "stimulus_counts",
    "pair_weights",
    "weighted_ranks",
    "evaluate_resamples",
    "resampled_vectors",
]

_MAX_BLOCK = 2 ** 21  # elements of one (chunk, rows, n_pairs) float64 block (~16 MB)


def stimulus_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each resample.

    Parameters
    ----------
    indices : np.ndarray of int, (n_resamples, n_draws)
    n : int

    Returns
    -------
    np.ndarray of float64, (n_resamples, n)
    """
    idx = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"resampling indices must lie in [0, {n})")
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def pair_weights(counts: np.ndarray) -> np.ndarray:
    """Pair weights ``c_i c_j`` of resampled stimuli (pairs in ``np.triu_indices`` order).

    Parameters
    ----------
    counts : np.ndarray, (n_resamples, n_cond)
        From :func:`stimulus_counts`.

    Returns
    -------
    np.ndarray, (n_resamples, n_pairs)
        The multiplicity of each original pair among the non-NaN entries of rsatoolbox's
        resampled RDM (pairs of a stimulus with itself are dropped; they are not pairs here).
    """
    rows, cols = pair_indices(counts.shape[1])
    return counts[:, rows] * counts[:, cols]


def _tie_bounds(sorted_vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the first and last element of each element's tie group (along the last axis)."""
    p = sorted_vals.shape[-1]
    pos = np.arange(p)
    new = sorted_vals[..., 1:] != sorted_vals[..., :-1]
    lead = np.ones(sorted_vals.shape[:-1] + (1,), dtype=bool)
    start = np.concatenate([lead, new], axis=-1)
    end = np.concatenate([new, lead], axis=-1)
    first = np.maximum.accumulate(np.where(start, pos, 0), axis=-1)
    last = np.minimum.accumulate(np.where(end, pos, p - 1)[..., ::-1], axis=-1)[..., ::-1]
    return first, last


def _argsort_last(values: np.ndarray) -> np.ndarray:
    """argsort along the last axis; integer keys spanning < 2**16 use numpy's radix sort."""
    if np.issubdtype(values.dtype, np.integer) and values.size:
        lo = values.min()
        if values.max() - lo < 2 ** 16:
            return np.argsort((values - lo).astype(np.uint16), axis=-1, kind="stable")
    return np.argsort(values, axis=-1)


def weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average ranks of every entry in the multiset where entry ``p`` occurs ``weights[p]`` times.

    ``rank_p = sum_{q: v_q < v_p} w_q + (sum_{q: v_q == v_p} w_q + 1) / 2``, i.e.
    ``scipy.stats.rankdata`` of the expanded vector, read at any copy of ``p``. Entries of
    weight 0 get a rank but do not influence the others.

    Parameters
    ----------
    values : np.ndarray, (n_rows, n_pairs) (shared by all resamples) or
        (n_resamples, n_rows, n_pairs) (one set per resample); float or integer keys
    weights : np.ndarray, (n_resamples, n_pairs)
        Non-negative integer-valued weights.

    Returns
    -------
    np.ndarray of float64, (n_resamples, n_rows, n_pairs)
        Exact (integer or half-integer) values.
    """
    values = np.asarray(values)
    weights = np.asarray(weights, dtype=np.float64)
    shared = values.ndim == 2
    order = _argsort_last(values)
    sv = np.take_along_axis(values, order, axis=-1)
    if shared:
        ws = weights[:, order]  # (b, r, p)
    else:
        ws = np.take_along_axis(weights[:, None, :], order, axis=-1)
    cs = np.cumsum(ws, axis=-1)
    below = cs - ws  # integer-valued floats: exact
    if np.any(sv[..., 1:] == sv[..., :-1]):
        first, last = _tie_bounds(sv)
        if shared:
            first = np.broadcast_to(first, ws.shape)
            last = np.broadcast_to(last, ws.shape)
        low = np.take_along_axis(below, first, axis=-1)
        tied = np.take_along_axis(cs, last, axis=-1) - low
        ranks_sorted = low + (tied + 1.0) / 2.0
    else:
        ranks_sorted = below + (ws + 1.0) / 2.0
    inverse = np.argsort(order, axis=-1)  # int permutation: fast
    if shared:
        inverse = np.broadcast_to(inverse, ws.shape)
    return np.take_along_axis(ranks_sorted, inverse, axis=-1)


def _subject_means(sim: np.ndarray, u: np.ndarray) -> np.ndarray:
    """u-weighted mean over subjects: sim (b, s, j), u (b, s) -> (b, j)."""
    return np.einsum("bs,bsj->bj", u, sim) / u.sum(axis=1)[:, None]


def _ratio(num: np.ndarray, sq_den: np.ndarray) -> np.ndarray:
    """num / sqrt(sq_den), NaN where the denominator is 0 (zero-norm RDMs)."""
    den = np.sqrt(np.maximum(sq_den, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where(den > 0, out, np.nan)


def _ceiling_means(lower: np.ndarray, upper: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Mean over the distinct subjects drawn (u > 0) of the per-subject ceilings -> (b, 2)."""
    present = u > 0
    n_present = present.sum(axis=1)
    return np.stack([np.where(present, lower, 0.0).sum(axis=1) / n_present,
                     np.where(present, upper, 0.0).sum(axis=1) / n_present], axis=1)


def _moment_chunk(data: np.ndarray, models: np.ndarray, w: np.ndarray, u: np.ndarray,
                  measure: str, noise_ceiling: bool) -> tuple[np.ndarray, np.ndarray]:
    """``pearson`` / ``cosine`` from weighted second moments only.

    With ``C[b]`` the weighted (centred for pearson) Gram matrix of all data and model rows,
    similarities are ``C_sj / sqrt(C_ss C_jj)``. The pooled RDM is
    ``sum_t u_t x_t / d_t / U`` (``d_t`` = weighted SD for pearson (rsatoolbox z-scores with
    ``nanstd``), RMS for cosine), so with ``a_t = u_t / d_t`` its products with subject ``s`` are
    ``(C a)_s`` and its squared norm ``a^T C a`` (the factor ``1 / U`` cancels); leaving all
    copies of subject ``s`` out sets ``a_s`` to 0.
    """
    n_s = data.shape[0]
    v = np.vstack([data, models])
    if measure == "pearson":  # unweighted pre-centring: fewer cancellations below
        v = v - v.mean(axis=1, keepdims=True)
    r = v.shape[0]
    n_b = w.sum(axis=1)
    iu, ju = np.triu_indices(r)
    g_half = w @ (v[iu] * v[ju]).T  # (b, r (r + 1) / 2)
    g = np.empty((w.shape[0], r, r))
    g[:, iu, ju] = g_half
    g[:, ju, iu] = g_half
    if measure == "pearson":
        mu = (w @ v.T) / n_b[:, None]
        g -= n_b[:, None, None] * mu[:, :, None] * mu[:, None, :]
    diag = np.diagonal(g, axis1=1, axis2=2)
    sim = _ratio(g[:, :n_s, n_s:], diag[:, :n_s, None] * diag[:, None, n_s:])
    evals = _subject_means(sim, u)
    nc = np.full((w.shape[0], 2), np.nan)
    if noise_ceiling:
        cd = g[:, :n_s, :n_s]
        css = diag[:, :n_s]
        with np.errstate(invalid="ignore", divide="ignore"):
            a = u / np.sqrt(css / n_b[:, None])
        ca = np.einsum("bst,bt->bs", cd, a)
        q = np.einsum("bs,bs->b", a, ca)
        upper = _ratio(ca, q[:, None] * css)
        lower = _ratio(ca - a * css, (q[:, None] - 2 * a * ca + a * a * css) * css)
        lower = np.where(u.sum(axis=1, keepdims=True) == u, upper, lower)
        nc = _ceiling_means(lower, upper, u)
    return evals, nc


def _rank_chunk(data: np.ndarray, models: np.ndarray, w: np.ndarray, u: np.ndarray,
                measure: str, noise_ceiling: bool) -> tuple[np.ndarray, np.ndarray]:
    """``spearman`` / ``rho_a``: weighted ranks per resample, centred at ``(n_b + 1) / 2``."""
    n_b = w.sum(axis=1)
    mid = ((n_b + 1.0) / 2.0)[:, None, None]
    rd = weighted_ranks(data, w)  # (b, s, p)
    rdc = rd - mid
    rmc = weighted_ranks(models, w) - mid  # (b, j, p)
    nd = np.einsum("bsp,bsp,bp->bs", rdc, rdc, w)
    nm = np.einsum("bjp,bjp,bp->bj", rmc, rmc, w)
    num = np.matmul(rdc * w[:, None, :], rmc.transpose(0, 2, 1))  # (b, s, j)
    if measure == "rho_a":
        scale = (12.0 / (n_b ** 3 - n_b))[:, None, None]
        sim = num * scale
    else:
        sim = _ratio(num, nd[:, :, None] * nm[:, None, :])
    evals = _subject_means(sim, u)
    nc = np.full((w.shape[0], 2), np.nan)
    if noise_ceiling:
        # rank sums are exact; 2 * sums are integer sort keys with the pooled RDMs' order/ties
        ui = u.astype(np.int64)
        keys = np.rint(2 * rd).astype(np.int64)
        total = np.einsum("bs,bsp->bp", ui, keys)
        loo = total[:, None, :] - ui[:, :, None] * keys  # (b, s, p)
        alone = (ui.sum(axis=1, keepdims=True) == ui)
        loo[alone] = np.broadcast_to(total[:, None, :], loo.shape)[alone]
        both = np.concatenate([loo, total[:, None, :]], axis=1)  # (b, s + 1, p)
        rq = weighted_ranks(both, w) - mid
        prod = np.einsum("bsp,bsp,bp->bs", rq[:, :-1], rdc, w)
        prod_all = np.einsum("bp,bsp,bp->bs", rq[:, -1], rdc, w)
        nq = np.einsum("bsp,bsp,bp->bs", rq, rq, w)
        if measure == "rho_a":
            lower = prod * scale[:, :, 0]
            upper = prod_all * scale[:, :, 0]
        else:
            lower = _ratio(prod, nq[:, :-1] * nd)
            upper = _ratio(prod_all, nq[:, -1:] * nd)
        nc = _ceiling_means(lower, upper, u)
    return evals, nc


def _fast_chunk(data: np.ndarray, models: np.ndarray, w: np.ndarray, u: np.ndarray,
                measure: str, noise_ceiling: bool) -> tuple[np.ndarray, np.ndarray]:
    """Evaluations (b, n_models) and noise ceilings (b, 2) for one chunk of resamples."""
    if measure in ("pearson", "cosine"):
        return _moment_chunk(data, models, w, u, measure, noise_ceiling)
    return _rank_chunk(data, models, w, u, measure, noise_ceiling)


# --------------------------------------------------------------------------- explicit loop
def resampled_vectors(vectors: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RDM vectors of the resampled conditions, as rsatoolbox's ``subsample_pattern`` builds them.

    Parameters
    ----------
    vectors : np.ndarray, (n_rdms, n_pairs)
    idx : np.ndarray of int, (n_draws,)
        Drawn conditions (sorted here, as rsatoolbox does).

    Returns
    -------
    values : np.ndarray, (n_rdms, n_valid)
        Entries of the resampled pairs in ``np.triu_indices(n_draws, 1)`` order, without the
        pairs of a condition with a copy of itself.
    valid : np.ndarray of bool, (n_draws * (n_draws - 1) / 2,)
        Which resampled pairs are kept (rsatoolbox's non-NaN mask).
    """
    n_cond = int(round((1 + np.sqrt(1 + 8 * vectors.shape[1])) / 2))
    rows, cols = pair_indices(n_cond)
    lookup = np.zeros((n_cond, n_cond), dtype=np.int64)
    lookup[rows, cols] = np.arange(rows.size)
    lookup[cols, rows] = np.arange(rows.size)
    sel = np.sort(np.asarray(idx, dtype=np.int64))
    r2, c2 = pair_indices(sel.size)
    valid = sel[r2] != sel[c2]
    return vectors[:, lookup[sel[r2], sel[c2]][valid]], valid


def _whiten_missing(vectors: np.ndarray, valid: np.ndarray, n_cond: int) -> np.ndarray:
    """rsatoolbox ``_cov_weighting`` (``sigma_k=None``) with missing pairs: double centring of
    ``-D/2`` by least squares over the observed entries, off-diagonal part times sqrt(2).
    (n, n_valid) -> (n, n_valid + n_cond)."""
    n_dist = vectors.shape[1]
    rows, cols = pair_indices(n_cond)
    n_pairs = rows.size
    sum_i = np.zeros((n_pairs + n_cond, n_cond))
    sum_i[np.arange(n_pairs), rows] = 1.0
    sum_i[np.arange(n_pairs), cols] = 1.0
    sum_i[n_pairs + np.arange(n_cond), np.arange(n_cond)] = 2.0
    sum_i = sum_i[np.concatenate([valid, np.ones(n_cond, dtype=bool)])]
    sum_i[n_dist:, :] /= 2
    diag = np.concatenate((np.ones((n_dist, 1)) / 2, np.ones((n_cond, 1))))
    vw = -0.5 * np.c_[vectors, np.zeros((vectors.shape[0], n_cond))]
    vw = vw - (vw @ sum_i @ np.linalg.inv(sum_i.T @ (diag * sum_i)) @ (diag * sum_i).T)
    vw[:, :n_dist] *= np.sqrt(2.0)
    return vw


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.sqrt(np.einsum("ij,ij->i", a, a))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a @ b.T) / na[:, None] / nb[None, :]
    out[(na == 0)[:, None] | (nb == 0)[None, :]] = np.nan
    return out


def _loop_compare(a: np.ndarray, b: np.ndarray, measure: str, valid: np.ndarray,
                  n_cond: int) -> np.ndarray:
    """Similarity (n_a, n_b) of resampled vectors (NaN pairs already dropped)."""
    if measure in ("corr_cov", "cosine_cov"):
        if measure == "corr_cov":
            a = a - a.mean(axis=1, keepdims=True)
            b = b - b.mean(axis=1, keepdims=True)
        return _cos_rows(_whiten_missing(a, valid, n_cond), _whiten_missing(b, valid, n_cond))
    if measure == "kendall_tau_a":  # resampled lengths are no pair counts: no compare_rdms
        return np.array([[_tau_a_pair(x, y) for y in b] for x in a]).reshape(len(a), len(b))
    if measure in ("spearman", "rho_a"):
        a = scipy.stats.rankdata(a, axis=1)
        b = scipy.stats.rankdata(b, axis=1)
    if measure in ("spearman", "rho_a", "pearson"):
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
    if measure == "rho_a":
        n = a.shape[1]
        return (a @ b.T) * (12.0 / (n ** 3 - n))
    return _cos_rows(a, b)


def _loop_pool_rows(x: np.ndarray, measure: str) -> np.ndarray:
    """rsatoolbox ``inference_util.pool_rdm`` row preprocessing (before averaging)."""
    if measure in ("cosine", "cosine_cov"):
        return x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
    if measure in ("pearson", "corr_cov"):
        x = x - x.mean(axis=1, keepdims=True)
        return x / x.std(axis=1, keepdims=True)
    return scipy.stats.rankdata(x, axis=1)


def _loop_one(data: np.ndarray, models: np.ndarray, stim: np.ndarray | None, u: np.ndarray,
              measure: str, noise_ceiling: bool) -> tuple[np.ndarray, np.ndarray]:
    """One resample, explicitly: evaluations (n_models,) and noise ceiling (2,)."""
    n_cond = int(round((1 + np.sqrt(1 + 8 * data.shape[1])) / 2))
    if stim is None:
        stim = np.arange(n_cond)
    d, valid = resampled_vectors(data, stim)
    m, _ = resampled_vectors(models, stim)
    n_draw = len(stim)
    sim = _loop_compare(m, d, measure, valid, n_draw)  # (j, s)
    evals = sim @ u / u.sum()
    nc = np.full(2, np.nan)
    if noise_ceiling:
        rows = _loop_pool_rows(d, measure)
        present = np.flatnonzero(u > 0)
        total = u @ rows
        pooled_all = total / u.sum()
        lower, upper = [], []
        for s in present:
            rest = u.sum() - u[s]
            pooled = pooled_all if rest == 0 else (total - u[s] * rows[s]) / rest
            both = np.vstack([pooled, pooled_all])
            if measure in ("pearson", "corr_cov"):
                both = both - both.min(axis=1, keepdims=True)
            lo_up = _loop_compare(both, d[s:s + 1], measure, valid, n_draw)[:, 0]
            lower.append(lo_up[0])
            upper.append(lo_up[1])
        nc[:] = np.mean(lower), np.mean(upper)
    return evals, nc


def evaluate_resamples(data: np.ndarray, models: np.ndarray, measure: str, *,
                       stimulus_indices: np.ndarray | None = None,
                       subject_counts: np.ndarray | None = None, noise_ceiling: bool = True,
                       method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Model evaluations and noise ceilings on stimulus and/or subject resamples.

    Parameters
    ----------
    data : np.ndarray, (n_subj, n_pairs)
    models : np.ndarray, (n_models, n_pairs)
    measure : str
        A key of ``COMPARISON_MEASURES``.
    stimulus_indices : np.ndarray of int, (n_resamples, n_cond), optional
        Drawn stimuli per resample (``None``: every stimulus once, i.e. no stimulus resampling).
    subject_counts : np.ndarray, (n_resamples, n_subj), optional
        How often each subject is drawn (``None``: each once).
    noise_ceiling : bool
        Also compute the leave-one-subject-out lower and the upper noise ceiling.
    method : {"auto", "weighted", "loop"}
        ``weighted``: the vectorised weighted kernels (pair-local measures other than
        ``kendall_tau_a``); ``loop``: build each resampled RDM explicitly (every measure; the
        reference implementation); ``auto`` takes ``weighted`` where possible.

    Returns
    -------
    evaluations : np.ndarray, (n_resamples, n_models)
        ``u``-weighted mean over subjects of the similarity of each resampled model RDM with
        each resampled data RDM.
    noise_ceilings : np.ndarray, (n_resamples, 2)
        ``[lower, upper]`` (NaN if not requested).
    """
    data = np.atleast_2d(np.asarray(data, dtype=np.float64))
    models = np.atleast_2d(np.asarray(models, dtype=np.float64))
    n_subj, n_pairs = data.shape
    n_cond = int(round((1 + np.sqrt(1 + 8 * n_pairs)) / 2))
    if stimulus_indices is None and subject_counts is None:
        raise ValueError("give stimulus_indices and/or subject_counts")
    n_res = (stimulus_indices if stimulus_indices is not None else subject_counts).shape[0]
    if subject_counts is None:
        subject_counts = np.ones((n_res, n_subj))
    subject_counts = np.asarray(subject_counts, dtype=np.float64)
    if method == "auto":
        method = "weighted" if measure in WEIGHTED_RESAMPLING_MEASURES else "loop"
    if method == "weighted" and measure not in WEIGHTED_RESAMPLING_MEASURES:
        raise ValueError(f"no weighted kernel for {measure!r}; use method='loop'")
    evals = np.empty((n_res, models.shape[0]))
    nc = np.full((n_res, 2), np.nan)
    if method == "loop":
        for b in range(n_res):
            stim = None if stimulus_indices is None else stimulus_indices[b]
            evals[b], nc[b] = _loop_one(data, models, stim, subject_counts[b], measure,
                                        noise_ceiling)
        return evals, nc
    if method != "weighted":
        raise ValueError(f"unknown method {method!r}")
    rows = (n_subj + 1) * 2 + models.shape[0] if measure in ("spearman", "rho_a") else 1
    step = int(np.clip(_MAX_BLOCK // (rows * n_pairs), 1, 512))
    for b0 in range(0, n_res, step):
        sl = slice(b0, min(b0 + step, n_res))
        if stimulus_indices is None:
            w = np.ones((sl.stop - sl.start, n_pairs))
        else:
            w = pair_weights(stimulus_counts(stimulus_indices[sl], n_cond))
        evals[sl], nc[sl] = _fast_chunk(data, models, w, subject_counts[sl], measure,
                                        noise_ceiling)
    return evals, nc
