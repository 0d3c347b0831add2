"""Command-line contract: exit codes, label normalisation, refusals, spec errors, start-up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_dnn.io.bids import expand_labels, normalize_label
from bids_dnn.cli.arguments import build_parser, parse_memory
from bids_dnn.cli.main import main
from bids_dnn.errors import UsageError


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_version_is_fast_and_imports_no_torch() -> None:
    code = ("import sys, time; t = time.time(); from bids_dnn.cli.main import main; "
            "rc = main(['--version']); rc2 = main(['spec', 'schema']); "
            "assert rc == 0 and rc2 == 0; "
            "heavy = [m for m in ('torch', 'nilearn', 'bids', 'h5py') if m in sys.modules]; "
            "print('HEAVY', heavy, time.time() - t)")
    start = time.time()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    elapsed = time.time() - start
    assert "HEAVY []" in result.stdout, result.stdout
    assert elapsed < 3.0  # interpreter start included; the CLI part itself is far below 1 s
    assert "bids_dnn 0." in result.stdout


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["--help"], capsys)
    assert code == 0
    assert "--participant-label" in text and "--spec" in text


def test_spec_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli(["spec", "schema"], capsys)
    assert code == 0


@pytest.mark.parametrize("value, expected", [("01", "01"), ("sub-01", "01"), ("sub-ABC1", "ABC1")])
def test_label_normalisation(value: str, expected: str) -> None:
    assert normalize_label(value) == expected


def test_labels_from_file_and_mixed(tmp_path: Path) -> None:
    listing = tmp_path / "subjects.txt"
    listing.write_text("sub-03\n04 05\n")
    assert expand_labels(["sub-01", "02", f"@{listing}", "01"]) == ["01", "02", "03", "04", "05"]


def test_bad_label_is_usage_error() -> None:
    with pytest.raises(UsageError, match="invalid sub label"):
        normalize_label("sub-01/../x")


def test_participant_label_aliases() -> None:
    args = build_parser().parse_args(["b", "o", "participant", "--participant_label", "01", "sub-02"])
    assert args.participant_label == ["01", "sub-02"]


@pytest.mark.parametrize("text, expected", [("8GB", 8 * 1024**3), ("512mb", 512 * 1024**2), ("1.5G", int(1.5 * 1024**3))])
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


def test_memory_without_unit_is_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, text = run_cli([tmp_path, tmp_path / "out", "participant", "--mem", "8"], capsys)
    assert code == 64 and "memory size" in text


def test_seed_beyond_32_bits_is_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, text = run_cli([tmp_path, tmp_path / "out", "participant", "--random-seed", str(10**29)], capsys)
    assert code == 64 and "must be at most 4294967295" in text


def test_unknown_level_exit_17(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, text = run_cli([tmp_path, tmp_path / "out", "subject"], capsys)
    assert code == 17 and "unknown analysis level" in text


def test_missing_arguments_exit_64(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["only_one"], capsys)
    assert code == 64 and "required" in text


def test_output_inside_bids_dir_refused(demo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BIDS_DIR itself and any place inside it but BIDS_DIR/derivatives/<new folder> are refused
    (BIDS_DIR/derivatives/bids_dnn is allowed: tests/test_run_hygiene.py)."""
    spec = demo_copy / "code" / "spec.yaml"
    cases = [(demo_copy, "inside the input dataset"), (demo_copy / "sub-01" / "x", "inside the input dataset"),
             (demo_copy / "derivatives", "inside the input dataset"),
             (demo_copy / "derivatives" / "fmriprep" / "bids_dnn", "holds the derivatives of another tool (fMRIPrep)"),
             (demo_copy / "derivatives" / "rois", "holds the derivatives of another tool (bids_dnn demo)"),
             (demo_copy / "derivatives" / "notes", "holds files that are not bids_dnn outputs")]
    (demo_copy / "derivatives" / "notes").mkdir()
    (demo_copy / "derivatives" / "notes" / "README").write_text("not an output of bids_dnn\n")
    for out, message in cases:
        before = sorted(p for p in demo_copy.rglob("*"))
        code, text = run_cli([demo_copy, out, "participant", "--spec", spec], capsys)
        assert code == 64, text
        assert message in text
        assert sorted(p for p in demo_copy.rglob("*")) == before
    code, text = run_cli([demo_copy, demo_copy.parent / "out", "participant", "--spec", spec,
                          "--bids-database-dir", demo_copy / "code" / "db"], capsys)
    assert code == 64 and "pybids database folder" in text and not (demo_copy / "code" / "db").exists()


