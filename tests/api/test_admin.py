"""`/v1/admin` through the real app: operators list, create, re-plan, limit, suspend and resume
organisations, load and change plans and grant credits, each change audited in the
organisation's chain with the operator as the actor; a tenant's credentials get 403."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from fastapi import FastAPI

from saascore import Saascore
from saascore.kit.db import Database
from saascore.models import AuditLog, Organization, PlanLimit, SubscriptionPlan, UsageLimits
from tests.factories import create_plan, random_code
from tests.http import api_app, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "a long enough password"


@dataclass
class World:
    app: FastAPI
    client: httpx.AsyncClient
    core: Saascore
    operator_id: uuid.UUID
    operator: dict[str, str]
    #: A plan without rate limits, for tenants that make many requests.
    plan: str


@dataclass
class Tenant:
    organization_id: uuid.UUID
    headers: dict[str, str]
    key: dict[str, str]


@pytest_asyncio.fixture(loop_scope="session")
async def world(scratch: Database) -> AsyncIterator[World]:
    application, core = api_app(scratch, auth_requests_per_minute=None)
    async with serving(application, core) as client:
        key, raw = await core.api_keys.create_operator_key(name="ops")
        async with scratch.transaction() as s:
            plan = (await create_plan(s)).code
        yield World(application, client, core, key.id, {"X-API-Key": raw}, plan)


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(world: World) -> Tenant:
    """An organisation registered over HTTP: its owner's token and an API key with every
    scope."""
    response = await world.client.post(
        "/v1/auth/register",
        json={
            "email": f"owner-{secrets.token_hex(4)}@example.com",
            "password": PASSWORD,
            "organization_name": f"Tenant {secrets.token_hex(4)}",
        },
    )
    assert response.status_code == 201, response.text
    org_id = uuid.UUID(response.json()["organization_id"])
    await world.core.orgs.change_plan(org_id, world.plan)
    _, raw = await world.core.api_keys.create(
        org_id,
        name="everything",
        scopes=["usage:read", "usage:write", "billing:read", "billing:write", "admin"],
    )
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    return Tenant(org_id, headers, {"X-API-Key": raw})


async def entries(world: World, org_id: uuid.UUID, action: str) -> list[AuditLog]:
    return list(await world.core.audit.list(org_id, action=action))


def by_operator(world: World, entry: AuditLog) -> bool:
    return (entry.actor_type, entry.actor_id) == ("operator", str(world.operator_id))


async def stored(database: Database, org_id: uuid.UUID) -> dict[str, Any]:
    """The organisation's row, limits and audit entries, and the plan catalog, as stored."""
    async with database.session(readonly=True) as s:
        org = (
            await s.execute(sa.select(Organization.__table__).where(Organization.id == org_id))
        ).one()
        limits = (
            await s.execute(
                sa.select(UsageLimits.__table__).where(UsageLimits.organization_id == org_id)
            )
        ).all()
        audit = (
            await s.execute(sa.select(AuditLog.__table__).where(AuditLog.organization_id == org_id))
        ).all()
        plans = (
            await s.execute(
                sa.select(SubscriptionPlan.__table__).order_by(SubscriptionPlan.__table__.c.code)
            )
        ).all()
        plan_limits = (
            await s.execute(sa.select(PlanLimit.__table__).order_by(PlanLimit.__table__.c.id))
        ).all()
    return {
        "organization": tuple(org),
        "limits": [tuple(row) for row in limits],
        "audit": [tuple(row) for row in audit],
        "plans": [tuple(row) for row in plans],
        "plan_limits": [tuple(row) for row in plan_limits],
    }


async def create_org(world: World, **body: Any) -> dict[str, Any]:
    response = await world.client.post(
        "/v1/admin/organizations",
        json={"name": random_code("Org"), **body},
        headers=world.operator,
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1/admin")
        for method in operations
    )


