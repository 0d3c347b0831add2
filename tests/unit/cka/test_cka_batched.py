"""Batched CKA, permutation null and stimulus bootstrap against direct per-pair NumPy loops."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.cka import GramStack, bootstrap_cka, cka, cka_matrix, cka_test, gram_stack, permutation_null

from _cka_reference import cka_of_grams_reference, gram_linear, gram_rbf


def feature_sets(rng: np.random.Generator, n: int, widths: list[int]) -> list[np.ndarray]:
    shared = rng.standard_normal((n, 2))
    return [shared @ rng.standard_normal((2, w)) + rng.standard_normal((n, w)) for w in widths]


def centred(gram: np.ndarray, estimator: str, exclude: np.ndarray | None = None) -> np.ndarray:
    """Kornblith et al.'s ``center_gram`` (NumPy), with extra excluded pairs for the unbiased one."""
    gram = gram.copy()
    n = gram.shape[0]
    if estimator == "plain":
        means = gram.mean(0)
        means -= means.mean() / 2
        return gram - means[:, None] - means[None, :]
    mask = np.eye(n, dtype=bool) if exclude is None else exclude | np.eye(n, dtype=bool)
    gram[mask] = 0
    means = gram.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    gram = gram - means[:, None] - means[None, :]
    gram[mask] = 0
    return gram


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("estimator", ["unbiased", "plain"])
def test_cka_matrix_equals_the_loop_reference(rng, kernel, estimator):
    sets_a, sets_b = feature_sets(rng, 12, [3, 9, 30]), feature_sets(rng, 12, [5, 2])
    grams = {"linear": lambda x: gram_linear(x), "rbf": lambda x: gram_rbf(x, 1.3)}[kernel]
    expected = np.array([[cka_of_grams_reference(grams(a), grams(b), estimator) for b in sets_b] for a in sets_a])
    np.testing.assert_allclose(cka_matrix(sets_a, sets_b, kernel=kernel, estimator=estimator, sigma=1.3),
                               expected, rtol=0, atol=1e-10)
    square = cka_matrix(sets_a, kernel=kernel, estimator=estimator, sigma=1.3)
    np.testing.assert_allclose(np.diag(square), 1.0, atol=1e-12)
    np.testing.assert_allclose(square, square.T, atol=1e-14)


@pytest.mark.parametrize("shape", [(3, 2), (2, 3)])  # the batched code permutes the side with fewer sets
@pytest.mark.parametrize("estimator", ["unbiased", "plain"])
def test_permutation_null_equals_a_numpy_loop(rng, shape, estimator):
    n = 10
    sets_a, sets_b = feature_sets(rng, n, [4] * shape[0]), feature_sets(rng, n, [6] * shape[1])
    perms = np.array([rng.permutation(n) for _ in range(25)])
    first, second = gram_stack(sets_a, "linear", estimator), gram_stack(sets_b, "linear", estimator)
    observed, p_values, null = permutation_null(first, second, permutations=perms, return_null=True)
    expected = np.empty((len(perms), shape[0], shape[1]))
    for p, perm in enumerate(perms):
        for i, a in enumerate(sets_a):
            for j, b in enumerate(sets_b):
                expected[p, i, j] = cosine(centred(gram_linear(a), estimator),
                                           centred(gram_linear(b[perm]), estimator))
    np.testing.assert_allclose(null, expected, rtol=0, atol=1e-10)
    direct = np.array([[cka(a, b, "linear", estimator) for b in sets_b] for a in sets_a])
    np.testing.assert_allclose(observed, direct, atol=1e-12)
    np.testing.assert_array_equal(p_values, (1 + (expected >= direct - 1e-12).sum(0)) / (1 + len(perms)))


