"""`/v1/users` and `/v1/organization` through the real app: what admins may do, what members,
viewers and narrow keys may not (403, and nothing changes), and the answers' codes; and the
operator routes `/v1/admin/organizations`: operators list, create, read, re-plan, suspend and
resume organisations, each change audited with the operator as the actor."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa

from saascore import Saascore
from saascore.kit.db import Database
from saascore.models import AuditLog, Organization, UsageLimits, User, UserRole
from saascore.testing import TestTenant
from tests.admin import Admin, by_operator, entries
from tests.factories import create_plan, random_code
from tests.http import api_app, serving
from tests.http import tenant as registered

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "a long enough password"


@dataclass
class World:
    client: httpx.AsyncClient
    core: Saascore
    #: A plan without rate limits or seat limits, so tests can make many requests.
    plan: str


@pytest_asyncio.fixture(loop_scope="session")
async def world(scratch: Database) -> AsyncIterator[World]:
    application, core = api_app(scratch, auth_requests_per_minute=None)
    async with serving(application, core) as client:
        async with scratch.transaction() as s:
            plan = (await create_plan(s)).code
        yield World(client, core, plan)


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(world: World) -> TestTenant:
    """An organisation registered over HTTP, on the world's plan (no rate or seat limits)."""
    return await registered(world.client, world.core.database, plan=world.plan)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def member_of(
    world: World, tenant: TestTenant, role: UserRole
) -> tuple[uuid.UUID, dict[str, str]]:
    """A user of the tenant with `role`, logged in: their id and headers."""
    email = f"{role.value}-{secrets.token_hex(4)}@example.com"
    user = await world.core.users.create(
        tenant.organization_id, email=email, role=role, password=PASSWORD
    )
    tokens = await world.core.identity.login(email=email, password=PASSWORD)
    return user.id, bearer(tokens.access_token)


async def key_of(world: World, tenant: TestTenant, *scopes: str) -> dict[str, str]:
    """An API key of the organisation acting for no user."""
    _, raw = await world.core.api_keys.create(tenant.organization_id, name="svc", scopes=scopes)
    return {"X-API-Key": raw}


async def snapshot(database: Database, org_id: uuid.UUID) -> dict[str, list[tuple[Any, ...]]]:
    """The organisation's row, users, audit entries and limits, as stored."""
    tables = {
        "organizations": (Organization.__table__, Organization.__table__.c.id),
        "users": (User.__table__, User.__table__.c.organization_id),
        "audit_logs": (AuditLog.__table__, AuditLog.__table__.c.organization_id),
        "usage_limits": (UsageLimits.__table__, UsageLimits.__table__.c.organization_id),
    }
    rows = {}
    async with database.session(readonly=True) as s:
        for name, (table, column) in tables.items():
            result = await s.execute(
                sa.select(table).where(column == org_id).order_by(*table.primary_key.columns)
            )
            rows[name] = [tuple(row) for row in result.all()]
    return rows


async def audit(world: World, org_id: uuid.UUID, action: str) -> list[AuditLog]:
    return list(await world.core.audit.list(org_id, action=action))


