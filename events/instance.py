"""Facts about GPU instances: what customers asked for, and what hosts saw happen."""

from datetime import datetime
from typing import Any

import msgspec

from events.catalog import registrar
from events.container import ContainerChanges, ContainerConfig, nest_container
from ledger.rate_card import first_resources

register = registrar("instance")

# What an instance of a GPU type the rate card never listed gets, per GPU (the agent's memory
# limit before the card listed RAM; one vCPU).
LEGACY_VCPU_PER_GPU = 1
LEGACY_RAM_GB_PER_GPU = 2


def upcast_instance_created_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 records the vCPUs and RAM rented with the GPUs; v1 instances get those of the first rate
    card version that listed them for their GPU type."""
    resources = first_resources(payload["gpu_type_id"])
    vcpu = resources.vcpu_per_gpu if resources else LEGACY_VCPU_PER_GPU
    ram = resources.ram_gb_per_gpu if resources else LEGACY_RAM_GB_PER_GPU
    count = int(payload["gpu_count"])
    return {**payload, "vcpu_count": vcpu * count, "memory_in_gb": ram * count}


def upcast_instance_created_v2_v3(payload: dict[str, Any]) -> dict[str, Any]:
    """v3 holds the container spec as one `ContainerConfig`."""
    return nest_container(payload)


def upcast_with_no_ssh_keys(payload: dict[str, Any]) -> dict[str, Any]:
    """Instances created (or started) before accounts had SSH keys got none."""
    return {**payload, "ssh_public_keys": []}


@register(
    version=4,
    upcasters={
        1: upcast_instance_created_v1_v2,
        2: upcast_instance_created_v2_v3,
        3: upcast_with_no_ssh_keys,
    },
)
class InstanceCreated(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    gpu_type_id: str
    gpu_count: int
    cloud_type: str
    datacenter_id: str
    host_id: str
    gpu_uuids: list[str]
    lease_id: str
    template_id: str
    container: ContainerConfig
    network_volume_id: str | None
    # Per GPU, micro-USD per hour, from the rate card version in force at creation.
    price_per_hour_micros: int
    rate_card_version: str
    # For the whole instance (per GPU from the rate card version in force, times gpu_count): the
    # container's CPU and memory limits.
    vcpu_count: int
    memory_in_gb: int
    # The owner's SSH public keys (OpenSSH lines) when it was created: its container gets them as
    # PUBLIC_KEY (and in root's authorized_keys when the image has sshd). Public data, recorded
    # so the agent needs no user events (which hold password hashes) to know them.
    ssh_public_keys: list[str] = []


@register(version=2, upcasters={1: upcast_with_no_ssh_keys})
class InstanceStartRequested(msgspec.Struct, frozen=True, kw_only=True):
    gpu_uuids: list[str]
    lease_id: str
    # The owner's SSH public keys at this start (a change since the last one makes the host
    # recreate the container, on the same disk, so the new keys are in its environment).
    ssh_public_keys: list[str] = []


@register()
class InstanceStopRequested(msgspec.Struct, frozen=True, kw_only=True):
    # Why, when not the customer's own request (e.g. billing: the balance is used up).
    reason: str | None = None


@register()
class InstanceRestartRequested(msgspec.Struct, frozen=True):
    pass


@register()
class InstanceTerminateRequested(msgspec.Struct, frozen=True):
    pass


@register()
class InstanceRenamed(msgspec.Struct, frozen=True):
    name: str


def upcast_instance_reconfigured_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 holds the container fields that changed as one `ContainerChanges`."""
    return {"container": {}, **nest_container(payload)}


@register(version=2, upcasters={1: upcast_instance_reconfigured_v1_v2})
class InstanceReconfigured(msgspec.Struct, frozen=True, kw_only=True):
    """Image, command, env, ports or disk sizes changed: the host recreates the container."""

    container: ContainerChanges


# What the host saw. `occurred_at` of the envelope is the host's clock at the moment it happened.


@register()
class InstanceProvisioning(msgspec.Struct, frozen=True):
    pass


@register()
class InstanceRunning(msgspec.Struct, frozen=True):
    pass


class PublishedPort(msgspec.Struct, frozen=True, kw_only=True):
    """One declared port of the instance's container as its host published it."""

    # As declared: "8888/http", "22/tcp".
    port: str
    # The host address it is published on: a tcp/udp port on the host's public side, an http
    # port on the address the api's proxy reaches (never the public one: the proxy checks who
    # asks, a public port would not).
    host_ip: str
    host_port: int


@register()
class InstancePortsPublished(msgspec.Struct, frozen=True, kw_only=True):
    """Where the host published the declared ports of the container it runs now (reported with
    "running", and again whenever a new container got other host ports). A fact of its own, not
    a field of InstanceRunning, which the ledger reads as the start of a billed session."""

    # What customers connect to for the tcp/udp ports (None: the host advertises none).
    public_ip: str | None
    ports: list[PublishedPort]


# The four below end a GPU lease: `lease_id` names it, so the host's allocation can be released
# exactly once and never a newer one.


@register()
class InstanceExited(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int | None
    reason: str
    lease_id: str | None = None


@register()
class InstanceFailed(msgspec.Struct, frozen=True, kw_only=True):
    reason: str
    lease_id: str | None = None


@register()
class InstanceStopped(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str | None = None


@register()
class InstanceTerminated(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str | None = None


@register()
class InstanceHostLost(msgspec.Struct, frozen=True):
    """The instance's host stopped heartbeating: its state is unknown until the host returns."""

    since: datetime
