"""bids_dnn.stats re-exports every public name of its modules and never imports torch or
bids_dnn.rsa."""

from __future__ import annotations

import importlib
import subprocess
import sys

import bids_dnn.stats as stats


def test_all_is_the_union_of_the_modules_all():
    names = []
    for module, exported in stats._EXPORTS.items():
        mod = importlib.import_module(f"bids_dnn.stats.{module}")
        assert tuple(mod.__all__) == exported, module
        for name in exported:
            assert getattr(stats, name) is getattr(mod, name), name
        names += exported
    assert stats.__all__ == names and len(set(names)) == len(names)


def test_stats_imports_neither_torch_nor_rsa():
    modules = ", ".join(f"bids_dnn.stats.{m}" for m in stats._EXPORTS)
    code = (f"import sys, bids_dnn.stats, {modules}; from bids_dnn.stats import *; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('bids_dnn.rsa')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
