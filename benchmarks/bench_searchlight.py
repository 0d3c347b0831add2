"""B1-B5: searchlight speed and agreement against rsatoolbox (``bids_dnn.searchlight``).

B1  ``sphere_neighbourhoods`` vs ``rsatoolbox.util.searchlight.get_volume_searchlight``
    (40x48x40 volume, ellipsoid mask of ~20k voxels, radius 2 voxels = 27-voxel spheres,
    threshold 1.0): identical centres and neighbour sets; target >= 50x.
B2  ``searchlight_rdms`` vs ``get_searchlight_RDMs`` (B1 + 60 conditions), correlation and
    euclidean (rsatoolbox's = our ``sqeuclidean``): float64 <= 1e-12, float32 <= 1e-6
    (relative to the largest dissimilarity); target >= 50x.
B3  neighbourhoods + ``searchlight_rsa`` vs rsatoolbox neighbourhoods + RDMs +
    ``evaluate_models_searchlight(eval_fixed)`` with 10 model RDMs, Spearman and Pearson
    (``corr``): float64 <= 1e-12; targets >= 100x Spearman, >= 50x Pearson. Also the peak
    memory our engine adds (resident set high-water mark, Linux) against the input size.
B3b B3 with 20 and 200 conditions; targets >= 300x at 20, >= 50x at 200 (applied to Spearman;
    Pearson, whose rsatoolbox reference is 3-10x cheaper, is reported without a target).
B4  crossnobis searchlight RDMs, 60 conditions x 6 runs, vs per-sphere rsatoolbox
    ``calc_rdm(method='crossnobis', cv_descriptor='runs')``: <= 1e-6 relative; target >= 100x.
B5  streaming stress (no reference): 200k centres, 123-voxel spheres, 1000 stimuli,
    100 model RDMs, float32 Spearman; reports seconds per 1000 spheres, host memory, and a
    spot check of 100 spheres against float64. On a CPU only ``--b5-run-centres`` centres are
    processed (the full run is extrapolated; the output says so).

Where rsatoolbox is too slow to run on every centre, its per-centre stages are timed on a
subset of centres and extrapolated linearly to all centres (the output says which); the
agreement gates use that subset. Timings are medians of 3 repeats (ours and the reference
interleaved). Usage::

    python benchmarks/bench_searchlight.py           # full sizes (~5 minutes on 2 cores)
    python benchmarks/bench_searchlight.py --smoke   # tiny sizes, agreement only (seconds)
    python benchmarks/bench_searchlight.py --only B1 B2

Exit status 1 when a result disagrees or, in the full run, a speed target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # rsatoolbox's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import timed_pair  # noqa: E402

from bids_dnn.searchlight import (Neighbourhoods, searchlight_rdms,  # noqa: E402
                                  searchlight_rsa, sphere_neighbourhoods)

ALL = ("B1", "B2", "B3", "B3b", "B4", "B5")


# --------------------------------------------------------------------------- helpers
def quiet(fn, *args, **kwargs):
    """Call an rsatoolbox function with its prints and progress bars silenced."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def timed(fn, repeats: int):
    """Median wall time of ``repeats`` calls and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out




def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc), so that the resident set counts live data
    only and memory reused from earlier runs cannot hide a peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(fn) -> tuple[int | None, object]:
    """Resident-set high-water mark reached while ``fn`` runs, minus the resident set before
    (Linux: resets the mark through /proc/self/clear_refs); None where unsupported."""
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None, fn()
    before = _status_kb("VmRSS")
    out = fn()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return None, out
    return (peak - before) * 1024, out


class Report:
    def __init__(self, check_speed: bool) -> None:
        self.failures: list[str] = []
        self.check_speed = check_speed

    def gate(self, name: str, diff: float, tol: float) -> None:
        ok = diff <= tol
        print(f"  exactness {name:<40} {diff:.1e} (<= {tol:g}) {'ok' if ok else 'DISAGREES'}")
        if not ok:
            self.failures.append(f"{name}: {diff:.2e} > {tol:g}")

    def ratio(self, name: str, t_ours: float, t_ref: float, target: float | None,
              note: str = "") -> None:
        ratio = t_ref / t_ours
        flag = ""
        if target is not None and self.check_speed and ratio < target:
            flag = f"  BELOW TARGET {target:g}x"
            self.failures.append(f"{name}: {ratio:.1f}x < {target:g}x")
        tgt = f"(target >= {target:g}x)" if target is not None else ""
        print(f"  {name:<36} ours {t_ours:8.3f} s  ref {t_ref:9.2f} s  ratio {ratio:7.1f}x "
              f"{tgt}{flag}{'  ' + note if note else ''}")


def ellipsoid_mask(shape: tuple[int, int, int], axes: tuple[float, float, float]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"), -1)
    return np.sum((grid / np.asarray(axes)) ** 2, axis=-1) <= 1.0


def rsa_neighbourhoods(mask: np.ndarray, radius: int, threshold: float):
    from rsatoolbox.util.searchlight import get_volume_searchlight
    return quiet(get_volume_searchlight, mask, radius, threshold)


def neighbour_sets_equal(nb: Neighbourhoods, centres: np.ndarray, neighbors: list) -> bool:
    """Same centres, and each of our spheres = rsatoolbox's neighbours inside the mask."""
    mi = nb.mask_indices
    if not np.array_equal(mi[nb.centres], np.asarray(centres)):
        return False
    in_mask = np.zeros(int(np.prod(nb.mask_shape)), dtype=bool)
    in_mask[mi] = True
    for i, ref in enumerate(neighbors):
        ref = np.sort(np.asarray(ref))
        if not np.array_equal(mi[nb.sphere(i)], ref[in_mask[ref]]):
            return False
    return True


