"""Self-contained HTML reports (jinja2 + matplotlib): one per participant and one for the group.

Figures are saved under ``sub-XX/figures/`` (``group/figures/``) and embedded in the HTML as
base64 PNG, so a report opens offline from anywhere. Numbers shown come from the TSV outputs.
A figure that fails to draw is logged into the report; the run's results are never lost.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bids_dnn import __version__
from bids_dnn import derivatives as drv
from bids_dnn.spec import AnalysisSpec, spec_hash, spec_to_dict

CITATIONS = {
    "rsa": "Kriegeskorte N, Mur M, Bandettini P (2008). Representational similarity analysis. Front Syst Neurosci 2:4.",
    "crossnobis": "Walther A et al. (2016). Reliability of dissimilarity measures for multi-voxel pattern analysis. "
                  "NeuroImage 137:188-200.",
    "noise_ceiling": "Nili H et al. (2014). A toolbox for representational similarity analysis. PLoS Comput Biol 10:e1003553.",
    "glm": "Abraham A et al. (2014). Machine learning for neuroimaging with scikit-learn (nilearn). Front Neuroinform 8:14.",
    "fdr": "Benjamini Y, Hochberg Y (1995). Controlling the false discovery rate. J R Stat Soc B 57:289-300.",
    "rsatoolbox": "Schütt HH et al. (2023). Statistical inference on representational geometries. eLife 12:e82566.",
}


@dataclass
class Section:
    id: str
    title: str
    html: str


def _env():
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("bids_dnn", "report/templates"), autoescape=select_autoescape(["html"]))


def _figure_html(path: Path, draw: Callable[[Any], None], figsize: tuple[float, float], alt: str) -> str:
    """Draw a figure, save it to ``path`` and return an embedded <img>; errors become a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        fig = plt.figure(figsize=figsize, dpi=100)
        draw(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
        plt.close(fig)
    except Exception as exc:  # noqa: BLE001 - a figure must never lose the run's results
        plt.close("all")
        return f'<p class="err">Figure "{html.escape(alt)}" could not be drawn: {html.escape(str(exc))}</p>'
    data = buffer.getvalue()
    drv.write_bytes(path, data)
    encoded = base64.b64encode(data).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}"></figure>'


def _table_html(table: pd.DataFrame, digits: int = 4) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:.{digits}g}", na_rep="n/a", border=0,
                         classes="data", escape=True)


def _render(path: Path, title: str, sections: list[Section], run_id: str) -> Path:
    page = _env().get_template("base.html").render(title=title, sections=sections, version=__version__, run_id=run_id)
    return drv.write_text(path, page)


