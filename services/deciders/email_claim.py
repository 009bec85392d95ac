"""Who holds an email address: one account per email, enforced by the event store.

User ids are random, so nothing about an account can be guessed from its email. What stops a second
account for one email is this aggregate: its id is derived from the normalised email, the first
claim appends at expected sequence 0 and wins, and every later claim finds it and changes nothing;
the state it answers with names the account's user id. The derived id is safe to be guessable: it
is never shown to users nor accepted from them, it only brings the claims of one email together."""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.email_claim import EmailClaimed
from events.envelope import Envelope
from events.ids import derived_id
from services.deciders.decider import Command, Decider
from services.errors import BadRequest


def normalise_email(email: str) -> str:
    return email.strip().lower()


def claim_id(email: str) -> str:
    return derived_id("email", normalise_email(email))


class EmailClaimState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    email: str
    user_id: str
    claimed_at: datetime


class ClaimEmail(Command, frozen=True, kw_only=True):
    """Claim `email` for the account `user_id`, unless someone holds it already."""

    email: str
    user_id: str


def decide(state: EmailClaimState | None, command: ClaimEmail) -> list[msgspec.Struct]:
    if state is not None:
        return []  # already held: the state says by whom
    if not command.email or command.email != normalise_email(command.email):
        raise BadRequest("email must be given normalised (trimmed, lower case)")
    return [EmailClaimed(email=command.email, user_id=command.user_id)]


def evolve(state: EmailClaimState | None, event: Envelope) -> EmailClaimState:
    data = event.data
    if not isinstance(data, EmailClaimed) or state is not None:
        raise TypeError(f"email claim cannot apply {event.type}")
    return EmailClaimState(
        id=event.aggregate.id, email=data.email, user_id=data.user_id, claimed_at=event.occurred_at
    )


EMAIL_CLAIM = Decider[EmailClaimState](
    aggregate_type="email_claim",
    state_type=EmailClaimState,
    command_type=ClaimEmail,
    decide=decide,
    evolve=evolve,
)
