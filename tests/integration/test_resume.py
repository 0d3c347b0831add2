"""Resume: a rerun skips current stages, recomputes exactly the stale ones, ``--force`` all.

Runs the participant level on two demo subjects with a small spec (ROI RSA + searchlight), then
reruns it unchanged, with a changed RSA section, with a touched events file, with a deleted
output and with ``--force``, checking which files were rewritten (modification times) and that
the outputs equal a run from scratch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bids_dnn.cli.main import main
from tests._specs import SMALL_SPEC

SPEC = SMALL_SPEC.replace("searchlight: {enabled: false}",
                          "searchlight: {enabled: true, radius_mm: 6, comparison: spearman}")
SUBJECTS = ["01", "02"]


def _participant(bids: Path, out: Path, spec: Path, *extra: str) -> None:
    argv = [str(bids), str(out), "participant", "--spec", str(spec), "--participant-label", *SUBJECTS,
            "--no-progress", *extra]
    assert main(argv) == 0


def _results(out: Path) -> dict[str, Path]:
    """Result files (not logs, status files or reports) by relative path."""
    files = {}
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if (path.is_file() and "log" not in rel.parts and "figures" not in rel.parts and path.suffix != ".html"
                and not path.name.endswith(".lock")):
            files[str(rel)] = path
    return files


def _mtimes(out: Path) -> dict[str, int]:
    return {rel: path.stat().st_mtime_ns for rel, path in _results(out).items()}


def _changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {rel for rel in after if before.get(rel) != after[rel]}


def _status(out: Path, subject: str) -> dict:
    return json.loads(next(out.glob(f"sub-{subject}/log/*_status.json")).read_text())


def _pause() -> None:
    time.sleep(0.02)  # distinct modification times even on coarse clocks


@pytest.fixture(scope="module")
def resumed(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs the sequence once; each test checks one step."""
    import shutil

    root = tmp_path_factory.mktemp("resume")
    bids = root / "bids"
    shutil.copytree(demo_dataset, bids)
    out = root / "out"
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    steps: dict = {}

    _participant(bids, out, spec)
    steps["first"] = _mtimes(out)
    steps["first_logs"] = sorted(p.name for p in out.glob("sub-01/log/*") if p.is_dir())
    steps["first_status"] = _status(out, "01")

    _pause()
    _participant(bids, out, spec)
    steps["same"] = _mtimes(out)
    steps["same_logs"] = sorted(p.name for p in out.glob("sub-01/log/*") if p.is_dir())

    _pause()
    changed_spec = root / "spec_rsa.yaml"
    changed_spec.write_text(SPEC.replace("permutations: 20", "permutations: 30"))
    _participant(bids, out, changed_spec)
    steps["rsa"] = _mtimes(out)
    scratch = root / "scratch"
    _participant(bids, scratch, changed_spec)
    steps["scratch"] = scratch

    _pause()
    events = sorted((bids / "sub-01").rglob("*_events.tsv"))[0]
    os.utime(events, ns=(time.time_ns(), time.time_ns()))
    _participant(bids, out, changed_spec)
    steps["touched"] = _mtimes(out)

    deleted = next(out.glob("sub-02/**/*label-early*_relmat.tsv"))
    steps["deleted_name"] = str(deleted.relative_to(out))
    steps["deleted_text"] = deleted.read_text()
    deleted.unlink()
    _pause()
    _participant(bids, out, changed_spec)
    steps["restored"] = _mtimes(out)
    steps["restored_text"] = (out / steps["deleted_name"]).read_text()

    _pause()
    _participant(bids, out, changed_spec, "--force")
    steps["forced"] = _mtimes(out)
    steps["out"] = out
    steps["spec"] = changed_spec
    steps["bids"] = bids
    return steps


def test_stages_are_recorded(resumed: dict) -> None:
    stages = resumed["first_status"]["stages"]
    assert set(stages) == {"brain", "rsa:alexnet", "searchlight:alexnet", "report"}
    assert all(len(record["key"]) == 64 for record in stages.values())
    outputs = {rel for record in stages.values() for rel in record["outputs"]}
    assert any("relmat" in rel for rel in stages["brain"]["outputs"])
    assert all("searchlight" in rel for rel in stages["searchlight:alexnet"]["outputs"])
    assert outputs == set(resumed["first_status"]["outputs"])


def test_unchanged_rerun_rewrites_nothing(resumed: dict) -> None:
    assert _changed(resumed["first"], resumed["same"]) == set()
    assert resumed["same_logs"] == resumed["first_logs"]  # no new provenance folder: nothing computed


def test_changed_rsa_section_recomputes_only_rsa_tables(resumed: dict) -> None:
    changed = _changed(resumed["same"], resumed["rsa"])
    assert changed, "the RSA tables must be rewritten"
    assert all(("_rsa." in rel) or rel.endswith("_status.json") for rel in changed), changed
    assert {rel for rel in changed if rel.endswith(".tsv")} == {
        rel for rel in resumed["rsa"] if "_rsa.tsv" in rel and rel.startswith("sub-")}


