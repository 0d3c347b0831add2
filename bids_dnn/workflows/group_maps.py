"""Group level, whole-brain analyses: group searchlight and encoding maps, encoding ROI summary.

Orchestration only; the statistics are in :mod:`bids_dnn.stats`.
Reads the participant maps (never recomputes them). Maps of correlation-type scores
(searchlight Spearman / Pearson, encoding r) are Fisher-z transformed before the one-sample
test. A voxel enters the family only where every subject has a finite value (a centre in every
subject's searchlight). Written per model x layer: ``stat-t`` (one-sample t), ``stat-p``
(parametric, uncorrected), ``stat-pfwe`` (sign-flip max-T family-wise error),
``stat-pfdr`` (Benjamini-Hochberg), and with ``statistics.map_tfce`` ``stat-tfce`` /
``stat-pfwetfce``; thresholds in the sidecars.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.console import logger, progress
from bids_dnn.errors import AnalysisError, InputMissingError

if TYPE_CHECKING:
    from bids_dnn.workflows.context import Context

#: participant map statistic per analysis, and whether it is a correlation (Fisher z before tests)
ENCODING_STAT = "r"

ENCODING_SUMMARY_COLUMNS = {
    "roi": "Region of interest.", "model": "Model label.", "layer": "Layer name.",
    "n_subjects": "Subjects with a score.",
    "mean_r2": "Mean over subjects of the ROI-mean held-out R2.",
    "sem_r2": "Standard error of mean_r2.",
    "t": "One-sample t of the ROI-mean R2 against 0.", "p": "p-value of the t-test (alternative in the JSON).",
    "p_fdr": "Benjamini-Hochberg adjusted p across ROI x layer of this model.",
    "mean_r": "Mean over subjects of the ROI-mean held-out r (per voxel: mean over folds of the r within each "
              "test fold).",
    "sem_r": "Standard error of mean_r.",
    "mean_noise_ceiling": "Mean over subjects of the ROI reliability (participant column noise_ceiling).",
    "mean_normalized_r2": "mean_r2 / mean_noise_ceiling (ratio of the group means); NaN (n/a) when "
                          "mean_noise_ceiling < 0.1, i.e. the ROI has no reproducible signal.",
    "normalized_r2_out_of_range": "True when mean_normalized_r2 is outside [0, 1] (not a fraction of the "
                                  "explainable variance).",
    "mean_alpha_at_grid_edge": "Mean over subjects of alpha_at_grid_edge: share of the ROI's ridge penalties at the "
                               "smallest or largest value of the grid.",
    "best_layer": "True for the ROI's best layer: the highest mean_r2 among the layers with p_fdr below "
                  "statistics.alpha; False for every layer of an ROI without such a layer.",
}


def _load_maps(paths: list[Path]) -> tuple[np.ndarray, Any]:
    """Stack 3D maps of all subjects -> (n_subjects, X, Y, Z); they must share one grid."""
    import nibabel as nib

    first = nib.load(str(paths[0]))
    arrays = []
    for path in paths:
        image = nib.load(str(path))
        if image.shape != first.shape or not np.allclose(image.affine, first.affine, atol=1e-4):
            raise AnalysisError(f"{path.name} is not on the grid of {paths[0].name}",
                                "group maps need every subject in the same space and resolution "
                                "(brain.space / brain.resolution)")
        arrays.append(np.asarray(image.dataobj, dtype=np.float64))
    return np.stack(arrays), first.affine


def group_map(ctx: "Context", analysis: str, model: str, layer: str, paths: list[Path], stat: str,
              correlation: bool, seed_offset: int) -> list[Path]:
    """One-sample group inference on the participants' maps of one model layer."""
    import nibabel as nib

    from bids_dnn.stats.fisher import fisher_z
    from bids_dnn.stats.maps import group_one_sample_map

    stats_spec = ctx.spec.statistics
    values, affine = _load_maps(paths)
    mask = np.isfinite(values).all(axis=0)
    if not mask.any():
        raise AnalysisError(f"{analysis} maps of {model} {layer} share no voxel with a finite value in all subjects")
    data = values[:, mask]
    if correlation:
        data = fisher_z(data)
    result = group_one_sample_map(data, n_permutations=stats_spec.map_permutations,
                                  alternative=stats_spec.alternative, seed=stats_spec.seed + seed_offset,
                                  alpha=stats_spec.alpha, tfce=stats_spec.map_tfce, mask=mask)
    maps: dict[str, np.ndarray] = {"t": result.t, "p": result.p, "pfdr": result.p_fdr}
    if stats_spec.map_permutations:
        maps["pfwe"] = result.p_fwe
    if result.tfce is not None:
        maps["tfce"] = result.tfce
        maps["pfwetfce"] = result.p_fwe_tfce
    common = {"Analysis": analysis, "Model": model, "Layer": layer, "ParticipantStatistic": stat,
              "FisherZ": correlation, "NumberOfSubjects": int(values.shape[0]), "NumberOfVoxels": int(mask.sum()),
              "Alternative": stats_spec.alternative, "Alpha": stats_spec.alpha,
              "Permutations": int(result.n_permutations), "Seed": stats_spec.seed + seed_offset,
              "ThresholdFWE_t": float(result.threshold_fwe) if np.isfinite(result.threshold_fwe) else None,
              "Sources": [str(p.relative_to(ctx.layout.root)) for p in paths]}
    descriptions = {"t": "one-sample t across subjects", "p": "parametric p, uncorrected",
                    "pfdr": "Benjamini-Hochberg adjusted p over the voxels with data in every subject",
                    "pfwe": "sign-flip permutation max-T family-wise-error corrected p",
                    "tfce": "threshold-free cluster enhancement of t",
                    "pfwetfce": "sign-flip permutation max-TFCE family-wise-error corrected p"}
    written = []
    for stat_name, vector in maps.items():
        volume = np.full(mask.shape, np.nan, dtype=np.float32)
        volume[mask] = vector
        path = ctx.layout.group_map(analysis, model, layer, stat_name)
        drv.write_nifti(path, nib.Nifti1Image(volume, affine), {**common, "Statistic": stat_name,
                                                                 "Description": descriptions[stat_name]})
        written.append(path)
    n_fwe = int((result.p_fwe <= stats_spec.alpha).sum()) if stats_spec.map_permutations else 0
    logger.info("%s %s / %s: %d of %d voxels FWE-significant at %.3g", analysis, model, layer, n_fwe,
                int(mask.sum()), stats_spec.alpha)
    return written


