"""The audit trail: who did what in an organisation, hash-chained so tampering shows."""

from saascore.audit.service import (
    SYSTEM,
    Actor,
    AuditService,
    ChainBreak,
    ChainReport,
    Origin,
    audited_bus,
    entry_hash,
)

__all__ = [
    "SYSTEM",
    "Actor",
    "AuditService",
    "ChainBreak",
    "ChainReport",
    "Origin",
    "audited_bus",
    "entry_hash",
]
