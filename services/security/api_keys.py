"""API keys: `gpw_` and 256 random bits (base64url), stored only as their HMAC-SHA256.

A slow password hash (argon2) guards guessable secrets; a key of 256 random bits cannot be guessed,
so a fast keyed hash is right, and it costs microseconds on every request that presents one. The
HMAC key is derived (HKDF) from GPUWORKER_SECRET_KEY, so the hashes in events and tables are
worthless without the api's configuration, and a candidate key found elsewhere cannot be matched
against them. Rotating GPUWORKER_SECRET_KEY therefore retires every API key (as it retires saved
registry passwords).

A create retried under the same Idempotency-Key must answer with the same key, or the retry would
show a key whose hash the stored one is not: such a key is derived from the request's idempotency
seed with another HKDF-derived key, and is as secret as that seed and GPUWORKER_SECRET_KEY together
(the same as the sealed response the idempotency layer keeps for 24 h). Without a seed, the key is
fresh randomness."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "gpw_"
_KEY = re.compile(r"^gpw_[A-Za-z0-9_-]{43}$")
_SECRET_BYTES = 32


def _subkey(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def well_formed(key: str) -> bool:
    """Whether `key` could be one of ours: the prefix and exactly 43 base64url characters."""
    return bool(_KEY.match(key))


class ApiKeyHasher:
    def __init__(self, secret_key_b64: str) -> None:
        master = base64.urlsafe_b64decode(secret_key_b64)
        self._lookup = _subkey(master, b"gpuworker api-key hash v1")
        self._mint = _subkey(master, b"gpuworker api-key from idempotency seed v1")

    def mint(self, seed: str | None) -> str:
        """A new key: random, or (under an Idempotency-Key) the one its seed always gives."""
        raw = (
            hmac.new(self._mint, seed.encode(), hashlib.sha256).digest()
            if seed is not None
            else secrets.token_bytes(_SECRET_BYTES)
        )
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def digest(self, key: str) -> str:
        """What is stored and looked up instead of the key (64 hex digits)."""
        return hmac.new(self._lookup, key.encode(), hashlib.sha256).hexdigest()
