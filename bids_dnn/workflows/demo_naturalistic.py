"""Naturalistic demos (``bids_dnn demo DIR --kind movie|story``): continuous stimuli (a film, a
spoken story) whose BOLD time series carry planted layer features, for ``design: naturalistic``.

The brain grid, ROIs, atlas, confounds and noise model are those of the image demo
(:mod:`bids_dnn.workflows.demo`); TR 2 s; the runs of one participant present different films /
stories except that the LAST run repeats the FIRST one's (same file, same words), so a noise
ceiling from repeated presentations exists. Every participant sees the same runs.

What is planted (also written to each dataset's README):

- movie (task ``movie``): procedurally drawn videos (128 x 128 px, 10 frames/s, mp4 written
  with PyAV), segments of 2-6 s of moving discs, drifting and rotating gratings, sliding
  checkerboards and scrolling noise textures, each with its own colours and motion. The
  "true" model is the image demo's seeded random-init AlexNet (``init_seed`` 0), fed the
  frames sampled at :data:`MOVIE_SAMPLE_FPS` (the pipeline's ``stimuli.video.fps`` default,
  decoded by the pipeline's own :func:`~bids_dnn.io.stimulus_loading.load_video`) at the
  video's own 128 px (``transform: {resize: 128, crop: 128}``). ROI ``early`` follows
  ``features.2``, ``late`` ``classifier.4``, ``control`` carries no stimulus signal.
- story (task ``story``): words of sentences from the text demo's grammar
  (:func:`~bids_dnn.workflows.demo_text_audio.sentence`), about 2.2 words per second with a
  pause after each sentence; the model is the text demo's tiny random-init BERT-style encoder
  (``code/models/textnet``), each word read after the story's preceding words (32 tokens of
  context), mean-pooled over the word's tokens. ``early`` follows ``hidden_states.1``,
  ``late`` ``hidden_states.4``.

The signal of a planted layer (:func:`planted_timeseries`): the layer's features on the
stimulus timeline (one row per sampled frame or per word) are row-standardised and reduced to
their first principal components (:data:`MOVIE_COMPONENTS` / :data:`STORY_COMPONENTS`; fitted
over the samples of all distinct runs, as :func:`~bids_dnn.workflows.demo.true_patterns` does
over stimuli), brought to
the acquisition times ``TR * i`` by Lanczos interpolation (:mod:`bids_dnn.timeseries`; frames
as a regularly sampled signal, ``normalize=True``; words as impulses at their onsets,
``normalize=False``), z-scored per run and delayed by :data:`PLANTED_DELAYS` TRs (FIR). Each
voxel's signal is a random combination of the delayed components: Gaussian weights over
components times positive weights over delays (the SPM HRF at those lags, jittered per voxel),
scaled to SD 1 over the ROI and all runs. BOLD = baseline x (1 + (signal % + drift + motion +
AR(1) noise) / 100), the image demo's noise model.

Why 32 components for the movie (8 for the story, as the image demo): at the TR's time scale
the AlexNet layers' first principal components are shared by all layers (mostly which segment
is on: its colours and category), so a signal made of them is predicted almost as well from any
layer. Noise-free, from ridge over the other films (2 of 3, 240 s each, FIR delays), the first 8
components of ``features.2`` are predicted with R2 0.91 from ``features.2`` and 0.90 from
``features.5``; the first 32 with 0.83 and 0.74 (0.46-0.52 from the later layers); those of
``classifier.4`` with 0.94 from ``classifier.4``, 0.92 from ``classifier.1``, 0.85 from
``features.12``. With the demo's noise, 4 participants x 4 runs and :data:`MOVIE_SIGNAL_PSC`
2 %, an independent leave-one-film-out ridge check gives held-out R2 in ``early`` 0.24 for
``features.2`` (next ``features.5`` 0.16) and in ``late`` 0.28 for ``classifier.4`` (next
``classifier.1`` 0.26, higher in every participant by 0.020 to 0.028); on the features stored
as a 1024-column sparse random projection (the spec's ``reduction``) 0.22 / 0.18 and 0.26 /
0.24 (every participant by 0.019 or more); with 8 components the layers tie (0.215 / 0.215 and
0.230 / 0.230). The repeated run's BOLD correlates 0.67 with the first's in the signal ROIs.
The story's layers differ more: 8 components at 1 % give 0.19 for ``hidden_states.1`` in
``early`` (next 0.01) and 0.21 for ``hidden_states.4`` in ``late`` (next ``hidden_states.3``,
0.10); the repeats correlate 0.35.

This module is not imported by the pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_dnn.errors import UsageError
from bids_dnn.workflows.demo import (AR1_RHO, CATEGORIES, DEMO_LAYERS, NOISE_SD_PSC, SHAPE, SIGNAL_DIMENSIONS,
                                     SPACE, T_R, VOXEL_MM, _affine, _bold_and_confounds, _brain_mask, _roi_masks,
                                     _start_dataset, _write_atlas, _write_dataset_files, _write_run)
from bids_dnn.workflows.demo_text_audio import TEXT_LAYERS, TEXT_MODEL_FOLDER, TEXT_TOPICS, _corpus, sentence

__all__ = ["MOVIE_TASK", "STORY_TASK", "MOVIE_PLANTED", "STORY_PLANTED", "MOVIE_LAYERS", "STORY_LAYERS",
           "NATURALISTIC_SUBJECTS", "NATURALISTIC_RUNS", "SECONDS_PER_RUN", "MOVIE_SIZE", "MOVIE_FRAME_RATE",
           "MOVIE_SAMPLE_FPS", "MOVIE_TRANSFORM", "STORY_CONTEXT_TOKENS", "PLANTED_DELAYS", "MOVIE_COMPONENTS",
           "STORY_COMPONENTS", "MOVIE_SIGNAL_PSC", "STORY_SIGNAL_PSC", "run_stimuli", "render_movie", "write_movie",
           "story_events", "timeline_features", "planted_tr_features", "planted_timeseries", "make_movie_dataset",
           "make_story_dataset"]

MOVIE_TASK = "movie"
STORY_TASK = "story"
#: ROI -> the layer its time series follow (None: noise only)
MOVIE_PLANTED: dict[str, str | None] = {"early": "features.2", "late": "classifier.4", "control": None}
STORY_PLANTED: dict[str, str | None] = {"early": "hidden_states.1", "late": "hidden_states.4", "control": None}
#: the layers ``code/spec.yaml`` asks the analysis for
MOVIE_LAYERS = list(DEMO_LAYERS)
STORY_LAYERS = list(TEXT_LAYERS)
#: participants and runs by default (the last run repeats the first)
NATURALISTIC_SUBJECTS = 4
NATURALISTIC_RUNS = 4
#: length of a run (s): 120 volumes at TR 2 s
SECONDS_PER_RUN = 240.0
#: the videos: side (px) and frames per second
MOVIE_SIZE = 128
MOVIE_FRAME_RATE = 10
#: frames per second fed to the model (the pipeline's ``stimuli.video.fps`` default)
MOVIE_SAMPLE_FPS = 2.0
#: the model's preprocessing: the frames at their own size (the ImageNet 224 px crop of a 128 px
#: video only upsamples it, and doubles the extraction time)
MOVIE_TRANSFORM = {"resize": MOVIE_SIZE, "crop": MOVIE_SIZE}
#: tokens of the preceding words each word of the story is read after
STORY_CONTEXT_TOKENS = 32
#: FIR delays (TRs) of the planted signal, and of the spec's analysis
PLANTED_DELAYS = (1, 2, 3, 4)
#: principal components of a planted layer's timeline features that the signal ROIs carry
MOVIE_COMPONENTS = 32
STORY_COMPONENTS = SIGNAL_DIMENSIONS
#: percent signal change per unit (SD) of the planted signal
MOVIE_SIGNAL_PSC = 2.0
STORY_SIGNAL_PSC = 1.0

_LANCZOS_WINDOW = 3
_WORD_DURATION = 0.3
_STORY_START = 2.0


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------


def run_stimuli(n_runs: int) -> list[int]:
    """Which distinct film / story each run presents: run k (0-based) presents number k, except
    that the last run repeats number 0 (when there are 2 or more runs).

    Parameters
    ----------
    n_runs : int

    Returns
    -------
    list of int, length n_runs
        E.g. ``[0, 1, 2, 0]`` for 4 runs, ``[0, 0]`` for 2, ``[0]`` for 1.
    """
    if n_runs < 1:
        raise ValueError("n_runs must be at least 1")
    return list(range(n_runs - 1)) + [0] if n_runs > 1 else [0]


def _n_vols(seconds_per_run: float) -> int:
    n_vols = int(round(seconds_per_run / T_R))
    if n_vols < 8 or abs(n_vols * T_R - seconds_per_run) > 1e-6:
        raise UsageError(f"seconds_per_run must be a multiple of the TR ({T_R:g} s) and at least {8 * T_R:g} s")
    return n_vols


# ---------------------------------------------------------------------------------------
# Movie
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """One shot of a film: a category drawn with its colours and motion from its start."""

    category: str
    n_frames: int
    colours: np.ndarray             # (2, 3): foreground, second colour / background
    params: dict


def _segment(rng: np.random.Generator, frame_rate: int) -> _Segment:
    category = str(rng.choice(CATEGORIES))
    n_frames = int(round(rng.uniform(2.0, 6.0) * frame_rate))
    colours = np.stack([rng.uniform(0.1, 1.0, 3), rng.uniform(0.0, 0.7, 3)])
    if category == "disc":
        params = {"radius": rng.uniform(0.1, 0.3), "centre": rng.uniform(-0.25, 0.25, 2),
                  "velocity": rng.uniform(-0.2, 0.2, 2), "pulse_hz": rng.uniform(0.2, 1.0),
                  "pulse": rng.uniform(0.0, 0.35)}
    elif category == "grating":
        params = {"theta": rng.uniform(0, np.pi), "spin": rng.uniform(-0.6, 0.6), "freq": rng.uniform(2, 10),
                  "drift_hz": rng.uniform(-1.5, 1.5)}
    elif category == "checker":
        params = {"n_checks": int(rng.integers(2, 9)), "velocity": rng.uniform(-0.25, 0.25, 2)}
    else:  # texture
        scale = int(rng.integers(3, 17))
        params = {"scale": scale, "values": rng.random((scale, scale)), "velocity": rng.uniform(-0.3, 0.3, 2)}
    return _Segment(category, max(n_frames, 1), colours, params)


def _bounce(position: np.ndarray, limit: float) -> np.ndarray:
    """A position moving on a line, reflected at +-limit (a triangle wave)."""
    span = 2 * limit
    folded = np.mod(position + limit, 2 * span)
    return np.where(folded > span, 2 * span - folded, folded) - limit


def _draw(segment: _Segment, seconds: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Frame ``seconds`` into ``segment``: RGB (size, size, 3) in [0, 1]."""
    fg, second = segment.colours
    p = segment.params
    if segment.category == "disc":
        cx, cy = _bounce(p["centre"] + p["velocity"] * seconds, 0.3)
        radius = p["radius"] * (1 + p["pulse"] * np.sin(2 * np.pi * p["pulse_hz"] * seconds))
        weight = ((x - cx) ** 2 + (y - cy) ** 2 < radius**2).astype(float)
    elif segment.category == "grating":
        theta = p["theta"] + p["spin"] * seconds
        phase = 2 * np.pi * p["drift_hz"] * seconds
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * p["freq"] * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    elif segment.category == "checker":
        n = p["n_checks"]
        dx, dy = p["velocity"] * seconds
        weight = ((np.floor((x + 0.5 - dx) * n) + np.floor((y + 0.5 - dy) * n)) % 2).astype(float)
    else:
        scale = p["scale"]
        dx, dy = p["velocity"] * seconds
        rows = np.floor((y + 0.5 - dy) * scale).astype(int) % scale
        cols = np.floor((x + 0.5 - dx) * scale).astype(int) % scale
        weight = p["values"][rows, cols]
    return weight[..., None] * fg + (1 - weight[..., None]) * second


