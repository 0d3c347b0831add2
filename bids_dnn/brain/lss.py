"""The trial models of least-squares-separate (LSS) estimation (Mumford et al., 2012).

One model per trial: the trial's own regressors (its HRF regressor, then its derivatives), the
other trials grouped by condition (one regressor per condition and HRF basis: the sum of those
trials' columns), then the nuisance regressors (confounds, drifts, constant). Every GLM engine
fits exactly these models; :class:`LSSDesign` builds them from the trial-wise design, and tells
the closed-form solver (:mod:`bids_dnn.brain.fast_lss`) how each model relates to the
condition-level model (:meth:`LSSDesign.common_design`).

Arrays in, arrays out (the design as a DataFrame of nilearn's column names in
:meth:`LSSDesign.from_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["LSSDesign", "TRIAL_PREFIX"]

#: name prefix of the trial regressors in the trial-wise design (``trial_00012``, ``trial_00012_derivative``)
TRIAL_PREFIX = "trial_"
#: a regressor whose norm is at most this times the largest column norm of the design carries no signal
NO_SIGNAL = 1e-8


@dataclass(frozen=True)
class LSSDesign:
    """The LSS trial models of one run.

    Attributes
    ----------
    trial_regressors : numpy.ndarray, shape (n_time, n_trials, n_basis)
        Each trial's own regressors (HRF regressor first, then its derivatives).
    trial_condition : numpy.ndarray of int, shape (n_trials,)
        Condition index of every trial.
    n_conditions : int
        Number of conditions (rows of the LSS patterns).
    nuisance : numpy.ndarray, shape (n_time, n_nuisance)
        Regressors of every model after the trial and condition regressors.
    threshold : float
        Norm at or below which a regressor carries no signal (a trial without signal gets no
        model; a group regressor without signal is left out of a model).
    """

    trial_regressors: np.ndarray
    trial_condition: np.ndarray
    n_conditions: int
    nuisance: np.ndarray
    threshold: float
    _totals: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n_time, n_trials, n_basis = self.trial_regressors.shape
        totals = np.zeros((n_time, self.n_conditions, n_basis))
        for c in range(self.n_conditions):
            members = np.flatnonzero(self.trial_condition == c)
            if members.size:  # in trial order, as a sum of the trials' columns
                totals[:, c] = sum(self.trial_regressors[:, i] for i in members)
        object.__setattr__(self, "_totals", totals)

    @classmethod
    def from_frame(cls, trial_design: pd.DataFrame, trial_condition: np.ndarray, n_conditions: int) -> "LSSDesign":
        """Split a trial-wise design into trial and nuisance regressors.

        Parameters
        ----------
        trial_design : pandas.DataFrame, shape (n_time, n_columns)
            One regressor per trial named ``trial_<5-digit trial index>`` (derivatives with a
            suffix, right after it), the other columns nuisance regressors.
        trial_condition : numpy.ndarray of int, shape (n_trials,)
            Condition index of every trial.
        n_conditions : int
            Number of conditions.

        Returns
        -------
        LSSDesign
            With ``threshold`` = :data:`NO_SIGNAL` x the largest column norm of the design.
        """
        names = list(trial_design.columns)
        D = trial_design.to_numpy(dtype=float)
        own: list[list[int]] = [[] for _ in range(len(trial_condition))]
        nuisance = []
        for j, name in enumerate(names):
            if name.startswith(TRIAL_PREFIX):
                own[int(name[len(TRIAL_PREFIX):len(TRIAL_PREFIX) + 5])].append(j)
            else:
                nuisance.append(j)
        regressors = np.stack([D[:, cols] for cols in own], axis=1)
        scale = float(np.linalg.norm(D, axis=0).max())
        return cls(regressors, np.asarray(trial_condition, dtype=int), int(n_conditions), D[:, nuisance],
                   NO_SIGNAL * scale)

    @property
    def n_trials(self) -> int:
        return int(self.trial_regressors.shape[1])

    @property
    def n_basis(self) -> int:
        return int(self.trial_regressors.shape[2])

    @property
    def condition_totals(self) -> np.ndarray:
        """numpy.ndarray, shape (n_time, n_conditions, n_basis): every condition's trials, summed."""
        return self._totals

    @property
    def has_signal(self) -> np.ndarray:
        """numpy.ndarray of bool, shape (n_trials,): trials whose HRF regressor has signal (they get a model)."""
        return np.linalg.norm(self.trial_regressors[:, :, 0], axis=0) > self.threshold

    def kept(self, regressors: np.ndarray) -> np.ndarray:
        """Which regressors carry signal: ``regressors`` shape (n_time, ...) -> bool, shape (...)."""
        return np.linalg.norm(regressors, axis=0) > self.threshold

    def own_group(self, trial: int) -> np.ndarray:
        """numpy.ndarray, shape (n_time, n_basis): the other trials of the trial's condition, summed."""
        return self._totals[:, self.trial_condition[trial]] - self.trial_regressors[:, trial]

    def group_columns(self, trial: int) -> np.ndarray:
        """numpy.ndarray, shape (n_time, n_groups): the model's group regressors, by condition
        then basis, those without signal left out."""
        blocks = []
        for c in range(self.n_conditions):
            group = self.own_group(trial) if c == self.trial_condition[trial] else self._totals[:, c]
            blocks.append(group[:, self.kept(group)])
        return np.concatenate(blocks, axis=1)

    def trial_design(self, trial: int) -> np.ndarray:
        """numpy.ndarray, shape (n_time, n_basis + n_groups + n_nuisance): the trial's model;
        its estimate is the coefficient of column 0."""
        return np.column_stack([self.trial_regressors[:, trial], self.group_columns(trial), self.nuisance])

    def n_columns(self, trial: int) -> int:
        """Columns of the trial's model (nilearn divides the residual sum of squares by
        ``n_time`` minus this)."""
        return self.n_basis + self.group_columns(trial).shape[1] + self.nuisance.shape[1]

    def common_design(self) -> np.ndarray:
        """numpy.ndarray, shape (n_time, n_common): the condition-level model of the same
        regressors (every condition's summed trials, those without signal left out, then the
        nuisance regressors). For a trial that :meth:`extends_common` the trial's model spans
        this model plus the trial's own regressors."""
        totals = self._totals.reshape(self._totals.shape[0], -1)
        return np.column_stack([totals[:, self.kept(totals)], self.nuisance])

    def added_basis(self, trial: int) -> np.ndarray:
        """numpy.ndarray of bool, shape (n_basis,): own regressors of the trial that add to the
        span of :meth:`common_design` (none for the only trial of its condition: its own
        regressors are its condition's)."""
        return np.any(self.own_group(trial) != 0, axis=0)

    def extends_common(self, trial: int) -> bool:
        """Whether the trial's model spans exactly :meth:`common_design` plus the trial's own
        regressors (always, unless a group regressor of its condition was left out for a signal
        at the threshold but not exactly zero; the closed-form solver fits the other trials as
        separate models)."""
        group = self.own_group(trial)
        total = self._totals[:, self.trial_condition[trial]]
        exact_zero = ~np.any(group != 0, axis=0)
        return bool(np.all(self.kept(total) & (self.kept(group) | exact_zero)))
