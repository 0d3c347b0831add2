"""Tests of bids_dnn.stats.clusters against MNE's permutation_cluster_1samp_test /
permutation_t_test, full enumerations and brute-force loops, and on planted data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse
import scipy.stats
from scipy import ndimage

from bids_dnn.stats import clusters as C

mne = pytest.importorskip("mne")
from mne.stats.cluster_level import bin_perm_rep  # noqa: E402

mne.set_log_level("ERROR")

MNE_TAIL = {"greater": 1, "two-sided": 0, "less": -1}
SHAPES = [(40,), (12, 12)]


def _data(seed: int, n: int, shape: tuple[int, ...], effect: float = 0.9) -> np.ndarray:
    """Noise with a planted block of ``effect`` (positive) and a weaker negative block."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + shape)
    x[(slice(None),) + tuple(slice(2, 7) for _ in shape)] += effect
    x[(slice(None),) + tuple(slice(-6, -3) for _ in shape)] -= 0.6 * effect
    return x


def _mne(x: np.ndarray, tail: str, n_permutations: int, **kw):
    with np.errstate(all="ignore"):
        return mne.stats.permutation_cluster_1samp_test(
            x, tail=MNE_TAIL[tail], n_permutations=n_permutations, out_type="mask", **kw)


def _as_masks(clusters: list, shape: tuple[int, ...]) -> list[np.ndarray]:
    """MNE's clusters (1-D: tuples of one slice; N-D: boolean masks) as boolean masks."""
    out = []
    for c in clusters:
        if isinstance(c, np.ndarray) and c.dtype == bool:
            out.append(c.reshape(shape))
        else:
            m = np.zeros(shape, dtype=bool)
            m[c] = True
            out.append(m)
    return out


def _mne_exact_flips(n: int, tail: str) -> np.ndarray:
    """The flips MNE's exact one-sample test uses (identity first, as it inserts ``orig``)."""
    max_perms = 2 ** (n - (tail == "two-sided")) - 1
    return np.vstack([np.ones(n), 2.0 * bin_perm_rep(n)[1:max_perms + 1] - 1.0])


def _assert_same_clusters(ours: C.ClusterTestResult, theirs: list, shape: tuple[int, ...]) -> None:
    masks = _as_masks(theirs, shape)
    assert len(masks) == len(ours.clusters)
    for a, b in zip(ours.clusters, masks):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- statistic, threshold
def test_t_obs_is_scipy_one_sample_t(rng):
    x = rng.normal(size=(10, 7, 5)) + 0.3
    res = C.cluster_test_1samp(x, threshold=1.0, n_permutations=64)
    np.testing.assert_allclose(res.t_obs, scipy.stats.ttest_1samp(x, 0.0).statistic, rtol=1e-12)


@pytest.mark.parametrize("tail", list(MNE_TAIL))
@pytest.mark.parametrize("n", [6, 15])
def test_automatic_threshold_is_mnes(tail, n):
    from mne.stats.cluster_level import _check_fun

    _, expected = _check_fun(np.zeros((n, 3)), None, None, MNE_TAIL[tail])
    x = np.random.default_rng(n).normal(size=(n, 30))
    assert C.cluster_test_1samp(x, tail=tail, n_permutations=16).threshold == pytest.approx(
        expected, rel=1e-14)
    # p_threshold generalises MNE's fixed 0.05
    p = 0.01 / (2 if tail == "two-sided" else 1)
    t01 = C.cluster_test_1samp(x, tail=tail, p_threshold=0.01, n_permutations=16).threshold
    assert abs(t01) == pytest.approx(scipy.stats.t.isf(p, n - 1), rel=1e-12)


