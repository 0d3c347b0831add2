"""Weighted RSA and variance partitioning against rsatoolbox, sklearn and planted truths."""

from __future__ import annotations

import itertools
import os
import warnings

import numpy as np
import pytest
import scipy.optimize

from bids_dnn.rsa.compare import compare_rdms
from bids_dnn.rsa.measures import FIT_MEASURES
from bids_dnn.rsa.weighted import (crossvalidated_weighted_rsa, fit_nonnegative_weights, nnls_gram,
                                   pool_for_fit, predict_rdm, rdm_variance_partitioning, stimulus_folds)

os.environ.setdefault("TQDM_DISABLE", "1")
rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.inference import crossval, sets_leave_one_out_rdm  # noqa: E402
from rsatoolbox.model import ModelWeighted  # noqa: E402
from rsatoolbox.model.fitter import fit_regress, fit_regress_nn  # noqa: E402
from rsatoolbox.rdm import RDMs  # noqa: E402
from rsatoolbox.util.pooling import pool_rdm  # noqa: E402

TOL = 1e-8


def _planted(rng, n_cond=16, n_pred=5, n_subj=6, noise=0.3):
    n_pairs = n_cond * (n_cond - 1) // 2
    pred = rng.random((n_pred, n_pairs))
    data = 0.7 * pred[1] + 0.3 * pred[3] + noise * rng.random((n_subj, n_pairs))
    return pred, data


# ----------------------------------------------------------------------------- fitting
@pytest.mark.parametrize("measure", sorted(FIT_MEASURES))
@pytest.mark.parametrize("fit", ["nnls", "ols"])
@pytest.mark.parametrize("n_targets", [1, 4])
@pytest.mark.parametrize("normalize", [True, False])
def test_fit_matches_rsatoolbox(rng, measure, fit, n_targets, normalize):
    pred, data = _planted(rng, n_cond=12)
    data = data[:n_targets]
    model = ModelWeighted("w", RDMs(pred))
    fitter = fit_regress_nn if fit == "nnls" else fit_regress
    ref = fitter(model, RDMs(data), method=FIT_MEASURES[measure], normalize=normalize)
    ours = fit_nonnegative_weights(pred, data, fit=fit, measure=measure, normalize=normalize)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    ref_pred = model.predict_rdm(ref).get_vectors()[0]
    np.testing.assert_allclose(predict_rdm(ours, pred), ref_pred, rtol=0, atol=TOL)
    if fit == "nnls":
        assert np.all(ours >= 0)


@pytest.mark.parametrize("measure", ["pearson", "cosine_cov"])
def test_fit_ridge_matches_rsatoolbox(rng, measure):
    pred, data = _planted(rng, n_cond=10)
    model = ModelWeighted("w", RDMs(pred))
    ref = fit_regress_nn(model, RDMs(data), method=FIT_MEASURES[measure], ridge_weight=3.0)
    ours = fit_nonnegative_weights(pred, data, measure=measure, ridge_weight=3.0)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


def test_fit_with_inactive_predictors_matches_rsatoolbox(rng):
    # predictors anti-correlated with the data must get weight exactly 0
    n_pairs = 66
    base = rng.random(n_pairs)
    pred = np.vstack([base + 0.1 * rng.random(n_pairs), -base + rng.random(n_pairs),
                      rng.random(n_pairs), 2 - base])
    data = base + 0.2 * rng.random((3, n_pairs))
    ref = fit_regress_nn(ModelWeighted("w", RDMs(pred)), RDMs(data), method="corr")
    ours = fit_nonnegative_weights(pred, data, measure="pearson")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    assert ours[1] == 0 and ours[3] == 0


@pytest.mark.parametrize("measure", sorted(FIT_MEASURES))
def test_pool_for_fit_matches_rsatoolbox(rng, measure):
    data = rng.random((5, 45))
    ref = pool_rdm(RDMs(data), method=FIT_MEASURES[measure]).get_vectors()[0]
    np.testing.assert_allclose(pool_for_fit(data, measure), ref, rtol=0, atol=1e-10)


