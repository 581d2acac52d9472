"""Authentication attacks through the real app: each is refused with its status and code, and
writes nothing (no row anywhere, no audit entry) beyond what the refusal itself must record."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa

from saascore.identity import ApiKeyService
from saascore.models import (
    ApiKey,
    Organization,
    OrganizationStatus,
    RefreshToken,
    User,
    UserRole,
)
from saascore.testing import TestTenant
from tests.helpers import Clock, only_postgresql
from tests.identity.support import (
    Served,
    add_user,
    audit_actions,
    login,
    register,
    table_counts,
    written_since,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def forge(app: Served, account: TestTenant, *, key: str | None = None, **claims: Any) -> str:
    """An HS256 token for `account` built with PyJWT, as an attacker would: valid unless
    `claims` change it (a claim set to None is left out)."""
    settings = app.core.settings
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(account.user_id),
        "org": str(account.organization_id),
        "typ": "access",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    algorithm = "none" if key == "none" else "HS256"
    signing_key = None if key == "none" else (key or app.core.identity.tokens.key)
    return jwt.encode(payload, signing_key, algorithm=algorithm)


async def create_key(app: Served, account: TestTenant, *scopes: str) -> dict[str, Any]:
    response = await app.client.post(
        "/v1/api-keys", json={"name": "attack", "scopes": list(scopes)}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused(
    app: Served,
    method: str,
    path: str,
    headers: dict[str, str] | None,
    status: int,
    code: str,
    json: Any = None,
) -> httpx.Response:
    """Send the request, assert its refusal, and that it wrote nothing."""
    before = await table_counts(app.database)
    response = await app.client.request(method, path, headers=headers, json=json)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    assert await written_since(app.database, before) == {}
    return response


NEW_KEY = {"name": "stolen", "scopes": ["admin"]}


class TestAccessTokens:
    async def test_a_well_forged_token_is_accepted(self, app: Served) -> None:
        """The control: with the service's key and every claim right, a token built by hand
        works, so each refusal below is due to the one thing it changes."""
        owner = await register(app)
        response = await app.client.get("/v1/me", headers=bearer(forge(app, owner)))
        assert response.status_code == 200, response.text
        assert response.json()["id"] == str(owner.user_id)

    @pytest.mark.parametrize(
        "claims",
        [
            pytest.param({"exp": -60, "iat": -1000, "nbf": -1000}, id="expired"),
            pytest.param({"nbf": 600}, id="not-yet-valid"),
            pytest.param({"iat": 600}, id="issued-in-the-future"),
            pytest.param({"aud": "another-api"}, id="wrong-audience"),
            pytest.param({"iss": "someone-else"}, id="wrong-issuer"),
            pytest.param({"typ": "refresh", "fam": str(uuid.uuid4())}, id="refresh-as-access"),
            pytest.param({"typ": "id"}, id="unknown-type"),
            pytest.param({"org": None}, id="no-organisation"),
            pytest.param({"exp": None}, id="no-expiry"),
            pytest.param({"sub": "not-a-uuid"}, id="bad-subject"),
            # Past the end of the calendar: 401, never an OverflowError's 500.
            pytest.param({"exp": 2**70}, id="exp-2**70"),
            pytest.param({"exp": 1e308}, id="exp-1e308"),
            pytest.param({"exp": float("inf")}, id="exp-infinite"),
            pytest.param({"exp": float("nan")}, id="exp-nan"),
            pytest.param({"iat": -1e308}, id="iat-minus-1e308"),
            pytest.param({"iat": -(2**70)}, id="iat-minus-2**70"),
            pytest.param({"nbf": -1e308}, id="nbf-minus-1e308"),
            pytest.param({"exp": 253_402_300_800}, id="exp-after-9999"),
        ],
    )
    async def test_claims_that_do_not_hold(self, app: Served, claims: dict[str, Any]) -> None:
        owner = await register(app)
        now = int(time.time())
        for name in ("exp", "iat", "nbf"):  # offsets from now
            if isinstance(claims.get(name), int):
                claims = {**claims, name: now + claims[name]}
        token = forge(app, owner, **claims)
        await refused(app, "POST", "/v1/api-keys", bearer(token), 401, "invalid_token", NEW_KEY)

    async def test_alg_none(self, app: Served) -> None:
        owner = await register(app)
        token = forge(app, owner, key="none")
        assert jwt.get_unverified_header(token)["alg"] == "none"
        await refused(app, "POST", "/v1/api-keys", bearer(token), 401, "invalid_token", NEW_KEY)

    async def test_signed_with_another_key(self, app: Served) -> None:
        owner = await register(app)
        token = forge(app, owner, key="an attacker's key, long enough for HS256 to accept it")
        await refused(app, "POST", "/v1/api-keys", bearer(token), 401, "invalid_token", NEW_KEY)

    async def test_another_algorithm_with_the_right_key(self, app: Served) -> None:
        owner = await register(app)
        payload = jwt.decode(
            forge(app, owner), options={"verify_signature": False}, algorithms=["HS256"]
        )
        token = jwt.encode(payload, app.core.identity.tokens.key, algorithm="HS512")
        await refused(app, "POST", "/v1/api-keys", bearer(token), 401, "invalid_token", NEW_KEY)

    async def test_a_tampered_organisation(self, app: Served) -> None:
        """A real token whose payload is edited to name another organisation (the signature
        no longer matches)."""
        owner = await register(app)
        other = await register(app)
        header, _, signature = owner.access_token.split(".")
        payload = jwt.decode(
            owner.access_token, options={"verify_signature": False}, algorithms=["HS256"]
        )
        edited = jwt.encode({**payload, "org": str(other.organization_id)}, "x" * 32).split(".")
        token = ".".join([header, edited[1], signature])
        await refused(app, "GET", "/v1/audit-logs", bearer(token), 401, "invalid_token")

    async def test_a_deleted_user(self, app: Served) -> None:
        owner = await register(app)
        member = await add_user(app, owner, UserRole.MEMBER)
        await app.core.users.delete(owner.organization_id, member.user_id)
        await refused(app, "GET", "/v1/me", member.headers, 401, "invalid_token")
        key = {"name": "k", "scopes": ["usage:read"]}
        await refused(app, "POST", "/v1/api-keys", member.headers, 401, "invalid_token", key)
        body = {"refresh_token": member.refresh_token}
        await refused(app, "POST", "/v1/auth/refresh", None, 401, "invalid_token", body)

    async def test_a_disabled_user(self, app: Served) -> None:
        owner = await register(app)
        member = await add_user(app, owner, UserRole.MEMBER)
        # Disabled behind the service's back: identity's own check, not the session revocation
        # that deactivating through UserService also does.
        async with app.database.transaction() as s:
            await s.execute(
                sa.update(User)
                .where(User.organization_id == owner.organization_id, User.id == member.user_id)
                .values(is_active=False)
            )
        await refused(app, "GET", "/v1/me", member.headers, 403, "account_disabled")
        body = {"refresh_token": member.refresh_token}
        await refused(app, "POST", "/v1/auth/refresh", None, 403, "account_disabled", body)

    async def test_an_access_token_is_no_refresh_token(self, app: Served) -> None:
        owner = await register(app)
        body = {"refresh_token": owner.access_token}
        await refused(app, "POST", "/v1/auth/refresh", None, 401, "invalid_token", body)
        await refused(app, "POST", "/v1/auth/logout", None, 401, "invalid_token", body)

    async def test_a_refresh_token_is_no_access_token(self, app: Served) -> None:
        owner = await register(app)
        headers = bearer(owner.refresh_token)
        await refused(app, "POST", "/v1/api-keys", headers, 401, "invalid_token", NEW_KEY)

    async def test_garbage(self, app: Served) -> None:
        await refused(app, "GET", "/v1/me", bearer("not.a.token"), 401, "invalid_token")
        await refused(app, "GET", "/v1/me", {"X-API-Key": "sk_live_nope"}, 401, "invalid_token")
        await refused(app, "GET", "/v1/me", {"X-API-Key": "sk_op_nope"}, 401, "invalid_token")
        await refused(app, "GET", "/v1/me", None, 401, "unauthenticated")


class TestApiKeys:
    async def test_a_revoked_key(self, app: Served) -> None:
        owner = await register(app)
        key = await create_key(app, owner, "admin")
        revoked = await app.client.delete(f"/v1/api-keys/{key['id']}", headers=owner.headers)
        assert revoked.status_code == 200, revoked.text
        for headers in ({"X-API-Key": key["key"]}, bearer(key["key"])):
            await refused(app, "POST", "/v1/api-keys", headers, 401, "invalid_token", NEW_KEY)
        assert await last_used(app, key["id"]) is None

    async def test_two_different_credentials_are_refused(self, app: Served) -> None:
        """Beside a valid key, a bearer token that is not the same (or is garbage) is refused,
        whichever of the two is the valid one; the same key in both places is one credential."""
        owner = await register(app)
        key = (await create_key(app, owner, "admin"))["key"]
        for headers in (
            {"X-API-Key": key, **bearer("garbage")},
            {"X-API-Key": "sk_live_garbage", **owner.headers},
            {"X-API-Key": key, **owner.headers},
        ):
            await refused(app, "POST", "/v1/api-keys", headers, 401, "unauthenticated", NEW_KEY)
        same = await app.client.get("/v1/api-keys", headers={"X-API-Key": key, **bearer(key)})
        assert same.status_code == 200, same.text
        empty = await app.client.get("/v1/api-keys", headers={"X-API-Key": "", **bearer(key)})
        assert empty.status_code == 200, empty.text

    async def test_an_expired_key(self, app: Served) -> None:
        owner = await register(app)
        clock = Clock(app.core.identity.clock() - timedelta(hours=2))
        keys = ApiKeyService(app.database, app.core.events, clock=clock)
        row, raw = await keys.create(
            owner.organization_id,
            name="short-lived",
            scopes=["admin"],
            expires_at=clock.now + timedelta(hours=1),
        )
        headers = {"X-API-Key": raw}
        await refused(app, "POST", "/v1/api-keys", headers, 401, "invalid_token", NEW_KEY)
        assert await last_used(app, str(row.id)) is None

    async def test_an_expired_operator_key(self, app: Served) -> None:
        clock = Clock(app.core.identity.clock() - timedelta(hours=2))
        keys = ApiKeyService(app.database, app.core.events, clock=clock)
        _, raw = await keys.create_operator_key(
            name="temp", expires_at=clock.now + timedelta(hours=1)
        )
        await refused(app, "GET", "/v1/me", {"X-API-Key": raw}, 401, "invalid_token")

    async def test_a_revoked_operator_key(self, app: Served) -> None:
        row, raw = await app.core.api_keys.create_operator_key(name="gone")
        await app.core.api_keys.revoke_operator_key(row.id)
        await refused(app, "GET", "/v1/me", {"X-API-Key": raw}, 401, "invalid_token")

    async def test_a_suspended_organisations_key_and_token(self, app: Served) -> None:
        owner = await register(app)
        key = await create_key(app, owner, "admin", "usage:read")
        async with app.database.transaction() as s:
            await s.execute(
                sa.update(Organization)
                .where(Organization.id == owner.organization_id)
                .values(status=OrganizationStatus.SUSPENDED)
            )
        for headers in ({"X-API-Key": key["key"]}, owner.headers):
            await refused(
                app, "POST", "/v1/api-keys", headers, 403, "organization_suspended", NEW_KEY
            )
        before = await table_counts(app.database)
        response = await login(app, owner.email, owner.password)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "organization_suspended"
        assert await written_since(app.database, before) == {}


async def last_used(app: Served, key_id: str) -> object:
    async with app.database.session(readonly=True) as s:
        return await s.scalar(sa.select(ApiKey.last_used_at).where(ApiKey.id == uuid.UUID(key_id)))


class TestRefreshTokens:
    async def test_reuse_after_rotation_revokes_the_family(self, app: Served) -> None:
        owner = await register(app)
        first = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": owner.refresh_token}
        )
        assert first.status_code == 200, first.text
        second = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": first.json()["refresh_token"]}
        )
        assert second.status_code == 200, second.text
        newest = second.json()["refresh_token"]

        before = await table_counts(app.database)
        reused = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": owner.refresh_token}
        )
        assert reused.status_code == 401, reused.text
        assert reused.json()["error"]["code"] == "token_reused"
        assert await written_since(app.database, before) == {"audit_logs": 1}
        assert (await audit_actions(app.database, owner.organization_id))[-1] == (
            "auth.refresh_token_reused"
        )

        # The newest token of the family, never used, stops working too.
        await refused(
            app, "POST", "/v1/auth/refresh", None, 401, "invalid_token", {"refresh_token": newest}
        )
        async with app.database.session(readonly=True) as s:
            family = (
                await s.execute(
                    sa.select(RefreshToken.revoked_at, RefreshToken.replaced_by_id).where(
                        RefreshToken.organization_id == owner.organization_id
                    )
                )
            ).all()
        assert len(family) == 3
        assert all(row.revoked_at is not None for row in family)
        assert sum(row.replaced_by_id is None for row in family) == 1  # the newest

    async def test_another_login_is_another_family(self, app: Served) -> None:
        owner = await register(app)
        other = await login(app, owner.email, owner.password)
        assert other.status_code == 200, other.text
        rotated = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": owner.refresh_token}
        )
        assert rotated.status_code == 200
        reused = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": owner.refresh_token}
        )
        assert reused.json()["error"]["code"] == "token_reused"
        still = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": other.json()["refresh_token"]}
        )
        assert still.status_code == 200, still.text

    @only_postgresql
    async def test_concurrent_refreshes_of_one_token(self, app: Served) -> None:
        owner = await register(app)
        body = {"refresh_token": owner.refresh_token}
        responses = await asyncio.gather(
            *(app.client.post("/v1/auth/refresh", json=body) for _ in range(8))
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] + [401] * 7, [r.text for r in responses]
        codes = {r.json()["error"]["code"] for r in responses if r.status_code == 401}
        assert codes <= {"token_reused", "invalid_token"}
        async with app.database.session(readonly=True) as s:
            issued = await s.scalar(
                sa.select(sa.func.count())
                .select_from(RefreshToken)
                .where(RefreshToken.organization_id == owner.organization_id)
            )
        assert issued == 2  # the spent token and the one successor


class TestPermissions:
    async def test_a_viewer_cannot_make_an_admin_key(self, app: Served) -> None:
        owner = await register(app)
        viewer = await add_user(app, owner, UserRole.VIEWER)
        response = await refused(
            app, "POST", "/v1/api-keys", viewer.headers, 403, "permission_denied", NEW_KEY
        )
        assert response.json()["error"]["details"] == {"scopes": ["admin"]}

    async def test_a_viewer_cannot_read_the_audit_log(self, app: Served) -> None:
        owner = await register(app)
        viewer = await add_user(app, owner, UserRole.VIEWER)
        await refused(app, "GET", "/v1/audit-logs", viewer.headers, 403, "permission_denied")

    async def test_a_viewer_cannot_revoke_someone_elses_key(self, app: Served) -> None:
        owner = await register(app)
        key = await create_key(app, owner, "usage:read")
        viewer = await add_user(app, owner, UserRole.VIEWER)
        path = f"/v1/api-keys/{key['id']}"
        await refused(app, "DELETE", path, viewer.headers, 404, "api_key_not_found")
        me = await app.client.get("/v1/me", headers={"X-API-Key": key["key"]})
        assert me.status_code == 200, me.text

    async def test_a_member_cannot_grant_scopes_it_lacks(self, app: Served) -> None:
        owner = await register(app)
        member = await add_user(app, owner, UserRole.MEMBER)
        for scopes in (["billing:write"], ["usage:write", "admin"]):
            body = {"name": "more", "scopes": scopes}
            await refused(
                app, "POST", "/v1/api-keys", member.headers, 403, "permission_denied", body
            )
        allowed = await create_key(app, member, "usage:write")
        assert allowed["scopes"] == ["usage:write"]
        assert allowed["user_id"] == str(member.user_id)

    async def test_a_key_cannot_outgrow_its_own_scopes(self, app: Served) -> None:
        owner = await register(app)
        key = await create_key(app, owner, "admin")
        headers = {"X-API-Key": key["key"]}
        body = {"name": "wider", "scopes": ["billing:write"]}
        await refused(app, "POST", "/v1/api-keys", headers, 403, "permission_denied", body)

    async def test_a_demoted_users_key_loses_what_the_role_lost(self, app: Served) -> None:
        owner = await register(app)
        admin = await add_user(app, owner, UserRole.ADMIN)
        key = await create_key(app, admin, "admin", "usage:read", "usage:write")
        headers = {"X-API-Key": key["key"]}
        assert (await app.client.get("/v1/audit-logs", headers=headers)).status_code == 200

        await app.core.users.update(owner.organization_id, admin.user_id, role=UserRole.VIEWER)
        await refused(app, "GET", "/v1/audit-logs", headers, 403, "permission_denied")
        await refused(app, "POST", "/v1/api-keys", headers, 403, "permission_denied", NEW_KEY)
        me = await app.client.get("/v1/me", headers=headers)
        assert me.json()["permissions"] == ["usage:read"]

        await app.core.users.update(owner.organization_id, admin.user_id, role=UserRole.ADMIN)
        assert (await app.client.get("/v1/audit-logs", headers=headers)).status_code == 200

    async def test_an_operator_key_is_not_a_tenant(self, app: Served) -> None:
        _, raw = await app.core.api_keys.create_operator_key(name="staff")
        headers = {"X-API-Key": raw}
        await refused(app, "POST", "/v1/api-keys", headers, 403, "permission_denied", NEW_KEY)
