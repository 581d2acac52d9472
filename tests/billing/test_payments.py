"""Payments and refunds (issue 12, items 4, 5 and 6's resume on payment): partial payments then
the rest, an overpayment refused with nothing written, one key applied once however many race,
refunds capped at what was paid, failed payments, credit packs granted once, the subscription
and the organisation resumed when they pay, and the events of each. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService
from saascore.billing.dunning import DunningService
from saascore.billing.errors import (
    InvalidPayment,
    InvoiceNotFound,
    InvoiceNotPayable,
    Overpayment,
    PaymentNotFound,
    PaymentNotRefundable,
    RefundExceedsPayment,
)
from saascore.billing.invoices import InvoiceService, LineItem, LineKind
from saascore.billing.payments import (
    MAX_KEY_LENGTH,
    PaymentService,
    method_name,
    parse_method,
)
from saascore.billing.subscriptions import SubscriptionService
from saascore.config import Settings
from saascore.credits.service import CreditService
from saascore.events.bus import EventBus
from saascore.kit.actors import Actor
from saascore.kit.db import Database
from saascore.kit.errors import IdempotencyConflict, InvalidCharacter
from saascore.kit.inputs import INT64_MAX
from saascore.kit.money import AmountOutOfRange, CurrencyMismatch, Money
from saascore.models import (
    AuditLog,
    Invoice,
    InvoiceStatus,
    Organization,
    OutboxEvent,
    Payment,
    PaymentMethod,
    PaymentStatus,
    Subscription,
    SubscriptionStatus,
)
from saascore.models.tenancy import OrganizationStatus
from saascore.plans import PlanService, read_catalog
from saascore.tenancy.service import OrganizationService

AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
OPERATOR = Actor("operator", "op-1")
PER_ORG = Settings(invoice_sequence_scope="organization")


class Clock:
    def __init__(self, now: datetime = AT) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Billing:
    """The services payments need, on one bus that audits, with one clock."""

    def __init__(self, database: Database, session: AsyncSession | None = None) -> None:
        self.session = session
        self.database = database
        self.clock = Clock()
        self.bus = bus = EventBus()
        bus.in_transaction(AuditService(database).handle)
        self.plans = PlanService(database, bus)
        self.credits = CreditService(database, bus, clock=self.clock)
        self.orgs = OrganizationService(database, self.plans, bus, plan_credits=self.credits)
        self.subs = SubscriptionService(database, self.plans, self.orgs, bus, clock=self.clock)
        self.invoices = InvoiceService(database, PER_ORG, bus, clock=self.clock)
        self.payments = PaymentService(database, self.credits, self.subs, bus, clock=self.clock)

    async def org(self) -> uuid.UUID:
        return (await self.orgs.create(name="Acme", session=self.session)).id

    async def invoice(
        self, org: uuid.UUID, *lines: LineItem | tuple[str, int], currency: str = "USD"
    ) -> Invoice:
        draft = await self.invoices.create_draft(
            org, currency, list(lines) or [("Consulting", 10_000)], session=self.session
        )
        return await self.invoices.finalize(org, draft.id, session=self.session)

    async def reload(self, invoice: Invoice) -> Invoice:
        assert self.session is not None
        org, invoice_id = invoice.organization_id, invoice.id
        self.session.expire_all()
        return await self.invoices.get(org, invoice_id, session=self.session)

    async def outbox(self, org: uuid.UUID) -> list[OutboxEvent]:
        """The organisation's invoice, payment and subscription events, in order."""
        assert self.session is not None
        query = sa.select(OutboxEvent).where(
            OutboxEvent.organization_id == org,
            sa.or_(
                OutboxEvent.type.like("invoice.%"),
                OutboxEvent.type.like("payment.%"),
                OutboxEvent.type.like("subscription.%"),
                OutboxEvent.type == "credits.purchased",
            ),
        )
        return list((await self.session.scalars(query.order_by(OutboxEvent.id))).all())

    async def payment_count(self, org: uuid.UUID) -> int:
        assert self.session is not None
        query = sa.select(sa.func.count()).where(Payment.organization_id == org)
        return int(await self.session.scalar(query) or 0)


@pytest_asyncio.fixture(loop_scope="session")
async def billing(database: Database, session: AsyncSession) -> Billing:
    await PlanService(database).load_catalog(read_catalog(), session=session)
    return Billing(database, session)


