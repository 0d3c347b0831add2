"""Tests of bids_dnn.temporal.rdms against rsatoolbox (per-time Dataset and TemporalDataset),
scikit-learn's Ledoit-Wolf, bids_dnn.rsa.calc_crossnobis_rdms and brute-force NumPy loops (float64,
1e-10), plus planted-truth checks of unbiasedness."""

from __future__ import annotations

import warnings
from typing import get_args

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from sklearn.covariance import LedoitWolf

from bids_dnn.errors import AnalysisError
from bids_dnn.rsa import calc_crossnobis_rdms, pair_indices
from bids_dnn.temporal import trial_folds
from bids_dnn.temporal import rdms as R

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.data import Dataset, TemporalDataset  # noqa: E402
from rsatoolbox.data.noise import cov_from_residuals  # noqa: E402
from rsatoolbox.rdm import calc_rdm, calc_rdm_movie  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-12)


def _epochs(rng, n_cond=5, n_trials=6, n_ch=7, n_times=9, signal=1.0):
    """Epochs with condition patterns and channel-correlated noise; labels in shuffled order."""
    labels = rng.permutation(np.repeat(np.arange(n_cond), n_trials))
    patterns = signal * rng.normal(size=(n_cond, n_ch, n_times))
    mixing = np.eye(n_ch) + 0.4 * rng.normal(size=(n_ch, n_ch))
    noise = np.einsum("ntc,cd->ndt", rng.normal(size=(labels.size, n_times, n_ch)), mixing)
    return patterns[labels] + noise, labels


def _rsa(measurements, labels, folds, method, noise=None):
    """rsatoolbox calc_rdm of one time point's trials."""
    ds = Dataset(measurements, obs_descriptors={"conds": labels, "fold": folds})
    kwargs = {"cv_descriptor": "fold", "noise": noise} if method == "crossnobis" else {}
    with warnings.catch_warnings():  # rsatoolbox casts NaN descriptors internally
        warnings.simplefilter("ignore", RuntimeWarning)
        return calc_rdm(ds, method=method, descriptor="conds", **kwargs).get_vectors()[0]


def _rsa_movie(data, labels, folds, method, noise=None):
    """rsatoolbox time point by time point; ``noise`` (c, c), (n_times, c, c) or None."""
    out = []
    for t in range(data.shape[2]):
        noise_t = noise[t] if noise is not None and noise.ndim == 3 else noise
        out.append(_rsa(data[:, :, t], labels, folds, method, noise_t))
    return np.stack(out)


def _residuals(x, labels):
    """Trials (n, c) minus their condition's mean, by a loop over conditions."""
    res = x.astype(np.float64).copy()
    for cond in np.unique(labels):
        res[labels == cond] -= res[labels == cond].mean(axis=0)
    return res


def _brute_cv(data, labels, folds, precisions, scheme):
    """Cross-validated distances by explicit loops over time, pairs and folds.

    precisions: callable (t, k) -> (c, c). ``fold_pairs``: training = mean of the other folds'
    means; ``leave_one_fold_out``: mean of the other folds' trials.
    """
    n_cond, n_ch = labels.max() + 1, data.shape[1]
    fold_ids = np.unique(folds)
    rows, cols = pair_indices(n_cond)
    out = np.zeros((data.shape[2], rows.size))
    for t in range(data.shape[2]):
        x = data[:, :, t]
        fold_means = np.array([[x[(folds == f) & (labels == a)].mean(0) for a in range(n_cond)]
                               for f in fold_ids])
        for k, f in enumerate(fold_ids):
            if scheme == "fold_pairs":
                train = np.delete(fold_means, k, axis=0).mean(0)
            else:
                train = np.array([x[(folds != f) & (labels == a)].mean(0) for a in range(n_cond)])
            for p, (a, b) in enumerate(zip(rows, cols)):
                out[t, p] += (train[a] - train[b]) @ precisions(t, k) @ (fold_means[k, a] - fold_means[k, b])
    return out / (fold_ids.size * n_ch)


@pytest.fixture
def epochs(rng):
    data, labels = _epochs(rng)
    return data, labels, trial_folds(labels, 3, seed=0)  # 6 trials per condition: 2 per fold


@pytest.fixture
def unbalanced(rng):
    data, labels = _epochs(rng, n_trials=7)
    return data, labels, trial_folds(labels, 3, seed=1)  # 3, 2, 2 trials per fold


