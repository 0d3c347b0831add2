"""The one rich Console of the application, logging set-up and progress helpers.

Library code never prints: it logs through ``logging.getLogger("bids_dnn")`` and shows
progress through :func:`progress`. Math modules do not import this module.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False)
logger = logging.getLogger("bids_dnn")

_state = {"progress": True}


def setup_logging(verbosity: int = 0, show_progress: bool = True) -> None:
    """Configure the ``bids_dnn`` logger.

    Parameters
    ----------
    verbosity : int
        0: warnings and main steps; 1 (``-v``): info + tracebacks; 2 (``-vv``): debug.
    show_progress : bool
        Draw progress bars (also off when stderr is not a terminal).
    """
    level = {0: logging.INFO, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = RichHandler(console=console, show_time=verbosity > 0, show_path=verbosity > 1,
                          markup=False, rich_tracebacks=verbosity > 0)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    _state["progress"] = bool(show_progress) and console.is_terminal and sys.stderr.isatty()


@contextmanager
def progress(description: str, total: int | None) -> Iterator[callable]:
    """A progress bar; yields ``advance(n=1)``. A no-op bar when progress is disabled."""
    if not _state["progress"]:
        yield lambda n=1: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
