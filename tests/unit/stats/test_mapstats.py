"""Tests of bids_dnn.stats.maps against scipy, nilearn's permuted_ols and brute-force loops."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from bids_dnn.stats import maps as M
from bids_dnn.stats.correction import fdr_bh
from bids_dnn.stats.group_tests import one_sample_tests

nilearn_mu = pytest.importorskip("nilearn.mass_univariate")
permuted_ols = nilearn_mu.permuted_ols

ALTERNATIVES = ["greater", "two-sided"]


def _signal_data(seed: int = 0, n_subj: int = 12, n_vox: int = 400, n_signal: int = 40,
                 effect: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_subj, n_vox))
    x[:, :n_signal] += effect
    return x


def _nilearn(x: np.ndarray, alternative: str, n_perm: int, random_state: int, **kw) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return permuted_ols(np.ones((x.shape[0], 1)), x, model_intercept=False, n_perm=n_perm,
                            two_sided_test=alternative == "two-sided",
                            random_state=random_state, n_jobs=1, **kw)


def _nilearn_flip_stream(n_subj: int, n_perm: int, random_state: int) -> np.ndarray:
    """The sign flips nilearn's permuted_ols draws (n_jobs=1), with the identity prepended.

    nilearn seeds one RandomState per job from ``random_state`` and multiplies the data by a
    fresh random sign vector at every permutation (cumulatively)."""
    outer = np.random.RandomState(random_state)
    inner = np.random.RandomState(outer.randint(1, np.iinfo(np.int32).max - 1))
    cur = np.ones(n_subj)
    rows = [cur.copy()]
    for _ in range(n_perm):
        cur = cur * (inner.randint(2, size=(n_subj, 1)) * 2 - 1)[:, 0]
        rows.append(cur.copy())
    return np.array(rows)


def _brute_force(x: np.ndarray, flips: np.ndarray, alternative: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """p_perm and p_fwe by a loop over flips with scipy.stats.ttest_1samp."""
    two = alternative == "two-sided"
    t_obs = scipy.stats.ttest_1samp(x, 0.0, axis=0).statistic
    s_obs = np.abs(t_obs) if two else t_obs
    thresh = s_obs - 1e-10 * np.maximum(1.0, np.abs(s_obs))
    count = np.zeros(x.shape[1])
    maxes = []
    for f in flips:
        with warnings.catch_warnings():  # zero-variance flips of quantised data: t = +-inf
            warnings.simplefilter("ignore", RuntimeWarning)
            t = scipy.stats.ttest_1samp(f[:, None] * x, 0.0, axis=0).statistic
        s = np.abs(t) if two else t
        count += s >= thresh
        maxes.append(s.max())
    maxes = np.array(maxes)
    p_fwe = np.array([(maxes >= th).sum() for th in thresh]) / len(flips)
    return count / len(flips), p_fwe


# ----------------------------------------------------------------------------- sign flips
def test_sign_flip_matrix_random():
    f = M.sign_flip_matrix(10, 300, seed=4)
    assert f.shape == (300, 10)
    assert np.all(np.abs(f) == 1)
    assert np.all(f[0] == 1)
    np.testing.assert_array_equal(f, M.sign_flip_matrix(10, 300, seed=4))
    assert not np.array_equal(f, M.sign_flip_matrix(10, 300, seed=5))
    assert abs(np.mean(f[1:] == -1) - 0.5) < 0.03
    g = M.sign_flip_matrix(10, 300, seed=np.random.default_rng(4))
    np.testing.assert_array_equal(f, g)


def test_sign_flip_matrix_exhaustive():
    f = M.sign_flip_matrix(6, 64, seed=0)
    assert f.shape == (64, 6)
    assert np.all(f[0] == 1)
    assert np.unique(f, axis=0).shape[0] == 64
    f2 = M.sign_flip_matrix(6, 1000, seed=1)  # more requested than exist: all 2**6 once
    np.testing.assert_array_equal(f, f2)
    assert M.sign_flip_matrix(7, 64, seed=0).shape == (64, 7)  # 128 > 64: random


# ----------------------------------------------------------------------------- parametric
@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_t_p_fdr_match_scipy_and_stats(alternative):
    x = _signal_data(1)
    r = M.group_one_sample_map(x, n_permutations=50, alternative=alternative)
    ref = scipy.stats.ttest_1samp(x, 0.0, axis=0, alternative=alternative)
    np.testing.assert_allclose(r.t, ref.statistic, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r.p, ref.pvalue, rtol=1e-10, atol=1e-300)
    ost = one_sample_tests(x, alternative=alternative)
    np.testing.assert_allclose(r.t, ost["t"], rtol=1e-12)
    np.testing.assert_allclose(r.p, ost["p_t"], rtol=1e-10)
    np.testing.assert_allclose(r.p_fdr, scipy.stats.false_discovery_control(ref.pvalue),
                               rtol=1e-12)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_t_matches_nilearn(alternative):
    x = _signal_data(2)
    r = M.group_one_sample_map(x, n_permutations=10, alternative=alternative)
    out = _nilearn(x, alternative, n_perm=0, random_state=0)
    assert np.max(np.abs(out["t"][0] - r.t)) <= 1e-10


# ----------------------------------------------------------------------------- permutation p
@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize("n_subj,n_perm", [(9, 300), (6, 64)])  # random / exhaustive
def test_permutation_p_equal_brute_force(alternative, n_subj, n_perm):
    x = _signal_data(3, n_subj=n_subj, n_vox=120, n_signal=15, effect=0.8)
    x[:, 100:110] -= 0.8  # negative effects matter for the two-sided test
    r = M.group_one_sample_map(x, n_permutations=n_perm, alternative=alternative, seed=11)
    flips = M.sign_flip_matrix(n_subj, n_perm, seed=11)
    p_perm, p_fwe = _brute_force(x, flips, alternative)
    assert r.n_permutations == flips.shape[0] == n_perm
    np.testing.assert_array_equal(r.p_perm, p_perm)
    np.testing.assert_array_equal(r.p_fwe, p_fwe)
    assert np.all(r.p_fwe >= r.p_perm)
    assert r.p_perm.min() >= 1 / n_perm


def test_exhaustive_two_sided_is_exact_and_symmetric():
    # with all 2**n flips the two-sided null contains every value twice (f and -f)
    x = _signal_data(4, n_subj=5, n_vox=30, n_signal=0)
    r = M.group_one_sample_map(x, n_permutations=10_000, alternative="two-sided")
    assert r.n_permutations == 32
    assert np.all(r.p_perm >= 2 / 32)
    counts = np.round(r.p_perm * 32)
    assert np.all(counts % 2 == 0)


def test_chunking_does_not_change_results(monkeypatch):
    x = _signal_data(5, n_vox=300)
    a = M.group_one_sample_map(x, n_permutations=257, alternative="two-sided", seed=3)
    monkeypatch.setattr(M, "_MAX_CHUNK_ELEMENTS", 300 * 7)  # chunks of 7 flips
    b = M.group_one_sample_map(x, n_permutations=257, alternative="two-sided", seed=3)
    np.testing.assert_array_equal(a.p_perm, b.p_perm)
    np.testing.assert_array_equal(a.p_fwe, b.p_fwe)
    np.testing.assert_allclose(a.null_max_t, b.null_max_t, rtol=1e-13)
    assert a.threshold_fwe == pytest.approx(b.threshold_fwe, rel=1e-13)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_p_fwe_equals_nilearn_with_identical_flips(alternative):
    """Feeding nilearn's own flip stream reproduces its max-T p-values exactly."""
    x = _signal_data(6)
    n_perm = 999
    out = _nilearn(x, alternative, n_perm=n_perm, random_state=42)
    flips = _nilearn_flip_stream(x.shape[0], n_perm, 42)
    r = M.group_one_sample_map(x, alternative=alternative, flips=flips)
    if not np.allclose(r.null_max_t[1:], out["h0_max_t"][0], rtol=1e-9):
        pytest.skip("nilearn's internal flip stream differs from this reconstruction")
    assert r.n_permutations == n_perm + 1
    np.testing.assert_allclose(r.p_fwe, 10.0 ** -out["logp_max_t"][0], rtol=1e-12)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_p_fwe_matches_nilearn_monte_carlo(alternative):
    """Independent random streams: the two max-T p maps agree within Monte-Carlo error."""
    x = _signal_data(7, n_subj=16, n_vox=500, n_signal=60, effect=1.2)
    n_perm = 10_000  # < 2 ** 16: random flips, not enumeration
    r = M.group_one_sample_map(x, n_permutations=n_perm + 1, alternative=alternative, seed=1)
    out = _nilearn(x, alternative, n_perm=n_perm, random_state=2)
    p_nl = 10.0 ** -out["logp_max_t"][0]
    # both are empirical CDFs of the max-T null evaluated at the observed t; a two-sample
    # Kolmogorov-Smirnov bound at level 0.001 is 1.95 * sqrt(2 / n) = 0.028
    assert np.max(np.abs(r.p_fwe - p_nl)) <= 1.95 * np.sqrt(2 / n_perm)
    assert np.max(np.abs(r.p_fwe - p_nl)) <= 0.02  # the seeded run is well inside the bound
    assert np.sum(r.p_fwe <= 0.05) > 10
    q_nl = np.quantile(out["h0_max_t"][0], 0.95)
    assert r.threshold_fwe == pytest.approx(q_nl, abs=0.15)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_threshold_fwe_consistent_with_p_fwe(alternative):
    x = _signal_data(8, n_vox=300, n_signal=40, effect=1.6)
    x[:, 250:270] -= 1.6
    for alpha in (0.05, 0.01, 0.2):
        r = M.group_one_sample_map(x, n_permutations=500, alternative=alternative, alpha=alpha)
        s = np.abs(r.t) if alternative == "two-sided" else r.t
        np.testing.assert_array_equal(s > r.threshold_fwe, r.p_fwe <= alpha)
        assert 0 < np.sum(r.p_fwe <= alpha) < 300
    # too few permutations for alpha: nothing can be significant
    r = M.group_one_sample_map(x, n_permutations=10, alpha=0.05)
    assert np.all(r.p_fwe >= 0.1)
    assert not np.any(r.t > r.threshold_fwe)


