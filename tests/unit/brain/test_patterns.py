"""ROI masks on the BOLD grid, noise normalisation and split-half reliability."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_dnn.errors import AnalysisError, BidsValidationError, InputMissingError
from bids_dnn.brain.patterns import (
    apply_mask,
    check_same_grid,
    load_roi_masks_from_atlas,
    load_roi_masks_from_files,
    noise_covariance,
    noise_normalize,
    split_half_reliability,
    voxel_counts_table,
)

# 2 mm atlas grid (20^3 voxels, origin 0) and a 4 mm BOLD grid (10^3) whose voxel centres sit
# on 2 mm voxel centres: BOLD voxel (i, j, k) is at 4 * ijk + 2 mm = atlas voxel 2 * ijk + 1.
ATLAS_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
BOLD_AFFINE = np.array([[4.0, 0, 0, 2.0], [0, 4.0, 0, 2.0], [0, 0, 4.0, 2.0], [0, 0, 0, 1.0]])
BOLD_SHAPE = (10, 10, 10)
NAMES = ["V1", "FFA", "PPA"]


def _bold_ref() -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros(BOLD_SHAPE + (3,), dtype=np.float32), BOLD_AFFINE)


def _labels_table(names=NAMES) -> pd.DataFrame:
    return pd.DataFrame({"index": np.arange(1, len(names) + 1), "name": names})


def _on_bold_grid(fine: np.ndarray) -> np.ndarray:
    """Hand-built nearest neighbour: the 2 mm voxel at each 4 mm voxel's centre."""
    return fine[1::2, 1::2, 1::2][:10, :10, :10]


@pytest.fixture
def atlas(rng):
    data = rng.integers(0, 4, size=(20, 20, 20)).astype(np.int16)  # random labels 0..3 per voxel
    return nib.Nifti1Image(data, ATLAS_AFFINE)


@pytest.fixture
def brain_mask(rng):
    return rng.random(BOLD_SHAPE) < 0.7


# ---------------------------------------------------------------------------------------
# ROIs
# ---------------------------------------------------------------------------------------


def test_deterministic_atlas_nearest_neighbour_and_brain_mask(atlas, brain_mask):
    masks = load_roi_masks_from_atlas(atlas, _labels_table(), _bold_ref(), brain_mask)
    assert list(masks) == NAMES
    expected_labels = _on_bold_grid(np.asarray(atlas.dataobj))
    for index, name in enumerate(NAMES, start=1):
        assert masks[name].shape == BOLD_SHAPE and masks[name].dtype == bool
        np.testing.assert_array_equal(masks[name], (expected_labels == index) & brain_mask)
    subset = load_roi_masks_from_atlas(atlas, _labels_table(), _bold_ref(), brain_mask, names=["PPA", "V1"])
    assert list(subset) == ["PPA", "V1"]


def test_atlas_table_with_background_row_skips_index_zero(atlas, brain_mask):
    table = pd.concat([pd.DataFrame({"index": [0], "name": ["background"]}), _labels_table()])
    assert list(load_roi_masks_from_atlas(atlas, table, _bold_ref(), brain_mask)) == NAMES


def test_probabilistic_atlas_thresholded(rng, brain_mask):
    probs = rng.random((20, 20, 20, 2)).astype(np.float32)
    img = nib.Nifti1Image(probs, ATLAS_AFFINE)
    table = _labels_table(["FFA", "PPA"])
    masks = load_roi_masks_from_atlas(img, table, _bold_ref(), brain_mask, threshold=0.3)
    for v, name in enumerate(["FFA", "PPA"]):
        np.testing.assert_array_equal(masks[name], (_on_bold_grid(probs[..., v]) >= 0.3) & brain_mask)
    # percentages (0-100), default threshold 0.5
    pct = nib.Nifti1Image(probs * 100, ATLAS_AFFINE)
    masks = load_roi_masks_from_atlas(pct, table, _bold_ref(), brain_mask)
    np.testing.assert_array_equal(masks["PPA"], (_on_bold_grid(probs[..., 1]) >= 0.5) & brain_mask)
    with pytest.raises(BidsValidationError, match="2 volumes but its labels table has 3 rows"):
        load_roi_masks_from_atlas(img, _labels_table(), _bold_ref(), brain_mask)


