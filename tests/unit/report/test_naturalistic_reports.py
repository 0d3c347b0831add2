"""The reports of a naturalistic design: participant and group, from a small synthetic output folder.

Sections present and free of errors, table numbers equal to the TSV values, the best-layer legend
naming the layers with brute-force voxel counts, per-run r of the top voxel equal to scipy's, the
note when no run repeats a stimulus, only naturalistic sections in the group report, and the
methods text with its references.
"""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr

from bids_dnn.io import derivatives as drv
from bids_dnn.report import build_group_report, build_naturalistic_participant_report, build_participant_report
from bids_dnn.report.assemble import Section
from bids_dnn.report.methods import REFERENCES, naturalistic_methods_blocks
from bids_dnn.report.naturalistic_sections import (
    best_layer_counts,
    draw_best_layer_map,
    participant_ceiling_section,
    run_correlations,
)
from tests.unit.report._analysis_outputs import blocks_of, texts
from tests.unit.report._naturalistic_outputs import (
    ALPHA,
    LAYERS,
    MODEL,
    ROIS,
    TASK,
    UNAVAILABLE,
    naturalistic_spec,
    write_group,
    write_participant,
)

NATIVE = "T1w"


def _layout(tmp_path: Path) -> drv.OutputLayout:
    root = tmp_path / "out"
    root.mkdir(parents=True, exist_ok=True)
    return drv.OutputLayout(root, TASK, NATIVE)


def _sections(html: str) -> dict[str, str]:
    out = {}
    for part in re.split(r'(?=<section[^>]*\bid=")', html):
        match = re.match(r'<section[^>]*\bid="([^"]+)"', part)
        if match:
            out[match[1]] = part
    return out


def _table(html: str, table_id: str) -> list[dict[str, str]]:
    """The rows of the data table ``table_id`` of a page, as {column key: cell text}."""
    match = re.search(rf'<table class="data" id="{re.escape(table_id)}">(.*?)</table>', html, re.DOTALL)
    assert match, table_id
    return [{key: unescape(text) for key, text in re.findall(r'<td data-col="([^"]+)"[^>]*>(?:<a[^>]*>)?([^<]*)', row)}
            for row in re.findall(r"<tr>(.*?)</tr>", match[1], re.DOTALL) if "<td" in row]


def _kv(html: str, table_id: str) -> dict[str, str]:
    match = re.search(rf'<table class="kv" id="{re.escape(table_id)}">(.*?)</table>', html, re.DOTALL)
    assert match, table_id
    return {unescape(k): unescape(v) for k, v in re.findall(r'<th scope="row">([^<]*)</th><td>([^<]*)</td>', match[1])}


def _context(layout: drv.OutputLayout, spec, subject: str = "01"):
    from bids_dnn.report.participant_report import participant_context

    return participant_context(layout, subject, spec=spec, run_id="run1")


def test_run_correlations_equal_scipy(rng: np.random.Generator) -> None:
    import pandas as pd

    measured = rng.normal(size=30)
    table = pd.DataFrame({"run": np.repeat([1, 2, 3], 10), "volume": np.tile(np.arange(10), 3),
                          "measured": measured, "predicted": measured * 0.3 + rng.normal(size=30)})
    table.loc[25:, "predicted"] = 1.0  # run 3 is constant over its last volumes only
    table.loc[[4], "measured"] = np.nan  # a missing value is left out of its run
    got = run_correlations(table)
    assert list(got) == [1, 2, 3]
    for run, rows in table.groupby("run"):
        rows = rows.dropna()
        assert got[run] == pytest.approx(pearsonr(rows["measured"], rows["predicted"]).statistic, abs=1e-12)
    constant = table.assign(predicted=0.5)
    assert all(np.isnan(v) for v in run_correlations(constant).values())


def test_best_layer_counts_equal_a_loop(rng: np.random.Generator) -> None:
    values = rng.integers(1, 4, size=(5, 6, 4)).astype(float)
    values[rng.random(values.shape) < 0.2] = np.nan
    expected = [sum(1 for v in values.ravel() if np.isfinite(v) and int(v) == k) for k in (1, 2, 3)]
    assert best_layer_counts(values, 3).tolist() == expected


