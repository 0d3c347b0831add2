"""The group report ``OUT_DIR/group.html`` (figures under ``group/figures/``).

Sections: summary, participants (included / excluded and why), ROI RSA (layer profiles across
models with CIs, noise-ceiling band, corrected significance and the cross-validated best layer),
pairwise layer comparisons, ROI CKA (only with CKA summaries; :mod:`bids_dnn.report.cka_sections`),
weighted RSA, decoding and identification, probing and what drives each region (each when enabled or
when its outputs exist; :mod:`bids_dnn.report.decoding_sections`, :mod:`bids_dnn.report.probing_sections`,
:mod:`bids_dnn.report.drivers_sections`), group maps (only when they exist), methods, provenance.
A naturalistic design (``design: naturalistic``) gets its own sections instead
(:mod:`bids_dnn.report.naturalistic_sections`) and the group maps of the time-series encoding.
Everything is read from the output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.console import logger
from bids_dnn.report import figures as figs
from bids_dnn.report.assemble import (
    Block,
    Col,
    FigureMaker,
    Section,
    fmt_bool,
    fmt_fixed,
    fmt_int,
    fmt_p,
    fmt_score,
    fmt_sig,
    guarded_section,
    render_page,
    table_block,
)
from bids_dnn.report.common import (
    edge_flagged,
    encoding_table_warnings,
    fmt_share,
    parse_bool,
    provenance_section,
)
from bids_dnn.report.inputs import (
    MapFile,
    find_log_dir,
    find_maps,
    load_volume,
    map_background,
    read_json,
    read_table,
    spec_from_log,
    subject_ids,
)
from bids_dnn.report.cka_sections import group_cka_section, group_cka_summaries
from bids_dnn.report.decoding_sections import group_decoding_section, group_decoding_summaries
from bids_dnn.report.drivers_sections import drivers_model_label, group_drivers_section
from bids_dnn.report.naturalistic_sections import (
    NATURALISTIC_ANALYSIS,
    group_layer_order,
    group_naturalistic_methods,
    group_naturalistic_section,
    group_naturalistic_summaries,
    group_naturalistic_summary,
)
from bids_dnn.report.group_summary import group_summary_section
from bids_dnn.report.probing_sections import group_probing_section, has_probing_outputs
from bids_dnn.report.methods import methods_blocks
from bids_dnn.spec import AnalysisSpec, sanitize_label, spec_hash
from bids_dnn.stats.group_tests import GROUP_TESTS

#: corrected p-value maps in order of preference for thresholding the t maps
THRESHOLD_STATS = (("pfwe", "p_FWE (max-T)"), ("pfwetfce", "p_FWE (TFCE)"), ("pfdr", "p_FDR"))
#: the whole-brain analyses with group maps (``desc-`` labels) of each design
MAP_ANALYSES = {"events": ("searchlight", "encoding"), "naturalistic": (NATURALISTIC_ANALYSIS,)}
#: how the headings name an analysis's group maps (else by its label)
MAP_TITLES = {NATURALISTIC_ANALYSIS: "time-series encoding"}


@dataclass
class GroupContext:
    layout: drv.OutputLayout
    spec: AnalysisSpec
    spec_source: str
    run_id: str
    subjects: list[str]
    excluded: dict[str, str]
    provenance: dict[str, Any]
    log_dir: Path | None
    figures: FigureMaker
    notes: list[str] = field(default_factory=list)

    @cached_property
    def summaries(self) -> dict[str, pd.DataFrame]:
        out = {}
        for model in self.spec.models:
            table = read_table(self.layout.group_table(model.output_label, "summary"))
            if table is not None and len(table):
                out[model.output_label] = table
        return out

    @cached_property
    def rois(self) -> list[str]:
        return list(dict.fromkeys(r for t in self.summaries.values() for r in t["roi"]))

    @property
    def p_corrected(self) -> str:
        return {"fdr_bh": "p_fdr", "bonferroni": "p_bonferroni", "none": "p_group"}[self.spec.statistics.correction]

    @cached_property
    def maps(self) -> dict[str, list[MapFile]]:
        return {a: find_maps(self.layout.group_dir, a) for a in MAP_ANALYSES[self.spec.design]}

    @cached_property
    def background(self) -> tuple[Any, str]:
        """The MNI152 template in a template space, else the mean over included participants of
        their background images (same grid), else none."""
        return map_background(self.layout, self.subjects)


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def _summary(ctx: GroupContext, section: Section) -> None:
    group_summary_section(ctx, section, ctx.summaries, list(ctx.rois), score_label="mean score")


def _participant_warnings(ctx: GroupContext, subject: str) -> list[str]:
    """The warnings the participant's report lists (its status file's when they cannot be worked out)."""
    from bids_dnn.report.participant_report import participant_warnings

    try:
        return participant_warnings(ctx.layout, subject)
    except Exception as exc:  # noqa: BLE001 - an unreadable participant output must not lose the table
        logger.warning("report: cannot work out the warnings of sub-%s (%s); counting its recorded ones", subject, exc)
        return list(read_json(ctx.layout.status(subject)).get("warnings") or [])


def _participants(ctx: GroupContext, section: Section) -> None:
    from bids_dnn.io.status import failure_reason, other_dataset
    from bids_dnn.io.input_dataset import read_record

    current = spec_hash(ctx.spec)
    record = read_record(ctx.layout.root)
    rows = []
    for subject in sorted(set(subject_ids(ctx.layout)) | set(ctx.subjects) | set(ctx.excluded)):
        status = read_json(ctx.layout.status(subject))
        included = subject in ctx.subjects and subject not in ctx.excluded
        if included:
            reason = ""
        elif subject in ctx.excluded:
            reason = ctx.excluded[subject]
        elif not status:
            reason = "no participant outputs (status file missing)"
        elif isinstance(status.get("failure"), dict):
            reason = f"participant run failed ({failure_reason(status['failure'])})"
        elif not status.get("complete"):
            reason = "participant run incomplete"
        elif other_dataset(status, record):
            reason = "computed from another input dataset than this folder's (input_dataset.json)"
        elif status.get("spec_hash") != current:
            reason = f"made with a different spec ({status.get('spec_hash')})"
        else:
            reason = "not selected for this group run (--participant-label)"
        warnings = _participant_warnings(ctx, subject) if status else []
        rois = status.get("rois") or {}
        rows.append({"participant": f"sub-{subject}", "included": included, "reason": reason or "",
                     "runs": status.get("n_runs", np.nan),
                     "roi_voxels": ", ".join(f"{k} {v}" for k, v in rois.items()) if isinstance(rois, dict) else "",
                     "warnings": len(warnings), "run_id": status.get("run_id", ""),
                     "report": f"sub-{subject}.html" if ctx.layout.participant_report(subject).is_file() else ""})
    if not rows:
        section.note("No participant outputs were found.")
        return
    section.add(table_block(pd.DataFrame(rows), [
        Col("participant", "participant"), Col("included", "included", fmt_bool,
                                               css=lambda r: "" if r["included"] else "bad"),
        Col("reason", "reason if excluded"), Col("runs", "runs", fmt_int), Col("roi_voxels", "ROI voxels"),
        Col("warnings", "warnings", fmt_int), Col("run_id", "participant run"),
        Col("report", "report", link=lambda r: r["report"])],
        id="participants-table"))
    section.note(f"{sum(r['included'] for r in rows)} of {len(rows)} participants with outputs are included.")


def _rsa(ctx: GroupContext, section: Section) -> None:
    if not ctx.summaries:
        section.note("No group RSA summary was found (analyses.rsa disabled, or the group level has not run).")
        return
    stats = ctx.spec.statistics
    rois = ctx.rois
    cols = min(len(rois), 3)
    n_rows = -(-len(rois) // cols)
    section.add(ctx.figures.figure(
        f"task-{ctx.layout.task}_desc-profiles_rsa",
        lambda fig: figs.draw_group_profiles(fig, ctx.summaries, rois, stats.alpha, stats.correction),
        (4.3 * cols + 0.5, 3.6 * n_rows + 1.3), "group RSA layer profiles",
        f"Mean RSA score per layer across participants with {stats.ci:.0%} participant-bootstrap CIs (SEM when no "
        f"CI); grey band: lower-upper noise ceiling; filled markers: significant after {stats.correction} "
        f"(alpha {stats.alpha:g}); triangles: the ROI's best layer, chosen by leave-one-participant-out "
        "cross-validation among the significant layers (none in an ROI without a significant layer)."
        + (" With several models, layers are placed by relative depth." if len(ctx.summaries) > 1 else "")))
    p_corr = ctx.p_corrected
    for model, summary in ctx.summaries.items():
        section.heading(f"Model {model}")
        table = summary.copy()
        table["p_corrected"] = table[p_corr] if p_corr in table else np.nan
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("layer", "layer"), Col("n_subjects", "n", fmt_int),
            Col("mean", "mean", fmt_score), Col("sem", "SEM", fmt_score),
            Col("ci_low", "CI low", fmt_score), Col("ci_high", "CI high", fmt_score),
            Col("t", "t", fmt_fixed(2)), Col("p_group", f"p ({stats.group_test})", fmt_p),
            Col("p_corrected", f"p ({stats.correction})", fmt_p,
                css=lambda r: "sig" if parse_bool(r.get("significant")) else ""),
            Col("significant", "significant", fmt_bool),
            Col("noise_ceiling_lower", "noise ceiling low", fmt_score),
            Col("noise_ceiling_upper", "noise ceiling high", fmt_score),
            Col("best_layer_cv", "best (CV)", fmt_bool)],
            id=f"group-summary-{model}", caption=ctx.layout.group_table(model, "summary").name))


def _comparisons(ctx: GroupContext, section: Section) -> None:
    stats = ctx.spec.statistics
    p_column = GROUP_TESTS[stats.group_test].p_value
    found = False
    for model in ctx.spec.models:
        label = model.output_label
        table = read_table(ctx.layout.group_table(label, "comparisons"))
        if table is None or not len(table):
            continue
        found = True
        summary = ctx.summaries.get(label)
        layers_by_roi = {}
        for roi in dict.fromkeys(table["roi"]):
            if summary is not None and roi in set(summary["roi"]):
                layers_by_roi[roi] = list(dict.fromkeys(summary.loc[summary["roi"] == roi, "layer"]))
            else:
                rows = table[table["roi"] == roi]
                layers_by_roi[roi] = list(dict.fromkeys([*rows["layer_a"], *rows["layer_b"]]))
        cols = min(len(layers_by_roi), 3)
        n_rows = -(-len(layers_by_roi) // cols)
        size = max(len(v) for v in layers_by_roi.values())
        section.heading(f"Model {label}")
        section.add(ctx.figures.figure(
            f"task-{ctx.layout.task}_model-{label}_desc-comparisons_rsa",
            lambda fig, t=table, lb=layers_by_roi: figs.draw_comparison_matrices(fig, t, lb, p_column, stats.alpha),
            ((0.55 * size + 2.4) * cols, (0.5 * size + 1.6) * n_rows), f"pairwise layer comparisons {label}",
            f"Mean over participants of the score difference (row layer minus column layer); * paired "
            f"{'t-test' if p_column == 'p_t' else 'Wilcoxon test'} p < {stats.alpha:g} (two-sided, uncorrected)."))
        section.add(Block("details", text=f"Table: {ctx.layout.group_table(label, 'comparisons').name}", children=[
            table_block(table, [
                Col("roi", "ROI"), Col("layer_a", "layer a"), Col("layer_b", "layer b"),
                Col("mean_difference", "mean (a - b)", fmt_score), Col("sem", "SEM", fmt_score),
                Col("t", "t", fmt_fixed(2)), Col("p_t", "p (t-test)", fmt_p,
                                                 css=lambda r: "sig" if r["p_t"] < stats.alpha else ""),
                Col("wilcoxon_w", "W", fmt_sig(3)), Col("p_wilcoxon", "p (Wilcoxon)", fmt_p)],
                id=f"comparisons-{label}")]))
    if not found:
        section.note("No pairwise layer comparison table was found.")


def _layer_rank(ctx: GroupContext, model: str, layer_label: str) -> tuple[int, str]:
    """Network order of a layer label: the RSA summary's order, else the model RDMs' sidecars'."""
    from bids_dnn.report.inputs import ordered_layers

    if ctx.spec.design == "naturalistic":
        labels = {sanitize_label(m.output_label): m.output_label for m in ctx.spec.models}
        summary = group_naturalistic_summaries(ctx).get(labels.get(model, model))
        layers = group_layer_order(ctx, labels.get(model, model), summary)
    else:
        layers = ordered_layers(ctx.summaries.get(model), ctx.layout.model_dir(model), ctx.spec.rdm.model)
    order = {sanitize_label(layer): i for i, layer in enumerate(layers)}
    return order.get(layer_label, len(order)), layer_label


