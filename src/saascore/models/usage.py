"""Metered usage: raw events, period counters, reservations, daily rollups, per-tenant limits."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from saascore.kit.types import str_enum
from saascore.models.base import Base, TenantMixin, non_negative, tenant_fk

__all__ = [
    "ReservationStatus",
    "UsageAlert",
    "UsageCounter",
    "UsageDailySummary",
    "UsageEvent",
    "UsageLimits",
    "UsageReservation",
]


class ReservationStatus(StrEnum):
    HELD = "held"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


class UsageEvent(TenantMixin, Base):
    """One unit of recorded usage: an LLM call, an API call, a generation (seeds 000, 002, 003).

    `idempotency_key` is unique per organisation, so a retried event is stored once;
    `payload_hash` tells a retry from a different event reusing the key.
    """

    __tablename__ = "usage_events"

    idempotency_key: Mapped[str] = mapped_column(sa.String(255))
    payload_hash: Mapped[str] = mapped_column(sa.String(64))
    metric: Mapped[str] = mapped_column(sa.String(100))
    quantity: Mapped[int] = mapped_column(sa.BigInteger)
    user_id: Mapped[uuid.UUID | None]
    subscription_id: Mapped[uuid.UUID | None]
    feature: Mapped[str | None] = mapped_column(sa.String(100))
    # LLM usage (seed 000)
    model: Mapped[str | None] = mapped_column(sa.String(255))
    provider: Mapped[str | None] = mapped_column(sa.String(50))
    input_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Input plus output tokens, or the total alone when the split is unknown (seed 002).
    total_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Cost in integer micro-units of `cost_currency`, priced from `model_pricing`.
    cost_micros: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cost_currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    # Request context (seed 002 usage_logs)
    credits_used: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    request_id: Mapped[str | None] = mapped_column(sa.String(255))
    batch_id: Mapped[str | None] = mapped_column(sa.String(255))
    endpoint: Mapped[str | None] = mapped_column(sa.String(255))
    response_time_ms: Mapped[int | None]
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "idempotency_key"),
        tenant_fk("subscription_id", "subscriptions"),
        *non_negative(
            "quantity",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "total_tokens",
            "cost_micros",
            "credits_used",
            "response_time_ms",
        ),
        # Seed 003's names for its usage_records indexes.
        sa.Index("idx_usage_tenant_metric_date", "organization_id", "metric", "occurred_at"),
        sa.Index("idx_usage_subscription_metric", "organization_id", "subscription_id", "metric"),
        sa.Index("ix_usage_events_organization_id_user_id", "organization_id", "user_id"),
    )


class UsageCounter(TenantMixin, Base):
    """Usage of one metric in one period. A new period is a new row: nothing needs resetting.

    Quotas are enforced on this row with one conditional UPDATE, so `used + reserved` can never
    pass a hard limit, however many requests race.
    """

    __tablename__ = "usage_counters"

    metric: Mapped[str] = mapped_column(sa.String(100))
    #: Start of the period (UTC); the epoch for meters that never reset.
    period_start: Mapped[datetime]
    period_end: Mapped[datetime | None]
    used: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "metric", "period_start"),
        *non_negative("used", "reserved"),
    )


class UsageReservation(TenantMixin, Base):
    """Quota held before slow work (an LLM call) and settled with the real amount after."""

    __tablename__ = "usage_reservations"

    metric: Mapped[str] = mapped_column(sa.String(100))
    period_start: Mapped[datetime]
    quantity: Mapped[int] = mapped_column(sa.BigInteger)
    settled_quantity: Mapped[int | None] = mapped_column(sa.BigInteger)
    status: Mapped[ReservationStatus] = mapped_column(
        str_enum(ReservationStatus, "status"), default=ReservationStatus.HELD
    )
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "idempotency_key"),
        *non_negative("quantity", "settled_quantity"),
        sa.Index("ix_usage_reservations_status_expires_at", "status", "expires_at"),
        # Settling by id alone (the caller may not name the organisation).
        sa.Index("ix_usage_reservations_id", "id"),
    )


class UsageDailySummary(TenantMixin, Base):
    """Usage rolled up per day, metric, model and feature; kept current by every write.

    Empty strings stand for "none" in `model`, `provider` and `feature` so the rollup key is
    unique on both databases (NULLs are never equal in a unique constraint).
    """

    __tablename__ = "usage_daily_summary"

    day: Mapped[date]
    metric: Mapped[str] = mapped_column(sa.String(100))
    model: Mapped[str] = mapped_column(sa.String(255), default="")
    provider: Mapped[str] = mapped_column(sa.String(50), default="")
    feature: Mapped[str] = mapped_column(sa.String(100), default="")
    quantity: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    event_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    total_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

    __table_args__ = (
        sa.UniqueConstraint(
            "organization_id",
            "day",
            "metric",
            "model",
            "provider",
            "feature",
            name="uq_usage_daily_summary_rollup_key",
        ),
        *non_negative(
            "quantity",
            "event_count",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "total_tokens",
            "cost_micros",
        ),
    )


class UsageLimits(TenantMixin, Base):
    """One row per organisation: limit overrides, storage in use, the credit balance cache.

    `overrides` maps a metric to `{"limit": int | None, "hard": bool}` and wins over the plan.
    `storage_used_bytes` makes storage checks O(1) (seed 000). The credit fields cache the
    ledger in `credit_transactions`, which `saascore credits verify` checks.
    """

    __tablename__ = "usage_limits"

    overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    storage_used_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    credit_balance: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    credits_granted_total: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    credits_consumed_total: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    credits_expired_total: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: `credits.low` is emitted when the balance falls below this; None: never.
    credit_low_threshold: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_credit_refill_at: Mapped[datetime | None]
    next_credit_refill_at: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

    __table_args__ = (
        sa.UniqueConstraint("organization_id"),
        *non_negative(
            "storage_used_bytes",
            "credit_balance",
            "credits_granted_total",
            "credits_consumed_total",
            "credits_expired_total",
        ),
    )


class UsageAlert(TenantMixin, Base):
    """A threshold (80 %, 100 %) crossed by a metric in a period, recorded once, for alerts."""

    __tablename__ = "usage_alerts"

    metric: Mapped[str] = mapped_column(sa.String(100))
    period_start: Mapped[datetime]
    threshold_percent: Mapped[int]
    limit_value: Mapped[int] = mapped_column(sa.BigInteger)
    used: Mapped[int] = mapped_column(sa.BigInteger)
    crossed_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    notified_at: Mapped[datetime | None]

    __table_args__ = (
        sa.UniqueConstraint(
            "organization_id",
            "metric",
            "period_start",
            "threshold_percent",
            name="uq_usage_alerts_period_threshold",
        ),
        sa.CheckConstraint("threshold_percent > 0", name="threshold_positive"),
    )
