"""Write ``requirements/lock.txt`` (runtime), ``lock-test.txt`` (test extras) and ``lock-build.txt``.

The pins are the versions installed in the Python environment that runs this script (the
tested one: ``source scripts/bootstrap.sh && "$BIDS_DNN_PY" requirements/update_lock.py``),
restricted to what ``bids_dnn[video,hf]`` needs at run time (its requirements and theirs,
markers evaluated for this interpreter) and, separately, to what the ``test`` extra adds.
The container image installs with ``-c requirements/lock.txt``; torch and torchvision are
pinned without a local version label, so the same lock takes PyPI's CUDA build or a CPU
build (``2.x.y+cpu``) of the same release. ``lock-build.txt`` pins the tools that build the
image's wheel of bids_dnn (pip, setuptools, wheel; not installed in the image's runtime venv,
apart from setuptools, which torch requires) and what they need.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"
#: the extras installed in the image (next to the core requirements)
RUNTIME_EXTRAS = ("video", "hf")
#: what builds the wheel of bids_dnn in the image's build stage
BUILD_TOOLS = ("pip", "setuptools", "wheel")
HEADER = """\
# {what} of bids_dnn, written by requirements/update_lock.py from the tested
# environment (Python {python}); do not edit by hand.
"""


def requirement_applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether ``requirement`` is needed here with the given extras of its parent."""
    if requirement.marker is None:
        return True
    environment = dict(default_environment())
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in (extras or {""}))


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """Installed distributions needed by ``requirements`` (recursively): canonical name -> version.

    Raises
    ------
    SystemExit
        A needed distribution is not installed in this environment.
    """
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(req, set(req.extras)) for req in requirements]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is needed but not installed in {sys.prefix}") from None
        found[name] = distribution.version
        for text in distribution.requires or []:
            child = Requirement(text)
            if requirement_applies(child, extras):
                pending.append((child, set(child.extras)))
    return found


def project_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def write_lock(path: Path, pins: dict[str, str], what: str) -> None:
    names = {canonicalize_name(d.metadata["Name"]): d.metadata["Name"] for d in metadata.distributions()}
    lines = [f"{names.get(name, name)}=={version}" for name, version in sorted(pins.items())]
    python = ".".join(map(str, sys.version_info[:2]))
    path.write_text(HEADER.format(what=what, python=python, name=path.name) + "\n".join(lines) + "\n")


def main() -> None:
    runtime = closure(project_requirements(RUNTIME_EXTRAS))
    runtime.pop("bids-dnn", None)
    with_tests = closure(project_requirements((*RUNTIME_EXTRAS, "test")))
    test_only = {name: version for name, version in with_tests.items() if name not in runtime}
    test_only.pop("bids-dnn", None)
    write_lock(HERE / "lock.txt", runtime, "Runtime dependencies (core + the video extra)")
    write_lock(HERE / "lock-test.txt", test_only, "Test-only dependencies (the test extra, beyond lock.txt)")
    tools = closure([Requirement(name) for name in BUILD_TOOLS])
    write_lock(HERE / "lock-build.txt", tools, "Build tools of the container image")
    print(f"lock.txt: {len(runtime)} pins; lock-test.txt: {len(test_only)} pins; lock-build.txt: {len(tools)} pins")


if __name__ == "__main__":
    main()
