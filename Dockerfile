# One image for every GPUWorker role; compose.yaml picks the role with `command:`.
#   docker build -t gpuworker:latest .
#   docker run --rm gpuworker:latest gpuworker --help

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (no .venv, .git or test data in the image).
COPY pyproject.toml README.md ./
COPY services ./services
COPY events ./events
COPY projections ./projections
COPY ledger ./ledger
RUN python -m venv /opt/gpuworker \
    && /opt/gpuworker/bin/pip install --upgrade pip \
    && /opt/gpuworker/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/gpuworker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 gpuworker \
    && useradd --system --uid 10001 --gid gpuworker --home-dir /home/gpuworker \
       --create-home --shell /usr/sbin/nologin gpuworker
COPY --from=build /opt/gpuworker /opt/gpuworker
USER gpuworker:gpuworker
WORKDIR /home/gpuworker
EXPOSE 8080
# Exec form: the role is PID 1 and gets SIGTERM itself (every role shuts down cleanly on it).
CMD ["gpuworker", "api", "--host", "0.0.0.0", "--port", "8080"]
