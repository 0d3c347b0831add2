"""Video stimuli (PyAV decoding, frame sampling, mean / clip aggregation) and BEP044 stimuli.tsv.

Videos are written here with PyAV: 3 s at 10 frames per second, every frame one solid colour
that encodes its index (red = 8 i, green = 255 - 8 i), so the frame behind every sample can be
read back from its pixels and compared with the nearest-frame rule computed independently.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bids_dnn.errors import AnalysisError, BidsValidationError, InputMissingError
from bids_dnn.dnn.extract import extract_features
from bids_dnn.dnn.models import load_model
from bids_dnn.spec import ModelSpec, TransformSpec, VideoOptions
from bids_dnn.io.stimuli import build_stimulus_set, condition_column, read_events, stim_id_for
from bids_dnn.io.stimulus_loading import check_stimulus_file, load_stimulus

av = pytest.importorskip("av")

RATE, N_FRAMES, SIZE = 10, 30, 16
#: (extension, codec, pixel format, lossless)
FORMATS = [("mp4", "libx264", "yuv420p", False), ("mkv", "ffv1", "bgr0", True),
           ("webm", "libvpx-vp9", "yuv420p", False), ("avi", "mpeg4", "yuv420p", False),
           ("mov", "png", "rgb24", True)]


def planted_colour(i: int, offset: int = 0) -> np.ndarray:
    return np.array([8 * i, 255 - 8 * i, (128 + offset) % 256], dtype=np.uint8)


def write_video(path: Path, n_frames: int = N_FRAMES, rate: int = RATE, codec: str = "libx264",
                pix_fmt: str = "yuv420p", offset: int = 0, size: int = SIZE) -> Path:
    """A video whose frame i is filled with planted_colour(i, offset)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = pix_fmt
        for i in range(n_frames):
            pixels = np.broadcast_to(planted_colour(i, offset), (size, size, 3)).copy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def frame_index(image: Image.Image, offset: int = 0) -> tuple[int, float]:
    """The planted frame an RGB image shows, and its largest pixel error."""
    pixels = np.asarray(image, dtype=float)
    palette = np.stack([planted_colour(i, offset) for i in range(N_FRAMES)]).astype(float)
    mean = pixels.reshape(-1, 3).mean(axis=0)
    index = int(np.argmin(np.abs(palette - mean).sum(axis=1)))
    return index, float(np.abs(pixels - palette[index]).max())


def expected_frames(times: np.ndarray) -> list[int]:
    """Nearest frame (at i / RATE) to each time; np.argmin keeps the earlier frame on a tie."""
    frame_times = np.arange(N_FRAMES) / RATE
    return [int(np.argmin(np.round(np.abs(frame_times - t), 9))) for t in times]


# ---------------------------------------------------------------------------------------
# decoding and frame sampling
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext, codec, pix_fmt, lossless", FORMATS, ids=[f[0] for f in FORMATS])
def test_sampling_picks_the_planted_frames(tmp_path: Path, ext: str, codec: str, pix_fmt: str,
                                           lossless: bool) -> None:
    path = write_video(tmp_path / f"clip.{ext}", codec=codec, pix_fmt=pix_fmt)
    assert check_stimulus_file(path) is None
    cases = {  # options -> sample times (s)
        VideoOptions(fps=2): np.arange(6) / 2,  # 0, 0.5, ... 2.5 (< 3 s)
        VideoOptions(fps=3): np.arange(9) / 3,  # 1/3 -> frame 3, 2/3 -> frame 7, ...
        VideoOptions(fps=10): np.arange(30) / 10,  # every frame once
        VideoOptions(fps=25): np.arange(75) / 25,  # faster than the video: frames repeat
        VideoOptions(fps=0.2): np.array([0.0]),  # at least one frame
        VideoOptions(n_frames=4): np.arange(4) * 0.75,  # 0.75 and 2.25 are ties -> earlier frame
    }
    for options, times in cases.items():
        frames = load_stimulus(path, options)
        assert isinstance(frames, list) and len(frames) == len(times)
        assert all(f.mode == "RGB" and f.size == (SIZE, SIZE) for f in frames)
        got = [frame_index(f) for f in frames]
        assert [g[0] for g in got] == expected_frames(times), options
        assert max(g[1] for g in got) <= (0 if lossless else 6)
    assert load_stimulus(path, VideoOptions(n_frames=4))[1].tobytes() == \
        load_stimulus(path, VideoOptions(n_frames=4))[1].tobytes()  # deterministic


