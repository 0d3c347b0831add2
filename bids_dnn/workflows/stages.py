"""Resume bookkeeping: the content key of every participant-level stage and which stages of an
earlier run are still current.

A stage (e.g. ``brain``: ROI masks and brain RDMs, ``rsa:<model>``, ``searchlight:<model>``,
``encoding``, ``report``) is *current* when the participant's status file records the same content
key for it and every output it listed still exists. The key hashes everything the stage's
outputs depend on: the bids_dnn version, the spec fragment it reads, the keys of the stages it
uses, and fingerprints of its input files (path relative to the dataset, size and modification
time; a file rewritten in place, even with the same size, gets a new modification time).
A rerun recomputes the stages that are not current and leaves the others' files untouched.
Output paths are recorded relative to the output folder, so a rerun from another working
directory (or with an absolute instead of a relative OUT_DIR) finds them. Files that an earlier
run recorded and that no stage of the current run lists any more (a stage the spec dropped, or
a recomputed stage writing other names) are removed (:meth:`StageLedger.remove_obsolete`);
nothing else is ever deleted.
This module knows nothing of BIDS or of the analyses; ``participant.py`` decides the stages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_dnn import __version__, hashing

#: bump when a stage's outputs change for the same inputs (invalidates every recorded key)
STAGE_SCHEMA = 1


def content_key(*ingredients: Any) -> str:
    """SHA-256 (hex) of the bids_dnn version, :data:`STAGE_SCHEMA` and ``ingredients``.

    Ingredients are anything JSON can encode (dicts with sorted keys; other objects by ``str``).
    """
    return hashing.content_key(__version__, STAGE_SCHEMA, *ingredients)


def file_fingerprint(path: Path, root: Path | None = None) -> list[Any]:
    """``[name, size, mtime_ns]`` of a file; ``name`` relative to ``root`` when it lies inside.

    A missing file gets ``[name, None, None]`` (so its later appearance changes the key).
    """
    path = Path(path)
    name = str(path)
    if root is not None:
        try:
            name = str(path.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    try:
        stat = os.stat(path)
    except OSError:
        return [name, None, None]
    return [name, int(stat.st_size), int(stat.st_mtime_ns)]


#: outputs up to this size are hashed (SHA-256) when recorded; larger ones by size and mtime only
CHECKSUM_MAX_BYTES = 64 * 2**20


def output_checksum(path: Path) -> str | None:
    """``"<size>:<sha256>"`` of a file (``"<size>:mtime:<ns>"`` above :data:`CHECKSUM_MAX_BYTES`);
    None when it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    if stat.st_size > CHECKSUM_MAX_BYTES:
        return f"{stat.st_size}:mtime:{stat.st_mtime_ns}"
    return f"{stat.st_size}:{hashing.file_sha256(path)}"


def changed_outputs(root: Path, record: Mapping[str, Any]) -> list[str]:
    """The outputs of a recorded stage whose file no longer matches its recorded checksum
    (edited, replaced or deleted since; stages recorded without checksums: existence only)."""
    checksums = record.get("checksums") or {}
    changed = []
    for rel in record.get("outputs", []):
        path = Path(root) / rel
        if rel in checksums:
            if output_checksum(path) != checksums[rel]:
                changed.append(rel)
        elif not path.is_file():
            changed.append(rel)
    return changed


def files_fingerprint(paths: Iterable[Path], root: Path | None = None) -> list[list[Any]]:
    """Fingerprints of ``paths``, sorted by name (order of discovery does not matter)."""
    return sorted(file_fingerprint(p, root) for p in paths)


