"""Stripe end to end through the real app over HTTP: `SAASCORE_PAYMENT_PROVIDER=stripe`, the
real `stripe` SDK talking to the fake Stripe on loopback, and Stripe's webhooks signed with
Stripe's scheme and POSTed to `/v1/webhooks/stripe`.

The tenant checks out, the fake completes the checkout and hands back the events Stripe would
send; the tests deliver them (twice, concurrently, out of order, forged, altered) and assert
what saascore's own books say afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from pydantic import SecretStr

from saascore import Saascore
from saascore.billing.numbering import format_invoice_number, series_key
from saascore.config import PaymentProviderChoice
from saascore.kit.db import Database
from saascore.kit.money import Money
from saascore.models import (
    InvoiceSequence,
    InvoiceStatus,
    Organization,
    Payment,
    PaymentProvider,
    PaymentStatus,
    PlanPrice,
    Subscription,
    SubscriptionPlan,
    SubscriptionStatus,
    WebhookEvent,
    WebhookOutcome,
)
from saascore.testing import TestTenant
from tests.admin import EVERY_SCOPE
from tests.factories import create_plan
from tests.http import api_app, serving, tenant
from tests.providers.fake_stripe import (
    FakeStripe,
    checkout_completed,
    event,
    invoice_event,
    new_id,
    sign,
    signed,
    subscription_event,
)
from tests.providers.helpers import invoices_of, payments_of, stored_event, subscriptions_of

WEBHOOK = "/v1/webhooks/stripe"
#: The catalog's Stripe prices (set on the scratch database's `plan_prices`).
PRICES = {("pro", "monthly"): "price_e2e_pro_monthly", ("business", "monthly"): "price_e2e_biz_m"}
PRO_AMOUNT = 2999


@dataclass
class Env:
    """The app selling through the fake Stripe, and one organisation to sell to."""

    client: httpx.AsyncClient
    core: Saascore
    fake: FakeStripe
    customer: TestTenant
    #: A plan without rate limits, for the organisations the tests make.
    plan: str

    @property
    def database(self) -> Database:
        return self.core.database

    @property
    def org(self) -> uuid.UUID:
        return self.customer.organization_id

    async def post(self, body: dict[str, Any] | bytes, *, at: int | None = None) -> httpx.Response:
        raw, headers = signed(body, self.fake.webhook_secret, timestamp=at or int(time.time()))
        return await self.client.post(WEBHOOK, content=raw, headers=headers)

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        for one in events:
            response = await self.post(one)
            assert response.status_code == 200, response.text

    async def checkout(self, **body: str) -> str:
        """A checkout through the tenant route; the fake's session id."""
        response = await self.client.post(
            "/v1/subscription/checkout", json=body, headers=self.customer.headers
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["provider"] == "stripe"
        assert answer["url"].startswith(self.fake.url)
        assert answer["id"] in self.fake.state.checkout_sessions
        return str(answer["id"])

    async def subscribed(self) -> tuple[str, str]:
        """The pro plan bought and paid through Stripe: (customer id, subscription id)."""
        session_id = await self.checkout(plan="pro", cycle="monthly")
        await self.deliver(self.fake.state.complete_checkout(session_id))
        session = self.fake.state.checkout_sessions[session_id]
        return session["customer"], session["subscription"]

    async def another(self) -> TestTenant:
        return await tenant(self.client, self.database, plan=self.plan, scopes=EVERY_SCOPE)


async def _catalog(database: Database) -> None:
    """The Stripe price ids on the catalog's USD prices (the same each time: idempotent)."""
    async with database.transaction() as s:
        for (plan, cycle), price_id in PRICES.items():
            plan_id = (
                await s.scalars(sa.select(SubscriptionPlan.id).where(SubscriptionPlan.code == plan))
            ).one()
            await s.execute(
                sa.update(PlanPrice)
                .where(
                    PlanPrice.plan_id == plan_id,
                    PlanPrice.billing_cycle == cycle,
                    PlanPrice.currency == "USD",
                )
                .values(stripe_price_id=price_id)
            )


@dataclass
class _Shared:
    client: httpx.AsyncClient
    core: Saascore
    fake: FakeStripe
    plan: str


@asynccontextmanager
async def _selling(database: Database) -> AsyncIterator[_Shared]:
    """The app on `database` selling through a fake Stripe of its own, for a whole module."""
    await _catalog(database)
    fake = FakeStripe()
    fake.state.prices[PRICES["pro", "monthly"]] = PRO_AMOUNT
    application, core = api_app(
        database,
        auth_requests_per_minute=None,
        payment_provider=PaymentProviderChoice.STRIPE,
        stripe_secret_key=SecretStr(fake.api_key),
        stripe_webhook_secret=SecretStr(fake.webhook_secret),
        stripe_api_base=fake.url,
    )
    try:
        async with serving(application, core) as client:
            async with database.transaction() as s:
                plan = (await create_plan(s)).code
            yield _Shared(client, core, fake, plan)
    finally:
        fake.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def _stripe_sqlite(_scratch_sqlite: Database) -> AsyncIterator[_Shared]:
    async with _selling(_scratch_sqlite) as shared:
        yield shared


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def _stripe_postgresql(_scratch_postgresql: Database) -> AsyncIterator[_Shared]:
    async with _selling(_scratch_postgresql) as shared:
        yield shared


@pytest.fixture
def _shared(backend: str, request: pytest.FixtureRequest) -> _Shared:
    shared: _Shared = request.getfixturevalue(f"_stripe_{backend}")
    shared.fake.requests.clear()
    return shared


@pytest_asyncio.fixture(loop_scope="session")
async def env(_shared: _Shared) -> Env:
    """The module's app and fake Stripe (what the fake recorded forgotten), and a new
    organisation of the test's own."""
    client, core = _shared.client, _shared.core
    customer = await tenant(client, core.database, plan=_shared.plan, scopes=EVERY_SCOPE)
    return Env(client, core, _shared.fake, customer, _shared.plan)


async def _plan_of(database: Database, org_id: uuid.UUID) -> str | None:
    async with database.session(readonly=True) as s:
        return await s.scalar(
            sa.select(SubscriptionPlan.code)
            .join(Organization, Organization.plan_id == SubscriptionPlan.id)
            .where(Organization.id == org_id)
        )


async def _counts(database: Database) -> tuple[int, ...]:
    async with database.session(readonly=True) as s:
        counts = []
        for table in (WebhookEvent, Subscription, Payment):
            counts.append(int(await s.scalar(sa.select(sa.func.count()).select_from(table)) or 0))
        return tuple(counts)


async def _last_number(core: Saascore, org_id: uuid.UUID, at: datetime) -> str:
    settings = core.settings
    async with core.database.session(readonly=True) as s:
        seq = await s.scalar(
            sa.select(InvoiceSequence.last_number).where(
                InvoiceSequence.series == series_key(settings, organization_id=org_id, at=at)
            )
        )
    assert seq is not None
    return format_invoice_number(settings, seq=seq, at=at)


class TestFullFlow:
    async def test_checkout_to_paid_then_deleted_back_to_free(self, env: Env) -> None:
        session_id = await env.checkout(plan="pro", cycle="monthly")
        [sent] = env.fake.sent("POST", "/v1/checkout/sessions")
        params = sent.params
        assert params["mode"] == "subscription"
        assert params["line_items"] == [{"price": PRICES["pro", "monthly"], "quantity": "1"}]
        assert params["subscription_data"]["metadata"]["organization_id"] == str(env.org)
        assert await subscriptions_of(env.database, env.org) == []  # nothing until paid

        events = env.fake.state.complete_checkout(session_id)
        assert [e["type"] for e in events] == [
            "checkout.session.completed",
            "customer.subscription.created",
            "invoice.paid",
        ]
        await env.deliver(events)
        for one in events:
            row = await stored_event(env.database, one["id"])
            assert row is not None
            assert (row.outcome, row.organization_id) == (WebhookOutcome.PROCESSED, env.org)

        session = env.fake.state.checkout_sessions[session_id]
        mine = (await env.client.get("/v1/subscription", headers=env.customer.headers)).json()
        assert (mine["plan"], mine["status"]) == ("pro", "active")
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.provider is PaymentProvider.STRIPE
        assert subscription.provider_subscription_id == session["subscription"]
        [invoice] = await invoices_of(env.database, env.org)
        assert invoice.status is InvoiceStatus.PAID
        assert (invoice.total, invoice.amount_paid) == (PRO_AMOUNT, PRO_AMOUNT)
        assert invoice.amount_due == 0
        assert invoice.issue_date is not None
        issued = datetime.combine(invoice.issue_date, datetime.min.time(), UTC)
        assert invoice.number == await _last_number(env.core, env.org, issued)
        stripe_invoice = events[2]["data"]["object"]["id"]
        [payment] = await payments_of(env.database, env.org)
        assert (payment.provider, payment.status) == (
            PaymentProvider.STRIPE,
            PaymentStatus.SUCCEEDED,
        )
        assert payment.provider_payment_id == stripe_invoice
        assert (payment.invoice_id, payment.amount) == (invoice.id, PRO_AMOUNT)
        assert await _plan_of(env.database, env.org) == "pro"
        async with env.database.session(readonly=True) as s:
            organization = await s.get(Organization, env.org)
        assert organization is not None
        assert organization.billing_provider is PaymentProvider.STRIPE
        assert organization.provider_customer_id == session["customer"]

        # The period runs out and Stripe ends the subscription.
        end = subscription.current_period_end
        deleted = subscription_event(
            "customer.subscription.deleted",
            id=session["subscription"],
            customer=session["customer"],
            price=PRICES["pro", "monthly"],
            organization_id=env.org,
            status="canceled",
            period_start=subscription.current_period_start,
            period_end=end,
            canceled_at=end,
            ended_at=end,
            created=int(time.time()) + 1,
        )
        await env.deliver([deleted])
        [ended] = await subscriptions_of(env.database, env.org)
        assert ended.status is SubscriptionStatus.CANCELED
        assert await _plan_of(env.database, env.org) == env.core.settings.default_plan
        assert len(await payments_of(env.database, env.org)) == 1

    async def test_taxed_organisation_pays_the_providers_amount(self, env: Env) -> None:
        """Stripe charged the whole amount, its own taxes included: saascore's invoice for
        it is exactly that amount, paid, with no saascore tax on top."""
        await env.core.invoices.set_tax_rate(env.org, 2000)  # 20 %
        await env.subscribed()
        [invoice] = await invoices_of(env.database, env.org)
        assert invoice.status is InvoiceStatus.PAID
        assert (invoice.subtotal, invoice.tax_amount, invoice.total) == (PRO_AMOUNT, 0, PRO_AMOUNT)
        assert (invoice.amount_paid, invoice.amount_due) == (PRO_AMOUNT, 0)
        assert invoice.tax_rate_bps == 0
        assert invoice.metadata_["tax_source"] == "provider"


class TestPack:
    async def test_pack_bought_in_payment_mode_credits_once(self, env: Env) -> None:
        """The organisation has a tax rate: Stripe's amount, its taxes its own, pays
        saascore's invoice for the pack in full, which grants the credits."""
        await env.core.invoices.set_tax_rate(env.org, 2000)
        price_id = new_id("price")
        pack = await env.core.credit_packs.create(
            f"stripe-{uuid.uuid4().hex[:8]}",
            credits=700,
            price=Money(1500, "USD"),
            stripe_price_id=price_id,
        )
        env.fake.state.prices[price_id] = 1500
        before = await env.core.credits.balance(env.org)
        session_id = await env.checkout(pack=pack.code)
        [sent] = env.fake.sent("POST", "/v1/checkout/sessions")
        assert sent.params["mode"] == "payment"
        assert sent.params["line_items"][0]["price"] == price_id
        [completed] = env.fake.state.complete_checkout(session_id)
        await env.deliver([completed, completed])
        assert await env.core.credits.balance(env.org) - before == 700
        [payment] = await payments_of(env.database, env.org)
        assert payment.provider is PaymentProvider.STRIPE
        assert payment.credits_awarded == 700
        assert (
            payment.provider_payment_id
            == env.fake.state.checkout_sessions[session_id]["payment_intent"]
        )
        [invoice] = await invoices_of(env.database, env.org)
        assert (invoice.status, invoice.amount_due) == (InvoiceStatus.PAID, 0)
        assert (invoice.total, invoice.tax_amount) == (1500, 0)
        assert invoice.metadata_["tax_source"] == "provider"


class TestWebhooks:
    async def test_refused_bodies_write_nothing(self, env: Env) -> None:
        now = int(time.time())
        body = checkout_completed(organization_id=env.org, customer=new_id("cus"))
        raw, headers = signed(body, env.fake.webhook_secret, timestamp=now)
        forged = {**headers, "stripe-signature": sign(raw, "whsec_not_the_secret", now)}
        stale = {**headers, "stripe-signature": sign(raw, env.fake.webhook_secret, now - 301)}
        altered = raw.replace(str(env.org).encode(), str(uuid.uuid4()).encode())
        assert altered != raw
        _, empty = signed(b"", env.fake.webhook_secret, timestamp=now)
        unsigned = {"content-type": "application/json"}
        before = await _counts(env.database)
        cases = [
            (raw, forged, "invalid_signature"),
            (raw, stale, "stale_webhook"),
            (altered, headers, "invalid_signature"),
            (b"", empty, "malformed_webhook"),
            (raw, unsigned, "invalid_signature"),
        ]
        for content, sent_headers, code in cases:
            response = await env.client.post(WEBHOOK, content=content, headers=sent_headers)
            assert response.status_code == 400, (code, response.text)
            assert response.json()["error"]["code"] == code
        assert await _counts(env.database) == before
        assert await stored_event(env.database, body["id"]) is None
        async with env.database.session(readonly=True) as s:
            organization = await s.get(Organization, env.org)
        assert organization is not None
        assert organization.provider_customer_id is None

    async def test_twice_and_ten_concurrent_copies_apply_once(self, env: Env) -> None:
        session_id = await env.checkout(plan="pro", cycle="monthly")
        completed, created, paid = env.fake.state.complete_checkout(session_id)
        await env.deliver([completed, created, created])
        answers = await asyncio.gather(*(env.post(paid) for _ in range(10)))
        assert [a.status_code for a in answers] == [200] * 10
        [payment] = await payments_of(env.database, env.org)
        assert payment.amount == PRO_AMOUNT
        [invoice] = await invoices_of(env.database, env.org)
        assert (invoice.status, invoice.amount_paid) == (InvoiceStatus.PAID, PRO_AMOUNT)
        assert len(await subscriptions_of(env.database, env.org)) == 1
        async with env.database.session(readonly=True) as s:
            rows = await s.scalar(
                sa.select(sa.func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.event_id.in_([completed["id"], created["id"], paid["id"]]))
            )
        assert rows == 3

    async def test_updated_before_created_ends_updated(self, env: Env) -> None:
        customer, sub_id = new_id("cus"), new_id("sub")
        now = int(time.time())
        fields: dict[str, Any] = {
            "id": sub_id,
            "customer": customer,
            "price": PRICES["pro", "monthly"],
            "organization_id": env.org,
            "period_start": now,
        }
        updated = subscription_event(
            "customer.subscription.updated",
            created=now + 10,
            cancel_at_period_end=True,
            **fields,
        )
        created = subscription_event("customer.subscription.created", created=now, **fields)
        await env.deliver([updated, created])
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.status is SubscriptionStatus.ACTIVE
        assert subscription.cancel_at_period_end is True
        stale = await stored_event(env.database, created["id"])
        assert stale is not None
        assert stale.outcome is WebhookOutcome.IGNORED

    async def test_failed_after_a_later_paid_changes_nothing(self, env: Env) -> None:
        customer, sub_id = await env.subscribed()
        [subscription] = await subscriptions_of(env.database, env.org)
        paid_at = int(subscription.current_period_start.timestamp())
        late_failure = invoice_event(
            "invoice.payment_failed",
            customer=customer,
            subscription=sub_id,
            amount=PRO_AMOUNT,
            price=PRICES["pro", "monthly"],
            organization_id=env.org,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
            failure_message="Your card was declined.",
            created=paid_at - 60,
        )
        await env.deliver([late_failure])
        row = await stored_event(env.database, late_failure["id"])
        assert row is not None
        assert row.outcome is WebhookOutcome.IGNORED
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.status is SubscriptionStatus.ACTIVE
        [payment] = await payments_of(env.database, env.org)
        assert payment.status is PaymentStatus.SUCCEEDED
        [invoice] = await invoices_of(env.database, env.org)
        assert invoice.status is InvoiceStatus.PAID

    async def test_unknown_type_is_stored_and_200(self, env: Env) -> None:
        unknown = event("customer.tax_id.created", {"id": new_id("txi"), "object": "tax_id"})
        response = await env.post(unknown)
        assert response.status_code == 200, response.text
        row = await stored_event(env.database, unknown["id"])
        assert row is not None
        assert row.outcome is WebhookOutcome.IGNORED
        assert row.event_type == "customer.tax_id.created"

    async def test_handler_failure_is_500_and_redelivery_applies(self, env: Env) -> None:
        session_id = await env.checkout(plan="pro", cycle="monthly")
        completed, created, paid = env.fake.state.complete_checkout(session_id)
        await env.deliver([completed])
        # The payment before the subscription it pays: applying it fails, nothing of it stays.
        failed = await env.post(paid)
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "webhook_failed"
        row = await stored_event(env.database, paid["id"])
        assert row is not None
        assert row.outcome is WebhookOutcome.FAILED
        assert await payments_of(env.database, env.org) == []
        assert await invoices_of(env.database, env.org) == []
        await env.deliver([created, paid])
        row = await stored_event(env.database, paid["id"])
        assert row is not None
        assert (row.outcome, row.attempts) == (WebhookOutcome.PROCESSED, 2)
        [payment] = await payments_of(env.database, env.org)
        assert payment.amount == PRO_AMOUNT


class TestIsolation:
    async def test_unsigned_body_naming_another_org_is_400(self, env: Env) -> None:
        other = await env.another()
        body = subscription_event(
            "customer.subscription.created",
            customer=new_id("cus"),
            price=PRICES["pro", "monthly"],
            organization_id=other.organization_id,
        )
        before = await _counts(env.database)
        raw, _ = signed(body, env.fake.webhook_secret, timestamp=int(time.time()))
        for headers in (
            {"content-type": "application/json"},
            {"stripe-signature": sign(raw, "whsec_nobody", int(time.time()))},
        ):
            response = await env.client.post(WEBHOOK, content=raw, headers=headers)
            assert response.status_code == 400
        assert await _counts(env.database) == before
        assert await subscriptions_of(env.database, other.organization_id) == []

    async def test_customer_of_a_naming_b_changes_nothing(self, env: Env) -> None:
        customer, sub_id = await env.subscribed()  # the customer is A's
        other = await env.another()
        b = other.organization_id
        [a_before] = await subscriptions_of(env.database, env.org)
        now = int(time.time()) + 5
        hostile = [
            subscription_event(
                "customer.subscription.created",
                customer=customer,
                price=PRICES["business", "monthly"],
                organization_id=b,
                created=now,
            ),
            subscription_event(
                "customer.subscription.updated",
                id=sub_id,
                customer=customer,
                price=PRICES["business", "monthly"],
                organization_id=b,
                created=now,
            ),
            invoice_event(
                "invoice.paid",
                customer=customer,
                subscription=sub_id,
                organization_id=b,
                amount=99_999,
                created=now,
            ),
            checkout_completed(organization_id=b, customer=customer, created=now),
        ]
        await env.deliver(hostile)
        for one in hostile:
            row = await stored_event(env.database, one["id"])
            assert row is not None
            assert row.outcome is WebhookOutcome.IGNORED, one["type"]
            assert row.organization_id != b
        assert await subscriptions_of(env.database, b) == []
        assert await payments_of(env.database, b) == []
        assert await invoices_of(env.database, b) == []
        async with env.database.session(readonly=True) as s:
            organization_b = await s.get(Organization, b)
        assert organization_b is not None
        assert organization_b.provider_customer_id is None
        assert await _plan_of(env.database, b) == env.plan
        [a_after] = await subscriptions_of(env.database, env.org)
        assert (a_after.id, a_after.plan_id, a_after.status) == (
            a_before.id,
            a_before.plan_id,
            a_before.status,
        )
        assert len(await payments_of(env.database, env.org)) == 1
        assert await _plan_of(env.database, env.org) == "pro"


class TestTenantRoutes:
    async def test_portal_cancel_resume_change_plan_call_stripe(self, env: Env) -> None:
        customer, sub_id = await env.subscribed()
        headers = env.customer.headers
        portal = await env.client.post("/v1/subscription/portal", headers=headers)
        assert portal.status_code == 200, portal.text
        [sent] = env.fake.sent("POST", "/v1/billing_portal/sessions")
        assert sent.params["customer"] == customer
        assert portal.json()["url"].startswith(f"{env.fake.url}/p/session/")

        path = f"/v1/subscriptions/{sub_id}"
        canceled = await env.client.post("/v1/subscription/cancel", json={}, headers=headers)
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["cancel_at_period_end"] is True
        assert env.fake.sent("POST", path)[-1].params["cancel_at_period_end"] == "true"
        assert env.fake.state.subscriptions[sub_id]["cancel_at_period_end"] is True
        [local] = await subscriptions_of(env.database, env.org)
        assert local.cancel_at_period_end is True

        resumed = await env.client.post("/v1/subscription/resume", headers=headers)
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["cancel_at_period_end"] is False
        assert env.fake.sent("POST", path)[-1].params["cancel_at_period_end"] == "false"
        assert env.fake.state.subscriptions[sub_id]["cancel_at_period_end"] is False

        changed = await env.client.post(
            "/v1/subscription/change-plan", json={"plan": "business"}, headers=headers
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["plan"] == "business"
        [item] = env.fake.sent("POST", path)[-1].params["items"]
        assert item["price"] == PRICES["business", "monthly"]
        held = env.fake.state.subscriptions[sub_id]["items"]["data"][0]["price"]["id"]
        assert held == PRICES["business", "monthly"]
        assert await _plan_of(env.database, env.org) == "business"

        # Stripe's own snapshot of the change, as its webhook brings it, changes nothing more.
        snapshot = event(
            "customer.subscription.updated",
            env.fake.state.subscriptions[sub_id],
            created=int(time.time()) + 1,
        )
        await env.deliver([snapshot])
        [local] = await subscriptions_of(env.database, env.org)
        assert (local.status, local.cancel_at_period_end) == (SubscriptionStatus.ACTIVE, False)
        assert await _plan_of(env.database, env.org) == "business"
        assert len(await payments_of(env.database, env.org)) == 1
        assert timedelta(0) < local.current_period_end - local.current_period_start