def render_movie(seconds: float, rng: np.random.Generator, size: int = MOVIE_SIZE,
                 frame_rate: int = MOVIE_FRAME_RATE) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """The frames of one procedurally drawn film.

    Parameters
    ----------
    seconds : float
        Length; ``round(seconds * frame_rate)`` frames.
    rng : numpy.random.Generator
        Draws the segments (categories, colours, motion).
    size, frame_rate : int
        Frame side (px) and frames per second.

    Returns
    -------
    frames : numpy.ndarray, shape (n_frames, size, size, 3), uint8
    segments : list of (float, str)
        Onset (s) and category of each segment.
    """
    n_frames = int(round(seconds * frame_rate))
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    segments: list[tuple[float, str]] = []
    start = 0
    while start < n_frames:
        segment = _segment(rng, frame_rate)
        segments.append((start / frame_rate, segment.category))
        for k in range(min(segment.n_frames, n_frames - start)):
            frames[start + k] = np.round(np.clip(_draw(segment, k / frame_rate, x, y), 0, 1) * 255)
        start += segment.n_frames
    return frames, segments


def _video_codec(av) -> str:  # noqa: ANN001 - the PyAV module
    for codec in ("mpeg4", "libx264"):
        if codec in av.codecs_available:
            return codec
    raise UsageError("the movie demo needs an MPEG-4 or H.264 encoder in PyAV", "pip install av")


