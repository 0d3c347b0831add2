"""Stimulus thumbnails of the reports: one renderer per kind of stimulus.

Every place that shows stimuli as tiles (the stimulus montage of the participant report, the
montages of the highest and lowest stimuli of :mod:`bids_dnn.report.drivers_sections`) asks
:func:`render_thumbnail`, which picks the renderer of the stimulus's kind
(:func:`bids_dnn.io.stimulus_loading.stimulus_kind`) in :data:`THUMBNAIL_RENDERERS`:

``image``
    the picture, decoded reduced (at least twice ``size`` on the shorter side) and shrunk so that
    its longer side is at most ``size`` pixels.
``video``
    the first frame, shrunk the same way.
``text``
    the text itself (a ``.txt`` file, or a text given in ``stimuli.tsv``): the montage
    (:func:`bids_dnn.report.figures.draw_montage`) writes it, wrapped (:func:`wrap_text`) and
    ellipsised when it does not fit, into a tile of the size of an image thumbnail; the thumbnail
    also holds the tile as a picture (:func:`text_tile_image`) for callers that need one.
``audio``
    a waveform over a spectrogram (:func:`sound_picture`, :func:`draw_sound_image`), with the
    duration and sampling rate as a second label line. The sound itself is never embedded: the
    reports stay small and self-contained.

A stimulus that is missing or cannot be read has no thumbnail (None): the montage draws the grey
"missing" tile.
"""

from __future__ import annotations

import functools
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["CHARACTER_WIDTH_EM", "ELLIPSIS", "LINE_HEIGHT_EM", "SOUND_MAX_SECONDS", "SPECTROGRAM_FLOOR_DB",
           "SPECTROGRAM_WINDOW_S", "TEXT_TILE_COLOUR", "TEXT_TILE_FONT_SIZES", "TEXT_TILE_USABLE",
           "TEXT_WIDTH_SAFETY", "THUMBNAIL_RENDERERS", "WAVEFORM_COLOUR", "WAVEFORM_SHARE", "SoundPicture",
           "Thumbnail", "ThumbnailCache", "draw_sound_image", "render_thumbnail", "sound_caption", "sound_picture",
           "text_in_tile", "text_tile_image", "wrap_text"]

#: sounds are shown up to this many seconds (the caption says when one is longer)
SOUND_MAX_SECONDS = 60.0
#: spectrogram levels below this (dB relative to the loudest bin) are drawn as the floor colour
SPECTROGRAM_FLOOR_DB = -80.0
#: spectrogram window length in seconds (rounded to a power of two of samples)
SPECTROGRAM_WINDOW_S = 0.02
#: share of a sound thumbnail's height taken by the waveform (the spectrogram fills the rest)
WAVEFORM_SHARE = 0.3
#: the ellipsis that ends a text cut to fit its tile
ELLIPSIS = "\u2026"
#: background of a text tile (RGB)
TEXT_TILE_COLOUR = (246, 246, 240)
#: colour of the waveform (RGB; matplotlib's tab:blue)
WAVEFORM_COLOUR = (31, 119, 180)


@dataclass(frozen=True)
class Thumbnail:
    """What a montage tile shows for one stimulus.

    Attributes
    ----------
    kind : {"image", "video", "text", "audio"}
    image : PIL.Image.Image
        RGB, longer side at most the requested size: the picture, the video's first frame, the
        sound's waveform and spectrogram, or (text) the text tile drawn with Pillow.
    text : str or None
        Text stimuli: the whole text, which the montage writes into the tile itself.
    caption : str
        A second label line ("" for none): a sound's duration and sampling rate.
    """

    kind: str
    image: Any
    text: str | None = None
    caption: str = ""


