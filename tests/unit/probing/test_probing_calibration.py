"""Label-permutation p-values of ridge probes are calibrated under the null (Kolmogorov-Smirnov over seeds).

Balanced accuracy is discrete, so permuted label vectors often tie with the observed score and the
reported p (ties count against it) is conservative. Exchangeability of the observed and the permuted
scores -- what makes the test valid -- is checked exactly through the tie-randomised p
``(#{null > score} + V (1 + #{null == score})) / (1 + n_permutations)``, ``V ~ U(0, 1)``, which is
uniform under the null; the reported p is checked for validity (``P(p <= a) <= a``).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from bids_dnn.encoding import make_folds
from bids_dnn.probing import encode_annotation, ridge_probe, stratified_folds

SEEDS = 150
PERMUTATIONS = 39
ALPHAS = (0.01, 1.0)


def _null_runs(kind: str, stratified: bool = False) -> tuple[np.ndarray, np.ndarray]:
    reported, randomised = [], []
    for seed in range(SEEDS):
        gen = np.random.default_rng([seed, 11])
        n = 30
        patterns = gen.standard_normal((n, 10))                 # pure noise: the null holds
        if kind == "categorical":
            values = gen.permutation(np.array(["a", "b", "c"] * (n // 3)))
        else:
            values = gen.standard_normal(n)
        annotation = encode_annotation(values, kind)
        if stratified:      # folds built from the labels: permute within folds
            folds, groups = stratified_folds(annotation, n_folds=3, seed=seed), "folds"
        else:
            folds, groups = make_folds(n, n_folds=4, seed=seed), None
        result = ridge_probe(patterns, annotation, folds, ALPHAS, inner_folds=3, seed=seed,
                             n_permutations=PERMUTATIONS, rng=gen, permutation_groups=groups)
        above = np.sum(result.null > result.score + 1e-12)
        equal = np.sum(np.abs(result.null - result.score) <= 1e-12)
        reported.append(result.p_permutation)
        randomised.append((above + gen.uniform() * (1 + equal)) / (1 + PERMUTATIONS))
        assert result.p_permutation == pytest.approx((1 + above + equal) / (1 + PERMUTATIONS))
    return np.asarray(reported), np.asarray(randomised)


@pytest.mark.parametrize(("kind", "stratified"), [("categorical", False), ("continuous", False),
                                                  ("categorical", True)])
def test_permutation_p_is_calibrated_under_the_null(kind, stratified):
    reported, randomised = _null_runs(kind, stratified)
    assert scipy.stats.kstest(randomised, "uniform").pvalue > 0.01
    for level in (0.05, 0.1, 0.25):
        assert np.mean(reported <= level) <= level + 0.05
    if kind == "continuous":                                    # no ties: the reported p itself is uniform
        assert scipy.stats.kstest(reported, "uniform").pvalue > 0.01
