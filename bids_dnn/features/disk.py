"""File-system steps of writing a feature file: room before starting, durability after.

:func:`check_free_space` refuses to start a file the disk cannot hold (HDF5 can crash the
process on a failed write instead of raising); :func:`fsync_file` and :func:`fsync_folder` make
the written file and its rename into place survive a crash.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

__all__ = ["check_free_space", "fsync_file", "fsync_folder"]

#: room left beyond a feature file's data (HDF5 metadata, other small outputs)
_SPACE_MARGIN_BYTES = 1 << 18


def check_free_space(folder: Path, n_bytes: int) -> None:
    """Raise ``OSError(ENOSPC)`` (reported by the CLI as a full disk) unless ``folder``'s file
    system has ``n_bytes`` (+ 256 KiB) free: HDF5 can crash the process on a failed write instead
    of raising, so a feature file is never started without room for all of it."""
    free = shutil.disk_usage(folder).free
    if free < n_bytes + _SPACE_MARGIN_BYTES:
        raise OSError(errno.ENOSPC, f"No space left on device: the feature file needs "
                                    f"{(n_bytes + _SPACE_MARGIN_BYTES) / 2**20:.1f} MiB, "
                                    f"{free / 2**20:.1f} MiB are free", str(folder))


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk, where the system allows it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
