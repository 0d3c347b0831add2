"""Language and sound demos (``bids_dnn demo DIR --kind text|audio``): the image demo's BOLD
simulation, ROIs and runs, with procedurally made sentences or sounds whose responses follow
layers of a tiny random-init Hugging Face model whose folder (configuration and tokenizer or
feature extractor, no weights) is written into the dataset's ``code/models/``.

What is planted (also written to each dataset's README):

- text: 24 sentences in 4 topics (animals, tools, food, places), one ``.txt`` file each, built
  from a small grammar; the model is a 4-block BERT-style encoder (hidden size 64) with a
  WordPiece tokenizer trained on the sentences (``code/models/textnet``), features are the mean
  over each sentence's tokens; ROI ``early`` follows ``hidden_states.1``, ``late`` follows
  ``hidden_states.4``, ``control`` carries no signal.
- audio: 24 one-second sounds at 16 kHz in 4 kinds (tones, frequency sweeps, band-limited noise,
  pulse trains), WAV files; the model is a 4-block wav2vec 2.0-style encoder
  (``code/models/audionet``), features the mean over frames; ``early`` follows
  ``hidden_states.0`` (the convolutional features), ``late`` ``hidden_states.4``.

The models' weights are a wider random initialisation than transformers' default (see
:mod:`bids_dnn.dnn.demo_models`), so that layers differ.

This module is not imported by the pipeline.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from bids_dnn.workflows.demo import (AR1_RHO, NOISE_SD_PSC, SIGNAL_DIMENSIONS, SIGNAL_PSC, SPACE, T_R, DemoKind,
                                     N_PER_CATEGORY)

__all__ = ["TEXT_DEMO", "AUDIO_DEMO", "TEXT_PLANTED", "AUDIO_PLANTED", "TEXT_LAYERS", "AUDIO_LAYERS",
           "TEXT_TOPICS", "SOUND_KINDS", "write_sentences", "write_sounds"]

TEXT_TOPICS = ("animals", "tools", "food", "places")
SOUND_KINDS = ("tone", "sweep", "noise", "pulses")
TEXT_PLANTED = {"early": "hidden_states.1", "late": "hidden_states.4", "control": None}
AUDIO_PLANTED = {"early": "hidden_states.0", "late": "hidden_states.4", "control": None}
TEXT_LAYERS = [f"hidden_states.{k}" for k in range(5)]
AUDIO_LAYERS = [f"hidden_states.{k}" for k in range(5)]
TEXT_MODEL_FOLDER = "models/textnet"
AUDIO_MODEL_FOLDER = "models/audionet"
SAMPLE_RATE = 16_000

_NOUNS = {
    "animals": ["dog", "cat", "horse", "rabbit", "fox", "sparrow", "goat", "owl"],
    "tools": ["hammer", "saw", "wrench", "drill", "shovel", "chisel", "ladder", "rake"],
    "food": ["bread", "soup", "apple", "cheese", "cake", "rice", "pepper", "honey"],
    "places": ["harbour", "village", "forest", "station", "market", "valley", "library", "bridge"],
}
_VERBS = {
    "animals": ["runs", "sleeps", "jumps", "hides", "eats", "watches"],
    "tools": ["lies", "hangs", "breaks", "rests", "shines", "waits"],
    "food": ["cools", "smells", "sits", "bakes", "waits", "spoils"],
    "places": ["stands", "sleeps", "glows", "waits", "opens", "grows"],
}
_ADJECTIVES = ["small", "old", "quiet", "bright", "heavy", "warm", "tiny", "grey", "sweet", "wide"]
_ENDINGS = ["in the morning", "near the river", "after the rain", "under the old roof", "by the door",
            "all day long", "at night", "in the cold wind"]


def sentence(topic: str, rng: np.random.Generator) -> str:
    """One sentence about ``topic`` (lower case, ends with a full stop)."""
    noun = rng.choice(_NOUNS[topic])
    return (f"the {rng.choice(_ADJECTIVES)} {noun} {rng.choice(_VERBS[topic])} "
            f"{rng.choice(_ENDINGS)}, and the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS[topic])} stays.")


def _corpus() -> list[str]:
    """Every word the grammar uses (the tokenizer's training text, independent of the draws)."""
    words = [*(w for ws in _NOUNS.values() for w in ws), *(w for ws in _VERBS.values() for w in ws), *_ADJECTIVES,
             *_ENDINGS, "the and stays ."]
    return [" ".join(words)] * 3


def write_sentences(folder: Path, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Write the sentence files; returns (file under stimuli/, topic) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for topic in TEXT_TOPICS:
        for index in range(N_PER_CATEGORY):
            name = f"{topic}{index + 1:02d}.txt"
            (folder / name).write_text(sentence(topic, rng) + "\n", encoding="utf-8")
            out.append((name, topic))
    return out


def sound(kind: str, rng: np.random.Generator, seconds: float = 1.0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """One sound (n_samples,) in [-1, 1]: a tone, a sweep, band-limited noise or a pulse train."""
    t = np.arange(int(seconds * rate)) / rate
    if kind == "tone":
        f0 = rng.uniform(200, 1200)
        wave_ = np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(2 * np.pi * 2 * f0 * t)
    elif kind == "sweep":
        f0, f1 = rng.uniform(150, 600), rng.uniform(1500, 4000)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
        wave_ = np.sin(phase if rng.random() < 0.5 else phase[::-1])
    elif kind == "noise":
        spectrum = np.fft.rfft(rng.standard_normal(t.size))
        freqs = np.fft.rfftfreq(t.size, 1 / rate)
        low = rng.uniform(300, 2000)
        spectrum[(freqs < low) | (freqs > low * 2)] = 0
        wave_ = np.fft.irfft(spectrum, n=t.size)
    elif kind == "pulses":
        rate_hz = rng.uniform(4, 20)
        carrier = np.sin(2 * np.pi * rng.uniform(300, 900) * t)
        wave_ = carrier * (np.sin(2 * np.pi * rate_hz * t) > 0.6)
    else:
        raise ValueError(f"unknown sound kind {kind}")
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms on / off ramps
    wave_ = wave_ * ramp
    return 0.8 * wave_ / np.max(np.abs(wave_))


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono WAV (the standard library's ``wave``)."""
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())


def write_sounds(folder: Path, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Write the sound files; returns (file under stimuli/, kind) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for kind in SOUND_KINDS:
        for index in range(N_PER_CATEGORY):
            name = f"{kind}{index + 1:02d}.wav"
            write_wav(folder / name, sound(kind, rng))
            out.append((name, kind))
    return out


def _prepare_text(directory: Path) -> None:
    from bids_dnn.dnn.demo_models import write_text_model

    write_text_model(directory / "code" / TEXT_MODEL_FOLDER, _corpus())


def _prepare_audio(directory: Path) -> None:
    from bids_dnn.dnn.demo_models import write_audio_model

    write_audio_model(directory / "code" / AUDIO_MODEL_FOLDER)


def _model_spec(directory: Path, folder: str, label: str, layers: list[str]):  # noqa: ANN202 - a ModelSpec
    from bids_dnn.spec import ModelSpec

    return ModelSpec(name=str(directory / "code" / folder), label=label, source="huggingface", weights="random",
                     init_seed=0, layers=layers, pooling="mean")


def hf_planted_features(spec, items: list, layers: list[str]) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Features of ``layers`` through the pipeline's own Hugging Face loading and extraction."""
    from bids_dnn.dnn.hf_extract import extract_hf_features
    from bids_dnn.dnn.models import load_model

    loaded = load_model(spec)
    chunks: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}

    def keep(start: int, batch: dict[str, np.ndarray]) -> None:
        for layer, values in batch.items():
            chunks[layer].append(values)

    extract_hf_features(loaded, items, layers, pooling=spec.pooling, batch_size=8, device="cpu", on_batch=keep)
    return {layer: np.concatenate(parts, axis=0).astype(np.float64) for layer, parts in chunks.items()}


def _text_features(directory: Path, paths: list[Path], layers: list[str]) -> dict[str, np.ndarray]:
    from bids_dnn.io.stimulus_loading import load_text

    spec = _model_spec(directory, TEXT_MODEL_FOLDER, "textnet", layers)
    return hf_planted_features(spec, [(lambda p=p: load_text(p)) for p in paths], layers)


def _audio_features(directory: Path, paths: list[Path], layers: list[str]) -> dict[str, np.ndarray]:
    from bids_dnn.io.stimulus_loading import load_audio

    spec = _model_spec(directory, AUDIO_MODEL_FOLDER, "audionet", layers)
    return hf_planted_features(spec, [(lambda p=p: load_audio(p, SAMPLE_RATE).samples) for p in paths], layers)


_SPEC = """\
# bids_dnn analysis spec for the {what} demo dataset (see README.md for the planted truth)
schema_version: 1
models:
  - name: {folder}       # a local Hugging Face folder, relative to this file
    label: {label}
    source: huggingface
    weights: random        # seeded random initialisation: no download needed
    init_seed: 0
    pooling: mean
    layers: [{layers}]
rois:
  atlas: derivatives/rois/space-{space}_atlas-planted_dseg.nii.gz
analyses:
  rsa: {{comparison: spearman, permutations: 1000}}
  encoding: {{enabled: true, cv: kfold, n_folds: 6, inner_folds: 5, alphas: "logspace(-4, 8, 25)", region: rois}}
statistics:
  bootstrap: 1000
  map_permutations: 1000
  seed: 42
"""


def _readme_for(what: str, stimuli: str, model: str, planted: dict[str, str | None], task: str):  # noqa: ANN202
    def readme(n_subjects: int, n_runs: int, seed: int, rois: dict[str, np.ndarray]) -> str:
        rows = "\n".join(f"| {roi} | {int(mask.sum())} | {planted[roi] or 'none (noise only)'} |"
                         for roi, mask in rois.items())
        return f"""# bids_dnn {what} demo dataset (simulated)

Made by `bids_dnn demo --kind {what}` (seed {seed}): {n_subjects} participants x {n_runs} runs of task
`{task}`, {stimuli}, each presented once per run (1 s, jittered 4-7 s onset asynchrony, random order),
plus 3 button presses per run. TR {T_R} s; the brain grid, ROIs and noise are those of the image demo.

## Planted ground truth

The responses follow hidden states of {model} (`code/{'models/textnet' if what == 'text' else 'models/audionet'}`:
configuration and preprocessor only; `weights: random` with `init_seed: 0` builds the same network
everywhere, offline), mean-pooled over each stimulus's tokens or frames:

| ROI | voxels | planted layer |
|---|---|---|
{rows}

Signal ROI voxel responses are random combinations of the first {SIGNAL_DIMENSIONS} principal components of
the row-standardised layer features ({SIGNAL_PSC:g} % signal change per unit, SPM HRF), plus drifts,
motion-like confounds and AR(1) noise (rho {AR1_RHO}, SD {NOISE_SD_PSC:g} %).

Expected results: ROI RSA and encoding rank the planted layer first in `early` and `late` (adjacent
blocks of a random-init transformer are similar, so the neighbours come close); `control` has nothing
significant.

## Files

- `stimuli/`, `sub-XX/func/*_events.tsv` (`stim_file` names the stimulus files)
- `derivatives/fmriprep/`, `derivatives/rois/space-{SPACE}_atlas-planted_dseg.nii.gz`
- `code/spec.yaml` and `code/models/`: the analysis spec and the model folder it names
"""
    return readme


#: 24 sentences, responses following a random-init BERT-style encoder
TEXT_DEMO = DemoKind(
    name="text", task="sentences", description="bids_dnn text demo: planted transformer-layer responses",
    planted=TEXT_PLANTED, write_stimuli=write_sentences, planted_features=_text_features,
    spec=_SPEC.format(what="text", folder=TEXT_MODEL_FOLDER, label="textnet", layers=", ".join(TEXT_LAYERS),
                      space=SPACE),
    readme=_readme_for("text", "24 sentences in 4 topics (" + ", ".join(TEXT_TOPICS) + "), one .txt file each",
                       "a 4-block BERT-style encoder with a WordPiece tokenizer trained on the sentences",
                       TEXT_PLANTED, "sentences"),
    prepare=_prepare_text, stimulus_description="sentence read, a UTF-8 text file relative to stimuli/")

#: 24 sounds, responses following a random-init wav2vec 2.0-style encoder
AUDIO_DEMO = DemoKind(
    name="audio", task="sounds", description="bids_dnn sound demo: planted transformer-layer responses",
    planted=AUDIO_PLANTED, write_stimuli=write_sounds, planted_features=_audio_features,
    spec=_SPEC.format(what="sound", folder=AUDIO_MODEL_FOLDER, label="audionet", layers=", ".join(AUDIO_LAYERS),
                      space=SPACE),
    readme=_readme_for("audio", "24 one-second sounds at 16 kHz in 4 kinds (" + ", ".join(SOUND_KINDS) + ")",
                       "a 4-block wav2vec 2.0-style encoder", AUDIO_PLANTED, "sounds"),
    prepare=_prepare_audio, stimulus_description="sound played, a WAV file relative to stimuli/")
