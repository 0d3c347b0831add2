"""End-to-end participant level at real size (issue #23, B16): wall time and peak memory per stage.

Input (written to ``--workdir``, a temporary folder by default, deleted afterwards): a synthetic
BIDS dataset of one participant with fMRIPrep-style derivatives on the 2 mm MNI grid
(97 x 115 x 97, an ellipsoid brain mask of ~220k voxels), 4 runs x 300 volumes (TR 2 s, float32,
uncompressed ``.nii`` written volume by volume; the raw ``_bold.nii`` is a hard link to it),
100 distinct procedurally drawn stimuli (:func:`bids_dnn.workflows.demo.draw_stimulus`), each
shown once per run in random order, fMRIPrep-style confounds
(:func:`bench_glm_memory.confounds_table`) and an atlas of three spherical ROIs. BOLD = baseline
+ HRF-convolved responses (low-rank random patterns inside the ROIs) + AR(1) noise.

The spec: a seeded random-init AlexNet (3 layers), ROI RSA, a whole-brain searchlight (radius
6 mm) and voxelwise encoding. ``bids_dnn BIDS OUT participant --nprocs 2`` runs as a child
process while a thread samples the resident memory of its process tree (every 0.2 s).

Stage boundaries come from what the run writes: the dataset-level stimulus table (setup done),
the model folder (features and model RDMs done), the run's ``log/<run_id>/spec.json``
(:func:`bids_dnn.workflows.provenance.write_provenance`, written right after the GLMs and ROI
masks), and the modification times of each stage's outputs listed in the participant's status
file (``brain``, ``rsa:<model>``, ``searchlight:<model>``, ``encoding``, ``report``); ``finish``
is the rest up to the child's exit. Peak memory per stage is the largest sampled RSS in its time
span; the overall peak is ``ru_maxrss`` of ``resource.getrusage(RUSAGE_CHILDREN)``.

Target (full size): <= 10 minutes and <= 8 GB peak on 2 CPU cores.

Usage::

    python benchmarks/bench_participant.py          # full size (~5 GB on disk, minutes)
    python benchmarks/bench_participant.py --smoke  # tiny grid, 2 runs x 40 volumes, 10 stimuli

Exit status 1 when the run fails or (full size) a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_glm_memory import confounds_table, ellipsoid_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK = "bench"
SPACE = "MNI152NLin2009cAsym"
T_R = 2.0
MODEL = "alexnet"
LAYERS = ["features.2", "features.5", "classifier.4"]
CATEGORIES = ("disc", "grating", "checker", "texture")
ROI_NAMES = ("early", "late", "control")
TARGET_SECONDS = 600.0
TARGET_GB = 8.0
#: semi-axes of the ellipsoid brain mask as a fraction of the half-extents (~220k voxels on the 2 mm grid)
BRAIN_FILL = 0.74
SPEC = """\
schema_version: 1
models:
  - name: {model}
    weights: random
    init_seed: 0
    layers: [{layers}]
rois:
  atlas: derivatives/rois/space-{space}_atlas-bench_dseg.nii.gz
analyses:
  rsa: {{comparison: spearman, permutations: 1000}}
  searchlight: {{enabled: true, radius_mm: 6, comparison: spearman, min_voxels: 10}}
  encoding: {{enabled: true, cv: kfold, n_folds: 5, inner_folds: 5}}
statistics:
  seed: 42
"""


@dataclass(frozen=True)
class Size:
    """The dataset size of one benchmark run."""

    shape: tuple[int, int, int]
    n_runs: int
    n_volumes: int
    n_stimuli: int
    roi_radius_vox: float
    image_size: int


FULL = Size((97, 115, 97), 4, 300, 100, 5.0, 96)
SMOKE = Size((20, 24, 20), 2, 40, 10, 2.5, 64)


# ---------------------------------------------------------------------------------------
# The synthetic dataset
# ---------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_stimuli(folder: Path, n_stimuli: int, image_size: int, rng: np.random.Generator) -> list[str]:
    """``n_stimuli`` distinct PNGs cycling through the demo's categories; returns their file names."""
    from PIL import Image

    from bids_dnn.workflows.demo import draw_stimulus

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(n_stimuli):
        category = CATEGORIES[index % len(CATEGORIES)]
        array = (draw_stimulus(category, index, rng, size=image_size) * 255).round().astype(np.uint8)
        names.append(f"{category}{index:03d}.png")
        Image.fromarray(array, mode="RGB").save(folder / names[-1])
    return names


