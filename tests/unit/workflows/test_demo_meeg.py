"""The EEG demo (``bids_dnn demo --kind eeg``): BIDS files, read-back with MNE-BIDS, events against
the recording's markers, the planted truth checked independently on the written files (numpy
epochs, SciPy correlation distances and Spearman), seeding, and the spec."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.signal import welch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

import mne
import mne_bids

from bids_dnn.cli.main import main
from bids_dnn.errors import UsageError
from bids_dnn.spec import load_spec
from bids_dnn.workflows import demo_meeg as eeg
from bids_dnn.workflows.demo import CATEGORIES, DEMO_LAYERS, TASK, planted_layer_features
from bids_dnn.workflows.demo_kinds import DEMO_KINDS

SUBJECTS = ["01", "02"]
N_RUNS = 2
SEED = 5
STIMULI = [f"{c}{i + 1:02d}.png" for c in CATEGORIES for i in range(6)]
PRE, POST = 25, 150                      # epoch -100 to 600 ms at 250 Hz
TIMES = np.arange(-PRE, POST) / eeg.SFREQ


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 participants x 2 runs through the command line (24 presentations of each image)."""
    path = tmp_path_factory.mktemp("eeg") / "ds"
    assert main(["demo", str(path), "--kind", "eeg", "--subjects", "2", "--runs", str(N_RUNS),
                 "--seed", str(SEED)]) == 0
    return path


@pytest.fixture(scope="module")
def features(dataset: Path) -> dict[str, np.ndarray]:
    """The demo layers' activations (n_stimuli, n_units), stimuli in the demo's order."""
    return planted_layer_features([dataset / "stimuli" / name for name in STIMULI], DEMO_LAYERS)


