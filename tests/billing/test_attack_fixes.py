"""What an outside attacker found on the billing surfaces (issue 12), each fixed: an `at`
outside the subscription's period is refused by every operation that takes one, credit-pack
purchases are reused and capped (also when they race), the 101st refund is a state refusal,
and an organisation's currency stays while it is billed in it. SQLite and PostgreSQL;
services and HTTP. The fairness of PDF renderings is in `test_render.py`."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService
from saascore.billing.errors import OutsidePeriod, TooManyOpenPurchases, TooManyRefunds
from saascore.billing.invoices import InvoiceService
from saascore.billing.packs import MAX_OPEN_PURCHASES, CreditPackService
from saascore.billing.payments import MAX_REFUNDS, PaymentService
from saascore.billing.subscriptions import SubscriptionService
from saascore.config import Settings
from saascore.credits.service import CreditService
from saascore.events.bus import EventBus
from saascore.kit.db import Database
from saascore.kit.money import Money
from saascore.models import CreditPack, Invoice, InvoiceStatus, Subscription, SubscriptionStatus
from saascore.plans import PlanService, read_catalog
from saascore.tenancy.errors import CurrencyInUse
from saascore.tenancy.service import OrganizationService
from saascore.testing import TestTenant
from tests.admin import Admin
from tests.factories import random_code
from tests.helpers import Clock

S = SubscriptionStatus
APRIL = datetime(2024, 4, 1, tzinfo=UTC)
MAY = datetime(2024, 5, 1, tzinfo=UTC)
FAR = datetime(9000, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SETTINGS = Settings(invoice_sequence_scope="organization")


class Billing:
    def __init__(self, database: Database, session: AsyncSession) -> None:
        self.session = session
        self.clock = Clock(APRIL + timedelta(days=3))
        bus = EventBus()
        bus.in_transaction(AuditService(database).handle)
        plans = PlanService(database, bus)
        self.credits = CreditService(database, bus, clock=self.clock)
        self.orgs = OrganizationService(database, plans, bus, plan_credits=self.credits)
        self.subs = SubscriptionService(database, plans, self.orgs, bus, clock=self.clock)
        self.invoices = InvoiceService(database, SETTINGS, bus, clock=self.clock)
        self.payments = PaymentService(database, self.credits, self.subs, bus, clock=self.clock)
        self.packs = CreditPackService(database, self.invoices)

    async def subscribed(self, *, trial_days: int = 0) -> uuid.UUID:
        org = await self.orgs.create(name="Acme", session=self.session)
        await self.subs.create(org.id, "pro", trial_days=trial_days, at=APRIL, session=self.session)
        return org.id

    async def subscription(self, org: uuid.UUID) -> Subscription:
        self.session.expire_all()
        return await self.subs.get(org, session=self.session)

    async def pack(self, price: int = 500) -> CreditPack:
        return await self.packs.create(
            random_code("p").replace("_", "-"),
            credits=100,
            price=Money(price, "USD"),
            session=self.session,
        )


@pytest_asyncio.fixture(loop_scope="session")
async def billing(database: Database, session: AsyncSession) -> Billing:
    await PlanService(database).load_catalog(read_catalog(), session=session)
    return Billing(database, session)


# --- 2 and 3. an `at` outside the period ------------------------------------------------------
class TestOutsidePeriod:
    @pytest.mark.parametrize("at", [FAR, EPOCH, MAY + timedelta(seconds=1)])
    async def test_cancel_now_outside_is_refused(self, billing: Billing, at: datetime) -> None:
        org = await billing.subscribed()
        with pytest.raises(OutsidePeriod) as caught:
            await billing.subs.cancel(org, at_period_end=False, at=at, session=billing.session)
        assert (caught.value.code, caught.value.status_code) == ("outside_period", 422)
        sub = await billing.subscription(org)
        assert (sub.status, sub.ended_at) == (S.ACTIVE, None)

    async def test_a_trial_canceled_now_in_the_far_future_is_refused(
        self, billing: Billing
    ) -> None:
        org = await billing.subscribed(trial_days=14)
        with pytest.raises(OutsidePeriod):
            await billing.subs.cancel(
                org,
                at_period_end=False,
                at=datetime(9998, 12, 31, tzinfo=UTC),
                session=billing.session,
            )
        assert (await billing.subscription(org)).status is S.TRIALING

    async def test_cancel_at_period_end_before_the_start_is_refused(self, billing: Billing) -> None:
        org = await billing.subscribed()
        with pytest.raises(OutsidePeriod):
            await billing.subs.cancel(org, at=APRIL - timedelta(days=100), session=billing.session)
        sub = await billing.subscription(org)
        assert (sub.cancel_at_period_end, sub.canceled_at) == (False, None)

    async def test_inside_the_period_both_ends_included(self, billing: Billing) -> None:
        org = await billing.subscribed()
        sub = await billing.subs.cancel(org, at=APRIL, session=billing.session)
        assert sub.canceled_at == APRIL
        other = await billing.subscribed()
        ended = await billing.subs.cancel(
            other, at_period_end=False, at=MAY, session=billing.session
        )
        assert (ended.status, ended.ended_at) == (S.CANCELED, MAY)
        assert ended.ended_at >= ended.started_at

    @pytest.mark.parametrize("at", [FAR, EPOCH])
    async def test_a_downgrade_outside_is_refused(self, billing: Billing, at: datetime) -> None:
        org = await billing.subscribed()
        with pytest.raises(OutsidePeriod):
            await billing.subs.change_plan(org, "starter", at=at, session=billing.session)
        sub = await billing.subscription(org)
        assert "scheduled_change" not in sub.metadata_
        assert sub.plan.code == "pro"

    @pytest.mark.parametrize("at", [FAR, EPOCH])
    async def test_resume_outside_is_refused(self, billing: Billing, at: datetime) -> None:
        org = await billing.subscribed()
        # Not canceling: refused all the same, as the plan change is.
        with pytest.raises(OutsidePeriod):
            await billing.subs.resume(org, at=at, session=billing.session)
        await billing.subs.cancel(org, session=billing.session)
        if at < APRIL:
            with pytest.raises(OutsidePeriod):
                await billing.subs.resume(org, at=at, session=billing.session)
            assert (await billing.subscription(org)).cancel_at_period_end

    async def test_over_http(self, admin: Admin, customer: TestTenant) -> None:
        path = f"/v1/admin/organizations/{customer.organization_id}/subscription"
        created = await admin.client.post(
            path, json={"plan": "pro", "trial_days": 0}, headers=admin.operator
        )
        assert created.status_code == 201, created.text
        for action, body in [
            ("cancel", {"at_period_end": False, "at": "9000-01-01T00:00:00Z"}),
            ("cancel", {"at_period_end": True, "at": "1970-01-01T00:00:00Z"}),
            ("resume", {"at": "9000-01-01T00:00:00Z"}),
        ]:
            answer = await admin.client.post(f"{path}/{action}", json=body, headers=admin.operator)
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["code"] == "outside_period"
        shown = await admin.client.get(path, headers=admin.operator)
        assert (shown.json()["status"], shown.json()["cancel_at_period_end"]) == ("active", False)


# --- 4. credit-pack purchases -----------------------------------------------------------------
class TestPurchases:
    async def test_an_unpaid_purchase_is_answered_again(self, billing: Billing) -> None:
        org = await billing.subscribed()
        pack = await billing.pack()
        first = await billing.packs.purchase(org, pack.code, session=billing.session)
        again = await billing.packs.purchase(org, pack.code, session=billing.session)
        assert (again.id, again.number) == (first.id, first.number)
        assert again.status is InvoiceStatus.OPEN
        # Paid, it is no longer open: the next purchase is a new invoice.
        await billing.payments.record(
            org, first.id, first.amount_due, "card", session=billing.session
        )
        third = await billing.packs.purchase(org, pack.code, session=billing.session)
        assert third.id != first.id

    async def test_open_purchases_are_capped(self, billing: Billing) -> None:
        org = await billing.subscribed()
        packs = [await billing.pack() for _ in range(MAX_OPEN_PURCHASES + 1)]
        bought = [
            await billing.packs.purchase(org, pack.code, session=billing.session)
            for pack in packs[:MAX_OPEN_PURCHASES]
        ]
        before = await billing.invoices.list(org, session=billing.session)
        with pytest.raises(TooManyOpenPurchases) as caught:
            await billing.packs.purchase(org, packs[-1].code, session=billing.session)
        assert (caught.value.code, caught.value.status_code) == ("too_many_open_purchases", 409)
        assert len(await billing.invoices.list(org, session=billing.session)) == len(before)
        # A pack already waiting for its payment is still answered.
        again = await billing.packs.purchase(org, packs[0].code, session=billing.session)
        assert again.id == bought[0].id
        # Voiding one makes room.
        await billing.invoices.void(org, bought[1].id, session=billing.session)
        await billing.packs.purchase(org, packs[-1].code, session=billing.session)

    async def test_racing_purchases_of_a_pack_make_one_invoice(
        self, race_database: Database
    ) -> None:
        invoices = InvoiceService(race_database, SETTINGS)
        packs = CreditPackService(race_database, invoices)
        orgs = OrganizationService(race_database, PlanService(race_database))
        org = await orgs.create(name="Racer")
        pack = await packs.create(
            random_code("p").replace("_", "-"), credits=10, price=Money(300, "USD")
        )
        results = await asyncio.gather(
            *(packs.purchase(org.id, pack.code) for _ in range(20)), return_exceptions=True
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        assert errors == []
        assert len({result.id for result in results if isinstance(result, Invoice)}) == 1
        async with race_database.session(readonly=True) as s:
            count = await s.scalar(
                sa.select(sa.func.count(Invoice.id)).where(Invoice.organization_id == org.id)
            )
        assert count == 1


# --- 5. the 101st refund ----------------------------------------------------------------------
class TestRefunds:
    async def test_the_refund_past_the_last_is_a_conflict(self, billing: Billing) -> None:
        org = await billing.subscribed()
        draft = await billing.invoices.create_draft(
            org, "USD", [("Workshop", 10_000)], session=billing.session
        )
        invoice = await billing.invoices.finalize(org, draft.id, session=billing.session)
        payment = await billing.payments.record(
            org, invoice.id, invoice.amount_due, "card", session=billing.session
        )
        payment_id = payment.id
        for _ in range(MAX_REFUNDS):
            await billing.payments.refund(org, payment_id, 1, session=billing.session)
        with pytest.raises(TooManyRefunds) as caught:
            await billing.payments.refund(org, payment_id, 1, session=billing.session)
        error = caught.value
        assert (error.code, error.status_code) == ("too_many_refunds", 409)
        assert "field" not in error.details
        billing.session.expire_all()
        payment = await billing.payments.get(org, payment_id, session=billing.session)
        assert payment.refunded_amount == MAX_REFUNDS


# --- 7. the organisation's currency -----------------------------------------------------------
class TestCurrency:
    async def test_a_live_subscription_keeps_the_currency(self, billing: Billing) -> None:
        org = await billing.subscribed()
        with pytest.raises(CurrencyInUse) as caught:
            await billing.orgs.update(org, currency="EUR", session=billing.session)
        assert (caught.value.code, caught.value.status_code) == ("currency_in_use", 409)
        billing.session.expire_all()
        assert (await billing.orgs.get(org, session=billing.session)).currency == "USD"

    async def test_an_open_invoice_keeps_it_until_settled(self, billing: Billing) -> None:
        org = (await billing.orgs.create(name="Acme", session=billing.session)).id
        draft = await billing.invoices.create_draft(
            org, "USD", [("Workshop", 1_000)], session=billing.session
        )
        # A draft is not owed: the currency may still change (and back).
        await billing.orgs.update(org, currency="EUR", session=billing.session)
        await billing.orgs.update(org, currency="USD", session=billing.session)
        invoice = await billing.invoices.finalize(org, draft.id, session=billing.session)
        with pytest.raises(CurrencyInUse):
            await billing.orgs.update(org, currency="EUR", session=billing.session)
        await billing.payments.record(
            org, invoice.id, invoice.amount_due, "card", session=billing.session
        )
        changed = await billing.orgs.update(org, currency="EUR", session=billing.session)
        assert changed.currency == "EUR"

    async def test_an_ended_subscription_lets_it_change(self, billing: Billing) -> None:
        org = await billing.subscribed()
        await billing.subs.cancel(org, at_period_end=False, session=billing.session)
        changed = await billing.orgs.update(org, currency="EUR", session=billing.session)
        assert changed.currency == "EUR"

    async def test_over_http(self, admin: Admin, customer: TestTenant) -> None:
        created = await admin.client.post(
            f"/v1/admin/organizations/{customer.organization_id}/subscription",
            json={"plan": "pro", "trial_days": 0},
            headers=admin.operator,
        )
        assert created.status_code == 201, created.text
        answer = await admin.client.patch(
            "/v1/organization", json={"currency": "EUR"}, headers=customer.headers
        )
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "currency_in_use"
        shown = await admin.client.get("/v1/organization", headers=customer.headers)
        assert shown.json()["currency"] == "USD"
