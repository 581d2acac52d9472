"""How a coupon becomes an invoice's discount (docs/billing.md, "Coupons").

A draft knows its coupon by `invoice.metadata["coupon"]`: `{"redemption_id": ..., "code":
...}`, the organisation's redemption it applies. `recompute_totals` reads it (`discount_of`)
and spreads the discount over the lines, once per line, before tax:

- a percentage: each line's discount is `apply_rate(amount, rate)`, rounded once, half up;
- a fixed amount: `min(amount_off, subtotal)` (never more than the invoice's charges net of
  its credits) spread over the positive lines in proportion to their amounts, each share
  rounded down and the remaining minor units given one each to the lines with the largest
  remainders (earliest first on a tie), so the shares sum exactly and no line goes below 0.

A subscription's redemption attaches itself to the subscription's drafts while its duration
lasts (`attach_subscription_coupon`); each finalised invoice uses one period of it
(`use_coupon_period`), counted by a conditional UPDATE so that a `once` coupon discounts one
invoice however many drafts race to be finalised.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.money import BasisPoints, Money
from saascore.models import Coupon, CouponDuration, CouponRedemption, Invoice, InvoiceStatus

__all__ = [
    "COUPON_KEY",
    "Discount",
    "attach_subscription_coupon",
    "discount_of",
    "has_coupon",
    "spread_amount_off",
    "use_coupon_period",
]

#: The key of `invoice.metadata` naming the redemption a draft applies.
COUPON_KEY: Final = "coupon"


@dataclass(frozen=True, slots=True)
class Discount:
    """An invoice's discount: a rate (basis points, at most 100 %) or a fixed amount."""

    rate: BasisPoints | None = None
    amount_off: Money | None = None


def spread_amount_off(amounts: Sequence[Money], amount_off: Money) -> list[Money]:
    """Each line's share of a fixed discount: `min(amount_off, max(subtotal, 0))` over the
    positive lines in proportion (largest remainders get the leftover minor units); credit
    and zero lines get none. The shares sum exactly to that amount; none exceeds its line."""
    currency = amount_off.currency
    subtotal = sum(amount.minor for amount in amounts)
    positive = sum(amount.minor for amount in amounts if amount.minor > 0)
    total = min(amount_off.minor, max(subtotal, 0))
    if total <= 0 or positive <= 0:
        return [Money.zero(currency) for _ in amounts]
    shares: list[int] = []
    remainders: list[tuple[int, int]] = []
    for index, amount in enumerate(amounts):
        if amount.minor <= 0:
            shares.append(0)
            continue
        share, remainder = divmod(total * amount.minor, positive)
        shares.append(share)
        if remainder:
            remainders.append((-remainder, index))
    for _, index in sorted(remainders)[: total - sum(shares)]:
        shares[index] += 1
    return [Money(share, currency) for share in shares]


def _redemption_id(invoice: Invoice) -> uuid.UUID | None:
    entry: Any = (invoice.metadata_ or {}).get(COUPON_KEY)
    if not isinstance(entry, dict):
        return None
    try:
        return uuid.UUID(str(entry.get("redemption_id")))
    except ValueError:
        return None


def has_coupon(invoice: Invoice) -> bool:
    """Whether the invoice applies a coupon (a redemption is attached to it)."""
    return _redemption_id(invoice) is not None


async def _redemption(s: AsyncSession, invoice: Invoice) -> tuple[CouponRedemption, Coupon] | None:
    redemption_id = _redemption_id(invoice)
    if redemption_id is None:
        return None
    row = (
        await s.execute(
            sa.select(CouponRedemption, Coupon)
            .join(Coupon, Coupon.id == CouponRedemption.coupon_id)
            .where(
                CouponRedemption.organization_id == invoice.organization_id,
                CouponRedemption.id == redemption_id,
            )
        )
    ).one_or_none()
    return (row[0], row[1]) if row is not None else None


async def discount_of(s: AsyncSession, invoice: Invoice) -> Discount | None:
    """The discount of the coupon the invoice applies, or None (no coupon, or a fixed amount
    in another currency, which redemption refuses and this ignores)."""
    found = await _redemption(s, invoice)
    if found is None:
        return None
    coupon = found[1]
    if coupon.percent_off is not None:
        return Discount(rate=BasisPoints.discount(coupon.percent_off))
    if coupon.amount_off is not None and coupon.currency == invoice.currency:
        return Discount(amount_off=Money(coupon.amount_off, invoice.currency))
    return None


def _periods_left(duration: CouponDuration, periods: int | None, used: int) -> bool:
    if duration is CouponDuration.FOREVER:
        return True
    limit = 1 if duration is CouponDuration.ONCE else periods or 0
    return used < limit


def attach(invoice: Invoice, redemption: CouponRedemption, code: str) -> None:
    """Make the draft apply `redemption` (its totals change at the next recompute)."""
    invoice.metadata_ = {
        **(invoice.metadata_ or {}),
        COUPON_KEY: {"redemption_id": str(redemption.id), "code": code},
    }


def detach(invoice: Invoice) -> None:
    """Make the draft apply no coupon."""
    invoice.metadata_ = {
        key: value for key, value in (invoice.metadata_ or {}).items() if key != COUPON_KEY
    }


async def attach_subscription_coupon(s: AsyncSession, invoice: Invoice) -> CouponRedemption | None:
    """Attach the subscription's live redemption (one whose duration has periods left) to
    `invoice`, a draft of that subscription without a coupon, and return it; None when there
    is nothing to attach. The billing run calls it (through `recompute_totals`, which every
    draft change and `finalize` run) for each renewal invoice; the period is counted used when
    the invoice is finalised (`use_coupon_period`)."""
    if (
        invoice.status is not InvoiceStatus.DRAFT
        or invoice.subscription_id is None
        or _redemption_id(invoice) is not None
    ):
        return None
    rows = (
        await s.execute(
            sa.select(CouponRedemption, Coupon)
            .join(Coupon, Coupon.id == CouponRedemption.coupon_id)
            .where(
                CouponRedemption.organization_id == invoice.organization_id,
                CouponRedemption.subscription_id == invoice.subscription_id,
            )
            .order_by(CouponRedemption.id.desc())
            .execution_options(populate_existing=True)
        )
    ).all()
    for redemption, coupon in rows:
        if _periods_left(coupon.duration, coupon.duration_periods, redemption.periods_used):
            attach(invoice, redemption, coupon.code)
            return redemption
    return None


async def use_coupon_period(s: AsyncSession, invoice: Invoice) -> bool:
    """Count one period of the invoice's redemption used, as the invoice is finalised: a
    conditional UPDATE (`periods_used < limit`), so concurrent finalisations never use more
    periods than the coupon has. When none is left the coupon is detached from the invoice
    (its totals must then be recomputed) and False is returned."""
    found = await _redemption(s, invoice)
    if found is None:
        return False
    redemption, coupon = found
    condition: sa.ColumnElement[bool] = sa.true()
    if redemption.subscription_id is not None and coupon.duration is not CouponDuration.FOREVER:
        limit = 1 if coupon.duration is CouponDuration.ONCE else coupon.duration_periods or 0
        condition = CouponRedemption.periods_used < limit
    used = await s.scalar(
        sa.update(CouponRedemption)
        .where(
            CouponRedemption.organization_id == redemption.organization_id,
            CouponRedemption.id == redemption.id,
            condition,
        )
        .values(periods_used=CouponRedemption.periods_used + 1)
        .returning(CouponRedemption.periods_used)
        .execution_options(synchronize_session=False)
    )
    if used is None:
        detach(invoice)
        return False
    return True