# ----------------------------------------------------------------------------- error rates
def test_familywise_error_rate_on_null_maps():
    n_seeds, n_perm, alpha = 200, 500, 0.05
    any_fwe = 0
    unc = []
    for seed in range(n_seeds):
        x = np.random.default_rng(1000 + seed).normal(size=(12, 500))
        r = M.group_one_sample_map(x, n_permutations=n_perm, seed=seed, alpha=alpha)
        any_fwe += bool(np.any(r.p_fwe <= alpha))
        unc.append(np.mean(r.p_perm <= alpha))
    tol = 3 * np.sqrt(alpha * (1 - alpha) / n_seeds)
    assert 0 < any_fwe / n_seeds <= alpha + tol
    assert abs(np.mean(unc) - alpha) < 0.005  # uncorrected permutation p is calibrated


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_planted_block_recovered_null_clean(alternative):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(16, 800))
    block = np.arange(100, 160)
    x[:, block] += 2.5 if alternative == "greater" else -2.5
    r = M.group_one_sample_map(x, n_permutations=2000, alternative=alternative, seed=2)
    null = np.setdiff1d(np.arange(800), block)
    assert np.all(r.p_fwe[block] <= 0.05)
    assert not np.any(r.p_fwe[null] <= 0.05)
    assert np.mean(r.p_fdr[block] <= 0.05) == 1.0
    assert np.mean(r.p_fdr[null] <= 0.05) < 0.01


