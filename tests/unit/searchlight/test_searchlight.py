"""Tests of bids_dnn.searchlight (neighbourhoods, ranks, engine) against rsatoolbox, bids_dnn.rsa.rdm / compare
and brute force."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from bids_dnn import searchlight as SL
from bids_dnn.searchlight import ranks
from bids_dnn.rsa.compare import LINEAR_MEASURES, compare_rdms
from bids_dnn.rsa.rdm import calc_crossnobis_rdm, calc_rdm

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.data import Dataset  # noqa: E402
from rsatoolbox.inference import eval_fixed  # noqa: E402
from rsatoolbox.model import ModelFixed  # noqa: E402
from rsatoolbox.rdm import RDMs  # noqa: E402
from rsatoolbox.rdm import calc_rdm as rsa_calc_rdm  # noqa: E402
from rsatoolbox.util.searchlight import (evaluate_models_searchlight,  # noqa: E402
                                         get_searchlight_RDMs, get_volume_searchlight)

SEED = 20261125
SHAPE = (12, 14, 12)


def quiet(fn, *args, **kwargs):
    """rsatoolbox prints and draws progress bars: silence them."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@contextlib.contextmanager
def one_thread():
    """Per-sphere reference loops issue many tiny torch ops: one intra-op thread keeps them
    from stalling on OpenMP barriers when other processes share the cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def ellipsoid(shape, axes):
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"), -1)
    return np.sum((grid / np.asarray(axes)) ** 2, axis=-1) <= 1.0


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    """Solid ellipsoid (full spheres exist) plus random specks, some on the volume edge."""
    rng = np.random.default_rng(SEED)
    m = ellipsoid(SHAPE, (4.5, 5.5, 4.5)) | (rng.random(SHAPE) < 0.12)
    m[0, 0, :4] = True
    return m


@pytest.fixture(scope="module")
def nb(mask) -> SL.Neighbourhoods:
    """Truncated spheres of radius 2 (variable sizes: padding is exercised)."""
    return SL.sphere_neighbourhoods(mask, 2, (1, 1, 1), min_fraction=0.4)


def subset(nb: SL.Neighbourhoods, n: int = 120) -> np.ndarray:
    """Evenly spaced centres plus the smallest spheres (per-sphere references are slow)."""
    even = np.linspace(0, nb.n_centres - 1, n).astype(int)
    return np.unique(np.concatenate([even, np.argsort(nb.sizes(), kind="stable")[:10]]))


@pytest.fixture(scope="module")
def patterns(mask) -> np.ndarray:
    rng = np.random.default_rng(SEED + 1)
    n_vox = int(mask.sum())
    return rng.normal(size=(9, n_vox)) + rng.normal(size=(1, n_vox))


@pytest.fixture(scope="module")
def run_patterns(mask) -> np.ndarray:
    rng = np.random.default_rng(SEED + 2)
    n_vox = int(mask.sum())
    return rng.normal(size=(4, 8, n_vox)) + 0.5 * rng.normal(size=(1, 8, n_vox))


@pytest.fixture(scope="module")
def models() -> np.ndarray:
    rng = np.random.default_rng(SEED + 3)
    m = rng.random((4, 36))
    m[3] = np.round(m[3] * 3)  # a model with ties
    return m


def _rsa_sets(mask, centres, neighbors):
    """rsatoolbox output as (mask-voxel centres, list of sorted in-mask neighbour arrays)."""
    mi = np.flatnonzero(mask)
    pos = np.full(mask.size, -1)
    pos[mi] = np.arange(mi.size)
    sets = []
    for n in neighbors:
        n = pos[np.asarray(n)]
        sets.append(np.sort(n[n >= 0]))
    return pos[np.asarray(centres)], sets


# ----------------------------------------------------------------------------- neighbourhoods
@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_neighbourhoods_match_rsatoolbox(mask, radius, threshold):
    centres, neighbors = quiet(get_volume_searchlight, mask, radius, threshold)
    ref_centres, ref_sets = _rsa_sets(mask, centres, neighbors)
    ours = SL.sphere_neighbourhoods(mask, radius, (1, 1, 1), min_fraction=threshold)
    assert ours.n_centres > 0
    np.testing.assert_array_equal(ours.centres, ref_centres)
    for i in range(ours.n_centres):
        np.testing.assert_array_equal(ours.sphere(i), ref_sets[i])


def test_neighbourhoods_match_rsatoolbox_truncated(mask):
    """rsatoolbox's truncate_at_boundary=True spheres = ours with no threshold."""
    centres, neighbors = quiet(get_volume_searchlight, mask, 2, 0.0, truncate_at_boundary=True)
    ref_centres, ref_sets = _rsa_sets(mask, centres, neighbors)
    ours = SL.sphere_neighbourhoods(mask, 2.0, (1, 1, 1))
    np.testing.assert_array_equal(ours.centres, ref_centres)
    assert all(np.array_equal(ours.sphere(i), s) for i, s in enumerate(ref_sets))


