"""Events -> the ordered stimulus set; stimulus path resolution and safety checks.

The stimulus set is built from the events of *all* participants of the task (not only the
ones selected on the command line), so that parallel participant jobs agree on one stimulus
order and share one feature file. Rows are ordered by category, then by file name: the order of
every RDM.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np
import pandas as pd

from bids_dnn.errors import BidsValidationError, InputMissingError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".webm", ".mov", ".mkv"}
REQUIRED_EVENT_COLUMNS = ("onset", "duration")
MIN_STIMULI = 3


@dataclass(frozen=True)
class StimulusSet:
    """The ordered stimuli of one task.

    Attributes
    ----------
    stim_ids : list of str, length n_stimuli
        Identifiers (the file path under ``stimuli/`` without extension).
    files : list of str
        Paths relative to the stimulus folder, as written in the events.
    paths : list of Path
        Resolved absolute paths.
    categories : list of str
    sha256 : list of str
    source_dirs : list of str
        The folder each file came from.
    """

    stim_ids: list[str]
    files: list[str]
    paths: list[Path]
    categories: list[str]
    sha256: list[str]
    source_dirs: list[str]

    @property
    def n_stimuli(self) -> int:
        return len(self.stim_ids)

    def to_table(self) -> pd.DataFrame:
        return pd.DataFrame({"stim_id": self.stim_ids, "stim_file": self.files,
                             "category": self.categories, "sha256": self.sha256,
                             "source": self.source_dirs})

    def set_hash(self) -> str:
        blob = "\n".join(f"{i}\t{h}" for i, h in zip(self.stim_ids, self.sha256)).encode()
        return hashlib.sha256(blob).hexdigest()

    def file_to_id(self) -> dict[str, str]:
        return dict(zip(self.files, self.stim_ids))


def read_events(path: Path) -> pd.DataFrame:
    """Read and check one ``*_events.tsv``.

    Raises
    ------
    BidsValidationError
        Missing ``onset`` / ``duration`` columns, non-numeric values, negative durations.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"stim_file": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BidsValidationError(f"{path.name}: not a readable TSV ({exc.__class__.__name__})") from None
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in table.columns]
    if missing:
        raise BidsValidationError(f"{path.name}: missing column(s) {', '.join(missing)}",
                                  "events files need onset and duration columns")
    for column in REQUIRED_EVENT_COLUMNS:
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = numeric.isna() & table[column].notna()
        if bad.any() or numeric.isna().any():
            row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
            raise BidsValidationError(f"{path.name}: column '{column}' must be numeric (row {row + 2}: "
                                      f"{table[column].iloc[row]!r})")
        table[column] = numeric.astype(float)
    if (table["duration"] < 0).any():
        row = int(np.flatnonzero((table["duration"] < 0).to_numpy())[0])
        raise BidsValidationError(f"{path.name}: negative duration in row {row + 2}")
    if (table["onset"] < 0).any():
        row = int(np.flatnonzero((table["onset"] < 0).to_numpy())[0])
        raise BidsValidationError(f"{path.name}: negative onset in row {row + 2}")
    return table


def stimulus_column(events: pd.DataFrame, source: str, trial_type_map: dict[str, str] | None,
                    ignore: Iterable[str] = ()) -> pd.Series:
    """The stimulus file of every event (NaN for events that are not stimuli)."""
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
        files = events[column].astype(object)
    files = files.where(files.notna() & (files.astype(str).str.strip() != ""), np.nan)
    if ignored and "trial_type" in events.columns:
        files = files.where(~events["trial_type"].isin(ignored), np.nan)
    return files


def _is_safe_relative(text: str) -> bool:
    pure = PurePosixPath(text.replace("\\", "/"))
    return not pure.is_absolute() and ".." not in pure.parts and not (len(text) > 1 and text[1] == ":")


def resolve_stimulus(file: str, search_dirs: list[Path], dataset_root: Path) -> tuple[Path | None, Path | None, str | None]:
    """Resolve ``file`` against the stimulus folders.

    Returns
    -------
    (path, folder, problem)
        The resolved file and the folder it came from, or a problem description.
    """
    if not _is_safe_relative(file):
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


def check_stimulus_file(path: Path) -> str | None:
    """A reason why ``path`` is not a usable stimulus, or None."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return f"{path.name}: video stimuli are not supported yet (images only)"
    if suffix not in IMAGE_EXTENSIONS:
        return f"{path.name}: unsupported file type '{suffix}' (images: {', '.join(sorted(IMAGE_EXTENSIONS))})"
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"{path.name}: unreadable ({exc.strerror})"
    if size == 0:
        return f"{path.name}: empty file (0 bytes)"
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt images
        detail = str(exc).replace(str(path), path.name)
        detail = detail if len(detail) <= 100 else detail[:97] + "..."
        return f"{path.name}: not a readable image ({exc.__class__.__name__}: {detail})"
    return None


def load_image(path: Path):
    """Open an image as RGB (grayscale, palette and RGBA converted)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.split()[3])
            return background
        return image.convert("RGB")


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stim_id_for(file: str) -> str:
    """Identifier of a stimulus file: its path under stimuli/ without extension."""
    pure = PurePosixPath(file.replace("\\", "/"))
    return str(pure.with_suffix(""))


