"""BIDS EEG and MEG inputs through MNE-BIDS: find a participant's recordings, read them, cut epochs.

Files only, no statistics: the workflow turns the epochs into time-resolved RDMs with the library
(:mod:`bids_dnn.temporal`), which never imports MNE.

- :func:`find_meeg_runs`: every raw recording of a participant under ``sub-<s>/[ses-<x>/]{eeg,meg}/``
  in a format MNE-BIDS reads (:data:`RAW_FORMATS`), with its ``*_events.tsv`` and ``*_channels.tsv``
  (BIDS inheritance: the nearest file whose entities the recording's name contains).
- :func:`check_meeg_files` / :func:`read_meeg_raw`: empty, missing or unreadable files (the data file
  itself and its companions: the ``.eeg`` / ``.vmrk`` of a BrainVision header, the ``.fdt`` of an
  EEGLAB ``.set``, later split parts of a FIF file, the ``.meg4`` / ``.res4`` of a CTF folder) stop
  with one sentence naming the file (exit 66) before MNE reads anything; MNE's own failures are
  turned into one sentence too. Channels marked ``bad`` in ``channels.tsv`` end up in
  ``raw.info["bads"]`` (MNE-BIDS does it).
- :func:`epoch_raw` (from :mod:`bids_dnn.io.meeg_epochs`, re-exported here with :class:`EpochOptions`
  and :class:`EpochedData`): pick channels, filter, epoch at given onsets, baseline, reject, resample.
- :func:`find_epochs_files` / :func:`read_epochs_file`: preprocessed epochs (``*_epo.fif``, e.g. from
  MNE-BIDS-Pipeline) given as ``-d epochs=PATH``, used as they are.

MNE's warnings (a missing sidecar, a filter longer than the signal, ...) never reach the console: the
functions that call MNE take an optional ``messages`` list and append them there (one line each,
prefixed with the file), for the participant's log.

Units are SI throughout (V for EEG, T for magnetometers, T/m for gradiometers), as MNE holds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from bids_dnn.errors import InputMissingError
from bids_dnn.io.bids import normalize_label
from bids_dnn.io.meeg_epochs import (
    EpochedData,
    EpochOptions,
    captured_mne_messages,
    epoch_raw,
    pick_data_channels,
)

if TYPE_CHECKING:  # MNE is imported where it is used: importing this module stays cheap
    import mne
    import pandas as pd

__all__ = [
    "DATATYPES",
    "RAW_FORMATS",
    "EpochOptions",
    "EpochedData",
    "MeegRun",
    "check_meeg_files",
    "epoch_raw",
    "find_epochs_files",
    "find_meeg_runs",
    "read_epochs_file",
    "read_meeg_raw",
]

#: raw formats per BIDS datatype (extension -> format) that :func:`read_meeg_raw` reads through
#: MNE-BIDS; BTi/4D recordings (folders of extension-less files) are not supported
RAW_FORMATS: dict[str, dict[str, str]] = {
    "eeg": {".vhdr": "BrainVision", ".edf": "EDF", ".bdf": "BDF (BioSemi)", ".set": "EEGLAB"},
    "meg": {".fif": "FIF (Elekta / MEGIN)", ".ds": "CTF", ".sqd": "KIT / Yokogawa", ".con": "KIT / Yokogawa"},
}
DATATYPES: tuple[str, ...] = tuple(RAW_FORMATS)
#: formats stored as a folder (every other one is a file)
_FOLDER_FORMATS = frozenset({".ds"})

_UNREADABLE_HINT = ("the file is a placeholder or was not copied completely; copy the recording again "
                    "(DataLad datasets: `datalad get` it)")


# ---------------------------------------------------------------------------------------------------
# Finding recordings
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeegRun:
    """One raw EEG or MEG recording of a participant.

    ``raw_path`` is the file MNE-BIDS opens (the ``.vhdr`` header of a BrainVision recording, the
    first part of a split FIF file, the ``.ds`` folder of a CTF recording); ``events_path`` and
    ``channels_path`` are the ``*_events.tsv`` / ``*_channels.tsv`` that apply to it (None when the
    dataset has none).
    """

    subject: str
    session: str | None
    task: str
    #: the run index with two digits at least (``run-1`` -> ``'01'``), as the events of
    #: :meth:`bids_dnn.io.bids.DatasetIndex.events` label runs; None without a run entity
    run: str | None
    datatype: str
    raw_path: Path
    events_path: Path | None = None
    channels_path: Path | None = None

    @property
    def key(self) -> str:
        """``sub-01_ses-a_task-x_run-01`` (the entities that name the run in messages and outputs)."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        parts += [f"task-{self.task}"] + ([f"run-{self.run}"] if self.run else [])
        return "_".join(parts)


