"""Generic statistics on arrays: multiple comparisons, one-sample and paired tests, subject
bootstraps, the Fisher z-transform, group maps.

Public names are imported from their modules on first use (PEP 562), so that the registries the
spec reads (``CORRECTIONS``, ``GROUP_TESTS``) come without loading scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

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
}

__all__ = [name for names in _EXPORTS.values() for name in names]

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """A public name (or a module) of the package, imported on first access."""
    if name in _EXPORTS:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
