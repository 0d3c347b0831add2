"""bids_dnn.spec_io on its own: YAML read as text where asked, problems worded for any model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bids_dnn.errors import InputMissingError, SpecError
from bids_dnn.spec_io import model_in, read_spec_data, validation_problems, yaml_load


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    radius_mm: float = Field(6.0, gt=0)


class _Root(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: _Inner | None = None
    items: list[_Inner] = []


def _problems(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        _Root.model_validate(data)
    return validation_problems(caught.value, _Root)


def test_yaml_lists_named_as_text_keep_the_written_names() -> None:
    text = "rois:\n  labels: [NULL, 007, yes, 'x']\nother: [NULL, 007]\n"
    data = yaml_load(text, (("rois", "labels"),))
    assert data["rois"]["labels"] == ["NULL", "007", "yes", "x"]
    assert data["other"] == yaml.safe_load(text)["other"] == [None, 7]
    assert yaml_load(text) == yaml.safe_load(text)
    assert yaml_load("") is None


def test_problems_name_the_field_path_for_any_model() -> None:
    assert _problems({"inner": {"radius_mm": -3}}) == ["inner.radius_mm: must be greater than 0 (got -3)"]
    assert _problems({"inner": {"radiusmm": 1}}) == ["inner.radiusmm: unknown field; did you mean 'radius_mm'?"]
    assert _problems({"items": [{}, {"zzz": 1}]}) == ["items[1].zzz: unknown field; valid fields: radius_mm"]
    assert model_in(list[_Inner]) is _Inner and model_in(_Inner | None) is _Inner and model_in(int) is None


def test_spec_files_are_read_by_suffix(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"x": [1]}')
    (tmp_path / "b.yaml").write_text("x: [1]\n")
    (tmp_path / "empty.json").write_text("")
    assert read_spec_data(tmp_path / "a.json") == read_spec_data(tmp_path / "b.yaml") == {"x": [1]}
    assert read_spec_data(tmp_path / "empty.json") == {}
    with pytest.raises(InputMissingError, match="spec file not found"):
        read_spec_data(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("x: [1\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        read_spec_data(tmp_path / "bad.yaml")
