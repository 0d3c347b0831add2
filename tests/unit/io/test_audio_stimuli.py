"""Sound stimuli: PyAV decoding, mono mixdown, polyphase resampling, cropping, and the checks.

Every sound is written here: WAV with the standard library's ``wave`` module (so the expected
samples are known exactly: integers over their full scale), FLAC / MP3 / Ogg (Opus) with PyAV's
encoders when the installed build has them (else that format is skipped). References are computed
independently: the written integers over their full scale, ``numpy.mean`` over channels,
``scipy.signal.resample_poly`` and an FFT.
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.signal import resample_poly

from bids_dnn.errors import InputMissingError
from bids_dnn.io.audio import AudioClip, audio_problem, crop_length, load_audio, resample_audio
from bids_dnn.io.stimuli import StimulusSet, build_stimulus_set, stimulus_input_identity
from bids_dnn.io.stimulus_loading import check_stimulus_file, load_stimulus
from bids_dnn.spec import AudioOptions, VideoOptions

av = pytest.importorskip("av")

RATE = 44100


def tone(rate: int, seconds: float, frequency: float, amplitude: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return amplitude * np.sin(2 * np.pi * frequency * t + phase)


def write_wav(path: Path, channels: np.ndarray, rate: int = RATE, width: int = 2) -> np.ndarray:
    """Write (n_channels, n_samples) values in [-1, 1] as integer PCM; return the exact written values.

    ``width`` 1: unsigned 8-bit, 2: signed 16-bit, 4: signed 32-bit (what the ``wave`` module writes).
    """
    channels = np.atleast_2d(channels)
    if width == 1:
        ints = np.clip(np.round(channels * 127) + 128, 0, 255).astype(np.uint8)
        exact = (ints.astype(np.float64) - 128) / 128
    else:
        scale = 2.0 ** (8 * width - 1)
        dtype = {2: "<i2", 4: "<i4"}[width]
        ints = np.clip(np.round(channels * (scale - 1)), -scale, scale - 1).astype(dtype)
        exact = ints.astype(np.float64) / scale
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels.shape[0])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(np.ascontiguousarray(ints.T).tobytes())
    return exact


def write_with_pyav(path: Path, channels: np.ndarray, rate: int, codec: str, container: str | None = None) -> None:
    """Encode (n_channels, n_samples) float values with a PyAV encoder (skip when the build lacks it)."""
    try:
        encoder = av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001 - PyAV raises UnknownCodecError or ValueError by version
        pytest.skip(f"this PyAV build has no {codec} encoder")
    formats = [f.name for f in encoder.audio_formats or []]
    fmt = next((f for f in ("fltp", "flt", "s16", "s16p") if f in formats), None)
    if fmt is None:
        pytest.skip(f"no usable sample format for {codec}: {formats}")
    layout = {1: "mono", 2: "stereo"}[channels.shape[0]]
    step = 960
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        for start in range(0, channels.shape[1], step):
            chunk = channels[:, start:start + step]
            values = (np.round(chunk * 32767).astype(np.int16) if fmt.startswith("s16") else chunk.astype(np.float32))
            data = np.ascontiguousarray(values if fmt.endswith("p") else values.T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# ---------------------------------------------------------------------------------------
# decoding and mixdown
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 4], ids=["u8", "s16", "s32"])
def test_wav_samples_are_decoded_exactly(tmp_path: Path, width: int) -> None:
    written = write_wav(tmp_path / "a.wav", tone(RATE, 0.25, 440), width=width)[0]
    clip = load_audio(tmp_path / "a.wav")
    assert isinstance(clip, AudioClip) and clip.samples.dtype == np.float32
    assert clip.sample_rate == clip.original_rate == RATE and clip.n_channels == 1 and not clip.cropped
    assert clip.samples.shape == written.shape and clip.duration_s == pytest.approx(0.25)
    np.testing.assert_allclose(clip.samples, written, rtol=0, atol=1e-7)  # float32 of k / 32768: exact to 1/32768
    assert check_stimulus_file(tmp_path / "a.wav") is None


def test_stereo_mixdown_is_the_channel_mean(tmp_path: Path) -> None:
    stereo = np.stack([tone(RATE, 0.5, 440, 0.6), tone(RATE, 0.5, 660, 0.3, phase=1.0)])
    written = write_wav(tmp_path / "s.wav", stereo)
    clip = load_audio(tmp_path / "s.wav")
    assert clip.n_channels == 2
    np.testing.assert_allclose(clip.samples, written.mean(axis=0), rtol=0, atol=1e-7)


def test_flac_is_lossless(tmp_path: Path) -> None:
    stereo = np.stack([tone(RATE, 0.5, 440, 0.6), tone(RATE, 0.5, 220, 0.4)])
    write_with_pyav(tmp_path / "a.flac", stereo, RATE, "flac")
    expected = (np.round(stereo * 32767) / 32768).mean(axis=0)  # written as 16-bit integers (s16)
    clip = load_audio(tmp_path / "a.flac")
    assert clip.n_channels == 2 and clip.original_rate == RATE
    np.testing.assert_allclose(clip.samples, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("ext, codecs, rate, container", [
    ("mp3", ["libmp3lame", "mp3"], RATE, None),
    ("ogg", ["libvorbis", "libopus", "opus"], 48000, "ogg"),  # Ogg Vorbis, else Ogg Opus
], ids=["mp3", "ogg"])
def test_lossy_formats_decode_to_the_written_waveform(tmp_path: Path, ext: str, codecs: list[str], rate: int,
                                                       container: str | None) -> None:
    codec = next((c for c in codecs if _has_encoder(c)), None)
    if codec is None:
        pytest.skip(f"this PyAV build has none of the encoders {codecs}")
    stereo = np.stack([tone(rate, 1.0, 440, 0.5), tone(rate, 1.0, 660, 0.3)])
    path = tmp_path / f"a.{ext}"
    write_with_pyav(path, stereo, rate, codec, container)
    assert check_stimulus_file(path) is None
    clip = load_audio(path)
    reference = stereo.mean(axis=0)
    n = min(clip.samples.size, reference.size)
    assert n >= 0.95 * reference.size and clip.n_channels == 2 and clip.original_rate == rate
    assert np.corrcoef(clip.samples[:n], reference[:n])[0, 1] > 0.99
    assert np.abs(clip.samples).max() <= 1.0


def _has_encoder(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001
        return False
    return True


# ---------------------------------------------------------------------------------------
# resampling and cropping
# ---------------------------------------------------------------------------------------


def test_resampling_equals_resample_poly_and_keeps_the_pitch(tmp_path: Path) -> None:
    written = write_wav(tmp_path / "t.wav", tone(RATE, 1.0, 440, 0.5))[0]
    clip = load_audio(tmp_path / "t.wav", sample_rate=16000)
    reference = resample_poly(written, 160, 441)  # 16000 / 44100 reduced
    assert clip.sample_rate == 16000 and clip.original_rate == RATE and not clip.cropped
    assert clip.samples.shape == reference.shape == (16000,)
    np.testing.assert_allclose(clip.samples, reference, rtol=0, atol=1e-6)
    spectrum = np.abs(np.fft.rfft(clip.samples.astype(np.float64) * np.hanning(clip.samples.size)))
    frequencies = np.fft.rfftfreq(clip.samples.size, 1 / 16000)
    assert abs(frequencies[np.argmax(spectrum)] - 440) <= 1.0  # 1 Hz bins over 1 s
    up = resample_audio(written, RATE, 48000)  # upsampling: 48000 / 44100 = 160 / 147
    np.testing.assert_allclose(up, resample_poly(written, 160, 147), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(resample_audio(written, RATE, RATE), written)


def test_cropping_after_resampling(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    noise = rng.uniform(-0.5, 0.5, size=(2, 3 * RATE))
    written = write_wav(tmp_path / "long.wav", noise).mean(axis=0)
    full = resample_poly(written, 160, 441)
    clip = load_audio(tmp_path / "long.wav", sample_rate=16000, max_seconds=0.5)
    assert clip.cropped and clip.samples.shape == (8000,) and clip.duration_s == pytest.approx(0.5)
    # decoding stops early, yet equals resampling the whole file and cropping
    np.testing.assert_allclose(clip.samples, full[:8000], rtol=0, atol=1e-6)
    native = load_audio(tmp_path / "long.wav", max_seconds=1 / 3)
    assert native.cropped and native.samples.size == int(np.ceil(RATE / 3))
    np.testing.assert_allclose(native.samples, written[:native.samples.size], rtol=0, atol=1e-7)
    whole = load_audio(tmp_path / "long.wav", sample_rate=16000, max_seconds=5.0)
    assert not whole.cropped and whole.samples.size == full.size == 48000
    np.testing.assert_allclose(whole.samples, full, rtol=0, atol=1e-6)
    assert crop_length(0.5, 16000) == 8000 and crop_length(1 / 3, 16000) == 5334 and crop_length(1e-9, 8000) == 1


def test_load_stimulus_takes_the_audio_options(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", tone(RATE, 2.0, 440))
    clip = load_stimulus(tmp_path / "a.wav", audio=AudioOptions(max_seconds=1.0), sample_rate=16000)
    assert isinstance(clip, AudioClip) and clip.sample_rate == 16000 and clip.samples.size == 16000 and clip.cropped
    assert load_stimulus(tmp_path / "a.wav").samples.size == 2 * RATE  # defaults: file's rate, 30 s


# ---------------------------------------------------------------------------------------
# problems: each reported by check_stimulus_file, all in one error of build_stimulus_set
# ---------------------------------------------------------------------------------------


def broken_stimuli(folder: Path) -> dict[str, str]:
    """Write good and broken text and sound files; return file name -> expected reason of the broken ones."""
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / "good1.wav", tone(RATE, 0.2, 440))
    write_wav(folder / "good2.wav", tone(RATE, 0.2, 330))
    (folder / "good.txt").write_text("a sentence", encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.txt").write_bytes(b"  \n\t\r\n")
    (folder / "latin1.txt").write_bytes("na\xefve".encode("latin-1"))
    write_wav(folder / "zero.wav", np.zeros((1, 0)))
    write_wav(folder / "silent.wav", np.zeros((2, 4410)))
    (folder / "text.mp3").write_text("this is not a sound, only some words\n" * 4)
    return {"empty.txt": "empty file (0 bytes)", "blank.txt": "empty text (only white space)",
            "latin1.txt": "not UTF-8 text (invalid byte 0xef at byte 2)", "zero.wav": "empty sound (0 samples)",
            "silent.wav": "silent sound (every sample is 0)", "text.mp3": "not a readable sound (InvalidDataError"}


def test_problems_are_listed_together_with_exit_66(tmp_path: Path) -> None:
    folder = tmp_path / "bids" / "stimuli"
    reasons = broken_stimuli(folder)
    for name, reason in reasons.items():
        assert check_stimulus_file(folder / name).startswith(f"{name}: {reason}"), name
    names = ["good1.wav", "good.txt", "good2.wav", *reasons]
    events = pd.DataFrame({"onset": np.arange(float(len(names))), "duration": 1.0, "stim_file": names})
    with pytest.raises(InputMissingError) as info:
        build_stimulus_set([events], tmp_path / "bids")
    assert info.value.exit_code == 66
    message = str(info.value)
    assert message.startswith("6 stimulus file(s) missing or unreadable:")
    for name, reason in reasons.items():
        assert f"{name}: {reason}" in message
    assert "good1.wav" not in message and "good.txt" not in message and "good2.wav" not in message
    for hint in ("save the text files as UTF-8", "at least one visible character", "hold no samples",
                 "a silent sound gives every network the same input", "re-export or re-copy the damaged files",
                 "datalad get"):
        assert hint in info.value.hint
    for name in ("zero.wav", "text.mp3"):
        with pytest.raises(InputMissingError, match=reasons[name].split(" (")[0]) as loading:
            load_audio(folder / name)
        assert loading.value.exit_code == 66


def test_one_audible_sample_is_not_silence(tmp_path: Path) -> None:
    quiet = np.zeros((1, 4410))
    quiet[0, 4000] = 1 / 32767  # one least significant bit, near the end
    write_wav(tmp_path / "quiet.wav", quiet)
    assert check_stimulus_file(tmp_path / "quiet.wav") is None
    assert np.count_nonzero(load_audio(tmp_path / "quiet.wav").samples) == 1


def test_a_file_without_audio_stream_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "picture.ogg"  # a Matroska video with an .ogg name: FFmpeg probes the content
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width = stream.height = 16
        stream.pix_fmt = "bgr0"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert audio_problem(path) == "picture.ogg: not a readable sound (no audio stream)"
    assert check_stimulus_file(path) == "picture.ogg: not a readable sound (no audio stream)"


def test_without_pyav_the_hint_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, tone(RATE, 0.1, 440))
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    for call in (lambda: check_stimulus_file(path), lambda: load_audio(path)):
        with pytest.raises(InputMissingError, match="sound stimuli need PyAV") as info:
            call()
        assert "pip install 'bids_dnn[video]'" in info.value.hint and info.value.exit_code == 66


# ---------------------------------------------------------------------------------------
# the stimulus set: kinds, and the audio settings in the feature key
# ---------------------------------------------------------------------------------------


def test_sound_stimulus_set_and_its_input_identity(tmp_path: Path) -> None:
    folder = tmp_path / "bids" / "stimuli"
    folder.mkdir(parents=True)
    for i, frequency in enumerate((220, 330, 440)):
        write_wav(folder / f"s{i}.wav", tone(RATE, 0.2, frequency))
    events = pd.DataFrame({"onset": [0.0, 1.0, 2.0], "duration": 1.0, "stim_file": ["s0.wav", "s1.wav", "s2.wav"]})
    stimuli = build_stimulus_set([events], tmp_path / "bids")
    assert stimuli.kinds == ["audio"] * 3 and stimuli.has_audio and not stimuli.has_text and not stimuli.has_video
    assert stimulus_input_identity(stimuli, VideoOptions(), AudioOptions()) == {"audio": {"max_seconds": 30.0}}
    assert stimulus_input_identity(stimuli, VideoOptions(), AudioOptions(max_seconds=5)) == \
        {"audio": {"max_seconds": 5.0}}
    assert stimulus_input_identity(stimuli, VideoOptions()) == {}  # no audio options given


def test_image_sets_keep_their_identity() -> None:
    images = StimulusSet(stim_ids=["a", "b"], files=["a.png", "b.jpg"], paths=[Path("/p/a.png"), Path("/p/b.jpg")],
                         categories=["x", "x"], sha256=["0" * 64, "1" * 64], source_dirs=["stimuli"] * 2)
    assert stimulus_input_identity(images, VideoOptions()) == {}
    assert stimulus_input_identity(images, VideoOptions(), AudioOptions(max_seconds=3)) == {}
    mixed = StimulusSet(stim_ids=["a", "b"], files=["a.mp4", "b.wav"], paths=[Path("/p/a.mp4"), Path("/p/b.wav")],
                        categories=["x", "x"], sha256=["0" * 64, "1" * 64], source_dirs=["stimuli"] * 2)
    video = VideoOptions()
    assert stimulus_input_identity(mixed, video, AudioOptions(max_seconds=3)) == {
        "video": {"fps": float(video.fps), "n_frames": video.n_frames, "aggregate": video.aggregate},
        "audio": {"max_seconds": 3.0}}
