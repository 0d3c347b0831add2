"""Sections shared by the participant and the group report: provenance and small helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn import __version__
from bids_dnn.io import derivatives as drv
from bids_dnn.console import LOG_FILE_NAME
from bids_dnn.report.assemble import Block, Col, Section, fmt_text, table_block
from bids_dnn.report.inputs import container_tag
from bids_dnn.spec import AnalysisSpec, spec_hash, spec_to_dict

#: libraries named in the summary (all recorded ones are in the provenance section)
KEY_LIBRARIES = ("python", "numpy", "scipy", "nilearn", "torch", "torchvision")


def command_line(log_dir: Path | None, provenance: dict[str, Any]) -> str:
    if log_dir is not None and (log_dir / "command.txt").is_file():
        return (log_dir / "command.txt").read_text(encoding="utf-8").strip()
    command = provenance.get("command")
    if isinstance(command, list):
        return " ".join(str(c) for c in command)
    return str(command or "not recorded")


def versions_text(provenance: dict[str, Any]) -> str:
    versions = provenance.get("library_versions") or {}
    parts = [f"bids_dnn {provenance.get('bids_dnn_version', __version__)}"]
    parts += [f"{name} {versions[name]}" for name in KEY_LIBRARIES if name in versions]
    return ", ".join(parts)


def seeds_rows(spec: AnalysisSpec, provenance: dict[str, Any]) -> list[tuple[str, Any]]:
    stats = spec.statistics
    rows: list[tuple[str, Any]] = [("statistics.seed", provenance.get("seed", stats.seed))]
    if "subject_seed_entropy" in provenance:
        rows.append(("participant seed (SeedSequence entropy)", json.dumps(provenance["subject_seed_entropy"])))
    for model in spec.models:
        if model.weights == "random":
            rows.append((f"{model.output_label} init_seed (random weights)", model.init_seed))
    naturalistic = spec.design == "naturalistic"
    if spec.analyses.searchlight.enabled or spec.analyses.encoding.enabled or naturalistic:
        rows.append(("group map permutations", f"{stats.map_permutations} sign flips, seed statistics.seed + map index"))
    if spec.analyses.rsa.enabled and not naturalistic:  # the event-related analyses are not run
        rows.append(("RSA permutations", spec.analyses.rsa.permutations))
    if spec.analyses.rsa.enabled or naturalistic:
        rows.append(("bootstrap resamples", stats.bootstrap))
    return rows


def provenance_section(section: Section, layout: drv.OutputLayout, log_dir: Path | None, provenance: dict[str, Any],
                       spec: AnalysisSpec, spec_source: str, extra: list[tuple[str, Any]] | None = None) -> None:
    """Command line, run identity, seeds, versions, container, resolved spec and raw provenance."""
    if log_dir is None:
        section.warning("no log folder was found for this run; provenance is incomplete.")
    spec_note = {"log": f"from {log_dir.relative_to(layout.root) / 'spec.json'}" if log_dir else "",
                 "argument": "as given to this report (no spec.json in the log)",
                 "defaults": "defaults (no spec found)"}.get(spec_source, spec_source)
    container = container_tag(layout, provenance)
    rows: list[tuple[str, Any]] = [
        ("command line", command_line(log_dir, provenance)),
        ("run id", provenance.get("run_id", log_dir.name if log_dir else "unknown")),
        ("bids_dnn version", provenance.get("bids_dnn_version", __version__)),
        ("spec hash", f"{spec_hash(spec)} ({spec_note})"),
        ("container", container or "none recorded (not run from a container image)"),
        ("platform", provenance.get("platform", "not recorded")),
        ("device", provenance.get("device", "not recorded")),
        ("log folder", (str(log_dir.relative_to(layout.root))
                        + (f" ({LOG_FILE_NAME}: the run's messages)" if (log_dir / LOG_FILE_NAME).is_file() else ""))
         if log_dir else "not found"),
        *(extra or []),
    ]
    section.kv(rows, id="provenance-run")
    section.heading("Seeds")
    section.kv(seeds_rows(spec, provenance), id="provenance-seeds")
    versions = provenance.get("library_versions") or {}
    if versions:
        section.heading("Library versions")
        table = pd.DataFrame({"library": list(versions), "version": [str(v) for v in versions.values()]})
        section.add(table_block(table, [Col("library", "library", fmt_text), Col("version", "version", fmt_text)],
                                id="provenance-versions"))
    section.add(Block("pre", text="Resolved analysis spec (JSON)", body=json.dumps(spec_to_dict(spec), indent=2)))
    if provenance:
        section.add(Block("pre", text="provenance.json", body=json.dumps(provenance, indent=2, sort_keys=True)))


def parse_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value) and not pd.isna(value)
    except (TypeError, ValueError):
        return bool(value)


#: share of an ROI's ridge penalties at the edge of the alpha grid from which the reports flag it:
#: half, i.e. the typical (median) choice is at the edge. Smaller shares are common and benign at
#: the bottom edge (penalties far below the kernel's eigenvalues all fit alike; ties pick the
#: smallest): the demo's signal ROIs have 25-40 %, its noise-only ROI 60 % (top edge).
ALPHA_EDGE_WARNING = 0.5


def fmt_share(value: Any) -> str:
    """A fraction as a whole percentage (``0.25`` -> ``25%``); ``n/a`` when missing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(number) else f"{100 * number:.0f}%"


def edge_flagged(value: Any) -> bool:
    """True when a share of penalties at the grid edge reaches :data:`ALPHA_EDGE_WARNING`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(number) and number >= ALPHA_EDGE_WARNING)


def encoding_table_warnings(table: pd.DataFrame, normalized: str, out_of_range: str, edge: str) -> list[str]:
    """Warnings for the flagged rows of an encoding ROI table (participant or group summary).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows with ``roi`` and ``layer``.
    normalized, out_of_range, edge : str
        Columns of the ceiling-normalised score, of its out-of-[0, 1] flag and of the share of
        penalties at the edge of the alpha grid (absent columns are skipped: older outputs).
    """
    out = []
    if out_of_range in table and normalized in table:
        flagged = table[table[out_of_range].map(parse_bool)]
        if len(flagged):
            items = ", ".join(f"{r['roi']} {r['layer']} ({float(r[normalized]):.3g})" for _, r in flagged.iterrows())
            out.append(f"R² / ceiling outside [0, 1] for {items}: not a fraction of the explainable variance (a noisy "
                       "noise ceiling, or a model that predicts worse than the mean response).")
    if edge in table:
        flagged = table[table[edge].map(edge_flagged)]
        if len(flagged):
            items = ", ".join(f"{r['roi']} {r['layer']} ({fmt_share(r[edge])})" for _, r in flagged.iterrows())
            out.append(f"Ridge penalty at the smallest or largest value of the alpha grid for at least "
                       f"{ALPHA_EDGE_WARNING:.0%} of the choices in {items}: extend analyses.encoding.alphas (at the "
                       "top edge the prediction is close to the mean response: no learnable signal).")
    return out
