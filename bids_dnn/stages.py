"""Resume bookkeeping: the content key of every participant-level stage and which stages of an
earlier run are still current.

A stage (e.g. ``brain``: ROI masks and brain RDMs, ``rsa:<model>``, ``searchlight:<model>``,
``encoding``, ``report``) is *current* when the participant's status file records the same content
key for it and every output it listed still exists. The key hashes everything the stage's
outputs depend on: the bids_dnn version, the spec fragment it reads, the keys of the stages it
uses, and fingerprints of its input files (path relative to the dataset, size and modification
time; a file rewritten in place, even with the same size, gets a new modification time).
A rerun recomputes the stages that are not current and leaves the others' files untouched.
This module knows nothing of BIDS or of the analyses; ``participant.py`` decides the stages.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_dnn import __version__

#: bump when a stage's outputs change for the same inputs (invalidates every recorded key)
STAGE_SCHEMA = 1


def content_key(*ingredients: Any) -> str:
    """SHA-256 (hex) of the bids_dnn version, :data:`STAGE_SCHEMA` and ``ingredients``.

    Ingredients are anything JSON can encode (dicts with sorted keys; other objects by ``str``).
    """
    text = json.dumps([__version__, STAGE_SCHEMA, *ingredients], sort_keys=True, separators=(",", ":"),
                      default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


def files_fingerprint(paths: Iterable[Path], root: Path | None = None) -> list[list[Any]]:
    """Fingerprints of ``paths``, sorted by name (order of discovery does not matter)."""
    return sorted(file_fingerprint(p, root) for p in paths)


@dataclass
class StageLedger:
    """The stages recorded by an earlier run and those completed by this one.

    Parameters
    ----------
    root : Path
        Output folder; recorded output paths are relative to it.
    previous : mapping
        ``stage name -> {"key": str, "outputs": [relative paths]}`` from the status file
        (empty to recompute everything, e.g. with ``--force``).
    """

    root: Path
    previous: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    def is_current(self, name: str, key: str) -> bool:
        """Whether stage ``name`` was completed with ``key`` and all its outputs still exist."""
        record = self.previous.get(name)
        if not record or record.get("key") != key:
            return False
        return all((self.root / rel).is_file() for rel in record.get("outputs", []))

    def keep(self, name: str) -> list[Path]:
        """Carry an earlier, current stage over to this run; returns its outputs (absolute)."""
        record = dict(self.previous[name])
        self.done[name] = {"key": record["key"], "outputs": list(record.get("outputs", []))}
        return [self.root / rel for rel in self.done[name]["outputs"]]

    def record(self, name: str, key: str, outputs: Iterable[Path]) -> None:
        """Mark stage ``name`` completed by this run with ``outputs`` (absolute or relative)."""
        rels = []
        for path in outputs:
            path = Path(path)
            rels.append(str(path.relative_to(self.root)) if path.is_absolute() else str(path))
        self.done[name] = {"key": key, "outputs": sorted(set(rels))}

    def outputs(self) -> list[str]:
        """Every output (relative path) of the stages done or kept so far, sorted."""
        return sorted({rel for record in self.done.values() for rel in record["outputs"]})


def recorded_stages(status: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The ``stages`` of a status file (empty for none, or for one written before stages existed)."""
    if not status or not isinstance(status.get("stages"), dict):
        return {}
    return {name: dict(record) for name, record in status["stages"].items()
            if isinstance(record, dict) and isinstance(record.get("key"), str)}
