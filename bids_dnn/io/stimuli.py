"""Events -> the ordered stimulus set; stimulus path resolution and safety checks.

The stimulus set is built from the events of *all* participants of the task (not only the
ones selected on the command line), so that parallel participant jobs agree on one stimulus
order and share one feature file. Rows are ordered by category, then by file name: the order of
every RDM.

Events name their stimuli in one of three ways (``stimuli.source``):

``stim_file``
    a file path under ``stimuli/``; the stimulus id is the path without extension.
``stimuli_tsv``
    a ``stim_id`` that BEP044-style ``stimuli/stimuli.tsv`` maps to a file (columns ``stim_id``,
    ``stim_file`` relative to the folder of the table, optional annotations such as
    ``category``); the stimulus id is the table's ``stim_id``. Chosen automatically when the
    events have ``stim_id`` but no ``stim_file`` and a ``stimuli.tsv`` exists. A row with an
    empty ``stim_file`` and a non-empty ``text`` column is a *text stimulus given in the table*:
    its content is that text (see :class:`StimulusSet` for how it is stored).
``trial_type``
    a ``trial_type`` mapped to a file by the spec's ``trial_type_map``.

Every stimulus file (image, video, text or sound: :func:`~bids_dnn.io.stimulus_loading.stimulus_kind`)
is checked (and later loaded) by :mod:`bids_dnn.io.stimulus_loading`; its SHA-256
(:func:`bids_dnn.hashing.file_sha256`; for a text given in ``stimuli.tsv``, the SHA-256 of its
UTF-8 text) is part of the stimulus set's identity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.errors import BidsValidationError, InputMissingError
from bids_dnn.hashing import file_sha256, text_sha256
from bids_dnn.io.stimulus_loading import CHECK_SHORTER_SIDE, check_stimulus_file, is_video, stimulus_kind
from bids_dnn.io.text import load_text, normalize_text

__all__ = ["EXAMPLES_PER_KIND", "MAX_LISTED_DUPLICATES", "MAX_LISTED_PROBLEMS", "MIN_STIMULI", "NOT_ANNOTATIONS",
           "PROBLEM_HINTS", "REQUIRED_EVENT_COLUMNS", "SOURCE_COLUMNS", "STIMULI_TABLE", "TEXT_COLUMN", "StimuliTable",
           "StimulusSet", "build_stimulus_set", "condition_column", "find_stimuli_table", "is_safe_relative",
           "normalize_stimulus_path", "read_events", "read_stimuli_table", "resolve_stimulus", "stim_id_for",
           "stimulus_annotations", "stimulus_column", "stimulus_input_identity", "stimulus_problems_error",
           "stimulus_text"]

REQUIRED_EVENT_COLUMNS = ("onset", "duration")
MIN_STIMULI = 3
#: the BEP044 stimulus table, looked for in each stimulus folder (the first one found wins)
STIMULI_TABLE = "stimuli.tsv"
#: the ``stimuli.tsv`` column whose text is the stimulus itself in a row without ``stim_file``
TEXT_COLUMN = "text"
#: events column holding the stimulus name, per (effective) source
SOURCE_COLUMNS = {"stim_file": "stim_file", "stimuli_tsv": "stim_id", "trial_type": "trial_type"}


@dataclass(frozen=True)
class StimulusSet:
    """The ordered stimuli of one task.

    Attributes
    ----------
    stim_ids : list of str, length n_stimuli
        Identifiers (the file path under ``stimuli/`` without extension, or the ``stim_id`` of
        ``stimuli.tsv``).
    files : list of str
        Paths relative to the stimulus folder, as written in the events (or ``stimuli.tsv``);
        ``""`` for a text given in ``stimuli.tsv`` (see ``texts``).
    paths : list of Path
        Resolved absolute paths; for a text given in ``stimuli.tsv``, the path of that table.
    categories : list of str
    sha256 : list of str
        SHA-256 of each file's content; for a text given in ``stimuli.tsv``, of its UTF-8 text
        (:func:`bids_dnn.hashing.text_sha256`, after :func:`bids_dnn.io.text.normalize_text`).
    source_dirs : list of str
        The folder each file (or ``stimuli.tsv``) came from.
    events_source : {"stim_file", "stimuli_tsv", "trial_type"}
        How the events name the stimuli (the effective ``stimuli.source``: ``stimuli_tsv``
        also when it was detected automatically); :func:`condition_column` follows it.
    annotations : dict of str to list
        Per-stimulus annotations by name, in ``stim_ids`` order (text as written, ``None`` where
        missing): every annotation column of ``stimuli.tsv`` and every events column with at most
        one value per stimulus (:func:`stimulus_annotations`). ``category`` is ``categories``.
    texts : list of (str or None)
        Length n_stimuli, or empty (the default) when no stimulus is a text given in
        ``stimuli.tsv``: the text of each such stimulus (normalised, :func:`bids_dnn.io.text.normalize_text`),
        None for the stimuli that are files. Read any stimulus's text with :func:`stimulus_text`.
    """

    stim_ids: list[str]
    files: list[str]
    paths: list[Path]
    categories: list[str]
    sha256: list[str]
    source_dirs: list[str]
    events_source: str = "stim_file"
    annotations: dict[str, list[str | None]] = field(default_factory=dict)
    texts: list[str | None] = field(default_factory=list)

    @property
    def n_stimuli(self) -> int:
        return len(self.stim_ids)

    @property
    def kinds(self) -> list[str | None]:
        """The kind of each stimulus, in ``stim_ids`` order: ``"image"``, ``"video"``, ``"text"``
        (a ``.txt`` file or a text given in ``stimuli.tsv``) or ``"audio"``
        (:func:`bids_dnn.io.stimulus_loading.stimulus_kind`)."""
        return ["text" if self.texts and self.texts[i] is not None else stimulus_kind(path)
                for i, path in enumerate(self.paths)]

    @property
    def has_video(self) -> bool:
        """Whether any stimulus is a video file."""
        return any(is_video(path) for path in self.paths)

    @property
    def has_text(self) -> bool:
        """Whether any stimulus is a text (a ``.txt`` file or a text given in ``stimuli.tsv``)."""
        return "text" in self.kinds

    @property
    def has_audio(self) -> bool:
        """Whether any stimulus is a sound file (wav, flac, ogg, mp3)."""
        return "audio" in self.kinds

    def to_table(self) -> pd.DataFrame:
        return pd.DataFrame({"stim_id": self.stim_ids, "stim_file": self.files,
                             "category": self.categories, "sha256": self.sha256,
                             "source": self.source_dirs})

    def set_hash(self) -> str:
        """SHA-256 of the ``stim_id<TAB>file SHA-256`` lines, in row order."""
        return text_sha256("\n".join(f"{i}\t{h}" for i, h in zip(self.stim_ids, self.sha256)))

    def file_to_id(self) -> dict[str, str]:
        return dict(zip(self.files, self.stim_ids))


def read_events(path: Path) -> pd.DataFrame:
    """Read and check one ``*_events.tsv`` the way BIDS defines it.

    ``onset`` must be a finite number (negative onsets, e.g. a response before the first volume,
    are valid BIDS); ``duration`` a finite number >= 0 or ``n/a`` (unknown). Whether a row can be
    modelled is decided later, for the rows the analysis uses (:func:`bids_dnn.brain.glm.fit_run_glm`).
    The table's ``attrs["source_file"]`` holds the file name, for messages about its rows.

    Raises
    ------
    BidsValidationError
        Empty file, missing ``onset`` / ``duration`` columns, a value that is not a number (or
        ``n/a`` in ``duration``), an infinite value, a negative duration; the message names the
        row (as numbered in the file, header = row 1) and the value as written.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise BidsValidationError(f"{path.name}: empty file (0 bytes)",
                                  "an events file needs at least a header row with onset and duration")
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False,
                            dtype={"stim_file": str, "stim_id": str, "trial_type": str, "category": str,
                                   "onset": str, "duration": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BidsValidationError(f"{path.name}: not a readable TSV ({exc.__class__.__name__})") from None
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in table.columns]
    if missing:
        raise BidsValidationError(f"{path.name}: missing column(s) {', '.join(missing)}",
                                  "events files need onset and duration columns")
    for column in REQUIRED_EVENT_COLUMNS:
        written = table[column]
        numeric = pd.to_numeric(written, errors="coerce")
        allowed_na = written.isna() if column == "duration" else pd.Series(False, index=table.index)
        bad = numeric.isna() & ~allowed_na
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise BidsValidationError(f"{path.name}: column '{column}' must be numeric (row {row + 2}: "
                                      f"{_as_written(written.iloc[row])})")
        infinite = np.isinf(numeric.to_numpy(dtype=float))
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise BidsValidationError(f"{path.name}: column '{column}' must be a finite number (row {row + 2}: "
                                      f"{_as_written(written.iloc[row])})")
        table[column] = numeric.astype(float)
    if (table["duration"] < 0).any():
        row = int(np.flatnonzero((table["duration"] < 0).to_numpy())[0])
        raise BidsValidationError(f"{path.name}: negative duration in row {row + 2}")
    table.attrs["source_file"] = path.name
    return table


