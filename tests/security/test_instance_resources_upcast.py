"""InstanceCreated v1 (before the rate card listed vCPU and RAM) reads back as v2 with the figures
of the first rate card version that listed them for its GPU type, so an instance created before
the change is contained like every other once its container is made again."""

from __future__ import annotations

import json

import pytest

from events.catalog import decode_event, version_of
from events.instance import LEGACY_RAM_GB_PER_GPU, LEGACY_VCPU_PER_GPU, InstanceCreated
from services.agent.host_agent import container_spec
from services.deciders.instance import INSTANCE


def _v1(gpu_type_id: str, gpu_count: int) -> bytes:
    stamp = "2026-11-02T10:00:00Z"
    return json.dumps(
        {
            "id": "0190f1e2-4444-7000-8000-000000000002",
            "type": "InstanceCreated",
            "version": 1,
            "aggregate": {"type": "instance", "id": "inst-v1"},
            "occurred_at": stamp,
            "recorded_at": stamp,
            "actor": "user-1",
            "correlation_id": "corr-1",
            "data": {
                "name": "old",
                "gpu_type_id": gpu_type_id,
                "gpu_count": gpu_count,
                "cloud_type": "SECURE",
                "datacenter_id": "US-TX-3",
                "host_id": "h-1",
                "gpu_uuids": [f"GPU-{i}" for i in range(gpu_count)],
                "lease_id": "lease-1",
                "template_id": "busybox-smoke",
                "image_name": "local/busybox:latest",
                "docker_start_cmd": None,
                "env": {},
                "ports": [],
                "container_disk_in_gb": 20,
                "volume_in_gb": 0,
                "volume_mount_path": "/workspace",
                "network_volume_id": None,
                "price_per_hour_micros": 690_000,
                "rate_card_version": "2026-11-01",
            },
        }
    ).encode()


@pytest.mark.parametrize(
    ("gpu_type_id", "count", "vcpus", "ram_gb"),
    [
        ("NVIDIA GeForce RTX 4090", 2, 32, 124),
        ("NVIDIA A100 80GB PCIe", 1, 8, 117),
        # A type the card never listed keeps what instances had before.
        ("Some Retired GPU", 3, 3 * LEGACY_VCPU_PER_GPU, 3 * LEGACY_RAM_GB_PER_GPU),
    ],
)
def test_instance_created_v1_is_upcast_with_the_rate_cards_resources(
    gpu_type_id: str, count: int, vcpus: int, ram_gb: int
) -> None:
    envelope = decode_event(_v1(gpu_type_id, count))
    assert isinstance(envelope.data, InstanceCreated)
    # Lifted to the current version (v4 added SSH keys: none for these).
    assert envelope.version == version_of(envelope.data) == 4
    assert envelope.data.ssh_public_keys == []
    assert (envelope.data.vcpu_count, envelope.data.memory_in_gb) == (vcpus, ram_gb)
    assert envelope.data.rate_card_version == "2026-11-01", "the price version is untouched"
    state = INSTANCE.evolve(None, envelope)
    spec = container_spec(state, real_gpus=False)
    assert spec.vcpus == vcpus
    assert spec.memory_mb == ram_gb * 1024
    assert spec.owner_id == "user-1"
