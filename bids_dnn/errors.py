"""Error classes that carry a user-facing hint and a BIDS-Apps exit code.

Every error a user can cause is raised as one of these; ``cli.main`` turns it into one
readable message and the exit code below (no traceback unless ``-v``).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_BIDS_INVALID = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NOTHING_SELECTED = 18
EXIT_USAGE = 64
EXIT_INVALID_SPEC = 65
EXIT_INPUT_MISSING = 66
EXIT_CANNOT_CREATE = 73  # sysexits EX_CANTCREAT: the output folder cannot be created or written
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # 128 + SIGTERM (kill, SLURM's time limit, docker stop)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so the run unwinds like after Ctrl-C:
    finished outputs stay, unfinished temporary files are removed. A ``BaseException`` (like
    ``KeyboardInterrupt``) so no ``except Exception`` on the way swallows it."""


class BidsDnnError(Exception):
    """Base class: a problem the user can fix, with an exit code.

    Parameters
    ----------
    message : str
        One sentence saying what is wrong.
    hint : str, optional
        How to fix it.
    details : sequence of str, optional
        The full list behind a summarised message (e.g. every unreadable file), shown with
        ``-v``.
    """

    exit_code: int = EXIT_OTHER

    def __init__(self, message: str, hint: str | None = None, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details or [])

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(BidsDnnError):
    """Bad command-line usage (wrong option values, output inside the input, ...)."""

    exit_code = EXIT_USAGE


class OutputFolderError(BidsDnnError):
    """The output folder cannot be created or written (a file, no permission, read-only)."""

    exit_code = EXIT_CANNOT_CREATE


class SpecError(BidsDnnError):
    """The analysis spec is invalid; ``problems`` holds one line per problem."""

    exit_code = EXIT_INVALID_SPEC

    def __init__(self, problems: list[str], source: str = "spec") -> None:
        self.problems = list(problems)
        message = f"invalid analysis spec ({source}):\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(message)


class BidsValidationError(BidsDnnError):
    """The input dataset is not valid BIDS (as far as this tool needs it)."""

    exit_code = EXIT_BIDS_INVALID


class UnknownLevelError(BidsDnnError):
    """Analysis level other than participant / group."""

    exit_code = EXIT_UNKNOWN_LEVEL


class NothingSelectedError(BidsDnnError):
    """The participant / session / task filters selected no data."""

    exit_code = EXIT_NOTHING_SELECTED


class InputMissingError(BidsDnnError):
    """A required input (file, derivative, weights) is missing or unreadable."""

    exit_code = EXIT_INPUT_MISSING


class AnalysisError(BidsDnnError):
    """Anything else that stops the analysis (exit 1)."""

    exit_code = EXIT_OTHER


class OutputSpaceError(BidsDnnError):
    """The output file system is full (or over quota) or read-only (exit 1)."""

    exit_code = EXIT_OTHER


#: errno values that mean "cannot write to the output file system"
_NO_SPACE_ERRNOS = {28: "no space left on device", 122: "disk quota exceeded", 30: "read-only file system"}


def output_space_error(exc: BaseException) -> OutputSpaceError | None:
    """An :class:`OutputSpaceError` for an ``OSError`` caused by a full, over-quota or read-only
    file system (h5py reports the errno only in its message); None for any other error."""
    if not isinstance(exc, OSError):
        return None
    text = str(exc)
    reason = _NO_SPACE_ERRNOS.get(exc.errno or 0)
    if reason is None:
        reason = next((r for r in _NO_SPACE_ERRNOS.values() if r in text.lower()), None)
    if reason is None and "errno = 28" in text:
        reason = _NO_SPACE_ERRNOS[28]
    if reason is None:
        return None
    where = f" while writing {exc.filename}" if getattr(exc, "filename", None) else ""
    return OutputSpaceError(f"{reason}{where}; the run stopped, finished outputs are kept and no partial "
                            "file was left", "free space (or write to another folder) and rerun the same "
                            "command: it resumes with the unfinished stages")
