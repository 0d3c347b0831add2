"""Time-resolved encoding (bids_dnn.temporal.encoding) against scikit-learn nested cross-validation
per target and a planted time window. Seeded; runs in a few seconds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler

from bids_dnn.encoding import cross_validated_ridge, inner_folds_for, make_folds
from bids_dnn.temporal.encoding import time_resolved_encoding

ALPHAS = np.logspace(-2, 5, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small matrices: one BLAS thread is faster when other processes load the cores."""
    import himalaya.kernel_ridge  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _epochs(rng, n_conditions=48, n_units=30, n_channels=4, n_times=10, signal_times=slice(3, 6), noise=0.3):
    """Features and condition-averaged epochs that carry the features (through random channel
    weights) only at ``signal_times``, plus Gaussian noise everywhere."""
    features = rng.standard_normal((n_conditions, n_units))
    weights = rng.standard_normal((n_units, n_channels))
    signal = features @ weights
    signal /= signal.std(axis=0)
    responses = noise * rng.standard_normal((n_conditions, n_channels, n_times))
    responses[:, :, signal_times] += signal[:, :, None]
    return features, responses


def _grid_search_reference(features, target, folds, seed):
    """Held-out r (mean of within-fold Pearson r), pooled R2 and chosen alphas of one target with
    StandardScaler fitted on each outer training set and GridSearchCV(Ridge) on the same inner
    folds (minus the MSE averaged over inner folds, as himalaya scores)."""
    predictions = np.full(target.shape, np.nan)
    fold_r, chosen = [], []
    for k, (train, test) in enumerate(folds):
        scaler = StandardScaler().fit(features[train])
        inner = inner_folds_for(train, inner_folds=5, seed=seed, outer_fold=k)
        search = GridSearchCV(Ridge(solver="svd"), {"alpha": ALPHAS}, cv=inner, scoring="neg_mean_squared_error")
        search.fit(scaler.transform(features[train]), target[train])
        predictions[test] = search.predict(scaler.transform(features[test]))
        fold_r.append(scipy.stats.pearsonr(predictions[test], target[test])[0])
        chosen.append(search.best_params_["alpha"])
    r2 = 1.0 - np.sum((target - predictions) ** 2) / np.sum((target - target.mean()) ** 2)
    return np.mean(fold_r), r2, np.array(chosen)


@pytest.mark.parametrize("n_units", [120, 12], ids=["kernel", "primal"])
def test_matches_grid_search_per_target(rng, n_units):
    features, responses = _epochs(rng, n_units=n_units, n_channels=3, n_times=6)
    folds = make_folds(features.shape[0], n_folds=4, seed=1)
    result = time_resolved_encoding(features, responses, folds, alphas=ALPHAS, seed=7)
    assert result.r.shape == result.r2.shape == (3, 6)
    assert result.alphas.shape == result.fold_r.shape == (4, 3, 6)
    assert result.predictions.shape == responses.shape
    assert result.solver == ("kernel" if n_units > 36 else "primal")
    for channel, time in [(0, 0), (1, 4), (2, 3), (2, 5)]:
        r, r2, alphas = _grid_search_reference(features, responses[:, channel, time], folds, seed=7)
        assert result.r[channel, time] == pytest.approx(r, abs=1e-6)
        assert result.r2[channel, time] == pytest.approx(r2, abs=1e-6)
        np.testing.assert_array_equal(result.alphas[:, channel, time], alphas)


def test_targets_keep_their_channel_and_time(rng):
    """Every (channel, time) result equals the ridge fitted on that response column alone."""
    features, responses = _epochs(rng, n_channels=3, n_times=5)
    folds = make_folds(features.shape[0], n_folds=4, seed=0)
    result = time_resolved_encoding(features, responses, folds, alphas=ALPHAS)
    for channel in range(3):
        for time in range(5):
            alone = cross_validated_ridge(features, responses[:, channel, time], folds, ALPHAS)
            np.testing.assert_allclose(result.r[channel, time], alone.r[0], rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(result.r2[channel, time], alone.r2[0], rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(result.predictions[:, channel, time], alone.predictions[:, 0],
                                       rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.mean_r, result.r.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.mean_r2, result.r2.mean(axis=0), rtol=1e-12)


def test_planted_time_window(rng):
    """Signal at samples 5-8 only: r high there, about 0 elsewhere (margins measured over 30 seeds:
    inside mean r >= 0.90, channel r >= 0.75, mean R2 >= 0.82; outside |mean r| <= 0.17, mean R2 <= -0.02)."""
    features, responses = _epochs(rng, n_conditions=60, n_units=20, n_channels=12, n_times=16,
                                  signal_times=slice(5, 9))
    folds = make_folds(60, n_folds=5, seed=0)
    result = time_resolved_encoding(features, responses, folds, alphas=ALPHAS)
    inside = np.zeros(16, dtype=bool)
    inside[5:9] = True
    assert np.all(result.r[:, inside] > 0.6)
    assert np.all(result.mean_r[inside] > 0.8) and np.all(result.mean_r2[inside] > 0.6)
    assert np.all(np.abs(result.mean_r[~inside]) < 0.3)
    assert np.all(result.mean_r2[~inside] < 0.05)


def test_float32_and_constant_channel(rng):
    features, responses = _epochs(rng, n_channels=3, n_times=6)
    responses[:, 1, :] = 2.0  # a flat channel: NaN scores, skipped by the channel means
    folds = make_folds(features.shape[0], n_folds=4, seed=0)
    double = time_resolved_encoding(features, responses, folds, alphas=ALPHAS)
    single = time_resolved_encoding(features, responses.astype(np.float32), folds, alphas=ALPHAS)
    assert np.all(np.isnan(double.r[1])) and np.all(np.isnan(double.r2[1]))
    np.testing.assert_allclose(double.mean_r, np.mean(double.r[[0, 2]], axis=0), rtol=1e-12)
    np.testing.assert_allclose(single.r, double.r, atol=1e-4, equal_nan=True)


def test_errors(rng):
    features, responses = _epochs(rng, n_channels=2, n_times=3)
    folds = make_folds(features.shape[0], n_folds=3, seed=0)
    with pytest.raises(ValueError, match="n_channels, n_times"):
        time_resolved_encoding(features, responses[:, :, 0], folds, alphas=ALPHAS)
    with pytest.raises(ValueError, match="conditions"):
        time_resolved_encoding(features[:-1], responses, folds, alphas=ALPHAS)
