"""The public Python API: documented examples run, library imports stay light, exports are documented.

(i) Every ```python block of ``docs/python_api.md`` and of the README's "Python API" section runs in a
fresh namespace (each ends with an ``assert`` on its outcome). (ii) Importing the library packages pulls
in no pybids, rich, h5py or spec / adapter layers, and ``bids_dnn.stats`` / ``bids_dnn.encoding`` no
torch (checked in fresh interpreters). (iii) Every name in each package's ``__all__`` exists and is
documented.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
API_DOC = REPO_ROOT / "docs" / "python_api.md"
README = REPO_ROOT / "README.md"
README_SECTION = "Python API"

LIBRARY_PACKAGES = ("rsa", "searchlight", "encoding", "stats", "brain", "cka", "decoding", "probing", "timeseries",
                    "temporal")
FORBIDDEN_IN_LIBRARY = (
    "bids",  # pybids
    "rich",
    "h5py",
    "bids_dnn.spec",
    "bids_dnn.console",
    "bids_dnn.io",
    "bids_dnn.dnn",
    "bids_dnn.features",
    "bids_dnn.report",
    "bids_dnn.workflows",
    "bids_dnn.cli",
)
"""Top-level modules / packages that ``from bids_dnn import <library packages>`` must not import."""

TORCH_FREE_PACKAGES = ("bids_dnn.stats", "bids_dnn.encoding", "bids_dnn.decoding", "bids_dnn.probing",
                       "bids_dnn.timeseries")

_PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


# ---------------------------------------------------------------------------------------
# (i) documented examples
# ---------------------------------------------------------------------------------------


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a Markdown text, in order."""
    return [textwrap.dedent(body) for body in _PYTHON_BLOCK.findall(markdown)]


def markdown_section(markdown: str, title: str) -> str:
    """The text of the ``## title`` section (up to the next heading of level 1 or 2).

    Raises
    ------
    LookupError
        When there is no such section.
    """
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^#{{1,2}} |\Z)", markdown, re.DOTALL | re.MULTILINE)
    if match is None:
        raise LookupError(f"no '## {title}' section")
    return match.group(1)


def _documented_examples() -> list[tuple[str, int, str]]:
    """``(source, index, code)`` of every example block (index counted per source)."""
    examples = [("docs/python_api.md", i, code) for i, code in enumerate(python_blocks(API_DOC.read_text()))]
    readme_section = markdown_section(README.read_text(), README_SECTION)
    examples += [(f"README.md ({README_SECTION})", i, code) for i, code in enumerate(python_blocks(readme_section))]
    return examples


def test_examples_are_present():
    sources = [source for source, _, _ in _documented_examples()]
    assert sources.count("docs/python_api.md") >= 4, "docs/python_api.md should hold the four examples (a)-(d)"
    assert sources.count(f"README.md ({README_SECTION})") >= 1, "the README's Python API section has no example"


@pytest.mark.parametrize(
    "source, index, code",
    [pytest.param(*example, id=f"{example[0].split()[0]}#{example[1]}") for example in _documented_examples()],
)
def test_documented_example_runs(source: str, index: int, code: str):
    namespace: dict[str, object] = {"__name__": f"doc_example_{index}"}
    try:
        exec(compile(code, f"<{source} python block {index}>", "exec"), namespace)
    except Exception:  # noqa: BLE001 - any failure of the example is reported with its text
        pytest.fail(
            f"{source}: python block {index} failed\n{traceback.format_exc()}\n--- block {index} ---\n{code}",
            pytrace=False,
        )


def test_examples_import_from_packages_only():
    """Examples import library names from the packages, never from their module files."""
    library = {f"bids_dnn.{name}" for name in LIBRARY_PACKAGES}
    for source, index, code in _documented_examples():
        for node in ast.walk(ast.parse(code)):
            modules = [node.module] if isinstance(node, ast.ImportFrom) else (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            for module in modules:
                if module and module.startswith("bids_dnn."):
                    assert module in library, f"{source} block {index} imports {module}, not a library package"


# ---------------------------------------------------------------------------------------
# (ii) import weight, in fresh interpreters
# ---------------------------------------------------------------------------------------


def _modules_after(statement: str) -> set[str]:
    """Names in ``sys.modules`` after running ``statement`` in a fresh interpreter."""
    program = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert completed.returncode == 0, f"{statement!r} failed:\n{completed.stderr}"
    return set(json.loads(completed.stdout.strip().splitlines()[-1]))


def _offenders(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in forbidden if any(m == name or m.startswith(name + ".") for m in modules))


def test_library_imports_no_adapters_or_heavy_io():
    modules = _modules_after(f"from bids_dnn import {', '.join(LIBRARY_PACKAGES)}")
    assert _offenders(modules, FORBIDDEN_IN_LIBRARY) == []


@pytest.mark.parametrize("package", TORCH_FREE_PACKAGES)
def test_package_imports_no_torch(package: str):
    assert _offenders(_modules_after(f"import {package}"), ("torch",)) == []


# ---------------------------------------------------------------------------------------
# (iii) every exported name exists and is documented
# ---------------------------------------------------------------------------------------


def _data_is_documented(package_dir: Path, name: str) -> bool:
    """Whether a module-level constant ``name`` of a package has a docstring in its source.

    Documented means (Sphinx conventions): a string literal right after the assignment, a ``#:``
    comment on the line(s) before it or at its end, or a mention in the defining module's docstring.
    """
    for path in sorted(package_dir.glob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        lines = source.splitlines()
        for position, node in enumerate(tree.body):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
                continue
            following = tree.body[position + 1] if position + 1 < len(tree.body) else None
            if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str) and following.value.value.strip()):
                return True
            before = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
            if before.startswith("#:") or "#:" in lines[node.lineno - 1]:
                return True
            if f"``{name}``" in (ast.get_docstring(tree) or ""):
                return True
    return False


def _own_docstring(obj: object, name: str) -> str:
    """The docstring written for ``obj`` (not inherited, not a dataclass' generated signature)."""
    doc = obj.__doc__ if (inspect.isclass(obj) or inspect.isroutine(obj)) else None
    if not isinstance(doc, str) or doc.strip().startswith(f"{name}("):
        return ""
    return doc.strip()


@pytest.mark.parametrize("package", LIBRARY_PACKAGES)
def test_all_names_exist_and_are_documented(package: str):
    module = importlib.import_module(f"bids_dnn.{package}")
    assert (module.__doc__ or "").strip(), f"bids_dnn.{package} has no docstring"
    exported = list(module.__all__)
    assert exported and len(exported) == len(set(exported)), f"bids_dnn.{package}.__all__ is empty or has duplicates"
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == [], f"bids_dnn.{package}.__all__ names missing attributes: {missing}"
    package_dir = Path(module.__file__).parent
    undocumented = []
    for name in exported:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isroutine(obj):
            documented = bool(_own_docstring(obj, name))
        else:
            documented = _data_is_documented(package_dir, name)
        if not documented:
            undocumented.append(name)
    assert undocumented == [], f"bids_dnn.{package}: exported names without a docstring: {undocumented}"


def test_no_import_cycles() -> None:
    """No module of bids_dnn imports itself through others (imports inside functions count; those
    only for type checkers do not, as they never run)."""
    import grimp

    graph = grimp.build_graph("bids_dnn", cache_dir=None, exclude_type_checking_imports=True)
    cycles = [sorted(chain) for chain in _strongly_connected(graph) if len(chain) > 1]
    assert cycles == [], f"import cycles: {cycles}"


def _strongly_connected(graph) -> list[list[str]]:
    """Tarjan's strongly connected components of the module graph (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components