@dataclass
class StageLedger:
    """The stages recorded by an earlier run and those completed by this one.

    Parameters
    ----------
    root : Path
        Output folder, as the output layout names it (absolute, or relative to the working
        directory). Recorded output paths are relative to it, so a status file stays valid when
        the same folder is named from another working directory or by an absolute path.
    previous : mapping
        ``stage name -> {"key": str, "outputs": [relative paths]}`` from the status file
        (empty to recompute everything, e.g. with ``--force``).
    recorded : mapping, optional
        Every stage whose outputs an earlier run wrote and recorded (:func:`removable_stages`
        of the status file; also with ``--force``): the only files :meth:`remove_obsolete` may
        delete. Default: ``previous``.
    """

    root: Path
    previous: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    recorded: Mapping[str, Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        source = self.previous if self.recorded is None else self.recorded
        self.recorded = {name: dict(record) for name, record in source.items()}

    def is_current(self, name: str, key: str) -> bool:
        """Whether stage ``name`` was completed with ``key`` and all its outputs are still the
        files it wrote (their recorded checksums, :func:`changed_outputs`)."""
        record = self.previous.get(name)
        if not record or record.get("key") != key:
            return False
        return not changed_outputs(self.root, record)

    def keep(self, name: str) -> list[Path]:
        """Carry an earlier, current stage over to this run; returns its outputs (``root / name``)."""
        record = dict(self.previous[name])
        self.done[name] = {"key": record["key"], "outputs": list(record.get("outputs", [])),
                           "checksums": dict(record.get("checksums") or {})}
        return [self.root / rel for rel in self.done[name]["outputs"]]

    def record(self, name: str, key: str, outputs: Iterable[Path]) -> None:
        """Mark stage ``name`` completed by this run with ``outputs``.

        ``outputs`` are paths inside ``root`` as the output layout builds them: absolute, or
        relative to the working directory like a relative OUT_DIR (``out/sub-01/...``). They are
        recorded relative to ``root``.
        """
        rels = sorted({self.relative(path) for path in outputs})
        checksums = {rel: output_checksum(self.root / rel) for rel in rels}
        self.done[name] = {"key": key, "outputs": rels,
                           "checksums": {rel: value for rel, value in checksums.items() if value is not None}}

    def relative(self, path: Path | str) -> str:
        """``path`` (absolute or relative to the working directory) relative to ``root``.

        Raises
        ------
        ValueError
            When ``path`` is not inside ``root`` (a stage's outputs always are).
        """
        absolute, root = Path(os.path.abspath(path)), Path(os.path.abspath(self.root))
        try:
            return absolute.relative_to(root).as_posix()
        except ValueError:  # one of them reached through a symbolic link
            return absolute.resolve().relative_to(root.resolve()).as_posix()

    def outputs(self) -> list[str]:
        """Every output (relative path) of the stages done or kept so far, sorted."""
        return sorted({rel for record in self.done.values() for rel in record["outputs"]})

    def pending(self) -> dict[str, dict[str, Any]]:
        """Recorded stages of an earlier run that this run has neither kept nor recomputed yet
        (nor removed): written to the status file as ``pending`` so that a run stopped before
        recomputing them still knows their files (:func:`removable_stages`)."""
        assert self.recorded is not None
        return {name: dict(record) for name, record in sorted(self.recorded.items()) if name not in self.done}

    def remove_obsolete(self, stages: Iterable[str]) -> list[Path]:
        """Delete the files recorded for ``stages`` by an earlier run that no stage lists any more.

        Call it for the recorded stages that the current spec no longer has (before computing
        anything), and for a stage right after :meth:`record` replaced its outputs (before the
        status file is written: a run stopped in between still finds them recorded). A file
        listed by a stage done or kept by this run, or by another recorded stage not yet
        recomputed, stays. Only recorded names inside ``root`` are touched: a name that is
        absolute or climbs out with ``..`` is ignored, and so is anything but a file or link.

        Returns
        -------
        list of Path
            The files removed (``root / name``), sorted.
        """
        assert self.recorded is not None
        names = [name for name in dict.fromkeys(stages) if name in self.recorded]
        candidates = {rel for name in names for rel in self.recorded[name].get("outputs", [])}
        protected = set(self.outputs()) | {rel for name, record in self.recorded.items()
                                           if name not in names and name not in self.done
                                           for rel in record.get("outputs", [])}
        removed = []
        for rel in sorted(candidates - protected):
            parts = Path(rel).parts
            if not rel or Path(rel).is_absolute() or ".." in parts:
                continue
            path = self.root / rel
            try:
                if path.is_symlink() or path.is_file():
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                pass
        for name in names:
            del self.recorded[name]
        return removed


def recorded_stages(status: Mapping[str, Any] | None, field_name: str = "stages") -> dict[str, dict[str, Any]]:
    """The ``stages`` (or another ``field_name``, e.g. ``pending``) of a status file (empty for
    none, or for one written before stages existed); malformed records are ignored."""
    if not status or not isinstance(status.get(field_name), dict):
        return {}
    return {name: dict(record) for name, record in status[field_name].items()
            if isinstance(record, dict) and isinstance(record.get("key"), str)
            and isinstance(record.get("outputs", []), list)
            and all(isinstance(rel, str) for rel in record.get("outputs", []))}


def removable_stages(status: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every stage of a status file whose outputs this tool wrote: its ``stages`` and the
    ``pending`` ones (:meth:`StageLedger.pending`) of a run that stopped before redoing them."""
    return {**recorded_stages(status, "pending"), **recorded_stages(status)}
