"""Encoding engine: folds, agreement with scikit-learn and himalaya, leakage, planted truth,
bad targets, noise ceilings. Seeded; the whole file runs in well under a minute on 2 cores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from bids_dnn.encoding import (MIN_CEILING, banded_ridge, ceiling_normalised, check_folds, cross_validated_ridge,
                               inner_folds_for, make_folds, noise_ceiling_from_split_half, pearson_columns,
                               pooled_reliability, r2_columns, spearman_brown, variance_partitioning)

ALPHAS = np.logspace(-2, 5, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices: one BLAS thread is faster, and far faster when other processes load
    the cores (threaded OpenBLAS spins). Libraries are imported first so the limit reaches
    every BLAS in the process (numpy's and scipy's)."""
    import himalaya.kernel_ridge  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def planted(rng: np.random.Generator, n: int, p: int, t: int, signal: float = 0.5):
    """Features, responses = X W + noise with per-target signal fraction ~ U(0, signal)."""
    x = rng.standard_normal((n, p))
    w = rng.standard_normal((p, t))
    s = x @ w
    s /= s.std(axis=0)
    frac = rng.random(t) * signal
    y = s * np.sqrt(frac) + rng.standard_normal((n, t)) * np.sqrt(1 - frac)
    return x, y


def sklearn_reference(x, y, folds, alphas, *, inner_folds=5, seed=0, pca=None, leak=None):
    """Nested CV with sklearn: StandardScaler (+ PCA) fitted on the outer training samples,
    Ridge(fit_intercept=True) per alpha and inner fold, per-target alpha maximising
    himalaya's score (-MSE averaged over inner folds, + 1e-10 log alpha), refit with that
    alpha. ``leak`` in {"scaler", "pca", "alpha"} deliberately uses test data instead."""
    pred = np.full(y.shape, np.nan)
    chosen = np.zeros((len(folds), y.shape[1]))
    for k, (train, test) in enumerate(folds):
        scaler = StandardScaler().fit(x if leak == "scaler" else x[train])
        xtr, xte = scaler.transform(x[train]), scaler.transform(x[test])
        if pca:
            proj = PCA(pca, svd_solver="full").fit(np.vstack([xtr, xte]) if leak == "pca" else xtr)
            xtr, xte = proj.transform(xtr), proj.transform(xte)
        ytr = y[train]
        score = np.zeros((len(alphas), y.shape[1]))
        if leak == "alpha":  # choose alpha on the test fold
            for ai, a in enumerate(alphas):
                m = Ridge(alpha=a, solver="svd").fit(xtr, ytr)
                score[ai] = -((y[test] - m.predict(xte)) ** 2).mean(0)
        else:
            inner = inner_folds_for(train, inner_folds=inner_folds, seed=seed, outer_fold=k)
            for ai, a in enumerate(alphas):
                for t, v in inner:
                    m = Ridge(alpha=a, solver="svd").fit(xtr[t], ytr[t])
                    score[ai] += -((ytr[v] - m.predict(xtr[v])) ** 2).mean(0) / len(inner)
        best = np.argmax(score + 1e-10 * np.log(alphas)[:, None], axis=0)
        chosen[k] = alphas[best]
        pred[test] = Ridge(alpha=alphas[best], solver="svd").fit(xtr, ytr).predict(xte)
    return pred, chosen


