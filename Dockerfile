# bids_dnn BIDS App image. CPU by default; `--build-arg VARIANT=cuda` installs CUDA wheels of torch.
# Build:  docker build -t bids_dnn .
# Run:    docker run --rm --network none -u $(id -u):$(id -g) -v BIDS:/data:ro -v OUT:/out bids_dnn /data /out participant
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bids_dnn ./bids_dnn
# CPU images take torch from the CPU wheel index; the cuda variant uses PyPI's default (CUDA) wheels.
RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.2" "torchvision>=0.17"; \
    fi \
 && pip install .
# Pretrained weights of the default model set, baked in (never downloaded at run time).
ENV TORCH_HOME=/opt/torch
RUN bids_dnn models fetch alexnet resnet50 vgg16 vit_b_16 \
 && chmod -R a+rX /opt/torch

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bids_dnn" \
      org.opencontainers.image.description="BIDS App comparing deep neural networks with fMRI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://pypi.org/project/bids_dnn/" \
      org.opencontainers.image.licenses="BSD-3-Clause"
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/torch /opt/torch
ENV PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1
# Works with --read-only (writes only to OUT_DIR, the work dir and /tmp) and any --user.
WORKDIR /tmp
ENTRYPOINT ["bids_dnn"]
CMD ["--help"]
