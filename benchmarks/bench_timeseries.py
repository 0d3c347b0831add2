"""B13: leave-one-run-out banded ridge on BOLD time series vs himalaya's MultipleKernelRidgeCV.

Input (full size): 4 runs x 750 TRs = 3,000 TRs, 20,000 voxels (float32), two feature spaces at TR
resolution (256 and 128 features, AR(1)-smooth within runs), 4 FIR delays (1-4 TRs, so 1,024 and
512 delayed columns); voxels driven by space A, by B, by both (random mixtures) or by nothing, at
signal fractions in [0, 0.5).

ours      ``bids_dnn.timeseries.timeseries_encoding(spaces, bold, runs, alphas, delays)``: per-run
          z-scoring, delays within runs, leave-one-run-out folds, inner folds leaving one
          training run out, ``bids_dnn.encoding.banded_ridge`` (himalaya's random search, batched:
          per outer fold every candidate's decompositions are computed once and all voxels stream
          through them in batches that fit ``--mem``, default: the library's default budget).
himalaya  the same pipeline written directly: per-run z-scoring and delays in NumPy, then per
          outer fold the training-standardised kernels ``K_i = X_i X_i^T`` (float64, cast to
          float32 as ours) and one ``himalaya.kernel_ridge.MultipleKernelRidgeCV(kernels=
          "precomputed", solver="random_search", fit_intercept=True)`` over all voxels.

Identical settings: the same outer folds, the same inner folds (the three other training runs,
one at a time), the same alphas (13, logspace(-2, 10)), the same ``n_iter`` kernel-weight
candidates (random search seeded with the same ``random_state``: the candidates are the same
Dirichlet draws, the first uniform), the same concentrations (0.1, 1), float32, and the same
``n_targets_batch`` / ``n_targets_batch_refit`` inside himalaya (ours' inner batch). The
random search is therefore the same search: both pick, per voxel, the best of the same
candidates, so the held-out predictions agree to float32 rounding; compared is the Pearson r of
each held-out run (``fold_r``) and its mean (``r``).

Each arm runs in a fresh child process (its peak resident memory, VmHWM, is the arm's alone;
both hold the same BOLD and features). Reported: wall time and CPU time (the child's process
time: with ``--threads 1`` the arm's own compute, much less sensitive than wall time to other
processes on shared cores); single runs (minutes each at full size) unless ``--repeats``, arms
alternating. At full size a run takes hours on 2 shared cores: ``--voxels`` / ``--n-iter`` give
a scaled run, and ``--extrapolate VOXELS`` adds a second, smaller voxel count to split each
arm's CPU time into a voxel-independent part (kernel eigendecompositions and per-alpha
resolution matrices for every weight candidate, and the refit's decompositions; once per fold in
both arms, whatever the number of voxel batches) and a per-voxel part, and prints both arms
extrapolated linearly to 20,000 voxels and to ``n_iter`` 20 (every candidate costs the same),
labelled EXTRAPOLATED.

Gates: max |fold r difference| <= 1e-3 (float32, same search). Targets (full run): ours at least
as fast as himalaya (ratio >= 1.0).

Usage::

    python benchmarks/bench_timeseries.py           # full size (hours on 2 shared cores; ~8 GB)
    python benchmarks/bench_timeseries.py --voxels 4000 --extrapolate 1000 --n-iter 4 --threads 1
                                                    # scaled + extrapolation (~30 min on 2 shared cores)
    python benchmarks/bench_timeseries.py --smoke               # tiny sizes, agreement only (seconds)

Exit status 1 when the gate fails or, in a full run, the speed target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import finish  # noqa: E402

R_TOL = 1e-3
TARGET = 1.0
ALPHAS = np.logspace(-2, 10, 13)
DELAYS = (1, 2, 3, 4)
FULL_VOXELS = 20000


# --------------------------------------------------------------------------- data
def make_data(seed: int, n_runs: int, n_per: int, n_voxels: int, p_a: int, p_b: int,
              chunk: int = 4096) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Seeded features (AR(1) within runs), BOLD (float32) and run labels."""
    rng = np.random.default_rng(seed)
    runs = np.repeat(np.arange(n_runs), n_per)
    spaces = {}
    for name, p in (("A", p_a), ("B", p_b)):
        e = rng.standard_normal((runs.size, p))
        x = np.empty_like(e)
        for t in range(runs.size):
            x[t] = e[t] + (0.6 * x[t - 1] if t and runs[t] == runs[t - 1] else 0.0)
        spaces[name] = x
    latent = {name: _reference_design(x, runs) for name, x in spaces.items()}
    y = np.empty((runs.size, n_voxels), dtype=np.float32)
    for start in range(0, n_voxels, chunk):
        stop = min(start + chunk, n_voxels)
        nv = stop - start
        kind = rng.integers(0, 4, nv)                      # 0 A, 1 B, 2 both, 3 none
        mix = np.where(kind == 0, 1.0, np.where(kind == 1, 0.0, rng.random(nv)))
        sig = np.zeros((runs.size, nv))
        for name, share in (("A", mix), ("B", 1 - mix)):
            d = latent[name]
            w = rng.standard_normal((d.shape[1], nv)) / np.sqrt(d.shape[1])
            s = d @ w
            s /= s.std(axis=0)
            sig += s * np.sqrt(share)
        sig /= np.maximum(sig.std(axis=0), 1e-12)
        frac = np.where(kind == 3, 0.0, rng.random(nv) * 0.5)
        y[:, start:stop] = sig * np.sqrt(frac) + rng.standard_normal((runs.size, nv)) * np.sqrt(1 - frac)
    return spaces, y, runs


