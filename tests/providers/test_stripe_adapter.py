"""The Stripe adapter: the real `stripe` SDK against a fake Stripe on loopback, and Stripe's
webhooks, signed with Stripe's scheme, verified and parsed (both API shapes), or refused."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

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
    WebhookStale,
)
from saascore.providers.stripe_adapter import StripeAdapter
from tests.helpers import make_settings
from tests.providers.fake_stripe import (
    API_KEY,
    WEBHOOK_SECRET,
    FakeStripe,
    checkout_completed,
    event,
    fake_stripe_server,  # noqa: F401  (the `fake_stripe` fixture)
    invoice_event,
    settings_for,
    sign,
    signed,
    subscription_event,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)
INT64_MAX = 2**63 - 1


@pytest_asyncio.fixture(loop_scope="session")
async def adapter(fake_stripe: FakeStripe) -> AsyncIterator[StripeAdapter]:
    stripe_adapter = StripeAdapter(settings_for(fake_stripe))
    try:
        yield stripe_adapter
    finally:
        await stripe_adapter.aclose()


@pytest.fixture
def parser() -> StripeAdapter:
    """An adapter for parsing webhooks only (it never calls Stripe)."""
    return StripeAdapter(
        make_settings(
            payment_provider="stripe",
            stripe_secret_key=API_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
        )
    )


def checkout(
    organization_id: uuid.UUID, mode: CheckoutMode = CheckoutMode.SUBSCRIPTION, **fields: Any
) -> CheckoutRequest:
    values: dict[str, Any] = {
        "price_id": "price_pro_monthly",
        "success_url": "https://app.example/ok",
        "cancel_url": "https://app.example/cancel",
    }
    if mode is CheckoutMode.SUBSCRIPTION:
        values.update(plan="pro", cycle=BillingCycle.MONTHLY)
    values.update(fields)
    return CheckoutRequest(organization_id=organization_id, mode=mode, **values)


def parse(parser: StripeAdapter, body: dict[str, Any] | bytes, *, signed_at: datetime = NOW):
    raw, headers = signed(body, timestamp=signed_at)
    return parser.parse_webhook(headers, raw, now=NOW)


class TestCalls:
    async def test_is_the_protocol(self, adapter: StripeAdapter) -> None:
        assert isinstance(adapter, PaymentProviderAdapter)
        assert adapter.name is PaymentProvider.STRIPE

    async def test_create_customer_names_the_organisation(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        org = uuid.uuid4()
        customer_id = await adapter.create_customer(Customer(org, "Acme", "billing@acme.test"))
        assert customer_id.startswith("cus_")
        [sent] = fake_stripe.sent("POST", "/v1/customers")
        assert sent.form == {
            "name": "Acme",
            "email": "billing@acme.test",
            "metadata[organization_id]": str(org),
        }
        assert sent.headers["authorization"] == f"Bearer {API_KEY}"
        assert fake_stripe.state.customers[customer_id]["metadata"] == {"organization_id": str(org)}

    async def test_create_customer_without_email(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        await adapter.create_customer(Customer(uuid.uuid4(), "No Mail"))
        [sent] = fake_stripe.sent("POST", "/v1/customers")
        assert "email" not in sent.form

    async def test_subscription_checkout(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        org = uuid.uuid4()
        customer_id = await adapter.create_customer(Customer(org, "Acme"))
        session = await adapter.create_checkout(
            checkout(org, customer_id=customer_id, idempotency_key="checkout-1")
        )
        assert session.id.startswith("cs_")
        assert session.url == fake_stripe.state.checkout_sessions[session.id]["url"]
        [sent] = fake_stripe.sent("POST", "/v1/checkout/sessions")
        assert sent.idempotency_key == "checkout-1"
        expected_metadata = {"organization_id": str(org), "plan": "pro", "cycle": "monthly"}
        assert sent.params == {
            "mode": "subscription",
            "line_items": [{"price": "price_pro_monthly", "quantity": "1"}],
            "success_url": "https://app.example/ok",
            "cancel_url": "https://app.example/cancel",
            "client_reference_id": str(org),
            "customer": customer_id,
            "metadata": expected_metadata,
            "subscription_data": {"metadata": expected_metadata},
        }

    async def test_the_idempotency_key_makes_one_session(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        org = uuid.uuid4()
        first = await adapter.create_checkout(checkout(org, idempotency_key="same"))
        again = await adapter.create_checkout(checkout(org, idempotency_key="same"))
        assert first == again
        assert len(fake_stripe.state.checkout_sessions) == 1

    async def test_pack_checkout_is_one_payment(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        org = uuid.uuid4()
        await adapter.create_checkout(
            checkout(
                org,
                CheckoutMode.PAYMENT,
                price_id="price_pack_1000",
                pack="credits-1000",
                customer_email="a@acme.test",
            )
        )
        [sent] = fake_stripe.sent("POST", "/v1/checkout/sessions")
        metadata = {"organization_id": str(org), "pack": "credits-1000"}
        assert sent.params["mode"] == "payment"
        assert sent.params["metadata"] == metadata
        assert sent.params["payment_intent_data"] == {"metadata": metadata}
        assert sent.params["customer_email"] == "a@acme.test"
        assert "subscription_data" not in sent.params
        assert "customer" not in sent.params
        # Without a key of ours, the SDK still sends one of its own (so its retries are safe).
        assert sent.idempotency_key

    async def test_portal_session(self, adapter: StripeAdapter, fake_stripe: FakeStripe) -> None:
        customer_id = await adapter.create_customer(Customer(uuid.uuid4(), "Acme"))
        url = await adapter.create_portal_session(customer_id, "https://app.example/billing")
        [portal] = fake_stripe.state.portal_sessions.values()
        assert portal["id"].startswith("bps_")
        assert url == portal["url"]
        [sent] = fake_stripe.sent("POST", "/v1/billing_portal/sessions")
        assert sent.form == {"customer": customer_id, "return_url": "https://app.example/billing"}

    async def test_cancel_at_period_end_then_resume(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        sub = fake_stripe.state.add_subscription(customer="cus_1", price="price_pro_monthly")
        await adapter.cancel_subscription(sub["id"], at_period_end=True)
        assert fake_stripe.sent("POST", f"/v1/subscriptions/{sub['id']}")[-1].form == {
            "cancel_at_period_end": "true"
        }
        assert sub["cancel_at_period_end"] is True
        assert sub["status"] == "active"

        await adapter.resume_subscription(sub["id"])
        assert fake_stripe.sent("POST", f"/v1/subscriptions/{sub['id']}")[-1].form == {
            "cancel_at_period_end": "false"
        }
        assert sub["cancel_at_period_end"] is False

    async def test_cancel_now(self, adapter: StripeAdapter, fake_stripe: FakeStripe) -> None:
        sub = fake_stripe.state.add_subscription(customer="cus_1", price="price_pro_monthly")
        await adapter.cancel_subscription(sub["id"], at_period_end=False)
        assert len(fake_stripe.sent("DELETE", f"/v1/subscriptions/{sub['id']}")) == 1
        assert sub["status"] == "canceled"
        assert sub["ended_at"] is not None

    async def test_change_plan_moves_the_item(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        sub = fake_stripe.state.add_subscription(customer="cus_1", price="price_pro_monthly")
        item = sub["items"]["data"][0]
        await adapter.change_plan(sub["id"], "price_team_yearly")
        [sent] = fake_stripe.sent("POST", f"/v1/subscriptions/{sub['id']}")
        assert sent.params == {"items": [{"id": item["id"], "price": "price_team_yearly"}]}
        assert item["price"]["id"] == "price_team_yearly"

    async def test_list_subscriptions_pages_through_all(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        org = uuid.uuid4()
        made = [
            fake_stripe.state.add_subscription(
                customer=f"cus_{i}",
                price="price_pro_monthly",
                status="canceled" if i % 7 == 0 else "active",
                organization_id=org if i % 2 else None,
                legacy=i % 3 == 0,
                period_start=START,
                period_end=END,
            )
            for i in range(230)
        ]
        found = await adapter.list_subscriptions()
        assert [s.id for s in found] == [s["id"] for s in made]
        assert {s.current_period_end for s in found} == {END}
        assert sum(s.status is ProviderSubscriptionStatus.CANCELED for s in found) == 33
        assert sum(s.organization_id == org for s in found) == 115
        pages = fake_stripe.sent("GET", "/v1/subscriptions")
        assert len(pages) == 3
        assert all(p.query["status"] == "all" and p.query["limit"] == "100" for p in pages)
        assert pages[1].query["starting_after"] == made[99]["id"]


class TestProviderErrors:
    async def test_a_wrong_key_never_shows_in_the_error(self, fake_stripe: FakeStripe) -> None:
        wrong = "sk_test_wrong_" + "x" * 30
        settings = make_settings(
            payment_provider="stripe",
            stripe_secret_key=wrong,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=fake_stripe.url,
        )
        adapter = StripeAdapter(settings)
        try:
            with pytest.raises(ProviderUnavailable) as raised:
                await adapter.create_customer(Customer(uuid.uuid4(), "Acme"))
        finally:
            await adapter.aclose()
        assert raised.value.status_code == 502
        assert raised.value.code == "provider_unavailable"
        assert "401" in raised.value.message
        assert "xxxx" not in str(raised.value)
        assert "xxxx" not in repr(raised.value.details)
        assert raised.value.__cause__ is None
        assert raised.value.__suppress_context__

    async def test_a_refusal_names_stripes_code(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        with pytest.raises(ProviderUnavailable) as raised:
            await adapter.create_portal_session("cus_nobody", "https://app.example/")
        assert "resource_missing" in raised.value.message
        assert "cus_nobody" not in raised.value.message
        assert raised.value.details == {"http_status": 404, "stripe_code": "resource_missing"}

    async def test_a_card_error(self, adapter: StripeAdapter, fake_stripe: FakeStripe) -> None:
        fake_stripe.state.fail_next(402, type="card_error", code="card_declined")
        with pytest.raises(ProviderUnavailable, match="card_declined"):
            await adapter.create_checkout(checkout(uuid.uuid4()))

    async def test_a_server_error_stripe_says_not_to_retry(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        fake_stripe.state.fail_next(500, headers={"stripe-should-retry": "false"})
        with pytest.raises(ProviderUnavailable, match="500"):
            await adapter.create_customer(Customer(uuid.uuid4(), "Acme"))
        assert len(fake_stripe.requests) == 1
        assert fake_stripe.state.customers == {}

    async def test_a_passing_server_error_is_retried_once_applied(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        fake_stripe.state.fail_next(503)
        customer_id = await adapter.create_customer(Customer(uuid.uuid4(), "Acme"))
        first, retry = fake_stripe.sent("POST", "/v1/customers")
        assert first.idempotency_key == retry.idempotency_key
        assert list(fake_stripe.state.customers) == [customer_id]

    async def test_an_unreachable_stripe(self) -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        adapter = StripeAdapter(
            make_settings(
                payment_provider="stripe",
                stripe_secret_key=API_KEY,
                stripe_webhook_secret=WEBHOOK_SECRET,
                stripe_api_base=f"http://127.0.0.1:{port}",
            )
        )
        try:
            with pytest.raises(ProviderUnavailable, match="could not be reached"):
                await adapter.list_subscriptions()
        finally:
            await adapter.aclose()

    async def test_every_call_maps_its_errors(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        calls = [
            adapter.create_customer(Customer(uuid.uuid4(), "Acme")),
            adapter.create_checkout(checkout(uuid.uuid4())),
            adapter.create_portal_session("cus_1", "https://app.example/"),
            adapter.cancel_subscription("sub_missing", at_period_end=True),
            adapter.cancel_subscription("sub_missing", at_period_end=False),
            adapter.resume_subscription("sub_missing"),
            adapter.change_plan("sub_missing", "price_x"),
            adapter.list_subscriptions(),
        ]
        for call in calls:
            fake_stripe.state.fail_next(400, code="parameter_invalid")
            with pytest.raises(ProviderUnavailable, match="parameter_invalid"):
                await call

    def test_the_keys_are_required(self) -> None:
        with pytest.raises(ConfigurationError, match="SAASCORE_STRIPE_SECRET_KEY"):
            StripeAdapter(make_settings(stripe_webhook_secret=WEBHOOK_SECRET))
        with pytest.raises(ConfigurationError, match="SAASCORE_STRIPE_WEBHOOK_SECRET"):
            StripeAdapter(make_settings(stripe_secret_key=API_KEY))


class TestWebhookTypes:
    def test_subscription_checkout_completed(self, parser: StripeAdapter) -> None:
        org = uuid.uuid4()
        body = checkout_completed(
            organization_id=org,
            customer="cus_1",
            subscription="sub_1",
            created=NOW,
            event_id="evt_1",
            metadata={"plan": "pro", "cycle": "monthly"},
        )
        parsed = parse(parser, body)
        assert parsed.provider is PaymentProvider.STRIPE
        assert (parsed.id, parsed.type, parsed.kind) == (
            "evt_1",
            "checkout.session.completed",
            EventKind.CHECKOUT_COMPLETED,
        )
        assert parsed.occurred_at == NOW
        assert parsed.organization_id == org
        assert parsed.customer_id == "cus_1"
        assert parsed.checkout_id == body["data"]["object"]["id"]
        assert parsed.payload == body

    def test_pack_order_paid(self, parser: StripeAdapter) -> None:
        org = uuid.uuid4()
        body = checkout_completed(
            organization_id=org,
            mode="payment",
            customer="cus_1",
            payment_intent="pi_1",
            amount_total=1500,
            currency="eur",
            metadata={"pack": "credits-1000"},
        )
        parsed = parse(parser, body)
        assert parsed.kind is EventKind.ORDER_PAID
        assert parsed.organization_id == org
        payment = parsed.payment
        assert payment is not None
        assert (payment.id, payment.amount, payment.currency) == ("pi_1", 1500, "EUR")
        assert (payment.pack, payment.customer_id) == ("credits-1000", "cus_1")

    def test_an_order_without_payment_intent_is_named_by_its_session(
        self, parser: StripeAdapter
    ) -> None:
        body = checkout_completed(organization_id=uuid.uuid4(), mode="payment", amount_total=0)
        parsed = parse(parser, body)
        assert parsed.payment is not None
        assert parsed.payment.id == body["data"]["object"]["id"]
        assert parsed.payment.amount == 0

    def test_an_unpaid_order_is_not_acted_on(self, parser: StripeAdapter) -> None:
        body = checkout_completed(
            organization_id=uuid.uuid4(), mode="payment", payment_status="unpaid"
        )
        assert parse(parser, body).kind is EventKind.UNHANDLED

    def test_the_organisation_falls_back_to_the_client_reference(
        self, parser: StripeAdapter
    ) -> None:
        org = uuid.uuid4()
        body = checkout_completed(organization_id=None, client_reference_id=str(org))
        assert parse(parser, body).organization_id == org

    @pytest.mark.parametrize("value", ["not-a-uuid", "", "1" * 300, 42, None, ["x"]])
    def test_an_organisation_that_is_no_uuid_is_none(
        self, parser: StripeAdapter, value: Any
    ) -> None:
        body = checkout_completed(organization_id=None)
        body["data"]["object"]["metadata"] = {"organization_id": value}
        body["data"]["object"]["client_reference_id"] = None
        assert parse(parser, body).organization_id is None

    @pytest.mark.parametrize("legacy", [False, True], ids=["current", "pre-2025"])
    @pytest.mark.parametrize(
        "type_", ["customer.subscription.created", "customer.subscription.updated"]
    )
    def test_subscription_snapshot(self, parser: StripeAdapter, type_: str, legacy: bool) -> None:
        org = uuid.uuid4()
        body = subscription_event(
            type_,
            created=NOW,
            id="sub_1",
            customer="cus_1",
            price="price_pro_monthly",
            organization_id=org,
            status="trialing",
            period_start=START,
            period_end=END,
            trial_end=END,
            cancel_at_period_end=True,
            canceled_at=NOW,
            legacy=legacy,
        )
        period_holder = body["data"]["object"]
        if not legacy:
            period_holder = period_holder["items"]["data"][0]
        assert period_holder["current_period_end"] == int(END.timestamp())
        parsed = parse(parser, body)
        assert parsed.kind is EventKind.SUBSCRIPTION_UPDATED
        assert parsed.organization_id == org
        assert parsed.customer_id == "cus_1"
        sub = parsed.subscription
        assert sub is not None
        assert (sub.id, sub.customer_id, sub.price_id) == ("sub_1", "cus_1", "price_pro_monthly")
        assert sub.status is ProviderSubscriptionStatus.TRIALING
        assert (sub.current_period_start, sub.current_period_end) == (START, END)
        assert sub.cancel_at_period_end is True
        assert (sub.canceled_at, sub.ended_at, sub.trial_end) == (NOW, None, END)
        assert sub.organization_id == org
        assert sub.updated_at == NOW

    @pytest.mark.parametrize(
        ("stripe_status", "status"),
        [
            ("trialing", ProviderSubscriptionStatus.TRIALING),
            ("active", ProviderSubscriptionStatus.ACTIVE),
            ("past_due", ProviderSubscriptionStatus.PAST_DUE),
            ("unpaid", ProviderSubscriptionStatus.PAUSED),
            ("paused", ProviderSubscriptionStatus.PAUSED),
            ("canceled", ProviderSubscriptionStatus.CANCELED),
            ("incomplete", ProviderSubscriptionStatus.INCOMPLETE),
            ("incomplete_expired", ProviderSubscriptionStatus.INCOMPLETE),
        ],
    )
    def test_statuses(
        self, parser: StripeAdapter, stripe_status: str, status: ProviderSubscriptionStatus
    ) -> None:
        body = subscription_event(
            "customer.subscription.updated", customer="cus_1", price="p", status=stripe_status
        )
        parsed = parse(parser, body)
        assert parsed.subscription is not None
        assert parsed.subscription.status is status

    def test_subscription_deleted_ends_it(self, parser: StripeAdapter) -> None:
        body = subscription_event(
            "customer.subscription.deleted",
            customer="cus_1",
            price="p",
            status="canceled",
            canceled_at=END,
            ended_at=END,
        )
        parsed = parse(parser, body)
        assert parsed.kind is EventKind.SUBSCRIPTION_ENDED
        assert parsed.subscription is not None
        assert parsed.subscription.ended_at == END
        assert parsed.subscription.status is ProviderSubscriptionStatus.CANCELED

    @pytest.mark.parametrize("legacy", [False, True], ids=["current", "pre-2025"])
    def test_invoice_paid(self, parser: StripeAdapter, legacy: bool) -> None:
        body = invoice_event(
            "invoice.paid",
            created=NOW,
            id="in_1",
            customer="cus_1",
            subscription="sub_1",
            amount=2900,
            currency="usd",
            price="price_pro_monthly",
            period_start=START,
            period_end=END,
            legacy=legacy,
        )
        parsed = parse(parser, body)
        assert parsed.kind is EventKind.PAYMENT_SUCCEEDED
        assert parsed.customer_id == "cus_1"
        payment = parsed.payment
        assert payment is not None
        assert (payment.id, payment.amount, payment.currency) == ("in_1", 2900, "USD")
        assert (payment.customer_id, payment.subscription_id) == ("cus_1", "sub_1")
        assert (payment.period_start, payment.period_end) == (START, END)
        assert payment.price_id == "price_pro_monthly"
        assert payment.failure_reason is None

    @pytest.mark.parametrize("legacy", [False, True], ids=["current", "pre-2025"])
    def test_invoice_names_its_subscriptions_organisation(
        self, parser: StripeAdapter, legacy: bool
    ) -> None:
        org = uuid.uuid4()
        body = invoice_event(
            "invoice.paid",
            customer="cus_1",
            subscription="sub_1",
            organization_id=org,
            legacy=legacy,
        )
        assert parse(parser, body).organization_id == org
        bare = invoice_event("invoice.paid", customer="cus_1", subscription="sub_1")
        assert parse(parser, bare).organization_id is None

    @pytest.mark.parametrize("legacy", [False, True], ids=["current", "pre-2025"])
    def test_invoice_payment_failed(self, parser: StripeAdapter, legacy: bool) -> None:
        body = invoice_event(
            "invoice.payment_failed",
            customer="cus_1",
            subscription="sub_1",
            amount=2900,
            failure_message="Your card was declined.",
            legacy=legacy,
        )
        parsed = parse(parser, body)
        assert parsed.kind is EventKind.PAYMENT_FAILED
        assert parsed.payment is not None
        assert parsed.payment.amount == 2900
        assert parsed.payment.subscription_id == "sub_1"
        assert parsed.payment.failure_reason == "Your card was declined."

    def test_a_failed_payment_without_a_reason(self, parser: StripeAdapter) -> None:
        body = invoice_event("invoice.payment_failed", customer="cus_1", subscription="sub_1")
        parsed = parse(parser, body)
        assert parsed.payment is not None
        assert parsed.payment.failure_reason is None

    def test_an_expanded_customer_is_read_by_id(self, parser: StripeAdapter) -> None:
        body = invoice_event("invoice.paid", customer="cus_1", subscription="sub_1")
        body["data"]["object"]["customer"] = {"id": "cus_1", "object": "customer"}
        assert parse(parser, body).customer_id == "cus_1"

    @pytest.mark.parametrize("type_", ["customer.created", "charge.refunded", "x" * 200])
    def test_other_types_are_unhandled(self, parser: StripeAdapter, type_: str) -> None:
        body = event(type_, {"id": "obj_1", "object": "thing"}, id="evt_9", created=NOW)
        parsed = parse(parser, body)
        assert (parsed.kind, parsed.id, parsed.type) == (EventKind.UNHANDLED, "evt_9", type_)
        assert parsed.occurred_at == NOW

    async def test_a_checkout_through_the_fake_stripe(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        """The webhooks the fake Stripe sends after a real checkout carry the organisation,
        the plan and the period through to saascore's events."""
        org = uuid.uuid4()
        customer_id = await adapter.create_customer(Customer(org, "Acme"))
        fake_stripe.state.prices["price_pro_monthly"] = 2900
        session = await adapter.create_checkout(checkout(org, customer_id=customer_id))
        bodies = fake_stripe.state.complete_checkout(session.id, at=NOW)
        parsed = [parse(adapter, body) for body in bodies]
        assert [p.kind for p in parsed] == [
            EventKind.CHECKOUT_COMPLETED,
            EventKind.SUBSCRIPTION_UPDATED,
            EventKind.PAYMENT_SUCCEEDED,
        ]
        assert {p.organization_id for p in parsed} == {org}
        assert {p.customer_id for p in parsed} == {customer_id}
        sub = parsed[1].subscription
        assert sub is not None
        assert (sub.status, sub.price_id) == (
            ProviderSubscriptionStatus.ACTIVE,
            "price_pro_monthly",
        )
        assert sub.current_period_start == NOW
        payment = parsed[2].payment
        assert payment is not None
        assert (payment.amount, payment.subscription_id) == (2900, sub.id)
        assert payment.period_start == NOW
        [listed] = await adapter.list_subscriptions()
        assert listed.id == sub.id

    async def test_a_pack_checkout_through_the_fake_stripe(
        self, adapter: StripeAdapter, fake_stripe: FakeStripe
    ) -> None:
        org = uuid.uuid4()
        fake_stripe.state.prices["price_pack"] = 990
        session = await adapter.create_checkout(
            checkout(org, CheckoutMode.PAYMENT, price_id="price_pack", pack="credits-500")
        )
        [body] = fake_stripe.state.complete_checkout(session.id, at=NOW)
        parsed = parse(adapter, body)
        assert parsed.kind is EventKind.ORDER_PAID
        assert parsed.organization_id == org
        assert parsed.payment is not None
        assert (parsed.payment.amount, parsed.payment.pack) == (990, "credits-500")
        assert parsed.payment.id.startswith("pi_")


