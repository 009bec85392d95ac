"""Facts about API keys: long-lived credentials for scripts and SDKs, in place of a login.

An event carries the key's keyed hash only (HMAC-SHA256, see services/security/api_keys.py): the
key itself is shown once, in the response that creates it, and is never stored."""

import msgspec

from events.catalog import registrar

register = registrar("api_key")


@register()
class ApiKeyCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A user created an API key. The actor owns it; `key_hash` is what a presented key must hash
    to."""

    name: str
    key_hash: str


@register()
class ApiKeyRevoked(msgspec.Struct, frozen=True):
    """The key's owner revoked it: it authenticates nothing from now on."""
