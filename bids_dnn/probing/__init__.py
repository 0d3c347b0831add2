"""Linear probes on arrays: cross-validated ridge read-outs of a stimulus annotation (a category
or a rated value) from a pattern matrix (a DNN layer's activations or an ROI's response
patterns), with a stimulus-label permutation p-value, so that layers and brain regions are
compared on one scale.

Public names are imported from their modules on first use (PEP 562).
"""

from __future__ import annotations

from bids_dnn._lazy import lazy_exports

#: module -> the public names it defines (its ``__all__``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "annotations": (
        "PROBE_KINDS",
        "EncodedAnnotation",
        "annotation_kind",
        "encode_annotation",
        "is_missing",
    ),
    "probes": (
        "ProbeResult",
        "ridge_probe",
        "stratified_folds",
        "DEFAULT_PROBE_MEMORY_BYTES",
    ),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
