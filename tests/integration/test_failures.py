"""Every input failure the tool detects: message, exit code, and no partial output.

One test per row of docs/failures.md that is not already tested elsewhere (the table names the
other tests), plus Hypothesis fuzzing of the events / stimulus parsers: any input gives a valid
object or a ``BidsDnnError``, never another exception.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bids_dnn.cli.main import main
from bids_dnn.errors import BidsDnnError
from bids_dnn.io.stimuli import StimulusSet, build_stimulus_set, read_events
from _specs import SMALL_SPEC

SPACE = "MNI152NLin2009cAsym"
SPEC = SMALL_SPEC
EVENTS = "sub-01/func/sub-01_task-shapes_run-1_events.tsv"
FUNC = "derivatives/fmriprep/sub-01/func"
BOLD = f"{FUNC}/sub-01_task-shapes_run-1_space-{SPACE}_desc-preproc_bold.nii.gz"
MASK = f"{FUNC}/sub-01_task-shapes_run-1_space-{SPACE}_desc-brain_mask.nii.gz"
CONFOUNDS = f"{FUNC}/sub-01_task-shapes_run-1_desc-confounds_timeseries.tsv"
ROOT_FILES = {"dataset_description.json", ".bidsignore", "README.md", "descriptions.tsv", "descriptions.json",
              "input_dataset.json",
              "task-shapes_stimuli.tsv", "task-shapes_stimuli.json"}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bids_dnn.workflows.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("failures") / "bids", n_subjects=2, n_runs=2, seed=0)


# ---------------------------------------------------------------------------------------
# ways to break a copy of the dataset (each gets the dataset root and the spec path)
# ---------------------------------------------------------------------------------------


def _edit_events(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path, Path], None]:
    def breaker(bids: Path, spec: Path) -> None:
        path = bids / EVENTS
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        edit(table).to_csv(path, sep="\t", index=False)
    return breaker


def _set_cell(column: str, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[0, column] = value
        return table
    return edit


def _spec_text(text: str) -> Callable[[Path, Path], None]:
    return lambda bids, spec: spec.write_text(text)


def _stimulus(data: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    def breaker(bids: Path, spec: Path) -> None:
        path = bids / "stimuli" / "disc01.png"
        path.write_bytes(data(path.read_bytes()))
    return breaker


def _video_stimulus(bids: Path, spec: Path) -> None:
    (bids / "stimuli" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    _edit_events(_set_cell("stim_file", "clip.mp4"))(bids, spec)


def _escaping_symlink(bids: Path, spec: Path) -> None:
    (bids / "stimuli" / "x.png").symlink_to(spec)  # a file outside the dataset
    _edit_events(_set_cell("stim_file", "x.png"))(bids, spec)


def _mask_shape(bids: Path, spec: Path) -> None:
    import nibabel as nib

    image = nib.load(bids / MASK)
    data = np.asarray(image.dataobj)[:-2]
    nib.save(nib.Nifti1Image(data, image.affine, image.header), bids / MASK)


def _shift_affine(*paths: str) -> Callable[[Path, Path], None]:
    """Move the grid of images by 2 mm along x (same shape, different affine)."""
    def breaker(bids: Path, spec: Path) -> None:
        import nibabel as nib

        for rel in paths:
            image = nib.load(bids / rel)
            affine = image.affine.copy()
            affine[0, 3] += 2.0
            nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine, image.header), bids / rel)
    return breaker


def _two_stimuli(bids: Path, spec: Path) -> None:
    for path in bids.rglob("*_events.tsv"):
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        table[table["stim_file"].isin(["disc01.png", "disc02.png"])].to_csv(path, sep="\t", index=False)


def _bad_description(bids: Path, spec: Path) -> None:
    (bids / "dataset_description.json").write_text("{not json")


def _truncate(path: str, keep: int) -> Callable[[Path, Path], None]:
    def breaker(bids: Path, spec: Path) -> None:
        (bids / path).write_bytes((bids / path).read_bytes()[:keep])
    return breaker


def _replace(path: str, data: bytes) -> Callable[[Path, Path], None]:
    return lambda bids, spec: (bids / path).write_bytes(data)


def _empty(path: str, *, drop_sidecar: bool = False) -> Callable[[Path, Path], None]:
    """Empty a file (0 bytes); optionally delete its JSON sidecar (then the TR comes from the header)."""
    def breaker(bids: Path, spec: Path) -> None:
        (bids / path).write_bytes(b"")
        if drop_sidecar:
            (bids / path.replace(".nii.gz", ".json")).unlink()
    return breaker


# id, breaker, exit code, expected message parts, fails after the shared model outputs were written
CASES = [
    pytest.param(_spec_text(SPEC.replace("permutations: 20", "permutations: many")), 65,
                 ["analyses.rsa.permutations: must be a valid integer", "(got 'many')"], False, id="spec-wrong-type"),
    pytest.param(_spec_text(SPEC + "x: !!python/object/apply:os.system ['touch pwned']\n"), 65,
                 ["not valid YAML", "could not determine a constructor", "python/object/apply:os.system"], False,
                 id="spec-executes-code"),
    pytest.param(_bad_description, 16, ["dataset_description.json is not valid JSON", "--skip-bids-validation"],
                 False, id="description-malformed"),
    pytest.param(_edit_events(lambda t: t.drop(columns=["onset"])), 16,
                 ["sub-01_task-shapes_run-1_events.tsv: missing column(s) onset", "onset and duration columns"],
                 False, id="events-missing-column"),
    pytest.param(_edit_events(_set_cell("onset", "soon")), 16,
                 ["sub-01_task-shapes_run-1_events.tsv: column 'onset' must be numeric (row 2: 'soon')"], False,
                 id="events-non-numeric-onset"),
    pytest.param(_edit_events(_set_cell("duration", "-1")), 16,
                 ["sub-01_task-shapes_run-1_events.tsv: negative duration in row 2"], False,
                 id="events-negative-duration"),
    pytest.param(_edit_events(_set_cell("stim_file", "/etc/passwd")), 16,
                 ["unsafe stimulus path(s)", "/etc/passwd: path must be relative to stimuli/",
                  "stim_file must name a file inside stimuli/"], False, id="stim-file-absolute"),
    pytest.param(_escaping_symlink, 16, ["unsafe stimulus path(s)", "x.png: symlink leaves the dataset (",
                                         "spec.yaml)"],
                 False, id="stimulus-symlink-leaves-dataset"),
    pytest.param(_stimulus(lambda data: data[: len(data) // 2]), 66,
                 ["1 stimulus file(s) missing or unreadable",
                  "disc01.png: not a readable image (OSError: image file is truncated)"], False, id="stimulus-truncated"),
    pytest.param(_stimulus(lambda data: b"hello, I am text"), 66,
                 ["1 stimulus file(s) missing or unreadable", "disc01.png: not a readable image "
                  "(UnidentifiedImageError: cannot identify image file 'disc01.png')"], False, id="stimulus-not-an-image"),
    pytest.param(_video_stimulus, 66, ["1 stimulus file(s) missing or unreadable",
                                       "clip.mp4: not a readable video (InvalidDataError"], False,
                 id="stimulus-video"),
    pytest.param(_two_stimuli, 16, ["only 2 distinct stimuli; RSA needs at least 3"], False, id="fewer-than-3-stimuli"),
    pytest.param(_mask_shape, 66, [(f"sub-01_task-shapes_run-1_space-{SPACE}_desc-brain_mask.nii.gz: images are not "
                                    "on the same grid (shapes (18, 22, 18) vs (16, 22, 18)"),
                                   "use images in the same space and resolution"], True, id="bold-mask-shape-mismatch"),
    pytest.param(_shift_affine(MASK), 66, [(f"sub-01_task-shapes_run-1_space-{SPACE}_desc-preproc_bold.nii.gz and "
                                            f"sub-01_task-shapes_run-1_space-{SPACE}_desc-brain_mask.nii.gz: images "
                                            "are not on the same grid (affines differ by up to 2;"),
                                           "use images in the same space and resolution"], True,
                 id="bold-mask-affine-mismatch"),
    pytest.param(_shift_affine(BOLD.replace("run-1", "run-2"), MASK.replace("run-1", "run-2")), 66,
                 [(f"sub-01_task-shapes_run-2_space-{SPACE}_desc-brain_mask.nii.gz and "
                   f"sub-01_task-shapes_run-1_space-{SPACE}_desc-brain_mask.nii.gz: images are not on the same grid "
                   "(affines differ by up to 2;")], True, id="runs-grid-mismatch"),
    pytest.param(_replace(BOLD, b"not a nifti at all"), 66, ["desc-preproc_bold.nii.gz"], True,
                 id="bold-not-nifti"),
    pytest.param(_truncate(BOLD, 20000), 66, ["desc-preproc_bold.nii.gz"], True, id="bold-truncated"),
    pytest.param(_replace(MASK, b"garbage"), 66, ["desc-brain_mask.nii.gz"], True, id="mask-not-nifti"),
    pytest.param(_empty(BOLD, drop_sidecar=True), 66,
                 [f"preprocessed BOLD: sub-01_task-shapes_run-1_space-{SPACE}_desc-preproc_bold.nii.gz is empty "
                  "(0 bytes)",
                  "regenerate or re-copy it"], False, id="bold-empty-no-sidecar"),
    pytest.param(_empty(BOLD), 66, [f"preprocessed BOLD: sub-01_task-shapes_run-1_space-{SPACE}_desc-preproc_bold"
                                    ".nii.gz is empty (0 bytes)"], False, id="bold-empty"),
    pytest.param(_empty(MASK), 66, [f"brain mask: sub-01_task-shapes_run-1_space-{SPACE}_desc-brain_mask.nii.gz is "
                                    "empty (0 bytes)"], False, id="mask-empty"),
    pytest.param(_empty(CONFOUNDS), 66, ["fMRIPrep confounds: sub-01_task-shapes_run-1_desc-confounds_timeseries.tsv "
                                         "is empty (0 bytes)"], False, id="confounds-empty"),
    pytest.param(_empty(EVENTS), 16, ["sub-01_task-shapes_run-1_events.tsv: empty file (0 bytes)",
                                      "a header row with onset and duration"], False, id="events-empty"),
]


def assert_no_partial_output(out: Path, shared_ok: bool) -> None:
    """Nothing half-written: at most the root files (and, after feature extraction, complete model
    files), and a failed participant's status file recording the failure."""
    if not out.exists():
        return
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".") and ".tmp" in p.name]
    assert not (out / "group").exists()
    for path in files:
        rel = path.relative_to(out)
        if len(rel.parts) > 1 and rel.parts[0].startswith("sub-"):
            assert len(rel.parts) == 3 and rel.parts[1] == "log" and rel.name.endswith("_status.json"), rel
            status = json.loads(path.read_text())
            assert status["complete"] is False and status["failure"]["message"], status
            continue
        if len(rel.parts) == 1:
            assert path.name in ROOT_FILES or path.name.endswith(".html"), rel
            continue
        assert shared_ok and rel.parts[0].startswith("model-"), f"unexpected output {rel}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".tsv":
            pd.read_csv(path, sep="\t")
        elif path.suffix == ".h5":
            from bids_dnn.features.store import read_features

            read_features(path)


