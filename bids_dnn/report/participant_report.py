"""The participant report ``OUT_DIR/sub-XX.html`` (figures under ``sub-XX/figures/``).

Sections: summary, stimuli, data quality, RDMs, ROI RSA, ROI CKA (only with CKA tables;
:mod:`bids_dnn.report.cka_sections`), decoding and identification, probing and what drives each
region (each when enabled or when its outputs exist; :mod:`bids_dnn.report.decoding_sections`,
:mod:`bids_dnn.report.probing_sections`, :mod:`bids_dnn.report.drivers_sections`), whole-brain
maps (only when the searchlight / encoding outputs exist; :mod:`bids_dnn.report.participant_maps_sections`), methods,
provenance. Everything is read from the output folder; see :mod:`bids_dnn.report.inputs`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.report import figures as figs
from bids_dnn.report.assemble import (
    Block,
    Col,
    FigureMaker,
    Section,
    fmt_fixed,
    fmt_int,
    fmt_p,
    fmt_score,
    generic_table,
    guarded_section,
    render_page,
    table_block,
)
from bids_dnn.report.common import provenance_section, versions_text
from bids_dnn.report.cka_sections import participant_cka_section, participant_cka_tables
from bids_dnn.report.decoding_sections import participant_decoding_section, participant_decoding_tables
from bids_dnn.report.drivers_sections import drivers_model_label, participant_drivers_section
from bids_dnn.report.inputs import (
    MapFile,
    StimulusInfo,
    entities,
    find_log_dir,
    find_maps,
    load_volume,
    map_background,
    ordered_layers,
    read_json,
    read_relmat,
    read_stimuli,
    read_table,
    spec_from_log,
)
from bids_dnn.report.methods import methods_blocks
from bids_dnn.report.participant_maps_sections import maps_section
from bids_dnn.report.probing_sections import has_probing_outputs, participant_probing_section
from bids_dnn.report.thumbnails import render_thumbnail
from bids_dnn.spec import AnalysisSpec, sanitize_label, spec_hash

#: split-half reliability below this is flagged
LOW_RELIABILITY = 0.1
#: a larger share of ROI voxels without a finite estimate is flagged
MAX_NONFINITE_FRACTION = 0.1
#: ROIs with fewer voxels are flagged
MIN_ROI_VOXELS = 10
#: thumbnails shown per category in the montage, and in all
MONTAGE_PER_CATEGORY = 24
MONTAGE_MAX = 240
#: RDM panels per figure (more are split over several figures)
RDM_PANELS = 10


@dataclass
class ParticipantContext:
    layout: drv.OutputLayout
    subject: str
    spec: AnalysisSpec
    spec_source: str
    run_id: str
    status: dict[str, Any]
    provenance: dict[str, Any]
    log_dir: Path | None
    figures: FigureMaker
    stimulus_set: Any = None
    notes: list[str] = field(default_factory=list)
    reliability_source: str = ""

    @cached_property
    def stimuli(self) -> StimulusInfo:
        return read_stimuli(self.layout, self.stimulus_set)

    @cached_property
    def rsa_tables(self) -> dict[str, pd.DataFrame]:
        out = {}
        for model in self.spec.models:
            table = read_table(self.layout.rsa_table(self.subject, model.output_label))
            if table is not None and len(table):
                out[model.output_label] = table
        return out

    def layers(self, model: str) -> list[str]:
        return ordered_layers(self.rsa_tables.get(model), self.layout.model_dir(model), self.spec.rdm.model)

    @cached_property
    def rois(self) -> dict[str, int]:
        """ROI name -> voxel count (status, else the ROI summary table, else the mask files)."""
        if isinstance(self.status.get("rois"), dict) and self.status["rois"]:
            return {str(k): int(v) for k, v in self.status["rois"].items()}
        table = read_table(self.layout.roi_summary(self.subject))
        if table is not None and {"roi", "n_voxels"} <= set(table.columns):
            return {str(r): int(n) for r, n in zip(table["roi"], table["n_voxels"])}
        out = {}
        for path in sorted(self.layout.roi_mask(self.subject, "x").parent.glob(f"sub-{self.subject}_*_mask.nii.gz")):
            label = entities(path.name).get("label")
            if label:
                out[label] = int(read_json(drv.sidecar_path(path)).get("NumberOfVoxels", 0))
        return out

    @cached_property
    def brain_measure(self) -> str | None:
        if self.status.get("brain_rdm"):
            return str(self.status["brain_rdm"])
        for table in self.rsa_tables.values():
            if "brain_rdm" in table.columns:
                return str(table["brain_rdm"].iloc[0])
        for roi in self.rois:
            found = sorted(self.layout.roi_mask(self.subject, roi).parent.glob(
                f"sub-{self.subject}_*_label-{sanitize_label(roi)}_stat-*_relmat.tsv"))
            if found:
                return entities(found[0].name).get("stat")
        return None

    @cached_property
    def maps(self) -> dict[str, list[MapFile]]:
        func = self.layout.betas(self.subject).parent
        return {analysis: find_maps(func, analysis, prefix=f"sub-{self.subject}_")
                for analysis in ("searchlight", "encoding")}

    @cached_property
    def background(self) -> tuple[Any, str]:
        """Underlay of the maps: the MNI152 template in a template space, else the mean BOLD / betas."""
        return map_background(self.layout, [self.subject])

    @cached_property
    def runs(self) -> list[str]:
        runs = self.provenance.get("runs") or []
        return [Path(str(r)).name.split("_space-")[0] for r in runs]

    @cached_property
    def nonfinite(self) -> dict[str, float]:
        """Share of each ROI's voxels whose stimulus estimates are not all finite (from the betas)."""
        out: dict[str, float] = {}
        betas = self.layout.betas(self.subject)
        if not betas.is_file():
            return out
        data, _ = load_volume(betas)
        bad = ~np.isfinite(data).all(axis=-1) if data.ndim == 4 else ~np.isfinite(data)
        for roi in self.rois:
            path = self.layout.roi_mask(self.subject, roi)
            if path.is_file():
                mask = load_volume(path)[0] > 0
                out[roi] = float(bad[mask].mean()) if mask.any() else float("nan")
        return out

    @cached_property
    def reliability(self) -> dict[str, float]:
        """Split-half reliability per ROI: from the status file, else from the encoding noise-ceiling map."""
        given = self.status.get("reliability")
        if isinstance(given, dict) and given:
            self.reliability_source = "recorded by the participant run"
            return {str(k): float(v) if v is not None else float("nan") for k, v in given.items()}
        ceiling = [m for m in self.maps["encoding"] if m.stat == "noiseceiling" and m.model is None]
        if not ceiling:
            return {}
        self.reliability_source = f"mean over the ROI's voxels of {ceiling[0].path.name}"
        values, _ = load_volume(ceiling[0].path)
        out = {}
        for roi in self.rois:
            mask_path = self.layout.roi_mask(self.subject, roi)
            if mask_path.is_file():
                mask, _ = load_volume(mask_path)
                inside = values[mask > 0]
                inside = inside[np.isfinite(inside)]
                out[roi] = float(np.mean(inside)) if inside.size else float("nan")
        return out


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def _summary(ctx: ParticipantContext, section: Section) -> None:
    spec = ctx.spec
    stim = ctx.stimuli
    counts = pd.Series(stim.categories).value_counts(sort=False)
    sessions = sorted({e["ses"] for r in ctx.runs if "ses" in (e := entities(r + "_x.nii"))})
    models = []
    for model in spec.models:
        weights = "random init" if model.weights == "random" else f"{model.weights} weights"
        models.append(f"{model.output_label} ({model.name}, {weights}, {len(ctx.layers(model.output_label))} layers)")
    analyses = []
    if spec.analyses.rsa.enabled:
        analyses.append(f"ROI RSA ({spec.analyses.rsa.comparison}, {spec.analyses.rsa.permutations} permutations)")
    if spec.analyses.cka.enabled:
        cka = spec.analyses.cka
        analyses.append(f"ROI CKA ({cka.kernel} kernel, {cka.estimator} estimator, {cka.permutations} permutations)")
    if spec.analyses.decoding.enabled:
        analyses.append(f"decoding and identification ({spec.analyses.decoding.permutations} permutations)")
    if spec.analyses.probing.enabled:
        analyses.append(f"probing ({', '.join(spec.analyses.probing.annotations)})")
    if spec.analyses.drivers.enabled:
        analyses.append(f"what drives each region (model {drivers_model_label(spec)})")
    if spec.analyses.searchlight.enabled:
        analyses.append(f"searchlight (radius {spec.analyses.searchlight.radius_mm:g} mm)")
    if spec.analyses.encoding.enabled:
        analyses.append(f"encoding (ridge, cv {spec.analyses.encoding.cv})")
    warnings = _warnings(ctx)
    rows: list[tuple[str, Any]] = [
        ("participant", f"sub-{ctx.subject}"),
        ("task / space", f"{ctx.layout.task} / {ctx.layout.space}"),
        ("sessions", ", ".join(f"ses-{s}" for s in sessions) if sessions else "single session (no ses- entity)"),
        ("runs", f"{ctx.status.get('n_runs', len(ctx.runs) or 'n/a')}"
                 + (f": {', '.join(ctx.runs)}" if ctx.runs else "")),
        ("stimuli", f"{stim.n_stimuli} in {len(counts)} categories ("
                    + ", ".join(f"{c} {n}" for c, n in counts.items()) + ")"),
        ("models", "; ".join(models)),
        ("layers", "; ".join(f"{m.output_label}: {', '.join(ctx.layers(m.output_label))}" for m in spec.models)),
        ("ROIs", ", ".join(f"{r} ({n} voxels)" for r, n in ctx.rois.items()) or "none"),
        ("brain-mask voxels", voxel_counts_text(ctx.status.get("voxels"))),
        ("brain RDM measure", ctx.brain_measure or "n/a"),
        ("analyses", "; ".join(analyses) or "none"),
        ("spec hash", spec_hash(spec)),
        ("versions", versions_text(ctx.provenance)),
        ("run id", ctx.run_id),
        ("run time", f"{ctx.status['seconds']} s" if "seconds" in ctx.status else "n/a"),
        ("warnings", f"{len(warnings)} (see Data quality)" if warnings else "none"),
    ]
    section.kv(rows, id="summary-table")
    for note in ctx.notes:
        section.note(note)
    alpha = ctx.spec.statistics.alpha
    rows_best = [best_scoring_layer(model, roi, sub, alpha) for model, table in ctx.rsa_tables.items()
                 for roi, sub in table.groupby("roi", sort=False)]
    if rows_best:
        section.heading("Highest-scoring significant layer per ROI")
        section.add(table_block(pd.DataFrame(rows_best), [
            Col("model", "model"), Col("roi", "ROI"), Col("layer", "layer"),
            Col("score", f"{ctx.spec.analyses.rsa.comparison}", fmt_score),
            Col("p_permutation", "p (permutation)", fmt_p, css=lambda r: "sig" if r["p_permutation"] < alpha else "")],
            id="summary-best"))
        section.note(f"Descriptive: among the layers with permutation p < {alpha:g} (uncorrected), the one with the "
                     "highest score of this participant; an ROI without such a layer has none. Not a cross-validated "
                     "choice (see the group report).")


