"""Group level: reads only participant derivatives, writes group tables and the group report.

Per ROI x model x layer: mean, SEM, one-sample t-test and Wilcoxon signed-rank test across
subjects, subject-bootstrap confidence intervals, FDR / Bonferroni across the family
(ROI x layer within a model), lower / upper noise ceilings, a leave-one-subject-out
cross-validated best layer, and pairwise layer comparisons.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bids_dnn.console import logger, open_log_file
from bids_dnn.errors import AnalysisError, InputMissingError, UsageError
from bids_dnn.io import derivatives as drv
from bids_dnn.io.input_dataset import describe_record, read_record
from bids_dnn.io.status import failure_reason, other_dataset
from bids_dnn.spec import spec_hash
from bids_dnn.workflows.context import Context, prepare
from bids_dnn.workflows.group_scores import rois_of_every_subject
from bids_dnn.workflows.options import RunOptions
from bids_dnn.workflows.provenance import write_provenance
from bids_dnn.workflows.tables import (BEST_LAYER_COLUMN, GROUP_DECISION_COLUMNS, GROUP_TEST_COLUMNS, RSA_COLUMNS,
                                      SUBJECT_COLUMN, add_group_decisions, column_sidecar, read_relmat)

SUMMARY_COLUMNS = {
    "roi": "Region of interest.", "model": "Model label.", "layer": "Layer name.",
    "comparison": "RDM comparison measure.", "n_subjects": "Subjects with a score.",
    "mean": "Mean score across subjects.", **GROUP_TEST_COLUMNS,
    "ci_low": "Lower bootstrap percentile CI bound of the mean (statistics.bootstrap_method in the JSON).",
    "ci_high": "Upper bootstrap percentile CI bound of the mean.",
    **GROUP_DECISION_COLUMNS,
    "noise_ceiling_lower": "Mean over subjects of each subject vs the pooled RDM of the others.",
    "noise_ceiling_upper": "Mean over subjects of each subject vs the pooled RDM of all.",
    **BEST_LAYER_COLUMN,
}


#: paired tests between two layers (:func:`bids_dnn.stats.group_tests.paired_tests` of score_a - score_b)
COMPARISON_COLUMNS = {
    "roi": "Region of interest.", "layer_a": "First layer of the pair.", "layer_b": "Second layer of the pair.",
    "mean_difference": "Mean over subjects of score(layer_a) - score(layer_b).",
    "n": "Subjects with both scores.", "mean": "Mean of the paired differences (equal to mean_difference).",
    "sem": "Standard error of the mean difference.", "t": "Paired t statistic.",
    "p_t": "Two-sided p-value of the paired t-test.", "wilcoxon_w": "Wilcoxon signed-rank statistic of the "
    "differences.", "p_wilcoxon": "Two-sided p-value of the Wilcoxon signed-rank test.",
}

WEIGHTED_SCORE_COLUMNS = {
    **SUBJECT_COLUMN, "roi": "Region of interest.", "model": "Model label.",
    "score": "Held-out comparison of the subject's brain RDM with the weighted model RDM (weights fitted "
             "without this subject's data, or on other stimuli).",
}

WEIGHT_COLUMNS = {
    "roi": "Region of interest.", "model": "Model label.", "fold": "Cross-validation fold (0-based).",
    "layer": "Layer (predictor RDM).", "weight": "Non-negative weight of the layer's RDM in this fold (weights of a "
                                                  "fold have unit norm).",
}

VARIANCE_PARTITION_COLUMNS = {
    **SUBJECT_COLUMN, "roi": "Region of interest.",
    "component": "unique:<group> (R2 only this group of model RDMs explains) or shared:<a>+<b>... (R2 shared by "
                 "these groups), see Formulas.",
    "r2": "Share of the variance of the subject's ROI RDM in this component.",
}

VARIANCE_PARTITION_SUMMARY_COLUMNS = {
    "roi": "Region of interest.", "component": "Component (as in the per-subject table).",
    "n_subjects": "Subjects with a value.", "mean_r2": "Mean over subjects of r2.",
    "sem": "Standard error of mean_r2.", "t": "One-sample t of r2 against 0.",
    "p": "p-value of the t-test (alternative in the JSON).",
}


def check_participants_complete(ctx: Context) -> list[str]:
    """Subjects with complete participant outputs; refuse when any selected one is missing,
    failed (the reasons of each, from its status file), was made from another input dataset
    than the folder records, or with another spec."""
    from bids_dnn.workflows.stages import changed_outputs, recorded_stages

    record = read_record(ctx.layout.root)
    missing, failed, foreign, stale, edited = [], [], [], [], []
    for subject in ctx.subjects:
        status_path = ctx.layout.status(subject)
        if not status_path.is_file():
            missing.append(subject)
            continue
        status = drv.read_json_object(status_path)
        if isinstance(status.get("failure"), dict):
            failed.append(f"sub-{subject} ({failure_reason(status['failure'])})")
        elif not status.get("complete"):
            missing.append(subject)
        elif other_dataset(status, record):
            foreign.append(subject)
        elif status.get("spec_hash") != spec_hash(ctx.spec):
            stale.append(subject)
        elif not ctx.options.reports_only:  # the results the group level reads (not the reports)
            changed = [rel for name, stage in recorded_stages(status).items() if name != "report"
                       for rel in changed_outputs(ctx.layout.root, stage)]
            edited += [f"sub-{subject}: {rel}" for rel in changed]
    if missing or failed:
        parts = [f"participant outputs are missing or incomplete for {', '.join('sub-' + s for s in missing)}"] \
            if missing else []
        if failed:
            parts.append(f"{len(failed)} participant(s) failed at the participant level: " + "; ".join(failed))
        hint = "run the participant level for them first (or select the finished ones with --participant-label)"
        if failed:
            hint = ("fix the failed participants' inputs and rerun the participant level for them (each reason is in "
                    f"sub-<label>/log/task-{ctx.task}_status.json), or leave them out with --participant-label")
            if missing:
                hint = "run the participant level for the missing ones; " + hint
        raise InputMissingError("; ".join(parts), hint)
    if foreign:
        raise UsageError(
            f"participant outputs of {', '.join('sub-' + s for s in foreign)} were computed from another input "
            f"dataset than the one this folder now holds ({describe_record(record)})",
            "rerun the participant level for them with this dataset, or leave them out with --participant-label")
    if stale:
        raise InputMissingError(
            f"participant outputs of {', '.join('sub-' + s for s in stale)} were made with a different spec",
            "rerun the participant level with this spec")
    if edited:
        raise AnalysisError(
            f"{len(edited)} participant output(s) changed since the participant level wrote them (edited, replaced "
            f"or deleted): {'; '.join(edited[:5])}{' ...' if len(edited) > 5 else ''}; the group level uses only "
            "the results as computed", "rerun the participant level for those participants: it recomputes them")
    return list(ctx.subjects)


def collect_rsa(ctx: Context, subjects: list[str], model: str) -> pd.DataFrame:
    tables = []
    for subject in subjects:
        path = ctx.layout.rsa_table(subject, model)
        if not path.is_file():
            raise InputMissingError(f"RSA table missing: {path}", "rerun the participant level")
        tables.append(drv.read_tsv(path))
    return pd.concat(tables, ignore_index=True)


def relmat_vector(path: Path) -> np.ndarray:
    """The upper-triangle vector of a written RDM."""
    from bids_dnn.rsa.rdm import square_to_vector

    return square_to_vector(read_relmat(path)[0])


def brain_rdm_vectors(ctx: Context, subjects: list[str], rois: list[str], measure: str) -> dict[str, np.ndarray]:
    """Every subject's brain RDM per ROI, read once: roi -> (n_subjects, n_pairs), rows in ``subjects`` order."""
    return {roi: np.stack([relmat_vector(ctx.layout.brain_rdm(s, roi, measure)) for s in subjects]) for roi in rois}


