"""Pairwise shrinkage-LDA decoding RDMs (bids_dnn.temporal.lda) against a scikit-learn loop.

The reference fits ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=...)`` for every pair,
time point and fold and predicts the fold's test trials. Predictions must be identical except for
test trials whose sklearn decision value is within 1e-9 of 0 (counted and allowed for); the
decision values themselves must agree to 1e-9 relative.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from bids_dnn.rsa import pair_indices
from bids_dnn.temporal.folds import trial_folds
from bids_dnn.temporal.lda import LDA_SHRINKAGE_RULES, _iter_decisions, pairwise_decoding_rdms

AMBIGUOUS = 1e-9  # |sklearn decision| below which a prediction may differ by rounding


def sklearn_decoding(data: np.ndarray, labels: np.ndarray, folds: np.ndarray, shrinkage: str | float
                     ) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, int, int], float]]:
    """The reference loop: accuracies (n_times, n_pairs) pooled over folds, the number of
    ambiguous test trials per entry, and every decision value keyed by (time, pair, trial)."""
    rows, cols = pair_indices(int(labels.max()) + 1)
    n_times = data.shape[2]
    accuracy = np.zeros((n_times, rows.size))
    ambiguous = np.zeros((n_times, rows.size), dtype=int)
    decisions: dict[tuple[int, int, int], float] = {}
    for pair, (a, b) in enumerate(zip(rows, cols)):
        trials = np.flatnonzero((labels == a) | (labels == b))
        y, fold_of = labels[trials], folds[trials]
        for t in range(n_times):
            x = data[trials, :, t]
            correct = 0
            for fold in np.unique(fold_of):
                train, test = fold_of != fold, fold_of == fold
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(x[train], y[train])
                decision = model.decision_function(x[test])
                correct += int(np.sum(model.predict(x[test]) == y[test]))
                ambiguous[t, pair] += int(np.sum(np.abs(decision) < AMBIGUOUS))
                decisions.update({(t, pair, int(i)): float(v) for i, v in zip(trials[test], decision)})
            accuracy[t, pair] = correct / trials.size
    return accuracy, ambiguous, decisions


def epochs(rng: np.random.Generator, trials_per_condition: list[int], n_channels: int, n_times: int,
           signal: float = 0.5, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Random epochs with a condition-specific pattern of strength ``signal`` and a common offset."""
    labels = np.concatenate([np.full(k, c) for c, k in enumerate(trials_per_condition)])
    patterns = rng.standard_normal((len(trials_per_condition), n_channels, n_times))
    data = rng.standard_normal((labels.size, n_channels, n_times)) + signal * patterns[labels] + offset
    return data, labels


def assert_matches_sklearn(data: np.ndarray, labels: np.ndarray, folds: np.ndarray, shrinkage: str | float,
                           **kwargs) -> np.ndarray:
    ours = pairwise_decoding_rdms(data, labels, folds, shrinkage=shrinkage, **kwargs)
    reference, ambiguous, _ = sklearn_decoding(data, labels, folds, shrinkage)
    rows, cols = pair_indices(int(labels.max()) + 1)
    n_trials = np.bincount(labels)[rows] + np.bincount(labels)[cols]
    differing = np.rint(np.abs(ours - reference) * n_trials).astype(int)
    assert np.all(differing <= ambiguous), f"accuracies differ: max |diff| {np.abs(ours - reference).max()}"
    return ours


