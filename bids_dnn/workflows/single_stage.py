"""Participant levels made of one stage per participant (``design: naturalistic``, ``modality:
eeg|meg``): skip a participant whose stage is current, else compute it, record its outputs and
status, write its report; then run every participant (``--nprocs``: several at once), one
failing participant not stopping the others."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bids_dnn.console import logger
from bids_dnn.errors import BidsDnnError
from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context

__all__ = ["SingleStage", "process_single_stage", "run_participants"]


@dataclass(frozen=True)
class SingleStage:
    """What one participant's stage is.

    Attributes
    ----------
    name : str
        The stage's name in the status file.
    what : str
        Its words in the log ("time-series encoding", "time-resolved analyses").
    kept_fields : tuple of str
        Summary fields of the status file kept when the stage is current.
    fit : callable
        ``fit(subject) -> dict`` with ``outputs`` (the files written) and the summary fields.
    report : callable
        ``report(subject)`` writes the participant's report.
    """

    name: str
    what: str
    kept_fields: tuple[str, ...]
    fit: Callable[[str], dict[str, Any]]
    report: Callable[[str], Any]


def process_single_stage(ctx: Context, subject: str, stage: SingleStage, key: str) -> dict[str, Any]:
    """Run ``stage`` for ``subject`` unless its outputs are current under ``key`` (``--force`` redoes it)."""
    from bids_dnn.workflows.provenance import read_status, write_provenance, write_status
    from bids_dnn.workflows.stages import StageLedger, recorded_stages, removable_stages

    started = time.time()
    previous = read_status(ctx.layout, subject)
    ledger = StageLedger(ctx.layout.root, {} if ctx.options.force else recorded_stages(previous),
                         recorded=removable_stages(previous))
    ledger.remove_obsolete([name for name in removable_stages(previous) if name != stage.name])
    if ledger.is_current(stage.name, key):
        ledger.keep(stage.name)
        write_status(ctx, subject, {k: v for k, v in previous.items() if k in ("subject", *stage.kept_fields)},
                     ledger, complete=True, run_id=previous.get("run_id"))
        logger.info("sub-%s: %s up to date; nothing to do (--force recomputes)", subject, stage.what)
        return {"subject": subject, "skipped": True}
    write_provenance(ctx, ctx.layout.log_dir(subject, ctx.run_id), {"subject": subject,
                                                                    "stages_computed": [stage.name]})
    result = stage.fit(subject)
    outputs = result.pop("outputs")
    sidecars = [drv.sidecar_path(p) for p in outputs if drv.sidecar_path(p).is_file()]
    ledger.record(stage.name, key, [*outputs, *sidecars])
    ledger.remove_obsolete([stage.name])
    summary = {"subject": subject, **result, "seconds": round(time.time() - started, 1)}
    write_status(ctx, subject, summary, ledger, complete=True)
    if ctx.spec.outputs.report:
        try:
            stage.report(subject)
        except Exception as exc:  # noqa: BLE001 - a figure must not lose the results
            from bids_dnn.errors import output_space_error

            if output_space_error(exc):
                raise
            logger.warning("sub-%s: report failed (%s); results are kept", subject, exc)
    return summary


def run_participants(ctx: Context, subjects: Sequence[str], process: Callable[..., dict[str, Any]],
                     args: tuple[Any, ...] = (), failed: dict[str, BidsDnnError] | None = None,
                     parallel: bool = True) -> None:
    """``process(ctx, subject, *args)`` for every participant
    (:func:`bids_dnn.workflows.participant_runs.run_logged`); with ``--nprocs``
    and ``parallel``, several participants at once in worker processes. A participant's error is
    recorded in its status file and logged, the others go on.

    Parameters
    ----------
    process : callable
        A module-level function (pickled by name for the worker processes).
    args : tuple
        Its further arguments, the same for every participant (pickled for each worker).
    failed : dict of str to BidsDnnError, optional
        Participants that already failed (an input check), recorded and counted like the others.
    parallel : bool
        False: one participant at a time in this process (``--nprocs`` then sets its threads),
        e.g. when ``args`` hold loaded networks.

    Raises
    ------
    BidsDnnError
        The only participant's error; with several, an :class:`AnalysisError` naming how many
        failed (their common exit code when they share one).
    """
    from bids_dnn.console import run_log_lines
    from bids_dnn.workflows.participant_runs import raise_participant_failures, run_logged
    from bids_dnn.workflows.provenance import record_failure
    from bids_dnn.workflows.resources import map_participants

    failures: list[tuple[str, BidsDnnError]] = []
    for subject, exc in (failed or {}).items():
        record_failure(ctx, subject, exc)
        logger.error("sub-%s failed: %s", subject, exc)
        failures.append((subject, exc))
    resources = ctx.resources.for_participants(len(subjects) if parallel else 1)
    if resources.n_workers > 1:
        logger.info("%d participants at a time, %s thread(s) each", resources.n_workers, resources.omp_nthreads)
    worker_ctx = replace(ctx, resources=resources, log_preamble=tuple(run_log_lines()))
    for subject, outcome in map_participants(run_logged, subjects, (worker_ctx, process, *args), resources,
                                             verbosity=ctx.options.verbosity):
        if isinstance(outcome, BidsDnnError):
            if len(ctx.subjects) > 1:  # a single participant's error is the run's error, shown once by cli.main
                logger.error("sub-%s failed: %s", subject, outcome)
            failures.append((subject, outcome))
    raise_participant_failures(ctx, failures)