def _no_survivor_note(section: Section, records: list[dict[str, Any]], alpha: float) -> None:
    """Explain a map family where no voxel survives the FWE correction (often: too few participants)."""
    if not records or any(r.get("n_pfwe", 0) for r in records) or not any("n_pfwe" in r for r in records):
        return
    smallest = min((r["min_pfwe"] for r in records if "min_pfwe" in r), default=float("nan"))
    text = f"No voxel survives p_FWE <= {alpha:g} in any layer (smallest p_FWE {smallest:.3g})"
    n = records[0].get("n_subjects")
    if isinstance(n, (int, float)) and n and 2.0 ** (-float(n)) > alpha:
        text += (f"; with {int(n)} participants a sign-flip test has at most 2^{int(n)} = {2 ** int(n)} distinct "
                 f"flips, so p_FWE cannot be below {2.0 ** (-float(n)):.3g}")
    section.warning(text + ". The maps above are shown unthresholded.")


def _threshold(maps: dict[str, MapFile], alpha: float) -> tuple[str, str, np.ndarray | None]:
    for stat, label in THRESHOLD_STATS:
        if stat in maps:
            values, _ = load_volume(maps[stat].path)
            return stat, label, np.isfinite(values) & (values <= alpha)
    return "none", "uncorrected (no corrected map)", None


