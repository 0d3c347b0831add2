"""Generic statistics on arrays: multiple comparisons, one-sample and paired tests, group maps."""

from bids_dnn.stats.maps import (
    GroupMapResult,
    fisher_z,
    sign_flip_matrix,
    group_one_sample_map,
    tfce_map,
)

__all__ = [
    "GroupMapResult",
    "fisher_z",
    "sign_flip_matrix",
    "group_one_sample_map",
    "tfce_map",
]
