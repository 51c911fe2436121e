# A stand-in for the official `redis:7` image, for machines with no container
# registry: Debian 12's redis-server (7.0) on a debootstrap base (built by
# docker/smoke.sh). Same interface as far as compose.yaml uses it: the
# `redis-server ARGS` command, `redis-cli` for the healthcheck, data in /data,
# and, as the official entrypoint does, `--protected-mode no` unless given.
ARG DEBIAN_IMAGE=assay-local/debian:bookworm
FROM ${DEBIAN_IMAGE}

ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Debian stable's current packages, not pinned: a point release replaces the old
# versions in the archive, so pins would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o redis -g redis /data

COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh

VOLUME /data
WORKDIR /data
# The package's system user (its uid is whatever Debian assigned).
# hadolint ignore=DL3066
USER redis
EXPOSE 6379

ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server"]