@pytest.mark.parametrize("breaker, code, messages, shared_ok", CASES)
def test_input_failure(small_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch, breaker, code: int, messages: list[str],
                       shared_ok: bool) -> None:
    bids = tmp_path / "bids"
    shutil.copytree(small_demo, bids)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    breaker(bids, spec)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = main([str(bids), str(out), "participant", "--participant-label", "01", "--spec", str(spec),
                   "--no-progress"])
    text = " ".join(capsys.readouterr().err.split())  # undo rich's line wrapping
    assert "Traceback" not in text and "unexpected" not in text, text
    for message in messages:
        assert " ".join(message.split()) in text, text
    assert result == code, text
    assert_no_partial_output(out, shared_ok)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------
# fuzzing the events and stimulus parsers
# ---------------------------------------------------------------------------------------

CELLS = st.one_of(st.integers(-5, 100).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["n/a", "", "NaN", "inf", "-1", "1e308", "abc", " 3 ", "0x10", "1,5", '"', "'",
                                   "-0", "1e-400"]),
                  st.text(max_size=6))
COLUMNS = st.lists(st.sampled_from(["onset", "duration", "trial_type", "stim_file", "category", "x", ""]),
                   max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(COLUMNS, st.lists(st.lists(CELLS, max_size=6), max_size=6), st.booleans())
def test_fuzzed_events_table(columns: list[str], rows: list[list[str]], final_newline: bool) -> None:
    text = "\t".join(columns) + "\n" + "\n".join("\t".join(row) for row in rows) + ("\n" if final_newline else "")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sub-01_task-x_events.tsv"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            table = read_events(path)
        except BidsDnnError as exc:
            assert exc.exit_code in (16, 65, 66) and str(exc)
            return
    assert isinstance(table, pd.DataFrame)
    # what BIDS allows: any finite onset (also negative); a finite duration >= 0, or n/a (NaN)
    assert table["onset"].dtype == float and np.isfinite(table["onset"]).all()
    duration = table["duration"].to_numpy(dtype=float)
    assert ((duration >= 0) | np.isnan(duration)).all() and not np.isinf(duration).any()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=200))
