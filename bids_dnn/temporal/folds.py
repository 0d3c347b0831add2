"""Folds of trials for cross-validated distances and decoding over M/EEG epochs."""

from __future__ import annotations

import numpy as np

__all__ = ["trial_folds"]


def trial_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Assign every trial to one of ``n_folds`` folds, stratified by condition.

    Each condition's trials are shuffled (seeded) and dealt round-robin over the folds, the
    dealing starting where the previous condition's stopped, so folds get near-equal numbers of
    trials of every condition and near-equal sizes overall.

    Parameters
    ----------
    labels : numpy.ndarray, shape (n_trials,)
        Condition of each trial (any hashable values).
    n_folds : int
        Number of folds (>= 2).
    seed : int
        Seed of the shuffle.

    Returns
    -------
    numpy.ndarray of int, shape (n_trials,)
        Fold index (0 to n_folds - 1) of each trial.

    Raises
    ------
    ValueError
        ``n_folds`` < 2, or a condition with fewer trials than folds (a fold would lack it).
    """
    labels = np.asarray(labels)
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2 (got {n_folds})")
    conditions, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.size and counts.min() < n_folds:
        few = conditions[counts < n_folds]
        raise ValueError(f"{few.size} condition(s) have fewer trials than the {n_folds} folds "
                         f"(e.g. {few[0]!r}: {counts.min()} trial(s)); lower the number of folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(labels.shape[0], dtype=np.int64)
    start = 0
    for code in range(conditions.size):
        trials = rng.permutation(np.flatnonzero(codes == code))
        folds[trials] = (start + np.arange(trials.size)) % n_folds
        start = (start + trials.size) % n_folds
    return folds
