"""The one rich Console of the application, logging set-up, run log files and progress helpers.

Library code never prints: it logs through ``logging.getLogger("bids_dnn")`` and shows
progress through :func:`progress`. Math modules do not import this module.

On a terminal, messages are drawn by rich (colours, wrapping to the window). When stderr is
not a terminal (a file, a pipe, a batch system's log) every line is plain text that starts
with a time stamp and the level, is never wrapped and has no trailing spaces. Each run also
writes ``bids_dnn.log`` (the same plain lines) next to its provenance: ``sub-<label>/log/<run
id>/`` for a participant, ``group/log/<run id>/`` for the group level.
"""

from __future__ import annotations

import logging
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False)
logger = logging.getLogger("bids_dnn")

#: name of the log file written next to a run's provenance
LOG_FILE_NAME = "bids_dnn.log"
#: ``logger.error(..., extra=FILE_ONLY)``: a record for the log file only, not the console (the
#: message will be shown on the console another way, e.g. as the run's fatal error)
FILE_ONLY = {"bids_dnn_file_only": True}
#: time stamp of every plain line (local time)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: lines logged outside any log file that are kept for the files opened later
MAX_SHARED_LINES = 2000

_state = {"progress": True}


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (else: plain, time-stamped lines)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def plain_lines(text: str, level: str, created: float | None = None) -> str:
    """``text`` with ``<time stamp> <LEVEL>`` in front of every line, without trailing spaces."""
    import time

    stamp = time.strftime(TIME_FORMAT, time.localtime(created))
    prefix = f"{stamp} {level:<7} "
    return "\n".join((prefix + line).rstrip() for line in (text.splitlines() or [""]))


class PlainFormatter(logging.Formatter):
    """A record as plain lines: time stamp and level on every line, no wrapping, no trailing
    spaces (a traceback, when the record carries one, follows with the same prefix)."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return plain_lines(text, record.levelname, record.created)


def _console_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "bids_dnn_file_only", False)


class PlainStderrHandler(logging.Handler):
    """Plain lines to the current ``sys.stderr``.

    A closed reader (``bids_dnn ... 2>&1 | head``) raises ``BrokenPipeError`` out of the logging
    call, so that the run stops the way a pipe close stops any other program
    (:func:`bids_dnn.cli.main.main` then exits quietly).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a bad format string must not stop the run
            self.handleError(record)
            return
        stream = sys.stderr
        stream.write(text + "\n")
        stream.flush()