def find_meeg_runs(bids_dir: str | Path, subject: str, *, task: str | None = None, session: str | None = None,
                   datatype: str | None = None) -> list[MeegRun]:
    """Every raw EEG / MEG recording of one participant, in a deterministic order.

    Looks in ``sub-<subject>/{eeg,meg}/`` and ``sub-<subject>/ses-*/{eeg,meg}/`` of the raw dataset
    (never in ``derivatives/``) for ``sub-<subject>_..._<datatype><ext>`` with an extension of
    :data:`RAW_FORMATS`. Of a split FIF recording only the first part (``split-01``) is listed: MNE
    reads the others from it. Broken links (DataLad content not retrieved) are listed too, so that
    reading them gives a clear message.

    Parameters
    ----------
    bids_dir : str or Path
        The raw BIDS dataset.
    subject : str
        Participant label, ``01`` or ``sub-01``.
    task, session : str, optional
        Keep only recordings of this task / session.
    datatype : {'eeg', 'meg'}, optional
        Keep only this datatype (both when None).

    Returns
    -------
    list of MeegRun
        Sorted by session, task, run (numerically), datatype and file name; empty when there is none.
    """
    if datatype is not None and datatype not in RAW_FORMATS:
        raise ValueError(f"datatype must be one of {', '.join(DATATYPES)}, not {datatype!r}")
    subject = normalize_label(subject, "sub")
    session = normalize_label(session, "ses") if session is not None else None
    root = Path(bids_dir)
    subject_dir = root / f"sub-{subject}"
    folders = [subject_dir] + sorted(p for p in subject_dir.glob("ses-*") if p.is_dir())
    runs = []
    for folder in folders:
        for kind in [datatype] if datatype else DATATYPES:
            if not (folder / kind).is_dir():
                continue
            for path in sorted((folder / kind).iterdir()):
                run = _recording(path, kind, subject, root)
                if run is None or (task is not None and run.task != task):
                    continue
                if session is not None and run.session != session:
                    continue
                runs.append(run)
    return sorted(runs, key=lambda r: (r.session or "", r.task, _index_key(r.run), r.datatype, r.raw_path.name))


def _recording(path: Path, datatype: str, subject: str, root: Path) -> MeegRun | None:
    """The :class:`MeegRun` of ``path`` when it is a raw recording of ``datatype``, else None."""
    extension = path.suffix
    if extension not in RAW_FORMATS[datatype]:
        return None
    if extension not in _FOLDER_FORMATS and path.is_dir():
        return None
    entities = _entities(path.name)
    if entities.get("suffix") != datatype or entities.get("sub") != subject or "task" not in entities:
        return None
    if "split" in entities and _index_key(entities["split"]) != (1, ""):
        return None
    return MeegRun(subject=subject, session=entities.get("ses"), task=entities["task"],
                   run=_run_label(entities.get("run")), datatype=datatype, raw_path=path,
                   events_path=_inherited_file(path, root, entities, "events", ".tsv"),
                   channels_path=_inherited_file(path, root, entities, "channels", ".tsv"))


def _entities(name: str) -> dict[str, str]:
    """``sub-01_task-x_run-1_eeg.vhdr`` -> {'sub': '01', 'task': 'x', 'run': '1', 'suffix': 'eeg'}."""
    parts = name.split(".", 1)[0].split("_")
    out = dict(part.split("-", 1) for part in parts if "-" in part)
    if parts and "-" not in parts[-1]:
        out["suffix"] = parts[-1]
    return out


def _run_label(value: str | None) -> str | None:
    """A run index as the project labels runs (:class:`bids_dnn.io.bids.RunInputs`, from pybids):
    ``run-1`` and ``run-01`` are both ``'01'``; a non-numeric label stays as written."""
    return f"{int(value):02d}" if value is not None and value.isdigit() else value


