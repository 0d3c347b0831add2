"""The analysis spec: defaults, validation messages, loaders, examples and generated docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bids_dnn.errors import InputMissingError, SpecError
from bids_dnn.spec import AnalysisSpec, load_spec, parse_spec, spec_json_schema
from bids_dnn.spec_reference import spec_reference_markdown

REPO = Path(__file__).resolve().parents[3]
MINIMAL = {"models": [{"name": "alexnet"}], "rois": {"atlas": "atlas.nii.gz"}}


def problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.exit_code == 65
    return info.value.problems


def test_minimal_spec_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.rdm.brain == "auto" and spec.rdm.model == "correlation"
    assert spec.analyses.rsa.comparison == "spearman" and spec.analyses.rsa.permutations == 10000
    assert spec.statistics.correction == "fdr_bh" and spec.models[0].weights == "DEFAULT"


def test_spec_is_frozen() -> None:
    spec = parse_spec(MINIMAL)
    with pytest.raises(Exception):
        spec.rdm = None  # type: ignore[misc]


@pytest.mark.parametrize("data, expected", [
    ({**MINIMAL, "modelz": []}, "modelz: unknown field; did you mean 'models'?"),
    ({**MINIMAL, "analyses": {"searchlight": {"radius_mm": -3}}},
     "analyses.searchlight.radius_mm: must be greater than 0 (got -3)"),
    ({**MINIMAL, "rdm": {"brain": "crossnobs"}}, "did you mean 'crossnobis'?"),
    ({"models": [{"name": "alexnet", "layerz": "x"}], "rois": {"atlas": "a"}}, "models[0].layerz: unknown field; did you mean 'layers'?"),
    ({"models": [{"layers": "top_level"}], "rois": {"atlas": "a"}}, "models[0].name: required field is missing"),
    ({"models": [{"name": "alexnet"}]}, "rois: required for analyses.rsa"),
    ({**MINIMAL, "rois": {"atlas": "a", "masks": "b"}}, "rois: give exactly one of 'masks' or 'atlas'"),
    ({**MINIMAL, "models": [{"name": "a"}, {"name": "a"}]}, "labels must be unique"),
    ({**MINIMAL, "statistics": {"alpha": 2}}, "statistics.alpha: must be less than 1 (got 2)"),
    ({**MINIMAL, "analyses": {"encoding": {"alphas": "logspace(a)"}}}, "analyses.encoding.alphas: must be a list"),
    ({**MINIMAL, "models": [{"name": "x", "source": "custom"}]}, "needs 'entry_point'"),
])
def test_error_messages_name_the_field(data: dict, expected: str) -> None:
    found = problems(data)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("data, expected", [
    ({"analyses": {"rsa": {"permutations": 10**12}}},
     "analyses.rsa.permutations: must be less than or equal to 1000000 (got 1000000000000): p-values resolve"),
    ({"analyses": {"searchlight": {"radius_mm": 1e9}}},
     "analyses.searchlight.radius_mm: must be less than or equal to 50 (got 1000000000.0): a sphere of more"),
    ({"analyses": {"encoding": {"alphas": "logspace(0, 9, 1000000000)"}}},
     "analyses.encoding.alphas: logspace needs 1 <= num <= 100"),
    ({"analyses": {"encoding": {"alphas": [1.0] * 101}}}, "at most 100 alphas (got 101"),
    ({"analyses": {"encoding": {"alphas": [1e300]}}}, "every alpha must be a finite number in (0, 1e+15]"),
    ({"statistics": {"seed": 10**29}}, "statistics.seed: must be less than or equal to 4294967295"),
    ({"statistics": {"map_permutations": 10**7}}, "statistics.map_permutations: must be less than or equal to"),
    ({"statistics": {"bootstrap": 10**9}}, "statistics.bootstrap: must be less than or equal to 100000"),
    ({"models": [{"name": "alexnet", "batch_size": 10**6}]}, "models[0].batch_size: must be less than or equal"),
])
def test_unbounded_numbers_are_refused_with_the_reason(data: dict, expected: str) -> None:
    """Numbers that passed validation and failed later with MemoryError (issue: hostile inputs)."""
    found = problems({**MINIMAL, **data})
    assert any(expected in p for p in found), found


def test_logspace_alphas() -> None:
    spec = parse_spec({**MINIMAL, "analyses": {"encoding": {"alphas": "logspace(-2, 8, 21)"}}})
    alphas = spec.analyses.encoding.alphas
    assert len(alphas) == 21 and alphas[0] == pytest.approx(0.01) and alphas[-1] == pytest.approx(1e8)


@pytest.mark.parametrize("section", ["encoding", "decoding", "probing", "drivers", "naturalistic"])
def test_every_ridge_section_parses_and_checks_its_alphas(section: str) -> None:
    """One set of alpha rules (RidgePenaltySpec) for every cross-validated ridge of the spec."""
    for value, expected in (("logspace(a)", "must be a list of numbers or 'logspace(start, stop, num)'"),
                            ([], "must contain at least one value"),
                            ([0.0], "every alpha must be a finite number in (0, 1e+15]")):
        found = problems({**MINIMAL, "analyses": {section: {"alphas": value}}})
        assert any(f"analyses.{section}.alphas: {expected}" in p for p in found), found
    spec = parse_spec({**MINIMAL, "analyses": {section: {"alphas": "logspace(-1, 1, 3)"}}})
    assert getattr(spec.analyses, section).alphas == pytest.approx([0.1, 1.0, 10.0])


def test_yaml_cannot_execute_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
    assert not (tmp_path / "pwned").exists()


def test_json_and_yaml_give_the_same_spec(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(MINIMAL))
    (tmp_path / "s.yaml").write_text("models: [{name: alexnet}]\nrois: {atlas: atlas.nii.gz}\n")
    assert load_spec(tmp_path / "s.json") == load_spec(tmp_path / "s.yaml")


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(InputMissingError):
        load_spec(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(tmp_path / "list.yaml")


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    assert isinstance(load_spec(example), AnalysisSpec)


def test_schema_has_every_section() -> None:
    schema = spec_json_schema()
    assert set(schema["properties"]) >= {"models", "rois", "rdm", "analyses", "statistics", "brain", "stimuli"}
    assert schema["additionalProperties"] is False


def test_docs_spec_reference_is_current() -> None:
    assert (REPO / "docs" / "spec.md").read_text() == spec_reference_markdown(), \
        "regenerate: python -c \"from bids_dnn.spec_reference import spec_reference_markdown as f; open('docs/spec.md','w').write(f())\""


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=12)
keys = st.sampled_from(["models", "rois", "rdm", "analyses", "statistics", "brain", "stimuli", "outputs", "modelz"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=4))
def test_fuzzed_specs_give_a_spec_or_a_spec_error(data: dict) -> None:
    try:
        parse_spec(data)
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)
