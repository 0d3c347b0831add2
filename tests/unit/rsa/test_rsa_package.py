"""bids_dnn.rsa re-exports every public name of its modules, imported on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import bids_dnn.rsa as rsa


def test_all_is_the_union_of_the_modules_all():
    names = []
    for module, exported in rsa._EXPORTS.items():
        mod = importlib.import_module(f"bids_dnn.rsa.{module}")
        assert tuple(mod.__all__) == exported, module
        for name in exported:
            assert getattr(rsa, name) is getattr(mod, name), name
        assert getattr(rsa, module) is mod
        names += exported
    assert rsa.__all__ == names and len(set(names)) == len(names)
    assert set(rsa.__all__) <= set(dir(rsa))


def test_unknown_name_is_an_attribute_error():
    try:
        rsa.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_loads_no_torch():
    code = "import sys, bids_dnn.rsa; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