# --------------------------------------------------------------------------- exact tests vs MNE
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_sided_exact_equals_mne(shape, seed):
    n = 9
    x = _data(seed, n, shape)
    ours = C.cluster_test_1samp(x, tail="two-sided", n_permutations=2 ** (n - 1))
    t_obs, clusters, p, h0 = _mne(x, "two-sided", 2 ** (n - 1))
    assert ours.exact and ours.n_permutations == len(h0) == 2 ** (n - 1)
    np.testing.assert_allclose(ours.t_obs, t_obs, rtol=1e-12)
    _assert_same_clusters(ours, clusters, shape)
    assert len(clusters) >= 2
    np.testing.assert_allclose(ours.p_values, p, rtol=0, atol=1e-12)
    # MNE enumerates the same flips with subject 0 negated: the same |H0|
    np.testing.assert_allclose(np.sort(np.abs(ours.null_distribution)), np.sort(np.abs(h0)),
                               rtol=1e-12)
    # more permutations than 2 ** n: still the half enumeration, same p
    more = C.cluster_test_1samp(x, tail="two-sided", n_permutations=2 ** (n + 1))
    assert more.n_permutations == 2 ** (n - 1)
    np.testing.assert_allclose(more.p_values, p, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tail", ["greater", "less", "two-sided"])
def test_mnes_flips_give_mnes_null_and_p(shape, tail):
    """Given MNE's own (exact) set of flips, the null distribution is MNE's H0 element by
    element, and every p-value is MNE's. The one exception: for one-sided tests MNE's set
    holds the identity twice (see the module docstring); whether MNE counts that second copy
    for the largest cluster depends on rounding, so that one p may differ by 1 / N."""
    n = 9
    x = _data(3, n, shape)
    flips = _mne_exact_flips(n, tail)
    ours = C.cluster_test_1samp(x, tail=tail, flips=flips)
    _, clusters, p, h0 = _mne(x, tail, 2 ** n)
    _assert_same_clusters(ours, clusters, shape)
    np.testing.assert_allclose(ours.null_distribution, h0, rtol=1e-12, atol=1e-12)
    largest = np.argmax(np.abs(ours.cluster_stats))
    others = np.arange(len(p)) != largest
    np.testing.assert_allclose(ours.p_values[others], p[others], atol=1e-12)
    assert abs(ours.p_values[largest] - p[largest]) <= 1 / len(h0) + 1e-12
    if tail == "two-sided":
        np.testing.assert_allclose(ours.p_values, p, atol=1e-12)


def _brute_force_exact(x: np.ndarray, threshold: float, tail: str) -> tuple[np.ndarray, np.ndarray]:
    """Every sign vector once: observed cluster sums and their p-values, by explicit loops."""
    n = x.shape[0]
    directions = {"greater": [1], "less": [-1], "two-sided": [1, -1]}[tail]
    structure = ndimage.generate_binary_structure(x.ndim - 1, 1)

    def cluster_sums(t):
        sums = []
        for d in directions:
            labels, k = ndimage.label(d * t > abs(threshold), structure=structure)
            sums += [t[labels == i].sum() for i in range(1, k + 1)]
        return np.array(sums)

    observed = cluster_sums(scipy.stats.ttest_1samp(x, 0.0).statistic)
    null = []
    for signs in itertools.product([1.0, -1.0], repeat=n):
        sums = cluster_sums(scipy.stats.ttest_1samp(np.array(signs).reshape((n,) + (1,) * (x.ndim - 1)) * x,
                                                    0.0).statistic)
        if sums.size == 0:
            null.append(0.0)
        else:
            null.append(sums[np.argmax(np.abs(sums))] if tail == "two-sided"
                        else (sums.max() if tail == "greater" else sums.min()))
    null = np.array(null)
    if tail == "greater":
        p = [(null >= s - 1e-9).mean() for s in observed]
    elif tail == "less":
        p = [(null <= s + 1e-9).mean() for s in observed]
    else:
        p = [(np.abs(null) >= abs(s) - 1e-9).mean() for s in observed]
    return observed, np.array(p)


@pytest.mark.parametrize("shape", [(30,), (8, 8)])
@pytest.mark.parametrize("tail", ["greater", "less", "two-sided"])
def test_exact_test_equals_full_enumeration(shape, tail):
    n = 8
    x = _data(4, n, shape)
    ours = C.cluster_test_1samp(x, tail=tail, n_permutations=2 ** n)
    assert ours.exact
    assert ours.n_permutations == 2 ** (n - (tail == "two-sided"))
    stats, p = _brute_force_exact(x, ours.threshold, tail)
    np.testing.assert_allclose(ours.cluster_stats, stats, rtol=1e-10)
    np.testing.assert_allclose(ours.p_values, p, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tail", ["greater", "less"])
@pytest.mark.parametrize("two_blocks", [False, True])
def test_one_sided_exact_differs_from_mne_only_by_its_identity_for_negation(shape, tail, two_blocks):
    """Default flips vs MNE: MNE counts the identity twice and the full negation never.
    For every cluster but the largest, ``p_ours - p_mne = ([negation >= s] - 1) / N``: 0 for
    small clusters (the negated data have a larger one), -1 / N for a second strong cluster."""
    n = 9
    x = _data(5, n, shape)
    if two_blocks:  # two clusters in the tested direction, none against it
        rng = np.random.default_rng(5)
        x = rng.normal(size=(n,) + shape)
        sign = 1.0 if tail == "greater" else -1.0
        x[(slice(None),) + tuple(slice(1, 5) for _ in shape)] += sign * 1.5
        x[(slice(None),) + tuple(slice(-5, -1) for _ in shape)] += sign * 1.2
    ours = C.cluster_test_1samp(x, tail=tail, n_permutations=2 ** n)
    _, clusters, p, h0 = _mne(x, tail, 2 ** n)
    _assert_same_clusters(ours, clusters, shape)
    negation = C.cluster_test_1samp(x, tail=tail, flips=np.vstack([np.ones(n), -np.ones(n)]))
    neg_value = negation.null_distribution[1]
    sign = 1.0 if tail == "greater" else -1.0
    largest = np.argmax(np.abs(ours.cluster_stats))
    differences = []
    for k, s in enumerate(ours.cluster_stats):
        if k != largest:
            expected = (float(sign * neg_value >= sign * s) - 1.0) / 2 ** n
            assert ours.p_values[k] - p[k] == pytest.approx(expected, abs=1e-12)
            differences.append(expected)
    if two_blocks:  # the case where MNE's p is larger occurs
        assert min(differences) < 0


# --------------------------------------------------------------------------- random flips vs MNE
@pytest.mark.parametrize("shape,tail", [((60,), "two-sided"), ((60,), "greater"),
                                        ((60,), "less"), ((14, 14), "greater")])
def test_random_flips_agree_with_mne_within_monte_carlo_error(shape, tail):
    n, n_perm = 16, 2000
    x = _data(6, n, shape, effect=0.7)
    ours = C.cluster_test_1samp(x, tail=tail, n_permutations=n_perm, seed=1)
    assert not ours.exact and ours.n_permutations == n_perm
    _, clusters, p, _ = _mne(x, tail, n_perm, rng=2)
    _assert_same_clusters(ours, clusters, shape)
    p_mid = (ours.p_values + p) / 2
    tolerance = 4 * np.sqrt(2 * p_mid * (1 - p_mid) / n_perm) + 2 / n_perm
    assert np.all(np.abs(ours.p_values - p) <= tolerance), (ours.p_values, p)


# --------------------------------------------------------------------------- adjacency
def _grid_adjacency(rows: int, cols: int, diagonal: bool) -> scipy.sparse.coo_array:
    index = np.arange(rows * cols).reshape(rows, cols)
    pairs = [(index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :])]
    if diagonal:
        pairs += [(index[:-1, :-1], index[1:, 1:]), (index[:-1, 1:], index[1:, :-1])]
    a = np.concatenate([p[0].ravel() for p in pairs])
    b = np.concatenate([p[1].ravel() for p in pairs])
    n = rows * cols
    m = scipy.sparse.coo_array((np.ones(a.size), (a, b)), shape=(n, n))
    return scipy.sparse.coo_array(m + m.T)


@pytest.mark.parametrize("adjacency,diagonal", [("lattice", False), ("lattice_diagonal", True)])
def test_adjacency_matches_mne_with_an_explicit_grid_adjacency(adjacency, diagonal):
    n, shape = 9, (11, 11)
    x = _data(7, n, shape)
    ours = C.cluster_test_1samp(x, tail="two-sided", n_permutations=2 ** n, adjacency=adjacency)
    _, clusters, p, _ = _mne(x, "two-sided", 2 ** n,
                             adjacency=_grid_adjacency(*shape, diagonal=diagonal))
    theirs = {frozenset(np.flatnonzero(m)): pv for m, pv in zip(_as_masks(clusters, shape), p)}
    mine = {frozenset(np.flatnonzero(m)): pv for m, pv in zip(ours.clusters, ours.p_values)}
    assert mine.keys() == theirs.keys()
    for key, pv in mine.items():
        assert pv == pytest.approx(theirs[key], abs=1e-12)
    if diagonal:  # diagonal neighbours merge clusters that the lattice keeps apart
        lattice = C.cluster_test_1samp(x, tail="two-sided", n_permutations=2 ** n)
        assert len(lattice.clusters) > len(ours.clusters)


# --------------------------------------------------------------------------- vectorised labelling
@pytest.mark.parametrize("tail", list(C.TAILS))
def test_vectorised_null_statistics_equal_a_per_map_loop(tail):
    rng = np.random.default_rng(8)
    spec = C.TAILS[tail]
    for shape in [(50,), (9, 13)]:
        t = rng.normal(size=(40,) + shape) * 2
        t[3] = 0.0  # a map without clusters
        structure = C._stack_structure(len(shape), "lattice")
        got = C._null_cluster_stats(t, 1.5, spec, structure)
        for i, t_map in enumerate(t):
            sums = []
            for d in spec.directions:
                labels, k = ndimage.label(d * t_map > 1.5, structure=structure[1])
                sums += [t_map[labels == j].sum() for j in range(1, k + 1)]
            expected = sums[int(np.argmax(np.abs(sums)))] if sums else 0.0
            assert got[i] == pytest.approx(expected, rel=1e-12, abs=1e-12)
        if len(shape) == 1:  # the 1-D run path equals the N-D label path
            for d in spec.directions:
                runs = C._largest_run_sums(t, d * t > 1.5, d)
                labelled = C._largest_label_sums(t[:, None, :], (d * t > 1.5)[:, None, :], d,
                                                 C._stack_structure(2, "lattice"))
                np.testing.assert_allclose(runs, labelled, rtol=1e-12)


# --------------------------------------------------------------------------- planted truth
def test_planted_window_gives_one_significant_cluster_covering_it():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(20, 100))
    x[:, 40:60] += 1.5
    res = C.cluster_test_1samp(x, tail="two-sided", n_permutations=1000, seed=0)
    significant = np.flatnonzero(res.p_values < 0.05)
    assert significant.size == 1
    k = significant[0]
    assert res.cluster_starts[k] <= 41 and res.cluster_stops[k] >= 59
    assert res.cluster_starts[k] >= 36 and res.cluster_stops[k] <= 64
    assert res.p_values[k] == pytest.approx(1 / 1000)
    mask = res.significant_mask(0.05)
    assert mask[41:59].all() and not mask[:36].any() and not mask[64:].any()
    np.testing.assert_array_equal(np.flatnonzero(res.clusters[k]),
                                  np.arange(res.cluster_starts[k], res.cluster_stops[k]))


