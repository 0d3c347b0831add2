"""Hostile inputs, round two: each probe a user (or an attacker) could send, through the CLI.

One table: a breaker edits a copy of the small demo dataset (and its spec), the participant level
runs, and the exit code, the message and what the output folder holds are checked. Every row has a
row in docs/failures.md.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bids_dnn.cli.main import main
from _specs import SMALL_SPEC
from test_failures import assert_no_partial_output

Breaker = Callable[[Path, Path], None]
BOLD_SIDECAR = ("derivatives/fmriprep/sub-01/func/"
                "sub-01_task-shapes_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.json")
MARKER = "code-was-run"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bids_dnn.workflows.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("hostile") / "bids", n_subjects=2, n_runs=2, seed=0)


def _spec_replace(old: str, new: str) -> Breaker:
    def breaker(bids: Path, spec: Path) -> None:
        text = spec.read_text()
        assert old in text
        spec.write_text(text.replace(old, new))
    return breaker


def _custom_model(entry_point: str, code: str | None = None, file: str = "evil.py") -> Breaker:
    """A spec whose model runs ``code`` (written next to the spec) through ``entry_point``."""
    def breaker(bids: Path, spec: Path) -> None:
        if code is not None:
            (spec.parent / file).write_text(code.replace("MARKER", str(spec.parent / MARKER)))
        _spec_replace("  - name: alexnet\n    weights: random\n",
                      f"  - name: alexnet\n    source: custom\n    entry_point: '{entry_point}'\n"
                      "    weights: random\n")(bids, spec)
    return breaker


def _torchscript_model(bids: Path, spec: Path) -> None:
    (spec.parent / "net.pt").write_bytes(b"not checked before the permission")
    _spec_replace("  - name: alexnet\n    weights: random\n",
                  "  - name: alexnet\n    source: torchscript\n    torchscript: net.pt\n    weights: random\n")(bids, spec)


def _float_stimulus(bids: Path, spec: Path) -> None:
    path = bids / "stimuli" / "disc01.png"
    path.unlink()
    Image.fromarray(np.full((8, 8), 1000.0, dtype=np.float32)).save(path.with_suffix(".tif"))
    path.with_suffix(".tif").rename(path)  # Pillow reads by content, not by suffix


def _events_cells(*rows: dict[str, str]) -> Breaker:
    """Append rows to sub-01's first events file (cells as written in the TSV)."""
    def breaker(bids: Path, spec: Path) -> None:
        path = bids / "sub-01" / "func" / "sub-01_task-shapes_run-1_events.tsv"
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        table = pd.concat([table, pd.DataFrame([{c: row.get(c, "n/a") for c in table.columns} for row in rows])])
        table.to_csv(path, sep="\t", index=False)
    return breaker


def _sidecar_repetition_time(value: float) -> Breaker:
    """The run-1 BOLD sidecar of sub-01 states another TR than its NIfTI header (2 s)."""
    def breaker(bids: Path, spec: Path) -> None:
        path = bids / BOLD_SIDECAR
        path.write_text(json.dumps({**json.loads(path.read_text()), "RepetitionTime": value}))
    return breaker


def _output_of_another_dataset(bids: Path, spec: Path) -> None:
    """OUT_DIR already records another dataset (same participants, another stimulus set)."""
    out = bids.parent / "out"
    out.mkdir()
    (out / "input_dataset.json").write_text(json.dumps({
        "DatasetId": "0123456789abcdef", "Name": "another study", "Path": "/data/another-study",
        "Participants": ["01", "02"], "Tasks": {"shapes": {"StimulusFingerprint": "f" * 64, "NumberOfStimuli": 24}}}))


ATLAS = "derivatives/rois/space-MNI152NLin2009cAsym_atlas-planted_dseg.nii.gz"


def _atlas_bytes(data: Callable[[bytes], bytes]) -> Breaker:
    def breaker(bids: Path, spec: Path) -> None:
        path = bids / ATLAS
        path.write_bytes(data(path.read_bytes()))
    return breaker


WRITES_MARKER = "from pathlib import Path\nPath('MARKER').write_text('x')\ndef build():\n    return None\n"
EXITS = "import sys\ndef build():\n    sys.exit(0)\n"

