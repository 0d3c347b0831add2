"""The options of one analysis-level run, as the command line validated them.

:class:`RunOptions` is what the workflows read (paths, selection, resources, flags); the
command line (:mod:`bids_dnn.cli.main`) builds it from the parsed arguments. It holds plain
values only, so importing it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """Validated command-line options of an analysis level."""

    bids_dir: Path
    output_dir: Path
    level: str
    participant_labels: list[str] | None
    session_labels: list[str] | None
    task: str | None
    spec_path: Path | None
    derivatives: dict[str, Path]
    bids_filter_file: Path | None
    skip_bids_validation: bool
    database_dir: Path | None
    work_dir: Path | None
    nprocs: int | None
    omp_nthreads: int | None
    mem_bytes: int | None
    device: str
    random_seed: int | None
    reports_only: bool
    force: bool
    show_progress: bool
    verbosity: int
    searchlight_part: tuple[int, int] | None = None
    argv: list[str] = field(default_factory=list)
    allow_custom_code: bool = False
