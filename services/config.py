"""Settings, read once from the environment. `gpuworker up` fills them for its embedded servers."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from ledger.money import usd_to_micros


class ConfigurationError(Exception):
    pass


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigurationError(
            f"{name} is not set; run `gpuworker up` for an embedded setup, or set {name}"
        )
    return value


def default_host_id() -> str:
    """This machine's host id: GPUWORKER_HOST_ID, else its short host name."""
    return os.environ.get("GPUWORKER_HOST_ID") or socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class Settings:
    database_url: str
    nats_url: str
    secret_key: str
    jwt_secret: str
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    stream_replicas: int = 1
    request_timeout_s: float = 5.0
    read_your_writes_timeout_s: float = 5.0
    # A host whose agent is silent this long is marked lost (and its GPUs unavailable).
    host_timeout_s: float = 10.0
    # How often the ledger charges open usage sessions (and checks balances and budgets).
    accrual_interval_s: float = 60.0
    # What a new account is credited with, in micro-USD.
    signup_credit_micros: int = 0
    # Where `gpuworker up`'s supervisor writes the state of every process it runs (for /health).
    supervisor_status: str | None = None
    # Addresses (or networks) of the reverse proxies whose X-Forwarded-For/-Proto the api believes.
    # None by default: any client could otherwise choose the address the login throttle counts.
    trusted_proxies: tuple[str, ...] = ()
    # How this process logs in to NATS: its own user and password, or its entry (by role) in a
    # credentials file; neither: whatever NATS_URL carries (user:password@host), if anything.
    nats_user: str | None = None
    nats_password: str | None = None
    nats_credentials: str | None = None
    # Serverless (README, "Serverless"): a worker silent this long loses its jobs to the queue;
    # how often the SDK pings (put in every worker's RUNPOD_PING_INTERVAL); the longest a take or
    # job-stop long poll is held; how long a job's status and result are kept once final, after
    # `run` and after `runsync`; the wait between a webhook's attempts, and the webhook hosts
    # ("host" or "host:port") allowed although they are local or private.
    worker_lost_after_s: float = 30.0
    worker_ping_interval_s: int = 10
    job_poll_max_s: float = 20.0
    job_retention_s: int = 1800
    job_sync_retention_s: int = 300
    webhook_retry_delay_s: float = 10.0
    webhook_allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.accrual_interval_s <= 60:
            raise ConfigurationError(
                "GPUWORKER_ACCRUAL_INTERVAL must be more than 0 and at most 60 seconds"
                " (open sessions are charged at least every minute)"
            )

    @classmethod
    def from_env(cls, gpu_host: bool = False) -> Settings:
        """`gpu_host`: the settings of a GPU host's agent, which never reads PostgreSQL nor signs
        or checks access tokens; a host that joins over the network is given neither the
        database's address and password, the JWT secret nor the master key, so a compromised
        host cannot use them."""
        return cls(
            database_url="" if gpu_host else _required("DATABASE_URL"),
            nats_url=_required("NATS_URL"),
            # An agent holds its host's key (GPUWORKER_HOST_KEY, services/roles/agent.py) instead.
            secret_key=os.environ.get("GPUWORKER_SECRET_KEY", "")
            if gpu_host
            else _required("GPUWORKER_SECRET_KEY"),
            jwt_secret="" if gpu_host else _required("GPUWORKER_JWT_SECRET"),
            access_token_ttl_s=int(os.environ.get("GPUWORKER_ACCESS_TOKEN_TTL", "900")),
            refresh_token_ttl_s=int(os.environ.get("GPUWORKER_REFRESH_TOKEN_TTL", "2592000")),
            stream_replicas=int(os.environ.get("GPUWORKER_STREAM_REPLICAS", "1")),
            host_timeout_s=float(os.environ.get("GPUWORKER_HOST_TIMEOUT", "10")),
            supervisor_status=os.environ.get("GPUWORKER_SUPERVISOR_STATUS") or None,
            accrual_interval_s=float(os.environ.get("GPUWORKER_ACCRUAL_INTERVAL", "60")),
            signup_credit_micros=usd_to_micros(os.environ.get("GPUWORKER_SIGNUP_CREDIT", "0")),
            trusted_proxies=tuple(
                p.strip()
                for p in os.environ.get("GPUWORKER_TRUSTED_PROXIES", "").split(",")
                if p.strip()
            ),
            nats_user=os.environ.get("GPUWORKER_NATS_USER") or None,
            nats_password=os.environ.get("GPUWORKER_NATS_PASSWORD") or None,
            nats_credentials=os.environ.get("GPUWORKER_NATS_CREDENTIALS") or None,
            worker_lost_after_s=float(os.environ.get("GPUWORKER_WORKER_LOST_AFTER", "30")),
            worker_ping_interval_s=int(os.environ.get("GPUWORKER_WORKER_PING_INTERVAL", "10")),
            job_poll_max_s=float(os.environ.get("GPUWORKER_JOB_POLL_MAX", "20")),
            job_retention_s=int(os.environ.get("GPUWORKER_JOB_RETENTION", "1800")),
            job_sync_retention_s=int(os.environ.get("GPUWORKER_JOB_SYNC_RETENTION", "300")),
            webhook_retry_delay_s=float(os.environ.get("GPUWORKER_WEBHOOK_RETRY_DELAY", "10")),
            webhook_allowed_hosts=tuple(
                h.strip().lower()
                for h in os.environ.get("GPUWORKER_WEBHOOK_ALLOWED_HOSTS", "").split(",")
                if h.strip()
            ),
        )
