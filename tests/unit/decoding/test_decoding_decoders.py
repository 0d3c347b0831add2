"""bids_dnn.decoding.decode_features: held-out unit r equal to scikit-learn's nested CV
(GridSearchCV over the same inner folds), identification within test folds equal to a loop over
the folds, planted truth, pure noise (accuracy at chance, valid p-values), and why neither all
stimuli as candidates nor one pooled within-fold null is used."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler

from bids_dnn.decoding import decode_features, identification_test, similarity_matrix
from bids_dnn.encoding import inner_folds_for, make_folds

ALPHAS = np.logspace(-2, 4, 7)


def sklearn_unit_r(patterns, features, folds, alphas, *, inner_folds, seed, standardize):
    """Per outer fold: (StandardScaler fitted on the training stimuli, then) GridSearchCV(Ridge)
    per unit over bids_dnn's inner folds; r = mean over folds of the within-fold Pearson r."""
    n_units = features.shape[1]
    fold_r = np.empty((len(folds), n_units))
    chosen = np.empty((len(folds), n_units))
    predictions = np.full(features.shape, np.nan)
    for k, (train, test) in enumerate(folds):
        x_train, x_test = patterns[train], patterns[test]
        if standardize:
            scaler = StandardScaler().fit(x_train)
            x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
        inner = inner_folds_for(train, inner_folds=inner_folds, seed=seed, outer_fold=k)
        for u in range(n_units):
            search = GridSearchCV(Ridge(), {"alpha": list(alphas)}, cv=inner, scoring="neg_mean_squared_error")
            search.fit(x_train, features[train, u])
            pred = search.predict(x_test)
            predictions[test, u] = pred
            chosen[k, u] = search.best_params_["alpha"]
            fold_r[k, u] = np.corrcoef(pred, features[test, u])[0, 1]
    return fold_r.mean(axis=0), chosen, predictions


def planted(seed, n_stimuli=60, n_latent=5, n_units=200, n_voxels=50, noise=0.5):
    """Patterns and features that share a low-dimensional latent stimulus space."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_stimuli, n_latent))
    features = latent @ rng.normal(size=(n_latent, n_units)) + 0.3 * rng.normal(size=(n_stimuli, n_units))
    features += 5.0 * rng.normal(size=n_units)                       # a common pattern
    patterns = latent @ rng.normal(size=(n_latent, n_voxels)) + noise * rng.normal(size=(n_stimuli, n_voxels))
    return patterns, features


@pytest.mark.parametrize("n_voxels, standardize", [(12, False), (45, True)])   # primal / kernel form
def test_unit_r_equals_sklearn_nested_cv(rng, n_voxels, standardize):
    n_stimuli, n_units = 40, 4
    patterns = rng.normal(size=(n_stimuli, n_voxels)) * rng.uniform(0.5, 3.0, size=n_voxels)
    features = patterns[:, :3] @ rng.normal(size=(3, n_units)) + 2.0 * rng.normal(size=(n_stimuli, n_units))
    folds = make_folds(n_stimuli, n_folds=5, seed=3)
    result = decode_features(patterns, features, folds, ALPHAS, inner_folds=4, seed=11, standardize=standardize)
    ref_r, ref_alphas, ref_pred = sklearn_unit_r(patterns, features, folds, ALPHAS, inner_folds=4, seed=11,
                                                 standardize=standardize)
    np.testing.assert_allclose(result.alphas, ref_alphas, rtol=1e-12)
    np.testing.assert_allclose(result.predictions, ref_pred, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(result.unit_r, ref_r, rtol=1e-6, atol=1e-8)
    assert result.mean_r == pytest.approx(ref_r.mean(), rel=1e-6)
    assert result.median_r == pytest.approx(np.median(ref_r), rel=1e-6)
    assert result.n_units_valid == n_units
    assert len(np.unique(result.alphas)) > 1, "the test should exercise the alpha choice"


def _fold_of(folds, n):
    fold_of = np.full(n, -1)
    for k, (_, test) in enumerate(folds):
        fold_of[test] = k
    return fold_of


def test_fold_identification_equals_a_loop_over_the_folds(rng):
    """Each held-out stimulus among its own fold's stimuli (a double loop); p = min(1, 2 x mean)
    of the folds' own permutation tests, drawn fold after fold from the same generator."""
    patterns, features = planted(1, n_stimuli=30, n_units=40, n_voxels=20, noise=6.0)
    folds = make_folds(30, n_folds=4, seed=0)                        # folds of 7 and 8 stimuli
    result = decode_features(patterns, features, folds, ALPHAS, inner_folds=3, n_permutations=100,
                             rng=np.random.default_rng(7))
    s = similarity_matrix(result.predictions, features, centre=True)
    fold_of = _fold_of(folds, 30)
    pairwise, top1 = np.empty(30), np.empty(30)
    for i in range(30):
        others = [j for j in range(30) if fold_of[j] == fold_of[i] and j != i]
        pairwise[i] = np.mean([1.0 if s[i, i] > s[i, j] else 0.5 if s[i, i] == s[i, j] else 0.0 for j in others])
        top1[i] = float(all(s[i, i] > s[i, j] for j in others))
    np.testing.assert_allclose(result.per_stimulus_pairwise, pairwise, atol=1e-12)
    assert result.pairwise_accuracy == pytest.approx(pairwise.mean(), abs=1e-12)
    assert result.top1_accuracy == pytest.approx(top1.mean(), abs=1e-12)
    assert result.identification.chance_top1 == pytest.approx(np.mean([1 / np.sum(fold_of == fold_of[i])
                                                                        for i in range(30)]))
    generator = np.random.default_rng(7)
    p_folds = [identification_test(s[np.ix_(test, test)], n_permutations=100, rng=generator)
               for test in (np.flatnonzero(fold_of == k) for k in range(4))]
    assert result.p_pairwise == pytest.approx(min(1.0, 2 * np.mean([r.p_pairwise for r in p_folds])))
    assert result.p_top1 == pytest.approx(min(1.0, 2 * np.mean([r.p_top1 for r in p_folds])))
    assert 0.55 < result.pairwise_accuracy < 0.95, "the test should see a partial signal"


