"""Epochs from a continuous EEG / MEG recording: channel picks, filter, epochs at given onsets,
baseline, peak-to-peak rejection, resampling on an exact time grid (through MNE; arrays out).

The recordings themselves are found and read by :mod:`bids_dnn.io.meeg`, which re-exports
:class:`EpochOptions`, :class:`EpochedData` and :func:`epoch_raw`. Units are SI (V for EEG, T for
magnetometers, T/m for gradiometers). MNE's warnings never reach the console
(:func:`captured_mne_messages`).
"""

from __future__ import annotations

import logging
import warnings
from fractions import Fraction
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from bids_dnn.errors import InputMissingError, SpecError

if TYPE_CHECKING:  # MNE is imported where it is used: importing this module stays cheap
    import mne

__all__ = [
    "CHANNEL_TYPE_GROUPS",
    "DATA_CHANNEL_TYPES",
    "OUT_OF_RANGE",
    "EpochOptions",
    "EpochedData",
    "captured_mne_messages",
    "epoch_raw",
    "pick_data_channels",
]

#: a name in :attr:`EpochOptions.picks` -> the MNE channel types it selects
CHANNEL_TYPE_GROUPS: dict[str, frozenset[str]] = {
    "eeg": frozenset({"eeg"}),
    "mag": frozenset({"mag"}),
    "grad": frozenset({"grad"}),
    "meg": frozenset({"mag", "grad"}),
}
#: the channel types analysed when :attr:`EpochOptions.picks` is None
DATA_CHANNEL_TYPES = frozenset({"eeg", "mag", "grad"})
#: how :attr:`EpochedData.drop_reasons` starts for an epoch that reaches outside the recording
#: (every other non-empty reason is a rejection: amplitude, BAD annotation, no or repeated onset)
OUT_OF_RANGE = "out of range: the epoch reaches outside the recording"


