"""The epochs of an EEG / MEG participant: every stimulus event of every run of the task, cut from
the recording (read with MNE-BIDS, preprocessed as section ``meeg`` says) or read from ready-made
epochs (``-d epochs=PATH``, ``*_epo.fif``), labelled with the stimulus it presents, and joined
over runs on the channels every run has."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.console import logger
from bids_dnn.errors import AnalysisError, InputMissingError, NothingSelectedError
from bids_dnn.io.stimuli import StimulusSet
from bids_dnn.workflows.context import Context

__all__ = ["SubjectEpochs", "epoch_options", "subject_epochs", "meeg_input_files", "unreadable_recordings",
           "QUALITY_COLUMNS"]

QUALITY_COLUMNS = {
    "run": "Recording (its BIDS entities).",
    "n_events": "Stimulus events of the run (events naming a stimulus of the task).",
    "n_kept": "Epochs kept.",
    "n_rejected": "Epochs dropped by the peak-to-peak rejection (meeg.reject).",
    "n_out_of_range": "Epochs dropped because they reach past the recording.",
    "n_channels": "Channels analysed.",
    "bad_channels": "Channels left out (marked bad in channels.tsv), comma-separated; n/a when none.",
    "sfreq": "Sampling rate of the analysed epochs (Hz).",
}


@dataclass
class SubjectEpochs:
    """A participant's epochs over all runs.

    Attributes
    ----------
    data : numpy.ndarray, shape (n_trials, n_channels, n_times)
        SI units (V, T, T/m).
    times : numpy.ndarray, shape (n_times,)
        Seconds from the stimulus onset.
    labels : numpy.ndarray of int, shape (n_trials,)
        Index into the task's stimulus list of the stimulus each epoch presents.
    ch_names : list of str
    ch_types : list of str
    quality : pandas.DataFrame
        One row per run, :data:`QUALITY_COLUMNS`.
    """

    data: np.ndarray
    times: np.ndarray
    labels: np.ndarray
    ch_names: list[str]
    ch_types: list[str]
    quality: pd.DataFrame = field(default_factory=pd.DataFrame)

    def trials_per_stimulus(self, n_stimuli: int) -> np.ndarray:
        """Kept epochs of every stimulus, shape (n_stimuli,)."""
        return np.bincount(self.labels, minlength=n_stimuli)


def epoch_options(ctx: Context) -> Any:
    """The adapter's epoching options from section ``meeg``."""
    from bids_dnn.io.meeg import EpochOptions

    meeg = ctx.spec.meeg
    return EpochOptions(tmin=meeg.tmin, tmax=meeg.tmax, baseline=meeg.baseline, l_freq=meeg.l_freq,
                        h_freq=meeg.h_freq, resample_hz=meeg.resample_hz,
                        reject=dict(meeg.reject) if meeg.reject else None,
                        picks=list(meeg.picks) if meeg.picks else None)


def _recordings(ctx: Context, subject: str) -> dict[tuple[str | None, str | None], Any]:
    """(session, run) -> the participant's recording of the task."""
    from bids_dnn.io.meeg import find_meeg_runs

    found = find_meeg_runs(Path(ctx.options.bids_dir), subject, task=ctx.task, datatype=ctx.layout.datatype)
    return {(rec.session, rec.run): rec for rec in found}


def _stimulus_onsets(ctx: Context, events_path: Path, stimuli: StimulusSet) -> tuple[np.ndarray, np.ndarray]:
    """Onsets (s) and stimulus indices of the events of a run that present a stimulus of the task."""
    from bids_dnn.io.stimuli import condition_column, read_events

    stim_spec = ctx.spec.stimuli
    events = read_events(events_path)
    conditions = condition_column(events, stimuli, stim_spec.source, stim_spec.trial_type_map,
                                  stim_spec.ignore_trial_types)
    position = {sid: i for i, sid in enumerate(stimuli.stim_ids)}
    index = conditions.map(position)
    rows = index.notna().to_numpy()
    return events["onset"].to_numpy(dtype=np.float64)[rows], index[rows].to_numpy(dtype=np.int64)


