"""The participant maps section's per-map summaries and flags, checked against planted volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_dnn.report.inputs import MapFile
from bids_dnn.report.participant_maps_sections import _ceiling_image, _map_flag, _map_summary_rows


def _write_map(path: Path, values: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(values.astype(np.float32), affine), str(path))
    return path


def test_map_summary_row_matches_numpy_and_the_planted_peak(tmp_path: Path, rng: np.random.Generator) -> None:
    values = rng.uniform(-0.5, 0.5, size=(6, 7, 5))
    values[0, :, :] = np.nan  # voxels without a value
    peak_ijk = (4, 2, 3)
    values[peak_ijk] = -3.0  # the largest |value| is negative
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 1.0]
    path = _write_map(tmp_path / "sub-01_model-m_layer-l1_stat-r_desc-encoding_statmap.nii.gz", values, affine)
    item = MapFile(path, "encoding", "m", "l1", "r", {"Layer": "layer.1"})

    row = _map_summary_rows([item]).iloc[0]

    stored = values.astype(np.float32).astype(np.float64)
    finite = stored[np.isfinite(stored)]
    assert row["model"] == "m" and row["layer"] == "layer.1" and row["stat"] == "r"
    assert row["n_voxels"] == finite.size == 6 * 7 * 5 - 7 * 5
    np.testing.assert_allclose([row["mean"], row["min"], row["max"]], [finite.mean(), finite.min(), finite.max()])
    x, y, z = affine[:3, :3] @ np.array(peak_ijk) + affine[:3, 3]
    assert row["peak"] == f"({x:.0f}, {y:.0f}, {z:.0f})"
    assert row["flag"] == "" and row["file"] == path.name


def test_map_flags_count_normalised_r2_outside_the_unit_interval_and_alphas_at_the_grid_edge(
        rng: np.random.Generator) -> None:
    normr2 = rng.uniform(0.0, 1.0, size=50)
    normr2[[3, 17, 40]] = [-0.2, 1.5, 2.0]
    normr2[5] = np.nan
    item = MapFile(Path("x.nii.gz"), "encoding", "m", "l1", "normr2")
    assert _map_flag(item, normr2) == "3 of 49 voxels outside [0, 1]"

    grid = [0.1, 1.0, 10.0, 100.0]
    alphas = np.array([0.1] * 6 + [1.0, 10.0, 10.0, 100.0])  # 7 of 10 at an edge of the grid
    item = MapFile(Path("x.nii.gz"), "encoding", "m", "l1", "alpha", {"Alphas": grid})
    assert _map_flag(item, alphas) == "70% of voxels at the edge of the alpha grid (0.1 .. 100)"
    assert _map_flag(item, np.array([1.0, 10.0, 10.0, 100.0])) == ""  # 1 of 4: below the warning share


def test_ceiling_image_hides_voxels_at_or_below_zero(tmp_path: Path, rng: np.random.Generator) -> None:
    values = rng.uniform(-1.0, 1.0, size=(5, 4, 3))
    values[0, 0, :] = np.nan
    values[1, 1, 1] = 0.0
    path = _write_map(tmp_path / "ceiling.nii.gz", values, np.eye(4))

    image, n_values, n_low = _ceiling_image(path)

    stored = values.astype(np.float32)
    finite = np.isfinite(stored)
    assert n_values == int(finite.sum()) == values.size - 3
    assert n_low == int((finite & (stored <= 0)).sum())
    shown = np.asarray(image.dataobj)
    keep = finite & (stored > 0)
    np.testing.assert_array_equal(np.isnan(shown), ~keep)
    np.testing.assert_allclose(shown[keep], stored[keep])
