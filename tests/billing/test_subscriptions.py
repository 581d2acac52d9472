"""Subscriptions: creating one (with and without a trial), one live per organisation, canceling
at the period's end or now, resuming, upgrading with proration on the upcoming invoice,
scheduling a downgrade, and the organisation's plan following the subscription."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService
from saascore.billing.errors import (
    InvalidTransition,
    OutsidePeriod,
    PeriodEnded,
    PeriodOutOfRange,
    PlanPriceMissing,
    SubscriptionExists,
    SubscriptionNotFound,
)
from saascore.billing.subscriptions import SubscriptionService, upcoming_invoice
from saascore.credits import CreditService
from saascore.events.bus import EventBus
from saascore.kit.actors import Actor
from saascore.kit.db import Database
from saascore.models import (
    AuditLog,
    Invoice,
    InvoiceStatus,
    Organization,
    OutboxEvent,
    Subscription,
    SubscriptionStatus,
)
from saascore.models.catalog import BillingCycle
from saascore.plans import PlanService, read_catalog
from saascore.tenancy.service import OrganizationService
from tests.helpers import Clock

S = SubscriptionStatus
OPERATOR = Actor("operator", "op-1")
APRIL = datetime(2024, 4, 1, tzinfo=UTC)  # 30 days: 2,592,000 seconds
MAY = datetime(2024, 5, 1, tzinfo=UTC)


class Billing:
    def __init__(self, database: Database, session: AsyncSession) -> None:
        self.session = session
        self.clock = Clock()
        bus = EventBus()
        bus.in_transaction(AuditService(database).handle)
        self.plans = PlanService(database, bus)
        credits = CreditService(database, bus)
        self.orgs = OrganizationService(database, self.plans, bus, plan_credits=credits)
        self.subs = SubscriptionService(database, self.plans, self.orgs, bus, clock=self.clock)

    async def org(self, currency: str = "USD") -> Organization:
        org = await self.orgs.create(name="Acme", session=self.session)
        if currency != "USD":
            await self.orgs.update(org.id, currency=currency, session=self.session)
        return org

    async def plan_code(self, org_id: uuid.UUID) -> str:
        return (await self.plans.plan_of(org_id, session=self.session)).code

    async def org_row(self, org_id: uuid.UUID) -> Organization:
        self.session.expire_all()
        return await self.orgs.get(org_id, session=self.session)

    async def actions(self, org_id: uuid.UUID) -> list[str]:
        query = sa.select(AuditLog.action).where(AuditLog.organization_id == org_id)
        return list((await self.session.scalars(query.order_by(AuditLog.seq))).all())

    async def outbox(self, org_id: uuid.UUID) -> list[str]:
        query = sa.select(OutboxEvent.type).where(OutboxEvent.organization_id == org_id)
        return list((await self.session.scalars(query.order_by(OutboxEvent.occurred_at))).all())

    async def draft(self, subscription: Subscription) -> Invoice | None:
        return await upcoming_invoice(self.session, subscription)


@pytest_asyncio.fixture(loop_scope="session")
async def billing(database: Database, session: AsyncSession) -> Billing:
    await PlanService(database).load_catalog(read_catalog(), session=session)
    return Billing(database, session)


def half_up(amount: int, numerator: int, denominator: int) -> int:
    """The reference: exact fraction, half away from zero."""
    exact = Fraction(amount * numerator, denominator)
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


class TestCreate:
    async def test_with_the_plans_trial(self, billing: Billing) -> None:
        org = await billing.org()
        sub = await billing.subs.create(
            org.id, "starter", "monthly", at=APRIL, actor=OPERATOR, session=billing.session
        )
        assert sub.status is S.TRIALING
        assert (sub.trial_start, sub.trial_end) == (APRIL, APRIL + timedelta(days=14))
        assert (sub.current_period_start, sub.current_period_end) == (APRIL, MAY)
        assert (sub.unit_amount, sub.currency, sub.billing_cycle) == (999, "USD", "monthly")
        row = await billing.org_row(org.id)
        assert row.plan.code == "starter"
        assert row.subscription_status is S.TRIALING
        assert "subscription.created" in await billing.actions(org.id)
        assert "plan.changed" in await billing.actions(org.id)
        assert "subscription.created" in await billing.outbox(org.id)

    async def test_without_a_trial_is_active(self, billing: Billing) -> None:
        org = await billing.org()
        sub = await billing.subs.create(
            org.id, "pro", BillingCycle.YEARLY, trial_days=0, at=APRIL, session=billing.session
        )
        assert sub.status is S.ACTIVE
        assert sub.trial_end is None
        assert sub.current_period_end == datetime(2025, 4, 1, tzinfo=UTC)
        assert sub.unit_amount == 29_990
        assert (await billing.org_row(org.id)).subscription_status is S.ACTIVE

    async def test_the_anchor_is_the_start_at_a_month_end(self, billing: Billing) -> None:
        org = await billing.org()
        start = datetime(2024, 1, 31, 9, 30, tzinfo=UTC)
        sub = await billing.subs.create(
            org.id, "pro", "monthly", trial_days=0, at=start, session=billing.session
        )
        assert sub.current_period_end == datetime(2024, 2, 29, 9, 30, tzinfo=UTC)

    async def test_a_plan_without_a_price_for_the_cycle_is_refused(self, billing: Billing) -> None:
        org = await billing.org()
        with pytest.raises(PlanPriceMissing) as caught:
            await billing.subs.create(org.id, "pro", "quarterly", session=billing.session)
        assert caught.value.code == "plan_price_missing"
        assert caught.value.status_code == 422
        assert await billing.plan_code(org.id) == "free"

    async def test_a_plan_without_a_price_in_the_orgs_currency_is_refused(
        self, billing: Billing
    ) -> None:
        org = await billing.org(currency="EUR")
        with pytest.raises(PlanPriceMissing):
            await billing.subs.create(org.id, "pro", "monthly", session=billing.session)

    async def test_a_trial_out_of_range_is_refused(self, billing: Billing) -> None:
        org = await billing.org()
        with pytest.raises(PeriodOutOfRange):
            await billing.subs.create(org.id, "pro", trial_days=-1, session=billing.session)

    async def test_a_second_live_subscription_is_refused(self, billing: Billing) -> None:
        org = await billing.org()
        first = await billing.subs.create(org.id, "pro", at=APRIL, session=billing.session)
        with pytest.raises(SubscriptionExists) as caught:
            await billing.subs.create(org.id, "starter", at=APRIL, session=billing.session)
        assert (caught.value.code, caught.value.status_code) == ("subscription_exists", 409)
        assert caught.value.details["subscription"] == str(first.id)
        # Once it has ended, a new one may start.
        await billing.subs.cancel(org.id, at_period_end=False, at=APRIL, session=billing.session)
        again = await billing.subs.create(org.id, "starter", at=APRIL, session=billing.session)
        assert again.status is S.TRIALING

    async def test_the_database_refuses_a_second_live_row(self, billing: Billing) -> None:
        """The partial unique index is what the service's IntegrityError path relies on."""
        org = await billing.org()
        first = await billing.subs.create(org.id, "pro", at=APRIL, session=billing.session)
        duplicate = Subscription(
            organization_id=org.id,
            plan_id=first.plan_id,
            status=S.ACTIVE,
            started_at=APRIL,
            current_period_start=APRIL,
            current_period_end=MAY,
        )
        with pytest.raises(sa.exc.IntegrityError):  # noqa: PT012 - the savepoint is the statement
            async with billing.session.begin_nested():
                billing.session.add(duplicate)
                await billing.session.flush()

    async def test_another_organisations_subscription_is_not_found(self, billing: Billing) -> None:
        mine, theirs = await billing.org(), await billing.org()
        await billing.subs.create(theirs.id, "pro", at=APRIL, session=billing.session)
        with pytest.raises(SubscriptionNotFound):
            await billing.subs.get(mine.id, session=billing.session)
        with pytest.raises(SubscriptionNotFound):
            await billing.subs.cancel(mine.id, session=billing.session)