CASES = [
    # (trials per condition, channels, times, folds, shrinkage)
    ([8, 8, 8, 8], 6, 3, 3, "auto"),
    ([6, 9, 7, 12, 8], 10, 2, 4, "auto"),  # unequal trial counts: unequal priors and fold sizes
    ([10, 10, 10], 12, 3, 2, 0.3),
    ([7, 11, 9], 8, 2, 3, 0.05),
    ([9, 9, 9, 9], 20, 2, 3, "auto"),  # more channels than training trials
    ([6, 6, 6], 1, 2, 2, "auto"),  # one channel
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("counts", "n_channels", "n_times", "n_folds", "shrinkage"), CASES)
def test_accuracies_equal_sklearn_loop(seed, counts, n_channels, n_times, n_folds, shrinkage):
    rng = np.random.default_rng(seed)
    data, labels = epochs(rng, counts, n_channels, n_times, offset=3.0)
    folds = trial_folds(labels, n_folds, seed)
    out = assert_matches_sklearn(data, labels, folds, shrinkage)
    assert out.shape == (n_times, len(counts) * (len(counts) - 1) // 2)
    assert out.dtype == np.float64


def our_decisions(data: np.ndarray, labels: np.ndarray, folds: np.ndarray, shrinkage: str | float,
                  pair_batch: int, time_batch: int) -> dict[tuple[int, int, int], float]:
    """Our decision values keyed by (time, pair, trial), from the batches of ``_iter_decisions``."""
    rows, cols = pair_indices(int(labels.max()) + 1)
    out: dict[tuple[int, int, int], float] = {}
    for splits, batch in _iter_decisions(data, labels, folds, shrinkage, "cpu", np.float64, pair_batch, time_batch):
        for j, pair in enumerate(range(batch.pairs.start, batch.pairs.stop)):
            for condition, values in ((rows[pair], batch.first), (cols[pair], batch.second)):
                for f in range(splits.test_count.shape[1]):
                    for m in range(splits.test_count[condition, f]):
                        trial = int(splits.test_index[condition, f, m])
                        for ti, t in enumerate(range(data.shape[2])[batch.times]):
                            out[(t, pair, trial)] = float(values[ti, j, f, m])
    return out


@pytest.mark.parametrize("shrinkage", ["auto", 0.2])
def test_decision_values_equal_sklearn(shrinkage):
    rng = np.random.default_rng(5)
    data, labels = epochs(rng, [7, 10, 8, 9], 9, 3, offset=-2.0)
    folds = trial_folds(labels, 3, 5)
    _, _, reference = sklearn_decoding(data, labels, folds, shrinkage)
    ours = our_decisions(data, labels, folds, shrinkage, pair_batch=2, time_batch=2)
    assert ours.keys() == reference.keys()
    expected = np.array([reference[key] for key in ours])
    got = np.array(list(ours.values()))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_constant_channel_matches_sklearn():
    """A flat channel (e.g. a reference): sklearn scales it by 1 and shrinks it to a positive variance."""
    rng = np.random.default_rng(2)
    data, labels = epochs(rng, [8, 8, 8], 5, 2)
    data[:, 2, :] = 0.0
    data[:, 4, :] = 7.5
    folds = trial_folds(labels, 4, 2)
    for shrinkage in ("auto", 0.1):
        assert_matches_sklearn(data, labels, folds, shrinkage)


def test_singular_covariance_falls_back_to_least_squares():
    """No shrinkage and fewer training trials than channels: sklearn's minimum-norm solution."""
    rng = np.random.default_rng(3)
    for n_channels in (8, 20):
        data, labels = epochs(rng, [7, 7, 7], n_channels, 2, signal=1.0)
        folds = trial_folds(labels, 3, 3)
        assert_matches_sklearn(data, labels, folds, 0.0)


def test_separable_pairs_are_decoded_perfectly():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(4), 12)
    data = 0.1 * rng.standard_normal((labels.size, 8, 3)) + 10.0 * rng.standard_normal((4, 8, 3))[labels]
    out = pairwise_decoding_rdms(data, labels, trial_folds(labels, 4, 0))
    np.testing.assert_array_equal(out, 1.0)


def test_identical_conditions_are_at_chance():
    accuracies = []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        labels = np.repeat(np.arange(5), 12)
        data = rng.standard_normal((labels.size, 6, 4))  # no condition signal
        accuracies.append(pairwise_decoding_rdms(data, labels, trial_folds(labels, 4, seed)))
    accuracies = np.stack(accuracies)
    assert abs(accuracies.mean() - 0.5) < 0.05
    assert accuracies.min() >= 0.0 and accuracies.max() <= 1.0