def _model_layers(ctx: "Context") -> list[tuple[str, str]]:
    """(model label, layer) pairs from the root model RDM sidecars written at participant level.

    Only RDMs of the current feature file count (their sidecar's ``ContentKey`` is that of the
    feature file, layer and measure): those of layers an earlier spec asked for stay in the
    folder (nothing recorded them for removal) but are not analysed. When no RDM matches (the
    feature file deleted to save space, RDMs of another bids_dnn version) every RDM of the
    measure counts.
    """
    from bids_dnn.features.store import stored_content_key
    from bids_dnn.workflows.stages import content_key

    pairs = []
    measure = ctx.spec.rdm.model
    for model_spec in ctx.spec.models:
        model = model_spec.output_label
        feature_key = stored_content_key(ctx.layout.features(model))
        found = []
        for sidecar in sorted(ctx.layout.model_dir(model).glob(f"*_stat-{measure}_relmat.json")):
            fields = drv.read_json_object(sidecar)
            if fields.get("Layer") is not None:
                found.append((fields["Layer"], fields.get("ContentKey") == content_key(
                    "model_rdm", feature_key, fields["Layer"], measure)))
        current = [layer for layer, matches in found if matches]
        # none identifiable (feature file deleted, RDMs of another bids_dnn version): all of them
        pairs += [(model, layer) for layer in (current or [layer for layer, _ in found])]
    return pairs


