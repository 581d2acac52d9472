"""Coupons (issue 12, item 3): the catalog, redemptions exact under races, and the discount
on drafts and on a subscription's invoices for its duration, before tax. SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService
from saascore.billing.coupons import CouponService
from saascore.billing.discounts import spread_amount_off
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
from saascore.billing.invoices import InvoiceService, LineItem, LineKind
from saascore.billing.subscriptions import SubscriptionService
from saascore.config import Settings
from saascore.credits.service import CreditService
from saascore.events.bus import EventBus
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.money import Money
from saascore.models import AuditLog, Coupon, CouponDuration, CouponRedemption, Invoice, OutboxEvent
from saascore.plans import PlanService, read_catalog
from saascore.tenancy.service import OrganizationService
from tests.factories import create_organization, random_code
from tests.helpers import Clock

APRIL = datetime(2024, 4, 1, tzinfo=UTC)
PER_ORG = Settings(invoice_sequence_scope="organization")


def code() -> str:
    return random_code("c").upper()


class Billing:
    def __init__(self, database: Database, session: AsyncSession) -> None:
        self.session = session
        self.clock = Clock(APRIL)
        bus = EventBus()
        bus.in_transaction(AuditService(database).handle)
        self.plans = PlanService(database, bus)
        self.orgs = OrganizationService(
            database, self.plans, bus, plan_credits=CreditService(database, bus)
        )
        self.subs = SubscriptionService(database, self.plans, self.orgs, bus, clock=self.clock)
        self.invoices = InvoiceService(database, PER_ORG, bus, clock=self.clock)
        self.coupons = CouponService(database, bus, clock=self.clock)

    async def org(self, **values: object) -> uuid.UUID:
        return (await create_organization(self.session, **values)).id

    async def percent(self, bps: int, **options: object) -> Coupon:
        return await self.coupons.create(
            code(),
            percent_off=bps,
            session=self.session,
            **options,  # type: ignore[arg-type]
        )

    async def fixed(self, amount: Money, **options: object) -> Coupon:
        return await self.coupons.create(
            code(),
            amount_off=amount,
            session=self.session,
            **options,  # type: ignore[arg-type]
        )

    async def renewal(self, org_id: uuid.UUID, fee: int = 2_999) -> Invoice:
        """What the billing run does: a draft of the subscription's period, then finalised."""
        sub = await self.subs.get(org_id, session=self.session)
        draft = await self.invoices.create_draft(
            org_id,
            sub.currency,
            [LineItem("Pro", fee, kind=LineKind.PLAN)],
            subscription_id=sub.id,
            session=self.session,
        )
        return await self.invoices.finalize(org_id, draft.id, session=self.session)


@pytest_asyncio.fixture(loop_scope="session")
async def billing(database: Database, session: AsyncSession) -> Billing:
    await PlanService(database).load_catalog(read_catalog(), session=session)
    return Billing(database, session)


class TestSpread:
    def test_shares_are_proportional_and_sum_exactly(self) -> None:
        amounts = [Money(m, "USD") for m in (100, 200, 300)]
        shares = spread_amount_off(amounts, Money(100, "USD"))
        assert [s.minor for s in shares] == [17, 33, 50]
        assert sum(s.minor for s in shares) == 100

    def test_the_leftover_goes_to_the_largest_remainders_first(self) -> None:
        shares = spread_amount_off([Money(1, "JPY")] * 3, Money(2, "JPY"))
        assert [s.minor for s in shares] == [1, 1, 0]

    def test_never_more_than_the_subtotal_and_credits_get_none(self) -> None:
        amounts = [Money(500, "EUR"), Money(-200, "EUR"), Money(0, "EUR")]
        shares = spread_amount_off(amounts, Money(10_000, "EUR"))
        assert [s.minor for s in shares] == [300, 0, 0]

    def test_nothing_when_credits_outweigh_charges(self) -> None:
        shares = spread_amount_off([Money(100, "USD"), Money(-300, "USD")], Money(50, "USD"))
        assert [s.minor for s in shares] == [0, 0]