def write_movie(path: Path, frames: np.ndarray, frame_rate: int = MOVIE_FRAME_RATE) -> Path:
    """Encode frames as an mp4 (PyAV; MPEG-4 part 2, or H.264 when that is missing).

    Parameters
    ----------
    path : Path
        The file to write.
    frames : numpy.ndarray, shape (n_frames, height, width, 3), uint8
        RGB frames; frame k is shown from ``k / frame_rate`` s.
    frame_rate : int
        Frames per second.

    Returns
    -------
    Path
        ``path``.
    """
    try:
        import av
    except ImportError:  # pragma: no cover - PyAV is part of the video extra
        raise UsageError("the movie demo needs PyAV to write its videos", "pip install av") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(_video_codec(av), rate=frame_rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 400_000
        stream.thread_count = 1  # one thread: the same bytes every time
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_movies(directory: Path, n_distinct: int, seconds: float, rng: np.random.Generator) -> list[pd.DataFrame]:
    """Render and encode the distinct films (``stimuli/movieNN.mp4``); returns their events."""
    events = []
    for index in range(n_distinct):
        frames, _ = render_movie(seconds, rng)
        name = f"movie{index + 1:02d}.mp4"
        write_movie(directory / "stimuli" / name, frames)
        events.append(pd.DataFrame({"onset": [0.0], "duration": [seconds], "trial_type": ["movie"],
                                    "stim_file": [name]}))
    return events


# ---------------------------------------------------------------------------------------
# Story
# ---------------------------------------------------------------------------------------


def story_events(seconds: float, rng: np.random.Generator) -> pd.DataFrame:
    """The words of one story and their onsets.

    Sentences of :func:`~bids_dnn.workflows.demo_text_audio.sentence` (the topic kept from one
    sentence to the next with probability 0.6), punctuation dropped, one word every 0.31-0.45 s
    (about 2.6 words per second) and a pause of 0.6-1.2 s after each sentence (about 2.2 words
    per second overall), from 2 s on, as long as the whole sentence ends 1 s before ``seconds``.
    Onsets are rounded to 10 ms; a word (0.3 s) ends before the next begins.

    Parameters
    ----------
    seconds : float
        The run's length.
    rng : numpy.random.Generator

    Returns
    -------
    pandas.DataFrame
        Columns ``onset``, ``duration`` (0.3 s), ``trial_type`` (``word``), ``word``; one row per
        word, in order.
    """
    rows: list[dict] = []
    onset = _STORY_START
    topic = str(rng.choice(TEXT_TOPICS))
    while True:
        if rng.random() >= 0.6:
            topic = str(rng.choice(TEXT_TOPICS))
        words = re.findall(r"[a-z]+", sentence(topic, rng))
        steps = rng.uniform(0.31, 0.45, size=len(words))
        onsets = onset + np.r_[0.0, np.cumsum(steps[:-1])]
        if onsets[-1] + _WORD_DURATION > seconds - 1.0:
            break
        rows += [{"onset": round(float(t), 2), "duration": _WORD_DURATION, "trial_type": "word", "word": w}
                 for t, w in zip(onsets, words)]
        onset = float(onsets[-1]) + steps[-1] + rng.uniform(0.6, 1.2)
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type", "word"])


def _write_stories(directory: Path, n_distinct: int, seconds: float,
                   rng: np.random.Generator) -> list[pd.DataFrame]:
    """The tiny text model's folder (``code/models/textnet``) and the distinct stories' events."""
    from bids_dnn.dnn.demo_models import write_text_model

    write_text_model(directory / "code" / TEXT_MODEL_FOLDER, _corpus())
    return [story_events(seconds, rng) for _ in range(n_distinct)]


# ---------------------------------------------------------------------------------------
# Timeline features, resampled
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Timeline:
    """One distinct film or story: sample times (s from the run's start) and features per layer."""

    times: np.ndarray
    features: dict[str, np.ndarray]


def _movie_timelines(directory: Path, films: list[pd.DataFrame], layers: list[str]) -> list[_Timeline]:
    from bids_dnn.dnn.models import load_model
    from bids_dnn.dnn.timeline import frame_features
    from bids_dnn.io.stimulus_loading import load_video
    from bids_dnn.spec import ModelSpec, TransformSpec

    loaded = load_model(ModelSpec(name="alexnet", weights="random", init_seed=0, layers=layers,
                                  transform=TransformSpec(**MOVIE_TRANSFORM)))
    out = []
    for events in films:
        onset, name = float(events["onset"].iloc[0]), str(events["stim_file"].iloc[0])
        frames = load_video(directory / "stimuli" / name, MOVIE_SAMPLE_FPS)
        features = frame_features(loaded, frames, layers, batch_size=32)
        out.append(_Timeline(onset + np.arange(len(frames)) / MOVIE_SAMPLE_FPS,
                             {layer: values.astype(np.float64) for layer, values in features.items()}))
    return out


def _story_timelines(directory: Path, stories: list[pd.DataFrame], layers: list[str]) -> list[_Timeline]:
    from bids_dnn.dnn.models import load_model
    from bids_dnn.dnn.timeline import word_features
    from bids_dnn.spec import ModelSpec

    loaded = load_model(ModelSpec(name=str(directory / "code" / TEXT_MODEL_FOLDER), label="textnet",
                                  source="huggingface", weights="random", init_seed=0, pooling="mean",
                                  context_tokens=STORY_CONTEXT_TOKENS, layers=layers))
    out = []
    for events in stories:
        features = word_features(loaded, list(events["word"]), layers, pooling="mean",
                                 context_tokens=STORY_CONTEXT_TOKENS, batch_size=32)
        out.append(_Timeline(events["onset"].to_numpy(dtype=np.float64),
                             {layer: values.astype(np.float64) for layer, values in features.items()}))
    return out


def _principal_scores(features: np.ndarray, n_components: int) -> np.ndarray:
    """Scores (n_samples, k) of the first principal components of the row-standardised features
    (each sample's units to mean 0, SD 1; then centred over samples), as in ``true_patterns``.

    From the eigenvectors of the samples' Gram matrix (``z z^T = U S^2 U^T``, so the scores
    ``U S`` are those of the SVD up to sign): far faster than the SVD of a wide matrix. Each
    component's sign is fixed so that its largest absolute score is positive (as scikit-learn's
    ``svd_flip``), not left to the eigensolver."""
    z = features - features.mean(axis=1, keepdims=True)
    z /= z.std(axis=1, keepdims=True) + 1e-12
    z -= z.mean(axis=0, keepdims=True)
    values, vectors = np.linalg.eigh(z @ z.T)
    k = min(int(n_components), z.shape[0] - 1)
    top = np.argsort(values)[::-1][:k]
    scores = vectors[:, top] * np.sqrt(np.clip(values[top], 0.0, None))
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(scores.shape[1])])
    return scores * np.where(signs == 0, 1.0, signs)


