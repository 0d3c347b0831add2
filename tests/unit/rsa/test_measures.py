"""The measure registries of bids_dnn.rsa.measures: every property a registry entry declares holds
for its computation, and every list derived from the registries (spec, searchlight, report,
workflows) has the names and order it had before the registries existed."""

from __future__ import annotations

import subprocess
import sys
import typing

import numpy as np
import pytest

from bids_dnn.rsa import measures as MS
from bids_dnn.rsa.compare import COMPARISON_MEASURES, compare_rdms, transform_for_measure
from bids_dnn.rsa.rdm import RDM_MEASURES
from bids_dnn.rsa.resampling import evaluate_resamples
from bids_dnn.rsa.weighted import fit_nonnegative_weights

TOL = dict(rtol=1e-10, atol=1e-10)


def _rdms(rng: np.random.Generator, n_rows: int, n_cond: int = 8) -> np.ndarray:
    return rng.random((n_rows, n_cond * (n_cond - 1) // 2))


# ----------------------------------------------------------------------------- computing registries
def test_computing_registries_follow_the_name_registries():
    assert tuple(RDM_MEASURES) == MS.RDM_MEASURE_NAMES
    assert tuple(COMPARISON_MEASURES) == MS.COMPARISON_MEASURE_NAMES
    assert set(MS.RSATOOLBOX_NAMES) == set(MS.COMPARISON_MEASURE_NAMES)


@pytest.mark.parametrize("measure", MS.COMPARISON_MEASURE_NAMES)
def test_linear_means_a_dot_product_after_the_transform(rng, measure):
    a, b = _rdms(rng, 3), _rdms(rng, 4)
    if MS.COMPARISON_MEASURE_REGISTRY[measure].linear:
        dot = transform_for_measure(a, measure) @ transform_for_measure(b, measure).T
        np.testing.assert_allclose(dot, compare_rdms(a, b, measure), **TOL)
    else:
        with pytest.raises(ValueError):
            transform_for_measure(a, measure)


@pytest.mark.parametrize("measure", MS.COMPARISON_MEASURE_NAMES)
def test_weighted_resampling_means_a_weighted_kernel_equal_to_the_loop(rng, measure):
    data, models = _rdms(rng, 4), _rdms(rng, 2)
    idx = rng.integers(0, 8, size=(5, 8))
    if measure in MS.WEIGHTED_RESAMPLING_MEASURES:
        weighted = evaluate_resamples(data, models, measure, stimulus_indices=idx, method="weighted")
        loop = evaluate_resamples(data, models, measure, stimulus_indices=idx, method="loop")
        np.testing.assert_allclose(weighted[0], loop[0], **TOL)
        np.testing.assert_allclose(weighted[1], loop[1], **TOL)
    else:
        with pytest.raises(ValueError):
            evaluate_resamples(data, models, measure, stimulus_indices=idx, method="weighted")


@pytest.mark.parametrize("measure", MS.COMPARISON_MEASURE_NAMES)
def test_correlation_measures_ignore_shift_and_scale(rng, measure):
    x = _rdms(rng, 1)[0]
    similarity = compare_rdms(x, 2.5 * x + 3.0, measure)[0, 0]
    if measure in MS.CORRELATION_MEASURES:
        assert similarity == pytest.approx(1.0, abs=1e-12)
    if measure in ("cosine", "cosine_cov"):
        assert similarity < 1 - 1e-3  # the cosines are not correlations


@pytest.mark.parametrize("measure", MS.COMPARISON_MEASURE_NAMES)
def test_least_squares_measures_are_the_fit_criteria(rng, measure):
    predictors, target = _rdms(rng, 3), _rdms(rng, 1)[0]
    if MS.COMPARISON_MEASURE_REGISTRY[measure].least_squares:
        assert MS.FIT_MEASURES[measure] == MS.RSATOOLBOX_NAMES[measure]
        assert fit_nonnegative_weights(predictors, target, measure=measure).shape == (3,)
    else:
        assert measure not in MS.FIT_MEASURES
        with pytest.raises(ValueError):
            fit_nonnegative_weights(predictors, target, measure=measure)


def test_model_rdm_measures_need_no_noise_and_no_runs(rng):
    patterns = rng.normal(size=(6, 10))
    for name in MS.MODEL_RDM_MEASURES:
        assert RDM_MEASURES[name](patterns).shape == (15,)
    for name in set(MS.RDM_MEASURE_NAMES) - set(MS.MODEL_RDM_MEASURES):
        assert MS.RDM_MEASURE_REGISTRY[name].uses_noise
    runs = rng.normal(size=(3, 6, 10))
    for name, measure in MS.RDM_MEASURE_REGISTRY.items():
        if measure.needs_runs:
            assert RDM_MEASURES[name](runs).shape == (15,)
            with pytest.raises(ValueError):
                RDM_MEASURES[name](patterns)


# ----------------------------------------------------------------------------- derived lists
def test_derived_lists_keep_their_former_names_and_order():
    assert MS.RDM_MEASURE_NAMES == ("crossnobis", "correlation", "cosine", "euclidean", "sqeuclidean",
                                    "mahalanobis")
    assert MS.MODEL_RDM_MEASURES == ("correlation", "cosine", "euclidean", "sqeuclidean")
    assert MS.COMPARISON_MEASURE_NAMES == ("spearman", "pearson", "kendall_tau_a", "rho_a", "cosine",
                                           "corr_cov", "cosine_cov")
    assert MS.LINEAR_MEASURES == ("spearman", "pearson", "rho_a", "cosine", "corr_cov", "cosine_cov")
    assert set(MS.WEIGHTED_RESAMPLING_MEASURES) == {"spearman", "pearson", "cosine", "rho_a"}
    assert set(MS.CORRELATION_MEASURES) == {"spearman", "pearson", "rho_a", "corr_cov"}
    assert MS.FIT_MEASURES == {"cosine": "cosine", "pearson": "corr", "cosine_cov": "cosine_cov",
                               "corr_cov": "corr_cov"}
    assert MS.RSATOOLBOX_NAMES == {"spearman": "spearman", "pearson": "corr", "kendall_tau_a": "tau-a",
                                   "rho_a": "rho-a", "cosine": "cosine", "corr_cov": "corr_cov",
                                   "cosine_cov": "cosine_cov"}


def test_spec_takes_its_allowed_values_from_the_registries():
    from bids_dnn import spec
    from bids_dnn.rsa.noise import NOISE_NORMALIZATIONS, WELL_CONDITIONED_ESTIMATORS
    from bids_dnn.stats.correction import CORRECTIONS
    from bids_dnn.stats.group_tests import GROUP_TESTS

    assert typing.get_args(spec.BrainRdmMeasure) == ("auto",) + MS.RDM_MEASURE_NAMES
    assert typing.get_args(spec.ModelRdmMeasure) == MS.MODEL_RDM_MEASURES
    assert typing.get_args(spec.ComparisonMeasure) == MS.COMPARISON_MEASURE_NAMES
    assert typing.get_args(spec.NoiseNormalization) == NOISE_NORMALIZATIONS == ("none", "univariate",
                                                                                "multivariate")
    assert typing.get_args(spec.NoiseEstimator) == WELL_CONDITIONED_ESTIMATORS
    assert typing.get_args(spec.GroupTestName) == tuple(GROUP_TESTS) == ("ttest", "wilcoxon")
    assert typing.get_args(spec.CorrectionName) == tuple(CORRECTIONS) == ("fdr_bh", "bonferroni", "none")
    for name in MS.COMPARISON_MEASURE_NAMES:  # searchlights take the dot-product measures only
        ok = name in MS.LINEAR_MEASURES
        try:
            spec.SearchlightSpec(comparison=name)
        except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError
            assert not ok and "too slow for searchlights" in str(exc), exc
        else:
            assert ok


def test_searchlight_computes_every_rdm_measure():
    from bids_dnn.searchlight import SEARCHLIGHT_RDM_MEASURES

    assert set(SEARCHLIGHT_RDM_MEASURES) == {"correlation", "cosine", "euclidean", "sqeuclidean",
                                             "mahalanobis", "crossnobis"}


def test_report_wording_is_unchanged():
    from bids_dnn.report.methods import COMPARISON_TEXT, CORRECTION_TEXT, MEASURE_TEXT

    assert COMPARISON_TEXT == {"spearman": "Spearman rank correlation", "pearson": "Pearson correlation",
                               "kendall_tau_a": "Kendall's tau-a", "rho_a": "Spearman's rho-a",
                               "cosine": "cosine similarity", "corr_cov": "whitened Pearson correlation",
                               "cosine_cov": "whitened cosine similarity"}
    assert MEASURE_TEXT == {"correlation": "correlation distance (1 - Pearson r)",
                            "cosine": "cosine distance", "euclidean": "Euclidean distance",
                            "sqeuclidean": "squared Euclidean distance per channel",
                            "mahalanobis": "Mahalanobis distance",
                            "crossnobis": "cross-validated Mahalanobis (crossnobis) distance across runs"}
    assert CORRECTION_TEXT == {"fdr_bh": "Benjamini-Hochberg false discovery rate",
                               "bonferroni": "Bonferroni", "none": "no"}


def test_registries_load_without_torch_or_scipy():
    code = ("import sys, bids_dnn.rsa.measures, bids_dnn.rsa.noise, bids_dnn.spec; "
            "heavy = [m for m in ('torch', 'scipy') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