def pack(credits: int, code: str = "p100", amount: int = 1_000) -> LineItem:
    return LineItem(
        f"{credits} credits",
        amount,
        kind=LineKind.CREDIT_PACK,
        metadata={"credit_pack": code, "credits": credits},
    )


class TestMethods:
    def test_card_is_credit_card_and_a_provider_name_is_kept(self) -> None:
        assert parse_method("card") == (PaymentMethod.CREDIT_CARD, None)
        assert parse_method("Bank-Transfer") == (PaymentMethod.BANK_TRANSFER, None)
        assert parse_method(PaymentMethod.CASH) == (PaymentMethod.CASH, None)
        assert parse_method("tharwatt") == (PaymentMethod.OTHER, "tharwatt")

    @pytest.mark.parametrize("bad", ["", "  ", "card\x00", "x" * 51, "كاش", "a;b"])
    def test_a_name_that_is_no_method_is_refused(self, bad: str) -> None:
        with pytest.raises(InvalidPayment):
            parse_method(bad)


class TestRecord:
    async def test_partial_payments_then_the_rest_make_it_paid(self, billing: Billing) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        first = await billing.payments.record(
            org, invoice.id, Money.parse("40.00", "USD"), "card", session=billing.session
        )
        assert first.status is PaymentStatus.SUCCEEDED
        invoice = await billing.reload(invoice)
        assert (invoice.status, invoice.amount_paid, invoice.amount_due) == (
            InvoiceStatus.OPEN,
            4_000,
            6_000,
        )
        await billing.payments.record(
            org, invoice.id, 6_000, "tharwatt", actor=OPERATOR, session=billing.session
        )
        invoice = await billing.reload(invoice)
        assert (invoice.status, invoice.amount_paid, invoice.amount_due) == (
            InvoiceStatus.PAID,
            10_000,
            0,
        )
        assert invoice.paid_at == AT
        payments = await billing.payments.list(org, invoice_id=invoice.id, session=billing.session)
        assert [p.amount for p in payments] == [6_000, 4_000]  # newest first
        assert method_name(payments[0]) == "tharwatt"
        assert payments[0].method is PaymentMethod.OTHER
        assert [e.type for e in await billing.outbox(org)] == [
            "invoice.finalized",
            "payment.succeeded",
            "payment.succeeded",
            "invoice.paid",
        ]
        audited = await billing.session.scalars(  # type: ignore[union-attr]
            sa.select(AuditLog.action).where(AuditLog.organization_id == org)
        )
        assert {"payment.succeeded", "invoice.paid"} <= set(audited.all())

    async def test_an_overpayment_is_refused_with_nothing_written(self, billing: Billing) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        await billing.payments.record(org, invoice.id, 9_000, "cash", session=billing.session)
        events = len(await billing.outbox(org))
        with pytest.raises(Overpayment) as refused:
            await billing.payments.record(
                org, invoice.id, 1_001, "cash", key="k1", session=billing.session
            )
        assert refused.value.code == "overpayment"
        invoice = await billing.reload(invoice)
        assert (invoice.amount_paid, invoice.amount_due) == (9_000, 1_000)
        assert await billing.payment_count(org) == 1
        assert len(await billing.outbox(org)) == events

    async def test_a_failed_payment_changes_nothing_on_the_invoice(self, billing: Billing) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        failed = await billing.payments.record(
            org,
            invoice.id,
            10_000,
            "card",
            status="failed",
            failure_reason="card declined",
            session=billing.session,
        )
        assert (failed.status, failed.failure_reason) == (PaymentStatus.FAILED, "card declined")
        invoice = await billing.reload(invoice)
        assert (invoice.status, invoice.amount_paid) == (InvoiceStatus.OPEN, 0)
        last = (await billing.outbox(org))[-1]
        assert last.type == "payment.failed"
        assert last.body["data"]["failure_reason"] == "card declined"
        with pytest.raises(InvalidPayment):  # a failure needs its reason
            await billing.payments.record(
                org, invoice.id, 1, "card", status="failed", session=billing.session
            )

    async def test_same_key_replays_and_other_content_conflicts(self, billing: Billing) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        first = await billing.payments.record(
            org, invoice.id, 2_500, "card", key="pay-1", session=billing.session
        )
        again = await billing.payments.record(
            org, invoice.id, 2_500, "card", key="pay-1", session=billing.session
        )
        assert again.id == first.id
        with pytest.raises(IdempotencyConflict) as conflict:
            await billing.payments.record(
                org, invoice.id, 2_600, "card", key="pay-1", session=billing.session
            )
        assert conflict.value.code == "idempotency_conflict"
        invoice = await billing.reload(invoice)
        assert invoice.amount_paid == 2_500
        assert await billing.payment_count(org) == 1

    @pytest.mark.parametrize(
        ("amount", "error"),
        [
            (0, InvalidPayment),
            (-5, InvalidPayment),
            (INT64_MAX + 1, AmountOutOfRange),
            (Money(100, "EUR"), CurrencyMismatch),
            (1.5, InvalidPayment),
            (True, InvalidPayment),
        ],
    )
    async def test_bad_amounts_are_refused(
        self, billing: Billing, amount: object, error: type[Exception]
    ) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        with pytest.raises(error):
            await billing.payments.record(
                org,
                invoice.id,
                amount,  # type: ignore[arg-type]
                "card",
                session=billing.session,
            )
        assert await billing.payment_count(org) == 0

    async def test_bad_texts_and_statuses_are_refused(self, billing: Billing) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        record = billing.payments.record
        with pytest.raises(InvalidCharacter):
            await record(org, invoice.id, 1, "card", key="k\x07", session=billing.session)
        with pytest.raises(InvalidPayment):
            await record(org, invoice.id, 1, "card", key="k" * 256, session=billing.session)
        with pytest.raises(InvalidPayment):
            await record(org, invoice.id, 1, "card", status="pending", session=billing.session)
        assert await billing.payment_count(org) == 0

    async def test_drafts_void_and_other_tenants_invoices_take_no_payment(
        self, billing: Billing
    ) -> None:
        org, other = await billing.org(), await billing.org()
        draft = await billing.invoices.create_draft(
            org, "USD", [("x", 100)], session=billing.session
        )
        with pytest.raises(InvoiceNotPayable):
            await billing.payments.record(org, draft.id, 100, "cash", session=billing.session)
        theirs = await billing.invoice(other)
        with pytest.raises(InvoiceNotFound):
            await billing.payments.record(org, theirs.id, 100, "cash", session=billing.session)
        voided = await billing.invoice(org)
        await billing.invoices.void(org, voided.id, session=billing.session)
        with pytest.raises(InvoiceNotPayable):
            await billing.payments.record(org, voided.id, 100, "cash", session=billing.session)

    async def test_an_uncollectible_invoice_may_still_be_paid(self, billing: Billing) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        await billing.invoices.mark_uncollectible(org, invoice.id, session=billing.session)
        await billing.payments.record(org, invoice.id, 10_000, "cash", session=billing.session)
        assert (await billing.reload(invoice)).status is InvoiceStatus.PAID


