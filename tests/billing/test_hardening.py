"""What an outside tester broke in billing, each refused or fixed: an invoice owing nothing is
paid when it is finalised (never overdue, never dunned), an invoice with payments is not
voided, bidirectional overrides and control characters stay out of what invoices show, only
legal tender is money, and a credit pack is bought in the organisation's currency and grants a
bounded number of credits. SQLite and PostgreSQL; services and HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService
from saascore.billing.coupons import CouponService
from saascore.billing.dunning import DunningService
from saascore.billing.errors import (
    CreditPackCurrencyMismatch,
    InvalidCoupon,
    InvalidCreditPack,
    InvalidInvoiceLine,
    InvoiceHasPayments,
)
from saascore.billing.invoices import InvoiceService, is_overdue
from saascore.billing.packs import MAX_PACK_CREDITS, CreditPackService
from saascore.billing.payments import PaymentService
from saascore.billing.subscriptions import SubscriptionService
from saascore.config import Settings
from saascore.credits.service import CreditService
from saascore.events.bus import EventBus
from saascore.kit.db import Database
from saascore.kit.errors import InvalidCharacter
from saascore.kit.money import Money, UnknownCurrency
from saascore.kit.validation import checked_text, control_character
from saascore.models import CreditPack, Invoice, InvoiceStatus, OutboxEvent, SubscriptionStatus
from saascore.models.tenancy import OrganizationStatus
from saascore.plans import PlanService, read_catalog
from saascore.tenancy.service import OrganizationService
from saascore.testing import TestTenant
from tests.admin import Admin
from tests.factories import random_code
from tests.helpers import Clock

APRIL = datetime(2024, 4, 1, 9, 0, tzinfo=UTC)
SETTINGS = Settings(
    invoice_sequence_scope="organization", invoice_due_days=14, dunning_grace_days=7
)
#: The bidirectional embeddings, overrides and isolates.
BIDI = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]


class Billing:
    def __init__(self, database: Database, session: AsyncSession) -> None:
        self.session = session
        self.clock = Clock(APRIL)
        bus = EventBus()
        bus.in_transaction(AuditService(database).handle)
        plans = PlanService(database, bus)
        self.credits = CreditService(database, bus, clock=self.clock)
        self.orgs = OrganizationService(database, plans, bus, plan_credits=self.credits)
        self.subs = SubscriptionService(database, plans, self.orgs, bus, clock=self.clock)
        self.invoices = InvoiceService(database, SETTINGS, bus, clock=self.clock)
        self.coupons = CouponService(database, bus, clock=self.clock)
        self.payments = PaymentService(database, self.credits, self.subs, bus, clock=self.clock)
        self.dunning = DunningService(database, SETTINGS, self.subs, self.orgs, bus)
        self.packs = CreditPackService(database, self.invoices)

    async def subscribed(self) -> uuid.UUID:
        """An organisation paying in USD (the default) on `pro`."""
        org = await self.orgs.create(name="Acme", session=self.session)
        await self.subs.create(org.id, "pro", trial_days=0, at=APRIL, session=self.session)
        return org.id

    async def open_invoice(self, org: uuid.UUID, amount: int = 1_000) -> Invoice:
        draft = await self.invoices.create_draft(
            org, "USD", [("Workshop", amount)], session=self.session
        )
        return await self.invoices.finalize(org, draft.id, session=self.session)

    async def events(self, org: uuid.UUID) -> list[str]:
        query = sa.select(OutboxEvent.type).where(OutboxEvent.organization_id == org)
        return list(await self.session.scalars(query.order_by(OutboxEvent.occurred_at)))


@pytest_asyncio.fixture(loop_scope="session")
async def billing(database: Database, session: AsyncSession) -> Billing:
    await PlanService(database).load_catalog(read_catalog(), session=session)
    return Billing(database, session)


# --- 1. an invoice owing nothing ----------------------------------------------------------------
class TestNothingDue:
    async def test_a_full_coupon_makes_the_finalised_invoice_paid_and_never_dunned(
        self, billing: Billing
    ) -> None:
        org = await billing.subscribed()
        coupon = await billing.coupons.create(
            random_code("FREE").upper(), percent_off=10_000, session=billing.session
        )
        draft = await billing.invoices.create_draft(
            org, "USD", [("Workshop", 5_000)], session=billing.session
        )
        await billing.coupons.redeem(org, coupon.code, invoice_id=draft.id, session=billing.session)
        invoice = await billing.invoices.finalize(org, draft.id, session=billing.session)
        assert (invoice.total, invoice.amount_due) == (0, 0)
        assert invoice.status is InvoiceStatus.PAID
        assert invoice.paid_at == APRIL
        assert invoice.number is not None
        events = await billing.events(org)
        assert events.index("invoice.finalized") < events.index("invoice.paid")
        # Weeks past its due date, dunning finds nothing to chase.
        late = APRIL + timedelta(days=60)
        assert not is_overdue(invoice, late.date())
        assert await billing.dunning.run(org, late, session=billing.session) == []
        subscription = await billing.subs.get(org, session=billing.session)
        organization = await billing.orgs.get(org, session=billing.session)
        assert subscription.status is SubscriptionStatus.ACTIVE
        assert organization.status is OrganizationStatus.ACTIVE

    async def test_a_zero_line_invoice_is_paid_at_once(self, billing: Billing) -> None:
        org = await billing.subscribed()
        invoice = await billing.open_invoice(org, amount=0)
        assert (invoice.status, invoice.amount_due) == (InvoiceStatus.PAID, 0)
        assert (await billing.events(org)).count("invoice.paid") == 1

    async def test_an_open_invoice_owing_nothing_is_never_overdue(self, billing: Billing) -> None:
        # A row left open with nothing due (finalised before this fix) is not dunned either.
        org = await billing.subscribed()
        invoice_id = (await billing.open_invoice(org)).id
        await billing.session.execute(
            sa.update(Invoice)
            .where(Invoice.organization_id == org, Invoice.id == invoice_id)
            .values(total=0, subtotal=0, tax_amount=0, amount_due=0)
        )
        billing.session.expire_all()
        late = APRIL + timedelta(days=60)
        assert await billing.dunning.run(org, late, session=billing.session) == []
        listed = await billing.invoices.list(org, overdue=True, session=billing.session)
        assert invoice_id not in [found.id for found in listed]


# --- 2. void with payments ----------------------------------------------------------------------
class TestVoidWithPayments:
    @pytest.mark.parametrize("uncollectible", [False, True])
    async def test_refused_until_the_payments_are_refunded(
        self, billing: Billing, uncollectible: bool
    ) -> None:
        org = await billing.subscribed()
        invoice_id = (await billing.open_invoice(org)).id
        if uncollectible:
            await billing.invoices.mark_uncollectible(org, invoice_id, session=billing.session)
        payment = await billing.payments.record(
            org, invoice_id, 400, "card", session=billing.session
        )
        payment_id = payment.id
        with pytest.raises(InvoiceHasPayments) as refused:
            await billing.invoices.void(org, invoice_id, session=billing.session)
        assert refused.value.code == "invoice_has_payments"
        billing.session.expire_all()
        kept = await billing.invoices.get(org, invoice_id, session=billing.session)
        assert kept.status is not InvoiceStatus.VOID
        assert (kept.amount_paid, kept.amount_due) == (400, 600)
        await billing.payments.refund(org, payment_id, 400, session=billing.session)
        voided = await billing.invoices.void(org, invoice_id, session=billing.session)
        assert (voided.status, voided.amount_paid, voided.amount_due) == (
            InvoiceStatus.VOID,
            0,
            1_000,
        )


# --- 3. control and bidirectional characters ------------------------------------------------------
class TestCharacters:
    @pytest.mark.parametrize("character", BIDI)
    def test_bidi_controls_are_refused_in_one_line_and_multi_line_text(
        self, character: str
    ) -> None:
        for multiline in (False, True):
            assert control_character(f"pay{character}lapyap", multiline=multiline) == character
            with pytest.raises(InvalidCharacter, match=f"U\\+{ord(character):04X}"):
                checked_text(f"a{character}b", field="name", multiline=multiline)

    def test_marks_and_right_to_left_text_stay_allowed(self) -> None:
        text = "\u200f\u0641\u0627\u062a\u0648\u0631\u0629\u200e 12 \u061c"
        assert checked_text(text, field="name") == text

    @pytest.mark.parametrize("notes", ["\x1b[2J", "a\x01b", "a\x7fb", "a\x85b", "a\u202eb"])
    async def test_notes_take_lines_and_tabs_only(self, billing: Billing, notes: str) -> None:
        org = await billing.subscribed()
        with pytest.raises(InvalidCharacter):
            await billing.invoices.create_draft(org, "USD", notes=notes, session=billing.session)
        with pytest.raises(InvalidCharacter):
            await billing.invoices.create_draft(
                org, "USD", notes_localized={"ar": notes}, session=billing.session
            )
        draft = await billing.invoices.create_draft(
            org, "USD", notes="line\n\tindented", session=billing.session
        )
        assert draft.notes == "line\n\tindented"

    @pytest.mark.parametrize("character", ["\u202e", "\u2066", "\x1b"])
    async def test_descriptions_and_names_refuse_them(
        self, billing: Billing, character: str
    ) -> None:
        org = await billing.subscribed()
        with pytest.raises(InvalidInvoiceLine):
            await billing.invoices.create_draft(
                org, "USD", [(f"Refund{character}0001$", 100)], session=billing.session
            )
        with pytest.raises(InvalidCoupon):
            await billing.coupons.create(
                random_code("C").upper(),
                percent_off=100,
                name=f"x{character}y",
                session=billing.session,
            )
        with pytest.raises(InvalidCreditPack):
            await billing.packs.create(
                random_code("p").replace("_", "-"),
                credits=1,
                price=Money(1, "USD"),
                name=f"x{character}y",
                session=billing.session,
            )


# --- 4. currencies --------------------------------------------------------------------------------
class TestCurrencies:
    @pytest.mark.parametrize("code", ["XXX", "XTS", "CLF", "XAU", "USN", "XDR"])
    def test_codes_that_are_not_tender_are_refused(self, code: str) -> None:
        with pytest.raises(UnknownCurrency, match="not legal tender"):
            Money(1, code)

    @pytest.mark.parametrize("code", ["XAF", "XOF", "XCD", "XPF", "YER", "KWD", "JPY", "USD"])
    def test_shared_and_national_currencies_stay(self, code: str) -> None:
        assert Money(1, code.lower()).currency == code

    async def test_a_pack_in_another_currency_is_not_sold(self, billing: Billing) -> None:
        org = await billing.subscribed()
        pack = await billing.packs.create(
            random_code("p").replace("_", "-"),
            credits=10,
            price=Money(100, "JPY"),
            session=billing.session,
        )
        with pytest.raises(CreditPackCurrencyMismatch):
            await billing.packs.purchase(org, pack.code, session=billing.session)
        assert not await billing.session.scalar(
            sa.select(sa.func.count(Invoice.id)).where(Invoice.organization_id == org)
        )


# --- 5. credits of a pack -------------------------------------------------------------------------
class TestPackCredits:
    async def test_credits_are_capped(self, billing: Billing) -> None:
        for credits in (MAX_PACK_CREDITS + 1, 2**63 - 1):
            code = random_code("p").replace("_", "-")
            with pytest.raises(InvalidCreditPack):
                await billing.packs.create(
                    code, credits=credits, price=Money(1, "USD"), session=billing.session
                )
            assert not await billing.session.scalar(
                sa.select(sa.func.count(CreditPack.id)).where(CreditPack.code == code)
            )

    async def test_the_largest_pack_is_paid_and_granted(self, billing: Billing) -> None:
        org = await billing.subscribed()
        pack = await billing.packs.create(
            random_code("p").replace("_", "-"),
            credits=MAX_PACK_CREDITS,
            price=Money(100, "USD"),
            session=billing.session,
        )
        invoice = await billing.packs.purchase(org, pack.code, session=billing.session)
        payment = await billing.payments.record(
            org, invoice.id, invoice.amount_due, "card", session=billing.session
        )
        assert payment.credits_awarded == MAX_PACK_CREDITS


# --- over HTTP ------------------------------------------------------------------------------------
class TestHTTP:
    async def test_void_with_payments_is_409(self, admin: Admin, customer: TestTenant) -> None:
        created = await admin.client.post(
            f"/v1/admin/organizations/{customer.organization_id}/invoices",
            json={"currency": "USD", "lines": [{"description": "Workshop", "unit_amount": 1000}]},
            headers=admin.operator,
        )
        invoice_id = created.json()["id"]
        await admin.client.post(f"/v1/admin/invoices/{invoice_id}/finalize", headers=admin.operator)
        paid = await admin.client.post(
            f"/v1/admin/invoices/{invoice_id}/payments",
            json={"amount": 400, "method": "card"},
            headers=admin.operator,
        )
        assert paid.status_code == 201, paid.text
        voided = await admin.client.post(
            f"/v1/admin/invoices/{invoice_id}/void", headers=admin.operator
        )
        assert voided.status_code == 409, voided.text
        assert voided.json()["error"]["code"] == "invoice_has_payments"
        shown = await admin.client.get(f"/v1/invoices/{invoice_id}", headers=customer.headers)
        assert (shown.json()["status"], shown.json()["amount_due"]) == ("open", 600)

    async def test_a_full_coupon_invoice_is_paid_over_http(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        created = await admin.client.post(
            f"/v1/admin/organizations/{customer.organization_id}/invoices",
            json={"currency": "USD", "lines": [{"description": "Free", "unit_amount": 0}]},
            headers=admin.operator,
        )
        finalized = await admin.client.post(
            f"/v1/admin/invoices/{created.json()['id']}/finalize", headers=admin.operator
        )
        assert finalized.status_code == 200, finalized.text
        assert (finalized.json()["status"], finalized.json()["overdue"]) == ("paid", False)

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"lines": [{"description": "a\u202eb", "unit_amount": 1}]}, "invalid_invoice_line"),
            ({"notes": "a\u2066b"}, None),
            ({"notes": "a\x1bb"}, None),
            ({"notes_localized": {"ar": "a\u202bb"}}, None),
            ({"currency": "XTS"}, "unknown_currency"),
            ({"currency": "CLF"}, "unknown_currency"),
        ],
    )
    async def test_refused_drafts_change_nothing(
        self, admin: Admin, customer: TestTenant, body: dict[str, object], code: str | None
    ) -> None:
        path = f"/v1/admin/organizations/{customer.organization_id}/invoices"
        before = await admin.client.get("/v1/invoices", headers=customer.headers)
        answer = await admin.client.post(
            path, json={"currency": "USD", **body}, headers=admin.operator
        )
        assert answer.status_code == 422, answer.text
        if code is not None:
            assert answer.json()["error"]["code"] == code
        after = await admin.client.get("/v1/invoices", headers=customer.headers)
        assert after.status_code == 200, after.text
        assert after.json() == before.json()

    async def test_pack_limits_over_http(self, admin: Admin, customer: TestTenant) -> None:
        code = random_code("p").replace("_", "-")
        huge = await admin.client.post(
            "/v1/admin/credit-packs",
            json={"code": code, "credits": 2**63 - 1, "price": 1, "currency": "USD"},
            headers=admin.operator,
        )
        assert huge.status_code == 422, huge.text
        for name in ("a\u202eb", "a\x1bb"):
            named = await admin.client.post(
                "/v1/admin/credit-packs",
                json={"code": code, "credits": 1, "price": 1, "currency": "USD", "name": name},
                headers=admin.operator,
            )
            assert named.status_code == 422, named.text
        yen = await admin.client.post(
            "/v1/admin/credit-packs",
            json={"code": code, "credits": 10, "price": 100, "currency": "JPY"},
            headers=admin.operator,
        )
        assert yen.status_code == 201, yen.text
        bought = await admin.client.post(
            "/v1/credit-packs/purchase", json={"code": code}, headers=customer.headers
        )
        assert bought.status_code == 422, bought.text
        assert bought.json()["error"]["code"] == "credit_pack_currency_mismatch"
