"""The EEG demo (``bids_dnn demo DIR --kind eeg``): a BIDS EEG dataset whose evoked responses carry
planted DNN-layer representations at known latencies, for ``modality: eeg``.

What is planted (also written to the dataset's README):

- The image demo's 24 procedurally drawn images (:func:`~bids_dnn.workflows.demo.write_stimuli`,
  4 categories), each shown :data:`EEG_REPETITIONS` (24) times per participant in
  block-randomised order (every block shows each image once), the blocks split over the runs;
  stimulus onset asynchrony uniform in :data:`SOA_RANGE` (0.8-1.0 s), onsets on the sample grid.
- 32 EEG channels of the 10-20 system (:data:`CHANNELS`, positions of MNE's ``easycap-M1``
  montage), :data:`SFREQ` 250 Hz, written by MNE-BIDS as BrainVision (pybv). The events
  (``onset``, ``duration``, ``trial_type`` = category, ``value`` = stimulus number, ``sample``,
  ``stim_file``) are both the events.tsv and the BrainVision markers; 3 button presses per run
  (``trial_type`` response, ``stim_file`` n/a) carry no signal.
- The "true" model is the image demo's seeded random-init AlexNet (torchvision, ``init_seed``
  0), its activations extracted with the pipeline's own code
  (:func:`~bids_dnn.workflows.demo.planted_layer_features`). Each trial adds, from its onset,
  ``sum_c SIGNAL_UV * A_c z_c(stimulus) g_c(t)`` over the :data:`PLANTED_COMPONENTS`: ``z_c``
  are the first :data:`~bids_dnn.workflows.demo.SIGNAL_DIMENSIONS` (8) principal-component
  scores of the row-standardised activations of layer ``features.2`` (early, ``g`` a Gaussian
  peaking at 100 ms, SD 20 ms) or ``classifier.4`` (late, 200 ms, SD 25 ms), signs fixed (the
  largest score of each component positive); ``A_c`` is an orthonormal basis of 8 random
  combinations of the 8 smoothest scalp maps (:func:`smooth_topographies`; zero channel mean,
  as average-referenced EEG; drawn per participant), so squared Euclidean distances between a
  component's sensor patterns are those between the scores: the rank-8 approximation of the
  layer's correlation-distance RDM (Spearman 0.95 for ``features.2``, 1.0 for ``classifier.4``).
  The patterns are scaled to SD :data:`SIGNAL_UV` (2 uV) over stimuli and channels at the peak.
  There is no evoked response common to all stimuli: every planted term carries stimulus
  information, and all are exactly 0 before the onset and from :data:`SIGNAL_END` (350 ms) on.
- Background EEG: 1/f noise (power ~ 1/f above 1 Hz), spatially correlated by a random
  per-participant covariance (:func:`noise_covariance`: a smooth scalp kernel, a random
  low-rank part and 15 % independent channel noise), :data:`NOISE_UV` (10 uV) SD per channel:
  single-trial SNR about 0.2 (pattern SD at a peak over the SD of the baseline-corrected noise).

An independent check with the defaults (6 participants x 3 runs, seed 0; the files read back
with ``mne_bids.read_raw_bids`` and the events.tsv, epochs cut and baseline-corrected in numpy,
correlation-distance RDMs of the stimulus-averaged epochs at each 4 ms sample, Spearman with the
layers' correlation-distance RDMs; :data:`CHECK_FIGURES`) measured, averaged over participants:
at 100 ms ``features.2`` 0.40 (per participant 0.35 to 0.49), ``classifier.4`` 0.13; at 200 ms
``classifier.4`` 0.54 (0.49 to 0.62), ``features.2`` 0.14; peaks at 96 and 200 ms; over the
baseline (-100-0 ms) and over 400-600 ms the means lie within +-0.012 and no sample exceeds
0.08 in absolute value (every demo layer). The cross-talk (0.13, 0.14) is that of the planted
geometries: the rank-8 ``features.2`` scores' RDM correlates 0.13 with ``classifier.4``'s RDM
(the full RDMs 0.10). ``features.5`` follows ``features.2`` (RDM Spearman 0.83), ``classifier.1``
and ``features.12`` follow ``classifier.4`` (0.85, 0.72), so their time courses peak with them.
Crossnobis RDMs as the spec asks (numpy; Ledoit-Wolf noise normalisation of the trials'
residuals, 5 folds of trials, every 4 ms sample): ``features.2`` 0.59 at 100 ms (0.51 to 0.70),
``classifier.4`` 0.64 at 200 ms (0.58 to 0.73); a max-t sign-flip test over time (all 64 flips)
gives p < 0.05 from 64 to 116 ms for ``features.2`` and from 176 to 224 ms for ``classifier.4``,
and for no layer before 0 ms or after 224 ms.

This module is not imported by the pipeline.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_dnn.errors import UsageError
from bids_dnn.workflows.demo import (CATEGORIES, DEMO_LAYERS, DEMO_SUBJECTS, N_PER_CATEGORY, SIGNAL_DIMENSIONS,
                                     TASK, _start_dataset, _write_json, planted_layer_features, write_stimuli)
from bids_dnn.workflows.demo_naturalistic import _principal_scores

__all__ = ["CHANNELS", "MONTAGE", "SFREQ", "LINE_FREQ", "EEG_SUBJECTS", "EEG_RUNS", "EEG_REPETITIONS",
           "MIN_REPETITIONS", "SOA_RANGE", "RUN_PADDING_S", "STIMULUS_DURATION", "RESPONSES_PER_RUN",
           "RESPONSE_VALUE", "PlantedComponent", "PLANTED_COMPONENTS", "SIGNAL_UV",
           "SIGNAL_END", "NOISE_UV", "CHECK_FIGURES", "electrode_directions", "smooth_topographies",
           "temporal_profile", "template_times", "stimulus_scores", "subject_templates", "noise_covariance",
           "pink_noise", "trial_schedule", "DEMO_EEG_SPEC", "planted_templates", "make_eeg_dataset"]

#: the 32 channels (the common 32-channel 10-20 layout); FCz and AFz, the usual reference and
#: ground of this layout, are not among them
CHANNELS = ("Fp1", "Fz", "F3", "F7", "FT9", "FC5", "FC1", "C3", "T7", "TP9", "CP5", "CP1", "Pz", "P3", "P7",
            "O1", "Oz", "O2", "P4", "P8", "TP10", "CP6", "CP2", "Cz", "C4", "T8", "FT10", "FC6", "FC2", "F4",
            "F8", "Fp2")
#: MNE's built-in montage that gives the channel positions
MONTAGE = "easycap-M1"
SFREQ = 250.0
LINE_FREQ = 50.0
#: participants and runs by default (participants as the image demo: with 2^6 sign flips a group
#: test over time can reach p < 0.05; with 4 the smallest p is 1/16)
EEG_SUBJECTS = DEMO_SUBJECTS
EEG_RUNS = 3
#: presentations of each image per participant (split over the runs), and the fewest allowed
#: (5-fold cross-validated distances need one presentation per fold)
EEG_REPETITIONS = 24
MIN_REPETITIONS = 5
#: stimulus onset asynchrony (s), uniform
SOA_RANGE = (0.8, 1.0)
#: seconds of recording before the first and after the last stimulus of a run
RUN_PADDING_S = 2.0
#: how long each image stays on screen (s); the events' duration
STIMULUS_DURATION = 0.2
#: button presses per run (events without a stimulus, 0.45-0.65 s after a random stimulus)
RESPONSES_PER_RUN = 3
RESPONSE_VALUE = 99


@dataclass(frozen=True)
class PlantedComponent:
    """One stimulus-specific evoked component: a layer's representation at a latency.

    Attributes
    ----------
    layer : str
        The AlexNet layer whose principal-component scores the sensor patterns carry.
    peak_s, width_s : float
        Mean and SD (s) of the Gaussian time course after the stimulus onset.
    """

    layer: str
    peak_s: float
    width_s: float


#: the planted representations: early visual (pooling stage 1) at 100 ms, late (second fully
#: connected layer) at 200 ms
PLANTED_COMPONENTS = (PlantedComponent("features.2", 0.100, 0.020),
                      PlantedComponent("classifier.4", 0.200, 0.025))
#: SD (uV) over stimuli and channels of a component's sensor patterns at its peak
SIGNAL_UV = 2.0
#: every stimulus-related term is 0 from this time (s) after the onset
SIGNAL_END = 0.35
#: SD (uV) of the background EEG per channel
NOISE_UV = 10.0
#: 1/f noise: flat below this frequency (Hz), no DC
_PINK_FLOOR_HZ = 1.0
#: length scales (unit-sphere radii) of the smooth topographies and of the noise's spatial kernel
_TOPOGRAPHY_LENGTH = 0.6
_NOISE_LENGTH = 0.6
#: shares of the noise covariance: smooth kernel, random low-rank part, independent channel noise
_NOISE_SHARES = (0.6, 0.25, 0.15)
_NOISE_RANK = 6

#: the independent check's figures with the defaults (6 participants x 3 runs, seed 0), written to the
#: README: Spearman between the layers' correlation-distance RDMs and the correlation-distance RDMs
#: of the stimulus-averaged epochs, mean over participants (range: per participant); quiet: the
#: largest absolute mean and the largest absolute sample over the baseline and 400-600 ms
CHECK_FIGURES = {
    "early_at_100": 0.40, "early_range_100": (0.35, 0.49), "late_at_100": 0.13,
    "late_at_200": 0.54, "late_range_200": (0.49, 0.62), "early_at_200": 0.14,
    "early_peak_ms": 96, "late_peak_ms": 200, "quiet_mean": 0.012, "quiet_max": 0.08,
    # crossnobis as the spec asks (Ledoit-Wolf noise normalisation, 5 folds of trials, 4 ms samples):
    # Spearman at the peaks and where a max-t sign-flip test over time (all 64 flips) gives p < 0.05
    "crossnobis_early_at_100": 0.59, "crossnobis_late_at_200": 0.64,
    "maxt_early_ms": (64, 116), "maxt_late_ms": (176, 224),
}


# ---------------------------------------------------------------------------------------
# Space and time
# ---------------------------------------------------------------------------------------


def electrode_directions() -> np.ndarray:
    """Unit vectors (n_channels, 3) from the head's centre to each of :data:`CHANNELS`
    (positions of the :data:`MONTAGE` montage)."""
    import mne

    positions = mne.channels.make_standard_montage(MONTAGE).get_positions()["ch_pos"]
    xyz = np.array([positions[name] for name in CHANNELS], dtype=np.float64)
    return xyz / np.linalg.norm(xyz, axis=1, keepdims=True)


def _scalp_kernel(directions: np.ndarray, length: float) -> np.ndarray:
    """Squared-exponential kernel (n_channels, n_channels) of the chord distances on the unit sphere."""
    squared = ((directions[:, None, :] - directions[None, :, :]) ** 2).sum(axis=-1)
    return np.exp(-squared / (2.0 * length**2))


def smooth_topographies(directions: np.ndarray, n_maps: int, rng: np.random.Generator,
                        n_modes: int = SIGNAL_DIMENSIONS, length: float = _TOPOGRAPHY_LENGTH) -> np.ndarray:
    """An orthonormal basis of ``n_maps`` spatially smooth random topographies.

    The smoothest maps over the scalp are the leading eigenvectors ("modes") of a
    squared-exponential kernel of the electrodes' chord distances (length scale ``length`` on
    the unit sphere), centred over channels (``H K H``, ``H = I - 11^T / n``) so that every map
    sums to 0 over the channels, as average-referenced EEG does (the leading mode of the
    uncentred kernel is nearly constant, a pattern that a correlation distance, which subtracts
    each pattern's channel mean, would not see). Gaussian random maps are projected onto the
    first ``n_modes`` modes and orthonormalised (QR, signs fixed so that R's diagonal is
    positive). The projector, unlike the eigenvectors, has no sign or order ambiguity, so every
    LAPACK gives the same maps. A projection through the columns keeps Euclidean distances.

    Parameters
    ----------
    directions : numpy.ndarray, shape (n_channels, 3)
        Unit vectors of the electrodes (:func:`electrode_directions`).
    n_maps : int
        Topographies (at most ``n_modes``).
    rng : numpy.random.Generator
        Draws the random maps.
    n_modes : int
        Smooth modes the maps are combinations of.
    length : float
        Length scale of the kernel.

    Returns
    -------
    numpy.ndarray, shape (n_channels, n_maps)
        Orthonormal columns.
    """
    if not 1 <= n_maps <= n_modes <= directions.shape[0]:
        raise ValueError(f"need 1 <= n_maps ({n_maps}) <= n_modes ({n_modes}) <= channels ({directions.shape[0]})")
    centring = np.eye(directions.shape[0]) - 1.0 / directions.shape[0]
    _, vectors = np.linalg.eigh(centring @ _scalp_kernel(directions, length) @ centring)
    modes = vectors[:, ::-1][:, :n_modes]
    q, r = np.linalg.qr(modes @ (modes.T @ rng.standard_normal((directions.shape[0], n_maps))))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def template_times(sfreq: float = SFREQ) -> np.ndarray:
    """Times (s) after a stimulus onset at which a trial's evoked response is added: the samples
    of 0 to :data:`SIGNAL_END`, shape (n_kernel,)."""
    return np.arange(int(np.ceil(SIGNAL_END * sfreq))) / sfreq


def temporal_profile(times: np.ndarray, peak_s: float, width_s: float) -> np.ndarray:
    """A Gaussian time course (peak 1) that is exactly 0 before 0 s and from :data:`SIGNAL_END` on.

    Parameters
    ----------
    times : numpy.ndarray, shape (n_times,)
        Seconds after the stimulus onset.
    peak_s, width_s : float
        Mean and SD (s).

    Returns
    -------
    numpy.ndarray, shape (n_times,)
    """
    times = np.asarray(times, dtype=np.float64)
    inside = (times >= 0.0) & (times < SIGNAL_END)
    return np.where(inside, np.exp(-0.5 * ((times - peak_s) / width_s) ** 2), 0.0)


# ---------------------------------------------------------------------------------------
# The planted responses
# ---------------------------------------------------------------------------------------


def stimulus_scores(features: dict[str, np.ndarray],
                    components: tuple[PlantedComponent, ...] = PLANTED_COMPONENTS) -> dict[str, np.ndarray]:
    """The planted layers' principal-component scores.

    Parameters
    ----------
    features : dict of str to numpy.ndarray
        Layer -> activations (n_stimuli, n_units), at least the components' layers.
    components : tuple of PlantedComponent

    Returns
    -------
    dict of str to numpy.ndarray
        Layer -> (n_stimuli, SIGNAL_DIMENSIONS) scores of the row-standardised activations, centred
        over stimuli, each component's largest absolute score positive (as
        :func:`~bids_dnn.workflows.demo.true_patterns`, with fixed signs).
    """
    return {c.layer: _principal_scores(features[c.layer], SIGNAL_DIMENSIONS) for c in components}


def subject_templates(scores: dict[str, np.ndarray], directions: np.ndarray, sub_rng: np.random.Generator,
                      components: tuple[PlantedComponent, ...] = PLANTED_COMPONENTS,
                      sfreq: float = SFREQ) -> np.ndarray:
    """One participant's noise-free evoked response to each stimulus; draws from ``sub_rng`` first.

    Parameters
    ----------
    scores : dict of str to numpy.ndarray
        :func:`stimulus_scores`: layer -> (n_stimuli, k).
    directions : numpy.ndarray, shape (n_channels, 3)
        :func:`electrode_directions`.
    sub_rng : numpy.random.Generator
        Draws each component's topographies.
    components : tuple of PlantedComponent
    sfreq : float
        Sampling rate of the templates (Hz).

    Returns
    -------
    numpy.ndarray, shape (n_stimuli, n_channels, n_kernel)
        Volts, at :func:`template_times`: ``SIGNAL_UV * A_c z_c g_c(t)`` summed over components
        (each component's patterns z_c A_c^T scaled to SD 1 over stimuli and channels).
    """
    times = template_times(sfreq)
    n_stimuli = next(iter(scores.values())).shape[0]
    templates = np.zeros((n_stimuli, directions.shape[0], times.size))
    for component in components:
        z = scores[component.layer]
        patterns = z @ smooth_topographies(directions, z.shape[1], sub_rng).T
        patterns -= patterns.mean(axis=0, keepdims=True)
        patterns /= patterns.std()
        profile = temporal_profile(times, component.peak_s, component.width_s)
        templates += SIGNAL_UV * 1e-6 * patterns[:, :, None] * profile[None, None, :]
    return templates


def noise_covariance(directions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random spatial covariance of the background EEG, unit mean variance.

    ``0.6 K + 0.25 B B^T / rank + 0.15 I`` (each term with unit mean diagonal): K a smooth scalp
    kernel, B (n_channels, 6) Gaussian.

    Parameters
    ----------
    directions : numpy.ndarray, shape (n_channels, 3)
    rng : numpy.random.Generator
        Draws B.

    Returns
    -------
    numpy.ndarray, shape (n_channels, n_channels)
        Symmetric positive definite.
    """
    n = directions.shape[0]
    smooth, low_rank, independent = _NOISE_SHARES
    loadings = rng.standard_normal((n, _NOISE_RANK))
    random_part = loadings @ loadings.T
    random_part /= np.trace(random_part) / n
    return smooth * _scalp_kernel(directions, _NOISE_LENGTH) + low_rank * random_part + independent * np.eye(n)


def pink_noise(n_samples: int, n_signals: int, rng: np.random.Generator, sfreq: float = SFREQ) -> np.ndarray:
    """Independent 1/f noise signals: white Gaussian noise shaped in the frequency domain to power
    ~ 1/f above 1 Hz (flat below, no DC), each scaled to SD 1. The noise is drawn at the next
    length that the FFT factors fast (:func:`scipy.fft.next_fast_len`) and cut to ``n_samples``.

    Parameters
    ----------
    n_samples, n_signals : int
    rng : numpy.random.Generator
    sfreq : float

    Returns
    -------
    numpy.ndarray, shape (n_samples, n_signals)
    """
    from scipy.fft import next_fast_len

    n_drawn = next_fast_len(int(n_samples), real=True)
    spectrum = np.fft.rfft(rng.standard_normal((n_drawn, n_signals)), axis=0)
    frequencies = np.fft.rfftfreq(n_drawn, 1.0 / sfreq)
    spectrum *= (1.0 / np.sqrt(np.maximum(frequencies, _PINK_FLOOR_HZ)))[:, None]
    spectrum[0] = 0.0
    signals = np.fft.irfft(spectrum, n_drawn, axis=0)[:n_samples]
    return signals / signals.std(axis=0, keepdims=True)


# ---------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------


def trial_schedule(n_stimuli: int, repetitions: int, n_runs: int, rng: np.random.Generator,
                   sfreq: float = SFREQ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The stimulus order and onset samples of one participant's runs.

    ``repetitions`` blocks, each a random permutation of the stimuli; block b goes to run
    ``b % n_runs`` (so each run shows every stimulus ``repetitions // n_runs`` or one more
    times). A run's first onset is at :data:`RUN_PADDING_S`; onset asynchronies are uniform in
    :data:`SOA_RANGE`, each onset rounded to a sample.

    Parameters
    ----------
    n_stimuli, repetitions, n_runs : int
    rng : numpy.random.Generator
    sfreq : float

    Returns
    -------
    list of (numpy.ndarray, numpy.ndarray)
        Per run: stimulus indices (n_trials,) and onset samples (n_trials,) int64, increasing.
    """
    blocks = [rng.permutation(n_stimuli) for _ in range(repetitions)]
    runs = []
    for run in range(n_runs):
        order = np.concatenate(blocks[run::n_runs])
        asynchronies = rng.uniform(*SOA_RANGE, size=order.size - 1)
        onsets = np.round((RUN_PADDING_S + np.r_[0.0, np.cumsum(asynchronies)]) * sfreq).astype(np.int64)
        runs.append((order, onsets))
    return runs


def _events_table(order: np.ndarray, onsets: np.ndarray, stimuli: list[tuple[str, str]], rng: np.random.Generator,
                  sfreq: float) -> pd.DataFrame:
    """A run's events (stimuli and button presses), by onset: columns onset, duration, trial_type,
    value, sample, stim_file."""
    pressed = np.sort(rng.choice(order.size, size=min(RESPONSES_PER_RUN, order.size), replace=False))
    press_samples = onsets[pressed] + np.round(rng.uniform(0.45, 0.65, size=pressed.size) * sfreq).astype(np.int64)
    table = pd.DataFrame({
        "sample": np.r_[onsets, press_samples],
        "duration": np.r_[np.full(order.size, STIMULUS_DURATION), np.zeros(pressed.size)],
        "trial_type": [stimuli[i][1] for i in order] + ["response"] * pressed.size,
        "value": np.r_[order + 1, np.full(pressed.size, RESPONSE_VALUE)].astype(np.int64),
        "stim_file": [stimuli[i][0] for i in order] + ["n/a"] * pressed.size,
    }).sort_values("sample", kind="stable").reset_index(drop=True)
    table["onset"] = table["sample"] / sfreq
    return table[["onset", "duration", "trial_type", "value", "sample", "stim_file"]]


def _simulate_run(templates: np.ndarray, order: np.ndarray, onsets: np.ndarray, root_cov: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """EEG (n_channels, n_samples) in volts: background noise plus each trial's template."""
    n_samples = int(onsets[-1] + templates.shape[2] + round(RUN_PADDING_S * SFREQ))
    data = NOISE_UV * 1e-6 * (pink_noise(n_samples, root_cov.shape[0], rng) @ root_cov.T).T
    span = templates.shape[2]
    for stimulus, onset in zip(order, onsets):
        data[:, onset:onset + span] += templates[stimulus]
    return data


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


_EVENT_COLUMNS = {
    "trial_type": "stimulus category (disc, grating, checker, texture), or 'response' for a button press",
    "stim_file": "image shown, relative to stimuli/ ('n/a' for a button press)",
}


def _write_run(directory: Path, subject: str, run: int, data: np.ndarray, events: pd.DataFrame) -> None:
    """One run as BrainVision through MNE-BIDS, the events as its markers and its events.tsv."""
    import mne
    from mne_bids import BIDSPath, write_raw_bids

    info = mne.create_info(list(CHANNELS), SFREQ, "eeg")
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_montage(MONTAGE, verbose="error")
    raw.info["line_freq"] = LINE_FREQ
    descriptions = [f"{t}/{v}" for t, v in zip(events["trial_type"], events["value"])]
    raw.set_annotations(mne.Annotations(events["onset"].to_numpy(), events["duration"].to_numpy(), descriptions))
    event_id = dict(zip(descriptions, events["value"].astype(int)))
    bids_path = BIDSPath(subject=subject, task=TASK, run=run, datatype="eeg", root=directory)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onverting data files to BrainVision.*")
        warnings.filterwarnings("ignore", message=".*[Ee]ncountered data in .* format.*")
        write_raw_bids(raw, bids_path, event_id=event_id, event_metadata=events[list(_EVENT_COLUMNS)],
                       extra_columns_descriptions=_EVENT_COLUMNS, format="BrainVision", allow_preload=True,
                       readme=False, verbose="error")
    # the events.tsv as planned (MNE-BIDS writes the same onsets and samples, but durations of 0
    # and the columns in its own order)
    tsv = bids_path.copy().update(suffix="events", extension=".tsv").fpath
    written = pd.read_csv(tsv, sep="\t", keep_default_na=False)
    if not np.array_equal(written["sample"].to_numpy(dtype=np.int64), events["sample"].to_numpy()):
        raise RuntimeError(f"MNE-BIDS wrote other event samples to {tsv}")  # pragma: no cover
    table = events.copy()
    table["onset"] = [f"{x:.4f}" for x in table["onset"]]
    table["duration"] = [f"{x:.3f}" for x in table["duration"]]
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")


def _write_dataset_files(directory: Path, seed: int, n_subjects: int, repetitions: int) -> None:
    _write_json(directory / "dataset_description.json", {
        "Name": "bids_dnn EEG demo: planted DNN-layer representations over time", "BIDSVersion": "1.10.0",
        "DatasetType": "raw", "License": "CC0", "Authors": ["bids_dnn (simulated)"],
        "GeneratedBy": [{"Name": "bids_dnn demo", "Description": f"--kind eeg, seed {seed}"}]})
    participants = pd.DataFrame({"participant_id": [f"sub-{i + 1:02d}" for i in range(n_subjects)]})
    participants.to_csv(directory / "participants.tsv", sep="\t", index=False)
    _write_json(directory / "participants.json", {
        "participant_id": {"Description": f"simulated participant, {repetitions} presentations of each image"}})


def _update_sidecars(directory: Path, subject: str, run: int) -> None:
    """Say in the EEG sidecar what the recording is."""
    from mne_bids import BIDSPath, update_sidecar_json

    sidecar = BIDSPath(subject=subject, task=TASK, run=run, datatype="eeg", suffix="eeg", extension=".json",
                       root=directory)
    update_sidecar_json(sidecar, {
        "TaskDescription": "passive viewing of 24 drawn images, each shown repeatedly, with occasional button "
                           "presses (simulated)",
        "EEGPlacementScheme": "10-20 (32 channels)", "CapManufacturer": "n/a (simulated)",
        "InstitutionName": "n/a (simulated by bids_dnn demo)"}, verbose="error")


DEMO_EEG_SPEC = f"""\
# bids_dnn analysis spec for the EEG demo dataset (see README.md for the planted truth)
schema_version: 1
modality: eeg
models:
  - name: alexnet
    weights: random        # seeded random initialisation: no download needed
    init_seed: 0
    layers: [{", ".join(DEMO_LAYERS)}]
meeg:
  tmin: -0.1
  tmax: 0.6
  baseline: [null, 0]
  h_freq: 40
  resample_hz: 100         # 10 ms steps: 71 time points per epoch
  rdm: crossnobis
  folds: 5
analyses:
  rsa: {{comparison: spearman, permutations: 200}}
statistics:
  bootstrap: 200
  seed: 42
"""


def _readme(n_subjects: int, n_runs: int, seed: int, repetitions: int) -> str:
    f = CHECK_FIGURES
    defaults = f"the defaults: {EEG_SUBJECTS} participants x {EEG_RUNS} runs, {EEG_REPETITIONS} presentations, seed 0"
    early_range = f"{f['early_range_100'][0]:.2f} to {f['early_range_100'][1]:.2f}"
    late_range = f"{f['late_range_200'][0]:.2f} to {f['late_range_200'][1]:.2f}"
    cn_early, cn_late = f"{f['crossnobis_early_at_100']:.2f}", f"{f['crossnobis_late_at_200']:.2f}"
    maxt_early, maxt_late = (f"{f[key][0]} to {f[key][1]}" for key in ("maxt_early_ms", "maxt_late_ms"))
    smallest_p = 2.0 ** -n_subjects
    fwe = (f"with {n_subjects} participants the smallest sign-flip p over time is\n"
           f"1/2^{n_subjects} = {smallest_p:.3g}, "
           + ("so the planted clusters can reach p < 0.05." if smallest_p < 0.05 else
              "above 0.05: no cluster can be significant with exact sign flips\n(use 5 or more participants)."))
    early, late = PLANTED_COMPONENTS
    return f"""# bids_dnn EEG demo dataset (simulated)

Made by `bids_dnn demo --kind eeg` (seed {seed}): {n_subjects} participants x {n_runs} runs of task `{TASK}`,
the image demo's 24 procedurally drawn images in 4 categories ({', '.join(CATEGORIES)}),
each shown {repetitions} times per participant in block-randomised order (each block shows every
image once; the blocks are split over the runs), {STIMULUS_DURATION:g} s on screen, onset asynchrony uniform
{SOA_RANGE[0]:g}-{SOA_RANGE[1]:g} s, plus {RESPONSES_PER_RUN} button presses per run (`trial_type` response,
`stim_file` n/a, no signal). {len(CHANNELS)} EEG channels (10-20 system, positions of MNE's
`{MONTAGE}` montage), {SFREQ:g} Hz, BrainVision written by MNE-BIDS; the events are also the
BrainVision markers (`value`: the stimulus number, {RESPONSE_VALUE} for a button press).

## Planted ground truth

The "true" model is a seeded random-init AlexNet (torchvision, `weights: random`, `init_seed: 0`,
ImageNet preprocessing), its activations extracted with the pipeline's own code. Each trial adds,
from the stimulus onset, one sensor pattern per component times a Gaussian time course:

| component | layer | peak | SD |
|---|---|---|---|
| early | `{early.layer}` | {early.peak_s * 1000:g} ms | {early.width_s * 1000:g} ms |
| late | `{late.layer}` | {late.peak_s * 1000:g} ms | {late.width_s * 1000:g} ms |

The sensor pattern of a component is `A z(stimulus)`: `z` the first {SIGNAL_DIMENSIONS} principal-component
scores of the layer's row-standardised activations (signs fixed: each component's largest score
positive), `A` an orthonormal basis of {SIGNAL_DIMENSIONS} random combinations of the smoothest scalp maps (zero
mean over the channels, as average-referenced EEG; drawn per participant), so squared Euclidean
distances between the patterns follow the layer's correlation-distance RDM (its rank-{SIGNAL_DIMENSIONS}
approximation: Spearman 0.95 for `features.2`, 1.0 for `classifier.4`). The patterns have SD
{SIGNAL_UV:g} uV over stimuli and channels at the peak. There is no evoked response common to all
stimuli. Everything stimulus-related is exactly 0 before the onset and from {SIGNAL_END * 1000:g} ms on;
the next stimulus comes {SOA_RANGE[0] * 1000:g} ms or more after the onset. Background EEG: 1/f noise
({NOISE_UV:g} uV SD per channel), spatially correlated by a random per-participant covariance; the
single-trial SNR at a peak is about 0.2.

## What the analysis should show

`code/spec.yaml` (`modality: eeg`): epochs -100 to 600 ms, baseline -100-0 ms, low-pass 40 Hz,
resampled to 100 Hz, crossnobis RDMs per time point (5 folds of trials), RSA time courses per layer.
The RSA time course of `features.2` peaks at about 100 ms, that of `classifier.4` at about 200 ms.
Layers with similar representations follow them: `features.5` tracks `features.2` (RDM Spearman
0.83 over these 24 images), `classifier.1` and `features.12` track `classifier.4` (0.85, 0.72);
`features.2` and `classifier.4` themselves correlate only 0.10. There is nothing to find in the
baseline (before 0 ms) or from 400 to 600 ms: no significant clusters there. For the clusters at
100 and 200 ms: {fwe}

Independent check ({defaults}):
the files read back with `mne_bids.read_raw_bids` and the events.tsv, epochs cut and
baseline-corrected in numpy, correlation-distance RDMs of the stimulus-averaged epochs at each
4 ms sample, Spearman with the layers' correlation-distance RDMs, averaged over participants:
at 100 ms `features.2` {f['early_at_100']:.2f} (per participant {early_range}), `classifier.4` {f['late_at_100']:.2f};
at 200 ms `classifier.4` {f['late_at_200']:.2f} ({late_range}), `features.2` {f['early_at_200']:.2f}; peaks at
{f['early_peak_ms']} and {f['late_peak_ms']} ms. Over the baseline and over 400-600 ms the means lie within
+-{f['quiet_mean']:.3f} and no sample exceeds {f['quiet_max']:.2f} in absolute value (every layer of the spec).
The cross-talk at 100 and 200 ms is that of the planted geometries (the rank-{SIGNAL_DIMENSIONS}
`features.2` scores' RDM correlates 0.13 with `classifier.4`'s). Crossnobis RDMs as the spec asks
(numpy; Ledoit-Wolf noise normalisation, 5 folds of trials): `features.2` {cn_early} at 100 ms,
`classifier.4` {cn_late} at 200 ms; a max-t sign-flip test over time (all 64 flips) gives p < 0.05
from {maxt_early} ms for `features.2` and from {maxt_late} ms for `classifier.4`, and for no
layer before 0 ms or after {f['maxt_late_ms'][1]} ms.

## Files

- `stimuli/*.png`; `sub-XX/eeg/*_eeg.vhdr|.vmrk|.eeg` (+ `_eeg.json`, `_channels.tsv`,
  `_events.json`), `*_events.tsv` (`onset`, `duration`, `trial_type`, `value`, `sample`,
  `stim_file`); `sub-XX/eeg/*_space-CapTrak_electrodes.tsv` and `_coordsystem.json`
- `code/spec.yaml`: the analysis spec to run on it
"""


# ---------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------


def _stimulus_names() -> list[str]:
    return [f"{category}{index + 1:02d}.png" for category in CATEGORIES for index in range(N_PER_CATEGORY)]


def planted_templates(directory: Path, subjects: list[str], seed: int = 0,
                      features: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The planted (noise-free) evoked responses of a written EEG demo dataset, per participant.

    Parameters
    ----------
    directory : Path
        A dataset of :func:`make_eeg_dataset` (its ``stimuli/`` are read, features extracted
        with the pipeline's code).
    subjects : list of str
        Labels without ``sub-``.
    seed : int
        The seed the dataset was made with.
    features : dict of str to numpy.ndarray, optional
        The planted layers' activations (n_stimuli, n_units) of the stimuli in the demo's order, if
        already extracted (:func:`~bids_dnn.workflows.demo.planted_layer_features`).

    Returns
    -------
    dict of str to numpy.ndarray
        subject -> (n_stimuli, n_channels, n_kernel) volts at :func:`template_times`, stimuli in
        the demo's order (``disc01`` ... ``texture06``; the events' ``value`` minus 1).
    """
    if features is None:
        paths = [Path(directory) / "stimuli" / name for name in _stimulus_names()]
        features = planted_layer_features(paths, [c.layer for c in PLANTED_COMPONENTS])
    scores = stimulus_scores(features)
    directions = electrode_directions()
    return {subject: subject_templates(scores, directions, np.random.default_rng([seed, int(subject)]))
            for subject in subjects}


def make_eeg_dataset(directory: Path, n_subjects: int = EEG_SUBJECTS, n_runs: int = EEG_RUNS, seed: int = 0,
                     overwrite: bool = False, repetitions: int = EEG_REPETITIONS) -> Path:
    """Write the EEG demo: stimuli, BrainVision EEG with planted AlexNet-layer representations at
    100 and 200 ms (MNE-BIDS), events with ``stim_file``, README and ``code/spec.yaml``
    (``modality: eeg``).

    Parameters
    ----------
    directory : Path
        Target folder (created; must be empty unless ``overwrite``).
    n_subjects, n_runs : int
        Participants (at least 2) and runs per participant.
    seed : int
        Seed of every random choice (stimuli, topographies, trial order, noise).
    overwrite : bool
        Replace an existing demo dataset in ``directory``.
    repetitions : int
        Presentations of each image per participant (at least :data:`MIN_REPETITIONS`), split over
        the runs (at least one per run).

    Returns
    -------
    Path
        The dataset folder.
    """
    if repetitions < max(MIN_REPETITIONS, n_runs):
        raise UsageError(f"the EEG demo needs at least {max(MIN_REPETITIONS, n_runs)} presentations of each image "
                         f"(got {repetitions})", "5-fold cross-validation needs 5; each run needs one")
    directory = _start_dataset(directory, n_subjects, n_runs, overwrite)
    rng = np.random.default_rng(seed)
    stimuli = write_stimuli(directory / "stimuli", rng)
    features = planted_layer_features([directory / "stimuli" / f for f, _ in stimuli],
                                      [c.layer for c in PLANTED_COMPONENTS])
    scores = stimulus_scores(features)
    directions = electrode_directions()
    subjects = [f"{i + 1:02d}" for i in range(n_subjects)]
    for subject in subjects:
        sub_rng = np.random.default_rng([seed, int(subject)])
        templates = subject_templates(scores, directions, sub_rng)
        root_cov = np.linalg.cholesky(noise_covariance(directions, sub_rng))
        for run, (order, onsets) in enumerate(trial_schedule(len(stimuli), repetitions, n_runs, sub_rng), start=1):
            events = _events_table(order, onsets, stimuli, sub_rng, SFREQ)
            data = _simulate_run(templates, order, onsets, root_cov, sub_rng)
            _write_run(directory, subject, run, data, events)
            _update_sidecars(directory, subject, run)
    _write_dataset_files(directory, seed, n_subjects, repetitions)
    (directory / "code").mkdir(exist_ok=True)
    (directory / "code" / "spec.yaml").write_text(DEMO_EEG_SPEC)
    (directory / "README.md").write_text(_readme(n_subjects, n_runs, seed, repetitions))
    (directory / ".bidsignore").write_text("code/\n")
    return directory
