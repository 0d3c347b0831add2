"""Cross-validation folds of the encoding models: outer folds, their checks, inner folds.

Pure functions on arrays; no BIDS, no files, no printing. Warnings are raised through
:mod:`warnings` only.

Conventions
-----------
Outer folds
    :func:`make_folds` builds them (grouped by run where runs exist, see
    :func:`stimulus_runs`); every sample is in at most one test fold (:func:`check_folds`).
Inner folds
    :func:`inner_folds_for` splits one outer fold's training samples (grouped as the outer
    folds when groups are given). They are seeded with ``SeedSequence([seed, outer_fold])``:
    equal inputs and seeds give equal folds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["Folds", "make_folds", "check_folds", "inner_folds_for", "stimulus_runs"]

#: outer or inner folds: (train, test) index arrays
Folds = Sequence[tuple[np.ndarray, np.ndarray]]


def make_folds(n_samples: int, *, groups: np.ndarray | None = None, n_folds: int | None = None,
               seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds; every sample is in exactly one test fold.

    Parameters
    ----------
    n_samples : int
        Number of samples (stimuli).
    groups : numpy.ndarray, shape (n_samples,), optional
        Group label of each sample (e.g. its run). Given: leave-one-group-out (folds in
        sorted label order) when ``n_folds`` is None or at least the number of groups;
        otherwise the groups are dealt into ``n_folds`` folds (seeded shuffle of the groups,
        then each group goes to the fold with the fewest samples so far), so a group is
        never split between training and test.
    n_folds : int, optional
        Number of folds. Without groups: shuffled K-fold (default 5; fold sizes differ by at
        most one, the first ``n_samples % n_folds`` folds being larger).
    seed : int
        Seed of the shuffles.

    Returns
    -------
    list of (train, test)
        Sorted integer index arrays.

    Raises
    ------
    ValueError
        Fewer than 2 folds / groups, more folds than samples, or wrong ``groups`` length.
    """
    n_samples = int(n_samples)
    rng = np.random.default_rng(seed)
    if groups is None:
        k = 5 if n_folds is None else int(n_folds)
        if not 2 <= k <= n_samples:
            raise ValueError(f"n_folds must be in [2, n_samples={n_samples}], got {k}")
        tests = np.array_split(rng.permutation(n_samples), k)
    else:
        groups = np.asarray(groups)
        if groups.shape != (n_samples,):
            raise ValueError(f"groups must have shape ({n_samples},), got {groups.shape}")
        labels, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        if labels.size < 2:
            raise ValueError("grouped folds need at least 2 distinct groups")
        if n_folds is None or int(n_folds) >= labels.size:
            tests = [np.flatnonzero(inverse == g) for g in range(labels.size)]
        else:
            k = int(n_folds)
            if k < 2:
                raise ValueError(f"n_folds must be >= 2, got {k}")
            order = rng.permutation(labels.size)
            order = order[np.argsort(-counts[order], kind="stable")]  # large groups first
            load = np.zeros(k, dtype=np.int64)
            fold_of = np.empty(labels.size, dtype=np.int64)
            for g in order:
                f = int(np.argmin(load))
                fold_of[g] = f
                load[f] += counts[g]
            tests = [np.flatnonzero(fold_of[inverse] == f) for f in range(k)]
    everything = np.arange(n_samples)
    return [(np.setdiff1d(everything, t), np.sort(t)) for t in tests]


def check_folds(folds: Folds, n_samples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate outer folds: integer indices in range, train and test disjoint, test folds
    pairwise disjoint, non-empty training and test sets.

    Parameters
    ----------
    folds : sequence of (train, test)
        Index arrays (boolean masks are accepted too).
    n_samples : int
        Number of samples.

    Returns
    -------
    list of (train, test)
        Sorted int64 index arrays.
    """
    out = []
    tested = np.zeros(n_samples, dtype=bool)
    if len(folds) == 0:
        raise ValueError("no folds given")
    for k, (train, test) in enumerate(folds):
        pair = []
        for idx in (train, test):
            idx = np.asarray(idx)
            if idx.dtype == bool:
                if idx.shape != (n_samples,):
                    raise ValueError(f"fold {k}: boolean mask of wrong length")
                idx = np.flatnonzero(idx)
            idx = np.unique(idx.astype(np.int64))
            if idx.size and (idx[0] < 0 or idx[-1] >= n_samples):
                raise ValueError(f"fold {k}: index out of range [0, {n_samples})")
            pair.append(idx)
        train, test = pair
        if train.size < 2 or test.size < 1:
            raise ValueError(f"fold {k}: needs >= 2 training and >= 1 test samples")
        if np.intersect1d(train, test).size:
            raise ValueError(f"fold {k}: training and test samples overlap")
        if tested[test].any():
            raise ValueError(f"fold {k}: test samples already in an earlier test fold")
        tested[test] = True
        out.append((train, test))
    return out


def inner_folds_for(train: np.ndarray, *, inner_folds: int = 5, inner_groups: np.ndarray | None = None,
                    seed: int = 0, outer_fold: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inner folds that :func:`cross_validated_ridge` uses inside one outer fold.

    Parameters
    ----------
    train : numpy.ndarray, shape (n_train,)
        Outer training indices.
    inner_folds : int
        Number of inner folds.
    inner_groups : numpy.ndarray, shape (n_samples,), optional
        Group of every sample (indexed with ``train``); grouped as :func:`make_folds`.
        When the training samples hold a single group, plain shuffled K-fold is used (with a
        warning).
    seed, outer_fold : int
        The inner shuffle is seeded with ``SeedSequence([seed, outer_fold])``.

    Returns
    -------
    list of (train, validation)
        *Positions* into ``train`` (0 .. n_train - 1).
    """
    n_train = len(train)
    inner_seed = int(np.random.SeedSequence([int(seed), int(outer_fold)]).generate_state(1)[0])
    if inner_groups is not None:
        g = np.asarray(inner_groups)[np.asarray(train)]
        if np.unique(g).size >= 2:
            return make_folds(n_train, groups=g, n_folds=inner_folds, seed=inner_seed)
        warnings.warn(f"outer fold {outer_fold}: the training samples hold one group only; inner "
                      "cross-validation falls back to shuffled K-fold", UserWarning, stacklevel=3)
    return make_folds(n_train, n_folds=min(int(inner_folds), n_train), seed=inner_seed)



def stimulus_runs(run_betas: np.ndarray) -> np.ndarray | None:
    """The run of each stimulus, when the runs show disjoint stimulus sets.

    A stimulus is shown in a run when its estimates there are finite in every voxel. Grouped
    (leave-one-run-out) folds never put a stimulus in the training and the test set of the
    same split only when every stimulus is shown in exactly one run.

    Parameters
    ----------
    run_betas : numpy.ndarray, shape (n_runs, n_stimuli, n_voxels)
        Per-run estimates; NaN where a run does not show a stimulus.

    Returns
    -------
    numpy.ndarray, shape (n_stimuli,) int64, or None
        Index of the run showing each stimulus (the group labels for :func:`make_folds`);
        None with fewer than 2 runs, without voxels, or when a stimulus is shown in no run or
        in several runs.
    """
    run_betas = np.asarray(run_betas)
    if run_betas.ndim != 3:
        raise ValueError(f"run_betas must be (n_runs, n_stimuli, n_voxels), got shape {run_betas.shape}")
    shown = np.isfinite(run_betas).all(axis=2) if run_betas.shape[2] else np.zeros(run_betas.shape[:2], bool)
    if run_betas.shape[0] < 2 or not bool((shown.sum(axis=0) == 1).all()):
        return None
    return shown.argmax(axis=0)