def _group_maps(ctx: GroupContext, section: Section) -> None:
    import nibabel as nib

    alpha = ctx.spec.statistics.alpha
    background, description = ctx.background
    glass = ctx.layout.space.upper().startswith("MNI")
    for analysis, items in ctx.maps.items():
        if not items:
            continue
        section.heading(f"Group {MAP_TITLES.get(analysis, analysis)} maps", id=f"group-{analysis}")
        for model in dict.fromkeys(m.model for m in items if m.model):
            by_layer: dict[str, dict[str, MapFile]] = {}
            for item in items:
                if item.model == model:
                    by_layer.setdefault(item.layer_label or "", {})[item.stat] = item
            rows, glass_rows, records = [], [], []
            for layer_label, stats in sorted(by_layer.items(), key=lambda kv: _layer_rank(ctx, model, kv[0])):
                if "t" not in stats:
                    continue
                t_values, t_image = load_volume(stats["t"].path)
                used, used_label, significant = _threshold(stats, alpha)
                finite = np.isfinite(t_values)
                name = stats["t"].layer or layer_label
                n_sig = int(significant.sum()) if significant is not None else 0
                if significant is not None and n_sig:
                    shown = np.where(significant, t_values, 0.0)
                    title = f"{name}: t where {used_label} <= {alpha:g} ({n_sig} voxel{'s' if n_sig != 1 else ''})"
                else:  # nothing survives (or no corrected map): show the pattern, say so in the title
                    shown = np.nan_to_num(t_values)
                    title = (f"{name}: t, unthresholded (0 voxels at {used} <= {alpha:g})"
                             if significant is not None else f"{name}: t, unthresholded")
                    used_label = "none (unthresholded)"
                image = nib.Nifti1Image(shown.astype(np.float32), t_image.affine)
                rows.append((title, image))
                glass_rows.append(image if glass else None)
                record: dict[str, Any] = {"layer": name, "n_voxels": int(finite.sum()),
                                          "max_t": float(np.nanmax(t_values)) if finite.any() else np.nan,
                                          "threshold": used_label}
                for stat in ("pfwe", "pfwetfce", "pfdr", "p"):
                    if stat in stats:
                        values, _ = load_volume(stats[stat].path)
                        record[f"n_{stat}"] = int((np.isfinite(values) & (values <= alpha)).sum())
                        if stat == "pfwe" and np.isfinite(values).any():
                            record["min_pfwe"] = float(np.nanmin(values))
                sidecar = stats["t"].sidecar
                record["t_fwe"] = sidecar.get("ThresholdFWE_t")
                record["n_subjects"] = sidecar.get("NumberOfSubjects")
                record["permutations"] = sidecar.get("Permutations")
                records.append(record)
            if not rows:
                continue
            images = [image for _, image in rows]
            vmax = figs.robust_abs_limit(images)
            section.blocks += ctx.figures.figures(
                f"task-{ctx.layout.task}_model-{model}_desc-{analysis}_groupmap", list(zip(rows, glass_rows)), 8,
                lambda fig, part, v=vmax: figs.draw_stat_map_rows(
                    fig, [r for r, _ in part], background, glass=[g for _, g in part] if glass else None, vmax=v),
                lambda part: (11, 2.0 * len(part) + 0.3), f"group {analysis} maps {model}",
                f"One-sample t across participants per layer of {model}, shown where the corrected p <= {alpha:g} "
                f"(the first of FWE max-T, FWE TFCE, FDR that was computed; unthresholded where no voxel survives, as "
                f"the titles say), over the {description}" + ("; glass brain on the right (MNI). " if glass else ". ")
                + figs.robust_limit_note(vmax, images))
            _no_survivor_note(section, records, alpha)
            section.add(table_block(pd.DataFrame(records), [
                Col("layer", "layer"), Col("n_voxels", "voxels tested", fmt_int), Col("max_t", "max t", fmt_fixed(2)),
                Col("t_fwe", "FWE t threshold", fmt_fixed(2)),
                Col("n_pfwe", f"p_FWE <= {alpha:g}", fmt_int), Col("min_pfwe", "smallest p_FWE", fmt_p),
                Col("n_pfwetfce", f"p_FWE(TFCE) <= {alpha:g}", fmt_int),
                Col("n_pfdr", f"p_FDR <= {alpha:g}", fmt_int), Col("n_p", f"p_unc <= {alpha:g}", fmt_int),
                Col("n_subjects", "participants", fmt_int), Col("permutations", "permutations", fmt_int),
                Col("threshold", "figure threshold")], id=f"group-{analysis}-{model}"))
    for model in ctx.spec.models:
        label = model.output_label
        table = read_table(ctx.layout.group_table(label, "summary", suffix="encoding"))
        if table is None or not len(table):
            continue
        section.heading(f"Encoding ROI summary: {label}", id=f"group-encoding-summary-{label}")
        layers = list(dict.fromkeys(table["layer"]))
        summary = ctx.summaries.get(label)
        if summary is not None:
            layers = list(dict.fromkeys([*summary["layer"], *layers]))
        bands = _encoding_ceiling_bands(ctx, label)
        section.add(ctx.figures.figure(
            f"task-{ctx.layout.task}_model-{label}_desc-profile_encoding",
            lambda fig, t=table, lay=layers, m=label, b=bands: figs.draw_line_profile(
                fig, t, lay, "mean_r2", "mean held-out R² (± SEM)", f"{m}: encoding per ROI", error="sem_r2",
                ceiling=b, best="best_layer"),
            (8, 3.6), f"group encoding profile {label}",
            "Mean over participants of the ROI-mean held-out R² (± SEM); band in the ROI's colour: its noise ceiling "
            "(mean ± SEM over participants of the ROI's split-half reliability, the R² a perfect model could reach); "
            f"triangles: the ROI's best layer (highest mean R² among the layers with p_FDR < {alpha:g}; none in an "
            "ROI without such a layer)."))
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("layer", "layer"), Col("n_subjects", "n", fmt_int),
            Col("mean_r2", "mean R²", fmt_fixed(4)), Col("sem_r2", "SEM", fmt_fixed(4)), Col("t", "t", fmt_fixed(2)),
            Col("p", "p", fmt_p), Col("p_fdr", "p (FDR)", fmt_p, css=lambda r: "sig" if r["p_fdr"] < alpha else ""),
            Col("mean_r", "mean r", fmt_score), Col("mean_noise_ceiling", "noise ceiling", fmt_score),
            Col("mean_normalized_r2", "R² / ceiling", fmt_score,
                css=lambda r: "bad" if parse_bool(r.get("normalized_r2_out_of_range")) else ""),
            Col("mean_alpha_at_grid_edge", "alpha at grid edge", fmt_share,
                css=lambda r: "bad" if edge_flagged(r.get("mean_alpha_at_grid_edge")) else ""),
            Col("best_layer", "best", fmt_bool)],
            id=f"group-encoding-summary-table-{label}"))
        for warning in encoding_table_warnings(table, "mean_normalized_r2", "normalized_r2_out_of_range",
                                               "mean_alpha_at_grid_edge"):
            section.warning(warning)