class TestCreateRace:
    async def test_racing_creates_make_one_subscription(self, race_database: Database) -> None:
        plans = PlanService(race_database)
        orgs = OrganizationService(race_database, plans)
        subs = SubscriptionService(race_database, plans, orgs)
        org = await orgs.create(name="Racer")
        codes = ["starter", "pro", "business", "enterprise"] * 2
        results = await asyncio.gather(
            *(subs.create(org.id, code, "monthly", at=APRIL) for code in codes),
            return_exceptions=True,
        )
        won = [result for result in results if isinstance(result, Subscription)]
        lost = [result for result in results if isinstance(result, SubscriptionExists)]
        assert (len(won), len(lost)) == (1, len(codes) - 1)
        async with race_database.session(readonly=True) as s:
            rows = (
                await s.scalars(
                    sa.select(Subscription).where(Subscription.organization_id == org.id)
                )
            ).all()
            organization = await s.get_one(Organization, org.id)
        assert [row.id for row in rows] == [won[0].id]
        assert organization.plan_id == won[0].plan_id


class TestCancel:
    async def test_at_the_period_end_keeps_it_until_then(self, billing: Billing) -> None:
        org = await billing.org()
        await billing.subs.create(org.id, "pro", trial_days=0, at=APRIL, session=billing.session)
        sub = await billing.subs.cancel(
            org.id, at=APRIL + timedelta(days=3), session=billing.session
        )
        assert sub.status is S.ACTIVE
        assert sub.cancel_at_period_end
        assert sub.ends_at == MAY
        assert "subscription.updated" in await billing.outbox(org.id)
        early = await billing.subs.end_due(
            org.id, at=MAY - timedelta(seconds=1), session=billing.session
        )
        assert early.actions == []
        assert await billing.plan_code(org.id) == "pro"
        done = await billing.subs.end_due(org.id, at=MAY, session=billing.session)
        assert done.actions == ["canceled", "returned_to_default"]
        assert done.subscription is not None
        assert done.subscription.status is S.CANCELED
        row = await billing.org_row(org.id)
        assert (row.plan.code, row.subscription_status) == ("free", S.CANCELED)
        assert "subscription.canceled" in await billing.outbox(org.id)
        again = await billing.subs.end_due(
            org.id, at=MAY + timedelta(days=1), session=billing.session
        )
        assert again.actions == []

    async def test_now_ends_it_and_the_plan_stays_until_what_was_paid_ends(
        self, billing: Billing
    ) -> None:
        org = await billing.org()
        await billing.subs.create(org.id, "pro", trial_days=0, at=APRIL, session=billing.session)
        moment = APRIL + timedelta(days=10)
        sub = await billing.subs.cancel(
            org.id, at_period_end=False, at=moment, session=billing.session
        )
        assert sub.status is S.CANCELED
        assert (sub.canceled_at, sub.ended_at, sub.ends_at) == (moment, moment, MAY)
        assert (await billing.org_row(org.id)).subscription_status is S.CANCELED
        assert (
            await billing.subs.end_due(org.id, at=moment, session=billing.session)
        ).actions == []
        assert await billing.plan_code(org.id) == "pro"
        result = await billing.subs.end_due(org.id, at=MAY, session=billing.session)
        assert result.actions == ["returned_to_default"]
        assert await billing.plan_code(org.id) == "free"

    async def test_now_in_a_trial_returns_to_the_default_plan_at_once(
        self, billing: Billing
    ) -> None:
        org = await billing.org()
        await billing.subs.create(org.id, "pro", at=APRIL, session=billing.session)
        moment = APRIL + timedelta(days=2)
        sub = await billing.subs.cancel(
            org.id, at_period_end=False, at=moment, session=billing.session
        )
        assert sub.ends_at == moment
        result = await billing.subs.end_due(org.id, at=moment, session=billing.session)
        assert result.actions == ["returned_to_default"]
        assert await billing.plan_code(org.id) == "free"

    async def test_a_suspended_subscription_expires_at_its_periods_end(
        self, billing: Billing
    ) -> None:
        org = await billing.org()
        sub = await billing.subs.create(
            org.id, "pro", trial_days=0, at=APRIL, session=billing.session
        )
        sub.status = S.SUSPENDED  # the billing run's dunning, not built yet
        await billing.session.flush()
        result = await billing.subs.end_due(org.id, at=MAY, session=billing.session)
        assert result.actions == ["expired", "returned_to_default"]
        assert result.subscription is not None
        assert result.subscription.status is S.EXPIRED
        assert "subscription.expired" in await billing.outbox(org.id)
        assert (await billing.org_row(org.id)).subscription_status is S.EXPIRED