# --------------------------------------------------------------------------- reference pipeline
def _zscore_runs(x: np.ndarray, runs: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, dtype=x.dtype)
    for r in np.unique(runs):
        m = runs == r
        block = x[m].astype(np.float64)
        sd = block.std(axis=0)
        out[m] = ((block - block.mean(axis=0)) / np.where(sd > 0, sd, 1.0)).astype(x.dtype)
    return out


def _reference_design(x: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """Per-run z-scoring and FIR delays (delay-major), written directly in NumPy (contiguous runs)."""
    z = _zscore_runs(x, runs)
    blocks = []
    for d in DELAYS:
        shifted = np.zeros_like(z)
        for r in np.unique(runs):
            idx = np.flatnonzero(runs == r)
            shifted[idx[d:]] = z[idx[:idx.size - d]]
        blocks.append(shifted)
    return np.hstack(blocks)


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64) - a.mean(axis=0)
    b = b.astype(np.float64) - b.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def run_himalaya(spaces: dict[str, np.ndarray], y: np.ndarray, runs: np.ndarray, args, inner_batch: int) -> dict:
    from himalaya.kernel_ridge import MultipleKernelRidgeCV

    designs = [_reference_design(x, runs) for x in spaces.values()]
    yz = _zscore_runs(y, runs)
    labels = np.unique(runs)
    fold_r = np.full((labels.size, y.shape[1]), np.nan)
    alphas = np.full((labels.size, y.shape[1]), np.nan)
    for k, r in enumerate(labels):
        train, test = np.flatnonzero(runs != r), np.flatnonzero(runs == r)
        k_tr, k_te = [], []
        for x in designs:
            mean, sd = x[train].mean(axis=0), x[train].std(axis=0)
            sd = np.where(sd > 0, sd, 1.0)
            xtr, xte = (x[train] - mean) / sd, (x[test] - mean) / sd
            k_tr.append(xtr @ xtr.T)
            k_te.append(xte @ xtr.T)
        g = runs[train]
        inner = [(np.flatnonzero(g != q), np.flatnonzero(g == q)) for q in np.unique(g)]
        model = MultipleKernelRidgeCV(
            kernels="precomputed", solver="random_search", fit_intercept=True, cv=inner, random_state=args.seed,
            solver_params={"n_iter": args.n_iter, "alphas": ALPHAS.astype(np.float32), "concentration": [0.1, 1.0],
                           "progress_bar": False, "n_targets_batch": inner_batch,
                           "n_targets_batch_refit": inner_batch})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.fit(np.stack(k_tr).astype(np.float32), yz[train])
            pred = np.asarray(model.predict(np.stack(k_te).astype(np.float32)))
        fold_r[k] = _pearson_columns(pred, yz[test])
        alphas[k] = 1.0 / np.exp(np.asarray(model.deltas_, dtype=np.float64)).sum(axis=0)
    return {"fold_r": fold_r, "alphas": alphas}