def volume_data(patterns: np.ndarray, nb: Neighbourhoods) -> np.ndarray:
    """(n_obs, n_volume_voxels) array as rsatoolbox's searchlight functions take it."""
    data = np.zeros((patterns.shape[0], int(np.prod(nb.mask_shape))))
    data[:, nb.mask_indices] = patterns
    return data


def rsa_rdms(data_2d, centres, neighbors, n_cond, method):
    from rsatoolbox.util.searchlight import get_searchlight_RDMs
    sl = quiet(get_searchlight_RDMs, data_2d, centres, neighbors, np.arange(n_cond),
               method=method, verbose=False)
    return sl.dissimilarities


def rsa_evaluate(rdm_vectors: np.ndarray, models: np.ndarray, method: str) -> np.ndarray:
    """(n_models, n_rdms) from ``evaluate_models_searchlight(..., eval_fixed, method)``."""
    from rsatoolbox.inference import eval_fixed
    from rsatoolbox.model import ModelFixed
    from rsatoolbox.rdm import RDMs
    from rsatoolbox.util.searchlight import evaluate_models_searchlight
    mods = [ModelFixed(f"m{i}", RDMs(m[None])) for i, m in enumerate(models)]
    res = quiet(evaluate_models_searchlight, RDMs(rdm_vectors), mods, eval_fixed, method=method)
    return np.stack([r.evaluations[0, :, 0] for r in res], axis=1)


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def model_rdms(rng: np.random.Generator, n_models: int, n_cond: int) -> np.ndarray:
    n_pairs = n_cond * (n_cond - 1) // 2
    models = rng.random((n_models, n_pairs))
    models[-1] = np.round(models[-1] * 4)  # a model with ties
    return models


# --------------------------------------------------------------------------- B1 - B4
class Setup:
    """B1 mask, neighbourhoods (ours and rsatoolbox's) and their timings, shared by B1-B4."""

    def __init__(self, args, report: Report) -> None:
        self.args = args
        self.mask = ellipsoid_mask(args.shape, args.axes)
        self.radius = args.radius
        reps = args.repeats
        t_ours, t_ref, nb, (centres, neighbors) = timed_pair(
            lambda: sphere_neighbourhoods(self.mask, self.radius, (1, 1, 1), min_fraction=1.0),
            lambda: rsa_neighbourhoods(self.mask, self.radius, 1.0), reps)
        self.nb, self.centres, self.neighbors = nb, centres, neighbors
        self.t_nb_ours, self.t_nb_ref = t_ours, t_ref
        print(f"\nB1 neighbourhoods: volume {args.shape}, ellipsoid mask {int(self.mask.sum())} "
              f"voxels, radius {self.radius} voxels ({nb.n_sphere_voxels}-voxel spheres), "
              f"threshold 1.0 -> {nb.n_centres} centres")
        report.gate("B1 identical centres and neighbour sets",
                    0.0 if neighbour_sets_equal(nb, centres, neighbors) else 1.0, 0.0)
        report.ratio("B1 neighbourhoods", t_ours, t_ref, 50.0)
        self.rdm_ref_time: dict[tuple[int, str], float] = {}


