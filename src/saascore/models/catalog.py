"""The global catalog: plans with their prices and limits, meters, and model prices."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from saascore.kit.types import str_enum
from saascore.models.base import Base, GlobalMixin, TimestampMixin, non_negative

__all__ = [
    "Aggregation",
    "BillingCycle",
    "Meter",
    "ModelPricing",
    "PlanLimit",
    "PlanPrice",
    "ResetPeriod",
    "SubscriptionPlan",
]


class BillingCycle(StrEnum):
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"


class Aggregation(StrEnum):
    SUM = "sum"
    COUNT = "count"
    MAX = "max"


class ResetPeriod(StrEnum):
    MONTH = "month"
    DAY = "day"
    NONE = "none"


class SubscriptionPlan(GlobalMixin, TimestampMixin, Base):
    """A plan of the catalog: what it costs, what it allows, what it grants.

    A limit of None means unlimited. Token and storage limits are seed 000's, credits and rate
    limits seed 002's, item limits and API access seed 004's; limits on any other meter are
    `plan_limits` rows.
    """

    __tablename__ = "subscription_plans"

    code: Mapped[str] = mapped_column(sa.String(50), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    description: Mapped[str | None] = mapped_column(sa.Text)
    # Limits
    monthly_token_limit: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_storage_mb: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_api_calls_per_day: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_products_per_batch: Mapped[int | None]
    max_items: Mapped[int | None]
    max_secondary: Mapped[int | None]
    max_users: Mapped[int | None]
    # Rate limits
    requests_per_minute: Mapped[int | None]
    requests_per_hour: Mapped[int | None]
    # Credits granted each period, and whether unused ones roll over
    credits_per_period: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    credits_rollover: Mapped[bool] = mapped_column(default=False)
    # Access and trial
    api_access: Mapped[bool] = mapped_column(default=False)
    trial_days: Mapped[int] = mapped_column(default=0)
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    is_active: Mapped[bool] = mapped_column(default=True)
    is_public: Mapped[bool] = mapped_column(default=True)
    sort_order: Mapped[int] = mapped_column(default=0)

    prices: Mapped[list[PlanPrice]] = relationship(
        lazy="raise", back_populates="plan", order_by="PlanPrice.billing_cycle"
    )
    limits: Mapped[list[PlanLimit]] = relationship(lazy="raise", back_populates="plan")

    __table_args__ = (
        *non_negative(
            "monthly_token_limit",
            "max_storage_mb",
            "max_api_calls_per_day",
            "max_products_per_batch",
            "max_items",
            "max_secondary",
            "max_users",
            "requests_per_minute",
            "requests_per_hour",
            "credits_per_period",
            "trial_days",
        ),
    )


class PlanPrice(GlobalMixin, TimestampMixin, Base):
    """What a plan costs per billing cycle and currency, in minor units (cents)."""

    __tablename__ = "plan_prices"

    plan_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscription_plans.id", ondelete="CASCADE")
    )
    billing_cycle: Mapped[BillingCycle] = mapped_column(str_enum(BillingCycle, "billing_cycle"))
    currency: Mapped[str] = mapped_column(sa.String(3))
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    stripe_price_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    stripe_product_id: Mapped[str | None] = mapped_column(sa.String(255))
    lemon_squeezy_variant_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    lemon_squeezy_product_id: Mapped[str | None] = mapped_column(sa.String(255))
    is_active: Mapped[bool] = mapped_column(default=True)

    plan: Mapped[SubscriptionPlan] = relationship(lazy="raise", back_populates="prices")

    __table_args__ = (
        sa.UniqueConstraint("plan_id", "billing_cycle", "currency"),
        *non_negative("amount"),
        sa.CheckConstraint("length(currency) = 3", name="currency_iso"),
    )


class PlanLimit(GlobalMixin, Base):
    """A plan's limit on a meter beyond the plan's own columns. A hard limit refuses; a soft
    one allows and flags."""

    __tablename__ = "plan_limits"

    plan_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscription_plans.id", ondelete="CASCADE")
    )
    metric: Mapped[str] = mapped_column(sa.String(100))
    limit_value: Mapped[int | None] = mapped_column(sa.BigInteger)
    is_hard: Mapped[bool] = mapped_column(default=True)
    #: The price of usage above `limit_value` (the included amount), per currency: minor
    #: units per `overage_per` units of the meter. Empty: no overage is billed.
    overage_prices: Mapped[dict[str, Any]] = mapped_column(default=dict)
    overage_per: Mapped[int] = mapped_column(sa.BigInteger, default=1)

    plan: Mapped[SubscriptionPlan] = relationship(lazy="raise", back_populates="limits")

    __table_args__ = (
        sa.UniqueConstraint("plan_id", "metric"),
        *non_negative("limit_value"),
        sa.CheckConstraint("overage_per >= 1", name="overage_per_positive"),
    )


class Meter(GlobalMixin, TimestampMixin, Base):
    """A metric that usage is recorded against (`tokens`, `api_calls`, `storage_bytes`, ...)."""

    __tablename__ = "meters"

    code: Mapped[str] = mapped_column(sa.String(100), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    description: Mapped[str | None] = mapped_column(sa.Text)
    aggregation: Mapped[Aggregation] = mapped_column(
        str_enum(Aggregation, "aggregation"), default=Aggregation.SUM
    )
    unit: Mapped[str] = mapped_column(sa.String(50), default="unit")
    reset_period: Mapped[ResetPeriod] = mapped_column(
        str_enum(ResetPeriod, "reset_period"), default=ResetPeriod.MONTH
    )
    is_active: Mapped[bool] = mapped_column(default=True)


class ModelPricing(GlobalMixin, TimestampMixin, Base):
    """The price of an LLM's tokens, in integer micro-units of `currency` per million tokens.

    A price applies from `effective_from` until the next row's `effective_from` (or
    `effective_to`), so past usage keeps the price it was recorded at.
    """

    __tablename__ = "model_pricing"

    provider: Mapped[str] = mapped_column(sa.String(50))
    model: Mapped[str] = mapped_column(sa.String(255))
    currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    input_micros_per_million: Mapped[int] = mapped_column(sa.BigInteger)
    output_micros_per_million: Mapped[int] = mapped_column(sa.BigInteger)
    cached_input_micros_per_million: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    effective_from: Mapped[datetime]
    effective_to: Mapped[datetime | None]
    is_active: Mapped[bool] = mapped_column(default=True)
    #: Where the price was read (the provider's pricing page) and the day it was read there.
    source: Mapped[str | None] = mapped_column(sa.String(2048))
    as_of: Mapped[date | None]

    __table_args__ = (
        sa.UniqueConstraint("provider", "model", "effective_from"),
        sa.Index("ix_model_pricing_model_effective_from", "model", "effective_from"),
        *non_negative(
            "input_micros_per_million",
            "output_micros_per_million",
            "cached_input_micros_per_million",
        ),
    )
