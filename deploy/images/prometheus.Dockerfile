# Prometheus from Debian's package, on the debootstrap base (deploy/build-images): compose.yaml's
# prom/prometheus, for machines without a registry. Same entrypoint, so compose's command works.
ARG BASE=local/debian-python:bookworm
FROM ${BASE}
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && install -d -o prometheus -g prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
