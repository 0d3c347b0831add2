"""The stimulus thumbnail registry of the reports: one renderer per kind, images unchanged, sound
spectrograms that peak at a planted tone, text wrapping that keeps every word, and the montage that
draws them."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from bids_dnn.io.stimulus_loading import STIMULUS_KINDS, load_image
from bids_dnn.report import figures as figs
from bids_dnn.report import thumbnails as th
from bids_dnn.report.drivers_sections import stimulus_thumbnail
from bids_dnn.report.thumbnails import (
    ELLIPSIS,
    THUMBNAIL_RENDERERS,
    Thumbnail,
    render_thumbnail,
    sound_picture,
    text_in_tile,
    wrap_text,
)

WORDS = ["the", "a", "goat", "hides", "after", "rain", "bright", "dog", "stays", "under", "old", "roof", "quietly",
         "wrench", "harbour", "is", "x", "valley"]


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """A 16-bit mono WAV (the standard library's writer)."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path


def tone(frequency: float, rate: int, seconds: float, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return 0.5 * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi)) + noise * rng.normal(size=t.size)


# ---------------------------------------------------------------------------------------
# Registry and dispatch
# ---------------------------------------------------------------------------------------


def test_every_stimulus_kind_has_a_renderer() -> None:
    assert set(THUMBNAIL_RENDERERS) == set(STIMULUS_KINDS)


@pytest.mark.parametrize(("name", "kind"), [("a.png", "image"), ("b.JPG", "image"), ("c.mp4", "video"),
                                            ("d.webm", "video"), ("e.txt", "text"), ("f.wav", "audio"),
                                            ("g.FLAC", "audio"), ("h.mp3", "audio"), ("i.xyz", "image")])
def test_render_thumbnail_dispatches_on_the_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                 kind: str) -> None:
    calls: list[tuple[str, Path, int]] = []
    for key in THUMBNAIL_RENDERERS:
        monkeypatch.setitem(THUMBNAIL_RENDERERS, key,
                            lambda path, size, key=key: calls.append((key, path, size)) or Thumbnail(key, None))
    path = tmp_path / name
    path.write_bytes(b"content")
    thumbnail = render_thumbnail(path, 50)
    assert calls == [(kind, path, 50)] and thumbnail.kind == kind
    # an explicit kind wins over the extension; a text given as such reads no file
    calls.clear()
    assert render_thumbnail(path, 50, kind="audio").kind == "audio" and calls == [("audio", path, 50)]
    calls.clear()
    given = render_thumbnail(None, 50, text="a text from stimuli.tsv")
    assert calls == [] and given.kind == "text" and given.text == "a text from stimuli.tsv"


def test_missing_or_unreadable_stimuli_have_no_thumbnail(tmp_path: Path) -> None:
    assert render_thumbnail(None) is None and render_thumbnail(tmp_path / "absent.wav") is None
    for name, data in (("broken.png", b"not an image"), ("broken.wav", b"RIFF not a sound"),
                       ("blank.txt", b"  \n "), ("latin1.txt", "caf\u00e9".encode("latin-1"))):
        (tmp_path / name).write_bytes(data)
        assert render_thumbnail(tmp_path / name) is None, name
        assert stimulus_thumbnail(tmp_path / name) is None, name


def test_image_thumbnails_are_unchanged(tmp_path: Path, rng: np.random.Generator) -> None:
    """The picture is the reports' earlier one: decoded at twice the size, then shrunk (same pixels)."""
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, size=(300, 420, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(0, 256, size=(90, 40), dtype=np.uint8), "L").save(tmp_path / "grey.png")
    rgba = rng.integers(0, 256, size=(50, 70, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    for name in ("rgb.png", "grey.png", "alpha.png"):
        for size in (60, 144, 192):
            expected = load_image(tmp_path / name, shorter_side=2 * size)
            expected.thumbnail((size, size))
            thumbnail = render_thumbnail(tmp_path / name, size)
            assert thumbnail.kind == "image" and thumbnail.text is None and thumbnail.caption == ""
            assert thumbnail.image.mode == "RGB" and thumbnail.image.size == expected.size
            np.testing.assert_array_equal(np.asarray(thumbnail.image), np.asarray(expected.convert("RGB")))
            np.testing.assert_array_equal(np.asarray(stimulus_thumbnail(tmp_path / name, size)),
                                          np.asarray(thumbnail.image))


# ---------------------------------------------------------------------------------------
# Sound
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "frequency"), [(16000, 1000.0), (16000, 3500.0), (44100, 440.0),
                                                 (22050, 7000.0)])