def voxel_counts_text(counts: Any) -> str:
    """The summary line on the brain-mask voxels: how many were used and how many left out.

    Parameters
    ----------
    counts : dict or None
        The status file's ``voxels`` (``brain_mask``, ``used``, ``left_out``,
        ``left_out_constant``, ``left_out_nonfinite``); missing for ready-made betas and for
        runs of older versions.
    """
    if not isinstance(counts, dict) or "used" not in counts:
        return "n/a"
    text = f"{counts['used']} used of {counts.get('brain_mask', counts['used'])}"
    left_out = int(counts.get("left_out", 0))
    if not left_out:
        return text + " (none left out)"
    return (text + f"; {left_out} left out of every analysis: {counts.get('left_out_constant', 0)} constant in a run, "
            f"{counts.get('left_out_nonfinite', 0)} with NaN / infinite values or estimates in a run")


def best_scoring_layer(model: str, roi: str, table: pd.DataFrame, alpha: float) -> dict[str, Any]:
    """The summary row of one ROI: its highest-scoring layer among those with permutation p < alpha.

    An ROI without such a layer gets ``layer`` "none (no layer with p < alpha)" and no score.
    """
    p = table["p_permutation"].astype(float) if "p_permutation" in table else pd.Series(np.nan, index=table.index)
    candidates = table[p < alpha]
    if not len(candidates):
        return {"model": model, "roi": roi, "layer": f"none (no layer with p < {alpha:g})", "score": np.nan,
                "p_permutation": np.nan}
    best = candidates.loc[candidates["score"].astype(float).idxmax()]
    return {"model": model, "roi": roi, "layer": best["layer"], "score": best["score"],
            "p_permutation": best.get("p_permutation", np.nan)}


