"""First-level GLM per run (nilearn): LSA and LSS patterns, with confounds and censoring.

Arrays and tables in, arrays and tables out: a run's BOLD data as ``(n_time, n_vox)``, events
and fMRIPrep confounds as DataFrames. No BIDS layouts, no files, no printing: user-facing
problems are strings in :attr:`RunGLM.warnings`; fatal ones are :mod:`bids_dnn.errors`.

The design is built with nilearn's ``make_first_level_design_matrix`` on the full run (true
HRF timing); censored volumes are then dropped from data and design (a sample mask, as in
nilearn's ``FirstLevelModel``). One pattern per condition (events column ``condition``):

- ``lsa``: one regressor per condition (repeats of a stimulus in a run share it);
- ``lss`` (Mumford et al., 2012, NeuroImage 59:2636): one model per trial, the trial as one
  regressor and all other trials grouped by condition (:mod:`bids_dnn.brain.lss`); trial
  estimates averaged per condition.

The models are fitted by an engine of :data:`GLM_ENGINES` (``GLMOptions.engine``): ``fast``
(:mod:`bids_dnn.brain.fast_glm`, :mod:`bids_dnn.brain.fast_lss`: nilearn's statistics, each
AR(1) bin's design inverted once for the whole brain, LSS in closed form) or ``nilearn`` (the
reference: nilearn's ``run_glm`` on one voxel chunk at a time, one model per trial for LSS).
"""

from __future__ import annotations

import re
import warnings as _warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from bids_dnn.brain import fast_glm, fast_lss
from bids_dnn.brain.confounds import drop_constant_confounds, sample_mask_from_confounds, select_confounds
from bids_dnn.brain.lss import TRIAL_PREFIX, LSSDesign
from bids_dnn.errors import AnalysisError, BidsValidationError

__all__ = ["GLM_CHOICES", "GLM_ENGINES", "GLMEngine", "GLMOptions", "RunGLM", "chunk_size_for_budget", "fit_run_glm"]

#: conditions of events that are not stimuli (``nuisance_<trial_type>``): modelled, never patterns
NUISANCE_PREFIX = "nuisance_"
GLM_MEMORY_BUDGET = 2**30
"""Bytes of working memory for the fit of one voxel chunk (sets the default chunk size).

With the ``nilearn`` engine smaller chunks cost time: nilearn refits the whitened design of
every AR(1) bin (~20-40 bins) in every chunk, so the fit time grows with the number of chunks
(the ``fast`` engine inverts each bin's design once)."""

_CHUNK_COPIES = 8
"""float64 ``(n_time, chunk)`` arrays alive at once while a chunk is fitted (nilearn's OLS and
AR(1) results, whitened data and residuals; measured with tracemalloc: ~6.3)."""

GLM_CHOICES: dict[str, tuple[str, ...]] = {
    "method": ("lsa", "lss"),
    "hrf": ("spm", "glover", "spm + derivative", "glover + derivative"),
    "drift_model": ("cosine", "polynomial", "none"),
    "noise_model": ("ar1", "ols"),
    "output": ("effect", "t"),
    "engine": ("fast", "nilearn"),
}
"""Accepted values of the text fields of :class:`GLMOptions`."""


