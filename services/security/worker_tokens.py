"""Worker tokens: what a serverless worker sends (raw, in `Authorization`, as the runpod SDK sends
its RUNPOD_AI_API_KEY) on the worker protocol's routes.

A token is `gpwk_` and the HMAC-SHA256 of the endpoint and worker ids under a key derived (HKDF)
from GPUWORKER_SECRET_KEY, so it names one worker of one endpoint, is checked without a database
round trip (takes and pings are the hottest requests the api answers), and is worth nothing for
another endpoint or another worker. It is minted for a worker when the worker is started (its
environment, services/worker_env.py) and never stored. Rotating GPUWORKER_SECRET_KEY retires every
worker token."""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "gpwk_"


class WorkerTokens:
    def __init__(self, secret_key_b64: str) -> None:
        master = base64.urlsafe_b64decode(secret_key_b64)
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"gpuworker worker token v1"
        ).derive(master)

    def mint(self, endpoint_id: str, worker_id: str) -> str:
        message = f"{endpoint_id}\x1f{worker_id}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def valid(self, token: str, endpoint_id: str, worker_id: str) -> bool:
        return hmac.compare_digest(token.encode(), self.mint(endpoint_id, worker_id).encode())
