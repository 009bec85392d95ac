"""Registry credentials for image pulls, read from the event store and opened only in memory,
just before the pull. The clear password never leaves this process and is never logged."""

from __future__ import annotations

from events.envelope import AggregateRef
from events.store import EventStore
from services.agent.runtime import RegistryCredentials
from services.deciders.registry_auth import REGISTRY_AUTH, RegistryAuthState, sealed_for
from services.images import reference
from services.security.secret_box import SecretBox, SecretBoxError


def registry_of(image: str) -> str | None:
    """The registry (host[:port]) of an image reference; None for Docker Hub or a bad name."""
    try:
        domain = reference.parse(image).domain
    except reference.InvalidReference:
        return None
    return None if domain == reference.DEFAULT_DOMAIN else domain


class RegistryCredentialStore:
    def __init__(self, store: EventStore, box: SecretBox) -> None:
        self._store = store
        self._box = box

    async def for_pull(self, auth_id: str, owner_id: str, image: str) -> RegistryCredentials | None:
        """None when the credential is gone or not the owner's: the pull goes unauthenticated
        and, for a private image, fails with a reason the customer can act on."""
        events = await self._store.load(AggregateRef("registry_auth", auth_id))
        state = REGISTRY_AUTH.fold(None, events)
        if not isinstance(state, RegistryAuthState) or state.deleted or state.owner_id != owner_id:
            return None
        try:
            password = self._box.open(state.password_ciphertext, sealed_for(auth_id))
        except SecretBoxError:
            return None
        return RegistryCredentials(
            username=state.username, password=password, registry=registry_of(image)
        )
