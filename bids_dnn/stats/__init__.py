"""Generic statistics on arrays: multiple comparisons, one-sample and paired tests, subject
bootstraps, the Fisher z-transform, group maps.

Public names are imported from their modules on first use (PEP 562), so that the registries the
spec reads (``CORRECTIONS``, ``GROUP_TESTS``) come without loading scipy.
"""

from __future__ import annotations

from bids_dnn._lazy import lazy_exports

#: module -> the public names it defines (its ``__all__``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "correction": (
        "Correction",
        "CORRECTIONS",
        "fdr_bh",
        "bonferroni",
        "uncorrected",
    ),
    "group_tests": (
        "GroupTest",
        "GROUP_TESTS",
        "one_sample_tests",
        "paired_tests",
    ),
    "bootstrap": (
        "bootstrap_indices",
        "bootstrap_subjects",
    ),
    "fisher": (
        "fisher_z",
    ),
    "maps": (
        "GroupMapResult",
        "sign_flip_matrix",
        "group_one_sample_map",
        "tfce_map",
    ),
    "clusters": (
        "TAILS",
        "CLUSTER_ADJACENCIES",
        "ClusterTestResult",
        "one_sample_sign_flips",
        "cluster_test_1samp",
        "max_t_1samp",
    ),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
