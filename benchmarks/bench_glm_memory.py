"""GLM memory at real size (issue #3): one 2 mm whole-brain run of 1000 volumes.

Input (written to ``--workdir``, a temporary folder by default, deleted afterwards): a
synthetic MNI 2 mm run, grid 97 x 115 x 97, an ellipsoid brain mask of ~230k voxels, 1000
volumes of float32 in an uncompressed ``.nii`` (~4.3 GB, written volume by volume: the 4D
array is never in memory), events of 100 stimuli shown twice (``stim_file``, ``trial_type``)
and an fMRIPrep-style confounds TSV (motion with derivatives and squares, white matter, CSF,
global signal, framewise displacement, DVARS, aCompCor, cosine basis, one non-steady-state
outlier). The voxel time series are baseline + the planted stimulus responses (HRF-convolved
design times random betas) + AR(1) noise.

Measured, in a fresh child process (so nothing of the writer counts): exactly the
participant-level path of one run, ``bids_dnn.brain.images.masked_timeseries`` on the brain mask,
then ``bids_dnn.brain.glm.fit_run_glm`` with the default ``GLMOptions`` (the spec's defaults, engine fast:
confounds on: motion_6, white_matter, csf; AR(1); cosine drift). Peak resident memory of the
child (VmHWM, and ``ru_maxrss`` from ``resource.getrusage``), wall times, and the size of the
run's residuals, which the participant keeps per run for noise normalisation.

Gates: the recovered betas correlate with the planted ones (r >= 0.9; the smoke size too),
and, in the full run, peak RSS <= ``--memory-limit-gb`` (4 GB).

Usage::

    python benchmarks/bench_glm_memory.py          # full size (~4.3 GB on disk, minutes)
    python benchmarks/bench_glm_memory.py --smoke  # tiny grid, seconds

Exit status 1 when a gate fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECOVERY_MIN_R = 0.9
SUBJECT_RUN = "sub-01_task-bench_run-1"


def peak_rss_gb() -> tuple[float, float]:
    """Peak resident memory of this process: (VmHWM, ru_maxrss) in GiB (VmHWM NaN off Linux)."""
    import resource

    hwm = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def ellipsoid_mask(shape: tuple[int, int, int], fill: float) -> np.ndarray:
    """An ellipsoid centred in the grid with semi-axes ``fill`` x the half-extents."""
    axes = [np.linspace(-1, 1, n) / fill for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return x**2 + y**2 + z**2 <= 1.0


def write_events(path: Path, n_stim: int, repeats: int, n_time: int, t_r: float, seed: int):
    """Events: ``n_stim`` stimuli x ``repeats`` in random order, evenly spread over the run."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_stim) for _ in range(repeats)])
    span = (n_time - 10) * t_r
    onsets = 6.0 + np.arange(order.size) * (span - 6.0) / order.size
    events = pd.DataFrame({"onset": np.round(onsets, 2), "duration": 1.0,
                           "trial_type": [f"cat{s % 4}" for s in order],
                           "stim_file": [f"images/stim{s:03d}.png" for s in order]})
    events.to_csv(path, sep="\t", index=False)
    return events


