"""Unit tests of the resume bookkeeping (content keys, fingerprints, the stage ledger)."""

from __future__ import annotations

import os
from pathlib import Path

from bids_dnn.stages import StageLedger, content_key, file_fingerprint, files_fingerprint, recorded_stages


def test_content_key_is_order_free_for_dicts_and_sensitive_to_values() -> None:
    assert content_key("rsa", {"a": 1, "b": [1, 2]}) == content_key("rsa", {"b": [1, 2], "a": 1})
    assert content_key("rsa", {"a": 1}) != content_key("rsa", {"a": 2})
    assert content_key("rsa", 1) != content_key("brain", 1)
    assert len(content_key()) == 64


def test_fingerprint_changes_with_content_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.tsv"
    path.parent.mkdir()
    path.write_text("onset\n1\n")
    first = file_fingerprint(path, tmp_path)
    assert first[0] == "sub/events.tsv" and first[1] == 8
    os.utime(path, ns=(first[2] + 10**9, first[2] + 10**9))  # same bytes, rewritten later
    assert file_fingerprint(path, tmp_path) != first
    assert file_fingerprint(tmp_path / "gone.tsv", tmp_path) == ["gone.tsv", None, None]
    other = tmp_path.parent / "elsewhere.tsv"
    assert file_fingerprint(other, tmp_path)[0] == str(other)  # outside the root: full path
    assert files_fingerprint([path, tmp_path / "a"], tmp_path) == files_fingerprint([tmp_path / "a", path], tmp_path)


def test_ledger_current_only_with_same_key_and_all_outputs(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("x")
    (tmp_path / "b.tsv").write_text("y")
    previous = {"brain": {"key": "k1", "outputs": ["a.tsv", "b.tsv"]}, "rsa": {"key": "k2", "outputs": []}}
    ledger = StageLedger(tmp_path, previous)
    assert ledger.is_current("brain", "k1")
    assert not ledger.is_current("brain", "other")
    assert not ledger.is_current("report", "k1")
    (tmp_path / "b.tsv").unlink()
    assert not ledger.is_current("brain", "k1")
    assert ledger.is_current("rsa", "k2")
    assert ledger.keep("rsa") == []
    ledger.record("brain", "k3", [tmp_path / "a.tsv", "c.tsv", tmp_path / "a.tsv"])
    assert ledger.done["brain"] == {"key": "k3", "outputs": ["a.tsv", "c.tsv"]}
    assert ledger.outputs() == ["a.tsv", "c.tsv"]


def test_recorded_stages_ignores_old_or_broken_status() -> None:
    assert recorded_stages(None) == {}
    assert recorded_stages({"complete": True}) == {}  # written before stages existed
    assert recorded_stages({"stages": {"brain": {"key": 3}, "rsa": {"key": "k", "outputs": []}}}) == {
        "rsa": {"key": "k", "outputs": []}}
