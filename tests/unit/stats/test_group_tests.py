"""Tests of bids_dnn.stats.group_tests against scipy's per-column tests."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from bids_dnn.stats.group_tests import GROUP_TESTS, one_sample_tests, paired_tests


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_one_sample_tests_vs_scipy(rng, alternative):
    x = rng.normal(0.3, 1, size=(16, 6))
    x[:, 1] = np.round(x[:, 1])  # ties and zeros
    x[:4, 2] = 0.0
    x[:, 3] = rng.normal(0.1, 1, 16)
    x[[0, 5, 9], 3] = np.nan  # omitted
    x[:, 4] = 0.0  # all zero
    x[1:, 5] = np.nan  # n = 1
    out = one_sample_tests(x, alternative=alternative)
    np.testing.assert_array_equal(out["n"], [16, 16, 16, 13, 16, 1])
    for j in range(4):
        col = x[:, j][np.isfinite(x[:, j])]
        t = scipy.stats.ttest_1samp(col, 0.0, alternative=alternative)
        assert out["t"][j] == pytest.approx(t.statistic, rel=1e-10)
        assert out["p_t"][j] == pytest.approx(t.pvalue, rel=1e-10)
        assert out["mean"][j] == pytest.approx(col.mean(), rel=1e-12)
        assert out["sem"][j] == pytest.approx(scipy.stats.sem(col), rel=1e-10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = scipy.stats.wilcoxon(col, alternative=alternative)
        assert out["wilcoxon_w"][j] == pytest.approx(w.statistic, rel=1e-12)
        assert out["p_wilcoxon"][j] == pytest.approx(w.pvalue, rel=1e-10)
    assert np.isnan(out["p_wilcoxon"][4]) and np.isnan(out["wilcoxon_w"][4])
    assert np.isnan(out["p_wilcoxon"][5]) and np.isnan(out["p_t"][5])


def test_wilcoxon_small_samples_with_ties_vs_scipy(rng):
    """n <= 13 with ties/zeros: scipy switches to an exact permutation null per column."""
    x = np.round(rng.normal(0.5, 1, size=(10, 4)) * 2) / 2
    x[:, 0] = rng.normal(0.5, 1, 10)  # no ties: exact distribution
    out = one_sample_tests(x, alternative="two-sided")
    for j in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = scipy.stats.wilcoxon(x[:, j], alternative="two-sided")
        assert out["wilcoxon_w"][j] == pytest.approx(w.statistic)
        assert out["p_wilcoxon"][j] == pytest.approx(w.pvalue, rel=1e-10)


def test_paired_tests_vs_scipy(rng):
    a = rng.normal(size=(12, 3))
    b = a + rng.normal(0.4, 1, size=(12, 3))
    out = paired_tests(a, b)
    for j in range(3):
        t = scipy.stats.ttest_rel(a[:, j], b[:, j])
        w = scipy.stats.wilcoxon(a[:, j], b[:, j])
        assert out["t"][j] == pytest.approx(t.statistic, rel=1e-10)
        assert out["p_t"][j] == pytest.approx(t.pvalue, rel=1e-10)
        assert out["wilcoxon_w"][j] == pytest.approx(w.statistic)
        assert out["p_wilcoxon"][j] == pytest.approx(w.pvalue, rel=1e-10)


def test_group_test_registry_names_a_p_value_of_the_results(rng):
    assert tuple(GROUP_TESTS) == ("ttest", "wilcoxon")
    x = rng.normal(0.5, 1, size=(14, 3))
    out = one_sample_tests(x, alternative="greater")
    paired = paired_tests(x, np.zeros_like(x), alternative="greater")
    col = x[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {"ttest": scipy.stats.ttest_1samp(col, 0.0, alternative="greater").pvalue,
                    "wilcoxon": scipy.stats.wilcoxon(col, alternative="greater").pvalue}
    for name, test in GROUP_TESTS.items():
        assert out[test.p_value][0] == pytest.approx(expected[name], rel=1e-10)
        assert paired[test.p_value][0] == pytest.approx(expected[name], rel=1e-10)
        assert test.label
