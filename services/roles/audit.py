"""`gpuworker audit`: keeps the append-only audit log (`projections.audit`) from every event.

Its own role, NATS user and checkpoint, so neither a halted read model nor the ledger holds the
audit trail back (nor the other way round). Replicas may run side by side: batches serialise on
the audit checkpoint's row."""

from __future__ import annotations

from projections.audit import AuditProjection
from services.config import Settings
from services.nats_permissions import AUDIT_USER
from services.roles.projector import run_projections


async def run_audit(settings: Settings) -> None:
    await run_projections(settings, AUDIT_USER, [AuditProjection()])