def _check_stimulus_durations(events: pd.DataFrame, names: pd.Series) -> None:
    """Refuse a stimulus event with duration ``n/a`` (valid BIDS, but the GLM must model it)."""
    unknown = names.map(lambda n: isinstance(n, str)) & events["duration"].isna()
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise BidsValidationError(
            f"{events.attrs.get('source_file', 'events')}: row {row + 2}: duration 'n/a' on a stimulus event "
            f"({names.iloc[row]}), which the GLM must model", "give the duration of every stimulus event in seconds")


def _as_written(value: Any) -> str:
    """A TSV cell as the user wrote it (``n/a`` for a missing value)."""
    return "'n/a'" if pd.isna(value) else repr(str(value))


def stimulus_column(events: pd.DataFrame, source: str, trial_type_map: dict[str, str] | None,
                    ignore: Iterable[str] = ()) -> pd.Series:
    """The stimulus of every event (NaN for events that are not stimuli).

    A file under the stimulus folder for ``stim_file`` and ``trial_type``, the ``stim_id``
    (a key of ``stimuli.tsv``) for ``stimuli_tsv``.
    """
    ignored = set(ignore)
    if source == "trial_type":
        if "trial_type" not in events.columns:
            raise BidsValidationError("stimuli.source is 'trial_type' but the events have no trial_type column")
        files = events["trial_type"].map(trial_type_map or {})
    else:
        column = "stim_file" if source == "stim_file" else "stim_id"
        if column not in events.columns:
            raise BidsValidationError(f"events have no '{column}' column",
                                      "name each stimulus in a stim_file column, or set stimuli.source")
        files = events[column].map(lambda v: v if isinstance(v, str) or pd.isna(v) else str(v)).astype(object)
    files = files.where(files.notna() & (files.astype(str).str.strip() != ""), np.nan)
    if source != "stimuli_tsv":  # file paths: one spelling per file (ids of stimuli.tsv are names, kept)
        files = files.map(lambda v: normalize_stimulus_path(v) if isinstance(v, str) else v)
    if ignored and "trial_type" in events.columns:
        files = files.where(~events["trial_type"].isin(ignored), np.nan)
    return files


