"""Text and sound stimuli in the reports: the participant report's stimulus montage (texts written
into their tiles, every text in full in a table; sounds as waveform + spectrogram thumbnails with
their duration and sampling rate) and the drivers montages, built from tiny synthetic output folders."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bids_dnn.io import derivatives as drv
from bids_dnn.report import build_participant_report
from bids_dnn.report import figures as figs
from bids_dnn.report.assemble import guarded_section
from bids_dnn.report.drivers_sections import participant_drivers_section
from bids_dnn.report.inputs import read_stimuli
from bids_dnn.report.thumbnails import ELLIPSIS, Thumbnail
from tests.unit.report._analysis_outputs import (
    ROIS,
    SPACE,
    TASK,
    analysis_spec,
    blocks_of,
    participant_context,
    stim_ids,
    table_rows,
    texts,
    write_participant_outputs,
)
from tests.unit.report.test_thumbnails import tone, write_wav

#: the text of every stimulus: the first two are given in stimuli.tsv, the others are .txt files
LONG = " ".join(["the heavy market grows near the river and the wide harbour stays"] * 6)
SENTENCES = [LONG, "a grating in the rain.", "the tiny goat hides.", "the bright dog stays.",
             "the old roof.", "a quiet valley waits.", "the small bread sits at night.", "the grey shovel."]
#: the tone of every sound stimulus (Hz); the last file is left out (missing)
TONES = [300.0, 600.0, 900.0, 1200.0, 1500.0, 1800.0, 2100.0, 2400.0]


def _layout(tmp_path: Path, kind: str, rng: np.random.Generator) -> drv.OutputLayout:
    """An output folder whose stimulus table names text or sound stimuli of ``../raw/stimuli``."""
    root = tmp_path / "out"
    root.mkdir(parents=True)
    layout = drv.OutputLayout(root, TASK, SPACE)
    raw = tmp_path / "raw" / "stimuli"
    raw.mkdir(parents=True)
    ids = stim_ids()
    if kind == "text":
        files = ["", ""] + [f"{s}.txt" for s in ids[2:]]
        pd.DataFrame({"stim_id": ids[:2], "stim_file": ["", ""], "text": SENTENCES[:2]}).to_csv(
            raw / "stimuli.tsv", sep="\t", index=False)
        for stim_id, sentence in zip(ids[2:], SENTENCES[2:]):
            (raw / f"{stim_id}.txt").write_text(sentence + "\n", encoding="utf-8")
    else:
        files = [f"{s}.wav" for s in ids]
        for stim_id, frequency in zip(ids[:-1], TONES):
            write_wav(raw / f"{stim_id}.wav", tone(frequency, 16000, 0.5, rng), 16000)
    drv.write_tsv(layout.stimuli_table(), pd.DataFrame({
        "stim_id": ids, "stim_file": files, "category": [s[:-2] for s in ids], "source": ["stimuli"] * len(ids)}))
    layout.dataset_description.write_text(json.dumps({"Name": "x", "DatasetLinks": {"raw": "../raw"}}))
    return layout


@pytest.fixture
def montages(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, list[tuple[str, Any]]]]]:
    """The groups of tiles every montage is drawn from (the drawing itself is unchanged)."""
    drawn: list[list[tuple[str, list[tuple[str, Any]]]]] = []
    original = figs.draw_montage

    def record(fig: Any, groups: Any, *args: Any, **kwargs: Any) -> None:
        drawn.append([(name, list(items)) for name, items in groups])
        original(fig, groups, *args, **kwargs)

    monkeypatch.setattr(figs, "draw_montage", record)
    return drawn


def _stimuli_section(report: Path) -> str:
    text = report.read_text(encoding="utf-8")
    match = re.search(r'<section[^>]*\bid="stimuli".*?</section>', text, flags=re.S)
    assert match, "no stimuli section"
    return match.group(0)


def test_stimulus_table_reads_texts_given_in_stimuli_tsv(tmp_path: Path, rng: np.random.Generator) -> None:
    stim = read_stimuli(_layout(tmp_path, "text", rng))
    assert stim.texts == [*SENTENCES[:2], *[None] * 6]
    assert stim.kinds == ["text"] * 8
    assert stim.files[:2] == ["", ""] and stim.paths[:2] == [None, None] and all(stim.paths[2:])


def test_participant_report_shows_the_texts(tmp_path: Path, rng: np.random.Generator, montages: list) -> None:
    layout = _layout(tmp_path, "text", rng)
    report = build_participant_report(layout, "01", spec=analysis_spec(
        decoding={"enabled": False}, probing={"enabled": False}, drivers={"enabled": False}))
    section = _stimuli_section(report)
    assert 'class="err"' not in section and "data:image/png;base64," in section
    assert "Texts are written into their tiles" in section and "Grey tiles" not in section
    # every text in full in the table (the long one too, though its tile is ellipsised)
    assert 'id="stimulus-texts"' in section
    for stim_id, sentence in zip(stim_ids(), SENTENCES):
        assert html.escape(sentence) in section and stim_id in section
    (groups,) = montages
    tiles = {stim_id: tile for _, items in groups for stim_id, tile in items}
    assert set(tiles) == set(stim_ids())
    assert all(isinstance(t, Thumbnail) and t.kind == "text" for t in tiles.values())
    assert {stim_id: t.text for stim_id, t in tiles.items()} == dict(zip(stim_ids(), SENTENCES))


def test_text_montage_ellipsises_a_long_text() -> None:
    from matplotlib.figure import Figure

    from bids_dnn.report.thumbnails import render_thumbnail

    fig = Figure(figsize=(5, 2), dpi=110)
    figs.draw_montage(fig, [("c", [("long", render_thumbnail(None, 144, text=LONG)),
                                   ("short", render_thumbnail(None, 144, text=SENTENCES[2]))])], thumb=96)
    written = [t.get_text() for t in fig.axes[0].texts]
    (cut,) = [t for t in written if t.startswith("the heavy")]
    assert cut.endswith(ELLIPSIS) and LONG.startswith(cut[:-1].replace("\n", " ").rstrip())
    assert SENTENCES[2] in [t.replace("\n", " ") for t in written]


def test_participant_report_shows_sound_thumbnails(tmp_path: Path, rng: np.random.Generator,
                                                   montages: list) -> None:
    pytest.importorskip("av")
    layout = _layout(tmp_path, "audio", rng)
    report = build_participant_report(layout, "01", spec=analysis_spec(
        decoding={"enabled": False}, probing={"enabled": False}, drivers={"enabled": False}))
    section = _stimuli_section(report)
    assert 'class="err"' not in section and "data:image/png;base64," in section
    assert "Sounds are shown as their waveform" in section and "Grey tiles: 1 files not found" in section
    assert "<audio" not in report.read_text(encoding="utf-8")  # the sound itself is never embedded
    assert "stimulus-texts" not in section
    (groups,) = montages
    tiles = {stim_id: tile for _, items in groups for stim_id, tile in items}
    missing = stim_ids()[-1]
    assert tiles[missing] is None
    for stim_id in stim_ids()[:-1]:
        tile = tiles[stim_id]
        assert isinstance(tile, Thumbnail) and tile.kind == "audio" and tile.caption == "0.50 s, 16 kHz"
        assert tile.image.size == (144, 144)


def test_drivers_montage_shows_texts_and_sounds(tmp_path: Path, rng: np.random.Generator, montages: list) -> None:
    pytest.importorskip("av")
    for kind in ("text", "audio"):
        montages.clear()
        layout = _layout(tmp_path / kind, kind, rng)
        write_participant_outputs(layout, rng, saliency_rois=())
        section = guarded_section("drivers", "Drivers", lambda s: participant_drivers_section(
            participant_context(layout, analysis_spec()), s))
        assert not section.has_error
        assert len(montages) == len(ROIS) and len(blocks_of(section, "figure")) == 2 * len(ROIS)
        tiles = [tile for groups in montages for _, items in groups for _, tile in items]
        if kind == "text":
            assert all(tile.kind == "text" and tile.text in SENTENCES for tile in tiles)
            assert "could not be found" not in texts(section)
            # the texts of the montages in full
            (table,) = [b for b in blocks_of(section, "table") if b.id == "drivers-texts"]
            full = dict(zip(stim_ids(), SENTENCES))
            rows = table_rows(table)
            shown = {label.split(" ")[0] for groups in montages for _, items in groups for label, _ in items}
            assert {row["stim_id"] for row in rows} == shown
            assert all(row["text"] == full[row["stim_id"]] for row in rows)
        else:
            found = [tile for tile in tiles if tile is not None]
            assert found and all(tile.kind == "audio" and tile.caption == "0.50 s, 16 kHz" for tile in found)
            shown = {label.split(" ")[0] for groups in montages for _, items in groups for label, _ in items}
            assert ("could not be found" in texts(section)) == (stim_ids()[-1] in shown)