def bench_b2(setup: Setup, rng, report: Report) -> None:
    nb, args = setup.nb, setup.args
    n_cond = args.n_cond
    patterns = rng.normal(size=(n_cond, nb.n_mask_voxels))
    data_2d = volume_data(patterns, nb)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"\nB2 searchlight RDMs: {nb.n_centres} spheres x {n_cond} conditions{load}")
    for ours_m, ref_m in (("correlation", "correlation"), ("sqeuclidean", "euclidean")):
        t_ours, t_ref, ours, ref = timed_pair(
            lambda: searchlight_rdms(patterns, nb, ours_m),
            lambda: rsa_rdms(data_2d, setup.centres, setup.neighbors, n_cond, ref_m),
            args.repeats)
        setup.rdm_ref_time[(n_cond, ref_m)] = t_ref
        t32, ours32 = timed(lambda: searchlight_rdms(patterns, nb, ours_m, dtype=np.float32),
                            args.repeats)
        report.gate(f"B2 {ours_m} float64 (max abs)", float(np.max(np.abs(ours - ref))), 1e-12)
        report.gate(f"B2 {ours_m} float32 (max abs / max)", rel_diff(ours32, ref), 1e-6)
        report.ratio(f"B2 {ours_m} (rsatoolbox {ref_m!r})", t_ours, t_ref, 50.0,
                     f"float32 {t32:.3f} s")
        del ours, ref, ours32


def bench_b3(setup: Setup, rng, report: Report, n_cond: int,
             targets: dict[str, float | None],
             label: str, rdm_subset: int | None, eval_subset: int) -> None:
    """End to end, ours on all centres; rsatoolbox's RDM stage on ``rdm_subset`` centres
    (None: all, or the B2 timing) and its evaluation on ``eval_subset`` centres."""
    nb, args = setup.nb, setup.args
    n_c = nb.n_centres
    patterns = rng.normal(size=(n_cond, nb.n_mask_voxels))
    models = model_rdms(rng, args.n_models, n_cond)
    data_2d = volume_data(patterns, nb)
    sub_r = n_c if rdm_subset is None else min(rdm_subset, n_c)
    sub_e = min(eval_subset, n_c)
    print(f"\n{label}: {n_c} spheres x {n_cond} conditions x {args.n_models} model RDMs "
          f"(reference: neighbourhoods B1, RDMs on {sub_r} centres, evaluation on {sub_e} "
          f"centres, extrapolated linearly to {n_c})")
    key = (n_cond, "correlation")
    if sub_r == n_c and key in setup.rdm_ref_time:
        t_rdm_ref, ref_rdms = setup.rdm_ref_time[key], None
    else:
        t_rdm_ref, ref_rdms = timed(lambda: rsa_rdms(
            data_2d, setup.centres[:sub_r], setup.neighbors[:sub_r], n_cond, "correlation"),
            args.repeats)
        t_rdm_ref *= n_c / sub_r
    if ref_rdms is None or len(ref_rdms) < sub_e:
        ref_rdms = rsa_rdms(data_2d, setup.centres[:sub_e], setup.neighbors[:sub_e], n_cond,
                            "correlation")
    for comparison, ref_method in (("spearman", "spearman"), ("pearson", "corr")):
        def ours():
            nbo = sphere_neighbourhoods(setup.mask, setup.radius, (1, 1, 1), min_fraction=1.0)
            return searchlight_rsa(patterns, nbo, models, comparison=comparison,
                                   memory_budget_bytes=args.budget)

        t_ours, t_eval, scores, ref = timed_pair(
            ours, lambda: rsa_evaluate(ref_rdms[:sub_e], models, ref_method), args.repeats)
        t_ref = setup.t_nb_ref + t_rdm_ref + t_eval * n_c / sub_e
        report.gate(f"{label} {comparison} float64 (max abs)",
                    float(np.max(np.abs(scores[:, :sub_e] - ref))), 1e-12)
        if comparison == "pearson" and label == "B3":
            s32 = searchlight_rsa(patterns, nb, models, comparison=comparison,
                                  dtype=np.float32, memory_budget_bytes=args.budget)
            report.gate(f"{label} {comparison} float32 (max abs)",
                        float(np.max(np.abs(s32[:, :sub_e] - ref))), 1e-5)
        report.ratio(f"{label} {comparison}", t_ours, t_ref, targets[comparison],
                     f"(ref: nb {setup.t_nb_ref:.2f} + RDMs {t_rdm_ref:.1f} + "
                     f"eval {t_eval * n_c / sub_e:.1f} s)")
        if label == "B3":
            extra, _ = peak_extra_bytes(lambda: searchlight_rsa(
                patterns, nb, models, comparison=comparison, memory_budget_bytes=args.budget))
            size_in = patterns.nbytes
            if extra is None:
                print("  peak memory: not measurable on this system")
            else:
                print(f"  peak memory added by searchlight_rsa ({comparison}): "
                      f"{extra / 2 ** 20:.1f} MiB = {extra / size_in:.2f}x the input patterns "
                      f"({size_in / 2 ** 20:.1f} MiB); all RDMs would take "
                      f"{n_c * models.shape[1] * 8 / 2 ** 20:.0f} MiB")
                if report.check_speed and extra > 2 * size_in:
                    report.failures.append(f"B3 {comparison} peak memory {extra / size_in:.2f}x "
                                           "> 2x input")


