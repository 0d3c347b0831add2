"""Brain data on arrays and NIfTI images: GLM, images and grids, ROI masks, pattern preparation."""

from bids_dnn.brain.glm import (
    CONFOUND_GROUPS,
    ConfoundGroup,
    RunGLM,
    chunk_size_for_budget,
    drop_constant_confounds,
    fit_run_glm,
    sample_mask_from_confounds,
    select_confounds,
)
from bids_dnn.brain.patterns import (
    COVARIANCE_ESTIMATORS,
    NOISE_NORMALIZATIONS,
    apply_mask,
    check_same_grid,
    load_roi_masks_from_atlas,
    load_roi_masks_from_files,
    noise_covariance,
    noise_normalize,
    split_half_reliability,
    voxel_counts_table,
)

__all__ = [
    "CONFOUND_GROUPS",
    "ConfoundGroup",
    "RunGLM",
    "chunk_size_for_budget",
    "drop_constant_confounds",
    "fit_run_glm",
    "sample_mask_from_confounds",
    "select_confounds",
    "COVARIANCE_ESTIMATORS",
    "NOISE_NORMALIZATIONS",
    "apply_mask",
    "check_same_grid",
    "load_roi_masks_from_atlas",
    "load_roi_masks_from_files",
    "noise_covariance",
    "noise_normalize",
    "split_half_reliability",
    "voxel_counts_table",
]
