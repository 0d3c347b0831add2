"""GLM speed (B15, issue 23): the fast GLM engine against nilearn's run_glm on one real-size run.

Input (in memory, nothing written): a synthetic 2 mm whole-brain run of 222 893 voxels (the
ellipsoid brain mask of ``bench_glm_memory.py``), 1000 float32 volumes, the fMRIPrep-style
confounds of ``bench_glm_memory.py`` (one non-steady-state volume); voxels = baseline + planted
stimulus responses + AR(1) noise with coefficients 0-0.6 across voxels (~60 nilearn bins).

- LSA, AR(1): ``fit_run_glm`` with the default options (confounds motion_6 + white_matter +
  csf, cosine drift: 141 regressors for 100 stimuli shown twice), ``engine: fast`` on all
  voxels: wall time and peak RSS during the fit (VmHWM reset just before it; the 0.83 GB
  series and the 0.83 GB residuals included). Then ``engine: nilearn`` (nilearn's ``run_glm``
  per chunk of the default size) on the first ``--nilearn-chunks`` chunks, extrapolated to all
  voxels in proportion (nilearn's cost is per chunk: one OLS fit, then one whitened design,
  pseudo-inverse and fit per AR(1) bin), and the fast engine on the same voxels.
- LSS, AR(1): 100 trials (50 stimuli shown twice), the engines' ``fit_lss`` on the same trial
  models: fast on all voxels; nilearn's per-trial loop (one ``run_glm`` per trial model) for
  ``--nilearn-trials`` trials on the first chunk, extrapolated to 100 trials x all chunks.

Agreement: betas of the nilearn-fitted voxels (and trials) within 1e-8 of nilearn's, relative
to the largest. Gates (full size): LSA >= 10x with peak RSS <= 3 GB, LSS >= 50x.

Usage::

    python benchmarks/bench_glm_speed.py          # full size (~10 minutes on 2 cores)
    python benchmarks/bench_glm_speed.py --smoke  # small run, agreement only, seconds

Exit status 1 when a gate fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import finish, report  # noqa: E402
from bench_glm_memory import confounds_table, ellipsoid_mask, peak_rss_gb  # noqa: E402

T_R = 2.0
LSA_TARGET, LSS_TARGET, MEMORY_LIMIT_GB = 10.0, 50.0, 3.0
TOL = 1e-8


def reset_peak_rss() -> None:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs``; no-op elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def events_table(n_stim: int, repeats: int, n_time: int, seed: int) -> pd.DataFrame:
    """``n_stim`` stimuli x ``repeats`` in random order, evenly spread over the run (column
    ``condition``: the stimulus)."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_stim) for _ in range(repeats)])
    onsets = 6.0 + np.arange(order.size) * ((n_time - 10) * T_R - 6.0) / order.size
    return pd.DataFrame({"onset": np.round(onsets, 2), "duration": 1.0,
                         "condition": [f"stim{s:03d}" for s in order]})