class TestOnlyOperators:
    async def test_a_tenants_credentials_get_403_everywhere_and_change_nothing(
        self, world: World, tenant: Tenant
    ) -> None:
        routes = admin_routes(world.app)
        assert len(routes) >= 11, routes
        values = {"org_id": str(tenant.organization_id), "metric": "tokens", "code": world.plan}
        before = await stored(world.core.database, tenant.organization_id)
        for headers in (tenant.headers, tenant.key):
            for method, template in routes:
                path = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], template)
                response = await world.client.request(method, path, headers=headers)
                assert response.status_code == 403, (method, path, response.text)
                assert response.json()["error"]["code"] == "permission_denied"
        assert await stored(world.core.database, tenant.organization_id) == before

    async def test_without_credentials(self, world: World) -> None:
        response = await world.client.get("/v1/admin/organizations")
        assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthenticated")

    async def test_a_revoked_operator_key(self, world: World) -> None:
        key, raw = await world.core.api_keys.create_operator_key(name="leaver")
        await world.core.api_keys.revoke_operator_key(key.id)
        response = await world.client.get("/v1/admin/organizations", headers={"X-API-Key": raw})
        assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_token")


class TestOrganizations:
    async def test_create_on_a_plan(self, world: World) -> None:
        external_id = random_code("ext")
        body = await create_org(
            world,
            plan="pro",
            external_id=external_id,
            domain="Made.Example",
            billing_email="billing@made.example",
        )
        assert (body["plan"], body["status"], body["external_id"], body["domain"]) == (
            {"code": "pro", "name": "Pro"},
            "active",
            external_id,
            "made.example",
        )
        limits = {limit["metric"]: limit["limit"] for limit in body["limits"]}
        assert limits["tokens"] == 5_000_000
        [entry] = await entries(world, uuid.UUID(body["id"]), "organization.created")
        assert by_operator(world, entry)
        assert entry.details["plan"] == "pro"

        again = await world.client.post(
            "/v1/admin/organizations",
            json={"name": "Again", "external_id": external_id},
            headers=world.operator,
        )
        assert (again.status_code, again.json()["error"]["code"]) == (409, "organization_exists")

    @pytest.mark.parametrize(
        ("body", "status", "code"),
        [
            ({"name": "Nowhere", "plan": "platinum"}, 404, "plan_not_found"),
            ({"name": "Badly", "domain": "not a domain"}, 422, "invalid_input"),
            ({"plan": "pro"}, 422, "validation_error"),
        ],
    )
    async def test_create_refusals(
        self, world: World, body: dict[str, Any], status: int, code: str
    ) -> None:
        async with world.core.database.session(readonly=True) as s:
            before = await s.scalar(sa.select(sa.func.count()).select_from(Organization))
        response = await world.client.post(
            "/v1/admin/organizations", json=body, headers=world.operator
        )
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        async with world.core.database.session(readonly=True) as s:
            assert await s.scalar(sa.select(sa.func.count()).select_from(Organization)) == before

    async def test_list_pages_by_cursor_and_filters_by_status(self, world: World) -> None:
        made = [(await create_org(world))["id"] for _ in range(3)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = await world.client.get(
                "/v1/admin/organizations", params=params, headers=world.operator
            )
            assert page.status_code == 200, page.text
            assert len(page.json()["items"]) <= 2
            seen += [org["id"] for org in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert [org_id for org_id in seen if org_id in made] == made
        assert len(seen) == len(set(seen))

        await world.client.post(
            f"/v1/admin/organizations/{made[1]}/suspend",
            json={"reason": "test"},
            headers=world.operator,
        )
        suspended = await world.client.get(
            "/v1/admin/organizations",
            params={"status": "suspended", "limit": 200},
            headers=world.operator,
        )
        ids = [org["id"] for org in suspended.json()["items"]]
        assert made[1] in ids
        assert made[0] not in ids
        assert {org["status"] for org in suspended.json()["items"]} == {"suspended"}

    async def test_read_one(self, world: World, tenant: Tenant) -> None:
        response = await world.client.get(
            f"/v1/admin/organizations/{tenant.organization_id}", headers=world.operator
        )
        assert response.status_code == 200, response.text
        assert (response.json()["id"], response.json()["plan"]["code"]) == (
            str(tenant.organization_id),
            world.plan,
        )
        missing = await world.client.get(
            f"/v1/admin/organizations/{uuid.uuid4()}", headers=world.operator
        )
        assert (missing.status_code, missing.json()["error"]["code"]) == (
            404,
            "organization_not_found",
        )

    async def test_change_plan(self, world: World, tenant: Tenant) -> None:
        path = f"/v1/admin/organizations/{tenant.organization_id}/plan"
        response = await world.client.post(path, json={"plan": "business"}, headers=world.operator)
        assert response.status_code == 200, response.text
        assert response.json()["plan"]["code"] == "business"
        own = await world.client.get("/v1/organization", headers=tenant.key)
        assert own.json()["plan"]["code"] == "business"
        [entry] = [
            e
            for e in await entries(world, tenant.organization_id, "plan.changed")
            if by_operator(world, e)
        ]
        assert entry.details == {"from": world.plan, "to": "business"}

        for body, status, code in (
            ({"plan": "platinum"}, 404, "plan_not_found"),
            ({}, 422, "validation_error"),
        ):
            refused = await world.client.post(path, json=body, headers=world.operator)
            assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)
        lost = await world.client.post(
            f"/v1/admin/organizations/{uuid.uuid4()}/plan",
            json={"plan": "pro"},
            headers=world.operator,
        )
        assert (lost.status_code, lost.json()["error"]["code"]) == (404, "organization_not_found")
        assert await world.core.audit.verify(tenant.organization_id) == []


class TestLimitOverrides:
    async def test_set_and_clear(self, world: World, tenant: Tenant) -> None:
        org_id = tenant.organization_id
        await world.core.orgs.change_plan(org_id, "starter")  # 1,000 API calls a day
        path = f"/v1/admin/organizations/{org_id}/limits/api_calls"

        response = await world.client.put(path, json={"limit": 1}, headers=world.operator)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "metric": "api_calls",
            "limit": 1,
            "hard": True,
            "overridden": True,
        }
        assert not (await world.core.usage.check(org_id, "api_calls", 2)).allowed
        same = await world.client.put(path, json={"limit": 1, "hard": True}, headers=world.operator)
        assert same.status_code == 200
        [entry] = await entries(world, org_id, "limit.overridden")
        assert by_operator(world, entry)
        assert entry.details == {
            "metric": "api_calls",
            "from": None,
            "to": {"limit": 1, "hard": True},
        }

        unlimited = await world.client.put(path, json={"limit": None}, headers=world.operator)
        assert unlimited.json()["limit"] is None
        assert len(await entries(world, org_id, "limit.overridden")) == 2

        cleared = await world.client.delete(path, headers=world.operator)
        assert cleared.status_code == 200, cleared.text
        assert cleared.json() == {
            "metric": "api_calls",
            "limit": 1_000,
            "hard": True,
            "overridden": False,
        }
        again = await world.client.delete(path, headers=world.operator)
        assert again.json()["limit"] == 1_000
        [entry] = await entries(world, org_id, "limit.override_cleared")
        assert entry.details == {"metric": "api_calls", "from": {"limit": None, "hard": True}}
        assert await world.core.audit.verify(org_id) == []

    async def test_refusals_change_nothing(self, world: World, tenant: Tenant) -> None:
        org_id = tenant.organization_id
        before = await stored(world.core.database, org_id)
        base = f"/v1/admin/organizations/{org_id}/limits"
        for method, path, body, status, code in (
            ("PUT", f"{base}/no_such_meter", {"limit": 5}, 422, "unknown_metric"),
            ("PUT", f"{base}/tokens", {"limit": -5}, 422, "validation_error"),
            ("PUT", f"{base}/tokens", {"limit": 5, "soft": True}, 422, "validation_error"),
            (
                "PUT",
                f"/v1/admin/organizations/{uuid.uuid4()}/limits/tokens",
                {"limit": 5},
                404,
                "organization_not_found",
            ),
        ):
            response = await world.client.request(method, path, json=body, headers=world.operator)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        assert await stored(world.core.database, org_id) == before


