"""Whole-brain searchlight on arrays: sphere neighbourhoods, searchlight RDMs and RSA."""

from bids_dnn.searchlight.engine import (
    Neighbourhoods,
    SEARCHLIGHT_RDM_MEASURES,
    sphere_offsets,
    sphere_neighbourhoods,
    searchlight_rdms,
    searchlight_rsa,
    partition_centres,
    scores_to_volume,
    chunk_size_for_budget,
    rankdata_average,
)

__all__ = [
    "Neighbourhoods",
    "SEARCHLIGHT_RDM_MEASURES",
    "sphere_offsets",
    "sphere_neighbourhoods",
    "searchlight_rdms",
    "searchlight_rsa",
    "partition_centres",
    "scores_to_volume",
    "chunk_size_for_budget",
    "rankdata_average",
]
