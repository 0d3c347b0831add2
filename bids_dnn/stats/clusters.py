"""Group tests over time: cluster-based and max-T sign-flip permutation tests of one-sample t maps.

M/EEG analyses give one time course (``(n_times,)``, e.g. an RSA time course of one model
layer) or one temporal-generalisation matrix (``(n_times, n_times)``) per subject. Stacked,
they are ``x`` of shape ``(n_subjects, *shape)`` and are tested against 0 at every element
while controlling the family-wise error over all elements. This module is pure math: numpy and
scipy, no files, no MNE (MNE is the reference of its tests).

Statistic
    One-sample t per element, ``t = mean / sqrt(var / n)`` with the ddof=1 variance
    (``mne.stats.ttest_1samp_no_p`` with ``sigma=0``). An element that is constant across
    subjects has t = +-inf (NaN when all zero), as in MNE; in the sign-flipped maps such an
    element has t = 0, as MNE's permutation loop computes it.
Tails (``TAILS``)
    ``"greater"`` (MNE ``tail=1``), ``"less"`` (``tail=-1``), ``"two-sided"`` (``tail=0``).
Cluster test (:func:`cluster_test_1samp`; Maris & Oostenveld 2007), exactly as
``mne.stats.permutation_cluster_1samp_test(x, threshold, n_permutations, tail, out_type="mask")``
    * cluster-forming threshold: ``threshold`` or, when None, ``-scipy.stats.t.ppf(p, n - 1)``
      with ``p = p_threshold`` (one-sided) or ``p_threshold / 2`` (two-sided), negated for
      ``"less"`` (MNE's automatic threshold with 0.05 replaced by ``p_threshold``).
    * clusters: connected elements with ``t > threshold`` (``"greater"``), ``t < threshold``
      (``"less"``; the threshold is negative) or, two-sided, positive (``t > thr``) and
      negative (``t < -thr``) clusters separately. Connectivity (``CLUSTER_ADJACENCIES``):
      ``"lattice"`` = neighbouring samples in 1-D, the 4-neighbour (face) lattice in 2-D (MNE's
      default ``adjacency=None``, ``scipy.ndimage.label``); ``"lattice_diagonal"`` also joins
      diagonal neighbours (8-neighbour in 2-D). Clusters are listed as MNE lists them: positive
      clusters in raster order of their first element, then negative ones.
    * cluster statistic: the sum of t over the cluster (MNE ``t_power=1``).
    * null distribution: one value per sign flip (row of the flip matrix), the cluster
      statistic of largest magnitude of the flipped t map, signed (a positive cluster wins a
      tie), 0 when the flipped map has no cluster. Row 0 is the identity; its value is MNE's
      ``orig``: the largest observed statistic (``"greater"``), the smallest (``"less"``) or
      the largest ``|statistic|`` (``"two-sided"``).
    * p-value of a cluster with statistic ``s``: ``#{k : null_k >= s} / N`` (``"greater"``),
      ``#{k : null_k <= s} / N`` (``"less"``), ``#{k : |null_k| >= |s|} / N``
      (``"two-sided"``), N = number of flips with the identity; ties are counted with a
      relative tolerance of 1e-10 so that a flip reproducing the observed map counts.
    * If the observed map has no cluster, no permutation is run: the result has no clusters,
      an empty null distribution and ``n_permutations == 0`` (MNE returns empty arrays).
Sign flips (:func:`one_sample_sign_flips`)
    Row 0 is the identity. Exact enumeration, as MNE decides it, when
    ``2 ** (n_subjects - two_sided) <= n_permutations``: one-sided tests use all ``2 ** n``
    sign vectors once; two-sided tests the ``2 ** (n - 1)`` vectors with subject 0 not flipped
    (a flip and its negation give the same two-sided statistic, so this is the full exact test
    with every value counted once instead of twice; it is MNE's set of flips up to the sign of
    each row). Otherwise ``n_permutations`` rows: the identity and ``n_permutations - 1``
    independent uniform draws (with replacement, :func:`bids_dnn.stats.maps.sign_flip_matrix`).
    MNE instead draws without replacement; the p-values agree within Monte-Carlo error.
    **One difference from MNE, in the exact one-sided test** (checked with MNE 1.13): MNE
    leaves out the flip it takes for the identity, but with its sign convention that row is
    the full negation, so MNE counts the identity twice and the full negation never. Here every
    sign vector counts once (the textbook exact test). For a cluster with statistic ``s``
    below the largest observed one, MNE's p is larger by ``1 / N`` when the negated data's
    largest cluster does not reach ``s``, and equal otherwise; for the largest cluster MNE's
    second copy of the identity is computed by another formula and counts or not by rounding.
    Passing MNE's set as ``flips`` reproduces MNE's null distribution element by element.
Max-T (:func:`max_t_1samp`)
    The max-statistic sign-flip correction of :func:`bids_dnn.stats.maps.group_one_sample_map`
    (Nichols & Holmes 2002) on the flattened elements: ``p = #{k : max_u s_k[u] >= s_obs} / N``
    with ``s = t`` (``"greater"``), ``-t`` (``"less"``) or ``|t|`` (``"two-sided"``), with the
    flips of :func:`one_sample_sign_flips`. Two-sided, this is ``mne.stats.permutation_t_test``;
    for one-sided tests MNE compares with the maximum of ``|t|`` instead (more conservative).
FDR
    Use :func:`bids_dnn.stats.correction.fdr_bh` on parametric p-values (e.g. ``p_t`` of
    :func:`bids_dnn.stats.group_tests.one_sample_tests` on ``x.reshape(n_subjects, -1)``).

The flipped t maps are computed for a block of flips at once (one matrix product; the sum of
squares does not change under sign flips), and the clusters of the whole block are found at
once: 1-D runs from the edges of the supra-threshold mask, N-D labels from one
``scipy.ndimage.label`` call on the stack of maps with a structure that joins no two maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats
from scipy import ndimage

from bids_dnn.stats.maps import group_one_sample_map, sign_flip_matrix

__all__ = [
    "TAILS",
    "CLUSTER_ADJACENCIES",
    "ClusterTestResult",
    "one_sample_sign_flips",
    "cluster_test_1samp",
    "max_t_1samp",
]

_MAX_CHUNK_ELEMENTS = 2 ** 22  # ~32 MB of float64 per (flips x elements) block
_TIE_RTOL = 1e-10


@dataclass(frozen=True)
class _Tail:
    """How a tail forms clusters: the signs of t whose clusters count (+1: t above the
    threshold, -1: t below minus its magnitude), and MNE's code for it."""

    directions: tuple[int, ...]
    mne_code: int