def wrap_text(text: str, width: int, max_lines: int | None = None) -> list[str]:
    """Lines of at most ``width`` characters, broken at white space; ellipsised to ``max_lines``.

    Every line of ``text`` (paragraph) is wrapped on its own, blank ones are dropped; a word longer
    than ``width`` is cut over several lines. When more than ``max_lines`` lines result, the last
    one kept ends with an ellipsis (``…``) and the rest is left out.

    Parameters
    ----------
    text : str
    width : int
        Characters per line (at least 1).
    max_lines : int, optional
        Most lines returned (at least 1); None: every line.

    Returns
    -------
    list of str
        Without an ellipsis, ``" ".join(lines).split() == text.split()`` whenever no word is
        longer than ``width``.
    """
    width = max(1, int(width))
    lines = [line for paragraph in text.split("\n")
             for line in textwrap.wrap(paragraph, width, break_long_words=True, break_on_hyphens=False)]
    if max_lines is None or len(lines) <= max_lines:
        return lines
    kept = lines[:max(1, int(max_lines))]
    kept[-1] = kept[-1][:max(0, width - 1)].rstrip() + ELLIPSIS
    return kept


# ---------------------------------------------------------------------------------------
# Sound: waveform and spectrogram
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoundPicture:
    """The arrays a sound thumbnail draws.

    Attributes
    ----------
    envelope : ndarray (2, n_columns)
        Minimum (row 0) and maximum (row 1) of the samples in each of ``n_columns`` equal stretches.
    spectrogram_db : ndarray (n_frequencies, n_frames)
        Magnitude of the short-time Fourier transform (Hann window) in dB relative to its largest
        value, floored at ``floor_db``; row 0 is the lowest frequency.
    frequencies : ndarray (n_frequencies,)
        Hz of each row (0 to the Nyquist frequency).
    times : ndarray (n_frames,)
        Seconds of each column (centre of its window).
    floor_db : float
    """

    envelope: np.ndarray
    spectrogram_db: np.ndarray
    frequencies: np.ndarray
    times: np.ndarray
    floor_db: float = SPECTROGRAM_FLOOR_DB