def _brute_force(mask, radius_mm, vox, min_voxels, min_fraction):
    coords = np.stack(np.nonzero(np.ones(mask.shape, bool)), 1)
    flat_mask = mask.reshape(-1)
    pos = np.cumsum(flat_mask) - 1
    centres, spheres = [], []
    for k, c in enumerate(np.stack(np.nonzero(mask), 1)):
        d = np.sqrt((((coords - c) * vox) ** 2).sum(1))
        inside = d < radius_mm
        in_mask = inside & flat_mask
        n_in = int(in_mask.sum())
        if n_in >= min_voxels and n_in / inside.sum() >= min_fraction:
            centres.append(k)
            spheres.append(pos[np.flatnonzero(in_mask)])
    return np.array(centres), spheres


@pytest.mark.parametrize("vox,radius,min_voxels,min_fraction",
                         [((1.0, 1.5, 2.5), 3.2, 5, 0.6), ((2.0, 2.0, 3.0), 4.0, 1, 0.0),
                          ((1.2, 0.8, 1.0), 2.5, 12, 0.3)])
def test_anisotropic_neighbourhoods_match_brute_force(mask, vox, radius, min_voxels,
                                                      min_fraction):
    ours = SL.sphere_neighbourhoods(mask, radius, vox, min_voxels=min_voxels,
                                    min_fraction=min_fraction)
    centres, spheres = _brute_force(mask, radius, np.asarray(vox), min_voxels, min_fraction)
    np.testing.assert_array_equal(ours.centres, centres)
    for i, ref in enumerate(spheres):
        np.testing.assert_array_equal(ours.sphere(i), ref)
    full = SL.sphere_offsets(radius, vox)
    assert ours.n_sphere_voxels == len(full) and ours.max_size <= len(full)


def test_neighbourhood_structure(mask, nb):
    assert nb.centres.dtype == nb.indptr.dtype == nb.indices.dtype == np.int64
    assert nb.indptr[0] == 0 and nb.indptr[-1] == nb.indices.size
    assert nb.mask_shape == SHAPE and nb.n_mask_voxels == int(mask.sum())
    np.testing.assert_array_equal(nb.mask_indices, np.flatnonzero(mask))
    sizes = nb.sizes()
    assert sizes.shape == (nb.n_centres,) and np.all(sizes >= 1)
    assert 0 < nb.n_centres < nb.n_mask_voxels  # the threshold removed some
    for i in range(nb.n_centres):
        row = nb.sphere(i)
        assert np.all(np.diff(row) > 0)  # sorted, unique
        assert nb.centres[i] in row
    # indices refer to mask voxels, so no neighbour can lie outside the mask
    assert nb.indices.min() >= 0 and nb.indices.max() < nb.n_mask_voxels
    assert nb.n_sphere_voxels == 33 - 6  # radius 2: 27 voxels (distance < 2)


def test_min_voxels_honoured(mask):
    loose = SL.sphere_neighbourhoods(mask, 2, (1, 1, 1))
    assert loose.n_centres == int(mask.sum())  # every mask voxel holds itself
    strict = SL.sphere_neighbourhoods(mask, 2, (1, 1, 1), min_voxels=20)
    assert np.all(strict.sizes() >= 20)
    np.testing.assert_array_equal(strict.centres, loose.centres[loose.sizes() >= 20])


def test_neighbourhood_validation(mask):
    with pytest.raises(ValueError):
        SL.sphere_neighbourhoods(mask[0], 2, (1, 1, 1))
    with pytest.raises(ValueError):
        SL.sphere_neighbourhoods(mask, -1, (1, 1, 1))
    with pytest.raises(ValueError):
        SL.sphere_neighbourhoods(mask, 2, (1, 0, 1))
    with pytest.raises(ValueError):
        SL.sphere_neighbourhoods(mask, 2, (1, 1, 1), min_fraction=1.5)
    empty = SL.sphere_neighbourhoods(np.zeros(SHAPE), 2, (1, 1, 1))
    assert empty.n_centres == 0 and empty.indices.size == 0


