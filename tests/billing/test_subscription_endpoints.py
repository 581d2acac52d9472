"""The subscription routes: operators create, change, cancel and resume an organisation's
subscription under `/v1/admin/organizations/{id}/subscription`; a tenant reads its own at
`GET /v1/subscription` and never another's."""

from __future__ import annotations

import httpx

from saascore.testing import TestTenant
from tests.admin import Admin, by_operator, customer_of, entries

BASE = "/v1/admin/organizations/{}/subscription"
APRIL = "2024-04-01T00:00:00Z"


def path(customer: TestTenant, action: str = "") -> str:
    return BASE.format(customer.organization_id) + (f"/{action}" if action else "")


def error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


class TestOperatorRoutes:
    async def test_create_then_read(self, admin: Admin, customer: TestTenant) -> None:
        created = await admin.client.post(
            path(customer),
            json={"plan": "starter", "cycle": "monthly", "at": APRIL},
            headers=admin.operator,
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["plan"], body["status"], body["unit_amount"]) == ("starter", "trialing", 999)
        assert body["current_period_end"].startswith("2024-05-01T00:00:00")
        assert body["trial_end"].startswith("2024-04-15")
        [entry] = await entries(admin, customer.organization_id, "subscription.created")
        assert by_operator(admin, entry)
        read = await admin.client.get(path(customer), headers=admin.operator)
        assert read.json() == body
        mine = await admin.client.get("/v1/subscription", headers=customer.headers)
        assert mine.status_code == 200
        assert mine.json()["id"] == body["id"]

    async def test_refusals(self, admin: Admin, customer: TestTenant) -> None:
        error(
            await admin.client.post(
                path(customer), json={"plan": "pro", "cycle": "quarterly"}, headers=admin.operator
            ),
            422,
            "plan_price_missing",
        )
        error(
            await admin.client.post(path(customer, "cancel"), json={}, headers=admin.operator),
            404,
            "subscription_not_found",
        )
        ok = await admin.client.post(
            path(customer), json={"plan": "pro", "trial_days": 0}, headers=admin.operator
        )
        assert ok.status_code == 201
        error(
            await admin.client.post(path(customer), json={"plan": "pro"}, headers=admin.operator),
            409,
            "subscription_exists",
        )
        canceled = await admin.client.post(
            path(customer, "cancel"), json={"at_period_end": False}, headers=admin.operator
        )
        assert canceled.json()["status"] == "canceled"
        error(
            await admin.client.post(path(customer, "resume"), json={}, headers=admin.operator),
            409,
            "invalid_transition",
        )
        error(
            await admin.client.post(
                path(customer, "change-plan"), json={"plan": "business"}, headers=admin.operator
            ),
            409,
            "invalid_transition",
        )

    async def test_upgrade_cancel_resume(self, admin: Admin, customer: TestTenant) -> None:
        await admin.client.post(
            path(customer),
            json={"plan": "starter", "trial_days": 0, "at": APRIL},
            headers=admin.operator,
        )
        upgraded = await admin.client.post(
            path(customer, "change-plan"),
            json={"plan": "pro", "at": "2024-04-16T00:00:00Z"},
            headers=admin.operator,
        )
        assert (upgraded.json()["plan"], upgraded.json()["unit_amount"]) == ("pro", 2_999)
        downgrade = await admin.client.post(
            path(customer, "change-plan"),
            json={"plan": "starter", "at": "2024-04-17T00:00:00Z"},
            headers=admin.operator,
        )
        assert (downgrade.json()["plan"], downgrade.json()["scheduled_plan"]) == ("pro", "starter")
        canceling = await admin.client.post(
            path(customer, "cancel"), json={"at": "2024-04-18T00:00:00Z"}, headers=admin.operator
        )
        assert canceling.json()["cancel_at_period_end"] is True
        assert canceling.json()["status"] == "active"
        resumed = await admin.client.post(
            path(customer, "resume"), json={"at": "2024-04-19T00:00:00Z"}, headers=admin.operator
        )
        assert resumed.json()["cancel_at_period_end"] is False
        late = await admin.client.post(
            path(customer, "cancel"), json={"at": "2024-04-20T00:00:00Z"}, headers=admin.operator
        )
        assert late.status_code == 200
        error(
            await admin.client.post(
                path(customer, "resume"),
                json={"at": "2024-05-01T00:00:00Z"},
                headers=admin.operator,
            ),
            409,
            "period_ended",
        )
        assert len(await entries(admin, customer.organization_id, "subscription.updated")) == 5

    async def test_cancel_and_resume_need_no_body(self, admin: Admin, customer: TestTenant) -> None:
        created = await admin.client.post(
            path(customer), json={"plan": "pro", "trial_days": 0}, headers=admin.operator
        )
        assert created.status_code == 201, created.text
        canceled = await admin.client.post(path(customer, "cancel"), headers=admin.operator)
        assert canceled.status_code == 200, canceled.text
        assert (canceled.json()["status"], canceled.json()["cancel_at_period_end"]) == (
            "active",
            True,
        )
        resumed = await admin.client.post(path(customer, "resume"), headers=admin.operator)
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["cancel_at_period_end"] is False

    async def test_an_unknown_organisation(self, admin: Admin) -> None:
        unknown = "/v1/admin/organizations/00000000-0000-7000-8000-000000000000/subscription"
        error(
            await admin.client.get(unknown, headers=admin.operator), 404, "organization_not_found"
        )

    async def test_a_tenant_cannot_use_them(self, admin: Admin, customer: TestTenant) -> None:
        response = await admin.client.post(
            path(customer), json={"plan": "pro"}, headers=customer.headers
        )
        assert response.status_code == 403


class TestTenantIsolation:
    async def test_another_tenants_subscription_is_not_seen(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        other = await customer_of(admin)
        await admin.client.post(path(other), json={"plan": "pro"}, headers=admin.operator)
        error(
            await admin.client.get("/v1/subscription", headers=customer.headers),
            404,
            "subscription_not_found",
        )
        theirs = await admin.client.get("/v1/subscription", headers=other.headers)
        assert theirs.json()["organization_id"] == str(other.organization_id)