# ----------------------------------------------------------------------------- NaN handling
def test_nan_and_constant_voxels_are_dropped_from_the_family():
    x = _signal_data(10, n_vox=200)
    x[3, 5] = np.nan
    x[:, 7] = np.inf * np.sign(np.arange(12) - 5.5)
    x[:, 9] = 0.0
    x[:, 11] = 0.7  # constant: zero variance
    dropped = np.array([5, 7, 9, 11])
    keep = np.setdiff1d(np.arange(200), dropped)
    r = M.group_one_sample_map(x, n_permutations=300, alternative="two-sided", seed=5)
    sub = M.group_one_sample_map(x[:, keep], n_permutations=300, alternative="two-sided", seed=5)
    for name in ("t", "p", "p_fdr", "p_perm", "p_fwe"):
        full = getattr(r, name)
        assert np.all(np.isnan(full[dropped])), name
        np.testing.assert_array_equal(full[keep], getattr(sub, name), err_msg=name)
    assert r.threshold_fwe == sub.threshold_fwe
    np.testing.assert_array_equal(r.p_fdr[keep], fdr_bh(r.p[keep]))


def test_zero_permutations_is_parametric_only():
    x, mask, _ = _blob_data(16, shape=(4, 4, 4))
    r = M.group_one_sample_map(x, n_permutations=0, alternative="two-sided", tfce=True, mask=mask)
    ref = M.group_one_sample_map(x, n_permutations=20, alternative="two-sided", tfce=True,
                                 mask=mask)
    assert r.n_permutations == 0 and r.null_max_t.shape == (0,) and np.isnan(r.threshold_fwe)
    for name in ("t", "p", "p_fdr", "tfce"):
        np.testing.assert_array_equal(getattr(r, name), getattr(ref, name), err_msg=name)
    for name in ("p_perm", "p_fwe", "p_fwe_tfce"):
        assert np.all(np.isnan(getattr(r, name))), name
    with pytest.raises(ValueError, match="n_permutations"):
        M.group_one_sample_map(x, n_permutations=-1)


