"""What travels on a host's work subjects (services/processes/host_work_router.py → the agent's
services/agent/host_work_feed.py)."""

from __future__ import annotations

import msgspec


class WorkItem(msgspec.Struct, frozen=True, kw_only=True):
    # The event stream's sequence this state is known at: an older one never replaces it.
    sequence: int
    # The aggregate's state as its decider folds it (an endpoint's: its workers on this host).
    state: msgspec.Raw
    # Secrets the host needs in clear, each sealed with the host's key (host_keys.py) and bound
    # to `secret_bound_to(host, name)`: a registry credential, a worker's token.
    sealed: dict[str, str] = {}


class SealedRegistryAuth(msgspec.Struct, frozen=True, kw_only=True):
    owner_id: str
    username: str
    password: str


def registry_secret(auth_id: str) -> str:
    return f"registry:{auth_id}"


def token_secret(worker_id: str) -> str:
    return f"token:{worker_id}"


def secret_bound_to(host_id: str, name: str) -> str:
    """AES-GCM associated data: a sealed secret copied to another host or name does not open."""
    return f"host-work:{host_id}:{name}"
