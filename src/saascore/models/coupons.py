"""Coupons and their redemptions, and the credit-pack catalog (issue 12, items 3 and 5).

`coupons` and `credit_packs` are global catalog tables; `coupon_redemptions` is a tenant
table: one organisation's use of a coupon, on a subscription or on one draft invoice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from saascore.kit.types import str_enum
from saascore.models.base import Base, GlobalMixin, TenantMixin, TimestampMixin, tenant_fk

__all__ = ["Coupon", "CouponDuration", "CouponRedemption", "CreditPack"]


class CouponDuration(StrEnum):
    #: The first invoice only.
    ONCE = "once"
    #: `duration_periods` invoices of the subscription.
    REPEATING = "repeating"
    #: Every invoice of the subscription.
    FOREVER = "forever"


class Coupon(GlobalMixin, TimestampMixin, Base):
    """A discount of the catalog: a percentage (basis points) or a fixed amount in one
    currency, never both. `times_redeemed` only grows, by a conditional UPDATE that keeps it
    within `max_redemptions` however many redemptions race."""

    __tablename__ = "coupons"

    code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    percent_off: Mapped[int | None]
    amount_off: Mapped[int | None] = mapped_column(sa.BigInteger)
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    duration: Mapped[CouponDuration] = mapped_column(
        str_enum(CouponDuration, "duration"), default=CouponDuration.ONCE
    )
    duration_periods: Mapped[int | None]
    max_redemptions: Mapped[int | None]
    times_redeemed: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    #: The last moment it may be redeemed; redemptions made before keep applying.
    expires_at: Mapped[datetime | None]
    active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())

    __table_args__ = (
        sa.CheckConstraint(
            "(percent_off IS NOT NULL AND amount_off IS NULL AND currency IS NULL) OR "
            "(percent_off IS NULL AND amount_off IS NOT NULL AND currency IS NOT NULL)",
            name="one_kind_of_discount",
        ),
        sa.CheckConstraint(
            "percent_off IS NULL OR percent_off BETWEEN 1 AND 10000", name="percent_off_range"
        ),
        sa.CheckConstraint("amount_off IS NULL OR amount_off > 0", name="amount_off_positive"),
        sa.CheckConstraint(
            "(duration = 'repeating' AND duration_periods >= 1) OR "
            "(duration <> 'repeating' AND duration_periods IS NULL)",
            name="duration_periods_for_repeating",
        ),
        sa.CheckConstraint(
            "max_redemptions IS NULL OR max_redemptions >= 1", name="max_redemptions_positive"
        ),
        sa.CheckConstraint(
            "times_redeemed >= 0 AND (max_redemptions IS NULL OR "
            "times_redeemed <= max_redemptions)",
            name="redemptions_within_limit",
        ),
    )


class CouponRedemption(TenantMixin, Base):
    """An organisation's use of a coupon: on a subscription (its invoices while the coupon's
    duration lasts, `periods_used` counting them) or on one draft invoice."""

    __tablename__ = "coupon_redemptions"

    coupon_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("coupons.id", ondelete="RESTRICT"))
    subscription_id: Mapped[uuid.UUID | None]
    invoice_id: Mapped[uuid.UUID | None]
    periods_used: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    redeemed_at: Mapped[datetime]

    __table_args__ = (
        tenant_fk("subscription_id", "subscriptions"),
        tenant_fk("invoice_id", "invoices"),
        sa.UniqueConstraint("organization_id", "coupon_id", "subscription_id"),
        sa.UniqueConstraint("organization_id", "coupon_id", "invoice_id"),
        sa.CheckConstraint("(subscription_id IS NULL) <> (invoice_id IS NULL)", name="one_target"),
        sa.CheckConstraint("periods_used >= 0", name="periods_used_non_negative"),
        sa.Index("ix_coupon_redemptions_coupon_id", "coupon_id"),
    )


class CreditPack(GlobalMixin, TimestampMixin, Base):
    """A credit pack of the catalog: `credits` for `price` minor units of `currency`. A
    purchase is an invoice with one `credit_pack` line; its full payment grants the credits."""

    __tablename__ = "credit_packs"

    code: Mapped[str] = mapped_column(sa.String(50), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    credits: Mapped[int] = mapped_column(sa.BigInteger)
    price: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    #: The pack's price at Stripe, and its variant at Lemon Squeezy: a provider's one-off
    #: order names one of them, which tells saascore the pack it bought.
    stripe_price_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    lemon_squeezy_variant_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)

    __table_args__ = (
        sa.CheckConstraint("credits > 0", name="credits_positive"),
        sa.CheckConstraint("price > 0", name="price_positive"),
    )
