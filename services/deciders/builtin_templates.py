"""Public templates every user sees, with readable ids. Seeded as events by the deciders role."""

from __future__ import annotations

from datetime import UTC, datetime

from events.container import ContainerConfig
from services.deciders.template import CreateTemplate

SEED_ACTOR = "system:deciders"


def builtin_templates() -> dict[str, CreateTemplate]:
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def public(name: str, readme: str, container: ContainerConfig) -> CreateTemplate:
        return CreateTemplate(
            actor=SEED_ACTOR, at=at, is_public=True, name=name, readme=readme, container=container
        )

    return {
        "pytorch-cuda12-2.1": public(
            name="PyTorch 2.1 (CUDA 12.1)",
            container=ContainerConfig(
                image_name="nvcr.io/nvidia/pytorch:2.1.0-py3.10-cuda12.1",
                docker_start_cmd="bash -c 'jupyter lab --ip=0.0.0.0 --allow-root'",
                container_disk_in_gb=20,
                volume_in_gb=50,
                ports=["8888/http", "22/tcp"],
            ),
            readme="PyTorch 2.1 with CUDA 12.1 and JupyterLab on port 8888.",
        ),
        "cuda-12.4-ubuntu22.04": public(
            name="CUDA 12.4 runtime (Ubuntu 22.04)",
            container=ContainerConfig(
                image_name="nvidia/cuda:12.4.1-runtime-ubuntu22.04",
                docker_start_cmd="sleep infinity",
                container_disk_in_gb=10,
                ports=["22/tcp"],
            ),
            readme="A bare CUDA runtime to build on.",
        ),
        "vllm-openai-0.6": public(
            name="vLLM OpenAI-compatible server 0.6",
            container=ContainerConfig(
                image_name="vllm/vllm-openai:v0.6.3",
                container_disk_in_gb=40,
                volume_in_gb=100,
                ports=["8000/http"],
                env={"MODEL": "facebook/opt-125m"},
            ),
            readme="Serves MODEL with an OpenAI-compatible API on port 8000.",
        ),
        "busybox-smoke": public(
            name="Busybox smoke test",
            container=ContainerConfig(
                image_name="local/busybox:latest",
                docker_start_cmd="sh -c 'echo ready; sleep 3600'",
                container_disk_in_gb=1,
            ),
            readme="A tiny image for checking a host end to end without pulling anything.",
        ),
    }