#: tail name -> how it forms clusters; the names are the ``tail`` values of this module
TAILS: dict[str, _Tail] = {
    "greater": _Tail((1,), 1),
    "two-sided": _Tail((1, -1), 0),
    "less": _Tail((-1,), -1),
}

#: adjacency name -> ``connectivity`` of ``scipy.ndimage.generate_binary_structure`` (None: the
#: number of dimensions, i.e. diagonal neighbours too); "lattice" is MNE's default lattice
CLUSTER_ADJACENCIES: dict[str, int | None] = {
    "lattice": 1,
    "lattice_diagonal": None,
}


@dataclass(frozen=True)
class ClusterTestResult:
    """Outcome of :func:`cluster_test_1samp`.

    Attributes
    ----------
    t_obs : np.ndarray, shape
        One-sample t of every element.
    clusters : list of np.ndarray of bool, each of the data's shape
        The observed clusters (MNE's order: positive clusters, then negative ones).
    cluster_stats : np.ndarray, (n_clusters,)
        Sum of t over each cluster (negative for negative clusters).
    p_values : np.ndarray, (n_clusters,)
        Family-wise corrected p of each cluster (module docstring).
    null_distribution : np.ndarray, (n_permutations,)
        Signed cluster statistic of largest magnitude per flip, row 0 the observed data
        (MNE's ``H0``); empty when there is no observed cluster.
    n_permutations : int
        Number of flips N, the identity included; 0 when there is no observed cluster.
    exact : bool
        Whether the flips enumerated every sign vector (two-sided: every pair of opposite ones);
        False when explicit ``flips`` were given.
    threshold : float
        Cluster-forming t threshold used (negative for ``"less"``).
    tail : str
        ``"greater"``, ``"two-sided"`` or ``"less"``.
    cluster_starts, cluster_stops : np.ndarray of int, (n_clusters,), or None
        For 1-D data: cluster ``k`` covers samples ``cluster_starts[k]:cluster_stops[k]``
        (stop exclusive); None for N-D data.
    """

    t_obs: np.ndarray
    clusters: list[np.ndarray]
    cluster_stats: np.ndarray
    p_values: np.ndarray
    null_distribution: np.ndarray
    n_permutations: int
    exact: bool
    threshold: float
    tail: str
    cluster_starts: np.ndarray | None = None
    cluster_stops: np.ndarray | None = None

    def significant_mask(self, alpha: float = 0.05) -> np.ndarray:
        """Elements in a cluster with ``p <= alpha``.

        Parameters
        ----------
        alpha : float
            Family-wise error level.

        Returns
        -------
        np.ndarray of bool, shape of ``t_obs``
        """
        mask = np.zeros(self.t_obs.shape, dtype=bool)
        for cluster, p in zip(self.clusters, self.p_values):
            if p <= alpha:
                mask |= cluster
        return mask


