"""Peak and onset latencies of time courses, with confidence intervals and paired comparisons.

Curves are ``(n_subjects, n_times)`` (e.g. RSA time courses of one model layer, one row per
subject) or one ``(n_times,)`` curve; ``times`` are the sample times (s), strictly increasing.
Pure numpy (scipy only for the t quantile of jackknife intervals).

Latencies (``LATENCY_STATISTICS``)
    ``"peak"`` (:func:`peak_latency`)
        Time of the largest value (the first one on ties) within the window.
    ``"onset"`` (:func:`onset_latency`)
        Fractional-peak onset: the first time, within the window, at which the curve reaches
        ``fraction`` times its peak value (the peak within the window; level relative to 0, so
        subtract a baseline first if the curve has one). Between the last sample below the
        level and the first sample at or above it the time is interpolated linearly:
        ``t[i-1] + (level - c[i-1]) / (c[i] - c[i-1]) * (t[i] - t[i-1])``; when the curve is
        already at the level at the window's first sample, the onset is that sample's time.
        NaN when the peak is not positive (no rise to measure).
Window
    ``window=(start, stop)`` keeps the samples with ``start <= t <= stop`` (s); None: all.
Confidence intervals (``LATENCY_CI_METHODS``; :func:`latency_ci`)
    The latency is always that of the group-mean curve (the mean over subjects), which is far
    less noisy than single-subject latencies.
    ``"bootstrap"`` (Cichy, Pantazis & Oliva 2014)
        Subjects are resampled with replacement ``n_resamples`` times
        (:func:`bids_dnn.stats.bootstrap.bootstrap_indices`); the latency of each resampled
        group mean is computed; the interval is the ``(1 - ci) / 2`` and ``(1 + ci) / 2``
        percentiles (``np.percentile``, linear) of those latencies (NaN ones left out); ``se``
        is their standard deviation (ddof=1).
    ``"jackknife"`` (Miller, Patterson & Ulrich 1998; Ulrich & Miller 2001)
        ``L_i`` is the latency of the mean curve of all subjects but ``i``;
        ``se = sqrt((n - 1) / n * sum_i (L_i - mean(L))^2)`` (the leave-one-out spread scaled up
        by ``n - 1``), and the interval is ``value +- t_{(1 + ci) / 2, n - 1} * se`` around the
        latency of the full group mean. Suited to the smooth (interpolated) onset; for the
        sample-grid peak the jackknife standard error is unreliable (non-smooth statistic).
Paired comparison (:func:`compare_latencies`)
    ``difference = latency(mean b) - latency(mean a)``. The same resampled subjects are used for
    both conditions (paired bootstrap); the interval is the percentile interval of the resampled
    differences and the two-sided p inverts it:
    ``p = min(1, 2 * (1 + min(#{D* <= 0}, #{D* >= 0})) / (B + 1))`` over the B resamples
    where both latencies are defined (a difference of exactly 0, frequent for latencies on a
    sample grid, counts on both sides, which is conservative). ``p <= alpha`` roughly when the
    ``1 - alpha`` percentile interval excludes 0.
Randomness
    Give ``rng`` (a Generator, used and advanced, or an int seed) or ``seed``; neither means
    seed 0, so equal calls give equal results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from bids_dnn.stats.bootstrap import bootstrap_indices

__all__ = [
    "LATENCY_STATISTICS",
    "LATENCY_CI_METHODS",
    "LatencyEstimate",
    "LatencyDifference",
    "peak_latency",
    "onset_latency",
    "latency_ci",
    "compare_latencies",
]


# --------------------------------------------------------------------------- inputs
def _curves_and_times(curves: np.ndarray, times: np.ndarray,
                      window: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Curves as (n_rows, n_window_times) restricted to the window, their times, and whether
    the input was one curve."""
    c = np.asarray(curves, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    single = c.ndim == 1
    c = c[None, :] if single else c
    if c.ndim != 2:
        raise ValueError(f"curves must be (n_subjects, n_times) or (n_times,), got shape "
                         f"{np.shape(curves)}")
    if t.ndim != 1 or t.size != c.shape[1]:
        raise ValueError(f"times must be (n_times,) = ({c.shape[1]},), got shape {t.shape}")
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError("times must be finite and strictly increasing")
    if not np.all(np.isfinite(c)):
        raise ValueError("curves contain NaN or infinite values")
    if window is not None:
        start, stop = (float(w) for w in window)
        keep = (t >= start) & (t <= stop)
        if not keep.any():
            raise ValueError(f"window ({start}, {stop}) s contains no sample (times span "
                             f"{t[0]} to {t[-1]} s)")
        c, t = c[:, keep], t[keep]
    return c, t, single


def _shaped(values: np.ndarray, single: bool) -> np.ndarray:
    return values[0] if single else values


# --------------------------------------------------------------------------- latencies
def _peak_rows(c: np.ndarray, t: np.ndarray, fraction: float) -> np.ndarray:
    return t[np.argmax(c, axis=1)]


def _onset_rows(c: np.ndarray, t: np.ndarray, fraction: float) -> np.ndarray:
    peak = c.max(axis=1)
    level = fraction * peak
    reached = c >= level[:, None]
    first = np.argmax(reached, axis=1)  # the peak itself reaches the level: always found
    rows = np.arange(c.shape[0])
    before = np.maximum(first - 1, 0)
    c_lo, c_hi = c[rows, before], c[rows, first]
    t_lo, t_hi = t[before], t[first]
    with np.errstate(divide="ignore", invalid="ignore"):
        onset = np.where(first > 0, t_lo + (level - c_lo) / (c_hi - c_lo) * (t_hi - t_lo), t_hi)
    return np.where(peak > 0, onset, np.nan)


#: latency name -> ``f(curves (n_rows, n_times), times (n_times,), fraction) -> (n_rows,)``
#: on window-restricted curves; the names are the ``statistic`` values of this module
LATENCY_STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "peak": _peak_rows,
    "onset": _onset_rows,
}


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    return fraction


