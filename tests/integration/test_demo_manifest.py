"""Guard for refactoring: the demo run's outputs must match a recorded manifest.

The manifest (``tests/data/demo_manifest.json``) records, for every output of the demo's participant
and group levels, what a reader gets from it: the text of TSV and JSON files with their numbers, the
datasets, shapes and attributes of HDF5 files, and for every array (NIfTI maps, HDF5 datasets)
its shape, dtype, finite count and weighted sums. A move of code that changes any number, name or
file fails here. Numbers are compared to a relative 1e-4 (absolute 1e-6), not bit for bit: the
encoding models are fitted in float32 and BLAS may round the last bit differently on another CPU
or thread count (see ``compare_outputs`` in ``test_slurm.py``).

Files whose content is volatile by design are recorded by name only: logs, provenance, command
lines, the HTML reports and figures (their pixels depend on matplotlib), status files (run ids,
timings, stage keys that include the version) and ``dataset_description.json`` (links by path).

Regenerate after an intended change of outputs with ``BIDS_DNN_UPDATE_MANIFEST=1 pytest
tests/test_demo_manifest.py`` and say why in the commit.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "demo_manifest.json"
RTOL, ATOL = 1e-4, 1e-6
RUN_DIR = re.compile(r"log/[^/]+/")
NAME_ONLY = (".html", ".png", ".svg", ".log", ".txt", "_status.json", "provenance.json", ".lock")


def _weights(n: int) -> np.ndarray:
    """Fixed positive weights (no cancellation in the weighted sum), the same on every machine."""
    return 0.5 + (np.arange(n, dtype=np.float64) * 0.6180339887498949) % 1.0


def array_summary(values: Any) -> dict[str, Any]:
    """Shape, dtype and order-sensitive sums of an array; NaNs and infinities counted, not summed."""
    arr = np.asarray(values)
    summary: dict[str, Any] = {"shape": list(arr.shape), "dtype": arr.dtype.str}
    if arr.dtype.kind in "fiub":
        flat = arr.astype(np.float64).ravel()
        finite = np.isfinite(flat)
        x = np.where(finite, flat, 0.0)
        w = _weights(flat.size)
        summary.update(n_finite=int(finite.sum()), n_nonzero=int(np.count_nonzero(x)),
                       abs_sum=float(np.abs(x).sum()), weighted_sum=float((w * x).sum()),
                       weighted_abs=float((w[::-1] * np.abs(x)).sum()),
                       max=float(x.max()) if x.size else 0.0, min=float(x.min()) if x.size else 0.0)
    else:
        summary["values"] = [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
    return summary


def _tsv(path: Path) -> dict[str, Any]:
    import pandas as pd

    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    columns = {}
    for column in table.columns:
        numbers = pd.to_numeric(table[column].replace("n/a", "nan"), errors="coerce")
        if (numbers.notna() | (table[column] == "n/a")).all() and numbers.notna().any():
            columns[column] = {"numbers": [None if np.isnan(v) else float(v) for v in numbers]}
        else:
            columns[column] = {"text": table[column].tolist()}
    return {"kind": "tsv", "columns": list(table.columns), "values": columns}


def _h5(path: Path) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {"kind": "h5", "datasets": {}}
    with h5py.File(path, "r") as handle:
        out["attrs"] = sorted(handle.attrs)
        names: list[str] = []
        handle.visit(names.append)
        for name in names:
            if isinstance(handle[name], h5py.Dataset):
                out["datasets"][name] = {**array_summary(handle[name][()]), "attrs": sorted(handle[name].attrs)}
    return out


def _nifti(path: Path) -> dict[str, Any]:
    import nibabel as nib

    img = nib.load(str(path))
    return {"kind": "nifti", "affine": np.asarray(img.affine).round(6).tolist(),
            **array_summary(np.asarray(img.dataobj))}


def describe(path: Path, relative: str) -> dict[str, Any]:
    """What the manifest records of one output file."""
    if relative == "dataset_description.json" or path.name.endswith(NAME_ONLY):
        return {"kind": "name"}
    if path.name.endswith(".tsv"):
        return _tsv(path)
    if path.name.endswith(".h5"):
        return _h5(path)
    if path.name.endswith((".nii", ".nii.gz")):
        return _nifti(path)
    if path.name.endswith(".json"):
        return {"kind": "json", "data": json.loads(path.read_text())}
    return {"kind": "name"}


def _without_paths(data: Any, places: dict[str, str]) -> Any:
    """``data`` with the absolute paths of the input and output folders replaced by placeholders."""
    if isinstance(data, dict):
        return {key: _without_paths(value, places) for key, value in data.items()}
    if isinstance(data, list):
        return [_without_paths(value, places) for value in data]
    if isinstance(data, str):
        for path, placeholder in places.items():
            data = data.replace(path, placeholder)
    return data


def manifest_of(root: Path, bids_dir: Path | None = None) -> dict[str, Any]:
    """The manifest of an output folder: relative path (run ids normalised) -> description."""
    places = {str(root): "<out>", **({str(bids_dir): "<bids>"} if bids_dir else {})}
    return {RUN_DIR.sub("log/<run>/", str(p.relative_to(root))):
            _without_paths(describe(p, str(p.relative_to(root))), places)
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_close(expected: Any, actual: Any, where: str) -> None:
    """Same structure and text; floats equal to RTOL/ATOL (None for missing numbers)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(expected) == sorted(actual), \
            f"{where}: keys {sorted(expected)} != {sorted(actual) if isinstance(actual, dict) else actual}"
        for key in expected:
            assert_close(expected[key], actual[key], f"{where}: {key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(expected) == len(actual), f"{where}: length"
        for i, (a, b) in enumerate(zip(expected, actual)):
            assert_close(a, b, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert isinstance(actual, (int, float)), f"{where}: {actual!r} is not a number"
        # sums over many voxels: the tolerance scales with the magnitude of the sum itself
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=where)
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


@pytest.mark.slow
def test_demo_outputs_match_the_manifest(demo_dataset: Path, demo_outputs: Path) -> None:
    actual = manifest_of(demo_outputs, demo_dataset)
    if os.environ.get("BIDS_DNN_UPDATE_MANIFEST") == "1":
        MANIFEST.parent.mkdir(parents=True, exist_ok=True)
        MANIFEST.write_text(json.dumps(actual, indent=0, sort_keys=True) + "\n")
        pytest.skip(f"manifest written to {MANIFEST}")
    expected = json.loads(MANIFEST.read_text())
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    assert not missing and not extra, f"outputs missing: {missing}; unexpected: {extra}"
    for relative in expected:
        assert_close(expected[relative], actual[relative], relative)


def test_manifest_comparison_catches_a_changed_number(tmp_path: Path) -> None:
    """The guard itself: a changed value, a renamed column or a new file fail the comparison."""
    (tmp_path / "a.tsv").write_text("x\ty\n1.0\tfoo\n2.5\tbar\n")
    before = manifest_of(tmp_path)
    (tmp_path / "a.tsv").write_text("x\ty\n1.0\tfoo\n2.5001\tbar\n")
    assert_close(before, manifest_of(tmp_path), "same to 1e-4")
    (tmp_path / "a.tsv").write_text("x\ty\n1.0\tfoo\n2.6\tbar\n")
    with pytest.raises(AssertionError):
        assert_close(before, manifest_of(tmp_path), "changed number")
    (tmp_path / "a.tsv").write_text("x\tz\n1.0\tfoo\n2.5\tbar\n")
    with pytest.raises(AssertionError):
        assert_close(before, manifest_of(tmp_path), "renamed column")