def test_batch_sizes_do_not_change_the_result():
    rng = np.random.default_rng(6)
    data, labels = epochs(rng, [6, 8, 7, 9, 6, 7], 7, 5)
    folds = trial_folds(labels, 3, 6)
    full = pairwise_decoding_rdms(data, labels, folds)
    for pair_batch, time_batch in ((1, 1), (2, 3), (4, 5), (100, 100)):
        np.testing.assert_array_equal(
            pairwise_decoding_rdms(data, labels, folds, pair_batch=pair_batch, time_batch=time_batch), full)


def test_deterministic_and_float32_close():
    rng = np.random.default_rng(7)
    data, labels = epochs(rng, [10, 10, 10, 10], 6, 4)
    folds = trial_folds(labels, 5, 7)
    first = pairwise_decoding_rdms(data, labels, folds)
    np.testing.assert_array_equal(pairwise_decoding_rdms(data, labels, folds), first)
    single = pairwise_decoding_rdms(data.astype(np.float32), labels, folds, dtype=np.float32)
    assert single.dtype == np.float32
    # float32 may flip a test trial whose decision value is near 0, not many
    assert np.abs(single - first).max() <= 2 / 20 + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(8)
    data, labels = epochs(rng, [9, 10, 11, 9, 10], 16, 6)
    folds = trial_folds(labels, 3, 8)
    np.testing.assert_array_equal(pairwise_decoding_rdms(data, labels, folds, device="cuda"),
                                  pairwise_decoding_rdms(data, labels, folds))


def test_registry_names_the_rules():
    assert "auto" in LDA_SHRINKAGE_RULES


# --------------------------------------------------------------------------- errors
def test_condition_missing_from_a_training_split_is_an_error():
    labels = np.repeat(np.arange(3), 6)
    folds = np.tile(np.arange(3), 6)
    folds[labels == 1] = 0  # condition 1 only in fold 0: fold 0 trains without it
    data = np.random.default_rng(0).standard_normal((labels.size, 4, 2))
    with pytest.raises(ValueError, match="condition 1 has 0 trial.*training split of fold 0"):
        pairwise_decoding_rdms(data, labels, folds)


def test_condition_missing_from_a_test_split_is_an_error():
    labels = np.repeat(np.arange(3), 6)
    folds = np.tile(np.arange(3), 6)
    folds[labels == 2] = np.array([0, 1, 0, 1, 0, 1])  # condition 2 never tested in fold 2
    data = np.random.default_rng(0).standard_normal((labels.size, 4, 2))
    with pytest.raises(ValueError, match="condition 2 has 0 trial.*test split of fold 2"):
        pairwise_decoding_rdms(data, labels, folds)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d, l, f: (d[:, :, 0], l, f), "n_trials, n_channels, n_times"),
    (lambda d, l, f: (d[:, :, :0], l, f), "with channels and time points"),
    (lambda d, l, f: (np.where(d > 2, np.nan, d), l, f), "NaN"),
    (lambda d, l, f: (d, l + 1, f), "no trials"),
    (lambda d, l, f: (d, l.astype(float), f), "integers"),
    (lambda d, l, f: (d, l[:-1], f), "one entry per trial"),
    (lambda d, l, f: (d, l, np.zeros_like(f)), "at least 2 folds"),
    (lambda d, l, f: (d, np.zeros_like(l), f), "at least 2 conditions"),
])
def test_bad_inputs_are_errors(change, message):
    labels = np.repeat(np.arange(3), 6)
    folds = trial_folds(labels, 3, 0)
    data = np.random.default_rng(0).standard_normal((labels.size, 4, 2))
    with pytest.raises(ValueError, match=message):
        pairwise_decoding_rdms(*change(data, labels, folds))


@pytest.mark.parametrize(("option", "message"), [
    ({"shrinkage": "oas"}, "unknown shrinkage"),
    ({"shrinkage": 1.5}, "float in"),
    ({"pair_batch": 0}, "pair_batch"),
    ({"time_batch": -1}, "time_batch"),
    ({"dtype": np.int32}, "float32 or float64"),
])
def test_bad_options_are_errors(option, message):
    labels = np.repeat(np.arange(3), 6)
    data = np.random.default_rng(0).standard_normal((labels.size, 4, 2))
    with pytest.raises(ValueError, match=message):
        pairwise_decoding_rdms(data, labels, trial_folds(labels, 3, 0), **option)