class TestSuspension:
    async def test_suspend_then_resume(self, world: World, tenant: Tenant) -> None:
        org_id = tenant.organization_id
        base = f"/v1/admin/organizations/{org_id}"
        suspended = await world.client.post(
            f"{base}/suspend", json={"reason": "unpaid invoices"}, headers=world.operator
        )
        assert suspended.status_code == 200, suspended.text
        assert suspended.json()["status"] == "suspended"
        assert suspended.json()["suspended_at"] is not None
        for headers in (tenant.headers, tenant.key):
            refused = await world.client.get("/v1/me", headers=headers)
            assert (refused.status_code, refused.json()["error"]["code"]) == (
                403,
                "organization_suspended",
            )

        resumed = await world.client.post(f"{base}/resume", headers=world.operator)
        assert resumed.status_code == 200, resumed.text
        assert (resumed.json()["status"], resumed.json()["suspended_at"]) == ("active", None)
        for headers in (tenant.headers, tenant.key):
            assert (await world.client.get("/v1/me", headers=headers)).status_code == 200

        [stop] = await entries(world, org_id, "organization.suspended")
        [start] = await entries(world, org_id, "organization.resumed")
        assert by_operator(world, stop)
        assert by_operator(world, start)
        assert stop.details == {"reason": "unpaid invoices"}
        assert await world.core.audit.verify(org_id) == []

    async def test_a_reason_is_needed(self, world: World, tenant: Tenant) -> None:
        path = f"/v1/admin/organizations/{tenant.organization_id}/suspend"
        for body, code in (({}, "validation_error"), ({"reason": "  "}, "invalid_input")):
            response = await world.client.post(path, json=body, headers=world.operator)
            assert (response.status_code, response.json()["error"]["code"]) == (422, code)
        assert (await world.client.get("/v1/me", headers=tenant.key)).status_code == 200


