"""B-MEEG: time-resolved M/EEG RDMs (bids_dnn.temporal) against rsatoolbox's per-time calc_rdm.

Full size: 100 conditions x 30 trials, 64 channels, 300 time points (synthetic, seeded: condition
patterns plus noise correlated across channels and smooth over time), 5 folds stratified by
condition (``temporal.trial_folds``), float64. Parts:

noise     ``temporal.residual_noise_precision`` (multivariate, ``shrinkage_diag``, covariances
          averaged over time then inverted) vs a NumPy residual loop + rsatoolbox's
          ``cov_from_residuals`` per time point (all time points; no speed target).
crossnobis  ``temporal.time_resolved_rdms(measure="crossnobis")`` with that precision, both
          cross-validation schemes (``fold_pairs``, ``leave_one_fold_out``), vs rsatoolbox
          ``calc_rdm(Dataset_t, 'crossnobis', descriptor='conds', cv_descriptor='fold', noise=P)``
          per time point (folds balanced here, so both schemes equal rsatoolbox). Target >= 20x.
correlation ``time_resolved_rdms(measure="correlation")`` vs rsatoolbox ``calc_rdm(..., 'correlation')``
          per time point (no speed target).

rsatoolbox takes tens of ms per time point: it is timed on the first ``--ref-times`` time points
and extrapolated linearly to all of them (it does the same work at every time point); the output
says so. Ours always runs over all time points. Agreement (max |diff|, <= 1e-10) is checked on the
shared time points. Timings are medians of ``--repeats`` interleaved runs (``_common.timed_pair``),
with BLAS and torch limited to ``--threads`` threads for both sides.

Usage::

    python benchmarks/bench_meeg_rdms.py --threads 1   # full size (~1 min, ~1.5 GB of memory)
    python benchmarks/bench_meeg_rdms.py --smoke       # tiny sizes, all time points, agreement only

Exit status 1 when a result disagrees (> 1e-10) or, in the full run, a cross-validated distance is
below 20x.
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

from bids_dnn.temporal import trial_folds  # noqa: E402
from bids_dnn.temporal.rdms import residual_noise_precision, time_resolved_rdms  # noqa: E402

TARGET = 20.0


def make_epochs(rng: np.random.Generator, n_cond: int, n_trials: int, n_channels: int, n_times: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Epochs (n_cond * n_trials, n_channels, n_times) and their condition labels.

    Condition patterns ramp up after the first fifth of the epoch; the noise is mixed across
    channels (correlated) and smoothed over time (AR(1), 0.8).
    """
    labels = np.repeat(np.arange(n_cond), n_trials)
    envelope = np.clip((np.arange(n_times) - n_times / 5) / (n_times / 5), 0.0, 1.0)
    patterns = rng.standard_normal((n_cond, n_channels, 1)) * envelope
    mixing = np.eye(n_channels) + 0.3 * rng.standard_normal((n_channels, n_channels)) / np.sqrt(n_channels)
    data = np.empty((labels.size, n_channels, n_times))
    state = rng.standard_normal((labels.size, n_channels))
    for t in range(n_times):  # AR(1) noise, one time point at a time (bounded memory)
        state = 0.8 * state + 0.6 * rng.standard_normal((labels.size, n_channels))
        data[:, :, t] = state @ mixing
    data += patterns[labels]
    return data, labels