def _tr_components(timelines: list[_Timeline], layers: list[str], runs: list[int], n_vols: int,
                   normalize: bool, n_components: int) -> dict[str, list[np.ndarray]]:
    """Per planted layer and run, its principal components at the acquisition times, z-scored."""
    from bids_dnn.timeseries.resample import lanczos_resample
    from bids_dnn.timeseries.scaling import zscore_by_run

    tr_times = np.arange(n_vols) * T_R
    out = {}
    for layer in layers:
        stacked = np.concatenate([tl.features[layer] for tl in timelines])
        scores = np.split(_principal_scores(stacked, n_components),
                          np.cumsum([tl.times.size for tl in timelines])[:-1])
        resampled = [lanczos_resample(s, tl.times, tr_times, window=_LANCZOS_WINDOW, normalize=normalize)
                     for s, tl in zip(scores, timelines)]
        out[layer] = [zscore_by_run(resampled[u], None) for u in runs]
    return out


def _delay_weights() -> np.ndarray:
    """The SPM HRF at the planted delays (peak 1)."""
    from bids_dnn.timeseries.delays import hrf_kernel

    taps = hrf_kernel(T_R)[list(PLANTED_DELAYS)]
    return taps / taps.max()


def _subject_signal(components: dict[str, list[np.ndarray]], planted: dict[str, str | None], brain: np.ndarray,
                    rois: dict[str, np.ndarray], sub_rng: np.random.Generator) -> list[np.ndarray]:
    """The planted signal of one subject, per run (n_vols, n_brain_voxels), SD 1 over each signal
    ROI and all runs (0 elsewhere); draws from ``sub_rng`` first."""
    from bids_dnn.timeseries.delays import delay_features

    brain_index = np.flatnonzero(brain.ravel())
    n_runs = len(next(iter(components.values())))
    n_vols = next(iter(components.values()))[0].shape[0]
    signal = [np.zeros((n_vols, brain_index.size)) for _ in range(n_runs)]
    base = _delay_weights()
    for roi, layer in planted.items():
        if layer is None:
            continue
        columns = np.searchsorted(brain_index, np.flatnonzero(rois[roi].ravel()))
        k = components[layer][0].shape[1]
        weights = sub_rng.standard_normal((k, columns.size))
        delay_weights = base[:, None] * sub_rng.uniform(0.5, 1.5, size=(base.size, columns.size))
        # delay-major columns of delay_features: block i holds the components delayed by PLANTED_DELAYS[i]
        full = np.concatenate([weights * delay_weights[i] for i in range(base.size)])
        roi_signal = [delay_features(x, PLANTED_DELAYS) @ full for x in components[layer]]
        scale = np.concatenate(roi_signal).std()
        for run, values in enumerate(roi_signal):
            signal[run][:, columns] = values / scale
    return signal