#: pixels of the thumbnails read for the stimulus montage (drawn at 96)
MONTAGE_THUMBNAIL = 144
#: inches per montage row (1.3 for images): larger tiles for texts, room for the second label line of sounds
MONTAGE_ROW_HEIGHT = {"text": 1.7, "audio": 1.5}


def _stimuli(ctx: ParticipantContext, section: Section) -> None:
    stim = ctx.stimuli
    order = stim.category_order()
    groups: dict[str, list[tuple[str, Any]]] = {}
    shown = total_missing = 0
    per_category = max(1, min(MONTAGE_PER_CATEGORY, MONTAGE_MAX // max(1, len(set(stim.categories)))))
    for i in order:
        items = groups.setdefault(stim.categories[i], [])
        if len(items) >= per_category:
            continue
        thumbnail = render_thumbnail(stim.paths[i], MONTAGE_THUMBNAIL, text=stim.text_of(i))
        total_missing += thumbnail is None
        items.append((stim.stim_ids[i], thumbnail))
        shown += 1
    kinds = set(stim.kinds)
    name = f"sub-{ctx.subject}_desc-stimuli_montage"
    existing = ctx.figures.folder / f"{name}.png"
    if total_missing == shown and existing.is_file():
        section.note("The stimulus files are not reachable from this output folder; the montage below was drawn by an "
                     "earlier run.")
        section.add(ctx.figures.embed_png(existing, existing.read_bytes(), "stimulus montage"))
    else:
        per_row = min(12, max(len(v) for v in groups.values()))
        rows = sum(max(1, -(-len(v) // per_row)) for v in groups.values())
        row_height = max([1.3] + [MONTAGE_ROW_HEIGHT[kind] for kind in kinds if kind in MONTAGE_ROW_HEIGHT])
        section.add(ctx.figures.figure(
            name, lambda fig: figs.draw_montage(fig, list(groups.items()), thumb=96, per_row=per_row),
            (max(4.0, 1.15 * per_row + 1.5), row_height * rows + 0.3),
            "stimulus montage",
            f"{stim.n_stimuli} stimuli grouped by category, in the row order of every RDM (task-"
            f"{ctx.layout.task}_stimuli.tsv)." + _kinds_caption(kinds)
            + (f" Grey tiles: {total_missing} files not found." if total_missing else "")))
    if shown < stim.n_stimuli:
        section.note(f"Showing the first {per_category} stimuli of each category ({shown} of {stim.n_stimuli}).")
    if "text" in kinds:
        section.add(_texts_table(stim, order))


#: what the montage shows of a text or sound stimulus (its caption; images and videos need none)
KIND_CAPTIONS = {
    "text": "Texts are written into their tiles; one that does not fit ends with '\u2026' (every text in full: "
            "the table below).",
    "audio": "Sounds are shown as their waveform (top, scaled to its peak) over a spectrogram (bottom: magnitude of "
             "the short-time Fourier transform in dB, 0 Hz to half the sampling rate from bottom to top, time from "
             "left to right), labelled with their duration and sampling rate.",
}


def _kinds_caption(kinds: set[str | None]) -> str:
    return "".join(f" {KIND_CAPTIONS[kind]}" for kind in KIND_CAPTIONS if kind in kinds)


def _texts_table(stim: StimulusInfo, order: np.ndarray) -> Block:
    """Every text stimulus in full (stim_id, category, text), in the montage's order."""
    from bids_dnn.io.text import load_text

    rows = []
    kinds = stim.kinds
    for i in order:
        if kinds[i] != "text":
            continue
        text = stim.text_of(i)
        if text is None and stim.paths[i] is not None:
            try:
                text = load_text(Path(stim.paths[i]))
            except Exception:  # noqa: BLE001 - a missing file is named in the table
                text = None
        rows.append({"stim_id": stim.stim_ids[i], "category": stim.categories[i],
                     "text": text if text is not None else "(file not found or not readable)"})
    table = pd.DataFrame(rows, columns=["stim_id", "category", "text"])
    return Block("details", text=f"Table: the text of every text stimulus ({len(table)})", children=[
        table_block(table, [Col("stim_id", "stim_id"), Col("category", "category"), Col("text", "text")],
                    id="stimulus-texts")])


def _warnings(ctx: ParticipantContext) -> list[str]:
    """Warnings recorded by the run plus those derived from the outputs (deduplicated)."""
    out: list[str] = []
    for source in (ctx.status.get("warnings"), ctx.provenance.get("warnings")):
        for item in source or []:
            out.append(str(item))
    for roi, n in ctx.rois.items():
        if n < MIN_ROI_VOXELS:
            out.append(f"ROI {roi} has only {n} voxels (fewer than {MIN_ROI_VOXELS}).")
    for roi, value in ctx.reliability.items():
        if np.isfinite(value) and value < LOW_RELIABILITY:
            out.append(f"ROI {roi}: low split-half reliability ({value:.3f} < {LOW_RELIABILITY:g}); its RDM is mostly "
                       "noise.")
    for roi, fraction in _nonfinite(ctx).items():
        if fraction > MAX_NONFINITE_FRACTION:
            out.append(f"ROI {roi}: {fraction:.0%} of its voxels have no finite estimate (NaN in the betas).")
    return list(dict.fromkeys(out))


def _nonfinite(ctx: ParticipantContext) -> dict[str, float]:
    return ctx.nonfinite


def _quality(ctx: ParticipantContext, section: Section) -> None:
    import nibabel as nib

    rois = ctx.rois
    background, description = ctx.background
    masks = {roi: nib.load(str(ctx.layout.roi_mask(ctx.subject, roi))) for roi in rois
             if ctx.layout.roi_mask(ctx.subject, roi).is_file()}
    section.heading("ROIs")
    if masks and background is not None:
        section.add(ctx.figures.figure(
            f"sub-{ctx.subject}_desc-rois_overlay",
            lambda fig: figs.draw_roi_overlay(fig, background, masks, rois), (11, 2.6), "ROI overlay",
            f"ROI masks on the BOLD grid (after intersection with the brain mask) over the {description}."))
    elif not masks:
        section.note("No ROI masks were written for this participant.")
    rows = []
    nonfinite = _nonfinite(ctx)
    reliability = ctx.reliability
    for roi, n in rois.items():
        path = ctx.layout.roi_mask(ctx.subject, roi)
        volume = np.nan
        if path.is_file():
            zooms = nib.load(str(path)).header.get_zooms()[:3]
            volume = float(n * np.prod(zooms))
        rows.append({"roi": roi, "n_voxels": n, "volume_mm3": volume, "nonfinite_pct": 100 * nonfinite.get(roi, np.nan),
                     "reliability": reliability.get(roi, np.nan)})
    if rows:
        table = pd.DataFrame(rows)
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("n_voxels", "voxels", fmt_int,
                                   css=lambda r: "bad" if r["n_voxels"] < MIN_ROI_VOXELS else ""),
            Col("volume_mm3", "volume (mm³)", fmt_int),
            Col("nonfinite_pct", "voxels without finite estimate (%)", fmt_fixed(1),
                css=lambda r: "bad" if r["nonfinite_pct"] > 100 * MAX_NONFINITE_FRACTION else ""),
            Col("reliability", "split-half reliability", fmt_fixed(3),
                css=lambda r: "bad" if r["reliability"] < LOW_RELIABILITY else "")],
            id="rois", caption=f"Split-half reliability: {ctx.reliability_source}." if reliability else ""))
        if not reliability:
            section.note("Split-half reliability per ROI is not available for this run (it is recorded when the run "
                         "writes it to the status file, or derived from the encoding noise-ceiling map).")
        elif np.isfinite(list(reliability.values())).any():
            labels = list(reliability)
            section.add(ctx.figures.figure(
                f"sub-{ctx.subject}_desc-reliability_bar",
                lambda fig: figs.draw_bars(fig, labels, [reliability[k] for k in labels], "split-half reliability",
                                           "Split-half reliability per ROI", LOW_RELIABILITY),
                (max(3.5, 1.0 * len(labels) + 1.5), 2.8), "split-half reliability per ROI",
                "Odd vs even runs, Spearman-Brown corrected."))
    glm_runs = ctx.status.get("glm_runs") or ctx.provenance.get("glm_runs")
    section.heading("GLM per run")
    if isinstance(glm_runs, list) and glm_runs:
        table = pd.DataFrame([{k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()}
                              for r in glm_runs if isinstance(r, dict)])
        section.add(generic_table(table, id="glm-runs"))
    else:
        section.note(f"{ctx.status.get('n_runs', 'n/a')} run(s) were fitted; per-run diagnostics were not recorded "
                     "by this run.")
    section.heading("Warnings")
    warnings = _warnings(ctx)
    for warning in warnings:
        section.warning(warning)
    if not warnings:
        section.note("No warnings: every stimulus was in every run, no ROI is small or mostly without estimates.")


def _ordered(square: np.ndarray, ids: list[str], stim: StimulusInfo) -> tuple[np.ndarray, list[str]]:
    """Reorder an RDM (rows = ``ids``) by category; returns it and its row categories."""
    category = dict(zip(stim.stim_ids, stim.categories))
    cats = [category.get(i, "?") for i in ids]
    first = {c: k for k, c in reversed(list(enumerate(cats)))}
    order = sorted(range(len(ids)), key=lambda k: (first[cats[k]], k))
    return square[np.ix_(order, order)], [cats[k] for k in order]


def _grid_size(n: int, cols: int) -> tuple[float, float]:
    c = min(n, cols)
    blocks = -(-n // c)
    return 3.1 * c + 0.6, 5.4 * blocks + 0.7


def _rdms(ctx: ParticipantContext, section: Section) -> None:
    seed = ctx.spec.statistics.seed
    measure = ctx.brain_measure
    stim = ctx.stimuli
    panels, cats = [], None
    missing = []
    for roi in ctx.rois:
        path = ctx.layout.brain_rdm(ctx.subject, roi, measure) if measure else None
        if path is None or not path.is_file():
            missing.append(roi)
            continue
        square, ids = read_relmat(path)
        ordered, cats = _ordered(square, ids, stim)
        panels.append((roi, ordered))
    section.heading("Brain RDMs")
    if panels:
        section.blocks += ctx.figures.figures(
            f"sub-{ctx.subject}_desc-brain_relmat", panels, RDM_PANELS,
            lambda fig, part: figs.draw_rdm_grid(fig, part, cats, seed, max_cols=4,
                                                 value_label=figs.rdm_unit(measure)),
            lambda part: _grid_size(len(part), 4), "brain RDMs",
            f"Top: RDM per ROI ({measure}), rows and columns grouped by category (white lines); colour range 1st-99th "
            f"percentile. Bottom: 2D metric MDS of the same RDM (scikit-learn, precomputed dissimilarities, seed "
            f"{seed}; negative crossnobis distances shifted to be non-negative), dots coloured by category.")
    else:
        section.note("No brain RDMs were written for this participant.")
    if missing and panels:
        section.note(f"No RDM file for ROI(s) {', '.join(missing)}.")
    for model in ctx.spec.models:
        label = model.output_label
        layers = ctx.layers(label)
        model_panels = []
        for layer in layers:
            path = ctx.layout.model_rdm(label, layer, ctx.spec.rdm.model)
            if path.is_file():
                square, ids = read_relmat(path)
                ordered, cats_m = _ordered(square, ids, stim)
                model_panels.append((layer, ordered))
        if not model_panels:
            continue
        section.heading(f"Model RDMs: {label}")
        section.blocks += ctx.figures.figures(
            f"sub-{ctx.subject}_model-{label}_desc-model_relmat", model_panels, RDM_PANELS,
            lambda fig, part, c=cats_m: figs.draw_rdm_grid(fig, part, c, seed, max_cols=5,
                                                           value_label=figs.rdm_unit(ctx.spec.rdm.model)),
            lambda part: _grid_size(len(part), 5), f"model RDMs {label}",
            f"{ctx.spec.rdm.model} distance between the stimuli's activations per layer of {label}, same order as the "
            "brain RDMs; MDS below each.")


def _rsa(ctx: ParticipantContext, section: Section) -> None:
    if not ctx.rsa_tables:
        section.note("ROI RSA was not run (analyses.rsa.enabled is false, or no ROIs)." if not
                     ctx.spec.analyses.rsa.enabled else "No ROI RSA table was found for this participant.")
        return
    alpha = ctx.spec.statistics.alpha
    for model, table in ctx.rsa_tables.items():
        layers = ctx.layers(model)
        comparison = str(table["comparison"].iloc[0]) if "comparison" in table else "score"
        section.heading(f"Model {model}")
        section.add(ctx.figures.figure(
            f"sub-{ctx.subject}_model-{model}_desc-rsa_profile",
            lambda fig, t=table, lay=layers, c=comparison, m=model: figs.draw_rsa_profile(
                fig, t, lay, alpha, f"{c} (brain vs model RDM)", f"{m}: RSA score per layer"),
            (8, 3.8), f"RSA layer profile {model}",
            f"Score per layer and ROI; stars: stimulus-label permutation p < {alpha:g} "
            f"({int(table['n_permutations'].iloc[0]) if 'n_permutations' in table else 'n/a'} permutations, one-sided, "
            "uncorrected)."))
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("layer", "layer"), Col("score", comparison, fmt_score),
            Col("p_permutation", "p (permutation)", fmt_p,
                css=lambda r: "sig" if r["p_permutation"] < alpha else ""),
            Col("n_permutations", "permutations", fmt_int), Col("n_voxels", "voxels", fmt_int),
            Col("brain_rdm", "brain RDM"), Col("model_rdm", "model RDM")],
            id=f"rsa-{model}", caption=f"{ctx.layout.rsa_table(ctx.subject, model).name}"))