# id, breaker, extra arguments, exit code, message parts
CASES = [
    pytest.param(_custom_model("os:system"), [], 65,
                 ["entry_point must name a Python file and a function in it",
                  "importable module names are not accepted"], id="custom-importable-module"),
    pytest.param(_custom_model("evil.py:build", WRITES_MARKER), [], 64,
                 ["models[0] (source: custom) runs the code of", "evil.py:build; this needs --allow-custom-code",
                  "custom models and TorchScript files execute their code"], id="custom-code-without-opt-in"),
    pytest.param(_torchscript_model, [], 64, ["models[0] (source: torchscript) runs the code of net.pt",
                                              "--allow-custom-code"], id="torchscript-without-opt-in"),
    pytest.param(_custom_model("quitter.py:build", EXITS, file="quitter.py"), ["--allow-custom-code"], 1,
                 ["models[0].entry_point: quitter.py called sys.exit(0)"], id="custom-code-exits-0"),
    pytest.param(_spec_replace("permutations: 20", "permutations: 1000000000000"), [], 65,
                 ["analyses.rsa.permutations: must be less than or equal to 1000000",
                  "p-values resolve 1/(n+1)"], id="spec-unbounded-permutations"),
    pytest.param(_spec_replace("  searchlight: {enabled: false}", "  searchlight: {enabled: true, radius_mm: 1e9}"),
                 [], 65, ["analyses.searchlight.radius_mm: must be less than or equal to 50",
                          "no longer a searchlight"], id="spec-unbounded-radius"),
    pytest.param(_spec_replace("  seed: 42", "  seed: 100000000000000000000000000000"), [], 65,
                 ["statistics.seed: must be less than or equal to 4294967295", "unsigned 32-bit"],
                 id="spec-unbounded-seed"),
    pytest.param(_events_cells({"onset": "12", "duration": "n/a", "stim_file": "disc01.png"}), [], 16,
                 ["sub-01_task-shapes_run-1_events.tsv: row", "duration 'n/a' on a stimulus event (",
                  "give the duration of every stimulus event in seconds"], id="events-stimulus-duration-na"),
    pytest.param(_events_cells({"onset": "12", "duration": "inf", "stim_file": "disc01.png"}), [], 16,
                 ["sub-01_task-shapes_run-1_events.tsv: column 'duration' must be a finite number (row",
                  ": 'inf')"], id="events-duration-inf"),
    pytest.param(_events_cells({"onset": "n/a", "duration": "1"}), [], 16,
                 ["sub-01_task-shapes_run-1_events.tsv: column 'onset' must be numeric (row", ": 'n/a')"],
                 id="events-onset-na"),
    pytest.param(_sidecar_repetition_time(0.5), [], 66,
                 ["sub-01_task-shapes_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz: RepetitionTime 0.5 s "
                  "in the JSON sidecar, 2 s in the NIfTI header", "set brain.repetition_time: sidecar (or header)"],
                 id="tr-sidecar-header-mismatch"),
    pytest.param(_atlas_bytes(lambda data: b""), [], 66,
                 ["atlas: space-MNI152NLin2009cAsym_atlas-planted_dseg.nii.gz is empty (0 bytes)"], id="atlas-empty"),
    pytest.param(_atlas_bytes(lambda data: b"not an image"), [], 66,
                 ["atlas: cannot read space-MNI152NLin2009cAsym_atlas-planted_dseg.nii.gz as an image"],
                 id="atlas-not-nifti"),
    pytest.param(_atlas_bytes(lambda data: data[: len(data) // 2]), [], 66,
                 ["atlas: cannot read the image data", "truncated or corrupt"], id="atlas-truncated"),
    pytest.param(_spec_replace("  atlas: derivatives/rois/space-MNI152NLin2009cAsym_atlas-planted_dseg.nii.gz",
                               "  atlas: derivatives/rois/space-MNI152NLin2009cAsym_atlas-planted_dseg.nii.gz\n"
                               "  labels: [nope]"), [], 66, ["nope"], id="atlas-unknown-label"),
    pytest.param(_float_stimulus, [], 66,
                 ["1 stimulus file(s) missing or unreadable", "disc01.png",
                  "float image values span [1000, 1000]"], id="image-float-out-of-range"),
    pytest.param(_output_of_another_dataset, [], 64,
                 ["holds results of another dataset: 'another study' at /data/another-study (2 participant(s): "
                  "sub-01, sub-02); this run reads 'bids_dnn demo: planted DNN-layer responses' at",
                  "another stimulus set for task 'shapes'", "another output folder, or pass --force"],
                 id="output-folder-of-another-dataset"),
    pytest.param(lambda bids, spec: None, ["--participant-label", "@labels.txt"], 64,
                 ["--participant-label @labels.txt: cannot read the file of labels (No such file or directory)"],
                 id="participant-label-file-missing"),
]


@pytest.mark.parametrize("breaker, extra, code, messages", CASES)
def test_hostile_input(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch, breaker: Breaker, extra: list[str], code: int,
                       messages: list[str]) -> None:
    bids = tmp_path / "bids"
    shutil.copytree(small_demo, bids)
    spec = tmp_path / "code" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text(SMALL_SPEC)
    breaker(bids, spec)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = main([str(bids), str(out), "participant", "--participant-label", "01", "--spec", str(spec),
                   "--no-progress", *extra])
    text = " ".join(capsys.readouterr().err.split())  # undo rich's line wrapping
    assert "Traceback" not in text and "unexpected" not in text, text
    for message in messages:
        assert " ".join(message.split()) in text, text
    assert result == code, text
    assert_no_partial_output(out, shared_ok=False)
    assert not (spec.parent / MARKER).exists(), "the spec ran code without --allow-custom-code"


# ---------------------------------------------------------------------------------------
# output folders that cannot be used (exit 73, the BIDS Apps / sysexits "cannot create")
# ---------------------------------------------------------------------------------------


def test_output_folder_that_is_a_file(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.write_text("I am a file")
    result = main([str(small_demo), str(out), "participant", "--participant-label", "01", "--spec",
                   str(_small_spec(tmp_path)), "--no-progress"])
    text = " ".join(capsys.readouterr().err.split())
    assert result == 73, text
    assert f"the output folder {out} exists and is not a folder" in text and "Traceback" not in text
    assert out.read_text() == "I am a file"


def test_output_folder_below_a_file(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    result = main([str(small_demo), str(out), "participant", "--participant-label", "01", "--spec",
                   str(_small_spec(tmp_path)), "--no-progress"])
    text = " ".join(capsys.readouterr().err.split())
    assert result == 73 and f"cannot be created: {tmp_path / 'file'} is a file" in text, text


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a private read-only mount")
def test_output_folder_on_a_read_only_file_system(small_demo: Path, tmp_path: Path) -> None:
    """OUT_DIR on a read-only mount (a private user + mount namespace, so even root cannot write):
    exit 73 and one clear message, nothing written."""
    import subprocess
    import sys

    locked = tmp_path / "locked"
    locked.mkdir()
    spec = _small_spec(tmp_path)
    command = " ".join([sys.executable, "-m", "bids_dnn", str(small_demo), str(locked / "out"), "participant",
                        "--participant-label", "01", "--spec", str(spec), "--no-progress"])
    script = f"mount -t tmpfs -o ro,size=1m tmpfs {locked} && {command}"
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, timeout=300)
    if "mount:" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {result.stderr.strip()[:200]}")
    text = " ".join(result.stderr.split())
    assert result.returncode == 73, text
    assert f"the output folder {locked / 'out'} cannot be created (in {locked}): Read-only file system" in text
    assert "Traceback" not in text and not (locked / "out").exists()


def _small_spec(folder: Path) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(SMALL_SPEC)
    return spec


# ---------------------------------------------------------------------------------------
# the output folder belongs to one input dataset (docs/failures.md "Hostile inputs")
# ---------------------------------------------------------------------------------------


def _run(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, " ".join(capsys.readouterr().err.split())


def _files(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_output_folder_is_tied_to_its_dataset(small_demo: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A participant of another dataset is refused (exit 64, both datasets named, nothing
    written); a copy of the same dataset at another path is accepted; --force hands the folder
    over, and then the group level refuses the first dataset's participant."""
    from bids_dnn.workflows.demo import make_demo_dataset

    spec, out, first = _small_spec(tmp_path), tmp_path / "out", tmp_path / "a"
    shutil.copytree(small_demo, first)
    participant = ["participant", "--spec", spec, "--no-progress", "--participant-label"]
    code, text = _run([first, out, *participant, "01"], capsys)
    assert code == 0, text
    record = json.loads((out / "input_dataset.json").read_text())
    assert record["Path"] == str(first.resolve()) and record["Participants"] == ["01", "02"]
    assert record["Tasks"]["shapes"]["NumberOfStimuli"] == 24
    assert json.loads((out / "sub-01/log/task-shapes_status.json").read_text())["dataset"]["id"] == record["DatasetId"]

    other = make_demo_dataset(tmp_path / "b", n_subjects=2, n_runs=2, seed=1)  # same names, other pictures
    before = _files(out)
    code, text = _run([other, out, *participant, "02"], capsys)
    assert code == 64, text
    assert (f"output folder {out} holds results of another dataset: 'bids_dnn demo: planted DNN-layer responses' at "
            f"{first.resolve()} (2 participant(s): sub-01, sub-02); this run reads") in text
    assert f"at {other.resolve()} (2 participant(s)" in text and "another stimulus set for task 'shapes'" in text
    assert _files(out) == before  # refused before anything was written

    copy = tmp_path / "elsewhere" / "a"
    shutil.copytree(first, copy)  # the same content (and times) at another path
    code, text = _run([copy, out, *participant, "01"], capsys)
    assert code == 0 and "sub-01: all 3 stages up to date; nothing to do" in text, text
    assert json.loads((out / "input_dataset.json").read_text()) == record

    code, text = _run([other, out, *participant, "02", "--force"], capsys)
    assert code == 0, text
    taken = json.loads((out / "input_dataset.json").read_text())
    assert taken["Path"] == str(other.resolve()) and taken["DatasetId"] != record["DatasetId"]
    code, text = _run([other, out, "group", "--spec", spec, "--no-progress"], capsys)
    assert code == 64, text
    assert ("participant outputs of sub-01 were computed from another input dataset than the one this folder now "
            f"holds ('bids_dnn demo: planted DNN-layer responses' at {other.resolve()}") in text
    assert not (out / "group").exists()


def test_dataset_record_accepts_copies_and_growth_and_refuses_others(tmp_path: Path) -> None:
    from bids_dnn.errors import UsageError
    from bids_dnn.io.input_dataset import check_output_dataset, dataset_identity, read_record, record_output_dataset

    def record(identity, force: bool = False) -> str:
        return record_output_dataset(out, identity, check_output_dataset(out, identity, force), force)["id"]

    out = tmp_path / "out"
    ids, hashes = ["a", "b", "c"], ["1", "2", "3"]
    first = dataset_identity(tmp_path / "bids", ["01", "02"], "t", ids, hashes)
    assert record(first) == first.dataset_id()
    # another path, another row order, one more participant: the same dataset, whose record grows
    grown = dataset_identity(tmp_path / "copy", ["01", "02", "03"], "t", ids[::-1], hashes[::-1])
    assert record(grown) == first.dataset_id()
    assert read_record(out)["Participants"] == ["01", "02", "03"] and read_record(out)["Path"] == first.path
    # a second task of (part of) the same participants is added
    assert record(dataset_identity(tmp_path / "bids", ["02"], "u", ["d", "e", "f"], ["4", "5", "6"])) == first.dataset_id()
    assert set(read_record(out)["Tasks"]) == {"t", "u"}
    stranger = dataset_identity(tmp_path / "bids", ["07", "08"], "t", ids, hashes)
    with pytest.raises(UsageError, match=r"other participants \(sub-01, sub-02, sub-03 only there, sub-07, sub-08 "
                                         r"only here\)"):
        check_output_dataset(out, stranger, False)
    edited = dataset_identity(tmp_path / "bids", ["01", "02"], "t", ids, ["1", "2", "changed"])
    with pytest.raises(UsageError, match="another stimulus set for task 't'") as refused:
        check_output_dataset(out, edited, False)
    assert refused.value.exit_code == 64 and "--force" in refused.value.hint
    assert record(edited, force=True) == edited.dataset_id() != first.dataset_id()
    assert read_record(out)["Participants"] == ["01", "02"] and set(read_record(out)["Tasks"]) == {"t"}


def test_concurrent_first_runs_create_one_record(tmp_path: Path) -> None:
    """Array jobs starting together on an empty folder: one creates the record, the others
    check theirs against it; every one gets the same id and the file is never torn."""
    from concurrent.futures import ThreadPoolExecutor

    from bids_dnn.io.derivatives import write_text_if_absent
    from bids_dnn.io.input_dataset import check_output_dataset, dataset_identity, read_record, record_output_dataset

    out = tmp_path / "out"
    identity = dataset_identity(tmp_path, ["01", "02"], "t", ["a", "b", "c"], ["1", "2", "3"])
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: record_output_dataset(out, identity, check_output_dataset(out, identity, False),
                                                            False)["id"], range(16)))
    assert set(ids) == {identity.dataset_id()} and read_record(out)["DatasetId"] == identity.dataset_id()
    assert [p.name for p in out.iterdir()] == ["input_dataset.json"]  # no temp file left
    assert not write_text_if_absent(out / "input_dataset.json", "{}")
    assert read_record(out)["DatasetId"] == identity.dataset_id()


# ---------------------------------------------------------------------------------------
# stimulus names, label files, large pictures
# ---------------------------------------------------------------------------------------


class _Records(logging.Handler):
    """Collects the records of the ``bids_dnn`` logger (which does not propagate to pytest's)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def bids_dnn_log() -> Iterator[_Records]:
    logger = logging.getLogger("bids_dnn")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _events_tables(bids: Path) -> list[pd.DataFrame]:
    from bids_dnn.io.stimuli import read_events

    return [read_events(path) for path in sorted(bids.glob("sub-*/func/*_events.tsv"))]


def test_one_file_under_two_spellings_is_one_stimulus(small_demo: Path) -> None:
    from bids_dnn.io.stimuli import build_stimulus_set, condition_column

    tables = _events_tables(small_demo)
    spelled = tables[0].assign(stim_file=tables[0]["stim_file"].replace({"disc01.png": "./disc01.png",
                                                                          "disc02.png": ".//disc02.png "}))
    assert (spelled["stim_file"] == "./disc01.png").any()
    stimuli = build_stimulus_set([spelled, *tables[1:]], small_demo, source="stim_file")
    assert stimuli.n_stimuli == 24 and stimuli.stim_ids.count("disc01") == 1 and "./disc01.png" not in stimuli.files
    conditions = condition_column(spelled, stimuli, "stim_file", None)
    assert (conditions[spelled["stim_file"] == "./disc01.png"] == "disc01").all()


def test_identical_pictures_under_two_names_are_warned(small_demo: Path, tmp_path: Path,
                                                       bids_dnn_log: _Records) -> None:
    from bids_dnn.io.stimuli import build_stimulus_set

    bids = tmp_path / "bids"
    shutil.copytree(small_demo, bids)
    shutil.copy(bids / "stimuli" / "disc02.png", bids / "stimuli" / "twin.png")
    tables = _events_tables(bids)
    tables[0] = pd.concat([tables[0], tables[0].iloc[:1].assign(onset=500.0, stim_file="twin.png")], ignore_index=True)
    stimuli = build_stimulus_set(tables, bids, source="stim_file")
    assert stimuli.n_stimuli == 25  # still two stimuli: the events name two files
    warnings = [m for m in bids_dnn_log.messages(logging.WARNING) if "identical content" in m]
    assert len(warnings) == 1 and "disc02.png = twin.png" in warnings[0], bids_dnn_log.messages(logging.WARNING)


def test_a_file_named_like_a_label_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bids_dnn.io.bids import expand_labels
    from bids_dnn.cli.main import build_parser
    from bids_dnn.errors import UsageError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "01").write_text("02\n03\n")
    assert expand_labels(["01"]) == ["01"]  # was ["02", "03"]: the file in the working directory was read
    assert expand_labels(["@01", "sub-04", "02"]) == ["02", "03", "04"]
    assert expand_labels(["@01"], "ses") == ["02", "03"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UsageError, match="@empty.txt: the file lists no labels"):
        expand_labels(["@empty.txt"])
    assert "@FILE" in " ".join(build_parser().format_help().split())


def _noise(rng: np.random.Generator, *shape: int, high: int = 256) -> np.ndarray:
    return rng.integers(0, high, shape).astype(np.uint16 if high > 256 else np.uint8)


def _write_large(kind: str, path: Path, rng: np.random.Generator) -> None:
    """A 400 x 300 noise picture of ``kind`` (pixel noise: the hardest content to reduce)."""
    h, w = 300, 400
    if kind == "palette-transparent":
        image = Image.fromarray(_noise(rng, h, w, high=8).astype(np.uint8), "P")
        image.putpalette([int(v) for v in _noise(rng, 24)])
        image.save(path, transparency=2)
    elif kind == "16bit-colour-key":
        Image.fromarray(_noise(rng, h, w, high=4).astype(np.uint16) * 20000).save(path, transparency=20000)
    elif kind == "rgb-colour-key":
        Image.fromarray((_noise(rng, h, w, 3, high=2) * 255).astype(np.uint8)).save(path, transparency=(255, 0, 255))
    else:
        image = {"RGB": lambda: Image.fromarray(_noise(rng, h, w, 3)),
                 "L": lambda: Image.fromarray(_noise(rng, h, w)),
                 "RGBA": lambda: Image.fromarray(_noise(rng, h, w, 4), "RGBA"),
                 "P": lambda: Image.fromarray(_noise(rng, h, w)).convert("P"),
                 "I;16": lambda: Image.fromarray(_noise(rng, h, w, high=65536)),
                 "CMYK": lambda: Image.fromarray(_noise(rng, h, w, 3)).convert("CMYK")}[kind]()
        image.save(path)


@pytest.mark.parametrize("kind, suffix, tolerance", [
    ("RGB", ".png", 0), ("L", ".png", 0), ("P", ".png", 0), ("I;16", ".png", 0), ("CMYK", ".tif", 0),
    ("RGB", ".jpg", 2), ("RGBA", ".png", 2), ("palette-transparent", ".png", 2), ("16bit-colour-key", ".png", 2),
    ("rgb-colour-key", ".png", 2)])
def test_large_pictures_give_the_network_the_same_input(tmp_path: Path, kind: str, suffix: str,
                                                        tolerance: int) -> None:
    """A picture with more than twice the pixels the model needs is decoded small (the model's
    own resize applied to the 8-bit picture, JPEG by DCT scaling): the network input equals that
    of the full-size decode (JPEG and transparency: within 2 of 255 levels, 8-bit rounding)."""
    from bids_dnn.io.media import DECODE_HEADROOM, load_image
    from bids_dnn.dnn.transforms import ImageTransform

    path = tmp_path / f"big{suffix}"
    _write_large(kind, path, np.random.default_rng(3))
    transform = ImageTransform(resize=32, crop=28, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    small = load_image(path, DECODE_HEADROOM * transform.resize, transform.resized)
    assert min(small.size) <= 300 // 2 and small.mode == "RGB"
    difference = (transform(load_image(path)) - transform(small)).abs().max().item() * 255
    assert difference <= tolerance + 1e-3


def test_large_picture_is_never_held_as_floats(tmp_path: Path) -> None:
    """A 9-megapixel PNG decoded for a 256-pixel model: the float conversion runs on the resized
    picture (NumPy peak about 2 MB; at full size it was 3000 x 3000 x 3 float64 = 216 MB, twice)."""
    import tracemalloc

    from bids_dnn.io.media import DECODE_HEADROOM, load_image
    from bids_dnn.dnn.transforms import ImageTransform

    path = tmp_path / "big.png"
    y, x = np.mgrid[0:3000, 0:3000]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)).save(path, compress_level=1)
    transform = ImageTransform()
    tracemalloc.start()
    try:
        image = load_image(path, DECODE_HEADROOM * transform.resize, transform.resized)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.size == (256, 256) and peak < 10e6, peak


def test_large_stimulus_is_checked_reduced_and_logged_once(small_demo: Path, tmp_path: Path,
                                                           bids_dnn_log: _Records) -> None:
    from bids_dnn.io.stimuli import build_stimulus_set

    bids = tmp_path / "bids"
    shutil.copytree(small_demo, bids)
    y, x = np.mgrid[0:2100, 0:2200]
    Image.fromarray((x * y % 251).astype(np.uint8)).save(bids / "stimuli" / "disc01.png", compress_level=1)
    stimuli = build_stimulus_set(_events_tables(bids), bids, source="stim_file")
    assert stimuli.n_stimuli == 24
    lines = [m for m in bids_dnn_log.messages(logging.INFO) if "larger than a network needs" in m]
    assert lines == ["1 stimulus image(s) are larger than a network needs (largest: disc01.png, 2200 x 2100 pixels, "
                     "5 megapixels); they are decoded at a reduced size, at least 4 times the model's resize target "
                     "on the shorter side"]


# ---------------------------------------------------------------------------------------
# selection before writing; failed participants recorded for the group level
# ---------------------------------------------------------------------------------------


def _without_events(bids: Path) -> None:
    for path in (bids / "sub-01" / "func").glob("*_events.tsv"):
        path.unlink()


@pytest.mark.parametrize("breaker, extra, message", [
    (lambda bids: None, ["--session-label", "nope"],
     "participant(s) without data for task 'shapes': sub-01 (no functional task-shapes data in ses-nope)"),
    (_without_events, [], "sub-01 has no events for task 'shapes' with the given filters"),
], ids=["unknown-session", "bold-without-events"])
def test_selection_errors_write_nothing(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        breaker: Callable[[Path], None], extra: list[str], message: str) -> None:
    bids, out = tmp_path / "bids", tmp_path / "out"
    shutil.copytree(small_demo, bids)
    breaker(bids)
    code, text = _run([bids, out, "participant", "--participant-label", "01", "--spec", _small_spec(tmp_path),
                       "--no-progress", *extra], capsys)
    assert code == 18 and message in text, text
    assert not out.exists()


def test_failed_participant_is_recorded_and_named_by_the_group(small_demo: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from bids_dnn.io.derivatives import OutputLayout
    from bids_dnn.report.group_report import build
    from bids_dnn.spec import load_spec

    bids, out, spec = tmp_path / "bids", tmp_path / "out", _small_spec(tmp_path)
    shutil.copytree(small_demo, bids)
    bold = bids / BOLD_SIDECAR.replace("bold.json", "bold.nii.gz").replace("sub-01", "sub-02")
    bold.write_bytes(b"")
    code, text = _run([bids, out, "participant", "--participant-label", "02", "--spec", spec, "--no-progress"], capsys)
    assert code == 66, text
    failure = json.loads((out / "sub-02" / "log" / "task-shapes_status.json").read_text())["failure"]
    assert failure["exit_code"] == 66 and failure["error"] == "InputMissingError"
    assert failure["message"] == f"preprocessed BOLD: {bold.name} is empty (0 bytes)"
    code, text = _run([bids, out, "group", "--spec", spec, "--no-progress"], capsys)
    assert code == 66, text
    assert ("participant outputs are missing or incomplete for sub-01; 1 participant(s) failed at the participant "
            f"level: sub-02 (exit 66: preprocessed BOLD: {bold.name} is empty (0 bytes))") in text
    assert "sub-<label>/log/task-shapes_status.json" in text
    html = build(OutputLayout(out, "shapes", "MNI152NLin2009cAsym"), load_spec(spec), []).read_text()
    assert f"participant run failed (exit 66: preprocessed BOLD: {bold.name} is empty (0 bytes))" in html


def test_unexpected_error_of_a_participant_is_recorded(small_demo: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import bids_dnn.workflows.participant as participant

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash in the GLM")

    monkeypatch.setattr(participant, "fit_subject_glms", crash)
    out = tmp_path / "out"
    code, text = _run([small_demo, out, "participant", "--participant-label", "01", "--spec", _small_spec(tmp_path),
                       "--no-progress"], capsys)
    assert code == 1 and "unexpected RuntimeError: simulated crash in the GLM" in text, text
    status = json.loads((out / "sub-01" / "log" / "task-shapes_status.json").read_text())
    assert status["complete"] is False
    assert status["failure"] == {**status["failure"], "exit_code": 1, "error": "RuntimeError",
                                 "message": "unexpected RuntimeError: simulated crash in the GLM", "hint": None}


# ---------------------------------------------------------------------------------------
# an ROI too small for an RDM (issue: a 1-voxel ROI crashed the subject)
# ---------------------------------------------------------------------------------------


def _add_tiny_roi(bids: Path) -> None:
    """A ROI 'tiny' of one BOLD voxel in the planted atlas, inside every brain mask.

    The atlas has 2 mm voxels, the BOLD 4 mm ones on the same origin give or take a voxel: the
    2 x 2 x 2 atlas block at twice a BOLD index is what nearest-neighbour resampling maps to it."""
    import nibabel as nib

    atlas_path = next((bids / "derivatives" / "rois").glob("*_dseg.nii.gz"))
    atlas = nib.load(atlas_path)
    data = np.asarray(atlas.dataobj).astype(np.int16)
    region = np.argwhere(data == 1)
    bold_voxel = np.round(region.mean(axis=0) / 2).astype(int)  # the middle of a planted ROI
    block = tuple(slice(2 * b - 1, 2 * b + 3) for b in bold_voxel)  # a margin for the rounding
    data[block] = 0
    data[tuple(slice(2 * b, 2 * b + 2) for b in bold_voxel)] = 99
    nib.save(nib.Nifti1Image(data, atlas.affine, atlas.header), atlas_path)
    labels = atlas_path.with_name(atlas_path.name.replace(".nii.gz", ".tsv"))
    labels.write_text(labels.read_text().rstrip("\n") + "\n99\ttiny\n")


def test_one_voxel_roi_is_skipped_and_the_rest_completes(small_demo: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bids = tmp_path / "bids"
    shutil.copytree(small_demo, bids)
    _add_tiny_roi(bids)
    spec = _small_spec(tmp_path)
    out = tmp_path / "out"
    common = ["--spec", str(spec), "--no-progress"]
    assert main([str(bids), str(out), "participant", *common]) == 0, capsys.readouterr().err
    err = " ".join(capsys.readouterr().err.split())
    assert "ROI tiny skipped: 1 usable voxel(s), fewer than rois.min_voxels = 3" in err, err
    table = pd.read_csv(next((out / "sub-01" / "func").glob("*_model-alexnet_rsa.tsv")), sep="\t",
                        dtype={"roi": str})
    tiny, others = table[table["roi"] == "tiny"], table[table["roi"] != "tiny"]
    assert len(tiny) and tiny["score"].isna().all() and (tiny["n_voxels"] == 1).all()
    assert len(others) and others["score"].notna().all()
    status = json.loads(next((out / "sub-01" / "log").glob("*status.json")).read_text())
    assert status["rois_skipped"] == {"tiny": 1}
    assert not list((out / "sub-01" / "func").glob("*label-tiny*"))  # no RDM of one voxel
    assert main([str(bids), str(out), "group", *common]) == 0, capsys.readouterr().err
    err = " ".join(capsys.readouterr().err.split())
    assert "ROI tiny left out of the group statistics" in err, err
    summary = pd.read_csv(next((out / "group").glob("*_model-alexnet_desc-summary_rsa.tsv")), sep="\t",
                          dtype={"roi": str})
    assert "tiny" not in set(summary["roi"]) and summary["mean"].notna().all()


# ---------------------------------------------------------------------------------------
# stored outputs are checked, not trusted (issue: shuffled feature rows, hand-edited tables)
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_edited_outputs_are_recomputed_or_refused(small_demo: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-edited RSA table stops the group level and is recomputed by the participant level;
    a feature file whose rows were shuffled is extracted again (not silently used)."""
    import h5py

    from bids_dnn.features.store import read_features

    spec = _small_spec(tmp_path)
    out = tmp_path / "out"
    common = ["--spec", str(spec), "--no-progress"]
    participant = [str(small_demo), str(out), "participant", *common, "--participant-label"]
    assert main([*participant, "01"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    table = next((out / "sub-01" / "func").glob("*_model-alexnet_rsa.tsv"))
    original = table.read_bytes()
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")  # two rows swapped
    assert main([str(small_demo), str(out), "group", *common, "--participant-label", "01"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "1 participant output(s) changed since the participant level wrote them" in err, err
    assert f"sub-01: sub-01/func/{table.name}" in err and "rerun the participant level" in err
    assert main([*participant, "01"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert table.read_bytes() == original  # recomputed, not trusted

    features = next((out / "model-alexnet").glob("*_features.h5"))
    before = read_features(features)
    with h5py.File(features, "r+") as h5:  # swap the first two stimuli's rows of one layer
        dataset = h5["layers"][next(iter(h5["layers"]))]
        rows = dataset[()]
        dataset[0], dataset[1] = rows[1], rows[0]
    assert main([*participant, "02"]) == 0, capsys.readouterr().err
    err = " ".join(capsys.readouterr().err.split())
    assert "do not match the digest written with them" in err and "extracting the features again" in err, err
    after = read_features(features)
    for name, values in before.layers.items():
        np.testing.assert_array_equal(after.layers[name], values)
