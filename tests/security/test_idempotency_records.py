"""Finding 10: idempotency records expire for real, and no response holding tokens is kept.

Nothing purged records after their 24 h, and anonymous requests (/auth/signup, /auth/login,
/auth/refresh) were stored and replayed: whoever repeated a login's key and body within 24 h got
that login's tokens back."""

from __future__ import annotations

import uuid

import psycopg

from services.api.idempotency import PURGE_BATCH
from tests.api_helpers import PASSWORD, assert_error, signup, template_body, user_client
from tests.servers import Stack


def _key() -> dict[str, str]:
    return {"idempotency-key": f"key-{uuid.uuid4().hex}"}


def _stored(stack: Stack, key: dict[str, str]) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE key = %s", (key["idempotency-key"],)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_auth_responses_are_never_stored_nor_replayed(stack: Stack) -> None:
    _, _, email = signup(stack)
    with stack.client() as client:
        # Login: each request is a login of its own, with its own tokens.
        key = _key()
        body = {"email": email, "password": PASSWORD}
        first = client.post("/auth/login", json=body, headers=key)
        second = client.post("/auth/login", json=body, headers=key)
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert first.json()["refresh_token"] != second.json()["refresh_token"]
        assert _stored(stack, key) == 0

        # Refresh: repeating it is a reuse of the refresh token, never a copy of the new tokens.
        key = _key()
        refresh = {"refresh_token": first.json()["refresh_token"]}
        rotated = client.post("/auth/refresh", json=refresh, headers=key)
        assert rotated.status_code == 200, rotated.text
        again = client.post("/auth/refresh", json=refresh, headers=key)
        assert_error(again, 401, "already used")
        assert rotated.json()["refresh_token"] not in again.text
        assert _stored(stack, key) == 0

        # Signup: the account exists after the first, so the second is a conflict, not a replay.
        key = _key()
        new = {
            "name": "Idem",
            "email": f"idem-{uuid.uuid4().hex}@example.com",
            "password": PASSWORD,
        }
        created = client.post("/auth/signup", json=new, headers=key)
        assert created.status_code == 201, created.text
        repeated = client.post("/auth/signup", json=new, headers=key)
        assert_error(repeated, 409)
        assert created.json()["access_token"] not in repeated.text
        assert _stored(stack, key) == 0


def test_expired_records_are_purged_a_bounded_batch_at_a_time(stack: Stack) -> None:
    scope = f"purge-test-{uuid.uuid4().hex}"
    expired = PURGE_BATCH + PURGE_BATCH // 2
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, created_at)"
            " SELECT %s, 'old-' || n, 'h', now() - interval '25 hours' - n * interval '1 second'"
            " FROM generate_series(1, %s) AS n",
            (scope, expired),
        )
        conn.execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, created_at)"
            " VALUES (%s, 'fresh', 'h', now() - interval '23 hours')",
            (scope,),
        )

    def remaining() -> tuple[int, int]:
        with psycopg.connect(stack.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE key LIKE 'old-%%'),"
                " count(*) FILTER (WHERE key = 'fresh')"
                " FROM idempotency_keys WHERE scope = %s",
                (scope,),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    with user_client(stack) as client:
        created = client.post("/templates", json=template_body(), headers=_key())
        assert created.status_code == 201, created.text
        # One claim purges one batch, oldest first: bounded work per request.
        assert remaining() == (expired - PURGE_BATCH, 1)
        created = client.post("/templates", json=template_body(), headers=_key())
        assert created.status_code == 201, created.text
        # Every expired record is gone; the one still within its 24 h stays.
        assert remaining() == (0, 1)
