"""Facts about who holds an email address."""

import msgspec

from events.catalog import registrar

register = registrar("email_claim")


@register()
class EmailClaimed(msgspec.Struct, frozen=True, kw_only=True):
    """The first claim of a normalised email: its account is the user `user_id` (random)."""

    email: str
    user_id: str
