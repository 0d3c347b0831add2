"""bids_dnn.decoding re-exports every public name of its modules (on first use) and stays a
torch-free library: importing it loads no torch, spec, console, pybids, rich, h5py or adapter
layers, and running a decoder on the numpy backend loads none of them either except rich
(which himalaya, the encoding solver's backend, imports)."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import bids_dnn.decoding as decoding_package

REPO_ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = ("torch", "bids", "rich", "h5py", "bids_dnn.spec", "bids_dnn.console", "bids_dnn.io", "bids_dnn.dnn",
             "bids_dnn.features", "bids_dnn.report", "bids_dnn.workflows", "bids_dnn.cli")


def test_all_is_the_union_of_the_modules_all():
    names = []
    for module, exported in decoding_package._EXPORTS.items():
        mod = importlib.import_module(f"bids_dnn.decoding.{module}")
        assert tuple(mod.__all__) == exported, module
        for name in exported:
            assert getattr(decoding_package, name) is getattr(mod, name), name
        names += exported
    assert decoding_package.__all__ == names and len(set(names)) == len(names)
    assert not set(decoding_package._EXPORTS) & set(names), "a module named like a function shadows it"


def test_public_functions_and_classes_are_documented():
    for name in decoding_package.__all__:
        value = getattr(decoding_package, name)
        assert inspect.isfunction(value) or inspect.isclass(value), name
        assert (value.__doc__ or "").strip() and not value.__doc__.strip().startswith(f"{name}("), name


def _modules_after(program: str) -> set[str]:
    code = program + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _offenders(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return [name for name in forbidden if any(m == name or m.startswith(name + ".") for m in modules)]


def test_import_loads_no_torch_or_adapters():
    modules = _modules_after("from bids_dnn.decoding import decode_features, identification_test, "
                             "similarity_matrix, identification_ranks, DecodingResult, IdentificationResult")
    assert _offenders(modules, FORBIDDEN) == []


def test_decoding_runs_without_torch_or_adapters():
    program = """
import numpy as np
from bids_dnn.decoding import decode_features
from bids_dnn.encoding import make_folds
rng = np.random.default_rng(0)
features = rng.normal(size=(20, 8))
patterns = features @ rng.normal(size=(8, 6)) + rng.normal(size=(20, 6))
result = decode_features(patterns, features, make_folds(20, n_folds=4, seed=0), [1.0, 10.0],
                         inner_folds=3, n_permutations=20, rng=np.random.default_rng(1))
assert np.isfinite(result.pairwise_accuracy)
"""
    modules = _modules_after(program)
    assert _offenders(modules, tuple(name for name in FORBIDDEN if name != "rich")) == []