class TestRefunds:
    async def test_refunds_are_capped_at_what_was_paid(self, billing: Billing) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        payment_id = (
            await billing.payments.record(org, invoice.id, 10_000, "card", session=billing.session)
        ).id
        partly = await billing.payments.refund(
            org, payment_id, 3_000, reason="goodwill", key="r1", session=billing.session
        )
        assert (partly.status, partly.refunded_amount) == (
            PaymentStatus.PARTIALLY_REFUNDED,
            3_000,
        )
        invoice = await billing.reload(invoice)
        assert (invoice.status, invoice.amount_paid, invoice.amount_due) == (
            InvoiceStatus.PAID,
            7_000,
            3_000,
        )
        with pytest.raises(RefundExceedsPayment):
            await billing.payments.refund(org, payment_id, 7_001, session=billing.session)
        # The same key again changes nothing; with another amount it is a conflict.
        await billing.payments.refund(
            org, payment_id, 3_000, reason="goodwill", key="r1", session=billing.session
        )
        with pytest.raises(IdempotencyConflict):
            await billing.payments.refund(org, payment_id, 1, key="r1", session=billing.session)
        full = await billing.payments.refund(org, payment_id, 7_000, session=billing.session)
        assert (full.status, full.refunded_amount) == (PaymentStatus.REFUNDED, 10_000)
        invoice = await billing.reload(invoice)
        assert (invoice.status, invoice.amount_paid, invoice.amount_due) == (
            InvoiceStatus.REFUNDED,
            0,
            10_000,
        )
        with pytest.raises(PaymentNotRefundable):
            await billing.payments.refund(org, payment_id, 1, session=billing.session)
        refunded = [e for e in await billing.outbox(org) if e.type == "payment.refunded"]
        assert [e.body["data"]["refund_amount"] for e in refunded] == [3_000, 7_000]

    async def test_a_refund_on_an_open_invoice_is_owed_again(self, billing: Billing) -> None:
        org = await billing.org()
        invoice = await billing.invoice(org)
        payment_id = (
            await billing.payments.record(org, invoice.id, 4_000, "card", session=billing.session)
        ).id
        await billing.payments.refund(org, payment_id, 4_000, session=billing.session)
        invoice = await billing.reload(invoice)
        assert (invoice.status, invoice.amount_paid, invoice.amount_due) == (
            InvoiceStatus.OPEN,
            0,
            10_000,
        )

    async def test_failed_and_other_tenants_payments_are_not_refunded(
        self, billing: Billing
    ) -> None:
        org, other = await billing.org(), await billing.org()
        invoice = await billing.invoice(org)
        failed = await billing.payments.record(
            org,
            invoice.id,
            100,
            "card",
            status="failed",
            failure_reason="no",
            session=billing.session,
        )
        with pytest.raises(PaymentNotRefundable):
            await billing.payments.refund(org, failed.id, 100, session=billing.session)
        with pytest.raises(PaymentNotFound):
            await billing.payments.refund(other, failed.id, 100, session=billing.session)
        with pytest.raises(PaymentNotFound):
            await billing.payments.get(other, failed.id, session=billing.session)


