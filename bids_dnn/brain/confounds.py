"""fMRIPrep confounds for a first-level GLM: regressor selection and volume censoring.

Tables in, tables and masks out: an fMRIPrep ``desc-confounds_timeseries.tsv`` read as a
DataFrame (``n/a`` as NaN). Confounds are chosen by group name (:data:`CONFOUND_GROUPS`),
exact column name or glob; volumes are censored for non-steady state and framewise
displacement. No files, no printing; problems are :mod:`bids_dnn.errors` exceptions.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from bids_dnn.errors import AnalysisError, InputMissingError

__all__ = [
    "CONFOUND_GROUPS", "ConfoundGroup", "drop_constant_confounds", "sample_mask_from_confounds", "select_confounds",
]

_MOTION_6 = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass(frozen=True)
class ConfoundGroup:
    """A named set of fMRIPrep confound columns.

    Attributes
    ----------
    columns : tuple of str
        Exact column names, all required.
    pattern : str, optional
        A glob (``fnmatch``, case-sensitive) used instead of ``columns``: at least one column
        must match unless ``required`` is False.
    required : bool
        Whether a ``pattern`` that matches nothing is an error.
    description : str
        What the group holds, for documentation.
    """

    columns: tuple[str, ...] = ()
    pattern: str | None = None
    required: bool = True
    description: str = ""

    def resolve(self, available: Sequence[str]) -> tuple[list[str], list[str]]:
        """Columns of this group in a table.

        Parameters
        ----------
        available : sequence of str
            The table's column names.

        Returns
        -------
        found : list of str
            The group's columns present in ``available`` (sorted for a ``pattern``).
        missing : list of str
            Required columns absent (the ``pattern`` itself when it is required and matches
            nothing).
        """
        if self.pattern is not None:
            found = sorted(c for c in available if fnmatch.fnmatchcase(c, self.pattern))
            missing = [self.pattern] if (self.required and not found) else []
            return found, missing
        present = set(available)
        return [c for c in self.columns if c in present], [c for c in self.columns if c not in present]


CONFOUND_GROUPS: dict[str, ConfoundGroup] = {
    "motion_6": ConfoundGroup(_MOTION_6, description="3 translations and 3 rotations"),
    "motion_24": ConfoundGroup(
        tuple(f"{b}{s}" for b in _MOTION_6 for s in ("", "_derivative1", "_power2", "_derivative1_power2")),
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
        pattern="non_steady_state_outlier*", required=False, description="spike regressors (may be absent)"
    ),
}
"""Confound groups accepted in :attr:`bids_dnn.brain.glm.GLMOptions.confounds` besides exact column names
and globs."""

# Columns whose first value is n/a by construction in fMRIPrep (no previous volume).
_FIRST_ROW_NAN = ("*derivative1*", "framewise_displacement", "dvars", "std_dvars", "rmsd")


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
        Notes for the user: optional groups that matched nothing. (Constant columns are kept
        here; :func:`bids_dnn.brain.glm.fit_run_glm` drops those constant over the volumes it fits.)

    Raises
    ------
    InputMissingError
        When requested columns are absent; the message names them and lists the table's
        columns.
    AnalysisError
        When a selected column is not numeric or has n/a values beyond the first row.
    """
    available = [str(c) for c in confounds.columns]
    notes: list[str] = []
    selected: list[str] = []
    missing: list[str] = []
    for name in names:
        if name in CONFOUND_GROUPS:
            found, absent = CONFOUND_GROUPS[name].resolve(available)
            missing += [f"{a} (group '{name}')" for a in absent]
            if not found and not absent:
                notes.append(f"confound group '{name}' matched no column in {source}")
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
            f"Available columns: {', '.join(available[:40])}"
            + (f", ... ({len(available) - 40} more)" if len(available) > 40 else ""),
            "choose confounds present in the fMRIPrep confounds file (brain.glm.confounds); "
            f"groups: {', '.join(CONFOUND_GROUPS)}",
        )
    out = confounds.loc[:, selected].copy()
    non_numeric = [c for c in selected if not pd.api.types.is_numeric_dtype(out[c])]
    if non_numeric:
        raise AnalysisError(f"{source}: confound column(s) are not numeric: {', '.join(non_numeric)}")
    out = out.astype(float)
    for j, col in enumerate(selected):
        if len(out) and np.isnan(out.iat[0, j]) and any(fnmatch.fnmatchcase(col, p) for p in _FIRST_ROW_NAN):
            out.iat[0, j] = 0.0
    still_nan = [c for c in selected if out[c].isna().any()]
    if still_nan:
        raise AnalysisError(
            f"{source}: confound column(s) contain n/a values: {', '.join(still_nan)}",
            "remove these columns from brain.glm.confounds",
        )
    return out, notes


def drop_constant_confounds(regs: pd.DataFrame, keep: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
    """Remove confound columns that are constant over the kept volumes.

    fMRIPrep tables hold all-zero columns (e.g. a motion outlier that never fired, a spike
    regressor of a volume that is censored anyway); such a column is a multiple of the
    intercept (or zero) over the fitted volumes, so it cannot change any estimate and only
    makes the design rank deficient.

    Parameters
    ----------
    regs : pandas.DataFrame, shape (n_time, n_columns)
        Selected confound regressors (no NaN).
    keep : numpy.ndarray of bool, shape (n_time,)
        Volumes that enter the fit.

    Returns
    -------
    kept : pandas.DataFrame, shape (n_time, n_kept)
        ``regs`` without the constant columns (column order kept).
    dropped : list of str
        Names of the dropped columns.
    """
    values = regs.to_numpy(dtype=float)[np.asarray(keep, dtype=bool)]
    constant = np.ptp(values, axis=0) == 0 if len(values) else np.ones(regs.shape[1], dtype=bool)
    dropped = [str(c) for c, flat in zip(regs.columns, constant) if flat]
    return regs.loc[:, ~constant], dropped


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
        Drop volumes flagged by a ``non_steady_state_outlier*`` column (none if absent).
    fd_threshold : float, optional
        Drop volumes whose ``framewise_displacement`` exceeds this (mm); only the volume
        itself (no neighbours); the first volume's n/a counts as 0.
    source : str
        Name of the table for error messages.

    Returns
    -------
    keep : numpy.ndarray of bool, shape (n_time,)
        True for volumes that enter the GLM. Raises InputMissingError when ``fd_threshold``
        is given but there is no ``framewise_displacement`` column.
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