def build_stimulus_set(events_tables: list[pd.DataFrame], bids_dir: Path, *, source: str = "stim_file",
                       trial_type_map: dict[str, str] | None = None, category_column: str | None = None,
                       ignore_trial_types: Iterable[str] = (), extra_dirs: Iterable[Path] = ()) -> StimulusSet:
    """Collect, resolve and check every stimulus named in ``events_tables``.

    Parameters
    ----------
    events_tables : list of DataFrame
        Events of all runs of the task.
    bids_dir : Path
        Dataset root; files are looked for under ``extra_dirs`` first (stimulus derivatives),
        then ``bids_dir/stimuli``.

    Raises
    ------
    InputMissingError
        Listing every missing or unreadable file at once (exit 66).
    BidsValidationError
        Unsafe paths, fewer than 3 stimuli, or conflicting categories.
    """
    bids_dir = Path(bids_dir)
    search_dirs = [Path(d) for d in extra_dirs] + [bids_dir / "stimuli"]
    categories: dict[str, str] = {}
    for events in events_tables:
        files = stimulus_column(events, source, trial_type_map, ignore_trial_types)
        cat_col = category_column or ("category" if "category" in events.columns else
                                      "trial_type" if "trial_type" in events.columns else None)
        if category_column and category_column not in events.columns:
            raise BidsValidationError(f"stimuli.category_column '{category_column}' is not an events column")
        for row, file in files.items():
            if not isinstance(file, str):
                continue
            category = str(events.at[row, cat_col]) if cat_col else "stimulus"
            categories.setdefault(file.strip(), category)
    if not categories:
        raise BidsValidationError("no event names a stimulus file",
                                  f"fill the {'stim_file' if source == 'stim_file' else source} column of the events")
    problems: list[str] = []
    unsafe: list[str] = []
    resolved: dict[str, tuple[Path, Path]] = {}
    for file in sorted(categories):
        path, folder, problem = resolve_stimulus(file, search_dirs, bids_dir)
        detail = problem[len(file):] if problem and problem.startswith(file) else (problem or "")
        if problem and ("must be relative" in detail or "symlink leaves" in detail):
            unsafe.append(problem)
        elif problem:
            problems.append(problem)
        else:
            reason = check_stimulus_file(path)
            if reason:
                problems.append(f"{file}: {reason.split(': ', 1)[1]}")
            else:
                resolved[file] = (path, folder)
    if unsafe:
        raise BidsValidationError("unsafe stimulus path(s):\n  " + "\n  ".join(unsafe),
                                  "stim_file must name a file inside stimuli/")
    if problems:
        raise InputMissingError(f"{len(problems)} stimulus file(s) missing or unreadable:\n  " + "\n  ".join(problems))
    if len(resolved) < MIN_STIMULI:
        raise BidsValidationError(f"only {len(resolved)} distinct stimuli; RSA needs at least {MIN_STIMULI}")
    order = sorted(resolved, key=lambda f: (categories[f], f))
    ids = [stim_id_for(f) for f in order]
    if len(set(ids)) != len(ids):
        ids = list(order)
    return StimulusSet(stim_ids=ids, files=order, paths=[resolved[f][0] for f in order],
                       categories=[categories[f] for f in order], sha256=[file_sha256(resolved[f][0]) for f in order],
                       source_dirs=[_describe_dir(resolved[f][1], bids_dir) for f in order])


def _describe_dir(folder: Path, bids_dir: Path) -> str:
    try:
        return str(folder.resolve().relative_to(bids_dir.resolve()))
    except ValueError:
        return str(folder)


def condition_column(events: pd.DataFrame, stimuli: StimulusSet, source: str,
                     trial_type_map: dict[str, str] | None, ignore: Iterable[str] = ()) -> pd.Series:
    """The GLM condition of every event: the stim_id for stimuli, ``nuisance_<trial_type>`` else."""
    files = stimulus_column(events, source, trial_type_map, ignore)
    mapping = stimuli.file_to_id()
    conditions = files.map(lambda f: mapping.get(f.strip()) if isinstance(f, str) else None)
    other = events["trial_type"].astype(str) if "trial_type" in events.columns else pd.Series("other", index=events.index)
    nuisance = "nuisance_" + other.str.replace(r"[^A-Za-z0-9]", "", regex=True)
    return conditions.where(conditions.notna(), nuisance)