class TestInvalidTransitions:
    @pytest_asyncio.fixture(loop_scope="session")
    async def canceled(self, billing: Billing) -> Organization:
        org = await billing.org()
        await billing.subs.create(org.id, "pro", trial_days=0, at=APRIL, session=billing.session)
        await billing.subs.cancel(org.id, at_period_end=False, at=APRIL, session=billing.session)
        return org

    async def test_cancel_twice(self, billing: Billing, canceled: Organization) -> None:
        for at_period_end in (False, True):
            with pytest.raises(InvalidTransition) as caught:
                await billing.subs.cancel(
                    canceled.id, at_period_end=at_period_end, session=billing.session
                )
            assert (caught.value.code, caught.value.status_code) == ("invalid_transition", 409)
            assert caught.value.details["current"] == "canceled"

    async def test_resume_a_canceled_one(self, billing: Billing, canceled: Organization) -> None:
        with pytest.raises(InvalidTransition):
            await billing.subs.resume(canceled.id, at=APRIL, session=billing.session)

    async def test_change_the_plan_of_a_canceled_one(
        self, billing: Billing, canceled: Organization
    ) -> None:
        with pytest.raises(InvalidTransition):
            await billing.subs.change_plan(
                canceled.id, "business", at=APRIL, session=billing.session
            )
        assert await billing.plan_code(canceled.id) == "pro"


