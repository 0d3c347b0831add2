"""The decoding and identification report sections: figure data, tables and missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from bids_dnn.io import derivatives as drv
from bids_dnn.report.assemble import fmt_p, fmt_score, guarded_section
from bids_dnn.report.decoding_sections import (
    draw_identification_profile,
    group_decoding_section,
    participant_decoding_section,
)
from tests.unit.report._analysis_outputs import (
    ALPHA,
    LAYERS,
    MODEL,
    ROIS,
    analysis_spec,
    blocks_of,
    group_context,
    group_decoding_summary,
    decoding_table,
    participant_context,
    table_css,
    table_rows,
    texts,
)


def _line(ax, label: str):
    """The data line of the error-bar plot labelled ``label``."""
    return next(c.lines[0] for c in ax.containers if c.get_label() == label)


def test_profile_plots_each_rois_accuracy_in_layer_order_with_stars_and_chance(rng: np.random.Generator) -> None:
    table = decoding_table(rng)
    table["p_pairwise"] = [0.01, 0.2, 0.04, 0.3, 0.001, 0.5]
    table = table.iloc[::-1].reset_index(drop=True)  # rows out of layer order
    table = table.drop(index=table.index[(table["roi"] == "late") & (table["layer"] == LAYERS[1])])  # a gap
    table["star"] = table["p_pairwise"] < ALPHA
    fig = Figure()
    draw_identification_profile(fig, table, LAYERS, "t", marked="star", marked_label="p")
    ax = fig.axes[0]
    for roi in ROIS:
        expected = [table.loc[(table["roi"] == roi) & (table["layer"] == layer), "pairwise_accuracy"].astype(float)
                    .tolist() or [np.nan] for layer in LAYERS]
        np.testing.assert_allclose(_line(ax, roi).get_ydata(), np.array(expected).ravel(), equal_nan=True)
    star_lines = [line for line in ax.get_lines() if line.get_marker() == "*"]
    starred = sorted(float(y) for line in star_lines for y in line.get_ydata())
    np.testing.assert_allclose(starred, sorted(table.loc[table["star"], "pairwise_accuracy"].astype(float)))
    chance = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), 0.5)
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS


def test_group_profile_error_bars_are_the_ci_and_triangles_mark_the_best_layer(rng: np.random.Generator) -> None:
    summary = group_decoding_summary(rng)
    fig = Figure()
    draw_identification_profile(fig, summary, LAYERS, "t", value="mean", lower="ci_low", upper="ci_high",
                                error="sem", marked="significant", best="best_layer_cv")
    ax = fig.axes[0]
    for roi, container in zip(ROIS, ax.containers):
        rows = summary[summary["roi"] == roi]
        segments = container.lines[2][0].get_segments()
        np.testing.assert_allclose([s[0][1] for s in segments], rows["ci_low"].to_numpy(float))
        np.testing.assert_allclose([s[1][1] for s in segments], rows["ci_high"].to_numpy(float))
    triangles = [c for c in ax.collections if isinstance(c, PathCollection)]  # error bars are LineCollections
    offsets = np.vstack([c.get_offsets() for c in triangles if len(c.get_offsets())])
    best = summary[summary["best_layer_cv"]]
    assert len(offsets) == len(best)
    np.testing.assert_allclose(sorted(offsets[:, 1]), sorted(best["ci_high"].to_numpy(float) + 0.03))


def test_participant_section_table_figure_and_below_chance_note(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = drv.OutputLayout(tmp_path, "shapes", "MNI152NLin2009cAsym")
    table = decoding_table(rng)
    table["p_pairwise"] = [0.01, 0.2, 0.04, 0.3, 0.001, 0.5]
    drv.write_tsv(layout.decoding_table("01", MODEL), table)
    section = guarded_section("decoding", "Decoding", lambda s: participant_decoding_section(
        participant_context(layout, spec), s))

    assert not section.has_error
    assert [b.text for b in blocks_of(section, "heading")] == [f"Model {MODEL}"]
    figures = blocks_of(section, "figure")
    assert len(figures) == 1 and figures[0].src.startswith("data:image/png;base64,")
    assert (layout.figures_dir("01") / f"sub-01_model-{MODEL}_desc-decoding_profile.png").is_file()
    assert "its own test fold" in texts(section) and "conservative" in texts(section)
    (block,) = blocks_of(section, "table")
    rows, css = table_rows(block), table_css(block)
    assert len(rows) == len(table)
    for k, (_, expected) in enumerate(table.iterrows()):
        assert rows[k]["roi"] == expected["roi"] and rows[k]["layer"] == expected["layer"]
        assert rows[k]["pairwise_accuracy"] == fmt_score(expected["pairwise_accuracy"])
        assert rows[k]["p_pairwise"] == fmt_p(expected["p_pairwise"])
        assert (css[k]["p_pairwise"] == "sig") == (expected["p_pairwise"] < ALPHA)
        assert rows[k]["top1_accuracy"] == fmt_score(expected["top1_accuracy"])


def test_group_section_uses_the_spec_correction(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = drv.OutputLayout(tmp_path, "shapes", "MNI152NLin2009cAsym")
    summary = group_decoding_summary(rng)
    drv.write_tsv(layout.group_table(MODEL, "summary", suffix="decoding"), summary)
    section = guarded_section("decoding", "Decoding", lambda s: group_decoding_section(group_context(layout, spec), s))

    assert not section.has_error
    assert len(blocks_of(section, "figure")) == 1
    (block,) = blocks_of(section, "table")
    rows, css = table_rows(block), table_css(block)
    assert [r["p_corrected"] for r in rows] == [fmt_p(p) for p in summary["p_fdr"]]  # spec correction: fdr_bh
    assert [c["p_corrected"] == "sig" for c in css] == list(summary["significant"])
    assert [r["best_layer_cv"] for r in rows] == ["yes" if b else "no" for b in summary["best_layer_cv"]]


def test_missing_tables_give_a_note_not_an_error(tmp_path: Path) -> None:
    spec = analysis_spec()
    layout = drv.OutputLayout(tmp_path, "shapes", "MNI152NLin2009cAsym")
    for build, ctx in ((participant_decoding_section, participant_context(layout, spec)),
                       (group_decoding_section, group_context(layout, spec))):
        section = guarded_section("decoding", "Decoding", lambda s: build(ctx, s))
        assert not section.has_error
        assert [b.kind for b in section.blocks] == ["note"] and "not available" in section.blocks[0].text


def test_a_table_with_only_nan_rows_still_draws(tmp_path: Path, rng: np.random.Generator) -> None:
    """ROIs skipped for too few voxels have n/a rows: the figure and table must still come out."""
    spec = analysis_spec()
    layout = drv.OutputLayout(tmp_path, "shapes", "MNI152NLin2009cAsym")
    table = decoding_table(rng)
    for column in ("pairwise_accuracy", "top1_accuracy", "p_pairwise", "p_top1", "mean_unit_r", "median_unit_r"):
        table[column] = np.nan
    drv.write_tsv(layout.decoding_table("01", MODEL), table)
    section = guarded_section("decoding", "Decoding", lambda s: participant_decoding_section(
        participant_context(layout, spec), s))
    assert not section.has_error and len(blocks_of(section, "figure")) == 1
    assert {r["pairwise_accuracy"] for r in table_rows(blocks_of(section, "table")[0])} == {"n/a"}
