"""Decoding, probing and drivers in the whole reports: registration, section order, methods text and
references (numbered in order of first citation)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bids_dnn.report import build_group_report, build_participant_report
from bids_dnn.report.methods import REFERENCES, methods_blocks
from tests.unit.report._analysis_outputs import (
    analysis_spec,
    make_layout,
    write_group_outputs,
    write_participant_outputs,
)

NEW_SECTIONS = ["decoding", "probing", "drivers"]


def _methods(spec, level: str, **facts) -> tuple[str, list[str]]:
    blocks = methods_blocks(spec, level, {"task": "shapes", **facts})
    text = "\n".join(b.text for b in blocks if b.kind == "paragraph")
    (references,) = [b.items for b in blocks if b.kind == "references"]
    return text, references


def _first_citation_order(text: str) -> list[int]:
    seen: list[int] = []
    for group in re.findall(r"\[(\d+(?:, \d+)*)\]", text):
        for number in (int(n) for n in group.split(", ")):
            if number not in seen:
                seen.append(number)
    return seen


def test_methods_describe_the_three_analyses_with_the_spec_values() -> None:
    spec = analysis_spec(probing={"enabled": True, "permutations": 100, "annotations": ["category", "size"],
                                  "kinds": {"size": "continuous"}, "n_folds": 4, "inner_folds": 3})
    text, references = _methods(spec, "participant")
    assert "Decoding and identification" in text and "200 permutations of each test fold's candidate labels" in text
    assert "among the stimuli of its own test fold" in text and "2 x their mean" in text
    assert "Linear probes" in text and "'category', 'size' (continuous)" in text and "4-fold" in text
    assert "3-fold inner cross-validation" in text and "100 permutations of the annotation's labels" in text
    assert "What drives each region" in text and f"layer of {spec.models[0].output_label}" in text
    assert "SmoothGrad" in text and "8 copies" in text and "SD 0.2 times" in text and "the 2 stimuli" in text
    assert "11 penalties from 0.01 to 1e+08" in text
    for key in ("kay2008", "horikawa2017", "alain2016", "hewitt2019", "simonyan2014", "smilkov2017"):
        assert REFERENCES[key] in references
    order = _first_citation_order(text)
    assert order == list(range(1, len(references) + 1))  # numbered in order of first citation, all cited


def test_methods_leave_out_what_is_off_unless_its_outputs_exist() -> None:
    spec = analysis_spec(decoding={"enabled": False}, probing={"enabled": False}, drivers={"enabled": False})
    text, references = _methods(spec, "group", n_subjects=4)
    assert "Decoding and identification" not in text and "Linear probes" not in text
    assert "What drives" not in text and REFERENCES["kay2008"] not in references
    text, references = _methods(spec, "group", n_subjects=4, has_decoding=True)
    assert "Decoding and identification" in text and "minus its chance level 0.5" in text
    assert REFERENCES["kay2008"] in references and "Linear probes" not in text
    no_saliency = analysis_spec(drivers={"enabled": True, "saliency": {"enabled": False}})
    text, references = _methods(no_saliency, "participant")
    assert "What drives each region" in text and "Saliency" not in text
    assert REFERENCES["simonyan2014"] not in references


def _sections(html: str) -> dict[str, str]:
    parts = re.split(r'(?=<section[^>]*\bid=")', html)
    out = {}
    for part in parts:
        match = re.match(r'<section[^>]*\bid="([^"]+)"', part)
        if match:
            out[match[1]] = part
    return out


def test_reports_register_the_sections_in_order(tmp_path: Path, rng: np.random.Generator) -> None:
    spec = analysis_spec()
    layout = make_layout(tmp_path)
    write_participant_outputs(layout, rng, saliency_rois=("early",))
    write_group_outputs(layout, rng)

    participant = _sections(build_participant_report(layout, "01", spec=spec).read_text())
    group = _sections(build_group_report(layout, spec=spec, subjects=["01"]).read_text())

    for sections, before in ((participant, "rsa"), (group, "comparisons")):
        names = list(sections)
        assert names[names.index(before) + 1: names.index(before) + 4] == NEW_SECTIONS
        assert names[-2:] == ["methods", "provenance"]
        for name in NEW_SECTIONS:
            assert 'class="err"' not in sections[name], name
            assert "data:image/png;base64," in sections[name], name
    assert participant["drivers"].count("<img") == 5  # 2 ROIs x (montage + scatter) + 1 saliency figure
    for methods in (participant["methods"], group["methods"]):
        assert "Kay KN" in methods and "Alain G" in methods and "Smilkov D" in methods


def test_sections_are_absent_when_disabled_and_without_outputs(tmp_path: Path) -> None:
    spec = analysis_spec(decoding={"enabled": False}, probing={"enabled": False}, drivers={"enabled": False})
    layout = make_layout(tmp_path)
    participant = _sections(build_participant_report(layout, "01", spec=spec).read_text())
    assert not set(NEW_SECTIONS) & set(participant)
