"""User ids are unguessable (issue 7, finding 4): random, not derived from the email, while one
email still holds at most one account (an email claim in the event store says whose it is)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx

from events.email_claim import EmailClaimed
from events.envelope import AggregateRef, Envelope
from events.ids import derived_id, new_id
from events.store import JetStreamEventStore
from services.deciders.catalog import DECIDERS
from services.deciders.email_claim import EMAIL_CLAIM, ClaimEmail, claim_id, decide
from services.nats_permissions import DECIDERS_USER
from services.processes.runner import DeciderRunner
from tests.api_helpers import PASSWORD, assert_error, me, signup, unique_email
from tests.servers import Stack, connect_as

AT = datetime(2026, 11, 29, tzinfo=UTC)


def test_user_ids_are_random_not_derived_from_the_email(stack: Stack) -> None:
    ids = []
    for _ in range(2):
        token, _, email = signup(stack)
        user_id = me(stack, token)["id"]
        # What the old scheme (and anyone who read the source) would compute from the email.
        assert user_id != derived_id("user", email)
        assert uuid.UUID(user_id).version == 7
        ids.append(user_id)
    assert ids[0] != ids[1]


def test_one_email_still_has_one_account(stack: Stack) -> None:
    token, _, email = signup(stack)
    owner = me(stack, token)["id"]
    with stack.client() as client:
        again = client.post(
            "/auth/signup",
            json={"name": "Again", "email": f"  {email.upper()} ", "password": PASSWORD + "x"},
        )
        assert_error(again, 409, "already exists")
        login = client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
    assert me(stack, login.json()["access_token"])["id"] == owner


def test_concurrent_signups_for_one_email_make_one_account(stack: Stack) -> None:
    email = unique_email("race")

    def attempt(i: int) -> int:
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            body = {"name": f"Racer {i}", "email": email, "password": PASSWORD}
            return client.post("/auth/signup", json=body).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(attempt, range(6)))
    assert codes == [201] + [409] * 5, codes


def test_a_claim_left_without_its_account_does_not_lock_the_email(stack: Stack) -> None:
    """The api died between claiming the email and creating the account: the next signup for that
    email completes the claimed account instead of being refused forever."""
    email = unique_email("orphan")
    claimed_for = new_id()

    async def claim() -> None:
        nc = await connect_as(stack.nats, DECIDERS_USER)
        try:
            runner = DeciderRunner(JetStreamEventStore(nc), DECIDERS)
            command = ClaimEmail(actor=claimed_for, at=AT, email=email, user_id=claimed_for)
            reply = await runner.run("email_claim", claim_id(email), command, "t")
            assert reply.error is None, reply.error
        finally:
            await nc.close()

    asyncio.run(claim())
    token, _, _ = signup(stack, email=email)
    assert me(stack, token)["id"] == claimed_for


def test_the_first_claim_of_an_email_wins() -> None:
    first, second = new_id(), new_id()
    claimed = decide(None, ClaimEmail(actor=first, at=AT, email="a@example.com", user_id=first))
    assert claimed == [EmailClaimed(email="a@example.com", user_id=first)]
    event = claimed[0]
    assert isinstance(event, EmailClaimed)
    state = EMAIL_CLAIM.fold(None, [envelope(claim_id("a@example.com"), event)])
    assert state is not None and state.user_id == first
    again = ClaimEmail(actor=second, at=AT, email="a@example.com", user_id=second)
    assert decide(state, again) == [], "a later claim changes nothing; the state names the owner"
    assert claim_id(" A@Example.com ") == claim_id("a@example.com")
    assert claim_id("a@example.com") != derived_id("user", "a@example.com")


def envelope(aggregate_id: str, data: EmailClaimed) -> Envelope:
    return Envelope(
        id=new_id(),
        type="EmailClaimed",
        version=1,
        aggregate=AggregateRef("email_claim", aggregate_id),
        occurred_at=AT,
        recorded_at=AT,
        actor=data.user_id,
        correlation_id="t",
        causation_id="t",
        data=data,
    )


def test_logins_find_accounts_after_the_users_projection_is_rebuilt(stack: Stack) -> None:
    _, _, email = signup(stack)
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "projections", "rebuild", "users"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "rebuilt users" in result.stdout
    with stack.client() as client:
        login = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
