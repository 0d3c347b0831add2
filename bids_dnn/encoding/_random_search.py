"""Banded (multiple-kernel) ridge by random search over kernel weights, organised for many targets:
per outer fold, the work that depends on the kernels only is done once and the targets stream
through it in batches.

Pure functions on arrays; himalaya (and through it torch) is imported only inside the functions
that use it.

The choice is himalaya's
    The search is the one of ``himalaya.kernel_ridge.solve_multiple_kernel_ridge_random_search``
    (as ``MultipleKernelRidgeCV(solver="random_search", fit_intercept=True)`` calls it: one
    alpha per target, score ``l2_neg_loss``, eigendecomposition), with the same operations on
    arrays of the same layout, in the kernels' dtype, so that every target gets the same kernel
    weights and alpha (in float32 too, where a different rounding of nearly tied scores would
    pick another candidate):

    1. each training kernel is centred (``himalaya.kernel_ridge.KernelCenterer``), the
       responses with their training mean;
    2. for each candidate ``gamma`` (Dirichlet draws, ``himalaya.kernel_ridge.
       generate_dirichlet_samples``, the first replaced by uniform weights):
       ``K = sum_i gamma_i K_i``; for each inner split the inner training kernel is centred again
       and diagonalised, ``K_tr = V diag(lam) V'``; the validation predictions of alpha ``a``
       are ``M_a @ y_tr`` with ``M_a = K_val V diag(1 / (lam + a)) V'`` (NaN, then scored
       ``-1e5``, for alphas below twice the most negative eigenvalue) and ``y_tr`` centred
       with its inner training mean; the score is minus the validation MSE;
    3. scores are averaged over inner splits (float64, cast back), ``1e-10 log(alpha)`` is
       added, each target takes its best alpha; a target moves to this ``gamma`` when that
       score beats its best so far by more than the dtype's epsilon (targets whose score never
       does keep uniform weights and alpha 1, as in himalaya).

What differs is the organisation and the refit
    - all targets stream through each (candidate, inner split) decomposition in batches of
      ``batch`` targets; the validation errors are computed alpha by alpha into one reused
      buffer instead of an ``(n_alphas, n_val, batch)`` prediction array and its temporaries
      (NumPy backend);
    - the refit runs once, after the search, with each target's final candidate and alpha only:
      one Cholesky factorisation of ``K_gamma + alpha I`` in float64 per pair in use
      (:func:`refit_fold`), where himalaya refits at every improvement of a target, with
      ``(n, n)`` resolution matrices for every alpha in use, in the kernels' dtype. The
      refitted model is the same; its predictions differ from himalaya's by the latter's
      float32 rounding only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import scipy.linalg

__all__ = ["kernel_weight_candidates", "search_fold", "refit_fold", "NO_ALPHA"]

#: himalaya's alpha for a target whose inner-CV score never beats -inf (NaN scores)
NO_ALPHA = 1.0
_INVALID_SCORE = -1e5              # himalaya's score of alphas below twice the most negative eigenvalue
_TIE_SLOPE = 1e-10                 # himalaya's tie-break: + 1e-10 * log(alpha)


def kernel_weight_candidates(n_iter: int, n_spaces: int, concentration: Sequence[float], seed: int) -> np.ndarray:
    """The random search's kernel weights: himalaya's seeded Dirichlet draws, the first uniform.

    Parameters
    ----------
    n_iter : int
        Number of candidates (at least 1).
    n_spaces : int
    concentration : sequence of float
        Dirichlet concentrations, cycled through.
    seed : int
        ``random_state`` of ``himalaya.kernel_ridge.generate_dirichlet_samples``.

    Returns
    -------
    numpy.ndarray, shape (n_iter, n_spaces), float64
        Rows sum to 1.
    """
    from himalaya.kernel_ridge import generate_dirichlet_samples

    if int(n_iter) < 1:
        raise ValueError(f"n_iter must be a positive number of candidates, got {n_iter}")
    draws = generate_dirichlet_samples(n_samples=int(n_iter), n_kernels=int(n_spaces),
                                       concentration=list(concentration), random_state=int(seed))
    gammas = np.array(draws.cpu() if hasattr(draws, "cpu") else draws, dtype=np.float64)
    gammas[0] = 1.0 / n_spaces
    return gammas


def _centred(kernel: Any) -> Any:
    """A kernel centred with its own row / column means (``KernelCenterer``, its arithmetic)."""
    from himalaya.kernel_ridge import KernelCenterer

    return KernelCenterer().fit_transform(kernel)


def _resolution(B: Any, k_train: Any, k_val: Any, alphas: Any) -> tuple[Any, np.ndarray]:
    """``(n_alphas, n_val, n_train)`` validation-prediction matrices of one inner split and the
    mask of invalid alphas (NaN matrices)."""
    from himalaya.kernel_ridge import KernelCenterer

    centerer = KernelCenterer()
    k_train = centerer.fit_transform(k_train)
    k_val = centerer.transform(k_val)
    lam, vecs = B.eigh(k_train)
    del k_train
    kv = B.matmul(k_val, vecs)
    weighting = (alphas[:, None] + lam) ** -1
    if lam[0] < 0:
        weighting[alphas < -lam[0] * 2, :] = B.asarray(B.nan, dtype=weighting.dtype)
    nan_rows = np.asarray(B.to_numpy(B.isnan(weighting[:, 0])), dtype=bool)
    mats = B.zeros_like(kv, shape=(nan_rows.size, kv.shape[0], vecs.shape[0]))
    for a in range(nan_rows.size):
        if nan_rows[a]:                               # himalaya's matrix is all NaN: skip the product
            mats[a] = float("nan")
        else:
            mats[a] = B.matmul(kv, weighting[a][:, None] * vecs.T)
    invalid = np.asarray(B.to_numpy(B.isnan(mats[:, 0, 0])), dtype=bool)
    return mats, invalid


def _block(responses: np.ndarray, rows: np.ndarray, cols: slice, dtype: np.dtype, bad: np.ndarray) -> np.ndarray:
    """``responses[rows, cols]`` as a new C-contiguous array in ``dtype``, bad columns zeroed."""
    block = np.array(responses[rows, cols], dtype=dtype, order="C", copy=True)
    zero = bad[cols]
    if zero.any():
        block[:, zero] = 0
    return block


def _val_scores_numpy(mats: np.ndarray, valid: np.ndarray, y_tr: np.ndarray, y_val: np.ndarray,
                      out: np.ndarray) -> None:
    """Minus the validation MSE of every valid alpha into ``out`` (n_alphas, n_batch): the
    arithmetic of ``himalaya.scoring.l2_neg_loss(y_val, mats @ y_tr)``, one alpha at a time."""
    from himalaya.scoring import l2_neg_loss

    n_val = y_val.shape[0]
    buf = np.empty(y_val.shape, dtype=y_val.dtype)
    for a in np.flatnonzero(valid):
        np.matmul(mats[a], y_tr, out=buf)
        np.subtract(y_val, buf, out=buf)
        np.square(buf, out=buf)
        score = -buf.sum(axis=0) / n_val
        if not np.isfinite(score).all():          # himalaya zeroes non-finite predictions first
            score = l2_neg_loss(y_val, np.matmul(mats[a], y_tr))
        out[a] = score


def _val_scores_backend(B: Any, mats: Any, valid: np.ndarray, y_tr: Any, y_val: Any, out: np.ndarray) -> None:
    """:func:`_val_scores_numpy` on another backend (torch): ``l2_neg_loss`` itself, per alpha."""
    from himalaya.scoring import l2_neg_loss

    for a in np.flatnonzero(valid):
        out[a] = np.asarray(B.to_numpy(l2_neg_loss(y_val, B.matmul(mats[a], y_tr))))


def search_fold(B: Any, kernels: np.ndarray, responses: np.ndarray, train: np.ndarray,
                inner: Sequence[tuple[np.ndarray, np.ndarray]], gammas: np.ndarray, alphas: np.ndarray,
                dtype: np.dtype, batch: int, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inner-CV random search of one outer fold, every target streamed through each decomposition.

    Parameters
    ----------
    B : module
        The active himalaya backend.
    kernels : numpy.ndarray, shape (n_spaces, n_train, n_train)
        Training kernels of the outer fold (not centred; cast to ``dtype`` here).
    responses : numpy.ndarray, shape (n_samples, n_targets)
        All responses; rows ``train`` are used.
    train : numpy.ndarray of int, shape (n_train,)
        The outer training samples (rows of ``responses``).
    inner : sequence of (train, validation)
        Inner splits, positions within ``train``.
    gammas : numpy.ndarray, shape (n_iter, n_spaces)
        Candidate kernel weights (:func:`kernel_weight_candidates`).
    alphas : numpy.ndarray, shape (n_alphas,)
    dtype : numpy.dtype
        Compute dtype (float32 / float64).
    batch : int
        Targets per batch.
    bad : numpy.ndarray of bool, shape (n_targets,)
        Targets whose responses are zeroed (non-finite).

    Returns
    -------
    gamma_index : numpy.ndarray of int64, shape (n_targets,)
        Chosen candidate (row of ``gammas``) of each target.
    alpha_index : numpy.ndarray of int64, shape (n_targets,)
        Chosen alpha (index into ``alphas``), -1 where no score beat -inf (alpha
        :data:`NO_ALPHA`, himalaya's default).
    """
    n_targets = responses.shape[1]
    n_alphas = alphas.size
    fast = B.name == "numpy"
    name = dtype.name
    ks = B.asarray(np.asarray(kernels, dtype=dtype), dtype=name)
    ks = B.stack([_centred(ks[i]) for i in range(ks.shape[0])])
    alphas_c = B.asarray(np.asarray(alphas, dtype=dtype), dtype=name)
    log_alphas = np.log(np.asarray(alphas, dtype=dtype)) * _TIE_SLOPE
    eps = np.finfo(dtype).eps
    splits = [(np.asarray(t), np.asarray(v)) for t, v in inner]
    rows = [(train[t], train[v]) for t, v in splits]

    # the training mean of every target (himalaya centres the responses once per fit)
    offset = np.empty(n_targets, dtype=dtype)
    for start in range(0, n_targets, batch):
        cols = slice(start, min(start + batch, n_targets))
        offset[cols] = _block(responses, train, cols, dtype, bad).mean(axis=0)

    best_score = np.full(n_targets, -np.inf, dtype=dtype)
    gamma_index = np.zeros(n_targets, dtype=np.int64)
    alpha_index = np.full(n_targets, -1, dtype=np.int64)
    for g, gamma in enumerate(np.asarray(gammas, dtype=dtype)):
        k_sum = (B.asarray(gamma, dtype=name)[:, None, None] * ks).sum(0)
        scores = np.zeros((len(splits), n_alphas, n_targets), dtype=dtype)
        for j, ((t, v), (rows_t, rows_v)) in enumerate(zip(splits, rows)):
            t_b, v_b = B.asarray(t), B.asarray(v)
            mats, invalid = _resolution(B, k_sum[t_b[:, None], t_b], k_sum[v_b[:, None], t_b], alphas_c)
            valid = ~invalid
            for start in range(0, n_targets, batch):
                cols = slice(start, min(start + batch, n_targets))
                y_tr = _block(responses, rows_t, cols, dtype, bad)
                y_tr -= offset[cols]
                mean = y_tr.mean(axis=0)
                y_tr -= mean
                y_val = _block(responses, rows_v, cols, dtype, bad)
                y_val -= offset[cols]
                y_val -= mean
                if fast:
                    _val_scores_numpy(mats, valid, y_tr, y_val, scores[j, :, cols])
                else:
                    _val_scores_backend(B, mats, valid, B.asarray(y_tr), B.asarray(y_val), scores[j, :, cols])
            scores[j, invalid, :] = _INVALID_SCORE
            del mats
        mean_scores = scores.mean(axis=0, dtype=np.float64).astype(dtype, copy=False)
        mean_scores += log_alphas[:, None]
        best_alpha = np.argmax(mean_scores, axis=0)
        score = np.take_along_axis(mean_scores, best_alpha[None], axis=0)[0]
        better = score > best_score + eps
        best_score[better] = score[better]
        gamma_index[better] = g
        alpha_index[better] = best_alpha[better]
        del k_sum
    return gamma_index, alpha_index