def normalize_stimulus_path(text: str) -> str:
    """One spelling per stimulus file: ``./a.png``, ``a.png`` and ``.//a.png`` are ``a.png``.

    Surrounding white space, ``.`` components and repeated or trailing slashes are removed
    (:class:`~pathlib.PurePosixPath`); ``..`` and a leading ``/`` are kept, so the safety check
    still sees them, and so is the case (file systems may tell ``A.png`` from ``a.png``).
    """
    stripped = text.strip()
    return str(PurePosixPath(stripped)) if stripped else stripped


def is_safe_relative(text: str) -> bool:
    """Whether ``text`` is a relative path that stays inside its folder (no ``..``, no drive)."""
    pure = PurePosixPath(text.replace("\\", "/"))
    return not pure.is_absolute() and ".." not in pure.parts and not (len(text) > 1 and text[1] == ":")


def resolve_stimulus(file: str, search_dirs: list[Path], dataset_root: Path) -> tuple[Path | None, Path | None, str | None]:
    """Resolve ``file`` against the stimulus folders.

    Returns
    -------
    (path, folder, problem)
        The resolved file and the folder it came from, or a problem description.
    """
    if not is_safe_relative(file):
        return None, None, f"{file}: path must be relative to stimuli/ and must not contain '..'"
    if "\x00" in file:
        return None, None, f"{file!r}: not a valid file name (contains a NUL character)"
    for folder in search_dirs:
        candidate = folder / file
        try:
            present = candidate.exists() or candidate.is_symlink()
        except (OSError, ValueError) as exc:  # e.g. name too long
            return None, None, f"{file}: not a valid file name ({getattr(exc, 'strerror', None) or exc})"
        if present:
            try:
                real = candidate.resolve()
            except (OSError, RuntimeError):  # symlink loop
                return None, None, f"{file}: unreadable (symbolic link loop)"
            allowed = [dataset_root.resolve(), folder.resolve()]
            if not any(real == a or a in real.parents for a in allowed):
                return None, None, f"{file}: symlink leaves the dataset ({real})"
            return candidate, folder, None
    return None, None, f"{file}: not found in {', '.join(str(d) for d in search_dirs)}"


