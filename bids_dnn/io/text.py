"""Text stimuli: ``.txt`` files (and the ``text`` column of ``stimuli.tsv``) -> the text a model reads.

One rule for every text, whichever way it was given (:func:`normalize_text`): UTF-8 (a leading
byte order mark is dropped), line ends ``\\r\\n`` and ``\\r`` become ``\\n``, and white space around
the text is removed (inner white space is kept as written). A file that is not valid UTF-8, or whose
text is empty once stripped, is no usable stimulus: :func:`text_problem` says why, and
:func:`bids_dnn.io.stimulus_loading.check_stimulus_file` reports it with the other stimulus problems
(exit 66) before anything is extracted.
"""

from __future__ import annotations

from pathlib import Path

from bids_dnn.errors import InputMissingError

__all__ = ["TEXT_HINT", "decode_text", "load_text", "normalize_text", "text_problem"]

#: what to do about an unusable text file
TEXT_HINT = "save every text stimulus as UTF-8 text with at least one visible character"


def normalize_text(text: str) -> str:
    """A text as the model reads it: line ends as ``\\n``, surrounding white space removed.

    Parameters
    ----------
    text : str

    Returns
    -------
    str
        ``text`` with ``\\r\\n`` and lone ``\\r`` replaced by ``\\n``, then stripped (``str.strip``);
        a leading byte order mark (U+FEFF) is removed too.
    """
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").strip()


def decode_text(data: bytes) -> str:
    """Decode a text file's bytes as UTF-8 and normalise them (:func:`normalize_text`).

    Parameters
    ----------
    data : bytes

    Returns
    -------
    str
        Possibly empty (the caller decides whether that is a problem).

    Raises
    ------
    UnicodeDecodeError
        The bytes are not valid UTF-8.
    """
    return normalize_text(data.decode("utf-8-sig"))


def _problem_of(data: bytes) -> tuple[str | None, str]:
    """(problem or None, decoded text)."""
    try:
        text = decode_text(data)
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        return f"not UTF-8 text (invalid byte 0x{bad} at byte {exc.start})", ""
    if not text:
        return "empty text (only white space)", ""
    return None, text


def text_problem(path: Path) -> str | None:
    """Why a text file is not a usable stimulus (``"<name>: <reason>"``), or None.

    Reasons: ``unreadable (...)``, ``not UTF-8 text (invalid byte 0x.. at byte k)``,
    ``empty text (only white space)``.

    Parameters
    ----------
    path : Path

    Returns
    -------
    str or None
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"{path.name}: unreadable ({exc.strerror})"
    problem, _ = _problem_of(data)
    return f"{path.name}: {problem}" if problem else None


def load_text(path: Path) -> str:
    """Read a text stimulus (UTF-8, byte order mark dropped, ``\\n`` line ends, stripped).

    Parameters
    ----------
    path : Path

    Returns
    -------
    str
        Not empty.

    Raises
    ------
    InputMissingError
        The file is unreadable, not UTF-8, or holds only white space (exit 66).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputMissingError(f"{path.name}: unreadable ({exc.strerror})", TEXT_HINT) from None
    problem, text = _problem_of(data)
    if problem:
        raise InputMissingError(f"{path.name}: {problem}", TEXT_HINT)
    return text
