"""bids_dnn.cka re-exports every public name of its modules (on first use) and stays a library:
no spec, console, pybids, rich, h5py or adapter layers; the registry loads no torch."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import bids_dnn.cka as cka_package

FORBIDDEN = ("bids", "rich", "h5py", "bids_dnn.spec", "bids_dnn.console", "bids_dnn.io", "bids_dnn.dnn",
             "bids_dnn.features", "bids_dnn.report", "bids_dnn.workflows", "bids_dnn.cli")


def test_all_is_the_union_of_the_modules_all():
    names = []
    for module, exported in cka_package._EXPORTS.items():
        mod = importlib.import_module(f"bids_dnn.cka.{module}")
        assert tuple(mod.__all__) == exported, module
        for name in exported:
            assert getattr(cka_package, name) is getattr(mod, name), name
        names += exported
    assert cka_package.__all__ == names and len(set(names)) == len(names)
    assert not set(cka_package._EXPORTS) & set(names), "a module named like a function shadows it"


def test_public_functions_and_classes_are_documented():
    for name in cka_package.__all__:
        value = getattr(cka_package, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert (value.__doc__ or "").strip(), name


def test_registries_match_the_computing_registries():
    from bids_dnn.cka import CKA_KERNEL_NAMES, GRAM_FUNCTIONS, GRAM_PREPARATIONS, HSIC_ESTIMATOR_NAMES

    assert tuple(GRAM_FUNCTIONS) == CKA_KERNEL_NAMES
    assert tuple(GRAM_PREPARATIONS) == HSIC_ESTIMATOR_NAMES


def test_the_registry_loads_no_torch_and_the_package_no_adapters():
    code = ("import sys, bids_dnn.cka, bids_dnn.cka.registry; assert 'torch' not in sys.modules; "
            "import bids_dnn.cka.inference; "
            f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