def test_all_voxels_dropped():
    x = np.full((5, 4), np.nan)
    r = M.group_one_sample_map(x, n_permutations=20)
    assert np.all(np.isnan(r.t)) and np.all(np.isnan(r.p_fwe)) and np.isnan(r.threshold_fwe)


def test_input_validation():
    x = _signal_data(0, n_vox=27)
    with pytest.raises(ValueError, match="alternative"):
        M.group_one_sample_map(x, alternative="less")
    with pytest.raises(ValueError, match="subjects"):
        M.group_one_sample_map(x[:1])
    with pytest.raises(ValueError, match="n_subjects, n_voxels"):
        M.group_one_sample_map(x[0])
    with pytest.raises(ValueError, match="mask"):
        M.group_one_sample_map(x, tfce=True)
    with pytest.raises(ValueError, match="mask"):
        M.group_one_sample_map(x, mask=np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="identity"):
        M.group_one_sample_map(x, flips=-np.ones((5, 12)))
    with pytest.raises(ValueError, match="flips"):
        M.group_one_sample_map(x, flips=np.ones((5, 11)))


# ----------------------------------------------------------------------------- TFCE
def _blob_data(seed: int, shape=(8, 8, 8), n_subj: int = 10, effect: float = 1.2):
    rng = np.random.default_rng(seed)
    mask = np.ones(shape, dtype=bool)
    mask[0, :, :] = False
    mask[:, 0, 0] = False
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    blob = np.linalg.norm(grid - np.array([4, 4, 4]), axis=-1) <= 1.6
    x = rng.normal(size=(n_subj, int(mask.sum())))
    x[:, blob[mask]] += effect
    return x, mask, blob[mask]


