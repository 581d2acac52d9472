"""The Lemon Squeezy adapter against a fake Lemon Squeezy on loopback (no database needed)."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from saascore.kit.errors import ConfigurationError
from saascore.models.catalog import BillingCycle
from saascore.models.enums import PaymentProvider
from saascore.providers.base import (
    CheckoutMode,
    CheckoutRequest,
    Customer,
    EventKind,
    PaymentProviderAdapter,
    ProviderSubscriptionStatus,
)
from saascore.providers.errors import (
    ProviderUnavailable,
    WebhookMalformed,
    WebhookSignatureInvalid,
)
from saascore.providers.lemonsqueezy import LemonSqueezyAdapter, event_id
from tests.helpers import make_settings
from tests.providers import fake_lemonsqueezy as fakes
from tests.providers.fake_lemonsqueezy import (
    API_KEY,
    FakeLemonSqueezy,
    deliver,
    encode,
    invoice_event,
    ls_time,
    order_created,
    sign,
    subscription_event,
    webhook,
)

#: The fake server, as a fixture of this module.
fake_lemonsqueezy = fakes.fake_lemonsqueezy

ORG = uuid.UUID("0b0e3c1e-4a39-4a8e-9b7c-7d1f0c5e2a11")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INT64_MAX = 2**63 - 1


@pytest.fixture
async def adapter(fake_lemonsqueezy: FakeLemonSqueezy) -> AsyncIterator[LemonSqueezyAdapter]:
    settings = make_settings(**fake_lemonsqueezy.settings_values())
    adapter = LemonSqueezyAdapter(settings, retry_backoff=0)
    try:
        yield adapter
    finally:
        await adapter.aclose()


def offline_adapter(**values: Any) -> LemonSqueezyAdapter:
    """An adapter for parsing webhooks only (its API base is never called)."""
    settings = make_settings(**{**FakeLemonSqueezy().settings_values(), **values})
    return LemonSqueezyAdapter(settings, retry_backoff=0)


def checkout(**values: Any) -> CheckoutRequest:
    fields: dict[str, Any] = {
        "organization_id": ORG,
        "mode": CheckoutMode.SUBSCRIPTION,
        "price_id": "301",
        "success_url": "https://app.example/done",
        "cancel_url": "https://app.example/cancel",
        "plan": "pro",
        "cycle": BillingCycle.MONTHLY,
        "customer_email": "owner@example.com",
    }
    return CheckoutRequest(**{**fields, **values})


class TestApi:
    async def test_it_is_the_protocol(self, adapter: LemonSqueezyAdapter) -> None:
        assert isinstance(adapter, PaymentProviderAdapter)
        assert adapter.name is PaymentProvider.LEMON_SQUEEZY

    async def test_create_customer(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        customer_id = await adapter.create_customer(
            Customer(organization_id=ORG, name="Acme", email="billing@acme.example")
        )
        stored = fake_lemonsqueezy.state.customers[customer_id]["attributes"]
        assert (stored["name"], stored["email"]) == ("Acme", "billing@acme.example")
        request = fake_lemonsqueezy.requests[-1]
        assert (request.method, request.path) == ("POST", "/v1/customers")
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert request.headers["accept"] == "application/vnd.api+json"
        assert request.headers["content-type"] == "application/vnd.api+json"
        assert request.json["data"]["relationships"]["store"]["data"] == {
            "type": "stores",
            "id": fake_lemonsqueezy.store_id,
        }

    async def test_a_customer_without_email_gets_a_derived_address(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        customer_id = await adapter.create_customer(Customer(organization_id=ORG, name="Acme"))
        email = fake_lemonsqueezy.state.customers[customer_id]["attributes"]["email"]
        assert email == f"org-{ORG}@customers.saascore.invalid"

    async def test_subscription_checkout(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        session = await adapter.create_checkout(checkout())
        stored = fake_lemonsqueezy.state.checkouts[session.id]["attributes"]
        assert session.url == stored["url"]
        assert stored["variant_id"] == 301
        assert stored["checkout_data"]["custom"] == {
            "organization_id": str(ORG),
            "mode": "subscription",
            "plan": "pro",
            "cycle": "monthly",
        }
        assert stored["checkout_data"]["email"] == "owner@example.com"
        assert stored["product_options"]["redirect_url"] == "https://app.example/done"
        relationships = fake_lemonsqueezy.requests[-1].json["data"]["relationships"]
        assert relationships["variant"]["data"] == {"type": "variants", "id": "301"}

    async def test_pack_checkout(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        session = await adapter.create_checkout(
            checkout(
                mode=CheckoutMode.PAYMENT,
                price_id="501",
                plan=None,
                cycle=None,
                pack="credits-1000",
                customer_email=None,
            )
        )
        stored = fake_lemonsqueezy.state.checkouts[session.id]["attributes"]
        assert stored["checkout_data"]["custom"] == {
            "organization_id": str(ORG),
            "mode": "payment",
            "pack": "credits-1000",
        }
        assert "email" not in stored["checkout_data"]

    async def test_portal_is_the_subscriptions_link(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        mine = fake_lemonsqueezy.add_customer(email="me@example.com")
        other = fake_lemonsqueezy.add_customer(email="other@example.com")
        fake_lemonsqueezy.add_subscription(
            customer_id=other, variant_id=301, portal_url="https://store.example/other"
        )
        fake_lemonsqueezy.add_subscription(
            customer_id=mine, variant_id=301, portal_url="https://store.example/mine"
        )
        url = await adapter.create_portal_session(mine, "https://app.example/back")
        assert url == "https://store.example/mine"

    async def test_portal_without_a_subscription_is_the_customers_link(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        customer = fake_lemonsqueezy.add_customer()
        link = "https://store.example/billing?customer=1"
        fake_lemonsqueezy.state.customers[customer]["attributes"]["urls"]["customer_portal"] = link
        assert await adapter.create_portal_session(customer, "https://app.example/back") == link

    async def test_portal_without_any_link_is_refused(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        customer = fake_lemonsqueezy.add_customer()
        del fake_lemonsqueezy.state.customers[customer]["attributes"]["urls"]
        with pytest.raises(ProviderUnavailable):
            await adapter.create_portal_session(customer, "https://app.example/back")
        with pytest.raises(ProviderUnavailable):
            await adapter.create_portal_session("999999", "https://app.example/back")

    @pytest.mark.parametrize("at_period_end", [True, False])
    async def test_cancel_then_resume(
        self,
        adapter: LemonSqueezyAdapter,
        fake_lemonsqueezy: FakeLemonSqueezy,
        at_period_end: bool,
    ) -> None:
        customer = fake_lemonsqueezy.add_customer()
        subscription = fake_lemonsqueezy.add_subscription(customer_id=customer, variant_id=301)
        await adapter.cancel_subscription(subscription["id"], at_period_end=at_period_end)
        attributes = subscription["attributes"]
        assert (attributes["status"], attributes["cancelled"]) == ("cancelled", True)
        assert attributes["ends_at"] == attributes["renews_at"]
        assert fake_lemonsqueezy.requests[-1].method == "DELETE"

        await adapter.resume_subscription(subscription["id"])
        assert (attributes["status"], attributes["cancelled"]) == ("active", False)
        request = fake_lemonsqueezy.requests[-1]
        assert request.method == "PATCH"
        assert request.json["data"] == {
            "type": "subscriptions",
            "id": subscription["id"],
            "attributes": {"cancelled": False},
        }

    async def test_change_plan(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        customer = fake_lemonsqueezy.add_customer()
        subscription = fake_lemonsqueezy.add_subscription(customer_id=customer, variant_id=301)
        await adapter.change_plan(subscription["id"], "302")
        assert subscription["attributes"]["variant_id"] == 302

    async def test_an_id_cannot_reach_another_path(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        with pytest.raises(ProviderUnavailable):
            await adapter.cancel_subscription("../customers/1", at_period_end=True)
        assert fake_lemonsqueezy.requests[-1].path == "/v1/subscriptions/..%2Fcustomers%2F1"

    async def test_list_subscriptions_pages_through_the_store(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        customer = fake_lemonsqueezy.add_customer()
        made = [
            fake_lemonsqueezy.add_subscription(customer_id=customer, variant_id=301)["id"]
            for _ in range(230)
        ]
        fake_lemonsqueezy.add_subscription(customer_id=customer, variant_id=301, store_id="1")
        found = await adapter.list_subscriptions()
        assert [item.id for item in found] == made
        assert all(item.customer_id == customer for item in found)
        assert all(item.status is ProviderSubscriptionStatus.ACTIVE for item in found)
        assert all(item.price_id == "301" for item in found)
        pages = [r.query for r in fake_lemonsqueezy.requests if r.path == "/v1/subscriptions"]
        assert [p["page[number]"] for p in pages] == ["1", "2", "3"]
        assert {p["filter[store_id]"] for p in pages} == {fake_lemonsqueezy.store_id}
        assert {p["page[size]"] for p in pages} == {"100"}

    async def test_empty_store_lists_nothing(self, adapter: LemonSqueezyAdapter) -> None:
        assert await adapter.list_subscriptions() == []


class TestFailures:
    def test_settings_without_keys_are_refused(self) -> None:
        values = FakeLemonSqueezy().settings_values()
        for name in [
            "lemonsqueezy_api_key",
            "lemonsqueezy_store_id",
            "lemonsqueezy_signing_secret",
        ]:
            settings = make_settings(**{**values, "payment_provider": "mock", name: None})
            with pytest.raises(ConfigurationError, match=name.upper()):
                LemonSqueezyAdapter(settings)

    @pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
    async def test_5xx_is_retried_then_succeeds(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy, status: int
    ) -> None:
        fake_lemonsqueezy.fail_next(2, status=status)
        customer_id = await adapter.create_customer(Customer(organization_id=ORG, name="Acme"))
        assert customer_id in fake_lemonsqueezy.state.customers
        assert len(fake_lemonsqueezy.requests) == 3

    async def test_three_5xx_are_unavailable(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        fake_lemonsqueezy.fail_next(3, status=500)
        with pytest.raises(ProviderUnavailable) as raised:
            await adapter.list_subscriptions()
        assert len(fake_lemonsqueezy.requests) == 3
        assert raised.value.status_code == 502
        assert raised.value.code == "provider_unavailable"

    async def test_a_4xx_is_not_retried(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        with pytest.raises(ProviderUnavailable) as raised:
            await adapter.change_plan("404404", "302")
        assert len(fake_lemonsqueezy.requests) == 1
        assert "404" in raised.value.message

    async def test_a_refused_key_is_not_leaked(self, fake_lemonsqueezy: FakeLemonSqueezy) -> None:
        values = {**fake_lemonsqueezy.settings_values(), "lemonsqueezy_api_key": "sk_wrong_42"}
        adapter = LemonSqueezyAdapter(make_settings(**values), retry_backoff=0)
        try:
            with pytest.raises(ProviderUnavailable) as raised:
                await adapter.create_checkout(checkout())
        finally:
            await adapter.aclose()
        assert "401" in raised.value.message
        text = f"{raised.value!r} {raised.value.message} {raised.value.details}"
        assert "sk_wrong_42" not in text

    async def test_unreachable_is_unavailable(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        adapter = LemonSqueezyAdapter(
            make_settings(
                **{
                    **FakeLemonSqueezy().settings_values(),
                    "lemonsqueezy_api_base": f"http://127.0.0.1:{port}",
                }
            ),
            retry_backoff=0,
        )
        try:
            with pytest.raises(ProviderUnavailable) as raised:
                await adapter.resume_subscription("1")
        finally:
            await adapter.aclose()
        assert API_KEY not in f"{raised.value!r} {raised.value.message}"

    @pytest.mark.parametrize(
        "answer",
        [
            httpx.Response(200, content=b"<html>"),
            httpx.Response(200, json=[1, 2]),
            httpx.Response(201, json={"data": {"type": "checkouts", "id": "x"}}),
            httpx.Response(201, json={"data": {"id": "x", "attributes": {"url": "javascript:"}}}),
        ],
    )
    async def test_an_odd_answer_is_unavailable(self, answer: httpx.Response) -> None:
        adapter = LemonSqueezyAdapter(
            make_settings(**FakeLemonSqueezy().settings_values()),
            retry_backoff=0,
            transport=httpx.MockTransport(lambda request: answer),
        )
        try:
            with pytest.raises(ProviderUnavailable):
                await adapter.create_checkout(checkout())
        finally:
            await adapter.aclose()

    async def test_a_failed_connection_is_retried(self) -> None:
        calls = []

        def refused(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            if len(calls) < 3:
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json={"data": {"type": "subscriptions", "id": "1"}})

        adapter = LemonSqueezyAdapter(
            make_settings(**FakeLemonSqueezy().settings_values()),
            retry_backoff=0,
            transport=httpx.MockTransport(refused),
        )
        try:
            await adapter.resume_subscription("1")
        finally:
            await adapter.aclose()
        assert len(calls) == 3

    async def test_a_read_timeout_is_not_retried(self) -> None:
        calls = []

        def slow(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            raise httpx.ReadTimeout("slow", request=request)

        adapter = LemonSqueezyAdapter(
            make_settings(**FakeLemonSqueezy().settings_values()),
            retry_backoff=0,
            transport=httpx.MockTransport(slow),
        )
        try:
            with pytest.raises(ProviderUnavailable):
                await adapter.create_customer(Customer(organization_id=ORG, name="Acme"))
        finally:
            await adapter.aclose()
        assert len(calls) == 1


def parse(payload: dict[str, Any] | bytes, **headers: str) -> Any:
    adapter = offline_adapter()
    body = payload if isinstance(payload, bytes) else encode(payload)
    given = {"x-signature": sign(body), **headers}
    return adapter.parse_webhook(given, body, now=NOW)


class TestWebhookParsing:
    def test_paid_pack_order(self) -> None:
        event = parse(
            order_created(
                "1001",
                customer_id=7,
                variant_id=501,
                total=4900,
                currency="eur",
                at=NOW - timedelta(minutes=1),
                custom_data={"organization_id": str(ORG), "mode": "payment", "pack": "p1000"},
            )
        )
        assert event.kind is EventKind.ORDER_PAID
        assert event.provider is PaymentProvider.LEMON_SQUEEZY
        assert (event.type, event.organization_id, event.customer_id) == (
            "order_created",
            ORG,
            "7",
        )
        assert event.occurred_at == NOW - timedelta(minutes=1)
        payment = event.payment
        assert (payment.id, payment.amount, payment.currency) == ("1001", 4900, "EUR")
        assert (payment.pack, payment.price_id, payment.customer_id) == ("p1000", "501", "7")

    def test_subscription_order_completes_the_checkout(self) -> None:
        event = parse(order_created(custom_data={"organization_id": str(ORG), "plan": "pro"}))
        assert event.kind is EventKind.CHECKOUT_COMPLETED
        assert (event.organization_id, event.customer_id, event.payment) == (ORG, "7", None)

    @pytest.mark.parametrize("status", ["pending", "failed", "refunded"])
    def test_an_unpaid_order_is_unhandled(self, status: str) -> None:
        event = parse(order_created(status=status, custom_data={"pack": "p1000"}))
        assert event.kind is EventKind.UNHANDLED

    @pytest.mark.parametrize(
        ("name", "status", "expected"),
        [
            ("subscription_created", "active", ProviderSubscriptionStatus.ACTIVE),
            ("subscription_created", "on_trial", ProviderSubscriptionStatus.TRIALING),
            ("subscription_updated", "past_due", ProviderSubscriptionStatus.PAST_DUE),
            ("subscription_updated", "unpaid", ProviderSubscriptionStatus.PAUSED),
            ("subscription_paused", "paused", ProviderSubscriptionStatus.PAUSED),
            ("subscription_unpaused", "active", ProviderSubscriptionStatus.ACTIVE),
            ("subscription_resumed", "active", ProviderSubscriptionStatus.ACTIVE),
        ],
    )
    def test_subscription_snapshots(
        self, name: str, status: str, expected: ProviderSubscriptionStatus
    ) -> None:
        renews = NOW + timedelta(days=20)
        event = parse(
            subscription_event(
                name,
                "2001",
                status=status,
                customer_id=7,
                variant_id=302,
                renews_at=renews,
                updated_at=NOW - timedelta(seconds=5),
                custom_data={"organization_id": str(ORG)},
            )
        )
        assert event.kind is EventKind.SUBSCRIPTION_UPDATED
        sub = event.subscription
        assert (sub.id, sub.customer_id, sub.status, sub.price_id) == ("2001", "7", expected, "302")
        assert sub.current_period_end == renews
        assert sub.current_period_start is None
        assert sub.cancel_at_period_end is False
        assert sub.organization_id == ORG
        assert sub.updated_at == event.occurred_at == NOW - timedelta(seconds=5)

    def test_cancelled_is_the_end_of_the_period_while_it_lasts(self) -> None:
        ends = NOW + timedelta(days=3)
        event = parse(
            subscription_event(
                "subscription_cancelled", status="cancelled", cancelled=True, ends_at=ends
            )
        )
        sub = event.subscription
        assert event.kind is EventKind.SUBSCRIPTION_UPDATED
        assert (sub.status, sub.cancel_at_period_end) == (ProviderSubscriptionStatus.ACTIVE, True)
        assert sub.ended_at is None

    def test_cancelled_past_its_end_is_canceled(self) -> None:
        ends = NOW - timedelta(days=1)
        event = parse(
            subscription_event(
                "subscription_updated", status="cancelled", cancelled=True, ends_at=ends
            )
        )
        assert event.subscription.status is ProviderSubscriptionStatus.CANCELED
        assert event.subscription.ended_at == ends

    def test_expired_ends_the_subscription(self) -> None:
        ends = NOW - timedelta(hours=1)
        event = parse(subscription_event("subscription_expired", status="expired", ends_at=ends))
        assert event.kind is EventKind.SUBSCRIPTION_ENDED
        assert event.subscription.status is ProviderSubscriptionStatus.CANCELED
        assert event.subscription.ended_at == ends

    @pytest.mark.parametrize(
        ("name", "kind"),
        [
            ("subscription_payment_success", EventKind.PAYMENT_SUCCEEDED),
            ("subscription_payment_failed", EventKind.PAYMENT_FAILED),
        ],
    )
    def test_subscription_payments(self, name: str, kind: EventKind) -> None:
        event = parse(
            invoice_event(
                name,
                "3001",
                subscription_id=2001,
                customer_id=7,
                total=1999,
                status="paid" if kind is EventKind.PAYMENT_SUCCEEDED else "failed",
                billing_reason="renewal",
                at=NOW,
                custom_data={"organization_id": str(ORG)},
            )
        )
        assert event.kind is kind
        payment = event.payment
        assert (payment.id, payment.amount, payment.currency) == ("3001", 1999, "USD")
        assert (payment.subscription_id, payment.customer_id) == ("2001", "7")
        assert payment.period_start == NOW
        assert (payment.failure_reason is None) is (kind is EventKind.PAYMENT_SUCCEEDED)
        assert event.organization_id == ORG

    def test_a_proration_invoice_has_no_period(self) -> None:
        event = parse(invoice_event(billing_reason="updated"))
        assert event.payment.period_start is None

    @pytest.mark.parametrize(
        "name", ["license_key_created", "subscription_plan_changed", "order_refunded"]
    )
    def test_other_types_are_unhandled(self, name: str) -> None:
        event = parse(
            webhook(
                name, {"type": "whatever", "id": "1", "attributes": {"updated_at": ls_time(NOW)}}
            )
        )
        assert event.kind is EventKind.UNHANDLED
        assert event.type == name

    @pytest.mark.parametrize("value", ["not-a-uuid", 42, None, "x" * 1000, {"id": str(ORG)}])
    def test_an_unreadable_organization_is_none(self, value: Any) -> None:
        event = parse(subscription_event(custom_data={"organization_id": value}))
        assert event.organization_id is None
        assert event.subscription.organization_id is None

    def test_without_custom_data(self) -> None:
        assert parse(subscription_event()).organization_id is None

    def test_occurred_at_falls_back_to_created_at(self) -> None:
        payload = subscription_event(created_at=NOW - timedelta(days=2))
        del payload["data"]["attributes"]["updated_at"]
        assert parse(payload).occurred_at == NOW - timedelta(days=2)

    def test_the_payload_is_kept(self) -> None:
        payload = invoice_event()
        assert parse(payload).payload == payload


class TestSignatures:
    def test_missing(self) -> None:
        body = encode(subscription_event())
        with pytest.raises(WebhookSignatureInvalid):
            offline_adapter().parse_webhook({}, body, now=NOW)
        with pytest.raises(WebhookSignatureInvalid):
            offline_adapter().parse_webhook({"x-signature": ""}, body, now=NOW)

    def test_forged(self) -> None:
        body = encode(subscription_event())
        for forged in [sign(body, "another-secret"), "0" * 64, "zz", "é" * 64, sign(b"x")]:
            with pytest.raises(WebhookSignatureInvalid) as raised:
                offline_adapter().parse_webhook({"x-signature": forged}, body, now=NOW)
            assert raised.value.status_code == 400
            assert raised.value.code == "invalid_signature"

    def test_altered_after_signing(self) -> None:
        delivery = deliver(subscription_event(custom_data={"organization_id": str(ORG)}))
        other = str(uuid.uuid4())
        altered = delivery.body.replace(str(ORG).encode(), other.encode())
        assert altered != delivery.body
        with pytest.raises(WebhookSignatureInvalid):
            offline_adapter().parse_webhook(delivery.headers, altered, now=NOW)

    def test_upper_case_hex_is_the_same_signature(self) -> None:
        delivery = deliver(subscription_event())
        headers = {"x-signature": delivery.headers["x-signature"].upper()}
        assert offline_adapter().parse_webhook(headers, delivery.body, now=NOW).subscription

    def test_empty_body(self) -> None:
        with pytest.raises(WebhookMalformed) as raised:
            offline_adapter().parse_webhook({"x-signature": sign(b"")}, b"", now=NOW)
        assert raised.value.status_code == 400

    def test_an_old_event_is_not_refused(self) -> None:
        old = NOW - timedelta(days=3)
        event = parse(subscription_event(updated_at=old, created_at=old))
        assert event.occurred_at == old


class TestMalformed:
    @pytest.mark.parametrize(
        "body",
        [
            b"not json",
            b"[1, 2]",
            b'"text"',
            b'{"meta": {"event_name": "order_created"}}',
            b'{"meta": [], "data": {}}',
            b'{"meta": {}, "data": {"attributes": {"updated_at": "2026-01-01T00:00:00Z"}}}',
            b'{"meta": {"event_name": "x"}, "data": {"attributes": {"total": NaN}}}',
            b"[" * 100_000 + b"]" * 100_000,
            b"\xff\xfe",
        ],
    )
    def test_not_a_lemon_squeezy_event(self, body: bytes) -> None:
        with pytest.raises(WebhookMalformed):
            parse(body)

    def test_wrong_data_type(self) -> None:
        payload = subscription_event()
        payload["data"]["type"] = "orders"
        with pytest.raises(WebhookMalformed):
            parse(payload)

    @pytest.mark.parametrize(
        "change",
        [
            {"status": "bogus"},
            {"customer_id": None},
            {"customer_id": -1},
            {"customer_id": "1/../2"},
            {"variant_id": 2**64},
            {"renews_at": "yesterday"},
            {"updated_at": 5},
        ],
    )
    def test_bad_subscription_fields(self, change: dict[str, Any]) -> None:
        payload = subscription_event()
        payload["data"]["attributes"].update(change)
        with pytest.raises(WebhookMalformed):
            parse(payload)

    def test_no_time_at_all(self) -> None:
        payload = subscription_event()
        del payload["data"]["attributes"]["updated_at"]
        del payload["data"]["attributes"]["created_at"]
        with pytest.raises(WebhookMalformed):
            parse(payload)

    @pytest.mark.parametrize("total", [-1, INT64_MAX + 1, 10**30, 9.99, "999", True, None])
    def test_bad_amounts(self, total: Any) -> None:
        with pytest.raises(WebhookMalformed):
            parse(order_created(total=total, custom_data={"pack": "p"}))
        with pytest.raises(WebhookMalformed):
            parse(invoice_event(total=total))

    @pytest.mark.parametrize("total", [0, INT64_MAX])
    def test_amounts_at_the_edges(self, total: int) -> None:
        assert parse(order_created(total=total, custom_data={"pack": "p"})).payment.amount == total
        assert parse(invoice_event(total=total)).payment.amount == total

    @pytest.mark.parametrize("currency", ["US", "USDT", "12$", None, 840])
    def test_bad_currency(self, currency: Any) -> None:
        with pytest.raises(WebhookMalformed):
            parse(invoice_event(currency=currency))


class TestEventId:
    def test_stable_for_the_same_body(self) -> None:
        delivery = deliver(invoice_event())
        first = offline_adapter().parse_webhook(delivery.headers, delivery.body, now=NOW)
        again = offline_adapter().parse_webhook(
            delivery.headers, delivery.body, now=NOW + timedelta(days=2)
        )
        assert first.id == again.id == event_id(delivery.body)
        assert len(first.id) <= 255

    def test_different_for_different_bodies(self) -> None:
        stamp = NOW - timedelta(minutes=1)
        ids = {
            parse(subscription_event(name, updated_at=stamp, created_at=stamp)).id
            for name in ["subscription_updated", "subscription_cancelled"]
        }
        ids |= {
            parse(subscription_event(status=s, updated_at=stamp, created_at=stamp)).id
            for s in ["active", "past_due"]
        }
        assert len(ids) == 4


class TestThroughTheFake:
    """A checkout at the fake, paid, and the webhooks it sends parsed by the adapter."""

    async def test_subscription_checkout_flow(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        fake_lemonsqueezy.state.subscription_variants.add(301)
        session = await adapter.create_checkout(checkout())
        deliveries = fake_lemonsqueezy.complete_checkout(session.id, total=2900)
        events = [
            adapter.parse_webhook(d.headers, d.body, now=datetime.now(UTC)) for d in deliveries
        ]
        assert [e.kind for e in events] == [
            EventKind.CHECKOUT_COMPLETED,
            EventKind.SUBSCRIPTION_UPDATED,
            EventKind.PAYMENT_SUCCEEDED,
        ]
        assert {e.organization_id for e in events} == {ORG}
        assert len({e.customer_id for e in events}) == 1
        subscription = events[1].subscription
        assert subscription.status is ProviderSubscriptionStatus.ACTIVE
        assert events[2].payment.subscription_id == subscription.id
        assert events[2].payment.amount == 2900
        listed = await adapter.list_subscriptions()
        assert [s.id for s in listed] == [subscription.id]
        portal = await adapter.create_portal_session(subscription.customer_id, "https://x.example")
        assert portal.startswith("https://")

    async def test_credit_pack_order(
        self, adapter: LemonSqueezyAdapter, fake_lemonsqueezy: FakeLemonSqueezy
    ) -> None:
        session = await adapter.create_checkout(
            checkout(mode=CheckoutMode.PAYMENT, price_id="501", plan=None, cycle=None, pack="p1")
        )
        [delivery] = fake_lemonsqueezy.complete_checkout(session.id, total=4900)
        event = adapter.parse_webhook(delivery.headers, delivery.body, now=datetime.now(UTC))
        assert event.kind is EventKind.ORDER_PAID
        assert (event.organization_id, event.payment.pack, event.payment.amount) == (
            ORG,
            "p1",
            4900,
        )
        assert json.loads(delivery.body)["meta"]["custom_data"]["pack"] == "p1"
