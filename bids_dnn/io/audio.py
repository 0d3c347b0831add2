"""Sound stimuli (wav, flac, ogg, mp3) -> the mono waveform a model hears.

Every format is decoded by the same code, with PyAV (FFmpeg; the optional extra
``bids_dnn[video]``, imported only when a sound is met), from the file's first audio stream:

1. **Decoding.** Each decoded frame's samples are converted to float64: signed integers are
   divided by their full scale (``2**15`` for 16-bit, ``2**31`` for 32-bit, ``2**63`` for 64-bit),
   unsigned 8-bit samples are ``(x - 128) / 128``, floats are kept as they are.
2. **Mono.** The mean of the channels, sample by sample.
3. **Resampling** (when a ``sample_rate`` other than the file's is asked for):
   :func:`scipy.signal.resample_poly` with ``up / down`` the reduced fraction
   ``sample_rate / original_rate`` (44.1 kHz -> 16 kHz: up 160, down 441) and scipy's default
   anti-aliasing filter, a Kaiser-windowed FIR low-pass (``window=("kaiser", 5.0)``, cut-off at the
   lower of the two Nyquist frequencies, ``20 * max(up, down) + 1`` taps), zero padding at both ends.
   PyAV's own resampler is not used, so the result is exactly that of scipy and can be checked.
4. **Cropping** to the first ``max_seconds`` *after* resampling: the samples ``k`` with
   ``k / sample_rate < max_seconds``. A long file is decoded only as far as the kept samples need
   (plus the filter's reach and a second), which gives the same samples as resampling the whole
   file and cropping (the filter is finite).
5. The result is clipped to [-1, 1] (a lossy decoder or the filter can overshoot full scale a
   little) and stored as float32.

:func:`audio_problem` checks a file before any extraction: it must open, hold an audio stream, and
decode to at least one sample, not all of them exactly 0 after the mixdown to mono (a silent sound
gives every network the same input; so does a stereo file whose channels cancel). Silence is a
property of the whole file, so the check decodes every frame (streamed, nothing is kept): sound
stimuli are short, and this is done for sound files only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bids_dnn.errors import InputMissingError
from bids_dnn.io.pyav import import_av, short_error

__all__ = ["AUDIO_HINT", "PYAV_AUDIO_HINT", "AudioClip", "audio_problem", "crop_length", "load_audio",
           "resample_audio"]

#: the extra that brings PyAV (it decodes sound as well as video)
PYAV_AUDIO_HINT = "install the video extra, whose PyAV also decodes sound: pip install 'bids_dnn[video]'"
#: what to do about a sound file that cannot be used
AUDIO_HINT = "re-export the sound files (e.g. as 16-bit WAV)"
#: full scale of integer sample formats (PyAV format name without the planar 'p')
_FULL_SCALE = {"s16": 2.0 ** 15, "s32": 2.0 ** 31, "s64": 2.0 ** 63}
#: seconds decoded beyond the kept samples (besides the filter's reach) before decoding stops
_DECODE_MARGIN_S = 1.0


@dataclass(frozen=True)
class AudioClip:
    """A decoded sound stimulus.

    Attributes
    ----------
    samples : ndarray (n_samples,), float32
        Mono waveform (mean of the channels) in [-1, 1], at ``sample_rate``, cropped.
    sample_rate : int
        Samples per second of ``samples`` (the asked rate, else the file's).
    duration_s : float
        ``n_samples / sample_rate``: the duration of ``samples`` (after cropping).
    original_rate : int
        The file's sampling rate.
    n_channels : int
        The file's number of channels (before the mixdown).
    cropped : bool
        Whether the sound was longer than ``max_seconds`` and was cut.
    """

    samples: np.ndarray
    sample_rate: int
    duration_s: float
    original_rate: int
    n_channels: int
    cropped: bool


class _AudioProblem(Exception):
    """A reason (without the file name) why a file is no usable sound."""


def _frame_mono(frame: Any) -> np.ndarray:
    """One decoded frame as float64 mono samples (mean of the channels), full scale 1."""
    fmt = frame.format
    name = fmt.name[:-1] if fmt.is_planar else fmt.name
    n_channels = frame.layout.nb_channels
    data = frame.to_ndarray()
    if not fmt.is_planar:  # interleaved: (1, n_samples * n_channels)
        data = data.reshape(-1, n_channels).T
    data = data[:n_channels, :frame.samples]
    if name in _FULL_SCALE:
        values = data.astype(np.float64) / _FULL_SCALE[name]
    elif name == "u8":
        values = (data.astype(np.float64) - 128.0) / 128.0
    elif name in ("flt", "dbl"):
        values = data.astype(np.float64)
    else:
        raise _AudioProblem(f"sample format '{fmt.name}' is not supported")
    return values.mean(axis=0)


def _decoded(container: Any) -> Iterator[tuple[np.ndarray, int, int]]:
    """(mono samples, sampling rate, channels) of each frame of the first audio stream."""
    if not container.streams.audio:
        raise _AudioProblem("no audio stream")
    stream = container.streams.audio[0]
    for frame in container.decode(stream):
        if frame.samples:
            yield _frame_mono(frame), int(frame.sample_rate), int(frame.layout.nb_channels)


def _ratio(sample_rate: int, original_rate: int) -> tuple[int, int]:
    """``(up, down)``: ``sample_rate / original_rate`` as a reduced fraction."""
    fraction = Fraction(int(sample_rate), int(original_rate))
    return fraction.numerator, fraction.denominator


def crop_length(max_seconds: float, sample_rate: int) -> int:
    """How many samples the first ``max_seconds`` hold: the ``k`` with ``k / sample_rate < max_seconds``.

    Parameters
    ----------
    max_seconds : float
        > 0.
    sample_rate : int

    Returns
    -------
    int
        ``ceil(max_seconds * sample_rate)`` (up to 1e-9 of rounding), at least 1.
    """
    return max(1, int(np.ceil(max_seconds * sample_rate - 1e-9)))


def resample_audio(samples: np.ndarray, original_rate: int, sample_rate: int) -> np.ndarray:
    """Resample a waveform with :func:`scipy.signal.resample_poly` (see the module docstring).

    Parameters
    ----------
    samples : ndarray (n_samples,)
    original_rate, sample_rate : int
        Samples per second before and after.

    Returns
    -------
    ndarray (ceil(n_samples * sample_rate / original_rate),), float64
        ``samples`` itself (as float64) when the rates are equal.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if int(sample_rate) == int(original_rate):
        return samples
    from scipy.signal import resample_poly

    up, down = _ratio(sample_rate, original_rate)
    return resample_poly(samples, up, down)


def _input_needed(keep: int, original_rate: int, sample_rate: int) -> int:
    """Input samples that determine the first ``keep`` output samples, with a margin."""
    up, down = _ratio(sample_rate, original_rate)
    reach = 10 * max(up, down) // up + 2  # half the filter (10 * max(up, down) taps at the up-sampled rate)
    return int(np.ceil(keep * down / up)) + reach + int(_DECODE_MARGIN_S * original_rate)


def load_audio(path: Path, sample_rate: int | None = None, max_seconds: float | None = None) -> AudioClip:
    """Decode a sound file to a mono waveform, resampled and cropped (see the module docstring).

    Parameters
    ----------
    path : Path
        A wav, flac, ogg or mp3 file (any format FFmpeg reads).
    sample_rate : int, optional
        Resample to this many samples per second (the model's); None: keep the file's rate.
    max_seconds : float, optional
        Keep the first ``max_seconds`` (after resampling); None: the whole sound.

    Returns
    -------
    AudioClip

    Raises
    ------
    InputMissingError
        PyAV missing, or the file cannot be decoded, has no audio stream or no samples (exit 66).
    """
    av = import_av("sound stimuli", PYAV_AUDIO_HINT)
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            chunks: list[np.ndarray] = []
            original_rate = n_channels = 0
            needed = total = 0
            cropped = False
            for mono, rate, channels in _decoded(container):
                if not original_rate:
                    original_rate, n_channels = rate, channels
                    target = int(sample_rate) if sample_rate else rate
                    needed = (_input_needed(crop_length(max_seconds, target), rate, target)
                              if max_seconds is not None else 0)
                elif rate != original_rate:
                    raise _AudioProblem(f"the sampling rate changes within the file ({original_rate} -> {rate} Hz)")
                chunks.append(mono)
                total += mono.size
                if needed and total > needed:
                    cropped = True  # more sound than the kept part needs: stop decoding
                    break
    except InputMissingError:
        raise
    except _AudioProblem as exc:
        raise InputMissingError(f"{path.name}: not a readable sound ({exc})", AUDIO_HINT) from None
    except Exception as exc:  # noqa: BLE001 - FFmpeg errors come in many types
        raise InputMissingError(f"{path.name}: not a readable sound ({short_error(exc, path)})", AUDIO_HINT) from None
    if not total:
        raise InputMissingError(f"{path.name}: empty sound (0 samples)", AUDIO_HINT)
    target = int(sample_rate) if sample_rate else original_rate
    samples = resample_audio(np.concatenate(chunks), original_rate, target)
    if max_seconds is not None:
        keep = crop_length(max_seconds, target)
        cropped = cropped or samples.size > keep
        samples = samples[:keep]
    samples = np.clip(samples, -1.0, 1.0).astype(np.float32)
    return AudioClip(samples=samples, sample_rate=target, duration_s=samples.size / target,
                     original_rate=original_rate, n_channels=n_channels, cropped=bool(cropped))


def audio_problem(path: Path) -> str | None:
    """Why a sound file is not a usable stimulus (``"<name>: <reason>"``), or None.

    The whole file is decoded (streamed; see the module docstring). Reasons:
    ``not a readable sound (<FFmpeg error> | no audio stream)``, ``empty sound (0 samples)``,
    ``silent sound (every sample is 0)``.

    Parameters
    ----------
    path : Path

    Returns
    -------
    str or None

    Raises
    ------
    InputMissingError
        PyAV is not installed.
    """
    av = import_av("sound stimuli", PYAV_AUDIO_HINT)
    path = Path(path)
    total, audible = 0, False
    try:
        with av.open(str(path)) as container:
            for mono, _, _ in _decoded(container):
                total += mono.size
                audible = audible or bool(np.any(mono != 0))
    except _AudioProblem as exc:
        return f"{path.name}: not a readable sound ({exc})"
    except Exception as exc:  # noqa: BLE001 - FFmpeg errors come in many types
        return f"{path.name}: not a readable sound ({short_error(exc, path)})"
    if not total:
        return f"{path.name}: empty sound (0 samples)"
    if not audible:
        return f"{path.name}: silent sound (every sample is 0)"
    return None
