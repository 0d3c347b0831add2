"""Stimulus files: their kind (image, video, text, sound), whether they decode, and loading them as model input.

The kind of a file is decided by its extension (:data:`STIMULUS_KINDS`, :func:`stimulus_kind`).
Images are loaded with Pillow (:mod:`bids_dnn.io.media` turns every mode into the 8-bit RGB
picture a network sees); videos (mp4, avi, webm, mov, mkv) with PyAV (the optional extra
``bids_dnn[video]``, imported only when a video is met) as a list of frames sampled at fixed
times (see :func:`video_sample_times`); texts (txt) as UTF-8 strings (:mod:`bids_dnn.io.text`);
sounds (wav, flac, ogg, mp3) with PyAV as mono waveforms (:mod:`bids_dnn.io.audio`).
:func:`check_stimulus_file` checks any of them before extraction, with one checker per kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bids_dnn.errors import InputMissingError
from bids_dnn.io.pyav import import_av, short_error
from bids_dnn.io.audio import audio_problem, load_audio
from bids_dnn.io.text import load_text, text_problem

__all__ = ["AUDIO_EXTENSIONS", "CHECK_SHORTER_SIDE", "DEFAULT_MAX_SECONDS", "IMAGE_EXTENSIONS", "STIMULUS_KINDS",
           "TEXT_EXTENSIONS", "TIE_TOLERANCE_S", "VIDEO_EXTENSIONS", "VIDEO_EXTRA_HINT", "check_stimulus_file",
           "is_video", "load_image", "load_stimulus", "load_video", "stimulus_kind", "video_sample_times"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".webm", ".mov", ".mkv"}
TEXT_EXTENSIONS = {".txt"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3"}
#: the kinds of stimulus file, by extension (lower case, with the dot); every extension has one kind
STIMULUS_KINDS: dict[str, set[str]] = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS,
                                       "text": TEXT_EXTENSIONS, "audio": AUDIO_EXTENSIONS}
#: sound stimuli are cropped to this many seconds when no options are given (``AudioOptions``' default)
DEFAULT_MAX_SECONDS = 30.0
#: sample-to-frame distances closer than this (s) count as a tie (time bases round 0.75 - 0.7 vs 0.8 - 0.75)
TIE_TOLERANCE_S = 1e-6
VIDEO_EXTRA_HINT = "install the video extra: pip install 'bids_dnn[video]'"
#: shorter side (pixels) at which images are decoded to check them: the headroom of the ImageNet
#: resize target (256), enough to decode every block of the file (the model's own size is used
#: for extraction, :data:`bids_dnn.io.media.DECODE_HEADROOM` times its resize target)
CHECK_SHORTER_SIDE = 4 * 256


def stimulus_kind(path: Path | str) -> str | None:
    """The kind of a stimulus file, from its extension (any case).

    Parameters
    ----------
    path : Path or str

    Returns
    -------
    {"image", "video", "text", "audio"} or None
        None for an extension of no kind (:func:`check_stimulus_file` reports such files).
    """
    suffix = Path(path).suffix.lower()
    return next((kind for kind, extensions in STIMULUS_KINDS.items() if suffix in extensions), None)


def is_video(path: Path | str) -> bool:
    """Whether ``path`` has a video extension (mp4, avi, webm, mov, mkv)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def check_stimulus_file(path: Path) -> str | None:
    """A reason why ``path`` is not a usable stimulus (``"<name>: <reason>"``), or None.

    Images must open and decode with Pillow. Videos must open with PyAV, hold a video stream
    whose packets can all be read (no decoding), decode a first frame, and (for files with one
    stream whose declared duration is known) not end before it: a cut-off Matroska / WebM file
    otherwise reads as a shorter clip. Texts must be UTF-8 and hold more than white space
    (:func:`bids_dnn.io.text.text_problem`). Sounds must decode with PyAV to at least one sample,
    not all 0; the whole file is decoded (:func:`bids_dnn.io.audio.audio_problem`).

    Raises
    ------
    InputMissingError
        A video or sound is met and PyAV is not installed.
    """
    kind = stimulus_kind(path)
    if kind is None:
        known = "; ".join(f"{name}: {', '.join(sorted(extensions))}" for name, extensions in STIMULUS_KINDS.items())
        return f"{path.name}: unsupported file type '{path.suffix.lower()}' ({known})"
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"{path.name}: unreadable ({exc.strerror})"
    if size == 0:
        return f"{path.name}: empty file (0 bytes)"
    return _CHECKS[kind](path)


