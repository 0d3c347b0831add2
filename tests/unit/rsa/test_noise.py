"""Tests of bids_dnn.rsa.noise: the one registry of covariance estimators against the two former
implementations (``bids_dnn.rsa.rdm`` and ``bids_dnn.brain.patterns`` before they were unified,
copied below), scikit-learn's Ledoit-Wolf, explicit formulas and rsatoolbox."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.errors import AnalysisError
from bids_dnn.rsa import noise as N
from bids_dnn.rsa.rdm import calc_rdm, pair_indices

TOL = dict(rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- former code
def _former_rdm_covariance(res: np.ndarray, dof: float | None, method: str) -> np.ndarray:
    """``bids_dnn.rsa.rdm._covariance`` as it was (one run)."""
    res = np.asarray(res, dtype=np.float64)
    x = res - res.mean(axis=0, keepdims=True)
    n = x.shape[0]
    dof = n - 1 if dof is None else dof
    s_sum = x.T @ x
    if method == "full":
        return s_sum / dof
    if method == "diag":
        return np.diag(np.diag(s_sum) / dof)
    x2 = x * x
    s2_sum = x2.T @ x2
    p = x.shape[1]
    if method == "shrinkage_eye":
        s = s_sum / n
        b2 = np.sum(s2_sum / n - s * s) / n
        m = np.trace(s) / p
        d2 = np.sum((s - m * np.eye(p)) ** 2)
        b2 = min(d2, b2)
        return (b2 / d2 * m * np.eye(p) + (d2 - b2) / d2 * s) * n / dof
    s = s_sum / dof
    var = np.diag(s)
    std = np.sqrt(var)
    s_mean = s_sum / std[None, :] / std[:, None] / (n - 1)
    s2_mean = s2_sum / var[None, :] / var[:, None] / (n - 1)
    var_hat = n / dof ** 2 * (s2_mean - s_mean ** 2)
    off = ~np.eye(p, dtype=bool)
    lamb = np.sum(var_hat[off]) / np.sum(s_mean[off] ** 2)
    lamb = max(min(lamb, 1.0), 0.0)
    return s * (np.eye(p) + (1 - lamb) * off)


def _former_brain_covariance(residuals: np.ndarray, estimator: str, dof: int | None) -> np.ndarray:
    """``bids_dnn.brain.patterns.noise_covariance`` as it was."""
    res = np.asarray(residuals, dtype=np.float64)
    res = res - res.mean(axis=0, keepdims=True)
    dof = res.shape[0] - 1 if dof is None else int(dof)
    n, p = res.shape
    if estimator == "diag":
        return np.diag(np.einsum("ij,ij->j", res, res) / dof)
    if estimator == "shrinkage_eye":
        s = res.T @ res / n
        s2 = (res**2).T @ (res**2) / n
        b2 = np.sum(s2 - s * s) / n
        m = np.trace(s) / p
        d2 = np.sum((s - m * np.eye(p)) ** 2)
        b2 = min(d2, b2)
        shrunk = (b2 / d2) * m * np.eye(p) + ((d2 - b2) / d2) * s if d2 > 0 else s
        return shrunk * n / dof
    cov = res.T @ res
    var = np.diag(cov).copy() / dof
    inv_std = 1.0 / np.sqrt(var)
    corr = cov * inv_std[:, None] * inv_std[None, :] / (n - 1)
    sum_corr2 = np.einsum("ij,ij->", corr, corr) - np.sum(np.diag(corr) ** 2)
    sq = res**2
    s2 = sq.T @ sq
    s2 *= (1.0 / var)[:, None] * (1.0 / var)[None, :] / (n - 1)
    sum_s2 = s2.sum() - np.trace(s2)
    var_hat_off = n / dof**2 * (sum_s2 - sum_corr2)
    lamb = var_hat_off / sum_corr2 if sum_corr2 > 0 else 1.0
    lamb = float(np.clip(np.nan_to_num(lamb, nan=1.0), 0.0, 1.0))
    cov /= dof
    diag = np.diag(cov).copy()
    cov *= 1.0 - lamb
    cov[np.diag_indices(p)] = diag
    return cov


def _residuals(rng: np.random.Generator, n_time: int, n_channels: int) -> np.ndarray:
    mixing = np.eye(n_channels) + 0.4 * rng.normal(size=(n_channels, n_channels))
    return rng.normal(size=(n_time, n_channels)) @ mixing * np.linspace(0.5, 3.0, n_channels) + 7.0


SHAPES = [(40, 8), (30, 45)]  # more time points than channels, and fewer (ROIs larger than a run)


# ----------------------------------------------------------------------------- the estimators
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dof", [None, 27])
@pytest.mark.parametrize("estimator", ["shrinkage_diag", "shrinkage_eye", "diag", "full"])
def test_unified_estimators_equal_both_former_implementations(rng, shape, dof, estimator):
    res = _residuals(rng, *shape)
    ours = N.noise_covariance(res, estimator, dof)
    np.testing.assert_allclose(ours, _former_rdm_covariance(res, dof, estimator), **TOL)
    if estimator != "full":  # the brain module had no 'full'
        np.testing.assert_allclose(ours, _former_brain_covariance(res, estimator, dof), **TOL)
    if estimator in N.WELL_CONDITIONED_ESTIMATORS:
        assert np.linalg.eigvalsh(ours).min() > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_shrinkage_eye_is_sklearn_ledoit_wolf(rng, shape):
    covariance = pytest.importorskip("sklearn.covariance")
    res = _residuals(rng, *shape)
    centred = res - res.mean(axis=0)
    dof = 33
    reference = covariance.ledoit_wolf(centred, assume_centered=True)[0] * shape[0] / dof
    np.testing.assert_allclose(N.noise_covariance(res, "shrinkage_eye", dof), reference, **TOL)


def test_diag_and_full_are_the_sample_variances_and_covariance(rng):
    res = _residuals(rng, 50, 6)
    np.testing.assert_allclose(N.noise_covariance(res, "full"), np.cov(res, rowvar=False), **TOL)
    np.testing.assert_allclose(N.noise_covariance(res, "diag", dof=44),
                               np.diag(res.var(axis=0) * 50 / 44), **TOL)


def test_shrinkage_diag_keeps_variances_and_shrinks_correlations(rng):
    res = _residuals(rng, 25, 12)
    sample = np.cov(res, rowvar=False)
    shrunk = N.noise_covariance(res, "shrinkage_diag")
    np.testing.assert_allclose(np.diag(shrunk), np.diag(sample), **TOL)
    rows, cols = pair_indices(12)
    ratio = shrunk[rows, cols] / sample[rows, cols]
    assert np.ptp(ratio) < 1e-10 and 0 < ratio[0] < 1  # one factor 1 - lambda for all pairs


def test_registries():
    assert N.NOISE_METHODS == ("shrinkage_diag", "shrinkage_eye", "diag", "full")
    assert N.WELL_CONDITIONED_ESTIMATORS == ("shrinkage_diag", "shrinkage_eye", "diag")
    assert N.NOISE_NORMALIZATIONS == ("none", "univariate", "multivariate")


def test_full_is_singular_with_fewer_time_points_than_channels(rng):
    res = _residuals(rng, 10, 15)
    assert np.linalg.matrix_rank(N.noise_covariance(res, "full")) == 9  # n_time - 1 after demeaning
    for name in N.WELL_CONDITIONED_ESTIMATORS:
        assert np.linalg.eigvalsh(N.noise_covariance(res, name)).min() > 0, name


def test_inverse_sqrt_whitens(rng):
    cov = N.noise_covariance(_residuals(rng, 60, 10), "shrinkage_diag")
    w = N.inverse_sqrt(cov)
    np.testing.assert_allclose(w, w.T, **TOL)
    np.testing.assert_allclose(w @ cov @ w, np.eye(10), atol=1e-10)


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("method", N.NOISE_METHODS)
@pytest.mark.parametrize("dof", [None, 30])
def test_noise_precision_vs_rsatoolbox(rng, method, dof):
    noise = pytest.importorskip("rsatoolbox.data.noise")
    res = rng.normal(size=(40, 8)) @ (np.eye(8) + 0.3 * rng.normal(size=(8, 8)))
    ours = N.noise_precision_from_residuals(res, method, dof)
    np.testing.assert_allclose(ours, noise.prec_from_residuals(res, dof=dof, method=method), **TOL)


@pytest.mark.parametrize("method", ["shrinkage_diag", "shrinkage_eye", "diag"])
def test_noise_covariance_vs_rsatoolbox_more_channels_than_time_points(rng, method):
    noise = pytest.importorskip("rsatoolbox.data.noise")
    res = rng.normal(size=(40, 25)) @ rng.normal(size=(25, 25))
    np.testing.assert_allclose(N.noise_covariance(res, method, dof=35),
                               noise.cov_from_residuals(res, dof=35, method=method), rtol=1e-9)


@pytest.mark.parametrize("method", N.NOISE_METHODS)
def test_noise_precision_per_run_and_pooled(rng, method):
    runs = [rng.normal(size=(25 + 5 * i, 6)) for i in range(3)]
    per_run = N.noise_precision_from_residuals(runs, method, per_run=True)
    assert per_run.shape == (3, 6, 6)
    covs = [_former_rdm_covariance(r, None, method) for r in runs]
    for ours, cov in zip(per_run, covs):
        np.testing.assert_allclose(ours, np.linalg.inv(cov), **TOL)
    pooled = N.noise_precision_from_residuals(runs, method)
    np.testing.assert_allclose(pooled, np.linalg.inv(np.mean(covs, axis=0)), **TOL)
    per_run_dof = N.noise_precision_from_residuals(runs, method, dof=[20, 25, 30], per_run=True)
    for i, d in enumerate([20, 25, 30]):
        former = _former_rdm_covariance(runs[i], d, method)
        np.testing.assert_allclose(per_run_dof[i], np.linalg.inv(former), **TOL)


def test_noise_precision_univariate(rng):
    res = rng.normal(size=(30, 5)) * np.arange(1, 6)
    p = N.noise_precision_univariate(res, dof=25)
    np.testing.assert_allclose(p, 25 / np.sum((res - res.mean(0)) ** 2, axis=0), **TOL)
    pats = rng.normal(size=(6, 5))
    rows, cols = pair_indices(6)
    diff = pats[rows] - pats[cols]
    np.testing.assert_allclose(calc_rdm(pats, "mahalanobis", noise_precision=p), (diff**2 * p).sum(1) / 5,
                               **TOL)


def test_errors_are_value_and_analysis_errors(rng):
    res = rng.normal(size=(10, 3))
    bad_inputs = [
        lambda: N.noise_precision_from_residuals(res, "ledoit"),
        lambda: N.noise_covariance(res, "ledoit"),
        lambda: N.noise_precision_from_residuals([res] * 2, dof=[5]),
        lambda: N.noise_precision_from_residuals(res, dof=[5]),
        lambda: N.noise_precision_from_residuals([]),
        lambda: N.noise_covariance(res[:1]),
        lambda: N.noise_covariance(res[:, 0]),
        lambda: N.noise_covariance(np.where(np.eye(10, 3, dtype=bool), np.nan, res)),
        lambda: N.noise_covariance(res, dof=0),
        lambda: N.noise_covariance(np.column_stack([res, np.ones(10)]), "shrinkage_diag"),
    ]
    for make in bad_inputs:
        with pytest.raises(N.NoiseEstimateError) as info:
            make()
        assert isinstance(info.value, ValueError) and isinstance(info.value, AnalysisError)