def _methods(ctx: ParticipantContext, section: Section) -> None:
    facts = {"task": ctx.layout.task, "n_stimuli": ctx.stimuli.n_stimuli,
             "n_categories": len(set(ctx.stimuli.categories)), "brain_rdm": ctx.brain_measure,
             "layers": {m.output_label: ctx.layers(m.output_label) for m in ctx.spec.models},
             "rois": list(ctx.rois), "has_searchlight": bool(ctx.maps["searchlight"]),
             "has_encoding": bool(ctx.maps["encoding"]),
             "has_decoding": any(ctx.layout.decoding_table(ctx.subject, m.output_label).is_file()
                                 for m in ctx.spec.models),
             "has_probing": has_probing_outputs(ctx.layout, [m.output_label for m in ctx.spec.models],
                                                ctx.layout.probing_table(ctx.subject)),
             "has_drivers": ctx.layout.drivers_table(ctx.subject, drivers_model_label(ctx.spec)).is_file()}
    for block in methods_blocks(ctx.spec, "participant", facts):
        section.add(block)


def _provenance(ctx: ParticipantContext, section: Section) -> None:
    extra = []
    if ctx.provenance.get("runs"):
        extra.append(("input runs", ", ".join(str(r) for r in ctx.provenance["runs"])))
    provenance_section(section, ctx.layout, ctx.log_dir, ctx.provenance, ctx.spec, ctx.spec_source, extra)
    outputs = ctx.status.get("outputs")
    if outputs:
        section.add(Block("pre", text=f"Outputs of this participant ({len(outputs)} files)", body="\n".join(outputs)))


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def participant_warnings(layout: drv.OutputLayout, subject: str) -> list[str]:
    """The warnings that the participant's report lists (the group report counts the same ones)."""
    return _warnings(_context(layout, subject))


