"""B-MEEG-LDA: pairwise shrinkage-LDA decoding RDMs (bids_dnn.temporal.lda) against a scikit-learn loop.

Full size: 100 conditions x 30 trials, 64 channels, 300 time points (synthetic, seeded: condition
patterns that ramp up after the first fifth of the epoch, plus noise correlated across channels
and smooth over time), 5 folds stratified by condition (``temporal.trial_folds``), float64,
``shrinkage="auto"``: 4,950 pairs x 300 time points x 5 folds = 7.4 million classifiers.

ours     ``temporal.lda.pairwise_decoding_rdms(data, labels, folds)`` over all pairs and time points
         (batched Cholesky solves in torch).
sklearn  for every pair, time point and fold, ``LinearDiscriminantAnalysis(solver="lsqr",
         shrinkage="auto").fit(train).predict(test)``; accuracy = correct test trials pooled over
         folds / trials of the pair. At ~5 ms a classifier the full loop would take about 10 hours:
         it is timed on a seeded subset of ``--ref-pairs`` pairs x ``--ref-times`` evenly spaced time
         points (default 50 x 10) and extrapolated linearly to 4,950 pairs x 300 time points (every
         classifier does the same work); the output says so.

Agreement: on the subset the accuracies must be identical, except that a test trial whose sklearn
decision value is within 1e-9 of 0 may flip (the reported max |diff| discounts such trials; it is
0 when every prediction agrees). Timings are single interleaved runs (``_common.timed_pair``;
``--repeats`` for medians), with BLAS (threadpoolctl) and torch limited to ``--threads`` threads
for both sides. The benchmark machine may be shared with other jobs: both arms are hit alike.

Usage::

    python benchmarks/bench_meeg_lda.py               # full size, 1 thread (~5 min on a shared core)
    python benchmarks/bench_meeg_lda.py --device cuda # ours on the GPU (sklearn on 1 CPU thread)
    python benchmarks/bench_meeg_lda.py --smoke       # tiny sizes, the full loop, agreement only

Exit status 1 when an accuracy disagrees or, in the full run, ours is below 50x the extrapolated loop.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import finish, report, timed_pair  # noqa: E402

from bids_dnn.rsa import pair_indices  # noqa: E402
from bids_dnn.temporal.folds import trial_folds  # noqa: E402
from bids_dnn.temporal.lda import pairwise_decoding_rdms  # noqa: E402

TARGET = 50.0
AMBIGUOUS = 1e-9  # |sklearn decision value| below which a prediction may flip by rounding


def make_epochs(rng: np.random.Generator, n_cond: int, n_trials: int, n_channels: int, n_times: int,
                signal: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Epochs (n_cond * n_trials, n_channels, n_times) and their condition labels.

    Condition patterns (strength ``signal``) ramp up after the first fifth of the epoch; the noise
    is mixed across channels (correlated) and smoothed over time (AR(1), 0.8).
    """
    labels = np.repeat(np.arange(n_cond), n_trials)
    envelope = np.clip((np.arange(n_times) - n_times / 5) / (n_times / 5), 0.0, 1.0)
    patterns = signal * rng.standard_normal((n_cond, n_channels, 1)) * envelope
    mixing = np.eye(n_channels) + 0.3 * rng.standard_normal((n_channels, n_channels)) / np.sqrt(n_channels)
    data = np.empty((labels.size, n_channels, n_times))
    state = rng.standard_normal((labels.size, n_channels))
    for t in range(n_times):  # AR(1) noise, one time point at a time
        state = 0.8 * state + 0.6 * rng.standard_normal((labels.size, n_channels))
        data[:, :, t] = state @ mixing
    data += patterns[labels]
    return data, labels