def _solver(kernel: np.ndarray, alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    """``y -> (kernel + alpha I)^-1 y`` (float64): Cholesky, or the eigendecomposition with
    negative eigenvalues set to zero (himalaya's refit rule) where the matrix is not positive
    definite."""
    shifted = kernel.copy()
    shifted.flat[::kernel.shape[0] + 1] += alpha
    try:
        factor = scipy.linalg.cho_factor(shifted, lower=True, overwrite_a=True, check_finite=False)
        return lambda y: scipy.linalg.cho_solve(factor, y, check_finite=False)
    except np.linalg.LinAlgError:
        lam, vecs = np.linalg.eigh(kernel)
        inv = 1.0 / (np.maximum(lam, 0.0) + alpha)
        return lambda y: vecs @ (inv[:, None] * (vecs.T @ y))


def refit_fold(kernels_train: np.ndarray, kernels_test: np.ndarray, gammas: np.ndarray, gamma_index: np.ndarray,
               alpha_values: np.ndarray, responses: np.ndarray, train: np.ndarray, targets: np.ndarray,
               dtype: np.dtype, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Refit of one outer fold with each target's chosen kernel weights and alpha (float64).

    ``w = (sum_i gamma_i K_i + alpha I)^-1 y_c`` on the centred training kernels and responses;
    the part of the test prediction carried by space ``i`` is ``gamma_i K_test,i w`` (centred
    test kernels), the prediction ``mean_train(y) + sum_i parts_i``.

    Parameters
    ----------
    kernels_train : numpy.ndarray, shape (n_spaces, n_train, n_train)
        Centred training kernels (float64).
    kernels_test : numpy.ndarray, shape (n_spaces, n_test, n_train)
        Test kernels centred with the training statistics (float64).
    gammas : numpy.ndarray, shape (n_iter, n_spaces)
    gamma_index : numpy.ndarray of int, shape (n_targets,)
    alpha_values : numpy.ndarray, shape (n_targets,)
    responses : numpy.ndarray, shape (n_samples, n_targets)
    train : numpy.ndarray of int, shape (n_train,)
    targets : numpy.ndarray of int
        Targets to refit (the others are skipped).
    dtype : numpy.dtype
        Compute dtype of the search: the responses are rounded to it first (the values the
        search saw).
    batch : int
        Targets per yielded chunk.

    Yields
    ------
    idx : numpy.ndarray of int, shape (n_chunk,)
        Targets of the chunk.
    offset : numpy.ndarray, shape (n_chunk,)
        Their training means.
    parts : numpy.ndarray, shape (n_spaces, n_test, n_chunk)
        Per-space test predictions (without the mean).
    """
    targets = np.asarray(targets, dtype=np.int64)
    for g in np.unique(gamma_index[targets]):
        in_g = targets[gamma_index[targets] == g]
        k_g = np.tensordot(gammas[g], kernels_train, axes=1)
        for alpha in np.unique(alpha_values[in_g]):
            in_pair = in_g[alpha_values[in_g] == alpha]
            solve = _solver(k_g, float(alpha))
            for start in range(0, in_pair.size, batch):
                idx = in_pair[start:start + batch]
                y = np.asarray(responses[np.ix_(train, idx)], dtype=dtype).astype(np.float64)
                offset = y.mean(axis=0)
                y -= offset
                w = solve(y)
                parts = np.matmul(kernels_test, w)
                parts *= gammas[g][:, None, None]
                yield idx, offset, parts
            del solve
        del k_g
