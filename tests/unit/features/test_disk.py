"""bids_dnn.features.disk: the free-space check against shutil.disk_usage, and the fsync steps."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from bids_dnn.features import disk


def test_free_space_check_refuses_what_the_disk_cannot_hold(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    disk.check_free_space(tmp_path, 0)  # a test machine has more than the 256 KiB margin free
    with pytest.raises(OSError) as caught:
        disk.check_free_space(tmp_path, free + 2**30)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)
    assert "No space left on device" in str(caught.value)


def test_free_space_check_keeps_a_margin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda folder: usage._replace(free=10 * 2**20))
    disk.check_free_space(tmp_path, 10 * 2**20 - 2**18)  # exactly the margin left
    with pytest.raises(OSError, match="needs 10.0 MiB, 10.0 MiB are free"):
        disk.check_free_space(tmp_path, 10 * 2**20 - 2**18 + 1)


def test_fsync_steps_leave_the_file_as_written(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    disk.fsync_file(path)
    disk.fsync_folder(tmp_path)
    assert path.read_bytes() == b"abc"
