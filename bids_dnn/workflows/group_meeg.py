"""EEG and MEG (``modality: eeg|meg``) at the group level.

Per model and layer, the participants' RSA time courses (and encoding time courses) are tested
against 0 at every time point, corrected over time (``meeg.correction``: cluster-based sign-flip
permutations, Maris & Oostenveld 2007; max-t; or FDR), with the group mean's participant-bootstrap
CI; the noise ceiling of every time point comes from the participants' brain RDMs; peak and onset
latencies get bootstrap CIs, and consecutive layers' latencies are compared (does layer A peak
before layer B?). The participants' temporal-generalisation matrices are averaged and tested with
2-D clusters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.errors import AnalysisError
from bids_dnn.io import derivatives as drv
from bids_dnn.workflows.context import Context
from bids_dnn.workflows.group_scores import collect_subject_tables
from bids_dnn.workflows.meeg import (TIMECOURSE_ENCODING_COLUMNS, TIMECOURSE_PARTITION_COLUMNS,
                                    TIMECOURSE_RSA_COLUMNS)
from bids_dnn.workflows.tables import SUBJECT_COLUMN, column_sidecar

__all__ = ["GROUP_TIMECOURSE_COLUMNS", "CLUSTER_COLUMNS", "LATENCY_COLUMNS", "LATENCY_COMPARISON_COLUMNS",
           "MEEG_GROUP_SEED_STREAM", "time_corrected_p", "group_meeg"]

#: the SeedSequence word of the M/EEG group level's random steps
MEEG_GROUP_SEED_STREAM = 0xE6

GROUP_TIMECOURSE_COLUMNS = {
    "model": "Model label.", "layer": "Layer.", "time": "Time from the stimulus onset (s).",
    "n_subjects": "Participants with a value.", "mean": "Mean over participants.",
    "ci_low": "Lower participant-bootstrap percentile CI bound of the mean.",
    "ci_high": "Upper participant-bootstrap percentile CI bound of the mean.",
    "t": "One-sample t of the participants' values against 0.",
    "p_corrected": "p corrected over time points (meeg.correction; for clusters: the p of the cluster the time "
                   "point belongs to, 1 outside clusters).",
    "significant": "p_corrected < statistics.alpha.",
    "noise_ceiling_lower": "Lower noise ceiling of the brain RDMs at this time (RSA only; leave-one-participant-out).",
    "noise_ceiling_upper": "Upper noise ceiling at this time (RSA only).",
}
CLUSTER_COLUMNS = {
    "model": "Model label.", "layer": "Layer.", "cluster": "Cluster number (in time order).",
    "start": "First time point of the cluster (s).", "stop": "Last time point of the cluster (s).",
    "peak_time": "Time of the largest t in the cluster (s).",
    "statistic": "Sum of the t values of the cluster.", "p": "Cluster p (sign-flip permutations).",
    "significant": "p < statistics.alpha.",
}
LATENCY_COLUMNS = {
    "model": "Model label.", "layer": "Layer.", "statistic": "peak (time of the group mean's maximum) or onset "
    "(first time the group mean reaches half its peak).", "latency": "Latency of the group mean (s).",
    "ci_low": "Lower participant-bootstrap percentile CI bound (s).", "ci_high": "Upper CI bound (s).",
}
LATENCY_COMPARISON_COLUMNS = {
    "model": "Model label.", "statistic": "peak or onset.", "layer_a": "Earlier layer (spec order).",
    "layer_b": "Later layer.", "difference": "latency(layer_b) - latency(layer_a) of the group means (s); "
    "positive: layer_b later.", "ci_low": "Lower paired-bootstrap CI bound (s).", "ci_high": "Upper CI bound (s).",
    "p": "Two-sided paired-bootstrap p of a zero difference.",
}

#: statistics.alternative -> tail of the tests over time
TAILS = {"greater": "greater", "two-sided": "two-sided"}


def _tail(ctx: Context) -> str:
    return TAILS[ctx.spec.statistics.alternative]


def time_corrected_p(ctx: Context, values: np.ndarray, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """t values, corrected p per element and the clusters of ``values`` (n_subjects, *shape).

    Returns
    -------
    t : numpy.ndarray, shape (*shape)
    p_corrected : numpy.ndarray, shape (*shape)
    clusters : list of dict
        ``mask``, ``statistic`` and ``p`` of every cluster (``meeg.correction: cluster`` only).
    """
    from bids_dnn.stats import cluster_test_1samp, fdr_bh, max_t_1samp

    meeg = ctx.spec.meeg
    tail = _tail(ctx)
    seed = int(rng.integers(2**31))
    if meeg.correction == "cluster":
        result = cluster_test_1samp(values, p_threshold=meeg.cluster_p, tail=tail, n_permutations=meeg.permutations,
                                    seed=seed)
        p = np.ones(values.shape[1:])
        clusters = []
        for mask, statistic, p_value in zip(result.clusters, result.cluster_stats, result.p_values):
            mask = np.asarray(mask, dtype=bool)
            p[mask] = np.minimum(p[mask], p_value)
            clusters.append({"mask": mask, "statistic": float(statistic), "p": float(p_value)})
        return np.asarray(result.t_obs), p, clusters
    t, p_max = max_t_1samp(values, tail=tail, n_permutations=meeg.permutations, seed=seed)
    if meeg.correction == "maxt":
        return np.asarray(t), np.asarray(p_max), []
    from scipy import stats

    n = values.shape[0]
    dist = stats.t(df=n - 1)
    p_raw = dist.sf(t) if tail == "greater" else 2 * dist.sf(np.abs(t))
    return np.asarray(t), fdr_bh(np.asarray(p_raw).ravel()).reshape(np.shape(t)), []


def _stack(table: pd.DataFrame, subjects: list[str], layer: str, value: str) -> tuple[np.ndarray, np.ndarray]:
    """Participants x time of one layer's ``value`` (participants in order; times from the first)."""
    rows = table[table["layer"] == layer]
    wide = rows.pivot_table(index="subject", columns="time", values=value, aggfunc="first")
    wide = wide.reindex([s for s in subjects if s in wide.index])
    return wide.to_numpy(dtype=np.float64), wide.columns.to_numpy(dtype=np.float64)