def test_best_layer_legend_names_every_layer(tmp_path: Path, rng: np.random.Generator) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import nibabel as nib

    from bids_dnn.report.figures import colors_for

    layout = _layout(tmp_path)
    planted = write_participant(layout, rng)
    image = nib.load(str(layout.naturalistic_map("01", MODEL, None, "bestlayer")))
    counts = best_layer_counts(np.asarray(image.dataobj), len(LAYERS))
    expected = [int(np.sum(planted["best"] == k + 1)) for k in range(len(LAYERS))]
    assert counts.tolist() == expected and sum(expected) > 0
    fig = plt.figure(figsize=(8, 2.5))
    try:
        draw_best_layer_map(fig, image, None, LAYERS, counts)
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        colours = [matplotlib.colors.to_hex(h.get_facecolor()) for h in legend.legend_handles]
    finally:
        plt.close(fig)
    total = sum(expected)
    assert labels == [f"{layer} ({n} voxels, {n / total:.0%})" for layer, n in zip(LAYERS, expected)]
    assert colours == [matplotlib.colors.to_hex(c) for c in colors_for(LAYERS).values()]


def test_participant_report_sections_and_numbers(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = naturalistic_spec(banded=True)
    layout = _layout(tmp_path)
    planted = write_participant(layout, rng, banded=True)
    path = build_naturalistic_participant_report(layout, "sub-01", spec, "run1")
    assert path == layout.participant_report("01")
    html = path.read_text()
    sections = _sections(html)
    assert list(sections) == ["summary", "noiseceiling", f"naturalistic-{MODEL}", "methods", "provenance"]
    assert 'class="err"' not in html
    assert "src=\"http" not in html and "data:image/png;base64," in sections[f"naturalistic-{MODEL}"]
    model_html = sections[f"naturalistic-{MODEL}"]
    # best-layer map, one r figure (3 layers), one banded figure, r profile, R2 profile, top voxel
    assert model_html.count("<img") == 6
    assert sections["noiseceiling"].count("<img") == 1
    assert "Huth AG" in sections["methods"] and "Nunez-Elizalde AO" in sections["methods"]
    assert "Sahani M" in sections["methods"]

    rows = _table(model_html, f"naturalistic-table-{MODEL}")
    expected = planted["table"]
    assert len(rows) == len(expected)
    for row, (_, want) in zip(rows, expected.iterrows()):
        assert row["roi"] == want["roi"] and row["layer"] == want["layer"]
        assert row["mean_r"] == f"{want['mean_r']:.3f}" and row["mean_r2"] == f"{want['mean_r2']:.4f}"
        assert row["best_layer_share"] == f"{100 * want['best_layer_share']:.0f}%"
        assert row["mean_noise_ceiling"] == f"{want['mean_noise_ceiling']:.3f}"
        assert row["n_voxels"] == str(want["n_voxels"])
    facts = _kv(model_html, f"naturalistic-topvoxel-{MODEL}")
    per_run = {run: pearsonr(rows["measured"], rows["predicted"]).statistic
               for run, rows in planted["top"].groupby("run")}
    assert facts["r per run (from the file)"] == ", ".join(f"run {k}: {v:.3f}" for k, v in per_run.items())
    assert facts["held-out r (fit)"] == "0.432" and facts["layer"] == LAYERS[2]
    xyz = np.diag([2.0, 2.0, 2.0]) @ np.array([2, 2, 1]) + np.array([-6.0, -8.0, -4.0])
    assert facts["voxel"] == f"voxel (2, 2, 1) at ({xyz[0]:.0f}, {xyz[1]:.0f}, {xyz[2]:.0f}) mm"
    assert "modelled voxels (grey)" in model_html

    best = planted["table"].loc[planted["table"].groupby("roi", sort=False)["mean_r"].idxmax()]
    shown = _table(sections["summary"], "summary-best")
    assert [(r["roi"], r["layer"], r["mean_r"]) for r in shown] == [
        (row["roi"], row["layer"], f"{row['mean_r']:.3f}") for _, row in best.iterrows()]


def test_noise_ceiling_unavailable_note(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = naturalistic_spec()
    layout = _layout(tmp_path)
    write_participant(layout, rng, ceiling=False)
    ctx = _context(layout, spec)
    section = Section("x", "x")
    participant_ceiling_section(ctx, section)
    text = texts(section)
    assert "Noise ceiling unavailable" in text and UNAVAILABLE in text
    assert not blocks_of(section, "figure")
    html = build_participant_report(layout, "01", spec=spec).read_text()  # dispatched on spec.design
    sections = _sections(html)
    assert "noiseceiling" in sections and "Noise ceiling unavailable" in sections["noiseceiling"]
    assert "unavailable: no run repeats a stimulus" in sections["summary"]
    assert "No run repeats a stimulus, so no noise ceiling was computed." in sections["methods"]
    assert "Sahani M" not in sections["methods"] and "Nunez-Elizalde AO, Huth AG" not in sections["methods"]
    assert 'class="err"' not in html
    assert sections[f"naturalistic-{MODEL}"].count("<img") == 4  # no banded maps, no R2-vs-ceiling profile


def test_group_report_shows_only_naturalistic_sections(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = naturalistic_spec()
    layout = _layout(tmp_path)  # a native space: no template, no mean BOLD: maps without an underlay
    subjects = ["01", "02", "03"]
    for subject in subjects:
        write_participant(layout, rng, subject)
    planted = write_group(layout, rng)
    html = build_group_report(layout, spec, subjects, "grouprun").read_text()
    sections = _sections(html)
    assert list(sections) == ["summary", "participants", "naturalistic", "maps", "methods", "provenance"]
    assert 'class="err"' not in html
    assert "Group time-series encoding maps" in sections["maps"]
    assert "Sahani M" in sections["methods"] and "Nichols TE" in sections["methods"]

    summary = planted["summary"]
    rows = _table(sections["naturalistic"], f"group-naturalistic-table-{MODEL}")
    for row, (_, want) in zip(rows, summary.iterrows(), strict=True):
        assert (row["roi"], row["layer"]) == (want["roi"], want["layer"])
        assert row["mean"] == f"{want['mean']:.3f}" and row["ci_low"] == f"{want['ci_low']:.3f}"
        assert row["ci_high"] == f"{want['ci_high']:.3f}" and row["t"] == f"{want['t']:.2f}"
        assert float(row["p_corrected"]) == pytest.approx(want["p_fdr"], rel=5e-3)
        assert row["significant"] == ("yes" if want["significant"] else "no")
        assert row["best_layer_cv"] == ("yes" if want["best_layer_cv"] else "no")
    key = _table(sections["summary"], "summary-best")
    assert [(r["roi"], r["best_layer"]) for r in key] == [(roi, LAYERS[2]) for roi in ROIS]
    # the maps table counts the voxels at p_FWE <= alpha, layer by layer in network order
    counts = re.findall(r'<td data-col="layer"[^>]*>([^<]+)</td>.*?<td data-col="n_pfwe">(\d+)</td>',
                        sections["maps"], re.DOTALL)
    assert [layer for layer, _ in counts] == LAYERS
    for layer, n in counts:
        assert int(n) == sum(1 for p in planted["pfwe"][layer] if p <= ALPHA)


def test_methods_cite_what_was_done() -> None:
    def run(spec, level: str, **facts):
        blocks = naturalistic_methods_blocks(spec, level, {"task": TASK, **facts})
        text = "\n".join(b.text for b in blocks if b.kind == "paragraph")
        (references,) = [b.items for b in blocks if b.kind == "references"]
        return text, references

    spec = naturalistic_spec()
    text, references = run(spec, "participant", n_runs=4, t_r=2.0, noise_ceiling=True)
    assert "frames sampled at 4 frames per second" in text and "Lanczos interpolation with 3 lobes" in text
    assert "FIR delays of 1, 2, 3 TRs" in text and "z-scored per run" in text
    assert "runs presenting the same stimulus were kept in one fold" in text
    assert "5-fold inner cross-validation over the training runs" in text
    assert [REFERENCES[k] for k in ("huth2016", "nilearn", "himalaya", "sahani2003")] == references
    seen = []
    for group in re.findall(r"\[(\d+(?:, \d+)*)\]", text):
        seen += [int(n) for n in group.split(", ") if int(n) not in seen]
    assert seen == list(range(1, len(references) + 1))
    text, references = run(spec, "group", noise_ceiling=True, ceiling_kind="cc_max", has_banded=True,
                           n_subjects=3)
    assert REFERENCES["schoppe2016"] in references and REFERENCES["sahani2003"] not in references
    assert REFERENCES["nunez2019"] in references and "3 participants" in text and "Fisher-z" in text
    words = naturalistic_spec(word_column="word")
    text, _ = run(words, "participant", noise_ceiling=False)
    assert "one sample per word of the events column 'word'" in text and "impulse" in text
    assert "No run repeats a stimulus" in text