# ---------------------------------------------------------------------------------------
# The two kinds
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    name: str
    task: str
    description: str
    planted: dict[str, str | None]
    signal_psc: float
    n_components: int               # principal components of a planted layer in the signal
    normalize: bool                 # Lanczos normalisation: frames (True) or word impulses (False)
    write_stimuli: Callable[[Path, int, float, np.random.Generator], list[pd.DataFrame]]
    timelines: Callable[[Path, list[pd.DataFrame], list[str]], list[_Timeline]]
    events_sidecar: dict
    spec: str
    readme: Callable[[int, int, int, float, dict[str, np.ndarray]], str]

    @property
    def planted_layers(self) -> list[str]:
        return [layer for layer in self.planted.values() if layer]


def _spec(model: str, naturalistic: str, stimuli: str = "") -> str:
    return f"""\
# bids_dnn analysis spec for the naturalistic demo dataset (see README.md for the planted truth)
schema_version: 1
design: naturalistic
{stimuli}models:
{model}rois:
  atlas: derivatives/rois/space-{SPACE}_atlas-planted_dseg.nii.gz
analyses:
  naturalistic: {{{naturalistic}delays: [{", ".join(str(d) for d in PLANTED_DELAYS)}], alphas: "logspace(-2, 6, 17)"}}
statistics:
  bootstrap: 200
  map_permutations: 200
  seed: 42
"""


_MOVIE_SPEC = _spec(f"""\
  - name: alexnet
    weights: random        # seeded random initialisation: no download needed
    init_seed: 0
    transform: {{resize: {MOVIE_SIZE}, crop: {MOVIE_SIZE}}}   # the frames at their own size
    layers: [{", ".join(MOVIE_LAYERS)}]
    # layers wider than 1024 units stored as a seeded sparse random projection (data-independent, so no
    # test run shapes it; keeps the time-series fits small: 4 delays x 1024 columns per layer)
    reduction: {{method: srp, n_components: 1024}}
""", "", stimuli=f"stimuli:\n  video: {{fps: {MOVIE_SAMPLE_FPS:g}}}\n")

_STORY_SPEC = _spec(f"""\
  - name: {TEXT_MODEL_FOLDER}       # a local Hugging Face folder, relative to this file
    label: textnet
    source: huggingface
    weights: random        # seeded random initialisation: no download needed
    init_seed: 0
    pooling: mean
    context_tokens: {STORY_CONTEXT_TOKENS}
    layers: [{", ".join(STORY_LAYERS)}]
""", "word_column: word, ")


