"""Running participants: each one inside its own log scope, and the run's error when some failed.

Shared by the event-related participant level (:mod:`bids_dnn.workflows.participant`) and the
single-stage ones (:mod:`bids_dnn.workflows.single_stage`: naturalistic, M/EEG).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from bids_dnn.console import log_file, logger
from bids_dnn.errors import AnalysisError, BidsDnnError
from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.provenance import record_failure

__all__ = ["run_logged", "raise_participant_failures"]


def run_logged(subject: str, ctx: Context, process: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``process(ctx, subject, *args)`` with the participant's ``bids_dnn.log`` open next to its
    provenance (an error is recorded in its status file and log, then raised); the process and
    the time span it ran in are added to that provenance (``execution``) when it was written.

    Module-level, with the participant first, for :func:`bids_dnn.workflows.resources.map_participants`
    (``--nprocs``: participants in worker processes; ``process`` is pickled by name).
    """
    started = datetime.now(timezone.utc)
    log_dir = ctx.layout.log_dir(subject, ctx.run_id)
    with log_file(log_dir, ctx.log_preamble):  # bids_dnn.log next to the provenance (also records an error)
        try:
            summary = process(ctx, subject, *args)
        except Exception as exc:
            record_failure(ctx, subject, exc)
            raise
        path = log_dir / "provenance.json"
        provenance = drv.read_json_object(path)
        if provenance:
            provenance["execution"] = {"process_id": os.getpid(), "worker": ctx.resources.n_workers > 1,
                                       "started": started.isoformat(),
                                       "finished": datetime.now(timezone.utc).isoformat()}
            drv.write_json(path, provenance)
        if not summary.get("skipped"):
            logger.info("sub-%s done in %.1f s", subject, summary["seconds"])
    return summary


def raise_participant_failures(ctx: Context, failures: Sequence[tuple[str, BaseException]]) -> None:
    """Raise the run's error when participants failed: the only participant's own error, else an
    :class:`AnalysisError` naming them (with their common exit code when they share one)."""
    if not failures:
        return
    if len(failures) == 1 and len(ctx.subjects) == 1:
        raise failures[0][1]
    ordered = sorted(failures, key=lambda failure: ctx.subjects.index(failure[0]) if failure[0] in ctx.subjects
                     else len(ctx.subjects))
    codes = {exc.exit_code for _, exc in ordered if isinstance(exc, BidsDnnError)}
    error = AnalysisError(f"{len(ordered)} of {len(ctx.subjects)} participants failed: "
                          + ", ".join(f"sub-{s}" for s, _ in ordered) + " (each one's error is shown above)")
    if len(codes) == 1:
        error.exit_code = codes.pop()
    raise error
