"""Closed-form least-squares-separate (LSS) estimates: every trial's model, all voxels at once.

LSS (Mumford et al., 2012) fits one model per trial (:class:`bids_dnn.brain.lss.LSSDesign`):
the trial, the other trials grouped by condition, the nuisance regressors. Run as separate GLMs
this costs a whole-brain fit per trial. Here, with the same statistics as one nilearn
``run_glm`` per trial on all voxels:

- a trial's model spans the condition-level ("common") model plus the trial's own regressors,
  so its OLS residuals are the common residuals minus their projection on a few directions:
  per voxel and trial, the residual moments (and so the AR(1) coefficient and bin) follow from
  the common residuals and a few inner products with those directions (one matrix product for
  all trials);
- a trial's estimate is ``a . W y``, with ``a`` the first row of the pseudo-inverse of the
  trial's whitened model (``W`` the AR(1) whitening of the voxel's bin; identity for OLS):
  the nuisance regressors are projected out once per bin and ``a`` comes from a small
  least-squares problem on the trial and group regressors (Frisch-Waugh-Lovell); the estimates
  of all (trial, bin) pairs of a block of voxels are one matrix product;
- t values take the residual sum of squares of the trial's model as the common model's minus
  the squared projection on the trial's added directions.

Trials whose model does not extend the common model exactly (:meth:`LSSDesign.extends_common`)
or whose model is too ill-conditioned for the small problem are fitted as separate models
(:func:`bids_dnn.brain.fast_glm.fit_glm`).

Arrays in, arrays out; BLAS-backed NumPy.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from bids_dnn.brain.fast_glm import (AR1_BINS, PERFECT_FIT, ar1_from_moments, fit_glm, load_block, one_blas_thread,
                                     residual_moments, whiten_ar1, whiten_ar1_transposed)
from bids_dnn.brain.lss import LSSDesign

__all__ = ["fit_lss"]

#: an added direction of a trial (its own regressor projected off the common model) shorter than
#: this times the regressor makes the closed form ill-conditioned: the trial is fitted separately
MIN_ADDED_NORM = 1e-6
#: smallest singular value ratio of a trial's nuisance-free regressors for the closed form
MIN_CONDITION = 1e-8


def _basis(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space, shape (n_time, rank) (numerical rank with the
    cut-off of ``scipy.linalg.pinv``: ``max(shape) * eps * s_max``)."""
    if matrix.shape[1] == 0:
        return np.zeros((matrix.shape[0], 0))
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    return u[:, s > max(matrix.shape) * np.finfo(float).eps * s[0]] if s[0] > 0 else u[:, :0]


