"""POST /auth/signup, /auth/login, /auth/refresh, GET /me, and login throttling."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt

from tests.api_helpers import PASSWORD, assert_error, signup, unique_email
from tests.api_helpers import me as _me
from tests.servers import Stack, running_stack


def _assert_tokens(body: dict[str, object]) -> None:
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}, body
    assert body["token_type"] == "Bearer"
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0


def test_signup_returns_tokens_and_me_returns_profile(stack: Stack) -> None:
    email = unique_email("ada")
    with stack.client() as client:
        response = client.post(
            "/auth/signup", json={"name": "Ada Lovelace", "email": email, "password": PASSWORD}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    _assert_tokens(body)
    me = _me(stack, body["access_token"])
    assert set(me) == {
        "id",
        "name",
        "email",
        "createdAt",
        "spendLimitPerHour",
        "spendLimitPerHourMicros",
        "monthlyBudget",
        "monthlyBudgetMicros",
        "sshPublicKeys",
    }
    assert me["sshPublicKeys"] == []
    assert me["spendLimitPerHour"] == 80.0 and me["monthlyBudget"] is None
    assert me["name"] == "Ada Lovelace"
    assert me["email"] == email
    assert isinstance(me["id"], str) and me["id"]
    assert isinstance(me["createdAt"], str) and me["createdAt"]
    assert PASSWORD not in response.text


def test_signup_normalises_email_case_and_whitespace(stack: Stack) -> None:
    local = f"MiXeD-{uuid.uuid4().hex}"
    with stack.client() as client:
        response = client.post(
            "/auth/signup",
            json={"name": "Mixed", "email": f"  {local}@Example.COM  ", "password": PASSWORD},
        )
        assert response.status_code == 201, response.text
        me = _me(stack, response.json()["access_token"])
        assert me["email"] == f"{local.lower()}@example.com"
        # Login with any case and surrounding whitespace finds the same account.
        login = client.post(
            "/auth/login", json={"email": f" {local.upper()}@EXAMPLE.com ", "password": PASSWORD}
        )
    assert login.status_code == 200, login.text
    _assert_tokens(login.json())
    assert _me(stack, login.json()["access_token"])["id"] == me["id"]


def test_duplicate_signup_in_any_case_is_409(stack: Stack) -> None:
    _, _, email = signup(stack)
    with stack.client() as client:
        for variant in (email, email.upper(), f" {email.title()} "):
            response = client.post(
                "/auth/signup", json={"name": "Again", "email": variant, "password": "other-pw-123"}
            )
            assert_error(response, 409)
        # The original password still works: the duplicate changed nothing.
        login = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text


def test_signup_password_length_limits(stack: Stack) -> None:
    with stack.client() as client:
        short = client.post(
            "/auth/signup", json={"name": "S", "email": unique_email(), "password": "x" * 7}
        )
        assert_error(short, 400, "password")
        long = client.post(
            "/auth/signup", json={"name": "L", "email": unique_email(), "password": "x" * 257}
        )
        assert_error(long, 400, "password")
        # The bounds themselves are accepted.
        for length in (8, 256):
            ok = client.post(
                "/auth/signup",
                json={"name": "B", "email": unique_email(), "password": "y" * length},
            )
            assert ok.status_code == 201, ok.text


def test_signup_rejects_bad_email_and_empty_name(stack: Stack) -> None:
    with stack.client() as client:
        bad_email = client.post(
            "/auth/signup", json={"name": "E", "email": "not-an-email", "password": PASSWORD}
        )
        assert_error(bad_email, 400, "email")
        no_name = client.post(
            "/auth/signup", json={"name": "", "email": unique_email(), "password": PASSWORD}
        )
        assert_error(no_name, 400, "name")
        blank_name = client.post(
            "/auth/signup", json={"name": "   ", "email": unique_email(), "password": PASSWORD}
        )
        assert_error(blank_name, 400, "name")


def test_login_happy_path(stack: Stack) -> None:
    access, _, email = signup(stack)
    with stack.client() as client:
        response = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    _assert_tokens(body)
    assert _me(stack, body["access_token"])["id"] == _me(stack, access)["id"]


def test_login_wrong_password_and_unknown_email_are_the_same_401(stack: Stack) -> None:
    # Two login failures from 127.0.0.1 (see the budget in api_helpers).
    _, _, email = signup(stack)
    with stack.client() as client:
        wrong = client.post("/auth/login", json={"email": email, "password": "not-the-password"})
        unknown = client.post("/auth/login", json={"email": unique_email(), "password": PASSWORD})
    wrong_message = assert_error(wrong, 401)
    unknown_message = assert_error(unknown, 401)
    # Nothing tells an attacker whether the account exists.
    assert wrong_message == unknown_message


def test_me_requires_a_token(stack: Stack) -> None:
    with stack.client() as client:
        assert_error(client.get("/me"), 401)
    with stack.client("not.a.jwt") as client:
        assert_error(client.get("/me"), 401)


def test_refresh_rotates_and_reuse_revokes_the_whole_family(stack: Stack) -> None:
    _, first_refresh, email = signup(stack)
    with stack.client() as client:
        # A second login: another family, which a reuse in the first one must not touch.
        other = client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert other.status_code == 200, other.text
        other_refresh = other.json()["refresh_token"]

        rotated = client.post("/auth/refresh", json={"refresh_token": first_refresh})
        assert rotated.status_code == 200, rotated.text
        body = rotated.json()
        _assert_tokens(body)
        second_refresh = body["refresh_token"]
        assert second_refresh != first_refresh
        assert _me(stack, body["access_token"])["email"] == email

        # The old token comes back: 401, and the family is revoked...
        reuse = client.post("/auth/refresh", json={"refresh_token": first_refresh})
        assert_error(reuse, 401)
        # ...so the token that rotation handed out is dead too.
        after = client.post("/auth/refresh", json={"refresh_token": second_refresh})
        assert_error(after, 401)

        # The other login's family still works, and keeps rotating.
        still = client.post("/auth/refresh", json={"refresh_token": other_refresh})
        assert still.status_code == 200, still.text
        _assert_tokens(still.json())
        again = client.post("/auth/refresh", json={"refresh_token": still.json()["refresh_token"]})
        assert again.status_code == 200, again.text


def test_refresh_rejects_garbage_and_unknown_tokens(stack: Stack) -> None:
    _, refresh, _ = signup(stack)
    user_part = refresh.partition(".")[0]
    with stack.client() as client:
        for token in ("garbage", f"{user_part}.not-the-secret", f"{uuid.uuid4()}.abc", "*.>"):
            assert_error(client.post("/auth/refresh", json={"refresh_token": token}), 401)
        assert_error(client.post("/auth/refresh", json={"refresh_token": ""}), 400)
        assert_error(client.post("/auth/refresh", json={}), 400, "refresh_token")
        # None of that hurt the real token.
        ok = client.post("/auth/refresh", json={"refresh_token": refresh})
    assert ok.status_code == 200, ok.text


def test_expired_and_forged_access_tokens_are_401(stack: Stack) -> None:
    access, _, _ = signup(stack)
    user_id = _me(stack, access)["id"]
    secret = stack.env["GPUWORKER_JWT_SECRET"]
    now = int(time.time())

    # Control: a token made this way with a future expiry is accepted...
    valid = jwt.encode({"sub": user_id, "iat": now - 10, "exp": now + 300}, secret, "HS256")
    assert _me(stack, valid)["id"] == user_id
    # ...so the 401s below are about expiry and signature, not about how it was made.
    expired = jwt.encode({"sub": user_id, "iat": now - 600, "exp": now - 60}, secret, "HS256")
    forged = jwt.encode({"sub": user_id, "iat": now - 10, "exp": now + 300}, "x" * 44, "HS256")
    unsigned = jwt.encode({"sub": user_id, "iat": now - 10, "exp": now + 300}, "", "none")
    for token in (expired, forged, unsigned):
        with stack.client(token) as client:
            assert_error(client.get("/me"), 401)
            assert_error(client.get("/templates"), 401)


def test_failed_logins_throttle_per_email(stack: Stack) -> None:
    # Five login failures from 127.0.0.1 (see the budget in api_helpers).
    _, _, email = signup(stack)
    _, _, bystander = signup(stack)
    with stack.client() as client:
        for _ in range(5):
            wrong = client.post("/auth/login", json={"email": email, "password": "guess-guess"})
            assert_error(wrong, 401)
        # Locked now, even with the right password and another spelling of the email.
        for variant in (email, f" {email.upper()} "):
            locked = client.post("/auth/login", json={"email": variant, "password": PASSWORD})
            assert_error(locked, 429, "email")
            assert 0 < int(locked.headers["retry-after"]) <= 900
        # Another account from the same address is unaffected.
        other = client.post("/auth/login", json={"email": bystander, "password": PASSWORD})
    assert other.status_code == 200, other.text


def test_failed_logins_throttle_per_address(tmp_path: Path, pg_base_uri: str) -> None:
    # Its own stack: this spends the whole per-address budget of 127.0.0.1.
    with running_stack(tmp_path, pg_base_uri) as own:
        _, _, victim = signup(own)
        with own.client() as client:
            ok = client.post("/auth/login", json={"email": victim, "password": PASSWORD})
            assert ok.status_code == 200, ok.text
            # 20 failures spread over 5 emails (4 each, under the per-email limit of 5).
            for _ in range(5):
                target = unique_email("guess")
                for _ in range(4):
                    wrong = client.post(
                        "/auth/login", json={"email": target, "password": "guess-guess"}
                    )
                    assert_error(wrong, 401)
            # The address is locked out, even for a correct password of an untouched account.
            locked = client.post("/auth/login", json={"email": victim, "password": PASSWORD})
            assert_error(locked, 429, "address")
            # Signup and refresh are not logins: they still work.
            _, refresh, _ = signup(own)
            refreshed = client.post("/auth/refresh", json={"refresh_token": refresh})
            assert refreshed.status_code == 200, refreshed.text