# --------------------------------------------------------------------------- folds
def test_make_folds_kfold_partition_and_seed():
    folds = make_folds(23, n_folds=5, seed=3)
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests.tolist()) == list(range(23))
    assert sorted(len(t) for _, t in folds) == [4, 4, 5, 5, 5]
    for train, test in folds:
        assert np.intersect1d(train, test).size == 0 and train.size + test.size == 23
    again = make_folds(23, n_folds=5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = make_folds(23, n_folds=5, seed=4)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_make_folds_groups():
    groups = np.repeat([3, 1, 2, 0, 5, 4, 6], [4, 5, 3, 4, 6, 2, 4])
    logo = make_folds(groups.size, groups=groups)
    assert len(logo) == 7
    assert [np.unique(groups[t]).tolist() for _, t in logo] == [[g] for g in range(7)]
    dealt = make_folds(groups.size, groups=groups, n_folds=3, seed=1)
    assert len(dealt) == 3
    tests = np.concatenate([t for _, t in dealt])
    assert sorted(tests.tolist()) == list(range(groups.size))
    for train, test in dealt:  # a group is never split between training and test
        assert np.intersect1d(groups[train], groups[test]).size == 0
    assert max(t.size for _, t in dealt) - min(t.size for _, t in dealt) <= 6
    assert len(make_folds(groups.size, groups=groups, n_folds=10)) == 7  # more folds than groups: LOGO


def test_make_folds_and_check_folds_errors():
    with pytest.raises(ValueError):
        make_folds(5, n_folds=6)
    with pytest.raises(ValueError):
        make_folds(4, groups=np.zeros(4))
    with pytest.raises(ValueError):
        check_folds([(np.arange(3), np.arange(2, 5))], 6)           # overlap
    with pytest.raises(ValueError):
        check_folds([(np.arange(3), [3, 4]), (np.arange(3), [4, 5])], 6)  # test twice
    with pytest.raises(ValueError):
        check_folds([(np.arange(3), [9])], 6)


def test_inner_folds_respect_groups():
    groups = np.repeat(np.arange(6), 10)
    train = np.flatnonzero(groups != 2)
    inner = inner_folds_for(train, inner_folds=3, inner_groups=groups, seed=0, outer_fold=1)
    assert len(inner) == 3
    for t, v in inner:
        assert np.intersect1d(groups[train][t], groups[train][v]).size == 0
    with pytest.warns(UserWarning, match="one group"):
        inner_folds_for(np.arange(10), inner_folds=3, inner_groups=np.zeros(60), seed=0)


# --------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("p", [300, 30], ids=["kernel", "primal"])
def test_agrees_with_sklearn_nested_cv(rng, p):
    x, y = planted(rng, 120, p, 40)
    folds = make_folds(120, n_folds=5, seed=1)
    res = cross_validated_ridge(x, y, folds, ALPHAS, seed=7)
    assert res.solver == ("kernel" if p > 100 else "primal")
    ref_pred, ref_alpha = sklearn_reference(x, y, folds, ALPHAS, seed=7)
    assert abs(np.mean(res.r2) - np.mean(r2_columns(y, ref_pred))) <= 1e-3
    fold_ref = np.array([r2_columns(y[t], ref_pred[t]) for _, t in folds])
    assert abs(np.mean(res.fold_r2) - np.mean(fold_ref)) <= 1e-3
    assert np.mean(res.alphas == ref_alpha) >= 0.9
    # in float64 the agreement is in fact exact up to rounding
    np.testing.assert_allclose(res.predictions, ref_pred, atol=1e-6)
    assert np.mean(res.alphas == ref_alpha) == 1.0


@pytest.mark.parametrize("p", [300, 30], ids=["kernel", "primal"])
def test_agrees_with_himalaya_direct(rng, p):
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    x, y = planted(rng, 100, p, 30)
    folds = make_folds(100, n_folds=4, seed=2)
    res = cross_validated_ridge(x, y, folds, ALPHAS, seed=5)
    via = cross_validated_ridge(x, y, folds, ALPHAS, seed=5, solver="himalaya")
    np.testing.assert_allclose(via.predictions, res.predictions, atol=1e-8)
    np.testing.assert_array_equal(via.alphas, res.alphas)
    for k, (train, test) in enumerate(folds):
        scaler = StandardScaler().fit(x[train])
        inner = inner_folds_for(train, seed=5, outer_fold=k)
        model = (KernelRidgeCV(alphas=ALPHAS, fit_intercept=True, cv=inner) if p > 100
                 else RidgeCV(alphas=ALPHAS, fit_intercept=True, cv=inner))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.fit(scaler.transform(x[train]), y[train])
        np.testing.assert_allclose(res.predictions[test], model.predict(scaler.transform(x[test])), atol=1e-8)
        np.testing.assert_allclose(res.alphas[k], model.best_alphas_, rtol=1e-12)


@pytest.mark.parametrize("p", [300, 30], ids=["kernel", "primal"])
def test_leave_one_out_agrees_with_sklearn_ridgecv(rng, p):
    from sklearn.linear_model import RidgeCV

    x, y = planted(rng, 100, p, 30)
    folds = make_folds(100, n_folds=3, seed=0)
    res = cross_validated_ridge(x, y, folds, ALPHAS, inner_folds="loo")
    for k, (train, test) in enumerate(folds):
        scaler = StandardScaler().fit(x[train])
        model = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(scaler.transform(x[train]), y[train])
        np.testing.assert_allclose(res.predictions[test], model.predict(scaler.transform(x[test])), atol=1e-8)
        np.testing.assert_array_equal(res.alphas[k], model.alpha_)
    single = cross_validated_ridge(x, y.astype(np.float32), folds, ALPHAS, inner_folds="loo")
    assert np.mean(single.alphas == res.alphas) >= 0.95
    with pytest.raises(ValueError):
        cross_validated_ridge(x, y, folds, ALPHAS, inner_folds="loo", inner_groups=np.arange(100) % 4)


def test_batches_dtypes_and_backends_agree(rng):
    from himalaya.backend import get_backend

    x, y = planted(rng, 90, 150, 25)
    folds = make_folds(90, n_folds=3, seed=0)
    base = cross_validated_ridge(x, y, folds, ALPHAS, pca=20)
    small = cross_validated_ridge(x, y, folds, ALPHAS, pca=20, target_batch=4)
    np.testing.assert_array_equal(small.alphas, base.alphas)
    np.testing.assert_allclose(small.predictions, base.predictions, atol=1e-12)
    kernel = cross_validated_ridge(x, y, folds, ALPHAS, solver="kernel")
    primal = cross_validated_ridge(x, y, folds, ALPHAS, solver="primal")
    np.testing.assert_allclose(kernel.predictions, primal.predictions, atol=1e-8)
    single = cross_validated_ridge(x, y.astype(np.float32), folds, ALPHAS)
    assert single.predictions.dtype == np.float32
    np.testing.assert_allclose(single.r2, kernel.r2, atol=1e-4)
    before = get_backend().name
    torch_res = cross_validated_ridge(x, y, folds, ALPHAS, backend="torch")
    assert get_backend().name == before
    np.testing.assert_allclose(torch_res.predictions, kernel.predictions, atol=1e-8)
    with pytest.raises(ValueError):
        cross_validated_ridge(x, y, folds, ALPHAS, backend="nope")
    with pytest.raises(ValueError):
        cross_validated_ridge(x, y, folds, [0.0, 1.0])


# --------------------------------------------------------------------------- leakage
def test_noise_features_do_not_predict(rng):
    _, y = planted(rng, 150, 40, 60)
    noise = rng.standard_normal((150, 200))
    res = cross_validated_ridge(noise, y, make_folds(150, n_folds=5, seed=0), ALPHAS)
    assert np.mean(res.r2) <= 0.0
    assert np.mean(res.fold_r2) <= 0.0
    assert abs(np.mean(res.r)) < 0.05


def test_pure_noise_responses_score_zero_r_and_negative_r2():
    """Responses without any signal, small folds (24 samples, 6 folds of 4) and a wide alpha grid:
    over seeds the held-out r (mean over folds of the within-fold r) averages 0 and R2 is <= 0.
    The correlation of the predictions pooled over folds is strongly negative here (the leave-out
    bias of training means), which is why it is not the reported r."""
    rs, r2s, pooled = [], [], []
    for seed in range(8):
        g = np.random.default_rng(seed)
        x = g.standard_normal((24, 300))
        y = g.standard_normal((24, 40))
        folds = make_folds(24, n_folds=6, seed=seed)
        res = cross_validated_ridge(x, y, folds, np.logspace(-2, 8, 11), standardize=False, seed=seed)
        rs.append(res.r)
        r2s.append(res.r2)
        pooled.append(pearson_columns(y, res.predictions))
    rs, r2s = np.concatenate(rs), np.concatenate(r2s)
    assert abs(rs.mean()) < 3 * rs.std(ddof=1) / np.sqrt(rs.size) + 0.01
    assert r2s.mean() <= 0.0 and np.mean(r2s <= 0.0) > 0.8
    assert np.mean(np.concatenate(pooled)) < -0.1


@pytest.mark.parametrize("pca", [None, 8])
def test_test_fold_cannot_influence_its_model(rng, pca):
    """Changing a test fold's responses must change neither its predictions nor its alphas;
    changing one test sample's features must not move the other test predictions (no test
    mean / SD / PCA axis / alpha enters the model)."""
    x, y = planted(rng, 80, 60, 12)
    folds = make_folds(80, n_folds=4, seed=0)
    base = cross_validated_ridge(x, y, folds, ALPHAS, pca=pca)
    _, test = folds[1]
    y2 = y.copy()
    y2[test] = 100.0 * rng.standard_normal((test.size, y.shape[1])) + 50.0
    moved = cross_validated_ridge(x, y2, folds, ALPHAS, pca=pca)
    np.testing.assert_allclose(moved.predictions[test], base.predictions[test], atol=1e-9)
    np.testing.assert_array_equal(moved.alphas[1], base.alphas[1])
    assert np.max(np.abs(moved.predictions - base.predictions)) > 1.0  # other folds train on them
    x2 = x.copy()
    x2[test[0]] = 1e3 * rng.standard_normal(x.shape[1])
    moved = cross_validated_ridge(x2, y, folds, ALPHAS, pca=pca)
    np.testing.assert_allclose(moved.predictions[test[1:]], base.predictions[test[1:]], atol=1e-9)
    np.testing.assert_array_equal(moved.alphas[1], base.alphas[1])


@pytest.mark.parametrize("leak", ["scaler", "pca", "alpha"])
def test_training_only_statistics_under_covariate_shift(rng, leak):
    """The test folds' features are shifted and rescaled: statistics (or an alpha) that saw
    the test data would change the predictions measurably. Ours equals the training-only
    reference and differs from the leaky one."""
    x, y = planted(rng, 100, 40, 20, signal=0.8)
    folds = make_folds(100, n_folds=4, seed=3)
    for k, (_, test) in enumerate(folds):
        x[test] = x[test] * (1 + k) + 2.0 * k
    pca = 10 if leak == "pca" else None
    res = cross_validated_ridge(x, y, folds, ALPHAS, pca=pca, seed=1)
    clean, clean_alpha = sklearn_reference(x, y, folds, ALPHAS, pca=pca, seed=1)
    leaky, leaky_alpha = sklearn_reference(x, y, folds, ALPHAS, pca=pca, seed=1, leak=leak)
    np.testing.assert_allclose(res.predictions, clean, atol=1e-6)
    np.testing.assert_array_equal(res.alphas, clean_alpha)
    assert np.max(np.abs(leaky - clean)) > 0.05  # the construction is sensitive to leakage
    if leak == "alpha":
        assert np.mean(leaky_alpha != clean_alpha) > 0.2


# --------------------------------------------------------------------------- planted truth
def test_true_space_beats_noise_and_banded_attributes_it(rng):
    x, y = planted(rng, 200, 15, 20, signal=0.8)
    noise = rng.standard_normal((200, 60))
    folds = make_folds(200, n_folds=4, seed=0)
    true_res = cross_validated_ridge(x, y, folds, ALPHAS)
    noise_res = cross_validated_ridge(noise, y, folds, ALPHAS)
    assert np.mean(true_res.r2) > 0.25 and np.mean(noise_res.r2) <= 0.0
    assert np.mean(true_res.r2 > noise_res.r2) >= 0.9
    banded = banded_ridge([x, noise], y, folds, np.logspace(-2, 5, 8), n_iter=12, seed=0)
    np.testing.assert_allclose(banded.r2_split.sum(axis=0) + banded.r2_intercept, banded.r2, atol=1e-10)
    assert np.mean(banded.r2_split[0]) > 0.9 * np.mean(banded.r2)
    assert np.mean(banded.r2_split[1]) < 0.02
    assert abs(np.mean(banded.r2) - np.mean(true_res.r2)) < 0.05
    np.testing.assert_allclose(banded.space_weights.sum(axis=1), 1.0, atol=1e-6)
    assert banded.r2_split.shape == (2, 20) and banded.alphas.shape == (4, 20)
    again = banded_ridge([x, noise], y[:, :6], folds, np.logspace(-2, 5, 8), n_iter=12, seed=0, target_batch=4)
    np.testing.assert_allclose(again.r2_split, banded.r2_split[:, :6], atol=1e-10)


def test_banded_hyper_gradient_runs(rng):
    x, y = planted(rng, 90, 10, 6, signal=0.8)
    noise = rng.standard_normal((90, 30))
    res = banded_ridge([x, noise], y, make_folds(90, n_folds=3, seed=0), ALPHAS, solver="hyper_gradient",
                       solver_params={"max_iter": 5})
    assert np.all(np.isfinite(res.r2)) and np.mean(res.r2_split[0]) > np.mean(res.r2_split[1])


def test_banded_torch_backend_matches_numpy(rng):
    x, y = planted(rng, 60, 8, 4, signal=0.8)
    spaces = [x, rng.standard_normal((60, 20))]
    folds = make_folds(60, n_folds=3, seed=0)
    ref = banded_ridge(spaces, y, folds, ALPHAS, n_iter=5)
    res = banded_ridge(spaces, y, folds, ALPHAS, n_iter=5, backend="torch")
    np.testing.assert_allclose(res.r2_split, ref.r2_split, atol=1e-8)
    np.testing.assert_allclose(res.alphas, ref.alphas, rtol=1e-10)


def test_variance_partitioning_recovers_planted_split(rng):
    n, t = 800, 16
    shared, only_a, only_b = (rng.standard_normal((n, 3)) for _ in range(3))
    space_a = np.hstack([shared, only_a]) @ rng.standard_normal((6, 12))
    space_b = np.hstack([shared, only_b]) @ rng.standard_normal((6, 12))

    def unit(z):
        s = z @ rng.standard_normal((3, t))
        return s / s.std(axis=0)

    y = (np.sqrt(0.25) * unit(shared) + np.sqrt(0.25) * unit(only_a) + np.sqrt(0.15) * unit(only_b)
         + np.sqrt(0.35) * rng.standard_normal((n, t)))
    table = variance_partitioning({"A": space_a, "B": space_b}, y, make_folds(n, n_folds=4, seed=0), ALPHAS)
    means = table.mean()
    assert abs(means["unique[A]"] - 0.25) < 0.04
    assert abs(means["unique[B]"] - 0.15) < 0.04
    assert abs(means["shared[A&B]"] - 0.25) < 0.04
    assert abs(means["r2[A+B]"] - 0.65) < 0.05
    np.testing.assert_allclose(table["unique[A]"] + table["unique[B]"] + table["shared[A&B]"],
                               table["r2[A+B]"], atol=1e-12)


def test_variance_partitioning_three_spaces_identity(rng):
    x, y = planted(rng, 90, 12, 5)
    spaces = {"a": x[:, :4], "b": x[:, 4:8], "c": x[:, 8:]}
    table = variance_partitioning(spaces, y, make_folds(90, n_folds=3, seed=0), ALPHAS)
    parts = [c for c in table.columns if c.startswith(("unique", "shared"))]
    assert len(parts) == 7 and len([c for c in table.columns if c.startswith("r2")]) == 7
    np.testing.assert_allclose(table[parts].sum(axis=1), table["r2[a+b+c]"], atol=1e-12)
    with pytest.raises(ValueError):
        variance_partitioning({"a": x}, y, make_folds(90, n_folds=3), ALPHAS)


# --------------------------------------------------------------------------- bad targets
def test_nan_and_constant_targets(rng):
    x, y = planted(rng, 60, 30, 6)
    folds = make_folds(60, n_folds=3, seed=0)
    clean = cross_validated_ridge(x, y, folds, ALPHAS)
    bad = np.hstack([y, np.full((60, 1), 2.5), y[:, :1]])
    bad[7, -1] = np.nan
    res = cross_validated_ridge(x, bad, folds, ALPHAS)
    np.testing.assert_allclose(res.r2[:6], clean.r2, atol=1e-12)
    assert np.all(np.isnan(res.r2[6:])) and np.all(np.isnan(res.r[6:]))
    assert np.all(np.isnan(res.alphas[:, 6:])) and np.all(np.isnan(res.fold_r2[:, 6:]))
    np.testing.assert_allclose(res.predictions[:, 6], 2.5)
    assert np.all(np.isnan(res.predictions[:, 7]))
    one = cross_validated_ridge(x, y[:, 0], folds, ALPHAS)  # 1-D responses: one target
    np.testing.assert_allclose(one.r2, clean.r2[:1], atol=1e-12)
    with pytest.raises(ValueError):
        cross_validated_ridge(np.where(np.arange(60)[:, None] == 3, np.nan, x), y, folds, ALPHAS)


def test_scores_match_sklearn_cross_validation(rng):
    """With one alpha the model is sklearn's StandardScaler + Ridge: ``r`` equals
    ``cross_val_score`` with a Pearson scorer on the same folds (mean over folds), ``fold_r2``
    equals ``cross_val_score(scoring="r2")`` and ``r2`` equals ``r2_score`` of
    ``cross_val_predict``."""
    import scipy.stats
    from sklearn.metrics import make_scorer, r2_score
    from sklearn.model_selection import cross_val_predict, cross_val_score
    from sklearn.pipeline import make_pipeline

    x, y = planted(rng, 70, 20, 4)
    folds = make_folds(70, n_folds=5, seed=0)
    res = cross_validated_ridge(x, y, folds, [3.0])
    pearson = make_scorer(lambda a, b: scipy.stats.pearsonr(a, b)[0])
    for j in range(4):
        model = make_pipeline(StandardScaler(), Ridge(alpha=3.0, solver="svd"))
        per_fold_r = cross_val_score(model, x, y[:, j], cv=folds, scoring=pearson)
        assert res.r[j] == pytest.approx(per_fold_r.mean(), abs=1e-10)
        np.testing.assert_allclose(res.fold_r[:, j], per_fold_r, atol=1e-10)
        np.testing.assert_allclose(res.fold_r2[:, j], cross_val_score(model, x, y[:, j], cv=folds, scoring="r2"),
                                   atol=1e-10)
        pred = cross_val_predict(model, x, y[:, j], cv=folds)
        assert res.r2[j] == pytest.approx(r2_score(y[:, j], pred), abs=1e-10)
    assert res.fold_r2.shape == (5, 4) and res.alphas.shape == (5, 4)


def test_banded_r_is_the_mean_within_fold_r(rng):
    x, y = planted(rng, 60, 10, 3)
    folds = make_folds(60, n_folds=3, seed=0)
    res = banded_ridge([x[:, :5], x[:, 5:]], y, folds, ALPHAS, n_iter=3)
    expected = np.mean([pearson_columns(y[t], res.predictions[t]) for _, t in folds], axis=0)
    np.testing.assert_allclose(res.r, expected, atol=1e-10)


# --------------------------------------------------------------------------- noise ceiling
def test_spearman_brown_and_ceiling():
    r = np.array([-0.5, 0.0, 0.3, 0.8, 1.0, np.nan])
    with np.errstate(invalid="ignore"):
        expected = 2 * r / (1 + r)
    np.testing.assert_allclose(spearman_brown(r), expected)
    np.testing.assert_allclose(spearman_brown(0.4, factor=3.0), 1.2 / 1.8)
    assert np.isnan(spearman_brown(-1.0)) and np.isnan(spearman_brown(-0.6, factor=3.0))
    np.testing.assert_allclose(spearman_brown(spearman_brown(0.3, 2.0), 0.5), 0.3)
    np.testing.assert_allclose(noise_ceiling_from_split_half(r), expected)
    two = noise_ceiling_from_split_half(np.array([[0.2, 0.6], [0.4, np.nan]]))
    np.testing.assert_allclose(two, spearman_brown(np.array([0.3, 0.6])))
    with pytest.raises(ValueError):
        spearman_brown(0.5, factor=0.0)


def test_ceiling_normalised_edge_cases():
    score = np.array([0.2, 0.2, 0.2, -0.1, np.nan, 0.3, 0.02, 0.02])
    ceiling = np.array([0.4, 0.0, -0.3, 0.5, 0.5, np.nan, 0.05, MIN_CEILING])
    out = ceiling_normalised(score, ceiling)
    np.testing.assert_allclose(out, [0.5, np.nan, np.nan, -0.2, np.nan, np.nan, np.nan, 0.2])
    assert ceiling_normalised(0.6, 0.5) == pytest.approx(1.2)  # above 1 is kept
    assert ceiling_normalised(0.02, 0.05, min_ceiling=0.01) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        ceiling_normalised(0.1, 0.5, min_ceiling=0.0)


def test_pooled_reliability_is_unbiased_where_the_voxel_mean_is_not():
    """Planted split-half reliability: two halves ``s + e`` with var(s) / (var(s) + var(e)) = rho.
    The ROI ceiling (Spearman-Brown of the mean split-half r) recovers SB(rho); the mean of the
    per-voxel corrected values is biased low (about -2 var(r) = -0.09 for 24 conditions and rho = 0)."""
    g = np.random.default_rng(3)
    n_cond, n_vox = 24, 4000
    for rho in (0.0, 0.3, 0.6):
        s = g.standard_normal((n_cond, n_vox)) * np.sqrt(rho)
        a = s + g.standard_normal((n_cond, n_vox)) * np.sqrt(1 - rho)
        b = s + g.standard_normal((n_cond, n_vox)) * np.sqrt(1 - rho)
        split = np.array([np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(n_vox)])
        voxel = noise_ceiling_from_split_half(split)
        assert pooled_reliability(voxel) == pytest.approx(2 * rho / (1 + rho), abs=0.02)
        assert pooled_reliability(voxel) == pytest.approx(spearman_brown(split.mean()), abs=1e-12)
        if rho == 0.0:
            assert np.mean(voxel) < -0.06
    assert pooled_reliability(np.array([0.5, np.nan])) == pytest.approx(0.5)
    assert np.isnan(pooled_reliability(np.array([np.nan])))


def test_column_metrics():
    a = np.array([[1.0, 2.0], [2.0, 2.0], [4.0, 2.0]])
    b = np.array([[1.5, 1.0], [2.0, 3.0], [3.0, 2.0]])
    assert pearson_columns(a, b)[0] == pytest.approx(np.corrcoef(a[:, 0], b[:, 0])[0, 1])
    assert np.isnan(pearson_columns(a, b)[1]) and np.isnan(r2_columns(a, b)[1])