def test_identity_permutation_reproduces_the_observed_value(rng):
    sets_a, sets_b = feature_sets(rng, 9, [3, 3]), feature_sets(rng, 9, [4])
    first, second = gram_stack(sets_a), gram_stack(sets_b)
    observed, p_values, null = permutation_null(first, second, permutations=np.tile(np.arange(9), (4, 1)),
                                                return_null=True)
    # equal up to the summation order of blocks of different sizes; atol keeps them in the count
    np.testing.assert_allclose(null, np.broadcast_to(observed, null.shape), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(p_values, 1.0)


def test_results_do_not_depend_on_the_memory_budget(rng):
    sets_a, sets_b = feature_sets(rng, 11, [3, 5, 7]), feature_sets(rng, 11, [4, 2])
    results = [cka_test(sets_a, sets_b, n_permutations=57, n_bootstrap=23, rng=np.random.default_rng(3),
                        memory_bytes=budget, return_null=True, return_bootstrap=True)
               for budget in (1, 5000, 10**9)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.p_values, results[0].p_values)
        np.testing.assert_allclose(other.null, results[0].null, atol=1e-13)
        np.testing.assert_allclose(other.bootstrap, results[0].bootstrap, atol=1e-13)


def test_drawn_permutations_and_resamples_are_the_generators_sequence(rng):
    sets_a, sets_b = feature_sets(rng, 8, [3]), feature_sets(rng, 8, [2])
    result = cka_test(sets_a, sets_b, n_permutations=30, n_bootstrap=12, rng=np.random.default_rng(9),
                      return_null=True, return_bootstrap=True)
    gen = np.random.default_rng(9)
    perms = gen.permuted(np.tile(np.arange(8), (30, 1)), axis=1)
    indices = gen.integers(0, 8, size=(12, 8))
    explicit = cka_test(sets_a, sets_b, permutations=perms, bootstrap_indices=indices, return_null=True,
                        return_bootstrap=True)
    np.testing.assert_array_equal(explicit.null, result.null)
    np.testing.assert_array_equal(explicit.bootstrap, result.bootstrap)


@pytest.mark.parametrize("estimator", ["unbiased", "plain"])
def test_bootstrap_equals_a_numpy_loop(rng, estimator):
    """Each resample's (full-sample centred) Gram resampled explicitly and centred again; for the
    unbiased estimator the pairs of copies of one stimulus are zeroed like the diagonal."""
    n = 9
    sets_a, sets_b = feature_sets(rng, n, [3, 6]), feature_sets(rng, n, [4])
    indices = rng.integers(0, n, size=(15, n))
    first, second = gram_stack(sets_a, "rbf", estimator), gram_stack(sets_b, "rbf", estimator)
    values = bootstrap_cka(first, second, indices=indices, memory_bytes=1)
    grams_a = [centred(gram_rbf(a), estimator) for a in sets_a]
    grams_b = [centred(gram_rbf(b), estimator) for b in sets_b]
    for r, sample in enumerate(indices):
        copies = sample[:, None] == sample[None, :]
        for i, ga in enumerate(grams_a):
            for j, gb in enumerate(grams_b):
                a = centred(ga[np.ix_(sample, sample)], estimator, copies)
                b = centred(gb[np.ix_(sample, sample)], estimator, copies)
                assert values[r, i, j] == pytest.approx(cosine(a, b), abs=1e-10)


def test_plain_bootstrap_equals_resampling_the_raw_gram(rng):
    """Centring removes row and column constants: resampling the raw or the centred Gram is the same."""
    n = 10
    x, y = feature_sets(rng, n, [5, 3])
    indices = rng.integers(0, n, size=(8, n))
    values = bootstrap_cka(gram_stack([x], "linear", "plain"), gram_stack([y], "linear", "plain"), indices=indices)
    for r, sample in enumerate(indices):
        expected = cosine(centred(gram_linear(x[sample]), "plain"), centred(gram_linear(y[sample]), "plain"))
        assert values[r, 0, 0] == pytest.approx(expected, abs=1e-10)


def test_confidence_interval_is_the_percentile_interval(rng):
    sets_a, sets_b = feature_sets(rng, 15, [4, 4]), feature_sets(rng, 15, [3])
    result = cka_test(sets_a, sets_b, n_permutations=0, n_bootstrap=200, ci=0.9, rng=np.random.default_rng(1),
                      return_bootstrap=True)
    np.testing.assert_allclose(result.ci_low, np.percentile(result.bootstrap, 5, axis=0))
    np.testing.assert_allclose(result.ci_high, np.percentile(result.bootstrap, 95, axis=0))
    assert np.isnan(result.p_values).all() and result.n_permutations == 0
    assert ((result.ci_low <= result.observed + 0.2) & (result.observed - 0.2 <= result.ci_high)).all()


def test_constant_set_gives_nan_not_an_error(rng):
    sets_a = [rng.standard_normal((8, 3)), np.ones((8, 2))]
    result = cka_test(sets_a, [rng.standard_normal((8, 4))], estimator="plain", n_permutations=9, n_bootstrap=5,
                      rng=np.random.default_rng(0))
    assert np.isfinite(result.observed[0, 0]) and np.isnan(result.observed[1, 0])
    assert np.isnan(result.p_values[1, 0]) and np.isfinite(result.p_values[0, 0])


def test_needs_a_generator_to_draw(rng):
    sets = feature_sets(rng, 8, [2])
    with pytest.raises(ValueError, match="rng"):
        cka_test(sets, sets, n_permutations=5)
    with pytest.raises(ValueError, match="different numbers of stimuli"):
        cka_test(sets, [rng.standard_normal((9, 2))], n_permutations=0)


def test_concatenated_stacks_equal_one_stack(rng):
    sets = feature_sets(rng, 8, [2, 3, 4])
    whole = gram_stack(sets, "rbf", "plain")
    joined = GramStack.concatenate([gram_stack(sets[:1], "rbf", "plain"), gram_stack(sets[1:], "rbf", "plain")])
    np.testing.assert_array_equal(joined.prepared.numpy(), whole.prepared.numpy())
    with pytest.raises(ValueError, match="differ"):
        GramStack.concatenate([whole, gram_stack(sets, "linear", "plain")])