def test_work_dir_inside_bids_dir_refused(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli([demo_dataset, tmp_path / "out", "participant", "-w", demo_dataset / "work"], capsys)
    assert code == 64 and "work folder" in text
    assert not (tmp_path / "out").exists()


def test_invalid_spec_exit_65_nothing_written(demo_dataset: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("modelz: []\nanalyses:\n  searchlight:\n    radius_mm: -3\n")
    out = tmp_path / "out"
    code, text = run_cli([demo_dataset, out, "participant", "--spec", spec], capsys)
    assert code == 65
    assert "modelz: unknown field; did you mean 'models'?" in text
    assert "analyses.searchlight.radius_mm: must be greater than 0 (got -3)" in text
    assert "Traceback" not in text
    assert not out.exists()


def test_spec_check_reports_field_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"models": [{"name": "alexnet", "batch_size": 0}], "rois": {"atlas": "a.nii.gz"}}))
    code, text = run_cli(["spec", "check", spec], capsys)
    assert code == 65 and "models[0].batch_size: must be greater than 0 (got 0)" in text


def test_spec_check_prints_resolved_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "ok.yaml"
    spec.write_text("models: [{name: alexnet, layers: top_level}]\nrois: {atlas: atlas.nii.gz}\n")
    code, text = run_cli(["spec", "check", spec], capsys)
    assert code == 0
    assert "valid" in text and "permutations: 10000" in text and "comparison: spearman" in text


def test_missing_spec_file_exit_66(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli([demo_dataset, tmp_path / "out", "participant", "--spec", tmp_path / "nope.yaml"], capsys)
    assert code == 66 and "spec file not found" in text


def test_no_spec_is_a_spec_error_not_a_traceback(demo_dataset: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Without --spec the defaults are validated like a file: they ask for ROIs (exit 65)."""
    code = main([str(demo_dataset), str(tmp_path / "out"), "participant", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 65
    assert "the built-in defaults (no --spec given)" in err and "rois: required for analyses.rsa" in err
    assert "ValidationError" not in err and not (tmp_path / "out").exists()


def test_not_bids_exit_16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bids").mkdir()
    spec = tmp_path / "s.yaml"
    spec.write_text("rois: {atlas: a.nii.gz}\n")
    code, text = run_cli([tmp_path / "bids", tmp_path / "out", "participant", "--spec", spec], capsys)
    assert code == 16 and "dataset_description.json" in text


def test_unknown_participant_exit_18(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli([demo_dataset, tmp_path / "out", "participant", "--participant-label", "sub-99",
                          "--spec", demo_dataset / "code" / "spec.yaml"], capsys)
    assert code == 18 and "sub-99" in text and "available: sub-01" in text


def test_unknown_task_exit_18(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli([demo_dataset, tmp_path / "out", "participant", "--task", "rest",
                          "--spec", demo_dataset / "code" / "spec.yaml"], capsys)
    assert code == 18 and "task 'rest'" in text


def test_output_of_another_tool_refused(demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "x", "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    code, text = run_cli([demo_dataset, out, "participant", "--spec", demo_dataset / "code" / "spec.yaml"], capsys)
    assert code == 64 and "another tool" in text


def test_group_before_participants_exit_66(demo_dataset: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli([demo_dataset, tmp_path / "out", "group", "--spec", demo_dataset / "code" / "spec.yaml"], capsys)
    assert code == 66 and "missing or incomplete for sub-01" in text
