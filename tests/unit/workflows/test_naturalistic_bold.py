"""A naturalistic run's BOLD: cleaned like nilearn ``signal.clean`` in float64, kept as float32."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import signal

from bids_dnn.io.bids import RunInputs
from bids_dnn.spec import GLMSpec
from bids_dnn.workflows.naturalistic import run_bold

T_R = 2.0
N_VOLUMES = 120


def _run(tmp_path: Path, rng: np.random.Generator) -> tuple[RunInputs, np.ndarray, np.ndarray, np.ndarray]:
    shape = (4, 3, 3)
    mask = np.zeros(shape, dtype=bool)
    mask[1:4, :, 1:] = True
    motion = rng.standard_normal((N_VOLUMES, 1))
    signal_of_interest = rng.standard_normal((N_VOLUMES, int(mask.sum())))
    drift = np.linspace(-1.0, 1.0, N_VOLUMES)[:, None]
    masked = 1000.0 + signal_of_interest + 5.0 * motion + 3.0 * drift
    data = np.zeros((*shape, N_VOLUMES), dtype=np.float32)
    data[mask] = masked.T
    bold = tmp_path / "sub-01_task-film_run-1_bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), bold)
    confounds = tmp_path / "sub-01_task-film_run-1_desc-confounds_timeseries.tsv"
    pd.DataFrame({"trans_x": motion[:, 0]}).to_csv(confounds, sep="\t", index=False)
    run = RunInputs(subject="01", session=None, task="film", run="1", events=tmp_path / "events.tsv",
                    bold=bold, confounds=confounds, t_r=T_R)
    return run, mask, data[mask].T.astype(np.float64), motion


def test_run_bold_equals_nilearn_clean_and_is_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    run, mask, masked, motion = _run(tmp_path, rng)
    ctx = SimpleNamespace(spec=SimpleNamespace(brain=SimpleNamespace(glm=GLMSpec(confounds=["trans_x"]))))
    cleaned = run_bold(ctx, run, mask)
    assert cleaned.dtype == np.float32 and cleaned.shape == (N_VOLUMES, int(mask.sum()))
    expected = signal.clean(masked, confounds=motion, detrend=True, standardize=None, high_pass=0.008, t_r=T_R)
    np.testing.assert_allclose(cleaned, expected, rtol=1e-5, atol=1e-4)
    # the motion regressor dominated the raw series; after cleaning it is nearly gone
    def motion_r(values: np.ndarray) -> np.ndarray:
        return np.abs(np.corrcoef(np.column_stack([motion[:, 0], values]).T)[0, 1:])
    assert motion_r(masked).min() > 0.9 and motion_r(cleaned).max() < 0.1


def test_run_bold_without_confounds_only_detrends(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    run, mask, masked, _ = _run(tmp_path, rng)
    glm = GLMSpec(confounds=[], drift_model="none")
    cleaned = run_bold(SimpleNamespace(spec=SimpleNamespace(brain=SimpleNamespace(glm=glm))), run, mask)
    expected = signal.clean(masked, detrend=True, standardize=None, t_r=T_R)
    np.testing.assert_allclose(cleaned, expected, rtol=1e-5, atol=1e-4)
