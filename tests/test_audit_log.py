"""The audit log on real NATS and PostgreSQL: every event once, however often the audit role is
stopped, crashes after a commit or runs twice; who owns what each row is about; append-only in the
database; never a secret; and the audit role's NATS user can read the stream and do nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool

from events.catalog import version_of
from events.container import ContainerConfig
from events.endpoint import WorkerStarted
from events.envelope import AggregateRef, Envelope
from events.host import GpusAllocated, HostGpu, HostRegistered
from events.ids import new_id
from events.instance import InstanceRunning, InstanceStopped, InstanceStopRequested
from events.registry_auth import RegistryAuthCreated
from events.store import JetStreamEventStore
from events.template import TemplateCreated
from events.user import CreditGranted, UserSignedUp
from events.volume import VolumeCreated
from projections import checkpoints, runner
from projections.audit import CHECKPOINT, AuditProjection
from projections.runner import ProjectionRunner
from services.cli.embedded import EmbeddedNats
from services.nats_permissions import AUDIT_USER
from services.security.secret_box import SecretBox, generate_key
from tests.security.test_nats_permissions import (
    Listener,
    bus,  # noqa: F401  (fixture)
    login,
    publish_is_refused,
    subscribe_is_refused,
)
from tests.servers import connect_as
from tests.test_ledger_tracking import created

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
REGISTRY_PASSWORD = "dckr_pat_registry-password-never-logged"
ENV_VALUE = "hf_env-value-never-logged"
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$never-logged"


@pytest.fixture
async def audit_nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await connect_as(nats_server, AUDIT_USER)
    yield client
    await client.close()


@dataclass
class Workload:
    """Events appended as the deciders would (the real store), and what each should log as."""

    store: JetStreamEventStore
    last: dict[AggregateRef, int] = field(default_factory=dict)
    # sequence -> (actor, action, resource type, resource id, owner, source)
    expected: dict[int, tuple[str, str, str, str, str | None, str | None]] = field(
        default_factory=dict
    )
    secrets: list[str] = field(default_factory=list)

    async def emit(
        self,
        kind: str,
        aggregate_id: str,
        data: msgspec.Struct,
        actor: str,
        owner: str | None,
        source: str | None = None,
    ) -> int:
        ref = AggregateRef(kind, aggregate_id)
        at = T0 + timedelta(seconds=len(self.expected))
        event = Envelope(
            id=new_id(),
            type=type(data).__name__,
            version=version_of(data),
            aggregate=ref,
            occurred_at=at,
            recorded_at=at,
            actor=actor,
            correlation_id=f"req-{len(self.expected)}",
            data=data,
            source=source,
        )
        sequence = await self.store.append(ref, [event], self.last.get(ref, 0))
        self.last[ref] = sequence
        self.expected[sequence] = (actor, event.type, kind, aggregate_id, owner, source)
        return sequence


async def customer_activity(w: Workload, user: str) -> None:
    """A customer's day: signup, credentials, a template, an instance the system runs and stops."""
    box = SecretBox(generate_key())
    here = "127.0.0.1"
    await w.emit(
        "user", user, UserSignedUp("a@example.com", "Ada", PASSWORD_HASH), user, user, here
    )
    await w.emit(
        "user",
        user,
        CreditGranted(amount_micros=5_000_000, source="signup", reason="welcome"),
        "system:cli",
        user,
    )
    auth, template, instance = new_id(), new_id(), new_id()
    ciphertext = box.seal(REGISTRY_PASSWORD, auth)
    w.secrets += [REGISTRY_PASSWORD, ciphertext, ENV_VALUE, PASSWORD_HASH]
    await w.emit(
        "registry_auth",
        auth,
        RegistryAuthCreated(name="hub", username="ada", password_ciphertext=ciphertext),
        user,
        user,
        here,
    )
    await w.emit(
        "template",
        template,
        TemplateCreated(
            name="t",
            container=ContainerConfig(
                image_name="local/busybox:latest",
                container_disk_in_gb=5,
                env={"HF_TOKEN": ENV_VALUE},
                registry_auth_id=auth,
            ),
            readme="",
            is_public=False,
        ),
        user,
        user,
        here,
    )
    host = f"h-{new_id()[:8]}"
    await w.emit(
        "host",
        host,
        HostRegistered(
            datacenter_id="US-TX-3",
            cloud_type="SECURE",
            gpus=[HostGpu(index=0, uuid="g0", gpu_type_id="NVIDIA GeForce RTX 4090", memory_mb=1)],
            inventory_source="declared",
            runtime="simulated",
            disk_gb=None,
        ),
        f"system:agent:{host}",
        None,
    )
    # The customer's placement takes GPUs on the operator's host: theirs as actor, no one's host.
    await w.emit(
        "host",
        host,
        GpusAllocated(instance_id=instance, lease_id="l", gpu_uuids=["g0"]),
        user,
        None,
        here,
    )
    await w.emit(
        "instance",
        instance,
        created(host_id=host, env={"HF_TOKEN": ENV_VALUE}),
        user,
        user,
        here,
    )
    # What the system says about the customer's instance belongs to the customer's trail.
    await w.emit("instance", instance, InstanceRunning(), f"system:agent:{host}", user)
    await w.emit(
        "instance", instance, InstanceStopRequested(reason="budget"), "system:billing", user
    )
    await w.emit("instance", instance, InstanceStopped(lease_id="l"), f"system:agent:{host}", user)
    await w.emit(
        "endpoint",
        new_id(),
        WorkerStarted(
            worker_id="w1",
            owner_id=user,
            host_id=host,
            gpu_type_id="NVIDIA GeForce RTX 4090",
            gpu_count=1,
        ),
        "system:autoscaler",
        user,
    )


