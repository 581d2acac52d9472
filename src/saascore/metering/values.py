"""The values metering takes and gives: events in, results out, limits, meters and prices."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Protocol

from saascore.kit.idempotency import attributes_hash
from saascore.kit.inputs import INT64_MAX
from saascore.kit.time import day_start, month_start, next_month_start
from saascore.models import Aggregation, ResetPeriod

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIB = 1024 * 1024
#: The largest value a counter, a quantity or a token count can hold (a BIGINT column).
BIGINT_MAX = INT64_MAX
TOKENS, STORAGE, API_CALLS = "tokens", "storage_bytes", "api_calls"
THRESHOLDS = (80, 100)
METER_CACHE_SECONDS = 30.0


# --- values in and out ---------------------------------------------------------------------
class SummaryBy(StrEnum):
    """What a usage summary groups by."""

    DAY = "day"
    METRIC = "metric"
    MODEL = "model"
    FEATURE = "feature"


@dataclass(frozen=True)
class UsageEventIn:
    """One usage event to record. `cached_tokens` is the part of `input_tokens` served from the
    provider's cache (priced at the cached rate)."""

    metric: str
    quantity: int
    idempotency_key: str
    organization_id: uuid.UUID | None = None
    occurred_at: datetime | None = None
    user_id: uuid.UUID | None = None
    subscription_id: uuid.UUID | None = None
    feature: str | None = None
    model: str | None = None
    provider: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    credits_used: int = 0
    request_id: str | None = None
    batch_id: str | None = None
    endpoint: str | None = None
    response_time_ms: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """What tells a retry of this event from another event reusing its key: the
        `payload_hash` of its fields but the key and the organisation (stored with the event,
        so its text must never change)."""
        return _fingerprint(self)


_fingerprint = attributes_hash(
    f.name for f in fields(UsageEventIn) if f.name not in ("idempotency_key", "organization_id")
)


@dataclass(frozen=True)
class RecordResult:
    event_id: uuid.UUID
    status: Literal["accepted", "duplicate"]
    metric: str
    quantity: int
    used: int
    limit: int | None
    #: True when a soft limit is passed (a hard one would have refused).
    over_soft_limit: bool = False
    cost_micros: int = 0


@dataclass(frozen=True)
class BatchOutcome:
    index: int
    idempotency_key: str
    status: Literal["accepted", "duplicate", "refused", "invalid"]
    event_id: uuid.UUID | None = None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class UsageSnapshot:
    metric: str
    period_start: datetime
    period_end: datetime | None
    used: int
    reserved: int
    limit: int | None
    hard: bool

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used - self.reserved, 0)


@dataclass(frozen=True)
class CheckResult:
    allowed: bool
    metric: str
    requested: int
    used: int
    reserved: int
    limit: int | None
    hard: bool
    remaining: int | None


@dataclass(frozen=True)
class StorageLimitResult:
    """Seed 000's answer to "may this organisation store `additional_bytes` more?"."""

    allowed: bool
    used_bytes: int
    limit_bytes: int | None
    remaining_bytes: int | None


@dataclass(frozen=True)
class TokenLimitResult:
    allowed: bool
    used_tokens: int
    limit_tokens: int | None
    remaining_tokens: int | None


@dataclass(frozen=True)
class SummaryRow:
    key: str
    quantity: int
    event_count: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_micros: int
    #: The metric of the row's quantity and its meter's unit ('unit' for a metric without a
    #: meter); `summary` always sets them.
    metric: str | None = None
    unit: str | None = None


@dataclass(frozen=True)
class MeterInfo:
    code: str
    aggregation: Aggregation
    reset_period: ResetPeriod

    def period(self, moment: datetime) -> tuple[datetime, datetime | None]:
        if self.reset_period is ResetPeriod.MONTH:
            return month_start(moment), next_month_start(moment)
        if self.reset_period is ResetPeriod.DAY:
            start = day_start(moment)
            return start, start + timedelta(days=1)
        return EPOCH, None


class PerMillionTokens(Protocol):
    """A model's prices in micro-units per million tokens (a `ModelPricing` row)."""

    @property
    def input_micros_per_million(self) -> int: ...
    @property
    def cached_input_micros_per_million(self) -> int: ...
    @property
    def output_micros_per_million(self) -> int: ...


def cost_micros(
    pricing: PerMillionTokens, input_tokens: int, output_tokens: int, cached: int
) -> int:
    """Micro-units, rounded half up once at the end (prices are per million tokens)."""
    uncached = max(input_tokens - cached, 0)
    total = (
        uncached * pricing.input_micros_per_million
        + cached * pricing.cached_input_micros_per_million
        + output_tokens * pricing.output_micros_per_million
    )
    return (total + 500_000) // 1_000_000