class TestWebhookSignatures:
    def body(self) -> bytes:
        return json.dumps(checkout_completed(organization_id=uuid.uuid4())).encode()

    def test_a_missing_header(self, parser: StripeAdapter) -> None:
        with pytest.raises(WebhookSignatureInvalid):
            parser.parse_webhook({}, self.body(), now=NOW)
        with pytest.raises(WebhookSignatureInvalid):
            parser.parse_webhook({"stripe-signature": ""}, self.body(), now=NOW)

    def test_a_forged_signature(self, parser: StripeAdapter) -> None:
        body = self.body()
        headers = {"stripe-signature": sign(body, "whsec_someone_else", NOW)}
        with pytest.raises(WebhookSignatureInvalid) as raised:
            parser.parse_webhook(headers, body, now=NOW)
        assert raised.value.code == "invalid_signature"
        assert raised.value.status_code == 400

    def test_a_body_altered_after_signing(self, parser: StripeAdapter) -> None:
        body, headers = signed(checkout_completed(organization_id=uuid.uuid4()), timestamp=NOW)
        altered = body.replace(b'"mode": "subscription"', b'"mode": "payment"    ')
        assert altered != body
        with pytest.raises(WebhookSignatureInvalid):
            parser.parse_webhook(headers, altered, now=NOW)
        with pytest.raises(WebhookSignatureInvalid):
            parser.parse_webhook(headers, body + b" ", now=NOW)

    @pytest.mark.parametrize(
        "header",
        ["garbage", "t=abc,v1=00", "v1=00", "t=1", "t=,v1=", "v0=00,t=1", "t=1," + "v1=a" * 10],
    )
    def test_an_unreadable_header(self, parser: StripeAdapter, header: str) -> None:
        with pytest.raises(WebhookSignatureInvalid):
            parser.parse_webhook({"stripe-signature": header}, self.body(), now=NOW)

    @pytest.mark.parametrize("seconds", [301, -301, 86_400 * 365, -(10**12), -(10**400)])
    def test_stale_either_way(self, parser: StripeAdapter, seconds: int) -> None:
        body = self.body()
        signed_at = int(NOW.timestamp()) - seconds
        headers = {"stripe-signature": sign(body, WEBHOOK_SECRET, signed_at)}
        with pytest.raises(WebhookStale) as raised:
            parser.parse_webhook(headers, body, now=NOW)
        assert raised.value.code == "stale_webhook"

    @pytest.mark.parametrize("seconds", [300, -300, 0])
    def test_within_the_tolerance(self, parser: StripeAdapter, seconds: int) -> None:
        body = self.body()
        headers = {"stripe-signature": sign(body, WEBHOOK_SECRET, NOW - timedelta(seconds=seconds))}
        assert parser.parse_webhook(headers, body, now=NOW).kind is EventKind.CHECKOUT_COMPLETED

    def test_now_is_the_clock_not_the_machines(self, parser: StripeAdapter) -> None:
        """A body signed long ago is fresh at the `now` it is judged by, and one signed now
        is stale at a `now` a day later."""
        long_ago = datetime(2020, 1, 1, tzinfo=UTC)
        body = self.body()
        headers = {"stripe-signature": sign(body, WEBHOOK_SECRET, long_ago)}
        assert parser.parse_webhook(headers, body, now=long_ago).id
        with pytest.raises(WebhookStale):
            parser.parse_webhook(headers, body, now=long_ago + timedelta(days=1))

    def test_a_second_timestamp_cannot_freshen_an_old_signature(
        self, parser: StripeAdapter
    ) -> None:
        body = self.body()
        old = sign(body, WEBHOOK_SECRET, NOW - timedelta(hours=1))
        fresh_t = int(NOW.timestamp())
        with pytest.raises(WebhookStale):
            parser.parse_webhook({"stripe-signature": f"{old},t={fresh_t}"}, body, now=NOW)
        with pytest.raises(WebhookSignatureInvalid):
            parser.parse_webhook({"stripe-signature": f"t={fresh_t},{old}"}, body, now=NOW)

    def test_a_rotated_secret_signature_among_others(self, parser: StripeAdapter) -> None:
        body = self.body()
        good = sign(body, WEBHOOK_SECRET, NOW)
        stale_secret = sign(body, "whsec_old", NOW).split(",")[1]
        header = f"{good},{stale_secret}"
        assert parser.parse_webhook({"stripe-signature": header}, body, now=NOW).id


