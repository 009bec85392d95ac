"""Facts about user accounts and their refresh-token families."""

from datetime import datetime

import msgspec

from events.catalog import register


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