class RunLogHandler(logging.Handler):
    """Writes the run's lines to the log file of the participant (or group run) being processed.

    Lines logged while no log file is open (the stimulus set, the feature extraction) are kept
    and written at the top of every log file opened later. A log file is created only once
    its folder exists (the run's provenance folder): a run that computes nothing, or stops
    before writing outputs, leaves no log folder behind. Writing the file never stops the run
    (e.g. on a full disk, the run's own error says so).
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(PlainFormatter())
        self.shared: list[str] = []
        self.folder: Path | None = None
        self.pending: list[str] = []
        self.file: IO[str] | None = None
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001
            self.handleError(record)
            return
        if self.folder is None:
            self.shared.append(line)
            del self.shared[:-MAX_SHARED_LINES]
            return
        self.pending.append(line)
        self._write()

    def _write(self) -> None:
        if self.failed or self.folder is None:
            return
        try:
            if self.file is None:
                if not self.folder.is_dir():
                    return
                self.file = open(self.folder / LOG_FILE_NAME, "a", encoding="utf-8")
            self.file.write("".join(f"{line}\n" for line in self.pending))
            self.file.flush()
            self.pending.clear()
        except OSError:
            self.failed = True  # e.g. no space left: the run's own error reports it

    def open(self, folder: Path, preamble: Sequence[str] | None = None) -> None:
        """Send the following lines to ``folder/bids_dnn.log`` (once ``folder`` exists),
        after ``preamble`` (default: the lines logged so far outside any log file)."""
        self.acquire()
        try:
            self._close()
            self.folder = Path(folder)
            self.pending = list(self.shared if preamble is None else preamble)
            self.failed = False
        finally:
            self.release()

    def close_file(self) -> None:
        """Write what is left (when the folder exists) and stop writing to the file."""
        self.acquire()
        try:
            self._write()
            self._close()
        finally:
            self.release()

    def _close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
        self.file, self.folder, self.pending = None, None, []

    def close(self) -> None:
        self.close_file()
        super().close()


_run_log = RunLogHandler()


def run_log_lines() -> list[str]:
    """The lines logged so far outside any log file (for the log files of worker processes)."""
    return list(_run_log.shared)


@contextmanager
def log_file(folder: Path, preamble: Sequence[str] | None = None) -> Iterator[None]:
    """Write the lines logged inside the block to ``folder/bids_dnn.log`` (see
    :class:`RunLogHandler`); an exception leaving the block is recorded there with its
    traceback (the console shows it once, as the run's error)."""
    _run_log.open(folder, preamble)
    with run_log_scope():
        yield


def open_log_file(folder: Path) -> None:
    """Send the following lines of this run to ``folder/bids_dnn.log`` (closed by
    :func:`run_log_scope`)."""
    _run_log.open(folder)


@contextmanager
def run_log_scope() -> Iterator[None]:
    """An analysis level: a log file opened inside (:func:`open_log_file`) is closed at the
    end, and an exception that ends the run is recorded in it."""
    try:
        yield
    except BaseException as exc:
        record_stop(exc)
        raise
    finally:
        _run_log.close_file()


def record_stop(exc: BaseException) -> None:
    """Record in the open log file (not on the console) why the run stopped."""
    if _run_log.folder is None or isinstance(exc, BrokenPipeError):
        return
    from bids_dnn.errors import BidsDnnError

    if isinstance(exc, BidsDnnError):
        text = f"stopped: {exc}"
    elif isinstance(exc, KeyboardInterrupt):
        text = "stopped: interrupted"
    else:
        text = "stopped by an unexpected error:\n" + "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    logger.error("%s", text, extra=FILE_ONLY)


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
    terminal = stderr_is_terminal()
    if terminal:
        handler: logging.Handler = RichHandler(console=console, show_time=verbosity > 0, show_path=verbosity > 1,
                                               markup=False, rich_tracebacks=verbosity > 0)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = PlainStderrHandler()
        handler.setFormatter(PlainFormatter())
    handler.addFilter(_console_only)
    logger.addHandler(handler)
    _run_log.close_file()
    _run_log.shared.clear()
    logger.addHandler(_run_log)
    logger.setLevel(level)
    logger.propagate = False
    _state["progress"] = bool(show_progress) and terminal and console.is_terminal


def print_error(message: str, hint: str | None = None, details: Sequence[str] = (), *,
                show_traceback: bool = False) -> None:
    """The run's fatal error on stderr: ``error:`` and ``hint:`` lines (plain, time-stamped
    lines when stderr is not a terminal), after ``details`` (e.g. every file of a summarised
    list) and, with ``show_traceback``, the traceback of the exception being handled."""
    if not stderr_is_terminal():
        parts = [traceback.format_exc().rstrip()] if show_traceback and sys.exc_info()[0] is not None else []
        parts += list(details)
        parts.append(f"error: {message}")
        if hint:
            parts.append(f"hint: {hint}")
        sys.stderr.write(plain_lines("\n".join(parts), "ERROR") + "\n")
        sys.stderr.flush()
        return
    from rich.markup import escape

    err = Console(stderr=True, highlight=False)
    if show_traceback and sys.exc_info()[0] is not None:
        err.print_exception(show_locals=False)
    for line in details:
        err.print(escape(line), soft_wrap=True)
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    if hint:
        err.print(f"[yellow]hint:[/] {escape(hint)}", markup=True, soft_wrap=True)


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
