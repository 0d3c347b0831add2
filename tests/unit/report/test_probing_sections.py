"""The probing report sections: layers and ROIs on one scale, tables, and missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bids_dnn.io import derivatives as drv
from bids_dnn.report.assemble import fmt_p, fmt_score, guarded_section
from bids_dnn.report.probing_sections import (
    draw_probe_profiles,
    group_probing_section,
    label_positions,
    layer_positions,
    participant_probing_section,
)
from tests.unit.report._analysis_outputs import (
    ALPHA,
    LAYERS,
    MODEL,
    analysis_spec,
    blocks_of,
    group_context,
    group_probe_summary,
    layer_probes,
    participant_context,
    roi_probes,
    table_css,
    table_rows,
    texts,
)


def _reference_label_positions(values: list[float], gap: float) -> list[float]:
    """Brute force: walk up from the lowest value, each label at least ``gap`` above the previous one."""
    order = sorted((v, i) for i, v in enumerate(values) if np.isfinite(v))
    out = [float("nan")] * len(values)
    previous = None
    for value, i in order:
        out[i] = value if previous is None else max(value, previous + gap)
        previous = out[i]
    return out


def test_label_positions_keep_a_gap_and_never_move_a_label_down(rng: np.random.Generator) -> None:
    np.testing.assert_allclose(label_positions([0.5, 0.49, 0.2, np.nan], 0.05), [0.54, 0.49, 0.2, np.nan])
    for _ in range(20):
        values = list(rng.uniform(0, 1, size=int(rng.integers(1, 9))))
        gap = float(rng.uniform(0, 0.2))
        got = label_positions(values, gap)
        np.testing.assert_allclose(got, _reference_label_positions(values, gap))
        assert np.all(got >= np.asarray(values) - 1e-12)
        assert np.all(np.diff(np.sort(got)) >= gap - 1e-12)


def _span(patch) -> tuple[float, float]:
    """(low, high) in data units of an ``axhspan`` (a Rectangle in recent matplotlib, a Polygon before)."""
    if hasattr(patch, "get_height"):
        return float(patch.get_y()), float(patch.get_y() + patch.get_height())
    ys = np.asarray(patch.get_xy())[:, 1]
    return float(ys.min()), float(ys.max())


def test_layer_positions() -> None:
    np.testing.assert_array_equal(layer_positions(4, True), [0, 1, 2, 3])
    np.testing.assert_allclose(layer_positions(5, False), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(layer_positions(1, False), [0.5])


def test_profiles_draw_layers_rois_and_chance_on_one_scale(rng: np.random.Generator) -> None:
    layers = layer_probes(rng)
    layers["p_permutation"] = [0.01, 0.3, 0.2, 0.02, 0.04, 0.5]  # both kinds: some filled, some open
    rois = roi_probes(rng)
    rois["p_permutation"] = [0.01, 0.3, 0.2, 0.001]
    rois["star"] = rois["p_permutation"] < ALPHA
    fig = Figure(figsize=(10, 4))
    draw_probe_profiles(fig, {MODEL: layers}, rois, ["category", "size"], ALPHA, roi_marked="star",
                        roi_marked_label="p")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["category (categorical)", "size (continuous)"]
    assert [ax.get_ylabel() for ax in axes] == ["balanced accuracy", "held-out r"]
    for ax, annotation in zip(axes, ["category", "size"]):
        rows = layers[layers["annotation"] == annotation]
        solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        np.testing.assert_allclose(solid[0].get_ydata(), rows["score"].to_numpy(float))
        assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
        # filled markers: the layers with p < alpha
        filled = [c for c in ax.collections if len(c.get_offsets()) and c.get_facecolors().size
                  and not np.allclose(c.get_facecolors()[0][:3], 1.0)]
        filled_y = sorted(y for c in filled for y in c.get_offsets()[:, 1])
        np.testing.assert_allclose(filled_y, sorted(rows.loc[rows["p_permutation"] < ALPHA, "score"].astype(float)))
        roi_rows = rois[rois["annotation"] == annotation]
        dash_dot = [line for line in ax.get_lines() if line.get_linestyle() == "-."]
        np.testing.assert_allclose(sorted(line.get_ydata()[0] for line in dash_dot),
                                   sorted(roi_rows["score"].to_numpy(float)))
        chance = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), roi_rows["chance"].iloc[0])
        labels = sorted(t.get_text() for t in ax.texts)
        assert labels == sorted(r + ("*" if s else "") for r, s in zip(roi_rows["roi"], roi_rows["star"]))


def test_participant_section(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = drv.OutputLayout(tmp_path, "shapes", "MNI152NLin2009cAsym")
    rois, layers = roi_probes(rng), layer_probes(rng)
    drv.write_tsv(layout.probing_table("01"), rois)
    drv.write_tsv(layout.model_probing(MODEL), layers)
    section = guarded_section("probing", "Probing", lambda s: participant_probing_section(
        participant_context(layout, spec), s))

    assert not section.has_error
    assert len(blocks_of(section, "figure")) == 1
    assert (layout.figures_dir("01") / "sub-01_desc-probing_profile.png").is_file()
    roi_block, layer_block = blocks_of(section, "table")
    assert roi_block.id == "probing-rois" and layer_block.id == f"probing-layers-{MODEL}"
    rows, css = table_rows(roi_block), table_css(roi_block)
    assert [(r["roi"], r["annotation"]) for r in rows] == list(zip(rois["roi"], rois["annotation"]))
    assert [r["score"] for r in rows] == [fmt_score(v) for v in rois["score"]]
    assert [r["p_permutation"] for r in rows] == [fmt_p(v) for v in rois["p_permutation"]]
    assert [c["p_permutation"] == "sig" for c in css] == list(rois["p_permutation"] < ALPHA)
    assert [r["r2"] for r in rows] == ["n/a" if np.isnan(v) else fmt_score(v) for v in rois["r2"]]
    assert len(table_rows(layer_block)) == len(layers)


def test_participant_section_with_layer_probes_only(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = drv.OutputLayout(tmp_path, "shapes", "MNI152NLin2009cAsym")
    drv.write_tsv(layout.model_probing(MODEL), layer_probes(rng))
    section = guarded_section("probing", "Probing", lambda s: participant_probing_section(
        participant_context(layout, spec), s))
    assert not section.has_error
    assert "ROI probes of this participant are not available" in texts(section)
    assert len(blocks_of(section, "figure")) == 1 and len(blocks_of(section, "table")) == 1


def test_group_section_bands_are_the_ci(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = drv.OutputLayout(tmp_path, "shapes", "MNI152NLin2009cAsym")
    summary = group_probe_summary(rng)
    drv.write_tsv(layout.group_roi_table("summary", suffix="probing"), summary)
    drv.write_tsv(layout.model_probing(MODEL), layer_probes(rng))
    section = guarded_section("probing", "Probing", lambda s: group_probing_section(group_context(layout, spec), s))
    assert not section.has_error and len(blocks_of(section, "figure")) == 1
    group_block = next(b for b in blocks_of(section, "table") if b.id == "group-probing")
    rows = table_rows(group_block)
    assert [r["p_corrected"] for r in rows] == [fmt_p(p) for p in summary["p_fdr"]]
    assert [r["significant"] for r in rows] == ["yes" if s else "no" for s in summary["significant"]]

    fig = Figure(figsize=(10, 4))
    draw_probe_profiles(fig, {}, summary, ["category", "size"], ALPHA, roi_value="mean", roi_low="ci_low",
                        roi_high="ci_high", roi_marked="significant")
    for ax, annotation in zip(fig.axes, ["category", "size"]):
        rows = summary[summary["annotation"] == annotation]
        spans = sorted(_span(p) for p in ax.patches)
        np.testing.assert_allclose(spans, sorted(zip(rows["ci_low"].astype(float), rows["ci_high"].astype(float))))


def test_missing_outputs_give_a_note_not_an_error(tmp_path: Path) -> None:
    spec = analysis_spec()
    layout = drv.OutputLayout(tmp_path, "shapes", "MNI152NLin2009cAsym")
    for build, ctx in ((participant_probing_section, participant_context(layout, spec)),
                       (group_probing_section, group_context(layout, spec))):
        section = guarded_section("probing", "Probing", lambda s: build(ctx, s))
        assert not section.has_error
        assert [b.kind for b in section.blocks] == ["note"] and "not available" in section.blocks[0].text