def _naturalistic_layers(ctx: "Context", subjects: list[str]) -> list[tuple[str, str]]:
    """(model label, layer) pairs of a naturalistic design, from the first participant's tables."""
    pairs = []
    for model_spec in ctx.spec.models:
        path = ctx.layout.naturalistic_table(subjects[0], model_spec.output_label)
        if not path.is_file():
            raise InputMissingError(f"time-series encoding table missing: {path}", "rerun the participant level")
        pairs += [(model_spec.output_label, layer) for layer in dict.fromkeys(drv.read_tsv(path)["layer"])]
    return pairs


def run_group_maps(ctx: "Context", subjects: list[str]) -> list[Path]:
    """Group maps for the searchlight and encoding analyses the spec enables."""
    analyses = ctx.spec.analyses
    jobs: list[tuple[str, str, str, str, bool]] = []
    layers = _model_layers(ctx) if ctx.spec.design == "events" else []
    if analyses.searchlight.enabled:
        stat = analyses.searchlight.comparison
        jobs += [("searchlight", m, lay, stat, stat in ("spearman", "pearson", "rho_a", "corr_cov"))
                 for m, lay in layers]
    if analyses.encoding.enabled:
        jobs += [("encoding", m, lay, ENCODING_STAT, True) for m, lay in layers]
    if ctx.spec.design == "naturalistic":
        jobs = [("naturalistic", m, lay, ENCODING_STAT, True) for m, lay in _naturalistic_layers(ctx, subjects)]
    written: list[Path] = []
    if jobs and len(subjects) < 2:
        logger.warning("group maps: skipped; a one-sample test across participants needs at least 2 (found %d)",
                       len(subjects))
        return written
    n_flips = min(2 ** len(subjects), ctx.spec.statistics.map_permutations)
    if jobs and n_flips and 1.0 / n_flips > ctx.spec.statistics.alpha:
        logger.warning("group maps: with %d subjects the smallest sign-flip p is %.3g > alpha %.3g, so no voxel can "
                       "be FWE-significant; more subjects are needed", len(subjects), 1.0 / n_flips,
                       ctx.spec.statistics.alpha)
    ledger = group_map_ledger(ctx)
    names = {f"{analysis}:{model}:{layer}" for analysis, model, layer, _, _ in jobs}
    dropped = [name for name in ledger.recorded if name not in names]
    _log_removed(ledger.remove_obsolete(dropped), f"of group maps the spec no longer asks for ({', '.join(dropped)})")
    skipped = 0
    with progress("group maps", len(jobs)) as advance:
        for offset, (analysis, model, layer, stat, correlation) in enumerate(jobs):
            builder = {"searchlight": ctx.layout.searchlight_map, "encoding": ctx.layout.encoding_map,
                       "naturalistic": ctx.layout.naturalistic_map}[analysis]
            paths = [builder(s, model, layer, stat) for s in subjects]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise InputMissingError(f"{analysis} map missing: {missing[0]}",
                                        "rerun the participant level with this spec")
            name, key = f"{analysis}:{model}:{layer}", group_map_key(ctx, paths, stat, correlation, offset + 1)
            if ledger.is_current(name, key):
                written += ledger.keep(name)
                skipped += 1
            else:
                outputs = group_map(ctx, analysis, model, layer, paths, stat, correlation, offset + 1)
                ledger.record(name, key, outputs + [drv.sidecar_path(p) for p in outputs])
                _log_removed(ledger.remove_obsolete([name]), f"that {name} no longer writes")
                drv.write_json(ctx.layout.group_status(), _group_status(ledger))
                written += outputs
            advance()
    if skipped:
        logger.info("group maps: %d of %d up to date, kept (--force recomputes)", skipped, len(jobs))
    drv.write_json(ctx.layout.group_status(), _group_status(ledger), if_changed=True)
    return written


def _group_status(ledger: Any) -> dict[str, Any]:
    """The group status file: the group maps done or kept, and those of an earlier run not yet redone."""
    pending = ledger.pending()
    return {"stages": dict(sorted(ledger.done.items())), **({"pending": pending} if pending else {})}


def _log_removed(removed: list[Path], why: str) -> None:
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        logger.info("group: removed %d output(s) %s: %s", len(removed), why, names)


