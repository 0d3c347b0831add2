"""Reading a spec file, and saying what is wrong with it one line per problem.

:func:`read_spec_data` reads a YAML or JSON file into plain data (YAML with ``yaml.safe_load``:
reading a spec never executes code); :func:`validation_problems` turns a pydantic
``ValidationError`` into lines naming the field path, e.g.
``analyses.searchlight.radius_mm: must be greater than 0 (got -3)``, with a "did you mean" for
misspelled keys and values. Both are generic over the model: :mod:`bids_dnn.spec` passes its
:class:`~bids_dnn.spec.AnalysisSpec` and the fields to read as text.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bids_dnn.errors import InputMissingError, SpecError
from bids_dnn.limits import UPPER_BOUND_REASONS

__all__ = ["model_in", "read_spec_data", "validation_problems", "yaml_load"]

#: parts of pydantic's error locations that name a type tried, not a field
_TYPE_LOCATIONS = ("list[str]", "str", "list[float]")


def model_in(annotation: Any) -> Any:
    """The BaseModel class inside an annotation like ``X | None`` or ``list[X]`` (None if none)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = model_in(arg)
        if found is not None:
            return found
    return None


def _field_names_at(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names accepted at ``loc`` (the location of an unknown key) below ``root``."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = model_in(field.annotation)
    return list(model.model_fields) if model is not None else []


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith(("function-", "literal[", "union[")) or part in _TYPE_LOCATIONS:
            continue
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _format_error(root: type[BaseModel], error: dict[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    path = _format_loc(loc)
    kind = error.get("type", "")
    value = error.get("input")
    if kind == "extra_forbidden":
        options = _field_names_at(root, loc)
        close = difflib.get_close_matches(str(loc[-1]), options, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else (
            f"; valid fields: {', '.join(options)}" if options else ""
        )
        return f"{path}: unknown field{hint}"
    message = str(error.get("msg", "invalid value"))
    message = re.sub(r"^Value error, ", "", message)
    message = re.sub(r"^Input should be", "must be", message)
    message = re.sub(r"^Field required", "required field is missing", message)
    expected = re.findall(r"'([^']*)'", message)
    if kind not in ("missing", "extra_forbidden", "value_error") and not isinstance(value, (dict, list)):
        message += f" (got {value!r})"
    if kind in ("less_than_equal", "less_than") and str(loc[-1]) in UPPER_BOUND_REASONS:
        message += f": {UPPER_BOUND_REASONS[str(loc[-1])]}"
    if kind == "literal_error" and isinstance(value, str):
        close = difflib.get_close_matches(value, expected, n=1, cutoff=0.5)
        if close:
            message += f"; did you mean '{close[0]}'?"
    if path == "(top level)" and re.match(r"^[\w.\[\]]+: ", message):
        return message
    return f"{path}: {message}"


def validation_problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One readable line per problem of a pydantic ``ValidationError`` of model ``root``
    (duplicates removed, in pydantic's order)."""
    lines = [_format_error(root, e) for e in exc.errors()]
    return list(dict.fromkeys(lines))


def read_spec_data(path: Path, text_list_fields: tuple[tuple[str, ...], ...] = ()) -> Any:
    """The data of a YAML or JSON spec file (JSON by the ``.json`` suffix; an empty file is ``{}``
    in JSON and None in YAML).

    Parameters
    ----------
    path : Path
    text_list_fields : tuple of tuple of str
        Mapping-key paths of YAML lists whose plain items stay text (:func:`yaml_load`).

    Raises
    ------
    InputMissingError
        No such file (exit 66).
    SpecError
        Not UTF-8 text, or not valid YAML / JSON (exit 65).
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"spec file not found: {path}", "check the --spec path")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"(file): cannot read {path.name} as UTF-8 text ({exc.__class__.__name__})"], str(path)) from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text) if text.strip() else {}
        return yaml_load(text, text_list_fields)
    except Exception as exc:  # noqa: BLE001 - any parser error is a spec error
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SpecError([f"(file): not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first_line}"], str(path)) from None


def yaml_load(text: str, text_list_fields: tuple[tuple[str, ...], ...] = ()) -> Any:
    """``yaml.safe_load``, except that the plain scalars of the lists at ``text_list_fields``
    stay text (``[NULL, 007]`` are the names ``NULL`` and ``007``, not a null and the number 7)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        for path in text_list_fields:
            items = _yaml_child(node, path)
            if isinstance(items, yaml.SequenceNode):
                for item in items.value:
                    if isinstance(item, yaml.ScalarNode) and item.style is None:  # plain: NULL, ~, 007, yes
                        item.tag = "tag:yaml.org,2002:str"
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_child(node: Any, path: tuple[str, ...]) -> Any:
    """The node at ``path`` (mapping keys) below ``node``, or None."""
    import yaml

    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((value for name, value in node.value
                     if isinstance(name, yaml.ScalarNode) and name.value == key), None)
    return node
