"""The spec's ``analyses.cka`` section: defaults, allowed values from the CKA registry, checks."""

from __future__ import annotations

import pytest

from bids_dnn.cka.registry import CKA_KERNEL_NAMES, HSIC_ESTIMATOR_NAMES
from bids_dnn.errors import SpecError
from bids_dnn.spec import parse_spec

MINIMAL = {"models": [{"name": "alexnet"}], "rois": {"atlas": "atlas.nii.gz"}}


def problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value.problems


def test_cka_is_off_by_default_with_the_unbiased_linear_estimator():
    cka = parse_spec(MINIMAL).analyses.cka
    assert not cka.enabled and cka.kernel == "linear" and cka.estimator == "unbiased" and cka.sigma == 1.0
    assert cka.permutations == 1000 and cka.bootstrap == 1000 and cka.across_models


def test_allowed_values_come_from_the_registry():
    for kernel in CKA_KERNEL_NAMES:
        for estimator in HSIC_ESTIMATOR_NAMES:
            spec = parse_spec({**MINIMAL, "analyses": {"cka": {"enabled": True, "kernel": kernel,
                                                                "estimator": estimator}}})
            assert (spec.analyses.cka.kernel, spec.analyses.cka.estimator) == (kernel, estimator)
    assert any("analyses.cka.kernel" in p for p in problems({**MINIMAL, "analyses": {"cka": {"kernel": "cosine"}}}))
    assert any("analyses.cka.estimator" in p
               for p in problems({**MINIMAL, "analyses": {"cka": {"estimator": "biased"}}}))


@pytest.mark.parametrize("field, value, expected", [
    ("sigma", 0, "analyses.cka.sigma: must be greater than 0"),
    ("permutations", 10**7, "analyses.cka.permutations: must be less than or equal to 1000000"),
    ("bootstrap", -1, "analyses.cka.bootstrap: must be greater than or equal to 0"),
    ("across_model", True, "analyses.cka.across_model: unknown field; did you mean 'across_models'?"),
])
def test_bad_values_name_the_field(field, value, expected):
    found = problems({**MINIMAL, "analyses": {"cka": {field: value}}})
    assert any(expected in p for p in found), found


def test_cka_needs_rois():
    data = {"models": [{"name": "alexnet"}], "analyses": {"rsa": {"enabled": False}, "cka": {"enabled": True}}}
    assert any("rois: required for analyses.cka" in p for p in problems(data))
    data["analyses"]["cka"]["enabled"] = False
    assert not parse_spec(data).analyses.cka.enabled
