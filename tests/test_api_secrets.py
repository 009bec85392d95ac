"""Secrets never leak: registry passwords, account passwords and refresh tokens are absent from
every API response, the processes' logs, the raw bytes of every JetStream stream (data and
headers) and every row of every table in PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field

import httpx
import nats.js.errors
import psycopg
from psycopg import sql

from events.subjects import STREAM
from services.cli.embedded import EmbeddedNats
from services.nats_permissions import OPERATOR_USER
from tests.api_helpers import assert_error, unique_email
from tests.servers import Stack, connect_as


@dataclass
class Blobs:
    """Everything stored or said, as raw bytes, labelled by where it came from."""

    items: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, where: str, data: bytes | str | None) -> None:
        if data:
            self.items.append((where, data.encode() if isinstance(data, str) else data))

    def assert_absent(self, secret: str, what: str) -> None:
        forms = {secret.encode(), base64.b64encode(secret.encode()).rstrip(b"=")}
        for where, data in self.items:
            for form in forms:
                assert form not in data, f"{what} found in {where}"


async def _stream_blobs(server: EmbeddedNats) -> tuple[Blobs, int]:
    """Every message of every stream, read one by one by sequence (as an operator would)."""
    blobs = Blobs()
    nc = await connect_as(server, OPERATOR_USER)
    try:
        js = nc.jetstream(timeout=10)
        names = [s.config.name for s in await js.streams_info() if s.config.name]
        assert STREAM in names, names
        events = 0
        for name in names:
            info = await js.stream_info(name)
            if not info.state.messages:
                continue
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(name, seq)
                except nats.js.errors.NotFoundError:
                    continue
                where = f"stream {name} seq {seq} ({msg.subject})"
                blobs.add(f"{where} data", msg.data)
                for key, value in (msg.headers or {}).items():
                    blobs.add(f"{where} header {key}", f"{key}: {value}")
                if name == STREAM:
                    events += 1
        return blobs, events
    finally:
        await nc.close()


async def _drain(server: EmbeddedNats, timeout: float = 15.0) -> None:
    """Give every consumer of the event stream (projections, audit, ...) time to catch up, so the
    database holds everything they will ever write about this test's events."""
    nc = await connect_as(server, OPERATOR_USER)
    try:
        js = nc.jetstream(timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            consumers = await js.consumers_info(STREAM)
            if all(c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers):
                return
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def _database_blobs(database_url: str) -> tuple[Blobs, list[str]]:
    """Every row of every table outside the system schemas, as COPY text."""
    blobs = Blobs()
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL("COPY (SELECT * FROM {}.{}) TO STDOUT").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            data = bytearray()
            with conn.cursor() as cur, cur.copy(query) as copy:
                for chunk in copy:
                    data += chunk
            blobs.add(f"table {schema}.{table}", bytes(data))
    return blobs, [t for _, t in tables]


def test_secrets_never_leak(stack: Stack) -> None:
    registry_password = f"pw-{uuid.uuid4().hex}"
    other_registry_password = f"pw-{uuid.uuid4().hex}"
    rejected_registry_password = f"pw-{uuid.uuid4().hex}"
    user_password = f"user-pw-{uuid.uuid4().hex}"
    wrong_password = f"wrong-pw-{uuid.uuid4().hex}"
    email = unique_email("secret")
    responses: list[httpx.Response] = []
    refresh_tokens: list[str] = []
    access_tokens: list[str] = []

    def keep(response: httpx.Response) -> httpx.Response:
        responses.append(response)
        body = response.json() if response.content else None
        if isinstance(body, dict) and "refresh_token" in body:
            refresh_tokens.append(body["refresh_token"])
            access_tokens.append(body["access_token"])
        return response

    with stack.client() as anonymous:
        signup = keep(
            anonymous.post(
                "/auth/signup",
                json={"name": "Secretive", "email": email, "password": user_password},
                headers={"idempotency-key": uuid.uuid4().hex},
            )
        )
        assert signup.status_code == 201, signup.text
        # One failed login (counted in the budget in api_helpers), then real ones.
        assert_error(
            keep(anonymous.post("/auth/login", json={"email": email, "password": wrong_password})),
            401,
        )
        login = keep(
            anonymous.post("/auth/login", json={"email": email, "password": user_password})
        )
        assert login.status_code == 200, login.text
        rotated = keep(
            anonymous.post("/auth/refresh", json={"refresh_token": signup.json()["refresh_token"]})
        )
        assert rotated.status_code == 200, rotated.text
        # Reuse: the family is revoked, and the event that records it names no token.
        reuse = keep(
            anonymous.post("/auth/refresh", json={"refresh_token": signup.json()["refresh_token"]})
        )
        assert_error(reuse, 401)

    with stack.client(login.json()["access_token"]) as client:
        key = {"idempotency-key": uuid.uuid4().hex}
        body = {"name": "Private registry", "username": "robot", "password": registry_password}
        created = keep(client.post("/registry-auth", json=body, headers=key))
        assert created.status_code == 201, created.text
        replayed = keep(client.post("/registry-auth", json=body, headers=key))
        assert replayed.content == created.content
        other = keep(
            client.post(
                "/registry-auth",
                json={"name": "Other", "username": "robot", "password": other_registry_password},
            )
        )
        assert other.status_code == 201, other.text
        # A rejected request that carries a password: the error must not echo it.
        rejected = keep(
            client.post(
                "/registry-auth",
                json={"name": "x", "username": "u", "password": rejected_registry_password, "x": 1},
            )
        )
        assert_error(rejected, 400)
        too_long = keep(
            client.post(
                "/registry-auth",
                json={"name": "x", "username": "u", "password": rejected_registry_password * 200},
            )
        )
        assert_error(too_long, 400, "password")
        listed = keep(client.get("/registry-auth"))
        assert {a["id"] for a in listed.json()} == {created.json()["id"], other.json()["id"]}
        deleted = keep(client.delete(f"/registry-auth/{other.json()['id']}"))
        assert deleted.status_code == 204
        keep(client.get("/registry-auth"))
        keep(client.get("/me"))

    assert len(refresh_tokens) == 3
    registry_secrets = [registry_password, other_registry_password, rejected_registry_password]
    account_secrets = [user_password, wrong_password]
    token_secrets = refresh_tokens + [t.partition(".")[2] for t in refresh_tokens]

    # 1. API responses.
    said = Blobs()
    for response in responses:
        said.add(
            f"response to {response.request.method} {response.request.url.path}", response.content
        )
    for secret in registry_secrets + account_secrets:
        said.assert_absent(secret, "a password")

    # 2. Every process's log.
    logs = Blobs()
    logs.add("the stack's log", stack.logs())
    for secret in registry_secrets + account_secrets:
        logs.assert_absent(secret, "a password")
    for secret in token_secrets + access_tokens:
        logs.assert_absent(secret, "a token")

    # 3. The event store, and any other stream, byte for byte.
    asyncio.run(_drain(stack.nats))
    streamed, events = asyncio.run(_stream_blobs(stack.nats))
    assert events > 0
    # The scan does see this test's events (so an absent secret is absent, not unread)...
    streamed_text = b"".join(data for _, data in streamed.items)
    assert b"Private registry" in streamed_text
    assert email.encode() in streamed_text
    for secret in registry_secrets + account_secrets:
        streamed.assert_absent(secret, "a password")
    for secret in token_secrets + access_tokens:
        streamed.assert_absent(secret, "a token")

    # 4. Every row of every table.
    stored, tables = _database_blobs(stack.database_url)
    assert {"users", "registry_auths", "idempotency_keys"} <= set(tables), tables
    stored_text = b"".join(data for _, data in stored.items)
    assert b"Private registry" in stored_text
    assert email.encode() in stored_text
    for secret in registry_secrets + account_secrets:
        stored.assert_absent(secret, "a password")
    for secret in token_secrets + access_tokens:
        stored.assert_absent(secret, "a token")
