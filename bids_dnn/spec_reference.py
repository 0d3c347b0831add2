"""The Markdown reference of every spec field (``docs/spec.md`` is generated from it).

Regenerate after changing :mod:`bids_dnn.spec` (a test checks that the file is current)::

    python -c "from bids_dnn.spec_reference import spec_reference_markdown as f; open('docs/spec.md','w').write(f())"
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args, get_origin

from bids_dnn.spec import AnalysisSpec
from bids_dnn.spec_io import model_in

__all__ = ["spec_reference_markdown"]


def _type_text(annotation: Any) -> str:
    """A field's type as the reference shows it (``'a' / 'b'`` for the values of a Literal)."""
    if get_origin(annotation) is Literal:
        return " / ".join(repr(a) for a in get_args(annotation))
    text = getattr(annotation, "__name__", None) if get_origin(annotation) is None else None
    text = text or str(annotation)
    return re.sub(r"(typing\.|bids_dnn\.spec\.)", "", text).replace("|", "or")


def spec_reference_markdown() -> str:
    """A Markdown reference of every spec field (``docs/spec.md`` is generated from this)."""
    lines = ["# Analysis spec reference", "",
             "Generated from `bids_dnn/spec.py` (`bids_dnn spec schema` prints the JSON schema).",
             "Every field is optional unless marked required.", ""]

    def walk(model: Any, prefix: str) -> None:
        rows = []
        nested = []
        for name, info in model.model_fields.items():
            path = f"{prefix}{name}"
            inner = model_in(info.annotation)
            default = "required" if info.is_required() else (
                "(list of models)" if info.default_factory is not None and name == "models" else
                repr(info.get_default(call_default_factory=True)) if inner is None else "see below")
            kind = _type_text(info.annotation)
            rows.append(f"| `{path}` | {kind} | {default} | {(info.description or '').replace('|', '/')} |")
            if inner is not None:
                nested.append((inner, f"{path}{'[]' if name == 'models' else ''}."))
        lines.extend([f"## `{prefix.rstrip('.') or 'top level'}`", "", "| field | type | default | meaning |",
                      "|---|---|---|---|", *rows, ""])
        for inner, sub in nested:
            walk(inner, sub)

    walk(AnalysisSpec, "")
    return "\n".join(lines)
