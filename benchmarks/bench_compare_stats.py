"""B6 / B7: RDM comparison and inference speed and agreement against rsatoolbox and scipy.

B6  ``compare_rdms`` for every measure vs ``rsatoolbox.rdm.compare`` (200 data x 50 model RDMs
    of 60 conditions); Kendall's tau-a must be >= 4x faster.
B7  ``permutation_test`` with 10k condition permutations vs a loop of ``scipy.stats.spearmanr``
    on the same permutations (>= 50x faster), and ``noise_ceiling`` vs
    ``rsatoolbox.inference.boot_noise_ceiling`` for every measure.

Each timing is the median of 3 runs (ours and the reference interleaved); agreement is the
maximum absolute difference.
Usage::

    python benchmarks/bench_compare_stats.py          # full sizes (about a minute on 2 cores)
    python benchmarks/bench_compare_stats.py --smoke  # tiny sizes, agreement only

Exit status 1 when a result disagrees (> 1e-10) or, in the full run, a speed target is missed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import agreement_run, finish, report, timed_pair  # noqa: E402

from bids_dnn.rsa.compare import COMPARISON_MEASURES, compare_rdms  # noqa: E402
from bids_dnn.rsa.inference import (noise_ceiling, permutation_indices,  # noqa: E402
                            permutation_test, permuted_pair_indices)
from bids_dnn.rsa.measures import RSATOOLBOX_NAMES  # noqa: E402







def bench_compare(rng, n_data: int, n_models: int, n_cond: int, failures, check_speed):
    from rsatoolbox.rdm import RDMs, compare
    n_pairs = n_cond * (n_cond - 1) // 2
    truth = rng.random(n_pairs)
    data = truth + rng.random((n_data, n_pairs))
    models = np.vstack([truth + 2 * rng.random((n_models - n_models // 5, n_pairs)),
                        np.round(rng.random((n_models // 5, n_pairs)) * 4)])  # tied models
    print(f"\nB6 compare: {n_data} data x {n_models} model RDMs, {n_cond} conditions")
    for measure in COMPARISON_MEASURES:
        t_ours, t_ref, ours, ref = timed_pair(
            lambda: compare_rdms(data, models, measure),
            lambda: compare(RDMs(data), RDMs(models), method=RSATOOLBOX_NAMES[measure]))
        target = 4.0 if measure == "kendall_tau_a" else None
        report(f"compare {measure}", t_ours, t_ref, float(np.max(np.abs(ours - ref))),
               target, failures, check_speed)


def bench_permutations(rng, n_cond: int, n_perm: int, failures, check_speed):
    n_pairs = n_cond * (n_cond - 1) // 2
    data = rng.random(n_pairs)
    model = data + rng.random(n_pairs)
    perms = permutation_indices(n_cond, n_perm, rng)
    print(f"\nB7 permutation test: 1 data x 1 model RDM, {n_cond} conditions, "
          f"{n_perm} permutations (spearman)")

    def ours():
        return permutation_test(data, model, "spearman", permutations=perms, return_null=True)

    def reference():
        idx = permuted_pair_indices(perms, n_cond)
        return np.array([scipy.stats.spearmanr(data, model[i])[0] for i in idx])

    t_ours, t_ref, res, null = timed_pair(ours, reference)
    observed = scipy.stats.spearmanr(data, model)[0]
    p_ref = (1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm)
    diff = max(float(np.max(np.abs(res.null[0, 0] - null))),
               abs(float(res.p_values[0, 0] - p_ref)))
    report("permutation_test spearman", t_ours, t_ref, diff, 50.0, failures, check_speed)


def bench_noise_ceiling(rng, n_subj: int, n_cond: int, failures, check_speed):
    from rsatoolbox.inference import boot_noise_ceiling
    from rsatoolbox.rdm import RDMs
    n_pairs = n_cond * (n_cond - 1) // 2
    data = rng.random(n_pairs) + rng.random((n_subj, n_pairs))
    print(f"\nB7 noise ceiling: {n_subj} subjects, {n_cond} conditions")
    for measure in COMPARISON_MEASURES:
        t_ours, t_ref, ours, ref = timed_pair(
            lambda: noise_ceiling(data, measure),
            lambda: boot_noise_ceiling(RDMs(data), method=RSATOOLBOX_NAMES[measure]))
        diff = float(np.max(np.abs(np.subtract(ours, ref))))
        report(f"noise_ceiling {measure}", t_ours, t_ref, diff, None, failures, check_speed)


def main(argv: list[str] | None = None) -> int:
    args, rng, failures, check_speed = agreement_run(__doc__, argv)
    if args.smoke:
        bench_compare(rng, 8, 5, 15, failures, check_speed)
        bench_permutations(rng, 15, 300, failures, check_speed)
        bench_noise_ceiling(rng, 5, 15, failures, check_speed)
    else:
        bench_compare(rng, 200, 50, 60, failures, check_speed)
        bench_permutations(rng, 60, 10000, failures, check_speed)
        bench_noise_ceiling(rng, 20, 60, failures, check_speed)
    return finish(failures, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
