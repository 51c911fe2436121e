# A stand-in for the official `python:3.11-slim-bookworm` image, for machines
# with no container registry: Debian 12's own Python 3.11 on a Debian 12 base
# made with debootstrap (docker/smoke.sh builds both). Same `python` command,
# same Debian release, so the Assay images build on it unchanged:
#   --build-arg PYTHON_IMAGE=assay-local/python:3.11-bookworm
ARG DEBIAN_IMAGE=assay-local/debian:bookworm
FROM ${DEBIAN_IMAGE}

ENV LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# python3-venv brings ensurepip (pip inside each venv); python-is-python3: `python`.
# Debian stable's current packages, not pinned: a point release replaces the old
# versions in the archive, so pins would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3 python3-venv python-is-python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && python --version

CMD ["python"]
