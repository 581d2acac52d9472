"""`GET /v1/plans`, the public catalog, through the real app on both databases (the default
catalog loaded, plus plans that tests add); and the operator routes `/v1/admin/plans`: load a
catalog, change a plan, and the refusals that change nothing."""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.models import BillingCycle, PlanLimit, PlanPrice, SubscriptionPlan
from saascore.testing import TestTenant
from tests.admin import Admin, stored
from tests.factories import create_plan, random_code

DEFAULT_CODES = ["free", "starter", "pro", "business", "enterprise"]


async def catalog(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await api.get("/v1/plans")
    assert response.status_code == 200, response.text
    plans: list[dict[str, Any]] = response.json()["plans"]
    return plans


class TestCatalog:
    async def test_anyone_may_read_it_in_catalog_order(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/v1/plans")
        assert response.status_code == 200, response.text
        codes = [plan["code"] for plan in response.json()["plans"]]
        assert [code for code in codes if code in DEFAULT_CODES] == DEFAULT_CODES
        assert response.headers["Cache-Control"] == "public, max-age=60"

    async def test_a_plan_says_what_it_costs_allows_and_grants(
        self, api: httpx.AsyncClient
    ) -> None:
        (starter,) = [plan for plan in await catalog(api) if plan["code"] == "starter"]
        assert starter["name"] == "Starter"
        assert starter["prices"] == [
            {"billing_cycle": "monthly", "currency": "USD", "amount": 999},
            {"billing_cycle": "yearly", "currency": "USD", "amount": 9990},
        ]
        assert starter["limits"] == {
            "monthly_tokens": 1_000_000,
            "storage_mb": 1024,
            "api_calls_per_day": 1000,
            "products_per_batch": None,
            "items": None,
            "secondary": None,
            "users": 5,
            "metrics": {},
        }
        assert starter["rate_limits"] == {"requests_per_minute": 20, "requests_per_hour": 500}
        assert starter["credits"] == {"per_period": 100, "rollover": False}
        assert starter["trial_days"] == 14
        assert starter["api_access"] is False  # from Pro up (seed 002)
        assert starter["features"] == {"email_support": True}

    async def test_unlimited_is_null(self, api: httpx.AsyncClient) -> None:
        (enterprise,) = [plan for plan in await catalog(api) if plan["code"] == "enterprise"]
        assert enterprise["limits"]["monthly_tokens"] is None
        assert enterprise["limits"]["users"] is None

    async def test_limits_on_other_metrics_are_listed(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        code = random_code("metered")
        async with scratch.transaction() as session:
            plan = await create_plan(session, code=code, sort_order=1000)
            session.add(PlanLimit(plan_id=plan.id, metric="api_calls", limit_value=500))
            session.add(
                PlanLimit(plan_id=plan.id, metric="tokens", limit_value=None, is_hard=False)
            )
        (listed,) = [plan for plan in await catalog(api) if plan["code"] == code]
        assert listed["limits"]["metrics"] == {
            "api_calls": {"limit": 500, "hard": True},
            "tokens": {"limit": None, "hard": False},
        }

    async def test_inactive_and_private_plans_and_prices_are_left_out(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        inactive, private, public = (random_code(name) for name in ("old", "custom", "open"))
        async with scratch.transaction() as session:
            await create_plan(session, code=inactive, is_active=False)
            await create_plan(session, code=private, is_public=False)
            plan = await create_plan(session, code=public)
            for cycle, active in ((BillingCycle.MONTHLY, True), (BillingCycle.YEARLY, False)):
                session.add(
                    PlanPrice(
                        plan_id=plan.id,
                        billing_cycle=cycle,
                        currency="EUR",
                        amount=500,
                        is_active=active,
                    )
                )
        plans = {plan["code"]: plan for plan in await catalog(api)}
        assert inactive not in plans
        assert private not in plans
        assert plans[public]["prices"] == [
            {"billing_cycle": "monthly", "currency": "EUR", "amount": 500}
        ]


class TestAdminPlans:
    async def test_load_a_catalog_twice(self, admin: Admin) -> None:
        plan, meter = random_code("team"), random_code("pages")
        catalog = {
            "meters": {meter: {"name": "Pages", "unit": "page"}},
            "plans": {
                plan: {
                    "name": "Team",
                    "requests_per_minute": 60,
                    "prices": [{"billing_cycle": "monthly", "currency": "USD", "amount": 4_900}],
                    "limits": {meter: {"limit": 5_000}},
                }
            },
        }
        first = await admin.client.post(
            "/v1/admin/plans/load", json=catalog, headers=admin.operator
        )
        assert first.status_code == 200, first.text
        assert first.json() == {
            "plans_created": [plan],
            "plans_updated": [],
            "meters_created": [meter],
            "meters_updated": [],
        }
        again = await admin.client.post(
            "/v1/admin/plans/load", json=catalog, headers=admin.operator
        )
        assert (again.json()["plans_updated"], again.json()["meters_updated"]) == ([plan], [meter])
        loaded = await admin.core.plans.get_by_code(plan)
        assert (loaded.name, loaded.requests_per_minute) == ("Team", 60)
        assert [(limit.metric, limit.limit_value) for limit in loaded.limits] == [(meter, 5_000)]

    async def test_a_bad_catalog_loads_nothing(self, admin: Admin) -> None:
        code = random_code("bad")
        price = {"billing_cycle": "monthly", "currency": "USD", "amount": 1}
        clash = random_code("price")
        for catalog, status, error in (
            ({"plans": {"no spaces!": {"name": "X"}}}, 422, "validation_error"),
            ({"plans": {code: {"name": "X", "trial_days": -1}}}, 422, "validation_error"),
            (
                {
                    "plans": {
                        code: {"name": "X", "prices": [{**price, "stripe_price_id": clash}]},
                        f"{code}2": {"name": "Y", "prices": [{**price, "stripe_price_id": clash}]},
                    }
                },
                409,
                "catalog_conflict",
            ),
        ):
            response = await admin.client.post(
                "/v1/admin/plans/load", json=catalog, headers=admin.operator
            )
            assert (response.status_code, response.json()["error"]["code"]) == (status, error)
        async with admin.core.database.session(readonly=True) as s:
            count = await s.scalar(
                sa.select(sa.func.count()).where(SubscriptionPlan.code.startswith(code))
            )
        assert count == 0

    async def test_update_a_plan(self, admin: Admin) -> None:
        async with admin.core.database.transaction() as s:
            code = (await create_plan(s, requests_per_minute=10, max_users=5)).code
        response = await admin.client.patch(
            f"/v1/admin/plans/{code}",
            json={
                "name": "Renamed",
                "is_active": False,
                "requests_per_minute": 60,
                "max_users": None,
                "limits": {"api_calls": {"limit": 10}},
            },
            headers=admin.operator,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["name"], body["is_active"], body["rate_limits"]["requests_per_minute"]) == (
            "Renamed",
            False,
            60,
        )
        assert body["limits"]["users"] is None
        assert body["limits"]["metrics"] == {"api_calls": {"limit": 10, "hard": True}}
        stored_plan = await admin.core.plans.get_by_code(code)
        assert (stored_plan.name, stored_plan.is_active, stored_plan.max_users) == (
            "Renamed",
            False,
            None,
        )

    async def test_update_refusals_change_nothing(self, admin: Admin, customer: TestTenant) -> None:
        async with admin.core.database.transaction() as s:
            code = (await create_plan(s)).code
        before = await stored(admin.core.database, customer.organization_id)
        for path, body, status, error in (
            (f"/v1/admin/plans/{code}", {"trial_days": -1}, 422, "validation_error"),
            (f"/v1/admin/plans/{code}", {"sort_order": 2**31}, 422, "validation_error"),
            (f"/v1/admin/plans/{code}", {"prices": []}, 422, "validation_error"),
            (
                f"/v1/admin/plans/{code}",
                {"limits": {"no_such_meter": {"limit": 1}}},
                422,
                "invalid_input",
            ),
            ("/v1/admin/plans/platinum", {"name": "Platinum"}, 404, "plan_not_found"),
        ):
            response = await admin.client.patch(path, json=body, headers=admin.operator)
            assert (response.status_code, response.json()["error"]["code"]) == (status, error)
        assert await stored(admin.core.database, customer.organization_id) == before