@dataclass(frozen=True)
class GLMOptions:
    """Options of a first-level GLM (plain values; the workflows build them from their spec).

    Attributes
    ----------
    method : {"lsa", "lss"}
        ``lsa``: one regressor per condition; ``lss``: one model per trial (Mumford et al.,
        2012), trial estimates averaged per condition.
    hrf : {"spm", "glover", "spm + derivative", "glover + derivative"}
        nilearn HRF model.
    high_pass_hz : float
        Cut-off of the cosine drift model (Hz); 0 fits no cosine drift.
    drift_model : {"cosine", "polynomial", "none"}
        nilearn drift model (the cosine model is left out when the confounds hold fMRIPrep's
        ``cosine*`` regressors).
    noise_model : {"ar1", "ols"}
        nilearn noise model.
    confounds : tuple of str
        Confound regressors: group names of :data:`bids_dnn.brain.confounds.CONFOUND_GROUPS`,
        exact column names or globs (a list is stored as a tuple).
    scrub_fd : float, optional
        Censor volumes whose framewise displacement exceeds this (mm); None: no scrubbing.
    drop_non_steady_state : bool
        Censor the volumes flagged by fMRIPrep's ``non_steady_state_outlier*`` columns.
    output : {"effect", "t"}
        Patterns from effect sizes or from t values.
    engine : {"fast", "nilearn"}
        Which :data:`GLM_ENGINES` entry fits the models: ``fast`` (batched, closed-form LSS)
        or ``nilearn`` (the reference: ``run_glm`` per voxel chunk and per trial model). Same
        estimates to rounding.

    Raises
    ------
    AnalysisError
        A text field outside :data:`GLM_CHOICES`, ``confounds`` given as one string, a
        negative ``high_pass_hz`` or a ``scrub_fd`` that is not positive.
    """

    method: str = "lsa"
    hrf: str = "spm"
    high_pass_hz: float = 0.008
    drift_model: str = "cosine"
    noise_model: str = "ar1"
    confounds: tuple[str, ...] = ("motion_6", "white_matter", "csf")
    scrub_fd: float | None = None
    drop_non_steady_state: bool = True
    output: str = "effect"
    engine: str = "fast"

    def __post_init__(self) -> None:
        if isinstance(self.confounds, str):
            raise AnalysisError(f"GLM option confounds must be a sequence of names, not the text {self.confounds!r}")
        object.__setattr__(self, "confounds", tuple(str(name) for name in self.confounds))
        for name, allowed in GLM_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise AnalysisError(f"GLM option {name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not self.high_pass_hz >= 0:
            raise AnalysisError(f"GLM option high_pass_hz must be >= 0 (got {self.high_pass_hz})")
        if self.scrub_fd is not None and not self.scrub_fd > 0:
            raise AnalysisError(f"GLM option scrub_fd must be > 0 or None (got {self.scrub_fd})")


@dataclass
class RunGLM:
    """First-level GLM result of one run.

    Attributes
    ----------
    conditions : list of str
        Sorted unique condition ids (events column ``condition``); rows of ``betas``.
    betas : numpy.ndarray, shape (n_cond, n_vox)
        Effect sizes (``output='effect'``) or t values (``output='t'``); NaN for voxels
        excluded from the fit and for conditions without signal in the kept volumes.
    residuals : numpy.ndarray of float32, shape (n_time_kept, n_vox)
        Residuals of the condition-level (LSA) model, whitened by the AR(1) model when
        ``noise_model='ar1'``; NaN for excluded voxels. For noise normalisation.
    design : pandas.DataFrame, shape (n_time_kept, n_regressors)
        The condition-level design matrix of the kept volumes (condition columns named by
        condition id, then confounds, drifts, ``constant``); index: frame times (s).
    dof : int
        Residual degrees of freedom, ``n_time_kept - rank(design)``.
    warnings : list of str
        Problems worth telling the user about (dropped events, excluded voxels, ...).
    sample_mask : numpy.ndarray of bool, shape (n_time,)
        Volumes that entered the fit.
    fitted_voxels : numpy.ndarray of bool, shape (n_vox,)
        Voxels that were fitted (finite and not constant over the kept volumes).
    constant_voxels : numpy.ndarray of bool, shape (n_vox,)
        Voxels finite but constant over the kept volumes (not fitted); the other unfitted
        voxels have NaN or infinite values.
    n_trials : dict of str to int
        Events per condition that entered the model.
    conditions_without_signal : list of str
        Conditions with events whose regressor is zero over the kept volumes (betas NaN).
    engine : str
        The :data:`GLM_ENGINES` entry that fitted the models.
    """

    conditions: list[str]
    betas: np.ndarray
    residuals: np.ndarray
    design: pd.DataFrame
    dof: int
    warnings: list[str] = field(default_factory=list)
    sample_mask: np.ndarray | None = None
    fitted_voxels: np.ndarray | None = None
    constant_voxels: np.ndarray | None = None
    n_trials: dict[str, int] = field(default_factory=dict)
    conditions_without_signal: list[str] = field(default_factory=list)
    engine: str = "fast"

    @property
    def n_conditions(self) -> int:
        return len(self.conditions)

    @property
    def n_voxels(self) -> int:
        return int(self.betas.shape[1])


def _check_events(
    events: pd.DataFrame, scan_end: float, source: str
) -> tuple[pd.DataFrame, list[str]]:
    """Validate events; drop unusable rows with warnings. Returns onset/duration/condition."""
    missing = [c for c in ("onset", "duration", "condition") if c not in events.columns]
    if missing:
        raise BidsValidationError(f"{source}: events lack column(s) {', '.join(missing)}")
    notes: list[str] = []
    source = events.attrs.get("source_file", source)
    ev = events.loc[:, ["onset", "duration", "condition"]].copy()
    for col in ("onset", "duration"):
        ev[col] = pd.to_numeric(ev[col], errors="coerce").astype(float)
    bad_onset = ~np.isfinite(ev["onset"].to_numpy())
    if bad_onset.any():
        rows = np.flatnonzero(bad_onset)[:10] + 2  # as numbered in the file (header = row 1)
        raise BidsValidationError(
            f"{source}: events column 'onset' has n/a or non-numeric values (rows {', '.join(map(str, rows))})")
    unknown = ev["duration"].isna() & ev["condition"].notna()
    stimulus_rows = unknown & ~ev["condition"].astype(str).str.startswith(NUISANCE_PREFIX)
    if stimulus_rows.any():
        row = int(np.flatnonzero(stimulus_rows.to_numpy())[0])
        raise BidsValidationError(
            f"{source}: row {row + 2}: duration 'n/a' on a stimulus event ({ev['condition'].iloc[row]}), which the "
            "GLM must model", "give the duration of every stimulus event in seconds")
    if unknown.any():
        kinds = sorted(set(ev.loc[unknown, "condition"].astype(str)))
        notes.append(f"{int(unknown.sum())} non-stimulus event(s) with duration n/a modelled as impulses "
                     f"({', '.join(kinds[:10])})")
        ev.loc[unknown, "duration"] = 0.0
    negative = ev["duration"] < 0
    if negative.any():
        rows = np.flatnonzero(negative.to_numpy())
        raise BidsValidationError(
            f"{source}: {len(rows)} event(s) have a negative duration "
            f"(rows {', '.join(map(str, rows[:10]))}: {', '.join(map(str, ev['duration'].to_numpy()[rows[:10]]))})",
            "durations must be >= 0 seconds",
        )
    no_condition = ev["condition"].isna()
    if no_condition.any():
        notes.append(f"{int(no_condition.sum())} event(s) without a condition were ignored")
        ev = ev.loc[~no_condition]
    ev["condition"] = ev["condition"].astype(str)
    late = ev["onset"] >= scan_end
    if late.any():
        conds = sorted(set(ev.loc[late, "condition"]))
        notes.append(
            f"{int(late.sum())} event(s) start at or after the end of the scan ({scan_end:g} s) "
            f"and were dropped (conditions: {', '.join(conds[:10])}{', ...' if len(conds) > 10 else ''})"
        )
        ev = ev.loc[~late]
    if ev.empty:
        raise AnalysisError(f"{source}: no events left to model within the scan ({scan_end:g} s)")
    return ev.reset_index(drop=True), notes


def _design(
    frame_times: np.ndarray,
    events: pd.DataFrame,
    options: GLMOptions,
    drift_model: str | None,
    regs: pd.DataFrame | None,
    notes: list[str],
) -> pd.DataFrame:
    """nilearn design matrix (events need onset, duration, trial_type); warnings -> notes."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        design = make_first_level_design_matrix(
            frame_times,
            events.loc[:, ["onset", "duration", "trial_type"]],
            hrf_model=options.hrf,
            drift_model=drift_model,
            high_pass=options.high_pass_hz,
            add_regs=regs,
        )
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, FutureWarning)):
            continue  # API notices for developers, not the user's data
        if "null duration" in str(w.message):
            continue  # zero-duration events are modelled as impulses: standard, not a problem
        text = "nilearn: " + " ".join(str(w.message).split())
        if text not in notes:
            notes.append(text)
    return design


def _run_glm_safe(Y: np.ndarray, X: np.ndarray, noise_model: str) -> tuple[np.ndarray, dict]:
    """:func:`nilearn.glm.first_level.run_glm`, falling back to OLS for perfectly fitted voxels.

    The AR(1) estimate is undefined for voxels with exactly zero residuals (Yule-Walker on a
    zero series), which makes nilearn's batched solve fail for the whole chunk.
    """
    from nilearn.glm.first_level import run_glm

    try:
        labels, results = run_glm(Y, X, noise_model=noise_model)
        return np.asarray(labels), results
    except np.linalg.LinAlgError:
        if noise_model == "ols":
            raise
    resid = Y - X @ (np.linalg.pinv(X) @ Y)
    perfect = (resid**2).sum(0) <= 1e-20 * np.maximum((Y**2).sum(0), 1e-300)
    labels = np.empty(Y.shape[1], dtype=object)
    results: dict = {}
    for subset, model in ((perfect, "ols"), (~perfect, noise_model)):
        if subset.any():
            sub_labels, sub_results = run_glm(Y[:, subset], X, noise_model=model)
            labels[subset] = [f"{model}:{lab}" for lab in np.asarray(sub_labels)]
            results.update({f"{model}:{k}": v for k, v in sub_results.items()})
    return labels, results


def _fit_columns(
    Y: np.ndarray, X: np.ndarray, noise_model: str, columns: Sequence[int], t_values: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Fit one chunk; return estimates of ``columns`` (n_col, n_vox) and whitened residuals."""
    labels, results = _run_glm_safe(Y, X, noise_model)
    est = np.full((len(columns), Y.shape[1]), np.nan)
    resid = np.full(Y.shape, np.nan)
    cols = list(columns)
    for key, res in results.items():
        idx = labels == key
        theta = res.theta[cols]
        if t_values:
            var = np.diag(res.cov)[cols][:, None] * np.asarray(res.dispersion)[None, :]
            with np.errstate(divide="ignore", invalid="ignore"):
                theta = theta / np.sqrt(var)
        est[:, idx] = theta
        resid[:, idx] = res.whitened_residuals
    return est, resid


def _nilearn_fit_design(data: np.ndarray, design: np.ndarray, noise_model: str, *, rows: np.ndarray,
                        voxels: np.ndarray, columns: Sequence[int], t_values: bool, chunk_size: int,
                        residuals_out: np.ndarray) -> np.ndarray:
    """The reference engine's fit of one design: nilearn's ``run_glm`` on one voxel chunk at a time.

    Returns estimates (or t values) of ``columns``, shape (n_col, n_vox); the whitened
    residuals go to ``residuals_out[:, voxels]``.
    """
    estimates = np.empty((len(columns), len(voxels)))
    for start in range(0, len(voxels), chunk_size):
        idx = voxels[start : start + chunk_size]
        Y = np.asarray(data[np.ix_(rows, idx)], dtype=np.float64)
        estimates[:, start : start + chunk_size], residuals_out[:, idx] = _fit_columns(
            Y, design, noise_model, columns, t_values)
    return estimates


def _nilearn_fit_lss(data: np.ndarray, design: LSSDesign, noise_model: str, *, rows: np.ndarray,
                     voxels: np.ndarray, t_values: bool, chunk_size: int) -> np.ndarray:
    """The reference engine's LSS: one nilearn ``run_glm`` per trial model and voxel chunk.

    Returns every trial's estimate (or t value), shape (n_trials, n_vox), NaN for trials
    without signal.
    """
    estimates = np.full((design.n_trials, len(voxels)), np.nan)
    models = [(i, design.trial_design(i)) for i in np.flatnonzero(design.has_signal)]
    for start in range(0, len(voxels), chunk_size):
        Y = np.asarray(data[np.ix_(rows, voxels[start : start + chunk_size])], dtype=np.float64)
        for i, X_trial in models:
            estimates[i, start : start + chunk_size] = _fit_columns(Y, X_trial, noise_model, [0], t_values)[0][0]
    return estimates


@dataclass(frozen=True)
class GLMEngine:
    """How the models of a run are fitted (arrays in, arrays out).

    Attributes
    ----------
    fit_design : callable
        ``(data, design, noise_model, *, rows, voxels, columns, t_values, chunk_size,
        residuals_out) -> estimates``: one design fitted to the voxels ``voxels`` of ``data``
        (n_time_all, n_vox_all) at the time points ``rows``; estimates (or t values) of
        ``columns``, shape (n_col, n_vox); whitened residuals written to
        ``residuals_out[:, voxels]``.
    fit_lss : callable
        ``(data, lss_design, noise_model, *, rows, voxels, t_values, chunk_size) ->
        estimates``: every trial's estimate (or t value) from its own model
        (:class:`bids_dnn.brain.lss.LSSDesign`), shape (n_trials, n_vox), NaN for trials
        without signal.
    """

    fit_design: Callable[..., np.ndarray]
    fit_lss: Callable[..., np.ndarray]


GLM_ENGINES: dict[str, GLMEngine] = {
    "fast": GLMEngine(fast_glm.fit_glm, fast_lss.fit_lss),
    "nilearn": GLMEngine(_nilearn_fit_design, _nilearn_fit_lss),
}
"""The GLM engines by name (``GLMOptions.engine``): ``fast`` (batched, closed-form LSS) and
``nilearn`` (the reference). Both give nilearn's estimates to rounding (see the tests)."""


def chunk_size_for_budget(n_time: int, memory_budget_bytes: int = GLM_MEMORY_BUDGET) -> int:
    """Voxels fitted at once so that a chunk's working memory stays within a budget.

    Parameters
    ----------
    n_time : int
        Volumes that enter the fit.
    memory_budget_bytes : int
        Working memory allowed for one chunk (default :data:`GLM_MEMORY_BUDGET`).

    Returns
    -------
    int
        ``memory_budget_bytes // (n_time * 8 * 8)`` clipped to [256, 50 000] voxels (about
        16 800 voxels for 1000 volumes and the default 1 GiB). The chunk size does not
        change the estimates (AR(1) coefficients are binned on a fixed grid).
    """
    per_voxel = max(int(n_time), 1) * 8 * _CHUNK_COPIES
    return int(np.clip(int(memory_budget_bytes) // per_voxel, 256, 50_000))


def fit_run_glm(
    bold: np.ndarray,
    events: pd.DataFrame,
    t_r: float,
    options: GLMOptions,
    confounds: pd.DataFrame | None = None,
    frame_times: np.ndarray | None = None,
    *,
    source: str = "run",
    chunk_size: int | None = None,
    memory_budget_bytes: int | None = None,
) -> RunGLM:
    """Fit a first-level GLM to one run and return one pattern per condition.

    Parameters
    ----------
    bold : numpy.ndarray, shape (n_time, n_vox)
        The run's BOLD time series (e.g. brain-masked fMRIPrep output); float32 is used as
        is (never copied whole: each voxel chunk is converted to float64 for its fit).
    events : pandas.DataFrame, shape (n_events, >= 3)
        ``onset``, ``duration`` (s) and ``condition`` (stimulus id; the caller maps trial
        types / stimulus files to it and drops non-stimulus rows).
    t_r : float
        Repetition time (s).
    options : GLMOptions
        method, hrf, drift_model, high_pass_hz, noise_model, confounds, scrub_fd,
        drop_non_steady_state, output.
    confounds : pandas.DataFrame, shape (n_time, n_columns), optional
        The full fMRIPrep confounds table: ``options.confounds`` are taken from it with
        :func:`select_confounds`, the censoring with :func:`sample_mask_from_confounds`.
    frame_times : numpy.ndarray, shape (n_time,), optional
        Acquisition times (default ``arange(n_time) * t_r``: slice-time reference 0).
    source : str
        Name of the run for error messages.
    chunk_size : int, optional
        Voxels fitted at once (bounds memory; default :func:`chunk_size_for_budget` of
        ``memory_budget_bytes``).
    memory_budget_bytes : int, optional
        Working memory of one voxel chunk (``--mem``; default :data:`GLM_MEMORY_BUDGET`).
        Does not change the estimates.

    Returns
    -------
    RunGLM
        betas (n_cond, n_vox), whitened residuals (n_time_kept, n_vox), design, dof, warnings.

    Raises
    ------
    BidsValidationError
        Malformed events (missing columns, n/a values, negative durations).
    InputMissingError
        Requested confound columns are absent.
    AnalysisError
        Inconsistent shapes, no events within the scan, no degrees of freedom left.

    Notes
    -----
    The models are fitted by ``GLM_ENGINES[options.engine]``.
    Censored volumes are dropped after building the design on the full run; AR(1) then
    treats the kept volumes as consecutive (as nilearn does). Confound columns constant over
    the kept volumes (all-zero columns of fMRIPrep tables) are dropped, named in one warning
    (:func:`drop_constant_confounds`). Voxels with NaN or constant values over the kept
    volumes are not fitted (NaN betas) and counted in ``warnings``.
    With ``lss`` (one model per trial, cost grows with the number of trials) a condition's
    pattern is the mean of its trials' estimates (t values with ``output='t'``), while
    ``residuals``, ``design`` and ``dof`` come from the condition-level (LSA) model.
    """
    bold = np.asarray(bold)
    if bold.ndim != 2:
        raise AnalysisError(f"{source}: BOLD data must be 2D (n_time, n_vox), got shape {bold.shape}")
    n_time, n_vox = bold.shape
    if not (t_r > 0) or n_time < 2:
        raise AnalysisError(f"{source}: need t_r > 0 and >= 2 volumes (got t_r={t_r}, {n_time} volumes)")
    frame_times = np.arange(n_time) * float(t_r) if frame_times is None else np.asarray(frame_times, float)
    if frame_times.shape != (n_time,):
        raise AnalysisError(f"{source}: {frame_times.size} frame times for {n_time} volumes")
    notes: list[str] = []
    regs, keep, drift_model = _confounds_and_censoring(confounds, options, n_time, source, notes)
    ev, more = _check_events(events, float(frame_times[-1] + t_r), source)
    notes += more
    conditions = sorted(ev["condition"].unique())
    internal = {c: f"cond_{i:05d}" for i, c in enumerate(conditions)}
    ev["trial_type"] = ev["condition"].map(internal)
    n_trials = {c: int(n) for c, n in ev["condition"].value_counts().sort_index().items()}

    design = _design(frame_times, ev, options, drift_model, regs, notes).loc[keep]
    X = design.to_numpy(dtype=float)
    norms = np.linalg.norm(X, axis=0)
    empty = [c for c in conditions if norms[design.columns.get_loc(internal[c])] <= 1e-8 * norms.max()]
    if empty:
        notes.append(f"{len(empty)} condition(s) without signal in the kept volumes (betas NaN): {', '.join(empty[:10])}")
    rank = int(np.linalg.matrix_rank(X))
    dof = X.shape[0] - rank
    if dof < 1:
        raise AnalysisError(
            f"{source}: {X.shape[1]} regressors (rank {rank}) for {X.shape[0]} volumes leave no degrees of freedom",
            "use fewer confounds or conditions per run",
        )
    if rank < X.shape[1] - len(empty):
        notes.append(f"the design is rank deficient (rank {rank} of {X.shape[1]} columns): collinear estimates are not unique")

    rows = np.flatnonzero(keep)
    budget = GLM_MEMORY_BUDGET if memory_budget_bytes is None else memory_budget_bytes
    step = max(int(chunk_size_for_budget(len(rows), budget) if chunk_size is None else chunk_size), 1)
    finite, constant = _finite_and_constant(bold, rows, step)
    fitted = finite & ~constant
    if not fitted.all():
        notes.append(
            f"{int((~fitted).sum())} of {n_vox} voxels excluded from the fit (betas NaN): "
            f"{int((~finite).sum())} with NaN/inf values, {int(constant.sum())} constant"
        )

    cond_rows = [k for k, c in enumerate(conditions) if c not in empty]
    cond_cols = [design.columns.get_loc(internal[conditions[k]]) for k in cond_rows]
    t_values = options.output == "t"
    engine = GLM_ENGINES[options.engine]
    betas = np.full((len(conditions), n_vox), np.nan)
    residuals = np.full((X.shape[0], n_vox), np.nan, dtype=np.float32)
    vox = np.flatnonzero(fitted)
    estimates = engine.fit_design(bold, X, options.noise_model, rows=rows, voxels=vox, columns=cond_cols,
                                  t_values=t_values, chunk_size=step, residuals_out=residuals)
    if options.method == "lsa":
        betas[np.ix_(cond_rows, vox)] = estimates
    else:
        trial_ev = ev.assign(trial_type=[f"{TRIAL_PREFIX}{i:05d}" for i in range(len(ev))])
        trial_design = _design(frame_times, trial_ev, options, drift_model, regs, notes).loc[keep]
        trial_condition = ev["condition"].map({c: k for k, c in enumerate(conditions)}).to_numpy()
        lss = LSSDesign.from_frame(trial_design, trial_condition, len(conditions))
        dead = int((~lss.has_signal).sum())
        if dead:
            notes.append(f"{dead} trial(s) without signal in the kept volumes give no LSS estimate")
        betas[:, vox] = _condition_means(
            engine.fit_lss(bold, lss, options.noise_model, rows=rows, voxels=vox, t_values=t_values, chunk_size=step),
            trial_condition, len(conditions))

    names = {v: k for k, v in internal.items()}
    notes = [re.sub(r"cond_\d{5}", lambda m: names.get(m.group(0), m.group(0)), n) for n in notes]
    return RunGLM(
        conditions=list(conditions),
        betas=betas,
        residuals=residuals,
        design=design.rename(columns=lambda c: names.get(c, c)),
        dof=int(dof),
        warnings=notes,
        sample_mask=keep,
        fitted_voxels=fitted,
        constant_voxels=constant,
        n_trials=n_trials,
        conditions_without_signal=list(empty),
        engine=options.engine,
    )


def _condition_means(trial_estimates: np.ndarray, trial_condition: np.ndarray, n_conditions: int) -> np.ndarray:
    """Mean of the finite trial estimates per condition, shape (n_conditions, n_vox) (NaN
    where a condition has none); trials summed in order."""
    total = np.zeros((n_conditions, trial_estimates.shape[1]))
    count = np.zeros_like(total)
    for row, estimate in zip(trial_condition, trial_estimates):
        ok = np.isfinite(estimate)
        total[row] += np.where(ok, estimate, 0.0)
        count[row] += ok
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _finite_and_constant(bold: np.ndarray, rows: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxels finite over the kept volumes ``rows``, and those among them that are constant;
    computed over blocks of ``step`` voxels (no copy of the whole series)."""
    n_vox = bold.shape[1]
    finite = np.zeros(n_vox, dtype=bool)
    constant = np.zeros(n_vox, dtype=bool)
    for start in range(0, n_vox, step):
        block = bold[rows, start : start + step]
        ok = np.isfinite(block)
        finite[start : start + step] = ok.all(axis=0)
        constant[start : start + step] = np.ptp(np.where(ok, block, 0), axis=0) == 0
    return finite, constant & finite


def _confounds_and_censoring(
    confounds: pd.DataFrame | None, options: GLMOptions, n_time: int, source: str, notes: list[str]
) -> tuple[pd.DataFrame | None, np.ndarray, str | None]:
    """Selected confound regressors, kept-volume mask and the nilearn drift model to use."""
    keep = np.ones(n_time, dtype=bool)
    regs = None
    if confounds is not None:
        if len(confounds) != n_time:
            raise AnalysisError(f"{source}: the confounds table has {len(confounds)} rows for {n_time} volumes")
        regs, more = select_confounds(confounds, list(options.confounds), source=source)
        notes += more
        keep = sample_mask_from_confounds(confounds, options.drop_non_steady_state, options.scrub_fd, source)
        regs, dropped = drop_constant_confounds(regs, keep)
        if dropped:
            notes.append(f"dropped {len(dropped)} confound column(s) constant over the fitted volumes (no effect "
                         f"beyond the intercept): {', '.join(dropped[:20])}"
                         + (f", ... ({len(dropped) - 20} more)" if len(dropped) > 20 else ""))
        regs = regs.reset_index(drop=True) if regs.shape[1] else None
    elif options.confounds or options.scrub_fd is not None:
        notes.append("no confounds table given: fitted without confound regressors or scrubbing")
    if not keep.all():
        notes.append(f"{int((~keep).sum())} of {n_time} volumes censored (non-steady-state or scrub_fd)")
    if keep.sum() < 2:
        raise AnalysisError(f"{source}: only {int(keep.sum())} volume(s) left after censoring")
    drift = None if options.drift_model == "none" else options.drift_model
    if drift == "cosine" and options.high_pass_hz == 0:
        drift = None
    if drift == "cosine" and regs is not None and any(c.startswith("cosine") for c in regs.columns):
        drift = None
        notes.append("fMRIPrep cosine regressors in confounds replace nilearn's cosine drift model")
    return regs, keep, drift