def test_all_candidates_is_identification_among_every_stimulus(rng):
    patterns, features = planted(1, n_stimuli=30, n_units=40, n_voxels=20, noise=2.0)
    folds = make_folds(30, n_folds=5, seed=0)
    result = decode_features(patterns, features, folds, ALPHAS, inner_folds=3, n_permutations=100,
                             rng=np.random.default_rng(7), candidates="all")
    direct = identification_test(similarity_matrix(result.predictions, features, centre=True),
                                 n_permutations=100, rng=np.random.default_rng(7))
    assert result.pairwise_accuracy == direct.pairwise_accuracy
    assert result.top1_accuracy == direct.top1_accuracy
    assert result.p_pairwise == direct.p_pairwise and result.p_top1 == direct.p_top1
    np.testing.assert_array_equal(result.per_stimulus_pairwise, direct.per_stimulus_pairwise)
    np.testing.assert_array_equal(result.identification.null_pairwise, direct.null_pairwise)
    np.testing.assert_array_equal(result.tested, np.arange(30))
    with pytest.raises(ValueError, match="candidates must be"):
        decode_features(patterns, features, folds, ALPHAS, candidates="others")


def test_planted_truth_is_identified():
    patterns, features = planted(0)
    folds = make_folds(60, n_folds=5, seed=0)
    result = decode_features(patterns, features, folds, ALPHAS, n_permutations=500,
                             rng=np.random.default_rng(0))
    assert result.pairwise_accuracy > 0.9
    assert result.identification.chance_top1 == pytest.approx(1 / 12)
    assert result.top1_accuracy > 5 * result.identification.chance_top1
    assert result.p_pairwise == result.p_top1 == pytest.approx(2 / 501)     # every fold at its smallest p
    assert result.mean_r > 0.5 and result.n_units_valid == 200
    assert result.predictions.shape == features.shape and result.alphas.shape == (5, 200)
    assert result.per_stimulus_pairwise.shape == (60,)


