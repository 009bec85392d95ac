"""Events written before the container spec was one `ContainerConfig` (flat fields, the template's
credential named `container_registry_auth_id`) read back in the nested shape, and the migration that
changes the read models' shape rebuilds them from such a stream.

The old payloads are written out by hand, as the old code wrote them: they must never change."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import psycopg
from nats.aio.client import Client as NatsClient
from psycopg_pool import AsyncConnectionPool

from events.catalog import decode_event, spec_for
from events.container import ContainerChanges, ContainerConfig
from events.envelope import Envelope
from events.ids import new_id
from events.instance import InstanceCreated, InstanceReconfigured
from events.store import JetStreamEventStore
from events.template import TemplateCreated, TemplateUpdated
from projections import checkpoints
from projections.catalog import PROJECTIONS
from projections.migrate import available, migrate
from projections.runner import ProjectionRunner
from services.deciders.instance import INSTANCE, InstanceState
from services.deciders.template import TEMPLATE, TemplateState

STAMP = "2026-11-02T10:00:00Z"
OWNER = "0190f1e2-0000-7000-8000-00000000000a"
AUTH = "0190f1e2-0000-7000-8000-0000000000ac"

TEMPLATE_CREATED_V2 = {
    "name": "old template",
    "image_name": "ghcr.io/acme/old:1",
    "docker_start_cmd": "sleep infinity",
    "container_disk_in_gb": 30,
    "volume_in_gb": 5,
    "volume_mount_path": "/data",
    "env": {"MODEL": "opt"},
    "ports": ["8888/http"],
    "readme": "r",
    "is_public": False,
    "container_registry_auth_id": None,
}
# omit_defaults: only what changed.
TEMPLATE_UPDATED_V1 = {
    "name": "renamed",
    "image_name": "ghcr.io/acme/old:2",
    "container_registry_auth_id": AUTH,
}
INSTANCE_CREATED_V2 = {
    "name": "old box",
    "gpu_type_id": "NVIDIA GeForce RTX 4090",
    "gpu_count": 1,
    "cloud_type": "SECURE",
    "datacenter_id": "US-TX-3",
    "host_id": "h-1",
    "gpu_uuids": ["GPU-0"],
    "lease_id": "lease-1",
    "template_id": "tpl-1",
    "image_name": "ghcr.io/acme/old:1",
    "docker_start_cmd": None,
    "env": {"A": "1"},
    "ports": ["22/tcp"],
    "container_disk_in_gb": 20,
    "volume_in_gb": 10,
    "volume_mount_path": "/workspace",
    "network_volume_id": None,
    "price_per_hour_micros": 690_000,
    "rate_card_version": "2026-11-01",
    "registry_auth_id": AUTH,
    "vcpu_count": 16,
    "memory_in_gb": 62,
}
INSTANCE_RECONFIGURED_V1 = {"env": {"A": "2"}, "container_disk_in_gb": 40}

OLD_CONTAINER = ContainerConfig(
    image_name="ghcr.io/acme/old:1",
    docker_start_cmd="sleep infinity",
    env={"MODEL": "opt"},
    ports=["8888/http"],
    container_disk_in_gb=30,
    volume_in_gb=5,
    volume_mount_path="/data",
)
INSTANCE_CONTAINER = ContainerConfig(
    image_name="ghcr.io/acme/old:1",
    env={"A": "1"},
    ports=["22/tcp"],
    container_disk_in_gb=20,
    volume_in_gb=10,
    registry_auth_id=AUTH,
)


def raw_event(
    aggregate: str, aggregate_id: str, event_type: str, version: int, data: dict[str, Any]
) -> bytes:
    return json.dumps(
        {
            "id": new_id(),
            "type": event_type,
            "version": version,
            "aggregate": {"type": aggregate, "id": aggregate_id},
            "occurred_at": STAMP,
            "recorded_at": STAMP,
            "actor": OWNER,
            "correlation_id": "corr-1",
            "data": data,
        }
    ).encode()


def decoded(aggregate: str, event_type: str, version: int, data: dict[str, Any]) -> Envelope:
    return decode_event(raw_event(aggregate, "agg-1", event_type, version, data))


def test_the_replaced_versions_are_the_ones_upcast() -> None:
    assert {
        name: spec_for(name).version
        for name in (
            "TemplateCreated",
            "TemplateUpdated",
            "InstanceCreated",
            "InstanceReconfigured",
        )
    } == {
        "TemplateCreated": 3,
        "TemplateUpdated": 2,
        # v4 (issue 11) added the owner's SSH keys; v2 still reads through v3.
        "InstanceCreated": 4,
        "InstanceReconfigured": 2,
    }


def test_template_created_v2_nests_its_container() -> None:
    event = decoded("template", "TemplateCreated", 2, TEMPLATE_CREATED_V2)
    assert event.version == 3
    assert event.data == TemplateCreated(
        name="old template", container=OLD_CONTAINER, readme="r", is_public=False
    )
    with_auth = {**TEMPLATE_CREATED_V2, "container_registry_auth_id": AUTH}
    data = decoded("template", "TemplateCreated", 2, with_auth).data
    assert data.container.registry_auth_id == AUTH


def test_template_created_v1_goes_through_both_upcasters() -> None:
    v1 = {
        k: v
        for k, v in TEMPLATE_CREATED_V2.items()
        if k not in ("env", "ports", "container_registry_auth_id")
    }
    data = decoded("template", "TemplateCreated", 1, v1).data
    assert data.container == msgspec.structs.replace(OLD_CONTAINER, env={}, ports=[])


def test_template_updated_v1_carries_only_what_changed() -> None:
    event = decoded("template", "TemplateUpdated", 1, TEMPLATE_UPDATED_V1)
    assert event.version == 2
    assert event.data == TemplateUpdated(
        name="renamed",
        container=ContainerChanges(image_name="ghcr.io/acme/old:2", registry_auth_id=AUTH),
    )
    renamed_only = decoded("template", "TemplateUpdated", 1, {"readme": "new"}).data
    assert renamed_only == TemplateUpdated(readme="new")
    assert renamed_only.container is None


def test_instance_created_v2_nests_its_container() -> None:
    event = decoded("instance", "InstanceCreated", 2, INSTANCE_CREATED_V2)
    assert event.version == spec_for("InstanceCreated").version
    assert isinstance(event.data, InstanceCreated)
    assert event.data.container == INSTANCE_CONTAINER
    assert (event.data.vcpu_count, event.data.memory_in_gb) == (16, 62)
    assert event.data.network_volume_id is None
    assert event.data.template_id == "tpl-1"


def test_instance_created_v1_goes_through_both_upcasters() -> None:
    v1 = {
        k: v
        for k, v in INSTANCE_CREATED_V2.items()
        if k not in ("vcpu_count", "memory_in_gb", "registry_auth_id")
    }
    data = decoded("instance", "InstanceCreated", 1, v1).data
    assert data.container == msgspec.structs.replace(INSTANCE_CONTAINER, registry_auth_id=None)
    assert data.vcpu_count > 0 and data.memory_in_gb > 0


def test_instance_reconfigured_v1_carries_only_what_changed() -> None:
    event = decoded("instance", "InstanceReconfigured", 1, INSTANCE_RECONFIGURED_V1)
    assert event.version == 2
    assert event.data == InstanceReconfigured(
        container=ContainerChanges(env={"A": "2"}, container_disk_in_gb=40)
    )


def test_old_events_fold_to_the_states_new_ones_would() -> None:
    template = TEMPLATE.fold(
        None,
        [
            decoded("template", "TemplateCreated", 2, TEMPLATE_CREATED_V2),
            decoded("template", "TemplateUpdated", 1, TEMPLATE_UPDATED_V1),
        ],
    )
    assert template is not None
    assert template.name == "renamed"
    assert template.container == msgspec.structs.replace(
        OLD_CONTAINER, image_name="ghcr.io/acme/old:2", registry_auth_id=AUTH
    )
    instance = INSTANCE.fold(
        None,
        [
            decoded("instance", "InstanceCreated", 2, INSTANCE_CREATED_V2),
            decoded("instance", "InstanceReconfigured", 1, INSTANCE_RECONFIGURED_V1),
        ],
    )
    assert instance is not None
    assert instance.config_generation == 1
    assert instance.container == msgspec.structs.replace(
        INSTANCE_CONTAINER, env={"A": "2"}, container_disk_in_gb=40
    )


# --- the read models' migration -------------------------------------------------------------------

CONTAINER_SPEC_MIGRATION = 11


async def migrate_before(conninfo: str, version: int) -> None:
    """The schema as a deployment from before `version` has it."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for number, name, sql in available():
            if number < version:
                async with conn.transaction():
                    await conn.execute(sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (number, name),
                    )