def _index_key(value: str | None) -> tuple[int, str]:
    """Sort key of a run / split index: numbers numerically, then other labels."""
    if value is None:
        return (-1, "")
    return (int(value), "") if str(value).isdigit() else (1 << 30, str(value))


def _inherited_file(raw_path: Path, root: Path, entities: dict[str, str], suffix: str,
                    extension: str) -> Path | None:
    """The ``*_<suffix><extension>`` that applies to ``raw_path`` by the BIDS inheritance principle.

    From the recording's folder up to the dataset root, the first folder holding such a file
    whose entities all appear, with the same values, in the recording's name; there, the file
    with the most entities. ``split`` is ignored (every part shares one events file).
    """
    wanted = {k: v for k, v in entities.items() if k not in ("suffix", "split")}
    folder = raw_path.parent
    while True:
        best, best_count = None, -1
        for candidate in sorted(folder.glob(f"*_{suffix}{extension}")):
            found = {k: v for k, v in _entities(candidate.name).items() if k != "suffix"}
            if all(k in wanted and _same_label(wanted[k], v) for k, v in found.items()) and len(found) > best_count:
                best, best_count = candidate, len(found)
        if best is not None:
            return best
        if folder == root or folder.parent == folder or root not in folder.parents:
            return None
        folder = folder.parent


def _same_label(a: str, b: str) -> bool:
    return int(a) == int(b) if a.isdigit() and b.isdigit() else a == b


# ---------------------------------------------------------------------------------------------------
# Reading raw recordings
# ---------------------------------------------------------------------------------------------------
def check_meeg_files(run: MeegRun) -> None:
    """Refuse a recording whose files are missing, broken links or empty, before MNE reads it.

    Checks the data file and every file MNE needs with it: the data and marker files a
    BrainVision header names (``DataFile=`` / ``MarkerFile=``), the ``.fdt`` next to an EEGLAB
    ``.set``, the later parts of a split FIF file, the ``.meg4`` and ``.res4`` files in a CTF
    ``.ds`` folder.

    Raises
    ------
    InputMissingError
        One sentence naming the first bad file relative to the dataset root, e.g.
        ``sub-01/eeg/sub-01_task-x_eeg.eeg is empty (0 bytes)`` (exit 66).
    """
    root = _bids_root(run)
    for path in _required_files(run.raw_path, root):
        shown = _shown(path, root)
        if path.is_symlink() and not path.exists():
            raise InputMissingError(f"{shown} is a broken link (its content is not here)", _UNREADABLE_HINT)
        if not path.exists():
            raise InputMissingError(f"{shown} does not exist", _UNREADABLE_HINT)
        if path.is_file() and path.stat().st_size == 0:
            raise InputMissingError(f"{shown} is empty (0 bytes)", _UNREADABLE_HINT)


def _required_files(raw_path: Path, root: Path) -> list[Path]:
    """``raw_path`` and the companion files MNE reads with it (:data:`_COMPANIONS`)."""
    companions = _COMPANIONS.get(raw_path.suffix)
    if companions is None or not raw_path.exists() or (raw_path.is_file() and raw_path.stat().st_size == 0):
        return [raw_path]
    return [raw_path, *companions(raw_path, root)]


def _brainvision_companions(header: Path, root: Path) -> list[Path]:
    """The data and marker files a BrainVision header names (relative to its folder)."""
    text = header.read_bytes().decode("latin-1")
    named = []
    for key in ("DataFile", "MarkerFile"):
        match = re.search(rf"^\s*{key}\s*=\s*(.+?)\s*$", text, flags=re.MULTILINE)
        if match:
            named.append(header.parent / match.group(1))
        elif key == "DataFile":
            raise InputMissingError(f"{_shown(header, root)} names no DataFile, so it is not a readable "
                                    "BrainVision header", _UNREADABLE_HINT)
    return named


def _eeglab_companions(set_file: Path, root: Path) -> list[Path]:
    """The ``.fdt`` data file next to an EEGLAB ``.set`` (when the data are not inside the .set)."""
    fdt = set_file.with_suffix(".fdt")
    return [fdt] if fdt.exists() or fdt.is_symlink() else []


def _fif_companions(first_part: Path, root: Path) -> list[Path]:
    """The later parts of a split FIF recording (``..._split-02_meg.fif``, ...)."""
    if "_split-" not in first_part.name:
        return []
    pattern = re.sub(r"_split-\d+_", "_split-*_", first_part.name)
    return [p for p in sorted(first_part.parent.glob(pattern)) if p != first_part]