# ----------------------------------------------------------------------------- RDMs
@pytest.mark.parametrize("ours,theirs", [("correlation", "correlation"),
                                         ("sqeuclidean", "euclidean")])
def test_rdms_match_rsatoolbox(mask, patterns, ours, theirs):
    centres, neighbors = quiet(get_volume_searchlight, mask, 2, 0.0, truncate_at_boundary=True)
    data = np.zeros((patterns.shape[0], mask.size))
    data[:, np.flatnonzero(mask)] = patterns
    ref = quiet(get_searchlight_RDMs, data, centres, neighbors, np.arange(patterns.shape[0]),
                method=theirs, verbose=False).dissimilarities
    nb = SL.sphere_neighbourhoods(mask, 2, (1, 1, 1))
    got = SL.searchlight_rdms(patterns, nb, ours)
    assert got.shape == ref.shape and got.dtype == np.float64
    finite = np.isfinite(ref).all(1)  # 1-voxel spheres: correlation undefined (NaN in both)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=0, atol=1e-12)
    assert np.array_equal(np.isfinite(got).all(1), finite)


@pytest.mark.parametrize("measure", ["correlation", "cosine", "euclidean", "sqeuclidean",
                                     "mahalanobis"])
def test_every_measure_matches_calc_rdm(nb, patterns, measure):
    sub = subset(nb)
    got = SL.searchlight_rdms(patterns, nb, measure)
    assert got.shape == (nb.n_centres, 36)
    with one_thread():
        ref = np.stack([calc_rdm(patterns[:, nb.sphere(i)], measure) for i in sub])
    np.testing.assert_allclose(got[sub], ref, rtol=1e-12, atol=1e-12)
    got32 = SL.searchlight_rdms(patterns, nb, measure, dtype=np.float32)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32[sub], ref, rtol=0, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("measure,scipy_metric", [("correlation", "correlation"),
                                                  ("sqeuclidean", "sqeuclidean")])
def test_rdms_exact_for_patterns_with_a_large_offset(nb, patterns, measure, scipy_metric):
    """Voxels with a mean 1000x their spread (raw BOLD-like): the Gram products (one syrk
    per sphere) still give scipy's pdist to rounding, because correlation centres each
    sphere and the distances each voxel over the conditions before the product (raw
    moments would cancel ~6 digits here)."""
    import scipy.spatial.distance as ssd
    shifted = patterns + 1000.0
    sub = subset(nb, 60)
    got = SL.searchlight_rdms(shifted, nb, measure, num_threads=2)
    ref = np.stack([ssd.pdist(shifted[:, nb.sphere(i)], scipy_metric) for i in sub])
    if measure == "sqeuclidean":
        ref /= nb.sizes()[sub, None]  # rsatoolbox's 'euclidean': per voxel
    ok = np.isfinite(ref).all(1)  # 1-voxel spheres: correlation undefined
    np.testing.assert_allclose(got[sub][ok], ref[ok], rtol=0, atol=1e-12)


def test_noise_variance_is_a_diagonal_precision(nb, patterns, run_patterns):
    var = np.random.default_rng(SEED + 4).uniform(0.5, 2.0, nb.n_mask_voxels)
    sub = subset(nb, 60)
    got = SL.searchlight_rdms(patterns, nb, "mahalanobis", noise_variance=var)[sub]
    with one_thread():
        ref = np.stack([calc_rdm(patterns[:, s], "mahalanobis", noise_precision=1 / var[s])
                        for s in map(nb.sphere, sub)])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    got = SL.searchlight_rdms(run_patterns, nb, "crossnobis", noise_variance=var)[sub]
    with one_thread():
        ref = np.stack([calc_crossnobis_rdm(run_patterns[:, :, s], 1 / var[s])
                        for s in map(nb.sphere, sub)])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="noise_variance"):
        SL.searchlight_rdms(patterns, nb, "correlation", noise_variance=var)