def sound_picture(samples: np.ndarray, sample_rate: int, n_columns: int = 192,
                  floor_db: float = SPECTROGRAM_FLOOR_DB) -> SoundPicture:
    """Waveform envelope and log-magnitude spectrogram of a mono sound.

    The spectrogram is :func:`scipy.signal.spectrogram` (``mode="magnitude"``, Hann window of
    :data:`SPECTROGRAM_WINDOW_S` rounded to a power of two of samples, 64 to 4096, at most the
    sound's length), with a hop that gives about ``n_columns`` frames (at most one window, so that no
    sample is left out: a long sound gets more frames).

    Parameters
    ----------
    samples : ndarray (n_samples,)
        Mono waveform (at least one sample).
    sample_rate : int
        Samples per second.
    n_columns : int
        Stretches of the envelope, and the frames aimed at.
    floor_db : float
        Lowest level kept (dB relative to the largest magnitude).

    Returns
    -------
    SoundPicture
    """
    from scipy.signal import spectrogram

    x = np.asarray(samples, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("a sound thumbnail needs at least one sample")
    n_columns = max(1, int(n_columns))
    starts = (np.arange(n_columns) * n) // n_columns
    ends = np.maximum(starts + 1, (np.arange(1, n_columns + 1) * n) // n_columns)
    envelope = np.array([[x[a:b].min() for a, b in zip(starts, ends)], [x[a:b].max() for a, b in zip(starts, ends)]])
    window = int(min(n, np.clip(2 ** round(math.log2(max(SPECTROGRAM_WINDOW_S * sample_rate, 1.0))), 64, 4096)))
    hop = max(1, min(window, -(-(n - window) // max(1, n_columns - 1))))  # no sample skipped
    frequencies, times, magnitude = spectrogram(x, fs=sample_rate, window="hann", nperseg=window,
                                                noverlap=window - hop, detrend=False, mode="magnitude")
    peak = float(magnitude.max())
    with np.errstate(divide="ignore"):
        level = 20.0 * np.log10(magnitude / peak) if peak > 0 else np.full(magnitude.shape, floor_db)
    return SoundPicture(envelope, np.maximum(level, floor_db), frequencies, times, float(floor_db))


def _pool(values: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """``values`` resampled to ``n_out`` along ``axis``: the maximum of the inputs that fall in each
    output cell, the nearest input where none does (so a narrow peak is never lost)."""
    values = np.moveaxis(values, axis, 0)
    n_in = values.shape[0]
    cell = np.minimum(((np.arange(n_in) + 0.5) * n_out / n_in).astype(int), n_out - 1)
    out = np.full((n_out, *values.shape[1:]), -np.inf)
    np.maximum.at(out, cell, values)
    empty = ~np.isfinite(out).all(axis=tuple(range(1, out.ndim)))
    nearest = np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)
    out[empty] = values[nearest[empty]]
    return np.moveaxis(out, 0, axis)


def draw_sound_image(picture: SoundPicture, size: int) -> Any:
    """A ``size`` x ``size`` RGB picture of a sound: waveform on top, spectrogram below.

    The waveform (its envelope scaled to the largest absolute sample) takes
    :data:`WAVEFORM_SHARE` of the height; the spectrogram (low frequencies at the bottom, time to the
    right, magma colours from ``floor_db`` to 0 dB) the rest, each pixel the loudest bin under it.

    Parameters
    ----------
    picture : SoundPicture
    size : int
        Pixels per side (at least 8).

    Returns
    -------
    PIL.Image.Image
    """
    import matplotlib
    from PIL import Image

    size = max(8, int(size))
    wave_h = max(3, round(WAVEFORM_SHARE * size))
    spec_h = size - wave_h - 1
    pixels = np.full((size, size, 3), 255, dtype=np.uint8)
    envelope = picture.envelope
    scale = float(np.abs(envelope).max()) or 1.0
    columns = np.minimum((np.arange(size) * envelope.shape[1]) // size, envelope.shape[1] - 1)
    half = (wave_h - 1) / 2.0
    top = np.clip(np.round(half - envelope[1, columns] / scale * half), 0, wave_h - 1).astype(int)
    bottom = np.clip(np.round(half - envelope[0, columns] / scale * half), 0, wave_h - 1).astype(int)
    pixels[int(round(half)), :] = (215, 215, 215)
    for x, (a, b) in enumerate(zip(top, bottom)):
        pixels[a:b + 1, x] = WAVEFORM_COLOUR
    pixels[wave_h, :] = (160, 160, 160)
    grid = _pool(_pool(picture.spectrogram_db, spec_h, 0), size, 1)[::-1]  # high frequencies on top
    shade = np.clip((grid - picture.floor_db) / -picture.floor_db, 0.0, 1.0)
    pixels[wave_h + 1:] = (matplotlib.colormaps["magma"](shade)[..., :3] * 255).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def sound_caption(duration_s: float, sample_rate: int, cropped: bool = False) -> str:
    """The label line of a sound: ``"1.50 s, 16 kHz"`` (``"> 60.00 s, ..."`` when cut)."""
    rate = f"{sample_rate / 1000:.3g} kHz"
    return f"{'> ' if cropped else ''}{duration_s:.2f} s, {rate}"


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------


#: font sizes (points) tried for the text of a text tile, largest first
TEXT_TILE_FONT_SIZES = (8.0, 7.0, 6.0, 5.0)
#: first guess of the average width of a character (lower-case text in DejaVu Sans, matplotlib's
#: default font) and the height of a line, in font sizes; lines are then measured
CHARACTER_WIDTH_EM = 0.52
LINE_HEIGHT_EM = 1.3
#: share of a text tile's side left for the text (the rest is its margin)
TEXT_TILE_USABLE = 0.88


#: measured line widths are multiplied by this: small sizes are drawn a little wider (hinting)
TEXT_WIDTH_SAFETY = 1.08


@functools.lru_cache(maxsize=4096)
def _advance_em(character: str) -> float:
    """Advance width of ``character`` in em (font sizes) in matplotlib's default font, unhinted."""
    from matplotlib import ft2font
    from matplotlib.font_manager import FontProperties, findfont, get_font

    flags = ft2font.LoadFlags.NO_HINTING if hasattr(ft2font, "LoadFlags") else ft2font.LOAD_NO_HINTING
    font = get_font(findfont(FontProperties()))
    font.set_size(100.0, 72.0)
    return font.load_char(ord(character), flags=flags).linearHoriAdvance / 65536.0 / 100.0


def _text_width_points(line: str, font_size: float) -> float:
    """Width in points of ``line`` written with matplotlib's default font at ``font_size`` (the sum of
    the characters' advances, times :data:`TEXT_WIDTH_SAFETY`)."""
    return TEXT_WIDTH_SAFETY * font_size * sum(_advance_em(character) for character in line)


def text_in_tile(text: str, tile_points: float, font_size: float | None = None) -> tuple[list[str], float]:
    """The lines and font size that fit ``text`` into a square tile of ``tile_points`` points.

    The text is wrapped (:func:`wrap_text`) at the most characters per line whose lines, measured in
    matplotlib's default font, fit the tile's width (:data:`TEXT_TILE_USABLE` of its side). Without
    ``font_size``, the largest size of :data:`TEXT_TILE_FONT_SIZES` at which the whole text fits is
    used; when none does, the smallest, and the text is ellipsised to the lines that fit.

    Parameters
    ----------
    text : str
    tile_points : float
        Side of the tile in points.
    font_size : float, optional
        Use this size (ellipsising when the text does not fit).

    Returns
    -------
    lines : list of str
    font_size : float
    """
    usable = TEXT_TILE_USABLE * float(tile_points)
    for size in ((font_size,) if font_size is not None else TEXT_TILE_FONT_SIZES):
        width = max(1, int(usable / (CHARACTER_WIDTH_EM * size)) + 2)
        lines = wrap_text(text, width)
        while width > 1 and max(_text_width_points(line, size) for line in lines) > usable:
            width -= 1
            lines = wrap_text(text, width)
        n_lines = max(1, int(usable / (LINE_HEIGHT_EM * size)))
        if len(lines) <= n_lines:
            return lines, size
    lines = wrap_text(text, width, n_lines)
    while len(lines[-1]) > 1 and _text_width_points(lines[-1], size) > usable:  # the ellipsis is wider
        lines[-1] = lines[-1][:-2].rstrip() + ELLIPSIS
    return lines, size


def text_tile_image(text: str, size: int) -> Any:
    """A ``size`` x ``size`` RGB tile with ``text`` wrapped (and ellipsised) in Pillow's default font.

    Parameters
    ----------
    text : str
    size : int
        Pixels per side.

    Returns
    -------
    PIL.Image.Image
    """
    from PIL import Image, ImageDraw, ImageFont

    size = max(8, int(size))
    margin = max(2, size // 24)
    font_px = max(8, size // 11)
    try:
        font = ImageFont.load_default(font_px)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    sample = "the quick brown fox jumps over a lazy dog"
    char_px = max(1.0, font.getlength(sample) / len(sample)) if hasattr(font, "getlength") else 0.6 * font_px
    line_px = int(font_px * 1.2)
    lines = wrap_text(text, int((size - 2 * margin) / char_px), max(1, (size - 2 * margin) // line_px))
    image = Image.new("RGB", (size, size), TEXT_TILE_COLOUR)
    draw = ImageDraw.Draw(image)
    for k, line in enumerate(lines):
        draw.text((margin, margin + k * line_px), line, fill=(30, 30, 30), font=font)
    return image


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


def _shrunk(image: Any, size: int) -> Any:
    image = image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
    image.thumbnail((size, size))
    return image


def _image_thumbnail(path: Path, size: int) -> Thumbnail:
    from bids_dnn.io.stimulus_loading import load_image

    return Thumbnail("image", _shrunk(load_image(path, shorter_side=2 * size), size))  # never a full-size decode


def _video_thumbnail(path: Path, size: int) -> Thumbnail:
    from bids_dnn.io.stimulus_loading import load_video

    return Thumbnail("video", _shrunk(load_video(path, n_frames=1)[0], size))  # a video is shown by its first frame


def _text_thumbnail(path: Path, size: int) -> Thumbnail:
    from bids_dnn.io.text import load_text

    return _text_given(load_text(path), size)


def _text_given(text: str, size: int) -> Thumbnail:
    return Thumbnail("text", text_tile_image(text, size), text=text)


def _sound_thumbnail(path: Path, size: int) -> Thumbnail:
    from bids_dnn.io.audio import load_audio

    clip = load_audio(path, None, SOUND_MAX_SECONDS)
    picture = sound_picture(clip.samples, clip.sample_rate, n_columns=max(8, int(size)))
    return Thumbnail("audio", draw_sound_image(picture, size),
                     caption=sound_caption(clip.duration_s, clip.original_rate, clip.cropped))


#: the thumbnail renderer of each kind of stimulus: ``renderer(path, size) -> Thumbnail`` (raises when
#: the file cannot be read)
THUMBNAIL_RENDERERS: dict[str, Callable[[Path, int], Thumbnail]] = {
    "image": _image_thumbnail, "video": _video_thumbnail, "text": _text_thumbnail, "audio": _sound_thumbnail}


def render_thumbnail(path: Path | str | None, size: int = 144, kind: str | None = None,
                     text: str | None = None) -> Thumbnail | None:
    """The thumbnail of one stimulus, by its kind; None when it is missing or cannot be read.

    Parameters
    ----------
    path : Path, str or None
        The stimulus file.
    size : int
        Longest side of the thumbnail's picture in pixels.
    kind : str, optional
        A key of :data:`THUMBNAIL_RENDERERS`; default: from the file's extension
        (:func:`bids_dnn.io.stimulus_loading.stimulus_kind`; an unknown extension is tried as an image).
    text : str, optional
        A text given in ``stimuli.tsv``: shown as it is, no file is read.

    Returns
    -------
    Thumbnail or None
    """
    from bids_dnn.io.stimulus_loading import stimulus_kind

    if text is not None:
        return _text_given(text, size)
    if path is None or not Path(path).is_file():
        return None
    path = Path(path)
    renderer = THUMBNAIL_RENDERERS.get(kind or stimulus_kind(path) or "image")
    if renderer is None:
        return None
    try:
        return renderer(path, int(size))
    except Exception:  # noqa: BLE001 - an unreadable file becomes the grey "missing" tile
        return None


@dataclass
class ThumbnailCache:
    """Thumbnails by stim_id, each stimulus read once; the ids without one in ``missing``.

    Attributes
    ----------
    stimuli : bids_dnn.report.inputs.StimulusInfo or None
        Paths and texts of the stimuli (None: every stimulus is missing).
    size : int
        Longest side of each thumbnail's picture in pixels.
    """

    stimuli: Any
    size: int = 144
    cache: dict[str, Thumbnail | None] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        ids = list(self.stimuli.stim_ids) if self.stimuli is not None else []
        self._index = {stim_id: i for i, stim_id in enumerate(ids)}

    def __call__(self, stim_id: str) -> Thumbnail | None:
        if stim_id not in self.cache:
            i = self._index.get(stim_id)
            thumbnail = None
            if i is not None:
                text_of = getattr(self.stimuli, "text_of", None)  # a StimulusInfo (a StimulusSet has none)
                thumbnail = render_thumbnail(self.stimuli.paths[i], self.size, text=text_of(i) if text_of else None)
            self.cache[stim_id] = thumbnail
            if thumbnail is None:
                self.missing.add(stim_id)
        return self.cache[stim_id]
