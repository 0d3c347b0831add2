"""Outer cross-validation folds over the stimuli of a participant, for every cross-validated
ridge of the spec (``analyses.encoding``, ``decoding``, ``probing``, ``drivers``): one rule, so a
stimulus is never in both the training and the test fold of any of them."""

from __future__ import annotations

from typing import Any

import numpy as np

from bids_dnn.errors import AnalysisError

__all__ = ["stimulus_folds"]


def stimulus_folds(section: Any, section_name: str, run_betas: np.ndarray, seed: int
                   ) -> tuple[str, list[tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
    """The outer folds a :class:`~bids_dnn.spec.CrossValidatedRidgeSpec` section asks for.

    Parameters
    ----------
    section : CrossValidatedRidgeSpec
        ``cv`` and ``n_folds`` are read.
    section_name : str
        ``analyses.<name>``, for messages.
    run_betas : numpy.ndarray, shape (n_runs, n_stimuli, n_voxels)
        NaN where a stimulus was not in a run (tells whether runs hold disjoint stimulus sets).
    seed : int
        Seed of the k-fold shuffle.

    Returns
    -------
    scheme : str
        ``leave_one_run_out`` or ``kfold``.
    folds : list of (train, test)
    groups : numpy.ndarray or None
        Run of each stimulus (leave-one-run-out), for inner folds grouped the same way.
    """
    from bids_dnn.encoding import make_folds, stimulus_runs

    groups = stimulus_runs(run_betas)  # None unless the runs show disjoint stimulus sets
    scheme = section.cv if section.cv != "auto" else ("leave_one_run_out" if groups is not None else "kfold")
    n_stimuli = run_betas.shape[1]
    if scheme == "leave_one_run_out":
        if groups is None:
            raise AnalysisError(f"{section_name}.cv: 'leave_one_run_out' needs runs with disjoint stimulus sets "
                                "(here runs repeat stimuli, so test stimuli would be trained on)",
                                "use cv: kfold (or auto)")
        return scheme, make_folds(n_stimuli, groups=groups), groups
    if section.n_folds > n_stimuli:
        raise AnalysisError(f"{section_name}.n_folds ({section.n_folds}) exceeds the number of stimuli ({n_stimuli})")
    return scheme, make_folds(n_stimuli, n_folds=section.n_folds, seed=seed), None