def _ctf_companions(ds_folder: Path, root: Path) -> list[Path]:
    """The ``.meg4`` data and ``.res4`` resource files of a CTF ``.ds`` folder."""
    if not ds_folder.is_dir():
        raise InputMissingError(f"{_shown(ds_folder, root)} is a file, not a CTF .ds folder", _UNREADABLE_HINT)
    files = []
    for extension in (".res4", ".meg4"):
        found = sorted(ds_folder.glob(f"*{extension}"))
        if not found:
            raise InputMissingError(f"{_shown(ds_folder, root)} holds no {extension} file, so it is not a "
                                    "readable CTF recording", _UNREADABLE_HINT)
        files += found
    return files


#: extension of the file MNE-BIDS opens -> the other files it needs
_COMPANIONS: dict[str, Callable[[Path, Path], list[Path]]] = {
    ".vhdr": _brainvision_companions,
    ".set": _eeglab_companions,
    ".fif": _fif_companions,
    ".ds": _ctf_companions,
}


def read_meeg_raw(run: MeegRun, *, messages: list[str] | None = None) -> mne.io.BaseRaw:
    """Read one recording with ``mne_bids.read_raw_bids`` (not preloaded).

    Channels marked ``bad`` in ``channels.tsv`` are in ``raw.info["bads"]``; the events of
    ``events.tsv`` are in ``raw.annotations`` (the epochs use the onsets the caller passes to
    :func:`epoch_raw`, not these).

    Parameters
    ----------
    run : MeegRun
        From :func:`find_meeg_runs`.
    messages : list of str, optional
        MNE's and MNE-BIDS's warnings are appended here (``"<file>: <warning>"``), never printed.

    Returns
    -------
    mne.io.BaseRaw

    Raises
    ------
    InputMissingError
        A file is missing, empty (see :func:`check_meeg_files`) or MNE cannot read it (exit 66).
    """
    from mne_bids import BIDSPath, get_entities_from_fname, read_raw_bids

    check_meeg_files(run)
    root = _bids_root(run)
    shown = _shown(run.raw_path, root)
    with captured_mne_messages(shown, messages):
        try:
            entities = get_entities_from_fname(run.raw_path.name, on_error="raise", verbose=False)
            bids_path = BIDSPath(root=root, datatype=run.datatype, suffix=run.datatype,
                                 extension=run.raw_path.suffix, check=False, **entities)
            return read_raw_bids(bids_path, verbose="WARNING")
        except Exception as exc:  # noqa: BLE001 - any reader failure is one sentence (exit 66)
            raise InputMissingError(f"cannot read {shown}: {_one_line(exc)}", _UNREADABLE_HINT) from exc


def _bids_root(run: MeegRun) -> Path:
    """The dataset root: the folder holding ``sub-<subject>/``."""
    for parent in run.raw_path.parents:
        if parent.name == f"sub-{run.subject}":
            return parent.parent
    return run.raw_path.parent


