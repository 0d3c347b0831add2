"""EEG end to end (issue 19): ``bids_dnn demo --kind eeg`` writes a BIDS EEG dataset (BrainVision,
MNE simulation on a standard montage) whose sensor patterns follow the demo network's ``features.2``
around 100 ms and ``classifier.4`` around 200 ms, with nothing stimulus-related in the baseline and
after 400 ms; the participant and group levels recover it through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_dnn.cli.main import main

pytestmark = pytest.mark.slow

EARLY, LATE = "features.2", "classifier.4"
TASK = "shapes"


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"subject": str})


@pytest.fixture(scope="module")
def eeg_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eeg")
    dataset, out = root / "bids", root / "out"
    assert main(["demo", str(dataset), "--kind", "eeg"]) == 0
    spec = dataset / "code" / "spec.yaml"
    assert main([str(dataset), str(out), "participant", "--spec", str(spec), "--no-progress"]) == 0
    assert main([str(dataset), str(out), "group", "--spec", str(spec), "--no-progress"]) == 0
    return {"dataset": dataset, "out": out, "spec": spec}


def _group(run: dict, desc: str, suffix: str) -> pd.DataFrame:
    return read(run["out"] / "group" / f"task-{TASK}_model-alexnet_desc-{desc}_{suffix}.tsv")


def test_the_early_layer_peaks_before_the_late_layer(eeg_run: dict) -> None:
    latency = _group(eeg_run, "rsa", "latency")
    peak = latency[latency["statistic"] == "peak"].set_index("layer")["latency"]
    assert 0.06 <= peak[EARLY] <= 0.15, peak
    assert 0.15 <= peak[LATE] <= 0.26, peak
    assert peak[EARLY] < peak[LATE]
    comparisons = _group(eeg_run, "rsa", "latencycomparisons")
    assert set(comparisons["layer_a"]) | set(comparisons["layer_b"]) >= {EARLY, LATE}


def test_significant_clusters_lie_in_the_planted_windows(eeg_run: dict) -> None:
    clusters = _group(eeg_run, "rsa", "clusters")
    significant = clusters[clusters["significant"].astype(str).str.lower() == "true"]
    for layer in (EARLY, LATE):
        assert layer in set(significant["layer"]), clusters
    assert (significant["start"] >= 0.0).all(), significant  # nothing in the baseline
    assert (significant["stop"] <= 0.40).all(), significant  # nothing in the no-signal period
    timecourse = _group(eeg_run, "rsa", "timecourse")
    significant_times = timecourse[timecourse["significant"].astype(str).str.lower() == "true"]["time"]
    assert not ((significant_times < 0) | (significant_times > 0.4)).any()
    early = timecourse[(timecourse["layer"] == EARLY)].set_index("time")
    assert early["significant"].astype(str).str.lower().eq("true").loc[0.08:0.12].any()
    ceiling = timecourse[["noise_ceiling_lower", "noise_ceiling_upper"]].dropna()
    assert not ceiling.empty and (ceiling["noise_ceiling_lower"] <= ceiling["noise_ceiling_upper"] + 1e-12).all()


def test_participant_outputs_and_sidecars(eeg_run: dict) -> None:
    out = eeg_run["out"]
    eeg = out / "sub-01" / "eeg"
    rdms = np.load(eeg / f"sub-01_task-{TASK}_stat-crossnobis_desc-timeresolved_relmat.npz")
    n_stimuli = len(read(out / f"task-{TASK}_stimuli.tsv"))
    assert rdms["rdms"].shape == (rdms["times"].size, n_stimuli * (n_stimuli - 1) // 2)
    sidecar = json.loads((eeg / f"sub-01_task-{TASK}_stat-crossnobis_desc-timeresolved_relmat.json").read_text())
    assert sidecar["TimeAxis"]["Units"] == "s" and sidecar["Measure"] == "crossnobis"
    quality = read(eeg / f"sub-01_task-{TASK}_desc-epochs_qc.tsv")
    assert (quality["n_kept"] > 0).all()
    rsa = read(eeg / f"sub-01_task-{TASK}_model-alexnet_desc-rsa_timecourse.tsv")
    assert {"time", "score", "p_uncorrected", "p_maxtime"} <= set(rsa.columns)
    assert (out / "sub-01.html").is_file() and (out / "group.html").is_file()
    assert "Temporal generalisation" in (out / "group.html").read_text()


def test_a_rerun_resumes(eeg_run: dict, capsys: pytest.CaptureFixture) -> None:
    code = main([str(eeg_run["dataset"]), str(eeg_run["out"]), "participant", "--spec", str(eeg_run["spec"]),
                 "--no-progress", "--participant-label", "01"])
    assert code == 0
    assert "up to date" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_eeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bids_dnn.workflows.demo_meeg import make_eeg_dataset

    return make_eeg_dataset(tmp_path_factory.mktemp("small") / "bids", n_subjects=2, n_runs=1, seed=1)


def _variant(dataset: Path, tmp_path: Path, meeg: str, extra: str = "") -> Path:
    text = (dataset / "code" / "spec.yaml").read_text()
    head, _, rest = text.partition("meeg:")
    spec = tmp_path / "spec.yaml"
    spec.write_text(head + f"meeg: {meeg}\n" + extra)
    return spec


@pytest.mark.parametrize("measure, planted_high", [("decoding", True), ("correlation", True),
                                                    ("euclidean_cv", True)])
def test_every_brain_rdm_measure_sees_the_planted_early_signal(small_eeg: Path, tmp_path: Path, measure: str,
                                                                 planted_high: bool) -> None:
    spec = _variant(small_eeg, tmp_path, f"{{tmin: -0.1, tmax: 0.4, resample_hz: 100, rdm: {measure}, folds: 4, "
                    "window_ms: 20, step_ms: 10}", "analyses: {rsa: {permutations: 50}}\n")
    out = tmp_path / "out"
    assert main([str(small_eeg), str(out), "participant", "--spec", str(spec), "--no-progress",
                 "--participant-label", "01"]) == 0
    saved = np.load(out / "sub-01" / "eeg" / f"sub-01_task-{TASK}_stat-{sanitize(measure)}_desc-timeresolved_relmat.npz")
    rdms, times = saved["rdms"], saved["times"]
    assert np.allclose(np.diff(times), 0.01)  # 20 ms windows every 10 ms
    baseline, early = rdms[times < 0].mean(), rdms[(times > 0.08) & (times < 0.12)].mean()
    if measure == "decoding":
        assert abs(baseline - 0.5) < 0.03 and early > 0.55, (baseline, early)
    elif measure == "euclidean_cv":
        assert abs(baseline) < early / 5 and early > 0, (baseline, early)
    rsa = read(out / "sub-01" / "eeg" / f"sub-01_task-{TASK}_model-alexnet_desc-rsa_timecourse.tsv")
    course = rsa[rsa["layer"] == EARLY].set_index("time")["score"]
    assert course.loc[0.08:0.12].mean() > course.loc[:-0.01].mean() + 0.15, course


def sanitize(text: str) -> str:
    return text.replace("_", "")


def test_ready_made_epochs_give_the_same_rdms_as_the_recordings(small_eeg: Path, tmp_path: Path) -> None:
    """-d epochs=PATH: epochs written by MNE with a stim_file metadata column, cut as the pipeline cuts them,
    give the same brain RDMs as the raw recordings."""
    import mne

    from bids_dnn.io.meeg import EpochOptions, epoch_raw, find_meeg_runs, read_meeg_raw
    from bids_dnn.io.stimuli import read_events

    spec = _variant(small_eeg, tmp_path, "{tmin: -0.1, tmax: 0.3, resample_hz: 100, rdm: crossnobis, folds: 4, "
                    "temporal_generalization: false}", "analyses: {rsa: {permutations: 0}}\n")
    raw_out = tmp_path / "raw_out"
    assert main([str(small_eeg), str(raw_out), "participant", "--spec", str(spec), "--no-progress",
                 "--participant-label", "01"]) == 0
    epochs_dir = tmp_path / "epochs"
    folder = epochs_dir / "sub-01" / "eeg"
    folder.mkdir(parents=True)
    (epochs_dir / "dataset_description.json").write_text(json.dumps(
        {"Name": "epochs", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}))
    options = EpochOptions(tmin=-0.1, tmax=0.3, baseline=(None, 0.0), l_freq=None, h_freq=40.0, resample_hz=100.0,
                           reject=None, picks=None)
    for recording in find_meeg_runs(small_eeg, "01", task=TASK, datatype="eeg"):
        events = read_events(recording.events_path)
        rows = events[events["stim_file"].notna() & (events["stim_file"] != "n/a")]
        epoched = epoch_raw(read_meeg_raw(recording), rows["onset"].to_numpy(float), options)
        info = mne.create_info(epoched.ch_names, epoched.sfreq, epoched.ch_types)
        metadata = pd.DataFrame({"stim_file": rows["stim_file"].to_numpy()[epoched.kept]})
        mne.EpochsArray(epoched.data, info, tmin=float(epoched.times[0]), metadata=metadata, verbose="error").save(
            folder / f"sub-01_task-{TASK}_run-{recording.run}_epo.fif", verbose="error")
    epochs_out = tmp_path / "epochs_out"
    assert main([str(small_eeg), str(epochs_out), "participant", "--spec", str(spec), "--no-progress",
                 "--participant-label", "01", "-d", f"epochs={epochs_dir}"]) == 0
    name = f"sub-01_task-{TASK}_stat-crossnobis_desc-timeresolved_relmat.npz"
    from_raw, from_epochs = (np.load(o / "sub-01" / "eeg" / name) for o in (raw_out, epochs_out))
    np.testing.assert_allclose(from_epochs["times"], from_raw["times"], atol=1e-9)
    np.testing.assert_allclose(from_epochs["rdms"], from_raw["rdms"], rtol=1e-5, atol=1e-6 * np.abs(from_raw["rdms"]).max())


def test_time_resolved_encoding_follows_the_planted_windows(small_eeg: Path, tmp_path: Path) -> None:
    spec = _variant(small_eeg, tmp_path, "{tmin: -0.1, tmax: 0.4, resample_hz: 100, rdm: correlation, "
                    "temporal_generalization: false}",
                    "analyses: {rsa: {enabled: false}, encoding: {enabled: true, n_folds: 6},\n"
                    "  variance_partitioning: {enabled: true, groups: {early: ['alexnet:features.2'], "
                    "late: ['alexnet:classifier.4']}}}\n")
    out = tmp_path / "out"
    for level in ("participant", "group"):
        assert main([str(small_eeg), str(out), level, "--spec", str(spec), "--no-progress"]) == 0
    table = read(out / "sub-01" / "eeg" / f"sub-01_task-{TASK}_model-alexnet_desc-encoding_timecourse.tsv")
    for layer, window in ((EARLY, (0.08, 0.12)), (LATE, (0.18, 0.22))):
        course = table[table["layer"] == layer].set_index("time")["mean_r"]
        assert course.loc[window[0]:window[1]].mean() > course.loc[:-0.01].mean() + 0.1, (layer, course)
    arrays = np.load(out / "sub-01" / "eeg" / f"sub-01_task-{TASK}_model-alexnet_desc-encoding_stats.npz")
    assert arrays["r"].shape == (5, arrays["channels"].size, arrays["times"].size)
    group = read(out / "group" / f"task-{TASK}_model-alexnet_desc-encoding_timecourse.tsv")
    assert {"mean", "ci_low", "ci_high", "p_corrected"} <= set(group.columns)
    partition = read(out / "group" / f"task-{TASK}_desc-variancepartition_timecourse.tsv")
    peaks = {component: rows.set_index("time")["mean"].idxmax() for component, rows in partition.groupby("component")}
    assert 0.07 <= peaks["unique:early"] <= 0.13 and 0.17 <= peaks["unique:late"] <= 0.23, peaks
    assert "Variance partitioning over time" in (out / "group.html").read_text()


def test_eeg_outputs_pass_the_bids_validator(eeg_run: dict) -> None:
    from tests.integration.test_bids_outputs import _errors, _validate

    errors = _errors(_validate(eeg_run["out"]))
    assert errors == [], json.dumps(errors, indent=1)[:4000]


def test_participants_in_worker_processes_match_one_at_a_time(small_eeg: Path, tmp_path: Path) -> None:
    """--nprocs 2: both participants in worker processes, each with its own log; the RDMs equal
    those of a run of one participant at a time."""
    spec = _variant(small_eeg, tmp_path, "{tmin: -0.1, tmax: 0.3, resample_hz: 100, rdm: correlation, "
                    "temporal_generalization: false}", "analyses: {rsa: {permutations: 0}}\n")
    parallel, in_turn = tmp_path / "parallel", tmp_path / "in_turn"
    assert main([str(small_eeg), str(parallel), "participant", "--spec", str(spec), "--no-progress",
                 "--nprocs", "2"]) == 0
    assert main([str(small_eeg), str(in_turn), "participant", "--spec", str(spec), "--no-progress"]) == 0
    name = "sub-{s}_task-" + TASK + "_stat-correlation_desc-timeresolved_relmat.npz"
    for subject in ("01", "02"):
        eeg = f"sub-{subject}/eeg/" + name.format(s=subject)
        np.testing.assert_allclose(np.load(parallel / eeg)["rdms"], np.load(in_turn / eeg)["rdms"],
                                   rtol=1e-6, atol=1e-9)
        (log_dir,) = [d for d in (parallel / f"sub-{subject}" / "log").iterdir() if d.is_dir()]
        provenance = json.loads((log_dir / "provenance.json").read_text())
        assert provenance["execution"]["worker"] is True
        log = (log_dir / "bids_dnn.log").read_text()
        assert f"sub-{subject} done" in log and f"sub-{'02' if subject == '01' else '01'} done" not in log
    workers = {json.loads(next((parallel / f"sub-{s}" / "log").glob("*/provenance.json")).read_text())
               ["execution"]["process_id"] for s in ("01", "02")}
    assert len(workers) == 2