def bench_b4(setup: Setup, rng, report: Report) -> None:
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm
    nb, args = setup.nb, setup.args
    n_runs, n_cond = args.n_runs, args.n_cond
    n_c = nb.n_centres
    sub = min(args.b4_subset, n_c)
    run_patterns = rng.normal(size=(n_runs, n_cond, nb.n_mask_voxels))
    run_patterns += rng.normal(size=(1, n_cond, nb.n_mask_voxels))
    conds = np.tile(np.arange(n_cond), n_runs)
    runs = np.repeat(np.arange(n_runs), n_cond)
    flat = run_patterns.reshape(n_runs * n_cond, -1)

    def reference():
        out = []
        for i in range(sub):
            ds = Dataset(flat[:, nb.sphere(i)], obs_descriptors={"conds": conds, "runs": runs})
            out.append(quiet(calc_rdm, ds, method="crossnobis", descriptor="conds",
                             cv_descriptor="runs").dissimilarities[0])
        return np.stack(out)

    print(f"\nB4 crossnobis: {n_c} spheres x {n_cond} conditions x {n_runs} runs (reference: "
          f"per-sphere rsatoolbox calc_rdm on {sub} centres, extrapolated to {n_c})")
    t_ours, t_ref, ours, ref = timed_pair(
        lambda: searchlight_rdms(run_patterns, nb, "crossnobis"), reference, args.repeats)
    report.gate("B4 crossnobis float64 (max abs / max)", rel_diff(ours[:sub], ref), 1e-6)
    report.ratio("B4 crossnobis RDMs", t_ours, t_ref * n_c / sub, 100.0)