class TestCreditGrants:
    async def test_grant_is_idempotent_on_its_key(self, world: World, tenant: Tenant) -> None:
        org_id = tenant.organization_id
        path = f"/v1/admin/organizations/{org_id}/credits/grants"
        body = {"amount": 500, "idempotency_key": "goodwill-1", "source": "promotion"}
        first = await world.client.post(path, json=body, headers=world.operator)
        assert first.status_code == 201, first.text
        assert (first.json()["type"], first.json()["amount"], first.json()["balance_after"]) == (
            "grant",
            500,
            500,
        )
        retry = await world.client.post(path, json=body, headers=world.operator)
        assert retry.status_code == 200, retry.text
        assert retry.json() == first.json()
        assert await world.core.credits.balance(org_id) == 500
        [entry] = await entries(world, org_id, "credits.granted")
        assert by_operator(world, entry)
        assert (entry.target_id, entry.details["amount"], entry.details["source"]) == (
            first.json()["id"],
            500,
            "promotion",
        )

        conflict = await world.client.post(
            path, json={**body, "amount": 501}, headers=world.operator
        )
        assert (conflict.status_code, conflict.json()["error"]["code"]) == (
            409,
            "idempotency_conflict",
        )
        assert await world.core.credits.balance(org_id) == 500
        assert len(await entries(world, org_id, "credits.granted")) == 1

    async def test_racing_retries_grant_once(self, world: World, tenant: Tenant) -> None:
        org_id = tenant.organization_id
        path = f"/v1/admin/organizations/{org_id}/credits/grants"
        body = {"amount": 70, "idempotency_key": "raced"}
        answers = await asyncio.gather(
            *(world.client.post(path, json=body, headers=world.operator) for _ in range(6))
        )
        assert sorted(answer.status_code for answer in answers) == [200] * 5 + [201]
        assert len({answer.json()["id"] for answer in answers}) == 1
        assert await world.core.credits.balance(org_id) == 70
        assert len(await entries(world, org_id, "credits.granted")) == 1

    async def test_refusals_grant_nothing(self, world: World, tenant: Tenant) -> None:
        org_id = tenant.organization_id
        path = f"/v1/admin/organizations/{org_id}/credits/grants"
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        for body, status, code in (
            ({"amount": 0, "idempotency_key": "a"}, 422, "validation_error"),
            ({"amount": 5}, 422, "validation_error"),
            ({"amount": 5, "idempotency_key": "b", "expires_at": past}, 422, "invalid_input"),
        ):
            response = await world.client.post(path, json=body, headers=world.operator)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        lost = await world.client.post(
            f"/v1/admin/organizations/{uuid.uuid4()}/credits/grants",
            json={"amount": 5, "idempotency_key": "c"},
            headers=world.operator,
        )
        assert (lost.status_code, lost.json()["error"]["code"]) == (404, "organization_not_found")
        assert await world.core.credits.balance(org_id) == 0
        assert await entries(world, org_id, "credits.granted") == []