def test_fuzzed_events_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.tsv"
        path.write_bytes(data)
        try:
            read_events(path)
        except BidsDnnError:
            pass


@pytest.fixture(scope="module")
def stimulus_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root whose stimuli/ holds good, broken and hostile files."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzz") / "bids"
    stimuli = root / "stimuli"
    (stimuli / "sub").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(stimuli / f"ok{i}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(stimuli / "sub" / "deep.png")
    (stimuli / "empty.png").write_bytes(b"")
    data = (stimuli / "ok0.png").read_bytes()
    (stimuli / "trunc.png").write_bytes(data[: len(data) // 2])
    (stimuli / "text.png").write_text("not an image")
    (stimuli / "notes.txt").write_text("x")
    (stimuli / "clip.mp4").write_bytes(b"x")
    outside = root.parent / "outside.png"
    outside.write_bytes(data)
    (stimuli / "escape.png").symlink_to(outside)
    (stimuli / "loop.png").symlink_to(stimuli / "loop.png")
    (stimuli / "adir.png").mkdir()
    return root


NAMES = st.one_of(
    st.sampled_from(["ok0.png", "ok1.png", "ok2.png", "ok3.png", "sub/deep.png", "empty.png", "trunc.png", "text.png",
                     "notes.txt", "clip.mp4", "escape.png", "loop.png", "adir.png", "missing.png", "relative.png",
                     "../ok0.png", "/etc/passwd", "C:\\x.png", "sub\\deep.png", "./ok1.png", "ok1.png ", " ok2.png",
                     "", "n/a", "ok\x00.png", "a" * 300 + ".png", "sub/../ok0.png", "~/x.png", "sub/", ".", "..",
                     "stimuli/ok0.png", "OK0.PNG"]),
    st.text(max_size=12))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.lists(st.tuples(NAMES, st.sampled_from(["a", "b", "", "n/a"])), max_size=8), min_size=1, max_size=3),
       st.sampled_from(["stim_file", "stim_id", "trial_type"]), st.sampled_from([None, "category", "nope"]))
def test_fuzzed_stimulus_set(stimulus_dataset: Path, runs: list[list[tuple[str, str]]], source: str,
                             category_column: str | None) -> None:
    tables = []
    with tempfile.TemporaryDirectory() as folder:
        for i, rows in enumerate(runs):
            body = "".join(f"{j}\t1\t{category}\t{' '.join(name.splitlines()).replace(chr(9), ' ')}\n"
                           for j, (name, category) in enumerate(rows))
            path = Path(folder) / f"run-{i}_events.tsv"
            path.write_text("onset\tduration\tcategory\tstim_file\n" + body, encoding="utf-8", errors="surrogatepass")
            try:
                tables.append(read_events(path))
            except BidsDnnError:
                return
    try:
        stimuli = build_stimulus_set(tables, stimulus_dataset, source=source, category_column=category_column,
                                     trial_type_map={"a": "ok0.png"})
    except BidsDnnError as exc:
        assert exc.exit_code in (16, 66) and str(exc)
        return
    assert isinstance(stimuli, StimulusSet) and stimuli.n_stimuli >= 3
    assert len(set(stimuli.stim_ids)) == stimuli.n_stimuli
    root = stimulus_dataset.resolve()
    assert all(root in p.resolve().parents for p in stimuli.paths)


@pytest.mark.parametrize("name", ["relative.png", "leaves.png", "a" * 300 + ".png"])
def test_missing_stimulus_is_not_called_unsafe(stimulus_dataset: Path, name: str) -> None:
    """Regressions found by the fuzzer: a missing file whose name contains 'relative' / 'leaves', or
    a name over the file-system limit, is a missing input (66), not an unsafe path or a traceback."""
    from bids_dnn.errors import InputMissingError

    table = pd.DataFrame({"onset": [1.0, 2.0, 3.0, 4.0], "duration": [1.0] * 4,
                          "stim_file": ["ok0.png", "ok1.png", "ok2.png", name]})
    with pytest.raises(InputMissingError, match="1 stimulus file"):
        build_stimulus_set([table], stimulus_dataset)