def test_empty_roi_raises_naming_it(atlas, brain_mask):
    table = _labels_table(NAMES + ["hippocampus"])  # index 4: not in the atlas
    with pytest.raises(AnalysisError, match="'hippocampus'"):
        load_roi_masks_from_atlas(atlas, table, _bold_ref(), brain_mask)
    with pytest.raises(AnalysisError, match="'V1'"):
        load_roi_masks_from_atlas(atlas, _labels_table(), _bold_ref(), np.zeros(BOLD_SHAPE, bool), names=["V1"])


def test_unknown_label_name_lists_available(atlas, brain_mask):
    with pytest.raises(InputMissingError) as info:
        load_roi_masks_from_atlas(atlas, _labels_table(), _bold_ref(), brain_mask, names=["FFa", "LOC"])
    message = str(info.value)
    assert "'LOC'" in message and "did you mean 'FFA'" in message and "available: V1, FFA, PPA" in message
    with pytest.raises(BidsValidationError, match="name"):
        load_roi_masks_from_atlas(atlas, pd.DataFrame({"index": [1]}), _bold_ref(), brain_mask)


def test_roi_mask_files_resampled_binarised(tmp_path, rng, brain_mask):
    soft = rng.random((20, 20, 20)).astype(np.float32)  # non-binary: > 0.5 is inside
    path = tmp_path / "sub-01_label-FFA_mask.nii.gz"
    nib.save(nib.Nifti1Image(soft, ATLAS_AFFINE), path)
    boxed = np.zeros((20, 20, 20), np.uint8)
    boxed[4:12, 2:8, 10:20] = 1
    masks = load_roi_masks_from_files(
        {"FFA": path, "box": nib.Nifti1Image(boxed, ATLAS_AFFINE)}, _bold_ref(), brain_mask
    )
    assert list(masks) == ["FFA", "box"]
    np.testing.assert_array_equal(masks["FFA"], (_on_bold_grid(soft) > 0.5) & brain_mask)
    np.testing.assert_array_equal(masks["box"], (_on_bold_grid(boxed) > 0) & brain_mask)
    with pytest.raises(InputMissingError, match="not found"):
        load_roi_masks_from_files({"x": tmp_path / "missing.nii.gz"}, _bold_ref(), brain_mask)
    far_affine = ATLAS_AFFINE.copy()
    far_affine[0, 3] = 500.0  # outside the BOLD field of view
    far = nib.Nifti1Image(boxed, far_affine)
    with pytest.raises(AnalysisError, match="'far'"):
        load_roi_masks_from_files({"far": far}, _bold_ref(), brain_mask)


def test_check_same_grid_messages():
    ref = _bold_ref()
    check_same_grid(ref, nib.Nifti1Image(np.zeros(BOLD_SHAPE), BOLD_AFFINE + 1e-5), "same")
    with pytest.raises(InputMissingError) as info:  # an input problem: exit 66
        check_same_grid(ref, nib.Nifti1Image(np.zeros((20, 20, 20)), ATLAS_AFFINE), "brain mask vs BOLD")
    assert info.value.exit_code == 66
    message = str(info.value)
    assert message.startswith("brain mask vs BOLD: images are not on the same grid")
    assert "(10, 10, 10) vs (20, 20, 20)" in message and "[4.0, 4.0, 4.0] vs [2.0, 2.0, 2.0]" in message
    shifted = BOLD_AFFINE.copy()
    shifted[0, 3] += 0.5
    with pytest.raises(InputMissingError, match="affines differ by up to 0.5"):
        check_same_grid(ref, nib.Nifti1Image(np.zeros(BOLD_SHAPE), shifted), "mask")


def test_voxel_counts_and_apply_mask(rng):
    masks = {"a": np.zeros(BOLD_SHAPE, bool), "b": np.ones(BOLD_SHAPE, bool)}
    masks["a"][0, 0, :3] = True
    table = voxel_counts_table(masks, voxel_volume_mm3=64.0)
    assert table.to_dict("list") == {"roi": ["a", "b"], "n_voxels": [3, 1000], "volume_mm3": [192.0, 64000.0]}
    data = rng.normal(size=BOLD_SHAPE + (5,))
    np.testing.assert_array_equal(apply_mask(data, masks["a"]), data[0, 0, :3].T)
    assert apply_mask(data[..., 0], masks["b"]).shape == (1000,)


