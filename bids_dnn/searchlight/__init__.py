"""Whole-brain searchlight on arrays: sphere neighbourhoods, searchlight RDMs and RSA."""

from bids_dnn.searchlight.engine import (
    SEARCHLIGHT_RDM_MEASURES,
    chunk_size_for_budget,
    searchlight_rdms,
    searchlight_rsa,
)
from bids_dnn.searchlight.neighbourhoods import (
    Neighbourhoods,
    partition_centres,
    scores_to_mask_voxels,
    scores_to_volume,
    sphere_neighbourhoods,
    sphere_offsets,
    voxel_size_from_affine,
)
from bids_dnn.searchlight.patterns import (
    complete_runs,
    drop_nonfinite_voxels,
    usable_patterns,
    voxel_mask,
)
from bids_dnn.searchlight.ranks import rankdata_average

__all__ = [
    "Neighbourhoods",
    "SEARCHLIGHT_RDM_MEASURES",
    "sphere_offsets",
    "sphere_neighbourhoods",
    "searchlight_rdms",
    "searchlight_rsa",
    "partition_centres",
    "scores_to_volume",
    "scores_to_mask_voxels",
    "voxel_size_from_affine",
    "chunk_size_for_budget",
    "rankdata_average",
    "complete_runs",
    "usable_patterns",
    "drop_nonfinite_voxels",
    "voxel_mask",
]
