"""Stimulus annotations as probe targets: their kind (categorical or continuous) and their codes.

Pure functions on plain values; no files, no printing.

Conventions
-----------
Missing values
    ``None``, the empty string, ``"n/a"`` (BIDS; any case, surrounding blanks ignored) and any
    value that parses as a float NaN (``float("nan")``, ``"nan"``) are missing. Missing stimuli
    are left out of the probe: they are neither trained on nor tested, and get no prediction.
    They are ignored when the kind is detected.
Kind
    ``"continuous"`` when every non-missing value parses as a finite float and there are more
    than 2 distinct values; otherwise ``"categorical"`` (so a 0/1 column is categorical).
Class labels
    Categorical values become strings: a string is stripped; an integer (or an integer-valued
    float) is written as an integer (``1.0`` -> ``"1"``); another float as ``repr(float(v))``.
    Classes are sorted as strings; a stimulus' code is the index of its class in that list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["PROBE_KINDS", "EncodedAnnotation", "annotation_kind", "encode_annotation", "is_missing"]

#: kinds of probe targets: a class label per stimulus, or a number per stimulus
PROBE_KINDS: tuple[str, ...] = ("categorical", "continuous")

_MISSING_STRINGS = frozenset({"", "n/a"})


def is_missing(value: Any) -> bool:
    """Whether an annotation value is missing (see the module docstring).

    Parameters
    ----------
    value : str, float, int or None

    Returns
    -------
    bool
        True for ``None``, ``""``, ``"n/a"`` (any case, blanks stripped) and NaN (as a float or
        a string such as ``"nan"``).
    """
    if value is None:
        return True
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _MISSING_STRINGS:
            return True
        number = _as_float(text)
        return number is not None and math.isnan(number)
    number = _as_float(value)
    return number is not None and math.isnan(number)


def _as_float(value: Any) -> float | None:
    """``float(value)`` or None when it does not parse (booleans do not count as numbers)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None


def _present(values: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """The values as a list and the boolean mask of missing ones."""
    items = list(np.asarray(values, dtype=object).ravel()) if not isinstance(values, (list, tuple)) else list(values)
    return items, np.array([is_missing(v) for v in items], dtype=bool)


def annotation_kind(values: Sequence[str | float]) -> Literal["categorical", "continuous"]:
    """The kind of probe an annotation asks for.

    Parameters
    ----------
    values : sequence of str or float, length n_stimuli
        One value per stimulus (e.g. a column of ``stimuli.tsv``); missing values are ignored.

    Returns
    -------
    {"categorical", "continuous"}
        ``"continuous"`` when every non-missing value parses as a finite float and there are more
        than 2 distinct values, else ``"categorical"``.
    """
    items, missing = _present(values)
    numbers = []
    for value, gone in zip(items, missing):
        if gone:
            continue
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            return "categorical"
        numbers.append(number)
    return "continuous" if len(set(numbers)) > 2 else "categorical"


def _class_label(value: Any) -> str:
    """The class label of a categorical value (see the module docstring)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = _as_float(value)
    if number is not None:
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


@dataclass(frozen=True)
class EncodedAnnotation:
    """An annotation coded as probe targets (n_stimuli = number of values).

    Attributes
    ----------
    kind : {"categorical", "continuous"}
        One of :data:`PROBE_KINDS`.
    targets : numpy.ndarray, shape (n_stimuli,)
        Continuous: float64 values (NaN where missing). Categorical: int64 class codes, indices
        into ``classes`` (-1 where missing).
    classes : list of str
        Categorical: the sorted class labels; continuous: empty.
    missing : numpy.ndarray, shape (n_stimuli,) bool
        Stimuli without a value; they are left out of the probe.
    """

    kind: str
    targets: np.ndarray
    classes: list[str] = field(default_factory=list)
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def n_stimuli(self) -> int:
        """Number of stimuli (missing ones included)."""
        return int(self.targets.shape[0])

    @property
    def n_classes(self) -> int | None:
        """Number of classes (categorical), None (continuous)."""
        return len(self.classes) if self.kind == "categorical" else None


def encode_annotation(values: Sequence[str | float], kind: str | None = None) -> EncodedAnnotation:
    """Code an annotation as probe targets.

    Parameters
    ----------
    values : sequence of str or float, length n_stimuli
        One value per stimulus; missing values (``"n/a"``, ``""``, None, NaN) are marked in
        ``missing`` and left out of the probe.
    kind : {"categorical", "continuous"}, optional
        Default: :func:`annotation_kind` of the values. ``"categorical"`` may be forced on
        numeric values (each distinct value is a class).

    Returns
    -------
    EncodedAnnotation

    Raises
    ------
    ValueError
        Unknown kind; continuous: a non-missing value that is not a finite number, fewer than 4
        non-missing values, or a constant annotation; categorical: fewer than 2 classes, or a
        class with fewer than 2 stimuli (it could not be both trained on and tested).
    """
    if kind is None:
        kind = annotation_kind(values)
    if kind not in PROBE_KINDS:
        raise ValueError(f"annotation kind must be one of {PROBE_KINDS}, got {kind!r}")
    items, missing = _present(values)
    n_present = int((~missing).sum())
    if kind == "continuous":
        targets = np.full(len(items), np.nan)
        for i, (value, gone) in enumerate(zip(items, missing)):
            if gone:
                continue
            number = _as_float(value)
            if number is None or not math.isfinite(number):
                raise ValueError(f"a continuous annotation needs finite numbers; stimulus {i} has {value!r}")
            targets[i] = number
        if n_present < 4:
            raise ValueError(f"a continuous annotation needs at least 4 stimuli with a value to be "
                             f"cross-validated; it has {n_present}")
        present = targets[~missing]
        if present.max() == present.min():
            raise ValueError(f"the continuous annotation is constant ({present[0]!r} for every stimulus "
                             "with a value): there is nothing to predict")
        return EncodedAnnotation(kind="continuous", targets=targets, classes=[], missing=missing)

    labels = [_class_label(v) for v, gone in zip(items, missing) if not gone]
    classes, counts = np.unique(np.array(labels, dtype=str), return_counts=True) if labels else (
        np.array([], dtype=str), np.array([], dtype=np.int64))
    if classes.size < 2:
        raise ValueError(f"a categorical annotation needs at least 2 classes; it has {classes.size}"
                         + (f" ({str(classes[0])!r})" if classes.size else ""))
    rare = [f"{str(c)!r} ({int(k)})" for c, k in zip(classes, counts) if k < 2]
    if rare:
        raise ValueError("every class needs at least 2 stimuli to be cross-validated; too few for "
                         + ", ".join(rare))
    class_list = [str(c) for c in classes]
    code_of = {c: i for i, c in enumerate(class_list)}
    targets = np.full(len(items), -1, dtype=np.int64)
    targets[~missing] = [code_of[label] for label in labels]
    return EncodedAnnotation(kind="categorical", targets=targets, classes=class_list, missing=missing)
