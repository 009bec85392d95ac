"""Facts about saved container-registry credentials."""

import msgspec

from events.catalog import registrar

register = registrar("registry_auth")


@register()
class RegistryAuthCreated(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    username: str
    # AES-GCM ciphertext (base64, key id prefixed); the clear password never enters an event.
    password_ciphertext: str


@register()
class RegistryAuthDeleted(msgspec.Struct, frozen=True):
    pass