def roi_labels(brain: np.ndarray, radius_vox: float) -> np.ndarray:
    """Three spherical ROIs inside the brain (labels 1..3 in :data:`ROI_NAMES` order), shape of ``brain``."""
    shape = np.array(brain.shape)
    grid = np.indices(brain.shape).astype(float)
    labels = np.zeros(brain.shape, dtype=np.int16)
    for label, fraction in enumerate(((0.5, 0.3, 0.45), (0.35, 0.6, 0.55), (0.65, 0.6, 0.4)), start=1):
        centre = (shape - 1) * np.array(fraction)
        dist = np.sqrt(sum((grid[i] - centre[i]) ** 2 for i in range(3)))
        labels[(dist <= radius_vox) & brain] = label
    return labels


def run_events(names: list[str], n_volumes: int, rng: np.random.Generator):
    """Each stimulus once, in random order, spread evenly over the run (1 s, jittered onsets)."""
    import pandas as pd

    order = rng.permutation(len(names))
    span = (n_volumes * T_R - 20.0 - 6.0) / len(names)
    onsets = 6.0 + np.arange(len(names)) * span + rng.uniform(0, 0.3 * span, len(names))
    return pd.DataFrame({"onset": np.round(onsets, 2), "duration": 1.0,
                         "trial_type": [CATEGORIES[i % len(CATEGORIES)] for i in order],
                         "stim_file": [names[i] for i in order]})


def write_bold(path: Path, design: np.ndarray, patterns: np.ndarray, brain: np.ndarray, affine: np.ndarray,
               rng: np.random.Generator) -> None:
    """BOLD (baseline + design @ patterns + AR(1) noise) as float32 ``.nii``, written volume by volume.

    Parameters
    ----------
    design : numpy.ndarray, shape (n_volumes, n_stimuli)
        HRF-convolved stimulus regressors.
    patterns : numpy.ndarray, shape (n_stimuli, n_brain_voxels)
        Planted responses (percent signal change).
    brain : numpy.ndarray of bool, shape (x, y, z)
    """
    import nibabel as nib

    n_volumes, n_voxels = design.shape[0], patterns.shape[1]
    header = nib.Nifti1Header()
    header.set_data_shape((*brain.shape, n_volumes))
    header.set_data_dtype(np.float32)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    header["pixdim"][4] = T_R
    header.set_slope_inter(1.0, 0.0)
    baseline = np.float32(600.0) + np.float32(50.0) * rng.random(n_voxels, dtype=np.float32)
    noise = rng.standard_normal(n_voxels, dtype=np.float32)
    volume = np.zeros(brain.shape, dtype=np.float32, order="F")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\x00" * (int(header["vox_offset"]) - f.tell()))
        for t in range(n_volumes):
            noise = np.float32(0.3) * noise + rng.standard_normal(n_voxels, dtype=np.float32)
            percent = design[t] @ patterns + noise
            volume[brain] = baseline * (1 + percent / np.float32(100.0))
            f.write(volume.tobytes(order="F"))


