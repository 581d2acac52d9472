"""Dunning (issue 12, item 6): an unpaid invoice past its due date is overdue once
(`invoice.overdue`), makes its organisation's subscription past due, and after the grace
period suspends the subscription and the organisation; again and again, and when runs race,
each of those happens once. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService
from saascore.billing.dunning import OVERDUE_MARK, DunningService, dunning_step
from saascore.billing.invoices import InvoiceService
from saascore.billing.subscriptions import SubscriptionService
from saascore.config import Settings
from saascore.credits import CreditService
from saascore.events.bus import EventBus
from saascore.kit.db import Database
from saascore.models import (
    AuditLog,
    Invoice,
    Organization,
    OrganizationStatus,
    OutboxEvent,
    Subscription,
    SubscriptionStatus,
)
from saascore.plans import PlanService, read_catalog
from saascore.tenancy.service import OrganizationService
from tests.helpers import Clock

S = SubscriptionStatus
APRIL = datetime(2024, 4, 1, 9, 0, tzinfo=UTC)
#: Finalised on 1 April with 14 due days: due on 15 April, overdue from the 16th, and more
#: than 7 days overdue (the grace period) from the 23rd.
DUE = APRIL + timedelta(days=14)
SETTINGS = Settings(
    invoice_sequence_scope="organization", invoice_due_days=14, dunning_grace_days=7
)


def day(number: int) -> datetime:
    """A moment in April 2024."""
    return datetime(2024, 4, number, 3, 0, tzinfo=UTC)


class Billing:
    def __init__(self, database: Database) -> None:
        self.clock = Clock(APRIL)
        bus = EventBus()
        bus.in_transaction(AuditService(database).handle)
        self.plans = PlanService(database, bus)
        credits = CreditService(database, bus)
        self.orgs = OrganizationService(database, self.plans, bus, plan_credits=credits)
        self.subs = SubscriptionService(database, self.plans, self.orgs, bus, clock=self.clock)
        self.invoices = InvoiceService(database, SETTINGS, bus, clock=self.clock)
        self.dunning = DunningService(database, SETTINGS, self.subs, self.orgs, bus)

    async def unpaid(
        self, session: AsyncSession | None = None, *, trial_days: int = 0
    ) -> tuple[uuid.UUID, Invoice]:
        """An organisation on `pro` with an open invoice due on 15 April."""
        org = await self.orgs.create(name="Acme", session=session)
        await self.subs.create(org.id, "pro", trial_days=trial_days, at=APRIL, session=session)
        draft = await self.invoices.create_draft(
            org.id, "USD", [("Pro, April", 2900)], session=session
        )
        invoice = await self.invoices.finalize(org.id, draft.id, session=session)
        assert invoice.due_date == DUE.date()
        return org.id, invoice


async def outbox(session: AsyncSession, org_id: uuid.UUID) -> list[OutboxEvent]:
    query = sa.select(OutboxEvent).where(OutboxEvent.organization_id == org_id)
    return list((await session.scalars(query.order_by(OutboxEvent.occurred_at))).all())


async def types(session: AsyncSession, org_id: uuid.UUID) -> list[str]:
    return [event.type for event in await outbox(session, org_id)]


async def state(session: AsyncSession, org_id: uuid.UUID) -> tuple[S, S | None, OrganizationStatus]:
    session.expire_all()
    subscription = await session.scalar(
        sa.select(Subscription).where(Subscription.organization_id == org_id)
    )
    organization = await session.get_one(Organization, org_id)
    assert subscription is not None
    return subscription.status, organization.subscription_status, organization.status


@pytest_asyncio.fixture(loop_scope="session")
async def billing(database: Database, session: AsyncSession) -> Billing:
    await PlanService(database).load_catalog(read_catalog(), session=session)
    return Billing(database)


class TestOverdue:
    async def test_nothing_before_or_on_the_due_date(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, _ = await billing.unpaid(session)
        for moment in (day(2), day(15), DUE + timedelta(hours=12)):
            assert await billing.dunning.run(org_id, moment, session=session) == []
        assert "invoice.overdue" not in await types(session, org_id)
        assert await state(session, org_id) == (S.ACTIVE, S.ACTIVE, OrganizationStatus.ACTIVE)

    async def test_the_day_after_it_is_overdue_once_and_the_subscription_past_due(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, invoice = await billing.unpaid(session)
        invoice_id = invoice.id
        actions = await billing.dunning.run(org_id, day(16), session=session)
        assert actions == [f"overdue {invoice.number}", "past_due"]
        assert await billing.dunning.run(org_id, day(17), session=session) == []
        events = await outbox(session, org_id)
        overdue = [event for event in events if event.type == "invoice.overdue"]
        assert len(overdue) == 1
        assert overdue[0].body["data"]["number"] == invoice.number
        assert overdue[0].body["data"]["due_date"] == "2024-04-15"
        updated = [event.body["data"] for event in events if event.type == "subscription.updated"]
        assert updated[-1]["status"] == "past_due"
        assert updated[-1]["changes"] == {"status": {"from": "active", "to": "past_due"}}
        assert await state(session, org_id) == (S.PAST_DUE, S.PAST_DUE, OrganizationStatus.ACTIVE)
        row = await session.get_one(Invoice, (org_id, invoice_id))
        assert row.metadata_[OVERDUE_MARK] == day(16).isoformat()
        audited = await session.scalars(
            sa.select(AuditLog.action).where(AuditLog.organization_id == org_id)
        )
        assert "invoice.overdue" in set(audited)

    async def test_a_paid_or_voided_invoice_is_never_overdue(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, invoice = await billing.unpaid(session)
        await billing.invoices.void(org_id, invoice.id, session=session)
        assert await billing.dunning.run(org_id, day(30), session=session) == []
        assert await state(session, org_id) == (S.ACTIVE, S.ACTIVE, OrganizationStatus.ACTIVE)

    async def test_a_trialing_subscription_stays_trialing(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, invoice = await billing.unpaid(session, trial_days=30)
        actions = await billing.dunning.run(org_id, day(16), session=session)
        assert actions == [f"overdue {invoice.number}"]
        assert (await state(session, org_id))[0] is S.TRIALING

    async def test_another_organisations_invoice_does_not_touch_this_one(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        mine, _ = await billing.unpaid(session)
        theirs, _ = await billing.unpaid(session)
        await billing.dunning.run(theirs, day(30), session=session)
        assert await state(session, mine) == (S.ACTIVE, S.ACTIVE, OrganizationStatus.ACTIVE)
        assert "invoice.overdue" not in await types(session, mine)

    async def test_the_billing_runs_step_is_the_same(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, invoice = await billing.unpaid(session)
        actions = await dunning_step(billing.dunning, org_id, day(16), session)
        assert actions == [f"overdue {invoice.number}", "past_due"]


class TestGracePeriod:
    async def test_suspends_once_the_grace_period_is_over(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, invoice = await billing.unpaid(session)
        number = invoice.number
        await billing.dunning.run(org_id, day(16), session=session)
        # 22 April: exactly seven days past due, still within the grace period.
        assert await billing.dunning.run(org_id, day(22), session=session) == []
        actions = await billing.dunning.run(org_id, day(23), session=session)
        assert actions == ["suspended", "organization_suspended"]
        assert await state(session, org_id) == (
            S.SUSPENDED,
            S.SUSPENDED,
            OrganizationStatus.SUSPENDED,
        )
        assert await billing.dunning.run(org_id, day(24), session=session) == []
        events = await outbox(session, org_id)
        suspended = [
            event.body["data"] for event in events if event.type == "organization.suspended"
        ]
        assert suspended == [{"reason": f"unpaid invoice {number}"}]

    async def test_a_late_first_run_does_every_step_at_once(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, invoice = await billing.unpaid(session)
        actions = await billing.dunning.run(org_id, day(30), session=session)
        assert actions == [
            f"overdue {invoice.number}",
            "past_due",
            "suspended",
            "organization_suspended",
        ]
        statuses = [
            event.body["data"]["changes"]["status"]
            for event in await outbox(session, org_id)
            if event.type == "subscription.updated"
        ]
        assert statuses == [
            {"from": "active", "to": "past_due"},
            {"from": "past_due", "to": "suspended"},
        ]

    async def test_an_operators_resumption_is_not_overruled(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, _ = await billing.unpaid(session)
        await billing.dunning.run(org_id, day(23), session=session)
        await billing.orgs.resume(org_id, reason="promised to pay", session=session)
        assert await billing.dunning.run(org_id, day(25), session=session) == []
        assert (await state(session, org_id))[2] is OrganizationStatus.ACTIVE

    async def test_a_second_unpaid_invoice_suspends_again(
        self, billing: Billing, session: AsyncSession
    ) -> None:
        org_id, first = await billing.unpaid(session)
        first_number = first.number
        await billing.dunning.run(org_id, day(23), session=session)
        await billing.orgs.resume(org_id, reason="promised to pay", session=session)
        billing.clock.now = day(5)
        draft = await billing.invoices.create_draft(
            org_id, "USD", [("Extra seats", 1000)], session=session
        )
        second = await billing.invoices.finalize(org_id, draft.id, session=session)
        second_number = second.number
        # Due on the 19th: more than seven days past due on the 27th.
        actions = await billing.dunning.run(org_id, day(26), session=session)
        assert actions == [f"overdue {second_number}"]
        actions = await billing.dunning.run(org_id, day(27), session=session)
        assert actions == ["organization_suspended"]
        reasons = [
            event.body["data"]["reason"]
            for event in await outbox(session, org_id)
            if event.type == "organization.suspended"
        ]
        assert reasons == [f"unpaid invoice {first_number}", f"unpaid invoice {second_number}"]


class TestRace:
    async def test_racing_runs_do_each_thing_once(self, race_database: Database) -> None:
        billing = Billing(race_database)
        org_id, invoice = await billing.unpaid()
        results = await asyncio.gather(*(billing.dunning.run(org_id, day(30)) for _ in range(6)))
        done = [action for actions in results for action in actions]
        assert sorted(done) == sorted(
            [f"overdue {invoice.number}", "past_due", "suspended", "organization_suspended"]
        )
        async with race_database.session(readonly=True) as s:
            kinds = await types(s, org_id)
            assert kinds.count("invoice.overdue") == 1
            assert kinds.count("subscription.updated") == 2
            assert kinds.count("organization.suspended") == 1
            assert await state(s, org_id) == (
                S.SUSPENDED,
                S.SUSPENDED,
                OrganizationStatus.SUSPENDED,
            )
