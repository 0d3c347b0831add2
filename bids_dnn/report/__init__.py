"""Self-contained HTML reports: one per participant (``sub-XX.html``) and one for the group.

Built with jinja2 templates (``templates/``), matplotlib and nilearn plotting. Figures are saved
under ``sub-XX/figures/`` (``group/figures/``) and embedded in the HTML as base64 PNG, so a
report opens offline from anywhere and loads nothing from the network. Every number shown is
read back from the output folder (derivatives + ``log/`` JSON), so ``--reports-only`` rebuilds
the reports without recomputing anything. A figure or section that fails to draw becomes a
visible note in its section; the other sections and the results files are unaffected.

Modules: :mod:`.inputs` (reading outputs), :mod:`.figures` (drawing), :mod:`.assemble`
(blocks, figure embedding, tables, rendering), :mod:`.methods` (methods text and references),
:mod:`.participant_report` (with its whole-brain maps section in :mod:`.participant_maps_sections`),
:mod:`.naturalistic_report` (the participant report of ``design: naturalistic``; its sections, and the
group report's, in :mod:`.naturalistic_sections`), :mod:`.group_report`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bids_dnn.io import derivatives as drv
from bids_dnn.console import logger
from bids_dnn.report.methods import REFERENCES as CITATIONS
from bids_dnn.spec import AnalysisSpec

__all__ = ["CITATIONS", "build_participant_report", "build_naturalistic_participant_report",
           "rebuild_participant_reports", "build_group_report"]


def build_participant_report(layout: drv.OutputLayout, subject: str, stimuli: Any = None,
                             summary: dict[str, Any] | None = None, spec: AnalysisSpec | None = None,
                             run_id: str | None = None) -> Path:
    """Write ``OUT_DIR/sub-<subject>.html`` (of a naturalistic design when the run's spec says
    ``design: naturalistic``: :func:`build_naturalistic_participant_report`).

    Parameters
    ----------
    layout : OutputLayout
        The output folder.
    subject : str
        Participant label (with or without ``sub-``).
    stimuli : StimulusSet, optional
        Only used to find the stimulus files for the montage (else ``task-<task>_stimuli.tsv``
        and the dataset link in ``dataset_description.json``).
    summary : dict, optional
        The participant summary of the current run (the status file is written after the
        report); else ``sub-XX/log/task-<task>_status.json``.
    spec : AnalysisSpec, optional
        Used when the run's ``log/<run_id>/spec.json`` is missing.
    run_id : str, optional
        The run whose log to show; default the status file's, else the latest.
    """
    from bids_dnn.report.participant_report import build

    return build(layout, subject, stimuli, summary, spec, run_id)


def build_naturalistic_participant_report(layout: drv.OutputLayout, subject: str, spec: AnalysisSpec | None = None,
                                          run_id: str | None = None) -> Path:
    """Write ``OUT_DIR/sub-<subject>.html`` of a naturalistic design (``design: naturalistic``).

    Sections: summary, noise ceiling (or the note that no run repeats a stimulus), per model the
    best-layer map, the held-out r map of every layer, the banded R² split maps (when written), the
    ROI profile and table and the measured and predicted time series of the best-predicted voxel;
    methods and provenance. Everything is read from the output folder
    (:mod:`bids_dnn.report.naturalistic_report`).

    Parameters
    ----------
    layout : OutputLayout
        The output folder.
    subject : str
        Participant label (with or without ``sub-``).
    spec : AnalysisSpec, optional
        Used when the run's ``log/<run_id>/spec.json`` is missing.
    run_id : str, optional
        The run whose log to show; default the status file's, else the latest.

    Returns
    -------
    Path
        The report written.
    """
    from bids_dnn.report.naturalistic_report import build_naturalistic
    from bids_dnn.report.participant_report import participant_context

    return build_naturalistic(participant_context(layout, subject, None, None, spec, run_id))


def rebuild_participant_reports(layout: drv.OutputLayout, subjects: list[str] | None = None, stimuli: Any = None,
                                spec: AnalysisSpec | None = None, run_id: str | None = None) -> list[Path]:
    """``--reports-only``: rebuild participant reports from the output folder alone.

    ``subjects`` defaults to every participant with a status file. A participant whose report
    fails is logged and skipped; returns the reports written.
    """
    from bids_dnn.report.inputs import read_json

    if subjects is None:
        subjects = sorted(p.name[4:] for p in layout.root.glob("sub-*") if layout.status(p.name[4:]).is_file())
    written = []
    for subject in subjects:
        subject = re.sub(r"^sub-", "", str(subject))
        status_path = layout.status(subject)
        if not status_path.is_file():
            logger.warning("sub-%s: no participant outputs (%s); report not rebuilt", subject, status_path.name)
            continue
        status = read_json(status_path)
        try:
            written.append(build_participant_report(layout, subject, stimuli, None, spec, status.get("run_id")))
        except Exception as exc:  # noqa: BLE001 - one participant must not stop the others
            logger.warning("sub-%s: report failed (%s)", subject, exc)
    return written


def build_group_report(layout: drv.OutputLayout, spec: AnalysisSpec | None = None, subjects: list[str] | None = None,
                       run_id: str | None = None, excluded: dict[str, str] | None = None) -> Path:
    """Write ``OUT_DIR/group.html`` from the group outputs.

    ``subjects`` (included participants) default to the group provenance's ``subjects``;
    ``excluded`` maps participant label -> reason (default: the provenance's ``excluded``).
    ``run_id`` selects ``group/log/<run_id>/``; when it does not exist (``--reports-only``)
    the latest group log is used.
    """
    if spec is not None and spec.modality != "fmri":
        from bids_dnn.report.meeg_report import build_meeg_group_report

        return build_meeg_group_report(layout, spec, subjects, run_id)
    from bids_dnn.report.group_report import build

    return build(layout, spec, subjects, run_id, excluded)