def make_dataset(directory: Path, size: Size, seed: int) -> Path:
    """Write the raw dataset, fMRIPrep-style derivatives, the ROI atlas and ``code/spec.yaml``."""
    import nibabel as nib
    from nilearn.glm.first_level import make_first_level_design_matrix

    rng = np.random.default_rng(seed)
    names = write_stimuli(directory / "stimuli", size.n_stimuli, size.image_size, rng)
    _write_json(directory / "dataset_description.json", {
        "Name": "bids_dnn participant benchmark (simulated)", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    _write_json(directory / f"task-{TASK}_bold.json", {"TaskName": TASK, "RepetitionTime": T_R})
    (directory / "participants.tsv").write_text("participant_id\nsub-01\n")
    (directory / ".bidsignore").write_text("code/\n")
    fmriprep = directory / "derivatives" / "fmriprep"
    _write_json(fmriprep / "dataset_description.json", {
        "Name": "fMRIPrep-style outputs (simulated)", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "simulated"}]})

    brain = ellipsoid_mask(size.shape, fill=BRAIN_FILL)
    affine = np.array([[2.0, 0, 0, -96], [0, 2.0, 0, -132], [0, 0, 2.0, -78], [0, 0, 0, 1]])
    labels = roi_labels(brain, size.roi_radius_vox)
    rois = directory / "derivatives" / "rois"
    rois.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, affine), rois / f"space-{SPACE}_atlas-bench_dseg.nii.gz")
    (rois / f"space-{SPACE}_atlas-bench_dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in enumerate(ROI_NAMES, start=1)))
    _write_json(rois / "dataset_description.json", {
        "Name": "benchmark ROI atlas", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bench_participant"}]})

    in_roi = np.isin(labels[brain], [1, 2])  # signal ROIs; 'control' and the rest: noise only
    patterns = np.zeros((size.n_stimuli, int(brain.sum())), dtype=np.float32)
    scores = rng.standard_normal((size.n_stimuli, 8))
    patterns[:, in_roi] = 3.0 * (scores @ rng.standard_normal((8, int(in_roi.sum())))) / np.sqrt(8)
    frame_times = np.arange(size.n_volumes) * T_R
    func = fmriprep / "sub-01" / "func"
    for run in range(1, size.n_runs + 1):
        stem = f"sub-01_task-{TASK}_run-{run}"
        events = run_events(names, size.n_volumes, rng)
        raw_func = directory / "sub-01" / "func"
        raw_func.mkdir(parents=True, exist_ok=True)
        events.to_csv(raw_func / f"{stem}_events.tsv", sep="\t", index=False)
        design = make_first_level_design_matrix(
            frame_times, events.assign(trial_type=events["stim_file"])[["onset", "duration", "trial_type"]],
            hrf_model="spm", drift_model=None)
        design_array = design.loc[:, names].to_numpy(dtype=np.float32)
        bold = func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii"
        write_bold(bold, design_array, patterns, brain, affine, rng)
        os.link(bold, raw_func / f"{stem}_bold.nii")
        _write_json(func / f"{stem}_space-{SPACE}_desc-preproc_bold.json",
                    {"RepetitionTime": T_R, "SkullStripped": True, "TaskName": TASK})
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
        confounds_table(size.n_volumes, seed + run).to_csv(
            func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    (directory / "code").mkdir(exist_ok=True)
    (directory / "code" / "spec.yaml").write_text(SPEC.format(model=MODEL, layers=", ".join(LAYERS), space=SPACE))
    return directory


# ---------------------------------------------------------------------------------------
# Measuring the run
# ---------------------------------------------------------------------------------------


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (0 once gone), from ``/proc``."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total


class MemorySampler(threading.Thread):
    """Samples (wall time, RSS of the process tree) of ``pid`` every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.time(), tree_rss_bytes(self.pid)))
            self.stopped.wait(self.interval)


def _mtime(path: Path) -> float:
    return path.stat().st_mtime_ns / 1e9


def stage_ends(out: Path) -> list[tuple[str, float]]:
    """(stage, wall-clock end) in run order, from the files the run wrote (see the module docstring)."""
    status = json.loads((out / "sub-01" / "log" / f"task-{TASK}_status.json").read_text())
    (spec_json,) = (out / "sub-01" / "log").glob("*/spec.json")
    ends = [("setup (imports, BIDS index, stimuli)", _mtime(next(out.glob(f"task-{TASK}_stimuli.json")))),
            ("DNN features + model RDMs", max(_mtime(p) for p in out.glob(f"model-{MODEL}/*") if p.is_file())),
            ("GLMs + ROI masks", _mtime(spec_json))]
    for stage, label in (("brain", "ROI RDMs (brain)"), (f"rsa:{MODEL}", "ROI RSA"),
                         (f"searchlight:{MODEL}", "searchlight"), ("encoding", "encoding"), ("report", "report")):
        ends.append((label, max(_mtime(out / name) for name in status["stages"][stage]["outputs"])))
    return ends


def stage_table(start: float, end: float, ends: list[tuple[str, float]],
                samples: list[tuple[float, int]]) -> list[dict]:
    """Per stage: seconds and the peak sampled RSS (GiB) within its span (the nearest sample when none)."""
    rows, previous = [], start
    times = np.array([t for t, _ in samples])
    rss = np.array([r for _, r in samples], dtype=float)
    for label, stop in [*ends, ("finish (status, provenance, exit)", end)]:
        inside = (times >= previous) & (times <= stop)
        if not inside.any():
            inside = np.abs(times - (previous + stop) / 2) == np.abs(times - (previous + stop) / 2).min()
        rows.append({"stage": label, "seconds": stop - previous, "peak_rss_gb": float(rss[inside].max()) / 2**30})
        previous = stop
    return rows


def run_participant(dataset: Path, out: Path, nprocs: int) -> dict:
    """``bids_dnn dataset out participant`` in a child process; timings and memory."""
    command = [sys.executable, "-m", "bids_dnn", str(dataset), str(out), "participant", "--participant-label", "01",
               "--spec", str(dataset / "code" / "spec.yaml"), "--nprocs", str(nprocs), "--no-progress",
               "--skip-bids-validation"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    log, _ = proc.communicate()
    end = time.time()
    sampler.stopped.set()
    sampler.join()
    scale = 1 if sys.platform == "darwin" else 1024
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**30
    if proc.returncode != 0:
        return {"returncode": proc.returncode, "log": log}
    rows = stage_table(start, end, stage_ends(out), sampler.samples)
    return {"returncode": 0, "log": log, "seconds": end - start, "ru_maxrss_gb": peak,
            "sampled_peak_gb": max(r for _, r in sampler.samples) / 2**30, "stages": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny grid, 2 runs x 40 volumes, 10 stimuli")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the dataset and outputs (default: a temporary folder); deleted afterwards")
    parser.add_argument("--nprocs", type=int, default=2, help="--nprocs of the run (the target is for 2)")
    parser.add_argument("--seed", type=int, default=20261207)
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench_participant_")) if own_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    dataset, out = workdir / "bids", workdir / "out"
    failures: list[str] = []
    try:
        t0 = time.perf_counter()
        make_dataset(dataset, size, args.seed)
        n_voxels = int(ellipsoid_mask(size.shape, fill=BRAIN_FILL).sum())
        print(f"participant level end to end: grid {size.shape} ({n_voxels} brain voxels), {size.n_runs} runs x "
              f"{size.n_volumes} volumes, {size.n_stimuli} stimuli, alexnet ({len(LAYERS)} layers), ROI RSA, "
              f"searchlight 6 mm, encoding; --nprocs {args.nprocs}; dataset written in "
              f"{time.perf_counter() - t0:.1f} s; load before the run: {os.getloadavg()[0]:.2f}")
        info = run_participant(dataset, out, args.nprocs)
        if info["returncode"] != 0:
            print(info["log"][-4000:])
            failures.append(f"bids_dnn participant exited with {info['returncode']}")
        else:
            print("\n| stage | wall time (s) | peak RSS (GB, sampled) |\n|---|---:|---:|")
            for row in info["stages"]:
                print(f"| {row['stage']} | {row['seconds']:.1f} | {row['peak_rss_gb']:.2f} |")
            print(f"| **total** | **{info['seconds']:.1f}** | **{info['ru_maxrss_gb']:.2f}** (ru_maxrss) |")
            if not args.smoke:
                if info["seconds"] > TARGET_SECONDS:
                    failures.append(f"wall time {info['seconds']:.0f} s > {TARGET_SECONDS:.0f} s")
                if info["ru_maxrss_gb"] > TARGET_GB:
                    failures.append(f"peak RSS {info['ru_maxrss_gb']:.2f} GB > {TARGET_GB:g} GB")
            print(f"load after the run: {os.getloadavg()[0]:.2f}")
            print(json.dumps({k: v for k, v in info.items() if k != "log"}))
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(dataset, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nrun completed" + ("" if args.smoke else
                               f"; targets met (<= {TARGET_SECONDS / 60:g} min, <= {TARGET_GB:g} GB)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