def _context(layout: drv.OutputLayout, subject: str, stimuli: Any = None, summary: dict[str, Any] | None = None,
             spec: AnalysisSpec | None = None, run_id: str | None = None) -> ParticipantContext:
    """What the report of ``subject`` is built from (status file, log folder, spec)."""
    subject = re.sub(r"^sub-", "", str(subject))
    status = read_json(layout.status(subject))
    if summary:
        if status.get("run_id") and run_id and status.get("run_id") != run_id:
            status = {}  # the status file belongs to an earlier run
        status = {**status, **summary}
    run_id = run_id or status.get("run_id")
    log_dir = find_log_dir(layout.subject_dir(subject) / "log", run_id)
    provenance = read_json(log_dir / "provenance.json") if log_dir else {}
    run_id = run_id or provenance.get("run_id") or (log_dir.name if log_dir else "unknown")
    used_spec, spec_source = spec_from_log(log_dir, spec)
    ctx = ParticipantContext(layout, subject, used_spec, spec_source, str(run_id), status, provenance, log_dir,
                             FigureMaker(layout.figures_dir(subject), layout.root), stimulus_set=stimuli)
    if spec is not None and spec_source == "log" and spec_hash(spec) != spec_hash(used_spec):
        ctx.notes.append(f"The outputs were made with spec {spec_hash(used_spec)} (shown here), not with the spec "
                         f"given now ({spec_hash(spec)}).")
    return ctx


