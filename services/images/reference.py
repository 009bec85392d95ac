"""Image references, parsed with the grammar of distribution/reference (what Docker itself uses).

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] path           domain := host [ ":" port ]
    host      := domain-name | "[" IPv6 "]"    path   := component ( "/" component )*

A customer's image name decides which host the Docker daemon contacts, so it is read exactly as the
daemon will read it (`ParseNormalizedNamed`: "busybox" is docker.io/library/busybox:latest, the
first component is a registry only if it has a "." or ":" or is "localhost"), never guessed with
string splitting. Strings the daemon would resolve as a local image ID instead of a name (a bare
hexadecimal ID or prefix, "sha256:…") are refused: they would let one tenant name another's image
without ever saying where it came from. Pure: no I/O."""

from __future__ import annotations

import re
from typing import Final

import msgspec

DEFAULT_DOMAIN: Final = "docker.io"
LEGACY_DEFAULT_DOMAIN: Final = "index.docker.io"
OFFICIAL_PREFIX: Final = "library/"
DEFAULT_TAG: Final = "latest"
NAME_TOTAL_LENGTH_MAX: Final = 255

# The pieces of distribution/reference's regexp.go, verbatim.
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"((?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::({_TAG}))?(?:@({_DIGEST}))?",
    re.ASCII,
)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}", re.ASCII)
# What the daemon's image lookup would take as an image ID or a prefix of one.
_ID_LIKE = re.compile(r"(?:sha256|sha384|sha512):.*|[0-9a-f]+", re.ASCII | re.DOTALL)


class InvalidReference(ValueError):
    """Not an image reference Docker would pull by name; the message says why, for a person."""


class ImageReference(msgspec.Struct, frozen=True):
    """A normalized reference: `domain` is never empty ("docker.io" for Docker Hub) and a Docker
    Hub path with no namespace has "library/" in front, as the daemon reads it."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    def _host_end(self) -> int:
        return self.domain.index("]") + 1 if self.domain.startswith("[") else 0

    @property
    def host(self) -> str:
        """The domain without its port ("[::1]:5000" gives "::1")."""
        if self.domain.startswith("["):
            return self.domain[1 : self._host_end() - 1]
        return self.domain.partition(":")[0]

    @property
    def port(self) -> int | None:
        _, colon, port = self.domain[self._host_end() :].rpartition(":")
        return int(port) if colon else None

    @property
    def repository(self) -> str:
        """domain/path, e.g. "docker.io/library/busybox"."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """As `docker images` shows it: "busybox", "local/busybox", "nvcr.io/nvidia/pytorch"."""
        if self.domain != DEFAULT_DOMAIN:
            return self.repository
        return self.path.removeprefix(OFFICIAL_PREFIX)

    @property
    def tag_or_default(self) -> str | None:
        """The tag a pull uses: "latest" when neither a tag nor a digest is given."""
        if self.tag is None and self.digest is None:
            return DEFAULT_TAG
        return self.tag

    def familiar(self) -> str:
        """The short form with its tag (defaulted) and digest: "busybox:latest"."""
        return self._with_suffix(self.familiar_repository)

    def canonical(self) -> str:
        """The full form with its tag (defaulted) and digest: "docker.io/library/busybox:latest"."""
        return self._with_suffix(self.repository)

    def _with_suffix(self, repository: str) -> str:
        text = repository
        if self.tag_or_default is not None:
            text += f":{self.tag_or_default}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _split_domain(name: str) -> tuple[str, str]:
    """distribution/reference's splitDockerDomain."""
    first, slash, rest = name.partition("/")
    if not slash or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse(text: str) -> ImageReference:
    """The reference `text` names, normalized as the Docker daemon normalizes it."""
    if not text:
        raise InvalidReference("the image name is empty")
    if _ID_LIKE.fullmatch(text) or _IDENTIFIER.fullmatch(text):
        raise InvalidReference(
            f"{text!r} looks like an image ID: name the image by repository and tag "
            "(e.g. `registry.example.com/team/app:1.0`), not by ID"
        )
    match = _REFERENCE.fullmatch(text)
    if match is None:
        if text.lower() != text and _REFERENCE.fullmatch(text.lower()):
            raise InvalidReference(f"{text!r}: the repository name must be lowercase")
        raise InvalidReference(
            f"{text!r} is not an image reference: expected [registry[:port]/]name[:tag][@digest]"
        )
    name, tag, digest = match.group(1), match.group(2), match.group(3)
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"the repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    domain, path = _split_domain(name)
    if path.lower() != path:
        raise InvalidReference(f"{text!r}: the repository name must be lowercase")
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest)