async def other_activity(w: Workload, other: str) -> None:
    template = new_id()
    await w.emit(
        "template",
        template,
        TemplateCreated(
            name="public",
            container=ContainerConfig(image_name="local/busybox:latest", container_disk_in_gb=5),
            readme="",
            is_public=True,
        ),
        "system:deciders",
        None,
    )
    await w.emit(
        "volume",
        new_id(),
        VolumeCreated(
            name="v",
            size_gb=10,
            datacenter_id="US-TX-3",
            host_id="s1",
            price_per_gb_month_micros=70_000,
            rate_card_version="v",
        ),
        other,
        other,
        "127.0.0.2",
    )


async def logged(pool: AsyncConnectionPool[Any]) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT sequence, actor, action, resource_type, resource_id, owner_id, source_address,"
            " event_id, correlation_id FROM audit_log ORDER BY sequence"
        )
        rows: list[tuple[Any, ...]] = await cur.fetchall()
    return rows


async def until_logged(pool: AsyncConnectionPool[Any], sequence: int) -> None:
    for _ in range(500):
        async with pool.connection() as conn:
            if await checkpoints.read(conn, CHECKPOINT) >= sequence:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the audit log never reached {sequence}")


async def test_every_event_is_logged_exactly_once_across_restarts_and_crashes(
    nc: NatsClient,
    audit_nc: NatsClient,
    pool: AsyncConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    w = Workload(store)
    # Small batches, so that stops and crashes land between and inside the workload's events.
    monkeypatch.setattr(runner, "BATCH", 2)
    first = ProjectionRunner(audit_nc, pool, [AuditProjection()])
    # Every batch is committed, then the reader dies and starts again from the checkpoint.
    first.crash_after_commit = True
    await first.start()
    await customer_activity(w, f"u-{new_id()}")
    await until_logged(pool, 3)
    await first.stop()  # stopped mid-way, wherever it was
    await other_activity(w, f"u-{new_id()}")
    await customer_activity(w, f"u-{new_id()}")
    # Two audit roles at once (replicas), then one more after both stopped.
    replicas = [ProjectionRunner(audit_nc, pool, [AuditProjection()]) for _ in range(2)]
    for r in replicas:
        await r.start()
    last = max(w.expected)
    await until_logged(pool, last - 4)
    for r in replicas:
        await r.stop()
    again = ProjectionRunner(audit_nc, pool, [AuditProjection()])
    await again.start()
    await until_logged(pool, last)
    await again.stop()

    rows = await logged(pool)
    assert [r[0] for r in rows] == sorted(w.expected), "every event once, in stream order"
    assert len({r[7] for r in rows}) == len(rows)
    for sequence, actor, action, kind, resource, owner, source, _id, correlation in rows:
        assert (actor, action, kind, resource, owner, source) == w.expected[sequence]
        assert correlation.startswith("req-")


async def test_the_audit_log_keeps_no_secret_and_refuses_change(
    nc: NatsClient, audit_nc: NatsClient, pool: AsyncConnectionPool[Any], database_url: str
) -> None:
    store = JetStreamEventStore(nc)
    await store.ensure_stream()
    w = Workload(store)
    await customer_activity(w, f"u-{new_id()}")
    audit = ProjectionRunner(audit_nc, pool, [AuditProjection()])
    await audit.start()
    await until_logged(pool, max(w.expected))
    await audit.stop()

    with psycopg.connect(database_url, autocommit=True) as conn:
        dump = "\n".join(
            str(row[0])
            for table in ("audit_log", "audit_owners")
            for row in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t").fetchall()
        )
        assert "RegistryAuthCreated" in dump and "127.0.0.1" in dump
        for secret in w.secrets:
            assert secret not in dump
        # Not even a fragment of the ciphertext, the env value or the hash.
        for secret in w.secrets:
            assert secret[8:24] not in dump
        for statement in (
            "UPDATE audit_log SET actor = 'someone-else'",
            "UPDATE audit_log SET source_address = NULL WHERE sequence = 1",
            "DELETE FROM audit_log",
            "DELETE FROM audit_log WHERE sequence = 1",
            "TRUNCATE audit_log",
            "UPDATE audit_owners SET owner_id = 'someone-else'",
            "DELETE FROM audit_owners",
            "TRUNCATE audit_owners",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        count = conn.execute("SELECT count(*) FROM audit_log").fetchone()
        assert count is not None and count[0] == len(w.expected)


async def test_the_audit_user_reads_the_stream_and_nothing_else(
    bus: tuple[EmbeddedNats, Listener],  # noqa: F811
) -> None:
    server, listener = bus
    audit = await login(server, AUDIT_USER)
    try:
        assert await publish_is_refused(audit, listener, "cmd.instance")
        assert await publish_is_refused(audit, listener, "cmd.billing.instance")
        assert await publish_is_refused(audit, listener, "cmd.operator.user")
        assert await publish_is_refused(audit, listener, "ev.instance.i-1.InstanceStopped")
        assert await publish_is_refused(audit, listener, "hb.h1")
        assert await subscribe_is_refused(audit, "cmd.>")
        assert await subscribe_is_refused(audit, "ev.>")
        assert await subscribe_is_refused(audit, "_INBOX.deciders.>")
    finally:
        await audit.nc.close()