# ----------------------------------------------------------------------------- condition means
def test_condition_means_vs_loop(epochs):
    data, labels, _ = epochs
    expected = np.stack([data[labels == a].mean(axis=0) for a in range(5)])
    for batch in (None, 1, 4):
        np.testing.assert_allclose(R.condition_means(data, labels, time_batch=batch), expected, **TOL)
    np.testing.assert_allclose(R.condition_means(data.astype(np.float32), labels),
                               np.stack([data.astype(np.float32)[labels == a].astype(np.float64).mean(0)
                                         for a in range(5)]), **TOL)
    with pytest.raises(R.EpochsError, match="condition 5"):
        R.condition_means(data, labels, n_conditions=6)


# ----------------------------------------------------------------------------- noise precision
@pytest.mark.parametrize("estimator", ["shrinkage_diag", "shrinkage_eye"])
def test_noise_precision_vs_rsatoolbox_and_sklearn(epochs, estimator):
    data, labels, _ = epochs
    n_trials, _, n_times = data.shape
    dof = n_trials - 5
    covs = []
    for t in range(n_times):
        res = _residuals(data[:, :, t], labels)
        if estimator == "shrinkage_diag":
            covs.append(cov_from_residuals(res, dof=dof, method="shrinkage_diag"))
        else:  # Ledoit-Wolf on the (already centred) residuals, rescaled from 1/n to 1/dof
            covs.append(LedoitWolf(assume_centered=True).fit(res).covariance_ * n_trials / dof)
    covs = np.stack(covs)
    epoch = R.residual_noise_precision(data, labels, estimator=estimator, time_batch=4)
    np.testing.assert_allclose(epoch, np.linalg.inv(covs.mean(axis=0)), **TOL)
    per_time = R.residual_noise_precision(data, labels, estimator=estimator, per_time=True, time_batch=2)
    np.testing.assert_allclose(per_time, np.linalg.inv(covs), **TOL)


def test_noise_precision_univariate_and_none(epochs):
    data, labels, _ = epochs
    dof = data.shape[0] - 5
    variances = np.stack([(_residuals(data[:, :, t], labels) ** 2).sum(0) / dof for t in range(data.shape[2])])
    np.testing.assert_allclose(R.residual_noise_precision(data, labels, method="univariate"),
                               1.0 / variances.mean(axis=0), **TOL)
    np.testing.assert_allclose(R.residual_noise_precision(data, labels, method="univariate", per_time=True),
                               1.0 / variances, **TOL)
    assert R.residual_noise_precision(data, labels, method="none") is None


def test_noise_precision_of_training_trials(epochs):
    data, labels, folds = epochs
    mask = folds != 1
    np.testing.assert_allclose(R.residual_noise_precision(data, labels, trials=mask),
                               R.residual_noise_precision(data[mask], labels[mask]), **TOL)
    mask = labels != 4  # a condition absent from the mask counts neither trials nor dof
    np.testing.assert_allclose(R.residual_noise_precision(data, labels, trials=mask, method="univariate"),
                               R.residual_noise_precision(data[mask], labels[mask], method="univariate"), **TOL)
    stacked = R.fold_noise_precisions(data, labels, folds, per_time=True)
    assert stacked.shape == (3, data.shape[2], 7, 7)
    for k in range(3):
        np.testing.assert_allclose(stacked[k], R.residual_noise_precision(data, labels, per_time=True,
                                                                          trials=folds != k), **TOL)
    assert R.fold_noise_precisions(data, labels, folds, method="none") is None


def test_noise_precision_errors(epochs):
    data, labels, _ = epochs
    with pytest.raises(R.EpochsError, match="degrees of freedom"):
        R.residual_noise_precision(data, labels, trials=np.arange(labels.size) < 6)
    with pytest.raises(R.EpochsError, match="unknown noise normalisation"):
        R.residual_noise_precision(data, labels, method="whitening")
    with pytest.raises(R.EpochsError, match="unknown covariance estimator"):
        R.residual_noise_precision(data, labels, estimator="oas")
    with pytest.raises(R.EpochsError, match="boolean mask"):
        R.residual_noise_precision(data, labels, trials=np.arange(labels.size))


