"""bids_dnn.io.meeg and bids_dnn.io.meeg_epochs: finding, reading and epoching BIDS EEG / MEG recordings.

Synthetic datasets are written with ``mne_bids.write_raw_bids``; epochs are checked against
brute-force slicing of the planted signals (and, for filtering and resampling, against the analytic
signal they must leave).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

mne = pytest.importorskip("mne")
mne_bids = pytest.importorskip("mne_bids")

from bids_dnn.errors import EXIT_INPUT_MISSING, EXIT_INVALID_SPEC, InputMissingError, SpecError  # noqa: E402
from bids_dnn.io.meeg import (  # noqa: E402
    EpochOptions,
    MeegRun,
    check_meeg_files,
    epoch_raw,
    find_epochs_files,
    find_meeg_runs,
    read_epochs_file,
    read_meeg_raw,
)
from bids_dnn.io.meeg_epochs import OUT_OF_RANGE  # noqa: E402

SFREQ = 250.0
EEG_NAMES = ["Fz", "Cz", "Pz", "Oz"]


def _eeg_raw(rng: np.random.Generator, seconds: float = 20.0, bads: list[str] | None = None) -> mne.io.RawArray:
    info = mne.create_info(EEG_NAMES, SFREQ, "eeg")
    raw = mne.io.RawArray(rng.normal(0.0, 1e-6, (len(EEG_NAMES), int(SFREQ * seconds))), info, verbose=False)
    raw.info["bads"] = list(bads or [])
    return raw


def _write(raw: mne.io.BaseRaw, root: Path, fmt: str, *, datatype: str = "eeg", session: str | None = None,
           run: int | None = 1, task: str = "faces", events: np.ndarray | None = None) -> Path:
    path = mne_bids.BIDSPath(subject="01", session=session, task=task, run=run, datatype=datatype, root=root)
    event_id = {"face": 1, "house": 2} if events is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mne_bids.write_raw_bids(raw, path, events=events, event_id=event_id, format=fmt, allow_preload=True,
                                overwrite=True, verbose=False)
    return path.fpath


@pytest.fixture(scope="module")
def meeg_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sub-01: two BrainVision EEG runs (Oz marked bad); ses-meg: two FIF MEG recordings starting at
    first_samp 300 (MEG0112 bad), task-faces run-2 with events, task-rest without."""
    root = tmp_path_factory.mktemp("meeg") / "bids"
    rng = np.random.default_rng(20261125)
    events = np.array([[500, 0, 1], [1000, 0, 2], [1500, 0, 1]])
    for run in (1, 2):
        _write(_eeg_raw(rng, bads=["Oz"]), root, "BrainVision", run=run, events=events)
    info = mne.create_info(["MEG0111", "MEG0112", "MEG0113", "STI101"], 200.0, ["mag", "grad", "grad", "stim"])
    meg = mne.io.RawArray(rng.normal(0.0, 1e-12, (4, 2000)), info, first_samp=300, verbose=False)
    meg.info["bads"] = ["MEG0112"]
    _write(meg, root, "FIF", datatype="meg", session="meg", run=None, task="rest")  # no events
    meg_events = np.array([[300 + 400, 0, 1], [300 + 911, 0, 2], [300 + 1500, 0, 1]])  # MNE counts first_samp
    _write(meg, root, "FIF", datatype="meg", session="meg", run=2, events=meg_events)
    return root


