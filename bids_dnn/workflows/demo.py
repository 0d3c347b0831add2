"""A synthetic BIDS dataset with planted ground truth (``bids_dnn demo DIR``).

What is planted (also written to the dataset's README):

- 24 procedurally drawn stimuli in 4 categories (discs, gratings, checkerboards, noise
  textures), varying in colour, size, orientation and spatial frequency. No external images.
- A seeded random-init AlexNet (torchvision, ``init_seed`` 0) is the "true" model. Its
  activations are extracted with the same code the pipeline uses.
- Three ROIs in an atlas: ``early`` follows layer ``features.2`` (first pooling stage),
  ``late`` follows layer ``classifier.4`` (second fully connected layer), ``control`` carries
  no stimulus signal. Outside the ROIs there is only noise.
- Voxel responses in a signal ROI are random combinations of the first
  :data:`SIGNAL_DIMENSIONS` (8) principal components of the row-standardised layer
  activations (:func:`true_patterns`), so that squared Euclidean distances between true
  response patterns follow the layer's correlation-distance RDM (``2 * (1 - r)``; Spearman
  0.95 with the full RDM of ``features.2``, 1.0 for ``classifier.4``). A random projection of
  *all* units (the earlier design) gives the same RDM but cannot be learnt by an encoding
  model from 20 training stimuli: the optimal (Gaussian-process) prediction of such a
  response from the other stimuli explains only ~18 % of its variance for ``features.2``
  even without noise, ~6 % with the raw (not row-standardised) features that encoding
  uses, and the layers become indistinguishable. Eight dimensions are learnable (~40 %
  without noise) and still tell ``features.2`` from ``features.5``.
- BOLD = baseline + HRF-convolved (SPM HRF) responses to each event + slow cosine drift +
  motion-like confounds (random walks, written to the fMRIPrep confounds file) + AR(1) noise.

This module is not imported by the pipeline.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_dnn.errors import UsageError

TASK = "shapes"
SPACE = "MNI152NLin2009cAsym"
CATEGORIES = ("disc", "grating", "checker", "texture")
N_PER_CATEGORY = 6
IMAGE_SIZE = 128
T_R = 2.0
SHAPE = (18, 22, 18)
VOXEL_MM = 4.0
PLANTED = {"early": "features.2", "late": "classifier.4", "control": None}
ROI_CENTRES = {"early": (9, 3, 8), "late": (5, 9, 5), "control": (9, 18, 11)}
ROI_RADIUS_VOX = 2.6
DEMO_LAYERS = ["features.2", "features.5", "features.12", "classifier.1", "classifier.4"]
SIGNAL_PSC = 6.0
#: principal components of a planted layer that the signal ROIs' responses carry
SIGNAL_DIMENSIONS = 8
NOISE_SD_PSC = 1.0
AR1_RHO = 0.3
BASELINE = 600.0
#: participants of ``bids_dnn demo`` by default: 2^6 = 64 sign flips, so a group map's smallest
#: p_FWE is 1/64 < 0.05 (4 participants: 1/16, never significant)
DEMO_SUBJECTS = 6


# ---------------------------------------------------------------------------------------
# Stimuli
# ---------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.1, 1.0, size=3)


def draw_stimulus(category: str, index: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One RGB image (size, size, 3) in [0, 1] of the given category."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    background = np.full((size, size, 3), 0.5)
    fg = _colour(rng)
    if category == "disc":
        radius = rng.uniform(0.12, 0.42)
        cx, cy = rng.uniform(-0.15, 0.15, size=2)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < radius**2
        image = np.where(inside[..., None], fg, background)
    elif category == "grating":
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(2, 10)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)))
        image = wave[..., None] * fg + (1 - wave[..., None]) * (1 - fg)
    elif category == "checker":
        n_checks = int(rng.integers(2, 9))
        board = ((np.floor((x + 0.5) * n_checks) + np.floor((y + 0.5) * n_checks)) % 2).astype(float)
        image = board[..., None] * fg + (1 - board[..., None]) * _colour(rng)
    elif category == "texture":
        scale = int(rng.integers(2, 16))
        coarse = rng.random((scale, scale))
        reps = int(np.ceil(size / scale))
        noise = np.kron(coarse, np.ones((reps, reps)))[:size, :size]
        image = noise[..., None] * fg + (1 - noise[..., None]) * 0.2
    else:
        raise ValueError(f"unknown category {category}")
    return np.clip(image, 0, 1)


def write_stimuli(folder: Path, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Write the stimulus PNGs; returns (file under stimuli/, category) pairs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for category in CATEGORIES:
        for index in range(N_PER_CATEGORY):
            array = (draw_stimulus(category, index, rng) * 255).round().astype(np.uint8)
            name = f"{category}{index + 1:02d}.png"
            Image.fromarray(array, mode="RGB").save(folder / name, optimize=False)
            out.append((name, category))
    return out


# ---------------------------------------------------------------------------------------
# Brain
# ---------------------------------------------------------------------------------------


def _affine() -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -np.array(SHAPE) * VOXEL_MM / 2
    return affine


def _brain_mask() -> np.ndarray:
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    radii = np.array(SHAPE) / 2 - 0.5
    dist = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return dist <= 1.0


def _roi_masks(brain: np.ndarray) -> dict[str, np.ndarray]:
    grid = np.indices(SHAPE).astype(float)
    masks = {}
    for name, centre in ROI_CENTRES.items():
        dist = np.sqrt(sum((grid[i] - centre[i]) ** 2 for i in range(3)))
        masks[name] = (dist <= ROI_RADIUS_VOX) & brain
    return masks


def planted_layer_features(stim_paths: list[Path], layers: list[str], init_seed: int = 0) -> dict[str, np.ndarray]:
    """Activations of the demo's random-init AlexNet, through the pipeline's own extractor."""
    from bids_dnn.dnn.extract import extract_features
    from bids_dnn.dnn.models import load_model
    from bids_dnn.spec import ModelSpec
    from bids_dnn.io.stimulus_loading import load_image

    loaded = load_model(ModelSpec(name="alexnet", weights="random", init_seed=init_seed, layers=layers))
    chunks: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}

    def keep(start: int, batch: dict[str, np.ndarray]) -> None:
        for layer, values in batch.items():
            chunks[layer].append(values)

    images = [load_image(p) for p in stim_paths]
    extract_features(loaded, images, layers, batch_size=8, device="cpu", on_batch=keep)
    return {layer: np.concatenate(parts, axis=0).astype(np.float64) for layer, parts in chunks.items()}


def true_patterns(features: np.ndarray, n_voxels: int, rng: np.random.Generator,
                  n_components: int | None = None) -> np.ndarray:
    """Voxel responses (n_stimuli, n_voxels): a random projection of the layer's top principal
    components (row-standardised activations).

    Each stimulus' activations are standardised (mean 0, SD 1 over units), so squared distances
    between them are ``2 * n_units * (1 - r)``: the layer's correlation-distance RDM. The
    standardised activations are centred over stimuli and reduced to their first
    ``n_components`` principal components (scores ``U_k S_k``, i.e. the rank-k approximation
    of that geometry); the voxels are random Gaussian combinations of those scores. A
    low-dimensional signal is what 24 stimuli can support: an encoding model trained on 20
    stimuli can learn a response that lives in a few dimensions, but not a random projection
    of all units (see the module docstring).

    Parameters
    ----------
    features : numpy.ndarray, shape (n_stimuli, n_units)
        Layer activations.
    n_voxels : int
        Voxels to simulate.
    rng : numpy.random.Generator
        Draws the projection weights.
    n_components : int, optional
        Principal components kept (default :data:`SIGNAL_DIMENSIONS`; at most n_stimuli - 1).

    Returns
    -------
    numpy.ndarray, shape (n_stimuli, n_voxels)
        Centred over stimuli, overall SD 1.
    """
    k = SIGNAL_DIMENSIONS if n_components is None else int(n_components)
    z = features - features.mean(axis=1, keepdims=True)
    z /= z.std(axis=1, keepdims=True) + 1e-12
    z -= z.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    k = min(k, z.shape[0] - 1)
    scores = u[:, :k] * s[:k]
    weights = rng.standard_normal((k, n_voxels))
    patterns = scores @ weights
    patterns -= patterns.mean(axis=0, keepdims=True)
    return patterns / patterns.std()


def _events_for_run(stimuli: list[tuple[str, str]], rng: np.random.Generator) -> pd.DataFrame:
    order = rng.permutation(len(stimuli))
    onsets, rows = 8.0, []
    for i in order:
        file, category = stimuli[i]
        rows.append({"onset": round(onsets, 2), "duration": 1.0, "trial_type": category, "stim_file": file})
        onsets += 1.0 + rng.uniform(3.0, 6.0)
    for _ in range(3):  # a few button presses: events that name no stimulus
        rows.append({"onset": round(rng.uniform(10, onsets - 5), 2), "duration": 0.0,
                     "trial_type": "response", "stim_file": None})
    table = pd.DataFrame(rows).sort_values("onset", kind="stable").reset_index(drop=True)
    return table


def _simulate_run(events: pd.DataFrame, stim_index: dict[str, int], patterns: np.ndarray,
                  n_vols: int, rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame]:
    """BOLD (n_vols, n_voxels) and its fMRIPrep-style confounds table."""
    from nilearn.glm.first_level import compute_regressor

    frame_times = np.arange(n_vols) * T_R
    n_voxels = patterns.shape[1]
    signal = np.zeros((n_vols, n_voxels))
    for _, event in events.iterrows():
        if not isinstance(event["stim_file"], str):
            continue
        regressor, _ = compute_regressor(np.array([[event["onset"]], [event["duration"]], [1.0]]), "spm", frame_times)
        signal += regressor[:, :1] * patterns[stim_index[event["stim_file"]]][None, :]
    return _bold_and_confounds(SIGNAL_PSC * signal, rng)


def _bold_and_confounds(signal_percent: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame]:
    """BOLD (n_vols, n_voxels) = baseline x (1 + (signal + motion + drift + AR(1) noise) / 100) and its
    fMRIPrep-style confounds table, from the signal in percent signal change (n_vols, n_voxels)."""
    n_vols, n_voxels = signal_percent.shape
    frame_times = np.arange(n_vols) * T_R
    motion = np.cumsum(rng.normal(0, 0.03, size=(n_vols, 6)), axis=0)
    motion -= motion[0]
    drift = np.cos(np.pi * np.outer(frame_times, [1, 2]) / frame_times[-1])
    noise = np.empty((n_vols, n_voxels))
    noise[0] = rng.standard_normal(n_voxels)
    innovations = rng.standard_normal((n_vols, n_voxels)) * np.sqrt(1 - AR1_RHO**2)
    for t in range(1, n_vols):
        noise[t] = AR1_RHO * noise[t - 1] + innovations[t]
    motion_loadings = rng.normal(0, 0.6, size=(6, n_voxels))
    drift_loadings = rng.normal(0, 0.8, size=(2, n_voxels))
    percent = signal_percent + motion @ motion_loadings + drift @ drift_loadings + NOISE_SD_PSC * noise
    bold = BASELINE * (1 + percent / 100)
    names = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    confounds = pd.DataFrame(motion, columns=names)
    for name in names:
        confounds[f"{name}_derivative1"] = confounds[name].diff()
    confounds["white_matter"] = 0.5 * drift[:, 0] + rng.normal(0, 0.05, n_vols)
    confounds["csf"] = 0.5 * drift[:, 1] + rng.normal(0, 0.05, n_vols)
    confounds["global_signal"] = bold.mean(axis=1)
    confounds["framewise_displacement"] = np.r_[np.nan, np.abs(np.diff(motion, axis=0)).sum(axis=1)]
    return bold, confounds


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_tsv(path: Path, table: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")


DEMO_SPEC = """\
# bids_dnn analysis spec for the demo dataset (see README.md for the planted truth)
schema_version: 1
models:
  - name: alexnet
    weights: random        # seeded random initialisation: no download needed
    init_seed: 0
    layers: [{layers}]
