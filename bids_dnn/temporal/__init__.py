"""Time-resolved analyses of M/EEG epochs on arrays: time-resolved brain RDMs (trial-averaged
correlation distance, cross-validated Euclidean / crossnobis with multivariate noise
normalisation, pairwise shrinkage-LDA decoding), RSA time courses, temporal generalisation,
time-resolved encoding, and peak / onset latencies with their confidence intervals.

Arrays are ``(n_trials, n_channels, n_times)`` epochs with one condition label per trial; RDM
stacks are ``(n_times, n_pairs)`` in :func:`bids_dnn.rsa.pair_indices` order.
Public names are imported from their modules on first use (PEP 562), like :mod:`bids_dnn.cka`.
"""

from __future__ import annotations

from bids_dnn._lazy import lazy_exports

#: module -> the public names it defines (its ``__all__``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "folds": ("trial_folds",),
    "rdms": ("EpochsError", "TemporalRdmMeasure", "TEMPORAL_RDM_MEASURES", "CV_SCHEMES", "NOISE_NORMALIZATION_METHODS",
             "TIME_BATCH_BYTES", "condition_means", "residual_noise_precision", "fold_noise_precisions",
             "time_resolved_rdms"),
    "windows": ("window_bounds", "window_average"),
    "rsa": ("TimeCourseResult", "rsa_time_course", "temporal_generalization", "temporal_generalization_between",
            "noise_ceiling_over_time", "variance_partitioning_over_time"),
    "encoding": ("EncodingOverTime", "time_resolved_encoding"),
    "lda": ("LDA_SHRINKAGE_RULES", "pairwise_decoding_rdms"),
    "latency": ("LATENCY_STATISTICS", "LATENCY_CI_METHODS", "LatencyEstimate", "LatencyDifference", "peak_latency",
                "onset_latency", "latency_ci", "compare_latencies"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
