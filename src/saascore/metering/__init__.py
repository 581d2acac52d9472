"""Metered usage: exact quotas, reservations, idempotent events, rollups, pricing, rate limits."""

from saascore.metering.errors import (
    LimitExceeded,
    ReservationNotFound,
    ReservationNotHeld,
    StorageUnderflow,
    UnknownMetric,
)
from saascore.metering.service import (
    BatchOutcome,
    CheckResult,
    Limit,
    RecordResult,
    StorageLimitResult,
    SummaryBy,
    SummaryRow,
    TokenLimitResult,
    UsageEventIn,
    UsageService,
    UsageSnapshot,
)

__all__ = [
    "BatchOutcome",
    "CheckResult",
    "Limit",
    "LimitExceeded",
    "RecordResult",
    "ReservationNotFound",
    "ReservationNotHeld",
    "StorageLimitResult",
    "StorageUnderflow",
    "SummaryBy",
    "SummaryRow",
    "TokenLimitResult",
    "UnknownMetric",
    "UsageEventIn",
    "UsageService",
    "UsageSnapshot",
]