def _encoding_ceiling_bands(ctx: GroupContext, model: str) -> dict[str, tuple[float, float]]:
    """Per ROI the noise-ceiling band of the group encoding profile: mean ± SEM over participants
    of the ROI reliability (from the all-participants encoding table; {} without it)."""
    table = read_table(ctx.layout.group_table(model, suffix="encoding"))
    if table is None or not {"subject", "roi", "noise_ceiling"} <= set(table.columns):
        return {}
    bands = {}
    for roi, rows in table.drop_duplicates(["subject", "roi"]).groupby("roi", sort=False):
        values = rows["noise_ceiling"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            sem = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
            bands[str(roi)] = (float(values.mean()) - sem, float(values.mean()) + sem)
    return bands


def _methods(ctx: GroupContext, section: Section) -> None:
    layers = {m: list(dict.fromkeys(t["layer"])) for m, t in ctx.summaries.items()}
    brain = None
    table = None
    for model in ctx.spec.models:
        table = read_table(ctx.layout.group_table(model.output_label))
        if table is not None and "brain_rdm" in table:
            brain = ", ".join(dict.fromkeys(str(b) for b in table["brain_rdm"]))
            break
    facts = {"task": ctx.layout.task, "n_subjects": len(ctx.subjects), "layers": layers, "brain_rdm": brain,
             "rois": ctx.rois, "has_searchlight": bool(ctx.maps["searchlight"]),
             "has_encoding": bool(ctx.maps["encoding"]) or any(
                 ctx.layout.group_table(m.output_label, "summary", suffix="encoding").is_file()
                 for m in ctx.spec.models),
             "has_decoding": bool(group_decoding_summaries(ctx)),
             "has_probing": has_probing_outputs(ctx.layout, [m.output_label for m in ctx.spec.models],
                                                ctx.layout.group_roi_table("summary", suffix="probing")),
             "has_drivers": ctx.layout.group_table(drivers_model_label(ctx.spec), "summary",
                                                   suffix="drivers").is_file()}
    stim = read_table(ctx.layout.stimuli_table())
    if stim is not None:
        facts["n_stimuli"] = len(stim)
        facts["n_categories"] = stim["category"].nunique() if "category" in stim else None
    for block in methods_blocks(ctx.spec, "group", facts):
        section.add(block)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def _combined(ctx: GroupContext, section: Section) -> None:
    """Weighted RSA and variance partitioning tables (when the spec enabled them)."""
    alpha = ctx.spec.statistics.alpha
    for model in ctx.spec.models:
        label = model.output_label
        table = read_table(ctx.layout.group_table(label, "weighted"))
        if table is None or not len(table):
            continue
        section.heading(f"Weighted RSA, model {label}")
        section.add(Block("paragraph", text=(
            "Non-negative layer weights fitted on training data and scored on held-out data "
            f"(cross-validation over {table['cv'].iloc[0]}); compared on the same folds with the ROI's best layer, "
            "the one of the summary above (cross-validated among the significant layers; none, and no comparison, "
            "in an ROI without a significant layer).")))
        section.add(table_block(table, [
            Col("roi", "ROI"), Col("mean", "mean held-out score", fmt_score), Col("sem", "SEM", fmt_score),
            Col("t", "t", fmt_fixed(2)), Col("p", "p", fmt_p, css=lambda r: "sig" if r["p"] < alpha else ""),
            Col("best_single_layer", "best single layer"), Col("best_single_mean", "its score", fmt_score),
            Col("t_vs_best_single", "t (weighted - single)", fmt_fixed(2)),
            Col("p_vs_best_single", "p (two-sided)", fmt_p)], id=f"weighted-{label}"))
    partition = read_table(ctx.layout.group_roi_table("variancepartitionsummary"))
    if partition is not None and len(partition):
        section.heading("Variance partitioning")
        section.add(Block("paragraph", text=(
            "R2 of each participant's ROI RDM explained uniquely by one group of model RDMs, or shared by "
            "several (inclusion-exclusion over the R2 of every union of groups); mean over participants.")))
        section.add(table_block(partition, [
            Col("roi", "ROI"), Col("component", "component"), Col("mean_r2", "mean R2", fmt_score),
            Col("sem", "SEM", fmt_score), Col("t", "t", fmt_fixed(2)),
            Col("p", "p", fmt_p, css=lambda r: "sig" if r["p"] < alpha else "")], id="variance-partitioning"))


def _has_combined(ctx: GroupContext) -> bool:
    return ctx.layout.group_roi_table("variancepartitionsummary").is_file() or any(
        ctx.layout.group_table(m.output_label, "weighted").is_file() for m in ctx.spec.models)


def build(layout: drv.OutputLayout, spec: AnalysisSpec | None = None, subjects: list[str] | None = None,
          run_id: str | None = None, excluded: dict[str, str] | None = None) -> Path:
    """Write ``group.html`` from the group outputs; returns its path."""
    log_dir = find_log_dir(layout.group_dir / "log", run_id)
    provenance = read_json(log_dir / "provenance.json") if log_dir else {}
    used_spec, spec_source = spec_from_log(log_dir, spec)
    subjects = [str(s) for s in (subjects or provenance.get("subjects") or [])]
    excluded = {str(k): str(v) for k, v in (excluded or provenance.get("excluded") or {}).items()}
    run_id = provenance.get("run_id") or (log_dir.name if log_dir else None) or run_id or "unknown"
    ctx = GroupContext(layout, used_spec, spec_source, str(run_id), subjects, excluded, provenance, log_dir,
                       FigureMaker(layout.group_figures_dir(), layout.root))
    if spec is not None and spec_source == "log" and spec_hash(spec) != spec_hash(used_spec):
        ctx.notes.append(f"The group outputs were made with spec {spec_hash(used_spec)} (shown here), not with the spec "
                         f"given now ({spec_hash(spec)}).")
    if ctx.spec.design == "naturalistic":
        return _build_naturalistic(ctx)
    sections = [
        guarded_section("summary", "Summary", lambda s: _summary(ctx, s)),
        guarded_section("participants", "Participants", lambda s: _participants(ctx, s)),
        guarded_section("rsa", "ROI RSA across participants", lambda s: _rsa(ctx, s)),
        guarded_section("comparisons", "Pairwise layer comparisons", lambda s: _comparisons(ctx, s)),
    ]
    if ctx.spec.analyses.cka.enabled or group_cka_summaries(ctx):
        sections.append(guarded_section("cka", "ROI CKA across participants", lambda s: group_cka_section(ctx, s)))
    if _has_combined(ctx):
        sections.append(guarded_section("combined", "Weighted RSA and variance partitioning",
                                        lambda s: _combined(ctx, s)))
    analyses = ctx.spec.analyses
    if analyses.decoding.enabled or group_decoding_summaries(ctx):
        sections.append(guarded_section("decoding", "Decoding and identification across participants",
                                        lambda s: group_decoding_section(ctx, s)))
    if analyses.probing.enabled or has_probing_outputs(layout, [m.output_label for m in ctx.spec.models],
                                                       layout.group_roi_table("summary", suffix="probing")):
        sections.append(guarded_section("probing", "Probing: layers and regions on one scale",
                                        lambda s: group_probing_section(ctx, s)))
    if analyses.drivers.enabled or layout.group_table(drivers_model_label(ctx.spec), "summary",
                                                      suffix="drivers").is_file():
        sections.append(guarded_section("drivers", "What drives each region across participants",
                                        lambda s: group_drivers_section(ctx, s)))
    has_maps = any(ctx.maps.values()) or any(
        layout.group_table(m.output_label, "summary", suffix="encoding").is_file() for m in ctx.spec.models)
    if has_maps:
        sections.append(guarded_section("maps", "Group searchlight and encoding", lambda s: _group_maps(ctx, s)))
    sections += [
        guarded_section("methods", "Methods", lambda s: _methods(ctx, s)),
        guarded_section("provenance", "Provenance", lambda s: provenance_section(
            s, layout, log_dir, provenance, ctx.spec, spec_source)),
    ]
    return _render(ctx, sections)


def _render(ctx: GroupContext, sections: list[Section]) -> Path:
    layout = ctx.layout
    design = " · naturalistic design" if ctx.spec.design == "naturalistic" else ""
    subtitle = [f"task {layout.task} · space {layout.space} · {len(ctx.subjects)} participants{design} · "
                f"run {ctx.run_id} · spec {spec_hash(ctx.spec)}"]
    if ctx.figures.failures:
        subtitle.append(f"{len(ctx.figures.failures)} figure(s) could not be drawn; see the notes in their sections.")
    return render_page(layout.group_report, "bids_dnn group report", subtitle, sections, ctx.run_id,
                       str(layout.group_figures_dir().relative_to(layout.root)))


def _build_naturalistic(ctx: GroupContext) -> Path:
    """The group report of a naturalistic design: only its own sections (the event-related analyses
    write no outputs there), with the group maps drawn like those of the encoding."""
    sections = [
        guarded_section("summary", "Summary", lambda s: group_naturalistic_summary(ctx, s)),
        guarded_section("participants", "Participants", lambda s: _participants(ctx, s)),
        guarded_section("naturalistic", "Time-series encoding across participants",
                        lambda s: group_naturalistic_section(ctx, s)),
    ]
    if any(ctx.maps.values()):
        sections.append(guarded_section("maps", "Whole-brain group maps", lambda s: _group_maps(ctx, s)))
    sections += [
        guarded_section("methods", "Methods", lambda s: group_naturalistic_methods(ctx, s)),
        guarded_section("provenance", "Provenance", lambda s: provenance_section(
            s, ctx.layout, ctx.log_dir, ctx.provenance, ctx.spec, ctx.spec_source)),
    ]
    return _render(ctx, sections)
