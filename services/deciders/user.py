"""User accounts and refresh-token families (rotation on every use, reuse revokes the family).

The aggregate id is random (UUIDv7), so no one can compute another's id from an email; "one account
per email" is the email claim's job (email_claim.py), which names the id a signup must use. A second
signup for that id appends at expected sequence 0 and loses. (Accounts made before claims existed
have ids derived from their email; they read the same.)"""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.envelope import Envelope
from events.user import (
    CreditGranted,
    RefreshFamilyRevoked,
    RefreshTokenIssued,
    RefreshTokenRotated,
    SpendControlsChanged,
    SshPublicKeysSet,
    UserSignedUp,
)
from services.deciders.decider import Command, Decider, is_system
from services.errors import BadRequest, Conflict, NotFound, Unauthorized
from services.ssh_keys import key_problem

ACCOUNT_EXISTS = "an account with this email already exists; log in instead"
# RunPod's default: a runaway bill is what GPU-cloud customers fear most.
DEFAULT_SPEND_LIMIT_PER_HOUR_MICROS = 80_000_000
MAX_CREDIT_MICROS = 1_000_000 * 1_000_000  # one credit of at most $1,000,000


class RefreshFamily(msgspec.Struct, kw_only=True, frozen=True):
    current_hash: str
    expires_at: datetime
    retired_hashes: tuple[str, ...] = ()
    revoked_reason: str | None = None