def sklearn_loop(data: np.ndarray, labels: np.ndarray, folds: np.ndarray, pairs: np.ndarray, times: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Accuracies (len(times), len(pairs)) of the reference loop and the number of its test trials
    with a decision value within ``AMBIGUOUS`` of 0."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rows, cols = pair_indices(int(labels.max()) + 1)
    accuracy = np.zeros((times.size, pairs.size))
    ambiguous = np.zeros((times.size, pairs.size), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j, pair in enumerate(pairs):
            trials = np.flatnonzero((labels == rows[pair]) | (labels == cols[pair]))
            y, fold_of = labels[trials], folds[trials]
            for i, t in enumerate(times):
                x = data[trials, :, t]
                correct = 0
                for fold in np.unique(fold_of):
                    train, test = fold_of != fold, fold_of == fold
                    model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[train], y[train])
                    correct += int(np.sum(model.predict(x[test]) == y[test]))
                    ambiguous[i, j] += int(np.sum(np.abs(model.decision_function(x[test])) < AMBIGUOUS))
                accuracy[i, j] = correct / trials.size
    return accuracy, ambiguous


def run(rng: np.random.Generator, n_cond: int, n_trials: int, n_channels: int, n_times: int, n_folds: int,
        ref_pairs: int, ref_times: int, repeats: int, device: str, failures: list[str], check_speed: bool) -> None:
    data, labels = make_epochs(rng, n_cond, n_trials, n_channels, n_times)
    folds = trial_folds(labels, n_folds, seed=1)
    n_pairs = n_cond * (n_cond - 1) // 2
    pairs = np.sort(rng.choice(n_pairs, size=min(ref_pairs, n_pairs), replace=False))
    times = np.unique(np.linspace(0, n_times - 1, min(ref_times, n_times)).round().astype(np.int64))
    scale = (n_pairs * n_times) / (pairs.size * times.size)
    print(f"\nB-MEEG-LDA pairwise decoding: {n_cond} conditions x {n_trials} trials, {n_channels} channels, "
          f"{n_times} time points, {n_folds} folds, shrinkage 'auto', float64, ours on {device}")
    print(f"  {n_pairs} pairs x {n_times} time points x {n_folds} folds = {n_pairs * n_times * n_folds:,} classifiers")
    note = ("" if scale == 1 else f"; sklearn timed on {pairs.size} pairs x {times.size} time points "
            f"(seeded subset) and extrapolated x{scale:g} to {n_pairs} pairs x {n_times} time points")
    print(f"  {'medians of ' + str(repeats) if repeats > 1 else 'single'} interleaved runs{note}")

    def ours() -> np.ndarray:
        out = pairwise_decoding_rdms(data, labels, folds, device=device)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return out

    if device.startswith("cuda"):  # CUDA context and kernels loaded before any timing
        pairwise_decoding_rdms(data[:, :, :1], labels, folds, device=device)
    t_ours, t_ref, accuracy, (reference, ambiguous) = timed_pair(
        ours, lambda: sklearn_loop(data, labels, folds, pairs, times), repeats)
    rows, cols = pair_indices(n_cond)
    n_pair_trials = (np.bincount(labels)[rows] + np.bincount(labels)[cols])[pairs]
    subset = accuracy[np.ix_(times, pairs)]
    excess = np.maximum(np.abs(subset - reference) - ambiguous / n_pair_trials, 0.0)
    print(f"  sklearn subset: {t_ref:.1f} s for {pairs.size * times.size * n_folds:,} classifiers "
          f"({t_ref / (pairs.size * times.size * n_folds) * 1e3:.2f} ms each); ours {t_ours:.1f} s for all "
          f"({t_ours / (n_pairs * n_times * n_folds) * 1e6:.1f} us each); ambiguous test trials in the subset: "
          f"{int(ambiguous.sum())}")
    report("pairwise LDA accuracies (all)", t_ours, t_ref * scale, float(excess.max()), TARGET, failures,
           check_speed, tol=0.0)
    peak = accuracy[n_times // 5:].mean() if n_times >= 5 else accuracy.mean()
    print(f"  mean accuracy: baseline (first fifth) {accuracy[:max(1, n_times // 5)].mean():.3f}, "
          f"after onset {peak:.3f}")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  epochs {data.nbytes / 2**30:.2f} GB; peak resident memory of the process {rss_gb:.2f} GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, the full loop, agreement only")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--threads", type=int, default=1, help="BLAS and torch threads, for both sides")
    parser.add_argument("--device", default="cpu", help="torch device of ours (cpu, cuda)")
    parser.add_argument("--ref-pairs", type=int, default=50, help="pairs sklearn is timed on at full size")
    parser.add_argument("--ref-times", type=int, default=10, help="time points sklearn is timed on at full size")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved runs per timing (median; default 1 at full size, 3 with --smoke)")
    args = parser.parse_args(argv)
    import sklearn.discriminant_analysis  # noqa: F401  (imported before any timing)
    import torch
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(args.seed)
    failures: list[str] = []
    torch.set_num_threads(args.threads)
    print(f"threads: {args.threads} (BLAS via threadpoolctl, torch intra-op); the machine may be shared")
    t0 = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        if args.smoke:
            run(rng, 5, 8, 6, 6, 4, 1000, 1000, args.repeats or 3, args.device, failures, check_speed=False)
        else:
            run(rng, 100, 30, 64, 300, 5, args.ref_pairs, args.ref_times, args.repeats or 1, args.device, failures,
                check_speed=True)
    print(f"  wall time {time.perf_counter() - t0:.0f} s")
    return finish(failures, args.smoke, "the 50x target")


if __name__ == "__main__":
    sys.exit(main())
