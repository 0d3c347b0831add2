"""Feature decoding and stimulus identification on arrays (Kay et al. 2008; Horikawa & Kamitani 2017).

A decoder predicts a DNN layer's feature vector of each stimulus from its brain pattern
(cross-validated ridge to every unit, :mod:`bids_dnn.encoding`'s solver run in the decoding
direction); the decoded vectors then identify the stimuli among candidates: pairwise accuracy
(chance 0.5) and top-1 accuracy (chance ``1 / n_candidates``), with candidate-label
permutation p-values. ``identification`` works on any similarity matrix; ``decoders`` fits
the decoder and runs the identification.

Public names are imported from their modules on first use (PEP 562). The package imports no
torch (unless a torch ridge backend is asked for), spec, console, pybids, rich or h5py.
"""

from __future__ import annotations

from bids_dnn._lazy import lazy_exports

#: module -> the public names it defines (its ``__all__``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "identification": (
        "IdentificationResult",
        "similarity_matrix",
        "identification_ranks",
        "identification_test",
    ),
    "decoders": (
        "DecodingResult",
        "decode_features",
    ),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