# ----------------------------------------------------------------------------- against rsatoolbox
@pytest.mark.parametrize("scheme", list(R.CV_SCHEMES))
def test_crossnobis_equals_rsatoolbox_with_balanced_folds(epochs, scheme):
    data, labels, folds = epochs
    precision = R.residual_noise_precision(data, labels)
    ours = R.time_resolved_rdms(data, labels, measure="crossnobis", folds=folds, noise_precision=precision,
                                cv_scheme=scheme)
    np.testing.assert_allclose(ours, _rsa_movie(data, labels, folds, "crossnobis", precision), **TOL)
    per_time = R.residual_noise_precision(data, labels, per_time=True)
    ours = R.time_resolved_rdms(data, labels, measure="crossnobis", folds=folds, noise_precision=per_time,
                                noise_per_time=True, cv_scheme=scheme, time_batch=4)
    np.testing.assert_allclose(ours, _rsa_movie(data, labels, folds, "crossnobis", per_time), **TOL)
    diagonal = R.residual_noise_precision(data, labels, method="univariate")
    ours = R.time_resolved_rdms(data, labels, measure="crossnobis", folds=folds, noise_precision=diagonal,
                                cv_scheme=scheme)
    np.testing.assert_allclose(ours, _rsa_movie(data, labels, folds, "crossnobis", np.diag(diagonal)), **TOL)


def test_euclidean_cv_is_rsatoolbox_crossnobis_without_noise(epochs):
    data, labels, folds = epochs
    ours = R.time_resolved_rdms(data, labels, measure="euclidean_cv", folds=folds)
    np.testing.assert_allclose(ours, _rsa_movie(data, labels, folds, "crossnobis", None), **TOL)
    np.testing.assert_allclose(R.time_resolved_rdms(data, labels, measure="crossnobis", folds=folds), ours, **TOL)
    # rsatoolbox's 'euclidean' is not cross-validated: the squared distance of the condition means / c
    means = R.condition_means(data, labels)
    rows, cols = pair_indices(5)
    plain = ((means[rows] - means[cols]) ** 2).sum(axis=1).T / data.shape[1]
    np.testing.assert_allclose(_rsa_movie(data, labels, folds, "euclidean"), plain, **TOL)


def test_unbalanced_folds(unbalanced):
    """rsatoolbox pools the training folds' trials: equal to leave_one_fold_out; fold_pairs is the
    mean over fold pairs of the fold means (calc_crossnobis_rdms) and differs here."""
    data, labels, folds = unbalanced
    assert len(set(np.bincount(folds * 5 + labels))) > 1
    precision = R.residual_noise_precision(data, labels)
    loo = R.time_resolved_rdms(data, labels, folds=folds, noise_precision=precision, cv_scheme="leave_one_fold_out")
    np.testing.assert_allclose(loo, _rsa_movie(data, labels, folds, "crossnobis", precision), **TOL)
    pairs = R.time_resolved_rdms(data, labels, folds=folds, noise_precision=precision)
    fold_means = np.stack([R.condition_means(data[folds == k], labels[folds == k]) for k in range(3)])
    np.testing.assert_allclose(pairs, calc_crossnobis_rdms(fold_means.transpose(3, 0, 1, 2), precision), **TOL)
    assert np.max(np.abs(pairs - loo)) > 1e-3


def test_temporal_dataset_and_calc_rdm_movie(unbalanced):
    data, labels, folds = unbalanced
    precision = R.residual_noise_precision(data, labels, estimator="shrinkage_eye")
    ds = TemporalDataset(data, obs_descriptors={"conds": labels, "fold": folds},
                         time_descriptors={"time": np.arange(data.shape[2]) / 100})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        movie = calc_rdm_movie(ds, method="crossnobis", descriptor="conds", cv_descriptor="fold",
                               noise=precision).get_vectors()
        corr = calc_rdm_movie(ds, method="correlation", descriptor="conds").get_vectors()
    np.testing.assert_allclose(R.time_resolved_rdms(data, labels, folds=folds, noise_precision=precision,
                                                    cv_scheme="leave_one_fold_out"), movie, **TOL)
    np.testing.assert_allclose(R.time_resolved_rdms(data, labels, measure="correlation"), corr, **TOL)


def test_correlation_vs_rsatoolbox_and_whitened_patterns(epochs):
    data, labels, folds = epochs
    np.testing.assert_allclose(R.time_resolved_rdms(data, labels, measure="correlation", folds=folds),
                               _rsa_movie(data, labels, folds, "correlation"), **TOL)
    precision = R.residual_noise_precision(data, labels)
    whitening = np.real(sqrtm(precision))  # Sigma^(-1/2), symmetric (Guggenmos et al. 2018)
    whitened = np.einsum("ncT,cd->ndT", data, whitening)
    np.testing.assert_allclose(R.time_resolved_rdms(data, labels, measure="correlation", noise_precision=precision),
                               _rsa_movie(whitened, labels, folds, "correlation"), **TOL)
    variances = R.residual_noise_precision(data, labels, method="univariate", per_time=True)
    scaled = data * np.sqrt(variances.T)[None]
    np.testing.assert_allclose(R.time_resolved_rdms(data, labels, measure="correlation", noise_precision=variances,
                                                    noise_per_time=True),
                               _rsa_movie(scaled, labels, folds, "correlation"), **TOL)