def _readme_for(kind: str) -> Callable[[int, int, int, float, dict[str, np.ndarray]], str]:
    def readme(n_subjects: int, n_runs: int, seed: int, seconds: float, rois: dict[str, np.ndarray]) -> str:
        movie = kind == "movie"
        planted = MOVIE_PLANTED if movie else STORY_PLANTED
        psc = MOVIE_SIGNAL_PSC if movie else STORY_SIGNAL_PSC
        components = MOVIE_COMPONENTS if movie else STORY_COMPONENTS
        rows = "\n".join(f"| {roi} | {int(mask.sum())} | {planted[roi] or 'none (noise only)'} |"
                         for roi, mask in rois.items())
        order = ", ".join(f"run-{r + 1}: {u + 1}" for r, u in enumerate(run_stimuli(n_runs)))
        if movie:
            stimuli = (f"a film per run (`stimuli/movieNN.mp4`, {MOVIE_SIZE} x {MOVIE_SIZE} px, "
                       f"{MOVIE_FRAME_RATE} frames/s, {seconds:g} s): segments of 2-6 s of moving discs, drifting "
                       "and rotating gratings, sliding checkerboards and scrolling noise textures, each with its "
                       "own colours and motion. Events: one row per run (`onset` 0, `duration` the film's length, "
                       "`trial_type` movie, `stim_file`)")
            model = (f"a seeded random-init AlexNet (torchvision, `weights: random`, `init_seed: 0`), fed the "
                     f"frames sampled at {MOVIE_SAMPLE_FPS:g} per second (`stimuli.video.fps`) at their own "
                     f"{MOVIE_SIZE} px (`transform: {{resize: {MOVIE_SIZE}, crop: {MOVIE_SIZE}}}`)")
            resampling = "the frames as a regularly sampled signal (Lanczos, normalised: a weighted average)"
            numbers = ("With the defaults (4 participants x 4 runs of 240 s), an independent check (ridge over "
                       "the other films, penalty by inner cross-validation, one per ROI; confounds and cosine "
                       "drifts regressed out) gave mean held-out R2 in `early` 0.24 for `features.2` (next "
                       "`features.5`, 0.16), in `late` 0.28 for `classifier.4` (next `classifier.1`, 0.26, lower "
                       "in every participant); on the spec's 1024-column random projection of the features 0.22 "
                       "(0.18) and 0.26 (0.24). The first and last runs' BOLD correlate about 0.67 in the signal "
                       "ROIs. Adjacent layers come close: at the TR's time scale every layer follows which "
                       f"segment is on, hence the signal's {components} components rather than 8.")
        else:
            stimuli = ("a spoken story per run: sentences about animals, tools, food and places from the text "
                       "demo's grammar, about 2.2 words per second with a pause after each sentence. Events: one "
                       "row per word (`onset`, `duration` 0.3, `trial_type` word, `word`)")
            model = (f"the tiny random-init BERT-style encoder of `code/{TEXT_MODEL_FOLDER}` (configuration and "
                     f"tokenizer only; `weights: random`, `init_seed: 0`), each word read after the story's "
                     f"preceding words ({STORY_CONTEXT_TOKENS} tokens of context), mean-pooled over the word's "
                     "own tokens")
            resampling = "each word as an impulse at its onset (Lanczos, not normalised: the word rate counts)"
            numbers = ("With the defaults (4 participants x 4 runs of 240 s), an independent check (ridge over "
                       "the other stories, penalty by inner cross-validation, one per ROI; confounds and cosine "
                       "drifts regressed out) gave mean held-out R2 in `early` 0.19 for `hidden_states.1` (next "
                       "0.01), in `late` 0.21 for `hidden_states.4` (next `hidden_states.3`, 0.10); the first and "
                       "last runs' BOLD correlate about 0.35 in the signal ROIs.")
        return f"""# bids_dnn {kind} demo dataset (simulated)

Made by `bids_dnn demo --kind {kind}` (seed {seed}): {n_subjects} participants x {n_runs} runs of task `{kind}`,
{stimuli}. Every participant sees the same runs; the last run repeats the first (distinct {kind} per run:
{order}), so the repeated presentations give a noise ceiling. TR {T_R:g} s, {int(round(seconds / T_R))} volumes
per run; {VOXEL_MM:g} mm voxels, grid {SHAPE}; ROIs, atlas, confounds and noise as the image demo.

## Planted ground truth

The BOLD time series follow layers of {model}:

| ROI | voxels | planted layer |
|---|---|---|
{rows}

A planted layer's features on the stimulus timeline (one row per {'frame' if movie else 'word'}) are
row-standardised and reduced to their first {components} principal components (fitted over all
distinct runs), brought to the acquisition times `TR * i` with {resampling}, z-scored per run and
delayed by {', '.join(str(d) for d in PLANTED_DELAYS)} TRs. Each voxel's signal is a random combination of
the delayed components (Gaussian weights over components times positive weights over delays: the SPM
HRF at those lags, jittered per voxel), scaled to SD 1 over the ROI, at {psc:g} % signal change per
unit. BOLD = baseline x (1 + (signal + slow cosine drifts + motion-like random walks (the trans_*/rot_*
confounds) + AR(1) noise (rho {AR1_RHO}, SD {NOISE_SD_PSC:g} %)) / 100).

Expected results of `design: naturalistic` (`code/spec.yaml`: the features resampled the same way,
z-scored per run, FIR delays {', '.join(str(d) for d in PLANTED_DELAYS)}, ridge with leave-one-run-out
cross-validation): in ROI `early` the planted `{planted['early']}` predicts held-out runs best, in ROI
`late` the planted `{planted['late']}`; ROI `control` has held-out R2 about 0 (slightly below), and
its repeat-based noise ceiling (first and last run) is about 0, while the signal ROIs' ceilings are
clearly positive. {numbers}

## Files

- `sub-XX/func/*_events.tsv`{', `stimuli/movieNN.mp4`' if movie else ''}
- `derivatives/fmriprep/`: `*_space-{SPACE}_desc-preproc_bold.nii.gz`, `*_desc-brain_mask.nii.gz`,
  `*_desc-confounds_timeseries.tsv`
- `derivatives/rois/space-{SPACE}_atlas-planted_dseg.nii.gz` (+ `.tsv`): the ROI atlas at 2 mm
- `code/spec.yaml`: the analysis spec to run on it{'' if movie else f'; `code/{TEXT_MODEL_FOLDER}`: the model folder'}
"""
    return readme