def unreadable_recordings(ctx: Context) -> dict[str, InputMissingError]:
    """Participants with an empty, missing or broken recording (a cheap check of the files, before
    any work), each with the error of its first such file."""
    from bids_dnn.io.meeg import check_meeg_files

    if "epochs" in ctx.options.derivatives:
        return {}
    bad: dict[str, InputMissingError] = {}
    for subject in ctx.subjects:
        for recording in _recordings(ctx, subject).values():
            try:
                check_meeg_files(recording)
            except InputMissingError as exc:
                bad[subject] = exc
                break
    return bad


def meeg_input_files(ctx: Context, subject: str) -> list[Path]:
    """Every file a participant's epochs are read from (recordings and their sidecars, events,
    channels, ready-made epochs): their fingerprints are part of the resume key."""
    files: list[Path] = []
    if "epochs" in ctx.options.derivatives:
        from bids_dnn.io.meeg import find_epochs_files

        folder = Path(ctx.options.derivatives["epochs"])
        files += find_epochs_files(folder, subject, task=ctx.task, processing="clean") or \
            find_epochs_files(folder, subject, task=ctx.task)
    else:
        for rec in _recordings(ctx, subject).values():
            raw = Path(rec.raw_path)
            files += [p for p in raw.parent.glob(raw.name.split(".")[0] + ".*") if p.is_file()]
            files += [p for p in (rec.events_path, rec.channels_path) if p is not None]
    files += [run.events for run in ctx.index.events(ctx.task, [subject], ctx.options.session_labels)]
    return sorted(set(Path(f) for f in files))


def subject_epochs(ctx: Context, subject: str, stimuli: StimulusSet) -> SubjectEpochs:
    """Cut (or read) every stimulus epoch of a participant and label it with its stimulus.

    Raises
    ------
    NothingSelectedError
        No events of the task for the participant (exit 18).
    InputMissingError
        An events file without its recording, or an empty or unreadable recording (exit 66).
    AnalysisError
        Runs whose epochs cannot be joined (other time axes), or no epoch left (exit 1).
    """
    if "epochs" in ctx.options.derivatives:
        return _ready_made_epochs(ctx, subject, stimuli)
    from bids_dnn.io.meeg import epoch_raw, read_meeg_raw

    runs = ctx.index.events(ctx.task, [subject], ctx.options.session_labels)
    if not runs:
        raise NothingSelectedError(f"sub-{subject} has no {ctx.layout.datatype.upper()} events for task "
                                   f"'{ctx.task}' with the given filters")
    recordings = _recordings(ctx, subject)
    options = epoch_options(ctx)
    parts, quality = [], []
    for run in runs:
        recording = recordings.get((run.session, run.run))
        if recording is None:
            raise InputMissingError(f"{run.events.name}: no {ctx.layout.datatype.upper()} recording of this run "
                                    f"next to it", "each *_events.tsv needs its recording (e.g. *_eeg.vhdr, "
                                    "*_eeg.edf, *_meg.fif) with the same entities")
        onsets, labels = _stimulus_onsets(ctx, run.events, stimuli)
        raw = read_meeg_raw(recording)
        epoched = epoch_raw(raw, onsets, options)
        kept = np.asarray(epoched.kept, dtype=bool)
        reasons = list(epoched.drop_reasons)
        rejected = sum(1 for k, why in zip(kept, reasons) if not k and why and "range" not in why.lower())
        quality.append({"run": run.key, "n_events": int(onsets.size), "n_kept": int(kept.sum()),
                        "n_rejected": int(rejected), "n_out_of_range": int((~kept).sum() - rejected),
                        "n_channels": len(epoched.ch_names),
                        "bad_channels": ", ".join(epoched.bads) if epoched.bads else "n/a",
                        "sfreq": float(epoched.sfreq)})
        parts.append((epoched, labels[kept]))
    return _join_runs(subject, parts, pd.DataFrame(quality, columns=list(QUALITY_COLUMNS)))