def test_planted_block_in_a_generalisation_matrix():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(16, 30, 30))
    x[:, 10:20, 12:22] += 1.2
    res = C.cluster_test_1samp(x, tail="greater", n_permutations=500, seed=0)
    assert res.cluster_starts is None
    significant = np.flatnonzero(res.p_values < 0.05)
    assert significant.size == 1
    mask = res.clusters[significant[0]]
    assert mask[11:19, 13:21].all() and mask.sum() < 2 * 100


@pytest.mark.parametrize("tail", ["greater", "two-sided"])
def test_false_positive_rate_is_calibrated(tail):
    """Noise only: over 300 data sets, 'some cluster has p < 0.05' happens at about 5 %."""
    hits = 0
    n_sets = 300
    for seed in range(n_sets):
        x = np.random.default_rng(1000 + seed).normal(size=(12, 40))
        res = C.cluster_test_1samp(x, tail=tail, n_permutations=200, seed=seed)
        hits += bool(np.any(res.p_values < 0.05))
    rate = hits / n_sets
    assert 0.015 <= rate <= 0.09, rate  # binomial(300, 0.045): +-3 SD


# --------------------------------------------------------------------------- options, edge cases
def test_seeding_is_reproducible():
    x = _data(11, 14, (50,))
    a = C.cluster_test_1samp(x, n_permutations=300, seed=5)
    b = C.cluster_test_1samp(x, n_permutations=300, rng=np.random.default_rng(5))
    c = C.cluster_test_1samp(x, n_permutations=300, rng=5)
    np.testing.assert_array_equal(a.null_distribution, b.null_distribution)
    np.testing.assert_array_equal(a.null_distribution, c.null_distribution)
    d = C.cluster_test_1samp(x, n_permutations=300)  # neither: seed 0
    np.testing.assert_array_equal(d.null_distribution,
                                  C.cluster_test_1samp(x, n_permutations=300, seed=0).null_distribution)
    with pytest.raises(ValueError, match="not both"):
        C.cluster_test_1samp(x, rng=1, seed=1)