def _shown(path: Path, root: Path) -> str:
    """``path`` as a message shows it: relative to the dataset root when inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its class and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{exc.__class__.__name__}: {first[:300]}" if first else exc.__class__.__name__


# ---------------------------------------------------------------------------------------------------
# Preprocessed epochs (-d epochs=PATH)
# ---------------------------------------------------------------------------------------------------
_EPOCHS_NAME = re.compile(r"^(?P<stem>sub-[^.]+?)[_-]epo\.fif$")


def find_epochs_files(epochs_dir: str | Path, subject: str, task: str | None = None,
                      session: str | None = None, *, processing: str | None = None) -> list[Path]:
    """A participant's preprocessed epochs files in a derivatives folder (``-d epochs=PATH``).

    Finds ``sub-<subject>_..._epo.fif`` (and MNE's older ``...-epo.fif``) anywhere under
    ``epochs_dir`` (usually ``sub-<s>/[ses-<x>/]{eeg,meg}/``); of split files only the first part.
    MNE-BIDS-Pipeline writes several per task (``_epo.fif`` before cleaning,
    ``_proc-ica_epo.fif``, ``_proc-clean_epo.fif``): choose one with ``processing``.

    Parameters
    ----------
    epochs_dir : str or Path
    subject : str
        ``01`` or ``sub-01``.
    task, session, processing : str, optional
        Keep only files with this ``task`` / ``ses`` / ``proc`` entity.

    Returns
    -------
    list of Path
        Sorted by path; empty when there is none.

    Raises
    ------
    InputMissingError
        ``epochs_dir`` is not a folder (exit 66).
    """
    root = Path(epochs_dir)
    if not root.is_dir():
        raise InputMissingError(f"epochs folder not found: {root}", "pass -d epochs=PATH pointing at the "
                                "folder of *_epo.fif files (e.g. MNE-BIDS-Pipeline's derivatives)")
    subject = normalize_label(subject, "sub")
    wanted = {"sub": subject, "task": task, "ses": normalize_label(session, "ses") if session else None,
              "proc": processing}
    found = []
    for path in sorted(root.rglob(f"sub-{subject}_*epo.fif")):
        match = _EPOCHS_NAME.match(path.name)
        if match is None or "derivatives" in path.relative_to(root).parts[:-1]:
            continue
        entities = _entities(match.group("stem"))
        if any(value is not None and not _same_label(entities.get(key, ""), value)
               for key, value in wanted.items()):
            continue
        if "split" in entities and _index_key(entities["split"]) != (1, ""):
            continue
        found.append(path)
    return found


def read_epochs_file(path: str | Path, *, picks: Sequence[str] | None = None,
                     messages: list[str] | None = None) -> tuple[EpochedData, pd.DataFrame | None, list[str]]:
    """Read preprocessed epochs (``*_epo.fif``) as they are.

    How the workflow maps epochs to stimuli: when the metadata has the column the spec's
    ``stimuli.source`` names (``stim_file`` or ``stim_id``), row ``i`` of the metadata names the
    stimulus of epoch ``i``; otherwise ``event_names[i]`` (the key of ``epochs.event_id`` for the
    epoch's event code; MNE-BIDS-Pipeline takes these from ``trial_type`` in ``events.tsv``, with
    ``/``-separated tags such as ``face/famous``) is matched like a ``trial_type`` (or a stimulus
    id / file).

    Parameters
    ----------
    path : str or Path
    picks : sequence of str, optional
        Channel types as :attr:`EpochOptions.picks`; None: every EEG and MEG channel. Bad
        channels are left out.
    messages : list of str, optional
        MNE's warnings are appended here, never printed.

    Returns
    -------
    EpochedData
        Every stored epoch is kept (``kept`` all True, ``drop_reasons`` all ``''``).
    pandas.DataFrame or None
        The epochs' metadata with a fresh index (row ``i`` = epoch ``i``), or None when none.
    list of str, length n_epochs
        The ``event_id`` name of each epoch (its event code as text when ``event_id`` lacks it).

    Raises
    ------
    InputMissingError
        The file is missing, empty or unreadable, or has no good channel of the types (exit 66).
    """
    import mne

    path = Path(path)
    if not path.exists():
        raise InputMissingError(f"epochs file {path} does not exist", _UNREADABLE_HINT)
    if path.stat().st_size == 0:
        raise InputMissingError(f"epochs file {path} is empty (0 bytes)", _UNREADABLE_HINT)
    with captured_mne_messages(path.name, messages):
        try:
            epochs = mne.read_epochs(path, preload=True, verbose="WARNING")
        except Exception as exc:  # noqa: BLE001 - any reader failure is one sentence (exit 66)
            raise InputMissingError(f"cannot read epochs file {path}: {_one_line(exc)}", _UNREADABLE_HINT) from exc
        good, bads = pick_data_channels(epochs.info, picks)
        data = epochs.get_data(picks=good, copy=True).astype(np.float64, copy=False)
    names_of_codes = {code: name for name, code in epochs.event_id.items()}
    event_names = [names_of_codes.get(int(code), str(int(code))) for code in epochs.events[:, 2]]
    types = epochs.get_channel_types()
    metadata = epochs.metadata.reset_index(drop=True) if epochs.metadata is not None else None
    return EpochedData(data=data, times=np.asarray(epochs.times, dtype=np.float64).copy(),
                       kept=np.ones(len(data), dtype=bool), drop_reasons=[""] * len(data),
                       ch_names=[epochs.ch_names[i] for i in good], ch_types=[types[i] for i in good],
                       sfreq=float(epochs.info["sfreq"]), bads=bads), metadata, event_names
