"""Leave-one-run-out time-series encoding: wiring against hand-built pipelines, himalaya and
sklearn; no leakage from a held-out run; batching."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from bids_dnn.encoding import cross_validated_ridge
from bids_dnn.timeseries import banded_batches, timeseries_encoding

ALPHAS = np.logspace(-1, 4, 5)
DELAYS = (1, 2, 3)


def hand_pipeline(x, runs, delays=DELAYS):
    """Per-run scipy z-scoring, then per-run shifts with zero fill (contiguous runs)."""
    out = []
    for r in np.unique(runs):
        z = scipy.stats.zscore(x[runs == r], axis=0)
        blocks = []
        for d in delays:
            shifted = np.zeros_like(z)
            shifted[d:] = z[:z.shape[0] - d]
            blocks.append(shifted)
        out.append(np.hstack(blocks))
    return np.vstack(out)


def data(rng, n_runs=4, n_per=60, n_vox=12, dtype=np.float64):
    runs = np.repeat(np.arange(n_runs) * 10 + 5, n_per)     # labels 5, 15, 25, ...
    a = rng.standard_normal((runs.size, 4))
    b = rng.standard_normal((runs.size, 3))
    da = hand_pipeline(a, runs)
    y = rng.standard_normal((runs.size, n_vox))
    y[:, : n_vox // 2] += 0.5 * da @ rng.standard_normal((da.shape[1], n_vox // 2))
    return runs, a, b, y.astype(dtype)


def test_single_space_equals_hand_pipeline_and_sklearn(rng):
    runs, a, _, y = data(rng)
    res = timeseries_encoding({"a": a}, y, runs, alphas=ALPHAS, delays=DELAYS, keep_predictions=True)
    x = hand_pipeline(a, runs)
    yz = np.vstack([scipy.stats.zscore(y[runs == r], axis=0) for r in np.unique(runs)])
    folds = [(np.flatnonzero(runs != r), np.flatnonzero(runs == r)) for r in np.unique(runs)]
    ref = cross_validated_ridge(x, yz, folds, ALPHAS, inner_groups=runs)
    np.testing.assert_allclose(res.r, ref.r, atol=1e-10)
    np.testing.assert_allclose(res.r2, ref.r2, atol=1e-10)
    np.testing.assert_allclose(res.alphas, ref.alphas)
    np.testing.assert_allclose(res.predictions, ref.predictions, atol=1e-10)
    # each fold's model is sklearn's Ridge on the training runs' standardised design, at the chosen alpha
    for k, (train, test) in enumerate(folds):
        scaler = StandardScaler().fit(x[train])
        for v in (0, 7):
            m = Ridge(alpha=res.alphas[k, v]).fit(scaler.transform(x[train]), yz[train, v])
            np.testing.assert_allclose(res.predictions[test, v], m.predict(scaler.transform(x[test])), atol=1e-8)
            assert res.fold_r[k, v] == pytest.approx(np.corrcoef(res.predictions[test, v], yz[test, v])[0, 1])
    np.testing.assert_array_equal(res.fold_runs, [5, 15, 25, 35])
    np.testing.assert_array_equal(res.fold_ids, np.repeat(np.arange(4), 60))
    assert res.model == "ridge" and res.r2_split is None and res.n_features == (12,) and res.delays == DELAYS
    assert res.fold_r.shape == res.alphas.shape == (4, 12)


def test_banded_equals_himalaya_on_the_same_kernels(rng):
    from himalaya.kernel_ridge import MultipleKernelRidgeCV

    runs, a, b, y = data(rng)
    res = timeseries_encoding({"a": a, "b": b}, y, runs, alphas=ALPHAS, delays=DELAYS, n_iter=6, seed=3,
                              keep_predictions=True)
    xs = [hand_pipeline(a, runs), hand_pipeline(b, runs)]
    yz = np.vstack([scipy.stats.zscore(y[runs == r], axis=0) for r in np.unique(runs)])
    for k, r in enumerate(np.unique(runs)):
        train, test = np.flatnonzero(runs != r), np.flatnonzero(runs == r)
        k_tr, k_te = [], []
        for x in xs:
            scaler = StandardScaler().fit(x[train])
            xtr, xte = scaler.transform(x[train]), scaler.transform(x[test])
            k_tr.append(xtr @ xtr.T)
            k_te.append(xte @ xtr.T)
        inner = [(np.flatnonzero(runs[train] != q), np.flatnonzero(runs[train] == q))
                 for q in np.unique(runs[train])]
        model = MultipleKernelRidgeCV(kernels="precomputed", solver="random_search", fit_intercept=True, cv=inner,
                                      random_state=3,
                                      solver_params={"n_iter": 6, "alphas": ALPHAS, "progress_bar": False})
        model.fit(np.stack(k_tr), yz[train])
        np.testing.assert_allclose(res.predictions[test], model.predict(np.stack(k_te)), atol=1e-8)
        np.testing.assert_allclose(res.alphas[k], 1 / np.exp(model.deltas_).sum(0), rtol=1e-8)
        np.testing.assert_allclose(res.fold_r[k], [np.corrcoef(res.predictions[test, v], yz[test, v])[0, 1]
                                                   for v in range(y.shape[1])], atol=1e-10)
    np.testing.assert_allclose(res.r, res.fold_r.mean(0), atol=1e-10)
    np.testing.assert_allclose(res.r2_split.sum(0) + res.r2_intercept, res.r2, atol=1e-10)
    assert res.model == "banded" and res.space_names == ("a", "b") and res.space_weights.shape == (4, 2, 12)


@pytest.mark.parametrize("spaces", ["a", "ab"])
def test_test_runs_bold_never_reaches_its_fold(rng, spaces):
    runs, a, b, y = data(rng)
    feats = {"a": a, "b": b} if spaces == "ab" else {"a": a}
    kw = {"alphas": ALPHAS, "delays": DELAYS, "n_iter": 4, "keep_predictions": True}
    ref = timeseries_encoding(feats, y, runs, **kw)
    held = runs == 25                                        # fold 2
    changed = y.copy()
    changed[held] = 5 * rng.standard_normal((held.sum(), y.shape[1])) + 3
    res = timeseries_encoding(feats, changed, runs, **kw)
    np.testing.assert_array_equal(res.alphas[2], ref.alphas[2])
    np.testing.assert_allclose(res.predictions[held], ref.predictions[held], atol=1e-12)
    assert not np.allclose(res.predictions[~held], ref.predictions[~held])   # run 25 trains the other folds


@pytest.mark.parametrize("spaces, pca", [("a", None), ("a", 5), ("ab", None), ("ab", 4)])
def test_test_runs_features_leave_its_model_unchanged(rng, spaces, pca):
    """Fold 2's model is fitted without run 25: its predictions of run 25 are an affine function
    of run 25's features (with the same alphas), which fails when the fit (scaling, PCA, alpha
    choice, weights) depends on them, as it does in the folds that train on run 25."""
    runs, a, b, y = data(rng)
    held = runs == 25
    other = rng.standard_normal(a.shape)

    def fit(t):
        xa = a.copy()
        xa[held] = (1 - t) * a[held] + t * other[held]
        feats = {"a": xa, "b": b} if spaces == "ab" else {"a": xa}
        return timeseries_encoding(feats, y, runs, alphas=ALPHAS, delays=DELAYS, pca=pca, n_iter=4,
                                   standardize_features=False, keep_predictions=True)

    r0, r1, r_half = fit(0.0), fit(1.0), fit(0.5)
    np.testing.assert_array_equal(r_half.alphas[2], r0.alphas[2])
    np.testing.assert_array_equal(r1.alphas[2], r0.alphas[2])
    np.testing.assert_allclose(r_half.predictions[held], (r0.predictions[held] + r1.predictions[held]) / 2,
                               atol=1e-10)
    mid = (r0.predictions[~held] + r1.predictions[~held]) / 2
    assert np.abs(r_half.predictions[~held] - mid).max() > 1e-4


def test_standardized_features_of_test_run_do_not_change_its_alphas(rng):
    runs, a, _, y = data(rng)
    held = runs == 15
    changed = a.copy()
    changed[held] = 10 * rng.standard_normal((held.sum(), a.shape[1])) - 4
    r0 = timeseries_encoding({"a": a}, y, runs, alphas=ALPHAS, delays=DELAYS)
    r1 = timeseries_encoding({"a": changed}, y, runs, alphas=ALPHAS, delays=DELAYS)
    np.testing.assert_array_equal(r0.alphas[1], r1.alphas[1])


def test_memory_budget_batches_do_not_change_results(rng):
    runs, a, b, y = data(rng, n_per=40, n_vox=150)
    kw = {"alphas": ALPHAS, "delays": DELAYS, "n_iter": 3, "keep_predictions": True}
    ref = timeseries_encoding({"a": a, "b": b}, y, runs, **kw)
    res = timeseries_encoding({"a": a, "b": b}, y, runs, memory_budget_bytes=1, **kw)   # batches of 64 voxels
    np.testing.assert_allclose(res.predictions, ref.predictions, atol=1e-10)
    np.testing.assert_allclose(res.r2_split, ref.r2_split, atol=1e-10)
    np.testing.assert_allclose(res.alphas, ref.alphas)


def test_banded_batches_respect_the_budget():
    runs = np.repeat(np.arange(4), 750)
    folds = [(np.flatnonzero(runs != r), np.flatnonzero(runs == r)) for r in range(4)]
    inner = [[(np.arange(1500), np.arange(750))] * 3] * 4
    sizes = []
    for budget in (2**28, 2**30, 2**32):
        batch, inner_batch = banded_batches(10**6, folds, inner, 2, 13, 20, 4, budget)
        per_voxel = max((1500 + 3 * 750) * 4, (2 * 2250 + 5 * 750) * 8)   # search / float64 refit
        assert batch * per_voxel <= budget < (batch + 1) * per_voxel
        assert inner_batch == min(batch, 8 * 2**20 // ((1500 + 2 * 750) * 4))     # 8 MiB search chunks
        sizes.append(batch)
    assert sizes[0] < sizes[1] < sizes[2]
    assert banded_batches(100, folds, inner, 2, 13, 20, 4, 2**40) == (100, 100)
    assert banded_batches(10**6, folds, inner, 2, 13, 20, 4, 1) == (64, 64)


def test_bad_voxels_and_errors(rng):
    runs, a, _, y = data(rng)
    y[3, 1] = np.nan
    y[:, 2] = 1.0
    res = timeseries_encoding({"a": a}, y, runs, alphas=ALPHAS)
    assert np.isnan(res.r[[1, 2]]).all() and np.isfinite(res.r[[0, 3]]).all()
    with pytest.raises(ValueError):
        timeseries_encoding({"a": a}, y, np.zeros(runs.size), alphas=ALPHAS)
    with pytest.raises(ValueError):
        timeseries_encoding({"a": a[:-1]}, y, runs, alphas=ALPHAS)
    with pytest.raises(ValueError):
        timeseries_encoding({}, y, runs, alphas=ALPHAS)
    bad = a.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError):
        timeseries_encoding({"a": bad}, y, runs, alphas=ALPHAS)
