"""Postings: double-entry transfers in integer micro-USD, each with an id fixed by what it covers.

A charge moves money from `customer:<user>` to `revenue:<product>`; a credit from
`funding:<source>` to `customer:<user>`; a correction is a reversing transfer, never an edit.

A session is charged by accruals while it is open (`accrue`: whole seconds elapsed, rounded down)
and settled once when it closes (`settle`: its length rounded up, once). Each posting is the
difference between what the session owes for all its seconds so far and what was already posted,
so however the session was split, its postings sum to exactly
floor(unit price x quantity x seconds / per_seconds). A clock that ran ahead (an accrual past the
real end) is corrected at settlement by a reversal.

Posting ids are derived from the session and the second they reach (or from the event of a
credit), so a redelivered event or a ledger restarted mid-way can never post twice: the store
refuses a second posting with the same id. An accrual's id is the MD5 of its name in UUID form
(`accrual_id`), because the accrual cycle computes it inside PostgreSQL (ledger/accruals.py),
which has MD5 built in and not the SHA-1 of a UUIDv5; `accrue` here is the reference it is tested
against."""

from __future__ import annotations

import hashlib
import math
import uuid
from datetime import datetime, timedelta

import msgspec

from events.ids import derived_id
from ledger.usage import Session


def customer(user_id: str) -> str:
    return f"customer:{user_id}"


def revenue(product: str) -> str:
    return f"revenue:{product}"


def funding(source: str) -> str:
    return f"funding:{source}"


class Posting(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    # The end of the period the posting covers (for a credit: when it was granted).
    at: datetime
    user_id: str
    debit: str
    credit: str
    amount_micros: int
    # usage | reversal | credit
    kind: str
    product: str | None = None
    meter: str | None = None
    resource_id: str | None = None
    gpu_type_id: str | None = None
    quantity: int = 0
    unit_price_micros: int = 0
    # Seconds of usage the posting adds (negative for a reversal of seconds charged past the end).
    seconds: int = 0
    session_id: str | None = None
    rate_card_version: str | None = None
    reason: str | None = None

    @property
    def signed_micros(self) -> int:
        """What the posting costs the customer (a credit or a reversal is negative)."""
        return self.amount_micros if self.kind == "usage" else -self.amount_micros


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """How far a session has been posted."""

    session: Session
    posted_micros: int = 0
    billed_seconds: int = 0
    ended_at: datetime | None = None
    # Settled: closed and posted to its last micro-dollar; nothing more will ever be posted.
    settled: bool = False


def owed(session: Session, seconds: int) -> int:
    """floor(unit price x quantity x seconds / per_seconds), in integers."""
    return (session.unit_price_micros * session.quantity * max(seconds, 0)) // session.per_seconds


def elapsed(session: Session, at: datetime, round_up: bool) -> int:
    seconds = (at - session.started_at) / timedelta(seconds=1)
    return max(0, math.ceil(seconds) if round_up else math.floor(seconds))


def unposted(progress: Progress, now: datetime) -> int:
    """What an open session owes beyond its postings, right now (what the next accrual would
    post)."""
    if progress.settled:
        return 0
    return max(
        0, owed(progress.session, elapsed(progress.session, now, False)) - progress.posted_micros
    )


def accrual_id(session_id: str, seconds: int) -> str:
    """The id of a session's accrual up to its `seconds`-th second (not a security hash: its name
    is ours, and an id only has to be fixed by what it covers)."""
    name = f"posting\x1f{session_id}\x1faccrual:{seconds}".encode()
    return str(uuid.UUID(hashlib.md5(name, usedforsecurity=False).hexdigest()))


def _posting(progress: Progress, seconds: int, amount: int, kind: str, posting_id: str) -> Posting:
    session = progress.session
    charge = amount >= 0
    return Posting(
        id=posting_id,
        at=session.started_at + timedelta(seconds=seconds),
        user_id=session.user_id,
        debit=customer(session.user_id) if charge else revenue(session.product),
        credit=revenue(session.product) if charge else customer(session.user_id),
        amount_micros=abs(amount),
        kind=kind if charge else "reversal",
        product=session.product,
        meter=session.meter,
        resource_id=session.resource_id,
        gpu_type_id=session.gpu_type_id,
        quantity=session.quantity,
        unit_price_micros=session.unit_price_micros,
        seconds=seconds - progress.billed_seconds,
        session_id=session.id,
        rate_card_version=session.rate_card_version,
    )


def accrue(progress: Progress, now: datetime) -> tuple[Progress, Posting | None]:
    """Charge an open session for its whole seconds up to `now`."""
    if progress.settled:
        return progress, None
    seconds = elapsed(progress.session, now, round_up=False)
    if seconds <= progress.billed_seconds:
        return progress, None
    amount = owed(progress.session, seconds) - progress.posted_micros
    after = msgspec.structs.replace(
        progress, billed_seconds=seconds, posted_micros=progress.posted_micros + amount
    )
    if amount == 0:
        return after, None
    return after, _posting(
        progress, seconds, amount, "usage", accrual_id(progress.session.id, seconds)
    )


def settle(progress: Progress, ended_at: datetime) -> tuple[Progress, Posting | None]:
    """Close a session: its length rounded up once; post what is still owed, or reverse what was
    charged past its end."""
    if progress.settled:
        return progress, None
    seconds = elapsed(progress.session, ended_at, round_up=True)
    amount = owed(progress.session, seconds) - progress.posted_micros
    after = msgspec.structs.replace(
        progress,
        billed_seconds=seconds,
        posted_micros=progress.posted_micros + amount,
        ended_at=ended_at,
        settled=True,
    )
    if amount == 0:
        return after, None
    return after, _posting(
        progress, seconds, amount, "usage", derived_id("posting", progress.session.id, "final")
    )


def credit(
    event_id: str, user_id: str, amount_micros: int, source: str, at: datetime, reason: str
) -> Posting:
    """Money for the customer to spend, from a funding account (signup, operator, payment)."""
    return Posting(
        id=derived_id("posting", "credit", event_id),
        at=at,
        user_id=user_id,
        debit=funding(source),
        credit=customer(user_id),
        amount_micros=amount_micros,
        kind="credit",
        reason=reason,
    )