# --------------------------------------------------------------------------- sign flips
def one_sample_sign_flips(n_subjects: int, n_permutations: int, *, two_sided: bool,
                          rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Sign flips of a one-sample permutation test, exact when MNE would enumerate them.

    Parameters
    ----------
    n_subjects : int
        At least 2.
    n_permutations : int
        Number of flips wanted, the identity included (at least 1).
    two_sided : bool
        A two-sided test: exact enumeration needs only one of each pair of opposite flips.
    rng : np.random.Generator
        Used (advanced) only when the flips are drawn at random.

    Returns
    -------
    flips : np.ndarray of float64, (N, n_subjects), entries +1 / -1
        Row 0 is the identity. Exact (``2 ** (n_subjects - two_sided) <= n_permutations``):
        every sign vector once (``N = 2 ** n_subjects``), or, two-sided, every one with
        subject 0 not flipped (``N = 2 ** (n_subjects - 1)``). Otherwise ``N = n_permutations``
        and rows 1..N-1 are independent uniform draws (with replacement).
    exact : bool
        Whether the flips were enumerated.
    """
    n_subjects, n_permutations = int(n_subjects), int(n_permutations)
    if n_subjects < 2 or n_permutations < 1:
        raise ValueError(f"need n_subjects >= 2 and n_permutations >= 1, got {n_subjects} and "
                         f"{n_permutations}")
    n_free = n_subjects - 1 if two_sided else n_subjects
    if n_free < 63 and 2 ** n_free <= n_permutations:
        free = sign_flip_matrix(n_free, 2 ** n_free)
        if two_sided:
            return np.hstack([np.ones((free.shape[0], 1)), free]), True
        return free, True
    return sign_flip_matrix(n_subjects, n_permutations, rng), False


def _generator(rng: np.random.Generator | int | None, seed: int | None) -> np.random.Generator:
    """``rng`` (a Generator is used as is, an int seeds one) or a Generator seeded with ``seed``
    (0 when both are None, so results are reproducible by default)."""
    if rng is not None and seed is not None:
        raise ValueError("give rng or seed, not both")
    return np.random.default_rng(rng if rng is not None else (0 if seed is None else seed))


def _checked_flips(flips: np.ndarray, n_subjects: int) -> np.ndarray:
    flips = np.asarray(flips, dtype=np.float64)
    if flips.ndim != 2 or flips.shape[1] != n_subjects or flips.shape[0] < 1 \
            or not np.all(np.abs(flips) == 1):
        raise ValueError(f"flips must be (N, {n_subjects}) of +1 / -1 with N >= 1, got shape "
                         f"{flips.shape}")
    if not np.all(flips[0] == 1):
        raise ValueError("the first row of flips must be the identity (all +1)")
    return flips


def _subject_data(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"x must be (n_subjects, *shape), e.g. (n_subjects, n_times), got shape "
                         f"{x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"a group test needs at least 2 subjects, got {x.shape[0]}")
    if x[0].size == 0:
        raise ValueError(f"x has no elements to test, shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinite values; impute or drop them before testing")
    return x


def _tail(tail: str) -> _Tail:
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {list(TAILS)}, got {tail!r}")
    return TAILS[tail]


# --------------------------------------------------------------------------- clusters
def _stack_structure(ndim: int, adjacency: str) -> np.ndarray:
    """``ndimage.label`` structure for a stack of ``ndim``-D maps (axis 0): neighbours within
    one map only."""
    if adjacency not in CLUSTER_ADJACENCIES:
        raise ValueError(f"adjacency must be one of {list(CLUSTER_ADJACENCIES)}, got {adjacency!r}")
    connectivity = CLUSTER_ADJACENCIES[adjacency]
    base = ndimage.generate_binary_structure(ndim, ndim if connectivity is None else connectivity)
    return np.stack([np.zeros_like(base), base, np.zeros_like(base)])


def _largest_run_sums(t: np.ndarray, supra: np.ndarray, direction: int) -> np.ndarray:
    """(B,) largest ``direction * sum`` over the runs of ``supra`` in each row of (B, T)
    ``t``; -inf for a row without a run."""
    n_rows, n_times = supra.shape
    edges = np.zeros((n_rows, n_times + 2), dtype=np.int8)
    edges[:, 1:-1] = supra
    change = np.diff(edges, axis=1)
    rows, starts = np.nonzero(change == 1)
    _, stops = np.nonzero(change == -1)  # row-major order: pairs with the starts
    best = np.full(n_rows, -np.inf)
    if rows.size:
        bounds = np.empty(2 * rows.size, dtype=np.int64)
        bounds[0::2] = rows * n_times + starts
        bounds[1::2] = rows * n_times + stops  # <= n_rows * n_times: the appended 0 is valid
        sums = np.add.reduceat(np.append(t.ravel(), 0.0), bounds)[0::2]
        np.maximum.at(best, rows, direction * sums)
    return best


def _largest_label_sums(t: np.ndarray, supra: np.ndarray, direction: int,
                        structure: np.ndarray) -> np.ndarray:
    """(B,) largest ``direction * sum`` over the clusters of ``supra`` in each map of the stack
    (B, *shape) ``t``; -inf for a map without a cluster."""
    n_maps = t.shape[0]
    labels, n_labels = ndimage.label(supra, structure=structure)
    best = np.full(n_maps, -np.inf)
    if n_labels:
        where = np.flatnonzero(labels)  # supra-threshold elements only
        label_of = labels.ravel()[where]
        sums = np.bincount(label_of, weights=t.ravel()[where], minlength=n_labels + 1)
        map_of_label = np.zeros(n_labels + 1, dtype=np.int64)
        map_of_label[label_of] = where // t[0].size
        np.maximum.at(best, map_of_label[1:], direction * sums[1:])
    return best


def _null_cluster_stats(t: np.ndarray, cutoff: float, tail: _Tail, structure: np.ndarray
                        ) -> np.ndarray:
    """(B,) signed cluster statistic of largest magnitude of each map of the stack (B, *shape)
    (positive wins a tie, as MNE's argmax over [positive sums, negative sums]); 0 when a map
    has no cluster."""
    out = np.zeros(t.shape[0])
    winner = np.full(t.shape[0], -np.inf)
    for direction in tail.directions:
        supra = direction * t > cutoff
        if t.ndim == 2:
            best = _largest_run_sums(t, supra, direction)
        else:
            best = _largest_label_sums(t, supra, direction, structure)
        wins = best > winner
        out[wins] = direction * best[wins]
        winner = np.maximum(winner, best)
    return out


def _observed_clusters(t_obs: np.ndarray, cutoff: float, tail: _Tail, structure: np.ndarray
                       ) -> tuple[list[np.ndarray], np.ndarray]:
    """Cluster masks and sums of the observed t map, in MNE's order."""
    clusters: list[np.ndarray] = []
    stats: list[float] = []
    for direction in tail.directions:
        labels, n_labels = ndimage.label(direction * t_obs > cutoff, structure=structure[1])
        for label in range(1, n_labels + 1):
            mask = labels == label
            clusters.append(mask)
            stats.append(float(np.sum(t_obs[mask])))
    return clusters, np.asarray(stats, dtype=np.float64)


def _observed_t(x: np.ndarray) -> np.ndarray:
    """``mean / sqrt(var_ddof1 / n)`` per element, as ``mne.stats.ttest_1samp_no_p``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(x, axis=0) / np.sqrt(np.var(x, axis=0, ddof=1) / x.shape[0])


def _flipped_t(flips: np.ndarray, x_flat: np.ndarray, sum_sq: np.ndarray) -> np.ndarray:
    """(B, n_elements) t of the flipped data, 0 where the flipped variance is 0 (as MNE)."""
    n = x_flat.shape[0]
    mean = (flips @ x_flat) / n
    denom_sq = np.maximum(sum_sq - n * mean * mean, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / np.sqrt(denom_sq) * np.sqrt(n * (n - 1.0))
    t[denom_sq <= 0] = 0.0
    return t


def _cluster_p_values(stats: np.ndarray, null: np.ndarray, tail: str) -> np.ndarray:
    """MNE's ``_pval_from_histogram`` with a relative tie tolerance."""
    oriented = {"greater": 1.0, "less": -1.0}
    if tail in oriented:
        observed, reference = oriented[tail] * stats, oriented[tail] * null
    else:
        observed, reference = np.abs(stats), np.abs(null)
    reference = np.sort(reference)
    tol = _TIE_RTOL * np.maximum(1.0, np.abs(observed))
    tol[~np.isfinite(tol)] = 0.0  # an infinite cluster sum (constant element) ties exactly
    count = reference.size - np.searchsorted(reference, observed - tol, side="left")
    return count / reference.size


def _cluster_threshold(threshold: float | None, p_threshold: float, n_subjects: int,
                       tail: _Tail) -> float:
    if threshold is None:
        if not 0 < p_threshold < 1:
            raise ValueError(f"p_threshold must lie in (0, 1), got {p_threshold}")
        p = p_threshold / (2 if len(tail.directions) == 2 else 1)
        threshold = -float(scipy.stats.t.ppf(p, n_subjects - 1))
        return -threshold if tail.mne_code < 0 else threshold
    threshold = float(threshold)
    if not np.isfinite(threshold) or threshold * tail.mne_code < 0 or (tail.mne_code == 0 and threshold < 0):
        raise ValueError(f"threshold {threshold} does not fit tail (negative for 'less', positive "
                         "for 'greater' and 'two-sided')")
    return threshold


def cluster_test_1samp(x: np.ndarray, *, threshold: float | None = None,
                       p_threshold: float = 0.05, tail: str = "greater",
                       n_permutations: int = 1024, rng: np.random.Generator | int | None = None,
                       seed: int | None = None, adjacency: str = "lattice",
                       flips: np.ndarray | None = None) -> ClusterTestResult:
    """Cluster-based sign-flip permutation test of one-sample t maps (Maris & Oostenveld 2007).

    Equal to ``mne.stats.permutation_cluster_1samp_test(x, threshold=..., tail=...,
    n_permutations=..., out_type="mask")`` (see the module docstring for the conventions and the
    one difference in MNE's exact one-sided enumeration).

    Parameters
    ----------
    x : np.ndarray, (n_subjects, *shape)
        One map per subject, e.g. ``(n_subjects, n_times)`` time courses or
        ``(n_subjects, n_times, n_times)`` temporal-generalisation matrices, tested against 0.
        Must be finite.
    threshold : float, optional
        Cluster-forming t threshold (negative for ``tail="less"``). None: from ``p_threshold``.
    p_threshold : float
        Parametric p of the automatic threshold (halved for two-sided tests), n - 1 dof.
    tail : {"greater", "two-sided", "less"}
    n_permutations : int
        Number of sign flips, the identity included; all of them are enumerated when
        ``2 ** (n_subjects - two_sided) <= n_permutations``.
    rng : np.random.Generator or int, optional
        Source of random flips (a Generator is advanced). Give ``rng`` or ``seed``.
    seed : int, optional
        Seed of the random flips; 0 when neither ``rng`` nor ``seed`` is given.
    adjacency : {"lattice", "lattice_diagonal"}
        Which neighbouring elements join a cluster (``CLUSTER_ADJACENCIES``).
    flips : np.ndarray, (N, n_subjects) of +-1, optional
        Explicit flips instead of ``n_permutations`` / ``rng`` / ``seed`` (e.g. the same flips
        for several model layers); row 0 must be the identity.

    Returns
    -------
    ClusterTestResult
    """
    x = _subject_data(x)
    tail_spec = _tail(tail)
    n_subjects, shape = x.shape[0], x.shape[1:]
    structure = _stack_structure(len(shape), adjacency)
    threshold = _cluster_threshold(threshold, p_threshold, n_subjects, tail_spec)
    cutoff = abs(threshold)
    if flips is None:
        flips, exact = one_sample_sign_flips(n_subjects, n_permutations,
                                             two_sided=tail == "two-sided",
                                             rng=_generator(rng, seed))
    else:
        flips, exact = _checked_flips(flips, n_subjects), False

    t_obs = _observed_t(x)
    clusters, stats = _observed_clusters(t_obs, cutoff, tail_spec, structure)
    starts = stops = None
    if len(shape) == 1:
        starts = np.array([np.flatnonzero(c)[0] for c in clusters], dtype=np.int64)
        stops = np.array([np.flatnonzero(c)[-1] + 1 for c in clusters], dtype=np.int64)
    if not clusters:
        empty = np.zeros(0)
        return ClusterTestResult(t_obs=t_obs, clusters=[], cluster_stats=empty, p_values=empty,
                                 null_distribution=empty, n_permutations=0, exact=exact,
                                 threshold=threshold, tail=tail, cluster_starts=starts,
                                 cluster_stops=stops)

    x_flat = x.reshape(n_subjects, -1)
    sum_sq = np.sum(x_flat ** 2, axis=0)
    n_flips = flips.shape[0]
    null = np.empty(n_flips)
    step = int(max(1, min(n_flips, _MAX_CHUNK_ELEMENTS // x_flat.shape[1])))
    for first in range(0, n_flips, step):
        block = flips[first:first + step]
        t = _flipped_t(block, x_flat, sum_sq).reshape((block.shape[0],) + shape)
        null[first:first + block.shape[0]] = _null_cluster_stats(t, cutoff, tail_spec, structure)
    orig = {"greater": stats.max, "less": stats.min, "two-sided": lambda: np.abs(stats).max()}
    null[0] = orig[tail]()  # the identity, exactly MNE's observed "orig"
    return ClusterTestResult(t_obs=t_obs, clusters=clusters, cluster_stats=stats,
                             p_values=_cluster_p_values(stats, null, tail),
                             null_distribution=null, n_permutations=n_flips, exact=exact,
                             threshold=threshold, tail=tail, cluster_starts=starts,
                             cluster_stops=stops)


# --------------------------------------------------------------------------- max-T
def max_t_1samp(x: np.ndarray, *, tail: str = "greater", n_permutations: int = 1024,
                rng: np.random.Generator | int | None = None, seed: int | None = None,
                flips: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-sample t per element with max-T family-wise corrected sign-flip p-values.

    A thin wrapper of :func:`bids_dnn.stats.maps.group_one_sample_map` (its ``p_fwe``) for
    maps of any shape and all three tails, with the flips of :func:`one_sample_sign_flips`.

    Parameters
    ----------
    x : np.ndarray, (n_subjects, *shape)
        One map per subject, tested against 0. An element that is non-finite in a subject or
        constant across subjects is left out of the family (NaN t and p).
    tail : {"greater", "two-sided", "less"}
    n_permutations : int
        Number of sign flips, the identity included (exact enumeration as in
        :func:`cluster_test_1samp`).
    rng, seed, flips
        As :func:`cluster_test_1samp`.

    Returns
    -------
    t_obs : np.ndarray, shape
        One-sample t (ddof=1 standard deviation).
    p_corrected : np.ndarray, shape
        ``#{k : max_u s_k[u] >= s_obs} / N`` with ``s = t``, ``-t`` or ``|t|`` by tail.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"x must be (n_subjects >= 2, *shape), got shape {x.shape}")
    _tail(tail)
    n_subjects, shape = x.shape[0], x.shape[1:]
    if flips is None:
        flips, _ = one_sample_sign_flips(n_subjects, n_permutations, two_sided=tail == "two-sided",
                                         rng=_generator(rng, seed))
    else:
        flips = _checked_flips(flips, n_subjects)
    sign = -1.0 if tail == "less" else 1.0
    result = group_one_sample_map(sign * x.reshape(n_subjects, -1), flips=flips,
                                  alternative="two-sided" if tail == "two-sided" else "greater")
    return sign * result.t.reshape(shape), result.p_fwe.reshape(shape)