def test_spectrogram_peaks_at_the_frequency_of_a_tone(rng: np.random.Generator, rate: int, frequency: float) -> None:
    picture = sound_picture(tone(frequency, rate, 0.8, rng), rate)
    n_frequencies, n_frames = picture.spectrogram_db.shape
    assert picture.frequencies.shape == (n_frequencies,) and picture.times.shape == (n_frames,)
    assert picture.frequencies[0] == 0 and picture.frequencies[-1] == pytest.approx(rate / 2)
    bin_width = picture.frequencies[1] - picture.frequencies[0]
    peak_per_frame = picture.frequencies[np.argmax(picture.spectrogram_db, axis=0)]
    np.testing.assert_allclose(peak_per_frame, frequency, atol=bin_width)  # in every frame
    assert picture.spectrogram_db.max() == pytest.approx(0.0)
    assert picture.spectrogram_db.min() >= picture.floor_db
    # far from the tone, only noise: at least 30 dB below it
    far = np.abs(picture.frequencies - frequency) > 10 * bin_width
    assert picture.spectrogram_db[far].max() < -30


def test_spectrogram_equals_scipy_and_the_envelope_a_loop(rng: np.random.Generator) -> None:
    from scipy.signal import spectrogram

    rate = 16000
    samples = tone(1200.0, rate, 0.37, rng, noise=0.05)
    picture = sound_picture(samples, rate, n_columns=50)
    window = 2 ** round(np.log2(0.02 * rate))
    hop = min(window, -(-(samples.size - window) // 49))
    frequencies, times, magnitude = spectrogram(samples, fs=rate, window="hann", nperseg=window,
                                                noverlap=window - hop, detrend=False, mode="magnitude")
    expected = np.maximum(20 * np.log10(magnitude / magnitude.max()), picture.floor_db)
    np.testing.assert_allclose(picture.spectrogram_db, expected, atol=1e-9)
    np.testing.assert_allclose(picture.times, times)
    assert 40 <= picture.times.size <= 60  # about n_columns frames
    n = samples.size
    for column in range(50):  # stretch k: samples floor(k n / 50) up to floor((k + 1) n / 50)
        part = samples[column * n // 50:(column + 1) * n // 50]
        assert picture.envelope[0, column] == part.min() and picture.envelope[1, column] == part.max()


def test_a_sound_shorter_than_a_window_and_a_silent_one() -> None:
    short = sound_picture(np.array([0.1, -0.2, 0.3]), 8000, n_columns=10)
    assert short.envelope.shape == (2, 10) and short.spectrogram_db.shape[1] == 1
    silent = sound_picture(np.zeros(500), 8000)
    assert np.all(silent.spectrogram_db == silent.floor_db)
    assert th.draw_sound_image(silent, 40).size == (40, 40)


def test_sound_thumbnail_of_a_wav_file(tmp_path: Path, rng: np.random.Generator) -> None:
    pytest.importorskip("av")
    path = write_wav(tmp_path / "beep.wav", tone(2000.0, 16000, 0.5, rng), 16000)
    thumbnail = render_thumbnail(path, 96)
    assert thumbnail.kind == "audio" and thumbnail.caption == "0.50 s, 16 kHz"
    assert thumbnail.image.mode == "RGB" and thumbnail.image.size == (96, 96)
    assert stimulus_thumbnail(path, 96).size == (96, 96)


def test_sound_caption() -> None:
    assert th.sound_caption(1.0, 16000) == "1.00 s, 16 kHz"
    assert th.sound_caption(2.345, 44100) == "2.35 s, 44.1 kHz"
    assert th.sound_caption(60.0, 22050, cropped=True) == "> 60.00 s, 22.1 kHz"


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------


def test_text_wrapping_keeps_every_word(rng: np.random.Generator) -> None:
    for _ in range(20):
        words = list(rng.choice(WORDS, size=int(rng.integers(1, 40))))
        text = " ".join(words)
        for width in range(max(len(w) for w in words), 50):
            lines = wrap_text(text, width)
            assert all(len(line) <= width for line in lines)
            assert " ".join(lines).split() == words


def test_text_wrapping_keeps_paragraphs_and_cuts_long_words() -> None:
    assert wrap_text("first line\n\nsecond", 40) == ["first line", "second"]
    lines = wrap_text("supercalifragilistic", 6)
    assert all(len(line) <= 6 for line in lines) and "".join(lines) == "supercalifragilistic"


def test_a_long_text_is_ellipsised_to_a_prefix(rng: np.random.Generator) -> None:
    words = list(rng.choice(WORDS, size=60))
    text = " ".join(words)
    lines = wrap_text(text, 20, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith(ELLIPSIS) and all(len(line) <= 20 for line in lines)
    shown = " ".join(lines)[:-1].split()
    assert words[:len(shown) - 1] == shown[:-1] and words[len(shown) - 1].startswith(shown[-1])
    assert wrap_text(text, 20, max_lines=100) == wrap_text(text, 20)


def test_text_in_tile_fits_the_tile_and_picks_the_largest_size(rng: np.random.Generator) -> None:
    short, _ = text_in_tile("a dog", 70.0)
    assert short == ["a dog"] and text_in_tile("a dog", 70.0)[1] == max(th.TEXT_TILE_FONT_SIZES)
    usable = th.TEXT_TILE_USABLE * 70.0
    for n_words in (5, 12, 25, 200):
        text = " ".join(rng.choice(WORDS, size=n_words))
        lines, size = text_in_tile(text, 70.0)
        assert size in th.TEXT_TILE_FONT_SIZES
        assert max(th._text_width_points(line, size) for line in lines) <= usable
        assert len(lines) * th.LINE_HEIGHT_EM * size <= usable
        if lines[-1].endswith(ELLIPSIS):
            assert size == min(th.TEXT_TILE_FONT_SIZES)
        else:
            assert " ".join(lines).split() == text.split()
    # a given size is kept (and the text ellipsised when it does not fit)
    lines, size = text_in_tile(" ".join(["word"] * 100), 70.0, font_size=8.0)
    assert size == 8.0 and lines[-1].endswith(ELLIPSIS)


def test_text_thumbnail_of_a_file_and_of_a_given_text(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("\ufeffThe tiny goat hides.\r\n", encoding="utf-8")
    thumbnail = render_thumbnail(tmp_path / "s.txt", 80)
    assert thumbnail.kind == "text" and thumbnail.text == "The tiny goat hides." and thumbnail.caption == ""
    assert thumbnail.image.size == (80, 80)
    pixels = np.asarray(thumbnail.image)
    assert (pixels < 128).any()  # the tile's picture holds dark text on the light background
    assert tuple(pixels[-1, -1]) == th.TEXT_TILE_COLOUR


# ---------------------------------------------------------------------------------------
# The montage
# ---------------------------------------------------------------------------------------


def test_montage_writes_texts_into_tiles_and_sound_captions_as_labels() -> None:
    from PIL import Image

    sound = Thumbnail("audio", Image.new("RGB", (40, 40), (0, 0, 255)), caption="1.00 s, 16 kHz")
    long_text = " ".join(["harbour"] * 80)
    groups = [("words", [("t1", th._text_given("the tiny goat hides", 144)), ("t2", th._text_given(long_text, 144)),
                         ("gone", None)]),
              ("sounds", [("s1", sound), ("img", Image.new("RGB", (30, 20), (255, 0, 0)))])]
    fig = Figure(figsize=(6, 3), dpi=110)
    figs.draw_montage(fig, groups, thumb=96, per_row=3)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "the tiny goat\nhides" in texts  # wrapped to the tile
    (cut,) = [t for t in texts if t.startswith("harbour")]
    assert cut.endswith(ELLIPSIS) and cut.replace("\n", " ").split()[:-1] == ["harbour"] * (len(cut.split()) - 1)
    assert "s1\n1.00 s, 16 kHz" in texts and "gone (missing)" in texts and "img" in texts and "t1" in texts
    sizes = {t.get_fontsize() for ax in fig.axes for t in ax.texts if t.get_text().startswith(("the tiny", "harb"))}
    assert len(sizes) == 1  # one font size for every text tile


def test_montage_of_images_keeps_single_line_labels() -> None:
    from PIL import Image

    fig = Figure(figsize=(4, 2), dpi=110)
    figs.draw_montage(fig, [("c", [("a", Image.new("RGB", (30, 20), (255, 0, 0))), ("b", None)])], thumb=72)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["a", "b (missing)"]
    canvas = ax.images[0].get_array()
    assert canvas.shape[:2] == (6 + 72 + 6 + 14, 2 * (72 + 6) + 6)  # label band of 14 pixels, as before
