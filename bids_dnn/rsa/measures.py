"""Registries of the RDM measures and RDM comparison measures: names and properties, no code.

Each measure is described once here; every other list of measure names derives from these
registries: the computing registries ``RDM_MEASURES`` (:mod:`bids_dnn.rsa.rdm`) and
``COMPARISON_MEASURES`` (:mod:`bids_dnn.rsa.compare`), the searchlight's measures, the spec's
allowed values (:mod:`bids_dnn.spec`, in the order given here) and the report's wording. Adding
a measure means adding its entry here and its computation: for an RDM measure in
``bids_dnn.rsa.rdm.calc_rdms`` and the searchlight engine (which computes every RDM measure); for
a comparison measure in ``bids_dnn.rsa.compare.transform_for_measure`` (and, if ``linear``, its
torch twin in the searchlight engine).

This module imports nothing, so the spec and the command line read it without loading torch.
The conventions of each measure are documented with its computation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
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
]


@dataclass(frozen=True)
class RdmMeasure:
    """Properties of an RDM (dissimilarity) measure.

    Attributes
    ----------
    label : str
        Its name in running text (methods sections).
    uses_noise : bool
        Takes a noise precision from GLM residuals (Mahalanobis-type): not for model RDMs.
    needs_runs : bool
        Needs run-wise patterns, (n_runs, n_cond, n_channels) (cross-validated measures).
    """

    label: str
    uses_noise: bool = False
    needs_runs: bool = False


#: name -> RDM measure, in the order the spec lists them
RDM_MEASURE_REGISTRY: dict[str, RdmMeasure] = {
    "crossnobis": RdmMeasure("cross-validated Mahalanobis (crossnobis) distance across runs",
                             uses_noise=True, needs_runs=True),
    "correlation": RdmMeasure("correlation distance (1 - Pearson r)"),
    "cosine": RdmMeasure("cosine distance"),
    "euclidean": RdmMeasure("Euclidean distance"),
    "sqeuclidean": RdmMeasure("squared Euclidean distance per channel"),
    "mahalanobis": RdmMeasure("Mahalanobis distance", uses_noise=True),
}
#: every RDM measure
RDM_MEASURE_NAMES: tuple[str, ...] = tuple(RDM_MEASURE_REGISTRY)
#: measures for model (DNN feature) RDMs: those without a noise model
MODEL_RDM_MEASURES: tuple[str, ...] = tuple(
    name for name, measure in RDM_MEASURE_REGISTRY.items() if not measure.uses_noise)


@dataclass(frozen=True)
class ComparisonMeasure:
    """Properties of an RDM comparison (second-level similarity) measure.

    Attributes
    ----------
    label : str
        Its name in running text (methods sections).
    rsatoolbox : str
        The name rsatoolbox's ``compare(method=...)`` gives it.
    linear : bool
        A dot product after a per-row transform (``transform_for_measure``): permutations,
        noise ceilings and searchlights run as matrix products.
    weighted_resampling : bool
        Bootstrap resamples are computed as weighted statistics over the original pairs
        (:mod:`bids_dnn.rsa.resampling`), without building resampled RDMs.
    correlation : bool
        A Pearson-type correlation (of values, ranks or whitened vectors), whose maps can be
        Fisher z-transformed.
    least_squares : bool
        A cosine of (normalised, unranked) RDM vectors, so fitting model weights to maximise it
        is a least-squares problem: a fit criterion of weighted RSA
        (:mod:`bids_dnn.rsa.weighted`).
    """

    label: str
    rsatoolbox: str
    linear: bool
    weighted_resampling: bool
    correlation: bool
    least_squares: bool


#: name -> comparison measure, in the order the spec lists them
COMPARISON_MEASURE_REGISTRY: dict[str, ComparisonMeasure] = {
    "spearman": ComparisonMeasure("Spearman rank correlation", "spearman", linear=True,
                                  weighted_resampling=True, correlation=True, least_squares=False),
    "pearson": ComparisonMeasure("Pearson correlation", "corr", linear=True,
                                 weighted_resampling=True, correlation=True, least_squares=True),
    "kendall_tau_a": ComparisonMeasure("Kendall's tau-a", "tau-a", linear=False,
                                       weighted_resampling=False, correlation=False,
                                       least_squares=False),
    "rho_a": ComparisonMeasure("Spearman's rho-a", "rho-a", linear=True,
                               weighted_resampling=True, correlation=True, least_squares=False),
    "cosine": ComparisonMeasure("cosine similarity", "cosine", linear=True,
                                weighted_resampling=True, correlation=False, least_squares=True),
    "corr_cov": ComparisonMeasure("whitened Pearson correlation", "corr_cov", linear=True,
                                  weighted_resampling=False, correlation=True, least_squares=True),
    "cosine_cov": ComparisonMeasure("whitened cosine similarity", "cosine_cov", linear=True,
                                    weighted_resampling=False, correlation=False,
                                    least_squares=True),
}
#: every comparison measure
COMPARISON_MEASURE_NAMES: tuple[str, ...] = tuple(COMPARISON_MEASURE_REGISTRY)
#: measures that are a dot product after :func:`bids_dnn.rsa.compare.transform_for_measure`
LINEAR_MEASURES: tuple[str, ...] = tuple(
    name for name, measure in COMPARISON_MEASURE_REGISTRY.items() if measure.linear)
#: measures whose bootstrap resamples are weighted statistics over the original pairs
WEIGHTED_RESAMPLING_MEASURES: tuple[str, ...] = tuple(
    name for name, measure in COMPARISON_MEASURE_REGISTRY.items() if measure.weighted_resampling)
#: Pearson-type correlations (their maps can be Fisher z-transformed)
CORRELATION_MEASURES: tuple[str, ...] = tuple(
    name for name, measure in COMPARISON_MEASURE_REGISTRY.items() if measure.correlation)
#: fit criteria of weighted RSA (rsatoolbox ``fit_regress_nn``) -> their rsatoolbox names
FIT_MEASURES: dict[str, str] = {
    name: measure.rsatoolbox for name, measure in COMPARISON_MEASURE_REGISTRY.items()
    if measure.least_squares}
#: our measure name -> rsatoolbox ``compare(method=...)`` name
RSATOOLBOX_NAMES: dict[str, str] = {
    name: measure.rsatoolbox for name, measure in COMPARISON_MEASURE_REGISTRY.items()}
