"""`POST /v1/webhooks/{provider}` with mock-shaped events from loopback: each event applied
once (twice in a row, ten at once), in the right order whatever the delivery order, unknown
types stored, failures answered 500 and applied on redelivery, isolation between
organisations, and the refusals that write nothing."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import datetime
from typing import Any

import httpx
import sqlalchemy as sa

from saascore.config import PaymentProviderChoice
from saascore.kit.db import Database
from saascore.models import (
    AuditChainHead,
    AuditLog,
    Organization,
    OutboxEvent,
    SubscriptionStatus,
    WebhookOutcome,
)
from saascore.testing import TestTenant
from tests.admin import Admin, customer_of, entries
from tests.http import api_app, serving
from tests.providers.helpers import (
    WEBHOOK,
    at,
    count_events,
    invoices_of,
    mock_price,
    payment_event,
    payments_of,
    send,
    stored_event,
    subscription_event,
    subscriptions_of,
    unique,
)


class Ids:
    def __init__(self) -> None:
        self.customer = unique("mock_cus")
        self.subscription = unique("mock_sub")

    def snapshot(self, minute: int, *, price: str, org: uuid.UUID, **fields: Any) -> dict[str, Any]:
        """A new event with a snapshot of this subscription, at `minute`."""
        return subscription_event(
            unique("mock_evt"),
            minute=minute,
            subscription=self.subscription,
            customer=self.customer,
            price=price,
            org=org,
            **fields,
        )


class TestOnce:
    async def test_duplicate_is_acknowledged_not_applied(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        ids, org = Ids(), customer.organization_id
        body = ids.snapshot(1, price=await mock_price(admin.database, "pro"), org=org)
        first = await send(admin.client, body)
        assert first.status_code == 200, first.text
        assert (first.json()["outcome"], first.json()["duplicate"]) == ("processed", False)
        second = await send(admin.client, body)
        assert second.status_code == 200
        assert second.json()["duplicate"] is True
        assert len(await subscriptions_of(admin.database, org)) == 1
        assert len(await entries(admin, org, "subscription.created")) == 1
        row = await stored_event(admin.database, body["id"])
        assert row is not None
        assert (row.outcome, row.organization_id, row.error) == (
            WebhookOutcome.PROCESSED,
            org,
            None,
        )
        assert row.attempts == 1
        assert row.processed_at is not None

    async def test_ten_concurrent_copies_apply_once(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        ids, org = Ids(), customer.organization_id
        price = await mock_price(admin.database, "pro")
        created = ids.snapshot(1, price=price, org=org)
        assert (await send(admin.client, created)).status_code == 200
        paid = payment_event(
            unique("mock_evt"),
            minute=2,
            subscription=ids.subscription,
            customer=ids.customer,
            payment=unique("mock_pay"),
            amount=2999,
        )
        answers = await asyncio.gather(*(send(admin.client, paid) for _ in range(10)))
        assert [answer.status_code for answer in answers] == [200] * 10
        assert sum(not answer.json()["duplicate"] for answer in answers) == 1
        [payment] = await payments_of(admin.database, org)
        assert payment.amount == 2999
        [invoice] = await invoices_of(admin.database, org)
        assert invoice.amount_due == 0
        assert len(await entries(admin, org, "payment.succeeded")) == 1


class TestSnapshot:
    """A snapshot of a live subscription on the same plan: on PostgreSQL its change, audit
    entry and outbox row go in one statement (`SubscriptionService._write_snapshot`); what
    is stored must be what the ORM path stores on SQLite."""

    async def test_changes_are_written_with_their_entries_and_events(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        ids, org = Ids(), customer.organization_id
        price = await mock_price(admin.database, "pro")

        def snapshot(minute: int, **fields: Any) -> dict[str, Any]:
            return ids.snapshot(minute, price=price, org=org, **fields)

        assert (await send(admin.client, snapshot(1))).json()["outcome"] == "processed"
        assert (await send(admin.client, snapshot(2))).json()["outcome"] == "processed"
        assert await entries(admin, org, "subscription.updated") == []  # nothing changed
        canceling = await send(admin.client, snapshot(3, cancel_at_period_end=True))
        assert canceling.json()["outcome"] == "processed"
        late = await send(admin.client, snapshot(4, status="past_due", cancel_at_period_end=True))
        assert late.json()["outcome"] == "processed"

        [subscription] = await subscriptions_of(admin.database, org)
        assert subscription.status is SubscriptionStatus.PAST_DUE
        assert subscription.cancel_at_period_end is True
        assert subscription.ends_at == subscription.current_period_end
        assert subscription.canceled_at is not None
        assert subscription.provider_updated_at == datetime.fromisoformat(
            snapshot(4)["occurred_at"]
        )
        async with admin.database.session(readonly=True) as s:
            status = await s.scalar(
                sa.select(Organization.subscription_status).where(Organization.id == org)
            )
            published = (
                await s.scalars(
                    sa.select(OutboxEvent.body).where(
                        OutboxEvent.organization_id == org,
                        OutboxEvent.type == "subscription.updated",
                    )
                )
            ).all()
        assert status is SubscriptionStatus.PAST_DUE
        first, second = sorted(
            await entries(admin, org, "subscription.updated"), key=lambda entry: entry.seq
        )
        assert set(first.details["changes"]) == {"cancel_at_period_end"}
        assert second.details["changes"]["status"] == {"from": "active", "to": "past_due"}
        assert (first.actor_type, first.actor_id) == ("provider", "mock")
        assert sorted(body["data"]["status"] for body in published) == ["active", "past_due"]
        assert await admin.core.audit.verify(org) == []

    async def test_racing_snapshots_end_in_the_latest(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        """Twenty snapshots of one subscription, sent at once in a random order: the last
        by the provider's clock wins, each applied one moves the provider's time forward,
        and every change has its audit entry and outbox row, on an intact chain."""
        ids, org = Ids(), customer.organization_id
        price = await mock_price(admin.database, "pro")

        def snapshot(minute: int) -> dict[str, Any]:
            return ids.snapshot(
                minute,
                price=price,
                org=org,
                cancel_at_period_end=minute % 2 == 0,
                status="past_due" if minute % 3 == 0 else "active",
            )

        assert (await send(admin.client, snapshot(1))).json()["outcome"] == "processed"
        racing = [snapshot(minute) for minute in range(2, 22)]
        random.Random(7).shuffle(racing)
        answers = await asyncio.gather(*(send(admin.client, body) for body in racing))
        assert [answer.status_code for answer in answers] == [200] * len(racing)
        applied = sorted(
            body["occurred_at"]
            for body, answer in zip(racing, answers, strict=True)
            if answer.json()["outcome"] == "processed"
        )
        assert applied[-1] == at(21)  # the latest is never judged older

        [subscription] = await subscriptions_of(admin.database, org)
        assert subscription.provider_updated_at == datetime.fromisoformat(at(21))
        assert subscription.cancel_at_period_end is False  # minute 21 is odd
        assert subscription.status is SubscriptionStatus.PAST_DUE  # and a multiple of 3
        async with admin.database.session(readonly=True) as s:
            status = await s.scalar(
                sa.select(Organization.subscription_status).where(Organization.id == org)
            )
            published = await s.scalar(
                sa.select(sa.func.count())
                .select_from(OutboxEvent)
                .where(
                    OutboxEvent.organization_id == org,
                    OutboxEvent.type == "subscription.updated",
                )
            )
        assert status is SubscriptionStatus.PAST_DUE
        updated = await entries(admin, org, "subscription.updated")
        assert 1 <= len(updated) <= len(applied)
        assert published == len(updated)
        assert await admin.core.audit.verify(org) == []

    async def test_a_chain_without_a_head_still_gets_the_entry(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        ids, org = Ids(), customer.organization_id
        price = await mock_price(admin.database, "pro")
        created = ids.snapshot(1, price=price, org=org)
        assert (await send(admin.client, created)).status_code == 200
        async with admin.database.transaction() as s:  # as before the chain's first entry
            await s.execute(sa.delete(AuditLog).where(AuditLog.organization_id == org))
            await s.execute(sa.delete(AuditChainHead).where(AuditChainHead.organization_id == org))
        update = ids.snapshot(2, price=price, org=org, cancel_at_period_end=True)
        assert (await send(admin.client, update)).json()["outcome"] == "processed"
        [subscription] = await subscriptions_of(admin.database, org)
        assert subscription.cancel_at_period_end is True
        [entry] = await entries(admin, org, "subscription.updated")
        assert entry.seq == 1
        assert await admin.core.audit.verify(org) == []


class TestOrder:
    async def test_updated_before_created_ends_right(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        ids, org = Ids(), customer.organization_id
        later = ids.snapshot(5, price=await mock_price(admin.database, "business"), org=org)
        earlier = ids.snapshot(1, price=await mock_price(admin.database, "pro"), org=org)
        assert (await send(admin.client, later)).json()["outcome"] == "processed"
        stale = await send(admin.client, earlier)
        assert stale.status_code == 200
        assert stale.json()["outcome"] == "ignored"
        [subscription] = await subscriptions_of(admin.database, org)
        assert subscription.provider_subscription_id == ids.subscription
        mine = (await admin.client.get("/v1/subscription", headers=customer.headers)).json()
        assert mine["plan"] == "business"
        row = await stored_event(admin.database, earlier["id"])
        assert row is not None
        assert row.outcome is WebhookOutcome.IGNORED
        assert row.error

    async def test_failure_after_a_later_payment_changes_nothing(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        ids, org = Ids(), customer.organization_id
        await send(
            admin.client,
            ids.snapshot(1, price=await mock_price(admin.database, "pro"), org=org),
        )
        paid = payment_event(
            unique("mock_evt"),
            minute=10,
            subscription=ids.subscription,
            customer=ids.customer,
            payment=unique("mock_pay"),
            amount=2999,
        )
        failed = payment_event(
            unique("mock_evt"),
            minute=5,
            subscription=ids.subscription,
            customer=ids.customer,
            payment=unique("mock_pay"),
            amount=2999,
            failed=True,
        )
        assert (await send(admin.client, paid)).json()["outcome"] == "processed"
        late = await send(admin.client, failed)
        assert late.json()["outcome"] == "ignored"
        [subscription] = await subscriptions_of(admin.database, org)
        assert subscription.status is SubscriptionStatus.ACTIVE

        # A failure after the last success does make it past due, with a failed payment.
        newer = payment_event(
            unique("mock_evt"),
            minute=20,
            subscription=ids.subscription,
            customer=ids.customer,
            payment=unique("mock_pay"),
            amount=2999,
            failed=True,
        )
        newer["payment"]["period_start"] = "2026-02-01T00:00:00+00:00"
        newer["payment"]["period_end"] = "2026-03-01T00:00:00+00:00"
        assert (await send(admin.client, newer)).json()["outcome"] == "processed"
        [subscription] = await subscriptions_of(admin.database, org)
        assert subscription.status is SubscriptionStatus.PAST_DUE
        assert [p.status.value for p in await payments_of(admin.database, org)] == [
            "succeeded",
            "failed",
        ]

    async def test_unknown_type_is_stored_and_acknowledged(self, admin: Admin) -> None:
        event_id = unique("mock_evt")
        body = {
            "id": event_id,
            "type": "customer.tax_id.created",
            "occurred_at": "2026-01-01T00:00:00Z",
        }
        answer = await send(admin.client, body)
        assert answer.status_code == 200
        assert answer.json()["outcome"] == "ignored"
        row = await stored_event(admin.database, event_id)
        assert row is not None
        assert row.outcome is WebhookOutcome.IGNORED

    async def test_unknown_organisation_is_stored_and_ignored(self, admin: Admin) -> None:
        ids, stranger = Ids(), uuid.uuid4()
        body = ids.snapshot(1, price=await mock_price(admin.database, "pro"), org=stranger)
        answer = await send(admin.client, body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "ignored"
        row = await stored_event(admin.database, body["id"])
        assert row is not None
        assert (row.outcome, row.organization_id) == (WebhookOutcome.IGNORED, None)
        assert row.error == "the organisation named does not exist"
        assert await subscriptions_of(admin.database, stranger) == []

    async def test_a_snapshot_naming_no_price_is_stored_and_ignored(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        ids, org = Ids(), customer.organization_id
        priced = ids.snapshot(1, price=await mock_price(admin.database, "pro"), org=org)
        assert (await send(admin.client, priced)).json()["outcome"] == "processed"
        later = unique("mock_sub")
        for minute, subscription in enumerate((ids.subscription, later), start=2):
            null = subscription_event(
                unique("mock_evt"),
                minute=minute,
                subscription=subscription,
                customer=ids.customer,
                price="",
                org=org,
                status="past_due",
            )
            null["subscription"]["price_id"] = None
            missing = {**null, "id": unique("mock_evt")}
            missing["subscription"] = {
                k: v for k, v in null["subscription"].items() if k != "price_id"
            }
            for body in (null, missing):
                answer = await send(admin.client, body)
                assert answer.status_code == 200, answer.text
                assert answer.json()["outcome"] == "ignored"
                row = await stored_event(admin.database, body["id"])
                assert row is not None
                assert (row.outcome, row.attempts) == (WebhookOutcome.IGNORED, 1)
                assert row.error == "the subscription names no price, and is not ending"
        [subscription] = await subscriptions_of(admin.database, org)
        assert (subscription.provider_subscription_id, subscription.status) == (
            ids.subscription,
            SubscriptionStatus.ACTIVE,
        )
        mine = (await admin.client.get("/v1/subscription", headers=customer.headers)).json()
        assert mine["plan"] == "pro"
        # An end needs no price: it is applied.
        ended = ids.snapshot(9, price="", org=org, status="canceled", kind="subscription_ended")
        ended["subscription"]["price_id"] = None
        answer = await send(admin.client, ended)
        assert (answer.status_code, answer.json()["outcome"]) == (200, "processed"), answer.text
        [subscription] = await subscriptions_of(admin.database, org)
        assert subscription.status is SubscriptionStatus.CANCELED


class TestFailure:
    async def test_failure_is_500_and_a_redelivery_applies_it(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        ids, org = Ids(), customer.organization_id
        await admin.core.provider_billing.link_customer(
            org, admin.core.provider_registry.default, ids.customer
        )
        # The payment comes before the subscription it pays: applying it fails.
        paid = payment_event(
            unique("mock_evt"),
            minute=2,
            subscription=ids.subscription,
            customer=ids.customer,
            payment=unique("mock_pay"),
            amount=2999,
        )
        failed = await send(admin.client, paid)
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "webhook_failed"
        row = await stored_event(admin.database, paid["id"])
        assert row is not None
        assert (row.outcome, row.attempts) == (WebhookOutcome.FAILED, 1)
        assert row.error
        assert "SubscriptionNotFound" in row.error
        assert await payments_of(admin.database, org) == []

        await send(
            admin.client,
            ids.snapshot(1, price=await mock_price(admin.database, "pro"), org=org),
        )
        redelivered = await send(admin.client, paid)
        assert redelivered.status_code == 200, redelivered.text
        assert redelivered.json()["outcome"] == "processed"
        row = await stored_event(admin.database, paid["id"])
        assert row is not None
        assert (row.outcome, row.attempts, row.error) == (WebhookOutcome.PROCESSED, 2, None)
        [payment] = await payments_of(admin.database, org)
        assert payment.amount == 2999


class TestIsolation:
    async def test_customer_of_a_names_b_changes_nothing(self, admin: Admin) -> None:
        a, b = await customer_of(admin), await customer_of(admin)
        ids = Ids()
        checkout = {
            "id": unique("mock_evt"),
            "type": "checkout_completed",
            "occurred_at": "2026-01-01T00:00:00Z",
            "organization_id": str(a.organization_id),
            "customer_id": ids.customer,
        }
        assert (await send(admin.client, checkout)).json()["outcome"] == "processed"
        hostile = ids.snapshot(
            1, price=await mock_price(admin.database, "business"), org=b.organization_id
        )
        answer = await send(admin.client, hostile)
        assert answer.status_code == 200
        assert answer.json()["outcome"] == "ignored"
        assert "another organisation" in answer.json()["reason"]
        assert await subscriptions_of(admin.database, a.organization_id) == []
        assert await subscriptions_of(admin.database, b.organization_id) == []

        # B's own customer cannot take A's subscription by its id either.
        own = ids.snapshot(1, price=await mock_price(admin.database, "pro"), org=a.organization_id)
        assert (await send(admin.client, own)).json()["outcome"] == "processed"
        other = Ids()
        steal = subscription_event(
            unique("mock_evt"),
            minute=9,
            subscription=ids.subscription,
            customer=other.customer,
            price=await mock_price(admin.database, "business"),
            org=b.organization_id,
        )
        assert (await send(admin.client, steal)).json()["outcome"] == "ignored"
        [subscription] = await subscriptions_of(admin.database, a.organization_id)
        mine = (await admin.client.get("/v1/subscription", headers=a.headers)).json()
        assert mine["plan"] == "pro"
        assert subscription.provider_customer_id == ids.customer

    async def test_a_redelivery_is_judged_by_whose_the_customer_is_then(self, admin: Admin) -> None:
        """A failed event is applied again when it is redelivered, and whose its customer
        is then decides: here it became A's in between, so B's claim is refused."""
        a, b = await customer_of(admin), await customer_of(admin)
        ids = Ids()
        claims_b = ids.snapshot(1, price="mock_price_of_nothing", org=b.organization_id)
        failed = await send(admin.client, claims_b)
        assert failed.status_code == 500, failed.text
        checkout = {
            "id": unique("mock_evt"),
            "type": "checkout_completed",
            "occurred_at": "2026-01-01T00:00:00Z",
            "organization_id": str(a.organization_id),
            "customer_id": ids.customer,
        }
        assert (await send(admin.client, checkout)).json()["outcome"] == "processed"
        again = await send(admin.client, claims_b)
        assert again.status_code == 200, again.text
        assert (again.json()["outcome"], again.json()["duplicate"]) == ("ignored", False)
        assert "another organisation" in again.json()["reason"]
        row = await stored_event(admin.database, claims_b["id"])
        assert row is not None
        assert (row.outcome, row.attempts) == (WebhookOutcome.IGNORED, 2)
        billing, mock = admin.core.provider_billing, admin.core.provider_registry.default
        assert await billing.organization_of_customer(mock, ids.customer) == a.organization_id
        assert await subscriptions_of(admin.database, b.organization_id) == []


class TestRefusals:
    async def test_bad_bodies_write_nothing(self, admin: Admin) -> None:
        before = await count_events(admin.database)
        limit = admin.core.settings.provider_webhook_max_bytes
        for body, status, code in (
            (b"", 400, "malformed_webhook"),
            (b"{not json", 400, "malformed_webhook"),
            (b"[1, 2]", 400, "malformed_webhook"),
            (b"[" * 100_000 + b"]" * 100_000, 400, "malformed_webhook"),
            (json.dumps({"id": "x", "type": "t"}).encode(), 400, "malformed_webhook"),
            (
                json.dumps(
                    {
                        "id": "x",
                        "type": "t",
                        "occurred_at": "2026-01-01T00:00:00Z",
                        "provider": "stripe",
                    }
                ).encode(),
                400,
                "malformed_webhook",
            ),
            (b" " * (limit + 1), 413, "webhook_too_large"),
        ):
            answer = await send(admin.client, body)
            assert answer.status_code == status, (body[:40], answer.text)
            assert answer.json()["error"]["code"] == code
        unknown = await admin.client.post("/v1/webhooks/paypal", content=b"{}")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "provider_not_found"
        unconfigured = await admin.client.post("/v1/webhooks/stripe", content=b"{}")
        assert unconfigured.status_code == 409
        assert await count_events(admin.database) == before

    async def test_not_from_loopback_refused(self, admin: Admin) -> None:
        transport = httpx.ASGITransport(
            app=admin.app, raise_app_exceptions=False, client=("203.0.113.9", 4242)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            body = {"id": unique("mock_evt"), "type": "x", "occurred_at": "2026-01-01T00:00:00Z"}
            answer = await send(c, body)
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "mock_webhook_refused"
        assert await stored_event(admin.database, body["id"]) is None

    async def test_not_in_mock_mode_refused(self, scratch: Database) -> None:
        application, core = api_app(
            scratch,
            payment_provider=PaymentProviderChoice.LEMONSQUEEZY,
            lemonsqueezy_api_key="key",
            lemonsqueezy_store_id="1",
            lemonsqueezy_signing_secret="secret",
        )
        async with serving(application, core) as client:
            body = {"id": unique("mock_evt"), "type": "x", "occurred_at": "2026-01-01T00:00:00Z"}
            answer = await send(client, body)
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "mock_webhook_refused"
        assert WEBHOOK.endswith("mock")
