"""The mock provider end to end through HTTP: a checkout, its confirmation page, the
confirmation, then the subscription active on the plan with its invoice paid; and a credit
pack whose credits are granted once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa

from saascore.kit.money import Money
from saascore.models import (
    InvoiceStatus,
    Organization,
    PaymentProvider,
    PaymentStatus,
    SubscriptionPlan,
)
from saascore.testing import TestTenant
from tests.admin import Admin
from tests.providers.helpers import invoices_of, payments_of, subscriptions_of


def local(url: str) -> str:
    assert url.startswith("http://testserver/v1/checkout/mock/"), url
    return url.removeprefix("http://testserver")


async def checkout(client: httpx.AsyncClient, customer: TestTenant, **body: str) -> str:
    response = await client.post("/v1/subscription/checkout", json=body, headers=customer.headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["provider"] == "mock"
    assert answer["id"].startswith("mock_cs_")
    return local(answer["url"])


@pytest.fixture
async def unoffered(admin: Admin) -> AsyncIterator[tuple[str, ...]]:
    """`business` unlisted and `pro` retired for one test; the catalog restored after it."""

    async def offer(offered: bool) -> None:
        async with admin.database.transaction() as s:
            plans = sa.update(SubscriptionPlan)
            business = plans.where(SubscriptionPlan.code == "business")
            await s.execute(business.values(is_public=offered))
            await s.execute(plans.where(SubscriptionPlan.code == "pro").values(is_active=offered))

    await offer(False)
    yield ("business", "pro")
    await offer(True)


class TestPlanCheckout:
    async def test_checkout_confirm_then_active_and_paid(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        client, org_id = admin.client, customer.organization_id
        page_url = await checkout(client, customer, plan="pro", cycle="monthly")
        page = await client.get(page_url)
        assert page.status_code == 200
        assert "Confirm payment" in page.text
        assert "Plan pro" in page.text
        assert "<strong>Plan pro (monthly)</strong>: $29.99<" in page.text
        assert "minor units" not in page.text
        assert await subscriptions_of(admin.database, org_id) == []  # nothing until confirmed

        confirmed = await client.post(page_url)
        assert confirmed.status_code == 200, confirmed.text
        outcomes = [event["outcome"] for event in confirmed.json()["events"]]
        assert outcomes == ["processed", "processed", "processed"]

        mine = (await client.get("/v1/subscription", headers=customer.headers)).json()
        assert (mine["plan"], mine["status"]) == ("pro", "active")
        [invoice] = await invoices_of(admin.database, org_id)
        assert invoice.status is InvoiceStatus.PAID
        assert invoice.number
        assert (invoice.total, invoice.amount_due) == (2999, 0)
        [payment] = await payments_of(admin.database, org_id)
        assert payment.provider is PaymentProvider.MOCK
        assert payment.status is PaymentStatus.SUCCEEDED
        assert payment.provider_payment_id
        assert payment.provider_payment_id.startswith("mock_pay_")
        async with admin.database.session(readonly=True) as s:
            organization = await s.get(Organization, org_id)
            assert organization is not None
            plan = await s.scalar(
                sa.select(SubscriptionPlan.code).where(SubscriptionPlan.id == organization.plan_id)
            )
        assert plan == "pro"
        assert organization.billing_provider is PaymentProvider.MOCK
        assert organization.provider_customer_id
        assert organization.provider_customer_id.startswith("mock_cus_")

        again = await client.post(page_url)  # the same events: duplicates
        assert [event["duplicate"] for event in again.json()["events"]] == [True, True, True]
        assert len(await payments_of(admin.database, org_id)) == 1
        assert len(await subscriptions_of(admin.database, org_id)) == 1

    async def test_form_post_redirects_to_success(self, admin: Admin, customer: TestTenant) -> None:
        page_url = await checkout(admin.client, customer, plan="starter")
        response = await admin.client.post(page_url, data={"confirm": "1"})
        assert response.status_code == 303
        assert response.headers["location"] == admin.core.settings.checkout_success_url

    async def test_second_checkout_of_a_live_subscription_is_refused(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        page_url = await checkout(admin.client, customer, plan="starter")
        assert (await admin.client.post(page_url)).status_code == 200
        response = await admin.client.post(
            "/v1/subscription/checkout", json={"plan": "pro"}, headers=customer.headers
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "subscription_exists"
        changed = await admin.client.post(
            "/v1/subscription/change-plan", json={"plan": "business"}, headers=customer.headers
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["plan"] == "business"
        canceled = await admin.client.post("/v1/subscription/cancel", headers=customer.headers)
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["cancel_at_period_end"] is True
        resumed = await admin.client.post("/v1/subscription/resume", headers=customer.headers)
        assert resumed.json()["cancel_at_period_end"] is False
        portal = await admin.client.post("/v1/subscription/portal", headers=customer.headers)
        assert portal.status_code == 200
        assert portal.json()["url"]

    async def test_only_an_offered_plan_is_sold_to_a_tenant(
        self, admin: Admin, customer: TestTenant, unoffered: tuple[str, ...]
    ) -> None:
        """An unlisted plan (an operator's custom deal) and a retired one are refused to the
        tenant, at checkout and as a plan change, and the refusal writes nothing: no customer
        at the provider, the subscription unchanged."""
        client, org_id = admin.client, customer.organization_id
        for plan in unoffered:
            refused = await client.post(
                "/v1/subscription/checkout", json={"plan": plan}, headers=customer.headers
            )
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "plan_not_offered"
            assert refused.json()["error"]["details"] == {"plan": plan}
        async with admin.database.session(readonly=True) as s:
            organization = await s.get(Organization, org_id)
            assert organization is not None
            assert organization.provider_customer_id is None

        page_url = await checkout(client, customer, plan="starter")
        assert (await client.post(page_url)).status_code == 200
        for plan in unoffered:
            moved = await client.post(
                "/v1/subscription/change-plan", json={"plan": plan}, headers=customer.headers
            )
            assert moved.status_code == 409, moved.text
            assert moved.json()["error"]["code"] == "plan_not_offered"
        mine = (await client.get("/v1/subscription", headers=customer.headers)).json()
        assert (mine["plan"], mine["status"]) == ("starter", "active")

    async def test_refusals(self, admin: Admin, customer: TestTenant) -> None:
        client = admin.client
        forged = await client.get("/v1/checkout/mock/not-a-token")
        assert forged.status_code == 404
        assert forged.json()["error"]["code"] == "checkout_not_found"
        assert (await client.post("/v1/checkout/mock/not-a-token")).status_code == 404
        both = await client.post(
            "/v1/subscription/checkout",
            json={"plan": "pro", "pack": "x"},
            headers=customer.headers,
        )
        assert both.status_code == 422
        for body in ({"plan": "pro", "pack": "x"}, {}):
            refused = await client.post(
                "/v1/subscription/checkout", json=body, headers=customer.headers
            )
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["message"] == (
                "invalid request: body: give a plan (with its cycle) or a pack"
            )
            [error] = refused.json()["error"]["details"]["errors"]
            assert error["message"] == "give a plan (with its cycle) or a pack"
        portal = await client.post("/v1/subscription/portal", headers=customer.headers)
        assert portal.status_code == 409
        assert portal.json()["error"]["code"] == "billing_customer_missing"
        nobody = await client.post("/v1/subscription/checkout", json={"plan": "pro"})
        assert nobody.status_code == 401
        page_url = await checkout(client, customer, plan="pro")
        token = page_url.rsplit("/", 1)[1]
        altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        assert (await client.post(f"/v1/checkout/mock/{altered}")).status_code == 404
        assert await subscriptions_of(admin.database, customer.organization_id) == []


class TestPackCheckout:
    async def test_pack_credits_granted_once(self, admin: Admin, customer: TestTenant) -> None:
        pack = await admin.core.credit_packs.create(
            f"mockpack-{customer.organization_id.hex[:8]}",
            credits=500,
            price=Money(1500, "USD"),
        )
        before = await admin.core.credits.balance(customer.organization_id)
        page_url = await checkout(admin.client, customer, pack=pack.code)
        page = await admin.client.get(page_url)
        assert f"Credit pack {pack.code}" in page.text
        for _ in range(2):
            confirmed = await admin.client.post(page_url)
            assert confirmed.status_code == 200, confirmed.text
        after = await admin.core.credits.balance(customer.organization_id)
        assert after - before == 500
        [payment] = await payments_of(admin.database, customer.organization_id)
        assert payment.credits_awarded == 500
        assert payment.provider_payment_id
        assert payment.provider_payment_id.startswith("mock_ord_")