# ----------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("scheme", list(R.CV_SCHEMES))
def test_per_fold_precisions_vs_loop(unbalanced, scheme):
    data, labels, folds = unbalanced
    per_fold = R.fold_noise_precisions(data, labels, folds)
    ours = R.time_resolved_rdms(data, labels, folds=folds, noise_precision=per_fold, noise_per_fold=True,
                                cv_scheme=scheme, time_batch=2)
    np.testing.assert_allclose(ours, _brute_cv(data, labels, folds, lambda t, k: per_fold[k], scheme), **TOL)
    per_fold_time = R.fold_noise_precisions(data, labels, folds, method="univariate", per_time=True)
    ours = R.time_resolved_rdms(data, labels, folds=folds, noise_precision=per_fold_time, noise_per_fold=True,
                                noise_per_time=True, cv_scheme=scheme)
    expected = _brute_cv(data, labels, folds, lambda t, k: np.diag(per_fold_time[k, t]), scheme)
    np.testing.assert_allclose(ours, expected, **TOL)


def test_streaming_in_time_batches_is_exact(epochs):
    data, labels, folds = epochs
    per_time = R.residual_noise_precision(data, labels, per_time=True)
    for measure, kwargs in (("crossnobis", {"noise_precision": per_time, "noise_per_time": True}),
                            ("correlation", {}), ("euclidean_cv", {"cv_scheme": "leave_one_fold_out"})):
        whole = R.time_resolved_rdms(data, labels, measure=measure, folds=folds, time_batch=data.shape[2], **kwargs)
        for batch in (1, 2, 4, None):
            np.testing.assert_allclose(R.time_resolved_rdms(data, labels, measure=measure, folds=folds,
                                                            time_batch=batch, **kwargs), whole, **TOL)


