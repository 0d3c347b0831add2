"""Time-resolved RSA on RDM stacks: model time courses with permutation tests, temporal
generalisation, noise ceilings and variance partitioning over time.

Pure functions on arrays. A brain RDM stack is ``(n_times, n_pairs)`` (one RDM per time point,
pairs in :func:`bids_dnn.rsa.pair_indices` order); model RDMs are ``(n_models, n_pairs)``. Every
comparison is :func:`bids_dnn.rsa.compare_rdms` with one of
:data:`bids_dnn.rsa.COMPARISON_MEASURE_NAMES`; this module adds the time dimension only.

Conventions
-----------
Permutation test over time (:func:`rsa_time_course`)
    Stimulus labels are permuted as in :func:`bids_dnn.rsa.permutation_test` (rows and columns
    of the square RDM together), and the *same* permutations serve every time point: the null
    time course of one permutation is the model, relabelled once, compared with every time
    point's RDM, so the null keeps the temporal autocorrelation of the data. Uncorrected
    one-sided p per time point ``p = (1 + #{null_t >= observed_t - atol}) / (1 + n_perm)``;
    family-wise over the time points of one model (max statistic): ``null_max`` is the
    NaN-ignoring maximum over time of each permutation's null time course and
    ``p_fwe_t = (1 + #{null_max >= observed_t - atol}) / (1 + n_perm)``. Models are corrected
    separately (each model's time course is its own family); p-values are NaN where the
    score is NaN (constant RDM at that time point).
Temporal generalisation (:func:`temporal_generalization`)
    Entry ``[t1, t2]`` compares the RDM at ``t1`` with the RDM at ``t2`` (RDM-based temporal
    generalisation, as rsatoolbox / Net2Brain): symmetric, 1 on the diagonal for correlation
    measures. :func:`temporal_generalization_between` compares two stacks (two subjects, two
    sets of trials, two conditions): ``[t1, t2]`` is ``a`` at ``t1`` against ``b`` at ``t2``.
Noise ceiling (:func:`noise_ceiling_over_time`)
    :func:`bids_dnn.rsa.noise_ceiling` at every time point (lower: each subject vs the pooled
    other subjects, upper: vs all subjects, measure-aware pooling; equal to rsatoolbox
    ``boot_noise_ceiling``). Called once per time point: a batched version over all time
    points was measured no faster (20 subjects x 200 times x 92 conditions: about 4 s for
    ``spearman``, dominated by ranking, 0.3 s for ``pearson``, on one CPU core).
Variance partitioning (:func:`variance_partitioning_over_time`)
    :func:`bids_dnn.rsa.rdm_variance_partitioning` with the time points as its data rows (one
    regression per time point, the predictors shared).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bids_dnn.rsa.compare import COMPARISON_MEASURES, compare_rdms, transform_for_measure
from bids_dnn.rsa.inference import noise_ceiling, permutation_indices, permutation_test
from bids_dnn.rsa.measures import LINEAR_MEASURES
from bids_dnn.rsa.rdm import as_rdm_rows, n_cond_from_pairs
from bids_dnn.rsa.weighted import VariancePartition, rdm_variance_partitioning

__all__ = [
    "TimeCourseResult",
    "rsa_time_course",
    "temporal_generalization",
    "temporal_generalization_between",
    "noise_ceiling_over_time",
    "variance_partitioning_over_time",
]

_NULL_BYTES = 256 * 2**20  # working memory of one block of models' null time courses


@dataclass(frozen=True)
class TimeCourseResult:
    """Outcome of :func:`rsa_time_course`.

    Attributes
    ----------
    scores : numpy.ndarray, shape (n_models, n_times)
        Similarity of each model RDM with each time point's brain RDM (signed).
    measure : str
        The comparison measure.
    n_permutations : int
        Number of stimulus-label permutations (0: no test).
    p_values : numpy.ndarray, shape (n_models, n_times), or None
        Uncorrected one-sided permutation p per time point (None without permutations).
    p_values_fwe : numpy.ndarray, shape (n_models, n_times), or None
        p corrected family-wise over the time points of each model (max over time).
    null_max : numpy.ndarray, shape (n_models, n_permutations), or None
        Maximum over time of each permutation's null time course (NaN-ignoring).
    """

    scores: np.ndarray
    measure: str
    n_permutations: int = 0
    p_values: np.ndarray | None = None
    p_values_fwe: np.ndarray | None = None
    null_max: np.ndarray | None = None


def _check_measure(measure: str) -> None:
    if measure not in COMPARISON_MEASURES:
        raise ValueError(f"unknown comparison measure {measure!r}; choose from {sorted(COMPARISON_MEASURES)}")


def _rdm_stack(brain: np.ndarray, name: str = "brain") -> np.ndarray:
    """A finite float64 ``(n_times, n_pairs)`` stack (2-D only: one row per time point)."""
    if np.ndim(brain) != 2:
        raise ValueError(f"{name} must be an RDM stack (n_times, n_pairs), got shape {np.shape(brain)}")
    return as_rdm_rows(brain, name)


def rsa_time_course(brain: np.ndarray, models: np.ndarray, *, measure: str = "spearman",
                    n_permutations: int = 0, rng: np.random.Generator | None = None,
                    permutations: np.ndarray | None = None, atol: float = 1e-12) -> TimeCourseResult:
    """Similarity of model RDMs with a brain RDM at every time point, with a permutation test.

    Parameters
    ----------
    brain : numpy.ndarray, shape (n_times, n_pairs)
        One subject's brain RDM per time point.
    models : numpy.ndarray, shape (n_models, n_pairs) or (n_pairs,)
        Model RDMs (e.g. one per layer).
    measure : str
        A comparison measure (:data:`bids_dnn.rsa.COMPARISON_MEASURE_NAMES`).
    n_permutations : int
        Stimulus-label permutations drawn from ``rng``
        (:func:`bids_dnn.rsa.permutation_indices`); 0: scores only.
    rng : numpy.random.Generator, optional
        Source of the permutations (required when ``n_permutations > 0`` and ``permutations``
        is not given).
    permutations : numpy.ndarray of int, shape (n_permutations, n_conditions), optional
        Explicit permutations instead of ``rng`` / ``n_permutations`` (e.g. the same ones for
        every subject).
    atol : float
        Tolerance of the ``null >= observed`` comparisons.

    Returns
    -------
    TimeCourseResult
        ``scores`` (n_models, n_times); with permutations also ``p_values``, ``p_values_fwe``
        (family-wise over time, per model) and ``null_max`` (see the module docstring).

    Raises
    ------
    ValueError
        Unknown measure, non-finite RDMs, different numbers of pairs, or no source of
        permutations.
    """
    _check_measure(measure)
    brain = _rdm_stack(brain)
    models = as_rdm_rows(models, "models")
    if models.shape[1] != brain.shape[1]:
        raise ValueError(f"models have {models.shape[1]} pairs, the brain RDMs {brain.shape[1]}")
    if permutations is None and n_permutations <= 0:
        return TimeCourseResult(compare_rdms(models, brain, measure), measure)
    n_cond = n_cond_from_pairs(brain.shape[1])
    if permutations is None:
        if rng is None:
            raise ValueError("pass rng (a numpy Generator) or explicit permutations for the permutation test")
        permutations = permutation_indices(n_cond, n_permutations, rng)
    permutations = np.atleast_2d(np.asarray(permutations, dtype=np.int64))
    n_times, n_models, n_perm = brain.shape[0], models.shape[0], permutations.shape[0]
    scores = np.empty((n_models, n_times))
    p_values = np.empty((n_models, n_times))
    p_fwe = np.empty((n_models, n_times))
    null_max = np.empty((n_models, n_perm))
    block = max(1, _NULL_BYTES // (8 * n_times * max(n_perm, 1)))
    for m0 in range(0, n_models, block):
        part = slice(m0, min(m0 + block, n_models))
        # the time points are the data rows: every row sees the same permutations
        result = permutation_test(brain, models[part], measure, permutations=permutations, return_null=True,
                                  atol=atol)
        scores[part] = result.observed.T
        p_values[part] = result.p_values.T
        null_max[part] = np.fmax.reduce(result.null, axis=0)  # (models, n_perm): max over time
    sorted_max = np.sort(null_max, axis=1)  # NaNs (all time points NaN) sort last and never count
    for m in range(n_models):
        finite = int(np.count_nonzero(~np.isnan(sorted_max[m])))
        n_ge = finite - np.searchsorted(sorted_max[m, :finite], scores[m] - atol, side="left")
        p_fwe[m] = (1.0 + n_ge) / (1.0 + n_perm)
    p_fwe[np.isnan(scores)] = np.nan
    return TimeCourseResult(scores, measure, n_perm, p_values, p_fwe, null_max)


def temporal_generalization(brain: np.ndarray, *, measure: str = "pearson") -> np.ndarray:
    """RDM-based temporal generalisation: every time point's RDM against every other's.

    Parameters
    ----------
    brain : numpy.ndarray, shape (n_times, n_pairs)
    measure : str
        A comparison measure (:data:`bids_dnn.rsa.COMPARISON_MEASURE_NAMES`).

    Returns
    -------
    numpy.ndarray, shape (n_times, n_times)
        ``[t1, t2]``: similarity of the RDMs at ``t1`` and ``t2`` (symmetric; NaN rows and
        columns where an RDM is constant, for the measures that are undefined there).
    """
    _check_measure(measure)
    brain = _rdm_stack(brain)
    if measure in LINEAR_MEASURES:  # transform once; x @ x.T is exactly symmetric
        transformed = transform_for_measure(brain, measure)
        return transformed @ transformed.T
    return compare_rdms(brain, brain, measure)


def temporal_generalization_between(brain_a: np.ndarray, brain_b: np.ndarray, *,
                                    measure: str = "pearson") -> np.ndarray:
    """Temporal generalisation between two RDM stacks (two subjects, conditions or trial sets).

    Parameters
    ----------
    brain_a : numpy.ndarray, shape (n_times_a, n_pairs)
    brain_b : numpy.ndarray, shape (n_times_b, n_pairs)
    measure : str
        A comparison measure (:data:`bids_dnn.rsa.COMPARISON_MEASURE_NAMES`).

    Returns
    -------
    numpy.ndarray, shape (n_times_a, n_times_b)
        ``[t1, t2]``: similarity of ``brain_a`` at ``t1`` with ``brain_b`` at ``t2``.
    """
    _check_measure(measure)
    return compare_rdms(_rdm_stack(brain_a, "brain_a"), _rdm_stack(brain_b, "brain_b"), measure)


def noise_ceiling_over_time(brains: np.ndarray, *, measure: str = "spearman", per_subject: bool = False
                            ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper noise ceiling at every time point.

    Parameters
    ----------
    brains : numpy.ndarray, shape (n_subjects, n_times, n_pairs)
        Every subject's RDM stack (n_subjects >= 2, same time points).
    measure : str
        A comparison measure (:data:`bids_dnn.rsa.COMPARISON_MEASURE_NAMES`).
    per_subject : bool
        Also return every subject's values.

    Returns
    -------
    lower, upper : numpy.ndarray, shape (n_times,)
        Means over subjects (:func:`bids_dnn.rsa.noise_ceiling` per time point).
    lower_per_subject, upper_per_subject : numpy.ndarray, shape (n_subjects, n_times)
        Only with ``per_subject``.
    """
    _check_measure(measure)
    brains = np.asarray(brains, dtype=np.float64)
    if brains.ndim != 3 or brains.shape[0] < 2:
        raise ValueError(f"brains must be (n_subjects >= 2, n_times, n_pairs), got shape {brains.shape}")
    n_subjects, n_times = brains.shape[:2]
    lower = np.empty(n_times)
    upper = np.empty(n_times)
    lower_each = np.empty((n_subjects, n_times))
    upper_each = np.empty((n_subjects, n_times))
    for t in range(n_times):
        lower[t], upper[t], lower_each[:, t], upper_each[:, t] = noise_ceiling(brains[:, t], measure,
                                                                                per_subject=True)
    if per_subject:
        return lower, upper, lower_each, upper_each
    return lower, upper


def variance_partitioning_over_time(brain: np.ndarray, predictor_groups: Mapping[str, np.ndarray], *,
                                    method: str = "ols") -> VariancePartition:
    """Unique and shared variance of the brain RDM explained by groups of predictor RDMs, per time point.

    Parameters
    ----------
    brain : numpy.ndarray, shape (n_times, n_pairs)
    predictor_groups : Mapping of str -> numpy.ndarray, each (n_k, n_pairs) or (n_pairs,)
        2 to 4 named groups of model RDMs (see :func:`bids_dnn.rsa.rdm_variance_partitioning`).
    method : {"ols", "nnls"}

    Returns
    -------
    VariancePartition
        ``r2`` per union of groups and ``components``, each of shape (n_times,).
    """
    return rdm_variance_partitioning(predictor_groups, _rdm_stack(brain), method=method)