def _check_image(path: Path) -> str | None:
    try:  # decoded and converted as for extraction (a mode it refuses is listed here), at a reduced size
        load_image(path, CHECK_SHORTER_SIDE)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt images
        return f"{path.name}: not a readable image ({short_error(exc, path)})"
    return None


def _check_video(path: Path) -> str | None:
    av = import_av("video stimuli", VIDEO_EXTRA_HINT)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return f"{path.name}: not a readable video (no video stream)"
            timing = _video_timing(container)
        with av.open(str(path)) as container:
            first = next(iter(container.decode(video=0)), None) if timing.n_packets else None
            if first is None:
                return f"{path.name}: not a readable video (no frame could be decoded)"
            declared = container.duration / 1e6 if container.duration and len(container.streams) == 1 else None
            if declared is not None and timing.duration < declared - max(2 * timing.interval, 0.1):
                return (f"{path.name}: not a readable video (frames end at {timing.duration:.2f} s of the "
                        f"declared {declared:.2f} s; truncated?)")
    except Exception as exc:  # noqa: BLE001 - FFmpeg errors come in many types
        return f"{path.name}: not a readable video ({short_error(exc, path)})"
    return None


#: the check of each kind of stimulus file (after the extension and size checks of :func:`check_stimulus_file`)
_CHECKS: dict[str, Callable[[Path], str | None]] = {"image": _check_image, "video": _check_video,
                                                     "text": text_problem, "audio": audio_problem}


def load_image(path: Path, shorter_side: int | None = None, fit: Any = None) -> Any:
    """Open an image as 8-bit RGB: 16-bit and float data scaled, transparency over white; a
    large one reduced while decoding when ``shorter_side`` is given (see
    :func:`bids_dnn.io.media.load_image`)."""
    from bids_dnn.io.media import load_image as decode

    return decode(path, shorter_side, fit)


@dataclass(frozen=True)
class _VideoTiming:
    start: float
    duration: float
    interval: float
    n_packets: int


def _video_timing(container: Any) -> _VideoTiming:
    """Start, duration and frame interval (s) of the first video stream, from its packets.

    The duration is the end of the last packet (pts + duration, or + one frame interval at the
    stream's average rate) minus the earliest pts: the decoded frames' extent, independent of
    the container's metadata. The packets are read, not decoded.
    """
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    interval = float(1 / rate) if rate else 0.0
    start, end, n_packets = np.inf, -np.inf, 0
    for packet in container.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        base = float(packet.time_base)
        begin = packet.pts * base
        start, n_packets = min(start, begin), n_packets + 1
        end = max(end, begin + (packet.duration * base if packet.duration else interval))
    if not n_packets:
        return _VideoTiming(0.0, 0.0, interval, 0)
    return _VideoTiming(start, max(end - start, 0.0), interval, n_packets)


def video_sample_times(duration: float, fps: float = 2.0, n_frames: int | None = None) -> np.ndarray:
    """The times (s from the first frame) at which frames of a video are sampled.

    Parameters
    ----------
    duration : float
        The video's duration in seconds (end of the last frame minus start of the first).
    fps : float
        Samples per second: times ``0, 1/fps, 2/fps, ...`` strictly before ``duration``.
    n_frames : int, optional
        Instead of ``fps``: ``k * duration / n_frames`` for ``k = 0 .. n_frames - 1``.

    Returns
    -------
    ndarray (n_samples,)
        At least one time (0 for an empty or single-frame video).
    """
    if n_frames is not None:
        return np.arange(n_frames) * (max(duration, 0.0) / n_frames)
    count = max(1, int(np.ceil(duration * fps - 1e-9)))
    return np.arange(count) / fps


class _DecodedFrame:
    """A decoded frame and its time; converted to an RGB image once, when first sampled."""

    def __init__(self, time: float, frame: Any) -> None:
        self.time, self._frame, self._image = time, frame, None

    def image(self) -> Any:
        if self._image is None:
            self._image, self._frame = self._frame.to_image().convert("RGB"), None
        return self._image


