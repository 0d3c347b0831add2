"""First-level GLM per run (nilearn): confound selection, censoring, LSA and LSS patterns.

This module works on arrays and tables only: a run's BOLD data as an ``(n_time, n_vox)``
array, its events and fMRIPrep confounds as :class:`pandas.DataFrame`. It knows nothing
about BIDS layouts, writes no files and prints nothing; problems the user should know about
are returned as strings in :attr:`RunGLM.warnings`, problems that stop the fit are raised
as :mod:`bids_dnn.errors` exceptions.

Design matrices are built with :func:`nilearn.glm.first_level.make_first_level_design_matrix`
on the full run (so the HRF convolution sees the true timing) and censored volumes are then
dropped from both the data and the design (a sample mask, as nilearn's ``FirstLevelModel``
does). Models are fitted vectorised over voxels with :func:`nilearn.glm.first_level.run_glm`,
a chunk of voxels at a time so memory stays bounded for whole-brain runs.

Two ways to get one pattern per condition (the events column ``condition``):

- ``lsa`` (least squares all): one regressor per condition; repeats of a condition within a
  run are modelled by that one regressor.
- ``lss`` (least squares separate; Mumford et al., 2012, NeuroImage 59:2636): one model per
  trial, with the trial as one regressor and all other trials grouped by condition; the
  trial estimates of a condition are then averaged into one pattern.
"""

from __future__ import annotations

import fnmatch
import warnings as _warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from bids_dnn.errors import AnalysisError, BidsValidationError, InputMissingError
from bids_dnn.spec import GLMSpec

__all__ = [
    "CONFOUND_GROUPS",
    "ConfoundGroup",
    "RunGLM",
    "fit_run_glm",
    "sample_mask_from_confounds",
    "select_confounds",
]

DEFAULT_CHUNK_SIZE = 20_000
"""Voxels fitted at once; bounds memory to about ``n_time * chunk * 8`` bytes per array."""

_MOTION_6 = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass(frozen=True)
class ConfoundGroup:
    """A named set of fMRIPrep confound columns.

    Attributes
    ----------
    columns : tuple of str
        Exact column names (all must be present).
    pattern : str or None
        A glob matched against the column names instead of ``columns``.
    required : bool
        For a pattern: whether at least one column must match. fMRIPrep writes
        ``non_steady_state_outlier*`` columns only when there are outliers, so that group
        may be empty.
    description : str
        One line for documentation and error messages.
    """

    columns: tuple[str, ...] = ()
    pattern: str | None = None
    required: bool = True
    description: str = ""

    def resolve(self, available: Sequence[str]) -> tuple[list[str], list[str]]:
        """Return ``(found, missing)`` column names for a table with ``available`` columns."""
        if self.pattern is not None:
            found = sorted(c for c in available if fnmatch.fnmatchcase(c, self.pattern))
            missing = [self.pattern] if (self.required and not found) else []
            return found, missing
        present = set(available)
        return [c for c in self.columns if c in present], [c for c in self.columns if c not in present]


CONFOUND_GROUPS: dict[str, ConfoundGroup] = {
    "motion_6": ConfoundGroup(_MOTION_6, description="3 translations and 3 rotations"),
    "motion_24": ConfoundGroup(
        tuple(
            f"{base}{suffix}"
            for base in _MOTION_6
            for suffix in ("", "_derivative1", "_power2", "_derivative1_power2")
        ),
        description="motion_6 with derivatives, squares and squared derivatives (Friston-24)",
    ),
    "white_matter": ConfoundGroup(("white_matter",), description="mean white-matter signal"),
    "csf": ConfoundGroup(("csf",), description="mean CSF signal"),
    "global_signal": ConfoundGroup(("global_signal",), description="mean whole-brain signal"),
    "a_comp_cor_5": ConfoundGroup(
        tuple(f"a_comp_cor_{i:02d}" for i in range(5)), description="first 5 anatomical CompCor components"
    ),
    "cosine": ConfoundGroup(pattern="cosine*", description="fMRIPrep's discrete cosine drift basis"),
    "non_steady_state": ConfoundGroup(
        pattern="non_steady_state_outlier*",
        required=False,
        description="one spike regressor per non-steady-state volume (may be absent)",
    ),
}
"""Confound groups accepted in ``GLMSpec.confounds`` besides exact column names and globs."""

