"""Lazy re-exports of a package's public names (PEP 562), for packages whose modules are heavy."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` of a package that imports a name's module on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : mapping
        Module name (within the package) -> the public names it defines (its ``__all__``).

    Returns
    -------
    all_names, getattr_, dir_
        Assign them to ``__all__``, ``__getattr__`` and ``__dir__`` in the package's ``__init__``.
    """
    module_of = {name: module for module, names in exports.items() for name in names}
    all_names = list(module_of)
    namespace = importlib.import_module(package).__dict__

    def getattr_(name: str) -> Any:
        if name in exports:
            return importlib.import_module(f"{package}.{name}")
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(all_names))

    return all_names, getattr_, dir_