class TestResume:
    async def test_before_the_period_end_withdraws_the_cancellation(self, billing: Billing) -> None:
        org = await billing.org()
        await billing.subs.create(org.id, "pro", trial_days=0, at=APRIL, session=billing.session)
        await billing.subs.cancel(org.id, at=APRIL, session=billing.session)
        sub = await billing.subs.resume(
            org.id, at=MAY - timedelta(seconds=1), session=billing.session
        )
        assert not sub.cancel_at_period_end
        assert sub.ends_at is None
        assert sub.canceled_at is None
        assert (await billing.subs.end_due(org.id, at=MAY, session=billing.session)).actions == []
        assert (await billing.subs.get(org.id, session=billing.session)).status is S.ACTIVE

    async def test_after_the_period_end_is_refused(self, billing: Billing) -> None:
        org = await billing.org()
        await billing.subs.create(org.id, "pro", trial_days=0, at=APRIL, session=billing.session)
        await billing.subs.cancel(org.id, at=APRIL, session=billing.session)
        with pytest.raises(PeriodEnded) as caught:
            await billing.subs.resume(org.id, at=MAY, session=billing.session)
        assert (caught.value.code, caught.value.status_code) == ("period_ended", 409)
        assert (await billing.subs.get(org.id, session=billing.session)).cancel_at_period_end