def rsatoolbox_noise(data: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Residuals by a loop over conditions, rsatoolbox's shrinkage covariance per time point,
    averaged over time and inverted."""
    from rsatoolbox.data.noise import cov_from_residuals

    n_cond = int(labels.max()) + 1
    dof = labels.size - n_cond
    total = np.zeros((data.shape[1], data.shape[1]))
    for t in range(data.shape[2]):
        residuals = data[:, :, t].copy()
        for cond in range(n_cond):
            residuals[labels == cond] -= residuals[labels == cond].mean(axis=0)
        total += cov_from_residuals(residuals, dof=dof, method="shrinkage_diag")
    return np.linalg.inv(total / data.shape[2])


def rsatoolbox_rdms(data: np.ndarray, labels: np.ndarray, folds: np.ndarray, n_times: int, method: str,
                    noise: np.ndarray | None = None) -> np.ndarray:
    """rsatoolbox ``calc_rdm`` on a Dataset per time point, the first ``n_times`` time points."""
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm

    out = []
    for t in range(n_times):
        dataset = Dataset(data[:, :, t], obs_descriptors={"conds": labels, "fold": folds})
        cv = {"cv_descriptor": "fold", "noise": noise} if method == "crossnobis" else {}
        out.append(calc_rdm(dataset, method=method, descriptor="conds", **cv).get_vectors()[0])
    return np.stack(out)


def run(rng: np.random.Generator, n_cond: int, n_trials: int, n_channels: int, n_times: int, n_folds: int,
        ref_times: int, repeats: int, failures: list[str], check_speed: bool) -> None:
    data, labels = make_epochs(rng, n_cond, n_trials, n_channels, n_times)
    folds = trial_folds(labels, n_folds, seed=1)
    ref_times = min(ref_times, n_times)
    scale = n_times / ref_times
    print(f"\nB-MEEG time-resolved RDMs: {n_cond} conditions x {n_trials} trials, {n_channels} channels, "
          f"{n_times} time points, {n_folds} folds, float64")
    note = "" if scale == 1 else f"; rsatoolbox timed on {ref_times} time points, x{scale:g}"
    print(f"  medians of {repeats} interleaved runs{note}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_ours_noise, t_ref_noise, precision, precision_ref = timed_pair(
            lambda: residual_noise_precision(data, labels, method="multivariate"),
            lambda: rsatoolbox_noise(data, labels), repeats=1)
    diff = float(np.max(np.abs(precision - precision_ref)) / np.max(np.abs(precision_ref)))
    report("noise precision (epoch, rel. diff)", t_ours_noise, t_ref_noise, diff, None, failures, check_speed)

    for label, scheme in (("crossnobis (fold pairs)", "fold_pairs"),
                          ("crossnobis (leave one fold out)", "leave_one_fold_out")):
        t_ours, t_ref, ours, ref = timed_pair(
            lambda: time_resolved_rdms(data, labels, measure="crossnobis", folds=folds,
                                       noise_precision=precision, cv_scheme=scheme),
            lambda: rsatoolbox_rdms(data, labels, folds, ref_times, "crossnobis", precision), repeats)
        report(label, t_ours, t_ref * scale, float(np.max(np.abs(ours[:ref_times] - ref))), TARGET, failures,
               check_speed)
    t_ours, t_ref, ours, ref = timed_pair(
        lambda: time_resolved_rdms(data, labels, measure="correlation"),
        lambda: rsatoolbox_rdms(data, labels, folds, ref_times, "correlation"), repeats)
    report("correlation", t_ours, t_ref * scale, float(np.max(np.abs(ours[:ref_times] - ref))), None, failures,
           check_speed)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  epochs {data.nbytes / 2**30:.2f} GB; peak resident memory of the process {rss_gb:.2f} GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, all time points, agreement only")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--threads", type=int, default=1, help="BLAS and torch threads, for both sides")
    parser.add_argument("--ref-times", type=int, default=30,
                        help="time points rsatoolbox is timed on at full size (extrapolated to all)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per timing (median)")
    args = parser.parse_args(argv)
    import rsatoolbox.data.noise  # noqa: F401  (imported before any timing)
    import rsatoolbox.rdm  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(args.seed)
    failures: list[str] = []
    torch.set_num_threads(args.threads)
    print(f"threads: {args.threads} (BLAS via threadpoolctl, torch intra-op)")
    t0 = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        if args.smoke:
            run(rng, 10, 9, 8, 12, 3, 12, 3, failures, check_speed=False)
        else:
            run(rng, 100, 30, 64, 300, 5, args.ref_times, args.repeats, failures, check_speed=True)
    print(f"  wall time {time.perf_counter() - t0:.0f} s")
    return finish(failures, args.smoke, "the 20x target")


if __name__ == "__main__":
    sys.exit(main())