def test_crossnobis_matches_calc_crossnobis_and_rsatoolbox(nb, run_patterns):
    got = SL.searchlight_rdms(run_patterns, nb, "crossnobis")
    sub = subset(nb)
    with one_thread():
        ref = np.stack([calc_crossnobis_rdm(run_patterns[:, :, nb.sphere(i)]) for i in sub])
    np.testing.assert_allclose(got[sub], ref, rtol=1e-12, atol=1e-12)
    assert np.any(got < 0)  # unbiased: small true distances come out negative
    n_runs, n_cond, _ = run_patterns.shape
    flat = run_patterns.reshape(n_runs * n_cond, -1)
    desc = {"conds": np.tile(np.arange(n_cond), n_runs), "runs": np.repeat(np.arange(n_runs),
                                                                          n_cond)}
    for i in np.linspace(0, nb.n_centres - 1, 12).astype(int):  # a subset keeps it fast
        ds = Dataset(flat[:, nb.sphere(i)], obs_descriptors=desc)
        theirs = quiet(rsa_calc_rdm, ds, method="crossnobis", descriptor="conds",
                       cv_descriptor="runs").dissimilarities[0]
        assert np.max(np.abs(got[i] - theirs)) <= 1e-6 * np.max(np.abs(theirs))


def test_crossnobis_algebra_is_average_over_ordered_run_pairs(nb, run_patterns):
    """Gram(sum over runs) - sum of per-run Grams == mean over r != s of d_r . d_s / c."""
    got = SL.searchlight_rdms(run_patterns, nb, "crossnobis", centre_range=(0, 5))
    n_runs, n_cond, _ = run_patterns.shape
    rows, cols = np.triu_indices(n_cond, 1)
    for i in range(5):
        x = run_patterns[:, :, nb.sphere(i)]
        d = x[:, rows] - x[:, cols]  # (runs, pairs, voxels)
        ref = np.mean([np.sum(d[r] * d[s], -1) for r in range(n_runs) for s in range(n_runs)
                       if r != s], axis=0) / x.shape[-1]
        np.testing.assert_allclose(got[i], ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- ranks
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rankdata_average_matches_scipy(dtype):
    rng = np.random.default_rng(SEED + 5)
    x = np.round(rng.normal(size=(7, 300)) * 3)  # many ties
    x[0] = 1.0  # all tied
    x[1] = np.arange(300)[::-1]  # no ties
    x[2, :4] = [0.0, -0.0, np.inf, -np.inf]  # signed zeros tie; infinities rank last / first
    got = SL.rankdata_average(torch.as_tensor(x, dtype=dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), scipy.stats.rankdata(x, axis=1))
    x3 = x.reshape(7, 3, 100)
    np.testing.assert_array_equal(SL.rankdata_average(torch.as_tensor(x3)).numpy(),
                                  scipy.stats.rankdata(x3, axis=-1))
    np.testing.assert_array_equal(SL.rankdata_average(torch.as_tensor(x[3])).numpy(),
                                  scipy.stats.rankdata(x[3]))


def test_rankdata_average_float64_near_ties():
    """float64 values that differ only in their last bits (the sort keys drop those bits):
    exact order and exact ties must survive."""
    rng = np.random.default_rng(SEED + 7)
    base = rng.random(3000) + 0.5
    x = np.stack([np.concatenate([base, base * (1 + 2 ** -50), base, -base * (1 + 2 ** -51)]),
                  rng.permutation(np.concatenate([base, np.nextafter(base, 2), base]).repeat(
                      4)[:12000])])
    np.testing.assert_array_equal(SL.rankdata_average(torch.as_tensor(x)).numpy(),
                                  scipy.stats.rankdata(x, axis=1))
    big = rng.normal(size=(3, 200_000)).astype(np.float32)  # float32: many exact ties
    np.testing.assert_array_equal(SL.rankdata_average(torch.as_tensor(big)).numpy(),
                                  scipy.stats.rankdata(big, axis=1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_rank_path_matches_numpy_path(dtype):
    """The CUDA ranking path (torch.sort), run on CPU tensors, equals the numpy key sort."""
    rng = np.random.default_rng(SEED + 9)
    x = np.round(rng.normal(size=(9, 400)) * 4)
    x[0] = 2.0
    x[1] = rng.normal(size=400)
    x[2, 5] = np.nan
    t = torch.as_tensor(x, dtype=dtype)
    for mode in ("ranks", "spearman", "rho_a"):
        p_np, v_np, b_np = ranks._rank_transform(t, mode)
        p_t, v_t, b_t = ranks._rank_transform(t, mode, numpy_sort=False)
        a = torch.empty_like(t).scatter_(1, p_np, v_np)
        b = torch.empty_like(t).scatter_(1, p_t, v_t)
        ok = ~b_np
        np.testing.assert_array_equal(b_np.numpy(), b_t.numpy())
        np.testing.assert_allclose(a[ok].numpy(), b[ok].numpy(), rtol=1e-6 if dtype ==
                                   torch.float32 else 1e-15, atol=1e-7)
    assert b_np[2] and not b_np[[0, 1, 3]].any()


def test_torch_tie_ranks_match_numpy():
    """The CUDA ranking path's tie handling, checked on CPU tensors."""
    rng = np.random.default_rng(SEED + 8)
    svals = np.sort(np.round(rng.normal(size=(6, 500)) * 4), axis=1)
    eq = svals[:, 1:] == svals[:, :-1]
    ref = ranks._sorted_average_ranks_numpy(eq)
    np.testing.assert_array_equal(ranks._sorted_average_ranks_torch(torch.as_tensor(eq)).numpy(),
                                  ref)
    np.testing.assert_array_equal(ref, scipy.stats.rankdata(svals, axis=1))


# ----------------------------------------------------------------------------- scores
@pytest.mark.parametrize("ours,theirs", [("spearman", "spearman"), ("pearson", "corr")])
def test_scores_match_rsatoolbox_evaluate(nb, patterns, models, ours, theirs):
    scores = SL.searchlight_rsa(patterns, nb, models, comparison=ours)
    assert scores.shape == (len(models), nb.n_centres)
    sub = np.linspace(0, nb.n_centres - 1, 25).astype(int)
    rdms = SL.searchlight_rdms(patterns, nb)[sub]
    mods = [ModelFixed(f"m{i}", RDMs(m[None])) for i, m in enumerate(models)]
    res = quiet(evaluate_models_searchlight, RDMs(rdms), mods, eval_fixed, method=theirs)
    ref = np.stack([r.evaluations[0, :, 0] for r in res], axis=1)
    np.testing.assert_allclose(scores[:, sub], ref, rtol=0, atol=1e-12)
    if ours == "pearson":
        s32 = SL.searchlight_rsa(patterns, nb, models, comparison=ours, dtype=np.float32)
        assert s32.dtype == np.float32
        np.testing.assert_allclose(s32[:, sub], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("comparison", LINEAR_MEASURES)
@pytest.mark.parametrize("measure", ["correlation", "crossnobis"])
def test_every_linear_measure_matches_compare_rdms(nb, patterns, run_patterns, models,
                                                   comparison, measure):
    data = run_patterns if measure == "crossnobis" else patterns
    mods = models if measure != "crossnobis" else models[:, :28]
    scores = SL.searchlight_rsa(data, nb, mods, rdm_measure=measure, comparison=comparison)
    rdms = SL.searchlight_rdms(data, nb, measure)
    ref = compare_rdms(rdms, mods, comparison).T
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-12)


def test_spearman_with_tied_rdm_entries(nb, patterns, models):
    """Duplicated conditions give exactly tied dissimilarities; ranks must average them."""
    tied = patterns.copy()
    tied[1] = tied[0]
    tied[4] = tied[3]
    rdms = SL.searchlight_rdms(tied, nb, "sqeuclidean")
    assert any(len(np.unique(r)) < r.size for r in rdms)
    for comparison in ("spearman", "rho_a"):
        scores = SL.searchlight_rsa(tied, nb, models, rdm_measure="sqeuclidean",
                                    comparison=comparison)
        np.testing.assert_allclose(scores, compare_rdms(rdms, models, comparison).T,
                                   rtol=0, atol=1e-12)


def test_constant_rdms_and_models_give_nan(nb, patterns, models):
    zeros = np.zeros_like(patterns)
    for comparison in ("spearman", "pearson", "cosine"):
        s = SL.searchlight_rsa(zeros, nb, models, rdm_measure="sqeuclidean",
                               comparison=comparison)
        assert np.all(np.isnan(s))
    const = models.copy()
    const[1] = 0.5
    s = SL.searchlight_rsa(patterns, nb, const, comparison="spearman")
    assert np.all(np.isnan(s[1])) and np.all(np.isfinite(s[[0, 2, 3]]))
    # a 1-voxel sphere has no correlation distance (NaN RDM): its scores are NaN
    small = SL.sphere_neighbourhoods(np.pad(np.ones((1, 1, 1)), 2), 1.5, (1, 1, 1))
    s = SL.searchlight_rsa(patterns[:, :1], small, models)
    assert s.shape == (4, 1) and np.all(np.isnan(s))


def test_kendall_and_unknown_measures_rejected(nb, patterns, models):
    with pytest.raises(ValueError, match="kendall"):
        SL.searchlight_rsa(patterns, nb, models, comparison="kendall_tau_a")
    with pytest.raises(ValueError):
        SL.searchlight_rsa(patterns, nb, models, comparison="nope")
    with pytest.raises(ValueError):
        SL.searchlight_rdms(patterns, nb, "poisson")
    with pytest.raises(ValueError):
        SL.searchlight_rsa(patterns, nb, models[:, :10])
    with pytest.raises(ValueError):
        SL.searchlight_rdms(patterns[:, :-1], nb)
    with pytest.raises(ValueError):
        SL.searchlight_rdms(patterns, nb, "crossnobis")
    bad = patterns.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SL.searchlight_rdms(bad, nb)
    with pytest.raises(ValueError):
        SL.searchlight_rdms(patterns, nb, centre_range=(0, nb.n_centres + 1))


# ----------------------------------------------------------------------------- chunks
def test_result_independent_of_memory_budget_and_threads(nb, patterns, models):
    ref = SL.searchlight_rsa(patterns, nb, models)
    tiny = SL.searchlight_rsa(patterns, nb, models, memory_budget_bytes=1)  # 1 sphere/chunk
    np.testing.assert_allclose(tiny, ref, rtol=0, atol=1e-14)
    one = SL.searchlight_rsa(patterns, nb, models, num_threads=1)
    np.testing.assert_array_equal(one, ref)
    rdms = SL.searchlight_rdms(patterns, nb, memory_budget_bytes=20_000)
    np.testing.assert_allclose(rdms, SL.searchlight_rdms(patterns, nb), rtol=0, atol=1e-14)


@pytest.mark.parametrize("n_parts", [4, 7])
def test_partitioned_run_is_bit_identical(nb, patterns, run_patterns, models, n_parts):
    budget = 40_000  # a few spheres per chunk: partitions cut through chunks
    parts = SL.partition_centres(nb.n_centres, n_parts)
    for data, measure, comparison in ((patterns, "correlation", "spearman"),
                                      (run_patterns, "crossnobis", "pearson")):
        mods = models[:, :data.shape[-2] * (data.shape[-2] - 1) // 2]
        full = SL.searchlight_rsa(data, nb, mods, rdm_measure=measure, comparison=comparison,
                                  memory_budget_bytes=budget)
        split = np.concatenate([SL.searchlight_rsa(data, nb, mods, rdm_measure=measure,
                                                   comparison=comparison, centre_range=p,
                                                   memory_budget_bytes=budget)
                                for p in parts], axis=1)
        assert np.array_equal(split, full, equal_nan=True)
    full = SL.searchlight_rdms(patterns, nb, memory_budget_bytes=budget)
    split = np.concatenate([SL.searchlight_rdms(patterns, nb, centre_range=p,
                                                memory_budget_bytes=budget) for p in parts])
    assert np.array_equal(split, full, equal_nan=True)


def test_partition_centres():
    parts = SL.partition_centres(10, 4)
    assert parts == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert SL.partition_centres(3, 5) == [(0, 1), (1, 2), (2, 3), (3, 3), (3, 3)]
    assert SL.partition_centres(0, 2) == [(0, 0), (0, 0)]
    with pytest.raises(ValueError):
        SL.partition_centres(10, 0)


def test_chunk_size_for_budget():
    small = SL.chunk_size_for_budget(60, 27, 10 ** 6)
    big = SL.chunk_size_for_budget(60, 27, 10 ** 8)
    assert 1 <= small < big
    assert SL.chunk_size_for_budget(60, 27, 1) == 1
    assert SL.chunk_size_for_budget(60, 27, 10 ** 12, n_centres=100) == 100
    assert SL.chunk_size_for_budget(60, 27, 10 ** 8, comparison="spearman") < big
    assert SL.chunk_size_for_budget(60, 27, 10 ** 8, itemsize=4) > big
    assert SL.chunk_size_for_budget(60, 27, 10 ** 8, n_runs=6) < big


def test_scores_to_volume(nb, patterns, models):
    scores = SL.searchlight_rsa(patterns, nb, models)
    vol = SL.scores_to_volume(scores, nb)
    assert vol.shape == (*SHAPE, len(models)) and vol.dtype == np.float64
    flat = vol.reshape(-1, len(models))
    at = nb.mask_indices[nb.centres]
    np.testing.assert_array_equal(flat[at], scores.T)
    off = np.ones(flat.shape[0], bool)
    off[at] = False
    assert np.all(np.isnan(flat[off]))
    part = SL.scores_to_volume(scores[0, 5:9], nb, centre_range=(5, 9))
    assert part.shape == (*SHAPE, 1) and np.sum(np.isfinite(part)) == 4
    with pytest.raises(ValueError):
        SL.scores_to_volume(scores[:, :3], nb)


# ----------------------------------------------------------------------------- planted signal
def test_planted_signal_is_found():
    rng = np.random.default_rng(SEED + 6)
    shape, n_cond = (16, 16, 16), 12
    mask = np.ones(shape, bool)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    centre = np.array([5, 9, 8])
    ball = (np.sqrt(((grid - centre) ** 2).sum(-1)) < 3.5).reshape(-1)
    latent = rng.normal(size=(n_cond, 6))
    patterns = rng.normal(size=(n_cond, mask.size))
    patterns[:, ball] = latent @ rng.normal(size=(6, ball.sum())) + 0.3 * rng.normal(
        size=(n_cond, ball.sum()))
    model_a = calc_rdm(latent @ rng.normal(size=(6, 500)), "correlation")
    model_b = rng.permutation(model_a)
    nb = SL.sphere_neighbourhoods(mask, 2, (1, 1, 1), min_fraction=1.0)
    scores = SL.searchlight_rsa(patterns, nb, np.stack([model_a, model_b]))
    top = nb.centres[np.argsort(scores[0])[::-1][:20]]
    assert np.all(ball[top])
    vol = SL.scores_to_volume(scores, nb)
    peak = np.unravel_index(np.nanargmax(vol[..., 0]), shape)
    assert np.sqrt(((np.array(peak) - centre) ** 2).sum()) <= 2.0
    assert np.nanmax(scores[0]) > 0.5 > np.nanmax(np.abs(scores[1]))


# ----------------------------------------------------------------------------- devices
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(nb, patterns, run_patterns, models):
    for comparison in LINEAR_MEASURES:
        cpu = SL.searchlight_rsa(patterns, nb, models, comparison=comparison)
        gpu = SL.searchlight_rsa(patterns, nb, models, comparison=comparison, device="cuda")
        np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-12)
    cpu = SL.searchlight_rdms(run_patterns, nb, "crossnobis")
    gpu = SL.searchlight_rdms(run_patterns, nb, "crossnobis", device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-12, atol=1e-12)
    g32 = SL.searchlight_rsa(patterns, nb, models, comparison="pearson", device="cuda",
                             dtype=np.float32)
    cpu = SL.searchlight_rsa(patterns, nb, models, comparison="pearson")
    np.testing.assert_allclose(g32, cpu, rtol=0, atol=1e-5)
    parts = [SL.searchlight_rsa(patterns, nb, models, device="cuda", centre_range=p,
                                memory_budget_bytes=40_000)
             for p in SL.partition_centres(nb.n_centres, 4)]
    full = SL.searchlight_rsa(patterns, nb, models, device="cuda", memory_budget_bytes=40_000)
    assert np.array_equal(np.concatenate(parts, 1), full, equal_nan=True)


def test_on_chunk_reports_every_centre_once(rng):
    """The progress callback receives each chunk's centre count; they add up to the range."""
    mask = rng.random((8, 9, 7)) > 0.2
    nb = SL.sphere_neighbourhoods(mask, 2.0, (1.0, 1.0, 1.0), min_voxels=3)
    patterns = rng.standard_normal((10, int(mask.sum())))
    models = rng.random((2, 45))
    counts: list[int] = []
    full = SL.searchlight_rsa(patterns, nb, models, memory_budget_bytes=64 * 1024, on_chunk=counts.append)
    assert len(counts) > 1 and sum(counts) == nb.n_centres
    np.testing.assert_array_equal(full, SL.searchlight_rsa(patterns, nb, models, memory_budget_bytes=64 * 1024))