# Columns whose first value is n/a by construction in fMRIPrep (no previous volume).
_FIRST_ROW_NAN_PATTERNS = ("*derivative1*", "framewise_displacement", "dvars", "std_dvars", "rmsd")


def _available_text(columns: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (f", ... ({len(columns) - limit} more)" if len(columns) > limit else "")


def select_confounds(
    confounds: pd.DataFrame, names: Sequence[str], source: str = "confounds"
) -> tuple[pd.DataFrame, list[str]]:
    """Select confound regressors by group name, exact column name or glob.

    Parameters
    ----------
    confounds : pandas.DataFrame, shape (n_time, n_columns)
        An fMRIPrep ``desc-confounds_timeseries.tsv`` table (``n/a`` read as NaN).
    names : sequence of str
        Group names from :data:`CONFOUND_GROUPS`, exact column names, or globs such as
        ``"a_comp_cor_0*"``.
    source : str, optional
        Name of the table (e.g. its file name), used in error messages.

    Returns
    -------
    selected : pandas.DataFrame, shape (n_time, n_selected)
        The selected columns (float, in request order, without duplicates) with the first
        row's n/a of derivative-type columns (``*derivative1*``, framewise displacement,
        DVARS) set to 0, fMRIPrep's convention.
    warnings : list of str
        Notes for the user (e.g. n/a values that were filled).

    Raises
    ------
    InputMissingError
        When requested columns are absent; the message names them and lists the table's
        columns.
    AnalysisError
        When a selected column is not numeric or has n/a values beyond the first row.
    """
    available = [str(c) for c in confounds.columns]
    selected: list[str] = []
    missing: list[str] = []
    for name in names:
        if name in CONFOUND_GROUPS:
            found, absent = CONFOUND_GROUPS[name].resolve(available)
            missing += [f"{a} (group '{name}')" for a in absent]
        elif name in available:
            found = [name]
        elif any(ch in name for ch in "*?["):
            found = sorted(c for c in available if fnmatch.fnmatchcase(c, name))
            missing += [] if found else [f"{name} (no column matches)"]
        else:
            found, missing = [], missing + [name]
        selected += [c for c in found if c not in selected]
    if missing:
        raise InputMissingError(
            f"{source}: confound column(s) not found: {', '.join(missing)}. "
            f"Available columns: {_available_text(available)}",
            "choose confounds present in the fMRIPrep confounds file (brain.glm.confounds); "
            f"groups: {', '.join(CONFOUND_GROUPS)}",
        )
    out = confounds.loc[:, selected].copy()
    notes: list[str] = []
    non_numeric = [c for c in selected if not pd.api.types.is_numeric_dtype(out[c])]
    if non_numeric:
        raise AnalysisError(f"{source}: confound column(s) are not numeric: {', '.join(non_numeric)}")
    out = out.astype(float)
    if len(out):
        first_nan = [
            c
            for c in selected
            if np.isnan(out[c].iloc[0]) and any(fnmatch.fnmatchcase(c, p) for p in _FIRST_ROW_NAN_PATTERNS)
        ]
        if first_nan:
            out.iloc[0, [out.columns.get_loc(c) for c in first_nan]] = 0.0
    still_nan = [c for c in selected if out[c].isna().any()]
    if still_nan:
        raise AnalysisError(
            f"{source}: confound column(s) contain n/a values: {', '.join(still_nan)}",
            "remove these columns from brain.glm.confounds",
        )
    return out, notes


def sample_mask_from_confounds(
    confounds: pd.DataFrame,
    drop_non_steady_state: bool = True,
    fd_threshold: float | None = None,
    source: str = "confounds",
) -> np.ndarray:
    """Volumes kept after removing non-steady-state volumes and high-motion volumes.

    Parameters
    ----------
    confounds : pandas.DataFrame, shape (n_time, n_columns)
        fMRIPrep confounds table.
    drop_non_steady_state : bool
        Drop volumes flagged by a ``non_steady_state_outlier*`` column (absent columns: none).
    fd_threshold : float, optional
        Drop volumes whose ``framewise_displacement`` exceeds this (mm). Only the volume
        itself is censored (no neighbours); the first volume's n/a counts as 0.
    source : str
        Name of the table for error messages.

    Returns
    -------
    keep : numpy.ndarray of bool, shape (n_time,)
        True for volumes that enter the GLM.

    Raises
    ------
    InputMissingError
        ``fd_threshold`` given but the table has no ``framewise_displacement`` column.
    """
    keep = np.ones(len(confounds), dtype=bool)
    if drop_non_steady_state:
        cols = [c for c in confounds.columns if fnmatch.fnmatchcase(str(c), "non_steady_state_outlier*")]
        if cols:
            flags = confounds[cols].fillna(0).to_numpy(dtype=float)
            keep &= ~(flags != 0).any(axis=1)
    if fd_threshold is not None:
        if "framewise_displacement" not in confounds.columns:
            raise InputMissingError(
                f"{source}: no 'framewise_displacement' column for scrubbing (scrub_fd)",
                "unset brain.glm.scrub_fd or use fMRIPrep confounds",
            )
        fd = confounds["framewise_displacement"].fillna(0).to_numpy(dtype=float)
        keep &= ~(fd > fd_threshold)
    return keep


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
    n_trials : dict of str to int
        Events per condition that entered the model.
    """

    conditions: list[str]
    betas: np.ndarray
    residuals: np.ndarray
    design: pd.DataFrame
    dof: int
    warnings: list[str] = field(default_factory=list)
    sample_mask: np.ndarray | None = None
    fitted_voxels: np.ndarray | None = None
    n_trials: dict[str, int] = field(default_factory=dict)

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
    ev = events.loc[:, ["onset", "duration", "condition"]].copy()
    for col in ("onset", "duration"):
        values = pd.to_numeric(ev[col], errors="coerce")
        bad = values.isna() & ev[col].notna()
        if bad.any():
            raise BidsValidationError(
                f"{source}: events column '{col}' has non-numeric values "
                f"(rows {', '.join(map(str, np.flatnonzero(bad.to_numpy())[:10]))})"
            )
        if values.isna().any():
            raise BidsValidationError(
                f"{source}: events column '{col}' has n/a values "
                f"(rows {', '.join(map(str, np.flatnonzero(values.isna().to_numpy())[:10]))})"
            )
        ev[col] = values.astype(float)
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
    options: GLMSpec,
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


def fit_run_glm(
    bold: np.ndarray,
    events: pd.DataFrame,
    t_r: float,
    options: GLMSpec,
    confounds: pd.DataFrame | None = None,
    frame_times: np.ndarray | None = None,
    *,
    source: str = "run",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> RunGLM:
    """Fit a first-level GLM to one run and return one pattern per condition.

    Parameters
    ----------
    bold : numpy.ndarray, shape (n_time, n_vox)
        The run's BOLD time series (e.g. brain-masked fMRIPrep output).
    events : pandas.DataFrame, shape (n_events, >= 3)
        Columns ``onset`` and ``duration`` (seconds) and ``condition`` (stimulus id; the
        caller maps trial types / stimulus files to it and drops non-stimulus rows).
    t_r : float
        Repetition time in seconds.
    options : GLMSpec
        ``method`` (lsa/lss), ``hrf``, ``drift_model``, ``high_pass_hz``, ``noise_model``,
        ``confounds``, ``scrub_fd``, ``drop_non_steady_state``, ``output``.
    confounds : pandas.DataFrame, shape (n_time, n_columns), optional
        The full fMRIPrep confounds table; ``options.confounds`` are selected from it with
        :func:`select_confounds`, and the censoring mask comes from
        :func:`sample_mask_from_confounds`.
    frame_times : numpy.ndarray, shape (n_time,), optional
        Acquisition time of each volume (default ``arange(n_time) * t_r``, i.e. slice-time
        reference 0).
    source : str
        Name of the run used in error messages.
    chunk_size : int
        Number of voxels fitted at once.

    Returns
    -------
    RunGLM
        ``betas`` of shape (n_cond, n_vox), whitened ``residuals`` of shape
        (n_time_kept, n_vox), the design, dof and warnings.

    Raises
    ------
    BidsValidationError
        Malformed events (missing columns, n/a or negative durations).
    InputMissingError
        Requested confound columns absent from ``confounds``.
    AnalysisError
        Inconsistent shapes, no events within the scan, too few volumes left.

    Notes
    -----
    Volumes removed by the sample mask are dropped from data and design after building the
    design on the full run; with ``noise_model='ar1'`` the AR(1) model then treats the kept
    volumes as consecutive (as nilearn does). Voxels with NaN or constant values over the kept
    volumes are not fitted (NaN betas) and counted in ``warnings``.
    """
    bold = np.asarray(bold)
    if bold.ndim != 2:
        raise AnalysisError(f"{source}: BOLD data must be 2D (n_time, n_vox), got shape {bold.shape}")
    n_time, n_vox = bold.shape
    if not (t_r > 0):
        raise AnalysisError(f"{source}: repetition time must be > 0 (got {t_r})")
    if frame_times is None:
        frame_times = np.arange(n_time) * float(t_r)
    frame_times = np.asarray(frame_times, dtype=float)
    if frame_times.shape != (n_time,):
        raise AnalysisError(f"{source}: {frame_times.size} frame times for {n_time} volumes")
    notes: list[str] = []

    # Confounds and censoring.
    keep = np.ones(n_time, dtype=bool)
    regs: pd.DataFrame | None = None
    if confounds is not None:
        if len(confounds) != n_time:
            raise AnalysisError(
                f"{source}: the confounds table has {len(confounds)} rows but the BOLD run has {n_time} volumes"
            )
        regs, more = select_confounds(confounds, list(options.confounds), source=source)
        notes += more
        regs = regs.reset_index(drop=True) if regs.shape[1] else None
        keep = sample_mask_from_confounds(
            confounds, options.drop_non_steady_state, options.scrub_fd, source=source
        )
    elif options.confounds or options.scrub_fd is not None:
        notes.append("no confounds table given: fitted without confound regressors or scrubbing")
    n_dropped = int((~keep).sum())
    if n_dropped:
        notes.append(f"{n_dropped} of {n_time} volumes censored (non-steady-state or scrub_fd)")
    drift_model = None if options.drift_model == "none" else options.drift_model
    if drift_model == "cosine" and options.high_pass_hz == 0:
        drift_model = None
    if drift_model == "cosine" and regs is not None and any(c.startswith("cosine") for c in regs.columns):
        drift_model = None
        notes.append("fMRIPrep cosine regressors in confounds replace nilearn's cosine drift model")

    scan_end = float(frame_times[-1] + t_r) if n_time else 0.0
    ev, more = _check_events(events, scan_end, source)
    notes += more
    conditions = sorted(ev["condition"].unique())
    internal = {c: f"cond_{i:05d}" for i, c in enumerate(conditions)}
    ev["trial_type"] = ev["condition"].map(internal)
    n_trials = {c: int(n) for c, n in ev["condition"].value_counts().sort_index().items()}

    design_full = _design(frame_times, ev, options, drift_model, regs, notes)
    design = design_full.loc[keep]
    X = design.to_numpy(dtype=float)
    if X.shape[0] <= 1:
        raise AnalysisError(f"{source}: only {X.shape[0]} volume(s) left after censoring")
    col_norm = np.linalg.norm(X, axis=0)
    empty = [c for c in conditions if col_norm[design.columns.get_loc(internal[c])] <= 1e-8 * col_norm.max()]
    if empty:
        notes.append(
            f"{len(empty)} condition(s) have no signal in the kept volumes; their betas are NaN: "
            + ", ".join(empty[:10])
        )
    rank = int(np.linalg.matrix_rank(X))
    dof = X.shape[0] - rank
    if dof < 1:
        raise AnalysisError(
            f"{source}: the design has {X.shape[1]} regressors (rank {rank}) for {X.shape[0]} volumes: "
            "no degrees of freedom left",
            "use fewer confounds or conditions per run",
        )
    if rank < X.shape[1] - len(empty):
        notes.append(
            f"the design matrix is rank deficient (rank {rank} of {X.shape[1]} columns): "
            "estimates of collinear regressors are not unique"
        )

    # Voxels to fit.
    Y_all = bold[keep]
    finite = np.isfinite(Y_all).all(axis=0)
    constant = finite & (np.ptp(np.where(np.isfinite(Y_all), Y_all, 0.0), axis=0) == 0)
    fitted = finite & ~constant
    if (~finite).any() or constant.any():
        notes.append(
            f"{int((~fitted).sum())} of {n_vox} voxels excluded from the fit (betas NaN): "
            f"{int((~finite).sum())} with NaN/inf values, {int(constant.sum())} constant"
        )
    vox = np.flatnonzero(fitted)

    # Fit.
    keep_cols = [c for c in conditions if c not in empty]
    cond_cols = [design.columns.get_loc(internal[c]) for c in keep_cols]
    t_values = options.output == "t"
    betas = np.full((len(conditions), n_vox), np.nan)
    residuals = np.full((X.shape[0], n_vox), np.nan, dtype=np.float32)
    cond_rows = [conditions.index(c) for c in keep_cols]
    if options.method == "lss":
        trial_ev = ev.copy()
        trial_ev["trial_type"] = [f"trial_{i:05d}" for i in range(len(ev))]
        trial_design = _design(frame_times, trial_ev, options, drift_model, regs, notes).loc[keep]
        norms = np.linalg.norm(trial_design.to_numpy(dtype=float), axis=0)
        dead = sum(norms[trial_design.columns.get_loc(t)] <= 1e-8 * norms.max() for t in trial_ev["trial_type"])
        if dead:
            notes.append(f"{int(dead)} trial(s) have no signal in the kept volumes and give no LSS estimate")
        lss_sum = np.zeros((len(conditions), n_vox))
        lss_n = np.zeros((len(conditions), n_vox))
    chunk_size = max(int(chunk_size), 1)
    for start in range(0, len(vox), chunk_size):
        idx = vox[start : start + chunk_size]
        Y = np.asarray(Y_all[:, idx], dtype=np.float64)
        est, resid = _fit_columns(Y, X, options.noise_model, cond_cols, t_values)
        residuals[:, idx] = resid
        if options.method == "lsa":
            betas[np.ix_(cond_rows, idx)] = est
        else:
            for row, est_trial in _lss_chunk(Y, trial_design, ev, conditions, options, t_values):
                ok = np.isfinite(est_trial)
                lss_sum[row, idx] += np.where(ok, est_trial, 0.0)
                lss_n[row, idx] += ok
    if options.method == "lss":
        with np.errstate(invalid="ignore", divide="ignore"):
            betas = np.where(lss_n > 0, lss_sum / np.maximum(lss_n, 1), np.nan)

    names = {v: k for k, v in internal.items()}
    out_design = design.rename(columns=lambda c: names.get(c, c))
    return RunGLM(
        conditions=list(conditions),
        betas=betas,
        residuals=residuals,
        design=out_design,
        dof=int(dof),
        warnings=notes,
        sample_mask=keep,
        fitted_voxels=fitted,
        n_trials=n_trials,
    )


def _lss_chunk(
    Y: np.ndarray,
    trial_design: pd.DataFrame,
    ev: pd.DataFrame,
    conditions: list[str],
    options: GLMSpec,
    t_values: bool,
):
    """Yield ``(condition_row, estimates (n_vox,))`` for every trial (LSS, one model per trial).

    The trial-wise design is built once; because convolution is linear, the regressor of
    "all other trials of condition c" is the sum of those trials' columns (the same as
    modelling them as one condition). Derivative columns are grouped the same way.
    """
    names = list(trial_design.columns)
    trial_names = [f"trial_{i:05d}" for i in range(len(ev))]
    own = {t: [names.index(c) for c in names if c == t or c.startswith(t + "_")] for t in trial_names}
    trial_cols = {j for cols in own.values() for j in cols}
    nuisance = [j for j in range(len(names)) if j not in trial_cols]
    D = trial_design.to_numpy(dtype=float)
    scale = np.linalg.norm(D, axis=0).max()
    cond_of = ev["condition"].to_numpy()
    n_basis = max(len(cols) for cols in own.values())
    for i, trial in enumerate(trial_names):
        this = D[:, own[trial]]
        if np.linalg.norm(this[:, 0]) <= 1e-8 * scale:
            continue  # no signal in the kept volumes: the trial gives no estimate
        blocks = [this]
        for cond in conditions:
            others = [t for j, t in enumerate(trial_names) if j != i and cond_of[j] == cond]
            if not others:
                continue
            group = sum(D[:, own[t]] for t in others)
            for b in range(n_basis):
                if np.linalg.norm(group[:, b]) > 1e-8 * scale:
                    blocks.append(group[:, [b]])
        X = np.column_stack(blocks + [D[:, nuisance]])
        est, _ = _fit_columns(Y, X, options.noise_model, [0], t_values)
        yield conditions.index(cond_of[i]), est[0]
