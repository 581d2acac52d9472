"""Lemon Squeezy end to end through the real app over HTTP: `SAASCORE_PAYMENT_PROVIDER=
lemonsqueezy`, the adapter's httpx client talking to the fake Lemon Squeezy on loopback, and
its webhooks signed with `X-Signature` and POSTed to `/v1/webhooks/lemonsqueezy`.

The tenant checks out, the fake completes the checkout and hands back the deliveries Lemon
Squeezy would make; the tests post them (twice, concurrently, out of order, forged, altered)
and assert what saascore's own books say afterwards."""

from __future__ import annotations

import asyncio
import json
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
from saascore.config import PaymentProviderChoice
from saascore.kit.db import Database
from saascore.kit.money import Money
from saascore.models import (
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
from saascore.providers.lemonsqueezy import event_id
from saascore.testing import TestTenant
from tests.admin import EVERY_SCOPE
from tests.factories import create_plan
from tests.http import api_app, serving, tenant
from tests.providers.fake_lemonsqueezy import (
    Delivery,
    FakeLemonSqueezy,
    invoice_event,
    order_created,
    sign,
    subscription_event,
    webhook,
)
from tests.providers.helpers import invoices_of, payments_of, stored_event, subscriptions_of

WEBHOOK = "/v1/webhooks/lemonsqueezy"
PRO_VARIANT, BUSINESS_VARIANT = 9301, 9302
VARIANTS = {("pro", "monthly"): PRO_VARIANT, ("business", "monthly"): BUSINESS_VARIANT}
PRO_AMOUNT = 2999


@dataclass
class Env:
    """The app selling through the fake Lemon Squeezy, and one organisation to sell to."""

    client: httpx.AsyncClient
    core: Saascore
    fake: FakeLemonSqueezy
    customer: TestTenant
    plan: str

    @property
    def database(self) -> Database:
        return self.core.database

    @property
    def org(self) -> uuid.UUID:
        return self.customer.organization_id

    async def post(self, delivery: Delivery | dict[str, Any]) -> httpx.Response:
        if not isinstance(delivery, Delivery):
            delivery = self.fake.deliver(delivery)
        return await self.client.post(WEBHOOK, content=delivery.body, headers=delivery.headers)

    async def deliver(self, deliveries: list[Delivery] | list[dict[str, Any]]) -> None:
        for one in deliveries:
            response = await self.post(one)
            assert response.status_code == 200, response.text

    async def checkout(self, **body: str) -> str:
        response = await self.client.post(
            "/v1/subscription/checkout", json=body, headers=self.customer.headers
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["provider"] == "lemonsqueezy"
        assert answer["url"].startswith(self.fake.url)
        assert answer["id"] in self.fake.state.checkouts
        return str(answer["id"])

    async def subscribed(self) -> list[Delivery]:
        """The pro plan bought and paid through Lemon Squeezy: the deliveries it took."""
        checkout_id = await self.checkout(plan="pro", cycle="monthly")
        deliveries = self.fake.complete_checkout(checkout_id, total=PRO_AMOUNT)
        await self.deliver(deliveries)
        return deliveries

    def custom(self, org: uuid.UUID | None = None) -> dict[str, str]:
        return {"organization_id": str(org or self.org), "mode": "subscription", "plan": "pro"}

    async def another(self) -> TestTenant:
        return await tenant(self.client, self.database, plan=self.plan, scopes=EVERY_SCOPE)


async def _catalog(database: Database) -> None:
    """The variant ids on the catalog's USD prices (the same each time: idempotent)."""
    async with database.transaction() as s:
        for (plan, cycle), variant in VARIANTS.items():
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
                .values(lemon_squeezy_variant_id=str(variant))
            )


@dataclass
class _Shared:
    client: httpx.AsyncClient
    core: Saascore
    fake: FakeLemonSqueezy
    plan: str


@asynccontextmanager
async def _selling(database: Database) -> AsyncIterator[_Shared]:
    """The app on `database` selling through a fake Lemon Squeezy of its own, for a module."""
    await _catalog(database)
    fake = FakeLemonSqueezy().start()
    fake.state.subscription_variants.update(VARIANTS.values())
    application, core = api_app(
        database,
        auth_requests_per_minute=None,
        payment_provider=PaymentProviderChoice.LEMONSQUEEZY,
        lemonsqueezy_api_key=SecretStr(fake.api_key),
        lemonsqueezy_store_id=fake.store_id,
        lemonsqueezy_signing_secret=SecretStr(fake.signing_secret),
        lemonsqueezy_api_base=fake.url,
    )
    try:
        async with serving(application, core) as client:
            async with database.transaction() as s:
                plan = (await create_plan(s)).code
            yield _Shared(client, core, fake, plan)
    finally:
        fake.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def _lemon_sqlite(_scratch_sqlite: Database) -> AsyncIterator[_Shared]:
    async with _selling(_scratch_sqlite) as shared:
        yield shared


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def _lemon_postgresql(_scratch_postgresql: Database) -> AsyncIterator[_Shared]:
    async with _selling(_scratch_postgresql) as shared:
        yield shared


@pytest.fixture
def _shared(backend: str, request: pytest.FixtureRequest) -> _Shared:
    shared: _Shared = request.getfixturevalue(f"_lemon_{backend}")
    shared.fake.requests.clear()
    return shared


@pytest_asyncio.fixture(loop_scope="session")
async def env(_shared: _Shared) -> Env:
    """The module's app and fake (what the fake recorded forgotten), and a new organisation
    of the test's own."""
    client, core = _shared.client, _shared.core
    customer = await tenant(client, core.database, plan=_shared.plan, scopes=EVERY_SCOPE)
    # Lemon Squeezy matches its buyer by email: each organisation's buyer is someone else.
    async with core.database.transaction() as s:
        await s.execute(
            sa.update(Organization)
            .where(Organization.id == customer.organization_id)
            .values(billing_email=f"billing-{customer.organization_id.hex}@example.com")
        )
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


def _data(delivery: Delivery) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(delivery.body)
    return payload


class TestFullFlow:
    async def test_checkout_to_paid_then_expired_back_to_free(self, env: Env) -> None:
        checkout_id = await env.checkout(plan="pro", cycle="monthly")
        [sent] = [r for r in env.fake.requests if r.path == "/v1/checkouts"]
        attributes = sent.json["data"]["attributes"]
        assert attributes["checkout_data"]["custom"] == {
            "organization_id": str(env.org),
            "mode": "subscription",
            "plan": "pro",
            "cycle": "monthly",
        }
        assert sent.json["data"]["relationships"]["variant"]["data"]["id"] == str(PRO_VARIANT)
        assert await subscriptions_of(env.database, env.org) == []

        deliveries = env.fake.complete_checkout(checkout_id, total=PRO_AMOUNT)
        assert [d.event_name for d in deliveries] == [
            "order_created",
            "subscription_created",
            "subscription_payment_success",
        ]
        await env.deliver(deliveries)
        for one in deliveries:
            row = await stored_event(env.database, event_id(one.body))
            assert row is not None
            assert (row.outcome, row.organization_id) == (WebhookOutcome.PROCESSED, env.org), (
                one.event_name,
                row.error,
            )

        mine = (await env.client.get("/v1/subscription", headers=env.customer.headers)).json()
        assert (mine["plan"], mine["status"]) == ("pro", "active")
        subscription_body = _data(deliveries[1])["data"]
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.provider is PaymentProvider.LEMON_SQUEEZY
        assert subscription.provider_subscription_id == subscription_body["id"]
        [invoice] = await invoices_of(env.database, env.org)
        assert invoice.status is InvoiceStatus.PAID
        assert invoice.number
        assert (invoice.total, invoice.amount_due) == (PRO_AMOUNT, 0)
        [payment] = await payments_of(env.database, env.org)
        assert (payment.provider, payment.status) == (
            PaymentProvider.LEMON_SQUEEZY,
            PaymentStatus.SUCCEEDED,
        )
        assert payment.provider_payment_id == _data(deliveries[2])["data"]["id"]
        assert await _plan_of(env.database, env.org) == "pro"
        async with env.database.session(readonly=True) as s:
            organization = await s.get(Organization, env.org)
        assert organization is not None
        assert organization.billing_provider is PaymentProvider.LEMON_SQUEEZY
        assert organization.provider_customer_id == str(
            subscription_body["attributes"]["customer_id"]
        )

        # The period runs out: Lemon Squeezy expires the subscription.
        ended = datetime.now(UTC) + timedelta(seconds=1)
        expired = webhook(
            "subscription_expired",
            {
                **subscription_body,
                "attributes": {
                    **subscription_body["attributes"],
                    "status": "expired",
                    "cancelled": True,
                    "ends_at": ended.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "updated_at": ended.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                },
            },
            env.custom(),
        )
        await env.deliver([expired])
        [gone] = await subscriptions_of(env.database, env.org)
        assert gone.status is SubscriptionStatus.CANCELED
        assert await _plan_of(env.database, env.org) == env.core.settings.default_plan
        assert len(await payments_of(env.database, env.org)) == 1

    async def test_buyer_with_an_email_of_their_own_is_linked(self, env: Env) -> None:
        """An organisation without a billing email: saascore makes its customer with a
        derived address, the buyer types theirs, and Lemon Squeezy's order names the customer
        it made for that address. The signed order links that customer in place of the first
        (it was refused as `provider_customer_conflict`, and the paid plan never applied)."""
        async with env.database.transaction() as s:
            await s.execute(
                sa.update(Organization).where(Organization.id == env.org).values(billing_email=None)
            )
        checkout_id = await env.checkout(plan="pro", cycle="monthly")
        async with env.database.session(readonly=True) as s:
            made = await s.scalar(
                sa.select(Organization.provider_customer_id).where(Organization.id == env.org)
            )
        deliveries = env.fake.complete_checkout(
            checkout_id, total=PRO_AMOUNT, email=f"own-{env.org.hex}@example.com"
        )
        await env.deliver(deliveries)
        buyer = str(_data(deliveries[1])["data"]["attributes"]["customer_id"])
        assert buyer != made
        async with env.database.session(readonly=True) as s:
            linked = await s.scalar(
                sa.select(Organization.provider_customer_id).where(Organization.id == env.org)
            )
        assert linked == buyer
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.status is SubscriptionStatus.ACTIVE
        [invoice] = await invoices_of(env.database, env.org)
        assert invoice.status is InvoiceStatus.PAID
        assert await _plan_of(env.database, env.org) == "pro"


class TestPack:
    async def test_pack_order_grants_its_credits_once(self, env: Env) -> None:
        variant = 950_000 + int(env.fake.next_id())
        pack = await env.core.credit_packs.create(
            f"lemon-{uuid.uuid4().hex[:8]}",
            credits=300,
            price=Money(1500, "USD"),
            lemon_squeezy_variant_id=str(variant),
        )
        before = await env.core.credits.balance(env.org)
        checkout_id = await env.checkout(pack=pack.code)
        [order] = env.fake.complete_checkout(checkout_id, total=1500)
        assert order.event_name == "order_created"
        await env.deliver([order, order])
        assert await env.core.credits.balance(env.org) - before == 300
        [payment] = await payments_of(env.database, env.org)
        assert payment.provider is PaymentProvider.LEMON_SQUEEZY
        assert payment.credits_awarded == 300
        assert payment.provider_payment_id == _data(order)["data"]["id"]

    async def _pack(self, env: Env, credits: int = 300) -> str:
        variant = 950_000 + int(env.fake.next_id())
        pack = await env.core.credit_packs.create(
            f"lemon-{uuid.uuid4().hex[:8]}",
            credits=credits,
            price=Money(1500, "USD"),
            lemon_squeezy_variant_id=str(variant),
        )
        return pack.code

    async def _order_paid_once(self, env: Env, code: str) -> None:
        """The pack bought and paid at Lemon Squeezy, its order delivered twice: its credits
        are granted once, by a payment of its own."""
        before = await env.core.credits.balance(env.org)
        payments = len(await payments_of(env.database, env.org))
        [order] = env.fake.complete_checkout(await env.checkout(pack=code), total=1500)
        await env.deliver([order, order])
        assert await env.core.credits.balance(env.org) - before == 300
        paid = await payments_of(env.database, env.org)
        assert len(paid) == payments + 1
        assert paid[-1].provider_payment_id == _data(order)["data"]["id"]
        assert paid[-1].credits_awarded == 300

    async def test_paid_order_beside_an_unpaid_purchase_of_the_pack(self, env: Env) -> None:
        code = await self._pack(env)
        unpaid = await env.core.credit_packs.purchase(env.org, code)
        await self._order_paid_once(env, code)
        # The customer's own purchase is still waiting for its payment: nothing paid it.
        [still] = [i for i in await invoices_of(env.database, env.org) if i.id == unpaid.id]
        assert (still.status, still.amount_paid) == (InvoiceStatus.OPEN, 0)

    async def test_paid_order_beside_five_unpaid_purchases(self, env: Env) -> None:
        for _ in range(5):
            await env.core.credit_packs.purchase(env.org, await self._pack(env))
        await self._order_paid_once(env, await self._pack(env))
        open_ = [i for i in await invoices_of(env.database, env.org) if i.amount_paid == 0]
        assert len(open_) == 5


class TestWebhooks:
    async def test_refused_bodies_write_nothing(self, env: Env) -> None:
        good = env.fake.deliver(
            subscription_event(
                "subscription_created",
                env.fake.next_id(),
                customer_id=int(env.fake.next_id()),
                variant_id=PRO_VARIANT,
                custom_data=env.custom(),
            )
        )
        altered = good.body.replace(str(env.org).encode(), str(uuid.uuid4()).encode())
        assert altered != good.body
        cases = [
            (good.body, {**good.headers, "x-signature": sign(good.body, "not-the-secret")}),
            (altered, good.headers),
            (b"", {**good.headers, "x-signature": sign(b"", env.fake.signing_secret)}),
            (good.body, {"content-type": "application/json"}),
        ]
        before = await _counts(env.database)
        for content, headers in cases:
            response = await env.client.post(WEBHOOK, content=content, headers=headers)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] in ("invalid_signature", "malformed_webhook")
        assert await _counts(env.database) == before
        assert await subscriptions_of(env.database, env.org) == []

    async def test_twice_and_ten_concurrent_copies_apply_once(self, env: Env) -> None:
        checkout_id = await env.checkout(plan="pro", cycle="monthly")
        order, created, paid = env.fake.complete_checkout(checkout_id, total=PRO_AMOUNT)
        await env.deliver([order, created, created])
        answers = await asyncio.gather(*(env.post(paid) for _ in range(10)))
        assert [a.status_code for a in answers] == [200] * 10
        [payment] = await payments_of(env.database, env.org)
        assert payment.amount == PRO_AMOUNT
        [invoice] = await invoices_of(env.database, env.org)
        assert (invoice.status, invoice.amount_paid) == (InvoiceStatus.PAID, PRO_AMOUNT)
        assert len(await subscriptions_of(env.database, env.org)) == 1

    async def test_updated_before_created_ends_updated(self, env: Env) -> None:
        customer, sub_id = int(env.fake.next_id()), env.fake.next_id()
        now = datetime.now(UTC)
        fields: dict[str, Any] = {
            "customer_id": customer,
            "variant_id": PRO_VARIANT,
            "renews_at": now + timedelta(days=30),
            "custom_data": env.custom(),
        }
        updated = subscription_event(
            "subscription_updated",
            sub_id,
            status="cancelled",
            cancelled=True,
            ends_at=now + timedelta(days=30),
            updated_at=now + timedelta(seconds=10),
            **fields,
        )
        created = subscription_event("subscription_created", sub_id, updated_at=now, **fields)
        await env.deliver([updated, created])
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.status is SubscriptionStatus.ACTIVE
        assert subscription.cancel_at_period_end is True
        row = await stored_event(env.database, event_id(env.fake.deliver(created).body))
        assert row is not None
        assert row.outcome is WebhookOutcome.IGNORED

    async def test_the_period_ends_at_renews_at(self, env: Env) -> None:
        """Lemon Squeezy gives the period's end (`renews_at`) and no start: saascore's period
        ends there and starts a month before, or when the subscription began if later."""
        customer, sub_id = int(env.fake.next_id()), env.fake.next_id()
        now = datetime.now(UTC).replace(microsecond=0)
        renews = now + timedelta(days=11, hours=5)
        fields: dict[str, Any] = {
            "customer_id": customer,
            "variant_id": PRO_VARIANT,
            "custom_data": env.custom(),
        }
        # Begun a week ago, renewing in 11 days: the first period is the week and 11 days.
        begun = now - timedelta(days=7)
        await env.deliver(
            [
                subscription_event(
                    "subscription_created",
                    sub_id,
                    renews_at=renews,
                    created_at=begun,
                    updated_at=now,
                    **fields,
                )
            ]
        )
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.current_period_end == renews
        assert subscription.current_period_start == begun
        # Renewed: the next period ends at the new `renews_at`, and began a month before.
        later = datetime(renews.year + (renews.month == 12), renews.month % 12 + 1, 1, tzinfo=UTC)
        await env.deliver(
            [
                subscription_event(
                    "subscription_updated",
                    sub_id,
                    renews_at=later,
                    created_at=begun,
                    updated_at=now + timedelta(seconds=10),
                    **fields,
                )
            ]
        )
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.current_period_end == later
        assert subscription.current_period_start == datetime(
            later.year - (later.month == 1), (later.month - 2) % 12 + 1, 1, tzinfo=UTC
        )
        assert subscription.next_billing_at == later

    async def test_failed_after_a_later_success_changes_nothing(self, env: Env) -> None:
        deliveries = await env.subscribed()
        paid = _data(deliveries[2])["data"]
        paid_at = datetime.fromisoformat(paid["attributes"]["created_at"])
        failed = invoice_event(
            "subscription_payment_failed",
            env.fake.next_id(),
            subscription_id=paid["attributes"]["subscription_id"],
            customer_id=paid["attributes"]["customer_id"],
            total=PRO_AMOUNT,
            status="failed",
            billing_reason="renewal",
            at=paid_at - timedelta(minutes=1),
            custom_data=env.custom(),
        )
        await env.deliver([failed])
        row = await stored_event(env.database, event_id(env.fake.deliver(failed).body))
        assert row is not None
        assert row.outcome is WebhookOutcome.IGNORED
        [subscription] = await subscriptions_of(env.database, env.org)
        assert subscription.status is SubscriptionStatus.ACTIVE
        [payment] = await payments_of(env.database, env.org)
        assert payment.status is PaymentStatus.SUCCEEDED

    async def test_unknown_type_is_stored_and_200(self, env: Env) -> None:
        unknown = env.fake.deliver(
            webhook(
                "license_key_created",
                {
                    "type": "license-keys",
                    "id": env.fake.next_id(),
                    "attributes": {"created_at": "2026-01-01T00:00:00.000000Z"},
                },
            )
        )
        response = await env.post(unknown)
        assert response.status_code == 200, response.text
        row = await stored_event(env.database, event_id(unknown.body))
        assert row is not None
        assert row.outcome is WebhookOutcome.IGNORED

    async def test_handler_failure_is_500_and_redelivery_applies(self, env: Env) -> None:
        checkout_id = await env.checkout(plan="pro", cycle="monthly")
        order, created, paid = env.fake.complete_checkout(checkout_id, total=PRO_AMOUNT)
        await env.deliver([order])
        failed = await env.post(paid)  # before the subscription it pays
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "webhook_failed"
        assert await payments_of(env.database, env.org) == []
        await env.deliver([created, paid])
        row = await stored_event(env.database, event_id(paid.body))
        assert row is not None
        assert (row.outcome, row.attempts) == (WebhookOutcome.PROCESSED, 2)
        assert len(await payments_of(env.database, env.org)) == 1