class TestUpgrade:
    @pytest.mark.parametrize(
        "at",
        [
            APRIL,  # the first second
            datetime(2024, 4, 11, tzinfo=UTC),
            datetime(2024, 4, 16, tzinfo=UTC),  # half
            datetime(2024, 4, 30, 23, tzinfo=UTC),
            # 599 whole seconds left (a second begun is used): a credit of 0.23 cents rounds to
            # nothing, and a line of nothing is not written.
            datetime(2024, 4, 30, 23, 50, 0, 500_000, tzinfo=UTC),
        ],
    )
    async def test_proration_goes_on_the_upcoming_invoice(
        self, billing: Billing, at: datetime
    ) -> None:
        org = await billing.org()
        sub = await billing.subs.create(
            org.id, "starter", trial_days=0, at=APRIL, session=billing.session
        )
        changed = await billing.subs.change_plan(
            org.id, "pro", at=at, actor=OPERATOR, session=billing.session
        )
        assert (changed.plan.code, changed.unit_amount) == ("pro", 2_999)
        unused = int((MAY - at).total_seconds())  # whole seconds: `at` has at most a half
        credit, charge = half_up(999, unused, 2_592_000), half_up(2_999, unused, 2_592_000)
        invoice = await billing.draft(sub)
        assert invoice is not None
        assert (invoice.status, invoice.period_start, invoice.currency) == (
            InvoiceStatus.DRAFT,
            MAY,
            "USD",
        )
        assert invoice.period_end == datetime(2024, 6, 1, tzinfo=UTC)
        assert invoice.number is None
        lines = [
            (line.amount, line.metadata_["kind"], line.metadata_["proration"])
            for line in invoice.lines
        ]
        expected = [(-credit, "proration", "credit"), (charge, "proration", "charge")]
        assert lines == [line for line in expected if line[0] != 0]
        assert invoice.subtotal == charge - credit == invoice.total == invoice.amount_due
        row = await billing.org_row(org.id)
        assert row.plan.code == "pro"
        actions = await billing.actions(org.id)
        assert actions[-3:] == ["subscription.updated", "plan.changed", "credits.granted"]

    async def test_known_amounts(self, billing: Billing) -> None:
        """docs/billing.md's table: 29.00 paid in April, a change to 99.00 on the 11th."""
        org = await billing.org()
        sub = await billing.subs.create(
            org.id, "starter", trial_days=0, at=APRIL, session=billing.session
        )
        sub.unit_amount = 2_900
        await billing.session.flush()
        await billing.subs.change_plan(
            org.id, "pro", at=datetime(2024, 4, 11, tzinfo=UTC), session=billing.session
        )
        invoice = await billing.draft(sub)
        assert invoice is not None
        # 2,999 for 20 days of 30: 1999.33 -> 1999; 2,900 -> 1933.33 -> 1933.
        assert [line.amount for line in invoice.lines] == [-1_933, 1_999]

    async def test_at_the_last_second_nothing_is_owed(self, billing: Billing) -> None:
        org = await billing.org()
        sub = await billing.subs.create(
            org.id, "starter", trial_days=0, at=APRIL, session=billing.session
        )
        last = MAY - timedelta(seconds=1)
        changed = await billing.subs.change_plan(org.id, "pro", at=last, session=billing.session)
        assert changed.plan.code == "pro"
        assert await billing.draft(sub) is None

    async def test_outside_the_period_is_refused(self, billing: Billing) -> None:
        org = await billing.org()
        await billing.subs.create(
            org.id, "starter", trial_days=0, at=APRIL, session=billing.session
        )
        with pytest.raises(OutsidePeriod) as caught:
            await billing.subs.change_plan(
                org.id, "pro", at=MAY + timedelta(seconds=1), session=billing.session
            )
        assert caught.value.code == "outside_period"
        assert await billing.plan_code(org.id) == "starter"

    async def test_two_upgrades_add_up_on_one_draft(self, billing: Billing) -> None:
        org = await billing.org()
        sub = await billing.subs.create(
            org.id, "starter", trial_days=0, at=APRIL, session=billing.session
        )
        await billing.subs.change_plan(
            org.id, "pro", at=datetime(2024, 4, 11, tzinfo=UTC), session=billing.session
        )
        await billing.subs.change_plan(
            org.id, "business", at=datetime(2024, 4, 21, tzinfo=UTC), session=billing.session
        )
        invoice = await billing.draft(sub)
        assert invoice is not None
        amounts = [line.amount for line in invoice.lines]
        assert [line.position for line in invoice.lines] == [0, 1, 2, 3]
        assert amounts == [
            -half_up(999, 20, 30),
            half_up(2_999, 20, 30),
            -half_up(2_999, 10, 30),
            half_up(5_999, 10, 30),
        ]
        assert invoice.subtotal == sum(amounts) == invoice.total
        assert (
            await billing.session.scalar(
                sa.select(sa.func.count())
                .select_from(Invoice)
                .where(Invoice.organization_id == org.id)
            )
            == 1
        )

    async def test_the_upcoming_invoice_takes_the_organisations_defaults(
        self, billing: Billing
    ) -> None:
        """The upcoming invoice is begun where every draft is (`draft_in`): in the
        organisation's locale, at its country's tax rate."""
        org = await billing.orgs.create(name="Aden", country="YE", session=billing.session)
        await billing.orgs.update(org.id, locale="ar-YE", session=billing.session)
        sub = await billing.subs.create(
            org.id, "starter", trial_days=0, at=APRIL, session=billing.session
        )
        await billing.subs.change_plan(
            org.id, "pro", at=datetime(2024, 4, 11, tzinfo=UTC), session=billing.session
        )
        invoice = await billing.draft(sub)
        assert invoice is not None
        assert (invoice.locale, invoice.tax_rate_bps) == ("ar-YE", 500)
        assert invoice.tax_amount == sum(line.tax_amount for line in invoice.lines) != 0

    async def test_in_a_trial_applies_at_once_without_proration(self, billing: Billing) -> None:
        org = await billing.org()
        sub = await billing.subs.create(org.id, "starter", at=APRIL, session=billing.session)
        changed = await billing.subs.change_plan(
            org.id, "pro", at=APRIL + timedelta(days=1), session=billing.session
        )
        assert (changed.status, changed.plan.code) == (S.TRIALING, "pro")
        assert await billing.draft(sub) is None
        assert await billing.plan_code(org.id) == "pro"


