"""API keys: created once with the key shown once, listed without it, accepted as a Bearer
credential wherever an access token is, revoked within a second on every api replica, another
user's keys do not exist for you, and a key is never in a log, an event or a table."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from events.envelope import AggregateRef, Envelope
from events.ids import new_id
from projections import checkpoints
from services.api.api_key_lookup import API_KEYS, ApiKeyLookup
from services.api.consistency import CheckpointWatcher
from services.cli.embedded import free_port
from services.deciders.api_key import (
    API_KEY,
    ApiKeyState,
    CreateApiKey,
    RevokeApiKey,
)
from services.errors import BadRequest, NotFound
from services.security.api_keys import PREFIX, ApiKeyHasher, well_formed
from services.security.secret_box import generate_key
from tests.api_helpers import assert_error, me, signup, template_body
from tests.manual_clock import ManualClock
from tests.servers import Stack
from tests.test_api_secrets import Blobs, _database_blobs, _drain, _stream_blobs

KEY_FIELDS = {"id", "name", "createdAt", "key"}
LISTED_FIELDS = {"id", "name", "createdAt"}


def _create(client: httpx.Client, name: str = "ci", **headers: str) -> dict[str, Any]:
    response = client.post("/api-keys", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _hash(stack: Stack, key: str) -> str:
    return ApiKeyHasher(stack.env["GPUWORKER_SECRET_KEY"]).digest(key)


def _until_refused(client: httpx.Client, timeout: float) -> float:
    """Seconds until GET /me with the client's key answers 401 (AssertionError past timeout)."""
    start = time.monotonic()
    while True:
        response = client.get("/me")
        if response.status_code == 401:
            assert_error(response, 401, "API key")
            return time.monotonic() - start
        assert response.status_code == 200, response.text
        assert time.monotonic() - start < timeout, f"key still accepted after {timeout}s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def second_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Another api replica on the same database, NATS and configuration (as compose scales it)."""
    port = free_port()
    log = tmp_path_factory.mktemp("replica") / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "api", "--port", str(port)],
            env=stack.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Its log is as much the product's as the stack's: no key may be in it either.
        assert "gpw_" not in log.read_text(errors="replace")


def test_a_key_works_where_an_access_token_does(stack: Stack) -> None:
    token, _, email = signup(stack)
    with stack.client(token) as client:
        created = _create(client, "  laptop script  ")
    assert set(created) == KEY_FIELDS, created
    assert created["name"] == "laptop script"
    key = created["key"]
    assert key.startswith(PREFIX) and well_formed(key), key
    datetime.fromisoformat(created["createdAt"])

    # The key is the same user as the token, on reads and on writes.
    assert me(stack, key) == me(stack, token)
    assert me(stack, key)["email"] == email
    with stack.client(key) as by_key:
        templates = by_key.get("/templates")
        assert templates.status_code == 200, templates.text
        made = by_key.post("/templates", json=template_body(name="made with a key"))
        assert made.status_code == 201, made.text
        # The idempotency layer scopes by the key's user: a replay with the token is the same.
        idem = {"idempotency-key": uuid.uuid4().hex}
        first = by_key.post("/templates", json=template_body(name="once"), headers=idem)
        assert first.status_code == 201, first.text
    with stack.client(token) as client:
        own = [t["id"] for t in client.get("/templates").json() if not t["isPublic"]]
        assert made.json()["id"] in own
        again = client.post("/templates", json=template_body(name="once"), headers=idem)
        assert again.content == first.content
        # The scheme's case does not matter, as RFC 9110 says.
        lower = client.get("/me", headers={"authorization": f"bearer {key}"})
        assert lower.status_code == 200, lower.text


def test_the_list_never_shows_a_key_nor_its_hash(stack: Stack) -> None:
    token, _, _ = signup(stack)
    with stack.client(token) as client:
        first = _create(client, "first")
        second = _create(client, "second")
        listed = client.get("/api-keys")
    assert listed.status_code == 200, listed.text
    assert [k["id"] for k in listed.json()] == [first["id"], second["id"]]
    for item in listed.json():
        assert set(item) == LISTED_FIELDS, item
    with stack.client(first["key"]) as by_key:
        listed_by_key = by_key.get("/api-keys")
        one = by_key.get("/api-keys", params={"limit": 1})
    assert listed_by_key.json() == listed.json()
    assert "next" in one.links, one.headers
    for response in (listed, listed_by_key, one):
        for key in (first["key"], second["key"]):
            assert key not in response.text
            assert key.removeprefix(PREFIX) not in response.text
            assert _hash(stack, key) not in response.text