class TestCatalog:
    async def test_create_list_get_and_deactivate(self, billing: Billing) -> None:
        percent = await billing.percent(2000, name="Twenty", max_redemptions=3)
        fixed = await billing.fixed(Money(500, "USD"), duration="repeating", duration_periods=3)
        assert (percent.percent_off, percent.amount_off, percent.currency) == (2000, None, None)
        assert (fixed.amount_off, fixed.currency, fixed.duration_periods) == (500, "USD", 3)
        codes = [c.code for c in await billing.coupons.list(session=billing.session)]
        assert {percent.code, fixed.code} <= set(codes)
        found = await billing.coupons.get_by_code(percent.code.lower(), session=billing.session)
        assert found.id == percent.id
        await billing.coupons.deactivate(percent.code, session=billing.session)
        active = await billing.coupons.list(active=True, session=billing.session)
        assert percent.code not in {c.code for c in active}

    async def test_a_code_is_taken_once(self, billing: Billing) -> None:
        taken = await billing.percent(1000)
        with pytest.raises(CouponExists):
            await billing.coupons.create(
                taken.code.lower(), percent_off=500, session=billing.session
            )

    @pytest.mark.parametrize(
        "options",
        [
            {},
            {"percent_off": 100, "amount_off": Money(1, "USD")},
            {"percent_off": 0},
            {"percent_off": 10_001},
            {"percent_off": True},
            {"amount_off": Money(0, "USD")},
            {"amount_off": 5},
            {"percent_off": 100, "duration": "weekly"},
            {"percent_off": 100, "duration": "repeating"},
            {"percent_off": 100, "duration": "repeating", "duration_periods": 0},
            {"percent_off": 100, "duration": "once", "duration_periods": 2},
            {"percent_off": 100, "max_redemptions": 0},
            {"percent_off": 100, "max_redemptions": 2**63},
            {"percent_off": 100, "name": "bad\x00name"},
            {"percent_off": 100, "expires_at": datetime(2030, 1, 1)},  # noqa: DTZ001
        ],
    )
    async def test_bad_coupons_are_refused(
        self, billing: Billing, options: dict[str, object]
    ) -> None:
        with pytest.raises(InvalidInput):
            await billing.coupons.create(code(), session=billing.session, **options)  # type: ignore[arg-type]
        assert not await billing.session.scalar(
            sa.select(sa.func.count(Coupon.id)).where(Coupon.percent_off == 10_001)
        )

    @pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "ü", "-x", "a\nb"])
    async def test_bad_codes_are_refused(self, billing: Billing, bad: str) -> None:
        with pytest.raises(InvalidCoupon):
            await billing.coupons.create(bad, percent_off=100, session=billing.session)
        with pytest.raises(CouponNotFound):
            await billing.coupons.get_by_code(bad, session=billing.session)

    async def test_the_database_refuses_both_kinds_of_discount(self, billing: Billing) -> None:
        both = Coupon(
            code=code(),
            name="x",
            percent_off=10,
            amount_off=10,
            currency="USD",
            duration=CouponDuration.ONCE,
            times_redeemed=0,
            active=True,
        )
        savepoint = await billing.session.begin_nested()
        billing.session.add(both)
        with pytest.raises(IntegrityError):
            await billing.session.flush()
        await savepoint.rollback()


