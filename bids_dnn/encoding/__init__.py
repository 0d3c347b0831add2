"""Voxelwise encoding on arrays: folds, cross-validated ridge, banded ridge, scores and ceilings."""

from bids_dnn.encoding._solver import himalaya_backend_for_device
from bids_dnn.encoding.banded import BandedResult, banded_ridge, variance_partitioning
from bids_dnn.encoding.folds import check_folds, inner_folds_for, make_folds, stimulus_runs
from bids_dnn.encoding.readout import LinearReadout, fit_readout
from bids_dnn.encoding.ridge import EncodingResult, cross_validated_ridge
from bids_dnn.encoding.samples import modelled_voxels, stimulus_responses
from bids_dnn.encoding.scores import (
    MIN_CEILING,
    at_alpha_grid_edge,
    ceiling_normalised,
    noise_ceiling_from_split_half,
    outside_unit_interval,
    pearson_columns,
    pooled_reliability,
    r2_columns,
    roi_scores,
    spearman_brown,
)

__all__ = [
    "EncodingResult",
    "BandedResult",
    "make_folds",
    "check_folds",
    "inner_folds_for",
    "stimulus_runs",
    "stimulus_responses",
    "modelled_voxels",
    "cross_validated_ridge",
    "banded_ridge",
    "variance_partitioning",
    "pearson_columns",
    "r2_columns",
    "spearman_brown",
    "noise_ceiling_from_split_half",
    "ceiling_normalised",
    "outside_unit_interval",
    "at_alpha_grid_edge",
    "pooled_reliability",
    "roi_scores",
    "MIN_CEILING",
    "himalaya_backend_for_device",
    "LinearReadout",
    "fit_readout",
]