# --------------------------------------------------------------------------- B5
def bench_b5(args, rng, report: Report) -> None:
    n_cond, n_models = args.b5_stimuli, args.b5_models
    # an ellipsoid with about b5_centres voxels; every mask voxel is a centre (truncated spheres)
    scale = (args.b5_centres / (4 / 3 * np.pi * 36 * 44 * 30)) ** (1 / 3)
    axes = (36 * scale, 44 * scale, 30 * scale)
    shape = tuple(int(2 * a + 8) for a in axes)
    mask = ellipsoid_mask(shape, axes)
    t0 = time.perf_counter()
    nb = sphere_neighbourhoods(mask, args.b5_radius, (1, 1, 1))
    t_nb = time.perf_counter() - t0
    n_c = nb.n_centres
    run = min(n_c, args.b5_run_centres) if args.b5_run_centres else n_c
    device = args.device
    print(f"\nB5 stress: {n_c} centres, {nb.n_sphere_voxels}-voxel spheres, {n_cond} stimuli, "
          f"{n_models} model RDMs, float32 Spearman on {device}")
    patterns = rng.standard_normal(size=(n_cond, nb.n_mask_voxels), dtype=np.float32)
    models = model_rdms(rng, n_models, n_cond)
    print(f"  input patterns {patterns.nbytes / 2 ** 30:.2f} GiB; neighbourhoods {t_nb:.2f} s")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    t0 = time.perf_counter()
    scores = searchlight_rsa(patterns, nb, models, comparison="spearman", dtype=np.float32,
                             device=device, centre_range=(0, run))
    t_run = time.perf_counter() - t0
    hwm = _status_kb("VmHWM")
    per_1k = t_run / run * 1000
    if run < n_c:
        print(f"  REDUCED RUN: {run} of {n_c} centres processed on this machine; the full run "
              f"would take about {per_1k * n_c / 1000 / 60:.1f} min")
    print(f"  {per_1k:.2f} s per 1000 spheres ({t_run:.1f} s for {run} spheres)")
    if hwm is not None:
        print(f"  host memory high-water mark during the run: {hwm / 2 ** 20:.2f} GiB "
              f"(limit 16 GiB)")
        if hwm * 1024 > 16 * 2 ** 30:
            report.failures.append("B5 host memory above 16 GiB")
    n_spot = min(100, run)
    ref = searchlight_rsa(patterns.astype(np.float64), nb, models, comparison="spearman",
                          device=device, centre_range=(0, n_spot))
    report.gate(f"B5 {n_spot} spheres float32 vs float64 (max abs)",
                float(np.max(np.abs(scores[:, :n_spot] - ref))), args.b5_tol)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, agreement only")
    parser.add_argument("--only", nargs="+", choices=ALL, default=list(ALL))
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="device of B5 (cpu or cuda)")
    parser.add_argument("--budget", type=int, default=None,
                        help="memory_budget_bytes of searchlight_rsa in B3 (default: the size "
                             "of the input patterns)")
    parser.add_argument("--b5-centres", type=int, default=200_000)
    parser.add_argument("--b5-stimuli", type=int, default=1000)
    parser.add_argument("--b5-models", type=int, default=100)
    parser.add_argument("--b5-radius", type=float, default=3.1, help="3.1 -> 123 voxels")
    parser.add_argument("--b5-run-centres", type=int, default=None,
                        help="centres actually processed (default: 2000 on CPU, all on CUDA)")
    parser.add_argument("--b5-tol", type=float, default=1e-4,
                        help="float32 vs float64 Spearman tolerance (rank flips of near ties)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.axes, args.radius = (14, 16, 14), (5.5, 6.5, 5.5), 2
        args.n_cond, args.n_models, args.n_runs = 12, 4, 3
        args.b3b_conds, args.b3_rdm_subset, args.b3_eval_subset = (6, 15), 60, 40
        args.b4_subset = 40
        args.b5_centres, args.b5_stimuli, args.b5_models = 3000, 30, 5
        args.b5_run_centres = args.b5_run_centres or 300
        args.repeats = 1
    else:
        args.shape, args.axes, args.radius = (40, 48, 40), (16, 19, 16), 2
        args.n_cond, args.n_models, args.n_runs = 60, 10, 6
        args.b3b_conds, args.b3_rdm_subset, args.b3_eval_subset = (20, 200), 1000, 300
        args.b4_subset = 200
        if args.b5_run_centres is None:
            args.b5_run_centres = 0 if args.device.startswith("cuda") else 2000
    rng = np.random.default_rng(args.seed)
    report = Report(check_speed=not args.smoke)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
          + (f", load average {load[0]:.1f} (1 min)" if load else "")
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    need_setup = any(b in args.only for b in ("B1", "B2", "B3", "B3b", "B4"))
    setup = Setup(args, report) if need_setup else None
    n_patterns = setup.nb.n_mask_voxels * args.n_cond * 8 if setup else 0
    if args.budget is None:
        args.budget = max(n_patterns, 2 ** 20)
    if "B2" in args.only:
        bench_b2(setup, rng, report)
    if "B3" in args.only:
        bench_b3(setup, rng, report, args.n_cond, {"spearman": 100.0, "pearson": 50.0}, "B3",
                 None, args.b3_eval_subset)
    if "B3b" in args.only:
        for n_cond, target in zip(args.b3b_conds, (300.0, 50.0)):
            sub = args.b3_eval_subset if n_cond <= args.n_cond else args.b3_eval_subset // 3
            # the B3b targets are read as Spearman targets (B3's headline comparison, whose
            # reference is the slow one); Pearson is reported without a target
            bench_b3(setup, rng, report, n_cond, {"spearman": target, "pearson": None},
                     f"B3b {n_cond} conditions", args.b3_rdm_subset, sub)
    if "B4" in args.only:
        bench_b4(setup, rng, report)
    if "B5" in args.only:
        bench_b5(args, rng, report)
    print()
    if report.failures:
        print("FAILED:\n  " + "\n  ".join(report.failures))
        return 1
    print("all exactness gates passed" + ("" if args.smoke else " and speed targets met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