class TestRedeemOnADraft:
    async def test_a_percentage_is_taken_per_line_before_tax(self, billing: Billing) -> None:
        org = await billing.org(tax_rate_bps=1500)
        draft = await billing.invoices.create_draft(
            org, "USD", [("A", 1_005), ("B", 333)], session=billing.session
        )
        coupon = await billing.percent(1000)
        redemption = await billing.coupons.redeem(
            org, coupon.code, invoice_id=draft.id, session=billing.session
        )
        assert redemption.invoice_id == draft.id
        invoice = await billing.invoices.get(org, draft.id, session=billing.session)
        # 10 % of 10.05 is 1.005 -> 1.01; of 3.33 is 0.333 -> 0.33; tax 15 % of what is left.
        assert [line.discount_amount for line in invoice.lines] == [101, 33]
        assert [line.tax_amount for line in invoice.lines] == [136, 45]
        assert (invoice.subtotal, invoice.discount_amount, invoice.tax_amount) == (1338, 134, 181)
        assert invoice.total == 1338 - 134 + 181
        assert invoice.metadata_["coupon"]["code"] == coupon.code
        assert (
            await billing.coupons.get_by_code(coupon.code, session=billing.session)
        ).times_redeemed == 1
        finalized = await billing.invoices.finalize(org, draft.id, session=billing.session)
        assert finalized.discount_amount == 134

    async def test_a_fixed_amount_is_spread_and_capped(self, billing: Billing) -> None:
        org = await billing.org(tax_rate_bps=1000)
        draft = await billing.invoices.create_draft(
            org, "KWD", [("A", 1_000), ("B", 2_000)], session=billing.session
        )
        coupon = await billing.fixed(Money(10_000, "KWD"))
        await billing.coupons.redeem(org, coupon.code, invoice_id=draft.id, session=billing.session)
        invoice = await billing.invoices.get(org, draft.id, session=billing.session)
        assert [line.discount_amount for line in invoice.lines] == [1_000, 2_000]
        assert (invoice.discount_amount, invoice.tax_amount, invoice.total) == (3_000, 0, 0)
        # A line added later shares the discount too.
        await billing.invoices.add_line(org, draft.id, ("C", 9_000), session=billing.session)
        invoice = await billing.invoices.get(org, draft.id, session=billing.session)
        assert invoice.discount_amount == 10_000
        assert invoice.total == 12_000 - 10_000 + 200

    async def test_refusals_change_nothing(self, billing: Billing) -> None:
        org = await billing.org()
        draft = await billing.invoices.create_draft(
            org, "EUR", [("A", 100)], session=billing.session
        )
        usd = await billing.fixed(Money(5, "USD"))
        with pytest.raises(CouponCurrencyMismatch):
            await billing.coupons.redeem(
                org, usd.code, invoice_id=draft.id, session=billing.session
            )
        expired = await billing.percent(100, expires_at=APRIL - timedelta(seconds=1))
        with pytest.raises(CouponExpired):
            await billing.coupons.redeem(
                org, expired.code, invoice_id=draft.id, session=billing.session
            )
        inactive = await billing.percent(100)
        await billing.coupons.deactivate(inactive.code, session=billing.session)
        with pytest.raises(CouponInactive):
            await billing.coupons.redeem(
                org, inactive.code, invoice_id=draft.id, session=billing.session
            )
        with pytest.raises(CouponNotFound):
            await billing.coupons.redeem(org, "NOPE", invoice_id=draft.id, session=billing.session)
        good = await billing.percent(100)
        with pytest.raises(InvalidInput):
            await billing.coupons.redeem(
                org,
                good.code,
                invoice_id=draft.id,
                subscription_id=uuid.uuid4(),
                session=billing.session,
            )
        counts = await billing.session.scalar(
            sa.select(sa.func.count(CouponRedemption.id)).where(
                CouponRedemption.organization_id == org
            )
        )
        assert counts == 0
        invoice = await billing.invoices.get(org, draft.id, session=billing.session)
        assert invoice.discount_amount == 0
        assert "coupon" not in invoice.metadata_

    async def test_one_coupon_per_draft_and_drafts_only(self, billing: Billing) -> None:
        org = await billing.org()
        draft = await billing.invoices.create_draft(
            org, "USD", [("A", 100)], session=billing.session
        )
        first, second = await billing.percent(100), await billing.percent(200)
        await billing.coupons.redeem(org, first.code, invoice_id=draft.id, session=billing.session)
        with pytest.raises(CouponAlreadyApplied):
            await billing.coupons.redeem(
                org, second.code, invoice_id=draft.id, session=billing.session
            )
        await billing.invoices.finalize(org, draft.id, session=billing.session)
        other = await billing.invoices.create_draft(
            org, "USD", [("A", 100)], session=billing.session
        )
        await billing.invoices.finalize(org, other.id, session=billing.session)
        with pytest.raises(InvoiceNotDraft):
            await billing.coupons.redeem(
                org, second.code, invoice_id=other.id, session=billing.session
            )

    async def test_another_organisations_draft_is_not_found(self, billing: Billing) -> None:
        mine, theirs = await billing.org(), await billing.org()
        draft = await billing.invoices.create_draft(
            theirs, "USD", [("A", 100)], session=billing.session
        )
        coupon = await billing.percent(100)
        with pytest.raises(InvoiceNotFound):
            await billing.coupons.redeem(
                mine, coupon.code, invoice_id=draft.id, session=billing.session
            )
        with pytest.raises(SubscriptionNotFound):
            await billing.coupons.redeem(mine, coupon.code, session=billing.session)

    async def test_the_redemption_is_an_audited_event(self, billing: Billing) -> None:
        org = await billing.org()
        draft = await billing.invoices.create_draft(
            org, "USD", [("A", 100)], session=billing.session
        )
        coupon = await billing.percent(100)
        await billing.coupons.redeem(org, coupon.code, invoice_id=draft.id, session=billing.session)
        actions = (
            await billing.session.scalars(
                sa.select(AuditLog.action).where(AuditLog.organization_id == org)
            )
        ).all()
        assert "coupon.redeemed" in actions
        outbox = (
            await billing.session.scalars(
                sa.select(OutboxEvent.type).where(OutboxEvent.organization_id == org)
            )
        ).all()
        assert "coupon.redeemed" not in outbox  # audited, not a webhook