# ---------------------------------------------------------------------------------------
# Noise normalisation
# ---------------------------------------------------------------------------------------


def test_univariate_is_betas_over_residual_sd(rng):
    betas, residuals = rng.normal(size=(8, 30)), rng.normal(size=(100, 30)) * rng.uniform(0.5, 3, 30)
    np.testing.assert_allclose(
        noise_normalize(betas, residuals, "univariate"), betas / residuals.std(axis=0, ddof=1), rtol=1e-12
    )
    dof_scaled = noise_normalize(betas, residuals, "univariate", dof=90)
    resid0 = residuals - residuals.mean(0)
    np.testing.assert_allclose(dof_scaled, betas / np.sqrt((resid0**2).sum(0) / 90), rtol=1e-12)
    np.testing.assert_array_equal(noise_normalize(betas, residuals, "none"), betas)
    residuals[:, 4] = np.nan
    assert np.isnan(noise_normalize(betas, residuals, "univariate")[:, 4]).all()


def test_univariate_blocks_float32_residuals_without_a_float64_copy(rng):
    """Whole-brain float32 residuals: SDs computed in voxel blocks equal numpy's std of the
    float64 copy (NaN and zero-variance voxels left out), and the traced peak stays well below
    the float64 copy the former code made."""
    import tracemalloc

    n_time, n_vox = 120, 8 * 4096 + 17
    residuals = (rng.normal(size=(n_time, n_vox)) * rng.uniform(0.5, 3, n_vox)).astype(np.float32)
    residuals[7, 5000] = np.nan
    residuals[:, 9000] = 1.5  # zero variance
    betas = rng.normal(size=(6, n_vox))
    wide = residuals.astype(np.float64)
    expected = betas / wide.std(axis=0, ddof=1)
    expected[:, [5000, 9000]] = np.nan
    np.testing.assert_allclose(noise_normalize(betas, residuals, "univariate"), expected, rtol=1e-12)
    tracemalloc.start()
    try:
        noise_normalize(betas, residuals, "univariate", dof=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < wide.nbytes / 2, peak / wide.nbytes  # former code: 2 whole float64 copies


def test_multivariate_whitens_known_covariance(rng):
    n_vox = 12
    a = rng.normal(size=(n_vox, n_vox))
    sigma = a @ a.T / n_vox + 0.2 * np.eye(n_vox)
    chol = np.linalg.cholesky(sigma)
    residuals = rng.normal(size=(4000, n_vox)) @ chol.T
    betas = rng.normal(size=(20000, n_vox)) @ chol.T  # patterns with the noise covariance
    white = noise_normalize(betas, residuals, "multivariate", "shrinkage_diag")
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(n_vox), atol=0.08)
    raw_dev = np.abs(np.cov(betas, rowvar=False) - np.eye(n_vox)).max()
    assert raw_dev > 0.5  # the test is not trivial
    # diag estimator = univariate
    np.testing.assert_allclose(
        noise_normalize(betas[:5], residuals, "multivariate", "diag"),
        noise_normalize(betas[:5], residuals, "univariate"),
        rtol=1e-10,
    )


@pytest.mark.parametrize("estimator", ["shrinkage_diag", "shrinkage_eye", "diag"])
def test_covariance_matches_rsatoolbox(rng, estimator):
    noise = pytest.importorskip("rsatoolbox.data.noise")
    residuals = rng.normal(size=(40, 25)) @ rng.normal(size=(25, 25))  # n_time < n_vox
    ours = noise_covariance(residuals, estimator, dof=35)
    np.testing.assert_allclose(ours, noise.cov_from_residuals(residuals, dof=35, method=estimator), rtol=1e-9)
    whitened = noise_normalize(np.eye(25), residuals, "multivariate", estimator, dof=35)
    np.testing.assert_allclose(whitened @ ours @ whitened.T, np.eye(25), atol=1e-6)


# ---------------------------------------------------------------------------------------
# Reliability
# ---------------------------------------------------------------------------------------