class TestIsolation:
    async def test_customer_of_a_naming_b_changes_nothing(self, env: Env) -> None:
        deliveries = await env.subscribed()
        subscription = _data(deliveries[1])["data"]
        customer = subscription["attributes"]["customer_id"]
        b = (await env.another()).organization_id
        later = datetime.now(UTC) + timedelta(seconds=5)
        hostile = [
            subscription_event(
                "subscription_created",
                env.fake.next_id(),
                customer_id=customer,
                variant_id=BUSINESS_VARIANT,
                updated_at=later,
                custom_data=env.custom(b),
            ),
            subscription_event(
                "subscription_updated",
                subscription["id"],
                customer_id=customer,
                variant_id=BUSINESS_VARIANT,
                updated_at=later,
                custom_data=env.custom(b),
            ),
            invoice_event(
                "subscription_payment_success",
                env.fake.next_id(),
                subscription_id=int(subscription["id"]),
                customer_id=customer,
                total=99_999,
                custom_data=env.custom(b),
            ),
            order_created(env.fake.next_id(), customer_id=customer, custom_data=env.custom(b)),
        ]
        await env.deliver(hostile)
        assert await subscriptions_of(env.database, b) == []
        assert await payments_of(env.database, b) == []
        assert await invoices_of(env.database, b) == []
        assert await _plan_of(env.database, b) == env.plan
        [mine] = await subscriptions_of(env.database, env.org)
        assert (mine.status, mine.provider_subscription_id) == (
            SubscriptionStatus.ACTIVE,
            subscription["id"],
        )
        assert await _plan_of(env.database, env.org) == "pro"
        assert len(await payments_of(env.database, env.org)) == 1
