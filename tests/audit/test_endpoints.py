"""`GET /v1/audit-logs` through the real app: admins only, their organisation only, paged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from saascore.kit.db import Database
from saascore.kit.pagination import encode_cursor
from saascore.models import UserRole
from tests.identity.support import Served, add_user, register, served

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def app(scratch: Database) -> AsyncIterator[Served]:
    async with served(scratch) as application:
        yield application


async def key_for(app: Served, headers: dict[str, str], *scopes: str) -> dict[str, str]:
    created = await app.client.post(
        "/v1/api-keys", json={"name": "audit reader", "scopes": list(scopes)}, headers=headers
    )
    assert created.status_code == 201, created.text
    return {"X-API-Key": created.json()["key"]}


class TestEntries:
    async def test_newest_first_with_who_where_and_the_chain(self, app: Served) -> None:
        owner = await register(app)
        created = await app.client.post(
            "/v1/api-keys",
            json={"name": "ingest", "scopes": ["usage:write"]},
            headers={**owner.headers, "User-Agent": "audit-test/1", "X-Request-ID": "req-audit-1"},
        )
        assert created.status_code == 201, created.text

        response = await app.client.get("/v1/audit-logs", headers=owner.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["next_cursor"] is None
        newest, registered, granted, opened = page["items"]
        assert (newest["seq"], newest["action"]) == (4, "api_key.created")
        assert (registered["seq"], registered["action"]) == (3, "user.registered")
        assert (granted["seq"], granted["action"]) == (2, "credits.granted")  # the plan's
        assert (opened["seq"], opened["action"]) == (1, "organization.created")
        assert newest["prev_hash"] == registered["hash"]
        assert registered["prev_hash"] == granted["hash"]
        assert opened["prev_hash"] is None
        assert newest["actor_type"] == "user"
        assert newest["actor_id"] == str(owner.user_id)
        assert newest["user_id"] == str(owner.user_id)
        assert (newest["target_type"], newest["target_id"]) == ("api_key", created.json()["id"])
        assert newest["ip_address"] == "127.0.0.1"
        assert newest["user_agent"] == "audit-test/1"
        assert newest["request_id"] == "req-audit-1"
        assert newest["details"] == {
            "key_id": created.json()["id"],
            "name": "ingest",
            "prefix": created.json()["key_prefix"],
            "scopes": ["usage:write"],
            "user_id": str(owner.user_id),
            "expires_at": None,
        }
        assert len(newest["hash"]) == 64
        assert newest["created_at"] >= registered["created_at"]

    async def test_pages_by_cursor_and_filters_by_action(self, app: Served) -> None:
        owner = await register(app)
        for n in range(4):
            created = await app.client.post(
                "/v1/api-keys", json={"name": f"k{n}"}, headers=owner.headers
            )
            assert created.status_code == 201, created.text
        seen: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            response = await app.client.get("/v1/audit-logs", params=params, headers=owner.headers)
            assert response.status_code == 200, response.text
            seen += [item["seq"] for item in response.json()["items"]]
            cursor = response.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == [7, 6, 5, 4, 3, 2, 1]

        only = await app.client.get(
            "/v1/audit-logs", params={"action": "user.registered"}, headers=owner.headers
        )
        assert [item["action"] for item in only.json()["items"]] == ["user.registered"]
        none = await app.client.get(
            "/v1/audit-logs", params={"action": "no.such.action"}, headers=owner.headers
        )
        assert none.json() == {"items": [], "next_cursor": None}

    @pytest.mark.parametrize("cursor", ["not base64 !", encode_cursor("x"), encode_cursor(2**63)])
    async def test_a_cursor_it_did_not_give_out_is_refused(self, app: Served, cursor: str) -> None:
        owner = await register(app)
        response = await app.client.get(
            "/v1/audit-logs", params={"cursor": cursor}, headers=owner.headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_cursor"

    async def test_only_the_callers_organisation(self, app: Served) -> None:
        first = await register(app)
        second = await register(app)
        admin_key = await key_for(app, second.headers, "admin")
        for headers in (second.headers, admin_key):
            response = await app.client.get("/v1/audit-logs", headers=headers)
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            assert [item["action"] for item in items] == [
                "api_key.created",
                "user.registered",
                "credits.granted",
                "organization.created",
            ]
            assert str(first.user_id) not in {item["actor_id"] for item in items}
            assert str(first.user_id) not in {item["target_id"] for item in items}


class TestPermissions:
    @pytest.mark.parametrize("role", [UserRole.VIEWER, UserRole.MEMBER])
    async def test_viewers_and_members_are_refused(self, app: Served, role: UserRole) -> None:
        owner = await register(app)
        user = await add_user(app, owner, role)
        response = await app.client.get("/v1/audit-logs", headers=user.headers)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"

    async def test_a_key_without_admin_is_refused(self, app: Served) -> None:
        owner = await register(app)
        key = await key_for(app, owner.headers, "usage:read", "billing:read")
        response = await app.client.get("/v1/audit-logs", headers=key)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"

    async def test_an_operator_has_no_organisation_to_read(self, app: Served) -> None:
        _, raw = await app.core.api_keys.create_operator_key(name="staff")
        response = await app.client.get("/v1/audit-logs", headers={"X-API-Key": raw})
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"

    async def test_no_credentials(self, app: Served) -> None:
        response = await app.client.get("/v1/audit-logs")
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthenticated"
