"""The billing run: renewals with their invoice lines, month-end anchors over a year, trials
and their notice, credits refilled once per period, dry runs, idempotency, and two runs at
once over the same 500 due subscriptions."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore import Saascore
from saascore.audit.service import AuditService, audited_bus
from saascore.billing.coupons import CouponService
from saascore.billing.invoices import InvoiceService
from saascore.billing.payments import PaymentService
from saascore.billing.run import DEFAULT_STEPS, BillingRun, StepContext
from saascore.billing.subscriptions import SubscriptionService
from saascore.credits import CreditService
from saascore.events.bus import EventBus
from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.kit.time import utcnow
from saascore.models import (
    CreditGrant,
    Invoice,
    InvoiceStatus,
    Organization,
    OrganizationStatus,
    OutboxEvent,
    PlanLimit,
    PlanPrice,
    Subscription,
    SubscriptionPlan,
    SubscriptionStatus,
    UsageCounter,
    UsageLimits,
)
from saascore.models.catalog import BillingCycle
from saascore.plans import PlanService, read_catalog
from saascore.tenancy.service import OrganizationService
from tests.factories import random_code

S = SubscriptionStatus
JAN = datetime(2025, 1, 1, tzinfo=UTC)
FEB = datetime(2025, 2, 1, tzinfo=UTC)


class Env:
    def __init__(self, database: Database) -> None:
        self.database = database
        bus = EventBus()
        bus.in_transaction(AuditService(database).handle)
        self.bus = bus
        self.plans = PlanService(database, bus)
        self.orgs = OrganizationService(
            database, self.plans, bus, plan_credits=CreditService(database, bus)
        )
        self.subs = SubscriptionService(database, self.plans, self.orgs, bus)
        self.run = BillingRun(database, database.settings, self.plans, self.orgs, bus)

    async def plan(self, amount: int, *, overage: dict[str, int] | None = None) -> str:
        code = random_code("plan")
        async with self.database.transaction() as s:
            plan = SubscriptionPlan(code=code, name=code.title(), credits_per_period=50)
            s.add(plan)
            await s.flush()
            s.add(
                PlanPrice(
                    plan_id=plan.id,
                    billing_cycle=BillingCycle.MONTHLY,
                    currency="USD",
                    amount=amount,
                )
            )
            s.add(
                PlanLimit(
                    plan_id=plan.id,
                    metric="tokens",
                    limit_value=1_000_000,
                    is_hard=False,
                    overage_prices=overage or {},
                    overage_per=1000,
                )
            )
        return code

    async def subscribed(
        self, plan: str, at: datetime = JAN, trial_days: int = 0
    ) -> tuple[uuid.UUID, Subscription]:
        org = await self.orgs.create(name="Acme")
        sub = await self.subs.create(org.id, plan, "monthly", trial_days=trial_days, at=at)
        return org.id, sub

    async def invoices(self, org_id: uuid.UUID) -> list[Invoice]:
        async with self.database.session(readonly=True) as s:
            query = (
                sa.select(Invoice)
                .where(Invoice.organization_id == org_id)
                .options(sa.orm.selectinload(Invoice.lines))
                .order_by(Invoice.id)
            )
            return list((await s.scalars(query)).all())

    async def count(self, query: sa.Select[tuple[int]]) -> int:
        async with self.database.session(readonly=True) as s:
            return int(await s.scalar(query) or 0)

    async def subscription(self, org_id: uuid.UUID) -> Subscription:
        async with self.database.session(readonly=True) as s:
            query = sa.select(Subscription).where(Subscription.organization_id == org_id)
            return (await s.scalars(query)).one()

    async def outbox(self, org_id: uuid.UUID) -> list[str]:
        async with self.database.session(readonly=True) as s:
            query = sa.select(OutboxEvent.type).where(OutboxEvent.organization_id == org_id)
            return list((await s.scalars(query)).all())


@pytest.fixture
def env(scratch: Database) -> Env:
    return Env(scratch)


class TestRenewal:
    async def test_one_invoice_with_fee_overage_and_carried_proration(self, env: Env) -> None:
        basic = await env.plan(1_000, overage={"USD": 2})
        plus = await env.plan(3_000, overage={"USD": 3})
        org_id, _ = await env.subscribed(basic)
        await env.subs.change_plan(org_id, plus, at=JAN + timedelta(days=15, hours=12))
        async with env.database.transaction() as s:
            s.add(
                UsageCounter(
                    organization_id=org_id,
                    metric="tokens",
                    period_start=JAN,
                    period_end=FEB,
                    used=1_500_499,
                )
            )
        summary = await env.run.run(FEB, organizations=[org_id])
        assert summary.counts["renewed"] == 1
        assert summary.counts["invoices_issued"] == 1
        (invoice,) = await env.invoices(org_id)
        assert invoice.status is InvoiceStatus.OPEN
        assert invoice.number
        kinds = sorted(line.metadata_["kind"] for line in invoice.lines)
        assert kinds == ["plan", "proration", "proration", "usage"]
        usage = next(line for line in invoice.lines if line.metadata_["kind"] == "usage")
        # 500,499 tokens above 1,000,000 at 3 per 1000: 1501.497, half up once: 1501.
        assert (usage.metric, usage.amount, usage.metadata_["units"]) == ("tokens", 1501, 500_499)
        fee = next(line for line in invoice.lines if line.metadata_["kind"] == "plan")
        assert (fee.amount, fee.period_start, fee.period_end) == (
            3_000,
            FEB,
            datetime(2025, 3, 1, tzinfo=UTC),
        )
        assert invoice.total == sum(line.amount for line in invoice.lines)
        sub = await env.subscription(org_id)
        assert sub.current_period_start == FEB
        assert "subscription.renewed" in await env.outbox(org_id)

    async def test_month_end_anchors_over_a_year(self, env: Env) -> None:
        plan = await env.plan(1_000)
        start = datetime(2024, 1, 31, 9, 30, tzinfo=UTC)
        org_id, sub = await env.subscribed(plan, at=start)
        # The anchors alone: nothing is paid here, so the run goes without its dunning step
        # (which would make the subscription past due, then suspend it).
        run = BillingRun(
            env.database,
            env.database.settings,
            env.plans,
            env.orgs,
            env.bus,
            steps=[step for step in DEFAULT_STEPS if step.name != "dunning"],
        )
        ends = []
        at = sub.current_period_end
        for _ in range(12):
            summary = await run.run(at, organizations=[org_id])
            assert summary.counts["renewed"] == 1
            at = (await env.subscription(org_id)).current_period_end
            ends.append(at.date().isoformat())
        assert ends[:4] == ["2024-03-31", "2024-04-30", "2024-05-31", "2024-06-30"]
        assert ends[-2:] == ["2025-01-31", "2025-02-28"]
        invoices = await env.invoices(org_id)
        assert len(invoices) == 12
        assert len({invoice.number for invoice in invoices}) == 12

    async def test_a_free_plan_renews_without_an_invoice(self, env: Env) -> None:
        org_id, _ = await env.subscribed(await env.plan(0))
        summary = await env.run.run(FEB, organizations=[org_id])
        assert (summary.counts["renewed"], summary.counts["invoices_issued"]) == (1, 0)
        assert await env.invoices(org_id) == []


class TestTrials:
    async def test_notice_once_then_the_trial_ends_with_a_prorated_invoice(self, env: Env) -> None:
        plan = await env.plan(3_100)
        org_id, sub = await env.subscribed(plan, trial_days=14)
        assert sub.trial_end == JAN + timedelta(days=14)
        early = await env.run.run(JAN + timedelta(days=11), organizations=[org_id])
        again = await env.run.run(JAN + timedelta(days=13), organizations=[org_id])
        assert (early.counts["trial_will_end"], again.counts["trial_will_end"]) == (1, 0)
        ended = await env.run.run(JAN + timedelta(days=14), organizations=[org_id])
        assert ended.counts["trials_ended"] == 1
        (invoice,) = await env.invoices(org_id)
        # 17 of January's 31 days, to the second: 3100 * 17 / 31 = 1700.
        assert invoice.total == 1_700
        assert (await env.subscription(org_id)).status is S.ACTIVE
        outbox = await env.outbox(org_id)
        assert outbox.count("subscription.trial_will_end") == 1
        assert (await env.run.run(JAN + timedelta(days=14), organizations=[org_id])).counts[
            "trials_ended"
        ] == 0


class TestOnce:
    async def test_credits_refilled_once_per_period(self, env: Env) -> None:
        org_id, _ = await env.subscribed(await env.plan(1_000))
        for at in (FEB, FEB, FEB + timedelta(days=3)):
            await env.run.run(at, organizations=[org_id])
        grants = await env.count(
            sa.select(sa.func.count())
            .select_from(CreditGrant)
            .where(
                CreditGrant.organization_id == org_id,
                CreditGrant.idempotency_key == "refill:2025-02",
            )
        )
        assert grants == 1

    async def test_a_second_run_at_the_same_moment_does_nothing(self, env: Env) -> None:
        org_id, _ = await env.subscribed(await env.plan(1_000))
        first = await env.run.run(FEB, organizations=[org_id])
        second = await env.run.run(FEB, organizations=[org_id])
        assert first.counts["renewed"] == 1
        assert sum(second.counts.values()) == 0
        assert len(await env.invoices(org_id)) == 1

    async def test_each_change_has_its_audit_entry_in_an_intact_chain(self, env: Env) -> None:
        org_id, _ = await env.subscribed(await env.plan(1_000))
        audit = AuditService(env.database)
        before = len(await audit.list(org_id, limit=500))
        await env.run.run(FEB, organizations=[org_id])
        actions = [entry.action for entry in await audit.list(org_id, limit=500)]
        # Newest first: the run's three in the order they were emitted, `invoice.finalized`
        # last, once the transaction's invoices took their numbers (it carries the number).
        assert actions[: len(actions) - before] == [
            "invoice.finalized",
            "subscription.renewed",
            "credits.granted",
        ]
        assert await audit.verify(org_id) == []

    async def test_a_dry_run_writes_nothing(self, env: Env) -> None:
        org_id, _ = await env.subscribed(await env.plan(1_000))
        before = await env.outbox(org_id)
        summary = await env.run.run(FEB, dry_run=True, organizations=[org_id])
        assert (summary.counts["renewed"], summary.counts["invoices_issued"]) == (1, 1)
        assert await env.invoices(org_id) == []
        assert await env.outbox(org_id) == before
        assert (await env.subscription(org_id)).current_period_start == JAN


class TestBatchRefill:
    """The period refills of a transaction's organisations read set-wise (`prefetch_refills`)
    and still grant exactly what `refill_once` alone would."""

    async def grants(self, env: Env, org_id: uuid.UUID) -> list[tuple[str | None, int]]:
        """The organisation's plan grants of the run's year (not those of its creation)."""
        async with env.database.session(readonly=True) as s:
            rows = await s.execute(
                sa.select(CreditGrant.idempotency_key, CreditGrant.amount)
                .where(
                    CreditGrant.organization_id == org_id,
                    CreditGrant.idempotency_key.like("refill:2025-%"),
                )
                .order_by(CreditGrant.idempotency_key)
            )
            return [(key, int(amount)) for key, amount in rows]

    async def test_a_batch_refills_each_once_and_the_ledger_verifies(self, env: Env) -> None:
        plan = await env.plan(1_000)
        orgs = [(await env.subscribed(plan))[0] for _ in range(5)]
        for _ in range(2):  # the second run finds each refill done
            await env.run.run(FEB, organizations=orgs)
        for org_id in orgs:
            assert await self.grants(env, org_id) == [("refill:2025-02", 50)]
        assert await CreditService(env.database, EventBus()).verify() == []

    async def test_a_lagging_run_refills_every_month_it_opens(self, env: Env) -> None:
        plan = await env.plan(1_000)
        orgs = [(await env.subscribed(plan))[0] for _ in range(3)]
        summary = await env.run.run(datetime(2025, 4, 1, tzinfo=UTC), organizations=orgs)
        assert summary.counts["credits_refilled"] == 9
        for org_id in orgs:
            assert await self.grants(env, org_id) == [
                ("refill:2025-02", 50),
                ("refill:2025-03", 50),
                ("refill:2025-04", 50),
            ]
        assert await CreditService(env.database, EventBus()).verify() == []


class TestCandidates:
    async def test_a_subscription_ended_earlier_returns_to_the_default_plan(self, env: Env) -> None:
        """The run finds it on both databases (a JSON key's absence, read as text)."""
        org_id, _ = await env.subscribed(await env.plan(1_000))
        await env.subs.cancel(org_id, at_period_end=False, at=JAN + timedelta(days=10))
        summary = await env.run.run(FEB, organizations=[org_id])
        assert summary.counts["returned_to_default"] == 1
        assert (await env.run.run(FEB, organizations=[org_id])).counts["returned_to_default"] == 0


class TestSetWise:
    async def statements(self, env: Env, orgs: list[uuid.UUID]) -> int:
        """The statements of a run over `orgs` (one transaction's worth), all renewed, with
        the audit log on the event bus as `Saascore` puts it there (set-wise)."""
        run = BillingRun(
            env.database,
            env.database.settings,
            env.plans,
            env.orgs,
            audited_bus(AuditService(env.database)),
        )
        seen: list[str] = []

        def count(*args: object) -> None:
            seen.append(str(args[2]))

        engine = env.database.engine.sync_engine
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            summary = await run.run(FEB, organizations=orgs)
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        assert (summary.counts["renewed"], summary.counts["credits_refilled"]) == (
            len(orgs),
            len(orgs),
        )
        return len(seen)

    async def test_a_transaction_writes_its_renewals_in_as_many_statements_for_more(
        self, env: Env
    ) -> None:
        """The invoices, their lines, the subscriptions' new periods and the refills of a
        transaction's organisations are written together at its end, not one by one."""
        plan = await env.plan(1_000, overage={"USD": 2})
        few = [(await env.subscribed(plan))[0] for _ in range(2)]
        many = [(await env.subscribed(plan))[0] for _ in range(6)]
        assert await self.statements(env, many) == await self.statements(env, few)
        for org_id in many:
            (invoice,) = await env.invoices(org_id)
            assert (invoice.status, invoice.number is None) == (InvoiceStatus.OPEN, False)
        assert await CreditService(env.database, EventBus()).verify() == []


class TestNumbersAtEnd:
    async def test_an_existing_draft_finalised_in_a_rolled_back_savepoint_stays_a_draft(
        self, env: Env
    ) -> None:
        org_id = (await env.orgs.create(name="Acme")).id
        invoices = InvoiceService(env.database, env.database.settings, EventBus())
        draft = await invoices.create_draft(org_id, "USD", [("item", 100)])
        async with env.database.transaction() as s, invoices.numbers_at_end(s):
            try:
                async with s.begin_nested():
                    await invoices.finalize(org_id, draft.id, session=s)
                    raise RuntimeError("this organisation fails")
            except RuntimeError:
                pass
            kept = await invoices.create_draft(org_id, "USD", [("item", 200)], session=s)
            await invoices.finalize_locked(s, kept)
        rows = await env.invoices(org_id)
        assert [(row.status, row.number is None) for row in rows] == [
            (InvoiceStatus.DRAFT, True),
            (InvoiceStatus.OPEN, False),
        ]
        assert (await env.outbox(org_id)).count("invoice.finalized") == 1

    async def test_numbered_at_the_end_in_id_order_and_a_rolled_back_one_gives_it_back(
        self, env: Env
    ) -> None:
        org_id = (await env.orgs.create(name="Acme")).id
        invoices = InvoiceService(env.database, env.database.settings, EventBus())
        inside: list[str | None] = []
        async with env.database.transaction() as s, invoices.numbers_at_end(s):
            for n in range(4):
                try:
                    async with s.begin_nested():
                        draft = await invoices.create_draft(
                            org_id, "USD", [("item", 100)], session=s
                        )
                        finalized = await invoices.finalize_locked(s, draft)
                        inside.append(finalized.number)
                        if n == 2:
                            raise RuntimeError("this organisation fails")
                except RuntimeError:
                    pass
        assert inside == [None, None, None, None]  # no number, so no lock, until the end
        later = await invoices.create_draft(org_id, "USD", [("item", 100)])
        await invoices.finalize(org_id, later.id)
        kept = await env.invoices(org_id)
        assert [invoice.status for invoice in kept] == [InvoiceStatus.OPEN] * 4
        seqs = [int((invoice.number or "").rsplit("-", 1)[1]) for invoice in kept]
        # The rolled-back invoice's number went back to the series: 1, 2, 3, then 4.
        assert seqs == list(range(seqs[0], seqs[0] + 4))
        outbox = await env.outbox(org_id)
        assert outbox.count("invoice.finalized") == 4


async def bulk_due(database: Database, count: int) -> list[uuid.UUID]:
    """`count` organisations on the pro plan, each with a monthly subscription due at FEB."""
    async with database.transaction() as s:
        plan = (
            await s.execute(
                sa.select(SubscriptionPlan.id, PlanPrice.amount)
                .join(PlanPrice, PlanPrice.plan_id == SubscriptionPlan.id)
                .where(
                    SubscriptionPlan.code == "pro",
                    PlanPrice.currency == "USD",
                    PlanPrice.billing_cycle == BillingCycle.MONTHLY,
                )
            )
        ).one()
        ids = [new_id() for _ in range(count)]
        tag = random_code("bulk")
        await s.execute(
            sa.insert(Organization),
            [
                {
                    "id": org_id,
                    "name": f"{tag}-{n}",
                    "slug": f"{tag}-{n}".replace("_", "-"),
                    "plan_id": plan.id,
                    "subscription_status": S.ACTIVE,
                }
                for n, org_id in enumerate(ids)
            ],
        )
        await s.execute(sa.insert(UsageLimits), [{"organization_id": org_id} for org_id in ids])
        await s.execute(
            sa.insert(Subscription),
            [
                {
                    "organization_id": org_id,
                    "id": new_id(),
                    "plan_id": plan.id,
                    "status": S.ACTIVE,
                    "billing_cycle": BillingCycle.MONTHLY,
                    "currency": "USD",
                    "unit_amount": plan.amount,
                    "quantity": 1,
                    "started_at": JAN,
                    "current_period_start": JAN,
                    "current_period_end": FEB,
                    "next_billing_at": FEB,
                    "metadata_": {},
                }
                for org_id in ids
            ],
        )
    return ids


class TestDunning:
    async def test_unpaid_renewal_goes_overdue_past_due_suspended_and_pays_back(
        self, env: Env
    ) -> None:
        org_id, _ = await env.subscribed(await env.plan(1_000))
        await env.run.run(FEB, organizations=[org_id])
        [invoice] = [i for i in await env.invoices(org_id) if i.status is InvoiceStatus.OPEN]
        assert invoice.due_date == (FEB + timedelta(days=14)).date()

        late = FEB + timedelta(days=15)  # a day past due
        summary = await env.run.run(late, organizations=[org_id])
        assert (summary.counts["invoices_overdue"], summary.counts["past_due"]) == (1, 1)
        assert summary.counts["suspended"] == 0
        assert (await env.subscription(org_id)).status is S.PAST_DUE
        again = await env.run.run(late, organizations=[org_id])
        assert again.counts["invoices_overdue"] == again.counts["past_due"] == 0

        # More than the grace period (7 days) past due: suspended, with the organisation.
        summary = await env.run.run(late + timedelta(days=7), organizations=[org_id])
        assert summary.counts["suspended"] == summary.counts["organization_suspended"] == 1
        assert (await env.subscription(org_id)).status is S.SUSPENDED
        async with env.database.session(readonly=True) as s:
            organization = await s.get(Organization, org_id)
            assert organization is not None
            assert organization.status is OrganizationStatus.SUSPENDED
        assert (await env.outbox(org_id)).count("invoice.overdue") == 1

        # Paying the invoice makes the subscription active and lifts the suspension.
        payments = PaymentService(
            env.database, CreditService(env.database, env.bus), env.subs, env.bus
        )
        await payments.record(org_id, invoice.id, invoice.amount_due, "cash")
        assert (await env.subscription(org_id)).status is S.ACTIVE
        async with env.database.session(readonly=True) as s:
            organization = await s.get(Organization, org_id)
            assert organization is not None
            assert organization.status is OrganizationStatus.ACTIVE
        quiet = await env.run.run(late + timedelta(days=8), organizations=[org_id])
        assert quiet.counts["invoices_overdue"] == quiet.counts["suspended"] == 0


class TestFreeOfCharge:
    async def test_a_renewal_owing_nothing_is_paid_at_once_and_never_dunned(self, env: Env) -> None:
        org_id, _ = await env.subscribed(await env.plan(1_000))
        code = random_code("FREE").upper()
        coupons = CouponService(env.database, env.bus)
        await coupons.create(code, percent_off=10_000, duration="forever")
        await coupons.redeem(org_id, code)
        summary = await env.run.run(FEB, organizations=[org_id])
        assert summary.counts["invoices_issued"] == 1
        [invoice] = [i for i in await env.invoices(org_id) if i.status is not InvoiceStatus.DRAFT]
        assert (invoice.status, invoice.total, invoice.amount_due) == (InvoiceStatus.PAID, 0, 0)
        assert invoice.number is not None
        assert invoice.paid_at == FEB
        events = await env.outbox(org_id)
        assert events.count("invoice.finalized") == events.count("invoice.paid") == 1
        later = await env.run.run(FEB + timedelta(days=30), organizations=[org_id])
        assert later.counts["invoices_overdue"] == later.counts["past_due"] == 0


class FailsFor:
    """A last step that fails for one organisation: its whole renewal must roll back alone."""

    name = "fails"

    def __init__(self, org_id: uuid.UUID) -> None:
        self.org_id = org_id

    async def candidates(
        self, s: AsyncSession, at: datetime, organizations: Sequence[uuid.UUID]
    ) -> set[uuid.UUID]:
        return {self.org_id} & set(organizations)

    async def apply(
        self, s: AsyncSession, org_id: uuid.UUID, context: StepContext, counts: Counter[str]
    ) -> None:
        raise RuntimeError("this organisation fails")


class TestOneFails:
    async def test_the_others_of_its_transaction_renew_once_and_it_rolls_back_alone(
        self, env: Env
    ) -> None:
        ids = sorted(await bulk_due(env.database, 5))
        failing = ids[2]
        run = BillingRun(
            env.database,
            env.database.settings,
            env.plans,
            env.orgs,
            env.bus,
            steps=(*DEFAULT_STEPS, FailsFor(failing)),
        )
        summary = await run.run(FEB, organizations=ids)
        assert summary.failures == [(failing, "RuntimeError: this organisation fails")]
        assert summary.counts["errors"] == 1
        assert summary.counts["renewed"] == summary.counts["invoices_issued"] == 4
        assert summary.counts["credits_refilled"] == 4
        others = [org_id for org_id in ids if org_id != failing]
        assert await env.invoices(failing) == []
        assert await env.outbox(failing) == []
        assert (await env.subscription(failing)).current_period_end == FEB
        numbers: list[str | None] = []
        for org_id in others:
            (invoice,) = await env.invoices(org_id)
            numbers.append(invoice.number)
            assert invoice.status is InvoiceStatus.OPEN
            outbox = await env.outbox(org_id)
            assert outbox.count("subscription.renewed") == outbox.count("invoice.finalized") == 1
            assert (await env.subscription(org_id)).current_period_start == FEB
        # Numbered once each, at the transaction's end: consecutive, none for the failure.
        seqs = [int((number or "").rsplit("-", 1)[1]) for number in numbers]
        assert sorted(seqs) == list(range(min(seqs), min(seqs) + 4))
        grants = await env.count(
            sa.select(sa.func.count())
            .select_from(CreditGrant)
            .where(CreditGrant.organization_id.in_(ids), CreditGrant.source == "plan")
        )
        assert grants == 4
        assert await AuditService(env.database).verify() == []
        assert await CreditService(env.database, EventBus()).verify() == []
        # Without the failure, the next run renews it, and only it.
        again = await env.run.run(FEB, organizations=ids)
        assert again.failures == []
        assert again.counts["renewed"] == 1
        assert len(await env.invoices(failing)) == 1


class TestTwoRunsAtOnce:
    @pytest.mark.race_database
    async def test_each_renewal_invoice_and_refill_once(self, race_database: Database) -> None:
        env = Env(race_database)
        ids = await bulk_due(race_database, 500)
        first, second = await asyncio.gather(
            env.run.run(FEB, organizations=ids), env.run.run(FEB, organizations=ids)
        )
        assert first.failures == []
        assert second.failures == []
        assert first.counts["renewed"] + second.counts["renewed"] == 500
        of = Invoice.organization_id.in_(ids)
        per_org = await env.count(
            sa.select(sa.func.count(sa.distinct(Invoice.organization_id))).where(of)
        )
        assert per_org == 500
        assert await env.count(sa.select(sa.func.count()).select_from(Invoice).where(of)) == 500
        # Each transaction numbers its invoices at its end, in one statement, in id order:
        # across both runs the numbers are gapless and follow the invoices' ids.
        async with race_database.session(readonly=True) as s:
            numbers = list(
                await s.scalars(sa.select(Invoice.number).where(of).order_by(Invoice.id))
            )
        seqs = [int((number or "").rsplit("-", 1)[1]) for number in numbers]
        assert seqs == list(range(seqs[0], seqs[0] + 500))
        refills = await env.count(
            sa.select(sa.func.count())
            .select_from(CreditGrant)
            .where(CreditGrant.organization_id.in_(ids), CreditGrant.source == "plan")
        )
        assert refills == 500
        periods = await env.count(
            sa.select(sa.func.count())
            .select_from(Subscription)
            .where(Subscription.organization_id.in_(ids), Subscription.current_period_start == FEB)
        )
        assert periods == 500


class TestAutorun:
    async def test_off_by_default(self, database: Database) -> None:
        core = Saascore(database.settings, database=database)
        assert core.settings.billing_autorun is False
        assert core.dispatcher().periodic is None

    @pytest.mark.race_database(fresh=True)
    async def test_the_dispatcher_loop_renews_what_is_due(self, race_database: Database) -> None:
        settings = race_database.settings.model_copy(
            update={"billing_autorun": True, "billing_autorun_interval": 1.0}
        )
        core = Saascore(settings, database=race_database)
        await core.plans.load_catalog(read_catalog())
        (org_id,) = await bulk_due(race_database, 1)
        env = Env(race_database)
        stop = asyncio.Event()
        running = asyncio.create_task(core.dispatcher(poll_interval=0.05).run(stop))
        try:
            for _ in range(400):
                if (await env.subscription(org_id)).current_period_end > utcnow():
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running
        subscription = await env.subscription(org_id)
        assert subscription.current_period_end > utcnow()
        invoices = await env.invoices(org_id)
        assert invoices
        assert {invoice.status for invoice in invoices} == {InvoiceStatus.OPEN}
        assert "subscription.renewed" in await env.outbox(org_id)