class UserState(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    email: str
    name: str
    password_hash: str
    created_at: datetime
    families: dict[str, RefreshFamily] = {}
    spend_limit_per_hour_micros: int = DEFAULT_SPEND_LIMIT_PER_HOUR_MICROS
    monthly_budget_micros: int | None = None
    # Every credit granted, for the account's own history; the balance lives in the ledger.
    credited_micros: int = 0
    # OpenSSH public key lines (services/ssh_keys.py), given to instances at start.
    ssh_public_keys: list[str] = []
    version: int = 0

    def family_of(self, token_hash: str) -> tuple[str, RefreshFamily] | None:
        for family_id, family in self.families.items():
            if token_hash == family.current_hash or token_hash in family.retired_hashes:
                return family_id, family
        return None


class SignUp(Command, frozen=True, kw_only=True):
    # Granted with the account (GPUWORKER_SIGNUP_CREDIT), so a new user can try everything.
    signup_credit_micros: int = 0
    email: str
    name: str
    password_hash: str
    family_id: str
    token_hash: str
    expires_at: datetime


class GrantCredit(Command, frozen=True, kw_only=True):
    """From an operator (actor `system:cli`) or the sign-up itself."""

    amount_micros: int
    source: str
    reason: str


class SetSpendControls(Command, frozen=True, kw_only=True):
    spend_limit_per_hour_micros: int
    monthly_budget_micros: int | None


class SetSshPublicKeys(Command, frozen=True, kw_only=True):
    """The whole list: the api has normalised each key (services/ssh_keys.py)."""

    keys: list[str]


class StartSession(Command, frozen=True, kw_only=True):
    """Issued by the api after it has verified the password."""

    family_id: str
    token_hash: str
    expires_at: datetime


class RotateRefreshToken(Command, frozen=True, kw_only=True):
    presented_hash: str
    token_hash: str
    expires_at: datetime


class EndSession(Command, frozen=True, kw_only=True):
    """Log out: the family of the presented token (current, not retired) ends for good."""

    presented_hash: str


UserCommand = (
    SignUp
    | StartSession
    | RotateRefreshToken
    | EndSession
    | GrantCredit
    | SetSpendControls
    | SetSshPublicKeys
)


def _refuse_known_hash(state: UserState, token_hash: str) -> None:
    """A new refresh token must be new: a hash the account already holds (current or retired, in
    any family) would sit in two places at once, and a retired hash made current again would turn a
    stolen copy back into a valid token instead of revoking the family."""
    if state.family_of(token_hash) is not None:
        raise Conflict("refresh token hash already in use; issue a new token")


def decide(state: UserState | None, command: UserCommand) -> list[msgspec.Struct]:
    match command:
        case SignUp():
            if state is not None:
                raise Conflict(ACCOUNT_EXISTS)
            if not command.name.strip():
                raise BadRequest("name must not be empty")
            signed_up: list[msgspec.Struct] = [
                UserSignedUp(
                    email=command.email, name=command.name, password_hash=command.password_hash
                ),
                RefreshTokenIssued(
                    family_id=command.family_id,
                    token_hash=command.token_hash,
                    expires_at=command.expires_at,
                ),
            ]
            if command.signup_credit_micros > 0:
                signed_up.append(
                    CreditGranted(
                        amount_micros=command.signup_credit_micros,
                        source="signup",
                        reason="welcome credit",
                    )
                )
            return signed_up
        case GrantCredit():
            if state is None:
                raise NotFound("user not found")
            if not is_system(command.actor):
                raise NotFound("user not found")
            if not 0 < command.amount_micros <= MAX_CREDIT_MICROS:
                raise BadRequest("a credit must be more than $0 and at most $1,000,000")
            if not command.reason.strip():
                raise BadRequest("a credit needs a reason")
            return [
                CreditGranted(
                    amount_micros=command.amount_micros,
                    source=command.source,
                    reason=command.reason.strip(),
                )
            ]
        case SetSpendControls():
            if state is None or state.id != command.actor:
                raise NotFound("user not found")
            if command.spend_limit_per_hour_micros <= 0:
                raise BadRequest("field `spendLimitPerHour`: must be more than 0")
            if command.monthly_budget_micros is not None and command.monthly_budget_micros < 0:
                raise BadRequest("field `monthlyBudget`: must not be negative")
            unchanged = (
                command.spend_limit_per_hour_micros == state.spend_limit_per_hour_micros
                and command.monthly_budget_micros == state.monthly_budget_micros
            )
            if unchanged:
                return []
            return [
                SpendControlsChanged(
                    spend_limit_per_hour_micros=command.spend_limit_per_hour_micros,
                    monthly_budget_micros=command.monthly_budget_micros,
                )
            ]
        case SetSshPublicKeys():
            if state is None or state.id != command.actor:
                raise NotFound("user not found")
            if problem := key_problem(command.keys):
                raise BadRequest(f"field `sshPublicKeys`: {problem}")
            if command.keys == state.ssh_public_keys:
                return []
            return [SshPublicKeysSet(keys=command.keys)]
        case StartSession():
            if state is None:
                raise NotFound("user not found")
            if command.family_id in state.families:
                raise Conflict("refresh-token family already exists")
            _refuse_known_hash(state, command.token_hash)
            return [
                RefreshTokenIssued(
                    family_id=command.family_id,
                    token_hash=command.token_hash,
                    expires_at=command.expires_at,
                )
            ]
        case RotateRefreshToken():
            found = state.family_of(command.presented_hash) if state else None
            if found is None:
                raise Unauthorized("refresh token is not valid; log in again")
            family_id, family = found
            assert state is not None  # found came from it
            if family.revoked_reason is not None:
                raise Unauthorized("refresh token was revoked; log in again")
            if command.presented_hash != family.current_hash:
                # A rotated token came back: someone holds a copy. Kill the whole family; the api
                # sees the revocation in the returned state and answers 401.
                return [RefreshFamilyRevoked(family_id=family_id, reason="reuse")]
            if command.at >= family.expires_at:
                raise Unauthorized("refresh token has expired; log in again")
            _refuse_known_hash(state, command.token_hash)
            return [
                RefreshTokenRotated(
                    family_id=family_id,
                    previous_hash=command.presented_hash,
                    token_hash=command.token_hash,
                    expires_at=command.expires_at,
                )
            ]
        case EndSession():
            found = state.family_of(command.presented_hash) if state else None
            if state is None or state.id != command.actor or found is None:
                raise Unauthorized("session is not valid; log in again")
            family_id, family = found
            if family.revoked_reason is not None:
                return []  # ended already (a logout sent twice)
            if command.presented_hash != family.current_hash:
                raise Unauthorized("session is not valid; log in again")
            return [RefreshFamilyRevoked(family_id=family_id, reason="logout")]
    raise BadRequest(f"unknown command {type(command).__name__}")


def evolve(state: UserState | None, event: Envelope) -> UserState:
    data = event.data
    if isinstance(data, UserSignedUp):
        return UserState(
            id=event.aggregate.id,
            email=data.email,
            name=data.name,
            password_hash=data.password_hash,
            created_at=event.occurred_at,
            version=1,
        )
    assert state is not None, f"{event.type} before UserSignedUp"
    families = dict(state.families)
    if isinstance(data, RefreshTokenIssued):
        families[data.family_id] = RefreshFamily(
            current_hash=data.token_hash, expires_at=data.expires_at
        )
    elif isinstance(data, RefreshTokenRotated):
        old = families[data.family_id]
        families[data.family_id] = msgspec.structs.replace(
            old,
            current_hash=data.token_hash,
            expires_at=data.expires_at,
            retired_hashes=(*old.retired_hashes, data.previous_hash),
        )
    elif isinstance(data, RefreshFamilyRevoked):
        families[data.family_id] = msgspec.structs.replace(
            families[data.family_id], revoked_reason=data.reason
        )
    elif isinstance(data, CreditGranted):
        return msgspec.structs.replace(
            state,
            credited_micros=state.credited_micros + data.amount_micros,
            version=state.version + 1,
        )
    elif isinstance(data, SshPublicKeysSet):
        return msgspec.structs.replace(state, ssh_public_keys=data.keys, version=state.version + 1)
    elif isinstance(data, SpendControlsChanged):
        return msgspec.structs.replace(
            state,
            spend_limit_per_hour_micros=data.spend_limit_per_hour_micros,
            monthly_budget_micros=data.monthly_budget_micros,
            version=state.version + 1,
        )
    else:
        raise TypeError(f"user cannot apply {event.type}")
    return msgspec.structs.replace(state, families=families, version=state.version + 1)


USER = Decider[UserState](
    aggregate_type="user",
    state_type=UserState,
    command_type=UserCommand,
    decide=decide,
    evolve=evolve,
)