def _copy_tree(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------------------------------------------
# find_meeg_runs
# ---------------------------------------------------------------------------------------------------
def test_find_meeg_runs_lists_every_recording_with_its_sidecars(meeg_dataset: Path) -> None:
    runs = find_meeg_runs(meeg_dataset, "sub-01")
    assert [(r.datatype, r.session, r.task, r.run, r.raw_path.suffix) for r in runs] == [
        ("eeg", None, "faces", "01", ".vhdr"), ("eeg", None, "faces", "02", ".vhdr"),
        ("meg", "meg", "faces", "02", ".fif"), ("meg", "meg", "rest", None, ".fif")]  # run-1 is run '01'
    first = runs[0]
    assert first.events_path == first.raw_path.with_name("sub-01_task-faces_run-1_events.tsv")
    assert first.channels_path == first.raw_path.with_name("sub-01_task-faces_run-1_channels.tsv")
    assert first.key == "sub-01_task-faces_run-01"
    assert runs[3].events_path is None and runs[3].channels_path is not None
    assert [r.datatype for r in find_meeg_runs(meeg_dataset, "01", datatype="meg")] == ["meg", "meg"]
    assert [r.run for r in find_meeg_runs(meeg_dataset, "01", session="meg")] == ["02", None]
    assert [r.run for r in find_meeg_runs(meeg_dataset, "01", task="rest")] == [None]
    assert find_meeg_runs(meeg_dataset, "01", task="other") == []
    assert find_meeg_runs(meeg_dataset, "02") == []


def test_find_meeg_runs_order_splits_inheritance_and_skipped_files(tmp_path: Path) -> None:
    """Placeholder files suffice for listing: runs sort numerically, only split-01 is listed,
    sidecars are inherited from the nearest folder, other datatypes and derivatives are ignored."""
    root = tmp_path / "bids"
    meg = root / "sub-01" / "ses-a" / "meg"
    eeg = root / "sub-01" / "eeg"
    for folder in (meg, eeg, root / "sub-01" / "func", root / "derivatives" / "x" / "sub-01" / "eeg"):
        folder.mkdir(parents=True)
    names = [meg / "sub-01_ses-a_task-t_run-10_meg.fif", meg / "sub-01_ses-a_task-t_run-2_meg.fif",
             meg / "sub-01_ses-a_task-t_run-3_split-01_meg.fif", meg / "sub-01_ses-a_task-t_run-3_split-02_meg.fif",
             eeg / "sub-01_task-t_eeg.edf", eeg / "sub-01_task-t_eeg.json", eeg / "sub-01_task-t_eeg.fif",
             eeg / "sub-01_task-u_eeg.bdf", eeg / "sub-01_task-u_eeg.set", eeg / "sub-01_task-t_eeg.eeg",
             root / "sub-01" / "func" / "sub-01_task-t_bold.nii.gz",
             root / "derivatives" / "x" / "sub-01" / "eeg" / "sub-01_task-t_eeg.edf",
             root / "sub-01" / "ses-a" / "sub-01_ses-a_task-t_channels.tsv",
             meg / "sub-01_ses-a_task-t_run-2_events.tsv", root / "sub-01" / "ses-a" / "sub-01_ses-a_task-t_events.tsv",
             root / "task-u_events.tsv"]
    for name in names:
        name.write_text("x")
    (meg / "sub-01_ses-a_task-t_run-4_meg.ds").mkdir()
    runs = find_meeg_runs(root, "01")
    assert [r.raw_path.name for r in runs] == [
        "sub-01_task-t_eeg.edf", "sub-01_task-u_eeg.bdf", "sub-01_task-u_eeg.set",
        "sub-01_ses-a_task-t_run-2_meg.fif", "sub-01_ses-a_task-t_run-3_split-01_meg.fif",
        "sub-01_ses-a_task-t_run-4_meg.ds", "sub-01_ses-a_task-t_run-10_meg.fif"]
    by_name = {r.raw_path.name: r for r in runs}
    run2, run10 = by_name["sub-01_ses-a_task-t_run-2_meg.fif"], by_name["sub-01_ses-a_task-t_run-10_meg.fif"]
    assert run2.events_path == meg / "sub-01_ses-a_task-t_run-2_events.tsv"  # nearest, most specific
    assert run10.events_path == root / "sub-01" / "ses-a" / "sub-01_ses-a_task-t_events.tsv"  # inherited
    assert run10.channels_path == root / "sub-01" / "ses-a" / "sub-01_ses-a_task-t_channels.tsv"
    assert by_name["sub-01_task-u_eeg.bdf"].events_path == root / "task-u_events.tsv"
    assert by_name["sub-01_task-t_eeg.edf"].events_path is None
    assert by_name["sub-01_ses-a_task-t_run-3_split-01_meg.fif"].run == "03"


# ---------------------------------------------------------------------------------------------------
# read_meeg_raw and the checks of empty / unreadable files
# ---------------------------------------------------------------------------------------------------
def test_read_meeg_raw_reads_brainvision_and_fif_with_bads(meeg_dataset: Path, capfd) -> None:
    eeg_run, _, _, meg_run = find_meeg_runs(meeg_dataset, "01")
    messages: list[str] = []
    raw = read_meeg_raw(eeg_run, messages=messages)
    assert raw.ch_names == EEG_NAMES and raw.info["bads"] == ["Oz"]
    assert raw.info["sfreq"] == SFREQ and raw.n_times == int(SFREQ * 20)
    assert [a["description"] for a in raw.annotations] == ["face", "house", "face"]
    meg = read_meeg_raw(meg_run, messages=messages)
    assert meg.info["bads"] == ["MEG0112"] and meg.first_samp == 300
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # nothing spills to the console


def _write_edf(path: Path, data_volts: np.ndarray, sfreq: int, names: list[str]) -> np.ndarray:
    """A minimal EDF file (one-second records, 0.1 µV steps); returns the values it holds (V)."""
    digital = np.clip(np.round(data_volts * 1e7), -32768, 32767).astype("<i2")  # 0.1 µV per step
    n_channels, n_times = digital.shape
    n_records = n_times // int(sfreq)

    def fields(values: list[str], width: int) -> bytes:
        return b"".join(v.encode("ascii").ljust(width)[:width] for v in values)

    header = (fields(["0"], 8) + fields(["X X X X"], 80) + fields(["Startdate 01-JAN-2020 X X X"], 80)
              + fields(["01.01.20"], 8) + fields(["00.00.00"], 8) + fields([str(256 * (n_channels + 1))], 8)
              + fields([""], 44) + fields([str(n_records)], 8) + fields(["1"], 8) + fields([str(n_channels)], 4))
    per_signal = [(names, 16), (["AgAgCl electrode"] * n_channels, 80), (["uV"] * n_channels, 8),
                  (["-3276.8"] * n_channels, 8), (["3276.7"] * n_channels, 8), (["-32768"] * n_channels, 8),
                  (["32767"] * n_channels, 8), ([""] * n_channels, 80), ([str(int(sfreq))] * n_channels, 8),
                  ([""] * n_channels, 32)]
    header += b"".join(fields(values, width) for values, width in per_signal)
    records = digital[:, : n_records * int(sfreq)].reshape(n_channels, n_records, int(sfreq)).transpose(1, 0, 2)
    path.write_bytes(header + records.tobytes())
    return digital[:, : n_records * int(sfreq)].astype(float) * 1e-7


def test_read_meeg_raw_reads_edf_with_bads(tmp_path: Path, rng: np.random.Generator) -> None:
    """A hand-written EDF file, copied into a BIDS dataset by MNE-BIDS, read back with its values."""
    source = tmp_path / "recording.edf"
    written = _write_edf(source, rng.normal(0.0, 20e-6, (4, 2000)), 200, EEG_NAMES)
    raw = mne.io.read_raw_edf(source, verbose=False)
    raw.info["bads"] = ["Cz"]
    bids_path = mne_bids.BIDSPath(subject="01", task="rest", datatype="eeg", root=tmp_path / "bids")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mne_bids.write_raw_bids(raw, bids_path, verbose=False)  # an EDF is copied as it is
    path = bids_path.fpath
    (run,) = find_meeg_runs(tmp_path / "bids", "01")
    assert run.raw_path == path and path.suffix == ".edf" and run.channels_path is not None
    read = read_meeg_raw(run)
    assert read.info["bads"] == ["Cz"] and read.info["sfreq"] == 200.0 and read.ch_names == EEG_NAMES
    np.testing.assert_allclose(read.get_data(), written, rtol=0, atol=1e-10)


@pytest.mark.parametrize("emptied", [".eeg", ".vmrk", ".vhdr"])
def test_an_empty_brainvision_file_is_named(meeg_dataset: Path, tmp_path: Path, emptied: str) -> None:
    root = _copy_tree(meeg_dataset, tmp_path / "bids")
    run = find_meeg_runs(root, "01")[0]
    target = run.raw_path.with_suffix(emptied)
    target.write_bytes(b"")
    with pytest.raises(InputMissingError) as info:
        read_meeg_raw(run)
    assert info.value.exit_code == EXIT_INPUT_MISSING
    assert info.value.message == f"sub-01/eeg/{target.name} is empty (0 bytes)"


def test_an_empty_edf_is_named(tmp_path: Path) -> None:
    eeg = tmp_path / "bids" / "sub-01" / "eeg"
    eeg.mkdir(parents=True)
    (eeg / "sub-01_task-rest_eeg.edf").write_bytes(b"")
    (run,) = find_meeg_runs(tmp_path / "bids", "01")
    with pytest.raises(InputMissingError) as info:
        read_meeg_raw(run)
    assert info.value.message == "sub-01/eeg/sub-01_task-rest_eeg.edf is empty (0 bytes)"
    assert info.value.exit_code == EXIT_INPUT_MISSING and info.value.hint


def test_companions_of_other_formats_are_checked(tmp_path: Path) -> None:
    """EEGLAB .fdt, later split FIF parts, CTF .ds contents and broken links (no MNE reading needed)."""
    root = tmp_path / "bids"
    eeg, meg = root / "sub-01" / "eeg", root / "sub-01" / "meg"
    eeg.mkdir(parents=True)
    meg.mkdir(parents=True)

    def run_of(path: Path, datatype: str) -> MeegRun:
        return MeegRun("01", None, "t", None, datatype, path)

    (eeg / "sub-01_task-t_eeg.set").write_text("not empty")
    (eeg / "sub-01_task-t_eeg.fdt").write_bytes(b"")
    with pytest.raises(InputMissingError, match=r"^sub-01/eeg/sub-01_task-t_eeg\.fdt is empty"):
        check_meeg_files(run_of(eeg / "sub-01_task-t_eeg.set", "eeg"))
    (meg / "sub-01_task-t_split-01_meg.fif").write_text("not empty")
    (meg / "sub-01_task-t_split-02_meg.fif").write_bytes(b"")
    with pytest.raises(InputMissingError, match=r"sub-01_task-t_split-02_meg\.fif is empty"):
        check_meeg_files(run_of(meg / "sub-01_task-t_split-01_meg.fif", "meg"))
    ds = meg / "sub-01_task-u_meg.ds"
    ds.mkdir()
    with pytest.raises(InputMissingError, match=r"holds no \.res4 file"):
        check_meeg_files(run_of(ds, "meg"))
    (ds / "sub-01_task-u_meg.res4").write_text("x")
    (ds / "sub-01_task-u_meg.meg4").write_bytes(b"")
    with pytest.raises(InputMissingError, match=r"sub-01_task-u_meg\.ds/sub-01_task-u_meg\.meg4 is empty"):
        check_meeg_files(run_of(ds, "meg"))
    link = eeg / "sub-01_task-v_eeg.edf"
    os.symlink(tmp_path / "annex" / "missing-key", link)
    (run,) = find_meeg_runs(root, "01", task="v")  # a broken link is still listed ...
    with pytest.raises(InputMissingError, match=r"^sub-01/eeg/sub-01_task-v_eeg\.edf is a broken link"):
        read_meeg_raw(run)  # ... and refused clearly


def test_brainvision_header_naming_a_missing_file(meeg_dataset: Path, tmp_path: Path) -> None:
    root = _copy_tree(meeg_dataset, tmp_path / "bids")
    run = find_meeg_runs(root, "01")[0]
    run.raw_path.with_suffix(".eeg").unlink()
    with pytest.raises(InputMissingError) as info:
        read_meeg_raw(run)
    assert info.value.message == "sub-01/eeg/sub-01_task-faces_run-1_eeg.eeg does not exist"


def test_mne_failures_become_one_sentence(meeg_dataset: Path, tmp_path: Path) -> None:
    root = _copy_tree(meeg_dataset, tmp_path / "bids")
    run = find_meeg_runs(root, "01")[0]
    header = run.raw_path.read_text(encoding="latin-1")
    run.raw_path.write_text(header.replace("NumberOfChannels=4", "NumberOfChannels=four"), encoding="latin-1")
    with pytest.raises(InputMissingError) as info:
        read_meeg_raw(run)
    assert info.value.message.startswith("cannot read sub-01/eeg/sub-01_task-faces_run-1_eeg.vhdr: ")
    assert "\n" not in info.value.message and info.value.exit_code == EXIT_INPUT_MISSING


# ---------------------------------------------------------------------------------------------------
# epoch_raw, against brute-force slicing of planted signals
# ---------------------------------------------------------------------------------------------------
def _planted_raw(rng: np.random.Generator, data: np.ndarray, sfreq: float = SFREQ, first_samp: int = 137,
                 types: list[str] | None = None) -> mne.io.RawArray:
    names = [f"E{i}" for i in range(data.shape[0])]
    info = mne.create_info(names, sfreq, types or "eeg")
    return mne.io.RawArray(data, info, first_samp=first_samp, verbose=False)


def _brute_force(data: np.ndarray, onset: float, sfreq: float, tmin: float, tmax: float) -> np.ndarray:
    """The samples of ``data`` from tmin to tmax around ``onset`` (s from the first sample)."""
    centre = int(round(onset * sfreq))
    return data[:, centre + int(round(tmin * sfreq)): centre + int(round(tmax * sfreq)) + 1]


def test_impulses_at_onsets_appear_at_time_zero(rng: np.random.Generator) -> None:
    data = rng.normal(0.0, 1e-7, (3, int(SFREQ * 10)))
    onsets = np.array([1.0, 2.5, 3.006, 7.25])  # 3.006 s is not on a sample: rounds to sample 752
    for onset in onsets:
        data[:, int(round(onset * SFREQ))] += 1e-3
    raw = _planted_raw(rng, data)  # first_samp 137: onsets count from the recording's first sample
    options = EpochOptions(tmin=-0.2, tmax=0.5, baseline=None, h_freq=None)
    epoched = epoch_raw(raw, onsets, options)
    zero = int(np.flatnonzero(np.isclose(epoched.times, 0.0))[0])
    assert epoched.data.shape == (4, 3, int(round(0.7 * SFREQ)) + 1) and epoched.data.dtype == np.float64
    assert np.all(np.argmax(epoched.data, axis=2) == zero)
    np.testing.assert_allclose(epoched.times, np.arange(-50, 126) / SFREQ, atol=1e-12)
    for i, onset in enumerate(onsets):
        np.testing.assert_allclose(epoched.data[i], _brute_force(data, onset, SFREQ, -0.2, 0.5), rtol=1e-12, atol=0)
    assert epoched.kept.all() and epoched.drop_reasons == [""] * 4 and epoched.sfreq == SFREQ
    assert epoched.ch_names == ["E0", "E1", "E2"] and epoched.ch_types == ["eeg"] * 3 and epoched.bads == []


def test_baseline_removes_a_dc_offset(rng: np.random.Generator) -> None:
    data = rng.normal(0.0, 1e-6, (2, int(SFREQ * 6))) + np.array([[40e-6], [-25e-6]])
    onsets = np.array([1.0, 2.0, 4.0])
    options = EpochOptions(tmin=-0.1, tmax=0.4, baseline=(None, 0.0), h_freq=None)
    epoched = epoch_raw(_planted_raw(rng, data), onsets, options)
    pre = epoched.times <= 0
    for i, onset in enumerate(onsets):
        segment = _brute_force(data, onset, SFREQ, -0.1, 0.4)
        expected = segment - segment[:, pre].mean(axis=1, keepdims=True)
        np.testing.assert_allclose(epoched.data[i], expected, rtol=1e-9, atol=1e-15)
    assert np.abs(epoched.data[:, :, pre].mean(axis=2)).max() < 1e-15


@pytest.mark.parametrize(("sfreq", "new_sfreq"), [(1000.0, 250.0), (1024.0, 250.0), (1100.0, 200.0), (500.0, 300.0)])
def test_resampling_gives_the_requested_rate_on_an_exact_grid(rng: np.random.Generator, sfreq: float,
                                                               new_sfreq: float) -> None:
    """801 / 820 / 881 / 401 samples per epoch: not a whole number of new samples, where MNE's
    ``epochs.resample`` would stretch the time axis. The result must match the analytic signal at
    the reported times, edges included (the filter sees real data there), on the grid k / new_sfreq."""
    t = np.arange(int(sfreq * 8)) / sfreq
    freqs = (3.0, 20.0)
    data = np.vstack([np.sin(2 * np.pi * f * t) for f in freqs]) * 1e-5
    onsets = np.array([2.0, 4.0, 5.5])
    options = EpochOptions(tmin=-0.2, tmax=0.6, baseline=None, h_freq=None, resample_hz=new_sfreq)
    epoched = epoch_raw(_planted_raw(rng, data, sfreq=sfreq, first_samp=0), onsets, options)
    grid = np.arange(np.ceil(-0.2 * new_sfreq - 1e-9), np.floor(0.6 * new_sfreq + 1e-9) + 1) / new_sfreq
    assert epoched.sfreq == new_sfreq and epoched.data.shape == (3, 2, len(grid))
    np.testing.assert_allclose(epoched.times, grid, atol=1e-12)
    for i, onset in enumerate(onsets):
        when = onset + epoched.times
        expected = np.vstack([np.sin(2 * np.pi * f * when) for f in freqs]) * 1e-5
        np.testing.assert_allclose(epoched.data[i], expected, atol=2e-8)  # 0.2 % of the amplitude


def test_recordings_at_different_rates_share_the_resampled_times(rng: np.random.Generator) -> None:
    options = EpochOptions(tmin=-0.1, tmax=0.6, h_freq=None, resample_hz=250.0)
    times = [epoch_raw(_planted_raw(rng, rng.normal(0, 1e-6, (1, int(sfreq * 4))), sfreq=sfreq), np.array([2.0]),
                       options).times for sfreq in (1000.0, 1100.0, 512.0)]
    for other in times[1:]:
        np.testing.assert_allclose(other, times[0], atol=1e-12)
    assert len(times[0]) == 176 and np.isclose(times[0], 0.0).sum() == 1


def test_resampling_margin_near_the_end_of_the_recording(rng: np.random.Generator) -> None:
    raw = _planted_raw(rng, rng.normal(0, 1e-6, (1, 1000)), sfreq=1000.0, first_samp=0)  # 0 to 0.999 s
    plain = epoch_raw(raw, np.array([0.39]), EpochOptions(h_freq=None))
    assert plain.kept.tolist() == [True]
    resampled = epoch_raw(raw, np.array([0.39]), EpochOptions(h_freq=None, resample_hz=250.0))
    assert resampled.drop_reasons == [f"{OUT_OF_RANGE} with the resampling filter's margin"]


def test_low_pass_filter_runs_before_epoching(rng: np.random.Generator) -> None:
    t = np.arange(int(SFREQ * 20)) / SFREQ
    slow, fast = np.sin(2 * np.pi * 2.0 * t) * 1e-5, np.sin(2 * np.pi * 60.0 * t) * 1e-5
    raw = _planted_raw(rng, np.vstack([slow + fast]), first_samp=0)
    options = EpochOptions(tmin=-0.2, tmax=0.5, baseline=None, l_freq=None, h_freq=20.0)
    onsets = np.array([5.0, 10.0, 15.0])
    epoched = epoch_raw(raw, onsets, options)
    for i, onset in enumerate(onsets):
        np.testing.assert_allclose(epoched.data[i, 0], _brute_force(slow[None], onset, SFREQ, -0.2, 0.5)[0],
                                   atol=3e-7)  # the 60 Hz part (1e-5) is gone, the 2 Hz part kept
    assert np.ptp(raw.get_data()) > 3e-5  # the input is left unfiltered


def test_peak_to_peak_rejection_drops_exactly_the_planted_artefacts(rng: np.random.Generator) -> None:
    data = rng.normal(0.0, 5e-6, (3, int(SFREQ * 12)))
    onsets = np.arange(1.0, 11.0, 1.0)
    artefacts = {2: 1, 7: 2}  # epoch -> channel with a 400 µV step
    for epoch, channel in artefacts.items():
        start = int(round(onsets[epoch] * SFREQ))
        data[channel, start + 25: start + 40] += 400e-6
    options = EpochOptions(tmin=-0.1, tmax=0.3, baseline=(None, 0.0), h_freq=None, reject={"eeg": 150e-6, "mag": 1e-12})
    epoched = epoch_raw(_planted_raw(rng, data), onsets, options)
    expected_kept = np.ones(len(onsets), bool)
    expected_kept[list(artefacts)] = False
    np.testing.assert_array_equal(epoched.kept, expected_kept)
    assert epoched.drop_reasons[2] == "peak-to-peak amplitude above the reject threshold in E1"
    assert epoched.drop_reasons[7] == "peak-to-peak amplitude above the reject threshold in E2"
    kept_onsets = onsets[expected_kept]
    assert epoched.data.shape[0] == len(kept_onsets) == epoched.n_kept
    pre = epoched.times <= 0
    for row, onset in enumerate(kept_onsets):
        segment = _brute_force(data, onset, SFREQ, -0.1, 0.3)
        np.testing.assert_allclose(epoched.data[row], segment - segment[:, pre].mean(axis=1, keepdims=True),
                                   rtol=1e-9, atol=1e-15)


def test_bad_channels_are_left_out_and_picks_select_types(rng: np.random.Generator) -> None:
    types = ["eeg", "eeg", "mag", "grad", "grad", "eog", "stim"]
    raw = _planted_raw(rng, rng.normal(0.0, 1e-6, (len(types), int(SFREQ * 5))), types=types)
    raw.info["bads"] = ["E1", "E3"]
    onsets = np.array([1.0, 2.0])
    base = {"baseline": None, "h_freq": None}
    epoched = epoch_raw(raw, onsets, EpochOptions(**base))
    assert epoched.ch_names == ["E0", "E2", "E4"] and epoched.ch_types == ["eeg", "mag", "grad"]
    assert epoched.bads == ["E1", "E3"]
    np.testing.assert_allclose(epoched.data[1], _brute_force(raw.get_data(), 2.0, SFREQ, -0.1, 0.6)[[0, 2, 4]],
                               rtol=1e-12)
    assert epoch_raw(raw, onsets, EpochOptions(picks=("meg",), **base)).ch_names == ["E2", "E4"]
    only_mag = epoch_raw(raw, onsets, EpochOptions(picks=["mag"], **base))
    assert only_mag.ch_names == ["E2"] and only_mag.bads == []
    assert epoch_raw(raw, onsets, EpochOptions(picks=("eeg",), **base)).bads == ["E1"]
    raw.info["bads"] = ["E0", "E1"]
    with pytest.raises(InputMissingError, match="no good eeg channels") as info:
        epoch_raw(raw, onsets, EpochOptions(picks=("eeg",), **base))
    assert info.value.exit_code == EXIT_INPUT_MISSING


def test_projectors_of_the_recording_are_applied_over_good_channels(rng: np.random.Generator) -> None:
    """An average-reference projector stored with the recording is applied; the bad channel is
    neither in the data nor in the average."""
    data = rng.normal(0.0, 1e-6, (4, int(SFREQ * 5))) + np.array([[10e-6], [20e-6], [30e-6], [90e-6]])
    raw = _planted_raw(rng, data)
    raw.info["bads"] = ["E3"]
    raw.set_eeg_reference(projection=True, verbose=False)
    epoched = epoch_raw(raw, np.array([1.0, 3.0]), EpochOptions(baseline=None, h_freq=None))
    assert epoched.ch_names == ["E0", "E1", "E2"]
    for i, onset in enumerate((1.0, 3.0)):
        good = _brute_force(data, onset, SFREQ, -0.1, 0.6)[:3]
        np.testing.assert_allclose(epoched.data[i], good - good.mean(axis=0), rtol=1e-9, atol=1e-15)


def test_onsets_that_cannot_give_an_epoch(rng: np.random.Generator) -> None:
    raw = _planted_raw(rng, rng.normal(0.0, 1e-6, (2, int(SFREQ * 4))))
    raw.set_annotations(mne.Annotations(onset=[2.9], duration=[0.2], description=["BAD_blink"]))
    onsets = np.array([0.05, 1.0, np.nan, 1.0, 3.0, 3.95, -1.0])
    epoched = epoch_raw(raw, onsets, EpochOptions(h_freq=None))
    assert epoched.kept.tolist() == [False, True, False, False, False, False, False]
    outside = OUT_OF_RANGE
    assert epoched.drop_reasons == [outside, "", "no onset (not a finite number)", "same onset sample as event 1",
                                    "overlaps a 'BAD_blink' annotation", outside, outside]
    assert epoched.data.shape == (1, 2, 176)


def test_no_epoch_left_still_gives_times(rng: np.random.Generator) -> None:
    raw = _planted_raw(rng, rng.normal(0.0, 1e-6, (2, int(SFREQ * 4))))
    options = EpochOptions(h_freq=None, resample_hz=125.0)
    reference = epoch_raw(raw, np.array([2.0]), options)
    empty = epoch_raw(raw, np.array([-5.0, 100.0]), options)
    assert empty.data.shape == (0, 2, reference.data.shape[2]) and not empty.kept.any()
    np.testing.assert_allclose(empty.times, reference.times)
    assert empty.sfreq == 125.0
    rejected = epoch_raw(raw, np.array([2.0]), EpochOptions(h_freq=None, reject={"eeg": 1e-9}))
    assert rejected.data.shape == (0, 2, 176) and rejected.drop_reasons[0].startswith("peak-to-peak")


def test_cut_offs_above_nyquist_are_a_spec_error(rng: np.random.Generator) -> None:
    raw = _planted_raw(rng, rng.normal(0.0, 1e-6, (1, 1000)), sfreq=60.0)
    with pytest.raises(SpecError, match=r"meeg.h_freq \(40 Hz\) must be below the Nyquist frequency \(30 Hz\)") as info:
        epoch_raw(raw, np.array([5.0]), EpochOptions())
    assert info.value.exit_code == EXIT_INVALID_SPEC


def test_epoch_options_mirror_the_spec() -> None:
    from bids_dnn.spec import MeegSpec

    meeg = MeegSpec(reject={"eeg": 1e-4}, picks=["eeg"], baseline=[-0.1, 0.0])
    options = EpochOptions(**meeg.model_dump(include=EpochOptions.field_names()))
    assert options == EpochOptions(reject={"eeg": 1e-4}, picks=("eeg",), baseline=(-0.1, 0.0))
    defaults = EpochOptions(**MeegSpec().model_dump(include=EpochOptions.field_names()))
    assert defaults == EpochOptions()
    with pytest.raises(ValueError):
        EpochOptions(tmin=0.5, tmax=0.1)
    with pytest.raises(ValueError):
        EpochOptions(picks=("ecg",))
    with pytest.raises(ValueError):
        EpochOptions(tmin=-0.1, baseline=(-0.2, 0.0))
    with pytest.raises(ValueError):
        EpochOptions(reject={"eeg": -1.0})


@pytest.mark.parametrize("which", [0, 2])  # BrainVision EEG; FIF MEG starting at first_samp 300
def test_epochs_at_events_tsv_onsets_match_mne_events(meeg_dataset: Path, capfd, which: int) -> None:
    """Onsets from events.tsv (read as the workflow reads them) give the epochs MNE cuts at the
    events MNE-BIDS made from the same file; nothing is printed on the way."""
    from bids_dnn.io.stimuli import read_events

    run = find_meeg_runs(meeg_dataset, "01")[which]
    raw = read_meeg_raw(run)
    onsets = read_events(run.events_path)["onset"].to_numpy()
    options = EpochOptions(tmin=-0.1, tmax=0.5, baseline=(None, 0.0), l_freq=1.0, h_freq=30.0)
    epoched = epoch_raw(raw, onsets, options)
    assert epoched.kept.all() and epoched.bads == raw.info["bads"]
    events, _ = mne.events_from_annotations(raw, verbose=False)
    filtered = raw.copy().load_data(verbose=False).filter(1.0, 30.0, verbose=False)
    reference = mne.Epochs(filtered, events, tmin=-0.1, tmax=0.5, baseline=(None, 0.0),
                           picks=mne.pick_types(raw.info, meg=True, eeg=True, exclude="bads"), preload=True,
                           verbose=False)
    assert reference.ch_names == epoched.ch_names and len(reference) == len(onsets)
    np.testing.assert_allclose(epoched.data, reference.get_data(), rtol=1e-7, atol=1e-20)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert not raw.preload  # the recording is left as read


def test_epoching_with_every_step_prints_nothing_and_keeps_mne_warnings(meeg_dataset: Path, capfd) -> None:
    raw = read_meeg_raw(find_meeg_runs(meeg_dataset, "01")[0])
    messages: list[str] = []
    options = EpochOptions(l_freq=0.5, h_freq=30.0, resample_hz=100.0, reject={"eeg": 1.0})
    epoched = epoch_raw(raw, np.array([2.0, 4.0, 6.0]), options, messages=messages)
    assert epoched.ch_names == ["Fz", "Cz", "Pz"] and epoched.bads == ["Oz"] and epoched.kept.all()
    assert epoched.sfreq == 100.0 and len(epoched.times) == 71
    long_filter = EpochOptions(l_freq=0.05, h_freq=None)  # a 0.05 Hz high-pass is longer than the 20 s recording
    epoch_raw(raw, np.array([2.0]), long_filter, messages=messages)
    assert [m for m in messages if "longer than the signal" in m and m.startswith("sub-01_task-faces_run-1_eeg")]
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


# ---------------------------------------------------------------------------------------------------
# Preprocessed epochs
# ---------------------------------------------------------------------------------------------------
def _write_epochs(path: Path, rng: np.random.Generator, with_metadata: bool) -> mne.EpochsArray:
    import pandas as pd

    info = mne.create_info(["Fz", "Cz", "MEG0111", "EOG"], 100.0, ["eeg", "eeg", "mag", "eog"])
    info["bads"] = ["Cz"]
    events = np.column_stack([np.arange(4) * 100 + 50, np.zeros(4, int), [1, 2, 1, 3]])
    metadata = pd.DataFrame({"stim_file": ["a.png", "b.png", "c.png", "d.png"]}, index=[3, 5, 8, 9]) \
        if with_metadata else None
    epochs = mne.EpochsArray(rng.normal(0.0, 1e-6, (4, 4, 30)), info, events=events, tmin=-0.1,
                             event_id={"face/famous": 1, "face/unfamiliar": 2, "scrambled": 3}, metadata=metadata,
                             baseline=None, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs.save(path, overwrite=True, verbose=False)
    return epochs


def test_find_and_read_epochs_files(tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "epochs"
    folder = root / "sub-01" / "ses-a" / "eeg"
    epochs = _write_epochs(folder / "sub-01_ses-a_task-x_proc-clean_epo.fif", rng, with_metadata=True)
    _write_epochs(folder / "sub-01_ses-a_task-x_epo.fif", rng, with_metadata=False)
    (folder / "sub-01_ses-a_task-y_epo.fif").write_bytes(b"")
    (root / "sub-02").mkdir()
    (root / "sub-02" / "sub-02_task-x_epo.fif").write_text("x")
    (folder / "sub-01_ses-a_task-x_ave.fif").write_text("x")
    assert [p.name for p in find_epochs_files(root, "sub-01")] == [
        "sub-01_ses-a_task-x_epo.fif", "sub-01_ses-a_task-x_proc-clean_epo.fif", "sub-01_ses-a_task-y_epo.fif"]
    assert [p.name for p in find_epochs_files(root, "01", task="x", session="a", processing="clean")] == [
        "sub-01_ses-a_task-x_proc-clean_epo.fif"]
    assert find_epochs_files(root, "01", session="b") == []

    epoched, metadata, names = read_epochs_file(folder / "sub-01_ses-a_task-x_proc-clean_epo.fif")
    assert epoched.ch_names == ["Fz", "MEG0111"] and epoched.ch_types == ["eeg", "mag"] and epoched.bads == ["Cz"]
    np.testing.assert_allclose(epoched.data, epochs.get_data()[:, [0, 2]], rtol=1e-6)  # MNE saves single precision
    np.testing.assert_allclose(epoched.times, np.arange(-10, 20) / 100.0, atol=1e-12)
    assert names == ["face/famous", "face/unfamiliar", "face/famous", "scrambled"]
    assert epoched.kept.all() and epoched.drop_reasons == [""] * 4 and epoched.sfreq == 100.0
    assert metadata is not None and metadata["stim_file"].tolist() == ["a.png", "b.png", "c.png", "d.png"]
    assert metadata.index.tolist() == [0, 1, 2, 3]
    plain, no_metadata, _ = read_epochs_file(folder / "sub-01_ses-a_task-x_epo.fif", picks=["mag"])
    assert no_metadata is None and plain.ch_names == ["MEG0111"] and plain.bads == []

    with pytest.raises(InputMissingError, match=r"sub-01_ses-a_task-y_epo\.fif is empty \(0 bytes\)"):
        read_epochs_file(folder / "sub-01_ses-a_task-y_epo.fif")
    with pytest.raises(InputMissingError, match=r"^cannot read epochs file .*sub-02_task-x_epo\.fif: "):
        read_epochs_file(root / "sub-02" / "sub-02_task-x_epo.fif")
    with pytest.raises(InputMissingError, match="epochs folder not found"):
        find_epochs_files(tmp_path / "nowhere", "01")


# ---------------------------------------------------------------------------------------------------
# Real example layouts (../shared/data/bids-examples): ds000117's MEG files are all empty
# ---------------------------------------------------------------------------------------------------
@pytest.mark.shared
def test_bids_examples_meg_layout_is_found_and_empty_files_are_refused(shared_data: Path) -> None:
    root = shared_data / "bids-examples" / "ds000117"
    if not root.is_dir():
        pytest.skip("bids-examples/ds000117 not in the shared data")
    runs = find_meeg_runs(root, "04")
    assert [r.run for r in runs] == ["01", "02", "03", "04", "05", "06"]
    assert {(r.datatype, r.session, r.task) for r in runs} == {("meg", "meg", "facerecognition")}
    assert all(r.events_path is not None and r.events_path.parent == r.raw_path.parent for r in runs)
    assert {r.channels_path for r in runs} == {root / "sub-04" / "ses-meg" /
                                               "sub-04_ses-meg_task-facerecognition_channels.tsv"}
    assert find_meeg_runs(root, "04", datatype="eeg") == []  # its EEG is inside the FIF files
    every_subject = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
    for subject in every_subject:
        for run in find_meeg_runs(root, subject):
            with pytest.raises(InputMissingError) as info:
                read_meeg_raw(run)
            shown = run.raw_path.relative_to(root).as_posix()
            assert info.value.message == f"{shown} is empty (0 bytes)"
            assert info.value.exit_code == EXIT_INPUT_MISSING