class TestMalformedWebhooks:
    def signed_raw(self, parser: StripeAdapter, raw: bytes) -> None:
        headers = {"stripe-signature": sign(raw, WEBHOOK_SECRET, NOW)}
        parser.parse_webhook(headers, raw, now=NOW)

    def test_an_empty_body(self, parser: StripeAdapter) -> None:
        with pytest.raises(WebhookMalformed) as raised:
            self.signed_raw(parser, b"")
        assert raised.value.code == "malformed_webhook"

    @pytest.mark.parametrize(
        "raw",
        [
            b"not json",
            b"\xff\xfe{}",
            b"[1, 2]",
            b'"event"',
            b"null",
            b'{"object": "event", "x": NaN}',
            b'{"object": "event", "x": Infinity}',
            b"[" * 100_000 + b"]" * 100_000,
            b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
            b"{}",
            b'{"object": "charge", "id": "evt_1", "type": "x", "created": 1, "data": {}}',
        ],
        ids=[
            "text",
            "not-utf8",
            "array",
            "string",
            "null",
            "nan",
            "infinity",
            "deep-array",
            "deep-object",
            "empty-object",
            "not-an-event",
        ],
    )
    def test_not_a_stripe_event(self, parser: StripeAdapter, raw: bytes) -> None:
        with pytest.raises(WebhookMalformed):
            self.signed_raw(parser, raw)

    @pytest.mark.parametrize(
        ("path", "value"),
        [
            (("id",), None),
            (("id",), 17),
            (("id",), "e" * 256),
            (("type",), None),
            (("created",), None),
            (("created",), "yesterday"),
            (("created",), 10**20),
            (("created",), True),
            (("data",), None),
            (("data", "object"), "cs_1"),
        ],
    )
    def test_a_broken_envelope(
        self, parser: StripeAdapter, path: tuple[str, ...], value: Any
    ) -> None:
        body = checkout_completed(organization_id=uuid.uuid4())
        put(body, path, value)
        with pytest.raises(WebhookMalformed):
            self.signed_raw(parser, json.dumps(body).encode())

    @pytest.mark.parametrize(
        "amount", [-1, INT64_MAX + 1, 2**200, 12.5, "100", True, None], ids=repr
    )
    def test_amounts_out_of_bounds(self, parser: StripeAdapter, amount: Any) -> None:
        order = checkout_completed(organization_id=uuid.uuid4(), mode="payment")
        put(order, ("data", "object", "amount_total"), amount)
        invoice = invoice_event("invoice.paid", customer="cus_1", subscription="sub_1")
        put(invoice, ("data", "object", "amount_paid"), amount)
        for body in (order, invoice):
            with pytest.raises(WebhookMalformed):
                self.signed_raw(parser, json.dumps(body).encode())

    def test_the_largest_amount(self, parser: StripeAdapter) -> None:
        body = invoice_event(
            "invoice.paid", customer="cus_1", subscription="sub_1", amount=INT64_MAX
        )
        parsed = parse(parser, body)
        assert parsed.payment is not None
        assert parsed.payment.amount == INT64_MAX

    @pytest.mark.parametrize("currency", ["", "us", "usdd", "€€€", None, 840])
    def test_a_bad_currency(self, parser: StripeAdapter, currency: Any) -> None:
        body = invoice_event("invoice.paid", customer="cus_1", subscription="sub_1")
        put(body, ("data", "object", "currency"), currency)
        with pytest.raises(WebhookMalformed):
            self.signed_raw(parser, json.dumps(body).encode())

    @pytest.mark.parametrize(
        ("path", "value"),
        [
            (("status",), None),
            (("customer",), None),
            (("id",), None),
            (("object",), "invoice"),
            (("canceled_at",), -(10**18)),
            (("items", "data", 0, "current_period_end"), "soon"),
        ],
    )
    def test_a_broken_subscription(
        self, parser: StripeAdapter, path: tuple[Any, ...], value: Any
    ) -> None:
        body = subscription_event("customer.subscription.updated", customer="cus_1", price="p")
        put(body, ("data", "object", *path), value)
        with pytest.raises(WebhookMalformed):
            self.signed_raw(parser, json.dumps(body).encode())


class TestLaterStatuses:
    def test_a_status_stripe_adds_later_is_stored_not_refused(self, parser: StripeAdapter) -> None:
        body = subscription_event("customer.subscription.updated", customer="cus_1", price="p")
        put(body, ("data", "object", "status"), "hibernating")
        raw = json.dumps(body).encode()
        headers = {"stripe-signature": sign(raw, WEBHOOK_SECRET, NOW)}
        parsed = parser.parse_webhook(headers, raw, now=NOW)
        assert parsed.kind is EventKind.UNHANDLED
        assert parsed.subscription is None


def put(body: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        body = body[key]
    body[path[-1]] = value
