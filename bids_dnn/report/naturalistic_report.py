"""The participant report ``OUT_DIR/sub-XX.html`` of a naturalistic design (``design: naturalistic``).

Sections: summary, noise ceiling, one section per model (best-layer map, held-out r maps, banded
R² maps, ROI profile and table, best-predicted voxel; :mod:`bids_dnn.report.naturalistic_sections`),
methods, provenance. Built from the same :class:`~bids_dnn.report.participant_report.ParticipantContext`
as the report of an event-related design; everything is read from the output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bids_dnn.report.assemble import Block, Section, guarded_section, render_page
from bids_dnn.report.common import provenance_section
from bids_dnn.report.naturalistic_sections import (
    participant_ceiling_section,
    participant_model_section,
    participant_naturalistic_methods,
    participant_naturalistic_summary,
)
from bids_dnn.spec import sanitize_label, spec_hash

if TYPE_CHECKING:
    from bids_dnn.report.participant_report import ParticipantContext

__all__ = ["naturalistic_sections", "build_naturalistic"]


def _provenance(ctx: ParticipantContext, section: Section) -> None:
    extra = []
    if ctx.provenance.get("runs"):
        extra.append(("input runs", ", ".join(str(r) for r in ctx.provenance["runs"])))
    provenance_section(section, ctx.layout, ctx.log_dir, ctx.provenance, ctx.spec, ctx.spec_source, extra)
    outputs = ctx.status.get("outputs")
    if outputs:
        section.add(Block("pre", text=f"Outputs of this participant ({len(outputs)} files)", body="\n".join(outputs)))


def naturalistic_sections(ctx: ParticipantContext) -> list[Section]:
    """The sections of a naturalistic participant report, each built in isolation
    (:func:`~bids_dnn.report.assemble.guarded_section`).

    Parameters
    ----------
    ctx : ParticipantContext

    Returns
    -------
    list of Section
        Summary, noise ceiling, one per model (id ``naturalistic-<model>``), methods, provenance.
    """
    sections = [guarded_section("summary", "Summary", lambda s: participant_naturalistic_summary(ctx, s)),
                guarded_section("noiseceiling", "Noise ceiling", lambda s: participant_ceiling_section(ctx, s))]
    for model in ctx.spec.models:
        label = model.output_label
        sections.append(guarded_section(f"naturalistic-{sanitize_label(label)}",
                                        f"Time-series encoding: {label}",
                                        lambda s, m=label: participant_model_section(ctx, s, m)))
    sections += [guarded_section("methods", "Methods", lambda s: participant_naturalistic_methods(ctx, s)),
                 guarded_section("provenance", "Provenance", lambda s: _provenance(ctx, s))]
    return sections


def build_naturalistic(ctx: ParticipantContext) -> Path:
    """Write ``sub-<subject>.html`` of a naturalistic design; returns its path.

    Parameters
    ----------
    ctx : ParticipantContext
        The participant's outputs (:func:`bids_dnn.report.participant_report.participant_context`).
    """
    layout, subject = ctx.layout, ctx.subject
    sections = naturalistic_sections(ctx)
    subtitle = [f"task {layout.task} · space {layout.space} · naturalistic design · run {ctx.run_id} · "
                f"spec {spec_hash(ctx.spec)}"]
    if ctx.figures.failures:
        subtitle.append(f"{len(ctx.figures.failures)} figure(s) could not be drawn; see the notes in their sections.")
    return render_page(layout.participant_report(subject), f"bids_dnn report: sub-{subject}", subtitle, sections,
                       ctx.run_id, str(layout.figures_dir(subject).relative_to(layout.root)))
