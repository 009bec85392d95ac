# PostgreSQL from Debian's package, on the debootstrap base (deploy/build-images). It takes the
# same environment as the public postgres image: POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD.
ARG BASE=local/debian-python:bookworm
FROM ${BASE}
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY postgres-entrypoint /usr/local/bin/postgres-entrypoint
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