class TestCreditPacks:
    async def test_a_paid_pack_grants_its_credits_once(self, billing: Billing) -> None:
        org = await billing.org()
        before = await billing.credits.balance(org, session=billing.session)
        invoice = await billing.invoice(org, pack(100), pack(250, "p250", 2_000))
        first = await billing.payments.record(
            org, invoice.id, 1_000, "card", session=billing.session
        )
        assert first.credits_awarded == 0
        last = await billing.payments.record(
            org, invoice.id, 2_000, "card", session=billing.session
        )
        assert last.credits_awarded == 350
        assert await billing.credits.balance(org, session=billing.session) == before + 350
        purchased = [e for e in await billing.outbox(org) if e.type == "credits.purchased"]
        assert len(purchased) == 1
        assert purchased[0].body["data"]["credits"] == 350
        assert purchased[0].body["data"]["packs"] == ["p100", "p250"]


class TestResumeOnPayment:
    async def _subscribed(self, billing: Billing, status: SubscriptionStatus) -> uuid.UUID:
        org = await billing.org()
        await billing.subs.create(org, "pro", "monthly", at=AT, session=billing.session)
        assert billing.session is not None
        await billing.session.execute(
            sa.update(Subscription).where(Subscription.organization_id == org).values(status=status)
        )
        if status is SubscriptionStatus.SUSPENDED:
            await billing.orgs.suspend(org, reason="unpaid invoices", session=billing.session)
        return org

    @pytest.mark.parametrize("status", [SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED])
    async def test_paying_the_overdue_invoice_reactivates(
        self, billing: Billing, status: SubscriptionStatus
    ) -> None:
        org = await self._subscribed(billing, status)
        invoice = await billing.invoice(org)
        billing.clock.now = AT + timedelta(days=60)  # past its due date
        await billing.payments.record(org, invoice.id, 10_000, "card", session=billing.session)
        assert billing.session is not None
        billing.session.expire_all()
        subscription = await billing.subs.get(org, session=billing.session)
        organization = await billing.session.get_one(Organization, org)
        assert subscription.status is SubscriptionStatus.ACTIVE
        assert organization.status is OrganizationStatus.ACTIVE
        assert organization.subscription_status is SubscriptionStatus.ACTIVE
        types = [e.type for e in await billing.outbox(org)]
        assert "subscription.updated" in types[types.index("invoice.paid") :]

    async def test_another_overdue_invoice_keeps_it_suspended(self, billing: Billing) -> None:
        org = await self._subscribed(billing, SubscriptionStatus.SUSPENDED)
        paid = await billing.invoice(org)
        unpaid_id = (await billing.invoice(org)).id
        billing.clock.now = AT + timedelta(days=60)
        await billing.payments.record(org, paid.id, 10_000, "card", session=billing.session)
        assert billing.session is not None
        billing.session.expire_all()
        assert (await billing.subs.get(org, session=billing.session)).status is (
            SubscriptionStatus.SUSPENDED
        )
        organization = await billing.session.get_one(Organization, org)
        assert organization.status is OrganizationStatus.SUSPENDED
        await billing.payments.record(org, unpaid_id, 10_000, "card", session=billing.session)
        billing.session.expire_all()
        assert (await billing.subs.get(org, session=billing.session)).status is (
            SubscriptionStatus.ACTIVE
        )

    async def test_paying_undoes_what_dunning_did(self, billing: Billing) -> None:
        org = await billing.org()
        await billing.subs.create(
            org, "pro", "monthly", trial_days=0, at=AT, session=billing.session
        )
        invoice = await billing.invoice(org)
        dunning = DunningService(
            billing.database, PER_ORG, billing.subs, billing.orgs, billing.bus, billing.clock
        )
        late = AT + timedelta(days=40)
        done = await dunning.run(org, late, session=billing.session)
        assert done[1:] == ["past_due", "suspended", "organization_suspended"]
        billing.clock.now = late
        await billing.payments.record(
            org, invoice.id, invoice.total, "cash", session=billing.session
        )
        assert billing.session is not None
        billing.session.expire_all()
        assert (await billing.subs.get(org, session=billing.session)).status is (
            SubscriptionStatus.ACTIVE
        )
        organization = await billing.session.get_one(Organization, org)
        assert organization.status is OrganizationStatus.ACTIVE
        assert await dunning.run(org, late + timedelta(days=1), session=billing.session) == []