def stimulus_input_identity(stimuli: StimulusSet, video: Any, audio: Any = None) -> dict[str, Any]:
    """What besides the files determines the model input: the video sampling and sound cropping.

    Merge into the model identity of the feature content key.

    Parameters
    ----------
    stimuli : StimulusSet
    video : bids_dnn.spec.VideoOptions or None
    audio : bids_dnn.spec.AudioOptions, optional

    Returns
    -------
    dict
        Empty for image-only sets (so their feature keys do not change); ``"video": {fps,
        n_frames, aggregate}`` when any stimulus is a video (and ``video`` is given);
        ``"audio": {max_seconds}`` when any stimulus is a sound (and ``audio`` is given). The
        sampling rate of sounds is the model's, part of its own identity.
    """
    identity: dict[str, Any] = {}
    if video is not None and stimuli.has_video:
        identity["video"] = {"fps": float(video.fps), "n_frames": video.n_frames, "aggregate": video.aggregate}
    if audio is not None and stimuli.has_audio:
        identity["audio"] = {"max_seconds": float(audio.max_seconds)}
    return identity


def stimulus_text(stimuli: StimulusSet, i: int) -> str:
    """The text of stimulus ``i``, whether given in ``stimuli.tsv`` or as a ``.txt`` file.

    Parameters
    ----------
    stimuli : StimulusSet
    i : int
        Position in ``stimuli.stim_ids``.

    Returns
    -------
    str
        Normalised (:func:`bids_dnn.io.text.normalize_text`), not empty.

    Raises
    ------
    ValueError
        Stimulus ``i`` is not a text.
    InputMissingError
        Its file became unreadable since the set was built.
    """
    if stimuli.texts and stimuli.texts[i] is not None:
        return stimuli.texts[i]
    if stimulus_kind(stimuli.paths[i]) != "text":
        raise ValueError(f"stimulus {stimuli.stim_ids[i]!r} ({stimuli.files[i]}) is not a text")
    return load_text(stimuli.paths[i])


def stim_id_for(file: str) -> str:
    """Identifier of a stimulus file: its path under stimuli/ without extension."""
    pure = PurePosixPath(file.replace("\\", "/"))
    return str(pure.with_suffix(""))


@dataclass(frozen=True)
class StimuliTable:
    """A BEP044-style ``stimuli.tsv``: one row per stimulus.

    Attributes
    ----------
    path : Path
        The table; ``stim_file`` paths are relative to its folder.
    files : dict of str to str
        ``stim_id`` -> ``stim_file`` (``""`` where the row names no file).
    annotations : DataFrame
        All columns as strings (missing values as NaN), indexed by ``stim_id``.
    texts : dict of str to str
        ``stim_id`` -> text (normalised, :func:`bids_dnn.io.text.normalize_text`) of the rows
        without ``stim_file`` whose ``text`` column is not empty: text stimuli.
    """

    path: Path
    files: dict[str, str]
    annotations: pd.DataFrame
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent


def find_stimuli_table(search_dirs: Iterable[Path]) -> Path | None:
    """The first ``stimuli.tsv`` among ``search_dirs`` (stimulus derivatives before ``stimuli/``)."""
    for folder in search_dirs:
        candidate = Path(folder) / STIMULI_TABLE
        if candidate.is_file():
            return candidate
    return None