def test_a_revoked_key_is_refused_within_a_second_on_every_replica(
    stack: Stack, second_api: str
) -> None:
    token, _, _ = signup(stack)
    with stack.client(token) as client:
        created = _create(client)
        kept = _create(client, "kept")
    headers = {"authorization": f"Bearer {created['key']}"}
    here = stack.client(created["key"])
    there = httpx.Client(base_url=second_api, headers=headers, timeout=30)
    with here, there:
        # Both replicas have seen (and may keep) the key.
        for _ in range(5):
            assert here.get("/me").status_code == 200
            assert there.get("/me").status_code == 200
        with stack.client(token) as client:
            revoked = client.delete(f"/api-keys/{created['id']}")
        assert revoked.status_code == 204, revoked.text
        # The replica that answered the revoke refuses it at once; the other within a second.
        assert_error(here.get("/me"), 401, "API key")
        assert _until_refused(there, timeout=1.0) < 1.0
        # On every route, writes included.
        assert_error(here.post("/templates", json=template_body()), 401)
        assert_error(there.get("/templates"), 401)
    with stack.client(token) as client:
        assert [k["id"] for k in client.get("/api-keys").json()] == [kept["id"]]
        assert_error(client.delete(f"/api-keys/{created['id']}"), 404, "API key not found")
    # The other key was not touched.
    assert me(stack, kept["key"])["id"] == me(stack, token)["id"]


def test_another_users_key_does_not_exist_for_you(stack: Stack) -> None:
    owner, _, _ = signup(stack)
    other, _, _ = signup(stack)
    with stack.client(owner) as client:
        created = _create(client)
    with stack.client(other) as client:
        assert client.get("/api-keys").json() == []
        assert_error(client.delete(f"/api-keys/{created['id']}"), 404, "API key not found")
        assert_error(client.delete("/api-keys/*.>"), 404)
        assert_error(client.delete(f"/api-keys/{new_id()}"), 404)
        mine = _create(client)
    # Neither the attempt nor the other user's own key changed the owner's key.
    assert me(stack, created["key"])["id"] == me(stack, owner)["id"]
    assert me(stack, mine["key"])["id"] == me(stack, other)["id"]
    # Nor can a key revoke its own user's key from another user's session.
    with stack.client(mine["key"]) as client:
        assert_error(client.delete(f"/api-keys/{created['id']}"), 404)


def test_malformed_and_unknown_keys_are_401_in_the_seeds_shape(stack: Stack) -> None:
    token, _, _ = signup(stack)
    with stack.client(token) as client:
        key = _create(client)["key"]
    secret = key.removeprefix(PREFIX)
    never_issued = ApiKeyHasher(generate_key()).mint(None)
    for header in (
        f"Bearer {PREFIX}",
        f"Bearer {PREFIX}short",
        f"Bearer {key}x",
        f"Bearer {key[:-1]}",
        f"Bearer {key[:-1]}*",
        f"Bearer {never_issued}",
        f"Bearer gpx_{secret}",
        f"Bearer {secret}",
        f"Bearer {key} {key}",
        f"Basic {key}",
        f"Token {key}",
        key,
        "Bearer",
    ):
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            for method, path in (("GET", "/me"), ("GET", "/api-keys"), ("POST", "/api-keys")):
                response = client.request(
                    method, path, headers={"authorization": header}, json={"name": "x"}
                )
                assert_error(response, 401)
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        refused = client.get("/me", headers={"authorization": f"Bearer {never_issued}"})
    message = assert_error(refused, 401, "API key is not valid")
    assert never_issued not in message
    # The real key still works: none of that was mistaken for it.
    assert me(stack, key)["id"] == me(stack, token)["id"]
    # Public routes stay public whatever is sent.
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        health = client.get("/health", headers={"authorization": f"Bearer {never_issued}"})
    assert health.status_code < 500, health.text
    assert health.status_code != 401