_MOVIE = _Kind(
    name="movie", task=MOVIE_TASK, description="bids_dnn movie demo: planted DNN-layer time series",
    planted=MOVIE_PLANTED, signal_psc=MOVIE_SIGNAL_PSC, n_components=MOVIE_COMPONENTS, normalize=True,
    write_stimuli=_write_movies, timelines=_movie_timelines,
    events_sidecar={"trial_type": {"Description": "'movie': the film of the run, from its onset"},
                    "stim_file": {"Description": "film shown, an mp4 file relative to stimuli/"}},
    spec=_MOVIE_SPEC, readme=_readme_for("movie"))
_STORY = _Kind(
    name="story", task=STORY_TASK, description="bids_dnn story demo: planted transformer-layer time series",
    planted=STORY_PLANTED, signal_psc=STORY_SIGNAL_PSC, n_components=STORY_COMPONENTS, normalize=False,
    write_stimuli=_write_stories, timelines=_story_timelines,
    events_sidecar={"trial_type": {"Description": "'word': a word of the story, heard from its onset"},
                    "word": {"Description": "the word (lower case, no punctuation)"}},
    spec=_STORY_SPEC, readme=_readme_for("story"))
_KINDS = {"movie": _MOVIE, "story": _STORY}


def _kind(name: str) -> _Kind:
    if name not in _KINDS:
        raise ValueError(f"unknown naturalistic demo kind {name!r} (one of {', '.join(_KINDS)})")
    return _KINDS[name]


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------


def _make(kind: _Kind, directory: Path, n_subjects: int, n_runs: int, seed: int, overwrite: bool,
          seconds_per_run: float) -> Path:
    n_vols = _n_vols(seconds_per_run)
    directory = _start_dataset(directory, n_subjects, n_runs, overwrite)
    rng = np.random.default_rng(seed)
    runs = run_stimuli(n_runs)
    n_distinct = max(runs) + 1
    distinct_events = kind.write_stimuli(directory, n_distinct, seconds_per_run, rng)
    timelines = kind.timelines(directory, distinct_events, kind.planted_layers)
    components = _tr_components(timelines, kind.planted_layers, runs, n_vols, kind.normalize, kind.n_components)
    subjects = _write_dataset_files(directory, kind.description, kind.task, seed, n_subjects, kind.events_sidecar)
    brain = _brain_mask()
    rois = _roi_masks(brain)
    _write_atlas(directory / "derivatives" / "rois", rois, _affine())
    for subject in subjects:
        sub_rng = np.random.default_rng([seed, int(subject)])
        signal = _subject_signal(components, kind.planted, brain, rois, sub_rng)
        for run, unique in enumerate(runs, start=1):
            bold, confounds = _bold_and_confounds(kind.signal_psc * signal[run - 1], sub_rng)
            _write_run(directory, subject, kind.task, run, distinct_events[unique], bold, confounds, brain)
    (directory / "code").mkdir(exist_ok=True)
    (directory / "code" / "spec.yaml").write_text(kind.spec)
    (directory / "README.md").write_text(kind.readme(n_subjects, n_runs, seed, seconds_per_run, rois))
    (directory / ".bidsignore").write_text("code/\n")
    return directory


def make_movie_dataset(directory: Path, n_subjects: int = NATURALISTIC_SUBJECTS, n_runs: int = NATURALISTIC_RUNS,
                       seed: int = 0, overwrite: bool = False, seconds_per_run: float = SECONDS_PER_RUN) -> Path:
    """Write the movie demo: films, fMRIPrep-style BOLD with planted AlexNet-layer time series,
    the ROI atlas and ``code/spec.yaml`` (``design: naturalistic``).

    Parameters
    ----------
    directory : Path
        Target folder (created; must be empty unless ``overwrite``).
    n_subjects, n_runs : int
        Participants (at least 2) and runs per participant; the last run repeats the first's film.
    seed : int
        Seed of every random choice (films, voxel weights, noise).
    overwrite : bool
        Replace an existing demo dataset in ``directory``.
    seconds_per_run : float
        Length of each film and run (a multiple of the TR, at least 16 s).

    Returns
    -------
    Path
        The dataset folder.
    """
    return _make(_MOVIE, directory, n_subjects, n_runs, seed, overwrite, seconds_per_run)


def make_story_dataset(directory: Path, n_subjects: int = NATURALISTIC_SUBJECTS, n_runs: int = NATURALISTIC_RUNS,
                       seed: int = 0, overwrite: bool = False, seconds_per_run: float = SECONDS_PER_RUN) -> Path:
    """Write the story demo: words with onsets in the events, fMRIPrep-style BOLD with planted
    hidden-state time series of the tiny text model (``code/models/textnet``), the ROI atlas and
    ``code/spec.yaml`` (``design: naturalistic``, ``word_column: word``).

    Parameters
    ----------
    directory : Path
        Target folder (created; must be empty unless ``overwrite``).
    n_subjects, n_runs : int
        Participants (at least 2) and runs per participant; the last run repeats the first's story.
    seed : int
        Seed of every random choice (stories, voxel weights, noise).
    overwrite : bool
        Replace an existing demo dataset in ``directory``.
    seconds_per_run : float
        Length of each run (a multiple of the TR, at least 16 s).

    Returns
    -------
    Path
        The dataset folder.
    """
    return _make(_STORY, directory, n_subjects, n_runs, seed, overwrite, seconds_per_run)


