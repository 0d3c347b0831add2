"""PyAV (an optional dependency) for the sound and video readers: its import, with a clear error
when it is missing, and short reader-error texts for messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bids_dnn.errors import InputMissingError

__all__ = ["import_av", "short_error"]


def import_av(stimuli: str, hint: str) -> Any:
    """The ``av`` module, or :class:`InputMissingError` saying that ``stimuli`` (e.g. "video
    stimuli") need it, with ``hint`` naming the extra to install."""
    try:
        import av
    except ImportError:
        raise InputMissingError(f"{stimuli} need PyAV (the Python package 'av'), which is not installed",
                                hint) from None
    return av


def short_error(exc: BaseException, path: Path) -> str:
    """``"<ExceptionClass>: <message>"`` with the file's full path shortened to its name and the
    message cut at 100 characters."""
    detail = str(exc).replace(str(path), path.name)
    detail = detail if len(detail) <= 100 else detail[:97] + "..."
    return f"{exc.__class__.__name__}: {detail}"