class TestRedeemOnASubscription:
    async def subscribed(self, billing: Billing) -> uuid.UUID:
        org = (await billing.orgs.create(name="Acme", session=billing.session)).id
        await billing.subs.create(org, "pro", trial_days=0, at=APRIL, session=billing.session)
        return org

    async def test_once_discounts_the_first_invoice_only(self, billing: Billing) -> None:
        org = await self.subscribed(billing)
        coupon = await billing.percent(5000)
        redemption = await billing.coupons.redeem(org, coupon.code, session=billing.session)
        assert redemption.subscription_id is not None
        first, second = await billing.renewal(org, 2_000), await billing.renewal(org, 2_000)
        assert (first.discount_amount, first.total) == (1_000, 1_000)
        assert (second.discount_amount, second.total) == (0, 2_000)
        await billing.session.refresh(redemption)
        assert redemption.periods_used == 1

    async def test_repeating_lasts_its_periods_then_another_may_follow(
        self, billing: Billing
    ) -> None:
        org = await self.subscribed(billing)
        coupon = await billing.fixed(Money(500, "USD"), duration="repeating", duration_periods=2)
        await billing.coupons.redeem(org, coupon.code, session=billing.session)
        with pytest.raises(CouponAlreadyApplied):
            await billing.coupons.redeem(
                org, (await billing.percent(100)).code, session=billing.session
            )
        totals = [(await billing.renewal(org, 2_000)).total for _ in range(3)]
        assert totals == [1_500, 1_500, 2_000]
        with pytest.raises(CouponAlreadyApplied):  # the same coupon on the same subscription
            await billing.coupons.redeem(org, coupon.code, session=billing.session)
        await billing.coupons.redeem(
            org, (await billing.percent(1000)).code, session=billing.session
        )
        assert (await billing.renewal(org, 2_000)).total == 1_800

    async def test_forever_and_the_upcoming_draft_shows_it(self, billing: Billing) -> None:
        org = await self.subscribed(billing)
        sub = await billing.subs.get(org, session=billing.session)
        draft = await billing.invoices.create_draft(
            org,
            "USD",
            [LineItem("Pro", 2_000, kind=LineKind.PLAN)],
            subscription_id=sub.id,
            session=billing.session,
        )
        coupon = await billing.percent(2500, duration="forever")
        await billing.coupons.redeem(org, coupon.code, session=billing.session)
        shown = await billing.invoices.get(org, draft.id, session=billing.session)
        assert shown.discount_amount == 500
        totals = [(await billing.renewal(org, 2_000)).total for _ in range(4)]
        assert totals == [1_500] * 4

    async def test_two_drafts_racing_for_a_once_coupon_discount_one(self, billing: Billing) -> None:
        org = await self.subscribed(billing)
        sub = await billing.subs.get(org, session=billing.session)
        coupon = await billing.percent(10_000)
        await billing.coupons.redeem(org, coupon.code, session=billing.session)
        drafts = [
            await billing.invoices.create_draft(
                org, "USD", [("Pro", 1_000)], subscription_id=sub.id, session=billing.session
            )
            for _ in range(2)
        ]
        assert [d.discount_amount for d in drafts] == [1_000, 1_000]
        finals = [
            await billing.invoices.finalize(org, d.id, session=billing.session) for d in drafts
        ]
        assert sorted(f.total for f in finals) == [0, 1_000]
        assert sum("coupon" in f.metadata_ for f in finals) == 1

    async def test_wrong_currency_is_refused(self, billing: Billing) -> None:
        org = await self.subscribed(billing)
        coupon = await billing.fixed(Money(100, "EUR"))
        with pytest.raises(CouponCurrencyMismatch):
            await billing.coupons.redeem(org, coupon.code, session=billing.session)


