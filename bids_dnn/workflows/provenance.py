"""What a run records about itself: provenance files and a participant's status file.

``provenance.json``, ``spec.json`` and ``command.txt`` in each log folder of a run; the
participant's status file (summary, completed stages, or the failure that stopped it), which a
rerun resumes from and the group level reads (:mod:`bids_dnn.io.status`).
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bids_dnn import __version__
from bids_dnn.console import logger
from bids_dnn.errors import BidsDnnError
from bids_dnn.io import derivatives as drv
from bids_dnn.spec import spec_hash, spec_to_dict
from bids_dnn.workflows.context import Context

__all__ = ["CONTAINER_ENV", "library_versions", "read_status", "record_failure", "write_provenance", "write_status"]


#: set in the container image (Dockerfile): its tag, recorded in the provenance and dataset_description
CONTAINER_ENV = "BIDS_DNN_CONTAINER"


def library_versions() -> dict[str, str]:
    """Installed versions of Python and of the libraries the results depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "pandas", "nibabel", "nilearn", "pybids", "torch", "torchvision", "h5py",
                 "pydantic"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_provenance(ctx: Context, subject_dir_log: Path, extra: dict[str, Any]) -> None:
    """``spec.json``, ``command.txt`` and ``provenance.json`` (versions, platform, resources, ``extra``)
    in a run's log folder."""
    drv.write_json(subject_dir_log / "spec.json", spec_to_dict(ctx.spec))
    drv.write_text(subject_dir_log / "command.txt", " ".join(["bids_dnn", *ctx.options.argv]) + "\n")
    drv.write_json(subject_dir_log / "provenance.json", {
        "bids_dnn_version": __version__, "run_id": ctx.run_id, "spec_hash": spec_hash(ctx.spec),
        "seed": ctx.spec.statistics.seed, "command": [sys.argv[0], *ctx.options.argv],
        "library_versions": library_versions(), "platform": platform.platform(),
        "container": os.environ.get(CONTAINER_ENV),
        "device": ctx.options.device, "resources": ctx.resources.provenance(), "process_id": os.getpid(),
        "glm_engine": ctx.spec.brain.glm.engine if ctx.spec.brain.input == "fmriprep" else None,
        **extra})


def read_status(layout: drv.OutputLayout, subject: str) -> dict[str, Any]:
    """A participant's status file (empty when missing or unreadable)."""
    return drv.read_json_object(layout.status(subject))


def write_status(ctx: Context, subject: str, summary: dict[str, Any], ledger: Any, *, complete: bool,
                 run_id: str | None = None) -> None:
    """The participant's status file: summary, spec hash and the completed stages (written after
    every stage, so an interrupted run resumes where it stopped), plus the ``pending`` stages of
    an earlier run not yet redone (their files are removed if the new outputs differ)."""
    status = {**summary, "complete": complete, "spec_hash": spec_hash(ctx.spec), "run_id": run_id or ctx.run_id,
              "bids_dnn_version": __version__, "outputs": ledger.outputs(), "stages": dict(sorted(ledger.done.items()))}
    if ctx.dataset:
        status["dataset"] = ctx.dataset
    pending = ledger.pending()
    if pending:
        status["pending"] = pending
    drv.write_json(ctx.layout.status(subject), status)


def record_failure(ctx: Context, subject: str, exc: BaseException) -> None:
    """Mark the participant's status file as failed, with the reason (read by the group level).

    The stages an earlier run completed stay recorded (a rerun resumes with the others), but
    ``complete`` is false and ``failure`` holds the exit code, the error class, its message and
    hint, and the run id. A successful rerun writes a status file without ``failure``. Writing
    the record never hides the error itself (a full disk, say): it is then left out.
    """
    if isinstance(exc, BidsDnnError):
        message, hint, code = exc.message, exc.hint, exc.exit_code
    else:
        from bids_dnn.errors import EXIT_OTHER

        message, hint, code = f"unexpected {exc.__class__.__name__}: {exc}", None, EXIT_OTHER
    status = {**read_status(ctx.layout, subject), "complete": False, "run_id": ctx.run_id,
              "bids_dnn_version": __version__,
              "failure": {"exit_code": code, "error": exc.__class__.__name__, "message": message, "hint": hint,
                          "run_id": ctx.run_id, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    if ctx.dataset:
        status["dataset"] = ctx.dataset
    try:
        drv.write_json(ctx.layout.status(subject), status)
    except OSError as write_error:
        logger.debug("sub-%s: the failure could not be recorded (%s)", subject, write_error)