def peak_latency(curves: np.ndarray, times: np.ndarray, *,
                 window: tuple[float, float] | None = None) -> np.ndarray:
    """Time of each curve's maximum.

    Parameters
    ----------
    curves : np.ndarray, (n_subjects, n_times) or (n_times,)
        Finite values.
    times : np.ndarray, (n_times,)
        Sample times (s), strictly increasing.
    window : (float, float), optional
        Only samples with ``start <= t <= stop`` (s).

    Returns
    -------
    np.ndarray, (n_subjects,) or () for one curve
        Time of the largest value within the window (the first one on ties).
    """
    c, t, single = _curves_and_times(curves, times, window)
    return _shaped(_peak_rows(c, t, 1.0), single)


def onset_latency(curves: np.ndarray, times: np.ndarray, *, fraction: float = 0.5,
                  window: tuple[float, float] | None = None) -> np.ndarray:
    """Fractional-peak onset: first time each curve reaches ``fraction`` of its peak.

    Parameters
    ----------
    curves : np.ndarray, (n_subjects, n_times) or (n_times,)
        Finite values (baseline-corrected: the level is ``fraction * peak`` above 0).
    times : np.ndarray, (n_times,)
        Sample times (s), strictly increasing.
    fraction : float
        In (0, 1]; 0.5: the half-maximum onset.
    window : (float, float), optional
        Peak and onset are searched within ``start <= t <= stop`` (s).

    Returns
    -------
    np.ndarray, (n_subjects,) or () for one curve
        Onset time (s), interpolated linearly between the samples around the crossing (module
        docstring); NaN for a curve whose peak within the window is not positive.
    """
    c, t, single = _curves_and_times(curves, times, window)
    return _shaped(_onset_rows(c, t, _check_fraction(fraction)), single)


# --------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class LatencyEstimate:
    """Latency of a group-mean curve with its confidence interval (:func:`latency_ci`).

    Attributes
    ----------
    value : float
        Latency of the mean curve of all subjects (s).
    ci_low, ci_high : float
        Confidence interval (s); NaN when too few resamples had a defined latency.
    se : float
        Standard error: SD of the bootstrap latencies, or the jackknife standard error.
    resampled : np.ndarray, (n_resamples,) or (n_subjects,)
        Latencies of the bootstrap group means, or of the leave-one-out means (jackknife).
    statistic, method : str
        ``"peak"`` / ``"onset"`` and ``"bootstrap"`` / ``"jackknife"``.
    ci : float
        Coverage of the interval.
    n_undefined : int
        Resamples whose latency is undefined (NaN onset) and were left out.
    """

    value: float
    ci_low: float
    ci_high: float
    se: float
    resampled: np.ndarray = field(repr=False)
    statistic: str = "peak"
    method: str = "bootstrap"
    ci: float = 0.95
    n_undefined: int = 0