def participant_context(layout: drv.OutputLayout, subject: str, stimuli: Any = None,
                        summary: dict[str, Any] | None = None, spec: AnalysisSpec | None = None,
                        run_id: str | None = None) -> ParticipantContext:
    """What the report of ``subject`` is built from: status file, log folder, the spec of the run
    (its ``spec.json``, else ``spec``); the arguments as in :func:`build`."""
    return _context(layout, subject, stimuli, summary, spec, run_id)


def build(layout: drv.OutputLayout, subject: str, stimuli: Any = None, summary: dict[str, Any] | None = None,
          spec: AnalysisSpec | None = None, run_id: str | None = None) -> Path:
    """Write ``sub-<subject>.html`` from the participant's outputs; returns its path (a naturalistic
    design's report: :mod:`bids_dnn.report.naturalistic_report`)."""
    ctx = _context(layout, subject, stimuli, summary, spec, run_id)
    if ctx.spec.design == "naturalistic":
        from bids_dnn.report.naturalistic_report import build_naturalistic

        return build_naturalistic(ctx)
    subject = ctx.subject
    sections = [
        guarded_section("summary", "Summary", lambda s: _summary(ctx, s)),
        guarded_section("stimuli", "Stimuli", lambda s: _stimuli(ctx, s)),
        guarded_section("quality", "Data quality", lambda s: _quality(ctx, s)),
        guarded_section("rdms", "RDMs", lambda s: _rdms(ctx, s)),
        guarded_section("rsa", "ROI RSA", lambda s: _rsa(ctx, s)),
    ]
    if ctx.spec.analyses.cka.enabled or participant_cka_tables(ctx):
        sections.append(guarded_section("cka", "ROI CKA", lambda s: participant_cka_section(ctx, s)))
    analyses = ctx.spec.analyses
    if analyses.decoding.enabled or participant_decoding_tables(ctx):
        sections.append(guarded_section("decoding", "Decoding and identification",
                                        lambda s: participant_decoding_section(ctx, s)))
    if analyses.probing.enabled or has_probing_outputs(layout, [m.output_label for m in ctx.spec.models],
                                                       layout.probing_table(subject)):
        sections.append(guarded_section("probing", "Probing: layers and regions on one scale",
                                        lambda s: participant_probing_section(ctx, s)))
    if analyses.drivers.enabled or layout.drivers_table(subject, drivers_model_label(ctx.spec)).is_file():
        sections.append(guarded_section("drivers", "What drives each region",
                                        lambda s: participant_drivers_section(ctx, s)))
    has_maps = any(ctx.maps.values()) or any(
        ctx.layout.encoding_table(subject, m.output_label).is_file() for m in ctx.spec.models)
    if has_maps:
        sections.append(guarded_section("maps", "Searchlight and encoding maps", lambda s: maps_section(ctx, s)))
    sections += [guarded_section("methods", "Methods", lambda s: _methods(ctx, s)),
                 guarded_section("provenance", "Provenance", lambda s: _provenance(ctx, s))]
    subtitle = [f"task {layout.task} · space {layout.space} · run {ctx.run_id} · spec {spec_hash(ctx.spec)}"]
    if ctx.figures.failures:
        subtitle.append(f"{len(ctx.figures.failures)} figure(s) could not be drawn; see the notes in their sections.")
    return render_page(layout.participant_report(subject), f"bids_dnn report: sub-{subject}", subtitle, sections,
                       ctx.run_id, str(layout.figures_dir(subject).relative_to(layout.root)))