def old_row_doc(fields: dict[str, Any], aggregate_id: str) -> str:
    """A flat state doc as the old projector wrote it."""
    return json.dumps(
        {"id": aggregate_id, "owner_id": OWNER, "created_at": STAMP, "version": 2, **fields}
    )


async def test_the_migration_rebuilds_old_rows_from_old_events(
    nc: NatsClient, projector_nc: NatsClient, database_url: str
) -> None:
    await JetStreamEventStore(nc).ensure_stream()
    js = nc.jetstream()
    template_id, instance_id = new_id(), new_id()
    last = 0
    for aggregate, aggregate_id, event_type, version, data in (
        ("template", template_id, "TemplateCreated", 2, TEMPLATE_CREATED_V2),
        ("template", template_id, "TemplateUpdated", 1, TEMPLATE_UPDATED_V1),
        ("instance", instance_id, "InstanceCreated", 2, INSTANCE_CREATED_V2),
        ("instance", instance_id, "InstanceReconfigured", 1, INSTANCE_RECONFIGURED_V1),
    ):
        subject = f"ev.{aggregate}.{aggregate_id}.{event_type}"
        ack = await js.publish(
            subject, raw_event(aggregate, aggregate_id, event_type, version, data)
        )
        last = ack.seq

    # The read models as the old projector left them: flat docs, checkpoints at the stream's end.
    await migrate_before(database_url, CONTAINER_SPEC_MIGRATION)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for table, aggregate_id, fields in (
            ("templates", template_id, {**TEMPLATE_CREATED_V2, **TEMPLATE_UPDATED_V1}),
            ("instances", instance_id, {**INSTANCE_CREATED_V2, **INSTANCE_RECONFIGURED_V1}),
        ):
            await conn.execute(
                f"INSERT INTO {table} (id, owner_id, created_at, deleted, last_sequence, doc)"
                " VALUES (%s, %s, %s, false, %s, %s)",
                (aggregate_id, OWNER, STAMP, last, old_row_doc(fields, aggregate_id)),
            )
            await conn.execute(
                "INSERT INTO projection_checkpoints (name, last_sequence) VALUES (%s, %s)",
                (table, last),
            )

    # This one and every later one (the schema of a deployment from before it catches up).
    later = [number for number, _name, _sql in available() if number >= CONTAINER_SPEC_MIGRATION]
    assert await migrate(database_url) == later
    assert later[0] == CONTAINER_SPEC_MIGRATION

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, open=False)
    await pool.open()
    tables = [PROJECTIONS["templates"], PROJECTIONS["instances"]]
    projector = ProjectionRunner(projector_nc, pool, tables)
    await projector.start()
    try:
        for _ in range(200):
            async with pool.connection() as conn:
                at = await checkpoints.read_all(conn)
            if at.get("templates", 0) >= last and at.get("instances", 0) >= last:
                break
            await asyncio.sleep(0.05)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT doc::text FROM templates")
            template_docs = [row[0] for row in await cur.fetchall()]
            cur = await conn.execute("SELECT doc::text FROM instances")
            instance_docs = [row[0] for row in await cur.fetchall()]
    finally:
        await projector.stop()
        await pool.close()

    assert len(template_docs) == len(instance_docs) == 1
    for doc in (*template_docs, *instance_docs):
        shape = json.loads(doc)
        assert "container" in shape and "image_name" not in shape, shape
    template = msgspec.json.decode(template_docs[0], type=TemplateState)
    assert template.name == "renamed"
    assert template.container == msgspec.structs.replace(
        OLD_CONTAINER, image_name="ghcr.io/acme/old:2", registry_auth_id=AUTH
    )
    instance = msgspec.json.decode(instance_docs[0], type=InstanceState)
    assert instance.container == msgspec.structs.replace(
        INSTANCE_CONTAINER, env={"A": "2"}, container_disk_in_gb=40
    )
    assert (instance.config_generation, instance.version) == (1, 2)
