"""Metered usage: exact quotas, reservations, idempotent events, rollups, pricing, rate limits."""

from saascore.metering.errors import (
    LimitExceeded,
    ReservationNotFound,
    ReservationNotHeld,
    StorageUnderflow,
    UnknownMetric,
)
from saascore.metering.ratelimit import (
    PlanRateLimits,
    RateLimited,
    RateLimiter,
    RateLimiterUnavailable,
    RateLimitResult,
    WindowStatus,
    rate_limit_dependency,
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
    "PlanRateLimits",
    "RateLimitResult",
    "RateLimited",
    "RateLimiter",
    "RateLimiterUnavailable",
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
    "WindowStatus",
    "rate_limit_dependency",
]
