# bids_dnn BIDS App image. CPU by default; `--build-arg VARIANT=cuda` installs PyPI's CUDA wheels of torch.
#   docker build -t bids_dnn .
#   docker build --build-arg VARIANT=cuda -t bids_dnn:cuda .
#   docker run --rm --read-only --tmpfs /tmp --network none -u "$(id -u):$(id -g)" \
#       -v /path/to/bids:/data:ro -v /path/to/out:/out bids_dnn /data /out participant --spec /data/code/spec.yaml
# The base image is pinned by version and digest (docker-library/repo-info); override with --build-arg PYTHON_IMAGE=...
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
# The default model set whose pretrained weights are baked into the image.
ARG MODELS="alexnet resnet50 vgg16 vit_b_16"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BIDS_DNN_VENV=/opt/venv \
    TORCH_HOME=/opt/torch
WORKDIR /opt/bids_dnn
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY bids_dnn ./bids_dnn
# The install command of the README and CI: scripts/bootstrap.sh (a venv, here /opt/venv, and pip install of
# this checkout). CPU images add PyTorch's CPU wheel index (pip prefers its +cpu builds of torch/torchvision);
# the cuda variant takes PyPI's default (CUDA) wheels, which bring the CUDA libraries; only the driver comes
# from the host.
RUN if [ "$VARIANT" = "cpu" ]; then export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu; \
    elif [ "$VARIANT" != "cuda" ]; then echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1; fi \
 && bash scripts/bootstrap.sh \
 && /opt/venv/bin/bids_dnn --version
# Pretrained weights, fetched once here into TORCH_HOME (outside $HOME); never downloaded at run time.
RUN echo "$MODELS" | xargs /opt/venv/bin/bids_dnn models fetch \
 && chmod -R a+rX /opt/venv /opt/bids_dnn /opt/torch

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
ARG VERSION=0.1.0
ARG SOURCE=https://pypi.org/project/bids_dnn/
LABEL org.opencontainers.image.title="bids_dnn" \
      org.opencontainers.image.description="BIDS App comparing deep neural networks with fMRI (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.bids_dnn.variant="${VARIANT}"
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/bids_dnn /opt/bids_dnn
COPY --from=build /opt/torch /opt/torch
# Offline model hubs; one thread per library unless told otherwise (-e OMP_NUM_THREADS=N ...; the SLURM
# scripts of 'bids_dnn slurm' set them to --cpus-per-task), so containers sharing a host do not oversubscribe it.
# HOME and caches point to /tmp, so any -u UID:GID works and, with --read-only, only OUT_DIR and a
# --tmpfs /tmp are written.
ENV PATH=/opt/venv/bin:$PATH \
    BIDS_DNN_CONTAINER="bids_dnn:${VERSION}-${VARIANT}" \
    MALLOC_MMAP_THRESHOLD_=268435456 \
    MALLOC_TRIM_THRESHOLD_=536870912 \
    TORCH_HOME=/opt/torch \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
ENTRYPOINT ["bids_dnn"]
CMD ["--help"]
