"""Which image a tenant's container may be created from (issue 7, findings 2 and 3).

A host has one Docker image store, shared by every tenant on it. Once Alice's private image has
been pulled with her credential it is on disk, and Docker would create Bob's container from it if
he only named it. Two ways to stop that: keep a record of which tenant may use which digest, or ask
the registry each time. A record goes stale the moment the registry's answer changes (Alice
revokes a collaborator's access, deletes the tag, rotates a token), and would be one more piece of
state to keep right across agents and restarts. So the agent asks, as Kubernetes' AlwaysPullImages
admission makes the kubelet do: before every container create it asks the registry for the
reference's manifest with THIS tenant's credential (and no other: never the host's own `docker
login`). The registry says yes, and which digest the name stands for now, or no. Then the image is
pulled by that digest (nothing to fetch when the layers are present) and the container is created
from it (`repository@sha256:…`), never from the name, so a tag moved by a concurrent pull cannot
swap the image between the check and the create. (The manifest check is Docker's distribution
inspect, not a plain `docker pull`: a pull of a digest the host already has never contacts the
registry, which would let anyone who knows a digest use it.)

A short in-memory cache of (tenant, canonical reference, credential fingerprint) -> verified
reference spares the registry a burst of creates. It is keyed by tenant, so one tenant's check
never answers for another, and by a keyed hash of the credential, so a changed or removed
credential is checked afresh; entries live `verify_ttl_s` (60 s by default, the longest a revoked
access can still start a container on a host that checked it just before).

Images the operator put on the host on purpose (`GPUWORKER_PRELOADED_IMAGES`, comma-separated
name patterns such as `local/*`, the default) are used without a pull, and they are never pulled:
no tenant can make the agent place an image under such a name. They are looked up by their tag and
created from their image ID, and a lookup that Docker resolved any other way (an ID prefix that
happens to look like a name) is refused.

Before any pull the reference is parsed with the reference grammar: image IDs and ID prefixes are
refused, and so is a registry on a local or private address, by its literal address and by what
its name resolves to just before the pull (`services.images.registry_policy`). What the daemon
says when a pull fails is logged for the operator and never shown to the customer, who gets one of
a few reasons they can act on (`pull_failure_reason`)."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.agent.runtime import ImagePullFailed, RegistryCredentials
from services.images import reference
from services.images.reference import ImageReference
from services.images.registry_policy import RegistryPolicy, RegistryRefused

PRELOADED_IMAGES_ENV = "GPUWORKER_PRELOADED_IMAGES"
DEFAULT_PRELOADED = ("local/*",)
# Docker Hub's name is not the host its daemon pulls from.
_REGISTRY_HOSTS = {reference.DEFAULT_DOMAIN: "registry-1.docker.io"}
_RESOLVE_TIMEOUT_S = 5.0

NOT_FOUND_OR_DENIED = (
    "image not found or access denied: check the image name and the template's registry credential"
)
NOT_REACHABLE = "registry not reachable: check the registry's name and port, or try again later"
NOT_USABLE = (
    "the registry's answer could not be used: check the image name, or contact support if this "
    "persists"
)
_NOT_REACHABLE_WORDS = (
    "dial tcp",
    "connection refused",
    "connection reset",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "tls:",
    "x509",
    "server gave http response to https client",
    "eof",
    "timeout exceeded",
    "context deadline exceeded",
)
_NOT_FOUND_WORDS = (
    "unauthorized",
    "authentication required",
    "denied",
    "forbidden",
    "not found",
    "manifest unknown",
    "name unknown",
    "does not exist",
    "no basic auth credentials",
)


def pull_failure_reason(raw: str) -> str:
    """The daemon's words for a failed pull, as a reason a customer can act on."""
    text = raw.lower()
    if any(word in text for word in _NOT_REACHABLE_WORDS):
        return NOT_REACHABLE
    if any(word in text for word in _NOT_FOUND_WORDS):
        return NOT_FOUND_OR_DENIED
    return NOT_USABLE