#: warnings for developers (of MNE's dependencies): swallowed, not passed on to the log
_DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class _CollectingHandler(logging.Handler):
    """A logging handler that keeps the messages it receives."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def captured_mne_messages(source: str, messages: list[str] | None) -> Iterator[None]:
    """Keep MNE's warnings off the console; append them to ``messages`` (when given), each as
    ``"<source>: <warning on one line>"``, without repeats.

    MNE warns through :mod:`warnings` and, with a stream handler on its ``mne`` logger, also
    logs them to stdout: both are collected while inside, and the logger is restored after.
    """
    logger = logging.getLogger("mne")
    saved_handlers, saved_propagate = list(logger.handlers), logger.propagate
    collector = _CollectingHandler()
    for handler in saved_handlers:
        logger.removeHandler(handler)
    logger.addHandler(collector)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                texts = [str(w.message) for w in caught if not issubclass(w.category, _DEVELOPER_WARNINGS)]
                texts += collector.lines
                if messages is not None:
                    lines = (f"{source}: {' '.join(text.split())}" for text in texts)
                    messages.extend(line for line in dict.fromkeys(lines) if line not in messages)
    finally:
        logger.removeHandler(collector)
        for handler in saved_handlers:
            logger.addHandler(handler)
        logger.propagate = saved_propagate


@dataclass(frozen=True)
class EpochOptions:
    """How :func:`epoch_raw` cuts epochs (the relevant fields of the spec's ``meeg`` section).

    Build it from the spec with
    ``EpochOptions(**spec.meeg.model_dump(include=EpochOptions.field_names()))``.

    Attributes
    ----------
    tmin, tmax : float
        Epoch start and end relative to each onset (s), ``tmin < tmax``.
    baseline : (float or None, float or None) or None
        Interval (s) whose mean is subtracted per epoch and channel (None ends: the epoch's start /
        end); None: no baseline correction.
    l_freq, h_freq : float or None
        High-pass and low-pass cut-offs (Hz) applied to the continuous recording before epoching
        (MNE's default zero-phase FIR filter); None: no such filter.
    resample_hz : float or None
        Resample the epochs to this rate (Hz) after baseline and rejection, onto the times
        ``k / resample_hz`` from each onset (polyphase filtering with a margin of real data; see
        :class:`_EpochWindow`); None: keep the recording's rate.
    reject : mapping of str to float or None
        Peak-to-peak thresholds per channel type (``eeg`` in V, ``mag`` in T, ``grad`` in T/m).
    picks : tuple of str or None
        Channel types (names of :data:`CHANNEL_TYPE_GROUPS`); None: every EEG and MEG channel.
    """

    tmin: float = -0.1
    tmax: float = 0.6
    baseline: tuple[float | None, float | None] | None = (None, 0.0)
    l_freq: float | None = None
    h_freq: float | None = 40.0
    resample_hz: float | None = None
    reject: Mapping[str, float] | None = None
    picks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.tmin < self.tmax:
            raise ValueError(f"tmin ({self.tmin}) must be before tmax ({self.tmax})")
        if self.baseline is not None:
            start, stop = self.baseline
            if (start is not None and start < self.tmin) or (stop is not None and stop > self.tmax) or (
                    start is not None and stop is not None and stop <= start):
                raise ValueError(f"baseline {self.baseline} must be an interval within tmin to tmax")
            object.__setattr__(self, "baseline", (start, stop))
        if self.picks is not None:
            unknown = sorted(set(self.picks) - set(CHANNEL_TYPE_GROUPS))
            if unknown or not self.picks:
                raise ValueError(f"picks must name channel types of {sorted(CHANNEL_TYPE_GROUPS)}, not {unknown}")
            object.__setattr__(self, "picks", tuple(self.picks))
        if self.reject is not None:
            unknown = sorted(set(self.reject) - DATA_CHANNEL_TYPES)
            if unknown or any(not value > 0 for value in self.reject.values()):
                raise ValueError(f"reject maps {sorted(DATA_CHANNEL_TYPES)} to positive thresholds: {self.reject}")
            object.__setattr__(self, "reject", dict(self.reject))

    @classmethod
    def field_names(cls) -> set[str]:
        """The option names (as in the spec's ``meeg`` section)."""
        from dataclasses import fields

        return {f.name for f in fields(cls)}


@dataclass(eq=False)
class EpochedData:
    """Epochs as plain arrays, in SI units.

    Attributes
    ----------
    data : ndarray, shape (n_kept, n_channels, n_times), float64
        The kept epochs, in the order of the requested onsets (V, T or T/m).
    times : ndarray, shape (n_times,)
        Time of each sample relative to the onset (s).
    kept : ndarray, shape (n_events,), bool
        Which requested onsets gave an epoch (``data[i]`` is the i-th True).
    drop_reasons : list of str, length n_events
        Why each dropped onset has no epoch; ``''`` when kept.
    ch_names, ch_types : list of str, length n_channels
    sfreq : float
        Sampling rate of ``data`` (Hz), after any resampling.
    bads : list of str
        Channels of the analysed types left out because they are marked bad.
    """

    data: np.ndarray
    times: np.ndarray
    kept: np.ndarray
    drop_reasons: list[str]
    ch_names: list[str]
    ch_types: list[str]
    sfreq: float
    bads: list[str] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        return int(self.data.shape[0])


def pick_data_channels(info: Any, picks: Sequence[str] | None) -> tuple[list[int], list[str]]:
    """Indices of the good channels of the requested types (names of :data:`CHANNEL_TYPE_GROUPS`;
    None: :data:`DATA_CHANNEL_TYPES`) in ``info`` (an ``mne.Info``), and the bad ones left out.

    Raises
    ------
    InputMissingError
        The recording has no good channel of the requested types (exit 66).
    """
    wanted = frozenset().union(*(CHANNEL_TYPE_GROUPS[p] for p in picks)) if picks else DATA_CHANNEL_TYPES
    types = info.get_channel_types()
    chosen = [i for i, kind in enumerate(types) if kind in wanted]
    bads = set(info["bads"])
    good = [i for i in chosen if info["ch_names"][i] not in bads]
    if not good:
        present = ", ".join(sorted(set(types))) or "none"
        what = "good " if chosen else ""
        raise InputMissingError(f"the recording has no {what}{' / '.join(sorted(wanted))} channels (its channel "
                                f"types: {present})", "set meeg.picks to channel types the recording has")
    return good, [info["ch_names"][i] for i in chosen if info["ch_names"][i] in bads]


def _check_frequencies(options: EpochOptions, sfreq: float) -> None:
    """Cut-offs must lie below the recording's Nyquist frequency (else MNE fails mid-run)."""
    nyquist = sfreq / 2.0
    problems = [f"meeg.{name} ({value:g} Hz) must be below the Nyquist frequency ({nyquist:g} Hz) of a "
                f"recording sampled at {sfreq:g} Hz"
                for name, value in (("l_freq", options.l_freq), ("h_freq", options.h_freq))
                if value is not None and value >= nyquist]
    if problems:
        raise SpecError(problems, "meeg")


def epoch_raw(raw: mne.io.BaseRaw, onsets_s: np.ndarray, options: EpochOptions, *,
              messages: list[str] | None = None) -> EpochedData:
    """Cut epochs around given onsets of a continuous recording.

    Steps, in order: pick the good channels of the requested types (channels in
    ``raw.info["bads"]`` are left out and listed in ``bads``); load a copy of them and filter it
    (``raw.filter(l_freq, h_freq)``, zero-phase FIR) when a cut-off is set; cut epochs from
    ``tmin`` to ``tmax`` around each onset; subtract the baseline; drop epochs whose peak-to-peak
    amplitude exceeds ``reject`` for a channel type (types the picks lack are ignored) or that
    overlap a ``BAD_*`` annotation; resample the kept epochs (polyphase filtering of the epoch with
    a margin of real data, on the time grid ``k / resample_hz`` from the onset: see
    :class:`_EpochWindow`).

    Onsets are seconds from the start of the recording, as ``onset`` in ``events.tsv``: onset
    ``t`` is sample ``round(t * sfreq) + raw.first_samp`` in MNE's counting (a FIF recording
    may start at a non-zero ``first_samp``).

    No SSP projector is added. The projectors a recording carries (e.g. Elekta's empty-room
    SSP vectors, an average-reference projector stored in a FIF file) are applied, as MNE does by
    default; EEG stays on the reference it was recorded with.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording (from :func:`bids_dnn.io.meeg.read_meeg_raw`); left unchanged.
    onsets_s : ndarray, shape (n_events,)
        Onsets in seconds from the recording's start; NaN gives no epoch.
    options : EpochOptions
    messages : list of str, optional
        MNE's warnings are appended here, never printed.

    Returns
    -------
    EpochedData
        ``kept[i]`` is False for an onset that is not finite, whose epoch reaches outside the
        recording, that falls on the same sample as an earlier onset, that overlaps a ``BAD_*``
        annotation, or whose epoch was rejected; ``drop_reasons[i]`` says which.

    Raises
    ------
    SpecError
        A filter cut-off at or above the Nyquist frequency (exit 65).
    InputMissingError
        No good channel of the requested types (exit 66).
    """
    import mne

    onsets = np.asarray(onsets_s, dtype=float).ravel()
    sfreq = float(raw.info["sfreq"])
    _check_frequencies(options, sfreq)
    picks, bads = pick_data_channels(raw.info, options.picks)
    source = raw.filenames[0].name if raw.filenames and raw.filenames[0] else "recording"
    window = _EpochWindow.plan(options, sfreq)

    reasons = [""] * len(onsets)
    samples = np.full(len(onsets), -1, dtype=np.int64)
    finite = np.isfinite(onsets)
    samples[finite] = np.round(onsets[finite] * sfreq).astype(np.int64) + raw.first_samp
    first_of_sample: dict[int, int] = {}
    for i, sample in enumerate(samples.tolist()):
        if not finite[i]:
            reasons[i] = "no onset (not a finite number)"
        elif sample + window.first < raw.first_samp or sample + window.last > raw.last_samp:
            reasons[i] = OUT_OF_RANGE
        elif sample + window.cut_first < raw.first_samp or sample + window.cut_last > raw.last_samp:
            reasons[i] = f"{OUT_OF_RANGE} with the resampling filter's margin"
        elif sample in first_of_sample:
            reasons[i] = f"same onset sample as event {first_of_sample[sample]}"
        else:
            first_of_sample[sample] = i
    candidates = sorted(first_of_sample.values(), key=lambda i: samples[i])

    with captured_mne_messages(source, messages):
        continuous = raw.copy().pick(picks).load_data(verbose="WARNING")
        if options.l_freq is not None or options.h_freq is not None:
            continuous.filter(options.l_freq, options.h_freq, picks="all", n_jobs=1, verbose="WARNING")
        ch_types = continuous.get_channel_types()
        reject = {k: v for k, v in (options.reject or {}).items() if k in set(ch_types)} or None
        data = np.zeros((0, len(ch_types), window.cut_last - window.cut_first + 1))
        if candidates:
            events = np.column_stack([samples[candidates], np.zeros(len(candidates), np.int64),
                                      np.ones(len(candidates), np.int64)])
            start, stop = window.first / sfreq, window.last / sfreq
            baseline = None if options.baseline is None else (
                start if options.baseline[0] is None else options.baseline[0],
                stop if options.baseline[1] is None else options.baseline[1])
            epochs = mne.Epochs(continuous, events, event_id={"onset": 1}, tmin=window.cut_first / sfreq,
                                tmax=window.cut_last / sfreq, baseline=baseline, reject=reject, reject_tmin=start,
                                reject_tmax=stop, proj=True, preload=True, reject_by_annotation=True,
                                verbose="WARNING")
            for position, log in enumerate(epochs.drop_log):
                reasons[candidates[position]] = _drop_reason(log, set(continuous.ch_names))
            if len(epochs):
                data = epochs.get_data(copy=True).astype(np.float64, copy=False)
    data, times = window.finish(data)
    return EpochedData(data=data, times=times, kept=np.array([r == "" for r in reasons], dtype=bool),
                       drop_reasons=reasons, ch_names=list(continuous.ch_names), ch_types=list(ch_types),
                       sfreq=window.rate, bads=bads)


#: the largest denominator of the resampling ratio new / old rate (larger ones are approximated)
_MAX_RATIO_DENOMINATOR = 1000
#: half-length of scipy's default resample_poly filter, in samples of the up-sampled signal, per
#: unit of max(up, down)
_POLYPHASE_HALF_LENGTH = 10


@dataclass(frozen=True)
class _EpochWindow:
    """Where an epoch lies and how it is resampled, in samples of the recording from the onset.

    ``first`` to ``last`` is the epoch (``round(tmin * sfreq)`` to ``round(tmax * sfreq)``, as MNE
    counts); ``cut_first`` to ``cut_last`` what is cut from the recording: the epoch itself, or,
    when resampling by ``up / down``, the epoch with a margin at least as long as the anti-aliasing
    filter reaches, starting and ending on multiples of ``down``.

    Resampling epochs: polyphase filtering (:func:`scipy.signal.resample_poly`, its default
    Kaiser-windowed FIR low-pass at the lower Nyquist frequency) of the cut with its margin,
    then the margin is cut off. Because the cut starts on a multiple of ``down``, the new samples
    lie exactly at ``k / rate`` s from the onset, for every ``k`` with ``tmin <= k / rate <= tmax``,
    whatever the recording's rate (subjects recorded at different rates share one time axis); the
    margin means the epoch's edges see real data, not padding.

    ``epochs.resample`` is not used: MNE maps ``n`` samples onto ``round(n * up / down)`` over the
    same duration, which stretches the time axis whenever ``n * up / down`` is not whole
    (MeegSpec's default -0.1 to 0.6 s at 1000 Hz -> 250 Hz: a 20 Hz sine is off by up to 13 % of
    its amplitude; here by < 0.2 %, edges included).
    """

    first: int
    last: int
    cut_first: int
    cut_last: int
    up: int = 1
    down: int = 1
    rate: float = 0.0
    #: resampled epochs: the new samples k_first / rate to k_last / rate (every one in tmin..tmax)
    k_first: int = 0
    k_last: int = 0

    @classmethod
    def plan(cls, options: EpochOptions, sfreq: float) -> "_EpochWindow":
        first, last = int(round(options.tmin * sfreq)), int(round(options.tmax * sfreq))
        if options.resample_hz is None or np.isclose(options.resample_hz, sfreq):
            return cls(first, last, first, last, rate=sfreq)
        ratio = Fraction(options.resample_hz / sfreq).limit_denominator(_MAX_RATIO_DENOMINATOR)
        up, down = ratio.numerator, ratio.denominator
        rate = sfreq * up / down
        rate = float(options.resample_hz) if np.isclose(rate, options.resample_hz, rtol=1e-12) else rate
        reach = -(-_POLYPHASE_HALF_LENGTH * max(up, down) // up) + 1  # input samples, rounded up
        k_first = int(np.ceil(options.tmin * rate - 1e-9))
        k_last = int(np.floor(options.tmax * rate + 1e-9))
        return cls(first, last, down * ((first - reach) // down), down * -(-(last + reach) // down), up, down, rate,
                   k_first, k_last)

    def finish(self, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The epochs and their times (s from the onset) from the cut data.

        Parameters
        ----------
        cut : ndarray, shape (n_epochs, n_channels, cut_last - cut_first + 1)

        Returns
        -------
        data : ndarray, shape (n_epochs, n_channels, n_times)
        times : ndarray, shape (n_times,)
        """
        from scipy.signal import resample_poly

        if self.up == self.down == 1:
            return cut, np.arange(self.first, self.last + 1) / self.rate
        offset = self.cut_first * self.up // self.down  # exact: cut_first is a multiple of down
        times = np.arange(self.k_first, self.k_last + 1) / self.rate
        if cut.shape[0] == 0:
            return np.zeros(cut.shape[:2] + (len(times),)), times
        kept = slice(self.k_first - offset, self.k_last - offset + 1)
        resampled = resample_poly(cut, self.up, self.down, axis=-1)[..., kept]
        return np.ascontiguousarray(resampled, dtype=np.float64), times


def _drop_reason(log: tuple[str, ...], channel_names: set[str]) -> str:
    """MNE's drop-log entry of one epoch as a sentence ('' when kept)."""
    if not log:
        return ""
    channels = [entry for entry in log if entry in channel_names]
    others = [entry for entry in log if entry not in channel_names]
    parts = [f"peak-to-peak amplitude above the reject threshold in {', '.join(channels)}"] if channels else []
    for entry in others:
        if entry == "NO_DATA":
            parts.append(OUT_OF_RANGE)
        elif entry.upper().startswith("BAD"):
            parts.append(f"overlaps a '{entry}' annotation")
        else:
            parts.append(entry)
    return "; ".join(parts)
