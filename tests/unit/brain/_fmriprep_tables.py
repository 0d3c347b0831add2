"""Synthetic fMRIPrep tables shared by the brain unit tests (imported by name: this folder is on
``sys.path`` while its tests run)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def fmriprep_confounds(n_time: int, rng: np.random.Generator) -> pd.DataFrame:
    """A synthetic fMRIPrep confounds table, shape (n_time, 37): motion with derivatives and
    squares (first-row n/a in the derivatives), tissue signals, CompCor, cosine drifts and
    framewise displacement (first value n/a)."""
    cols: dict[str, np.ndarray] = {}
    for base in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"):
        x = np.cumsum(rng.normal(scale=0.05, size=n_time))
        d = np.r_[np.nan, np.diff(x)]
        cols.update({base: x, f"{base}_derivative1": d, f"{base}_power2": x**2, f"{base}_derivative1_power2": d**2})
    for name in ("white_matter", "csf", "global_signal"):
        cols[name] = rng.normal(size=n_time)
    for i in range(6):
        cols[f"a_comp_cor_{i:02d}"] = rng.normal(size=n_time)
    for i in range(3):
        cols[f"cosine{i:02d}"] = np.cos(np.pi * (np.arange(n_time) + 0.5) * (i + 1) / n_time)
    fd = np.abs(rng.normal(scale=0.1, size=n_time))
    fd[0] = np.nan
    cols["framewise_displacement"] = fd
    return pd.DataFrame(cols)
