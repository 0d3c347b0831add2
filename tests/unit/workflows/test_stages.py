"""Unit tests of the resume bookkeeping (content keys, fingerprints, the stage ledger)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bids_dnn.workflows.stages import (StageLedger, changed_outputs, content_key, file_fingerprint, files_fingerprint, recorded_stages,
                             removable_stages)


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
    ledger.record("brain", "k3", [tmp_path / "a.tsv", tmp_path / "c.tsv", tmp_path / "a.tsv"])
    # a.tsv holds "x": size 1 and its SHA-256; c.tsv does not exist, so it has no checksum
    assert ledger.done["brain"] == {"key": "k3", "outputs": ["a.tsv", "c.tsv"],
                                    "checksums": {"a.tsv": "1:" + hashlib.sha256(b"x").hexdigest()}}
    assert ledger.outputs() == ["a.tsv", "c.tsv"]


def test_ledger_stage_with_an_edited_output_is_not_current(tmp_path: Path) -> None:
    """Outputs are checked by their recorded checksum: a file edited in place (same size, even
    the same modification time) makes the stage stale; one recorded without checksums (an older
    status file) only needs to exist."""
    out = tmp_path / "rdm.tsv"
    out.write_text("0.1\t0.2\n")
    ledger = StageLedger(tmp_path, {})
    ledger.record("brain", "k", [out])
    status = {"stages": ledger.done}
    again = StageLedger(tmp_path, recorded_stages(status))
    assert again.is_current("brain", "k")
    stat = out.stat()
    out.write_text("0.2\t0.1\n")  # same size
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert changed_outputs(tmp_path, status["stages"]["brain"]) == ["rdm.tsv"]
    assert not StageLedger(tmp_path, recorded_stages(status)).is_current("brain", "k")
    legacy = {"brain": {"key": "k", "outputs": ["rdm.tsv"]}}
    assert StageLedger(tmp_path, legacy).is_current("brain", "k")


def test_recorded_stages_ignores_old_or_broken_status() -> None:
    assert recorded_stages(None) == {}
    assert recorded_stages({"complete": True}) == {}  # written before stages existed
    assert recorded_stages({"stages": {"brain": {"key": 3}, "rsa": {"key": "k", "outputs": []}}}) == {
        "rsa": {"key": "k", "outputs": []}}


def test_ledger_records_paths_relative_to_the_output_folder_from_any_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative OUT_DIR: the layout's paths are ``out/sub-01/...`` (relative to the working
    directory); they are recorded as ``sub-01/...`` and found again from another directory."""
    out = tmp_path / "work" / "out"
    (out / "sub-01").mkdir(parents=True)
    (out / "sub-01" / "x.tsv").write_text("x")
    monkeypatch.chdir(tmp_path / "work")
    ledger = StageLedger(Path("out"))
    ledger.record("brain", "k", [Path("out") / "sub-01" / "x.tsv", out / "sub-01" / "x.tsv"])
    assert ledger.done["brain"]["outputs"] == ["sub-01/x.tsv"]
    with pytest.raises(ValueError):
        ledger.record("rsa", "k", [tmp_path / "elsewhere.tsv"])  # outputs are always inside OUT_DIR
    (tmp_path / "deeper").mkdir()
    monkeypatch.chdir(tmp_path / "deeper")
    for root in (Path("../work/out"), out):
        again = StageLedger(root, ledger.done)
        assert again.is_current("brain", "k")
        assert [path.resolve() for path in again.keep("brain")] == [(out / "sub-01" / "x.tsv").resolve()]


def test_remove_obsolete_deletes_only_recorded_files_no_stage_lists(tmp_path: Path) -> None:
    for name in ("old.tsv", "old.json", "shared.tsv", "new.tsv", "dropped.nii.gz", "mine.txt", "pending.tsv"):
        (tmp_path / name).write_text(name)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.txt"
    outside.write_text("not ours")
    recorded = {"brain": {"key": "k1", "outputs": ["old.json", "old.tsv", "shared.tsv"]},
                "searchlight:m": {"key": "k2", "outputs": ["dropped.nii.gz", "shared.tsv", "gone.tsv",
                                                           f"../{outside.name}", str(outside)]},
                "rsa:m": {"key": "k3", "outputs": ["pending.tsv", "old.tsv"]}}
    ledger = StageLedger(tmp_path, {}, recorded=recorded)  # --force: nothing current, all recorded
    # searchlight switched off: its files go, except one still listed by a stage of the spec;
    # missing files and names leaving the folder are ignored
    removed = ledger.remove_obsolete(["searchlight:m"])
    assert removed == [tmp_path / "dropped.nii.gz"]
    assert outside.read_text() == "not ours" and (tmp_path / "shared.tsv").is_file()
    # brain recomputed with other outputs: old.json goes; old.tsv is still listed by rsa:m (pending)
    ledger.record("brain", "k4", [tmp_path / "new.tsv", tmp_path / "shared.tsv"])
    assert ledger.remove_obsolete(["brain"]) == [tmp_path / "old.json"]
    assert ledger.pending() == {"rsa:m": recorded["rsa:m"]}
    ledger.record("rsa:m", "k5", [tmp_path / "pending.tsv"])
    assert ledger.remove_obsolete(["rsa:m"]) == [tmp_path / "old.tsv"]
    assert ledger.pending() == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "new.tsv", "pending.tsv", "shared.tsv"]


def test_removable_stages_include_those_a_stopped_run_left_pending() -> None:
    status = {"stages": {"brain": {"key": "new", "outputs": ["a"]}},
              "pending": {"searchlight:m": {"key": "old", "outputs": ["b"]}, "bad": {"key": "x", "outputs": [3]}}}
    assert removable_stages(status) == {"brain": {"key": "new", "outputs": ["a"]},
                                        "searchlight:m": {"key": "old", "outputs": ["b"]}}
    assert recorded_stages(status) == {"brain": {"key": "new", "outputs": ["a"]}}


def test_group_maps_use_only_the_model_rdms_of_the_current_features(tmp_path: Path) -> None:
    """A layer an earlier spec asked for leaves its model RDM at the root (not recorded by any
    stage, so not removed); the group maps do not take it for a current layer."""
    from types import SimpleNamespace

    import numpy as np

    from bids_dnn.io import derivatives as drv
    from bids_dnn.features.store import write_feature_file
    from bids_dnn.workflows.group_maps import _model_layers

    layout = drv.OutputLayout(tmp_path, task="t", space="s")
    ctx = SimpleNamespace(layout=layout, spec=SimpleNamespace(
        rdm=SimpleNamespace(model="correlation"), models=[SimpleNamespace(output_label="net")]))
    features = np.zeros((3, 2), dtype=np.float32)
    write_feature_file(layout.features("net"), "new", ["a", "b", "c"], {"fc": features})
    for layer, key in (("fc", content_key("model_rdm", "new", "fc", "correlation")),
                       ("conv", content_key("model_rdm", "old", "conv", "correlation"))):
        drv.write_json(drv.sidecar_path(layout.model_rdm("net", layer, "correlation")),
                       {"Layer": layer, "ContentKey": key})
    assert _model_layers(ctx) == [("net", "fc")]
    layout.features("net").unlink()  # features deleted to save space: every RDM counts
    assert sorted(_model_layers(ctx)) == [("net", "conv"), ("net", "fc")]