def test_float32_and_labels_in_any_order(epochs):
    data, labels, folds = epochs
    precision = R.residual_noise_precision(data, labels)
    ref = R.time_resolved_rdms(data, labels, folds=folds, noise_precision=precision)
    single = R.time_resolved_rdms(data.astype(np.float32), labels, folds=folds, noise_precision=precision,
                                  dtype=np.float32)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    order = np.argsort(labels, kind="stable")
    np.testing.assert_allclose(R.time_resolved_rdms(data[order], labels[order], folds=folds[order],
                                                    noise_precision=precision), ref, **TOL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("measure", list(R.TEMPORAL_RDM_MEASURES))
def test_cuda_matches_cpu(epochs, measure):
    data, labels, folds = epochs
    kwargs = {} if measure == "euclidean_cv" else {"noise_precision": R.residual_noise_precision(data, labels)}
    np.testing.assert_allclose(R.time_resolved_rdms(data, labels, measure=measure, folds=folds, device="cuda",
                                                    **kwargs),
                               R.time_resolved_rdms(data, labels, measure=measure, folds=folds, **kwargs), **TOL)


# ----------------------------------------------------------------------------- planted truth
def test_cross_validated_distances_are_unbiased():
    """Conditions 0 and 1 are identical: their cross-validated distance is 0 in expectation (the
    mean over 10 seeds x 200 independent time points is within 4 standard errors of 0), while the
    plain squared Euclidean distance of the means is positive; conditions 0 and 2 differ by a known
    pattern and euclidean_cv recovers ``||mu_0 - mu_2||^2 / c`` without bias."""
    n_cond, n_trials, n_ch, n_times = 3, 8, 6, 200
    same, diff, plain, known = [], [], [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(n_cond), n_trials)
        patterns = rng.normal(size=(n_cond, n_ch, 1)) * np.ones((1, 1, n_times))
        patterns[1] = patterns[0]
        data = patterns[labels] + rng.normal(size=(labels.size, n_ch, n_times))
        folds = trial_folds(labels, 4, seed)
        same.append(R.time_resolved_rdms(data, labels, measure="euclidean_cv", folds=folds)[:, 0])
        per_fold = R.fold_noise_precisions(data, labels, folds)
        for scheme in R.CV_SCHEMES:
            diff.append(R.time_resolved_rdms(data, labels, folds=folds, noise_precision=per_fold,
                                             noise_per_fold=True, cv_scheme=scheme)[:, 0])
        means = R.condition_means(data, labels)
        plain.append(((means[0] - means[1]) ** 2).sum(axis=0) / n_ch)
        truth = ((patterns[0, :, 0] - patterns[2, :, 0]) ** 2).sum() / n_ch
        known.append(R.time_resolved_rdms(data, labels, measure="euclidean_cv", folds=folds)[:, 1] - truth)
    for values in (same, diff, known):
        values = np.concatenate(values)
        assert abs(values.mean()) < 4 * values.std() / np.sqrt(values.size)
        assert values.min() < 0  # unbiased estimates go below 0
    plain = np.concatenate(plain)
    assert plain.mean() > 20 * plain.std() / np.sqrt(plain.size)
    np.testing.assert_allclose(plain.mean(), 2 / n_trials, rtol=0.1)  # E = 2 sigma^2 / n per channel


# ----------------------------------------------------------------------------- errors
def test_condition_missing_from_a_fold(epochs):
    data, labels, folds = epochs
    folds = folds.copy()
    folds[(labels == 3) & (folds == 2)] = 0
    with pytest.raises(ValueError, match="every condition must occur in every fold.*condition 3.*fold 2"):
        R.time_resolved_rdms(data, labels, folds=folds)
    with pytest.raises(AnalysisError):  # a readable message on the command line too
        R.time_resolved_rdms(data, labels, folds=folds)


def test_errors(epochs):
    data, labels, folds = epochs
    precision = R.residual_noise_precision(data, labels)
    cases = [
        (dict(measure="mahalanobis", folds=folds), "unknown time-resolved RDM measure"),
        (dict(folds=folds, cv_scheme="split_half"), "unknown cross-validation scheme"),
        (dict(), "need folds"),
        (dict(folds=np.zeros_like(folds)), "at least 2 folds"),
        (dict(measure="euclidean_cv", folds=folds, noise_precision=precision), "takes no noise precision"),
        (dict(folds=folds, noise_precision=precision, noise_per_time=True), "noise_precision has shape"),
        (dict(folds=folds, noise_precision=precision[:3, :3]), "noise_precision has shape"),
        (dict(folds=folds, noise_precision=-np.ones(7)), "must be positive"),
        (dict(measure="correlation", noise_precision=precision[None], noise_per_fold=True),
         "not cross-validated"),
        (dict(folds=folds[:-1]), "one entry per trial"),
        (dict(folds=folds.astype(float)), "must be integers"),
    ]
    for kwargs, message in cases:
        with pytest.raises(R.EpochsError, match=message):
            R.time_resolved_rdms(data, labels, **kwargs)
    with pytest.raises(R.EpochsError, match="must be integers"):
        R.time_resolved_rdms(data, labels.astype(float), folds=folds)
    with pytest.raises(R.EpochsError, match="no trial"):
        R.time_resolved_rdms(data, np.where(labels == 2, 5, labels), folds=folds)
    bad = data.copy()
    bad[3, 2, 4] = np.nan
    with pytest.raises(R.EpochsError, match="NaN"):
        R.time_resolved_rdms(bad, labels, folds=folds)
    with pytest.raises(R.EpochsError, match="n_trials, n_channels, n_times"):
        R.time_resolved_rdms(data[:, :, 0], labels, folds=folds)


def test_registries_match_the_spec():
    spec = pytest.importorskip("bids_dnn.spec")
    meeg = getattr(spec, "MeegSpec", None)
    if meeg is None:
        pytest.skip("no MeegSpec in bids_dnn.spec")
    rdm_choices = set(get_args(meeg.model_fields["rdm"].annotation))
    assert set(R.TEMPORAL_RDM_MEASURES) == rdm_choices - {"decoding"}
    assert set(R.NOISE_NORMALIZATION_METHODS) == set(get_args(meeg.model_fields["noise_normalization"].annotation))


def test_flat_channel_has_no_univariate_precision(epochs):
    data, labels, _ = epochs
    flat = data.copy()
    flat[:, 3, :] = 1.0
    with pytest.raises(R.EpochsError, match="no residual variance"):
        R.residual_noise_precision(flat, labels, method="univariate")
    with pytest.raises(ValueError):  # NoiseEstimateError of the shrinkage_diag estimator
        R.residual_noise_precision(flat, labels)
