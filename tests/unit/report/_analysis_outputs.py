"""Small synthetic output folders for the decoding, probing and drivers report sections.

Every table is written with the pipeline's writer (``derivatives.write_tsv``) and read back by
the report code, so the tests exercise the same text round trip as a real run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_dnn.io import derivatives as drv
from bids_dnn.report.assemble import Block, FigureMaker, Section
from bids_dnn.spec import AnalysisSpec, parse_spec

TASK = "shapes"
SPACE = "MNI152NLin2009cAsym"
MODEL = "alexnet"
LAYERS = ["features.2", "features.5", "classifier.1"]
ROIS = ["early", "late"]
CATEGORIES = ["disc", "grating"]
N_STIMULI = 8
ALPHA = 0.05
#: group p-values of the summaries' rows (in turn): some significant after doubling (the "FDR"), some not
GROUP_P = (0.001, 0.1, 0.02, 0.3, 0.004, 0.06)


def analysis_spec(**analyses: Any) -> AnalysisSpec:
    """A spec with one model, decoding / probing / drivers enabled unless overridden."""
    sections = {"rsa": {"enabled": False}, "decoding": {"enabled": True, "permutations": 200},
                "probing": {"enabled": True, "permutations": 100},
                "drivers": {"enabled": True, "n_top": 2, "saliency": {"n_samples": 8, "noise_level": 0.2,
                                                                       "n_stimuli": 2}}}
    sections.update(analyses)
    return parse_spec({"models": [{"name": "alexnet", "weights": "random", "layers": LAYERS}],
                       "rois": {"atlas": "atlas.nii.gz"}, "analyses": sections, "statistics": {"alpha": ALPHA}})


def stim_ids() -> list[str]:
    return [f"{CATEGORIES[i % 2]}{i:02d}" for i in range(N_STIMULI)]


def make_layout(tmp_path: Path, with_images: bool = True) -> drv.OutputLayout:
    """An output folder with the stimulus table and (``with_images``) the stimulus PNGs in ``../raw``."""
    from PIL import Image

    root = tmp_path / "out"
    root.mkdir(parents=True)
    layout = drv.OutputLayout(root, TASK, SPACE)
    raw = tmp_path / "raw" / "stimuli"
    raw.mkdir(parents=True)
    ids = stim_ids()
    if with_images:
        for k, stim_id in enumerate(ids):
            pixels = np.zeros((20, 30, 3), dtype=np.uint8)
            pixels[..., k % 3] = 40 + 25 * k
            Image.fromarray(pixels).save(raw / f"{stim_id}.png")
    drv.write_tsv(layout.stimuli_table(), pd.DataFrame({
        "stim_id": ids, "stim_file": [f"{s}.png" for s in ids], "category": [s[:-2] for s in ids],
        "source": ["stimuli"] * len(ids)}))
    layout.dataset_description.write_text(json.dumps({"Name": "x", "DatasetLinks": {"raw": "../raw"}}))
    return layout


def decoding_table(rng: np.random.Generator, subject: str = "01") -> pd.DataFrame:
    rows = []
    for roi in ROIS:
        for layer in LAYERS:
            rows.append({"subject": subject, "roi": roi, "model": MODEL, "layer": layer,
                         "pairwise_accuracy": rng.uniform(0.3, 0.95), "top1_accuracy": rng.uniform(0, 0.5),
                         "p_pairwise": rng.uniform(0.001, 0.2), "p_top1": rng.uniform(0.001, 0.9),
                         "chance_pairwise": 0.5, "chance_top1": 1 / N_STIMULI, "mean_unit_r": rng.uniform(0, 0.5),
                         "median_unit_r": rng.uniform(0, 0.5), "n_units_decoded": 100, "n_permutations": 200,
                         "cv": "kfold", "n_folds": 4, "n_voxels": 30, "n_units": 120, "n_stimuli": N_STIMULI})
    return pd.DataFrame(rows)


def group_decoding_summary(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for roi in ROIS:
        for k, layer in enumerate(LAYERS):
            mean = rng.uniform(0.3, 0.9)
            p = GROUP_P[len(rows) % len(GROUP_P)]
            rows.append({"roi": roi, "model": MODEL, "layer": layer, "n_subjects": 4, "mean": mean, "chance": 0.5,
                         "sem": 0.02, "t": rng.normal(3, 1), "p_ttest": p, "wilcoxon_w": 10.0, "p_wilcoxon": 0.06,
                         "ci_low": mean - 0.04, "ci_high": mean + 0.03, "p_group": p, "p_fdr": min(1.0, 2 * p),
                         "p_bonferroni": min(1.0, 6 * p), "significant": 2 * p < ALPHA, "best_layer_cv": k == 1,
                         "mean_top1_accuracy": 0.2, "mean_unit_r": 0.3})
    return pd.DataFrame(rows)


def layer_probes(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for layer in LAYERS:
        for annotation, kind, chance in (("category", "categorical", 0.5), ("size", "continuous", 0.0)):
            rows.append({"layer": layer, "annotation": annotation, "kind": kind, "score": rng.uniform(0.1, 0.9),
                         "chance": chance, "p_permutation": rng.uniform(0.001, 0.2),
                         "accuracy": rng.uniform(0.5, 1) if kind == "categorical" else np.nan,
                         "r2": np.nan if kind == "categorical" else rng.uniform(0, 0.5),
                         "n_classes": 2 if kind == "categorical" else np.nan, "n_stimuli": N_STIMULI,
                         "n_permutations": 100, "cv": "kfold", "n_folds": 4, "n_predictors": 120})
    return pd.DataFrame(rows)


def roi_probes(rng: np.random.Generator, subject: str = "01") -> pd.DataFrame:
    table = layer_probes(rng).iloc[:2].drop(columns="layer")
    rows = []
    for roi in ROIS:
        for _, row in table.iterrows():
            rows.append({"subject": subject, "roi": roi, **row.to_dict(), "score": rng.uniform(0.1, 0.9),
                         "p_permutation": rng.uniform(0.001, 0.2), "cv": "kfold", "n_predictors": 30})
    return pd.DataFrame(rows)


def group_probe_summary(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for roi in ROIS:
        for annotation, kind, chance in (("category", "categorical", 0.5), ("size", "continuous", 0.0)):
            mean, p = rng.uniform(0.1, 0.9), GROUP_P[len(rows) % len(GROUP_P)]
            rows.append({"roi": roi, "annotation": annotation, "kind": kind, "n_subjects": 4, "mean": mean,
                         "chance": chance, "sem": 0.03, "t": 2.0, "p_ttest": p, "wilcoxon_w": 9.0, "p_wilcoxon": 0.1,
                         "ci_low": mean - 0.05, "ci_high": mean + 0.05, "p_group": p, "p_fdr": min(1.0, 2 * p),
                         "p_bonferroni": min(1.0, 4 * p), "significant": 2 * p < ALPHA})
    return pd.DataFrame(rows)


def drivers_table(rng: np.random.Generator, subject: str = "01") -> pd.DataFrame:
    from scipy.stats import rankdata

    rows = []
    for roi, layer in zip(ROIS, LAYERS):
        measured = rng.normal(size=N_STIMULI)
        predicted = 0.5 * measured + rng.normal(scale=0.5, size=N_STIMULI)
        rank_m, rank_p = rankdata(-measured, method="min"), rankdata(-predicted, method="min")
        rows += [{"subject": subject, "roi": roi, "model": MODEL, "layer": layer, "stim_id": s, "measured": measured[i],
                  "predicted": predicted[i], "rank_measured": rank_m[i], "rank_predicted": rank_p[i], "layer_r": 0.4}
                 for i, s in enumerate(stim_ids())]
    return pd.DataFrame(rows)


def group_drivers_summary(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for roi in ROIS:
        z_m, z_p = rng.normal(size=N_STIMULI), rng.normal(size=N_STIMULI)
        for i, s in enumerate(stim_ids()):
            rows.append({"roi": roi, "stim_id": s, "n_subjects": 4, "mean_z_measured": z_m[i],
                         "mean_z_predicted": z_p[i], "rank_measured": 1 + int((z_m > z_m[i]).sum()),
                         "rank_predicted": 1 + int((z_p > z_p[i]).sum()), "layers": "features.2 (3), classifier.1 (1)"})
    return pd.DataFrame(rows)


def saliency_arrays(rng: np.random.Generator, k: int = 2, methods: tuple[str, ...] = ("vanilla", "smoothgrad")
                    ) -> dict[str, np.ndarray]:
    arrays = {"stim_ids": np.array(stim_ids()[:k]),
              "display": rng.integers(0, 256, size=(k, 16, 16, 3), dtype=np.uint8),
              "predicted": rng.normal(size=k), "layer": np.array(LAYERS[0]), "alpha": np.array(100.0),
              "methods": np.array(list(methods))}
    for method in methods:
        arrays[f"maps_{method}"] = rng.gamma(2.0, size=(k, 16, 16)).astype(np.float32)
    return arrays


def write_participant_outputs(layout: drv.OutputLayout, rng: np.random.Generator, subject: str = "01",
                              saliency_rois: tuple[str, ...] = ("early",)) -> None:
    """Decoding, ROI probe, drivers and saliency files of one participant, and the layer probes."""
    drv.write_tsv(layout.decoding_table(subject, MODEL), decoding_table(rng, subject))
    drv.write_tsv(layout.probing_table(subject), roi_probes(rng, subject))
    drv.write_tsv(layout.model_probing(MODEL), layer_probes(rng))
    table = drivers_table(rng, subject)
    scores = {roi: {layer: float(rng.uniform(0, 0.5)) for layer in LAYERS} for roi in ROIS}
    drv.write_tsv(layout.drivers_table(subject, MODEL), table, {"LayerScores": scores, "TopStimuli": 2})
    for roi in saliency_rois:
        drv.write_npz(layout.saliency(subject, MODEL, roi), **saliency_arrays(rng))


def write_group_outputs(layout: drv.OutputLayout, rng: np.random.Generator) -> None:
    drv.write_tsv(layout.group_table(MODEL, "summary", suffix="decoding"), group_decoding_summary(rng))
    drv.write_tsv(layout.group_roi_table("summary", suffix="probing"), group_probe_summary(rng))
    drv.write_tsv(layout.model_probing(MODEL), layer_probes(rng))
    drv.write_tsv(layout.group_table(MODEL, "summary", suffix="drivers"), group_drivers_summary(rng))


def participant_context(layout: drv.OutputLayout, spec: AnalysisSpec, subject: str = "01",
                        rois: dict[str, int] | None = None) -> Any:
    from bids_dnn.report.participant_report import ParticipantContext

    status = {"rois": rois if rois is not None else {roi: 30 for roi in ROIS}}
    return ParticipantContext(layout, subject, spec, "argument", "run1", status, {}, None,
                              FigureMaker(layout.figures_dir(subject), layout.root))


def group_context(layout: drv.OutputLayout, spec: AnalysisSpec, subjects: list[str] | None = None) -> Any:
    from bids_dnn.report.group_report import GroupContext

    return GroupContext(layout, spec, "argument", "run1", subjects or ["01", "02", "03", "04"], {}, {}, None,
                        FigureMaker(layout.group_figures_dir(), layout.root))


def blocks_of(section: Section, kind: str) -> list[Block]:
    """The blocks of one kind, including those inside ``details`` blocks."""
    out = []
    for block in section.blocks:
        if block.kind == kind:
            out.append(block)
        out += [child for child in block.children if child.kind == kind]
    return out


def table_rows(block: Block) -> list[dict[str, str]]:
    """A table block's rows as {column key: cell text}."""
    return [{cell.key: cell.text for cell in row} for row in block.rows]


def table_css(block: Block) -> list[dict[str, str]]:
    return [{cell.key: cell.css for cell in row} for row in block.rows]


def texts(section: Section) -> str:
    """Every heading, paragraph, note, warning and error text of a section, and figure captions."""
    return "\n".join(b.text or b.caption for b in section.blocks if b.kind != "table")
