"""B7b: stimulus (pattern) bootstrap speed and agreement against rsatoolbox.

B7b  ``bootstrap_patterns`` with N=1000 stimulus resamples, 10 subjects, 5 models, 60 conditions
     (Spearman, per-resample noise ceiling) vs ``rsatoolbox.inference.eval_bootstrap_pattern``
     on the same resampling indices (target >= 5x). rsatoolbox draws its indices from numpy's
     global state inside the call; its ``bootstrap_sample_pattern`` is wrapped to record them
     and ours receives the recorded indices.
Also checked (agreement only): Pearson pattern bootstrap and ``bootstrap_dual`` vs
``eval_dual_bootstrap`` on recorded subject and stimulus draws.

Timings are the median of 3 runs (ours and the reference interleaved); agreement is the
maximum absolute difference over evaluations, noise ceilings and variances.
Usage::

    python benchmarks/bench_bootstrap.py          # full sizes (2-5 min, mostly rsatoolbox)
    python benchmarks/bench_bootstrap.py --smoke  # tiny sizes, agreement only

Exit status 1 when a result disagrees (> 1e-10) or, in the full run, the speed target is missed.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # rsatoolbox's progress bars
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import agreement_run, finish, report  # noqa: E402

from bids_dnn.rsa.bootstrap import bootstrap_dual, bootstrap_patterns  # noqa: E402
from bids_dnn.rsa.measures import RSATOOLBOX_NAMES  # noqa: E402



class Recorder:
    """Wraps rsatoolbox's samplers (as imported by ``rsatoolbox.inference.evaluate``) to
    record the drawn indices; restores them on exit."""

    def __enter__(self) -> "Recorder":
        import rsatoolbox.inference.evaluate as ev
        self.ev = ev
        self.orig = (ev.bootstrap_sample_pattern, ev.bootstrap_sample)
        self.pattern: list[np.ndarray] = []
        self.rdm: list[np.ndarray] = []
        self.both_pattern: list[np.ndarray] = []

        def pattern(rdms, pattern_descriptor="index"):
            out = self.orig[0](rdms, pattern_descriptor)
            self.pattern.append(np.asarray(out[1]))
            return out

        def both(rdms, rdm_descriptor="index", pattern_descriptor="index"):
            out = self.orig[1](rdms, rdm_descriptor, pattern_descriptor)
            self.rdm.append(np.asarray(out[1]))
            self.both_pattern.append(np.asarray(out[2]))
            return out

        ev.bootstrap_sample_pattern, ev.bootstrap_sample = pattern, both
        return self

    def __exit__(self, *exc) -> None:
        self.ev.bootstrap_sample_pattern, self.ev.bootstrap_sample = self.orig


def make_problem(rng, n_subj: int, n_models: int, n_cond: int):
    n_pairs = n_cond * (n_cond - 1) // 2
    truth = rng.random(n_pairs)
    data = truth + rng.random((n_subj, n_pairs))
    models = truth + 2 * rng.random((n_models, n_pairs))
    return data, models


def rsa_models(models):
    from rsatoolbox.model import ModelFixed
    from rsatoolbox.rdm import RDMs
    return [ModelFixed(f"m{j}", RDMs(models[j:j + 1])) for j in range(len(models))]


def max_diff(pairs) -> float:
    out = 0.0
    for a, b in pairs:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return np.inf
        out = max(out, float(np.nanmax(np.abs(a - b), initial=0.0)))
    return out




def bench_pattern(rng, n_boot: int, n_subj: int, n_models: int, n_cond: int, measure: str,
                  repeats: int, target: float | None, failures, check_speed) -> None:
    from rsatoolbox.inference import eval_bootstrap_pattern
    from rsatoolbox.rdm import RDMs
    data, models = make_problem(rng, n_subj, n_models, n_cond)
    mods, rdms = rsa_models(models), RDMs(data)
    print(f"\nB7b pattern bootstrap: N={n_boot}, {n_subj} subjects, {n_models} models, "
          f"{n_cond} conditions ({measure}, noise ceiling per resample)")
    t_ours: list[float] = []
    t_ref: list[float] = []
    diff = 0.0
    for rep in range(repeats):
        with Recorder() as rec, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.random.seed(1000 + rep)
            t0 = time.perf_counter()
            ref = eval_bootstrap_pattern(mods, rdms, method=RSATOOLBOX_NAMES[measure], N=n_boot)
            t_ref.append(time.perf_counter() - t0)
        idx = np.array(rec.pattern)
        t0 = time.perf_counter()
        ours = bootstrap_patterns(data, models, measure, indices=idx)
        t_ours.append(time.perf_counter() - t0)
        diff = max(diff, max_diff([(ours.evaluations, ref.evaluations),
                                   (ours.noise_ceiling.T, ref.noise_ceiling),
                                   (ours.covariance, ref.variances),
                                   (ours.model_variance, ref.model_var),
                                   (ours.diff_variance, ref.diff_var),
                                   (ours.noise_ceiling_variance, ref.noise_ceil_var)]))
    report(f"bootstrap_patterns {measure}", statistics.median(t_ours), statistics.median(t_ref),
           diff, target, failures, check_speed)


def bench_dual(rng, n_boot: int, n_subj: int, n_models: int, n_cond: int, measure: str,
               failures, check_speed) -> None:
    from rsatoolbox.inference import eval_dual_bootstrap
    from rsatoolbox.rdm import RDMs
    data, models = make_problem(rng, n_subj, n_models, n_cond)
    print(f"\nDual bootstrap: N={n_boot}, {n_subj} subjects, {n_models} models, "
          f"{n_cond} conditions ({measure})")
    with Recorder() as rec, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(7)
        t0 = time.perf_counter()
        ref = eval_dual_bootstrap(rsa_models(models), RDMs(data), N=n_boot,
                                  method=RSATOOLBOX_NAMES[measure])
        t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = bootstrap_dual(data, models, measure, subject_indices=np.array(rec.rdm),
                          stimulus_indices=np.array(rec.both_pattern))
    t_ours = time.perf_counter() - t0
    diff = max_diff([(ours.evaluations_by_kind, ref.evaluations[:, :, 0, 0, :]),
                     (ours.noise_ceiling_by_kind,
                      ref.noise_ceiling[:, :, 0, :].transpose(1, 0, 2)),
                     (ours.covariance, ref.variances), (ours.model_variance, ref.model_var),
                     (ours.diff_variance, ref.diff_var),
                     (ours.noise_ceiling_variance, ref.noise_ceil_var)])
    report(f"bootstrap_dual {measure} (1 run)", t_ours, t_ref, diff, None, failures,
           check_speed)


def main(argv: list[str] | None = None) -> int:
    args, rng, failures, check_speed = agreement_run(__doc__, argv)
    if args.smoke:
        bench_pattern(rng, 20, 4, 3, 10, "spearman", 1, 5.0, failures, check_speed)
        bench_pattern(rng, 20, 4, 3, 10, "pearson", 1, None, failures, check_speed)
        bench_dual(rng, 15, 4, 3, 9, "spearman", failures, check_speed)
    else:
        bench_pattern(rng, 1000, 10, 5, 60, "spearman", 3, 5.0, failures, check_speed)
        bench_pattern(rng, 1000, 10, 5, 60, "pearson", 3, None, failures, check_speed)
        bench_dual(rng, 100, 10, 5, 60, "spearman", failures, check_speed)
    return finish(failures, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
