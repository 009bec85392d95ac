"""Secrets at rest: AES-256-GCM with a key from configuration, bound to the resource it belongs to
(associated data), so a ciphertext copied onto another resource does not decrypt."""

from __future__ import annotations

import base64
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "v1:"


class SecretBoxError(Exception):
    pass


def generate_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def decode_key(key_b64: str) -> bytes:
    """A configured key (GPUWORKER_SECRET_KEY, GPUWORKER_HOST_KEY): urlsafe base64 of 32 bytes."""
    try:
        key = base64.urlsafe_b64decode(key_b64)
    except ValueError as exc:
        raise SecretBoxError("the key is not base64") from exc
    if len(key) != 32:
        raise SecretBoxError("the key must decode to 32 bytes (AES-256)")
    return key


class SecretBox:
    def __init__(self, key_b64: str) -> None:
        self._aead = AESGCM(decode_key(key_b64))

    def seal(self, plaintext: str, bound_to: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), bound_to.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, ciphertext: str, bound_to: str) -> str:
        if not ciphertext.startswith(_PREFIX):
            raise SecretBoxError("unknown ciphertext format")
        raw = base64.urlsafe_b64decode(ciphertext[len(_PREFIX) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], bound_to.encode()).decode()
        except InvalidTag as exc:
            raise SecretBoxError(
                "ciphertext does not open with this key for this resource"
            ) from exc
