"""The data centers GPUWorker knows by name. Hosts register into one of these."""

from __future__ import annotations

import msgspec


class Datacenter(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    country: str


DATACENTERS: dict[str, Datacenter] = {
    d.id: d
    for d in (
        Datacenter(id="US-TX-3", name="Dallas, Texas", country="US"),
        Datacenter(id="US-CA-2", name="San Jose, California", country="US"),
        Datacenter(id="CA-MTL-1", name="Montreal, Quebec", country="CA"),
        Datacenter(id="EU-RO-1", name="Bucharest", country="RO"),
        Datacenter(id="EU-SE-1", name="Stockholm", country="SE"),
    )
}