rois:
  atlas: derivatives/rois/space-{space}_atlas-planted_dseg.nii.gz
analyses:
  rsa: {{comparison: spearman, permutations: 1000}}
  weighted_rsa: {{enabled: true, cv: subjects}}
  variance_partitioning:
    enabled: true
    groups: {{early: ["alexnet:features.2"], late: ["alexnet:classifier.4"]}}
  searchlight: {{enabled: true, radius_mm: 8, comparison: spearman, min_voxels: 10}}
  encoding: {{enabled: true, cv: kfold, n_folds: 6, inner_folds: 5, alphas: "logspace(-4, 8, 25)"}}
statistics:
  bootstrap: 1000
  map_permutations: 1000
  seed: 42
"""


@dataclass(frozen=True)
class DemoKind:
    """What a demo dataset's stimuli are and what its responses follow (the BOLD simulation,
    ROIs, runs and fMRIPrep-style files are shared by every kind).

    Attributes
    ----------
    name : str
        ``bids_dnn demo --kind`` value.
    task : str
        Task label.
    description : str
        ``Name`` of the dataset description.
    planted : dict of str to str or None
        ROI -> the layer its responses follow (None: noise only).
    write_stimuli : callable
        ``(folder, rng) -> [(file under stimuli/, category), ...]``: writes the stimuli, in order.
    planted_features : callable
        ``(dataset, stimulus paths, layers) -> {layer: (n_stimuli, n_units)}``: the planted
        layers' features, extracted with the pipeline's own code.
    spec : str
        ``code/spec.yaml``.
    readme : callable
        ``(n_subjects, n_runs, seed, rois) -> str``: the dataset's README.
    prepare : callable
        ``(dataset) -> None``: writes what the stimuli and the spec need first (e.g. model folders).
    stimulus_description : str
        The events' ``stim_file`` description.
    """

    name: str
    task: str
    description: str
    planted: dict[str, str | None]
    write_stimuli: Callable[[Path, np.random.Generator], list[tuple[str, str]]]
    planted_features: Callable[[Path, list[Path], list[str]], dict[str, np.ndarray]]
    spec: str
    readme: Callable[[int, int, int, dict[str, np.ndarray]], str]
    prepare: Callable[[Path], None] = field(default=lambda directory: None)
    stimulus_description: str = "image shown, relative to stimuli/"


def _image_features(directory: Path, paths: list[Path], layers: list[str]) -> dict[str, np.ndarray]:
    return planted_layer_features(paths, layers)


def make_demo_dataset(directory: Path, n_subjects: int = DEMO_SUBJECTS, n_runs: int = 3, seed: int = 0,
                      overwrite: bool = False, kind: DemoKind | None = None) -> Path:
    """Write a demo BIDS dataset (raw + fMRIPrep-style derivatives + ROI atlas + spec).

    Parameters
    ----------
    directory : Path
        Target folder (created; must be empty unless ``overwrite``).
    n_subjects, n_runs : int
        Participants and runs per participant.
    seed : int
        Seed of every random choice (stimuli, projections, noise).
    kind : DemoKind, optional
        The stimuli and planted layers (default: :data:`IMAGE_DEMO`, images and AlexNet).

    Returns
    -------
    Path
        The dataset folder.
    """
    kind = IMAGE_DEMO if kind is None else kind
    task = kind.task
    directory = _start_dataset(directory, n_subjects, n_runs, overwrite)
    rng = np.random.default_rng(seed)
    kind.prepare(directory)
    stimuli = kind.write_stimuli(directory / "stimuli", rng)
    stim_index = {file: i for i, (file, _) in enumerate(stimuli)}
    features = kind.planted_features(directory, [directory / "stimuli" / f for f, _ in stimuli],
                                     [layer for layer in kind.planted.values() if layer])
    subjects = _write_dataset_files(directory, kind.description, task, seed, n_subjects, {
        "trial_type": {"Description": "stimulus category, or 'response' for a button press"},
        "stim_file": {"Description": kind.stimulus_description}})
    brain = _brain_mask()
    rois = _roi_masks(brain)
    _write_atlas(directory / "derivatives" / "rois", rois, _affine())
    for subject in subjects:
        sub_rng = np.random.default_rng([seed, int(subject)])
        responses = _subject_responses(features, brain, rois, sub_rng, kind.planted)
        for run in range(1, n_runs + 1):
            events = _events_for_run(stimuli, sub_rng)
            n_vols = int(np.ceil((events["onset"].max() + 20) / T_R))
            bold, confounds = _simulate_run(events, stim_index, responses, n_vols, sub_rng)
            _write_run(directory, subject, task, run, events, bold, confounds, brain)
    (directory / "code").mkdir(exist_ok=True)
    (directory / "code" / "spec.yaml").write_text(kind.spec)
    (directory / "README.md").write_text(kind.readme(n_subjects, n_runs, seed, rois))
    (directory / ".bidsignore").write_text("code/\n")
    return directory


def _start_dataset(directory: Path, n_subjects: int, n_runs: int, overwrite: bool) -> Path:
    """The demo's (empty) target folder: checked, cleared when ``overwrite`` and a demo dataset, created."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise UsageError(f"{directory} is not empty", "choose an empty folder or pass --force")
        if not (directory / "dataset_description.json").is_file():
            raise UsageError(f"{directory} is not a bids_dnn demo dataset; refusing to overwrite it")
        shutil.rmtree(directory)
    if n_subjects < 2 or n_runs < 1:
        raise UsageError("the demo needs at least 2 subjects and 1 run")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _write_dataset_files(directory: Path, description: str, task: str, seed: int, n_subjects: int,
                         events_sidecar: dict) -> list[str]:
    """The dataset and fMRIPrep descriptions, the task's sidecars and participants.tsv; returns the
    subject labels (``01``, ``02``, ...)."""
    _write_json(directory / "dataset_description.json", {
        "Name": description, "BIDSVersion": "1.10.0",
        "DatasetType": "raw", "License": "CC0", "Authors": ["bids_dnn (simulated)"],
        "GeneratedBy": [{"Name": "bids_dnn demo", "Description": f"seed {seed}"}]})
    _write_json(directory / f"task-{task}_bold.json", {"TaskName": task, "RepetitionTime": T_R})
    _write_json(directory / f"task-{task}_events.json", events_sidecar)
    subjects = [f"{i + 1:02d}" for i in range(n_subjects)]
    _write_tsv(directory / "participants.tsv", pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects]}))
    _write_json(directory / "derivatives" / "fmriprep" / "dataset_description.json", {
        "Name": "fMRIPrep-style outputs (simulated)", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "simulated"}]})
    return subjects