def synthetic_run(n_vox: int, n_time: int, events: pd.DataFrame, seed: int, block: int = 20_000) -> np.ndarray:
    """float32 series (n_time, n_vox): baseline + planted responses + AR(1) noise, built in voxel blocks."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    design = make_first_level_design_matrix(np.arange(n_time) * T_R,
                                            events.rename(columns={"condition": "trial_type"}),
                                            hrf_model="spm", drift_model=None)
    X = design.drop(columns="constant").to_numpy()
    rng = np.random.default_rng(seed)
    data = np.empty((n_time, n_vox), dtype=np.float32)
    for start in range(0, n_vox, block):
        width = min(block, n_vox - start)
        rho = rng.uniform(0.0, 0.6, width)
        noise = rng.standard_normal((n_time, width))
        for t in range(1, n_time):
            noise[t] += rho * noise[t - 1]
        signal = X @ rng.normal(scale=3.0, size=(X.shape[1], width))
        data[:, start : start + width] = 800.0 + 100.0 * rng.random(width) + signal + 5.0 * noise
    return data


def lss_models(events: pd.DataFrame, confounds: pd.DataFrame, n_time: int):
    """The LSS trial models ``fit_run_glm`` builds for the default options, and the kept volumes."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    from bids_dnn.brain.confounds import drop_constant_confounds, sample_mask_from_confounds, select_confounds
    from bids_dnn.brain.glm import GLMOptions
    from bids_dnn.brain.lss import LSSDesign

    options = GLMOptions()
    regs, _ = select_confounds(confounds, list(options.confounds))
    keep = sample_mask_from_confounds(confounds, options.drop_non_steady_state, options.scrub_fd, "bench")
    regs, _ = drop_constant_confounds(regs, keep)
    trials = events.assign(trial_type=[f"trial_{i:05d}" for i in range(len(events))])
    frame = make_first_level_design_matrix(np.arange(n_time) * T_R, trials.loc[:, ["onset", "duration", "trial_type"]],
                                           hrf_model=options.hrf, drift_model=options.drift_model,
                                           high_pass=options.high_pass_hz, add_regs=regs.reset_index(drop=True))
    conditions = sorted(events["condition"].unique())
    trial_condition = events["condition"].map({c: k for k, c in enumerate(conditions)}).to_numpy()
    return LSSDesign.from_frame(frame.loc[keep], trial_condition, len(conditions)), np.flatnonzero(keep)


def relative_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.nanmax(np.abs(ours - reference)) / np.nanmax(np.abs(reference)))


def bench_lsa(data: np.ndarray, events: pd.DataFrame, confounds: pd.DataFrame, n_chunks: int, chunk: int,
              failures: list[str], check: bool) -> None:
    from bids_dnn.brain.glm import GLMOptions, fit_run_glm

    reset_peak_rss()
    t0 = time.perf_counter()
    fast = fit_run_glm(data, events, T_R, GLMOptions(), confounds=confounds, chunk_size=chunk)
    t_fast = time.perf_counter() - t0
    peak = peak_rss_gb()[0]
    n_vox = data.shape[1]
    subset = min(n_vox, n_chunks * chunk)
    part = np.ascontiguousarray(data[:, :subset])
    t0 = time.perf_counter()
    reference = fit_run_glm(part, events, T_R, GLMOptions(engine="nilearn"), confounds=confounds, chunk_size=chunk)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast_part = fit_run_glm(part, events, T_R, GLMOptions(), confounds=confounds, chunk_size=chunk)
    t_fast_part = time.perf_counter() - t0
    diff = relative_diff(fast.betas[:, :subset], reference.betas)
    print(f"LSA AR(1): {n_vox} voxels x {int(fast.sample_mask.sum())} volumes, {fast.design.shape[1]} regressors, "
          f"chunk {chunk}; nilearn on {subset} voxels ({t_ref:.1f} s), x {n_vox / subset:.2f} to all voxels")
    report(f"LSA same {subset} voxels", t_fast_part, t_ref, relative_diff(fast_part.betas, reference.betas), None,
           failures, check, TOL)
    report("LSA all voxels (nilearn extrapol.)", t_fast, t_ref * n_vox / subset, diff, LSA_TARGET, failures, check,
           TOL)
    flag = ""
    if check and peak > MEMORY_LIMIT_GB:
        flag = "  ABOVE TARGET"
        failures.append(f"LSA peak RSS {peak:.2f} GB > {MEMORY_LIMIT_GB} GB")
    print(f"  fast engine: {t_fast:.1f} s, peak RSS during the fit {peak:.2f} GB (series {data.nbytes / 2**30:.2f} GB "
          f"and residuals {fast.residuals.nbytes / 2**30:.2f} GB included), target <= {MEMORY_LIMIT_GB} GB{flag}")