def test_resumed_outputs_equal_a_run_from_scratch(resumed: dict) -> None:
    out, scratch = resumed["out"], resumed["scratch"]
    ours, theirs = _results(out), _results(scratch)
    ours = {k: v for k, v in ours.items() if not k.endswith("_status.json")}
    theirs = {k: v for k, v in theirs.items() if not k.endswith("_status.json")}
    assert set(ours) == set(theirs)
    different = [rel for rel in ours if ours[rel].read_bytes() != theirs[rel].read_bytes()]
    assert different == []


def test_touched_input_recomputes_that_subject_only(resumed: dict) -> None:
    changed = _changed(resumed["rsa"], resumed["touched"])
    assert any(rel.startswith("sub-01/") and "relmat" in rel for rel in changed)
    assert any(rel.startswith("sub-01/") and "searchlight" in rel for rel in changed)
    assert not any(rel.startswith("sub-02/") for rel in changed), changed


def test_deleted_output_is_recomputed(resumed: dict) -> None:
    changed = _changed(resumed["touched"], resumed["restored"])
    assert resumed["deleted_name"] in changed
    assert resumed["restored_text"] == resumed["deleted_text"]
    assert not any(rel.startswith("sub-01/") for rel in changed), changed
    assert not any("searchlight" in rel for rel in changed), changed  # only the brain stage was stale


def test_force_recomputes_everything(resumed: dict) -> None:
    changed = _changed(resumed["restored"], resumed["forced"])
    subject_files = {rel for rel in resumed["forced"] if rel.startswith("sub-")}
    assert subject_files <= changed
    assert any(rel.endswith(".h5") for rel in changed), "--force re-extracts the features"


def test_group_runs_after_a_group_only_spec_change(resumed: dict, tmp_path: Path) -> None:
    """A change of a group-level setting leaves the participant outputs current: the participant
    rerun rewrites no result file, only the status files (new spec hash), and the group level accepts them."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(resumed["spec"].read_text().replace("bootstrap: 20", "bootstrap: 25"))
    out = resumed["out"]
    before, hashes = _mtimes(out), {s: _status(out, s)["spec_hash"] for s in SUBJECTS}
    _participant(resumed["bids"], out, spec)
    assert _changed(before, _mtimes(out)) == set()
    for subject in SUBJECTS:
        status = _status(out, subject)
        assert status["complete"] and status["spec_hash"] != hashes[subject]
    assert main([str(resumed["bids"]), str(out), "group", "--spec", str(spec), "--participant-label", *SUBJECTS,
                 "--no-progress"]) == 0


def test_group_maps_are_kept_while_current(resumed: dict, tmp_path: Path) -> None:
    """A group rerun keeps the group maps whose participant maps and statistics options are
    unchanged; a changed map_permutations recomputes them."""
    out, bids = resumed["out"], resumed["bids"]

    def group(spec: Path) -> dict[str, int]:
        _participant(bids, out, spec)  # nothing to compute: records the spec hash the group checks
        assert main([str(bids), str(out), "group", "--spec", str(spec), "--participant-label", *SUBJECTS,
                     "--no-progress"]) == 0
        return {p.name: p.stat().st_mtime_ns for p in (out / "group").glob("*_statmap.nii.gz")}

    first = group(resumed["spec"])
    assert first and all("searchlight" in name for name in first)
    _pause()
    assert group(resumed["spec"]) == first
    status = json.loads(next((out / "group" / "log").glob("task-*_status.json")).read_text())
    assert {name.split(":")[0] for name in status["stages"]} == {"searchlight"}
    changed = tmp_path / "spec.yaml"
    text = resumed["spec"].read_text()
    assert "map_permutations: 30" in text
    changed.write_text(text.replace("map_permutations: 30", "map_permutations: 40"))
    _pause()
    third = group(changed)
    assert set(third) == set(first) and all(third[name] != first[name] for name in first)


# ---------------------------------------------------------------------------------------
# Reruns from another working directory, and outputs a changed spec no longer produces
# ---------------------------------------------------------------------------------------


def _run_level(level: str, bids: str | Path, out: str | Path, spec: str | Path, cwd: Path) -> None:
    """One level through ``main`` with the paths as given, from working directory ``cwd``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        assert main([str(bids), str(out), level, "--spec", str(spec), "--participant-label", *SUBJECTS,
                     "--no-progress"]) == 0


