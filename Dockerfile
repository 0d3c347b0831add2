# bids_dnn BIDS App image (README "Docker", docs/containers.md). Docker (BuildKit, Docker >= 23) or podman:
#   docker build -t bids_dnn .                                        # CPU image (~1.5 GB)
#   docker build --build-arg VARIANT=cuda -t bids_dnn:cuda .          # CUDA image (GPU nodes; runs on CPUs too)
#   docker run --rm --read-only --tmpfs /tmp --network none -u "$(id -u):$(id -g)" \
#       -v /path/to/bids:/data:ro -v /path/to/out:/out bids_dnn /data /out participant --spec /data/code/spec.yaml
# Build arguments: PYTHON_IMAGE (a Python 3 base; pinned by version and digest), VARIANT (cpu | cuda),
# TORCH_INDEX_URL (where torch comes from; "none" for PyPI and requirements/wheels/ only), MODELS (pretrained weights
# baked in; "" for none), VERSION, SOURCE, REVISION, CREATED (labels).
# pip settings of the site (a mirror, a CA bundle) come as the optional build secret "pip.conf" (a pip
# configuration file; it may name the secret "ca.crt" as its cert), never as part of an image layer.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

# ---------------------------------------------------------------------------------------------------------
# build: /opt/venv holds the dependencies pinned by requirements/lock.txt (no pip); /opt/package holds the
# non-editable install of bids_dnn, laid out as files under / (copied into the runtime stage on its own)
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_CONFIG_FILE=/run/secrets/pip.conf \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# the runtime's non-root default user (its /etc/passwd and /etc/group are copied from here)
RUN groupadd --gid 10001 bids_dnn \
 && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin bids_dnn
COPY requirements/lock.txt requirements/lock-build.txt requirements/
# the build tools live in their own venv; the runtime venv is created without pip
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/tools \
 && /opt/tools/bin/python -m pip install -r requirements/lock-build.txt \
 && python3 -m venv --without-pip /opt/venv

# The dependencies of bids_dnn[video,hf] (pyproject.toml), constrained to the locked versions. torch comes
# from TORCH_INDEX_URL (default: PyTorch's CPU wheels for VARIANT=cpu, PyPI's CUDA wheels for cuda) or
# from wheel files put into requirements/wheels/. A cpu build that would get a CUDA torch stops:
# the fallback, PyPI's CUDA wheels (they run on CPUs too, ~6 GB), is VARIANT=cuda.
ARG VARIANT=cpu
ARG TORCH_INDEX_URL=""
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=requirements/wheels,target=/src/wheels \
    case "$VARIANT" in \
      cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-none}" ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && extra_index="" \
 && if [ "$index" != none ]; then extra_index="--extra-index-url=$index"; fi \
 && /opt/tools/bin/python -c 'import tomllib; project = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(project["dependencies"] + project["optional-dependencies"]["video"] + project["optional-dependencies"]["hf"]))' \
    > /tmp/requirements.txt \
 && /opt/tools/bin/python -m pip --python /opt/venv/bin/python install --find-links /src/wheels ${extra_index:+"$extra_index"} \
    -c requirements/lock.txt -r /tmp/requirements.txt \
 && cuda="$(/opt/venv/bin/python -c 'import torch; print(torch.version.cuda or "")')" \
 && if [ "$VARIANT" = cpu ] && [ -n "$cuda" ]; then \
      echo "VARIANT=cpu, but torch came as a CUDA $cuda build (PyPI's): the CPU wheel index $index was not" \
           "reachable or lacks the locked torch. Pass --build-arg TORCH_INDEX_URL=... (a reachable CPU index)," \
           "put the CPU wheels of the locked torch and torchvision into requirements/wheels/, or build --build-arg VARIANT=cuda" \
           "(CUDA wheels, which run on CPUs too; ~6 GB instead of ~1.5 GB)." >&2; exit 1; \
    fi

COPY README.md ./
COPY bids_dnn ./bids_dnn
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt --mount=type=cache,target=/root/.cache/pip \
    /opt/tools/bin/python -m pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
 && /opt/tools/bin/python -m pip --python /opt/venv/bin/python install --no-deps --root /opt/package \
    /tmp/dist/bids_dnn-*.whl

# ---------------------------------------------------------------------------------------------------------
# weights: pretrained weights of MODELS in TORCH_HOME=/opt/torch ("" for none: random-weight specs and
# the demo need none; weights can also be mounted at run time, see the README)
# ---------------------------------------------------------------------------------------------------------
FROM build AS weights
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PATH=/opt/venv/bin:$PATH
ARG MODELS="alexnet resnet50 vgg16 vit_b_16"
# Hugging Face hub ids (source: huggingface), e.g. "bert-base-uncased facebook/wav2vec2-base", into HF_HOME=/opt/hf
ARG HF_MODELS=""
RUN --mount=type=cache,target=/root/.cache/bids_dnn-weights \
    mkdir -p /opt/torch/hub/checkpoints /opt/hf \
 && if [ -n "$(echo "$MODELS" | tr -d '[:space:]')" ]; then \
      cp -a /opt/package/. / \
      && echo "$MODELS" | TORCH_HOME=/root/.cache/bids_dnn-weights xargs bids_dnn models fetch > /tmp/fetched.txt \
      && xargs --no-run-if-empty cp --target-directory=/opt/torch/hub/checkpoints < /tmp/fetched.txt; \
    fi \
 && if [ -n "$(echo "$HF_MODELS" | tr -d '[:space:]')" ]; then \
      cp -a /opt/package/. / \
      && echo "$HF_MODELS" | HF_HOME=/opt/hf xargs bids_dnn models fetch --source huggingface > /dev/null; \
    fi

# ---------------------------------------------------------------------------------------------------------
# runtime: the base image, the venv, the weights and the package; no compilers, pip, tests or sources,
# and no RUN (so nothing that a build mounts, such as a site's wheel folders, leaves a trace)
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
ARG VERSION=0.1.0
ARG SOURCE=""
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="bids_dnn" \
      org.opencontainers.image.description="BIDS App comparing deep neural networks with fMRI (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.bids_dnn.variant="${VARIANT}"
# a non-root default user, made in the build stage (no RUN here); any other -u UID:GID works as well
COPY --from=build /etc/passwd /etc/group /etc/
COPY --from=build /opt/venv /opt/venv
COPY --from=weights /opt/torch /opt/torch
COPY --from=weights /opt/hf /opt/hf
COPY --from=build /opt/package/ /
# Offline model hubs; one thread per library unless told otherwise (-e OMP_NUM_THREADS=N ...; the SLURM
# scripts of 'bids_dnn slurm' set them to --cpus-per-task), so containers sharing a host do not oversubscribe it.
# HOME points to /tmp, so any -u UID:GID works and, with --read-only, only OUT_DIR and a --tmpfs /tmp are
# written; bids_dnn itself picks a writable per-user matplotlib cache (also under Apptainer).
ENV PATH=/opt/venv/bin:$PATH \
    BIDS_DNN_CONTAINER="bids_dnn:${VERSION}-${VARIANT}" \
    MALLOC_MMAP_THRESHOLD_=268435456 \
    MALLOC_TRIM_THRESHOLD_=536870912 \
    TORCH_HOME=/opt/torch \
    HF_HOME=/opt/hf \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["bids_dnn"]
CMD ["--help"]