# --- races: these commit ------------------------------------------------------------------------
WORKERS = 20


class TestRaces:
    async def test_twenty_copies_of_one_key_apply_once(self, race_database: Database) -> None:
        billing = Billing(race_database)
        org = await billing.org()
        invoice = await billing.invoice(org)
        results = await asyncio.gather(
            *(
                billing.payments.record(org, invoice.id, 1_500, "card", key="same")
                for _ in range(WORKERS)
            ),
            return_exceptions=True,
        )
        assert all(isinstance(result, Payment) for result in results), results
        assert len({result.id for result in results if isinstance(result, Payment)}) == 1
        async with race_database.session(readonly=True) as s:
            stored = await s.get_one(Invoice, (org, invoice.id), populate_existing=True)
            count = await s.scalar(sa.select(sa.func.count()).where(Payment.organization_id == org))
        assert (stored.amount_paid, stored.amount_due, count) == (1_500, 8_500, 1)

    async def test_racing_partial_payments_grant_the_pack_once(
        self, race_database: Database
    ) -> None:
        billing = Billing(race_database)
        org = await billing.org()
        before = await billing.credits.balance(org)
        invoice = await billing.invoice(org, pack(100, amount=1_000))
        # Each worker pays a tenth: once ten have, the invoice is paid and takes no more.
        results = await asyncio.gather(
            *(billing.payments.record(org, invoice.id, 100, "card") for _ in range(WORKERS)),
            return_exceptions=True,
        )
        applied = [r for r in results if isinstance(r, Payment)]
        refused = [r for r in results if isinstance(r, InvoiceNotPayable)]
        assert (len(applied), len(refused)) == (10, WORKERS - 10), results
        assert sum(p.credits_awarded for p in applied) == 100
        assert await billing.credits.balance(org) == before + 100
        async with race_database.session(readonly=True) as s:
            stored = await s.get_one(Invoice, (org, invoice.id))
            purchased = await s.scalar(
                sa.select(sa.func.count()).where(
                    OutboxEvent.organization_id == org, OutboxEvent.type == "credits.purchased"
                )
            )
        assert (stored.status, stored.amount_paid, purchased) == (InvoiceStatus.PAID, 1_000, 1)

    async def test_one_key_raced_onto_two_invoices_is_one_payment(
        self, race_database: Database
    ) -> None:
        billing = Billing(race_database)
        org = await billing.org()
        invoices = [await billing.invoice(org), await billing.invoice(org)]
        results = await asyncio.gather(
            *(
                billing.payments.record(org, invoices[i % 2].id, 1_000, "card", key="shared")
                for i in range(WORKERS)
            ),
            return_exceptions=True,
        )
        won = {r.id for r in results if isinstance(r, Payment)}
        lost = [r for r in results if isinstance(r, IdempotencyConflict)]
        assert len(won) == 1
        assert len(lost) + sum(isinstance(r, Payment) for r in results) == WORKERS, results
        async with race_database.session(readonly=True) as s:
            paid = await s.scalars(
                sa.select(Invoice.amount_paid).where(Invoice.organization_id == org)
            )
            count = await s.scalar(sa.select(sa.func.count()).where(Payment.organization_id == org))
        assert (sorted(paid.all()), count) == ([0, 1_000], 1)

    async def test_racing_refunds_never_exceed_the_payment(self, race_database: Database) -> None:
        billing = Billing(race_database)
        org = await billing.org()
        invoice = await billing.invoice(org)
        payment = await billing.payments.record(org, invoice.id, 10_000, "card")
        results = await asyncio.gather(
            *(billing.payments.refund(org, payment.id, 700) for _ in range(WORKERS)),
            return_exceptions=True,
        )
        done = [r for r in results if isinstance(r, Payment)]
        refused = [r for r in results if isinstance(r, RefundExceedsPayment)]
        assert (len(done), len(refused)) == (14, WORKERS - 14), results
        async with race_database.session(readonly=True) as s:
            stored = await s.get_one(Payment, (org, payment.id))
            owed = await s.get_one(Invoice, (org, invoice.id))
        assert (stored.refunded_amount, stored.status) == (9_800, PaymentStatus.PARTIALLY_REFUNDED)
        assert (owed.amount_paid, owed.amount_due, owed.status) == (200, 9_800, InvoiceStatus.PAID)


