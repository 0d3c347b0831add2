"""Helpers shared by the benchmark scripts: interleaved timing, one result line, the exit status."""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

TOL = 1e-10  # default exactness gate (float64)


def timed_pair(ours, reference, repeats: int = 3):
    """Median-of-``repeats`` wall times of two callables, run interleaved (so that load from
    other processes hits both alike), and their last results."""
    times: tuple[list[float], list[float]] = ([], [])
    outs = [None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for k, fn in enumerate((ours, reference)):
                t0 = time.perf_counter()
                outs[k] = fn()
                times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1]), outs[0], outs[1]


def report(name: str, t_ours: float | None, t_ref: float | None, diff: float, target: float | None,
           failures: list[str], check_speed: bool, tol: float = TOL) -> None:
    """Print one result line; record a failed exactness gate or a missed speed target."""
    flag = ""
    if diff > tol:
        flag = "  DISAGREES"
        failures.append(f"{name}: max |diff| {diff:.2e}")
    if t_ours is None or t_ref is None:
        print(f"{name:<36} {'':>58} max|diff| {diff:.1e}{flag}")
        return
    ratio = t_ref / t_ours
    if target is not None and check_speed and ratio < target:
        flag += f"  BELOW TARGET {target:g}x"
        failures.append(f"{name}: {ratio:.1f}x < {target:g}x")
    tgt = f"(target >= {target:g}x)" if target is not None else ""
    print(f"{name:<36} ours {t_ours * 1e3:9.1f} ms  ref {t_ref * 1e3:9.1f} ms  "
          f"ratio {ratio:7.1f}x {tgt:<16} max|diff| {diff:.1e}{flag}")


def finish(failures: list[str], smoke: bool, targets: str = "speed targets") -> int:
    """The exit status of a benchmark run, after a summary line (``targets``: what a full run
    also checked, e.g. "the memory target")."""
    print()
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all agreement checks passed" + ("" if smoke else f" and {targets} met"))
    return 0


def agreement_run(doc: str, argv: list[str] | None) -> tuple[argparse.Namespace, "np.random.Generator", list[str], bool]:
    """The command line of an agreement + speed benchmark (``--smoke``, ``--seed``).

    Returns
    -------
    args, rng, failures, check_speed
        The parsed options, the seeded generator, the list the checks append failures to, and
        whether speed targets are checked (not with ``--smoke``).
    """
    import numpy as np

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, agreement only")
    parser.add_argument("--seed", type=int, default=20261125)
    args = parser.parse_args(argv)
    return args, np.random.default_rng(args.seed), [], not args.smoke
