"""Coupons: a catalog of discounts that organisations redeem (docs/billing.md, "Coupons").

- A coupon takes a percentage off (basis points, at most 100 %) or a fixed amount in one
  currency, for `once` (one invoice), `repeating` (N invoices) or `forever`. It may have a
  redemption limit (`max_redemptions`) and a last moment of redemption (`expires_at`); an
  operator may deactivate it. Expiry and deactivation stop new redemptions only: what was
  redeemed keeps applying for its duration.
- A **redemption** applies the coupon to the organisation's subscription (then to each of its
  invoices while the duration lasts) or to one draft invoice. The limit is exact under races:
  `times_redeemed` grows by one conditional `UPDATE ... WHERE times_redeemed <
  max_redemptions RETURNING`, never by read-then-write.
- One coupon at a time: a subscription with a live redemption, or a draft with a coupon,
  refuses another (`coupon_already_applied`), and an organisation redeems a coupon once per
  subscription (a unique constraint).
- The discount itself is computed where every total is, in `billing.invoices`
  (`billing.discounts` says how).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from saascore.audit.service import AuditService, audited_bus
from saascore.billing.discounts import attach, attach_subscription_coupon
from saascore.billing.errors import (
    CouponAlreadyApplied,
    CouponCurrencyMismatch,
    CouponExhausted,
    CouponExists,
    CouponExpired,
    CouponInactive,
    CouponNotFound,
    InvalidCoupon,
    InvoiceNotDraft,
    InvoiceNotFound,
    SubscriptionNotFound,
)
from saascore.billing.invoices import recompute_totals
from saascore.events.bus import EventBus
from saascore.events.catalog import CouponRedeemed
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.money import MAX_DISCOUNT_BASIS_POINTS, Money
from saascore.kit.time import utcnow
from saascore.kit.validation import checked_instant, control_character
from saascore.models import (
    LIVE_SUBSCRIPTION_STATUSES,
    Coupon,
    CouponDuration,
    CouponRedemption,
    Invoice,
    InvoiceStatus,
    Subscription,
)

__all__ = ["MAX_DURATION_PERIODS", "MAX_REDEMPTIONS", "CouponService", "coupon_code"]

#: The most periods a repeating coupon lasts (100 years of months).
MAX_DURATION_PERIODS: Final = 1200
#: The largest redemption limit (an INTEGER column).
MAX_REDEMPTIONS: Final = 2_147_483_647
_CODE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_NAME: Final = 255


def coupon_code(code: object) -> str:
    """A coupon's code as stored: 1 to 64 letters, digits, `_`, `.` or `-`, upper case (codes
    are typed by people: `summer20` is `SUMMER20`)."""
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise InvalidCoupon(
            f"{str(code)[:70]!r} is not a coupon code: 1 to 64 letters, digits, '_', '.' or '-'",
            field="code",
        )
    return code.upper()


def _name(name: object, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise InvalidCoupon(f"a coupon's name is 1 to {_MAX_NAME} characters", field="name")
    if control_character(name) is not None:
        raise InvalidCoupon("a coupon's name may not hold control characters", field="name")
    return name.strip()


def _amount_off(amount: Money | int | None, currency: str | None) -> Money | None:
    if isinstance(amount, Money):
        if currency is not None and Money.zero(currency).currency != amount.currency:
            raise InvalidCoupon("amount_off and currency disagree", field="currency")
        return amount
    if amount is None:
        if currency is not None:
            raise InvalidCoupon("a currency goes with amount_off only", field="currency")
        return None
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidCoupon("amount_off is an amount of money", field="amount_off")
    if currency is None:
        raise InvalidCoupon("amount_off needs its currency", field="currency")
    return Money(amount, currency)


def _bounded_int(value: object, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidCoupon(f"{field} is an integer from {low} to {high}", field=field)
    return value


class CouponService:
    """`core.coupons`: the coupon catalog (operators) and redemptions (per organisation)."""

    def __init__(
        self,
        database: Database,
        events: EventBus | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.events = events if events is not None else audited_bus(AuditService(database))
        self.clock = clock

    # --- the catalog ---------------------------------------------------------------------------
    async def create(
        self,
        code: str,
        *,
        name: str | None = None,
        percent_off: int | None = None,
        amount_off: Money | int | None = None,
        currency: str | None = None,
        duration: CouponDuration | str = CouponDuration.ONCE,
        duration_periods: int | None = None,
        max_redemptions: int | None = None,
        expires_at: datetime | None = None,
        session: AsyncSession | None = None,
    ) -> Coupon:
        """A coupon taking `percent_off` basis points (1 to 10 000) or `amount_off` (a
        positive `Money`, or minor units of `currency`) off, exactly one of them, for
        `duration` (`repeating` needs `duration_periods`, the others refuse it).
        `coupon_exists` when the code is taken."""
        code = coupon_code(code)
        amount_off = _amount_off(amount_off, currency)
        if (percent_off is None) == (amount_off is None):
            raise InvalidCoupon(
                "a coupon takes either a percentage or an amount off", field="percent_off"
            )
        if percent_off is not None:
            _bounded_int(percent_off, "percent_off", 1, MAX_DISCOUNT_BASIS_POINTS)
        if amount_off is not None and (not isinstance(amount_off, Money) or amount_off.minor <= 0):
            raise InvalidCoupon("amount_off is a positive amount of money", field="amount_off")
        try:
            duration = CouponDuration(duration)
        except ValueError:
            raise InvalidCoupon(
                f"duration is once, repeating or forever, not {str(duration)[:20]!r}",
                field="duration",
            ) from None
        if duration is CouponDuration.REPEATING:
            if duration_periods is None:
                raise InvalidCoupon(
                    "a repeating coupon needs duration_periods", field="duration_periods"
                )
            _bounded_int(duration_periods, "duration_periods", 1, MAX_DURATION_PERIODS)
        elif duration_periods is not None:
            raise InvalidCoupon(
                f"only a repeating coupon has duration_periods, not {duration.value}",
                field="duration_periods",
            )
        if max_redemptions is not None:
            _bounded_int(max_redemptions, "max_redemptions", 1, MAX_REDEMPTIONS)
        if expires_at is not None:
            expires_at = checked_instant(expires_at, field="expires_at")
        coupon = Coupon(
            code=code,
            name=_name(name, code),
            percent_off=percent_off,
            amount_off=amount_off.minor if amount_off is not None else None,
            currency=amount_off.currency if amount_off is not None else None,
            duration=duration,
            duration_periods=duration_periods,
            max_redemptions=max_redemptions,
            times_redeemed=0,
            expires_at=expires_at,
            active=True,
        )
        async with self.database.scope(session) as s:
            if await s.scalar(sa.select(Coupon.id).where(Coupon.code == code)) is not None:
                raise CouponExists(f"a coupon {code} exists", coupon=code)
            try:
                async with s.begin_nested():
                    s.add(coupon)
                    await s.flush()
            except IntegrityError:
                raise CouponExists(f"a coupon {code} exists", coupon=code) from None
            return coupon

    async def list(
        self, *, active: bool | None = None, session: AsyncSession | None = None
    ) -> Sequence[Coupon]:
        """Every coupon by code, or only the active (or inactive) ones."""
        query = sa.select(Coupon).order_by(Coupon.code)
        if active is not None:
            query = query.where(Coupon.active.is_(active))
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def get_by_code(self, code: str, *, session: AsyncSession | None = None) -> Coupon:
        """The coupon with this code (in any case), or `coupon_not_found`."""
        try:
            code = coupon_code(code)
        except InvalidCoupon:
            raise CouponNotFound(f"no coupon {code[:70]!r}", coupon=code[:70]) from None
        async with self.database.scope(session, readonly=True) as s:
            coupon = await s.scalar(
                sa.select(Coupon)
                .where(Coupon.code == code)
                .execution_options(populate_existing=True)
            )
        if coupon is None:
            raise CouponNotFound(f"no coupon {code}", coupon=code)
        return coupon

    async def deactivate(self, code: str, *, session: AsyncSession | None = None) -> Coupon:
        """Stop new redemptions of the coupon (idempotent); existing ones keep applying."""
        async with self.database.scope(session) as s:
            coupon = await self.get_by_code(code, session=s)
            coupon.active = False
            await s.flush()
            return coupon

    # --- redemptions ---------------------------------------------------------------------------
    async def redeem(
        self,
        org_id: uuid.UUID,
        code: str,
        *,
        subscription_id: uuid.UUID | None = None,
        invoice_id: uuid.UUID | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> CouponRedemption:
        """Redeem the coupon for the organisation: on `invoice_id` (a draft), on
        `subscription_id`, or, with neither, on its live subscription. The discount shows
        on the draft (or the subscription's drafts) at once. Emits `coupon.redeemed`.

        Refusals: `coupon_not_found`, `coupon_inactive`, `coupon_expired`,
        `coupon_exhausted`, `coupon_currency_mismatch`, `coupon_already_applied`,
        `subscription_not_found`, `invoice_not_found`, `invoice_not_draft`."""
        if subscription_id is not None and invoice_id is not None:
            raise InvalidInput(
                "a coupon is redeemed on a subscription or on an invoice, not both",
                field="invoice_id",
            )
        now = self.clock()
        async with self.database.scope(session) as s:
            coupon = await self.get_by_code(code, session=s)
            _check_redeemable(coupon, now)
            if invoice_id is not None:
                invoice = await _locked_draft(s, org_id, invoice_id)
                _check_currency(coupon, invoice.currency)
                if (invoice.metadata_ or {}).get("coupon"):
                    raise CouponAlreadyApplied(
                        f"invoice {invoice_id} already applies a coupon", invoice=str(invoice_id)
                    )
                target: Subscription | Invoice = invoice
            else:
                subscription = await _subscription(s, org_id, subscription_id)
                _check_currency(coupon, subscription.currency)
                await _check_no_live_coupon(s, subscription)
                target = subscription
            redemption = CouponRedemption(
                organization_id=org_id,
                coupon_id=coupon.id,
                subscription_id=target.id if isinstance(target, Subscription) else None,
                invoice_id=target.id if isinstance(target, Invoice) else None,
                periods_used=0,
                redeemed_at=now,
            )
            try:
                async with s.begin_nested():
                    s.add(redemption)
                    await s.flush()
            except IntegrityError:
                raise CouponAlreadyApplied(
                    f"coupon {coupon.code} was already redeemed here", coupon=coupon.code
                ) from None
            await _count_redemption(s, coupon, now)
            if isinstance(target, Invoice):
                attach(target, redemption, coupon.code)
                await recompute_totals(s, target)
            else:
                for draft in await _drafts(s, target):
                    if await attach_subscription_coupon(s, draft) is not None:
                        await recompute_totals(s, draft)
            await s.flush()
            await self.events.emit(
                s,
                org_id,
                CouponRedeemed(
                    redemption_id=redemption.id,
                    coupon=coupon.code,
                    subscription_id=redemption.subscription_id,
                    invoice_id=redemption.invoice_id,
                ),
                actor=actor,
                target_id=redemption.id,
            )
            return redemption

    async def redemptions(
        self, org_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> Sequence[CouponRedemption]:
        """The organisation's redemptions, oldest first."""
        async with self.database.scope(session, readonly=True) as s:
            return (
                await s.scalars(
                    sa.select(CouponRedemption)
                    .where(CouponRedemption.organization_id == org_id)
                    .order_by(CouponRedemption.id)
                )
            ).all()


def _check_redeemable(coupon: Coupon, now: datetime) -> None:
    if not coupon.active:
        raise CouponInactive(f"coupon {coupon.code} is inactive", coupon=coupon.code)
    if coupon.expires_at is not None and coupon.expires_at <= now:
        raise CouponExpired(
            f"coupon {coupon.code} expired at {coupon.expires_at.isoformat()}",
            coupon=coupon.code,
            expires_at=coupon.expires_at.isoformat(),
        )


def _check_currency(coupon: Coupon, currency: str) -> None:
    if coupon.currency is not None and coupon.currency != currency:
        raise CouponCurrencyMismatch(
            f"coupon {coupon.code} takes {coupon.currency} off, not {currency}",
            coupon=coupon.code,
            currency=currency,
        )


async def _count_redemption(s: AsyncSession, coupon: Coupon, now: datetime) -> None:
    """`times_redeemed + 1` in one conditional UPDATE: exact however many redemptions race
    (on PostgreSQL the row lock serialises them and the WHERE is re-checked)."""
    counted = await s.scalar(
        sa.update(Coupon)
        .where(
            Coupon.id == coupon.id,
            Coupon.active.is_(True),
            sa.or_(Coupon.expires_at.is_(None), Coupon.expires_at > now),
            sa.or_(
                Coupon.max_redemptions.is_(None),
                Coupon.times_redeemed < Coupon.max_redemptions,
            ),
        )
        .values(times_redeemed=Coupon.times_redeemed + 1, updated_at=now)
        .returning(Coupon.times_redeemed)
        .execution_options(synchronize_session=False)
    )
    if counted is None:
        fresh = await s.scalar(
            sa.select(Coupon)
            .where(Coupon.id == coupon.id)
            .execution_options(populate_existing=True)
        )
        assert fresh is not None
        _check_redeemable(fresh, now)
        raise CouponExhausted(
            f"coupon {coupon.code} was redeemed {fresh.times_redeemed} times, its limit",
            coupon=coupon.code,
            max_redemptions=fresh.max_redemptions,
        )
    coupon.times_redeemed = counted


async def _locked_draft(s: AsyncSession, org_id: uuid.UUID, invoice_id: uuid.UUID) -> Invoice:
    invoice = (
        await s.scalars(
            sa.select(Invoice)
            .options(selectinload(Invoice.lines))
            .where(Invoice.organization_id == org_id, Invoice.id == invoice_id)
            .with_for_update(of=Invoice)
            .execution_options(populate_existing=True)
        )
    ).one_or_none()
    if invoice is None:
        raise InvoiceNotFound(f"no invoice {invoice_id}", invoice=str(invoice_id))
    if invoice.status is not InvoiceStatus.DRAFT:
        raise InvoiceNotDraft(
            f"invoice {invoice.number or invoice.id} is {invoice.status.value}: a coupon "
            "applies to a draft",
            invoice=str(invoice.id),
            status=invoice.status.value,
        )
    return invoice


async def _subscription(
    s: AsyncSession, org_id: uuid.UUID, subscription_id: uuid.UUID | None
) -> Subscription:
    query = (
        sa.select(Subscription)
        .where(
            Subscription.organization_id == org_id,
            Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
        )
        .with_for_update()
    )
    if subscription_id is not None:
        query = query.where(Subscription.id == subscription_id)
    subscription = (await s.scalars(query.limit(1))).one_or_none()
    if subscription is None:
        raise SubscriptionNotFound(
            f"organisation {org_id} has no live subscription"
            + (f" {subscription_id}" if subscription_id else ""),
            organization=str(org_id),
        )
    return subscription


async def _check_no_live_coupon(s: AsyncSession, subscription: Subscription) -> None:
    rows = (
        await s.execute(
            sa.select(CouponRedemption.periods_used, Coupon.duration, Coupon.duration_periods)
            .join(Coupon, Coupon.id == CouponRedemption.coupon_id)
            .where(
                CouponRedemption.organization_id == subscription.organization_id,
                CouponRedemption.subscription_id == subscription.id,
            )
        )
    ).all()
    for used, duration, periods in rows:
        limit = {CouponDuration.ONCE: 1, CouponDuration.REPEATING: periods or 0}.get(duration)
        if limit is None or used < limit:
            raise CouponAlreadyApplied(
                f"subscription {subscription.id} already applies a coupon",
                subscription=str(subscription.id),
            )


async def _drafts(s: AsyncSession, subscription: Subscription) -> Sequence[Invoice]:
    return (
        await s.scalars(
            sa.select(Invoice)
            .options(selectinload(Invoice.lines))
            .where(
                Invoice.organization_id == subscription.organization_id,
                Invoice.subscription_id == subscription.id,
                Invoice.status == InvoiceStatus.DRAFT,
            )
            .with_for_update(of=Invoice)
        )
    ).all()
