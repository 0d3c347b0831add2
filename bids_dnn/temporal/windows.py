"""Sliding time windows over epochs: the samples of each window averaged before an RDM."""

from __future__ import annotations

import numpy as np

__all__ = ["window_bounds", "window_average"]


def window_bounds(times: np.ndarray, width_s: float, step_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop sample indices of sliding windows over ``times``.

    Parameters
    ----------
    times : numpy.ndarray, shape (n_times,)
        Sample times (s), evenly spaced.
    width_s : float
        Window width (s); 0 or less than one sample: one sample per window.
    step_s : float or None
        Step between window starts (s); None: one sample.

    Returns
    -------
    starts, stops : numpy.ndarray of int, shape (n_windows,)
        Window ``k`` covers samples ``starts[k]:stops[k]`` (every window has the same length).
    """
    times = np.asarray(times, dtype=np.float64)
    n_times = times.size
    dt = float(np.median(np.diff(times))) if n_times > 1 else 1.0
    width = max(1, int(round(width_s / dt))) if width_s > 0 else 1
    width = min(width, n_times)
    step = max(1, int(round(step_s / dt))) if step_s else 1
    starts = np.arange(0, n_times - width + 1, step, dtype=np.int64)
    return starts, starts + width


def window_average(data: np.ndarray, times: np.ndarray, width_s: float, step_s: float | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Average the samples of each sliding window.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_trials, n_channels, n_times)
    times : numpy.ndarray, shape (n_times,)
    width_s, step_s : float, float or None
        As :func:`window_bounds`.

    Returns
    -------
    windowed : numpy.ndarray, shape (n_trials, n_channels, n_windows)
        ``data`` itself when every window is one sample and the step is one sample.
    centres : numpy.ndarray, shape (n_windows,)
        Mean time of each window's samples (s).
    """
    times = np.asarray(times, dtype=np.float64)
    starts, stops = window_bounds(times, width_s, step_s)
    if stops[0] - starts[0] == 1 and (starts.size < 2 or starts[1] - starts[0] == 1):
        return data, times[starts]
    cumulative = np.concatenate([np.zeros(data.shape[:2] + (1,)), np.cumsum(data, axis=2, dtype=np.float64)],
                                axis=2)
    width = stops - starts
    windowed = (cumulative[:, :, stops] - cumulative[:, :, starts]) / width
    centres = np.array([times[a:b].mean() for a, b in zip(starts, stops)])
    return windowed, centres
