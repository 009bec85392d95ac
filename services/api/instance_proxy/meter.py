"""What passes through the proxy, per instance: bytes each way (ready to bill egress by) and the
connections open now. Prometheus metrics on the api's /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

BYTES = Counter(
    "gpuworker_proxy_bytes",
    "Bytes relayed by the instance proxy (HTTP bodies and WebSocket messages)",
    ["instance", "direction"],
)
CONNECTIONS = Gauge(
    "gpuworker_proxy_open_connections",
    "Requests and WebSockets open through the instance proxy",
    ["kind"],
)
TO_INSTANCE = "to_instance"
FROM_INSTANCE = "from_instance"
# Looked up once: `labels()` takes a lock and builds a key on every call.
OPEN_HTTP = CONNECTIONS.labels(kind="http")
OPEN_WEBSOCKETS = CONNECTIONS.labels(kind="websocket")
MAX_METERS = 10_000


class InstanceMeter:
    """The counters of one instance (label lookups done once per connection, not per chunk)."""

    def __init__(self, instance_id: str) -> None:
        self._in = BYTES.labels(instance=instance_id, direction=TO_INSTANCE)
        self._out = BYTES.labels(instance=instance_id, direction=FROM_INSTANCE)

    def to_instance(self, size: int) -> None:
        if size:
            self._in.inc(size)

    def from_instance(self, size: int) -> None:
        if size:
            self._out.inc(size)


class InstanceMeters:
    """One meter per instance, kept (at most MAX_METERS, all dropped when full) so a request
    does not look its counters up again."""

    def __init__(self) -> None:
        self._meters: dict[str, InstanceMeter] = {}

    def of(self, instance_id: str) -> InstanceMeter:
        meter = self._meters.get(instance_id)
        if meter is None:
            if len(self._meters) >= MAX_METERS:
                self._meters.clear()
            meter = self._meters[instance_id] = InstanceMeter(instance_id)
        return meter