def test_split_half_reliability_recovers_planted(rng):
    n_runs, n_cond, n_vox = 8, 2000, 60
    noise_sd = np.linspace(0.3, 3.0, n_vox)  # signal variance 1
    signal = rng.normal(size=(n_cond, n_vox))
    runs = signal + rng.normal(size=(n_runs, n_cond, n_vox)) * noise_sd
    planted = 1.0 / (1.0 + noise_sd**2 / n_runs)  # reliability of the mean over all runs
    rel = split_half_reliability(runs)
    assert rel.shape == (n_vox,)
    assert np.abs(rel - planted).max() < 0.1 and np.abs(rel - planted).mean() < 0.04
    # reference: numpy correlation of odd/even means, Spearman-Brown stepped up
    r = np.array([np.corrcoef(runs[0::2, :, v].mean(0), runs[1::2, :, v].mean(0))[0, 1] for v in range(n_vox)])
    np.testing.assert_allclose(rel, 2 * r / (1 + r), rtol=1e-10)


def test_split_half_reliability_nan_safe(rng):
    runs = rng.normal(size=(4, 10, 5)) + rng.normal(size=(10, 5))
    runs[0, 3, 0] = np.nan  # averaged over the remaining odd run
    runs[:, :, 1] = np.nan  # nothing usable
    runs[:, :, 2] = 1.0  # constant
    rel = split_half_reliability(runs)
    assert np.isfinite(rel[[0, 3, 4]]).all() and np.isnan(rel[[1, 2]]).all()
    a = np.nanmean(runs[0::2, :, 0], axis=0)
    assert a[3] == runs[2, 3, 0]  # run 1 missing: condition 3's odd mean is run 3's value
    r = np.corrcoef(a, runs[1::2, :, 0].mean(0))[0, 1]
    assert rel[0] == pytest.approx(2 * r / (1 + r))
    with pytest.raises(AnalysisError, match="at least 2 runs"):
        split_half_reliability(runs[:1])


def test_masked_timeseries_equals_full_read(tmp_path):
    """Chunked forward reading of a .nii.gz equals reading the whole 4D image, for any chunk size."""
    import nibabel as nib

    from bids_dnn.brain.patterns import masked_timeseries

    rng = np.random.default_rng(5)
    data = rng.normal(100, 5, size=(6, 7, 5, 23)).astype(np.float32)
    mask = rng.random((6, 7, 5)) > 0.4
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    expected = data[mask].T
    for chunk in (1, 4, 23, 100):
        out = masked_timeseries(path, mask, "bold", chunk_volumes=chunk)
        assert out.dtype == np.float32  # float32 storage: the values on disk, exactly
        np.testing.assert_array_equal(out, expected)
    wide = masked_timeseries(path, mask, "bold", dtype=np.float64)
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(wide, nib.load(str(path)).get_fdata()[mask].T)


def test_masked_timeseries_truncated_file_is_exit_66(tmp_path):
    import nibabel as nib

    from bids_dnn.errors import InputMissingError
    from bids_dnn.brain.patterns import masked_timeseries

    data = np.random.default_rng(6).normal(size=(8, 8, 8, 40)).astype(np.float32)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(InputMissingError, match="cannot read the image data") as info:
        masked_timeseries(path, np.ones((8, 8, 8), bool), "bold.nii.gz")
    assert info.value.exit_code == 66


def test_residual_sd_pools_runs_without_concatenating(rng):
    """Runs pooled as if concatenated (one mean, one sum of squares), any column subset."""
    from bids_dnn.brain.patterns import divide_by_sd, residual_sd

    runs = [rng.standard_normal((n, 50)).astype(np.float32) + 3.0 for n in (40, 55, 31)]
    runs[1][:, 7] = np.nan
    columns = np.array([3, 7, 0, 49, 12])
    whole = np.concatenate(runs).astype(np.float64)[:, columns]
    expected = np.sqrt(((whole - whole.mean(axis=0)) ** 2).sum(axis=0) / 120)
    got = residual_sd(runs, dof=120, columns=columns, block=2)
    np.testing.assert_allclose(got[[0, 2, 3, 4]], expected[[0, 2, 3, 4]], rtol=1e-12)
    assert np.isnan(got[1])  # the column with a NaN residual
    np.testing.assert_allclose(residual_sd(np.concatenate(runs)), np.concatenate(runs).astype(np.float64).std(
        axis=0, ddof=1), rtol=1e-12)
    betas = rng.standard_normal((4, 5))
    scaled = divide_by_sd(betas, got)
    np.testing.assert_allclose(scaled[:, 0], betas[:, 0] / expected[0], rtol=1e-12)
    assert np.isnan(scaled[:, 1]).all()
