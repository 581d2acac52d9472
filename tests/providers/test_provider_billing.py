"""Billing beside a payment provider: the billing run leaves a provider's subscription to the
provider (no renewal invoice of its own), and an ended subscription returns the organisation
to the default plan."""

from __future__ import annotations

from datetime import timedelta

from saascore.models import InvoiceStatus, SubscriptionStatus
from saascore.testing import TestTenant
from tests.admin import Admin
from tests.providers.helpers import (
    T0,
    invoices_of,
    mock_price,
    payment_event,
    send,
    subscription_event,
    subscriptions_of,
    unique,
)


async def _subscribed(admin: Admin, customer: TestTenant) -> tuple[str, str]:
    customer_id, subscription_id = unique("mock_cus"), unique("mock_sub")
    for body in (
        subscription_event(
            unique("mock_evt"),
            minute=1,
            subscription=subscription_id,
            customer=customer_id,
            price=await mock_price(admin.database, "pro"),
            org=customer.organization_id,
        ),
        payment_event(
            unique("mock_evt"),
            minute=2,
            subscription=subscription_id,
            customer=customer_id,
            payment=unique("mock_pay"),
            amount=2999,
        ),
    ):
        answer = await send(admin.client, body)
        assert answer.json()["outcome"] == "processed", answer.text
    return customer_id, subscription_id


class TestBillingRun:
    async def test_the_run_does_not_renew_a_providers_subscription(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        await _subscribed(admin, customer)
        org = customer.organization_id
        await admin.core.billing_run.run(T0 + timedelta(days=40), organizations=[org])
        [invoice] = await invoices_of(admin.database, org)
        assert invoice.status is InvoiceStatus.PAID
        [subscription] = await subscriptions_of(admin.database, org)
        assert subscription.current_period_end == T0 + timedelta(days=31)


class TestEnded:
    async def test_ended_returns_the_organisation_to_the_default_plan(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        customer_id, subscription_id = await _subscribed(admin, customer)
        ended = subscription_event(
            unique("mock_evt"),
            minute=30,
            subscription=subscription_id,
            customer=customer_id,
            price=await mock_price(admin.database, "pro"),
            kind="subscription_ended",
        )
        answer = await send(admin.client, ended)
        assert answer.json()["outcome"] == "processed", answer.text
        [subscription] = await subscriptions_of(admin.database, customer.organization_id)
        assert subscription.status is SubscriptionStatus.CANCELED
        organization = await admin.core.orgs.get(customer.organization_id)
        plan = await admin.core.plans.plan_of(organization.id)
        assert plan.code == admin.core.settings.default_plan
        again = await send(admin.client, {**ended, "id": unique("mock_evt")})
        assert again.json()["outcome"] == "ignored"