def _write_run(directory: Path, subject: str, task: str, run: int, events: pd.DataFrame, bold: np.ndarray,
               confounds: pd.DataFrame, brain: np.ndarray) -> None:
    """One run's events, raw BOLD (int16) and fMRIPrep-style preprocessed BOLD, mask and confounds;
    ``bold`` is (n_vols, n_brain_voxels)."""
    import nibabel as nib

    affine = _affine()
    n_vols = bold.shape[0]
    brain_index = np.flatnonzero(brain.ravel())
    stem = f"sub-{subject}_task-{task}_run-{run}"
    _write_tsv(directory / f"sub-{subject}" / "func" / f"{stem}_events.tsv", events)
    volume = np.zeros(SHAPE + (n_vols,), dtype=np.float32)
    volume.reshape(-1, n_vols)[brain_index] = bold.T
    func = directory / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    raw = nib.Nifti1Image(np.round(volume).astype(np.int16), affine)
    raw.header.set_zooms((VOXEL_MM,) * 3 + (T_R,))
    raw.header.set_xyzt_units("mm", "sec")
    nib.save(raw, directory / f"sub-{subject}" / "func" / f"{stem}_bold.nii.gz")
    preproc = nib.Nifti1Image(volume, affine)
    preproc.header.set_zooms((VOXEL_MM,) * 3 + (T_R,))
    preproc.header.set_xyzt_units("mm", "sec")
    nib.save(preproc, func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
    _write_json(func / f"{stem}_space-{SPACE}_desc-preproc_bold.json",
                {"RepetitionTime": T_R, "SkullStripped": True, "TaskName": task})
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
    _write_tsv(func / f"{stem}_desc-confounds_timeseries.tsv", confounds)


def _subject_responses(features: dict[str, np.ndarray], brain: np.ndarray, rois: dict[str, np.ndarray],
                       sub_rng: np.random.Generator, planted: dict[str, str | None] | None = None) -> np.ndarray:
    """Planted responses (n_stimuli, n_brain_voxels) of one subject; draws from ``sub_rng`` first."""
    brain_index = np.flatnonzero(brain.ravel())
    n_stimuli = next(iter(features.values())).shape[0]
    responses = np.zeros((n_stimuli, brain_index.size))
    for roi, layer in (PLANTED if planted is None else planted).items():
        if layer is None:
            continue
        columns = np.searchsorted(brain_index, np.flatnonzero(rois[roi].ravel()))
        responses[:, columns] = true_patterns(features[layer], len(columns), sub_rng)
    return responses


def planted_responses(directory: Path, subjects: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """The planted (noise-free) responses of a demo dataset, per subject.

    Parameters
    ----------
    directory : Path
        A dataset written by :func:`make_demo_dataset` (its ``stimuli/`` are read).
    subjects : list of str
        Labels without ``sub-``.
    seed : int
        The seed the dataset was made with.

    Returns
    -------
    dict of str to numpy.ndarray
        subject -> (n_stimuli, SHAPE) response volumes (zero outside the signal ROIs), stimuli
        in the demo's order (category, then index: ``disc01`` ... ``texture06``).
    """
    names = [f"{category}{index + 1:02d}.png" for category in CATEGORIES for index in range(N_PER_CATEGORY)]
    features = planted_layer_features([Path(directory) / "stimuli" / n for n in names],
                                      [layer for layer in PLANTED.values() if layer])
    brain = _brain_mask()
    rois = _roi_masks(brain)
    out = {}
    for subject in subjects:
        responses = _subject_responses(features, brain, rois, np.random.default_rng([seed, int(subject)]))
        volume = np.zeros((len(names),) + SHAPE)
        volume.reshape(len(names), -1)[:, np.flatnonzero(brain.ravel())] = responses
        out[subject] = volume
    return out


def _write_atlas(folder: Path, rois: dict[str, np.ndarray], affine: np.ndarray) -> None:
    """The ROI atlas at twice the resolution of the BOLD grid (the pipeline resamples it)."""
    import nibabel as nib

    labels = np.zeros(SHAPE, dtype=np.int16)
    for index, mask in enumerate(rois.values(), start=1):
        labels[mask] = index
    fine = np.repeat(np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1), 2, axis=2)
    fine_affine = affine.copy()
    fine_affine[:3, :3] /= 2
    fine_affine[:3, 3] -= VOXEL_MM / 4  # voxel centres of the fine grid inside the coarse voxels
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(fine, fine_affine), folder / f"space-{SPACE}_atlas-planted_dseg.nii.gz")
    _write_tsv(folder / f"space-{SPACE}_atlas-planted_dseg.tsv",
               pd.DataFrame({"index": range(1, len(rois) + 1), "name": list(rois)}))
    _write_json(folder / "dataset_description.json", {
        "Name": "planted ROI atlas", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bids_dnn demo"}]})


def _readme(n_subjects: int, n_runs: int, seed: int, rois: dict[str, np.ndarray]) -> str:
    fwe_note = (", so the group searchlight and encoding maps show FWE-significant voxels in the signal ROIs."
                if 2.0 ** -n_subjects < 0.05 else
                ", above 0.05: no voxel can be FWE-significant (use 5 or more participants).")
    planted = "\n".join(
        f"| {roi} | {int(mask.sum())} | {PLANTED[roi] or 'none (noise only)'} |" for roi, mask in rois.items())
    return f"""# bids_dnn demo dataset (simulated)

Made by `bids_dnn demo` (seed {seed}): {n_subjects} participants x {n_runs} runs of task `{TASK}`,
24 procedurally drawn images in 4 categories ({', '.join(CATEGORIES)}), each shown once per run
(1 s, jittered 4-7 s onset asynchrony, random order), plus 3 button presses per run
(`trial_type` response, no stimulus). TR {T_R} s, {VOXEL_MM:g} mm voxels, grid {SHAPE}.

## Planted ground truth

The responses follow layers of a seeded random-init AlexNet (torchvision, `weights: random`,
`init_seed: 0`, ImageNet preprocessing):

| ROI | voxels | planted layer |
|---|---|---|
{planted}

Signal ROI voxel responses are random combinations of the first {SIGNAL_DIMENSIONS} principal
components of the row-standardised layer activations, so the true squared-Euclidean RDM of an
ROI follows the layer's correlation-distance RDM (its rank-{SIGNAL_DIMENSIONS} approximation). BOLD = {BASELINE:g} x (1 + (signal + confounds + noise) / 100): the
response to a stimulus has {SIGNAL_PSC:g} % signal change per unit pattern value (SPM HRF), slow
cosine drifts, motion-like random walks (written as trans_*/rot_* confounds) with random voxel
loadings, and AR(1) noise (rho {AR1_RHO}, SD {NOISE_SD_PSC:g} %).

Expected results: for ROI `early` the layer `features.2` has the highest RSA score, for ROI
`late` the layer `classifier.4`; ROI `control` has no score that survives family-wise correction
(with few subjects an FDR-corrected false positive in `control` can happen by chance). The
weighted RSA puts its largest weight on the planted layer, the variance partitioning finds the
planted group's unique variance, and the searchlight maps peak in the planted ROIs. Group maps
use all 2^n sign flips for n subjects (smallest p = 1/2^n): with {n_subjects} participants the
smallest p_FWE is {1 / 2 ** n_subjects:.3g}{fwe_note}

Encoding (ridge from each layer's raw activations to each voxel, 6-fold CV over stimuli,
penalty chosen by inner CV; `*_encoding.tsv`, group `*_desc-summary_encoding.tsv`): in ROI
`early` the planted `features.2` has the highest held-out R2 (group mean about 0.1, the
adjacent `features.5` next), in ROI `late` the planted `classifier.4` is best or tied within
one standard error with `classifier.1` / `features.12`, whose representations of these 24
images are nearly the same (RDM Spearman 0.85 / 0.72). R2 is that of the out-of-fold
predictions pooled over folds; r is the mean over folds of the within-fold correlation.
ROI `control` scores r about 0 and R2 slightly below 0 (the expected sign for held-out R2 of
pure noise), and its noise ceiling (split-half reliability, Spearman-Brown corrected) is
about 0, below the 0.1 needed to report a ceiling-normalised score (`normalized_r2` = R2 /
ceiling), which is therefore n/a. The signal ROIs' responses carry the first
{SIGNAL_DIMENSIONS} principal components of the planted layer (a random projection of all
units could not be learnt from 20 training stimuli).

## Files

- `stimuli/*.png`, `sub-XX/func/*_events.tsv` (`onset`, `duration`, `trial_type`, `stim_file`)
- `derivatives/fmriprep/`: `*_space-{SPACE}_desc-preproc_bold.nii.gz`, `*_desc-brain_mask.nii.gz`,
  `*_desc-confounds_timeseries.tsv`
- `derivatives/rois/space-{SPACE}_atlas-planted_dseg.nii.gz` (+ `.tsv`): the ROI atlas at 2 mm
- `code/spec.yaml`: the analysis spec to run on it
"""


#: the default demo: 24 drawn images, responses following a random-init AlexNet
IMAGE_DEMO = DemoKind(name="images", task=TASK, description="bids_dnn demo: planted DNN-layer responses",
                      planted=PLANTED, write_stimuli=write_stimuli, planted_features=_image_features,
                      spec=DEMO_SPEC.format(layers=", ".join(DEMO_LAYERS), space=SPACE), readme=_readme)