@pytest.fixture(scope="module")
def layer_rdms(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Correlation-distance RDMs (condensed) of the demo layers, by SciPy."""
    return {layer: pdist(values, metric="correlation") for layer, values in features.items()}


def _events(dataset: Path, subject: str, run: int) -> pd.DataFrame:
    return pd.read_csv(dataset / f"sub-{subject}" / "eeg" / f"sub-{subject}_task-{TASK}_run-{run}_events.tsv",
                       sep="\t", keep_default_na=False, dtype={"onset": str, "duration": str})


def _bids_path(dataset: Path, subject: str, run: int) -> mne_bids.BIDSPath:
    return mne_bids.BIDSPath(subject=subject, task=TASK, run=run, datatype="eeg", root=dataset)


def _epochs(dataset: Path, subject: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Baseline-corrected epochs (n_trials, n_channels, n_times) and stimulus indices of all runs, cut in
    numpy at the events.tsv onsets of the data read by ``read_raw_bids``; also each run's data and onsets."""
    epochs, stimuli, runs, onsets = [], [], [], []
    for run in range(1, N_RUNS + 1):
        raw = mne_bids.read_raw_bids(_bids_path(dataset, subject, run), verbose="error")
        data = raw.get_data()
        events = _events(dataset, subject, run)
        events = events[events["stim_file"] != "n/a"]
        samples = np.round(events["onset"].astype(float).to_numpy() * raw.info["sfreq"]).astype(int)
        epochs += [data[:, s - PRE:s + POST] for s in samples]
        stimuli += [STIMULI.index(name) for name in events["stim_file"]]
        runs.append(data)
        onsets.append(samples)
    stacked = np.stack(epochs)
    return stacked - stacked[:, :, :PRE].mean(axis=2, keepdims=True), np.array(stimuli), runs, onsets


def _averages(epochs: np.ndarray, stimuli: np.ndarray) -> np.ndarray:
    return np.stack([epochs[stimuli == i].mean(axis=0) for i in range(len(STIMULI))])


def _rsa_timecourse(averages: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Spearman between the correlation-distance RDM of the averages (stimuli, channels, times) at
    each time and a condensed reference RDM."""
    return np.array([spearmanr(pdist(averages[:, :, t], metric="correlation"), reference)[0]
                     for t in range(averages.shape[2])])


def _f_ratio(epochs: np.ndarray, stimuli: np.ndarray) -> np.ndarray:
    """One-way ANOVA F (between stimuli / within) per channel and time, (n_channels, n_times)."""
    means = _averages(epochs, stimuli)
    counts = np.bincount(stimuli)[:, None, None]
    between = (counts * (means - epochs.mean(axis=0)) ** 2).sum(axis=0) / (len(counts) - 1)
    within = ((epochs - means[stimuli]) ** 2).sum(axis=0) / (len(stimuli) - len(counts))
    return between / within


@pytest.fixture(scope="module")
def subject_epochs(dataset: Path) -> dict[str, tuple]:
    return {subject: _epochs(dataset, subject) for subject in SUBJECTS}


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def test_registry_names_the_eeg_kind() -> None:
    assert DEMO_KINDS["eeg"] is eeg.make_eeg_dataset


def test_bids_structure(dataset: Path) -> None:
    assert sorted(p.name for p in (dataset / "stimuli").glob("*.png")) == sorted(STIMULI)
    assert mne_bids.get_entity_vals(dataset, "subject") == SUBJECTS
    assert mne_bids.get_entity_vals(dataset, "task") == [TASK]
    assert mne_bids.get_entity_vals(dataset, "run") == [str(r) for r in range(1, N_RUNS + 1)]
    for subject in SUBJECTS:
        folder = dataset / f"sub-{subject}" / "eeg"
        for run in range(1, N_RUNS + 1):
            stem = f"sub-{subject}_task-{TASK}_run-{run}"
            for suffix in ("_eeg.vhdr", "_eeg.vmrk", "_eeg.eeg", "_eeg.json", "_channels.tsv", "_events.tsv",
                           "_events.json"):
                assert (folder / f"{stem}{suffix}").is_file(), stem + suffix
        assert (folder / f"sub-{subject}_space-CapTrak_electrodes.tsv").is_file()
    description = json.loads((dataset / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and "EEG" in description["Name"]
    participants = pd.read_csv(dataset / "participants.tsv", sep="\t")
    assert list(participants["participant_id"]) == [f"sub-{s}" for s in SUBJECTS]
    sidecar = json.loads((dataset / "sub-01" / "eeg" / f"sub-01_task-{TASK}_run-1_eeg.json").read_text())
    assert sidecar["SamplingFrequency"] == eeg.SFREQ and sidecar["EEGChannelCount"] == len(eeg.CHANNELS)
    assert sidecar["TaskName"] == TASK and "EEGReference" in sidecar
    assert (dataset / "README.md").is_file() and (dataset / "code" / "spec.yaml").is_file()


def test_read_raw_bids_reads_every_run(dataset: Path) -> None:
    for subject in SUBJECTS:
        for run in range(1, N_RUNS + 1):
            raw = mne_bids.read_raw_bids(_bids_path(dataset, subject, run), verbose="error")
            assert raw.ch_names == list(eeg.CHANNELS) and raw.info["sfreq"] == eeg.SFREQ
            assert set(raw.get_channel_types()) == {"eeg"}
            positions = raw.get_montage().get_positions()["ch_pos"]
            assert all(np.isfinite(positions[name]).all() for name in eeg.CHANNELS)
            events = _events(dataset, subject, run)
            # the annotations come from events.tsv: same onsets, descriptions "category/value"
            assert np.allclose(raw.annotations.onset, events["onset"].astype(float), atol=1e-9)
            assert list(raw.annotations.description) == [
                t if t == "response" else f"{t}/{v}" for t, v in zip(events["trial_type"], events["value"])]
            data = raw.get_data()
            assert 3e-6 < data.std() < 30e-6  # volts: EEG-like amplitudes


def test_events_tsv_matches_the_recording(dataset: Path) -> None:
    for subject in SUBJECTS:
        counts = np.zeros(len(STIMULI), dtype=int)
        for run in range(1, N_RUNS + 1):
            events = _events(dataset, subject, run)
            assert list(events.columns) == ["onset", "duration", "trial_type", "value", "sample", "stim_file"]
            onsets = events["onset"].astype(float).to_numpy()
            # onsets lie on the sample grid and name the sample column
            assert np.array_equal(np.round(onsets * eeg.SFREQ).astype(int), events["sample"].to_numpy())
            assert np.allclose(onsets * eeg.SFREQ, events["sample"], atol=1e-6)
            # the BrainVision markers (read by MNE from the .vmrk, not from events.tsv) sit at the same samples
            raw = mne.io.read_raw_brainvision(_bids_path(dataset, subject, run).fpath, verbose="error")
            markers = raw.annotations
            marker_values = [int(d.split("S")[-1]) for d in markers.description if d.startswith("Stimulus/")]
            marker_samples = np.round(markers.onset[[d.startswith("Stimulus/") for d in markers.description]]
                                      * eeg.SFREQ).astype(int)
            assert np.array_equal(marker_samples, events["sample"].to_numpy())
            assert marker_values == list(events["value"])
            stimulus = events[events["trial_type"] != "response"]
            responses = events[events["trial_type"] == "response"]
            assert len(responses) == eeg.RESPONSES_PER_RUN and (responses["stim_file"] == "n/a").all()
            assert (responses["value"] == eeg.RESPONSE_VALUE).all()
            assert [re.sub(r"\d+\.png$", "", name) for name in stimulus["stim_file"]] == list(stimulus["trial_type"])
            assert list(stimulus["value"]) == [STIMULI.index(n) + 1 for n in stimulus["stim_file"]]
            assert np.allclose(stimulus["duration"].astype(float), eeg.STIMULUS_DURATION)
            asynchrony = np.diff(stimulus["onset"].astype(float))
            assert asynchrony.min() >= eeg.SOA_RANGE[0] - 1 / eeg.SFREQ
            assert asynchrony.max() <= eeg.SOA_RANGE[1] + 1 / eeg.SFREQ
            counts += np.bincount([STIMULI.index(n) for n in stimulus["stim_file"]], minlength=len(STIMULI))
            assert raw.n_times / eeg.SFREQ > onsets.max() + eeg.SIGNAL_END
        assert (counts == eeg.EEG_REPETITIONS).all()


def test_the_dataset_passes_the_bids_validator(dataset: Path) -> None:
    found = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent / "bids-validator-deno")
    if not Path(found).is_file():
        pytest.skip("bids-validator-deno is not installed")
    result = subprocess.run([found, str(dataset), "--format", "json"], capture_output=True, text=True, timeout=300)
    issues = json.loads(result.stdout)["issues"]["issues"]
    errors = [issue for issue in issues if issue["severity"] == "error"]
    assert errors == [], json.dumps(errors, indent=1)[:3000]


def test_spec_validates(dataset: Path) -> None:
    spec = load_spec(dataset / "code" / "spec.yaml")
    assert spec.modality == "eeg" and spec.design == "events"
    assert spec.meeg.rdm == "crossnobis" and spec.meeg.folds == 5 and spec.meeg.resample_hz == 100
    assert (spec.meeg.tmin, spec.meeg.tmax, spec.meeg.baseline, spec.meeg.h_freq) == (-0.1, 0.6, (None, 0.0), 40.0)
    assert len(spec.models) == 1
    model = spec.models[0]
    assert (model.name, model.weights, model.init_seed, list(model.layers)) == ("alexnet", "random", 0, DEMO_LAYERS)
    assert spec.analyses.rsa.permutations <= 500 and spec.statistics.bootstrap <= 500
    assert {c.layer for c in eeg.PLANTED_COMPONENTS} <= set(DEMO_LAYERS)


def test_readme_states_the_planted_truth_and_the_measured_figures(dataset: Path) -> None:
    readme = (dataset / "README.md").read_text()
    for component in eeg.PLANTED_COMPONENTS:
        assert component.layer in readme and f"{component.peak_s * 1000:g} ms" in readme
    assert f"{eeg.CHECK_FIGURES['early_at_100']:.2f}" in readme
    assert f"{eeg.CHECK_FIGURES['late_at_200']:.2f}" in readme
    assert "400 to 600 ms" in readme and "2 participants x 2 runs" in readme
    assert "no cluster can be significant" in readme  # 2 participants: smallest sign-flip p 1/4


def test_refuses_a_folder_that_is_not_empty_and_too_few_presentations(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        eeg.make_eeg_dataset(tmp_path / "taken", n_subjects=2, n_runs=1)
    with pytest.raises(UsageError, match="presentations"):
        eeg.make_eeg_dataset(tmp_path / "new", n_subjects=2, n_runs=1, repetitions=4)
    assert not (tmp_path / "new").exists()


def test_same_seed_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def digest(folder: Path) -> dict[str, str]:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    # the features of identical stimulus files are extracted once (the extractor's own determinism is
    # the image demo's test); the stimuli themselves are among the files compared
    cache: dict[str, dict[str, np.ndarray]] = {}

    def cached_features(paths: list[Path], layers: list[str]) -> dict[str, np.ndarray]:
        key = hashlib.sha256(b"".join(Path(p).read_bytes() for p in paths) + repr(layers).encode()).hexdigest()
        if key not in cache:
            cache[key] = planted_layer_features(paths, layers)
        return {layer: values.copy() for layer, values in cache[key].items()}

    monkeypatch.setattr(eeg, "planted_layer_features", cached_features)
    first = eeg.make_eeg_dataset(tmp_path / "a", n_subjects=2, n_runs=1, seed=3, repetitions=5)
    second = eeg.make_eeg_dataset(tmp_path / "b", n_subjects=2, n_runs=1, seed=3, repetitions=5)
    assert digest(first) == digest(second)
    again = eeg.make_eeg_dataset(tmp_path / "a", n_subjects=2, n_runs=1, seed=4, repetitions=5, overwrite=True)
    assert digest(again)["sub-01/eeg/sub-01_task-shapes_run-1_eeg.eeg"] != digest(second)[
        "sub-01/eeg/sub-01_task-shapes_run-1_eeg.eeg"]


# ---------------------------------------------------------------------------------------
# Planted truth, checked on the written files
# ---------------------------------------------------------------------------------------


def _window(centre: float) -> np.ndarray:
    return np.abs(TIMES - centre) <= 0.0081


def test_early_layer_at_100_ms_late_layer_at_200_ms(subject_epochs: dict, layer_rdms: dict) -> None:
    early, late = (c.layer for c in eeg.PLANTED_COMPONENTS)
    curves = {layer: np.mean([_rsa_timecourse(_averages(e, s), layer_rdms[layer])
                              for e, s, _, _ in subject_epochs.values()], axis=0) for layer in (early, late)}
    at_100 = {layer: curve[_window(0.1)].mean() for layer, curve in curves.items()}
    at_200 = {layer: curve[_window(0.2)].mean() for layer, curve in curves.items()}
    assert at_100[early] > 0.3 and at_100[early] > at_100[late] + 0.2, at_100
    assert at_200[late] > 0.3 and at_200[late] > at_200[early] + 0.2, at_200
    assert abs(TIMES[np.argmax(curves[early])] - 0.1) <= 0.03
    assert abs(TIMES[np.argmax(curves[late])] - 0.2) <= 0.03
    for curve in curves.values():  # nothing in the baseline or from 400 ms on
        assert abs(curve[TIMES < 0].mean()) < 0.06 and abs(curve[TIMES >= 0.4].mean()) < 0.06


def test_baseline_and_late_period_carry_no_stimulus_signal(subject_epochs: dict) -> None:
    """Between-stimulus over within-stimulus variance (ANOVA F, 1 without a stimulus effect) per
    channel and time, averaged over channels."""
    for epochs, stimuli, _, _ in subject_epochs.values():
        f_ratio = _f_ratio(epochs, stimuli).mean(axis=0)
        assert f_ratio[TIMES < 0].mean() < 1.15 and f_ratio[TIMES >= 0.4].mean() < 1.15
        assert f_ratio[_window(0.1)].mean() > 1.4 and f_ratio[_window(0.2)].mean() > 1.4


def test_planted_templates_are_what_was_added(dataset: Path, subject_epochs: dict, features: dict) -> None:
    """Subtracting the planted responses at the onsets leaves no stimulus-locked signal."""
    templates = eeg.planted_templates(dataset, SUBJECTS, seed=SEED, features=features)
    times = eeg.template_times()
    for subject, (_, stimuli, runs, onsets) in subject_epochs.items():
        run_stimuli = np.split(stimuli, np.cumsum([o.size for o in onsets])[:-1])
        cleaned = []
        for data, samples, shown in zip(runs, onsets, run_stimuli):
            residual = data.copy()
            for stimulus, sample in zip(shown, samples):
                residual[:, sample:sample + times.size] -= templates[subject][stimulus]
            cleaned += [residual[:, s - PRE:s + POST] for s in samples]
        cleaned_epochs = np.stack(cleaned)
        cleaned_epochs -= cleaned_epochs[:, :, :PRE].mean(axis=2, keepdims=True)
        f_ratio = _f_ratio(cleaned_epochs, stimuli).mean(axis=0)
        assert f_ratio[_window(0.1)].mean() < 1.15 and f_ratio[_window(0.2)].mean() < 1.15
    # what was subtracted spans 0 to SIGNAL_END only
    assert times[0] == 0.0 and times[-1] < eeg.SIGNAL_END and times.size == round(eeg.SIGNAL_END * eeg.SFREQ)


def test_planted_geometry_follows_the_layers(dataset: Path, layer_rdms: dict, features: dict) -> None:
    templates = eeg.planted_templates(dataset, ["01"], seed=SEED)["01"]  # extracts the features itself
    assert np.allclose(templates, eeg.planted_templates(dataset, ["01"], seed=SEED, features=features)["01"])
    times = eeg.template_times()
    for component, minimum in zip(eeg.PLANTED_COMPONENTS, (0.9, 0.98)):
        at_peak = templates[:, :, np.argmin(np.abs(times - component.peak_s))]
        assert np.allclose(at_peak.mean(axis=0), 0, atol=1e-12)  # no response common to all stimuli
        assert np.allclose(at_peak.sum(axis=1), 0, atol=1e-12)  # zero mean over channels
        assert at_peak.std() == pytest.approx(eeg.SIGNAL_UV * 1e-6, rel=1e-3)
        rho = spearmanr(pdist(at_peak, metric="sqeuclidean"), layer_rdms[component.layer])[0]
        assert rho > minimum, (component.layer, rho)


# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------


def test_temporal_profile_is_zero_outside_the_signal_window() -> None:
    times = np.arange(-0.2, 0.8, 0.001)
    profile = eeg.temporal_profile(times, 0.2, 0.025)
    assert (profile[(times < 0) | (times >= eeg.SIGNAL_END)] == 0).all()
    assert profile.max() == pytest.approx(1.0, abs=1e-3) and times[np.argmax(profile)] == pytest.approx(0.2)
    inside = (times >= 0) & (times < eeg.SIGNAL_END)
    assert np.allclose(profile[inside], np.exp(-0.5 * ((times[inside] - 0.2) / 0.025) ** 2))


def test_smooth_topographies_are_orthonormal_smooth_and_seeded() -> None:
    directions = eeg.electrode_directions()
    assert directions.shape == (len(eeg.CHANNELS), 3) and np.allclose(np.linalg.norm(directions, axis=1), 1)
    maps = eeg.smooth_topographies(directions, 8, np.random.default_rng(0))
    assert np.allclose(maps.T @ maps, np.eye(8), atol=1e-10)
    assert np.array_equal(maps, eeg.smooth_topographies(directions, 8, np.random.default_rng(0)))
    # neighbouring electrodes carry similar values: squared differences grow with distance
    distance = np.linalg.norm(directions[:, None] - directions[None], axis=-1)
    upper = np.triu_indices(len(directions), 1)
    many = eeg.smooth_topographies(directions, 8, np.random.default_rng(1))
    differences = ((many[:, None, :] - many[None, :, :]) ** 2).sum(axis=-1)[upper]
    near = distance[upper] < np.quantile(distance[upper], 0.2)
    far = distance[upper] > np.quantile(distance[upper], 0.8)
    assert differences[near].mean() < 0.5 * differences[far].mean()


def test_stimulus_scores_are_the_principal_components(rng: np.random.Generator) -> None:
    features = rng.standard_normal((24, 300)) @ rng.standard_normal((300, 300))
    scores = eeg.stimulus_scores({"a": features}, (eeg.PlantedComponent("a", 0.1, 0.02),))["a"]
    z = (features - features.mean(axis=1, keepdims=True)) / features.std(axis=1, keepdims=True)
    z -= z.mean(axis=0)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    reference = u[:, :8] * s[:8]
    assert np.allclose(np.abs(scores), np.abs(reference), atol=1e-6 * s[0])
    largest = scores[np.argmax(np.abs(scores), axis=0), np.arange(8)]
    assert (largest > 0).all()


def test_pink_noise_has_a_one_over_f_spectrum() -> None:
    signals = eeg.pink_noise(60_000, 4, np.random.default_rng(0))
    assert signals.shape == (60_000, 4) and np.allclose(signals.std(axis=0), 1)
    frequencies, power = welch(signals, fs=eeg.SFREQ, nperseg=2048, axis=0)
    band = (frequencies >= 3) & (frequencies <= 60)
    slope = np.polyfit(np.log(frequencies[band]), np.log(power[band].mean(axis=1)), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.15)
    assert abs(np.corrcoef(signals.T)[0, 1]) < 0.05


def test_noise_covariance_is_positive_definite_with_unit_variance() -> None:
    directions = eeg.electrode_directions()
    covariance = eeg.noise_covariance(directions, np.random.default_rng(0))
    assert np.allclose(covariance, covariance.T)
    assert np.linalg.eigvalsh(covariance).min() > 0.1
    assert np.mean(np.diag(covariance)) == pytest.approx(1.0)


@pytest.mark.parametrize("repetitions, n_runs", [(24, 2), (24, 3), (7, 3), (5, 1)])
def test_trial_schedule_balances_runs_and_spaces_onsets(repetitions: int, n_runs: int) -> None:
    runs = eeg.trial_schedule(24, repetitions, n_runs, np.random.default_rng(0))
    assert len(runs) == n_runs
    total = np.zeros(24, dtype=int)
    for order, onsets in runs:
        counts = np.bincount(order, minlength=24)
        assert counts.min() == counts.max() in (repetitions // n_runs, repetitions // n_runs + 1)
        assert onsets.dtype == np.int64 and onsets[0] == round(eeg.RUN_PADDING_S * eeg.SFREQ)
        steps = np.diff(onsets) / eeg.SFREQ
        assert steps.min() >= eeg.SOA_RANGE[0] - 0.5 / eeg.SFREQ and steps.max() <= eeg.SOA_RANGE[1] + 0.5 / eeg.SFREQ
        total += counts
    assert (total == repetitions).all()