class TestRedemptionLimitRace:
    async def test_concurrent_redemptions_stop_exactly_at_the_limit(
        self, race_database: Database
    ) -> None:
        coupons = CouponService(race_database)
        invoices = InvoiceService(race_database, PER_ORG)
        coupon = await coupons.create(code(), percent_off=1000, max_redemptions=5)
        drafts: list[tuple[uuid.UUID, uuid.UUID]] = []
        async with race_database.transaction() as s:
            for _ in range(16):
                org = (await create_organization(s)).id
                draft = await invoices.create_draft(org, "USD", [("A", 100)], session=s)
                drafts.append((org, draft.id))
        results = await asyncio.gather(
            *(coupons.redeem(org, coupon.code, invoice_id=draft) for org, draft in drafts),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, CouponRedemption)]
        lost = [r for r in results if isinstance(r, CouponExhausted)]
        assert (len(won), len(lost)) == (5, 11), results
        async with race_database.session(readonly=True) as s:
            stored = await s.get_one(Coupon, coupon.id)
            redemptions = await s.scalar(
                sa.select(sa.func.count(CouponRedemption.id)).where(
                    CouponRedemption.coupon_id == coupon.id
                )
            )
            discounted = await s.scalar(
                sa.select(sa.func.count(Invoice.id)).where(
                    Invoice.id.in_([d for _, d in drafts]), Invoice.discount_amount == 10
                )
            )
        assert (stored.times_redeemed, redemptions, discounted) == (5, 5, 5)


class TestOncePeriodRace:
    async def test_concurrent_finalisations_use_a_once_coupon_once(
        self, race_database: Database
    ) -> None:
        plans = PlanService(race_database)
        await plans.load_catalog(read_catalog())
        orgs = OrganizationService(race_database, plans)
        subs = SubscriptionService(race_database, plans, orgs)
        invoices = InvoiceService(race_database, PER_ORG)
        coupons = CouponService(race_database)
        org = (await orgs.create(name="Racer")).id
        sub = await subs.create(org, "pro", trial_days=0, at=APRIL)
        coupon = await coupons.create(code(), percent_off=10_000)
        await coupons.redeem(org, coupon.code)
        drafts = [
            await invoices.create_draft(org, "USD", [("Pro", 1_000)], subscription_id=sub.id)
            for _ in range(6)
        ]
        finals = await asyncio.gather(*(invoices.finalize(org, d.id) for d in drafts))
        assert sorted(f.total for f in finals) == [0] + [1_000] * 5
        async with race_database.session(readonly=True) as s:
            used = await s.scalar(
                sa.select(CouponRedemption.periods_used).where(
                    CouponRedemption.organization_id == org
                )
            )
        assert used == 1