def test_sign_flips():
    flips, exact = C.one_sample_sign_flips(5, 32, two_sided=False, rng=np.random.default_rng(0))
    assert exact and flips.shape == (32, 5) and np.all(flips[0] == 1)
    assert len({tuple(r) for r in flips}) == 32
    flips, exact = C.one_sample_sign_flips(5, 16, two_sided=True, rng=np.random.default_rng(0))
    assert exact and flips.shape == (16, 5) and np.all(flips[:, 0] == 1)
    assert len({tuple(r) for r in flips}) == 16
    flips, exact = C.one_sample_sign_flips(5, 16, two_sided=False, rng=np.random.default_rng(0))
    assert not exact and flips.shape == (16, 5) and np.all(flips[0] == 1)


def test_no_cluster_runs_no_permutation():
    x = np.random.default_rng(12).normal(size=(10, 30))
    res = C.cluster_test_1samp(x, threshold=50.0)
    assert res.clusters == [] and res.n_permutations == 0
    assert res.null_distribution.size == res.p_values.size == res.cluster_starts.size == 0
    assert not res.significant_mask().any()


@pytest.mark.parametrize("tail", ["greater", "two-sided"])
def test_a_constant_element_has_infinite_t_as_in_mne(tail):
    n = 8
    x = _data(18, n, (30,))
    x[:, 4] = 2.0  # constant across subjects: t = +inf, 0 in every flipped map
    ours = C.cluster_test_1samp(x, tail=tail, n_permutations=2 ** n)
    t_obs, clusters, p, _ = _mne(x, tail, 2 ** n)
    assert np.isposinf(ours.t_obs[4]) and np.isposinf(t_obs[4])
    _assert_same_clusters(ours, clusters, (30,))
    k = next(i for i, c in enumerate(ours.clusters) if c[4])
    assert np.isposinf(ours.cluster_stats[k])
    assert ours.p_values[k] == p[k] == 1 / ours.n_permutations


