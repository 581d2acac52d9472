"""`GET /v1/plans`, the public catalog, through the real app on both databases (the default
catalog loaded, plus plans that tests add)."""

from __future__ import annotations

from typing import Any

import httpx

from saascore.kit.db import Database
from saascore.models import BillingCycle, PlanLimit, PlanPrice
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
            "products_per_batch": 25,
            "items": 1000,
            "secondary": 3,
            "users": 5,
            "metrics": {},
        }
        assert starter["rate_limits"] == {"requests_per_minute": 20, "requests_per_hour": 500}
        assert starter["credits"] == {"per_period": 100, "rollover": False}
        assert starter["trial_days"] == 14
        assert starter["api_access"] is True
        assert starter["features"]["email_support"] is True

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