def test_bad_names_are_400_naming_the_field(stack: Stack) -> None:
    with stack.client(signup(stack)[0]) as client:
        for body in ({}, {"name": ""}, {"name": "   "}, {"name": "x" * 129}, {"name": 3}):
            assert_error(client.post("/api-keys", json=body), 400, "name")
        assert_error(client.post("/api-keys", json={"name": "x", "key": "gpw_mine"}), 400, "key")
        assert client.get("/api-keys").json() == []


def test_keys_per_user_are_bounded(stack: Stack) -> None:
    token, _, _ = signup(stack)
    with stack.client(token) as client:
        made = [_create(client, f"k{i}") for i in range(50)]
        assert_error(client.post("/api-keys", json={"name": "one too many"}), 409, "50")
        assert len(client.get("/api-keys", params={"limit": 500}).json()) == 50
        assert client.delete(f"/api-keys/{made[0]['id']}").status_code == 204
        _create(client, "room again")
    # Someone else's count is their own.
    with stack.client(signup(stack)[0]) as client:
        _create(client)


def test_an_idempotent_create_shows_the_same_key(stack: Stack) -> None:
    token, _, _ = signup(stack)
    idem = {"idempotency-key": uuid.uuid4().hex}
    with stack.client(token) as client:
        first = _create(client, "once", **idem)
        again = _create(client, "once", **idem)
        assert again == first
        assert [k["id"] for k in client.get("/api-keys").json()] == [first["id"]]
    assert me(stack, again["key"])["id"] == me(stack, token)["id"]


def test_a_create_retried_after_its_answer_was_lost_shows_the_key_it_stored(stack: Stack) -> None:
    """The idempotency layer's record of a response can fail to be written (it logs and goes on:
    a retry reproduces the outcome). The retry then runs again with the same ids, and the decider
    answers with the key it already stored: the response must show that key, not a new one."""
    token, _, _ = signup(stack)
    user_id = me(stack, token)["id"]
    idem = uuid.uuid4().hex
    with stack.client(token) as client:
        first = _create(client, "lost answer", **{"idempotency-key": idem})
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        forgotten = conn.execute(
            "UPDATE idempotency_keys SET status_code = NULL, body = NULL, lease_until = now(),"
            " lease_token = NULL WHERE scope = %s AND key = %s",
            (user_id, idem),
        )
        assert forgotten.rowcount == 1
    with stack.client(token) as client:
        retried = _create(client, "lost answer", **{"idempotency-key": idem})
        assert [k["id"] for k in client.get("/api-keys").json()] == [first["id"]]
    assert retried == first
    assert me(stack, retried["key"])["id"] == user_id


def test_a_key_is_never_logged_streamed_or_stored(stack: Stack) -> None:
    token, _, _ = signup(stack)
    keys: list[str] = []
    with stack.client(token) as client:
        plain = _create(client, "leak-check plain")
        idem = {"idempotency-key": uuid.uuid4().hex}
        sealed = _create(client, "leak-check idempotent", **idem)
        assert _create(client, "leak-check idempotent", **idem) == sealed
        revoked = _create(client, "leak-check revoked")
        keys += [plain["key"], sealed["key"], revoked["key"]]
        for key in keys:
            assert me(stack, key)["id"]
        assert client.delete(f"/api-keys/{revoked['id']}").status_code == 204
        refused = client.get("/me", headers={"authorization": f"Bearer {revoked['key']}"})
        assert_error(refused, 401)
        wrong = client.get("/me", headers={"authorization": f"Basic {plain['key']}"})
        assert_error(wrong, 401)

    def absent(blobs: Blobs) -> None:
        for key in keys:
            blobs.assert_absent(key, "an API key")
            blobs.assert_absent(key.removeprefix(PREFIX), "an API key's secret part")

    logs = Blobs()
    logs.add("the stack's log", stack.logs())
    absent(logs)

    asyncio.run(_drain(stack.nats))
    streamed, _ = asyncio.run(_stream_blobs(stack.nats))
    streamed_text = b"".join(data for _, data in streamed.items)
    # The scan does see these keys' events, which hold their hashes (and nothing more).
    for key in keys:
        assert _hash(stack, key).encode() in streamed_text
    assert b"leak-check revoked" in streamed_text
    absent(streamed)

    stored, tables = _database_blobs(stack.database_url)
    assert {"api_keys", "idempotency_keys"} <= set(tables), tables
    stored_text = b"".join(data for _, data in stored.items)
    assert _hash(stack, plain["key"]).encode() in stored_text
    absent(stored)


