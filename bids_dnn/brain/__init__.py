"""Brain data on arrays and NIfTI images: GLM and confounds, images and grids, ROI masks, pattern
preparation and the assembly of a participant's patterns."""

from bids_dnn.brain.glm import (
    GLM_CHOICES,
    GLM_ENGINES,
    GLMEngine,
    GLMOptions,
    RunGLM,
    chunk_size_for_budget,
    fit_run_glm,
)
from bids_dnn.brain.fast_glm import fit_glm
from bids_dnn.brain.fast_lss import fit_lss
from bids_dnn.brain.lss import LSSDesign
from bids_dnn.brain.confounds import (
    CONFOUND_GROUPS,
    ConfoundGroup,
    drop_constant_confounds,
    sample_mask_from_confounds,
    select_confounds,
)
from bids_dnn.brain.images import (
    AFFINE_ATOL,
    ImageLike,
    check_same_grid,
    image_data,
    load_nifti,
    masked_timeseries,
    reference_image,
    resample_to_grid,
)
from bids_dnn.brain.rois import (
    apply_mask,
    load_roi_masks_from_atlas,
    load_roi_masks_from_files,
    read_atlas_labels,
    voxel_counts_table,
)
from bids_dnn.brain.patterns import (
    divide_by_sd,
    noise_normalize,
    residual_sd,
    split_half_reliability,
)
from bids_dnn.brain.assembly import (
    average_volumes_by_stimulus,
    complete_runs,
    drop_unusable_voxels,
    finite_nonzero_mask,
    mean_betas_volume,
    resolve_brain_rdm_measure,
    roi_rdm,
    roi_reliability,
    split_small_rois,
    stimulus_betas_of_run,
)

__all__ = [
    "GLM_CHOICES",
    "GLM_ENGINES",
    "GLMEngine",
    "GLMOptions",
    "RunGLM",
    "chunk_size_for_budget",
    "fit_run_glm",
    "fit_glm",
    "fit_lss",
    "LSSDesign",
    "CONFOUND_GROUPS",
    "ConfoundGroup",
    "drop_constant_confounds",
    "sample_mask_from_confounds",
    "select_confounds",
    "AFFINE_ATOL",
    "ImageLike",
    "check_same_grid",
    "image_data",
    "load_nifti",
    "masked_timeseries",
    "reference_image",
    "resample_to_grid",
    "apply_mask",
    "load_roi_masks_from_atlas",
    "load_roi_masks_from_files",
    "read_atlas_labels",
    "voxel_counts_table",
    "divide_by_sd",
    "noise_normalize",
    "residual_sd",
    "split_half_reliability",
    "average_volumes_by_stimulus",
    "complete_runs",
    "drop_unusable_voxels",
    "finite_nonzero_mask",
    "mean_betas_volume",
    "resolve_brain_rdm_measure",
    "roi_rdm",
    "roi_reliability",
    "split_small_rois",
    "stimulus_betas_of_run",
]