def test_pure_noise_is_not_identified():
    """No information: per-unit r near 0, no significant identification, the accuracy near 0.5."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(100, 50))
    patterns = rng.normal(size=(100, 30))
    folds = make_folds(100, n_folds=10, seed=0)
    result = decode_features(patterns, features, folds, ALPHAS, inner_folds=3, n_permutations=199,
                             rng=np.random.default_rng(0))
    assert abs(result.mean_r) < 0.1
    assert 0.4 < result.pairwise_accuracy < 0.6
    assert result.p_pairwise > 0.2 and result.p_top1 > 0.05
    assert abs(result.identification.null_pairwise.mean() - 0.5) < 0.02
    without_test = decode_features(patterns, features, folds, ALPHAS, inner_folds=3)
    assert np.isnan(without_test.p_pairwise) and np.isnan(without_test.p_top1)
    assert without_test.pairwise_accuracy == result.pairwise_accuracy


def test_pure_noise_accuracy_is_at_chance_and_p_values_are_valid():
    """Over 300 pure-noise data sets (60 stimuli, 5 folds, the spec's default alphas): the fold
    accuracy averages 0.5 and p <= alpha in at most alpha of them. The two schemes not used,
    measured on the same data: all stimuli as candidates averages about 0.33 (each prediction
    leans towards its training stimuli), and one within-fold null pooled over the folds is too
    narrow (the decoders share training data): p <= 0.05 in about 12 %."""
    from bids_dnn.decoding import identification_test as test

    alphas = np.logspace(-2, 8, 11)
    accuracies, p_values, all_accuracies, pooled_p = [], [], [], []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        patterns = rng.normal(size=(60, 40))
        features = rng.normal(size=(60, 50)) + 3.0 * rng.normal(size=50)
        folds = make_folds(60, n_folds=5, seed=seed)
        result = decode_features(patterns, features, folds, alphas, inner_folds=3, seed=seed, n_permutations=99,
                                 rng=np.random.default_rng(1000 + seed))
        accuracies.append(result.pairwise_accuracy)
        p_values.append(result.p_pairwise)
        similarity = similarity_matrix(result.predictions, features)
        all_accuracies.append(test(similarity, n_permutations=0, rng=None).pairwise_accuracy)
        pooled_p.append(test(similarity, n_permutations=99, rng=np.random.default_rng(seed),
                             groups=_fold_of(folds, 60)).p_pairwise)
    p_values, pooled_p = np.array(p_values), np.array(pooled_p)
    assert abs(np.mean(accuracies) - 0.5) < 0.015                # SE about 0.003
    for alpha in (0.05, 0.1, 0.2):
        assert np.mean(p_values <= alpha) <= alpha
    assert np.mean(all_accuracies) < 0.4
    assert np.mean(pooled_p <= 0.05) > 0.08


def test_untested_stimuli_are_left_out(rng):
    patterns, features = planted(2, n_stimuli=24, n_units=30, n_voxels=15)
    order = rng.permutation(24)
    folds = [(np.setdiff1d(np.arange(24), order[i:i + 6]), np.sort(order[i:i + 6])) for i in (0, 6, 12)]
    untested = np.sort(order[18:])
    result = decode_features(patterns, features, folds, ALPHAS, inner_folds=3, n_permutations=50,
                             rng=np.random.default_rng(1))
    tested = np.setdiff1d(np.arange(24), untested)
    np.testing.assert_array_equal(result.tested, tested)
    assert np.isnan(result.per_stimulus_pairwise[untested]).all()
    assert np.isnan(result.predictions[untested]).all()
    assert result.identification.n_candidates == 18
    # candidates="all": the untested stimuli are distractors
    every = decode_features(patterns, features, folds, ALPHAS, inner_folds=3, n_permutations=50,
                            rng=np.random.default_rng(1), candidates="all")
    direct = identification_test(similarity_matrix(every.predictions[tested], features), n_permutations=50,
                                 rng=np.random.default_rng(1), true_index=tested)
    assert direct.n_candidates == 24 and every.identification.n_candidates == 24
    np.testing.assert_array_equal(every.per_stimulus_pairwise[tested], direct.per_stimulus_pairwise)
    assert every.p_pairwise == direct.p_pairwise


def test_a_stimulus_alone_in_its_fold_has_no_accuracy(rng):
    patterns, features = planted(5, n_stimuli=13, n_units=20, n_voxels=10, noise=1.0)
    order = rng.permutation(13)
    tests = [np.sort(order[:6]), np.sort(order[6:12]), order[12:]]
    folds = [(np.setdiff1d(np.arange(13), t), t) for t in tests]
    result = decode_features(patterns, features, folds, ALPHAS, inner_folds=3, n_permutations=20,
                             rng=np.random.default_rng(0))
    assert np.isnan(result.per_stimulus_pairwise[order[12]])
    assert np.isfinite(np.delete(result.per_stimulus_pairwise, order[12])).all()
    assert result.identification.n_defined == 12 and np.isfinite(result.p_pairwise)


def test_constant_unit_has_nan_r(rng):
    patterns, features = planted(3, n_stimuli=30, n_units=10, n_voxels=15)
    features[:, 4] = 1.5
    result = decode_features(patterns, features, make_folds(30, n_folds=5, seed=0), ALPHAS, inner_folds=3)
    assert np.isnan(result.unit_r[4]) and result.n_units_valid == 9
    assert result.mean_r == pytest.approx(np.delete(result.unit_r, 4).mean())
    assert np.isfinite(result.pairwise_accuracy)


def test_input_validation(rng):
    patterns, features = rng.normal(size=(20, 5)), rng.normal(size=(20, 8))
    folds = make_folds(20, n_folds=4, seed=0)
    with pytest.raises(ValueError, match="same number of stimuli"):
        decode_features(patterns[:19], features, folds, ALPHAS)
    bad = patterns.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="patterns contain non-finite"):
        decode_features(bad, features, folds, ALPHAS)
    with pytest.raises(ValueError, match="features contain non-finite"):
        decode_features(patterns, np.where(features > 2, np.inf, features), folds, ALPHAS)
    with pytest.raises(ValueError, match="patterns must be"):
        decode_features(patterns[:, 0], features, folds, ALPHAS)
    with pytest.raises(ValueError, match="rng is required"):
        decode_features(patterns, features, folds, ALPHAS, n_permutations=10)
    with pytest.raises(ValueError, match="index out of range"):
        decode_features(patterns, features, make_folds(25, n_folds=4, seed=0), ALPHAS)


def test_float32_features_agree_with_float64():
    patterns, features = planted(4, n_stimuli=40, n_units=60, n_voxels=20, noise=2.0)
    folds = make_folds(40, n_folds=5, seed=0)
    double = decode_features(patterns, features, folds, ALPHAS, inner_folds=3)
    single = decode_features(patterns, features.astype(np.float32), folds, ALPHAS, inner_folds=3)
    assert single.predictions.dtype == np.float32
    np.testing.assert_allclose(single.unit_r, double.unit_r, atol=1e-4)
    assert single.pairwise_accuracy == pytest.approx(double.pairwise_accuracy, abs=0.01)