def test_the_cli_creates_lists_and_revokes(stack: Stack, tmp_path: Path) -> None:
    token, _, _ = signup(stack)
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path),
        "GPUWORKER_API_URL": stack.url,
        "GPUWORKER_TOKEN": token,
    }

    def cli(*args: str, as_token: str = token) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", "api-keys", *args],
            env={**env, "GPUWORKER_TOKEN": as_token},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = cli("create", "deploy bot")
    assert created.returncode == 0, created.stderr
    key = created.stdout.split("key: ", 1)[1].split()[0]
    assert well_formed(key), created.stdout
    assert "only time" in created.stderr
    key_id = next(k["id"] for k in me_keys(stack, token))

    # The key itself serves as the CLI's token.
    listed = cli("list", as_token=key)
    assert listed.returncode == 0, listed.stderr
    assert "deploy bot" in listed.stdout and key_id in listed.stdout
    assert key not in listed.stdout and key.removeprefix(PREFIX) not in listed.stdout
    as_json = cli("list", "--json")
    assert msgspec.json.decode(as_json.stdout)[0]["id"] == key_id

    revoked = cli("revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert key_id in revoked.stdout
    assert me_keys(stack, token) == []
    refused = cli("list", as_token=key)
    assert refused.returncode == 1
    assert "401" in refused.stderr and "API key" in refused.stderr
    missing = cli("revoke", key_id)
    assert missing.returncode == 1 and "404" in missing.stderr


def me_keys(stack: Stack, token: str) -> list[dict[str, Any]]:
    with stack.client(token) as client:
        response = client.get("/api-keys")
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()
    return keys


def test_the_openapi_document_keeps_one_bearer_scheme(stack: Stack) -> None:
    with stack.client() as client:
        spec = client.get("/docs/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["BearerToken"]
    assert scheme["scheme"] == "Bearer" and "API key" in scheme["description"]
    assert spec["security"] == [{"BearerToken": []}]
    assert {"get", "post"} <= set(spec["paths"]["/api-keys"])
    assert "delete" in spec["paths"]["/api-keys/{key_id}"]


# The decider and the key material, without a stack.


def _event(data: msgspec.Struct, actor: str, key_id: str) -> Envelope:
    now = datetime.now(UTC)
    return Envelope(
        id=new_id(),
        type=type(data).__name__,
        version=1,
        aggregate=AggregateRef("api_key", key_id),
        occurred_at=now,
        recorded_at=now,
        actor=actor,
        correlation_id=new_id(),
        causation_id=new_id(),
        data=data,
    )


def test_the_decider_takes_only_a_hash_and_only_the_owners_revoke() -> None:
    hasher = ApiKeyHasher(generate_key())
    key = hasher.mint(None)
    owner, other, key_id = new_id(), new_id(), new_id()
    now = datetime.now(UTC)
    # A clear key (or anything but a 64-digit hex hash) never makes an event.
    for not_a_hash in (key, key.removeprefix(PREFIX), hasher.digest(key).upper(), ""):
        with pytest.raises(BadRequest):
            API_KEY.decide(None, CreateApiKey(actor=owner, at=now, name="k", key_hash=not_a_hash))
    with pytest.raises(BadRequest, match="name"):
        API_KEY.decide(None, CreateApiKey(actor=owner, at=now, name=" ", key_hash="0" * 64))
    [created] = API_KEY.decide(
        None, CreateApiKey(actor=owner, at=now, name=" k ", key_hash=hasher.digest(key))
    )
    state = API_KEY.evolve(None, _event(created, owner, key_id))
    assert (state.owner_id, state.name, state.key_hash) == (owner, "k", hasher.digest(key))
    with pytest.raises(NotFound):
        API_KEY.decide(state, RevokeApiKey(actor=other, at=now))
    [revoked] = API_KEY.decide(state, RevokeApiKey(actor=owner, at=now))
    state = API_KEY.evolve(state, _event(revoked, owner, key_id))
    assert state.revoked
    with pytest.raises(NotFound):
        API_KEY.decide(state, RevokeApiKey(actor=owner, at=now))


def test_keys_are_random_or_fixed_by_their_seed_and_hashed_under_the_secret_key() -> None:
    hasher = ApiKeyHasher(generate_key())
    fresh = {hasher.mint(None) for _ in range(100)}
    assert len(fresh) == 100 and all(well_formed(k) for k in fresh)
    seed = new_id()
    assert hasher.mint(seed) == hasher.mint(seed) != hasher.mint(new_id())
    # Another deployment's secret gives other keys from the same seed, and other hashes.
    elsewhere = ApiKeyHasher(generate_key())
    assert elsewhere.mint(seed) != hasher.mint(seed)
    key = hasher.mint(None)
    assert elsewhere.digest(key) != hasher.digest(key)
    assert len(hasher.digest(key)) == 64 and key not in hasher.digest(key)


async def _store(pool: AsyncConnectionPool[Any], state: ApiKeyState, sequence: int) -> None:
    """Write a key's row as the projector would."""
    async with pool.connection() as conn:
        await API_KEYS.copy_in(conn, {state.id: (state, sequence)})
        await conn.commit()


async def test_the_lookup_cache_forgets_a_key_within_a_second_even_without_notifications(
    pool: AsyncConnectionPool[Any], checkpoint_watcher: CheckpointWatcher
) -> None:
    hasher = ApiKeyHasher(generate_key())
    clock = ManualClock()
    lookup = ApiKeyLookup(pool, checkpoint_watcher, hasher, clock=clock)
    key, owner = hasher.mint(None), new_id()
    state = ApiKeyState(
        id=new_id(),
        owner_id=owner,
        name="k",
        key_hash=hasher.digest(key),
        created_at=datetime.now(UTC),
    )
    await _store(pool, state, 1)
    holder = await lookup.holder_of(key)
    assert holder is not None and (holder.key_id, holder.user_id) == (state.id, owner)
    assert await lookup.holder_of(key) == holder
    assert lookup.hits == 1

    # Revoked behind the watcher's back (no checkpoint, no NOTIFY): kept for under a second...
    async with pool.connection() as conn:
        await conn.execute("UPDATE api_keys SET deleted = true WHERE id = %s", (state.id,))
        await conn.commit()
    clock.now += 0.9
    assert await lookup.holder_of(key) == holder
    # ...and not one second.
    clock.now += 0.1
    assert await lookup.holder_of(key) is None
    assert len(lookup) == 0

    # Unknown, malformed and revoked keys are never kept.
    assert await lookup.holder_of(hasher.mint(None)) is None
    assert await lookup.holder_of(key + "x") is None
    assert len(lookup) == 0


async def test_the_lookup_cache_forgets_a_key_when_the_checkpoint_moves(
    pool: AsyncConnectionPool[Any], checkpoint_watcher: CheckpointWatcher
) -> None:
    hasher = ApiKeyHasher(generate_key())
    lookup = ApiKeyLookup(pool, checkpoint_watcher, hasher, clock=ManualClock())
    key = hasher.mint(None)
    state = ApiKeyState(
        id=new_id(),
        owner_id=new_id(),
        name="k",
        key_hash=hasher.digest(key),
        created_at=datetime.now(UTC),
    )
    await _store(pool, state, 1)
    assert await lookup.holder_of(key) is not None
    assert await lookup.holder_of(key) is not None
    assert lookup.hits == 1
    # The projector's revoke: the row and the checkpoint in one transaction, then NOTIFY.
    async with pool.connection() as conn:
        await checkpoints.ensure(conn, API_KEYS.name)
        await conn.execute("UPDATE api_keys SET deleted = true WHERE id = %s", (state.id,))
        await checkpoints.advance(conn, API_KEYS.name, 2)
        await conn.commit()
    for _ in range(100):
        if checkpoint_watcher.seen(API_KEYS.name) >= 2:
            break
        await asyncio.sleep(0.01)
    # The clock has not moved: only the checkpoint tells the cache.
    assert await lookup.holder_of(key) is None
