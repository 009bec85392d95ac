"""Per-host keys: what a GPU host's agent holds instead of GPUWORKER_SECRET_KEY.

The deciders seal what a host needs in clear (a registry password for a pull, a serverless
worker's token) with that host's key, and only that host's agent opens it; a compromised host
opens nothing sealed for another. A host's key is derived (HKDF-SHA256) from the master key, one
step per dot-separated part of its id, so the key of `sim` derives the keys of `sim.0000`,
`sim.0001`, … (one simulated process standing for a fleet) and no other. `gpuworker host-key
<host-id>` prints it for an operator to hand to the host."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from events.subjects import check_host_id
from services.security.secret_box import SecretBox, decode_key

_ROOT_INFO = b"gpuworker host key v1"


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _below(key: bytes, parts: list[str]) -> bytes:
    for part in parts:
        key = _derive(key, b"host:" + part.encode())
    return key


def host_key(master_key_b64: str, host_id: str) -> str:
    """The key of `host_id`, from GPUWORKER_SECRET_KEY."""
    parts = check_host_id(host_id).split(".")
    root = _derive(decode_key(master_key_b64), _ROOT_INFO)
    return base64.urlsafe_b64encode(_below(root, parts)).decode()


class HostKeys:
    """An agent's boxes: its own host's, and those of the hosts under it (a simulated fleet)."""

    def __init__(self, host_id: str, key_b64: str) -> None:
        self._host_id = check_host_id(host_id)
        self._key = decode_key(key_b64)
        self._boxes: dict[str, SecretBox] = {}

    def box(self, host_id: str) -> SecretBox:
        """Raises ValueError for a host that is neither this one nor under it."""
        box = self._boxes.get(host_id)
        if box is not None:
            return box
        if host_id == self._host_id:
            key = self._key
        elif host_id.startswith(self._host_id + "."):
            key = _below(self._key, check_host_id(host_id)[len(self._host_id) + 1 :].split("."))
        else:
            raise ValueError(f"host {host_id!r} is not {self._host_id!r} nor under it")
        box = self._boxes[host_id] = SecretBox(base64.urlsafe_b64encode(key).decode())
        return box


def sealed_box(master_key_b64: str, host_id: str) -> SecretBox:
    """The box the deciders seal a host's secrets in."""
    return SecretBox(host_key(master_key_b64, host_id))
