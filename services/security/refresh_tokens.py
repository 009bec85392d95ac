"""Opaque refresh tokens: `<user id>.<256 random bits>`; only their sha256 is ever stored."""

from __future__ import annotations

import hashlib
import secrets


def new_refresh_token(user_id: str) -> str:
    return f"{user_id}.{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def user_of(token: str) -> str | None:
    user_id, dot, secret = token.partition(".")
    return user_id if dot and secret and len(user_id) == 36 else None
