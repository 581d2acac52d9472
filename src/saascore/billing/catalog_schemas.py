"""Request and response bodies of the coupon and credit-pack routes (`/v1/admin/coupons`,
`/v1/admin/credit-packs`, `/v1/credit-packs`). Amounts are integers of minor units of the
currency; percentages are basis points (docs/billing.md, "Coupons" and "Credit packs")."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from saascore.billing.coupons import MAX_DURATION_PERIODS, MAX_REDEMPTIONS
from saascore.billing.packs import MAX_PACK_CREDITS
from saascore.kit.inputs import INT64_MAX, StrictInt
from saascore.kit.money import MAX_DISCOUNT_BASIS_POINTS
from saascore.kit.validation import Instant
from saascore.models import Coupon, CouponDuration, CouponRedemption, CreditPack

__all__ = [
    "CouponCreate",
    "CouponOut",
    "CouponRedeem",
    "CouponRedemptionOut",
    "CreditPackCreate",
    "CreditPackOut",
    "CreditPackPurchase",
]

_COUPON_CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PACK_CODE = r"^[a-z0-9][a-z0-9_.-]{0,49}$"
_CURRENCY = r"^[A-Za-z]{3}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CouponCreate(_Body):
    """A coupon: `percent_off` or `amount_off` with its `currency`, exactly one of them."""

    code: str = Field(
        pattern=_COUPON_CODE,
        description="The code people type (stored upper case)",
        examples=["SUMMER20"],
    )
    name: str | None = Field(
        default=None, min_length=1, max_length=255, description="A name; the code by default"
    )
    percent_off: StrictInt | None = Field(
        default=None,
        ge=1,
        le=MAX_DISCOUNT_BASIS_POINTS,
        description="The discount in basis points (2000 = 20 %); null for a fixed amount",
        examples=[2000],
    )
    amount_off: StrictInt | None = Field(
        default=None,
        ge=1,
        le=INT64_MAX,
        description="The discount in minor units of `currency`; null for a percentage",
    )
    currency: str | None = Field(
        default=None,
        pattern=_CURRENCY,
        description="ISO 4217 code of `amount_off`; only with it",
    )
    duration: CouponDuration = Field(
        default=CouponDuration.ONCE,
        description="once (the first invoice), repeating (`duration_periods` invoices) or forever",
    )
    duration_periods: StrictInt | None = Field(
        default=None,
        ge=1,
        le=MAX_DURATION_PERIODS,
        description="How many invoices a repeating coupon discounts; only for repeating",
    )
    max_redemptions: StrictInt | None = Field(
        default=None,
        ge=1,
        le=MAX_REDEMPTIONS,
        description="How many times it may be redeemed in all; null: no limit",
    )
    expires_at: Instant | None = Field(
        default=None, description="The last moment it may be redeemed; null: never expires"
    )


class CouponOut(BaseModel):
    """A coupon of the catalog."""

    code: str = Field(description="The coupon's code", examples=["SUMMER20"])
    name: str = Field(description="The coupon's name")
    percent_off: int | None = Field(description="The discount in basis points, or null")
    amount_off: int | None = Field(description="The discount in minor units, or null")
    currency: str | None = Field(description="ISO 4217 code of `amount_off`, or null")
    duration: CouponDuration = Field(description="once, repeating or forever")
    duration_periods: int | None = Field(description="Invoices a repeating coupon discounts")
    max_redemptions: int | None = Field(description="The redemption limit; null: none")
    times_redeemed: int = Field(description="How many times it was redeemed")
    expires_at: datetime | None = Field(description="The last moment of redemption, or null")
    active: bool = Field(description="Whether it may be redeemed (not deactivated)")

    @classmethod
    def of(cls, coupon: Coupon) -> CouponOut:
        return cls(
            code=coupon.code,
            name=coupon.name,
            percent_off=coupon.percent_off,
            amount_off=coupon.amount_off,
            currency=coupon.currency,
            duration=coupon.duration,
            duration_periods=coupon.duration_periods,
            max_redemptions=coupon.max_redemptions,
            times_redeemed=coupon.times_redeemed,
            expires_at=coupon.expires_at,
            active=coupon.active,
        )


class CouponRedeem(_Body):
    """A redemption for the organisation: on a draft invoice, or on its live subscription."""

    code: str = Field(
        min_length=1, max_length=64, description="The coupon's code", examples=["SUMMER20"]
    )
    invoice_id: uuid.UUID | None = Field(
        default=None, description="A draft invoice of the organisation; null: its subscription"
    )


class CouponRedemptionOut(BaseModel):
    """An organisation's redemption of a coupon."""

    id: uuid.UUID = Field(description="The redemption's id")
    organization_id: uuid.UUID = Field(description="The organisation's id")
    code: str = Field(description="The coupon's code")
    subscription_id: uuid.UUID | None = Field(description="The subscription it applies to")
    invoice_id: uuid.UUID | None = Field(description="The draft invoice it applies to")
    periods_used: int = Field(description="How many finalised invoices it discounted")
    redeemed_at: datetime = Field(description="When it was redeemed")

    @classmethod
    def of(cls, redemption: CouponRedemption, code: str) -> CouponRedemptionOut:
        return cls(
            id=redemption.id,
            organization_id=redemption.organization_id,
            code=code,
            subscription_id=redemption.subscription_id,
            invoice_id=redemption.invoice_id,
            periods_used=redemption.periods_used,
            redeemed_at=redemption.redeemed_at,
        )


class CreditPackCreate(_Body):
    """A credit pack: credits for a price."""

    code: str = Field(pattern=_PACK_CODE, description="The pack's code", examples=["credits-1k"])
    name: str | None = Field(
        default=None, min_length=1, max_length=255, description="A name; the code by default"
    )
    credits: StrictInt = Field(
        ge=1,
        le=MAX_PACK_CREDITS,
        description="The credits it grants when paid (at most 10^12)",
        examples=[1000],
    )
    price: StrictInt = Field(
        ge=1, le=INT64_MAX, description="Its price in minor units of `currency`", examples=[999]
    )
    currency: str = Field(pattern=_CURRENCY, description="ISO 4217 code", examples=["USD"])
    stripe_price_id: str | None = Field(
        default=None, min_length=1, max_length=255, description="Its price id at Stripe"
    )
    lemon_squeezy_variant_id: str | None = Field(
        default=None, min_length=1, max_length=255, description="Its variant id at Lemon Squeezy"
    )


class CreditPackOut(BaseModel):
    """A credit pack of the catalog."""

    code: str = Field(description="The pack's code", examples=["credits-1k"])
    name: str = Field(description="The pack's name")
    credits: int = Field(description="The credits it grants when paid in full")
    price: int = Field(description="Its price in minor units of `currency`")
    currency: str = Field(description="ISO 4217 code", examples=["USD"])
    active: bool = Field(description="Whether it is on sale")
    stripe_price_id: str | None = Field(default=None, description="Its price id at Stripe")
    lemon_squeezy_variant_id: str | None = Field(
        default=None, description="Its variant id at Lemon Squeezy"
    )

    @classmethod
    def of(cls, pack: CreditPack) -> CreditPackOut:
        return cls(
            code=pack.code,
            name=pack.name,
            credits=pack.credits,
            price=pack.price,
            currency=pack.currency,
            active=pack.active,
            stripe_price_id=pack.stripe_price_id,
            lemon_squeezy_variant_id=pack.lemon_squeezy_variant_id,
        )


class CreditPackPurchase(_Body):
    """A purchase of a pack on sale."""

    code: str = Field(
        min_length=1, max_length=50, description="The pack's code", examples=["credits-1k"]
    )
