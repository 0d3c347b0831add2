"""The "what drives a region" report sections: rankings, correlations, saliency scaling and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bids_dnn.io import derivatives as drv
from bids_dnn.report.assemble import guarded_section
from bids_dnn.report.drivers_sections import (
    draw_driver_scatter,
    draw_saliency_overlays,
    drivers_model_label,
    extreme_stimuli,
    group_drivers_section,
    participant_drivers_section,
    pearson_r,
    read_saliency,
    saliency_scale,
    stimulus_thumbnail,
)
from tests.unit.report._analysis_outputs import (
    MODEL,
    ROIS,
    analysis_spec,
    blocks_of,
    group_context,
    make_layout,
    participant_context,
    saliency_arrays,
    stim_ids,
    table_rows,
    texts,
    write_group_outputs,
    write_participant_outputs,
)


def test_extreme_stimuli_match_a_sort_with_ties_in_table_order(rng: np.random.Generator) -> None:
    values = rng.integers(0, 5, size=15).astype(float)  # many ties
    values[[2, 9]] = np.nan
    table = pd.DataFrame({"stim_id": [f"s{i}" for i in range(15)], "v": values})
    for n in (0, 3, 13, 20):
        top, bottom = extreme_stimuli(table, "v", n)
        finite = [(v, i) for i, v in enumerate(values) if np.isfinite(v)]
        expected_top = [i for _, i in sorted(finite, key=lambda t: (-t[0], t[1]))][:n]
        expected_bottom = [i for _, i in sorted(finite, key=lambda t: (t[0], t[1]))][:n]
        assert list(top.index) == expected_top and list(bottom.index) == expected_bottom


def test_pearson_r_equals_scipy_on_the_finite_pairs(rng: np.random.Generator) -> None:
    from scipy.stats import pearsonr

    x = rng.normal(size=40)
    y = 0.3 * x + rng.normal(size=40)
    x[3], y[7] = np.nan, np.inf
    keep = np.isfinite(x) & np.isfinite(y)
    assert pearson_r(x, y) == pytest.approx(pearsonr(x[keep], y[keep])[0], rel=1e-12)
    assert np.isnan(pearson_r([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]))  # constant side
    assert np.isnan(pearson_r([1.0], [2.0]))


def test_saliency_scale_divides_by_each_maps_percentile(rng: np.random.Generator) -> None:
    maps = rng.gamma(2.0, size=(3, 10, 12))
    maps[1] = 0.0  # a flat map stays zero
    maps[2, 0, 0] = np.nan
    scaled = saliency_scale(maps, 95.0)
    limit = np.percentile(maps[0], 95.0)
    np.testing.assert_allclose(scaled[0], np.clip(maps[0] / limit, 0, 1))
    np.testing.assert_array_equal(scaled[1], 0.0)
    limit = np.percentile(maps[2][np.isfinite(maps[2])], 95.0)
    expected = np.clip(np.nan_to_num(maps[2]) / limit, 0, 1)
    np.testing.assert_allclose(scaled[2], expected)
    assert scaled.min() >= 0 and scaled.max() <= 1 and (scaled[0] == 1).any()


def test_read_saliency_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    arrays = saliency_arrays(rng, k=3, methods=("smoothgrad",))
    path = drv.write_npz(tmp_path / "x_saliency.npz", **arrays)
    data = read_saliency(path)
    assert data["stim_ids"] == list(arrays["stim_ids"]) and data["methods"] == ["smoothgrad"]
    np.testing.assert_array_equal(data["display"], arrays["display"])
    np.testing.assert_allclose(data["maps"]["smoothgrad"], arrays["maps_smoothgrad"])
    np.testing.assert_allclose(data["predicted"], arrays["predicted"])
    assert data["layer"] == str(arrays["layer"]) and data["alpha"] == 100.0
    assert read_saliency(tmp_path / "absent.npz") is None


def test_saliency_overlay_opacity_follows_the_scaled_map(rng: np.random.Generator) -> None:
    arrays = saliency_arrays(rng, k=2)
    maps = {m: arrays[f"maps_{m}"] for m in ("vanilla", "smoothgrad")}
    fig = Figure()
    draw_saliency_overlays(fig, arrays["display"], maps, list(arrays["stim_ids"]), arrays["predicted"])
    assert len(fig.axes) == 2 * 3  # 2 stimuli x (image + 2 methods)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), arrays["display"][0])
    assert fig.axes[0].get_title().startswith(str(arrays["stim_ids"][0]))
    overlay = fig.axes[2 * 2 + 1].images[1].get_array()  # smoothgrad row, second stimulus
    np.testing.assert_allclose(overlay[..., 3], 0.85 * saliency_scale(maps["smoothgrad"])[1])


def test_scatter_labels_the_extremes_and_states_the_pooled_r(rng: np.random.Generator) -> None:
    measured, predicted = rng.normal(size=8), rng.normal(size=8)
    fig = Figure()
    draw_driver_scatter(fig, measured, predicted, stim_ids(), 2, "ROI x",
                        layer_scores={"a": 0.1, "b": 0.4}, chosen="b")
    ax, bars = fig.axes
    assert f"pooled r = {pearson_r(measured, predicted):.2f}" in ax.get_title()
    order = np.argsort(measured)
    expected = {stim_ids()[i] for i in [*order[:2], *order[-2:]]}
    assert {t.get_text() for t in ax.texts} == expected
    np.testing.assert_allclose([p.get_height() for p in bars.patches], [0.1, 0.4])


def test_thumbnail_of_a_missing_or_broken_file_is_none(tmp_path: Path) -> None:
    from PIL import Image

    assert stimulus_thumbnail(None) is None and stimulus_thumbnail(tmp_path / "absent.png") is None
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert stimulus_thumbnail(tmp_path / "broken.png") is None
    Image.new("RGB", (300, 150), (10, 20, 30)).save(tmp_path / "big.png")
    thumb = stimulus_thumbnail(tmp_path / "big.png", size=60)
    assert max(thumb.size) <= 60 and thumb.getpixel((0, 0)) == (10, 20, 30)


def test_participant_section(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    assert drivers_model_label(spec) == MODEL
    layout = make_layout(tmp_path)
    write_participant_outputs(layout, rng, saliency_rois=("early",))
    ctx = participant_context(layout, spec, rois={"early": 30, "late": 30, "tiny": 3})
    section = guarded_section("drivers", "Drivers", lambda s: participant_drivers_section(ctx, s))

    assert not section.has_error
    assert [b.text for b in blocks_of(section, "heading")] == [f"ROI {roi}" for roi in ROIS]
    names = sorted(Path(b.file).name for b in blocks_of(section, "figure"))
    expected = [f"sub-01_model-{MODEL}_label-{roi}_desc-drivers_{kind}.png" for roi in ROIS
                for kind in ("montage", "scatter")]
    assert names == sorted(expected + [f"sub-01_model-{MODEL}_label-early_desc-saliency.png"])
    text = texts(section)
    assert "Saliency maps of ROI late are not available" in text
    assert "Not ranked" in text and "tiny" in text
    assert "could not be found" not in text  # every stimulus file was found
    table = drv.read_tsv(layout.drivers_table("01", MODEL))
    for roi in ROIS:
        (block,) = [b for b in blocks_of(section, "table") if b.id == f"drivers-{roi}-table"]
        rows = table[table["roi"] == roi].reset_index(drop=True)
        top, bottom = extreme_stimuli(rows, "measured", 2)
        assert [r["stim_id"] for r in table_rows(block)] == [*top["stim_id"], *bottom["stim_id"]]


def test_missing_stimulus_files_become_grey_tiles_with_a_note(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = make_layout(tmp_path, with_images=False)
    write_participant_outputs(layout, rng, saliency_rois=())
    section = guarded_section("drivers", "Drivers", lambda s: participant_drivers_section(
        participant_context(layout, spec), s))
    assert not section.has_error
    assert "could not be found" in texts(section)
    assert len(blocks_of(section, "figure")) == 2 * len(ROIS)


def test_group_section(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = make_layout(tmp_path)
    write_group_outputs(layout, rng)
    section = guarded_section("drivers", "Drivers", lambda s: group_drivers_section(group_context(layout, spec), s))
    assert not section.has_error
    assert [b.text for b in blocks_of(section, "heading")] == [f"ROI {roi}" for roi in ROIS]
    assert len(blocks_of(section, "figure")) == 2 * len(ROIS)
    summary = drv.read_tsv(layout.group_table(MODEL, "summary", suffix="drivers"))
    (block,) = [b for b in blocks_of(section, "table") if b.id == "group-drivers-late-table"]
    rows = summary[summary["roi"] == "late"].reset_index(drop=True)
    top, bottom = extreme_stimuli(rows, "mean_z_measured", spec.analyses.drivers.n_top)
    assert [r["stim_id"] for r in table_rows(block)] == [*top["stim_id"], *bottom["stim_id"]]
    # the highest mean z is rank 1
    assert table_rows(block)[0]["rank_measured"] == "1"


def test_missing_tables_give_a_note_not_an_error(tmp_path: Path) -> None:
    spec = analysis_spec()
    layout = make_layout(tmp_path)
    for build, ctx in ((participant_drivers_section, participant_context(layout, spec)),
                       (group_drivers_section, group_context(layout, spec))):
        section = guarded_section("drivers", "Drivers", lambda s: build(ctx, s))
        assert not section.has_error
        assert [b.kind for b in section.blocks] == ["note"] and "not available" in section.blocks[0].text


def test_without_a_stimulus_table_the_rankings_still_show(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = make_layout(tmp_path)
    write_participant_outputs(layout, rng, saliency_rois=())
    write_group_outputs(layout, rng)
    layout.stimuli_table().unlink()
    for build, ctx in ((participant_drivers_section, participant_context(layout, spec)),
                       (group_drivers_section, group_context(layout, spec))):
        section = guarded_section("drivers", "Drivers", lambda s: build(ctx, s))
        assert not section.has_error
        assert "stimulus table is not available" in texts(section)
        assert len(blocks_of(section, "figure")) == 2 * len(ROIS)
