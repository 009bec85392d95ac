"""Facts about user accounts and their refresh-token families."""

from datetime import datetime

import msgspec

from events.catalog import registrar

register = registrar("user")


@register()
class UserSignedUp(msgspec.Struct, frozen=True):
    email: str
    name: str
    # An argon2id hash, never the password.
    password_hash: str


@register()
class RefreshTokenIssued(msgspec.Struct, frozen=True):
    family_id: str
    # sha256 of the opaque token; the token itself is only ever in the client's hands.
    token_hash: str
    expires_at: datetime


@register()
class RefreshTokenRotated(msgspec.Struct, frozen=True):
    family_id: str
    previous_hash: str
    token_hash: str
    expires_at: datetime


@register()
class RefreshFamilyRevoked(msgspec.Struct, frozen=True):
    family_id: str
    reason: str


@register()
class CreditGranted(msgspec.Struct, frozen=True, kw_only=True):
    """Money the customer may spend: a signup credit, an operator's grant, a payment."""

    amount_micros: int
    # Where it comes from (the ledger's funding account): signup | operator | payment
    source: str
    reason: str


@register()
class SpendControlsChanged(msgspec.Struct, frozen=True, kw_only=True):
    """What the customer lets themselves spend; None: no monthly budget."""

    spend_limit_per_hour_micros: int
    monthly_budget_micros: int | None


@register()
class SshPublicKeysSet(msgspec.Struct, frozen=True, kw_only=True):
    """The account's SSH public keys now (OpenSSH lines, validated and normalised): the whole
    list, so removing one is setting the others. Instances get them at their next start."""

    keys: list[str]
