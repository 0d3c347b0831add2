"""Representational similarity analysis on arrays: measure registries, RDMs, noise, comparison,
inference, bootstraps, weighted RSA.

Public names are imported from their modules on first use (PEP 562), so that
``import bids_dnn.rsa.measures`` (the registries the spec reads) does not load torch.
"""

from __future__ import annotations

from bids_dnn._lazy import lazy_exports

#: module -> the public names it defines (its ``__all__``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "measures": (
        "RdmMeasure",
        "RDM_MEASURE_REGISTRY",
        "RDM_MEASURE_NAMES",
        "MODEL_RDM_MEASURES",
        "ComparisonMeasure",
        "COMPARISON_MEASURE_REGISTRY",
        "COMPARISON_MEASURE_NAMES",
        "LINEAR_MEASURES",
        "WEIGHTED_RESAMPLING_MEASURES",
        "CORRELATION_MEASURES",
        "FIT_MEASURES",
        "RSATOOLBOX_NAMES",
    ),
    "rdm": (
        "RDM_MEASURES",
        "pair_indices",
        "as_rdm_rows",
        "square_to_vector",
        "vector_to_square",
        "n_cond_from_pairs",
        "calc_rdm",
        "calc_rdms",
        "calc_crossnobis_rdm",
        "calc_crossnobis_rdms",
    ),
    "noise": (
        "NoiseEstimateError",
        "CovarianceEstimator",
        "COVARIANCE_ESTIMATORS",
        "NOISE_METHODS",
        "WELL_CONDITIONED_ESTIMATORS",
        "NOISE_NORMALIZATIONS",
        "noise_covariance",
        "noise_precision_from_residuals",
        "noise_precision_univariate",
        "inverse_sqrt",
    ),
    "compare": (
        "COMPARISON_MEASURES",
        "compare_rdms",
        "compare_paired",
        "transform_for_measure",
        "transform_ranks",
        "kendall_tau_a",
        "whiten_rdm_vectors",
    ),
    "inference": (
        "PermutationResult",
        "permutation_indices",
        "permuted_pair_indices",
        "permutation_test",
        "noise_ceiling",
        "crossvalidated_best_layer",
        "best_significant_layer",
    ),
    "bootstrap": (
        "BootstrapResult",
        "bootstrap_patterns",
        "bootstrap_dual",
    ),
    "resampling": (
        "stimulus_counts",
        "pair_weights",
        "weighted_ranks",
        "evaluate_resamples",
        "resampled_vectors",
    ),
    "weighted": (
        "pool_for_fit",
        "nnls_gram",
        "fit_nonnegative_weights",
        "predict_rdm",
        "WeightedRSAResult",
        "crossvalidated_weighted_rsa",
        "stimulus_folds",
        "VariancePartition",
        "rdm_variance_partitioning",
    ),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