def test_input_errors():
    x = np.random.default_rng(13).normal(size=(8, 20))
    with pytest.raises(ValueError, match="tail"):
        C.cluster_test_1samp(x, tail="both")
    with pytest.raises(ValueError, match="adjacency"):
        C.cluster_test_1samp(x, adjacency="full")
    with pytest.raises(ValueError, match="does not fit tail"):
        C.cluster_test_1samp(x, tail="less", threshold=2.0)
    with pytest.raises(ValueError, match="does not fit tail"):
        C.cluster_test_1samp(x, tail="two-sided", threshold=-2.0)
    with pytest.raises(ValueError, match="NaN"):
        C.cluster_test_1samp(np.where(x > 2, np.nan, x))
    with pytest.raises(ValueError, match="at least 2 subjects"):
        C.cluster_test_1samp(x[:1])
    with pytest.raises(ValueError, match="n_subjects"):
        C.cluster_test_1samp(x[0])
    with pytest.raises(ValueError, match="identity"):
        C.cluster_test_1samp(x, flips=-np.ones((4, 8)))


# --------------------------------------------------------------------------- max-T
def _brute_force_max_t(x: np.ndarray, flips: np.ndarray, tail: str) -> tuple[np.ndarray, np.ndarray]:
    orient = {"greater": lambda t: t, "less": lambda t: -t, "two-sided": np.abs}[tail]
    flat = x.reshape(x.shape[0], -1)
    t_obs = scipy.stats.ttest_1samp(flat, 0.0).statistic
    maxima = np.array([orient(scipy.stats.ttest_1samp(f[:, None] * flat, 0.0).statistic).max()
                       for f in flips])
    s = orient(t_obs)
    p = np.array([(maxima >= v - 1e-9 * max(1, abs(v))).mean() for v in s])
    return t_obs.reshape(x.shape[1:]), p.reshape(x.shape[1:])


