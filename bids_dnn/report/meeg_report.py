"""The reports of EEG / MEG analyses (``modality: eeg|meg``): ``OUT_DIR/sub-XX.html`` and
``OUT_DIR/group.html``.

Participant: summary and data quality (epochs kept per run, trials per stimulus, channels), RSA
time courses of every layer, brain RDMs at a few time points, temporal generalisation, encoding
time courses, methods, provenance. Group: RSA (and encoding) time courses with CI ribbons, the
noise-ceiling band and significant clusters shaded, peak / onset latencies across layers with
their CIs and the consecutive-layer comparisons, the temporal-generalisation matrix, methods,
provenance. Everything is read from the output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.report import figures as figs
from bids_dnn.report.assemble import (Block, Col, FigureMaker, Section, fmt_bool, fmt_fixed, fmt_int, fmt_p, fmt_text,
                                      guarded_section, render_page, table_block)
from bids_dnn.report.common import provenance_section
from bids_dnn.report.inputs import find_log_dir, read_json, read_table
from bids_dnn.spec import AnalysisSpec, sanitize_label

__all__ = ["MEEG_REFERENCES", "build_meeg_participant_report", "build_meeg_group_report"]

MEEG_REFERENCES = [
    "Cichy RM, Pantazis D, Oliva A (2014). Resolving human object recognition in space and time. Nat Neurosci 17:455-462.",
    "Cichy RM, Khosla A, Pantazis D, Torralba A, Oliva A (2016). Comparison of deep neural networks to "
    "spatio-temporal cortical dynamics of human visual object recognition. Sci Rep 6:27755.",
    "Guggenmos M, Sterzer P, Cichy RM (2018). Multivariate pattern analysis for MEG: a comparison of "
    "dissimilarity measures. NeuroImage 173:434-447.",
    "Maris E, Oostenveld R (2007). Nonparametric statistical testing of EEG- and MEG-data. J Neurosci Methods "
    "164:177-190.",
    "Miller J, Patterson T, Ulrich R (1998). Jackknife-based method for measuring LRP onset latency differences. "
    "Psychophysiology 35:99-115.",
    "Appelhoff S, et al. (2019). MNE-BIDS: organizing electrophysiological data into the BIDS format. JOSS 4:1896.",
]

_MEASURE_WORDS = {
    "correlation": "1 - Pearson r of the trial-averaged patterns",
    "euclidean_cv": "cross-validated squared Euclidean distance across folds of trials",
    "crossnobis": "cross-validated Mahalanobis (crossnobis) distance across folds of trials",
    "decoding": "pairwise decoding accuracy of shrinkage LDA cross-validated over trials (chance 0.5)",
}


def _methods(section: Section, spec: AnalysisSpec, group: bool) -> None:
    meeg, rsa, stats = spec.meeg, spec.analyses.rsa, spec.statistics
    filters = ", ".join(part for part in (f"high-pass {meeg.l_freq:g} Hz" if meeg.l_freq else "",
                                          f"low-pass {meeg.h_freq:g} Hz" if meeg.h_freq else "") if part) or "none"
    text = (f"Epochs from {meeg.tmin:g} to {meeg.tmax:g} s around every stimulus event were cut from the "
            f"{spec.modality.upper()} recordings (read with MNE-BIDS; filters: {filters}; baseline "
            f"{meeg.baseline if meeg.baseline else 'none'}; resampled to "
            f"{f'{meeg.resample_hz:g} Hz' if meeg.resample_hz else 'the recording rate'}; peak-to-peak rejection "
            f"{dict(meeg.reject) if meeg.reject else 'none'}). The brain RDM of every time point"
            f"{f' (windows of {meeg.window_ms:g} ms)' if meeg.window_ms else ''} is the "
            f"{_MEASURE_WORDS[meeg.rdm]}, after {meeg.noise_normalization} noise normalisation (Guggenmos et al. "
            f"2018; {meeg.folds} folds where cross-validated). Each layer's RDM ({spec.rdm.model}) was compared with "
            f"every time point's RDM ({rsa.comparison}; {rsa.permutations} stimulus-label permutations, the same "
            "for every time point, p corrected over time by the maximum over time points).")
    if group:
        correction = {"cluster": f"cluster-based sign-flip permutations (Maris & Oostenveld 2007; cluster-forming "
                                 f"p {meeg.cluster_p:g}, sum of t)",
                      "maxt": "max-t sign-flip permutations", "fdr": "Benjamini-Hochberg FDR"}[meeg.correction]
        text += (f" At the group level, every time point was tested against 0 ({stats.alternative}) with "
                 f"{correction} over time ({meeg.permutations} sign flips, all of them when fewer participants "
                 f"allow); CIs of the mean are {stats.ci:.0%} participant-bootstrap percentile intervals "
                 f"({stats.bootstrap} resamples). Peak and onset (half-peak) latencies of the group-mean time courses "
                 "have participant-bootstrap CIs (Cichy et al. 2014); consecutive layers are compared by a paired "
                 "bootstrap of the latency difference.")
    section.paragraph(text)
    section.heading("References")
    section.add(Block("list", items=list(MEEG_REFERENCES)))


def _time_axis(ax: Any) -> None:
    ax.axvline(0, color="0.5", lw=0.8, ls=":")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("time from stimulus onset (s)")


def _draw_subject_courses(fig: Any, table: pd.DataFrame, value: str, ylabel: str) -> None:
    ax = fig.add_subplot(111)
    layers = list(dict.fromkeys(table["layer"]))
    colours = figs.colors_for(layers)
    for layer in layers:
        rows = table[table["layer"] == layer]
        ax.plot(rows["time"], rows[value], color=colours[layer], label=layer, lw=1.4)
        if "p_maxtime" in rows:
            significant = rows[rows["p_maxtime"] < 0.05]
            ax.plot(significant["time"], significant[value], "o", color=colours[layer], ms=2.5)
    _time_axis(ax)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False, ncol=2)


def _participant_sections(layout: drv.OutputLayout, subject: str, spec: AnalysisSpec, figures: FigureMaker
                          ) -> list[Section]:
    def summary(section: Section) -> None:
        status = read_json(layout.status(subject))
        section.kv([("epochs", status.get("n_epochs")), ("channels", status.get("n_channels")),
                    ("time points", status.get("n_times")), ("brain RDM", _MEASURE_WORDS[spec.meeg.rdm])])
        quality = read_table(layout.epochs_quality(subject))
        if quality is not None:
            section.heading("Epochs per run")
            section.add(table_block(quality, [Col("run", "run", fmt_text), Col("n_events", "events", fmt_int),
                                              Col("n_kept", "kept", fmt_int), Col("n_rejected", "rejected", fmt_int),
                                              Col("n_out_of_range", "out of range", fmt_int),
                                              Col("n_channels", "channels", fmt_int),
                                              Col("bad_channels", "bad channels", fmt_text)], id="epochs-quality"))
            counts = read_json(drv.sidecar_path(layout.epochs_quality(subject))).get("TrialsPerStimulus") or {}
            if counts:
                values = np.array(list(counts.values()))
                section.paragraph(f"Kept epochs per stimulus: {values.min()} to {values.max()} "
                                  f"(median {np.median(values):g}) over {values.size} stimuli.")

    def rdms(section: Section) -> None:
        path = layout.timeresolved_rdms(subject, spec.meeg.rdm)
        with np.load(path) as saved:
            stack, times = saved["rdms"], saved["times"]
        picks = [int(np.argmin(np.abs(times - t))) for t in (0.0, 0.1, 0.2, 0.3) if times[0] <= t <= times[-1]]
        from bids_dnn.rsa import vector_to_square

        panels = [(f"{times[k] * 1000:.0f} ms", vector_to_square(stack[k])) for k in dict.fromkeys(picks)]

        def draw(fig: Any) -> None:
            for i, (title, square) in enumerate(panels):
                ax = fig.add_subplot(1, len(panels), i + 1)
                ax.imshow(square, cmap="viridis")
                ax.set_title(title, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
        section.add(figures.figure(f"sub-{subject}_rdmframes", draw, (2.2 * len(panels), 2.4),
                                   "brain RDMs at a few time points", f"Brain RDMs ({spec.meeg.rdm})."))

    def generalization(section: Section) -> None:
        path = layout.temporal_generalization(subject)
        if not path.is_file():
            section.note("not computed (meeg.temporal_generalization: false).")
            return
        with np.load(path) as saved:
            matrix, times = saved["matrix"], saved["times"]
        section.add(figures.figure(f"sub-{subject}_generalization", lambda fig: _draw_matrix(fig, matrix, times, None),
                                   (4.2, 3.6), "temporal generalisation of the brain RDMs",
                                   "Similarity of the brain RDMs at every pair of time points."))

    sections = [guarded_section("summary", "Summary and data quality", summary),
                guarded_section("rdms", "Brain RDMs over time", rdms),
                guarded_section("generalization", "Temporal generalisation", generalization)]
    for model in spec.models:
        label = model.output_label

        def course(section: Section, label: str = label) -> None:
            for analysis, value, ylabel in (("rsa", "score", f"RSA ({spec.analyses.rsa.comparison})"),
                                            ("encoding", "mean_r", "mean held-out r over channels")):
                table = read_table(layout.timecourse_table(subject, label, analysis))
                if table is None or table.empty:
                    continue
                section.add(figures.figure(f"sub-{subject}_model-{sanitize_label(label)}_{analysis}",
                                           lambda fig, t=table, v=value, y=ylabel: _draw_subject_courses(fig, t, v, y),
                                           (6.5, 3.2), f"{analysis} time course of every layer of {label}",
                                           "Dots: p < 0.05 corrected over time (permutations)."
                                           if analysis == "rsa" else ""))
        sections.append(guarded_section(f"model-{sanitize_label(label)}", f"Time courses: {label}", course))
    sections.append(guarded_section("methods", "Methods", lambda s: _methods(s, spec, group=False)))
    return sections


def _draw_matrix(fig: Any, matrix: np.ndarray, times: np.ndarray, significant: np.ndarray | None) -> None:
    ax = fig.add_subplot(111)
    extent = (times[0], times[-1], times[-1], times[0])
    image = ax.imshow(matrix, extent=extent, cmap="RdBu_r", vmin=-np.nanmax(np.abs(matrix)),
                      vmax=np.nanmax(np.abs(matrix)))
    if significant is not None and significant.any():
        ax.contour(times, times, significant.astype(float), levels=[0.5], colors="k", linewidths=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("time (s)")
    fig.colorbar(image, ax=ax, shrink=0.8)


def build_meeg_participant_report(layout: drv.OutputLayout, subject: str, spec: AnalysisSpec,
                                  run_id: str | None = None) -> Path:
    """Write ``OUT_DIR/sub-<subject>.html`` of an EEG / MEG participant."""
    figures = FigureMaker(layout.figures_dir(subject), layout.root)
    sections = _participant_sections(layout, subject, spec, figures)
    log_dir = find_log_dir(layout.subject_dir(subject) / "log", run_id)
    provenance = read_json(log_dir / "provenance.json") if log_dir else {}
    sections.append(guarded_section("provenance", "Provenance", lambda s: provenance_section(
        s, layout, log_dir, provenance, spec, "log" if log_dir else "argument")))
    return render_page(layout.participant_report(subject), f"sub-{subject}: {spec.modality.upper()} report",
                       [f"task {layout.task}"], sections, run_id or provenance.get("run_id", ""),
                       str(layout.figures_dir(subject).relative_to(layout.root)))


def _draw_group_courses(fig: Any, summary: pd.DataFrame, ylabel: str) -> None:
    ax = fig.add_subplot(111)
    layers = list(dict.fromkeys(summary["layer"]))
    colours = figs.colors_for(layers)
    first = summary[summary["layer"] == layers[0]]
    if first["noise_ceiling_lower"].notna().any():
        ax.fill_between(first["time"], first["noise_ceiling_lower"], first["noise_ceiling_upper"], color="0.85",
                        label="noise ceiling", lw=0)
    span = np.nanmax(np.abs(summary[["mean", "ci_high"]].to_numpy(dtype=float))) or 1.0
    for k, layer in enumerate(layers):
        rows = summary[summary["layer"] == layer]
        ax.plot(rows["time"], rows["mean"], color=colours[layer], label=layer, lw=1.5)
        ax.fill_between(rows["time"], rows["ci_low"], rows["ci_high"], color=colours[layer], alpha=0.18, lw=0)
        significant = rows["significant"].astype(bool).to_numpy()
        times = rows["time"].to_numpy()
        level = -span * (0.06 + 0.04 * k)
        ax.plot(np.where(significant, times, np.nan), np.full(times.size, level), color=colours[layer], lw=3,
                solid_capstyle="butt")
    _time_axis(ax)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False, ncol=2)


def _draw_latencies(fig: Any, latency: pd.DataFrame) -> None:
    ax = fig.add_subplot(111)
    for offset, (statistic, marker) in zip((-0.12, 0.12), (("peak", "o"), ("onset", "s"))):
        rows = latency[latency["statistic"] == statistic].reset_index(drop=True)
        y = np.arange(len(rows)) + offset
        ax.errorbar(rows["latency"], y, xerr=[rows["latency"] - rows["ci_low"], rows["ci_high"] - rows["latency"]],
                    fmt=marker, ms=4, capsize=2, label=statistic)
        ax.set_yticks(np.arange(len(rows)), rows["layer"])
    ax.invert_yaxis()
    ax.set_xlabel("latency (s)")
    ax.legend(fontsize=7, frameon=False)


def build_meeg_group_report(layout: drv.OutputLayout, spec: AnalysisSpec, subjects: list[str] | None = None,
                            run_id: str | None = None) -> Path:
    """Write ``OUT_DIR/group.html`` of an EEG / MEG analysis."""
    figures = FigureMaker(layout.group_figures_dir(), layout.root)
    log_dir = find_log_dir(layout.group_dir / "log", run_id)
    provenance = read_json(log_dir / "provenance.json") if log_dir else {}
    subjects = subjects or list(provenance.get("subjects") or [])
    sections = [guarded_section("summary", "Summary", lambda s: s.kv([
        ("participants", ", ".join(f"sub-{x}" for x in subjects)), ("brain RDM", _MEASURE_WORDS[spec.meeg.rdm]),
        ("correction over time", spec.meeg.correction), ("alpha", spec.statistics.alpha)]))]
    for model in spec.models:
        label = model.output_label

        def build(section: Section, label: str = label) -> None:
            for analysis, ylabel in (("rsa", f"RSA ({spec.analyses.rsa.comparison})"),
                                     ("encoding", "mean held-out r over channels")):
                summary = read_table(layout.group_table(label, analysis, suffix="timecourse"))
                if summary is None or summary.empty:
                    continue
                section.heading(f"{analysis.upper() if analysis == 'rsa' else 'Encoding'} time courses")
                section.add(figures.figure(f"group_model-{sanitize_label(label)}_{analysis}",
                                           lambda fig, s=summary, y=ylabel: _draw_group_courses(fig, s, y), (7.0, 3.6),
                                           f"group {analysis} time courses of {label}",
                                           "Lines: group mean; ribbons: participant-bootstrap CI; grey band: noise "
                                           "ceiling; bars below zero: time points in significant clusters "
                                           f"({spec.meeg.correction})."))
                clusters = read_table(layout.group_table(label, analysis, suffix="clusters"))
                if clusters is not None and not clusters.empty:
                    section.add(table_block(clusters, [Col("layer", "layer", fmt_text),
                                                       Col("cluster", "cluster", fmt_int),
                                                       Col("start", "start (s)", fmt_fixed(3)),
                                                       Col("stop", "stop (s)", fmt_fixed(3)),
                                                       Col("peak_time", "peak (s)", fmt_fixed(3)),
                                                       Col("statistic", "sum t", fmt_fixed(2)), Col("p", "p", fmt_p),
                                                       Col("significant", "significant", fmt_bool)],
                                            id=f"clusters-{sanitize_label(label)}-{analysis}"))
                latency = read_table(layout.group_table(label, analysis, suffix="latency"))
                if latency is not None and not latency.empty:
                    section.add(figures.figure(f"group_model-{sanitize_label(label)}_{analysis}_latency",
                                               lambda fig, t=latency: _draw_latencies(fig, t), (5.0, 0.5 + 0.35 * len(
                                                   latency) / 2), f"{analysis} latencies of the layers of {label}",
                                               "Peak and onset latencies with participant-bootstrap CIs."))
                comparisons = read_table(layout.group_table(label, analysis, suffix="latencycomparisons"))
                if comparisons is not None and not comparisons.empty:
                    section.add(table_block(comparisons, [Col("statistic", "latency", fmt_text),
                                                          Col("layer_a", "layer A", fmt_text),
                                                          Col("layer_b", "layer B", fmt_text),
                                                          Col("difference", "B - A (s)", fmt_fixed(3)),
                                                          Col("ci_low", "CI low", fmt_fixed(3)),
                                                          Col("ci_high", "CI high", fmt_fixed(3)),
                                                          Col("p", "p", fmt_p)],
                                            id=f"latency-{sanitize_label(label)}-{analysis}"))
        sections.append(guarded_section(f"model-{sanitize_label(label)}", f"Time courses: {label}", build))

    def generalization(section: Section) -> None:
        path = layout.group_roi_table("generalization", suffix="relmat").with_suffix(".npz")
        if not path.is_file():
            section.note("not computed (meeg.temporal_generalization: false, or fewer than 2 participants).")
            return
        with np.load(path) as saved:
            mean, p, times = saved["mean"], saved["p_corrected"], saved["times"]
        section.add(figures.figure("group_generalization",
                                   lambda fig: _draw_matrix(fig, mean, times, p < spec.statistics.alpha), (4.6, 3.8),
                                   "group temporal generalisation", "Mean over participants; contour: significant "
                                   f"({spec.meeg.correction})."))

    def partition(section: Section) -> None:
        summary = read_table(layout.group_roi_table("variancepartition", suffix="timecourse"))
        if summary is None or summary.empty:
            section.note("not computed (analyses.variance_partitioning.enabled: false).")
            return
        curves = summary.rename(columns={"component": "layer"}).assign(noise_ceiling_lower=np.nan,
                                                                       noise_ceiling_upper=np.nan)
        section.add(figures.figure("group_variancepartition", lambda fig: _draw_group_courses(
            fig, curves, "share of the brain RDM's variance"), (7.0, 3.6), "variance partitioning over time",
            "Unique and shared variance of the brain RDMs from the spec's groups of model RDMs; bars below zero: "
            f"significant time points ({spec.meeg.correction})."))

    sections += [guarded_section("variancepartition", "Variance partitioning over time", partition),
                 guarded_section("generalization", "Temporal generalisation", generalization),
                 guarded_section("methods", "Methods", lambda s: _methods(s, spec, group=True)),
                 guarded_section("provenance", "Provenance", lambda s: provenance_section(
                     s, layout, log_dir, provenance, spec, "log" if log_dir else "argument"))]
    return render_page(layout.group_report, f"Group {spec.modality.upper()} report", [f"task {layout.task}"],
                       sections, run_id or provenance.get("run_id", ""),
                       str(layout.group_figures_dir().relative_to(layout.root)))