def test_images_load_as_before_and_default_rate(tmp_path: Path) -> None:
    image_path = tmp_path / "a.png"
    Image.fromarray(np.full((5, 7, 4), 200, np.uint8), "RGBA").save(image_path)
    image = load_stimulus(image_path, VideoOptions())
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (7, 5)
    frames = load_stimulus(write_video(tmp_path / "v.mp4"))  # no options: 2 frames per second
    assert [frame_index(f)[0] for f in frames] == [0, 5, 10, 15, 20, 25]


def _broken_videos(folder: Path) -> dict[str, str]:
    """file name -> expected reason, for videos that must be refused."""
    good = write_video(folder / "good.mp4").read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.avi").write_text("not a video")
    (folder / "half.mp4").write_bytes(good[: len(good) // 2])  # moov atom at the end: lost
    mkv = write_video(folder / "full.mkv", codec="ffv1", pix_fmt="bgr0").read_bytes()
    (folder / "half.mkv").write_bytes(mkv[: len(mkv) // 2])  # demuxes, but ends early
    return {"empty.mp4": "empty file (0 bytes)", "text.avi": "not a readable video (InvalidDataError",
            "half.mp4": "not a readable video (InvalidDataError",
            "half.mkv": "not a readable video (frames end at"}


def test_broken_videos_are_listed_with_exit_66(tmp_path: Path) -> None:
    stimuli = tmp_path / "bids" / "stimuli"
    stimuli.mkdir(parents=True)
    reasons = _broken_videos(stimuli)
    for name, reason in reasons.items():
        assert reason in check_stimulus_file(stimuli / name), name
    events = pd.DataFrame({"onset": np.arange(6.0), "duration": 1.0,
                           "stim_file": ["good.mp4", "full.mkv", *reasons]})
    with pytest.raises(InputMissingError) as info:
        build_stimulus_set([events], tmp_path / "bids")
    assert info.value.exit_code == 66
    message = str(info.value)
    assert message.startswith("4 stimulus file(s) missing or unreadable")
    for name, reason in reasons.items():
        assert f"{name}: {reason}" in message
    assert "good.mp4" not in message and "full.mkv" not in message


def test_without_pyav_the_hint_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_video(tmp_path / "v.mp4")
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    for call in (lambda: check_stimulus_file(path), lambda: load_stimulus(path)):
        with pytest.raises(InputMissingError, match="PyAV") as info:
            call()
        assert "pip install 'bids_dnn[video]'" in str(info.value) and info.value.exit_code == 66


# ---------------------------------------------------------------------------------------
# aggregation: mean over frames (image models), one clip (video models)
# ---------------------------------------------------------------------------------------


def test_mean_aggregation_equals_mean_of_frame_activations(tmp_path: Path) -> None:
    loaded = load_model(ModelSpec(name="alexnet", weights="random", init_seed=3,
                                  transform=TransformSpec(resize=64, crop=64)))
    options = VideoOptions(fps=2)
    paths = [write_video(tmp_path / "a.mp4"), write_video(tmp_path / "b.mp4", n_frames=20, offset=60)]
    stimuli = [lambda p=p: load_stimulus(p, options) for p in paths]
    rows: dict[str, list[np.ndarray]] = {}
    extract_features(loaded, stimuli, ["features.2", "classifier.6"], batch_size=2, aggregate=options.aggregate,
                     on_batch=lambda start, batch: [rows.setdefault(k, []).append(v) for k, v in batch.items()])
    got = {k: np.concatenate(v) for k, v in rows.items()}
    module = loaded.module.eval()
    for row, path in enumerate(paths):
        frames = load_stimulus(path, options)
        assert len(frames) == (6 if row == 0 else 4)
        x = torch.stack([loaded.transform(f) for f in frames])
        with torch.no_grad():  # plain forward pass, no hooks
            reference = {"features.2": module.features[:3](x).flatten(1), "classifier.6": module(x)}
        for layer, value in reference.items():
            value = value.double().numpy()
            np.testing.assert_allclose(got[layer][row], value.mean(axis=0), rtol=1e-4, atol=1e-5)
            assert not np.allclose(got[layer][row], value[0], atol=1e-3)  # frames differ: not one frame


def test_clip_aggregation_equals_forward_pass_on_the_stacked_clip(tmp_path: Path) -> None:
    loaded = load_model(ModelSpec(name="r3d_18", weights="random", init_seed=1,
                                  transform=TransformSpec(resize=32, crop=32)))
    options = VideoOptions(n_frames=4, aggregate="clip")
    paths = [write_video(tmp_path / "a.mp4"), write_video(tmp_path / "b.webm", codec="libvpx-vp9", offset=90,
                                                          n_frames=17)]
    rows: list[np.ndarray] = []
    extract_features(loaded, [lambda p=p: load_stimulus(p, options) for p in paths], ["fc"], batch_size=2,
                     aggregate="clip", on_batch=lambda start, batch: rows.append(batch["fc"]))
    clips = torch.stack([torch.stack([loaded.transform(f) for f in load_stimulus(p, options)], dim=1) for p in paths])
    assert clips.shape == (2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = loaded.module.eval()(clips).numpy()
    np.testing.assert_allclose(np.concatenate(rows), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(AnalysisError, match="'mean' but r3d_18 is a video model"):
        extract_features(loaded, [], ["fc"], aggregate="mean", on_batch=lambda *a: None)
    alexnet = load_model(ModelSpec(name="alexnet", weights="random"))
    with pytest.raises(AnalysisError, match="'clip' but alexnet is an image model") as info:
        extract_features(alexnet, [], ["fc"], aggregate="clip", on_batch=lambda *a: None)
    assert "aggregate: mean" in str(info.value)


# ---------------------------------------------------------------------------------------
# BEP044 stimuli.tsv
# ---------------------------------------------------------------------------------------

TABLE = pd.DataFrame({"stim_id": ["01", "cat_b", "dog", "car", "unused"],
                      "stim_file": ["img/a.png", "img/b.png", "img/c.png", "img/d.png", "img/e.png"],
                      "category": ["animal", "animal", "animal", "object", "object"],
                      "animacy": ["alive", "alive", "alive", "dead", "dead"]})


@pytest.fixture
def tsv_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    (root / "stimuli" / "img").mkdir(parents=True)
    for i, name in enumerate("abcde"):
        Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(root / "stimuli" / "img" / f"{name}.png")
    TABLE.to_csv(root / "stimuli" / "stimuli.tsv", sep="\t", index=False)
    return root


def _events(folder: Path, ids: list[str], name: str = "run-1_events.tsv", column: str = "stim_id") -> pd.DataFrame:
    """Events with one stimulus per id and a fixation between them; read back as the pipeline does."""
    rows = []
    for i, sid in enumerate(ids):
        rows.append({"onset": 2.0 * i, "duration": 1.0, "trial_type": "stim", column: sid})
        rows.append({"onset": 2.0 * i + 1, "duration": 0.5, "trial_type": "fixation", column: "n/a"})
    path = folder / name
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return read_events(path)


@pytest.mark.parametrize("source", ["stimuli_tsv", "stim_file"])  # stim_file: detected automatically
def test_stimuli_tsv_maps_ids_to_files(tsv_dataset: Path, tmp_path: Path, source: str) -> None:
    runs = [_events(tmp_path, ["dog", "01", "car", "cat_b"]), _events(tmp_path, ["car", "01", "dog", "cat_b"], "r2")]
    stimuli = build_stimulus_set(runs, tsv_dataset, source=source, ignore_trial_types=["fixation"])
    # order: category, then file; ids and categories from the table ("01" stays a string)
    assert stimuli.stim_ids == ["01", "cat_b", "dog", "car"]
    assert stimuli.files == ["img/a.png", "img/b.png", "img/c.png", "img/d.png"]
    assert stimuli.categories == ["animal", "animal", "animal", "object"]
    assert stimuli.paths == [tsv_dataset / "stimuli" / f for f in stimuli.files]
    assert stimuli.events_source == "stimuli_tsv" and not stimuli.has_video
    import hashlib

    assert stimuli.sha256[2] == hashlib.sha256((tsv_dataset / "stimuli/img/c.png").read_bytes()).hexdigest()
    # GLM conditions go through the same table, whatever source participant.py passes
    for passed in ("stim_file", "stimuli_tsv"):
        conditions = condition_column(runs[0], stimuli, passed, None, ["fixation"])
        assert list(conditions) == ["dog", "nuisance_fixation", "01", "nuisance_fixation", "car",
                                    "nuisance_fixation", "cat_b", "nuisance_fixation"]


def test_category_column_may_name_a_table_column(tsv_dataset: Path, tmp_path: Path) -> None:
    runs = [_events(tmp_path, ["dog", "01", "car", "cat_b"])]
    stimuli = build_stimulus_set(runs, tsv_dataset, source="stimuli_tsv", category_column="animacy")
    assert stimuli.categories == ["alive", "alive", "alive", "dead"]
    stimuli = build_stimulus_set(runs, tsv_dataset, source="stimuli_tsv", category_column="trial_type")
    assert stimuli.categories == ["stim"] * 4 and stimuli.stim_ids == ["01", "cat_b", "dog", "car"]
    with pytest.raises(BidsValidationError, match="'nope' is not an events or stimuli.tsv column"):
        build_stimulus_set(runs, tsv_dataset, source="stimuli_tsv", category_column="nope")


def test_stimulus_derivatives_table_wins(tsv_dataset: Path, tmp_path: Path) -> None:
    derived = tmp_path / "derived"
    (derived / "x").mkdir(parents=True)
    for name in ("p", "q", "r"):
        Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(derived / "x" / f"{name}.png")
    pd.DataFrame({"stim_id": ["dog", "01", "car"], "stim_file": ["x/p.png", "x/q.png", "x/r.png"]}).to_csv(
        derived / "stimuli.tsv", sep="\t", index=False)
    runs = [_events(tmp_path, ["dog", "01", "car"])]
    stimuli = build_stimulus_set(runs, tsv_dataset, source="stimuli_tsv", extra_dirs=[derived])
    assert stimuli.files == ["x/p.png", "x/q.png", "x/r.png"] and stimuli.stim_ids == ["dog", "01", "car"]
    assert stimuli.paths[0] == derived / "x" / "p.png"
    assert stimuli.categories == ["stim"] * 3  # no category column there: the events' trial_type


@pytest.mark.parametrize("table, ids, message", [
    (TABLE, ["dog", "ghost", "car", "zebra", "01"],
     "2 stim_id(s) not in the table: 'ghost', 'zebra'"),
    (pd.concat([TABLE, TABLE.iloc[[2, 2, 3]]]), ["dog", "01", "car"],
     "2 problem(s):\n  duplicate stim_id 'car' (2 rows)\n  duplicate stim_id 'dog' (3 rows)"),
    (TABLE.drop(columns="stim_file"), ["dog", "01", "car"], "missing column(s) stim_file"),
    (TABLE.assign(stim_file=["img/a.png", "", "img/c.png", "img/d.png", ""]), ["dog", "cat_b", "car"],
     "1 stim_id(s) without a stim_file: 'cat_b'"),
    (TABLE.assign(stim_file=["../a.png", "img/b.png", "img/c.png", "img/d.png", ""]), ["dog", "01", "car"],
     "unsafe stimulus path(s):\n  ../a.png: path must be relative"),
    (None, ["dog", "01", "car"], "stimuli.source is 'stimuli_tsv' but there is no stimuli.tsv"),
])
def test_stimuli_tsv_errors(tsv_dataset: Path, tmp_path: Path, table: pd.DataFrame | None, ids: list[str],
                            message: str) -> None:
    target = tsv_dataset / "stimuli" / "stimuli.tsv"
    target.unlink()
    if table is not None:
        table.to_csv(target, sep="\t", index=False)
    with pytest.raises(BidsValidationError) as info:
        build_stimulus_set([_events(tmp_path, ids)], tsv_dataset, source="stimuli_tsv")
    assert message in str(info.value) and info.value.exit_code == 16


def test_stim_file_source_is_unchanged_by_a_table(tsv_dataset: Path, tmp_path: Path) -> None:
    """Events with stim_file ignore stimuli.tsv: ids are file stems, categories from the events."""
    runs = [_events(tmp_path, ["img/c.png", "img/a.png", "img/d.png"], column="stim_file")]
    stimuli = build_stimulus_set(runs, tsv_dataset, ignore_trial_types=["fixation"])
    assert stimuli.stim_ids == ["img/a", "img/c", "img/d"] and stimuli.events_source == "stim_file"
    assert stimuli.categories == ["stim"] * 3
    assert list(condition_column(runs[0], stimuli, "stim_file", None, ["fixation"]))[::2] == \
        ["img/c", "img/a", "img/d"]


# ---------------------------------------------------------------------------------------
# end to end: stim_id + stimuli.tsv gives the same RSA table as stim_file
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bids_dnn.workflows.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("media") / "bids", n_subjects=2, n_runs=2, seed=0)


@pytest.mark.slow
def test_cli_stimuli_tsv_run_equals_stim_file_run(small_demo: Path, tmp_path: Path) -> None:
    from _specs import SMALL_SPEC

    from bids_dnn.cli.main import main

    bids = tmp_path / "bids"
    shutil.copytree(small_demo, bids)
    table = {}
    for path in sorted(bids.glob("sub-*/func/*_events.tsv")):
        events = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        ids = ["n/a" if f == "n/a" else stim_id_for(f) for f in events["stim_file"]]  # n/a: response events
        table.update({sid: (f, c) for sid, f, c in zip(ids, events["stim_file"], events["trial_type"]) if f != "n/a"})
        events.insert(3, "stim_id", ids)
        events.drop(columns="stim_file").to_csv(path, sep="\t", index=False)
    pd.DataFrame([(sid, f, c) for sid, (f, c) in sorted(table.items(), reverse=True)],
                 columns=["stim_id", "stim_file", "category"]).to_csv(bids / "stimuli" / "stimuli.tsv",
                                                                     sep="\t", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC)
    tables = {}
    for name, dataset in (("file", small_demo), ("tsv", bids)):
        out = tmp_path / f"out_{name}"
        assert main([str(dataset), str(out), "participant", "--participant-label", "01", "--spec", str(spec),
                     "--no-progress"]) == 0
        [rsa] = (out / "sub-01" / "func").glob("*_model-alexnet_rsa.tsv")
        tables[name] = pd.read_csv(rsa, sep="\t")
        stimuli = pd.read_csv(out / "task-shapes_stimuli.tsv", sep="\t")
        assert len(stimuli) == 24
    pd.testing.assert_frame_equal(tables["file"], tables["tsv"])
    assert len(tables["file"]) > 0 and tables["file"]["score"].notna().all()


def test_events_accept_what_bids_accepts(tmp_path: Path) -> None:
    """Negative onsets (a response before the first volume) and duration n/a are valid BIDS."""
    from bids_dnn.io.stimuli import read_events

    path = tmp_path / "sub-01_task-x_events.tsv"
    path.write_text("onset\tduration\ttrial_type\n-2.5\tn/a\tresponse\n4\t1\tstim\n")
    table = read_events(path)
    assert table["onset"].tolist() == [-2.5, 4.0]
    assert np.isnan(table["duration"].iloc[0]) and table["duration"].iloc[1] == 1.0
    assert table.attrs["source_file"] == path.name
