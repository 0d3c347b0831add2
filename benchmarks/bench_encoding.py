"""B8: cross-validated ridge encoding vs scikit-learn and himalaya.

Input: features X, 1000 training + 200 test samples x 4096 features (correlated: 64 latent
factors plus noise), responses Y of 20k targets whose signal fraction varies across targets,
13 alphas (logspace(-2, 10)); float32 data, handed unchanged to every estimator.

ours (5-fold)  ``bids_dnn.encoding.ridge.cross_validated_ridge`` with one outer fold (train / test),
               5 inner folds for the per-target alpha (the default), its own z-scoring.
himalaya       ``himalaya.kernel_ridge.KernelRidgeCV(alphas, fit_intercept=True)`` on the same
               inner folds (so its alphas must match ours) and the same z-scored features.
ours (loo)     the same with ``inner_folds="loo"``: closed-form leave-one-out, sklearn's scheme.
sklearn        ``sklearn.linear_model.RidgeCV(alphas, alpha_per_target=True)`` (efficient
               leave-one-out, fit_intercept=True) on the same z-scored features and the raw
               responses (not centred beforehand: see the pitfall in BENCHMARKS.md).

Estimators are compared on identical inner cross-validation (pitfall in BENCHMARKS.md): ours
(5-fold) against himalaya, ours (loo) against sklearn. 5-fold and leave-one-out pick slightly
different alphas (5-fold trains on 80 % of the samples, so it prefers larger penalties); that
difference of schemes is printed too but is not a gate.

Gates: mean test R2 (over targets) within 1e-3 of the reference. Targets: ours (loo) >= 5x
faster than sklearn, ours (5-fold) <= 1.2x himalaya's time, and 100k targets (in batches,
default settings) within 8 GB peak resident memory (VmHWM of a child process started before
the parent allocates anything large). Each timing is the median of 3 runs (all estimators
interleaved).

Usage::

    python benchmarks/bench_encoding.py          # full sizes (a few minutes on 2 cores)
    python benchmarks/bench_encoding.py --smoke  # tiny sizes, agreement only (seconds)

Exit status 1 when a gate fails or, in the full run, a speed / memory target is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_dnn.encoding import cross_validated_ridge, inner_folds_for, r2_columns  # noqa: E402
from _common import finish  # noqa: E402

R2_TOL = 1e-3
ALPHAS = np.logspace(-2, 10, 13)


def make_data(seed: int, n_samples: int, n_features: int, n_targets: int, n_latent: int = 64,
              chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Seeded float32 features (latent factors + noise) and responses (latent signal with a
    per-target signal fraction in [0, 0.6), plus noise); responses built in target chunks so
    memory stays at the float32 output."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_samples, n_latent)).astype(np.float32)
    mixing = rng.standard_normal((n_latent, n_features)).astype(np.float32) / np.sqrt(n_latent)
    x = latent @ mixing
    x += np.float32(0.7) * rng.standard_normal((n_samples, n_features), dtype=np.float32)
    y = np.empty((n_samples, n_targets), dtype=np.float32)
    for start in range(0, n_targets, chunk):
        stop = min(start + chunk, n_targets)
        frac = rng.random(stop - start).astype(np.float32) * np.float32(0.6)
        w = rng.standard_normal((n_latent, stop - start)).astype(np.float32)
        signal = latent @ w
        signal /= signal.std(axis=0)
        y[:, start:stop] = signal * np.sqrt(frac) + rng.standard_normal(
            (n_samples, stop - start), dtype=np.float32) * np.sqrt(1 - frac)
    return x, y


def zscore_train(x: np.ndarray, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Features z-scored with training statistics (as ours does internally)."""
    xf = x.astype(np.float64)
    mean, sd = xf[:n_train].mean(0), xf[:n_train].std(0)
    z = ((xf - mean) / sd).astype(x.dtype)
    return z[:n_train], z[n_train:]