def confounds_table(n_time: int, seed: int):
    """fMRIPrep-style confounds (the usual columns; first-row n/a of derivative columns)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for name in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"):
        base = np.cumsum(rng.normal(0, 0.02, n_time))
        deriv = np.r_[np.nan, np.diff(base)]
        cols[name], cols[f"{name}_derivative1"] = base, deriv
        cols[f"{name}_power2"], cols[f"{name}_derivative1_power2"] = base**2, deriv**2
    for name in ("global_signal", "csf", "white_matter"):
        cols[name] = 1000 + np.cumsum(rng.normal(0, 1, n_time))
    fd = np.abs(rng.normal(0.1, 0.05, n_time))
    fd[0] = np.nan
    cols["framewise_displacement"] = fd
    cols["dvars"] = np.r_[np.nan, np.abs(rng.normal(20, 3, n_time - 1))]
    cols["std_dvars"] = np.r_[np.nan, np.abs(rng.normal(1, 0.1, n_time - 1))]
    for i in range(6):
        cols[f"a_comp_cor_{i:02d}"] = rng.normal(0, 0.05, n_time)
    t = np.arange(n_time)
    for k in range(1, 9):
        cols[f"cosine{k - 1:02d}"] = np.sqrt(2.0 / n_time) * np.cos(np.pi * (2 * t + 1) * k / (2 * n_time))
    outlier = np.zeros(n_time)
    outlier[0] = 1.0
    cols["non_steady_state_outlier00"] = outlier
    return pd.DataFrame(cols)


def write_run(workdir: Path, shape: tuple[int, int, int], n_time: int, n_stim: int, t_r: float,
              seed: int) -> dict:
    """Write BOLD (volume by volume), brain mask, events and confounds; return the file names."""
    import nibabel as nib
    from nilearn.glm.first_level import make_first_level_design_matrix

    mask = ellipsoid_mask(shape, fill=0.74)  # ~230k voxels on the 2 mm grid
    affine = np.array([[-2.0, 0, 0, 96], [0, 2.0, 0, -132], [0, 0, 2.0, -78], [0, 0, 0, 1]])
    mask_path = workdir / f"{SUBJECT_RUN}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_path)
    events_path = workdir / f"{SUBJECT_RUN}_events.tsv"
    events = write_events(events_path, n_stim, 2, n_time, t_r, seed)
    confounds_path = workdir / f"{SUBJECT_RUN}_desc-confounds_timeseries.tsv"
    confounds_table(n_time, seed + 1).to_csv(confounds_path, sep="\t", index=False, na_rep="n/a")

    stim_ids = sorted(set(events["stim_file"]))
    design = make_first_level_design_matrix(
        np.arange(n_time) * t_r, events.assign(trial_type=events["stim_file"]).loc[:, ["onset", "duration", "trial_type"]],
        hrf_model="spm", drift_model=None)
    X = design.loc[:, stim_ids].to_numpy(dtype=np.float32)  # (n_time, n_stim), columns in sorted order
    rng = np.random.default_rng(seed + 2)
    n_vox = int(mask.sum())
    planted = rng.standard_normal((n_stim, n_vox), dtype=np.float32) * np.float32(10.0)
    np.save(workdir / "planted_betas.npy", planted)
    baseline = np.float32(800.0) + np.float32(100.0) * rng.random(n_vox, dtype=np.float32)

    header = nib.Nifti1Header()
    header.set_data_shape((*shape, n_time))
    header.set_data_dtype(np.float32)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    header["pixdim"][4] = t_r
    header.set_slope_inter(1.0, 0.0)
    bold_path = workdir / f"{SUBJECT_RUN}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii"
    noise = rng.standard_normal(n_vox, dtype=np.float32)
    volume = np.zeros(shape, dtype=np.float32, order="F")
    with open(bold_path, "wb") as f:
        header.write_to(f)
        f.write(b"\x00" * (int(header["vox_offset"]) - f.tell()))
        for t in range(n_time):
            noise = np.float32(0.3) * noise + rng.standard_normal(n_vox, dtype=np.float32)  # AR(1), rho 0.3
            volume[mask] = baseline + X[t] @ planted + noise
            f.write(volume.tobytes(order="F"))
    return {"bold": str(bold_path), "mask": str(mask_path), "events": str(events_path),
            "confounds": str(confounds_path), "planted": str(workdir / "planted_betas.npy"),
            "t_r": t_r, "stim_ids": stim_ids, "bold_gb": bold_path.stat().st_size / 2**30}


def child(files_json: str, code_root: str) -> None:
    """The measured part: the participant-level path of one run, in a fresh process."""
    sys.path.insert(0, code_root)
    import pandas as pd

    from bids_dnn.brain.glm import GLMOptions, fit_run_glm
    from bids_dnn.brain.images import load_nifti, masked_timeseries
    from bids_dnn.io.stimuli import read_events

    files = json.loads(Path(files_json).read_text())
    t0 = time.perf_counter()
    mask = np.asarray(load_nifti(files["mask"], "brain mask").dataobj) > 0
    data = masked_timeseries(files["bold"], mask, Path(files["bold"]).name)
    t_read = time.perf_counter() - t0
    after_read = peak_rss_gb()
    events = read_events(Path(files["events"]))
    events["condition"] = events["stim_file"]
    confounds = pd.read_csv(files["confounds"], sep="\t", na_values=["n/a"])
    t1 = time.perf_counter()
    result = fit_run_glm(data, events, files["t_r"], GLMOptions(), confounds=confounds,
                         source=Path(files["confounds"]).name)
    t_glm = time.perf_counter() - t1
    peak = peak_rss_gb()
    planted = np.load(files["planted"])
    rows = [result.conditions.index(s) for s in files["stim_ids"]]
    est = result.betas[rows]
    ok = np.isfinite(est)
    recovery = float(np.corrcoef(est[ok], planted[ok])[0, 1])
    print(json.dumps({
        "peak_rss_gb": peak[0], "ru_maxrss_gb": peak[1], "peak_after_read_gb": after_read[0],
        "seconds_read": t_read, "seconds_glm": t_glm, "n_time": int(data.shape[0]), "n_voxels": int(data.shape[1]),
        "n_conditions": len(result.conditions), "n_regressors": int(result.design.shape[1]),
        "series_gb": data.nbytes / 2**30, "series_dtype": str(data.dtype),
        "residuals_gb": result.residuals.nbytes / 2**30, "residuals_dtype": str(result.residuals.dtype),
        "betas_gb": result.betas.nbytes / 2**30, "recovery_r": recovery,
        "n_warnings": len(result.warnings)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny grid, seconds")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the synthetic run (default: a temporary folder); deleted afterwards")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--volumes", type=int, default=1000)
    parser.add_argument("--stimuli", type=int, default=100)
    parser.add_argument("--memory-limit-gb", type=float, default=4.0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--code-root", default=str(ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.code_root)
        return 0
    shape = (97, 115, 97)
    if args.smoke:
        shape, args.volumes, args.stimuli = (14, 16, 14), 120, 8
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench_glm_memory_")) if own_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    try:
        t0 = time.perf_counter()
        files = write_run(workdir, shape, args.volumes, args.stimuli, 2.0, args.seed)
        t_write = time.perf_counter() - t0
        files_json = workdir / "files.json"
        files_json.write_text(json.dumps(files))
        print(f"GLM memory: grid {shape}, {args.volumes} volumes, {args.stimuli} stimuli x 2; "
              f"BOLD {files['bold_gb']:.2f} GB written in {t_write:.1f} s")
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(files_json),
                               "--code-root", args.code_root], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            failures.append("child failed")
        else:
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            flag = ""
            if not args.smoke and info["peak_rss_gb"] > args.memory_limit_gb:
                flag = "  ABOVE TARGET"
                failures.append(f"peak RSS {info['peak_rss_gb']:.2f} GB > {args.memory_limit_gb} GB")
            if not info["recovery_r"] >= RECOVERY_MIN_R:
                failures.append(f"planted betas recovered with r {info['recovery_r']:.3f} < {RECOVERY_MIN_R}")
                flag += "  DISAGREES"
            print(f"  {info['n_voxels']} voxels x {info['n_time']} volumes, {info['n_regressors']} regressors; "
                  f"series {info['series_gb']:.2f} GB ({info['series_dtype']}), residuals kept per run "
                  f"{info['residuals_gb']:.2f} GB ({info['residuals_dtype']}), betas {info['betas_gb']:.2f} GB")
            print(f"  peak RSS {info['peak_rss_gb']:.2f} GB (ru_maxrss {info['ru_maxrss_gb']:.2f} GB; "
                  f"{info['peak_after_read_gb']:.2f} GB after reading), target <= {args.memory_limit_gb} GB; "
                  f"read {info['seconds_read']:.1f} s, GLM {info['seconds_glm']:.1f} s; "
                  f"planted betas recovered r = {info['recovery_r']:.4f}{flag}")
            print("  " + json.dumps(info))
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # a folder given by the user: remove what was written into it
            for path in workdir.glob(f"{SUBJECT_RUN}_*"):
                path.unlink()
            for name in ("planted_betas.npy", "files.json"):
                (workdir / name).unlink(missing_ok=True)
    return finish(failures, args.smoke, "the memory target")


if __name__ == "__main__":
    sys.exit(main())
