"""The predictor groups of ``analyses.variance_partitioning``: each group's model RDMs, named
``model:layer`` or ``model`` (every layer), rank-transformed when the spec says so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["partition_transform", "partition_groups"]


def partition_transform(spec: Any) -> Callable[[np.ndarray], np.ndarray]:
    """What is done to every RDM vector (brain and model) before the regression: ranks or nothing."""
    import scipy.stats

    if spec.rank_transform:
        return lambda vectors: scipy.stats.rankdata(vectors, axis=-1)
    return lambda vectors: vectors


def partition_groups(spec: Any, layers_of: Callable[[str], list[str]],
                     rdm_of: Callable[[str, str, str], np.ndarray]) -> dict[str, np.ndarray]:
    """Group name -> its model RDMs, shape (n_rdms, n_pairs), transformed.

    Parameters
    ----------
    spec : VariancePartitioningSpec
    layers_of : callable
        ``layers_of(model)``: every layer of a model, in order.
    rdm_of : callable
        ``rdm_of(group, model, layer)``: the layer's RDM vector (raises a clear error when missing).
    """
    transform = partition_transform(spec)
    groups = {}
    for name, refs in spec.groups.items():
        vectors = []
        for ref in refs:
            model, _, layer = ref.partition(":")
            vectors += [rdm_of(name, model, lay) for lay in ([layer] if layer else layers_of(model))]
        groups[name] = transform(np.stack(vectors))
    return groups