def _ready_made_epochs(ctx: Context, subject: str, stimuli: StimulusSet) -> SubjectEpochs:
    """Epochs from ``-d epochs=PATH``: each epoch's stimulus from the epochs' metadata (``stim_file``
    or ``stim_id`` column) or, else, from its event name (a stimulus id or file)."""
    from bids_dnn.io.meeg import find_epochs_files, read_epochs_file
    from bids_dnn.io.stimuli import normalize_stimulus_path

    folder = Path(ctx.options.derivatives["epochs"])
    # MNE-BIDS-Pipeline writes _epo, _proc-ica_epo and _proc-clean_epo files of the same epochs: the clean ones
    files = find_epochs_files(folder, subject, task=ctx.task, processing="clean") or \
        find_epochs_files(folder, subject, task=ctx.task)
    if not files:
        raise InputMissingError(f"no *_epo.fif of sub-{subject} (task {ctx.task}) under "
                                f"{ctx.options.derivatives['epochs']}", "check -d epochs=PATH")
    by_id = {sid: i for i, sid in enumerate(stimuli.stim_ids)}
    by_file = {normalize_stimulus_path(f): by_id[sid] for f, sid in stimuli.file_to_id().items()}
    parts, quality = [], []
    for path in files:
        epoched, metadata, names = read_epochs_file(path)
        keys: list[Any]
        if metadata is not None and "stim_file" in metadata.columns:
            keys = [by_file.get(normalize_stimulus_path(str(v))) for v in metadata["stim_file"]]
        elif metadata is not None and "stim_id" in metadata.columns:
            keys = [by_id.get(str(v)) for v in metadata["stim_id"]]
        else:
            keys = [by_id.get(str(n), by_file.get(normalize_stimulus_path(str(n)))) for n in names]
        known = np.array([k is not None for k in keys], dtype=bool)
        if not known.any():
            raise InputMissingError(f"{path.name}: no epoch names a stimulus of the task",
                                    "give the epochs metadata a stim_file or stim_id column, or event names "
                                    "that are stimulus files")
        labels = np.array([k for k in keys if k is not None], dtype=np.int64)
        epoched.data = epoched.data[known]
        quality.append({"run": path.name, "n_events": int(known.size), "n_kept": int(known.sum()),
                        "n_rejected": 0, "n_out_of_range": 0, "n_channels": len(epoched.ch_names),
                        "bad_channels": ", ".join(epoched.bads) if epoched.bads else "n/a",
                        "sfreq": float(epoched.sfreq)})
        parts.append((epoched, labels))
    return _join_runs(subject, parts, pd.DataFrame(quality, columns=list(QUALITY_COLUMNS)))


def _join_runs(subject: str, parts: list[tuple[Any, np.ndarray]], quality: pd.DataFrame) -> SubjectEpochs:
    """One array over runs, on the channels every run has (in the first run's order)."""
    first = parts[0][0]
    common = [name for name in first.ch_names if all(name in p.ch_names for p, _ in parts)]
    dropped = sorted({name for p, _ in parts for name in p.ch_names} - set(common))
    if dropped:
        logger.info("sub-%s: %d channel(s) not in every run left out: %s", subject, len(dropped), ", ".join(dropped))
    if not common:
        raise AnalysisError(f"sub-{subject}: the runs share no channel", "check the channels.tsv files")
    data, labels = [], []
    for epoched, run_labels in parts:
        if epoched.times.shape != first.times.shape or not np.allclose(epoched.times, first.times, atol=1e-9):
            raise AnalysisError(f"sub-{subject}: runs have different epoch time axes ({first.times.size} samples at "
                                f"{first.sfreq:g} Hz vs {epoched.times.size} at {epoched.sfreq:g} Hz)",
                                "set meeg.resample_hz so that every run is analysed at one rate")
        order = [epoched.ch_names.index(name) for name in common]
        data.append(np.asarray(epoched.data, dtype=np.float64)[:, order])
        labels.append(np.asarray(run_labels, dtype=np.int64))
    joined = np.concatenate(data) if data else np.zeros((0, len(common), first.times.size))
    if joined.shape[0] == 0:
        raise AnalysisError(f"sub-{subject}: no epoch left (all rejected or out of the recording)",
                            "check meeg.reject and the events' onsets")
    types = [first.ch_types[first.ch_names.index(name)] for name in common]
    return SubjectEpochs(joined, np.asarray(first.times, dtype=np.float64), np.concatenate(labels), common, types,
                         quality)