def _rdm_axes(ax: Any, square: np.ndarray, title: str, categories: list[str]) -> None:
    image = ax.imshow(square, cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    bounds = [i for i in range(1, len(categories)) if categories[i] != categories[i - 1]]
    for b in bounds:
        ax.axhline(b - 0.5, color="w", lw=0.6)
        ax.axvline(b - 0.5, color="w", lw=0.6)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _methods(spec: AnalysisSpec, n_runs: str = "") -> str:
    glm = spec.brain.glm
    rsa = spec.analyses.rsa
    stats = spec.statistics
    models = ", ".join(f"{m.name} ({m.weights} weights, layers {m.layers})" for m in spec.models)
    text = (
        f"Stimulus responses were estimated per run with a first-level GLM in nilearn ({glm.method.upper()}, "
        f"{glm.hrf} HRF, {glm.drift_model} drift with high-pass {glm.high_pass_hz} Hz, {glm.noise_model} noise model, "
        f"confounds: {', '.join(glm.confounds) or 'none'}) [{CITATIONS['glm']}]. "
        f"Brain RDMs used the '{spec.rdm.brain}' measure (auto: cross-validated Mahalanobis distance with "
        f"{spec.brain.noise_estimator} noise precision when at least two runs exist [{CITATIONS['crossnobis']}]); "
        f"model RDMs used {spec.rdm.model} distance on activations of {models}. "
        f"RDMs were compared with {rsa.comparison} correlation of their upper triangles [{CITATIONS['rsa']}]; "
        f"participant-level p-values come from {rsa.permutations} stimulus-label permutations (rows and columns "
        f"together). At the group level scores were tested against zero ({stats.group_test}, alternative "
        f"'{stats.alternative}'), with {stats.bootstrap} subject-bootstrap resamples for {stats.ci:.0%} CIs and "
        f"{stats.correction} correction across ROI x layer [{CITATIONS['fdr']}]. Noise ceilings: each subject vs the "
        f"mean of the others (lower) and of all (upper) [{CITATIONS['noise_ceiling']}]. Seed {stats.seed}."
    )
    return f"<p>{html.escape(text)}</p>"


def _provenance(layout: drv.OutputLayout, log_dir: Path, spec: AnalysisSpec) -> str:
    parts = []
    for name in ("command.txt", "provenance.json"):
        path = log_dir / name
        if path.is_file():
            parts.append(f"<h3>{name}</h3><pre>{html.escape(path.read_text())}</pre>")
    parts.append(f"<h3>resolved spec (hash {spec_hash(spec)})</h3><pre>"
                 f"{html.escape(json.dumps(spec_to_dict(spec), indent=2))}</pre>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------
# Participant
# ---------------------------------------------------------------------------------------


def build_participant_report(layout: drv.OutputLayout, subject: str, stimuli: Any, summary: dict[str, Any],
                             spec: AnalysisSpec, run_id: str) -> Path:
    """Write ``sub-XX.html`` from the participant's outputs."""
    from bids_dnn.participant import read_relmat
    from bids_dnn.stimuli import load_image

    figures = layout.figures_dir(subject)
    categories = list(stimuli.categories)
    sections: list[Section] = []
    rows = [("Subject", f"sub-{subject}"), ("Task", layout.task), ("Space", layout.space),
            ("Runs", summary.get("n_runs")), ("Stimuli", stimuli.n_stimuli),
            ("Models", ", ".join(m.output_label for m in spec.models)),
            ("ROIs (voxels)", ", ".join(f"{r} ({n})" for r, n in summary.get("rois", {}).items())),
            ("Brain RDM", summary.get("brain_rdm")), ("Spec hash", spec_hash(spec)),
            ("bids_dnn", __version__), ("Run time (s)", summary.get("seconds"))]
    body = "<table>" + "".join(f'<tr><th class="l">{html.escape(str(k))}</th><td class="l">{html.escape(str(v))}</td></tr>'
                               for k, v in rows) + "</table>"
    for warning in summary.get("warnings", []):
        body += f'<p class="warn">{html.escape(warning)}</p>'
    sections.append(Section("summary", "Summary", body))

    def montage(fig: Any) -> None:
        n = stimuli.n_stimuli
        cols = min(12, n)
        n_rows = int(np.ceil(n / cols))
        for i, path in enumerate(stimuli.paths):
            ax = fig.add_subplot(n_rows, cols, i + 1)
            image = load_image(path)
            image.thumbnail((96, 96))
            ax.imshow(np.asarray(image))
            ax.set_title(f"{stimuli.stim_ids[i]}\n{categories[i]}", fontsize=6)
            ax.axis("off")

    sections.append(Section("stimuli", "Stimuli", _figure_html(
        figures / f"sub-{subject}_desc-stimuli_montage.png", montage,
        (12, 1.3 * int(np.ceil(stimuli.n_stimuli / 12)) + 0.5), "stimulus montage")))

    rois = list(summary.get("rois", {}))
    counts = drv.read_tsv(layout.roi_summary(subject)) if layout.roi_summary(subject).is_file() else pd.DataFrame()
    sections.append(Section("quality", "Data quality", _table_html(counts) if len(counts) else "<p>No ROIs.</p>"))

    if rois and summary.get("brain_rdm"):
        def brain_rdms(fig: Any) -> None:
            for i, roi in enumerate(rois):
                square, _ = read_relmat(layout.brain_rdm(subject, roi, summary["brain_rdm"]))
                _rdm_axes(fig.add_subplot(1, len(rois), i + 1), square, f"{roi} ({summary['brain_rdm']})", categories)

        html_rdms = _figure_html(figures / f"sub-{subject}_desc-brain_relmat.png", brain_rdms,
                                 (3.4 * len(rois), 3), "brain RDMs")
        for model_spec in spec.models:
            model = model_spec.output_label
            table_path = layout.rsa_table(subject, model)
            if not table_path.is_file():
                continue
            layers = list(dict.fromkeys(drv.read_tsv(table_path)["layer"]))

            def model_rdms(fig: Any, model: str = model, layers: list[str] = layers) -> None:
                for i, layer in enumerate(layers):
                    square, _ = read_relmat(layout.model_rdm(model, layer, spec.rdm.model))
                    _rdm_axes(fig.add_subplot(1, len(layers), i + 1), square, layer, categories)

            html_rdms += _figure_html(figures / f"sub-{subject}_model-{model}_relmat.png", model_rdms,
                                      (3.0 * len(layers), 2.8), f"model RDMs {model}")
        sections.append(Section("rdms", "RDMs", html_rdms))

    rsa_html = ""
    for model_spec in spec.models:
        model = model_spec.output_label
        table_path = layout.rsa_table(subject, model)
        if not table_path.is_file():
            continue
        table = drv.read_tsv(table_path)

        def profile(fig: Any, table: pd.DataFrame = table) -> None:
            ax = fig.add_subplot(1, 1, 1)
            layers = list(dict.fromkeys(table["layer"]))
            for roi, sub in table.groupby("roi", sort=False):
                scores = sub.set_index("layer").loc[layers]
                line = ax.plot(range(len(layers)), scores["score"], marker="o", label=roi)[0]
                significant = scores["p_permutation"].to_numpy() < spec.statistics.alpha
                ax.plot(np.flatnonzero(significant), scores["score"].to_numpy()[significant], "*", ms=12,
                        color=line.get_color())
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(f"{table['comparison'].iloc[0]} (brain vs model RDM)")
            ax.legend(fontsize=8)
            ax.set_title(f"{table['model'].iloc[0]}: * permutation p < {spec.statistics.alpha}", fontsize=9)

        rsa_html += _figure_html(figures / f"sub-{subject}_model-{model}_desc-rsa_profile.png", profile, (7, 3.6),
                                 f"RSA layer profile {model}")
        rsa_html += _table_html(table[["roi", "layer", "score", "p_permutation", "n_voxels"]])
    sections.append(Section("rsa", "ROI RSA", rsa_html or "<p>ROI RSA was not run.</p>"))
    sections.append(Section("methods", "Methods", _methods(spec)))
    sections.append(Section("provenance", "Provenance", _provenance(layout, layout.log_dir(subject, run_id), spec)))
    return _render(layout.participant_report(subject), f"bids_dnn report: sub-{subject}", sections, run_id)


def rebuild_participant_reports(layout: drv.OutputLayout, subjects: list[str], stimuli: Any, spec: AnalysisSpec,
                                run_id: str) -> None:
    """``--reports-only``: rebuild participant reports from the status files."""
    for subject in subjects:
        status_path = layout.status(subject)
        if not status_path.is_file():
            continue
        status = json.loads(status_path.read_text())
        build_participant_report(layout, subject, stimuli, status, spec, status.get("run_id", run_id))


# ---------------------------------------------------------------------------------------
# Group
# ---------------------------------------------------------------------------------------


def build_group_report(layout: drv.OutputLayout, spec: AnalysisSpec, subjects: list[str], run_id: str) -> Path:
    """Write ``group.html`` from the group tables."""
    figures = layout.group_figures_dir()
    sections = [Section("summary", "Summary", "<table>" + "".join(
        f'<tr><th class="l">{k}</th><td class="l">{html.escape(str(v))}</td></tr>' for k, v in [
            ("Task", layout.task), ("Subjects", ", ".join(f"sub-{s}" for s in subjects)),
            ("Models", ", ".join(m.output_label for m in spec.models)), ("Spec hash", spec_hash(spec)),
            ("Group test", f"{spec.statistics.group_test} ({spec.statistics.alternative})"),
            ("Correction", spec.statistics.correction)]) + "</table>")]
    for model_spec in spec.models:
        model = model_spec.output_label
        path = layout.group_table(model, "summary")
        if not path.is_file():
            continue
        summary = drv.read_tsv(path)
        rois = list(dict.fromkeys(summary["roi"]))

        def profiles(fig: Any, summary: pd.DataFrame = summary, rois: list[str] = rois) -> None:
            for i, roi in enumerate(rois):
                ax = fig.add_subplot(1, len(rois), i + 1)
                sub = summary[summary["roi"] == roi]
                x = np.arange(len(sub))
                lower, upper = sub["noise_ceiling_lower"].iloc[0], sub["noise_ceiling_upper"].iloc[0]
                if np.isfinite(lower) and np.isfinite(upper):
                    ax.axhspan(lower, upper, color="0.85", label="noise ceiling")
                ax.bar(x, sub["mean"], yerr=sub["sem"], color="#2b6cb0", alpha=0.8, capsize=2)
                for xi, (sig, best, top) in enumerate(zip(sub["significant"], sub["best_layer_cv"],
                                                          sub["mean"] + sub["sem"].fillna(0))):
                    label = ("*" if bool(sig) else "") + (" best" if bool(best) else "")
                    if label:
                        ax.text(xi, top, label, ha="center", va="bottom", fontsize=8)
                ax.axhline(0, color="k", lw=0.5)
                ax.set_xticks(x, sub["layer"], rotation=40, ha="right", fontsize=7)
                ax.set_title(roi, fontsize=10)
                if i == 0:
                    ax.set_ylabel(f"mean {sub['comparison'].iloc[0]} ± SEM")
                    ax.legend(fontsize=7, loc="upper left")

        body = _figure_html(figures / f"task-{layout.task}_model-{model}_desc-profile_rsa.png", profiles,
                            (3.6 * len(rois), 3.4), f"group layer profiles {model}")
        body += (f"<p>* significant after {spec.statistics.correction} (alpha {spec.statistics.alpha}); "
                 "'best' = layer chosen by leave-one-subject-out cross-validation; grey band = noise ceiling.</p>")
        body += _table_html(summary)
        comp_path = layout.group_table(model, "comparisons")
        if comp_path.is_file():
            body += "<h3>Pairwise layer comparisons</h3>" + _table_html(drv.read_tsv(comp_path))
        sections.append(Section(f"model-{model}", f"Model {model}", body))
    sections.append(Section("methods", "Methods", _methods(spec)))
    sections.append(Section("provenance", "Provenance", _provenance(layout, layout.group_log_dir(run_id), spec)))
    return _render(layout.group_report, "bids_dnn group report", sections, run_id)
