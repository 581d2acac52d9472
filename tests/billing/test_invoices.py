"""Invoices (issue 12, item 3): drafts without numbers, tax per line rounded once, credits,
finalisation with a gapless number, void and uncollectible, totals that reconcile in the
database, and another organisation's invoices out of reach. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.billing.errors import (
    EmptyInvoice,
    InvalidInvoiceLine,
    InvalidTransition,
    InvoiceNotDraft,
    InvoiceNotFound,
    NegativeInvoiceTotal,
)
from saascore.billing.invoices import (
    INVOICE_TRANSITIONS,
    MAX_LINES,
    InvoiceService,
    LineItem,
    check_invoice_transition,
    compute_totals,
    is_overdue,
)
from saascore.config import Settings
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.inputs import INT64_MAX
from saascore.kit.money import (
    AmountOutOfRange,
    BasisPoints,
    Money,
    UnknownCurrency,
)
from saascore.models import AuditLog, Invoice, InvoiceStatus, OutboxEvent
from saascore.tenancy.errors import OrganizationNotFound
from tests.factories import create_organization
from tests.helpers import examples

AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CURRENCIES = ("USD", "EUR", "GBP", "YER", "SAR", "JPY", "KWD")
PER_ORG = Settings(invoice_sequence_scope="organization")


class Clock:
    def __init__(self, now: datetime = AT) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def service(database: Database, clock: Clock | None = None) -> InvoiceService:
    return InvoiceService(database, PER_ORG, clock=clock or Clock())


async def org_id(session: AsyncSession, **values: object) -> uuid.UUID:
    return (await create_organization(session, **values)).id


# --- the pure computation -----------------------------------------------------------------------
class TestTotals:
    def test_tax_is_rounded_once_per_line_half_up(self) -> None:
        # 0.01 USD at 50 %: 0.005 per line, rounded up to 0.01 each; never 0.015 -> 0.02.
        totals = compute_totals("USD", [Money(1, "USD")] * 3, BasisPoints(5000))
        assert [line.tax.minor for line in totals.lines] == [1, 1, 1]
        assert totals.tax == Money(3, "USD")
        assert totals.total == Money(6, "USD")

    def test_a_credit_line_rounds_like_the_charge_it_cancels(self) -> None:
        totals = compute_totals("USD", [Money(2000, "USD"), Money(-5, "USD")], BasisPoints(1500))
        assert [line.tax.minor for line in totals.lines] == [300, -1]  # -0.75 -> -1
        assert totals.subtotal == Money(1995, "USD")
        assert totals.total == Money(2294, "USD")

    def test_kwd_has_three_decimals(self) -> None:
        totals = compute_totals("KWD", [Money(12345, "KWD")], BasisPoints(500))  # 617.25 fils
        assert totals.tax == Money(617, "KWD")

    @settings(max_examples=examples(300), deadline=None)
    @given(
        currency=st.sampled_from(CURRENCIES),
        amounts=st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=30),
        rate=st.integers(0, 100_000),
    )
    def test_totals_reconcile_and_each_line_is_within_half_a_unit(
        self, currency: str, amounts: list[int], rate: int
    ) -> None:
        totals = compute_totals(currency, [Money(a, currency) for a in amounts], BasisPoints(rate))
        for amount, line in zip(amounts, totals.lines, strict=True):
            exact = Fraction(amount * rate, 10_000)
            assert abs(line.tax.minor - exact) <= Fraction(1, 2)
            if abs(line.tax.minor - exact) == Fraction(1, 2):  # a half goes away from zero
                assert abs(line.tax.minor) > abs(exact)
        assert totals.subtotal.minor == sum(amounts)
        assert totals.tax.minor == sum(line.tax.minor for line in totals.lines)
        assert totals.total == totals.subtotal - totals.discount + totals.tax
        assert totals.discount.minor == 0


# --- drafts -------------------------------------------------------------------------------------
class TestDrafts:
    async def test_a_draft_has_no_number_and_its_lines_are_taxed(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session, tax_rate_bps=1500)
        draft = await invoices.create_draft(
            org,
            "usd",
            [("Setup", 2999), ("Seats", Money.parse("10.00", "USD"), 3)],
            notes="Thank you",
            notes_localized={"ar": "شكرا لكم", "fr-FR": "Merci"},
            session=session,
        )
        assert draft.number is None
        assert draft.status is InvoiceStatus.DRAFT
        assert draft.issue_date is None
        assert draft.due_date is None
        assert draft.currency == "USD"
        assert [(line.description, line.amount, line.tax_amount) for line in draft.lines] == [
            ("Setup", 2999, 450),  # 449.85 -> 450
            ("Seats", 3000, 450),
        ]
        assert (draft.subtotal, draft.tax_amount, draft.total) == (5999, 900, 6899)
        assert draft.amount_due == 6899
        assert draft.amount_paid == 0
        assert draft.notes_localized == {"ar": "شكرا لكم", "fr-FR": "Merci"}
        stored = await invoices.get(org, draft.id, session=session)
        assert [line.position for line in stored.lines] == [0, 1]

    async def test_lines_are_added_and_removed_on_a_draft(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session, tax_rate_bps=1000)
        draft = await invoices.create_draft(org, "EUR", [("A", 1000)], session=session)
        draft = await invoices.add_line(org, draft.id, LineItem("B", 500, 2), session=session)
        assert (draft.subtotal, draft.tax_amount, draft.total) == (2000, 200, 2200)
        first = draft.lines[0].id
        draft = await invoices.remove_line(org, draft.id, first, session=session)
        assert [line.description for line in draft.lines] == ["B"]
        assert (draft.subtotal, draft.tax_amount, draft.total) == (1000, 100, 1100)
        with pytest.raises(InvalidInvoiceLine):
            await invoices.remove_line(org, draft.id, first, session=session)

    @pytest.mark.parametrize(
        ("line", "error"),
        [
            (("", 100), InvalidInvoiceLine),
            (("   ", 100), InvalidInvoiceLine),
            (("bell\x07", 100), InvalidInvoiceLine),
            (("x" * 501, 100), InvalidInvoiceLine),
            (("zero quantity", 100, 0), InvalidInvoiceLine),
            (("negative quantity", 100, -1), InvalidInvoiceLine),
            (("boolean quantity", 100, True), InvalidInvoiceLine),
            (("float amount", 1.5), InvalidInvoiceLine),
            (("other currency", Money(100, "EUR")), InvalidInvoiceLine),
            (("too large", INT64_MAX + 1), AmountOutOfRange),
            (("product too large", INT64_MAX // 2 + 1, 2), AmountOutOfRange),
        ],
    )
    async def test_bad_lines_are_refused(
        self,
        database: Database,
        session: AsyncSession,
        line: tuple[object, ...],
        error: type[Exception],
    ) -> None:
        org = await org_id(session)
        with pytest.raises(error):
            await service(database).create_draft(org, "USD", [line], session=session)  # type: ignore[list-item]
        count = await session.scalar(
            sa.select(sa.func.count()).select_from(Invoice).where(Invoice.organization_id == org)
        )
        assert count == 0

    async def test_other_bad_drafts_are_refused(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session)
        with pytest.raises(UnknownCurrency):
            await invoices.create_draft(org, "XYZ", [("A", 1)], session=session)
        with pytest.raises(InvalidInvoiceLine, match="at most 200"):
            await invoices.create_draft(org, "USD", [("A", 1)] * (MAX_LINES + 1), session=session)
        with pytest.raises(InvalidInput, match="locale"):
            await invoices.create_draft(
                org, "USD", notes_localized={"not a locale": "x"}, session=session
            )
        with pytest.raises(InvalidInput):
            await invoices.create_draft(org, "USD", subscription_id=uuid.uuid4(), session=session)
        with pytest.raises(OrganizationNotFound):
            await invoices.create_draft(uuid.uuid4(), "USD", session=session)

    async def test_the_sum_of_lines_stays_within_int64(
        self, database: Database, session: AsyncSession
    ) -> None:
        org = await org_id(session)
        with pytest.raises(AmountOutOfRange):
            await service(database).create_draft(
                org, "USD", [("A", INT64_MAX), ("B", 1)], session=session
            )


# --- finalisation and status ---------------------------------------------------------------------
class TestFinalize:
    async def test_numbers_dates_and_frozen_totals(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session, tax_rate_bps=1500)
        first = await invoices.create_draft(org, "USD", [("A", 1000)], session=session)
        second = await invoices.create_draft(org, "USD", [("B", 2000)], session=session)
        await invoices.finalize(org, second.id, session=session)
        await invoices.finalize(org, first.id, session=session)
        assert second.number == "INV-2026-0001"
        assert first.number == "INV-2026-0002"
        assert first.status is InvoiceStatus.OPEN
        assert first.issue_date == date(2026, 3, 10)
        assert first.due_date == date(2026, 3, 10) + timedelta(days=PER_ORG.invoice_due_days)
        # A new tax rate does not change an issued invoice.
        await invoices.set_tax_rate(org, 2000, session=session)
        stored = await invoices.get(org, first.id, session=session)
        assert (stored.tax_rate_bps, stored.tax_amount, stored.total) == (1500, 150, 1150)
        assert await invoices.resolve(org, "INV-2026-0002", session=session) is stored

    async def test_the_draft_takes_the_rate_in_force_when_it_is_finalised(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session)
        draft = await invoices.create_draft(org, "JPY", [("A", 999)], session=session)
        assert draft.tax_amount == 0
        await invoices.set_tax_rate(org, 1000, session=session)
        invoice = await invoices.finalize(org, draft.id, session=session)
        assert (invoice.tax_rate_bps, invoice.tax_amount, invoice.total) == (1000, 100, 1099)
        assert invoice.lines[0].tax_amount == 100  # 99.9 yen -> 100

    async def test_finalizing_emits_and_audits(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session)
        draft = await invoices.create_draft(org, "GBP", [("A", 500)], session=session)
        await invoices.finalize(org, draft.id, session=session)
        await invoices.void(org, draft.id, session=session)
        outbox = (
            await session.scalars(
                sa.select(OutboxEvent)
                .where(OutboxEvent.organization_id == org)
                .order_by(OutboxEvent.id)
            )
        ).all()
        assert [row.type for row in outbox] == ["invoice.finalized", "invoice.voided"]
        assert outbox[0].body["data"]["number"] == "INV-2026-0001"
        assert outbox[0].body["data"]["total"] == 500
        actions = (
            await session.scalars(sa.select(AuditLog.action).where(AuditLog.organization_id == org))
        ).all()
        assert {"invoice.finalized", "invoice.voided"} <= set(actions)

    async def test_an_empty_draft_is_refused(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session)
        draft = await invoices.create_draft(org, "USD", session=session)
        with pytest.raises(EmptyInvoice):
            await invoices.finalize(org, draft.id, session=session)
        assert draft.status is InvoiceStatus.DRAFT
        assert draft.number is None

    async def test_credits_reduce_the_total_and_tax(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session, tax_rate_bps=1500)
        draft = await invoices.create_draft(
            org, "SAR", [("Pro plan", 9900), ("Unused time on Basic", -2900)], session=session
        )
        invoice = await invoices.finalize(org, draft.id, session=session)
        assert [line.tax_amount for line in invoice.lines] == [1485, -435]
        assert (invoice.subtotal, invoice.tax_amount, invoice.total) == (7000, 1050, 8050)
        assert invoice.amount_due == 8050

    async def test_a_negative_total_is_refused_and_takes_no_number(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session)
        # The upcoming invoice may hold a credit before its charges are added.
        draft = await invoices.create_draft(org, "USD", [("Credit", -1000)], session=session)
        assert (draft.subtotal, draft.total, draft.amount_due) == (-1000, -1000, -1000)
        with pytest.raises(NegativeInvoiceTotal):
            await invoices.finalize(org, draft.id, session=session)
        stored = await invoices.get(org, draft.id, session=session)
        assert stored.status is InvoiceStatus.DRAFT
        assert stored.number is None
        await invoices.add_line(org, draft.id, ("Plan", 1500), session=session)
        assert (await invoices.finalize(org, draft.id, session=session)).number == "INV-2026-0001"
        assert draft.total == 500

    async def test_void_keeps_the_number(self, database: Database, session: AsyncSession) -> None:
        invoices = service(database)
        org = await org_id(session)
        draft = await invoices.create_draft(org, "USD", [("A", 100)], session=session)
        await invoices.finalize(org, draft.id, session=session)
        voided = await invoices.void(org, draft.id, session=session)
        assert voided.status is InvoiceStatus.VOID
        assert voided.number == "INV-2026-0001"
        again = await invoices.create_draft(org, "USD", [("B", 100)], session=session)
        assert (await invoices.finalize(org, again.id, session=session)).number == "INV-2026-0002"

    async def test_transitions_outside_the_table_are_refused(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        org = await org_id(session)
        draft = await invoices.create_draft(org, "USD", [("A", 100)], session=session)
        for refused in (invoices.void, invoices.mark_uncollectible):
            with pytest.raises(InvalidTransition) as caught:
                await refused(org, draft.id, session=session)
            assert caught.value.code == "invalid_transition"
            assert caught.value.current == "draft"
        await invoices.finalize(org, draft.id, session=session)
        with pytest.raises(InvalidTransition, match="the invoice is already open"):
            await invoices.finalize(org, draft.id, session=session)
        with pytest.raises(InvoiceNotDraft):
            await invoices.add_line(org, draft.id, ("late", 1), session=session)
        await invoices.mark_uncollectible(org, draft.id, session=session)
        assert draft.status is InvoiceStatus.UNCOLLECTIBLE
        await invoices.void(org, draft.id, session=session)
        for refused in (invoices.void, invoices.mark_uncollectible, invoices.finalize):
            with pytest.raises(InvalidTransition):
                await refused(org, draft.id, session=session)
        assert draft.number == "INV-2026-0001"

    @pytest.mark.parametrize("current", list(InvoiceStatus))
    def test_check_invoice_transition_follows_the_table(self, current: InvoiceStatus) -> None:
        for target in InvoiceStatus:
            if target in INVOICE_TRANSITIONS[current]:
                check_invoice_transition(current, target)
            else:
                with pytest.raises(InvalidTransition):
                    check_invoice_transition(current, target)
        assert InvoiceStatus.OVERDUE not in {
            target for targets in INVOICE_TRANSITIONS.values() for target in targets
        }  # overdue is computed, never entered

    async def test_overdue_is_computed(self, database: Database, session: AsyncSession) -> None:
        clock = Clock()
        invoices = service(database, clock)
        org = await org_id(session)
        draft = await invoices.create_draft(org, "USD", [("A", 100)], session=session)
        invoice = await invoices.finalize(org, draft.id, session=session)
        assert invoice.due_date is not None
        assert not invoices.overdue(invoice)
        clock.now = datetime.combine(invoice.due_date, AT.timetz())
        assert not invoices.overdue(invoice)  # due today is not late
        clock.now += timedelta(days=1)
        assert invoices.overdue(invoice)
        assert invoice.status is InvoiceStatus.OPEN  # never stored
        late = await invoices.list(org, overdue=True, session=session)
        assert [found.id for found in late] == [invoice.id]
        await invoices.void(org, invoice.id, session=session)
        assert not is_overdue(invoice, clock.now.date())
        assert await invoices.list(org, overdue=True, session=session) == []


# --- tenants and the database --------------------------------------------------------------------
class TestIsolation:
    async def test_another_organisations_invoice_is_not_found(
        self, database: Database, session: AsyncSession
    ) -> None:
        invoices = service(database)
        mine, theirs = await org_id(session), await org_id(session)
        draft = await invoices.create_draft(theirs, "USD", [("A", 100)], session=session)
        for call in (invoices.get, invoices.finalize, invoices.void):
            with pytest.raises(InvoiceNotFound):
                await call(mine, draft.id, session=session)
        with pytest.raises(InvoiceNotFound):
            await invoices.add_line(mine, draft.id, ("A", 1), session=session)
        assert await invoices.list(mine, session=session) == []
        assert [found.id for found in await invoices.list(theirs, session=session)] == [draft.id]


class TestConstraints:
    async def _issued(self, database: Database, session: AsyncSession) -> Invoice:
        invoices = service(database)
        org = await org_id(session)
        draft = await invoices.create_draft(org, "USD", [("A", 1000)], session=session)
        return await invoices.finalize(org, draft.id, session=session)

    @pytest.mark.parametrize(
        ("values", "constraint"),
        [
            ({"amount_due": 1}, "due_adds_up"),
            ({"amount_paid": 1001, "amount_due": -1}, "issued_totals_non_negative"),
            ({"tax_amount": 5}, "total_adds_up"),
            (
                {"subtotal": -1000, "total": -1000, "amount_due": -1000},
                "issued_totals_non_negative",
            ),
        ],
    )
    async def test_the_database_keeps_totals_reconciled(
        self,
        database: Database,
        session: AsyncSession,
        values: dict[str, int],
        constraint: str,
    ) -> None:
        invoice = await self._issued(database, session)
        savepoint = await session.begin_nested()
        with pytest.raises(IntegrityError, match=constraint):
            await session.execute(
                sa.update(Invoice)
                .where(Invoice.organization_id == invoice.organization_id)
                .where(Invoice.id == invoice.id)
                .values(**values)
            )
        await savepoint.rollback()

    @settings(
        max_examples=examples(25),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        currency=st.sampled_from(CURRENCIES),
        rate=st.integers(0, 100_000),
        lines=st.lists(
            st.tuples(st.integers(-(10**9), 10**9), st.integers(1, 1000)),
            min_size=1,
            max_size=8,
        ),
    )
    async def test_a_stored_invoice_reconciles(
        self,
        database: Database,
        session: AsyncSession,
        currency: str,
        rate: int,
        lines: list[tuple[int, int]],
    ) -> None:
        invoices = service(database)
        savepoint = await session.begin_nested()
        try:
            org = await org_id(session, tax_rate_bps=rate)
            draft = await invoices.create_draft(
                org,
                currency,
                [(f"line {n}", unit, quantity) for n, (unit, quantity) in enumerate(lines)],
                session=session,
            )
            amounts = [unit * quantity for unit, quantity in lines]
            exact_taxes = [Fraction(amount * rate, 10_000) for amount in amounts]
            if draft.total < 0:
                with pytest.raises(NegativeInvoiceTotal):
                    await invoices.finalize(org, draft.id, session=session)
                stored = draft
            else:
                invoice_id = draft.id
                await invoices.finalize(org, invoice_id, session=session)
                session.expire_all()
                stored = await invoices.get(org, invoice_id, session=session)
                assert stored.number is not None
                assert stored.total >= 0
            for line, amount, exact in zip(stored.lines, amounts, exact_taxes, strict=True):
                assert line.amount == amount
                assert abs(line.tax_amount - exact) <= Fraction(1, 2)  # rounded once, per line
            assert stored.subtotal == sum(amounts)
            assert stored.tax_amount == sum(line.tax_amount for line in stored.lines)
            assert stored.total == stored.subtotal - stored.discount_amount + stored.tax_amount
            assert stored.amount_due == stored.total - stored.amount_paid
        finally:
            await savepoint.rollback()
