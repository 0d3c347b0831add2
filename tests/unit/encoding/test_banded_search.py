"""The batched random search of banded ridge (bids_dnn.encoding._random_search) against himalaya's
own solver and estimator, a brute-force float64 refit, and itself under other batch sizes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bids_dnn.encoding import banded_ridge, make_folds, pearson_columns
from bids_dnn.encoding._random_search import kernel_weight_candidates, refit_fold, search_fold

ALPHAS = np.logspace(-2, 6, 9)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    import himalaya.kernel_ridge  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def runs_data(rng, n_runs=4, n_per=40, n_targets=60, dtype=np.float64):
    """Two spaces (AR-free Gaussian), targets driven by A, by B, by both or by nothing."""
    runs = np.repeat(np.arange(n_runs), n_per)
    a = rng.standard_normal((runs.size, 12))
    b = rng.standard_normal((runs.size, 7))
    kind = np.arange(n_targets) % 4
    y = rng.standard_normal((runs.size, n_targets))
    y[:, kind == 0] += a @ rng.standard_normal((12, (kind == 0).sum())) * 0.4
    y[:, kind == 1] += b @ rng.standard_normal((7, (kind == 1).sum())) * 0.4
    y[:, kind == 2] += (a[:, :7] + b) @ rng.standard_normal((7, (kind == 2).sum())) * 0.3
    return runs, a, b, y.astype(dtype)


def kernels(spaces, train, test=None):
    out_tr, out_te = [], []
    for x in spaces:
        mean, sd = x[train].mean(0), x[train].std(0)
        xtr = (x[train] - mean) / sd
        out_tr.append(xtr @ xtr.T)
        if test is not None:
            out_te.append(((x[test] - mean) / sd) @ xtr.T)
    return np.stack(out_tr), (np.stack(out_te) if test is not None else None)


def run_inner(runs, train):
    g = runs[train]
    return [(np.flatnonzero(g != q), np.flatnonzero(g == q)) for q in np.unique(g)]


def test_candidates_are_himalayas_seeded_draws():
    from himalaya.kernel_ridge import generate_dirichlet_samples

    gammas = kernel_weight_candidates(7, 3, (0.1, 1.0), 11)
    ref = np.asarray(generate_dirichlet_samples(7, 3, concentration=[0.1, 1.0], random_state=11))
    np.testing.assert_allclose(gammas[1:], ref[1:], rtol=1e-15)
    np.testing.assert_allclose(gammas[0], 1 / 3)
    np.testing.assert_allclose(gammas.sum(1), 1.0, atol=1e-12)
    with pytest.raises(ValueError):
        kernel_weight_candidates(0, 2, (1.0,), 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_search_picks_himalayas_candidate_and_alpha(rng, dtype):
    """Same kernels, folds, candidates, alphas and seed as himalaya's
    solve_multiple_kernel_ridge_random_search(fit_intercept=True): the same choice per target
    (the same arithmetic; at least 99% asserted in float32, where a BLAS could round a near tie
    differently), whatever the target batch."""
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import solve_multiple_kernel_ridge_random_search

    B = set_backend("numpy")
    runs, a, b, y = runs_data(rng, n_targets=80, dtype=dtype)
    train = np.flatnonzero(runs != 0)
    k_train, _ = kernels([a, b], train)
    inner = run_inner(runs, train)
    gammas = kernel_weight_candidates(6, 2, (0.1, 1.0), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deltas, _, _, best_alphas, _ = solve_multiple_kernel_ridge_random_search(
            k_train.astype(dtype), y[train], n_iter=6, concentration=[0.1, 1.0], alphas=ALPHAS.astype(dtype),
            cv=inner, fit_intercept=True, return_weights="dual", random_state=4, progress_bar=False,
            return_alphas=True)
    ref_gamma = np.exp(np.asarray(deltas, dtype=np.float64)) * np.asarray(best_alphas, dtype=np.float64)[None]
    for batch in (80, 17):
        g_idx, a_idx = search_fold(B, k_train, y, train, inner, gammas, ALPHAS, np.dtype(dtype), batch,
                                   np.zeros(y.shape[1], dtype=bool))
        same_alpha = np.isclose(ALPHAS[a_idx], best_alphas, rtol=1e-6)
        same_gamma = np.all(np.abs(gammas[g_idx].T - ref_gamma) < 1e-5, axis=0)
        assert np.mean(same_alpha & same_gamma) >= (1.0 if dtype == np.float64 else 0.99)
        assert np.unique(g_idx).size > 1 and np.unique(a_idx).size > 1          # a real search


def test_refit_equals_a_direct_float64_solve(rng):
    runs, a, b, y = runs_data(rng, n_targets=9)
    train, test = np.flatnonzero(runs != 1), np.flatnonzero(runs == 1)
    k_tr, k_te = kernels([a, b], train, test)
    gammas = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    gamma_index = np.arange(9) % 3
    alpha_values = np.where(np.arange(9) < 4, 3.0, 250.0)
    seen = np.zeros(9, dtype=bool)
    for idx, offset, parts in refit_fold(k_tr, k_te, gammas, gamma_index, alpha_values, y, train,
                                         np.arange(1, 9), np.dtype(np.float64), batch=2):
        assert idx.size <= 2 and parts.shape == (2, test.size, idx.size)
        for j, t in enumerate(idx):
            g = gammas[gamma_index[t]]
            yc = y[train, t] - y[train, t].mean()
            w = np.linalg.solve(np.tensordot(g, k_tr, 1) + alpha_values[t] * np.eye(train.size), yc)
            for i in range(2):
                np.testing.assert_allclose(parts[i, :, j], g[i] * k_te[i] @ w, atol=1e-9)
            assert offset[j] == pytest.approx(y[train, t].mean(), abs=1e-12)
            seen[t] = True
    assert seen[1:].all() and not seen[0]


def test_banded_ridge_equals_himalaya_estimator_in_float32(rng):
    """float32 responses: himalaya's choices (candidate and alpha); the predictions are the exact
    float64 refit with those choices (himalaya's own float32 refit is off by up to ~1e-3 of the
    prediction scale at alpha 0.01 here: rank-19 kernels, eigenvalues to ~1e3)."""
    from himalaya.kernel_ridge import MultipleKernelRidgeCV

    runs, a, b, y = runs_data(rng, n_targets=48, dtype=np.float32)
    folds = [(np.flatnonzero(runs != r), np.flatnonzero(runs == r)) for r in np.unique(runs)]
    res = banded_ridge([a, b], y, folds, ALPHAS, inner_groups=runs, n_iter=5, seed=2)
    assert res.predictions.dtype == np.float32 and res.fold_r.shape == (4, 48)
    same = []
    for k, (train, test) in enumerate(folds):
        k_tr, k_te = kernels([a, b], train, test)
        model = MultipleKernelRidgeCV(kernels="precomputed", solver="random_search", fit_intercept=True,
                                      cv=run_inner(runs, train), random_state=2,
                                      solver_params={"n_iter": 5, "alphas": ALPHAS.astype(np.float32),
                                                     "progress_bar": False})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(k_tr.astype(np.float32), y[train])
            pred = np.asarray(model.predict(k_te.astype(np.float32)), dtype=np.float64)
        weights = np.exp(np.asarray(model.deltas_, dtype=np.float64))
        alpha = 1 / weights.sum(0)
        same.append(np.isclose(res.alphas[k], alpha, rtol=1e-4)
                    & np.all(np.abs(res.space_weights[k] - weights * alpha) < 1e-5, axis=0))
        exact = np.empty((test.size, y.shape[1]))
        for v in range(y.shape[1]):
            w, lam = res.space_weights[k, :, v], res.alphas[k, v]
            yc = y[train, v].astype(np.float64) - y[train, v].astype(np.float64).mean()
            coef = np.linalg.solve(np.tensordot(w, k_tr, 1) + lam * np.eye(train.size), yc)
            exact[:, v] = np.tensordot(w, k_te, 1) @ coef + y[train, v].astype(np.float64).mean()
        scale = np.abs(exact).max(axis=0)
        assert np.all(np.abs(res.predictions[test] - exact).max(axis=0) <= 1e-5 * scale)
        # fold r from the float64 predictions (the stored float32 ones round nearly constant predictions)
        np.testing.assert_allclose(res.fold_r[k], pearson_columns(y[test], exact), atol=1e-6)
        ok = same[-1]
        assert np.all(np.abs(pred[:, ok] - exact[:, ok]).max(axis=0) <= 1e-2 * scale[ok])   # himalaya's float32
    assert np.mean(same) >= 0.99


def test_batches_and_himalaya_fallback_give_the_same_fit(rng):
    """Target batches change nothing; solver parameters the batched search does not take run
    himalaya's estimator instead, with the same result (float64)."""
    runs, a, b, y = runs_data(rng, n_targets=30)
    folds = make_folds(y.shape[0], groups=runs)
    kw = {"inner_groups": runs, "n_iter": 4, "seed": 1}
    ref = banded_ridge([a, b], y, folds, ALPHAS, **kw)
    small = banded_ridge([a, b], y, folds, ALPHAS, target_batch=7, **kw)
    him = banded_ridge([a, b], y, folds, ALPHAS, solver_params={"conservative": False}, **kw)
    for other in (small, him):
        np.testing.assert_allclose(other.predictions, ref.predictions, atol=1e-8)
        np.testing.assert_allclose(other.alphas, ref.alphas, rtol=1e-8)
        np.testing.assert_allclose(other.space_weights, ref.space_weights, atol=1e-8)
        np.testing.assert_allclose(other.fold_r, ref.fold_r, atol=1e-8)
        np.testing.assert_allclose(other.r2_split, ref.r2_split, atol=1e-8)
        np.testing.assert_allclose(other.r2_intercept, ref.r2_intercept, atol=1e-8)
    np.testing.assert_allclose(ref.r2_split.sum(0) + ref.r2_intercept, ref.r2, atol=1e-10)
    np.testing.assert_allclose(ref.r, np.mean(ref.fold_r, axis=0), atol=1e-12)


def test_bad_targets_are_nan_and_leave_the_others_alone(rng):
    runs, a, b, y = runs_data(rng, n_targets=12)
    folds = make_folds(y.shape[0], groups=runs)
    ref = banded_ridge([a, b], y, folds, ALPHAS, inner_groups=runs, n_iter=3)
    y_bad = y.copy()
    y_bad[5, 3] = np.nan
    res = banded_ridge([a, b], y_bad, folds, ALPHAS, inner_groups=runs, n_iter=3)
    ok = np.arange(12) != 3
    for name in ("r", "r2", "r2_intercept"):
        assert np.isnan(getattr(res, name)[3])
        np.testing.assert_allclose(getattr(res, name)[ok], getattr(ref, name)[ok], atol=1e-10)
    assert np.isnan(res.fold_r[:, 3]).all() and np.isnan(res.alphas[:, 3]).all()
    assert np.isnan(res.space_weights[:, :, 3]).all() and np.isnan(res.predictions[:, 3]).all()
    np.testing.assert_allclose(res.predictions[:, ok], ref.predictions[:, ok], atol=1e-10)