def _project_out(basis: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``matrix`` minus its projection on the orthonormal ``basis``."""
    return matrix - basis @ (basis.T @ matrix)


def _first_row_of_pinv(matrix: np.ndarray) -> tuple[np.ndarray, bool]:
    """Row 0 of the pseudo-inverse of ``matrix`` (n_time, k), shape (n_time,), and whether the
    matrix is well-conditioned (singular value ratio above MIN_CONDITION; then from a QR
    decomposition, else from ``scipy.linalg.pinv``)."""
    q, r = np.linalg.qr(matrix)
    diagonal = np.abs(np.diag(r))
    if diagonal.min() <= MIN_CONDITION * diagonal.max():
        s = np.linalg.svd(matrix, compute_uv=False)
        if s[-1] <= MIN_CONDITION * s[0]:
            return scipy.linalg.pinv(matrix)[0], False
    unit = np.zeros(r.shape[0])
    unit[0] = 1.0
    return q @ scipy.linalg.solve_triangular(r, unit, trans="T"), True


class _Bin:
    """What every trial's model needs at one AR(1) bin: the whitened nuisance basis, the
    whitened condition totals with the nuisance projected out, the whitened common basis."""

    def __init__(self, design: LSSDesign, common: np.ndarray, rho: float, t_values: bool):
        self.rho = rho
        self.nuisance_basis = _basis(whiten_ar1(design.nuisance, rho))
        totals = design.condition_totals
        flat = whiten_ar1(totals.reshape(totals.shape[0], -1), rho)
        self.totals = _project_out(self.nuisance_basis, flat).reshape(totals.shape)
        self.common_basis = _basis(whiten_ar1(common, rho)) if t_values else None


class _Trials:
    """Per-trial quantities of the closed form, and the (trial, bin) solutions."""

    def __init__(self, design: LSSDesign, trials: np.ndarray, t_values: bool):
        self.design = design
        self.trials = trials
        self.t_values = t_values
        self.common = design.common_design()
        self.common_basis = _basis(self.common)
        n_time, d = design.trial_regressors.shape[0], design.n_basis
        # the added directions of every trial (zero columns where none), (n_time, n_trials, d)
        self.added = np.zeros((n_time, len(trials), d))
        self.closed_form = np.ones(len(trials), dtype=bool)
        self.n_columns = np.array([design.n_columns(i) for i in trials])
        self.kept_totals = design.kept(design.condition_totals)  # (n_cond, n_basis)
        for k, i in enumerate(trials):
            own = design.trial_regressors[:, i][:, design.added_basis(i)]
            if not own.shape[1]:
                continue
            projected = _project_out(self.common_basis, own)
            q, r = np.linalg.qr(projected)
            if np.abs(np.diag(r)).min() <= MIN_ADDED_NORM * np.linalg.norm(own, axis=0).max():
                self.closed_form[k] = False
                continue
            self.added[:, k, : own.shape[1]] = q
        self.bins: dict[int, _Bin] = {}
        self.solutions: dict[tuple[int, int], tuple[np.ndarray, float, np.ndarray | None]] = {}
        for k in np.flatnonzero(self.closed_form):  # ill-conditioned (OLS) trial models leave the closed form
            if not _first_row_of_pinv(self._regressors(k, self.bin(0)))[1]:
                self.closed_form[k] = False
                self.added[:, k] = 0.0

    def bin(self, b: int) -> _Bin:
        if b not in self.bins:
            self.bins[b] = _Bin(self.design, self.common, b * 1.0 / AR1_BINS, self.t_values)
        return self.bins[b]

    def _regressors(self, k: int, at: _Bin) -> np.ndarray:
        """The whitened trial and group regressors of trial ``trials[k]``'s model with the
        nuisance regressors projected out, shape (n_time, n_basis + n_groups); column 0: the trial."""
        i = int(self.trials[k])
        design = self.design
        own_group = design.own_group(i)
        local = _project_out(at.nuisance_basis, whiten_ar1(np.column_stack([design.trial_regressors[:, i], own_group]),
                                                           at.rho))
        blocks = [local[:, : design.n_basis], local[:, design.n_basis :][:, design.kept(own_group)]]
        for c in range(design.n_conditions):
            if c != design.trial_condition[i]:
                blocks.append(at.totals[:, c][:, self.kept_totals[c]])
        return np.column_stack(blocks)

    def solution(self, k: int, b: int) -> tuple[np.ndarray, float, np.ndarray | None]:
        """For trial ``trials[k]`` at bin ``b``: the data weights of its estimate (``W^T a``,
        shape (n_time,), ``a`` the first row of the pseudo-inverse of its whitened model),
        ``|a|^2`` (the estimate's unscaled variance) and, for t values, the data weights of its
        added directions (``W^T U``, shape (n_time, n_basis), zero columns where none)."""
        key = (k, b)
        if key in self.solutions:
            return self.solutions[key]
        at = self.bin(b)
        row = _first_row_of_pinv(self._regressors(k, at))[0]
        directions = None
        if self.t_values:
            i = int(self.trials[k])
            added = self.design.trial_regressors[:, i][:, self.design.added_basis(i)]
            directions = np.zeros((len(row), self.design.n_basis))
            if added.shape[1]:
                u = np.linalg.qr(_project_out(at.common_basis, whiten_ar1(added, at.rho)))[0]
                directions[:, : u.shape[1]] = whiten_ar1_transposed(u, at.rho)
        result = (whiten_ar1_transposed(row, at.rho), float(row @ row), directions)
        self.solutions[key] = result
        return result

    def forget_solutions(self, limit_bytes: int) -> None:
        """Drop the cached (trial, bin) solutions when they exceed ``limit_bytes``."""
        per = self.design.trial_regressors.shape[0] * 8 * (1 + (self.design.n_basis if self.t_values else 0))
        if len(self.solutions) * per > limit_bytes:
            self.solutions.clear()


def fit_lss(data: np.ndarray, design: LSSDesign, noise_model: str = "ar1", *, rows: np.ndarray | None = None,
            voxels: np.ndarray | None = None, t_values: bool = False, chunk_size: int = 4096) -> np.ndarray:
    """Every trial's LSS estimate (or t value), as one nilearn ``run_glm`` per trial model would give.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_time_all, n_vox_all)
        Voxel time series (float32 or float64; read in blocks of ``chunk_size`` voxels).
    design : LSSDesign
        The trial models (time points: the kept ``rows``).
    noise_model : {"ar1", "ols"}
    rows : numpy.ndarray of int, shape (n_time,), optional
        Time points of ``data`` that enter the fit (None: all).
    voxels : numpy.ndarray of int, shape (n_vox,), optional
        Voxels to fit (None: all).
    t_values : bool
        t values of the trial regressors instead of estimates.
    chunk_size : int
        Voxels held at once (the working set is a few float64 ``(n_time, chunk)`` arrays;
        blocks are narrowed so that per-trial arrays stay within about two of them).

    Returns
    -------
    numpy.ndarray of float64, shape (n_trials, n_vox)
        NaN for trials without signal (no model).
    """
    if noise_model not in ("ar1", "ols"):
        raise ValueError(f"noise_model must be 'ar1' or 'ols', got {noise_model!r}")
    voxels = np.arange(data.shape[1]) if voxels is None else np.asarray(voxels)
    n_time = design.trial_regressors.shape[0]
    estimates = np.full((design.n_trials, len(voxels)), np.nan)
    trials = np.array([i for i in np.flatnonzero(design.has_signal) if design.extends_common(i)], dtype=int)
    with one_blas_thread():
        state = _Trials(design, trials, t_values)
    separate = sorted(set(np.flatnonzero(design.has_signal)) - set(trials[state.closed_form]))
    trials = trials[state.closed_form]
    keep = np.flatnonzero(state.closed_form)
    chunk_size = max(int(chunk_size), 1)
    per_trial_block = max(1, int(2 * n_time * chunk_size / max(n_time, 3 * max(len(trials), 1) * design.n_basis)))
    if len(trials):
        if noise_model == "ar1":
            bins, common_bins = _trial_bins(data, state, keep, rows, voxels, min(chunk_size, per_trial_block))
        else:
            bins, common_bins = np.zeros((len(trials), len(voxels)), dtype=np.int16), np.zeros(len(voxels), np.int16)
        _estimates(data, state, keep, bins, common_bins, rows, voxels, chunk_size, estimates, trials)
    for i in separate:
        estimates[i] = fit_glm(data, design.trial_design(i), noise_model, rows=rows, voxels=voxels, columns=[0],
                               t_values=t_values, chunk_size=chunk_size)[0]
    return estimates


def _trial_bins(data: np.ndarray, state: _Trials, keep: np.ndarray, rows: np.ndarray | None, voxels: np.ndarray,
                chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) bin of every (trial, voxel), shape (n_trials, n_vox), from the common OLS residuals
    updated per trial; and the bin of every voxel in the common model, shape (n_vox,)."""
    n_time = state.common.shape[0]
    added = state.added[:, keep]  # (n_time, n_trials, d)
    n_trials, d = added.shape[1], added.shape[2]
    flat = added.reshape(n_time, -1)
    column_sums = flat.sum(axis=0).reshape(n_trials, d)
    lag_gram = np.einsum("tkb,tkc->kbc", added[:-1], added[1:])
    # the mean residual of every trial's model over all voxels and time points (nilearn centres by it)
    data_sum = np.zeros(n_time)
    for start in range(0, len(voxels), chunk_size):
        data_sum += load_block(data, rows, voxels[start : start + chunk_size]).sum(axis=1)
    common_sum = data_sum - state.common_basis @ (state.common_basis.T @ data_sum)
    trial_sums = common_sum.sum() - np.einsum("kb,kb->k", column_sums, (flat.T @ common_sum).reshape(n_trials, d))
    n_values = n_time * max(len(voxels), 1)
    trial_means, common_mean = trial_sums / n_values, common_sum.sum() / n_values
    bins = np.empty((n_trials, len(voxels)), dtype=np.int16)
    common_bins = np.empty(len(voxels), dtype=np.int16)
    for start in range(0, len(voxels), chunk_size):
        part = slice(start, start + chunk_size)
        Y = load_block(data, rows, voxels[part])
        scale = PERFECT_FIT * np.einsum("tv,tv->v", Y, Y)
        residuals = _project_out(state.common_basis, Y)
        del Y
        total, squares, lag, first, last = moments = residual_moments(residuals)
        common_bins[part] = ar1_from_moments(moments, common_mean, n_time, squares <= scale)
        w = (flat.T @ residuals).reshape(n_trials, d, -1)
        forward = (flat[:-1].T @ residuals[1:]).reshape(n_trials, d, -1)
        backward = (flat[1:].T @ residuals[:-1]).reshape(n_trials, d, -1)
        for k in range(n_trials):
            wk = w[k]
            trial_moments = np.stack([
                total - column_sums[k] @ wk,
                squares - np.einsum("bv,bv->v", wk, wk),
                lag - np.einsum("bv,bv->v", wk, forward[k] + backward[k])
                + np.einsum("bv,bc,cv->v", wk, lag_gram[k], wk),
                first - added[0, k] @ wk,
                last - added[-1, k] @ wk])
            bins[k, part] = ar1_from_moments(trial_moments, trial_means[k], n_time, trial_moments[1] <= scale)
    return bins, common_bins


def _estimates(data: np.ndarray, state: _Trials, keep: np.ndarray, bins: np.ndarray, common_bins: np.ndarray,
               rows: np.ndarray | None, voxels: np.ndarray, chunk_size: int, out: np.ndarray,
               trials: np.ndarray) -> None:
    """Second pass: voxels sorted by their bin in the common model (a trial's bin is that bin or
    a neighbour), in chunks; each run of voxels with one common bin applies the weights of its
    (trial, bin) pairs in one product."""
    n_time = state.common.shape[0]
    d = state.design.n_basis
    budget = 2 * n_time * chunk_size  # float64 values of the per-pair products of one block
    order = np.argsort(common_bins, kind="stable")
    for start in range(0, len(order), chunk_size):
        positions = order[start : start + chunk_size]
        Y = load_block(data, rows, voxels[positions])
        segment_bins = common_bins[positions]
        edges = np.flatnonzero(np.diff(segment_bins)) + 1
        for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(positions)]):
            block_bins = bins[:, positions[lo:hi]]
            pairs_per_voxel = max(1, len(np.unique(block_bins)) * len(keep))
            step = max(1, budget // (pairs_per_voxel * (1 + (d if state.t_values else 0))))
            for sub in range(lo, hi, step):
                part = slice(sub, min(sub + step, hi))
                out[trials[:, None], positions[None, part]] = _block_estimates(
                    state, keep, bins[:, positions[part]], Y[:, part])
        state.forget_solutions(budget * 8)


def _block_estimates(state: _Trials, keep: np.ndarray, block_bins: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Estimates (or t values) of the closed-form trials for a block of voxels, shape (n_trials, n_vox)."""
    n_trials, n_vox = block_bins.shape
    pair_of = np.empty((n_trials, n_vox), dtype=np.int64)
    pairs: list[tuple[int, int]] = []
    for k in range(n_trials):
        present, inverse = np.unique(block_bins[k], return_inverse=True)
        pair_of[k] = len(pairs) + inverse.ravel()
        pairs += [(int(keep[k]), int(b)) for b in present]
    with one_blas_thread():
        solutions = [state.solution(k, b) for k, b in pairs]
    weights = np.stack([s[0] for s in solutions])
    estimates = np.take_along_axis(weights @ Y, pair_of, axis=0)
    if not state.t_values:
        return estimates
    d = state.design.n_basis
    variance = np.array([s[1] for s in solutions])[pair_of]
    directions = np.concatenate([s[2].T for s in solutions])  # (n_pairs * d, n_time)
    projections = (directions @ Y).reshape(len(pairs), d, n_vox)
    projected = np.zeros((n_trials, n_vox))
    for b in range(d):
        projected += np.take_along_axis(projections[:, b], pair_of, axis=0) ** 2
    residual_ss = np.empty((n_trials, n_vox))
    with one_blas_thread():
        bins = {int(b): state.bin(int(b)) for b in np.unique(block_bins)}
    for b, at in bins.items():
        needed = np.any(block_bins == b, axis=0)
        wY = whiten_ar1(Y[:, needed], at.rho)
        common_residuals = _project_out(at.common_basis, wY)
        common_ss = np.einsum("tv,tv->v", common_residuals, common_residuals)
        where = block_bins[:, needed] == b
        residual_ss[:, needed] = np.where(where, common_ss[None, :], residual_ss[:, needed])
    dof = (state.common.shape[0] - state.n_columns[keep])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return estimates / np.sqrt(variance * (residual_ss - projected) / dof)