# ---------------------------------------------------------------------------------------
# The planted truth of a written dataset
# ---------------------------------------------------------------------------------------


def _dataset_runs(directory: Path, task: str) -> tuple[list[pd.DataFrame], int]:
    """sub-01's events per run (every participant has the same) and the volumes per run."""
    func = Path(directory) / "sub-01" / "func"
    n_runs = len(list(func.glob(f"sub-01_task-{task}_run-*_events.tsv")))
    if not n_runs:
        raise FileNotFoundError(f"{directory} has no task-{task} runs of sub-01")
    events = [pd.read_csv(func / f"sub-01_task-{task}_run-{r}_events.tsv", sep="\t", keep_default_na=False,
                          na_values=["n/a"]) for r in range(1, n_runs + 1)]
    confounds = (Path(directory) / "derivatives" / "fmriprep" / "sub-01" / "func"
                 / f"sub-01_task-{task}_run-1_desc-confounds_timeseries.tsv")
    return events, len(pd.read_csv(confounds, sep="\t"))


def timeline_features(directory: Path, kind: str,
                      layers: list[str] | None = None) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The model features on the timeline of each distinct film / story of a written demo dataset,
    computed with the pipeline's own loading and extraction (as the dataset was made).

    Parameters
    ----------
    directory : Path
        A dataset of :func:`make_movie_dataset` or :func:`make_story_dataset`.
    kind : {"movie", "story"}
    layers : list of str, optional
        Default: the planted layers (:data:`MOVIE_PLANTED` / :data:`STORY_PLANTED`).

    Returns
    -------
    list of (numpy.ndarray, dict of str to numpy.ndarray)
        Per distinct film / story (in the order of :func:`run_stimuli`): the sample times (s from
        the run's onset; frames at ``k / MOVIE_SAMPLE_FPS``, or the words' onsets), shape
        (n_samples,), and per layer the features, (n_samples, n_units) float64.
    """
    spec = _kind(kind)
    layers = spec.planted_layers if layers is None else list(layers)
    events, _ = _dataset_runs(directory, spec.task)
    distinct = events[:max(run_stimuli(len(events))) + 1]
    timelines = spec.timelines(Path(directory), distinct, layers)
    return [(tl.times, tl.features) for tl in timelines]


def planted_tr_features(directory: Path, kind: str,
                        timelines: list[tuple[np.ndarray, dict[str, np.ndarray]]] | None = None
                        ) -> dict[str, list[np.ndarray]]:
    """The planted layers' principal components at the acquisition times, as the signal uses them.

    Parameters
    ----------
    directory : Path
        A dataset of :func:`make_movie_dataset` or :func:`make_story_dataset`.
    kind : {"movie", "story"}
    timelines : list, optional
        :func:`timeline_features` of the dataset (with at least the planted layers), if already
        computed.

    Returns
    -------
    dict of str to list of numpy.ndarray
        Planted layer -> per run (n_vols, n_components): the Lanczos-resampled components
        (:data:`MOVIE_COMPONENTS` / :data:`STORY_COMPONENTS`), z-scored within the run (not
        delayed). The last run's equals the first's.
    """
    spec = _kind(kind)
    events, n_vols = _dataset_runs(directory, spec.task)
    timelines = timeline_features(directory, kind) if timelines is None else timelines
    return _tr_components([_Timeline(times, features) for times, features in timelines], spec.planted_layers,
                          run_stimuli(len(events)), n_vols, spec.normalize, spec.n_components)


def planted_timeseries(directory: Path, kind: str, subjects: list[str], seed: int = 0,
                       components: dict[str, list[np.ndarray]] | None = None) -> dict[str, list[np.ndarray]]:
    """The planted (noise-free) signal of a written demo dataset, per subject and run.

    Parameters
    ----------
    directory : Path
        A dataset of :func:`make_movie_dataset` or :func:`make_story_dataset`.
    kind : {"movie", "story"}
    subjects : list of str
        Labels without ``sub-``.
    seed : int
        The seed the dataset was made with.
    components : dict, optional
        :func:`planted_tr_features` of the dataset, if already computed.

    Returns
    -------
    dict of str to list of numpy.ndarray
        subject -> per run (n_vols,) + SHAPE volumes in percent signal change (the BOLD's
        ``signal`` term; 0 outside the signal ROIs and in ``control``).
    """
    spec = _kind(kind)
    components = planted_tr_features(directory, kind) if components is None else components
    brain = _brain_mask()
    rois = _roi_masks(brain)
    brain_index = np.flatnonzero(brain.ravel())
    out = {}
    for subject in subjects:
        signal = _subject_signal(components, spec.planted, brain, rois, np.random.default_rng([seed, int(subject)]))
        volumes = []
        for values in signal:
            volume = np.zeros((values.shape[0], int(np.prod(SHAPE))))
            volume[:, brain_index] = spec.signal_psc * values
            volumes.append(volume.reshape((values.shape[0],) + SHAPE))
        out[subject] = volumes
    return out
