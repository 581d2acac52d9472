"""`/v1/api-keys` through the real app: the key shown once, lists without it, who sees what."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.models import ApiKey, UserRole
from tests.http import tenant
from tests.identity.support import Served, add_user, audit_actions, register

pytestmark = pytest.mark.asyncio(loop_scope="session")


class TestCreate:
    async def test_the_key_is_shown_once_and_only_its_hash_is_kept(self, app: Served) -> None:
        owner = await register(app)
        created = await app.client.post(
            "/v1/api-keys",
            json={"name": "ingest", "scopes": ["usage:write", "usage:read"], "environment": "test"},
            headers=owner.headers,
        )
        assert created.status_code == 201, created.text
        body = created.json()
        raw = body["key"]
        assert raw.startswith("sk_test_")
        assert raw.startswith(body["key_prefix"])
        assert len(body["key_prefix"]) == len("sk_test_") + 8
        assert body["scopes"] == ["usage:read", "usage:write"]
        async with app.database.session(readonly=True) as s:
            stored = await s.scalar(sa.select(ApiKey).where(ApiKey.id == uuid.UUID(body["id"])))
        assert stored is not None
        assert stored.key_hash == hashlib.sha256(raw.encode()).hexdigest()

        listed = await app.client.get("/v1/api-keys", headers=owner.headers)
        assert listed.status_code == 200, listed.text
        (item,) = listed.json()["items"]
        assert item["id"] == body["id"]
        assert "key" not in item
        assert raw not in listed.text
        assert (await audit_actions(app.database, owner.organization_id))[-1] == "api_key.created"

    async def test_accepted_as_x_api_key_or_bearer(self, app: Served) -> None:
        owner = await register(app)
        created = await app.client.post(
            "/v1/api-keys", json={"name": "k", "scopes": ["usage:read"]}, headers=owner.headers
        )
        raw = created.json()["key"]
        for headers in ({"X-API-Key": raw}, {"Authorization": f"Bearer {raw}"}):
            me = await app.client.get("/v1/me", headers=headers)
            assert me.status_code == 200, me.text
            assert (me.json()["kind"], me.json()["id"]) == ("api_key", created.json()["id"])
            assert me.json()["permissions"] == ["usage:read"]

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"name": "k", "scopes": ["usage:root"]}, "validation_error"),
            ({"name": "k", "scopes": []}, "validation_error"),
            ({"name": "   ", "scopes": ["usage:read"]}, "invalid_input"),
            ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "invalid_input"),
            ({"name": "k", "expires_at": "2999-01-01T00:00:00"}, "validation_error"),
        ],
    )
    async def test_bad_input_writes_nothing(
        self, app: Served, body: dict[str, object], code: str
    ) -> None:
        owner = await register(app)
        response = await app.client.post("/v1/api-keys", json=body, headers=owner.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
        assert (await audit_actions(app.database, owner.organization_id))[-1] == "user.registered"


class TestListAndRevoke:
    async def test_pages_newest_first(self, app: Served) -> None:
        owner = await register(app)
        ids = []
        for n in range(3):
            created = await app.client.post(
                "/v1/api-keys", json={"name": f"k{n}"}, headers=owner.headers
            )
            ids.append(created.json()["id"])
        first = await app.client.get("/v1/api-keys?limit=2", headers=owner.headers)
        assert [item["id"] for item in first.json()["items"]] == ids[:0:-1]
        cursor = first.json()["next_cursor"]
        second = await app.client.get(
            f"/v1/api-keys?limit=2&cursor={cursor}", headers=owner.headers
        )
        assert [item["id"] for item in second.json()["items"]] == ids[:1]
        assert second.json()["next_cursor"] is None

    async def test_members_see_and_revoke_their_own_admins_everyones(self, app: Served) -> None:
        owner = await register(app)
        member = await add_user(app, owner, UserRole.MEMBER)
        mine = await app.client.post("/v1/api-keys", json={"name": "m"}, headers=member.headers)
        theirs = await app.client.post("/v1/api-keys", json={"name": "o"}, headers=owner.headers)
        listed = await app.client.get("/v1/api-keys", headers=member.headers)
        assert [item["id"] for item in listed.json()["items"]] == [mine.json()["id"]]
        everyone = await app.client.get("/v1/api-keys", headers=owner.headers)
        assert {item["id"] for item in everyone.json()["items"]} == {
            mine.json()["id"],
            theirs.json()["id"],
        }

        revoked = await app.client.delete(
            f"/v1/api-keys/{mine.json()['id']}", headers=member.headers
        )
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        again = await app.client.delete(f"/v1/api-keys/{mine.json()['id']}", headers=owner.headers)
        assert again.json()["revoked_at"] == revoked.json()["revoked_at"]  # once, idempotent
        assert (await audit_actions(app.database, owner.organization_id)).count(
            "api_key.revoked"
        ) == 1

        active = await app.client.get("/v1/api-keys", headers=owner.headers)
        assert [item["id"] for item in active.json()["items"]] == [theirs.json()["id"]]
        every = await app.client.get("/v1/api-keys?include_revoked=true", headers=owner.headers)
        assert len(every.json()["items"]) == 2

    async def test_another_organisations_key_is_not_found(self, app: Served) -> None:
        first = await register(app)
        second = await register(app)
        key = await app.client.post("/v1/api-keys", json={"name": "k"}, headers=first.headers)
        response = await app.client.delete(
            f"/v1/api-keys/{key.json()['id']}", headers=second.headers
        )
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "api_key_not_found"
        still = await app.client.get("/v1/me", headers={"X-API-Key": key.json()["key"]})
        assert still.status_code == 200


class TestKeysManagingKeys:
    """A key without `admin` manages no key, not even its user's: a leaked read-only key must
    not mint a successor or revoke its user's other keys."""

    async def test_a_key_without_admin_cannot_create_list_or_revoke_keys(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        owner = (await tenant(api, scratch)).headers
        made = await api.post(
            "/v1/api-keys", json={"name": "reader", "scopes": ["usage:read"]}, headers=owner
        )
        other = await api.post("/v1/api-keys", json={"name": "writer"}, headers=owner)
        assert made.status_code == other.status_code == 201
        reader = {"X-API-Key": made.json()["key"]}
        minted = await api.post(
            "/v1/api-keys", json={"name": "successor", "scopes": ["usage:read"]}, headers=reader
        )
        assert minted.status_code == 403, minted.text
        assert minted.json()["error"]["code"] == "permission_denied"
        revoked = await api.delete(f"/v1/api-keys/{other.json()['id']}", headers=reader)
        assert revoked.status_code == 403
        listed = await api.get("/v1/api-keys", headers=owner)
        assert {key["name"] for key in listed.json()["items"]} == {"reader", "writer"}