def test_nnls_gram_matches_scipy(rng):
    for _ in range(30):
        a = rng.normal(size=(40, 6))
        y = rng.normal(size=40)
        ref = scipy.optimize.nnls(a, y)[0]
        np.testing.assert_allclose(nnls_gram(a.T @ a, a.T @ y), ref, rtol=0, atol=1e-10)


def test_fit_rejects_rank_measures(rng):
    pred, data = _planted(rng, n_cond=8)
    with pytest.raises(ValueError, match="pearson"):
        fit_nonnegative_weights(pred, data, measure="spearman")
    with pytest.raises(ValueError, match="fit"):
        fit_nonnegative_weights(pred, data, fit="lasso")


# ----------------------------------------------------------------------------- cross-validation
@pytest.mark.parametrize("measure", ["pearson", "cosine", "corr_cov"])
def test_crossval_subjects_matches_rsatoolbox(rng, measure):
    pred, data = _planted(rng)
    rdms = RDMs(data)
    train, test, _ = sets_leave_one_out_rdm(rdms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = crossval(ModelWeighted("w", RDMs(pred)), rdms, train, test,
                       method=FIT_MEASURES[measure], fitter=fit_regress_nn,
                       calc_noise_ceil=False)
    res = crossvalidated_weighted_rsa(pred, data, cv="subjects", measure=measure)
    np.testing.assert_allclose(res.scores, ref.evaluations[0, 0], rtol=0, atol=TOL)
    assert res.fold_scores.shape == (6, 6) and res.weights.shape == (6, 5)
    assert np.array_equal(np.isfinite(res.fold_scores), np.eye(6, dtype=bool))
    # brute force: fold weights are the fit on the other subjects
    for s in range(6):
        w = fit_nonnegative_weights(pred, np.delete(data, s, axis=0), measure=measure)
        np.testing.assert_allclose(res.weights[s], w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("measure", ["pearson", "cosine", "cosine_cov"])
def test_crossval_stimuli_matches_rsatoolbox(rng, measure):
    pred, data = _planted(rng, n_cond=15)
    rdms = RDMs(data)
    res = crossvalidated_weighted_rsa(pred, data, cv="stimuli", measure=measure, n_folds=3,
                                      rng=np.random.default_rng(5))
    train_set, test_set = [], []
    for f in range(3):
        te, tr = np.flatnonzero(res.folds == f), np.flatnonzero(res.folds != f)
        train_set.append((rdms.subset_pattern("index", tr), tr))
        test_set.append((rdms.subset_pattern("index", te), te))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = crossval(ModelWeighted("w", RDMs(pred)), rdms, train_set, test_set,
                       method=FIT_MEASURES[measure], fitter=fit_regress_nn,
                       calc_noise_ceil=False)
    # rsatoolbox: one value per fold = mean over subjects
    np.testing.assert_allclose(res.fold_scores.mean(axis=1), ref.evaluations[0, 0], rtol=0,
                               atol=TOL)
    np.testing.assert_allclose(res.scores, res.fold_scores.mean(axis=0), rtol=0, atol=1e-15)


def test_crossval_stimuli_never_uses_mixed_pairs(rng):
    n_cond = 18
    pred, data = _planted(rng, n_cond=n_cond)
    folds = stimulus_folds(n_cond, 3, np.random.default_rng(2))
    res = crossvalidated_weighted_rsa(pred, data, cv="stimuli", measure="spearman", folds=folds)
    rows, cols = np.triu_indices(n_cond, 1)
    for f in range(3):
        # fold f may use pairs of two training stimuli (fit) or two test stimuli (score) only
        tr = (folds[rows] != f) & (folds[cols] != f)
        te = (folds[rows] == f) & (folds[cols] == f)
        leak = ~(tr | te)
        assert leak.any()
        d2, p2 = data.copy(), pred.copy()
        d2[:, leak] = 50 + 100 * rng.random((data.shape[0], leak.sum()))
        p2[:, leak] = 50 + 100 * rng.random((pred.shape[0], leak.sum()))
        res2 = crossvalidated_weighted_rsa(p2, d2, cv="stimuli", measure="spearman",
                                           folds=folds)
        np.testing.assert_allclose(res2.weights[f], res.weights[f], rtol=0, atol=1e-12)
        np.testing.assert_allclose(res2.fold_scores[f], res.fold_scores[f], rtol=0, atol=1e-12)


def test_crossval_brute_force_stimuli(rng):
    n_cond = 12
    pred, data = _planted(rng, n_cond=n_cond)
    folds = np.arange(n_cond) % 3
    res = crossvalidated_weighted_rsa(pred, data, cv="stimuli", measure="spearman", folds=folds)
    assert res.fit_measure == "pearson"
    from bids_dnn.rsa.rdm import square_to_vector, vector_to_square

    def sub(v, idx):
        return square_to_vector(vector_to_square(v)[..., idx[:, None], idx])

    singles = []
    for f in range(3):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        w = fit_nonnegative_weights(sub(pred, tr), sub(data, tr), measure="pearson")
        np.testing.assert_allclose(res.weights[f], w, rtol=0, atol=1e-12)
        score = compare_rdms(sub(data, te), w @ sub(pred, te), "spearman")[:, 0]
        np.testing.assert_allclose(res.fold_scores[f], score, rtol=0, atol=1e-12)
        singles.append(compare_rdms(sub(data, te), sub(pred, te), "spearman"))
    np.testing.assert_allclose(res.single_scores, np.mean(singles, axis=0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cv", ["subjects", "stimuli"])
def test_planted_weights_recovered_and_weighted_model_wins(cv):
    rng = np.random.default_rng(11)
    n_cond, n_subj = 30, 8
    n_pairs = n_cond * (n_cond - 1) // 2
    layers = rng.random((5, n_pairs))  # independent "layer" RDMs, equal variance
    data = 0.7 * layers[1] + 0.3 * layers[3] + 0.05 * rng.normal(size=(n_subj, n_pairs))
    res = crossvalidated_weighted_rsa(layers, data, cv=cv, measure="spearman", n_folds=5,
                                      rng=np.random.default_rng(3))
    w = res.weights
    np.testing.assert_allclose(w[:, 1] / w[:, 3], 0.7 / 0.3, rtol=0.1)
    assert np.all(w[:, [0, 2, 4]] < 0.1 * w[:, [1]])
    assert res.mean_score > 0.9
    assert np.all(res.mean_score > np.nanmean(res.single_scores, axis=0) + 0.05)
    assert np.all(res.scores > res.single_scores.max(axis=1))


def test_crossval_seeded_and_validated(rng):
    pred, data = _planted(rng, n_cond=15)
    a = crossvalidated_weighted_rsa(pred, data, cv="stimuli", rng=np.random.default_rng(4))
    b = crossvalidated_weighted_rsa(pred, data, cv="stimuli", rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.fold_scores.shape == (5, 6)
    assert np.bincount(a.folds).tolist() == [3, 3, 3, 3, 3]
    with pytest.raises(ValueError, match="rng"):
        crossvalidated_weighted_rsa(pred, data, cv="stimuli")
    with pytest.raises(ValueError, match=">= 3"):
        crossvalidated_weighted_rsa(pred, data, cv="stimuli",
                                    folds=np.r_[0, 0, np.ones(13, int)])
    k = crossvalidated_weighted_rsa(pred, data, cv="subjects", n_folds=3,
                                    rng=np.random.default_rng(0))
    assert k.weights.shape == (3, 5) and np.all(np.isfinite(k.scores))


# ------------------------------------------------------------------------- variance partitioning
def test_variance_partitioning_r2_matches_sklearn(rng):
    from sklearn.linear_model import LinearRegression
    n_pairs = 105
    groups = {"a": rng.random((2, n_pairs)), "b": rng.random((3, n_pairs)),
              "c": rng.random(n_pairs)}
    data = groups["a"][0] + groups["b"].sum(0) + rng.random((4, n_pairs))
    vp = rdm_variance_partitioning(groups, data)
    assert len(vp.r2) == 7
    for combo, r2 in vp.r2.items():
        x = np.vstack([np.atleast_2d(groups[g]) for g in combo]).T
        ref = [LinearRegression().fit(x, y).score(x, y) for y in data]
        np.testing.assert_allclose(r2, ref, rtol=0, atol=1e-10)
    total = sum(v for k, v in vp.components.items() if k != "total")
    np.testing.assert_allclose(total, vp.components["total"], rtol=0, atol=1e-12)
    assert set(vp.components) == {"unique:a", "unique:b", "unique:c", "shared:a+b", "shared:a+c",
                                  "shared:b+c", "shared:a+b+c", "total"}
    assert len(vp.to_records()) == 8 * 4


def _orthogonal(rng, n_pairs, k):
    """k centred, mutually orthogonal unit vectors (orthogonal to the constant too)."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(n_pairs), rng.normal(size=(n_pairs, k))]))
    return q[:, 1:].T


def test_variance_partitioning_planted_two_groups(rng):
    a, b, s, e = _orthogonal(rng, 120, 4)
    data = 3 * a + 2 * b + 4 * s + 1 * e + 5.0  # variances 9, 4, 16 (+1 noise) of 30
    vp = rdm_variance_partitioning({"A": np.vstack([a, s]), "B": np.vstack([b, s])}, data)
    comp = vp.components
    np.testing.assert_allclose(comp["unique:A"], 9 / 30, atol=1e-12)
    np.testing.assert_allclose(comp["unique:B"], 4 / 30, atol=1e-12)
    np.testing.assert_allclose(comp["shared:A+B"], 16 / 30, atol=1e-12)
    np.testing.assert_allclose(comp["total"], 29 / 30, atol=1e-12)
    assert np.ndim(comp["total"]) == 0


def test_variance_partitioning_planted_three_groups(rng):
    a, b, c, ab, abc, e = _orthogonal(rng, 153, 6)
    data = 1 * a + 2 * b + 3 * c + 2 * ab + 1 * abc + 3 * e  # total variance 28
    groups = {"A": np.vstack([a, ab, abc]), "B": np.vstack([b, ab, abc]),
              "C": np.vstack([c, abc])}
    comp = rdm_variance_partitioning(groups, data).components
    expect = {"unique:A": 1, "unique:B": 4, "unique:C": 9, "shared:A+B": 4, "shared:A+C": 0,
              "shared:B+C": 0, "shared:A+B+C": 1, "total": 19}
    for key, val in expect.items():
        np.testing.assert_allclose(comp[key], val / 28, atol=1e-12, err_msg=key)


def test_variance_partitioning_four_groups_and_nnls(rng):
    vecs = _orthogonal(rng, 190, 6)
    a, b, c, d, s, e = vecs
    data = 1 * a + 1 * b + 2 * c + 2 * d + 3 * s + 1 * e  # variance 20
    groups = {"A": np.vstack([a, s]), "B": np.vstack([b, s]), "C": c, "D": d}
    vp = rdm_variance_partitioning(groups, data)
    assert len(vp.r2) == 15
    comp = vp.components
    for key, val in {"unique:A": 1, "unique:B": 1, "unique:C": 4, "unique:D": 4,
                     "shared:total": 9, "total": 19}.items():
        np.testing.assert_allclose(comp[key], val / 20, atol=1e-12, err_msg=key)
    # nnls: coefficients >= 0; a negatively weighted predictor explains nothing
    neg = {"pos": a, "neg": b}
    y = a - b + 0.1 * e
    ols = rdm_variance_partitioning(neg, y, method="ols")
    nn = rdm_variance_partitioning(neg, y, method="nnls")
    assert nn.r2[("neg",)] == pytest.approx(0, abs=1e-12)
    assert ols.r2[("neg",)] > 0.4
    for combo in itertools.chain(ols.r2):
        assert nn.r2[combo] <= ols.r2[combo] + 1e-12
    with pytest.raises(ValueError, match="2 to 4"):
        rdm_variance_partitioning({"A": a}, y)
