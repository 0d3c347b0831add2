"""Centered kernel alignment (CKA) on arrays: kernels, HSIC estimators, batched CKA of many
feature sets, permutation p-values and stimulus-bootstrap intervals (Kornblith et al. 2019).

Public names are imported from their modules on first use (PEP 562), so that
``import bids_dnn.cka.registry`` (the names the spec reads) does not load torch.
"""

from __future__ import annotations

from bids_dnn._lazy import lazy_exports

#: module -> the public names it defines (its ``__all__``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "registry": (
        "CkaKernel",
        "CKA_KERNELS",
        "CKA_KERNEL_NAMES",
        "HsicEstimator",
        "HSIC_ESTIMATORS",
        "HSIC_ESTIMATOR_NAMES",
    ),
    "kernels": (
        "as_feature_tensor",
        "linear_gram",
        "squared_distances",
        "median_squared_distance",
        "rbf_bandwidth",
        "rbf_gram",
        "GRAM_FUNCTIONS",
        "gram_matrix",
    ),
    "estimators": (
        "center_gram",
        "u_center_gram",
        "GRAM_PREPARATIONS",
        "prepare_gram",
        "hsic",
        "cka_of_grams",
        "cka",
    ),
    "batched": (
        "GramStack",
        "gram_stack",
        "triangle_indices",
        "triangle_weights",
        "cka_of_stacks",
        "cka_matrix",
    ),
    "inference": (
        "CkaTestResult",
        "DEFAULT_MEMORY_BYTES",
        "permutation_null",
        "bootstrap_cka",
        "cka_test_of_stacks",
        "cka_test",
    ),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
