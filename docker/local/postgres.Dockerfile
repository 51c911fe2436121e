# A stand-in for the official `postgres` image, for machines with no container
# registry: Debian 12's PostgreSQL 15 on a debootstrap base (built by
# docker/smoke.sh). Same interface as far as compose.yaml uses it:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB create the cluster, role and
# database on first start, data in /var/lib/postgresql/data, `pg_isready` for
# the healthcheck. Runs as the `postgres` user.
ARG DEBIAN_IMAGE=assay-local/debian:bookworm
FROM ${DEBIAN_IMAGE}

ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8

# Debian stable's current packages, not pinned: a point release replaces the old
# versions in the archive, so pins would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 2775 /var/run/postgresql

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh

VOLUME /var/lib/postgresql/data
# The package's system user (its uid is whatever Debian assigned).
# hadolint ignore=DL3066
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT

ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
