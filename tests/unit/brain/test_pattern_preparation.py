"""Pattern preparation: residual SDs, noise normalisation and split-half reliability."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.brain.patterns import (
    divide_by_sd,
    noise_normalize,
    residual_sd,
    split_half_reliability,
)
from bids_dnn.errors import AnalysisError
from bids_dnn.rsa.noise import noise_covariance


# ---------------------------------------------------------------------------------------
# Noise normalisation
# ---------------------------------------------------------------------------------------


def test_univariate_is_betas_over_residual_sd(rng):
    betas, residuals = rng.normal(size=(8, 30)), rng.normal(size=(100, 30)) * rng.uniform(0.5, 3, 30)
    np.testing.assert_allclose(
        noise_normalize(betas, residuals, "univariate"), betas / residuals.std(axis=0, ddof=1), rtol=1e-12
    )
    dof_scaled = noise_normalize(betas, residuals, "univariate", dof=90)
    resid0 = residuals - residuals.mean(0)
    np.testing.assert_allclose(dof_scaled, betas / np.sqrt((resid0**2).sum(0) / 90), rtol=1e-12)
    np.testing.assert_array_equal(noise_normalize(betas, residuals, "none"), betas)
    residuals[:, 4] = np.nan
    assert np.isnan(noise_normalize(betas, residuals, "univariate")[:, 4]).all()


def test_univariate_blocks_float32_residuals_without_a_float64_copy(rng):
    """Whole-brain float32 residuals: SDs computed in voxel blocks equal numpy's std of the
    float64 copy (NaN and zero-variance voxels left out), and the traced peak stays well below
    the float64 copy the former code made."""
    import tracemalloc

    n_time, n_vox = 120, 8 * 4096 + 17
    residuals = (rng.normal(size=(n_time, n_vox)) * rng.uniform(0.5, 3, n_vox)).astype(np.float32)
    residuals[7, 5000] = np.nan
    residuals[:, 9000] = 1.5  # zero variance
    betas = rng.normal(size=(6, n_vox))
    wide = residuals.astype(np.float64)
    expected = betas / wide.std(axis=0, ddof=1)
    expected[:, [5000, 9000]] = np.nan
    np.testing.assert_allclose(noise_normalize(betas, residuals, "univariate"), expected, rtol=1e-12)
    tracemalloc.start()
    try:
        noise_normalize(betas, residuals, "univariate", dof=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < wide.nbytes / 2, peak / wide.nbytes  # former code: 2 whole float64 copies


def test_multivariate_whitens_known_covariance(rng):
    n_vox = 12
    a = rng.normal(size=(n_vox, n_vox))
    sigma = a @ a.T / n_vox + 0.2 * np.eye(n_vox)
    chol = np.linalg.cholesky(sigma)
    residuals = rng.normal(size=(4000, n_vox)) @ chol.T
    betas = rng.normal(size=(20000, n_vox)) @ chol.T  # patterns with the noise covariance
    white = noise_normalize(betas, residuals, "multivariate", "shrinkage_diag")
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(n_vox), atol=0.08)
    raw_dev = np.abs(np.cov(betas, rowvar=False) - np.eye(n_vox)).max()
    assert raw_dev > 0.5  # the test is not trivial
    # diag estimator = univariate
    np.testing.assert_allclose(
        noise_normalize(betas[:5], residuals, "multivariate", "diag"),
        noise_normalize(betas[:5], residuals, "univariate"),
        rtol=1e-10,
    )


@pytest.mark.parametrize("estimator", ["shrinkage_diag", "shrinkage_eye", "diag"])
def test_covariance_matches_rsatoolbox(rng, estimator):
    noise = pytest.importorskip("rsatoolbox.data.noise")
    residuals = rng.normal(size=(40, 25)) @ rng.normal(size=(25, 25))  # n_time < n_vox
    ours = noise_covariance(residuals, estimator, dof=35)
    np.testing.assert_allclose(ours, noise.cov_from_residuals(residuals, dof=35, method=estimator), rtol=1e-9)
    whitened = noise_normalize(np.eye(25), residuals, "multivariate", estimator, dof=35)
    np.testing.assert_allclose(whitened @ ours @ whitened.T, np.eye(25), atol=1e-6)


# ---------------------------------------------------------------------------------------
# Reliability
# ---------------------------------------------------------------------------------------


def test_split_half_reliability_recovers_planted(rng):
    n_runs, n_cond, n_vox = 8, 2000, 60
    noise_sd = np.linspace(0.3, 3.0, n_vox)  # signal variance 1
    signal = rng.normal(size=(n_cond, n_vox))
    runs = signal + rng.normal(size=(n_runs, n_cond, n_vox)) * noise_sd
    planted = 1.0 / (1.0 + noise_sd**2 / n_runs)  # reliability of the mean over all runs
    rel = split_half_reliability(runs)
    assert rel.shape == (n_vox,)
    assert np.abs(rel - planted).max() < 0.1 and np.abs(rel - planted).mean() < 0.04
    # reference: numpy correlation of odd/even means, Spearman-Brown stepped up
    r = np.array([np.corrcoef(runs[0::2, :, v].mean(0), runs[1::2, :, v].mean(0))[0, 1] for v in range(n_vox)])
    np.testing.assert_allclose(rel, 2 * r / (1 + r), rtol=1e-10)


def test_split_half_reliability_nan_safe(rng):
    runs = rng.normal(size=(4, 10, 5)) + rng.normal(size=(10, 5))
    runs[0, 3, 0] = np.nan  # averaged over the remaining odd run
    runs[:, :, 1] = np.nan  # nothing usable
    runs[:, :, 2] = 1.0  # constant
    rel = split_half_reliability(runs)
    assert np.isfinite(rel[[0, 3, 4]]).all() and np.isnan(rel[[1, 2]]).all()
    a = np.nanmean(runs[0::2, :, 0], axis=0)
    assert a[3] == runs[2, 3, 0]  # run 1 missing: condition 3's odd mean is run 3's value
    r = np.corrcoef(a, runs[1::2, :, 0].mean(0))[0, 1]
    assert rel[0] == pytest.approx(2 * r / (1 + r))
    with pytest.raises(AnalysisError, match="at least 2 runs"):
        split_half_reliability(runs[:1])


def test_residual_sd_pools_runs_without_concatenating(rng):
    """Runs pooled as if concatenated (one mean, one sum of squares), any column subset."""
    runs = [rng.standard_normal((n, 50)).astype(np.float32) + 3.0 for n in (40, 55, 31)]
    runs[1][:, 7] = np.nan
    columns = np.array([3, 7, 0, 49, 12])
    whole = np.concatenate(runs).astype(np.float64)[:, columns]
    expected = np.sqrt(((whole - whole.mean(axis=0)) ** 2).sum(axis=0) / 120)
    got = residual_sd(runs, dof=120, columns=columns, block=2)
    np.testing.assert_allclose(got[[0, 2, 3, 4]], expected[[0, 2, 3, 4]], rtol=1e-12)
    assert np.isnan(got[1])  # the column with a NaN residual
    np.testing.assert_allclose(residual_sd(np.concatenate(runs)), np.concatenate(runs).astype(np.float64).std(
        axis=0, ddof=1), rtol=1e-12)
    betas = rng.standard_normal((4, 5))
    scaled = divide_by_sd(betas, got)
    np.testing.assert_allclose(scaled[:, 0], betas[:, 0] / expected[0], rtol=1e-12)
    assert np.isnan(scaled[:, 1]).all()