def _noise_ceilings(ctx: Context, subjects: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Lower and upper noise ceiling of every time point from the participants' brain RDMs."""
    from bids_dnn.temporal import noise_ceiling_over_time

    if len(subjects) < 2:
        return None
    stacks, times = [], None
    for subject in subjects:
        with np.load(ctx.layout.timeresolved_rdms(subject, ctx.spec.meeg.rdm)) as saved:
            stacks.append(saved["rdms"])
            times = saved["times"]
    if len({s.shape for s in stacks}) != 1:
        raise AnalysisError("participants' brain RDMs have different time axes or stimulus sets",
                            "rerun the participant level with one spec for everyone")
    lower, upper = noise_ceiling_over_time(np.stack(stacks), measure=ctx.spec.analyses.rsa.comparison)
    return np.round(np.asarray(times), 6), np.asarray(lower), np.asarray(upper)


def _summarise(ctx: Context, table: pd.DataFrame, subjects: list[str], model: str, value: str,
               rng: np.random.Generator, ceiling: tuple[np.ndarray, np.ndarray, np.ndarray] | None
               ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Group time course and clusters of every layer; returns them and each layer's (values, times)."""
    from bids_dnn.stats import bootstrap_subjects

    stats_spec = ctx.spec.statistics
    rows, cluster_rows, curves = [], [], {}
    for layer in dict.fromkeys(table["layer"]):
        values, times = _stack(table, subjects, layer, value)
        values = values[np.isfinite(values).all(axis=1)]
        curves[layer] = (values, times)
        n = values.shape[0]
        mean = values.mean(axis=0) if n else np.full(times.size, np.nan)
        low = high = t = p = np.full(times.size, np.nan)
        clusters: list[dict[str, Any]] = []
        if n >= 2:
            if stats_spec.bootstrap:
                low, high, _ = bootstrap_subjects(values, stats_spec.bootstrap, rng, stats_spec.ci)
            t, p, clusters = time_corrected_p(ctx, values, rng)
        frame = pd.DataFrame({"model": model, "layer": layer, "time": times, "n_subjects": n, "mean": mean,
                              "ci_low": low, "ci_high": high, "t": t, "p_corrected": p,
                              "significant": np.asarray(p) < stats_spec.alpha,
                              "noise_ceiling_lower": np.nan, "noise_ceiling_upper": np.nan})
        if ceiling is not None and np.array_equal(ceiling[0], np.round(times, 6)):
            frame["noise_ceiling_lower"], frame["noise_ceiling_upper"] = ceiling[1], ceiling[2]
        rows.append(frame)
        for k, cluster in enumerate(sorted(clusters, key=lambda c: int(np.argmax(c["mask"])))):
            where = np.flatnonzero(cluster["mask"])
            peak = where[np.argmax(np.abs(t[where]))]
            cluster_rows.append({"model": model, "layer": layer, "cluster": k + 1, "start": times[where[0]],
                                 "stop": times[where[-1]], "peak_time": times[peak], "statistic": cluster["statistic"],
                                 "p": cluster["p"], "significant": cluster["p"] < stats_spec.alpha})
    summary = pd.concat(rows, ignore_index=True)[list(GROUP_TIMECOURSE_COLUMNS)] if rows else \
        pd.DataFrame(columns=list(GROUP_TIMECOURSE_COLUMNS))
    return summary, pd.DataFrame(cluster_rows, columns=list(CLUSTER_COLUMNS)), curves


def _latencies(ctx: Context, model: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Peak and onset latencies of every layer and the differences between consecutive layers."""
    from bids_dnn.temporal import compare_latencies, latency_ci

    stats_spec = ctx.spec.statistics
    n_boot = max(stats_spec.bootstrap, 100)
    window = (0.0, float(ctx.spec.meeg.tmax))  # latencies after the stimulus onset
    rows, comparisons = [], []
    layers = [layer for layer, (values, _) in curves.items() if values.shape[0] >= 2]
    for statistic in ("peak", "onset"):
        for layer in layers:
            values, times = curves[layer]
            estimate = latency_ci(values, times, statistic=statistic, n_resamples=n_boot, ci=stats_spec.ci,
                                  seed=int(rng.integers(2**31)), window=window)
            rows.append({"model": model, "layer": layer, "statistic": statistic, "latency": estimate.value,
                         "ci_low": estimate.ci_low, "ci_high": estimate.ci_high})
        for a, b in zip(layers, layers[1:]):
            (va, times), (vb, _) = curves[a], curves[b]
            if va.shape != vb.shape:
                continue
            difference, low, high, p = compare_latencies(va, vb, times, statistic=statistic, n_resamples=n_boot,
                                                         ci=stats_spec.ci, seed=int(rng.integers(2**31)),
                                                         window=window)
            comparisons.append({"model": model, "statistic": statistic, "layer_a": a, "layer_b": b,
                                "difference": difference, "ci_low": low, "ci_high": high, "p": p})
    return (pd.DataFrame(rows, columns=list(LATENCY_COLUMNS)),
            pd.DataFrame(comparisons, columns=list(LATENCY_COMPARISON_COLUMNS)))


def _group_generalization(ctx: Context, subjects: list[str], rng: np.random.Generator) -> Path | None:
    """Mean temporal-generalisation matrix with its 2-D cluster test."""
    matrices, times = [], None
    for subject in subjects:
        path = ctx.layout.temporal_generalization(subject)
        if not path.is_file():
            return None
        with np.load(path) as saved:
            matrices.append(saved["matrix"])
            times = saved["times"]
    if len(matrices) < 2 or len({m.shape for m in matrices}) != 1:
        return None
    values = np.stack(matrices)
    t, p, clusters = time_corrected_p(ctx, values, rng)
    path = ctx.layout.group_roi_table("generalization", suffix="relmat").with_suffix(".npz")
    drv.write_npz(path, mean=values.mean(axis=0), t=t, p_corrected=p, times=times)
    drv.write_json(drv.sidecar_path(path), {
        "Description": "Temporal generalisation of the brain RDMs across participants: mean[i, j] is the mean "
        "over participants of the similarity of the RDMs at times[i] and times[j]; t and p_corrected test it "
        "against 0 (meeg.correction).", "Subjects": subjects, "Correction": ctx.spec.meeg.correction,
        "NumberOfClusters": len(clusters), "Seed": ctx.spec.statistics.seed})
    return path


def _group_partition(ctx: Context, subjects: list[str], rng: np.random.Generator, common: dict[str, Any]
                     ) -> list[Path]:
    """Every variance component's group time course and clusters (tested against 0 over time)."""
    layout = ctx.layout
    table = collect_subject_tables(subjects, lambda s: layout.timecourse_table(s, None, "variancepartition"))
    paths = [layout.group_roi_table("variancepartitionsubjects", suffix="timecourse"),
             layout.group_roi_table("variancepartition", suffix="timecourse"),
             layout.group_roi_table("variancepartition", suffix="clusters")]
    drv.write_tsv(paths[0], table, column_sidecar({**TIMECOURSE_PARTITION_COLUMNS, **SUBJECT_COLUMN},
                                                  Description="Variance partitioning of all participants.",
                                                  Subjects=subjects))
    if table.empty:
        return paths[:1]
    summary, clusters, _ = _summarise(ctx, table.rename(columns={"component": "layer"}), subjects, "", "r2", rng,
                                      None)
    columns = {("component" if k == "layer" else k): v for k, v in GROUP_TIMECOURSE_COLUMNS.items()
               if k not in ("model", "noise_ceiling_lower", "noise_ceiling_upper")}
    columns["component"] = TIMECOURSE_PARTITION_COLUMNS["component"]
    summary = summary.rename(columns={"layer": "component"})[list(columns)]
    cluster_columns = {("component" if k == "layer" else k): v for k, v in CLUSTER_COLUMNS.items() if k != "model"}
    clusters = clusters.rename(columns={"layer": "component"})[list(cluster_columns)]
    drv.write_tsv(paths[1], summary, column_sidecar(columns, Description="Group time course of every variance "
                                                    "component.", **common))
    drv.write_tsv(paths[2], clusters, column_sidecar(cluster_columns, Description="Clusters of supra-threshold "
                                                     "time points of every variance component.", **common))
    return paths


def group_meeg(ctx: Context, subjects: list[str]) -> list[Path]:
    """Group tables of every model and the temporal generalisation; returns the paths written."""
    stats_spec, meeg = ctx.spec.statistics, ctx.spec.meeg
    rng = np.random.default_rng(np.random.SeedSequence([stats_spec.seed, MEEG_GROUP_SEED_STREAM]))
    layout = ctx.layout
    common = {"Subjects": subjects, "Seed": stats_spec.seed, "Alternative": stats_spec.alternative,
              "Correction": meeg.correction, "ClusterFormingP": meeg.cluster_p, "Permutations": meeg.permutations,
              "Alpha": stats_spec.alpha, "BootstrapResamples": stats_spec.bootstrap, "CI": stats_spec.ci}
    written: list[Path] = []
    ceiling = _noise_ceilings(ctx, subjects) if ctx.spec.analyses.rsa.enabled else None
    analyses = [("rsa", TIMECOURSE_RSA_COLUMNS, "score")] if ctx.spec.analyses.rsa.enabled else []
    if ctx.spec.analyses.encoding.enabled:
        analyses.append(("encoding", TIMECOURSE_ENCODING_COLUMNS, "mean_r"))
    for model_spec in ctx.spec.models:
        model = model_spec.output_label
        for analysis, columns, value in analyses:
            table = collect_subject_tables(subjects, lambda s, a=analysis: layout.timecourse_table(s, model, a))
            paths = {name: layout.group_table(model, analysis, suffix=name)
                     for name in ("timecourse", "clusters", "latency", "latencycomparisons")}
            paths["subjects"] = layout.group_table(model, analysis + "subjects", suffix="timecourse")
            drv.write_tsv(paths["subjects"], table, column_sidecar(
                {**columns, **SUBJECT_COLUMN}, Description=f"{analysis} time courses of all participants.",
                Subjects=subjects))
            written.append(paths["subjects"])
            if table.empty:
                continue
            summary, clusters, curves = _summarise(ctx, table, subjects, model, value, rng,
                                                   ceiling if analysis == "rsa" else None)
            drv.write_tsv(paths["timecourse"], summary, column_sidecar(
                GROUP_TIMECOURSE_COLUMNS, Description=f"Group {analysis} time course of every layer.", **common))
            drv.write_tsv(paths["clusters"], clusters, column_sidecar(
                CLUSTER_COLUMNS, Description="Clusters of supra-threshold time points.", **common))
            latency, comparisons = _latencies(ctx, model, curves, rng)
            drv.write_tsv(paths["latency"], latency, column_sidecar(
                LATENCY_COLUMNS, Description="Peak and onset latencies of the group-mean time courses.", **common))
            drv.write_tsv(paths["latencycomparisons"], comparisons, column_sidecar(
                LATENCY_COMPARISON_COLUMNS, Description="Latency differences between consecutive layers.",
                **common))
            written += [paths["timecourse"], paths["clusters"], paths["latency"], paths["latencycomparisons"]]
    if ctx.spec.analyses.variance_partitioning.enabled:
        written += _group_partition(ctx, subjects, rng, common)
    if meeg.temporal_generalization:
        path = _group_generalization(ctx, subjects, rng)
        if path is not None:
            written.append(path)
    return written
