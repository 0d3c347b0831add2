"""Ridge probes equal scikit-learn's GridSearchCV on the same folds; permutations, leakage, missing values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, r2_score
from sklearn.model_selection import StratifiedKFold

from bids_dnn.encoding import inner_folds_for, make_folds
from bids_dnn.probing import ProbeResult, encode_annotation, ridge_probe, stratified_folds

from _probing_reference import fold_mean_r, sklearn_probe

ALPHAS = np.logspace(-2, 4, 7)


def class_data(seed, n, n_units, n_classes, signal=0.5, rare=None):
    """Patterns = class means + noise; class labels 'c0', 'c1', ... (balanced, shuffled)."""
    gen = np.random.default_rng(seed)
    codes = np.arange(n) % n_classes
    if rare is not None:                      # class `rare` keeps only 2 stimuli
        codes[codes == rare] = (rare + 1) % n_classes
        codes[:2] = rare
    gen.shuffle(codes)
    patterns = gen.normal(size=(n, n_units)) + signal * gen.normal(size=(n_classes, n_units))[codes]
    labels = np.array([f"c{c}" for c in codes], dtype=object)
    return patterns, labels


def continuous_data(seed, n, n_units, noise=0.7):
    gen = np.random.default_rng(seed)
    patterns = gen.normal(size=(n, n_units)) + 2.0       # non-zero means: the intercept matters
    target = (patterns - 2.0) @ gen.normal(size=n_units) / np.sqrt(n_units) + noise * gen.normal(size=n) + 5.0
    return patterns, target


# --------------------------------------------------------------------------- equal to scikit-learn
@pytest.mark.parametrize("n_classes", [2, 3, 4])
@pytest.mark.parametrize("n_units", [12, 300])          # primal (p < n_train) and kernel (p >> n) paths
def test_categorical_equals_sklearn(n_classes, n_units):
    patterns, labels = class_data(n_classes * 10 + n_units, 48, n_units, n_classes, signal=0.35)
    folds = make_folds(48, n_folds=4, seed=1)
    result = ridge_probe(patterns, encode_annotation(labels), folds, ALPHAS, inner_folds=3, seed=5)
    expected, alphas = sklearn_probe(patterns, labels, folds, ALPHAS, inner_folds=3, seed=5)
    assert isinstance(result, ProbeResult) and result.kind == "categorical"
    assert list(result.predictions) == list(expected)
    np.testing.assert_array_equal(result.alphas, alphas)
    truth = labels.astype(str)
    assert result.score == pytest.approx(balanced_accuracy_score(truth, expected.astype(str)), abs=1e-12)
    assert result.accuracy == pytest.approx(accuracy_score(truth, expected.astype(str)), abs=1e-12)
    for k, (_, test) in enumerate(folds):
        assert result.fold_scores[k] == pytest.approx(
            balanced_accuracy_score(truth[test], expected[test].astype(str)), abs=1e-12)
    assert result.chance == pytest.approx(1 / n_classes)
    assert result.n_classes == n_classes and result.n_samples == 48
    assert result.classes == sorted(set(truth))
    assert np.isnan(result.p_permutation) and result.null.shape == (0,) and np.isnan(result.r2)


def test_categorical_alpha_choice_varies_and_matches():
    """A case where the chosen alphas differ between folds (the selection is really exercised)."""
    patterns, labels = class_data(11, 60, 40, 3, signal=0.3)
    folds = make_folds(60, n_folds=4, seed=2)
    alphas = np.logspace(-1, 5, 9)
    result = ridge_probe(patterns, encode_annotation(labels), folds, alphas, inner_folds=3, seed=9)
    expected, chosen = sklearn_probe(patterns, labels, folds, alphas, inner_folds=3, seed=9)
    assert list(result.predictions) == list(expected)
    np.testing.assert_array_equal(result.alphas, chosen)
    assert np.unique(chosen).size > 1


def test_categorical_standardized_equals_sklearn():
    gen = np.random.default_rng(4)
    patterns, labels = class_data(4, 45, 20, 3, signal=0.4)
    patterns = patterns * gen.uniform(0.1, 10.0, size=20) + gen.normal(size=20) * 5
    patterns[:, 3] = 7.0                                        # a constant unit
    folds = make_folds(45, n_folds=3, seed=0)
    result = ridge_probe(patterns, encode_annotation(labels), folds, ALPHAS, inner_folds=3, seed=1, standardize=True)
    expected, chosen = sklearn_probe(patterns, labels, folds, ALPHAS, inner_folds=3, seed=1, standardize=True)
    assert list(result.predictions) == list(expected)
    np.testing.assert_array_equal(result.alphas, chosen)


def test_categorical_with_a_class_missing_from_training_sets():
    """A 2-stimulus class is absent from some inner (and outer) training sets: no crash, as sklearn."""
    patterns, labels = class_data(21, 30, 15, 4, signal=0.6, rare=3)
    folds = make_folds(30, n_folds=3, seed=4)
    rare_positions = np.flatnonzero(labels == "c3")
    lacking = 0
    for k, (train, _) in enumerate(folds):
        for inner_train, _ in inner_folds_for(train, inner_folds=3, seed=2, outer_fold=k):
            lacking += not np.isin(rare_positions, np.asarray(train)[inner_train]).any()
    assert lacking > 0
    result = ridge_probe(patterns, encode_annotation(labels), folds, ALPHAS, inner_folds=3, seed=2)
    expected, chosen = sklearn_probe(patterns, labels, folds, ALPHAS, inner_folds=3, seed=2)
    assert list(result.predictions) == list(expected)
    np.testing.assert_array_equal(result.alphas, chosen)
    assert result.score == pytest.approx(balanced_accuracy_score(labels.astype(str), expected.astype(str)))


@pytest.mark.parametrize("n_units", [8, 400])
@pytest.mark.parametrize("standardize", [False, True])
def test_continuous_equals_sklearn(n_units, standardize):
    patterns, target = continuous_data(n_units, 40, n_units)
    if standardize:
        patterns = patterns * np.random.default_rng(1).uniform(0.2, 5.0, size=n_units)
    folds = make_folds(40, n_folds=5, seed=2)
    result = ridge_probe(patterns, encode_annotation(target), folds, ALPHAS, inner_folds=4, seed=3,
                         standardize=standardize)
    expected, chosen = sklearn_probe(patterns, target, folds, ALPHAS, inner_folds=4, seed=3, standardize=standardize)
    assert result.kind == "continuous"
    np.testing.assert_allclose(result.predictions, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(result.alphas, chosen)
    assert result.score == pytest.approx(fold_mean_r(target, expected, folds), rel=1e-6)
    assert result.r2 == pytest.approx(r2_score(target, expected), rel=1e-6)
    for k, (_, test) in enumerate(folds):
        assert result.fold_scores[k] == pytest.approx(np.corrcoef(target[test], expected[test])[0, 1], rel=1e-6)
    assert result.chance == 0.0 and result.n_classes is None and np.isnan(result.accuracy)


def test_primal_and_kernel_paths_agree():
    """Zero columns do not change ridge; appending many of them switches to the kernel path."""
    patterns, labels = class_data(3, 40, 10, 3, signal=0.4)
    padded = np.hstack([patterns, np.zeros((40, 200))])
    folds = make_folds(40, n_folds=4, seed=3)
    for annotation in (encode_annotation(labels), encode_annotation(patterns[:, 0] + patterns[:, 1] ** 2)):
        a = ridge_probe(patterns, annotation, folds, ALPHAS, inner_folds=3)
        b = ridge_probe(padded, annotation, folds, ALPHAS, inner_folds=3)
        np.testing.assert_array_equal(a.alphas, b.alphas)
        if annotation.kind == "continuous":
            np.testing.assert_allclose(a.predictions, b.predictions, rtol=1e-8, atol=1e-10)
        else:
            assert list(a.predictions) == list(b.predictions)


# --------------------------------------------------------------------------- ties, leakage, missing values
@pytest.mark.parametrize("values", [["a", "b"] * 8, list(np.arange(16.0) % 5)])
def test_ties_go_to_the_largest_alpha(values):
    patterns = np.ones((16, 5))                                  # every alpha predicts the training mean
    alphas = [3.0, 100.0, 0.1, 10.0]
    result = ridge_probe(patterns, encode_annotation(values), make_folds(16, n_folds=4), alphas, inner_folds=3)
    np.testing.assert_array_equal(result.alphas, 100.0)


@pytest.mark.parametrize("kind", ["categorical", "continuous"])
def test_test_fold_labels_never_change_its_predictions(kind):
    patterns, labels = class_data(8, 36, 50, 3, signal=0.5)
    gen = np.random.default_rng(0)
    values = labels if kind == "categorical" else patterns[:, 0] + gen.normal(size=36)
    folds = make_folds(36, n_folds=4, seed=6)
    base = ridge_probe(patterns, encode_annotation(values), folds, ALPHAS, inner_folds=3, standardize=True)
    for _, test in folds:
        changed = np.array(values, dtype=object if kind == "categorical" else float)
        if kind == "categorical":
            changed[test] = gen.choice(["c0", "c1", "c2"], size=len(test))
        else:
            changed[test] = gen.normal(size=len(test)) * 10
        other = ridge_probe(patterns, encode_annotation(changed, kind), folds, ALPHAS, inner_folds=3,
                            standardize=True)
        if kind == "categorical":
            assert list(other.predictions[test]) == list(base.predictions[test])
        else:
            np.testing.assert_allclose(other.predictions[test], base.predictions[test], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_units", [10, 200])
def test_a_test_pattern_changes_only_its_own_prediction(n_units):
    """The model of a fold (scaling, centring, alpha, weights) is fitted on its training stimuli only."""
    patterns, target = continuous_data(3, 32, n_units)
    folds = make_folds(32, n_folds=4, seed=0)
    annotation = encode_annotation(target)
    _, test = folds[1]
    changed = patterns.copy()
    changed[test[0]] = 100.0 * np.random.default_rng(1).normal(size=n_units)
    # as an outer *test* stimulus of fold 1 only: fold 1's other predictions and alpha stay
    other = ridge_probe(changed, annotation, [folds[1]], ALPHAS, inner_folds=3, standardize=True)
    alone = ridge_probe(patterns, annotation, [folds[1]], ALPHAS, inner_folds=3, standardize=True)
    np.testing.assert_allclose(other.predictions[test[1:]], alone.predictions[test[1:]], rtol=1e-10, atol=1e-12)
    assert other.alphas[0] == alone.alphas[0]
    assert not np.isclose(other.predictions[test[0]], alone.predictions[test[0]])


@pytest.mark.parametrize("kind", ["categorical", "continuous"])
def test_missing_stimuli_are_left_out(kind):
    patterns, labels = class_data(5, 40, 30, 3, signal=0.5)
    values = list(labels) if kind == "categorical" else list(patterns[:, 0] * 2 + patterns[:, 1])
    missing = np.zeros(40, dtype=bool)
    missing[[3, 11, 12, 30]] = True
    for i in np.flatnonzero(missing):
        values[i] = "n/a"
    patterns[missing] = np.nan                             # never read
    folds = make_folds(40, n_folds=4, seed=1)
    result = ridge_probe(patterns, encode_annotation(values), folds, ALPHAS, inner_folds=3, seed=2)
    # the same probe on the annotated stimuli only, with the folds restricted to them
    keep = np.flatnonzero(~missing)
    position = np.full(40, -1)
    position[keep] = np.arange(keep.size)
    sub_folds = [(position[tr][position[tr] >= 0], position[te][position[te] >= 0]) for tr, te in folds]
    sub = ridge_probe(patterns[keep], encode_annotation([values[i] for i in keep]), sub_folds, ALPHAS,
                      inner_folds=3, seed=2)
    assert result.score == pytest.approx(sub.score, abs=1e-12) and result.n_samples == keep.size
    np.testing.assert_array_equal(result.alphas, sub.alphas)
    if kind == "categorical":
        assert all(p is None for p in result.predictions[missing])
        assert list(result.predictions[keep]) == list(sub.predictions)
    else:
        assert np.isnan(result.predictions[missing]).all()
        np.testing.assert_allclose(result.predictions[keep], sub.predictions, rtol=1e-10)


def test_errors():
    patterns, labels = class_data(0, 20, 5, 2)
    annotation = encode_annotation(labels)
    folds = make_folds(20, n_folds=4)
    with pytest.raises(ValueError, match="patterns must be"):
        ridge_probe(patterns[:10], annotation, folds, ALPHAS)
    with pytest.raises(ValueError, match="alphas"):
        ridge_probe(patterns, annotation, folds, [1.0, -1.0])
    bad = patterns.copy()
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        ridge_probe(bad, annotation, folds, ALPHAS)
    with pytest.raises(ValueError, match="EncodedAnnotation"):
        ridge_probe(patterns, list(labels), folds, ALPHAS)
    values = list(labels)
    for i in folds[0][1]:
        values[i] = "n/a"
    with pytest.raises(ValueError, match="outer fold 0: every test stimulus lacks the annotation"):
        ridge_probe(patterns, encode_annotation(values), folds, ALPHAS)
    with pytest.raises(ValueError, match="n_permutations"):
        ridge_probe(patterns, annotation, folds, ALPHAS, n_permutations=-1)
    with pytest.raises(ValueError, match="inner_folds"):
        ridge_probe(patterns, annotation, folds, ALPHAS, inner_folds=1)
    with pytest.raises(ValueError, match="permutation_groups"):
        ridge_probe(patterns, annotation, folds, ALPHAS, n_permutations=2, permutation_groups="runs")
    with pytest.raises(ValueError, match="permutation_groups"):
        ridge_probe(patterns, annotation, folds, ALPHAS, n_permutations=2, permutation_groups=np.zeros(3))


# --------------------------------------------------------------------------- permutations
@pytest.mark.parametrize("kind", ["categorical", "categorical2", "continuous"])
def test_permutation_null_equals_brute_force(kind):
    n_classes = 2 if kind == "categorical2" else 3
    patterns, labels = class_data(30 + n_classes, 30, 40, n_classes, signal=0.25)
    values = patterns[:, :3].sum(axis=1) if kind == "continuous" else labels
    annotation = encode_annotation(values)
    folds = make_folds(30, n_folds=3, seed=0)
    n_perm = 12
    rng = np.random.default_rng(123)
    # tiny memory budget: several chunks of label vectors
    result = ridge_probe(patterns, annotation, folds, ALPHAS, inner_folds=3, seed=4, n_permutations=n_perm,
                         rng=rng, memory_bytes=20_000)
    gen = np.random.default_rng(123)
    null = []
    for _ in range(n_perm):
        perm = gen.permutation(30)
        permuted = dataclasses.replace(annotation, targets=annotation.targets[perm])
        null.append(ridge_probe(patterns, permuted, folds, ALPHAS, inner_folds=3, seed=4).score)
    null = np.asarray(null)
    np.testing.assert_allclose(result.null, null, rtol=1e-9, atol=1e-12)
    expected_p = (1 + np.sum(null >= result.score - 1e-12)) / (1 + n_perm)
    assert result.p_permutation == pytest.approx(expected_p)
    # the caller's generator advanced by exactly those draws
    assert rng.integers(1 << 30) == gen.integers(1 << 30)
    # one chunk gives the same numbers
    whole = ridge_probe(patterns, annotation, folds, ALPHAS, inner_folds=3, seed=4, n_permutations=n_perm,
                        rng=np.random.default_rng(123))
    np.testing.assert_allclose(whole.null, result.null, rtol=1e-12, atol=1e-14)
    assert whole.score == result.score


def _within_group_sources(sigma, groups):
    """The documented rule, written as a loop: the members of a group (in index order) take the labels
    of its members ordered by their sigma values."""
    source = np.empty(len(sigma), dtype=int)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        source[members] = members[np.argsort(sigma[members])]
    return source


@pytest.mark.parametrize("groups", ["folds", "array"])
def test_within_group_permutations_equal_brute_force(groups):
    patterns, labels = class_data(12, 30, 20, 3, signal=0.3)
    values = list(labels)
    values[7] = "n/a"                                            # positions among the 29 annotated stimuli
    annotation = encode_annotation(values)
    folds = stratified_folds(annotation, n_folds=3, seed=2)
    runs = np.arange(30) % 4
    group_arg = "folds" if groups == "folds" else runs
    result = ridge_probe(patterns, annotation, folds, ALPHAS, inner_folds=3, n_permutations=8,
                         rng=np.random.default_rng(5), permutation_groups=group_arg, memory_bytes=30_000)
    used = np.flatnonzero(~annotation.missing)
    if groups == "folds":
        fold_of = np.empty(30, dtype=int)
        for k, (_, test) in enumerate(folds):
            fold_of[test] = k
        group_of_used = fold_of[used]
    else:
        group_of_used = runs[used]
    gen = np.random.default_rng(5)
    null = []
    for _ in range(8):
        source = _within_group_sources(gen.permutation(used.size), group_of_used)
        targets = annotation.targets.copy()
        targets[used] = annotation.targets[used][source]
        for g in np.unique(group_of_used):                       # each group keeps its class counts
            members = used[group_of_used == g]
            assert sorted(targets[members]) == sorted(annotation.targets[members])
        permuted = dataclasses.replace(annotation, targets=targets)
        null.append(ridge_probe(patterns, permuted, folds, ALPHAS, inner_folds=3).score)
    np.testing.assert_allclose(result.null, null, rtol=1e-9, atol=1e-12)


def test_stratified_folds_categorical():
    values = ["a"] * 10 + ["b"] * 7 + ["c"] * 5 + ["n/a"] * 3
    annotation = encode_annotation(list(np.random.default_rng(0).permutation(values)))
    folds = stratified_folds(annotation, n_folds=4, seed=3)
    tests = [test for _, test in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(25))       # a partition
    for train, test in folds:
        np.testing.assert_array_equal(train, np.setdiff1d(np.arange(25), test))
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1
    for q in range(3):
        counts = [np.sum(annotation.targets[t] == q) for t in tests]
        assert max(counts) - min(counts) <= 1
    assert stratified_folds(annotation, n_folds=4, seed=3)[0][1].tolist() == tests[0].tolist()   # seeded
    assert stratified_folds(annotation, n_folds=4, seed=4)[0][1].tolist() != tests[0].tolist()
    with pytest.raises(ValueError, match="n_folds"):
        stratified_folds(annotation, n_folds=23)


def test_stratified_folds_continuous():
    gen = np.random.default_rng(1)
    target = gen.normal(size=23)
    annotation = encode_annotation(target)
    folds = stratified_folds(annotation, n_folds=5, seed=0)
    fold_of = np.empty(23, dtype=int)
    for k, (_, test) in enumerate(folds):
        fold_of[test] = k
    ranked = np.argsort(target)
    for start in range(0, 23, 5):                                # each block of 5 neighbours: distinct folds
        block = fold_of[ranked[start:start + 5]]
        assert np.unique(block).size == block.size


def test_default_rng_is_the_seed():
    patterns, labels = class_data(2, 24, 10, 2)
    folds = make_folds(24, n_folds=3)
    a = ridge_probe(patterns, encode_annotation(labels), folds, ALPHAS, inner_folds=3, seed=7, n_permutations=5)
    b = ridge_probe(patterns, encode_annotation(labels), folds, ALPHAS, inner_folds=3, seed=7, n_permutations=5,
                    rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.null, b.null)


# --------------------------------------------------------------------------- planted truth
def test_planted_class_structure_is_found():
    patterns, labels = class_data(40, 60, 500, 4, signal=1.0)
    result = ridge_probe(patterns, encode_annotation(labels), make_folds(60, n_folds=5), ALPHAS, inner_folds=3,
                         n_permutations=49, rng=np.random.default_rng(0))
    assert result.score > 0.95 and result.accuracy > 0.95
    assert result.p_permutation == pytest.approx(1 / 50)
    assert np.all(result.null < 0.6)


@pytest.mark.parametrize("maker", ["sklearn", "stratified_folds"])
def test_noise_is_at_chance_with_balanced_folds(maker):
    """Class-balanced test folds (3 stimuli of each class per fold): noise scores 1 / n_classes on average."""
    scores = []
    for seed in range(12):
        patterns, labels = class_data(seed, 48, 100, 4, signal=0.0)
        annotation = encode_annotation(labels)
        if maker == "sklearn":
            folds = list(StratifiedKFold(4, shuffle=True, random_state=seed).split(patterns, labels))
        else:
            folds = stratified_folds(annotation, n_folds=4, seed=seed)
        scores.append(ridge_probe(patterns, annotation, folds, ALPHAS, inner_folds=3).score)
    assert abs(np.mean(scores) - 0.25) < 0.05


def test_unbalanced_folds_go_below_chance_and_the_null_follows():
    """Documented: with unstratified folds a training set over-represents the classes its test fold lacks,
    which pulls noise below chance; the permuted labels share the bias, so p stays valid."""
    scores, null_means = [], []
    for seed in range(6):
        patterns, labels = class_data(seed, 40, 200, 4, signal=0.0)
        result = ridge_probe(patterns, encode_annotation(labels), make_folds(40, n_folds=4, seed=seed), ALPHAS,
                             inner_folds=3, n_permutations=30, rng=np.random.default_rng(seed))
        scores.append(result.score)
        null_means.append(result.null.mean())
    assert np.mean(scores) < 0.22 and np.mean(null_means) < 0.22
    assert abs(np.mean(scores) - np.mean(null_means)) < 0.06


def test_planted_continuous_value_is_found():
    gen = np.random.default_rng(6)
    n, n_units = 60, 300
    latent = gen.normal(size=(n, 3))                            # the rated value lives in 3 latent dimensions
    patterns = latent @ gen.normal(size=(3, n_units)) + gen.normal(size=(n, n_units)) + 2.0
    target = latent @ np.array([1.0, -0.5, 0.3]) + 0.3 * gen.normal(size=n) + 5.0
    result = ridge_probe(patterns, encode_annotation(target), make_folds(n, n_folds=5), np.logspace(-2, 5, 8),
                         inner_folds=4, n_permutations=29, rng=np.random.default_rng(1))
    assert result.score > 0.9 and result.r2 > 0.8
    assert result.p_permutation == pytest.approx(1 / 30)
    noise = ridge_probe(gen.normal(size=(n, n_units)), encode_annotation(target), make_folds(n, n_folds=5),
                        np.logspace(-2, 5, 8), inner_folds=4)
    assert abs(noise.score) < 0.3