def _all_files(out: Path) -> dict[str, int]:
    """Every file under ``out`` (logs, status files and reports included) -> modification time."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def moved(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Participant + group levels run first with relative BIDS_DIR / OUT_DIR, then again from
    other working directories (relative and absolute paths), then with ``rdm.brain`` changed and
    with the searchlight switched off."""
    root = tmp_path_factory.mktemp("moved")
    first, other = root / "first", root / "other" / "deeper"
    first.mkdir()
    other.mkdir(parents=True)
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    bids_rel = os.path.relpath(demo_dataset, first)
    steps: dict = {"out": first / "out"}
    for level in ("participant", "group"):
        _run_level(level, bids_rel, "out", "../spec.yaml", first)
    steps["first"] = _all_files(first / "out")
    _pause()
    for level in ("participant", "group"):  # other relative paths to the same folders
        _run_level(level, os.path.relpath(demo_dataset, other), "../../first/out", "../../spec.yaml", other)
    steps["relative"] = _all_files(first / "out")
    _pause()
    for level in ("participant", "group"):  # absolute paths
        _run_level(level, demo_dataset, first / "out", spec, root)
    steps["absolute"] = _all_files(first / "out")

    out = first / "out"
    mine = out / "sub-01" / "func" / "sub-01_task-shapes_label-early_stat-crossnobis_desc-mine_relmat.tsv"
    mine.write_text("a file bids_dnn did not write\n")
    steps["mine"] = mine
    steps["before_change"] = _all_files(out)
    correlation = root / "spec_correlation.yaml"
    correlation.write_text(SPEC.replace("analyses:", "rdm: {brain: correlation}\nanalyses:"))
    for level in ("participant", "group"):
        _run_level(level, bids_rel, "out", correlation, first)
    steps["correlation"] = _all_files(out)
    no_searchlight = root / "spec_off.yaml"
    no_searchlight.write_text(correlation.read_text().replace(
        "searchlight: {enabled: true, radius_mm: 6, comparison: spearman}", "searchlight: {enabled: false}"))
    assert no_searchlight.read_text() != correlation.read_text()
    for level in ("participant", "group"):
        _run_level(level, bids_rel, "out", no_searchlight, first)
    steps["off"] = _all_files(out)
    steps["status"] = {s: _status(out, s) for s in SUBJECTS}
    steps["group_status"] = json.loads(next((out / "group" / "log").glob("task-*_status.json")).read_text())
    return steps


@pytest.mark.slow  # ~1 min: participant + group levels, four times
def test_rerun_from_another_directory_recomputes_nothing(moved: dict) -> None:
    """Status files record outputs relative to OUT_DIR, so neither the working directory nor
    relative vs absolute BIDS_DIR / OUT_DIR makes a rerun recompute anything."""
    first = moved["first"]
    assert any("_desc-searchlight_statmap" in rel and rel.startswith("group/") for rel in first)
    status = json.loads((moved["out"] / "sub-01" / "log" / "task-shapes_status.json").read_text())
    assert all(not rel.startswith(("out/", "/", "..")) for rel in status["outputs"])
    for rerun in ("relative", "absolute"):
        files = moved[rerun]
        # participant level: no file written (no log folder, status file or output); group level:
        # the group maps and their status are kept, the ROI tables (always recomputed) rewritten
        changed = _changed(first, files) | (set(files) - set(first))
        assert not {rel for rel in changed if not _group_roi_output(rel)}, rerun
        assert any(rel.startswith("group/") and rel.endswith("_rsa.tsv") for rel in changed)


def _group_roi_output(rel: str) -> bool:
    """A group output that every group run rewrites (ROI tables, report, provenance)."""
    return rel == "group.html" or (rel.startswith("group/") and "_statmap." not in rel
                                   and not rel.endswith("_status.json"))


@pytest.mark.slow
def test_outputs_a_changed_spec_no_longer_produces_are_removed(moved: dict) -> None:
    before, after = moved["before_change"], moved["correlation"]
    crossnobis = {rel for rel in before if "stat-crossnobis_relmat" in rel and "desc-mine" not in rel}
    assert {rel for rel in crossnobis if rel.endswith(".tsv")} and {rel for rel in crossnobis if rel.endswith(".json")}
    assert not crossnobis & set(after), "the crossnobis brain RDMs must be gone"
    correlation = {rel.replace("crossnobis", "correlation") for rel in crossnobis}
    assert correlation <= set(after)
    assert moved["mine"].read_text() == "a file bids_dnn did not write\n"  # not recorded: kept
    # results (report figures are not recorded by the stages and stay)
    searchlight = {rel for rel in after if "searchlight" in rel and "/log/" not in rel and "/figures/" not in rel}
    assert any(rel.startswith("sub-") for rel in searchlight) and any(rel.startswith("group/") for rel in searchlight)
    off = moved["off"]
    assert not searchlight & set(off), "switching the searchlight off removes its participant and group maps"
    assert str(moved["mine"].relative_to(moved["out"])) in off
    for status in moved["status"].values():
        assert "pending" not in status and not any(name.startswith("searchlight") for name in status["stages"])
        assert all((moved["out"] / rel).is_file() for rel in status["outputs"])
    assert moved["group_status"] == {"stages": {}}
