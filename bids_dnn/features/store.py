"""The feature store: one HDF5 file per model and stimulus set, written atomically.

Layout of a feature file::

    /                 attrs: content_key, format_version, dtype, n_stimuli, complete,
                             bids_dnn_version, model / weights / preprocessing provenance, ...
    /stim_ids         (n_stimuli,) UTF-8 strings, the row order of every layer
    /layer_order      (n_layers,) UTF-8 strings, the layer names in extraction order
    /layers/<name>    (n_stimuli, n_units) float32 or float16, chunked by rows, attrs
                      original_name, original_shape (the layer output without batch dim),
                      and with a reduction reduction_method, reduction_n_components,
                      reduction_seed, reduction_n_units_in, reduction_applied,
                      reduction_density (srp) / reduction_explained_variance_ratio_sum (pca)

Layer names are the network's module names; ``/`` and ``%`` are percent-escaped in dataset
names (``original_name`` keeps the real one). Attributes that are not strings or numbers are
stored as JSON text and listed in the ``json_attrs`` attribute, so they read back as the
same lists and dicts.

:func:`ensure_features` is the only way the pipeline creates a file: under a file lock it
reuses a file whose ``content_key`` matches, else writes a temporary file next to it and
renames it into place, so a partial file is never visible and a changed key never reuses a
stale file. This module does not import torch.

Optional dimensionality reduction (:class:`~bids_dnn.features.reduction.Reduction`, from
``models[i].reduction``): every layer with more units than the threshold is stored with
``n_components`` columns. A sparse random projection is applied to each batch as it arrives
(memory independent of the number of stimuli). PCA needs every stimulus: the full-width rows go
to a scratch file (in the run's work folder, ``-w``, else next to the temporary file) and are
reduced layer by layer after extraction. The settings are part of the content key.

Keys and digests come from :mod:`bids_dnn.hashing` (JSON attributes and keys in its canonical
form, strict: no NaN).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np
from filelock import FileLock, Timeout

from bids_dnn import __version__
from bids_dnn.backend import as_dtype
from bids_dnn.errors import AnalysisError, InputMissingError
from bids_dnn.features.disk import check_free_space, fsync_file, fsync_folder
from bids_dnn.features.reduction import STREAMING_REDUCTIONS, Reduction, reduce_features
from bids_dnn.hashing import canonical_json, parts_sha256, text_sha256

__all__ = [
    "DIGEST_ATTR",
    "FORMAT_VERSION",
    "FeatureDigestError",
    "FeatureSet",
    "FeatureWriter",
    "dataset_digest",
    "ensure_features",
    "feature_content_key",
    "provenance_attrs",
    "read_features",
    "stimulus_set_sha256",
    "stored_content_key",
    "write_feature_file",
]

FORMAT_VERSION = 1
LAYER_GROUP = "layers"
STIM_IDS = "stim_ids"
LAYER_ORDER = "layer_order"
DTYPES = ("float32", "float16")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_CHUNK_BYTES = 1 << 20
_REDUCTION_PREFIX = "reduction_"


def _strict_json(value: Any) -> str:
    """:func:`~bids_dnn.hashing.canonical_json` without NaN (attributes other tools can read)."""
    return canonical_json(value, allow_nan=False)


def stimulus_set_sha256(stimulus_sha256s: Sequence[str]) -> str:
    """SHA-256 of the ordered list of stimulus file hashes (the stimulus set identity)."""
    return text_sha256("\n".join(stimulus_sha256s))


def feature_content_key(stimulus_sha256s: list[str], model_identity: dict[str, Any], layers: list[str],
                        dtype: str, reduction: Any = None) -> str:
    """SHA-256 hex over everything that determines a feature file's content.

    Parameters
    ----------
    stimulus_sha256s : list of str, length n_stimuli
        Hash of each stimulus file, in row order.
    model_identity : dict
        e.g. :meth:`bids_dnn.dnn.models.LoadedModel.identity` plus the token policy.
    layers : list of str
        Requested layer names, in order.
    dtype : {"float32", "float16"}
    reduction : Reduction, mapping, spec model or None
        Reduction settings (method, n_components, seed, min_units), if any; normalised by
        :meth:`Reduction.coerce`, so a spec section and the equivalent dict give the same key.
    """
    settings = Reduction.coerce(reduction)
    payload = {
        "format_version": FORMAT_VERSION,
        "stimuli": list(stimulus_sha256s),
        "model": model_identity,
        "layers": list(layers),
        "dtype": dtype,
        "reduction": settings.key() if settings is not None else None,
    }
    return text_sha256(_strict_json(payload))


def provenance_attrs(model_identity: Mapping[str, Any], *, token_policy: str,
                     library_versions: Mapping[str, str], stimulus_sha256s: Sequence[str]) -> dict[str, Any]:
    """The standard root attributes of a feature file (names used by readers and reports).

    Parameters
    ----------
    model_identity : mapping
        :meth:`bids_dnn.dnn.models.LoadedModel.identity`.
    token_policy : str
    library_versions : mapping
        e.g. ``{"torch": "2.4.0", "torchvision": "0.19.0", "h5py": "3.11.0"}``.
    stimulus_sha256s : sequence of str
        Hash of each stimulus file, in row order.
    """
    return {
        "model_name": str(model_identity.get("name", "")),
        "model_source": str(model_identity.get("source", "")),
        "weights_name": str(model_identity.get("weights_name", "")),
        "weights_sha256": model_identity.get("weights_sha256"),
        "init_seed": model_identity.get("init_seed"),
        "task": str(model_identity.get("task", "image")),
        "preprocessing": dict(model_identity.get("preprocessing") or {}),
        "token_policy": token_policy,
        "library_versions": dict(library_versions),
        "stimulus_set_sha256": stimulus_set_sha256(stimulus_sha256s),
    }


def encode_layer_name(name: str) -> str:
    """Dataset name of a layer: ``%`` -> ``%25``, ``/`` -> ``%2F`` (reversible)."""
    return name.replace("%", "%25").replace("/", "%2F")


def decode_layer_name(name: str) -> str:
    """Inverse of :func:`encode_layer_name`."""
    return name.replace("%2F", "/").replace("%25", "%")


def _attr_value(value: Any) -> tuple[Any, bool]:
    """An HDF5-storable attribute value, and whether it was JSON-encoded."""
    if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
        return value, False
    return _strict_json(value), True


def _read_attrs(node: h5py.HLObject) -> dict[str, Any]:
    raw = {key: node.attrs[key] for key in node.attrs}
    encoded = set(json.loads(raw.pop("json_attrs", "[]")))
    attrs: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        attrs[key] = json.loads(value) if key in encoded else value
    return attrs


def _max_abs(array: np.ndarray) -> float:
    """max |x| ignoring NaN; two reductions without the temporary ``abs`` array."""
    high, low = float(array.max()), float(array.min())
    if np.isnan(high) or np.isnan(low):
        return float(np.nanmax(np.abs(array)))
    return max(high, -low)


class FeatureWriter:
    """Fills an open HDF5 file batch by batch (created by :func:`ensure_features`).

    Parameters
    ----------
    h5 : h5py.File
        Open for writing (a temporary file).
    stim_ids : sequence of str, length n_stimuli
        Row order of every layer.
    key : str
        Content key, stored as the ``content_key`` attribute.
    dtype : {"float32", "float16"}
        Stored dtype; float16 values beyond +-65504 are an error.
    attrs : mapping, optional
        Root attributes (provenance); more can be added with :meth:`set_attrs`.
    compression : {None, "lzf"}
        HDF5 filter (no gzip: it is slow to write).
    reduction : Reduction, mapping or None
        Store layers with more units than ``reduction.threshold`` reduced: streaming methods
        (:data:`STREAMING_REDUCTIONS`, e.g. srp) per batch; the others (pca) after all rows
        are in, from full-width rows kept in ``scratch``.
    scratch : Path, optional
        HDF5 file for the full-width rows of deferred (pca) layers; created when first needed
        and deleted by :meth:`close_scratch`. Required for a deferred method.
    """

    def __init__(self, h5: h5py.File, stim_ids: Sequence[str], *, key: str, dtype: str = "float32",
                 attrs: Mapping[str, Any] | None = None, compression: str | None = None,
                 reduction: Any = None, scratch: Path | None = None) -> None:
        if dtype not in DTYPES:
            raise AnalysisError(f"feature dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        if compression not in (None, "lzf"):
            raise AnalysisError(f"compression must be None or 'lzf' (got {compression!r})")
        if len(set(stim_ids)) != len(stim_ids):
            raise AnalysisError("stim_ids must be unique")
        self.h5 = h5
        self.stim_ids = [str(s) for s in stim_ids]
        self.dtype = dtype
        self.compression = compression
        self._written: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._json_keys: set[str] = set()
        self.reduction = Reduction.coerce(reduction)
        self._units_in: dict[str, int] = {}
        self._streams: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        self._reduction_params: dict[str, dict[str, Any]] = {}
        self._deferred: list[str] = []
        self._scratch_path = Path(scratch) if scratch is not None else None
        self._scratch: h5py.File | None = None
        if self.reduction is not None and self.reduction.method not in STREAMING_REDUCTIONS and scratch is None:
            raise AnalysisError(f"reduction {self.reduction.method!r} needs a scratch file")
        h5.create_dataset(STIM_IDS, data=np.array(self.stim_ids, dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
        h5.create_group(LAYER_GROUP, track_order=True)
        self.set_attrs({**(attrs or {}), "content_key": key, "format_version": FORMAT_VERSION,
                        "dtype": dtype, "n_stimuli": self.n_stimuli, "bids_dnn_version": __version__})
        if self.reduction is not None:
            self.set_attrs({"reduction": self.reduction.key()})

    @property
    def n_stimuli(self) -> int:
        return len(self.stim_ids)

    @property
    def layers(self) -> list[str]:
        """Layers written so far, in order of first appearance."""
        return list(self._written)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add or replace root attributes (non-scalar values are stored as JSON)."""
        for key, value in attrs.items():
            stored, is_json = _attr_value(value)
            self.h5.attrs[key] = stored
            if is_json:
                self._json_keys.add(key)
            else:
                self._json_keys.discard(key)
        self.h5.attrs["json_attrs"] = _strict_json(sorted(self._json_keys))

    def _create(self, name: str, width: int, n_units_in: int) -> h5py.Dataset:
        """The stored dataset of a layer: (n_stimuli, width) in the file's dtype."""
        itemsize = np.dtype(self.dtype).itemsize
        rows = max(1, min(self.n_stimuli, _CHUNK_BYTES // max(1, width * itemsize)))
        dataset = self.h5[LAYER_GROUP].create_dataset(
            encode_layer_name(name), shape=(self.n_stimuli, width), dtype=self.dtype,
            chunks=(rows, width), compression=self.compression)
        dataset.attrs["original_name"] = name
        dataset.attrs["original_shape"] = np.asarray([n_units_in], dtype=np.int64)
        return dataset

    def _scratch_dataset(self, name: str, n_units: int) -> h5py.Dataset:
        """Full-width float32 rows of a deferred layer, in the scratch file."""
        if self._scratch is None:
            assert self._scratch_path is not None
            self._scratch = h5py.File(self._scratch_path, "w")
        rows = max(1, min(self.n_stimuli, _CHUNK_BYTES // max(1, n_units * 4)))
        return self._scratch.create_dataset(encode_layer_name(name), shape=(self.n_stimuli, n_units),
                                            dtype=np.float32, chunks=(rows, n_units))

    def _target(self, name: str, n_units: int) -> h5py.Dataset:
        """Where a layer's batches go (created on its first batch); sets up its reduction."""
        if name in self._units_in:
            if n_units != self._units_in[name]:
                raise AnalysisError(f"layer {name!r}: {n_units} units, expected {self._units_in[name]}")
            if name in self._deferred:
                assert self._scratch is not None
                return self._scratch[encode_layer_name(name)]
            return self.h5[LAYER_GROUP][encode_layer_name(name)]
        self._units_in[name] = n_units
        self._written[name] = np.zeros(self.n_stimuli, dtype=bool)
        red = self.reduction
        if red is None:
            return self._create(name, n_units, n_units)
        if not red.applies(n_units):
            self._reduction_params[name] = {**red.params(n_units), "n_components": n_units, "applied": False}
            return self._create(name, n_units, n_units)
        if red.method in STREAMING_REDUCTIONS:
            transform, extra = STREAMING_REDUCTIONS[red.method](n_units, red.n_components, red.seed)
            self._streams[name] = transform
            self._reduction_params[name] = {**red.params(n_units), **extra, "applied": True}
            return self._create(name, red.n_components, n_units)
        self._deferred.append(name)
        return self._scratch_dataset(name, n_units)

    def _check_range(self, name: str, values: np.ndarray) -> None:
        if self.dtype == "float16" and values.size and _max_abs(values) > _FLOAT16_MAX:
            raise AnalysisError(f"layer {name!r} has values beyond the float16 range "
                                f"(max |x| = {_max_abs(values):.4g})", hint="use dtype: float32")

    def write_batch(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write rows ``start .. start + n`` of each layer (arrays of shape (n, n_units)).

        With a streaming reduction the rows are projected before they are stored; with a
        deferred one they go to the scratch file at full width. The first batch checks that the
        file system has room for every layer (:func:`~bids_dnn.features.disk.check_free_space`).
        """
        if not self._units_in:
            targets = [self._target(name, np.asarray(array).shape[1]) for name, array in arrays.items()
                       if np.asarray(array).ndim == 2]
            by_folder: dict[Path, int] = {}
            for t in targets:  # the scratch file of a deferred reduction may be in the work folder
                folder = Path(t.file.filename).parent
                by_folder[folder] = by_folder.get(folder, 0) + t.shape[0] * t.shape[1] * t.dtype.itemsize
            for folder, n_bytes in by_folder.items():
                check_free_space(folder, n_bytes)
        for name, array in arrays.items():
            array = np.asarray(array)
            if array.ndim != 2 or start < 0 or start + array.shape[0] > self.n_stimuli:
                raise AnalysisError(f"layer {name!r}: rows {start}..{start + len(array)} of shape "
                                    f"{array.shape} do not fit {self.n_stimuli} stimuli")
            target = self._target(name, array.shape[1])
            rows = slice(start, start + array.shape[0])
            if name in self._deferred:
                target[rows] = array.astype(np.float32, copy=False)
            else:
                if name in self._streams:
                    array = self._streams[name](array)
                self._check_range(name, array)
                target[rows] = as_dtype(array, self.dtype)
            self._written[name][rows] = True

    def _reduce_deferred(self) -> None:
        """Fit the deferred reduction (pca) of each layer on all its rows, layer by layer."""
        red = self.reduction
        for name in self._deferred:
            assert red is not None and self._scratch is not None
            full = self._scratch[encode_layer_name(name)][()]
            reduced, params = reduce_features(full, red.method, red.n_components, red.seed)
            del full
            self._check_range(name, reduced)
            dataset = self._create(name, reduced.shape[1], self._units_in[name])
            dataset[()] = as_dtype(reduced, self.dtype)
            self._reduction_params[name] = {**params, **red.params(self._units_in[name]),
                                            "n_components": int(reduced.shape[1])}
        self._deferred = []
        self.close_scratch()

    def close_scratch(self) -> None:
        """Close and delete the scratch file (if one was created)."""
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        if self._scratch_path is not None:
            self._scratch_path.unlink(missing_ok=True)

    def set_layer_shapes(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Record each layer's original output shape (without batch dimension)."""
        self._shapes.update({name: tuple(int(s) for s in shape) for name, shape in shapes.items()})

    def finalize(self) -> None:
        """Check that every row of every layer was written; store shapes and layer order."""
        if not self._written:
            raise AnalysisError("no layer was written to the feature file")
        for name, done in self._written.items():
            if not done.all():
                raise AnalysisError(f"layer {name!r}: {int((~done).sum())} of {self.n_stimuli} "
                                    "stimuli were never written")
        self._reduce_deferred()
        for name in self._written:
            dataset = self.h5[LAYER_GROUP][encode_layer_name(name)]
            if name in self._shapes:
                dataset.attrs["original_shape"] = np.asarray(self._shapes[name], dtype=np.int64)
            for param, value in self._reduction_params.get(name, {}).items():
                dataset.attrs[f"{_REDUCTION_PREFIX}{param}"] = "" if value is None else value
            dataset.attrs[DIGEST_ATTR] = dataset_digest(dataset)
        self.h5.create_dataset(LAYER_ORDER, data=np.array(self.layers, dtype=object),
                               dtype=h5py.string_dtype("utf-8"))
        self.set_attrs({"complete": True})  # the marker stored_content_key looks for


#: per-layer dataset attribute: SHA-256 of the stored values (and the stimulus order), checked on reading
DIGEST_ATTR = "sha256"


class FeatureDigestError(AnalysisError):
    """A layer's stored values no longer match the digest written with them (edited, shuffled or
    corrupted file)."""


def dataset_digest(dataset: Any, stim_ids: Sequence[str] | None = None, rows_per_block: int = 256) -> str:
    """SHA-256 (hex) of a layer dataset's values as stored (dtype and row order), read in blocks
    of rows so memory stays small; the file's stimulus ids are part of it, so rows that were
    reordered together with their ids are caught as well."""
    if stim_ids is None:
        stim_ids = [s.decode() if isinstance(s, bytes) else str(s) for s in dataset.file[STIM_IDS][()]]
    blocks = (np.ascontiguousarray(dataset[start:start + rows_per_block])
              for start in range(0, dataset.shape[0], rows_per_block))
    return parts_sha256(itertools.chain(["\n".join(stim_ids), str(dataset.dtype.str)], blocks))


def _array_digest(values: np.ndarray, stim_ids: Sequence[str]) -> str:
    """:func:`dataset_digest` of values already read (same bytes, same order)."""
    return parts_sha256(["\n".join(stim_ids), str(values.dtype.str), np.ascontiguousarray(values)])


@dataclass
class FeatureSet:
    """Features read back from a file.

    Attributes
    ----------
    stim_ids : list of str, length n_stimuli
    layers : dict of str to ndarray (n_stimuli, n_units) float32
    attrs : dict
        Root attributes (JSON values decoded).
    layer_shapes : dict of str to tuple of int
        Original output shape of each layer, without batch dimension.
    reductions : dict of str to dict
        Per layer (of a file written with a reduction): method, n_components, seed,
        n_units_in, applied, and density (srp) or explained_variance_ratio_sum (pca).
    """

    stim_ids: list[str]
    layers: dict[str, np.ndarray]
    attrs: dict[str, Any]
    layer_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    reductions: dict[str, dict[str, Any]] = field(default_factory=dict)


def stored_content_key(path: Path) -> str | None:
    """The ``content_key`` of a feature file; None when absent or unreadable."""
    try:
        with h5py.File(path, "r") as h5:
            key = h5.attrs.get("content_key")
            complete = bool(h5.attrs.get("complete", False))
    except (OSError, KeyError, ValueError):
        return None
    if isinstance(key, bytes):
        key = key.decode()
    return str(key) if key is not None and complete else None


def read_features(path: Path, layers: Sequence[str] | None = None) -> FeatureSet:
    """Read a feature file (all layers, or ``layers`` in the given order) as float32.

    Raises
    ------
    InputMissingError
        No such file, or not a readable feature file.
    AnalysisError
        A requested layer is not in the file.
    FeatureDigestError
        A layer's values do not match the digest stored with them (:data:`DIGEST_ATTR`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"feature file not found: {path}")
    try:
        with h5py.File(path, "r") as h5:
            attrs = _read_attrs(h5)
            stim_ids = [s.decode() if isinstance(s, bytes) else str(s) for s in h5[STIM_IDS][()]]
            stored = [s.decode() if isinstance(s, bytes) else str(s) for s in h5[LAYER_ORDER][()]]
            wanted = list(layers) if layers is not None else stored
            missing = [name for name in wanted if name not in stored]
            if missing:
                raise AnalysisError(f"{path.name} has no layer(s) {', '.join(missing)}; "
                                    f"it has {', '.join(stored)}")
            arrays, shapes, reductions = {}, {}, {}
            for name in wanted:
                dataset = h5[LAYER_GROUP][encode_layer_name(name)]
                values = dataset[()]
                recorded = dataset.attrs.get(DIGEST_ATTR)
                recorded = recorded.decode() if isinstance(recorded, bytes) else recorded
                if recorded is not None and _array_digest(values, stim_ids) != recorded:
                    raise FeatureDigestError(
                        f"{path.name}: the stored features of layer {name!r} do not match the digest written with "
                        "them (the file was edited, reordered or corrupted)",
                        "rerun the participant level (it re-extracts them) or delete the file")
                arrays[name] = values.astype(np.float32, copy=False)
                shapes[name] = tuple(int(s) for s in dataset.attrs["original_shape"])
                params = {key[len(_REDUCTION_PREFIX):]: value for key, value in _read_attrs(dataset).items()
                          if key.startswith(_REDUCTION_PREFIX)}
                if params:
                    reductions[name] = params
    except (OSError, KeyError) as exc:
        raise InputMissingError(f"{path} is not a readable feature file ({exc.__class__.__name__}: {exc})",
                                hint="delete it; it will be recomputed") from None
    return FeatureSet(stim_ids, arrays, attrs, shapes, reductions)


def _write_atomically(path: Path, key: str, stim_ids: Sequence[str],
                      compute: Callable[[FeatureWriter], None], scratch_dir: Path | None = None,
                      **writer_options: Any) -> None:
    """Write into ``.<name>.tmp-<pid>`` next to ``path``, fsync, rename onto ``path``.

    A deferred reduction keeps its full-width rows in ``<name>.tmp-<pid>.full`` in
    ``scratch_dir`` (the run's work folder) meanwhile, else next to the temporary file.
    """
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed process
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    scratch = (Path(scratch_dir) / f"{path.name}.tmp-{os.getpid()}.full" if scratch_dir is not None
               else tmp.with_name(tmp.name + ".full"))
    try:
        with h5py.File(tmp, "w", track_order=True) as h5:
            writer = FeatureWriter(h5, stim_ids, key=key, scratch=scratch, **writer_options)
            try:
                compute(writer)
                writer.finalize()
            finally:
                writer.close_scratch()
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)  # make the rename durable


def _locked(path: Path, timeout: float) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=timeout)


def ensure_features(path: Path, key: str, compute: Callable[[FeatureWriter], None], *,
                    stim_ids: Sequence[str], dtype: str = "float32",
                    attrs: Mapping[str, Any] | None = None, compression: str | None = None,
                    reduction: Any = None, force: bool = False, timeout: float = 6 * 3600.0,
                    scratch_dir: Path | None = None) -> Path:
    """Return ``path``, computing it with ``compute(writer)`` unless it holds ``key``.

    Parameters
    ----------
    path : Path
        The feature file.
    key : str
        Content key (:func:`feature_content_key`).
    compute : callable(FeatureWriter)
        Writes every layer (e.g. ``extract_features(..., on_batch=writer.write_batch)``,
        then ``writer.set_layer_shapes(shapes)``). Not called when the file is reused.
    stim_ids : sequence of str, length n_stimuli
    dtype, attrs, compression, reduction
        Passed to :class:`FeatureWriter` (``reduction``: a :class:`Reduction`, mapping or
        ``models[i].reduction``; it must also be part of ``key``).
    force : bool
        Recompute even when the stored file holds ``key`` (``--force``).
    timeout : float
        Seconds to wait for another process computing the same file.
    scratch_dir : Path, optional
        Folder of the scratch file of a deferred reduction (``-w``); default: next to the
        temporary file, in ``path``'s folder.

    Raises
    ------
    AnalysisError
        The lock could not be taken in time, or the written data are incomplete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(path, timeout):
            if not force and path.is_file() and stored_content_key(path) == key:
                return path
            _write_atomically(path, key, stim_ids, compute, scratch_dir, dtype=dtype, attrs=attrs,
                              compression=compression, reduction=reduction)
    except Timeout:
        raise AnalysisError(f"waited {timeout:.0f} s for another process writing {path.name}",
                            hint=f"if no other run is active, delete {path}.lock") from None
    return path


def write_feature_file(path: Path, key: str, stim_ids: Sequence[str], layers: Mapping[str, np.ndarray], *,
                       layer_shapes: Mapping[str, Sequence[int]] | None = None, dtype: str = "float32",
                       attrs: Mapping[str, Any] | None = None, compression: str | None = None,
                       reduction: Any = None, timeout: float = 600.0) -> Path:
    """Write in-memory features (n_stimuli, n_units) per layer atomically, replacing ``path``."""
    def compute(writer: FeatureWriter) -> None:
        writer.write_batch(0, layers)
        writer.set_layer_shapes(layer_shapes or {})

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(path, timeout):
            _write_atomically(path, key, stim_ids, compute, dtype=dtype, attrs=attrs,
                              compression=compression, reduction=reduction)
    except Timeout:
        raise AnalysisError(f"waited {timeout:.0f} s for another process writing {path.name}") from None
    return path