@pytest.mark.parametrize("shape", [(25,), (6, 7)])
@pytest.mark.parametrize("tail", list(C.TAILS))
def test_max_t_equals_a_brute_force_loop(shape, tail):
    n, n_perm = 12, 300
    x = _data(14, n, shape, effect=1.0 if tail != "less" else -1.0)
    t_obs, p = C.max_t_1samp(x, tail=tail, n_permutations=n_perm, seed=3)
    flips, exact = C.one_sample_sign_flips(n, n_perm, two_sided=tail == "two-sided",
                                           rng=np.random.default_rng(3))
    assert not exact
    t_ref, p_ref = _brute_force_max_t(x, flips, tail)
    np.testing.assert_allclose(t_obs, t_ref, rtol=1e-10)
    np.testing.assert_allclose(p, p_ref, atol=1e-12)
    assert p.min() < 0.05 and p.max() > 0.5


def test_max_t_two_sided_equals_mne_permutation_t_test():
    n = 9
    x = _data(15, n, (30,))
    t_obs, p = C.max_t_1samp(x, tail="two-sided", n_permutations=2 ** n)
    t_mne, p_mne, _ = mne.stats.permutation_t_test(x, n_permutations=2 ** n, tail=0)
    np.testing.assert_allclose(t_obs, t_mne, rtol=1e-10)
    np.testing.assert_allclose(p, p_mne, atol=1e-12)
    # random flips: within Monte-Carlo error
    n, n_perm = 16, 2000
    x = _data(16, n, (30,), effect=0.6)
    _, p = C.max_t_1samp(x, tail="two-sided", n_permutations=n_perm, seed=1)
    _, p_mne, _ = mne.stats.permutation_t_test(x, n_permutations=n_perm, tail=0, rng=2)
    p_mid = (p + p_mne) / 2
    assert np.all(np.abs(p - p_mne) <= 4 * np.sqrt(2 * p_mid * (1 - p_mid) / n_perm) + 2 / n_perm)


def test_max_t_less_is_greater_of_the_negated_data():
    x = _data(17, 10, (20,))
    t_less, p_less = C.max_t_1samp(x, tail="less", n_permutations=256, seed=0)
    t_gt, p_gt = C.max_t_1samp(-x, tail="greater", n_permutations=256, seed=0)
    np.testing.assert_allclose(t_less, -t_gt, rtol=1e-12)
    np.testing.assert_array_equal(p_less, p_gt)