class TestRefundedPacks:
    async def test_a_refund_takes_the_credits_back_in_proportion(self, billing: Billing) -> None:
        org = await billing.org()
        before = await billing.credits.balance(org, session=billing.session)
        invoice = await billing.invoice(org, pack(1_000, amount=4_000))
        first = await billing.payments.record(
            org, invoice.id, 1_000, "card", session=billing.session
        )
        last = await billing.payments.record(
            org, invoice.id, 3_000, "card", session=billing.session
        )
        assert last.credits_awarded == 1_000
        # A quarter of the invoice refunded, from the payment that did not grant the credits.
        await billing.payments.refund(org, first.id, 1_000, key="r1", session=billing.session)
        assert await billing.credits.balance(org, session=billing.session) == before + 750
        # The same key again takes nothing more.
        await billing.payments.refund(org, first.id, 1_000, key="r1", session=billing.session)
        assert await billing.credits.balance(org, session=billing.session) == before + 750
        await billing.payments.refund(org, last.id, 3_000, session=billing.session)
        assert await billing.credits.balance(org, session=billing.session) == before
        refunded = [e for e in await billing.outbox(org) if e.type == "payment.refunded"]
        assert [e.body["data"]["credits_reversed"] for e in refunded] == [250, 750]

    async def test_a_refund_key_of_the_longest_length_takes_the_credits_back(
        self, billing: Billing
    ) -> None:
        # The ledger's key is made of the payment's id and the refund's key: with a key of
        # 255 characters it outgrew its column (a database error on PostgreSQL).
        org = await billing.org()
        before = await billing.credits.balance(org, session=billing.session)
        invoice = await billing.invoice(org, pack(1_000, amount=4_000))
        paid = await billing.payments.record(
            org, invoice.id, 4_000, "card", session=billing.session
        )
        key = "k" * MAX_KEY_LENGTH
        for _ in range(2):  # a retry takes nothing more
            await billing.payments.refund(org, paid.id, 2_000, key=key, session=billing.session)
            assert await billing.credits.balance(org, session=billing.session) == before + 500

    async def test_spent_credits_are_not_taken_below_zero(self, billing: Billing) -> None:
        org = await billing.org()
        start = await billing.credits.balance(org, session=billing.session)
        invoice = await billing.invoice(org, pack(100, amount=1_000))
        paid = await billing.payments.record(
            org, invoice.id, 1_000, "card", session=billing.session
        )
        await billing.credits.consume(org, start + 60, session=billing.session)
        refunded = await billing.payments.refund(org, paid.id, 1_000, session=billing.session)
        assert await billing.credits.balance(org, session=billing.session) == 0
        assert refunded.metadata_["refunds"][-1]["credits_reversed"] == 40
        assert refunded.metadata_["refunds"][-1]["credits_short"] == 60
        assert refunded.status is PaymentStatus.REFUNDED
