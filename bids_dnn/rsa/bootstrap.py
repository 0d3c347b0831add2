"""Stimulus and subject x stimulus ("dual") bootstraps of fixed-model RDM evaluations.

:func:`bootstrap_patterns` (= rsatoolbox ``eval_bootstrap_pattern``) resamples stimuli with
replacement; :func:`bootstrap_dual` (= ``eval_dual_bootstrap`` with its defaults) resamples
subjects and stimuli. Pairs of a stimulus with a copy of itself are dropped, as rsatoolbox does
(it marks them NaN). A resample is a weighting of the original pairs (``c_i c_j``) and subjects
(counts), so pair-local measures are computed as weighted statistics without building any
resampled RDM (:mod:`bids_dnn.rsa.resampling`). Both accept explicit resampling indices; with
rsatoolbox's draws they reproduce its evaluations, noise ceilings and (corrected) variances to
rounding error.

Everything random takes an explicit ``numpy.random.Generator``; equal generators give equal
results.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from bids_dnn.rsa.compare import COMPARISON_MEASURES
from bids_dnn.rsa.rdm import n_cond_from_pairs
from bids_dnn.rsa.resampling import evaluate_resamples, stimulus_counts
from bids_dnn.stats.bootstrap import bootstrap_indices

__all__ = [
    "BootstrapResult",
    "bootstrap_patterns",
    "bootstrap_dual",
]


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
    lower, all-subject upper, measure-aware pooling as
    :func:`bids_dnn.rsa.inference.noise_ceiling`) is computed on each resample, as rsatoolbox
    does with ``boot_noise_ceil=True``. Pair-local measures run as
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