def group_map_ledger(ctx: "Context") -> Any:
    """The group-map stages recorded by an earlier run (none with ``--force``), and every group
    map file an earlier run recorded (also with ``--force``; removed once no group map of the
    current spec writes it)."""
    from bids_dnn.workflows.stages import StageLedger, recorded_stages, removable_stages

    status = drv.read_json_object(ctx.layout.group_status())
    return StageLedger(ctx.layout.root, {} if ctx.options.force else recorded_stages(status),
                       recorded=removable_stages(status))


def group_map_key(ctx: "Context", paths: list[Path], stat: str, correlation: bool, seed_offset: int) -> str:
    """Content key of one group map: the participants' map files (name, size, modification time:
    a participant stage that is recomputed rewrites them), the statistics options and the seed."""
    from bids_dnn.workflows.stages import content_key, files_fingerprint

    stats = ctx.spec.statistics
    return content_key("group_map", files_fingerprint(paths, ctx.layout.root), stat, correlation,
                       stats.map_permutations, stats.map_tfce, stats.alternative, stats.alpha,
                       stats.seed + seed_offset)


def encoding_summary(ctx: "Context", subjects: list[str], model: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """All subjects' encoding ROI tables and their per ROI x layer summary (None without ROI tables).

    The group ceiling-normalised score is the ratio of the group means, ``mean_r2 /
    mean_noise_ceiling`` (:func:`bids_dnn.encoding.scores.ceiling_normalised`: NaN when the mean
    ceiling is below :data:`bids_dnn.encoding.scores.MIN_CEILING`), not the mean of the subjects'
    ratios, which one subject with a ceiling near 0 would dominate.
    """
    from bids_dnn.encoding import ceiling_normalised, outside_unit_interval
    from bids_dnn.stats.correction import fdr_bh
    from bids_dnn.stats.group_tests import one_sample_tests

    paths = [ctx.layout.encoding_table(s, model) for s in subjects]
    if not all(p.is_file() for p in paths):
        return None
    table = pd.concat([drv.read_tsv(p) for p in paths], ignore_index=True)
    rows = []
    for (roi, layer), group in table.groupby(["roi", "layer"], sort=False):
        r2 = group["mean_r2"].to_numpy(dtype=float)
        r = group["mean_r"].to_numpy(dtype=float)
        r = r[np.isfinite(r)]
        ceiling = float(group["noise_ceiling"].mean())
        edge = group["alpha_at_grid_edge"].to_numpy(dtype=float) if "alpha_at_grid_edge" in group else np.array([])
        tests = one_sample_tests(r2[:, None], ctx.spec.statistics.alternative)
        normalized = float(ceiling_normalised(float(tests["mean"][0]), ceiling))
        rows.append({"roi": roi, "model": model, "layer": layer, "n_subjects": int(tests["n"][0]),
                     "mean_r2": float(tests["mean"][0]), "sem_r2": float(tests["sem"][0]),
                     "t": float(tests["t"][0]), "p": float(tests["p_t"][0]),
                     "mean_r": float(r.mean()),
                     "sem_r": float(r.std(ddof=1) / np.sqrt(r.size)) if r.size > 1 else float("nan"),
                     "mean_noise_ceiling": ceiling,
                     "mean_normalized_r2": normalized,
                     "normalized_r2_out_of_range": bool(outside_unit_interval(normalized)),
                     "mean_alpha_at_grid_edge": float(np.nanmean(edge)) if np.isfinite(edge).any() else np.nan})
    summary = pd.DataFrame(rows)
    summary["p_fdr"] = fdr_bh(summary["p"].to_numpy())
    # the best layer: highest mean R2 among the layers significant after FDR (none when none is)
    significant_r2 = summary["mean_r2"].where(summary["p_fdr"] < ctx.spec.statistics.alpha)
    best_r2 = significant_r2.groupby(summary["roi"]).transform("max")
    summary["best_layer"] = best_r2.notna() & (significant_r2 == best_r2)
    return table, summary[list(ENCODING_SUMMARY_COLUMNS)]
