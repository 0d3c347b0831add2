"""A video dataset through the whole command line.

Every demo image becomes a lossless video (Matroska / FFV1, RGB) of 4 identical frames; the
events name the videos. The mean-over-frames features must then equal the image features (up
to float rounding of the mean of identical values), and so must the RSA table of sub-01.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_dnn.cli.main import main
from tests._specs import SMALL_SPEC

av = pytest.importorskip("av")


def _image_to_video(image_path: Path, video_path: Path, n_frames: int = 4, rate: int = 4) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(image_path).convert("RGB"))
    with av.open(str(video_path), "w") as out:
        stream = out.add_stream("ffv1", rate=rate)
        stream.height, stream.width = pixels.shape[:2]
        stream.pix_fmt = "bgr0"
        for _ in range(n_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _run(bids: Path, out: Path, spec: Path) -> None:
    assert main([str(bids), str(out), "participant", "--spec", str(spec), "--participant-label", "01",
                 "--no-progress", "--skip-bids-validation"]) == 0


def test_video_stimuli_give_the_image_results(demo_dataset: Path, tmp_path: Path) -> None:
    from bids_dnn.features.store import read_features

    videos = tmp_path / "bids"
    shutil.copytree(demo_dataset, videos)
    for image in sorted((videos / "stimuli").glob("*.png")):
        _image_to_video(image, image.with_suffix(".mkv"))
        image.unlink()
    for events in videos.rglob("*_events.tsv"):
        table = pd.read_csv(events, sep="\t", dtype=str, keep_default_na=False)
        table["stim_file"] = table["stim_file"].str.replace(".png", ".mkv", regex=False)
        table.to_csv(events, sep="\t", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC + "stimuli:\n  video: {fps: 4}\n")
    _run(demo_dataset, tmp_path / "images_out", spec)
    _run(videos, tmp_path / "videos_out", spec)

    image_features = read_features(next((tmp_path / "images_out").rglob("*_features.h5")))
    video_features = read_features(next((tmp_path / "videos_out").rglob("*_features.h5")))
    assert list(video_features.stim_ids) == list(image_features.stim_ids)
    for layer, values in image_features.layers.items():
        np.testing.assert_allclose(video_features.layers[layer], values, rtol=1e-5, atol=1e-6)

    def rsa(out: Path) -> pd.DataFrame:
        return pd.read_csv(next(out.rglob("sub-01_*_rsa.tsv")), sep="\t")

    images, clips = rsa(tmp_path / "images_out"), rsa(tmp_path / "videos_out")
    assert list(clips["layer"]) == list(images["layer"]) and list(clips["roi"]) == list(images["roi"])
    np.testing.assert_allclose(clips["score"], images["score"], atol=1e-4)
    stimuli = pd.read_csv(next((tmp_path / "videos_out").glob("task-*_stimuli.tsv")), sep="\t")
    assert stimuli["stim_file"].str.endswith(".mkv").all()
    report = (tmp_path / "videos_out" / "sub-01.html").read_text()
    assert "Grey tiles" not in report  # the montage shows each video's first frame, not a placeholder
