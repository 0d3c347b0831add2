"""ROI masks on the BOLD grid (atlas or mask files), atlas label tables, voxel counts."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_dnn.brain.rois import (
    apply_mask,
    load_roi_masks_from_atlas,
    load_roi_masks_from_files,
    read_atlas_labels,
    voxel_counts_table,
)
from bids_dnn.errors import AnalysisError, BidsValidationError, InputMissingError

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


def test_voxel_counts_and_apply_mask(rng):
    masks = {"a": np.zeros(BOLD_SHAPE, bool), "b": np.ones(BOLD_SHAPE, bool)}
    masks["a"][0, 0, :3] = True
    table = voxel_counts_table(masks, voxel_volume_mm3=64.0)
    assert table.to_dict("list") == {"roi": ["a", "b"], "n_voxels": [3, 1000], "volume_mm3": [192.0, 64000.0]}
    data = rng.normal(size=BOLD_SHAPE + (5,))
    np.testing.assert_array_equal(apply_mask(data, masks["a"]), data[0, 0, :3].T)
    assert apply_mask(data[..., 0], masks["b"]).shape == (1000,)


def test_read_atlas_labels_names_as_text_index_as_whole_numbers(tmp_path):
    path = tmp_path / "atlas_dseg.tsv"
    path.write_text("index\tname\n0\tbackground\n 1 \tNA\n2.0\t007\n")
    table = read_atlas_labels(path)
    assert list(table["name"]) == ["background", "NA", "007"] and list(table["index"]) == [0, 1, 2]
    assert table["index"].dtype.kind == "i"
    path.write_text("index\tlabel\n1\tV1\n")
    with pytest.raises(BidsValidationError, match="lacks column\\(s\\) name"):
        read_atlas_labels(path)
    path.write_text("index\tname\n1.5\tV1\n2\tn/a\n")
    with pytest.raises(BidsValidationError, match="row 2: index '1.5' is not a whole number"):
        read_atlas_labels(path)


def test_names_sharing_a_file_label_are_refused_only_when_asked(atlas, brain_mask):
    table = _labels_table(["V 1", "V-1", "PPA"])
    letters_and_digits = lambda name: "".join(ch for ch in name if ch.isalnum())  # noqa: E731
    with pytest.raises(BidsValidationError, match="'V 1', 'V-1' -> label-V1"):
        load_roi_masks_from_atlas(atlas, table, _bold_ref(), brain_mask, file_label=letters_and_digits)
    chosen = load_roi_masks_from_atlas(atlas, table, _bold_ref(), brain_mask, names=["V-1", "PPA"],
                                       file_label=letters_and_digits)
    assert list(chosen) == ["V-1", "PPA"]
    unchecked = load_roi_masks_from_atlas(atlas, table, _bold_ref(), brain_mask)
    np.testing.assert_array_equal(unchecked["V 1"], (_on_bold_grid(np.asarray(atlas.dataobj)) == 1) & brain_mask)
