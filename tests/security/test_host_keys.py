"""Per-host keys (services/security/host_keys.py): a host's key opens what was sealed for it, a
fleet's key derives its hosts' keys, and no key opens another host's secrets."""

from __future__ import annotations

import pytest

from services.security.host_keys import HostKeys, host_key, sealed_box
from services.security.secret_box import SecretBoxError, generate_key


def test_a_host_opens_only_what_was_sealed_for_it() -> None:
    master = generate_key()
    sealed = sealed_box(master, "gpu-1").seal("hunter2", "host-work:gpu-1:registry:a")
    mine = HostKeys("gpu-1", host_key(master, "gpu-1"))
    assert mine.box("gpu-1").open(sealed, "host-work:gpu-1:registry:a") == "hunter2"
    # Another host's key, or the master key itself used as one, opens nothing.
    for host_id, key in (("gpu-2", host_key(master, "gpu-2")), ("gpu-1", master)):
        with pytest.raises(SecretBoxError):
            HostKeys(host_id, key).box(host_id).open(sealed, "host-work:gpu-1:registry:a")
    with pytest.raises(ValueError, match="not 'gpu-1' nor under it"):
        mine.box("gpu-2")
    # Keys differ per host and per master key.
    assert host_key(master, "gpu-1") != host_key(master, "gpu-2")
    assert host_key(master, "gpu-1") != host_key(generate_key(), "gpu-1")


def test_a_fleet_key_derives_its_hosts_keys_and_no_other() -> None:
    master = generate_key()
    fleet = HostKeys("sim", host_key(master, "sim"))
    sealed = sealed_box(master, "sim.0007").seal("token", "n")
    assert fleet.box("sim.0007").open(sealed, "n") == "token"
    with pytest.raises(SecretBoxError):  # the fleet's own key is not its host's
        fleet.box("sim").open(sealed, "n")
    for outside in ("simx", "other.0007"):
        with pytest.raises(ValueError):
            fleet.box(outside)
    # A host of the fleet cannot climb back to the fleet's key or to a sibling's.
    one = HostKeys("sim.0007", host_key(master, "sim.0007"))
    with pytest.raises(ValueError):
        one.box("sim.0008")