def timed(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall time of each callable over ``repeats`` interleaved rounds, and the last
    results."""
    times: dict = {k: [] for k in fns}
    outs: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def bench_b8(args, failures: list[str], check_speed: bool) -> None:
    from himalaya.kernel_ridge import KernelRidgeCV
    from sklearn.linear_model import RidgeCV

    n_train, n_test, n_features, n_targets = args.train, args.test, args.features, args.targets
    x, y = make_data(args.seed, n_train + n_test, n_features, n_targets)
    train, test = np.arange(n_train), np.arange(n_train, n_train + n_test)
    folds = [(train, test)]
    inner = inner_folds_for(train, inner_folds=5, seed=args.seed, outer_fold=0)
    ztr, zte = zscore_train(x, n_train)
    y_tr, y_te = y[:n_train], y[n_train:]
    n_sk = n_targets if args.sklearn_targets is None else min(args.sklearn_targets, n_targets)
    print(f"\nB8 encoding: X {n_train} (+{n_test} test) x {n_features} features, Y {n_targets} targets, "
          f"{ALPHAS.size} alphas, float32, {args.repeats} repeats"
          + (f"; sklearn timed on {n_sk} targets and extrapolated linearly" if n_sk < n_targets else ""))

    def ours():
        return cross_validated_ridge(x, y, folds, ALPHAS, inner_folds=5, seed=args.seed)

    def ours_loo():
        return cross_validated_ridge(x, y, folds, ALPHAS, inner_folds="loo")

    def himalaya():
        model = KernelRidgeCV(alphas=ALPHAS, kernel="linear", fit_intercept=True, cv=inner)
        model.fit(ztr, y_tr)
        return np.asarray(model.predict(zte)), np.asarray(model.best_alphas_)

    def sklearn():
        model = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(ztr, y_tr[:, :n_sk])
        return model.predict(zte), np.asarray(model.alpha_)

    t, out = timed({"ours": ours, "himalaya": himalaya, "ours_loo": ours_loo, "sklearn": sklearn}, args.repeats)
    t_sk = t["sklearn"] * n_targets / n_sk
    res, res_loo = out["ours"], out["ours_loo"]
    r2_ours, r2_loo = res.fold_r2[0], res_loo.fold_r2[0]
    r2_h = r2_columns(y_te, out["himalaya"][0])
    r2_s = r2_columns(y_te[:, :n_sk], out["sklearn"][0])
    same_h = float(np.mean(np.isclose(res.alphas[0], out["himalaya"][1], rtol=1e-4)))
    same_s = float(np.mean(np.isclose(res_loo.alphas[0, :n_sk], out["sklearn"][1], rtol=1e-4)))
    diff_h = float(np.max(np.abs(res.predictions[test] - out["himalaya"][0])))
    diff_s = float(np.max(np.abs(res_loo.predictions[test, :n_sk] - out["sklearn"][0])))
    sk_smallest = float(np.mean(np.isclose(out["sklearn"][1], ALPHAS[0])))
    sub = f" (first {n_sk} targets)" if n_sk < n_targets else ""
    print(f"  mean test R2: ours 5-fold {np.mean(r2_ours):.6f}  himalaya {np.mean(r2_h):.6f}  |  "
          f"ours loo {np.mean(r2_loo[:n_sk]):.6f}  sklearn {np.mean(r2_s):.6f}{sub}")
    print(f"  same alpha: ours 5-fold vs himalaya {same_h:.4f}, ours loo vs sklearn {same_s:.4f}; "
          f"max |prediction diff| {diff_h:.1e} / {diff_s:.1e}; "
          f"sklearn picks the smallest alpha for {sk_smallest:.1%} of targets")
    print(f"  scheme difference (not a gate): |mean R2 ours 5-fold - sklearn loo| "
          f"{abs(np.mean(r2_ours[:n_sk]) - np.mean(r2_s)):.1e}")
    gate("ours 5-fold vs himalaya", t["ours"], t["himalaya"], abs(np.mean(r2_ours) - np.mean(r2_h)),
         1 / 1.2, failures, check_speed)
    gate("ours loo vs sklearn" + (" (extrap.)" if n_sk < n_targets else ""), t["ours_loo"], t_sk,
         abs(np.mean(r2_loo[:n_sk]) - np.mean(r2_s)), 5.0, failures, check_speed)
    print(f"  (ours 5-fold vs sklearn: ratio {t_sk / t['ours']:.2f}x)")


def gate(name: str, t_ours: float, t_ref: float, diff: float, target: float, failures: list[str],
         check_speed: bool) -> None:
    ratio = t_ref / t_ours
    flag = ""
    if not diff <= R2_TOL:
        flag = "  DISAGREES"
        failures.append(f"{name}: |mean R2 diff| {diff:.1e} > {R2_TOL:g}")
    if check_speed and ratio < target:
        flag += f"  BELOW TARGET {target:.2f}x"
        failures.append(f"{name}: {ratio:.2f}x < {target:.2f}x")
    print(f"  {name:<32} ours {t_ours:8.2f} s  ref {t_ref:8.2f} s  ratio {ratio:6.2f}x "
          f"(target >= {target:.2f}x)  |mean R2 diff| {diff:.1e}{flag}")


def bench_memory(args, failures: list[str], check_speed: bool) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(args.big_targets),
           "--train", str(args.train), "--test", str(args.test), "--features", str(args.features),
           "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        failures.append(f"memory child failed: {proc.stderr[-500:]}")
        print(proc.stdout, proc.stderr)
        return
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    limit = args.memory_limit_gb
    flag = ""
    if check_speed and info["peak_rss_gb"] > limit:
        flag = "  ABOVE TARGET"
        failures.append(f"{args.big_targets} targets: peak RSS {info['peak_rss_gb']:.2f} GB > {limit} GB")
    if not np.isfinite(info["mean_r2"]):
        failures.append(f"{args.big_targets} targets: non-finite mean R2")
    print(f"B8 memory: {args.big_targets} targets in batches (data {info['data_gb']:.2f} GB, "
          f"predictions {info['predictions_gb']:.2f} GB): peak RSS {info['peak_rss_gb']:.2f} GB "
          f"(target <= {limit} GB), {info['seconds']:.1f} s, mean test R2 {info['mean_r2']:.4f}{flag}")


def peak_rss_gb() -> float:
    """Peak resident memory of this process: VmHWM (Linux; unlike ru_maxrss it is not
    inherited from the parent across fork + exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def memory_child(args) -> None:
    x, y = make_data(args.seed, args.train + args.test, args.features, args.memory_child)
    folds = [(np.arange(args.train), np.arange(args.train, args.train + args.test))]
    t0 = time.perf_counter()
    res = cross_validated_ridge(x, y, folds, ALPHAS, inner_folds=5, seed=args.seed)
    seconds = time.perf_counter() - t0
    peak = peak_rss_gb()
    print(json.dumps({"peak_rss_gb": peak, "seconds": seconds, "mean_r2": float(np.mean(res.fold_r2[0])),
                      "data_gb": (x.nbytes + y.nbytes) / 2**30, "predictions_gb": res.predictions.nbytes / 2**30}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, agreement only")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--targets", type=int, default=20000)
    parser.add_argument("--big-targets", type=int, default=100000)
    parser.add_argument("--sklearn-targets", type=int, default=None,
                        help="time sklearn on this many targets and extrapolate linearly")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-limit-gb", type=float, default=8.0)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        memory_child(args)
        return 0
    if args.smoke:
        args.train, args.test, args.features, args.targets = 160, 40, 400, 2000
        args.big_targets, args.repeats = 3000, 1
    failures: list[str] = []
    check_speed = not args.smoke
    bench_memory(args, failures, check_speed)  # first: before this process holds large arrays
    bench_b8(args, failures, check_speed)
    return finish(failures, args.smoke, "speed / memory targets")


if __name__ == "__main__":
    sys.exit(main())
