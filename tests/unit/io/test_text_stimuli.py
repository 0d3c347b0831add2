"""Text stimuli: .txt files and the BEP044 stimuli.tsv ``text`` column, through the stimulus set.

Every file is written here; expected texts and digests are computed independently (str methods,
hashlib) from what was written.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bids_dnn.errors import BidsValidationError, InputMissingError
from bids_dnn.io.stimuli import (TEXT_COLUMN, StimulusSet, build_stimulus_set, read_stimuli_table,
                                 stimulus_input_identity, stimulus_text)
from bids_dnn.io.stimulus_loading import (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, STIMULUS_KINDS, TEXT_EXTENSIONS,
                                          VIDEO_EXTENSIONS, check_stimulus_file, load_stimulus, stimulus_kind)
from bids_dnn.io.text import decode_text, load_text, normalize_text, text_problem


def events_naming(names: list[str], column: str = "stim_file") -> pd.DataFrame:
    return pd.DataFrame({"onset": np.arange(float(len(names))), "duration": 1.0, column: names})


# ---------------------------------------------------------------------------------------
# the registry of kinds
# ---------------------------------------------------------------------------------------


def test_every_extension_has_one_kind() -> None:
    assert set(STIMULUS_KINDS) == {"image", "video", "text", "audio"}
    assert STIMULUS_KINDS["image"] is IMAGE_EXTENSIONS and STIMULUS_KINDS["video"] is VIDEO_EXTENSIONS
    assert TEXT_EXTENSIONS == {".txt"} and AUDIO_EXTENSIONS == {".wav", ".flac", ".ogg", ".mp3"}
    every = [ext for extensions in STIMULUS_KINDS.values() for ext in extensions]
    assert len(every) == len(set(every))
    for kind, extensions in STIMULUS_KINDS.items():
        for ext in extensions:
            assert stimulus_kind(f"a/b{ext}") == kind
            assert stimulus_kind(Path(f"B{ext.upper()}")) == kind
    assert stimulus_kind("x.tsv") is None and stimulus_kind("noextension") is None


def test_unknown_extension_is_reported_with_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "x.docx"
    path.write_text("hello")
    reason = check_stimulus_file(path)
    assert reason.startswith("x.docx: unsupported file type '.docx' (")
    for kind in STIMULUS_KINDS:
        assert f"{kind}: " in reason
    assert ".txt" in reason and ".mp3" in reason


# ---------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------


def test_load_text_normalises_bom_line_ends_and_white_space(tmp_path: Path) -> None:
    body = "Café — 日本語\r\nsecond  line\rthird\tline"
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbf" + ("  \n\t" + body + " \r\n\n").encode("utf-8"))
    expected = "Café — 日本語\nsecond  line\nthird\tline"  # inner white space kept
    assert load_text(path) == expected
    assert check_stimulus_file(path) is None
    assert load_stimulus(path) == expected  # the loader registry dispatches .txt to load_text
    assert decode_text(("x\r\ny").encode("utf-8")) == "x\ny"
    assert normalize_text("\ufeff a\r\n") == "a"


@pytest.mark.parametrize("data, reason", [
    (b"caf\xe9 latin-1", "not UTF-8 text (invalid byte 0xe9 at byte 3)"),
    (b" \r\n\t \n", "empty text (only white space)"),
    (b"\xef\xbb\xbf  \n", "empty text (only white space)"),  # a BOM alone is no text
], ids=["latin1", "white-space", "bom-only"])
def test_unusable_texts(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    assert text_problem(path) == f"bad.txt: {reason}"
    assert check_stimulus_file(path) == f"bad.txt: {reason}"
    with pytest.raises(InputMissingError, match="bad.txt: " + reason.split(" (")[0]) as info:
        load_text(path)
    assert info.value.exit_code == 66


# ---------------------------------------------------------------------------------------
# .txt files through the stimulus set
# ---------------------------------------------------------------------------------------


def text_files(stimuli: Path, texts: dict[str, str]) -> None:
    stimuli.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (stimuli / name).write_bytes(text.encode("utf-8"))


def test_txt_files_make_a_text_stimulus_set(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    written = {"s1.txt": "The cat sat.\n", "s2.txt": "\ufeffA dog ran.", "s3.txt": "  Birds fly.\r\n"}
    text_files(bids / "stimuli", written)
    stimuli = build_stimulus_set([events_naming(list(written))], bids)
    assert stimuli.stim_ids == ["s1", "s2", "s3"]
    assert stimuli.kinds == ["text"] * 3 and stimuli.has_text
    assert not stimuli.has_audio and not stimuli.has_video
    assert stimuli.texts == []  # no text given in stimuli.tsv
    for i, name in enumerate(stimuli.files):
        assert stimuli.sha256[i] == hashlib.sha256((bids / "stimuli" / name).read_bytes()).hexdigest()
        assert stimulus_text(stimuli, i) == written[name].lstrip("\ufeff").strip()
    assert list(stimuli.to_table().columns) == ["stim_id", "stim_file", "category", "sha256", "source"]


def test_text_problems_are_summarised_by_kind(tmp_path: Path) -> None:
    """More than 10 unusable texts: one line per kind of problem, with its hint (exit 66)."""
    folder = tmp_path / "bids" / "stimuli"
    bad = {**{f"latin{i:02d}.txt": "caf\xe9" for i in range(6)}, **{f"blank{i:02d}.txt": " \n" for i in range(6)}}
    folder.mkdir(parents=True)
    for name, text in bad.items():
        (folder / name).write_bytes(text.encode("latin-1"))
    with pytest.raises(InputMissingError) as info:
        build_stimulus_set([events_naming(list(bad))], tmp_path / "bids")
    message = str(info.value)
    assert info.value.exit_code == 66
    assert message.startswith("12 stimulus file(s) missing or unreadable, by kind of problem:")
    assert "6 x empty text (only white space): blank00.txt, blank01.txt, blank02.txt, ... (3 more)" in message
    assert "6 x not UTF-8 text (invalid byte 0xe9 at byte 3): latin00.txt, latin01.txt" in message
    assert "save the text files as UTF-8" in info.value.hint
    assert "at least one visible character" in info.value.hint
    assert len(info.value.details) == 12


# ---------------------------------------------------------------------------------------
# the stimuli.tsv text column
# ---------------------------------------------------------------------------------------


@pytest.fixture()
def text_table_dataset(tmp_path: Path) -> Path:
    """Three texts given in stimuli.tsv, one .txt file and one image, named by stim_id."""
    bids = tmp_path / "bids"
    folder = bids / "stimuli"
    folder.mkdir(parents=True)
    (folder / "story.txt").write_text("Once upon a time.\n", encoding="utf-8")
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(folder / "pic.png")
    pd.DataFrame({"stim_id": ["w1", "w2", "w3", "story", "pic"],
                  "stim_file": ["", "", "", "story.txt", "pic.png"],
                  TEXT_COLUMN: ["  the house  ", "a tree", "Zürich", "", ""],
                  "category": ["word", "word", "word", "story", "image"]}).to_csv(
        folder / "stimuli.tsv", sep="\t", index=False)
    return bids


def test_text_column_end_to_end(text_table_dataset: Path) -> None:
    table_path = text_table_dataset / "stimuli" / "stimuli.tsv"
    stimuli = build_stimulus_set([events_naming(["w2", "pic", "w1", "story", "w3"], "stim_id")], text_table_dataset)
    assert stimuli.events_source == "stimuli_tsv"
    order = stimuli.stim_ids
    assert order == ["pic", "story", "w1", "w2", "w3"]  # category, then file ("" for texts), then id
    expected_text = {"w1": "the house", "w2": "a tree", "w3": "Zürich"}
    assert stimuli.kinds == ["image", "text", "text", "text", "text"]
    assert stimuli.has_text and not stimuli.has_audio and not stimuli.has_video
    assert stimuli.texts == [None, None, "the house", "a tree", "Zürich"]
    for i, sid in enumerate(order):
        if sid in expected_text:
            text = expected_text[sid]
            assert stimuli.files[i] == "" and stimuli.paths[i] == table_path
            assert stimuli.source_dirs[i] == "stimuli"
            assert stimuli.sha256[i] == hashlib.sha256(text.encode("utf-8")).hexdigest()
            assert stimulus_text(stimuli, i) == text
    story = order.index("story")
    assert stimulus_text(stimuli, story) == "Once upon a time."
    assert stimuli.sha256[story] == hashlib.sha256(b"Once upon a time.\n").hexdigest()
    with pytest.raises(ValueError, match="'pic' .* is not a text"):
        stimulus_text(stimuli, order.index("pic"))
    table = stimuli.to_table()
    assert list(table.columns) == ["stim_id", "stim_file", "category", "sha256", "source"]
    assert table["stim_file"].tolist() == ["pic.png", "story.txt", "", "", ""]
    assert len(stimuli.set_hash()) == 64
    assert stimulus_input_identity(stimuli, None) == {}


def test_text_column_changes_the_identity(text_table_dataset: Path) -> None:
    events = [events_naming(["w1", "w2", "w3"], "stim_id")]
    before = build_stimulus_set(events, text_table_dataset)
    table_path = text_table_dataset / "stimuli" / "stimuli.tsv"
    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    table.loc[table["stim_id"] == "w2", TEXT_COLUMN] = "a tall tree"
    table.to_csv(table_path, sep="\t", index=False)
    after = build_stimulus_set(events, text_table_dataset)
    assert before.sha256[0] == after.sha256[0] and before.sha256[1] != after.sha256[1]
    assert before.set_hash() != after.set_hash()


def test_row_without_file_or_text_is_an_error(text_table_dataset: Path) -> None:
    table_path = text_table_dataset / "stimuli" / "stimuli.tsv"
    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    table.loc[table["stim_id"] == "w3", TEXT_COLUMN] = "   "
    table.to_csv(table_path, sep="\t", index=False)
    with pytest.raises(BidsValidationError, match=r"1 stim_id\(s\) without a stim_file: 'w3' \(nor a text\)") as info:
        build_stimulus_set([events_naming(["w1", "w2", "w3"], "stim_id")], text_table_dataset)
    assert info.value.exit_code == 16


def test_text_only_table_needs_no_stim_file_column(tmp_path: Path) -> None:
    folder = tmp_path / "bids" / "stimuli"
    folder.mkdir(parents=True)
    pd.DataFrame({"stim_id": ["a", "b", "c"], TEXT_COLUMN: ["one", "two", "three"]}).to_csv(
        folder / "stimuli.tsv", sep="\t", index=False)
    assert read_stimuli_table(folder / "stimuli.tsv").texts == {"a": "one", "b": "two", "c": "three"}
    stimuli = build_stimulus_set([events_naming(["c", "a", "b"], "stim_id")], tmp_path / "bids")
    assert [stimulus_text(stimuli, i) for i in range(3)] == ["one", "two", "three"]  # ordered by id
    assert stimuli.files == ["", "", ""] and stimuli.kinds == ["text"] * 3
    (folder / "stimuli.tsv").write_text("stim_id\tcategory\na\tx\n")  # neither stim_file nor text
    with pytest.raises(BidsValidationError, match="missing column\\(s\\) stim_file"):
        read_stimuli_table(folder / "stimuli.tsv")


def test_identical_texts_are_warned(tmp_path: Path) -> None:
    folder = tmp_path / "bids" / "stimuli"
    folder.mkdir(parents=True)
    pd.DataFrame({"stim_id": ["a", "b", "c"], TEXT_COLUMN: ["same", " same ", "other"]}).to_csv(
        folder / "stimuli.tsv", sep="\t", index=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("bids_dnn")
    logger.addHandler(handler)
    try:
        stimuli = build_stimulus_set([events_naming(["a", "b", "c"], "stim_id")], tmp_path / "bids")
    finally:
        logger.removeHandler(handler)
    assert stimuli.sha256[0] == stimuli.sha256[1] != stimuli.sha256[2]
    assert any("a (stimuli.tsv text) = b (stimuli.tsv text)" in r.getMessage() for r in records)


def test_default_texts_keep_old_sets_working() -> None:
    stimuli = StimulusSet(stim_ids=["a", "b"], files=["a.png", "b.mp4"], paths=[Path("/p/a.png"), Path("/p/b.mp4")],
                          categories=["x", "x"], sha256=["0" * 64, "1" * 64], source_dirs=["stimuli"] * 2)
    assert stimuli.texts == [] and stimuli.kinds == ["image", "video"]
    assert stimuli.has_video and not stimuli.has_text and not stimuli.has_audio
