"""Permutation p-values of CKA are uniform under the null (Kolmogorov-Smirnov over seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from bids_dnn.cka import cka_test

SEEDS = 300
PERMUTATIONS = 199


@pytest.mark.parametrize(("kernel", "estimator"), [("linear", "unbiased"), ("rbf", "plain")])
def test_permutation_p_is_uniform_under_the_null(kernel, estimator):
    p_values = []
    for seed in range(SEEDS):
        gen = np.random.default_rng([seed, 7])
        x, y = gen.standard_normal((10, 6)), gen.standard_normal((10, 3))  # independent: the null holds
        result = cka_test([x], [y], kernel=kernel, estimator=estimator, n_permutations=PERMUTATIONS, rng=gen)
        p_values.append(float(result.p_values[0, 0]))
    p_values = np.asarray(p_values)
    # p is discrete on a grid of 1/200; the KS distance that adds is below 0.005
    assert scipy.stats.kstest(p_values, "uniform").pvalue > 0.01
    assert abs(np.mean(p_values <= 0.05) - 0.05) < 0.04


def test_permutation_p_detects_a_planted_relation():
    gen = np.random.default_rng(5)
    x = gen.standard_normal((20, 8))
    y = x[:, :3] + 0.3 * gen.standard_normal((20, 3))
    result = cka_test([x], [y], n_permutations=199, rng=gen)
    assert result.p_values[0, 0] == pytest.approx(1 / 200)
