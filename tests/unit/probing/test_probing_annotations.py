"""Annotation kinds and codes: detection rules, missing values, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from bids_dnn.probing import PROBE_KINDS, EncodedAnnotation, annotation_kind, encode_annotation, is_missing


def test_probe_kinds():
    assert PROBE_KINDS == ("categorical", "continuous")


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["1.5", "2", "3.25", "4"], "continuous"),
        ([1.0, 2.0, 3.0], "continuous"),
        (np.array([0.1, 0.2, 0.3, 0.1]), "continuous"),
        (["0", "1", "0", "1"], "categorical"),             # two distinct numbers only
        ([1.0, 2.0, 1.0, 2.0, 2.0], "categorical"),
        (["animal", "tool", "animal"], "categorical"),
        (["1", "2", "three"], "categorical"),               # one value does not parse
        (["1", "2", "inf"], "categorical"),                 # not finite
        (["1", "2", "n/a", "3", ""], "continuous"),          # missing values are ignored
        (["n/a", "a", "b", None, float("nan")], "categorical"),
        ([True, False, True], "categorical"),
    ],
)
def test_annotation_kind(values, kind):
    assert annotation_kind(values) == kind


@pytest.mark.parametrize("value", [None, "", "  ", "n/a", "N/A", " n/a ", float("nan"), np.nan, "nan", "NaN"])
def test_missing_values(value):
    assert is_missing(value)


@pytest.mark.parametrize("value", ["0", 0, 0.0, "a", "na?", float("inf"), "inf"])
def test_present_values(value):
    assert not is_missing(value)


def test_encode_categorical_sorted_classes_and_missing():
    encoded = encode_annotation(["tool", "animal", "n/a", "tool", "face", "animal", "face", ""])
    assert isinstance(encoded, EncodedAnnotation)
    assert encoded.kind == "categorical" and encoded.n_classes == 3 and encoded.n_stimuli == 8
    assert encoded.classes == ["animal", "face", "tool"]
    np.testing.assert_array_equal(encoded.targets, [2, 0, -1, 2, 1, 0, 1, -1])
    np.testing.assert_array_equal(encoded.missing, [0, 0, 1, 0, 0, 0, 0, 1])
    assert encoded.targets.dtype == np.int64


def test_encode_numeric_categories_as_labels():
    encoded = encode_annotation([1.0, 2, "3", 1, 2.0, 3.0, 2.5, 2.5], kind="categorical")
    assert encoded.classes == ["1", "2", "2.5", "3"]
    np.testing.assert_array_equal(encoded.targets, [0, 1, 3, 0, 1, 3, 2, 2])


def test_encode_continuous():
    encoded = encode_annotation(["1.5", 2, "n/a", 3.25, "-4", None])
    assert encoded.kind == "continuous" and encoded.classes == [] and encoded.n_classes is None
    np.testing.assert_array_equal(encoded.missing, [0, 0, 1, 0, 0, 1])
    np.testing.assert_allclose(encoded.targets[~encoded.missing], [1.5, 2.0, 3.25, -4.0])
    assert np.isnan(encoded.targets[encoded.missing]).all()


def test_encode_default_kind_is_detected():
    assert encode_annotation([0, 1, 0, 1]).kind == "categorical"
    assert encode_annotation([0.5, 1, 2, 3]).kind == "continuous"


@pytest.mark.parametrize(
    ("values", "kind", "message"),
    [
        (["a", "a", "a", "n/a"], None, "at least 2 classes; it has 1"),
        (["n/a", ""], "categorical", "at least 2 classes; it has 0"),
        (["a", "a", "b", "c", "c"], None, r"at least 2 stimuli .* too few for 'b' \(1\)"),
        ([1, 2, "n/a", 3], "continuous", "at least 4 stimuli with a value .* it has 3"),
        ([2, 2, 2, 2, "n/a"], "continuous", "constant"),
        ([1, 2, "x", 3], "continuous", "finite numbers; stimulus 2 has 'x'"),
        ([1, 2, 3], "ordinal", "kind must be one of"),
    ],
)
def test_encode_errors(values, kind, message):
    with pytest.raises(ValueError, match=message):
        encode_annotation(values, kind)