class LatencyDifference(NamedTuple):
    """Paired latency comparison of :func:`compare_latencies` (unpacks as a 4-tuple).

    Attributes
    ----------
    difference : float
        ``latency(mean b) - latency(mean a)`` (s).
    ci_low, ci_high : float
        Percentile bootstrap interval of the difference (s).
    p_value : float
        Two-sided bootstrap p (module docstring).
    """

    difference: float
    ci_low: float
    ci_high: float
    p_value: float


def _generator(rng: np.random.Generator | int | None, seed: int | None) -> np.random.Generator:
    if rng is not None and seed is not None:
        raise ValueError("give rng or seed, not both")
    return np.random.default_rng(rng if rng is not None else (0 if seed is None else seed))


def _resampled_means(c: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(B, n_times) mean curves of the resampled subjects ``indices`` (B, n)."""
    n_boot, n = indices.shape
    n_subjects = c.shape[0]
    counts = np.bincount((np.arange(n_boot)[:, None] * n_subjects + indices).ravel(),
                         minlength=n_boot * n_subjects).reshape(n_boot, n_subjects)
    return (counts.astype(np.float64) @ c) / n


def _percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [50 * (1 - ci), 50 * (1 + ci)])
    return float(low), float(high)


def _bootstrap(c: np.ndarray, t: np.ndarray, latency: Callable, fraction: float, value: float,
               ci: float, n_resamples: int, rng: np.random.Generator) -> dict:
    indices = bootstrap_indices(c.shape[0], n_resamples, rng)
    resampled = latency(_resampled_means(c, indices), t, fraction)
    low, high = _percentile_interval(resampled, ci)
    finite = resampled[np.isfinite(resampled)]
    se = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    return dict(ci_low=low, ci_high=high, se=se, resampled=resampled,
                n_undefined=int(resampled.size - finite.size))


def _jackknife(c: np.ndarray, t: np.ndarray, latency: Callable, fraction: float, value: float,
               ci: float, n_resamples: int, rng: np.random.Generator) -> dict:
    import scipy.stats

    n = c.shape[0]
    leave_one_out = (c.sum(axis=0)[None, :] - c) / (n - 1)
    resampled = latency(leave_one_out, t, fraction)
    n_undefined = int(np.sum(~np.isfinite(resampled)))
    if n_undefined or not np.isfinite(value):
        se = low = high = float("nan")
    else:
        se = float(np.sqrt((n - 1) / n * np.sum((resampled - resampled.mean()) ** 2)))
        half = float(scipy.stats.t.ppf((1 + ci) / 2, n - 1)) * se
        low, high = value - half, value + half
    return dict(ci_low=low, ci_high=high, se=se, resampled=resampled, n_undefined=n_undefined)


#: interval method name -> its implementation; the names are the ``method`` values of
#: :func:`latency_ci`
LATENCY_CI_METHODS: dict[str, Callable[..., dict]] = {
    "bootstrap": _bootstrap,
    "jackknife": _jackknife,
}


def _check_options(statistic: str, ci: float, n_resamples: int) -> None:
    if statistic not in LATENCY_STATISTICS:
        raise ValueError(f"statistic must be one of {list(LATENCY_STATISTICS)}, got {statistic!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")


def latency_ci(curves: np.ndarray, times: np.ndarray, *, statistic: str = "peak",
               method: str = "bootstrap", n_resamples: int = 1000, ci: float = 0.95,
               rng: np.random.Generator | int | None = None, seed: int | None = None,
               fraction: float = 0.5,
               window: tuple[float, float] | None = None) -> LatencyEstimate:
    """Latency of the group-mean curve with a bootstrap or jackknife confidence interval.

    Parameters
    ----------
    curves : np.ndarray, (n_subjects, n_times)
        One curve per subject (at least 2), finite.
    times : np.ndarray, (n_times,)
        Sample times (s), strictly increasing.
    statistic : {"peak", "onset"}
        :func:`peak_latency` or :func:`onset_latency` (with ``fraction``).
    method : {"bootstrap", "jackknife"}
        Percentile bootstrap over subjects, or jackknife with a t interval (module docstring).
    n_resamples : int
        Bootstrap resamples (ignored by the jackknife).
    ci : float
        Coverage, in (0, 1).
    rng, seed
        Randomness of the bootstrap (module docstring).
    fraction : float
        Fraction of the peak for ``statistic="onset"``.
    window : (float, float), optional
        Only samples with ``start <= t <= stop`` (s).

    Returns
    -------
    LatencyEstimate
    """
    _check_options(statistic, ci, n_resamples)
    if method not in LATENCY_CI_METHODS:
        raise ValueError(f"method must be one of {list(LATENCY_CI_METHODS)}, got {method!r}")
    c, t, single = _curves_and_times(curves, times, window)
    if single or c.shape[0] < 2:
        raise ValueError("latency_ci needs curves of at least 2 subjects, (n_subjects, n_times)")
    fraction = _check_fraction(fraction)
    latency = LATENCY_STATISTICS[statistic]
    value = float(latency(c.mean(axis=0)[None, :], t, fraction)[0])
    spread = LATENCY_CI_METHODS[method](c, t, latency, fraction, value, float(ci),
                                        int(n_resamples), _generator(rng, seed))
    return LatencyEstimate(value=value, statistic=statistic, method=method, ci=float(ci), **spread)


def compare_latencies(curves_a: np.ndarray, curves_b: np.ndarray, times: np.ndarray, *,
                      statistic: str = "peak", n_resamples: int = 1000, ci: float = 0.95,
                      rng: np.random.Generator | int | None = None, seed: int | None = None,
                      fraction: float = 0.5,
                      window: tuple[float, float] | None = None) -> LatencyDifference:
    """Paired bootstrap comparison of the latencies of two group-mean curves (b minus a).

    Parameters
    ----------
    curves_a, curves_b : np.ndarray, (n_subjects, n_times)
        The same subjects in the same order (e.g. two model layers), finite.
    times : np.ndarray, (n_times,)
        Sample times (s), strictly increasing.
    statistic : {"peak", "onset"}
    n_resamples : int
        Bootstrap resamples B; each draws subjects with replacement, the same for a and b.
    ci : float
        Coverage of the percentile interval.
    rng, seed
        Randomness (module docstring).
    fraction : float
        Fraction of the peak for ``statistic="onset"``.
    window : (float, float), optional
        Only samples with ``start <= t <= stop`` (s).

    Returns
    -------
    LatencyDifference
        ``(difference, ci_low, ci_high, p_value)``; the interval and p are NaN when fewer than
        2 resamples have both latencies defined.
    """
    _check_options(statistic, ci, n_resamples)
    a, t, single_a = _curves_and_times(curves_a, times, window)
    b, _, single_b = _curves_and_times(curves_b, times, window)
    if single_a or single_b or a.shape != b.shape or a.shape[0] < 2:
        raise ValueError(f"curves_a and curves_b must both be (n_subjects >= 2, n_times), got "
                         f"shapes {np.shape(curves_a)} and {np.shape(curves_b)}")
    fraction = _check_fraction(fraction)
    latency = LATENCY_STATISTICS[statistic]
    difference = float(latency(b.mean(axis=0)[None, :], t, fraction)[0]
                       - latency(a.mean(axis=0)[None, :], t, fraction)[0])
    indices = bootstrap_indices(a.shape[0], int(n_resamples), _generator(rng, seed))
    boot = (latency(_resampled_means(b, indices), t, fraction)
            - latency(_resampled_means(a, indices), t, fraction))
    boot = boot[np.isfinite(boot)]
    low, high = _percentile_interval(boot, ci)
    if boot.size < 2:
        return LatencyDifference(difference, low, high, float("nan"))
    tail_count = min(int(np.sum(boot <= 0)), int(np.sum(boot >= 0)))
    p_value = min(1.0, 2.0 * (1 + tail_count) / (boot.size + 1))
    return LatencyDifference(difference, low, high, p_value)