class TestPlans:
    async def test_load_a_catalog_twice(self, world: World) -> None:
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
        first = await world.client.post(
            "/v1/admin/plans/load", json=catalog, headers=world.operator
        )
        assert first.status_code == 200, first.text
        assert first.json() == {
            "plans_created": [plan],
            "plans_updated": [],
            "meters_created": [meter],
            "meters_updated": [],
        }
        again = await world.client.post(
            "/v1/admin/plans/load", json=catalog, headers=world.operator
        )
        assert (again.json()["plans_updated"], again.json()["meters_updated"]) == ([plan], [meter])
        loaded = await world.core.plans.get_by_code(plan)
        assert (loaded.name, loaded.requests_per_minute) == ("Team", 60)
        assert [(limit.metric, limit.limit_value) for limit in loaded.limits] == [(meter, 5_000)]

    async def test_a_bad_catalog_loads_nothing(self, world: World) -> None:
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
            response = await world.client.post(
                "/v1/admin/plans/load", json=catalog, headers=world.operator
            )
            assert (response.status_code, response.json()["error"]["code"]) == (status, error)
        async with world.core.database.session(readonly=True) as s:
            count = await s.scalar(
                sa.select(sa.func.count()).where(SubscriptionPlan.code.startswith(code))
            )
        assert count == 0

    async def test_update_a_plan(self, world: World) -> None:
        async with world.core.database.transaction() as s:
            code = (await create_plan(s, requests_per_minute=10, max_users=5)).code
        response = await world.client.patch(
            f"/v1/admin/plans/{code}",
            json={
                "name": "Renamed",
                "is_active": False,
                "requests_per_minute": 60,
                "max_users": None,
                "limits": {"api_calls": {"limit": 10}},
            },
            headers=world.operator,
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
        stored_plan = await world.core.plans.get_by_code(code)
        assert (stored_plan.name, stored_plan.is_active, stored_plan.max_users) == (
            "Renamed",
            False,
            None,
        )

    async def test_update_refusals_change_nothing(self, world: World, tenant: Tenant) -> None:
        async with world.core.database.transaction() as s:
            code = (await create_plan(s)).code
        before = await stored(world.core.database, tenant.organization_id)
        for path, body, status, error in (
            (f"/v1/admin/plans/{code}", {"trial_days": -1}, 422, "invalid_input"),
            (f"/v1/admin/plans/{code}", {"prices": []}, 422, "validation_error"),
            (
                f"/v1/admin/plans/{code}",
                {"limits": {"no_such_meter": {"limit": 1}}},
                422,
                "invalid_input",
            ),
            ("/v1/admin/plans/platinum", {"name": "Platinum"}, 404, "plan_not_found"),
        ):
            response = await world.client.patch(path, json=body, headers=world.operator)
            assert (response.status_code, response.json()["error"]["code"]) == (status, error)
        assert await stored(world.core.database, tenant.organization_id) == before
