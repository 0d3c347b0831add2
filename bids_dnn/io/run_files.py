"""What one run's files state beyond their paths: the repetition time of a BOLD series (JSON
sidecar vs. NIfTI header) and an fMRIPrep confounds table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bids_dnn.errors import InputMissingError

__all__ = ["read_confounds", "repetition_time"]

#: NIfTI time units -> seconds
_SECONDS_PER_UNIT = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}
#: sidecar and header TRs closer than this (relative) agree
_TR_TOLERANCE = 1e-3


def repetition_time(layout: Any, bold: Path, source: str = "check") -> float:
    """The TR of ``bold`` in seconds.

    ``source``: ``"sidecar"`` takes ``RepetitionTime`` from the JSON sidecar (through BIDS
    inheritance), ``"header"`` the NIfTI header's 4th zoom (in its time unit); ``"check"`` (the
    default) takes the sidecar and stops when the header states another TR (the BIDS validator's
    REPETITION_TIME_MISMATCH: running on the wrong TR silently misplaces every event). Either falls
    back to the other when it has no TR.

    Raises
    ------
    InputMissingError
        No TR anywhere, or (``check``) sidecar and header disagree (exit 66, naming both).
    """
    sidecar = None
    try:
        value = layout.get_metadata(str(bold)).get("RepetitionTime")
        sidecar = float(value) if value else None
    except Exception:  # noqa: BLE001 - no usable sidecar: the header decides
        sidecar = None
    header = None
    if source != "sidecar" or sidecar is None:
        try:
            header = _header_repetition_time(bold)
        except InputMissingError:
            if sidecar is None:
                raise
            # an unreadable image is reported (exit 66) by the subject's input check, not by this lookup
    if source == "check" and sidecar and header and abs(sidecar - header) > _TR_TOLERANCE * max(sidecar, header):
        raise InputMissingError(
            f"{bold.name}: RepetitionTime {sidecar:g} s in the JSON sidecar, {header:g} s in the NIfTI header",
            "fix whichever is wrong, or set brain.repetition_time: sidecar (or header) in the spec to trust one")
    chosen = header if source == "header" and header else sidecar or header
    if not chosen:
        raise InputMissingError(f"no RepetitionTime for {bold.name}", "add it to the BOLD JSON sidecar")
    return chosen


def _header_repetition_time(bold: Path) -> float | None:
    """The header's TR in seconds (None when it states none)."""
    from bids_dnn.brain.images import load_nifti

    header = load_nifti(bold, "preprocessed BOLD").header  # empty / corrupt file: exit 66
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        return None
    unit = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "sec"
    return float(zooms[3]) * _SECONDS_PER_UNIT.get(unit, 1.0)


def read_confounds(path: str | Path) -> Any:
    """Read an fMRIPrep confounds table (``*_desc-confounds_timeseries.tsv``; ``n/a`` as NaN).

    Parameters
    ----------
    path : str or Path
        The TSV file.

    Returns
    -------
    pandas.DataFrame, shape (n_volumes, n_columns)

    Raises
    ------
    InputMissingError
        The file is empty (0 bytes), has no header row or is not a readable TSV (exit 66).
    """
    import pandas as pd

    path = Path(path)
    hint = "the confounds file is truncated or corrupt; regenerate it with fMRIPrep or re-copy it"
    if path.stat().st_size == 0:
        raise InputMissingError(f"fMRIPrep confounds: {path.name} is empty (0 bytes)", hint)
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputMissingError(f"fMRIPrep confounds: {path.name} is not a readable TSV "
                                f"({exc.__class__.__name__}: {exc})", hint) from None