def test_tfce_map_port_matches_nilearn():
    from scipy import ndimage

    rng = np.random.default_rng(12)
    vol = ndimage.gaussian_filter(rng.normal(size=(9, 8, 7)), 1.0) * 5
    struct = ndimage.generate_binary_structure(3, 1)
    for two in (False, True):
        ours = M.tfce_map(vol, two_sided=two)
        port = M._tfce_port(vol, struct, two)
        np.testing.assert_allclose(port, ours, rtol=1e-12, atol=1e-12)
        assert np.all(ours >= 0) or two
    assert np.all(M.tfce_map(-np.abs(vol), two_sided=False) == 0)
    assert np.all(M.tfce_map(np.zeros((3, 3, 3)), two_sided=True) == 0)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_tfce_equals_nilearn_with_identical_flips(alternative):
    import nibabel as nib
    from nilearn.maskers import NiftiMasker

    x, mask, _ = _blob_data(13)
    n_perm = 60
    masker = NiftiMasker(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))).fit()
    out = _nilearn(x, alternative, n_perm=n_perm, random_state=7, masker=masker, tfce=True)
    flips = _nilearn_flip_stream(x.shape[0], n_perm, 7)
    r = M.group_one_sample_map(x, alternative=alternative, flips=flips, tfce=True, mask=mask)
    np.testing.assert_allclose(r.tfce, out["tfce"][0], rtol=1e-10, atol=1e-10)
    if not np.allclose(r.null_max_t[1:], out["h0_max_t"][0], rtol=1e-9):
        pytest.skip("nilearn's internal flip stream differs from this reconstruction")
    np.testing.assert_allclose(r.null_max_tfce[1:], out["h0_max_tfce"][0], rtol=1e-10)
    np.testing.assert_allclose(r.p_fwe_tfce, 10.0 ** -out["logp_max_tfce"][0], rtol=1e-12)


def test_tfce_recovers_blob_and_drops_nan_voxels():
    from scipy import ndimage

    x, mask, blob = _blob_data(14, effect=1.5)
    x[2, 0] = np.nan
    r = M.group_one_sample_map(x, n_permutations=150, tfce=True, mask=mask, seed=3)
    assert r.tfce is not None and r.p_fwe_tfce is not None and r.null_max_tfce.shape == (150,)
    assert np.isnan(r.tfce[0]) and np.isnan(r.p_fwe_tfce[0])
    ok = np.isfinite(r.p_fwe_tfce)
    assert np.mean(r.p_fwe_tfce[blob] <= 0.05) >= 0.6
    # TFCE may spread a little into direct neighbours of the cluster, never further
    blob_3d = np.zeros(mask.shape, dtype=bool)
    blob_3d[mask] = blob
    near = ndimage.binary_dilation(blob_3d)[mask]
    assert not np.any(r.p_fwe_tfce[~near & ok] <= 0.05)
    # TFCE borrows strength from the cluster: here far more blob voxels survive than by max-T
    assert np.sum(r.p_fwe_tfce[blob] <= 0.05) > 3 * np.sum(r.p_fwe[blob] <= 0.05)
    assert np.nanmin(r.p_fwe_tfce) >= 1 / 150


def test_quantised_data_infinite_flipped_t_counts_as_extreme():
    # |values| all equal in voxel 0: the all-positive flip has zero variance, t = +inf
    x = np.sign(np.random.default_rng(15).normal(size=(6, 27)))
    x[:, 0] = [1, 1, 1, 1, 1, -1]
    mask = np.ones((3, 3, 3), dtype=bool)
    r = M.group_one_sample_map(x, n_permutations=64, tfce=True, mask=mask)
    assert r.n_permutations == 64 and np.isinf(r.null_max_t).any()
    assert np.all(np.isfinite(r.t[np.isfinite(r.p)]))
    p_perm, p_fwe = _brute_force(x[:, np.ptp(x, axis=0) > 0], M.sign_flip_matrix(6, 64, 0),
                                 "greater")
    np.testing.assert_array_equal(r.p_fwe[np.isfinite(r.p)], p_fwe)
    np.testing.assert_array_equal(r.p_perm[np.isfinite(r.p)], p_perm)
    assert np.all(r.null_max_tfce[np.isinf(r.null_max_t)] == np.inf)
    assert np.all(r.p_fwe_tfce[np.isfinite(r.p)] > 0)