def admin_requests(user_id: uuid.UUID) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every request that needs the `admin` permission, with a valid body."""
    return [
        ("GET", "/v1/users", None),
        ("POST", "/v1/users", {"email": "new@example.com", "role": "member"}),
        ("GET", f"/v1/users/{user_id}", None),
        ("PATCH", f"/v1/users/{user_id}", {"role": "admin"}),
        ("DELETE", f"/v1/users/{user_id}", None),
        ("PATCH", "/v1/organization", {"name": "Taken over"}),
    ]


class TestPermissionTable:
    @pytest.mark.parametrize("role", [UserRole.MEMBER, UserRole.VIEWER])
    async def test_members_and_viewers_are_refused_and_nothing_changes(
        self, world: World, tenant: TestTenant, role: UserRole
    ) -> None:
        _, headers = await member_of(world, tenant, role)
        victim, _ = await member_of(world, tenant, UserRole.MEMBER)
        before = await snapshot(world.core.database, tenant.organization_id)
        for method, path, body in admin_requests(victim):
            response = await world.client.request(method, path, json=body, headers=headers)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "permission_denied"
        assert await snapshot(world.core.database, tenant.organization_id) == before

    async def test_a_key_without_the_admin_scope_is_refused(
        self, world: World, tenant: TestTenant
    ) -> None:
        headers = await key_of(world, tenant, "usage:read", "usage:write", "billing:read")
        victim, _ = await member_of(world, tenant, UserRole.MEMBER)
        before = await snapshot(world.core.database, tenant.organization_id)
        for method, path, body in admin_requests(victim):
            response = await world.client.request(method, path, json=body, headers=headers)
            assert response.status_code == 403, (method, path, response.text)
        assert await snapshot(world.core.database, tenant.organization_id) == before

    @pytest.mark.parametrize("role", [UserRole.MEMBER, UserRole.VIEWER])
    async def test_anyone_in_the_organisation_reads_it(
        self, world: World, tenant: TestTenant, role: UserRole
    ) -> None:
        _, headers = await member_of(world, tenant, role)
        response = await world.client.get("/v1/organization", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == str(tenant.organization_id)

    async def test_without_credentials(self, world: World) -> None:
        for method, path, body in admin_requests(uuid.uuid4()):
            response = await world.client.request(method, path, json=body)
            assert response.status_code == 401, (method, path)
        assert (await world.client.get("/v1/organization")).status_code == 401


class TestUsers:
    async def test_create_then_the_user_logs_in(self, world: World, tenant: TestTenant) -> None:
        email = f"grace-{secrets.token_hex(4)}@example.com"
        response = await world.client.post(
            "/v1/users",
            json={"email": email, "name": "Grace", "role": "admin", "password": PASSWORD},
            headers=tenant.headers,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["email"], body["full_name"], body["role"], body["is_active"]) == (
            email,
            "Grace",
            "admin",
            True,
        )
        login = await world.client.post(
            "/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        me = await world.client.get("/v1/me", headers=bearer(login.json()["access_token"]))
        assert (me.json()["role"], me.json()["user"]["id"]) == ("admin", body["id"])
        [entry] = await audit(world, tenant.organization_id, "user.created")
        assert (entry.actor_type, entry.actor_id, entry.target_id) == (
            "user",
            str(tenant.user_id),
            body["id"],
        )
        assert entry.ip_address == "127.0.0.1"

    async def test_list_pages_by_cursor(self, world: World, tenant: TestTenant) -> None:
        added = [(await member_of(world, tenant, UserRole.VIEWER))[0] for _ in range(3)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor is not None:
                params["cursor"] = cursor
            page = await world.client.get("/v1/users", params=params, headers=tenant.headers)
            assert page.status_code == 200, page.text
            seen += [item["id"] for item in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == [str(tenant.user_id), *map(str, added)]
        bad = await world.client.get("/v1/users?cursor=!!", headers=tenant.headers)
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_cursor")

    async def test_read_change_and_remove(self, world: World, tenant: TestTenant) -> None:
        user_id, user_headers = await member_of(world, tenant, UserRole.MEMBER)
        path = f"/v1/users/{user_id}"
        got = await world.client.get(path, headers=tenant.headers)
        assert (got.status_code, got.json()["role"]) == (200, "member")

        changed = await world.client.patch(
            path, json={"role": "viewer", "name": "Renamed"}, headers=tenant.headers
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["role"], changed.json()["full_name"]) == ("viewer", "Renamed")
        [entry] = await audit(world, tenant.organization_id, "user.role_changed")
        assert entry.details == {"from": "member", "to": "viewer"}

        off = await world.client.patch(path, json={"is_active": False}, headers=tenant.headers)
        assert (off.status_code, off.json()["is_active"]) == (200, False)
        refused = await world.client.get("/v1/me", headers=user_headers)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "account_disabled")

        gone = await world.client.delete(path, headers=tenant.headers)
        assert (gone.status_code, gone.content) == (204, b"")
        for method in ("GET", "PATCH", "DELETE"):
            again = await world.client.request(method, path, json={}, headers=tenant.headers)
            assert (again.status_code, again.json()["error"]["code"]) == (404, "user_not_found")

    async def test_the_last_owner_stays(self, world: World, tenant: TestTenant) -> None:
        path = f"/v1/users/{tenant.user_id}"
        for method, body in (("PATCH", {"role": "admin"}), ("PATCH", {"is_active": False})):
            response = await world.client.request(method, path, json=body, headers=tenant.headers)
            assert (response.status_code, response.json()["error"]["code"]) == (409, "last_owner")
        removed = await world.client.delete(path, headers=tenant.headers)
        assert (removed.status_code, removed.json()["error"]["code"]) == (409, "last_owner")
        me = await world.client.get("/v1/me", headers=tenant.headers)
        assert me.json()["role"] == "owner"

    async def test_an_owner_hands_over(self, world: World, tenant: TestTenant) -> None:
        heir, heir_headers = await member_of(world, tenant, UserRole.ADMIN)
        promote = await world.client.patch(
            f"/v1/users/{heir}", json={"role": "owner"}, headers=tenant.headers
        )
        assert (promote.status_code, promote.json()["role"]) == (200, "owner")
        step_down = await world.client.patch(
            f"/v1/users/{tenant.user_id}", json={"role": "admin"}, headers=heir_headers
        )
        assert (step_down.status_code, step_down.json()["role"]) == (200, "admin")

    async def test_only_owners_touch_owners(self, world: World, tenant: TestTenant) -> None:
        _, admin = await member_of(world, tenant, UserRole.ADMIN)
        before = await snapshot(world.core.database, tenant.organization_id)
        requests = [
            ("POST", "/v1/users", {"email": "boss@example.com", "role": "owner"}),
            ("PATCH", f"/v1/users/{tenant.user_id}", {"name": "Demoted"}),
            ("PATCH", f"/v1/users/{tenant.user_id}", {"password": "taken over at last"}),
            ("DELETE", f"/v1/users/{tenant.user_id}", None),
        ]
        for method, path, body in requests:
            response = await world.client.request(method, path, json=body, headers=admin)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "permission_denied"
        assert await snapshot(world.core.database, tenant.organization_id) == before
        made = await world.client.post(
            "/v1/users", json={"email": "helper@example.com", "role": "admin"}, headers=admin
        )
        assert made.status_code == 201, made.text

    async def test_an_admin_key_without_a_user_acts_as_an_admin(
        self, world: World, tenant: TestTenant
    ) -> None:
        key = await key_of(world, tenant, "admin")
        owner = await world.client.post(
            "/v1/users", json={"email": "o@example.com", "role": "owner"}, headers=key
        )
        assert (owner.status_code, owner.json()["error"]["code"]) == (403, "permission_denied")
        admin = await world.client.post(
            "/v1/users", json={"email": "a@example.com", "role": "admin"}, headers=key
        )
        assert admin.status_code == 201, admin.text
        [entry] = await audit(world, tenant.organization_id, "user.created")
        assert (entry.actor_type, entry.user_id) == ("api_key", None)

    @pytest.mark.parametrize(
        ("body", "status", "code"),
        [
            ({"email": "not-an-email"}, 422, "invalid_input"),
            ({"email": "x@example.com", "role": "emperor"}, 422, "validation_error"),
            ({"email": "x@example.com", "password": "short"}, 422, "weak_password"),
            ({"email": "x@example.com", "extra": 1}, 422, "validation_error"),
        ],
    )
    async def test_bad_input(
        self, world: World, tenant: TestTenant, body: dict[str, Any], status: int, code: str
    ) -> None:
        before = await snapshot(world.core.database, tenant.organization_id)
        response = await world.client.post("/v1/users", json=body, headers=tenant.headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        assert await snapshot(world.core.database, tenant.organization_id) == before

    async def test_a_taken_email(self, world: World, tenant: TestTenant) -> None:
        body = {"email": "twice@example.com"}
        assert (await world.client.post("/v1/users", json=body, headers=tenant.headers)).is_success
        again = await world.client.post("/v1/users", json=body, headers=tenant.headers)
        assert (again.status_code, again.json()["error"]["code"]) == (409, "user_exists")

    async def test_the_plans_seats(self, world: World) -> None:
        async with world.core.database.transaction() as s:
            plan = (await create_plan(s, max_users=2)).code
        tenant = await registered(world.client, world.core.database, plan=plan)
        first = await world.client.post(
            "/v1/users", json={"email": "one@example.com"}, headers=tenant.headers
        )
        assert first.status_code == 201, first.text
        second = await world.client.post(
            "/v1/users", json={"email": "two@example.com"}, headers=tenant.headers
        )
        assert (second.status_code, second.json()["error"]["code"]) == (402, "limit_exceeded")
        assert second.json()["error"]["details"] == {
            "metric": "users",
            "limit": 2,
            "used": 2,
            "requested": 1,
        }


class TestOrganization:
    async def test_read(self, world: World, tenant: TestTenant) -> None:
        response = await world.client.get("/v1/organization", headers=tenant.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["id"], body["status"], body["plan"]["code"]) == (
            str(tenant.organization_id),
            "active",
            world.plan,
        )
        assert (body["currency"], body["locale"], body["billing_email"]) == ("USD", "en", None)
        assert {limit["metric"] for limit in body["limits"]} >= {"tokens", "api_calls"}
        assert all(limit["used"] == 0 for limit in body["limits"])

    async def test_the_limits_are_the_organisations(self, world: World) -> None:
        tenant = await registered(world.client, world.core.database, plan="pro")
        # Pro's own rate limits: fine for these few requests.
        await world.core.usage.set_limit(tenant.organization_id, "api_calls", 7)
        body = (await world.client.get("/v1/organization", headers=tenant.headers)).json()
        limits = {limit["metric"]: limit for limit in body["limits"]}
        assert (limits["api_calls"]["limit"], limits["api_calls"]["remaining"]) == (7, 7)
        assert limits["tokens"]["limit"] == 5_000_000
        assert body["plan"] == {"code": "pro", "name": "Pro"}

    async def test_change(self, world: World, tenant: TestTenant) -> None:
        changes = {
            "name": "Renamed Ltd",
            "domain": "renamed.example",
            "billing_email": "Billing@Renamed.Example",
            "locale": "en-GB",
            "country": "gb",
            "currency": "gbp",
            "settings": {"theme": "dark"},
        }
        response = await world.client.patch(
            "/v1/organization", json=changes, headers=tenant.headers
        )
        assert response.status_code == 200, response.text
        again = (await world.client.get("/v1/organization", headers=tenant.headers)).json()
        assert {field: again[field] for field in changes} == {
            "name": "Renamed Ltd",
            "domain": "renamed.example",
            "billing_email": "billing@renamed.example",
            "locale": "en-GB",
            "country": "GB",
            "currency": "GBP",
            "settings": {"theme": "dark"},
        }
        [entry] = await audit(world, tenant.organization_id, "organization.updated")
        # A new country brings its default tax rate (docs/billing.md, "Tax").
        assert set(entry.details["changes"]) == {*changes, "tax_rate_bps"}
        assert entry.details["changes"]["tax_rate_bps"] == {"from": 0, "to": 2000}
        assert (entry.actor_type, entry.actor_id) == ("user", str(tenant.user_id))

        cleared = await world.client.patch(
            "/v1/organization", json={"domain": None, "name": None}, headers=tenant.headers
        )
        assert (cleared.json()["domain"], cleared.json()["name"]) == (None, "Renamed Ltd")

    @pytest.mark.parametrize(
        ("body", "code", "field"),
        [
            ({"country": "Britain"}, "validation_error", None),
            ({"country": "G1"}, "validation_error", None),  # the schema's pattern
            # Codes that are no country: they would mean a 0 % tax rate.
            ({"country": "XX"}, "invalid_input", "country"),
            ({"country": "UK"}, "invalid_input", "country"),
            ({"country": "EU"}, "invalid_input", "country"),
            ({"country": "ZZ"}, "invalid_input", "country"),
            ({"domain": "not a domain"}, "invalid_input", "domain"),
            ({"currency": "12"}, "validation_error", None),
            ({"billing_email": "nobody"}, "invalid_input", "billing_email"),
            ({"name": ""}, "validation_error", None),
            ({"slug": "mine"}, "validation_error", None),
        ],
    )
    async def test_bad_input_changes_nothing(
        self,
        world: World,
        tenant: TestTenant,
        body: dict[str, Any],
        code: str,
        field: str | None,
    ) -> None:
        before = await snapshot(world.core.database, tenant.organization_id)
        response = await world.client.patch(
            "/v1/organization", json={"locale": "fr", **body}, headers=tenant.headers
        )
        assert (response.status_code, response.json()["error"]["code"]) == (422, code)
        if field is not None:
            assert response.json()["error"]["details"]["field"] == field
        assert await snapshot(world.core.database, tenant.organization_id) == before

    async def test_billing_fields_need_billing_write(
        self, world: World, tenant: TestTenant
    ) -> None:
        key = await key_of(world, tenant, "admin", "usage:read")
        before = await snapshot(world.core.database, tenant.organization_id)
        bodies: tuple[dict[str, Any], ...] = (
            {"billing_email": "b@example.com"},
            {"currency": "EUR", "name": "X"},
            {"country": "US"},  # it sets the tax rate
        )
        for body in bodies:
            response = await world.client.patch("/v1/organization", json=body, headers=key)
            assert (response.status_code, response.json()["error"]["code"]) == (
                403,
                "permission_denied",
            )
        assert await snapshot(world.core.database, tenant.organization_id) == before
        renamed = await world.client.patch("/v1/organization", json={"name": "Y"}, headers=key)
        assert (renamed.status_code, renamed.json()["name"]) == (200, "Y")


# --- the operator routes: /v1/admin/organizations ------------------------------------------
async def create_org(admin: Admin, **body: Any) -> dict[str, Any]:
    response = await admin.client.post(
        "/v1/admin/organizations",
        json={"name": random_code("Org"), **body},
        headers=admin.operator,
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


class TestAdminOrganizations:
    async def test_create_on_a_plan(self, admin: Admin) -> None:
        external_id = random_code("ext")
        body = await create_org(
            admin,
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
        [entry] = await entries(admin, uuid.UUID(body["id"]), "organization.created")
        assert by_operator(admin, entry)
        assert entry.details["plan"] == "pro"

        again = await admin.client.post(
            "/v1/admin/organizations",
            json={"name": "Again", "external_id": external_id},
            headers=admin.operator,
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
        self, admin: Admin, body: dict[str, Any], status: int, code: str
    ) -> None:
        async with admin.core.database.session(readonly=True) as s:
            before = await s.scalar(sa.select(sa.func.count()).select_from(Organization))
        response = await admin.client.post(
            "/v1/admin/organizations", json=body, headers=admin.operator
        )
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        async with admin.core.database.session(readonly=True) as s:
            assert await s.scalar(sa.select(sa.func.count()).select_from(Organization)) == before

    async def test_list_pages_by_cursor_and_filters_by_status(self, admin: Admin) -> None:
        made = [(await create_org(admin))["id"] for _ in range(3)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = await admin.client.get(
                "/v1/admin/organizations", params=params, headers=admin.operator
            )
            assert page.status_code == 200, page.text
            assert len(page.json()["items"]) <= 2
            seen += [org["id"] for org in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert [org_id for org_id in seen if org_id in made] == made
        assert len(seen) == len(set(seen))

        await admin.client.post(
            f"/v1/admin/organizations/{made[1]}/suspend",
            json={"reason": "test"},
            headers=admin.operator,
        )
        suspended = await admin.client.get(
            "/v1/admin/organizations",
            params={"status": "suspended", "limit": 200},
            headers=admin.operator,
        )
        ids = [org["id"] for org in suspended.json()["items"]]
        assert made[1] in ids
        assert made[0] not in ids
        assert {org["status"] for org in suspended.json()["items"]} == {"suspended"}

    async def test_read_one(self, admin: Admin, customer: TestTenant) -> None:
        response = await admin.client.get(
            f"/v1/admin/organizations/{customer.organization_id}", headers=admin.operator
        )
        assert response.status_code == 200, response.text
        assert (response.json()["id"], response.json()["plan"]["code"]) == (
            str(customer.organization_id),
            admin.plan,
        )
        missing = await admin.client.get(
            f"/v1/admin/organizations/{uuid.uuid4()}", headers=admin.operator
        )
        assert (missing.status_code, missing.json()["error"]["code"]) == (
            404,
            "organization_not_found",
        )

    async def test_change_plan(self, admin: Admin, customer: TestTenant) -> None:
        path = f"/v1/admin/organizations/{customer.organization_id}/plan"
        response = await admin.client.post(path, json={"plan": "business"}, headers=admin.operator)
        assert response.status_code == 200, response.text
        assert response.json()["plan"]["code"] == "business"
        own = await admin.client.get("/v1/organization", headers=customer.key_headers)
        assert own.json()["plan"]["code"] == "business"
        [entry] = [
            e
            for e in await entries(admin, customer.organization_id, "plan.changed")
            if by_operator(admin, e)
        ]
        assert entry.details == {"from": admin.plan, "to": "business"}

        for body, status, code in (
            ({"plan": "platinum"}, 404, "plan_not_found"),
            ({}, 422, "validation_error"),
        ):
            refused = await admin.client.post(path, json=body, headers=admin.operator)
            assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)
        lost = await admin.client.post(
            f"/v1/admin/organizations/{uuid.uuid4()}/plan",
            json={"plan": "pro"},
            headers=admin.operator,
        )
        assert (lost.status_code, lost.json()["error"]["code"]) == (404, "organization_not_found")
        assert await admin.core.audit.verify(customer.organization_id) == []


class TestAdminSuspension:
    async def test_suspend_then_resume(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        base = f"/v1/admin/organizations/{org_id}"
        suspended = await admin.client.post(
            f"{base}/suspend", json={"reason": "unpaid invoices"}, headers=admin.operator
        )
        assert suspended.status_code == 200, suspended.text
        assert suspended.json()["status"] == "suspended"
        assert suspended.json()["suspended_at"] is not None
        for headers in (customer.headers, customer.key_headers):
            refused = await admin.client.get("/v1/me", headers=headers)
            assert (refused.status_code, refused.json()["error"]["code"]) == (
                403,
                "organization_suspended",
            )

        resumed = await admin.client.post(f"{base}/resume", headers=admin.operator)
        assert resumed.status_code == 200, resumed.text
        assert (resumed.json()["status"], resumed.json()["suspended_at"]) == ("active", None)
        for headers in (customer.headers, customer.key_headers):
            assert (await admin.client.get("/v1/me", headers=headers)).status_code == 200

        [stop] = await entries(admin, org_id, "organization.suspended")
        [start] = await entries(admin, org_id, "organization.resumed")
        assert by_operator(admin, stop)
        assert by_operator(admin, start)
        assert stop.details == {"reason": "unpaid invoices"}
        assert await admin.core.audit.verify(org_id) == []

    async def test_a_reason_is_needed(self, admin: Admin, customer: TestTenant) -> None:
        path = f"/v1/admin/organizations/{customer.organization_id}/suspend"
        for body, code in (({}, "validation_error"), ({"reason": "  "}, "invalid_input")):
            response = await admin.client.post(path, json=body, headers=admin.operator)
            assert (response.status_code, response.json()["error"]["code"]) == (422, code)
        assert (await admin.client.get("/v1/me", headers=customer.key_headers)).status_code == 200