def run_ours(spaces: dict[str, np.ndarray], y: np.ndarray, runs: np.ndarray, args) -> dict:
    from bids_dnn.timeseries import timeseries_encoding

    res = timeseries_encoding(spaces, y, runs, alphas=ALPHAS, delays=DELAYS, n_iter=args.n_iter, seed=args.seed,
                              memory_budget_bytes=args.mem)
    return {"fold_r": res.fold_r, "alphas": res.alphas}


def plan(args, n_voxels: int) -> tuple[int, int]:
    """Ours' voxel batch and himalaya sub-batch (the latter used by both arms)."""
    from bids_dnn.encoding import inner_folds_for
    from bids_dnn.timeseries import banded_batches

    runs = np.repeat(np.arange(args.runs), args.trs // args.runs)
    folds = [(np.flatnonzero(runs != r), np.flatnonzero(runs == r)) for r in range(args.runs)]
    inner = [inner_folds_for(t, inner_folds=5, inner_groups=runs, seed=args.seed, outer_fold=k)
             for k, (t, _) in enumerate(folds)]
    return banded_batches(n_voxels, folds, inner, 2, ALPHAS.size, args.n_iter, 4, args.mem)


# --------------------------------------------------------------------------- child processes
def peak_rss_gb() -> float:
    """Peak resident memory of this process (VmHWM; not inherited across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def child(args) -> None:
    arm, out = args.child
    if args.threads is not None:
        import himalaya.kernel_ridge  # noqa: F401  (load every BLAS first, so that the limit reaches it)
        import scipy.linalg  # noqa: F401
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
    n_voxels = args.child_voxels
    spaces, y, runs = make_data(args.seed, args.runs, args.trs // args.runs, n_voxels, args.features_a,
                                args.features_b)
    batch, inner_batch = plan(args, n_voxels)
    data_rss = peak_rss_gb()
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_ours(spaces, y, runs, args) if arm == "ours" else run_himalaya(spaces, y, runs, args, inner_batch)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.savez(out, **res)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_gb": peak_rss_gb(), "data_rss_gb": data_rss,
                      "batch": batch, "inner_batch": inner_batch}))


def spawn(args, arm: str, n_voxels: int, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", arm, str(out), "--child-voxels", str(n_voxels)]
    for name in ("seed", "runs", "trs", "features_a", "features_b", "n_iter", "mem", "threads"):
        if getattr(args, name) is not None:
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info.update({k: v for k, v in np.load(out).items()})
    return info


def measure(args, n_voxels: int, tmp: Path) -> dict[str, dict]:
    """Both arms at ``n_voxels`` (median time over repeats, alternating order)."""
    runs_: dict[str, list[dict]] = {"ours": [], "himalaya": []}
    for rep in range(args.repeats):
        for arm in (("himalaya", "ours") if rep % 2 == 0 else ("ours", "himalaya")):
            runs_[arm].append(spawn(args, arm, n_voxels, tmp / f"{arm}_{n_voxels}_{rep}.npz"))
    out = {}
    for arm, infos in runs_.items():
        best = dict(infos[-1])
        best["seconds"] = float(np.median([i["seconds"] for i in infos]))
        best["cpu_seconds"] = float(np.median([i["cpu_seconds"] for i in infos]))
        best["peak_rss_gb"] = float(max(i["peak_rss_gb"] for i in infos))
        out[arm] = best
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, agreement only")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--trs", type=int, default=3000, help="TRs over all runs")
    parser.add_argument("--voxels", type=int, default=FULL_VOXELS)
    parser.add_argument("--features-a", type=int, default=256)
    parser.add_argument("--features-b", type=int, default=128)
    parser.add_argument("--n-iter", type=int, default=20, help="kernel-weight candidates of the random search")
    parser.add_argument("--mem", type=int, default=None, help="ours' memory_budget_bytes (default: the library's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads of both arms (threadpoolctl; default: the libraries' own; --smoke: 1)")
    parser.add_argument("--extrapolate", type=int, default=None, metavar="VOXELS",
                        help="also run at this smaller voxel count and extrapolate both arms to 20,000 voxels")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-voxels", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    if args.smoke:
        args.runs, args.trs, args.voxels, args.features_a, args.features_b, args.n_iter = 4, 240, 300, 12, 8, 4
        args.extrapolate = None
        args.threads = 1 if args.threads is None else args.threads
    failures: list[str] = []
    full = not args.smoke and args.voxels == FULL_VOXELS and args.trs == 3000 and args.n_iter == 20
    batch, inner_batch = plan(args, args.voxels)
    print(f"\nB13 time-series banded ridge: {args.trs} TRs ({args.runs} runs) x {args.voxels} voxels, spaces "
          f"{args.features_a} + {args.features_b} features x {len(DELAYS)} delays, {ALPHAS.size} alphas, "
          f"n_iter {args.n_iter}, float32, BLAS threads {args.threads or 'default'}; ours' voxel batch {batch}, "
          f"himalaya sub-batch {inner_batch}"
          + ("" if full else "  [SCALED RUN]"))
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        res = measure(args, args.voxels, tmp)
        small = measure(args, args.extrapolate, tmp) if args.extrapolate else None
    ours, ref = res["ours"], res["himalaya"]
    diff_fold = float(np.nanmax(np.abs(ours["fold_r"] - ref["fold_r"])))
    diff_r = float(np.nanmax(np.abs(np.nanmean(ours["fold_r"], 0) - np.nanmean(ref["fold_r"], 0))))
    same_alpha = float(np.mean(np.isclose(ours["alphas"], ref["alphas"], rtol=1e-4)))
    ratio = ref["seconds"] / ours["seconds"]
    flag = ""
    if not diff_fold <= R_TOL:
        flag = "  DISAGREES"
        failures.append(f"max |fold r diff| {diff_fold:.1e} > {R_TOL:g}")
    if full and ratio < TARGET:
        flag += f"  BELOW TARGET {TARGET:g}x"
        failures.append(f"time ratio {ratio:.2f}x < {TARGET:g}x")
    for name, arm in (("ours", ours), ("himalaya", ref)):
        print(f"  {name:<9} {arm['seconds']:9.1f} s wall, {arm['cpu_seconds']:9.1f} s CPU, peak RSS "
              f"{arm['peak_rss_gb']:6.2f} GB (data alone {arm['data_rss_gb']:.2f} GB)")
    print(f"  CPU time ratio himalaya / ours {ref['cpu_seconds'] / ours['cpu_seconds']:.2f}x")
    print(f"  time ratio himalaya / ours {ratio:.2f}x (target >= {TARGET:g}x{'' if full else ', not gated: scaled'}); "
          f"max |fold r diff| {diff_fold:.1e}, max |r diff| {diff_r:.1e}, same overall alpha {same_alpha:.4f}{flag}")
    if small is not None:
        v1, v2 = args.extrapolate, args.voxels
        print(f"  at {v1} voxels: ours {small['ours']['cpu_seconds']:.1f} s CPU, himalaya "
              f"{small['himalaya']['cpu_seconds']:.1f} s CPU (one voxel batch each)")
        for arm in ("ours", "himalaya"):
            t1, t2 = small[arm]["cpu_seconds"], res[arm]["cpu_seconds"]
            per_voxel = (t2 - t1) / (v2 - v1)
            fixed = t1 - per_voxel * v1
            total = fixed + per_voxel * FULL_VOXELS
            print(f"  EXTRAPOLATED {arm:<8} {fixed:7.1f} s fixed + {per_voxel * 1e3:.2f} ms/voxel"
                  f" -> {total:8.1f} s CPU at {FULL_VOXELS} voxels, n_iter {args.n_iter} (x {20 / args.n_iter:g} for "
                  f"n_iter 20: {total * 20 / args.n_iter:8.1f} s)")
    return finish(failures, args.smoke or not full, "the speed target")


if __name__ == "__main__":
    sys.exit(main())