def read_stimuli_table(path: Path) -> StimuliTable:
    """Read and check a ``stimuli.tsv`` (columns ``stim_id``, ``stim_file``, any annotations).

    A row with an empty ``stim_file`` and a non-empty ``text`` column is a text stimulus
    (``texts``); the ``stim_file`` column may then be left out altogether.

    Raises
    ------
    BidsValidationError
        Unreadable TSV, missing ``stim_id`` / ``stim_file`` column (``stim_file`` may be missing
        when there is a ``text`` column), empty or duplicate ids (every problem listed at once).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a"], keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise BidsValidationError(f"{path.name}: not a readable TSV ({exc.__class__.__name__})",
                                  "stimuli.tsv needs tab-separated stim_id and stim_file columns") from None
    missing = [c for c in ("stim_id", "stim_file") if c not in table.columns
               and not (c == "stim_file" and TEXT_COLUMN in table.columns)]
    if missing:
        raise BidsValidationError(f"{path}: missing column(s) {', '.join(missing)}",
                                  "stimuli.tsv needs a stim_id and a stim_file column (path relative to its folder)")
    ids = table["stim_id"].fillna("").str.strip()
    problems = [f"row {i + 2}: empty stim_id" for i in np.flatnonzero((ids == "").to_numpy())]
    counts = ids[ids != ""].value_counts()
    problems += [f"duplicate stim_id {sid!r} ({n} rows)" for sid, n in sorted(counts[counts > 1].items())]
    if problems:
        raise BidsValidationError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems),
                                  "every row of stimuli.tsv needs its own stim_id")
    table = table.assign(stim_id=ids).set_index("stim_id", drop=False)
    named = table["stim_file"] if "stim_file" in table.columns else pd.Series("", index=table.index)
    files = dict(zip(ids, named.fillna("").map(normalize_stimulus_path)))
    texts: dict[str, str] = {}
    if TEXT_COLUMN in table.columns:
        for sid, value in zip(ids, table[TEXT_COLUMN]):
            text = normalize_text(value) if isinstance(value, str) else ""
            if text and not files[sid]:
                texts[sid] = text
    return StimuliTable(path=path, files=files, annotations=table, texts=texts)


def _stimuli_table_for(events_tables: list[pd.DataFrame], source: str, given: StimuliTable | Path | None,
                       search_dirs: list[Path]) -> StimuliTable | None:
    """The stimuli.tsv to use, or None when the events name files / trial types."""
    if source == "trial_type":
        return None
    if source == "stim_file":
        automatic = (not any("stim_file" in t.columns for t in events_tables)
                     and any("stim_id" in t.columns for t in events_tables))
        if not automatic:
            return None
    path = given if given is not None else find_stimuli_table(search_dirs)
    if path is None:
        if source == "stim_file":
            return None  # stimulus_column reports the missing stim_file column
        raise BidsValidationError(f"stimuli.source is '{source}' but there is no {STIMULI_TABLE} in "
                                  f"{', '.join(str(d) for d in search_dirs)}",
                                  "add stimuli/stimuli.tsv with stim_id and stim_file columns")
    return path if isinstance(path, StimuliTable) else read_stimuli_table(path)


def build_stimulus_set(events_tables: list[pd.DataFrame], bids_dir: Path, *, source: str = "stim_file",
                       trial_type_map: dict[str, str] | None = None, category_column: str | None = None,
                       ignore_trial_types: Iterable[str] = (), extra_dirs: Iterable[Path] = (),
                       stimuli_table: StimuliTable | Path | None = None,
                       require_durations: bool = False) -> StimulusSet:
    """Collect, resolve and check every stimulus named in ``events_tables``.

    Parameters
    ----------
    events_tables : list of DataFrame
        Events of all runs of the task.
    bids_dir : Path
        Dataset root; files are looked for under ``extra_dirs`` first (stimulus derivatives),
        then ``bids_dir/stimuli``.
    source : {"stim_file", "stimuli_tsv", "trial_type"}
        How the events name stimuli (see the module docstring). ``stim_file`` switches to
        ``stimuli_tsv`` when no events table has a ``stim_file`` column, one has ``stim_id``
        and a ``stimuli.tsv`` exists.
    category_column : str, optional
        A ``stimuli.tsv`` column (table mode) or events column. Default: ``category`` of
        ``stimuli.tsv`` when present, else the events' ``category``, else ``trial_type``.
    stimuli_table : StimuliTable or Path, optional
        The ``stimuli.tsv`` to use; default: the first ``stimuli.tsv`` in ``extra_dirs``, then
        ``bids_dir/stimuli`` (its ``stim_file`` paths are resolved against its folder first).
    require_durations : bool
        Refuse a stimulus event whose duration is ``n/a`` (the GLM must model it); ``False`` for
        ready-made betas, where durations are not used.

    Raises
    ------
    InputMissingError
        Listing every missing or unreadable file at once (exit 66).
    BidsValidationError
        Unsafe paths, fewer than 3 stimuli, a bad ``stimuli.tsv`` or stim_ids it lacks.
    """
    bids_dir = Path(bids_dir)
    search_dirs = [Path(d) for d in extra_dirs] + [bids_dir / "stimuli"]
    table = _stimuli_table_for(events_tables, source, stimuli_table, search_dirs)
    effective = "stimuli_tsv" if table is not None else source
    if table is not None:
        search_dirs = [table.folder] + [d for d in search_dirs if d.resolve() != table.folder.resolve()]
    table_columns = set(table.annotations.columns) if table is not None else set()
    categories: dict[str, str] = {}  # stimulus name in the events -> category
    event_values: dict[str, dict[str, set[str]]] = {}  # events column -> stimulus name -> values
    for events in events_tables:
        names = stimulus_column(events, effective, trial_type_map, ignore_trial_types)
        if category_column and category_column not in events.columns and category_column not in table_columns:
            where = "an events or stimuli.tsv column" if table is not None else "an events column"
            raise BidsValidationError(f"stimuli.category_column '{category_column}' is not {where}")
        cat_col = category_column or ("category" if "category" in events.columns else
                                      "trial_type" if "trial_type" in events.columns else None)
        cat_col = cat_col if cat_col in events.columns else None
        if require_durations:
            _check_stimulus_durations(events, names)
        for row, name in names.items():
            if not isinstance(name, str):
                continue
            category = str(events.at[row, cat_col]) if cat_col else "stimulus"
            categories.setdefault(name.strip(), category)
            for column in events.columns.difference(NOT_ANNOTATIONS):
                value = events.at[row, column]
                if not (isinstance(value, float) and np.isnan(value)) and str(value).strip() not in ("", "n/a"):
                    event_values.setdefault(column, {}).setdefault(name.strip(), set()).add(str(value).strip())
    if not categories:
        raise BidsValidationError("no event names a stimulus file",
                                  f"fill the {SOURCE_COLUMNS.get(effective, effective)} column of the events")
    if table is not None:
        file_of, categories = _map_through_table(table, categories, category_column)
    else:
        file_of = {name: name for name in categories}
    text_of = {name: table.texts[name] for name, file in file_of.items() if not file} if table is not None else {}
    problems: list[tuple[str, str]] = []  # (file as named, what is wrong with it)
    unsafe: list[str] = []
    resolved: dict[str, tuple[Path, Path]] = {}
    for file in sorted(set(file_of.values()) - {""}):
        path, folder, problem = resolve_stimulus(file, search_dirs, bids_dir)
        detail = problem[len(file):] if problem and problem.startswith(file) else (problem or "")
        if problem and ("must be relative" in detail or "symlink leaves" in detail):
            unsafe.append(problem)
        elif problem:
            named, separator, reason = problem.partition(": ")  # "<file as named or quoted>: <reason>"
            problems.append((named, reason) if separator else ("", problem))
        else:
            reason = check_stimulus_file(path)
            if reason:
                problems.append((file, reason.split(": ", 1)[1]))
            else:
                resolved[file] = (path, folder)
    if unsafe:
        raise BidsValidationError("unsafe stimulus path(s):\n  " + "\n  ".join(unsafe),
                                  f"{'stimuli.tsv stim_file' if table is not None else 'stim_file'} "
                                  "must name a file inside stimuli/")
    if problems:
        raise stimulus_problems_error(problems)
    if len(file_of) < MIN_STIMULI:
        raise BidsValidationError(f"only {len(file_of)} distinct stimuli; RSA needs at least {MIN_STIMULI}")
    order = sorted(file_of, key=lambda n: (categories[n], file_of[n], n))
    files = [file_of[n] for n in order]
    if table is not None:
        ids = list(order)
    else:
        ids = [stim_id_for(f) for f in order]
        if len(set(ids)) != len(ids):
            ids = list(order)
    digests = {f: file_sha256(resolved[f][0]) for f in set(files) - {""}}
    text_digests = {name: text_sha256(text) for name, text in text_of.items()}
    _warn_identical_content({**digests, **{f"{name} ({STIMULI_TABLE} text)": digest
                                           for name, digest in text_digests.items()}})
    _log_large_images({f: resolved[f][0] for f in set(files) - {""}})
    if text_of:  # texts given in stimuli.tsv: no file; the table stands for it (see StimulusSet)
        resolved[""] = (table.path, table.folder)
    return StimulusSet(stim_ids=ids, files=files, paths=[resolved[f][0] for f in files],
                       categories=[categories[n] for n in order],
                       sha256=[text_digests[n] if n in text_of else digests[file_of[n]] for n in order],
                       source_dirs=[_describe_dir(resolved[f][1], bids_dir) for f in files],
                       events_source=effective, annotations=stimulus_annotations(order, event_values, table),
                       texts=[text_of.get(n) for n in order] if text_of else [])


#: events columns that are not stimulus annotations (timing and the stimulus name itself)
NOT_ANNOTATIONS = ["onset", "duration", "stim_file", "stim_id", "sample", "response_time"]


def stimulus_annotations(names: list[str], event_values: dict[str, dict[str, set[str]]],
                         table: StimuliTable | None) -> dict[str, list[str | None]]:
    """Per-stimulus annotations, in ``names`` order (text as written; ``None`` where missing).

    Every annotation column of ``stimuli.tsv`` (``table``), then every events column whose
    non-missing values are one per stimulus (a column whose value changes between presentations
    of a stimulus, e.g. a response, is no annotation of the stimulus). A ``stimuli.tsv`` column
    wins over an events column of the same name.
    """
    annotations: dict[str, list[str | None]] = {}
    if table is not None:
        for column in table.annotations.columns.difference(["stim_id", "stim_file"]):
            values = table.annotations[column]
            annotations[column] = [None if not isinstance(v, str) or not v.strip() else v.strip()
                                   for v in (values.get(n) for n in names)]
    for column, by_name in event_values.items():
        if column in annotations or any(len(v) > 1 for v in by_name.values()):
            continue
        annotations[column] = [next(iter(by_name[n])) if n in by_name else None for n in names]
    return annotations


def _log_large_images(paths: dict[str, Path]) -> None:
    """One log line when images are much larger than a network needs (they are decoded reduced)."""
    from bids_dnn.io.media import DECODE_HEADROOM, image_size

    sizes = {file: size for file, path in sorted(paths.items())
             if stimulus_kind(path) == "image" and (size := image_size(path)) is not None
             and min(size) >= 2 * CHECK_SHORTER_SIDE}
    if not sizes:
        return
    from bids_dnn.console import logger

    largest = max(sizes, key=lambda file: sizes[file][0] * sizes[file][1])
    width, height = sizes[largest]
    logger.info("%d stimulus image(s) are larger than a network needs (largest: %s, %d x %d pixels, %.0f megapixels); "
                "they are decoded at a reduced size, at least %d times the model's resize target on the shorter "
                "side", len(sizes), largest, width, height, width * height / 1e6, DECODE_HEADROOM)


#: identical files named in a warning (the rest are counted)
MAX_LISTED_DUPLICATES = 5


def _warn_identical_content(digests: dict[str, str]) -> None:
    """One warning when files with different names have the same content (SHA-256).

    They stay distinct stimuli (the events name them as such), but their model RDM distance is 0
    whatever the network, which a copy made by mistake would not be meant to mean.
    """
    by_digest: dict[str, list[str]] = {}
    for file, digest in sorted(digests.items()):
        by_digest.setdefault(digest, []).append(file)
    groups = [names for names in by_digest.values() if len(names) > 1]
    if not groups:
        return
    from bids_dnn.console import logger

    shown = "; ".join(" = ".join(names) for names in groups[:MAX_LISTED_DUPLICATES])
    more = f"; and {len(groups) - MAX_LISTED_DUPLICATES} more group(s)" if len(groups) > MAX_LISTED_DUPLICATES else ""
    logger.warning("%d group(s) of stimulus files have identical content (SHA-256), so the networks see the same "
                   "picture under different names and their model RDM distance is 0: %s%s; if one stimulus was "
                   "meant, name one file in the events", len(groups), shown, more)


def _map_through_table(table: StimuliTable, categories: dict[str, str],
                       category_column: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """stim_id -> file and stim_id -> category (the table's column first, else the events')."""
    unknown = sorted(sid for sid in categories if sid not in table.files)
    no_file = sorted(sid for sid in categories if table.files.get(sid) == "" and sid not in table.texts)
    if unknown or no_file:
        lines = ([f"{len(unknown)} stim_id(s) not in the table: {_listing(unknown)}"] if unknown else []) + \
                ([f"{len(no_file)} stim_id(s) without a stim_file: {_listing(no_file)}"
                  + (f" (nor a {TEXT_COLUMN})" if TEXT_COLUMN in table.annotations.columns else "")] if no_file else [])
        raise BidsValidationError(f"the events name stimuli that {table.path} cannot resolve:\n  " + "\n  ".join(lines),
                                  "add a row (stim_id, stim_file) for each (or stim_id and text for a text stimulus), "
                                  "or fix the events' stim_id")
    column = category_column or "category"
    if column in table.annotations.columns:
        values = table.annotations[column]
        categories = {sid: (str(values[sid]) if isinstance(values[sid], str) and values[sid].strip() else cat)
                      for sid, cat in categories.items()}
    return {sid: table.files[sid] for sid in categories}, categories


#: more unusable stimulus files than this are summarised by kind (``-v`` lists every one)
MAX_LISTED_PROBLEMS = 10
#: files named per kind of problem in a summary
EXAMPLES_PER_KIND = 3
#: what to do, by kind of problem (the start of its description)
PROBLEM_HINTS = {
    "empty file": "empty files are placeholders (as in bids-examples, or a DataLad / git-annex clone whose "
                  "content was not fetched): get the real files (e.g. 'datalad get stimuli')",
    "not found": "put the files under BIDS_DIR/stimuli (or pass -d stimuli=PATH); stim_file is relative to "
                 "that folder",
    "not a readable": "re-export or re-copy the damaged files",
    "unreadable": "check the files' permissions and links",
    "unsupported file type": "convert them to a supported image, video, text or sound format",
    "not a valid file name": "fix the stim_file values of the events",
    "not UTF-8 text": "save the text files as UTF-8",
    "empty text": "give every text stimulus at least one visible character",
    "empty sound": "the sound files hold no samples: re-export them",
    "silent sound": "a silent sound gives every network the same input: replace it or leave it out of the events",
}


def _problem_kind(reason: str) -> str:
    """The kind of a stimulus problem: its description without the details in brackets."""
    return reason.split(" (", 1)[0].strip()


def stimulus_problems_error(problems: list[tuple[str, str]]) -> InputMissingError:
    """One error for every unusable stimulus file (exit 66).

    Up to :data:`MAX_LISTED_PROBLEMS` files are listed one per line; more are summarised, one
    line per kind of problem with its count and the first few files, so that the message fits
    on a screen (e.g. bids-examples' hundreds of empty placeholder images); the error's
    ``details`` (shown with ``-v``) list every file. The hint says what to do for each kind.

    Parameters
    ----------
    problems : list of (str, str)
        ``(file as named in the events, what is wrong)``; an empty file name when the
        description names the file itself.
    """
    lines = [f"{file}: {reason}" if file else reason for file, reason in problems]
    kinds: dict[str, list[tuple[str, str]]] = {}
    for file, reason in problems:
        kinds.setdefault(_problem_kind(reason), []).append((file, reason))
    hints = list(dict.fromkeys(hint for kind in kinds for start, hint in PROBLEM_HINTS.items()
                               if kind.startswith(start)))
    header = f"{len(problems)} stimulus file(s) missing or unreadable"
    if len(problems) <= MAX_LISTED_PROBLEMS:
        return InputMissingError(f"{header}:\n  " + "\n  ".join(lines), "; ".join(hints) or None)
    summary = []
    for kind, items in sorted(kinds.items(), key=lambda item: -len(item[1])):
        reasons = {reason for _, reason in items}
        label = items[0][1] if len(reasons) == 1 else f"{kind} (e.g. {items[0][1][len(kind):].strip(' ()')})"
        names = [file or reason for file, reason in items[:EXAMPLES_PER_KIND]]
        more = f", ... ({len(items) - EXAMPLES_PER_KIND} more)" if len(items) > EXAMPLES_PER_KIND else ""
        summary.append(f"{len(items)} x {label}: {', '.join(names)}{more}")
    if len(summary) > MAX_LISTED_PROBLEMS:
        rest = sum(len(items) for items in sorted(kinds.values(), key=len, reverse=True)[MAX_LISTED_PROBLEMS:])
        summary = summary[:MAX_LISTED_PROBLEMS] + [f"{rest} file(s) with {len(summary) - MAX_LISTED_PROBLEMS} other "
                                                   "kinds of problem"]
    return InputMissingError(f"{header}, by kind of problem:\n  " + "\n  ".join(summary),
                             "; ".join([*hints, "run with -v to list every file"]), details=lines)


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _describe_dir(folder: Path, bids_dir: Path) -> str:
    try:
        return str(folder.resolve().relative_to(bids_dir.resolve()))
    except ValueError:
        return str(folder)


def condition_column(events: pd.DataFrame, stimuli: StimulusSet, source: str,
                     trial_type_map: dict[str, str] | None, ignore: Iterable[str] = ()) -> pd.Series:
    """The GLM condition of every event: the stim_id for stimuli, ``nuisance_<trial_type>`` else.

    Events are read the way the stimulus set was built: a set built from ``stimuli.tsv``
    (``stimuli.events_source``, also when detected automatically) maps the events' ``stim_id``
    to itself whatever ``source`` says, so betas and RDM rows line up.
    """
    if stimuli.events_source == "stimuli_tsv":
        source = "stimuli_tsv"
        mapping = {sid: sid for sid in stimuli.stim_ids}
    else:
        mapping = stimuli.file_to_id()
    files = stimulus_column(events, source, trial_type_map, ignore)
    conditions = files.map(lambda f: mapping.get(f.strip()) if isinstance(f, str) else None)
    other = events["trial_type"].astype(str) if "trial_type" in events.columns else pd.Series("other", index=events.index)
    from bids_dnn.brain.glm import NUISANCE_PREFIX

    nuisance = NUISANCE_PREFIX + other.str.replace(r"[^A-Za-z0-9]", "", regex=True)
    return conditions.where(conditions.notna(), nuisance)