def load_video(path: Path, fps: float = 2.0, n_frames: int | None = None) -> list:
    """Decode a video into RGB frames sampled at fixed times.

    Sampling rule: the times of :func:`video_sample_times` (``0, 1/fps, 2/fps, ...`` before
    the duration, or ``n_frames`` times evenly spaced from 0), counted from the first frame;
    each takes the decoded frame whose presentation time is nearest (the earlier one on a
    tie), so a time may repeat a frame when ``fps`` exceeds the video's frame rate. The
    result is deterministic (same file, same frames). Frames are streamed: only the sampled
    ones are kept (as RGB images; a frame sampled twice is the same image object).

    Returns
    -------
    list of PIL.Image.Image, length n_samples (>= 1), RGB

    Raises
    ------
    InputMissingError
        PyAV missing, or the file cannot be decoded.
    """
    av = import_av("video stimuli", VIDEO_EXTRA_HINT)
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            timing = _video_timing(container)
        times = timing.start + video_sample_times(timing.duration, fps, n_frames)
        frames: list = [None] * len(times)
        with av.open(str(path)) as container:
            previous: _DecodedFrame | None = None
            j = 0
            for index, frame in enumerate(container.decode(video=0)):
                t = float(frame.time) if frame.time is not None else timing.start + index * timing.interval
                current = _DecodedFrame(t, frame)
                while j < len(times) and times[j] <= t:
                    # nearest frame; the earlier one on a tie (up to rounding of the time stamps)
                    earlier = previous is not None and times[j] - previous.time <= t - times[j] + TIE_TOLERANCE_S
                    frames[j] = (previous if earlier else current).image()
                    j += 1
                previous = current
                if j == len(times):
                    break
            if j < len(times) and previous is None:
                raise InputMissingError(f"{path.name}: no frame could be decoded", "re-encode or replace the video")
            for k in range(j, len(times)):  # times after the last frame's start
                frames[k] = previous.image()
            return frames
    except InputMissingError:
        raise
    except Exception as exc:  # noqa: BLE001 - FFmpeg errors come in many types
        raise InputMissingError(f"{path.name}: not a readable video ({short_error(exc, path)})",
                                "re-encode or replace the video") from None


def load_stimulus(path: Path, video: Any = None, shorter_side: int | None = None, fit: Any = None,
                  audio: Any = None, sample_rate: int | None = None):
    """Load one stimulus file as model input, by its kind (:func:`stimulus_kind`).

    Parameters
    ----------
    path : Path
    video : bids_dnn.spec.VideoOptions, optional
        ``fps`` / ``n_frames`` for videos (default: 2 frames per second).
    shorter_side : int, optional
        Images: decode large ones reduced, keeping at least this many pixels on the shorter side;
        None: full size.
    fit : callable, optional
        Images: the model's resize, applied to large ones while decoding (see
        :func:`bids_dnn.io.media.load_image`).
    audio : bids_dnn.spec.AudioOptions, optional
        Sounds: ``max_seconds`` (default :data:`DEFAULT_MAX_SECONDS`, 30 s).
    sample_rate : int, optional
        Sounds: the model's sampling rate (None: the file's).

    Returns
    -------
    PIL.Image.Image, list of PIL.Image.Image, str or bids_dnn.io.audio.AudioClip
        An RGB image; a video's sampled frames (see :func:`load_video`) for mp4 / avi / webm /
        mov / mkv files; the text of a txt file (:func:`bids_dnn.io.text.load_text`); the mono
        waveform of a wav / flac / ogg / mp3 file (:func:`bids_dnn.io.audio.load_audio`).
        A file of no known kind is loaded as an image (Pillow reports what it cannot open).
    """
    options = _LoadOptions(video, shorter_side, fit, audio, sample_rate)
    return _LOADERS[stimulus_kind(path) or "image"](Path(path), options)


@dataclass(frozen=True)
class _LoadOptions:
    video: Any
    shorter_side: int | None
    fit: Any
    audio: Any
    sample_rate: int | None


#: how each kind of stimulus file is loaded (see :func:`load_stimulus`)
_LOADERS: dict[str, Callable[[Path, _LoadOptions], Any]] = {
    "image": lambda path, o: load_image(path, o.shorter_side, o.fit),
    "video": lambda path, o: load_video(path, fps=getattr(o.video, "fps", 2.0),
                                        n_frames=getattr(o.video, "n_frames", None)),
    "text": lambda path, o: load_text(path),
    "audio": lambda path, o: load_audio(path, o.sample_rate, getattr(o.audio, "max_seconds", DEFAULT_MAX_SECONDS)),
}