def model_rdm_vectors(ctx: Context, model: str, layers: list[str]) -> np.ndarray:
    """A model's layer RDMs, (n_layers, n_pairs) in ``layers`` order."""
    return np.stack([relmat_vector(ctx.layout.model_rdm(model, layer, ctx.spec.rdm.model)) for layer in layers])


def noise_ceilings(brain: dict[str, np.ndarray], comparison: str) -> dict[str, tuple[float, float]]:
    """Lower / upper noise ceiling per ROI from the subjects' brain RDMs (roi -> (n_subjects, n_pairs))."""
    from bids_dnn.rsa.inference import noise_ceiling

    out = {}
    for roi, data in brain.items():
        if data.shape[0] < 2:
            out[roi] = (np.nan, np.nan)
            continue
        lower, upper = noise_ceiling(data, measure=comparison)[:2]
        out[roi] = (float(lower), float(upper))
    return out


def summarise_model(ctx: Context, table: pd.DataFrame, ceilings: dict[str, tuple[float, float]],
                    rng: np.random.Generator, brain: dict[str, np.ndarray] | None = None,
                    model_rdms: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group summary and pairwise layer comparisons of one model's RSA table.

    ``brain`` (roi -> (n_subjects, n_pairs), rows in ``table``'s subject order) and ``model_rdms``
    ((n_layers, n_pairs), the table's layer order) are needed for ``statistics.bootstrap_method: dual``.
    """
    from bids_dnn.rsa.bootstrap import bootstrap_dual
    from bids_dnn.stats.bootstrap import bootstrap_subjects
    from bids_dnn.stats.group_tests import one_sample_tests, paired_tests

    stats_spec = ctx.spec.statistics
    rows, comparisons = [], []
    scores_by_roi: dict[str, np.ndarray] = {}  # roi -> (n_subjects, n_layers), the summary's row order
    for roi, roi_table in table.groupby("roi", sort=False):
        layers = list(dict.fromkeys(roi_table["layer"]))
        wide = roi_table.pivot(index="subject", columns="layer", values="score")
        wide = wide.loc[list(dict.fromkeys(roi_table["subject"])), layers]
        values = wide.to_numpy(dtype=np.float64)
        tests = one_sample_tests(values, alternative=stats_spec.alternative)
        if stats_spec.bootstrap and values.shape[0] >= 2 and stats_spec.bootstrap_method == "dual":
            result = bootstrap_dual(brain[roi], model_rdms, str(roi_table["comparison"].iloc[0]), stats_spec.bootstrap,
                                    rng=rng, ci=stats_spec.ci)
            low, high = np.asarray(result.ci_low, dtype=float), np.asarray(result.ci_high, dtype=float)
        elif stats_spec.bootstrap and values.shape[0] >= 2:
            low, high, _ = bootstrap_subjects(values, stats_spec.bootstrap, rng, ci=stats_spec.ci)
        else:
            low = high = np.full(values.shape[1], np.nan)
        scores_by_roi[roi] = values
        for j, layer in enumerate(layers):
            rows.append({"roi": roi, "model": roi_table["model"].iloc[0], "layer": layer,
                         "comparison": roi_table["comparison"].iloc[0], "n_subjects": int(tests["n"][j]),
                         "mean": tests["mean"][j], "sem": tests["sem"][j], "t": tests["t"][j],
                         "p_ttest": tests["p_t"][j], "wilcoxon_w": tests["wilcoxon_w"][j],
                         "p_wilcoxon": tests["p_wilcoxon"][j], "ci_low": low[j], "ci_high": high[j],
                         "noise_ceiling_lower": ceilings[roi][0], "noise_ceiling_upper": ceilings[roi][1]})
        for a in range(len(layers)):
            for b in range(a + 1, len(layers)):
                paired = paired_tests(values[:, a], values[:, b])
                comparisons.append({"roi": roi, "layer_a": layers[a], "layer_b": layers[b],
                                    "mean_difference": float(np.mean(values[:, a] - values[:, b])),
                                    **{k: float(np.asarray(v).ravel()[0]) for k, v in paired.items()}})
    summary = pd.DataFrame(rows)
    summary["p_group"] = summary["p_ttest"] if stats_spec.group_test == "ttest" else summary["p_wilcoxon"]
    add_group_decisions(summary, scores_by_roi, stats_spec.correction, stats_spec.alpha)
    ordered = [c for c in SUMMARY_COLUMNS if c in summary.columns]
    return summary[ordered], pd.DataFrame(comparisons)


WEIGHTED_COLUMNS = {
    "roi": "Region of interest.", "model": "Model label.", "cv": "Cross-validation of the weights.",
    "comparison": "RDM comparison measure of the held-out scores.", "n_subjects": "Subjects with a score.",
    "mean": "Mean held-out score of the weighted model RDM.", "sem": "Standard error of the mean.",
    "t": "One-sample t against 0.", "p": "p-value of the t-test (alternative in the JSON).",
    "best_single_layer": "The ROI's best layer, as in the summary table (best_layer_cv: leave-one-subject-out "
                         "choice among the layers significant after correction); n/a when no layer is "
                         "significant.",
    "best_single_mean": "Mean held-out score of that layer on its own (same folds, no fitting).",
    "t_vs_best_single": "Paired t of weighted minus best single layer (n/a without a best layer).",
    "p_vs_best_single": "Two-sided p of that paired t-test.",
}


def weighted_rsa(ctx: Context, subjects: list[str], model: str, table: pd.DataFrame, brain: dict[str, np.ndarray],
                 predictors: np.ndarray, rng: np.random.Generator,
                 summary_table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cross-validated weighted RSA of one model per ROI: summary, subject scores, fold weights.

    ``brain``: roi -> (n_subjects, n_pairs); ``predictors``: the layer RDMs (n_layers, n_pairs) in
    the table's layer order; ``summary_table``: the model's group summary, whose ``best_layer_cv``
    names the best single layer the weighted model is compared with (none: no comparison).
    """
    from bids_dnn.stats.group_tests import one_sample_tests, paired_tests
    from bids_dnn.rsa.weighted import crossvalidated_weighted_rsa

    spec = ctx.spec.analyses.weighted_rsa
    comparison = str(table["comparison"].iloc[0])
    layers = list(dict.fromkeys(table["layer"]))
    summary, scores, weights = [], [], []
    for roi in dict.fromkeys(table["roi"]):
        result = crossvalidated_weighted_rsa(predictors, brain[roi], cv=spec.cv, measure=comparison, rng=rng)
        tests = one_sample_tests(result.scores, ctx.spec.statistics.alternative)
        best_rows = summary_table[(summary_table["roi"] == roi) & summary_table["best_layer_cv"].astype(bool)]
        record = {"roi": roi, "model": model, "cv": spec.cv, "comparison": comparison,
                  "n_subjects": int(tests["n"][0]), "mean": float(tests["mean"][0]),
                  "sem": float(tests["sem"][0]), "t": float(tests["t"][0]), "p": float(tests["p_t"][0]),
                  "best_single_layer": None, "best_single_mean": np.nan, "t_vs_best_single": np.nan,
                  "p_vs_best_single": np.nan}
        if len(best_rows):
            best = layers.index(str(best_rows["layer"].iloc[0]))
            versus = paired_tests(result.scores, result.single_scores[:, best])
            record.update({"best_single_layer": layers[best],
                           "best_single_mean": float(np.nanmean(result.single_scores[:, best])),
                           "t_vs_best_single": float(versus["t"][0]), "p_vs_best_single": float(versus["p_t"][0])})
        summary.append(record)
        scores += [{"subject": s, "roi": roi, "model": model, "score": float(v)} for s, v in zip(subjects, result.scores)]
        weights += [{"roi": roi, "model": model, "fold": f, "layer": layer, "weight": float(result.weights[f, k])}
                    for f in range(result.weights.shape[0]) for k, layer in enumerate(layers)]
    return pd.DataFrame(summary, columns=list(WEIGHTED_COLUMNS)), pd.DataFrame(scores), pd.DataFrame(weights)


def variance_partitioning(ctx: Context, subjects: list[str], rsa_tables: dict[str, pd.DataFrame],
                          brain: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Unique / shared variance of each subject's ROI RDMs from the spec's groups of model RDMs.

    Returns the per-subject components and their summary (mean, SEM, one-sample t) per ROI.
    """
    from bids_dnn.stats.group_tests import one_sample_tests
    from bids_dnn.rsa.weighted import rdm_variance_partitioning
    from bids_dnn.workflows.partition import partition_groups, partition_transform

    spec = ctx.spec.analyses.variance_partitioning
    measure = ctx.spec.rdm.model

    def rdm_of(group: str, model: str, layer: str) -> np.ndarray:
        path = ctx.layout.model_rdm(model, layer, measure)
        if not path.is_file():
            raise InputMissingError(f"analyses.variance_partitioning.groups.{group}: no model RDM for "
                                    f"'{model}:{layer}' ({path.name})", "check the layer name")
        return relmat_vector(path)

    groups = partition_groups(spec, lambda model: list(dict.fromkeys(rsa_tables[model]["layer"])), rdm_of)
    prepare = partition_transform(spec)
    rows = []
    for roi, data in brain.items():
        result = rdm_variance_partitioning(groups, prepare(data), method=spec.method)
        for component, values in result.components.items():
            rows += [{"subject": s, "roi": roi, "component": component, "r2": float(v)}
                     for s, v in zip(subjects, np.atleast_1d(values))]
    table = pd.DataFrame(rows)
    summary = []
    for (roi, component), part in table.groupby(["roi", "component"], sort=False):
        tests = one_sample_tests(part["r2"].to_numpy(), ctx.spec.statistics.alternative)
        summary.append({"roi": roi, "component": component, "n_subjects": int(tests["n"][0]),
                        "mean_r2": float(tests["mean"][0]), "sem": float(tests["sem"][0]),
                        "t": float(tests["t"][0]), "p": float(tests["p_t"][0])})
    return table, pd.DataFrame(summary)


def group_whole_brain(ctx: Context, subjects: list[str]) -> list[Path]:
    """Group searchlight / encoding maps and the encoding ROI summary, as the spec asks."""
    from bids_dnn.workflows.group_maps import ENCODING_SUMMARY_COLUMNS, encoding_summary, run_group_maps
    from bids_dnn.workflows.participant_maps import ENCODING_COLUMNS

    written = run_group_maps(ctx, subjects)
    if ctx.spec.analyses.encoding.enabled:
        stats_spec = ctx.spec.statistics
        for model_spec in ctx.spec.models:
            model = model_spec.output_label
            result = encoding_summary(ctx, subjects, model)
            if result is None:
                continue
            table, summary = result
            paths = [ctx.layout.group_table(model, suffix="encoding"),
                     ctx.layout.group_table(model, "summary", suffix="encoding")]
            drv.write_tsv(paths[0], table, column_sidecar({**ENCODING_COLUMNS, **SUBJECT_COLUMN},
                                                          Description="Encoding ROI scores of all subjects.",
                                                          Subjects=subjects))
            drv.write_tsv(paths[1], summary, column_sidecar(ENCODING_SUMMARY_COLUMNS, Subjects=subjects,
                                                            Alternative=stats_spec.alternative))
            written += paths
    return written


def run_group_level(options: RunOptions) -> None:
    """Entry point of ``bids_dnn BIDS_DIR OUT_DIR group``."""
    ctx = prepare(options)
    subjects = check_participants_complete(ctx)
    if options.reports_only:
        from bids_dnn.report import build_group_report

        build_group_report(ctx.layout, ctx.spec, subjects, ctx.run_id)
        return
    open_log_file(ctx.layout.group_log_dir(ctx.run_id))  # bids_dnn.log next to the provenance (closed by cli.main)
    drv.remove_stale_temporaries(ctx.layout.group_dir)
    stats_spec = ctx.spec.statistics
    rng = np.random.default_rng(np.random.SeedSequence([stats_spec.seed, 0x6770]))
    layout = ctx.layout
    written: list[Path] = []
    if ctx.spec.modality != "fmri":
        from bids_dnn.workflows.group_meeg import group_meeg

        _finish_group_level(ctx, subjects, group_meeg(ctx, subjects))
        return
    if ctx.spec.design == "naturalistic":
        from bids_dnn.workflows.group_naturalistic import group_naturalistic

        _finish_group_level(ctx, subjects, group_naturalistic(ctx, subjects))
        return
    rsa_tables: dict[str, pd.DataFrame] = {}
    brain: dict[str, np.ndarray] = {}  # roi -> (n_subjects, n_pairs): the same for every model, read once
    for model_spec in ctx.spec.models if ctx.spec.analyses.rsa.enabled else []:
        model = model_spec.output_label
        table = collect_rsa(ctx, subjects, model)
        full_table = table
        table = rois_of_every_subject(table, "score")
        rsa_tables[model] = table
        if not brain:
            brain = brain_rdm_vectors(ctx, subjects, list(dict.fromkeys(table["roi"])), str(table["brain_rdm"].iloc[0]))
        needs_model_rdms = stats_spec.bootstrap_method == "dual" or ctx.spec.analyses.weighted_rsa.enabled
        model_rdms = model_rdm_vectors(ctx, model, list(dict.fromkeys(table["layer"]))) if needs_model_rdms else None
        ceilings = noise_ceilings(brain, str(table["comparison"].iloc[0]))
        summary, comparisons = summarise_model(ctx, table, ceilings, rng, brain, model_rdms)
        sidecar_common = {"Subjects": subjects, "Seed": stats_spec.seed, "Alternative": stats_spec.alternative,
                          "GroupTest": stats_spec.group_test, "Correction": stats_spec.correction,
                          "Alpha": stats_spec.alpha, "BootstrapResamples": stats_spec.bootstrap, "CI": stats_spec.ci,
                          "BootstrapMethod": stats_spec.bootstrap_method}
        drv.write_tsv(layout.group_table(model), full_table, column_sidecar(
            {**RSA_COLUMNS, **SUBJECT_COLUMN}, Description="RSA scores of all subjects.", Subjects=subjects))
        drv.write_tsv(layout.group_table(model, "summary"), summary,
                      column_sidecar(SUMMARY_COLUMNS, **sidecar_common))
        drv.write_tsv(layout.group_table(model, "comparisons"), comparisons, column_sidecar(
            COMPARISON_COLUMNS, Description="Paired tests between layers within each ROI (two-sided).",
            **sidecar_common))
        written += [layout.group_table(model), layout.group_table(model, "summary"),
                    layout.group_table(model, "comparisons")]
        if ctx.spec.analyses.weighted_rsa.enabled and len(subjects) >= 2:
            w_summary, w_scores, w_weights = weighted_rsa(ctx, subjects, model, table, brain, model_rdms, rng,
                                                          summary)
            paths = [layout.group_table(model, "weighted"), layout.group_table(model, "weightedscores"),
                     layout.group_table(model, "weights")]
            drv.write_tsv(paths[0], w_summary, column_sidecar(WEIGHTED_COLUMNS, **sidecar_common))
            drv.write_tsv(paths[1], w_scores, column_sidecar(
                WEIGHTED_SCORE_COLUMNS, Description="Held-out score of the weighted model RDM per subject.",
                **sidecar_common))
            drv.write_tsv(paths[2], w_weights, column_sidecar(
                WEIGHT_COLUMNS, Description="Non-negative layer weights fitted in each fold (unit norm).",
                **sidecar_common))
            written += paths
        for roi, roi_summary in summary.groupby("roi", sort=False):
            best = roi_summary.loc[roi_summary["best_layer_cv"], "layer"]
            logger.info("%s / %s: best layer (cross-validated, among significant layers) %s; significant layers: "
                        "%d of %d", model, roi, best.iloc[0] if len(best) else "none",
                        int(roi_summary["significant"].sum()), len(roi_summary))
    if ctx.spec.analyses.variance_partitioning.enabled and rsa_tables:
        vp_table, vp_summary = variance_partitioning(ctx, subjects, rsa_tables, brain)
        vp = ctx.spec.analyses.variance_partitioning
        common = {"Groups": vp.groups, "Method": vp.method, "RankTransform": vp.rank_transform,
                  "Subjects": subjects, "Formulas": "unique:A = R2(all) - R2(all without A); shared regions by "
                  "inclusion-exclusion over the R2 of every union of groups (bids_dnn.rsa.weighted)"}
        paths = [layout.group_roi_table("variancepartition"), layout.group_roi_table("variancepartitionsummary")]
        drv.write_tsv(paths[0], vp_table, column_sidecar(VARIANCE_PARTITION_COLUMNS,
                                                         Description="R2 components per subject and ROI.", **common))
        drv.write_tsv(paths[1], vp_summary, column_sidecar(VARIANCE_PARTITION_SUMMARY_COLUMNS,
                                                           Description="Mean R2 components across subjects, "
                                                                       "one-sample t.", **common))
        written += paths
    if ctx.spec.analyses.cka.enabled:
        from bids_dnn.workflows.group_cka import group_cka

        written += group_cka(ctx, subjects)
    if ctx.spec.analyses.decoding.enabled:
        from bids_dnn.workflows.group_decoding import group_decoding

        written += group_decoding(ctx, subjects)
    if ctx.spec.analyses.probing.enabled and ctx.spec.analyses.probing.rois and ctx.spec.rois is not None:
        from bids_dnn.workflows.group_probing import group_probing

        written += group_probing(ctx, subjects)
    if ctx.spec.analyses.drivers.enabled:
        from bids_dnn.workflows.group_drivers import group_drivers

        written += group_drivers(ctx, subjects)
    written += group_whole_brain(ctx, subjects)
    _finish_group_level(ctx, subjects, written)


def _finish_group_level(ctx: Context, subjects: list[str], written: list[Path]) -> None:
    """Provenance and the group report."""
    layout = ctx.layout
    write_provenance(ctx, layout.group_log_dir(ctx.run_id), {"subjects": subjects,
                                                              "outputs": [str(p.relative_to(layout.root)) for p in written]})
    if ctx.spec.outputs.report:
        from bids_dnn.report import build_group_report

        try:
            build_group_report(layout, ctx.spec, subjects, ctx.run_id)
        except Exception as exc:  # noqa: BLE001 - a figure must not lose the results
            logger.warning("group report failed (%s); results are kept", exc)