def bench_lss(data: np.ndarray, events: pd.DataFrame, confounds: pd.DataFrame, n_trials_ref: int, chunk: int,
              failures: list[str], check: bool) -> None:
    from nilearn.glm.first_level import run_glm

    from bids_dnn.brain.glm import GLM_ENGINES

    design, rows = lss_models(events, confounds, data.shape[0])
    n_vox = data.shape[1]
    voxels = np.arange(n_vox)
    reset_peak_rss()
    t0 = time.perf_counter()
    fast = GLM_ENGINES["fast"].fit_lss(data, design, "ar1", rows=rows, voxels=voxels, chunk_size=chunk)
    t_fast = time.perf_counter() - t0
    peak = peak_rss_gb()[0]
    subset = min(n_vox, chunk)
    Y = np.asarray(data[np.ix_(rows, np.arange(subset))], dtype=np.float64)
    trials = np.linspace(0, design.n_trials - 1, min(n_trials_ref, design.n_trials)).round().astype(int)
    reference = np.empty((len(trials), subset))
    t0 = time.perf_counter()
    for k, i in enumerate(trials):  # nilearn's loop: one run_glm per trial model (and chunk)
        labels, results = run_glm(Y, design.trial_design(i), noise_model="ar1")
        for key, result in results.items():
            reference[k, labels == key] = result.theta[0]
    t_ref = time.perf_counter() - t0
    scale = design.n_trials / len(trials) * n_vox / subset
    diff = relative_diff(fast[trials, :subset], reference)
    print(f"LSS AR(1): {design.n_trials} trials ({design.n_conditions} stimuli), {n_vox} voxels; nilearn's per-trial "
          f"loop for {len(trials)} trials on {subset} voxels ({t_ref:.1f} s), x {scale:.1f} to all trials and voxels")
    report("LSS all trials, voxels (extrapol.)", t_fast, t_ref * scale, diff, LSS_TARGET, failures, check, TOL)
    print(f"  fast engine: {t_fast:.1f} s ({t_fast / design.n_trials:.2f} s per trial), peak RSS {peak:.2f} GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small run, agreement only")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--voxels", type=int, default=None, help="default: the 222 893-voxel brain mask")
    parser.add_argument("--volumes", type=int, default=1000)
    parser.add_argument("--nilearn-chunks", type=int, default=3, help="LSA: chunks fitted by nilearn")
    parser.add_argument("--nilearn-trials", type=int, default=3, help="LSS: trials fitted by nilearn (one chunk)")
    parser.add_argument("--part", choices=("lsa", "lss", "both"), default="both")
    args = parser.parse_args(argv)
    from bids_dnn.brain.glm import chunk_size_for_budget

    n_vox = args.voxels or int(ellipsoid_mask((97, 115, 97), fill=0.74).sum())
    n_time = args.volumes
    if args.smoke:
        n_vox, n_time = 1500, 160
    chunk = chunk_size_for_budget(n_time - 1) if not args.smoke else 600
    failures: list[str] = []
    check = not args.smoke
    confounds = confounds_table(n_time, args.seed + 1)
    t0 = time.perf_counter()
    lsa_events = events_table(8 if args.smoke else 100, 2, n_time, args.seed)
    lss_events = events_table(6 if args.smoke else 50, 2, n_time, args.seed + 3)
    data = synthetic_run(n_vox, n_time, lsa_events, args.seed + 2)
    print(f"GLM speed: {n_vox} voxels x {n_time} volumes (float32, {data.nbytes / 2**30:.2f} GB) built in "
          f"{time.perf_counter() - t0:.1f} s\n")
    if args.part in ("lsa", "both"):
        bench_lsa(data, lsa_events, confounds, 3 if args.smoke else args.nilearn_chunks, chunk, failures, check)
    if args.part in ("lss", "both"):
        bench_lss(data, lss_events, confounds, 12 if args.smoke else args.nilearn_trials, chunk, failures, check)
    return finish(failures, args.smoke, "the speed and memory targets")


if __name__ == "__main__":
    sys.exit(main())
