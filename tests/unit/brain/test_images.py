"""NIfTI reading with exit-66 errors, grid checks, resampling to a grid, chunked masked reading."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_dnn.brain.images import (
    AFFINE_ATOL,
    check_same_grid,
    image_data,
    load_nifti,
    masked_timeseries,
    reference_image,
    resample_to_grid,
)
from bids_dnn.errors import InputMissingError

# a 2 mm grid (20^3 voxels, origin 0) and a 4 mm grid (10^3) whose voxel centres sit on 2 mm
# voxel centres: 4 mm voxel (i, j, k) is at 4 * ijk + 2 mm = 2 mm voxel 2 * ijk + 1.
ATLAS_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
BOLD_AFFINE = np.array([[4.0, 0, 0, 2.0], [0, 4.0, 0, 2.0], [0, 0, 4.0, 2.0], [0, 0, 0, 1.0]])
BOLD_SHAPE = (10, 10, 10)


def _bold_ref() -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros(BOLD_SHAPE + (3,), dtype=np.float32), BOLD_AFFINE)


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


def test_load_nifti_and_image_data_refuse_unreadable_files(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    assert load_nifti(img, "mask") is img
    path = tmp_path / "mask.nii.gz"
    nib.save(img, str(path))
    np.testing.assert_array_equal(image_data(load_nifti(path, "mask"), "mask"), np.arange(24).reshape(2, 3, 4))
    assert image_data(load_nifti(str(path), "mask"), "mask", np.float32).dtype == np.float32
    for name, content, message in (("missing.nii.gz", None, "file not found"), ("empty.nii.gz", b"", "empty"),
                                   ("text.nii.gz", b"not an image", "cannot read text.nii.gz as an image")):
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(InputMissingError, match=message) as info:
            load_nifti(tmp_path / name, "brain mask")
        assert info.value.exit_code == 66 and str(info.value).startswith("brain mask: ")
    big = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).normal(size=(16, 16, 16, 8)).astype(np.float32), np.eye(4)),
             str(big))
    big.write_bytes(big.read_bytes()[:4000])  # header intact, data truncated
    with pytest.raises(InputMissingError, match="atlas: cannot read the image data"):
        image_data(load_nifti(big, "atlas"), "atlas")


def test_resample_to_grid_is_nearest_neighbour(rng):
    labels = rng.integers(0, 5, size=(20, 20, 20)).astype(np.int16)
    reference = reference_image(_bold_ref())
    assert reference.shape == BOLD_SHAPE and np.array_equal(reference.affine, BOLD_AFFINE)
    out = resample_to_grid(nib.Nifti1Image(labels, ATLAS_AFFINE), reference, "atlas")
    assert out.dtype == np.float32 and out.shape == BOLD_SHAPE
    # hand-built reference: the 2 mm voxel at each 4 mm voxel centre (labels never blended)
    np.testing.assert_array_equal(out, labels[1::2, 1::2, 1::2])
    volumes = rng.random((20, 20, 20, 2)).astype(np.float32)
    out4 = resample_to_grid(nib.Nifti1Image(volumes, ATLAS_AFFINE), reference)
    np.testing.assert_array_equal(out4, volumes[1::2, 1::2, 1::2])


def test_resample_to_grid_passes_an_image_on_the_grid_through(rng):
    data = rng.normal(size=BOLD_SHAPE).astype(np.float32)
    nearly = BOLD_AFFINE + AFFINE_ATOL / 2  # within the tolerance: the same grid
    out = resample_to_grid(nib.Nifti1Image(data, nearly), reference_image(_bold_ref()))
    np.testing.assert_array_equal(out, data)


def test_masked_timeseries_equals_full_read(tmp_path):
    """Chunked forward reading of a .nii.gz equals reading the whole 4D image, for any chunk size."""
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
    data = np.random.default_rng(6).normal(size=(8, 8, 8, 40)).astype(np.float32)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(InputMissingError, match="cannot read the image data") as info:
        masked_timeseries(path, np.ones((8, 8, 8), bool), "bold.nii.gz")
    assert info.value.exit_code == 66
