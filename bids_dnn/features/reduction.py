"""Optional dimensionality reduction of stored features (``models[i].reduction`` of the spec).

Every layer with more units than the threshold (:attr:`Reduction.threshold`) is stored with
``n_components`` columns. ``srp``: a sparse random projection (Johnson-Lindenstrauss; distances
preserved in expectation), which depends only on (n_units, n_components, seed), so it is built
once per layer and applied to each batch as it arrives (:data:`STREAMING_REDUCTIONS`). ``pca``:
principal components fitted on all stimuli of the task (transductive), so the feature writer
keeps the full-width rows until every stimulus is in (:data:`REDUCTIONS`). The settings are part
of the feature content key (:meth:`Reduction.key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from bids_dnn.errors import AnalysisError

__all__ = ["REDUCTIONS", "STREAMING_REDUCTIONS", "Reduction", "reduce_features"]


def _srp(array: np.ndarray, n_components: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    from sklearn.random_projection import SparseRandomProjection

    projection = SparseRandomProjection(n_components=n_components, random_state=seed, dense_output=True)
    reduced = projection.fit_transform(array)
    return reduced, {"density": float(projection.density_)}


def _pca(array: np.ndarray, n_components: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    from sklearn.decomposition import PCA

    n_components = min(n_components, *array.shape)
    pca = PCA(n_components=n_components, random_state=seed, svd_solver="auto")
    reduced = pca.fit_transform(array)
    return reduced, {"n_components": n_components,
                     "explained_variance_ratio_sum": float(pca.explained_variance_ratio_.sum())}


def _srp_stream(n_units: int, n_components: int,
                seed: int) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """The sparse random projection of :func:`_srp` as a per-batch transform.

    sklearn draws the matrix from (n_features, n_components, random_state) alone, so fitting a
    one-row float32 dummy of the right width gives the matrix that :func:`reduce_features`
    draws for the whole array; each batch is then projected on arrival.
    """
    from sklearn.random_projection import SparseRandomProjection

    projection = SparseRandomProjection(n_components=n_components, random_state=seed, dense_output=True)
    projection.fit(np.zeros((1, n_units), dtype=np.float32))

    def transform(batch: np.ndarray) -> np.ndarray:
        return np.asarray(projection.transform(np.asarray(batch, dtype=np.float32)), dtype=np.float32)

    return transform, {"density": float(projection.density_)}


#: method -> function(array, n_components, seed) -> (reduced array, extra params)
REDUCTIONS: dict[str, Callable[[np.ndarray, int, int], tuple[np.ndarray, dict[str, Any]]]] = {
    "srp": _srp,
    "pca": _pca,
}

#: methods applied batch by batch: method -> function(n_units, n_components, seed) ->
#: (transform of an (n, n_units) batch, extra params). Others are fitted on all rows at the end.
STREAMING_REDUCTIONS: dict[str, Callable[[int, int, int],
                                         tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]]] = {
    "srp": _srp_stream,
}


@dataclass(frozen=True)
class Reduction:
    """Reduction settings of a feature file (``models[i].reduction`` of the spec).

    Attributes
    ----------
    method : {"srp", "pca"}
    n_components : int
    seed : int
    min_units : int or None
        Reduce only layers with more units than this (default: ``n_components``).
    """

    method: str
    n_components: int
    seed: int = 0
    min_units: int | None = None

    def __post_init__(self) -> None:
        if self.method not in REDUCTIONS:
            raise AnalysisError(f"unknown reduction {self.method!r}; valid: {', '.join(REDUCTIONS)}")
        if int(self.n_components) <= 0:
            raise AnalysisError(f"reduction n_components must be > 0 (got {self.n_components})")
        if self.min_units is not None and self.min_units < self.n_components:
            raise AnalysisError(f"reduction min_units ({self.min_units}) must be >= n_components "
                                f"({self.n_components})")

    @classmethod
    def coerce(cls, value: Any) -> Reduction | None:
        """A :class:`Reduction` from None, itself, a mapping or a spec model (``model_dump``)."""
        if value is None or isinstance(value, Reduction):
            return value
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        fields = {"method", "n_components", "seed", "min_units"}
        unknown = set(value) - fields
        if unknown:
            raise AnalysisError(f"unknown reduction setting(s) {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in value.items() if k in fields})

    @property
    def threshold(self) -> int:
        """Layers with more units than this are reduced."""
        return max(int(self.n_components), int(self.min_units or 0))

    def applies(self, n_units: int) -> bool:
        return n_units > self.threshold

    def key(self) -> dict[str, Any]:
        """The settings as they enter the content key and the root ``reduction`` attribute."""
        return {"method": self.method, "n_components": int(self.n_components), "seed": int(self.seed),
                "min_units": None if self.min_units is None else int(self.min_units)}

    def params(self, n_units_in: int) -> dict[str, Any]:
        """The per-layer attributes common to every method."""
        return {"method": self.method, "n_components": int(self.n_components), "seed": int(self.seed),
                "n_units_in": int(n_units_in)}


def reduce_features(array: np.ndarray, method: str = "srp", n_components: int = 4096,
                    seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Reduce (n_stimuli, n_units) features to at most ``n_components`` columns.

    ``srp``: sparse random projection (Johnson-Lindenstrauss; preserves distances in
    expectation); ``pca``: principal components fitted on all stimuli (n_components is
    capped at min(n_stimuli, n_units)). A layer with at most ``n_components`` units is
    returned unchanged (``applied: False``).

    Returns
    -------
    reduced : ndarray (n_stimuli, n_components_used) float32
    params : dict
        method, n_components, seed, n_units_in, applied, plus method-specific values; to be
        stored as dataset attributes by the caller.
    """
    if method not in REDUCTIONS:
        raise AnalysisError(f"unknown reduction {method!r}; valid: {', '.join(REDUCTIONS)}")
    array = np.asarray(array, dtype=np.float32)
    params: dict[str, Any] = {"method": method, "n_components": int(n_components), "seed": int(seed),
                              "n_units_in": int(array.shape[1])}
    if array.shape[1] <= n_components:
        return array.copy(), {**params, "n_components": int(array.shape[1]), "applied": False}
    reduced, extra = REDUCTIONS[method](array, n_components, seed)
    reduced = np.asarray(reduced, dtype=np.float32)
    return reduced, {**params, **extra, "n_components": int(reduced.shape[1]), "applied": True}
