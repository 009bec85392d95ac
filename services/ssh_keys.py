"""A customer's SSH public keys: what one may be, in the one form we store and hand to containers.

A key reaches a container's environment (`PUBLIC_KEY`) and root's `authorized_keys`, whose lines
may begin with options (`command="…"`, `from=…`): so a key is never stored as the customer wrote it
but rebuilt from what `cryptography` parsed, `<type> <base64> [comment]`, with a comment of
printable characters only. Keys that OpenSSH no longer trusts (DSA, RSA under 2048 bits) are
refused. Bounded: a container's environment variable may not exceed 128 KiB on Linux (every key
of the account goes into one)."""

from __future__ import annotations

import base64
import hashlib
import warnings

from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

MAX_SSH_KEYS = 20
MAX_SSH_KEY_LENGTH = 4096
MIN_RSA_BITS = 2048
_MAX_COMMENT = 256


class InvalidSshKey(ValueError):
    """Why a key is refused, in words for its owner."""


def normalised_ssh_key(text: str) -> str:
    """The OpenSSH public key line `text` holds, rebuilt; raises InvalidSshKey."""
    if len(text) > MAX_SSH_KEY_LENGTH:
        raise InvalidSshKey(f"a key may be at most {MAX_SSH_KEY_LENGTH} characters")
    if any(c in text for c in "\r\n\x00"):
        raise InvalidSshKey("one key per entry, on one line")
    parts = text.strip().split(None, 2)
    if len(parts) < 2:
        raise InvalidSshKey(
            "expected an OpenSSH public key such as `ssh-ed25519 AAAAC3Nza… you@laptop`"
            " (the contents of ~/.ssh/id_ed25519.pub)"
        )
    key_type, blob = parts[0], parts[1]
    try:
        with warnings.catch_warnings():
            # Loading a DSA key warns that DSA is deprecated: it is refused below anyway.
            warnings.simplefilter("ignore")
            key = load_ssh_public_key(f"{key_type} {blob}".encode())
    except (ValueError, TypeError) as exc:
        raise InvalidSshKey(
            f"not a valid OpenSSH public key ({exc}); paste the whole line of your .pub file"
        ) from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for unknown types
        raise InvalidSshKey(f"unsupported key type {key_type!r}: {exc}") from None
    if isinstance(key, dsa.DSAPublicKey):
        raise InvalidSshKey("DSA keys are no longer accepted by OpenSSH; use ssh-ed25519")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidSshKey(f"RSA keys need at least {MIN_RSA_BITS} bits; use ssh-ed25519")
    comment = "".join(c for c in (parts[2] if len(parts) > 2 else "") if c.isprintable())
    comment = comment.strip()[:_MAX_COMMENT]
    return f"{key_type} {blob} {comment}" if comment else f"{key_type} {blob}"


def key_problem(keys: list[str]) -> str | None:
    """Why `keys` cannot be an account's keys (count, size, form, twice the same), or None."""
    if len(keys) > MAX_SSH_KEYS:
        return f"at most {MAX_SSH_KEYS} keys"
    seen: set[str] = set()
    for index, key in enumerate(keys):
        try:
            line = normalised_ssh_key(key)
        except InvalidSshKey as exc:
            return f"key {index + 1}: {exc}"
        if line != key:
            return f"key {index + 1}: not in its normalised form"
        material = " ".join(line.split()[:2])
        if material in seen:
            return f"key {index + 1}: the same key twice"
        seen.add(material)
    return None


def fingerprint(key: str) -> str:
    """OpenSSH's `SHA256:…` fingerprint of a key line (as `ssh-keygen -lf` prints it)."""
    blob = base64.b64decode(key.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