def pull_failed(image: str, reason: str) -> ImagePullFailed:
    return ImagePullFailed(f"image pull failed for {image}: {reason}")


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to now (what the daemon is about to connect to)."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT_S
    )
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class ImagePolicy:
    registries: RegistryPolicy = field(default_factory=RegistryPolicy)
    preloaded: tuple[str, ...] = DEFAULT_PRELOADED
    verify_ttl_s: float = 60.0

    @classmethod
    def from_env(cls) -> ImagePolicy:
        raw = os.environ.get(PRELOADED_IMAGES_ENV)
        preloaded = (
            DEFAULT_PRELOADED
            if raw is None
            else tuple(p.strip() for p in raw.split(",") if p.strip())
        )
        return cls(registries=RegistryPolicy.from_env(), preloaded=preloaded)


class ImageAccess:
    """The checks and the cache; the runtime does the pulls and lookups themselves."""

    def __init__(
        self,
        policy: ImagePolicy | None = None,
        resolve: Resolver = resolve_host,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy if policy is not None else ImagePolicy.from_env()
        self._resolve = resolve
        self._clock = clock
        self._verified: dict[tuple[str, str, str], tuple[float, str]] = {}
        # Fingerprints of credentials are keyed per process: nothing here can be guessed offline.
        self._key = secrets.token_bytes(32)

    def reference(self, image: str) -> ImageReference:
        """The parsed reference; ImagePullFailed for an image ID or a refused registry."""
        try:
            parsed = reference.parse(image)
            self.policy.registries.check(parsed)
        except (reference.InvalidReference, RegistryRefused) as exc:
            raise pull_failed(image, str(exc)) from None
        return parsed

    def is_preloaded(self, ref: ImageReference) -> bool:
        names = (ref.familiar_repository, ref.familiar(), ref.repository, ref.canonical())
        return any(fnmatch.fnmatchcase(n, p) for p in self.policy.preloaded for n in names)

    async def check_resolution(self, image: str, ref: ImageReference) -> None:
        """Just before a pull: the registry's name must not resolve to a refused address."""
        if self.policy.registries.is_allowed_by_name(ref):
            return
        host = _REGISTRY_HOSTS.get(ref.domain, ref.host)
        try:
            addresses = await self._resolve(host, ref.port or 443)
        except (OSError, TimeoutError):
            raise pull_failed(image, NOT_REACHABLE) from None
        try:
            self.policy.registries.check_resolved(ref, addresses)
        except RegistryRefused as exc:
            raise pull_failed(image, str(exc)) from None

    def _key_of(
        self, owner_id: str, ref: ImageReference, auth: RegistryCredentials | None
    ) -> tuple[str, str, str]:
        fingerprint = ""
        if auth is not None:
            material = "\0".join((auth.username, auth.password, auth.registry or ""))
            fingerprint = hmac.new(self._key, material.encode(), hashlib.sha256).hexdigest()
        return owner_id, ref.canonical(), fingerprint

    def verified(
        self, owner_id: str, ref: ImageReference, auth: RegistryCredentials | None
    ) -> str | None:
        """The reference this tenant's recent pull verified, if still fresh."""
        key = self._key_of(owner_id, ref, auth)
        entry = self._verified.get(key)
        if entry is None:
            return None
        expires, resolved = entry
        if self._clock() >= expires:
            del self._verified[key]
            return None
        return resolved

    def remember(
        self, owner_id: str, ref: ImageReference, auth: RegistryCredentials | None, resolved: str
    ) -> None:
        now = self._clock()
        # Keep the cache from growing without bound: expired entries go on every write.
        for key in [k for k, (expires, _) in self._verified.items() if expires <= now]:
            del self._verified[key]
        expires = now + self.policy.verify_ttl_s
        self._verified[self._key_of(owner_id, ref, auth)] = (expires, resolved)

    def forget(self, owner_id: str, image: str, auth: RegistryCredentials | None) -> None:
        self._verified.pop(self._key_of(owner_id, self.reference(image), auth), None)
