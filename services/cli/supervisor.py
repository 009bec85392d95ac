"""Keeps `gpuworker up`'s processes alive: each role, the embedded nats-server and PostgreSQL.

A process that exits is started again after a backoff (0.5 s doubling to 30 s, back to 0.5 s once
it has run for a minute), with a log line naming it and how it ended; the others are never taken
down with it. One that keeps dying (3 exits within 2 minutes) is reported as crash-looping: the
supervisor writes every process's state to a JSON file that the api serves on /health, so an
operator sees "degraded: projector crash-looping since …" instead of a silent flap."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil

log = logging.getLogger("gpuworker.up")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0
LOOPING_EXITS = 3
LOOPING_WINDOW_S = 120.0
PR_SET_CHILD_SUBREAPER = 36


class ProcessStatus(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    state: str  # running | restarting | crash-looping | stopped
    restarts: int = 0
    last_exit: str | None = None
    # Since when it has been in this state (Unix time).
    since: float


class SupervisorStatus(msgspec.Struct, kw_only=True):
    processes: dict[str, ProcessStatus]
    written_at: float


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class Supervised:
    """One process under supervision, through three plain callables."""

    name: str
    # Starts the process (again); may raise, and is then retried after the backoff.
    start: Callable[[], None]
    # None while it runs; otherwise how it ended, in words (`describe_exit`).
    ended: Callable[[], str | None]
    stop: Callable[[], None]
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    next_start_at: float | None = None
    exits: deque[float] = field(default_factory=lambda: deque(maxlen=LOOPING_EXITS))
    status: ProcessStatus = field(default_factory=lambda: ProcessStatus(state="stopped", since=0))


class Supervisor:
    def __init__(self, status_path: Path | None = None) -> None:
        self._processes: list[Supervised] = []
        self._status_path = status_path

    def add(self, process: Supervised) -> None:
        """Starts it now (errors propagate: a process that cannot start once is a setup error)."""
        process.start()
        process.started_at = time.monotonic()
        process.status = ProcessStatus(state="running", since=time.time())
        self._processes.append(process)
        self._write()

    def check(self) -> None:
        """One round: notice exits, restart what is due. Call it often (every 0.2 s)."""
        now = time.monotonic()
        changed = False
        for p in self._processes:
            if p.next_start_at is None:
                how = p.ended()
                if how is None:
                    continue
                changed = True
                self._exited(p, how, now)
            elif now >= p.next_start_at:
                changed = True
                self._restart(p, now)
        if changed:
            self._write()

    def _exited(self, p: Supervised, how: str, now: float) -> None:
        if now - p.started_at >= STABLE_AFTER_S:
            p.backoff_s = FIRST_BACKOFF_S
        p.exits.append(now)
        looping = len(p.exits) == LOOPING_EXITS and now - p.exits[0] <= LOOPING_WINDOW_S
        log.error(
            "%s %s; restarting it in %.1f s%s",
            p.name,
            how,
            p.backoff_s,
            f" (crash-looping: {LOOPING_EXITS} exits in {LOOPING_WINDOW_S:g} s)" if looping else "",
        )
        p.next_start_at = now + p.backoff_s
        p.backoff_s = min(p.backoff_s * 2, MAX_BACKOFF_S)
        state = "crash-looping" if looping else "restarting"
        since = p.status.since if p.status.state == state else time.time()
        p.status = ProcessStatus(state=state, restarts=p.restarts, last_exit=how, since=since)

    def _restart(self, p: Supervised, now: float) -> None:
        try:
            p.start()
        except Exception as exc:
            log.error("%s could not be started: %s; next try in %.1f s", p.name, exc, p.backoff_s)
            p.next_start_at = now + p.backoff_s
            p.backoff_s = min(p.backoff_s * 2, MAX_BACKOFF_S)
            return
        p.restarts += 1
        p.started_at = now
        p.next_start_at = None
        log.info("%s restarted (restart #%d)", p.name, p.restarts)
        if p.status.state != "crash-looping":
            p.status = ProcessStatus(
                state="running",
                restarts=p.restarts,
                last_exit=p.status.last_exit,
                since=time.time(),
            )
        else:  # still looping until it stays up
            p.status = msgspec.structs.replace(p.status, restarts=p.restarts)

    def settle(self) -> None:
        """A process that has stayed up past STABLE_AFTER_S is no longer crash-looping."""
        now = time.monotonic()
        changed = False
        for p in self._processes:
            if (
                p.status.state == "crash-looping"
                and p.next_start_at is None
                and now - p.started_at >= STABLE_AFTER_S
            ):
                p.status = ProcessStatus(
                    state="running",
                    restarts=p.restarts,
                    last_exit=p.status.last_exit,
                    since=time.time(),
                )
                changed = True
        if changed:
            self._write()

    def stop_all(self) -> None:
        """Stops in reverse order of starting (roles first, servers last)."""
        for p in reversed(self._processes):
            try:
                p.stop()
            except Exception as exc:
                log.warning("stopping %s: %s", p.name, exc)

    def statuses(self) -> dict[str, ProcessStatus]:
        return {p.name: p.status for p in self._processes}

    def _write(self) -> None:
        if self._status_path is None:
            return
        body = msgspec.json.encode(
            SupervisorStatus(processes=self.statuses(), written_at=time.time())
        )
        tmp = self._status_path.with_suffix(".tmp")
        tmp.write_bytes(body)
        os.replace(tmp, self._status_path)


def become_subreaper() -> bool:
    """Orphaned descendants (the postmaster, which `pg_ctl` daemonises) become our children, so a
    dead one is reaped here instead of lingering as a zombie: PostgreSQL refuses to start while a
    process with the PID in its old postmaster.pid exists, and PID 1 may never reap it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap_orphans(own: set[int]) -> None:
    """Reap exited descendants that are not `own` children (those are `Popen`s that reap their
    own, keeping their exit codes)."""
    for child in psutil.Process().children():
        try:
            if child.pid not in own and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue


def read_status(path: Path) -> SupervisorStatus | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=SupervisorStatus)
    except (OSError, msgspec.DecodeError):
        return None
