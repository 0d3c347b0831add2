"""Content keys and digests: one canonical JSON form, one content key, one streamed file hash.

Every key and digest bids_dnn records (stage keys in the status files, feature file
``content_key`` and layer ``sha256`` attributes, stimulus and dataset fingerprints, weights
digests, the spec hash, searchlight and group map keys) is a SHA-256 (hex) built from these
functions, so that they are computed the same way everywhere:

- :func:`canonical_json`: deterministic JSON text (sorted keys, no spaces, ASCII);
- :func:`content_key`: SHA-256 of the canonical JSON of a list of ingredients;
- :func:`text_sha256` / :func:`parts_sha256`: SHA-256 of a text, or of texts and binary buffers
  fed in order (an iterator is consumed lazily, so large arrays can be hashed block by block);
- :func:`file_sha256`: SHA-256 of a file, read in blocks.

Recorded keys must not change for the same inputs (a changed key recomputes results or refuses
a feature file): ``tests/unit/test_hashing.py`` pins known digests.

Base layer: this module imports nothing from bids_dnn.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["FILE_BLOCK_BYTES", "canonical_json", "content_key", "file_sha256", "parts_sha256", "text_sha256"]

#: block size of :func:`file_sha256` (memory held while hashing a file)
FILE_BLOCK_BYTES = 1 << 20
#: separators of :func:`canonical_json`: compact, and the ``json`` module's defaults
_SEPARATORS = {True: (",", ":"), False: (", ", ": ")}


def canonical_json(value: Any, *, allow_nan: bool = True, default: Callable[[Any], Any] | None = None,
                   compact: bool = True) -> str:
    """Deterministic JSON text of ``value``: keys sorted, non-ASCII characters escaped.

    Parameters
    ----------
    value : any JSON-encodable value
    allow_nan : bool
        Write NaN and infinities as ``NaN`` / ``Infinity`` (not strict JSON); False raises
        ``ValueError`` for them instead.
    default : callable, optional
        Encodes objects JSON does not know (e.g. ``str`` for paths); without it they raise
        ``TypeError``.
    compact : bool
        No spaces after ``,`` and ``:`` (the canonical form). False keeps the ``json`` module's
        ``", "`` and ``": "`` (the form the searchlight key was first recorded with).

    Returns
    -------
    str
    """
    return json.dumps(value, sort_keys=True, separators=_SEPARATORS[compact], ensure_ascii=True,
                      allow_nan=allow_nan, default=default)


def text_sha256(text: str) -> str:
    """SHA-256 (hex) of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parts_sha256(parts: Iterable[Any]) -> str:
    """SHA-256 (hex) of ``parts`` fed in order, with nothing between them.

    Parameters
    ----------
    parts : iterable of str or bytes-like
        Texts (hashed as UTF-8) and binary buffers (``bytes``, or C-contiguous arrays, e.g.
        ``np.ascontiguousarray(a)``, hashed as their memory, the bytes of ``a.tobytes()``; a
        non-contiguous array raises ``ValueError``).
        An iterator is consumed one part at a time: only one part needs to be in memory.

    Returns
    -------
    str
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") if isinstance(part, str) else part)
    return digest.hexdigest()


def content_key(*ingredients: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of the list ``[*ingredients]``.

    Ingredients are anything JSON can encode (dicts are hashed with sorted keys, NaN as
    ``NaN``); other objects (paths, ...) by their ``str``.
    """
    return text_sha256(canonical_json(list(ingredients), default=str))


def file_sha256(path: str | Path, block_bytes: int = FILE_BLOCK_BYTES) -> str:
    """SHA-256 (hex) of a file's content, read in blocks of ``block_bytes`` (1 MiB)."""
    with open(path, "rb") as handle:
        return parts_sha256(iter(lambda: handle.read(block_bytes), b""))