class TestDowngrade:
    async def test_is_scheduled_for_the_period_end(self, billing: Billing) -> None:
        org = await billing.org()
        sub = await billing.subs.create(
            org.id, "business", trial_days=0, at=APRIL, session=billing.session
        )
        changed = await billing.subs.change_plan(
            org.id, "starter", at=APRIL + timedelta(days=5), session=billing.session
        )
        assert changed.plan.code == "business"
        assert changed.unit_amount == 5_999
        assert changed.metadata_["scheduled_change"]["plan"] == "starter"
        assert await billing.plan_code(org.id) == "business"
        assert await billing.draft(sub) is None
        assert (
            await billing.subs.end_due(
                org.id, at=MAY - timedelta(seconds=1), session=billing.session
            )
        ).actions == []
        result = await billing.subs.end_due(org.id, at=MAY, session=billing.session)
        assert result.actions == ["downgraded"]
        assert result.subscription is not None
        assert (result.subscription.plan.code, result.subscription.unit_amount) == ("starter", 999)
        assert "scheduled_change" not in result.subscription.metadata_
        assert await billing.plan_code(org.id) == "starter"
        assert (await billing.subs.end_due(org.id, at=MAY, session=billing.session)).actions == []

    async def test_changing_back_withdraws_it(self, billing: Billing) -> None:
        org = await billing.org()
        await billing.subs.create(
            org.id, "business", trial_days=0, at=APRIL, session=billing.session
        )
        await billing.subs.change_plan(org.id, "starter", at=APRIL, session=billing.session)
        sub = await billing.subs.change_plan(org.id, "business", at=APRIL, session=billing.session)
        assert "scheduled_change" not in sub.metadata_
        assert (await billing.subs.end_due(org.id, at=MAY, session=billing.session)).actions == []
        assert await billing.plan_code(org.id) == "business"

    async def test_an_upgrade_replaces_a_scheduled_downgrade(self, billing: Billing) -> None:
        org = await billing.org()
        await billing.subs.create(org.id, "pro", trial_days=0, at=APRIL, session=billing.session)
        await billing.subs.change_plan(org.id, "starter", at=APRIL, session=billing.session)
        sub = await billing.subs.change_plan(org.id, "business", at=APRIL, session=billing.session)
        assert sub.plan.code == "business"
        assert "scheduled_change" not in sub.metadata_
